//! The PostgreSQL store: the rules the database keeps for every process on it, and
//! `rathaus-server migrate` from a sled data directory. These need a PostgreSQL server
//! (`RATHAUS_TEST_STORE=postgres://…`, as `.ci/run` sets it) and skip themselves without.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;

use rathaus_protocol::{ClientMsgId, Content, EntryBody, GroupHandle, Role, UserId};
use rathaus_server::store::{Db, PgStore, StoreError, StoredEntry, UserRecord, Writes};
use rathaus_tests::{testing_on_postgres, workspace_bin, TestBackend, TestDatabase};

/// A fresh database, or `None` (with a printed line) when no PostgreSQL is configured.
fn database(test: &str) -> Option<TestDatabase> {
    if !testing_on_postgres() {
        println!("skipped without PostgreSQL (set RATHAUS_TEST_STORE=postgres://…): {test}");
        return None;
    }
    Some(TestDatabase::create_if_configured().unwrap().unwrap())
}

fn entry(sender: &str, id: u8, text: &str) -> StoredEntry {
    StoredEntry {
        sender: UserId::parse(sender).unwrap(),
        sender_name: sender.into(),
        sent_at_ms: 1,
        client_id: ClientMsgId([id; 16]),
        body: EntryBody::Content(Content::text(text)),
    }
}

fn append(db: &Db, group: &GroupHandle, seq: u64, e: &StoredEntry) -> Result<(), StoreError> {
    let mut w = Writes::new();
    w.put_entry(group, seq, e).unwrap();
    db.apply(w)
}

#[test]
fn two_processes_on_one_database_cannot_take_one_seq_skip_one_or_commit_an_epoch_twice() {
    let Some(database) = database("store rules") else {
        return;
    };
    // Two stores on one database stand for two server nodes.
    let a = Db::new(Arc::new(PgStore::open(database.url()).unwrap()));
    let b = Db::new(Arc::new(PgStore::open(database.url()).unwrap()));
    let bau = GroupHandle::parse("bauamt").unwrap();

    append(&a, &bau, 1, &entry("P1", 1, "eins")).unwrap();
    let taken = append(&b, &bau, 1, &entry("P2", 2, "auch eins"));
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    let gap = append(&b, &bau, 3, &entry("P2", 2, "drei"));
    assert!(matches!(gap, Err(StoreError::Conflict(_))), "{gap:?}");
    let twice = append(&b, &bau, 2, &entry("P1", 1, "eins, noch mal"));
    assert!(
        matches!(twice, Err(StoreError::Conflict(_))),
        "a client id is stored once: {twice:?}"
    );
    append(&b, &bau, 2, &entry("P2", 2, "zwei")).unwrap();
    assert_eq!(a.head(&bau).unwrap(), 2, "a sees what b appended");
    let texts: Vec<u64> = a
        .entries(&bau, 0, 10)
        .unwrap()
        .into_iter()
        .map(|(seq, _, _)| seq)
        .collect();
    assert_eq!(
        texts,
        vec![1, 2],
        "nothing of the refused writes was stored"
    );

    // A restored server continues in the next generation: its first seq may follow any
    // lower head, and nothing of the older generation may follow it.
    let next = rathaus_protocol::log::first_seq(1);
    let skip = append(&a, &bau, next + 1, &entry("P1", 5, "mitten hinein"));
    assert!(matches!(skip, Err(StoreError::Conflict(_))), "{skip:?}");
    append(&a, &bau, next, &entry("P1", 3, "neue Generation")).unwrap();
    let old = append(&b, &bau, 3, &entry("P2", 4, "alte Generation"));
    assert!(matches!(old, Err(StoreError::Conflict(_))), "{old:?}");
    let again = append(&b, &bau, next, &entry("P2", 4, "noch einmal"));
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    append(&b, &bau, next + 1, &entry("P2", 4, "weiter")).unwrap();
    let fresh = GroupHandle::parse("kaemmerei").unwrap();
    append(&b, &fresh, next, &entry("P2", 6, "neu begonnen")).unwrap();
    assert_eq!(a.head(&bau).unwrap(), next + 1);
    assert_eq!(a.head(&fresh).unwrap(), next);

    let secret = GroupHandle::parse("bauamt/secret").unwrap();
    let mut w = Writes::new();
    w.claim_epoch(&secret, 1, 7).unwrap();
    a.apply(w).unwrap();
    let mut w = Writes::new();
    w.claim_epoch(&secret, 1, 8).unwrap();
    let second = b.apply(w);
    assert!(
        matches!(second, Err(StoreError::Conflict(_))),
        "one commit per epoch: {second:?}"
    );

    // Ids stay unique across processes.
    let ids: std::collections::BTreeSet<u64> = (0..20)
        .map(|i| if i % 2 == 0 { a.store() } else { b.store() })
        .map(|s| s.next_id().unwrap())
        .collect();
    assert_eq!(ids.len(), 20);
}

