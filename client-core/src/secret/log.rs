//! Fetching a secret group's log and processing its entries in seq order with the MLS
//! engine, each entry's MLS state, rows and cursor stored together.

use rathaus_protocol::messages::SecretGroupInfo;
use rathaus_protocol::mls::{DeviceCredential, Roster};
use rathaus_protocol::{Content, EntryBody, ErrorCode, GroupHandle, LogEntry, Request, Response};

use super::policy::describe_change;
use super::rows::{blank_row, diff};
use super::{finish, finish_savepoint, memory, mls_group_id, SERVER_SENDER};
use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::mls::{
    is_application_message, DeviceIdentity, Incoming, MlsError, ProposalKind, ProposalSender,
};
use crate::store::{self, RowKind, TimelineRow};

/// Context while processing a batch of log entries.
#[derive(Default)]
struct Batch {
    /// The roster as the server reports it now; fetched when a commit or a server
    /// proposal is in the batch.
    roster: Option<Roster>,
}

impl Client {
    /// Fetches and processes the group's log after the cursor, in seq order.
    pub(super) async fn fetch_secret_log(&mut self, group: &GroupHandle) -> Result<()> {
        let handle = group.to_string();
        let gid = mls_group_id(group);
        let mut learned_names = false;
        // Bounded: each round advances the cursor or stops.
        let mut start = None;
        for round in 0..100_000 {
            if !self.mls.has_group(&gid)? {
                return Ok(());
            }
            let since = self.store.cursor(&handle)?;
            let start = *start.get_or_insert(since);
            // The first round starts at the entry of the cursor, already held, to notice
            // a server restored from an older copy (crate::restore).
            let check_fork = round == 0 && since > 0;
            let request = Request::Fetch {
                group: group.clone(),
                since: if check_fork { since - 1 } else { since },
                limit: rathaus_protocol::limits::MAX_FETCH,
            };
            let (entries, head) = match self.request(&request).await {
                Ok(Response::Entries { entries, head, .. }) => (entries, head),
                Ok(_) => return Err(ClientError::UnexpectedResponse("Fetch")),
                // Removed from the group: the server no longer delivers it.
                Err(e) if e.code() == Some(ErrorCode::Forbidden) => return Ok(()),
                Err(e) => return Err(e),
            };
            // A cursor set without a fetched entry (joining, an own commit) has no mark to
            // compare: its entry is processed once more, which only a new message (one a
            // restored server gave that seq) survives (see process_entry).
            let recheck = check_fork
                && store::cursor_mark_on(self.mls.connection(), &handle, since)?.is_none();
            if check_fork && self.settle_fork(group, since, &entries, head).await? {
                continue;
            }
            let wanted = |seq: u64| seq > since || (recheck && seq == since);
            let Some(last) = entries.last().map(|e| e.seq) else {
                break;
            };
            if last <= since {
                break;
            }
            let mut batch = Batch::default();
            // Commits are judged against the roster (removals of rostered users need an
            // owner), server proposals checked against it.
            let needs_roster = entries.iter().any(|e| {
                wanted(e.seq)
                    && matches!(&e.body, EntryBody::Mls(bytes) if !is_application_message(bytes))
            });
            if needs_roster {
                batch.roster = Some(roster_of(&self.secret_info(group).await?));
            }
            if !learned_names && entries.iter().any(|e| e.sender.as_str() != SERVER_SENDER) {
                self.learn_names(group).await?;
                learned_names = true;
            }
            // One SQLite transaction (one fsync) for the whole page instead of one per
            // entry: each entry still runs in its own savepoint, and its MLS state, rows
            // and the cursor become durable together with the rest of the page. A crash
            // before the commit loses the page's processing, not the entries, which are
            // fetched again. Within the page the engine writes the group's message
            // secrets once, not after every application message (`in_batch`), before
            // the commit.
            let mut names: Vec<(&str, &str)> = Vec::new();
            for entry in entries.iter().rev() {
                let sender = entry.sender.as_str();
                if sender != SERVER_SENDER && !names.iter().any(|(s, _)| *s == sender) {
                    names.push((sender, &entry.sender_name));
                }
            }
            self.store.set_user_names(names)?;
            let conn = self.mls.connection();
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let result = self.mls.in_batch(|| {
                entries
                    .iter()
                    .filter(|entry| wanted(entry.seq))
                    .try_for_each(|entry| self.process_entry(group, entry, &batch))
            });
            let result = result.and_then(|()| store::index_queued(conn));
            finish(conn, result)?;
            if let Some(entry) = entries.last() {
                let mark = crate::restore::mark_of(entry);
                store::set_cursor_mark_on(self.mls.connection(), &handle, entry.seq, &mark)?;
            }
            self.report_catch_up(&handle, start, last, head);
            if last >= head {
                break;
            }
        }
        self.pin_group_keys(group)
    }

