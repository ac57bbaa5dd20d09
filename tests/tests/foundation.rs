//! End-to-end tests of the foundation: accounts, enrollment, authentication, public
//! groups, push delivery, robustness against bad peers, durability and offboarding.
//! Every test runs a real server on 127.0.0.1:0 and real clients with temporary profiles.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rathaus_client::net::Connection;
use rathaus_client::{CaTrust, Client, ClientError, EnrollOptions, ServerTrust};
use rathaus_protocol::{
    frame, ClientMsgId, Content, ContentBody, ContentIn, ErrorCode, Event, GroupHandle, PostBody,
    Request, Response, Role, UserId,
};
use rathaus_tests::{within, TestBackend, TestCa, PASSWORD};

fn bauamt() -> GroupHandle {
    GroupHandle::parse("bauamt").unwrap()
}

#[tokio::test]
async fn bootstrap_provision_enroll_post_read() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    let me = admin.whoami().await.unwrap();
    assert!(me.roles.contains(&rathaus_protocol::Role::Admin));

    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();
    let mut jonas = backend
        .user(&mut admin, "P1002", "Jonas Weber", &["bauamt"])
        .await
        .unwrap();

    let groups = anna.groups().await.unwrap();
    let handles: Vec<String> = groups.iter().map(|g| g.handle.to_string()).collect();
    assert!(handles.contains(&"bauamt".to_owned()), "{handles:?}");
    assert!(handles.contains(&"announcements".to_owned()), "{handles:?}");

    let r1 = anna
        .send_text(&bauamt(), "Baustelle ab Montag gesperrt")
        .await
        .unwrap();
    let r2 = jonas
        .send_text(&bauamt(), "Danke, Bauhof weiss Bescheid")
        .await
        .unwrap();
    assert_eq!((r1.seq, r2.seq), (1, 2));

    for client in [&mut anna, &mut jonas] {
        let rows = client.read(&bauamt()).await.unwrap();
        let texts: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.sender.as_str(), r.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            vec![
                ("P1001", "Baustelle ab Montag gesperrt"),
                ("P1002", "Danke, Bauhof weiss Bescheid")
            ]
        );
        assert_eq!(rows[0].sender_name, "Anna Berg");
    }

    // Unread counts follow the read mark.
    jonas.send_text(&bauamt(), "Noch eine Frage").await.unwrap();
    let groups = anna.groups().await.unwrap();
    let b = groups.iter().find(|g| g.handle == bauamt()).unwrap();
    assert_eq!(b.unread, 1);

    // Members are listed with owners and devices.
    let members = anna.members(&bauamt()).await.unwrap();
    let ids: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    assert!(ids.contains(&"P1001") && ids.contains(&"P1002"), "{ids:?}");
    assert!(members.iter().all(|m| m.devices.len() == 1));

    // A profile reopened from disk still knows its timeline and identity.
    let dir = anna.dir().to_path_buf();
    anna.disconnect().await;
    drop(anna);
    let mut anna = Client::open(&dir).unwrap();
    assert_eq!(anna.identity().user.as_str(), "P1001");
    assert_eq!(anna.store().timeline("bauamt").unwrap().len(), 2);
    assert_eq!(anna.read(&bauamt()).await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_listening_client_gets_new_posts_pushed() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();
    let mut jonas = backend
        .user(&mut admin, "P1002", "Jonas Weber", &["bauamt"])
        .await
        .unwrap();

    let mut sub = jonas.subscribe().await.unwrap();
    anna.send_text(&bauamt(), "Kaffee ist fertig")
        .await
        .unwrap();
    let rows = within("the pushed post", async {
        loop {
            let event = sub.next().await.unwrap();
            let rows = jonas.apply_event(&event).await.unwrap();
            if !rows.is_empty() {
                return rows;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(rows[0].text, "Kaffee ist fertig");
    assert_eq!(rows[0].sender, "P1001");
    // The pushed entry is in the local timeline without any fetch.
    assert_eq!(jonas.store().timeline("bauamt").unwrap().len(), 1);
}

#[tokio::test]
async fn an_enrollment_code_works_once_and_not_after_expiry() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    let code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &[], &[])
        .await
        .unwrap();
    backend.enroll("P1001", &code).await.unwrap();
    let again = backend.enroll("P1001", &code).await.unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::CodeInvalid), "{again}");

    let late = backend
        .provision(&mut admin, "P1002", "Jonas Weber", &[], &[])
        .await
        .unwrap();
    backend.clock.advance(Duration::from_secs(72 * 3600 + 60));
    let expired = backend.enroll("P1002", &late).await.unwrap_err();
    assert_eq!(expired.code(), Some(ErrorCode::CodeInvalid), "{expired}");
}

