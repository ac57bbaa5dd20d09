//! Write combining: batches queued by concurrent writers are applied together, in queue
//! order, as one atomic batch of the storage engine.
//!
//! sled makes every atomic multi-key batch durable-ordered by sealing and writing its
//! current IO buffer before and after the batch (two `pwrite` + `sync_file_range`
//! round trips on its thread pool, and the wake-ups that go with them). Under a hundred
//! concurrent posts that fixed cost, paid once per post, was most of the server's CPU
//! time. Combining pays it once per round instead: whoever waits first becomes the
//! applier, takes everything queued so far, applies it as one batch and wakes the rest;
//! batches queued meanwhile form the next round.
//!
//! While the storage engine flushes, async writers do not start a round (see
//! [`Combiner::flushing`]): a post queued during a flush has to wait for the next flush
//! anyway, so it is applied right after this one ends, together with everything else
//! queued meanwhile. One round per flush instead of several halves sled's IO-buffer
//! writes; a blocking writer (one holding the log lock) never waits for a flush.
//!
//! Guarantees: a batch is applied atomically; batches are applied in the order they were
//! queued (a later batch never becomes visible, or survives a crash, without every earlier
//! one); a failing round is retried batch by batch so that each waiter gets its own batch's
//! result.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::{Batch, StoreError};

/// A queued batch; [`Combiner::wait`] returns once it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApplyTicket(pub(crate) u64);

#[derive(Debug, Default)]
struct Queue {
    /// Batches not yet taken by an applier, in ticket order.
    waiting: Vec<(u64, Batch)>,
    /// The last ticket handed out.
    issued: u64,
    /// Every ticket up to this one has been applied (or has failed).
    applied: u64,
    /// Whether a thread is applying a round right now.
    applying: bool,
    /// Flushes running now: async writers wait until none is.
    flushing: usize,
    /// Tickets whose batch failed, with the reason, until their waiter collects it.
    failed: Vec<(u64, StoreError)>,
}

/// Queues batches and applies them in combined rounds.
#[derive(Debug, Default)]
pub(crate) struct Combiner {
    queue: Mutex<Queue>,
    /// Wakes threads blocked in [`Combiner::wait`] after each round.
    round_done: Condvar,
    /// Wakes tasks awaiting [`Combiner::wait_async`] after each round.
    round_done_async: Notify,
}

impl Combiner {
    /// Queues `batch` behind everything queued before it.
    pub(crate) fn enqueue(&self, batch: Batch) -> ApplyTicket {
        let mut q = self.lock();
        q.issued += 1;
        let ticket = q.issued;
        q.waiting.push((ticket, batch));
        ApplyTicket(ticket)
    }

