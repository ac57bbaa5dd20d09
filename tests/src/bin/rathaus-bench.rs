//! `rathaus-bench`: the DESIGN §10 quality bars, each workload measured next to its
//! baseline in the same run, so the ratio holds on a noisy machine.
//!
//! ```text
//! cargo run --release -p rathaus-tests --bin rathaus-bench -- [--quick] [--json]
//! ```
//!
//! `--quick` runs reduced sizes (and says so in every workload name); `--json` prints
//! `{"results": [{"workload", "value", "unit", "baseline", "ratio", "bar",
//! "lower_is_better"}]}` instead of a table. `bar` is in the unit of `value`; for bars
//! relative to bare openmls it is 1.25 × this run's baseline. A workload that cannot run
//! in this build is reported with `value: null`, never with a made-up figure.
//! `--only NAME[,NAME]` runs a subset (ingest, fanout, announce, mls, catchup, e2e-secret,
//! cli-send, idle-connections, import, files, search). `--only peer-ingest` runs the
//! Rathaus half of the side-by-side benchmark against Matrix Synapse
//! (`tests/peers/synapse.py`); it is no DESIGN §10 bar and runs only when named.
//!
//! `--store postgres://… [--nodes 2]` runs ingest, fanout and catchup on PostgreSQL: each
//! workload on a fresh database of its own (created on that server, dropped afterwards),
//! served by one node or by two on the same database, next to the same baselines. Their
//! names then carry the store and node count (`ingest-pg`, `fanout-p99-pg-2nodes`); the
//! other workloads run on sled as without it.

#[path = "../bench/catchup.rs"]
mod catchup;
#[path = "../bench/cluster.rs"]
mod cluster;
#[path = "../bench/e2e.rs"]
mod e2e;
#[path = "../bench/files.rs"]
mod files;
#[path = "../bench/import.rs"]
mod import;
#[path = "../bench/mls.rs"]
mod mls;
#[path = "../bench/peer.rs"]
mod peer;
#[path = "../bench/process.rs"]
mod process;
#[path = "../bench/relay.rs"]
mod relay;
#[path = "../bench/report.rs"]
mod report;
#[path = "../bench/search.rs"]
mod search;

use std::future::Future;
use std::time::Instant;

use anyhow::{bail, Result};
use report::Row;

/// Workload sizes of one run.
struct Sizes {
    suffix: &'static str,
    ingest_senders: usize,
    ingest_posts: usize,
    fanout_members: usize,
    fanout_posts: usize,
    announce_users: usize,
    announce_connected: usize,
    announce_posts: usize,
    announce_storage_posts: usize,
    mls_members: usize,
    mls_reps: usize,
    mls_messages: usize,
    catchup_members: usize,
    e2e_messages: usize,
    cli_runs: usize,
    idle_connections: usize,
    import_rows: usize,
    file_mib: usize,
    search_posts: usize,
    search_queries: usize,
    /// Posts per sender in `peer-ingest` (100 senders in 10 rooms).
    peer_posts: usize,
    /// Fresh devices that each fetch the newest 1,000 messages in `peer-ingest`.
    peer_readers: usize,
}

const FULL: Sizes = Sizes {
    suffix: "",
    ingest_senders: 100,
    ingest_posts: 300,
    fanout_members: 1000,
    fanout_posts: 20,
    announce_users: 40_000,
    announce_connected: 5_000,
    announce_posts: 5,
    announce_storage_posts: 1000,
    mls_members: 1000,
    mls_reps: 3,
    mls_messages: 300,
    catchup_members: 1000,
    e2e_messages: 1_000,
    cli_runs: 30,
    idle_connections: 10_000,
    import_rows: 5_000,
    file_mib: 50,
    search_posts: 1_000_000,
    search_queries: 2_000,
    // 10 senders x 100 posts: each room holds exactly the 1,000 messages a reader fetches.
    peer_posts: 100,
    peer_readers: 5,
};

const QUICK: Sizes = Sizes {
    suffix: " (quick)",
    ingest_senders: 100,
    ingest_posts: 50,
    fanout_members: 200,
    fanout_posts: 10,
    announce_users: 4_000,
    announce_connected: 500,
    announce_posts: 3,
    announce_storage_posts: 200,
    mls_members: 200,
    mls_reps: 1,
    mls_messages: 200,
    catchup_members: 100,
    e2e_messages: 50,
    cli_runs: 10,
    idle_connections: 1_000,
    import_rows: 1_000,
    // DESIGN §10 names 50 MiB; quick runs keep the size, it takes seconds.
    file_mib: 50,
    search_posts: 100_000,
    search_queries: 500,
    peer_posts: 20,
    peer_readers: 2,
};

