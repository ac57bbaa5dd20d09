//! An in-memory [`Store`] for unit tests.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::{Batch, FlushFuture, KeyValue, Store, StoreError};

/// A [`Store`] that keeps everything in a `BTreeMap`; "durable" means "in memory".
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// The data.
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Last id handed out by `next_id`.
    last_id: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_map<R>(&self, f: impl FnOnce(&mut BTreeMap<Vec<u8>, Vec<u8>>) -> R) -> R {
        // A panic while holding the lock cannot leave the map half-written: every
        // operation below is a single BTreeMap call or a batch applied before unlocking.
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut map)
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with_map(|m| m.get(key).cloned()))
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        self.with_map(|m| {
            for (key, value) in batch.into_ops() {
                match value {
                    Some(v) => m.insert(key, v),
                    None => m.remove(&key),
                };
            }
        });
        Ok(())
    }

    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self.with_map(|m| {
            m.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    fn last_in(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        if start >= end {
            return Ok(None);
        }
        Ok(self.with_map(|m| {
            m.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
                .next_back()
                .map(|(k, v)| (k.clone(), v.clone()))
        }))
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.last_id.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}
