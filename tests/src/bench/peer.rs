//! `peer-ingest`: the Rathaus half of the side-by-side benchmark against Matrix Synapse
//! (`tests/peers/synapse.py` runs the Synapse half on the same machine in the same run and
//! reads this workload's `--json`). Not a DESIGN §10 bar, so it runs only when named
//! (`--only peer-ingest`).
//!
//! The workload, the same on both sides: `senders` colleagues in `rooms` public
//! department groups (`senders / rooms` in each) post `posts` messages of 1 KiB each, all
//! at once, every sender waiting for each acknowledgement before its next post; then
//! `readers` further members of the first group, each on a freshly enrolled device, fetch
//! the newest 1,000 messages of it.
//!
//! Everything goes through the client API a Rathaus app embeds, against a real
//! `rathaus-server` process on loopback (sled store in a temporary data directory), with
//! real enrolled clients (`rathaus_client::Client`, one SQLite profile each):
//! - `peer-ingest`: `Client::send_text`, the path of an app: the post goes into the
//!   device's durable outbox first, then to the server, then the acknowledgement is
//!   recorded in the profile (SQLite transactions on the client as well as the server's
//!   durable write).
//! - `peer-ingest-wire`: the same senders post the same messages with `Client::request`
//!   (one `Post` request on the authenticated connection, nothing kept on the device),
//!   which is what the Synapse load generator does over HTTP. These posts go to a second
//!   set of groups, so that each first-set group holds exactly `senders / rooms * posts`
//!   messages for the readers.
//! - `peer-fetch`: `Client::read_page(group, Some(1000), None)` of a fresh device (the
//!   read path a phone takes when it opens the group): median over the readers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use rand::RngCore;
use rathaus_client::{Client, ClientError, EnrollOptions, RowKind, ServerTrust};
use rathaus_protocol::{
    ClientMsgId, Content, DepartmentSlug, ErrorCode, GroupHandle, PostBody, Request, Response,
    UserId,
};
use rathaus_tests::{process_cpu_time, sibling_bin, ServerProcess, PASSWORD};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::report::{Row, Samples};

/// Bytes of text in every post ("1 KiB messages"), as in `ingest`.
const POST_TEXT: usize = 1024;
/// How many messages each reader fetches (the newest of the group).
const FETCH: usize = 1000;
/// Enrollments in flight at once (each costs the server an Argon2id hash; it refuses with
/// `Unavailable` while all its hashing slots are busy, and the enrollment is retried).
const ENROLL_CONCURRENCY: usize = 2;
/// Tries of one enrollment refused with `Unavailable`, 100 ms apart.
const ENROLL_TRIES: usize = 100;
/// Upper bound for any single phase, so a broken server fails the run instead of hanging.
const WAIT: Duration = Duration::from_secs(600);

/// The workload's shape.
pub(crate) struct PeerLoad {
    pub(crate) senders: usize,
    pub(crate) rooms: usize,
    pub(crate) posts: usize,
    pub(crate) readers: usize,
}

