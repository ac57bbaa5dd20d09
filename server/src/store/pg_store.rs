//! The [`Store`] in PostgreSQL, for servers whose operators run a database already
//! (`--store postgres://…`).
//!
//! Every record is a row of `kv (k bytea PRIMARY KEY, v bytea)`, so records added to the
//! records layer need nothing here. Two rules that one sled file keeps by being one
//! process are kept by the database instead, so they hold for every process on it:
//!
//! - **Log seqs are dense.** `log_head (grp, head)` holds the last seq appended per group;
//!   the transaction that inserts `log/<group>\0<seq>` moves it from `seq - 1` to `seq`,
//!   or fails. Two writers that picked the same seq cannot both succeed. A public post
//!   ([`Batch::append_movable_entry`]) is not refused for that: its round locks the
//!   group's `log_head` row and numbers it on from the stored head, so two nodes posting
//!   into one group take turns at that row instead of refusing each other's rounds, and
//!   the post's [`Shift`] tells the server where it went.
//! - **Insert-only records** ([`Batch::append`]: log entries, their deduplication records,
//!   the claim of a commit on its epoch) are plain `INSERT`s: the primary key refuses a
//!   second one, so a client id is stored once and an epoch has one accepted commit.
//!   A refusal is [`StoreError::Conflict`].
//!
//! Writes go through the same [`Combiner`] as sled's: each round is one transaction with
//! one bulk statement per kind of write and one `COMMIT`, with `synchronous_commit = on`,
//! so an applied batch is durable and [`Store::flush`] has nothing left to do.
//!
//! The [`Store`] trait is synchronous (sled's reads are plain function calls), so the
//! store keeps a small runtime of its own that drives tokio-postgres and the
//! deadpool-postgres pool; a call hands its query to that runtime and waits for the
//! answer, as a sled read waits for the disk.
//!
//! The schema is versioned in `schema_version` and migrated at open, under an advisory
//! lock so that nodes starting together migrate once.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;

use super::combine::Combiner;
use super::pg_tls::PgTls;
use super::snapshot::{self, SnapshotInfo, SnapshotReader, INTERNAL_PREFIX};
use super::{ApplyTicket, Batch, FlushFuture, KeyValue, Shift, Store, StoreError};

/// Connections in the pool of one server process.
const POOL_SIZE: usize = 16;
/// How long a caller waits for a free connection, and for a new one to be made.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// Rows per statement when a snapshot is read or loaded.
const PAGE: usize = 1000;
/// The advisory lock key under which the schema is migrated ("rathaus" in ASCII).
const MIGRATION_LOCK: i64 = 0x0072_6174_6861_7573;

/// The schema, one step per version; `schema_version` records the steps applied.
const MIGRATIONS: &[&str] = &[
    // 1: records, log heads, ids.
    "CREATE TABLE kv (k bytea PRIMARY KEY, v bytea NOT NULL);
     CREATE TABLE log_head (grp bytea PRIMARY KEY, head bigint NOT NULL CHECK (head >= 0));
     CREATE SEQUENCE ids START 1;",
];

/// A [`Store`] in a PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    /// Drives the pool's connections.
    rt: Arc<OwnRuntime>,
    /// Connections to the database.
    pool: Pool,
    /// Every batch goes through here: one transaction per round.
    writes: Arc<Combiner>,
    /// How to connect (for the listener's and the leader lock's connections of their own).
    config: tokio_postgres::Config,
    /// The TLS of every connection (`sslmode`, `sslrootcert`).
    tls: PgTls,
    /// This process among the nodes on the database (random, for telling its own
    /// notifications from the others').
    node: u64,
    /// This node's notifications to the others (`pg_notify`).
    notices: tokio::sync::mpsc::Sender<super::pg_notify::Outgoing>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

