//! The real server on 127.0.0.1:0 and a raw quinn client pinning its certificate.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use rathaus_protocol::frame::{self, FrameDecoder};
use rathaus_protocol::limits::MAX_CONTROL_FRAME;
use rathaus_protocol::{
    ClientMsgId, Content, DepartmentSlug, DeviceId, DeviceKey, ErrorCode, Event, GroupHandle,
    PostBody, Request, Response, UserId, PROTOCOL_VERSION,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::{init, inspect, start, InitOptions, RunOptions, ServerError};

/// Accepts exactly one certificate (what clients do with the fingerprint from `init`).
#[derive(Debug)]
struct Pinned {
    der: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate does not match the pin".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct Harness {
    _tmp: tempfile::TempDir,
    data: std::path::PathBuf,
    code: String,
    server: crate::RunningServer,
    client: quinn::Endpoint,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(crate::ConnectionLimits::default()).await
    }

    async fn start_with(limits: crate::ConnectionLimits) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let report = init(
            &InitOptions {
                data_dir: data.clone(),
                listen: None,
                org: Some("Stadt Musterhausen".into()),
                admin_user: None,
                store: None,
            },
            &crate::clock::SystemClock,
        )
        .unwrap();
        let mut opts = RunOptions::new(&data);
        opts.listen = Some("127.0.0.1:0".parse().unwrap());
        opts.limits = limits;
        let server = start(opts).await.unwrap();
        assert_eq!(server.fingerprint(), report.fingerprint);

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pinned = Pinned {
            der: std::fs::read(data.join("cert.der")).unwrap(),
            provider: provider.clone(),
        };
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pinned))
            .with_no_client_auth();
        tls.alpn_protocols = vec![rathaus_protocol::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        Self {
            _tmp: tmp,
            data,
            code: report.enrollment_code,
            server,
            client,
        }
    }

    async fn connect(&self) -> quinn::Connection {
        self.client
            .connect(self.server.local_addr(), "localhost")
            .unwrap()
            .await
            .unwrap()
    }
}

async fn read_one(recv: &mut quinn::RecvStream) -> Response {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.unwrap();
    let len = frame::body_len(header, MAX_CONTROL_FRAME).unwrap();
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.unwrap();
    frame::decode_body(&body).unwrap()
}

async fn exchange(conn: &quinn::Connection, request: &Request) -> Response {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame::encode(request).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let bytes = recv.read_to_end(2 * MAX_CONTROL_FRAME).await.unwrap();
    let mut decoder = FrameDecoder::new(MAX_CONTROL_FRAME);
    decoder.push(&bytes);
    let response = decoder.next_frame().unwrap().unwrap();
    assert!(decoder.next_frame::<Response>().unwrap().is_none());
    response
}

fn error_code(r: &Response) -> Option<ErrorCode> {
    match r {
        Response::Error { code, .. } => Some(*code),
        _ => None,
    }
}

async fn enroll(conn: &quinn::Connection, user: &str, code: &str, key: &SigningKey) -> DeviceId {
    let r = exchange(
        conn,
        &Request::Enroll {
            protocol: PROTOCOL_VERSION,
            user: UserId::parse(user).unwrap(),
            code: code.into(),
            password: "correct horse battery".into(),
            device_key: DeviceKey(key.verifying_key().to_bytes()),
            device_name: "test".into(),
        },
    )
    .await;
    match r {
        Response::Enrolled { device, org, .. } => {
            assert_eq!(org, "Stadt Musterhausen");
            device
        }
        other => panic!("enroll: {other:?}"),
    }
}

async fn authenticate(
    conn: &quinn::Connection,
    user: &str,
    device: DeviceId,
    key: &SigningKey,
) -> Response {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = Request::Hello {
        protocol: PROTOCOL_VERSION,
        user: UserId::parse(user).unwrap(),
        device,
    };
    send.write_all(&frame::encode(&hello).unwrap())
        .await
        .unwrap();
    let Response::Challenge { nonce, .. } = read_one(&mut recv).await else {
        panic!("expected a challenge");
    };
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, rathaus_protocol::AUTH_EXPORTER_LABEL, b"")
        .unwrap();
    let signature = key.sign(&rathaus_protocol::auth_transcript(&exporter, &nonce));
    let prove = Request::Prove {
        signature: rathaus_protocol::Signature::new(signature.to_bytes()),
    };
    send.write_all(&frame::encode(&prove).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    read_one(&mut recv).await
}

#[tokio::test]
async fn ping_pong_over_a_pinned_connection() {
    let h = Harness::start().await;
    let conn = h.connect().await;
    assert_eq!(exchange(&conn, &Request::Ping).await, Response::Pong);
    h.server.shutdown().await;
}

