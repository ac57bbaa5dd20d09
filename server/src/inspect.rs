//! The operator's view of what the server holds (`rathaus-server inspect`).

use std::path::Path;

use base64::Engine;
use rathaus_protocol::{EntryBody, GroupHandle, GroupKind};
use serde_json::{json, Value};

use crate::data_dir::DataDir;
use crate::error::ServerError;
use crate::store::{Db, StoreError};

/// Users, departments and groups (without `group`), or one group's log entries with their
/// exact stored payloads. Fails with [`ServerError::Locked`] while a server runs on
/// `data_dir`.
pub fn inspect(data_dir: &Path, group: Option<&GroupHandle>) -> Result<Value, ServerError> {
    let dir = DataDir::new(data_dir);
    let config = dir.read_config()?;
    let db = Db::new(dir.open_records(&config, None)?);
    match group {
        Some(g) => group_view(&db, g),
        None => overview(&db, &config.org),
    }
}

fn overview(db: &Db, org: &str) -> Result<Value, ServerError> {
    let users: Vec<Value> = db
        .users()?
        .iter()
        .map(|u| {
            json!({
                "id": u.id.as_str(),
                "name": u.name,
                "roles": u.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                "departments": u.departments.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
                "devices": u.active_devices().count(),
                "removed": u.removed,
                "enrolled": u.password_hash.is_some(),
            })
        })
        .collect();
    let depts = db.departments()?;
    let departments: Vec<Value> = depts
        .iter()
        .map(|d| {
            json!({
                "slug": d.slug.as_str(),
                "name": d.name,
                "owners": d.owners.iter().map(|o| o.as_str()).collect::<Vec<_>>(),
                "members": d.members.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut handles = vec![(GroupHandle::Announcements, GroupKind::Announcements)];
    for d in &depts {
        handles.push((GroupHandle::Public(d.slug.clone()), GroupKind::Public));
        handles.push((GroupHandle::Secret(d.slug.clone()), GroupKind::Secret));
    }
    let mut groups = Vec::new();
    for (handle, kind) in handles {
        let (entries, bytes) = payloads(db, &handle)?
            .iter()
            .fold((0u64, 0u64), |(n, b), e| (n + 1, b + e.size as u64));
        groups.push(json!({
            "group": handle.to_string(),
            "kind": kind.as_str(),
            "entries": entries,
            "bytes": bytes,
        }));
    }
    Ok(json!({
        "org": org,
        "users": users,
        "departments": departments,
        "groups": groups,
    }))
}

fn group_view(db: &Db, group: &GroupHandle) -> Result<Value, ServerError> {
    if let Some(slug) = group.department() {
        if db.department(slug)?.is_none() {
            return Err(ServerError::Invalid(format!(
                "no group {group} on this server"
            )));
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let entries: Vec<Value> = payloads(db, group)?
        .into_iter()
        .map(|p| {
            json!({
                "seq": p.seq,
                "kind": p.kind,
                "size": p.size,
                "bytes": b64.encode(&p.bytes),
            })
        })
        .collect();
    Ok(json!({ "group": group.to_string(), "entries": entries }))
}

/// A stored payload: for public content the postcard encoding of the `Content`, for
/// secret groups the MLS message as received, for removed posts nothing.
struct Payload {
    seq: u64,
    kind: &'static str,
    size: usize,
    bytes: Vec<u8>,
}

fn payloads(db: &Db, group: &GroupHandle) -> Result<Vec<Payload>, ServerError> {
    db.entries(group, 0, usize::MAX)?
        .into_iter()
        .map(|(seq, entry, _)| {
            let (kind, bytes) = match &entry.body {
                EntryBody::Content(c) => (
                    c.kind(),
                    postcard::to_allocvec(c).map_err(|e| StoreError::Encode(e.to_string()))?,
                ),
                EntryBody::Mls(m) => ("mls", m.clone()),
                EntryBody::Removed { .. } => ("removed", Vec::new()),
                EntryBody::Moderated { target } => ("moderation", target.to_be_bytes().to_vec()),
            };
            Ok(Payload {
                seq,
                kind,
                size: bytes.len(),
                bytes,
            })
        })
        .collect()
}
