//! Fetching a secret group's log and processing its entries in seq order with the MLS
//! engine, each entry's MLS state, rows and cursor stored together.

use rathaus_protocol::{
    Content, EntryBody, ErrorCode, GroupHandle, LogEntry, Request, Response, UserId,
};

use super::rows::{blank_row, diff};
use super::{finish, finish_savepoint, mls_group_id, SERVER_SENDER};
use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::mls::{
    is_application_message, DeviceIdentity, Incoming, MlsError, ProposalKind, ProposalSender,
};
use crate::store::{self, TimelineRow};

/// Context while processing a batch of log entries.
#[derive(Default)]
struct Batch {
    /// The roster as the server reports it now; fetched when a server proposal is in the
    /// batch.
    roster: Option<Vec<UserId>>,
}

impl Client {
    /// Fetches and processes the group's log after the cursor, in seq order.
    pub(super) async fn fetch_secret_log(&mut self, group: &GroupHandle) -> Result<()> {
        let handle = group.to_string();
        let gid = mls_group_id(group);
        let mut learned_names = false;
        // Bounded: each round advances the cursor or stops.
        for _ in 0..100_000 {
            if !self.mls.has_group(&gid)? {
                return Ok(());
            }
            let since = self.store.cursor(&handle)?;
            let request = Request::Fetch {
                group: group.clone(),
                since,
                limit: rathaus_protocol::limits::MAX_FETCH,
            };
            let (entries, head) = match self.request(&request).await {
                Ok(Response::Entries { entries, head, .. }) => (entries, head),
                Ok(_) => return Err(ClientError::UnexpectedResponse("Fetch")),
                // Removed from the group: the server no longer delivers it.
                Err(e) if e.code() == Some(ErrorCode::Forbidden) => return Ok(()),
                Err(e) => return Err(e),
            };
            let Some(last) = entries.last().map(|e| e.seq) else {
                break;
            };
            if last <= since {
                break;
            }
            let mut batch = Batch::default();
            if entries.iter().any(|e| e.sender.as_str() == SERVER_SENDER) {
                batch.roster = Some(self.secret_info(group).await?.roster);
            }
            if !learned_names && entries.iter().any(|e| e.sender.as_str() != SERVER_SENDER) {
                self.learn_names(group).await?;
                learned_names = true;
            }
            // One SQLite transaction (one fsync) for the whole page instead of one per
            // entry: each entry still runs in its own savepoint, and its MLS state, rows
            // and the cursor become durable together with the rest of the page. A crash
            // before the commit loses the page's processing, not the entries, which are
            // fetched again.
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
            let result = entries
                .iter()
                .filter(|entry| entry.seq > since)
                .try_for_each(|entry| self.process_entry(group, entry, &batch));
            finish(conn, result)?;
            if last >= head {
                break;
            }
        }
        self.pin_group_keys(group)
    }

