//! `rathaus-server`: init, run, inspect, back up and restore a Rathaus server (DESIGN §9,
//! §11).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rathaus_protocol::{GroupHandle, UserId, PROTOCOL_VERSION};
use rathaus_server::clock::SystemClock;
use rathaus_server::config::{ConfigFile, LogFormat};
use rathaus_server::transport::udp::SocketBuffers;
use rathaus_server::{backup, init, inspect, start, InitOptions, RunOptions};
use serde_json::Value;

/// mimalloc instead of the system allocator: a server with many concurrent requests
/// allocates small buffers from many threads, where glibc's malloc spent ~17% of the CPU
/// in a profile of the ingest benchmark (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rathaus-server",
    version = version(),
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
        /// Keep the records in this (empty) PostgreSQL database, postgres://…, instead of
        /// the sled database in the data directory; remembered in its config.json.
        #[arg(long)]
        store: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Serve until SIGINT or SIGTERM.
    Run {
        /// Configuration file (TOML, see rathaus-server.example.toml); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory made by `init` (or `data` in the configuration).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Address to listen on (default: from config.json).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Certificate (PEM or DER) instead of the one made by `init`.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Private key (PEM or DER) for --cert.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Refuse connections beyond this many (default 20000).
        #[arg(long)]
        max_connections: Option<usize>,
        /// Serve /metrics, /healthz and /readyz over HTTP on this address.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Log format: text or json.
        #[arg(long, value_parser = parse_log_format)]
        log_format: Option<LogFormat>,
        /// The records' store: sled or postgres://… (default: the one chosen at init).
        #[arg(long)]
        store: Option<String>,
        /// Blob directory for files and partial uploads (default DIR/blobs); the nodes of
        /// one cluster share it.
        #[arg(long)]
        files_dir: Option<PathBuf>,
    },
    /// Write a consistent backup of a server, running or stopped, to FILE.
    Backup {
        /// Data directory of the server.
        #[arg(long)]
        data: PathBuf,
        /// The backup file to create.
        #[arg(long)]
        to: PathBuf,
        /// The server's blob directory, if not DIR/blobs (a running server names its own).
        #[arg(long)]
        files_dir: Option<PathBuf>,
        /// Print one JSON document (the manifest).
        #[arg(long)]
        json: bool,
    },
    /// Rewrite the stopped server's database from its live records, so that deleted and
    /// removed posts leave no bytes behind in its files.
    Compact {
        /// Data directory of the (stopped) server.
        #[arg(long)]
        data: PathBuf,
        /// Print one JSON document (the manifest of the snapshot it was rebuilt from).
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a data directory from a backup (verified first).
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The new data directory (must not exist or be empty).
        #[arg(long)]
        data: PathBuf,
        /// Where the files go, if not DIR/blobs (the restored server's `[files] dir`).
        #[arg(long)]
        files_dir: Option<PathBuf>,
        /// Print one JSON document (the manifest).
        #[arg(long)]
        json: bool,
    },
    /// Check a backup's manifest, checksums and snapshot.
    VerifyBackup {
        /// The backup file.
        file: PathBuf,
        /// Print one JSON document (the manifest).
        #[arg(long)]
        json: bool,
    },
    /// Break glass: a new admin enrollment code, on the server's machine (audited).
    AdminCode {
        /// Data directory of the server (running or stopped).
        #[arg(long)]
        data: PathBuf,
        /// The administrator's personnel number (created as admin if missing).
        user: UserId,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Copy the records of a stopped server's sled database into an empty PostgreSQL
    /// database, verify the copy, and make the data directory use it.
    Migrate {
        /// Data directory of the (stopped) server.
        #[arg(long)]
        from_data: PathBuf,
        /// The empty PostgreSQL database, postgres://…
        #[arg(long)]
        to: String,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
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
    rathaus_server::memory::no_transparent_huge_pages();
    let cli = Cli::parse();
    let run = match cli.command {
        Command::Run {
            config,
            data,
            listen,
            cert,
            key,
            max_connections,
            metrics_listen,
            log_format,
            store,
            files_dir,
        } => {
            let flags = RunFlags {
                store,
                files_dir,
                data,
                listen,
                cert,
                key,
                max_connections,
                metrics_listen,
                log_format,
            };
            match settings(config.as_deref(), flags) {
                Ok(s) => Ok(s),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
        other => Err(other),
    };
    let result = match run {
        Ok(settings) => {
            init_logging(settings.log_format, settings.log_level.as_deref());
            serve(settings)
        }
        Err(command) => {
            init_logging(LogFormat::Text, None);
            execute(command)
        }
    };
    match result {
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
            store,
            json,
        } => {
            let opts = InitOptions {
                data_dir: data.clone(),
                listen,
                org,
                admin_user: None,
                store,
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
        Command::Run { .. } => unreachable!("handled by serve"),
        Command::Backup {
            data,
            to,
            files_dir,
            json,
        } => {
            let manifest = backup::backup_with_files(&data, files_dir.as_deref(), &to)?;
            if json {
                println!("{}", serde_json::to_string(&manifest)?);
            } else {
                println!(
                    "Backed up {} ({} records, server {}) to {}",
                    if manifest.online {
                        "the running server"
                    } else {
                        "the stopped server"
                    },
                    manifest.records,
                    data.display(),
                    to.display()
                );
            }
            Ok(())
        }
        Command::Compact { data, json } => {
            let manifest = backup::compact(&data)?;
            if json {
                println!("{}", serde_json::to_string(&manifest)?);
            } else {
                println!(
                    "Compacted {}: {} records rewritten",
                    data.display(),
                    manifest.records
                );
            }
            Ok(())
        }
        Command::Restore {
            from,
            data,
            files_dir,
            json,
        } => {
            let manifest = backup::restore_with_files(&from, &data, files_dir.as_deref())?;
            if json {
                println!("{}", serde_json::to_string(&manifest)?);
            } else {
                println!(
                    "Restored {} records of {:?} into {}; start it with rathaus-server run --data {}",
                    manifest.records,
                    manifest.org,
                    data.display(),
                    data.display()
                );
            }
            Ok(())
        }
        Command::VerifyBackup { file, json } => {
            let manifest = backup::verify(&file)?;
            if json {
                println!("{}", serde_json::to_string(&manifest)?);
            } else {
                println!(
                    "{}: valid backup of {:?}, {} records, {} members checked, taken by rathaus-server {} (protocol {})",
                    file.display(),
                    manifest.org,
                    manifest.records,
                    manifest.members.len(),
                    manifest.server_version,
                    manifest.protocol_version
                );
            }
            Ok(())
        }
        Command::AdminCode { data, user, json } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let code = runtime.block_on(backup::admin_code(&data, &user))?;
            if json {
                println!("{}", serde_json::to_string(&code)?);
            } else {
                println!(
                    "Break-glass enrollment code for {} (valid 72 h, single use, audited):",
                    code.user
                );
                println!("  {}", code.enrollment_code);
                println!(
                    "Enroll with: rathaus enroll --server HOST:PORT --fingerprint FP --user {} --code {}",
                    code.user, code.enrollment_code
                );
            }
            Ok(())
        }
        Command::Migrate {
            from_data,
            to,
            json,
        } => {
            let report = rathaus_server::migrate::migrate(&from_data, &to)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "Copied {} records of {} into PostgreSQL and verified them (SHA-256 {}).",
                    report.records,
                    from_data.display(),
                    report.sha256
                );
                println!(
                    "{}/config.json now names the database; start with rathaus-server run --data {}                      ({}/db is left as it was: remove it once satisfied).",
                    from_data.display(),
                    from_data.display(),
                    from_data.display()
                );
            }
            Ok(())
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

/// `--version`: the release and the protocol version it speaks.
fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{} (protocol {PROTOCOL_VERSION})",
            env!("CARGO_PKG_VERSION")
        )
    })
}

