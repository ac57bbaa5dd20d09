//! `search`: latency of `Search` over `n` public posts (DESIGN §10: 1,000,000 posts, p99
//! ≤ 50 ms), asked by an authenticated client over QUIC — the real service path: the
//! index, the check of every hit against the store, the answer frame.
//!
//! Setup writes the posts straight into a stopped server's store and its index (through
//! the index API, batched), as posting a million messages over the network would take
//! far longer than the measurement. Baseline: the same queries against the index alone in
//! this process (tantivy with the German analyzer, no service, no store, no network).
//!
//! Posts are German-like text drawn from a vocabulary of compound words with a Zipf
//! distribution, so a query for a common word matches a large part of the corpus, as
//! "Baustelle" would in a Bauamt; queries are one or two words drawn the same way.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rathaus_protocol::{ClientMsgId, Content, EntryBody, GroupHandle, Request, Response, UserId};
use rathaus_server::search::{IndexDoc, SearchIndex, SearchQuery};
use rathaus_server::store::{Db, SledStore, StoredEntry, Writes};
use rathaus_tests::{init_data_dir, provision_users, shared_endpoint, Provisioning};

use super::relay::start_server;
use super::report::{Row, Samples};

/// Departments the posts are spread over.
const DEPARTMENTS: usize = 20;
/// Posts written per store batch.
const BATCH: usize = 10_000;

const STEMS: &[&str] = &[
    "bau",
    "straßen",
    "schul",
    "park",
    "wasser",
    "müll",
    "bürger",
    "stadt",
    "rat",
    "garten",
    "sport",
    "kinder",
    "verkehr",
    "licht",
    "brücken",
    "wald",
    "friedhofs",
    "markt",
    "feuer",
    "spiel",
    "wohn",
    "grün",
    "kanal",
    "rad",
    "bus",
    "halle",
    "winter",
    "sommer",
    "haus",
    "amts",
];
const TAILS: &[&str] = &[
    "stelle",
    "plan",
    "antrag",
    "dienst",
    "platz",
    "weg",
    "ordnung",
    "sitzung",
    "amt",
    "bericht",
    "termin",
    "pflege",
    "leitung",
    "kosten",
    "sperrung",
    "prüfung",
    "meldung",
    "reinigung",
    "fläche",
    "anlage",
    "gebühr",
    "vertrag",
    "ausschuss",
    "konzept",
    "satzung",
    "büro",
    "projekt",
    "frist",
    "schaden",
    "wartung",
];
const ENDINGS: &[&str] = &["", "en", "s", "e", "n"];

