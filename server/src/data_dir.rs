//! The data directory: layout, `config.json`, and `init`.
//!
//! ```text
//! DIR/            0700
//!   config.json   {"org": "...", "listen": "0.0.0.0:4433"}
//!   cert.der      self-signed server certificate (DER)
//!   key.der       its PKCS#8 private key (DER, 0600)
//!   removal.key   Ed25519 seed of the removal key, signs MLS Remove proposals (0600)
//!   reset.key     QUIC stateless-reset and connection-id key (0600), so that after a
//!                 restart clients of the previous run learn at once that it is gone
//!   db/           sled database (absent when the records are in PostgreSQL: then
//!                 config.json names the database under "store")
//!   blobs/        stored files (attachments, library documents) named by their SHA-256;
//!                 partial/ holds uploads in progress
//! ```

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use rathaus_protocol::UserId;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::error::ServerError;
use crate::service::{bootstrap, RemovalKey};
use crate::store::{is_postgres_url, Db, PgStore, SledStore, Store, StoreError};
use crate::transport::tls::TlsIdentity;

/// Where the server listens unless told otherwise.
pub(crate) const DEFAULT_LISTEN: &str = "0.0.0.0:4433";

/// Organisation name unless told otherwise.
const DEFAULT_ORG: &str = "Rathaus";

/// Personnel number of the bootstrap administrator unless told otherwise.
const DEFAULT_ADMIN: &str = "admin";

/// What `init` sets up.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The data directory (created if missing; must not hold a server yet).
    pub data_dir: PathBuf,
    /// Address to listen on; default `0.0.0.0:4433`.
    pub listen: Option<SocketAddr>,
    /// Organisation name; default "Rathaus".
    pub org: Option<String>,
    /// Personnel number of the first administrator; default `admin`.
    pub admin_user: Option<UserId>,
    /// `postgres://…`: keep the records in that PostgreSQL database (which must hold
    /// none yet) instead of the sled database in the data directory; `None` or `"sled"`:
    /// sled.
    pub store: Option<String>,
}

/// What `init` reports; serialised as the JSON of `rathaus-server init --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitReport {
    /// Personnel number of the first administrator.
    pub admin_user: String,
    /// The administrator's one-time enrollment code.
    pub enrollment_code: String,
    /// Certificate fingerprint clients pin: `SHA256:<hex>`.
    pub fingerprint: String,
    /// The configured listen address.
    pub listen: String,
}

/// Creates a new server in `opts.data_dir`: database, TLS certificate, configuration and
/// the first administrator with a one-time enrollment code. Refuses a directory that
/// already holds a server.
pub fn init(opts: &InitOptions, clock: &dyn Clock) -> Result<InitReport, ServerError> {
    let dir = DataDir::new(&opts.data_dir);
    if dir.config().exists() || dir.db().exists() {
        return Err(ServerError::AlreadyInitialised(opts.data_dir.clone()));
    }
    fs::create_dir_all(&opts.data_dir)
        .map_err(|e| ServerError::io(format!("cannot create {}", opts.data_dir.display()), e))?;
    restrict(&opts.data_dir, 0o700)?;

    let listen = opts
        .listen
        .map_or_else(|| DEFAULT_LISTEN.to_owned(), |a| a.to_string());
    let mut names = Vec::new();
    if let Some(addr) = opts.listen.filter(|a| !a.ip().is_unspecified()) {
        names.push(addr.ip().to_string());
    }
    let identity = TlsIdentity::generate(&names)?;
    write_private(&dir.cert(), identity.cert_der())?;
    write_private(&dir.key(), identity.key_der())?;
    dir.removal_key()?;
    dir.reset_key()?;

    let org = opts.org.clone().unwrap_or_else(|| DEFAULT_ORG.to_owned());
    let admin = match &opts.admin_user {
        Some(a) => a.clone(),
        None => UserId::parse(DEFAULT_ADMIN).map_err(|e| ServerError::Invalid(e.to_string()))?,
    };
    let postgres = StoreChoice::parse(opts.store.as_deref())?;
    let code = match &postgres {
        StoreChoice::Postgres(url) => {
            let store = PgStore::open(url)?;
            if !store.is_empty()? {
                return Err(ServerError::Invalid(
                    "the PostgreSQL database already holds a Rathaus server; give an empty \
                     database to --store"
                        .into(),
                ));
            }
            // Every write there is a committed, synchronously flushed transaction.
            bootstrap(&Db::new(Arc::new(store)), clock.now_ms(), &org, &admin)?
        }
        StoreChoice::Sled => {
            let store = dir.open_store()?;
            let db = Db::new(Arc::new(store.clone()));
            let code = bootstrap(&db, clock.now_ms(), &org, &admin)?;
            store.flush_blocking()?;
            code
        }
    };

    let config = Config {
        org,
        listen: listen.clone(),
        store: match postgres {
            StoreChoice::Postgres(url) => Some(url),
            StoreChoice::Sled => None,
        },
    };
    let json = serde_json::to_vec_pretty(&config).map_err(|e| ServerError::Config {
        path: dir.config(),
        reason: e.to_string(),
    })?;
    write_private(&dir.config(), &json)?;

    Ok(InitReport {
        admin_user: admin.to_string(),
        enrollment_code: code,
        fingerprint: identity.fingerprint(),
        listen,
    })
}

