//! Announcements, roles, moderation, retention and the audit log: the requests of
//! editors, moderators and admins.

use rathaus_protocol::audit::{verify_chain, BrokenLink};
use rathaus_protocol::{
    AnnouncementInfo, AuditEntry, GroupHandle, Request, Response, Role, UserId, UserSummary,
};

use crate::client::Client;
use crate::error::{ClientError, Result};

/// A new announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncementDraft {
    /// Headline.
    pub title: String,
    /// Body text.
    pub text: String,
    /// Ask colleagues to confirm they have read it.
    pub requires_ack: bool,
    /// Hide it after this time, Unix milliseconds.
    pub expires_at_ms: Option<i64>,
}

impl Client {
    /// Writes a draft (authors, editors, admins).
    pub async fn announce_draft(&mut self, draft: AnnouncementDraft) -> Result<AnnouncementInfo> {
        self.announcement(Request::AnnouncementDraft {
            title: draft.title,
            text: draft.text,
            requires_ack: draft.requires_ack,
            expires_at_ms: draft.expires_at_ms,
        })
        .await
    }

    /// Publishes directly (editors, admins).
    pub async fn announce_publish(&mut self, draft: AnnouncementDraft) -> Result<AnnouncementInfo> {
        self.announcement(Request::AnnouncementPublish {
            title: draft.title,
            text: draft.text,
            requires_ack: draft.requires_ack,
            expires_at_ms: draft.expires_at_ms,
        })
        .await
    }

    /// Hands an own draft to the editors.
    pub async fn announce_submit(&mut self, id: u64) -> Result<AnnouncementInfo> {
        self.announcement(Request::AnnouncementSubmit { id }).await
    }

    /// Approves a submitted draft (editors).
    pub async fn announce_approve(&mut self, id: u64) -> Result<AnnouncementInfo> {
        self.announcement(Request::AnnouncementApprove { id }).await
    }

    /// Rejects a submitted draft with a comment for the author (editors).
    pub async fn announce_reject(&mut self, id: u64, comment: &str) -> Result<AnnouncementInfo> {
        self.announcement(Request::AnnouncementReject {
            id,
            comment: comment.to_owned(),
        })
        .await
    }

    /// Acknowledges a published announcement.
    pub async fn announce_ack(&mut self, id: u64) -> Result<AnnouncementInfo> {
        self.announcement(Request::AnnouncementAck { id }).await
    }

    /// Pins or unpins a published announcement (editors).
    pub async fn announce_pin(&mut self, id: u64, pinned: bool) -> Result<AnnouncementInfo> {
        self.announcement(Request::AnnouncementPin { id, pinned })
            .await
    }

    /// Published, unexpired announcements; with `pending`, the drafts and submissions this
    /// user may see (own drafts; all submissions for editors).
    pub async fn announcements(&mut self, pending: bool) -> Result<Vec<AnnouncementInfo>> {
        match self.request(&Request::Announcements { pending }).await? {
            Response::Announcements(list) => Ok(list),
            _ => Err(ClientError::UnexpectedResponse("Announcements")),
        }
    }

    /// Admin: grants and revokes roles.
    pub async fn admin_set_roles(
        &mut self,
        user: UserId,
        add: Vec<Role>,
        remove: Vec<Role>,
    ) -> Result<UserSummary> {
        match self
            .request(&Request::SetRoles { user, add, remove })
            .await?
        {
            Response::User(u) => Ok(u),
            _ => Err(ClientError::UnexpectedResponse("SetRoles")),
        }
    }

    /// Owner/admin: removes a post from a public group, leaving a tombstone.
    pub async fn remove_post(&mut self, group: &GroupHandle, seq: u64) -> Result<()> {
        match self
            .request(&Request::RemovePost {
                group: group.clone(),
                seq,
            })
            .await?
        {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse("RemovePost")),
        }
    }

    /// Admin: sets how many days a public group or `announcements` keeps its entries.
    pub async fn admin_set_retention(
        &mut self,
        group: &GroupHandle,
        days: Option<u32>,
    ) -> Result<()> {
        match self
            .request(&Request::SetRetention {
                group: group.clone(),
                days,
            })
            .await?
        {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse("SetRetention")),
        }
    }

    /// Admin: the whole audit log, oldest first.
    pub async fn admin_audit(&mut self) -> Result<Vec<AuditEntry>> {
        let mut all: Vec<AuditEntry> = Vec::new();
        // Bounded: every round either grows `all` or stops.
        for _ in 0..1_000_000 {
            let since = all.last().map_or(0, |e| e.index + 1);
            let (entries, total) = match self
                .request(&Request::AuditLog { since, limit: 1000 })
                .await?
            {
                Response::Audit { entries, total } => (entries, total),
                _ => return Err(ClientError::UnexpectedResponse("AuditLog")),
            };
            if entries.is_empty() {
                break;
            }
            all.extend(entries);
            if all.len() as u64 >= total {
                break;
            }
        }
        Ok(all)
    }

    /// Admin: downloads the audit log and checks its hash chain.
    pub async fn admin_audit_verify(&mut self) -> Result<(Vec<AuditEntry>, Option<BrokenLink>)> {
        let entries = self.admin_audit().await?;
        let broken = verify_chain(None, &entries).err();
        Ok((entries, broken))
    }

    async fn announcement(&mut self, request: Request) -> Result<AnnouncementInfo> {
        match self.request(&request).await? {
            Response::Announcement(a) => Ok(a),
            _ => Err(ClientError::UnexpectedResponse("announcement request")),
        }
    }
}
