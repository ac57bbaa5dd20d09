//! The on-disk [`Store`]: one sled tree, keys namespaced by prefix so that a batch touching
//! users, departments and log entries is atomic (`apply_batch`).

use std::path::Path;
use std::sync::Arc;

use super::combine::Combiner;
use super::snapshot::{self, SnapshotInfo, SnapshotReader, ID_FLOOR_KEY, INTERNAL_PREFIX};
use super::{ApplyTicket, Batch, FlushFuture, KeyValue, Store, StoreError};

/// Pairs per batch when a snapshot is restored.
const RESTORE_BATCH: usize = 1000;

/// How often to retry opening a database whose lock is still held.
const LOCK_RETRIES: u32 = 100;
/// Pause between those retries (100 × 30 ms = 3 s at most).
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(30);

/// A [`Store`] in a sled database.
#[derive(Debug, Clone)]
pub struct SledStore {
    /// The database; its default tree holds everything.
    db: sled::Db,
    /// Every batch goes through here, so concurrent writers share sled batches.
    writes: Arc<Combiner>,
    /// sled's log file, to `fdatasync` after each flush (see [`Store::flush`] below).
    log: Arc<std::fs::File>,
    /// Added to sled's id generator: a store restored from a snapshot continues after the
    /// ids of the store it was taken from (sled's own counter starts again at 0).
    id_floor: u64,
}

