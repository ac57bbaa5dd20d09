//! Search through the service: what a colleague finds, and what they must not.

use std::sync::Arc;
use std::time::Duration;

use rathaus_protocol::{
    ClientMsgId, Content, DepartmentSlug, ErrorCode, GroupHandle, PostBody, Request, Response,
    SearchHit, SearchSource,
};

use crate::search::SearchIndex;
use crate::service::testing::{uid, Fixture};
use crate::service::Session;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn bauamt() -> GroupHandle {
    GroupHandle::parse("bauamt").unwrap()
}

async fn fixture() -> Fixture {
    let f = Fixture::new().await;
    f.service
        .set_search_index(Arc::new(SearchIndex::in_memory(None).unwrap()));
    f.service
        .handle(
            &f.admin,
            Request::AddDepartment {
                slug: DepartmentSlug::parse("bauamt").unwrap(),
                name: "Bauamt".into(),
                owners: vec![uid("admin")],
            },
        )
        .await
        .unwrap();
    f
}

async fn post(f: &Fixture, who: &Session, id: u8, text: &str) -> u64 {
    let request = Request::Post {
        group: bauamt(),
        client_id: ClientMsgId([id; 16]),
        body: PostBody::Public(Content::text(text).into()),
    };
    match f.service.handle(who, request).await.unwrap() {
        Response::Posted { seq, .. } => seq,
        other => panic!("unexpected {other:?}"),
    }
}

async fn search(
    f: &Fixture,
    who: &Session,
    query: &str,
    group: Option<GroupHandle>,
) -> Vec<SearchHit> {
    let request = Request::Search {
        query: query.into(),
        group,
        limit: 0,
    };
    match f.service.handle(who, request).await.unwrap() {
        Response::SearchResults(hits) => hits,
        other => panic!("unexpected {other:?}"),
    }
}

fn seqs(hits: &[SearchHit]) -> Vec<(String, u64)> {
    hits.iter()
        .map(|h| match &h.source {
            SearchSource::Post { group, seq } => (group.to_string(), *seq),
            SearchSource::Document { path } => (path.clone(), 0),
        })
        .collect()
}

#[tokio::test]
async fn a_stemmed_word_finds_posts_and_announcements() {
    let f = fixture().await;
    let anna = f.user("P1001", &[]).await;
    post(&f, &anna, 1, "Die Baustellen am Rathausplatz sind gesperrt").await;
    post(&f, &anna, 2, "Mittagessen in der Kantine").await;
    f.service
        .handle(
            &f.admin,
            Request::AnnouncementPublish {
                title: "Baustelle Hauptstraße".into(),
                text: "Umleitung ab Montag".into(),
                requires_ack: false,
                expires_at_ms: None,
            },
        )
        .await
        .unwrap();
    let hits = search(&f, &anna, "Baustelle", None).await;
    let mut found = seqs(&hits);
    found.sort();
    assert_eq!(
        found,
        vec![("announcements".to_owned(), 1), ("bauamt".to_owned(), 1)]
    );
    let post_hit = hits
        .iter()
        .find(|h| matches!(&h.source, SearchSource::Post { group, .. } if *group == bauamt()))
        .unwrap();
    assert_eq!(post_hit.sender, uid("P1001"));
    assert!(
        post_hit.snippet.contains("Baustellen"),
        "{}",
        post_hit.snippet
    );
    // Only the announcement in `announcements`; nothing for a word nobody wrote.
    assert_eq!(
        seqs(&search(&f, &anna, "umleitung", Some(GroupHandle::Announcements)).await),
        vec![("announcements".to_owned(), 1)]
    );
    assert!(search(&f, &anna, "Baustelle", Some(GroupHandle::Announcements))
        .await
        .iter()
        .all(|h| matches!(&h.source, SearchSource::Post { group, .. } if *group == GroupHandle::Announcements)));
    assert!(search(&f, &anna, "Schwimmbad", None).await.is_empty());
}

