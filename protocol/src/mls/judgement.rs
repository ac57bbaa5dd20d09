//! The membership rule of secret groups (DESIGN §5.9), as one pure function.
//!
//! Membership is what the ratchet tree says, not what a commit's proposals say: a commit
//! is judged by the difference between the tree before and after it (devices added,
//! removed, leaves whose credential or signature key changed) against the group's policy
//! *before* it. Every honest client judges every commit this way, from the same state, so
//! a refused commit is refused by all of them and the group does not fork; the server
//! applies the same rule as a courtesy, so an honest server never stores a commit the
//! members would refuse.
//!
//! The rule:
//! - refused: commits by a non-member (an MLS external commit, `ExternalInit`), and any
//!   commit that carries an Add an external sender proposed;
//! - refused: any leaf that stays in the tree but changes its credential or signature key,
//!   and any leaf that is not a canonical Rathaus device credential;
//! - adds only by an owner, by any member for rostered users while auto-admit is on, or
//!   by a member for further devices of their own user (device linking);
//! - removals of another user's devices only by an owner, or for users off the roster and
//!   devices the roster lists as revoked;
//! - policy changes only by owners, to a valid policy — except that when no owner is left
//!   on the roster, a rostered member may claim ownership (a policy that makes them an
//!   owner and changes nothing else); nobody changes `external_senders`.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::{DeviceCredential, GroupPolicy};
use crate::ids::UserId;

/// One leaf of the ratchet tree, as the MLS library shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Position in the tree.
    pub index: u32,
    /// The `BasicCredential` identity bytes (a [`DeviceCredential`] if well-formed).
    pub identity: Vec<u8>,
    /// The leaf's signature key (the device's Ed25519 key).
    pub signature_key: Vec<u8>,
}

/// Who made a commit, as its framing says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committer {
    /// The member at this leaf index (before the commit).
    Member(u32),
    /// Someone outside the group: an MLS external commit (`NewMemberCommit`).
    NewMember,
    /// An external sender (not allowed to commit by RFC 9420; refused all the same).
    External,
}

/// What a commit changes, in plain data: the input of [`judge_commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitFacts {
    /// Who committed.
    pub committer: Committer,
    /// The tree's leaves before the commit.
    pub before: Vec<Leaf>,
    /// The tree's leaves after it.
    pub after: Vec<Leaf>,
    /// Leaf indexes the commit's Remove proposals empty (a slot emptied and filled by an
    /// Add in the same commit is a removal and an addition, not a changed leaf).
    pub vacated: Vec<u32>,
    /// Whether the commit covers an Add proposed by an external sender or a new member.
    pub external_add: bool,
    /// The group policy extension bytes before the commit.
    pub policy_before: Option<Vec<u8>>,
    /// The group policy extension bytes after it.
    pub policy_after: Option<Vec<u8>>,
    /// Whether the `external_senders` extension differs after the commit.
    pub external_senders_changed: bool,
}

/// A device in a verdict: who it is and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDevice {
    /// The device.
    pub credential: DeviceCredential,
    /// Its signature key.
    pub signature_key: Vec<u8>,
}

/// An accepted commit: what it changed, for the membership row every member shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The committer's device.
    pub committer: DeviceCredential,
    /// Devices that joined.
    pub added: Vec<MemberDevice>,
    /// Devices that left.
    pub removed: Vec<MemberDevice>,
    /// The policy before and after, when the commit changed it.
    pub policy_change: Option<(GroupPolicy, GroupPolicy)>,
}

