//! The index on its own: German words, replacing and removing, the directory's life.

use std::time::Duration;

use rathaus_protocol::{GroupHandle, SearchSource, UserId};

use super::{IndexDoc, SearchIndex, SearchQuery, STATE_FILE};

fn doc(group: &str, seq: u64, at: i64, text: &str) -> IndexDoc {
    IndexDoc {
        source: SearchSource::Post {
            group: GroupHandle::parse(group).unwrap(),
            seq,
        },
        sender: UserId::parse("P1001").unwrap(),
        sender_name: "Anna Berg".into(),
        sent_at_ms: at,
        text: text.into(),
    }
}

fn find(index: &SearchIndex, text: &str) -> Vec<u64> {
    index
        .search(&SearchQuery {
            text: text.into(),
            group: None,
            limit: 10,
        })
        .unwrap()
        .into_iter()
        .map(|h| match h.source {
            SearchSource::Post { seq, .. } => seq,
            SearchSource::Document { .. } => 0,
        })
        .collect()
}

#[test]
fn german_forms_find_each_other() {
    let index = SearchIndex::in_memory(None).unwrap();
    index.put(doc("bauamt", 1, 1, "Die Baustellen sind eröffnet"));
    index.put(doc("bauamt", 2, 2, "Eine Baustelle weniger"));
    index.put(doc("bauamt", 3, 3, "Öffnungszeiten der Bürgerbüros"));
    let mut both = find(&index, "BAUSTELLE");
    both.sort_unstable();
    assert_eq!(both, vec![1, 2]);
    assert_eq!(find(&index, "Öffnungszeit"), vec![3]);
    // Every word must occur; stop words alone find nothing.
    assert_eq!(find(&index, "Baustelle weniger"), vec![2]);
    assert!(find(&index, "die der eine").is_empty());
}

#[test]
fn replace_and_remove_change_what_is_found() {
    let index = SearchIndex::in_memory(None).unwrap();
    let bauamt = GroupHandle::parse("bauamt").unwrap();
    index.put(doc("bauamt", 1, 1, "Termin am Dienstag"));
    // Replaced before the first commit, and again after it.
    index.replace(&bauamt, 1, "Termin am Mittwoch");
    assert_eq!(find(&index, "Mittwoch"), vec![1]);
    assert!(find(&index, "Dienstag").is_empty());
    index.replace(&bauamt, 1, "Termin am Donnerstag");
    assert_eq!(find(&index, "Donnerstag"), vec![1]);
    index.remove(&bauamt, 1);
    assert!(find(&index, "Termin").is_empty());
    // Replacing what is not there adds nothing.
    index.replace(&bauamt, 7, "Termin");
    assert!(find(&index, "Termin").is_empty());
}

#[test]
fn a_burst_larger_than_one_hand_over_keeps_its_order() {
    let index = SearchIndex::in_memory(None).unwrap();
    let bauamt = GroupHandle::parse("bauamt").unwrap();
    let n = u64::try_from(super::MAX_BATCH).unwrap() * 3 + 7;
    for seq in 1..=n {
        index.put(doc("bauamt", seq, 1, &format!("Sitzung Nummer{seq}")));
        if seq % 100 == 0 {
            // A change right behind its post, in the same burst.
            index.replace(&bauamt, seq, "Sitzung verschoben");
        }
        if seq % 150 == 0 {
            index.remove(&bauamt, seq);
        }
    }
    let edited: Vec<u64> = (1..=n).filter(|s| s % 100 == 0 && s % 150 != 0).collect();
    let mut found = find(&index, "verschoben");
    found.sort_unstable();
    assert_eq!(found, edited);
    assert_eq!(find(&index, &format!("Nummer{n}")), vec![n]);
    assert!(find(&index, "Nummer300").is_empty(), "edited, then removed");
    assert!(find(&index, "Nummer200").is_empty(), "edited");
    assert_eq!(find(&index, "Nummer201"), vec![201]);
}

#[test]
fn secret_groups_never_enter_the_index() {
    let index = SearchIndex::in_memory(None).unwrap();
    index.put(doc("bauamt/secret", 1, 1, "Geheimsache"));
    index.put(doc("room/sanierung", 1, 1, "Geheimsache"));
    assert!(index.caught_up(Duration::from_secs(5)));
    assert!(find(&index, "Geheimsache").is_empty());
}

#[test]
fn documents_are_found_by_name() {
    let index = SearchIndex::in_memory(None).unwrap();
    index.index_document(
        "bauamt/Bebauungsplan.pdf",
        "Bebauungsplan Nord",
        &UserId::parse("P1001").unwrap(),
        "Anna Berg",
        5,
    );
    let hits = index
        .search(&SearchQuery {
            text: "Bebauungsplan".into(),
            group: None,
            limit: 10,
        })
        .unwrap();
    assert_eq!(
        hits[0].source,
        SearchSource::Document {
            path: "bauamt/Bebauungsplan.pdf".into()
        }
    );
    index.remove_document("bauamt/Bebauungsplan.pdf");
    assert!(find(&index, "Bebauungsplan").is_empty());
}

#[test]
fn a_cleanly_closed_directory_is_reused_and_an_unclean_one_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("search");
    let db = crate::store::Db::new(std::sync::Arc::new(crate::store::MemoryStore::new()));
    {
        let index = SearchIndex::open(&dir, db.clone()).unwrap();
        index.put(doc("bauamt", 1, 1, "Laternenreparatur"));
        index.close();
    }
    let state = std::fs::read_to_string(dir.join(STATE_FILE)).unwrap();
    assert!(state.ends_with("clean\n"), "{state}");
    {
        // Reused: the document is there although the (empty) store does not hold it.
        let index = SearchIndex::open(&dir, db.clone()).unwrap();
        assert_eq!(find(&index, "Laternenreparatur"), vec![1]);
        let state = std::fs::read_to_string(dir.join(STATE_FILE)).unwrap();
        assert!(state.ends_with("open\n"), "open while in use: {state}");
        index.close();
    }
    // As after a crash: the marker still says `open`.
    std::fs::write(dir.join(STATE_FILE), super::open_state()).unwrap();
    let index = SearchIndex::open(&dir, db).unwrap();
    assert!(
        find(&index, "Laternenreparatur").is_empty(),
        "rebuilt from the store, which never held it"
    );
}
