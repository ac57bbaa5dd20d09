//! End-to-end test fixtures for Rathaus: a real server on `127.0.0.1:0` with a temporary
//! data directory and a manual clock, and real clients with temporary profiles.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let mut backend = rathaus_tests::TestBackend::start().await?;
//! let mut admin = backend.admin().await?;
//! backend.department(&mut admin, "bauamt", &[]).await?;
//! let mut anna = backend.user(&mut admin, "P1001", "Anna Berg", &["bauamt"]).await?;
//! # Ok(()) }
//! ```

pub mod operator;

mod backend;
mod ca;
mod database;
mod measure;
mod process;
mod provision;
mod team;

use std::time::Duration;

use anyhow::{anyhow, Result};

pub use backend::TestBackend;
pub use ca::TestCa;
pub use database::{skip_on_postgres, testing_on_postgres, TestDatabase, TEST_STORE_VAR};
pub use measure::{
    contains, dir_size, files_containing, process_cpu_time, process_cpu_time_of, rss_kib,
    shared_endpoint, store_bytes,
};
pub use process::{metric_at, parse_listening_line, sibling_bin, workspace_bin, ServerProcess};
pub use provision::{
    init_data_dir, init_data_dir_on, provision_users, ProvisionedUser, Provisioning,
};
pub use team::Secret;

/// Password every fixture user enrolls with.
pub const PASSWORD: &str = "correct horse battery staple";

/// Runs `f` with a generous bound, so a hang fails the test instead of blocking CI.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .map_err(|_| anyhow!("timed out: {what}"))
}

/// Current wall-clock time in Unix milliseconds.
pub fn now_ms() -> i64 {
    rathaus_client::time_fmt::now_ms()
}

/// Logs warnings and errors (or what `RUST_LOG` selects) to the test output, which the
/// test harness shows for a failing test. A process that installed its own subscriber
/// first keeps it (`rathaus-bench`, whose standard output is its report).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
