//! Commits to a secret group (DESIGN §5.6, §5.9): the commit parsed at the edge
//! ([`CommitIn`]), the decision over the group's state ([`Service::accept_commit`]: MLS
//! validity, the committer's own leaf, the members' rule, the removal key), and the
//! effects around them in [`Service::commit`] (epoch check under the lock, the tree's
//! devices against the directory, Welcomes, the log append, durability, pushes).

use openmls::prelude::{
    BasicCredential, ContentType, MlsMessageBodyIn, ProcessedMessageContent, Proposal,
    ProtocolMessage, Sender,
};
use rathaus_protocol::mls::{
    judge_commit, CommitFacts, Committer, DeviceCredential, Leaf, Roster, GROUP_POLICY_EXTENSION,
};
use rathaus_protocol::{EntryBody, Event, GroupHandle, Response, UserId};

use super::groups::FETCH_BUDGET;
use super::mls::{group_id, parse_group_info, parse_message, PublicState};
use super::refused::{MlsRefused, NotFound, SecretRefused};
use super::secret::{digest_id, not_on_roster, on_roster, roster, same_device, stale, Device};
use super::{Refusal, Service, Session};
use crate::store::{
    DepartmentRecord, SecretGroupRecord, StoredEntry, UserRecord, WelcomeBody, Writes,
};

/// A commit request as the delivery service takes it: a PublicMessage commit for this
/// group, with a well-formed Welcome and GroupInfo if given. Built before any lock or
/// state is touched.
pub(super) struct CommitIn {
    /// The commit.
    pub(super) message: ProtocolMessage,
    /// The Welcome for the devices it adds.
    pub(super) welcome: Option<Vec<u8>>,
    /// The GroupInfo of the new epoch.
    pub(super) group_info: Option<Vec<u8>>,
}

impl CommitIn {
    /// Parses and checks the request's MLS bytes.
    pub(super) fn parse(
        group: &GroupHandle,
        commit: &[u8],
        welcome: Option<Vec<u8>>,
        group_info: Option<Vec<u8>>,
    ) -> Result<Self, Refusal> {
        let message = parse_message(commit, "the commit")?
            .try_into_protocol_message()
            .map_err(|_| MlsRefused::CommitNotPublic)?;
        if !matches!(message, ProtocolMessage::PublicMessage(_)) {
            return Err(MlsRefused::CommitNotPublic.into());
        }
        if message.content_type() != ContentType::Commit {
            return Err(MlsRefused::NotACommit.into());
        }
        if message.group_id().as_slice() != group_id(group) {
            return Err(MlsRefused::CommitElsewhere(group.clone()).into());
        }
        if let Some(bytes) = &welcome {
            if !matches!(
                parse_message(bytes, "the Welcome")?.extract(),
                MlsMessageBodyIn::Welcome(_)
            ) {
                return Err(MlsRefused::NotAWelcome.into());
            }
        }
        if let Some(bytes) = &group_info {
            parse_group_info(bytes)?;
        }
        Ok(Self {
            message,
            welcome,
            group_info,
        })
    }
}

/// An accepted commit: the group's state after it.
pub(super) struct Accepted {
    /// The public state with the commit merged.
    pub(super) state: PublicState,
    /// How many Add proposals it carried (each needs the Welcome).
    pub(super) adds: usize,
}

impl Service {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit(
        &self,
        session: &Session,
        me: &UserRecord,
        group: GroupHandle,
        epoch: u64,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
        group_info: Option<Vec<u8>>,
    ) -> Result<Response, Refusal> {
        let dept = self.secret_department(&group)?;
        if !on_roster(&dept, &me.id) {
            return Err(not_on_roster(&group));
        }
        let commit_size = commit.len();
        // Stored in the log, it must fit in a `Fetch` answer (and an event) on its own.
        if commit_size > FETCH_BUDGET {
            return Err(SecretRefused::CommitTooLarge {
                limit: FETCH_BUDGET,
                size: commit_size,
            }
            .into());
        }
        let CommitIn {
            message,
            welcome,
            group_info,
        } = CommitIn::parse(&group, &commit, welcome, group_info)?;
        let now = self.now_ms();
        let (seq, new_epoch, ticket, entry, touched) = {
            let _mls = self.mls_lock();
            let mut record = self
                .db
                .secret_group(&group)?
                .ok_or_else(|| NotFound::NotCreated(group.clone()))?;
            if epoch != record.epoch || message.epoch().as_u64() != record.epoch {
                return Err(stale(&group, record.epoch));
            }
            let committer = record
                .members
                .iter()
                .find(|m| m.user == me.id && m.device == session.device)
                .ok_or_else(|| Refusal::from(SecretRefused::NotACommitter(group.clone())))?
                .leaf;
            let state_record = self.db.public_state(&group)?.ok_or_else(|| {
                Refusal::internal(format!("secret group {group} has no MLS state"))
            })?;
            let state = PublicState::load(state_record, &group)?;
            let Accepted { state, adds } =
                self.accept_commit(&group, &dept, &record, committer, state, message)?;
            let mut heads = self.log_lock();
            let seq = self.next_seq(&heads, &group)?;
            let (members, added) = self.check_tree(&dept, &record, &state, seq)?;
            if adds > 0 && welcome.is_none() {
                return Err(MlsRefused::WelcomeMissing.into());
            }
            let new_epoch = state.epoch();
            let mut w = Writes::new();
            if let Some(welcome) = welcome {
                let body = WelcomeBody {
                    welcome,
                    ratchet_tree: state.ratchet_tree()?,
                };
                self.queue_welcomes(&mut w, &group, seq, new_epoch, &body, &added)?;
            }
            let removed: Vec<UserId> = record
                .members
                .iter()
                .filter(|old| !members.iter().any(|m| same_device(m, old)))
                .map(|old| old.user.clone())
                .collect();
            record.epoch = new_epoch;
            record.members = members;
            record.proposed_removals.clear();
            if let Some(info) = group_info {
                record.group_info = info;
            }
            w.put_secret_group(&group, &record)?
                .put_public_state(&group, &state.record()?)?
                .claim_epoch(&group, epoch, seq)?;
            let entry = StoredEntry {
                sender: me.id.clone(),
                sender_name: me.name.clone(),
                sent_at_ms: now,
                client_id: digest_id(&commit),
                body: EntryBody::Mls(commit),
            };
            self.append_locked(&mut heads, &group, std::slice::from_ref(&entry), w)
                .map_err(|refusal| {
                    // On a database shared by several nodes, another node's commit for
                    // this epoch (or another entry for this seq) came first.
                    if refusal.is_conflict() {
                        let now = self.db.secret_group(&group).ok().flatten();
                        stale(&group, now.map_or(epoch + 1, |r| r.epoch))
                    } else {
                        refusal
                    }
                })?;
            let mut touched: Vec<UserId> = added.into_iter().map(|(u, _)| u).collect();
            touched.extend(removed);
            touched.sort();
            touched.dedup();
            (seq, new_epoch, self.durability.written(), entry, touched)
        };
        self.durable(ticket).await?;
        self.mark_durable(&group, seq);
        tracing::info!(%group, seq, epoch = new_epoch, size = commit_size, by = %me.id, "commit accepted");
        self.publish_entry(&group, seq, &entry);
        self.push_to_all(touched, Event::SecretGroupsChanged);
        Ok(Response::Committed {
            seq,
            epoch: new_epoch,
        })
    }

