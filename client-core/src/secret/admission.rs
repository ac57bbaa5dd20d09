//! How devices come into a secret group: its birth on an owner's device, joining from
//! Welcomes, and owners' approvals of pending users (DESIGN §5.2, §5.4).

use rathaus_protocol::messages::SecretGroupInfo;
use rathaus_protocol::{GroupHandle, Request, Response, UserId};

use super::send::Intent;
use super::{mls_group_id, GroupPolicy, SERVER_SENDER};
use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::store::{self, TimelineRow};

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
        self.sync_secret_group(group).await?;
        let gid = mls_group_id(group);
        if !self.mls.has_group(&gid)? {
            return Err(ClientError::NotMember(format!(
                "this device is not a member of {group}"
            )));
        }
        let policy = self.policy(&gid)?;
        if !policy.is_owner(self.identity.user.as_str()) {
            return Err(ClientError::NotOwner(format!(
                "only an owner of {group} can approve new members (owners: {})",
                policy.owners.join(", ")
            )));
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

    /// Creates the MLS group for an unborn secret group this user owns, registers it with
    /// the server, and admits every rostered device in one commit (DESIGN §5.2).
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
            owners: info.owners.iter().map(|o| o.to_string()).collect(),
            auto_admit: false,
        };
        self.mls
            .create_group_with_policy(&gid, &info.removal_key, Some(&policy.encode()?))?;
        let request = Request::CreateSecretGroup {
            group: group.clone(),
            group_info: self.mls.group_info(&gid)?,
            ratchet_tree: self.mls.ratchet_tree(&gid)?,
        };
        match self.request(&request).await {
            Ok(Response::Done) => {}
            Ok(_) => {
                self.mls.delete_group(&gid)?;
                return Err(ClientError::UnexpectedResponse("CreateSecretGroup"));
            }
            Err(e) if e.is_transient() => {
                self.mls.delete_group(&gid)?;
                return Err(e);
            }
            Err(e) => {
                // Another owner was faster: wait for their Welcome.
                tracing::info!("{group}: birth refused ({e}); waiting for a Welcome");
                self.mls.delete_group(&gid)?;
                return Ok(());
            }
        }
        let me = self.identity.user.clone();
        let mut everyone: Vec<UserId> = info.roster.iter().filter(|u| **u != me).cloned().collect();
        // This user's other devices join too.
        everyone.push(me);
        self.commit_intent(group, Intent::Add(everyone)).await?;
        Ok(())
    }

    /// Joins every group a Welcome is waiting for.
    pub(super) async fn accept_welcomes(&mut self) -> Result<()> {
        let welcomes = match self.request(&Request::FetchWelcomes).await? {
            Response::Welcomes(w) => w,
            _ => return Err(ClientError::UnexpectedResponse("FetchWelcomes")),
        };
        for welcome in welcomes {
            let group = welcome.group.clone();
            let gid = mls_group_id(&group);
            if self.mls.has_group(&gid)? {
                if self.mls.epoch(&gid)? >= welcome.epoch
                    && self
                        .mls
                        .members(&gid)?
                        .iter()
                        .any(|m| &m.identity == self.mls.identity())
                {
                    continue;
                }
                // State of an earlier membership: replaced by the new one.
                self.mls.delete_group(&gid)?;
            }
            let handle = group.to_string();
            let conn = self.mls.connection();
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let result = (|| -> Result<()> {
                let joined = self
                    .mls
                    .join_from_welcome(&welcome.welcome, &welcome.ratchet_tree)?;
                if joined != gid {
                    return Err(ClientError::Invalid(format!(
                        "a Welcome for {group} carries another group's id"
                    )));
                }
                let row = TimelineRow {
                    group: handle.clone(),
                    seq: welcome.seq,
                    sender: SERVER_SENDER.to_owned(),
                    sender_name: "Rathaus".to_owned(),
                    sent_at_ms: crate::time_fmt::now_ms(),
                    kind: "membership".to_owned(),
                    text: format!(
                        "This device joined {group}; messages from before are not readable here"
                    ),
                    expires_at_ms: None,
                    removes: None,
                };
                store::append_rows(conn, &handle, &[row], Some(welcome.seq))
            })();
            match result {
                Ok(()) => conn.execute_batch("COMMIT")?,
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    tracing::warn!("{group}: cannot join from Welcome: {e}");
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
