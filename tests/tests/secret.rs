//! End-to-end tests of secret groups (DESIGN §5): real server, real clients, real MLS.
//! Birth by the owner, approvals, races for an epoch, offboarding, a forged Add, a
//! crashed server, and a canary that must never reach the server's disk or log; owners
//! and auto-admit changed through MLS, and a forged policy change.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::RngCore;
use rathaus_client::mls::{DeviceIdentity, MlsEngine};
use rathaus_client::{Approval, Client, ClientError, PolicyOutcome, RowKind, TimelineRow};
use rathaus_protocol::{
    ClientMsgId, ContentBody, ContentIn, EntryBody, ErrorCode, GroupHandle, PostBody, Request,
    Response, UserId,
};
use rathaus_tests::{contains, files_containing, within, TestBackend};

fn secret() -> GroupHandle {
    GroupHandle::parse("bauamt/secret").unwrap()
}

fn uid(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

/// Anna Berg (owner, P1001) and Jonas Weber (P1002, an owner too if `jonas_owner`) in
/// `bauamt`. Anna's client gives birth to `bauamt/secret`, Anna approves Jonas, and
/// Jonas joins from the Welcome.
async fn team(backend: &mut TestBackend, jonas_owner: bool) -> (Client, Client, Client) {
    let mut admin = backend.admin().await.unwrap();
    let anna_code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &[], &[])
        .await
        .unwrap();
    let jonas_code = if jonas_owner {
        let code = backend
            .provision(&mut admin, "P1002", "Jonas Weber", &[], &[])
            .await
            .unwrap();
        backend
            .department(&mut admin, "bauamt", &["P1001", "P1002"])
            .await
            .unwrap();
        code
    } else {
        backend
            .department(&mut admin, "bauamt", &["P1001"])
            .await
            .unwrap();
        backend
            .provision(&mut admin, "P1002", "Jonas Weber", &["bauamt"], &[])
            .await
            .unwrap()
    };
    // Enrolling publishes each device's KeyPackages.
    let mut anna = backend.enroll("P1001", &anna_code).await.unwrap();
    let mut jonas = backend.enroll("P1002", &jonas_code).await.unwrap();
    within("birth", anna.sync()).await.unwrap().unwrap();
    let approval = within("approve", anna.approve(&secret(), &uid("P1002")))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(approval, Approval::Added { .. }), "{approval:?}");
    within("join", jonas.sync()).await.unwrap().unwrap();
    (admin, anna, jonas)
}

fn texts(rows: &[TimelineRow]) -> Vec<String> {
    rows.iter().map(|r| r.text.clone()).collect()
}

fn canary() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("kanarienvogel-{hex}")
}

