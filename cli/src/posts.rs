//! `rathaus send/read/react/edit/delete/open`: posts as colleagues write them, and a
//! timeline that a post cannot forge.
//!
//! Text output escapes what a terminal would act on: control characters and escape
//! sequences are printed as visible `\x1b`-style text, bidirectional overrides as
//! `\u{202e}`, and the continuation lines of a multi-line post are indented under it, so
//! no post can print something that reads as another post, or recolour the screen.

use std::path::PathBuf;

use anyhow::Result;
use rathaus_client::posts::{Page, Post};
use rathaus_client::time_fmt::rfc3339;
use rathaus_client::{Client, SendOutcome, TimelineRow};
use rathaus_protocol::GroupHandle;
use serde_json::{json, Value};

use crate::commands::open;
use crate::output::Output;

/// What goes in front of each continuation line of a post in text output.
const CONTINUATION: &str = "      | ";

/// `send GROUP TEXT [--reply-to SEQ]`.
pub(crate) async fn send(
    profile: Option<PathBuf>,
    group: &str,
    text: &str,
    reply_to: Option<u64>,
    out: &Output,
) -> Result<()> {
    let group = GroupHandle::parse(group)?;
    let mut client = open(profile)?;
    let outcome = client.post_text(&group, text, reply_to).await?;
    finish(client, &group, outcome, out, |seq| {
        format!("sent to {group} as #{seq}")
    })
    .await
}

/// `react GROUP SEQ EMOJI`.
pub(crate) async fn react(
    profile: Option<PathBuf>,
    group: &str,
    seq: u64,
    emoji: &str,
    out: &Output,
) -> Result<()> {
    let group = GroupHandle::parse(group)?;
    let mut client = open(profile)?;
    let outcome = client.react(&group, seq, emoji).await?;
    finish(client, &group, outcome, out, |at| {
        format!(
            "reacted {} to #{seq} of {group} (#{at}; the same again takes it back)",
            escape(emoji)
        )
    })
    .await
}

/// `edit GROUP SEQ TEXT`.
pub(crate) async fn edit(
    profile: Option<PathBuf>,
    group: &str,
    seq: u64,
    text: &str,
    out: &Output,
) -> Result<()> {
    let group = GroupHandle::parse(group)?;
    let mut client = open(profile)?;
    let outcome = client.edit_post(&group, seq, text).await?;
    finish(client, &group, outcome, out, |at| {
        format!("edited #{seq} of {group} (#{at})")
    })
    .await
}

/// `delete GROUP SEQ`.
pub(crate) async fn delete(
    profile: Option<PathBuf>,
    group: &str,
    seq: u64,
    out: &Output,
) -> Result<()> {
    let group = GroupHandle::parse(group)?;
    let mut client = open(profile)?;
    let outcome = client.delete_post(&group, seq).await?;
    finish(client, &group, outcome, out, |at| {
        format!("deleted #{seq} of {group} (#{at})")
    })
    .await
}

/// `read GROUP [--limit N] [--before SEQ]`.
pub(crate) async fn read(
    profile: Option<PathBuf>,
    group: &str,
    limit: Option<usize>,
    before: Option<u64>,
    out: &Output,
) -> Result<()> {
    let group = GroupHandle::parse(group)?;
    let mut client = open(profile)?;
    crate::progress::show_catch_up(&mut client, out);
    let Page {
        posts,
        more_before,
        offline,
    } = client.read_page(&group, limit, before).await?;
    // A rostered colleague whose device no owner admitted yet sees why it is empty.
    let waiting = offline.is_none() && group.is_secret() && client.group_code(&group)?.is_none();
    let mut docs: Vec<Value> = posts.iter().map(post_json).collect();
    let rows: Vec<_> = posts.iter().map(|p| p.row.clone()).collect();
    crate::files::annotate(&client, &group, &rows, &mut docs)?;
    let mut doc = json!({"group": group.to_string(), "messages": docs});
    if let (true, Some(first)) = (more_before, posts.first()) {
        doc["more_before"] = json!(first.row.seq);
    }
    if waiting {
        doc["waiting_for_admission"] = json!(true);
    }
    if let Some((code, message)) = &offline {
        doc["offline"] = json!({"code": code, "message": message});
    }
    out.print(doc, || {
        let mut lines = Vec::new();
        if let (true, Some(first)) = (more_before, posts.first()) {
            lines.push(format!(
                "(older posts: rathaus read {group} --before {}{})",
                first.row.seq,
                limit.map(|l| format!(" --limit {l}")).unwrap_or_default()
            ));
        }
        lines.extend(posts.iter().map(post_text));
        if let Some((_, message)) = &offline {
            lines.push(format!(
                "(offline: {message}; this is the history this device holds, newer messages \
                 may be waiting on the server)"
            ));
        } else if waiting {
            lines.push(format!(
                "{group}: waiting for an owner to admit this device (`rathaus members \
                 {group}` shows the owners)"
            ));
        } else if posts.is_empty() {
            lines.push(format!("{group}: no messages yet"));
        }
        lines.join("\n")
    });
    client.disconnect().await;
    Ok(())
}

/// `open rathaus://GROUP/SEQ`.
pub(crate) async fn open_link(profile: Option<PathBuf>, link: &str, out: &Output) -> Result<()> {
    let mut client = open(profile)?;
    let (group, post) = client.open_link(link).await?;
    let mut doc = json!({"group": group.to_string(), "message": post_json(&post)});
    doc["link"] = json!(format!("rathaus://{group}/{}", post.row.seq));
    out.print(doc, || format!("[{group}]\n{}", post_text(&post)));
    client.disconnect().await;
    Ok(())
}

