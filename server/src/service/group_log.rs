//! The groups' logs: the one path every entry takes into a log, whoever writes it.
//!
//! A post (public or MLS, with or without a file), a batch the service appends itself
//! (a commit with its Welcomes, removal proposals, a department's final entry) and an
//! entry the server writes (a published announcement, a moderation note) each get the
//! next seq of their group under the log lock, go into one atomic batch with the writes
//! that belong to them, are acknowledged only once durable, and are then pushed to the
//! subscribers who may read the group, here and on the other nodes of a shared store.
//! [`GroupLog`] holds what that needs between requests: each group's heads, the data's
//! log generation, and the posts queued but not yet applied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rand::rngs::OsRng;
use rand::RngCore;
use rathaus_protocol::log;
use rathaus_protocol::{frame, ClientMsgId, Event, GroupHandle, Response, UserId};

use super::audit::AuditAppend;
use super::{Broadcast, Refusal, Service};
use crate::store::{ApplyTicket, Shift, StoredEntry, UserRecord, Writes};

/// How often a post is allocated a seq again after another node on a shared database
/// took the one it had (each retry reads the stored head afresh).
const MAX_CONFLICT_RETRIES: u32 = 32;

/// What this node knows of the groups' logs between requests.
#[derive(Debug)]
pub(super) struct GroupLog {
    /// Held while seqs are allocated, duplicates checked and entries inserted, so those
    /// three are atomic; the value caches each group's heads. Never held across a flush.
    heads: Mutex<HashMap<GroupHandle, Heads>>,
    /// The generation new log entries are numbered in (`rathaus_protocol::log`); changed
    /// only while `heads` is held.
    generation: AtomicU64,
    /// Whether this run moved `generation` on already (see `notice_reader_ahead`).
    generation_moved: AtomicBool,
    /// Posts queued for storage but not yet applied, so that a retry arriving meanwhile
    /// is recognised as a duplicate; taken only while `heads` is held, or alone.
    in_flight: Mutex<HashMap<InFlightKey, InFlight>>,
    /// Held while a cached head is read back from a shared store after a conflict, so
    /// that the posts of one refused round read it once, not once each.
    refreshing: tokio::sync::Mutex<()>,
}

impl GroupLog {
    /// The logs of a store whose entries are numbered in `generation`.
    pub(super) fn new(generation: u64) -> Self {
        Self {
            heads: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(generation),
            generation_moved: AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }
}

/// The two heads of a group's log.
#[derive(Debug, Clone, Copy)]
pub(super) struct Heads {
    /// The last seq allocated (inserted, maybe not yet on disk).
    written: u64,
    /// The last seq known durable: the only one readers see, so nobody ever learns of a
    /// seq that a crash could take back.
    durable: u64,
    /// How often `written` was put back to the stored head after another node on a
    /// shared store appended first (see [`Service::refresh_head`]).
    refreshes: u64,
}

/// Where a new entry's seq comes from on a shared store (on sled this node's cached head
/// is the head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Head {
    /// The head in the database, or this node's if it is further on: for appends that
    /// must not meet a conflict (commits, the server's own entries).
    Read,
    /// This node's cached head where it has one, without asking the database: for appends
    /// that allocate again when the database refuses their seq (posts).
    Cached,
}

/// Identifies a post for deduplication.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct InFlightKey {
    group: GroupHandle,
    sender: UserId,
    client_id: ClientMsgId,
}

/// A post whose write is queued but not yet applied.
#[derive(Debug, Clone)]
pub(super) struct InFlight {
    seq: u64,
    sent_at_ms: i64,
    applied: crate::store::ApplyTicket,
    /// Where a shared store may move it to.
    shift: Option<Shift>,
}

/// An entry applied to the store, not yet known durable.
#[derive(Debug)]
pub(super) struct Appended {
    /// Its group.
    group: GroupHandle,
    /// Its seq.
    pub(super) seq: u64,
    /// The entry, to push once durable.
    entry: StoredEntry,
    /// Its group-commit ticket.
    ticket: u64,
}

/// What [`Service::append_entry`]'s builder returns: the new entry, the writes that go
/// with it, and the audit chain holding the action's record (committed once applied).
pub(super) type Built<'a> = (StoredEntry, Writes, AuditAppend<'a>);