    /// A pushed entry of `group`: if it is an application message directly after the
    /// cursor (`cursor`) and this device is in the group, processes it as a fetched one
    /// would be (same checks, state, rows and cursor in one transaction) and returns
    /// true. Anything else (a commit or proposal, which is judged against the roster, or
    /// an entry after a gap) is left to [`Client::fetch_secret_log`].
    pub(super) fn process_pushed_message(
        &mut self,
        group: &GroupHandle,
        entry: &LogEntry,
        cursor: u64,
    ) -> Result<bool> {
        let gid = mls_group_id(group);
        let follows = cursor.checked_add(1) == Some(entry.seq);
        let message = matches!(&entry.body, EntryBody::Mls(bytes) if is_application_message(bytes));
        if !follows || !message || !self.mls.has_group(&gid)? {
            return Ok(false);
        }
        let sender = entry.sender.as_str();
        if sender != SERVER_SENDER {
            self.store
                .set_user_names(vec![(sender, entry.sender_name.as_str())])?;
        }
        let conn = self.mls.connection();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let batch = Batch::default();
        let result = self
            .mls
            .in_batch(|| self.process_entry(group, entry, &batch));
        let result = result.and_then(|()| store::index_queued(conn));
        finish(conn, result)?;
        let mark = crate::restore::mark_of(entry);
        store::set_cursor_mark_on(self.mls.connection(), &group.to_string(), entry.seq, &mark)?;
        Ok(true)
    }

    /// Processes one log entry and stores its rows and the cursor in one transaction.
    fn process_entry(&self, group: &GroupHandle, entry: &LogEntry, batch: &Batch) -> Result<()> {
        let handle = group.to_string();
        let gid = mls_group_id(group);
        // Beyond the cursor this device holds rows only for its own entries. Another
        // entry there, or one received at another time: the server was restored from an
        // older copy and gave the seq to a new entry (crate::restore). The new one
        // replaces what is held only if it processes; a replay does not.
        let own = self.store.is_own_entry(&handle, entry.seq)?;
        let taken = store::row_mark_on(self.mls.connection(), &handle, entry.seq)?
            .is_some_and(|held| !own || held.sent_at_ms != entry.sent_at_ms);
        if own && !taken {
            let conn = self.mls.connection();
            return store::append_rows(conn, &handle, &[], Some(entry.seq));
        }
        let EntryBody::Mls(bytes) = &entry.body else {
            let conn = self.mls.connection();
            return store::append_rows(conn, &handle, &[], Some(entry.seq));
        };
        let conn = self.mls.connection();
        // A savepoint: inside the caller's transaction for a page of entries, or a
        // transaction of its own.
        conn.execute_batch("SAVEPOINT rathaus_entry")?;
        let result = (|| -> Result<Option<TimelineRow>> {
            let empty = Roster::default();
            let roster = batch.roster.as_ref().unwrap_or(&empty);
            let incoming = match self.mls.process_message(bytes, roster) {
                Ok(incoming) => incoming,
                Err(MlsError::Storage(e)) => return Err(e.into()),
                Err(e @ MlsError::HeldSecretsLost) => return Err(e.into()),
                // Not a new message: what this device holds under the seq stays.
                Err(_) if taken => return Ok(None),
                Err(e) => return Ok(Some(self.refused_row(group, entry, &gid, e)?)),
            };
            if taken {
                store::cut_fork_on(
                    self.mls.connection(),
                    &handle,
                    entry.seq,
                    false,
                    crate::time_fmt::now_ms(),
                )?;
            }
            let row = match incoming {
                Incoming::Application { sender, plaintext } => {
                    crate::files::remember_plaintext(conn, &handle, entry.seq, &plaintext)?;
                    Some(self.application_row(group, entry, &sender, &plaintext))
                }
                Incoming::Commit(summary) => {
                    let verdict = &summary.verdict;
                    let mut row = self.membership_row(
                        group,
                        entry,
                        &verdict.committer,
                        &verdict.added,
                        &verdict.removed,
                    );
                    if let Some((before, after)) = &verdict.policy_change {
                        let change = describe_change(before, after, |u| self.person(u));
                        row = Some(match row {
                            Some(mut row) => {
                                row.text = format!("{} and {change}", row.text);
                                row
                            }
                            None => {
                                let mut row = blank_row(group, entry);
                                row.sender = verdict.committer.user.to_string();
                                row.sender_name = self.name_of(verdict.committer.user.as_str());
                                row.kind = RowKind::Membership;
                                row.text = format!(
                                    "{} {change}",
                                    self.person(verdict.committer.user.as_str())
                                );
                                row
                            }
                        });
                    }
                    if summary.self_removed {
                        memory::mark_removed(conn, &gid)?;
                        row.get_or_insert_with(|| blank_row(group, entry)).text = format!(
                            "{} removed this device from {group}",
                            self.person(verdict.committer.user.as_str())
                        );
                    }
                    row
                }
                Incoming::Proposal {
                    sender: ProposalSender::External,
                    kind: ProposalKind::Remove(target),
                } => {
                    let still_rostered = batch
                        .roster
                        .as_ref()
                        .is_none_or(|r| r.may_stay(target.credential_id()));
                    let mut row = blank_row(group, entry);
                    row.sender = SERVER_SENDER.to_owned();
                    row.sender_name = "Rathaus server".to_owned();
                    if still_rostered {
                        self.mls.clear_pending_proposals(&gid)?;
                        row.kind = RowKind::Warning;
                        row.text = format!(
                            "WARNING: the Rathaus server proposed removing {} (device {}), \
                             who is still on the roster with that device; refused",
                            self.person(target.user_id()),
                            target.device_id()
                        );
                    } else {
                        row.kind = RowKind::Membership;
                        row.text = format!(
                            "Rathaus server proposed removing {} (device {}): no longer on the \
                             roster, or the device was revoked",
                            self.person(target.user_id()),
                            target.device_id()
                        );
                    }
                    Some(row)
                }
                Incoming::Proposal { sender, kind } => {
                    // Only the server's removals are expected as separate proposals.
                    self.mls.clear_pending_proposals(&gid)?;
                    let mut row = blank_row(group, entry);
                    row.kind = RowKind::Warning;
                    row.text =
                        format!("WARNING: ignored an unexpected proposal {kind:?} from {sender:?}");
                    Some(row)
                }
            };
            Ok(row)
        })();
        let result = result.and_then(|row| {
            let rows: Vec<TimelineRow> = row.into_iter().collect();
            store::append_rows(conn, &handle, &rows, Some(entry.seq))
        });
        finish_savepoint(conn, "rathaus_entry", result)
    }

