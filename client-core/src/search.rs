//! Search across everything this user may read, without telling the server anything
//! about secret groups.
//!
//! - Public groups and announcements are searched by the server (its full-text index,
//!   with German stemming), so a colleague finds posts their device never fetched.
//! - Secret groups and rooms are searched in the profile's own FTS5 index (see
//!   [`ProfileStore::search_timeline`](crate::store::ProfileStore::search_timeline)): only
//!   what this device has received and decrypted, and the query never leaves the device.
//!   FTS5 has no German stemmer; local words match as prefixes instead.
//!
//! Without a group both are asked and merged: each list's scores are scaled to its best
//! hit (BM25 values of two engines are not comparable as they are), then the merged list
//! is ordered by that, newest first among equals, and a post found twice is shown once.

use rathaus_protocol::limits::{DEFAULT_SEARCH_RESULTS, MAX_SEARCH_QUERY, MAX_SEARCH_RESULTS};
use rathaus_protocol::{GroupHandle, Request, Response, SearchSource};

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::store::LocalHit;

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResult {
    /// The group (`docs` for a document of the library).
    pub group: String,
    /// The post's seq (0 for a document).
    pub seq: u64,
    /// A document's path in the library, for a document.
    pub document: Option<String>,
    /// Sender's personnel number.
    pub sender: String,
    /// Sender's display name.
    pub sender_name: String,
    /// Server time, Unix ms.
    pub sent_at_ms: i64,
    /// Excerpt around the words found.
    pub snippet: String,
    /// Where it was found: on the server or in this device's own index.
    pub found: Found,
    /// Relevance scaled to the best hit of the same source (1.0), for merging.
    pub relevance: f64,
}

/// What a search found.
#[derive(Debug, Clone, PartialEq)]
pub struct Searched {
    /// The results, best first.
    pub results: Vec<SearchResult>,
    /// The server could not be asked (its error code and message): the results are
    /// what this device holds, public groups included, and may miss newer posts.
    pub offline: Option<(&'static str, String)>,
}

/// Which index found a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The server's index (public groups, announcements, documents).
    Server,
    /// This device's index (secret groups and rooms).
    Device,
}

impl Client {
    /// Searches for `query` (plain words, at most
    /// [`MAX_SEARCH_QUERY`] bytes): in `group` only, or everywhere this user reads.
    /// A secret group is searched on this device only. At most `limit` results (0: the
    /// default of 20; at most 100), best first. With the server unreachable, this
    /// device's own index answers for everything it holds, marked `offline`.
    pub async fn search(
        &mut self,
        query: &str,
        group: Option<&GroupHandle>,
        limit: u32,
    ) -> Result<Searched> {
        if query.trim().is_empty() {
            return Err(ClientError::Invalid("the search query is empty".into()));
        }
        if query.len() > MAX_SEARCH_QUERY {
            return Err(ClientError::Invalid(format!(
                "a search query is at most {MAX_SEARCH_QUERY} bytes"
            )));
        }
        let limit = match limit {
            0 => DEFAULT_SEARCH_RESULTS,
            n => n.min(MAX_SEARCH_RESULTS),
        };
        let (ask_server, mut ask_device) = match group {
            Some(g) if g.is_secret() => (false, true),
            Some(_) => (true, false),
            None => (true, true),
        };
        let mut server = Vec::new();
        let mut offline = None;
        if ask_server {
            let request = Request::Search {
                query: query.to_owned(),
                group: group.cloned(),
                limit,
            };
            match self.request(&request).await {
                Ok(Response::SearchResults(hits)) => server = hits,
                Ok(_) => return Err(ClientError::UnexpectedResponse("Search")),
                // Unreachable: what this device has read of public groups is in its
                // own index too.
                Err(e) if e.is_transient() => {
                    offline = Some((e.code_name(), e.to_string()));
                    ask_device = true;
                }
                Err(e) => return Err(e),
            }
        }
        let mut local = Vec::new();
        if ask_device {
            let group = group.map(ToString::to_string);
            local = self.store.search_timeline(
                query,
                group.as_deref(),
                offline.is_none(),
                crate::time_fmt::now_ms(),
                limit as usize,
            )?;
        }
        let best = server.iter().map(|h| h.score_millis).max().unwrap_or(0);
        let mut results: Vec<SearchResult> = server
            .into_iter()
            .map(|h| {
                let (group, seq, document) = match h.source {
                    SearchSource::Post { group, seq } => (group.to_string(), seq, None),
                    SearchSource::Document { path } => ("docs".to_owned(), 0, Some(path)),
                };
                SearchResult {
                    group,
                    seq,
                    document,
                    sender: h.sender.to_string(),
                    sender_name: h.sender_name,
                    sent_at_ms: h.sent_at_ms,
                    snippet: h.snippet,
                    found: Found::Server,
                    relevance: scaled(f64::from(h.score_millis), f64::from(best)),
                }
            })
            .collect();
        let best_local = local.iter().map(|h| h.score).fold(0.0, f64::max);
        results.extend(local.into_iter().map(|h| device_result(h, best_local)));
        Ok(Searched {
            results: merge(results, limit as usize),
            offline,
        })
    }
}

fn device_result(h: LocalHit, best: f64) -> SearchResult {
    SearchResult {
        relevance: scaled(h.score, best),
        group: h.group,
        seq: h.seq,
        document: None,
        sender: h.sender,
        sender_name: h.sender_name,
        sent_at_ms: h.sent_at_ms,
        snippet: h.snippet.split_whitespace().collect::<Vec<_>>().join(" "),
        found: Found::Device,
    }
}

fn scaled(score: f64, best: f64) -> f64 {
    if best > 0.0 {
        (score / best).clamp(0.0, 1.0)
    } else {
        1.0
    }
}

/// Orders by relevance, then newest, drops repeats of the same post, keeps `limit`.
fn merge(mut results: Vec<SearchResult>, limit: usize) -> Vec<SearchResult> {
    results.sort_by(|a, b| {
        b.relevance
            .total_cmp(&a.relevance)
            .then(b.sent_at_ms.cmp(&a.sent_at_ms))
            .then(b.seq.cmp(&a.seq))
    });
    let mut seen = std::collections::HashSet::new();
    results.retain(|r| seen.insert((r.group.clone(), r.seq, r.document.clone())));
    results.truncate(limit);
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(group: &str, seq: u64, at: i64, relevance: f64) -> SearchResult {
        SearchResult {
            group: group.into(),
            seq,
            document: None,
            sender: "P1".into(),
            sender_name: "Anna".into(),
            sent_at_ms: at,
            snippet: String::new(),
            found: Found::Server,
            relevance,
        }
    }

    #[test]
    fn merged_results_are_ranked_newest_first_on_ties_and_not_repeated() {
        let merged = merge(
            vec![
                result("bauamt", 1, 10, 0.5),
                result("bauamt/secret", 4, 30, 1.0),
                result("bauamt", 2, 20, 1.0),
                result("bauamt", 2, 20, 1.0),
            ],
            10,
        );
        let order: Vec<(&str, u64)> = merged.iter().map(|r| (r.group.as_str(), r.seq)).collect();
        assert_eq!(
            order,
            vec![("bauamt/secret", 4), ("bauamt", 2), ("bauamt", 1)]
        );
        assert_eq!(merge(merged, 1).len(), 1);
    }
}