    /// Returns once the batch of `ticket` is applied, applying a round itself when no other
    /// thread is. `apply` writes one batch atomically.
    pub(crate) fn wait(
        &self,
        ticket: ApplyTicket,
        apply: impl Fn(&[&Batch]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut q = self.lock();
        loop {
            if let Some(result) = Self::outcome(&mut q, ticket) {
                return result;
            }
            if q.applying {
                q = self
                    .round_done
                    .wait(q)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            q = self.run_round(q, &apply);
        }
    }

    /// [`Combiner::wait`] for async callers: waiting for another thread's round does not
    /// block the runtime's worker. Applying a round is CPU work only (sled writes its IO
    /// buffers on its own threads), so it runs inline.
    pub(crate) async fn wait_async(
        &self,
        ticket: ApplyTicket,
        apply: impl Fn(&[&Batch]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // Let the other ready tasks queue their writes first, so this round takes them too.
        tokio::task::yield_now().await;
        loop {
            // Registered before looking at the queue, so a round that ends in between
            // still wakes this task.
            let round_done = self.round_done_async.notified();
            tokio::pin!(round_done);
            round_done.as_mut().enable();
            {
                let mut q = self.lock();
                if let Some(result) = Self::outcome(&mut q, ticket) {
                    return result;
                }
                if !q.applying && q.flushing == 0 {
                    drop(self.run_round(q, &apply));
                    continue;
                }
            }
            round_done.await;
        }
    }

    /// [`Combiner::wait_async`] for a store whose round is a round trip to a database
    /// elsewhere: the waiter that finds no round running hands the queued batches to
    /// `start` as a [`Round`] (which runs it as a task of its own) and, like every other
    /// waiter, waits without holding its thread. A writer that gives up waiting leaves
    /// its round running; a round dropped before it ends fails its batches.
    pub(crate) async fn wait_spawned(
        self: &Arc<Self>,
        ticket: ApplyTicket,
        start: impl Fn(Round),
    ) -> Result<(), StoreError> {
        // Let the other ready tasks queue their writes first, so this round takes them too.
        tokio::task::yield_now().await;
        loop {
            let round_done = self.round_done_async.notified();
            tokio::pin!(round_done);
            round_done.as_mut().enable();
            let round = {
                let mut q = self.lock();
                if let Some(result) = Self::outcome(&mut q, ticket) {
                    return result;
                }
                if q.applying || q.flushing > 0 {
                    None
                } else {
                    q.applying = true;
                    Some(std::mem::take(&mut q.waiting))
                }
            };
            if let Some(batches) = round {
                start(Round {
                    combiner: self.clone(),
                    batches,
                    ended: false,
                });
            }
            round_done.await;
        }
    }

    /// Runs the flush `f`; async writers that wait meanwhile start their round once it
    /// ends (however it ends, a cancelled future included).
    pub(crate) async fn flushing<R>(&self, f: impl std::future::Future<Output = R>) -> R {
        self.lock().flushing += 1;
        let _done = FlushDone(self);
        f.await
    }

    /// Runs `f` while no round is applied: it waits for a running round to end and keeps
    /// every later one waiting until `f` returns. Writers may still queue meanwhile. This
    /// is what makes a backup a point-in-time copy: every batch is wholly in it or wholly
    /// not, and nothing applied during the copy leaks into it.
    pub(crate) fn paused<R>(&self, f: impl FnOnce() -> R) -> R {
        let mut q = self.lock();
        while q.applying {
            q = self
                .round_done
                .wait(q)
                .unwrap_or_else(PoisonError::into_inner);
        }
        q.applying = true;
        drop(q);
        // Resets `applying` even if `f` panics, or every writer would wait forever.
        let _resume = Resume(self);
        f()
    }

    /// The result for `ticket` if its round is over.
    fn outcome(q: &mut Queue, ticket: ApplyTicket) -> Option<Result<(), StoreError>> {
        if q.applied < ticket.0 {
            return None;
        }
        Some(match q.failed.iter().position(|(t, _)| *t == ticket.0) {
            Some(i) => Err(q.failed.swap_remove(i).1),
            None => Ok(()),
        })
    }

    /// Applies everything queued so far as one round (the caller's batch included, as no
    /// round has taken it yet) and wakes every waiter.
    fn run_round<'a>(
        &'a self,
        mut q: MutexGuard<'a, Queue>,
        apply: &impl Fn(&[&Batch]) -> Result<(), StoreError>,
    ) -> MutexGuard<'a, Queue> {
        q.applying = true;
        let round = std::mem::take(&mut q.waiting);
        drop(q);
        let last = round.last().map_or(0, |(t, _)| *t);
        let tickets: Vec<u64> = round.iter().map(|(t, _)| *t).collect();
        // A panic in the storage engine must not leave `applying` set, or every later
        // writer would wait forever: its round fails instead.
        let failures =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply_round(round, apply)))
                .unwrap_or_else(|_| {
                    tickets
                        .into_iter()
                        .map(|t| {
                            (
                                t,
                                StoreError::Backend(
                                    "the storage engine panicked while writing".to_owned(),
                                ),
                            )
                        })
                        .collect()
                });
        let mut q = self.lock();
        q.applied = q.applied.max(last);
        q.failed.extend(failures);
        q.applying = false;
        self.round_done.notify_all();
        self.round_done_async.notify_waiters();
        q
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every update of the queue is a few plain assignments: a poisoned lock still
        // holds a consistent queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Ends a [`Combiner::paused`] section and wakes the writers that waited for it.
struct Resume<'a>(&'a Combiner);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        q.applying = false;
        drop(q);
        self.0.round_done.notify_all();
        self.0.round_done_async.notify_waiters();
    }
}

