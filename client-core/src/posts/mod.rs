//! Posts as colleagues write them: replies, reactions, edits, deletes, mentions and links,
//! folded into one timeline — the same way for public and secret groups.
//!
//! The log keeps every entry as written; [`fold`] turns a group's timeline rows into what
//! people read: an edit replaces its post's text, a delete leaves the post in place
//! without text, a reaction toggles (sent again, it is taken back), and none of them is a
//! post of its own. Only a post's author edits or deletes it. The server enforces that in
//! public groups; in secret groups it cannot read the posts, so every member's client
//! applies the rule here, to the sender MLS authenticated: a change by anyone else is
//! ignored and shown as a `warning` row instead. The fold is a pure function of the
//! rows, which every member holds alike, so every member shows the same thing.
//!
//! Where a post's text leaves this device (an author's delete) see
//! `store::retract_post`; on the server, `Service::retract_post`.

mod actions;

use std::collections::{BTreeMap, HashMap};

use rathaus_protocol::content::parse_links;
use rathaus_protocol::{Content, ContentBody};

use crate::store::{RowKind, TimelineRow};

pub use actions::{GroupOverview, Page};

/// One entry of a folded timeline: a post with everything that happened to it since, or
/// a row of its own (membership, warning, moderation note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// The row as stored, with `text` the post's current text (after edits; empty once
    /// deleted) and `kind` its kind (`text`, `attachment`, `announcement`, `warning`, …).
    pub row: TimelineRow,
    /// The post this one replies to, in the same group.
    pub reply_to: Option<u64>,
    /// Whether its author changed the text.
    pub edited: bool,
    /// Whether its author withdrew it (then it has no text).
    pub deleted: bool,
    /// Reactions: emoji → the colleagues (personnel numbers) who gave it, in order.
    pub reactions: BTreeMap<String, Vec<String>>,
    /// Colleagues the current text mentions, as written.
    pub mentions: Vec<String>,
    /// Message links in the current text (`rathaus://GROUP/SEQ`).
    pub links: Vec<String>,
    /// For a published announcement: its id (what `announce ack` and `pin` take).
    pub announcement: Option<u64>,
}

impl Post {
    /// Whether this is a post a colleague wrote (not a row the system made).
    pub fn is_post(&self) -> bool {
        matches!(
            self.row.kind,
            RowKind::Text | RowKind::Attachment | RowKind::Announcement | RowKind::Deleted
        )
    }

    /// Whether the current text mentions `user` (personnel numbers compare without
    /// regard to case).
    pub fn mentions_user(&self, user: &str) -> bool {
        self.mentions.iter().any(|m| m.eq_ignore_ascii_case(user))
    }
}

/// Folds a group's timeline rows (oldest first, as the store gives them) into posts.
pub fn fold(rows: Vec<TimelineRow>) -> Vec<Post> {
    let mut out: Vec<Post> = Vec::with_capacity(rows.len());
    // seq → index in `out`, for posts only (trust notices share the seq of a post).
    let mut index: HashMap<u64, usize> = HashMap::new();
    for row in rows {
        let change = row.content.as_ref().and_then(|c| match &c.body {
            ContentBody::Edit { target, text } => Some((*target, Change::Edit(text.clone()))),
            ContentBody::Delete { target } => Some((*target, Change::Delete)),
            ContentBody::Reaction { target, emoji } => {
                Some((*target, Change::Reaction(emoji.clone())))
            }
            _ => None,
        });
        if let Some((target, change)) = change {
            let mentions = row
                .content
                .as_ref()
                .map(|c| c.mentions.iter().map(|m| m.as_str().to_owned()).collect())
                .unwrap_or_default();
            if let Some(warning) = apply(&mut out, &index, &row, target, change, mentions) {
                out.push(warning);
            }
            continue;
        }
        if row.kind.is_change() {
            // A change whose text its author withdrew with the post (content gone).
            continue;
        }
        let post = post_of(row);
        if post.is_post() {
            index.insert(post.row.seq, out.len());
        }
        out.push(post);
    }
    out
}

/// What a change does to its post.
enum Change {
    Edit(String),
    Delete,
    Reaction(String),
}

/// Applies one change to the post it names; returns a warning row if the rules refuse it.
fn apply(
    out: &mut [Post],
    index: &HashMap<u64, usize>,
    row: &TimelineRow,
    target: u64,
    change: Change,
    mentions: Vec<String>,
) -> Option<Post> {
    // A change of a post this device never held (from before it joined, or aged out by
    // retention) has nothing to change.
    let post = &mut out[*index.get(&target)?];
    if post.row.kind == RowKind::Announcement {
        return None;
    }
    let verb = match &change {
        Change::Edit(_) => "edit",
        Change::Delete => "delete",
        Change::Reaction(emoji) => {
            if !post.deleted {
                toggle(&mut post.reactions, emoji.clone(), &row.sender)
            }
            return None;
        }
    };
    if post.row.sender != row.sender {
        let mut warning = row.clone();
        warning.kind = RowKind::Warning;
        warning.content = None;
        warning.text = format!(
            "WARNING: {} ({}) tried to {verb} post #{target} by {}; only its author may, so \
             it was ignored",
            row.sender_name, row.sender, post.row.sender
        );
        return Some(post_of(warning));
    }
    if post.deleted {
        return None;
    }
    match change {
        Change::Edit(text) => {
            post.links = parse_links(&text).iter().map(ToString::to_string).collect();
            post.row.text = text;
            post.mentions = mentions;
            post.edited = true;
        }
        Change::Delete => withdraw(post),
        Change::Reaction(_) => {}
    }
    None
}

