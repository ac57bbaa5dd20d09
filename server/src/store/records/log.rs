//! The groups' logs: entries by seq, the deduplication index and the edit index.
//!
//! Keys: `log/<group>\0<seq>`, `dedup/<group>\0<sender>\0<client id>`,
//! `edit/<group>\0<post>\0<edit>` (see the table in the parent module).
//!
//! The edit index lets a delete or a moderator's removal find a post's edits (to take
//! their text off the server too) by the post, not by reading the log from the post on:
//! under the log lock, a delete of an old post in a busy group read every entry since.

use rathaus_protocol::{ClientMsgId, ContentBody, EntryBody, GroupHandle, LogEntry, UserId};
use serde::{Deserialize, Serialize};

use super::{
    decode, dedup_key, encode, key, log_bounds, log_key, prefix_end, seq_of, Db, StoreError,
    Writes, EDIT, EDITS_INDEXED, LOG,
};
use crate::store::Shift;

/// A log entry as stored (its seq is in the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// Who posted it.
    pub sender: UserId,
    /// The sender's display name at posting time.
    pub sender_name: String,
    /// Server receive time, Unix ms.
    pub sent_at_ms: i64,
    /// The sender's idempotency id.
    pub client_id: ClientMsgId,
    /// The payload.
    pub body: EntryBody,
}

impl StoredEntry {
    /// The wire form of this entry.
    pub fn to_log_entry(&self, seq: u64) -> LogEntry {
        LogEntry {
            seq,
            sender: self.sender.clone(),
            sender_name: self.sender_name.clone(),
            sent_at_ms: self.sent_at_ms,
            client_id: self.client_id,
            body: self.body.clone(),
        }
    }
}

/// The post an entry edits, if it is an edit.
pub(super) fn edit_target(entry: &StoredEntry) -> Option<u64> {
    match &entry.body {
        EntryBody::Content(c) => match c.body {
            ContentBody::Edit { target, .. } => Some(target),
            _ => None,
        },
        _ => None,
    }
}

fn edit_key(group: &GroupHandle, post: u64, edit: u64) -> Vec<u8> {
    key(
        EDIT,
        &[
            group.to_string().as_bytes(),
            &post.to_be_bytes(),
            &edit.to_be_bytes(),
        ],
    )
}

/// `edit/<group>\0<post>\0`: where the post's edits are listed.
fn edits_prefix(group: &GroupHandle, post: u64) -> Vec<u8> {
    let mut prefix = key(EDIT, &[group.to_string().as_bytes(), &post.to_be_bytes()]);
    prefix.push(0);
    prefix
}

/// Log entries read per step while indexing the edits stored before the index.
const INDEX_PAGE: usize = 10_000;

impl Db {
    /// The seqs of (at most `limit`) edits of post `post` of `group`, in order.
    pub fn edits_of(
        &self,
        group: &GroupHandle,
        post: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let prefix = edits_prefix(group, post);
        self.kv
            .range(&prefix, &prefix_end(&prefix), limit)?
            .into_iter()
            .map(|(k, _)| seq_of(&k))
            .collect()
    }

    /// Puts every edit stored before the edit index existed into it, once (the data of an
    /// earlier release); returns how many. Reads the logs a page at a time.
    pub fn index_edits(&self) -> Result<usize, StoreError> {
        if self.kv.get(EDITS_INDEXED)?.is_some() {
            return Ok(0);
        }
        let end = prefix_end(LOG);
        let mut start = LOG.to_vec();
        let mut n = 0;
        loop {
            let page = self.kv.range(&start, &end, INDEX_PAGE)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            let mut next = last.clone();
            next.push(0);
            let mut writes = Writes::new();
            for (k, v) in &page {
                let entry: StoredEntry = decode(k, v)?;
                let Some(post) = edit_target(&entry) else {
                    continue;
                };
                // `log/<group>\0<seq>`: the group is what lies between.
                let group = k
                    .get(LOG.len()..k.len().saturating_sub(9))
                    .and_then(|g| std::str::from_utf8(g).ok())
                    .and_then(|g| GroupHandle::parse(g).ok());
                if let Some(group) = group {
                    writes.put_edit(&group, post, seq_of(k)?);
                    n += 1;
                }
            }
            self.apply(writes)?;
            start = next;
        }
        let mut writes = Writes::new();
        writes.batch.put(EDITS_INDEXED.to_vec(), vec![1]);
        self.apply(writes)?;
        Ok(n)
    }

    /// The latest seq of `group` (0 if empty). Retention may have deleted the newest
    /// entries too; the head never falls below what it deleted, so no seq is reused.
    pub fn head(&self, group: &GroupHandle) -> Result<u64, StoreError> {
        let (start, end) = log_bounds(group, 0);
        let last = match self.kv.last_in(&start, &end)? {
            Some((key, _)) => seq_of(&key)?,
            None => 0,
        };
        Ok(last.max(self.log_floor(group)?))
    }

    /// [`Db::head`] for an async caller: on a database elsewhere both reads run while the
    /// caller's thread serves other requests.
    pub async fn head_async(&self, group: &GroupHandle) -> Result<u64, StoreError> {
        let (start, end) = log_bounds(group, 0);
        let (last, floor) = tokio::join!(
            self.kv.last_in_async(&start, &end),
            self.log_floor_async(group)
        );
        let last = match last? {
            Some((key, _)) => seq_of(&key)?,
            None => 0,
        };
        Ok(last.max(floor?))
    }

    /// [`Db::deduplicated`] for an async caller.
    pub async fn deduplicated_async(
        &self,
        group: &GroupHandle,
        sender: &UserId,
        client_id: &ClientMsgId,
    ) -> Result<Option<u64>, StoreError> {
        self.get_async(&dedup_key(group, sender, client_id)).await
    }

