//! Authentication, the session, the request stream, roles and throttling.

use rathaus_protocol::ErrorCode;

use crate::service::throttle::Refused as Throttled;

/// Why a request was refused before its operation was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionRefused {
    /// A second `Hello` on an authenticated connection.
    #[error("this connection is already authenticated")]
    AlreadyAuthenticated,
    /// A request the service does not answer on this path (the transport does).
    #[error("this request cannot be handled here")]
    NotHere,
    /// A request this server does not implement.
    #[error("this server does not support {0} yet")]
    Unsupported(&'static str),
    /// The session's user or device was removed or revoked since it authenticated.
    #[error("this session is no longer valid; authenticate again")]
    Ended,
    /// A request before authentication.
    #[error("authenticate first (Hello), or enroll")]
    Unauthenticated,
    /// A `Prove` without its `Hello`.
    #[error("send Hello first and the proof on the same stream")]
    HelloFirst,
    /// Unknown user or device, revoked device, or bad signature (never which).
    #[error("authentication failed: unknown user or device, revoked device, or bad signature")]
    AuthFailed,
    /// The client speaks another protocol version.
    #[error("this server speaks protocol version {server}, the client {client}")]
    VersionMismatch {
        /// Ours.
        server: u16,
        /// Theirs.
        client: u16,
    },
    /// The authentication stream closed before the challenge was sent.
    #[error("stream closed")]
    StreamClosed,
    /// Another request where `Prove` belongs.
    #[error("expected Prove after the challenge")]
    ExpectedProve,
    /// The stream ended where `Prove` belongs.
    #[error("stream ended before Prove")]
    EndedBeforeProve,
    /// The stream failed while waiting for `Prove`.
    #[error("stream broke: {0}")]
    StreamBroke(String),
    /// No `Prove` in time.
    #[error("timed out waiting for Prove")]
    ProveTimeout,
    /// Too many request bytes in flight on the server.
    #[error("the server is receiving too many requests at once; try again in a moment")]
    Busy,
    /// All password checks are taken.
    #[error("the server is busy checking other passwords; try again in a moment")]
    PasswordChecksBusy,
    /// The throttle refused a password or code attempt without checking it.
    #[error("{}", .0.message())]
    Throttled(Throttled),
    /// The request needs the admin role.
    #[error("only administrators may {0}")]
    AdminOnly(&'static str),
}

impl SessionRefused {
    /// The stable code the peer acts on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::AlreadyAuthenticated
            | Self::NotHere
            | Self::Unsupported(_)
            | Self::StreamClosed
            | Self::ExpectedProve
            | Self::EndedBeforeProve
            | Self::StreamBroke(_)
            | Self::ProveTimeout => ErrorCode::Invalid,
            Self::Ended | Self::Unauthenticated | Self::HelloFirst | Self::AuthFailed => {
                ErrorCode::Unauthenticated
            }
            Self::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            Self::Busy | Self::PasswordChecksBusy => ErrorCode::Unavailable,
            Self::Throttled(_) => ErrorCode::RateLimited,
            Self::AdminOnly(_) => ErrorCode::Forbidden,
        }
    }
}