/// Runs the Rathaus half of the peer benchmark.
pub(crate) async fn peer_ingest(load: &PeerLoad, suffix: &str) -> Result<Vec<Row>> {
    ensure!(
        load.rooms > 0 && load.senders.is_multiple_of(load.rooms),
        "{} senders do not split evenly into {} rooms",
        load.senders,
        load.rooms
    );
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("server");
    let init = rathaus_server::init(
        &rathaus_server::InitOptions {
            data_dir: data.clone(),
            listen: Some("127.0.0.1:0".parse()?),
            org: Some("Stadt Teststadt".into()),
            admin_user: None,
            store: None,
        },
        &rathaus_server::clock::SystemClock,
    )?;
    let server = ServerProcess::spawn_bin(&sibling_bin("rathaus-server")?, &data, "127.0.0.1:0")?;
    let server_pid = server.child.id();
    let site = Site {
        addr: server.addr.to_string(),
        fingerprint: server.fingerprint.clone(),
        profiles: tmp.path().join("profiles"),
    };

    eprintln!(
        "  peer-ingest: {} senders in {} rooms, {} readers",
        load.senders, load.rooms, load.readers
    );
    let mut admin = site.enroll(&init.admin_user, &init.enrollment_code).await?;
    let room = |i: usize| format!("amt-{i}");
    let wire_room = |i: usize| format!("netz-{i}");
    for i in 0..load.rooms {
        for slug in [room(i), wire_room(i)] {
            admin
                .admin_add_department(DepartmentSlug::parse(&slug)?, &slug, Vec::new())
                .await?;
        }
    }
    let per_room = load.senders / load.rooms;
    let mut codes = Vec::new();
    for i in 0..load.senders {
        let user = format!("P{}", 3000 + i);
        let departments = vec![
            DepartmentSlug::parse(&room(i / per_room))?,
            DepartmentSlug::parse(&wire_room(i / per_room))?,
        ];
        let (code, _) = admin
            .admin_add_user(
                UserId::parse(&user)?,
                &format!("Sachbearbeitung {i}"),
                departments,
                Vec::new(),
            )
            .await?;
        codes.push((user, code, room(i / per_room), wire_room(i / per_room)));
    }
    let mut reader_codes = Vec::new();
    for i in 0..load.readers {
        let user = format!("L{}", 3000 + i);
        let (code, _) = admin
            .admin_add_user(
                UserId::parse(&user)?,
                &format!("Leserin {i}"),
                vec![DepartmentSlug::parse(&room(0))?],
                Vec::new(),
            )
            .await?;
        reader_codes.push((user, code));
    }
    admin.disconnect().await;

    let t = Instant::now();
    let mut senders = site
        .enroll_all(codes.iter().map(|(u, c, _, _)| (u.clone(), c.clone())))
        .await?;
    for client in &mut senders {
        client.connect().await?;
    }
    eprintln!(
        "    {} senders enrolled and connected in {:.1} s",
        senders.len(),
        t.elapsed().as_secs_f64()
    );

    let rooms: Vec<(GroupHandle, GroupHandle)> = codes
        .iter()
        .map(|(_, _, r, w)| Ok((GroupHandle::parse(r)?, GroupHandle::parse(w)?)))
        .collect::<Result<_>>()?;
    let mut app = drive(senders, &rooms, load.posts, Path::App, server_pid).await?;
    eprintln!(
        "    through the outbox: {:.0} msg/s, p99 {:.1} ms",
        app.rate,
        app.latency.quantile_ms(0.99)
    );
    let mut wire = drive(
        std::mem::take(&mut app.clients),
        &rooms,
        load.posts,
        Path::Wire,
        server_pid,
    )
    .await?;
    eprintln!(
        "    as single requests: {:.0} msg/s, p99 {:.1} ms",
        wire.rate,
        wire.latency.quantile_ms(0.99)
    );
    for mut client in std::mem::take(&mut wire.clients) {
        client.disconnect().await;
    }

    // Fresh devices of members of the first room, enrolled only now.
    let group = GroupHandle::parse(&room(0))?;
    let expected = (per_room * load.posts).min(FETCH);
    let mut fetch = Samples::default();
    for (user, code) in &reader_codes {
        let mut reader = site.enroll(user, code).await?;
        reader.connect().await?;
        let t = Instant::now();
        let page = tokio::time::timeout(WAIT, reader.read_page(&group, Some(FETCH), None))
            .await
            .map_err(|_| anyhow!("fetching {group} timed out"))??;
        fetch.push(t.elapsed());
        let texts = page
            .posts
            .iter()
            .filter(|p| p.row.kind == RowKind::Text && p.row.text.len() == POST_TEXT)
            .count();
        ensure!(
            texts == expected,
            "{user} got {texts} of the newest {expected} messages of {group}"
        );
        reader.disconnect().await;
    }
    server.kill()?;

    let total = load.senders * load.posts;
    let what = format!(
        "{} senders in {} public groups x {} posts of {POST_TEXT} B, rathaus-server process",
        load.senders, load.rooms, load.posts
    );
    let per_msg = |cpu: Duration| cpu.as_secs_f64() * 1e6 / total as f64;
    let mut rows = Vec::new();
    for (name, phase, how) in [
        (
            "peer-ingest",
            &app,
            "Client::send_text: device outbox, server's durable write, ack recorded",
        ),
        (
            "peer-ingest-wire",
            &wire,
            "Client::request(Post): one request, server's durable write, nothing kept on the device",
        ),
    ] {
        rows.push(
            Row::new(format!("{name}{suffix}"), phase.rate, "msg/s")
                .higher_is_better()
                .note(format!("{what}; {how}")),
        );
        rows.push(
            Row::new(
                format!("{name}-p50{suffix}"),
                phase.latency.quantile_ms(0.5),
                "ms",
            )
            .note("until acknowledged"),
        );
        rows.push(
            Row::new(
                format!("{name}-p99{suffix}"),
                phase.latency.quantile_ms(0.99),
                "ms",
            )
            .note("until acknowledged"),
        );
        rows.push(
            Row::new(
                format!("{name}-server-cpu{suffix}"),
                per_msg(phase.server_cpu),
                "us/msg",
            )
            .note("CPU time of the rathaus-server process per post; 10 ms resolution"),
        );
        rows.push(
            Row::new(
                format!("{name}-load-cpu{suffix}"),
                per_msg(phase.load_cpu),
                "us/msg",
            )
            .note(format!(
                "CPU time of the load generator (this process: the {} clients) per post; \
                 {:.0} % of one core over the phase",
                load.senders,
                100.0 * phase.load_cpu.as_secs_f64() / phase.elapsed.as_secs_f64()
            )),
        );
    }
    rows.push(
        Row::new(
            format!("peer-fetch-{FETCH}{suffix}"),
            fetch.median_ms(),
            "ms",
        )
        .note(format!(
            "Client::read_page of the newest {expected} messages of {group} on a freshly \
             enrolled device, median of {} readers (max {:.1} ms)",
            load.readers,
            fetch.quantile_ms(1.0)
        )),
    );
    Ok(rows)
}

