//! Relay workloads against an in-process server on loopback: durable ingest, fan-out to a
//! large group, announcements to a large organisation.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use quinn::{RecvStream, SendStream};
use rand::RngCore;
use rathaus_client::net::Connection;
use rathaus_protocol::{
    frame, ClientMsgId, Content, Event, GroupHandle, PostBody, Request, Response,
};
use rathaus_server::transport::tls::TlsIdentity;
use rathaus_server::RunningServer;
use rathaus_tests::{
    dir_size, init_data_dir, init_data_dir_on, process_cpu_time, provision_users, shared_endpoint,
    store_bytes, ProvisionedUser, Provisioning, TestDatabase,
};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::cluster::{Cluster, Placement};
use super::report::{perf_control, Row, Samples};

/// Bytes of text in every benchmark post ("1 KiB messages").
const POST_TEXT: usize = 1024;
/// Connection handshakes in flight at once (one shared UDP socket must not overflow).
const CONNECT_CONCURRENCY: usize = 64;
/// DESIGN §10: durable ingest at least this share of bare quinn's rate in the same run.
const INGEST_SHARE_OF_BARE: f64 = 0.5;
/// DESIGN §10: p99 of the acknowledgement of a durable post, ms.
const INGEST_P99_MS: f64 = 10.0;
/// DESIGN §10: p99 of the delivery to 1,000 online members, ms.
const FANOUT_P99_MS: f64 = 25.0;
/// How often one post is sent again after a transient refusal before the run fails.
const TRANSIENT_RETRIES: usize = 50;
/// Upper bound for any single wait, so a broken server fails the run instead of hanging.
const WAIT: Duration = Duration::from_secs(120);

/// `ingest`: `senders` concurrent connections post `posts` 1 KiB messages each and wait
/// for each acknowledgement (after the durable write); on several nodes the senders take
/// turns between them. Baseline: the same request/response loop against a bare quinn
/// server that answers without storing.
pub(crate) async fn ingest(
    senders: usize,
    posts: usize,
    placement: &Placement,
    suffix: &str,
) -> Result<Vec<Row>> {
    let tmp = tempfile::tempdir()?;
    let database = placement.database()?;
    let data = init_data_dir_on(tmp.path(), database.as_ref().map(TestDatabase::url))?;
    let users = provision_users(
        &data,
        &Provisioning {
            prefix: "S",
            count: senders,
            departments: &["bauamt"],
            roles: &[],
        },
    )?;
    let cluster = Cluster::start(&data, placement.nodes()).await?;
    let endpoint = shared_endpoint()?;
    let conns = connect_spread(&users, &endpoint, &cluster.addrs(), &cluster.fingerprint()).await?;
    let cpu0 = process_cpu_time()?;
    perf_control("ingest", "enable");
    let driven = drive_posts(conns, posts).await;
    perf_control("ingest", "disable");
    let (rathaus_rate, rathaus_lat, retries) = driven?;
    let rathaus_cpu = process_cpu_time()?.saturating_sub(cpu0);
    cluster.shutdown().await;
    drop(database);

    let bare = BareServer::start()?;
    let mut conns = Vec::new();
    for _ in 0..senders {
        conns.push(
            Connection::connect_with_endpoint(
                endpoint.clone(),
                &bare.addr.to_string(),
                &bare.fingerprint,
            )
            .await?,
        );
    }
    let cpu0 = process_cpu_time()?;
    let (bare_rate, bare_lat, _) = drive_posts(conns, posts).await?;
    let bare_cpu = process_cpu_time()?.saturating_sub(cpu0);
    let per_post = |cpu: Duration| cpu.as_secs_f64() * 1e6 / (senders * posts) as f64;
    bare.endpoint.close(0u32.into(), b"done");

    let what = format!(
        "{senders} senders x {posts} posts of {POST_TEXT} B{}{}",
        on_nodes(placement),
        if retries > 0 {
            format!(" ({retries} sends refused as transient and sent again)")
        } else {
            String::new()
        }
    );
    Ok(vec![
        Row::new(format!("ingest{suffix}"), rathaus_rate, "msg/s")
            .baseline(bare_rate)
            .bar(INGEST_SHARE_OF_BARE * bare_rate)
            .higher_is_better()
            .note(format!(
                "{what}; acked after durable write; baseline: bare quinn, no storage; \
                 bar: 50 % of it"
            )),
        Row::new(
            format!("ingest-p50{suffix}"),
            rathaus_lat.quantile_ms(0.5),
            "ms",
        )
        .baseline(bare_lat.quantile_ms(0.5))
        .note("ack latency"),
        Row::new(
            format!("ingest-p99{suffix}"),
            rathaus_lat.quantile_ms(0.99),
            "ms",
        )
        .baseline(bare_lat.quantile_ms(0.99))
        .bar(INGEST_P99_MS)
        .note("ack latency"),
        Row::new(
            format!("ingest-cpu{suffix}"),
            per_post(rathaus_cpu),
            "us/msg",
        )
        .baseline(per_post(bare_cpu))
        .note(
            "CPU time (user + system, all threads of this process: server and the 100 \
                 clients; not the PostgreSQL server's) per acknowledged post; 10 ms resolution",
        ),
    ])
}

