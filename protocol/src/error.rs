//! Stable error codes and the decoding error of this crate.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable reason for a refused request. Sent in
/// [`Response::Error`](crate::Response::Error) together with a human message; clients map
/// these to typed errors. Codes are only ever added, never renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The connection has not authenticated, or the credentials were wrong.
    Unauthenticated,
    /// Authenticated, but the role or membership does not allow this.
    Forbidden,
    /// The user, group, department or entry does not exist (or is not visible).
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// An MLS commit was for an epoch that is no longer current.
    StaleEpoch,
    /// Too many failed attempts; retry later.
    RateLimited,
    /// A frame or field is over its size limit.
    TooLarge,
    /// The request is malformed or breaks a rule.
    Invalid,
    /// The peers speak different protocol versions.
    VersionMismatch,
    /// An enrollment code is unknown, used or expired.
    CodeInvalid,
    /// The server is shutting down or over its connection limit.
    Unavailable,
    /// Something failed on the server; details are in its log, not here.
    Internal,
}

impl ErrorCode {
    /// A short stable name, as used in `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "Unauthenticated",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::AlreadyExists => "AlreadyExists",
            ErrorCode::StaleEpoch => "StaleEpoch",
            ErrorCode::RateLimited => "RateLimited",
            ErrorCode::TooLarge => "TooLarge",
            ErrorCode::Invalid => "Invalid",
            ErrorCode::VersionMismatch => "VersionMismatch",
            ErrorCode::CodeInvalid => "CodeInvalid",
            ErrorCode::Unavailable => "Unavailable",
            ErrorCode::Internal => "Internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why bytes could not be turned into a frame, or a value into bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The length prefix announces more than the limit for this stream.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Announced body length.
        len: usize,
        /// Limit in force.
        limit: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes the frame needed.
        need: usize,
    },
    /// The body is not a valid encoding of the expected type (unknown variant, bad field,
    /// trailing bytes, invalid identifier…).
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl ProtocolError {
    /// The error code a server answers this decoding error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } => ErrorCode::TooLarge,
            ProtocolError::Truncated { .. } | ProtocolError::Malformed(_) => ErrorCode::Invalid,
        }
    }
}
