//! Secret groups (DESIGN §5): the MLS-backed side of synchronisation.
//!
//! A department's `slug/secret` group is born on an owner's device, which then admits
//! every rostered device in one commit. Every device keeps KeyPackages on the server,
//! joins from Welcomes, and processes the group's log in seq order with the
//! [`MlsEngine`]: each processed entry and the timeline rows it produces are written in
//! one SQLite transaction, so MLS state and history never get out of step.
//!
//! The group's *policy* (owners, auto-admit) lives in the MLS group context, seeded from
//! the server's department record at birth; afterwards only members can change it. Every
//! Add is checked against it: an Add committed by a non-owner becomes a `warning` row.
//! Owners change the policy with a GroupContextExtensions commit; a policy change by a
//! non-owner is merged (so this device keeps following the group) but not adopted: the
//! device keeps the previous policy as its *kept policy* and shows a `warning` row until
//! an owner commits the policy again.
//! Removals proposed by the server (its removal key is the group's only external sender)
//! are committed only when the target is no longer on the roster.

use rathaus_protocol::messages::SecretGroupInfo;
use rathaus_protocol::{
    ClaimedKeyPackage, Content, EntryBody, ErrorCode, GroupHandle, LogEntry, Request, Response,
    UserId,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::mls::{
    is_application_message, CommitOutput, DeviceIdentity, GroupMember, Incoming, MlsError,
    ProposalKind, ProposalSender,
};
use crate::store::{self, TimelineRow};

/// One-time KeyPackages a device keeps on the server (DESIGN §5.3).
pub const KEY_PACKAGE_TARGET: u32 = 20;
/// Below this many one-time KeyPackages, a sync publishes more.
pub const KEY_PACKAGE_LOW: u32 = 10;
/// How often an intent (commit or send) is retried after losing its epoch.
const MAX_EPOCH_RETRIES: usize = 5;
/// The log sender of proposals the server makes with its removal key.
const SERVER_SENDER: &str = "rathaus-server";
/// Current version of the encoded [`GroupPolicy`].
const POLICY_VERSION: u8 = 1;

/// The group's own rules, kept in the MLS group context (only members can change it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPolicy {
    /// Users whose devices may commit Adds.
    pub owners: Vec<String>,
    /// Whether owners' clients admit pending users without an explicit approval.
    pub auto_admit: bool,
}

impl GroupPolicy {
    /// The bytes of the group context extension: a format version, then the policy.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut bytes = vec![POLICY_VERSION];
        bytes.extend(
            postcard::to_allocvec(self)
                .map_err(|e| ClientError::Invalid(format!("cannot encode group policy: {e}")))?,
        );
        Ok(bytes)
    }

    /// Reads the extension bytes; `None` for a format this version does not know.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes.split_first() {
            Some((&POLICY_VERSION, rest)) => postcard::from_bytes(rest).ok(),
            _ => None,
        }
    }

    /// Whether `user` is an owner.
    pub fn is_owner(&self, user: &str) -> bool {
        self.owners.iter().any(|o| o == user)
    }

    /// The policy after `change`, or `None` if it is in effect already. Refuses to
    /// remove the last owner.
    fn after(&self, group: &GroupHandle, change: &PolicyChange) -> Result<Option<Self>> {
        let mut next = self.clone();
        match change {
            PolicyChange::AutoAdmit(on) => next.auto_admit = *on,
            PolicyChange::AddOwner(user) if !self.is_owner(user.as_str()) => {
                next.owners.push(user.to_string());
            }
            PolicyChange::RemoveOwner(user) if self.is_owner(user.as_str()) => {
                if self.owners.len() == 1 {
                    return Err(ClientError::Invalid(format!(
                        "{user} is the last owner of {group}; a group keeps at least one \
                         owner (make someone else an owner first)"
                    )));
                }
                next.owners.retain(|o| o != user.as_str());
            }
            PolicyChange::AddOwner(_) | PolicyChange::RemoveOwner(_) => {}
        }
        Ok((next != *self).then_some(next))
    }

    /// What changed from `self` to `after`, for a timeline row ("turned on auto-admit
    /// and made Jonas Weber an owner").
    fn describe_change(&self, after: &GroupPolicy, name_of: impl Fn(&str) -> String) -> String {
        let mut parts = Vec::new();
        if self.auto_admit != after.auto_admit {
            parts.push(if after.auto_admit {
                "turned on auto-admit".to_owned()
            } else {
                "turned off auto-admit".to_owned()
            });
        }
        for owner in after.owners.iter().filter(|o| !self.is_owner(o)) {
            parts.push(format!("made {} an owner", name_of(owner)));
        }
        for owner in self.owners.iter().filter(|o| !after.is_owner(o)) {
            parts.push(format!("removed {} as an owner", name_of(owner)));
        }
        if parts.is_empty() {
            "rewrote the group settings without changing them".to_owned()
        } else {
            parts.join(" and ")
        }
    }
}

/// A change of a secret group's policy that an owner commits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PolicyChange {
    /// Turn auto-admit on or off.
    AutoAdmit(bool),
    /// Make a member an owner.
    AddOwner(UserId),
    /// Take a user's ownership away.
    RemoveOwner(UserId),
}

/// What a policy change (`set_auto_admit`, `add_owner`, `remove_owner`) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOutcome {
    /// This device's commit at this seq changed the policy.
    Changed {
        /// Seq of the commit.
        seq: u64,
    },
    /// The policy already said so (perhaps another owner changed it first).
    Unchanged,
}

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
    pub user: String,
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
    /// Owners per the group's policy (the server's seed while not joined).
    pub owners: Vec<String>,
    /// Whether owners admit pending users automatically.
    pub auto_admit: bool,
    /// Rostered users waiting for an owner's approval.
    pub pending: Vec<String>,
}

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