#[tokio::test]
async fn a_garbage_stream_gets_an_error_and_the_connection_lives_on() {
    let h = Harness::start().await;
    let conn = h.connect().await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let r = read_one(&mut recv).await;
    assert_eq!(error_code(&r), Some(ErrorCode::TooLarge));

    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    send.finish().unwrap();
    assert_eq!(
        error_code(&read_one(&mut recv).await),
        Some(ErrorCode::Invalid)
    );

    let r = exchange(&conn, &Request::Whoami).await;
    assert_eq!(error_code(&r), Some(ErrorCode::Unauthenticated));
    assert_eq!(exchange(&conn, &Request::Ping).await, Response::Pong);
    h.server.shutdown().await;
}

/// An authenticated connection starts with few streams (an idle one holds little) and
/// gets the full limit as soon as it uses them: more streams open at once than the idle
/// limit allows are all served.
#[tokio::test]
async fn a_busy_connection_gets_more_streams_than_an_idle_one_holds() {
    use super::admission::{IDLE_STREAMS, STREAMS_PER_CONNECTION};
    let h = Harness::start().await;
    let key = SigningKey::from_bytes(&[1; 32]);
    let conn = h.connect().await;
    let device = enroll(&conn, "admin", &h.code, &key).await;
    let r = authenticate(&conn, "admin", device, &key).await;
    assert!(matches!(r, Response::Authenticated(_)), "{r:?}");

    // Streams that stay open: each has sent the first byte of a request and waits.
    let held = IDLE_STREAMS as usize * 2;
    assert!(held < STREAMS_PER_CONNECTION as usize);
    let mut open = Vec::new();
    for i in 0..held {
        let (mut send, recv) = tokio::time::timeout(Duration::from_secs(10), conn.open_bi())
            .await
            .unwrap_or_else(|_| panic!("stream {} of {held} was never allowed", i + 1))
            .unwrap();
        send.write_all(&[0]).await.unwrap();
        open.push((send, recv));
    }
    // And one more request is answered while they are open.
    let pong = tokio::time::timeout(Duration::from_secs(10), exchange(&conn, &Request::Ping))
        .await
        .expect("no stream for a request");
    assert_eq!(pong, Response::Pong);
    drop(open);
    h.server.shutdown().await;
}

