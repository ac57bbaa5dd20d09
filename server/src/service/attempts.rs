//! The service's side of the credential throttle: attempts that are charged before their
//! check and settled afterwards however the request ends, the bound on Argon2 checks
//! running at once, persistence of the counters, and the warnings an operator sees.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rathaus_protocol::UserId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::refused::SessionRefused;
use super::throttle::{network_of, Attempt, Factor, Failures, Outcome, Subject};
use super::{Refusal, Service};
use crate::store::{Db, StoreError, ThrottleRecord, Writes};

/// What the throttle has done since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ThrottleStats {
    /// Attempts whose charge started a backoff.
    pub engaged: u64,
    /// Attempts refused with `RateLimited` (backed off, or one already in flight).
    pub refused: u64,
    /// Attempts refused with `Unavailable` because every Argon2 slot was busy.
    pub busy: u64,
    /// Device-key proofs that failed (never throttled, only counted and logged).
    pub failed_proofs: u64,
}

/// Counters behind [`ThrottleStats`].
#[derive(Debug, Default)]
pub(super) struct ThrottleCounters {
    engaged: AtomicU64,
    refused: AtomicU64,
    busy: AtomicU64,
    pub(super) failed_proofs: AtomicU64,
}

/// Argon2 checks (verifying or hashing a password) that may run at once: about one per
/// core. Each holds ~19 MiB; beyond this, attempts are refused instead of queued.
pub(super) fn argon2_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

type Job = Box<dyn FnOnce() + Send>;

/// The threads Argon2 runs on: exactly one per slot, so its 19 MiB working memory is
/// allocated by the same few threads every time. (On tokio's blocking pool each check
/// could land on another thread, and an allocator with per-thread arenas would keep a
/// 19 MiB block for each of them.)
pub(super) struct Argon2Pool {
    /// A permit per check running or queued; never more than there are threads.
    slots: Arc<Semaphore>,
    /// Work for the threads; `None` if no thread could be started (then the blocking
    /// pool is used).
    jobs: Option<std::sync::mpsc::Sender<Job>>,
}

impl Argon2Pool {
    pub(super) fn new(threads: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut started = 0;
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || loop {
                    let job = {
                        let queue = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        match queue.recv() {
                            Ok(job) => job,
                            // The service is gone.
                            Err(_) => return,
                        }
                    };
                    // A panicking check must not take the thread with it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::error!(error = %e, "cannot start an Argon2 thread"),
            }
        }
        Self {
            slots: Arc::new(Semaphore::new(started.max(1))),
            jobs: (started > 0).then_some(tx),
        }
    }

    /// Runs `f` on a pool thread, holding `slot` until it is done.
    async fn run<T: Send + 'static>(
        &self,
        slot: OwnedSemaphorePermit,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Refusal> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _slot = slot;
            let _ = tx.send(f());
        });
        match &self.jobs {
            Some(jobs) => jobs
                .send(job)
                .map_err(|_| Refusal::internal("the Argon2 threads are gone"))?,
            None => drop(tokio::task::spawn_blocking(job)),
        }
        rx.await
            .map_err(|_| Refusal::internal("an Argon2 check panicked"))
    }
}

/// An attempt charged to the throttle; settled as a failure unless marked otherwise, also
/// when the request is dropped half-way.
pub(super) struct AttemptGuard<'a> {
    service: &'a Service,
    attempt: Option<Attempt>,
    outcome: Outcome,
}

impl AttemptGuard<'_> {
    /// The credential was right: refund the charge.
    pub(super) fn succeeded(mut self) {
        self.outcome = Outcome::Succeeded;
    }

    /// The credential was not checked after all: refund the charge.
    pub(super) fn not_checked(mut self) {
        self.outcome = Outcome::NotChecked;
    }
}

impl Drop for AttemptGuard<'_> {
    fn drop(&mut self) {
        if let Some(attempt) = self.attempt.take() {
            if attempt.engaged() && self.outcome == Outcome::Failed {
                self.service.engaged(&attempt);
            }
            let changes = {
                let mut t = self.service.throttle();
                t.finish(attempt, self.outcome);
                t.take_changes()
            };
            self.service.persist_throttle(changes);
        }
    }
}

