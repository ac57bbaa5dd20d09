//! The server's records and their keys, typed on top of any [`Store`].
//!
//! Key layout (one keyspace; `\0` separates parts, which no id or handle contains):
//!
//! | key | value |
//! |---|---|
//! | `meta` | [`ServerMeta`] |
//! | `user/<id>` | [`UserRecord`] |
//! | `dept/<slug>` | [`DepartmentRecord`] |
//! | `code/<user>` | [`CodeRecord`] (the user's open enrollment code) |
//! | `log/<group>\0<seq u64 BE>` | [`StoredEntry`] |
//! | `dedup/<group>\0<sender>\0<client id>` | seq (u64) of the entry stored for it |
//! | `edit/<group>\0<post seq u64 BE>\0<edit seq u64 BE>` | empty: an edit of the post |
//! | `editsidx` | present once every edit stored before the edit index is in it |
//! | `kp/<user>\0<device u64 BE>` | [`KeyPackageRecord`] |
//! | `secret/<group>` | [`SecretGroupRecord`] (present once the group is born) |
//! | `mls/<group>` | [`PublicStateRecord`] (openmls' public group state) |
//! | `welcome/<user>\0<device u64 BE>` | `Vec<WelcomeInfo>` waiting for the device (written by earlier releases; read until the device's next Welcome) |
//! | `welcomeq/<user>\0<device u64 BE>\0<group>` | [`QueuedWelcome`]: the device's Welcome to the group |
//! | `welcomeb/<group>\0<seq u64 BE>` | [`WelcomeBody`] of the commit at that seq, once for every device it adds |
//! | `commit/<group>\0<epoch u64 BE>` | seq (u64) of the commit accepted in that epoch |
//!
//! Announcements, acknowledgements, the audit log and retention: see [`editorial`];
//! blobs, uploads and the document library: see [`blobs`];
//! retired departments: see [`retired`]; the credential throttle's counters: see
//! [`throttle`].

mod blobs;
mod departments;
mod editorial;
mod log;
mod people;
mod retired;
mod secret;
mod throttle;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rathaus_protocol::{ClientMsgId, DepartmentSlug, DeviceId, GroupHandle, UserId};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::{ApplyTicket, Batch, Store, StoreError};

pub use blobs::{BlobRecord, BlobRef, UploadRecord};
pub use departments::DepartmentRecord;
pub use editorial::{AckRecord, AnnouncementRecord, RetentionRecord};
pub use log::StoredEntry;
pub use people::{CodeRecord, DeviceRecord, UserRecord};
pub use retired::RetiredDepartment;
pub use secret::{
    KeyPackageRecord, LeafRecord, PublicStateRecord, QueuedWelcome, SecretGroupRecord, WelcomeBody,
};
pub use throttle::ThrottleRecord;

/// Server-wide settings fixed at `init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMeta {
    /// Organisation name shown to clients.
    pub org: String,
    /// When the server was initialised, Unix ms.
    pub created_ms: i64,
}

/// Typed access to the server's records.
#[derive(Clone)]
pub struct Db {
    /// The underlying key-value store.
    kv: Arc<dyn Store>,
    /// Counts applied batches that wrote a user record (see [`Db::users_generation`]).
    users_generation: Arc<AtomicU64>,
    /// Counts the other nodes' word that they wrote user or department records, or that
    /// this node may have missed such word (see [`Db::others_changed_records`]).
    others_changed: Arc<AtomicU64>,
}

/// How long a user or department record read from a store other nodes write too may be
/// kept at most while no other node has said it changed records: the bound for a change
/// whose notice was lost. Normally another node's change is heard within milliseconds.
pub const SHARED_RECORDS_KEPT: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

