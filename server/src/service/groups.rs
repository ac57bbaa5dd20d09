//! Groups and their logs: listing, posting, fetching, members.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};

use rathaus_protocol::limits::{MAX_CONTROL_FRAME, MAX_FETCH};
use rathaus_protocol::log;
use rathaus_protocol::{
    frame, ClientMsgId, DepartmentSlug, EntryBody, ErrorCode, Event, GroupHandle, GroupKind,
    GroupSummary, MemberInfo, PostBody, Response, Role,
};

use super::{Broadcast, Heads, InFlight, InFlightKey, Refusal, Service, Session};

/// How often a post is allocated a seq again after another node on a shared database
/// took the one it had (each retry reads the stored head afresh).
const MAX_CONFLICT_RETRIES: u32 = 8;
use crate::store::{ApplyTicket, DepartmentRecord, StoredEntry, UserRecord, Writes};

/// Room left in a `Fetch` answer for everything but the entries' stored bytes.
pub(super) const FETCH_BUDGET: usize = MAX_CONTROL_FRAME - 128 * 1024;

impl Service {
    pub(super) fn list_groups(&self, me: &UserRecord) -> Result<Response, Refusal> {
        let mut groups = vec![GroupSummary {
            handle: GroupHandle::Announcements,
            kind: GroupKind::Announcements,
            name: "Announcements".into(),
            head: self.head(&GroupHandle::Announcements)?,
        }];
        for dept in self.db.departments()? {
            let handle = GroupHandle::Public(dept.slug.clone());
            groups.push(GroupSummary {
                head: self.head(&handle)?,
                handle,
                kind: GroupKind::Public,
                name: dept.name.clone(),
            });
            if super::secret::on_roster(&dept, &me.id) {
                let handle = GroupHandle::Secret(dept.slug.clone());
                groups.push(GroupSummary {
                    head: self.head(&handle)?,
                    handle,
                    kind: GroupKind::Secret,
                    name: format!("{} (secret)", dept.name),
                });
            }
        }
        for room in self.db.rooms()? {
            if super::secret::on_roster(&room, &me.id) {
                let handle = GroupHandle::Room(room.slug.clone());
                groups.push(GroupSummary {
                    head: self.head(&handle)?,
                    handle,
                    kind: GroupKind::Secret,
                    name: room.name.clone(),
                });
            }
        }
        Ok(Response::Groups(groups))
    }

