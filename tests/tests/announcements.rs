//! End-to-end tests of issue #4: roles, the announcement workflow, acknowledgements,
//! expiry, moderation, the hash-chained audit log and retention. Every test runs a real
//! server on 127.0.0.1:0 with a manual clock and real clients with temporary profiles.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rathaus_client::{AnnouncementDraft, Client, ClientError, RowKind};
use rathaus_protocol::{AnnouncementState, ErrorCode, GroupHandle, Role, UserId};
use rathaus_server::clock::Clock;
use rathaus_server::store::{Db, Writes};
use rathaus_tests::{within, workspace_bin, TestBackend};

const HOUR_MS: i64 = 60 * 60 * 1000;
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn bauamt() -> GroupHandle {
    GroupHandle::parse("bauamt").unwrap()
}

fn announcements() -> GroupHandle {
    GroupHandle::Announcements
}

fn notice(title: &str, requires_ack: bool, expires_at_ms: Option<i64>) -> AnnouncementDraft {
    AnnouncementDraft {
        title: title.into(),
        text: format!("Details zu {title}"),
        requires_ack,
        expires_at_ms,
    }
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    let e = r.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    e.to_string()
}

/// Admin, an author in the Bauamt (its owner), an editor of the communications office
/// and a plain member.
struct Staff {
    backend: TestBackend,
    admin: Client,
    author: Client,
    editor: Client,
    member: Client,
}

async fn staff() -> Staff {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    let author = backend
        .staff(&mut admin, "P1001", "Anna Berg", &[], &[Role::Author])
        .await
        .unwrap();
    backend
        .department(&mut admin, "bauamt", &["P1001"])
        .await
        .unwrap();
    let editor = backend
        .staff(&mut admin, "P2001", "Eva Koch", &[], &[Role::Editor])
        .await
        .unwrap();
    let member = backend
        .user(&mut admin, "P1002", "Jonas Weber", &["bauamt"])
        .await
        .unwrap();
    Staff {
        backend,
        admin,
        author,
        editor,
        member,
    }
}

