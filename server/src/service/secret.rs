//! Secret groups (DESIGN §5): birth, commits, Welcomes, the ratchet tree, and the roster
//! rules for posting to and reading their logs.
//!
//! Who may do what is decided by two things only: the department record (the roster and
//! the seeded owners) and the server's public MLS state (which devices are in the tree).
//! A device reads and writes a secret group while its user is on the roster *and* the
//! device is in the tree; everyone else — administrators included — gets `Forbidden`.

use std::collections::HashMap;

use openmls::prelude::{GroupId, ProtocolMessage};
use rathaus_protocol::messages::SecretGroupInfo;
use rathaus_protocol::{
    ClientMsgId, DepartmentSlug, DeviceId, EntryBody, Event, GroupHandle, MemberInfo, PostBody,
    Response, UserId,
};
use sha2::{Digest, Sha256};

use super::mls::{
    device_of, group_id, parse_group_info, parse_message, parse_ratchet_tree, PublicState,
    CIPHERSUITE,
};
use super::refused::{MlsRefused, NotFound, SecretRefused};
use super::{Refusal, Service, Session};
use crate::store::{
    DepartmentRecord, LeafRecord, SecretGroupRecord, StoredEntry, UserRecord, Writes,
};

/// A device, as the tree names it.
pub(super) type Device = (UserId, DeviceId);

/// Welcomes kept per device (one per group; older ones are replaced).
pub(super) const MAX_WELCOMES: usize = 64;

/// Whether `user` is on the roster of the department's secret group.
pub(super) fn on_roster(dept: &DepartmentRecord, user: &UserId) -> bool {
    dept.members.contains(user) || dept.owners.contains(user)
}

impl Service {
    pub(super) fn secret_groups(&self, me: &UserRecord) -> Result<Response, Refusal> {
        let mut out = Vec::new();
        let departments = self
            .db
            .departments()?
            .into_iter()
            .map(|d| (GroupHandle::Secret(d.slug.clone()), d));
        let rooms = self
            .db
            .rooms()?
            .into_iter()
            .map(|r| (GroupHandle::Room(r.slug.clone()), r));
        for (group, dept) in departments.chain(rooms) {
            if !on_roster(&dept, &me.id) {
                continue;
            }
            let record = self.db.secret_group(&group)?;
            let members: Vec<(UserId, DeviceId)> = record
                .as_ref()
                .map(|r| {
                    r.members
                        .iter()
                        .map(|m| (m.user.clone(), m.device))
                        .collect()
                })
                .unwrap_or_default();
            let roster = roster(&dept);
            let in_tree: std::collections::HashSet<&UserId> =
                members.iter().map(|(m, _)| m).collect();
            let pending = roster
                .iter()
                .filter(|u| !in_tree.contains(u))
                .cloned()
                .collect();
            let revoked = self.revoked_of(&roster)?;
            out.push(SecretGroupInfo {
                group_id: group_id(&group),
                born: record.is_some(),
                epoch: record.as_ref().map_or(0, |r| r.epoch),
                roster,
                owners: dept.owners.clone(),
                pending,
                members,
                removal_key: self.removal_key.public_key(),
                revoked,
                head: self.head(&group)?,
                group,
            });
        }
        Ok(Response::SecretGroups(out))
    }

