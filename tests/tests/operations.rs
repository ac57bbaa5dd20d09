//! End-to-end tests of running the server as a data centre does (DESIGN §11): backup under
//! concurrent posting and restore into a new directory, metrics and health that carry no
//! content, the break-glass admin code, the configuration file and `--version`.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use rathaus_client::{Approval, RowKind};
use rathaus_protocol::{ErrorCode, GroupHandle, Request, UserId};
use rathaus_server::{backup, RunOptions};
use rathaus_tests::{contains, within, workspace_bin, Secret, TestBackend};

fn group(handle: &str) -> GroupHandle {
    GroupHandle::parse(handle).unwrap()
}

fn uid(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

fn canary(what: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{what}-{hex}")
}

/// Restarts the in-process server of `backend` with a metrics listener on loopback.
async fn restart_with_metrics(backend: &mut TestBackend) -> SocketAddr {
    backend.stop().await;
    let mut options = RunOptions::new(backend.data_dir());
    options.listen = Some(backend.addr);
    options.clock = backend.clock.clone();
    options.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = rathaus_server::start(options).await.unwrap();
    let metrics = server.metrics_addr().expect("a metrics listener");
    backend.server = Some(server);
    metrics
}

/// One HTTP GET; returns the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the first sample line of `metric` whose labels contain all of `labels`.
fn sample(metrics: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split([' ', '{'])
                .next()
                .is_some_and(|name| name == metric)
        })
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_concurrent_posting_restores_every_acknowledged_post() {
    if rathaus_tests::skip_on_postgres("backup and restore of the data directory's database") {
        return;
    }
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let bauamt = group("bauamt");
    let secret = group("bauamt/secret");
    let secret_canary = canary("geheim");
    for i in 0..10 {
        anna.send_text(&bauamt, &format!("öffentlich {i}"))
            .await
            .unwrap();
    }
    anna.send_text(&secret, &secret_canary).await.unwrap();
    jonas
        .send_text(&secret, "vertraulich vorher")
        .await
        .unwrap();

    // A colleague posts without pause while the backup runs; the posts acknowledged
    // before the backup began must all be in it.
    let poster_code = backend
        .provision(&mut admin, "P1004", "Paul Schmidt", &["bauamt"], &[])
        .await
        .unwrap();
    let mut poster = backend.enroll("P1004", &poster_code).await.unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let posting = {
        let (started, done, bauamt) = (started.clone(), done.clone(), bauamt.clone());
        tokio::spawn(async move {
            let mut before = Vec::new();
            let mut during = 0usize;
            for i in 0..5000 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let backup_began = started.load(Ordering::SeqCst);
                let text = format!("laufend {i}");
                poster.send_text(&bauamt, &text).await.unwrap();
                if backup_began {
                    during += 1;
                } else {
                    // Acknowledged, and the backup had not begun when it was sent.
                    before.push(text);
                }
                if !backup_began && i >= 20 {
                    started.store(true, Ordering::SeqCst);
                }
            }
            (poster, before, during)
        })
    };
    while !started.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let file = backend.data.path().join("nightly.rathaus-backup");
    let manifest = {
        let (data, file) = (backend.data_dir(), file.clone());
        tokio::task::spawn_blocking(move || backup::backup(&data, &file))
            .await
            .unwrap()
            .unwrap()
    };
    done.store(true, Ordering::SeqCst);
    let (mut poster, before, during) = posting.await.unwrap();
    assert!(manifest.online, "taken from the running server");
    assert!(before.len() > 20, "{} posts before", before.len());
    eprintln!(
        "backup: {} records, {} bytes; {} posts acknowledged before it, {during} while it ran",
        manifest.records,
        std::fs::metadata(&file).unwrap().len(),
        before.len()
    );

    let verified = backup::verify(&file).unwrap();
    assert_eq!(verified, manifest);
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        !contains(&bytes, secret_canary.as_bytes()),
        "the backup holds a secret group as ciphertext only"
    );
    assert!(
        contains(&bytes, "öffentlich 3".as_bytes()),
        "public posts are server-readable"
    );
    // A damaged copy is refused.
    let mut damaged = bytes.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x55;
    let damaged_file = backend.data.path().join("damaged.rathaus-backup");
    std::fs::write(&damaged_file, &damaged).unwrap();
    assert!(backup::verify(&damaged_file).is_err());

    // The machine is lost: wipe the data directory, restore into a new one, serve it on
    // the same address.
    backend.stop().await;
    std::fs::remove_dir_all(backend.data_dir()).unwrap();
    let restored = backup::restore(&file, &backend.data_dir()).unwrap();
    assert_eq!(restored.records, manifest.records);
    assert!(
        backup::restore(&file, &backend.data_dir()).is_err(),
        "restore refuses a directory that holds a server"
    );
    backend.run().await.unwrap();
    for c in [&mut admin, &mut anna, &mut jonas, &mut poster] {
        c.disconnect().await;
    }

    // Anna had not read the group since before the backup: what she sees now is the
    // restored log.
    let rows = within("read public", anna.read(&bauamt))
        .await
        .unwrap()
        .unwrap();
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let earlier: Vec<String> = (0..10).map(|i| format!("öffentlich {i}")).collect();
    for expected in before.iter().chain(&earlier) {
        assert!(
            texts.contains(&expected.as_str()),
            "{expected} lost by backup/restore"
        );
    }
    // The server continues the restored log, in a new generation: posts acknowledged
    // after the backup may have been shown under the numbers after its head.
    let head = rows.iter().map(|r| r.seq).max().unwrap();
    let receipt = anna
        .send_text(&bauamt, "nach der Wiederherstellung")
        .await
        .unwrap();
    assert!(head < rathaus_protocol::log::first_seq(1), "{head}");
    assert_eq!(receipt.seq, rathaus_protocol::log::first_seq(1));

    // The secret group keeps working: old messages, new messages, a new member.
    let rows = within("jonas reads", jonas.read(&secret))
        .await
        .unwrap()
        .unwrap();
    assert!(rows.iter().any(|r| r.text == secret_canary), "{rows:?}");
    anna.send_text(&secret, "vertraulich nachher")
        .await
        .unwrap();
    let code = backend
        .provision(&mut admin, "P1003", "Lena Vogel", &["bauamt"], &[])
        .await
        .unwrap();
    let mut lena = backend.enroll("P1003", &code).await.unwrap();
    within("anna syncs", anna.sync()).await.unwrap().unwrap();
    let approval = within("approve lena", anna.approve(&secret, &uid("P1003")))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(approval, Approval::Added { .. }), "{approval:?}");
    within("lena joins", lena.sync()).await.unwrap().unwrap();
    lena.send_text(&secret, "hallo zusammen").await.unwrap();
    let texts: Vec<String> = within("jonas reads again", jonas.read(&secret))
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|r| r.text)
        .collect();
    for expected in [
        "vertraulich vorher",
        "vertraulich nachher",
        "hallo zusammen",
    ] {
        assert!(texts.iter().any(|t| t == expected), "{expected}: {texts:?}");
    }
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_carry_no_message_content() {
    let mut backend = TestBackend::start().await.unwrap();
    let metrics = restart_with_metrics(&mut backend).await;
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }
    let public_canary = canary("oeffentlich");
    let secret_canary = canary("geheim");
    anna.send_text(&group("bauamt"), &public_canary)
        .await
        .unwrap();
    anna.send_text(&group("bauamt/secret"), &secret_canary)
        .await
        .unwrap();
    jonas.read(&group("bauamt/secret")).await.unwrap();

    // A login with a wrong enrollment code happens before any session: counted too.
    assert!(backend
        .enroll("P1003", "AAAA-BBBB-CCCC-DDDD-EEEE")
        .await
        .is_err());

    let (status, body) = tokio::task::spawn_blocking(move || http_get(metrics, "/metrics"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        sample(
            &body,
            "rathaus_prelogin_requests_total",
            &["kind=\"Hello\"", "code=\"ok\""]
        )
        .unwrap_or(0.0)
            >= 3.0,
        "the three logins are counted: {body}"
    );
    let failed_enrollments: f64 = body
        .lines()
        .filter(|l| {
            l.starts_with("rathaus_prelogin_requests_total{")
                && l.contains("kind=\"Enroll\"")
                && !l.contains("code=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(failed_enrollments >= 1.0, "the failed enrollment: {body}");
    assert!(sample(&body, "rathaus_refused_frames_total", &[]).is_some());
    for secret_thing in [
        public_canary.as_str(),
        secret_canary.as_str(),
        "P1001",
        "P1002",
        "Anna",
        "bauamt",
    ] {
        assert!(
            !body.contains(secret_thing),
            "{secret_thing} appears in /metrics"
        );
    }
    assert!(sample(&body, "rathaus_posts_accepted_total", &[]).unwrap() >= 2.0);
    assert!(sample(&body, "rathaus_commits_accepted_total", &[]).unwrap() >= 1.0);
    assert!(
        sample(
            &body,
            "rathaus_requests_total",
            &["kind=\"Post\"", "code=\"ok\""]
        )
        .unwrap()
            >= 2.0
    );
    assert!(sample(&body, "rathaus_flush_seconds_count", &[]).unwrap() >= 1.0);
    assert!(sample(&body, "rathaus_flush_batch_writes_count", &[]).unwrap() >= 1.0);
    assert!(sample(&body, "rathaus_connections", &["state=\"authenticated\""]).unwrap() >= 1.0);
    assert!(sample(&body, "rathaus_store_bytes", &[]).unwrap() > 0.0);
    assert!(sample(&body, "rathaus_removal_proposals_pending", &[]).is_some());

    for (path, expected) in [("/healthz", 200), ("/readyz", 200), ("/nothing", 404)] {
        let (status, _) = tokio::task::spawn_blocking(move || http_get(metrics, path))
            .await
            .unwrap();
        assert_eq!(status, expected, "{path}");
    }
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_admin_code_works_running_and_stopped_and_is_audited() {
    let mut backend = TestBackend::start().await.unwrap();
    let (admin, mut anna, _jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    anna.send_text(&group("bauamt/secret"), "nur für uns")
        .await
        .unwrap();
    // Every admin device is lost.
    drop(admin);

    // Server running: the command goes through DIR/ops.sock.
    let code = backup::admin_code(&backend.data_dir(), &uid("admin"))
        .await
        .unwrap();
    assert_eq!(code.action, "issued");
    let mut admin = backend
        .enroll("admin", &code.enrollment_code)
        .await
        .unwrap();
    assert!(
        admin.read(&group("bauamt/secret")).await.is_err(),
        "a break-glass admin reads nothing secret"
    );
    let fetch = Request::Fetch {
        group: group("bauamt/secret"),
        since: 0,
        limit: 100,
    };
    match admin.request(&fetch).await {
        Err(e) => assert!(
            matches!(e.code(), Some(ErrorCode::Forbidden | ErrorCode::NotFound)),
            "{e}"
        ),
        Ok(r) => panic!("the secret log answered for a break-glass admin: {r:?}"),
    }
    let (entries, broken) = admin.admin_audit_verify().await.unwrap();
    assert!(broken.is_none(), "the audit chain holds");
    assert!(entries
        .iter()
        .any(|e| e.action == "admin.break-glass" && e.target == "admin"));

    // Server stopped: the command opens the database itself.
    backend.stop().await;
    let code = backup::admin_code(&backend.data_dir(), &uid("notfall"))
        .await
        .unwrap();
    assert_eq!(code.action, "created");
    assert!(
        backup::admin_code(&backend.data_dir(), &uid("P1001"))
            .await
            .is_ok_and(|c| c.action == "granted"),
        "an existing colleague can be made admin"
    );
    backend.run().await.unwrap();
    let mut notfall = backend
        .enroll("notfall", &code.enrollment_code)
        .await
        .unwrap();
    let (entries, broken) = notfall.admin_audit_verify().await.unwrap();
    assert!(broken.is_none(), "the audit chain holds");
    let glass: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "admin.break-glass")
        .map(|e| e.target.as_str())
        .collect();
    assert_eq!(glass, ["admin", "notfall", "P1001"]);
    assert!(
        backend
            .enroll("notfall", &code.enrollment_code)
            .await
            .is_err(),
        "the code is single use"
    );
    backend.stop().await;
}

#[test]
fn config_file_flags_version_and_offline_backup_through_the_binary() {
    let server = workspace_bin("rathaus-server").unwrap();
    let cli = workspace_bin("rathaus").unwrap();
    for bin in [&server, &cli] {
        let out = Command::new(bin).arg("--version").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && text.contains(&format!(
                    "(protocol {})",
                    rathaus_protocol::PROTOCOL_VERSION
                )),
            "{text}"
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let init = Command::new(&server)
        .args(["init", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(init.status.success());

    // An unknown key stops the server with the key and its line.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "data = {:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n",
            data
        ),
    )
    .unwrap();
    let out = Command::new(&server)
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("lisen") && err.contains("line 4"), "{err}");

    // A good file: JSON logs, a metrics listener, a flag overriding the file's limit.
    let good = tmp.path().join("server.toml");
    std::fs::write(
        &good,
        format!(
            "data = {:?}\nlisten = \"127.0.0.1:0\"\nstore = \"sled\"\n[limits]\nmax_connections = 50\nmax_upload_bytes = 4096\n[log]\nformat = \"json\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            data
        ),
    )
    .unwrap();
    let log = tmp.path().join("server.log");
    let mut child = Command::new(&server)
        .args(["run", "--max-connections", "70", "--config"])
        .arg(&good)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        lines.push(line);
    }
    assert!(lines[0].starts_with("listening on 127.0.0.1:"), "{lines:?}");
    let metrics: SocketAddr = lines[1]
        .trim()
        .strip_prefix("metrics on http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(http_get(metrics, "/readyz").0, 200);
    let started = std::fs::read_to_string(&log).unwrap();
    let ready = started
        .lines()
        .find(|l| l.contains("rathaus-server ready"))
        .unwrap_or_else(|| panic!("no start line in {started}"));
    let ready: serde_json::Value = serde_json::from_str(ready).unwrap();
    let fields = &ready["fields"];
    assert_eq!(fields["max_connections"], 70, "the flag overrides the file");
    assert_eq!(fields["max_upload_bytes"], 4096);
    assert_eq!(fields["store"], "sled");
    assert_eq!(fields["org"], "Rathaus");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(
        child.wait().unwrap().success(),
        "SIGTERM stops it gracefully"
    );

    // Backup of the stopped server, verify, restore, through the binary.
    let file = tmp.path().join("backup.tar");
    let json = |out: std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let made = json(
        Command::new(&server)
            .args(["backup", "--json", "--data"])
            .arg(&data)
            .arg("--to")
            .arg(&file)
            .output()
            .unwrap(),
    );
    assert_eq!(made["online"], false);
    let checked = json(
        Command::new(&server)
            .args(["verify-backup", "--json"])
            .arg(&file)
            .output()
            .unwrap(),
    );
    assert_eq!(checked, made);
    let target = tmp.path().join("restored");
    json(
        Command::new(&server)
            .args(["restore", "--json", "--from"])
            .arg(&file)
            .arg("--data")
            .arg(&target)
            .output()
            .unwrap(),
    );
    for name in ["config.json", "cert.der", "key.der", "removal.key", "db"] {
        assert!(target.join(name).exists(), "{name} restored");
    }
    assert_eq!(
        std::fs::read(target.join("key.der")).unwrap(),
        std::fs::read(data.join("key.der")).unwrap()
    );
    assert_private(&target);
}

fn assert_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let mode = std::fs::metadata(dir.join("key.der"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

/// The operator copies the stopped server's data directory aside and starts it again.
async fn take_copy(backend: &mut TestBackend) -> tempfile::TempDir {
    backend.stop().await;
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&backend.data_dir(), copy.path());
    backend.run().await.unwrap();
    copy
}

/// The operator stops the server, puts the older copy back by hand and starts it.
async fn put_back(backend: &mut TestBackend, copy: &tempfile::TempDir) {
    backend.stop().await;
    std::fs::remove_dir_all(backend.data_dir()).unwrap();
    copy_dir(copy.path(), &backend.data_dir());
    backend.run().await.unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Texts of the timeline rows, by seq (notices have the seq they follow).
fn texts(rows: &[rathaus_client::store::TimelineRow]) -> Vec<(u64, String, String)> {
    rows.iter()
        .map(|r| (r.seq, r.kind.as_str().to_owned(), r.text.clone()))
        .collect()
}

/// An operator puts back an older copy of the data directory (copy, more posts, copy
/// back). The server's log then ends below what clients have shown and gives those seqs
/// to new posts. Clients notice: the server's new posts are shown (not hidden behind the
/// old ones with the same number), what the server forgot stays on the device and a
/// warning says so, the author's forgotten public posts are sent again, and the secret
/// group goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_notice_a_server_put_back_to_an_older_copy() {
    if rathaus_tests::skip_on_postgres("an older copy of the data directory put back") {
        return;
    }
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let bauamt = group("bauamt");
    let secret = group("bauamt/secret");
    anna.send_text(&bauamt, "vor der Kopie").await.unwrap();
    jonas.send_text(&secret, "geheim vorher").await.unwrap();
    within("anna sync", anna.sync()).await.unwrap().unwrap();
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }

    // The copy.
    let copy = take_copy(&mut backend).await;

    // Posts the copy does not hold, seen by everyone.
    backend.clock.advance(Duration::from_secs(5));
    anna.send_text(&bauamt, "verloren eins").await.unwrap();
    anna.send_text(&bauamt, "verloren zwei").await.unwrap();
    anna.send_text(&secret, "geheim verloren").await.unwrap();
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    let seen = texts(&jonas.read(&bauamt).await.unwrap());
    assert!(
        seen.iter().any(|(_, _, t)| t == "verloren zwei"),
        "{seen:?}"
    );
    let forgotten_seq = seen
        .iter()
        .find(|(_, _, t)| t == "verloren eins")
        .map(|(s, _, _)| *s)
        .unwrap();
    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }

    // The copy put back.
    put_back(&mut backend, &copy).await;

    // A new post takes the number the forgotten one had.
    backend.clock.advance(Duration::from_secs(5));
    let receipt = admin
        .send_text(&bauamt, "neu nach dem Zurückspielen")
        .await
        .unwrap();
    assert_eq!(
        receipt.seq, forgotten_seq,
        "the restored server reuses the seq"
    );
    jonas
        .send_text(&secret, "geheim nach dem Zurückspielen")
        .await
        .unwrap();

    // Jonas sees the new post, a warning, and keeps nothing twice.
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    let rows = texts(&jonas.read(&bauamt).await.unwrap());
    assert!(
        rows.iter()
            .any(|(s, _, t)| *s == forgotten_seq && t == "neu nach dem Zurückspielen"),
        "the server's new post is shown under its number: {rows:?}"
    );
    assert!(
        !rows
            .iter()
            .any(|(_, k, t)| k == "text" && t.starts_with("verloren")),
        "what the server forgot is set aside, not shown as if still there: {rows:?}"
    );
    let warning = rows
        .iter()
        .find(|(_, k, t)| k == "warning" && t.contains("restored"))
        .unwrap_or_else(|| panic!("a warning about the restore: {rows:?}"));
    assert!(
        warning.2.contains("verloren eins"),
        "it lists what the server forgot: {}",
        warning.2
    );

    // Anna, the author: her forgotten public posts go out again.
    let report = within("anna sync", anna.sync()).await.unwrap().unwrap();
    assert_eq!(
        report.sent, 2,
        "both forgotten posts are sent again: {report:?}"
    );
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    let rows = texts(&jonas.read(&bauamt).await.unwrap());
    for text in ["verloren eins", "verloren zwei"] {
        let n = rows
            .iter()
            .filter(|(s, k, t)| k == "text" && t == text && *s > forgotten_seq)
            .count();
        assert_eq!(n, 1, "{text} is back on the server, once: {rows:?}");
    }

    // The secret group: Anna sees Jonas' new message, which took the seq of her
    // forgotten one, and both can still write to each other.
    let rows = texts(&anna.read(&secret).await.unwrap());
    assert!(
        rows.iter()
            .any(|(_, _, t)| t.contains("geheim nach dem Zurückspielen")),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|(_, k, t)| k == "warning" && t.contains("restored")),
        "{rows:?}"
    );
    anna.send_text(&secret, "geheim weiter").await.unwrap();
    let rows = texts(&jonas.read(&secret).await.unwrap());
    assert!(
        rows.iter().any(|(_, _, t)| t.contains("geheim weiter")),
        "{rows:?}"
    );
    backend.stop().await;
}

/// The copy put back lost a commit (a colleague admitted after the copy): the server's
/// secret group is at an earlier epoch than its members, which used to answer every
/// message with `StaleEpoch` for good. The owner's device repairs the server's copy from
/// its own state (checked by the server); then everyone writes again. A member who is not
/// an owner may not repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_group_behind_its_members_is_repaired_by_an_owner() {
    if rathaus_tests::skip_on_postgres("an older copy of the data directory put back") {
        return;
    }
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let secret = group("bauamt/secret");
    anna.send_text(&secret, "vor der Kopie").await.unwrap();
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    let paul_code = backend
        .provision(&mut admin, "P1004", "Paul Schmidt", &["bauamt"], &[])
        .await
        .unwrap();
    let mut paul = backend.enroll("P1004", &paul_code).await.unwrap();
    within("paul sync", paul.sync()).await.unwrap().unwrap();
    for c in [&mut admin, &mut anna, &mut jonas, &mut paul] {
        c.disconnect().await;
    }

    let copy = take_copy(&mut backend).await;

    // After the copy: Paul is admitted (a commit the copy does not hold).
    backend.clock.advance(Duration::from_secs(5));
    within("approve", anna.approve(&secret, &uid("P1004")))
        .await
        .unwrap()
        .unwrap();
    within("paul joins", paul.sync()).await.unwrap().unwrap();
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    for c in [&mut admin, &mut anna, &mut jonas, &mut paul] {
        c.disconnect().await;
    }

    put_back(&mut backend, &copy).await;
    backend.clock.advance(Duration::from_secs(5));

    // Jonas is no owner: his message cannot go out, and he may not repair.
    let refused = jonas.send_text(&secret, "von Jonas").await;
    assert!(
        matches!(&refused, Err(e) if e.code() == Some(ErrorCode::StaleEpoch)),
        "{refused:?}"
    );
    let repair = Request::RepairSecretGroup {
        group: secret.clone(),
        group_info: vec![0; 16],
        ratchet_tree: vec![0; 16],
    };
    match jonas.request(&repair).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}"),
        Ok(r) => panic!("a member who is no owner repaired the group: {r:?}"),
    }

    // Anna, the owner: her message goes out, repairing the server's copy on the way.
    within("anna sends", anna.send_text(&secret, "nach der Reparatur"))
        .await
        .unwrap()
        .unwrap();
    let rows = texts(&anna.read(&secret).await.unwrap());
    assert!(
        rows.iter()
            .any(|(_, k, t)| k == "warning" && t.contains("brought it up to date")),
        "{rows:?}"
    );
    for member in [&mut jonas, &mut paul] {
        let rows = texts(&member.read(&secret).await.unwrap());
        assert!(
            rows.iter()
                .any(|(_, _, t)| t.contains("nach der Reparatur")),
            "{rows:?}"
        );
    }
    within("jonas sends", jonas.send_text(&secret, "von Jonas, danach"))
        .await
        .unwrap()
        .unwrap();
    let rows = texts(&paul.read(&secret).await.unwrap());
    assert!(
        rows.iter().any(|(_, _, t)| t.contains("von Jonas, danach")),
        "{rows:?}"
    );
    backend.stop().await;
}

