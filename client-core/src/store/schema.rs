//! The profile database's schema and its migrations, one SQLite transaction per version.
//! A migration once released is history: it stays as it was written.

use super::ProfileStore;
use crate::error::{ClientError, Result};

/// Schema version written by this build (in SQLite's `user_version`).
pub(super) const SCHEMA_VERSION: i64 = 7;

impl ProfileStore {
    pub(super) fn migrate(&self) -> Result<()> {
        let version: i64 = self
            .db
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(ClientError::Invalid(format!(
                "this profile was written by a newer Rathaus (schema {version}); update rathaus"
            )));
        }
        if version < 1 {
            self.db.execute_batch(
                "BEGIN;
                 CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if version < 2 {
            // Secret groups: log entries this device wrote itself (MLS cannot process its own
            // messages, so they are skipped when fetched back) and the display names learned
            // from the server, for membership rows.
            self.db.execute_batch(
                "BEGIN;
                 CREATE TABLE mls_own_entries (
                     grp TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (grp, seq));
                 CREATE TABLE user_names (user TEXT PRIMARY KEY, name TEXT NOT NULL);
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        if version < 3 {
            // CA validation of the server (DESIGN §3): the CA certificates given at
            // enrollment, kept as DER in the profile rather than as a path to a file that
            // could change. Empty for profiles that pin a fingerprint.
            self.db.execute_batch(
                "BEGIN;
                 CREATE TABLE server_ca (pos INTEGER PRIMARY KEY, der BLOB NOT NULL);
                 PRAGMA user_version = 3;
                 COMMIT;",
            )?;
        }
        if version < 4 {
            // Membership intents of secret groups (an approval, a policy change, a linked
            // device): kept until committed, so one made while the server was unreachable
            // is carried out on a later sync (DESIGN §8).
            self.db.execute_batch(
                "BEGIN;
                 CREATE TABLE mls_intents (
                     id INTEGER PRIMARY KEY, grp TEXT NOT NULL, intent BLOB NOT NULL,
                     state TEXT NOT NULL, created_ms INTEGER NOT NULL,
                     updated_ms INTEGER NOT NULL, seq INTEGER, error TEXT);
                 PRAGMA user_version = 4;
                 COMMIT;",
            )?;
        }
        if version < 5 {
            // Posts that change posts (edits, deletes, reactions): the content as written,
            // to fold the timeline; the post a change names, so a delete finds the edits
            // whose text goes with it; and which rows were shown (by `listen`) though not
            // read in order.
            self.db.execute_batch(
                "BEGIN;
                 ALTER TABLE timeline ADD COLUMN content BLOB;
                 ALTER TABLE timeline ADD COLUMN target INTEGER;
                 ALTER TABLE timeline ADD COLUMN seen INTEGER NOT NULL DEFAULT 0;
                 CREATE INDEX timeline_target ON timeline(grp, target);
                 PRAGMA user_version = 5;
                 COMMIT;",
            )?;
        }
        if version < 6 {
            // Local full-text search (DESIGN §2): an FTS5 index over the timeline's text,
            // kept in step by triggers, so every row stored by any path (fetch, send,
            // the MLS engine's own connection) is searchable, and a moderated or replaced
            // row's old words leave the index with it. FTS5 has no German stemmer:
            // `unicode61 remove_diacritics 2` folds case and accents, and queries match
            // word prefixes (see `search_timeline`). Existing rows are indexed once here.
            self.db.execute_batch(
                "BEGIN;
                 CREATE VIRTUAL TABLE timeline_fts USING fts5(
                     text, content='timeline', content_rowid='rowid',
                     tokenize='unicode61 remove_diacritics 2');
                 CREATE TRIGGER timeline_fts_insert AFTER INSERT ON timeline BEGIN
                     INSERT INTO timeline_fts(rowid, text) VALUES (new.rowid, new.text);
                 END;
                 CREATE TRIGGER timeline_fts_delete AFTER DELETE ON timeline BEGIN
                     INSERT INTO timeline_fts(timeline_fts, rowid, text)
                     VALUES ('delete', old.rowid, old.text);
                 END;
                 CREATE TRIGGER timeline_fts_update AFTER UPDATE OF text ON timeline BEGIN
                     INSERT INTO timeline_fts(timeline_fts, rowid, text)
                     VALUES ('delete', old.rowid, old.text);
                     INSERT INTO timeline_fts(rowid, text) VALUES (new.rowid, new.text);
                 END;
                 INSERT INTO timeline_fts(timeline_fts) VALUES ('rebuild');
                 PRAGMA user_version = 6;
                 COMMIT;",
            )?;
        }
        if version < 7 {
            // The triggers queue their changes to the index instead of making them
            // (see `index_queued`): FTS5 writes its pending changes out as a new segment
            // at every savepoint, and a page of secret entries runs one savepoint per
            // entry (and the engine more inside), so a page of 100 messages made 100
            // one-row segments and merged them again: 11 % of a catch-up's CPU.
            self.db.execute_batch(
                "BEGIN;
                 CREATE TABLE timeline_fts_queue (
                     id INTEGER PRIMARY KEY, command TEXT,
                     rid INTEGER NOT NULL, text TEXT NOT NULL);
                 DROP TRIGGER timeline_fts_insert;
                 DROP TRIGGER timeline_fts_delete;
                 DROP TRIGGER timeline_fts_update;
                 CREATE TRIGGER timeline_fts_insert AFTER INSERT ON timeline BEGIN
                     INSERT INTO timeline_fts_queue(command, rid, text)
                     VALUES (NULL, new.rowid, new.text);
                 END;
                 CREATE TRIGGER timeline_fts_delete AFTER DELETE ON timeline BEGIN
                     INSERT INTO timeline_fts_queue(command, rid, text)
                     VALUES ('delete', old.rowid, old.text);
                 END;
                 CREATE TRIGGER timeline_fts_update AFTER UPDATE OF text ON timeline BEGIN
                     INSERT INTO timeline_fts_queue(command, rid, text)
                     VALUES ('delete', old.rowid, old.text);
                     INSERT INTO timeline_fts_queue(command, rid, text)
                     VALUES (NULL, new.rowid, new.text);
                 END;
                 PRAGMA user_version = 7;
                 COMMIT;",
            )?;
        }
        Ok(())
    }
}