/// Why a commit is refused. Each names the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitRefusal {
    /// A commit by someone outside the group (MLS external commit).
    ExternalCommit,
    /// The commit covers an Add proposed by an external sender (the server).
    ExternalAdd,
    /// The committer's leaf is not in the tree before the commit.
    UnknownCommitter,
    /// A leaf that is not a canonical Rathaus device credential.
    InvalidLeaf {
        /// Its index.
        index: u32,
    },
    /// The same device twice in the tree after the commit.
    DuplicateDevice(DeviceCredential),
    /// A leaf that stays in the tree changed its credential or signature key.
    LeafChanged {
        /// The device before.
        before: DeviceCredential,
        /// The identity after (possibly another device).
        after: String,
    },
    /// Devices added by someone who may not add them.
    AddWithoutRight {
        /// The committer.
        committer: DeviceCredential,
        /// The devices added.
        added: Vec<DeviceCredential>,
    },
    /// Another user's devices removed by a non-owner while that user is on the roster.
    RemoveWithoutRight {
        /// The committer.
        committer: DeviceCredential,
        /// The devices removed.
        removed: Vec<DeviceCredential>,
    },
    /// The policy changed by a non-owner.
    PolicyWithoutRight {
        /// The committer.
        committer: DeviceCredential,
    },
    /// The policy after the commit is missing or unreadable.
    PolicyInvalid {
        /// The committer.
        committer: DeviceCredential,
    },
    /// `external_senders` changed (the server's removal key must stay the only entry).
    ExternalSendersChanged,
}

impl fmt::Display for CommitRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |devices: &[DeviceCredential]| {
            devices
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Self::ExternalCommit => f.write_str(
                "a device outside the group tried to join it by itself (MLS external commit)",
            ),
            Self::ExternalAdd => f.write_str("the commit adds a member on the server's behalf"),
            Self::UnknownCommitter => f.write_str("the committer is not a member of the group"),
            Self::InvalidLeaf { index } => {
                write!(f, "leaf {index} does not name a Rathaus device")
            }
            Self::DuplicateDevice(d) => write!(f, "device {d} appears twice in the group"),
            Self::LeafChanged { before, after } => write!(
                f,
                "the credential or key of device {before} was replaced (now {after})"
            ),
            Self::AddWithoutRight { committer, added } => write!(
                f,
                "{} is not an owner but added {}",
                committer.user,
                list(added)
            ),
            Self::RemoveWithoutRight { committer, removed } => write!(
                f,
                "{} is not an owner but removed {}, who is still on the roster",
                committer.user,
                list(removed)
            ),
            Self::PolicyWithoutRight { committer } => write!(
                f,
                "{} is not an owner but changed the owners or auto-admit",
                committer.user
            ),
            Self::PolicyInvalid { committer } => write!(
                f,
                "{} replaced the group settings with unreadable ones",
                committer.user
            ),
            Self::ExternalSendersChanged => {
                f.write_str("the commit changes who may propose removals (external senders)")
            }
        }
    }
}

impl std::error::Error for CommitRefusal {}

/// The group's roster as the judge knows it: the users who may be members (the
/// department's members and owners) and the devices of theirs that were revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    /// Users on the roster.
    pub users: Vec<UserId>,
    /// Revoked devices of users on the roster: they must leave the group.
    pub revoked: Vec<DeviceCredential>,
}

impl Roster {
    /// A roster of these users with no revoked devices.
    pub fn of(users: &[UserId]) -> Self {
        Self {
            users: users.to_vec(),
            revoked: Vec::new(),
        }
    }

    /// Whether `user` is on the roster.
    pub fn contains(&self, user: &UserId) -> bool {
        self.users.contains(user)
    }

    /// Whether `device` may stay in the group: its user is on the roster and the device
    /// is not revoked.
    pub fn may_stay(&self, device: &DeviceCredential) -> bool {
        self.contains(&device.user) && !self.revoked.contains(device)
    }
}

