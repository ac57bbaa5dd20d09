//! The server's full-text index of what it can read: public department groups,
//! announcements and (once the document library records them) document names.
//!
//! **Derived data.** The index lives in `DIR/search/` and is never the record of anything:
//! the store is. It is rebuilt from the store at start when the directory is missing,
//! written by another index format ([`FORMAT`]) or was not closed cleanly (a crash may have
//! lost index work that the store kept); every hit is checked against the store again
//! before it is shown (see `service::search`), so a stale document can never show a
//! moderated, deleted or expired post.
//!
//! **Secret groups never reach it**, by construction: their log holds only MLS
//! ciphertext, [`SearchIndex::index_entry`] takes only readable content, and it refuses
//! secret handles outright.
//!
//! **Batched commits.** One thread owns the tantivy writer and applies every change in
//! the order it was queued; it commits at most [`COMMIT_DELAY`] after the first
//! uncommitted change, so a burst of posts shares one commit. A search waits for the work
//! queued before it: it asks the thread to commit now and waits (at most [`SEARCH_WAIT`])
//! until it has. So a search sees every post acknowledged before it was asked, and tests
//! need no timing; [`SearchIndex::caught_up`] waits the same way without searching.
//!
//! **Language.** Posts are German: words are split at everything that is not a letter or
//! digit, lower-cased, German stop words dropped and the rest reduced by the German
//! Snowball stemmer, so "Baustellen" finds "Baustelle". A query is plain words only —
//! there is no operator syntax to get wrong or to make a search expensive: at most
//! [`MAX_SEARCH_TERMS`] words, all of which must occur.

mod rebuild;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rathaus_protocol::limits::MAX_SEARCH_TERMS;
use rathaus_protocol::{ContentBody, DocPath, EntryBody, GroupHandle, SearchSource, UserId};
use tantivy::collector::TopDocs;
use tantivy::indexer::UserOperation;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, FAST, STORED, STRING,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::store::{Db, StoredEntry};

/// The index format: a directory written by another one is rebuilt.
pub const FORMAT: &str = "rathaus-search 1";

/// Longest time between the first uncommitted change and its commit: how far a search
/// may lag behind accepted posts if nobody searches meanwhile.
pub const COMMIT_DELAY: Duration = Duration::from_millis(250);

/// Longest a search waits for queued index work (normally one commit, a few ms) before it
/// answers from what is committed.
pub const SEARCH_WAIT: Duration = Duration::from_secs(5);

/// Longest snippet, in characters.
const SNIPPET_CHARS: usize = 160;

/// Memory the writer buffers before it writes a segment.
const WRITER_MEMORY: usize = 64 * 1024 * 1024;

/// How long the writer thread lets changes gather after one wakes it. A sender wakes the
/// thread only while it waits on the queue, so under a stream of posts one wake-up (and
/// one hand-over to tantivy's indexing thread) serves every change of this span, not
/// each post; a search waits at most this much longer.
const GATHER: Duration = Duration::from_millis(2);

/// Most index operations handed to tantivy at once (a rebuild hands over many).
const MAX_BATCH: usize = 256;

/// The name of the German analyzer in tantivy's tokenizer registry.
const GERMAN: &str = "rathaus_de";

/// The state file's name inside the index directory.
const STATE_FILE: &str = "STATE";

/// The full-text index. Cheap to share; every method may be called from any thread.
pub struct SearchIndex {
    /// Searchers over the last commit.
    reader: IndexReader,
    /// The schema's fields.
    fields: Fields,
    /// Queue to the writer thread; taken together with `progress`, so numbers are queue
    /// order.
    ops: Mutex<Option<mpsc::Sender<Op>>>,
    /// How much queued work the writer thread has committed.
    progress: Arc<Progress>,
    /// The writer thread, joined by [`SearchIndex::close`].
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Where the index lives on disk (`None`: in memory).
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Why the index failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// tantivy failed (IO, a corrupt segment, …).
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    /// The index directory could not be read or written.
    #[error("search index directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The index was closed.
    #[error("the search index is closed")]
    Closed,
}