/// What a commit intent is about; re-evaluated after every lost epoch.
#[derive(Debug, Clone)]
enum Intent {
    /// Add every device of these users (and this user's other devices) that is not yet
    /// in the group.
    Add(Vec<UserId>),
    /// Commit the stored (already checked) server proposals.
    PendingProposals,
    /// Rewrite the group policy.
    Policy(PolicyChange),
}

/// Context while processing a batch of log entries.
#[derive(Default)]
struct Batch {
    /// The roster as the server reports it now; fetched when a server proposal is in the
    /// batch.
    roster: Option<Vec<UserId>>,
}

impl Client {
    /// The secret groups this user is rostered in or owns, as the server reports them.
    pub async fn secret_group_infos(&mut self) -> Result<Vec<SecretGroupInfo>> {
        match self.request(&Request::SecretGroups).await? {
            Response::SecretGroups(groups) => Ok(groups),
            _ => Err(ClientError::UnexpectedResponse("SecretGroups")),
        }
    }

    /// Publishes KeyPackages when fewer than [`KEY_PACKAGE_LOW`] one-time packages (or no
    /// last-resort one) remain on the server. Returns how many one-time packages it
    /// published.
    pub async fn replenish_key_packages(&mut self) -> Result<u32> {
        let (one_time, last_resort) = match self.request(&Request::KeyPackageStatus).await? {
            Response::KeyPackageStatus {
                one_time,
                last_resort,
            } => (one_time, last_resort),
            _ => return Err(ClientError::UnexpectedResponse("KeyPackageStatus")),
        };
        if one_time >= KEY_PACKAGE_LOW && last_resort {
            return Ok(0);
        }
        let count = KEY_PACKAGE_TARGET.saturating_sub(one_time);
        let batch = self.mls.generate_key_packages(count as usize)?;
        let request = Request::PublishKeyPackages {
            one_time: batch.one_time,
            last_resort: (!last_resort).then_some(batch.last_resort),
        };
        match self.request(&request).await? {
            Response::KeyPackageStatus { .. } => Ok(count),
            _ => Err(ClientError::UnexpectedResponse("PublishKeyPackages")),
        }
    }

    /// Right after enrollment: publish KeyPackages so owners can admit this device at once.
    /// A failure is not fatal; the next sync publishes them.
    pub(crate) async fn publish_initial_key_packages(&mut self) {
        if let Err(e) = self.replenish_key_packages().await {
            tracing::warn!("could not publish KeyPackages after enrollment: {e}");
        }
    }

    /// Everything for secret groups: KeyPackage upkeep, Welcomes, births of groups this
    /// user owns, every joined group's log, pending removals and auto-admissions.
    /// Returns the new timeline entries per group.
    pub async fn sync_secret_groups(&mut self) -> Result<Vec<(String, usize)>> {
        self.replenish_key_packages().await?;
        self.accept_welcomes().await?;
        let infos = self.secret_group_infos().await?;
        let mut fetched = Vec::new();
        for info in infos {
            let n = self.sync_secret_info(&info).await?;
            if n > 0 {
                fetched.push((info.group.to_string(), n));
            }
        }
        Ok(fetched)
    }

