//! Files: uploads in chunks, downloads, and the life of a stored blob.
//!
//! A blob's bytes live in the blob directory (`DIR/blobs/` unless `[files] dir` puts it
//! elsewhere, e.g. on storage the nodes of a cluster share; named by the SHA-256 of the
//! bytes), its bookkeeping in the store (`store::records::blobs`):
//!
//! - `BeginUpload` checks the per-file limit before any byte moves, bounds what one peer
//!   can hold (a few unfinished uploads per user, a total of unfinished bytes), and
//!   creates or resumes an upload.
//! - `UploadChunk` writes the chunk at its place in the upload's partial file
//!   (`DIR/blobs/partial/<id>`), syncs it, records it in the store and answers once that
//!   is durable: after a dropped connection or a restart the client asks which chunks
//!   arrived and sends only the others. The chunks of an upload in flight at once share
//!   the `fdatasync`s of its partial file as writes share the store's flushes (group
//!   commit, see `dir`): each chunk is answered after a sync that began after
//!   its write.
//! - `FinishUpload` closes the partial file to writes, takes its SHA-256 (hashed as the
//!   chunks arrived, see `dir`), compares with the client's, syncs,
//!   renames it to its name, syncs the directory and records the blob as *pending* for
//!   its uploader, until a post or a library document refers to it.
//! - A blob is kept while anything refers to it (posts, documents, a fresh pending
//!   upload); moderation, retention, the author letting go of a post and removing a
//!   document drop references, and the file goes with the last one. Stale partial
//!   uploads and pending blobs nobody posted are cleaned up by housekeeping.
//!
//! Who may download: any colleague for a public group's or the library's blobs; for a
//! secret group only the devices in its current tree (as for reading its log), and only
//! blobs of posts after the device joined. The server stores and serves secret groups'
//! blobs as the ciphertext the client made; their keys travel only inside MLS messages.
//!
//! Lock order: `log`, then `blob_lock`. File IO runs on the blocking pool, never under
//! the lock, except the rename that makes a finished upload a blob and the deletion of an
//! unreferenced blob: both check the store under the lock, so a blob whose record exists
//! always has its file.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};

use rathaus_protocol::blobs::{chunk_count, chunk_len, MAX_UPLOAD_LIMIT};
use rathaus_protocol::{BlobScope, ContentBody, EntryBody, GroupHandle, Response, Role};
use sha2::{Digest, Sha256};

mod dir;

pub use dir::BlobDir;
use dir::ChunkWrite;

use super::refused::{BlobRefused, NotFound, PostRefused};
use super::{Refusal, Service, Session};
use crate::store::{BlobRecord, BlobRef, StoreError, UploadRecord, UserRecord, Writes};

/// Per-file limit unless configured (`[limits] max_upload_bytes`): 100 MiB.
pub const DEFAULT_MAX_UPLOAD: u64 = 100 * 1024 * 1024;

/// Unfinished uploads one user may hold; beginning another drops their oldest.
const UPLOADS_PER_USER: usize = 4;

/// Unfinished bytes all uploads together may hold, at least (it grows with a larger
/// per-file limit: twice that).
const PENDING_BYTES_FLOOR: u64 = 2 * 1024 * 1024 * 1024;

/// After this long an unfinished upload, or a finished one that no post or document
/// refers to, is removed.
const STALE_MS: i64 = 24 * 60 * 60 * 1000;

/// The start-up sweep leaves files no record names alone while they are younger than
/// this: with the blob directory shared by the nodes of a cluster, another node may be
/// between renaming a finished upload to its blob name and recording it.
const SWEEP_GRACE: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// Blob records changed by one batch, read once and written once, so that two posts of
/// one batch that share a blob update the same record.
#[derive(Debug, Default)]
pub(super) struct BlobChanges {
    /// Changed records by blob name.
    records: HashMap<[u8; 32], BlobRecord>,
}