    /// Up to `limit` entries of `group` with `seq > since`, oldest first, with the size
    /// of each stored value.
    pub fn entries(
        &self,
        group: &GroupHandle,
        since: u64,
        limit: usize,
    ) -> Result<Vec<(u64, StoredEntry, usize)>, StoreError> {
        let Some(from) = since.checked_add(1) else {
            return Ok(Vec::new());
        };
        let (start, end) = log_bounds(group, from);
        self.kv
            .range(&start, &end, limit)?
            .into_iter()
            .map(|(k, v)| Ok((seq_of(&k)?, decode(&k, &v)?, v.len())))
            .collect()
    }

    /// The seq stored earlier for `(group, sender, client_id)`, if any.
    pub fn deduplicated(
        &self,
        group: &GroupHandle,
        sender: &UserId,
        client_id: &ClientMsgId,
    ) -> Result<Option<u64>, StoreError> {
        self.get(&dedup_key(group, sender, client_id))
    }
}

impl Writes {
    /// [`Writes::put_entry`] for a post that may be stored at another seq than `seq` on
    /// a shared store (see [`Shift`]); nothing else may go into the same batch.
    pub fn put_movable_entry(
        &mut self,
        group: &GroupHandle,
        seq: u64,
        entry: &StoredEntry,
    ) -> Result<Shift, StoreError> {
        Ok(self.batch.append_movable_entry(
            (log_key(group, seq), encode(entry)?),
            (
                dedup_key(group, &entry.sender, &entry.client_id),
                encode(&seq)?,
            ),
            seq,
        ))
    }

    /// Appends an entry and its deduplication record.
    pub fn put_entry(
        &mut self,
        group: &GroupHandle,
        seq: u64,
        entry: &StoredEntry,
    ) -> Result<&mut Self, StoreError> {
        self.batch.append(log_key(group, seq), encode(entry)?);
        self.batch.append(
            dedup_key(group, &entry.sender, &entry.client_id),
            encode(&seq)?,
        );
        if let Some(post) = edit_target(entry) {
            self.put_edit(group, post, seq);
        }
        Ok(self)
    }

    /// Lists the entry `edit` as an edit of post `post`.
    pub(super) fn put_edit(&mut self, group: &GroupHandle, post: u64, edit: u64) -> &mut Self {
        self.batch.put(edit_key(group, post, edit), Vec::new());
        self
    }

    /// Takes the entry `edit` off the list of post `post`'s edits (retention).
    pub(super) fn remove_edit(&mut self, group: &GroupHandle, post: u64, edit: u64) -> &mut Self {
        self.batch.remove(edit_key(group, post, edit));
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use rathaus_protocol::Content;

    use super::*;
    use crate::store::MemoryStore;

    fn entry(content: Content, id: u8) -> StoredEntry {
        StoredEntry {
            sender: UserId::parse("P1001").unwrap(),
            sender_name: "Anna Berg".into(),
            sent_at_ms: 1,
            client_id: ClientMsgId([id; 16]),
            body: EntryBody::Content(content),
        }
    }

    /// Edits are listed by their post as they are stored; those an earlier release
    /// stored (no index yet) are listed once, at the first start with the index.
    #[test]
    fn edits_are_listed_by_their_post_and_earlier_ones_indexed_once() {
        let db = Db::new(Arc::new(MemoryStore::new()));
        let bauamt = GroupHandle::parse("bauamt").unwrap();
        let kaemmerei = GroupHandle::parse("kaemmerei").unwrap();
        let mut w = Writes::new();
        w.put_entry(&bauamt, 1, &entry(Content::text("Plan"), 1))
            .unwrap()
            .put_entry(&bauamt, 2, &entry(Content::text("anderes"), 2))
            .unwrap()
            .put_entry(&bauamt, 3, &entry(Content::edit(1, "Plan (neu)"), 3))
            .unwrap()
            .put_entry(&kaemmerei, 3, &entry(Content::edit(1, "fremd"), 4))
            .unwrap()
            .put_entry(&bauamt, 4, &entry(Content::edit(1, "Plan (neuer)"), 5))
            .unwrap();
        db.apply(w).unwrap();
        assert_eq!(db.edits_of(&bauamt, 1, 100).unwrap(), vec![3, 4]);
        assert_eq!(db.edits_of(&bauamt, 1, 1).unwrap(), vec![3]);
        assert_eq!(db.edits_of(&bauamt, 2, 100).unwrap(), Vec::<u64>::new());
        assert_eq!(db.edits_of(&kaemmerei, 1, 100).unwrap(), vec![3]);

        // As an earlier release left it: the entries, no index.
        let mut w = Writes::new();
        w.remove_edit(&bauamt, 1, 3)
            .remove_edit(&bauamt, 1, 4)
            .remove_edit(&kaemmerei, 1, 3);
        db.apply(w).unwrap();
        assert!(db.edits_of(&bauamt, 1, 100).unwrap().is_empty());
        assert_eq!(db.index_edits().unwrap(), 3);
        assert_eq!(db.edits_of(&bauamt, 1, 100).unwrap(), vec![3, 4]);
        assert_eq!(db.edits_of(&kaemmerei, 1, 100).unwrap(), vec![3]);
        // Once: the next start reads no log.
        assert_eq!(db.index_edits().unwrap(), 0);

        // Retention takes an edit off the list with the entry.
        let mut w = Writes::new();
        w.remove_entry(&bauamt, 3, &entry(Content::edit(1, "Plan (neu)"), 3));
        db.apply(w).unwrap();
        assert_eq!(db.edits_of(&bauamt, 1, 100).unwrap(), vec![4]);
    }
}