fn main() -> Result<()> {
    // The server runs in this process (and the baselines beside it): the same memory
    // policy as the `rathaus-server` binary.
    rathaus_server::memory::no_transparent_huge_pages();
    // Standard output carries the table or the JSON alone. Diagnostics go to stderr, and
    // only when RUST_LOG asks: the workloads provoke library log lines by design (the
    // catch-up's members meet commits of epochs they have left behind).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let mut quick = false;
    let mut json = false;
    let mut only: Option<Vec<String>> = None;
    let mut store: Option<String> = None;
    let mut nodes = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => json = true,
            "--only" => {
                let list = args.next().unwrap_or_default();
                only = Some(list.split(',').map(str::to_owned).collect());
            }
            "--store" => match args.next() {
                Some(url) if url == "sled" => store = None,
                Some(url) if rathaus_server::store::is_postgres_url(&url) => store = Some(url),
                other => bail!("--store takes sled or a postgres://… URL, not {other:?}"),
            },
            "--nodes" => {
                let n = args.next().unwrap_or_default();
                nodes = n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--nodes takes a number, not {n:?}"))?;
                if !(1..=2).contains(&nodes) {
                    bail!("--nodes is 1 or 2");
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: rathaus-bench [--quick] [--json] [--store sled|postgres://… [--nodes 1|2]] [--only ingest,fanout,announce,mls,catchup,e2e-secret,cli-send,idle-connections,import,files,search,peer-ingest]"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let sizes = if quick { &QUICK } else { &FULL };
    let placement = cluster::Placement::new(store, nodes)?;
    // Ingest, fan-out and catch-up on the chosen store: their names say which.
    let ps = format!("{}{}", placement.tag(), sizes.suffix);
    let ps = ps.as_str();
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|w| w == name));
    // The peer benchmark's half is no DESIGN §10 bar: only when asked for by name.
    let named = |name: &str| only.as_ref().is_some_and(|o| o.iter().any(|w| w == name));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let s = sizes.suffix;

    if wanted("ingest") {
        rows.extend(run_async(&runtime, "ingest", "msg/s", ps, async {
            relay::ingest(sizes.ingest_senders, sizes.ingest_posts, &placement, ps).await
        }));
    }
    if wanted("fanout") {
        rows.extend(run_async(&runtime, "fanout", "ms", ps, async {
            relay::fanout(sizes.fanout_members, sizes.fanout_posts, &placement, ps).await
        }));
    }
    if wanted("announce") {
        rows.extend(run_async(&runtime, "announce", "ms", s, async {
            relay::announce(
                sizes.announce_users,
                sizes.announce_connected,
                sizes.announce_posts,
                sizes.announce_storage_posts,
                s,
            )
            .await
        }));
    }
    if wanted("mls") {
        let n = sizes.mls_members;
        eprintln!("== mls ({n} members)");
        let t = Instant::now();
        match mls::all(n, sizes.mls_reps, sizes.mls_messages, s) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("   mls failed: {e:#}");
                rows.push(Row::unavailable(
                    format!("mls-{n}{s}"),
                    "ms",
                    &format!("{e:#}"),
                ));
            }
        }
        eprintln!("   {:.1} s", t.elapsed().as_secs_f64());
    }
    if wanted("catchup") {
        // DESIGN §10: 1,000 messages + 10 commits at every size; only the group shrinks.
        let n = sizes.catchup_members;
        let name = if quick {
            format!("{} ({n} members, quick)", placement.tag())
        } else {
            placement.tag()
        };
        rows.extend(run_async(&runtime, "catchup", "ms", &name, async {
            catchup::catchup(n, 1000, 10, &placement, &name).await
        }));
    }
    if wanted("e2e-secret") {
        rows.extend(run_async(&runtime, "e2e-secret", "ms", s, async {
            e2e::e2e(sizes.e2e_messages, s).await
        }));
    }
    if wanted("cli-send") {
        rows.extend(run_async(&runtime, "cli-send", "ms", s, async {
            process::cli_send(sizes.cli_runs, s).await
        }));
    }
    if wanted("idle-connections") {
        rows.extend(run_async(
            &runtime,
            "idle-connections",
            "KiB/conn",
            s,
            async { process::idle_connections(sizes.idle_connections, s).await },
        ));
    }
    if wanted("import") {
        rows.extend(run_async(&runtime, "import", "s", s, async {
            import::import(sizes.import_rows, s).await
        }));
    }
    if wanted("files") {
        rows.extend(run_async(&runtime, "files", "MB/s", s, async {
            files::transfer(sizes.file_mib, s).await
        }));
    }
    if wanted("search") {
        rows.extend(run_async(&runtime, "search", "ms", s, async {
            search::search(sizes.search_posts, sizes.search_queries, s).await
        }));
    }
    if named("peer-ingest") {
        let load = peer::PeerLoad {
            senders: 100,
            rooms: 10,
            posts: sizes.peer_posts,
            readers: sizes.peer_readers,
        };
        rows.extend(run_async(&runtime, "peer-ingest", "msg/s", s, async {
            peer::peer_ingest(&load, s).await
        }));
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());

    if json {
        report::print_json(&rows)?;
    } else {
        report::print_table(&rows);
    }
    Ok(())
}

/// Runs one async workload; a failure becomes an "unavailable" row with the reason, so one
/// broken workload does not hide the others.
fn run_async(
    runtime: &tokio::runtime::Runtime,
    name: &str,
    unit: &str,
    suffix: &str,
    workload: impl Future<Output = Result<Vec<Row>>>,
) -> Vec<Row> {
    eprintln!("== {name}");
    let t = Instant::now();
    let rows = match runtime.block_on(workload) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("   {name} failed: {e:#}");
            vec![Row::unavailable(
                format!("{name}{suffix}"),
                unit,
                &format!("failed: {e:#}"),
            )]
        }
    };
    eprintln!("   {:.1} s", t.elapsed().as_secs_f64());
    rows
}

/// The allocator `rathaus-server` runs with, so the in-process server is measured as it
/// runs in production (the baselines in this process use it too).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
