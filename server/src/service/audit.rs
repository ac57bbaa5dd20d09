//! The audit log: an append-only hash chain of every admin, editor and moderation action.
//!
//! Each [`AuditEntry`] commits to the previous entry's hash
//! ([`rathaus_protocol::audit::entry_hash`]), so editing or deleting a stored entry breaks
//! the chain at that point, which `rathaus admin audit --verify` reports. An action and its
//! audit entry are written in the same atomic batch: there is no action without its record
//! and no record of an action that did not happen.
//!
//! Appending holds the chain's lock from choosing the index until the batch is applied.
//! Lock order: `editorial` or `directory`, then `log`, then the audit chain.

use std::sync::{Mutex, MutexGuard, PoisonError};

use rathaus_protocol::audit::entry_hash;
use rathaus_protocol::{AuditEntry, Response, UserId};

use super::{Refusal, Service};
use crate::store::{Db, StoreError, Writes};

/// Most entries one `AuditLog` answer carries.
const MAX_AUDIT_PAGE: u32 = 1000;

/// The end of the chain, cached after the first append or read.
#[derive(Debug, Default)]
pub(crate) struct AuditChain {
    /// `None` until loaded from the store.
    head: Mutex<Option<ChainHead>>,
}

/// Where the next entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChainHead {
    /// Its index.
    next: u64,
    /// The hash it must point to.
    prev_hash: [u8; 32],
}

impl ChainHead {
    fn after(last: Option<&AuditEntry>) -> Self {
        last.map_or(
            Self {
                next: 0,
                prev_hash: [0; 32],
            },
            |e| Self {
                next: e.index + 1,
                prev_hash: e.hash,
            },
        )
    }
}

/// The chain, locked for appending. Entries recorded here go into the caller's batch;
/// [`AuditAppend::commit`] after the batch was applied moves the chain's head. Dropped
/// without commit (the batch failed), the chain stays where it was.
pub(super) struct AuditAppend<'a> {
    /// Holds the chain.
    guard: MutexGuard<'a, Option<ChainHead>>,
    /// The head after the entries recorded so far.
    tentative: ChainHead,
}

impl AuditAppend<'_> {
    /// Adds an entry to `w`.
    pub(super) fn record(
        &mut self,
        w: &mut Writes,
        at_ms: i64,
        actor: &UserId,
        action: &str,
        target: impl Into<String>,
        detail: impl Into<String>,
    ) -> Result<(), StoreError> {
        let entry = chained(self.tentative, at_ms, actor, action, target, detail);
        w.put_audit(&entry)?;
        self.tentative = ChainHead::after(Some(&entry));
        Ok(())
    }

    /// The batch with the recorded entries was applied.
    pub(super) fn commit(mut self) {
        *self.guard = Some(self.tentative);
    }

    /// Number of entries in the log (including uncommitted ones recorded here).
    fn total(&self) -> u64 {
        self.tentative.next
    }
}

/// The first entry of a new server's chain (written by `bootstrap`).
pub(super) fn first_entry(at_ms: i64, actor: &UserId, action: &str, target: &str) -> AuditEntry {
    chained(ChainHead::after(None), at_ms, actor, action, target, "")
}

impl Service {
    /// Locks the audit chain for appending.
    pub(super) fn audit(&self) -> Result<AuditAppend<'_>, StoreError> {
        let mut guard = self
            .audit
            .head
            .lock()
            // The head is replaced whole in `commit`; a poisoned lock holds a valid value.
            .unwrap_or_else(PoisonError::into_inner);
        let head = match *guard {
            Some(h) => h,
            None => {
                let h = load_head(&self.db)?;
                *guard = Some(h);
                h
            }
        };
        Ok(AuditAppend {
            guard,
            tentative: head,
        })
    }

    /// `AuditLog`: administrators read the chain.
    pub(super) fn audit_log(
        &self,
        me: &crate::store::UserRecord,
        since: u64,
        limit: u32,
    ) -> Result<Response, Refusal> {
        self.require_admin(me, "read the audit log")?;
        let total = self.audit()?.total();
        let limit = limit.clamp(1, MAX_AUDIT_PAGE) as usize;
        let entries = self.db.audit_entries(since, limit)?;
        Ok(Response::Audit { entries, total })
    }
}

fn load_head(db: &Db) -> Result<ChainHead, StoreError> {
    Ok(ChainHead::after(db.last_audit_entry()?.as_ref()))
}

fn chained(
    head: ChainHead,
    at_ms: i64,
    actor: &UserId,
    action: &str,
    target: impl Into<String>,
    detail: impl Into<String>,
) -> AuditEntry {
    let mut entry = AuditEntry {
        index: head.next,
        at_ms,
        actor: actor.clone(),
        action: action.to_owned(),
        target: target.into(),
        detail: detail.into(),
        prev_hash: head.prev_hash,
        hash: [0; 32],
    };
    entry.hash = entry_hash(&entry);
    entry
}
