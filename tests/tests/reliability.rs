//! Reliability: a server killed mid-write, a lossy network, and sustained load. Everything
//! runs on loopback with bounded loops and timeouts.
//!
//! Set `RATHAUS_LONG=1` for the long variants (more kills, more clients, more posts).
//!
//! The crash and load tests come in two halves: raw connections posting to public groups
//! (many posters, cheap), and real clients (outbox, MLS state in SQLite) posting to a
//! secret group and its department's public group.

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
use rathaus_client::mls::{DeviceIdentity, MlsEngine};
use rathaus_client::net::Connection;
use rathaus_client::{Client, RowKind, TimelineRow};
use rathaus_protocol::{
    ClientMsgId, Content, EntryBody, Event, GroupHandle, LogEntry, PostBody, Request, Response,
};
use rathaus_server::RunOptions;
use rathaus_tests::{
    init_data_dir, provision_users, rss_kib, shared_endpoint, within, ProvisionedUser,
    Provisioning, ServerProcess, TestBackend,
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

/// Real clients keep posting to a secret group and to its department's public group
/// while the server process is SIGKILLed at random moments and restarted. Afterwards every
/// post (acknowledged or still in an outbox when the server died) is present exactly once,
/// acknowledged ones at the acknowledged seq, each sender's in order, and the secret group
/// still works: a new message is read by everyone and all members see the same group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_and_public_posts_of_clients_survive_repeated_sigkill() -> Result<()> {
    let kills = if long() { 12 } else { 3 };
    let mut backend = TestBackend::start_process(None).await?;
    let (_admin, posters, mut reader) = secret_team(&mut backend, 2).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for client in posters {
        let stop = stop.clone();
        tasks.spawn(async move { keep_sending(client, stop).await });
    }
    let mut rng = rand::thread_rng();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1200))).await;
        backend.kill()?;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..200))).await;
        backend.restart_process()?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);

    let mut outcomes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (mut client, outcome) = joined??;
        // What a crash left in the outbox goes out now. A request sent while no server
        // runs gets no reset, only its timeout, so a stuck attempt is cut off and retried
        // over a new connection.
        within("flushing the outbox", async {
            loop {
                match tokio::time::timeout(Duration::from_secs(5), client.sync()).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(_) => client.disconnect().await,
                }
            }
        })
        .await?;
        outcomes.push((client, outcome));
    }
    let secret = secret_handle();
    let public = GroupHandle::parse("bauamt")?;
    // The reader's connection died with the first server (the next request would be reset
    // and retried; start from a fresh one).
    reader.disconnect().await;
    let secret_rows = within("reading", reader.read(&secret)).await??;
    let public_rows = within("reading", reader.read(&public)).await??;
    let mut total_acked = 0;
    for (_, outcome) in &outcomes {
        for (group, rows) in [(&secret, &secret_rows), (&public, &public_rows)] {
            let mut last = 0;
            for text in outcome.attempted.iter().filter(|(g, _)| g == group) {
                let found: Vec<&TimelineRow> = rows.iter().filter(|r| r.text == text.1).collect();
                ensure!(
                    found.len() == 1,
                    "{group}: {:?} is there {} times",
                    text.1,
                    found.len()
                );
                let row = found[0];
                ensure!(
                    row.sender == outcome.user,
                    "{:?} has another sender",
                    text.1
                );
                ensure!(
                    row.seq > last,
                    "{group}: posts of {} out of order",
                    outcome.user
                );
                last = row.seq;
            }
        }
        for (group, text, seq) in &outcome.acked {
            let rows = if *group == secret {
                &secret_rows
            } else {
                &public_rows
            };
            ensure!(
                rows.iter().any(|r| &r.text == text && r.seq == *seq),
                "{group}: acknowledged {text:?} is not at seq {seq}"
            );
        }
        total_acked += outcome.acked.len();
    }
    ensure!(total_acked > 0, "no post was acknowledged at all");
    ensure!(
        !secret_rows.iter().any(|r| r.kind == RowKind::Undecryptable),
        "undecryptable rows after the crashes"
    );

    // The secret group still works.
    let (mut anna, _) = outcomes.remove(0);
    anna.send_text(&secret, "Nach den Abstuerzen: alles da?")
        .await?;
    let rows = within("reading", reader.read(&secret)).await??;
    ensure!(
        rows.iter()
            .any(|r| r.text == "Nach den Abstuerzen: alles da?"),
        "a message after the crashes does not arrive"
    );
    let mut codes = vec![anna.group_code(&secret)?, reader.group_code(&secret)?];
    for (client, _) in &outcomes {
        codes.push(client.group_code(&secret)?);
    }
    ensure!(
        codes.iter().all(|c| c.is_some() && *c == codes[0]),
        "members disagree about the secret group after the crashes"
    );
    eprintln!(
        "{kills} kills, {total_acked} acknowledged posts by clients, {} secret and {} public \
         rows",
        secret_rows.len(),
        public_rows.len()
    );
    backend.stop().await;
    Ok(())
}

