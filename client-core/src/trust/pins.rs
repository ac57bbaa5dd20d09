//! The `trust_pins` and `trust_notices` tables in the profile SQLite file.
//!
//! The tables are created with `IF NOT EXISTS` when the profile opens rather than by a
//! schema version step: they are self-contained, and older builds simply ignore them.

use rathaus_protocol::UserId;
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::Result;
use crate::store::RowKind;

/// A pinned device key (trust on first use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePin {
    /// Personnel number.
    pub user: UserId,
    /// Device id.
    pub device: String,
    /// The device's Ed25519 public key as last seen.
    pub key: Vec<u8>,
    /// When this key was first seen, Unix ms.
    pub first_seen_ms: i64,
    /// Whether the user compared the safety number in person and confirmed it.
    pub verified: bool,
    /// Set when the key replaced an earlier one for the same device and nobody has
    /// verified it since: the change a user must look at.
    pub changed_ms: Option<i64>,
}

/// Creates the trust tables if they do not exist yet.
pub(crate) fn create_tables(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS trust_pins (
             user TEXT NOT NULL, device TEXT NOT NULL, key BLOB NOT NULL,
             first_seen_ms INTEGER NOT NULL, verified INTEGER NOT NULL DEFAULT 0,
             changed_ms INTEGER,
             PRIMARY KEY (user, device));
         CREATE TABLE IF NOT EXISTS trust_notices (
             grp TEXT NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL,
             kind TEXT NOT NULL, text TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS trust_notices_by_group ON trust_notices(grp, seq);
         CREATE TABLE IF NOT EXISTS trust_pins_generation (
             id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
         INSERT OR IGNORE INTO trust_pins_generation(id, n) VALUES (0, 0);
         CREATE TRIGGER IF NOT EXISTS trust_pins_changed_insert AFTER INSERT ON trust_pins
         BEGIN UPDATE trust_pins_generation SET n = n + 1 WHERE id = 0; END;
         CREATE TRIGGER IF NOT EXISTS trust_pins_changed_update AFTER UPDATE ON trust_pins
         BEGIN UPDATE trust_pins_generation SET n = n + 1 WHERE id = 0; END;
         CREATE TRIGGER IF NOT EXISTS trust_pins_changed_delete AFTER DELETE ON trust_pins
         BEGIN UPDATE trust_pins_generation SET n = n + 1 WHERE id = 0; END;
         CREATE TABLE IF NOT EXISTS trust_group_pins (
             grp TEXT PRIMARY KEY, members BLOB NOT NULL, generation INTEGER NOT NULL);",
    )?;
    Ok(())
}

/// How often `trust_pins` changed: a counter the table's triggers raise with every
/// insert, update and delete, whichever code path made it.
pub(crate) fn generation(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT n FROM trust_pins_generation WHERE id = 0")?
        .query_row([], |r| r.get(0))?)
}

/// The member digest and pins generation of `group`'s last full pinning pass.
pub(crate) fn group_pass(conn: &Connection, group: &str) -> Result<Option<(Vec<u8>, i64)>> {
    Ok(conn
        .prepare_cached("SELECT members, generation FROM trust_group_pins WHERE grp = ?1")?
        .query_row([group], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Records a full pinning pass over `group`'s members.
pub(crate) fn set_group_pass(
    conn: &Connection,
    group: &str,
    members: &[u8],
    generation: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO trust_group_pins(grp, members, generation) VALUES (?1, ?2, ?3)
         ON CONFLICT(grp) DO UPDATE SET members = excluded.members,
             generation = excluded.generation",
    )?
    .execute(params![group, members, generation])?;
    Ok(())
}

/// Every pinned device of `user`, sorted by device id.
pub(crate) fn pins_of(conn: &Connection, user: &str) -> Result<Vec<DevicePin>> {
    let mut stmt = conn.prepare_cached(
        "SELECT user, device, key, first_seen_ms, verified, changed_ms FROM trust_pins
         WHERE user = ?1 ORDER BY device",
    )?;
    let pins = stmt
        .query_map([user], read_pin)?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(pins)
}

/// The pin of one device, if any.
pub(crate) fn pin(conn: &Connection, user: &str, device: &str) -> Result<Option<DevicePin>> {
    Ok(conn
        .prepare_cached(
            "SELECT user, device, key, first_seen_ms, verified, changed_ms FROM trust_pins
             WHERE user = ?1 AND device = ?2",
        )?
        .query_row(params![user, device], read_pin)
        .optional()?)
}

/// Pins a device seen for the first time.
pub(crate) fn insert(
    conn: &Connection,
    user: &str,
    device: &str,
    key: &[u8],
    now_ms: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO trust_pins(user, device, key, first_seen_ms, verified)
         VALUES (?1, ?2, ?3, ?4, 0)",
    )?
    .execute(params![user, device, key, now_ms])?;
    Ok(())
}

/// Replaces a device's key: the old verification no longer holds.
pub(crate) fn replace_key(
    conn: &Connection,
    user: &str,
    device: &str,
    key: &[u8],
    now_ms: i64,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE trust_pins SET key = ?3, first_seen_ms = ?4, verified = 0, changed_ms = ?4
         WHERE user = ?1 AND device = ?2",
    )?
    .execute(params![user, device, key, now_ms])?;
    Ok(())
}