    pub(super) async fn post(
        &self,
        session: &Session,
        me: &UserRecord,
        group: GroupHandle,
        client_id: ClientMsgId,
        body: PostBody,
    ) -> Result<Response, Refusal> {
        // One key lookup for a live department; a retired one is refused with its reason.
        self.ensure_open(&group)?;
        if group.is_secret() {
            return self.post_secret(session, me, group, client_id, body).await;
        }
        if group == GroupHandle::Announcements
            && !(me.has_role(Role::Editor) || me.has_role(Role::Admin))
        {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only editors and administrators may post announcements",
            ));
        }
        let content = match body {
            PostBody::Public(content) => content,
            PostBody::Mls(_) | PostBody::MlsAttachment { .. } => {
                return Err(Refusal::new(
                    ErrorCode::Invalid,
                    format!("{group} is server-readable; MLS messages belong in secret groups"),
                ))
            }
        };
        let content = content
            .validate()
            .map_err(|e| Refusal::new(ErrorCode::Invalid, e.to_string()))?;

        let entry = StoredEntry {
            sender: me.id.clone(),
            sender_name: me.name.clone(),
            sent_at_ms: self.now_ms(),
            client_id,
            body: EntryBody::Content(content),
        };
        if let Some(changed) = self.post_change(&group, entry.clone()).await {
            return changed;
        }
        match Self::attachment_of(&entry.body) {
            Some(blob) => {
                if self.db.deduplicated(&group, &me.id, &client_id)?.is_none() {
                    self.check_attachment(me, &group, &blob)?;
                }
                self.append_post_attached(&group, entry, None, Some((me, blob)))
                    .await
            }
            None => self.append_post(&group, entry, None).await,
        }
    }

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
            match self
                .append_post_once(group, entry.clone(), epoch, attachment)
                .await
            {
                // On a database shared with other nodes, one of them took the seq first:
                // nothing was stored, so allocate again from what is stored now. A retry
                // whose first attempt another node did store is answered as a duplicate.
                Err(refusal) if refusal.is_conflict() && attempt < MAX_CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(%group, attempt, "another node wrote first; allocating again");
                    self.log_lock().remove(group);
                }
                other => return other,
            }
        }
    }

    async fn append_post_once(
        &self,
        group: &GroupHandle,
        entry: StoredEntry,
        epoch: Option<u64>,
        attachment: Option<(&UserRecord, [u8; 32])>,
    ) -> Result<Response, Refusal> {
        let now = entry.sent_at_ms;
        let key = InFlightKey {
            group: group.clone(),
            sender: entry.sender.clone(),
            client_id: entry.client_id,
        };
        let (seq, sent_at_ms, duplicate, applying, stored) = {
            let mut heads = self.log_lock();
            let in_flight = self.in_flight().get(&key).copied();
            if let Some(f) = in_flight {
                // The same post is being stored right now (a retry that overtook its
                // original): answer as a duplicate once the original is applied.
                (f.seq, f.sent_at_ms, true, Some(f.applied), None)
            } else if let Some(seq) =
                self.db
                    .deduplicated(group, &entry.sender, &entry.client_id)?
            {
                let sent_at = self
                    .db
                    .entries(group, seq - 1, 1)?
                    .first()
                    .map_or(now, |(_, e, _)| e.sent_at_ms);
                (seq, sent_at, true, None, None)
            } else {
                if let Some(epoch) = epoch {
                    let current = self.db.secret_group(group)?.map_or(0, |r| r.epoch);
                    if current != epoch {
                        return Err(super::secret::stale(group, current));
                    }
                }
                let mut extra = Writes::new();
                if let Some((me, blob)) = &attachment {
                    let seq = self.next_seq(&heads, group)?;
                    self.attach_post(&mut extra, me, group, seq, blob)?;
                }
                let (seq, applied) =
                    self.enqueue_locked(&mut heads, group, std::slice::from_ref(&entry), extra)?;
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
                    },
                );
                (seq, now, false, Some(applied), Some(entry))
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
        self.durable(ticket).await?;
        self.mark_durable(group, seq);
        if let Some(entry) = stored {
            self.publish_entry(group, seq, &entry);
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
        let generation = self.log_generation.load(Ordering::SeqCst);
        Ok(log::next_seq(self.written_head(heads, group)?, generation))
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
        if since == 0 || self.generation_moved.load(Ordering::SeqCst) {
            return Ok(());
        }
        let heads = self.log_lock();
        let generation = self.log_generation.load(Ordering::SeqCst);
        let head = self.written_head(&heads, group)?;
        if log::next_seq(head, generation) > since.saturating_add(1)
            || self.generation_moved.swap(true, Ordering::SeqCst)
        {
            return Ok(());
        }
        let next = generation.max(self.db.log_generation()?) + 1;
        let mut w = Writes::new();
        w.put_log_generation(next)?;
        self.db.apply(w)?;
        self.log_generation.store(next, Ordering::SeqCst);
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
        let (first, applied) = self.enqueue_locked(heads, group, entries, extra)?;
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
    /// batch; returns the seq of the first and the batch's ticket. Call with the log lock
    /// held; wait for the ticket, then take a commit ticket.
    fn enqueue_locked(
        &self,
        heads: &mut HashMap<GroupHandle, Heads>,
        group: &GroupHandle,
        entries: &[StoredEntry],
        mut extra: Writes,
    ) -> Result<(u64, ApplyTicket), Refusal> {
        let first = self.next_seq(heads, group)?;
        let mut last = first - 1;
        for entry in entries {
            last += 1;
            extra.put_entry(group, last, entry)?;
        }
        let applied = self.db.enqueue(extra)?;
        let durable = heads.get(group).map_or(first - 1, |h| h.durable);
        heads.insert(
            group.clone(),
            Heads {
                written: last,
                durable,
            },
        );
        Ok((first, applied))
    }

    fn in_flight(&self) -> MutexGuard<'_, HashMap<InFlightKey, InFlight>> {
        // Single map operations only: a poisoned lock holds a consistent map.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Pushes a durable entry to the subscribers who may read its group, here and (on a
    /// shared store) on the other nodes.
    pub(super) fn publish_entry(&self, group: &GroupHandle, seq: u64, entry: &StoredEntry) {
        self.publish_entry_here(group, seq, entry);
        self.db.store().notify_entry(&group.to_string(), seq);
    }

    /// Pushes the entries other nodes on the store made durable to this node's
    /// subscribers, until `stop`. A notice says where to read; the entries come from the
    /// log, so a lost notice only delays (the clients fetch the gap).
    pub async fn relay_other_nodes(
        self: std::sync::Arc<Self>,
        mut notices: tokio::sync::mpsc::Receiver<crate::store::EntryNotice>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let notice = tokio::select! {
                _ = stop.changed() => return,
                n = notices.recv() => match n {
                    Some(n) => n,
                    None => return,
                },
            };
            let Ok(group) = GroupHandle::parse(&notice.group) else {
                continue;
            };
            let service = self.clone();
            // Reads are blocking store calls.
            let _ = tokio::task::spawn_blocking(move || {
                let mut since = notice.from - 1;
                // Bounded: each round moves `since` forward or ends.
                for _ in 0..1000 {
                    let want = usize::try_from(notice.to - since).unwrap_or(usize::MAX).min(1000);
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
            Ok(bytes) => self.publish(Broadcast::Posted {
                group: group.clone(),
                frame: Arc::new(bytes),
                readers: self.readers_of(group),
            }),
            Err(e) => tracing::error!(%group, seq, error = %e, "cannot encode event"),
        }
    }

    pub(super) fn log_lock(&self) -> MutexGuard<'_, HashMap<GroupHandle, Heads>> {
        // Heads are plain numbers updated in single statements; a poisoned lock holds
        // valid ones.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn fetch(
        &self,
        session: &Session,
        _me: &UserRecord,
        group: GroupHandle,
        since: u64,
        limit: u32,
    ) -> Result<Response, Refusal> {
        let asked_since = since;
        let since = if group.is_secret() {
            // Only devices in the group read it, and a joiner nothing from before it
            // joined (DESIGN §5).
            self.secret_department(&group)?;
            match self.secret_reader(session, &group)? {
                Some(joined_seq) => since.max(joined_seq),
                None => {
                    return Err(Refusal::new(
                        ErrorCode::Forbidden,
                        format!("only devices in {group} may read it"),
                    ))
                }
            }
        } else {
            self.ensure_readable(&group)?;
            since
        };
        let limit = limit.min(MAX_FETCH) as usize;
        let head = self.head(&group)?;
        // What the reader asked for, not where a joiner's reading begins. Only a reader
        // at or beyond the head can hold more than the log (the check takes the log lock).
        if asked_since >= head {
            self.notice_reader_ahead(&group, asked_since)?;
        }
        let mut entries = Vec::new();
        let mut budget = FETCH_BUDGET;
        for (seq, entry, size) in self.db.entries(&group, since, limit)? {
            if seq > head {
                break;
            }
            let cost = size + 128;
            if cost > budget && !entries.is_empty() {
                break;
            }
            budget = budget.saturating_sub(cost);
            entries.push(entry.to_log_entry(seq));
        }
        Ok(Response::Entries {
            group,
            entries,
            head,
        })
    }

    pub(super) fn members(&self, me: &UserRecord, group: GroupHandle) -> Result<Response, Refusal> {
        if group.is_secret() {
            return self.secret_members(me, group);
        }
        let members = match self.readable_group(&group)? {
            Some(dept) => {
                let mut out = Vec::new();
                for id in &dept.members {
                    if let Some(u) = self.db.user(id)?.filter(|u| !u.removed) {
                        out.push(member_info(&u, dept.owners.contains(id)));
                    }
                }
                out
            }
            None => self
                .db
                .users()?
                .iter()
                .filter(|u| !u.removed)
                .map(|u| member_info(u, u.has_role(Role::Editor) || u.has_role(Role::Admin)))
                .collect(),
        };
        Ok(Response::Members { group, members })
    }

    /// Checks that `group` exists and is served here (a public group or announcements),
    /// without reading its member list: the check on every post and fetch.
    fn ensure_readable(&self, group: &GroupHandle) -> Result<(), Refusal> {
        match group {
            GroupHandle::Announcements => Ok(()),
            GroupHandle::Public(slug) => {
                // A retired department's public group stays readable as it ended; posts
                // to it were refused before this check.
                if self.db.department_exists(slug)? || self.is_retired(slug)? {
                    Ok(())
                } else {
                    Err(Refusal::new(
                        ErrorCode::NotFound,
                        format!("group {slug} does not exist"),
                    ))
                }
            }
            GroupHandle::Secret(_) | GroupHandle::Room(_) => self.readable_group(group).map(|_| ()),
        }
    }

    /// Checks that `group` exists and is served here; returns its department (`None` for
    /// announcements).
    fn readable_group(&self, group: &GroupHandle) -> Result<Option<DepartmentRecord>, Refusal> {
        match group {
            GroupHandle::Announcements => Ok(None),
            GroupHandle::Public(slug) => self.department_or_not_found(slug).map(Some),
            GroupHandle::Secret(_) | GroupHandle::Room(_) => Err(Refusal::new(
                ErrorCode::NotFound,
                format!("secret group {group} does not exist yet"),
            )),
        }
    }

    pub(super) fn department_or_not_found(
        &self,
        slug: &DepartmentSlug,
    ) -> Result<DepartmentRecord, Refusal> {
        self.db.department(slug)?.ok_or_else(|| {
            Refusal::new(ErrorCode::NotFound, format!("group {slug} does not exist"))
        })
    }

    /// The group's durable head (what readers may see).
    pub(super) fn head(&self, group: &GroupHandle) -> Result<u64, Refusal> {
        if self.db.store().shared() {
            // Every applied write is durable there, and other nodes append too.
            return Ok(self.db.head(group)?);
        }
        let mut heads = self.log.lock().unwrap_or_else(PoisonError::into_inner);
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
            },
        );
        Ok(on_disk)
    }

    pub(super) fn mark_durable(&self, group: &GroupHandle, seq: u64) {
        let mut heads = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = heads.get_mut(group) {
            h.durable = h.durable.max(seq);
        }
    }
}

pub(super) fn member_info(u: &UserRecord, owner: bool) -> MemberInfo {
    MemberInfo {
        user: u.id.clone(),
        name: u.name.clone(),
        owner,
        devices: u.active_devices().map(|d| d.id).collect(),
    }
}