/// `fanout`: one post to a group of `members`, all subscribed; delivery latency from
/// sending the post to each member's event. On several nodes the sender is on the first
/// and the members take turns between the nodes (delivery to the others crosses the
/// database's notifications). Baseline: the same post with one member subscribed, on the
/// sender's node.
pub(crate) async fn fanout(
    members: usize,
    posts: usize,
    placement: &Placement,
    suffix: &str,
) -> Result<Vec<Row>> {
    let tmp = tempfile::tempdir()?;
    let database = placement.database()?;
    let data = init_data_dir_on(tmp.path(), database.as_ref().map(TestDatabase::url))?;
    let users = provision_users(
        &data,
        &Provisioning {
            prefix: "F",
            count: members + 1,
            departments: &["bauamt"],
            roles: &[],
        },
    )?;
    let cluster = Cluster::start(&data, placement.nodes()).await?;
    let (addrs, fp) = (cluster.addrs(), cluster.fingerprint());
    let endpoint = shared_endpoint()?;
    let group = GroupHandle::parse("bauamt")?;
    let sender = users[0].connect(&endpoint, addrs[0], &fp).await?;

    let mut receivers = Receivers::default();
    receivers
        .add(&users[1..2], &endpoint, &addrs[..1], &fp)
        .await?;
    let one = measure_deliveries(&sender, &group, &mut receivers, posts).await?;
    receivers.add(&users[2..], &endpoint, &addrs, &fp).await?;
    perf_control("fanout", "enable");
    let all = measure_deliveries(&sender, &group, &mut receivers, posts).await;
    perf_control("fanout", "disable");
    let all = all?;
    drop(receivers);
    drop(sender);
    cluster.shutdown().await;
    drop(database);

    let note = format!(
        "{posts} posts, each to {members} subscribed members{}; baseline: 1 member{}",
        on_nodes(placement),
        if placement.nodes() > 1 {
            ", on the sender's node"
        } else {
            ""
        }
    );
    Ok(vec![
        Row::new(format!("fanout-p50{suffix}"), all.quantile_ms(0.5), "ms")
            .baseline(one.quantile_ms(0.5))
            .note(note.clone()),
        Row::new(format!("fanout-p99{suffix}"), all.quantile_ms(0.99), "ms")
            .baseline(one.quantile_ms(0.99))
            .bar(FANOUT_P99_MS)
            .note(note),
    ])
}

