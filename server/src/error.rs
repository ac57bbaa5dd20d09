//! The errors of the server's operator-facing API (`init`, `start`, `inspect`).
//!
//! Errors a *peer* causes never show up here: they are answered on the wire with an
//! [`ErrorCode`](rathaus_protocol::ErrorCode) by the service layer.

use std::path::PathBuf;

use crate::store::StoreError;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// `init` was run on a directory that already holds a Rathaus server.
    #[error("{0} already holds an initialised Rathaus server; refusing to overwrite it")]
    AlreadyInitialised(PathBuf),
    /// The data directory has not been set up with `rathaus-server init`.
    #[error("{0} is not an initialised Rathaus data directory (run `rathaus-server init --data {0}` first)")]
    NotInitialised(PathBuf),
    /// Another process (normally the running server) holds the database.
    #[error("the database in {0} is in use by a running server; stop the server first")]
    Locked(PathBuf),
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key is unusable.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The database failed or holds data this build cannot read.
    #[error("storage error: {0}")]
    Store(#[from] StoreError),
    /// `config.json` is malformed.
    #[error("invalid configuration in {path}: {reason}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The full-text index could not be opened.
    #[error("{0}")]
    Search(String),
    /// A command-line value is unusable (e.g. an unknown group).
    #[error("{0}")]
    Invalid(String),
}

impl ServerError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
