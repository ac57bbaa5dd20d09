//! The openmls provider of a profile: RustCrypto for cryptography and the
//! profile's SQLite file for every piece of MLS state.

use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use rusqlite::Connection;
use serde::{de::DeserializeOwned, Serialize};

use super::MlsError;

/// Serde codec for the values openmls persists: JSON for small values, a
/// compact binary format for large ones.
///
/// Why two formats: openmls looks rows up by their *encoded keys* (group ids,
/// hash references, public keys), so keys must keep the exact bytes earlier
/// versions wrote, which were JSON. Keys are small; the values that cost are
/// large and rewritten often (a group's message secrets are rewritten after
/// every decrypted message, and with past epochs kept they hold every member's
/// credential and keys, which JSON writes as arrays of decimal numbers). So a
/// value whose binary form reaches [`BINARY_FROM`] bytes is stored as
/// [`BINARY_V1`] followed by its postcard encoding, and everything smaller,
/// keys included, as JSON exactly as before.
///
/// Reading tells the two apart by the first byte: a JSON text never starts
/// with [`BINARY_V1`]. Rows written by earlier versions (all JSON) stay
/// readable, and a value moves to the binary format the next time openmls
/// rewrites it.
///
/// postcard is not self-describing, so a type that deserializes through
/// `deserialize_any` (openmls' past-epoch policy in the join config) cannot
/// be read back from it; such values are all small, and stay JSON. The tests
/// in `mls::tests` reload every kind of state from the file.
#[derive(Debug, Default, Clone, Copy)]
pub struct StateCodec;

/// Values whose binary encoding has at least this many bytes are stored in
/// binary. Far above any openmls key (group ids, 32-byte references and
/// public keys), and below the ratchet tree and message secrets of any group.
pub(crate) const BINARY_FROM: usize = 1024;

/// First byte of a value stored in binary: the format version. Never the
/// first byte of a JSON text (`{`, `[`, `"`, a digit, `-`, `t`, `f`, `n` or
/// whitespace).
pub(crate) const BINARY_V1: u8 = 0x01;

/// Why a stored value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum StateCodecError {
    /// The JSON form failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The binary form failed.
    #[error("binary: {0}")]
    Binary(#[from] postcard::Error),
}

impl Codec for StateCodec {
    type Error = StateCodecError;

    fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        match postcard::to_extend(value, vec![BINARY_V1]) {
            Ok(binary) if binary.len() > BINARY_FROM => Ok(binary),
            // Small, or a shape postcard cannot write (a sequence of unknown length).
            _ => Ok(serde_json::to_vec(value)?),
        }
    }

    fn from_slice<T: DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        match slice.split_first() {
            Some((&BINARY_V1, binary)) => Ok(postcard::from_bytes(binary)?),
            _ => Ok(serde_json::from_slice(slice)?),
        }
    }
}

/// The codec of earlier Rathaus versions: JSON for every value. Kept to show
/// that their profiles stay readable ([`StateCodec`] writes the same bytes for
/// small values and reads JSON everywhere).
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
pub type MlsStorage<'a> = SqliteStorageProvider<StateCodec, &'a Connection>;

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
        SqliteStorageProvider::<StateCodec, &mut Connection>::new(connection)
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
