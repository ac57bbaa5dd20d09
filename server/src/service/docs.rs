//! The document library: one server-readable tree of folders and documents.
//!
//! Every colleague reads it. Editors and administrators write anywhere; a department's
//! owners write inside the folder named after the department (`/bauamt/...`). A document
//! is a blob uploaded with scope `Docs` (the same chunked, resumable path as attachments)
//! and then put at its path. Every change is audited in the same batch as the change.

use rathaus_protocol::{BlobScope, DocEntry, DocKind, DocPath, Response, Role};

use super::blobs::BlobChanges;
use super::refused::DocsRefused;
use super::{Refusal, Service};
use crate::store::{BlobRef, UserRecord, Writes};

/// Most entries one `DocList` answers with.
const MAX_LIST: usize = 1000;

impl Service {
    pub(super) fn doc_list(&self, path: DocPath) -> Result<Response, Refusal> {
        if path.is_root() {
            return Ok(Response::DocEntries(self.db.doc_children(&path, MAX_LIST)?));
        }
        match self.db.doc(&path)? {
            None => Err(no_such(&path)),
            Some(
                entry @ DocEntry {
                    kind: DocKind::Document { .. },
                    ..
                },
            ) => Ok(Response::DocEntries(vec![entry])),
            Some(_) => Ok(Response::DocEntries(self.db.doc_children(&path, MAX_LIST)?)),
        }
    }

    pub(super) async fn doc_mkdir(
        &self,
        me: &UserRecord,
        path: DocPath,
    ) -> Result<Response, Refusal> {
        self.require_doc_writer(me, &path)?;
        if path.is_root() {
            return Err(DocsRefused::RootExists.into());
        }
        let now = self.now_ms();
        {
            let _log = self.log_lock();
            let _blobs = self.blob_lock();
            if self.db.doc(&path)?.is_some() {
                return Err(DocsRefused::Exists(path).into());
            }
            self.require_folder(path.parent().as_ref())?;
            let mut w = Writes::new();
            w.put_doc(&DocEntry {
                path: path.clone(),
                kind: DocKind::Folder,
                updated_by: me.id.clone(),
                updated_ms: now,
            })?;
            let mut audit = self.audit()?;
            audit.record(&mut w, now, &me.id, "doc.mkdir", path.as_str(), "")?;
            self.db.apply(w)?;
            audit.commit();
        }
        self.durable(self.durability.written()).await?;
        tracing::info!(%path, by = %me.id, "library folder created");
        Ok(Response::Done)
    }

    pub(super) async fn doc_put(
        &self,
        me: &UserRecord,
        path: DocPath,
        blob: [u8; 32],
    ) -> Result<Response, Refusal> {
        self.require_doc_writer(me, &path)?;
        if path.is_root() {
            return Err(DocsRefused::RootIsFolder.into());
        }
        let now = self.now_ms();
        let orphans = {
            let _log = self.log_lock();
            let _blobs = self.blob_lock();
            self.require_folder(path.parent().as_ref())?;
            let mut changes = BlobChanges::default();
            let mut w = Writes::new();
            let replaced = match self.db.doc(&path)? {
                Some(DocEntry {
                    kind: DocKind::Folder,
                    ..
                }) => return Err(DocsRefused::IsFolder(path).into()),
                Some(DocEntry {
                    kind: DocKind::Document { blob: old, .. },
                    ..
                }) => {
                    changes.drop_doc(self, &old, &path)?;
                    true
                }
                None => false,
            };
            let Some(record) = changes.record(self, &blob)? else {
                return Err(upload_first());
            };
            let Some(at) = record.refs.iter().position(|r| {
                matches!(r, BlobRef::Pending { scope: BlobScope::Document(p), user, .. }
                    if user == &me.id && p == &path)
            }) else {
                return Err(upload_first());
            };
            record.refs.remove(at);
            record.refs.push(BlobRef::Doc { path: path.clone() });
            let size = record.size;
            w.put_doc(&DocEntry {
                path: path.clone(),
                kind: DocKind::Document { blob, size },
                updated_by: me.id.clone(),
                updated_ms: now,
            })?;
            let orphans = changes.write(&mut w)?;
            let mut audit = self.audit()?;
            let detail = format!(
                "{} {size} bytes, sha256 {}",
                if replaced { "replaced with" } else { "new," },
                hex::encode(blob)
            );
            audit.record(&mut w, now, &me.id, "doc.put", path.as_str(), detail)?;
            self.db.apply(w)?;
            audit.commit();
            orphans
        };
        self.durable(self.durability.written()).await?;
        self.remove_unreferenced(&orphans);
        self.index_document(&path, me, now);
        tracing::info!(%path, by = %me.id, "library document stored");
        Ok(Response::Done)
    }