/// Every colleague's `#N` of one group is the same post, before and after a restore.
fn same_numbers(a: &[(u64, String, String)], b: &[(u64, String, String)]) {
    for (seq, kind, text) in a.iter().filter(|(_, k, _)| k == "text") {
        if let Some((_, _, other)) = b.iter().find(|(s, k, _)| s == seq && k == kind) {
            assert_eq!(
                text, other,
                "#{seq} is another post on each side: {a:?} {b:?}"
            );
        }
    }
}

/// A backup, posts everyone saw, then the restore: the restored server gives none of
/// those posts' numbers to a new post, even to one written before anybody who saw them is
/// back. The colleagues who saw them are told what the server forgot; the author's
/// forgotten posts go out again under new numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_server_never_gives_a_seq_twice() {
    if rathaus_tests::skip_on_postgres("backup and restore of the data directory's database") {
        return;
    }
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let bauamt = group("bauamt");
    let secret = group("bauamt/secret");
    anna.send_text(&bauamt, "vor der Sicherung").await.unwrap();
    jonas.send_text(&secret, "geheim vorher").await.unwrap();
    within("anna sync", anna.sync()).await.unwrap().unwrap();
    within("admin sync", admin.sync()).await.unwrap().unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rathaus.backup");
    {
        let (data, file) = (backend.data_dir(), file.clone());
        tokio::task::spawn_blocking(move || backup::backup(&data, &file))
            .await
            .unwrap()
            .unwrap();
    }

    // After the backup: posts Jonas sees.
    backend.clock.advance(Duration::from_secs(5));
    let lost = anna.send_text(&bauamt, "verloren eins").await.unwrap();
    anna.send_text(&bauamt, "verloren zwei").await.unwrap();
    anna.send_text(&secret, "geheim verloren").await.unwrap();
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }

    backend.stop().await;
    std::fs::remove_dir_all(backend.data_dir()).unwrap();
    backup::restore(&file, &backend.data_dir()).unwrap();
    backend.run().await.unwrap();
    backend.clock.advance(Duration::from_secs(5));

    // The administrator, who never saw the lost posts, writes first.
    let receipt = admin
        .send_text(&bauamt, "nach dem Zurückspielen")
        .await
        .unwrap();
    assert_ne!(
        receipt.seq, lost.seq,
        "a forgotten post's number given again"
    );
    assert_eq!(receipt.seq, rathaus_protocol::log::first_seq(1));
    jonas
        .send_text(&secret, "geheim nach dem Zurückspielen")
        .await
        .unwrap();

    // Jonas is told what the server forgot, and sees the new post.
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    let rows = texts(&jonas.read(&bauamt).await.unwrap());
    assert!(
        rows.iter()
            .any(|(s, _, t)| *s == receipt.seq && t == "nach dem Zurückspielen"),
        "{rows:?}"
    );
    let warning = rows
        .iter()
        .find(|(_, k, t)| k == "warning" && t.contains("restored"))
        .unwrap_or_else(|| panic!("a warning about the restore: {rows:?}"));
    assert!(warning.2.contains("verloren eins"), "{}", warning.2);

    // Anna's forgotten posts go out again, once each, after the new one.
    let report = within("anna sync", anna.sync()).await.unwrap().unwrap();
    assert_eq!(report.sent, 2, "{report:?}");
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    within("admin sync", admin.sync()).await.unwrap().unwrap();
    let jonas_rows = texts(&jonas.read(&bauamt).await.unwrap());
    let admin_rows = texts(&admin.read(&bauamt).await.unwrap());
    for text in ["verloren eins", "verloren zwei"] {
        for rows in [&jonas_rows, &admin_rows] {
            let n = rows
                .iter()
                .filter(|(s, k, t)| k == "text" && t == text && *s > receipt.seq)
                .count();
            assert_eq!(n, 1, "{text} is back on the server, once: {rows:?}");
        }
    }
    same_numbers(&jonas_rows, &admin_rows);
    same_numbers(&texts(&anna.read(&bauamt).await.unwrap()), &admin_rows);

    // The secret group goes on in the new generation.
    let rows = texts(&anna.read(&secret).await.unwrap());
    assert!(
        rows.iter()
            .any(|(_, _, t)| t.contains("geheim nach dem Zurückspielen")),
        "{rows:?}"
    );
    anna.send_text(&secret, "geheim weiter").await.unwrap();
    let rows = texts(&jonas.read(&secret).await.unwrap());
    assert!(
        rows.iter().any(|(_, _, t)| t.contains("geheim weiter")),
        "{rows:?}"
    );
    backend.stop().await;
}

