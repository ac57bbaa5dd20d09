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
//! | `kp/<user>\0<device u64 BE>` | [`KeyPackageRecord`] |
//! | `secret/<group>` | [`SecretGroupRecord`] (present once the group is born) |
//! | `mls/<group>` | [`PublicStateRecord`] (openmls' public group state) |
//! | `welcome/<user>\0<device u64 BE>` | `Vec<WelcomeInfo>` waiting for the device |
//! | `commit/<group>\0<epoch u64 BE>` | seq (u64) of the commit accepted in that epoch |
//!
//! Announcements, acknowledgements, the audit log and retention: see [`editorial`];
//! blobs, uploads and the document library: see [`blobs`];
//! retired departments: see [`retired`]; the credential throttle's counters: see
//! [`throttle`].

mod blobs;
mod editorial;
mod retired;
mod throttle;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rathaus_protocol::messages::WelcomeInfo;
use rathaus_protocol::{
    ClientMsgId, DepartmentSlug, DeviceId, DeviceKey, EntryBody, GroupHandle, LogEntry, Role,
    UserId,
};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::{ApplyTicket, Batch, Store, StoreError};

pub use blobs::{BlobRecord, BlobRef, UploadRecord};
pub use editorial::{AckRecord, AnnouncementRecord, RetentionRecord};
pub use retired::RetiredDepartment;
pub use throttle::ThrottleRecord;

/// Server-wide settings fixed at `init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMeta {
    /// Organisation name shown to clients.
    pub org: String,
    /// When the server was initialised, Unix ms.
    pub created_ms: i64,
}

/// A user (a colleague, identified by personnel number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Personnel number.
    pub id: UserId,
    /// Display name.
    pub name: String,
    /// Roles; always contains [`Role::Member`].
    pub roles: Vec<Role>,
    /// Departments the user belongs to.
    pub departments: Vec<DepartmentSlug>,
    /// Argon2id PHC string, set at enrollment.
    pub password_hash: Option<String>,
    /// Every device ever enrolled, revoked ones included (ids are never reused).
    pub devices: Vec<DeviceRecord>,
    /// Offboarded: can never authenticate again; posts remain.
    pub removed: bool,
    /// When the user was provisioned, Unix ms.
    pub created_ms: i64,
}

impl UserRecord {
    /// Whether the user has `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Devices that may still authenticate.
    pub fn active_devices(&self) -> impl Iterator<Item = &DeviceRecord> {
        self.devices.iter().filter(|d| !d.revoked)
    }
}

/// A device of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Server-allocated id.
    pub id: DeviceId,
    /// Ed25519 public key; proves possession at login.
    pub key: DeviceKey,
    /// Name given at enrollment.
    pub name: String,
    /// Enrollment time, Unix ms.
    pub created_ms: i64,
    /// Revoked devices can no longer authenticate.
    pub revoked: bool,
}

/// A department with its public group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepartmentRecord {
    /// Short name and public group handle.
    pub slug: DepartmentSlug,
    /// Display name.
    pub name: String,
    /// Owners (also members).
    pub owners: Vec<UserId>,
    /// Members (the roster).
    pub members: Vec<UserId>,
    /// Creation time, Unix ms.
    pub created_ms: i64,
}

/// An open enrollment code. Only its hash is stored, so a database copy cannot enroll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRecord {
    /// SHA-256 of the normalised code.
    pub sha256: [u8; 32],
    /// When it was issued, Unix ms.
    pub created_ms: i64,
    /// When it stops working, Unix ms.
    pub expires_ms: i64,
}

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

/// The MLS KeyPackages a device uploaded (DESIGN §5.3), as `MLSMessage` bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPackageRecord {
    /// One-time packages, oldest first; each is handed out once.
    pub one_time: Vec<Vec<u8>>,
    /// Handed out when no one-time package is left; never deleted, only replaced.
    pub last_resort: Option<Vec<u8>>,
}

/// What the delivery service needs to know about a born secret group on every request,
/// kept apart from the (larger) openmls state so posts and fetches stay cheap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretGroupRecord {
    /// The current epoch.
    pub epoch: u64,
    /// The devices in the ratchet tree.
    pub members: Vec<LeafRecord>,
    /// GroupInfo `MLSMessage` of the current epoch, as the last committer sent it.
    pub group_info: Vec<u8>,
    /// Leaves the server proposed to remove in `epoch` (proposals in the log).
    pub proposed_removals: Vec<u32>,
}

/// One device in a secret group's ratchet tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafRecord {
    /// Leaf index in the tree.
    pub leaf: u32,
    /// The device's user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// Seq of the commit that added the device (0 for the creator): it never receives
    /// entries up to this one.
    pub joined_seq: u64,
}

/// openmls' public group state of a secret group: the key-value pairs its storage
/// provider wrote, sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicStateRecord {
    /// openmls storage key → value.
    pub values: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Typed access to the server's records.
