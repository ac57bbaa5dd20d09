//! Synchronisation: the outbox (send until acknowledged), fetching since each group's
//! cursor, and applying pushed events.

use rand::RngCore;
use rathaus_protocol::{
    ClientMsgId, Content, ContentBody, EntryBody, ErrorCode, Event, GroupHandle, LogEntry,
    PostBody, Request, Response,
};

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::store::{RowKind, TimelineRow};
use crate::time_fmt::now_ms;

/// The server's acknowledgement of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    /// The message's id.
    pub client_id: ClientMsgId,
    /// Its seq in the group.
    pub seq: u64,
    /// Server receive time, Unix milliseconds.
    pub sent_at_ms: i64,
}

/// What became of a message handed to [`Client::send_or_queue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored by the server.
    Sent(SendReceipt),
    /// The server could not be reached: kept in the outbox, sent on the next sync.
    Queued {
        /// The message's id (for `cancel_queued`).
        client_id: ClientMsgId,
    },
}

/// A message in the outbox, not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The message's id.
    pub client_id: ClientMsgId,
    /// The group.
    pub group: String,
    /// What it says (a summary).
    pub text: String,
    /// When it was written, Unix ms.
    pub created_ms: i64,
    /// Whether a send was attempted already (then it may have arrived; it cannot be
    /// withdrawn).
    pub attempted: bool,
}

/// A queued message the server refused for good (it is not retried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    /// The message's id.
    pub client_id: ClientMsgId,
    /// Its group.
    pub group: String,
    /// The server's reason code, if the server refused it.
    pub code: Option<ErrorCode>,
    /// Why, for people.
    pub reason: String,
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Outbox messages delivered.
    pub sent: usize,
    /// Outbox messages the server refused for good.
    pub failed: Vec<SendFailure>,
    /// New timeline entries per group.
    pub fetched: Vec<(String, usize)>,
}

impl Client {
    /// Sends a text message to `group`: queued in the outbox first, so a send that cannot
    /// be delivered now is retried by the next [`sync`](Client::sync).
    pub async fn send_text(&mut self, group: &GroupHandle, text: &str) -> Result<SendReceipt> {
        self.send(group, Content::text(text)).await
    }