/// What to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// The user's words (plain text; anything that is not a letter or digit separates
    /// words).
    pub text: String,
    /// Only this group.
    pub group: Option<GroupHandle>,
    /// Most hits wanted.
    pub limit: usize,
}

/// One hit, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexHit {
    /// Where it is.
    pub source: SearchSource,
    /// Who wrote it.
    pub sender: UserId,
    /// Their display name then.
    pub sender_name: String,
    /// Server time, Unix ms.
    pub sent_at_ms: i64,
    /// An excerpt around the words found.
    pub snippet: String,
    /// BM25 relevance.
    pub score: f32,
}

/// A document as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDoc {
    /// What it is.
    pub source: SearchSource,
    /// Who wrote it.
    pub sender: UserId,
    /// Their display name then.
    pub sender_name: String,
    /// Server time, Unix ms.
    pub sent_at_ms: i64,
    /// The searchable text.
    pub text: String,
}

impl IndexDoc {
    /// The document for a log entry, if it holds readable text: a text post or a
    /// published announcement of a public group or `announcements`. `None` for secret
    /// groups (whatever the entry), MLS bytes, tombstones, reactions and the like.
    pub fn for_entry(group: &GroupHandle, seq: u64, entry: &StoredEntry) -> Option<Self> {
        if group.is_secret() {
            return None;
        }
        let EntryBody::Content(content) = &entry.body else {
            return None;
        };
        let text = match &content.body {
            ContentBody::Text { text, .. } => text.clone(),
            ContentBody::Announcement { title, text, .. } => format!("{title}\n{text}"),
            _ => return None,
        };
        Some(Self {
            source: SearchSource::Post {
                group: group.clone(),
                seq,
            },
            sender: entry.sender.clone(),
            sender_name: entry.sender_name.clone(),
            sent_at_ms: entry.sent_at_ms,
            text,
        })
    }

    /// The document for a library document: found by the words of its path (folders
    /// and name), not its content.
    pub fn document(path: &DocPath, by: &UserId, by_name: &str, at_ms: i64) -> Self {
        Self {
            source: SearchSource::Document {
                path: path.as_str().to_owned(),
            },
            sender: by.clone(),
            sender_name: by_name.to_owned(),
            sent_at_ms: at_ms,
            text: path.as_str().to_owned(),
        }
    }
}

