//! End-to-end tests of trust (DESIGN §5.8): pinned device keys, safety numbers, group
//! codes and the warning a substituted key produces. Real server, real clients, real MLS;
//! one test drives the `rathaus` binary for `verify` and `members`.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use rathaus_client::{Approval, Client, RowKind, ServerTrust, TimelineRow};
use rathaus_protocol::{GroupHandle, UserId};
use rathaus_tests::{within, workspace_bin, Secret, TestBackend, PASSWORD};
use serde_json::Value;

fn secret() -> GroupHandle {
    GroupHandle::parse("bauamt/secret").unwrap()
}

fn uid(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

async fn number(client: &mut Client, user: &str) -> String {
    within("safety number", client.safety_number(&uid(user)))
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_else(|| panic!("no key of {user} known"))
        .number
        .to_string()
}

fn code(client: &Client, group: &GroupHandle) -> String {
    client
        .group_check_code(group)
        .unwrap()
        .expect("a member")
        .to_string()
}

fn rows_of_kind(rows: &[TimelineRow], kind: RowKind) -> Vec<&TimelineRow> {
    rows.iter().filter(|r| r.kind == kind).collect()
}

/// Runs the `rathaus` binary on `profile` off the runtime (the server runs in this
/// process) and parses its `--json` output.
async fn rathaus_json(profile: PathBuf, args: &[&str]) -> Value {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(workspace_bin("rathaus").unwrap())
            .arg("--profile")
            .arg(&profile)
            .arg("--json")
            .args(&args)
            .env_remove("RATHAUS_PASSWORD")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "rathaus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rewrite_pin(profile: &Path, user: &str, key: &[u8]) {
    let db = rusqlite::Connection::open(profile.join("profile.sqlite")).unwrap();
    let changed = db
        .execute(
            "UPDATE trust_pins SET key = ?2 WHERE user = ?1",
            rusqlite::params![user, key],
        )
        .unwrap();
    assert_eq!(changed, 1, "expected exactly one pinned device of {user}");
}

#[tokio::test]
async fn both_sides_see_the_same_safety_number_and_a_new_device_changes_it() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();

    let anna_sees = number(&mut anna, "P1002").await;
    let jonas_sees = number(&mut jonas, "P1001").await;
    assert_eq!(anna_sees, jonas_sees);
    assert_eq!(anna_sees.split(' ').count(), 12);
    assert!(anna_sees.split(' ').all(|g| g.len() == 5));

    // Jonas enrolls his phone; a new department puts it into a secret group with Anna.
    let _phone = Client::add_device(
        &backend.profile_dir("P1002"),
        &backend.addr.to_string(),
        &ServerTrust::Pinned(backend.fingerprint.clone()),
        uid("P1002"),
        PASSWORD,
        "Jonas' phone",
    )
    .await
    .unwrap();
    backend
        .department(&mut admin, "ordnungsamt", &["P1001", "P1002"])
        .await
        .unwrap();
    let ordnungsamt = GroupHandle::parse("ordnungsamt/secret").unwrap();
    within("birth", anna.sync()).await.unwrap().unwrap();
    within("approve", anna.approve(&ordnungsamt, &uid("P1002")))
        .await
        .unwrap()
        .unwrap();
    within("join", jonas.sync()).await.unwrap().unwrap();

    let rows = anna.read(&ordnungsamt).await.unwrap();
    let notices = rows_of_kind(&rows, RowKind::Notice);
    assert_eq!(notices.len(), 1, "{rows:?}");
    assert!(
        notices[0].text.starts_with("Jonas Weber has a new device"),
        "{}",
        notices[0].text
    );
    assert!(rows_of_kind(&rows, RowKind::Warning).is_empty(), "{rows:?}");

    let anna_now = number(&mut anna, "P1002").await;
    assert_ne!(anna_now, anna_sees, "a new device must change the number");
    // Jonas's own half comes from what his laptop knows, not from the group: the phone
    // his laptop never approved makes the numbers differ, and his laptop warns.
    assert_ne!(anna_now, number(&mut jonas, "P1001").await);
    let rows = jonas.read(&ordnungsamt).await.unwrap();
    let warnings = rows_of_kind(&rows, RowKind::Warning);
    assert_eq!(warnings.len(), 1, "{rows:?}");
    assert!(
        warnings[0].text.contains("under your own id P1002"),
        "{}",
        warnings[0].text
    );
}

