//! Upgrades (DESIGN §11): a server data directory and client profiles written by the
//! previous release open with this build, and users, groups, logs, MLS state and profiles
//! are intact.
//!
//! The fixture in `tests/fixtures/upgrade-0.1.0/` was written once by
//! `generate_upgrade_fixture` (below, `#[ignore]`d) built from the previous release
//! (commit 0702548), and is committed as it came out:
//!
//! ```sh
//! git worktree add /tmp/previous 0702548
//! cp tests/tests/upgrade.rs /tmp/previous/tests/tests/
//! cd /tmp/previous && RATHAUS_FIXTURE_OUT=$OLDPWD/tests/fixtures/upgrade-0.1.0 \
//!     cargo test -p rathaus-tests --test upgrade -- --ignored generate_upgrade_fixture
//! ```

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use rathaus_client::{Approval, Client};
use rathaus_protocol::{GroupHandle, UserId};
use rathaus_server::RunOptions;
use rathaus_tests::{within, TestBackend};

/// What the fixture holds, written by the generator next to it.
const EXPECTED: &str = "expected.json";

fn group(handle: &str) -> GroupHandle {
    GroupHandle::parse(handle).unwrap()
}

fn uid(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/upgrade-0.1.0")
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
            // Git keeps no file modes but the executable bit: give the copies the 0600 a
            // real profile and data directory have (clients refuse a readable device key).
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

/// Points a profile at the server's new address (the fixture's port is long gone).
fn repoint(profile: &Path, addr: std::net::SocketAddr) {
    let db = rusqlite::Connection::open(profile.join(rathaus_client::store::DB_FILE)).unwrap();
    let changed = db
        .execute(
            "UPDATE settings SET value = ?1 WHERE key = 'server'",
            [addr.to_string()],
        )
        .unwrap();
    assert_eq!(changed, 1, "the profile names its server");
}

fn texts(rows: &[rathaus_client::TimelineRow]) -> Vec<String> {
    rows.iter().map(|r| r.text.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_data_dir_and_profiles_open_intact() {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join(EXPECTED)).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    copy_dir(&fixture().join("server"), &data);

    // What the server holds, read by the new build before it serves.
    let view = rathaus_server::inspect(&data, None).unwrap();
    let users: Vec<&str> = view["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    for user in ["admin", "P1001", "P1002"] {
        assert!(users.contains(&user), "{user} in {users:?}");
    }
    for handle in ["bauamt", "bauamt/secret"] {
        let log = rathaus_server::inspect(&data, Some(&group(handle))).unwrap();
        let seqs: Vec<u64> = log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = expected[handle]["seqs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
            .collect();
        assert_eq!(seqs, want, "{handle}'s log");
    }

    let mut options = RunOptions::new(&data);
    options.listen = Some("127.0.0.1:0".parse().unwrap());
    let server = rathaus_server::start(options).await.unwrap();
    let addr = server.local_addr();
    let mut clients = Vec::new();
    for name in ["admin", "anna", "jonas"] {
        let profile = tmp.path().join(name);
        copy_dir(&fixture().join("profiles").join(name), &profile);
        repoint(&profile, addr);
        clients.push(Client::open(&profile).unwrap());
    }
    let [mut admin, mut anna, mut jonas]: [Client; 3] = clients.try_into().ok().unwrap();

    // Profiles and logs: every message of the previous release, public and secret.
    for handle in ["bauamt", "bauamt/secret"] {
        for client in [&mut anna, &mut jonas] {
            let rows = within("read", client.read(&group(handle)))
                .await
                .unwrap()
                .unwrap();
            let got = texts(&rows);
            for text in expected[handle]["texts"].as_array().unwrap() {
                let text = text.as_str().unwrap();
                assert!(got.iter().any(|t| t == text), "{handle}: {text} in {got:?}");
            }
        }
    }

    // MLS state, on the clients and the server: a new message, a commit the server
    // validates against its stored public state, a Welcome for a new colleague.
    anna.send_text(&group("bauamt/secret"), "nach dem Update")
        .await
        .unwrap();
    let code = {
        let (code, _) = admin
            .admin_add_user(
                uid("P1003"),
                "Lena Vogel",
                vec![rathaus_protocol::DepartmentSlug::parse("bauamt").unwrap()],
                Vec::new(),
            )
            .await
            .unwrap();
        code
    };
    let lena_dir = tmp.path().join("lena");
    let mut lena = Client::enroll(
        &lena_dir,
        rathaus_client::EnrollOptions {
            server: addr.to_string(),
            trust: rathaus_client::ServerTrust::Pinned(server.fingerprint()),
            user: uid("P1003"),
            code,
            password: rathaus_tests::PASSWORD.to_owned(),
            device_name: "Lena's device".into(),
        },
    )
    .await
    .unwrap();
    within("anna syncs", anna.sync()).await.unwrap().unwrap();
    let approval = within(
        "approve",
        anna.approve(&group("bauamt/secret"), &uid("P1003")),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(matches!(approval, Approval::Added { .. }), "{approval:?}");
    within("lena joins", lena.sync()).await.unwrap().unwrap();
    lena.send_text(&group("bauamt/secret"), "hallo nach dem Update")
        .await
        .unwrap();
    let got = texts(
        &within("jonas reads", jonas.read(&group("bauamt/secret")))
            .await
            .unwrap()
            .unwrap(),
    );
    for text in ["nach dem Update", "hallo nach dem Update"] {
        assert!(got.iter().any(|t| t == text), "{text} in {got:?}");
    }
    let (entries, broken) = admin.admin_audit_verify().await.unwrap();
    assert!(
        broken.is_none(),
        "the audit chain of the previous release holds"
    );
    assert!(entries.len() >= 4);
    for c in [&mut admin, &mut anna, &mut jonas, &mut lena] {
        c.disconnect().await;
    }
    server.shutdown().await;
}

/// Writes the fixture (run once, built from the previous release; see the module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes tests/fixtures/upgrade-*; run by hand with the previous release"]
async fn generate_upgrade_fixture() {
    let out = PathBuf::from(std::env::var("RATHAUS_FIXTURE_OUT").expect("RATHAUS_FIXTURE_OUT"));
    assert!(!out.exists(), "{} exists", out.display());
    let mut backend = TestBackend::start().await.unwrap();
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
    let mut anna = backend.enroll("P1001", &anna_code).await.unwrap();
    let mut jonas = backend.enroll("P1002", &jonas_code).await.unwrap();
    within("birth", anna.sync()).await.unwrap().unwrap();
    let approval = within(
        "approve",
        anna.approve(&group("bauamt/secret"), &uid("P1002")),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(matches!(approval, Approval::Added { .. }), "{approval:?}");
    within("join", jonas.sync()).await.unwrap().unwrap();

    let public = ["Baustelle Rathausplatz ab Montag", "Danke für die Info"];
    let secret = ["Vertraulich: Haushalt 2027", "Bitte nicht weitergeben"];
    anna.send_text(&group("bauamt"), public[0]).await.unwrap();
    jonas.send_text(&group("bauamt"), public[1]).await.unwrap();
    anna.send_text(&group("bauamt/secret"), secret[0])
        .await
        .unwrap();
    jonas
        .send_text(&group("bauamt/secret"), secret[1])
        .await
        .unwrap();
    for c in [&mut anna, &mut jonas] {
        within("sync", c.sync()).await.unwrap().unwrap();
    }
    let profiles = [
        ("admin", admin.dir().to_path_buf()),
        ("anna", anna.dir().to_path_buf()),
        ("jonas", jonas.dir().to_path_buf()),
    ];
    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }
    drop((admin, anna, jonas));
    backend.stop().await;

    // The logs as the server holds them (entries of every kind, commits included).
    let mut expected = serde_json::Map::new();
    for (handle, sent) in [("bauamt", &public), ("bauamt/secret", &secret)] {
        let log = rathaus_server::inspect(&backend.data_dir(), Some(&group(handle))).unwrap();
        let seqs: Vec<u64> = log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        expected.insert(
            handle.to_owned(),
            serde_json::json!({ "texts": sent, "seqs": seqs }),
        );
    }
    copy_dir(&backend.data_dir(), &out.join("server"));
    for (name, dir) in profiles {
        copy_dir(&dir, &out.join("profiles").join(name));
    }
    std::fs::write(
        out.join(EXPECTED),
        serde_json::to_vec_pretty(&serde_json::Value::Object(expected)).unwrap(),
    )
    .unwrap();
}
