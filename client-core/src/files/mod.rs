//! Photos and files, and the document library.
//!
//! A file moves as a blob in chunks of [`BLOB_CHUNK`] bytes, each on its own QUIC stream,
//! several in flight at once. An upload is resumable: its id (and, for a secret group, the
//! file's key) is kept in the profile until the server has stored the whole blob, and the
//! server says which chunks it holds durably, so after a dropped connection, a server
//! restart or a new `rathaus send --file` only the missing chunks go out. A download
//! writes `FILE.part` in order and continues from its end.
//!
//! In a secret group the file is sealed with a fresh key ([`seal`]); the key, the
//! plaintext SHA-256 and the name travel only inside the MLS message (the `Attachment`
//! content), so the server holds ciphertext only. The receiver opens every chunk with the
//! key and checks the plaintext SHA-256 before the file gets its name.

mod docs;
mod seal;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rathaus_protocol::blobs::{
    chunk_count, chunk_len, sealed_size, FileKey, BLOB_CHUNK, SEALED_SEGMENT,
};
use rathaus_protocol::content::CONTENT_VERSION;
use rathaus_protocol::{
    BlobScope, Content, ContentBody, EntryBody, ErrorCode, GroupHandle, LogEntry, Request, Response,
};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

pub use docs::{docs_link_path, DOCS_LINK_PREFIX};

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::net;
use crate::sync::SendReceipt;

/// Chunks in flight at once in each direction. The server answers an upload's chunks
/// after syncs they share, so more in flight means fewer syncs per file: 16 chunks (4
/// MiB) fit the server's per-connection window of 8 MiB twice over and leave streams
/// for the connection's other requests.
const WINDOW: usize = 16;

/// Bytes a download appends to its `.part` file between syncs: the disk writes them back
/// while the next chunks arrive, so that the sync at the end waits for the last few MiB,
/// not for the whole file (50 ms of a 50 MiB download when synced only at the end).
const SYNC_EVERY: usize = 4 << 20;

/// Attempts of one transfer before a transient failure is reported (each attempt
/// reconnects and continues where the last one stopped).
const MAX_ATTEMPTS: u32 = 6;

/// How far a transfer has come, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the stored blob transferred or found transferred already.
    pub done: u64,
    /// Bytes of the stored blob.
    pub total: u64,
}

/// What a transfer did on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Chunks sent (upload) or fetched (download).
    pub chunks_moved: u64,
    /// Chunks that were there already (stored on the server, or in the `.part` file).
    pub chunks_skipped: u64,
    /// Attempts it took (1 without interruptions).
    pub attempts: u32,
}

/// An attachment as this device knows it from a post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The blob (SHA-256 of the stored bytes).
    pub blob: [u8; 32],
    /// File name.
    pub name: String,
    /// Size of the file.
    pub size: u64,
    /// SHA-256 of the file.
    pub sha256: [u8; 32],
    /// The caption.
    pub text: String,
    /// For secret groups, the key the blob is sealed with.
    pub file_key: Option<FileKey>,
}

/// A file posted to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentFile {
    /// The post.
    pub receipt: SendReceipt,
    /// What was posted.
    pub attachment: Attachment,
    /// The transfer.
    pub stats: TransferStats,
}

/// A file downloaded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadedFile {
    /// Where it is now.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its SHA-256 (equal to the one in the post or library entry).
    pub sha256: [u8; 32],
    /// The transfer.
    pub stats: TransferStats,
}

/// A blob stored on the server by [`Client::upload_blob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UploadedBlob {
    /// SHA-256 of the stored bytes.
    blob: [u8; 32],
    /// Size of the file.
    size: u64,
    /// SHA-256 of the file.
    sha256: [u8; 32],
    /// The seal, for a secret group.
    file_key: Option<FileKey>,
    /// The transfer.
    stats: TransferStats,
}