/// `announce`: `users` provisioned, `connected` of them subscribed; time from posting an
/// announcement until the last subscriber has it (median over `posts`), and how much the
/// data directory grows per announcement.
pub(crate) async fn announce(
    users: usize,
    connected: usize,
    posts: usize,
    storage_posts: usize,
    suffix: &str,
) -> Result<Vec<Row>> {
    let tmp = tempfile::tempdir()?;
    let data = init_data_dir(tmp.path())?;
    let staff = provision_users(
        &data,
        &Provisioning {
            prefix: "A",
            count: users,
            departments: &["stadt"],
            roles: &[],
        },
    )?;
    let editor = provision_users(
        &data,
        &Provisioning {
            prefix: "E",
            count: 1,
            departments: &["presse"],
            roles: &[rathaus_protocol::Role::Editor],
        },
    )?
    .remove(0);
    let server = start_server(&data).await?;
    let (addr, fp) = (server.local_addr(), server.fingerprint());
    let endpoint = shared_endpoint()?;
    let announcements = GroupHandle::Announcements;
    let editor_conn = editor.connect(&endpoint, addr, &fp).await?;

    let mut receivers = Receivers::default();
    receivers.add(&staff[..1], &endpoint, &[addr], &fp).await?;
    let one = all_have_it(&editor_conn, &announcements, &mut receivers, posts).await?;
    receivers
        .add(&staff[1..connected], &endpoint, &[addr], &fp)
        .await?;
    let all = all_have_it(&editor_conn, &announcements, &mut receivers, posts).await?;
    drop(receivers);

    // Storage: N announcements (readable by all `users`) against N posts to a group with
    // one member, on the same server. Measured as the bytes live in the store (with the
    // server stopped), and as the growth of the data directory's files.
    drop(editor_conn);
    server.shutdown().await;
    let presse = GroupHandle::parse("presse")?;
    let mut live = vec![store_bytes(&data)?];
    let mut files = vec![dir_size(&data)?];
    for group in [&announcements, &presse] {
        let server = start_server(&data).await?;
        let conn = editor
            .connect(&endpoint, server.local_addr(), &server.fingerprint())
            .await?;
        post_many(&conn, group, storage_posts).await?;
        drop(conn);
        server.shutdown().await;
        live.push(store_bytes(&data)?);
        files.push(dir_size(&data)?);
    }
    let per = |v: &[u64], i: usize| v[i + 1].saturating_sub(v[i]) as f64 / storage_posts as f64;
    let (per_announcement, per_post) = (per(&live, 0), per(&live, 1));
    let (files_announcement, files_post) = (per(&files, 0), per(&files, 1));

    Ok(vec![
        Row::new(format!("announce{suffix}"), all.median_ms(), "ms")
            .baseline(one.median_ms())
            .bar(2000.0)
            .note(format!(
                "{users} users provisioned, {connected} connected: time until the last has it \
                 (median of {posts}); baseline: 1 connected"
            )),
        Row::new(
            format!("announce-storage{suffix}"),
            per_announcement,
            "B/msg",
        )
        .baseline(per_post)
        .bar(2.0 * per_post.max(POST_TEXT as f64))
        .note(format!(
            "stored bytes per announcement to {users} users ({storage_posts} sent; data-dir \
             files grew {files_announcement:.0} B/msg vs {files_post:.0}); baseline: per post \
             to a 1-member group; bar: O(1), within 2x of it"
        )),
    ])
}

/// Starts an in-process server on `127.0.0.1:0` over `data`.
pub(crate) async fn start_server(data: &Path) -> Result<RunningServer> {
    super::cluster::start_node(data).await
}

/// What a note says of the store: nothing on sled, else the database and the nodes.
fn on_nodes(placement: &Placement) -> String {
    match (placement.tag().is_empty(), placement.nodes()) {
        (true, _) => String::new(),
        (false, 1) => " on PostgreSQL".into(),
        (false, n) => format!(" on PostgreSQL, {n} nodes"),
    }
}

/// Connects and authenticates every user over one shared endpoint, a few at a time.
pub(crate) async fn connect_all(
    users: &[ProvisionedUser],
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    fingerprint: &str,
) -> Result<Vec<Connection>> {
    connect_spread(users, endpoint, &[addr], fingerprint).await
}

/// Like [`connect_all`], the users taking turns between the nodes at `addrs` (the i-th
/// user to the node `i % addrs.len()`).
async fn connect_spread(
    users: &[ProvisionedUser],
    endpoint: &quinn::Endpoint,
    addrs: &[SocketAddr],
    fingerprint: &str,
) -> Result<Vec<Connection>> {
    ensure!(!addrs.is_empty(), "no server to connect to");
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (i, user) in users.iter().enumerate() {
        let addr = addrs[i % addrs.len()];
        let (user, endpoint, fp, limit) = (
            user.clone(),
            endpoint.clone(),
            fingerprint.to_owned(),
            limit.clone(),
        );
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let conn = tokio::time::timeout(WAIT, user.connect(&endpoint, addr, &fp))
                .await
                .map_err(|_| anyhow!("connecting {} timed out", user.id))??;
            anyhow::Ok((i, conn))
        });
    }
    let mut conns: Vec<Option<Connection>> = (0..users.len()).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, conn) = joined??;
        conns[i] = Some(conn);
    }
    Ok(conns.into_iter().flatten().collect())
}