/// The store's runtime, shut down without waiting when the last handle goes (dropping a
/// runtime the ordinary way inside another runtime's task would panic).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("set until drop"))
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Whether `url` names a PostgreSQL store (as opposed to the data directory's sled file).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host/db`, or with
    /// `?host=/run/postgresql` for a Unix socket) and brings its schema up to date. Over
    /// TCP the URL's `sslmode` and `sslrootcert` choose TLS as libpq does (see `pg_tls`).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let (mut config, tls) = super::pg_tls::settings(url)?;
        // Every COMMIT waits for the WAL flush: an acknowledged post survives a crash.
        config.options("-c synchronous_commit=on -c client_min_messages=warning");
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("rathaus-server");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rathaus-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot start the database runtime: {e}")))?;
        let listen_config = config.clone();
        let manager = Manager::from_config(
            config,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot make the connection pool: {e}")))?;
        let node = rand::random::<u64>();
        let notices = super::pg_notify::spawn_sender(&rt, pool.clone(), node);
        let store = Self {
            rt: Arc::new(OwnRuntime(Some(rt))),
            pool,
            writes: Arc::default(),
            config: listen_config,
            tls,
            node,
            notices,
        };
        store.run(|pool| async move { migrate(&pool).await })?;
        Ok(store)
    }

    /// Runs `f` on the store's runtime and waits for its result.
    fn run<T, F>(&self, f: impl FnOnce(Pool) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let task = f(self.pool.clone());
        self.rt.get().spawn(async move {
            let _ = tx.send(task.await);
        });
        // A query on a local database takes a fraction of a millisecond: the caller's
        // thread waits for it as it would for a sled read from disk. (Handing the worker
        // over with `block_in_place` for each query made tokio start a thread per waiting
        // request under bursts, each with its own allocator heap.)
        rx.recv()
            .map_err(|_| StoreError::Backend("the database task ended early".into()))?
    }

    /// Runs `task` on the store's runtime; the caller awaits its result without holding
    /// a thread of its own runtime for the round trip.
    fn spawned<T: Send + 'static>(
        &self,
        task: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.rt.get().spawn(async move {
            let _ = tx.send(task.await);
        });
        async move {
            rx.await
                .map_err(|_| StoreError::Backend("the database task ended early".into()))?
        }
    }

    /// Applies `batches`, in order, as one transaction.
    fn apply_now(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        let plan = Plan::of(batches)?;
        self.run(|pool| async move { plan.execute(&pool, &HeadsMoved::default()).await })
    }

    /// Whether the database holds no record yet.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM kv) AND NOT EXISTS (SELECT 1 FROM log_head)",
                    &[],
                )
                .await
                .map_err(pg)?;
            Ok(row.get::<_, bool>(0))
        })
    }

    /// Fills the empty database from a snapshot in one transaction (so a failure leaves
    /// it empty) and continues the ids after `next_id`; returns the pairs written.
    /// Refuses a database that holds anything already. Call it outside of an async
    /// runtime (it is for `migrate`): it feeds the pages with blocking sends.
    pub fn load(
        &self,
        snapshot: &mut SnapshotReader<impl std::io::Read>,
        next_id: u64,
    ) -> Result<u64, StoreError> {
        if !self.is_empty()? {
            return Err(StoreError::Backend(
                "the PostgreSQL database already holds Rathaus records; load only into an \
                 empty one"
                    .into(),
            ));
        }
        let (pages, mut rx) = tokio::sync::mpsc::channel::<Vec<KeyValue>>(2);
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        self.rt.get().spawn({
            let pool = self.pool.clone();
            async move {
                let result = async {
                    let mut client = pool.get().await.map_err(pool_error)?;
                    let tx = client.transaction().await.map_err(pg)?;
                    let insert = tx
                        .prepare("INSERT INTO kv (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[])")
                        .await
                        .map_err(pg)?;
                    let mut heads: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
                    let mut written = 0u64;
                    while let Some(page) = rx.recv().await {
                        for (key, value) in &page {
                            if let Some((grp, seq)) = log_position(key) {
                                let head = heads.entry(grp.to_vec()).or_default();
                                *head = (*head).max(seq);
                            } else if let Some(grp) = key.strip_prefix(FLOOR) {
                                let floor: u64 = super::codec::decode(key, value)?;
                                let head = heads.entry(grp.to_vec()).or_default();
                                *head = (*head).max(to_i64(floor)?);
                            }
                        }
                        written += page.len() as u64;
                        let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = page.into_iter().unzip();
                        tx.execute(&insert, &[&keys, &values]).await.map_err(pg)?;
                    }
                    let (grps, values): (Vec<Vec<u8>>, Vec<i64>) = heads.into_iter().unzip();
                    tx.execute(
                        "INSERT INTO log_head (grp, head) SELECT * FROM unnest($1::bytea[], $2::int8[])",
                        &[&grps, &values],
                    )
                    .await
                    .map_err(pg)?;
                    tx.execute("SELECT setval('ids', $1)", &[&to_i64(next_id.max(1))?])
                        .await
                        .map_err(pg)?;
                    tx.commit().await.map_err(pg)?;
                    Ok::<_, StoreError>(written)
                }
                .await;
                let _ = done_tx.send(result);
            }
        });
        let mut page = Vec::with_capacity(PAGE);
        let mut feed = || -> Result<(), StoreError> {
            while let Some((key, value)) = snapshot.next_pair()? {
                if key.starts_with(INTERNAL_PREFIX) {
                    continue;
                }
                page.push((key, value));
                if page.len() == PAGE && pages.blocking_send(std::mem::take(&mut page)).is_err() {
                    return Ok(()); // the loader failed; its error is below
                }
            }
            if !page.is_empty() {
                let _ = pages.blocking_send(std::mem::take(&mut page));
            }
            Ok(())
        };
        let fed = feed();
        drop(pages);
        let loaded = done_rx
            .recv()
            .map_err(|_| StoreError::Backend("the database task ended early".into()))?;
        // A broken snapshot must not leave a half-filled database: the loader's
        // transaction commits only when the feed ended cleanly.
        fed?;
        loaded
    }
}

