//! The group's policy (owners, auto-admit): its encoding in the MLS group context, the
//! changes owners commit, and the *kept policy* a device follows after a non-owner
//! changed it.

use rathaus_protocol::{GroupHandle, LogEntry, UserId};
use serde::{Deserialize, Serialize};

use super::mls_group_id;
use super::rows::blank_row;
use super::send::Intent;
use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::store::{self, TimelineRow};

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
    pub(super) fn after(&self, group: &GroupHandle, change: &PolicyChange) -> Result<Option<Self>> {
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
    pub(super) fn describe_change(
        &self,
        after: &GroupPolicy,
        name_of: impl Fn(&str) -> String,
    ) -> String {
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
pub(super) enum PolicyChange {
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

impl Client {
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
    pub(super) fn next_policy(
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

    /// The policy this device follows: the one it kept aside after a non-owner changed
    /// the group context, else the group context's.
    pub(super) fn policy(&self, gid: &[u8]) -> Result<GroupPolicy> {
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

    /// Adopts a policy change committed by an owner, or keeps the previous policy when
    /// the committer was not an owner before the commit (DESIGN §5.4); either way the
    /// change is added to the commit's row. Runs inside `process_entry`'s transaction.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn policy_update_row(
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
}

/// The settings key of the policy a device keeps after a non-owner changed the group's.
pub(super) fn kept_policy_key(gid: &[u8]) -> String {
    format!("kept_policy:{}", String::from_utf8_lossy(gid))
}

pub(super) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}
