//! The openmls provider of a profile: RustCrypto for cryptography and the
//! profile's SQLite file for every piece of MLS state.

use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use rusqlite::Connection;
use serde::{de::DeserializeOwned, Serialize};

use super::MlsError;

/// Serde codec for the values openmls persists.
///
/// JSON, because openmls' own storage tests use it and some of the persisted
/// types contain maps that compact binary formats do not round-trip.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// The storage half of [`SqliteMlsProvider`]: openmls tables inside the
/// profile's SQLite file, next to whatever other tables the profile keeps.
pub type MlsStorage<'a> = SqliteStorageProvider<JsonCodec, &'a Connection>;

/// An [`openmls_traits::OpenMlsProvider`] over a borrowed SQLite connection.
///
/// It is cheap to build (two references), so the engine builds one per
/// operation instead of owning the connection through openmls; this keeps the
/// connection available to the rest of the client for its own tables and
/// transactions.
pub struct SqliteMlsProvider<'a> {
    crypto: &'a RustCrypto,
    storage: MlsStorage<'a>,
}

impl<'a> SqliteMlsProvider<'a> {
    /// A provider using `crypto` and the openmls tables in `connection`.
    ///
    /// The tables must exist: call [`SqliteMlsProvider::migrate`] once per
    /// connection first (the engine does this when it opens).
    pub fn new(crypto: &'a RustCrypto, connection: &'a Connection) -> Self {
        Self {
            crypto,
            storage: SqliteStorageProvider::new(connection),
        }
    }

    /// Creates or upgrades the openmls tables in `connection`. Idempotent.
    pub fn migrate(connection: &mut Connection) -> Result<(), MlsError> {
        SqliteStorageProvider::<JsonCodec, &mut Connection>::new(connection)
            .run_migrations()
            .map_err(|e| MlsError::Migration(e.to_string()))
    }
}

impl<'a> openmls_traits::OpenMlsProvider for SqliteMlsProvider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MlsStorage<'a>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}