impl Client {
    /// Posts the file at `path` to `group`, with an optional caption. Refused with
    /// [`ClientError::TooLarge`] before any byte is sent if the server's per-file limit
    /// is lower than the file. `progress` is called as chunks are acknowledged.
    pub async fn send_file(
        &mut self,
        group: &GroupHandle,
        path: &Path,
        caption: Option<&str>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<SentFile> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ClientError::Invalid(format!("{} is not a file", path.display())))?;
        let scope = BlobScope::Group(group.clone());
        let uploaded = self
            .upload_blob(&scope, path, group.is_secret(), progress)
            .await?;
        let content = Content {
            version: CONTENT_VERSION,
            body: ContentBody::Attachment {
                blob: uploaded.blob,
                name,
                size: uploaded.size,
                sha256: uploaded.sha256,
                text: caption.unwrap_or_default().to_owned(),
                file_key: uploaded.file_key.clone(),
            },
            mentions: Vec::new(),
        };
        content
            .validate()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let receipt = self.send(group, content.clone()).await?;
        remember(
            self.store.connection(),
            &group.to_string(),
            receipt.seq,
            &content,
        )?;
        let attachment = attachment_of(&content).ok_or(ClientError::UnexpectedResponse("Post"))?;
        Ok(SentFile {
            receipt,
            attachment,
            stats: uploaded.stats,
        })
    }

    /// The attachment of post `seq` of `group`, as this device received it (after a
    /// sync); `None` if the post has no file or is unknown here.
    pub fn attachment(&self, group: &GroupHandle, seq: u64) -> Result<Option<Attachment>> {
        let content: Option<Vec<u8>> = self
            .store
            .connection()
            .query_row(
                "SELECT content FROM attachments WHERE grp = ?1 AND seq = ?2",
                params![group.to_string(), seq as i64],
                |r| r.get(0),
            )
            .optional()?;
        Ok(content
            .and_then(|bytes| postcard::from_bytes::<Content>(&bytes).ok())
            .and_then(|c| attachment_of(&c)))
    }

    /// Downloads the file of post `seq` of `group` to `out` (default: its name in the
    /// current directory, which must not exist yet), checking its SHA-256. Syncs the group
    /// first if the post is not known here yet. Continues an interrupted download.
    pub async fn download(
        &mut self,
        group: &GroupHandle,
        seq: u64,
        out: Option<&Path>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<DownloadedFile> {
        let attachment = match self.attachment(group, seq)? {
            Some(a) => a,
            None => {
                self.read(group).await?;
                self.attachment(group, seq)?
                    .ok_or_else(|| ClientError::Server {
                        code: ErrorCode::NotFound,
                        message: format!("{group} #{seq} has no file this device can read"),
                    })?
            }
        };
        let target = match out {
            Some(p) => p.to_path_buf(),
            None => {
                let p = PathBuf::from(&attachment.name);
                if p.exists() {
                    return Err(ClientError::Invalid(format!(
                        "{} exists already; choose another name with --out",
                        p.display()
                    )));
                }
                p
            }
        };
        let scope = BlobScope::Group(group.clone());
        self.download_blob(
            &scope,
            attachment.blob,
            attachment.size,
            attachment.sha256,
            attachment.file_key.as_ref(),
            &target,
            progress,
        )
        .await
    }

    /// Lets go of the file of one's own post `seq` of `group` (after deleting the post):
    /// the server removes it unless another post or document still refers to it.
    pub async fn release_attachment(&mut self, group: &GroupHandle, seq: u64) -> Result<()> {
        let request = Request::ReleaseAttachment {
            group: group.clone(),
            seq,
        };
        match self.request(&request).await? {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse("ReleaseAttachment")),
        }
    }

    /// Uploads the file at `path` as a blob of `scope` (sealed with a fresh key if
    /// `seal`), resuming an earlier upload of the same file, retrying after transient
    /// failures.
    pub(crate) async fn upload_blob(
        &mut self,
        scope: &BlobScope,
        path: &Path,
        seal: bool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<UploadedBlob> {
        let file = File::open(path)
            .map_err(|e| ClientError::io(format!("cannot open {}", path.display()), e))?;
        let meta = file
            .metadata()
            .map_err(|e| ClientError::io(format!("cannot read {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(ClientError::Invalid(format!(
                "{} is not a file",
                path.display()
            )));
        }
        let size = meta.len();
        let source_key = source_key(scope, path, &meta);
        let (resume, kept_key) = pending_upload(self.store.connection(), &source_key)?;
        let file_key = if seal {
            Some(kept_key.unwrap_or_else(seal::fresh_key))
        } else {
            None
        };
        let source = Arc::new(Source::new(file, size, file_key.as_ref())?);
        let mut stats = TransferStats::default();
        let mut upload = resume;
        loop {
            stats.attempts += 1;
            match self
                .upload_attempt(
                    scope,
                    &source,
                    &source_key,
                    &mut upload,
                    &mut stats,
                    progress,
                )
                .await
            {
                Ok((blob, sha256)) => {
                    forget_upload(self.store.connection(), &source_key)?;
                    return Ok(UploadedBlob {
                        blob,
                        size,
                        sha256,
                        file_key,
                        stats,
                    });
                }
                Err(e) if e.is_transient() && stats.attempts < MAX_ATTEMPTS => {
                    tracing::info!(error = %e, attempt = stats.attempts, "upload interrupted; continuing");
                    self.conn = None;
                    tokio::time::sleep(backoff(stats.attempts)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn upload_attempt(
        &mut self,
        scope: &BlobScope,
        source: &Arc<Source>,
        source_key: &str,
        upload: &mut Option<u64>,
        stats: &mut TransferStats,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<([u8; 32], [u8; 32])> {
        let stored = source.stored_size();
        let request = Request::BeginUpload {
            scope: scope.clone(),
            size: stored,
            resume: *upload,
        };
        let (id, received, limit) = match self.request(&request).await {
            Ok(Response::Upload {
                upload,
                received,
                limit,
            }) => (upload, received, limit),
            Ok(_) => return Err(ClientError::UnexpectedResponse("BeginUpload")),
            Err(ClientError::Server {
                code: ErrorCode::TooLarge,
                message,
            }) => {
                return Err(ClientError::TooLarge {
                    size: stored,
                    message,
                })
            }
            Err(e) => return Err(e),
        };
        tracing::debug!(upload = id, limit, "upload begun");
        if *upload != Some(id) {
            *upload = Some(id);
            keep_upload(
                self.store.connection(),
                source_key,
                id,
                source.sealer.as_ref().map(|(k, _)| k),
            )?;
        }
        let conn = self.connection().await?;
        let (mut chunks, hashes) = read_ahead(source.clone(), received);
        let mut in_flight: tokio::task::JoinSet<Result<u64>> = tokio::task::JoinSet::new();
        let mut done = 0u64;
        while let Some(prepared) = chunks.recv().await {
            let Prepared { index, len, bytes } = prepared?;
            let Some(chunk) = bytes else {
                stats.chunks_skipped += 1;
                done += len;
                progress(Progress {
                    done,
                    total: stored,
                });
                continue;
            };
            while in_flight.len() >= WINDOW {
                done += joined(in_flight.join_next().await)?;
                stats.chunks_moved += 1;
                progress(Progress {
                    done,
                    total: stored,
                });
            }
            let conn = conn.clone();
            let index32 = u32::try_from(index)
                .map_err(|_| ClientError::Invalid("the file has too many chunks".into()))?;
            in_flight.spawn(async move {
                match conn.upload_chunk(id, index32, chunk).await? {
                    Response::ChunkStored { .. } => Ok(len),
                    _ => Err(ClientError::UnexpectedResponse("UploadChunk")),
                }
            });
        }
        while let Some(result) = in_flight.join_next().await {
            done += joined(Some(result))?;
            stats.chunks_moved += 1;
            progress(Progress {
                done,
                total: stored,
            });
        }
        let (plain_sha, sha256) = hashes
            .await
            .map_err(|e| ClientError::Invalid(format!("reading the file: {e}")))?
            .ok_or_else(|| ClientError::Invalid("the file could not be read to its end".into()))?;
        match self
            .request(&Request::FinishUpload { upload: id, sha256 })
            .await?
        {
            Response::BlobStored { blob, .. } if blob == sha256 => Ok((blob, plain_sha)),
            _ => Err(ClientError::UnexpectedResponse("FinishUpload")),
        }
    }

    /// Downloads blob `blob` of `scope` into `target` through `target.part`, opening it
    /// with `key` if sealed, and checks that the file has `size` bytes and SHA-256
    /// `sha256`; retries after transient failures, continuing from the `.part` file.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn download_blob(
        &mut self,
        scope: &BlobScope,
        blob: [u8; 32],
        size: u64,
        sha256: [u8; 32],
        key: Option<&FileKey>,
        target: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<DownloadedFile> {
        let sealer = key
            .map(|k| seal::Sealer::new(k, size).map(Arc::new))
            .transpose()?;
        let part = part_path(target);
        let mut stats = TransferStats::default();
        loop {
            stats.attempts += 1;
            let result = self
                .download_attempt(
                    scope,
                    blob,
                    size,
                    sealer.clone(),
                    &part,
                    &mut stats,
                    progress,
                )
                .await;
            match result {
                Ok(actual) if actual == sha256 => {
                    fs::rename(&part, target).map_err(|e| {
                        ClientError::io(
                            format!("cannot move the download to {}", target.display()),
                            e,
                        )
                    })?;
                    return Ok(DownloadedFile {
                        path: target.to_path_buf(),
                        size,
                        sha256,
                        stats,
                    });
                }
                Ok(_) => {
                    let _ = fs::remove_file(&part);
                    return Err(ClientError::Invalid(
                        "the downloaded file does not match the SHA-256 in its post; it was \
                         changed on the way or on the server"
                            .into(),
                    ));
                }
                Err(e) if e.is_transient() && stats.attempts < MAX_ATTEMPTS => {
                    tracing::info!(error = %e, attempt = stats.attempts, "download interrupted; continuing");
                    self.conn = None;
                    tokio::time::sleep(backoff(stats.attempts)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn download_attempt(
        &mut self,
        scope: &BlobScope,
        blob: [u8; 32],
        size: u64,
        sealer: Option<Arc<seal::Sealer>>,
        part: &Path,
        stats: &mut TransferStats,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<[u8; 32]> {
        let stored = if sealer.is_some() {
            sealed_size(size)
        } else {
            size
        };
        let segment = if sealer.is_some() {
            SEALED_SEGMENT as u64
        } else {
            BLOB_CHUNK as u64
        };
        let mut out = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(part)
            .map_err(|e| ClientError::io(format!("cannot write {}", part.display()), e))?;
        let io = |e| ClientError::io(format!("cannot write {}", part.display()), e);
        // Continue after the last whole chunk already written; hash what is there.
        let have = out.metadata().map_err(io)?.len().min(size);
        let start = have / segment;
        out.set_len(start * segment).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1024 * 1024];
        let mut left = start * segment;
        out.seek(SeekFrom::Start(0)).map_err(io)?;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            out.read_exact(&mut buf[..want]).map_err(io)?;
            hasher.update(&buf[..want]);
            left -= want as u64;
        }
        let n = chunk_count(stored);
        stats.chunks_skipped = stats.chunks_skipped.max(start);
        // The chunks are fetched (and opened) up to WINDOW at once, in parallel; a thread
        // of its own hashes and appends them in order, so neither waits for the other.
        let (writes, written) = write_behind(out, hasher, part.to_path_buf());
        let fetched = async {
            let conn = self.connection().await?;
            let mut done = (start * BLOB_CHUNK as u64).min(stored);
            let mut queue: VecDeque<tokio::task::JoinHandle<Result<Piece>>> = VecDeque::new();
            let mut next = start;
            while next < n || !queue.is_empty() {
                while next < n && queue.len() < WINDOW {
                    let index = u32::try_from(next)
                        .map_err(|_| ClientError::Invalid("the file has too many chunks".into()))?;
                    let expected = chunk_len(stored, next).unwrap_or(0);
                    queue.push_back(tokio::spawn(fetch_chunk(
                        conn.clone(),
                        Request::DownloadChunk {
                            scope: scope.clone(),
                            blob,
                            index,
                        },
                        expected,
                        sealer.clone(),
                    )));
                    next += 1;
                }
                let Some(handle) = queue.pop_front() else {
                    break;
                };
                let index = next - queue.len() as u64 - 1;
                let bytes = match handle.await {
                    Ok(result) => result?,
                    Err(e) => {
                        return Err(ClientError::ConnectionLost(format!("download task: {e}")))
                    }
                };
                done += chunk_len(stored, index).unwrap_or(0) as u64;
                if writes.send(bytes).await.is_err() {
                    // The writer stopped on an error, which it reports.
                    break;
                }
                stats.chunks_moved += 1;
                progress(Progress {
                    done,
                    total: stored,
                });
            }
            Ok(())
        }
        .await;
        // Whatever was fetched is written before this attempt ends, so that the next one
        // continues after it.
        drop(writes);
        let written = written
            .await
            .map_err(|e| ClientError::Invalid(format!("writing {}: {e}", part.display())));
        let (sha256, length) = match (fetched, written) {
            (_, Err(e)) | (_, Ok(Err(e))) | (Err(e), _) => return Err(e),
            (Ok(()), Ok(Ok(w))) => w,
        };
        if length != size {
            return Err(ClientError::Invalid(format!(
                "the download has {length} bytes, its post says {size}"
            )));
        }
        Ok(sha256)
    }

    /// A clone of the authenticated connection, for requests in flight at once.
    async fn connection(&mut self) -> Result<net::Connection> {
        self.connect().await?;
        self.conn
            .as_ref()
            .map(|(c, _)| c.clone())
            .ok_or_else(|| ClientError::ConnectionLost("not connected".into()))
    }
}

/// Creates the tables of this module in the profile database.
pub(crate) fn create_tables(db: &Connection) -> Result<()> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS attachments (
             grp TEXT NOT NULL, seq INTEGER NOT NULL, content BLOB NOT NULL,
             PRIMARY KEY (grp, seq));
         CREATE TABLE IF NOT EXISTS file_uploads (
             source TEXT PRIMARY KEY, upload INTEGER NOT NULL, file_key BLOB);",
    )?;
    Ok(())
}

/// Remembers the attachment of entry `seq` of `group` if `content` is one (inside the
/// caller's transaction, for secret groups beside the history row).
pub(crate) fn remember(conn: &Connection, group: &str, seq: u64, content: &Content) -> Result<()> {
    // Checked here although decoded content is valid: a fetched log entry's content is
    // read as recorded (`EntryBody::Content`), and the file name is used on disk.
    if !matches!(content.body, ContentBody::Attachment { .. }) || content.validate().is_err() {
        return Ok(());
    }
    let bytes = postcard::to_allocvec(content)
        .map_err(|e| ClientError::Invalid(format!("cannot encode an attachment: {e}")))?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO attachments(grp, seq, content) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![group, seq as i64, bytes])?;
    Ok(())
}

/// [`remember`] for decrypted MLS application plaintext.
pub(crate) fn remember_plaintext(
    conn: &Connection,
    group: &str,
    seq: u64,
    plaintext: &[u8],
) -> Result<()> {
    match postcard::from_bytes::<Content>(plaintext) {
        Ok(content) => remember(conn, group, seq, &content),
        Err(_) => Ok(()),
    }
}

/// [`remember`] for fetched public entries.
pub(crate) fn remember_entries(conn: &Connection, group: &str, entries: &[LogEntry]) -> Result<()> {
    for entry in entries {
        if let EntryBody::Content(content) = &entry.body {
            remember(conn, group, entry.seq, content)?;
        }
    }
    Ok(())
}

fn attachment_of(content: &Content) -> Option<Attachment> {
    match &content.body {
        ContentBody::Attachment {
            blob,
            name,
            size,
            sha256,
            text,
            file_key,
        } => Some(Attachment {
            blob: *blob,
            name: name.clone(),
            size: *size,
            sha256: *sha256,
            text: text.clone(),
            file_key: file_key.clone(),
        }),
        _ => None,
    }
}

/// A file read chunk by chunk, sealed if it is for a secret group.
struct Source {
    file: File,
    size: u64,
    sealer: Option<(FileKey, seal::Sealer)>,
}

impl Source {
    fn new(file: File, size: u64, key: Option<&FileKey>) -> Result<Self> {
        let sealer = key
            .map(|k| seal::Sealer::new(k, size).map(|s| (k.clone(), s)))
            .transpose()?;
        Ok(Self { file, size, sealer })
    }

    fn stored_size(&self) -> u64 {
        match self.sealer {
            Some(_) => sealed_size(self.size),
            None => self.size,
        }
    }

    /// Chunk `index` as stored; the plaintext goes through `plain` on the way.
    fn chunk(&self, index: u64, plain: &mut Sha256) -> Result<Vec<u8>> {
        let segment = match self.sealer {
            Some(_) => SEALED_SEGMENT as u64,
            None => BLOB_CHUNK as u64,
        };
        let start = index * segment;
        let len = self.size.saturating_sub(start).min(segment) as usize;
        let mut bytes = Vec::with_capacity(BLOB_CHUNK);
        bytes.resize(len, 0);
        self.file
            .read_exact_at(&mut bytes, start)
            .map_err(|e| ClientError::io("cannot read the file (did it change?)", e))?;
        plain.update(&bytes);
        if let Some((_, sealer)) = &self.sealer {
            sealer.seal(index, &mut bytes)?;
        }
        Ok(bytes)
    }
}

/// Identifies one file for resuming its upload: where it goes, which file, which version.
fn source_key(scope: &BlobScope, path: &Path, meta: &fs::Metadata) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{scope}\n{}\n{}\n{modified}", path.display(), meta.len())
}

fn pending_upload(conn: &Connection, source: &str) -> Result<(Option<u64>, Option<FileKey>)> {
    let row: Option<(i64, Option<Vec<u8>>)> = conn
        .prepare_cached("SELECT upload, file_key FROM file_uploads WHERE source = ?1")?
        .query_row([source], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match row {
        Some((upload, key)) => (
            Some(upload as u64),
            key.and_then(|k| postcard::from_bytes::<FileKey>(&k).ok()),
        ),
        None => (None, None),
    })
}

fn keep_upload(conn: &Connection, source: &str, upload: u64, key: Option<&FileKey>) -> Result<()> {
    let key = key
        .map(postcard::to_allocvec)
        .transpose()
        .map_err(|e| ClientError::Invalid(format!("cannot encode a file key: {e}")))?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO file_uploads(source, upload, file_key) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![source, upload as i64, key])?;
    Ok(())
}

fn forget_upload(conn: &Connection, source: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM file_uploads WHERE source = ?1")?
        .execute([source])?;
    Ok(())
}

fn joined(result: Option<std::result::Result<Result<u64>, tokio::task::JoinError>>) -> Result<u64> {
    match result {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(ClientError::ConnectionLost(format!("upload task: {e}"))),
        None => Ok(0),
    }
}

/// A chunk of an upload as read ahead: its bytes as stored, or `None` for one the server
/// holds already (hashed all the same).
struct Prepared {
    index: u64,
    /// Bytes of the chunk as stored.
    len: u64,
    bytes: Option<Vec<u8>>,
}

/// The chunks of an upload as [`read_ahead`] prepares them.
type ChunksAhead = tokio::sync::mpsc::Receiver<Result<Prepared>>;

/// The file's SHA-256 and that of its stored bytes, once [`read_ahead`] read it all.
type FileHashes = tokio::task::JoinHandle<Option<([u8; 32], [u8; 32])>>;

/// The `.part` file's SHA-256 and length, once [`write_behind`] wrote and synced it.
type PartWritten = tokio::task::JoinHandle<Result<([u8; 32], u64)>>;

/// Reads, hashes and seals the chunks of `source` in order on a blocking thread, up to
/// [`WINDOW`] ahead of the upload, so that sealing and hashing overlap with the network
/// and the server. `received` is the server's bitmap of chunks it holds. The thread ends
/// with the file's SHA-256 and that of the stored bytes; `None` if the upload stopped
/// taking chunks (or a read failed, which it sent) before the end.
fn read_ahead(source: Arc<Source>, received: Vec<u8>) -> (ChunksAhead, FileHashes) {
    let (tx, rx) = tokio::sync::mpsc::channel(WINDOW);
    let hashes = tokio::task::spawn_blocking(move || {
        let has = |i: u64| {
            received
                .get((i / 8) as usize)
                .is_some_and(|b| b & (1 << (i % 8)) != 0)
        };
        let mut plain = Sha256::new();
        let mut sealed = Sha256::new();
        for index in 0..chunk_count(source.stored_size()) {
            let prepared = source.chunk(index, &mut plain).map(|chunk| {
                sealed.update(&chunk);
                Prepared {
                    index,
                    len: chunk.len() as u64,
                    bytes: (!has(index)).then_some(chunk),
                }
            });
            let failed = prepared.is_err();
            if tx.blocking_send(prepared).is_err() || failed {
                return None;
            }
        }
        let sealed: [u8; 32] = sealed.finalize().into();
        let plain = match source.sealer {
            Some(_) => plain.finalize().into(),
            None => sealed,
        };
        Some((plain, sealed))
    });
    (rx, hashes)
}

/// Appends the chunks sent to it to `out` (the `.part` file, positioned at its end) on a
/// blocking thread, hashing them into `hasher` and syncing every [`SYNC_EVERY`] bytes;
/// once the sender is dropped, syncs the file and ends with its SHA-256 and length.
fn write_behind(
    mut out: File,
    mut hasher: Sha256,
    part: PathBuf,
) -> (tokio::sync::mpsc::Sender<Piece>, PartWritten) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(WINDOW);
    let written = tokio::task::spawn_blocking(move || {
        let io = |e| ClientError::io(format!("cannot write {}", part.display()), e);
        let mut unsynced = 0usize;
        while let Some(piece) = rx.blocking_recv() {
            hasher.update(piece.bytes());
            out.write_all(piece.bytes()).map_err(io)?;
            unsynced += piece.bytes().len();
            if unsynced >= SYNC_EVERY {
                out.sync_data().map_err(io)?;
                unsynced = 0;
            }
        }
        out.sync_all().map_err(io)?;
        let length = out.metadata().map_err(io)?.len();
        Ok((hasher.finalize().into(), length))
    });
    (tx, written)
}

/// Fetches one chunk (of `expected` bytes as stored) and opens it with `sealer`, off the
/// async threads, so that the chunks in flight open in parallel. The chunk stays in the
/// frame it arrived in: the answer is that frame and where in it the file's bytes are.
async fn fetch_chunk(
    conn: net::Connection,
    request: Request,
    expected: usize,
    sealer: Option<Arc<seal::Sealer>>,
) -> Result<Piece> {
    let (mut frame, start) = conn.download_chunk(&request).await?;
    if frame.len() - start != expected {
        return Err(ClientError::Invalid(
            "the server sent a chunk of the wrong size".into(),
        ));
    }
    let (Some(sealer), Request::DownloadChunk { index, .. }) = (sealer, &request) else {
        return Ok(Piece {
            end: frame.len(),
            frame,
            start,
        });
    };
    let index = u64::from(*index);
    tokio::task::spawn_blocking(move || {
        let plain = sealer.open_slice(index, &mut frame[start..])?;
        Ok(Piece {
            frame,
            start,
            end: start + plain,
        })
    })
    .await
    .map_err(|e| ClientError::Invalid(format!("opening a chunk: {e}")))?
}

/// A file's bytes as fetched: `frame[start..end]`, inside the frame they arrived in.
struct Piece {
    frame: Vec<u8>,
    start: usize,
    end: usize,
}

impl Piece {
    fn bytes(&self) -> &[u8] {
        &self.frame[self.start..self.end]
    }
}

fn part_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    target.with_file_name(name)
}

fn backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(200u64 << attempt.min(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_are_remembered_by_post() {
        let db = Connection::open_in_memory().unwrap();
        create_tables(&db).unwrap();
        let content = Content {
            version: CONTENT_VERSION,
            body: ContentBody::Attachment {
                blob: [1; 32],
                name: "plan.pdf".into(),
                size: 3,
                sha256: [2; 32],
                text: String::new(),
                file_key: Some(seal::fresh_key()),
            },
            mentions: Vec::new(),
        };
        let plain = postcard::to_allocvec(&content).unwrap();
        remember_plaintext(&db, "bauamt/secret", 4, &plain).unwrap();
        remember(&db, "bauamt", 5, &Content::text("kein Anhang")).unwrap();
        let n: i64 = db
            .prepare_cached("SELECT count(*) FROM attachments")
            .unwrap()
            .query_row([], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
