//! Bulk import and retiring departments, over memory.

use rathaus_protocol::{
    ClientMsgId, Content, DepartmentSlug, ErrorCode, GroupHandle, ImportOutcome, ImportRow,
    PostBody, Request, Response, Role,
};

use super::refused::PostRefused;
use super::testing::{uid, Fixture};
use super::Reason;

fn slug(s: &str) -> DepartmentSlug {
    DepartmentSlug::parse(s).unwrap()
}

fn row(line: u32, id: &str, name: &str, depts: &[&str]) -> ImportRow {
    ImportRow {
        line,
        user: uid(id),
        name: name.into(),
        departments: depts.iter().map(|d| slug(d)).collect(),
        roles: Vec::new(),
    }
}

async fn department(f: &Fixture, s: &str) {
    f.service
        .handle(
            &f.admin,
            Request::AddDepartment {
                slug: slug(s),
                name: s.into(),
                owners: Vec::new(),
            },
        )
        .await
        .unwrap();
}

async fn import(f: &Fixture, rows: Vec<ImportRow>) -> Vec<ImportOutcome> {
    match f
        .service
        .handle(&f.admin, Request::ImportUsers { rows })
        .await
        .unwrap()
    {
        Response::Imported(results) => results.into_iter().map(|r| r.outcome).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn an_import_is_one_batch_and_idempotent() {
    let f = Fixture::new().await;
    department(&f, "bauamt").await;
    let rows = vec![
        row(1, "P1", "Anna", &["bauamt"]),
        row(2, "P2", "Jonas", &["bauamt"]),
        row(3, "P1", "Anna again", &[]),
        row(4, "P3", "Eva", &["gartenamt"]),
    ];
    let first = import(&f, rows.clone()).await;
    assert!(matches!(first[0], ImportOutcome::Created { .. }));
    assert!(matches!(first[1], ImportOutcome::Created { .. }));
    assert!(matches!(&first[2], ImportOutcome::Refused { reason } if reason.contains("line 1")));
    assert!(matches!(&first[3], ImportOutcome::Refused { reason } if reason.contains("gartenamt")));
    let dept = f.service.db().department(&slug("bauamt")).unwrap().unwrap();
    assert_eq!(dept.members, [uid("P1"), uid("P2")]);

    let audit = f.service.db().audit_entries(0, 100).unwrap().len();
    let second = import(&f, rows[..2].to_vec()).await;
    assert_eq!(second, [ImportOutcome::Unchanged, ImportOutcome::Unchanged]);
    assert_eq!(f.service.db().audit_entries(0, 100).unwrap().len(), audit);

    let mut admin_row = row(1, "P2", "Jonas", &["bauamt"]);
    admin_row.roles = vec![Role::Admin];
    let differs = import(&f, vec![admin_row]).await;
    assert!(
        matches!(&differs[0], ImportOutcome::Refused { reason } if reason.contains("roles")),
        "{differs:?}"
    );
}

#[tokio::test]
async fn only_admins_import_and_a_chunk_is_bounded() {
    let f = Fixture::new().await;
    let anna = f.user("P9", &[]).await;
    let refused = f
        .service
        .handle(
            &anna,
            Request::ImportUsers {
                rows: vec![row(1, "P10", "X", &[])],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Forbidden);
    let rows = (0..=rathaus_protocol::limits::MAX_IMPORT_ROWS as u32)
        .map(|i| row(i, &format!("Q{i}"), "X", &[]))
        .collect();
    let too_many = f
        .service
        .handle(&f.admin, Request::ImportUsers { rows })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), ErrorCode::TooLarge);
}

#[tokio::test]
async fn a_retired_department_takes_no_posts_and_its_slug_stays_taken() {
    let f = Fixture::new().await;
    department(&f, "bauamt").await;
    import(&f, vec![row(1, "P1", "Anna", &["bauamt"])]).await;
    f.service
        .handle(
            &f.admin,
            Request::RemoveDepartment {
                slug: slug("bauamt"),
            },
        )
        .await
        .unwrap();
    let user = f.service.db().user(&uid("P1")).unwrap().unwrap();
    assert!(user.departments.is_empty());
    let group = GroupHandle::parse("bauamt").unwrap();
    let post = f
        .service
        .handle(
            &f.admin,
            Request::Post {
                group: group.clone(),
                client_id: ClientMsgId([1; 16]),
                body: PostBody::Public(Content::text("hallo").into()),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(post.code(), ErrorCode::Forbidden);
    assert!(
        matches!(post.reason, Reason::Post(PostRefused::Retired { .. })),
        "{post:?}"
    );
    // Still readable: the final entry is there.
    match f
        .service
        .handle(
            &f.admin,
            Request::Fetch {
                group,
                since: 0,
                limit: 10,
            },
        )
        .await
        .unwrap()
    {
        Response::Entries { entries, .. } => assert_eq!(entries.len(), 1),
        other => panic!("unexpected {other:?}"),
    }
    let again = f
        .service
        .handle(
            &f.admin,
            Request::AddDepartment {
                slug: slug("bauamt"),
                name: "Bauamt".into(),
                owners: Vec::new(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(again.code(), ErrorCode::AlreadyExists);
}

#[test]
fn a_reason_is_bounded_at_a_character_boundary() {
    let long = "ä".repeat(300);
    let cut = super::import::bounded(long);
    assert!(cut.len() <= 400 + '…'.len_utf8());
    assert!(cut.ends_with('…'));
}
