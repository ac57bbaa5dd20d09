//! What a device checks before it joins a secret group from a Welcome (DESIGN §5.9): the
//! staged group, read from the Welcome itself and never from the server's labels, must be
//! the group the device expects, with the server's removal key as its only external
//! sender, a valid policy, and an adder who may admit.

use std::fmt;

use super::{DeviceCredential, GroupPolicy};
use crate::ids::UserId;

/// A staged Welcome as plain data: the input of [`judge_welcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeFacts {
    /// The MLS group id in the staged group context.
    pub group_id: Vec<u8>,
    /// The epoch of the staged group.
    pub epoch: u64,
    /// Whether `external_senders` is exactly one entry: the server's removal key (the one
    /// the device knows) under [`SERVER_IDENTITY`](super::SERVER_IDENTITY).
    pub only_removal_key: bool,
    /// The group policy extension bytes.
    pub policy: Option<Vec<u8>>,
    /// The credential identity of the member who signed the GroupInfo (the adder).
    pub adder: Vec<u8>,
    /// The adder's signature key.
    pub adder_key: Vec<u8>,
}

/// Why a Welcome is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WelcomeRefusal {
    /// The Welcome is for another group than the one it was delivered for.
    WrongGroup,
    /// `external_senders` is not exactly the server's removal key.
    ExternalSenders,
    /// The group carries no valid policy.
    Policy,
    /// The adder does not name a Rathaus device.
    UnknownAdder,
    /// The adder is not an owner and auto-admit is off.
    AdderNotOwner(DeviceCredential),
}

impl fmt::Display for WelcomeRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongGroup => f.write_str("the Welcome is for another group"),
            Self::ExternalSenders => f.write_str(
                "the group lets someone other than the server's removal key propose changes",
            ),
            Self::Policy => f.write_str("the group has no valid owners list"),
            Self::UnknownAdder => f.write_str("the Welcome was not signed by a Rathaus device"),
            Self::AdderNotOwner(adder) => write!(
                f,
                "{adder} is not an owner of the group and auto-admit is off"
            ),
        }
    }
}

impl std::error::Error for WelcomeRefusal {}

/// Judges a staged Welcome for a device of `joiner`: it must be for `expected_group_id`,
/// list exactly the server's removal key as external sender, carry a valid policy, and
/// come from an owner, from any member while auto-admit is on, or from another device of
/// the joiner's own user (device linking). Returns the policy.
pub fn judge_welcome(
    facts: &WelcomeFacts,
    expected_group_id: &[u8],
    joiner: &UserId,
) -> Result<GroupPolicy, WelcomeRefusal> {
    if facts.group_id != expected_group_id {
        return Err(WelcomeRefusal::WrongGroup);
    }
    if !facts.only_removal_key {
        return Err(WelcomeRefusal::ExternalSenders);
    }
    let policy = facts
        .policy
        .as_deref()
        .and_then(GroupPolicy::decode)
        .ok_or(WelcomeRefusal::Policy)?;
    let adder = DeviceCredential::parse(&facts.adder).ok_or(WelcomeRefusal::UnknownAdder)?;
    if !policy.auto_admit && !policy.is_owner(&adder.user) && adder.user != *joiner {
        return Err(WelcomeRefusal::AdderNotOwner(adder));
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> WelcomeFacts {
        WelcomeFacts {
            group_id: b"rathaus:bauamt/secret".to_vec(),
            epoch: 4,
            only_removal_key: true,
            policy: Some(
                GroupPolicy {
                    owners: vec![UserId::parse("P1").unwrap()],
                    auto_admit: false,
                }
                .encode(),
            ),
            adder: b"P1/1".to_vec(),
            adder_key: vec![1; 32],
        }
    }

    #[test]
    fn every_check_in_a_table() {
        type Case = (&'static str, fn(&mut WelcomeFacts), Option<&'static str>);
        let cases: Vec<Case> = vec![
            ("an owner's Welcome", |_| {}, None),
            (
                "a fake group",
                |f| f.group_id = b"rathaus:kasse/secret".to_vec(),
                Some("WrongGroup"),
            ),
            (
                "another or a second external sender, or none",
                |f| f.only_removal_key = false,
                Some("ExternalSenders"),
            ),
            ("no policy", |f| f.policy = None, Some("Policy")),
            (
                "garbage policy",
                |f| f.policy = Some(vec![1, 2, 3]),
                Some("Policy"),
            ),
            (
                "a plain member adds",
                |f| f.adder = b"P2/2".to_vec(),
                Some("AdderNotOwner"),
            ),
            (
                "a non-device adds",
                |f| f.adder = b"x".to_vec(),
                Some("UnknownAdder"),
            ),
            (
                "a plain member adds under auto-admit",
                |f| {
                    f.adder = b"P2/2".to_vec();
                    f.policy = Some(
                        GroupPolicy {
                            owners: vec![UserId::parse("P1").unwrap()],
                            auto_admit: true,
                        }
                        .encode(),
                    );
                },
                None,
            ),
        ];
        for (name, change, expected) in cases {
            let mut f = facts();
            change(&mut f);
            let got = judge_welcome(&f, b"rathaus:bauamt/secret", &UserId::parse("P3").unwrap());
            match (got, expected) {
                (Ok(_), None) => {}
                (Err(e), Some(variant)) => {
                    assert!(format!("{e:?}").starts_with(variant), "{name}: {e:?}")
                }
                (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}