impl Service {
    /// Charges an attempt with `factor` for `user` from `peer`, or refuses it at once
    /// (`RateLimited`) without looking at the credential.
    pub(super) fn begin_attempt(
        &self,
        factor: Factor,
        user: &UserId,
        peer: Option<IpAddr>,
    ) -> Result<AttemptGuard<'_>, Refusal> {
        let now = self.now_ms();
        let network = peer.map(network_of);
        let (result, changes) = {
            let mut t = self.throttle();
            let r = t.begin_from(factor, user, peer, now);
            (r, t.take_changes())
        };
        self.persist_throttle(changes);
        match result {
            Ok(attempt) => Ok(AttemptGuard {
                service: self,
                attempt: Some(attempt),
                outcome: Outcome::Failed,
            }),
            Err(refused) => {
                let n = bump(&self.throttle_counters.refused);
                if worth_logging(n) {
                    tracing::warn!(
                        %user,
                        network = ?network,
                        factor = factor.as_str(),
                        refused = n,
                        reason = %refused.message(),
                        "attempt refused by the throttle without checking it"
                    );
                }
                Err(SessionRefused::Throttled(refused).into())
            }
        }
    }

    /// Counts and (thinned out) logs a failure that started a backoff.
    fn engaged(&self, attempt: &Attempt) {
        let n = bump(&self.throttle_counters.engaged);
        if worth_logging(n) {
            tracing::warn!(
                user = %attempt.user(),
                network = ?attempt.network(),
                factor = attempt.factor().as_str(),
                engaged = n,
                "throttle engaged: repeated failed attempts back this user or network off"
            );
        }
    }

    /// Runs an Argon2 check that already holds one of the bounded slots.
    pub(super) async fn argon2<T: Send + 'static>(
        &self,
        slot: OwnedSemaphorePermit,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Refusal> {
        self.argon2.run(slot, f).await
    }

    /// One of the bounded Argon2 slots, or `Unavailable` at once.
    pub(super) fn argon2_slot(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.argon2.slots.clone().try_acquire_owned().map_err(|_| {
            let n = bump(&self.throttle_counters.busy);
            if worth_logging(n) {
                tracing::warn!(
                    busy = n,
                    slots = argon2_slots(),
                    "every password check slot is busy; refusing with Unavailable"
                );
            }
            Refusal::from(SessionRefused::PasswordChecksBusy)
        })
    }

    /// What the throttle has done since start.
    pub fn throttle_stats(&self) -> ThrottleStats {
        let c = &self.throttle_counters;
        ThrottleStats {
            engaged: c.engaged.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            busy: c.busy.load(Ordering::Relaxed),
            failed_proofs: c.failed_proofs.load(Ordering::Relaxed),
        }
    }

    /// Writes changed counters (not waiting for the disk: the next flush carries them).
    fn persist_throttle(&self, changes: Vec<(Subject, Option<Failures>)>) {
        if changes.is_empty() {
            return;
        }
        let mut w = Writes::new();
        for (subject, failures) in changes {
            let Ok(key) = postcard::to_allocvec(&subject) else {
                continue;
            };
            match failures {
                Some(f) => {
                    let record = ThrottleRecord {
                        count: f.count,
                        last_ms: f.last_ms,
                        blocked_until_ms: f.blocked_until_ms,
                    };
                    if w.put_throttle(&key, &record).is_err() {
                        continue;
                    }
                }
                None => {
                    w.remove_throttle(&key);
                }
            }
        }
        if let Err(e) = self.db.apply(w) {
            tracing::error!(error = %e, "cannot store throttle counters");
        }
    }
}

/// Counters stored before a restart; unreadable ones are dropped (and logged).
pub(super) fn stored_counters(db: &Db) -> Result<Vec<(Subject, Failures)>, StoreError> {
    let mut out = Vec::new();
    for (key, r) in db.throttle_records()? {
        match postcard::from_bytes::<Subject>(&key) {
            Ok(subject) => out.push((
                subject,
                Failures {
                    count: r.count,
                    last_ms: r.last_ms,
                    blocked_until_ms: r.blocked_until_ms,
                },
            )),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable throttle counter"),
        }
    }
    Ok(out)
}

fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) + 1
}

/// Whether the `n`th occurrence of something is logged: the first ten, then every
/// hundredth, so an attack shows at warn without drowning the log.
pub(crate) fn worth_logging(n: u64) -> bool {
    n <= 10 || n.is_multiple_of(100)
}