/// `floor/`: retention's record of the highest seq it deleted (see the records layer).
const FLOOR: &[u8] = b"floor/";
/// `log/<group>\0<seq u64 BE>`: a log entry.
const LOG: &[u8] = b"log/";

/// The group and seq of a log key.
fn log_position(key: &[u8]) -> Option<(&[u8], i64)> {
    let rest = key.strip_prefix(LOG)?;
    let at = rest.len().checked_sub(9)?;
    if rest[at] != 0 {
        return None;
    }
    let seq = u64::from_be_bytes(rest[at + 1..].try_into().ok()?);
    Some((&rest[..at], i64::try_from(seq).ok()?))
}

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Encode(format!("{n} exceeds PostgreSQL's bigint")))
}

/// The groups whose head another writer moved, as found by a round: when the round is
/// tried again batch by batch, a batch appending to one of them would fail the same way
/// (its first seq follows one of the round's, which were not stored), so it is refused
/// at once instead of in a transaction of its own, and the next round can start sooner.
#[derive(Debug, Default)]
struct HeadsMoved(std::sync::Mutex<Vec<Vec<u8>>>);

impl HeadsMoved {
    fn add<'a>(&self, groups: impl Iterator<Item = &'a Vec<u8>>) {
        self.lock().extend(groups.cloned());
    }

    fn any_of(&self, groups: &[Vec<u8>]) -> bool {
        let moved = self.lock();
        !moved.is_empty() && groups.iter().any(|g| moved.contains(g))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // A list of groups, changed in single statements: a poisoned lock holds one.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The statements of one round.
#[derive(Debug, Default)]
struct Plan {
    /// Insert-only records.
    insert: (Vec<Vec<u8>>, Vec<Vec<u8>>),
    /// Records whose last write in the round is a put.
    upsert: (Vec<Vec<u8>>, Vec<Vec<u8>>),
    /// Records whose last write in the round is a remove.
    delete: Vec<Vec<u8>>,
    /// Per group: the first and last seq appended in the round.
    heads: (Vec<Vec<u8>>, Vec<i64>, Vec<i64>),
    /// Per group whose every entry in the round is movable ([`Batch::append_movable_entry`]):
    /// where in `insert` its entries and their deduplication records are.
    moves: BTreeMap<Vec<u8>, Moves>,
}

/// The movable entries of one group in a round.
#[derive(Debug, Default)]
struct Moves {
    /// In round order: the index in `insert` of the entry and of its deduplication
    /// record, the seq it was given, and its batch's handle, told where it went.
    entries: Vec<(usize, usize, u64, Shift)>,
}

impl Plan {
    /// The statements for `batches`, in order: later writes to a key win, as in sled.
    fn of(batches: &[&Batch]) -> Result<Self, StoreError> {
        let mut plan = Self::default();
        // key → (final value, whether that final write is the insert-only one)
        let mut last: BTreeMap<&[u8], (Option<&[u8]>, bool)> = BTreeMap::new();
        // Every log entry appended, in order.
        let mut logged: Vec<(&[u8], i64)> = Vec::new();
        // Groups that an entry which may not move is appended to.
        let mut fixed: BTreeSet<&[u8]> = BTreeSet::new();
        for batch in batches {
            let movable = batch.movable();
            // Index in `insert` of each op of a movable batch.
            let mut inserted_at = vec![usize::MAX; batch.ops.len()];
            for (i, (key, value)) in batch.ops.iter().enumerate() {
                let insert_only = batch.appends.binary_search(&i).is_ok();
                if let (true, Some(v)) = (insert_only, value) {
                    inserted_at[i] = plan.insert.0.len();
                    plan.insert.0.push(key.clone());
                    plan.insert.1.push(v.clone());
                    if let Some((grp, seq)) = log_position(key) {
                        if movable.is_none() {
                            fixed.insert(grp);
                        }
                        logged.push((grp, seq));
                    }
                }
                last.insert(key.as_slice(), (value.as_deref(), insert_only));
            }
            if let Some(movable) = movable {
                // Stored as given unless the round moves it.
                movable.shift.set(0);
                let groups: BTreeSet<&[u8]> = movable
                    .entries
                    .iter()
                    .filter_map(|(e, _, _)| log_position(&batch.ops[*e].0).map(|(g, _)| g))
                    .collect();
                match (groups.len(), groups.first()) {
                    (1, Some(grp)) => {
                        let moves = plan.moves.entry(grp.to_vec()).or_default();
                        moves
                            .entries
                            .extend(movable.entries.iter().map(|(e, d, seq)| {
                                (
                                    inserted_at[*e],
                                    inserted_at[*d],
                                    *seq,
                                    movable.shift.clone(),
                                )
                            }));
                    }
                    _ => fixed.extend(groups),
                }
            }
        }
        for (key, (value, insert_only)) in last {
            match (value, insert_only) {
                (Some(_), true) => {}
                (Some(v), false) => {
                    plan.upsert.0.push(key.to_vec());
                    plan.upsert.1.push(v.to_vec());
                }
                (None, _) => plan.delete.push(key.to_vec()),
            }
        }
        // A group moves as a whole: where any of its entries may not, none does.
        plan.moves.retain(|grp, _| !fixed.contains(grp.as_slice()));
        // Per group: the first and last seq appended, each following the one before
        // (a moving group's are set where it is placed).
        let mut appended: BTreeMap<&[u8], (i64, i64)> = BTreeMap::new();
        for (grp, seq) in logged {
            if plan.moves.contains_key(grp) {
                appended.entry(grp).or_insert((0, 0));
                continue;
            }
            match appended.get_mut(grp) {
                Some((_, prev))
                    if rathaus_protocol::log::follows(
                        u64::try_from(*prev).unwrap_or(u64::MAX),
                        u64::try_from(seq).unwrap_or(0),
                    ) =>
                {
                    *prev = seq
                }
                Some((_, prev)) => {
                    return Err(StoreError::Conflict(format!(
                        "seq {seq} appended after {prev} in one write"
                    )))
                }
                None => {
                    appended.insert(grp, (seq, seq));
                }
            }
        }
        for (grp, (first, last)) in appended {
            plan.heads.0.push(grp.to_vec());
            plan.heads.1.push(first);
            plan.heads.2.push(last);
        }
        Ok(plan)
    }

    /// Locks the head of every group the round appends to (in one pass, in key order, so
    /// two rounds never wait for each other crosswise) and numbers each group's movable
    /// entries on from its stored head, in round order: two nodes appending to one group
    /// take turns at the database instead of refusing each other's rounds.
    async fn place_movable(
        &mut self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<(), StoreError> {
        let statement = tx
            .prepare_cached(
                "SELECT grp, head FROM log_head WHERE grp = ANY($1) ORDER BY grp FOR UPDATE",
            )
            .await
            .map_err(pg)?;
        let rows = tx.query(&statement, &[&self.heads.0]).await.map_err(pg)?;
        let stored: BTreeMap<Vec<u8>, i64> =
            rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
        for (grp, moves) in &self.moves {
            let Some(i) = self.heads.0.iter().position(|g| g == grp) else {
                continue;
            };
            // No row yet: nothing was ever appended to the group.
            let head = u64::try_from(stored.get(grp).copied().unwrap_or(0)).unwrap_or(0);
            let given = moves.entries.first().map_or(1, |(_, _, seq, _)| *seq);
            let first =
                rathaus_protocol::log::next_seq(head, rathaus_protocol::log::generation_of(given));
            self.heads.1[i] = to_i64(first)?;
            for (next, (entry, dedup, seq, shift)) in (first..).zip(&moves.entries) {
                let mut key = Vec::with_capacity(LOG.len() + grp.len() + 9);
                key.extend_from_slice(LOG);
                key.extend_from_slice(grp);
                key.push(0);
                key.extend_from_slice(&next.to_be_bytes());
                self.insert.0[*entry] = key;
                self.insert.1[*dedup] = super::codec::encode(&next)?;
                shift.set(to_i64(next)? - to_i64(*seq)?);
                self.heads.2[i] = to_i64(next)?;
            }
        }
        Ok(())
    }

    async fn execute(mut self, pool: &Pool, moved: &HeadsMoved) -> Result<(), StoreError> {
        if moved.any_of(&self.heads.0) {
            // Its seqs follow ones that cannot be stored any more: refused without a
            // transaction, and allocated again from the stored head.
            return Err(StoreError::Conflict(
                "another writer appended to the group first".into(),
            ));
        }
        let mut client = pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        if !self.moves.is_empty() {
            self.place_movable(&tx).await?;
        }
        if !self.heads.0.is_empty() {
            // Moves each group's head from first-1 to last, or from below first to last
            // where first begins a generation (rathaus_protocol::log); a group whose head
            // is elsewhere (another writer came first) is not returned.
            let statement = tx
                .prepare_cached(
                    "WITH want (grp, first, last) AS (
                        SELECT * FROM unnest($1::bytea[], $2::int8[], $3::int8[]))
                     INSERT INTO log_head (grp, head)
                     SELECT grp, last FROM want
                      WHERE (first - 1) % $4 = 0
                         OR EXISTS (SELECT 1 FROM log_head h WHERE h.grp = want.grp)
                     ON CONFLICT (grp) DO UPDATE SET head = EXCLUDED.head
                      WHERE EXISTS (SELECT 1 FROM want w WHERE w.grp = log_head.grp
                         AND (log_head.head = w.first - 1
                              OR ((w.first - 1) % $4 = 0 AND log_head.head < w.first)))
                     RETURNING grp",
                )
                .await
                .map_err(pg)?;
            let rows = tx
                .query(
                    &statement,
                    &[
                        &self.heads.0,
                        &self.heads.1,
                        &self.heads.2,
                        &to_i64(rathaus_protocol::log::GENERATION_SPAN)?,
                    ],
                )
                .await
                .map_err(pg)?;
            if rows.len() != self.heads.0.len() {
                let took: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
                moved.add(self.heads.0.iter().filter(|g| !took.contains(g)));
                return Err(StoreError::Conflict(
                    "another writer appended to the group first".into(),
                ));
            }
        }
        if !self.insert.0.is_empty() {
            let statement = tx
                .prepare_cached(
                    "INSERT INTO kv (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[])",
                )
                .await
                .map_err(pg)?;
            tx.execute(&statement, &[&self.insert.0, &self.insert.1])
                .await
                .map_err(pg)?;
        }
        if !self.upsert.0.is_empty() {
            let statement = tx
                .prepare_cached(
                    "INSERT INTO kv (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[])
                     ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
                )
                .await
                .map_err(pg)?;
            tx.execute(&statement, &[&self.upsert.0, &self.upsert.1])
                .await
                .map_err(pg)?;
        }
        if !self.delete.is_empty() {
            let statement = tx
                .prepare_cached("DELETE FROM kv WHERE k = ANY($1::bytea[])")
                .await
                .map_err(pg)?;
            tx.execute(&statement, &[&self.delete]).await.map_err(pg)?;
        }
        tx.commit().await.map_err(pg)
    }
}

/// Creates or updates the schema.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(pg)?;
    let current: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(pg)?
        .get(0);
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if current > known {
        return Err(StoreError::Backend(format!(
            "the database has schema version {current}, newer than this build's {known}; \
             run a newer rathaus-server"
        )));
    }
    for (version, step) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(current).unwrap_or(0))
    {
        tx.batch_execute(step).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(pg)?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().await.map_err(pg)
}

