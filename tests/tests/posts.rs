//! Posts as colleagues write them — replies, reactions, edits, deletes, mentions, links —
//! in public and secret groups alike, and a timeline people can trust and page through.
//! Real server, real clients (and the real `rathaus` binary for the text output).

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rand::RngCore;
use rathaus_client::posts::Post;
use rathaus_client::{Client, RowKind, SendOutcome};
use rathaus_protocol::{Content, ErrorCode, GroupHandle};
use rathaus_tests::{files_containing, within, workspace_bin, Secret, TestBackend};
use serde_json::Value;

fn group(handle: &str) -> GroupHandle {
    GroupHandle::parse(handle).unwrap()
}

fn seq(outcome: SendOutcome) -> u64 {
    match outcome {
        SendOutcome::Sent(r) => r.seq,
        SendOutcome::Queued { .. } => panic!("queued, not sent"),
    }
}

async fn read(client: &mut Client, g: &GroupHandle) -> Vec<Post> {
    within("read", client.read_page(g, None, None))
        .await
        .unwrap()
        .unwrap()
        .posts
}

fn post(posts: &[Post], seq: u64) -> &Post {
    posts
        .iter()
        .find(|p| p.is_post() && p.row.seq == seq)
        .unwrap_or_else(|| panic!("no post #{seq} in {posts:?}"))
}

fn canary(what: &str) -> String {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{what}-{hex}")
}

/// Replies, reactions (toggled), edits, deletes, mentions and links fold into their
/// posts the same way in a public and in a secret group, for the author, a colleague,
/// and (public) a newcomer who fetches everything from the server.
async fn posts_fold_in(handle: &str) {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend
        .bauamt_team(if handle.ends_with("/secret") {
            Secret::Admitted
        } else {
            Secret::NotYet
        })
        .await
        .unwrap();
    let g = group(handle);

    let first = seq(anna
        .post_text(&g, "Baustelle Hauptstraße", None)
        .await
        .unwrap());
    let reply = seq(jonas
        .post_text(
            &g,
            &format!("@p1001 siehe rathaus://{handle}/{first}"),
            Some(first),
        )
        .await
        .unwrap());
    jonas.react(&g, first, "👍").await.unwrap();
    anna.react(&g, first, "👍").await.unwrap();
    jonas.react(&g, first, "🎉").await.unwrap();
    // The same reaction again takes it back.
    jonas.react(&g, first, "👍").await.unwrap();
    anna.edit_post(&g, first, "Baustelle Hauptstraße ab Montag, @P1002")
        .await
        .unwrap();
    let doomed = seq(jonas.post_text(&g, "Tippfehler", None).await.unwrap());
    jonas.delete_post(&g, doomed).await.unwrap();

    let mut readers = vec![&mut anna, &mut jonas];
    let mut newcomer = None;
    if !g.is_secret() {
        newcomer = Some(
            backend
                .user(&mut admin, "P3001", "Lena Vogt", &[])
                .await
                .unwrap(),
        );
    }
    if let Some(n) = newcomer.as_mut() {
        readers.push(n);
    }
    for reader in readers {
        let posts = read(reader, &g).await;
        let who = reader.identity().user.to_string();
        // Reactions, edits and deletes are not posts of their own.
        let seqs: Vec<u64> = posts
            .iter()
            .filter(|p| p.is_post())
            .map(|p| p.row.seq)
            .collect();
        assert_eq!(seqs, vec![first, reply, doomed], "{who}: {posts:?}");
        assert!(
            posts.iter().all(|p| p.row.kind != RowKind::Warning),
            "{posts:?}"
        );

        let p = post(&posts, first);
        assert_eq!(
            p.row.text, "Baustelle Hauptstraße ab Montag, @P1002",
            "{who}"
        );
        assert!(p.edited && !p.deleted);
        assert_eq!(p.mentions, vec!["P1002"]);
        assert_eq!(
            serde_json::to_value(&p.reactions).unwrap(),
            serde_json::json!({"👍": ["P1001"], "🎉": ["P1002"]}),
            "{who}"
        );

        let r = post(&posts, reply);
        assert_eq!(r.reply_to, Some(first));
        assert_eq!(r.links, vec![format!("rathaus://{handle}/{first}")]);
        assert_eq!(r.mentions, vec!["p1001"]);
        assert!(!r.edited);

        let d = post(&posts, doomed);
        assert!(d.deleted, "{who}: {d:?}");
        assert_eq!(d.row.text, "");
    }

    // The link resolves to the post as it reads now.
    let (linked_group, linked) = anna
        .open_link(&format!("rathaus://{handle}/{first}"))
        .await
        .unwrap();
    assert_eq!(linked_group, g);
    assert_eq!(linked.row.text, "Baustelle Hauptstraße ab Montag, @P1002");
    let missing = anna
        .open_link(&format!("rathaus://{handle}/999"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NotFound), "{missing}");

    // A reply to a post that does not exist, an oversized reaction: typed refusals.
    let e = anna.post_text(&g, "Antwort", Some(999)).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    let e = anna.react(&g, first, "sehr gut gemacht").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Invalid), "{e}");
    let e = anna
        .post_text(&g, &"x".repeat(64 * 1024 + 1), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Invalid), "{e}");
    let many: String = (0..40).map(|i| format!("@P{i} ")).collect();
    let e = anna.post_text(&g, &many, None).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Invalid), "{e}");
}

