//! The life of a city hall, end to end: a colleague moves to another department, loses
//! their phone, adds a second device, and a group outlives its only owner. Real server,
//! real clients, real MLS.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rathaus_client::{
    Approval, Client, ClientError, PolicyOutcome, RowKind, ServerTrust, TimelineRow,
};
use rathaus_protocol::{DepartmentSlug, ErrorCode, GroupHandle, Request, UserId};
use rathaus_tests::{within, TestBackend, PASSWORD};

fn bauamt() -> GroupHandle {
    GroupHandle::parse("bauamt/secret").unwrap()
}

fn uid(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

fn slug(s: &str) -> DepartmentSlug {
    DepartmentSlug::parse(s).unwrap()
}

fn texts(rows: &[TimelineRow]) -> Vec<String> {
    rows.iter().map(|r| r.text.clone()).collect()
}

fn of_kind(rows: &[TimelineRow], kind: RowKind) -> Vec<String> {
    rows.iter()
        .filter(|r| r.kind == kind)
        .map(|r| r.text.clone())
        .collect()
}

/// Anna Berg (P1001) owns `bauamt`; Jonas Weber (P1002) is in it and admitted to its
/// secret group.
async fn bauamt_team(backend: &mut TestBackend) -> (Client, Client, Client) {
    let mut admin = backend.admin().await.unwrap();
    let anna_code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &[], &[])
        .await
        .unwrap();
    backend
        .department(&mut admin, "bauamt", &["P1001"])
        .await
        .unwrap();
    let mut anna = backend.enroll("P1001", &anna_code).await.unwrap();
    let mut jonas = backend
        .user(&mut admin, "P1002", "Jonas Weber", &["bauamt"])
        .await
        .unwrap();
    within("birth", anna.sync()).await.unwrap().unwrap();
    let approval = within("approve", anna.approve(&bauamt(), &uid("P1002")))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(approval, Approval::Added { .. }), "{approval:?}");
    within("join", jonas.sync()).await.unwrap().unwrap();
    anna.send_text(&bauamt(), "vorher").await.unwrap();
    assert!(texts(&jonas.read(&bauamt()).await.unwrap()).contains(&"vorher".to_owned()));
    (admin, anna, jonas)
}

