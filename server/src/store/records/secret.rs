//! Secret groups as the delivery service sees them: KeyPackages, the born group's
//! members and epoch, openmls' public state, Welcomes waiting for devices, and the one
//! accepted commit per epoch.
//!
//! Keys: `kp/…`, `secret/<group>`, `mls/<group>`, `welcome/…`, `commit/<group>\0<epoch>`
//! (see the table in the parent module).

use rathaus_protocol::messages::WelcomeInfo;
use rathaus_protocol::{DeviceId, GroupHandle, UserId};
use serde::{Deserialize, Serialize};

use super::{device_key, encode, key, Db, StoreError, Writes, COMMIT, KP, MLS, SECRET, WELCOME};

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