#[tokio::test]
async fn public_posts_fold_replies_reactions_edits_and_deletes() {
    posts_fold_in("bauamt").await;
}

#[tokio::test]
async fn secret_posts_fold_replies_reactions_edits_and_deletes() {
    posts_fold_in("bauamt/secret").await;
}

#[tokio::test]
async fn in_a_public_group_the_server_refuses_changes_of_someone_elses_post() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas) = backend.bauamt_team(Secret::NotYet).await.unwrap();
    let g = group("bauamt");
    let first = seq(anna.post_text(&g, "Original", None).await.unwrap());
    let head = jonas
        .groups()
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.handle == g)
        .unwrap()
        .head;

    // Sent raw (past any check on this device): the server decides.
    for forged in [Content::edit(first, "Gefälscht"), Content::delete(first)] {
        let e = jonas.send(&g, forged).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
        assert!(e.to_string().contains("only its author"), "{e}");
    }
    let e = jonas
        .send(&g, Content::edit(999, "nichts"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    // Nothing was stored.
    let after = anna
        .groups()
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.handle == g)
        .unwrap()
        .head;
    assert_eq!(after, head);
    let posts = read(&mut anna, &g).await;
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].row.text, "Original");
    assert!(!posts[0].edited && !posts[0].deleted);
}

#[tokio::test]
async fn in_a_secret_group_every_member_ignores_changes_of_someone_elses_post() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let g = group("bauamt/secret");
    let first = seq(anna
        .post_text(&g, "Vertraulich: Original", None)
        .await
        .unwrap());

    // Jonas's client refuses to send it...
    let e = jonas.edit_post(&g, first, "Gefälscht").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    // ...and a modified client that sends it anyway is ignored by every member.
    seq(jonas
        .send_or_queue(&g, Content::edit(first, "Gefälscht"))
        .await
        .unwrap());
    seq(jonas
        .send_or_queue(&g, Content::delete(first))
        .await
        .unwrap());

    for member in [&mut anna, &mut jonas] {
        let posts = read(member, &g).await;
        let p = post(&posts, first);
        assert_eq!(p.row.text, "Vertraulich: Original");
        assert!(!p.edited && !p.deleted);
        let warnings: Vec<&str> = posts
            .iter()
            .filter(|p| p.row.kind == RowKind::Warning)
            .map(|p| p.row.text.as_str())
            .collect();
        assert_eq!(warnings.len(), 2, "{posts:?}");
        assert!(warnings[0].contains("tried to edit post #"), "{warnings:?}");
        assert!(
            warnings[1].contains("tried to delete post #"),
            "{warnings:?}"
        );
        assert!(warnings.iter().all(|w| w.contains("P1002")), "{warnings:?}");
    }
}