impl Store for PgStore {
    fn notify_entry(&self, group: &str, seq: u64) {
        // A full queue drops it: the other nodes' subscribers fetch the gap.
        let _ = self
            .notices
            .try_send(super::pg_notify::Outgoing::Entry(group.to_owned(), seq));
    }

    fn notify_sessions(&self, user: &str) {
        // A full queue drops it: the other nodes' periodic check of their sessions ends
        // them.
        if self
            .notices
            .try_send(super::pg_notify::Outgoing::Sessions(user.to_owned()))
            .is_err()
        {
            tracing::warn!(
                user,
                "cannot tell the other nodes of ended sessions now; their periodic check ends them"
            );
        }
    }

    fn notify_records(&self) {
        // A full queue drops it: the other nodes read their kept records again within
        // `SHARED_RECORDS_KEPT`.
        let _ = self.notices.try_send(super::pg_notify::Outgoing::Records);
    }

    fn other_nodes_notices(&self) -> Option<tokio::sync::mpsc::Receiver<super::NodeNotice>> {
        Some(super::pg_notify::spawn_listener(
            self.rt.get(),
            self.config.clone(),
            self.tls.clone(),
            self.node,
        ))
    }

    fn leadership(&self) -> super::Leadership {
        super::leader::spawn_postgres(self.rt.get(), self.config.clone(), self.tls.clone())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_vec();
        self.run(|pool| read_one(pool, key))
    }