/// Judges one commit (see the module docs) against the group's `roster`.
pub fn judge_commit(facts: &CommitFacts, roster: &Roster) -> Result<Verdict, CommitRefusal> {
    let committer_index = match facts.committer {
        Committer::Member(index) => index,
        Committer::NewMember | Committer::External => return Err(CommitRefusal::ExternalCommit),
    };
    if facts.external_add {
        return Err(CommitRefusal::ExternalAdd);
    }
    let before = devices(&facts.before)?;
    let after = devices(&facts.after)?;
    // Sets and maps keep this linear in the group's size: a group of 1,000 devices would
    // otherwise compare ~500,000 pairs per commit.
    let mut seen = HashSet::with_capacity(after.len());
    for (_, a) in &after {
        if !seen.insert(&a.credential) {
            return Err(CommitRefusal::DuplicateDevice(a.credential.clone()));
        }
    }
    let committer = before
        .iter()
        .find(|(index, _)| *index == committer_index)
        .map(|(_, d)| d.credential.clone())
        .ok_or(CommitRefusal::UnknownCommitter)?;
    let vacated: HashSet<u32> = facts.vacated.iter().copied().collect();
    let vacated = |index: u32| vacated.contains(&index);
    // The first leaf of each index, as a search from the front finds it.
    let mut after_at: HashMap<u32, &MemberDevice> = HashMap::with_capacity(after.len());
    for (index, d) in &after {
        after_at.entry(*index).or_insert(d);
    }
    let before_indexes: HashSet<u32> = before.iter().map(|(i, _)| *i).collect();

    let mut removed = Vec::new();
    for (index, old) in &before {
        match after_at.get(index) {
            Some(new) if !vacated(*index) => {
                if *new != old {
                    return Err(CommitRefusal::LeafChanged {
                        before: old.credential.clone(),
                        after: new.credential.to_string(),
                    });
                }
            }
            _ => removed.push(old.clone()),
        }
    }
    let added: Vec<MemberDevice> = after
        .iter()
        .filter(|(index, _)| vacated(*index) || !before_indexes.contains(index))
        .map(|(_, d)| d.clone())
        .collect();

    let policy = facts
        .policy_before
        .as_deref()
        .and_then(GroupPolicy::decode)
        .unwrap_or(GroupPolicy {
            owners: Vec::new(),
            auto_admit: false,
        });
    let owner = policy.is_owner(&committer.user);
    let on_roster = |user: &UserId| roster.contains(user);

    if !added.is_empty() && !owner {
        let admitted = policy.auto_admit && added.iter().all(|d| on_roster(&d.credential.user));
        let own_devices =
            on_roster(&committer.user) && added.iter().all(|d| d.credential.user == committer.user);
        if !admitted && !own_devices {
            return Err(CommitRefusal::AddWithoutRight {
                committer,
                added: added.iter().map(|d| d.credential.clone()).collect(),
            });
        }
    }
    if !owner {
        let forbidden: Vec<DeviceCredential> = removed
            .iter()
            .filter(|d| d.credential.user != committer.user && roster.may_stay(&d.credential))
            .map(|d| d.credential.clone())
            .collect();
        if !forbidden.is_empty() {
            return Err(CommitRefusal::RemoveWithoutRight {
                committer,
                removed: forbidden,
            });
        }
    }
    if facts.external_senders_changed {
        return Err(CommitRefusal::ExternalSendersChanged);
    }
    let policy_change = if facts.policy_after != facts.policy_before {
        let next = facts.policy_after.as_deref().and_then(GroupPolicy::decode);
        // With no owner left on the roster, a rostered member may make themselves an
        // owner, and change nothing else (DESIGN §5.4: owners never run out).
        let claim = !policy.owners.iter().any(&on_roster)
            && on_roster(&committer.user)
            && next.as_ref().is_some_and(|n| {
                n.auto_admit == policy.auto_admit
                    && n.is_owner(&committer.user)
                    && n.owners
                        .iter()
                        .all(|o| *o == committer.user || policy.is_owner(o))
            });
        if !owner && !claim {
            return Err(CommitRefusal::PolicyWithoutRight { committer });
        }
        let next = next.ok_or_else(|| CommitRefusal::PolicyInvalid {
            committer: committer.clone(),
        })?;
        Some((policy, next))
    } else {
        None
    };
    Ok(Verdict {
        committer,
        added,
        removed,
        policy_change,
    })
}

