//! The `RATHAUS_TEST_STORE` switch: with `RATHAUS_TEST_STORE=postgres://…` (a PostgreSQL
//! server the tests may create databases on, e.g. the throwaway one `.ci/run` starts),
//! every server the fixtures start keeps its records in a fresh database of its own,
//! dropped when the test's backend goes. Without it, servers use sled as in production's
//! default.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context, Result};

/// The environment variable naming the PostgreSQL server for the tests.
pub const TEST_STORE_VAR: &str = "RATHAUS_TEST_STORE";

/// Whether the tests' servers run on PostgreSQL (`RATHAUS_TEST_STORE` is set).
pub fn testing_on_postgres() -> bool {
    std::env::var(TEST_STORE_VAR).is_ok_and(|v| !v.is_empty() && v != "sled")
}

/// Skips a sled-specific test under `RATHAUS_TEST_STORE`, saying so: returns true if the
/// caller should return at once.
pub fn skip_on_postgres(what: &str) -> bool {
    if testing_on_postgres() {
        println!("skipped on PostgreSQL ({TEST_STORE_VAR} is set): {what}");
        true
    } else {
        false
    }
}

/// A database made for one server, dropped with this value.
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL servers are given (`--store`).
    url: String,
    /// The URL of the maintenance database it was created from.
    admin_url: String,
    /// Its name.
    name: String,
}

impl TestDatabase {
    /// A fresh database if `RATHAUS_TEST_STORE` is set, else `None` (sled).
    pub fn create_if_configured() -> Result<Option<Self>> {
        if !testing_on_postgres() {
            return Ok(None);
        }
        Self::create_on(&std::env::var(TEST_STORE_VAR)?).map(Some)
    }

    /// A fresh database on the PostgreSQL server `admin_url` names (any database there
    /// the user may create databases from, e.g. `postgres`).
    pub fn create_on(admin_url: &str) -> Result<Self> {
        let admin_url = admin_url.to_owned();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let url = with_database(&admin_url, &name)?;
        let statement = format!("CREATE DATABASE {name}");
        run_blocking(&admin_url, move |client| async move {
            client.batch_execute(&statement).await?;
            Ok(())
        })
        .context("cannot create a database on the PostgreSQL server")?;
        Ok(Self {
            url,
            admin_url,
            name,
        })
    }

    /// The URL to give the server.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every stored key and value, concatenated (what `pg_dump` would show of the
    /// records), for searching plaintext that must not be there.
    pub fn dump(&self) -> Result<Vec<u8>> {
        run_blocking(&self.url, |client| async move {
            let mut out = Vec::new();
            for row in client.query("SELECT k, v FROM kv ORDER BY k", &[]).await? {
                out.extend_from_slice(row.get::<_, &[u8]>(0));
                out.extend_from_slice(row.get::<_, &[u8]>(1));
            }
            Ok(out)
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = run_blocking(&self.admin_url, move |client| async move {
            client.batch_execute(&statement).await?;
            Ok(())
        }) {
            eprintln!("cannot drop test database {}: {e:#}", self.name);
        }
    }
}

/// `url` with its database replaced by `name` (the query, e.g. `?host=/socket/dir`, kept).
fn with_database(url: &str, name: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base
        .find("://")
        .ok_or_else(|| anyhow!("{url:?} is not a postgres:// URL"))?
        + 3;
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// Connects to `url` on a runtime of its own (callable inside or outside of a test's
/// runtime) and runs `f` with the client.
fn run_blocking<T, F>(
    url: &str,
    f: impl FnOnce(tokio_postgres::Client) -> F + Send + 'static,
) -> Result<T>
where
    F: std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send,
    T: Send + 'static,
{
    let url = url.to_owned();
    std::thread::spawn(move || -> Result<T> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let (client, connection) = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                tokio_postgres::connect(&url, tokio_postgres::NoTls),
            )
            .await
            .map_err(|_| anyhow!("timed out connecting to PostgreSQL"))??;
            let driver = tokio::spawn(connection);
            let result = f(client).await;
            driver.abort();
            result.map_err(|e| match e.as_db_error() {
                Some(db) => anyhow!("PostgreSQL: {}", db.message()),
                None => anyhow!("PostgreSQL: {e}"),
            })
        })
    })
    .join()
    .unwrap_or_else(|_| bail!("the database thread panicked"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced_and_its_query_kept() {
        assert_eq!(
            with_database("postgresql:///postgres?host=/tmp/pg&user=postgres", "t_1").unwrap(),
            "postgresql:///t_1?host=/tmp/pg&user=postgres"
        );
        assert_eq!(
            with_database("postgres://u:p@localhost:5433", "t_2").unwrap(),
            "postgres://u:p@localhost:5433/t_2"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres", "t_3").unwrap(),
            "postgres://u@h/t_3"
        );
        assert!(with_database("sled", "t").is_err());
    }
}
