//! `listen`: new messages as they arrive.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use rathaus_client::{ClientError, TimelineRow};
use rathaus_protocol::Event;
use serde_json::{json, Value};

use crate::commands::open;
use crate::output::Output;
use crate::posts::{row_json, row_text};

/// `listen`: subscribe, catch up, then print every new message; reconnects with backoff
/// when the connection drops, and stops for good when the account was removed.
pub(crate) async fn listen(
    profile: Option<PathBuf>,
    count: Option<u64>,
    out: &Output,
) -> Result<()> {
    let mut client = open(profile)?;
    crate::progress::show_catch_up(&mut client, out);
    let mut printed = 0u64;
    let mut backoff = Duration::from_millis(500);
    loop {
        let session = async {
            let sub = client.subscribe().await?;
            // Catch up on what arrived while offline; events for entries fetched here are
            // skipped by the cursor check.
            let groups = client.groups().await?;
            let mut caught_up = Vec::new();
            for g in groups.iter().filter(|g| !g.handle.is_secret()) {
                let before = client.store().cursor(&g.handle.to_string())?;
                client.fetch_group(&g.handle).await?;
                let rows = client.store().timeline(&g.handle.to_string())?;
                caught_up.extend(rows.into_iter().filter(|r| r.seq > before));
            }
            // Secret groups: KeyPackages, Welcomes, births, and each group's log.
            let secret = client.secret_group_infos().await?;
            let mut befores = Vec::new();
            for info in &secret {
                let handle = info.group.to_string();
                befores.push((handle.clone(), client.store().cursor(&handle)?));
            }
            client.sync_secret_groups().await?;
            for (handle, before) in befores {
                let rows = client.store().timeline(&handle)?;
                caught_up.extend(rows.into_iter().filter(|r| r.seq > before));
            }
            Ok::<_, ClientError>((sub, caught_up))
        }
        .await;
        let (mut sub, caught_up) = match session {
            Ok((sub, rows)) => (sub, rows),
            Err(ClientError::AccountRemoved) => return Err(ClientError::AccountRemoved.into()),
            Err(e) if e.is_transient() => {
                eprintln!("rathaus: {e}; retrying in {} s", backoff.as_secs_f32());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if !out.json {
            eprintln!("listening as {} (Ctrl-C to stop)", client.identity().user);
        }
        backoff = Duration::from_millis(500);
        for row in caught_up {
            out.line(row_json_event(&row), row_text_event(&row));
            // What `listen` printed was seen: it no longer counts as unread.
            client.mark_shown(std::slice::from_ref(&row))?;
            printed += 1;
            if count.is_some_and(|c| printed >= c) {
                client.disconnect().await;
                return Ok(());
            }
        }
        loop {
            let event = tokio::select! {
                e = sub.next() => e,
                _ = tokio::signal::ctrl_c() => {
                    client.disconnect().await;
                    return Ok(());
                }
            };
            match event {
                Ok(Event::ShuttingDown) => {
                    eprintln!("rathaus: the server is restarting; reconnecting");
                    break;
                }
                Ok(event) => {
                    for row in client.apply_event(&event).await? {
                        out.line(row_json_event(&row), row_text_event(&row));
                        client.mark_shown(std::slice::from_ref(&row))?;
                        printed += 1;
                        if count.is_some_and(|c| printed >= c) {
                            client.disconnect().await;
                            return Ok(());
                        }
                    }
                }
                Err(ClientError::AccountRemoved) => {
                    return Err(ClientError::AccountRemoved.into());
                }
                Err(e) => {
                    eprintln!("rathaus: {e}; reconnecting");
                    break;
                }
            }
        }
        client.disconnect().await;
        tokio::time::sleep(backoff).await;
    }
}

fn row_json_event(row: &TimelineRow) -> Value {
    let mut doc = row_json(row);
    if let Some(map) = doc.as_object_mut() {
        map.insert("group".into(), json!(row.group));
    }
    doc
}

fn row_text_event(row: &TimelineRow) -> String {
    format!("[{}] {}", row.group, row_text(row))
}