    /// Processes one log entry and stores its rows and the cursor in one transaction.
    fn process_entry(&self, group: &GroupHandle, entry: &LogEntry, batch: &Batch) -> Result<()> {
        let handle = group.to_string();
        let gid = mls_group_id(group);
        if self.store.is_own_entry(&handle, entry.seq)? {
            let conn = self.mls.connection();
            return store::append_rows(conn, &handle, &[], Some(entry.seq));
        }
        let EntryBody::Mls(bytes) = &entry.body else {
            let conn = self.mls.connection();
            return store::append_rows(conn, &handle, &[], Some(entry.seq));
        };
        // What a commit is checked and described against: the policy and members before
        // it. Not needed for application messages, most of a log, and listing the members
        // of a large group for every message costs more than decrypting it.
        let before = if is_application_message(bytes) {
            None
        } else {
            Some((self.policy(&gid)?, self.mls.members(&gid)?))
        };
        let conn = self.mls.connection();
        // A savepoint: inside the caller's transaction for a page of entries, or a
        // transaction of its own.
        conn.execute_batch("SAVEPOINT rathaus_entry")?;
        let result = (|| -> Result<Option<TimelineRow>> {
            let incoming = match self.mls.process_message(bytes) {
                Ok(incoming) => incoming,
                Err(MlsError::Storage(e)) => return Err(e.into()),
                Err(e) => return Ok(Some(self.refused_row(group, entry, &gid, e)?)),
            };
            let row = match incoming {
                Incoming::Application { sender, plaintext } => {
                    Some(self.application_row(group, entry, &sender, &plaintext))
                }
                Incoming::Commit(summary) => {
                    // A message whose header says "application" decrypts to application
                    // content only (openmls parses the content by that header), so a
                    // commit always comes with its snapshot.
                    let Some((policy_before, members_before)) = &before else {
                        return Err(MlsError::protocol(
                            "process commit",
                            "a commit labelled as an application message",
                        )
                        .into());
                    };
                    let committer = summary.committer.user_id().to_owned();
                    let added_without_right = !summary.added.is_empty()
                        && !policy_before.is_owner(&committer)
                        && !policy_before.auto_admit;
                    let removed: Vec<_> = members_before
                        .iter()
                        .filter(|m| summary.removed.contains(&m.identity))
                        .cloned()
                        .collect();
                    let after = if summary.self_removed {
                        Vec::new()
                    } else {
                        self.mls.members(&gid)?
                    };
                    let added: Vec<_> = after
                        .iter()
                        .filter(|m| summary.added.contains(&m.identity))
                        .cloned()
                        .collect();
                    let mut row = self.membership_row(group, entry, &committer, &added, &removed);
                    if let Some(update) = &summary.policy_update {
                        row = Some(self.policy_update_row(
                            group,
                            entry,
                            &gid,
                            &committer,
                            policy_before,
                            update.as_deref(),
                            row,
                        )?);
                    }
                    if summary.self_removed {
                        row.get_or_insert_with(|| blank_row(group, entry)).text = format!(
                            "{} removed this device from {group}",
                            self.name_of(&committer)
                        );
                    }
                    if added_without_right {
                        let mut warning = row.unwrap_or_else(|| blank_row(group, entry));
                        warning.kind = "warning".to_owned();
                        warning.text = format!(
                            "WARNING: {} is not an owner of {group} but added members: {}",
                            self.name_of(&committer),
                            warning.text
                        );
                        row = Some(warning);
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
                        .is_none_or(|r| r.iter().any(|u| u.as_str() == target.user_id()));
                    let mut row = blank_row(group, entry);
                    row.sender = SERVER_SENDER.to_owned();
                    row.sender_name = "Rathaus server".to_owned();
                    if still_rostered {
                        self.mls.clear_pending_proposals(&gid)?;
                        row.kind = "warning".to_owned();
                        row.text = format!(
                            "WARNING: the Rathaus server proposed removing {} (device {}), \
                             who is still on the roster; refused",
                            self.name_of(target.user_id()),
                            target.device_id()
                        );
                    } else {
                        row.kind = "membership".to_owned();
                        row.text = format!(
                            "Rathaus server proposed removing {} (device {}): no longer on the \
                             roster",
                            self.name_of(target.user_id()),
                            target.device_id()
                        );
                    }
                    Some(row)
                }
                Incoming::Proposal { sender, kind } => {
                    // Only the server's removals are expected as separate proposals.
                    self.mls.clear_pending_proposals(&gid)?;
                    let mut row = blank_row(group, entry);
                    row.kind = "warning".to_owned();
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
        if entry.sender == self.identity.user {
            let before = self.mls.members(gid)?;
            if self.mls.merge_pending_commit(gid).is_ok() {
                let after = self.mls.members(gid)?;
                let (added, removed) = diff(&before, &after);
                return Ok(self
                    .membership_row(group, entry, self.identity.user.as_str(), &added, &removed)
                    .unwrap_or_else(|| blank_row(group, entry)));
            }
        }
        let mut row = blank_row(group, entry);
        match error {
            MlsError::ExternalAdd { committer } => {
                row.kind = "warning".to_owned();
                row.text = match committer {
                    None => "WARNING: refused an attempt by the server to add a member to this \
                             group"
                        .to_owned(),
                    Some(c) => format!(
                        "WARNING: refused a commit by {} that adds a member on the server's \
                         behalf",
                        self.name_of(c.user_id())
                    ),
                };
            }
            other => {
                row.kind = "undecryptable".to_owned();
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
        match postcard::from_bytes::<Content>(plaintext) {
            Ok(content) if content.validate().is_ok() => {
                row.kind = content.kind().to_owned();
                row.text = content.summary();
            }
            _ => {
                row.kind = "undecryptable".to_owned();
                row.text = "(a message in a format this version does not understand)".to_owned();
            }
        }
        row
    }
}
