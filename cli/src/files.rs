//! `rathaus send GROUP --file PATH [TEXT]` and `rathaus download GROUP SEQ [--out PATH]`:
//! photos and files in public and secret groups, with a progress bar on a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Result;
use rathaus_client::{Attachment, Client, DownloadedFile, Progress, RowKind, TimelineRow};
use rathaus_protocol::GroupHandle;
use serde_json::{json, Value};

use crate::commands::open;
use crate::output::Output;

pub(crate) async fn send_file(
    profile: Option<PathBuf>,
    group: &str,
    path: &Path,
    caption: Option<String>,
    out: &Output,
) -> Result<()> {
    let group = GroupHandle::parse(group)?;
    let mut client = open(profile)?;
    let bar = ProgressBar::new("uploading");
    let sent = client
        .send_file(&group, path, caption.as_deref(), &mut |p| bar.update(p))
        .await;
    bar.finish();
    let sent = sent?;
    let a = &sent.attachment;
    out.print(
        json!({"group": group.to_string(), "seq": sent.receipt.seq,
               "client_id": sent.receipt.client_id.to_string(),
               "attachment": attachment_json(a),
               "transfer": {"chunks_sent": sent.stats.chunks_moved,
                            "chunks_resumed": sent.stats.chunks_skipped,
                            "attempts": sent.stats.attempts}}),
        || {
            format!(
                "sent {} ({} bytes) to {group} as #{}",
                a.name, a.size, sent.receipt.seq
            )
        },
    );
    client.disconnect().await;
    Ok(())
}

pub(crate) async fn download(
    profile: Option<PathBuf>,
    group: &str,
    seq: u64,
    target: Option<PathBuf>,
    out: &Output,
) -> Result<()> {
    let group = GroupHandle::parse(group)?;
    let mut client = open(profile)?;
    let bar = ProgressBar::new("downloading");
    let file = client
        .download(&group, seq, target.as_deref(), &mut |p| bar.update(p))
        .await;
    bar.finish();
    print_downloaded(out, &file?);
    client.disconnect().await;
    Ok(())
}

/// Prints a finished download: `{"path", "size", "sha256"}`.
pub(crate) fn print_downloaded(out: &Output, file: &DownloadedFile) {
    let path = file.path.display().to_string();
    out.print(
        json!({"path": path, "size": file.size, "sha256": hex::encode(file.sha256),
               "transfer": {"chunks_fetched": file.stats.chunks_moved,
                            "chunks_resumed": file.stats.chunks_skipped,
                            "attempts": file.stats.attempts}}),
        || format!("saved {path} ({} bytes, SHA-256 checked)", file.size),
    );
}

/// `read --json`: adds `attachment` to the messages that carry a file.
pub(crate) fn annotate(
    client: &Client,
    group: &GroupHandle,
    rows: &[TimelineRow],
    docs: &mut [Value],
) -> Result<()> {
    for (row, doc) in rows.iter().zip(docs.iter_mut()) {
        if row.kind != RowKind::Attachment {
            continue;
        }
        if let Some(a) = client.attachment(group, row.seq)? {
            doc["attachment"] = attachment_json(&a);
        }
    }
    Ok(())
}

fn attachment_json(a: &Attachment) -> Value {
    json!({"name": a.name, "size": a.size, "sha256": hex::encode(a.sha256)})
}

/// A progress bar on stderr, only when stderr is a terminal.
pub(crate) struct ProgressBar {
    bar: Option<indicatif::ProgressBar>,
}

impl ProgressBar {
    pub(crate) fn new(what: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what);
            bar
        });
        Self { bar }
    }

    pub(crate) fn update(&self, p: Progress) {
        if let Some(bar) = &self.bar {
            bar.set_length(p.total);
            bar.set_position(p.done);
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
