//! The CLI contract of DESIGN §9, driven as an outside script would: the real
//! `rathaus-server` and `rathaus` binaries, `--json` output parsed.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rathaus_tests::{workspace_bin, ServerProcess, TestCa, PASSWORD};
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
        // A command that fails before it reads its input (bad arguments, refused
        // certificate) may exit first: then the pipe is closed, and its output says why.
        match child.stdin.take().unwrap().write_all(input.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.unwrap(),
        }
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

    // Human output shows local time (here a Berlin-like zone, given as a POSIX TZ rule
    // so that no zone database is needed); `--utc` keeps UTC. JSON stays UTC.
    let sent_at = messages[0]["sent_at"].as_str().unwrap().to_owned();
    let read_text = |extra: &[&str]| {
        let out = Command::new(workspace_bin("rathaus").unwrap())
            .arg("--profile")
            .arg(&jonas)
            .args(["read", "bauamt"])
            .args(extra)
            .env("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let local = read_text(&[]);
    let first = local.lines().find(|l| l.contains("Hallo Bauamt")).unwrap();
    assert!(
        first.contains("+01:00") || first.contains("+02:00"),
        "local time with its offset (CET or CEST): {first}"
    );
    assert!(!first.contains(&sent_at), "{first}");
    let utc = read_text(&["--utc"]);
    let first = utc.lines().find(|l| l.contains("Hallo Bauamt")).unwrap();
    assert!(
        first.contains(&sent_at),
        "UTC as in JSON: {first} / {sent_at}"
    );

    let groups = json_ok(&rathaus(&anna, &["groups", "--json"], None));
    assert!(groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["handle"] == "bauamt"));

    // People and devices (DESIGN §9): a second device with its link code, approved on
    // the first; a password change; a transfer; a reset.
    let phone = tmp.path().join("anna-phone");
    let added = json_ok(&rathaus(
        &phone,
        &[
            "add-device",
            "--server",
            &addr,
            "--fingerprint",
            &fp,
            "--user",
            "P1001",
            "--password-stdin",
            "--json",
        ],
        Some(&format!("{PASSWORD}\n")),
    ));
    let code = added["link_code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 14, "{added}");
    let devices = json_ok(&rathaus(&anna, &["devices", "--json"], None));
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2, "{devices}");
    let approved = json_ok(&rathaus(
        &anna,
        &["devices", "approve", &code, "--json"],
        None,
    ));
    assert_eq!(approved["device"], added["device"]);
    let devices = json_ok(&rathaus(&anna, &["devices", "--json"], None));
    assert!(devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["device"] == added["device"] && d["linked"] == true));
    json_ok(&rathaus(
        &anna,
        &["password", "--password-stdin", "--json"],
        Some(&format!("{PASSWORD}\nein anderes langes Passwort\n")),
    ));
    let moved = json_ok(&rathaus(
        &admin,
        &[
            "admin",
            "user",
            "departments",
            "P1002",
            "--remove",
            "bauamt",
            "--json",
        ],
        None,
    ));
    assert_eq!(moved["user"], "P1002");
    assert_eq!(moved["departments"], serde_json::json!([]));
    let reset = json_ok(&rathaus(
        &admin,
        &["admin", "user", "reset", "P1002", "--json"],
        None,
    ));
    assert_eq!(reset["user"], "P1002");
    assert!(reset["enrollment_code"].as_str().unwrap().contains('-'));
    let locked_out = rathaus(&jonas, &["whoami", "--json"], None);
    assert!(!locked_out.status.success());

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

    // With the server gone, a send is queued, not failed: exit code 75, `queued` in the
    // JSON, listed by `outbox`, and it can be withdrawn before it goes out.
    let queued = rathaus(&anna, &["send", "bauamt", "spaeter", "--json"], None);
    assert_eq!(queued.status.code(), Some(75), "{queued:?}");
    let doc: Value = serde_json::from_slice(&queued.stdout).unwrap();
    assert_eq!(doc["queued"], true, "{doc}");
    let client_id = doc["client_id"].as_str().unwrap().to_owned();
    let outbox = json_ok(&rathaus(&anna, &["outbox", "--json"], None));
    let listed = outbox["queued"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{outbox}");
    assert_eq!(listed[0]["text"], "spaeter");
    json_ok(&rathaus(
        &anna,
        &["outbox", "--cancel", &client_id, "--json"],
        None,
    ));
    let outbox = json_ok(&rathaus(&anna, &["outbox", "--json"], None));
    assert!(outbox["queued"].as_array().unwrap().is_empty(), "{outbox}");

    // `read` with the server gone shows the history the device holds, marked offline.
    let offline = json_ok(&rathaus(&jonas, &["read", "bauamt", "--json"], None));
    assert_eq!(offline["offline"]["code"], "Unreachable", "{offline}");
    let texts: Vec<&str> = offline["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert!(texts.contains(&"Hallo Bauamt"), "{offline}");
    let text = rathaus(&jonas, &["read", "bauamt"], None);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Hallo Bauamt") && text.lines().last().unwrap().contains("offline"),
        "{text}"
    );

    // `search` with the server gone answers from the device's own index, public groups
    // included, marked offline.
    let found = json_ok(&rathaus(&jonas, &["search", "Hallo", "--json"], None));
    assert_eq!(found["offline"]["code"], "Unreachable", "{found}");
    let hits = found["results"].as_array().unwrap();
    assert!(
        hits.iter()
            .any(|h| h["group"] == "bauamt" && h["snippet"].as_str().unwrap().contains("Hallo")),
        "{found}"
    );
    let text = rathaus(&jonas, &["search", "Hallo"], None);
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.lines().last().unwrap().contains("offline"), "{text}");
}

