//! The server's operator as the adversary of secret groups (DESIGN §5.9). Each test lets
//! a hostile operator (`rathaus_tests::operator`) do one thing to the stopped server's
//! database — an external commit of a ghost device, forgetting a group so its owner
//! would create it again, a Welcome of their own making, a substituted KeyPackage, a
//! forged policy change — and asserts what the members notice: the intruder reads
//! nothing, every honest member shows the same warning and the same group code, and the
//! group keeps working for them.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rathaus_client::mls::{DeviceIdentity, MlsEngine};
use rathaus_client::{Approval, Client, GroupPolicy, RowKind, TimelineRow};
use rathaus_protocol::{ErrorCode, GroupHandle, Request, Response, UserId};
use rathaus_tests::operator::Operator;
use rathaus_tests::{within, Secret, TestBackend};

fn secret() -> GroupHandle {
    GroupHandle::parse("bauamt/secret").unwrap()
}

fn uid(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

/// Anna Berg (P1001, owner of `bauamt`) and Jonas Weber (P1002), whom Anna approved, in
/// `bauamt/secret`; Lena Koch (P1003) is on the roster, enrolled, and not approved.
async fn team(backend: &mut TestBackend) -> (Client, Client, Client, Client) {
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let mut lena = backend
        .user(&mut admin, "P1003", "Lena Koch", &["bauamt"])
        .await
        .unwrap();
    within("lena", lena.sync()).await.unwrap().unwrap();
    assert!(lena.group_code(&secret()).unwrap().is_none());
    anna.send_text(&secret(), "vorher").await.unwrap();
    assert!(texts(&jonas.read(&secret()).await.unwrap()).contains(&"vorher".to_owned()));
    (admin, anna, jonas, lena)
}

fn texts(rows: &[TimelineRow]) -> Vec<String> {
    rows.iter().map(|r| r.text.clone()).collect()
}

fn warnings(rows: &[TimelineRow]) -> Vec<String> {
    rows.iter()
        .filter(|r| r.kind == RowKind::Warning)
        .map(|r| r.text.clone())
        .collect()
}

/// The group code every member shows (`rathaus members`), which must be the same.
fn group_code(client: &Client) -> String {
    client
        .group_check_code(&secret())
        .unwrap()
        .expect("a member")
        .to_string()
}

/// The honest members agree on the group, and it still carries messages both ways.
async fn group_keeps_working(anna: &mut Client, jonas: &mut Client, epoch: u64) {
    assert_eq!(group_code(anna), group_code(jonas));
    assert_eq!(anna.group_code(&secret()).unwrap().unwrap().0, epoch);
    anna.send_text(&secret(), "nachher").await.unwrap();
    assert!(texts(&jonas.read(&secret()).await.unwrap()).contains(&"nachher".to_owned()));
    jonas.send_text(&secret(), "angekommen").await.unwrap();
    assert!(texts(&anna.read(&secret()).await.unwrap()).contains(&"angekommen".to_owned()));
}

#[tokio::test]
async fn an_external_commit_of_a_ghost_device_is_refused_and_the_ghost_reads_nothing() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas, _lena) = team(&mut backend).await;
    let epoch = anna.group_code(&secret()).unwrap().unwrap().0;

    // The operator joins a ghost device under Anna's id by an MLS external commit, built
    // from the GroupInfo and tree the server stores, and appends it to the log.
    backend.stop().await;
    let operator = Operator::new(&backend.data_dir());
    let (commit, mut ghost) = operator.external_commit(&secret(), "P1001/4242").unwrap();
    operator.append_entry(&secret(), "P1001", commit).unwrap();
    backend.run().await.unwrap();

    let mut shown = Vec::new();
    for c in [&mut anna, &mut jonas] {
        let rows = within("read", c.read(&secret())).await.unwrap().unwrap();
        let warning = warnings(&rows);
        assert!(
            warning
                .iter()
                .any(|w| w.contains("refused") && w.contains("external commit")),
            "{rows:?}"
        );
        shown.push(warning);
        let view = c.secret_group(&secret()).await.unwrap();
        let anna_row = view
            .members
            .iter()
            .find(|m| m.user.as_str() == "P1001")
            .unwrap();
        assert_eq!(anna_row.devices.len(), 1, "{view:?}");
    }
    assert_eq!(shown[0], shown[1], "members show different warnings");
    group_keeps_working(&mut anna, &mut jonas, epoch).await;

    // What the members wrote after the attack is not readable with the ghost's keys.
    backend.stop().await;
    let entries = operator.entries(&secret()).unwrap();
    let later: Vec<_> = entries.iter().rev().take(2).collect();
    assert_eq!(later.len(), 2);
    for message in later {
        assert!(!ghost.can_read(message), "the ghost read a secret message");
    }
}

