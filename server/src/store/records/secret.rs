//! Secret groups as the delivery service sees them: KeyPackages, the born group's
//! members and epoch, openmls' public state, Welcomes waiting for devices, and the one
//! accepted commit per epoch.
//!
//! Keys: `kp/…`, `secret/<group>`, `mls/<group>`, `welcomeq/…` and `welcomeb/…` (and the
//! earlier releases' `welcome/…`), `commit/<group>\0<epoch>` (see the table in the parent
//! module).
//!
//! A commit that adds N devices has one Welcome and one ratchet tree for all of them:
//! they are stored once ([`WelcomeBody`]) and each device's queue names them
//! ([`QueuedWelcome`]). Stored per device, a group of 1,000 admitted in one commit wrote
//! about 450 MB.

use rathaus_protocol::messages::WelcomeInfo;
use rathaus_protocol::{DeviceId, GroupHandle, UserId};
use serde::{Deserialize, Serialize};

use super::{
    decode, device_key, encode, key, prefix_end, Db, StoreError, Writes, COMMIT, KP, MLS, SECRET,
    WELCOME, WELCOME_BODY, WELCOME_QUEUE,
};

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

/// A Welcome waiting for a device: the one of the commit at `seq` of `group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedWelcome {
    /// The group.
    pub group: GroupHandle,
    /// Seq of the commit that added the device.
    pub seq: u64,
    /// The epoch that commit created.
    pub epoch: u64,
    /// When it was queued, Unix ms: the queue's order.
    pub queued_ms: i64,
}

/// The Welcome of one commit and the ratchet tree of the epoch it creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeBody {
    /// The Welcome `MLSMessage`.
    pub welcome: Vec<u8>,
    /// The ratchet tree.
    pub ratchet_tree: Vec<u8>,
}

/// openmls' public group state of a secret group: the key-value pairs its storage
/// provider wrote, sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicStateRecord {
    /// openmls storage key → value.
    pub values: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Db {
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

    /// The Welcomes an earlier release queued for a device, whole.
    pub fn legacy_welcomes(
        &self,
        user: &UserId,
        device: DeviceId,
    ) -> Result<Vec<WelcomeInfo>, StoreError> {
        Ok(self
            .get(&device_key(WELCOME, user, device))?
            .unwrap_or_default())
    }

    /// The Welcomes queued for a device, oldest first.
    pub fn queued_welcomes(
        &self,
        user: &UserId,
        device: DeviceId,
    ) -> Result<Vec<QueuedWelcome>, StoreError> {
        let mut prefix = device_key(WELCOME_QUEUE, user, device);
        prefix.push(0);
        let end = prefix_end(&prefix);
        let mut queued = self
            .kv
            .range(&prefix, &end, usize::MAX)?
            .into_iter()
            .map(|(k, v)| decode::<QueuedWelcome>(&k, &v))
            .collect::<Result<Vec<_>, _>>()?;
        queued.sort_by_key(|q| (q.queued_ms, q.seq));
        Ok(queued)
    }

    /// A device's queued Welcome to `group`, if one waits.
    pub fn queued_welcome(
        &self,
        user: &UserId,
        device: DeviceId,
        group: &GroupHandle,
    ) -> Result<Option<QueuedWelcome>, StoreError> {
        self.get(&welcome_queue_key(user, device, group))
    }

    /// What waits for a device about `group`, in one read: its queued Welcome there, and
    /// the Welcomes an earlier release stored whole for it.
    pub fn welcomes_waiting(
        &self,
        user: &UserId,
        device: DeviceId,
        group: &GroupHandle,
    ) -> Result<(Option<QueuedWelcome>, Vec<WelcomeInfo>), StoreError> {
        let queued_key = welcome_queue_key(user, device, group);
        let legacy_key = device_key(WELCOME, user, device);
        let found = self
            .kv
            .get_many(&[queued_key.clone(), legacy_key.clone()])?;
        let mut found = found.into_iter();
        let queued = match found.next().flatten() {
            Some(v) => Some(decode(&queued_key, &v)?),
            None => None,
        };
        let legacy = match found.next().flatten() {
            Some(v) => decode(&legacy_key, &v)?,
            None => Vec::new(),
        };
        Ok((queued, legacy))
    }

    /// The Welcome and ratchet tree of the commit at `seq` of `group`.
    pub fn welcome_body(
        &self,
        group: &GroupHandle,
        seq: u64,
    ) -> Result<Option<WelcomeBody>, StoreError> {
        self.get(&welcome_body_key(group, seq))
    }
}

fn welcome_queue_key(user: &UserId, device: DeviceId, group: &GroupHandle) -> Vec<u8> {
    key(
        WELCOME_QUEUE,
        &[
            user.as_str().as_bytes(),
            &device.0.to_be_bytes(),
            group.to_string().as_bytes(),
        ],
    )
}

fn welcome_body_key(group: &GroupHandle, seq: u64) -> Vec<u8> {
    key(
        WELCOME_BODY,
        &[group.to_string().as_bytes(), &seq.to_be_bytes()],
    )
}

impl Writes {
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

    /// Stores the Welcome and ratchet tree of the commit at `seq` of `group`.
    pub fn put_welcome_body(
        &mut self,
        group: &GroupHandle,
        seq: u64,
        body: &WelcomeBody,
    ) -> Result<&mut Self, StoreError> {
        self.batch.put(welcome_body_key(group, seq), encode(body)?);
        Ok(self)
    }

    /// Queues a Welcome for a device, in place of any earlier one to the same group.
    pub fn queue_welcome(
        &mut self,
        user: &UserId,
        device: DeviceId,
        queued: &QueuedWelcome,
    ) -> Result<&mut Self, StoreError> {
        self.batch.put(
            welcome_queue_key(user, device, &queued.group),
            encode(queued)?,
        );
        Ok(self)
    }

    /// Takes a device's Welcome to `group` out of its queue.
    pub fn unqueue_welcome(
        &mut self,
        user: &UserId,
        device: DeviceId,
        group: &GroupHandle,
    ) -> &mut Self {
        self.batch.remove(welcome_queue_key(user, device, group));
        self
    }

    /// Stores what is left of the Welcomes an earlier release queued for a device whole
    /// (nothing: the record goes).
    pub fn put_legacy_welcomes(
        &mut self,
        user: &UserId,
        device: DeviceId,
        welcomes: &[WelcomeInfo],
    ) -> Result<&mut Self, StoreError> {
        let key = device_key(WELCOME, user, device);
        if welcomes.is_empty() {
            self.batch.remove(key);
        } else {
            self.batch.put(key, encode(&welcomes)?);
        }
        Ok(self)
    }
}
