//! The local profile store: one SQLite file per profile holding settings, per-group
//! cursors and read marks, the timeline, and the outbox of messages not yet acknowledged.
//!
//! Every multi-row change (a fetched batch plus its cursor, an acknowledged send plus its
//! timeline row) is one SQLite transaction, so a crash never leaves them out of step.

mod fork;
mod keyfile;
mod outbox;
mod row_kind;
mod schema;
mod search;

use std::path::Path;

use rathaus_protocol::{Content, ContentIn};
use rusqlite::{params, Connection, OptionalExtension};

pub(crate) use fork::{
    cursor_mark as cursor_mark_on, cut_fork as cut_fork_on, row_mark as row_mark_on,
    set_cursor_mark as set_cursor_mark_on,
};
pub use fork::{EntryMark, ForkCut};
pub use keyfile::{load_device_key, write_device_key, KEY_FILE};
pub use outbox::{OutboxItem, UnacknowledgedItem};
pub use row_kind::{RowKind, UnknownRowKind};
pub(crate) use search::index_queued;
pub use search::LocalHit;

use crate::error::{ClientError, Result};

/// File name of the SQLite database inside a profile directory.
pub const DB_FILE: &str = "profile.sqlite";

/// The profile's SQLite database.
#[derive(Debug)]
pub struct ProfileStore {
    /// The open database.
    db: Connection,
}

/// One message as kept in the local timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineRow {
    /// Group handle.
    pub group: String,
    /// Server sequence number.
    pub seq: u64,
    /// Sender's personnel number.
    pub sender: String,
    /// Sender's display name.
    pub sender_name: String,
    /// Server receive time, Unix milliseconds.
    pub sent_at_ms: i64,
    /// What the row shows: a post, a change of one, or a row this device wrote itself.
    pub kind: RowKind,
    /// Text for display.
    pub text: String,
    /// When the entry stops being shown (announcements with an expiry), Unix ms.
    pub expires_at_ms: Option<i64>,
    /// For a moderation entry: the post it removed.
    pub removes: Option<u64>,
    /// The message content as written (posts, edits, deletes, reactions, announcements),
    /// for folding the timeline (`crate::posts`); `None` for rows the client makes itself
    /// (membership, warnings) and for text withdrawn by its author.
    pub content: Option<Content>,
}

impl TimelineRow {
    /// What identifies the log entry this row shows (see [`EntryMark`]).
    pub fn mark(&self) -> EntryMark {
        EntryMark {
            sender: self.sender.clone(),
            sent_at_ms: self.sent_at_ms,
        }
    }
}

impl ProfileStore {
    /// Opens (creating if needed) the database in `dir`, with owner-only permissions.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(DB_FILE);
        let db = Connection::open(&path)?;
        restrict_permissions(&path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        // Deleted rows (history, MLS secrets of past epochs) are overwritten with zeros
        // instead of lingering in free pages of the file.
        db.pragma_update(None, "secure_delete", "ON")?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        db.set_prepared_statement_cache_capacity(crate::client::STATEMENT_CACHE);
        let store = Self { db };
        store.migrate()?;
        crate::trust::create_tables(&store.db)?;
        fork::create_tables(&store.db)?;
        crate::files::create_tables(&store.db)?;
        Ok(store)
    }

    /// The underlying connection (the MLS storage shares the file).
    pub fn connection(&self) -> &Connection {
        &self.db
    }

    /// A setting, if set.
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    /// Sets a setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO settings(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }

