//! The rules of roles, announcements, moderation, the audit log and retention, over memory
//! and a manual clock.

use std::time::Duration;

use rathaus_protocol::audit::verify_chain;
use rathaus_protocol::{
    AnnouncementInfo, AnnouncementState, AuditEntry, ClientMsgId, Content, ContentBody, ContentIn,
    DepartmentSlug, EntryBody, ErrorCode, GroupHandle, LogEntry, PostBody, Request, Response, Role,
};

use super::refused::AnnouncementRefused;
use super::testing::{uid, Fixture, T0};
use super::{Reason, Refusal, Service, Session};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn bauamt() -> GroupHandle {
    GroupHandle::parse("bauamt").unwrap()
}

async fn ask(f: &Fixture, who: &Session, request: Request) -> Result<Response, Refusal> {
    f.service.handle(who, request).await
}

async fn announcement(f: &Fixture, who: &Session, request: Request) -> AnnouncementInfo {
    match ask(f, who, request).await.unwrap() {
        Response::Announcement(a) => a,
        other => panic!("unexpected {other:?}"),
    }
}

async fn list(f: &Fixture, who: &Session, pending: bool) -> Vec<AnnouncementInfo> {
    match ask(f, who, Request::Announcements { pending })
        .await
        .unwrap()
    {
        Response::Announcements(l) => l,
        other => panic!("unexpected {other:?}"),
    }
}

async fn entries(f: &Fixture, who: &Session, group: GroupHandle) -> (Vec<LogEntry>, u64) {
    let request = Request::Fetch {
        group,
        since: 0,
        limit: 1000,
    };
    match ask(f, who, request).await.unwrap() {
        Response::Entries { entries, head, .. } => (entries, head),
        other => panic!("unexpected {other:?}"),
    }
}