impl SledStore {
    /// Opens (or creates) the database in `path`. Fails with [`StoreError::Locked`] if
    /// another process has it open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // A database closed a moment ago in this process (e.g. by `init` right before
        // `start`) may still be held by sled's background flusher for a short while; wait
        // for it, but not for a server that really runs.
        let mut attempts = 0;
        loop {
            match Self::open_once(path) {
                Err(StoreError::Locked(_)) if attempts < LOCK_RETRIES => {
                    attempts += 1;
                    std::thread::sleep(LOCK_RETRY_PAUSE);
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|e| match &e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked(io.to_string())
                }
                _ => backend(e),
            })?;
        let log = std::fs::File::open(path.join("db"))
            .map_err(|e| StoreError::Backend(format!("cannot open sled's log file: {e}")))?;
        let id_floor = match db.get(ID_FLOOR_KEY).map_err(backend)? {
            None => 0,
            Some(v) => u64::from_be_bytes(<[u8; 8]>::try_from(v.as_ref()).map_err(|_| {
                StoreError::Corrupt {
                    key: "store/id_floor".into(),
                    reason: "not 8 bytes".into(),
                }
            })?),
        };
        Ok(Self {
            db,
            writes: Arc::default(),
            log: Arc::new(log),
            id_floor,
        })
    }

    /// Fills the new, empty database in `path` from a snapshot and makes it durable;
    /// returns the pairs written. Refuses a database that holds anything already.
    pub fn restore(
        path: &Path,
        snapshot: &mut SnapshotReader<impl std::io::Read>,
        next_id: u64,
    ) -> Result<u64, StoreError> {
        let store = Self::open(path)?;
        if store.db.iter().next().is_some() {
            return Err(StoreError::Backend(format!(
                "{} is not empty; restore only into a new directory",
                path.display()
            )));
        }
        let mut written = 0u64;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        while let Some((key, value)) = snapshot.next_pair()? {
            if key.starts_with(INTERNAL_PREFIX) {
                continue;
            }
            batch.insert(key, value);
            in_batch += 1;
            written += 1;
            if in_batch == RESTORE_BATCH {
                store
                    .db
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(backend)?;
                in_batch = 0;
            }
        }
        batch.insert(ID_FLOOR_KEY, &next_id.to_be_bytes());
        store.db.apply_batch(batch).map_err(backend)?;
        store.flush_blocking()?;
        Ok(written)
    }

    /// Applies `batches`, in order, as one atomic sled batch.
    fn apply_now(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batches.iter().flat_map(|b| b.ops.iter()) {
            match value {
                Some(v) => sled_batch.insert(key.as_slice(), v.as_slice()),
                None => sled_batch.remove(key.as_slice()),
            }
        }
        self.db.apply_batch(sled_batch).map_err(backend)
    }

    /// Flushes synchronously (for `init`, outside of any request path).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(backend)?;
        self.log
            .sync_data()
            .map_err(|e| StoreError::Backend(format!("fdatasync of sled's log: {e}")))
    }
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let ticket = self.writes.enqueue(batch);
        self.writes.wait(ticket, |batch| self.apply_now(batch))
    }

    fn enqueue(&self, batch: Batch) -> Result<ApplyTicket, StoreError> {
        Ok(self.writes.enqueue(batch))
    }

    fn wait_applied_blocking(&self, ticket: ApplyTicket) -> Result<(), StoreError> {
        self.writes.wait(ticket, |batch| self.apply_now(batch))
    }

    fn wait_applied(&self, ticket: ApplyTicket) -> FlushFuture<'_> {
        Box::pin(
            self.writes
                .wait_async(ticket, move |batch| self.apply_now(batch)),
        )
    }

    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.db
            .range(start..end)
            .take(limit)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect()
    }

    fn last_in(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        if start >= end {
            return Ok(None);
        }
        self.db
            .range(start..end)
            .next_back()
            .transpose()
            .map(|o| o.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .map_err(backend)
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        // sled's id generator is monotonic across restarts; +1 keeps 0 unused.
        Ok(self.db.generate_id().map_err(backend)? + 1 + self.id_floor)
    }

    /// Iterates the whole database while the combiner holds every write back, so the copy
    /// is of one point in time. Writers queue meanwhile and are applied right after; the
    /// pause lasts as long as the copy (the caller writes it to a local file, never to a
    /// slow peer).
    fn snapshot(&self, out: &mut dyn std::io::Write) -> Result<SnapshotInfo, StoreError> {
        self.writes.paused(|| {
            let mut info = SnapshotInfo::default();
            for pair in self.db.iter() {
                let (key, value) = pair.map_err(backend)?;
                if key.starts_with(INTERNAL_PREFIX) {
                    continue;
                }
                snapshot::write_pair(out, &key, &value)
                    .map_err(|e| StoreError::Backend(format!("writing a snapshot: {e}")))?;
                info.records += 1;
            }
            info.next_id = self.next_id()?;
            Ok(info)
        })
    }

    fn flush_blocking(&self) -> Result<(), StoreError> {
        SledStore::flush_blocking(self)
    }

    /// sled 0.34 makes a flush "stable" with `sync_file_range(WAIT_BEFORE | WRITE |
    /// WAIT_AFTER)` on Linux: the data reaches the device, but the device's volatile write
    /// cache is not flushed and the file's metadata is not committed, so a power cut could
    /// still take back an acknowledged write. An `fdatasync` of the log file after each
    /// (batched) flush makes the acknowledgement hold across power loss too.
    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(self.writes.flushing(async move {
            self.db.flush_async().await.map_err(backend)?;
            let log = self.log.clone();
            tokio::task::spawn_blocking(move || log.sync_data())
                .await
                .map_err(|e| StoreError::Backend(format!("fdatasync task: {e}")))?
                .map_err(|e| StoreError::Backend(format!("fdatasync of sled's log: {e}")))
        }))
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_is_refused_as_locked_and_a_reopen_after_drop_works() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut batch = Batch::default();
        batch.put(b"k".to_vec(), b"v".to_vec());
        store.apply(batch).unwrap();
        assert!(matches!(
            SledStore::open(dir.path()),
            Err(StoreError::Locked(_))
        ));
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn a_restored_store_holds_the_records_and_continues_the_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("a")).unwrap();
        let mut batch = Batch::default();
        for i in 0..2500u32 {
            batch.put(format!("log/{i:05}").into_bytes(), i.to_be_bytes().to_vec());
        }
        store.apply(batch).unwrap();
        let issued: Vec<u64> = (0..10).map(|_| store.next_id().unwrap()).collect();
        let mut bytes = Vec::new();
        let info = store.snapshot(&mut bytes).unwrap();
        assert_eq!(info.records, 2500);
        assert!(info.next_id > *issued.iter().max().unwrap());

        let target = dir.path().join("b");
        let n = SledStore::restore(
            &target,
            &mut SnapshotReader::new(bytes.as_slice()),
            info.next_id,
        )
        .unwrap();
        assert_eq!(n, 2500);
        let restored = SledStore::open(&target).unwrap();
        assert_eq!(
            restored.get(b"log/01234").unwrap(),
            Some(1234u32.to_be_bytes().to_vec())
        );
        assert!(
            restored.next_id().unwrap() > info.next_id,
            "no id handed out twice"
        );
        let mut again = Vec::new();
        assert_eq!(restored.snapshot(&mut again).unwrap().records, 2500);
        assert_eq!(again, bytes, "the floor is not part of the records");
        drop(restored);
        assert!(
            SledStore::restore(&target, &mut SnapshotReader::new(bytes.as_slice()), 1).is_err(),
            "a non-empty database is refused"
        );
    }
}