/// Where the clients enroll.
#[derive(Clone)]
struct Site {
    addr: String,
    fingerprint: String,
    profiles: std::path::PathBuf,
}

impl Site {
    async fn enroll(&self, user: &str, code: &str) -> Result<Client> {
        for _ in 1..ENROLL_TRIES {
            match self.enroll_once(user, code).await {
                Err(ClientError::Server {
                    code: ErrorCode::Unavailable,
                    ..
                }) => tokio::time::sleep(Duration::from_millis(100)).await,
                other => return other.with_context(|| format!("enrolling {user}")),
            }
        }
        self.enroll_once(user, code)
            .await
            .with_context(|| format!("enrolling {user}"))
    }

    async fn enroll_once(&self, user: &str, code: &str) -> rathaus_client::Result<Client> {
        Client::enroll(
            &self.profiles.join(user),
            EnrollOptions {
                server: self.addr.clone(),
                trust: ServerTrust::Pinned(self.fingerprint.clone()),
                user: UserId::parse(user).map_err(|e| ClientError::Invalid(e.to_string()))?,
                code: code.to_owned(),
                password: PASSWORD.to_owned(),
                device_name: format!("{user}'s device"),
            },
        )
        .await
    }

    /// Enrolls every (user, code), a few at a time; the clients in the given order.
    async fn enroll_all(
        &self,
        users: impl Iterator<Item = (String, String)>,
    ) -> Result<Vec<Client>> {
        let site = Arc::new(self.clone());
        let limit = Arc::new(Semaphore::new(ENROLL_CONCURRENCY));
        let mut tasks = JoinSet::new();
        let mut n = 0;
        for (i, (user, code)) in users.enumerate() {
            let (site, limit) = (site.clone(), limit.clone());
            n += 1;
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await?;
                anyhow::Ok((i, site.enroll(&user, &code).await?))
            });
        }
        let mut clients: Vec<Option<Client>> = (0..n).map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            let (i, client) = joined??;
            clients[i] = Some(client);
        }
        Ok(clients.into_iter().flatten().collect())
    }
}

