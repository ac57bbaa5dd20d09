//! Search over what the server can read (DESIGN §4: public groups are "readable by the
//! server, searchable"): public department groups, announcements and the names of the
//! library's documents, through the full-text index in [`crate::search`].
//!
//! Who may read what: every colleague reads every public group and announcements
//! ([`Service::can_read`]); secret groups are never in the index (their log is
//! ciphertext) and a search restricted to one is refused, since the server could only
//! learn the query. Every hit is checked against the store before it is answered: a post
//! that was moderated, deleted by retention or whose announcement expired is left out even
//! if the index has not caught up with that yet (after a crash, say), and so is a document
//! that was removed from the library.

use std::sync::Arc;

use rathaus_protocol::limits::{DEFAULT_SEARCH_RESULTS, MAX_SEARCH_QUERY, MAX_SEARCH_RESULTS};
use rathaus_protocol::{
    ContentBody, DocEntry, DocKind, DocPath, EntryBody, GroupHandle, Response, SearchHit,
    SearchSource,
};

use super::refused::{NotFound, SearchRefused};
use super::{Refusal, Service, Session};
use crate::search::{IndexDoc, IndexHit, SearchIndex, SearchQuery};
use crate::store::{StoredEntry, UserRecord};

/// Hits asked of the index beyond the limit, so that hits dropped by the store check
/// rarely leave a short answer.
const SLACK: usize = 16;

impl Service {
    /// Attaches the full-text index; posts are indexed from then on. Only the first call
    /// has an effect.
    pub fn set_search_index(&self, index: Arc<SearchIndex>) {
        let _ = self.search.set(index);
    }

    /// The full-text index, if one is attached (the transport attaches `DATA/search`).
    pub fn search_index(&self) -> Option<&Arc<SearchIndex>> {
        self.search.get()
    }

    /// Commits pending index work and closes the index (at shutdown).
    pub fn close_search(&self) {
        if let Some(index) = self.search.get() {
            index.close();
        }
    }

    pub(super) async fn search(
        &self,
        session: &Session,
        query: String,
        group: Option<GroupHandle>,
        limit: u32,
    ) -> Result<Response, Refusal> {
        if query.len() > MAX_SEARCH_QUERY {
            return Err(SearchRefused::QueryTooLong.into());
        }
        if query.trim().is_empty() {
            return Err(SearchRefused::EmptyQuery.into());
        }
        if let Some(group) = &group {
            if group.is_secret() {
                return Err(SearchRefused::SecretGroup(group.clone()).into());
            }
            self.ensure_searchable(group)?;
        }
        let Some(index) = self.search.get().cloned() else {
            return Err(SearchRefused::Unavailable.into());
        };
        let limit = match limit {
            0 => DEFAULT_SEARCH_RESULTS,
            n => n.min(MAX_SEARCH_RESULTS),
        } as usize;
        let request = SearchQuery {
            text: query,
            group,
            limit: limit + SLACK,
        };
        // The index blocks (it may wait for a commit) and uses a core: not on the runtime.
        let _slot = self
            .search_slots
            .acquire()
            .await
            .map_err(|_| Refusal::internal("search slots closed"))?;
        let hits = tokio::task::spawn_blocking(move || index.search(&request))
            .await
            .map_err(|e| Refusal::internal(format!("search task failed: {e}")))?
            .map_err(|e| Refusal::internal(e.to_string()))?;
        let now = self.now_ms();
        let mut results = Vec::with_capacity(limit);
        for hit in hits {
            if results.len() >= limit {
                break;
            }
            if let Some(hit) = self.checked(session, hit, now)? {
                results.push(hit);
            }
        }
        Ok(Response::SearchResults(results))
    }

