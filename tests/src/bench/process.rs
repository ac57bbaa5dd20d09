//! Whole-process workloads: the `rathaus` CLI as a user runs it, and a `rathaus-server`
//! process holding many idle authenticated connections.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rathaus_client::net::Connection;
use rathaus_protocol::{DepartmentSlug, Request, Response};
use rathaus_tests::{
    init_data_dir, process_cpu_time_of, provision_users, rss_kib, shared_endpoint, sibling_bin,
    Provisioning, ServerProcess, TestBackend,
};

use super::relay::connect_all;
use super::report::{Row, Samples};

/// `cli-send`: `rathaus send bauamt TEXT` as a whole process (profile on disk, connect,
/// authenticate, post, wait for the durable ack, exit), `runs` times. Baseline: the same
/// binary printing `--version`.
pub(crate) async fn cli_send(runs: usize, suffix: &str) -> Result<Vec<Row>> {
    let rathaus = sibling_bin("rathaus")?;
    let mut backend = TestBackend::start().await?;
    let mut admin = backend.admin().await?;
    backend.department(&mut admin, "bauamt", &[]).await?;
    admin.disconnect().await;
    let profile = admin.dir().to_owned();

    let run = |args: Vec<String>| {
        let rathaus = rathaus.clone();
        let profile = profile.clone();
        async move {
            let t = Instant::now();
            let status = tokio::process::Command::new(&rathaus)
                .arg("--profile")
                .arg(&profile)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .status()
                .await?;
            if !status.success() {
                bail!("rathaus {args:?} failed: {status}");
            }
            anyhow::Ok(t.elapsed())
        }
    };
    let (mut send, mut version) = (Samples::default(), Samples::default());
    // One warm-up of each, so the page cache holds the binary for both.
    run(vec!["--version".into()]).await?;
    run(vec!["send".into(), "bauamt".into(), "warm-up".into()]).await?;
    for i in 0..runs {
        version.push(run(vec!["--version".into()]).await?);
        send.push(
            run(vec![
                "send".into(),
                "bauamt".into(),
                format!("Nachricht {i} von der Kommandozeile"),
            ])
            .await?,
        );
    }
    backend.stop().await;
    Ok(vec![Row::new(
        format!("cli-send{suffix}"),
        send.median_ms(),
        "ms",
    )
    .baseline(version.median_ms())
    .bar(50.0)
    .note(format!(
        "`rathaus send` against a running server, median of {runs} (p90 {:.1} ms); \
             baseline: `rathaus --version`",
        send.quantile_ms(0.9)
    ))])
}

/// Rooms created in each half of `targeted-push` (at most half the connections).
const TARGETED_EVENTS: usize = 200;

/// `idle-connections`: `n` authenticated idle connections to a `rathaus-server` process;
/// its RSS growth per connection and in total. Baseline: its RSS before any connection.
///
/// `targeted-push` on the same server: colleagues create rooms one after another, each
/// creation pushing `SecretGroupsChanged` to its creator alone; the server's CPU time
/// per creation while all `n` connections are subscribed. Baseline: the same while none
/// is (the first half of the creators, before the subscriptions). An event for one
/// colleague should cost the server the same however many others are subscribed.
pub(crate) async fn idle_connections(n: usize, suffix: &str) -> Result<Vec<Row>> {
    let tmp = tempfile::tempdir()?;
    let data = init_data_dir(tmp.path())?;
    let users = provision_users(
        &data,
        &Provisioning {
            prefix: "I",
            count: n,
            departments: &["bauamt"],
            roles: &[],
        },
    )?;
    let server = ServerProcess::spawn_bin(&sibling_bin("rathaus-server")?, &data, "127.0.0.1:0")?;
    let pid = server.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let endpoint = shared_endpoint()?;
    let conns = connect_all(&users, &endpoint, server.addr, &server.fingerprint).await?;
    if conns.len() != n {
        bail!("{} of {n} connections authenticated", conns.len());
    }
    // Let handshake buffers and per-connection tasks settle into their idle state.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid)?;
    let events = TARGETED_EVENTS.min(n / 2);
    let unsubscribed = create_rooms(&conns[..events], 0, pid).await?;
    // Then as phones are when their app is in the background: each also subscribed to
    // its events, a stream held open on both sides.
    let mut subscriptions = Vec::with_capacity(conns.len());
    for conn in &conns {
        let sub = tokio::time::timeout(Duration::from_secs(60), conn.subscribe())
            .await
            .map_err(|_| anyhow::anyhow!("subscribing timed out"))??;
        subscriptions.push(sub);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let subscribed = rss_kib(pid)?;
    let targeted = create_rooms(&conns[events..2 * events], events, pid).await?;
    let alive = conns
        .iter()
        .filter(|c| c.raw().close_reason().is_none())
        .count();
    for c in &conns {
        c.raw().close(0u32.into(), b"done");
    }
    server.kill()?;
    if alive != n {
        bail!("only {alive} of {n} connections still open at the measurement");
    }
    drop(subscriptions);
    let per_conn = after.saturating_sub(before) as f64 / n as f64;
    let per_subscribed = subscribed.saturating_sub(before) as f64 / n as f64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    // DESIGN §10: 10,000 connections within 1 GiB of server RSS, at most 32 KiB each.
    let bar_per_conn = 32.0;
    Ok(vec![
        Row::new(format!("idle-connections{suffix}"), per_conn, "KiB/conn")
            .bar(bar_per_conn)
            .note(format!(
                "server RSS growth per authenticated idle connection, {n} connections"
            )),
        Row::new(
            format!("idle-subscribed{suffix}"),
            per_subscribed,
            "KiB/conn",
        )
        .bar(bar_per_conn)
        .note(format!(
            "the same, each connection also subscribed to its events (a phone in the \
             background), {n} connections"
        )),
        Row::new(format!("targeted-push{suffix}"), targeted, "us/event")
            .baseline(unsubscribed)
            .note(format!(
                "server CPU per room created (its event for the creator alone) with {n} \
                 connections subscribed; baseline: none subscribed; {events} rooms each, \
                 10 ms resolution"
            )),
        Row::new(format!("idle-connections-rss{suffix}"), mib(after), "MiB")
            .baseline(mib(before))
            .bar(1024.0)
            .note(format!(
                "server RSS with {n} idle connections; baseline: before the first"
            )),
    ])
}

/// Each connection creates one room (`raum-{first + i}`), one after another; the server's
/// CPU time per creation, µs.
async fn create_rooms(conns: &[Connection], first: usize, pid: u32) -> Result<f64> {
    let cpu0 = process_cpu_time_of(pid)?;
    for (i, conn) in conns.iter().enumerate() {
        let slug = format!("raum-{}", first + i);
        let request = Request::CreateRoom {
            slug: DepartmentSlug::parse(&slug)?,
            name: format!("Raum {}", first + i),
        };
        match tokio::time::timeout(Duration::from_secs(60), conn.request(&request)).await {
            Ok(Ok(Response::Done)) => {}
            Ok(Ok(other)) => bail!("creating {slug}: {other:?}"),
            Ok(Err(e)) => bail!("creating {slug}: {e}"),
            Err(_) => bail!("creating {slug} timed out"),
        }
    }
    let cpu = process_cpu_time_of(pid)?.saturating_sub(cpu0);
    Ok(cpu.as_secs_f64() * 1e6 / conns.len().max(1) as f64)
}
