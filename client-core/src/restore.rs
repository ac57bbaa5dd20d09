//! Noticing a server that was restored from an older copy of its data.
//!
//! Every fetch of a group starts one entry early: at the entry of the cursor, which this
//! device already holds. If the server's log now ends below the cursor, or its entry at
//! the cursor is a different one (another sender or receive time), the server has
//! forgotten part of what this device showed and given those seqs to new posts. The
//! device then looks back for the last entry both still agree on and sets its own branch
//! aside from the one after it ([`crate::store::ProfileStore::cut_fork`]: kept locally,
//! announced in a `warning` row, own public posts sent again), so that the server's new
//! posts are fetched instead of being mistaken for ones already held.
//!
//! A server restored through `rathaus-server restore` (or one that noticed a reader ahead
//! of its log) gives no seq twice: it continues each log in a new generation
//! ([`rathaus_protocol::log`]). Then the entry at the cursor is simply missing and the
//! next one is from a later generation ([`generation_moved_past`]); unless retention took
//! everything up to the cursor, the server forgot what this device holds from where the
//! server's older generation ends, and that part is set aside the same way.
//!
//! The decision is [`fork_evidence`], [`generation_moved_past`] and [`fork_point`], plain
//! functions over the entries and marks; the requests around them are in
//! [`Client::fork_start`].

use rathaus_protocol::log::{first_seq, generation_of};
use rathaus_protocol::{GroupHandle, LogEntry, Request, Response};

use crate::error::{ClientError, Result};
use crate::store::EntryMark;
use crate::Client;

/// Entries fetched per step while looking back for the fork.
const LOOK_BACK_PAGE: u32 = 200;
/// Steps looked back at most (then the fork is taken to start at the oldest step).
const LOOK_BACK_STEPS: usize = 10_000;

/// The mark of a server log entry.
pub(crate) fn mark_of(entry: &LogEntry) -> EntryMark {
    EntryMark {
        sender: entry.sender.to_string(),
        sent_at_ms: entry.sent_at_ms,
    }
}

/// Whether a held row and a server entry are the same entry. Rows of secret groups name
/// the MLS-verified sender (a committer, the server for its proposals), not the log's
/// label, so there only the receive time counts.
pub(crate) fn same_entry(held: &EntryMark, theirs: &EntryMark, secret: bool) -> bool {
    if secret {
        held.sent_at_ms == theirs.sent_at_ms
    } else {
        held == theirs
    }
}

/// Whether a first page fetched from `cursor - 1` proves a fork, and if so the highest
/// seq that may still be shared with the server. `held` is the local mark at `cursor`.
pub(crate) fn fork_evidence(
    cursor: u64,
    entries: &[LogEntry],
    head: u64,
    held: Option<&EntryMark>,
) -> Option<u64> {
    if cursor == 0 {
        return None;
    }
    if head < cursor {
        return Some(head);
    }
    let first = entries.first()?;
    if first.seq != cursor {
        // The entry at the cursor is gone (retention): nothing to compare.
        return None;
    }
    match held {
        Some(held) if *held != mark_of(first) => Some(cursor - 1),
        _ => None,
    }
}

/// Whether a first page fetched from `cursor - 1` lacks the cursor's entry and goes on in
/// a later generation than the cursor's: the server's data was restored since this
/// device fetched, and it may have forgotten entries up to the cursor.
pub(crate) fn generation_moved_past(cursor: u64, entries: &[LogEntry]) -> bool {
    cursor > 0
        && entries
            .first()
            .is_some_and(|e| e.seq > cursor && generation_of(e.seq) > generation_of(cursor))
}

/// Where one step of looking back ends: `Some(seq)` is the first seq of the fork (the
/// highest entry both agree on is `seq - 1`); `None`: no agreement within these entries.
/// `local` and `server` are marks by seq in one range; seqs only one side holds (removed
/// by retention) are skipped.
pub(crate) fn fork_point(
    local: &[(u64, EntryMark)],
    server: &[(u64, EntryMark)],
    secret: bool,
) -> Option<u64> {
    local.iter().rev().find_map(|(seq, mark)| {
        server
            .iter()
            .find(|(s, _)| s == seq)
            .and_then(|(_, theirs)| same_entry(mark, theirs, secret).then_some(seq + 1))
    })
}