/// A copy of the data directory put back by hand: the server cannot know it is older,
/// until the first colleague who saw more comes back and asks for entries after its
/// head. From then on no forgotten number is given again, in any group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_put_back_by_hand_moves_on_once_a_reader_is_ahead() {
    if rathaus_tests::skip_on_postgres("an older copy of the data directory put back") {
        return;
    }
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let bauamt = group("bauamt");
    anna.send_text(&bauamt, "vor der Kopie").await.unwrap();
    within("admin sync", admin.sync()).await.unwrap().unwrap();
    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }
    let copy = take_copy(&mut backend).await;

    backend.clock.advance(Duration::from_secs(5));
    let lost = anna.send_text(&bauamt, "verloren").await.unwrap();
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }
    put_back(&mut backend, &copy).await;
    backend.clock.advance(Duration::from_secs(5));

    // Jonas, who saw the lost post, is back first.
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    let rows = texts(&jonas.read(&bauamt).await.unwrap());
    assert!(
        rows.iter()
            .any(|(_, k, t)| k == "warning" && t.contains("verloren")),
        "{rows:?}"
    );
    let receipt = admin.send_text(&bauamt, "danach").await.unwrap();
    assert_ne!(receipt.seq, lost.seq, "the forgotten number given again");
    assert_eq!(receipt.seq, rathaus_protocol::log::first_seq(1));
    // Every log, not only the one the reader was ahead in.
    let secret_receipt = jonas
        .send_text(&group("bauamt/secret"), "geheim danach")
        .await
        .unwrap();
    assert!(
        secret_receipt.seq >= rathaus_protocol::log::first_seq(1),
        "{secret_receipt:?}"
    );
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    within("anna sync", anna.sync()).await.unwrap().unwrap();
    within("admin sync", admin.sync()).await.unwrap().unwrap();
    let jonas_rows = texts(&jonas.read(&bauamt).await.unwrap());
    let admin_rows = texts(&admin.read(&bauamt).await.unwrap());
    same_numbers(&jonas_rows, &admin_rows);
    same_numbers(&texts(&anna.read(&bauamt).await.unwrap()), &admin_rows);
    assert_eq!(
        jonas_rows
            .iter()
            .filter(|(_, k, t)| k == "text" && t == "verloren")
            .count(),
        1,
        "the author's lost post is back once: {jonas_rows:?}"
    );

    // Once per run: another reader ahead does not move the generation on again.
    backend.stop().await;
    backend.run().await.unwrap();
    let again = admin.send_text(&bauamt, "nach dem Neustart").await.unwrap();
    assert_eq!(
        again.seq,
        receipt.seq + 2,
        "the log counts on in its generation"
    );
    backend.stop().await;
}