/// Ends a [`Combiner::flushing`] section and wakes the async writers that waited for it.
struct FlushDone<'a>(&'a Combiner);

impl Drop for FlushDone<'_> {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        q.flushing = q.flushing.saturating_sub(1);
        drop(q);
        self.0.round_done_async.notify_waiters();
    }
}

/// A round taken by [`Combiner::wait_spawned`]: the batches to apply, in order, and the
/// duty to report how it ended. Dropped before [`Round::apply`] has ended (its task
/// panicked, or was dropped with its runtime), it fails every one of its batches, so no
/// writer waits forever and the next round can start.
pub(crate) struct Round {
    combiner: Arc<Combiner>,
    batches: Vec<(u64, Batch)>,
    ended: bool,
}

impl Round {
    /// Applies the round with `apply` (one atomic write of the batches given; retried
    /// batch by batch if the round fails) and wakes every waiter.
    pub(crate) async fn apply<F, Fut>(mut self, apply: F)
    where
        F: Fn(&[&Batch]) -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let all: Vec<&Batch> = self.batches.iter().map(|(_, b)| b).collect();
        let failures = match apply(&all).await {
            Ok(()) => Vec::new(),
            Err(e) if self.batches.len() == 1 => vec![(self.batches[0].0, e)],
            Err(_) => {
                let mut failures = Vec::new();
                for (ticket, batch) in &self.batches {
                    if let Err(e) = apply(&[batch]).await {
                        failures.push((*ticket, e));
                    }
                }
                failures
            }
        };
        self.end(failures);
    }

    fn end(&mut self, failures: Vec<(u64, StoreError)>) {
        self.ended = true;
        let last = self.batches.last().map_or(0, |(t, _)| *t);
        let mut q = self.combiner.lock();
        q.applied = q.applied.max(last);
        q.failed.extend(failures);
        q.applying = false;
        drop(q);
        self.combiner.round_done.notify_all();
        self.combiner.round_done_async.notify_waiters();
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        if !self.ended {
            let failures = self
                .batches
                .iter()
                .map(|(t, _)| {
                    (
                        *t,
                        StoreError::Backend("the write to the database was abandoned".to_owned()),
                    )
                })
                .collect();
            self.end(failures);
        }
    }
}