    pub(super) async fn doc_remove(
        &self,
        me: &UserRecord,
        path: DocPath,
    ) -> Result<Response, Refusal> {
        self.require_doc_writer(me, &path)?;
        if path.is_root() {
            return Err(DocsRefused::RootStays.into());
        }
        let now = self.now_ms();
        let orphans = {
            let _log = self.log_lock();
            let _blobs = self.blob_lock();
            let entry = self.db.doc(&path)?.ok_or_else(|| no_such(&path))?;
            let mut w = Writes::new();
            let mut changes = BlobChanges::default();
            let detail = match entry.kind {
                DocKind::Folder => {
                    if self.db.doc_has_children(&path)? {
                        return Err(DocsRefused::NotEmpty(path).into());
                    }
                    "folder".to_owned()
                }
                DocKind::Document { blob, size } => {
                    changes.drop_doc(self, &blob, &path)?;
                    format!("document of {size} bytes")
                }
            };
            w.remove_doc(&path);
            let orphans = changes.write(&mut w)?;
            let mut audit = self.audit()?;
            audit.record(&mut w, now, &me.id, "doc.rm", path.as_str(), detail)?;
            self.db.apply(w)?;
            audit.commit();
            orphans
        };
        self.durable(self.durability.written()).await?;
        self.remove_unreferenced(&orphans);
        self.unindex_document(&path);
        tracing::info!(%path, by = %me.id, "library entry removed");
        Ok(Response::Done)
    }

    /// Whether `me` may put a document at `path`: checked before its upload begins, and
    /// again when it is put.
    pub(super) fn check_doc_put(&self, me: &UserRecord, path: &DocPath) -> Result<(), Refusal> {
        self.require_doc_writer(me, path)?;
        if path.is_root() {
            return Err(DocsRefused::RootIsFolder.into());
        }
        self.require_folder(path.parent().as_ref())?;
        if let Some(DocEntry {
            kind: DocKind::Folder,
            ..
        }) = self.db.doc(path)?
        {
            return Err(DocsRefused::IsFolder(path.clone()).into());
        }
        Ok(())
    }

    fn require_doc_writer(&self, me: &UserRecord, path: &DocPath) -> Result<(), Refusal> {
        if me.has_role(Role::Editor) || me.has_role(Role::Admin) {
            return Ok(());
        }
        if let Some(top) = path.top() {
            let owner = rathaus_protocol::DepartmentSlug::parse(top)
                .ok()
                .and_then(|slug| self.db.department(&slug).transpose())
                .transpose()?
                .is_some_and(|d| d.owners.contains(&me.id));
            if owner {
                return Ok(());
            }
        }
        Err(DocsRefused::NotAWriter(path.clone()).into())
    }

    fn require_folder(&self, path: Option<&DocPath>) -> Result<(), Refusal> {
        let Some(path) = path else {
            return Ok(());
        };
        if path.is_root() {
            return Ok(());
        }
        match self.db.doc(path)? {
            Some(DocEntry {
                kind: DocKind::Folder,
                ..
            }) => Ok(()),
            Some(_) => Err(DocsRefused::NotAFolder(path.clone()).into()),
            None => Err(DocsRefused::NoFolder(path.clone()).into()),
        }
    }
}

fn no_such(path: &DocPath) -> Refusal {
    DocsRefused::Nothing(path.clone()).into()
}

fn upload_first() -> Refusal {
    DocsRefused::UploadFirst.into()
}
