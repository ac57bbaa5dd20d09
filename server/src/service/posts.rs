//! Posts that change other posts in public groups: edits, deletes and reactions.
//!
//! The server reads public groups, so it enforces the rules here: only a post's author
//! edits or deletes it (anyone else is refused with `Forbidden` and nothing is stored),
//! and every change names a post that exists and was not withdrawn. (In secret groups the
//! server sees only ciphertext; every member's client applies the same rules there.)
//!
//! A delete takes the post's text off the server as moderation does (see
//! [`Service::retract_post`]): the post and every edit of it become tombstones in the
//! same atomic batch that appends the delete, so no reader ever sees the text again.
//!
//! Where a public post's text changes or leaves the server (for a search index to
//! follow): an edit is stored in [`Service::post_change`]'s edit branch, a delete or a
//! moderator's removal goes through [`Service::retract_post`].

use rathaus_protocol::{ContentBody, EntryBody, GroupHandle, Response, UserId};

use super::group_log::Built;
use super::refused::{NotFound, PostRefused};
use super::{Refusal, Service};
use crate::store::{StoredEntry, Writes};

/// Edits one post may have: each is a row its delete rewrites in one batch.
pub(super) const MAX_EDITS: usize = 100;

/// What a public post's change does to the post it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// A new text, by the author.
    Edit,
    /// The post withdrawn, by the author.
    Delete,
    /// A reaction, by anyone who may read the group.
    Reaction,
}

impl Service {
    /// Stores an edit, delete or reaction of a public group after checking it against
    /// the post it names; `None` if `entry` is a post of its own (stored as any post).
    pub(super) async fn post_change(
        &self,
        group: &GroupHandle,
        entry: &StoredEntry,
    ) -> Option<Result<Response, Refusal>> {
        let EntryBody::Content(content) = &entry.body else {
            return None;
        };
        let (change, target) = match &content.body {
            ContentBody::Edit { target, .. } => (Change::Edit, *target),
            ContentBody::Delete { target } => (Change::Delete, *target),
            ContentBody::Reaction { target, .. } => (Change::Reaction, *target),
            ContentBody::Text {
                reply_to: Some(to), ..
            } => {
                // A reply names a post of the same group that exists.
                let to = *to;
                return match self.db.entry(group, to) {
                    Ok(Some(e)) if is_post(&e.body) => None,
                    Ok(_) => Some(Err(NotFound::ReplyTarget {
                        group: group.clone(),
                        seq: to,
                    }
                    .into())),
                    Err(e) => Some(Err(e.into())),
                };
            }
            _ => return None,
        };
        Some(
            self.store_change(group, entry.clone(), change, target)
                .await,
        )
    }