#[tokio::test]
async fn a_deleted_public_post_leaves_the_servers_disk() {
    // On PostgreSQL, dead row versions stay until VACUUM, and `compact` is for sled.
    if rathaus_tests::skip_on_postgres("compact of the data directory's sled database") {
        return;
    }
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::NotYet).await.unwrap();
    let g = group("bauamt");
    let kept = canary("bleibt");
    let gone = canary("weg");
    let edited = canary("korrigiert");
    anna.post_text(&g, &kept, None).await.unwrap();
    let doomed = seq(anna.post_text(&g, &gone, None).await.unwrap());
    anna.edit_post(&g, doomed, &edited).await.unwrap();
    // Jonas holds it locally before it goes.
    assert!(read(&mut jonas, &g)
        .await
        .iter()
        .any(|p| p.row.text == edited));
    anna.delete_post(&g, doomed).await.unwrap();
    let posts = read(&mut jonas, &g).await;
    assert!(post(&posts, doomed).deleted);
    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }
    let jonas_dir = jonas.dir().to_path_buf();
    drop(jonas);
    backend.stop().await;

    // sled keeps superseded bytes in its log until it cleans the segment; the operator's
    // `compact` rewrites the stopped server's database from its live records.
    let data = backend.data_dir();
    let out = std::process::Command::new(workspace_bin("rathaus-server").unwrap())
        .args(["compact", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compact failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !files_containing(&data, kept.as_bytes()).unwrap().is_empty(),
        "positive control: the kept post is in the data directory"
    );
    for text in [&gone, &edited] {
        assert_eq!(
            files_containing(&data, text.as_bytes()).unwrap(),
            Vec::<std::path::PathBuf>::new(),
            "the deleted post's text {text} is still on the server's disk"
        );
    }
    // The compacted server serves on: the posts that were kept are all there.
    backend.run().await.unwrap();
    let mut lena = backend
        .user(&mut admin, "P3001", "Lena Vogt", &[])
        .await
        .unwrap();
    let posts = read(&mut lena, &g).await;
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[0].row.text, kept);
    assert!(posts[1].deleted);
    // And off the colleague's device.
    let db = jonas_dir.join(rathaus_client::store::DB_FILE);
    checkpoint(&db);
    assert!(!files_containing(&jonas_dir, kept.as_bytes())
        .unwrap()
        .is_empty());
    for text in [&gone, &edited] {
        assert_eq!(
            files_containing(&jonas_dir, text.as_bytes()).unwrap(),
            Vec::<std::path::PathBuf>::new(),
            "the deleted post's text {text} is still in the colleague's profile"
        );
    }
}

/// Folds SQLite's write-ahead log into the file, as closing the last connection does.
fn checkpoint(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
}

#[tokio::test]
async fn pages_of_a_timeline_are_newest_first_printed_oldest_first() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    for handle in ["bauamt", "bauamt/secret"] {
        let g = group(handle);
        let mut seqs = Vec::new();
        for i in 1..=7 {
            seqs.push(seq(anna
                .post_text(&g, &format!("Nr. {i}"), None)
                .await
                .unwrap()));
        }
        // A reaction is no post: it does not take a place on a page.
        anna.react(&g, seqs[6], "👍").await.unwrap();
        let page = |p: &rathaus_client::posts::Page| -> Vec<String> {
            p.posts.iter().map(|p| p.row.text.clone()).collect()
        };
        let newest = jonas.read_page(&g, Some(3), None).await.unwrap();
        assert_eq!(page(&newest), vec!["Nr. 5", "Nr. 6", "Nr. 7"], "{handle}");
        assert!(newest.more_before);
        let older = jonas
            .read_page(&g, Some(3), Some(newest.posts[0].row.seq))
            .await
            .unwrap();
        assert_eq!(page(&older), vec!["Nr. 2", "Nr. 3", "Nr. 4"], "{handle}");
        let oldest = jonas
            .read_page(&g, Some(3), Some(older.posts[0].row.seq))
            .await
            .unwrap();
        let oldest_texts = page(&oldest);
        assert_eq!(oldest_texts.last().unwrap(), "Nr. 1", "{handle}");
        assert!(!oldest.more_before, "{handle}");
    }
}