pub(crate) async fn search(n: usize, queries: usize, suffix: &str) -> Result<Vec<Row>> {
    let tmp = tempfile::tempdir()?;
    let data = init_data_dir(tmp.path())?;
    let departments: Vec<String> = (0..DEPARTMENTS).map(|d| format!("amt{d:02}")).collect();
    let department_refs: Vec<&str> = departments.iter().map(String::as_str).collect();
    let users = provision_users(
        &data,
        &Provisioning {
            prefix: "S",
            count: 1,
            departments: &department_refs,
            roles: &[],
        },
    )?;
    let vocabulary = vocabulary();
    let t = Instant::now();
    let asked = fill(&data, n, &vocabulary, queries)?;
    eprintln!(
        "   {n} posts written and indexed in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Baseline: the index alone (its directory reused, as the server will).
    let baseline = {
        let store = Arc::new(SledStore::open(&data.join("db"))?);
        let index = SearchIndex::open(&data.join("search"), Db::new(store))?;
        let mut samples = Samples::default();
        for (i, text) in asked.iter().enumerate() {
            let t = Instant::now();
            let hits = index.search(&SearchQuery {
                text: text.clone(),
                group: None,
                limit: 20,
            })?;
            samples.push(t.elapsed());
            if i == 0 && hits.is_empty() {
                bail!("the index found nothing for {text:?}");
            }
        }
        index.close();
        samples
    };

    let server = start_server(&data).await?;
    let endpoint = shared_endpoint()?;
    let conn = users[0]
        .connect(&endpoint, server.local_addr(), &server.fingerprint())
        .await?;
    // Warm-up: the first searches open the index's files.
    for text in asked.iter().take(20) {
        conn.request(&query(text)).await?;
    }
    let mut samples = Samples::default();
    let mut found = 0usize;
    for text in &asked {
        let t = Instant::now();
        let response = conn.request(&query(text)).await?;
        samples.push(t.elapsed());
        match response {
            Response::SearchResults(hits) => found += hits.len(),
            other => bail!("unexpected answer to Search: {other:?}"),
        }
    }
    conn.close().await;
    server.shutdown().await;
    if found == 0 {
        bail!("no search found anything");
    }
    let per_query = found as f64 / asked.len() as f64;
    eprintln!(
        "   {} queries, {per_query:.1} results each on average",
        asked.len()
    );
    let what = format!(
        "`Search` (limit 20) over {n} public posts in {DEPARTMENTS} groups by one client over \
         QUIC, {} queries of 1-2 Zipf-drawn words; baseline: the same queries against the \
         tantivy index alone",
        asked.len()
    );
    Ok(vec![
        Row::new(format!("search-p50{suffix}"), samples.median_ms(), "ms")
            .baseline(baseline.median_ms())
            .note(what.clone()),
        Row::new(
            format!("search-p99{suffix}"),
            samples.quantile_ms(0.99),
            "ms",
        )
        .baseline(baseline.quantile_ms(0.99))
        .bar(50.0)
        .note(what),
    ])
}

fn query(text: &str) -> Request {
    Request::Search {
        query: text.to_owned(),
        group: None,
        limit: 20,
    }
}

/// Every compound word with every ending: 4,500 word forms of 900 stems.
fn vocabulary() -> Vec<String> {
    let mut words = Vec::new();
    for tail in TAILS {
        for stem in STEMS {
            for ending in ENDINGS {
                words.push(format!("{stem}{tail}{ending}"));
            }
        }
    }
    words
}

/// A word drawn with probability ∝ 1 / rank (Zipf, s = 1).
fn zipf<'a>(rng: &mut StdRng, words: &'a [String]) -> &'a str {
    // Inverse transform of the continuous approximation: rank = N^u.
    let u: f64 = rng.gen();
    let rank = (words.len() as f64).powf(u) as usize;
    &words[rank.saturating_sub(1).min(words.len() - 1)]
}

/// Writes `n` posts into the store and the index of the stopped server in `data`;
/// returns `queries` query texts.
fn fill(data: &Path, n: usize, words: &[String], queries: usize) -> Result<Vec<String>> {
    let store = Arc::new(SledStore::open(&data.join("db"))?);
    let db = Db::new(store.clone());
    let index = SearchIndex::open(&data.join("search"), db.clone())?;
    let mut rng = StdRng::seed_from_u64(0x5eac);
    let sender = UserId::parse("S0")?;
    let start_ms = rathaus_tests::now_ms() - n as i64 * 1000;
    let groups: Vec<GroupHandle> = (0..DEPARTMENTS)
        .map(|d| GroupHandle::parse(&format!("amt{d:02}")))
        .collect::<Result<_, _>>()?;
    let mut seqs = [0u64; DEPARTMENTS];
    let mut written = 0;
    while written < n {
        let mut w = Writes::new();
        let mut docs = Vec::with_capacity(BATCH);
        for i in written..(written + BATCH).min(n) {
            let d = i % DEPARTMENTS;
            seqs[d] += 1;
            let len = rng.gen_range(6..18);
            let text: Vec<&str> = (0..len).map(|_| zipf(&mut rng, words)).collect();
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let entry = StoredEntry {
                sender: sender.clone(),
                sender_name: "Kollegin 0".into(),
                sent_at_ms: start_ms + i as i64 * 1000,
                client_id: ClientMsgId(id),
                body: EntryBody::Content(Content::text(capitalised(&text))),
            };
            w.put_entry(&groups[d], seqs[d], &entry)?;
            if let Some(doc) = IndexDoc::for_entry(&groups[d], seqs[d], &entry) {
                docs.push(doc);
            }
        }
        db.apply(w)?;
        for doc in docs {
            index.put(doc);
        }
        written = (written + BATCH).min(n);
    }
    store.flush_blocking()?;
    if !index.caught_up(Duration::from_secs(600)) {
        bail!("the index did not catch up in 10 minutes");
    }
    index.close();
    drop(index);
    let asked = (0..queries)
        .map(|_| {
            let k = rng.gen_range(1..=2);
            (0..k)
                .map(|_| zipf(&mut rng, words))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    Ok(asked)
}

fn capitalised(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<String>>()
        .join(" ")
}