#[tokio::test]
async fn wrong_password_and_wrong_device_key_are_refused_and_throttled() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &[])
        .await
        .unwrap();
    let server = backend.addr.to_string();
    let trust = ServerTrust::Pinned(backend.fingerprint.clone());

    // Wrong password for a second device: refused, then throttled.
    let mut codes = Vec::new();
    for _ in 0..8 {
        let dir = backend.profile_dir("P1001");
        let err = Client::add_device(
            &dir,
            &server,
            &trust,
            UserId::parse("P1001").unwrap(),
            "not the password",
            "phone",
        )
        .await
        .unwrap_err();
        codes.push(err.code());
    }
    assert_eq!(codes[0], Some(ErrorCode::Unauthenticated));
    assert_eq!(
        codes.last().copied().flatten(),
        Some(ErrorCode::RateLimited),
        "{codes:?}"
    );

    // Even the right password is refused while throttled…
    let dir = backend.profile_dir("P1001");
    let err = Client::add_device(
        &dir,
        &server,
        &trust,
        UserId::parse("P1001").unwrap(),
        PASSWORD,
        "phone",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RateLimited));
    // …but not forever: after the backoff the real user gets in.
    backend.clock.advance(Duration::from_secs(3600));
    let dir = backend.profile_dir("P1001");
    let mut phone = Client::add_device(
        &dir,
        &server,
        &trust,
        UserId::parse("P1001").unwrap(),
        PASSWORD,
        "phone",
    )
    .await
    .unwrap();
    assert_eq!(phone.whoami().await.unwrap().user.as_str(), "P1001");

    // A wrong device key: a connection claiming Anna's device but signing with another key.
    // Refused every time, but never throttled: a signature cannot be guessed, and backing
    // Anna off would let anyone lock her out of her own device.
    let forged_key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let mut seen = Vec::new();
    for _ in 0..8 {
        let conn = rathaus_client::net::Connection::connect(&server, &backend.fingerprint)
            .await
            .unwrap();
        let err = conn
            .authenticate(&anna.identity().user, anna.identity().device, &forged_key)
            .await
            .unwrap_err();
        seen.push(err.code());
        conn.close().await;
    }
    assert!(
        seen.iter().all(|c| *c == Some(ErrorCode::Unauthenticated)),
        "{seen:?}"
    );
    // Anna's real device logs in right away.
    anna.disconnect().await;
    assert_eq!(anna.whoami().await.unwrap().user.as_str(), "P1001");
}

#[tokio::test]
async fn a_client_pinned_to_another_fingerprint_refuses_to_connect() {
    let backend = TestBackend::start().await.unwrap();
    let other = rathaus_protocol::fingerprint::format(&[0x42; 32]);
    let err = rathaus_client::net::Connection::connect(&backend.addr.to_string(), &other)
        .await
        .unwrap_err();
    match err {
        ClientError::FingerprintMismatch { expected, actual } => {
            assert_eq!(expected, other);
            assert_eq!(actual, backend.fingerprint);
        }
        other => panic!("expected a fingerprint mismatch, got {other}"),
    }
}

