//! What a colleague does with posts: write (with a reply, mentions and links), react,
//! edit, delete, page through a timeline, follow a link, and see unread posts and
//! mentions per group.

use rathaus_protocol::content::Link;
use rathaus_protocol::{Content, ErrorCode, GroupHandle};

use super::{fold, Post};
use crate::client::{Client, GroupView};
use crate::error::{ClientError, Result};
use crate::store::TimelineRow;
use crate::sync::SendOutcome;
use crate::time_fmt::now_ms;

/// One page of a folded timeline, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The posts of the page.
    pub posts: Vec<Post>,
    /// Whether older entries exist before the page (ask again with `before` = the first
    /// post's seq).
    pub more_before: bool,
    /// Set when the server could not be reached: the page is the history this device
    /// holds. The failure's stable code and message.
    pub offline: Option<(&'static str, String)>,
}

/// A group with what is new in it for this user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOverview {
    /// The group as the server lists it.
    pub group: GroupView,
    /// Posts by others not yet read (edits, reactions and one's own posts do not count).
    pub unread: u64,
    /// Of those, the ones that mention this user.
    pub mentions: u64,
}

impl Client {
    /// Writes a post: its `@mentions` and `rathaus://GROUP/SEQ` links are taken from the
    /// text; `reply_to` names the post it answers in the same group.
    pub async fn post_text(
        &mut self,
        group: &GroupHandle,
        text: &str,
        reply_to: Option<u64>,
    ) -> Result<SendOutcome> {
        let content = Content::post(text, reply_to);
        if let Some(target) = reply_to {
            self.check_target(group, target, Rule::Anyone).await?;
        }
        self.send_or_queue(group, content).await
    }

    /// Reacts to a post with an emoji; the same reaction again takes it back.
    pub async fn react(
        &mut self,
        group: &GroupHandle,
        seq: u64,
        emoji: &str,
    ) -> Result<SendOutcome> {
        let content = Content::reaction(seq, emoji.trim());
        validate(&content)?;
        self.check_target(group, seq, Rule::Anyone).await?;
        self.send_or_queue(group, content).await
    }

    /// Replaces the text of an own post.
    pub async fn edit_post(
        &mut self,
        group: &GroupHandle,
        seq: u64,
        text: &str,
    ) -> Result<SendOutcome> {
        let content = Content::edit(seq, text);
        validate(&content)?;
        self.check_target(group, seq, Rule::Author("edit")).await?;
        self.send_or_queue(group, content).await
    }

    /// Withdraws an own post: it stays in its place, shown as deleted, and its text is
    /// gone (from the server too, for public groups).
    pub async fn delete_post(&mut self, group: &GroupHandle, seq: u64) -> Result<SendOutcome> {
        self.check_target(group, seq, Rule::Author("delete"))
            .await?;
        // The post's file goes with it once the deletion is stored, now or when a queued
        // deletion goes out (`flush_outbox`); the server keeps it while another post or
        // document refers to it.
        self.send_or_queue(group, Content::delete(seq)).await
    }

    /// The folded local timeline of `group` (no network).
    pub fn posts(&self, group: &GroupHandle) -> Result<Vec<Post>> {
        Ok(fold(
            self.store.visible_timeline(&group.to_string(), now_ms())?,
        ))
    }

    /// Syncs `group` and returns the newest `limit` posts before `before` (all when
    /// `None`), oldest first. Reading the newest page marks the group read.
    pub async fn read_page(
        &mut self,
        group: &GroupHandle,
        limit: Option<usize>,
        before: Option<u64>,
    ) -> Result<Page> {
        let synced = match before {
            None => self.read(group).await,
            Some(_) => {
                // An older page: synced, but what is new stays unread.
                match self.read_sync(group).await {
                    Ok(_) => self.store.visible_timeline(&group.to_string(), now_ms()),
                    Err(e) => Err(e),
                }
            }
        };
        // The server unreachable: the history this device holds, marked as such.
        let (rows, offline) = match synced {
            Ok(rows) => (rows, None),
            Err(e) if e.is_transient() => (
                self.read_local(group)?,
                Some((e.code_name(), e.to_string())),
            ),
            Err(e) => return Err(e),
        };
        let mut posts = fold(rows);
        if let Some(before) = before {
            posts.retain(|p| p.row.seq < before);
        }
        let mut more_before = false;
        if let Some(limit) = limit {
            if posts.len() > limit {
                posts.drain(..posts.len() - limit);
                more_before = true;
            }
        }
        let handle = group.to_string();
        self.store
            .mark_seen(&handle, posts.iter().map(|p| p.row.seq))?;
        Ok(Page {
            posts,
            more_before,
            offline,
        })
    }

