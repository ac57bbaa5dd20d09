//! Unit tests of the policy changes and of the derived group ids.

use rathaus_protocol::{GroupHandle, UserId};

use super::policy::{describe_change, policy_after, PolicyChange};
use super::{key_fingerprint, mls_group_id, GroupPolicy};
use crate::error::ClientError;

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

#[test]
fn policy_changes_keep_an_owner_and_are_described() {
    let g = GroupHandle::parse("bauamt/secret").unwrap();
    let anna = GroupPolicy {
        owners: vec![uid("P1001")],
        auto_admit: false,
    };
    let jonas = uid("P1002");
    assert!(matches!(
        policy_after(&anna, &g, &PolicyChange::RemoveOwner(uid("P1001"))),
        Err(ClientError::Invalid(msg)) if msg.contains("last owner")
    ));
    assert_eq!(
        policy_after(&anna, &g, &PolicyChange::AutoAdmit(false)).unwrap(),
        None
    );
    assert_eq!(
        policy_after(&anna, &g, &PolicyChange::RemoveOwner(jonas.clone())).unwrap(),
        None
    );
    let both = policy_after(&anna, &g, &PolicyChange::AddOwner(jonas.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(both.owners, vec![uid("P1001"), uid("P1002")]);
    let name = |u: &str| {
        if u == "P1002" {
            "Jonas Weber".to_owned()
        } else {
            u.to_owned()
        }
    };
    assert_eq!(
        describe_change(&anna, &both, name),
        "made Jonas Weber an owner"
    );
    let on = policy_after(&anna, &g, &PolicyChange::AutoAdmit(true))
        .unwrap()
        .unwrap();
    assert_eq!(describe_change(&anna, &on, name), "turned on auto-admit");
    assert_eq!(
        policy_after(&both, &g, &PolicyChange::RemoveOwner(jonas)).unwrap(),
        Some(anna)
    );
}

#[test]
fn group_ids_are_derived_from_the_handle() {
    let g = GroupHandle::parse("bauamt/secret").unwrap();
    assert_eq!(mls_group_id(&g), b"rathaus:bauamt/secret");
    assert_eq!(key_fingerprint(&[1; 32]).len(), 39);
}