#[tokio::test]
async fn a_group_the_server_forgot_is_not_created_again_and_nobody_unapproved_gets_in() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, jonas, mut lena) = team(&mut backend).await;

    // The two-key edit: the server now says the group was never created.
    backend.stop().await;
    Operator::new(&backend.data_dir())
        .forget_group(&secret())
        .unwrap();
    backend.run().await.unwrap();

    within("owner syncs", anna.sync()).await.unwrap().unwrap();
    within("owner syncs again", anna.sync())
        .await
        .unwrap()
        .unwrap();
    let rows = within("read", anna.read(&secret())).await.unwrap().unwrap();
    let shown = warnings(&rows);
    assert_eq!(
        shown
            .iter()
            .filter(|w| w.contains("does not exist") && w.contains("not created again"))
            .count(),
        1,
        "{rows:?}"
    );
    // Nothing was created: the server still knows no group, Anna's state is the old one.
    let view = anna.secret_group(&secret()).await.unwrap();
    assert!(!view.born && view.joined, "{view:?}");
    assert_eq!(group_code(&anna), group_code(&jonas));
    // Lena, whom no owner approved, gets nothing.
    within("lena syncs", lena.sync()).await.unwrap().unwrap();
    assert!(lena.group_code(&secret()).unwrap().is_none());
    let welcomes = lena.request(&Request::FetchWelcomes).await.unwrap();
    assert_eq!(welcomes, Response::Welcomes(Vec::new()));
}

#[tokio::test]
async fn welcomes_of_the_operators_making_are_refused_before_anything_is_written() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas, mut lena) = team(&mut backend).await;
    let epoch = anna.group_code(&secret()).unwrap().unwrap().0;
    let jonas_device = jonas.identity().device;
    let lena_device = lena.identity().device;

    backend.stop().await;
    let operator = Operator::new(&backend.data_dir());
    let removal_key = operator.removal_key().unwrap().verifying_key().to_bytes();
    // For Jonas, a member: a group under the same id, "owned" by Anna's name through a
    // ghost device, labelled with a high epoch so it looks newer than his.
    let kp = operator
        .key_packages(&uid("P1002"), jonas_device)
        .unwrap()
        .last_resort
        .unwrap();
    let for_jonas = operator
        .fake_welcome(&secret(), "P1001/4242", &["P1001"], removal_key, &kp, 99)
        .unwrap();
    operator
        .deliver_welcome(&uid("P1002"), jonas_device, for_jonas)
        .unwrap();
    // For Lena, whom nobody approved: a group in which the operator can propose changes.
    let kp = operator
        .key_packages(&uid("P1003"), lena_device)
        .unwrap()
        .last_resort
        .unwrap();
    let for_lena = operator
        .fake_welcome(&secret(), "P1001/4242", &["P1001"], [7; 32], &kp, 99)
        .unwrap();
    operator
        .deliver_welcome(&uid("P1003"), lena_device, for_lena)
        .unwrap();
    // ... and lists her device as a member, so the server hands the Welcome out.
    operator
        .list_as_member(&secret(), &uid("P1003"), lena_device)
        .unwrap();
    backend.run().await.unwrap();

    let rows = within("jonas reads", jonas.read(&secret()))
        .await
        .unwrap()
        .unwrap();
    assert!(
        warnings(&rows)
            .iter()
            .any(|w| w.contains("Welcome") && w.contains("refused")),
        "{rows:?}"
    );
    group_keeps_working(&mut anna, &mut jonas, epoch).await;

    let rows = within("lena reads", lena.read(&secret()))
        .await
        .unwrap()
        .unwrap();
    assert!(lena.group_code(&secret()).unwrap().is_none());
    assert!(
        warnings(&rows)
            .iter()
            .any(|w| w.contains("refused a Welcome") && w.contains("removal key")),
        "{rows:?}"
    );
    assert!(!texts(&rows).iter().any(|t| t == "nachher"), "{rows:?}");
}