    fn get_async(&self, key: &[u8]) -> super::ReadFuture {
        Box::pin(self.spawned(read_one(self.pool.clone(), key.to_vec())))
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for page in keys.chunks(PAGE) {
            let asked = page.to_vec();
            let found: std::collections::HashMap<Vec<u8>, Vec<u8>> =
                self.run(|pool| async move {
                    let client = pool.get().await.map_err(pool_error)?;
                    let statement = client
                        .prepare_cached("SELECT k, v FROM kv WHERE k = ANY($1)")
                        .await
                        .map_err(pg)?;
                    let rows = client.query(&statement, &[&asked]).await.map_err(pg)?;
                    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
                })?;
            // In the order asked, a key asked twice answered twice.
            out.extend(page.iter().map(|k| found.get(k).cloned()));
        }
        Ok(out)
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let ticket = self.writes.enqueue(batch);
        self.writes.wait(ticket, |batch| self.apply_now(batch))
    }

    fn enqueue(&self, batch: Batch) -> Result<ApplyTicket, StoreError> {
        Ok(self.writes.enqueue(batch))
    }

    fn wait_applied_blocking(&self, ticket: ApplyTicket) -> Result<(), StoreError> {
        self.writes.wait(ticket, |batch| self.apply_now(batch))
    }