impl Db {
    /// Typed access over `kv`.
    pub fn new(kv: Arc<dyn Store>) -> Self {
        Self {
            kv,
            users_generation: Arc::new(AtomicU64::new(0)),
            others_changed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A number that changes after every applied batch that wrote a user record through
    /// this `Db` (or a clone of it), and whenever another node on a shared store says it
    /// wrote records ([`Db::others_changed_records`]).
    ///
    /// A reader that loads the number *before* reading a user record may keep the record
    /// for as long as the number stays the same, and on a store other nodes write too at
    /// most [`Db::records_kept_for`]: the number moves only after the write became
    /// visible, so a record read before a change is never kept past it.
    pub fn users_generation(&self) -> u64 {
        self.users_generation
            .load(Ordering::SeqCst)
            .wrapping_add(self.others_changed.load(Ordering::SeqCst))
    }

    /// How long a user or department record may be kept besides its generation: no
    /// bound where this process is the only writer; [`SHARED_RECORDS_KEPT`] where other
    /// nodes write too, in case their notice of a change is lost.
    pub fn records_kept_for(&self) -> Option<std::time::Duration> {
        self.kv.shared().then_some(SHARED_RECORDS_KEPT)
    }

    /// Another node said it wrote user or department records, or its word may have been
    /// lost: every record kept is read again.
    pub fn others_changed_records(&self) {
        self.others_changed.fetch_add(1, Ordering::SeqCst);
    }

    /// Records that a batch writing user records was applied.
    fn users_changed(&self) {
        self.users_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A batch writing user or department records was applied: the other nodes, which
    /// keep such records, are told.
    fn records_written(&self, writes: Records) {
        if writes.users {
            self.users_changed();
        }
        if writes.users || writes.departments {
            self.kv.notify_records();
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.kv
    }

    /// Server settings; `None` before `init`.
    pub fn meta(&self) -> Result<Option<ServerMeta>, StoreError> {
        self.get(META)
    }

    /// Applies `writes` atomically.
    pub fn apply(&self, writes: Writes) -> Result<(), StoreError> {
        let records = writes.records;
        // Bumped even when the apply fails: the engine may have written part of it.
        let result = self.kv.apply(writes.batch);
        self.records_written(records);
        result
    }

    /// Queues `writes` behind every batch queued before (see [`Store::enqueue`]). A
    /// batch that writes user records is waited for here, so that
    /// [`Db::users_generation`] moves only once the records are visible.
    pub fn enqueue(&self, writes: Writes) -> Result<ApplyTicket, StoreError> {
        let records = writes.records;
        let ticket = self.kv.enqueue(writes.batch)?;
        if records.users || records.departments {
            let result = self.kv.wait_applied_blocking(ticket);
            self.records_written(records);
            result?;
        }
        Ok(ticket)
    }

    /// Resolves once the queued batch of `ticket` is applied.
    pub async fn wait_applied(&self, ticket: ApplyTicket) -> Result<(), StoreError> {
        self.kv.wait_applied(ticket).await
    }

    /// Blocks until the queued batch of `ticket` is applied (for callers holding a lock).
    pub fn wait_applied_blocking(&self, ticket: ApplyTicket) -> Result<(), StoreError> {
        self.kv.wait_applied_blocking(ticket)
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.kv.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    /// [`Db::get`] through [`Store::get_async`].
    async fn get_async<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.kv
            .get_async(key)
            .await?
            .map(|v| decode(key, &v))
            .transpose()
    }

    fn all_under<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<T>, StoreError> {
        let end = prefix_end(prefix);
        self.kv
            .range(prefix, &end, usize::MAX)?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }
}

/// Writes collected for one atomic [`Db::apply`].
#[derive(Debug, Default)]
pub struct Writes {
    /// The encoded operations.
    batch: Batch,
    /// Which kept records are among them.
    records: Records,
}

/// Which records that servers keep between requests a batch writes.
#[derive(Debug, Default, Clone, Copy)]
struct Records {
    /// A user record.
    users: bool,
    /// A department record (written or retired).
    departments: bool,
}

impl Writes {
    /// No writes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores the server settings.
    pub fn put_meta(&mut self, meta: &ServerMeta) -> Result<&mut Self, StoreError> {
        self.batch.put(META.to_vec(), encode(meta)?);
        Ok(self)
    }
}

const META: &[u8] = b"meta";
const USER: &[u8] = b"user/";
const DEPT: &[u8] = b"dept/";
const USER_FOLD: &[u8] = b"userfold/";
const CODE: &[u8] = b"code/";
const LOG: &[u8] = b"log/";
const DEDUP: &[u8] = b"dedup/";
const EDIT: &[u8] = b"edit/";
const EDITS_INDEXED: &[u8] = b"editsidx";
const KP: &[u8] = b"kp/";
const SECRET: &[u8] = b"secret/";
const MLS: &[u8] = b"mls/";
const WELCOME: &[u8] = b"welcome/";
const WELCOME_QUEUE: &[u8] = b"welcomeq/";
const WELCOME_BODY: &[u8] = b"welcomeb/";
const ROOM: &[u8] = b"room/";
const ROOM_INVITED: &[u8] = b"roominv/";
const COMMIT: &[u8] = b"commit/";

fn key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

fn user_key(id: &UserId) -> Vec<u8> {
    key(USER, &[id.as_str().as_bytes()])
}

fn user_fold_key(id: &UserId) -> Vec<u8> {
    key(USER_FOLD, &[id.as_str().to_ascii_lowercase().as_bytes()])
}

fn department_key(slug: &DepartmentSlug) -> Vec<u8> {
    key(DEPT, &[slug.as_str().as_bytes()])
}

fn code_key(user: &UserId) -> Vec<u8> {
    key(CODE, &[user.as_str().as_bytes()])
}

fn device_key(prefix: &[u8], user: &UserId, device: DeviceId) -> Vec<u8> {
    key(prefix, &[user.as_str().as_bytes(), &device.0.to_be_bytes()])
}

fn log_key(group: &GroupHandle, seq: u64) -> Vec<u8> {
    key(LOG, &[group.to_string().as_bytes(), &seq.to_be_bytes()])
}

/// `[log/<group>\0<from>, log/<group>\x01)`: the group's entries from seq `from` on.
fn log_bounds(group: &GroupHandle, from: u64) -> (Vec<u8>, Vec<u8>) {
    let start = log_key(group, from);
    let mut end = key(LOG, &[group.to_string().as_bytes()]);
    end.push(1);
    (start, end)
}

fn dedup_key(group: &GroupHandle, sender: &UserId, client_id: &ClientMsgId) -> Vec<u8> {
    key(
        DEDUP,
        &[
            group.to_string().as_bytes(),
            sender.as_str().as_bytes(),
            &client_id.0,
        ],
    )
}

/// The smallest key greater than every key starting with `prefix` (prefixes end in `/`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| <[u8; 8]>::try_from(&key[at..]).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            key: super::codec::printable(key),
            reason: "log key without seq".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use rathaus_protocol::{Content, EntryBody};

    fn entry(sender: &str, id: u8) -> StoredEntry {
        StoredEntry {
            sender: UserId::parse(sender).unwrap(),
            sender_name: sender.into(),
            sent_at_ms: 1,
            client_id: ClientMsgId([id; 16]),
            body: EntryBody::Content(Content::text("hallo")),
        }
    }

    #[test]
    fn log_ranges_do_not_leak_between_groups() {
        let db = Db::new(Arc::new(MemoryStore::new()));
        let bau = GroupHandle::parse("bau").unwrap();
        let bauamt = GroupHandle::parse("bauamt").unwrap();
        let secret = GroupHandle::parse("bau/secret").unwrap();
        let mut w = Writes::new();
        for seq in 1..=3 {
            w.put_entry(&bau, seq, &entry("a", seq as u8)).unwrap();
        }
        w.put_entry(&bauamt, 1, &entry("a", 9)).unwrap();
        w.put_entry(&secret, 1, &entry("a", 9)).unwrap();
        db.apply(w).unwrap();
        assert_eq!(db.head(&bau).unwrap(), 3);
        assert_eq!(db.head(&bauamt).unwrap(), 1);
        assert_eq!(db.head(&GroupHandle::Announcements).unwrap(), 0);
        let got: Vec<u64> = db
            .entries(&bau, 1, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(got, vec![2, 3]);
        assert!(db.entries(&bau, u64::MAX, 10).unwrap().is_empty());
        let sender = UserId::parse("a").unwrap();
        assert_eq!(
            db.deduplicated(&bau, &sender, &ClientMsgId([2; 16]))
                .unwrap(),
            Some(2)
        );
    }
}
