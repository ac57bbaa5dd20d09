//! `catchup`: an offline member of a secret group comes back to `messages` application
//! messages and `commits` commits (each a server-proposed removal, committed by the
//! owner) and catches up through `Client::sync` and `Client::read`. Baseline: a member
//! running bare openmls in memory fetches the same log entries over its own connection
//! and processes them.
//!
//! Setup, the cheapest honest one: the owner and the offline member are real enrolled
//! clients; every other member is a user written straight into the server's store whose
//! KeyPackages come from a throwaway in-memory [`MlsEngine`] (they never read the group).
//! The owner's client gives birth to the group and the owner admits all of them in one
//! commit (`approve --all`).
//!
//! On two nodes the owner and the administrator work through the first and the offline
//! member (and the baseline's bare member) through the second, so everything it catches
//! up on was written by the other node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};
use rathaus_client::mls::{DeviceIdentity, MlsEngine};
use rathaus_client::Client;
use rathaus_protocol::{EntryBody, GroupHandle, Request, Response, UserId};
use rathaus_server::RunningServer;
use rathaus_tests::{provision_users, shared_endpoint, ProvisionedUser, Provisioning, TestBackend};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::cluster::{node_dir, start_node_at, Placement};
use super::mls::Bare;
use super::report::{perf_control, Row};

/// KeyPackage publications in flight at once.
const PUBLISH_CONCURRENCY: usize = 32;
/// Upper bound for waiting on the server's removal proposal.
const WAIT: Duration = Duration::from_secs(60);

