//! How devices come into a secret group: its birth on an owner's device, joining from
//! Welcomes, and owners' approvals of pending users (DESIGN §5.2, §5.4).

use rathaus_protocol::messages::SecretGroupInfo;
use rathaus_protocol::{GroupHandle, Request, Response, UserId};

use rathaus_protocol::mls::{judge_welcome, DeviceCredential, GroupPolicy};

use super::send::Intent;
use super::{memory, mls_group_id, SERVER_SENDER};
use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::mls::MlsError;
use crate::store::{self, RowKind, TimelineRow};

/// What `approve` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// The user's devices were added by this device's commit at this seq.
    Added {
        /// Seq of the commit.
        seq: u64,
        /// Devices added.
        devices: usize,
    },
    /// The user was already a member (e.g. another owner approved first).
    AlreadyMember,
    /// The user has no device with a KeyPackage yet (not enrolled); approve again later.
    NoDevices,
    /// The server is unreachable: the approval is kept and carried out on the next sync.
    Queued,
}

impl Client {
    /// An owner admits a pending user: claims a KeyPackage for each of the user's devices
    /// and commits the Adds (DESIGN §5.4). Retries after losing an epoch race.
    pub async fn approve(&mut self, group: &GroupHandle, user: &UserId) -> Result<Approval> {
        if !group.is_secret() {
            return Err(ClientError::Invalid(format!(
                "{group} is not a secret group; only secret groups need approvals"
            )));
        }
        let offline = match self.sync_secret_group(group).await {
            Ok(_) => false,
            Err(e) if e.is_transient() => true,
            Err(e) => return Err(e),
        };
        let gid = mls_group_id(group);
        if !self.mls.has_group(&gid)? {
            return Err(ClientError::NotMember(format!(
                "this device is not a member of {group}"
            )));
        }
        let policy = self.policy(&gid)?;
        if !policy.is_owner(&self.identity.user) {
            return Err(ClientError::NotOwner(format!(
                "only an owner of {group} can approve new members (owners: {})",
                super::policy::owner_list(&policy)
            )));
        }
        if offline {
            // Kept in the profile; the next sync checks the roster and commits it.
            super::intents::record(
                self.mls.connection(),
                group,
                &Intent::Add(vec![user.clone()]),
            )?;
            return Ok(Approval::Queued);
        }
        let info = self.secret_info(group).await?;
        if !info.roster.contains(user) {
            return Err(ClientError::Invalid(format!(
                "{user} is not on the roster of {group}; an administrator adds them to the \
                 department first"
            )));
        }
        if self.user_devices_in_group(&gid, user.as_str())? > 0 {
            return Ok(Approval::AlreadyMember);
        }
        let before = self.user_devices_in_group(&gid, user.as_str())?;
        match self
            .commit_intent(group, Intent::Add(vec![user.clone()]))
            .await?
        {
            Some(seq) => Ok(Approval::Added {
                seq,
                devices: self.user_devices_in_group(&gid, user.as_str())? - before,
            }),
            None if self.user_devices_in_group(&gid, user.as_str())? > 0 => {
                Ok(Approval::AlreadyMember)
            }
            None => Ok(Approval::NoDevices),
        }
    }

    /// An owner admits every pending user of the group in one commit (DESIGN §5.4);
    /// returns each pending user with what happened to them.
    pub async fn approve_all(&mut self, group: &GroupHandle) -> Result<Vec<(UserId, Approval)>> {
        if !group.is_secret() {
            return Err(ClientError::Invalid(format!(
                "{group} is not a secret group; only secret groups need approvals"
            )));
        }
        self.sync_secret_group(group).await?;
        let gid = mls_group_id(group);
        if !self.mls.has_group(&gid)? {
            return Err(ClientError::NotMember(format!(
                "this device is not a member of {group}"
            )));
        }
        let policy = self.policy(&gid)?;
        if !policy.is_owner(&self.identity.user) {
            return Err(ClientError::NotOwner(format!(
                "only an owner of {group} can approve new members (owners: {})",
                super::policy::owner_list(&policy)
            )));
        }
        let pending = self.secret_info(group).await?.pending;
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let before: Vec<usize> = pending
            .iter()
            .map(|u| self.user_devices_in_group(&gid, u.as_str()))
            .collect::<Result<_>>()?;
        let seq = self
            .commit_intent(group, Intent::Add(pending.clone()))
            .await?;
        pending
            .into_iter()
            .zip(before)
            .map(|(user, before)| {
                let now = self.user_devices_in_group(&gid, user.as_str())?;
                let approval = match seq {
                    Some(seq) if now > before => Approval::Added {
                        seq,
                        devices: now - before,
                    },
                    _ if now > 0 => Approval::AlreadyMember,
                    _ => Approval::NoDevices,
                };
                Ok((user, approval))
            })
            .collect()
    }