impl Client {
    /// The first seq of `group` where this device's history and the server's part, given
    /// that they may agree at most up to `shared_at_most`. Looks back page by page.
    pub(crate) async fn fork_start(
        &mut self,
        group: &GroupHandle,
        shared_at_most: u64,
    ) -> Result<u64> {
        let handle = group.to_string();
        // Below the oldest row this device holds there is nothing to disagree about.
        let floor = self
            .store
            .first_row_seq(&handle)?
            .unwrap_or(shared_at_most + 1)
            .max(1);
        let mut hi = shared_at_most;
        for _ in 0..LOOK_BACK_STEPS {
            if hi < floor {
                return Ok(floor);
            }
            let lo = hi.saturating_sub(u64::from(LOOK_BACK_PAGE));
            let request = Request::Fetch {
                group: group.clone(),
                since: lo,
                limit: LOOK_BACK_PAGE,
            };
            let entries = match self.request(&request).await? {
                Response::Entries { entries, .. } => entries,
                _ => return Err(ClientError::UnexpectedResponse("Fetch")),
            };
            let server: Vec<(u64, EntryMark)> = entries
                .iter()
                .filter(|e| e.seq > lo && e.seq <= hi)
                .map(|e| (e.seq, mark_of(e)))
                .collect();
            let mut local = self.store.row_marks(&handle, lo, hi)?;
            if group.is_secret() {
                // Only rows that carry the server's mark can be compared: not this
                // device's own entries (commits carry its clock) nor its notes of the
                // server's doing (joining).
                let mut comparable = Vec::with_capacity(local.len());
                for (seq, mark) in local {
                    if mark.sender != rathaus_protocol::mls::SERVER_IDENTITY
                        && !self.store.is_own_entry(&handle, seq)?
                    {
                        comparable.push((seq, mark));
                    }
                }
                local = comparable;
            }
            if let Some(start) = fork_point(&local, &server, group.is_secret()) {
                return Ok(start);
            }
            hi = lo;
        }
        Ok(hi + 1)
    }

    /// Whether the server holds an entry of `group` in the generation of `cursor`, below it.
    async fn holds_entry_below(&mut self, group: &GroupHandle, cursor: u64) -> Result<bool> {
        let request = Request::Fetch {
            group: group.clone(),
            since: first_seq(generation_of(cursor)) - 1,
            limit: 1,
        };
        match self.request(&request).await? {
            Response::Entries { entries, .. } => {
                Ok(entries.first().is_some_and(|e| e.seq < cursor))
            }
            _ => Err(ClientError::UnexpectedResponse("Fetch")),
        }
    }