impl SearchIndex {
    /// Opens the index in `dir` (normally `DATA/search`), creating it if needed. When the
    /// directory is missing, of another [`FORMAT`] or was not closed cleanly, it is wiped
    /// and rebuilt from `db` by the writer thread before it applies any other change;
    /// searches meanwhile answer from what is rebuilt so far.
    pub fn open(dir: &Path, db: Db) -> Result<Self, SearchError> {
        let io = |source| SearchError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let state_path = dir.join(STATE_FILE);
        let state = fs::read_to_string(&state_path).ok();
        let reusable = state.as_deref() == Some(&clean_state());
        let index = if reusable {
            match Index::open_in_dir(dir) {
                Ok(index) if index.schema() == schema().0 => Some(index),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "search index unreadable; rebuilding it");
                    None
                }
            }
        } else {
            None
        };
        let (index, rebuild) = match index {
            Some(index) => (index, false),
            None => {
                if dir.exists() {
                    fs::remove_dir_all(dir).map_err(io)?;
                }
                fs::create_dir_all(dir).map_err(io)?;
                (Index::create_in_dir(dir, schema().0)?, true)
            }
        };
        write_state(&state_path, &open_state()).map_err(io)?;
        if rebuild {
            tracing::info!(dir = %dir.display(), "rebuilding the search index from the store");
        }
        Self::start(index, Some(dir.to_path_buf()), rebuild.then_some(db))
    }

    /// An index in memory (for unit tests and benchmarks), filled from `db` first.
    pub fn in_memory(db: Option<Db>) -> Result<Self, SearchError> {
        Self::start(Index::create_in_ram(schema().0), None, db)
    }

    fn start(index: Index, dir: Option<PathBuf>, rebuild: Option<Db>) -> Result<Self, SearchError> {
        index.tokenizers().register(GERMAN, german_analyzer());
        let fields = schema().1;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let writer: IndexWriter = index.writer_with_num_threads(1, WRITER_MEMORY)?;
        let progress = Arc::new(Progress::default());
        let (tx, rx) = mpsc::channel();
        let mut worker = Worker {
            writer,
            reader: reader.clone(),
            fields,
            progress: progress.clone(),
            pending: HashMap::new(),
            batch: Vec::new(),
            applied: 0,
            dirty_since: None,
        };
        let search = Self {
            reader,
            fields,
            ops: Mutex::new(Some(tx)),
            progress,
            thread: Mutex::new(None),
            dir,
        };
        if let Some(db) = rebuild {
            // Counted as one change, so the first searches wait for (a bounded part of) it.
            search.send(|n| Op::Rebuild(n, db));
        }
        let thread = std::thread::Builder::new()
            .name("search-index".into())
            .spawn(move || worker.run(&rx))
            .map_err(|source| SearchError::Io {
                path: PathBuf::from("(search-index thread)"),
                source,
            })?;
        *search.thread() = Some(thread);
        Ok(search)
    }

    /// Indexes a log entry if it holds readable text (see [`IndexDoc::for_entry`]);
    /// replaces what the index held for `(group, seq)`.
    pub fn index_entry(&self, group: &GroupHandle, seq: u64, entry: &StoredEntry) {
        if let Some(doc) = IndexDoc::for_entry(group, seq, entry) {
            self.put(doc);
        }
    }

    /// Adds or replaces a document. Secret groups are refused (and logged): their
    /// content must never reach the server's index.
    pub fn put(&self, doc: IndexDoc) {
        if let SearchSource::Post { group, .. } = &doc.source {
            if group.is_secret() {
                tracing::error!(%group, "refused to index a secret group");
                return;
            }
        }
        self.send(|n| Op::Put(n, doc));
    }

    /// Replaces the text of the post `(group, seq)` (an edit), keeping its sender and
    /// time; nothing happens if it is not indexed.
    pub fn replace(&self, group: &GroupHandle, seq: u64, new_text: &str) {
        if group.is_secret() {
            return;
        }
        let key = post_key(group, seq);
        let text = new_text.to_owned();
        self.send(|n| Op::Replace(n, key, text));
    }

    /// Removes the post `(group, seq)` (moderated, deleted by its author or by
    /// retention).
    pub fn remove(&self, group: &GroupHandle, seq: u64) {
        let key = post_key(group, seq);
        self.send(|n| Op::Remove(n, key));
    }

    /// Indexes a document of the document library by its name (the library calls this
    /// when a document is stored or renamed; its content is not indexed).
    pub fn index_document(
        &self,
        path: &str,
        name: &str,
        sender: &UserId,
        sender_name: &str,
        sent_at_ms: i64,
    ) {
        self.put(IndexDoc {
            source: SearchSource::Document {
                path: path.to_owned(),
            },
            sender: sender.clone(),
            sender_name: sender_name.to_owned(),
            sent_at_ms,
            text: name.to_owned(),
        });
    }

    /// Removes a document of the library.
    pub fn remove_document(&self, path: &str) {
        let key = document_key(path);
        self.send(|n| Op::Remove(n, key));
    }

    /// Waits until everything queued so far is committed and searchable (at most
    /// `timeout`); `false` if it was not in time.
    pub fn caught_up(&self, timeout: Duration) -> bool {
        let target = self.progress.state().queued;
        self.wait_for(target, timeout)
    }

    /// The best hits for `query`, after every change queued before this call (waiting
    /// at most [`SEARCH_WAIT`]). A query with no searchable word finds nothing.
    pub fn search(&self, query: &SearchQuery) -> Result<Vec<IndexHit>, SearchError> {
        let target = self.progress.state().queued;
        if !self.wait_for(target, SEARCH_WAIT) {
            tracing::warn!("search index is behind; answering from the last commit");
        }
        let terms = self.terms(&query.text);
        if terms.is_empty() || query.limit == 0 {
            return Ok(Vec::new());
        }
        let f = self.fields;
        let word_clauses = || -> Vec<(Occur, Box<dyn Query>)> {
            terms
                .iter()
                .map(|t| {
                    let q: Box<dyn Query> = Box::new(TermQuery::new(
                        Term::from_field_text(f.text, t),
                        IndexRecordOption::WithFreqs,
                    ));
                    (Occur::Must, q)
                })
                .collect()
        };
        let text_query = BooleanQuery::new(word_clauses());
        let mut clauses = word_clauses();
        if let Some(group) = &query.group {
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(f.group, &group.to_string()),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        let full = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        // Relevance first, then the newest: (score, sent_at) compared as a pair.
        let collector = TopDocs::with_limit(query.limit).tweak_score(
            move |segment: &tantivy::SegmentReader| {
                let sent_at = segment
                    .fast_fields()
                    .i64("sent_at")
                    .map(|c| c.first_or_default_col(0))
                    .ok();
                move |doc: tantivy::DocId, score: tantivy::Score| {
                    (score, sent_at.as_ref().map_or(0, |c| c.get_val(doc)))
                }
            },
        );
        let top: Vec<((f32, i64), DocAddress)> = searcher.search(&full, &collector)?;
        let mut snippets = SnippetGenerator::create(&searcher, &text_query, f.text)?;
        snippets.set_max_num_chars(SNIPPET_CHARS);
        let mut hits = Vec::with_capacity(top.len());
        for ((score, _), address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            if let Some(hit) = self.hit(&doc, score, &snippets) {
                hits.push(hit);
            }
        }
        Ok(hits)
    }

    /// Commits what is queued and stops the writer thread; on disk, marks the index as
    /// closed cleanly so the next start reuses it. Further changes are ignored.
    pub fn close(&self) {
        let tx = self.ops().take();
        if let Some(tx) = tx {
            let _ = tx.send(Op::Close);
        }
        let thread = self.thread().take();
        let Some(thread) = thread else {
            return;
        };
        if thread.join().is_err() {
            tracing::error!("search index thread panicked; the index is rebuilt at next start");
            return;
        }
        let failed = self.progress.state().failed;
        if let (Some(dir), false) = (&self.dir, failed) {
            if let Err(e) = write_state(&dir.join(STATE_FILE), &clean_state()) {
                tracing::warn!(error = %e, "cannot mark the search index closed; it is rebuilt at next start");
            }
        }
    }

    /// Queues an operation numbered in queue order.
    fn send(&self, op: impl FnOnce(u64) -> Op) {
        let ops = self.ops();
        let Some(tx) = ops.as_ref() else {
            return;
        };
        let mut state = self.progress.state();
        state.queued += 1;
        if tx.send(op(state.queued)).is_err() {
            tracing::error!("search index thread is gone; the index is rebuilt at next start");
        }
    }

    fn wait_for(&self, target: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let urge = {
            let mut state = self.progress.state();
            if state.committed >= target {
                return true;
            }
            !std::mem::replace(&mut state.urged, true)
        };
        if urge {
            // Not under the progress lock: `send` takes the queue, then progress.
            if let Some(tx) = self.ops().as_ref() {
                let _ = tx.send(Op::Urge);
            }
        }
        let mut state = self.progress.state();
        while state.committed < target && !state.stopped {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .progress
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.committed >= target
    }

    /// The distinct analysed words of `text`, at most [`MAX_SEARCH_TERMS`].
    fn terms(&self, text: &str) -> Vec<String> {
        let mut analyzer = german_analyzer();
        let mut stream = analyzer.token_stream(text);
        let mut seen = HashSet::new();
        let mut terms = Vec::new();
        while stream.advance() {
            let t = stream.token().text.clone();
            if seen.insert(t.clone()) {
                terms.push(t);
                if terms.len() >= MAX_SEARCH_TERMS {
                    break;
                }
            }
        }
        terms
    }

    fn hit(
        &self,
        doc: &TantivyDocument,
        score: f32,
        snippets: &SnippetGenerator,
    ) -> Option<IndexHit> {
        let f = self.fields;
        let text_of = |field: Field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let source = match text_of(f.path) {
            Some(path) => SearchSource::Document { path },
            None => SearchSource::Post {
                group: GroupHandle::parse(&text_of(f.group)?).ok()?,
                seq: doc.get_first(f.seq).and_then(|v| v.as_u64())?,
            },
        };
        let text = text_of(f.text).unwrap_or_default();
        let fragment = snippets.snippet_from_doc(doc);
        let snippet = if fragment.fragment().trim().is_empty() {
            text.chars().take(SNIPPET_CHARS).collect()
        } else {
            fragment.fragment().to_owned()
        };
        Some(IndexHit {
            source,
            sender: UserId::parse(&text_of(f.sender)?).ok()?,
            sender_name: text_of(f.sender_name).unwrap_or_default(),
            sent_at_ms: doc
                .get_first(f.sent_at)
                .and_then(|v| v.as_i64())
                .unwrap_or(0),
            snippet: one_line(&snippet),
            score,
        })
    }

    fn ops(&self) -> MutexGuard<'_, Option<mpsc::Sender<Op>>> {
        // Taken for one send or take; a poisoned lock holds a usable sender.
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn thread(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        self.thread.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for SearchIndex {
    fn drop(&mut self) {
        self.close();
    }
}

/// The fields of the schema.
#[derive(Debug, Clone, Copy)]
struct Fields {
    /// Identity for replacing and removing: `post\0GROUP\0SEQ` or `doc\0PATH`.
    key: Field,
    /// The group's handle (posts), for `--group`.
    group: Field,
    /// The post's seq.
    seq: Field,
    /// The document's path (documents).
    path: Field,
    /// Personnel number of the author.
    sender: Field,
    /// Their display name.
    sender_name: Field,
    /// Server time, Unix ms: the tie-breaker of equal relevance.
    sent_at: Field,
    /// The searchable text, stored for snippets.
    text: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text_options = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(GERMAN)
                .set_index_option(IndexRecordOption::WithFreqs),
        )
        .set_stored();
    let fields = Fields {
        key: b.add_text_field("key", STRING),
        group: b.add_text_field("group", STRING | STORED),
        seq: b.add_u64_field("seq", STORED),
        path: b.add_text_field("path", STORED),
        sender: b.add_text_field("sender", STORED),
        sender_name: b.add_text_field("sender_name", STORED),
        sent_at: b.add_i64_field("sent_at", FAST | STORED),
        text: b.add_text_field("text", text_options),
    };
    (b.build(), fields)
}

fn german_analyzer() -> TextAnalyzer {
    let builder = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(64))
        .filter(LowerCaser);
    match StopWordFilter::new(Language::German) {
        Some(stop_words) => builder
            .filter(stop_words)
            .filter(Stemmer::new(Language::German))
            .build(),
        None => builder.filter(Stemmer::new(Language::German)).build(),
    }
}

fn post_key(group: &GroupHandle, seq: u64) -> String {
    format!("post\0{group}\0{seq}")
}

fn document_key(path: &str) -> String {
    format!("doc\0{path}")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn clean_state() -> String {
    format!("{FORMAT}\nclean\n")
}

fn open_state() -> String {
    format!("{FORMAT}\nopen\n")
}

fn write_state(path: &Path, state: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, state)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)
}