fn devices(leaves: &[Leaf]) -> Result<Vec<(u32, MemberDevice)>, CommitRefusal> {
    leaves
        .iter()
        .map(|leaf| {
            let credential = DeviceCredential::parse(&leaf.identity)
                .ok_or(CommitRefusal::InvalidLeaf { index: leaf.index })?;
            Ok((
                leaf.index,
                MemberDevice {
                    credential,
                    signature_key: leaf.signature_key.clone(),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn leaf(index: u32, identity: &str, key: u8) -> Leaf {
        Leaf {
            index,
            identity: identity.as_bytes().to_vec(),
            signature_key: vec![key; 32],
        }
    }

    fn policy(owners: &[&str], auto_admit: bool) -> Option<Vec<u8>> {
        Some(
            GroupPolicy {
                owners: owners.iter().map(|o| uid(o)).collect(),
                auto_admit,
            }
            .encode(),
        )
    }

    /// Anna (P1 device 1, owner) and Jonas (P2 device 2) at leaves 0 and 1; Lena (P3) on
    /// the roster but not in the group, Mallory (P9) neither.
    fn base() -> CommitFacts {
        let tree = vec![leaf(0, "P1/1", 1), leaf(1, "P2/2", 2)];
        CommitFacts {
            committer: Committer::Member(0),
            before: tree.clone(),
            after: tree,
            vacated: vec![],
            external_add: false,
            policy_before: policy(&["P1"], false),
            policy_after: policy(&["P1"], false),
            external_senders_changed: false,
        }
    }

    fn roster() -> Roster {
        Roster {
            users: ["P1", "P2", "P3"].iter().map(|u| uid(u)).collect(),
            revoked: vec![DeviceCredential::parse(b"P2/6").unwrap()],
        }
    }

    fn ids(devices: &[MemberDevice]) -> Vec<String> {
        devices.iter().map(|d| d.credential.to_string()).collect()
    }

    type Case = (
        &'static str,
        fn(&mut CommitFacts),
        Result<(Vec<&'static str>, Vec<&'static str>), &'static str>,
    );

    #[test]
    fn every_rule_in_a_table() {
        let cases: Vec<Case> = vec![
            (
                "an owner's self-update changes nothing",
                |_| {},
                Ok((vec![], vec![])),
            ),
            (
                "an owner adds a rostered colleague",
                |f| f.after.push(leaf(2, "P3/3", 3)),
                Ok((vec!["P3/3"], vec![])),
            ),
            (
                "an owner may add anyone the server lets through",
                |f| f.after.push(leaf(2, "P9/9", 9)),
                Ok((vec!["P9/9"], vec![])),
            ),
            (
                "a plain member adds",
                |f| {
                    f.committer = Committer::Member(1);
                    f.after.push(leaf(2, "P3/3", 3));
                },
                Err("AddWithoutRight"),
            ),
            (
                "a plain member adds a rostered colleague under auto-admit",
                |f| {
                    f.committer = Committer::Member(1);
                    f.policy_before = policy(&["P1"], true);
                    f.policy_after = policy(&["P1"], true);
                    f.after.push(leaf(2, "P3/3", 3));
                },
                Ok((vec!["P3/3"], vec![])),
            ),
            (
                "auto-admit does not admit someone off the roster",
                |f| {
                    f.committer = Committer::Member(1);
                    f.policy_before = policy(&["P1"], true);
                    f.policy_after = policy(&["P1"], true);
                    f.after.push(leaf(2, "P9/9", 9));
                },
                Err("AddWithoutRight"),
            ),
            (
                "an external commit: a ghost device of the owner joins by itself",
                |f| {
                    f.committer = Committer::NewMember;
                    f.after.push(leaf(2, "P1/4242", 42));
                },
                Err("ExternalCommit"),
            ),
            (
                "an external commit that also removes someone",
                |f| {
                    f.committer = Committer::NewMember;
                    f.after = vec![leaf(0, "P1/1", 1), leaf(1, "P9/9", 9)];
                    f.vacated = vec![1];
                },
                Err("ExternalCommit"),
            ),
            (
                "the server commits",
                |f| f.committer = Committer::External,
                Err("ExternalCommit"),
            ),
            (
                "an owner commits the server's Add",
                |f| {
                    f.external_add = true;
                    f.after.push(leaf(2, "P9/9", 9));
                },
                Err("ExternalAdd"),
            ),
            (
                "a leaf's signature key is swapped",
                |f| f.after[1] = leaf(1, "P2/2", 66),
                Err("LeafChanged"),
            ),
            (
                "a leaf's credential is swapped for another device",
                |f| f.after[1] = leaf(1, "P9/9", 2),
                Err("LeafChanged"),
            ),
            (
                "the committer rewrites its own leaf's credential",
                |f| f.after[0] = leaf(0, "P1/77", 1),
                Err("LeafChanged"),
            ),
            (
                "a slot emptied by a Remove and refilled by an Add",
                |f| {
                    f.after[1] = leaf(1, "P3/3", 3);
                    f.vacated = vec![1];
                },
                Ok((vec!["P3/3"], vec!["P2/2"])),
            ),
            (
                "a non-canonical credential",
                |f| f.after.push(leaf(2, "P3/03", 3)),
                Err("InvalidLeaf"),
            ),
            (
                "the same device twice",
                |f| f.after.push(leaf(2, "P2/2", 2)),
                Err("DuplicateDevice"),
            ),
            (
                "an owner removes a rostered member",
                |f| f.after.truncate(1),
                Ok((vec![], vec!["P2/2"])),
            ),
            (
                "a plain member removes a rostered colleague",
                |f| {
                    f.committer = Committer::Member(1);
                    f.after.remove(0);
                },
                Err("RemoveWithoutRight"),
            ),
            (
                "a plain member commits the removal of someone off the roster",
                |f| {
                    f.committer = Committer::Member(1);
                    f.before.push(leaf(2, "P8/8", 8));
                },
                Ok((vec![], vec!["P8/8"])),
            ),
            (
                "a plain member removes their own other device",
                |f| {
                    f.committer = Committer::Member(1);
                    f.before.push(leaf(2, "P2/5", 5));
                },
                Ok((vec![], vec!["P2/5"])),
            ),
            (
                "a plain member links a further device of their own",
                |f| {
                    f.committer = Committer::Member(1);
                    f.after.push(leaf(2, "P2/5", 5));
                },
                Ok((vec!["P2/5"], vec![])),
            ),
            (
                "a plain member adds their own device and someone else's",
                |f| {
                    f.committer = Committer::Member(1);
                    f.after.push(leaf(2, "P2/5", 5));
                    f.after.push(leaf(3, "P3/3", 3));
                },
                Err("AddWithoutRight"),
            ),
            (
                "a plain member commits the removal of a revoked device",
                |f| {
                    // Lena (P3, plain member) removes Jonas's revoked device 6.
                    f.before.push(leaf(2, "P3/3", 3));
                    f.after.push(leaf(2, "P3/3", 3));
                    f.before.push(leaf(3, "P2/6", 6));
                    f.committer = Committer::Member(2);
                },
                Ok((vec![], vec!["P2/6"])),
            ),
            (
                "a plain member claims ownership when no owner is left on the roster",
                |f| {
                    f.committer = Committer::Member(1);
                    f.policy_before = policy(&["P8"], false);
                    f.policy_after = policy(&["P8", "P2"], false);
                },
                Ok((vec![], vec![])),
            ),
            (
                "a claim while an owner is on the roster",
                |f| {
                    f.committer = Committer::Member(1);
                    f.policy_after = policy(&["P1", "P2"], false);
                },
                Err("PolicyWithoutRight"),
            ),
            (
                "a claim that also turns on auto-admit",
                |f| {
                    f.committer = Committer::Member(1);
                    f.policy_before = policy(&["P8"], false);
                    f.policy_after = policy(&["P8", "P2"], true);
                },
                Err("PolicyWithoutRight"),
            ),
            (
                "a claim that makes someone else an owner",
                |f| {
                    f.committer = Committer::Member(1);
                    f.policy_before = policy(&["P8"], false);
                    f.policy_after = policy(&["P2", "P3"], false);
                },
                Err("PolicyWithoutRight"),
            ),
            (
                "a non-member commits",
                |f| f.committer = Committer::Member(7),
                Err("UnknownCommitter"),
            ),
            (
                "a plain member changes the policy",
                |f| {
                    f.committer = Committer::Member(1);
                    f.policy_after = policy(&["P1", "P2"], true);
                },
                Err("PolicyWithoutRight"),
            ),
            (
                "a plain member drops the policy",
                |f| {
                    f.committer = Committer::Member(1);
                    f.policy_after = None;
                },
                Err("PolicyWithoutRight"),
            ),
            (
                "an owner writes an unreadable policy",
                |f| f.policy_after = Some(vec![9, 9]),
                Err("PolicyInvalid"),
            ),
            (
                "an owner writes a policy without owners",
                |f| f.policy_after = policy(&[], true),
                Err("PolicyInvalid"),
            ),
            (
                "an owner changes external senders",
                |f| f.external_senders_changed = true,
                Err("ExternalSendersChanged"),
            ),
            (
                "a group whose policy is unreadable has no owners",
                |f| {
                    f.policy_before = None;
                    f.policy_after = None;
                    f.after.push(leaf(2, "P3/3", 3));
                },
                Err("AddWithoutRight"),
            ),
        ];
        for (name, change, expected) in cases {
            let mut facts = base();
            change(&mut facts);
            let got = judge_commit(&facts, &roster());
            match (got, expected) {
                (Ok(v), Ok((added, removed))) => {
                    assert_eq!(ids(&v.added), added, "{name}");
                    assert_eq!(ids(&v.removed), removed, "{name}");
                }
                (Err(refusal), Err(variant)) => {
                    let debug = format!("{refusal:?}");
                    assert!(debug.starts_with(variant), "{name}: {debug}");
                    assert!(!refusal.to_string().is_empty());
                }
                (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn an_owners_policy_change_is_reported_with_both_policies() {
        let mut facts = base();
        facts.policy_after = policy(&["P1", "P2"], true);
        let verdict = judge_commit(&facts, &roster()).unwrap();
        let (before, after) = verdict.policy_change.unwrap();
        assert_eq!(before.owners, vec![uid("P1")]);
        assert_eq!(after.owners, vec![uid("P1"), uid("P2")]);
        assert!(after.auto_admit);
        assert_eq!(verdict.committer.to_string(), "P1/1");
    }

    #[test]
    fn the_policy_before_the_commit_decides() {
        // An owner who removes themselves as owner in the same commit as an add: the add
        // is judged by the policy before, so it stands.
        let mut facts = base();
        facts.after.push(leaf(2, "P3/3", 3));
        facts.policy_after = policy(&["P2"], false);
        assert!(judge_commit(&facts, &roster()).is_ok());
        // And a member made owner by the commit gains nothing in that commit.
        let mut facts = base();
        facts.committer = Committer::Member(1);
        facts.policy_after = policy(&["P1", "P2"], false);
        assert!(matches!(
            judge_commit(&facts, &roster()),
            Err(CommitRefusal::PolicyWithoutRight { .. })
        ));
    }
}