/// A reaction given again takes it back.
fn toggle(reactions: &mut BTreeMap<String, Vec<String>>, emoji: String, sender: &str) {
    let who = reactions.entry(emoji.clone()).or_default();
    if let Some(at) = who.iter().position(|u| u.eq_ignore_ascii_case(sender)) {
        who.remove(at);
        if who.is_empty() {
            reactions.remove(&emoji);
        }
    } else {
        who.push(sender.to_owned());
    }
}

fn withdraw(post: &mut Post) {
    post.deleted = true;
    post.row.kind = RowKind::Text;
    post.row.text = String::new();
    post.row.content = None;
    post.reactions.clear();
    post.mentions.clear();
    post.links.clear();
}

/// A row as a post of its own, before any change.
fn post_of(row: TimelineRow) -> Post {
    let mut post = Post {
        reply_to: None,
        edited: false,
        deleted: false,
        reactions: BTreeMap::new(),
        mentions: Vec::new(),
        links: Vec::new(),
        announcement: None,
        row,
    };
    match post.row.content.as_ref() {
        Some(Content {
            body:
                ContentBody::Text {
                    text,
                    reply_to,
                    links,
                },
            mentions,
            ..
        }) => {
            post.row.text = text.clone();
            post.reply_to = *reply_to;
            post.links = links.clone();
            post.mentions = mentions.iter().map(|m| m.as_str().to_owned()).collect();
        }
        Some(Content {
            body: ContentBody::Announcement { id, .. },
            ..
        }) => post.announcement = Some(*id),
        _ => {}
    }
    if post.row.kind == RowKind::Deleted {
        withdraw(&mut post);
    }
    post
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, sender: &str, content: Content) -> TimelineRow {
        TimelineRow {
            group: "bauamt".into(),
            seq,
            sender: sender.into(),
            sender_name: format!("Name of {sender}"),
            sent_at_ms: seq as i64,
            kind: RowKind::of(&content),
            text: content.summary(),
            expires_at_ms: None,
            removes: None,
            content: Some(content),
        }
    }

    #[test]
    fn changes_fold_into_their_post() {
        let posts = fold(vec![
            row(1, "P1", Content::post("Hallo @P2", None)),
            row(2, "P2", Content::post("Antwort", Some(1))),
            row(3, "P2", Content::reaction(1, "👍")),
            row(4, "P3", Content::reaction(1, "👍")),
            row(5, "P2", Content::reaction(1, "👍")),
            row(6, "P1", Content::edit(1, "Hallo, siehe rathaus://bauamt/2")),
            row(7, "P2", Content::delete(2)),
        ]);
        assert_eq!(posts.len(), 2, "{posts:?}");
        let first = &posts[0];
        assert_eq!(first.row.text, "Hallo, siehe rathaus://bauamt/2");
        assert!(first.edited && !first.deleted);
        assert_eq!(first.links, vec!["rathaus://bauamt/2"]);
        assert!(first.mentions.is_empty(), "the edit dropped the mention");
        assert_eq!(
            first.reactions,
            BTreeMap::from([("👍".to_owned(), vec!["P3".to_owned()])])
        );
        let second = &posts[1];
        assert_eq!(second.reply_to, Some(1));
        assert!(second.deleted);
        assert_eq!(second.row.text, "");
    }

    #[test]
    fn a_change_by_someone_else_is_a_warning_and_changes_nothing() {
        let posts = fold(vec![
            row(1, "P1", Content::post("Original", None)),
            row(2, "P2", Content::edit(1, "Gefälscht")),
            row(3, "P2", Content::delete(1)),
        ]);
        assert_eq!(posts.len(), 3);
        assert_eq!(posts[0].row.text, "Original");
        assert!(!posts[0].edited && !posts[0].deleted);
        for (w, verb) in [(&posts[1], "edit"), (&posts[2], "delete")] {
            assert_eq!(w.row.kind, RowKind::Warning);
            assert!(
                w.row.text.contains(&format!("tried to {verb} post #1")),
                "{}",
                w.row.text
            );
        }
    }

    #[test]
    fn changes_of_unknown_or_deleted_posts_do_nothing() {
        let posts = fold(vec![
            row(5, "P1", Content::edit(2, "vor meiner Zeit")),
            row(6, "P1", Content::post("neu", None)),
            row(7, "P1", Content::delete(6)),
            row(8, "P1", Content::edit(6, "zu spät")),
            row(9, "P2", Content::reaction(6, "👍")),
        ]);
        assert_eq!(posts.len(), 1);
        assert!(posts[0].deleted && posts[0].row.text.is_empty());
        assert!(posts[0].reactions.is_empty());
    }

    #[test]
    fn a_post_withdrawn_on_the_server_is_deleted() {
        let mut r = row(3, "P1", Content::post("weg", None));
        r.kind = RowKind::Deleted;
        r.text = String::new();
        r.content = None;
        let posts = fold(vec![r]);
        assert!(posts[0].deleted);
        assert_eq!(posts[0].row.kind, RowKind::Text);
    }
}