    /// The decision on a commit for the group's current epoch, by the device at leaf
    /// `committer`: valid MLS from that very leaf, the members' rule (as a courtesy: the
    /// members' clients apply it anyway), and the removal key kept. Reads only user
    /// records (which devices are revoked); writes nothing.
    pub(super) fn accept_commit(
        &self,
        group: &GroupHandle,
        dept: &DepartmentRecord,
        record: &SecretGroupRecord,
        committer: u32,
        mut state: PublicState,
        message: ProtocolMessage,
    ) -> Result<Accepted, Refusal> {
        let leaves_before = leaves(&state);
        let policy_before = policy_extension(&state);
        let processed = state
            .group
            .process_message(&self.crypto, message)
            .map_err(|e| MlsRefused::CommitRejected(e.to_string()))?;
        if !matches!(processed.sender(), Sender::Member(i) if i.u32() == committer) {
            return Err(SecretRefused::ForeignLeaf.into());
        }
        let staged = match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => *staged,
            _ => return Err(MlsRefused::NotACommit.into()),
        };
        let adds = staged.add_proposals().count();
        let vacated = staged
            .remove_proposals()
            .map(|r| r.remove_proposal().removed().u32())
            .collect();
        let external_add = staged.queued_proposals().any(|p| {
            matches!(p.proposal(), Proposal::Add(_)) && !matches!(p.sender(), Sender::Member(_))
        });
        state
            .group
            .merge_commit(&state.storage, staged)
            .map_err(|e| Refusal::internal(format!("cannot merge commit into {group}: {e}")))?;
        // A member may rewrite the group context (the owners' policy, DESIGN §5.4), but
        // not take away the removal key that offboarding depends on (§5.5).
        let expected = vec![self.removal_key.external_sender()];
        if state.group.group_context().extensions().external_senders() != Some(&expected) {
            return Err(MlsRefused::ExternalSendersChanged.into());
        }

        // The members' rule, applied here as a courtesy (DESIGN §5.9): a commit every
        // honest member would refuse is never stored, so the group does not stall.
        let facts = CommitFacts {
            committer: Committer::Member(committer),
            before: leaves_before,
            after: leaves(&state),
            vacated,
            external_add,
            policy_before,
            policy_after: policy_extension(&state),
            // Checked above, with its own message.
            external_senders_changed: false,
        };
        let users = roster(dept);
        let in_tree: Vec<Device> = record
            .members
            .iter()
            .map(|m| (m.user.clone(), m.device))
            .collect();
        let judged_roster = Roster {
            revoked: self
                .revoked_in_tree(&users, &in_tree)?
                .into_iter()
                .map(|(user, device)| DeviceCredential { user, device })
                .collect(),
            users,
        };
        judge_commit(&facts, &judged_roster).map_err(SecretRefused::Judged)?;
        Ok(Accepted { state, adds })
    }
}

/// The tree's leaves as plain data for the membership rule.
fn leaves(state: &PublicState) -> Vec<Leaf> {
    state
        .group
        .members()
        .map(|m| Leaf {
            index: m.index.u32(),
            identity: BasicCredential::try_from(m.credential)
                .map(|c| c.identity().to_vec())
                .unwrap_or_default(),
            signature_key: m.signature_key,
        })
        .collect()
}

/// The group policy extension bytes in the group context.
fn policy_extension(state: &PublicState) -> Option<Vec<u8>> {
    state
        .group
        .group_context()
        .extensions()
        .unknown(GROUP_POLICY_EXTENSION)
        .map(|e| e.0.clone())
}
