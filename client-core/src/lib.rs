//! Rathaus client library: connection, local store, sync, MLS and trust for client apps.

pub mod mls;
