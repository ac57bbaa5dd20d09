//! Removals (DESIGN §5.5): when a user leaves a roster, the server proposes removing
//! their devices' leaves with its removal key and asks one online member after another
//! to commit the proposals.
//!
//! Delivery stops at once without any of this: readers and senders are checked against
//! the roster on every request. The proposals only take the devices out of the MLS
//! group, so they lose the keys of future epochs.
//!
//! Which leaves must go is derived, never stored: every leaf whose user is off the
//! roster, offboarded, or whose device was revoked. What is stored is which leaves were
//! proposed in the current epoch; a commit clears that, so proposals a commit did not
//! cover are issued again for the new epoch.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    ExternalProposal, GroupEpoch, GroupId, LeafNodeIndex, MlsMessageIn, ProcessedMessageContent,
    SenderExtensionIndex,
};
use openmls_rust_crypto::OpenMlsRustCrypto;
use rathaus_protocol::{DeviceId, EntryBody, Event, GroupHandle, UserId};
use tokio::sync::watch;

use super::mls::{group_id, PublicState};
use super::secret::{digest_id, on_roster, secret_handle};
use super::{Refusal, Service};
use crate::store::{DepartmentRecord, Leadership, LeafRecord, StoredEntry};

/// Personnel number under which the server's own log entries appear; reserved.
pub(crate) const SERVER_USER: &str = rathaus_protocol::mls::SERVER_IDENTITY;

/// Display name of the server's log entries.
const SERVER_NAME: &str = "Rathaus server";

/// How long a member asked to commit has before the next one is asked.
const ASK_TIMEOUT_MS: i64 = 5_000;

/// How often the background task looks at pending removals.
const TICK: Duration = Duration::from_secs(1);

/// Whom the server asked to commit a group's pending removals.
#[derive(Debug, Clone, Default)]
pub(crate) struct Asking {
    /// The epoch the request was for; a new epoch starts a new round.
    epoch: u64,
    /// Devices asked in this round, in order.
    asked: Vec<(UserId, DeviceId)>,
    /// When the last one was asked (Unix ms).
    at_ms: Option<i64>,
}