/// Strangers who send the first bytes of requests and stall hold at most the strangers'
/// budget: a colleague who is logged in is still answered.
#[tokio::test]
async fn strangers_spending_their_budget_leave_colleagues_requests_alone() {
    let h = Harness::start_with(crate::ConnectionLimits {
        request_bytes: 64 * 1024,
        prelogin_request_bytes: 16 * 1024,
        ..crate::ConnectionLimits::default()
    })
    .await;
    let admin_key = SigningKey::from_bytes(&[1; 32]);
    let admin = h.connect().await;
    let device = enroll(&admin, "admin", &h.code, &admin_key).await;
    let r = authenticate(&admin, "admin", device, &admin_key).await;
    assert!(matches!(r, Response::Authenticated(_)), "{r:?}");

    // Three strangers, four streams each: 8,000-byte frames of which 7,999 bytes arrive
    // (96 KB in all, more than the whole budget of 64 KiB).
    let mut strangers = Vec::new();
    let mut held = Vec::new();
    for _ in 0..3 {
        let conn = h.connect().await;
        for _ in 0..4 {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&8000u32.to_be_bytes()).await.unwrap();
            send.write_all(&[0u8; 7999]).await.unwrap();
            held.push((send, recv));
        }
        strangers.push(conn);
    }
    // Bounded: until the server refused a stranger's read for want of budget.
    let mut spent = false;
    for _ in 0..200 {
        if h.server.defence_stats().over_budget > 0 {
            spent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(spent, "{:?}", h.server.defence_stats());
    let stats = h.server.defence_stats();
    assert!(stats.prelogin_request_bytes_now <= 16 * 1024, "{stats:?}");
    // 20 KB: more than the strangers left of the whole budget, had they shared it.
    let post = Request::Post {
        group: GroupHandle::parse("bauamt").unwrap(),
        client_id: ClientMsgId([3; 16]),
        body: PostBody::Public(Content::text("x".repeat(20_000)).into()),
    };
    let r = exchange(&admin, &post).await;
    assert_eq!(error_code(&r), Some(ErrorCode::NotFound), "{r:?}");
    let r = exchange(&admin, &Request::Whoami).await;
    assert!(
        matches!(r, Response::Me(ref info) if info.user.as_str() == "admin"),
        "{r:?}"
    );
    drop(held);
}

/// One colleague whose connections send the first bytes of large requests and stall
/// holds at most their share: another colleague is still answered.
#[tokio::test]
async fn a_colleague_spending_their_share_leaves_the_others_requests_alone() {
    let h = Harness::start_with(crate::ConnectionLimits {
        request_bytes: 64 * 1024,
        user_request_bytes: 24 * 1024,
        ..crate::ConnectionLimits::default()
    })
    .await;
    let admin_key = SigningKey::from_bytes(&[1; 32]);
    let admin = h.connect().await;
    let device = enroll(&admin, "admin", &h.code, &admin_key).await;
    let r = authenticate(&admin, "admin", device, &admin_key).await;
    assert!(matches!(r, Response::Authenticated(_)), "{r:?}");
    let Response::UserAdded {
        enrollment_code, ..
    } = exchange(
        &admin,
        &Request::AddUser {
            user: UserId::parse("P1001").unwrap(),
            name: "Anna Berg".into(),
            departments: vec![],
            roles: vec![],
        },
    )
    .await
    else {
        panic!("expected UserAdded");
    };
    let anna_key = SigningKey::from_bytes(&[2; 32]);
    let anna = h.connect().await;
    let anna_device = enroll(&anna, "P1001", &enrollment_code, &anna_key).await;
    let r = authenticate(&anna, "P1001", anna_device, &anna_key).await;
    assert!(matches!(r, Response::Authenticated(_)), "{r:?}");
    // A second connection of Anna's device shares her share.
    let anna2 = h.connect().await;
    let r = authenticate(&anna2, "P1001", anna_device, &anna_key).await;
    assert!(matches!(r, Response::Authenticated(_)), "{r:?}");

    // Two connections, three streams each: 16,000-byte frames of which 15,999 bytes
    // arrive (96 KB in all, more than the whole budget of 64 KiB).
    let before = h.server.defence_stats().request_bytes_now;
    let mut held = Vec::new();
    for conn in [&anna, &anna2] {
        for _ in 0..3 {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&16_000u32.to_be_bytes()).await.unwrap();
            send.write_all(&[0u8; 15_999]).await.unwrap();
            held.push((send, recv));
        }
    }
    // Bounded: until Anna's reads are refused (her streams are answered `Unavailable`).
    let mut refused = 0;
    for (_, recv) in held.iter_mut() {
        let answer = tokio::time::timeout(Duration::from_millis(300), read_one(recv)).await;
        if let Ok(r) = answer {
            assert_eq!(error_code(&r), Some(ErrorCode::Unavailable), "{r:?}");
            refused += 1;
        }
    }
    assert!(refused >= 1, "none of Anna's 96 KB was refused");
    let stats = h.server.defence_stats();
    assert!(stats.request_bytes_now <= before + 24 * 1024, "{stats:?}");
    // 20 KB from the administrator: more than Anna left of the budget, had she no share.
    let post = Request::Post {
        group: GroupHandle::parse("bauamt").unwrap(),
        client_id: ClientMsgId([3; 16]),
        body: PostBody::Public(Content::text("x".repeat(20_000)).into()),
    };
    let r = exchange(&admin, &post).await;
    assert_eq!(error_code(&r), Some(ErrorCode::NotFound), "{r:?}");
    drop(held);
}