    pub(super) async fn create_secret_group(
        &self,
        session: &Session,
        me: &UserRecord,
        group: GroupHandle,
        group_info: Vec<u8>,
        ratchet_tree: Vec<u8>,
    ) -> Result<Response, Refusal> {
        let dept = self.secret_department(&group)?;
        if !dept.owners.contains(&me.id) {
            return Err(SecretRefused::CreateByOwners(group).into());
        }
        let info = parse_group_info(&group_info)?;
        let tree = parse_ratchet_tree(&ratchet_tree)?;
        let device_key = self.device_key(&me.id, session.device)?;
        let ticket = {
            let _mls = self.mls_lock();
            if self.db.secret_group(&group)?.is_some() {
                return Err(SecretRefused::Exists(group).into());
            }
            let state = PublicState::from_external(&self.crypto, tree, info)?;
            let context = state.group.group_context();
            if context.group_id() != &GroupId::from_slice(&group_id(&group)) {
                return Err(MlsRefused::GroupId(group).into());
            }
            if context.ciphersuite() != CIPHERSUITE {
                return Err(MlsRefused::GroupSuite.into());
            }
            if state.epoch() != 0 {
                return Err(MlsRefused::NotEpochZero.into());
            }
            let expected = vec![self.removal_key.external_sender()];
            if context.extensions().external_senders() != Some(&expected) {
                return Err(MlsRefused::ExternalSenders.into());
            }
            let members: Vec<_> = state.group.members().collect();
            let [creator] = members.as_slice() else {
                return Err(MlsRefused::NotOnlyCreator.into());
            };
            if device_of(&creator.credential) != Some((me.id.clone(), session.device))
                || creator.signature_key != device_key
            {
                return Err(MlsRefused::CreatorLeaf.into());
            }
            let record = SecretGroupRecord {
                epoch: 0,
                members: vec![LeafRecord {
                    leaf: creator.index.u32(),
                    user: me.id.clone(),
                    device: session.device,
                    joined_seq: 0,
                }],
                group_info,
                proposed_removals: Vec::new(),
            };
            let mut w = Writes::new();
            w.put_secret_group(&group, &record)?
                .put_public_state(&group, &state.record()?)?;
            self.db.apply(w)?;
            self.durability.written()
        };
        self.durable(ticket).await?;
        tracing::info!(%group, by = %me.id, "secret group born");
        self.push_to_all(roster(&dept), Event::SecretGroupsChanged);
        Ok(Response::Done)
    }

    /// Takes over a member's public state of `group` when the server's copy is behind it
    /// (restored from an older copy of the data, commits lost). Only an owner's device
    /// that is a member may do it; the GroupInfo must be signed by a leaf of the tree
    /// (openmls checks it), the device must be in that tree, the tree is checked as a
    /// commit's tree is (registered keys; new devices active and on the roster), and it
    /// must be of a later epoch than the server's.
    pub(super) async fn repair_secret_group(
        &self,
        session: &Session,
        me: &UserRecord,
        group: GroupHandle,
        group_info: Vec<u8>,
        ratchet_tree: Vec<u8>,
    ) -> Result<Response, Refusal> {
        let dept = self.secret_department(&group)?;
        // An owner's member device only: a repair replaces the state every member's
        // commits are checked against, and owners already decide membership.
        let forbidden = || Refusal::from(SecretRefused::RepairByOwners(group.clone()));
        if !dept.owners.contains(&me.id) {
            return Err(forbidden());
        }
        let info = parse_group_info(&group_info)?;
        let tree = parse_ratchet_tree(&ratchet_tree)?;
        let device_key = self.device_key(&me.id, session.device)?;
        let (ticket, from, to) = {
            let _mls = self.mls_lock();
            let before = self
                .db
                .secret_group(&group)?
                .ok_or_else(|| NotFound::NotBorn(group.clone()))?;
            if !before
                .members
                .iter()
                .any(|m| m.user == me.id && m.device == session.device)
            {
                return Err(forbidden());
            }
            let state = PublicState::from_external(&self.crypto, tree, info)?;
            let context = state.group.group_context();
            if context.group_id() != &GroupId::from_slice(&group_id(&group)) {
                return Err(MlsRefused::GroupId(group).into());
            }
            let expected = vec![self.removal_key.external_sender()];
            if context.extensions().external_senders() != Some(&expected) {
                return Err(MlsRefused::ExternalSenders.into());
            }
            if state.epoch() <= before.epoch {
                return Err(SecretRefused::RepairBehind {
                    group,
                    epoch: before.epoch,
                }
                .into());
            }
            // openmls verified the GroupInfo's signature by one of the tree's leaves; the
            // repairing device must be one of them, with its registered key.
            let mine = state.group.members().any(|m| {
                device_of(&m.credential) == Some((me.id.clone(), session.device))
                    && m.signature_key == device_key
            });
            if !mine {
                return Err(SecretRefused::RepairWithoutMe.into());
            }
            let head = self.db.head(&group)?;
            // Devices added by the lost commits read from the repair on.
            let (members, _added) = self.check_tree(&dept, &before, &state, head)?;
            let record = SecretGroupRecord {
                epoch: state.epoch(),
                members,
                group_info,
                proposed_removals: Vec::new(),
            };
            let mut w = Writes::new();
            w.put_secret_group(&group, &record)?
                .put_public_state(&group, &state.record()?)?;
            self.db.apply(w)?;
            (self.durability.written(), before.epoch, record.epoch)
        };
        self.durable(ticket).await?;
        tracing::warn!(%group, by = %me.id, from, to, "secret group state repaired from a member");
        self.push_to_all(roster(&dept), Event::SecretGroupsChanged);
        Ok(Response::Done)
    }