#[tokio::test]
async fn unread_counts_skip_own_posts_and_count_mentions() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let counts = |o: Vec<rathaus_client::posts::GroupOverview>, h: &str| -> (u64, u64) {
        let g = o.into_iter().find(|o| o.group.handle == group(h)).unwrap();
        (g.unread, g.mentions)
    };
    for handle in ["bauamt", "bauamt/secret"] {
        let g = group(handle);
        read(&mut jonas, &g).await;
        let first = seq(anna.post_text(&g, "Besprechung um 10", None).await.unwrap());
        anna.post_text(&g, "@p1002 bringst du die Pläne mit?", None)
            .await
            .unwrap();
        anna.post_text(&g, "Und @P1001 (ich) auch", None)
            .await
            .unwrap();
        anna.react(&g, first, "👍").await.unwrap();
        jonas.post_text(&g, "Ich komme", None).await.unwrap();

        // Own posts are never unread; reactions neither; a mention of me counts once.
        assert_eq!(
            counts(jonas.overview().await.unwrap(), handle),
            (3, 1),
            "{handle}"
        );
        assert_eq!(
            counts(anna.overview().await.unwrap(), handle).0,
            1,
            "{handle}"
        );
        read(&mut jonas, &g).await;
        assert_eq!(
            counts(jonas.overview().await.unwrap(), handle),
            (0, 0),
            "{handle}"
        );
    }
}

// ----- the `rathaus` binary: text output, the CLI forms --------------------------------

fn cli(profile: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(workspace_bin("rathaus").unwrap())
        .arg("--profile")
        .arg(profile)
        .args(args)
        .output()
        .unwrap()
}

