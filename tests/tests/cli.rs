//! The CLI contract of DESIGN §9, driven as an outside script would: the real
//! `rathaus-server` and `rathaus` binaries, `--json` output parsed.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rathaus_tests::{workspace_bin, ServerProcess, PASSWORD};
use serde_json::Value;

fn rathaus(profile: &Path, args: &[&str], stdin: Option<&str>) -> Output {
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

fn json_ok(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn init_run_enroll_provision_post_read_with_json() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let init = Command::new(workspace_bin("rathaus-server").unwrap())
        .args(["init", "--data"])
        .arg(&data)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--org",
            "Stadt Teststadt",
            "--json",
        ])
        .output()
        .unwrap();
    let init = json_ok(&init);
    let admin_user = init["admin_user"].as_str().unwrap().to_owned();
    let admin_code = init["enrollment_code"].as_str().unwrap().to_owned();
    assert!(init["fingerprint"].as_str().unwrap().starts_with("SHA256:"));

    // A second init of the same directory is refused.
    let again = Command::new(workspace_bin("rathaus-server").unwrap())
        .args(["init", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!again.status.success());

    let server = ServerProcess::spawn(&data, "127.0.0.1:0").unwrap();
    assert_eq!(server.fingerprint, init["fingerprint"].as_str().unwrap());
    let addr = server.addr.to_string();
    let fp = server.fingerprint.clone();

    let admin = tmp.path().join("admin");
    let enrolled = json_ok(&rathaus(
        &admin,
        &[
            "enroll",
            "--server",
            &addr,
            "--fingerprint",
            &fp,
            "--user",
            &admin_user,
            "--code",
            &admin_code,
            "--password-stdin",
            "--json",
        ],
        Some(&format!("{PASSWORD}\n")),
    ));
    assert_eq!(enrolled["user"], admin_user.as_str());

    json_ok(&rathaus(
        &admin,
        &[
            "admin",
            "department",
            "add",
            "bauamt",
            "--name",
            "Bauamt",
            "--json",
        ],
        None,
    ));
    let anna_add = json_ok(&rathaus(
        &admin,
        &[
            "admin",
            "user",
            "add",
            "P1001",
            "--name",
            "Anna Berg",
            "--department",
            "bauamt",
            "--json",
        ],
        None,
    ));
    assert_eq!(anna_add["user"], "P1001");
    let anna_code = anna_add["enrollment_code"].as_str().unwrap().to_owned();
    let jonas_add = json_ok(&rathaus(
        &admin,
        &[
            "admin",
            "user",
            "add",
            "P1002",
            "--name",
            "Jonas Weber",
            "--department",
            "bauamt",
            "--json",
        ],
        None,
    ));
    let jonas_code = jonas_add["enrollment_code"].as_str().unwrap().to_owned();

    let anna = tmp.path().join("anna");
    let jonas = tmp.path().join("jonas");
    for (profile, user, code) in [(&anna, "P1001", &anna_code), (&jonas, "P1002", &jonas_code)] {
        json_ok(&rathaus(
            profile,
            &[
                "enroll",
                "--server",
                &addr,
                "--fingerprint",
                &fp,
                "--user",
                user,
                "--code",
                code,
                "--password-stdin",
                "--json",
            ],
            Some(&format!("{PASSWORD}\n")),
        ));
    }
    let whoami = json_ok(&rathaus(&anna, &["whoami", "--json"], None));
    assert_eq!(whoami["user"], "P1001");
    assert_eq!(whoami["name"], "Anna Berg");

    let sent = json_ok(&rathaus(
        &anna,
        &["send", "bauamt", "Hallo Bauamt", "--json"],
        None,
    ));
    assert_eq!(sent["seq"], 1);
    json_ok(&rathaus(
        &jonas,
        &["send", "bauamt", "Hallo Anna", "--json"],
        None,
    ));

    let read = json_ok(&rathaus(&jonas, &["read", "bauamt", "--json"], None));
    assert_eq!(read["group"], "bauamt");
    let messages = read["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["seq"], 1);
    assert_eq!(messages[0]["sender"], "P1001");
    assert_eq!(messages[0]["kind"], "text");
    assert_eq!(messages[0]["text"], "Hallo Bauamt");
    assert!(messages[0]["sent_at"].as_str().unwrap().contains('T'));

    let groups = json_ok(&rathaus(&anna, &["groups", "--json"], None));
    assert!(groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["handle"] == "bauamt"));

    // Failures: non-zero exit and one line on stderr.
    let bad = rathaus(&anna, &["send", "no such group!", "x"], None);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let missing = rathaus(&tmp.path().join("nobody"), &["whoami"], None);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("enroll"));
    let forbidden = rathaus(
        &anna,
        &["admin", "user", "add", "P1003", "--name", "X", "--json"],
        None,
    );
    assert!(!forbidden.status.success());
    let doc: Value = serde_json::from_slice(&forbidden.stdout).unwrap();
    assert_eq!(doc["error"]["code"], "Forbidden");
    drop(server);
}
