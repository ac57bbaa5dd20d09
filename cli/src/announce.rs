//! `rathaus announce …`: the announcement workflow.

use anyhow::{Context, Result};
use rathaus_client::time_fmt::rfc3339;
use rathaus_client::{AnnouncementDraft, Client};
use rathaus_protocol::{AnnouncementInfo, AnnouncementState};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::output::Output;
use crate::AnnounceCommand;

pub(crate) async fn run(client: &mut Client, command: AnnounceCommand, out: &Output) -> Result<()> {
    let (info, verb) = match command {
        AnnounceCommand::Draft {
            title,
            body,
            requires_ack,
            expires,
        } => {
            let draft = draft(title, body, requires_ack, expires)?;
            (client.announce_draft(draft).await?, "drafted")
        }
        AnnounceCommand::Publish {
            title,
            body,
            requires_ack,
            expires,
        } => {
            let draft = draft(title, body, requires_ack, expires)?;
            (client.announce_publish(draft).await?, "published")
        }
        AnnounceCommand::Submit { id } => (client.announce_submit(id).await?, "submitted"),
        AnnounceCommand::Approve { id } => (client.announce_approve(id).await?, "approved"),
        AnnounceCommand::Reject { id, comment } => {
            (client.announce_reject(id, &comment).await?, "rejected")
        }
        AnnounceCommand::Ack { id } => (client.announce_ack(id).await?, "acknowledged"),
        AnnounceCommand::Pin { id, unpin } => {
            let verb = if unpin { "unpinned" } else { "pinned" };
            (client.announce_pin(id, !unpin).await?, verb)
        }
        AnnounceCommand::List { pending } => {
            let list = client.announcements(pending).await?;
            let docs: Vec<Value> = list.iter().map(info_json).collect();
            out.print(json!({"announcements": docs}), || {
                if list.is_empty() {
                    return "no announcements".to_owned();
                }
                list.iter().map(info_text).collect::<Vec<_>>().join("\n")
            });
            return Ok(());
        }
    };
    out.print(info_json(&info), || format!("{verb}: {}", info_text(&info)));
    Ok(())
}

fn draft(
    title: String,
    text: String,
    requires_ack: bool,
    expires: Option<String>,
) -> Result<AnnouncementDraft> {
    let expires_at_ms = expires
        .map(|e| {
            let t = OffsetDateTime::parse(&e, &Rfc3339).with_context(|| {
                format!("--expires {e:?} is not an RFC 3339 time like 2026-12-01T00:00:00Z")
            })?;
            Ok::<_, anyhow::Error>(i64::try_from(t.unix_timestamp_nanos() / 1_000_000)?)
        })
        .transpose()?;
    Ok(AnnouncementDraft {
        title,
        text,
        requires_ack,
        expires_at_ms,
    })
}

fn info_json(a: &AnnouncementInfo) -> Value {
    let mut doc = json!({
        "id": a.id, "state": a.state.as_str(), "author": a.author.as_str(),
        "author_name": a.author_name, "title": a.title, "body": a.text,
        "requires_ack": a.requires_ack, "pinned": a.pinned, "seq": a.seq,
        "created_at": rfc3339(a.created_at_ms),
        "expires_at": a.expires_at_ms.map(rfc3339),
        "acks": a.acks, "acked_by": a.acked_by.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
        "acked_by_me": a.acked_by_me,
    });
    if let AnnouncementState::Rejected { by, comment } = &a.state {
        doc["rejected_by"] = json!(by.as_str());
        doc["comment"] = json!(comment);
    }
    doc
}

fn info_text(a: &AnnouncementInfo) -> String {
    let mut line = format!(
        "#{} [{}{}] {} — {} (by {})",
        a.id,
        a.state.as_str(),
        if a.pinned { ", pinned" } else { "" },
        a.title,
        a.text,
        a.author_name
    );
    if let AnnouncementState::Rejected { by, comment } = &a.state {
        line.push_str(&format!("\n    rejected by {by}: {comment}"));
    }
    if a.requires_ack {
        line.push_str(&format!("\n    acknowledged by {}", a.acks));
        if !a.acked_by.is_empty() {
            let who: Vec<&str> = a.acked_by.iter().map(|u| u.as_str()).collect();
            line.push_str(&format!(": {}", who.join(", ")));
        }
        if !a.acked_by_me && a.state == AnnouncementState::Published {
            line.push_str(&format!(" — please run: rathaus announce ack {}", a.id));
        }
    }
    line
}