async fn assert_same_group(clients: &[&Client]) {
    let codes: Vec<_> = clients
        .iter()
        .map(|c| c.group_code(&secret()).unwrap().expect("a member"))
        .collect();
    assert!(
        codes.windows(2).all(|w| w[0] == w[1]),
        "members disagree about the group: {:?}",
        codes.iter().map(|c| c.0).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn canary_reaches_members_but_never_the_servers_disk_or_log() {
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("server.log");
    let mut backend = TestBackend::start_process(Some(log.clone())).await.unwrap();
    let (mut admin, mut anna, mut jonas) = team(&mut backend, true).await;

    let secret_text = canary();
    let public_text = canary();
    anna.send_text(&secret(), &secret_text).await.unwrap();
    anna.send_text(&GroupHandle::parse("bauamt").unwrap(), &public_text)
        .await
        .unwrap();
    let rows = within("read", jonas.read(&secret()))
        .await
        .unwrap()
        .unwrap();
    assert!(texts(&rows).contains(&secret_text), "{rows:?}");
    assert_eq!(
        rows.iter().find(|r| r.text == secret_text).unwrap().sender,
        "P1001"
    );
    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }
    backend.stop().await;

    let data = backend.data_dir();
    // Positive control: the search finds server-readable content.
    let stored = backend.stored_bytes().unwrap();
    assert!(
        contains(&stored, public_text.as_bytes()),
        "the public post should be in the server's records"
    );
    assert!(
        !contains(&stored, secret_text.as_bytes()),
        "secret content in the server's records"
    );
    assert_eq!(
        files_containing(&data, secret_text.as_bytes()).unwrap(),
        Vec::<std::path::PathBuf>::new(),
        "secret content in the server's files"
    );
    let log_bytes = std::fs::read(&log).unwrap();
    assert!(
        !log_bytes.is_empty(),
        "the server wrote no log at RUST_LOG=trace"
    );
    assert!(
        !contains(&log_bytes, secret_text.as_bytes()),
        "secret content in the server's log"
    );
}

#[tokio::test]
async fn admin_and_outsiders_cannot_read_the_secret_group() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, _jonas) = team(&mut backend, true).await;
    anna.send_text(&secret(), "nur fuer das Bauamt")
        .await
        .unwrap();
    let mut outsider = backend
        .user(&mut admin, "P9009", "Otto Aussen", &[])
        .await
        .unwrap();

    for who in [&mut admin, &mut outsider] {
        for request in [
            Request::Fetch {
                group: secret(),
                since: 0,
                limit: 100,
            },
            Request::Members { group: secret() },
            Request::RatchetTree { group: secret() },
            Request::ClaimKeyPackages {
                group: secret(),
                user: uid("P1002"),
            },
        ] {
            match who.request(&request).await {
                Err(e) => assert!(
                    matches!(e.code(), Some(ErrorCode::Forbidden | ErrorCode::NotFound)),
                    "{request:?}: {e}"
                ),
                Ok(r) => panic!("{request:?} answered for a non-member: {r:?}"),
            }
        }
        match who.request(&Request::FetchWelcomes).await.unwrap() {
            Response::Welcomes(w) => assert!(w.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(who.read(&secret()).await.is_err());
        assert!(who.approve(&secret(), &uid("P9009")).await.is_err());
    }
}

#[tokio::test]
async fn a_rostered_user_sees_nothing_until_an_owner_approves() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = team(&mut backend, false).await;
    anna.send_text(&secret(), "vor Lenas Zeit").await.unwrap();

    // The admin adds Lena to the department: only a pending invitation.
    let mut lena = backend
        .user(&mut admin, "P1003", "Lena Koch", &["bauamt"])
        .await
        .unwrap();
    lena.sync().await.unwrap();
    assert!(lena.read(&secret()).await.unwrap().is_empty());
    assert!(lena.group_code(&secret()).unwrap().is_none());
    let view = anna.secret_group(&secret()).await.unwrap();
    assert_eq!(view.pending, vec![uid("P1003")]);
    assert!(view.owners.contains(&uid("P1001")));

    // A non-owner cannot approve.
    match jonas.approve(&secret(), &uid("P1003")).await {
        Err(ClientError::NotOwner(msg)) => assert!(msg.contains("owner"), "{msg}"),
        other => panic!("expected NotOwner, got {other:?}"),
    }

    // The owner approves; Lena joins and reads what comes after, nothing before.
    match anna.approve(&secret(), &uid("P1003")).await.unwrap() {
        Approval::Added { devices, .. } => assert_eq!(devices, 1),
        other => panic!("{other:?}"),
    }
    anna.send_text(&secret(), "willkommen Lena").await.unwrap();
    let rows = within("lena reads", lena.read(&secret()))
        .await
        .unwrap()
        .unwrap();
    let lena_texts = texts(&rows);
    assert!(
        lena_texts.contains(&"willkommen Lena".to_owned()),
        "{lena_texts:?}"
    );
    assert!(!lena_texts.iter().any(|t| t.contains("vor Lenas Zeit")));

    // Everybody's timeline names who added whom.
    let rows = jonas.read(&secret()).await.unwrap();
    let added = rows
        .iter()
        .find(|r| r.kind == RowKind::Membership && r.text.contains("Lena Koch"))
        .unwrap_or_else(|| panic!("no membership row: {rows:?}"));
    assert!(
        added
            .text
            .starts_with("Anna Berg (P1001) added Lena Koch (P1003, device "),
        "{}",
        added.text
    );
    assert!(!rows.iter().any(|r| r.kind == RowKind::Warning), "{rows:?}");
    assert_same_group(&[&anna, &jonas, &lena]).await;
}

