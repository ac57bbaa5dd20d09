//! The Rathaus server: a QUIC relay and delivery service for a city administration.
//!
//! Layers:
//! - [`transport`]: the quinn endpoint, TLS, one task per connection and per stream,
//!   size-bounded frame IO. It only moves frames.
//! - [`service`]: the rules (authentication, enrollment, throttling, provisioning, group
//!   logs) as plain methods over a [`store::Db`] and an injected [`clock::Clock`].
//! - [`store`]: a [`store::Store`] trait with sled and in-memory implementations.
//!
//! The functions at the top level ([`init`], [`start`], [`inspect`]) are what the
//! `rathaus-server` binary and the end-to-end tests call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rathaus_server::ServerError> {
//! use rathaus_server::{init, start, InitOptions, RunOptions, clock::SystemClock};
//!
//! let dir = std::path::PathBuf::from("/var/lib/rathaus");
//! let report = init(
//!     &InitOptions { data_dir: dir.clone(), listen: None, org: None, admin_user: None, store: None },
//!     &SystemClock,
//! )?;
//! println!("enroll {} with {}", report.admin_user, report.enrollment_code);
//! let server = start(RunOptions::new(dir)).await?;
//! println!("listening on {} fingerprint {}", server.local_addr(), server.fingerprint());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod backup;
pub mod clock;
pub mod config;
mod data_dir;
mod error;
mod inspect;
pub mod memory;
mod metrics;
pub mod migrate;
mod ops;
pub mod search;
pub mod service;
pub mod store;
pub mod transport;

pub use data_dir::{init, open_records, InitOptions, InitReport};
pub use error::ServerError;
pub use inspect::inspect;
pub use transport::{start, ConnectionLimits, DefenceStats, RunOptions, RunningServer};