impl Service {
    /// Appends a post unless its `(sender, client id)` was stored before, and answers
    /// once it is durable; then pushes it to whoever may read the group.
    ///
    /// The seq is allocated and the write queued under the log lock; the write is applied
    /// outside it, so the posts of concurrent senders share storage-engine batches (see
    /// `store::combine`). Queue order is seq order, so the log on disk never has a gap
    /// that a later entry skips over.
    ///
    /// `epoch`: for an MLS message, the secret-group epoch it was made in. It is checked
    /// again under the log lock, which every commit holds while it stores the new epoch,
    /// so a message of the old epoch is never stored behind the commit that ended it.
    pub(super) async fn append_post(
        &self,
        group: &GroupHandle,
        entry: StoredEntry,
        epoch: Option<u64>,
    ) -> Result<Response, Refusal> {
        self.append_post_attached(group, entry, epoch, None).await
    }

    /// [`Service::append_post`] for a post that refers to an uploaded blob: the blob's
    /// record names the post in the same atomic batch (see `blobs`).
    pub(super) async fn append_post_attached(
        &self,
        group: &GroupHandle,
        entry: StoredEntry,
        epoch: Option<u64>,
        attachment: Option<(&UserRecord, [u8; 32])>,
    ) -> Result<Response, Refusal> {
        let mut attempt = 1;
        loop {
            let mut allocated = None;
            match self
                .append_post_once(group, &entry, epoch, attachment, attempt, &mut allocated)
                .await
            {
                // On a database shared with other nodes, one of them took the seq first:
                // nothing was stored, so allocate again from what is stored now. A retry
                // whose first attempt another node did store is answered as a duplicate.
                Err(refusal) if refusal.is_conflict() && attempt < MAX_CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(%group, attempt, "another node wrote first; allocating again");
                    if let Some(seen) = allocated {
                        self.refresh_head(group, seen).await?;
                    }
                }
                other => return other,
            }
        }
    }

    /// After another node on a shared store appended to `group` first: puts this node's
    /// cached head back to the stored one, unless that was done since the refused post
    /// took its seq (`seen`: the cache's refresh count then). The posts of one refused
    /// round come here together; the first reads the head, the others wait for it and
    /// allocate after it. Reads outside the log lock, so this node's other posts go on.
    async fn refresh_head(&self, group: &GroupHandle, seen: u64) -> Result<(), Refusal> {
        let _one = self.log.refreshing.lock().await;
        let refreshes = |heads: &HashMap<GroupHandle, Heads>| heads.get(group).map(|h| h.refreshes);
        if refreshes(&self.log_lock()) != Some(seen) {
            return Ok(());
        }
        let stored = self.db.head_async(group).await?;
        let mut heads = self.log_lock();
        if let Some(h) = heads.get_mut(group).filter(|h| h.refreshes == seen) {
            h.written = stored;
            h.refreshes += 1;
        }
        Ok(())
    }

    /// One attempt at storing a post. On a shared store no attempt reads the database
    /// under the log lock (a round trip each, which serialised every post of the node):
    /// it takes the seq after this node's cached head, and the first leaves a retry to the
    /// deduplication record's primary key. Where another node appended first, or the post
    /// is a retry already stored, the database refuses the batch as a conflict; the cached
    /// head is then read back ([`Service::refresh_head`]), and the next attempt reads the
    /// deduplication record first. `allocated`: set to the cache's refresh count when this
    /// attempt takes a seq.
    async fn append_post_once(
        &self,
        group: &GroupHandle,
        entry: &StoredEntry,
        epoch: Option<u64>,
        attachment: Option<(&UserRecord, [u8; 32])>,
        attempt: u32,
        allocated: &mut Option<u64>,
    ) -> Result<Response, Refusal> {
        let shared = self.db.store().shared();
        let now = entry.sent_at_ms;
        let key = InFlightKey {
            group: group.clone(),
            sender: entry.sender.clone(),
            client_id: entry.client_id,
        };
        // Where the record can only be there from an earlier attempt, it is read before
        // the lock: on a shared store without holding it for the round trip.
        let stored_before = match shared && attempt > 1 {
            true => {
                self.db
                    .deduplicated_async(group, &entry.sender, &entry.client_id)
                    .await?
            }
            false => None,
        };
        let (seq, sent_at_ms, duplicate, applying, stored, shift) = {
            let mut heads = self.log_lock();
            let in_flight = self.in_flight().get(&key).cloned();
            if let Some(f) = in_flight {
                // The same post is being stored right now (a retry that overtook its
                // original): answer as a duplicate once the original is applied.
                (f.seq, f.sent_at_ms, true, Some(f.applied), None, f.shift)
            } else if let Some(seq) = match shared {
                true => stored_before,
                false => self
                    .db
                    .deduplicated(group, &entry.sender, &entry.client_id)?,
            } {
                let sent_at = self
                    .db
                    .entries(group, seq - 1, 1)?
                    .first()
                    .map_or(now, |(_, e, _)| e.sent_at_ms);
                (seq, sent_at, true, None, None, None)
            } else {
                if let Some(epoch) = epoch {
                    let current = self.db.secret_group(group)?.map_or(0, |r| r.epoch);
                    if current != epoch {
                        return Err(super::secret::stale(group, current));
                    }
                }
                let mut extra = Writes::new();
                let head = match shared {
                    true => Head::Cached,
                    false => Head::Read,
                };
                if let Some((me, blob)) = &attachment {
                    let seq = self.next_seq_from(&heads, group, head)?;
                    self.attach_post(&mut extra, me, group, seq, blob)?;
                }
                // A public post on a shared store may be stored after whatever another
                // node appended first. An MLS message may not (it must not move behind the
                // commit that ends its epoch), nor a post a blob record names by seq.
                let movable = shared && epoch.is_none() && attachment.is_none();
                let (seq, applied, shift) = self.enqueue_locked(
                    &mut heads,
                    group,
                    std::slice::from_ref(entry),
                    extra,
                    head,
                    movable,
                )?;
                *allocated = heads.get(group).map(|h| h.refreshes);
                if attachment.is_some() {
                    // Blob records are read-modify-written under the log lock: the next
                    // writer must see this one.
                    self.db.wait_applied_blocking(applied)?;
                }
                self.in_flight().insert(
                    key.clone(),
                    InFlight {
                        seq,
                        sent_at_ms: now,
                        applied,
                        shift: shift.clone(),
                    },
                );
                (seq, now, false, Some(applied), Some(entry), shift)
            }
        };
        let ticket = match applying {
            Some(applied) => {
                let result = self.db.wait_applied(applied).await;
                if stored.is_some() {
                    // From here on the dedup index on disk answers retries.
                    self.in_flight().remove(&key);
                }
                // A failed apply means the storage engine failed; it refuses every later
                // write too, so no later seq is stored behind the missing one.
                result?;
                self.durability.written()
            }
            None => self.durability.latest(),
        };
        let seq = match shift {
            Some(shift) => {
                let placed = shift.of(seq)?;
                if placed != seq && stored.is_some() {
                    self.cached_head_reaches(group, placed);
                }
                placed
            }
            None => seq,
        };
        self.durable(ticket).await?;
        self.mark_durable(group, seq);
        if let Some(entry) = stored {
            self.publish_entry(group, seq, entry);
        }
        Ok(Response::Posted {
            seq,
            sent_at_ms,
            duplicate,
        })
    }

    /// The seq the next entry of `group` gets: the one after its head, or the first of
    /// the data's generation if the head is from an earlier one (see
    /// [`rathaus_protocol::log`]). Call with the log lock held.
    pub(super) fn next_seq(
        &self,
        heads: &HashMap<GroupHandle, Heads>,
        group: &GroupHandle,
    ) -> Result<u64, Refusal> {
        self.next_seq_from(heads, group, Head::Read)
    }

    /// [`Self::next_seq`] from the head `head` says.
    fn next_seq_from(
        &self,
        heads: &HashMap<GroupHandle, Heads>,
        group: &GroupHandle,
        head: Head,
    ) -> Result<u64, Refusal> {
        let generation = self.log.generation.load(Ordering::SeqCst);
        let written = match (head, heads.get(group)) {
            (Head::Cached, Some(h)) => h.written,
            _ => self.written_head(heads, group)?,
        };
        Ok(log::next_seq(written, generation))
    }

    /// A reader asking for the entries of `group` after `since` holds them up to at least
    /// `since + 1`. If the seq the log would give next is among those, this server has
    /// forgotten entries its readers have shown: its data was put back to an older copy
    /// (copied back by hand rather than through `restore`, which moves the generation on
    /// itself). From then on every log continues in the next generation, so none of the
    /// numbers readers may hold is given to a new entry. At most once per run: a restore
    /// happens before a start, and no peer can move the generation on at will.
    pub(super) fn notice_reader_ahead(
        &self,
        group: &GroupHandle,
        since: u64,
    ) -> Result<(), Refusal> {
        if since == 0 || self.log.generation_moved.load(Ordering::SeqCst) {
            return Ok(());
        }
        let heads = self.log_lock();
        let generation = self.log.generation.load(Ordering::SeqCst);
        let head = self.written_head(&heads, group)?;
        if log::next_seq(head, generation) > since.saturating_add(1)
            || self.log.generation_moved.swap(true, Ordering::SeqCst)
        {
            return Ok(());
        }
        let next = generation.max(self.db.log_generation()?) + 1;
        let mut w = Writes::new();
        w.put_log_generation(next)?;
        self.db.apply(w)?;
        self.log.generation.store(next, Ordering::SeqCst);
        drop(heads);
        tracing::warn!(
            group = %group,
            head,
            reader_since = since,
            generation = next,
            "a reader holds entries beyond the log's head: this server's data is older than \
             what its clients have seen; every log continues in a new generation"
        );
        Ok(())
    }

    /// The last seq of `group` allocated so far. Call with the log lock held. On a store
    /// that other nodes write too, the stored head counts as well: theirs are not in the
    /// cache (and a seq two nodes picked is refused by the store).
    pub(super) fn written_head(
        &self,
        heads: &HashMap<GroupHandle, Heads>,
        group: &GroupHandle,
    ) -> Result<u64, Refusal> {
        Ok(match heads.get(group) {
            Some(h) if self.db.store().shared() => h.written.max(self.db.head(group)?),
            Some(h) => h.written,
            None => self.db.head(group)?,
        })
    }

    /// Appends `entries` to `group` with `extra` writes in one atomic batch; returns the
    /// seq of the first. Call with the log lock held; take a commit ticket afterwards.
    pub(super) fn append_locked(
        &self,
        heads: &mut HashMap<GroupHandle, Heads>,
        group: &GroupHandle,
        entries: &[StoredEntry],
        extra: Writes,
    ) -> Result<u64, Refusal> {
        let before = heads.get(group).copied();
        let (first, applied, _) =
            self.enqueue_locked(heads, group, entries, extra, Head::Read, false)?;
        if let Err(e) = self.db.wait_applied_blocking(applied) {
            // Nobody could queue behind it while the lock is held: take the seqs back.
            match before {
                Some(h) => heads.insert(group.clone(), h),
                None => heads.remove(group),
            };
            return Err(e.into());
        }
        Ok(first)
    }

    /// Allocates seqs for `entries` and queues them with `extra` writes as one atomic
    /// batch; returns the seq of the first, the batch's ticket, and for `movable` entries
    /// (nothing in `extra`; see [`Shift`]) where the store reports that it moved them.
    /// Call with the log lock held; wait for the ticket, then take a commit ticket.
    fn enqueue_locked(
        &self,
        heads: &mut HashMap<GroupHandle, Heads>,
        group: &GroupHandle,
        entries: &[StoredEntry],
        mut extra: Writes,
        head: Head,
        movable: bool,
    ) -> Result<(u64, ApplyTicket, Option<Shift>), Refusal> {
        let first = self.next_seq_from(heads, group, head)?;
        let mut last = first - 1;
        let mut shift = None;
        for entry in entries {
            last += 1;
            match movable {
                true => shift = Some(extra.put_movable_entry(group, last, entry)?),
                false => {
                    extra.put_entry(group, last, entry)?;
                }
            }
        }
        let applied = self.db.enqueue(extra)?;
        let (durable, refreshes) = heads
            .get(group)
            .map_or((first - 1, 0), |h| (h.durable, h.refreshes));
        heads.insert(
            group.clone(),
            Heads {
                written: last,
                durable,
                refreshes,
            },
        );
        Ok((first, applied, shift))
    }

    fn in_flight(&self) -> MutexGuard<'_, HashMap<InFlightKey, InFlight>> {
        // Single map operations only: a poisoned lock holds a consistent map.
        self.log
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Pushes a durable entry to the subscribers who may read its group, here and (on a
    /// shared store) on the other nodes.
    pub(super) fn publish_entry(&self, group: &GroupHandle, seq: u64, entry: &StoredEntry) {
        self.publish_entry_here(group, seq, entry);
        self.db.store().notify_entry(&group.to_string(), seq);
    }

    /// Pushes entries another node on the store made durable to this node's subscribers.
    /// A notice says where to read; the entries come from the log, so a lost notice only
    /// delays (the clients fetch the gap).
    pub(super) async fn relay_entries(
        self: &std::sync::Arc<Self>,
        notice: crate::store::EntryNotice,
    ) {
        let Ok(group) = GroupHandle::parse(&notice.group) else {
            return;
        };
        self.cached_head_reaches(&group, notice.to);
        let service = self.clone();
        // Reads are blocking store calls.
        let _ = tokio::task::spawn_blocking(move || {
            let mut since = notice.from - 1;
            // Bounded: each round moves `since` forward or ends.
            for _ in 0..1000 {
                let want = usize::try_from(notice.to - since)
                    .unwrap_or(usize::MAX)
                    .min(1000);
                let entries = match service.db.entries(&group, since, want) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(%group, error = %e, "cannot read another node's entries");
                        return;
                    }
                };
                let Some(last) = entries.last().map(|(seq, _, _)| *seq) else {
                    return;
                };
                for (seq, entry, _) in entries.iter().filter(|(s, _, _)| *s <= notice.to) {
                    service.publish_entry_here(&group, *seq, entry);
                }
                if last >= notice.to {
                    return;
                }
                since = last;
            }
        })
        .await;
    }

    /// `group`'s log reaches `seq` on a shared store, through entries of another node
    /// (the store moved this node's post there, or the other node's notice said so): this
    /// node's next posts there take seqs after it instead of learning of it from a refused
    /// write, and posts that took a seq before need not read the head back.
    fn cached_head_reaches(&self, group: &GroupHandle, seq: u64) {
        let mut heads = self.log_lock();
        if let Some(h) = heads.get_mut(group).filter(|h| h.written < seq) {
            h.written = seq;
            h.refreshes += 1;
        }
    }

    /// Pushes a durable entry to this node's subscribers who may read its group.
    fn publish_entry_here(&self, group: &GroupHandle, seq: u64, entry: &StoredEntry) {
        tracing::debug!(%group, seq, "entry stored");
        self.index_entry(group, seq, entry);
        let event = Response::Event(Event::Posted {
            group: group.clone(),
            entry: entry.to_log_entry(seq),
        });
        match frame::encode(&event) {
            Ok(bytes) => match self.pushed.frame(bytes) {
                Some(frame) => self.publish(Broadcast::Posted {
                    group: group.clone(),
                    frame,
                    readers: self.readers_of(group),
                }),
                None => {
                    let skipped = self.metrics.pushes_skipped.inc() + 1;
                    if super::worth_logging(skipped) {
                        tracing::warn!(
                            %group,
                            seq,
                            held = self.pushed.held(),
                            skipped,
                            "pushed frames held reach their bound (a subscriber stopped \
                             reading); stored, not pushed"
                        );
                    }
                }
            },
            Err(e) => tracing::error!(%group, seq, error = %e, "cannot encode event"),
        }
    }

    pub(super) fn log_lock(&self) -> MutexGuard<'_, HashMap<GroupHandle, Heads>> {
        // Heads are plain numbers updated in single statements; a poisoned lock holds
        // valid ones.
        self.log
            .heads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Under the log lock: allocates the next seq of `group`, lets `build` make the entry
    /// (and read whatever it must read consistently with the log), and applies everything
    /// in one batch. Call [`Service::deliver`] afterwards, outside every lock.
    pub(super) fn append_entry<'s>(
        &'s self,
        group: &GroupHandle,
        build: impl FnOnce(u64) -> Result<Built<'s>, Refusal>,
    ) -> Result<Appended, Refusal> {
        let mut heads = self.log_lock();
        let seq = self.next_seq(&heads, group)?;
        let (entry, w, audit) = build(seq)?;
        let first = self.append_locked(&mut heads, group, std::slice::from_ref(&entry), w)?;
        debug_assert_eq!(first, seq, "the seq the entry was built for");
        audit.commit();
        Ok(Appended {
            group: group.clone(),
            seq,
            entry,
            ticket: self.durability.written(),
        })
    }

    /// Waits until an appended entry is durable, lets readers see it and pushes it to
    /// every subscriber who may read the group.
    pub(super) async fn deliver(&self, appended: Appended) -> Result<u64, Refusal> {
        let Appended {
            group,
            seq,
            entry,
            ticket,
        } = appended;
        self.durable(ticket).await?;
        self.mark_durable(&group, seq);
        self.publish_entry(&group, seq, &entry);
        Ok(seq)
    }

    /// The group's durable head (what readers may see).
    pub(super) fn head(&self, group: &GroupHandle) -> Result<u64, Refusal> {
        if self.db.store().shared() {
            // Every applied write is durable there, and other nodes append too.
            return Ok(self.db.head(group)?);
        }
        let mut heads = self.log_lock();
        if let Some(h) = heads.get(group) {
            return Ok(h.durable);
        }
        // Not touched since start: everything on disk is as durable as it gets.
        let on_disk = self.db.head(group)?;
        heads.insert(
            group.clone(),
            Heads {
                written: on_disk,
                durable: on_disk,
                refreshes: 0,
            },
        );
        Ok(on_disk)
    }

    pub(super) fn mark_durable(&self, group: &GroupHandle, seq: u64) {
        let mut heads = self.log_lock();
        if let Some(h) = heads.get_mut(group) {
            h.durable = h.durable.max(seq);
        }
    }
}

/// A fresh idempotency id for an entry the server writes (nobody retries it).
pub(super) fn server_client_id() -> ClientMsgId {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    ClientMsgId(id)
}