    /// The row for an entry the engine refused. Our own commit (acknowledged by the server
    /// but not merged before a crash) is merged here instead.
    fn refused_row(
        &self,
        group: &GroupHandle,
        entry: &LogEntry,
        gid: &[u8],
        error: MlsError,
    ) -> Result<TimelineRow> {
        // Only a commit openmls could not process because it is this device's own: the
        // entry's bytes are exactly the staged commit's (the server's sender label alone
        // could make this device merge a commit the log never held, and fork the group).
        let conn = self.mls.connection();
        let own_commit = entry.sender == self.identity.user
            && !matches!(error, MlsError::Refused(_) | MlsError::ExternalAdd { .. })
            && self.mls.has_pending_commit(gid)?
            && matches!(&entry.body, EntryBody::Mls(bytes) if memory::is_staged_commit(conn, gid, bytes)?);
        if own_commit {
            let before = self.mls.members(gid)?;
            if self.mls.merge_pending_commit(gid).is_ok() {
                memory::forget_staged_commit(conn, gid)?;
                let after = self.mls.members(gid)?;
                let (added, removed) = diff(&before, &after);
                return Ok(self
                    .membership_row(
                        group,
                        entry,
                        self.mls.identity().credential_id(),
                        &added,
                        &removed,
                    )
                    .unwrap_or_else(|| blank_row(group, entry)));
            }
        }
        let mut row = blank_row(group, entry);
        match error {
            MlsError::ExternalAdd { .. } => {
                row.kind = RowKind::Warning;
                row.text =
                    "WARNING: refused an attempt by the server to add a member to this group"
                        .to_owned();
            }
            MlsError::Refused(refusal) => {
                // Every honest member refuses the same commit: the group stays at its
                // epoch for all of them.
                row.kind = RowKind::Warning;
                row.text = format!(
                    "WARNING: refused a change of {group} ({refusal}); the group stays at \
                     epoch {}",
                    self.mls.epoch(gid)?
                );
            }
            other => {
                row.kind = RowKind::Undecryptable;
                row.text = format!("(this message could not be decrypted on this device: {other})");
            }
        }
        Ok(row)
    }

    fn application_row(
        &self,
        group: &GroupHandle,
        entry: &LogEntry,
        sender: &DeviceIdentity,
        plaintext: &[u8],
    ) -> TimelineRow {
        let mut row = blank_row(group, entry);
        // The MLS signature says who wrote it; the server's label only supplies the name.
        row.sender = sender.user_id().to_owned();
        row.sender_name = if entry.sender.as_str() == sender.user_id() {
            entry.sender_name.clone()
        } else {
            self.name_of(sender.user_id())
        };
        // Decoding checks the content's rules (`Content` parses through `ContentIn`): a
        // colleague's message that breaks one is shown as not understood, like one in an
        // unknown format.
        match postcard::from_bytes::<Content>(plaintext) {
            Ok(content) => {
                row.kind = RowKind::of(&content);
                row.text = content.summary();
                row.content = Some(content);
            }
            _ => {
                row.kind = RowKind::Undecryptable;
                row.text = "(a message in a format this version does not understand)".to_owned();
            }
        }
        row
    }
}

/// The roster as the server reports it: the users, and their revoked devices.
pub(super) fn roster_of(info: &SecretGroupInfo) -> Roster {
    Roster {
        users: info.roster.clone(),
        revoked: info
            .revoked
            .iter()
            .map(|(user, device)| DeviceCredential {
                user: user.clone(),
                device: *device,
            })
            .collect(),
    }
}