/// Applies a round as one atomic write; if that fails, batch by batch. Returns the
/// failures.
fn apply_round(
    round: Vec<(u64, Batch)>,
    apply: &impl Fn(&[&Batch]) -> Result<(), StoreError>,
) -> Vec<(u64, StoreError)> {
    let all: Vec<&Batch> = round.iter().map(|(_, b)| b).collect();
    match apply(&all) {
        Ok(()) => Vec::new(),
        Err(e) if round.len() == 1 => vec![(round[0].0, e)],
        // The round was atomic, so nothing of it is applied: retry each batch on its own.
        Err(_) => round
            .iter()
            .filter_map(|(ticket, batch)| apply(&[batch]).err().map(|e| (*ticket, e)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::sync::{Arc, Barrier};

    use super::*;

    /// A map behind the combiner that counts rounds and refuses any batch touching a
    /// key starting with `bad`.
    #[derive(Default)]
    struct Target {
        map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
        rounds: Mutex<Vec<usize>>,
    }

    impl Target {
        fn apply(&self, batches: &[&Batch]) -> Result<(), StoreError> {
            let ops: Vec<_> = batches.iter().flat_map(|b| b.ops.iter()).collect();
            if ops.iter().any(|(k, _)| k.starts_with(b"bad")) {
                return Err(StoreError::Backend("refused".into()));
            }
            self.rounds.lock().unwrap().push(ops.len());
            let mut map = self.map.lock().unwrap();
            for (k, v) in ops {
                match v {
                    Some(v) => map.insert(k.clone(), v.clone()),
                    None => map.remove(k),
                };
            }
            Ok(())
        }
    }

    fn batch(ops: &[(&str, Option<&str>)]) -> Batch {
        let mut b = Batch::default();
        for (k, v) in ops {
            match v {
                Some(v) => b.put(k.as_bytes().to_vec(), v.as_bytes().to_vec()),
                None => b.remove(k.as_bytes().to_vec()),
            }
        }
        b
    }

    #[test]
    fn queued_batches_apply_in_order_in_one_round() {
        let combiner = Combiner::default();
        let target = Target::default();
        let a = combiner.enqueue(batch(&[("k", Some("1")), ("x", Some("a"))]));
        let b = combiner.enqueue(batch(&[("k", Some("2"))]));
        let c = combiner.enqueue(batch(&[("x", None)]));
        combiner.wait(c, |b| target.apply(b)).unwrap();
        // Already applied by the round that `c` ran.
        combiner.wait(a, |_| panic!("no second round")).unwrap();
        combiner.wait(b, |_| panic!("no second round")).unwrap();
        let map = target.map.lock().unwrap();
        assert_eq!(map.get(&b"k"[..]), Some(&b"2".to_vec()), "later batch wins");
        assert_eq!(
            map.get(&b"x"[..]),
            None,
            "the removal queued last is applied last"
        );
        assert_eq!(*target.rounds.lock().unwrap(), vec![4]);
    }

    #[test]
    fn a_failing_batch_fails_only_its_own_waiter() {
        let combiner = Combiner::default();
        let target = Target::default();
        let good = combiner.enqueue(batch(&[("a", Some("1"))]));
        let bad = combiner.enqueue(batch(&[("bad", Some("1"))]));
        let after = combiner.enqueue(batch(&[("b", Some("1"))]));
        combiner.wait(good, |b| target.apply(b)).unwrap();
        assert!(combiner.wait(bad, |b| target.apply(b)).is_err());
        combiner.wait(after, |b| target.apply(b)).unwrap();
        let map = target.map.lock().unwrap();
        assert!(map.contains_key(&b"a"[..]) && map.contains_key(&b"b"[..]));
        assert!(!map.contains_key(&b"bad"[..]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_and_blocking_writers_share_rounds() {
        const TASKS: usize = 16;
        const EACH: usize = 100;
        let combiner = Arc::new(Combiner::default());
        let target = Arc::new(Target::default());
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..TASKS {
            let (combiner, target) = (combiner.clone(), target.clone());
            tasks.spawn(async move {
                for i in 0..EACH {
                    let key = format!("{t}/{i}");
                    let ticket = combiner.enqueue(batch(&[(&key, Some("v"))]));
                    if i % 2 == 0 {
                        combiner
                            .wait_async(ticket, |b| target.apply(b))
                            .await
                            .unwrap();
                    } else {
                        combiner.wait(ticket, |b| target.apply(b)).unwrap();
                    }
                    assert!(target.map.lock().unwrap().contains_key(key.as_bytes()));
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        assert_eq!(target.map.lock().unwrap().len(), TASKS * EACH);
    }

    /// A runtime of its own for the rounds, as a database store has: a blocking writer
    /// waits on a worker of the caller's runtime, never on one a round needs.
    fn round_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap()
    }

    /// Starts a round as its own task on `rt`, as a database store does.
    fn spawn_round(rt: &tokio::runtime::Runtime, target: &Arc<Target>) -> impl Fn(Round) {
        let target = target.clone();
        let rt = rt.handle().clone();
        move |round| {
            let target = target.clone();
            rt.spawn(round.apply(move |b| {
                let applied = target.apply(b);
                async move {
                    tokio::task::yield_now().await;
                    applied
                }
            }));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawned_rounds_apply_everything_in_order_beside_blocking_writers() {
        const TASKS: usize = 16;
        const EACH: usize = 100;
        let rt = Arc::new(round_runtime());
        let combiner = Arc::new(Combiner::default());
        let target = Arc::new(Target::default());
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..TASKS {
            let (combiner, target, rt) = (combiner.clone(), target.clone(), rt.clone());
            tasks.spawn(async move {
                for i in 0..EACH {
                    let key = format!("{t}/{i}");
                    // Each task writes its previous key again: a later batch must win.
                    let mut b = batch(&[(&key, Some("v"))]);
                    if i > 0 {
                        b.put(format!("{t}/{}", i - 1).into_bytes(), b"w".to_vec());
                    }
                    let ticket = combiner.enqueue(b);
                    if i % 3 == 0 {
                        combiner.wait(ticket, |b| target.apply(b)).unwrap();
                    } else {
                        combiner
                            .wait_spawned(ticket, spawn_round(&rt, &target))
                            .await
                            .unwrap();
                    }
                    let map = target.map.lock().unwrap();
                    assert!(map.contains_key(key.as_bytes()), "{key} not applied");
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        let map = target.map.lock().unwrap();
        assert_eq!(map.len(), TASKS * EACH);
        for t in 0..TASKS {
            for i in 0..EACH - 1 {
                assert_eq!(map[format!("{t}/{i}").as_bytes()], b"w", "{t}/{i}");
            }
        }
        let rounds = target.rounds.lock().unwrap();
        assert_eq!(rounds.iter().sum::<usize>(), TASKS * (2 * EACH - 1));
        if let Ok(rt) = Arc::try_unwrap(rt) {
            rt.shutdown_background();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spawned_round_that_fails_or_is_dropped_fails_only_its_own_batches() {
        let rt = round_runtime();
        let combiner = Arc::new(Combiner::default());
        let target = Arc::new(Target::default());
        let good = combiner.enqueue(batch(&[("a", Some("1"))]));
        let bad = combiner.enqueue(batch(&[("bad", Some("1"))]));
        // One round for both: it fails as a whole, then each batch is tried alone.
        combiner
            .wait_spawned(good, spawn_round(&rt, &target))
            .await
            .unwrap();
        let err = combiner
            .wait_spawned(bad, |_| panic!("no second round"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");

        // A round whose task goes away before it ends (a panic, a runtime shutting
        // down) fails its batches, and the next writer gets a round of its own.
        let lost = combiner.enqueue(batch(&[("c", Some("1"))]));
        let err = combiner.wait_spawned(lost, drop).await.unwrap_err();
        assert!(err.to_string().contains("abandoned"), "{err}");
        let next = combiner.enqueue(batch(&[("d", Some("1"))]));
        combiner
            .wait_spawned(next, spawn_round(&rt, &target))
            .await
            .unwrap();
        let map = target.map.lock().unwrap();
        assert!(map.contains_key(&b"a"[..]) && map.contains_key(&b"d"[..]));
        assert!(!map.contains_key(&b"bad"[..]) && !map.contains_key(&b"c"[..]));
        drop(map);
        rt.shutdown_background();
    }

    /// Runs a flush in the background that lasts until the returned sender fires.
    async fn hold_flush(combiner: &Arc<Combiner>) -> tokio::sync::oneshot::Sender<()> {
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        let (started, has_started) = tokio::sync::oneshot::channel::<()>();
        let combiner = combiner.clone();
        tokio::spawn(async move {
            combiner
                .flushing(async move {
                    let _ = started.send(());
                    let _ = ended.await;
                })
                .await;
        });
        has_started.await.unwrap();
        end
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_writers_wait_out_a_flush_and_then_share_one_round() {
        let combiner = Arc::new(Combiner::default());
        let target = Arc::new(Target::default());
        let end_flush = hold_flush(&combiner).await;
        let mut writers = tokio::task::JoinSet::new();
        for key in ["a", "b"] {
            let (combiner, target) = (combiner.clone(), target.clone());
            let ticket = combiner.enqueue(batch(&[(key, Some("v"))]));
            writers.spawn(async move { combiner.wait_async(ticket, |b| target.apply(b)).await });
        }
        // The writers have had every chance to apply; the flush keeps them out.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            target.rounds.lock().unwrap().is_empty(),
            "no round during the flush"
        );
        end_flush.send(()).unwrap();
        while let Some(joined) = writers.join_next().await {
            joined.unwrap().unwrap();
        }
        assert_eq!(
            *target.rounds.lock().unwrap(),
            vec![2],
            "one round for both"
        );

        // A blocking writer (it may hold the log lock) is never held back by a flush.
        let end_flush = hold_flush(&combiner).await;
        let ticket = combiner.enqueue(batch(&[("c", Some("v"))]));
        let (c, t) = (combiner.clone(), target.clone());
        tokio::task::spawn_blocking(move || c.wait(ticket, |b| t.apply(b)))
            .await
            .unwrap()
            .unwrap();
        assert!(target.map.lock().unwrap().contains_key(&b"c"[..]));
        end_flush.send(()).unwrap();
    }

    #[test]
    fn a_pause_holds_back_rounds_until_it_ends() {
        let combiner = Arc::new(Combiner::default());
        let target = Arc::new(Target::default());
        let (entered, may_leave) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let pauser = {
            let (combiner, target) = (combiner.clone(), target.clone());
            let (entered, may_leave) = (entered.clone(), may_leave.clone());
            std::thread::spawn(move || {
                combiner.paused(|| {
                    entered.wait();
                    may_leave.wait();
                    target.map.lock().unwrap().len()
                })
            })
        };
        entered.wait();
        let writer = {
            let (combiner, target) = (combiner.clone(), target.clone());
            std::thread::spawn(move || {
                let ticket = combiner.enqueue(batch(&[("k", Some("v"))]));
                combiner.wait(ticket, |b| target.apply(b)).unwrap();
            })
        };
        // The writer has had every chance to apply; the pause keeps it out.
        std::thread::sleep(std::time::Duration::from_millis(50));
        may_leave.wait();
        assert_eq!(
            pauser.join().unwrap(),
            0,
            "nothing applied during the pause"
        );
        writer.join().unwrap();
        assert_eq!(
            target.map.lock().unwrap().len(),
            1,
            "applied after the pause"
        );
    }

    #[test]
    fn a_panicking_engine_fails_its_round_and_later_writes_still_go_through() {
        let combiner = Combiner::default();
        let target = Target::default();
        let doomed = combiner.enqueue(batch(&[("a", Some("1"))]));
        let err = combiner.wait(doomed, |_| panic!("engine bug")).unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        let next = combiner.enqueue(batch(&[("b", Some("1"))]));
        combiner.wait(next, |b| target.apply(b)).unwrap();
        assert!(target.map.lock().unwrap().contains_key(&b"b"[..]));
    }

    #[test]
    fn concurrent_writers_all_land_and_each_sees_its_write_applied() {
        const THREADS: usize = 8;
        const EACH: usize = 200;
        let combiner = Arc::new(Combiner::default());
        let target = Arc::new(Target::default());
        let start = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (combiner, target, start) = (combiner.clone(), target.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for i in 0..EACH {
                        let key = format!("{t}/{i}");
                        let ticket = combiner.enqueue(batch(&[(&key, Some("v"))]));
                        combiner.wait(ticket, |b| target.apply(b)).unwrap();
                        assert!(
                            target.map.lock().unwrap().contains_key(key.as_bytes()),
                            "wait returned before {key} was applied"
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(target.map.lock().unwrap().len(), THREADS * EACH);
        let rounds = target.rounds.lock().unwrap();
        assert_eq!(rounds.iter().sum::<usize>(), THREADS * EACH);
    }
}
