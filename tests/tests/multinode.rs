//! Several `rathaus-server` nodes on one PostgreSQL database, as real processes: the
//! background loops run on one node at a time and move when it dies, a node killed while
//! clients post through it loses nothing acknowledged and stores nothing twice, and
//! clients enrolled with every node's address fail over to the next. These need a
//! PostgreSQL server (`RATHAUS_TEST_STORE=postgres://…`, as `.ci/run` sets it) and skip
//! themselves without.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rathaus_client::{Client, EnrollOptions, ServerTrust};
use rathaus_protocol::{GroupHandle, UserId};
use rathaus_tests::{testing_on_postgres, workspace_bin, ServerProcess, TestBackend, PASSWORD};

/// How long a takeover or a failover may take at most (the lock is retried every 2 s).
const TAKEOVER: Duration = Duration::from_secs(30);

fn skipped(test: &str) -> bool {
    if testing_on_postgres() {
        return false;
    }
    println!("skipped without PostgreSQL (set RATHAUS_TEST_STORE=postgres://…): {test}");
    true
}

/// Another node's data directory: a copy of the keys, the certificate and config.json
/// (which names the database) of `data`.
fn node_dir(data: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "config.json",
        "cert.der",
        "key.der",
        "removal.key",
        "reset.key",
    ] {
        std::fs::copy(data.join(name), dir.path().join(name)).unwrap();
    }
    dir
}

/// A second node in this process on `backend`'s database (and blob directory `files`, if
/// given), on a copy of its data directory (kept as long as the node runs).
async fn second_node(
    backend: &TestBackend,
    files: Option<std::path::PathBuf>,
) -> (tempfile::TempDir, rathaus_server::RunningServer) {
    let other = node_dir(&backend.data_dir());
    let mut options = rathaus_server::RunOptions::new(other.path());
    options.listen = Some("127.0.0.1:0".parse().unwrap());
    options.files_dir = files;
    options.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let node = rathaus_server::start(options).await.unwrap();
    (other, node)
}

fn leads(node: &ServerProcess) -> bool {
    node.metric("rathaus_background_leader").unwrap() == Some(1.0)
}

fn housekeeping_runs(node: &ServerProcess) -> f64 {
    node.metric("rathaus_housekeeping_runs_total")
        .unwrap()
        .unwrap_or(0.0)
}