/// Work for the writer thread; the number is the change's place in the queue.
enum Op {
    Rebuild(u64, Db),
    Put(u64, IndexDoc),
    Replace(u64, String, String),
    Remove(u64, String),
    /// Someone waits: commit now.
    Urge,
    /// Commit and stop.
    Close,
}

/// What the writer thread has done, for waiting searches.
#[derive(Debug, Default)]
struct Progress {
    state: Mutex<ProgressState>,
    /// Signalled after every commit.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct ProgressState {
    /// Changes queued (numbered 1, 2, …).
    queued: u64,
    /// Changes committed and visible to searchers.
    committed: u64,
    /// An `Urge` is on its way.
    urged: bool,
    /// The thread stopped.
    stopped: bool,
    /// A commit failed: the index may miss changes, so it is rebuilt at next start.
    failed: bool,
}

impl Progress {
    fn state(&self) -> MutexGuard<'_, ProgressState> {
        // Plain counters updated in single statements; a poisoned lock holds valid ones.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer thread's state.
struct Worker {
    writer: IndexWriter,
    reader: IndexReader,
    fields: Fields,
    progress: Arc<Progress>,
    /// Documents put since the last commit (not yet visible to a searcher), so that an
    /// edit right after its post finds it.
    pending: HashMap<String, Option<IndexDoc>>,
    /// Index operations not yet handed to tantivy (at most [`MAX_BATCH`]), in order.
    batch: Vec<UserOperation>,
    /// The number of the last change applied.
    applied: u64,
    /// When the first uncommitted change was applied.
    dirty_since: Option<Instant>,
}

impl Worker {
    fn run(&mut self, rx: &mpsc::Receiver<Op>) {
        loop {
            let op = match self.dirty_since {
                Some(since) => {
                    let wait = (since + COMMIT_DELAY).saturating_duration_since(Instant::now());
                    rx.recv_timeout(wait)
                }
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match op {
                Ok(Op::Urge) => {
                    self.progress.state().urged = false;
                    // Take in everything queued behind the urge's target, then commit once.
                    while let Ok(op) = rx.try_recv() {
                        if !self.apply(op) {
                            self.commit();
                            return self.stop();
                        }
                    }
                    self.commit();
                }
                Ok(op) => {
                    if !self.apply(op) {
                        self.commit();
                        return self.stop();
                    }
                    std::thread::sleep(GATHER);
                    let mut urged = false;
                    while let Ok(op) = rx.try_recv() {
                        urged |= matches!(op, Op::Urge);
                        if !self.apply(op) {
                            self.commit();
                            return self.stop();
                        }
                    }
                    self.hand_over();
                    if urged {
                        self.commit();
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.commit(),
                Err(RecvTimeoutError::Disconnected) => {
                    self.commit();
                    return self.stop();
                }
            }
        }
    }

    /// Applies one change; `false` for `Close`.
    fn apply(&mut self, op: Op) -> bool {
        let n = match op {
            Op::Close => return false,
            Op::Urge => {
                self.progress.state().urged = false;
                return true;
            }
            Op::Rebuild(n, db) => {
                match rebuild::fill(&db, &mut |doc| self.upsert(doc, false)) {
                    Ok(count) => tracing::info!(documents = count, "search index rebuilt"),
                    Err(e) => {
                        tracing::error!(error = %e, "rebuilding the search index failed");
                        self.progress.state().failed = true;
                    }
                }
                // A rebuild commits on its own, however soon someone searches.
                self.applied = n;
                self.commit();
                return true;
            }
            Op::Put(n, doc) => {
                self.upsert(doc, true);
                n
            }
            Op::Replace(n, key, text) => {
                if let Some(mut doc) = self.current(&key) {
                    doc.text = text;
                    self.upsert(doc, true);
                }
                n
            }
            Op::Remove(n, key) => {
                self.queue(UserOperation::Delete(Term::from_field_text(
                    self.fields.key,
                    &key,
                )));
                self.pending.insert(key, None);
                n
            }
        };
        self.applied = n;
        self.dirty_since.get_or_insert_with(Instant::now);
        true
    }

    /// Adds `doc` in place of what `key` held; `remember`: keep it for a `Replace`
    /// before the next commit (not while rebuilding, which would hold every document).
    fn upsert(&mut self, doc: IndexDoc, remember: bool) {
        let f = self.fields;
        let key = match &doc.source {
            SearchSource::Post { group, seq } => post_key(group, *seq),
            SearchSource::Document { path } => document_key(path),
        };
        self.queue(UserOperation::Delete(Term::from_field_text(f.key, &key)));
        let mut d = TantivyDocument::default();
        d.add_text(f.key, &key);
        match &doc.source {
            SearchSource::Post { group, seq } => {
                d.add_text(f.group, group.to_string());
                d.add_u64(f.seq, *seq);
            }
            SearchSource::Document { path } => d.add_text(f.path, path),
        }
        d.add_text(f.sender, doc.sender.as_str());
        d.add_text(f.sender_name, &doc.sender_name);
        d.add_i64(f.sent_at, doc.sent_at_ms);
        d.add_text(f.text, &doc.text);
        self.queue(UserOperation::Add(d));
        if remember {
            self.pending.insert(key, Some(doc));
        }
    }

    /// The document under `key` as the index will hold it after the queued changes.
    fn current(&self, key: &str) -> Option<IndexDoc> {
        if let Some(pending) = self.pending.get(key) {
            return pending.clone();
        }
        let f = self.fields;
        let searcher = self.reader.searcher();
        let query = TermQuery::new(Term::from_field_text(f.key, key), IndexRecordOption::Basic);
        let top = searcher
            .search(&query, &TopDocs::with_limit(1).order_by_score())
            .ok()?;
        let (_, address) = top.first()?;
        let doc: TantivyDocument = searcher.doc(*address).ok()?;
        let text_of = |field: Field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let source = match text_of(f.path) {
            Some(path) => SearchSource::Document { path },
            None => SearchSource::Post {
                group: GroupHandle::parse(&text_of(f.group)?).ok()?,
                seq: doc.get_first(f.seq).and_then(|v| v.as_u64())?,
            },
        };
        Some(IndexDoc {
            source,
            sender: UserId::parse(&text_of(f.sender)?).ok()?,
            sender_name: text_of(f.sender_name).unwrap_or_default(),
            sent_at_ms: doc
                .get_first(f.sent_at)
                .and_then(|v| v.as_i64())
                .unwrap_or(0),
            text: text_of(f.text).unwrap_or_default(),
        })
    }

    /// Queues an index operation for tantivy, handing the queue over once it is full.
    fn queue(&mut self, op: UserOperation) {
        self.batch.push(op);
        if self.batch.len() >= MAX_BATCH {
            self.hand_over();
        }
    }

    /// Hands the queued index operations to tantivy's indexing thread in one message.
    fn hand_over(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if let Err(e) = self.writer.run(std::mem::take(&mut self.batch)) {
            tracing::error!(error = %e, "cannot index a document");
            self.progress.state().failed = true;
        }
    }

    fn commit(&mut self) {
        self.hand_over();
        if self.dirty_since.is_some() || self.progress.state().committed < self.applied {
            if let Err(e) = self.writer.commit() {
                tracing::error!(error = %e, "search index commit failed");
                self.progress.state().failed = true;
            }
            if let Err(e) = self.reader.reload() {
                tracing::error!(error = %e, "search index reload failed");
            }
        }
        self.pending.clear();
        self.dirty_since = None;
        let mut state = self.progress.state();
        state.committed = state.committed.max(self.applied);
        drop(state);
        self.progress.changed.notify_all();
    }

    fn stop(&mut self) {
        self.progress.state().stopped = true;
        self.progress.changed.notify_all();
    }
}

#[cfg(test)]
mod tests;