/// Syncs `client` until one of its rows of `group` satisfies `found` (the server asks
/// members to commit removals in the background); bounded.
async fn sync_until(
    client: &mut Client,
    group: &GroupHandle,
    found: impl Fn(&TimelineRow) -> bool,
) {
    for _ in 0..100 {
        within("sync", client.sync()).await.unwrap().unwrap();
        let rows = client.read(group).await.unwrap();
        if rows.iter().any(&found) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let rows = client.read(group).await.unwrap();
    panic!("never found the row in {rows:?}");
}

#[tokio::test]
async fn a_transfer_cuts_the_old_secret_group_off_and_leaves_the_new_one_pending() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = bauamt_team(&mut backend).await;
    backend
        .department(&mut admin, "kaemmerei", &["P1001"])
        .await
        .unwrap();
    within("birth", anna.sync()).await.unwrap().unwrap();

    let now = admin
        .admin_set_departments(uid("P1002"), vec![slug("kaemmerei")], vec![slug("bauamt")])
        .await
        .unwrap();
    assert_eq!(now, vec![slug("kaemmerei")]);

    // Cut off at once: the server no longer delivers the Bauamt's secret group to Jonas.
    let fetch = Request::Fetch {
        group: bauamt(),
        since: 0,
        limit: 10,
    };
    let refused = jonas.request(&fetch).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden), "{refused}");
    // The server proposes the removal and Anna's client commits it, visibly.
    sync_until(&mut anna, &bauamt(), |r| {
        r.kind == RowKind::Membership && r.text.contains("removed Jonas Weber (P1002, device")
    })
    .await;
    anna.send_text(&bauamt(), "nach dem Wechsel").await.unwrap();
    let _ = jonas.sync().await;
    assert!(!texts(&jonas.store().timeline("bauamt/secret").unwrap())
        .contains(&"nach dem Wechsel".to_owned()));

    // In the Kämmerei Jonas is a pending invitation until an owner admits him.
    let kaemmerei = GroupHandle::parse("kaemmerei/secret").unwrap();
    let view = anna.secret_group(&kaemmerei).await.unwrap();
    assert_eq!(view.pending, vec![uid("P1002")]);
    within("jonas syncs", jonas.sync()).await.unwrap().unwrap();
    assert!(jonas.group_code(&kaemmerei).unwrap().is_none());

    // The transfer is in the audit log.
    let audit = admin.admin_audit().await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "user.departments" && e.target == "P1002"),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_lost_phone_is_locked_out_and_the_new_device_needs_an_owner() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = bauamt_team(&mut backend).await;

    let (code, _) = admin.admin_reset_user(uid("P1002")).await.unwrap();
    // The old device can no longer log in.
    jonas.disconnect().await;
    let err = jonas.sync().await.unwrap_err();
    assert!(
        matches!(err.code(), Some(ErrorCode::Unauthenticated))
            || matches!(err, ClientError::Server { .. }),
        "{err:?}"
    );
    // Its leaf is removed from the group although Jonas stays on the roster.
    sync_until(&mut anna, &bauamt(), |r| {
        r.kind == RowKind::Membership && r.text.contains("removed Jonas Weber (P1002, device")
    })
    .await;
    anna.send_text(&bauamt(), "nach dem Verlust").await.unwrap();

    // Jonas enrolls his new phone with the new code: it sees nothing until Anna admits it.
    let mut phone = backend.enroll("P1002", &code).await.unwrap();
    within("phone syncs", phone.sync()).await.unwrap().unwrap();
    assert!(phone.group_code(&bauamt()).unwrap().is_none());
    let view = anna.secret_group(&bauamt()).await.unwrap();
    assert_eq!(view.pending, vec![uid("P1002")]);
    let approval = within("approve", anna.approve(&bauamt(), &uid("P1002")))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(approval, Approval::Added { devices: 1, .. }),
        "{approval:?}"
    );
    anna.send_text(&bauamt(), "willkommen zurueck")
        .await
        .unwrap();
    let rows = within("phone reads", phone.read(&bauamt()))
        .await
        .unwrap()
        .unwrap();
    assert!(
        texts(&rows).contains(&"willkommen zurueck".to_owned()),
        "{rows:?}"
    );
    assert!(
        !texts(&rows).contains(&"nach dem Verlust".to_owned()),
        "{rows:?}"
    );
    let audit = admin.admin_audit().await.unwrap();
    assert!(audit.iter().any(|e| e.action == "user.reset"), "{audit:?}");

    // And the new password works for a further device; the old one does not.
    phone
        .change_password(PASSWORD, "ein ganz neues Passwort")
        .await
        .unwrap();
    let wrong = phone
        .change_password(PASSWORD, "noch ein neues Passwort")
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Some(ErrorCode::Unauthenticated), "{wrong}");
}