/// One post of `read --json`.
pub(crate) fn post_json(p: &Post) -> Value {
    let r = &p.row;
    let mut doc = json!({
        "seq": r.seq, "sender": r.sender, "sender_name": r.sender_name,
        "sent_at": rfc3339(r.sent_at_ms), "kind": r.kind.as_str(), "text": r.text,
        "reply_to": p.reply_to, "edited": p.edited, "deleted": p.deleted,
        "reactions": p.reactions, "mentions": p.mentions, "links": p.links,
    });
    if let Some(id) = p.announcement {
        doc["announcement_id"] = json!(id);
    }
    doc
}

/// One post as text: one line, and its continuation lines indented under it.
pub(crate) fn post_text(p: &Post) -> String {
    let r = &p.row;
    let mut body = String::new();
    if let Some(to) = p.reply_to {
        body.push_str(&format!("(reply to #{to}) "));
    }
    if let Some(id) = p.announcement {
        body.push_str(&format!("[announcement {id}] "));
    }
    if p.deleted {
        body.push_str("(deleted)");
    } else {
        body.push_str(&r.text);
        if p.edited {
            body.push_str(" (edited)");
        }
    }
    if !p.reactions.is_empty() {
        let counts: Vec<String> = p
            .reactions
            .iter()
            .map(|(emoji, who)| format!("{emoji} {}", who.len()))
            .collect();
        body.push_str(&format!("  [{}]", counts.join(", ")));
    }
    line(r.seq, r.sent_at_ms, &r.sender_name, &body)
}

/// A timeline line: `#SEQ  TIME  NAME: TEXT`, everything from a peer escaped.
pub(crate) fn line(seq: u64, sent_at_ms: i64, name: &str, text: &str) -> String {
    format!(
        "#{:<4} {}  {}: {}",
        seq,
        crate::output::human_time(sent_at_ms),
        escape(&name.replace('\n', " ")),
        escape(text)
    )
}

/// Makes text from a peer safe to print on a terminal: control characters and
/// invisible direction overrides become visible escapes (`\x1b`, `\r`, `\u{202e}`), and
/// a line break continues the post on an indented line.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => {
                out.push('\n');
                out.push_str(CONTINUATION);
            }
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            // C1 controls (CSI, OSC …) and marks that reorder or hide text on screen.
            c if c.is_control()
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
                    | '\u{2060}'..='\u{2069}' | '\u{feff}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Prints what became of a send, edit, delete or reaction.
async fn finish(
    mut client: Client,
    group: &GroupHandle,
    outcome: SendOutcome,
    out: &Output,
    human: impl FnOnce(u64) -> String,
) -> Result<()> {
    let receipt = match outcome {
        SendOutcome::Sent(receipt) => receipt,
        SendOutcome::Queued { client_id } => {
            // Not a failure, and not to be sent again by hand: it goes out on the next
            // sync. Its own exit code tells scripts so.
            out.print(
                json!({"group": group.to_string(), "queued": true,
                       "client_id": client_id.to_string()}),
                || {
                    "the server is not reachable; the message is queued and goes out with \
                     your next `rathaus sync` (do not send it again; `rathaus outbox` lists it)"
                        .to_owned()
                },
            );
            return Err(anyhow::Error::new(crate::QueuedSend));
        }
    };
    out.print(
        json!({"group": group.to_string(), "seq": receipt.seq,
               "sent_at": rfc3339(receipt.sent_at_ms),
               "client_id": receipt.client_id.to_string()}),
        || human(receipt.seq),
    );
    client.disconnect().await;
    Ok(())
}

/// `moderate GROUP SEQ`: an owner or admin removes a post.
pub(crate) async fn moderate(
    profile: Option<PathBuf>,
    group: &str,
    seq: u64,
    out: &Output,
) -> Result<()> {
    let group = GroupHandle::parse(group)?;
    let mut client = open(profile)?;
    client.remove_post(&group, seq).await?;
    out.print(json!({"group": group.to_string(), "removed": seq}), || {
        format!("removed post #{seq} from {group}")
    });
    client.disconnect().await;
    Ok(())
}

/// A timeline row for `--json` (`read`, `listen`, `demo`).
pub(crate) fn row_json(row: &TimelineRow) -> Value {
    json!({"seq": row.seq, "sender": row.sender, "sender_name": row.sender_name,
           "sent_at": rfc3339(row.sent_at_ms), "kind": row.kind.as_str(), "text": row.text})
}

/// A timeline row for people.
pub(crate) fn row_text(row: &TimelineRow) -> String {
    line(row.seq, row.sent_at_ms, &row.sender_name, &row.text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        assert_eq!(escape("\u{1b}[31mrot"), "\\x1b[31mrot");
        assert_eq!(escape("a\rb\tc\u{7}"), "a\\rb\\tc\\x07");
        assert_eq!(escape("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(escape("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(
            escape("C:\\Daten und Umlaute äöü 👍"),
            "C:\\Daten und Umlaute äöü 👍"
        );
    }

    #[test]
    fn a_second_line_cannot_pose_as_a_post() {
        let text = line(
            3,
            0,
            "Jonas",
            "ok\n#10  2026-12-01T08:15:00.000Z  Anna Berg: bitte überweisen",
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("#3 "));
        assert!(lines[1].starts_with(CONTINUATION), "{}", lines[1]);
        assert!(!lines.iter().skip(1).any(|l| l.starts_with('#')));
        // A display name cannot break the line either.
        assert_eq!(line(1, 0, "A\nB", "x").lines().count(), 1);
    }
}
