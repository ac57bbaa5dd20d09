//! Persistence behind a trait.
//!
//! [`Store`] is a small ordered key-value interface with atomic batches: enough for the
//! server's needs, and easy to implement twice — [`SledStore`] on disk for production and
//! [`MemoryStore`] for unit tests. The typed layer on top ([`Db`], in `records`) is shared by
//! both, so the encoding rules are tested once: every stored value starts with a
//! format-version byte, then the postcard encoding of the record.

mod codec;
mod combine;
mod leader;
mod memory;
mod pg_notify;
mod pg_store;
mod pg_tls;
mod records;
mod sled_store;
mod snapshot;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

pub use combine::ApplyTicket;
pub use leader::Leadership;
pub use memory::MemoryStore;
pub use pg_notify::{EntryNotice, NodeNotice};
pub use pg_store::{is_postgres_url, PgStore};
pub use records::{
    AckRecord, AnnouncementRecord, BlobRecord, BlobRef, CodeRecord, Db, DepartmentRecord,
    DeviceRecord, KeyPackageRecord, LeafRecord, PublicStateRecord, QueuedWelcome, RetentionRecord,
    RetiredDepartment, SecretGroupRecord, ServerMeta, StoredEntry, ThrottleRecord, UploadRecord,
    UserRecord, WelcomeBody, Writes, SHARED_RECORDS_KEPT,
};
pub use sled_store::SledStore;
pub use snapshot::{SnapshotInfo, SnapshotReader};

/// A future that resolves once everything written before it was created is on disk.
pub type FlushFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// A future that resolves to the value under a key (see [`Store::get_async`]).
pub type ReadFuture = Pin<Box<dyn Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send>>;

/// A future that resolves to the last pair in a range (see [`Store::last_in_async`]).
pub type LastFuture = Pin<Box<dyn Future<Output = Result<Option<KeyValue>, StoreError>> + Send>>;

