//! Rathaus client library: connection, local store, sync, MLS and trust for client apps.
#![deny(missing_docs)]

pub mod mls;
