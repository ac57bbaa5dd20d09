//! `rathaus groups`, `sync` and `outbox`: what this device holds of each group, catching
//! up with the server, and the messages still waiting to be sent.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use rathaus_client::time_fmt::rfc3339;
use serde_json::{json, Value};

use crate::commands::open;
use crate::output::Output;

/// `groups`: handles, kind, unread count.
pub(crate) async fn groups(profile: Option<PathBuf>, out: &Output) -> Result<()> {
    let mut client = open(profile)?;
    let groups = client.overview().await?;
    let docs: Vec<Value> = groups
        .iter()
        .map(|o| {
            let g = &o.group;
            json!({"handle": g.handle.to_string(), "kind": g.kind.as_str(),
                   "name": g.name, "head": g.head, "unread": o.unread,
                   "mentions": o.mentions})
        })
        .collect();
    out.print(json!({"groups": docs}), || {
        groups
            .iter()
            .map(|o| {
                let g = &o.group;
                format!(
                    "{:<24} {:<13} {:>5} unread {:>4} @me  {}",
                    g.handle.to_string(),
                    g.kind.as_str(),
                    o.unread,
                    o.mentions,
                    crate::posts::escape(&g.name)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    client.disconnect().await;
    Ok(())
}

/// `sync`: fetch and process everything pending, send what is queued.
pub(crate) async fn sync(profile: Option<PathBuf>, out: &Output) -> Result<()> {
    let mut client = open(profile)?;
    crate::progress::show_catch_up(&mut client, out);
    let report = client.sync().await?;
    let fetched: serde_json::Map<String, Value> = report
        .fetched
        .iter()
        .map(|(g, n)| (g.clone(), json!(n)))
        .collect();
    let failed: Vec<Value> = report
        .failed
        .iter()
        .map(|f| {
            json!({"client_id": f.client_id.to_string(), "group": f.group,
                   "code": f.code.map(|c| c.as_str()), "reason": f.reason})
        })
        .collect();
    out.print(
        json!({"sent": report.sent, "failed": failed, "fetched": fetched}),
        || {
            let mut lines = vec![format!("sent {} queued message(s)", report.sent)];
            for f in &report.failed {
                lines.push(format!("not delivered to {}: {}", f.group, f.reason));
            }
            for (g, n) in &report.fetched {
                lines.push(format!("{g}: {n} new"));
            }
            if report.fetched.is_empty() {
                lines.push("nothing new".into());
            }
            lines.join("\n")
        },
    );
    client.disconnect().await;
    Ok(())
}

/// `outbox [--cancel ID]`.
pub(crate) fn outbox(profile: Option<PathBuf>, cancel: Option<String>, out: &Output) -> Result<()> {
    let client = open(profile)?;
    if let Some(id) = cancel {
        let found = client
            .outbox()?
            .into_iter()
            .find(|m| m.client_id.to_string() == id.to_ascii_lowercase());
        let withdrawn = match found {
            Some(m) if !m.attempted => client.cancel_queued(m.client_id)?,
            Some(_) => {
                return Err(anyhow!(
                    "message {id} may have reached the server already; it cannot be \
                     withdrawn (delete it once it is delivered)"
                ))
            }
            None => false,
        };
        if !withdrawn {
            return Err(anyhow!("no queued message {id} (see `rathaus outbox`)"));
        }
        out.print(json!({"cancelled": id}), || {
            format!("withdrew message {id}")
        });
        return Ok(());
    }
    let queued = client.outbox()?;
    let list: Vec<Value> = queued
        .iter()
        .map(|m| {
            json!({"client_id": m.client_id.to_string(), "group": m.group,
                   "text": m.text, "created_at": rfc3339(m.created_ms),
                   "attempted": m.attempted})
        })
        .collect();
    out.print(json!({"queued": list}), || {
        if queued.is_empty() {
            return "nothing queued: every message reached the server".to_owned();
        }
        queued
            .iter()
            .map(|m| format!("{}  {}  {}", m.client_id, m.group, m.text))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}
