//! What this device sends to a secret group's log: application messages and commits, each
//! an intent that is built again after losing its epoch to another member (DESIGN §5.6).

use rathaus_protocol::{
    ClaimedKeyPackage, Content, DeviceId, EntryBody, ErrorCode, GroupHandle, LogEntry, Request,
    Response, UserId,
};

use rathaus_protocol::mls::DeviceCredential;

use super::intents::{self, IntentState};
use super::policy::{describe_change, PolicyChange};
use super::rows::{blank_row, diff};
use super::{finish, key_fingerprint, mls_group_id};
use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::mls::{CommitOutput, MlsError};
use crate::store::{self, RowKind, TimelineRow};

/// How often an intent (commit or send) is retried after losing its epoch.
const MAX_EPOCH_RETRIES: usize = 5;

/// What a commit intent is about; re-evaluated after every lost epoch. Kept in the
/// profile until done (see `intents`); the encoding is postcard, so variants are only
/// ever appended.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) enum Intent {
    /// Add every device of these users that is not yet in the group; of this user's own
    /// devices only those linked with this device (DESIGN §5.9: a further device joins only
    /// after one of the user's devices approved it).
    Add(Vec<UserId>),
    /// Commit the stored (already checked) server proposals.
    PendingProposals,
    /// Rewrite the group policy.
    Policy(PolicyChange),
    /// Add this user's further device, linked by this device (its key pinned as linked).
    LinkDevice(DeviceId),
}

