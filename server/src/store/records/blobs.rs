//! Bookkeeping of files: stored blobs and who refers to them, uploads in progress, and
//! the document library. The bytes themselves live in the blob directory beside the
//! database (see `service::blobs`), never in the store.
//!
//! Keys (continuing the table in the parent module):
//!
//! | key | value |
//! |---|---|
//! | `blob/<sha256>` | [`BlobRecord`]: size and references of a stored blob |
//! | `postblob/<group>\0<seq u64 BE>` | sha256 (32 bytes): the blob a post refers to |
//! | `upload/<id u64 BE>` | [`UploadRecord`]: an upload in progress |
//! | `upchunk/<id u64 BE>\0<index u32 BE>` | empty: that chunk is durably in the partial file |
//! | `doc/<path>` | [`DocEntry`]: a folder or document of the library |

use rathaus_protocol::{BlobScope, DocEntry, DocPath, GroupHandle, UserId};
use serde::{Deserialize, Serialize};

use super::{decode, encode, key, prefix_end, Db, StoreError, Writes};

/// A stored blob. The blob file goes once `refs` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    /// Bytes.
    pub size: u64,
    /// When it was first stored, Unix ms.
    pub created_ms: i64,
    /// Everything that keeps it.
    pub refs: Vec<BlobRef>,
}

/// What keeps a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRef {
    /// Uploaded by `user` for `scope`, not yet posted or put into the library; dropped
    /// when stale.
    Pending {
        /// Where it was uploaded for.
        scope: BlobScope,
        /// The uploader.
        user: UserId,
        /// When the upload completed, Unix ms.
        since_ms: i64,
    },
    /// An attachment of the post `seq` of `group`.
    Post {
        /// The group.
        group: GroupHandle,
        /// The post.
        seq: u64,
        /// Its author (who may let go of it).
        sender: UserId,
    },
    /// A document of the library.
    Doc {
        /// Its path.
        path: DocPath,
    },
}

/// An upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Id (also in the key and the partial file's name).
    pub id: u64,
    /// Who uploads.
    pub user: UserId,
    /// Where the blob will belong.
    pub scope: BlobScope,
    /// Bytes of the whole blob.
    pub size: u64,
    /// When it began, Unix ms (stale uploads are cleaned up).
    pub created_ms: i64,
}

impl Db {
    /// A stored blob's record.
    pub fn blob(&self, sha256: &[u8; 32]) -> Result<Option<BlobRecord>, StoreError> {
        self.get(&key(BLOB, &[sha256]))
    }

    /// Every stored blob with its name, in name order.
    pub fn blobs(&self) -> Result<Vec<([u8; 32], BlobRecord)>, StoreError> {
        let end = prefix_end(BLOB);
        self.kv
            .range(BLOB, &end, usize::MAX)?
            .into_iter()
            .filter_map(|(k, v)| {
                let name = <[u8; 32]>::try_from(&k[BLOB.len()..]).ok()?;
                Some(decode(&k, &v).map(|r| (name, r)))
            })
            .collect()
    }

