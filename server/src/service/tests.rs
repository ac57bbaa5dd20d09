//! The rules, over memory and a manual clock.

use std::time::Duration;

use rathaus_protocol::{
    ClientMsgId, Content, DepartmentSlug, ErrorCode, GroupHandle, PostBody, Request, Response,
    Role, PROTOCOL_VERSION,
};

use super::refused::{DirectoryRefused, SessionRefused};
use super::testing::{addr, enroll, new_device, uid, Fixture, PASSWORD};
use super::throttle::Refused as Throttled;
use super::{Reason, Session};

fn bauamt() -> GroupHandle {
    GroupHandle::parse("bauamt").unwrap()
}

fn post(group: GroupHandle, id: u8, text: &str) -> Request {
    Request::Post {
        group,
        client_id: ClientMsgId([id; 16]),
        body: PostBody::Public(Content::text(text).into()),
    }
}

async fn add_bauamt(f: &Fixture, owners: &[&str]) -> Result<Response, super::Refusal> {
    f.service
        .handle(
            &f.admin,
            Request::AddDepartment {
                slug: DepartmentSlug::parse("bauamt").unwrap(),
                name: "Bauamt".into(),
                owners: owners.iter().map(|o| uid(o)).collect(),
            },
        )
        .await
}

#[tokio::test]
async fn an_enrollment_code_works_once() {
    let f = Fixture::new().await;
    let code = f.add_user("P1001", &[]).await;
    let first = enroll(&f.service, "P1001", &code.to_lowercase().replace('-', " ")).await;
    assert!(first.is_ok());
    let again = enroll(&f.service, "P1001", &code).await.unwrap_err();
    assert_eq!(again.code(), ErrorCode::CodeInvalid);
}

#[tokio::test]
async fn an_enrollment_code_expires_after_72_hours() {
    let f = Fixture::new().await;
    let code = f.add_user("P1001", &[]).await;
    f.clock.advance(Duration::from_secs(72 * 3600));
    let late = enroll(&f.service, "P1001", &code).await.unwrap_err();
    assert_eq!(late.code(), ErrorCode::CodeInvalid);

    let code = f.add_user("P1002", &[]).await;
    f.clock.advance(Duration::from_secs(72 * 3600 - 1));
    assert!(enroll(&f.service, "P1002", &code).await.is_ok());
}

#[tokio::test]
async fn enrollment_checks_version_and_password_length() {
    let f = Fixture::new().await;
    let code = f.add_user("P1001", &[]).await;
    let r = f
        .service
        .enroll(
            addr(),
            PROTOCOL_VERSION + 1,
            &code,
            new_device("P1001", PASSWORD),
        )
        .await
        .unwrap_err();
    assert_eq!(r.code(), ErrorCode::VersionMismatch);
    let r = f
        .service
        .enroll(addr(), PROTOCOL_VERSION, &code, new_device("P1001", "kurz"))
        .await
        .unwrap_err();
    assert_eq!(r.code(), ErrorCode::Invalid);
    // A too-short password does not burn the code.
    assert!(enroll(&f.service, "P1001", &code).await.is_ok());
}

#[tokio::test]
async fn wrong_codes_back_off_and_the_real_user_gets_back_in() {
    let f = Fixture::new().await;
    let code = f.add_user("P1001", &[]).await;
    for _ in 0..5 {
        let r = enroll(&f.service, "P1001", "AAAA-AAAA-AAAA-AAAA")
            .await
            .unwrap_err();
        assert_eq!(r.code(), ErrorCode::CodeInvalid);
    }
    // Backed off: even the right code is not checked now.
    let r = enroll(&f.service, "P1001", &code).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::RateLimited);
    assert!(
        matches!(
            r.reason,
            Reason::Session(SessionRefused::Throttled(Throttled::Backoff(b))) if b.retry_in_ms == 1000
        ),
        "{r:?}"
    );
    assert!(r.message().contains("try again in 1 s"), "{}", r.message());
    f.clock.advance(Duration::from_secs(1));
    assert!(enroll(&f.service, "P1001", &code).await.is_ok());
}

#[tokio::test]
async fn add_device_needs_the_password_and_is_throttled() {
    let f = Fixture::new().await;
    f.user("P1001", &[]).await;
    let wrong = new_device("P1001", "not the password");
    for _ in 0..5 {
        let r = f
            .service
            .add_device(addr(), PROTOCOL_VERSION, wrong.clone())
            .await
            .unwrap_err();
        assert_eq!(r.code(), ErrorCode::Unauthenticated);
    }
    let right = new_device("P1001", PASSWORD);
    let r = f
        .service
        .add_device(addr(), PROTOCOL_VERSION, right.clone())
        .await
        .unwrap_err();
    assert_eq!(r.code(), ErrorCode::RateLimited);
    f.clock.advance(Duration::from_secs(1));
    let r = f
        .service
        .add_device(addr(), PROTOCOL_VERSION, right)
        .await
        .unwrap();
    assert!(matches!(r, Response::Enrolled { .. }));
}