/// Appends a post that the store may move; returns the seq it was stored at.
fn append_movable(
    db: &Db,
    group: &GroupHandle,
    seq: u64,
    e: &StoredEntry,
) -> Result<u64, StoreError> {
    let mut w = Writes::new();
    let shift = w.put_movable_entry(group, seq, e).unwrap();
    db.apply(w)?;
    shift.of(seq)
}

#[test]
fn a_post_given_a_seq_another_process_took_is_stored_after_it_and_found_there() {
    let Some(database) = database("movable posts") else {
        return;
    };
    let a = Db::new(Arc::new(PgStore::open(database.url()).unwrap()));
    let b = Db::new(Arc::new(PgStore::open(database.url()).unwrap()));
    let bau = GroupHandle::parse("bauamt").unwrap();

    // Both processes believe the log is empty and give their posts seq 1.
    assert_eq!(
        append_movable(&a, &bau, 1, &entry("P1", 1, "von A")).unwrap(),
        1
    );
    assert_eq!(
        append_movable(&b, &bau, 1, &entry("P2", 2, "von B")).unwrap(),
        2,
        "stored after A's post, not refused"
    );
    // One that believes itself ahead is put right after the head: no gap.
    assert_eq!(
        append_movable(&a, &bau, 7, &entry("P1", 3, "zu weit")).unwrap(),
        3
    );
    // An entry that may not move is still refused where its seq is taken.
    let fixed = append(&b, &bau, 3, &entry("P2", 4, "fest"));
    assert!(matches!(fixed, Err(StoreError::Conflict(_))), "{fixed:?}");
    // A post stored before is refused, not stored twice.
    let twice = append_movable(&b, &bau, 4, &entry("P1", 1, "von A, noch mal"));
    assert!(matches!(twice, Err(StoreError::Conflict(_))), "{twice:?}");

    let stored: Vec<(u64, String)> = b
        .entries(&bau, 0, 10)
        .unwrap()
        .into_iter()
        .map(|(seq, e, _)| match e.body {
            EntryBody::Content(c) => (seq, c.summary()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        stored,
        vec![
            (1, "von A".to_owned()),
            (2, "von B".to_owned()),
            (3, "zu weit".to_owned())
        ]
    );
    // The deduplication records name the seqs the posts were stored at.
    for (sender, id, seq) in [("P1", 1, 1), ("P2", 2, 2), ("P1", 3, 3)] {
        let found = a
            .deduplicated(
                &bau,
                &UserId::parse(sender).unwrap(),
                &ClientMsgId([id; 16]),
            )
            .unwrap();
        assert_eq!(found, Some(seq), "{sender} {id}");
    }
    assert_eq!(a.head(&bau).unwrap(), 3);
}

#[test]
fn a_roster_of_users_is_read_in_its_order_across_pages() {
    let Some(database) = database("users by id") else {
        return;
    };
    let db = Db::new(Arc::new(PgStore::open(database.url()).unwrap()));
    let user = |n: usize| UserRecord {
        id: UserId::parse(&format!("P{n}")).unwrap(),
        name: format!("Kollegin {n}"),
        roles: vec![Role::Member],
        departments: Vec::new(),
        password_hash: None,
        devices: Vec::new(),
        removed: n.is_multiple_of(7),
        created_ms: n as i64,
    };
    // More than one page of the database's answer (1,000 keys per query).
    let mut w = Writes::new();
    for n in 1..=1500 {
        w.put_user(&user(n)).unwrap();
    }
    db.apply(w).unwrap();
    // Newest first, with a personnel number that does not exist and one asked twice.
    let mut ids: Vec<UserId> = (1..=1500)
        .rev()
        .map(|n| UserId::parse(&format!("P{n}")).unwrap())
        .collect();
    ids.insert(700, UserId::parse("P9999").unwrap());
    ids.push(UserId::parse("P1200").unwrap());
    let got = db.users_by_id(&ids).unwrap();
    assert_eq!(got.len(), ids.len());
    for (id, record) in ids.iter().zip(&got) {
        assert_eq!(record, &db.user(id).unwrap(), "{id}");
    }
    assert_eq!(got[700], None, "an unknown personnel number has no record");
    assert_eq!(
        got[0].as_ref().map(|u| u.name.as_str()),
        Some("Kollegin 1500")
    );
    assert_eq!(
        got.last().unwrap().as_ref().map(|u| u.created_ms),
        Some(1200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_data_directory_migrates_into_postgresql_with_every_post() {
    let Some(database) = database("migrate") else {
        return;
    };
    let mut backend = TestBackend::start_on_sled().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();
    let bau = GroupHandle::parse("bauamt").unwrap();
    for i in 1..=5 {
        anna.send_text(&bau, &format!("Meldung {i}")).await.unwrap();
    }
    anna.disconnect().await;
    admin.disconnect().await;
    backend.stop().await;

    let data = backend.data_dir();
    let migrate = |url: &str| {
        Command::new(workspace_bin("rathaus-server").unwrap())
            .args(["migrate", "--json", "--from-data"])
            .arg(&data)
            .args(["--to", url])
            .output()
            .unwrap()
    };
    let out = migrate(database.url());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["records"].as_u64().unwrap() > 10, "{report}");
    assert_eq!(report["sha256"].as_str().unwrap().len(), 64, "{report}");

    // The data directory now serves from PostgreSQL: everything is there, and new posts
    // continue the log.
    backend.database = Some(database);
    backend.run().await.unwrap();
    let rows = anna.read(&bau).await.unwrap();
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(
        texts,
        (1..=5).map(|i| format!("Meldung {i}")).collect::<Vec<_>>()
    );
    assert_eq!(anna.send_text(&bau, "Nach dem Umzug").await.unwrap().seq, 6);
    anna.disconnect().await;
    backend.stop().await;

    let again = migrate(backend.database.as_ref().unwrap().url());
    assert!(!again.status.success(), "a second migration is refused");
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(message.contains("PostgreSQL already"), "{message}");

    // A non-empty database is refused too, before anything is copied.
    let mut other = TestBackend::start_on_sled().await.unwrap();
    other.stop().await;
    let target = backend.database.as_ref().unwrap().url().to_owned();
    let refused = Command::new(workspace_bin("rathaus-server").unwrap())
        .args(["migrate", "--from-data"])
        .arg(other.data_dir())
        .args(["--to", &target])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("empty"), "{message}");
    assert!(
        !std::fs::read_to_string(other.data_dir().join("config.json"))
            .unwrap()
            .contains("postgres"),
        "a refused migration leaves config.json as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_take_posts_at_once_into_one_dense_log() {
    if !testing_on_postgres() {
        println!("skipped without PostgreSQL (set RATHAUS_TEST_STORE=postgres://…): two nodes");
        return;
    }
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    // Three colleagues post through node A, three through node B.
    let mut on_a = Vec::new();
    for (user, name) in [
        ("P1001", "Anna Berg"),
        ("P1003", "Carla Diaz"),
        ("P1005", "Emil Frank"),
    ] {
        on_a.push((
            user,
            backend
                .user(&mut admin, user, name, &["bauamt"])
                .await
                .unwrap(),
        ));
    }
    let mut codes = Vec::new();
    for (user, name) in [
        ("P1002", "Jonas Weber"),
        ("P1004", "Dora Engel"),
        ("P1006", "Fritz Graf"),
    ] {
        let code = backend
            .provision(&mut admin, user, name, &["bauamt"], &[])
            .await
            .unwrap();
        codes.push((user, code));
    }

    // Node B: a copy of the data directory (certificate, keys, config.json naming the
    // database) serving on a port of its own.
    let node_b_dir = tempfile::tempdir().unwrap();
    for name in [
        "config.json",
        "cert.der",
        "key.der",
        "removal.key",
        "reset.key",
    ] {
        std::fs::copy(backend.data_dir().join(name), node_b_dir.path().join(name)).unwrap();
    }
    let mut options = rathaus_server::RunOptions::new(node_b_dir.path());
    options.listen = Some("127.0.0.1:0".parse().unwrap());
    let node_b = rathaus_server::start(options).await.unwrap();
    assert_eq!(node_b.fingerprint(), backend.fingerprint, "one certificate");
    assert_ne!(node_b.local_addr(), backend.addr);
    let mut on_b = Vec::new();
    for (user, code) in codes {
        on_b.push((
            user,
            rathaus_client::Client::enroll(
                &backend.profile_dir(user),
                rathaus_client::EnrollOptions {
                    server: node_b.local_addr().to_string(),
                    trust: rathaus_client::ServerTrust::Pinned(node_b.fingerprint()),
                    user: UserId::parse(user).unwrap(),
                    code,
                    password: rathaus_tests::PASSWORD.to_owned(),
                    device_name: format!("{user}'s phone"),
                },
            )
            .await
            .unwrap(),
        ));
    }

    // All six post at once, each through their own node, so the two nodes keep taking
    // the same seqs of one group: every refused write is allocated again (after reading
    // the head back) until it is stored, and acknowledged once.
    const EACH: usize = 20;
    let bau = GroupHandle::parse("bauamt").unwrap();
    let post = |(who, mut client): (&'static str, rathaus_client::Client)| {
        let bau = bau.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..EACH {
                let receipt = client.send_text(&bau, &format!("{who} {i}")).await.unwrap();
                seqs.push(receipt.seq);
            }
            ((who, client), seqs)
        })
    };
    let senders: Vec<_> = on_a.into_iter().chain(on_b).map(post).collect();
    let mut all = Vec::new();
    let mut clients = Vec::new();
    for sender in senders {
        let (client, seqs) = sender.await.unwrap();
        all.extend(seqs);
        clients.push(client);
    }
    all.sort_unstable();
    let everyone = clients.len();
    assert_eq!(
        all,
        (1..=(everyone * EACH) as u64).collect::<Vec<_>>(),
        "every post got its own seq, with no gap"
    );

    // Each reads the whole log from their own node: every post once.
    let expected: std::collections::BTreeSet<String> = clients
        .iter()
        .flat_map(|(who, _)| (0..EACH).map(move |i| format!("{who} {i}")))
        .collect();
    for (_, client) in &mut clients {
        let rows = client.read(&bau).await.unwrap();
        let texts: Vec<String> = rows.iter().map(|r| r.text.clone()).collect();
        assert_eq!(texts.len(), everyone * EACH, "{texts:?}");
        assert_eq!(
            texts.into_iter().collect::<std::collections::BTreeSet<_>>(),
            expected
        );
    }
    let (_, mut jonas) = clients.remove(3);
    let (_, mut anna) = clients.remove(0);
    // A post accepted on node A is pushed to a subscriber on node B (LISTEN/NOTIFY
    // wakes B, which reads the entry from the log).
    let mut sub = jonas.subscribe().await.unwrap();
    let receipt = anna.send_text(&bau, "über Knoten A").await.unwrap();
    let pushed = rathaus_tests::within("the push on node B", async {
        loop {
            match sub.next().await.unwrap() {
                rathaus_protocol::Event::Posted { group, entry } if group == bau => {
                    return entry;
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(pushed.seq, receipt.seq);
    assert!(
        matches!(&pushed.body, EntryBody::Content(c) if c.summary() == "über Knoten A"),
        "{pushed:?}"
    );

    anna.disconnect().await;
    jonas.disconnect().await;
    for (_, mut client) in clients {
        client.disconnect().await;
    }
    admin.disconnect().await;
    node_b.shutdown().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_hears_another_write_user_records_and_end_sessions() {
    use rathaus_server::store::{NodeNotice, Store};
    let Some(database) = database("notices of records and sessions") else {
        return;
    };
    let a = Db::new(Arc::new(PgStore::open(database.url()).unwrap()));
    let b: Arc<dyn Store> = Arc::new(PgStore::open(database.url()).unwrap());
    let mut heard = b.other_nodes_notices().unwrap();
    // The listening connection is there (and says so) before anything is sent.
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), heard.recv())
        .await
        .unwrap();
    assert_eq!(first, Some(NodeNotice::Listening));

    let mut w = Writes::new();
    w.put_user(&UserRecord {
        id: UserId::parse("P1001").unwrap(),
        name: "Anna Berg".into(),
        roles: vec![Role::Member],
        departments: Vec::new(),
        password_hash: None,
        devices: Vec::new(),
        removed: true,
        created_ms: 1,
    })
    .unwrap();
    a.apply(w).unwrap();
    a.store().notify_sessions("P1001");
    let mut got = Vec::new();
    while got.len() < 2 {
        let notice = tokio::time::timeout(std::time::Duration::from_secs(30), heard.recv())
            .await
            .expect("no notice from the other process")
            .unwrap();
        got.push(notice);
    }
    got.sort_by_key(|n| format!("{n:?}"));
    assert_eq!(
        got,
        vec![NodeNotice::Records, NodeNotice::Sessions("P1001".into())]
    );
}