    /// Creates the MLS group for an unborn secret group this user owns and registers it
    /// with the server (DESIGN §5.2). Birth admits nobody but this device: the rostered
    /// colleagues are pending invitations that an owner admits. A device that has ever
    /// held the group never creates it again (the caller checks).
    pub(super) async fn give_birth(&mut self, info: &SecretGroupInfo) -> Result<()> {
        let group = &info.group;
        let gid = mls_group_id(group);
        if info.group_id != gid {
            return Err(ClientError::Invalid(format!(
                "the server names {group} with an unexpected MLS group id; not creating it"
            )));
        }
        // A group created earlier whose birth the server never confirmed is replaced.
        self.mls.delete_group(&gid)?;
        let policy = GroupPolicy {
            owners: info.owners.clone(),
            auto_admit: false,
        };
        self.mls
            .create_group_with_policy(&gid, &info.removal_key, Some(&policy.encode()))?;
        let request = Request::CreateSecretGroup {
            group: group.clone(),
            group_info: self.mls.group_info(&gid)?,
            ratchet_tree: self.mls.ratchet_tree(&gid)?,
        };
        match self.request(&request).await {
            Ok(Response::Done) => memory::mark_held(self.mls.connection(), &gid),
            Ok(_) => {
                self.mls.delete_group(&gid)?;
                Err(ClientError::UnexpectedResponse("CreateSecretGroup"))
            }
            Err(e) if e.is_transient() => {
                self.mls.delete_group(&gid)?;
                Err(e)
            }
            Err(e) => {
                // Another owner was faster: wait for their Welcome.
                tracing::info!("{group}: birth refused ({e}); waiting for a Welcome");
                self.mls.delete_group(&gid)?;
                Ok(())
            }
        }
    }

    /// Joins every group a Welcome is waiting for, after checking it (DESIGN §5.9). A
    /// Welcome for a group this device holds is taken only after it processed its own
    /// removal; every Welcome is staged and judged before anything is written. A refused
    /// Welcome becomes a `warning` row (once per group and epoch).
    pub(super) async fn accept_welcomes(&mut self) -> Result<()> {
        let welcomes = match self.request(&Request::FetchWelcomes).await? {
            Response::Welcomes(w) => w,
            _ => return Err(ClientError::UnexpectedResponse("FetchWelcomes")),
        };
        let mut removal_key = None;
        for welcome in welcomes {
            let group = welcome.group.clone();
            if !group.is_secret() {
                continue;
            }
            let gid = mls_group_id(&group);
            let conn = self.mls.connection();
            if self.mls.has_group(&gid)? {
                let live = self
                    .mls
                    .members(&gid)?
                    .iter()
                    .any(|m| &m.identity == self.mls.identity());
                if live && !memory::was_removed(conn, &gid)? {
                    if self.mls.epoch(&gid)? < welcome.epoch
                        && memory::first_warning(conn, &gid, &format!("welcome-{}", welcome.epoch))?
                    {
                        self.local_warning(
                            &group,
                            &format!(
                                "WARNING: the server delivered a Welcome that would replace this \
                                 device's membership of {group}; refused (this device was never \
                                 removed)"
                            ),
                        )?;
                    }
                    continue;
                }
            }
            let key = match removal_key {
                Some(key) => key,
                None => {
                    let key = self.secret_info(&group).await?.removal_key;
                    removal_key = Some(key);
                    key
                }
            };
            let handle = group.to_string();
            let conn = self.mls.connection();
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let mut adder = None;
            let result = (|| -> Result<u64> {
                let joined = self.mls.join_from_welcome(
                    &welcome.welcome,
                    &welcome.ratchet_tree,
                    &key,
                    |facts| {
                        judge_welcome(facts, &gid, &self.identity.user)
                            .map_err(MlsError::WelcomeRefused)?;
                        adder = DeviceCredential::parse(&facts.adder)
                            .map(|d| (d, facts.adder_key.clone()));
                        Ok(())
                    },
                )?;
                memory::mark_held(conn, &gid)?;
                let row = TimelineRow {
                    group: handle.clone(),
                    seq: welcome.seq,
                    sender: SERVER_SENDER.to_owned(),
                    sender_name: "Rathaus".to_owned(),
                    sent_at_ms: crate::time_fmt::now_ms(),
                    kind: RowKind::Membership,
                    text: format!(
                        "This device joined {group} at epoch {}; messages from before are not \
                         readable here",
                        joined.epoch
                    ),
                    expires_at_ms: None,
                    removes: None,
                    content: None,
                };
                store::append_rows(conn, &handle, &[row], Some(welcome.seq))?;
                Ok(joined.epoch)
            })();
            match result {
                Ok(_) => {
                    conn.execute_batch("COMMIT")?;
                    // Admitted by another device of this user: that device linked this one.
                    if let Some((device, key)) = adder {
                        if device.user == self.identity.user
                            && device.device != self.identity.device
                        {
                            self.link_own_device(&device.device.to_string(), &key)?;
                        }
                    }
                }
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    tracing::warn!("{group}: cannot join from Welcome: {e}");
                    if let ClientError::Mls(MlsError::WelcomeRefused(refusal)) = &e {
                        if memory::first_warning(
                            self.mls.connection(),
                            &gid,
                            &format!("welcome-{}", welcome.epoch),
                        )? {
                            self.local_warning(
                                &group,
                                &format!("WARNING: refused a Welcome to {group}: {refusal}"),
                            )?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn user_devices_in_group(&self, gid: &[u8], user: &str) -> Result<usize> {
        Ok(self
            .mls
            .members(gid)?
            .iter()
            .filter(|m| m.identity.user_id() == user)
            .count())
    }
}
