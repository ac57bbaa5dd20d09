//! `rathaus-server`: init, run and inspect a Rathaus server (DESIGN §9).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rathaus_protocol::GroupHandle;
use rathaus_server::clock::SystemClock;
use rathaus_server::{init, inspect, start, InitOptions, RunOptions};
use serde_json::Value;

/// mimalloc instead of the system allocator: a server with many concurrent requests
/// allocates small buffers from many threads, where glibc's malloc spent ~17% of the CPU
/// in a profile of the ingest benchmark (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rathaus-server",
    version,
    about = "Rathaus messaging server for city administrations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory: database, TLS certificate, first administrator.
    Init {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// Address to listen on (default 0.0.0.0:4433).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Organisation name shown to users.
        #[arg(long)]
        org: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Serve until SIGINT or SIGTERM.
    Run {
        /// Data directory made by `init`.
        #[arg(long)]
        data: PathBuf,
        /// Address to listen on (default: from config.json).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Certificate (PEM or DER) instead of the one made by `init`.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Private key (PEM or DER) for --cert.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Refuse connections beyond this many.
        #[arg(long, default_value_t = 20_000)]
        max_connections: usize,
    },
    /// Show what the server holds (stop the server first).
    Inspect {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// A group to list entry by entry.
        group: Option<GroupHandle>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable line for operators; `{:#}` keeps the cause chain.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init {
            data,
            listen,
            org,
            json,
        } => {
            let opts = InitOptions {
                data_dir: data.clone(),
                listen,
                org,
                admin_user: None,
            };
            let report = init(&opts, &SystemClock)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("Initialised Rathaus server in {}", data.display());
                println!("  listen:          {}", report.listen);
                println!("  fingerprint:     {}", report.fingerprint);
                println!("  admin user:      {}", report.admin_user);
                println!(
                    "  enrollment code: {} (valid 72 h, single use)",
                    report.enrollment_code
                );
                println!();
                println!(
                    "Enroll the administrator with:\n  rathaus enroll --server HOST:PORT --fingerprint {} --user {} --code {}",
                    report.fingerprint, report.admin_user, report.enrollment_code
                );
            }
            Ok(())
        }
        Command::Run {
            data,
            listen,
            cert,
            key,
            max_connections,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async move {
                let mut opts = RunOptions::new(data);
                opts.listen = listen;
                opts.cert = cert;
                opts.key = key;
                opts.max_connections = max_connections;
                let server = start(opts).await?;
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "listening on {} fingerprint {}",
                    server.local_addr(),
                    server.fingerprint()
                )?;
                out.flush()?;
                drop(out);
                server.wait().await;
                Ok(())
            })
        }
        Command::Inspect { data, group, json } => {
            let view = inspect(&data, group.as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else if group.is_some() {
                print_group(&view);
            } else {
                print_overview(&view);
            }
            Ok(())
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn print_overview(view: &Value) {
    println!("Organisation: {}", text(&view["org"]));
    println!("\nUsers:");
    for u in view["users"].as_array().into_iter().flatten() {
        let removed = if u["removed"] == Value::Bool(true) {
            "  (removed)"
        } else {
            ""
        };
        println!(
            "  {:<12} {:<28} roles: {:<22} departments: {:<20} devices: {}{}",
            text(&u["id"]),
            text(&u["name"]),
            text(&u["roles"]),
            text(&u["departments"]),
            text(&u["devices"]),
            removed
        );
    }
    println!("\nDepartments:");
    for d in view["departments"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {:<28} owners: {:<20} members: {}",
            text(&d["slug"]),
            text(&d["name"]),
            text(&d["owners"]),
            d["members"].as_array().map_or(0, Vec::len)
        );
    }
    println!("\nGroups:");
    for g in view["groups"].as_array().into_iter().flatten() {
        println!(
            "  {:<24} {:<14} {:>8} entries {:>12} bytes",
            text(&g["group"]),
            text(&g["kind"]),
            text(&g["entries"]),
            text(&g["bytes"])
        );
    }
}

fn print_group(view: &Value) {
    println!("Group {}", text(&view["group"]));
    for e in view["entries"].as_array().into_iter().flatten() {
        println!(
            "  #{:<6} {:<12} {:>8} bytes",
            text(&e["seq"]),
            text(&e["kind"]),
            text(&e["size"])
        );
    }
}