#[tokio::test]
async fn a_substituted_key_package_is_never_added() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas, lena) = team(&mut backend).await;
    let epoch = anna.group_code(&secret()).unwrap().unwrap().0;

    // The operator answers claims for Lena's device with a package of a ghost device.
    backend.stop().await;
    let ghost_dir = tempfile::tempdir().unwrap();
    let ghost = MlsEngine::open(
        &ghost_dir.path().join("ghost.sqlite"),
        ed25519_dalek::SigningKey::from_bytes(&[0x66; 32]),
        DeviceIdentity::new("P1003", "4242").unwrap(),
    )
    .unwrap();
    let package = ghost.generate_key_packages(0).unwrap().last_resort;
    Operator::new(&backend.data_dir())
        .substitute_key_packages(&uid("P1003"), lena.identity().device, package)
        .unwrap();
    backend.run().await.unwrap();

    let approval = within("approve", anna.approve(&secret(), &uid("P1003")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(approval, Approval::NoDevices);
    let rows = anna.read(&secret()).await.unwrap();
    assert!(
        warnings(&rows)
            .iter()
            .any(|w| w.contains("KeyPackage of P1003/4242") && w.contains("not added")),
        "{rows:?}"
    );
    for c in [&mut anna, &mut jonas] {
        let view = c.secret_group(&secret()).await.unwrap();
        assert!(
            view.members.iter().all(|m| m.user.as_str() != "P1003"),
            "{view:?}"
        );
    }
    group_keeps_working(&mut anna, &mut jonas, epoch).await;
}

#[tokio::test]
async fn a_policy_change_by_a_non_owner_is_refused_by_the_server_and_by_every_member() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas, _lena) = team(&mut backend).await;
    let epoch = jonas.group_code(&secret()).unwrap().unwrap().0;

    // A modified client of Jonas's commits a policy making him an owner, with auto-admit.
    let engine = MlsEngine::open(
        &jonas.dir().join(rathaus_client::store::DB_FILE),
        rathaus_client::store::load_device_key(jonas.dir()).unwrap(),
        DeviceIdentity::new("P1002", &jonas.identity().device.0.to_string()).unwrap(),
    )
    .unwrap();
    let forged = GroupPolicy {
        owners: vec![uid("P1001"), uid("P1002")],
        auto_admit: true,
    };
    let gid = rathaus_client::mls_group_id(&secret());
    let out = engine.update_group_policy(&gid, &forged.encode()).unwrap();
    engine.discard_pending_commit(&gid).unwrap();
    drop(engine);
    // The honest server applies the members' rule too.
    let refused = jonas
        .request(&Request::Commit {
            group: secret(),
            epoch,
            commit: out.commit.clone(),
            welcome: None,
            group_info: out.group_info,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden), "{refused}");

    // The operator stores it anyway.
    backend.stop().await;
    Operator::new(&backend.data_dir())
        .append_entry(&secret(), "P1002", out.commit)
        .unwrap();
    backend.run().await.unwrap();

    let rows = within("read", anna.read(&secret())).await.unwrap().unwrap();
    assert!(
        warnings(&rows).iter().any(|w| w.contains("refused")
            && w.contains("P1002 is not an owner but changed the owners or auto-admit")),
        "{rows:?}"
    );
    let view = anna.secret_group(&secret()).await.unwrap();
    assert_eq!(view.owners, vec![uid("P1001")]);
    assert!(!view.auto_admit);
    within("jonas reads", jonas.read(&secret()))
        .await
        .unwrap()
        .unwrap();
    group_keeps_working(&mut anna, &mut jonas, epoch).await;

    // The forged auto-admit takes effect nowhere: a new colleague stays pending.
    let _mia = backend
        .user(&mut admin, "P1004", "Mia Roth", &["bauamt"])
        .await
        .unwrap();
    within("owner syncs", anna.sync()).await.unwrap().unwrap();
    let view = anna.secret_group(&secret()).await.unwrap();
    assert!(view.pending.contains(&uid("P1004")), "{view:?}");
}

