//! A secret group as this device sees it: members with device fingerprints, owners,
//! pending users, and the group code's epoch authenticator.

use rathaus_protocol::{GroupHandle, UserId};

use super::{key_fingerprint, mls_group_id, GroupPolicy};
use crate::client::Client;
use crate::error::Result;

/// A device in a secret group, as shown by `rathaus members`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDevice {
    /// The device id.
    pub device: String,
    /// Fingerprint of its key (which signs its MLS leaf), to compare in person.
    pub fingerprint: String,
}

/// A member of a secret group with the devices in the MLS group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMember {
    /// Personnel number.
    pub user: UserId,
    /// Display name.
    pub name: String,
    /// Whether the user is an owner per the group's policy.
    pub owner: bool,
    /// Devices in the MLS group.
    pub devices: Vec<SecretDevice>,
}

/// A secret group as this device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretGroupView {
    /// Handle (`slug/secret`).
    pub group: GroupHandle,
    /// Whether the group has been created.
    pub born: bool,
    /// Whether this device is a member.
    pub joined: bool,
    /// The MLS epoch (this device's view if joined, else the server's).
    pub epoch: u64,
    /// Members with their devices (from this device's MLS state if joined).
    pub members: Vec<SecretMember>,
    /// Owners per the group's policy who are still on the roster (the server's seed while
    /// not joined).
    pub owners: Vec<UserId>,
    /// Whether owners admit pending users automatically.
    pub auto_admit: bool,
    /// Rostered users waiting for an owner's approval.
    pub pending: Vec<UserId>,
}

impl Client {
    /// The group as this device sees it: members with device fingerprints, owners,
    /// pending invitations.
    pub async fn secret_group(&mut self, group: &GroupHandle) -> Result<SecretGroupView> {
        self.sync_secret_group(group).await?;
        let info = self.secret_info(group).await?;
        self.learn_names(group).await?;
        let gid = mls_group_id(group);
        let joined = self.mls.has_group(&gid)?;
        let (policy, epoch, mut members) = if joined {
            let policy = self.policy(&gid)?;
            let mut by_user: Vec<SecretMember> = Vec::new();
            for m in self.mls.members(&gid)? {
                let device = SecretDevice {
                    device: m.identity.device_id().to_owned(),
                    fingerprint: key_fingerprint(&m.signature_key),
                };
                let user = m.identity.user().clone();
                match by_user.iter_mut().find(|s| s.user == user) {
                    Some(s) => s.devices.push(device),
                    None => by_user.push(SecretMember {
                        name: self.name_of(user.as_str()),
                        owner: policy.is_owner(&user),
                        user,
                        devices: vec![device],
                    }),
                }
            }
            (policy, self.mls.epoch(&gid)?, by_user)
        } else {
            let policy = GroupPolicy {
                owners: info.owners.clone(),
                auto_admit: false,
            };
            let mut by_user: Vec<SecretMember> = Vec::new();
            for (user, device) in &info.members {
                let device = SecretDevice {
                    device: device.0.to_string(),
                    fingerprint: String::new(),
                };
                match by_user.iter_mut().find(|s| &s.user == user) {
                    Some(s) => s.devices.push(device),
                    None => by_user.push(SecretMember {
                        name: self.name_of(user.as_str()),
                        owner: policy.is_owner(user),
                        user: user.clone(),
                        devices: vec![device],
                    }),
                }
            }
            (policy, info.epoch, by_user)
        };
        members.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(SecretGroupView {
            group: group.clone(),
            born: info.born,
            joined,
            epoch,
            members,
            // An owner who left the roster (offboarded, moved) cannot act any more.
            owners: policy
                .owners
                .iter()
                .filter(|o| info.roster.contains(o))
                .cloned()
                .collect(),
            auto_admit: policy.auto_admit,
            pending: info.pending.clone(),
        })
    }

    /// This device's MLS epoch and epoch authenticator of `group`, if it is a member:
    /// devices that see the same group have equal authenticators (the basis of the group
    /// code, DESIGN §5.8).
    pub fn group_code(&self, group: &GroupHandle) -> Result<Option<(u64, Vec<u8>)>> {
        let gid = mls_group_id(group);
        if !self.mls.has_group(&gid)? {
            return Ok(None);
        }
        Ok(Some((
            self.mls.epoch(&gid)?,
            self.mls.epoch_authenticator(&gid)?,
        )))
    }
}
