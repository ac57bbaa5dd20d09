//! `rathaus search QUERY [--group GROUP]`: public groups and announcements through the
//! server's index, secret groups through this device's own index (after a sync, so what
//! arrived since the last `read` is found too), merged best first. With the server
//! unreachable, the device's index answers for everything it holds, marked offline.

use std::path::PathBuf;

use anyhow::Result;
use rathaus_client::time_fmt::rfc3339;
use rathaus_client::{SearchResult, Searched};
use rathaus_protocol::GroupHandle;
use serde_json::{json, Value};

use crate::commands::open;
use crate::output::Output;

pub(crate) async fn search(
    profile: Option<PathBuf>,
    query: String,
    group: Option<String>,
    limit: u32,
    out: &Output,
) -> Result<()> {
    let group = group.as_deref().map(GroupHandle::parse).transpose()?;
    let mut client = open(profile)?;
    if group.as_ref().is_none_or(GroupHandle::is_secret) {
        // Secret groups are searched in what this device holds: fetch what is new first.
        // Offline, the local index still answers for what arrived before.
        if let Err(e) = client.sync().await {
            tracing::debug!(error = %e, "sync before search failed");
        }
    }
    let Searched { results, offline } = client.search(&query, group.as_ref(), limit).await?;
    let docs: Vec<Value> = results.iter().map(result_json).collect();
    let mut doc = json!({ "results": docs });
    if let Some((code, message)) = &offline {
        doc["offline"] = json!({"code": code, "message": message});
    }
    out.print(doc, || {
        let mut lines: Vec<String> = results.iter().map(result_text).collect();
        if results.is_empty() {
            lines.push(format!("nothing found for {query:?}"));
        }
        if let Some((_, message)) = &offline {
            lines.push(format!(
                "(offline: {message}; searched what this device holds, the server may \
                 hold more)"
            ));
        }
        lines.join("\n")
    });
    client.disconnect().await;
    Ok(())
}

fn result_json(r: &SearchResult) -> Value {
    let mut doc = json!({
        "group": r.group,
        "seq": r.seq,
        "sender": r.sender,
        "sender_name": r.sender_name,
        "sent_at": rfc3339(r.sent_at_ms),
        "snippet": r.snippet,
    });
    if let Some(path) = &r.document {
        doc["document"] = json!(path);
    }
    doc
}

fn result_text(r: &SearchResult) -> String {
    let place = match &r.document {
        // A library path starts with `/`.
        Some(path) => format!("rathaus://docs{path}"),
        None => format!("{}#{}", r.group, r.seq),
    };
    format!(
        "{place}  {} ({})  {}  {}",
        r.sender_name,
        r.sender,
        rfc3339(r.sent_at_ms),
        r.snippet
    )
}