/// Marks the given keys of `user` verified (only if they are still the pinned ones).
pub(crate) fn mark_verified(
    conn: &Connection,
    user: &str,
    keys: &[(String, Vec<u8>)],
) -> Result<()> {
    for (device, key) in keys {
        conn.prepare_cached(
            "UPDATE trust_pins SET verified = 1, changed_ms = NULL
             WHERE user = ?1 AND device = ?2 AND key = ?3",
        )?
        .execute(params![user, device, key])?;
    }
    Ok(())
}

/// Records a notice shown in `group`'s timeline after the entry `seq`.
pub(crate) fn add_notice(
    conn: &Connection,
    group: &str,
    seq: u64,
    at_ms: i64,
    kind: RowKind,
    text: &str,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO trust_notices(grp, seq, at_ms, kind, text) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        group,
        i64::try_from(seq).unwrap_or(i64::MAX),
        at_ms,
        kind,
        text
    ])?;
    Ok(())
}

fn read_pin(r: &rusqlite::Row<'_>) -> rusqlite::Result<DevicePin> {
    Ok(DevicePin {
        user: user_column(r, 0)?,
        device: r.get(1)?,
        key: r.get(2)?,
        first_seen_ms: r.get(3)?,
        verified: r.get::<_, i64>(4)? != 0,
        changed_ms: r.get(5)?,
    })
}

/// A personnel number stored in column `idx`: written from a [`UserId`], so one that
/// does not parse (the file was edited) is a store error, not a pin of nobody.
fn user_column(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<UserId> {
    let text: String = r.get(idx)?;
    UserId::parse(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ProfileStore, TimelineRow};

    fn row(seq: u64) -> TimelineRow {
        TimelineRow {
            group: "bauamt/secret".into(),
            seq,
            sender: "P1001".into(),
            sender_name: "Anna Berg".into(),
            sent_at_ms: 0,
            kind: RowKind::Text,
            text: format!("m{seq}"),
            expires_at_ms: None,
            removes: None,
            content: None,
        }
    }

    #[test]
    fn notices_follow_the_entry_they_were_found_after_and_pins_track_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ProfileStore::open(dir.path()).unwrap();
        store
            .append_fetched("bauamt/secret", &[row(1), row(2)], 2)
            .unwrap();
        let conn = store.connection();
        add_notice(conn, "bauamt/secret", 1, 5, RowKind::Warning, "key changed").unwrap();
        let kinds: Vec<(u64, RowKind)> = store
            .timeline("bauamt/secret")
            .unwrap()
            .into_iter()
            .map(|r| (r.seq, r.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (1, RowKind::Text),
                (1, RowKind::Warning),
                (2, RowKind::Text)
            ]
        );

        let conn = store.connection();
        insert(conn, "P1002", "7", &[1; 32], 10).unwrap();
        mark_verified(conn, "P1002", &[("7".to_owned(), vec![1; 32])]).unwrap();
        assert!(pin(conn, "P1002", "7").unwrap().unwrap().verified);
        replace_key(conn, "P1002", "7", &[2; 32], 20).unwrap();
        let changed = pin(conn, "P1002", "7").unwrap().unwrap();
        assert!(!changed.verified);
        assert_eq!(changed.changed_ms, Some(20));
        // Confirming the old key does not verify the new one.
        mark_verified(conn, "P1002", &[("7".to_owned(), vec![1; 32])]).unwrap();
        assert!(!pin(conn, "P1002", "7").unwrap().unwrap().verified);
    }

    #[test]
    fn every_write_to_the_pins_raises_their_generation_whoever_makes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(dir.path()).unwrap();
        let conn = store.connection();
        let g0 = generation(conn).unwrap();
        insert(conn, "P1002", "7", &[1; 32], 10).unwrap();
        let g1 = generation(conn).unwrap();
        assert!(g1 > g0);
        // A pin that is already there is not written again.
        insert(conn, "P1002", "7", &[2; 32], 11).unwrap();
        assert_eq!(generation(conn).unwrap(), g1);
        // A write through another connection to the same file counts too.
        let other = Connection::open(dir.path().join("profile.sqlite")).unwrap();
        other
            .execute("UPDATE trust_pins SET key = x'00' WHERE user = 'P1002'", [])
            .unwrap();
        let g2 = generation(conn).unwrap();
        assert!(g2 > g1);
        other.execute("DELETE FROM trust_pins", []).unwrap();
        assert!(generation(conn).unwrap() > g2);

        set_group_pass(conn, "bauamt/secret", b"digest", 5).unwrap();
        set_group_pass(conn, "bauamt/secret", b"other", 6).unwrap();
        assert_eq!(
            group_pass(conn, "bauamt/secret").unwrap(),
            Some((b"other".to_vec(), 6))
        );
        assert_eq!(group_pass(conn, "bauamt/other").unwrap(), None);
    }
}
