//! End-to-end search (DESIGN §9 `rathaus search`): a real server with its full-text index
//! in the data directory, real clients with their own FTS5 index, the real CLI.
//!
//! Public groups and announcements are searched on the server with German stemming;
//! moderation and retention take posts out; secret groups are searched on the device
//! only, and their words never reach the server's disk; the index is derived data,
//! rebuilt when its directory is gone.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use rand::RngCore;
use rathaus_client::{AnnouncementDraft, Client, Found, SearchResult};
use rathaus_protocol::{DocPath, GroupHandle, Role};
use rathaus_tests::{files_containing, within, workspace_bin, Secret, TestBackend};
use serde_json::Value;
use tokio::process::Command;

fn bauamt() -> GroupHandle {
    GroupHandle::parse("bauamt").unwrap()
}

fn secret() -> GroupHandle {
    GroupHandle::parse("bauamt/secret").unwrap()
}

/// A word nobody else writes.
fn canary(stem: &str) -> String {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{stem}{hex}")
}

/// Runs the `rathaus` binary without blocking the runtime the in-process server runs on.
async fn rathaus(profile: &Path, args: &[&str]) -> Output {
    let run = Command::new(workspace_bin("rathaus").unwrap())
        .arg("--profile")
        .arg(profile)
        .args(args)
        .stdin(Stdio::null())
        .output();
    within("rathaus", run).await.unwrap().unwrap()
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

/// `(group, seq)` of each result of `rathaus search --json`, in order.
fn found(doc: &Value) -> Vec<(String, u64)> {
    doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"].as_str().unwrap().to_owned(),
                r["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn places(results: &[SearchResult]) -> Vec<(String, u64)> {
    results.iter().map(|r| (r.group.clone(), r.seq)).collect()
}

async fn search(client: &mut Client, query: &str) -> Vec<SearchResult> {
    within("search", client.search(query, None, 0))
        .await
        .unwrap()
        .unwrap()
        .results
}

/// The admin, and Anna Berg (P1001) in `bauamt`.
async fn office(backend: &mut TestBackend) -> (Client, Client) {
    let mut admin = backend.admin().await.unwrap();
    backend
        .department(&mut admin, "bauamt", &["admin"])
        .await
        .unwrap();
    let anna = backend
        .user(&mut admin, "P1001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();
    (admin, anna)
}

#[tokio::test]
async fn the_cli_finds_german_word_forms_in_public_groups_and_announcements() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna) = office(&mut backend).await;
    let mut editor = backend
        .staff(&mut admin, "P3001", "Eva Redaktion", &[], &[Role::Editor])
        .await
        .unwrap();
    let jonas_profile = {
        let jonas = backend
            .user(&mut admin, "P1002", "Jonas Weber", &[])
            .await
            .unwrap();
        jonas.dir().to_path_buf()
    };
    anna.send_text(
        &bauamt(),
        "Die Baustellen am Rathausplatz sind ab Montag gesperrt",
    )
    .await
    .unwrap();
    anna.send_text(&bauamt(), "Mittagessen in der Kantine")
        .await
        .unwrap();
    editor
        .announce_publish(AnnouncementDraft {
            title: "Baustelle Hauptstraße".into(),
            text: "Umleitung über die Ringstraße".into(),
            requires_ack: false,
            expires_at_ms: None,
        })
        .await
        .unwrap();
    for c in [&mut admin, &mut anna, &mut editor] {
        c.disconnect().await;
    }

    // Jonas is in no department: public groups and announcements are for all staff.
    let doc = json_ok(&rathaus(&jonas_profile, &["--json", "search", "Baustelle"]).await);
    let mut places = found(&doc);
    places.sort();
    assert_eq!(
        places,
        vec![("announcements".to_owned(), 1), ("bauamt".to_owned(), 1)]
    );
    let hit = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["group"] == "bauamt")
        .unwrap();
    assert_eq!(hit["sender"], "P1001");
    assert!(
        hit["snippet"].as_str().unwrap().contains("Baustellen"),
        "{hit}"
    );
    assert!(hit["sent_at"].as_str().unwrap().contains('T'), "{hit}");

    // --group restricts.
    let doc = json_ok(
        &rathaus(
            &jonas_profile,
            &["--json", "search", "Baustelle", "--group", "announcements"],
        )
        .await,
    );
    assert_eq!(found(&doc), vec![("announcements".to_owned(), 1)]);
    let doc = json_ok(
        &rathaus(
            &jonas_profile,
            &["--json", "search", "Kantine", "--group", "bauamt"],
        )
        .await,
    );
    assert_eq!(found(&doc), vec![("bauamt".to_owned(), 2)]);

    // Query syntax of either engine is plain text: no error, the words still count.
    for query in [
        "\"Baustelle",
        "Baustelle AND (",
        "text:Baustelle*",
        "NEAR(Baustelle",
        "Baustelle~2^3",
        "'; --",
        "***",
    ] {
        let doc = json_ok(&rathaus(&jonas_profile, &["--json", "search", query]).await);
        assert!(doc["results"].is_array(), "{query:?}: {doc}");
    }
    let doc = json_ok(
        &rathaus(
            &jonas_profile,
            &["--json", "search", "\"Baustelle\" (Rathausplatz*"],
        )
        .await,
    );
    assert_eq!(found(&doc), vec![("bauamt".to_owned(), 1)]);

    // Human output: one line per result with group#seq, sender, time and snippet.
    let out = rathaus(&jonas_profile, &["search", "Kantine"]).await;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].starts_with("bauamt#2"), "{text}");
    assert!(
        lines[0].contains("Anna Berg") && lines[0].contains("Kantine"),
        "{text}"
    );

    // An empty query is refused with a reason; an unknown group too.
    let out = rathaus(&jonas_profile, &["search", "  "]).await;
    assert!(!out.status.success());
    let out = rathaus(
        &jonas_profile,
        &["--json", "search", "Baustelle", "--group", "gibtsnicht"],
    )
    .await;
    assert!(!out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["code"], "NotFound", "{doc}");
}

