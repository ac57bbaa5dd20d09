//! The device's own full-text index of its timeline (SQLite FTS5), which the server
//! never sees: secret groups and everything read on this device are searched here.

use rusqlite::{params, Connection};

use super::{to_u64, ProfileStore};
use crate::error::Result;

impl ProfileStore {
    /// Searches the local timeline: rows of `kind` text or announcement whose words
    /// start with every word of `query` (prefix match: FTS5 has no German stemmer, so
    /// "Baustelle" also finds "Baustellen"). Anything in `query` that is not a letter or
    /// digit only separates words, so FTS5 syntax in it is never interpreted. `group`:
    /// only that group; `secret_only`: only secret groups and rooms. Best first (FTS5's
    /// BM25, then newest); expired announcements are left out.
    pub fn search_timeline(
        &self,
        query: &str,
        group: Option<&str>,
        secret_only: bool,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<LocalHit>> {
        let Some(expression) = fts_expression(query) else {
            return Ok(Vec::new());
        };
        index_queued(&self.db)?;
        let mut stmt = self.db.prepare_cached(
            "SELECT t.grp, t.seq, t.sender, t.sender_name, t.sent_at_ms,
                    snippet(timeline_fts, 0, '', '', '…', 24), bm25(timeline_fts) AS rank
             FROM timeline_fts JOIN timeline t ON t.rowid = timeline_fts.rowid
             WHERE timeline_fts MATCH ?1
               AND t.kind IN ('text', 'announcement')
               AND (?2 IS NULL OR t.grp = ?2)
               AND (?3 = 0 OR t.grp LIKE '%/secret' OR t.grp LIKE 'room/%')
               AND (t.expires_at_ms IS NULL OR t.expires_at_ms > ?4)
             ORDER BY rank, t.sent_at_ms DESC, t.seq DESC
             LIMIT ?5",
        )?;
        let rows = stmt
            .query_map(
                params![
                    expression,
                    group,
                    secret_only,
                    now_ms,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |r| {
                    Ok(LocalHit {
                        group: r.get(0)?,
                        seq: to_u64(r.get(1)?),
                        sender: r.get(2)?,
                        sender_name: r.get(3)?,
                        sent_at_ms: r.get(4)?,
                        snippet: r.get(5)?,
                        // bm25() is lower for better matches.
                        score: -r.get::<_, f64>(6)?,
                    })
                },
            )?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

/// A row found by [`ProfileStore::search_timeline`].
#[derive(Debug, Clone, PartialEq)]
pub struct LocalHit {
    /// Group handle.
    pub group: String,
    /// Server sequence number.
    pub seq: u64,
    /// Sender's personnel number.
    pub sender: String,
    /// Sender's display name.
    pub sender_name: String,
    /// Server receive time, Unix ms.
    pub sent_at_ms: i64,
    /// Excerpt around the words found.
    pub snippet: String,
    /// Relevance (FTS5 BM25, higher is better).
    pub score: f64,
}

/// Most words of a local query that are looked for.
const MAX_LOCAL_TERMS: usize = rathaus_protocol::limits::MAX_SEARCH_TERMS;

/// The FTS5 expression for a user's words: each word a quoted prefix query (`"bau"*`), all
/// of them required. Words are runs of letters and digits, so quotes, operators and
/// column filters in the input are never FTS5 syntax. `None` if there is no word.
fn fts_expression(query: &str) -> Option<String> {
    let words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(MAX_LOCAL_TERMS)
        .map(|w| format!("\"{w}\"*"))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// Makes the changes the timeline's triggers queued in the full-text index, in the order
/// they were made, and empties the queue: atomically, inside the caller's transaction or
/// one of its own. Called at the end of a page of entries (one index segment for the
/// page) and before every search (so a search always sees every stored row).
pub(crate) fn index_queued(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "SAVEPOINT rathaus_index;
         INSERT INTO timeline_fts(timeline_fts, rowid, text)
             SELECT command, rid, text FROM timeline_fts_queue ORDER BY id;
         DELETE FROM timeline_fts_queue;
         RELEASE rathaus_index;",
    )
    .inspect_err(|_| {
        let _ = conn.execute_batch("ROLLBACK TO rathaus_index; RELEASE rathaus_index;");
    })?;
    Ok(())
}
