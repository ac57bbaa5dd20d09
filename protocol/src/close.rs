//! QUIC application close codes: why the server ended a connection, so the client can
//! tell the user what to do (reconnect later, enroll again, …) without reading the
//! human-readable reason. Defined once for both sides.

/// The server is shutting down (a restart or an update): reconnect later.
pub const SHUTTING_DOWN: u32 = 0x01;

/// The account was offboarded (or this device revoked): its sessions end at once.
pub const ACCOUNT_REMOVED: u32 = 0x10;

/// The connection did not authenticate within the server's deadline.
pub const AUTH_TIMEOUT: u32 = 0x11;

/// The connection failed too many device-key proofs.
pub const FAILED_PROOFS: u32 = 0x12;