    /// Sends content to `group` through the outbox; a server that cannot be reached is
    /// not a failure: the message stays queued and goes out on the next sync (or
    /// `flush_outbox`), and the answer says so.
    pub async fn send_or_queue(
        &mut self,
        group: &GroupHandle,
        content: Content,
    ) -> Result<SendOutcome> {
        let mut queued = None;
        match self.send_inner(group, content, &mut queued).await {
            Ok(receipt) => Ok(SendOutcome::Sent(receipt)),
            Err(e) if e.is_transient() => match queued {
                Some(client_id) => Ok(SendOutcome::Queued { client_id }),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Messages not yet acknowledged by the server, oldest first.
    pub fn outbox(&self) -> Result<Vec<QueuedMessage>> {
        Ok(self
            .store
            .unacknowledged()?
            .into_iter()
            .map(|item| {
                let text = match postcard::from_bytes::<PostBody>(&item.body) {
                    Ok(PostBody::Public(content)) => content.into_recorded().summary(),
                    _ => String::new(),
                };
                QueuedMessage {
                    client_id: item.client_id,
                    group: item.group,
                    text,
                    created_ms: item.created_ms,
                    attempted: item.attempted,
                }
            })
            .collect())
    }

    /// Withdraws a queued message no send was attempted for (`false` if there is none).
    pub fn cancel_queued(&self, client_id: ClientMsgId) -> Result<bool> {
        self.store.cancel_queued(client_id)
    }

    /// Sends content to `group` through the outbox.
    pub async fn send(&mut self, group: &GroupHandle, content: Content) -> Result<SendReceipt> {
        self.send_inner(group, content, &mut None).await
    }

    async fn send_inner(
        &mut self,
        group: &GroupHandle,
        content: Content,
        queued: &mut Option<ClientMsgId>,
    ) -> Result<SendReceipt> {
        content.validate().map_err(|e| ClientError::Refused {
            code: ErrorCode::Invalid,
            message: e.to_string(),
        })?;
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let client_id = ClientMsgId(id);
        let body = postcard::to_allocvec(&PostBody::Public(content.into()))
            .map_err(|e| ClientError::Invalid(format!("cannot encode message: {e}")))?;
        self.store
            .enqueue(client_id, &group.to_string(), &body, now_ms())?;
        *queued = Some(client_id);
        // Older queued messages go first, so order is kept.
        let report = self.flush_outbox().await?;
        if let Some(failure) = report.failed.iter().find(|f| f.client_id == client_id) {
            if failure.code.is_none() && group.is_secret() {
                if let Some(missed) = self.missed_lost_changes(group).await? {
                    return Err(missed);
                }
            }
            return Err(match failure.code {
                Some(code) => ClientError::Server {
                    code,
                    message: failure.reason.clone(),
                },
                None => ClientError::Invalid(failure.reason.clone()),
            });
        }
        self.receipt(client_id)
    }

    /// After a deletion of an own post is stored: lets go of the post's file, so the
    /// server removes it (it keeps it while another post or document refers to it). A
    /// failure leaves the file to moderation or retention and is only logged: the
    /// deletion itself stands.
    async fn release_deleted_file(&mut self, group: &GroupHandle, content: &Content) -> Result<()> {
        let ContentBody::Delete { target } = content.body else {
            return Ok(());
        };
        if self.attachment(group, target)?.is_none() {
            return Ok(());
        }
        if let Err(e) = self.release_attachment(group, target).await {
            tracing::warn!(%group, seq = target, error = %e, "the deleted post's file stays");
        }
        Ok(())
    }

    /// Sends every queued message, oldest first, until one fails transiently.
    pub async fn flush_outbox(&mut self) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        for item in self.store.pending()? {
            let body: PostBody = match postcard::from_bytes(&item.body) {
                Ok(b) => b,
                Err(e) => {
                    let reason = format!("unreadable outbox entry: {e}");
                    self.store.mark_failed(item.client_id, &reason)?;
                    report.failed.push(SendFailure {
                        client_id: item.client_id,
                        group: item.group.clone(),
                        code: None,
                        reason,
                    });
                    continue;
                }
            };
            let group = match GroupHandle::parse(&item.group) {
                Ok(g) => g,
                Err(e) => {
                    self.store.mark_failed(item.client_id, &e.to_string())?;
                    report.failed.push(SendFailure {
                        client_id: item.client_id,
                        group: item.group.clone(),
                        code: None,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            // This device's own record, checked before it was queued (`send_inner`).
            let content = match &body {
                PostBody::Public(c) => Some(c.clone().into_recorded()),
                PostBody::Mls(_) | PostBody::MlsAttachment { .. } => None,
            };
            // Connect first: a message is `sent` (perhaps delivered) only once a request can
            // carry it; until then it stays merely queued and may be withdrawn.
            self.connect().await?;
            self.store.mark_sent(item.client_id)?;
            let response = match (&content, group.is_secret()) {
                // Secret content waits in the outbox as plaintext (it never leaves this
                // device so) and is encrypted for the epoch current at send time, so a
                // retry after a lost epoch re-encrypts (DESIGN §8).
                (Some(content), true) => self.post_secret(&group, item.client_id, content).await,
                _ => {
                    let request = Request::Post {
                        group: group.clone(),
                        client_id: item.client_id,
                        body: body.clone(),
                    };
                    self.request(&request).await
                }
            };
            match response {
                Ok(Response::Posted {
                    seq, sent_at_ms, ..
                }) => {
                    let me = self.identity.user.to_string();
                    let name = self.display_name();
                    let (kind, text) = match &content {
                        Some(c) => (RowKind::of(c), c.summary()),
                        None => (RowKind::Mls, "(encrypted)".to_owned()),
                    };
                    let row = TimelineRow {
                        group: group.to_string(),
                        seq,
                        sender: me,
                        sender_name: name,
                        sent_at_ms,
                        kind,
                        text,
                        expires_at_ms: None,
                        removes: None,
                        content: content.clone(),
                    };
                    if group.is_secret() {
                        self.store.mark_acked_own_mls(item.client_id, &row)?;
                    } else {
                        self.store.mark_acked(item.client_id, &row)?;
                    }
                    // One's own message is not unread; it only moves the read mark when
                    // everything before it was read, so nothing from others is skipped.
                    if self.store.read_mark(&row.group)? + 1 >= seq {
                        self.store.mark_read(&row.group, seq)?;
                    }
                    report.sent += 1;
                    if let Some(content) = &content {
                        self.release_deleted_file(&group, content).await?;
                    }
                }
                Ok(_) => return Err(ClientError::UnexpectedResponse("Post")),
                Err(e)
                    if is_permanent(&e)
                        || matches!(
                            e,
                            ClientError::NotMember(_) | ClientError::MissedChanges(_)
                        ) =>
                {
                    let (code, reason) = match &e {
                        ClientError::Server { code, message } => (Some(*code), message.clone()),
                        other => (None, other.to_string()),
                    };
                    self.store.mark_failed(item.client_id, &reason)?;
                    report.failed.push(SendFailure {
                        client_id: item.client_id,
                        group: item.group.clone(),
                        code,
                        reason,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Sends the outbox, then fetches everything new in every visible group.
    pub async fn sync(&mut self) -> Result<SyncReport> {
        let mut report = self.flush_outbox().await?;
        let groups = self.groups().await?;
        for g in groups {
            if g.handle.is_secret() {
                continue;
            }
            let n = self.fetch_group(&g.handle).await?;
            if n > 0 {
                report.fetched.push((g.handle.to_string(), n));
            }
        }
        report.fetched.extend(self.sync_secret_groups().await?);
        // Own posts a restored server had forgotten went back into the outbox while
        // fetching (crate::restore): they go out now, not at some later sync.
        if !self.store.pending()?.is_empty() {
            let again = self.flush_outbox().await?;
            report.sent += again.sent;
            report.failed.extend(again.failed);
        }
        Ok(report)
    }

    /// Fetches everything after the group's cursor into the timeline; returns how many
    /// entries arrived.
    pub async fn fetch_group(&mut self, group: &GroupHandle) -> Result<usize> {
        let handle = group.to_string();
        let mut total = 0;
        let mut start = None;
        // Bounded: each round advances the cursor or stops.
        for round in 0..100_000 {
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
            let (entries, head) = match self.request(&request).await? {
                Response::Entries { entries, head, .. } => (entries, head),
                _ => return Err(ClientError::UnexpectedResponse("Fetch")),
            };
            if check_fork && self.settle_fork(group, since, &entries, head).await? {
                continue;
            }
            let Some(last) = entries.last().map(|e| e.seq) else {
                break;
            };
            if last <= since {
                break;
            }
            let rows: Vec<TimelineRow> = entries
                .iter()
                .filter(|e| e.seq > since)
                .map(|e| timeline_row(group, e))
                .collect();
            total += rows.len();
            crate::files::remember_entries(self.store.connection(), &handle, &entries)?;
            self.store.append_fetched(&handle, &rows, last)?;
            self.report_catch_up(&handle, start, last, head);
            if last >= head {
                break;
            }
        }
        Ok(total)
    }

    /// Syncs one group, marks it read, and returns its whole local timeline.
    pub async fn read(&mut self, group: &GroupHandle) -> Result<Vec<TimelineRow>> {
        // Deliver our own queued messages first, so the timeline shows them.
        if let Err(e) = self.flush_outbox().await {
            if !e.is_transient() {
                return Err(e);
            }
        }
        if group.is_secret() {
            self.sync_secret_group(group).await?;
        } else {
            self.fetch_group(group).await?;
        }
        let handle = group.to_string();
        let cursor = self.store.cursor(&handle)?;
        self.store.mark_read(&handle, cursor)?;
        self.store.visible_timeline(&handle, now_ms())
    }

    /// The local timeline of `group` as this device holds it, without asking the server
    /// (for showing history while the server is unreachable).
    pub fn read_local(&self, group: &GroupHandle) -> Result<Vec<TimelineRow>> {
        self.store.visible_timeline(&group.to_string(), now_ms())
    }

    /// Applies a pushed event: stores a new entry (fetching any gap before it first).
    /// Returns the timeline rows that became new.
    pub async fn apply_event(&mut self, event: &Event) -> Result<Vec<TimelineRow>> {
        match event {
            Event::Posted { group, .. } if group.is_secret() => {
                self.apply_secret_event(event).await
            }
            Event::SecretGroupsChanged
            | Event::CommitRequested { .. }
            | Event::KeyPackagesLow { .. } => self.apply_secret_event(event).await,
            Event::Posted { group, entry } => {
                let handle = group.to_string();
                let cursor = self.store.cursor(&handle)?;
                if entry.seq <= cursor {
                    return Ok(Vec::new());
                }
                if entry.seq == cursor + 1 {
                    let row = timeline_row(group, entry);
                    crate::files::remember_entries(
                        self.store.connection(),
                        &handle,
                        std::slice::from_ref(entry),
                    )?;
                    self.store
                        .append_fetched(&handle, std::slice::from_ref(&row), entry.seq)?;
                    return Ok(vec![row]);
                }
                // A gap: fetch everything we missed, which includes this entry.
                self.fetch_group(group).await?;
                let rows = self.store.timeline(&handle)?;
                Ok(rows.into_iter().filter(|r| r.seq > cursor).collect())
            }
            _ => Ok(Vec::new()),
        }
    }

    fn display_name(&self) -> String {
        self.conn
            .as_ref()
            .map(|(_, info)| info.name.clone())
            .unwrap_or_else(|| self.identity.user.to_string())
    }

    fn receipt(&self, client_id: ClientMsgId) -> Result<SendReceipt> {
        match self.store.receipt(client_id)? {
            Some((seq, sent_at_ms)) => Ok(SendReceipt {
                client_id,
                seq,
                sent_at_ms,
            }),
            None => Err(ClientError::ConnectionLost(
                "message kept in the outbox; it is sent with the next sync".into(),
            )),
        }
    }
}

/// Errors after which retrying the same post can never succeed.
fn is_permanent(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::Forbidden | ErrorCode::NotFound | ErrorCode::Invalid | ErrorCode::TooLarge)
    )
}

/// Converts a server log entry into a timeline row.
pub(crate) fn timeline_row(group: &GroupHandle, entry: &LogEntry) -> TimelineRow {
    let mut expires_at_ms = None;
    let mut removes = None;
    let mut content = None;
    let (kind, text) = match &entry.body {
        EntryBody::Content(c) => {
            if let ContentBody::Announcement {
                expires_at_ms: e, ..
            } = &c.body
            {
                expires_at_ms = *e;
            }
            content = Some(c.clone());
            (RowKind::of(c), c.summary())
        }
        EntryBody::Mls(_) => (RowKind::Mls, "(encrypted)".to_owned()),
        // Withdrawn by its author (see the server's `retract_post`): a deleted post.
        EntryBody::Removed { by } if *by == entry.sender => (RowKind::Deleted, String::new()),
        EntryBody::Removed { by } => (RowKind::Removed, format!("(removed by moderator {by})")),
        EntryBody::Moderated { target } => {
            removes = Some(*target);
            (
                RowKind::Moderation,
                format!("{} removed post #{target}", entry.sender_name),
            )
        }
    };
    TimelineRow {
        group: group.to_string(),
        seq: entry.seq,
        sender: entry.sender.to_string(),
        sender_name: entry.sender_name.clone(),
        sent_at_ms: entry.sent_at_ms,
        kind,
        text,
        expires_at_ms,
        removes,
        content,
    }
}
