//! Files: blobs moved in chunks, and the document library's paths.
//!
//! A file travels as a *blob*: its stored bytes (for a secret group the ciphertext, for a
//! public group or the document library the plain file) cut into chunks of
//! [`BLOB_CHUNK`] bytes, each sent on its own QUIC stream as one request (DESIGN §7), so
//! a dropped connection costs at most the chunks in flight. The server names a stored
//! blob by the SHA-256 of its bytes.
//!
//! In a secret group the client seals the file with a fresh key in the STREAM
//! construction: segment `i` of [`SEALED_SEGMENT`] plaintext bytes becomes chunk `i` of
//! exactly [`BLOB_CHUNK`] bytes (the last one shorter), so every chunk is sealed and
//! opened on its own and a large file never sits whole in memory.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::GroupHandle;

/// Bytes of one chunk of a stored blob (the last chunk of a blob may be shorter).
pub const BLOB_CHUNK: usize = crate::limits::MAX_ATTACHMENT_CHUNK;

/// Bytes of the authentication tag that sealing adds to every segment.
pub const SEAL_TAG: usize = 16;

/// Plaintext bytes of one sealed segment: sealed, it is exactly one [`BLOB_CHUNK`].
pub const SEALED_SEGMENT: usize = BLOB_CHUNK - SEAL_TAG;

/// Largest per-file limit a server may be configured with (64 GiB): bounds the chunk
/// count of one upload, and so the size of its progress bitmap.
pub const MAX_UPLOAD_LIMIT: u64 = 64 * 1024 * 1024 * 1024;

/// Most folder levels of a document path.
pub const MAX_DOC_DEPTH: usize = 8;

/// Longest document path, in bytes.
pub const MAX_DOC_PATH: usize = 512;

/// Longest name of one document or folder, in bytes.
pub const MAX_DOC_NAME: usize = 128;

/// Where a blob belongs, which decides who may download it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlobScope {
    /// An attachment of a post in this group: every colleague for a public group, the
    /// devices in its MLS tree for a secret one.
    Group(GroupHandle),
    /// A document of the library: every colleague downloads it.
    Docs,
    /// An upload meant for the library document at this path: the server checks before
    /// any byte moves that the uploader may write there.
    Document(DocPath),
}

impl fmt::Display for BlobScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobScope::Group(g) => g.fmt(f),
            BlobScope::Docs => f.write_str("docs"),
            BlobScope::Document(path) => write!(f, "docs:{path}"),
        }
    }
}

/// The key that seals a file in a secret group; it travels only inside the MLS message.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileKey {
    /// ChaCha20-Poly1305 key, fresh for every file.
    pub key: [u8; 32],
    /// The STREAM nonce prefix (7 bytes; counter and last-segment flag follow).
    pub nonce_prefix: [u8; 7],
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(..)")
    }
}

/// Number of chunks of a blob of `stored` bytes (an empty blob has none).
pub fn chunk_count(stored: u64) -> u64 {
    stored.div_ceil(BLOB_CHUNK as u64)
}

/// Bytes of chunk `index` of a blob of `stored` bytes; `None` past its end.
pub fn chunk_len(stored: u64, index: u64) -> Option<usize> {
    let start = index.checked_mul(BLOB_CHUNK as u64)?;
    if start >= stored {
        return None;
    }
    // At most BLOB_CHUNK, which fits in usize.
    Some((stored - start).min(BLOB_CHUNK as u64) as usize)
}

/// Bytes a file of `plain` bytes takes once sealed: every segment gains a tag, and an
/// empty file is one empty segment (so that its tag proves it is complete).
pub fn sealed_size(plain: u64) -> u64 {
    let segments = plain.div_ceil(SEALED_SEGMENT as u64).max(1);
    plain + segments * SEAL_TAG as u64
}

/// A validated path in the document library: `/` alone (the root), or `/` followed by
/// 1 to [`MAX_DOC_DEPTH`] names separated by `/`. A name is 1 to [`MAX_DOC_NAME`] bytes
/// of printable characters without `/` or `\`, and neither `.` nor `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DocPath(String);

/// Why a document path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid document path {path:?}: {reason}")]
pub struct InvalidDocPath {
    /// The path as given (cut to a readable length).
    pub path: String,
    /// The rule it breaks.
    pub reason: &'static str,
}

impl DocPath {
    /// The library's root folder.
    pub fn root() -> Self {
        Self("/".to_owned())
    }

