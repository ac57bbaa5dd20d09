//! A server restored from an older copy of its data: its log of a group ends below what
//! this device has shown, and the seqs after that point are given to new posts. The
//! device finds the first seq where its history and the server's part ([`cut_fork`] is
//! told where) and sets its own branch aside, so a new post is never hidden behind an old
//! one with the same number, and nothing it showed is silently forgotten:
//!
//! - the rows from that seq on move to `forked_rows` (kept on this device);
//! - a `warning` notice in the timeline says what happened and lists them;
//! - this device's own public posts among them go back into the outbox and are sent
//!   again (the restored server does not know them);
//! - the cursor and the read mark go back to just before the fork, so the server's new
//!   entries are fetched and count as unread.
//!
//! The decision which seq is the first of the fork is made in `crate::sync::fork` by
//! comparing entries; this module only carries it out, in one transaction.

use rusqlite::{params, Connection, OptionalExtension};

use super::{to_i64, to_u64, RowKind};
use crate::error::Result;

/// What identifies a stored log entry across copies of the server's data: who sent it
/// and when the server received it (moderation keeps both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMark {
    /// Sender's personnel number.
    pub sender: String,
    /// Server receive time, Unix milliseconds.
    pub sent_at_ms: i64,
}

/// What [`cut_fork`] set aside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForkCut {
    /// Timeline rows moved to `forked_rows`.
    pub rows: usize,
    /// This device's own posts put back into the outbox.
    pub requeued: usize,
}

/// How many of the set-aside posts the notice lists by name.
const NOTICE_LISTS: usize = 5;
/// How much of each listed post's text the notice shows.
const NOTICE_TEXT_CHARS: usize = 80;

/// Creates the table of set-aside rows if it does not exist yet.
pub(crate) fn create_tables(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS forked_rows (
             grp TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
             sender_name TEXT NOT NULL, sent_at_ms INTEGER NOT NULL,
             kind TEXT NOT NULL, text TEXT NOT NULL, forked_ms INTEGER NOT NULL);
         CREATE INDEX IF NOT EXISTS forked_rows_by_group ON forked_rows(grp, seq);
         CREATE TABLE IF NOT EXISTS cursor_marks (
             grp TEXT PRIMARY KEY, seq INTEGER NOT NULL, sender TEXT NOT NULL,
             sent_at_ms INTEGER NOT NULL);",
    )?;
    Ok(())
}

/// The mark of the local row `seq` of `group`, if this device holds one.
pub(crate) fn row_mark(conn: &Connection, group: &str, seq: u64) -> Result<Option<EntryMark>> {
    Ok(conn
        .prepare_cached("SELECT sender, sent_at_ms FROM timeline WHERE grp = ?1 AND seq = ?2")?
        .query_row(params![group, to_i64(seq)], |r| {
            Ok(EntryMark {
                sender: r.get(0)?,
                sent_at_ms: r.get(1)?,
            })
        })
        .optional()?)
}

/// Remembers the server's mark of the entry at `seq`, the cursor of `group` after a page
/// of a secret group (whose rows do not always carry the server's time).
pub(crate) fn set_cursor_mark(
    conn: &Connection,
    group: &str,
    seq: u64,
    mark: &EntryMark,
) -> Result<()> {
    conn.execute(
        "INSERT INTO cursor_marks(grp, seq, sender, sent_at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(grp) DO UPDATE SET seq = excluded.seq, sender = excluded.sender,
         sent_at_ms = excluded.sent_at_ms",
        params![group, to_i64(seq), mark.sender, mark.sent_at_ms],
    )?;
    Ok(())
}

/// The remembered mark of the entry at `seq` of `group`, if that is the one remembered.
pub(crate) fn cursor_mark(conn: &Connection, group: &str, seq: u64) -> Result<Option<EntryMark>> {
    Ok(conn
        .prepare_cached("SELECT sender, sent_at_ms FROM cursor_marks WHERE grp = ?1 AND seq = ?2")?
        .query_row(params![group, to_i64(seq)], |r| {
            Ok(EntryMark {
                sender: r.get(0)?,
                sent_at_ms: r.get(1)?,
            })
        })
        .optional()?)
}