    /// Checks a first page fetched from `cursor - 1` for a fork and sets this device's
    /// branch aside if there is one. Returns whether it did (the cursor moved back).
    pub(crate) async fn settle_fork(
        &mut self,
        group: &GroupHandle,
        cursor: u64,
        entries: &[LogEntry],
        head: u64,
    ) -> Result<bool> {
        let handle = group.to_string();
        let secret = group.is_secret();
        // Rows of secret groups made on this device (its own commits, its joining) carry
        // its own clock; the server's mark of the cursor's entry is kept aside instead.
        let held = if secret {
            // None when the cursor was set without a fetched entry (joining, an own
            // commit): then the log reprocesses the cursor's entry (crate::secret::log).
            crate::store::cursor_mark_on(self.store.connection(), &handle, cursor)?
        } else {
            self.store.row_mark(&handle, cursor)?
        };
        let shared_at_most = match fork_evidence(cursor, entries, head, held.as_ref()) {
            Some(shared) => shared,
            None if generation_moved_past(cursor, entries) => {
                // Retention removes the oldest entries first: if the server still holds
                // one of the cursor's generation below it, the cursor's entry was
                // forgotten, not removed.
                if !self.holds_entry_below(group, cursor).await? {
                    return Ok(false);
                }
                cursor - 1
            }
            None => return Ok(false),
        };
        let start = self.fork_start(group, shared_at_most).await?;
        if secret {
            // What a secret group's device holds cannot be fetched and decrypted again, so
            // nothing is set aside on the server's word: the cursor goes back so that the
            // entries from the fork on are read, and one under a seq this device holds
            // replaces it only if it processes as a new message (crate::secret::log).
            let notice = format!(
                "The server's history of this secret group differs from #{start} on from \
                 what this device has shown: it was restored from an older copy (or is \
                 withholding messages). Messages from #{start} on are read again."
            );
            self.store.rewind_cursor(&handle, start - 1, &notice)?;
            return Ok(true);
        }
        let cut = self.store.cut_fork(&handle, start, !group.is_secret())?;
        tracing::warn!(
            group = %handle,
            from = start,
            rows = cut.rows,
            requeued = cut.requeued,
            "the server's history ends before this device's: set aside"
        );
        // Own posts put back into the outbox go out with the end of this sync.
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(sender: &str, at: i64) -> EntryMark {
        EntryMark {
            sender: sender.into(),
            sent_at_ms: at,
        }
    }

    #[test]
    fn the_fork_starts_after_the_last_entry_both_hold_alike() {
        let local = vec![(3, m("a", 3)), (4, m("a", 4)), (5, m("a", 5))];
        // The server forgot 4 and 5 and gave 4 to a new post.
        let server = vec![(3, m("a", 3)), (4, m("b", 40))];
        assert_eq!(fork_point(&local, &server, false), Some(4));
        // Nothing in common in this range: look further back.
        assert_eq!(fork_point(&local[1..], &server[1..], false), None);
        // A seq removed by retention on one side is skipped, not a disagreement.
        let server = vec![(2, m("a", 2)), (4, m("b", 40))];
        let local = vec![(2, m("a", 2)), (3, m("a", 3)), (4, m("a", 4))];
        assert_eq!(fork_point(&local, &server, false), Some(3));
    }

    #[test]
    fn evidence_is_a_log_behind_the_cursor_or_another_entry_at_it() {
        use rathaus_protocol::{ClientMsgId, EntryBody, UserId};
        let entry = |seq: u64, sender: &str, at: i64| LogEntry {
            seq,
            sender: UserId::parse(sender).unwrap_or_else(|_| unreachable!()),
            sender_name: sender.into(),
            sent_at_ms: at,
            client_id: ClientMsgId([0; 16]),
            body: EntryBody::Removed {
                by: UserId::parse("x").unwrap_or_else(|_| unreachable!()),
            },
        };
        let held = m("P1", 50);
        assert_eq!(fork_evidence(0, &[], 0, None), None, "nothing held yet");
        assert_eq!(
            fork_evidence(5, &[], 3, Some(&held)),
            Some(3),
            "log behind cursor"
        );
        assert_eq!(
            fork_evidence(5, &[entry(5, "P1", 50), entry(6, "P2", 60)], 6, Some(&held),),
            None,
            "the same entry at the cursor"
        );
        assert_eq!(
            fork_evidence(5, &[entry(5, "P2", 55)], 6, Some(&held)),
            Some(4),
            "another entry at the cursor"
        );
        assert_eq!(
            fork_evidence(5, &[entry(7, "P2", 70)], 7, Some(&held)),
            None,
            "the cursor's entry removed by retention proves nothing"
        );
        // A restored server continues in the next generation.
        let next = rathaus_protocol::log::first_seq(1);
        assert!(generation_moved_past(5, &[entry(next, "P2", 70)]));
        assert!(!generation_moved_past(
            5,
            &[entry(5, "P1", 50), entry(next, "P2", 70)]
        ));
        assert!(
            !generation_moved_past(5, &[entry(7, "P2", 70)]),
            "retention"
        );
        assert!(
            !generation_moved_past(0, &[entry(next, "P2", 70)]),
            "nothing held"
        );
        assert!(!generation_moved_past(
            next + 3,
            &[entry(next + 5, "P2", 70)]
        ));
    }
}