#[tokio::test]
async fn a_removal_the_server_drops_is_shown_to_every_member() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas, mut lena) = team(&mut backend).await;
    within("approve", anna.approve(&secret(), &uid("P1003")))
        .await
        .unwrap()
        .unwrap();
    within("lena joins", lena.sync()).await.unwrap().unwrap();
    assert!(lena.group_code(&secret()).unwrap().is_some());
    let lena_device = lena.identity().device;

    // Lena leaves the Bauamt, but the operator keeps her device in the group.
    backend.stop().await;
    Operator::new(&backend.data_dir())
        .drop_removal("bauamt", &uid("P1003"))
        .unwrap();
    backend.run().await.unwrap();

    let expected = format!("Lena Koch (P1003, device {lena_device}");
    for c in [&mut anna, &mut jonas] {
        // No grace period here: the removal is due at once.
        c.set_removal_grace(std::time::Duration::ZERO).unwrap();
        within("sync", c.sync()).await.unwrap().unwrap();
        within("sync again", c.sync()).await.unwrap().unwrap();
        let rows = within("read", c.read(&secret())).await.unwrap().unwrap();
        let due: Vec<_> = warnings(&rows)
            .into_iter()
            .filter(|w| w.contains(&expected) && w.contains("no longer on the roster"))
            .collect();
        assert_eq!(due.len(), 1, "{rows:?}");
        let view = c.secret_group(&secret()).await.unwrap();
        assert!(
            view.members.iter().any(|m| m.user.as_str() == "P1003"),
            "{view:?}"
        );
    }
}

#[tokio::test]
async fn a_colleague_the_operator_puts_on_a_room_roster_is_not_admitted() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();
    let mut mallory = backend
        .user(&mut admin, "P6666", "Mallory", &[])
        .await
        .unwrap();
    let slug = rathaus_protocol::DepartmentSlug::parse("sanierung").unwrap();
    let room = anna.create_room(&slug, "Sanierung").await.unwrap();

    backend.stop().await;
    Operator::new(&backend.data_dir())
        .put_on_room_roster("sanierung", &uid("P6666"))
        .unwrap();
    backend.run().await.unwrap();

    // Anna's client admits only colleagues Anna invited.
    within("anna syncs", anna.sync()).await.unwrap().unwrap();
    anna.send_text(&room, "nur fuer Eingeladene").await.unwrap();
    let view = anna.secret_group(&room).await.unwrap();
    assert!(
        view.members.iter().all(|m| m.user.as_str() != "P6666"),
        "{view:?}"
    );
    assert_eq!(view.pending, vec![uid("P6666")]);
    within("mallory syncs", mallory.sync())
        .await
        .unwrap()
        .unwrap();
    assert!(mallory.group_code(&room).unwrap().is_none());
}