    async fn store_change(
        &self,
        group: &GroupHandle,
        entry: StoredEntry,
        change: Change,
        target: u64,
    ) -> Result<Response, Refusal> {
        if change == Change::Reaction {
            // A reaction changes no stored text: checked, then stored like any post (a
            // post deleted meanwhile keeps an unseen reaction, which readers ignore).
            self.changeable(group, &entry, change, target)?;
            return self.append_post(group, entry, None).await;
        }
        // Edits and deletes are checked and stored under the log lock, so an edit never
        // lands behind the delete of its post (which would keep its text on the server).
        let mut duplicate = None;
        let sent_at_ms = entry.sent_at_ms;
        let appended = self.append_entry(group, |_| -> Result<Built<'_>, Refusal> {
            if let Some(seq) = self
                .db
                .deduplicated(group, &entry.sender, &entry.client_id)?
            {
                duplicate = Some(seq);
                return Err(Refusal::internal("duplicate"));
            }
            self.changeable(group, &entry, change, target)?;
            if change == Change::Edit
                && self.db.edits_of(group, target, MAX_EDITS)?.len() >= MAX_EDITS
            {
                return Err(PostRefused::TooManyEdits {
                    group: group.clone(),
                    seq: target,
                    max: MAX_EDITS,
                }
                .into());
            }
            let mut w = Writes::new();
            if change == Change::Delete {
                let tombstone = EntryBody::Removed {
                    by: entry.sender.clone(),
                };
                let edit_tombstone = EntryBody::Content(rathaus_protocol::Content::delete(target));
                self.retract_post(group, target, &tombstone, &edit_tombstone, &mut w)?;
            }
            Ok((entry, w, self.audit()?))
        });
        let appended = match (appended, duplicate) {
            (_, Some(seq)) => {
                // A retry of a change stored before: answered as the original was.
                let sent_at = self
                    .db
                    .entries(group, seq - 1, 1)?
                    .first()
                    .map_or(sent_at_ms, |(_, e, _)| e.sent_at_ms);
                return Ok(Response::Posted {
                    seq,
                    sent_at_ms: sent_at,
                    duplicate: true,
                });
            }
            (result, None) => result?,
        };
        let seq = self.deliver(appended).await?;
        tracing::debug!(%group, seq, target, ?change, "post changed");
        Ok(Response::Posted {
            seq,
            sent_at_ms,
            duplicate: false,
        })
    }

    /// The one place a public post's text leaves the server: the post `seq` becomes
    /// `tombstone`, and every edit of it `edit_tombstone`, in `w`. Moderation and an
    /// author's delete both come here (and so would a search index that must forget
    /// the text). Returns how many edits were withdrawn with it.
    pub(super) fn retract_post(
        &self,
        group: &GroupHandle,
        seq: u64,
        tombstone: &EntryBody,
        edit_tombstone: &EntryBody,
        w: &mut Writes,
    ) -> Result<usize, Refusal> {
        let not_found = || NotFound::Post {
            group: group.clone(),
            seq,
        };
        let mut target = self.db.entry(group, seq)?.ok_or_else(not_found)?;
        target.body = tombstone.clone();
        w.replace_entry(group, seq, &target)?;
        let mut edits = 0usize;
        // The edit index names them (at most MAX_EDITS, more only from before the cap).
        for s in self.db.edits_of(group, seq, usize::MAX)? {
            match self.db.entry(group, s)? {
                Some(mut entry) if is_edit_of(&entry, seq) => {
                    entry.body = edit_tombstone.clone();
                    w.replace_entry(group, s, &entry)?;
                    edits += 1;
                }
                // Aged out by retention meanwhile, or a tombstone already.
                _ => {}
            }
        }
        Ok(edits)
    }

    /// Checks that `entry` (by its sender) may make `change` to the post `target`.
    fn changeable(
        &self,
        group: &GroupHandle,
        entry: &StoredEntry,
        change: Change,
        target: u64,
    ) -> Result<(), Refusal> {
        let post = match group {
            GroupHandle::Announcements => None,
            _ => self.db.entry(group, target)?,
        };
        judge_change(group, target, post.as_ref(), change, &entry.sender)
    }
}

/// Whether `sender` may make `change` to post `target` of `group`, which the log holds
/// as `post`: a post of a public group that is still there, edited or deleted by its
/// author only (anyone may react). Announcements change through the editorial workflow.
fn judge_change(
    group: &GroupHandle,
    target: u64,
    post: Option<&StoredEntry>,
    change: Change,
    sender: &UserId,
) -> Result<(), Refusal> {
    if *group == GroupHandle::Announcements {
        return Err(PostRefused::AnnouncementChange.into());
    }
    let post = post.ok_or_else(|| NotFound::Post {
        group: group.clone(),
        seq: target,
    })?;
    match &post.body {
        body if is_post(body) => {}
        EntryBody::Removed { .. } => {
            return Err(PostRefused::Deleted {
                group: group.clone(),
                seq: target,
            }
            .into())
        }
        _ => {
            return Err(PostRefused::NotAPost {
                group: group.clone(),
                seq: target,
            }
            .into())
        }
    }
    if change != Change::Reaction && post.sender != *sender {
        let verb = if change == Change::Edit {
            "edit"
        } else {
            "delete"
        };
        return Err(PostRefused::NotAuthor {
            verb,
            group: group.clone(),
            seq: target,
            author: post.sender.clone(),
        }
        .into());
    }
    Ok(())
}

/// Whether a log entry is a post (text or file) that replies, changes and reactions may
/// name.
fn is_post(body: &EntryBody) -> bool {
    matches!(body, EntryBody::Content(c)
        if matches!(c.body, ContentBody::Text { .. } | ContentBody::Attachment { .. }))
}

/// Whether `entry` is an edit of the post `seq`.
pub(super) fn is_edit_of(entry: &StoredEntry, seq: u64) -> bool {
    matches!(&entry.body, EntryBody::Content(c) if matches!(c.body, ContentBody::Edit { target, .. } if target == seq))
}