/// After a restore an owner repairs the secret group from its own state, but a member who
/// had not yet processed the lost commit cannot catch up: the commit is gone. Their device
/// says so (a `MissedChanges` error naming the way back, a warning), instead of failing
/// with `StaleEpoch` for good, and the way back works: the administrator resets the
/// member's devices, the old device's leaf is removed, the member enrolls again and an
/// owner admits the new device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_missed_lost_changes_is_told_and_can_be_admitted_again() {
    if rathaus_tests::skip_on_postgres("an older copy of the data directory put back") {
        return;
    }
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let secret = group("bauamt/secret");
    anna.send_text(&secret, "vor der Kopie").await.unwrap();
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    let paul_code = backend
        .provision(&mut admin, "P1004", "Paul Schmidt", &["bauamt"], &[])
        .await
        .unwrap();
    let mut paul = backend.enroll("P1004", &paul_code).await.unwrap();
    within("paul sync", paul.sync()).await.unwrap().unwrap();
    for c in [&mut admin, &mut anna, &mut jonas, &mut paul] {
        c.disconnect().await;
    }
    let copy = take_copy(&mut backend).await;

    // After the copy Paul is admitted; Jonas does not sync before the copy is put back.
    backend.clock.advance(Duration::from_secs(5));
    within("approve", anna.approve(&secret, &uid("P1004")))
        .await
        .unwrap()
        .unwrap();
    within("paul joins", paul.sync()).await.unwrap().unwrap();
    for c in [&mut admin, &mut anna, &mut jonas, &mut paul] {
        c.disconnect().await;
    }
    put_back(&mut backend, &copy).await;
    backend.clock.advance(Duration::from_secs(5));

    // Anna, the owner, repairs the server's copy on her way.
    within("anna sends", anna.send_text(&secret, "nach der Reparatur"))
        .await
        .unwrap()
        .unwrap();

    // Jonas is stuck behind the lost commit, and told so.
    let refused = within("jonas sends", jonas.send_text(&secret, "von Jonas"))
        .await
        .unwrap();
    match &refused {
        Err(e @ rathaus_client::ClientError::MissedChanges(text)) => {
            assert_eq!(e.code_name(), "MissedChanges");
            assert!(
                text.contains("rathaus admin user reset P1002")
                    && text.contains("rathaus approve bauamt/secret P1002"),
                "{text}"
            );
        }
        other => panic!("expected MissedChanges: {other:?}"),
    }
    let rows = texts(&jonas.read(&secret).await.unwrap());
    assert!(
        rows.iter()
            .any(|(_, k, t)| k == "warning" && t.contains("missed changes")),
        "{rows:?}"
    );

    // The way back: reset, the old leaf removed, enroll again, admitted by Anna.
    let (code, _) = admin.admin_reset_user(uid("P1002")).await.unwrap();
    jonas.disconnect().await;
    let mut removed = false;
    for _ in 0..100 {
        within("anna sync", anna.sync()).await.unwrap().unwrap();
        let rows = anna.read(&secret).await.unwrap();
        if rows.iter().any(|r| {
            r.kind == RowKind::Membership && r.text.contains("removed Jonas Weber (P1002, device")
        }) {
            removed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(removed, "the old device's leaf is removed");
    let mut phone = backend.enroll("P1002", &code).await.unwrap();
    within("phone syncs", phone.sync()).await.unwrap().unwrap();
    let approval = within("approve again", anna.approve(&secret, &uid("P1002")))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(approval, Approval::Added { devices: 1, .. }),
        "{approval:?}"
    );
    anna.send_text(&secret, "willkommen zurück").await.unwrap();
    let rows = texts(
        &within("phone reads", phone.read(&secret))
            .await
            .unwrap()
            .unwrap(),
    );
    assert!(
        rows.iter().any(|(_, _, t)| t.contains("willkommen zurück")),
        "{rows:?}"
    );
    within("phone sends", phone.send_text(&secret, "wieder da"))
        .await
        .unwrap()
        .unwrap();
    let rows = texts(&paul.read(&secret).await.unwrap());
    assert!(
        rows.iter().any(|(_, _, t)| t.contains("wieder da")),
        "{rows:?}"
    );
    backend.stop().await;
}

