//! Records of the editorial side: announcements and their acknowledgements, the audit
//! log, retention policies, and what retention deleted.
//!
//! Keys (continuing the table in the parent module):
//!
//! | key | value |
//! |---|---|
//! | `ann/<id u64 BE>` | [`AnnouncementRecord`] |
//! | `ack/<id u64 BE>\0<user>` | [`AckRecord`] |
//! | `audit/<index u64 BE>` | [`AuditEntry`] |
//! | `retention/<group>` | [`RetentionRecord`] |
//! | `floor/<group>` | seq (u64): every entry up to it was deleted by retention |
//! | `counter/announcement` | the last announcement id handed out (u64) |
//! | `counter/log_generation` | the generation new log entries are numbered in (u64, see [`rathaus_protocol::log`]) |

use rathaus_protocol::{AnnouncementState, AuditEntry, GroupHandle, UserId};
use serde::{Deserialize, Serialize};

use super::{decode, encode, key, log_key, prefix_end, Db, StoreError, StoredEntry, Writes};

/// An announcement through its workflow: draft → submitted → published or rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncementRecord {
    /// Id (also in the key), shown to users for `announce ack ID`.
    pub id: u64,
    /// Who proposed it; the published entry's sender, so readers see who it is from.
    pub author: UserId,
    /// The author's display name when drafting.
    pub author_name: String,
    /// Headline.
    pub title: String,
    /// Body text.
    pub text: String,
    /// Whether colleagues are asked to acknowledge it.
    pub requires_ack: bool,
    /// When it stops being shown, Unix ms.
    pub expires_at_ms: Option<i64>,
    /// Where it is in the workflow.
    pub state: AnnouncementState,
    /// Pinned by an editor: listed first.
    pub pinned: bool,
    /// Its entry in `announcements`, once published.
    pub seq: Option<u64>,
    /// When it was drafted, Unix ms.
    pub created_ms: i64,
}

impl AnnouncementRecord {
    /// Whether it has expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|e| e <= now_ms)
    }
}

/// One colleague's "I have read it".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRecord {
    /// Who acknowledged (also in the key; kept here so listing needs no key parsing).
    pub user: UserId,
    /// When, Unix ms.
    pub at_ms: i64,
}

/// How long a group keeps its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRecord {
    /// The group (also in the key).
    pub group: GroupHandle,
    /// Entries older than this many days are deleted.
    pub days: u32,
    /// The administrator who set the policy (the actor of its deletion runs in the audit
    /// log).
    pub set_by: UserId,
    /// When it was set, Unix ms.
    pub set_ms: i64,
}

impl Db {
    /// An announcement.
    pub fn announcement(&self, id: u64) -> Result<Option<AnnouncementRecord>, StoreError> {
        self.get(&announcement_key(id))
    }

    /// Every announcement, oldest id first.
    pub fn announcements(&self) -> Result<Vec<AnnouncementRecord>, StoreError> {
        self.all_under(ANN)
    }

    /// Who acknowledged announcement `id`.
    pub fn acks(&self, id: u64) -> Result<Vec<AckRecord>, StoreError> {
        self.all_under(&ack_prefix(id))
    }

    /// Whether `user` acknowledged announcement `id`.
    pub fn acked(&self, id: u64, user: &UserId) -> Result<bool, StoreError> {
        Ok(self.kv.get(&ack_key(id, user))?.is_some())
    }

    /// The newest audit entry.
    pub fn last_audit_entry(&self) -> Result<Option<AuditEntry>, StoreError> {
        let end = prefix_end(AUDIT);
        self.kv
            .last_in(AUDIT, &end)?
            .map(|(k, v)| decode(&k, &v))
            .transpose()
    }

    /// Up to `limit` audit entries from index `since` on.
    pub fn audit_entries(&self, since: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let end = prefix_end(AUDIT);
        self.kv
            .range(&audit_key(since), &end, limit)?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    /// The retention policy of `group`.
    pub fn retention(&self, group: &GroupHandle) -> Result<Option<RetentionRecord>, StoreError> {
        self.get(&retention_key(group))
    }

    /// Every retention policy.
    pub fn retentions(&self) -> Result<Vec<RetentionRecord>, StoreError> {
        self.all_under(RETENTION)
    }

    /// The last announcement id handed out (0 if none).
    pub fn last_announcement_id(&self) -> Result<u64, StoreError> {
        Ok(self.get(ANNOUNCEMENT_COUNTER)?.unwrap_or(0))
    }

    /// The highest seq of `group` deleted by retention (0 if none): the head never falls
    /// below it, so seqs are never reused.
    pub fn log_floor(&self, group: &GroupHandle) -> Result<u64, StoreError> {
        Ok(self.get(&floor_key(group))?.unwrap_or(0))
    }

    /// [`Db::log_floor`] for an async caller.
    pub(super) async fn log_floor_async(&self, group: &GroupHandle) -> Result<u64, StoreError> {
        Ok(self.get_async(&floor_key(group)).await?.unwrap_or(0))
    }

    /// The generation new log entries are numbered in: 0 until the data is put back to
    /// an older copy (a restore), then one more each time.
    pub fn log_generation(&self) -> Result<u64, StoreError> {
        Ok(self.get(LOG_GENERATION)?.unwrap_or(0))
    }

    /// The entry `seq` of `group`.
    pub fn entry(&self, group: &GroupHandle, seq: u64) -> Result<Option<StoredEntry>, StoreError> {
        self.get(&log_key(group, seq))
    }
}

impl Writes {
    /// Stores an announcement.
    pub fn put_announcement(&mut self, a: &AnnouncementRecord) -> Result<&mut Self, StoreError> {
        self.batch.put(announcement_key(a.id), encode(a)?);
        Ok(self)
    }