/// The owner's client claims for the owner's own id when it approves the owner, which a
/// server lists as pending (or an approval queued offline names): what the server then
/// hands out under that id must have been linked by one of the owner's devices. Here the
/// operator's phone under Anna's id would otherwise be added, and be an owner too.
#[tokio::test]
async fn a_ghost_device_under_the_owners_own_id_is_not_added() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas, _lena) = team(&mut backend).await;
    let epoch = anna.group_code(&secret()).unwrap().unwrap().0;

    backend.stop().await;
    // Anna approves herself while the server is away (the approval is queued).
    let queued = within("approve", anna.approve(&secret(), &uid("P1001")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(queued, Approval::Queued);
    // The operator enrolls a phone of their own under Anna's id.
    let ghost_dir = tempfile::tempdir().unwrap();
    let ghost_key = ed25519_dalek::SigningKey::from_bytes(&[0x67; 32]);
    let ghost = MlsEngine::open(
        &ghost_dir.path().join("ghost.sqlite"),
        ghost_key.clone(),
        DeviceIdentity::new("P1001", "4242").unwrap(),
    )
    .unwrap();
    let package = ghost.generate_key_packages(0).unwrap().last_resort;
    Operator::new(&backend.data_dir())
        .enroll_ghost_device(
            &uid("P1001"),
            rathaus_protocol::DeviceId(4242),
            ghost_key.verifying_key().to_bytes(),
            package,
        )
        .unwrap();
    backend.run().await.unwrap();

    // The queued approval is carried out at the next sync.
    within("anna", anna.sync()).await.unwrap().unwrap();
    within("jonas", jonas.sync()).await.unwrap().unwrap();
    for c in [&mut anna, &mut jonas] {
        let view = c.secret_group(&secret()).await.unwrap();
        assert!(
            view.members
                .iter()
                .flat_map(|m| &m.devices)
                .all(|d| d.device != "4242"),
            "{view:?}"
        );
    }
    let rows = anna.read(&secret()).await.unwrap();
    assert_eq!(
        warnings(&rows)
            .iter()
            .filter(|w| w.contains("P1001/4242") && w.contains("not added"))
            .count(),
        1,
        "{rows:?}"
    );
    group_keeps_working(&mut anna, &mut jonas, epoch).await;
}

/// A commit the server failed with an internal error stays staged on its maker's device
/// (it may have arrived). The operator then labels an entry of their own with the maker's
/// id: were the label proof, the maker would merge a commit the log never held and leave
/// the others behind, at an epoch where the server lets another commit win.
#[tokio::test]
async fn an_entry_labelled_as_ones_own_does_not_merge_a_commit_the_log_never_held() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas, _lena) = team(&mut backend).await;
    let epoch = anna.group_code(&secret()).unwrap().unwrap().0;

    backend.stop().await;
    let operator = Operator::new(&backend.data_dir());
    let state = operator
        .replace_public_state(&secret(), b"kaputt".to_vec())
        .unwrap();
    backend.run().await.unwrap();
    // Anna's approval of Lena: staged, sent, failed by the server as transient.
    let failed = within("approve", anna.approve(&secret(), &uid("P1003")))
        .await
        .unwrap();
    assert!(
        failed.as_ref().is_err_and(|e| e.is_transient()),
        "{failed:?}"
    );

    backend.stop().await;
    operator.replace_public_state(&secret(), state).unwrap();
    let forged = operator
        .append_entry(&secret(), "P1001", b"not a commit".to_vec())
        .unwrap();
    backend.run().await.unwrap();

    // Anna's next sync carries the approval out again, this time for real.
    within("anna", anna.sync()).await.unwrap().unwrap();
    within("jonas", jonas.sync()).await.unwrap().unwrap();
    let rows = anna.read(&secret()).await.unwrap();
    assert!(
        rows.iter()
            .any(|r| r.seq == forged && r.kind != RowKind::Membership),
        "{rows:?}"
    );
    // Both at the same epoch, with the same members: the group did not fork.
    let view = jonas.secret_group(&secret()).await.unwrap();
    assert!(
        view.members.iter().any(|m| m.user.as_str() == "P1003"),
        "{view:?}"
    );
    group_keeps_working(&mut anna, &mut jonas, epoch + 1).await;
}