fn post_request(group: &GroupHandle, text: &str) -> Request {
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    Request::Post {
        group: group.clone(),
        client_id: ClientMsgId(id),
        body: PostBody::Public(Content::text(text).into()),
    }
}

fn post_text(i: usize) -> String {
    let mut text = format!("Bekanntmachung {i}: ");
    text.extend(std::iter::repeat_n('x', POST_TEXT - text.len()));
    text
}

/// Every connection posts `posts` times in sequence, all connections at once. Returns the
/// throughput, the latency of each post and how many sends were refused as transient
/// and sent again. A post's latency runs from its first send to its acknowledgement:
/// a post another node's write pushed back (the server's own retries used up) goes out
/// again with the same client id, as a client's outbox sends it again, at most
/// [`TRANSIENT_RETRIES`] times.
async fn drive_posts(conns: Vec<Connection>, posts: usize) -> Result<(f64, Samples, usize)> {
    let group = GroupHandle::parse("bauamt")?;
    let total = conns.len() * posts;
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for conn in conns {
        let group = group.clone();
        tasks.spawn(async move {
            let mut samples = Samples::default();
            let mut retries = 0;
            for i in 0..posts {
                let request = post_request(&group, &post_text(i));
                let t0 = Instant::now();
                let mut attempt = 0;
                let answer = loop {
                    match conn.request(&request).await {
                        Err(e) if e.is_transient() && attempt < TRANSIENT_RETRIES => {
                            attempt += 1;
                            retries += 1;
                        }
                        other => break other?,
                    }
                };
                match answer {
                    Response::Posted { .. } => samples.push(t0.elapsed()),
                    other => bail!("unexpected answer to a post: {other:?}"),
                }
            }
            conn.raw().close(0u32.into(), b"done");
            anyhow::Ok((samples, retries))
        });
    }
    let mut samples = Samples::default();
    let mut retries = 0;
    while let Some(joined) = tasks.join_next().await {
        let (s, r) = joined??;
        samples.extend(s);
        retries += r;
    }
    let elapsed = start.elapsed();
    if samples.len() != total {
        bail!("{} of {total} posts acknowledged", samples.len());
    }
    Ok((total as f64 / elapsed.as_secs_f64(), samples, retries))
}

async fn post_many(conn: &Connection, group: &GroupHandle, n: usize) -> Result<()> {
    for i in 0..n {
        conn.request(&post_request(group, &post_text(i))).await?;
    }
    Ok(())
}

/// Subscribed members; each reports when it receives a `Posted` event.
#[derive(Default)]
struct Receivers {
    /// Kept open for as long as the receivers live.
    conns: Vec<Connection>,
    /// Where receiver tasks report.
    tx: Option<mpsc::UnboundedSender<Instant>>,
    rx: Option<mpsc::UnboundedReceiver<Instant>>,
    /// The receiver tasks.
    tasks: JoinSet<()>,
}

impl Receivers {
    async fn add(
        &mut self,
        users: &[ProvisionedUser],
        endpoint: &quinn::Endpoint,
        addrs: &[SocketAddr],
        fp: &str,
    ) -> Result<()> {
        if self.tx.is_none() {
            let (tx, rx) = mpsc::unbounded_channel();
            self.tx = Some(tx);
            self.rx = Some(rx);
        }
        let tx = self.tx.clone().context("receiver channel")?;
        let conns = connect_spread(users, endpoint, addrs, fp).await?;
        // Subscribe on every connection (one round trip each) and start its reader.
        for conn in &conns {
            let mut sub = tokio::time::timeout(WAIT, conn.subscribe())
                .await
                .map_err(|_| anyhow!("subscribe timed out"))??;
            let tx = tx.clone();
            self.tasks.spawn(async move {
                while let Ok(event) = sub.next().await {
                    if matches!(event, Event::Posted { .. }) && tx.send(Instant::now()).is_err() {
                        return;
                    }
                }
            });
        }
        self.conns.extend(conns);
        Ok(())
    }

