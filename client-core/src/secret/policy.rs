//! The group's policy (owners, auto-admit): read from the MLS group context, where only
//! members can change it, and the changes owners commit. The encoding and the rule that
//! judges every change live in `rathaus_protocol::mls`.

use rathaus_protocol::mls::GroupPolicy;
use rathaus_protocol::{GroupHandle, UserId};

use super::mls_group_id;
use super::send::Intent;
use crate::client::Client;
use crate::error::{ClientError, Result};

/// The policy after `change`, or `None` if it is in effect already. Refuses to remove the
/// last owner.
pub(super) fn policy_after(
    policy: &GroupPolicy,
    group: &GroupHandle,
    change: &PolicyChange,
) -> Result<Option<GroupPolicy>> {
    let mut next = policy.clone();
    match change {
        PolicyChange::AutoAdmit(on) => next.auto_admit = *on,
        PolicyChange::AddOwner(user) if !policy.is_owner(user) => next.owners.push(user.clone()),
        PolicyChange::RemoveOwner(user) if policy.is_owner(user) => {
            if policy.owners.len() == 1 {
                return Err(ClientError::Invalid(format!(
                    "{user} is the last owner of {group}; a group keeps at least one owner \
                     (make someone else an owner first)"
                )));
            }
            next.owners.retain(|o| o != user);
        }
        PolicyChange::Claim(user) if !policy.is_owner(user) => next.owners.push(user.clone()),
        PolicyChange::AddOwner(_) | PolicyChange::RemoveOwner(_) | PolicyChange::Claim(_) => {}
    }
    Ok((next != *policy).then_some(next))
}

/// What changed from `before` to `after`, for a timeline row ("turned on auto-admit and
/// made Jonas Weber (P1002) an owner").
pub(super) fn describe_change(
    before: &GroupPolicy,
    after: &GroupPolicy,
    person: impl Fn(&str) -> String,
) -> String {
    let mut parts = Vec::new();
    if before.auto_admit != after.auto_admit {
        parts.push(if after.auto_admit {
            "turned on auto-admit".to_owned()
        } else {
            "turned off auto-admit".to_owned()
        });
    }
    for owner in after.owners.iter().filter(|o| !before.is_owner(o)) {
        parts.push(format!("made {} an owner", person(owner.as_str())));
    }
    for owner in before.owners.iter().filter(|o| !after.is_owner(o)) {
        parts.push(format!("removed {} as an owner", person(owner.as_str())));
    }
    if parts.is_empty() {
        "rewrote the group settings without changing them".to_owned()
    } else {
        parts.join(" and ")
    }
}

/// A change of a secret group's policy that an owner commits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum PolicyChange {
    /// Turn auto-admit on or off.
    AutoAdmit(bool),
    /// Make a member an owner.
    AddOwner(UserId),
    /// Take a user's ownership away.
    RemoveOwner(UserId),
    /// Become an owner when no owner is left on the roster.
    Claim(UserId),
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

    /// A member takes ownership of a group none of whose owners is left on its roster
    /// (DESIGN §5.4: owners never run out); every member's client accepts it only then.
    pub async fn claim_ownership(&mut self, group: &GroupHandle) -> Result<PolicyOutcome> {
        if !group.is_secret() {
            return Err(ClientError::Invalid(format!(
                "{group} is not a secret group; only secret groups have owners"
            )));
        }
        self.sync_secret_group(group).await?;
        let gid = mls_group_id(group);
        if !self.mls.has_group(&gid)? {
            return Err(ClientError::NotMember(format!(
                "this device is not a member of {group}"
            )));
        }
        let roster = self.secret_info(group).await?.roster;
        let policy = self.policy(&gid)?;
        if let Some(owner) = policy.owners.iter().find(|o| roster.contains(o)) {
            return Err(ClientError::Invalid(format!(
                "{owner} is still an owner of {group}; ask them (ownership can be claimed only \
                 when no owner is left on the roster)"
            )));
        }
        let me = self.identity.user.clone();
        match self
            .commit_intent(group, Intent::Policy(PolicyChange::Claim(me)))
            .await?
        {
            Some(seq) => Ok(PolicyOutcome::Changed { seq }),
            None => Ok(PolicyOutcome::Unchanged),
        }
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
        if matches!(change, PolicyChange::Claim(_)) {
            return policy_after(&policy, group, change);
        }
        if !policy.is_owner(&self.identity.user) {
            return Err(ClientError::NotOwner(format!(
                "only an owner of {group} can change its owners or auto-admit (owners: {})",
                owner_list(&policy)
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
        policy_after(&policy, group, change)
    }

    /// The group's policy as this device's MLS state holds it. A group without a
    /// readable policy has no owners: nobody can admit anyone.
    pub(super) fn policy(&self, gid: &[u8]) -> Result<GroupPolicy> {
        Ok(self
            .mls
            .group_policy(gid)?
            .and_then(|bytes| GroupPolicy::decode(&bytes))
            .unwrap_or(GroupPolicy {
                owners: Vec::new(),
                auto_admit: false,
            }))
    }
}

/// The owners, comma-separated, for messages.
pub(super) fn owner_list(policy: &GroupPolicy) -> String {
    policy
        .owners
        .iter()
        .map(UserId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