/// `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Config {
    /// Organisation name.
    pub(crate) org: String,
    /// Listen address.
    pub(crate) listen: String,
    /// The PostgreSQL database holding the records (`postgres://…`); absent: the sled
    /// database in `db/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) store: Option<String>,
}

/// Where the records are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreChoice {
    /// The sled database in the data directory.
    Sled,
    /// A PostgreSQL database, by URL.
    Postgres(String),
}

impl StoreChoice {
    /// `None` and `"sled"`: sled; `postgres://…` or `postgresql://…`: PostgreSQL.
    pub(crate) fn parse(store: Option<&str>) -> Result<Self, ServerError> {
        match store {
            None | Some("sled") => Ok(Self::Sled),
            Some(url) if is_postgres_url(url) => Ok(Self::Postgres(url.to_owned())),
            Some(other) => Err(ServerError::Invalid(format!(
                "store {other:?}: expected \"sled\" or a postgres://… URL"
            ))),
        }
    }
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub(crate) struct DataDir {
    /// The directory.
    root: PathBuf,
}

impl DataDir {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }

    pub(crate) fn cert(&self) -> PathBuf {
        self.root.join("cert.der")
    }

    pub(crate) fn key(&self) -> PathBuf {
        self.root.join("key.der")
    }

    /// The full-text index (derived from the store; rebuilt when missing).
    pub(crate) fn search(&self) -> PathBuf {
        self.root.join("search")
    }

    pub(crate) fn db(&self) -> PathBuf {
        self.root.join("db")
    }

    /// The blob directory (see `service::blobs`).
    pub(crate) fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// The removal key (DESIGN §5.5), created on first use: directories initialised
    /// before secret groups existed get one on their next start.
    pub(crate) fn removal_key(&self) -> Result<RemovalKey, ServerError> {
        let path = self.root.join("removal.key");
        match fs::read(&path) {
            Ok(bytes) => {
                let seed =
                    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| ServerError::Config {
                        path: path.clone(),
                        reason: "the removal key must be 32 bytes".into(),
                    })?;
                Ok(RemovalKey::new(SigningKey::from_bytes(&seed)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                write_private(&path, &key.to_bytes())?;
                Ok(RemovalKey::new(key))
            }
            Err(e) => Err(ServerError::io(
                format!("cannot read {}", path.display()),
                e,
            )),
        }
    }

    /// The QUIC stateless-reset secret (32 bytes), created on first use. It keys the
    /// connection ids the server hands out and the reset tokens that go with them; kept
    /// across restarts, the new process recognises a previous run's connection ids and
    /// answers their packets with a stateless reset, so clients notice the restart at once
    /// instead of after their idle timeout.
    pub(crate) fn reset_key(&self) -> Result<[u8; 32], ServerError> {
        let path = self.root.join("reset.key");
        match fs::read(&path) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| ServerError::Config {
                path: path.clone(),
                reason: "the reset key must be 32 bytes".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
                write_private(&path, &key)?;
                Ok(key)
            }
            Err(e) => Err(ServerError::io(
                format!("cannot read {}", path.display()),
                e,
            )),
        }
    }