    fn wait_applied(&self, ticket: ApplyTicket) -> FlushFuture<'_> {
        // A round's transaction, its commit waiting for the WAL flush, runs on the
        // store's runtime: the worker of the writer that started it goes on with other
        // requests meanwhile.
        let pool = self.pool.clone();
        let rt = self.rt.get().handle().clone();
        Box::pin(self.writes.wait_spawned(ticket, move |round| {
            let pool = pool.clone();
            let moved = Arc::new(HeadsMoved::default());
            rt.spawn(round.apply(move |batches| {
                let plan = Plan::of(batches);
                let (pool, moved) = (pool.clone(), moved.clone());
                async move { plan?.execute(&pool, &moved).await }
            }));
        }))
    }

    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let (start, end) = (start.to_vec(), end.to_vec());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let statement = client
                .prepare_cached("SELECT k, v FROM kv WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3")
                .await
                .map_err(pg)?;
            let rows = client
                .query(&statement, &[&start, &end, &limit])
                .await
                .map_err(pg)?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn last_in(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let (start, end) = (start.to_vec(), end.to_vec());
        self.run(|pool| read_last(pool, start, end))
    }

    fn last_in_async(&self, start: &[u8], end: &[u8]) -> super::LastFuture {
        Box::pin(self.spawned(read_last(self.pool.clone(), start.to_vec(), end.to_vec())))
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let id: i64 = client
                .query_one("SELECT nextval('ids')", &[])
                .await
                .map_err(pg)?
                .get(0);
            u64::try_from(id).map_err(|_| StoreError::Corrupt {
                key: "ids".into(),
                reason: format!("negative id {id}"),
            })
        })
    }

    /// Nothing to do: every applied batch was a committed transaction with
    /// `synchronous_commit = on`.
    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async { Ok(()) })
    }

    fn shared(&self) -> bool {
        true
    }

    fn size_bytes(&self) -> Option<u64> {
        let size = self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one(
                    "SELECT pg_total_relation_size('kv') + pg_total_relation_size('log_head')",
                    &[],
                )
                .await
                .map_err(pg)?;
            Ok(row.get::<_, i64>(0))
        });
        size.ok().and_then(|b| u64::try_from(b).ok())
    }

    /// Pages through the records in one repeatable-read transaction: a point-in-time copy
    /// that does not hold back writers.
    fn snapshot(&self, out: &mut dyn std::io::Write) -> Result<SnapshotInfo, StoreError> {
        let (pages_tx, pages) =
            std::sync::mpsc::sync_channel::<Result<Vec<KeyValue>, StoreError>>(2);
        let pool = self.pool.clone();
        self.rt.get().spawn(async move {
            let result = async {
                let mut client = pool.get().await.map_err(pool_error)?;
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(pg)?;
                let mut after: Option<Vec<u8>> = None;
                let limit = PAGE as i64;
                loop {
                    let rows = match &after {
                        None => {
                            tx.query("SELECT k, v FROM kv ORDER BY k LIMIT $1", &[&limit])
                                .await
                        }
                        Some(k) => {
                            tx.query(
                                "SELECT k, v FROM kv WHERE k > $1 ORDER BY k LIMIT $2",
                                &[k, &limit],
                            )
                            .await
                        }
                    }
                    .map_err(pg)?;
                    let page: Vec<KeyValue> =
                        rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
                    let full = page.len() == PAGE;
                    after = page.last().map(|(k, _)| k.clone());
                    if pages_tx.send(Ok(page)).is_err() || !full {
                        break;
                    }
                }
                tx.commit().await.map_err(pg)
            }
            .await;
            if let Err(e) = result {
                let _ = pages_tx.send(Err(e));
            }
        });
        let mut info = SnapshotInfo::default();
        let mut read = || -> Result<(), StoreError> {
            for page in pages.iter() {
                for (key, value) in page? {
                    snapshot::write_pair(out, &key, &value).map_err(super::snapshot_io)?;
                    info.records += 1;
                }
            }
            Ok(())
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(read)?;
            }
            _ => read()?,
        }
        info.next_id = self.next_id()?;
        Ok(info)
    }
}