#[tokio::test]
async fn a_department_proposes_and_the_editor_approves() {
    let Staff {
        backend: _backend,
        mut author,
        mut editor,
        mut member,
        ..
    } = staff().await;
    let mut sub = member.subscribe().await.unwrap();

    let draft = author
        .announce_draft(notice("Sperrung Rathausplatz", false, None))
        .await
        .unwrap();
    let submitted = author.announce_submit(draft.id).await.unwrap();
    assert_eq!(submitted.state, AnnouncementState::Submitted);

    let pending = editor.announcements(true).await.unwrap();
    assert_eq!(
        pending.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![draft.id]
    );
    let approved = editor.announce_approve(draft.id).await.unwrap();
    assert_eq!(approved.state, AnnouncementState::Published);
    assert!(editor.announcements(true).await.unwrap().is_empty());

    // Pushed to the online colleague, shown as from the proposing author.
    let rows = within("the pushed announcement", async {
        loop {
            let event = sub.next().await.unwrap();
            let rows = member.apply_event(&event).await.unwrap();
            if !rows.is_empty() {
                return rows;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(rows[0].kind, RowKind::Announcement);
    assert_eq!(rows[0].sender, "P1001");
    assert!(
        rows[0].text.starts_with("Sperrung Rathausplatz"),
        "{}",
        rows[0].text
    );
    let listed = member.announcements(false).await.unwrap();
    assert_eq!(listed[0].author_name, "Anna Berg");

    // A second proposal is rejected; the author reads why.
    let second = author
        .announce_draft(notice("Grillfest", false, None))
        .await
        .unwrap();
    author.announce_submit(second.id).await.unwrap();
    editor
        .announce_reject(second.id, "Bitte erst mit dem Personalrat klären")
        .await
        .unwrap();
    let mine = author.announcements(true).await.unwrap();
    assert_eq!(
        mine[0].state,
        AnnouncementState::Rejected {
            by: UserId::parse("P2001").unwrap(),
            comment: "Bitte erst mit dem Personalrat klären".into()
        }
    );
    // Nothing of it reached the announcements log.
    let timeline = member.read(&announcements()).await.unwrap();
    assert_eq!(timeline.len(), 1);
}

#[tokio::test]
async fn roles_are_enforced_with_forbidden() {
    let Staff {
        backend: _backend,
        mut admin,
        mut author,
        mut editor,
        mut member,
    } = staff().await;
    let draft = author
        .announce_draft(notice("Neue Öffnungszeiten", false, None))
        .await
        .unwrap();
    author.announce_submit(draft.id).await.unwrap();

    let m = forbidden(member.announce_approve(draft.id).await);
    assert!(
        m.contains("only editors and administrators may approve"),
        "{m}"
    );
    forbidden(author.announce_approve(draft.id).await);
    let m = forbidden(author.announce_publish(notice("Direkt", false, None)).await);
    assert!(m.contains("publish announcements directly"), "{m}");
    forbidden(member.announce_draft(notice("Idee", false, None)).await);

    // Moderation of the Bauamt: its owner may, an editor who does not own it may not.
    let seq = member
        .send_text(&bauamt(), "Das ist unter aller Kanone")
        .await
        .unwrap()
        .seq;
    let m = forbidden(editor.remove_post(&bauamt(), seq).await);
    assert!(m.contains("only the owners of bauamt"), "{m}");
    forbidden(member.remove_post(&bauamt(), seq).await);
    let missing = author.remove_post(&bauamt(), 999).await.unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NotFound), "{missing}");
    author.remove_post(&bauamt(), seq).await.unwrap();
    // The poster's own copy becomes a tombstone too.
    let rows = member.read(&bauamt()).await.unwrap();
    assert_eq!(rows[0].kind, RowKind::Removed);
    assert!(!rows[0].text.contains("Kanone"), "{}", rows[0].text);
    assert_eq!(rows[1].kind, RowKind::Moderation);

    // Admin-only requests.
    forbidden(editor.admin_audit().await);
    forbidden(
        member
            .admin_set_roles(UserId::parse("P1002").unwrap(), vec![Role::Editor], vec![])
            .await,
    );
    forbidden(editor.admin_set_retention(&bauamt(), Some(30)).await);

    // A role granted later applies to the open session at once.
    admin
        .admin_set_roles(UserId::parse("P1002").unwrap(), vec![Role::Editor], vec![])
        .await
        .unwrap();
    member.announce_approve(draft.id).await.unwrap();
}

#[tokio::test]
async fn a_pending_draft_is_invisible_to_other_staff() {
    let Staff {
        backend: _backend,
        mut author,
        mut editor,
        mut member,
        ..
    } = staff().await;
    let draft = author
        .announce_draft(notice("Noch geheim", false, None))
        .await
        .unwrap();
    for other in [&mut editor, &mut member] {
        assert!(other.announcements(true).await.unwrap().is_empty());
        assert!(other.announcements(false).await.unwrap().is_empty());
        let e = other.announce_ack(draft.id).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    }
    let e = editor.announce_approve(draft.id).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");

    // Submitted: the editors see it, colleagues still do not.
    author.announce_submit(draft.id).await.unwrap();
    assert_eq!(editor.announcements(true).await.unwrap().len(), 1);
    assert!(member.announcements(true).await.unwrap().is_empty());
    assert!(member.announcements(false).await.unwrap().is_empty());
    assert!(member.read(&announcements()).await.unwrap().is_empty());
}

#[tokio::test]
async fn editors_see_how_many_and_which_colleagues_acknowledged() {
    let Staff {
        backend: _backend,
        mut author,
        mut editor,
        mut member,
        ..
    } = staff().await;
    let a = editor
        .announce_publish(notice("Wartung am Samstag", true, None))
        .await
        .unwrap();
    assert_eq!(a.acks, 0);
    member.announce_ack(a.id).await.unwrap();
    member.announce_ack(a.id).await.unwrap();
    let seen_by_author = author.announce_ack(a.id).await.unwrap();
    assert_eq!(seen_by_author.acks, 2);
    assert!(seen_by_author.acked_by.is_empty(), "only editors see who");

    let list = editor.announcements(false).await.unwrap();
    let wartung = list.iter().find(|x| x.id == a.id).unwrap();
    assert_eq!(wartung.acks, 2);
    let who: Vec<&str> = wartung.acked_by.iter().map(|u| u.as_str()).collect();
    assert_eq!(who, vec!["P1001", "P1002"]);
    assert!(!wartung.acked_by_me);
    assert!(member.announcements(false).await.unwrap()[0].acked_by_me);
}

#[tokio::test]
async fn an_expired_announcement_is_hidden() {
    let Staff {
        backend,
        mut admin,
        mut editor,
        mut member,
        ..
    } = staff().await;
    let now = backend.clock.now_ms();
    let short = editor
        .announce_publish(notice("Heute Stromausfall", false, Some(now + HOUR_MS)))
        .await
        .unwrap();
    let lasting = editor
        .announce_publish(notice("Neue Kantine", false, None))
        .await
        .unwrap();
    editor.announce_pin(lasting.id, true).await.unwrap();
    let ids: Vec<u64> = member
        .announcements(false)
        .await
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, vec![lasting.id, short.id], "pinned first");

    backend
        .clock
        .advance(Duration::from_millis(2 * HOUR_MS as u64));
    let ids: Vec<u64> = member
        .announcements(false)
        .await
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, vec![lasting.id]);
    // A colleague who syncs only now never sees the expired one.
    let mut late = backend
        .user(&mut admin, "P3001", "Lena Vogt", &[])
        .await
        .unwrap();
    let rows = late.read(&announcements()).await.unwrap();
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].starts_with("Neue Kantine"), "{texts:?}");
}

