//! Durability: a server killed with SIGKILL after acknowledging posts loses none of them
//! and stores none twice.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rathaus_client::{Client, EnrollOptions, ServerTrust};
use rathaus_protocol::{GroupHandle, Request, Response, UserId};
use rathaus_server::clock::SystemClock;
use rathaus_server::InitOptions;
use rathaus_tests::{within, ServerProcess, PASSWORD};

#[tokio::test]
async fn sigkill_after_acknowledged_posts_loses_and_duplicates_nothing() {
    rathaus_tests::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let database = rathaus_tests::TestDatabase::create_if_configured().unwrap();
    let report = rathaus_server::init(
        &InitOptions {
            data_dir: data.clone(),
            listen: None,
            org: Some("Stadt Teststadt".into()),
            admin_user: None,
            store: database.as_ref().map(|d| d.url().to_owned()),
        },
        &SystemClock,
    )
    .unwrap();

    let server = ServerProcess::spawn(&data, "127.0.0.1:0").unwrap();
    let addr = server.addr.to_string();
    let enroll = |dir: std::path::PathBuf, user: &str, code: &str| {
        let options = EnrollOptions {
            server: addr.clone(),
            trust: ServerTrust::Pinned(server.fingerprint.clone()),
            user: UserId::parse(user).unwrap(),
            code: code.to_owned(),
            password: PASSWORD.to_owned(),
            device_name: "test".into(),
        };
        async move { Client::enroll(&dir, options).await.unwrap() }
    };
    let mut admin = enroll(
        tmp.path().join("admin"),
        &report.admin_user,
        &report.enrollment_code,
    )
    .await;
    admin
        .admin_add_department("bauamt".parse().unwrap(), "Bauamt", vec![])
        .await
        .unwrap();
    let mut writers = Vec::new();
    for (i, user) in ["P1001", "P1002", "P1003"].iter().enumerate() {
        let (code, _) = admin
            .admin_add_user(
                UserId::parse(user).unwrap(),
                user,
                vec!["bauamt".parse().unwrap()],
                vec![],
            )
            .await
            .unwrap();
        writers.push((i, enroll(tmp.path().join(user), user, &code).await));
    }
    let bauamt = GroupHandle::parse("bauamt").unwrap();

    // Three colleagues post concurrently; every acknowledged post is remembered.
    let mut tasks = Vec::new();
    for (i, mut client) in writers {
        let bauamt = bauamt.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..40 {
                let text = format!("writer {i} message {n}");
                let receipt = client.send_text(&bauamt, &text).await.unwrap();
                acked.push((receipt.seq, text, receipt.client_id));
            }
            client.disconnect().await;
            (client.dir().to_path_buf(), acked)
        }));
    }
    let mut acked = Vec::new();
    let mut dirs = Vec::new();
    for t in tasks {
        let (dir, a) = within("writers", t).await.unwrap().unwrap();
        dirs.push(dir);
        acked.extend(a);
    }
    admin.disconnect().await;
    server.kill().unwrap();

    // Restart on the same address; the profiles still point there.
    let server = ServerProcess::spawn(&data, &addr).unwrap();
    let mut reader = Client::open(&dirs[0]).unwrap();
    let rows = within("read after restart", reader.read(&bauamt))
        .await
        .unwrap()
        .unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=120).collect::<Vec<u64>>(),
        "dense, ordered, no duplicates"
    );
    for (seq, text, _) in &acked {
        let row = rows.iter().find(|r| r.seq == *seq).unwrap();
        assert_eq!(
            &row.text, text,
            "acknowledged post #{seq} survived unchanged"
        );
    }

    // A client retrying an acknowledged post after the crash gets the same seq back.
    let (seq, text, client_id) = acked[0].clone();
    let retry = Request::Post {
        group: bauamt.clone(),
        client_id,
        body: rathaus_protocol::PostBody::Public(rathaus_protocol::Content::text(text).into()),
    };
    let mut writer0 = Client::open(&dirs[0]).unwrap();
    match writer0.request(&retry).await {
        Ok(Response::Posted {
            seq: again,
            duplicate: true,
            ..
        }) => assert_eq!(again, seq),
        other => panic!("expected a duplicate acknowledgement, got {other:?}"),
    }
    writer0.disconnect().await;
    reader.disconnect().await;
    drop(server);
}