/// Runs the workload for a group of `members` (owner and offline member included).
pub(crate) async fn catchup(
    members: usize,
    messages: usize,
    commits: usize,
    placement: &Placement,
    suffix: &str,
) -> Result<Vec<Row>> {
    ensure!(
        members >= 3 + commits,
        "need room for {commits} removals among {members} members"
    );
    let mut backend = TestBackend::start_on(placement.database()?).await?;
    let mut second = SecondNode::start(&backend, placement.nodes()).await?;
    let mut admin = backend.admin().await?;
    let owner_code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &[], &[])
        .await?;
    backend.department(&mut admin, "bauamt", &["P1001"]).await?;
    let offline_code = backend
        .provision(&mut admin, "P1002", "Jonas Weber", &["bauamt"], &[])
        .await?;
    // Enrolling publishes each device's KeyPackages; nobody syncs yet, so the group is
    // born only once everyone below has KeyPackages on the server.
    let mut owner = backend.enroll("P1001", &owner_code).await?;
    let offline_server = second.addr().unwrap_or(backend.addr).to_string();
    let mut offline = backend
        .enroll_at(&offline_server, "P1002", &offline_code)
        .await?;
    for c in [&mut admin, &mut owner, &mut offline] {
        c.disconnect().await;
    }
    second.stop().await;
    backend.stop().await;
    eprintln!("  catchup: provisioning {} members", members - 2);
    // `M0` is the bare openmls member of the baseline.
    let others = provision_users(
        &backend.data_dir(),
        &Provisioning {
            prefix: "M",
            count: members - 2,
            departments: &["bauamt"],
            roles: &[],
        },
    )?;
    backend.run().await?;
    second.run(&backend).await?;
    let offline_addr = second.addr().unwrap_or(backend.addr);
    let endpoint = shared_endpoint()?;
    let bare_user = others[0].clone();
    let bare = Bare::with_key(
        bare_user.key.clone(),
        &DeviceIdentity::new(bare_user.id.as_str(), &bare_user.device.0.to_string())?,
    );
    let bare_conn = bare_user
        .connect(&endpoint, offline_addr, &backend.fingerprint)
        .await?;
    expect_status(
        bare_conn
            .request(&Request::PublishKeyPackages {
                one_time: vec![bare.key_package()?],
                last_resort: Some(bare.key_package()?),
            })
            .await?,
    )?;
    publish_key_packages(&others[1..], &endpoint, &backend).await?;

    let group = GroupHandle::parse("bauamt/secret")?;
    eprintln!("  catchup: birth of a group of {members}");
    let t = Instant::now();
    owner.sync().await?;
    // Birth admits only the owner's device; the owner admits the roster in one commit.
    let admitted = owner.approve_all(&group).await?;
    ensure!(
        admitted.len() == members - 1,
        "admitted {} of {} colleagues",
        admitted.len(),
        members - 1
    );
    eprintln!("    {:.1} s", t.elapsed().as_secs_f64());
    let owner_epoch = epoch(&owner, &group)?;
    offline.sync().await?;
    ensure!(
        epoch(&offline, &group)? == owner_epoch,
        "the offline member did not join"
    );
    let welcome = match bare_conn.request(&Request::FetchWelcomes).await? {
        Response::Welcomes(mut w) if !w.is_empty() => w.remove(0),
        other => bail!("no Welcome for the bare member: {other:?}"),
    };
    let mut bare_group = bare.join(&welcome.welcome, &welcome.ratchet_tree)?;
    offline.disconnect().await;

    eprintln!("  catchup: {messages} messages and {commits} commits while a member is offline");
    let t = Instant::now();
    let removed: Vec<&ProvisionedUser> = others[others.len() - commits..].iter().collect();
    let every = messages / (commits + 1);
    let mut next_removal = removed.iter();
    for i in 0..messages {
        owner
            .send_text(&group, &format!("Catch-up message {i}"))
            .await?;
        if every > 0 && (i + 1) % every == 0 {
            if let Some(user) = next_removal.next() {
                remove_and_commit(&mut admin, &mut owner, &group, &user.id).await?;
            }
        }
    }
    for user in next_removal {
        remove_and_commit(&mut admin, &mut owner, &group, &user.id).await?;
    }
    let final_epoch = epoch(&owner, &group)?;
    ensure!(
        final_epoch == owner_epoch + commits as u64,
        "expected {commits} commits, the epoch went from {owner_epoch} to {final_epoch}"
    );
    eprintln!("    {:.1} s", t.elapsed().as_secs_f64());

    // The offline member comes back.
    perf_control("catchup", "enable");
    let t = Instant::now();
    offline.sync().await?;
    let rows = offline.read(&group).await?;
    let elapsed = t.elapsed();
    perf_control("catchup", "disable");
    let read = rows
        .iter()
        .filter(|r| r.text.starts_with("Catch-up message "))
        .count();
    ensure!(
        read == messages,
        "the member read {read} of {messages} messages"
    );
    ensure!(
        epoch(&offline, &group)? == final_epoch,
        "the member did not reach the owner's epoch"
    );

    // Baseline: the same entries, fetched and processed by bare openmls in memory.
    let t = Instant::now();
    let mut since = welcome.seq;
    let mut applications = 0;
    loop {
        let (entries, head) = match bare_conn
            .request(&Request::Fetch {
                group: group.clone(),
                since,
                limit: rathaus_protocol::limits::MAX_FETCH,
            })
            .await?
        {
            Response::Entries { entries, head, .. } => (entries, head),
            other => bail!("unexpected answer to Fetch: {other:?}"),
        };
        let Some(last) = entries.last().map(|e| e.seq) else {
            break;
        };
        for entry in &entries {
            if let EntryBody::Mls(bytes) = &entry.body {
                if bare.process(&mut bare_group, bytes)? {
                    applications += 1;
                }
            }
        }
        since = last;
        if last >= head {
            break;
        }
    }
    let bare_elapsed = t.elapsed();
    ensure!(
        applications == messages && bare_group.epoch().as_u64() == final_epoch,
        "the bare member processed {applications} messages up to epoch {}",
        bare_group.epoch().as_u64()
    );
    for c in [&mut admin, &mut owner, &mut offline] {
        c.disconnect().await;
    }
    bare_conn.close().await;
    second.stop().await;
    backend.stop().await;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(vec![Row::new(
        format!("catchup{suffix}"),
        ms(elapsed),
        "ms",
    )
    .baseline(ms(bare_elapsed))
    .bar(300.0)
    .note(format!(
        "offline member of a {members}-member secret group: sync + read of {messages} \
             messages and {commits} removal commits (+ their proposals){}",
        match placement.nodes() {
            1 if placement.tag().is_empty() => String::new(),
            1 => " on PostgreSQL".into(),
            n => format!(" on PostgreSQL, {n} nodes: written through one, read through another"),
        }
    ))])
}