#[tokio::test]
async fn all_members_see_one_group_code_until_the_membership_changes() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let before = code(&anna, &secret());
    assert_eq!(before, code(&jonas, &secret()));
    assert_eq!(before.split(' ').count(), 6);

    let mut lena = backend
        .user(&mut admin, "P1003", "Lena Koch", &["bauamt"])
        .await
        .unwrap();
    match within("approve", anna.approve(&secret(), &uid("P1003")))
        .await
        .unwrap()
        .unwrap()
    {
        Approval::Added { devices, .. } => assert_eq!(devices, 1),
        other => panic!("{other:?}"),
    }
    within("lena joins", lena.sync()).await.unwrap().unwrap();
    within("jonas syncs", jonas.sync()).await.unwrap().unwrap();
    let after = code(&anna, &secret());
    assert_ne!(after, before, "a membership change must change the code");
    assert_eq!(after, code(&jonas, &secret()));
    assert_eq!(after, code(&lena, &secret()));
    // Colleagues met for the first time are no reason for a notice or a warning.
    let rows = jonas.read(&secret()).await.unwrap();
    assert!(rows_of_kind(&rows, RowKind::Notice).is_empty(), "{rows:?}");
    assert!(rows_of_kind(&rows, RowKind::Warning).is_empty(), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_substituted_key_is_flagged_in_the_timeline_and_in_members() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let anna_dir = anna.dir().to_path_buf();

    // Anna compares numbers with Jonas in person and confirms.
    let verified = rathaus_json(anna_dir.clone(), &["verify", "P1002", "--confirm"]).await;
    assert_eq!(verified["user"], "P1002");
    assert_eq!(
        verified["safety_number"].as_str().unwrap(),
        number(&mut jonas, "P1001").await
    );
    assert_eq!(verified["devices"][0]["verified"], true);
    let device = verified["devices"][0]["device"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        anna.device_pin(&uid("P1002"), &device)
            .unwrap()
            .unwrap()
            .verified
    );

    // Anna's pinned key differs from the one in the group from now on, as if the server
    // had handed her another key for Jonas' device; the next sync must say so.
    rewrite_pin(&anna_dir, "P1002", &[0x42; 32]);
    within("sync", anna.sync()).await.unwrap().unwrap();
    let rows = anna.read(&secret()).await.unwrap();
    let warnings = rows_of_kind(&rows, RowKind::Warning);
    assert_eq!(warnings.len(), 1, "{rows:?}");
    assert!(
        warnings[0]
            .text
            .contains(&format!("the key of Jonas Weber's device {device} changed")),
        "{}",
        warnings[0].text
    );
    assert!(warnings[0].text.contains("rathaus verify P1002"));
    // Syncing again does not repeat the warning.
    within("sync", anna.sync()).await.unwrap().unwrap();
    assert_eq!(
        rows_of_kind(&anna.read(&secret()).await.unwrap(), RowKind::Warning).len(),
        1
    );

    // `members` shows the change and the group code; the verification is gone.
    let members = rathaus_json(anna_dir.clone(), &["members", "bauamt/secret"]).await;
    assert_eq!(
        members["group_code"].as_str().unwrap(),
        code(&jonas, &secret())
    );
    let jonas_entry = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == "P1002")
        .unwrap()
        .clone();
    assert_eq!(jonas_entry["devices"][0]["key_changed"], true);
    assert_eq!(jonas_entry["devices"][0]["verified"], false);

    // Checking again in person and confirming clears the mark.
    let verified = rathaus_json(anna_dir.clone(), &["verify", "P1002", "--confirm"]).await;
    assert_eq!(verified["devices"][0]["verified"], true);
    let pin = anna.device_pin(&uid("P1002"), &device).unwrap().unwrap();
    assert!(pin.verified && pin.changed_ms.is_none(), "{pin:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_says_clearly_when_no_key_is_known() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    let mut lena = backend
        .user(&mut admin, "P1003", "Lena Koch", &[])
        .await
        .unwrap();
    assert!(within("verify", lena.safety_number(&uid("P1001")))
        .await
        .unwrap()
        .unwrap()
        .is_none());
    let dir = lena.dir().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(workspace_bin("rathaus").unwrap())
            .arg("--profile")
            .arg(&dir)
            .args(["verify", "P1001"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no key of P1001 is known"), "{stderr}");
}
