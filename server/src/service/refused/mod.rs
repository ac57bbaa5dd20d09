//! Why the service refuses a request: one enum per family of operations, each variant
//! with the facts of the case, mapped to its stable [`ErrorCode`] in one `code` match and
//! to the message the peer reads in one `Display` (DESIGN §6: every refusal is typed).
//!
//! A handler returns [`Refusal`]; tests match on [`Refusal::reason`], never on text.

mod announcements;
mod directory;
mod files;
mod lookup;
mod posts;
mod search;
mod secret;
mod session;

use rathaus_protocol::{ErrorCode, Response};

use crate::store::StoreError;

pub use announcements::AnnouncementRefused;
pub use directory::DirectoryRefused;
pub use files::{BlobRefused, DocsRefused};
pub use lookup::NotFound;
pub use posts::PostRefused;
pub use search::SearchRefused;
pub use secret::{MlsRefused, SecretRefused};
pub use session::SessionRefused;

/// A refused request: the typed reason the peer is told, plus (for internal failures)
/// what only the server log may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// Internal detail for the server log; never sent.
    pub detail: Option<String>,
}

/// Why a request was refused, by family of operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// Authentication, the session, the stream, roles and throttling.
    #[error(transparent)]
    Session(#[from] SessionRefused),
    /// Something named in the request does not exist.
    #[error(transparent)]
    NotFound(#[from] NotFound),
    /// Posts to public groups, their changes, moderation and retention.
    #[error(transparent)]
    Post(#[from] PostRefused),
    /// Secret groups and rooms: births, commits, messages, KeyPackages, invitations.
    #[error(transparent)]
    Secret(#[from] SecretRefused),
    /// The editorial workflow of announcements.
    #[error(transparent)]
    Announcement(#[from] AnnouncementRefused),
    /// People, departments, devices, roles, enrollment and imports.
    #[error(transparent)]
    Directory(#[from] DirectoryRefused),
    /// Photo and file transfers.
    #[error(transparent)]
    Blob(#[from] BlobRefused),
    /// The document library.
    #[error(transparent)]
    Docs(#[from] DocsRefused),
    /// Server-side search.
    #[error(transparent)]
    Search(#[from] SearchRefused),
    /// A frame that does not decode, or is over its limit.
    #[error("{message}")]
    Frame {
        /// The protocol's code for it.
        code: ErrorCode,
        /// The decoder's description.
        message: String,
    },
    /// Another server node on the same database wrote first; nothing was stored.
    #[error("a concurrent write came first; retry")]
    Conflict,
    /// A failure of the server itself; the detail is in the log only.
    #[error("internal server error; the operator can find details in the server log")]
    Internal,
}

impl Reason {
    /// The stable code the peer acts on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Session(r) => r.code(),
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Post(r) => r.code(),
            Self::Secret(r) => r.code(),
            Self::Announcement(r) => r.code(),
            Self::Directory(r) => r.code(),
            Self::Blob(r) => r.code(),
            Self::Docs(r) => r.code(),
            Self::Search(r) => r.code(),
            Self::Frame { code, .. } => *code,
            Self::Conflict => ErrorCode::Unavailable,
            Self::Internal => ErrorCode::Internal,
        }
    }
}

impl Refusal {
    /// An internal failure: the peer sees a generic message, the log sees `detail`.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self {
            reason: Reason::Internal,
            detail: Some(detail.into()),
        }
    }

    /// A frame that did not decode.
    pub fn frame(error: &rathaus_protocol::ProtocolError) -> Self {
        Reason::Frame {
            code: error.code(),
            message: error.to_string(),
        }
        .into()
    }

    /// The stable code the peer acts on.
    pub fn code(&self) -> ErrorCode {
        self.reason.code()
    }

    /// The message the peer reads.
    pub fn message(&self) -> String {
        self.reason.to_string()
    }

    /// Whether another writer on a shared store came first (nothing was stored).
    pub(crate) fn is_conflict(&self) -> bool {
        self.reason == Reason::Conflict
    }

    /// The wire response for this refusal.
    pub fn to_response(&self) -> Response {
        Response::error(self.code(), self.message())
    }
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        Self {
            reason,
            detail: None,
        }
    }
}

/// `From` for each family, so a handler writes `Err(PostRefused::… .into())` or `?`.
macro_rules! refusal_from {
    ($($family:ty),* $(,)?) => {$(
        impl From<$family> for Refusal {
            fn from(reason: $family) -> Self {
                Reason::from(reason).into()
            }
        }
    )*};
}

refusal_from!(
    SessionRefused,
    NotFound,
    PostRefused,
    SecretRefused,
    AnnouncementRefused,
    DirectoryRefused,
    BlobRefused,
    DocsRefused,
    SearchRefused,
);

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(detail) => Self {
                reason: Reason::Conflict,
                detail: Some(detail),
            },
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<MlsRefused> for Refusal {
    fn from(reason: MlsRefused) -> Self {
        SecretRefused::from(reason).into()
    }
}