/// Every user publishes one one-time and one last-resort KeyPackage made by a throwaway
/// engine with the user's device key.
async fn publish_key_packages(
    users: &[ProvisionedUser],
    endpoint: &quinn::Endpoint,
    backend: &TestBackend,
) -> Result<()> {
    let limit = Arc::new(Semaphore::new(PUBLISH_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for user in users {
        let (user, endpoint, fp, addr, limit) = (
            user.clone(),
            endpoint.clone(),
            backend.fingerprint.clone(),
            backend.addr,
            limit.clone(),
        );
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let identity = DeviceIdentity::new(user.id.as_str(), &user.device.0.to_string())?;
            let engine = MlsEngine::with_connection(
                rusqlite::Connection::open_in_memory()?,
                user.key.clone(),
                identity,
            )?;
            let batch = engine.generate_key_packages(1)?;
            let conn = user.connect(&endpoint, addr, &fp).await?;
            expect_status(
                conn.request(&Request::PublishKeyPackages {
                    one_time: batch.one_time,
                    last_resort: Some(batch.last_resort),
                })
                .await?,
            )?;
            conn.close().await;
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

/// The administrator removes `user`; the server proposes removing their device and the
/// owner's client commits that proposal.
async fn remove_and_commit(
    admin: &mut Client,
    owner: &mut Client,
    group: &GroupHandle,
    user: &UserId,
) -> Result<()> {
    let before = epoch(owner, group)?;
    admin.admin_remove_user(user.clone()).await?;
    let deadline = Instant::now() + WAIT;
    while epoch(owner, group)? == before {
        if Instant::now() > deadline {
            bail!("the removal of {user} was never committed");
        }
        owner.sync().await?;
        if epoch(owner, group)? == before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// The second node on the backend's database, if the run has two: its own copy of the
/// data directory, restarted on the same address (the offline member's profile names it).
struct SecondNode {
    /// Its data directory (`None`: one node only).
    dir: Option<tempfile::TempDir>,
    /// Where it listens, once started.
    addr: Option<std::net::SocketAddr>,
    server: Option<RunningServer>,
}

impl SecondNode {
    async fn start(backend: &TestBackend, nodes: usize) -> Result<Self> {
        ensure!(nodes <= 2, "catchup runs on one or two nodes");
        let mut node = Self {
            dir: (nodes == 2)
                .then(|| node_dir(&backend.data_dir()))
                .transpose()?,
            addr: None,
            server: None,
        };
        node.run(backend).await?;
        Ok(node)
    }

    fn addr(&self) -> Option<std::net::SocketAddr> {
        self.addr
    }

    async fn run(&mut self, backend: &TestBackend) -> Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let listen = self.addr.unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
        let server = start_node_at(
            dir.path().to_path_buf(),
            listen,
            Some(backend.clock.clone()),
        )
        .await?;
        self.addr = Some(server.local_addr());
        self.server = Some(server);
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

fn epoch(client: &Client, group: &GroupHandle) -> Result<u64> {
    Ok(client
        .group_code(group)?
        .ok_or_else(|| anyhow!("{} is not a member of {group}", client.identity().user))?
        .0)
}

fn expect_status(response: Response) -> Result<()> {
    match response {
        Response::KeyPackageStatus { .. } => Ok(()),
        other => bail!("unexpected answer to PublishKeyPackages: {other:?}"),
    }
}