/// A member who listens gets each secret message pushed, right after the one before: the
/// device processes it as pushed, without asking the server for it again (`Fetch`, as
/// `/metrics` counts requests by kind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_secret_messages_are_applied_without_fetching_them_again() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let metrics = restart_with_metrics(&mut backend).await;
    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }
    let secret = group("bauamt/secret");
    within("anna sync", anna.sync()).await.unwrap().unwrap();
    within("jonas sync", jonas.sync()).await.unwrap().unwrap();
    let mut events = jonas.subscribe().await.unwrap();
    let fetches = || {
        let (status, body) = http_get(metrics, "/metrics");
        assert_eq!(status, 200);
        sample(
            &body,
            "rathaus_requests_total",
            &["kind=\"Fetch\"", "code=\"ok\""],
        )
        .unwrap_or(0.0)
    };
    let before = fetches();
    for i in 0..5 {
        anna.send_text(&secret, &format!("geheim {i}"))
            .await
            .unwrap();
    }
    let mut shown = Vec::new();
    within("jonas listens", async {
        while shown.len() < 5 {
            let event = events.next().await.unwrap();
            for row in jonas.apply_event(&event).await.unwrap() {
                if row.text.starts_with("geheim ") {
                    shown.push(row.text);
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        shown,
        (0..5).map(|i| format!("geheim {i}")).collect::<Vec<_>>()
    );
    let fetched = fetches() - before;
    assert_eq!(
        fetched, 0.0,
        "{fetched} Fetch requests for 5 pushed messages"
    );
    // What was shown is stored: the next read has it once each, and nothing is fetched
    // twice.
    let rows = texts(&jonas.read(&secret).await.unwrap());
    for i in 0..5 {
        let text = format!("geheim {i}");
        assert_eq!(
            rows.iter().filter(|(_, _, t)| *t == text).count(),
            1,
            "{rows:?}"
        );
    }
    backend.stop().await;
}