    fn count(&self) -> usize {
        self.conns.len()
    }

    /// Waits for `n` reports.
    async fn collect(&mut self, n: usize) -> Result<Vec<Instant>> {
        let rx = self.rx.as_mut().context("no receivers")?;
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + WAIT;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(t)) => out.push(t),
                Ok(None) => bail!("receivers ended"),
                Err(_) => bail!("only {} of {n} deliveries within {WAIT:?}", out.len()),
            }
        }
        Ok(out)
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        self.tasks.abort_all();
        for conn in &self.conns {
            conn.raw().close(0u32.into(), b"done");
        }
    }
}

/// `posts` posts one after another; for each, the latency to every receiver.
async fn measure_deliveries(
    sender: &Connection,
    group: &GroupHandle,
    receivers: &mut Receivers,
    posts: usize,
) -> Result<Samples> {
    let mut samples = Samples::default();
    let mut last = Vec::with_capacity(posts);
    for i in 0..posts {
        let t0 = Instant::now();
        sender.request(&post_request(group, &post_text(i))).await?;
        let mut post = Duration::ZERO;
        for t in receivers.collect(receivers.count()).await? {
            post = post.max(t.saturating_duration_since(t0));
            samples.push(t.saturating_duration_since(t0));
        }
        last.push(format!("{:.1}", post.as_secs_f64() * 1e3));
    }
    // Which posts make the tail: the time until the last receiver had each one.
    eprintln!(
        "   to {} receivers, last delivery per post (ms): {}",
        receivers.count(),
        last.join(" ")
    );
    Ok(samples)
}

/// `posts` posts one after another; for each, the time until the last receiver has it.
async fn all_have_it(
    sender: &Connection,
    group: &GroupHandle,
    receivers: &mut Receivers,
    posts: usize,
) -> Result<Samples> {
    let mut samples = Samples::default();
    for i in 0..posts {
        let t0 = Instant::now();
        sender.request(&post_request(group, &post_text(i))).await?;
        let last = receivers
            .collect(receivers.count())
            .await?
            .into_iter()
            .max()
            .unwrap_or(t0);
        samples.push(last.saturating_duration_since(t0));
    }
    Ok(samples)
}

/// The ingest baseline: a quinn server with Rathaus' TLS and transport settings that
/// answers every request frame with a `Posted` frame, storing nothing.
struct BareServer {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    fingerprint: String,
}

impl BareServer {
    fn start() -> Result<Self> {
        let identity = TlsIdentity::generate(&[])?;
        let endpoint = quinn::Endpoint::server(identity.server_config()?, "127.0.0.1:0".parse()?)?;
        let addr = endpoint.local_addr()?;
        tokio::spawn(bare_accept(endpoint.clone()));
        Ok(Self {
            endpoint,
            addr,
            fingerprint: identity.fingerprint(),
        })
    }
}

async fn bare_accept(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let mut seq = 0u64;
            while let Ok((send, recv)) = conn.accept_bi().await {
                seq += 1;
                tokio::spawn(bare_answer(send, recv, seq));
            }
        });
    }
}

async fn bare_answer(mut send: SendStream, mut recv: RecvStream, seq: u64) {
    let mut header = [0u8; frame::HEADER_LEN];
    if recv.read_exact(&mut header).await.is_err() {
        return;
    }
    let Ok(len) = frame::body_len(header, rathaus_protocol::limits::MAX_CONTROL_FRAME) else {
        return;
    };
    let mut body = vec![0u8; len];
    if recv.read_exact(&mut body).await.is_err() {
        return;
    }
    let Ok(_request) = frame::decode_body::<Request>(&body) else {
        return;
    };
    let answer = Response::Posted {
        seq,
        sent_at_ms: 0,
        duplicate: false,
    };
    if let Ok(bytes) = frame::encode(&answer) {
        if send.write_all(&bytes).await.is_ok() {
            let _ = send.finish();
        }
    }
}
