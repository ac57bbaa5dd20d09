//! Moderation of public department groups: a department's owners and administrators
//! remove a post.
//!
//! The post's stored body is replaced by a tombstone ([`EntryBody::Removed`]) — its text,
//! and the text of every edit its author made to it, are gone from the server's records —
//! and a [`EntryBody::Moderated`] entry is appended so clients that hold the post locally
//! replace it too. Both, and the audit record, are one atomic batch.

use rathaus_protocol::{EntryBody, GroupHandle, Response, Role};

use super::group_log::server_client_id;
use super::refused::{NotFound, PostRefused};
use super::{Refusal, Service};
use crate::store::{StoredEntry, UserRecord, Writes};

impl Service {
    pub(super) async fn remove_post(
        &self,
        me: &UserRecord,
        group: GroupHandle,
        seq: u64,
    ) -> Result<Response, Refusal> {
        let dept = match &group {
            GroupHandle::Public(slug) => self
                .db
                .department(slug)?
                .ok_or_else(|| NotFound::Group(group.clone()))?,
            GroupHandle::Secret(_) | GroupHandle::Room(_) => {
                return Err(PostRefused::ModerateSecret.into())
            }
            GroupHandle::Announcements => return Err(PostRefused::ModerateAnnouncements.into()),
        };
        if !(me.has_role(Role::Admin) || dept.owners.contains(&me.id)) {
            return Err(PostRefused::NotModerator(group).into());
        }
        let now = self.now_ms();
        let mut orphans = Vec::new();
        let appended = self.append_entry(&group, |_| {
            let not_found = || NotFound::Post {
                group: group.clone(),
                seq,
            };
            let target = self.db.entry(&group, seq)?.ok_or_else(not_found)?;
            match &target.body {
                EntryBody::Content(_) => {}
                EntryBody::Removed { .. } => {
                    return Err(PostRefused::RemovedAlready {
                        group: group.clone(),
                        seq,
                    }
                    .into())
                }
                EntryBody::Moderated { .. } | EntryBody::Mls(_) => return Err(not_found().into()),
            }
            let author = target.sender.clone();
            let tombstone = EntryBody::Removed { by: me.id.clone() };
            let mut w = Writes::new();
            let edits = self.retract_post(&group, seq, &tombstone, &tombstone, &mut w)?;
            // The post's file goes with it (unless another post or document keeps it).
            let mut changes = super::blobs::BlobChanges::default();
            changes.drop_post(self, &mut w, &group, seq)?;
            orphans = changes.write(&mut w)?;
            let note = StoredEntry {
                sender: me.id.clone(),
                sender_name: me.name.clone(),
                sent_at_ms: now,
                client_id: server_client_id(),
                body: EntryBody::Moderated { target: seq },
            };
            let mut audit = self.audit()?;
            let detail = if edits == 0 {
                format!("post by {author}")
            } else {
                format!("post by {author} and {edits} edits of it")
            };
            audit.record(
                &mut w,
                now,
                &me.id,
                "post.remove",
                format!("{group}#{seq}"),
                detail,
            )?;
            Ok((note, w, audit))
        })?;
        self.deliver(appended).await?;
        self.remove_unreferenced(&orphans);
        tracing::info!(%group, seq, by = %me.id, "post removed by moderator");
        Ok(Response::Done)
    }
}