impl BlobChanges {
    /// Drops the reference of post `seq` of `group` to its blob, if it has one.
    pub(super) fn drop_post(
        &mut self,
        service: &Service,
        w: &mut Writes,
        group: &GroupHandle,
        seq: u64,
    ) -> Result<(), StoreError> {
        let Some(sha) = service.db.post_blob(group, seq)? else {
            return Ok(());
        };
        w.remove_post_blob(group, seq);
        if let Some(record) = self.record(service, &sha)? {
            record.refs.retain(
                |r| !matches!(r, BlobRef::Post { group: g, seq: s, .. } if g == group && *s == seq),
            );
        }
        Ok(())
    }

    /// Drops the reference of library document `path`.
    pub(super) fn drop_doc(
        &mut self,
        service: &Service,
        sha: &[u8; 32],
        path: &rathaus_protocol::DocPath,
    ) -> Result<(), StoreError> {
        if let Some(record) = self.record(service, sha)? {
            record
                .refs
                .retain(|r| !matches!(r, BlobRef::Doc { path: p } if p == path));
        }
        Ok(())
    }

    /// The record of blob `sha`, loaded on first use (`None` if there is none).
    pub(super) fn record(
        &mut self,
        service: &Service,
        sha: &[u8; 32],
    ) -> Result<Option<&mut BlobRecord>, StoreError> {
        if !self.records.contains_key(sha) {
            let Some(record) = service.db.blob(sha)? else {
                return Ok(None);
            };
            self.records.insert(*sha, record);
        }
        Ok(self.records.get_mut(sha))
    }

    /// Writes the changed records into `w`; returns the blobs nothing refers to any more
    /// (their files go once `w` is durable, see [`Service::remove_unreferenced`]).
    pub(super) fn write(self, w: &mut Writes) -> Result<Vec<[u8; 32]>, StoreError> {
        let mut orphans = Vec::new();
        for (sha, record) in self.records {
            w.put_blob(&sha, &record)?;
            if record.refs.is_empty() {
                orphans.push(sha);
            }
        }
        Ok(orphans)
    }
}

impl Service {
    /// Keeps blobs in `dir` (the server's `DIR/blobs`); without it, file requests are
    /// refused as unavailable.
    pub fn set_blob_dir(&self, dir: BlobDir) {
        let _ = self.blobs.set(dir);
    }

    /// The blob directory, if files are served.
    pub fn blob_dir(&self) -> Option<&BlobDir> {
        self.blobs.get()
    }

    /// Refuses files larger than `bytes` (at most [`MAX_UPLOAD_LIMIT`]).
    pub fn set_max_upload_bytes(&self, bytes: u64) {
        self.max_upload_bytes
            .store(bytes.clamp(1, MAX_UPLOAD_LIMIT), Ordering::Relaxed);
    }

