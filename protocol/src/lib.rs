//! The Rathaus wire protocol, without any IO.
//!
//! Everything two Rathaus peers exchange is defined here: the [frame] codec (a `u32`
//! big-endian length followed by a postcard body), the [`Request`], [`Response`] and
//! [`Event`] enums, validated identifiers ([`UserId`], [`GroupHandle`], …), message
//! [`content`], [`limits`] and the stable [`ErrorCode`]s.
//!
//! The crate is *sans-IO*: no sockets, no async runtime, no storage. The server and the
//! client feed bytes in and take frames out, which keeps every decoder testable with
//! arbitrary input. Every decoder here is total (it returns an error, never panics) and
//! size-bounded (a frame over its limit is rejected from its length prefix, before any
//! allocation).
//!
//! ```
//! use rathaus_protocol::{frame, Request, PROTOCOL_VERSION};
//!
//! let bytes = frame::encode(&Request::Ping).unwrap();
//! let mut decoder = frame::FrameDecoder::new(rathaus_protocol::limits::MAX_CONTROL_FRAME);
//! decoder.push(&bytes);
//! let request: Request = decoder.next_frame().unwrap().unwrap();
//! assert_eq!(request, Request::Ping);
//! assert!(PROTOCOL_VERSION >= 1);
//! ```
#![deny(missing_docs)]

pub mod audit;
pub mod blobs;
pub mod close;
pub mod content;
pub mod error;
pub mod fingerprint;
pub mod frame;
pub mod ids;
pub mod limits;
pub mod log;
pub mod messages;
pub mod mls;

pub use blobs::{BlobScope, DocEntry, DocKind, DocPath, FileKey};
pub use content::{Content, ContentBody, ContentIn};
pub use error::{ErrorCode, ProtocolError};
pub use ids::{
    ClientMsgId, DepartmentSlug, DeviceId, DeviceKey, GroupHandle, Role, Signature, UserId,
};
pub use messages::{
    AnnouncementInfo, AnnouncementState, AuditEntry, ClaimedKeyPackage, DepartmentInfo, DeviceInfo,
    EntryBody, Event, GroupKind, GroupSummary, ImportOutcome, ImportResult, ImportRow, LogEntry,
    MemberInfo, PostBody, Request, Response, RoomInvitation, SearchHit, SearchSource, SessionInfo,
    UserSummary,
};

/// The protocol version this build speaks. A peer announcing another version is refused
/// with [`ErrorCode::VersionMismatch`].
pub const PROTOCOL_VERSION: u16 = 1;

/// The ALPN identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"rathaus/1";

/// Domain separator of the connection-authentication signature (DESIGN §3).
pub const AUTH_CONTEXT: &[u8] = b"rathaus-auth-v1";

/// Label of the TLS exporter secret the authentication signature is bound to.
pub const AUTH_EXPORTER_LABEL: &[u8] = b"rathaus auth";

/// The bytes a device signs to prove possession of its key on one TLS session:
/// `"rathaus-auth-v1" ‖ exporter(32 bytes) ‖ nonce(32 bytes)`.
pub fn auth_transcript(exporter: &[u8; 32], nonce: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(AUTH_CONTEXT.len() + 64);
    out.extend_from_slice(AUTH_CONTEXT);
    out.extend_from_slice(exporter);
    out.extend_from_slice(nonce);
    out
}