#[tokio::test]
async fn a_retried_post_is_stored_once() {
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    add_bauamt(&f, &["P1001"]).await.unwrap();
    let first = f
        .service
        .handle(&anna, post(bauamt(), 1, "Hallo"))
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(5));
    let retry = f
        .service
        .handle(&anna, post(bauamt(), 1, "Hallo"))
        .await
        .unwrap();
    let other = f
        .service
        .handle(&anna, post(bauamt(), 2, "Hallo"))
        .await
        .unwrap();
    let (
        Response::Posted {
            seq: s1,
            sent_at_ms: t1,
            duplicate: d1,
        },
        Response::Posted {
            seq: s2,
            sent_at_ms: t2,
            duplicate: d2,
        },
    ) = (first, retry)
    else {
        panic!("expected Posted");
    };
    assert_eq!((s1, d1), (1, false));
    assert_eq!((s2, t2, d2), (1, t1, true));
    assert!(matches!(
        other,
        Response::Posted {
            seq: 2,
            duplicate: false,
            ..
        }
    ));
    let fetched = f
        .service
        .handle(
            &anna,
            Request::Fetch {
                group: bauamt(),
                since: 0,
                limit: 100,
            },
        )
        .await
        .unwrap();
    let Response::Entries { entries, head, .. } = fetched else {
        panic!("expected Entries");
    };
    assert_eq!(head, 2);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[tokio::test]
async fn fetch_is_incremental_and_capped() {
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    add_bauamt(&f, &[]).await.unwrap();
    for i in 0..5u8 {
        f.service
            .handle(&anna, post(bauamt(), i, "x"))
            .await
            .unwrap();
    }
    let r = f
        .service
        .handle(
            &anna,
            Request::Fetch {
                group: bauamt(),
                since: 2,
                limit: 2,
            },
        )
        .await
        .unwrap();
    let Response::Entries { entries, head, .. } = r else {
        panic!("expected Entries");
    };
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(head, 5);
}

/// A colleague asking for entries after the head (as one who saw posts the server has
/// forgotten would) moves every log on to the next generation, once: no peer can push
/// the numbering further by asking again.
#[tokio::test]
async fn a_reader_ahead_of_the_log_moves_the_generation_on_once() {
    use rathaus_protocol::log::first_seq;
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    add_bauamt(&f, &[]).await.unwrap();
    let posted = |r: Response| match r {
        Response::Posted { seq, .. } => seq,
        other => panic!("unexpected {other:?}"),
    };
    let first = posted(
        f.service
            .handle(&anna, post(bauamt(), 1, "a"))
            .await
            .unwrap(),
    );
    assert_eq!(first, 1);
    let fetch = |since| Request::Fetch {
        group: bauamt(),
        since,
        limit: 10,
    };
    // A reader behind or at the head changes nothing.
    f.service.handle(&anna, fetch(0)).await.unwrap();
    assert_eq!(
        posted(
            f.service
                .handle(&anna, post(bauamt(), 2, "b"))
                .await
                .unwrap()
        ),
        2
    );
    f.service.handle(&anna, fetch(1)).await.unwrap();
    assert_eq!(
        posted(
            f.service
                .handle(&anna, post(bauamt(), 3, "c"))
                .await
                .unwrap()
        ),
        3
    );
    // One ahead: the next entry starts the next generation, in this and every log.
    f.service.handle(&anna, fetch(3)).await.unwrap();
    f.service.handle(&anna, fetch(u64::MAX - 1)).await.unwrap();
    assert_eq!(
        posted(
            f.service
                .handle(&anna, post(bauamt(), 4, "d"))
                .await
                .unwrap()
        ),
        first_seq(1)
    );
    assert_eq!(f.service.db().log_generation().unwrap(), 1);
    f.service.handle(&anna, fetch(u64::MAX - 1)).await.unwrap();
    assert_eq!(
        posted(
            f.service
                .handle(&anna, post(bauamt(), 5, "e"))
                .await
                .unwrap()
        ),
        first_seq(1) + 1
    );
    assert_eq!(f.service.db().log_generation().unwrap(), 1, "once");
    // Both generations read as one log.
    let Response::Entries { entries, head, .. } = f.service.handle(&anna, fetch(0)).await.unwrap()
    else {
        panic!("expected Entries");
    };
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, first_seq(1), first_seq(1) + 1]
    );
    assert_eq!(head, first_seq(1) + 1);
}

