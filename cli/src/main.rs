//! `rathaus`: the Rathaus command-line client. A thin shell over `rathaus-client`:
//! parse arguments, call the library, print human text or (with `--json`) one JSON
//! document, and exit non-zero with a one-line reason on any failure.

mod commands;
mod demo;
mod output;
mod password;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::Output;

/// Rathaus: secure messaging for the city administration.
#[derive(Debug, Parser)]
#[command(name = "rathaus", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Profile directory (device key + local database). Default: ~/.rathaus
    #[arg(long, global = true, env = "RATHAUS_PROFILE")]
    profile: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Enroll this device with the one-time code from IT.
    Enroll {
        /// Server address, host:port.
        #[arg(long)]
        server: String,
        /// The server's certificate fingerprint (SHA256:…), as given by IT.
        #[arg(long)]
        fingerprint: String,
        /// Your personnel number.
        #[arg(long)]
        user: String,
        /// The one-time enrollment code.
        #[arg(long)]
        code: String,
        /// A name for this device.
        #[arg(long)]
        device_name: Option<String>,
        /// Read the new password from standard input (else RATHAUS_PASSWORD, else a prompt).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Enroll another device of yours with your password.
    AddDevice {
        /// Server address, host:port.
        #[arg(long)]
        server: String,
        /// The server's certificate fingerprint (SHA256:…).
        #[arg(long)]
        fingerprint: String,
        /// Your personnel number.
        #[arg(long)]
        user: String,
        /// A name for this device.
        #[arg(long)]
        device_name: Option<String>,
        /// Read the password from standard input (else RATHAUS_PASSWORD, else a prompt).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Show who this profile is.
    Whoami,
    /// Administration (admins only).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// List your groups with unread counts.
    Groups,
    /// Send a message to a group (bauamt, bauamt/secret, announcements).
    Send {
        /// The group.
        group: String,
        /// The text.
        text: String,
    },
    /// Sync a group and print its timeline.
    Read {
        /// The group.
        group: String,
    },
    /// Send queued messages and fetch everything new.
    Sync,
    /// Stay connected and print messages as they arrive.
    Listen {
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// List a group's members.
    Members {
        /// The group.
        group: String,
    },
    /// A self-contained tour: temporary server and colleagues talking.
    Demo,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Departments.
    Department {
        #[command(subcommand)]
        command: DepartmentCommand,
    },
    /// Users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DepartmentCommand {
    /// Create a department and its public group.
    Add {
        /// Short name (also the group handle), e.g. bauamt.
        slug: String,
        /// Display name, e.g. "Bauamt".
        #[arg(long)]
        name: String,
        /// Owner (repeatable).
        #[arg(long = "owner")]
        owners: Vec<String>,
    },
    /// List departments.
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Provision a colleague; prints the one-time enrollment code.
    Add {
        /// Personnel number.
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Department (repeatable).
        #[arg(long = "department")]
        departments: Vec<String>,
        /// Role (repeatable): member, author, editor, admin.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Offboard a colleague: sessions end at once, devices are revoked.
    Remove {
        /// Personnel number.
        id: String,
    },
    /// List users.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let out = Output::new(cli.json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.error(&anyhow::anyhow!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli, &out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.error(&e);
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    // Quiet by default: the CLI's output is its stdout; RUST_LOG turns on diagnostics.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