    /// Syncs one secret group; returns how many timeline rows became new.
    pub async fn sync_secret_group(&mut self, group: &GroupHandle) -> Result<usize> {
        self.accept_welcomes().await?;
        let info = self.secret_info(group).await?;
        self.sync_secret_info(&info).await
    }

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
                let user = m.identity.user_id().to_owned();
                match by_user.iter_mut().find(|s| s.user == user) {
                    Some(s) => s.devices.push(device),
                    None => by_user.push(SecretMember {
                        name: self.name_of(&user),
                        owner: policy.is_owner(&user),
                        user,
                        devices: vec![device],
                    }),
                }
            }
            (policy, self.mls.epoch(&gid)?, by_user)
        } else {
            let policy = GroupPolicy {
                owners: info.owners.iter().map(|o| o.to_string()).collect(),
                auto_admit: false,
            };
            let mut by_user: Vec<SecretMember> = Vec::new();
            for (user, device) in &info.members {
                let device = SecretDevice {
                    device: device.0.to_string(),
                    fingerprint: String::new(),
                };
                match by_user.iter_mut().find(|s| s.user == user.as_str()) {
                    Some(s) => s.devices.push(device),
                    None => by_user.push(SecretMember {
                        name: self.name_of(user.as_str()),
                        owner: policy.is_owner(user.as_str()),
                        user: user.to_string(),
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
            owners: policy.owners,
            auto_admit: policy.auto_admit,
            pending: info.pending.iter().map(|u| u.to_string()).collect(),
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

    /// An owner turns auto-admit on or off (DESIGN §5.4): with it on, owners' clients
    /// admit rostered users on their next sync without `approve`.
    pub async fn set_auto_admit(&mut self, group: &GroupHandle, on: bool) -> Result<PolicyOutcome> {
        self.change_policy(group, PolicyChange::AutoAdmit(on)).await
    }

    /// An owner makes `user`, a member of the group, an owner too.
    pub async fn add_owner(&mut self, group: &GroupHandle, user: &UserId) -> Result<PolicyOutcome> {
        self.change_policy(group, PolicyChange::AddOwner(user.clone()))
            .await
    }

    /// An owner takes `user`'s ownership away; the last owner cannot be removed.
    pub async fn remove_owner(
        &mut self,
        group: &GroupHandle,
        user: &UserId,
    ) -> Result<PolicyOutcome> {
        self.change_policy(group, PolicyChange::RemoveOwner(user.clone()))
            .await
    }

    /// Checks the change locally, then commits it through the same retry path as every
    /// other commit; the checks run again on the state after every lost epoch.
    async fn change_policy(
        &mut self,
        group: &GroupHandle,
        change: PolicyChange,
    ) -> Result<PolicyOutcome> {
        if !group.is_secret() {
            return Err(ClientError::Invalid(format!(
                "{group} is not a secret group; only secret groups have owners and auto-admit"
            )));
        }
        self.sync_secret_group(group).await?;
        let gid = mls_group_id(group);
        if !self.mls.has_group(&gid)? {
            return Err(ClientError::NotMember(format!(
                "this device is not a member of {group}"
            )));
        }
        // Fails early with the rule in the message; `stage_intent` checks again.
        self.next_policy(group, &gid, &change)?;
        match self.commit_intent(group, Intent::Policy(change)).await? {
            Some(seq) => Ok(PolicyOutcome::Changed { seq }),
            None => Ok(PolicyOutcome::Unchanged),
        }
    }

    /// The policy `change` leads to from this device's current view, or `None` if it is
    /// in effect already. Only owners change the policy; a new owner must be a member.
    fn next_policy(
        &self,
        group: &GroupHandle,
        gid: &[u8],
        change: &PolicyChange,
    ) -> Result<Option<GroupPolicy>> {
        let policy = self.policy(gid)?;
        if !policy.is_owner(self.identity.user.as_str()) {
            return Err(ClientError::NotOwner(format!(
                "only an owner of {group} can change its owners or auto-admit (owners: {})",
                policy.owners.join(", ")
            )));
        }
        if let PolicyChange::AddOwner(user) = change {
            if self.user_devices_in_group(gid, user.as_str())? == 0 {
                return Err(ClientError::Invalid(format!(
                    "{user} is not a member of {group}; only members can become owners \
                     (approve them first)"
                )));
            }
        }
        policy.after(group, change)
    }

    /// Encrypts `content` for `group` and posts it, re-encrypting after a lost epoch.
    /// Returns the server's answer to the post.
    pub(crate) async fn post_secret(
        &mut self,
        group: &GroupHandle,
        client_id: rathaus_protocol::ClientMsgId,
        content: &Content,
    ) -> Result<Response> {
        let gid = mls_group_id(group);
        if !self.mls.has_group(&gid)? {
            // A Welcome may be waiting.
            self.sync_secret_group(group).await?;
            if !self.mls.has_group(&gid)? {
                return Err(ClientError::NotMember(format!(
                    "this device is not a member of {group} yet (an owner has to approve it)"
                )));
            }
        }
        let plaintext = postcard::to_allocvec(content)
            .map_err(|e| ClientError::Invalid(format!("cannot encode message: {e}")))?;
        let mut last = None;
        for _ in 0..MAX_EPOCH_RETRIES {
            let message = match self.mls.encrypt(&gid, &plaintext) {
                Ok(m) => m,
                Err(MlsError::Storage(e)) => return Err(e.into()),
                Err(_) => {
                    // Proposals or a staged commit block sending: catch up, commit what
                    // is pending, and try again.
                    self.fetch_secret_log(group).await?;
                    self.mls.discard_pending_commit(&gid)?;
                    if self.mls.pending_proposals(&gid)? > 0 {
                        self.commit_intent(group, Intent::PendingProposals).await?;
                    }
                    self.mls.encrypt(&gid, &plaintext)?
                }
            };
            let request = Request::Post {
                group: group.clone(),
                client_id,
                body: rathaus_protocol::PostBody::Mls(message),
            };
            match self.request(&request).await {
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => {
                    self.fetch_secret_log(group).await?;
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or(ClientError::UnexpectedResponse("Post")))
    }

    /// Applies a pushed event about a secret group; returns the new timeline rows.
    pub(crate) async fn apply_secret_event(
        &mut self,
        event: &rathaus_protocol::Event,
    ) -> Result<Vec<TimelineRow>> {
        use rathaus_protocol::Event;
        match event {
            Event::Posted { group, .. } if group.is_secret() => {
                let before = self.store.cursor(&group.to_string())?;
                self.fetch_secret_log(group).await?;
                self.commit_pending_if_any(group).await?;
                self.rows_after(group, before)
            }
            Event::CommitRequested { group } => {
                let before = self.store.cursor(&group.to_string())?;
                self.fetch_secret_log(group).await?;
                self.commit_pending_if_any(group).await?;
                self.rows_after(group, before)
            }
            Event::SecretGroupsChanged => {
                let infos = self.secret_group_infos().await?;
                let befores = infos
                    .iter()
                    .map(|i| Ok((i.group.clone(), self.store.cursor(&i.group.to_string())?)))
                    .collect::<Result<Vec<_>>>()?;
                self.accept_welcomes().await?;
                for info in &infos {
                    self.sync_secret_info(info).await?;
                }
                let mut rows = Vec::new();
                for (group, before) in befores {
                    rows.extend(self.rows_after(&group, before)?);
                }
                Ok(rows)
            }
            Event::KeyPackagesLow { .. } => {
                self.replenish_key_packages().await?;
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    async fn secret_info(&mut self, group: &GroupHandle) -> Result<SecretGroupInfo> {
        self.secret_group_infos()
            .await?
            .into_iter()
            .find(|i| &i.group == group)
            .ok_or_else(|| {
                ClientError::NotMember(format!(
                    "{group}: you are not on the roster of this secret group"
                ))
            })
    }

    async fn sync_secret_info(&mut self, info: &SecretGroupInfo) -> Result<usize> {
        let group = &info.group;
        let gid = mls_group_id(group);
        let me = self.identity.user.clone();
        let before = self.store.cursor(&group.to_string())?;
        if !info.born {
            if info.owners.contains(&me) {
                self.give_birth(info).await?;
            }
            return Ok(self.rows_after(group, before)?.len());
        }
        if !self.mls.has_group(&gid)? {
            // Waiting for an owner's approval (or for a Welcome).
            return Ok(0);
        }
        self.fetch_secret_log(group).await?;
        self.commit_pending_if_any(group).await?;
        let policy = self.policy(&gid)?;
        if policy.auto_admit && policy.is_owner(me.as_str()) && !info.pending.is_empty() {
            self.commit_intent(group, Intent::Add(info.pending.clone()))
                .await?;
        }
        Ok(self.rows_after(group, before)?.len())
    }

    /// Creates the MLS group for an unborn secret group this user owns, registers it with
    /// the server, and admits every rostered device in one commit (DESIGN §5.2).
    async fn give_birth(&mut self, info: &SecretGroupInfo) -> Result<()> {
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
    async fn accept_welcomes(&mut self) -> Result<()> {
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

    /// Fetches and processes the group's log after the cursor, in seq order.
    async fn fetch_secret_log(&mut self, group: &GroupHandle) -> Result<()> {
        let handle = group.to_string();
        let gid = mls_group_id(group);
        let mut learned_names = false;
        // Bounded: each round advances the cursor or stops.
        for _ in 0..100_000 {
            if !self.mls.has_group(&gid)? {
                return Ok(());
            }
            let since = self.store.cursor(&handle)?;
            let request = Request::Fetch {
                group: group.clone(),
                since,
                limit: rathaus_protocol::limits::MAX_FETCH,
            };
            let (entries, head) = match self.request(&request).await {
                Ok(Response::Entries { entries, head, .. }) => (entries, head),
                Ok(_) => return Err(ClientError::UnexpectedResponse("Fetch")),
                // Removed from the group: the server no longer delivers it.
                Err(e) if e.code() == Some(ErrorCode::Forbidden) => return Ok(()),
                Err(e) => return Err(e),
            };
            let Some(last) = entries.last().map(|e| e.seq) else {
                break;
            };
            if last <= since {
                break;
            }
            let mut batch = Batch::default();
            if entries.iter().any(|e| e.sender.as_str() == SERVER_SENDER) {
                batch.roster = Some(self.secret_info(group).await?.roster);
            }
            if !learned_names && entries.iter().any(|e| e.sender.as_str() != SERVER_SENDER) {
                self.learn_names(group).await?;
                learned_names = true;
            }
            // One SQLite transaction (one fsync) for the whole page instead of one per
            // entry: each entry still runs in its own savepoint, and its MLS state, rows
            // and the cursor become durable together with the rest of the page. A crash
            // before the commit loses the page's processing, not the entries, which are
            // fetched again.
            let mut names: Vec<(&str, &str)> = Vec::new();
            for entry in entries.iter().rev() {
                let sender = entry.sender.as_str();
                if sender != SERVER_SENDER && !names.iter().any(|(s, _)| *s == sender) {
                    names.push((sender, &entry.sender_name));
                }
            }
            self.store.set_user_names(names)?;
            let conn = self.mls.connection();
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let result = entries
                .iter()
                .filter(|entry| entry.seq > since)
                .try_for_each(|entry| self.process_entry(group, entry, &batch));
            finish(conn, result)?;
            if last >= head {
                break;
            }
        }
        self.pin_group_keys(group)
    }

    /// Processes one log entry and stores its rows and the cursor in one transaction.
    fn process_entry(&self, group: &GroupHandle, entry: &LogEntry, batch: &Batch) -> Result<()> {
        let handle = group.to_string();
        let gid = mls_group_id(group);
        if self.store.is_own_entry(&handle, entry.seq)? {
            let conn = self.mls.connection();
            return store::append_rows(conn, &handle, &[], Some(entry.seq));
        }
        let EntryBody::Mls(bytes) = &entry.body else {
            let conn = self.mls.connection();
            return store::append_rows(conn, &handle, &[], Some(entry.seq));
        };
        // What a commit is checked and described against: the policy and members before
        // it. Not needed for application messages, most of a log, and listing the members
        // of a large group for every message costs more than decrypting it.
        let before = if is_application_message(bytes) {
            None
        } else {
            Some((self.policy(&gid)?, self.mls.members(&gid)?))
        };
        let conn = self.mls.connection();
        // A savepoint: inside the caller's transaction for a page of entries, or a
        // transaction of its own.
        conn.execute_batch("SAVEPOINT rathaus_entry")?;
        let result = (|| -> Result<Option<TimelineRow>> {
            let incoming = match self.mls.process_message(bytes) {
                Ok(incoming) => incoming,
                Err(MlsError::Storage(e)) => return Err(e.into()),
                Err(e) => return Ok(Some(self.refused_row(group, entry, &gid, e)?)),
            };
            let row = match incoming {
                Incoming::Application { sender, plaintext } => {
                    Some(self.application_row(group, entry, &sender, &plaintext))
                }
                Incoming::Commit(summary) => {
                    // A message whose header says "application" decrypts to application
                    // content only (openmls parses the content by that header), so a
                    // commit always comes with its snapshot.
                    let Some((policy_before, members_before)) = &before else {
                        return Err(MlsError::protocol(
                            "process commit",
                            "a commit labelled as an application message",
                        )
                        .into());
                    };
                    let committer = summary.committer.user_id().to_owned();
                    let added_without_right = !summary.added.is_empty()
                        && !policy_before.is_owner(&committer)
                        && !policy_before.auto_admit;
                    let removed: Vec<_> = members_before
                        .iter()
                        .filter(|m| summary.removed.contains(&m.identity))
                        .cloned()
                        .collect();
                    let after = if summary.self_removed {
                        Vec::new()
                    } else {
                        self.mls.members(&gid)?
                    };
                    let added: Vec<_> = after
                        .iter()
                        .filter(|m| summary.added.contains(&m.identity))
                        .cloned()
                        .collect();
                    let mut row = self.membership_row(group, entry, &committer, &added, &removed);
                    if let Some(update) = &summary.policy_update {
                        row = Some(self.policy_update_row(
                            group,
                            entry,
                            &gid,
                            &committer,
                            policy_before,
                            update.as_deref(),
                            row,
                        )?);
                    }
                    if summary.self_removed {
                        row.get_or_insert_with(|| blank_row(group, entry)).text = format!(
                            "{} removed this device from {group}",
                            self.name_of(&committer)
                        );
                    }
                    if added_without_right {
                        let mut warning = row.unwrap_or_else(|| blank_row(group, entry));
                        warning.kind = "warning".to_owned();
                        warning.text = format!(
                            "WARNING: {} is not an owner of {group} but added members: {}",
                            self.name_of(&committer),
                            warning.text
                        );
                        row = Some(warning);
                    }
                    row
                }
                Incoming::Proposal {
                    sender: ProposalSender::External,
                    kind: ProposalKind::Remove(target),
                } => {
                    let still_rostered = batch
                        .roster
                        .as_ref()
                        .is_none_or(|r| r.iter().any(|u| u.as_str() == target.user_id()));
                    let mut row = blank_row(group, entry);
                    row.sender = SERVER_SENDER.to_owned();
                    row.sender_name = "Rathaus server".to_owned();
                    if still_rostered {
                        self.mls.clear_pending_proposals(&gid)?;
                        row.kind = "warning".to_owned();
                        row.text = format!(
                            "WARNING: the Rathaus server proposed removing {} (device {}), \
                             who is still on the roster; refused",
                            self.name_of(target.user_id()),
                            target.device_id()
                        );
                    } else {
                        row.kind = "membership".to_owned();
                        row.text = format!(
                            "Rathaus server proposed removing {} (device {}): no longer on the \
                             roster",
                            self.name_of(target.user_id()),
                            target.device_id()
                        );
                    }
                    Some(row)
                }
                Incoming::Proposal { sender, kind } => {
                    // Only the server's removals are expected as separate proposals.
                    self.mls.clear_pending_proposals(&gid)?;
                    let mut row = blank_row(group, entry);
                    row.kind = "warning".to_owned();
                    row.text =
                        format!("WARNING: ignored an unexpected proposal {kind:?} from {sender:?}");
                    Some(row)
                }
            };
            Ok(row)
        })();
        let result = result.and_then(|row| {
            let rows: Vec<TimelineRow> = row.into_iter().collect();
            store::append_rows(conn, &handle, &rows, Some(entry.seq))
        });
        finish_savepoint(conn, "rathaus_entry", result)
    }

    /// The row for an entry the engine refused. Our own commit (acknowledged by the server
    /// but not merged before a crash) is merged here instead.
    fn refused_row(
        &self,
        group: &GroupHandle,
        entry: &LogEntry,
        gid: &[u8],
        error: MlsError,
    ) -> Result<TimelineRow> {
        if entry.sender == self.identity.user {
            let before = self.mls.members(gid)?;
            if self.mls.merge_pending_commit(gid).is_ok() {
                let after = self.mls.members(gid)?;
                let (added, removed) = diff(&before, &after);
                return Ok(self
                    .membership_row(group, entry, self.identity.user.as_str(), &added, &removed)
                    .unwrap_or_else(|| blank_row(group, entry)));
            }
        }
        let mut row = blank_row(group, entry);
        match error {
            MlsError::ExternalAdd { committer } => {
                row.kind = "warning".to_owned();
                row.text = match committer {
                    None => "WARNING: refused an attempt by the server to add a member to this \
                             group"
                        .to_owned(),
                    Some(c) => format!(
                        "WARNING: refused a commit by {} that adds a member on the server's \
                         behalf",
                        self.name_of(c.user_id())
                    ),
                };
            }
            other => {
                row.kind = "undecryptable".to_owned();
                row.text = format!("(this message could not be decrypted on this device: {other})");
            }
        }
        Ok(row)
    }

    fn application_row(
        &self,
        group: &GroupHandle,
        entry: &LogEntry,
        sender: &DeviceIdentity,
        plaintext: &[u8],
    ) -> TimelineRow {
        let mut row = blank_row(group, entry);
        // The MLS signature says who wrote it; the server's label only supplies the name.
        row.sender = sender.user_id().to_owned();
        row.sender_name = if entry.sender.as_str() == sender.user_id() {
            entry.sender_name.clone()
        } else {
            self.name_of(sender.user_id())
        };
        match postcard::from_bytes::<Content>(plaintext) {
            Ok(content) if content.validate().is_ok() => {
                row.kind = content.kind().to_owned();
                row.text = content.summary();
            }
            _ => {
                row.kind = "undecryptable".to_owned();
                row.text = "(a message in a format this version does not understand)".to_owned();
            }
        }
        row
    }

    /// Adopts a policy change committed by an owner, or keeps the previous policy when
    /// the committer was not an owner before the commit (DESIGN §5.4); either way the
    /// change is added to the commit's row. Runs inside `process_entry`'s transaction.
    #[allow(clippy::too_many_arguments)]
    fn policy_update_row(
        &self,
        group: &GroupHandle,
        entry: &LogEntry,
        gid: &[u8],
        committer: &str,
        before: &GroupPolicy,
        update: Option<&[u8]>,
        row: Option<TimelineRow>,
    ) -> Result<TimelineRow> {
        let conn = self.mls.connection();
        let after = update.and_then(GroupPolicy::decode);
        let change = match &after {
            Some(after) => before.describe_change(after, |u| self.name_of(u)),
            None => "replaced the group settings with ones this version cannot read".to_owned(),
        };
        let mut row = match row {
            Some(mut row) => {
                row.text = format!("{} and {change}", row.text);
                row
            }
            None => {
                let mut row = blank_row(group, entry);
                row.sender = committer.to_owned();
                row.sender_name = self.name_of(committer);
                row.kind = "membership".to_owned();
                row.text = format!("{} {change}", row.sender_name);
                row
            }
        };
        let key = kept_policy_key(gid);
        if before.is_owner(committer) && after.is_some() {
            store::set_setting_on(conn, &key, None)?;
        } else {
            store::set_setting_on(conn, &key, Some(&to_hex(&before.encode()?)))?;
            row.kind = "warning".to_owned();
            row.text = format!(
                "WARNING: {} is not an owner of {group} but changed its settings ({}); this \
                 device keeps the previous owners ({}) and auto-admit {}",
                self.name_of(committer),
                row.text,
                before.owners.join(", "),
                if before.auto_admit { "on" } else { "off" },
            );
        }
        Ok(row)
    }

    fn membership_row(
        &self,
        group: &GroupHandle,
        entry: &LogEntry,
        committer: &str,
        added: &[GroupMember],
        removed: &[GroupMember],
    ) -> Option<TimelineRow> {
        if added.is_empty() && removed.is_empty() {
            return None;
        }
        let describe = |members: &[GroupMember], with_key: bool| {
            members
                .iter()
                .map(|m| {
                    let device = if with_key {
                        format!("device {}…", short_fingerprint(&m.signature_key))
                    } else {
                        format!("device {}", m.identity.device_id())
                    };
                    format!("{} ({device})", self.name_of(m.identity.user_id()))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if !added.is_empty() {
            parts.push(format!("added {}", describe(added, true)));
        }
        if !removed.is_empty() {
            parts.push(format!("removed {}", describe(removed, false)));
        }
        let mut row = blank_row(group, entry);
        row.sender = committer.to_owned();
        row.sender_name = self.name_of(committer);
        row.kind = "membership".to_owned();
        row.text = format!("{} {}", row.sender_name, parts.join(" and "));
        Some(row)
    }

    /// Commits stored server proposals, if any survived the roster check.
    async fn commit_pending_if_any(&mut self, group: &GroupHandle) -> Result<()> {
        let gid = mls_group_id(group);
        if self.mls.has_group(&gid)? && self.mls.pending_proposals(&gid)? > 0 {
            self.commit_intent(group, Intent::PendingProposals).await?;
        }
        Ok(())
    }

    /// Builds, sends and merges one commit for `intent`, re-evaluating it after every lost
    /// epoch race (DESIGN §5.6). Returns the commit's seq, or `None` when nothing was left
    /// to do.
    async fn commit_intent(&mut self, group: &GroupHandle, intent: Intent) -> Result<Option<u64>> {
        let gid = mls_group_id(group);
        let handle = group.to_string();
        // Membership rows name people, also those this device has not heard from yet.
        self.learn_names(group).await?;
        for attempt in 0..MAX_EPOCH_RETRIES {
            if attempt > 0 || self.mls.epoch(&gid)? > 0 {
                self.fetch_secret_log(group).await?;
            }
            if !self.mls.has_group(&gid)? {
                return Ok(None);
            }
            // A commit staged before a crash or a lost connection is not ours to reuse.
            self.mls.discard_pending_commit(&gid)?;
            let Some(out) = self.stage_intent(group, &gid, &intent).await? else {
                return Ok(None);
            };
            let epoch = out.new_epoch.saturating_sub(1);
            let request = Request::Commit {
                group: group.clone(),
                epoch,
                commit: out.commit,
                welcome: out.welcome,
                group_info: out.group_info,
            };
            match self.request(&request).await {
                Ok(Response::Committed { seq, .. }) => {
                    let before = self.mls.members(&gid)?;
                    let policy_before = self.policy(&gid)?;
                    let conn = self.mls.connection();
                    conn.execute_batch("BEGIN IMMEDIATE")?;
                    let result = (|| -> Result<()> {
                        self.mls.merge_pending_commit(&gid)?;
                        let policy_row = if matches!(intent, Intent::Policy(_)) {
                            // This device wrote its own view into the group context: what
                            // it kept aside is now the group's policy.
                            store::set_setting_on(conn, &kept_policy_key(&gid), None)?;
                            let after = self.policy(&gid)?;
                            Some(policy_before.describe_change(&after, |u| self.name_of(u)))
                        } else {
                            None
                        };
                        let after = self.mls.members(&gid)?;
                        let (added, removed) = diff(&before, &after);
                        let entry = LogEntry {
                            seq,
                            sender: self.identity.user.clone(),
                            sender_name: self.display_name_for_rows(),
                            sent_at_ms: crate::time_fmt::now_ms(),
                            client_id: rathaus_protocol::ClientMsgId([0; 16]),
                            body: EntryBody::Mls(Vec::new()),
                        };
                        let mut row = self.membership_row(
                            group,
                            &entry,
                            self.identity.user.as_str(),
                            &added,
                            &removed,
                        );
                        if let Some(change) = policy_row {
                            let mut policy = blank_row(group, &entry);
                            policy.kind = "membership".to_owned();
                            policy.text = format!("{} {change}", entry.sender_name);
                            row = Some(policy);
                        }
                        let rows: Vec<TimelineRow> = row.into_iter().collect();
                        store::record_own_entry(conn, &handle, seq)?;
                        let contiguous = store::cursor_on(conn, &handle)? + 1 == seq;
                        store::append_rows(conn, &handle, &rows, contiguous.then_some(seq))
                    })();
                    finish(conn, result)?;
                    self.pin_group_keys(group)?;
                    return Ok(Some(seq));
                }
                Ok(_) => {
                    self.mls.discard_pending_commit(&gid)?;
                    return Err(ClientError::UnexpectedResponse("Commit"));
                }
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => {
                    self.mls.discard_pending_commit(&gid)?;
                }
                // The commit may or may not have arrived: keep it staged; the next fetch
                // finds it in the log (and merges it) or the next attempt replaces it.
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    self.mls.discard_pending_commit(&gid)?;
                    return Err(e);
                }
            }
        }
        Err(ClientError::Server {
            code: ErrorCode::StaleEpoch,
            message: format!("{group}: other members kept changing the group; try again"),
        })
    }

    async fn stage_intent(
        &mut self,
        group: &GroupHandle,
        gid: &[u8],
        intent: &Intent,
    ) -> Result<Option<CommitOutput>> {
        match intent {
            Intent::Policy(change) => match self.next_policy(group, gid, change)? {
                Some(next) => Ok(Some(self.mls.update_group_policy(gid, &next.encode()?)?)),
                None => Ok(None),
            },
            Intent::PendingProposals => {
                if self.mls.pending_proposals(gid)? == 0 {
                    return Ok(None);
                }
                Ok(Some(self.mls.commit_pending_proposals(gid)?))
            }
            Intent::Add(users) => {
                let present = self.mls.members(gid)?;
                let mut packages = Vec::new();
                for user in users {
                    // Someone already in the group was admitted (maybe by another owner
                    // who won the race): claiming would only use up their KeyPackages.
                    // This user's own other devices are the exception (birth).
                    if *user != self.identity.user
                        && present
                            .iter()
                            .any(|m| m.identity.user_id() == user.as_str())
                    {
                        continue;
                    }
                    let claimed = match self
                        .request(&Request::ClaimKeyPackages {
                            group: group.clone(),
                            user: user.clone(),
                        })
                        .await
                    {
                        Ok(Response::KeyPackages { packages, .. }) => packages,
                        Ok(_) => return Err(ClientError::UnexpectedResponse("ClaimKeyPackages")),
                        // Not (or no longer) rostered, or not enrolled: nothing to add.
                        Err(e)
                            if matches!(
                                e.code(),
                                Some(ErrorCode::NotFound | ErrorCode::Forbidden)
                            ) =>
                        {
                            tracing::info!("{group}: no KeyPackages for {user}: {e}");
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    packages.extend(claimed.into_iter().filter(|p: &ClaimedKeyPackage| {
                        !present.iter().any(|m| {
                            m.identity.user_id() == user.as_str()
                                && m.identity.device_id() == p.device.0.to_string()
                        })
                    }));
                }
                if packages.is_empty() {
                    return Ok(None);
                }
                let bytes: Vec<Vec<u8>> = packages.into_iter().map(|p| p.key_package).collect();
                Ok(Some(self.mls.add_members(gid, &bytes)?))
            }
        }
    }

    /// Refreshes the display names of the department's members (for membership rows).
    async fn learn_names(&mut self, group: &GroupHandle) -> Result<()> {
        let Some(slug) = group.department() else {
            return Ok(());
        };
        let public = GroupHandle::Public(slug.clone());
        match self.members(&public).await {
            Ok(members) => self
                .store
                .set_user_names(members.iter().map(|m| (m.user.as_str(), m.name.as_str()))),
            Err(e) if e.is_transient() => Err(e),
            // Names are a nicety; ids are shown instead.
            Err(_) => Ok(()),
        }
    }

    /// The policy this device follows: the one it kept aside after a non-owner changed
    /// the group context, else the group context's.
    fn policy(&self, gid: &[u8]) -> Result<GroupPolicy> {
        let kept = store::setting_on(self.mls.connection(), &kept_policy_key(gid))?
            .and_then(|hex| from_hex(&hex))
            .and_then(|bytes| GroupPolicy::decode(&bytes));
        if let Some(kept) = kept {
            return Ok(kept);
        }
        Ok(self
            .mls
            .group_policy(gid)?
            .and_then(|bytes| GroupPolicy::decode(&bytes))
            .unwrap_or(GroupPolicy {
                owners: Vec::new(),
                auto_admit: false,
            }))
    }

    fn user_devices_in_group(&self, gid: &[u8], user: &str) -> Result<usize> {
        Ok(self
            .mls
            .members(gid)?
            .iter()
            .filter(|m| m.identity.user_id() == user)
            .count())
    }

    fn name_of(&self, user: &str) -> String {
        self.store
            .user_name(user)
            .ok()
            .flatten()
            .unwrap_or_else(|| user.to_owned())
    }

    fn display_name_for_rows(&self) -> String {
        self.conn
            .as_ref()
            .map(|(_, info)| info.name.clone())
            .unwrap_or_else(|| self.name_of(self.identity.user.as_str()))
    }

    fn rows_after(&self, group: &GroupHandle, seq: u64) -> Result<Vec<TimelineRow>> {
        Ok(self
            .store
            .timeline(&group.to_string())?
            .into_iter()
            .filter(|r| r.seq > seq)
            .collect())
    }
}

/// The MLS group id of a secret group: `"rathaus:slug/secret"`. Computed locally, so the
/// server cannot point one group's handle at another group's state.
pub fn mls_group_id(group: &GroupHandle) -> Vec<u8> {
    format!("rathaus:{group}").into_bytes()
}

/// Fingerprint of a device key, grouped for reading aloud: the first 16 bytes of its
/// SHA-256, in hex.
pub fn key_fingerprint(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    digest[..16]
        .chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The settings key of the policy a device keeps after a non-owner changed the group's.
fn kept_policy_key(gid: &[u8]) -> String {
    format!("kept_policy:{}", String::from_utf8_lossy(gid))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn short_fingerprint(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    format!("{:02x}{:02x}", digest[0], digest[1])
}

fn diff(before: &[GroupMember], after: &[GroupMember]) -> (Vec<GroupMember>, Vec<GroupMember>) {
    let added = after
        .iter()
        .filter(|m| !before.iter().any(|b| b.identity == m.identity))
        .cloned()
        .collect();
    let removed = before
        .iter()
        .filter(|m| !after.iter().any(|a| a.identity == m.identity))
        .cloned()
        .collect();
    (added, removed)
}

fn blank_row(group: &GroupHandle, entry: &LogEntry) -> TimelineRow {
    TimelineRow {
        group: group.to_string(),
        seq: entry.seq,
        sender: entry.sender.to_string(),
        sender_name: entry.sender_name.clone(),
        sent_at_ms: entry.sent_at_ms,
        kind: "mls".to_owned(),
        text: String::new(),
        expires_at_ms: None,
        removes: None,
    }
}

/// Ends the transaction begun on `conn`: commit on success, roll back on failure.
fn finish<T>(conn: &rusqlite::Connection, result: Result<T>) -> Result<T> {
    match result {
        Ok(value) => {
            conn.execute_batch("COMMIT")?;
            Ok(value)
        }
        Err(e) => {
            // Report the operation's error; a failed rollback surfaces on the next statement.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Like [`finish`], for a savepoint opened with `SAVEPOINT name`.
fn finish_savepoint<T>(conn: &rusqlite::Connection, name: &str, result: Result<T>) -> Result<T> {
    match result {
        Ok(value) => {
            conn.execute_batch(&format!("RELEASE {name}"))?;
            Ok(value)
        }
        Err(e) => {
            // Report the operation's error; a failed rollback surfaces on the next statement.
            let _ = conn.execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"));
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_round_trips_and_rejects_unknown_versions() {
        let policy = GroupPolicy {
            owners: vec!["P1001".into()],
            auto_admit: true,
        };
        let bytes = policy.encode().unwrap();
        assert_eq!(GroupPolicy::decode(&bytes), Some(policy));
        assert_eq!(GroupPolicy::decode(&[9, 0]), None);
        assert_eq!(GroupPolicy::decode(&[]), None);
        assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes));
        assert_eq!(from_hex("0"), None);
    }

    #[test]
    fn policy_changes_keep_an_owner_and_are_described() {
        let g = GroupHandle::parse("bauamt/secret").unwrap();
        let anna = GroupPolicy {
            owners: vec!["P1001".into()],
            auto_admit: false,
        };
        let jonas = UserId::parse("P1002").unwrap();
        assert!(matches!(
            anna.after(&g, &PolicyChange::RemoveOwner(UserId::parse("P1001").unwrap())),
            Err(ClientError::Invalid(msg)) if msg.contains("last owner")
        ));
        assert_eq!(
            anna.after(&g, &PolicyChange::AutoAdmit(false)).unwrap(),
            None
        );
        assert_eq!(
            anna.after(&g, &PolicyChange::RemoveOwner(jonas.clone()))
                .unwrap(),
            None
        );
        let both = anna
            .after(&g, &PolicyChange::AddOwner(jonas.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(both.owners, vec!["P1001".to_owned(), "P1002".to_owned()]);
        let name = |u: &str| {
            if u == "P1002" {
                "Jonas Weber".to_owned()
            } else {
                u.to_owned()
            }
        };
        assert_eq!(
            anna.describe_change(&both, name),
            "made Jonas Weber an owner"
        );
        let on = anna
            .after(&g, &PolicyChange::AutoAdmit(true))
            .unwrap()
            .unwrap();
        assert_eq!(anna.describe_change(&on, name), "turned on auto-admit");
        assert_eq!(
            both.after(&g, &PolicyChange::RemoveOwner(jonas)).unwrap(),
            Some(anna)
        );
    }

    #[test]
    fn group_ids_are_derived_from_the_handle() {
        let g = GroupHandle::parse("bauamt/secret").unwrap();
        assert_eq!(mls_group_id(&g), b"rathaus:bauamt/secret");
        assert_eq!(key_fingerprint(&[1; 32]).len(), 39);
    }
}