#[tokio::test]
async fn enroll_authenticate_post_subscribe_offboard_and_shut_down() {
    let h = Harness::start().await;
    let admin_key = SigningKey::from_bytes(&[1; 32]);
    let admin_conn = h.connect().await;
    let device = enroll(&admin_conn, "admin", &h.code, &admin_key).await;
    let r = authenticate(&admin_conn, "admin", device, &admin_key).await;
    assert!(
        matches!(r, Response::Authenticated(ref info) if info.user.as_str() == "admin"),
        "{r:?}"
    );

    let Response::UserAdded {
        enrollment_code, ..
    } = exchange(
        &admin_conn,
        &Request::AddUser {
            user: UserId::parse("P1001").unwrap(),
            name: "Anna Berg".into(),
            departments: vec![],
            roles: vec![],
        },
    )
    .await
    else {
        panic!("expected UserAdded");
    };
    let r = exchange(
        &admin_conn,
        &Request::AddDepartment {
            slug: DepartmentSlug::parse("bauamt").unwrap(),
            name: "Bauamt".into(),
            owners: vec![UserId::parse("P1001").unwrap()],
        },
    )
    .await;
    assert!(matches!(r, Response::Department(_)), "{r:?}");

    let anna_key = SigningKey::from_bytes(&[2; 32]);
    let anna_conn = h.connect().await;
    let anna_device = enroll(&anna_conn, "P1001", &enrollment_code, &anna_key).await;
    // A wrong key does not authenticate.
    let r = authenticate(&anna_conn, "P1001", anna_device, &admin_key).await;
    assert_eq!(error_code(&r), Some(ErrorCode::Unauthenticated));
    let r = authenticate(&anna_conn, "P1001", anna_device, &anna_key).await;
    assert!(matches!(r, Response::Authenticated(_)), "{r:?}");

    let (_sub_send, mut sub) = {
        let (mut send, recv) = admin_conn.open_bi().await.unwrap();
        send.write_all(&frame::encode(&Request::Subscribe).unwrap())
            .await
            .unwrap();
        (send, recv)
    };
    assert_eq!(read_one(&mut sub).await, Response::Subscribed);

    let group = GroupHandle::parse("bauamt").unwrap();
    let r = exchange(
        &anna_conn,
        &Request::Post {
            group: group.clone(),
            client_id: ClientMsgId([9; 16]),
            body: PostBody::Public(Content::text("Guten Morgen").into()),
        },
    )
    .await;
    assert!(
        matches!(
            r,
            Response::Posted {
                seq: 1,
                duplicate: false,
                ..
            }
        ),
        "{r:?}"
    );
    match tokio::time::timeout(Duration::from_secs(5), read_one(&mut sub))
        .await
        .unwrap()
    {
        Response::Event(Event::Posted { group: g, entry }) => {
            assert_eq!(g, group);
            assert_eq!(entry.seq, 1);
            assert_eq!(entry.sender_name, "Anna Berg");
        }
        other => panic!("expected the post, got {other:?}"),
    }

    // Offboarding ends Anna's connection at once.
    let r = exchange(
        &admin_conn,
        &Request::RemoveUser {
            user: UserId::parse("P1001").unwrap(),
        },
    )
    .await;
    assert_eq!(r, Response::Done);
    let closed = tokio::time::timeout(Duration::from_secs(5), anna_conn.closed())
        .await
        .unwrap();
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(0x10));
            assert_eq!(&close.reason[..], b"account removed");
        }
        other => panic!("unexpected close {other:?}"),
    }
    let again = h.connect().await;
    let r = authenticate(&again, "P1001", anna_device, &anna_key).await;
    assert_eq!(error_code(&r), Some(ErrorCode::Unauthenticated));

    assert!(matches!(
        inspect(&h.data, None),
        Err(ServerError::Locked(_))
    ));

    let server = h.server;
    let shutdown = tokio::spawn(server.shutdown());
    let mut saw_shutting_down = false;
    while let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), async {
        let mut header = [0u8; 4];
        sub.read_exact(&mut header).await?;
        let len = frame::body_len(header, MAX_CONTROL_FRAME).unwrap_or(0);
        let mut body = vec![0u8; len];
        sub.read_exact(&mut body).await?;
        Ok::<_, quinn::ReadExactError>(frame::decode_body::<Response>(&body).unwrap())
    })
    .await
    {
        if r == Response::Event(Event::ShuttingDown) {
            saw_shutting_down = true;
            break;
        }
    }
    assert!(saw_shutting_down);
    shutdown.await.unwrap();

    // The database is released and holds the post, exactly as stored.
    let view = inspect(&h.data, Some(&group)).unwrap();
    let entries = view["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["kind"], "text");
    let expected = postcard::to_allocvec(&Content::text("Guten Morgen")).unwrap();
    assert_eq!(entries[0]["size"], expected.len());
    use base64::Engine;
    assert_eq!(
        entries[0]["bytes"],
        base64::engine::general_purpose::STANDARD.encode(expected)
    );
    let overview = inspect(&h.data, None).unwrap();
    assert_eq!(overview["users"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_stopped_server_restarts_on_the_same_port() {
    let h = Harness::start().await;
    let addr = h.server.local_addr();
    h.server.shutdown().await;
    let mut opts = RunOptions::new(&h.data);
    opts.listen = Some(addr);
    let server = start(opts).await.unwrap();
    assert_eq!(server.local_addr(), addr);
    let conn = h.client.connect(addr, "localhost").unwrap().await.unwrap();
    assert_eq!(exchange(&conn, &Request::Ping).await, Response::Pong);
    server.shutdown().await;
}

/// Size of the future `f` returns, without calling it.
fn future_size<A, B, C, F: std::future::Future>(_: impl Fn(A, B, C) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// A connection's task keeps its future for the connection's whole life, mostly idle: the
/// handshake and the authentication deadline are boxed so that what stays is small (it
/// was ~1.3 KiB of every idle connection with them inline).
#[test]
fn the_connection_task_future_stays_small() {
    let size = future_size(super::connection::serve);
    assert!(size <= 512, "connection task future is {size} bytes");
}

/// A subscription keeps its stream's task for as long as the phone stays connected: the
/// answers to other requests are boxed so that this task is sized for the subscription
/// (it was 6.6 KB in a debug build with the service's dispatch inline, and 1,000 bytes
/// while the request, its reader and the receiving half stayed beside the event loop).
#[test]
fn a_subscriptions_stream_task_stays_small() {
    let size = future_size(super::stream::serve);
    assert!(size <= 640, "stream task future is {size} bytes");
}