    /// The blob the post `seq` of `group` refers to, if any.
    pub fn post_blob(&self, group: &GroupHandle, seq: u64) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self
            .kv
            .get(&post_blob_key(group, seq))?
            .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok()))
    }

    /// An upload in progress.
    pub fn upload(&self, id: u64) -> Result<Option<UploadRecord>, StoreError> {
        self.get(&key(UPLOAD, &[&id.to_be_bytes()]))
    }

    /// Every upload in progress.
    pub fn uploads(&self) -> Result<Vec<UploadRecord>, StoreError> {
        self.all_under(UPLOAD)
    }

    /// The indices of the chunks of upload `id` that are durably stored.
    pub fn upload_chunks(&self, id: u64) -> Result<Vec<u32>, StoreError> {
        let mut start = key(UPCHUNK, &[&id.to_be_bytes()]);
        start.push(0);
        let mut end = start.clone();
        if let Some(last) = end.last_mut() {
            *last = 1;
        }
        Ok(self
            .kv
            .range(&start, &end, usize::MAX)?
            .into_iter()
            .filter_map(|(k, _)| {
                let at = k.len().checked_sub(4)?;
                <[u8; 4]>::try_from(&k[at..]).ok().map(u32::from_be_bytes)
            })
            .collect())
    }

    /// A library entry.
    pub fn doc(&self, path: &DocPath) -> Result<Option<DocEntry>, StoreError> {
        self.get(&doc_key(path))
    }

    /// The entries directly inside folder `path`, in path order, at most `limit`.
    pub fn doc_children(&self, path: &DocPath, limit: usize) -> Result<Vec<DocEntry>, StoreError> {
        let mut prefix = doc_key(path);
        if !path.is_root() {
            prefix.push(b'/');
        }
        let end = prefix_end(&prefix);
        let mut out = Vec::new();
        // Descendants come in key order; only direct children are listed. The range is
        // read page by page so that a deep subtree does not cost a whole read.
        let mut from = prefix.clone();
        loop {
            let page = self.kv.range(&from, &end, 1000)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            let mut next = last.clone();
            next.push(0);
            let full = page.len() == 1000;
            for (k, v) in page {
                let rest = &k[prefix.len()..];
                if !rest.contains(&b'/') {
                    out.push(decode(&k, &v)?);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if !full {
                break;
            }
            from = next;
        }
        Ok(out)
    }

    /// Whether folder `path` holds anything.
    pub fn doc_has_children(&self, path: &DocPath) -> Result<bool, StoreError> {
        let mut prefix = doc_key(path);
        prefix.push(b'/');
        let end = prefix_end(&prefix);
        Ok(!self.kv.range(&prefix, &end, 1)?.is_empty())
    }
}

impl Writes {
    /// Whether nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Stores a blob's record (or removes it when nothing refers to the blob any more).
    pub fn put_blob(
        &mut self,
        sha256: &[u8; 32],
        record: &BlobRecord,
    ) -> Result<&mut Self, StoreError> {
        if record.refs.is_empty() {
            self.batch.remove(key(BLOB, &[sha256]));
        } else {
            self.batch.put(key(BLOB, &[sha256]), encode(record)?);
        }
        Ok(self)
    }

    /// Records that the post `seq` of `group` refers to blob `sha256`.
    pub fn put_post_blob(&mut self, group: &GroupHandle, seq: u64, sha256: &[u8; 32]) -> &mut Self {
        self.batch.put(post_blob_key(group, seq), sha256.to_vec());
        self
    }

    /// Forgets which blob the post `seq` of `group` refers to.
    pub fn remove_post_blob(&mut self, group: &GroupHandle, seq: u64) -> &mut Self {
        self.batch.remove(post_blob_key(group, seq));
        self
    }

    /// Stores an upload in progress.
    pub fn put_upload(&mut self, upload: &UploadRecord) -> Result<&mut Self, StoreError> {
        self.batch
            .put(key(UPLOAD, &[&upload.id.to_be_bytes()]), encode(upload)?);
        Ok(self)
    }

    /// Records that chunk `index` of upload `id` is durably stored.
    pub fn put_upload_chunk(&mut self, id: u64, index: u32) -> &mut Self {
        self.batch.put(upload_chunk_key(id, index), Vec::new());
        self
    }

    /// Forgets an upload and the given chunks of it.
    pub fn remove_upload(&mut self, id: u64, chunks: &[u32]) -> &mut Self {
        self.batch.remove(key(UPLOAD, &[&id.to_be_bytes()]));
        for index in chunks {
            self.batch.remove(upload_chunk_key(id, *index));
        }
        self
    }

    /// Stores a library entry.
    pub fn put_doc(&mut self, entry: &DocEntry) -> Result<&mut Self, StoreError> {
        self.batch.put(doc_key(&entry.path), encode(entry)?);
        Ok(self)
    }

    /// Removes a library entry.
    pub fn remove_doc(&mut self, path: &DocPath) -> &mut Self {
        self.batch.remove(doc_key(path));
        self
    }
}

const BLOB: &[u8] = b"blob/";
const POST_BLOB: &[u8] = b"postblob/";
const UPLOAD: &[u8] = b"upload/";
const UPCHUNK: &[u8] = b"upchunk/";
const DOC: &[u8] = b"doc/";

fn post_blob_key(group: &GroupHandle, seq: u64) -> Vec<u8> {
    key(
        POST_BLOB,
        &[group.to_string().as_bytes(), &seq.to_be_bytes()],
    )
}

fn upload_chunk_key(id: u64, index: u32) -> Vec<u8> {
    key(UPCHUNK, &[&id.to_be_bytes(), &index.to_be_bytes()])
}

fn doc_key(path: &DocPath) -> Vec<u8> {
    key(DOC, &[path.as_str().as_bytes()])
}