/// An ordered key-value store with atomic batches.
pub trait Store: Send + Sync + 'static {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// [`Store::get`] for an async caller: where the store is a database elsewhere, the
    /// round trip runs while the caller's thread does other work instead of waiting for
    /// it. By default the read is made at once (an embedded store reads from its cache).
    fn get_async(&self, key: &[u8]) -> ReadFuture {
        Box::pin(std::future::ready(self.get(key)))
    }
    /// The values under `keys`, in their order: one round trip where the store is a
    /// database elsewhere, for reads of a whole roster.
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Applies all puts and removes of `batch` atomically.
    fn apply(&self, batch: Batch) -> Result<(), StoreError>;
    /// Queues `batch` to be applied atomically after every batch queued or applied before
    /// it, possibly together with others; returns at once. Readers may not see it until
    /// [`Store::wait_applied`] for its ticket returned. Lets a caller fix the order of its
    /// writes under a lock and wait for them outside it, so that concurrent writers share
    /// one storage-engine batch.
    fn enqueue(&self, batch: Batch) -> Result<ApplyTicket, StoreError> {
        self.apply(batch)?;
        Ok(ApplyTicket(0))
    }
    /// Blocks until the batch of `ticket` is applied (or with its error); for callers
    /// that hold a lock the batch's order depends on.
    fn wait_applied_blocking(&self, ticket: ApplyTicket) -> Result<(), StoreError> {
        let _ = ticket;
        Ok(())
    }
    /// Resolves once the batch of `ticket` is applied (or with its error), without
    /// blocking the async runtime while another writer applies it.
    fn wait_applied(&self, ticket: ApplyTicket) -> FlushFuture<'_> {
        let _ = ticket;
        Box::pin(async { Ok(()) })
    }
    /// Up to `limit` pairs with `start <= key < end`, in key order.
    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError>;
    /// The pair with the greatest key in `start <= key < end`.
    fn last_in(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StoreError>;
    /// [`Store::last_in`] for an async caller, as [`Store::get_async`] is for
    /// [`Store::get`].
    fn last_in_async(&self, start: &[u8], end: &[u8]) -> LastFuture {
        Box::pin(std::future::ready(self.last_in(start, end)))
    }
    /// A fresh id, unique and increasing over the life of the store (also across restarts).
    fn next_id(&self) -> Result<u64, StoreError>;
    /// Makes every write applied so far durable.
    fn flush(&self) -> FlushFuture<'_>;
    /// Makes every write applied so far durable, blocking (for tools outside of a runtime;
    /// the server awaits [`Store::flush`]).
    fn flush_blocking(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Tells the other server nodes on this store that entry `seq` of `group` is durable
    /// (PostgreSQL: `NOTIFY`); nothing where no other node can be.
    fn notify_entry(&self, group: &str, seq: u64) {
        let _ = (group, seq);
    }
    /// Tells the other server nodes on this store that sessions of `user` ended
    /// (offboarding, a reset, a revoked device), so they end theirs; nothing where no
    /// other node can be.
    fn notify_sessions(&self, user: &str) {
        let _ = user;
    }
    /// Tells the other server nodes on this store that user or department records
    /// changed, so they read again the ones they keep; nothing where no other node can
    /// be.
    fn notify_records(&self) {}
    /// Where the other nodes' [`Store::notify_entry`], [`Store::notify_sessions`] and
    /// [`Store::notify_records`]
    /// arrive, for this process to push their entries to its own subscribers and end the
    /// sessions they ended; `None` where no other node can be. Called once per running
    /// server.
    fn other_nodes_notices(&self) -> Option<tokio::sync::mpsc::Receiver<NodeNotice>> {
        None
    }
    /// Whether this process runs the background loops (retention, upload cleanup, removal
    /// proposals), which must run on one node of a store at a time: always where no other
    /// node can be; on a shared database, while this process holds its lock. Called once
    /// per running server.
    fn leadership(&self) -> Leadership {
        Leadership::always()
    }
    /// Bytes the store occupies where it knows better than the size of the data
    /// directory's files (a database elsewhere); `None`: count the files.
    fn size_bytes(&self) -> Option<u64> {
        None
    }
    /// Whether other processes write to this store too (a database shared by several
    /// server nodes): then what is stored, not what this process remembers, says which
    /// seq comes next and how far a log reaches.
    fn shared(&self) -> bool {
        false
    }
    /// Writes a point-in-time copy of every record to `out` (format: `snapshot.rs`). The
    /// default reads everything in one `range`, which is atomic for stores whose `range`
    /// is (the in-memory one); the sled store pauses its writes instead.
    fn snapshot(&self, out: &mut dyn std::io::Write) -> Result<SnapshotInfo, StoreError> {
        let pairs = self.range(&[], &[0xff; 16], usize::MAX)?;
        let mut info = SnapshotInfo::default();
        for (key, value) in pairs
            .iter()
            .filter(|(k, _)| !k.starts_with(snapshot::INTERNAL_PREFIX))
        {
            snapshot::write_pair(out, key, value).map_err(snapshot_io)?;
            info.records += 1;
        }
        info.next_id = self.next_id()?;
        Ok(info)
    }
}

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Writes applied together by [`Store::apply`].
#[derive(Debug, Default)]
pub struct Batch {
    /// `(key, Some(value))` puts, `(key, None)` removes, in order.
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Indices into `ops` of the puts made by [`Batch::append`], ascending.
    appends: Vec<usize>,
    /// Set by [`Batch::append_movable_entry`]: log entries a shared store may place
    /// after what another process appended first.
    movable: Option<Movable>,
}

/// Log entries of one group, with their deduplication records, that a store shared by
/// several processes may store at later (or earlier) seqs than the ones they were given,
/// all shifted alike, right after the group's stored head: instead of refusing the batch
/// because another process took those seqs first. Only a batch of nothing but such
/// entries is moved; a store of one process stores them where they were given.
#[derive(Debug, Default)]
struct Movable {
    /// `(op index of the entry, op index of its deduplication record, its seq)`.
    entries: Vec<(usize, usize, u64)>,
    /// Where the store reports the shift.
    shift: Shift,
}

/// By how much a store moved a batch's entries (see [`Batch::append_movable_entry`]):
/// read once the batch is applied; `0` where it was stored as given.
#[derive(Debug, Clone, Default)]
pub struct Shift(Arc<AtomicI64>);

impl Shift {
    /// The seq an entry given `seq` was stored at.
    pub fn of(&self, seq: u64) -> Result<u64, StoreError> {
        let shift = self.0.load(Ordering::Acquire);
        seq.checked_add_signed(shift)
            .ok_or_else(|| StoreError::Backend(format!("seq {seq} moved by {shift}")))
    }

    fn set(&self, shift: i64) {
        self.0.store(shift, Ordering::Release);
    }
}

impl Batch {
    /// Sets `key` to `value`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }

    /// Sets `key`, which must not exist yet: a store shared by several processes refuses
    /// the batch with [`StoreError::Conflict`] if it does (and, for a log entry, unless
    /// its seq follows the group's last one). A single process keeps that rule with its
    /// own locks, so there it is a put.
    pub fn append(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.appends.push(self.ops.len());
        self.ops.push((key, Some(value)));
    }

    /// Appends a log entry at `seq` (`entry`: its `log/` key and value) with its
    /// deduplication record (`dedup`: key, and the value encoding `seq`), which a shared
    /// store may move (see [`Shift`]); the returned handle says where it went.
    pub fn append_movable_entry(
        &mut self,
        entry: (Vec<u8>, Vec<u8>),
        dedup: (Vec<u8>, Vec<u8>),
        seq: u64,
    ) -> Shift {
        let at = self.ops.len();
        self.append(entry.0, entry.1);
        self.append(dedup.0, dedup.1);
        let movable = self.movable.get_or_insert_with(Movable::default);
        movable.entries.push((at, at + 1, seq));
        movable.shift.clone()
    }

    /// The movable entries, where the batch holds nothing else.
    fn movable(&self) -> Option<&Movable> {
        self.movable
            .as_ref()
            .filter(|m| m.entries.len() * 2 == self.ops.len())
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: Vec<u8>) {
        self.ops.push((key, None));
    }

    /// Whether nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn into_ops(self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.ops
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage engine failed (disk full, IO error, …).
    #[error("storage engine: {0}")]
    Backend(String),
    /// The database is locked by another process.
    #[error("database is locked by another process: {0}")]
    Locked(String),
    /// A stored value could not be decoded.
    #[error("corrupt record under {key}: {reason}")]
    Corrupt {
        /// The key, printable.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A stored value was written by a newer build.
    #[error("record under {key} has format version {version}, which this build cannot read")]
    UnknownFormat {
        /// The key, printable.
        key: String,
        /// The stored format version.
        version: u8,
    },
    /// Another writer came first: a record written with [`Batch::append`] exists already
    /// (a second commit for one epoch, a client id stored twice, a seq taken). Nothing of
    /// the batch was applied.
    #[error("write conflict: {0}")]
    Conflict(String),
    /// A record could not be encoded.
    #[error("cannot encode record: {0}")]
    Encode(String),
}

fn snapshot_io(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("writing a snapshot: {e}"))
}