#[tokio::test]
async fn admin_requests_are_forbidden_to_members() {
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    for request in [
        Request::ListUsers,
        Request::ListDepartments,
        Request::RemoveUser { user: uid("admin") },
        Request::AddUser {
            user: uid("P2000"),
            name: "X".into(),
            departments: vec![],
            roles: vec![],
        },
        Request::AddDepartment {
            slug: DepartmentSlug::parse("bauamt").unwrap(),
            name: "Bauamt".into(),
            owners: vec![],
        },
    ] {
        let r = f.service.handle(&anna, request).await.unwrap_err();
        assert_eq!(r.code(), ErrorCode::Forbidden);
        assert!(
            matches!(r.reason, Reason::Session(SessionRefused::AdminOnly(_))),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn only_editors_and_admins_post_announcements() {
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    let eva = f.user("P1002", &[Role::Editor]).await;
    let r = f
        .service
        .handle(&anna, post(GroupHandle::Announcements, 1, "Wartung"))
        .await
        .unwrap_err();
    assert_eq!(r.code(), ErrorCode::Forbidden);
    let r = f
        .service
        .handle(&eva, post(GroupHandle::Announcements, 1, "Wartung"))
        .await
        .unwrap();
    assert!(matches!(r, Response::Posted { seq: 1, .. }));
}

#[tokio::test]
async fn provisioning_rules() {
    let f = Fixture::new().await;
    f.user("P1001", &[]).await;
    let r = add_bauamt(&f, &["P9999"]).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::NotFound);
    let Response::Department(info) = add_bauamt(&f, &["P1001"]).await.unwrap() else {
        panic!("expected Department");
    };
    assert_eq!(info.members, 1);
    assert_eq!(
        add_bauamt(&f, &[]).await.unwrap_err().code(),
        ErrorCode::AlreadyExists
    );
    // `rathaus://docs/PATH` is the document library: no department takes that name.
    let docs = f
        .service
        .handle(
            &f.admin,
            Request::AddDepartment {
                slug: DepartmentSlug::parse("docs").unwrap(),
                name: "Dokumente".into(),
                owners: vec![],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(docs.code(), ErrorCode::Invalid);
    assert!(
        matches!(&docs.reason, Reason::Directory(DirectoryRefused::ReservedSlug(s)) if s.as_str() == "docs"),
        "{docs:?}"
    );
    assert!(
        docs.message().contains("rathaus://docs/"),
        "{}",
        docs.message()
    );
    let dup = f
        .service
        .handle(
            &f.admin,
            Request::AddUser {
                user: uid("P1001"),
                name: "Again".into(),
                departments: vec![],
                roles: vec![],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(dup.code(), ErrorCode::AlreadyExists);
    let unknown = f
        .service
        .handle(
            &f.admin,
            Request::AddUser {
                user: uid("P1003"),
                name: "Jonas".into(),
                departments: vec![DepartmentSlug::parse("kaemmerei").unwrap()],
                roles: vec![],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), ErrorCode::NotFound);
    let secret = f
        .service
        .handle(
            &f.admin,
            Request::Fetch {
                group: GroupHandle::parse("bauamt/secret").unwrap(),
                since: 0,
                limit: 1,
            },
        )
        .await
        .unwrap_err();
    // The administrator is not on the roster: never the log of a secret group.
    assert_eq!(secret.code(), ErrorCode::Forbidden);
}

#[tokio::test]
async fn an_offboarded_user_is_refused_and_their_posts_remain() {
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    add_bauamt(&f, &["P1001"]).await.unwrap();
    f.service
        .handle(&anna, post(bauamt(), 1, "Tschüss"))
        .await
        .unwrap();
    let r = f
        .service
        .handle(&f.admin, Request::RemoveUser { user: uid("P1001") })
        .await
        .unwrap();
    assert_eq!(r, Response::Done);
    // Offboarding again is not reported as done (nor audited) a second time.
    let again = f
        .service
        .handle(&f.admin, Request::RemoveUser { user: uid("P1001") })
        .await
        .unwrap_err();
    assert_eq!(again.code(), ErrorCode::NotFound);
    assert_eq!(
        again.reason,
        Reason::Directory(DirectoryRefused::OffboardedAlready(uid("P1001")))
    );

    let r = f.service.handle(&anna, Request::Whoami).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::Unauthenticated);
    let pending = f
        .service
        .challenge(addr(), PROTOCOL_VERSION, anna.user.clone(), anna.device)
        .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let exporter = [1u8; 32];
    let sig = ed25519_dalek::Signer::sign(
        &key,
        &rathaus_protocol::auth_transcript(&exporter, &pending.nonce),
    );
    let r = f
        .service
        .prove(
            addr(),
            &pending,
            &exporter,
            &rathaus_protocol::Signature::new(sig.to_bytes()),
        )
        .unwrap_err();
    assert_eq!(r.code(), ErrorCode::Unauthenticated);

    let r = f
        .service
        .handle(
            &f.admin,
            Request::Fetch {
                group: bauamt(),
                since: 0,
                limit: 10,
            },
        )
        .await
        .unwrap();
    let Response::Entries { entries, .. } = r else {
        panic!("expected Entries");
    };
    assert_eq!(entries.len(), 1);
    let r = f
        .service
        .handle(&f.admin, Request::Members { group: bauamt() })
        .await
        .unwrap();
    let Response::Members { members, .. } = r else {
        panic!("expected Members");
    };
    assert!(members.is_empty());
    let me = f
        .service
        .handle(&f.admin, Request::RemoveUser { user: uid("admin") })
        .await
        .unwrap_err();
    assert_eq!(me.code(), ErrorCode::Invalid);
}

#[tokio::test]
async fn a_device_proves_possession_of_its_key() {
    let f = Fixture::new().await;
    let anna: Session = f.user("P1001", &[]).await;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let exporter = [3u8; 32];
    let pending = f
        .service
        .challenge(addr(), PROTOCOL_VERSION, anna.user.clone(), anna.device)
        .unwrap();
    let sign = |transcript: &[u8]| {
        rathaus_protocol::Signature::new(ed25519_dalek::Signer::sign(&key, transcript).to_bytes())
    };
    // A proof for another TLS session does not count.
    let other = sign(&rathaus_protocol::auth_transcript(
        &[4u8; 32],
        &pending.nonce,
    ));
    assert_eq!(
        f.service
            .prove(addr(), &pending, &exporter, &other)
            .unwrap_err()
            .code(),
        ErrorCode::Unauthenticated
    );
    let good = sign(&rathaus_protocol::auth_transcript(
        &exporter,
        &pending.nonce,
    ));
    let (session, info) = f.service.prove(addr(), &pending, &exporter, &good).unwrap();
    assert_eq!(session, anna);
    assert_eq!(info.org, "Stadt Musterhausen");
    assert_eq!(info.roles, vec![Role::Member]);
}

/// A store whose queued batches stay unapplied while `hold` is set, until `release`.
struct HeldStore {
    inner: crate::store::MemoryStore,
    hold: std::sync::atomic::AtomicBool,
    held: std::sync::Mutex<Vec<(u64, crate::store::Batch)>>,
    next: std::sync::atomic::AtomicU64,
    applied: tokio::sync::watch::Sender<u64>,
}

impl HeldStore {
    fn new() -> Self {
        Self {
            inner: crate::store::MemoryStore::new(),
            hold: false.into(),
            held: std::sync::Mutex::default(),
            next: 0.into(),
            applied: tokio::sync::watch::Sender::new(0),
        }
    }

    fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    fn release(&self) {
        use crate::store::Store;
        let held = std::mem::take(&mut *self.held.lock().unwrap());
        for (ticket, batch) in held {
            self.inner.apply(batch).unwrap();
            self.applied.send_modify(|a| *a = (*a).max(ticket));
        }
    }
}

impl crate::store::Store for HeldStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, crate::store::StoreError> {
        self.inner.get(key)
    }
    fn apply(&self, batch: crate::store::Batch) -> Result<(), crate::store::StoreError> {
        self.inner.apply(batch)
    }
    fn enqueue(
        &self,
        batch: crate::store::Batch,
    ) -> Result<crate::store::ApplyTicket, crate::store::StoreError> {
        use std::sync::atomic::Ordering;
        if !self.hold.load(Ordering::SeqCst) {
            self.inner.apply(batch)?;
            return Ok(crate::store::ApplyTicket(0));
        }
        let ticket = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        self.held.lock().unwrap().push((ticket, batch));
        Ok(crate::store::ApplyTicket(ticket))
    }
    fn wait_applied(&self, ticket: crate::store::ApplyTicket) -> crate::store::FlushFuture<'_> {
        let mut applied = self.applied.subscribe();
        Box::pin(async move {
            applied
                .wait_for(|a| *a >= ticket.0)
                .await
                .map(|_| ())
                .map_err(|e| crate::store::StoreError::Backend(e.to_string()))
        })
    }
    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<crate::store::KeyValue>, crate::store::StoreError> {
        self.inner.range(start, end, limit)
    }
    fn last_in(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> Result<Option<crate::store::KeyValue>, crate::store::StoreError> {
        self.inner.last_in(start, end)
    }
    fn next_id(&self) -> Result<u64, crate::store::StoreError> {
        self.inner.next_id()
    }
    fn flush(&self) -> crate::store::FlushFuture<'_> {
        self.inner.flush()
    }
}

/// A retry that arrives while its original is queued but not yet applied (the write is
/// applied outside the log lock) is answered as a duplicate of it, not stored again.
#[tokio::test]
async fn a_retry_overtaking_its_queued_original_is_stored_once() {
    use std::sync::atomic::Ordering;
    let store = std::sync::Arc::new(HeldStore::new());
    let f = std::sync::Arc::new(Fixture::over(crate::store::Db::new(store.clone())).await);
    let anna = f.user("P1001", &[]).await;
    add_bauamt(&f, &["P1001"]).await.unwrap();

    store.hold.store(true, Ordering::SeqCst);
    let original = {
        let (f, anna) = (f.clone(), anna.clone());
        tokio::spawn(async move { f.service.handle(&anna, post(bauamt(), 7, "Hallo")).await })
    };
    for _ in 0..1000 {
        if store.held() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(store.held(), 1, "the original post never reached the store");
    assert!(
        !original.is_finished(),
        "acknowledged before it was applied"
    );
    let retry = {
        let (f, anna) = (f.clone(), anna.clone());
        tokio::spawn(async move { f.service.handle(&anna, post(bauamt(), 7, "Hallo")).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.held(), 1, "the retry was queued as a second post");
    store.release();
    store.hold.store(false, Ordering::SeqCst);

    let answers = [
        original.await.unwrap().unwrap(),
        retry.await.unwrap().unwrap(),
    ];
    let posted: Vec<(u64, bool)> = answers
        .iter()
        .map(|r| match r {
            Response::Posted { seq, duplicate, .. } => (*seq, *duplicate),
            other => panic!("expected Posted, got {other:?}"),
        })
        .collect();
    assert_eq!(posted, vec![(1, false), (1, true)]);
    let later = f
        .service
        .handle(&anna, post(bauamt(), 8, "danach"))
        .await
        .unwrap();
    assert!(matches!(
        later,
        Response::Posted {
            seq: 2,
            duplicate: false,
            ..
        }
    ));
}

/// Signs `user`'s challenge with the fixture's device key ([7; 32]), as a client would.
fn prove_device(
    service: &super::Service,
    peer: std::net::IpAddr,
    user: &str,
    device: rathaus_protocol::DeviceId,
) -> Result<Session, super::Refusal> {
    use ed25519_dalek::Signer;
    let pending = service.challenge(peer, PROTOCOL_VERSION, uid(user), device)?;
    let exporter = [3u8; 32];
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let transcript = rathaus_protocol::auth_transcript(&exporter, &pending.nonce);
    let signature = rathaus_protocol::Signature::new(key.sign(&transcript).to_bytes());
    service
        .prove(peer, &pending, &exporter, &signature)
        .map(|(s, _)| s)
}

fn shared(f: &Fixture) -> std::sync::Arc<super::Service> {
    std::sync::Arc::new(
        super::Service::new(
            f.service.db().clone(),
            f.clock.clone(),
            super::testing::removal_key(),
        )
        .unwrap(),
    )
}

fn ip(n: u32) -> std::net::IpAddr {
    std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
}

#[tokio::test]
async fn parallel_wrong_passwords_are_counted_before_their_check() {
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    let service = shared(&f);
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..20 {
        let service = service.clone();
        burst.spawn(async move {
            service
                .add_device(
                    ip(i),
                    PROTOCOL_VERSION,
                    new_device("P1001", "not the password"),
                )
                .await
                .unwrap_err()
                .code()
        });
    }
    let mut codes = Vec::new();
    while let Some(code) = burst.join_next().await {
        codes.push(code.unwrap());
    }
    let checked = codes
        .iter()
        .filter(|c| **c == ErrorCode::Unauthenticated)
        .count();
    let refused = codes
        .iter()
        .filter(|c| **c == ErrorCode::RateLimited)
        .count();
    assert_eq!(checked + refused, 20, "{codes:?}");
    assert!(checked >= 1 && refused >= 15, "{codes:?}");
    // Anna's own device logs in at once, from the same addresses even.
    for i in 0..20 {
        let session = prove_device(&service, ip(i), "P1001", anna.device).unwrap();
        assert_eq!(session, anna);
    }
    assert!(service.throttle_stats().refused >= 15);
}

#[tokio::test]
async fn argon2_checks_are_bounded_and_refused_beyond_with_unavailable() {
    let f = Fixture::new().await;
    let service = shared(&f);
    // Every check slot busy (as under a burst whose checks are running): the next
    // attempts are refused at once, whatever the machine's speed.
    let slots: Vec<_> = (0..super::attempts::argon2_slots())
        .map(|_| service.argon2_slot().unwrap())
        .collect();
    assert!(service.argon2_slot().is_err(), "no slot beyond the threads");
    let mut burst = tokio::task::JoinSet::new();
    // Made-up users from many addresses: the throttle has no reason to refuse them, so
    // only the bound on Argon2 checks stands between them and the server's memory.
    for i in 0..100 {
        let service = service.clone();
        burst.spawn(async move {
            service
                .add_device(
                    ip(1000 + i),
                    PROTOCOL_VERSION,
                    new_device(&format!("X{i}"), "guess"),
                )
                .await
                .unwrap_err()
                .code()
        });
    }
    let mut codes = Vec::new();
    while let Some(code) = burst.join_next().await {
        codes.push(code.unwrap());
    }
    assert!(
        codes.iter().all(|c| *c == ErrorCode::Unavailable),
        "{codes:?}"
    );
    // One for the probe above, one per attempt.
    assert_eq!(service.throttle_stats().busy, 101);
    drop(slots);
    // Refused attempts were not charged: the same users may try again at once, and are
    // checked now that slots are free.
    for i in [0, 99] {
        let r = service
            .add_device(
                ip(1000 + i),
                PROTOCOL_VERSION,
                new_device(&format!("X{i}"), "guess"),
            )
            .await
            .unwrap_err();
        assert_eq!(r.code(), ErrorCode::Unauthenticated);
    }
}

#[tokio::test]
async fn password_failures_never_refuse_the_device_key_or_the_code() {
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    let jonas_code = f.add_user("P1002", &[]).await;
    for _ in 0..30 {
        let _ = f
            .service
            .add_device(addr(), PROTOCOL_VERSION, new_device("P1001", "wrong"))
            .await;
        let _ = f
            .service
            .add_device(addr(), PROTOCOL_VERSION, new_device("P1002", "wrong"))
            .await;
    }
    let r = f
        .service
        .add_device(addr(), PROTOCOL_VERSION, new_device("P1001", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(r.code(), ErrorCode::RateLimited);
    // The device key still works, from the very address of the burst…
    assert_eq!(
        prove_device(&f.service, addr(), "P1001", anna.device),
        Ok(anna)
    );
    // …and a colleague's enrollment code is its own factor: only the network's counter
    // (shared by everyone behind a NAT) slows it, and it has room left… until it has
    // not: then another address still works.
    let r = enroll(&f.service, "P1002", &jonas_code).await;
    match r {
        Ok(_) => {}
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::RateLimited);
            let device = f
                .service
                .enroll(
                    ip(77),
                    PROTOCOL_VERSION,
                    &jonas_code,
                    new_device("P1002", PASSWORD),
                )
                .await
                .unwrap();
            assert!(matches!(device, Response::Enrolled { .. }));
        }
    }
}

#[tokio::test]
async fn throttle_counters_survive_a_restart() {
    let f = Fixture::new().await;
    f.user("P1001", &[]).await;
    for _ in 0..5 {
        let r = f
            .service
            .add_device(addr(), PROTOCOL_VERSION, new_device("P1001", "wrong"))
            .await
            .unwrap_err();
        assert_eq!(r.code(), ErrorCode::Unauthenticated);
    }
    let restarted = shared(&f);
    let r = restarted
        .add_device(ip(5), PROTOCOL_VERSION, new_device("P1001", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(r.code(), ErrorCode::RateLimited, "{}", r.message());
    f.clock.advance(Duration::from_secs(1));
    assert!(restarted
        .add_device(ip(5), PROTOCOL_VERSION, new_device("P1001", PASSWORD))
        .await
        .is_ok());
}

#[tokio::test]
async fn a_session_cannot_guess_the_password_quickly() {
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    let change = |old: &str| Request::ChangePassword {
        old: old.into(),
        new: "a new password".into(),
    };
    for _ in 0..5 {
        let r = f.service.handle(&anna, change("guess")).await.unwrap_err();
        assert_eq!(r.code(), ErrorCode::Unauthenticated);
    }
    // Backed off: not even the right password is checked now…
    let r = f.service.handle(&anna, change(PASSWORD)).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::RateLimited);
    // …and the same counter guards AddDevice.
    let r = f
        .service
        .add_device(addr(), PROTOCOL_VERSION, new_device("P1001", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(r.code(), ErrorCode::RateLimited);
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(
        f.service.handle(&anna, change(PASSWORD)).await.unwrap(),
        Response::Done
    );
}

#[tokio::test]
async fn a_kept_session_record_follows_every_user_change() {
    let f = Fixture::new().await;
    add_bauamt(&f, &[]).await.unwrap();
    let jonas = f.user("P1002", &[Role::Admin]).await;
    let cache = super::SessionCache::default();
    let handle = |request| f.service.handle_cached(&jonas, &cache, request);
    // Filled by a first request, used by the next ones.
    handle(Request::ListUsers).await.unwrap();
    handle(Request::ListUsers).await.unwrap();

    // Demoted by another administrator: refused at the next request.
    f.service
        .handle(
            &f.admin,
            Request::SetRoles {
                user: uid("P1002"),
                add: Vec::new(),
                remove: vec![Role::Admin],
            },
        )
        .await
        .unwrap();
    let refused = handle(Request::ListUsers).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Forbidden);
    match handle(Request::Whoami).await.unwrap() {
        Response::Me(me) => assert!(!me.roles.contains(&Role::Admin), "{me:?}"),
        other => panic!("unexpected {other:?}"),
    }

    // Offboarded: the session is no longer valid, and the post is not stored.
    handle(post(bauamt(), 1, "vorher")).await.unwrap();
    f.service
        .handle(&f.admin, Request::RemoveUser { user: uid("P1002") })
        .await
        .unwrap();
    let gone = handle(post(bauamt(), 2, "nachher")).await.unwrap_err();
    assert_eq!(gone.code(), ErrorCode::Unauthenticated);
    let entries = f
        .service
        .handle(
            &f.admin,
            Request::Fetch {
                group: bauamt(),
                since: 0,
                limit: 100,
            },
        )
        .await
        .unwrap();
    match entries {
        Response::Entries { entries, .. } => assert_eq!(entries.len(), 1),
        other => panic!("unexpected {other:?}"),
    }
}

/// A subscriber that stops reading holds at most the bound of pushed frames: past it,
/// posts are stored and answered as always, but not pushed, and a subscriber that reads
/// finds them by the gap. Once the stuck one is gone, pushes resume.
#[tokio::test]
async fn a_subscriber_that_stops_reading_holds_only_so_many_pushed_frames() {
    let f = Fixture::new().await;
    f.service.pushed.set_max(256 * 1024);
    let anna = f.user("P1001", &[]).await;
    add_bauamt(&f, &[]).await.unwrap();
    let stuck = f.service.observe();
    let text = "x".repeat(60 * 1024);
    for i in 0..10u8 {
        let r = f.service.handle(&anna, post(bauamt(), i, &text)).await;
        assert!(matches!(r, Ok(Response::Posted { .. })), "{r:?}");
    }
    // Four frames of ~60 KiB fit in 256 KiB; the other six were stored, not pushed.
    assert_eq!(stuck.len(), 4);
    assert!(f.service.pushed.held() <= 256 * 1024);
    assert_eq!(f.service.metrics.pushes_skipped.get(), 6);
    let r = f
        .service
        .handle(
            &anna,
            Request::Fetch {
                group: bauamt(),
                since: 0,
                limit: 100,
            },
        )
        .await
        .unwrap();
    let Response::Entries { entries, .. } = r else {
        panic!("expected Entries")
    };
    assert_eq!(entries.len(), 10);

    drop(stuck);
    assert_eq!(f.service.pushed.held(), 0);
    let mut live = f.service.observe();
    f.service
        .handle(&anna, post(bauamt(), 11, "wieder da"))
        .await
        .unwrap();
    assert!(matches!(
        live.try_recv(),
        Ok(super::Broadcast::Posted { .. })
    ));
}

/// A post takes at most `MAX_EDITS` edits; its delete finds them by the edit index and
/// takes every one's text off the server, however far back in the log the post is.
#[tokio::test]
async fn a_post_takes_only_so_many_edits_and_its_delete_withdraws_them_all() {
    use super::posts::MAX_EDITS;
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    add_bauamt(&f, &[]).await.unwrap();
    f.service
        .handle(&anna, post(bauamt(), 0, "Plan"))
        .await
        .unwrap();
    let edit = |i: u16| {
        let mut id = [9u8; 16];
        id[..2].copy_from_slice(&i.to_be_bytes());
        Request::Post {
            group: bauamt(),
            client_id: ClientMsgId(id),
            body: PostBody::Public(Content::edit(1, format!("Plan, Fassung {i}")).into()),
        }
    };
    for i in 0..MAX_EDITS as u16 {
        let r = f.service.handle(&anna, edit(i)).await;
        assert!(matches!(r, Ok(Response::Posted { .. })), "{i}: {r:?}");
        // Other posts between, as in a busy group.
        f.service
            .handle(&anna, post(bauamt(), 1 + (i % 200) as u8, "anderes"))
            .await
            .unwrap();
    }
    let r = f.service.handle(&anna, edit(MAX_EDITS as u16)).await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::TooLarge);

    let delete = Request::Post {
        group: bauamt(),
        client_id: ClientMsgId([0xde; 16]),
        body: PostBody::Public(Content::delete(1).into()),
    };
    f.service.handle(&anna, delete).await.unwrap();
    let db = &f.service.db;
    let mut withdrawn = 0;
    for seq in db.edits_of(&bauamt(), 1, usize::MAX).unwrap() {
        let entry = db.entry(&bauamt(), seq).unwrap().unwrap();
        let rathaus_protocol::EntryBody::Content(c) = &entry.body else {
            panic!("{entry:?}")
        };
        assert_eq!(c.body, rathaus_protocol::ContentBody::Delete { target: 1 });
        withdrawn += 1;
    }
    assert_eq!(withdrawn, MAX_EDITS);
    assert!(matches!(
        db.entry(&bauamt(), 1).unwrap().unwrap().body,
        rathaus_protocol::EntryBody::Removed { .. }
    ));
}

/// One colleague has at most `MAX_ACTIVE_DEVICES` active devices: the next is refused
/// with a clear error until one is removed.
#[tokio::test]
async fn a_colleague_has_only_so_many_devices() {
    use super::enrollment::MAX_ACTIVE_DEVICES;
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    let mut devices = Vec::new();
    for _ in 1..MAX_ACTIVE_DEVICES {
        let r = f
            .service
            .add_device(addr(), PROTOCOL_VERSION, new_device("P1001", PASSWORD))
            .await;
        let Ok(Response::Enrolled { device, .. }) = r else {
            panic!("{r:?}")
        };
        devices.push(device);
    }
    let r = f
        .service
        .add_device(addr(), PROTOCOL_VERSION, new_device("P1001", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(r.code(), ErrorCode::TooLarge);
    assert!(r.message().contains("16 active devices"), "{}", r.message());
    f.service
        .handle(&anna, Request::RemoveDevice { device: devices[0] })
        .await
        .unwrap();
    let r = f
        .service
        .add_device(addr(), PROTOCOL_VERSION, new_device("P1001", PASSWORD))
        .await;
    assert!(matches!(r, Ok(Response::Enrolled { .. })), "{r:?}");
}

/// One colleague owns at most `MAX_OWNED_ROOMS` rooms, and nobody can give another more
/// than `MAX_OPEN_INVITATIONS` open invitations: the invitee's list always fits in one
/// answer.
#[tokio::test]
async fn rooms_owned_and_invitations_open_are_bounded() {
    use super::rooms::{MAX_OPEN_INVITATIONS, MAX_OWNED_ROOMS};
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    let jonas = f.user("P1002", &[]).await;
    let bernd = f.user("P1003", &[]).await;
    let create = |i: usize| Request::CreateRoom {
        slug: DepartmentSlug::parse(&format!("raum-{i:03}")).unwrap(),
        name: format!("Projekt {i}"),
    };
    for i in 0..MAX_OWNED_ROOMS {
        f.service.handle(&anna, create(i)).await.unwrap();
        let invite = Request::InviteToRoom {
            room: GroupHandle::parse(&format!("room/raum-{i:03}")).unwrap(),
            user: uid("P1002"),
        };
        f.service.handle(&anna, invite).await.unwrap();
    }
    let r = f.service.handle(&anna, create(MAX_OWNED_ROOMS)).await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::TooLarge);

    f.service.handle(&bernd, create(500)).await.unwrap();
    let invite = Request::InviteToRoom {
        room: GroupHandle::parse("room/raum-500").unwrap(),
        user: uid("P1002"),
    };
    let r = f.service.handle(&bernd, invite).await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::TooLarge);

    let answer = f
        .service
        .handle(&jonas, Request::RoomInvitations)
        .await
        .unwrap();
    assert!(rathaus_protocol::frame::encode(&answer).is_ok());
    let Response::RoomInvitations(open) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(open.len(), MAX_OPEN_INVITATIONS);
}