#[tokio::test]
async fn two_owners_approving_at_once_agree_on_one_commit() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = team(&mut backend, true).await;
    let mut lena = backend
        .user(&mut admin, "P1003", "Lena Koch", &["bauamt"])
        .await
        .unwrap();
    anna.sync().await.unwrap();
    jonas.sync().await.unwrap();
    let epoch = anna.group_code(&secret()).unwrap().unwrap().0;

    let (group, lena_id) = (secret(), uid("P1003"));
    let (a, j) = tokio::join!(
        anna.approve(&group, &lena_id),
        jonas.approve(&group, &lena_id)
    );
    let outcomes = [a.unwrap(), j.unwrap()];
    let added = outcomes
        .iter()
        .filter(|o| matches!(o, Approval::Added { .. }))
        .count();
    assert_eq!(added, 1, "{outcomes:?}");
    assert!(outcomes.contains(&Approval::AlreadyMember), "{outcomes:?}");

    for c in [&mut anna, &mut jonas, &mut lena] {
        within("sync", c.sync()).await.unwrap().unwrap();
    }
    assert_same_group(&[&anna, &jonas, &lena]).await;
    assert_eq!(anna.group_code(&secret()).unwrap().unwrap().0, epoch + 1);
    jonas.send_text(&secret(), "alle da").await.unwrap();
    for c in [&mut anna, &mut lena] {
        assert!(texts(&c.read(&secret()).await.unwrap()).contains(&"alle da".to_owned()));
    }
}

#[tokio::test]
async fn an_offboarded_user_is_cut_off_and_cannot_decrypt_what_follows() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = team(&mut backend, false).await;
    let mut lena = backend
        .user(&mut admin, "P1003", "Lena Koch", &["bauamt"])
        .await
        .unwrap();
    anna.approve(&secret(), &uid("P1003")).await.unwrap();
    for c in [&mut jonas, &mut lena] {
        c.sync().await.unwrap();
    }
    jonas.send_text(&secret(), "noch dabei").await.unwrap();
    let epoch = anna.group_code(&secret()).unwrap().unwrap().0;
    let jonas_dir = jonas.dir().to_path_buf();
    let jonas_device = jonas.identity().device;

    // Anna is online; the server asks her to commit its Remove proposal.
    let mut sub = anna.subscribe().await.unwrap();
    admin.admin_remove_user(uid("P1002")).await.unwrap();

    // Cut off at once.
    match jonas.read(&secret()).await {
        Err(_) => {}
        Ok(rows) => panic!("the offboarded user still reads: {rows:?}"),
    }

    within("the removal commit", async {
        loop {
            let event = sub.next().await.unwrap();
            anna.apply_event(&event).await.unwrap();
            if anna.group_code(&secret()).unwrap().unwrap().0 > epoch {
                break;
            }
        }
    })
    .await
    .unwrap();
    let rows = anna.read(&secret()).await.unwrap();
    assert!(
        rows.iter().any(|r| r.kind == RowKind::Membership
            && r.text
                .contains("Rathaus server proposed removing Jonas Weber")),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.kind == RowKind::Membership && r.text.contains("removed Jonas Weber")),
        "{rows:?}"
    );

    let after = anna.send_text(&secret(), "ohne Jonas").await.unwrap();
    assert!(texts(&lena.read(&secret()).await.unwrap()).contains(&"ohne Jonas".to_owned()));
    assert_same_group(&[&anna, &lena]).await;

    // Jonas's device state, taken from his profile, cannot open the new message.
    let ciphertext = match anna
        .request(&Request::Fetch {
            group: secret(),
            since: after.seq - 1,
            limit: 1,
        })
        .await
        .unwrap()
    {
        Response::Entries { entries, .. } => match &entries[0].body {
            EntryBody::Mls(bytes) => bytes.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    jonas.disconnect().await;
    drop(jonas);
    let key = rathaus_client::store::load_device_key(&jonas_dir).unwrap();
    let engine = MlsEngine::open(
        &jonas_dir.join(rathaus_client::store::DB_FILE),
        key,
        DeviceIdentity::new("P1002", &jonas_device.0.to_string()).unwrap(),
    )
    .unwrap();
    assert!(engine
        .process_message(&ciphertext, &Default::default())
        .is_err());
}

#[tokio::test]
async fn server_crash_mid_conversation_loses_nothing_acknowledged() {
    let mut backend = TestBackend::start_process(None).await.unwrap();
    let (mut admin, mut anna, mut jonas) = team(&mut backend, false).await;
    let first = anna.send_text(&secret(), "vor dem Absturz").await.unwrap();
    jonas.send_text(&secret(), "auch vorher").await.unwrap();

    backend.kill().unwrap();
    backend.restart_process().unwrap();
    // The old QUIC connections died with the process; the clients connect afresh (a
    // connection to a dead peer is only noticed after the request timeout).
    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }

    let rows = within("read after restart", jonas.read(&secret()))
        .await
        .unwrap()
        .unwrap();
    assert!(
        texts(&rows).contains(&"vor dem Absturz".to_owned()),
        "{rows:?}"
    );
    assert_eq!(
        rows.iter()
            .find(|r| r.text == "vor dem Absturz")
            .unwrap()
            .seq,
        first.seq
    );
    jonas
        .send_text(&secret(), "nach dem Neustart")
        .await
        .unwrap();
    let rows = anna.read(&secret()).await.unwrap();
    let t = texts(&rows);
    for expected in ["vor dem Absturz", "auch vorher", "nach dem Neustart"] {
        assert!(t.contains(&expected.to_owned()), "{expected}: {t:?}");
    }

    // Commits keep working too.
    let mut lena = backend
        .user(&mut admin, "P1003", "Lena Koch", &["bauamt"])
        .await
        .unwrap();
    assert!(matches!(
        anna.approve(&secret(), &uid("P1003")).await.unwrap(),
        Approval::Added { .. }
    ));
    lena.sync().await.unwrap();
    jonas.sync().await.unwrap();
    assert_same_group(&[&anna, &jonas, &lena]).await;
}

