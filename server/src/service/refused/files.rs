//! Photo and file transfers, and the document library.

use rathaus_protocol::blobs::{BlobScope, DocPath};
use rathaus_protocol::{ErrorCode, GroupHandle};

/// Why an upload, a download or a post's file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobRefused {
    /// The server runs without a blob directory.
    #[error("this server does not store files")]
    NoStorage,
    /// Over the server's file limit.
    #[error("this server accepts files of at most {limit} bytes; this one has {size}")]
    TooLarge {
        /// The configured limit.
        limit: u64,
        /// The file's size.
        size: u64,
    },
    /// Too many unfinished uploads on the server.
    #[error("the server holds too many unfinished uploads right now; try again later")]
    TooManyUploads,
    /// An upload that is not the caller's or no longer exists.
    #[error("no unfinished upload {0} of yours (finished, or too old); begin it again")]
    NoUpload(u64),
    /// A chunk index past the file's end, on upload.
    #[error("upload {upload} has no chunk {index}")]
    NoChunk {
        /// The upload.
        upload: u64,
        /// The index.
        index: u32,
    },
    /// A chunk of the wrong length.
    #[error("chunk {index} of upload {upload} must have {expected} bytes, not {got}")]
    ChunkLength {
        /// The upload.
        upload: u64,
        /// The index.
        index: u32,
        /// Its length by the file's size.
        expected: usize,
        /// The length sent.
        got: usize,
    },
    /// Finishing before every chunk arrived.
    #[error("upload {upload} has {have} of its {need} chunks; send the others first")]
    Incomplete {
        /// The upload.
        upload: u64,
        /// Chunks received.
        have: u64,
        /// Chunks needed.
        need: u64,
    },
    /// The bytes do not hash to what the client announced.
    #[error("the uploaded bytes do not match their SHA-256; upload the file again")]
    Digest,
    /// A chunk index past the file's end, on download.
    #[error("the file has {0} chunks")]
    ChunkCount(u64),
    /// Nothing by that hash visible in that scope.
    #[error("{0} has no such file")]
    NoSuchFile(BlobScope),
    /// A post without a file.
    #[error("{group} #{seq} has no file")]
    PostWithoutFile {
        /// The group.
        group: GroupHandle,
        /// The post.
        seq: u64,
    },
    /// Posting a file that was not uploaded to that group.
    #[error("upload the file to {0} before posting it")]
    UploadFirst(GroupHandle),
    /// Downloads from a secret group are for its devices.
    #[error("only devices in {0} may download its files")]
    DownloadByMembers(GroupHandle),
    /// Uploads to a secret group are for its devices.
    #[error("only devices in {0} may post files to it")]
    UploadByMembers(GroupHandle),
    /// A library upload names its path.
    #[error("upload a library document for its path")]
    DocsNeedPath,
    /// Letting go of a file is its author's (or a moderator's).
    #[error("only the author of a post may let go of its file")]
    ReleaseByAuthor,
}

impl BlobRefused {
    /// The stable code the peer acts on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NoStorage | Self::TooManyUploads => ErrorCode::Unavailable,
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::NoUpload(_)
            | Self::NoSuchFile(_)
            | Self::PostWithoutFile { .. }
            | Self::UploadFirst(_) => ErrorCode::NotFound,
            Self::DownloadByMembers(_) | Self::UploadByMembers(_) | Self::ReleaseByAuthor => {
                ErrorCode::Forbidden
            }
            Self::NoChunk { .. }
            | Self::ChunkLength { .. }
            | Self::Incomplete { .. }
            | Self::Digest
            | Self::ChunkCount(_)
            | Self::DocsNeedPath => ErrorCode::Invalid,
        }
    }
}

/// Why a request to the document library was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocsRefused {
    /// `docs mkdir /`.
    #[error("the library's root exists")]
    RootExists,
    /// Something is at the path.
    #[error("{0} exists already")]
    Exists(DocPath),
    /// A document put at the root.
    #[error("the root is a folder")]
    RootIsFolder,
    /// `docs rm /`.
    #[error("the library's root stays")]
    RootStays,
    /// A document where a folder is.
    #[error("{0} is a folder")]
    IsFolder(DocPath),
    /// A folder that still holds something.
    #[error("{0} is not empty; remove what it holds first")]
    NotEmpty(DocPath),
    /// A parent that is a document.
    #[error("{0} is a document, not a folder")]
    NotAFolder(DocPath),
    /// A parent folder that does not exist.
    #[error("folder {0} does not exist; create it with `docs mkdir` first")]
    NoFolder(DocPath),
    /// Nothing at the path.
    #[error("the library has nothing at {0}")]
    Nothing(DocPath),
    /// Putting a document whose bytes were not uploaded for it.
    #[error("upload the document to the library before putting it at a path")]
    UploadFirst,
    /// Writing outside one's department folder without the editor role.
    #[error(
        "only editors and administrators write anywhere in the library; a department's owners \
         write in its folder (not {0})"
    )]
    NotAWriter(DocPath),
}

impl DocsRefused {
    /// The stable code the peer acts on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::RootExists | Self::Exists(_) => ErrorCode::AlreadyExists,
            Self::NoFolder(_) | Self::Nothing(_) | Self::UploadFirst => ErrorCode::NotFound,
            Self::NotAWriter(_) => ErrorCode::Forbidden,
            Self::RootIsFolder
            | Self::RootStays
            | Self::IsFolder(_)
            | Self::NotEmpty(_)
            | Self::NotAFolder(_) => ErrorCode::Invalid,
        }
    }
}