/// The flags of `run` that may also come from the configuration file.
struct RunFlags {
    store: Option<String>,
    files_dir: Option<PathBuf>,
    data: Option<PathBuf>,
    listen: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    max_connections: Option<usize>,
    metrics_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
}

/// What `run` runs with: flags over the file over the defaults.
struct Settings {
    opts: RunOptions,
    log_format: LogFormat,
    log_level: Option<String>,
}

fn settings(config: Option<&std::path::Path>, flags: RunFlags) -> anyhow::Result<Settings> {
    let file = match config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let data = flags
        .data
        .or(file.data)
        .context("no data directory: give --data DIR or `data = \"DIR\"` in the --config file")?;
    let mut opts = RunOptions::new(data);
    opts.listen = flags.listen.or(file.listen);
    opts.store = flags.store.or(file.store.map(|s| s.into_inner()));
    opts.files_dir = flags.files_dir.or(file.files.dir.map(|d| d.into_inner()));
    if flags.cert.is_some() {
        (opts.cert, opts.key) = (flags.cert, flags.key);
    } else {
        (opts.cert, opts.key) = (file.cert, file.key);
    }
    if let Some(n) = flags
        .max_connections
        .or(file.limits.max_connections.map(|v| v.into_inner()))
    {
        opts.max_connections = n;
    }
    if let Some(n) = file.limits.max_upload_bytes {
        opts.max_upload_bytes = n.into_inner();
    }
    opts.udp_buffers = SocketBuffers {
        recv: file
            .udp
            .recv_buffer_bytes
            .map_or(opts.udp_buffers.recv, |v| v.into_inner()),
        send: file
            .udp
            .send_buffer_bytes
            .map_or(opts.udp_buffers.send, |v| v.into_inner()),
    };
    opts.metrics_listen = flags.metrics_listen.or(file.metrics.listen);
    if let Some(days) = file.retention.default_days {
        opts.default_retention_days = days.into_inner();
    }
    Ok(Settings {
        opts,
        log_format: flags.log_format.or(file.log.format).unwrap_or_default(),
        log_level: file.log.level.map(|l| l.into_inner()),
    })
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?}: expected text or json")),
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let opts = settings.opts;
        let limits = (
            opts.max_connections,
            opts.max_upload_bytes,
            opts.udp_buffers,
            opts.default_retention_days,
        );
        let data = opts.data_dir.clone();
        let server = start(opts).await?;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            protocol = PROTOCOL_VERSION,
            org = %server.org(),
            data = %data.display(),
            store = server.store_kind(),
            listen = %server.local_addr(),
            metrics = %server.metrics_addr().map_or_else(|| "off".to_owned(), |a| a.to_string()),
            max_connections = limits.0,
            max_upload_bytes = limits.1,
            udp_recv_buffer = limits.2.recv,
            udp_send_buffer = limits.2.send,
            default_retention_days = limits.3,
            "rathaus-server ready"
        );
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "listening on {} fingerprint {}",
            server.local_addr(),
            server.fingerprint()
        )?;
        if let Some(addr) = server.metrics_addr() {
            writeln!(out, "metrics on http://{addr}/metrics")?;
        }
        out.flush()?;
        drop(out);
        // Under systemd (Type=notify) this tells it the server is listening; elsewhere
        // NOTIFY_SOCKET is unset and this does nothing.
        let _ = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(&format!("listening on {}", server.local_addr())),
            ],
        );
        server.wait().await;
        Ok(())
    })
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::try_new(level.unwrap_or("info"))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
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