#[tokio::test]
async fn moderated_and_retention_deleted_posts_are_not_found() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna) = office(&mut backend).await;
    let rude = anna
        .send_text(&bauamt(), "Unfreundlicher Kommentar zum Winterdienst")
        .await
        .unwrap();
    anna.send_text(&bauamt(), "Alte Meldung zum Streuplan")
        .await
        .unwrap();
    assert_eq!(search(&mut anna, "Winterdienst").await.len(), 1);
    admin.remove_post(&bauamt(), rude.seq).await.unwrap();
    assert!(search(&mut anna, "Winterdienst").await.is_empty());
    // Anna's own device had stored the post: its local copy of a public group is not
    // searched instead of the server's answer.
    anna.read(&bauamt()).await.unwrap();
    assert!(search(&mut anna, "unfreundlich").await.is_empty());

    backend.clock.advance(Duration::from_secs(10 * 24 * 3600));
    let fresh = anna
        .send_text(&bauamt(), "Neue Meldung zum Streuplan")
        .await
        .unwrap();
    admin.admin_set_retention(&bauamt(), Some(7)).await.unwrap();
    assert_eq!(
        places(&search(&mut anna, "Streuplan").await),
        vec![("bauamt".to_owned(), fresh.seq)]
    );
}

#[tokio::test]
async fn secret_words_are_found_on_the_device_only_and_never_reach_the_server() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna, mut jonas) = backend.bauamt_team(Secret::Admitted).await.unwrap();
    let secret_word = canary("kanalsanierung");
    let public_word = canary("gehwegreinigung");
    let first = anna
        .send_text(&secret(), &format!("Vertraulich: {secret_word} im Westend"))
        .await
        .unwrap();
    anna.send_text(&bauamt(), &format!("Öffentlich: {public_word}"))
        .await
        .unwrap();
    within("read", jonas.read(&secret()))
        .await
        .unwrap()
        .unwrap();

    let results = search(&mut jonas, &secret_word).await;
    assert_eq!(
        places(&results),
        vec![("bauamt/secret".to_owned(), first.seq)]
    );
    assert_eq!(results[0].found, Found::Device);
    assert_eq!(results[0].sender, "P1001");
    assert!(results[0].snippet.contains(&secret_word), "{results:?}");
    // A prefix finds it too (FTS5 has no stemmer; local words match as prefixes).
    let prefix = &secret_word[..secret_word.len() - 4];
    assert_eq!(search(&mut jonas, prefix).await.len(), 1);
    // Restricted to the secret group: local only, and the public word is not there.
    let only = within("search", jonas.search(&secret_word, Some(&secret()), 0))
        .await
        .unwrap()
        .unwrap()
        .results;
    assert_eq!(only.len(), 1);
    assert!(
        within("search", jonas.search(&public_word, Some(&secret()), 0))
            .await
            .unwrap()
            .unwrap()
            .results
            .is_empty()
    );
    // Merged: public results come from the server for everyone.
    let public = search(&mut jonas, &public_word).await;
    assert_eq!(public.len(), 1);
    assert_eq!(public[0].found, Found::Server);
    // The admin is no member: nothing, and the server refuses to search a secret group.
    assert!(search(&mut admin, &secret_word).await.is_empty());

    // Through the CLI, which syncs first: Jonas's second message arrives with the search.
    let later = canary("regenrueckhaltebecken");
    let second = anna.send_text(&secret(), &later).await.unwrap();
    let doc = json_ok(&rathaus(jonas.dir(), &["--json", "search", &later]).await);
    assert_eq!(found(&doc), vec![("bauamt/secret".to_owned(), second.seq)]);
    let doc = json_ok(
        &rathaus(
            jonas.dir(),
            &["--json", "search", &secret_word, "--group", "bauamt/secret"],
        )
        .await,
    );
    assert_eq!(found(&doc), vec![("bauamt/secret".to_owned(), first.seq)]);

    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }
    backend.stop().await;
    let data = backend.data_dir();
    assert!(
        data.join("search").is_dir(),
        "the index lives in the data dir"
    );
    // Positive control: server-readable words are on its disk.
    assert!(!files_containing(&data, public_word.as_bytes())
        .unwrap()
        .is_empty());
    for word in [&secret_word, &later] {
        let leaked = files_containing(&data, word.as_bytes()).unwrap();
        assert!(
            leaked.is_empty(),
            "secret word on the server's disk: {leaked:?}"
        );
    }
}

