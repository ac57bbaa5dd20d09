//! The secret side of a sync: what the server reports about secret groups, one group's
//! sync (birth, log, pending removals, auto-admit), and pushed events.

use std::time::Duration;

use rathaus_protocol::messages::SecretGroupInfo;
use rathaus_protocol::mls::Roster;
use rathaus_protocol::{GroupHandle, Request, Response};

use super::send::Intent;
use super::{memory, mls_group_id};
use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::store::{self, TimelineRow};

/// Settings key of the grace period before a removal counts as dropped.
const REMOVAL_GRACE_KEY: &str = "removal_grace_ms";

/// The default grace period: the server asks a member every 5 s, so a minute covers
/// a dozen members in turn being offline.
const REMOVAL_GRACE_MS: i64 = 60_000;

impl Client {
    /// The secret groups this user is rostered in or owns, as the server reports them.
    pub async fn secret_group_infos(&mut self) -> Result<Vec<SecretGroupInfo>> {
        match self.request(&Request::SecretGroups).await? {
            Response::SecretGroups(groups) => Ok(groups),
            _ => Err(ClientError::UnexpectedResponse("SecretGroups")),
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

    /// Applies a pushed event about a secret group; returns the new timeline rows.
    pub(crate) async fn apply_secret_event(
        &mut self,
        event: &rathaus_protocol::Event,
    ) -> Result<Vec<TimelineRow>> {
        use rathaus_protocol::Event;
        match event {
            Event::Posted { group, entry } if group.is_secret() => {
                let before = self.store.cursor(&group.to_string())?;
                // The message right after the cursor: processed as pushed, without
                // asking for it again (a commit, a gap or anything else is fetched).
                if self.process_pushed_message(group, entry, before)? {
                    return self.rows_after(group, before);
                }
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

    pub(super) async fn secret_info(&mut self, group: &GroupHandle) -> Result<SecretGroupInfo> {
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
        let conn = self.mls.connection();
        if !info.born {
            if memory::was_held(conn, &gid)? || self.mls.has_group(&gid)? {
                // The server forgot a group this device holds: a server fault (or an
                // operator who wants the group created anew, with a roster of their
                // choosing). Never re-created; the state stays.
                if memory::first_warning(conn, &gid, "unborn")? {
                    self.local_warning(
                        group,
                        &format!(
                            "WARNING: the server says {group} does not exist, but this device \
                             holds it; it is not created again. Ask IT what happened to the \
                             server's data."
                        ),
                    )?;
                }
                return Ok(self.rows_after(group, before)?.len());
            }
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
        self.resume_intents(group).await?;
        let policy = self.policy(&gid)?;
        if policy.auto_admit && policy.is_owner(&me) && !info.pending.is_empty() {
            self.commit_intent(group, Intent::Add(info.pending.clone()))
                .await?;
        } else if group.room().is_some() && policy.is_owner(&me) && !info.pending.is_empty() {
            self.admit_invited(group, &info.pending).await?;
        }
        self.check_removals_due(group, &super::log::roster_of(info))?;
        let conn = self.mls.connection();
        if policy.owners.iter().any(|o| info.roster.contains(o)) {
            memory::clear_warning(conn, &gid, "no-owner")?;
        } else if memory::first_warning(conn, &gid, "no-owner")? {
            self.local_warning(
                group,
                &format!(
                    "WARNING: no owner of {group} is left on its roster, so nobody can admit \
                     colleagues; any member can take ownership with `rathaus owners {group} \
                     --claim`"
                ),
            )?;
        }
        Ok(self.rows_after(group, before)?.len())
    }

    /// How long a device whose user left the roster may stay in the tree before this
    /// device warns that its removal was dropped (DESIGN §5.5: the server proposes it at
    /// once and asks one member after another to commit it, a few seconds each).
    pub fn set_removal_grace(&self, grace: Duration) -> Result<()> {
        store::set_setting_on(
            self.mls.connection(),
            REMOVAL_GRACE_KEY,
            Some(&grace.as_millis().to_string()),
        )
    }

    /// Compares the tree with the roster: a device whose user left the roster and is
    /// still in the tree after the grace period is a dropped removal, shown as a
    /// `warning` (once per device). Until it is removed it can read what is sent.
    fn check_removals_due(&self, group: &GroupHandle, roster: &Roster) -> Result<()> {
        let gid = mls_group_id(group);
        let conn = self.mls.connection();
        let grace_ms: i64 = store::setting_on(conn, REMOVAL_GRACE_KEY)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(REMOVAL_GRACE_MS);
        let now = crate::time_fmt::now_ms();
        for member in self.mls.members(&gid)? {
            if roster.may_stay(member.identity.credential_id()) {
                continue;
            }
            let device = member.identity.to_string();
            let since = memory::off_roster_since(conn, &gid, &device, now)?;
            if now - since >= grace_ms
                && memory::first_warning(conn, &gid, &format!("removal-due-{device}"))?
            {
                let label = self.device_label(&super::rows::member_device(&member), true);
                self.local_warning(
                    group,
                    &format!(
                        "WARNING: {label} is no longer on the roster of {group} (or the device \
                         was revoked) but still in the group: the server has not had the device \
                         removed, so it can read what is sent until it is"
                    ),
                )?;
            }
        }
        Ok(())
    }
}