impl Client {
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
            // The server learns which blob the post refers to (never its key), so the
            // blob lives as long as the post.
            let body = match &content.body {
                rathaus_protocol::ContentBody::Attachment { blob, .. } => {
                    rathaus_protocol::PostBody::MlsAttachment {
                        message,
                        blob: *blob,
                    }
                }
                _ => rathaus_protocol::PostBody::Mls(message),
            };
            let request = Request::Post {
                group: group.clone(),
                client_id,
                body,
            };
            match self.request(&request).await {
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => {
                    self.fetch_secret_log(group).await?;
                    // The server may be behind rather than this device (a restore).
                    self.repair_if_behind(group).await?;
                    last = Some(e);
                }
                other => return other,
            }
        }
        // Every retry found the server at a later epoch: unless others kept committing,
        // the commits in between are lost to this device.
        if let Some(missed) = self.missed_lost_changes(group).await? {
            return Err(missed);
        }
        Err(last.unwrap_or(ClientError::UnexpectedResponse("Post")))
    }

    /// Adds this user's linked `device` to `group` if this device is a member there;
    /// returns the commit's seq.
    pub(crate) async fn link_into_group(
        &mut self,
        group: &GroupHandle,
        device: DeviceId,
    ) -> Result<Option<u64>> {
        let gid = mls_group_id(group);
        self.sync_secret_group(group).await?;
        if !self.mls.has_group(&gid)? {
            return Ok(None);
        }
        self.commit_intent(group, Intent::LinkDevice(device)).await
    }

    /// Commits stored server proposals, if any survived the roster check.
    pub(super) async fn commit_pending_if_any(&mut self, group: &GroupHandle) -> Result<()> {
        let gid = mls_group_id(group);
        if self.mls.has_group(&gid)? && self.mls.pending_proposals(&gid)? > 0 {
            self.commit_intent(group, Intent::PendingProposals).await?;
        }
        Ok(())
    }

    /// Builds, sends and merges one commit for `intent`, re-evaluating it after every lost
    /// epoch race (DESIGN §5.6). Returns the commit's seq, or `None` when nothing was left
    /// to do. The intent is kept in the profile until it is done, so one that a lost
    /// connection interrupts is carried out on a later sync.
    pub(super) async fn commit_intent(
        &mut self,
        group: &GroupHandle,
        intent: Intent,
    ) -> Result<Option<u64>> {
        let id = intents::record(self.mls.connection(), group, &intent)?;
        self.run_intent(group, intent, id).await
    }

    /// Carries out the intents of `group` that an earlier run left unfinished.
    pub(super) async fn resume_intents(&mut self, group: &GroupHandle) -> Result<()> {
        for (id, intent) in intents::unfinished(self.mls.connection(), group)? {
            tracing::info!("{group}: carrying out an earlier intent {intent:?}");
            match self.run_intent(group, intent, Some(id)).await {
                Ok(_) => {}
                Err(e) if e.is_transient() => return Err(e),
                // Recorded as failed; the user saw (or will see) why in the group.
                Err(e) => tracing::warn!("{group}: an earlier intent failed: {e}"),
            }
        }
        Ok(())
    }

    async fn run_intent(
        &mut self,
        group: &GroupHandle,
        intent: Intent,
        id: Option<i64>,
    ) -> Result<Option<u64>> {
        let result = self.commit_intent_once(group, &intent, id).await;
        let conn = self.mls.connection();
        match &result {
            // Marked committed together with the merge.
            Ok(Some(_)) => {}
            Ok(None) => intents::set_state(conn, id, IntentState::Superseded, None, None)?,
            // Kept: carried out on a later sync.
            Err(e) if e.is_transient() => {}
            Err(e) => {
                intents::set_state(conn, id, IntentState::Failed, None, Some(&e.to_string()))?
            }
        }
        result
    }

    async fn commit_intent_once(
        &mut self,
        group: &GroupHandle,
        intent: &Intent,
        id: Option<i64>,
    ) -> Result<Option<u64>> {
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
            super::memory::forget_staged_commit(self.mls.connection(), &gid)?;
            let Some(out) = self.stage_intent(group, &gid, intent).await? else {
                return Ok(None);
            };
            super::memory::remember_staged_commit(self.mls.connection(), &gid, &out.commit)?;
            intents::set_state(
                self.mls.connection(),
                id,
                IntentState::Published,
                None,
                None,
            )?;
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
                            let after = self.policy(&gid)?;
                            Some(describe_change(&policy_before, &after, |u| self.person(u)))
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
                            self.mls.identity().credential_id(),
                            &added,
                            &removed,
                        );
                        if let Some(change) = policy_row {
                            let mut policy = blank_row(group, &entry);
                            policy.kind = RowKind::Membership;
                            policy.text =
                                format!("{} {change}", self.person(self.identity.user.as_str()));
                            row = Some(policy);
                        }
                        let rows: Vec<TimelineRow> = row.into_iter().collect();
                        intents::set_state(conn, id, IntentState::Committed, Some(seq), None)?;
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
                    self.repair_if_behind(group).await?;
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
                Some(next) => Ok(Some(self.mls.update_group_policy(gid, &next.encode())?)),
                None => Ok(None),
            },
            Intent::PendingProposals => {
                if self.mls.pending_proposals(gid)? == 0 {
                    return Ok(None);
                }
                Ok(Some(self.mls.commit_pending_proposals(gid)?))
            }
            Intent::LinkDevice(device) => {
                let me = self.identity.user.clone();
                let present = self.mls.members(gid)?;
                if present.iter().any(|m| {
                    m.identity.user_id() == me.as_str()
                        && m.identity.device_id() == device.to_string()
                }) {
                    return Ok(None);
                }
                let claimed = match self
                    .request(&Request::ClaimKeyPackages {
                        group: group.clone(),
                        user: me.clone(),
                    })
                    .await?
                {
                    Response::KeyPackages { packages, .. } => packages,
                    _ => return Err(ClientError::UnexpectedResponse("ClaimKeyPackages")),
                };
                let Some(package) = claimed.into_iter().find(|p| p.device == *device) else {
                    return Err(ClientError::Invalid(format!(
                        "device {device} has no KeyPackage on the server yet; let it sync once, \
                         then approve it again"
                    )));
                };
                if let Some(refusal) = self.check_key_package(&me, &package)? {
                    self.local_warning(group, &refusal)?;
                    return Err(ClientError::Invalid(refusal));
                }
                Ok(Some(self.mls.add_members(gid, &[package.key_package])?))
            }
            Intent::Add(users) => {
                let present = self.mls.members(gid)?;
                let mut packages = Vec::new();
                for user in users {
                    // Someone already in the group was admitted (maybe by another owner
                    // who won the race): claiming would only use up their KeyPackages.
                    // This user's own linked devices are the exception.
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
                    for package in claimed {
                        if present.iter().any(|m| {
                            m.identity.user_id() == user.as_str()
                                && m.identity.device_id() == package.device.0.to_string()
                        }) {
                            continue;
                        }
                        if let Some(refusal) = self.check_key_package(user, &package)? {
                            self.local_warning(group, &refusal)?;
                            continue;
                        }
                        if *user == self.identity.user
                            && !self.is_linked(&package.device.0.to_string())?
                        {
                            self.unlinked_own_device(group, &package)?;
                            continue;
                        }
                        packages.push(package);
                    }
                }
                if packages.is_empty() {
                    return Ok(None);
                }
                let bytes: Vec<Vec<u8>> = packages.into_iter().map(|p| p.key_package).collect();
                Ok(Some(self.mls.add_members(gid, &bytes)?))
            }
        }
    }

    /// The server offered a device under this user's own id that none of this user's
    /// devices linked (DESIGN §5.9): it is not added, and the user is warned once per
    /// device and group, as an owner with auto-admit would otherwise be at every sync.
    fn unlinked_own_device(&self, group: &GroupHandle, package: &ClaimedKeyPackage) -> Result<()> {
        let device = DeviceCredential {
            user: self.identity.user.clone(),
            device: package.device,
        };
        let gid = mls_group_id(group);
        let what = format!("unlinked-{}", package.device.0);
        if super::memory::first_warning(self.mls.connection(), &gid, &what)? {
            self.local_warning(
                group,
                &format!(
                    "WARNING: the server offered a device {device} under your own id that none                      of your devices approved; not added. If it is yours, approve it from this                      device (`rathaus devices approve CODE`); if not, tell IT"
                ),
            )?;
        }
        Ok(())
    }

    /// Why a claimed KeyPackage must not be used, if it must not (DESIGN §5.9): its
    /// credential must be exactly the requested user and the device the server labelled
    /// it with, in canonical form, and its key the pinned key where one is pinned.
    fn check_key_package(
        &self,
        user: &UserId,
        package: &ClaimedKeyPackage,
    ) -> Result<Option<String>> {
        let expected = DeviceCredential {
            user: user.clone(),
            device: package.device,
        };
        let (identity, key) = match self.mls.key_package_identity(&package.key_package) {
            Ok(found) => found,
            Err(MlsError::Storage(e)) => return Err(e.into()),
            Err(e) => {
                return Ok(Some(format!(
                    "WARNING: the server handed out an invalid KeyPackage for {expected} ({e}); \
                     not added"
                )))
            }
        };
        if DeviceCredential::parse(&identity).as_ref() != Some(&expected) {
            return Ok(Some(format!(
                "WARNING: the server handed out a KeyPackage of {} when asked for {expected}; \
                 not added",
                String::from_utf8_lossy(&identity)
            )));
        }
        if let Some(pin) = self.device_pin(user, &package.device.to_string())? {
            if pin.key != key {
                return Ok(Some(format!(
                    "WARNING: the KeyPackage for {expected} carries key {}, not the key this \
                     device knows ({}); not added",
                    key_fingerprint(&key),
                    key_fingerprint(&pin.key)
                )));
            }
        }
        Ok(None)
    }
}