#[tokio::test]
async fn ties_rank_the_newest_first_and_stronger_matches_lead() {
    let mut backend = TestBackend::start().await.unwrap();
    let (_admin, mut anna) = office(&mut backend).await;
    let first = anna
        .send_text(&bauamt(), "Sitzung Bauausschuss")
        .await
        .unwrap();
    backend.clock.advance(Duration::from_secs(60));
    let second = anna
        .send_text(&bauamt(), "Sitzung Bauausschuss")
        .await
        .unwrap();
    backend.clock.advance(Duration::from_secs(60));
    let strong = anna
        .send_text(
            &bauamt(),
            "Bauausschuss: Bauausschuss heute, Bauausschuss morgen",
        )
        .await
        .unwrap();
    let results = search(&mut anna, "Bauausschuss").await;
    assert_eq!(
        places(&results),
        vec![
            ("bauamt".to_owned(), strong.seq),
            ("bauamt".to_owned(), second.seq),
            ("bauamt".to_owned(), first.seq)
        ]
    );
    // The limit is honoured.
    let one = within("search", anna.search("Bauausschuss", None, 1))
        .await
        .unwrap()
        .unwrap()
        .results;
    assert_eq!(places(&one), vec![("bauamt".to_owned(), strong.seq)]);
}

#[tokio::test]
async fn the_index_is_rebuilt_from_the_store_when_its_directory_is_gone() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna) = office(&mut backend).await;
    anna.send_text(&bauamt(), "Spielplatzprüfung im Stadtpark")
        .await
        .unwrap();
    let removed = anna
        .send_text(&bauamt(), "Spielplatzprüfung falsch angekündigt")
        .await
        .unwrap();
    admin.remove_post(&bauamt(), removed.seq).await.unwrap();
    assert_eq!(search(&mut anna, "Spielplatzprüfungen").await.len(), 1);
    for c in [&mut admin, &mut anna] {
        c.disconnect().await;
    }
    backend.stop().await;
    let index_dir = backend.data_dir().join("search");
    std::fs::remove_dir_all(&index_dir).unwrap();
    backend.run().await.unwrap();
    assert!(index_dir.is_dir());
    let results = search(&mut anna, "Spielplatzprüfung").await;
    assert_eq!(places(&results), vec![("bauamt".to_owned(), 1)]);
    // And it keeps indexing after the rebuild.
    anna.send_text(&bauamt(), "Zweite Spielplatzprüfung")
        .await
        .unwrap();
    assert_eq!(search(&mut anna, "Spielplatzprüfung").await.len(), 2);
}

