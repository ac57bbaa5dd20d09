//! Server-side search over public groups, announcements and the library's names.

use rathaus_protocol::limits::MAX_SEARCH_QUERY;
use rathaus_protocol::{ErrorCode, GroupHandle};

/// Why a search was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SearchRefused {
    /// A query over its limit.
    #[error("a search query is at most {MAX_SEARCH_QUERY} bytes")]
    QueryTooLong,
    /// A query of blanks.
    #[error("the search query is empty")]
    EmptyQuery,
    /// A search in a secret group, which only the device can do.
    #[error(
        "{0} is end-to-end encrypted: it is searched on your device only, never on the server"
    )]
    SecretGroup(GroupHandle),
    /// Secret groups in a search's scope.
    #[error("secret groups are searched on the device only")]
    SecretScope,
    /// The server runs without its index.
    #[error("search is not available on this server")]
    Unavailable,
}

impl SearchRefused {
    /// The stable code the peer acts on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unavailable => ErrorCode::Unavailable,
            Self::QueryTooLong | Self::EmptyQuery | Self::SecretGroup(_) | Self::SecretScope => {
                ErrorCode::Invalid
            }
        }
    }
}
