//! End-to-end tests of photos and files (DESIGN §4, §7) and the document library: real
//! server, real clients, real MLS. Files arrive intact; a secret group's file never
//! reaches the server's disk in the clear; transfers survive a server restart without
//! starting over; the per-file limit refuses before upload; a file goes with the last
//! post or document that refers to it; the library's permissions and audit trail.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::RngCore;
use rathaus_client::{ClientError, RowKind};
use rathaus_protocol::blobs::{chunk_count, sealed_size, BLOB_CHUNK};
use rathaus_protocol::{BlobScope, ErrorCode, GroupHandle, Request, Response, Role};
use rathaus_tests::{files_containing, within, workspace_bin, Secret, TestBackend};
use serde_json::Value;
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

fn secret() -> GroupHandle {
    GroupHandle::parse("bauamt/secret").unwrap()
}

fn public() -> GroupHandle {
    GroupHandle::parse("bauamt").unwrap()
}

/// A file of `size` random bytes with `canary` written at its start, middle and end.
fn file_with_canary(dir: &Path, name: &str, size: usize, canary: &[u8]) -> (PathBuf, [u8; 32]) {
    let mut bytes = vec![0u8; size];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    for at in [0, size / 2, size - canary.len()] {
        bytes[at..at + canary.len()].copy_from_slice(canary);
    }
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, Sha256::digest(&bytes).into())
}

fn canary() -> Vec<u8> {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("bauplan-kanarienvogel-{}", hex::encode(bytes)).into_bytes()
}

fn sha_of(path: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(path).unwrap()).into()
}

/// The blob files the server holds (not partial uploads).
fn blob_files(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect()
}

fn rathaus(profile: &Path, args: &[&str]) -> Output {
    Command::new(workspace_bin("rathaus").unwrap())
        .arg("--profile")
        .arg(profile)
        .arg("--json")
        .args(args)
        .output()
        .unwrap()
}

fn json_ok(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn json_err(out: &Output) -> Value {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["error"].clone()
}

/// A bound for one transfer of a file of some MiB: generous, as the debug build on a busy
/// machine is slow, but a hang still fails the test.
async fn transfer<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(300), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_file_arrives_intact_and_the_server_holds_only_ciphertext() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let canary = canary();
    let (path, sha) = file_with_canary(tmp.path(), "bauplan.pdf", 20 * MIB, &canary);

    let sent = transfer(
        "send",
        anna.send_file(&secret(), &path, Some("Der neue Plan"), &mut |_| {}),
    )
    .await
    .unwrap();
    assert_eq!(sent.attachment.sha256, sha);
    assert_eq!(sent.attachment.size, 20 * MIB as u64);
    assert_eq!(sent.stats.attempts, 1);
    let stored = sealed_size(20 * MIB as u64);
    assert_eq!(sent.stats.chunks_moved, chunk_count(stored));

    // Jonas sees the post and downloads the file: the same bytes.
    let rows = within("read", jonas.read(&secret()))
        .await
        .unwrap()
        .unwrap();
    let row = rows.iter().find(|r| r.seq == sent.receipt.seq).unwrap();
    assert_eq!(row.kind, RowKind::Attachment);
    assert!(row.text.contains("bauplan.pdf"), "{}", row.text);
    let out = tmp.path().join("jonas-bauplan.pdf");
    let got = transfer(
        "download",
        jonas.download(&secret(), sent.receipt.seq, Some(&out), &mut |_| {}),
    )
    .await
    .unwrap();
    assert_eq!(got.sha256, sha);
    assert_eq!(sha_of(&out), sha);
    assert!(!tmp.path().join("jonas-bauplan.pdf.part").exists());

    // The server holds ciphertext only: the canary is nowhere in its data directory, and
    // the one blob file has the sealed size.
    let data = backend.data_dir();
    assert_eq!(
        files_containing(&data, &canary).unwrap(),
        Vec::<PathBuf>::new()
    );
    let blobs = blob_files(&data);
    assert_eq!(blobs.len(), 1);
    assert_eq!(std::fs::metadata(&blobs[0]).unwrap().len(), stored);

    // A colleague outside the group cannot download it, even knowing the blob.
    let mut outsider = backend
        .user(&mut admin, "P3001", "Petra Lang", &[])
        .await
        .unwrap();
    let request = Request::DownloadChunk {
        scope: BlobScope::Group(secret()),
        blob: sent.attachment.blob,
        index: 0,
    };
    let refused = outsider.request(&request).await.unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::Forbidden), "{refused}");
    // Nor through another scope.
    let request = Request::DownloadChunk {
        scope: BlobScope::Docs,
        blob: sent.attachment.blob,
        index: 0,
    };
    let refused = outsider.request(&request).await.unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::NotFound), "{refused}");

    // Only the author lets go of the file; then it is gone from the server.
    let refused = jonas
        .release_attachment(&secret(), sent.receipt.seq)
        .await
        .unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::Forbidden), "{refused}");
    // Deleting her post lets go of it (the client releases the file once the deletion
    // is stored).
    anna.delete_post(&secret(), sent.receipt.seq).await.unwrap();
    assert!(
        blob_files(&data).is_empty(),
        "the file goes with the deleted post"
    );
    let again = tmp.path().join("again.pdf");
    let gone = jonas
        .download(&secret(), sent.receipt.seq, Some(&again), &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!(code(&gone), Some(ErrorCode::NotFound), "{gone}");
}