/// Polls until `node` leads, at most [`TAKEOVER`]; returns how long that took.
fn until_leading(node: &ServerProcess) -> Duration {
    let start = Instant::now();
    while !leads(node) {
        assert!(
            start.elapsed() < TAKEOVER,
            "no node took over the background loops within {TAKEOVER:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// Checks for a while (longer than the lock's retry interval) that `follower` never
/// leads while `leader` does.
fn one_leader_for_a_while(leader: &ServerProcess, follower: &ServerProcess) {
    for _ in 0..20 {
        assert!(leads(leader), "the leader keeps the background loops");
        assert!(
            !leads(follower),
            "a second node runs the background loops too"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn background_loops_run_on_one_node_and_move_to_another_when_it_dies() {
    if skipped("background loops on one node") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut backend = rt.block_on(TestBackend::start_process(None)).unwrap();
    backend.kill().unwrap();
    let data = backend.data_dir();
    let other = node_dir(&data);

    let a = ServerProcess::spawn_with_metrics(&data, "127.0.0.1:0", None).unwrap();
    until_leading(&a);
    let b = ServerProcess::spawn_with_metrics(other.path(), "127.0.0.1:0", None).unwrap();
    one_leader_for_a_while(&a, &b);
    assert_eq!(
        housekeeping_runs(&a),
        1.0,
        "the leader ran housekeeping once"
    );
    assert_eq!(housekeeping_runs(&b), 0.0, "the other node ran none");

    // SIGKILL: nothing is handed over; the database releases the lock with the
    // connection, and B takes over.
    a.kill().unwrap();
    let took = until_leading(&b);
    println!("node B took over {took:?} after node A was killed");
    assert_eq!(
        housekeeping_runs(&b),
        1.0,
        "the new leader runs housekeeping"
    );

    // A comes back: B keeps leading, A waits.
    let a = ServerProcess::spawn_with_metrics(&data, "127.0.0.1:0", None).unwrap();
    one_leader_for_a_while(&b, &a);
    assert_eq!(housekeeping_runs(&a), 0.0);
    drop(backend);
}

/// Enrolls `user` with the addresses of every node (`a,b`), as a cluster's staff would.
async fn enroll_on_both(
    backend: &TestBackend,
    admin: &mut Client,
    servers: &str,
    user: &str,
    name: &str,
) -> Client {
    let code = backend
        .provision(admin, user, name, &["bauamt"], &[])
        .await
        .unwrap();
    Client::enroll(
        &backend.profile_dir(user),
        EnrollOptions {
            server: servers.to_owned(),
            trust: ServerTrust::Pinned(backend.fingerprint.clone()),
            user: UserId::parse(user).unwrap(),
            code,
            password: PASSWORD.to_owned(),
            device_name: format!("{name}s Rechner"),
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_posting_loses_no_acknowledged_post_and_stores_none_twice() {
    if skipped("node killed mid-posting") {
        return;
    }
    let mut backend = TestBackend::start_process(None).await.unwrap();
    let other = node_dir(&backend.data_dir());
    let b = ServerProcess::spawn(other.path(), "127.0.0.1:0").unwrap();
    let servers = format!("{},{}", backend.addr, b.addr);
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let anna = enroll_on_both(&backend, &mut admin, &servers, "P1001", "Anna").await;
    let jonas = enroll_on_both(&backend, &mut admin, &servers, "P1002", "Jonas").await;
    admin.disconnect().await;

    // Both post through node A (first in their lists) as fast as it acknowledges; A is
    // killed once some posts are acknowledged, while others are on their way.
    const EACH: usize = 40;
    let bau = GroupHandle::parse("bauamt").unwrap();
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let post = |mut client: Client, who: &'static str| {
        let (bau, acked) = (bau.clone(), acked.clone());
        tokio::spawn(async move {
            let mut receipts = BTreeMap::new();
            let mut failed = 0;
            for i in 0..EACH {
                match client.send_text(&bau, &format!("{who} {i}")).await {
                    Ok(r) => {
                        receipts.insert(format!("{who} {i}"), r.seq);
                        acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    // Not acknowledged: it stays in the outbox and goes out again with
                    // the next send (through whichever node answers).
                    Err(e) if e.is_transient() => failed += 1,
                    Err(e) => panic!("{who} {i}: {e}"),
                }
            }
            (client, receipts, failed)
        })
    };
    let (ta, tj) = (post(anna, "Anna"), post(jonas, "Jonas"));
    rathaus_tests::within("the first acknowledged posts", async {
        while acked.load(std::sync::atomic::Ordering::SeqCst) < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    backend.kill().unwrap();
    let at_kill = acked.load(std::sync::atomic::Ordering::SeqCst);
    let (mut anna, anna_acked, anna_failed) = ta.await.unwrap();
    let (mut jonas, jonas_acked, jonas_failed) = tj.await.unwrap();
    assert!(
        at_kill < 2 * EACH,
        "node A was killed before the clients were done ({at_kill} acknowledged)"
    );
    println!(
        "{at_kill} acknowledged when node A was killed; sends not acknowledged: \
         Anna {anna_failed}, Jonas {jonas_failed}"
    );

    // What was not acknowledged goes out now, through node B.
    for client in [&mut anna, &mut jonas] {
        client.sync().await.unwrap();
        assert!(client.outbox().unwrap().is_empty(), "nothing left to send");
    }

    // Read through node B: every post once, every acknowledged one at the seq its
    // receipt said, and no gap in the log.
    let rows = anna.read(&bau).await.unwrap();
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for row in &rows {
        seen.entry(row.text.clone()).or_default().push(row.seq);
    }
    for who in ["Anna", "Jonas"] {
        for i in 0..EACH {
            let text = format!("{who} {i}");
            let seqs = seen.get(&text).cloned().unwrap_or_default();
            assert_eq!(seqs.len(), 1, "{text} is stored once: {seqs:?}");
        }
    }
    for (text, seq) in anna_acked.iter().chain(&jonas_acked) {
        assert_eq!(seen[text], vec![*seq], "{text} where its receipt said");
    }
    let mut seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=2 * EACH as u64).collect::<Vec<_>>(),
        "one dense log"
    );
    anna.disconnect().await;
    jonas.disconnect().await;
    drop(b);
}

fn rathaus(profile: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(workspace_bin("rathaus").unwrap())
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env_remove("RATHAUS_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

fn json_ok(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_enrolled_with_both_nodes_posts_and_reads_through_the_second_when_the_first_is_down(
) {
    if skipped("client failover") {
        return;
    }
    let mut backend = TestBackend::start_process(None).await.unwrap();
    let other = node_dir(&backend.data_dir());
    let b = ServerProcess::spawn(other.path(), "127.0.0.1:0").unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &["bauamt"], &[])
        .await
        .unwrap();
    admin.disconnect().await;
    let profile = backend.profile_dir("anna-cli");
    let servers = format!("{},{}", backend.addr, b.addr);
    let fingerprint = backend.fingerprint.clone();
    let anna = |args: &[&str], stdin: Option<&str>| rathaus(&profile, args, stdin);

    let enrolled = json_ok(&anna(
        &[
            "--json",
            "enroll",
            "--server",
            &servers,
            "--fingerprint",
            &fingerprint,
            "--user",
            "P1001",
            "--code",
            &code,
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    assert_eq!(enrolled["user"], "P1001", "{enrolled}");
    assert_eq!(enrolled["server"], servers.as_str(), "{enrolled}");
    let sent = json_ok(&anna(&["--json", "send", "bauamt", "über Knoten A"], None));
    assert_eq!(sent["seq"], 1, "{sent}");

    // Node A stops; the same profile goes on through node B.
    backend.kill().unwrap();
    let sent = json_ok(&anna(&["--json", "send", "bauamt", "über Knoten B"], None));
    assert_eq!(sent["seq"], 2, "{sent}");
    let read = json_ok(&anna(&["--json", "read", "bauamt"], None));
    let texts: Vec<&str> = read["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["über Knoten A", "über Knoten B"], "{read}");

    // Both nodes down: the post waits in the outbox (exit code 75, "try later").
    drop(b);
    let out = anna(&["--json", "send", "bauamt", "niemand da"], None);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
}

/// Enrolls `user` with the one-time `code` at `servers`.
async fn enroll_at(backend: &TestBackend, servers: &str, user: &str, code: String) -> Client {
    Client::enroll(
        &backend.profile_dir(user),
        EnrollOptions {
            server: servers.to_owned(),
            trust: ServerTrust::Pinned(backend.fingerprint.clone()),
            user: UserId::parse(user).unwrap(),
            code,
            password: PASSWORD.to_owned(),
            device_name: format!("{user}s Rechner"),
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_on_two_nodes_commit_at_once_and_the_loser_retries_on_the_new_epoch() {
    if skipped("epoch race across nodes") {
        return;
    }
    let mut backend = TestBackend::start().await.unwrap();
    let (_other, node_b) = second_node(&backend, None).await;
    let (a, b) = (backend.addr.to_string(), node_b.local_addr().to_string());

    let mut admin = backend.admin().await.unwrap();
    let anna_code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &[], &[])
        .await
        .unwrap();
    let jonas_code = backend
        .provision(&mut admin, "P1002", "Jonas Weber", &[], &[])
        .await
        .unwrap();
    backend
        .department(&mut admin, "bauamt", &["P1001", "P1002"])
        .await
        .unwrap();
    let lena_code = backend
        .provision(&mut admin, "P1003", "Lena Koch", &["bauamt"], &[])
        .await
        .unwrap();
    let max_code = backend
        .provision(&mut admin, "P1004", "Max Ott", &["bauamt"], &[])
        .await
        .unwrap();
    // Anna and Lena on node A, Jonas and Max on node B.
    let mut anna = enroll_at(&backend, &a, "P1001", anna_code).await;
    let mut jonas = enroll_at(&backend, &b, "P1002", jonas_code).await;
    let mut lena = enroll_at(&backend, &a, "P1003", lena_code).await;
    let mut max = enroll_at(&backend, &b, "P1004", max_code).await;
    let group = GroupHandle::parse("bauamt/secret").unwrap();
    rathaus_tests::within("birth", anna.sync())
        .await
        .unwrap()
        .unwrap();
    let jonas_id = UserId::parse("P1002").unwrap();
    let approval = anna.approve(&group, &jonas_id).await.unwrap();
    assert!(
        matches!(approval, rathaus_client::Approval::Added { .. }),
        "{approval:?}"
    );
    jonas.sync().await.unwrap();
    let epoch = anna.group_code(&group).unwrap().unwrap().0;
    assert_eq!(jonas.group_code(&group).unwrap().unwrap().0, epoch);

    // Both owners commit an Add for the same epoch at once, each through their own
    // node: the database accepts one; the other client fetches it and commits again on
    // the new epoch.
    let (lena_id, max_id) = (
        UserId::parse("P1003").unwrap(),
        UserId::parse("P1004").unwrap(),
    );
    let (by_anna, by_jonas) = tokio::join!(
        anna.approve(&group, &lena_id),
        jonas.approve(&group, &max_id)
    );
    for outcome in [by_anna.unwrap(), by_jonas.unwrap()] {
        assert!(
            matches!(outcome, rathaus_client::Approval::Added { .. }),
            "both admissions land, one after the other: {outcome:?}"
        );
    }
    for client in [&mut anna, &mut jonas, &mut lena, &mut max] {
        rathaus_tests::within("sync", client.sync())
            .await
            .unwrap()
            .unwrap();
    }
    let codes: Vec<_> = [&anna, &jonas, &lena, &max]
        .iter()
        .map(|c| c.group_code(&group).unwrap().expect("a member"))
        .collect();
    assert!(
        codes.windows(2).all(|w| w[0] == w[1]),
        "every member sees the same group"
    );
    assert_eq!(codes[0].0, epoch + 2, "two commits, one per epoch");
    lena.send_text(&group, "Hallo Max").await.unwrap();
    let rows = max.read(&group).await.unwrap();
    assert!(
        rows.iter().any(|r| r.text == "Hallo Max"),
        "{:?}",
        rows.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    for c in [&mut anna, &mut jonas, &mut lena, &mut max, &mut admin] {
        c.disconnect().await;
    }
    node_b.shutdown().await;
    backend.stop().await;
}

/// `size` random bytes in `dir/name`; returns the path and their SHA-256.
fn random_file(dir: &Path, name: &str, size: usize) -> (std::path::PathBuf, [u8; 32]) {
    use rand::RngCore;
    use sha2::Digest;
    let mut bytes = vec![0u8; size];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, sha2::Sha256::digest(&bytes).into())
}

fn sha_of(path: &Path) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).into()
}

/// A bound for one transfer of a few MiB: generous, as the debug build on a busy machine
/// is slow, but a hang still fails the test.
async fn transfer<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(300), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The stored blob files (not partial uploads) in blob directory `dir`.
fn blob_names(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_through_one_node_downloads_through_another_and_an_interrupted_upload_finishes_there(
) {
    if skipped("files across nodes") {
        return;
    }
    // Two nodes on one database and one blob directory (`[files] dir`), as a cluster's
    // nodes share an NFS or CephFS mount.
    let shared = tempfile::tempdir().unwrap();
    let files = shared.path().join("rathaus-files");
    let mut backend = TestBackend::start().await.unwrap();
    backend.stop().await;
    backend.files_dir = Some(files.clone());
    backend.run().await.unwrap();
    let (other, node_b) = second_node(&backend, Some(files.clone())).await;
    let (a, b) = (backend.addr.to_string(), node_b.local_addr().to_string());

    let mut admin = backend.admin().await.unwrap();
    let anna_code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &[], &[])
        .await
        .unwrap();
    backend
        .department(&mut admin, "bauamt", &["P1001"])
        .await
        .unwrap();
    let jonas_code = backend
        .provision(&mut admin, "P1002", "Jonas Weber", &["bauamt"], &[])
        .await
        .unwrap();
    // Anna uses node A (first in her list, B after it); Jonas knows only node B.
    let mut anna = enroll_at(&backend, &format!("{a},{b}"), "P1001", anna_code).await;
    let mut jonas = enroll_at(&backend, &b, "P1002", jonas_code).await;
    let secret = GroupHandle::parse("bauamt/secret").unwrap();
    let public = GroupHandle::parse("bauamt").unwrap();
    rathaus_tests::within("birth", anna.sync())
        .await
        .unwrap()
        .unwrap();
    let approval = anna
        .approve(&secret, &UserId::parse("P1002").unwrap())
        .await
        .unwrap();
    assert!(
        matches!(approval, rathaus_client::Approval::Added { .. }),
        "{approval:?}"
    );
    jonas.sync().await.unwrap();

    // A public and a secret file up through node A, down through node B.
    let tmp = tempfile::tempdir().unwrap();
    let chunk = rathaus_protocol::blobs::BLOB_CHUNK;
    for (group, name) in [(&public, "aushang.pdf"), (&secret, "gutachten.pdf")] {
        let (path, sha) = random_file(tmp.path(), name, 3 * chunk + 1234);
        let sent = transfer(
            "upload through A",
            anna.send_file(group, &path, None, &mut |_| {}),
        )
        .await
        .unwrap();
        assert_eq!(sent.attachment.sha256, sha);
        let out = tmp.path().join(format!("jonas-{name}"));
        let got = transfer(
            "download through B",
            jonas.download(group, sent.receipt.seq, Some(&out), &mut |_| {}),
        )
        .await
        .unwrap();
        assert_eq!(got.sha256, sha, "{group}: the file arrives intact");
        assert_eq!(sha_of(&out), sha, "{group}: the file arrives intact");
        assert!(
            blob_names(&files).contains(&hex::encode(sent.attachment.blob)),
            "{group}: stored in the shared blob directory"
        );
    }
    for node in [backend.data_dir(), other.path().to_path_buf()] {
        assert!(
            blob_names(&node.join("blobs")).is_empty(),
            "no node keeps files in its own data directory"
        );
    }

    // An upload begun through node A stops after ten chunks were acknowledged, and node
    // A goes away; the same upload continues through node B where it stopped.
    let (path, sha) = random_file(tmp.path(), "bauplan.dwg", 40 * chunk);
    let reached = tokio::sync::Notify::new();
    let mut progress = |p: rathaus_client::Progress| {
        if p.done >= 10 * chunk as u64 {
            reached.notify_one();
        }
    };
    tokio::select! {
        biased;
        () = reached.notified() => {}
        sent = anna.send_file(&secret, &path, None, &mut progress) => {
            panic!("the upload finished before node A went away: {sent:?}")
        }
    }
    backend.stop().await;
    let sent = transfer(
        "upload resumed through B",
        anna.send_file(&secret, &path, None, &mut |_| {}),
    )
    .await
    .unwrap();
    let chunks = rathaus_protocol::blobs::chunk_count(rathaus_protocol::blobs::sealed_size(
        40 * chunk as u64,
    ));
    assert!(
        sent.stats.chunks_skipped >= 10 && sent.stats.chunks_moved <= chunks - 10,
        "the chunks node A stored are not sent again: {:?}",
        sent.stats
    );
    assert_eq!(sent.attachment.sha256, sha);
    let out = tmp.path().join("bauplan-jonas.dwg");
    transfer(
        "download through B",
        jonas.download(&secret, sent.receipt.seq, Some(&out), &mut |_| {}),
    )
    .await
    .unwrap();
    assert_eq!(sha_of(&out), sha, "the resumed upload arrives intact");
    assert!(
        std::fs::read_dir(files.join("partial"))
            .unwrap()
            .next()
            .is_none(),
        "no partial upload is left behind"
    );

    for c in [&mut anna, &mut jonas, &mut admin] {
        c.disconnect().await;
    }
    node_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_published_through_one_node_is_pushed_to_a_colleague_on_another() {
    if skipped("announcement push across nodes") {
        return;
    }
    let mut backend = TestBackend::start().await.unwrap();
    let (_other, node_b) = second_node(&backend, None).await;
    let b = node_b.local_addr().to_string();

    let mut admin = backend.admin().await.unwrap();
    let anna_code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &[], &[])
        .await
        .unwrap();
    let mut anna = enroll_at(&backend, &b, "P1001", anna_code).await;
    let mut pushed = anna.subscribe().await.unwrap();

    // The administrator (on node A) publishes; Anna is connected to node B only. The
    // entry is written by the server itself, not posted, and still reaches her at once,
    // without a fetch.
    admin
        .announce_publish(rathaus_client::AnnouncementDraft {
            title: "Wartung heute Abend".into(),
            text: "Ab 18 Uhr ist das Netz eine Stunde lang weg.".into(),
            requires_ack: false,
            expires_at_ms: None,
        })
        .await
        .unwrap();
    let rows = rathaus_tests::within("the announcement pushed through node B", async {
        loop {
            let event = pushed.next().await.unwrap();
            let rows = anna.apply_event(&event).await.unwrap();
            if !rows.is_empty() {
                return rows;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(rows[0].group, "announcements");
    assert!(
        rows[0].text.starts_with("Wartung heute Abend"),
        "{}",
        rows[0].text
    );
    drop(pushed);
    for c in [&mut anna, &mut admin] {
        c.disconnect().await;
    }
    node_b.shutdown().await;
    backend.stop().await;
}

/// Waits for `sub`'s connection to end, skipping the events that come before; the error
/// it ended with.
async fn ended(
    what: &str,
    sub: &mut rathaus_client::net::Subscription,
) -> rathaus_client::ClientError {
    // Far below the nodes' periodic sweep of their sessions, so it is the other node's
    // notice that ends the session, not the sweep.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Err(e) = sub.next().await {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the session on the other node is still open"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offboarding_and_a_reset_through_one_node_end_the_sessions_on_another_at_once() {
    if skipped("sessions ended across nodes") {
        return;
    }
    let mut backend = TestBackend::start().await.unwrap();
    let (_other, node_b) = second_node(&backend, None).await;
    let b = node_b.local_addr().to_string();

    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let mut anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();
    let mut phones = BTreeMap::new();
    for (user, name) in [("P1002", "Jonas Weber"), ("P1003", "Lena Roth")] {
        let code = backend
            .provision(&mut admin, user, name, &["bauamt"], &[])
            .await
            .unwrap();
        let mut phone = enroll_at(&backend, &b, user, code).await;
        let sub = phone.subscribe().await.unwrap();
        phones.insert(user, (phone, sub));
    }
    // Both read the department's posts through node B.
    anna.send_text(&GroupHandle::parse("bauamt").unwrap(), "Guten Morgen")
        .await
        .unwrap();
    for (user, (phone, sub)) in &mut phones {
        let rows = rathaus_tests::within("the post pushed through node B", async {
            loop {
                let event = sub.next().await.unwrap();
                let rows = phone.apply_event(&event).await.unwrap();
                if !rows.is_empty() {
                    return rows;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(rows[0].text, "Guten Morgen", "{user}");
    }

    // The administrator works through node A; the sessions on node B end all the same,
    // with the reason a phone shows.
    admin
        .admin_remove_user(UserId::parse("P1002").unwrap())
        .await
        .unwrap();
    let (mut jonas, mut sub) = phones.remove("P1002").unwrap();
    let e = ended("offboarding", &mut sub).await;
    assert!(
        matches!(e, rathaus_client::ClientError::AccountRemoved),
        "{e}"
    );
    drop(sub);
    jonas.disconnect().await;
    let e = jonas.whoami().await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(rathaus_protocol::ErrorCode::Unauthenticated),
        "{e}"
    );

    admin
        .admin_reset_user(UserId::parse("P1003").unwrap())
        .await
        .unwrap();
    let (mut lena, mut sub) = phones.remove("P1003").unwrap();
    let e = ended("a reset", &mut sub).await;
    assert!(
        matches!(e, rathaus_client::ClientError::AccountRemoved),
        "{e}"
    );
    drop(sub);
    lena.disconnect().await;
    // Node B counts the two sessions it ended for the other node, for its operator.
    let metrics = node_b.metrics_addr().unwrap();
    let counted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n =
                rathaus_tests::metric_at(metrics, "rathaus_sessions_ended_by_other_nodes_total")
                    .unwrap()
                    .unwrap_or(0.0);
            if n >= 2.0 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("node B did not count the sessions it ended");
    assert_eq!(counted, 2.0);

    for c in [&mut anna, &mut admin] {
        c.disconnect().await;
    }
    node_b.shutdown().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_taken_through_one_node_is_refused_on_another_whose_session_kept_the_record() {
    if skipped("role change across nodes") {
        return;
    }
    let mut backend = TestBackend::start().await.unwrap();
    let (_other, node_b) = second_node(&backend, None).await;
    let b = node_b.local_addr().to_string();
    let mut admin = backend.admin().await.unwrap();
    let code = backend
        .provision(
            &mut admin,
            "P1001",
            "Anna Berg",
            &[],
            &[rathaus_protocol::Role::Admin],
        )
        .await
        .unwrap();
    let mut anna = enroll_at(&backend, &b, "P1001", code).await;
    // Her session on node B has read (and keeps) her record with the role.
    assert!(anna.admin_users().await.is_ok());

    admin
        .admin_set_roles(
            UserId::parse("P1001").unwrap(),
            vec![],
            vec![rathaus_protocol::Role::Admin],
        )
        .await
        .unwrap();
    // Node B hears of the change and reads her record again; a lost notice would still
    // be bounded by how long node B keeps a record (one second).
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match anna.admin_users().await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("node B still lets her list the users");
    assert_eq!(
        refused.code(),
        Some(rathaus_protocol::ErrorCode::Forbidden),
        "{refused}"
    );
    for c in [&mut anna, &mut admin] {
        c.disconnect().await;
    }
    node_b.shutdown().await;
    backend.stop().await;
}
