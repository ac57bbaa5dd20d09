//! Trust (DESIGN §5.8): which device keys this client has seen, and the numbers people
//! compare in person.
//!
//! Every (user, device, key) the client learns from the MLS state of a secret group is
//! *pinned* on first sight (trust on first use). When a later sync shows another key for
//! a pinned device, the pin is replaced, its verification is dropped and a `warning` row
//! appears in the affected group's timeline; a new device of a user already known gets a
//! `notice` row, and a device under this user's own id that is not linked with this
//! device a `warning` row. `rathaus verify USER` prints the [`SafetyNumber`] over both
//! users' keys, and `--confirm` marks those keys verified. A [`GroupCode`] over every leaf
//! (user, device, key) and the epoch authenticator lets a team check in a meeting that
//! everybody sees the same group.
//!
//! Keys come only from MLS leaves: the server's member lists carry no keys, and a key the
//! server merely claims would prove nothing.
//!
//! Trust rows live in their own table (`trust_notices`) and are merged into the timeline
//! when it is read, after the log entry that was the newest when the change was seen:
//! the timeline's rows are keyed by the server's seq, and a local finding has none.

mod codes;
mod pins;

use std::collections::BTreeSet;

use rathaus_protocol::{GroupHandle, UserId};

use crate::client::Client;
use crate::error::Result;
use crate::secret::{key_fingerprint, mls_group_id};
use crate::store::RowKind;

pub use codes::{
    group_code, safety_number, DeviceKeyEntry, GroupCode, GroupLeafEntry, SafetyNumber,
};
pub use pins::DevicePin;

pub(crate) use pins::{add_notice, create_tables};

/// The sender of trust rows: this client's own finding, not a message.
pub const TRUST_SENDER: &str = "rathaus";

/// What `rathaus verify USER` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyReport {
    /// The other user.
    pub user: UserId,
    /// The number to compare in person.
    pub number: SafetyNumber,
    /// That user's pinned devices.
    pub devices: Vec<DevicePin>,
}

impl Client {
    /// Pins the device keys of `group`'s MLS members and records a timeline row for every
    /// key change (a warning) and every new device of a known user (a notice). Called
    /// whenever this device's view of the group may have changed.
    ///
    /// A pass leaves every member pinned with the key its leaf shows, so another pass
    /// over the same leaves finds nothing as long as no pin changed in between. That is
    /// what the digest of the leaves and the pins' generation stored with each pass
    /// show: when both are unchanged, the pass is skipped; any changed leaf (a new key, a
    /// new device) or any pin written since, by whatever path, makes it run in full.
    pub(crate) fn pin_group_keys(&self, group: &GroupHandle) -> Result<()> {
        let gid = mls_group_id(group);
        if !self.mls.has_group(&gid)? {
            return Ok(());
        }
        let members = self.mls.members(&gid)?;
        let handle = group.to_string();
        let digest = members_digest(&members);
        let conn = self.store.connection();
        if let Some((last, generation)) = pins::group_pass(conn, &handle)? {
            if last == digest && generation == pins::generation(conn)? {
                return Ok(());
            }
        }
        let seq = self.store.cursor(&handle)?;
        let now = crate::time_fmt::now_ms();
        let tx = conn.unchecked_transaction()?;
        let mut known_users = BTreeSet::new();
        for m in &members {
            let user = m.identity.user_id();
            if !pins::pins_of(&tx, user)?.is_empty() {
                known_users.insert(user.to_owned());
            }
        }
        for m in &members {
            let (user, device) = (m.identity.user_id(), m.identity.device_id());
            let own_user = user == self.identity.user.as_str();
            let own_device = own_user && device == self.identity.device.0.to_string();
            match pins::pin(&tx, user, device)? {
                None if own_user && !own_device => {
                    // A device under this user's own id that none of this user's devices
                    // linked: maybe a ghost the server slipped in.
                    pins::insert(&tx, user, device, &m.signature_key, now)?;
                    let text = format!(
                        "WARNING: {group} holds a device {device} under your own id {user} \
                         (key {}) that none of your devices approved; if it is not yours, \
                         tell the group's owners",
                        key_fingerprint(&m.signature_key)
                    );
                    pins::add_notice(&tx, &handle, seq, now, RowKind::Warning, &text)?;
                }
                None => {
                    pins::insert(&tx, user, device, &m.signature_key, now)?;
                    if known_users.contains(user) {
                        let text = format!(
                            "{} has a new device {device} (key {}); compare with `rathaus \
                             verify {user}`",
                            self.user_label(user),
                            key_fingerprint(&m.signature_key)
                        );
                        pins::add_notice(&tx, &handle, seq, now, RowKind::Notice, &text)?;
                    }
                }
                Some(pin) if pin.key != m.signature_key => {
                    pins::replace_key(&tx, user, device, &m.signature_key, now)?;
                    let text = format!(
                        "WARNING: the key of {}'s device {device} changed (was {}, now {}) — \
                         verify with `rathaus verify {user}`",
                        self.user_label(user),
                        key_fingerprint(&pin.key),
                        key_fingerprint(&m.signature_key)
                    );
                    pins::add_notice(&tx, &handle, seq, now, RowKind::Warning, &text)?;
                }
                Some(_) => {}
            }
        }
        let generation = pins::generation(&tx)?;
        pins::set_group_pass(&tx, &handle, &digest, generation)?;
        tx.commit()?;
        Ok(())
    }

    /// Records a `warning` row of this client's own finding in `group`'s timeline (after
    /// the newest entry seen), e.g. a KeyPackage the server substituted.
    pub(crate) fn local_warning(&self, group: &GroupHandle, text: &str) -> Result<()> {
        let handle = group.to_string();
        let seq = self.store.cursor(&handle)?;
        pins::add_notice(
            self.store.connection(),
            &handle,
            seq,
            crate::time_fmt::now_ms(),
            RowKind::Warning,
            text,
        )
    }