    pub(super) fn ratchet_tree(
        &self,
        session: &Session,
        _me: &UserRecord,
        group: GroupHandle,
    ) -> Result<Response, Refusal> {
        if self.secret_reader(session, &group)?.is_none() {
            return Err(SecretRefused::TreeByMembers(group).into());
        }
        let state = self
            .db
            .public_state(&group)?
            .ok_or_else(|| Refusal::internal(format!("secret group {group} has no MLS state")))?;
        let state = PublicState::load(state, &group)?;
        Ok(Response::RatchetTree {
            epoch: state.epoch(),
            ratchet_tree: state.ratchet_tree()?,
            group,
        })
    }

    /// An application message (a PrivateMessage) to a secret group.
    pub(super) async fn post_secret(
        &self,
        session: &Session,
        me: &UserRecord,
        group: GroupHandle,
        client_id: ClientMsgId,
        body: PostBody,
    ) -> Result<Response, Refusal> {
        let Some(record) = self.secret_member_record(session, &group)? else {
            return Err(SecretRefused::NotAPoster(group).into());
        };
        let (bytes, blob) = match body {
            PostBody::Mls(bytes) => (bytes, None),
            PostBody::MlsAttachment { message, blob } => (message, Some(blob)),
            PostBody::Public(_) => return Err(MlsRefused::PlaintextPost(group).into()),
        };
        // A retry of a stored message is answered as a duplicate, whatever the epoch.
        let mut epoch = None;
        if self.db.deduplicated(&group, &me.id, &client_id)?.is_none() {
            let message = parse_message(&bytes, "the message")?
                .try_into_protocol_message()
                .map_err(|_| MlsRefused::NotPrivate)?;
            if !matches!(message, ProtocolMessage::PrivateMessage(_)) {
                return Err(MlsRefused::NotPrivate.into());
            }
            if message.group_id().as_slice() != group_id(&group) {
                return Err(MlsRefused::MessageElsewhere(group).into());
            }
            if message.epoch().as_u64() != record.epoch {
                return Err(stale(&group, record.epoch));
            }
            epoch = Some(record.epoch);
            if let Some(blob) = &blob {
                self.check_attachment(me, &group, blob)?;
            }
        }
        let size = bytes.len();
        let entry = StoredEntry {
            sender: me.id.clone(),
            sender_name: me.name.clone(),
            sent_at_ms: self.now_ms(),
            client_id,
            body: EntryBody::Mls(bytes),
        };
        let response = self
            .append_post_attached(&group, entry, epoch, blob.map(|b| (me, b)))
            .await?;
        tracing::debug!(%group, size, "secret message stored");
        Ok(response)
    }