    /// Parses a path as typed: a leading `/` is optional, one trailing `/` is ignored.
    pub fn parse(s: &str) -> Result<Self, InvalidDocPath> {
        let refuse = |reason| InvalidDocPath {
            path: s.chars().take(80).collect(),
            reason,
        };
        if s.len() > MAX_DOC_PATH {
            return Err(refuse("longer than 512 bytes"));
        }
        let trimmed = s.strip_prefix('/').unwrap_or(s);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Ok(Self::root());
        }
        let names: Vec<&str> = trimmed.split('/').collect();
        if names.len() > MAX_DOC_DEPTH {
            return Err(refuse("more than 8 levels"));
        }
        for name in &names {
            if name.is_empty() {
                return Err(refuse("empty name (two slashes in a row)"));
            }
            if *name == "." || *name == ".." {
                return Err(refuse("\".\" and \"..\" are not allowed"));
            }
            if name.len() > MAX_DOC_NAME {
                return Err(refuse("a name is longer than 128 bytes"));
            }
            if name.chars().any(|c| c.is_control() || c == '\\') {
                return Err(refuse("control characters and backslashes are not allowed"));
            }
            if name.trim() != *name {
                return Err(refuse("a name may not start or end with spaces"));
            }
        }
        Ok(Self(format!("/{}", names.join("/"))))
    }

    /// The path as text (`/`, `/bauamt/plaene/halle.pdf`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root folder.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The names from the root down.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|n| !n.is_empty())
    }

    /// The last name (`""` for the root).
    pub fn name(&self) -> &str {
        self.names().last().unwrap_or("")
    }

    /// The folder holding this path (`None` for the root).
    pub fn parent(&self) -> Option<DocPath> {
        if self.is_root() {
            return None;
        }
        match self.0.rfind('/') {
            Some(0) | None => Some(Self::root()),
            Some(at) => Some(Self(self.0[..at].to_owned())),
        }
    }

    /// The first name below the root: the department folder a path lies in, if any.
    pub fn top(&self) -> Option<&str> {
        self.names().next()
    }

    /// Whether `self` is `other` or lies inside it.
    pub fn is_within(&self, other: &DocPath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for DocPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for DocPath {
    type Error = InvalidDocPath;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let parsed = Self::parse(&s)?;
        // Only the canonical spelling crosses the wire, so both ends compare it as is.
        if parsed.0 != s {
            return Err(InvalidDocPath {
                path: s.chars().take(80).collect(),
                reason: "not in canonical form",
            });
        }
        Ok(parsed)
    }
}

impl From<DocPath> for String {
    fn from(p: DocPath) -> Self {
        p.0
    }
}

/// One entry of a library folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocEntry {
    /// Its path.
    pub path: DocPath,
    /// A folder or a document.
    pub kind: DocKind,
    /// Who created or last replaced it.
    pub updated_by: crate::ids::UserId,
    /// When, Unix ms.
    pub updated_ms: i64,
}

/// What a library entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DocKind {
    /// A folder.
    Folder,
    /// A document, stored as a blob.
    Document {
        /// SHA-256 of its bytes (the blob's name).
        blob: [u8; 32],
        /// Its size in bytes.
        size: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_validated_and_canonical() {
        assert_eq!(DocPath::parse("").unwrap(), DocPath::root());
        assert_eq!(DocPath::parse("/").unwrap(), DocPath::root());
        let p = DocPath::parse("bauamt/plaene/").unwrap();
        assert_eq!(p.as_str(), "/bauamt/plaene");
        assert_eq!(p.top(), Some("bauamt"));
        assert_eq!(p.name(), "plaene");
        assert_eq!(p.parent().unwrap().as_str(), "/bauamt");
        assert_eq!(
            DocPath::parse("/a").unwrap().parent(),
            Some(DocPath::root())
        );
        assert!(p.is_within(&DocPath::parse("/bauamt").unwrap()));
        assert!(!DocPath::parse("/bauamtx/a")
            .unwrap()
            .is_within(&DocPath::parse("/bauamt").unwrap()));
        for bad in ["/a/../b", "/a//b", "/./a", "/a\\b", "/ a", "/a\u{7}"] {
            assert!(DocPath::parse(bad).is_err(), "{bad}");
        }
        assert!(DocPath::parse(&"/a".repeat(9)).is_err());
        assert!(DocPath::parse(&format!("/{}", "x".repeat(129))).is_err());
        assert!(
            DocPath::try_from("a/b".to_owned()).is_err(),
            "not canonical"
        );
        assert!(DocPath::try_from("/a/b".to_owned()).is_ok());
    }

    #[test]
    fn chunk_arithmetic() {
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(BLOB_CHUNK as u64), 1);
        assert_eq!(chunk_count(BLOB_CHUNK as u64 + 1), 2);
        assert_eq!(chunk_len(BLOB_CHUNK as u64 + 1, 1), Some(1));
        assert_eq!(chunk_len(BLOB_CHUNK as u64 + 1, 2), None);
        assert_eq!(chunk_len(10, u64::MAX), None);
        assert_eq!(sealed_size(0), SEAL_TAG as u64);
        assert_eq!(sealed_size(SEALED_SEGMENT as u64), BLOB_CHUNK as u64);
        assert_eq!(
            sealed_size(SEALED_SEGMENT as u64 + 1),
            BLOB_CHUNK as u64 + 1 + SEAL_TAG as u64
        );
    }
}
