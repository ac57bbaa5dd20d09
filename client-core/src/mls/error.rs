//! The error type of the MLS engine.

use super::DeviceIdentity;

/// Everything that can go wrong in an MLS engine operation.
///
/// openmls' own error types are generic over the storage error and carry
/// internal detail; they are flattened into [`MlsError::Protocol`] with the
/// operation that failed, so callers match on what they can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MlsError {
    /// The SQLite file could not be opened or queried.
    #[error("MLS storage: {0}")]
    Storage(#[from] rusqlite::Error),
    /// The openmls tables could not be created or upgraded.
    #[error("MLS storage migration: {0}")]
    Migration(String),
    /// Bytes from a peer or the server are not a well-formed MLS structure.
    #[error("malformed MLS {what}: {detail}")]
    Malformed {
        /// The structure that was expected.
        what: &'static str,
        /// Why decoding failed.
        detail: String,
    },
    /// No state for this group exists in the profile.
    #[error("unknown MLS group {}", hex_short(.0))]
    UnknownGroup(Vec<u8>),
    /// A credential does not carry a valid `"<user>/<device>"` identity.
    #[error("invalid device identity {0:?}")]
    InvalidIdentity(String),
    /// The member to remove is not in the group.
    #[error("{0} is not a member of the group")]
    NotAMember(DeviceIdentity),
    /// A proposal or commit would add a member on behalf of an external sender
    /// (the server). Rathaus clients never accept those (DESIGN §5.4); the
    /// commit was not merged.
    #[error("refused: external sender proposed adding a member (committer {committer:?})")]
    ExternalAdd {
        /// The member who committed the Add, if it came in a commit.
        committer: Option<DeviceIdentity>,
    },
    /// A commit broke the membership rule (DESIGN §5.9); it was not merged and the
    /// group stays at its epoch.
    #[error("refused commit: {0}")]
    Refused(rathaus_protocol::mls::CommitRefusal),
    /// A Welcome failed the checks made before joining; nothing was written.
    #[error("refused Welcome: {0}")]
    WelcomeRefused(rathaus_protocol::mls::WelcomeRefusal),
    /// Message secrets held back in a batch ([`super::MlsEngine::in_batch`]) were lost
    /// by a failure in the middle of it; the caller's transaction must be rolled back,
    /// and the messages processed again.
    #[error("MLS storage: held message secrets were lost; the batch must be rolled back")]
    HeldSecretsLost,
    /// openmls refused the operation.
    #[error("MLS {operation} failed: {detail}")]
    Protocol {
        /// The engine operation that failed.
        operation: &'static str,
        /// openmls' description of the failure.
        detail: String,
    },
}

impl MlsError {
    pub(crate) fn protocol(operation: &'static str, error: impl std::fmt::Debug) -> Self {
        Self::Protocol {
            operation,
            detail: format!("{error:?}"),
        }
    }

    pub(crate) fn malformed(what: &'static str, error: impl std::fmt::Debug) -> Self {
        Self::Malformed {
            what,
            detail: format!("{error:?}"),
        }
    }
}

fn hex_short(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