/// A deletion written while the server is unreachable waits in the outbox; when it goes
/// out, the post's file goes with it, as when the deletion is sent at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_queued_offline_takes_the_file_with_it_when_it_goes_out() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, _jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = file_with_canary(tmp.path(), "foto.jpg", MIB, &canary());
    let mut sent = Vec::new();
    for group in [secret(), public()] {
        let file = transfer("send", anna.send_file(&group, &path, None, &mut |_| {}))
            .await
            .unwrap();
        sent.push((group, file.receipt.seq));
    }
    let data = backend.data_dir();
    // One blob per group: the secret one is sealed with its own key.
    assert_eq!(blob_files(&data).len(), 2);

    backend.stop().await;
    for (group, seq) in &sent {
        let outcome = anna.delete_post(group, *seq).await.unwrap();
        assert!(
            matches!(outcome, rathaus_client::SendOutcome::Queued { .. }),
            "{outcome:?}"
        );
    }
    assert_eq!(blob_files(&data).len(), 2, "nothing leaves while offline");

    backend.run().await.unwrap();
    let report = within("flush", anna.flush_outbox()).await.unwrap().unwrap();
    assert_eq!(report.sent, 2, "{report:?}");
    assert!(
        blob_files(&data).is_empty(),
        "the files go with the deleted posts: {:?}",
        blob_files(&data)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_file_through_the_cli_and_moderation_removes_it_with_its_last_post() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, anna, jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let (anna_dir, jonas_dir) = (anna.dir().to_path_buf(), jonas.dir().to_path_buf());
    drop((anna, jonas));
    let tmp = tempfile::tempdir().unwrap();
    let canary = canary();
    let (path, sha) = file_with_canary(tmp.path(), "foto.jpg", 20 * MIB, &canary);
    let path_s = path.to_str().unwrap();

    let sent = json_ok(&rathaus(
        &jonas_dir,
        &["send", "bauamt", "--file", path_s, "Baustelle Nord"],
    ));
    let seq = sent["seq"].as_u64().unwrap();
    assert_eq!(sent["attachment"]["name"], "foto.jpg");
    assert_eq!(sent["attachment"]["size"], 20 * MIB as u64);
    assert_eq!(sent["attachment"]["sha256"], hex::encode(sha));

    // Anna reads it with its attachment and downloads it.
    let read = json_ok(&rathaus(&anna_dir, &["read", "bauamt"]));
    let msg = read["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["seq"] == seq)
        .unwrap()
        .clone();
    assert_eq!(msg["kind"], "attachment");
    assert_eq!(msg["attachment"]["sha256"], hex::encode(sha));
    let out = tmp.path().join("anna-foto.jpg");
    let got = json_ok(&rathaus(
        &anna_dir,
        &[
            "download",
            "bauamt",
            &seq.to_string(),
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(got["path"], out.to_str().unwrap());
    assert_eq!(got["size"], 20 * MIB as u64);
    assert_eq!(got["sha256"], hex::encode(sha));
    assert_eq!(sha_of(&out), sha);

    // A public group is server-readable: the file is in the blob directory, and only
    // there (not inside the database).
    let data = backend.data_dir();
    let holders = files_containing(&data, &canary).unwrap();
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(holders[0].parent().unwrap(), data.join("blobs"));

    // A backup taken while the server runs holds the file; restored into a new data
    // directory, the file downloads as before. (On PostgreSQL the records are backed up
    // with pg_dump, not by `backup`.)
    if rathaus_tests::testing_on_postgres() {
        println!("skipped on PostgreSQL: backup and restore of the data directory");
    } else {
        // A backup taken while the server runs holds the file; restored into a new data
        // directory, the file downloads as before.
        let file = backend.data.path().join("nightly.rathaus-backup");
        let (d, f) = (data.clone(), file.clone());
        tokio::task::spawn_blocking(move || rathaus_server::backup::backup(&d, &f))
            .await
            .unwrap()
            .unwrap();
        let manifest = rathaus_server::backup::verify(&file).unwrap();
        assert!(
            manifest
                .members
                .iter()
                .any(|m| m.path == format!("rathaus-backup/blobs/{}", hex::encode(sha))),
            "{manifest:?}"
        );
        backend.stop().await;
        std::fs::remove_dir_all(&data).unwrap();
        rathaus_server::backup::restore(&file, &data).unwrap();
        backend.run().await.unwrap();
        let restored = tmp.path().join("restored-foto.jpg");
        let got = json_ok(&rathaus(
            &anna_dir,
            &[
                "download",
                "bauamt",
                &seq.to_string(),
                "--out",
                restored.to_str().unwrap(),
            ],
        ));
        assert_eq!(got["sha256"], hex::encode(sha));
        assert_eq!(sha_of(&restored), sha);
    }

    // The same file posted again shares the blob; removing one post keeps it for the
    // other, removing both removes it.
    let again = json_ok(&rathaus(&jonas_dir, &["send", "bauamt", "--file", path_s]));
    let seq2 = again["seq"].as_u64().unwrap();
    assert_eq!(blob_files(&data).len(), 1);
    json_ok(&rathaus(
        &anna_dir,
        &["moderate", "bauamt", &seq.to_string()],
    ));
    assert_eq!(blob_files(&data).len(), 1, "the second post keeps it");
    json_ok(&rathaus(
        &anna_dir,
        &["moderate", "bauamt", &seq2.to_string()],
    ));
    assert!(blob_files(&data).is_empty(), "gone with its last post");
    let out2 = tmp.path().join("weg.jpg");
    let err = json_err(&rathaus(
        &anna_dir,
        &[
            "download",
            "bauamt",
            &seq.to_string(),
            "--out",
            out2.to_str().unwrap(),
        ],
    ));
    assert_eq!(err["code"], "NotFound", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_continue_after_a_server_restart_without_starting_over() {
    let mut backend = TestBackend::start_process(None).await.unwrap();
    let (_admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (path, sha) = file_with_canary(tmp.path(), "plan.dwg", 20 * MIB, b"grundriss");
    let chunks = chunk_count(sealed_size(20 * MIB as u64));

    // The server restarts while the upload is under way (after ten chunks were
    // acknowledged, so durable).
    let mut restarted = false;
    let sent = transfer(
        "send",
        anna.send_file(&secret(), &path, None, &mut |p| {
            if !restarted && p.done >= 10 * BLOB_CHUNK as u64 {
                restarted = true;
                backend.restart_process().unwrap();
            }
        }),
    )
    .await
    .unwrap();
    assert!(restarted);
    assert!(sent.stats.attempts >= 2, "{:?}", sent.stats);
    assert!(sent.stats.chunks_skipped >= 10, "resumed: {:?}", sent.stats);
    // Starting over would have sent every chunk again after the ten.
    assert!(sent.stats.chunks_moved <= chunks, "{:?}", sent.stats);
    assert_eq!(sent.attachment.sha256, sha);

    // And the same for the download. (Jonas' connection ended with the restart; the app
    // connects again.)
    jonas.disconnect().await;
    within("read", jonas.read(&secret()))
        .await
        .unwrap()
        .unwrap();
    let out = tmp.path().join("plan-jonas.dwg");
    let mut restarted = false;
    let got = transfer(
        "download",
        jonas.download(&secret(), sent.receipt.seq, Some(&out), &mut |p| {
            if !restarted && p.done >= 10 * BLOB_CHUNK as u64 {
                restarted = true;
                backend.restart_process().unwrap();
            }
        }),
    )
    .await
    .unwrap();
    assert!(restarted);
    assert!(got.stats.attempts >= 2, "{:?}", got.stats);
    assert!(got.stats.chunks_skipped >= 10, "resumed: {:?}", got.stats);
    assert!(got.stats.chunks_moved <= chunks, "{:?}", got.stats);
    assert_eq!(sha_of(&out), sha);
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_limit_is_refused_before_any_byte_is_sent() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, _jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Sparse: 101 MiB on paper, nothing on disk (and never read).
    let path = tmp.path().join("video.mp4");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(101 * MIB as u64)
        .unwrap();
    for group in [public(), secret()] {
        let err = anna
            .send_file(&group, &path, None, &mut |p| {
                panic!("no byte may move: {p:?}")
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
        assert_eq!(err.code(), Some(ErrorCode::TooLarge));
    }
    let err = json_err(&rathaus(
        anna.dir(),
        &["send", "bauamt", "--file", path.to_str().unwrap()],
    ));
    assert_eq!(err["code"], "TooLarge", "{err}");
    let partial: Vec<_> = std::fs::read_dir(backend.data_dir().join("blobs/partial"))
        .unwrap()
        .collect();
    assert!(partial.is_empty());
    assert!(blob_files(&backend.data_dir()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_library_with_its_permissions_and_audit_trail() {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    // Anna owns bauamt; Jonas is a member; Eva is an editor.
    let anna_code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &[], &[])
        .await
        .unwrap();
    backend
        .department(&mut admin, "bauamt", &["P1001"])
        .await
        .unwrap();
    backend
        .department(&mut admin, "ordnungsamt", &[])
        .await
        .unwrap();
    let anna = backend.enroll("P1001", &anna_code).await.unwrap();
    let jonas = backend
        .user(&mut admin, "P1002", "Jonas Weber", &["bauamt"])
        .await
        .unwrap();
    let eva = backend
        .staff(&mut admin, "P4001", "Eva Roth", &[], &[Role::Editor])
        .await
        .unwrap();
    let (anna, jonas, eva) = (
        anna.dir().to_path_buf(),
        jonas.dir().to_path_buf(),
        eva.dir().to_path_buf(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let (plan, sha) = file_with_canary(tmp.path(), "plan.pdf", 3 * MIB + 17, b"lageplan");
    let plan_s = plan.to_str().unwrap();

    // The editor creates the department folders; the owner writes in hers.
    json_ok(&rathaus(&eva, &["docs", "mkdir", "/bauamt"]));
    json_ok(&rathaus(&eva, &["docs", "mkdir", "/ordnungsamt"]));
    json_ok(&rathaus(&anna, &["docs", "mkdir", "/bauamt/plaene"]));
    let put = json_ok(&rathaus(
        &anna,
        &["docs", "put", "/bauamt/plaene/lageplan.pdf", plan_s],
    ));
    assert_eq!(put["sha256"], hex::encode(sha));
    assert_eq!(put["link"], "rathaus://docs/bauamt/plaene/lageplan.pdf");

    // Not elsewhere; and a plain member writes nowhere.
    let err = json_err(&rathaus(
        &anna,
        &["docs", "put", "/ordnungsamt/x.pdf", plan_s],
    ));
    assert_eq!(err["code"], "Forbidden", "{err}");
    let err = json_err(&rathaus(
        &jonas,
        &["docs", "put", "/bauamt/plaene/y.pdf", plan_s],
    ));
    assert_eq!(err["code"], "Forbidden", "{err}");
    let err = json_err(&rathaus(&jonas, &["docs", "mkdir", "/bauamt/privat"]));
    assert_eq!(err["code"], "Forbidden", "{err}");
    // Paths are checked: no `..`, no missing parent.
    let err = json_err(&rathaus(&eva, &["docs", "mkdir", "/bauamt/../etc"]));
    assert!(err["message"].as_str().unwrap().contains("\"..\""), "{err}");
    let err = json_err(&rathaus(&eva, &["docs", "mkdir", "/gibtsnicht/unter"]));
    assert_eq!(err["code"], "NotFound", "{err}");

    // Every colleague reads.
    let root = json_ok(&rathaus(&jonas, &["docs", "ls"]));
    let names: Vec<&str> = root["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bauamt", "ordnungsamt"]);
    let folder = json_ok(&rathaus(&jonas, &["docs", "ls", "/bauamt/plaene"]));
    assert_eq!(folder["entries"][0]["kind"], "document");
    assert_eq!(folder["entries"][0]["size"], 3 * MIB as u64 + 17);
    let out = tmp.path().join("geholt.pdf");
    let got = json_ok(&rathaus(
        &jonas,
        &[
            "docs",
            "get",
            "/bauamt/plaene/lageplan.pdf",
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(got["sha256"], hex::encode(sha));
    assert_eq!(sha_of(&out), sha);
    // A post can link it; `open` follows the link.
    let opened_at = tmp.path().join("geoeffnet.pdf");
    let opened = json_ok(&rathaus(
        &jonas,
        &[
            "open",
            "rathaus://docs/bauamt/plaene/lageplan.pdf",
            "--out",
            opened_at.to_str().unwrap(),
        ],
    ));
    assert_eq!(opened["sha256"], hex::encode(sha));
    assert_eq!(sha_of(&opened_at), sha);

    // A folder with something in it stays; removing the document removes its file.
    let err = json_err(&rathaus(&anna, &["docs", "rm", "/bauamt/plaene"]));
    assert_eq!(err["code"], "Invalid", "{err}");
    assert_eq!(blob_files(&backend.data_dir()).len(), 1);
    json_ok(&rathaus(
        &anna,
        &["docs", "rm", "/bauamt/plaene/lageplan.pdf"],
    ));
    assert!(blob_files(&backend.data_dir()).is_empty());
    json_ok(&rathaus(&anna, &["docs", "rm", "/bauamt/plaene"]));
    let err = json_err(&rathaus(
        &jonas,
        &[
            "docs",
            "get",
            "/bauamt/plaene/lageplan.pdf",
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(err["code"], "NotFound", "{err}");

    // Every change is in the audit log, with who did it.
    let entries = match admin
        .request(&Request::AuditLog {
            since: 0,
            limit: 1000,
        })
        .await
        .unwrap()
    {
        Response::Audit { entries, .. } => entries,
        other => panic!("{other:?}"),
    };
    let docs: Vec<(String, String, String)> = entries
        .iter()
        .filter(|e| e.action.starts_with("doc."))
        .map(|e| (e.actor.to_string(), e.action.clone(), e.target.clone()))
        .collect();
    let expect = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        docs,
        vec![
            expect("P4001", "doc.mkdir", "/bauamt"),
            expect("P4001", "doc.mkdir", "/ordnungsamt"),
            expect("P1001", "doc.mkdir", "/bauamt/plaene"),
            expect("P1001", "doc.put", "/bauamt/plaene/lageplan.pdf"),
            expect("P1001", "doc.rm", "/bauamt/plaene/lageplan.pdf"),
            expect("P1001", "doc.rm", "/bauamt/plaene"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_kept_outside_the_data_directory_are_stored_there_backed_up_and_restored() {
    if rathaus_tests::testing_on_postgres() {
        println!("skipped on PostgreSQL: backup and restore of the data directory");
        return;
    }
    // `[files] dir`: the server keeps its files on another disk.
    let mut backend = TestBackend::start().await.unwrap();
    let elsewhere = backend.data.path().join("rathaus-files");
    backend.stop().await;
    backend.files_dir = Some(elsewhere.clone());
    backend.run().await.unwrap();
    let (_admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (path, sha) = file_with_canary(tmp.path(), "lageplan.pdf", 2 * MIB, b"lageplan");
    let sent = transfer("send", anna.send_file(&secret(), &path, None, &mut |_| {}))
        .await
        .unwrap();
    let blob = hex::encode(sent.attachment.blob);
    assert!(elsewhere.join(&blob).is_file(), "stored where configured");
    let data = backend.data_dir();
    let in_data_dir: Vec<_> = std::fs::read_dir(data.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        in_data_dir,
        ["partial"],
        "DIR/blobs holds nothing but the empty partial/ of the first start"
    );

    // A backup of the running server holds the file (the server names its blob
    // directory); restored with --files-dir, the file downloads as before.
    let file = backend.data.path().join("nightly.rathaus-backup");
    let (d, f) = (data.clone(), file.clone());
    tokio::task::spawn_blocking(move || rathaus_server::backup::backup(&d, &f))
        .await
        .unwrap()
        .unwrap();
    let manifest = rathaus_server::backup::verify(&file).unwrap();
    assert!(
        manifest
            .members
            .iter()
            .any(|m| m.path == format!("rathaus-backup/blobs/{blob}")),
        "{manifest:?}"
    );
    backend.stop().await;
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::remove_dir_all(&elsewhere).unwrap();
    rathaus_server::backup::restore_with_files(&file, &data, Some(&elsewhere)).unwrap();
    assert!(elsewhere.join(&blob).is_file(), "restored where told");
    backend.run().await.unwrap();
    jonas.disconnect().await;
    let out = tmp.path().join("lageplan-jonas.pdf");
    let got = transfer(
        "download",
        jonas.download(&secret(), sent.receipt.seq, Some(&out), &mut |_| {}),
    )
    .await
    .unwrap();
    assert_eq!(got.sha256, sha);
    assert_eq!(sha_of(&out), sha);
    backend.stop().await;
}