/// What one client sent and what was acknowledged: (group, text, seq).
struct ClientOutcome {
    user: String,
    acked: Vec<(GroupHandle, String, u64)>,
    attempted: Vec<(GroupHandle, String)>,
}

/// After a crash and a restart on the same address, the new server process answers the
/// old connection's next packet with a stateless reset (its reset key lives in the data
/// directory): the client learns at once that the connection is gone and reconnects,
/// instead of waiting out its 30 s request timeout or the QUIC idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_resets_the_old_connections_at_once() -> Result<()> {
    let mut backend = TestBackend::start_process(None).await?;
    let mut admin = backend.admin().await?;
    within("whoami", admin.whoami()).await??;
    backend.kill()?;
    backend.restart_process()?;
    // Well under the request timeout: only a reset ends the request this early.
    let first = tokio::time::timeout(Duration::from_secs(15), admin.whoami())
        .await
        .map_err(|_| anyhow!("the old connection was not reset: no answer after 15 s"))?;
    let me = match first {
        // The reset arrived with this request: it fails as lost, the next one reconnects.
        Err(e) if e.is_transient() => {
            within("whoami over a new connection", admin.whoami()).await??
        }
        // The reset arrived earlier (answering a packet the client sent meanwhile), so the
        // client already knew and reconnected for this request.
        Ok(me) => me,
        Err(e) => bail!("expected the old connection to fail as lost, got {e:?}"),
    };
    ensure!(me.user.as_str() == "admin", "whoami answered {me:?}");
    Ok(())
}

