//! Reliability: a server killed mid-write, a lossy network, and sustained load. Everything
//! runs on loopback with bounded loops and timeouts.
//!
//! Set `RATHAUS_LONG=1` for the long variants (more kills, more clients, more posts).
//!
//! Secret groups are not served by this build yet, so these tests exercise public groups
//! and announcements only; the secret-group halves of the crash and load tests join them
//! once the delivery service for secret groups is in.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime as _, UdpPoller};
use rand::{Rng, RngCore};
use rathaus_client::net::Connection;
use rathaus_protocol::{
    ClientMsgId, Content, EntryBody, Event, GroupHandle, LogEntry, PostBody, Request, Response,
};
use rathaus_server::RunOptions;
use rathaus_tests::{
    init_data_dir, provision_users, rss_kib, shared_endpoint, ProvisionedUser, Provisioning,
    ServerProcess,
};
use tokio::task::JoinSet;

fn long() -> bool {
    std::env::var_os("RATHAUS_LONG").is_some_and(|v| v != "0")
}

/// Posters keep posting while the server process is SIGKILLed at random moments and
/// restarted on the same port; afterwards every acknowledged post is in the log exactly
/// once, in each sender's order, and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_posts_survive_repeated_sigkill_exactly_once_and_in_order() -> Result<()> {
    let kills = if long() { 20 } else { 4 };
    let posters = 4;
    let tmp = tempfile::tempdir()?;
    let data = init_data_dir(tmp.path())?;
    let users = provision_users(
        &data,
        &Provisioning {
            prefix: "K",
            count: posters,
            departments: &["bauamt"],
            roles: &[],
        },
    )?;
    let mut server = ServerProcess::spawn(&data, "127.0.0.1:0")?;
    let addr = server.addr;
    let fp = server.fingerprint.clone();
    let group = GroupHandle::parse("bauamt")?;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for user in users.clone() {
        let (group, fp, stop) = (group.clone(), fp.clone(), stop.clone());
        tasks.spawn(async move { keep_posting(user, addr, fp, group, stop).await });
    }

    let mut rng = rand::thread_rng();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..700))).await;
        server.kill()?;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..200))).await;
        server = ServerProcess::spawn(&data, &addr.to_string())?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);

    let mut acked: HashMap<String, Vec<(ClientMsgId, u64)>> = HashMap::new();
    let mut attempted: HashSet<ClientMsgId> = HashSet::new();
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined??;
        attempted.extend(outcome.attempted);
        acked.insert(outcome.user, outcome.acked);
    }
    let total_acked: usize = acked.values().map(Vec::len).sum();
    ensure!(total_acked > 0, "no post was acknowledged at all");

    let reader = users[0].connect(&shared_endpoint()?, addr, &fp).await?;
    let log = fetch_all(&reader, &group).await?;
    // Dense seqs from 1: nothing a crash took back is visible.
    for (i, e) in log.iter().enumerate() {
        ensure!(
            e.seq == i as u64 + 1,
            "gap in the log at {}: {}",
            i + 1,
            e.seq
        );
    }
    // Nothing stored twice, nothing stored that was never sent.
    let mut seen = HashSet::new();
    for e in &log {
        ensure!(
            seen.insert(e.client_id),
            "post {:?} stored twice",
            e.client_id
        );
        ensure!(attempted.contains(&e.client_id), "unknown post in the log");
    }
    // Every acknowledged post present, at the acknowledged seq, in its sender's order.
    let by_id: HashMap<ClientMsgId, &LogEntry> = log.iter().map(|e| (e.client_id, e)).collect();
    for (user, posts) in &acked {
        let mut last = 0;
        for (id, seq) in posts {
            let entry = by_id
                .get(id)
                .ok_or_else(|| anyhow!("acknowledged post of {user} at seq {seq} is lost"))?;
            ensure!(
                entry.seq == *seq,
                "post moved from seq {seq} to {}",
                entry.seq
            );
            ensure!(
                entry.sender.as_str() == user,
                "post of {user} has another sender"
            );
            ensure!(*seq > last, "posts of {user} out of order");
            last = *seq;
        }
    }
    eprintln!(
        "{kills} kills, {total_acked} acknowledged posts, {} in the log",
        log.len()
    );
    reader.close().await;
    server.kill()?;
    Ok(())
}