/// An author's edit gives the post its new words in the server's index, and a delete
/// takes them out: a colleague finds the post by what it says now, and a deleted one not
/// at all.
#[tokio::test]
async fn edited_posts_are_found_by_their_new_words_and_deleted_ones_not_at_all() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna) = office(&mut backend).await;
    let old = canary("Kanalsanierung");
    let new = canary("Fahrbahndecke");
    let receipt = anna.send_text(&bauamt(), &old).await.unwrap();
    assert_eq!(
        places(&search(&mut admin, &old).await),
        vec![("bauamt".to_owned(), receipt.seq)]
    );

    anna.edit_post(&bauamt(), receipt.seq, &new).await.unwrap();
    assert_eq!(
        places(&search(&mut admin, &new).await),
        vec![("bauamt".to_owned(), receipt.seq)],
        "found by its new words"
    );
    assert!(
        search(&mut admin, &old).await.is_empty(),
        "not by the words it no longer says"
    );

    anna.delete_post(&bauamt(), receipt.seq).await.unwrap();
    assert!(
        search(&mut admin, &new).await.is_empty(),
        "a deleted post is not found"
    );
    backend.stop().await;
}

/// Documents of the library are found by the words of their path (German stemming as for
/// posts), shown as `rathaus://docs/PATH`; a removed document is not found, and a
/// rebuilt index holds the library too.
#[tokio::test]
async fn library_documents_are_found_by_name_until_removed() {
    let mut backend = TestBackend::start().await.unwrap();
    let (mut admin, mut anna) = office(&mut backend).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plan.pdf");
    std::fs::write(&file, b"%PDF-1.4 Lageplan").unwrap();
    let folder = DocPath::parse("/bauamt").unwrap();
    let document = DocPath::parse("/bauamt/Baustellen-Nord.pdf").unwrap();
    admin.docs_mkdir(&folder).await.unwrap();
    admin.docs_put(&document, &file, &mut |_| {}).await.unwrap();

    let results = search(&mut anna, "Baustelle").await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(
        results[0].document.as_deref(),
        Some("/bauamt/Baustellen-Nord.pdf")
    );
    assert_eq!(results[0].group, "docs");
    assert_eq!(results[0].found, Found::Server);
    let anna_profile = anna.dir().to_path_buf();
    anna.disconnect().await;
    let out = rathaus(&anna_profile, &["search", "Baustelle"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rathaus://docs/bauamt/Baustellen-Nord.pdf"),
        "{text}"
    );

    // The index is rebuilt with the library in it.
    admin.disconnect().await;
    backend.stop().await;
    std::fs::remove_dir_all(backend.data_dir().join("search")).unwrap();
    backend.run().await.unwrap();
    assert_eq!(search(&mut anna, "Baustellen").await.len(), 1);

    // Removed, it is found no more.
    admin.docs_remove(&document).await.unwrap();
    assert!(search(&mut anna, "Baustelle").await.is_empty());
}