#[derive(Clone)]
pub struct Db {
    /// The underlying key-value store.
    kv: Arc<dyn Store>,
    /// Counts applied batches that wrote a user record (see [`Db::users_generation`]).
    users_generation: Arc<AtomicU64>,
}

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
        }
    }

    /// A number that changes after every applied batch that wrote a user record through
    /// this `Db` (or a clone of it); `None` when other processes write the store too, so
    /// that no number can say a user record is unchanged.
    ///
    /// A reader that loads the number *before* reading a user record may keep the record
    /// for as long as the number stays the same: the number moves only after the write
    /// became visible, so a record read before a change is never kept past it.
    pub fn users_generation(&self) -> Option<u64> {
        if self.kv.shared() {
            return None;
        }
        Some(self.users_generation.load(Ordering::SeqCst))
    }

    /// Records that a batch writing user records was applied.
    fn users_changed(&self) {
        self.users_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.kv
    }

    /// Server settings; `None` before `init`.
    pub fn meta(&self) -> Result<Option<ServerMeta>, StoreError> {
        self.get(META)
    }

    /// A user.
    pub fn user(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError> {
        self.get(&user_key(id))
    }

    /// The personnel number as stored, for one typed in any case (`p1001` → `P1001`);
    /// `None` if no such user exists.
    pub fn canonical_user_id(&self, id: &UserId) -> Result<Option<UserId>, StoreError> {
        if self.kv.get(&user_key(id))?.is_some() {
            return Ok(Some(id.clone()));
        }
        let Some(bytes) = self.kv.get(&user_fold_key(id))? else {
            return Ok(None);
        };
        Ok(std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| UserId::parse(s).ok()))
    }

    /// Writes the case-folded index of personnel numbers for stores written before it
    /// existed; returns how many entries it wrote.
    pub fn index_user_ids(&self) -> Result<usize, StoreError> {
        let mut writes = Writes::new();
        let mut n = 0;
        for user in self.users()? {
            if self.kv.get(&user_fold_key(&user.id))?.is_none() {
                writes.batch.put(
                    user_fold_key(&user.id),
                    user.id.as_str().as_bytes().to_vec(),
                );
                n += 1;
            }
        }
        if n > 0 {
            self.apply(writes)?;
        }
        Ok(n)
    }

    /// All users, ordered by id.
    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.all_under(USER)
    }

    /// A department.
    pub fn department(
        &self,
        slug: &DepartmentSlug,
    ) -> Result<Option<DepartmentRecord>, StoreError> {
        self.get(&department_key(slug))
    }

    /// Whether department `slug` exists, without decoding its record (which lists every
    /// member: reading it per post would make a post cost grow with the department).
    pub fn department_exists(&self, slug: &DepartmentSlug) -> Result<bool, StoreError> {
        Ok(self.kv.get(&department_key(slug))?.is_some())
    }

    /// All departments, ordered by slug.
    pub fn departments(&self) -> Result<Vec<DepartmentRecord>, StoreError> {
        self.all_under(DEPT)
    }

    /// A project room (`room/slug`): same shape as a department — owners and the roster —
    /// kept under its own keys so it is never mistaken for one.
    pub fn room(&self, slug: &DepartmentSlug) -> Result<Option<DepartmentRecord>, StoreError> {
        self.get(&key(ROOM, &[slug.as_str().as_bytes()]))
    }

    /// Every project room.
    pub fn rooms(&self) -> Result<Vec<DepartmentRecord>, StoreError> {
        self.all_under(ROOM)
    }

    /// Users invited to a room who have not joined yet.
    pub fn room_invitations(&self, slug: &DepartmentSlug) -> Result<Vec<UserId>, StoreError> {
        Ok(self
            .get(&key(ROOM_INVITED, &[slug.as_str().as_bytes()]))?
            .unwrap_or_default())
    }

    /// The user's open enrollment code.
    pub fn code(&self, user: &UserId) -> Result<Option<CodeRecord>, StoreError> {
        self.get(&code_key(user))
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

    /// The KeyPackages of a device.
    pub fn key_packages(
        &self,
        user: &UserId,
        device: DeviceId,
    ) -> Result<KeyPackageRecord, StoreError> {
        Ok(self.get(&device_key(KP, user, device))?.unwrap_or_default())
    }

    /// A born secret group's summary (`None` while unborn).
    pub fn secret_group(
        &self,
        group: &GroupHandle,
    ) -> Result<Option<SecretGroupRecord>, StoreError> {
        self.get(&key(SECRET, &[group.to_string().as_bytes()]))
    }

    /// A born secret group's openmls public state.
    pub fn public_state(
        &self,
        group: &GroupHandle,
    ) -> Result<Option<PublicStateRecord>, StoreError> {
        self.get(&key(MLS, &[group.to_string().as_bytes()]))
    }

    /// The Welcomes waiting for a device.
    pub fn welcomes(
        &self,
        user: &UserId,
        device: DeviceId,
    ) -> Result<Vec<WelcomeInfo>, StoreError> {
        Ok(self
            .get(&device_key(WELCOME, user, device))?
            .unwrap_or_default())
    }

    /// Applies `writes` atomically.
    pub fn apply(&self, writes: Writes) -> Result<(), StoreError> {
        let users = writes.users;
        // Bumped even when the apply fails: the engine may have written part of it.
        let result = self.kv.apply(writes.batch);
        if users {
            self.users_changed();
        }
        result
    }

    /// Queues `writes` behind every batch queued before (see [`Store::enqueue`]). A
    /// batch that writes user records is waited for here, so that
    /// [`Db::users_generation`] moves only once the records are visible.
    pub fn enqueue(&self, writes: Writes) -> Result<ApplyTicket, StoreError> {
        let users = writes.users;
        let ticket = self.kv.enqueue(writes.batch)?;
        if users {
            let result = self.kv.wait_applied_blocking(ticket);
            self.users_changed();
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
    /// Whether a user record is among them.
    users: bool,
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

    /// Stores a user.
    pub fn put_user(&mut self, user: &UserRecord) -> Result<&mut Self, StoreError> {
        self.users = true;
        self.batch.put(user_key(&user.id), encode(user)?);
        // Personnel numbers are matched ignoring case: the folded form names the stored one.
        self.batch.put(
            user_fold_key(&user.id),
            user.id.as_str().as_bytes().to_vec(),
        );
        Ok(self)
    }

    /// Stores a department.
    pub fn put_department(&mut self, dept: &DepartmentRecord) -> Result<&mut Self, StoreError> {
        self.batch.put(department_key(&dept.slug), encode(dept)?);
        Ok(self)
    }

    /// Stores the user's open enrollment code (replacing an earlier one).
    pub fn put_code(&mut self, user: &UserId, code: &CodeRecord) -> Result<&mut Self, StoreError> {
        self.batch.put(code_key(user), encode(code)?);
        Ok(self)
    }

    /// Burns the user's enrollment code.
    pub fn remove_code(&mut self, user: &UserId) -> &mut Self {
        self.batch.remove(code_key(user));
        self
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

    /// Claims `epoch` of a secret group for the commit stored at `seq`: one commit per
    /// epoch is accepted, and a store shared by several processes refuses a second claim
    /// (with [`StoreError::Conflict`]).
    pub fn claim_epoch(
        &mut self,
        group: &GroupHandle,
        epoch: u64,
        seq: u64,
    ) -> Result<&mut Self, StoreError> {
        self.batch.append(
            key(
                COMMIT,
                &[group.to_string().as_bytes(), &epoch.to_be_bytes()],
            ),
            encode(&seq)?,
        );
        Ok(self)
    }

    /// Stores the KeyPackages of a device.
    pub fn put_key_packages(
        &mut self,
        user: &UserId,
        device: DeviceId,
        record: &KeyPackageRecord,
    ) -> Result<&mut Self, StoreError> {
        self.batch
            .put(device_key(KP, user, device), encode(record)?);
        Ok(self)
    }

    /// Stores a secret group's summary.
    pub fn put_secret_group(
        &mut self,
        group: &GroupHandle,
        record: &SecretGroupRecord,
    ) -> Result<&mut Self, StoreError> {
        self.batch.put(
            key(SECRET, &[group.to_string().as_bytes()]),
            encode(record)?,
        );
        Ok(self)
    }

    /// Stores a secret group's openmls public state.
    pub fn put_public_state(
        &mut self,
        group: &GroupHandle,
        record: &PublicStateRecord,
    ) -> Result<&mut Self, StoreError> {
        self.batch
            .put(key(MLS, &[group.to_string().as_bytes()]), encode(record)?);
        Ok(self)
    }

    /// Stores a project room's record.
    pub fn put_room(&mut self, room: &DepartmentRecord) -> Result<&mut Self, StoreError> {
        self.batch
            .put(key(ROOM, &[room.slug.as_str().as_bytes()]), encode(room)?);
        Ok(self)
    }

    /// Stores who is invited to a room and has not joined yet.
    pub fn put_room_invitations(
        &mut self,
        slug: &DepartmentSlug,
        invited: &[UserId],
    ) -> Result<&mut Self, StoreError> {
        self.batch.put(
            key(ROOM_INVITED, &[slug.as_str().as_bytes()]),
            encode(&invited.to_vec())?,
        );
        Ok(self)
    }

    /// Stores the Welcomes waiting for a device.
    pub fn put_welcomes(
        &mut self,
        user: &UserId,
        device: DeviceId,
        welcomes: &[WelcomeInfo],
    ) -> Result<&mut Self, StoreError> {
        self.batch
            .put(device_key(WELCOME, user, device), encode(&welcomes)?);
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
const KP: &[u8] = b"kp/";
const SECRET: &[u8] = b"secret/";
const MLS: &[u8] = b"mls/";
const WELCOME: &[u8] = b"welcome/";
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
    use rathaus_protocol::Content;

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