impl Service {
    /// Drives pending removals once a second until `stop` turns true (or its sender is
    /// dropped). Never panics; failures are logged and retried on the next tick.
    ///
    /// Only the node that runs the background loops (`leader`) proposes: proposals are
    /// log entries, written once for the whole database. Every node asks its own online
    /// members to commit, since only it can reach them; should two members on two nodes
    /// commit the same epoch, the database accepts one and the other client retries.
    pub async fn run_removals(
        self: Arc<Self>,
        leader: Leadership,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                _ = tick.tick() => self.drive_removals(leader.leads()).await,
            }
        }
    }

    /// One pass over every secret group: propose what is missing (with `propose`), ask
    /// whoever is next.
    pub async fn drive_removals(&self, propose: bool) {
        let groups = match (self.db.departments(), self.db.rooms()) {
            (Ok(d), Ok(r)) => d
                .iter()
                .map(|d| secret_handle(&d.slug))
                .chain(r.iter().map(|r| GroupHandle::Room(r.slug.clone())))
                .collect::<Vec<_>>(),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot list secret groups for removals");
                return;
            }
        };
        for group in groups {
            let step = if propose {
                self.drive_removal(&group).await
            } else {
                self.ask_to_commit(&group);
                Ok(())
            };
            if let Err(e) = step {
                tracing::error!(%group, error = ?e.detail, message = %e.message(), "removal step failed");
            }
        }
    }

    /// Proposes removing every leaf that must go and is not proposed yet in this epoch,
    /// then asks an online member to commit if it is someone's turn.
    pub(super) async fn drive_removal(&self, group: &GroupHandle) -> Result<(), Refusal> {
        self.propose_removals(group).await?;
        self.ask_to_commit(group);
        Ok(())
    }

    async fn propose_removals(&self, group: &GroupHandle) -> Result<(), Refusal> {
        let now = self.now_ms();
        let (first, entries, ticket) = {
            let _mls = self.mls_lock();
            let Some(mut record) = self.db.secret_group(group)? else {
                return Ok(());
            };
            let Some(dept) = self.department_of(group)? else {
                return Ok(());
            };
            let mut targets = Vec::new();
            for leaf in &record.members {
                if !record.proposed_removals.contains(&leaf.leaf) && !self.may_stay(&dept, leaf)? {
                    targets.push(leaf.leaf);
                }
            }
            if targets.is_empty() {
                return Ok(());
            }
            let state = self.db.public_state(group)?.ok_or_else(|| {
                Refusal::internal(format!("secret group {group} has no MLS state"))
            })?;
            let mut state = PublicState::load(state, group)?;
            let gid = GroupId::from_slice(&group_id(group));
            let mut entries = Vec::new();
            for leaf in targets {
                let bytes = self.remove_proposal(&mut state, &gid, record.epoch, leaf)?;
                entries.push(StoredEntry {
                    sender: server_user()?,
                    sender_name: SERVER_NAME.into(),
                    sent_at_ms: now,
                    client_id: digest_id(&bytes),
                    body: EntryBody::Mls(bytes),
                });
                record.proposed_removals.push(leaf);
            }
            let mut w = crate::store::Writes::new();
            w.put_secret_group(group, &record)?
                .put_public_state(group, &state.record()?)?;
            let mut heads = self.log_lock();
            let first = self.append_locked(&mut heads, group, &entries, w)?;
            (first, entries, self.durability.written())
        };
        self.durable(ticket).await?;
        let last = first + entries.len() as u64 - 1;
        self.mark_durable(group, last);
        tracing::info!(%group, first, last, "removal proposals stored");
        for (i, entry) in entries.iter().enumerate() {
            self.publish_entry(group, first + i as u64, entry);
        }
        // New proposals: start a new round of asking.
        self.removals_lock().remove(group);
        Ok(())
    }

    /// Signs a Remove proposal for `leaf` as the external sender, verifies it like any
    /// incoming proposal and queues it in the public state, so a commit may cover it by
    /// reference. Returns its `MLSMessage` bytes.
    fn remove_proposal(
        &self,
        state: &mut PublicState,
        gid: &GroupId,
        epoch: u64,
        leaf: u32,
    ) -> Result<Vec<u8>, Refusal> {
        let internal = |e: &dyn std::fmt::Display| {
            Refusal::internal(format!("removal proposal for leaf {leaf}: {e}"))
        };
        let message = ExternalProposal::new_remove::<OpenMlsRustCrypto>(
            LeafNodeIndex::new(leaf),
            gid.clone(),
            GroupEpoch::from(epoch),
            &self.removal_key,
            SenderExtensionIndex::new(0),
        )
        .map_err(|e| internal(&e))?;
        let bytes = message.tls_serialize_detached().map_err(|e| internal(&e))?;
        let incoming = MlsMessageIn::tls_deserialize_exact(bytes.as_slice())
            .map_err(|e| internal(&e))?
            .try_into_protocol_message()
            .map_err(|e| internal(&e))?;
        let processed = state
            .group
            .process_message(&self.crypto, incoming)
            .map_err(|e| internal(&e))?;
        match processed.into_content() {
            ProcessedMessageContent::ProposalMessage(proposal) => state
                .group
                .add_proposal(&state.storage, *proposal)
                .map_err(|e| internal(&e))?,
            _ => return Err(internal(&"not a proposal")),
        }
        Ok(bytes)
    }

    /// Asks the next online member device to commit, if removals are pending and nobody
    /// was asked within the last few seconds.
    fn ask_to_commit(&self, group: &GroupHandle) {
        let (record, dept) = match (self.db.secret_group(group), self.department_of(group)) {
            (Ok(Some(record)), Ok(Some(dept))) => (record, dept),
            _ => return,
        };
        let mut staying = Vec::new();
        let mut pending = false;
        for leaf in &record.members {
            match self.may_stay(&dept, leaf) {
                Ok(true) => staying.push(leaf),
                Ok(false) => pending = true,
                Err(_) => return,
            }
        }
        let now = self.now_ms();
        let chosen = {
            let mut removals = self.removals_lock();
            if !pending {
                removals.remove(group);
                return;
            }
            let asking = removals.entry(group.clone()).or_default();
            if asking.epoch != record.epoch {
                *asking = Asking {
                    epoch: record.epoch,
                    ..Asking::default()
                };
            }
            if asking
                .at_ms
                .is_some_and(|at| now.saturating_sub(at) < ASK_TIMEOUT_MS)
            {
                return;
            }
            let next = |asked: &[(UserId, DeviceId)]| {
                staying
                    .iter()
                    .find(|m| {
                        !asked.iter().any(|(u, d)| *u == m.user && *d == m.device)
                            && self.live.is_device_online(&m.user, m.device)
                    })
                    .map(|m| (m.user.clone(), m.device))
            };
            let mut chosen = next(&asking.asked);
            if chosen.is_none() && !asking.asked.is_empty() {
                // Everybody online was asked: start over.
                asking.asked.clear();
                chosen = next(&asking.asked);
            }
            if let Some(c) = &chosen {
                asking.asked.push(c.clone());
                asking.at_ms = Some(now);
            }
            chosen
        };
        if let Some((user, device)) = chosen {
            tracing::info!(%group, %user, %device, epoch = record.epoch, "asking a member to commit removals");
            self.push_to(
                &user,
                Some(device),
                Event::CommitRequested {
                    group: group.clone(),
                },
            );
        }
    }

    /// Whether a leaf's device may stay in the group: its user is on the roster and
    /// active, and the device is not revoked.
    fn may_stay(&self, dept: &DepartmentRecord, leaf: &LeafRecord) -> Result<bool, Refusal> {
        if !on_roster(dept, &leaf.user) {
            return Ok(false);
        }
        Ok(self
            .db
            .user(&leaf.user)?
            .is_some_and(|u| !u.removed && u.active_devices().any(|d| d.id == leaf.device)))
    }

    fn department_of(&self, group: &GroupHandle) -> Result<Option<DepartmentRecord>, Refusal> {
        match group {
            GroupHandle::Secret(_) | GroupHandle::Room(_) => self.roster_record(group),
            _ => Ok(None),
        }
    }

    fn removals_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<GroupHandle, Asking>> {
        // Single map operations; a poisoned lock holds a consistent map.
        self.removals.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The reserved identity of the server's log entries.
pub(super) fn server_user() -> Result<UserId, Refusal> {
    UserId::parse(SERVER_USER).map_err(|e| Refusal::internal(e.to_string()))
}