    /// Reads `config.json`; `NotInitialised` if it is missing.
    pub(crate) fn read_config(&self) -> Result<Config, ServerError> {
        let path = self.config();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ServerError::NotInitialised(self.root.clone()))
            }
            Err(e) => {
                return Err(ServerError::io(
                    format!("cannot read {}", path.display()),
                    e,
                ))
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| ServerError::Config {
            path,
            reason: e.to_string(),
        })
    }

    /// Opens the records: in the PostgreSQL database `store` names, else in the one
    /// `config.json` names, else in the sled database here (`Locked` if a running server
    /// holds it).
    pub(crate) fn open_records(
        &self,
        config: &Config,
        store: Option<&str>,
    ) -> Result<Arc<dyn Store>, ServerError> {
        match StoreChoice::parse(store.or(config.store.as_deref()))? {
            StoreChoice::Postgres(url) => Ok(Arc::new(PgStore::open(&url)?)),
            StoreChoice::Sled => Ok(Arc::new(self.open_store()?)),
        }
    }

    /// Opens the sled database; `Locked` if a running server holds it.
    pub(crate) fn open_store(&self) -> Result<SledStore, ServerError> {
        SledStore::open(&self.db()).map_err(|e| match e {
            StoreError::Locked(_) => ServerError::Locked(self.root.clone()),
            other => ServerError::Store(other),
        })
    }
}

/// Opens the records of the stopped server in `data_dir`, where its `config.json` says
/// they are (for tools and tests that read or edit them).
pub fn open_records(data_dir: &Path) -> Result<Arc<dyn Store>, ServerError> {
    let dir = DataDir::new(data_dir);
    let config = dir.read_config()?;
    dir.open_records(&config, None)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| ServerError::io(format!("cannot create {}", path.display()), e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ServerError::io(format!("cannot write {}", path.display()), e))
}

fn restrict(path: &Path, mode: u32) -> Result<(), ServerError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| ServerError::io(format!("cannot restrict {}", path.display()), e))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn init_creates_a_private_directory_and_refuses_to_run_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("server");
        let opts = InitOptions {
            data_dir: dir.clone(),
            listen: None,
            org: Some("Stadt Musterhausen".into()),
            admin_user: None,
            store: None,
        };
        let report = init(&opts, &ManualClock::new(0)).unwrap();
        assert_eq!(report.admin_user, "admin");
        assert_eq!(report.listen, "0.0.0.0:4433");
        assert!(report.fingerprint.starts_with("SHA256:"));
        assert_eq!(report.enrollment_code.len(), 19);
        let json = serde_json::to_value(&report).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(dir.clone()), 0o700);
            assert_eq!(mode(dir.join("key.der")), 0o600);
            assert_eq!(mode(dir.join("removal.key")), 0o600);
            assert_eq!(mode(dir.join("reset.key")), 0o600);
        }
        let reset = DataDir::new(&dir).reset_key().unwrap();
        assert_eq!(
            DataDir::new(&dir).reset_key().unwrap(),
            reset,
            "kept across starts"
        );
        let key = DataDir::new(&dir).removal_key().unwrap().public_key();
        assert_eq!(DataDir::new(&dir).removal_key().unwrap().public_key(), key);
        assert!(matches!(
            init(&opts, &ManualClock::new(0)),
            Err(ServerError::AlreadyInitialised(_))
        ));
    }
}