    /// Indexes an entry that became durable (a post, a published announcement), takes a
    /// moderated or deleted post out of the index and gives an edited one its new words.
    /// Does nothing without an index.
    pub(super) fn index_entry(&self, group: &GroupHandle, seq: u64, entry: &StoredEntry) {
        let Some(index) = self.search.get() else {
            return;
        };
        match &entry.body {
            EntryBody::Moderated { target } => index.remove(group, *target),
            // The author's edit replaces the post's words; a delete takes them out.
            EntryBody::Content(c) => match &c.body {
                rathaus_protocol::ContentBody::Edit { target, text } => {
                    index.replace(group, *target, text);
                }
                rathaus_protocol::ContentBody::Delete { target } => index.remove(group, *target),
                rathaus_protocol::ContentBody::Reaction { .. } => {}
                _ => index.index_entry(group, seq, entry),
            },
            _ => index.index_entry(group, seq, entry),
        }
    }

    /// Takes a post out of the index (retention, moderation; and the author's own delete).
    pub(super) fn unindex(&self, group: &GroupHandle, seq: u64) {
        if let Some(index) = self.search.get() {
            index.remove(group, seq);
        }
    }

    /// Indexes a library document by its path (folders and name; its content is not
    /// indexed), as stored by `by` at `at_ms`.
    pub(super) fn index_document(&self, path: &DocPath, by: &UserRecord, at_ms: i64) {
        if let Some(index) = self.search.get() {
            index.put(IndexDoc::document(path, &by.id, &by.name, at_ms));
        }
    }

    /// Takes a removed library document out of the index.
    pub(super) fn unindex_document(&self, path: &DocPath) {
        if let Some(index) = self.search.get() {
            index.remove_document(path.as_str());
        }
    }

    /// Replaces the indexed text of a post (the author's edit).
    #[allow(dead_code)] // called by edits of posts
    pub(super) fn reindex_text(&self, group: &GroupHandle, seq: u64, new_text: &str) {
        if let Some(index) = self.search.get() {
            index.replace(group, seq, new_text);
        }
    }

    /// Whether `group` can be searched here: a public group (also of a retired
    /// department) or `announcements`.
    fn ensure_searchable(&self, group: &GroupHandle) -> Result<(), Refusal> {
        match group {
            GroupHandle::Announcements => Ok(()),
            GroupHandle::Public(slug) => {
                if self.db.department_exists(slug)? || self.is_retired(slug)? {
                    Ok(())
                } else {
                    Err(NotFound::PublicGroup(slug.clone()).into())
                }
            }
            GroupHandle::Secret(_) | GroupHandle::Room(_) => Err(SearchRefused::SecretScope.into()),
        }
    }

    /// The hit as answered, if the session may read it and the store still holds it as
    /// the index saw it.
    fn checked(
        &self,
        session: &Session,
        hit: IndexHit,
        now_ms: i64,
    ) -> Result<Option<SearchHit>, Refusal> {
        let score_millis = (hit.score.max(0.0) * 1000.0).min(u32::MAX as f32) as u32;
        let answer = |source| SearchHit {
            source,
            sender: hit.sender.clone(),
            sender_name: hit.sender_name.clone(),
            sent_at_ms: hit.sent_at_ms,
            snippet: hit.snippet.clone(),
            score_millis,
        };
        match &hit.source {
            SearchSource::Post { group, seq } => {
                if group.is_secret() || !self.can_read(session, group) {
                    return Ok(None);
                }
                let Some(entry) = self.db.entry(group, *seq)? else {
                    // Deleted (retention) after it was indexed.
                    return Ok(None);
                };
                let readable = match &entry.body {
                    EntryBody::Content(c) => match &c.body {
                        ContentBody::Text { .. } => true,
                        ContentBody::Announcement { expires_at_ms, .. } => {
                            expires_at_ms.is_none_or(|e| e > now_ms)
                        }
                        _ => false,
                    },
                    EntryBody::Mls(_) | EntryBody::Removed { .. } | EntryBody::Moderated { .. } => {
                        false
                    }
                };
                if !readable {
                    return Ok(None);
                }
                Ok(Some(answer(hit.source.clone())))
            }
            // Every colleague reads the library; the document must still be there.
            SearchSource::Document { path } => {
                let Ok(parsed) = DocPath::parse(path) else {
                    return Ok(None);
                };
                match self.db.doc(&parsed)? {
                    Some(DocEntry {
                        kind: DocKind::Document { .. },
                        ..
                    }) => Ok(Some(answer(hit.source.clone()))),
                    _ => Ok(None),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