    /// The per-file limit in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_bytes.load(Ordering::Relaxed)
    }

    pub(super) async fn begin_upload(
        &self,
        session: &Session,
        me: &UserRecord,
        scope: BlobScope,
        size: u64,
        resume: Option<u64>,
    ) -> Result<Response, Refusal> {
        self.blob_dir_or_refuse()?;
        let limit = self.max_upload_bytes();
        if size > limit {
            return Err(BlobRefused::TooLarge { limit, size }.into());
        }
        self.check_upload_scope(session, me, &scope)?;
        if let Some(id) = resume {
            if let Some(up) = self.db.upload(id)? {
                if up.user == me.id && up.scope == scope && up.size == size {
                    let received = bitmap(&self.db.upload_chunks(id)?, size);
                    return Ok(Response::Upload {
                        upload: id,
                        received,
                        limit,
                    });
                }
            }
        }
        let now = self.now_ms();
        let (id, dropped) = {
            let _blobs = self.blob_lock();
            let uploads = self.db.uploads()?;
            let pending: u64 = uploads.iter().map(|u| u.size).sum();
            let cap = PENDING_BYTES_FLOOR.max(limit.saturating_mul(2));
            let mut mine: Vec<&UploadRecord> = uploads.iter().filter(|u| u.user == me.id).collect();
            mine.sort_by_key(|u| u.created_ms);
            let mut w = Writes::new();
            let mut dropped = Vec::new();
            let mut freed = 0u64;
            while mine.len() >= UPLOADS_PER_USER {
                let oldest = mine.remove(0);
                w.remove_upload(oldest.id, &self.db.upload_chunks(oldest.id)?);
                dropped.push(oldest.id);
                freed += oldest.size;
            }
            if pending - freed + size > cap {
                return Err(BlobRefused::TooManyUploads.into());
            }
            let id = self.db.store().next_id()?;
            w.put_upload(&UploadRecord {
                id,
                user: me.id.clone(),
                scope: scope.clone(),
                size,
                created_ms: now,
            })?;
            self.db.apply(w)?;
            (id, dropped)
        };
        self.durable(self.durability.written()).await?;
        if let Some(dir) = self.blob_dir() {
            for old in dropped {
                dir.remove_partial(old);
            }
        }
        tracing::debug!(upload = id, size, %scope, "upload begun");
        Ok(Response::Upload {
            upload: id,
            received: bitmap(&[], size),
            limit,
        })
    }

    pub(super) async fn upload_chunk(
        &self,
        me: &UserRecord,
        upload: u64,
        index: u32,
        bytes: Vec<u8>,
    ) -> Result<Response, Refusal> {
        let up = self.own_upload(me, upload)?;
        let Some(expected) = chunk_len(up.size, u64::from(index)) else {
            return Err(BlobRefused::NoChunk { upload, index }.into());
        };
        if bytes.len() != expected {
            return Err(BlobRefused::ChunkLength {
                upload,
                index,
                expected,
                got: bytes.len(),
            }
            .into());
        }
        let dir = self.blob_dir_or_refuse()?.clone();
        let size = up.size;
        tokio::task::spawn_blocking(move || dir.write_chunk(upload, size, index, &bytes))
            .await
            .map_err(|e| Refusal::internal(format!("chunk writer: {e}")))?
            .map_err(|e| match e {
                ChunkWrite::Finishing => Refusal::from(BlobRefused::NoUpload(upload)),
                ChunkWrite::Io(e) => {
                    Refusal::internal(format!("writing chunk {index} of upload {upload}: {e}"))
                }
            })?;
        let mut w = Writes::new();
        w.put_upload_chunk(upload, index);
        self.db.apply(w)?;
        self.durable(self.durability.written()).await?;
        Ok(Response::ChunkStored { index })
    }

    pub(super) async fn finish_upload(
        &self,
        me: &UserRecord,
        upload: u64,
        sha256: [u8; 32],
    ) -> Result<Response, Refusal> {
        let up = self.own_upload(me, upload)?;
        let chunks = self.db.upload_chunks(upload)?;
        let need = chunk_count(up.size);
        if (chunks.len() as u64) < need {
            return Err(BlobRefused::Incomplete {
                upload,
                have: chunks.len() as u64,
                need,
            }
            .into());
        }
        let dir = self.blob_dir_or_refuse()?;
        let hasher = dir.clone();
        let size = up.size;
        let actual = if size == 0 {
            Sha256::digest([]).into()
        } else {
            tokio::task::spawn_blocking(move || hasher.finish_partial(upload, size))
                .await
                .map_err(|e| Refusal::internal(format!("upload hasher: {e}")))?
                .map_err(|e| Refusal::internal(format!("reading upload {upload}: {e}")))?
        };
        if actual != sha256 {
            // The bytes are not what the client meant to send: start over.
            let mut w = Writes::new();
            w.remove_upload(upload, &chunks);
            self.db.apply(w)?;
            self.durable(self.durability.written()).await?;
            dir.remove_partial(upload);
            return Err(BlobRefused::Digest.into());
        }
        let now = self.now_ms();
        {
            let _log = self.log_lock();
            let _blobs = self.blob_lock();
            dir.promote(upload, &sha256)
                .map_err(|e| Refusal::internal(format!("storing upload {upload}: {e}")))?;
            let mut record = self.db.blob(&sha256)?.unwrap_or(BlobRecord {
                size,
                created_ms: now,
                refs: Vec::new(),
            });
            record.refs.push(BlobRef::Pending {
                scope: up.scope.clone(),
                user: me.id.clone(),
                since_ms: now,
            });
            let mut w = Writes::new();
            w.put_blob(&sha256, &record)?;
            w.remove_upload(upload, &chunks);
            self.db.apply(w)?;
        }
        self.durable(self.durability.written()).await?;
        tracing::debug!(upload, size, blob = %hex::encode(sha256), "blob stored");
        Ok(Response::BlobStored { blob: sha256, size })
    }

    pub(super) async fn download_chunk(
        &self,
        session: &Session,
        me: &UserRecord,
        scope: BlobScope,
        blob: [u8; 32],
        index: u32,
    ) -> Result<Response, Refusal> {
        let not_found = || Refusal::from(BlobRefused::NoSuchFile(scope.clone()));
        let joined = match &scope {
            BlobScope::Group(group) if group.is_secret() => {
                self.secret_department(group)?;
                match self.secret_reader(session, group)? {
                    Some(joined) => Some(joined),
                    None => return Err(BlobRefused::DownloadByMembers(group.clone()).into()),
                }
            }
            BlobScope::Group(group) => {
                self.ensure_group_exists(group)?;
                None
            }
            BlobScope::Docs | BlobScope::Document(_) => None,
        };
        let record = self.db.blob(&blob)?.ok_or_else(not_found)?;
        let visible = record.refs.iter().any(|r| match (r, &scope) {
            (BlobRef::Post { group, seq, .. }, BlobScope::Group(g)) => {
                group == g && joined.is_none_or(|j| *seq > j)
            }
            (BlobRef::Pending { scope: s, user, .. }, _) => s == &scope && user == &me.id,
            (BlobRef::Doc { .. }, BlobScope::Docs) => true,
            _ => false,
        });
        if !visible {
            return Err(not_found());
        }
        let Some(len) = chunk_len(record.size, u64::from(index)) else {
            return Err(BlobRefused::ChunkCount(chunk_count(record.size)).into());
        };
        let dir = self.blob_dir_or_refuse()?.clone();
        let bytes = tokio::task::spawn_blocking(move || dir.read_chunk(&blob, index, len))
            .await
            .map_err(|e| Refusal::internal(format!("chunk reader: {e}")))?
            .map_err(|e| Refusal::internal(format!("reading blob {}: {e}", hex::encode(blob))))?;
        Ok(Response::Chunk { bytes })
    }

    /// The author lets go of a post's file (after deleting the post), or a moderator of a
    /// public group does.
    pub(super) async fn release_attachment(
        &self,
        me: &UserRecord,
        group: GroupHandle,
        seq: u64,
    ) -> Result<Response, Refusal> {
        let not_found = || {
            Refusal::from(BlobRefused::PostWithoutFile {
                group: group.clone(),
                seq,
            })
        };
        let orphans = {
            let _log = self.log_lock();
            let _blobs = self.blob_lock();
            let Some(sha) = self.db.post_blob(&group, seq)? else {
                return Err(not_found());
            };
            let record = self.db.blob(&sha)?.ok_or_else(not_found)?;
            let sender = record.refs.iter().find_map(|r| match r {
                BlobRef::Post {
                    group: g,
                    seq: s,
                    sender,
                } if g == &group && *s == seq => Some(sender.clone()),
                _ => None,
            });
            let moderator = match &group {
                GroupHandle::Public(slug) => {
                    me.has_role(Role::Admin)
                        || self
                            .db
                            .department(slug)?
                            .is_some_and(|d| d.owners.contains(&me.id))
                }
                _ => false,
            };
            if sender.as_ref() != Some(&me.id) && !moderator {
                return Err(BlobRefused::ReleaseByAuthor.into());
            }
            let mut w = Writes::new();
            let mut changes = BlobChanges::default();
            changes.drop_post(self, &mut w, &group, seq)?;
            let orphans = changes.write(&mut w)?;
            self.db.apply(w)?;
            orphans
        };
        self.durable(self.durability.written()).await?;
        self.remove_unreferenced(&orphans);
        tracing::info!(%group, seq, by = %me.id, "attachment released");
        Ok(Response::Done)
    }

    /// Checks the attachment of a post before it is stored: the blob exists and its
    /// uploader (or an earlier post of the group) holds it for `group`.
    pub(super) fn check_attachment(
        &self,
        me: &UserRecord,
        group: &GroupHandle,
        blob: &[u8; 32],
    ) -> Result<(), Refusal> {
        let scope = BlobScope::Group(group.clone());
        let held = self.db.blob(blob)?.is_some_and(|r| {
            r.refs.iter().any(|x| match x {
                BlobRef::Pending { scope: s, user, .. } => s == &scope && user == &me.id,
                BlobRef::Post { group: g, .. } => g == group,
                BlobRef::Doc { .. } => false,
            })
        });
        if held {
            Ok(())
        } else {
            Err(BlobRefused::UploadFirst(group.clone()).into())
        }
    }

    /// Adds to `w` that post `seq` of `group` by `me` refers to `blob`, which stops being
    /// pending. Call with the log lock held, and apply `w` before releasing it.
    pub(super) fn attach_post(
        &self,
        w: &mut Writes,
        me: &UserRecord,
        group: &GroupHandle,
        seq: u64,
        blob: &[u8; 32],
    ) -> Result<(), Refusal> {
        let _blobs = self.blob_lock();
        let Some(mut record) = self.db.blob(blob)? else {
            return Err(BlobRefused::UploadFirst(group.clone()).into());
        };
        let scope = BlobScope::Group(group.clone());
        if let Some(at) = record.refs.iter().position(
            |r| matches!(r, BlobRef::Pending { scope: s, user, .. } if s == &scope && user == &me.id),
        ) {
            record.refs.remove(at);
        }
        record.refs.push(BlobRef::Post {
            group: group.clone(),
            seq,
            sender: me.id.clone(),
        });
        w.put_blob(blob, &record)?;
        w.put_post_blob(group, seq, blob);
        Ok(())
    }

    /// Deletes the files of `blobs` whose records are gone (call once their removal is
    /// durable).
    pub(super) fn remove_unreferenced(&self, blobs: &[[u8; 32]]) {
        let Some(dir) = self.blob_dir() else {
            return;
        };
        let _blobs = self.blob_lock();
        for sha in blobs {
            match self.db.blob(sha) {
                Ok(None) => dir.remove_blob(sha),
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!(error = %e, "cannot check a blob before removing it"),
            }
        }
    }

    /// Housekeeping: drops unfinished uploads and unposted blobs older than a day, and
    /// (with `sweep`, at start when nothing is in flight on this node) files no record
    /// names that are older than [`SWEEP_GRACE`] (younger ones may be in flight on another
    /// node sharing the blob directory).
    pub async fn clean_blobs(&self, sweep: bool) -> Result<(), StoreError> {
        let Some(dir) = self.blob_dir() else {
            return Ok(());
        };
        let cutoff = self.now_ms().saturating_sub(STALE_MS);
        let (stale_uploads, orphans) = {
            let _log = self.log_lock();
            let _blobs = self.blob_lock();
            let mut w = Writes::new();
            let mut stale = Vec::new();
            for up in self.db.uploads()? {
                if up.created_ms < cutoff {
                    w.remove_upload(up.id, &self.db.upload_chunks(up.id)?);
                    stale.push(up.id);
                }
            }
            let mut changes = BlobChanges::default();
            for (sha, record) in self.db.blobs()? {
                if record
                    .refs
                    .iter()
                    .any(|r| matches!(r, BlobRef::Pending { since_ms, .. } if *since_ms < cutoff))
                {
                    if let Some(r) = changes.record(self, &sha)? {
                        r.refs.retain(
                            |r| !matches!(r, BlobRef::Pending { since_ms, .. } if *since_ms < cutoff),
                        );
                    }
                }
            }
            let orphans = changes.write(&mut w)?;
            if !w.is_empty() {
                self.db.apply(w)?;
            }
            (stale, orphans)
        };
        self.flush().await?;
        for id in &stale_uploads {
            dir.remove_partial(*id);
        }
        self.remove_unreferenced(&orphans);
        if !stale_uploads.is_empty() || !orphans.is_empty() {
            tracing::info!(
                uploads = stale_uploads.len(),
                blobs = orphans.len(),
                "removed stale uploads and unposted files"
            );
        }
        if sweep {
            let before = std::time::SystemTime::now()
                .checked_sub(SWEEP_GRACE)
                .unwrap_or(std::time::UNIX_EPOCH);
            let (files, partials) = dir.listing(before).map_err(|e| {
                StoreError::Backend(format!("listing {}: {e}", dir.root().display()))
            })?;
            let _blobs = self.blob_lock();
            for sha in files {
                if self.db.blob(&sha)?.is_none() {
                    dir.remove_blob(&sha);
                }
            }
            for id in partials {
                if self.db.upload(id)?.is_none() {
                    dir.remove_partial(id);
                }
            }
        }
        Ok(())
    }

    /// The blob of a public post's attachment content, if it is one.
    pub(super) fn attachment_of(body: &EntryBody) -> Option<[u8; 32]> {
        match body {
            EntryBody::Content(c) => match &c.body {
                ContentBody::Attachment { blob, .. } => Some(*blob),
                _ => None,
            },
            _ => None,
        }
    }

    fn own_upload(&self, me: &UserRecord, upload: u64) -> Result<UploadRecord, Refusal> {
        match self.db.upload(upload)? {
            Some(up) if up.user == me.id => Ok(up),
            _ => Err(BlobRefused::NoUpload(upload).into()),
        }
    }

    fn check_upload_scope(
        &self,
        session: &Session,
        me: &UserRecord,
        scope: &BlobScope,
    ) -> Result<(), Refusal> {
        match scope {
            BlobScope::Docs => Err(BlobRefused::DocsNeedPath.into()),
            BlobScope::Document(path) => self.check_doc_put(me, path),
            BlobScope::Group(group) if group.is_secret() => {
                self.secret_department(group)?;
                if self.secret_member_record(session, group)?.is_some() {
                    Ok(())
                } else {
                    Err(BlobRefused::UploadByMembers(group.clone()).into())
                }
            }
            BlobScope::Group(group) => {
                self.ensure_open(group)?;
                self.ensure_group_exists(group)?;
                if *group == GroupHandle::Announcements
                    && !(me.has_role(Role::Editor) || me.has_role(Role::Admin))
                {
                    return Err(PostRefused::AnnouncementsByEditors.into());
                }
                Ok(())
            }
        }
    }

    fn ensure_group_exists(&self, group: &GroupHandle) -> Result<(), Refusal> {
        match group {
            GroupHandle::Announcements => Ok(()),
            GroupHandle::Public(slug) => {
                if self.db.department_exists(slug)? || self.is_retired(slug)? {
                    Ok(())
                } else {
                    Err(NotFound::PublicGroup(slug.clone()).into())
                }
            }
            GroupHandle::Secret(_) | GroupHandle::Room(_) => Ok(()),
        }
    }

    fn blob_dir_or_refuse(&self) -> Result<&BlobDir, Refusal> {
        self.blob_dir().ok_or_else(|| BlobRefused::NoStorage.into())
    }

    pub(super) fn blob_lock(&self) -> MutexGuard<'_, ()> {
        // Guards no data of its own; a poisoned lock is as good as a fresh one.
        self.blob_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One bit per chunk of a blob of `size` bytes, set for `chunks`.
