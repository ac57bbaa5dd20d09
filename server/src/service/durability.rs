//! Group commit: acknowledge a write only after a flush covered it, with one flush serving
//! every write that arrived while the previous flush was running.
//!
//! Each write takes a ticket (a counter incremented *after* the write was applied). A
//! waiter whose ticket is not yet durable queues on the flush gate; whoever holds the gate
//! notes the newest ticket, flushes once, and marks everything up to it durable — the
//! waiters queued behind it then find their tickets covered and return without flushing.
//! Under load this turns N concurrent writes into about two flushes.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::{Store, StoreError};

/// Tracks which writes are durable.
#[derive(Debug, Default)]
pub(crate) struct Durability {
    /// Tickets handed out (= writes applied).
    written: AtomicU64,
    /// Every ticket up to this one is durable.
    durable: AtomicU64,
    /// Serialises flushes; held across the flush, never across anything else.
    gate: tokio::sync::Mutex<()>,
    /// Flush durations and batch sizes, for `/metrics`.
    pub(crate) metrics: crate::metrics::FlushMetrics,
}

impl Durability {
    /// Records that a write was applied; returns its ticket.
    pub(crate) fn written(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The newest ticket: waiting for it covers every write applied so far.
    pub(crate) fn latest(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Returns once the write with `ticket` is durable.
    pub(crate) async fn durable(&self, store: &dyn Store, ticket: u64) -> Result<(), StoreError> {
        if self.durable.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        let _gate = self.gate.lock().await;
        if self.durable.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        let target = self.written.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        store.flush().await?;
        self.metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        let before = self.durable.fetch_max(target, Ordering::SeqCst);
        // Precision loss above 2^53 writes does not matter for a histogram.
        #[allow(clippy::cast_precision_loss)]
        self.metrics
            .batch
            .observe(target.saturating_sub(before) as f64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, FlushFuture, KeyValue};
    use std::sync::Arc;

    /// Counts flushes; each takes a few ms so concurrent waiters pile up.
    #[derive(Default)]
    struct SlowFlush {
        flushes: AtomicU64,
    }

    impl Store for SlowFlush {
        fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
        fn apply(&self, _: Batch) -> Result<(), StoreError> {
            Ok(())
        }
        fn range(&self, _: &[u8], _: &[u8], _: usize) -> Result<Vec<KeyValue>, StoreError> {
            Ok(Vec::new())
        }
        fn last_in(&self, _: &[u8], _: &[u8]) -> Result<Option<KeyValue>, StoreError> {
            Ok(None)
        }
        fn next_id(&self) -> Result<u64, StoreError> {
            Ok(1)
        }
        fn flush(&self) -> FlushFuture<'_> {
            Box::pin(async {
                self.flushes.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn concurrent_writes_share_flushes() {
        let store = Arc::new(SlowFlush::default());
        let commit = Arc::new(Durability::default());
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (store, commit) = (store.clone(), commit.clone());
            tasks.push(tokio::spawn(async move {
                let ticket = commit.written();
                commit.durable(store.as_ref(), ticket).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let flushes = store.flushes.load(Ordering::SeqCst);
        assert!(
            (1..=10).contains(&flushes),
            "{flushes} flushes for 100 writes"
        );
    }
}
