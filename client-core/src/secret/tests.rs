//! Unit tests of the policy encoding and changes and of the derived group ids.

use rathaus_protocol::{GroupHandle, UserId};

use super::policy::{from_hex, to_hex, PolicyChange};
use super::{key_fingerprint, mls_group_id, GroupPolicy};
use crate::error::ClientError;

#[test]
fn policy_round_trips_and_rejects_unknown_versions() {
    let policy = GroupPolicy {
        owners: vec!["P1001".into()],
        auto_admit: true,
    };
    let bytes = policy.encode().unwrap();
    assert_eq!(GroupPolicy::decode(&bytes), Some(policy));
    assert_eq!(GroupPolicy::decode(&[9, 0]), None);
    assert_eq!(GroupPolicy::decode(&[]), None);
    assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes));
    assert_eq!(from_hex("0"), None);
}

#[test]
fn policy_changes_keep_an_owner_and_are_described() {
    let g = GroupHandle::parse("bauamt/secret").unwrap();
    let anna = GroupPolicy {
        owners: vec!["P1001".into()],
        auto_admit: false,
    };
    let jonas = UserId::parse("P1002").unwrap();
    assert!(matches!(
        anna.after(&g, &PolicyChange::RemoveOwner(UserId::parse("P1001").unwrap())),
        Err(ClientError::Invalid(msg)) if msg.contains("last owner")
    ));
    assert_eq!(
        anna.after(&g, &PolicyChange::AutoAdmit(false)).unwrap(),
        None
    );
    assert_eq!(
        anna.after(&g, &PolicyChange::RemoveOwner(jonas.clone()))
            .unwrap(),
        None
    );
    let both = anna
        .after(&g, &PolicyChange::AddOwner(jonas.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(both.owners, vec!["P1001".to_owned(), "P1002".to_owned()]);
    let name = |u: &str| {
        if u == "P1002" {
            "Jonas Weber".to_owned()
        } else {
            u.to_owned()
        }
    };
    assert_eq!(
        anna.describe_change(&both, name),
        "made Jonas Weber an owner"
    );
    let on = anna
        .after(&g, &PolicyChange::AutoAdmit(true))
        .unwrap()
        .unwrap();
    assert_eq!(anna.describe_change(&on, name), "turned on auto-admit");
    assert_eq!(
        both.after(&g, &PolicyChange::RemoveOwner(jonas)).unwrap(),
        Some(anna)
    );
}

#[test]
fn group_ids_are_derived_from_the_handle() {
    let g = GroupHandle::parse("bauamt/secret").unwrap();
    assert_eq!(mls_group_id(&g), b"rathaus:bauamt/secret");
    assert_eq!(key_fingerprint(&[1; 32]).len(), 39);
}
