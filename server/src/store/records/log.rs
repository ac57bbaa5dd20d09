//! The groups' logs: entries by seq and the deduplication index.
//!
//! Keys: `log/<group>\0<seq>`, `dedup/<group>\0<sender>\0<client id>` (see the table
//! in the parent module).

use rathaus_protocol::{ClientMsgId, EntryBody, GroupHandle, LogEntry, UserId};
use serde::{Deserialize, Serialize};

use super::{decode, dedup_key, encode, log_bounds, log_key, seq_of, Db, StoreError, Writes};
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

impl Db {
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
        Ok(self)
    }
}
