//! Membership intents kept in the profile (DESIGN §8, as libxmtp's group intents): an
//! approval, a policy change or a linked device is recorded as *queued* before anything is
//! sent, *published* while its commit is on the way, and *committed*, *superseded*
//! (nothing left to do, e.g. another owner was faster) or *failed* (refused, with the
//! reason) at the end. One that a lost connection or a crash left queued or published is
//! carried out again — re-evaluated against the group as it is then — on the next sync.
//! Commits of the server's removal proposals are not kept: every sync derives them anew.

use rathaus_protocol::GroupHandle;
use rusqlite::{params, Connection};

use super::send::Intent;
use crate::error::{ClientError, Result};

/// How long finished intents stay in the profile: 30 days.
const KEEP_FINISHED_MS: i64 = 30 * 24 * 3600 * 1000;

/// Where an intent is (a new one is `queued`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IntentState {
    Published,
    Committed,
    Superseded,
    Failed,
}

impl IntentState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Published => "published",
            Self::Committed => "committed",
            Self::Superseded => "superseded",
            Self::Failed => "failed",
        }
    }
}

/// Records a new intent as queued; returns its id. `None` for intents that are not kept.
pub(super) fn record(
    conn: &Connection,
    group: &GroupHandle,
    intent: &Intent,
) -> Result<Option<i64>> {
    if matches!(intent, Intent::PendingProposals) {
        return Ok(None);
    }
    let bytes = postcard::to_allocvec(intent)
        .map_err(|e| ClientError::Invalid(format!("cannot encode an intent: {e}")))?;
    let now = crate::time_fmt::now_ms();
    // Finished intents are kept a while for diagnostics, then forgotten.
    conn.execute(
        "DELETE FROM mls_intents
         WHERE state IN ('committed', 'superseded', 'failed') AND updated_ms < ?1",
        [now.saturating_sub(KEEP_FINISHED_MS)],
    )?;
    conn.execute(
        "INSERT INTO mls_intents (grp, intent, state, created_ms, updated_ms)
         VALUES (?1, ?2, 'queued', ?3, ?3)",
        params![group.to_string(), bytes, now],
    )?;
    Ok(Some(conn.last_insert_rowid()))
}

/// Moves an intent on; `seq` for a committed one, `error` for a failed one.
pub(super) fn set_state(
    conn: &Connection,
    id: Option<i64>,
    state: IntentState,
    seq: Option<u64>,
    error: Option<&str>,
) -> Result<()> {
    let Some(id) = id else {
        return Ok(());
    };
    conn.execute(
        "UPDATE mls_intents SET state = ?2, seq = ?3, error = ?4, updated_ms = ?5 WHERE id = ?1",
        params![
            id,
            state.as_str(),
            seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
            error,
            crate::time_fmt::now_ms()
        ],
    )?;
    Ok(())
}

/// The intents of `group` left queued or published, oldest first.
pub(super) fn unfinished(conn: &Connection, group: &GroupHandle) -> Result<Vec<(i64, Intent)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, intent FROM mls_intents
         WHERE grp = ?1 AND state IN ('queued', 'published') ORDER BY id",
    )?;
    let rows = stmt
        .query_map([group.to_string()], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for (id, bytes) in rows {
        match postcard::from_bytes::<Intent>(&bytes) {
            Ok(intent) => out.push((id, intent)),
            // Written by another version: give up on it rather than guess.
            Err(e) => set_state(
                conn,
                Some(id),
                IntentState::Failed,
                None,
                Some(&format!("unreadable intent: {e}")),
            )?,
        }
    }
    Ok(out)
}
