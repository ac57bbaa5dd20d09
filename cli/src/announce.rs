//! `rathaus announce …`: the announcement workflow.

use anyhow::{Context, Result};
use rathaus_client::time_fmt::rfc3339;
use rathaus_client::{AnnouncementDraft, Client};
use rathaus_protocol::{AnnouncementInfo, AnnouncementState, GroupHandle, MemberInfo, Role};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, Duration, OffsetDateTime};

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
            // Editors see who has not acknowledged yet: everyone on staff who is not among
            // those who did.
            let me = client.whoami().await?;
            let staff = if me
                .roles
                .iter()
                .any(|r| matches!(r, Role::Editor | Role::Admin))
                && list.iter().any(|a| a.requires_ack)
            {
                Some(client.members(&GroupHandle::Announcements).await?)
            } else {
                None
            };
            let docs: Vec<Value> = list
                .iter()
                .map(|a| {
                    let mut doc = info_json(a);
                    if let (Some(staff), true) = (&staff, a.requires_ack) {
                        let missing = not_yet(a, staff);
                        doc["staff"] = json!(staff.len());
                        doc["not_acked_by"] = json!(missing);
                    }
                    doc
                })
                .collect();
            out.print(json!({"announcements": docs}), || {
                if list.is_empty() {
                    return "no announcements".to_owned();
                }
                list.iter()
                    .map(|a| {
                        let mut text = info_text(a);
                        if let (Some(staff), true) = (&staff, a.requires_ack) {
                            let missing = not_yet(a, staff);
                            text.push_str(&format!(
                                "\n    acknowledged by {} of {}",
                                staff.len() - missing.len(),
                                staff.len()
                            ));
                            if !missing.is_empty() {
                                text.push_str(&format!("; not yet: {}", missing.join(", ")));
                            }
                        }
                        text
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
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
    let expires_at_ms = expires.map(|e| expiry_ms(&e)).transpose()?;
    Ok(AnnouncementDraft {
        title,
        text,
        requires_ack,
        expires_at_ms,
    })
}

/// `--expires`: an RFC 3339 time, or a plain date `2026-12-24`, which means the end of
/// that day (UTC): the announcement is shown all day and gone from midnight on.
pub(crate) fn expiry_ms(e: &str) -> Result<i64> {
    let t = match Date::parse(e.trim(), format_description!("[year]-[month]-[day]")) {
        Ok(day) => day.midnight().assume_utc() + Duration::days(1),
        Err(_) => OffsetDateTime::parse(e.trim(), &Rfc3339).with_context(|| {
            format!(
                "--expires {e:?} is neither a date like 2026-12-24 nor an RFC 3339 time like \
                 2026-12-24T12:00:00Z"
            )
        })?,
    };
    Ok(i64::try_from(t.unix_timestamp_nanos() / 1_000_000)?)
}

/// The staff (personnel numbers) who have not acknowledged `a` yet.
fn not_yet(a: &AnnouncementInfo, staff: &[MemberInfo]) -> Vec<String> {
    staff
        .iter()
        .filter(|m| !a.acked_by.contains(&m.user))
        .map(|m| m.user.as_str().to_owned())
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_date_expires_at_the_end_of_that_day() {
        let end = expiry_ms("2026-12-24").unwrap();
        assert_eq!(rfc3339(end), "2026-12-25T00:00:00Z");
        assert_eq!(
            expiry_ms("2026-12-24T12:00:00+01:00").unwrap(),
            end - 13 * 3_600_000
        );
        assert!(expiry_ms("24.12.2026").is_err());
        assert!(expiry_ms("2026-02-30").is_err());
    }
}