#[tokio::test]
async fn a_second_device_reads_nothing_secret_until_the_first_approves_it() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas) = bauamt_team(&mut backend).await;

    let mut phone = Client::add_device(
        &backend.profile_dir("P1002"),
        &backend.addr.to_string(),
        &ServerTrust::Pinned(backend.fingerprint.clone()),
        uid("P1002"),
        PASSWORD,
        "Jonas' phone",
    )
    .await
    .unwrap();
    within("phone syncs", phone.sync()).await.unwrap().unwrap();
    anna.send_text(&bauamt(), "vor der Freigabe").await.unwrap();
    within("anna syncs", anna.sync()).await.unwrap().unwrap();
    assert!(phone.group_code(&bauamt()).unwrap().is_none());

    // A wrong code adds nothing.
    assert!(matches!(
        jonas.approve_device("AAAA-BBBB-CCCC").await,
        Err(ClientError::Invalid(_))
    ));
    let code = phone.link_code();
    let linked = within("approve", jonas.approve_device(&code.to_lowercase()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(linked.device, phone.identity().device);
    assert_eq!(linked.groups.len(), 1, "{linked:?}");

    anna.send_text(&bauamt(), "nach der Freigabe")
        .await
        .unwrap();
    let rows = within("phone reads", phone.read(&bauamt()))
        .await
        .unwrap()
        .unwrap();
    assert!(
        texts(&rows).contains(&"nach der Freigabe".to_owned()),
        "{rows:?}"
    );
    assert!(
        !texts(&rows).contains(&"vor der Freigabe".to_owned()),
        "{rows:?}"
    );
    assert!(of_kind(&rows, RowKind::Warning).is_empty(), "{rows:?}");
    let rows = jonas.read(&bauamt()).await.unwrap();
    assert!(of_kind(&rows, RowKind::Warning).is_empty(), "{rows:?}");
    // Everybody sees who added the device, and the numbers still match on all sides.
    let rows = anna.read(&bauamt()).await.unwrap();
    let phone_id = phone.identity().device;
    assert!(
        rows.iter().any(|r| r.kind == RowKind::Membership
            && r.text.starts_with(&format!(
                "Jonas Weber (P1002) added Jonas Weber (P1002, device {phone_id}, key"
            ))),
        "{rows:?}"
    );
    let anna_sees = anna
        .safety_number(&uid("P1002"))
        .await
        .unwrap()
        .unwrap()
        .number;
    let jonas_sees = jonas
        .safety_number(&uid("P1001"))
        .await
        .unwrap()
        .unwrap()
        .number;
    let phone_sees = phone
        .safety_number(&uid("P1001"))
        .await
        .unwrap()
        .unwrap()
        .number;
    assert_eq!(anna_sees, jonas_sees);
    assert_eq!(anna_sees, phone_sees);
    let listed = jonas.devices().await.unwrap();
    assert!(
        listed.iter().any(|d| d.device == phone_id && d.linked),
        "{listed:?}"
    );

    // Revoking the phone from the laptop takes it out of the group again.
    jonas.remove_device(phone_id).await.unwrap();
    sync_until(&mut anna, &bauamt(), |r| {
        r.kind == RowKind::Membership
            && r.text
                .contains(&format!("removed Jonas Weber (P1002, device {phone_id})"))
    })
    .await;
}

#[tokio::test]
async fn a_group_outlives_its_only_owner_by_a_visible_claim() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, _anna, mut jonas) = bauamt_team(&mut backend).await;

    // While Anna is an owner on the roster, nobody else can claim.
    match jonas.claim_ownership(&bauamt()).await {
        Err(ClientError::Invalid(msg)) => assert!(msg.contains("P1001"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    admin.admin_remove_user(uid("P1001")).await.unwrap();
    sync_until(&mut jonas, &bauamt(), |r| {
        r.kind == RowKind::Warning && r.text.contains("no owner of bauamt/secret is left")
    })
    .await;
    let outcome = within("claim", jonas.claim_ownership(&bauamt()))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome, PolicyOutcome::Changed { .. }),
        "{outcome:?}"
    );

    // Now Jonas admits a new colleague, who sees the claim in the group's history.
    let mut lena = backend
        .user(&mut admin, "P1003", "Lena Koch", &["bauamt"])
        .await
        .unwrap();
    let approval = within("approve", jonas.approve(&bauamt(), &uid("P1003")))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(approval, Approval::Added { .. }), "{approval:?}");
    jonas
        .send_text(&bauamt(), "unter neuer Leitung")
        .await
        .unwrap();
    let rows = within("lena reads", lena.read(&bauamt()))
        .await
        .unwrap()
        .unwrap();
    assert!(
        texts(&rows).contains(&"unter neuer Leitung".to_owned()),
        "{rows:?}"
    );
    let view = lena.secret_group(&bauamt()).await.unwrap();
    // The offboarded Anna is no longer listed as an owner.
    assert_eq!(view.owners, vec![uid("P1002")], "{view:?}");
    let rows = jonas.read(&bauamt()).await.unwrap();
    assert!(
        rows.iter().any(|r| r.kind == RowKind::Membership
            && r.text == "Jonas Weber (P1002) made Jonas Weber (P1002) an owner"),
        "{rows:?}"
    );
}