#[tokio::test]
async fn garbage_and_oversize_frames_get_errors_while_others_keep_working() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();

    let attacker =
        rathaus_client::net::Connection::connect(&backend.addr.to_string(), &backend.fingerprint)
            .await
            .unwrap();
    let raw = attacker.raw();

    // 1. Garbage bytes behind a valid length: a typed `Invalid` error on that stream.
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    let garbage = [0xffu8; 64];
    let mut bytes = (garbage.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&garbage);
    send.write_all(&bytes).await.unwrap();
    send.finish().unwrap();
    let answer = within("garbage answer", read_response(&mut recv))
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            Some(Response::Error {
                code: ErrorCode::Invalid,
                ..
            })
        ),
        "{answer:?}"
    );

    // 2. A frame announcing 4 GiB: `TooLarge`, without the server waiting for the body.
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let answer = within("oversize answer", read_response(&mut recv))
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            Some(Response::Error {
                code: ErrorCode::TooLarge,
                ..
            })
        ),
        "{answer:?}"
    );

    // 3. An unauthenticated request for data: `Unauthenticated`.
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    let fetch = Request::Fetch {
        group: bauamt(),
        since: 0,
        limit: 10,
    };
    send.write_all(&frame::encode(&fetch).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let answer = within("unauthenticated answer", read_response(&mut recv))
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            Some(Response::Error {
                code: ErrorCode::Unauthenticated,
                ..
            })
        ),
        "{answer:?}"
    );

    // The attacker's own connection still answers a well-formed request…
    let pong = within("ping", attacker.request(&Request::Ping))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pong, Response::Pong);
    // …and a colleague on another connection is not affected at all.
    let receipt = anna.send_text(&bauamt(), "still here").await.unwrap();
    assert_eq!(receipt.seq, 1);
    assert_eq!(anna.read(&bauamt()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_retried_post_is_stored_once() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();
    let post = Request::Post {
        group: bauamt(),
        client_id: ClientMsgId([9; 16]),
        body: PostBody::Public(Content::text("einmal").into()),
    };
    let first = anna.request(&post).await.unwrap();
    let second = anna.request(&post).await.unwrap();
    match (first, second) {
        (
            Response::Posted {
                seq: a,
                duplicate: false,
                ..
            },
            Response::Posted {
                seq: b,
                duplicate: true,
                ..
            },
        ) => assert_eq!(a, b),
        other => panic!("unexpected answers {other:?}"),
    }
    assert_eq!(anna.read(&bauamt()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_post_that_breaks_a_content_rule_is_refused_with_the_rule() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();
    let first = anna
        .send_text(&bauamt(), "Baustelle Hauptstraße")
        .await
        .unwrap();
    // What a modified client could send; this client checks before sending.
    let broken = |n: u8, body: ContentBody| Request::Post {
        group: bauamt(),
        client_id: ClientMsgId([n; 16]),
        body: PostBody::Public(ContentIn {
            version: 1,
            body,
            mentions: Vec::new(),
        }),
    };
    let cases = [
        (
            broken(
                1,
                ContentBody::Reaction {
                    target: first.seq,
                    emoji: "sehr gut gemacht".into(),
                },
            ),
            "a reaction is one emoji",
        ),
        (
            broken(
                2,
                ContentBody::Text {
                    text: "   ".into(),
                    reply_to: None,
                    links: Vec::new(),
                },
            ),
            "empty text",
        ),
    ];
    for (request, rule) in cases {
        // Refused by the handler with the rule that was broken, not as a malformed frame.
        match anna.request(&request).await {
            Err(ClientError::Server { code, message }) => {
                assert_eq!(code, ErrorCode::Invalid, "{message}");
                assert!(message.contains(rule), "{message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // Nothing was stored, and the connection works on.
    let rows = anna.read(&bauamt()).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(anna.send_text(&bauamt(), "weiter").await.is_ok());
}

#[tokio::test]
async fn an_offboarded_user_is_disconnected_and_cannot_log_in_again() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();
    let mut jonas = backend
        .user(&mut admin, "P1002", "Jonas Weber", &["bauamt"])
        .await
        .unwrap();
    jonas.send_text(&bauamt(), "bleibt stehen").await.unwrap();

    let mut sub = jonas.subscribe().await.unwrap();
    admin
        .admin_remove_user(UserId::parse("P1002").unwrap())
        .await
        .unwrap();

    // The live session ends at once, with a reason the client can show.
    let ended = within("the session to end", async {
        loop {
            match sub.next().await {
                Ok(Event::Posted { .. } | Event::GroupsChanged) => continue,
                Ok(other) => return Err(format!("unexpected event {other:?}")),
                Err(e) => return Ok(e),
            }
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert!(matches!(ended, ClientError::AccountRemoved), "{ended}");

    // Logging in again is refused.
    jonas.disconnect().await;
    let err = jonas.whoami().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}");

    // Their public post remains, and they are no longer a member.
    let rows = anna.read(&bauamt()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].text, "bleibt stehen");
    let members = anna.members(&bauamt()).await.unwrap();
    assert!(members.iter().all(|m| m.user.as_str() != "P1002"));
}

#[tokio::test]
async fn a_member_cannot_use_admin_requests() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &[])
        .await
        .unwrap();
    let err = anna
        .admin_add_user(UserId::parse("P9999").unwrap(), "Mallory", vec![], vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    let err = anna
        .admin_remove_user(UserId::parse("admin").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    // Only editors and admins post announcements.
    let err = anna
        .send_text(&GroupHandle::Announcements, "Freibier für alle")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
}

async fn read_response(recv: &mut quinn::RecvStream) -> Option<Response> {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.ok()?;
    let len = frame::body_len(header, rathaus_protocol::limits::MAX_CONTROL_FRAME).ok()?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.ok()?;
    frame::decode_body(&body).ok()
}

/// CA validation (DESIGN §3): a server presenting a certificate from the organisation's
/// CA is trusted through that CA, also after the profile is reopened; another CA, a wrong
/// server name and an expired certificate are refused with the name and the reason.
#[tokio::test]
async fn server_certificate_is_validated_by_the_configured_ca() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Stadt Teststadt IT").unwrap();
    let (cert, key) = ca
        .issue(&["localhost", "127.0.0.1"], certs.path(), "server")
        .unwrap();
    let mut backend = TestBackend::start_with_certificate(&cert, &key)
        .await
        .unwrap();
    let addr = backend.addr.to_string();
    let trust = |ca: &TestCa, name: &str| {
        ServerTrust::Ca(CaTrust::from_pem(ca.pem.as_bytes(), name).unwrap())
    };

    // Enrolled through the CA, checked against the IP address in the certificate.
    let (user, code) = backend.take_admin_code().unwrap();
    let dir = backend.profile_dir(&user);
    let admin = Client::enroll(
        &dir,
        EnrollOptions {
            server: addr.clone(),
            trust: trust(&ca, "127.0.0.1"),
            user: UserId::parse(&user).unwrap(),
            code,
            password: PASSWORD.to_owned(),
            device_name: "admin's test device".into(),
        },
    )
    .await
    .unwrap();
    drop(admin);
    let mut admin = Client::open(&dir).unwrap();
    assert_eq!(admin.identity().trust, trust(&ca, "127.0.0.1"));
    assert_eq!(admin.identity().trust.fingerprint(), None);
    assert_eq!(admin.whoami().await.unwrap().user.as_str(), user);
    admin.disconnect().await;

    // The DNS name in the certificate works too, and pinning the same certificate still does.
    Connection::connect_with_trust(&addr, &trust(&ca, "localhost"))
        .await
        .unwrap()
        .close()
        .await;
    Connection::connect(&addr, &backend.fingerprint)
        .await
        .unwrap()
        .close()
        .await;

    let refusal = |err: ClientError| match err {
        ClientError::UntrustedCertificate {
            server_name,
            reason,
        } => (server_name, reason),
        other => panic!("expected UntrustedCertificate, got {other:?}"),
    };
    let other_ca = TestCa::new("Somebody else").unwrap();
    let err = Connection::connect_with_trust(&addr, &trust(&other_ca, "localhost"))
        .await
        .unwrap_err();
    let (name, reason) = refusal(err);
    assert_eq!(name, "localhost");
    assert!(reason.contains("unknown issuer"), "{reason}");

    let err = Connection::connect_with_trust(&addr, &trust(&ca, "rathaus.example"))
        .await
        .unwrap_err();
    let (name, reason) = refusal(err);
    assert_eq!(name, "rathaus.example");
    assert!(reason.contains("another name"), "{reason}");
    assert!(err_text_names_the_server(&name, &reason));

    // The server now presents an expired certificate from the same CA: the profile
    // refuses it and says why.
    backend.stop().await;
    let (cert, key) = ca
        .issue_expired(&["localhost", "127.0.0.1"], certs.path(), "expired")
        .unwrap();
    backend.tls = Some((cert, key));
    backend.run().await.unwrap();
    let mut admin = Client::open(&dir).unwrap();
    let err = admin.connect().await.unwrap_err();
    let message = err.to_string();
    let (name, reason) = refusal(err);
    assert_eq!(name, "127.0.0.1");
    assert!(reason.contains("expired"), "{reason}");
    assert!(
        message.contains("127.0.0.1") && message.contains("expired"),
        "{message}"
    );
}

fn err_text_names_the_server(name: &str, reason: &str) -> bool {
    let message = ClientError::UntrustedCertificate {
        server_name: name.to_owned(),
        reason: reason.to_owned(),
    }
    .to_string();
    message.contains(name) && message.contains(reason) && !message.contains('\n')
}

/// A server certificate issued by an intermediate CA, served with the intermediate in its
/// PEM bundle, is validated by a client that trusts only the root.
#[tokio::test]
async fn a_certificate_from_an_intermediate_ca_is_validated_up_to_the_root() {
    let certs = tempfile::tempdir().unwrap();
    let root = TestCa::new("Stadt Teststadt Root").unwrap();
    let issuing = root.intermediate("Stadt Teststadt Server CA").unwrap();
    let (cert, key) = issuing
        .issue(&["localhost", "127.0.0.1"], certs.path(), "server")
        .unwrap();
    let backend = TestBackend::start_with_certificate(&cert, &key)
        .await
        .unwrap();
    let addr = backend.addr.to_string();
    let trust_root = ServerTrust::Ca(CaTrust::from_pem(root.pem.as_bytes(), "localhost").unwrap());
    within(
        "connecting through the root",
        Connection::connect_with_trust(&addr, &trust_root),
    )
    .await
    .unwrap()
    .unwrap()
    .close()
    .await;
    // The fingerprint clients pin is still the leaf's.
    Connection::connect(&addr, &backend.fingerprint)
        .await
        .unwrap()
        .close()
        .await;
}

/// A long catch-up tells the app how far it has come, page by page, up to the whole
/// backlog (the CLI draws a progress bar from it); a short one says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_catch_up_reports_its_progress() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();
    let mut jonas = backend
        .user(&mut admin, "P1002", "Jonas Weber", &["bauamt"])
        .await
        .unwrap();
    let steps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = steps.clone();
    jonas.on_catch_up(move |step| seen.lock().unwrap().push(step.clone()));

    anna.send_text(&bauamt(), "kurz").await.unwrap();
    within("short sync", jonas.sync()).await.unwrap().unwrap();
    assert!(steps.lock().unwrap().is_empty(), "one page: no progress");

    let backlog = u64::from(rathaus_protocol::limits::MAX_FETCH) + 50;
    for i in 0..backlog {
        anna.send_text(&bauamt(), &format!("Meldung {i}"))
            .await
            .unwrap();
    }
    within("long sync", jonas.sync()).await.unwrap().unwrap();
    let steps = steps.lock().unwrap().clone();
    assert_eq!(steps.len(), 2, "one step per page: {steps:?}");
    assert!(steps
        .iter()
        .all(|s| s.group == "bauamt" && s.total == backlog));
    assert!(steps.windows(2).all(|w| w[0].done < w[1].done), "{steps:?}");
    assert_eq!(steps.last().unwrap().done, backlog);
    backend.stop().await;
}

#[tokio::test]
async fn a_demoted_administrator_loses_the_right_on_the_open_connection() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let mut jonas = backend
        .staff(
            &mut admin,
            "P1002",
            "Jonas Weber",
            &["bauamt"],
            &[Role::Admin],
        )
        .await
        .unwrap();
    // Used as an administrator on this connection (the server keeps his record for it).
    assert!(!jonas.admin_users().await.unwrap().is_empty());
    let before = jonas.whoami().await.unwrap();
    assert!(before.roles.contains(&Role::Admin), "{before:?}");

    admin
        .admin_set_roles(UserId::parse("P1002").unwrap(), vec![], vec![Role::Admin])
        .await
        .unwrap();

    // The very next request on the same connection is decided by the new roles.
    let err = jonas.admin_users().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    let err = jonas
        .admin_add_user(UserId::parse("P9999").unwrap(), "Mallory", vec![], vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    let after = jonas.whoami().await.unwrap();
    assert!(!after.roles.contains(&Role::Admin), "{after:?}");
    // Nobody was added by the refused request.
    let users = admin.admin_users().await.unwrap();
    assert!(users.iter().all(|u| u.user.as_str() != "P9999"));

    // Offboarded while connected: his next post is refused and nothing is stored.
    jonas.send_text(&bauamt(), "vorher").await.unwrap();
    admin
        .admin_remove_user(UserId::parse("P1002").unwrap())
        .await
        .unwrap();
    assert!(jonas.send_text(&bauamt(), "nachher").await.is_err());
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();
    let rows = anna.read(&bauamt()).await.unwrap();
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, ["vorher"]);
}