/// How a sender posts.
#[derive(Clone, Copy)]
enum Path {
    /// `Client::send_text`, through the device's outbox, into the first group.
    App,
    /// `Client::request(Post)`, into the second group.
    Wire,
}

/// One load phase's figures, and the clients back for the next phase.
struct Phase {
    clients: Vec<Client>,
    rate: f64,
    latency: Samples,
    elapsed: Duration,
    server_cpu: Duration,
    load_cpu: Duration,
}

/// Every client posts `posts` times in sequence, all clients at once.
async fn drive(
    clients: Vec<Client>,
    rooms: &[(GroupHandle, GroupHandle)],
    posts: usize,
    path: Path,
    server_pid: u32,
) -> Result<Phase> {
    let total = clients.len() * posts;
    let (server0, load0) = (cpu_time_of(server_pid)?, process_cpu_time()?);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let (app_group, wire_group) = rooms
            .get(i)
            .cloned()
            .ok_or_else(|| anyhow!("no room for sender {i}"))?;
        tasks.spawn(async move {
            let mut samples = Samples::default();
            for n in 0..posts {
                let text = post_text(i, n);
                let t0 = Instant::now();
                match path {
                    Path::App => {
                        client.send_text(&app_group, &text).await?;
                    }
                    Path::Wire => {
                        let mut id = [0u8; 16];
                        rand::thread_rng().fill_bytes(&mut id);
                        let request = Request::Post {
                            group: wire_group.clone(),
                            client_id: ClientMsgId(id),
                            body: PostBody::Public(Content::text(text).into()),
                        };
                        match client.request(&request).await? {
                            Response::Posted { .. } => {}
                            other => bail!("unexpected answer to a post: {other:?}"),
                        }
                    }
                }
                samples.push(t0.elapsed());
            }
            anyhow::Ok((i, client, samples))
        });
    }
    let mut latency = Samples::default();
    let mut back: Vec<Option<Client>> = (0..tasks.len()).map(|_| None).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Some(joined) = tokio::time::timeout_at(deadline, tasks.join_next())
        .await
        .map_err(|_| anyhow!("the load phase did not finish within {WAIT:?}"))?
    {
        let (i, client, samples) = joined??;
        latency.extend(samples);
        back[i] = Some(client);
    }
    let elapsed = start.elapsed();
    let (server_cpu, load_cpu) = (
        cpu_time_of(server_pid)?.saturating_sub(server0),
        process_cpu_time()?.saturating_sub(load0),
    );
    if latency.len() != total {
        bail!("{} of {total} posts acknowledged", latency.len());
    }
    Ok(Phase {
        clients: back.into_iter().flatten().collect(),
        rate: total as f64 / elapsed.as_secs_f64(),
        latency,
        elapsed,
        server_cpu,
        load_cpu,
    })
}

/// A 1 KiB text that differs per sender and post.
fn post_text(sender: usize, n: usize) -> String {
    let mut text = format!("Bekanntmachung {sender}/{n}: ");
    text.extend(std::iter::repeat_n('x', POST_TEXT - text.len()));
    text
}

/// CPU time (user + system) process `pid` has used so far, from `/proc/PID/stat` (10 ms
/// resolution).
fn cpu_time_of(pid: u32) -> Result<Duration> {
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime field 14, stime field 15.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no field {i} in /proc/{pid}/stat"))
    };
    let total = ticks(14)? + ticks(15)?;
    Ok(Duration::from_millis(total * 1000 / USER_HZ))
}