#[tokio::test]
async fn a_project_room_across_two_departments_works_and_the_admin_sees_only_who_is_in_it() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    backend
        .department(&mut admin, "kaemmerei", &[])
        .await
        .unwrap();
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();
    let mut eva = backend
        .user(&mut admin, "P2001", "Eva Klein", &["kaemmerei"])
        .await
        .unwrap();

    let room = anna
        .create_room(&slug("sanierung"), "Sanierung Rathausplatz")
        .await
        .unwrap();
    assert_eq!(room.to_string(), "room/sanierung");
    assert!(
        anna.group_code(&room).unwrap().is_some(),
        "the owner's device holds the room"
    );
    anna.send_text(&room, "vor der Einladung").await.unwrap();

    // The admin cannot invite anyone, nor read the room; Eva has nothing to join yet.
    let refused = admin
        .invite_to_room(&room, &uid("P2001"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden), "{refused}");
    assert!(eva.room_invitations().await.unwrap().is_empty());

    anna.invite_to_room(&room, &uid("P2001")).await.unwrap();
    let invitations = eva.room_invitations().await.unwrap();
    assert_eq!(invitations.len(), 1, "{invitations:?}");
    assert_eq!(invitations[0].room, room);
    eva.join_room(&room).await.unwrap();
    // Anna's next sync admits her: only colleagues Anna invited.
    within("anna syncs", anna.sync()).await.unwrap().unwrap();
    anna.send_text(&room, "willkommen im Projekt")
        .await
        .unwrap();
    let rows = within("eva reads", eva.read(&room)).await.unwrap().unwrap();
    assert!(
        texts(&rows).contains(&"willkommen im Projekt".to_owned()),
        "{rows:?}"
    );
    assert!(
        !texts(&rows).contains(&"vor der Einladung".to_owned()),
        "{rows:?}"
    );
    let rows = anna.read(&room).await.unwrap();
    assert!(
        rows.iter().any(|r| r.kind == RowKind::Membership
            && r.text
                .starts_with("Anna Berg (P1001) added Eva Klein (P2001, device")),
        "{rows:?}"
    );

    // The admin sees that the room exists and who is in it, never its content.
    let members = admin.members(&room).await.unwrap();
    let ids: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    assert_eq!(ids, vec!["P1001", "P2001"]);
    let fetch = Request::Fetch {
        group: room.clone(),
        since: 0,
        limit: 10,
    };
    let refused = admin.request(&fetch).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden), "{refused}");

    // Eva leaves: cut off, and her device is removed visibly.
    eva.leave_room(&room).await.unwrap();
    let refused = eva.request(&fetch).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden), "{refused}");
    sync_until(&mut anna, &room, |r| {
        r.kind == RowKind::Membership && r.text.contains("removed Eva Klein (P2001, device")
    })
    .await;
}

#[tokio::test]
async fn personnel_numbers_are_matched_in_any_case() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let code = backend
        .provision(&mut admin, "P1003", "Lena Koch", &[], &[])
        .await
        .unwrap();
    // Lena types her number in lower case on her phone: she is P1003 all the same.
    let mut lena = backend.enroll("p1003", &code).await.unwrap();
    assert_eq!(lena.identity().user.as_str(), "P1003");
    assert_eq!(lena.whoami().await.unwrap().user.as_str(), "P1003");

    // IT cannot create a second colleague that differs only in case …
    let twice = admin
        .admin_add_user(uid("p1003"), "Lena Koch", vec![], vec![])
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Some(ErrorCode::AlreadyExists), "{twice}");
    // … and every admin command finds her however she is typed.
    let departments = admin
        .admin_set_departments(uid("p1003"), vec![slug("bauamt")], vec![])
        .await
        .unwrap();
    assert_eq!(departments, vec![slug("bauamt")]);
    let members = admin
        .members(&GroupHandle::parse("bauamt").unwrap())
        .await
        .unwrap();
    assert!(
        members.iter().any(|m| m.user.as_str() == "P1003"),
        "{members:?}"
    );
    admin.admin_remove_user(uid("p1003")).await.unwrap();
    lena.disconnect().await;
    assert!(lena.whoami().await.is_err());
}
