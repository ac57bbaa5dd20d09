//! The client's error type: one enum, each variant something a user or app can act on.

use std::path::PathBuf;

use rathaus_protocol::{ErrorCode, ProtocolError};

/// Everything that can go wrong in the client library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The profile directory holds no enrolled device.
    #[error("no Rathaus profile in {0} (run `rathaus enroll` first)")]
    NotEnrolled(PathBuf),
    /// The profile directory is already enrolled.
    #[error("{0} already holds an enrolled profile; use another --profile")]
    AlreadyEnrolled(PathBuf),
    /// The server presented a certificate other than the pinned one.
    #[error(
        "the server's certificate fingerprint is {actual}, but this profile trusts {expected}: \
         refusing to connect (someone may be intercepting the connection, or the server was \
         reinstalled; ask IT for the current fingerprint)"
    )]
    FingerprintMismatch {
        /// The pinned fingerprint.
        expected: String,
        /// The fingerprint the server presented.
        actual: String,
    },
    /// The server's certificate failed validation against the profile's CA certificates.
    #[error(
        "the server's certificate is not trusted for {server_name}: {reason}; refusing to \
         connect (check the server's name and address, or ask IT for the current CA \
         certificate)"
    )]
    UntrustedCertificate {
        /// The TLS server name the certificate was checked for.
        server_name: String,
        /// Why rustls refused it (unknown issuer, expired, issued for another name, …).
        reason: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the server at {addr}: {reason}")]
    Unreachable {
        /// Address tried.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The connection broke during a request.
    #[error("connection to the server lost: {0}")]
    ConnectionLost(String),
    /// The server closed the connection because this account was offboarded.
    #[error("this account was removed by an administrator; the session has ended")]
    AccountRemoved,
    /// The server is shutting down.
    #[error("the server is shutting down; try again shortly")]
    ServerShuttingDown,
    /// The server refused the request.
    #[error("{message} ({code})")]
    Server {
        /// Stable reason.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server sent bytes that are not a valid frame.
    #[error("the server sent an invalid frame: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server answered with a response that does not fit the request.
    #[error("unexpected answer from the server to {0}")]
    UnexpectedResponse(&'static str),
    /// The server did not answer in time.
    #[error("the server did not answer within {0} seconds")]
    Timeout(u64),
    /// Input given by the user is not valid.
    #[error("{0}")]
    Invalid(String),
    /// This device refused the request before sending it, by a rule the server (public
    /// groups) or every member (secret groups) applies alike: a message over a size
    /// bound, a change of someone else's post, a post that does not exist.
    #[error("{message} ({code})")]
    Refused {
        /// Stable reason, as the server would give it.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
    /// The local profile database failed.
    #[error("local profile database: {0}")]
    Store(#[from] rusqlite::Error),
    /// The local MLS state refused an operation.
    #[error("secret group: {0}")]
    Mls(#[from] crate::mls::MlsError),
    /// Only an owner of the secret group may do this.
    #[error("{0}")]
    NotOwner(String),
    /// This device is not (yet) a member of the secret group.
    #[error("{0}")]
    NotMember(String),
    /// This device is behind the secret group and the changes in between are gone from
    /// the server (it was restored from an older copy): it cannot read or write there
    /// until it is admitted again.
    #[error("{0}")]
    MissedChanges(String),
    /// The file is larger than the server accepts; nothing was sent.
    #[error("the file has {size} bytes, too large for this server: {message}")]
    TooLarge {
        /// Bytes to be stored.
        size: u64,
        /// The server's explanation (with its limit).
        message: String,
    },
    /// A local file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ClientError {
    /// The server's error code, if the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } | ClientError::Refused { code, .. } => Some(*code),
            ClientError::TooLarge { .. } => Some(ErrorCode::TooLarge),
            _ => None,
        }
    }

    /// A short stable name for this failure, as `--json` prints it and scripts match on:
    /// the server's [`ErrorCode`] name when the server refused, else the client's own
    /// (`Unreachable`, `FingerprintMismatch`, …). Never changes for a given variant.
    pub fn code_name(&self) -> &'static str {
        match self {
            ClientError::NotEnrolled(_) => "NotEnrolled",
            ClientError::AlreadyEnrolled(_) => "AlreadyEnrolled",
            ClientError::FingerprintMismatch { .. } => "FingerprintMismatch",
            ClientError::UntrustedCertificate { .. } => "UntrustedCertificate",
            ClientError::Unreachable { .. } => "Unreachable",
            ClientError::ConnectionLost(_) => "ConnectionLost",
            ClientError::AccountRemoved => "AccountRemoved",
            ClientError::ServerShuttingDown => "ServerShuttingDown",
            ClientError::Server { code, .. } | ClientError::Refused { code, .. } => code.as_str(),
            ClientError::Protocol(_) | ClientError::UnexpectedResponse(_) => "ProtocolViolation",
            ClientError::Timeout(_) => "Timeout",
            ClientError::Invalid(_) => "Invalid",
            ClientError::TooLarge { .. } => "TooLarge",
            ClientError::Store(_) => "LocalStore",
            ClientError::Mls(_) => "SecretGroupState",
            ClientError::NotOwner(_) => "NotOwner",
            ClientError::NotMember(_) => "NotMember",
            ClientError::MissedChanges(_) => "MissedChanges",
            ClientError::Io { .. } => "LocalFile",
        }
    }

    /// Whether retrying later may succeed without any change (network trouble).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. }
                | ClientError::ConnectionLost(_)
                | ClientError::ServerShuttingDown
                | ClientError::Timeout(_)
        ) || matches!(
            self.code(),
            Some(ErrorCode::Unavailable | ErrorCode::Internal)
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClientError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