/// What one poster sent and what was acknowledged.
struct PosterOutcome {
    user: String,
    acked: Vec<(ClientMsgId, u64)>,
    attempted: Vec<ClientMsgId>,
}

/// Posts until told to stop; a post that fails is retried with the same client id (over
/// a new connection) until acknowledged, so the server's deduplication is exercised.
async fn keep_posting(
    user: ProvisionedUser,
    addr: SocketAddr,
    fp: String,
    group: GroupHandle,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<PosterOutcome> {
    let endpoint = shared_endpoint()?;
    let mut conn: Option<Connection> = None;
    let mut outcome = PosterOutcome {
        user: user.id.as_str().to_owned(),
        acked: Vec::new(),
        attempted: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(if long() { 600 } else { 120 });
    for i in 0.. {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let id = random_id();
        outcome.attempted.push(id);
        let request = post(&group, id, &format!("{} #{i}", user.id));
        loop {
            ensure!(
                Instant::now() < deadline,
                "{} could not post for too long",
                user.id
            );
            let c = match conn.take() {
                Some(c) if c.raw().close_reason().is_none() => c,
                _ => match user.connect(&endpoint, addr, &fp).await {
                    Ok(c) => c,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            match tokio::time::timeout(Duration::from_secs(5), c.request(&request)).await {
                Ok(Ok(Response::Posted { seq, .. })) => {
                    outcome.acked.push((id, seq));
                    conn = Some(c);
                    break;
                }
                Ok(Ok(other)) => bail!("unexpected answer {other:?}"),
                Ok(Err(rathaus_client::ClientError::Server { code, message })) => {
                    bail!("server refused a post: {code:?} {message}")
                }
                // The server died under us: retry with the same id.
                Ok(Err(_)) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    Ok(outcome)
}

/// Every post from a client whose UDP socket drops 10% of the datagrams it sends and
/// receives, duplicates and reorders others, is acknowledged and delivered to a
/// subscriber behind an equally bad socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_post_is_delivered_over_a_lossy_duplicating_reordering_network() -> Result<()> {
    let posts = if long() { 1000 } else { 150 };
    let tmp = tempfile::tempdir()?;
    let data = init_data_dir(tmp.path())?;
    let users = provision_users(
        &data,
        &Provisioning {
            prefix: "L",
            count: 2,
            departments: &["bauamt"],
            roles: &[],
        },
    )?;
    let mut options = RunOptions::new(&data);
    options.listen = Some("127.0.0.1:0".parse()?);
    let server = rathaus_server::start(options).await?;
    let (addr, fp) = (server.local_addr(), server.fingerprint());
    let group = GroupHandle::parse("bauamt")?;

    let (sender_socket, sender_stats) = Lossy::endpoint(1)?;
    let (receiver_socket, receiver_stats) = Lossy::endpoint(2)?;
    let sender = users[0].connect(&sender_socket, addr, &fp).await?;
    let receiver = users[1].connect(&receiver_socket, addr, &fp).await?;
    let mut events = receiver.subscribe().await?;
    let collector = tokio::spawn(async move {
        let mut got = HashSet::new();
        while got.len() < posts {
            match events.next().await? {
                Event::Posted { entry, .. } => {
                    got.insert(entry.client_id);
                }
                other => eprintln!("event {other:?}"),
            }
        }
        anyhow::Ok(got)
    });

    let mut sent = HashSet::new();
    for i in 0..posts {
        let id = random_id();
        sent.insert(id);
        let request = post(&group, id, &format!("Meldung {i} aus dem Funkloch"));
        let mut tries = 0;
        loop {
            tries += 1;
            match sender.request(&request).await {
                Ok(Response::Posted { .. }) => break,
                Ok(other) => bail!("unexpected answer {other:?}"),
                Err(e) if tries < 5 && e.is_transient() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let got = tokio::time::timeout(Duration::from_secs(60), collector).await???;
    assert_eq!(got, sent, "the subscriber got exactly the posts sent");
    let log = fetch_all(&receiver, &group).await?;
    assert_eq!(log.len(), posts, "each post stored once");

    for (who, stats) in [("sender", sender_stats), ("receiver", receiver_stats)] {
        let s = stats.lock().unwrap_or_else(PoisonError::into_inner);
        eprintln!("{who}: {s:?}");
        assert!(
            s.dropped > 0 && s.duplicated > 0 && s.reordered > 0,
            "{who}'s socket really was lossy"
        );
    }
    sender.close().await;
    receiver.close().await;
    server.shutdown().await;
    Ok(())
}

/// 50 clients × 200 posts across five public groups against a server process: every post
/// acknowledged and delivered, no refusal, and the server's memory flat between the two
/// halves of the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_posting_two_hundred_each_all_delivered_memory_flat() -> Result<()> {
    let clients = if long() { 200 } else { 50 };
    let posts = if long() { 1000 } else { 200 };
    let groups = ["bauamt", "kaemmerei", "bibliothek", "bauhof", "schulamt"];
    let tmp = tempfile::tempdir()?;
    let data = init_data_dir(tmp.path())?;
    let mut users = Vec::new();
    for (g, slug) in groups.iter().enumerate() {
        users.extend(provision_users(
            &data,
            &Provisioning {
                prefix: &format!("G{g}X"),
                count: clients / groups.len(),
                departments: &[slug],
                roles: &[],
            },
        )?);
    }
    let readers = provision_users(
        &data,
        &Provisioning {
            prefix: "R",
            count: 1,
            departments: &[],
            roles: &[],
        },
    )?;
    let mut server = ServerProcess::spawn(&data, "127.0.0.1:0")?;
    let (addr, fp) = (server.addr, server.fingerprint.clone());
    let pid = server.child.id();
    let endpoint = shared_endpoint()?;

    // One subscriber sees every public group.
    let reader = readers[0].connect(&endpoint, addr, &fp).await?;
    let mut events = reader.subscribe().await?;
    let expected = clients / groups.len() * groups.len() * posts;
    let collector = tokio::spawn(async move {
        let mut got = HashSet::new();
        while got.len() < expected {
            if let Event::Posted { entry, .. } = events.next().await? {
                ensure!(got.insert(entry.client_id), "event delivered twice");
            }
        }
        anyhow::Ok(got)
    });

    let mut conns = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let group = GroupHandle::parse(groups[i % groups.len()])?;
        conns.push((user.connect(&endpoint, addr, &fp).await?, group));
    }
    let conns = Arc::new(conns);
    let mut rss = vec![rss_kib(pid)?];
    for half in 0..2 {
        let mut tasks = JoinSet::new();
        for c in 0..conns.len() {
            let conns = conns.clone();
            tasks.spawn(async move {
                let (conn, group) = &conns[c];
                for i in 0..posts / 2 {
                    let text = format!("Lastprobe {half}/{i} von Client {c}");
                    match conn.request(&post(group, random_id(), &text)).await? {
                        Response::Posted { .. } => {}
                        other => bail!("unexpected answer {other:?}"),
                    }
                }
                anyhow::Ok(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined??;
        }
        rss.push(rss_kib(pid)?);
    }
    let got = tokio::time::timeout(Duration::from_secs(120), collector).await???;
    assert_eq!(got.len(), expected);
    for slug in groups {
        let log = fetch_all(&reader, &GroupHandle::parse(slug)?).await?;
        assert_eq!(
            log.len(),
            expected / groups.len(),
            "{slug} holds every post once"
        );
        assert!(log.iter().all(|e| matches!(e.body, EntryBody::Content(_))));
    }
    assert!(
        server.child.try_wait()?.is_none(),
        "the server process is still running"
    );
    let (start, mid, end) = (rss[0], rss[1], rss[2]);
    eprintln!("server RSS: start {start} KiB, half-time {mid} KiB, end {end} KiB");
    // The stored posts legitimately warm the page cache; a per-request leak would show as
    // the second half growing well beyond the first.
    let first = mid.saturating_sub(start);
    let second = end.saturating_sub(mid);
    assert!(
        second <= first.max(8 * 1024) * 2,
        "server memory kept growing: +{first} KiB in the first half, +{second} KiB in the second"
    );
    reader.close().await;
    let _ = &mut server;
    Ok(())
}

fn random_id() -> ClientMsgId {
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    ClientMsgId(id)
}

fn post(group: &GroupHandle, id: ClientMsgId, text: &str) -> Request {
    Request::Post {
        group: group.clone(),
        client_id: id,
        body: PostBody::Public(Content::text(text)),
    }
}

async fn fetch_all(conn: &Connection, group: &GroupHandle) -> Result<Vec<LogEntry>> {
    let mut out: Vec<LogEntry> = Vec::new();
    loop {
        let since = out.last().map_or(0, |e| e.seq);
        let request = Request::Fetch {
            group: group.clone(),
            since,
            limit: 1000,
        };
        match conn.request(&request).await? {
            Response::Entries { entries, head, .. } => {
                let done = entries.is_empty() || entries.last().is_some_and(|e| e.seq >= head);
                out.extend(entries);
                if done {
                    return Ok(out);
                }
            }
            other => bail!("unexpected answer {other:?}"),
        }
    }
}

/// What a [`Lossy`] socket did to the traffic.
#[derive(Debug, Default)]
struct LossStats {
    sent: u64,
    dropped: u64,
    duplicated: u64,
    reordered: u64,
    received: u64,
}

/// A UDP socket that drops 10% of datagrams in both directions, and duplicates 5% and
/// delays 5% of outgoing ones behind the next (reordering).
struct Lossy {
    inner: Arc<dyn AsyncUdpSocket>,
    state: Mutex<LossyState>,
    stats: Arc<Mutex<LossStats>>,
}

struct LossyState {
    rng: rand::rngs::StdRng,
    /// A datagram held back to go out after the next one.
    held: Option<(SocketAddr, Vec<u8>)>,
}

impl fmt::Debug for Lossy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lossy").finish_non_exhaustive()
    }
}

impl Lossy {
    /// A client endpoint on a lossy socket, seeded for reproducibility.
    fn endpoint(seed: u64) -> Result<(quinn::Endpoint, Arc<Mutex<LossStats>>)> {
        use rand::SeedableRng;
        let runtime = Arc::new(quinn::TokioRuntime);
        let inner = runtime.wrap_udp_socket(std::net::UdpSocket::bind("127.0.0.1:0")?)?;
        let stats = Arc::new(Mutex::new(LossStats::default()));
        let socket = Arc::new(Lossy {
            inner,
            state: Mutex::new(LossyState {
                rng: rand::rngs::StdRng::seed_from_u64(seed),
                held: None,
            }),
            stats: stats.clone(),
        });
        let endpoint =
            quinn::Endpoint::new_with_abstract_socket(Default::default(), None, socket, runtime)?;
        Ok((endpoint, stats))
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, LossStats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send_copy(&self, to: SocketAddr, bytes: &[u8], like: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(&Transmit {
            destination: to,
            ecn: like.ecn,
            contents: bytes,
            segment_size: None,
            src_ip: like.src_ip,
        })
    }
}

impl AsyncUdpSocket for Lossy {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let (roll, held) = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let roll: f64 = state.rng.gen();
            let held = if roll >= 0.20 {
                state.held.take()
            } else {
                None
            };
            if (0.15..0.20).contains(&roll) && state.held.is_none() {
                state.held = Some((transmit.destination, transmit.contents.to_vec()));
            }
            (roll, held)
        };
        self.stats().sent += 1;
        if roll < 0.10 {
            self.stats().dropped += 1;
            return Ok(());
        }
        if (0.15..0.20).contains(&roll) {
            self.stats().reordered += 1;
            return Ok(());
        }
        self.inner.try_send(transmit)?;
        if roll < 0.15 {
            self.stats().duplicated += 1;
            self.inner.try_send(transmit)?;
        }
        if let Some((to, bytes)) = held {
            let _ = self.send_copy(to, &bytes, transmit);
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => {
                    let drop = {
                        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                        state.rng.gen::<f64>() < 0.10
                    };
                    if drop {
                        self.stats().dropped += 1;
                        continue;
                    }
                    self.stats().received += 1;
                    return Poll::Ready(Ok(n));
                }
                other => return other,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        // Coalesced receives are dropped or kept as a whole; quinn splits them by stride.
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