/// Sends alternately to the secret group and the public one until told to stop. A send
/// that fails stays in the outbox and goes out (first) with the next one.
async fn keep_sending(
    mut client: Client,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(Client, ClientOutcome)> {
    let user = client.identity().user.to_string();
    let groups = [secret_handle(), GroupHandle::parse("bauamt")?];
    let mut outcome = ClientOutcome {
        user: user.clone(),
        acked: Vec::new(),
        attempted: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(if long() { 600 } else { 180 });
    for i in 0.. {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        ensure!(Instant::now() < deadline, "{user} kept failing to send");
        let group = groups[i % 2].clone();
        let text = format!("{user} #{i}");
        outcome.attempted.push((group.clone(), text.clone()));
        match tokio::time::timeout(Duration::from_secs(3), client.send_text(&group, &text)).await {
            Ok(Ok(receipt)) => outcome.acked.push((group, text, receipt.seq)),
            Ok(Err(e)) if e.is_transient() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => bail!("{user}: {text:?} refused: {e}"),
            // Cut off mid-send while no server ran (no reset, only the timeout): the
            // message stays queued; reconnect.
            Err(_) => client.disconnect().await,
        }
    }
    Ok((client, outcome))
}

fn secret_handle() -> GroupHandle {
    GroupHandle::parse("bauamt/secret").unwrap_or_else(|_| unreachable!("a valid handle"))
}

/// Enrolls an owner (P1001) and `posters - 1` further posters and one reader, all in
/// `bauamt`; the owner's client gives birth to `bauamt/secret` and admits everyone.
/// Returns the admin, the posters (owner first) and the reader.
async fn secret_team(
    backend: &mut TestBackend,
    posters: usize,
) -> Result<(Client, Vec<Client>, Client)> {
    let mut admin = backend.admin().await?;
    let owner_code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &[], &[])
        .await?;
    backend.department(&mut admin, "bauamt", &["P1001"]).await?;
    let mut codes = vec![("P1001".to_owned(), owner_code)];
    for i in 1..=posters {
        let user = format!("P{}", 1001 + i);
        let code = backend
            .provision(&mut admin, &user, &format!("Kollege {i}"), &["bauamt"], &[])
            .await?;
        codes.push((user, code));
    }
    // Enrolling publishes KeyPackages; the owner admits everyone after the birth.
    let mut clients = Vec::new();
    for (user, code) in codes {
        clients.push(backend.enroll(&user, &code).await?);
    }
    within("birth", clients[0].sync()).await??;
    within("approve", clients[0].approve_all(&secret_handle())).await??;
    for client in &mut clients {
        within("joining", client.sync()).await??;
    }
    let reader = clients.pop().ok_or_else(|| anyhow!("no reader"))?;
    for client in &clients {
        ensure!(
            client.group_code(&secret_handle())?.is_some(),
            "{} is not in the secret group",
            client.identity().user
        );
    }
    Ok((admin, clients, reader))
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

/// Members of a secret group post encrypted messages concurrently (`RATHAUS_LONG=1`: 50 ×
/// 1,000, by default 10 × 200 next to the 50 public posters above); the owner's client
/// reads every one exactly once, at the acknowledged seq, each sender's in order, and
/// nothing is undecryptable. The members are users written into the store, each with its
/// own MLS engine in a SQLite file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_posting_to_a_secret_group_all_read_once_and_in_order() -> Result<()> {
    let members = if long() { 50 } else { 10 };
    let posts = if long() { 1000 } else { 200 };
    let mut backend = TestBackend::start().await?;
    let mut admin = backend.admin().await?;
    let owner_code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &[], &[])
        .await?;
    backend.department(&mut admin, "bauamt", &["P1001"]).await?;
    let mut owner = backend.enroll("P1001", &owner_code).await?;
    owner.disconnect().await;
    admin.disconnect().await;
    backend.stop().await;
    let users = provision_users(
        &backend.data_dir(),
        &Provisioning {
            prefix: "S",
            count: members,
            departments: &["bauamt"],
            roles: &[],
        },
    )?;
    backend.run().await?;
    let (addr, fp) = (backend.addr, backend.fingerprint.clone());
    let endpoint = shared_endpoint()?;
    let profiles = tempfile::tempdir()?;
    let mut posters = Vec::new();
    for user in &users {
        let identity = DeviceIdentity::new(user.id.as_str(), &user.device.0.to_string())?;
        let engine = MlsEngine::open(
            &profiles.path().join(format!("{}.sqlite", user.id)),
            user.key.clone(),
            identity,
        )?;
        let batch = engine.generate_key_packages(1)?;
        let conn = user.connect(&endpoint, addr, &fp).await?;
        conn.request(&Request::PublishKeyPackages {
            one_time: batch.one_time,
            last_resort: Some(batch.last_resort),
        })
        .await?;
        posters.push((user.id.to_string(), engine, conn));
    }
    within("birth", owner.sync()).await??;
    let secret = secret_handle();
    within("approve", owner.approve_all(&secret)).await??;
    let mut tasks = JoinSet::new();
    for (user, engine, conn) in posters {
        let welcome = match conn.request(&Request::FetchWelcomes).await? {
            Response::Welcomes(mut w) if w.len() == 1 => w.remove(0),
            other => bail!("{user}: expected one Welcome, got {other:?}"),
        };
        // This test's own engine, not the client: the Welcome's checks are the client's.
        let gid = engine
            .join_from_welcome(
                &welcome.welcome,
                &welcome.ratchet_tree,
                &[0; 32],
                |_| Ok(()),
            )?
            .group_id;
        let secret = secret.clone();
        tasks.spawn(async move {
            let mut acked = Vec::new();
            for i in 0..posts {
                let text = format!("{user} geheim #{i}");
                let plaintext = postcard::to_allocvec(&Content::text(&text))?;
                let request = Request::Post {
                    group: secret.clone(),
                    client_id: random_id(),
                    body: PostBody::Mls(engine.encrypt(&gid, &plaintext)?),
                };
                match conn.request(&request).await? {
                    Response::Posted { seq, .. } => acked.push((text, seq)),
                    other => bail!("unexpected answer {other:?}"),
                }
            }
            conn.close().await;
            anyhow::Ok((user, acked))
        });
    }
    let mut acked = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        acked.push(joined??);
    }
    let rows = tokio::time::timeout(Duration::from_secs(600), owner.read(&secret)).await??;
    ensure!(
        !rows.iter().any(|r| r.kind == RowKind::Undecryptable),
        "undecryptable rows"
    );
    let by_text: HashMap<&str, Vec<&TimelineRow>> =
        rows.iter().fold(HashMap::new(), |mut map, row| {
            map.entry(row.text.as_str()).or_default().push(row);
            map
        });
    for (user, posted) in &acked {
        ensure!(
            posted.len() == posts,
            "{user} posted {} times",
            posted.len()
        );
        let mut last = 0;
        for (text, seq) in posted {
            let found = by_text.get(text.as_str()).map_or(0, Vec::len);
            ensure!(found == 1, "{text:?} read {found} times");
            let row = by_text[text.as_str()][0];
            ensure!(row.seq == *seq, "{text:?} at seq {} not {seq}", row.seq);
            ensure!(row.sender == *user, "{text:?} has another sender");
            ensure!(*seq > last, "posts of {user} out of order");
            last = *seq;
        }
    }
    owner.disconnect().await;
    backend.stop().await;
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
        body: PostBody::Public(Content::text(text).into()),
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
