//! `rathaus docs …`: the document library, and `rathaus open rathaus://docs/PATH`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use rathaus_client::files::docs_link_path;
use rathaus_protocol::{DocEntry, DocKind, DocPath};
use serde_json::{json, Value};

use crate::commands::open;
use crate::files::{print_downloaded, ProgressBar};
use crate::output::Output;
use crate::DocsCommand;

pub(crate) async fn docs(
    profile: Option<PathBuf>,
    command: DocsCommand,
    out: &Output,
) -> Result<()> {
    let mut client = open(profile)?;
    match command {
        DocsCommand::Ls { path } => {
            let path = DocPath::parse(path.as_deref().unwrap_or("/"))?;
            let entries = client.docs_list(&path).await?;
            let docs: Vec<Value> = entries.iter().map(entry_json).collect();
            out.print(json!({"path": path.as_str(), "entries": docs}), || {
                if entries.is_empty() {
                    return format!("{path}: empty");
                }
                entries
                    .iter()
                    .map(|e| match &e.kind {
                        DocKind::Folder => format!("{}/", e.path),
                        DocKind::Document { size, .. } => {
                            format!("{}  {size} bytes  ({})", e.path, e.updated_by)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        DocsCommand::Put { path, file } => {
            let path = DocPath::parse(&path)?;
            let bar = ProgressBar::new("uploading");
            let put = client.docs_put(&path, &file, &mut |p| bar.update(p)).await;
            bar.finish();
            let put = put?;
            out.print(
                json!({"path": path.as_str(), "size": put.size,
                       "sha256": hex::encode(put.sha256),
                       "link": format!("rathaus://docs{}", path.as_str())}),
                || {
                    format!(
                        "stored {path} ({} bytes); link it as rathaus://docs{path}",
                        put.size
                    )
                },
            );
        }
        DocsCommand::Get { path, out: target } => {
            let path = DocPath::parse(&path)?;
            let bar = ProgressBar::new("downloading");
            let file = client
                .docs_get(&path, target.as_deref(), &mut |p| bar.update(p))
                .await;
            bar.finish();
            print_downloaded(out, &file?);
        }
        DocsCommand::Mkdir { path } => {
            let path = DocPath::parse(&path)?;
            client.docs_mkdir(&path).await?;
            out.print(json!({"path": path.as_str(), "created": true}), || {
                format!("created folder {path}")
            });
        }
        DocsCommand::Rm { path } => {
            let path = DocPath::parse(&path)?;
            client.docs_remove(&path).await?;
            out.print(json!({"path": path.as_str(), "removed": true}), || {
                format!("removed {path}")
            });
        }
    }
    client.disconnect().await;
    Ok(())
}

/// `rathaus open LINK` for links into the document library: downloads the document.
pub(crate) async fn open_docs_link(
    profile: Option<PathBuf>,
    link: &str,
    target: Option<PathBuf>,
    out: &Output,
) -> Result<()> {
    if docs_link_path(link).is_none() {
        bail!("{link} is not a link this build opens (rathaus://docs/PATH)");
    }
    let mut client = open(profile)?;
    let bar = ProgressBar::new("downloading");
    let file = client
        .open_docs_link(link, target.as_deref(), &mut |p| bar.update(p))
        .await;
    bar.finish();
    print_downloaded(out, &file?);
    client.disconnect().await;
    Ok(())
}

fn entry_json(e: &DocEntry) -> Value {
    let mut doc = json!({"path": e.path.as_str(), "name": e.path.name(),
                         "updated_by": e.updated_by.as_str(),
                         "updated_ms": e.updated_ms});
    match &e.kind {
        DocKind::Folder => doc["kind"] = json!("folder"),
        DocKind::Document { blob, size } => {
            doc["kind"] = json!("document");
            doc["size"] = json!(size);
            doc["sha256"] = json!(hex::encode(blob));
        }
    }
    doc
}