/// `enroll --ca` (DESIGN §3, §9): a server with a certificate from the organisation's CA,
/// enrolled through that CA; later commands connect the same way. Another CA and a wrong
/// `--server-name` are refused with one line naming the server name and the reason.
#[test]
fn enroll_with_ca_then_send_and_read() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let init = json_ok(
        &Command::new(workspace_bin("rathaus-server").unwrap())
            .args(["init", "--data"])
            .arg(&data)
            .args(["--listen", "127.0.0.1:0", "--json"])
            .output()
            .unwrap(),
    );
    let admin_user = init["admin_user"].as_str().unwrap().to_owned();
    let admin_code = init["enrollment_code"].as_str().unwrap().to_owned();

    let ca = TestCa::new("Stadt Teststadt IT").unwrap();
    let (cert, key) = ca
        .issue(&["localhost", "127.0.0.1"], tmp.path(), "server")
        .unwrap();
    let ca_file = ca.write_pem(tmp.path()).unwrap();
    let ca_file = ca_file.to_str().unwrap();
    let other_dir = tmp.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other_ca_file = TestCa::new("Somebody else")
        .unwrap()
        .write_pem(&other_dir)
        .unwrap();
    let server = ServerProcess::spawn_with_certificate(&data, "127.0.0.1:0", &cert, &key).unwrap();
    let addr = server.addr.to_string();
    let stdin = format!("{PASSWORD}\n");

    let enroll_admin = |profile: &Path, trust: &[&str], json: bool| {
        let mut args = vec!["enroll", "--server", &addr];
        args.extend_from_slice(trust);
        args.extend_from_slice(&[
            "--user",
            &admin_user,
            "--code",
            &admin_code,
            "--password-stdin",
        ]);
        if json {
            args.push("--json");
        }
        rathaus(profile, &args, Some(&stdin))
    };
    let refused = |out: &Output, needles: &[&str]| {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
        }
    };

    // Exactly one of --fingerprint and --ca.
    let nobody = tmp.path().join("nobody");
    refused(
        &enroll_admin(&nobody, &[], false),
        &["--fingerprint", "--ca"],
    );
    refused(
        &enroll_admin(
            &nobody,
            &["--fingerprint", &server.fingerprint, "--ca", ca_file],
            false,
        ),
        &["not both"],
    );
    // A CA that did not issue the server's certificate.
    let out = enroll_admin(&nobody, &["--ca", other_ca_file.to_str().unwrap()], true);
    refused(&out, &["not trusted for 127.0.0.1", "unknown issuer"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown issuer"));
    // The right CA, but the certificate does not carry the given name.
    refused(
        &enroll_admin(
            &nobody,
            &["--ca", ca_file, "--server-name", "rathaus.example"],
            false,
        ),
        &["not trusted for rathaus.example", "another name"],
    );
    assert!(!nobody.join("profile.sqlite").exists());

    // The admin enrolls through the CA by the certificate's DNS name.
    let admin = tmp.path().join("admin");
    let enrolled = json_ok(&enroll_admin(
        &admin,
        &["--ca", ca_file, "--server-name", "localhost"],
        true,
    ));
    assert_eq!(enrolled["trust"]["method"], "ca");
    let whoami = json_ok(&rathaus(&admin, &["whoami", "--json"], None));
    assert_eq!(whoami["user"], admin_user.as_str());
    assert_eq!(whoami["trust"]["method"], "ca");
    assert_eq!(whoami["trust"]["server_name"], "localhost");
    assert_eq!(
        whoami["trust"]["ca_fingerprints"].as_array().unwrap().len(),
        1
    );
    assert!(whoami["fingerprint"].is_null());
    // The profile keeps the CA certificate itself, not the path.
    std::fs::remove_file(ca_file).unwrap();
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
    let anna_code = anna_add["enrollment_code"].as_str().unwrap().to_owned();

    // Anna enrolls by IP address (the default server name), then posts and reads.
    let ca_file = ca.write_pem(tmp.path()).unwrap();
    let ca_file = ca_file.to_str().unwrap();
    let anna = tmp.path().join("anna");
    json_ok(&rathaus(
        &anna,
        &[
            "enroll",
            "--server",
            &addr,
            "--ca",
            ca_file,
            "--user",
            "P1001",
            "--code",
            &anna_code,
            "--password-stdin",
            "--json",
        ],
        Some(&stdin),
    ));
    let sent = json_ok(&rathaus(
        &anna,
        &["send", "bauamt", "Hallo über die CA", "--json"],
        None,
    ));
    assert_eq!(sent["seq"], 1);
    // Her phone, added with the password, trusts the server the same way.
    let phone = tmp.path().join("anna-phone");
    json_ok(&rathaus(
        &phone,
        &[
            "add-device",
            "--server",
            &addr,
            "--ca",
            ca_file,
            "--user",
            "P1001",
            "--password-stdin",
            "--json",
        ],
        Some(&stdin),
    ));
    let read = json_ok(&rathaus(&phone, &["read", "bauamt", "--json"], None));
    let messages = read["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["text"], "Hallo über die CA");
    assert_eq!(messages[0]["sender"], "P1001");
    let whoami = json_ok(&rathaus(&phone, &["whoami", "--json"], None));
    assert_eq!(whoami["trust"]["server_name"], "127.0.0.1");
    drop(server);
}

/// Scripts read every failure the same way: a command line clap refuses is, with
/// `--json`, one JSON error with the stable code `Usage` and exit code 2.
#[test]
fn usage_errors_are_json_with_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = rathaus(tmp.path(), &["--json", "send"], None);
    assert_eq!(out.status.code(), Some(2), "usage errors exit with 2");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "a usage error with --json is one JSON document ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(doc["error"]["code"], "Usage");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("<GROUP>"),
        "names what is missing: {message}"
    );

    // Without --json, stdout stays empty and the reason is on stderr.
    let out = rathaus(tmp.path(), &["frob"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("frob"));

    // A client-side failure carries its stable code too (it used to be null).
    let out = rathaus(tmp.path(), &["--json", "sync"], None);
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["code"], "NotEnrolled");
}

/// Where nothing listens, the client says so at once, as "connection refused", rather
/// than waiting for the handshake to time out (the message of the timeout path is "no
/// answer (timed out)").
#[test]
fn nothing_listening_is_reported_as_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let port = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let server = format!("127.0.0.1:{port}");
    let fingerprint = format!("SHA256:{}", "ab".repeat(32));
    let out = rathaus(
        &tmp.path().join("profile"),
        &[
            "--json",
            "enroll",
            "--server",
            &server,
            "--fingerprint",
            &fingerprint,
            "--user",
            "P1001",
            "--code",
            "AAAA-BBBB-CCCC-DDDD",
            "--password-stdin",
        ],
        Some("correct horse battery staple\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["code"], "Unreachable", "{doc}");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("connection refused") && message.contains(&server),
        "{message}"
    );
}
