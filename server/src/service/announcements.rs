//! Announcements (DESIGN §6): draft → submitted → approved (published) or rejected;
//! direct publication by editors and administrators; acknowledgements, expiry and pins.
//!
//! A published announcement is ONE entry in the `announcements` log, whose sender is its
//! author — stored once, however many colleagues read it, and pushed like any post. The
//! workflow state lives in an [`AnnouncementRecord`]; the record and the log entry (and
//! the audit record of the editor's decision) are written in one batch.
//!
//! Visibility: published announcements are for everybody; a draft only for its author;
//! submitted and rejected ones for their author and for editors and administrators. An
//! announcement someone may not see is `NotFound` to them, so drafts do not leak.

use std::collections::BTreeSet;
use std::sync::{MutexGuard, PoisonError};

use rathaus_protocol::content::CONTENT_VERSION;
use rathaus_protocol::limits::{MAX_CONTROL_FRAME, MAX_FETCH, MAX_TEXT};
use rathaus_protocol::{
    AnnouncementInfo, AnnouncementState, Content, ContentBody, EntryBody, GroupHandle, Request,
    Response, Role,
};

pub(super) use super::editorial::is_editor;
use super::editorial::{judge_step, Step};
use super::group_log::{server_client_id, Appended};
use super::refused::{AnnouncementRefused, NotFound, SessionRefused};
use super::{Refusal, Service};
use crate::store::{AckRecord, AnnouncementRecord, StoredEntry, UserRecord, Writes};

/// Room in one answer for announcement texts (the rest of the frame is for the fields
/// around them).
const LIST_BUDGET: usize = MAX_CONTROL_FRAME - 128 * 1024;

/// An announcement as drafted or published directly.
#[derive(Debug)]
pub(super) struct AnnouncementProposal {
    /// Headline.
    title: String,
    /// Body text.
    text: String,
    /// Ask colleagues to acknowledge it.
    requires_ack: bool,
    /// Hide it after this time, Unix ms.
    expires_at_ms: Option<i64>,
}

impl Service {
    /// Answers the requests of editors, moderators and administrators: roles,
    /// announcements, moderation, retention and the audit log.
    pub(super) async fn handle_editorial(
        &self,
        me: &UserRecord,
        request: Request,
    ) -> Result<Response, Refusal> {
        match request {
            Request::SetRoles { user, add, remove } => self.set_roles(me, &user, add, remove).await,
            Request::AnnouncementDraft {
                title,
                text,
                requires_ack,
                expires_at_ms,
            } => {
                let proposal = AnnouncementProposal {
                    title,
                    text,
                    requires_ack,
                    expires_at_ms,
                };
                self.announcement_draft(me, proposal).await
            }
            Request::AnnouncementPublish {
                title,
                text,
                requires_ack,
                expires_at_ms,
            } => {
                let proposal = AnnouncementProposal {
                    title,
                    text,
                    requires_ack,
                    expires_at_ms,
                };
                self.announcement_publish(me, proposal).await
            }
            Request::AnnouncementSubmit { id } => self.announcement_submit(me, id).await,
            Request::AnnouncementApprove { id } => self.announcement_approve(me, id).await,
            Request::AnnouncementReject { id, comment } => {
                self.announcement_reject(me, id, comment).await
            }
            Request::AnnouncementAck { id } => self.announcement_ack(me, id).await,
            Request::AnnouncementPin { id, pinned } => self.announcement_pin(me, id, pinned).await,
            Request::Announcements { pending } => self.announcement_list(me, pending),
            Request::RemovePost { group, seq } => self.remove_post(me, group, seq).await,
            Request::AuditLog { since, limit } => self.audit_log(me, since, limit),
            Request::SetRetention { group, days } => self.set_retention(me, group, days).await,
            other => {
                Err(SessionRefused::Unsupported(crate::transport::request_kind(&other)).into())
            }
        }
    }

