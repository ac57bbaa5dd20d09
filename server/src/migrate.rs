//! `rathaus-server migrate`: moves the records of a sled data directory into PostgreSQL.
//!
//! The copy is the backup's snapshot (every key-value pair, in key order): written from
//! the stopped server's sled database, loaded into the empty database in one transaction,
//! then read back from PostgreSQL in the same format. The two must agree in the number of
//! records and in the SHA-256 of their bytes, or `config.json` is left as it was. On
//! success `config.json` names the database, so `run --data DIR` serves from it; `db/` is
//! left untouched for going back (delete it once satisfied).

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::data_dir::{Config, DataDir, StoreChoice};
use crate::error::ServerError;
use crate::store::{PgStore, SnapshotReader, Store};

/// What `migrate` did; the JSON of `rathaus-server migrate --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// Records copied.
    pub records: u64,
    /// SHA-256 (hex) of the snapshot, equal on both sides.
    pub sha256: String,
    /// The first id the database hands out after the ones sled did.
    pub next_id: u64,
}

/// Copies the records of the stopped server in `data_dir` into the empty PostgreSQL
/// database at `url`, verifies the copy and points `config.json` at it.
pub fn migrate(data_dir: &Path, url: &str) -> Result<MigrationReport, ServerError> {
    let dir = DataDir::new(data_dir);
    let config = dir.read_config()?;
    if config.store.is_some() {
        return Err(ServerError::Invalid(format!(
            "{} keeps its records in PostgreSQL already",
            data_dir.display()
        )));
    }
    let StoreChoice::Postgres(url) = StoreChoice::parse(Some(url))? else {
        return Err(ServerError::Invalid(
            "--to must be a postgres://… URL".into(),
        ));
    };
    if !dir.db().exists() {
        return Err(ServerError::NotInitialised(data_dir.to_path_buf()));
    }
    // Refused while a server runs on it: the copy would miss its later writes.
    let sled = dir.open_store()?;
    let target = PgStore::open(&url)?;
    if !target.is_empty()? {
        return Err(ServerError::Invalid(
            "the PostgreSQL database already holds Rathaus records; migrate only into an \
             empty database"
                .into(),
        ));
    }

    let tmp = data_dir.join("migrate.snapshot.partial");
    let result = (|| {
        let file = crate::ops::socket::create_private(&tmp)
            .map_err(|e| ServerError::io(format!("cannot create {}", tmp.display()), e))?;
        let mut out = Hashing::new(std::io::BufWriter::new(file));
        let source = sled.snapshot(&mut out)?;
        let (source_sha, _) = out.finish()?;
        drop(sled);

        let file = std::fs::File::open(&tmp)
            .map_err(|e| ServerError::io(format!("cannot read {}", tmp.display()), e))?;
        let loaded = target.load(
            &mut SnapshotReader::new(std::io::BufReader::new(file)),
            source.next_id,
        )?;

        let mut copy = Hashing::new(std::io::sink());
        let check = target.snapshot(&mut copy)?;
        let (copy_sha, _) = copy.finish()?;
        if loaded != source.records || check.records != source.records || copy_sha != source_sha {
            return Err(ServerError::Invalid(format!(
                "the copy does not match: {} records ({}) in sled, {} loaded, {} read back ({}); \
                 config.json is unchanged — empty the database before trying again",
                source.records, source_sha, loaded, check.records, copy_sha
            )));
        }
        if check.next_id < source.next_id {
            return Err(ServerError::Invalid(format!(
                "the database's ids start at {}, below sled's {}",
                check.next_id, source.next_id
            )));
        }
        Ok(MigrationReport {
            records: source.records,
            sha256: source_sha,
            next_id: check.next_id,
        })
    })();
    let _ = std::fs::remove_file(&tmp);
    let report = result?;
    write_config(
        &dir,
        &Config {
            store: Some(url),
            ..config
        },
    )?;
    Ok(report)
}

/// Replaces `config.json` atomically (written beside it, synced, renamed).
fn write_config(dir: &DataDir, config: &Config) -> Result<(), ServerError> {
    let path = dir.config();
    let json = serde_json::to_vec_pretty(config).map_err(|e| ServerError::Config {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let tmp = path.with_extension("json.partial");
    let _ = std::fs::remove_file(&tmp);
    let mut file = crate::ops::socket::create_private(&tmp)
        .map_err(|e| ServerError::io(format!("cannot create {}", tmp.display()), e))?;
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .map_err(|e| ServerError::io(format!("cannot write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| ServerError::io(format!("cannot replace {}", path.display()), e))
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            size: 0,
        }
    }

    /// Flushes; the hex SHA-256 and the size.
    fn finish(mut self) -> Result<(String, u64), ServerError> {
        self.inner
            .flush()
            .map_err(|e| ServerError::io("cannot write the snapshot", e))?;
        Ok((hex::encode(self.hash.finalize()), self.size))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