    /// Follows a link `rathaus://GROUP/SEQ`: syncs the group and returns the linked
    /// post. Refused with `Invalid` for something that is not a message link, `NotFound`
    /// for a post or group that does not exist, `Forbidden` for a group this device
    /// cannot read.
    pub async fn open_link(&mut self, link: &str) -> Result<(GroupHandle, Post)> {
        let link = Link::parse(link.trim()).map_err(|e| refused(ErrorCode::Invalid, e.0))?;
        let group = link.group.clone();
        match self.read_sync(&group).await {
            Err(ClientError::NotMember(why)) => return Err(refused(ErrorCode::Forbidden, why)),
            other => other?,
        }
        if group.is_secret() && self.group_code(&group)?.is_none() {
            return Err(refused(
                ErrorCode::Forbidden,
                format!("{group} is a secret group this device is not a member of"),
            ));
        }
        let post = self
            .posts(&group)?
            .into_iter()
            .find(|p| p.is_post() && p.row.seq == link.seq)
            .ok_or_else(|| {
                refused(
                    ErrorCode::NotFound,
                    format!(
                        "{group} has no post #{} (that this device can read)",
                        link.seq
                    ),
                )
            })?;
        Ok((group, post))
    }

    /// Every group with its unread posts and mentions of this user, after syncing (a
    /// sync that fails leaves the counts to what this device holds, plus what it has not
    /// fetched yet).
    pub async fn overview(&mut self) -> Result<Vec<GroupOverview>> {
        if let Err(e) = self.sync().await {
            if !e.is_transient() {
                tracing::warn!(error = %e, "sync before counting unread posts failed");
            }
        }
        let me = self.identity().user.as_str().to_owned();
        let groups = self.groups().await?;
        let mut out = Vec::with_capacity(groups.len());
        for group in groups {
            let handle = group.handle.to_string();
            let mark = self.store.read_mark(&handle)?;
            let seen = self.store.seen_after(&handle, mark)?;
            let unfetched = group.head.saturating_sub(self.store.cursor(&handle)?);
            let (mut unread, mut mentions) = (unfetched, 0);
            for post in self.posts(&group.handle)? {
                let new = post.is_post()
                    && !post.deleted
                    && post.row.seq > mark
                    && !seen.contains(&post.row.seq)
                    && !post.row.sender.eq_ignore_ascii_case(&me);
                if new {
                    unread += 1;
                    if post.mentions_user(&me) {
                        mentions += 1;
                    }
                }
            }
            out.push(GroupOverview {
                group,
                unread,
                mentions,
            });
        }
        Ok(out)
    }

    /// Records that these rows were shown (e.g. printed by `listen`): they no longer
    /// count as unread.
    pub fn mark_shown(&self, rows: &[TimelineRow]) -> Result<()> {
        for row in rows {
            self.store.mark_seen(&row.group, std::iter::once(row.seq))?;
        }
        Ok(())
    }

    /// Sends the outbox and syncs one group, without marking anything read.
    async fn read_sync(&mut self, group: &GroupHandle) -> Result<()> {
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
        Ok(())
    }

    /// Checks a change of the post `seq` of a secret group against the rules every member
    /// applies, before anything is sent (the server cannot, so a refused change would be
    /// sent to everyone only to be ignored). Public groups: the server decides and
    /// answers with a typed error.
    async fn check_target(&mut self, group: &GroupHandle, seq: u64, rule: Rule) -> Result<()> {
        if !group.is_secret() {
            return Ok(());
        }
        // Offline, the check runs on what this device holds and the change is queued
        // like any message; every member's client checks it again when it arrives.
        match self.read_sync(group).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => {
                tracing::debug!(%group, error = %e, "checking the post against local history");
            }
            Err(e) => return Err(e),
        }
        let me = self.identity().user.as_str().to_owned();
        let post = self
            .posts(group)?
            .into_iter()
            .find(|p| p.is_post() && p.row.seq == seq)
            .ok_or_else(|| refused(ErrorCode::NotFound, format!("{group} has no post #{seq}")))?;
        if post.deleted {
            return Err(refused(
                ErrorCode::Invalid,
                format!("post #{seq} of {group} was deleted"),
            ));
        }
        if let Rule::Author(verb) = rule {
            if !post.row.sender.eq_ignore_ascii_case(&me) {
                return Err(refused(
                    ErrorCode::Forbidden,
                    format!(
                        "only its author may {verb} post #{seq} of {group} (it is {}'s)",
                        post.row.sender
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Who may change a post.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Anyone who reads the group (replies, reactions).
    Anyone,
    /// Only its author (edits, deletes); the verb is for the refusal.
    Author(&'static str),
}

fn validate(content: &Content) -> Result<()> {
    content
        .validate()
        .map_err(|e| refused(ErrorCode::Invalid, e.to_string()))
}

fn refused(code: ErrorCode, message: impl Into<String>) -> ClientError {
    ClientError::Refused {
        code,
        message: message.into(),
    }
}