    /// The CA certificates (DER, in the order given at enrollment) the server is validated
    /// against; empty if the profile pins a fingerprint instead.
    pub fn server_ca(&self) -> Result<Vec<Vec<u8>>> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT der FROM server_ca ORDER BY pos")?;
        let rows = stmt
            .query_map([], |r| r.get(0))?
            .collect::<std::result::Result<Vec<Vec<u8>>, _>>()?;
        Ok(rows)
    }

    /// Replaces the CA certificates (DER) the server is validated against.
    pub fn set_server_ca<'a>(
        &self,
        certificates: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<()> {
        let tx = self.db.unchecked_transaction()?;
        tx.prepare_cached("DELETE FROM server_ca")?.execute([])?;
        for (pos, der) in certificates.into_iter().enumerate() {
            tx.prepare_cached("INSERT INTO server_ca(pos, der) VALUES (?1, ?2)")?
                .execute(params![i64::try_from(pos).unwrap_or(i64::MAX), der])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The last seq fetched for `group` (0 if never).
    pub fn cursor(&self, group: &str) -> Result<u64> {
        let seq: Option<i64> = self
            .db
            .prepare_cached("SELECT seq FROM cursors WHERE grp = ?1")?
            .query_row([group], |r| r.get(0))
            .optional()?;
        Ok(seq.map_or(0, to_u64))
    }

    /// Stores fetched timeline rows and advances the group's cursor to `cursor`, in one
    /// transaction. Rows already present (same group and seq) are left as they are.
    pub fn append_fetched(&mut self, group: &str, rows: &[TimelineRow], cursor: u64) -> Result<()> {
        let tx = self.db.transaction()?;
        {
            // Public groups: a fetched entry under a seq this device holds for another
            // entry means the server was restored from an older copy (fork.rs).
            let requeue_own =
                rathaus_protocol::GroupHandle::parse(group).is_ok_and(|g| !g.is_secret());
            let now = crate::time_fmt::now_ms();
            let mut prev: Option<u64> = tx
                .prepare_cached("SELECT seq FROM cursors WHERE grp = ?1")?
                .query_row([group], |r| r.get::<_, i64>(0))
                .optional()?
                .map(to_u64);
            for row in rows {
                if let Some(prev) = prev.filter(|_| requeue_own) {
                    fork::cut_if_skipped(&tx, group, prev, row.seq, requeue_own, now)?;
                }
                fork::cut_if_taken(&tx, group, row.seq, &row.mark(), requeue_own, now)?;
                insert_row(&tx, row)?;
                prev = Some(row.seq);
            }
            tx.prepare_cached(
                "INSERT INTO cursors(grp, seq) VALUES (?1, ?2)
                 ON CONFLICT(grp) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?
            .execute(params![group, to_i64(cursor)])?;
            index_queued(&tx)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The whole local timeline of `group`, oldest first.
    pub fn timeline(&self, group: &str) -> Result<Vec<TimelineRow>> {
        self.timeline_at(group, None)
    }

    /// The timeline of `group` as shown at `now_ms`: entries that expired are left out.
    pub fn visible_timeline(&self, group: &str, now_ms: i64) -> Result<Vec<TimelineRow>> {
        self.timeline_at(group, Some(now_ms))
    }

    fn timeline_at(&self, group: &str, now_ms: Option<i64>) -> Result<Vec<TimelineRow>> {
        let mut stmt = self.db.prepare_cached(
            // Trust notices (crate::trust) follow the entry that was newest when they were
            // found.
            "SELECT grp, seq, sender, sender_name, sent_at_ms, kind, text, expires_at_ms, removes,
                    content, 0 AS src, 0 AS at
             FROM timeline WHERE grp = ?1
             AND (?2 IS NULL OR expires_at_ms IS NULL OR expires_at_ms > ?2)
             UNION ALL
             SELECT grp, seq, ?3, ?4, at_ms, kind, text, NULL, NULL, NULL, 1 AS src, rowid AS at
             FROM trust_notices WHERE grp = ?1
             ORDER BY seq, src, at",
        )?;
        let rows = stmt
            .query_map(
                params![
                    group,
                    now_ms,
                    crate::trust::TRUST_SENDER,
                    "Rathaus (this device)"
                ],
                |r| {
                    Ok(TimelineRow {
                        group: r.get(0)?,
                        seq: to_u64(r.get(1)?),
                        sender: r.get(2)?,
                        sender_name: r.get(3)?,
                        sent_at_ms: r.get(4)?,
                        kind: r.get(5)?,
                        text: r.get(6)?,
                        expires_at_ms: r.get(7)?,
                        removes: r.get::<_, Option<i64>>(8)?.map(to_u64),
                        content: decode_content(r.get::<_, Option<Vec<u8>>>(9)?),
                    })
                },
            )?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The mark (sender, receive time) of the local row `seq` of `group`, if any.
    pub fn row_mark(&self, group: &str, seq: u64) -> Result<Option<EntryMark>> {
        fork::row_mark(&self.db, group, seq)
    }

    /// The lowest seq of `group` this device holds a row for.
    pub fn first_row_seq(&self, group: &str) -> Result<Option<u64>> {
        let seq: Option<i64> = self
            .db
            .prepare_cached("SELECT min(seq) FROM timeline WHERE grp = ?1")?
            .query_row([group], |r| r.get(0))?;
        Ok(seq.map(to_u64))
    }

    /// The marks of the local rows of `group` with `lo < seq <= hi`, by seq.
    pub fn row_marks(&self, group: &str, lo: u64, hi: u64) -> Result<Vec<(u64, EntryMark)>> {
        fork::row_marks(&self.db, group, lo, hi)
    }

    /// Moves the cursor of `group` back to `to` (never forward) with a `warning` notice,
    /// in one transaction: the server's log of a secret group differs from what this
    /// device holds (see `crate::restore`).
    pub fn rewind_cursor(&mut self, group: &str, to: u64, notice: &str) -> Result<()> {
        let tx = self.db.transaction()?;
        tx.prepare_cached("UPDATE cursors SET seq = min(seq, ?2) WHERE grp = ?1")?
            .execute(params![group, to_i64(to)])?;
        crate::trust::add_notice(
            &tx,
            group,
            to,
            crate::time_fmt::now_ms(),
            RowKind::Warning,
            notice,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Sets aside this device's history of `group` from seq `from` on, after the server
    /// was restored from an older copy (see `fork.rs`), in one transaction.
    pub fn cut_fork(&mut self, group: &str, from: u64, requeue_own: bool) -> Result<ForkCut> {
        let tx = self.db.transaction()?;
        let cut = fork::cut_fork(&tx, group, from, requeue_own, crate::time_fmt::now_ms())?;
        tx.commit()?;
        Ok(cut)
    }

    /// Highest seq the user has read in `group`.
    pub fn read_mark(&self, group: &str) -> Result<u64> {
        let seq: Option<i64> = self
            .db
            .prepare_cached("SELECT seq FROM read_marks WHERE grp = ?1")?
            .query_row([group], |r| r.get(0))
            .optional()?;
        Ok(seq.map_or(0, to_u64))
    }

    /// Marks everything up to `seq` in `group` as read.
    pub fn mark_read(&self, group: &str, seq: u64) -> Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO read_marks(grp, seq) VALUES (?1, ?2)
             ON CONFLICT(grp) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?
            .execute(params![group, to_i64(seq)])?;
        Ok(())
    }

    /// Records that the rows `seqs` of `group` were shown to the user (they do not count
    /// as unread, even before the read mark passes them).
    pub fn mark_seen(&self, group: &str, seqs: impl IntoIterator<Item = u64>) -> Result<()> {
        let tx = self.db.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE timeline SET seen = 1 WHERE grp = ?1 AND seq = ?2 AND seen = 0",
            )?;
            for seq in seqs {
                stmt.execute(params![group, to_i64(seq)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The seqs after `after` in `group` that were shown to the user.
    pub fn seen_after(&self, group: &str, after: u64) -> Result<std::collections::HashSet<u64>> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT seq FROM timeline WHERE grp = ?1 AND seq > ?2 AND seen = 1")?;
        let seqs = stmt
            .query_map(params![group, to_i64(after)], |r| r.get::<_, i64>(0))?
            .map(|s| s.map(to_u64))
            .collect::<std::result::Result<_, _>>()?;
        Ok(seqs)
    }

    /// Whether the entry `seq` of `group` was written by this device.
    pub fn is_own_entry(&self, group: &str, seq: u64) -> Result<bool> {
        Ok(self
            .db
            .prepare_cached("SELECT 1 FROM mls_own_entries WHERE grp = ?1 AND seq = ?2")?
            .query_row(params![group, to_i64(seq)], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Remembers a user's display name.
    pub fn set_user_name(&self, user: &str, name: &str) -> Result<()> {
        self.set_user_names([(user, name)])
    }

    /// Remembers many users' display names in one transaction (one fsync for a whole
    /// roster, not one per user). A name that did not change is not rewritten, so a
    /// refresh that learns nothing new writes nothing.
    pub fn set_user_names<'a>(
        &self,
        names: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<()> {
        let tx = self.db.unchecked_transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO user_names(user, name) VALUES (?1, ?2)
                 ON CONFLICT(user) DO UPDATE SET name = excluded.name
                 WHERE name IS NOT excluded.name",
            )?;
            for (user, name) in names {
                upsert.execute(params![user, name])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A user's display name, if known.
    pub fn user_name(&self, user: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .prepare_cached("SELECT name FROM user_names WHERE user = ?1")?
            .query_row([user], |r| r.get(0))
            .optional()?)
    }
}

/// Stores timeline rows and advances the group's cursor to at least `cursor`, on any
/// connection to the profile file and inside the caller's transaction. The MLS engine
/// uses this so that a processed message and its history rows commit together.
pub(crate) fn append_rows(
    conn: &Connection,
    group: &str,
    rows: &[TimelineRow],
    cursor: Option<u64>,
) -> Result<()> {
    for row in rows {
        insert_row(conn, row)?;
    }
    if let Some(cursor) = cursor {
        conn.prepare_cached(
            "INSERT INTO cursors(grp, seq) VALUES (?1, ?2)
             ON CONFLICT(grp) DO UPDATE SET seq = max(seq, excluded.seq)",
        )?
        .execute(params![group, to_i64(cursor)])?;
    }
    Ok(())
}

/// Remembers that this device wrote the entry `seq` of `group` (inside the caller's
/// transaction).
pub(crate) fn record_own_entry(conn: &Connection, group: &str, seq: u64) -> Result<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO mls_own_entries(grp, seq) VALUES (?1, ?2)")?
        .execute(params![group, to_i64(seq)])?;
    Ok(())
}

/// The cursor of `group` read through any connection to the profile file.
pub(crate) fn cursor_on(conn: &Connection, group: &str) -> Result<u64> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM cursors WHERE grp = ?1")?
        .query_row([group], |r| r.get(0))
        .optional()?;
    Ok(seq.map_or(0, to_u64))
}

/// A setting read through any connection to the profile file (e.g. inside the MLS
/// engine's transaction).
pub(crate) fn setting_on(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// Sets (`Some`) or clears (`None`) a setting through any connection to the profile file.
pub(crate) fn set_setting_on(conn: &Connection, key: &str, value: Option<&str>) -> Result<()> {
    match value {
        Some(value) => conn
            .prepare_cached(
                "INSERT INTO settings(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?,
        None => conn
            .prepare_cached("DELETE FROM settings WHERE key = ?1")?
            .execute([key])?,
    };
    Ok(())
}

/// Inserts a timeline row (ignoring one already present), applies a moderation
/// entry's tombstone to the post it removes, and an author's delete to the post it
/// withdraws (see [`retract_post`]).
fn insert_row(tx: &Connection, row: &TimelineRow) -> Result<()> {
    let content = row
        .content
        .as_ref()
        .and_then(|c| postcard::to_allocvec(c).ok());
    let target = row.content.as_ref().and_then(Content::target);
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO timeline
             (grp, seq, sender, sender_name, sent_at_ms, kind, text, expires_at_ms, removes,
              content, target)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?
        .execute(params![
            row.group,
            to_i64(row.seq),
            row.sender,
            row.sender_name,
            row.sent_at_ms,
            row.kind,
            row.text,
            row.expires_at_ms,
            row.removes.map(to_i64),
            content,
            target.map(to_i64)
        ])?;
    if inserted > 0 {
        if let Some(rathaus_protocol::ContentBody::Delete { target }) =
            row.content.as_ref().map(|c| &c.body)
        {
            retract_post(tx, &row.group, *target, &row.sender)?;
        }
    }
    if let Some(target) = row.removes {
        tx.prepare_cached(
            "UPDATE timeline SET kind = 'removed', text = ?3, content = NULL
             WHERE grp = ?1 AND seq = ?2",
        )?
        .execute(params![
            row.group,
            to_i64(target),
            format!("(removed by moderator {})", row.sender_name)
        ])?;
    }
    Ok(())
}

/// The one place a post's text leaves this device: its author withdrew it. The post
/// `target` of `group` keeps its place as a `deleted` row without text, and the text of
/// every edit of it is wiped too (`secure_delete` overwrites the old bytes). Only the
/// author's own posts are touched: a delete by anyone else changes nothing here and is
/// shown as a warning when the timeline is folded (`crate::posts`). A local search index
/// forgets the text here.
pub(crate) fn retract_post(
    conn: &Connection,
    group: &str,
    target: u64,
    author: &str,
) -> Result<()> {
    let withdrawn = conn
        .prepare_cached(
            "UPDATE timeline SET kind = 'deleted', text = '', content = NULL
             WHERE grp = ?1 AND seq = ?2 AND sender = ?3 AND kind IN ('text', 'attachment')",
        )?
        .execute(params![group, to_i64(target), author])?;
    if withdrawn > 0 {
        conn.prepare_cached(
            "UPDATE timeline SET text = '', content = NULL
             WHERE grp = ?1 AND target = ?2 AND sender = ?3 AND kind = 'edit'",
        )?
        .execute(params![group, to_i64(target), author])?;
    }
    Ok(())
}

/// Content as stored in the timeline; a row whose bytes this build cannot read (none
/// should exist: only this code writes them) is shown without it. Recorded content is
/// not judged again: a row written under older, looser rules still folds as it did.
fn decode_content(bytes: Option<Vec<u8>>) -> Option<Content> {
    postcard::from_bytes::<ContentIn>(&bytes?)
        .ok()
        .map(ContentIn::into_recorded)
}

/// SQLite integers are signed; seqs never reach 2^63 in practice, and clamping keeps the
/// conversion total.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(unix)]
pub(crate) fn restrict_permissions(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if path.is_dir() { 0o700 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        ClientError::io(
            format!("cannot restrict permissions of {}", path.display()),
            e,
        )
    })
}

#[cfg(not(unix))]
pub(crate) fn restrict_permissions(_path: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rathaus_protocol::ClientMsgId;

    fn row(seq: u64) -> TimelineRow {
        TimelineRow {
            group: "bauamt".into(),
            seq,
            sender: "P1".into(),
            sender_name: "Anna".into(),
            sent_at_ms: 0,
            kind: RowKind::Text,
            text: format!("m{seq}"),
            expires_at_ms: None,
            removes: None,
            content: None,
        }
    }

    #[test]
    fn fetched_rows_and_cursor_persist_and_do_not_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = ProfileStore::open(dir.path()).unwrap();
            s.append_fetched("bauamt", &[row(1), row(2)], 2).unwrap();
            s.append_fetched("bauamt", &[row(2), row(3)], 3).unwrap();
        }
        let s = ProfileStore::open(dir.path()).unwrap();
        assert_eq!(s.cursor("bauamt").unwrap(), 3);
        let seqs: Vec<u64> = s
            .timeline("bauamt")
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    #[test]
    fn kinds_are_stored_as_their_names_and_an_unknown_one_is_a_store_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProfileStore::open(dir.path()).unwrap();
        let mut warning = row(2);
        warning.kind = RowKind::Warning;
        s.append_fetched("bauamt", &[row(1), warning], 2).unwrap();
        // The column holds the same strings as profiles written before `RowKind`.
        let stored: Vec<String> =
            s.db.prepare("SELECT kind FROM timeline WHERE grp = 'bauamt' ORDER BY seq")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<std::result::Result<_, _>>()
                .unwrap();
        assert_eq!(stored, ["text", "warning"]);
        let kinds: Vec<RowKind> = s
            .timeline("bauamt")
            .unwrap()
            .iter()
            .map(|r| r.kind)
            .collect();
        assert_eq!(kinds, [RowKind::Text, RowKind::Warning]);

        // A kind this build does not know (a newer Rathaus wrote it) is refused, not
        // guessed at and not a panic.
        s.db.execute("UPDATE timeline SET kind = 'poll' WHERE seq = 2", [])
            .unwrap();
        let err = s.timeline("bauamt").unwrap_err();
        assert!(matches!(err, ClientError::Store(_)), "{err:?}");
        assert!(err.to_string().contains("\"poll\""), "{err}");
    }

    #[test]
    fn outbox_keeps_unacked_messages_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = ClientMsgId([1; 16]);
        {
            let s = ProfileStore::open(dir.path()).unwrap();
            s.enqueue(id, "bauamt", b"body", 1).unwrap();
            s.mark_sent(id).unwrap();
        }
        let mut s = ProfileStore::open(dir.path()).unwrap();
        let pending = s.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].attempts, 1);
        s.mark_acked(id, &row(7)).unwrap();
        assert!(s.pending().unwrap().is_empty());
        assert_eq!(s.timeline("bauamt").unwrap()[0].seq, 7);
    }

    #[test]
    fn server_ca_certificates_persist_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = ProfileStore::open(dir.path()).unwrap();
            assert!(s.server_ca().unwrap().is_empty());
            s.set_server_ca([b"first".as_slice(), b"second".as_slice()])
                .unwrap();
        }
        let s = ProfileStore::open(dir.path()).unwrap();
        assert_eq!(
            s.server_ca().unwrap(),
            vec![b"first".to_vec(), b"second".to_vec()]
        );
    }

    #[test]
    fn a_schema_2_profile_is_migrated_and_keeps_its_settings() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What a build before CA validation left behind.
            let db = Connection::open(dir.path().join(DB_FILE)).unwrap();
            db.execute_batch(
                "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE cursors (grp TEXT PRIMARY KEY, seq INTEGER NOT NULL);
                 CREATE TABLE read_marks (grp TEXT PRIMARY KEY, seq INTEGER NOT NULL);
                 CREATE TABLE timeline (
                     grp TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
                     sender_name TEXT NOT NULL, sent_at_ms INTEGER NOT NULL,
                     kind TEXT NOT NULL, text TEXT NOT NULL,
                     expires_at_ms INTEGER, removes INTEGER,
                     PRIMARY KEY (grp, seq));
                 CREATE TABLE outbox (
                     client_id BLOB PRIMARY KEY, grp TEXT NOT NULL, body BLOB NOT NULL,
                     state TEXT NOT NULL, created_ms INTEGER NOT NULL,
                     attempts INTEGER NOT NULL, seq INTEGER, failure TEXT);
                 CREATE TABLE mls_own_entries (
                     grp TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (grp, seq));
                 CREATE TABLE user_names (user TEXT PRIMARY KEY, name TEXT NOT NULL);
                 INSERT INTO settings VALUES ('fingerprint', 'SHA256:00');
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let s = ProfileStore::open(dir.path()).unwrap();
        assert_eq!(
            s.setting("fingerprint").unwrap().as_deref(),
            Some("SHA256:00")
        );
        assert!(s.server_ca().unwrap().is_empty());
    }

    /// A deleted secret does not survive in the file's free pages (`secure_delete`).
    #[test]
    fn deleted_rows_are_overwritten_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let marker = "SECRET-EPOCH-KEY-0123456789abcdef";
        let s = ProfileStore::open(dir.path()).unwrap();
        let db = s.connection();
        db.prepare_cached("CREATE TABLE scratch (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
            .unwrap()
            .execute([])
            .unwrap();
        db.prepare_cached("INSERT INTO scratch VALUES ('k', ?1)")
            .unwrap()
            .execute([marker.repeat(64)])
            .unwrap();
        db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        let path = dir.path().join(DB_FILE);
        let found = |needle: &str| {
            let bytes = std::fs::read(&path).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        };
        assert!(found(marker), "the row is in the file before it is deleted");
        db.prepare_cached("DELETE FROM scratch")
            .unwrap()
            .execute([])
            .unwrap();
        db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        assert!(!found(marker), "the deleted row survived in the file");
        let on: i64 = db
            .pragma_query_value(None, "secure_delete", |r| r.get(0))
            .unwrap();
        assert_eq!(on, 1);
    }

    fn text_row(group: &str, seq: u64, at: i64, text: &str) -> TimelineRow {
        TimelineRow {
            group: group.into(),
            seq,
            sent_at_ms: at,
            text: text.into(),
            ..row(seq)
        }
    }

    #[test]
    fn local_search_matches_prefixes_and_follows_moderation() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProfileStore::open(dir.path()).unwrap();
        s.append_fetched(
            "bauamt/secret",
            &[
                text_row("bauamt/secret", 1, 10, "Die Baustellen am Rathausplatz"),
                text_row("bauamt/secret", 2, 20, "Mittagessen um zwölf"),
            ],
            2,
        )
        .unwrap();
        s.append_fetched(
            "bauamt",
            &[text_row("bauamt", 1, 30, "Baustelle Nord ist fertig")],
            1,
        )
        .unwrap();
        let seqs = |hits: Vec<LocalHit>| -> Vec<(String, u64)> {
            hits.into_iter().map(|h| (h.group, h.seq)).collect()
        };
        let hits = s.search_timeline("baustelle", None, true, 0, 10).unwrap();
        assert_eq!(seqs(hits), vec![("bauamt/secret".to_owned(), 1)]);
        let all = s.search_timeline("Baustelle", None, false, 0, 10).unwrap();
        assert_eq!(all.len(), 2);
        // Diacritics are folded: "zwolf" finds "zwölf".
        assert_eq!(
            s.search_timeline("zwolf", Some("bauamt/secret"), false, 0, 10)
                .unwrap()
                .len(),
            1
        );
        // A moderator's removal takes the words out.
        let mut note = row(2);
        note.kind = RowKind::Moderation;
        note.removes = Some(1);
        s.append_fetched("bauamt", &[note], 2).unwrap();
        let left = s
            .search_timeline("Baustelle", Some("bauamt"), false, 0, 10)
            .unwrap();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn local_search_treats_fts_syntax_as_plain_words() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProfileStore::open(dir.path()).unwrap();
        s.append_fetched(
            "x/secret",
            &[text_row("x/secret", 1, 1, "Antrag OR Bescheid")],
            1,
        )
        .unwrap();
        for q in [
            "\"",
            "\"Antrag",
            "Antrag*",
            "NEAR(a b)",
            "text:Antrag",
            "(",
            "-",
            "^Antrag",
            "Antrag AND",
            "\u{0}",
            "''; DROP TABLE timeline; --",
        ] {
            s.search_timeline(q, None, false, 0, 10)
                .unwrap_or_else(|e| panic!("{q:?}: {e}"));
        }
        assert_eq!(
            s.search_timeline("\"Antrag\"", None, false, 0, 10)
                .unwrap()
                .len(),
            1
        );
        assert!(s
            .search_timeline("***", None, false, 0, 10)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn index_changes_queued_in_a_transaction_apply_in_order_and_searches_see_them_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProfileStore::open(dir.path()).unwrap();
        let hits = |s: &ProfileStore, q: &str| {
            s.search_timeline(q, None, false, 0, 10)
                .unwrap()
                .into_iter()
                .map(|h| h.seq)
                .collect::<Vec<_>>()
        };
        s.append_fetched("bauamt", &[text_row("bauamt", 1, 1, "Baustelle Nord")], 1)
            .unwrap();
        // Stored by a path that leaves the change queued: a search finds it all the same.
        append_rows(
            &s.db,
            "bauamt",
            &[text_row("bauamt", 2, 2, "Kantine geschlossen")],
            Some(2),
        )
        .unwrap();
        assert_eq!(hits(&s, "Kantine"), vec![2]);
        // One transaction stores a row, replaces its text, and removes another.
        let tx = s.db.transaction().unwrap();
        append_rows(
            &tx,
            "bauamt",
            &[text_row("bauamt", 3, 3, "Turnhalle")],
            Some(3),
        )
        .unwrap();
        tx.execute("UPDATE timeline SET text = 'Sporthalle' WHERE seq = 3", [])
            .unwrap();
        tx.execute("DELETE FROM timeline WHERE seq = 1", [])
            .unwrap();
        index_queued(&tx).unwrap();
        tx.commit().unwrap();
        assert!(hits(&s, "Turnhalle").is_empty());
        assert_eq!(hits(&s, "Sporthalle"), vec![3]);
        assert!(hits(&s, "Baustelle").is_empty());
        let queued: i64 =
            s.db.query_row("SELECT count(*) FROM timeline_fts_queue", [], |r| r.get(0))
                .unwrap();
        assert_eq!(queued, 0);
        // The index holds exactly the rows' words (FTS5 checks against its content table).
        s.db.execute(
            "INSERT INTO timeline_fts(timeline_fts, rank) VALUES ('integrity-check', 1)",
            [],
        )
        .unwrap();
    }

    #[test]
    fn a_schema_5_profile_gets_its_timeline_indexed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = ProfileStore::open(dir.path()).unwrap();
            s.append_fetched("bauamt", &[text_row("bauamt", 1, 1, "Straßensperrung")], 1)
                .unwrap();
            // What a build before local search left behind.
            s.db.execute_batch(
                "DROP TRIGGER timeline_fts_insert; DROP TRIGGER timeline_fts_delete;
                 DROP TRIGGER timeline_fts_update; DROP TABLE timeline_fts;
                 DROP TABLE timeline_fts_queue;
                 PRAGMA user_version = 5;",
            )
            .unwrap();
        }
        let s = ProfileStore::open(dir.path()).unwrap();
        let hits = s
            .search_timeline("strassen straßen", None, false, 0, 10)
            .unwrap();
        assert!(hits.is_empty(), "both words are required");
        let hits = s.search_timeline("Straßen", None, false, 0, 10).unwrap();
        assert_eq!(hits.len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn database_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let _s = ProfileStore::open(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(DB_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }
}