fn cli_ok(profile: &Path, args: &[&str]) -> String {
    let out = cli(profile, args);
    assert!(
        out.status.success(),
        "rathaus {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn cli_json(profile: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&cli_ok(profile, &all)).unwrap()
}

/// Runs the CLI off the runtime thread (the in-process server answers meanwhile).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_timeline_shows_escapes_and_a_post_cannot_pose_as_another() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    for handle in ["bauamt", "bauamt/secret"] {
        jonas
            .post_text(&group(handle), "Guten Morgen", None)
            .await
            .unwrap();
    }
    anna.disconnect().await;
    jonas.disconnect().await;
    let anna_dir = anna.dir().to_path_buf();
    let jonas_dir = jonas.dir().to_path_buf();
    drop(anna);
    drop(jonas);

    blocking(move || {
        for handle in ["bauamt", "bauamt/secret"] {
            let forged = "Alles gut\n#10  2026-12-01T08:15:00.000Z  Anna Berg: Bitte das \
                          Passwort an P9999 schicken";
            cli_ok(&jonas_dir, &["send", handle, forged]);
            cli_ok(
                &jonas_dir,
                &["send", handle, "\u{1b}[31mROT\u{1b}[0m\u{7}\r fertig"],
            );
            let out = cli_ok(&anna_dir, &["read", handle]);
            assert!(!out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\r'));
            assert!(out.contains("\\x1b[31mROT\\x1b[0m\\x07\\r fertig"), "{out}");
            let doc = cli_json(&anna_dir, &["read", handle]);
            let entries = doc["messages"].as_array().unwrap().len();
            let heads: Vec<&str> = out.lines().filter(|l| l.starts_with('#')).collect();
            assert_eq!(heads.len(), entries, "{handle}: one line per entry:\n{out}");
            assert!(
                out.lines()
                    .any(|l| l.starts_with("      | #10  2026-12-01T08:15:00.000Z  Anna Berg")),
                "{out}"
            );
            // JSON keeps the text as written.
            let texts: Vec<&str> = doc["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["text"].as_str().unwrap())
                .collect();
            assert!(texts.contains(&forged), "{texts:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_replies_reacts_edits_deletes_opens_and_pages() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    anna.disconnect().await;
    jonas.disconnect().await;
    let anna_dir = anna.dir().to_path_buf();
    let jonas_dir = jonas.dir().to_path_buf();
    drop(anna);
    drop(jonas);

    blocking(move || {
        for handle in ["bauamt", "bauamt/secret"] {
            let first = cli_json(&anna_dir, &["send", handle, "Plan für @P1002"])["seq"]
                .as_u64()
                .unwrap();
            let s = first.to_string();
            let link = format!("rathaus://{handle}/{first}");
            let reply = cli_json(
                &jonas_dir,
                &[
                    "send",
                    handle,
                    &format!("Danke, siehe {link}"),
                    "--reply-to",
                    &s,
                ],
            )["seq"]
                .as_u64()
                .unwrap();
            cli_json(&jonas_dir, &["react", handle, &s, "👍"]);
            cli_json(&anna_dir, &["react", handle, &s, "👍"]);
            cli_json(&anna_dir, &["react", handle, &s, "👍"]);
            cli_json(&anna_dir, &["edit", handle, &s, "Plan (neu) für @P1002"]);
            // Someone else's post: refused with its code.
            let out = cli(&jonas_dir, &["--json", "edit", handle, &s, "meins"]);
            assert!(!out.status.success());
            let err: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(err["error"]["code"], "Forbidden", "{err}");
            cli_json(&jonas_dir, &["delete", handle, &reply.to_string()]);

            let doc = cli_json(&anna_dir, &["read", handle]);
            let msgs = doc["messages"].as_array().unwrap();
            let m = msgs.iter().find(|m| m["seq"] == first).unwrap();
            assert_eq!(m["text"], "Plan (neu) für @P1002");
            assert_eq!(m["edited"], true);
            assert_eq!(m["deleted"], false);
            assert_eq!(m["reactions"], serde_json::json!({"👍": ["P1002"]}));
            assert_eq!(m["mentions"], serde_json::json!(["P1002"]));
            for key in ["seq", "sender", "sent_at", "kind", "text"] {
                assert!(m.get(key).is_some(), "{key} missing: {m}");
            }
            let r = msgs.iter().find(|m| m["seq"] == reply).unwrap();
            assert_eq!(r["deleted"], true);
            assert_eq!(r["text"], "");
            assert_eq!(
                msgs.iter().filter(|m| m["kind"] == "text").count(),
                2,
                "{msgs:?}"
            );

            let opened = cli_json(&jonas_dir, &["open", &link]);
            assert_eq!(opened["message"]["text"], "Plan (neu) für @P1002");
            let text = cli_ok(&jonas_dir, &["open", &link]);
            assert!(text.contains("Plan (neu) für @P1002 (edited)"), "{text}");
            let out = cli(
                &jonas_dir,
                &["--json", "open", &format!("rathaus://{handle}/999")],
            );
            assert!(!out.status.success());
            let err: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(err["error"]["code"], "NotFound", "{err}");
        }
        let out = cli(&jonas_dir, &["--json", "open", "rathaus://kita/1"]);
        assert!(!out.status.success(), "an unknown group");
        let out = cli(&jonas_dir, &["--json", "open", "https://example.org/1"]);
        let err: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(err["error"]["code"], "Invalid", "{err}");

        // Paging through the CLI.
        for i in 1..=5 {
            cli_json(&anna_dir, &["send", "bauamt", &format!("Seite {i}")]);
        }
        let texts = |doc: &Value| -> Vec<String> {
            doc["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["text"].as_str().unwrap().to_owned())
                .collect()
        };
        let newest = cli_json(&jonas_dir, &["read", "bauamt", "--limit", "2"]);
        assert_eq!(texts(&newest), vec!["Seite 4", "Seite 5"]);
        let before = newest["messages"][0]["seq"].as_u64().unwrap().to_string();
        let older = cli_json(
            &jonas_dir,
            &["read", "bauamt", "--limit", "2", "--before", &before],
        );
        assert_eq!(texts(&older), vec!["Seite 2", "Seite 3"]);
        let text = cli_ok(&jonas_dir, &["read", "bauamt", "--limit", "2"]);
        assert!(text.contains("--before"), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_counts_mentions_and_what_listen_printed_is_read() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna, mut jonas) = backend.bauamt_team(Secret::NotYet).await.unwrap();
    let g = group("bauamt");
    read(&mut jonas, &g).await;
    anna.post_text(&g, "@P1002 kurze Frage", None)
        .await
        .unwrap();
    anna.post_text(&g, "Noch etwas", None).await.unwrap();
    jonas.disconnect().await;
    let jonas_dir = jonas.dir().to_path_buf();
    drop(jonas);

    let bauamt = |doc: &Value| -> (Value, Value) {
        let g = doc["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["handle"] == "bauamt")
            .cloned()
            .unwrap();
        (g["unread"].clone(), g["mentions"].clone())
    };
    let dir = jonas_dir.clone();
    blocking(move || {
        let doc = cli_json(&dir, &["groups"]);
        assert_eq!(bauamt(&doc), (2.into(), 1.into()), "{doc}");
        let text = cli_ok(&dir, &["groups"]);
        assert!(text.contains("    2 unread    1 @me"), "{text}");
    })
    .await;
    // Two more, which `listen` prints as they come (it catches up on what this device
    // has not fetched): those are read, the two before still are not.
    anna.post_text(&g, "@P1002 zweite Frage", None)
        .await
        .unwrap();
    anna.post_text(&g, "Ende", None).await.unwrap();
    blocking(move || {
        let out = cli_ok(&jonas_dir, &["listen", "--count", "2"]);
        assert!(
            out.contains("zweite Frage") && out.contains("Ende"),
            "{out}"
        );
        let doc = cli_json(&jonas_dir, &["groups"]);
        assert_eq!(bauamt(&doc), (2.into(), 1.into()), "{doc}");
        cli_ok(&jonas_dir, &["read", "bauamt"]);
        let doc = cli_json(&jonas_dir, &["groups"]);
        assert_eq!(bauamt(&doc), (0.into(), 0.into()), "{doc}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_show_their_id_who_has_not_acknowledged_and_take_a_plain_date() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::NotYet).await.unwrap();
    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }
    let dirs: Vec<std::path::PathBuf> = [&admin, &anna, &jonas]
        .iter()
        .map(|c| c.dir().to_path_buf())
        .collect();
    drop((admin, anna, jonas));

    blocking(move || {
        let (admin, anna, jonas) = (&dirs[0], &dirs[1], &dirs[2]);
        // A draft first, so the published announcement's id is not its seq.
        cli_json(
            admin,
            &[
                "announce", "draft", "--title", "Entwurf", "--body", "später",
            ],
        );
        let published = cli_json(
            admin,
            &[
                "announce",
                "publish",
                "--title",
                "Wartung",
                "--body",
                "Samstag kein Netz",
                "--requires-ack",
                "--expires",
                "2099-12-24",
            ],
        );
        let id = published["id"].as_u64().unwrap();
        // A plain date means the end of that day.
        assert_eq!(
            published["expires_at"], "2099-12-25T00:00:00Z",
            "{published}"
        );

        let doc = cli_json(anna, &["read", "announcements"]);
        let m = &doc["messages"][0];
        assert_eq!(m["announcement_id"], id, "{doc}");
        assert_ne!(m["seq"], id, "the test needs an id apart from the seq");
        let text = cli_ok(anna, &["read", "announcements"]);
        assert!(text.contains(&format!("[announcement {id}]")), "{text}");
        assert!(
            text.contains(&format!("rathaus announce ack {id}")),
            "{text}"
        );

        cli_json(jonas, &["announce", "ack", &id.to_string()]);
        let list = cli_ok(admin, &["announce", "list"]);
        assert!(list.contains("acknowledged by 1 of 3"), "{list}");
        let not_yet = list.split("not yet: ").nth(1).unwrap_or_default();
        assert!(
            not_yet.contains("P1001") && !not_yet.contains("P1002"),
            "{list}"
        );
        let doc = cli_json(admin, &["announce", "list"]);
        let a = doc["announcements"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .unwrap();
        assert_eq!(a["staff"], 3, "{a}");
        assert_eq!(a["acked_by"], serde_json::json!(["P1002"]), "{a}");
        assert_eq!(a["not_acked_by"].as_array().unwrap().len(), 2, "{a}");
        // Colleagues do not see who has not read it.
        let doc = cli_json(anna, &["announce", "list"]);
        assert!(
            doc["announcements"][0].get("not_acked_by").is_none(),
            "{doc}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_link_into_a_group_i_cannot_read_is_refused_with_a_reason() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, _jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let first = seq(anna
        .post_text(&group("bauamt/secret"), "Nur für das Bauamt", None)
        .await
        .unwrap());
    let mut lena = backend
        .user(&mut admin, "P3001", "Lena Vogt", &[])
        .await
        .unwrap();
    let e = lena
        .open_link(&format!("rathaus://bauamt/secret/{first}"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    let e = lena.open_link("rathaus://kita/1").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    // What she may read opens.
    let public = seq(anna
        .post_text(&group("bauamt"), "Für alle", None)
        .await
        .unwrap());
    let (_, p) = lena
        .open_link(&format!("rathaus://bauamt/{public}"))
        .await
        .unwrap();
    assert_eq!(p.row.text, "Für alle");
}