#[tokio::test]
async fn moderated_and_retention_deleted_posts_are_not_found() {
    let f = fixture().await;
    let anna = f.user("P1001", &[]).await;
    let rude = post(&f, &anna, 1, "Unfreundlicher Kommentar zur Baustelle").await;
    assert_eq!(search(&f, &anna, "unfreundlich", None).await.len(), 1);
    f.service
        .handle(
            &f.admin,
            Request::RemovePost {
                group: bauamt(),
                seq: rude,
            },
        )
        .await
        .unwrap();
    assert!(search(&f, &anna, "unfreundlich", None).await.is_empty());

    post(&f, &anna, 2, "Alte Meldung zum Winterdienst").await;
    f.clock.advance(10 * DAY);
    // Seq 2 is the moderator's note.
    let fresh = post(&f, &anna, 3, "Neue Meldung zum Winterdienst").await;
    f.service
        .handle(
            &f.admin,
            Request::SetRetention {
                group: bauamt(),
                days: Some(7),
            },
        )
        .await
        .unwrap();
    let hits = search(&f, &anna, "Winterdienst", None).await;
    assert_eq!(seqs(&hits), vec![("bauamt".to_owned(), fresh)]);
    // Gone from the index itself, not only filtered out.
    let index = f.service.search_index().unwrap();
    let raw = index
        .search(&crate::search::SearchQuery {
            text: "Winterdienst".into(),
            group: None,
            limit: 10,
        })
        .unwrap();
    assert_eq!(raw.len(), 1);
}

#[tokio::test]
async fn equal_relevance_ranks_the_newest_first_and_stronger_matches_lead() {
    let f = fixture().await;
    let anna = f.user("P1001", &[]).await;
    post(&f, &anna, 1, "Sitzung Bauausschuss").await;
    f.clock.advance(Duration::from_secs(60));
    post(&f, &anna, 2, "Sitzung Bauausschuss").await;
    f.clock.advance(Duration::from_secs(60));
    post(
        &f,
        &anna,
        3,
        "Bauausschuss: die Sitzung des Bauausschusses, Bauausschuss wie immer",
    )
    .await;
    let hits = search(&f, &anna, "Bauausschuss", None).await;
    assert_eq!(
        seqs(&hits),
        vec![
            ("bauamt".to_owned(), 3),
            ("bauamt".to_owned(), 2),
            ("bauamt".to_owned(), 1)
        ]
    );
    assert!(hits[0].score_millis > hits[1].score_millis);
    assert_eq!(hits[1].score_millis, hits[2].score_millis);
}

#[tokio::test]
async fn queries_are_plain_words_and_bounded() {
    let f = fixture().await;
    let anna = f.user("P1001", &[]).await;
    post(&f, &anna, 1, "Antrag auf Sondernutzung").await;
    for q in [
        "\"",
        "Antrag\"",
        "text:Antrag",
        "Antrag AND (",
        "*",
        "Antr*",
        "a~2",
        "[a TO z]",
        "-Antrag",
        "+Antrag^3",
        "\u{0}",
        "\\",
        "'); DROP --",
    ] {
        let request = Request::Search {
            query: q.into(),
            group: None,
            limit: 5,
        };
        assert!(
            matches!(
                f.service.handle(&anna, request).await,
                Ok(Response::SearchResults(_))
            ),
            "{q:?}"
        );
    }
    assert_eq!(search(&f, &anna, "+Antrag^", None).await.len(), 1);
    let refused = |query: String, group| Request::Search {
        query,
        group,
        limit: 5,
    };
    for (request, code) in [
        (refused(" ".into(), None), ErrorCode::Invalid),
        (refused("a".repeat(257), None), ErrorCode::Invalid),
        (
            refused(
                "Antrag".into(),
                Some(GroupHandle::parse("bauamt/secret").unwrap()),
            ),
            ErrorCode::Invalid,
        ),
        (
            refused(
                "Antrag".into(),
                Some(GroupHandle::parse("gibtsnicht").unwrap()),
            ),
            ErrorCode::NotFound,
        ),
    ] {
        assert_eq!(
            f.service.handle(&anna, request).await.unwrap_err().code(),
            code
        );
    }
}

#[tokio::test]
async fn a_rebuilt_index_holds_what_the_store_holds() {
    let f = fixture().await;
    let anna = f.user("P1001", &[]).await;
    post(&f, &anna, 1, "Grünflächen im Stadtpark gemäht").await;
    let removed = post(&f, &anna, 2, "Grünflächen: falsche Angabe").await;
    f.service
        .handle(
            &f.admin,
            Request::RemovePost {
                group: bauamt(),
                seq: removed,
            },
        )
        .await
        .unwrap();
    let rebuilt = SearchIndex::in_memory(Some(f.service.db().clone())).unwrap();
    let hits = rebuilt
        .search(&crate::search::SearchQuery {
            text: "Grünfläche".into(),
            group: None,
            limit: 10,
        })
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        hits[0].source,
        SearchSource::Post {
            group: bauamt(),
            seq: 1
        }
    );
}