    /// The safety number of this user and `user` over the keys this device has pinned.
    /// When no key of `user` is known yet, syncs the secret groups first; `None` if still
    /// none is known (the users share no secret group this device is in).
    pub async fn safety_number(&mut self, user: &UserId) -> Result<Option<SafetyReport>> {
        self.pin_own_key()?;
        let conn = self.store.connection();
        if pins::pins_of(conn, user.as_str())?.is_empty() {
            self.sync_secret_groups().await?;
        }
        self.pin_own_key()?;
        let conn = self.store.connection();
        let theirs = pins::pins_of(conn, user.as_str())?;
        if theirs.is_empty() {
            return Ok(None);
        }
        let me = self.identity.user.as_str();
        // This user's own half comes from the devices this user's devices know, not
        // from what a group or the server lists (DESIGN §5.8): this device and the devices
        // linked with it. A device the server slipped in under this user's id changes the
        // other side's number and so shows when compared.
        let mine = self.own_devices()?;
        let number = safety_number((me, &entries(&mine)), (user.as_str(), &entries(&theirs)));
        Ok(Some(SafetyReport {
            user: user.clone(),
            number,
            devices: theirs,
        }))
    }

    /// Marks the devices of a [`SafetyReport`] verified, after the user compared the
    /// number in person. A key that changed since the report was made stays unverified.
    pub fn confirm_verified(&self, report: &SafetyReport) -> Result<()> {
        let keys: Vec<(String, Vec<u8>)> = report
            .devices
            .iter()
            .map(|d| (d.device.clone(), d.key.clone()))
            .collect();
        pins::mark_verified(self.store.connection(), report.user.as_str(), &keys)
    }

    /// The pin of one device, if this client has seen it.
    pub fn device_pin(&self, user: &UserId, device: &str) -> Result<Option<DevicePin>> {
        pins::pin(self.store.connection(), user.as_str(), device)
    }

    /// The group code of a secret group this device is a member of: over every leaf of
    /// its MLS group (user, device, key) and the current epoch authenticator.
    pub fn group_check_code(&self, group: &GroupHandle) -> Result<Option<GroupCode>> {
        let gid = mls_group_id(group);
        if !self.mls.has_group(&gid)? {
            return Ok(None);
        }
        let leaves: Vec<GroupLeafEntry> = self
            .mls
            .members(&gid)?
            .into_iter()
            .map(|m| GroupLeafEntry {
                user: m.identity.user().clone(),
                device: m.identity.device_id().to_owned(),
                key: m.signature_key,
            })
            .collect();
        let epoch = self.mls.epoch(&gid)?;
        let authenticator = self.mls.epoch_authenticator(&gid)?;
        Ok(Some(group_code(
            &group.to_string(),
            epoch,
            &leaves,
            &authenticator,
        )))
    }

    /// The devices of this user that this device knows for itself: its own key, and the
    /// devices linked with it (approved by this device, or the device that approved it).
    pub(crate) fn own_devices(&self) -> Result<Vec<DevicePin>> {
        let me = self.identity.user.as_str();
        let own_device = self.identity.device.0.to_string();
        let mut out = Vec::new();
        for pin in pins::pins_of(self.store.connection(), me)? {
            if pin.device == own_device || self.is_linked(&pin.device)? {
                out.push(pin);
            }
        }
        Ok(out)
    }

    /// Records `device` of this user, with `key`, as linked with this device: pinned,
    /// part of this user's half of every safety number, and no warning when it appears
    /// in a group.
    pub(crate) fn link_own_device(&self, device: &str, key: &[u8]) -> Result<()> {
        let conn = self.store.connection();
        let me = self.identity.user.as_str();
        let now = crate::time_fmt::now_ms();
        match pins::pin(conn, me, device)? {
            None => pins::insert(conn, me, device, key, now)?,
            Some(pin) if pin.key != key => pins::replace_key(conn, me, device, key, now)?,
            Some(_) => {}
        }
        self.store.set_setting(&linked_key(device), "1")
    }

    /// Whether this user's `device` is linked with this device.
    pub(crate) fn is_linked(&self, device: &str) -> Result<bool> {
        Ok(self.store.setting(&linked_key(device))?.is_some())
    }

    /// This device's own key is known without asking anyone.
    fn pin_own_key(&self) -> Result<()> {
        pins::insert(
            self.store.connection(),
            self.identity.user.as_str(),
            &self.identity.device.0.to_string(),
            &self.key.verifying_key().to_bytes(),
            crate::time_fmt::now_ms(),
        )
    }

    fn user_label(&self, user: &str) -> String {
        self.store
            .user_name(user)
            .ok()
            .flatten()
            .unwrap_or_else(|| user.to_owned())
    }
}

/// SHA-256 over every leaf's (user, device, key), in tree order, each field
/// length-prefixed.
fn members_digest(members: &[crate::mls::GroupMember]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"rathaus trust pass v1");
    for m in members {
        for field in [
            m.identity.user_id().as_bytes(),
            m.identity.device_id().as_bytes(),
            &m.signature_key,
        ] {
            hash.update((field.len() as u64).to_be_bytes());
            hash.update(field);
        }
    }
    hash.finalize().to_vec()
}

fn linked_key(device: &str) -> String {
    format!("linked_device:{device}")
}

fn entries(pins: &[DevicePin]) -> Vec<DeviceKeyEntry> {
    pins.iter()
        .map(|p| DeviceKeyEntry {
            device: p.device.clone(),
            key: p.key.clone(),
        })
        .collect()
}
