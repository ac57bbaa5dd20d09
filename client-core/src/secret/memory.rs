//! What this device remembers about each secret group beyond its MLS state, so the server
//! cannot make it forget (DESIGN §5.9): that it has held the group (then it never creates
//! it again, whatever the server says), and that it processed its own removal (only then
//! may a Welcome replace the state it holds).

use rusqlite::Connection;

use crate::error::Result;
use crate::store;

/// Records that this device holds the group (created or joined it).
pub(super) fn mark_held(conn: &Connection, gid: &[u8]) -> Result<()> {
    store::set_setting_on(conn, &held_key(gid), Some("1"))?;
    store::set_setting_on(conn, &removed_key(gid), None)
}

/// Whether this device has ever held the group.
pub(super) fn was_held(conn: &Connection, gid: &[u8]) -> Result<bool> {
    Ok(store::setting_on(conn, &held_key(gid))?.is_some())
}

/// Records that this device processed a commit removing it from the group.
pub(super) fn mark_removed(conn: &Connection, gid: &[u8]) -> Result<()> {
    store::set_setting_on(conn, &removed_key(gid), Some("1"))
}

/// Whether the last thing this device saw of the group was its own removal.
pub(super) fn was_removed(conn: &Connection, gid: &[u8]) -> Result<bool> {
    Ok(store::setting_on(conn, &removed_key(gid))?.is_some())
}

/// Records that a warning about `what` was shown for the group, so a condition that
/// persists is reported once; returns whether it was new.
pub(super) fn first_warning(conn: &Connection, gid: &[u8], what: &str) -> Result<bool> {
    let key = format!("warned:{what}:{}", String::from_utf8_lossy(gid));
    if store::setting_on(conn, &key)?.is_some() {
        return Ok(false);
    }
    store::set_setting_on(conn, &key, Some("1"))?;
    Ok(true)
}

/// Forgets that a warning about `what` was shown, so it is shown again if the condition
/// comes back.
pub(super) fn clear_warning(conn: &Connection, gid: &[u8], what: &str) -> Result<()> {
    let key = format!("warned:{what}:{}", String::from_utf8_lossy(gid));
    store::set_setting_on(conn, &key, None)
}

/// Records the commit this device staged for the group and is about to send, by its
/// digest: only the log entry with exactly these bytes is this device's own commit (the
/// server's sender label is not proof; DESIGN §5.9). Forgotten before the next is staged.
pub(super) fn remember_staged_commit(conn: &Connection, gid: &[u8], commit: &[u8]) -> Result<()> {
    store::set_setting_on(conn, &staged_key(gid), Some(&digest(commit)))
}

/// Forgets the staged commit's digest (before another is staged, or once it is merged).
pub(super) fn forget_staged_commit(conn: &Connection, gid: &[u8]) -> Result<()> {
    store::set_setting_on(conn, &staged_key(gid), None)
}

/// Whether `bytes` are exactly the commit this device staged for the group.
pub(super) fn is_staged_commit(conn: &Connection, gid: &[u8], bytes: &[u8]) -> Result<bool> {
    Ok(store::setting_on(conn, &staged_key(gid))?.is_some_and(|d| d == digest(bytes)))
}

fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

fn staged_key(gid: &[u8]) -> String {
    format!("staged_commit:{}", String::from_utf8_lossy(gid))
}

/// When this device first saw `device` (e.g. `P1003/4`) in the group's tree after its
/// user had left the roster; recorded now if this is the first time.
pub(super) fn off_roster_since(
    conn: &Connection,
    gid: &[u8],
    device: &str,
    now_ms: i64,
) -> Result<i64> {
    let key = format!("off_roster:{device}:{}", String::from_utf8_lossy(gid));
    if let Some(since) = store::setting_on(conn, &key)?.and_then(|v| v.parse().ok()) {
        return Ok(since);
    }
    store::set_setting_on(conn, &key, Some(&now_ms.to_string()))?;
    Ok(now_ms)
}

fn held_key(gid: &[u8]) -> String {
    format!("held:{}", String::from_utf8_lossy(gid))
}

fn removed_key(gid: &[u8]) -> String {
    format!("removed:{}", String::from_utf8_lossy(gid))
}