async fn audit(f: &Fixture) -> Vec<AuditEntry> {
    let request = Request::AuditLog {
        since: 0,
        limit: 1000,
    };
    match ask(f, &f.admin, request).await.unwrap() {
        Response::Audit { entries, total } => {
            assert_eq!(total, entries.len() as u64);
            entries
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn draft(title: &str, requires_ack: bool, expires_at_ms: Option<i64>) -> Request {
    Request::AnnouncementDraft {
        title: title.into(),
        text: format!("{title}: details"),
        requires_ack,
        expires_at_ms,
    }
}

fn publish(title: &str, requires_ack: bool, expires_at_ms: Option<i64>) -> Request {
    Request::AnnouncementPublish {
        title: title.into(),
        text: format!("{title}: details"),
        requires_ack,
        expires_at_ms,
    }
}

async fn post(f: &Fixture, who: &Session, id: u8, text: &str) -> u64 {
    let request = Request::Post {
        group: bauamt(),
        client_id: ClientMsgId([id; 16]),
        body: PostBody::Public(Content::text(text).into()),
    };
    match ask(f, who, request).await.unwrap() {
        Response::Posted { seq, .. } => seq,
        other => panic!("unexpected {other:?}"),
    }
}

async fn add_bauamt(f: &Fixture, owners: &[&str]) {
    let request = Request::AddDepartment {
        slug: DepartmentSlug::parse("bauamt").unwrap(),
        name: "Bauamt".into(),
        owners: owners.iter().map(|o| uid(o)).collect(),
    };
    ask(f, &f.admin, request).await.unwrap();
}

fn code(r: Result<Response, Refusal>) -> ErrorCode {
    r.unwrap_err().code()
}

#[tokio::test]
async fn the_announcement_workflow_follows_roles() {
    let f = Fixture::new().await;
    let author = f.user("P1001", &[Role::Author]).await;
    let editor = f.user("P2001", &[Role::Editor]).await;
    let member = f.user("P3001", &[]).await;

    assert_eq!(
        code(ask(&f, &member, draft("Fest", false, None)).await),
        ErrorCode::Forbidden
    );
    let a = announcement(&f, &author, draft("Sommerfest", false, None)).await;
    assert_eq!(a.state, AnnouncementState::Draft);
    assert_eq!(a.id, 1, "ids are small: people type them");

    // A draft is the author's alone, even for editors.
    assert!(list(&f, &editor, true).await.is_empty());
    assert_eq!(
        code(ask(&f, &editor, Request::AnnouncementApprove { id: a.id }).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(ask(&f, &member, Request::AnnouncementSubmit { id: a.id }).await),
        ErrorCode::NotFound
    );

    let a = announcement(&f, &author, Request::AnnouncementSubmit { id: a.id }).await;
    assert_eq!(a.state, AnnouncementState::Submitted);
    assert_eq!(list(&f, &editor, true).await.len(), 1);
    assert!(list(&f, &member, true).await.is_empty());
    assert!(list(&f, &member, false).await.is_empty());

    for (who, request) in [
        (&member, Request::AnnouncementApprove { id: a.id }),
        (&author, Request::AnnouncementApprove { id: a.id }),
        (&author, publish("Direkt", false, None)),
        (
            &member,
            Request::AnnouncementPin {
                id: a.id,
                pinned: true,
            },
        ),
    ] {
        let refusal = ask(&f, who, request).await.unwrap_err();
        assert_eq!(
            refusal.code(),
            ErrorCode::Forbidden,
            "{}",
            refusal.message()
        );
        assert!(
            matches!(
                refusal.reason,
                Reason::Announcement(AnnouncementRefused::EditorsOnly(_))
            ),
            "{refusal:?}"
        );
    }

    let published = announcement(&f, &editor, Request::AnnouncementApprove { id: a.id }).await;
    assert_eq!(published.state, AnnouncementState::Published);
    assert_eq!(published.seq, Some(1));

    // Stored once, as an entry from its author.
    let (log, head) = entries(&f, &member, GroupHandle::Announcements).await;
    assert_eq!(head, 1);
    assert_eq!(log[0].sender, uid("P1001"));
    assert!(matches!(
        &log[0].body,
        EntryBody::Content(Content { body: ContentBody::Announcement { id, title, .. }, .. })
            if *id == a.id && title == "Sommerfest"
    ));
    assert_eq!(list(&f, &member, false).await.len(), 1);
    assert!(list(&f, &author, true).await.is_empty());

    // Approving twice does not publish twice.
    assert_eq!(
        code(ask(&f, &editor, Request::AnnouncementApprove { id: a.id }).await),
        ErrorCode::Invalid
    );

    let actions: Vec<String> = audit(&f).await.into_iter().map(|e| e.action).collect();
    assert!(
        actions.contains(&"announcement.approve".to_owned()),
        "{actions:?}"
    );
}

#[tokio::test]
async fn a_rejection_tells_the_author_why_and_allows_resubmission() {
    let f = Fixture::new().await;
    let author = f.user("P1001", &[Role::Author]).await;
    let editor = f.user("P2001", &[Role::Editor]).await;
    let a = announcement(&f, &author, draft("Parkplatz", false, None)).await;
    announcement(&f, &author, Request::AnnouncementSubmit { id: a.id }).await;
    let reject = |comment: &str| Request::AnnouncementReject {
        id: a.id,
        comment: comment.into(),
    };
    assert_eq!(
        code(ask(&f, &editor, reject("  ")).await),
        ErrorCode::Invalid
    );
    announcement(&f, &editor, reject("Bitte mit Datum")).await;

    let mine = list(&f, &author, true).await;
    assert_eq!(
        mine[0].state,
        AnnouncementState::Rejected {
            by: uid("P2001"),
            comment: "Bitte mit Datum".into()
        }
    );
    let again = announcement(&f, &author, Request::AnnouncementSubmit { id: a.id }).await;
    assert_eq!(again.state, AnnouncementState::Submitted);
}

#[tokio::test]
async fn acknowledgements_are_counted_and_named_for_editors_only() {
    let f = Fixture::new().await;
    let editor = f.user("P2001", &[Role::Editor]).await;
    let anna = f.user("P1001", &[]).await;
    let jonas = f.user("P1002", &[]).await;
    let a = announcement(&f, &editor, publish("Wartung", true, None)).await;
    let plain = announcement(&f, &editor, publish("Info", false, None)).await;

    announcement(&f, &anna, Request::AnnouncementAck { id: a.id }).await;
    let twice = announcement(&f, &anna, Request::AnnouncementAck { id: a.id }).await;
    assert_eq!((twice.acks, twice.acked_by_me), (1, true));
    assert!(
        twice.acked_by.is_empty(),
        "members do not see who acknowledged"
    );
    announcement(&f, &jonas, Request::AnnouncementAck { id: a.id }).await;
    assert_eq!(
        code(ask(&f, &anna, Request::AnnouncementAck { id: plain.id }).await),
        ErrorCode::Invalid
    );

    let seen = list(&f, &editor, false).await;
    let wartung = seen.iter().find(|x| x.id == a.id).unwrap();
    assert_eq!(wartung.acks, 2);
    assert_eq!(wartung.acked_by, vec![uid("P1001"), uid("P1002")]);
    assert!(!wartung.acked_by_me);
}

#[tokio::test]
async fn expired_announcements_disappear_and_pinned_ones_come_first() {
    let f = Fixture::new().await;
    let editor = f.user("P2001", &[Role::Editor]).await;
    let member = f.user("P1001", &[]).await;
    assert_eq!(
        code(ask(&f, &editor, publish("Gestern", false, Some(T0 - 1))).await),
        ErrorCode::Invalid
    );
    let hour = 60 * 60 * 1000;
    let short = announcement(&f, &editor, publish("Kurz", true, Some(T0 + hour))).await;
    let long = announcement(&f, &editor, publish("Lang", false, None)).await;
    let later = announcement(&f, &editor, publish("Neu", false, None)).await;
    announcement(
        &f,
        &editor,
        Request::AnnouncementPin {
            id: long.id,
            pinned: true,
        },
    )
    .await;
    let ids: Vec<u64> = list(&f, &member, false)
        .await
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, vec![long.id, later.id, short.id]);

    f.clock.advance(Duration::from_millis(hour as u64));
    let ids: Vec<u64> = list(&f, &member, false)
        .await
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, vec![long.id, later.id]);
    let (log, head) = entries(&f, &member, GroupHandle::Announcements).await;
    assert_eq!(head, 3);
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(
        code(ask(&f, &member, Request::AnnouncementAck { id: short.id }).await),
        ErrorCode::Invalid
    );
}

#[tokio::test]
async fn owners_and_admins_remove_posts_and_the_text_is_gone() {
    let f = Fixture::new().await;
    let owner = f.user("P1000", &[]).await;
    add_bauamt(&f, &["P1000"]).await;
    let anna = f.user("P1001", &[Role::Editor]).await;
    let seq = post(&f, &anna, 1, "Unfreundlicher Beitrag").await;
    let edit = Request::Post {
        group: bauamt(),
        client_id: ClientMsgId([2; 16]),
        body: PostBody::Public(ContentIn {
            version: 1,
            body: ContentBody::Edit {
                target: seq,
                text: "Immer noch unfreundlich".into(),
            },
            mentions: Vec::new(),
        }),
    };
    ask(&f, &anna, edit).await.unwrap();
    post(&f, &anna, 3, "Ein anderer Beitrag").await;

    // Not an owner (an editor role does not help), a missing post, the wrong kind of group.
    let remove = |seq| Request::RemovePost {
        group: bauamt(),
        seq,
    };
    assert_eq!(
        code(ask(&f, &anna, remove(seq)).await),
        ErrorCode::Forbidden
    );
    assert_eq!(code(ask(&f, &owner, remove(99)).await), ErrorCode::NotFound);
    let secret = Request::RemovePost {
        group: GroupHandle::parse("bauamt/secret").unwrap(),
        seq: 1,
    };
    assert_eq!(code(ask(&f, &f.admin, secret).await), ErrorCode::Invalid);

    ask(&f, &owner, remove(seq)).await.unwrap();
    assert_eq!(
        code(ask(&f, &f.admin, remove(seq)).await),
        ErrorCode::Invalid
    );
    ask(&f, &f.admin, remove(3)).await.unwrap();

    let (log, head) = entries(&f, &anna, bauamt()).await;
    assert_eq!(head, 5);
    let bodies: Vec<&EntryBody> = log.iter().map(|e| &e.body).collect();
    let removed_by = |u: &str| EntryBody::Removed { by: uid(u) };
    assert_eq!(bodies[0], &removed_by("P1000"));
    assert_eq!(
        bodies[1],
        &removed_by("P1000"),
        "the edit's text is gone too"
    );
    assert_eq!(bodies[2], &removed_by("admin"));
    assert_eq!(bodies[3], &EntryBody::Moderated { target: 1 });
    assert_eq!(log[3].sender, uid("P1000"));
    assert_eq!(bodies[4], &EntryBody::Moderated { target: 3 });

    let removals: Vec<(String, String)> = audit(&f)
        .await
        .into_iter()
        .filter(|e| e.action == "post.remove")
        .map(|e| (e.actor.to_string(), e.target))
        .collect();
    assert_eq!(
        removals,
        vec![
            ("P1000".to_owned(), "bauamt#1".to_owned()),
            ("admin".to_owned(), "bauamt#3".to_owned())
        ]
    );
}

#[tokio::test]
async fn roles_change_at_once_and_every_admin_action_is_chained() {
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    add_bauamt(&f, &["P1001"]).await;
    assert_eq!(
        code(ask(&f, &anna, draft("Idee", false, None)).await),
        ErrorCode::Forbidden
    );
    let grant = Request::SetRoles {
        user: uid("P1001"),
        add: vec![Role::Author],
        remove: Vec::new(),
    };
    assert_eq!(
        code(ask(&f, &anna, grant.clone()).await),
        ErrorCode::Forbidden
    );
    let Response::User(u) = ask(&f, &f.admin, grant).await.unwrap() else {
        panic!("expected User");
    };
    assert_eq!(u.roles, vec![Role::Member, Role::Author]);
    announcement(&f, &anna, draft("Idee", false, None)).await;

    let strip_member = Request::SetRoles {
        user: uid("P1001"),
        add: Vec::new(),
        remove: vec![Role::Member],
    };
    assert_eq!(
        code(ask(&f, &f.admin, strip_member).await),
        ErrorCode::Invalid
    );
    assert_eq!(
        code(
            ask(
                &f,
                &anna,
                Request::AuditLog {
                    since: 0,
                    limit: 10
                }
            )
            .await
        ),
        ErrorCode::Forbidden
    );
    ask(&f, &f.admin, Request::RemoveUser { user: uid("P1001") })
        .await
        .unwrap();

    let log = audit(&f).await;
    assert_eq!(verify_chain(None, &log), Ok(()));
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec![
            "server.init",
            "device.enroll",
            "user.add",
            "device.enroll",
            "department.add",
            "user.roles",
            "user.remove"
        ]
    );
    assert_eq!(log[5].detail, "member → member, author");
    // Enrollments are recorded with how and from where, never with the code.
    assert!(
        log[1].detail.starts_with("with enrollment code: device "),
        "{}",
        log[1].detail
    );

    // The chain continues across a restart of the service.
    let service = Service::new(
        f.service.db().clone(),
        f.clock.clone(),
        super::testing::removal_key(),
    )
    .unwrap();
    let f = Fixture { service, ..f };
    ask(
        &f,
        &f.admin,
        Request::SetRetention {
            group: bauamt(),
            days: Some(30),
        },
    )
    .await
    .unwrap();
    assert_eq!(verify_chain(None, &audit(&f).await), Ok(()));
}

#[tokio::test]
async fn retention_deletes_old_entries_only_and_never_reuses_seqs() {
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    let editor = f.user("P2001", &[Role::Editor]).await;
    add_bauamt(&f, &[]).await;
    post(&f, &anna, 1, "alt 1").await;
    post(&f, &anna, 2, "alt 2").await;
    let old = announcement(&f, &editor, publish("Alt", true, None)).await;
    announcement(&f, &anna, Request::AnnouncementAck { id: old.id }).await;
    f.clock.advance(10 * DAY);
    post(&f, &anna, 3, "neu").await;
    let fresh = announcement(&f, &editor, publish("Neu", false, None)).await;

    let keep = |group, days| Request::SetRetention {
        group,
        days: Some(days),
    };
    assert_eq!(
        code(ask(&f, &editor, keep(bauamt(), 7)).await),
        ErrorCode::Forbidden
    );
    ask(&f, &f.admin, keep(bauamt(), 7)).await.unwrap();
    ask(&f, &f.admin, keep(GroupHandle::Announcements, 7))
        .await
        .unwrap();

    let (log, head) = entries(&f, &anna, bauamt()).await;
    assert_eq!(head, 3);
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
    let ids: Vec<u64> = list(&f, &anna, false).await.iter().map(|a| a.id).collect();
    assert_eq!(ids, vec![fresh.id]);
    assert!(f.service.db().announcement(old.id).unwrap().is_none());
    assert!(f.service.db().acks(old.id).unwrap().is_empty());

    // Everything ages out; the head stays, also for a restarted service, and new posts
    // continue after it.
    f.clock.advance(8 * DAY);
    let runs = f.service.enforce_retention().await.unwrap();
    assert_eq!(runs.len(), 2);
    let service = Service::new(
        f.service.db().clone(),
        f.clock.clone(),
        super::testing::removal_key(),
    )
    .unwrap();
    let f = Fixture { service, ..f };
    let (log, head) = entries(&f, &anna, bauamt()).await;
    assert!(log.is_empty());
    assert_eq!(head, 3);
    assert_eq!(post(&f, &anna, 4, "danach").await, 4);

    let deletions: Vec<String> = audit(&f)
        .await
        .into_iter()
        .filter(|e| e.action == "retention.delete")
        .map(|e| format!("{} {}", e.target, e.detail))
        .collect();
    assert_eq!(
        deletions,
        vec![
            "bauamt deleted 2 entries (seq 1 to 2) older than 7 days",
            "announcements deleted 1 entry (seq 1 to 1) older than 7 days",
            "announcements deleted 1 entry (seq 2 to 2) older than 7 days",
            "bauamt deleted 1 entry (seq 3 to 3) older than 7 days",
        ]
    );
}

#[tokio::test]
async fn the_default_retention_applies_where_no_policy_is_set() {
    let f = Fixture::new().await;
    let anna = f.user("P1001", &[]).await;
    add_bauamt(&f, &[]).await;
    post(&f, &anna, 1, "alt").await;
    f.clock.advance(10 * DAY);
    f.service.set_default_retention_days(30);
    assert!(f.service.enforce_retention().await.unwrap().is_empty());
    f.clock.advance(21 * DAY);
    post(&f, &anna, 2, "neu").await;
    let runs = f.service.enforce_retention().await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let (log, head) = entries(&f, &anna, bauamt()).await;
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    assert_eq!(head, 2);
    let by_server: Vec<String> = audit(&f)
        .await
        .into_iter()
        .filter(|e| e.action == "retention.delete")
        .map(|e| format!("{} {} {}", e.actor, e.target, e.detail))
        .collect();
    assert_eq!(
        by_server,
        vec![format!(
            "{} bauamt deleted 1 entry (seq 1 to 1) older than 30 days",
            super::removal::SERVER_USER
        )]
    );
    // A policy of its own wins over the default.
    ask(
        &f,
        &f.admin,
        Request::SetRetention {
            group: bauamt(),
            days: Some(365),
        },
    )
    .await
    .unwrap();
    f.clock.advance(40 * DAY);
    assert!(f.service.enforce_retention().await.unwrap().is_empty());
}