#[tokio::test]
async fn a_published_announcement_reaches_a_colleague_who_was_offline() {
    let Staff {
        backend: _backend,
        mut editor,
        mut member,
        ..
    } = staff().await;
    member.read(&announcements()).await.unwrap();
    member.disconnect().await;

    editor
        .announce_publish(notice("Netzwerkwartung Sonntag", true, None))
        .await
        .unwrap();

    let report = member.sync().await.unwrap();
    assert!(
        report
            .fetched
            .iter()
            .any(|(g, n)| g == "announcements" && *n == 1),
        "{:?}",
        report.fetched
    );
    let rows = member.read(&announcements()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].text.contains("Netzwerkwartung Sonntag"));
    assert!(
        rows[0].text.contains("rathaus announce ack"),
        "{}",
        rows[0].text
    );
}

#[tokio::test]
async fn the_audit_chain_verifies_and_reports_an_edited_entry() {
    let Staff {
        mut backend,
        mut admin,
        mut author,
        mut editor,
        ..
    } = staff().await;
    let draft = author
        .announce_draft(notice("Tag der offenen Tür", false, None))
        .await
        .unwrap();
    author.announce_submit(draft.id).await.unwrap();
    editor.announce_approve(draft.id).await.unwrap();
    admin
        .admin_set_retention(&bauamt(), Some(365))
        .await
        .unwrap();
    admin
        .admin_remove_user(UserId::parse("P1002").unwrap())
        .await
        .unwrap();

    let (entries, broken) = admin.admin_audit_verify().await.unwrap();
    assert_eq!(broken, None);
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    for expected in [
        "server.init",
        "user.add",
        "department.add",
        "announcement.approve",
        "retention.set",
        "user.remove",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing: {actions:?}"
        );
    }
    let approval = entries
        .iter()
        .find(|e| e.action == "announcement.approve")
        .unwrap();
    assert_eq!(approval.actor.as_str(), "P2001");
    let victim = approval.index;

    // Someone with access to the database rewrites who approved it.
    admin.disconnect().await;
    backend.stop().await;
    {
        let store = backend.open_store().unwrap();
        let db = Db::new(store.clone());
        let mut entry = db.audit_entries(victim, 1).unwrap().remove(0);
        assert_eq!(entry.index, victim);
        entry.actor = UserId::parse("P1001").unwrap();
        let mut w = Writes::new();
        w.put_audit(&entry).unwrap();
        db.apply(w).unwrap();
        store.flush().await.unwrap();
    }
    backend.run().await.unwrap();

    let (_, broken) = admin.admin_audit_verify().await.unwrap();
    let broken = broken.expect("the edit is found");
    assert_eq!(broken.index, victim);

    // The CLI says so too, and fails.
    admin.disconnect().await;
    let profile = admin.dir().to_path_buf();
    // Off the runtime thread: the server answers on this runtime meanwhile.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(workspace_bin("rathaus").unwrap())
            .arg("--profile")
            .arg(profile)
            .args(["admin", "audit", "--verify"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "AUDIT CHAIN BROKEN: audit log broken at entry {victim}"
        )),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn retention_deletes_what_it_should_and_nothing_else() {
    let Staff {
        backend,
        mut admin,
        mut editor,
        mut member,
        ..
    } = staff().await;
    backend.department(&mut admin, "kita", &[]).await.unwrap();
    let kita = GroupHandle::parse("kita").unwrap();
    member.send_text(&bauamt(), "alt im Bauamt").await.unwrap();
    editor.send_text(&kita, "alt in der Kita").await.unwrap();
    let old = editor
        .announce_publish(notice("Alte Mitteilung", false, None))
        .await
        .unwrap();
    backend.clock.advance(10 * DAY);
    member.send_text(&bauamt(), "neu im Bauamt").await.unwrap();

    // Only the Bauamt keeps 7 days: its old post goes, nothing else.
    admin.admin_set_retention(&bauamt(), Some(7)).await.unwrap();
    let texts = |rows: Vec<rathaus_client::TimelineRow>| -> Vec<String> {
        rows.into_iter().map(|r| r.text).collect()
    };
    let mut fresh = backend
        .user(&mut admin, "P3001", "Lena Vogt", &[])
        .await
        .unwrap();
    assert_eq!(
        texts(fresh.read(&bauamt()).await.unwrap()),
        vec!["neu im Bauamt"]
    );
    assert_eq!(
        texts(fresh.read(&kita).await.unwrap()),
        vec!["alt in der Kita"]
    );
    assert_eq!(fresh.announcements(false).await.unwrap()[0].id, old.id);

    // The announcements age out only once they have a policy of their own.
    admin
        .admin_set_retention(&announcements(), Some(7))
        .await
        .unwrap();
    assert!(fresh.announcements(false).await.unwrap().is_empty());
    assert!(fresh.read(&announcements()).await.unwrap().is_empty());

    // Later, the hourly run deletes the next old post; new posts keep counting up.
    backend.clock.advance(8 * DAY);
    let runs = backend.enforce_retention().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].group.clone(), runs[0].deleted), (bauamt(), 1));
    let receipt = member.send_text(&bauamt(), "ganz neu").await.unwrap();
    assert_eq!(receipt.seq, 3);
    assert_eq!(
        texts(fresh.read(&bauamt()).await.unwrap()),
        vec!["neu im Bauamt", "ganz neu"]
    );
    let mut late = backend
        .user(&mut admin, "P3002", "Paul Kern", &[])
        .await
        .unwrap();
    assert_eq!(texts(late.read(&bauamt()).await.unwrap()), vec!["ganz neu"]);
    assert_eq!(
        texts(late.read(&kita).await.unwrap()),
        vec!["alt in der Kita"]
    );

    let deletions: Vec<String> = admin
        .admin_audit()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "retention.delete")
        .map(|e| format!("{} {}", e.target, e.detail))
        .collect();
    assert_eq!(
        deletions,
        vec![
            "bauamt deleted 1 entry (seq 1 to 1) older than 7 days",
            "announcements deleted 1 entry (seq 1 to 1) older than 7 days",
            "bauamt deleted 1 entry (seq 2 to 2) older than 7 days",
        ]
    );
}