    /// Deletes an announcement and the given acknowledgements of it.
    pub fn remove_announcement(&mut self, id: u64, acks: &[AckRecord]) -> &mut Self {
        self.batch.remove(announcement_key(id));
        for ack in acks {
            self.batch.remove(ack_key(id, &ack.user));
        }
        self
    }

    /// Records the last announcement id handed out.
    pub fn put_last_announcement_id(&mut self, id: u64) -> Result<&mut Self, StoreError> {
        self.batch.put(ANNOUNCEMENT_COUNTER.to_vec(), encode(&id)?);
        Ok(self)
    }

    /// Stores an acknowledgement.
    pub fn put_ack(&mut self, id: u64, ack: &AckRecord) -> Result<&mut Self, StoreError> {
        self.batch.put(ack_key(id, &ack.user), encode(ack)?);
        Ok(self)
    }

    /// Appends an audit entry (the caller keeps the chain: index and previous hash).
    pub fn put_audit(&mut self, entry: &AuditEntry) -> Result<&mut Self, StoreError> {
        self.batch.put(audit_key(entry.index), encode(entry)?);
        Ok(self)
    }

    /// Stores a retention policy.
    pub fn put_retention(&mut self, r: &RetentionRecord) -> Result<&mut Self, StoreError> {
        self.batch.put(retention_key(&r.group), encode(r)?);
        Ok(self)
    }

    /// Removes the retention policy of `group` (keep forever).
    pub fn remove_retention(&mut self, group: &GroupHandle) -> &mut Self {
        self.batch.remove(retention_key(group));
        self
    }

    /// Overwrites an existing entry in place (moderation), leaving its deduplication
    /// record as it is.
    pub fn replace_entry(
        &mut self,
        group: &GroupHandle,
        seq: u64,
        entry: &StoredEntry,
    ) -> Result<&mut Self, StoreError> {
        self.batch.put(log_key(group, seq), encode(entry)?);
        Ok(self)
    }

    /// Deletes an entry and its deduplication record (retention).
    pub fn remove_entry(
        &mut self,
        group: &GroupHandle,
        seq: u64,
        entry: &StoredEntry,
    ) -> &mut Self {
        self.batch.remove(log_key(group, seq));
        self.batch
            .remove(super::dedup_key(group, &entry.sender, &entry.client_id));
        if let Some(post) = super::log::edit_target(entry) {
            self.remove_edit(group, post, seq);
        }
        self
    }

    /// Records that new log entries are numbered in `generation`.
    pub fn put_log_generation(&mut self, generation: u64) -> Result<&mut Self, StoreError> {
        self.batch
            .put(LOG_GENERATION.to_vec(), encode(&generation)?);
        Ok(self)
    }

    /// Records that every entry of `group` up to `seq` was deleted.
    pub fn put_log_floor(
        &mut self,
        group: &GroupHandle,
        seq: u64,
    ) -> Result<&mut Self, StoreError> {
        self.batch.put(floor_key(group), encode(&seq)?);
        Ok(self)
    }
}

const ANN: &[u8] = b"ann/";
const ACK: &[u8] = b"ack/";
const AUDIT: &[u8] = b"audit/";
const RETENTION: &[u8] = b"retention/";
const FLOOR: &[u8] = b"floor/";
const ANNOUNCEMENT_COUNTER: &[u8] = b"counter/announcement";
const LOG_GENERATION: &[u8] = b"counter/log_generation";

fn announcement_key(id: u64) -> Vec<u8> {
    key(ANN, &[&id.to_be_bytes()])
}

fn ack_key(id: u64, user: &UserId) -> Vec<u8> {
    key(ACK, &[&id.to_be_bytes(), user.as_str().as_bytes()])
}

/// `ack/<id>\0`: every acknowledgement of `id` starts with it (and ends before `\x01`).
fn ack_prefix(id: u64) -> Vec<u8> {
    // `all_under` ends the range at the prefix with its last byte incremented: `\0` → `\x01`.
    key(ACK, &[&id.to_be_bytes(), b""])
}

fn audit_key(index: u64) -> Vec<u8> {
    key(AUDIT, &[&index.to_be_bytes()])
}

fn retention_key(group: &GroupHandle) -> Vec<u8> {
    key(RETENTION, &[group.to_string().as_bytes()])
}

fn floor_key(group: &GroupHandle) -> Vec<u8> {
    key(FLOOR, &[group.to_string().as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::sync::Arc;

    #[test]
    fn acks_of_one_announcement_do_not_leak_into_another() {
        let db = Db::new(Arc::new(MemoryStore::new()));
        let mut w = Writes::new();
        for (id, user) in [(1, "a"), (1, "b"), (2, "a"), (256, "c")] {
            let ack = AckRecord {
                user: UserId::parse(user).unwrap(),
                at_ms: 1,
            };
            w.put_ack(id, &ack).unwrap();
        }
        db.apply(w).unwrap();
        let users = |id| -> Vec<String> {
            db.acks(id)
                .unwrap()
                .into_iter()
                .map(|a| a.user.to_string())
                .collect()
        };
        assert_eq!(users(1), vec!["a", "b"]);
        assert_eq!(users(2), vec!["a"]);
        assert_eq!(users(256), vec!["c"]);
        assert!(db.acked(1, &UserId::parse("b").unwrap()).unwrap());
        assert!(!db.acked(2, &UserId::parse("b").unwrap()).unwrap());
    }
}