    pub(super) fn secret_members(
        &self,
        me: &UserRecord,
        group: GroupHandle,
    ) -> Result<Response, Refusal> {
        let dept = self.secret_department(&group)?;
        // Who is in a project room is metadata its administrators may see (never its
        // content); a department's roster they manage themselves.
        let admin_of_room = group.room().is_some() && me.has_role(rathaus_protocol::Role::Admin);
        if !on_roster(&dept, &me.id) && !admin_of_room {
            return Err(not_on_roster(&group));
        }
        let record = self.db.secret_group(&group)?;
        let mut members = Vec::new();
        let ids = roster(&dept);
        let users = self.db.users_by_id(&ids)?;
        for (id, user) in ids.into_iter().zip(users) {
            let Some(user) = user.filter(|u| !u.removed) else {
                continue;
            };
            let devices = record
                .iter()
                .flat_map(|r| r.members.iter())
                .filter(|m| m.user == id)
                .map(|m| m.device)
                .collect();
            members.push(MemberInfo {
                owner: dept.owners.contains(&id),
                name: user.name,
                user: id,
                devices,
            });
        }
        Ok(Response::Members { group, members })
    }

    /// The department of a secret group handle.
    pub(super) fn secret_department(
        &self,
        group: &GroupHandle,
    ) -> Result<DepartmentRecord, Refusal> {
        match group {
            GroupHandle::Secret(slug) => self.department_or_not_found(slug),
            GroupHandle::Room(slug) => self
                .db
                .room(slug)?
                .ok_or_else(|| NotFound::Room(group.clone()).into()),
            _ => Err(SecretRefused::NotSecret(group.clone()).into()),
        }
    }

    /// If the session's device may read `group`: the seq after which it reads.
    pub(super) fn secret_reader(
        &self,
        session: &Session,
        group: &GroupHandle,
    ) -> Result<Option<u64>, Refusal> {
        let Some(record) = self.secret_member_record(session, group)? else {
            return Ok(None);
        };
        Ok(record
            .members
            .iter()
            .find(|m| m.user == session.user && m.device == session.device)
            .map(|m| m.joined_seq))
    }

    /// The record holding a secret group's roster and owners: its department's, or the
    /// room's; `None` for other handles and groups that do not exist.
    pub(super) fn roster_record(
        &self,
        group: &GroupHandle,
    ) -> Result<Option<DepartmentRecord>, Refusal> {
        Ok(match group {
            GroupHandle::Secret(slug) => self.db.department(slug)?,
            GroupHandle::Room(slug) => self.db.room(slug)?,
            _ => None,
        })
    }

    /// Every revoked device of the rostered users, in the tree or not: members judge a
    /// removal proposal by it, also one they process after another member committed it
    /// (when the device has left the tree).
    pub(super) fn revoked_of(&self, roster: &[UserId]) -> Result<Vec<Device>, Refusal> {
        let mut out = Vec::new();
        for record in self.db.users_by_id(roster)?.into_iter().flatten() {
            out.extend(
                record
                    .devices
                    .iter()
                    .filter(|d| d.revoked)
                    .map(|d| (record.id.clone(), d.id)),
            );
        }
        Ok(out)
    }

    /// The devices in the tree of rostered users that were revoked: their removal is due.
    pub(super) fn revoked_in_tree(
        &self,
        roster: &[UserId],
        in_tree: &[Device],
    ) -> Result<Vec<Device>, Refusal> {
        let roster: std::collections::HashSet<&UserId> = roster.iter().collect();
        let rostered: Vec<&Device> = in_tree.iter().filter(|(u, _)| roster.contains(u)).collect();
        let users: Vec<UserId> = rostered.iter().map(|(u, _)| u.clone()).collect();
        let records = self.db.users_by_id(&users)?;
        Ok(rostered
            .into_iter()
            .zip(records)
            .filter(|((_, device), record)| {
                !record
                    .as_ref()
                    .is_some_and(|u| u.active_devices().any(|d| d.id == *device))
            })
            .map(|(device, _)| device.clone())
            .collect())
    }

    /// The devices that may read secret `group`: those in its tree whose users are on the
    /// department's roster.
    pub(super) fn secret_devices(
        &self,
        group: &GroupHandle,
    ) -> Result<HashMap<UserId, Vec<DeviceId>>, Refusal> {
        let mut out: HashMap<UserId, Vec<DeviceId>> = HashMap::new();
        let (Some(dept), Some(record)) = (self.roster_record(group)?, self.db.secret_group(group)?)
        else {
            return Ok(out);
        };
        for m in record.members {
            if on_roster(&dept, &m.user) {
                out.entry(m.user).or_default().push(m.device);
            }
        }
        Ok(out)
    }