#[tokio::test]
async fn an_add_forged_with_the_servers_removal_key_is_refused() {
    use openmls::prelude::tls_codec::Deserialize as _;
    use openmls::prelude::{
        ExternalProposal, GroupEpoch, GroupId, MlsMessageBodyIn, MlsMessageIn, ProtocolVersion,
        SenderExtensionIndex,
    };
    use rathaus_server::store::{Db, StoredEntry, Writes};

    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas) = team(&mut backend, false).await;
    anna.send_text(&secret(), "vorher").await.unwrap();
    jonas.read(&secret()).await.unwrap();
    let (epoch, _) = anna.group_code(&secret()).unwrap().unwrap();

    // A malicious operator: stops the server, signs an Add of its own device with the
    // removal key, and appends it to the group's log.
    backend.stop().await;
    let mallory_dir = tempfile::tempdir().unwrap();
    let mallory = MlsEngine::open(
        &mallory_dir.path().join("m.sqlite"),
        ed25519_dalek::SigningKey::from_bytes(&[6; 32]),
        DeviceIdentity::new("P6666", "1").unwrap(),
    )
    .unwrap();
    let kp_bytes = mallory.generate_key_packages(0).unwrap().last_resort;
    let kp = match MlsMessageIn::tls_deserialize_exact(kp_bytes.as_slice())
        .unwrap()
        .extract()
    {
        MlsMessageBodyIn::KeyPackage(kp) => kp,
        other => panic!("{other:?}"),
    };
    let kp = kp
        .validate(
            &openmls_rust_crypto::RustCrypto::default(),
            ProtocolVersion::Mls10,
        )
        .unwrap();
    let seed: [u8; 32] = std::fs::read(backend.data_dir().join("removal.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let removal =
        rathaus_client::mls::DeviceSigner::new(ed25519_dalek::SigningKey::from_bytes(&seed));
    let forged = ExternalProposal::new_add::<openmls_rust_crypto::OpenMlsRustCrypto>(
        kp,
        GroupId::from_slice(&rathaus_client::mls_group_id(&secret())),
        GroupEpoch::from(epoch),
        &removal,
        SenderExtensionIndex::new(0),
    )
    .unwrap()
    .to_bytes()
    .unwrap();
    {
        let store = backend.open_store().unwrap();
        let db = Db::new(store.clone());
        let head = db.head(&secret()).unwrap();
        let mut writes = Writes::new();
        writes
            .put_entry(
                &secret(),
                head + 1,
                &StoredEntry {
                    sender: uid("rathaus-server"),
                    sender_name: "Rathaus server".into(),
                    sent_at_ms: rathaus_tests::now_ms(),
                    client_id: rathaus_protocol::ClientMsgId([7; 16]),
                    body: EntryBody::Mls(forged),
                },
            )
            .unwrap();
        db.apply(writes).unwrap();
        store.flush().await.unwrap();
    }
    backend.run().await.unwrap();

    // Both members refuse it, say so prominently, and the group carries on unchanged.
    for c in [&mut anna, &mut jonas] {
        let rows = within("read", c.read(&secret())).await.unwrap().unwrap();
        assert!(
            rows.iter()
                .any(|r| r.kind == RowKind::Warning && r.text.contains("refused")),
            "{rows:?}"
        );
    }
    anna.send_text(&secret(), "nachher").await.unwrap();
    assert!(texts(&jonas.read(&secret()).await.unwrap()).contains(&"nachher".to_owned()));
    assert_same_group(&[&anna, &jonas]).await;
    let view = anna.secret_group(&secret()).await.unwrap();
    assert!(
        view.members.iter().all(|m| m.user.as_str() != "P6666"),
        "{view:?}"
    );
    assert_eq!(anna.group_code(&secret()).unwrap().unwrap().0, epoch);
}

fn membership_texts(rows: &[TimelineRow]) -> Vec<String> {
    rows.iter()
        .filter(|r| r.kind == RowKind::Membership)
        .map(|r| r.text.clone())
        .collect()
}

#[tokio::test]
async fn with_auto_admit_on_an_owners_next_sync_admits_a_new_colleague() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = team(&mut backend, false).await;

    let outcome = anna.set_auto_admit(&secret(), true).await.unwrap();
    assert!(
        matches!(outcome, PolicyOutcome::Changed { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        anna.set_auto_admit(&secret(), true).await.unwrap(),
        PolicyOutcome::Unchanged
    );

    // The admin adds Lena to the department; Anna's next sync admits her, no `approve`.
    let mut lena = backend
        .user(&mut admin, "P1003", "Lena Koch", &["bauamt"])
        .await
        .unwrap();
    within("owner syncs", anna.sync()).await.unwrap().unwrap();
    assert!(anna
        .secret_group(&secret())
        .await
        .unwrap()
        .pending
        .is_empty());
    anna.send_text(&secret(), "willkommen Lena").await.unwrap();
    let rows = within("lena reads", lena.read(&secret()))
        .await
        .unwrap()
        .unwrap();
    assert!(
        texts(&rows).contains(&"willkommen Lena".to_owned()),
        "{rows:?}"
    );

    // Every member's timeline says who turned it on and who was admitted.
    for c in [&mut anna, &mut jonas] {
        let rows = within("read", c.read(&secret())).await.unwrap().unwrap();
        let membership = membership_texts(&rows);
        assert!(
            membership.contains(&"Anna Berg (P1001) turned on auto-admit".to_owned()),
            "{membership:?}"
        );
        assert!(
            membership
                .iter()
                .any(|t| t.starts_with("Anna Berg (P1001) added Lena Koch (P1003, device ")),
            "{membership:?}"
        );
        assert!(!rows.iter().any(|r| r.kind == RowKind::Warning), "{rows:?}");
    }
    let view = jonas.secret_group(&secret()).await.unwrap();
    assert!(view.auto_admit, "{view:?}");
    assert_eq!(view.owners, vec![uid("P1001")]);
    assert_same_group(&[&anna, &jonas, &lena]).await;
}

#[tokio::test]
async fn a_member_an_owner_promotes_can_approve() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = team(&mut backend, false).await;
    let mut lena = backend
        .user(&mut admin, "P1003", "Lena Koch", &["bauamt"])
        .await
        .unwrap();
    assert!(matches!(
        jonas.approve(&secret(), &uid("P1003")).await,
        Err(ClientError::NotOwner(_))
    ));
    // Only members become owners: Lena is still pending.
    match anna.add_owner(&secret(), &uid("P1003")).await {
        Err(ClientError::Invalid(msg)) => assert!(msg.contains("only members"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }

    let outcome = anna.add_owner(&secret(), &uid("P1002")).await.unwrap();
    assert!(
        matches!(outcome, PolicyOutcome::Changed { .. }),
        "{outcome:?}"
    );
    match jonas.approve(&secret(), &uid("P1003")).await.unwrap() {
        Approval::Added { devices, .. } => assert_eq!(devices, 1),
        other => panic!("{other:?}"),
    }
    let rows = within("lena reads", lena.read(&secret()))
        .await
        .unwrap()
        .unwrap();
    assert!(lena.group_code(&secret()).unwrap().is_some(), "{rows:?}");

    let rows = anna.read(&secret()).await.unwrap();
    let membership = membership_texts(&rows);
    assert!(
        membership.contains(&"Anna Berg (P1001) made Jonas Weber (P1002) an owner".to_owned()),
        "{membership:?}"
    );
    assert!(
        membership
            .iter()
            .any(|t| t.starts_with("Jonas Weber (P1002) added Lena Koch (P1003, device ")),
        "{membership:?}"
    );
    assert!(!rows.iter().any(|r| r.kind == RowKind::Warning), "{rows:?}");
    let membership = membership_texts(&jonas.read(&secret()).await.unwrap());
    assert!(
        membership.contains(&"Anna Berg (P1001) made Jonas Weber (P1002) an owner".to_owned()),
        "{membership:?}"
    );

    // Jonas takes Anna's ownership away, but cannot then remove the last owner.
    jonas.remove_owner(&secret(), &uid("P1001")).await.unwrap();
    match jonas.remove_owner(&secret(), &uid("P1002")).await {
        Err(ClientError::Invalid(msg)) => assert!(msg.contains("last owner"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let view = lena.secret_group(&secret()).await.unwrap();
    assert_eq!(view.owners, vec![uid("P1002")]);
    let membership = membership_texts(&anna.read(&secret()).await.unwrap());
    assert!(
        membership
            .contains(&"Jonas Weber (P1002) removed Anna Berg (P1001) as an owner".to_owned()),
        "{membership:?}"
    );
    assert_same_group(&[&anna, &jonas, &lena]).await;
}

#[tokio::test]
async fn only_owners_change_the_policy() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, _anna, mut jonas) = team(&mut backend, false).await;
    // Refused locally, naming the rule (a forged one: tests/tests/hostile_server.rs).
    for attempt in [
        jonas.set_auto_admit(&secret(), true).await,
        jonas.add_owner(&secret(), &uid("P1002")).await,
    ] {
        match attempt {
            Err(ClientError::NotOwner(msg)) => {
                assert!(msg.contains("only an owner"), "{msg}");
                assert!(msg.contains("P1001"), "{msg}");
            }
            other => panic!("expected NotOwner, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_approval_made_while_the_server_is_down_is_carried_out_on_the_next_sync() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = team(&mut backend, false).await;
    let mut lena = backend
        .user(&mut admin, "P1003", "Lena Koch", &["bauamt"])
        .await
        .unwrap();

    backend.stop().await;
    let approval = within("approve offline", anna.approve(&secret(), &uid("P1003")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(approval, Approval::Queued);
    backend.run().await.unwrap();

    // Nothing to retype: Anna's next sync admits Lena.
    within("owner syncs", anna.sync()).await.unwrap().unwrap();
    anna.send_text(&secret(), "hallo Lena").await.unwrap();
    let rows = within("lena reads", lena.read(&secret()))
        .await
        .unwrap()
        .unwrap();
    assert!(texts(&rows).contains(&"hallo Lena".to_owned()), "{rows:?}");
    // Carried out once: a further sync adds nothing.
    let (epoch, _) = anna.group_code(&secret()).unwrap().unwrap();
    within("owner syncs again", anna.sync())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(anna.group_code(&secret()).unwrap().unwrap().0, epoch);
    within("jonas syncs", jonas.sync()).await.unwrap().unwrap();
    assert_same_group(&[&anna, &jonas, &lena]).await;
}

#[tokio::test]
async fn a_colleagues_message_that_breaks_a_content_rule_is_shown_as_not_understood() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas) = team(&mut backend, false).await;
    // What a modified client could send: encrypted for the group like any message, but
    // its content breaks a rule. Anna's client checks content when it is written, so it
    // is put into her outbox directly here; sending does not judge it again.
    let broken = PostBody::Public(ContentIn {
        version: 1,
        body: ContentBody::Reaction {
            target: 1,
            emoji: "sehr gut gemacht".into(),
        },
        mentions: Vec::new(),
    });
    let bytes = postcard::to_allocvec(&broken).unwrap();
    anna.store()
        .enqueue(ClientMsgId([5; 16]), &secret().to_string(), &bytes, 0)
        .unwrap();
    let report = within("flush", anna.flush_outbox()).await.unwrap().unwrap();
    assert_eq!(report.sent, 1, "{report:?}");
    anna.send_text(&secret(), "Danach geht es weiter")
        .await
        .unwrap();

    let rows = within("jonas reads", jonas.read(&secret()))
        .await
        .unwrap()
        .unwrap();
    let not_understood: Vec<&TimelineRow> = rows
        .iter()
        .filter(|r| r.kind == RowKind::Undecryptable)
        .collect();
    assert_eq!(not_understood.len(), 1, "{rows:?}");
    assert!(
        not_understood[0].text.contains("does not understand"),
        "{rows:?}"
    );
    assert_eq!(not_understood[0].sender, "P1001");
    // The message after it arrives as usual.
    let last = rows.last().unwrap();
    assert_eq!(
        (last.kind, last.text.as_str()),
        (RowKind::Text, "Danach geht es weiter")
    );
}

/// `rathaus read GROUP` run as a process on a member's profile, with its default logging.
async fn cli_read(profile: &std::path::Path, group: &str) -> std::process::Output {
    let mut command = std::process::Command::new(rathaus_tests::workspace_bin("rathaus").unwrap());
    command
        .arg("--profile")
        .arg(profile)
        .args(["read", group])
        .env_remove("RUST_LOG");
    // The server runs on this test's runtime: wait for the process off it.
    within(
        "rathaus read",
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_approval_owner_and_newcomer_read_through_the_cli_with_nothing_on_stderr() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = team(&mut backend, false).await;
    anna.send_text(&secret(), "vor Lena").await.unwrap();
    let lena = backend
        .user(&mut admin, "P1003", "Lena Koch", &["bauamt"])
        .await
        .unwrap();
    let lena_dir = lena.dir().to_path_buf();
    drop(lena);
    within("approve", anna.approve(&secret(), &uid("P1003")))
        .await
        .unwrap()
        .unwrap();
    jonas.sync().await.unwrap();
    jonas
        .send_text(&secret(), "willkommen, Lena")
        .await
        .unwrap();

    // Lena joins from the Welcome and reads through the CLI. She joined after the commit
    // that added her, and her device meets it in the log: that is Rathaus' business, not
    // a line on her terminal. stderr carries Rathaus' own errors and nothing else.
    let out = cli_read(&lena_dir, "bauamt/secret").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert!(stdout.contains("willkommen, Lena"), "{stdout}");
    assert!(!stdout.contains("vor Lena"), "{stdout}");
    assert_eq!(stderr, "", "a successful read prints nothing on stderr");

    // Anna, who approved Lena, meets her own commit in the log as she reads on.
    let anna_dir = anna.dir().to_path_buf();
    anna.disconnect().await;
    drop(anna);
    let out = cli_read(&anna_dir, "bauamt/secret").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert!(stdout.contains("willkommen, Lena"), "{stdout}");
    assert_eq!(stderr, "", "a successful read prints nothing on stderr");
}