    /// `Fetch` of `announcements`: like any log, but announcements that expired by now
    /// are left out (pages are filled from later entries, so a run of expired ones never
    /// looks like the end of the log).
    pub(super) fn fetch_announcements(&self, since: u64, limit: u32) -> Result<Response, Refusal> {
        let group = GroupHandle::Announcements;
        let limit = limit.clamp(1, MAX_FETCH) as usize;
        let head = self.head(&group)?;
        if since >= head {
            self.notice_reader_ahead(&group, since)?;
        }
        let now = self.now_ms();
        let mut entries = Vec::new();
        let mut budget = super::groups::FETCH_BUDGET;
        let mut cursor = since;
        'pages: while cursor < head && entries.len() < limit {
            let page = self.db.entries(&group, cursor, limit)?;
            if page.is_empty() {
                break;
            }
            for (seq, entry, size) in page {
                if seq > head {
                    break 'pages;
                }
                cursor = seq;
                if expired_entry(&entry, now) {
                    continue;
                }
                let cost = size + 128;
                if cost > budget && !entries.is_empty() {
                    break 'pages;
                }
                budget = budget.saturating_sub(cost);
                entries.push(entry.to_log_entry(seq));
                if entries.len() >= limit {
                    break 'pages;
                }
            }
        }
        Ok(Response::Entries {
            group,
            entries,
            head,
        })
    }

    async fn announcement_draft(
        &self,
        me: &UserRecord,
        proposal: AnnouncementProposal,
    ) -> Result<Response, Refusal> {
        require_role(
            me,
            &[Role::Author, Role::Editor, Role::Admin],
            AnnouncementRefused::AuthorsOnly,
        )?;
        let mut record = self.new_announcement(me, proposal)?;
        let ticket = {
            let _editorial = self.editorial();
            record.id = self.allocate_announcement_id()?;
            let mut w = Writes::new();
            w.put_announcement(&record)?;
            self.db.apply(w)?;
            self.durability.written()
        };
        self.durable(ticket).await?;
        tracing::info!(id = record.id, by = %me.id, "announcement drafted");
        self.announcement_answer(me, &record)
    }

    async fn announcement_submit(&self, me: &UserRecord, id: u64) -> Result<Response, Refusal> {
        let (record, ticket) = {
            let _editorial = self.editorial();
            let mut record = self.visible_announcement(me, id)?;
            judge_step(me, &record, Step::Submit, self.now_ms())?;
            record.state = AnnouncementState::Submitted;
            let mut w = Writes::new();
            w.put_announcement(&record)?;
            self.db.apply(w)?;
            (record, self.durability.written())
        };
        self.durable(ticket).await?;
        tracing::info!(id, by = %me.id, "announcement submitted");
        self.announcement_answer(me, &record)
    }

    async fn announcement_approve(&self, me: &UserRecord, id: u64) -> Result<Response, Refusal> {
        // Roles first, before anything is looked up (the decision checks them again).
        require_editor(me, "approve announcements")?;
        let (record, appended) = {
            let _editorial = self.editorial();
            let record = self.visible_announcement(me, id)?;
            judge_step(me, &record, Step::Approve, self.now_ms())?;
            self.publish_locked(me, record, "announcement.approve")?
        };
        self.deliver(appended).await?;
        tracing::info!(id, by = %me.id, "announcement approved and published");
        self.announcement_answer(me, &record)
    }

    async fn announcement_publish(
        &self,
        me: &UserRecord,
        proposal: AnnouncementProposal,
    ) -> Result<Response, Refusal> {
        require_editor(
            me,
            "publish announcements directly; authors propose them with `announce draft` \
             and `announce submit`",
        )?;
        let mut record = self.new_announcement(me, proposal)?;
        let (record, appended) = {
            let _editorial = self.editorial();
            record.id = self.allocate_announcement_id()?;
            self.publish_locked(me, record, "announcement.publish")?
        };
        let id = record.id;
        self.deliver(appended).await?;
        tracing::info!(id, by = %me.id, "announcement published");
        self.announcement_answer(me, &record)
    }

    async fn announcement_reject(
        &self,
        me: &UserRecord,
        id: u64,
        comment: String,
    ) -> Result<Response, Refusal> {
        require_editor(me, "reject announcements")?;
        let comment = comment.trim().to_owned();
        if comment.is_empty() || comment.len() > MAX_TEXT {
            return Err(AnnouncementRefused::RejectionComment.into());
        }
        let (record, ticket) = {
            let _editorial = self.editorial();
            let mut record = self.visible_announcement(me, id)?;
            judge_step(me, &record, Step::Reject, self.now_ms())?;
            record.state = AnnouncementState::Rejected {
                by: me.id.clone(),
                comment: comment.clone(),
            };
            let mut w = Writes::new();
            w.put_announcement(&record)?;
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                self.now_ms(),
                &me.id,
                "announcement.reject",
                format!("announcement#{id}"),
                format!("{:?} by {}: {comment}", record.title, record.author),
            )?;
            self.db.apply(w)?;
            audit.commit();
            (record, self.durability.written())
        };
        self.durable(ticket).await?;
        tracing::info!(id, by = %me.id, "announcement rejected");
        self.announcement_answer(me, &record)
    }

    async fn announcement_ack(&self, me: &UserRecord, id: u64) -> Result<Response, Refusal> {
        let (record, ticket) = {
            let _editorial = self.editorial();
            let record = self.visible_announcement(me, id)?;
            judge_step(me, &record, Step::Acknowledge, self.now_ms())?;
            let ticket = if self.db.acked(id, &me.id)? {
                // Acknowledging twice changes nothing.
                self.durability.latest()
            } else {
                let mut w = Writes::new();
                w.put_ack(
                    id,
                    &AckRecord {
                        user: me.id.clone(),
                        at_ms: self.now_ms(),
                    },
                )?;
                self.db.apply(w)?;
                self.durability.written()
            };
            (record, ticket)
        };
        self.durable(ticket).await?;
        self.announcement_answer(me, &record)
    }

    async fn announcement_pin(
        &self,
        me: &UserRecord,
        id: u64,
        pinned: bool,
    ) -> Result<Response, Refusal> {
        require_editor(me, "pin announcements")?;
        let (record, ticket) = {
            let _editorial = self.editorial();
            let mut record = self.visible_announcement(me, id)?;
            judge_step(me, &record, Step::Pin, self.now_ms())?;
            if record.pinned == pinned {
                (record, self.durability.latest())
            } else {
                record.pinned = pinned;
                let mut w = Writes::new();
                w.put_announcement(&record)?;
                let mut audit = self.audit()?;
                audit.record(
                    &mut w,
                    self.now_ms(),
                    &me.id,
                    if pinned {
                        "announcement.pin"
                    } else {
                        "announcement.unpin"
                    },
                    format!("announcement#{id}"),
                    format!("{:?}", record.title),
                )?;
                self.db.apply(w)?;
                audit.commit();
                (record, self.durability.written())
            }
        };
        self.durable(ticket).await?;
        self.announcement_answer(me, &record)
    }

    fn announcement_list(&self, me: &UserRecord, pending: bool) -> Result<Response, Refusal> {
        let now = self.now_ms();
        let editor = is_editor(me);
        let mut records: Vec<AnnouncementRecord> = self
            .db
            .announcements()?
            .into_iter()
            .filter(|a| {
                if pending {
                    a.state != AnnouncementState::Published
                        && (a.author == me.id
                            || (editor && a.state == AnnouncementState::Submitted))
                } else {
                    a.state == AnnouncementState::Published && !a.expired(now)
                }
            })
            .collect();
        if pending {
            records.sort_by_key(|a| a.id);
        } else {
            // Pinned first, then newest first.
            records.sort_by_key(|a| (!a.pinned, std::cmp::Reverse(a.seq)));
        }
        let mut budget = LIST_BUDGET;
        let mut list = Vec::new();
        for record in &records {
            let cost = record.title.len() + record.text.len() + 1024;
            if cost > budget {
                break;
            }
            budget -= cost;
            list.push(self.announcement_info(me, record)?);
        }
        Ok(Response::Announcements(list))
    }

    /// Validates a proposal and makes its record (a draft, with a fresh id).
    fn new_announcement(
        &self,
        me: &UserRecord,
        proposal: AnnouncementProposal,
    ) -> Result<AnnouncementRecord, Refusal> {
        let now = self.now_ms();
        if proposal.expires_at_ms.is_some_and(|e| e <= now) {
            return Err(AnnouncementRefused::ExpiryPast.into());
        }
        let record = AnnouncementRecord {
            // Allocated under the editorial lock when stored.
            id: 0,
            author: me.id.clone(),
            author_name: me.name.clone(),
            title: proposal.title.trim().to_owned(),
            text: proposal.text,
            requires_ack: proposal.requires_ack,
            expires_at_ms: proposal.expires_at_ms,
            state: AnnouncementState::Draft,
            pinned: false,
            seq: None,
            created_ms: now,
        };
        announcement_content(&record)
            .validate()
            .map_err(|e| AnnouncementRefused::Content(e.to_string()))?;
        Ok(record)
    }

    /// The next announcement id: small numbers, since people type them
    /// (`announce ack 7`). The caller holds the editorial lock. The counter is written
    /// ahead of the record that uses the id, so a crash can skip an id but never reuse it.
    fn allocate_announcement_id(&self) -> Result<u64, Refusal> {
        let id = self.db.last_announcement_id()? + 1;
        let mut w = Writes::new();
        w.put_last_announcement_id(id)?;
        self.db.apply(w)?;
        Ok(id)
    }

    /// Appends the announcement to `announcements` and stores it as published, with the
    /// audit record, in one batch. The caller holds the editorial lock and then delivers.
    fn publish_locked(
        &self,
        me: &UserRecord,
        mut record: AnnouncementRecord,
        action: &str,
    ) -> Result<(AnnouncementRecord, Appended), Refusal> {
        let now = self.now_ms();
        let appended = self.append_entry(&GroupHandle::Announcements, |seq| {
            let mut published = record.clone();
            published.state = AnnouncementState::Published;
            published.seq = Some(seq);
            let entry = StoredEntry {
                sender: published.author.clone(),
                sender_name: published.author_name.clone(),
                sent_at_ms: now,
                client_id: server_client_id(),
                body: EntryBody::Content(announcement_content(&published)),
            };
            let mut w = Writes::new();
            w.put_announcement(&published)?;
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                now,
                &me.id,
                action,
                format!("announcement#{}", published.id),
                format!(
                    "{:?} by {}, published as announcements#{seq}",
                    published.title, published.author
                ),
            )?;
            Ok((entry, w, audit))
        })?;
        record.state = AnnouncementState::Published;
        record.seq = Some(appended.seq);
        Ok((record, appended))
    }

    /// The announcement, if `me` may see it; `NotFound` otherwise.
    fn visible_announcement(
        &self,
        me: &UserRecord,
        id: u64,
    ) -> Result<AnnouncementRecord, Refusal> {
        self.db
            .announcement(id)?
            .filter(|a| match a.state {
                AnnouncementState::Published => true,
                AnnouncementState::Draft => a.author == me.id,
                AnnouncementState::Submitted | AnnouncementState::Rejected { .. } => {
                    a.author == me.id || is_editor(me)
                }
            })
            .ok_or_else(|| Refusal::from(NotFound::Announcement(id)))
    }

    fn announcement_answer(
        &self,
        me: &UserRecord,
        record: &AnnouncementRecord,
    ) -> Result<Response, Refusal> {
        Ok(Response::Announcement(self.announcement_info(me, record)?))
    }

    fn announcement_info(
        &self,
        me: &UserRecord,
        a: &AnnouncementRecord,
    ) -> Result<AnnouncementInfo, Refusal> {
        let acks = if a.state == AnnouncementState::Published && a.requires_ack {
            self.db.acks(a.id)?
        } else {
            Vec::new()
        };
        let acked_by_me = acks.iter().any(|k| k.user == me.id);
        let acked_by = if is_editor(me) {
            acks.iter()
                .map(|k| k.user.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        Ok(AnnouncementInfo {
            id: a.id,
            author: a.author.clone(),
            author_name: a.author_name.clone(),
            title: a.title.clone(),
            text: a.text.clone(),
            state: a.state.clone(),
            requires_ack: a.requires_ack,
            expires_at_ms: a.expires_at_ms,
            pinned: a.pinned,
            seq: a.seq,
            created_at_ms: a.created_ms,
            acks: u32::try_from(acks.len()).unwrap_or(u32::MAX),
            acked_by,
            acked_by_me,
        })
    }

    /// Held across read-modify-write of announcements (and retention of
    /// `announcements`); taken before the log lock.
    pub(super) fn editorial(&self) -> MutexGuard<'_, ()> {
        self.editorial
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// `Forbidden` unless `me` has one of `roles`.
fn require_role(
    me: &UserRecord,
    roles: &[Role],
    refusal: AnnouncementRefused,
) -> Result<(), Refusal> {
    if roles.iter().any(|r| me.has_role(*r)) {
        return Ok(());
    }
    Err(refusal.into())
}

fn require_editor(me: &UserRecord, what: &'static str) -> Result<(), Refusal> {
    require_role(
        me,
        &[Role::Editor, Role::Admin],
        AnnouncementRefused::EditorsOnly(what),
    )
}

fn announcement_content(a: &AnnouncementRecord) -> Content {
    Content {
        version: CONTENT_VERSION,
        body: ContentBody::Announcement {
            id: a.id,
            title: a.title.clone(),
            text: a.text.clone(),
            requires_ack: a.requires_ack,
            expires_at_ms: a.expires_at_ms,
        },
        mentions: Vec::new(),
    }
}

/// An announcement entry whose expiry has passed.
fn expired_entry(entry: &StoredEntry, now_ms: i64) -> bool {
    matches!(
        &entry.body,
        EntryBody::Content(Content {
            body: ContentBody::Announcement {
                expires_at_ms: Some(e),
                ..
            },
            ..
        }) if *e <= now_ms
    )
}