    /// The group's record, if the session's user is on its roster and its device in the
    /// tree.
    pub(super) fn secret_member_record(
        &self,
        session: &Session,
        group: &GroupHandle,
    ) -> Result<Option<SecretGroupRecord>, Refusal> {
        let Some(dept) = self.roster_record(group)? else {
            return Ok(None);
        };
        if !on_roster(&dept, &session.user) {
            return Ok(None);
        }
        Ok(self.db.secret_group(group)?.filter(|r| {
            r.members
                .iter()
                .any(|m| m.user == session.user && m.device == session.device)
        }))
    }

    /// Checks the tree after a commit: every leaf is a Rathaus device carrying its
    /// registered key, and every new or changed leaf belongs to an active device of a
    /// user on the roster. Returns the new member list and the devices added.
    pub(super) fn check_tree(
        &self,
        dept: &DepartmentRecord,
        before: &SecretGroupRecord,
        state: &PublicState,
        seq: u64,
    ) -> Result<(Vec<LeafRecord>, Vec<Device>), Refusal> {
        let mut members: Vec<LeafRecord> = Vec::new();
        let mut added = Vec::new();
        for member in state.group.members() {
            let leaf = member.index.u32();
            let (user, device) =
                device_of(&member.credential).ok_or(MlsRefused::LeafCredential(leaf))?;
            if members.iter().any(|m| m.user == user && m.device == device) {
                return Err(MlsRefused::DeviceTwice { user, device }.into());
            }
            let record = self.db.user(&user)?;
            let known = record
                .as_ref()
                .and_then(|u| u.devices.iter().find(|d| d.id == device));
            if known.map(|d| d.key.0.as_slice()) != Some(member.signature_key.as_slice()) {
                return Err(MlsRefused::LeafKey { leaf, user, device }.into());
            }
            let previous = before
                .members
                .iter()
                .find(|m| m.leaf == leaf && m.user == user && m.device == device);
            let joined_seq = match previous {
                Some(p) => p.joined_seq,
                None => {
                    let active = record.as_ref().is_some_and(|u| !u.removed)
                        && known.is_some_and(|d| !d.revoked);
                    if !active || !on_roster(dept, &user) {
                        return Err(SecretRefused::NotOnRoster(user).into());
                    }
                    added.push((user.clone(), device));
                    seq
                }
            };
            members.push(LeafRecord {
                leaf,
                user,
                device,
                joined_seq,
            });
        }
        Ok((members, added))
    }
}

/// The roster of a department's secret group: members and owners, each once.
pub(super) fn roster(dept: &DepartmentRecord) -> Vec<UserId> {
    let mut all: Vec<UserId> = dept.members.iter().chain(&dept.owners).cloned().collect();
    all.sort();
    all.dedup();
    all
}

/// A stable client id for server-made entries: the first 16 bytes of SHA-256.
pub(super) fn digest_id(bytes: &[u8]) -> ClientMsgId {
    let digest = Sha256::digest(bytes);
    let mut id = [0; 16];
    id.copy_from_slice(&digest[..16]);
    ClientMsgId(id)
}

/// The secret group of a department.
pub(super) fn secret_handle(slug: &DepartmentSlug) -> GroupHandle {
    GroupHandle::Secret(slug.clone())
}

pub(super) fn same_device(a: &LeafRecord, b: &LeafRecord) -> bool {
    a.user == b.user && a.device == b.device
}

pub(super) fn stale(group: &GroupHandle, epoch: u64) -> Refusal {
    SecretRefused::Stale {
        group: group.clone(),
        epoch,
    }
    .into()
}

pub(super) fn not_on_roster(group: &GroupHandle) -> Refusal {
    SecretRefused::YouAreNotOnRoster(group.clone()).into()
}