/// The marks of the local rows of `group` with `lo < seq <= hi`, by seq.
pub(crate) fn row_marks(
    conn: &Connection,
    group: &str,
    lo: u64,
    hi: u64,
) -> Result<Vec<(u64, EntryMark)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, sender, sent_at_ms FROM timeline
         WHERE grp = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq",
    )?;
    let marks = stmt
        .query_map(params![group, to_i64(lo), to_i64(hi)], |r| {
            Ok((
                to_u64(r.get(0)?),
                EntryMark {
                    sender: r.get(1)?,
                    sent_at_ms: r.get(2)?,
                },
            ))
        })?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(marks)
}

/// Sets aside everything of `group` from `from` on (see the module docs), inside the
/// caller's transaction. `requeue_own` puts this device's acknowledged posts from `from`
/// on back into the outbox (public groups: their body is the plaintext post).
pub(crate) fn cut_fork(
    conn: &Connection,
    group: &str,
    from: u64,
    requeue_own: bool,
    now_ms: i64,
) -> Result<ForkCut> {
    cut_range(conn, group, from, None, requeue_own, now_ms)
}

/// [`cut_fork`] of the seqs `from..until` only (`None`: no end).
fn cut_range(
    conn: &Connection,
    group: &str,
    from: u64,
    until: Option<u64>,
    requeue_own: bool,
    now_ms: i64,
) -> Result<ForkCut> {
    let from = from.max(1);
    let from_i = to_i64(from);
    let until_i = until.map_or(i64::MAX, to_i64);
    let listed: Vec<(i64, String, String)> = conn
        .prepare_cached(
            "SELECT seq, sender_name, text FROM timeline
             WHERE grp = ?1 AND seq >= ?2 AND seq < ?4
               AND kind NOT IN ('mls', 'warning', 'membership')
             ORDER BY seq LIMIT ?3",
        )?
        .query_map(
            params![
                group,
                from_i,
                i64::try_from(NOTICE_LISTS).unwrap_or(5),
                until_i
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let rows = conn.execute(
        "INSERT INTO forked_rows
         (grp, seq, sender, sender_name, sent_at_ms, kind, text, forked_ms)
         SELECT grp, seq, sender, sender_name, sent_at_ms, kind, text, ?3
         FROM timeline WHERE grp = ?1 AND seq >= ?2 AND seq < ?4",
        params![group, from_i, now_ms, until_i],
    )?;
    conn.execute(
        "DELETE FROM timeline WHERE grp = ?1 AND seq >= ?2 AND seq < ?3",
        params![group, from_i, until_i],
    )?;
    // Entries this device wrote are skipped when fetched back; the seqs from `from` on
    // now belong to other entries.
    conn.execute(
        "DELETE FROM mls_own_entries WHERE grp = ?1 AND seq >= ?2 AND seq < ?3",
        params![group, from_i, until_i],
    )?;
    conn.execute(
        "UPDATE trust_notices SET seq = ?2 - 1 WHERE grp = ?1 AND seq >= ?2 AND seq < ?3",
        params![group, from_i, until_i],
    )?;
    let requeued = if requeue_own {
        conn.execute(
            "UPDATE outbox SET state = 'queued', seq = NULL, attempts = 0, failure = NULL
             WHERE grp = ?1 AND state = 'acked' AND seq >= ?2 AND seq < ?3 AND failure IS NULL",
            params![group, from_i, until_i],
        )?
    } else {
        0
    };
    conn.execute(
        "INSERT INTO cursors(grp, seq) VALUES (?1, ?2)
         ON CONFLICT(grp) DO UPDATE SET seq = min(seq, excluded.seq)",
        params![group, from_i - 1],
    )?;
    conn.execute(
        "UPDATE read_marks SET seq = min(seq, ?2) WHERE grp = ?1",
        params![group, from_i - 1],
    )?;
    let cut = ForkCut { rows, requeued };
    let text = notice_text(from, until, &cut, &listed);
    crate::trust::add_notice(conn, group, from - 1, now_ms, RowKind::Warning, &text)?;
    Ok(cut)
}

fn notice_text(
    from: u64,
    until: Option<u64>,
    cut: &ForkCut,
    listed: &[(i64, String, String)],
) -> String {
    let mut text = match until {
        None => format!(
            "The server's history of this group ends before #{from}: it was restored from \
             an older copy. From #{from} on, the numbers belong to the server's new posts."
        ),
        Some(until) => format!(
            "The server's history of this group lacks #{from} to #{}: it was restored from \
             an older copy and forgot them. Its new posts are numbered from #{until} on.",
            until - 1
        ),
    };
    if cut.rows > 0 {
        text.push_str(&format!(
            " {} entr{} this device had shown from #{from} on {} no longer on the server; \
             this device keeps {}.",
            cut.rows,
            if cut.rows == 1 { "y" } else { "ies" },
            if cut.rows == 1 { "is" } else { "are" },
            if cut.rows == 1 { "it" } else { "them" },
        ));
    }
    for (seq, name, post) in listed {
        let short: String = post.chars().take(NOTICE_TEXT_CHARS).collect();
        let more = if post.chars().count() > NOTICE_TEXT_CHARS {
            "…"
        } else {
            ""
        };
        text.push_str(&format!(" [was #{seq}, {name}: {short}{more}]"));
    }
    if cut.requeued > 0 {
        text.push_str(&format!(
            " Your {} post{} among them {} sent again.",
            cut.requeued,
            if cut.requeued == 1 { "" } else { "s" },
            if cut.requeued == 1 { "is" } else { "are" },
        ));
    }
    text
}

/// If the row about to be stored, at `seq`, follows `prev` (the entry fetched before it,
/// or the cursor) in a later generation of the log (`rathaus_protocol::log`), rows this
/// device holds between the two are entries the restored server forgot: within a
/// generation a log has no gaps, and retention removes the oldest entries, never one
/// between two it keeps. Sets those rows aside (and nothing else).
pub(crate) fn cut_if_skipped(
    conn: &Connection,
    group: &str,
    prev: u64,
    seq: u64,
    requeue_own: bool,
    now_ms: i64,
) -> Result<Option<ForkCut>> {
    use rathaus_protocol::log::generation_of;
    if generation_of(seq) <= generation_of(prev) {
        return Ok(None);
    }
    let first: Option<i64> = conn
        .prepare_cached(
            "SELECT min(seq) FROM timeline
             WHERE grp = ?1 AND seq > ?2 AND seq < ?3 AND kind NOT IN ('warning', 'membership')",
        )?
        .query_row(params![group, to_i64(prev), to_i64(seq)], |r| r.get(0))?;
    match first {
        Some(first) => Ok(Some(cut_range(
            conn,
            group,
            to_u64(first),
            Some(seq),
            requeue_own,
            now_ms,
        )?)),
        None => Ok(None),
    }
}

/// If the row about to be stored takes a seq this device already holds for a different
/// entry, the server has forgotten that one: sets the fork aside from there first.
pub(crate) fn cut_if_taken(
    conn: &Connection,
    group: &str,
    seq: u64,
    mark: &EntryMark,
    requeue_own: bool,
    now_ms: i64,
) -> Result<Option<ForkCut>> {
    match row_mark(conn, group, seq)? {
        Some(held) if held != *mark => Ok(Some(cut_fork(conn, group, seq, requeue_own, now_ms)?)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::{ProfileStore, TimelineRow};

    fn row(seq: u64, sender: &str, at: i64, text: &str) -> TimelineRow {
        TimelineRow {
            group: "bauamt".into(),
            seq,
            sender: sender.into(),
            sender_name: sender.into(),
            sent_at_ms: at,
            kind: RowKind::Text,
            text: text.into(),
            expires_at_ms: None,
            removes: None,
            content: None,
        }
    }

    #[test]
    fn a_cut_sets_the_branch_aside_rewinds_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProfileStore::open(dir.path()).unwrap();
        let rows: Vec<_> = (1..=5)
            .map(|i| {
                row(
                    i,
                    "P1",
                    i64::try_from(i).unwrap() * 10,
                    &format!("post {i}"),
                )
            })
            .collect();
        s.append_fetched("bauamt", &rows, 5).unwrap();
        s.mark_read("bauamt", 5).unwrap();

        let cut = cut_fork(&s.db, "bauamt", 4, true, 99).unwrap();
        assert_eq!(cut.rows, 2);
        assert_eq!(s.cursor("bauamt").unwrap(), 3);
        assert_eq!(s.read_mark("bauamt").unwrap(), 3);
        let timeline = s.timeline("bauamt").unwrap();
        let texts: Vec<_> = timeline.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(&texts[..3], ["post 1", "post 2", "post 3"]);
        let notice = timeline.last().unwrap();
        assert_eq!(notice.kind, RowKind::Warning);
        assert!(notice.text.contains("#4") && notice.text.contains("post 5"));

        // The server's new #4 is stored, not ignored as already held.
        s.append_fetched("bauamt", &[row(4, "P2", 77, "neu")], 4)
            .unwrap();
        assert!(s
            .timeline("bauamt")
            .unwrap()
            .iter()
            .any(|r| r.seq == 4 && r.text == "neu"));

        // An entry that matches what is held is no fork.
        let mark = EntryMark {
            sender: "P2".into(),
            sent_at_ms: 77,
        };
        assert!(cut_if_taken(&s.db, "bauamt", 4, &mark, true, 100)
            .unwrap()
            .is_none());
        let other = EntryMark {
            sender: "P3".into(),
            sent_at_ms: 78,
        };
        assert!(cut_if_taken(&s.db, "bauamt", 4, &other, true, 100)
            .unwrap()
            .is_some());
    }

    #[test]
    fn rows_a_new_generation_skips_are_set_aside_and_nothing_else() {
        use rathaus_protocol::log::first_seq;
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProfileStore::open(dir.path()).unwrap();
        s.append_fetched("bauamt", &[row(1, "P1", 10, "post 1")], 1)
            .unwrap();
        // Own posts acknowledged at #2 and #3, never fetched; the restored server
        // forgot them and goes on in the next generation.
        for i in 2..=3 {
            s.append_fetched("bauamt", &[row(i, "P1", 20, &format!("eigen {i}"))], 1)
                .unwrap();
        }
        let next = first_seq(1);
        s.append_fetched(
            "bauamt",
            &[row(1, "P1", 10, "post 1"), row(next, "P2", 30, "neu")],
            next,
        )
        .unwrap();
        let timeline = s.timeline("bauamt").unwrap();
        let seqs: Vec<_> = timeline
            .iter()
            .filter(|r| r.kind == RowKind::Text)
            .map(|r| (r.seq, r.text.as_str()))
            .collect();
        assert_eq!(seqs, [(1, "post 1"), (next, "neu")]);
        let notice = timeline
            .iter()
            .find(|r| r.kind == RowKind::Warning)
            .unwrap();
        assert!(
            notice.text.contains("lacks #2") && notice.text.contains("eigen 3"),
            "{}",
            notice.text
        );
        assert_eq!(s.cursor("bauamt").unwrap(), next);

        // Within a generation a gap is not a loss (nothing is cut), nor is the next
        // generation without rows in between.
        assert!(cut_if_skipped(&s.db, "bauamt", next, next + 2, true, 1)
            .unwrap()
            .is_none());
        s.append_fetched("bauamt", &[row(next + 1, "P2", 40, "weiter")], next + 1)
            .unwrap();
        assert!(
            cut_if_skipped(&s.db, "bauamt", next + 1, first_seq(2), true, 1)
                .unwrap()
                .is_none()
        );
        assert_eq!(s.timeline("bauamt").unwrap().len(), 4);
    }
}