fn bitmap(chunks: &[u32], size: u64) -> Vec<u8> {
    let n = chunk_count(size) as usize;
    let mut bits = vec![0u8; n.div_ceil(8)];
    for &i in chunks {
        let i = i as usize;
        if i < n {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::Duration;

    use rathaus_protocol::blobs::BLOB_CHUNK;
    use rathaus_protocol::Request;

    use super::dir::PARTIAL;
    use super::*;
    use crate::service::refused::BlobRefused;
    use crate::service::testing::Fixture;
    use crate::service::Reason;
    use rathaus_protocol::ErrorCode;

    async fn fixture() -> (Fixture, tempfile::TempDir) {
        let f = Fixture::new().await;
        let tmp = tempfile::tempdir().unwrap();
        f.service
            .set_blob_dir(BlobDir::open(&tmp.path().join("blobs")).unwrap());
        (f, tmp)
    }

    async fn ask(f: &Fixture, session: &Session, request: Request) -> Result<Response, Refusal> {
        f.service.handle(session, request).await
    }

    async fn begin(f: &Fixture, session: &Session, size: u64) -> Result<u64, Refusal> {
        let request = Request::BeginUpload {
            scope: BlobScope::Group(GroupHandle::Announcements),
            size,
            resume: None,
        };
        match ask(f, session, request).await? {
            Response::Upload { upload, .. } => Ok(upload),
            other => panic!("{other:?}"),
        }
    }

    fn chunk(upload: u64, index: u32, len: usize) -> Request {
        Request::UploadChunk {
            upload,
            index,
            bytes: vec![index as u8; len],
        }
    }

    #[tokio::test]
    async fn chunks_are_checked_and_a_wrong_hash_starts_over() {
        let (f, _tmp) = fixture().await;
        let size = BLOB_CHUNK as u64 + 5;
        let id = begin(&f, &f.admin, size).await.unwrap();
        let short = ask(&f, &f.admin, chunk(id, 0, 10)).await.unwrap_err();
        assert_eq!(short.code(), ErrorCode::Invalid, "{short:?}");
        let past = ask(&f, &f.admin, chunk(id, 2, 5)).await.unwrap_err();
        assert_eq!(past.code(), ErrorCode::Invalid, "{past:?}");
        ask(&f, &f.admin, chunk(id, 1, 5)).await.unwrap();
        let early = ask(
            &f,
            &f.admin,
            Request::FinishUpload {
                upload: id,
                sha256: [0; 32],
            },
        )
        .await
        .unwrap_err();
        assert_eq!(
            early.reason,
            Reason::Blob(BlobRefused::Incomplete {
                upload: id,
                have: 1,
                need: 2
            })
        );
        // Someone else's upload does not exist for them.
        let other = f.user("P1001", &[]).await;
        let theirs = ask(&f, &other, chunk(id, 0, BLOB_CHUNK)).await.unwrap_err();
        assert_eq!(theirs.code(), ErrorCode::NotFound, "{theirs:?}");
        ask(&f, &f.admin, chunk(id, 0, BLOB_CHUNK)).await.unwrap();
        let wrong = ask(
            &f,
            &f.admin,
            Request::FinishUpload {
                upload: id,
                sha256: [0; 32],
            },
        )
        .await
        .unwrap_err();
        assert_eq!(wrong.code(), ErrorCode::Invalid, "{wrong:?}");
        let gone = ask(&f, &f.admin, chunk(id, 0, BLOB_CHUNK))
            .await
            .unwrap_err();
        assert_eq!(
            gone.code(),
            ErrorCode::NotFound,
            "the upload starts over: {gone:?}"
        );
    }

    #[tokio::test]
    async fn limits_bound_what_one_peer_holds() {
        let (f, _tmp) = fixture().await;
        f.service.set_max_upload_bytes(1000);
        let big = begin(&f, &f.admin, 1001).await.unwrap_err();
        assert_eq!(big.code(), ErrorCode::TooLarge, "{big:?}");
        // A fifth unfinished upload drops the oldest of the user's four.
        let mut ids = Vec::new();
        for _ in 0..=UPLOADS_PER_USER {
            ids.push(begin(&f, &f.admin, 10).await.unwrap());
            f.clock.advance(Duration::from_millis(1));
        }
        let oldest = ask(&f, &f.admin, chunk(ids[0], 0, 10)).await.unwrap_err();
        assert_eq!(oldest.code(), ErrorCode::NotFound, "{oldest:?}");
        ask(&f, &f.admin, chunk(ids[1], 0, 10)).await.unwrap();
    }

    #[tokio::test]
    async fn stale_uploads_and_unposted_files_are_cleaned_up() {
        let (f, tmp) = fixture().await;
        let unfinished = begin(&f, &f.admin, 10).await.unwrap();
        ask(&f, &f.admin, chunk(unfinished, 0, 10)).await.unwrap();
        let done = begin(&f, &f.admin, 10).await.unwrap();
        ask(&f, &f.admin, chunk(done, 0, 10)).await.unwrap();
        let sha: [u8; 32] = Sha256::digest([0u8; 10]).into();
        ask(
            &f,
            &f.admin,
            Request::FinishUpload {
                upload: done,
                sha256: sha,
            },
        )
        .await
        .unwrap();
        let blobs = tmp.path().join("blobs");
        assert!(blobs.join(hex::encode(sha)).exists());
        assert!(blobs.join(PARTIAL).join(unfinished.to_string()).exists());

        f.service.clean_blobs(false).await.unwrap();
        assert!(blobs.join(hex::encode(sha)).exists(), "fresh: kept");
        f.clock.advance(Duration::from_secs(25 * 60 * 60));
        f.service.clean_blobs(false).await.unwrap();
        assert!(
            !blobs.join(hex::encode(sha)).exists(),
            "never posted: removed"
        );
        assert!(!blobs.join(PARTIAL).join(unfinished.to_string()).exists());
        assert!(f.service.db().blob(&sha).unwrap().is_none());
        assert!(f.service.db().uploads().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_start_sweep_leaves_fresh_unrecorded_files_to_the_node_storing_them() {
        let (f, tmp) = fixture().await;
        let blobs = tmp.path().join("blobs");
        // As another node sharing the directory leaves them between its rename and its
        // record: a blob file and a partial upload the store does not name (yet).
        let name = hex::encode([7u8; 32]);
        fs::write(blobs.join(&name), b"in flight elsewhere").unwrap();
        fs::write(blobs.join(PARTIAL).join("424242"), b"chunk").unwrap();
        f.service.clean_blobs(true).await.unwrap();
        assert!(blobs.join(&name).exists());
        assert!(blobs.join(PARTIAL).join("424242").exists());
        let dir = f.service.blob_dir().unwrap();
        assert_eq!(dir.size_bytes(), 19 + 5);
        // Once old enough they are leftovers of a crash, and go.
        let (files, partials) = dir
            .listing(std::time::SystemTime::now() + Duration::from_secs(1))
            .unwrap();
        assert_eq!(files, vec![[7u8; 32]]);
        assert_eq!(partials, vec![424242]);
    }

    #[test]
    fn bitmap_marks_received_chunks() {
        let size = 10 * BLOB_CHUNK as u64;
        let bits = bitmap(&[0, 3, 9, 42], size);
        assert_eq!(bits, vec![0b0000_1001, 0b0000_0010]);
        assert!(bitmap(&[], 0).is_empty());
    }
}