/// The pair with the greatest key in `start <= key < end`, read through `pool`.
async fn read_last(
    pool: Pool,
    start: Vec<u8>,
    end: Vec<u8>,
) -> Result<Option<KeyValue>, StoreError> {
    if start >= end {
        return Ok(None);
    }
    let client = pool.get().await.map_err(pool_error)?;
    let statement = client
        .prepare_cached("SELECT k, v FROM kv WHERE k >= $1 AND k < $2 ORDER BY k DESC LIMIT 1")
        .await
        .map_err(pg)?;
    let row = client
        .query_opt(&statement, &[&start, &end])
        .await
        .map_err(pg)?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// The value under `key`, read through `pool`.
async fn read_one(pool: Pool, key: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let statement = client
        .prepare_cached("SELECT v FROM kv WHERE k = $1")
        .await
        .map_err(pg)?;
    let row = client.query_opt(&statement, &[&key]).await.map_err(pg)?;
    Ok(row.map(|r| r.get(0)))
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => {
            StoreError::Conflict("the record exists already".into())
        }
        _ => StoreError::Backend(format!("PostgreSQL: {}", error_text(&e))),
    }
}

/// The database's own message where it sent one (tokio-postgres' `Display` says only
/// "db error").
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => {
            StoreError::Backend(format!("cannot connect to PostgreSQL: {}", error_text(&e)))
        }
        other => StoreError::Backend(format!("PostgreSQL connection pool: {other}")),
    }
}
