//! `rathaus`: the Rathaus command-line client. A thin shell over `rathaus-client`:
//! parse arguments, call the library, print human text or (with `--json`) one JSON
//! document, and exit non-zero with a one-line reason on any failure.

mod admin;
mod announce;
mod commands;
mod demo;
mod devices;
mod docs;
mod enroll;
mod files;
mod import;
mod letters;
mod listen;
mod members;
mod output;
mod password;
mod posts;
mod progress;
mod rooms;
mod search;
mod sync;
mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::Output;

/// `--version`: the release and the protocol version it speaks.
fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            rathaus_protocol::PROTOCOL_VERSION
        )
    })
}

/// Rathaus: secure messaging for the city administration.
#[derive(Debug, Parser)]
#[command(name = "rathaus", version = version(), about, propagate_version = true)]
pub(crate) struct Cli {
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Show times in UTC instead of the local time zone (human output; JSON is always UTC).
    #[arg(long, global = true)]
    utc: bool,
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
        /// Server address, host:port; for a cluster, its nodes separated by commas
        /// (a:4433,b:4433), tried in order when one is unreachable.
        #[arg(long)]
        server: String,
        /// The server's certificate fingerprint (SHA256:…), as given by IT. Or use --ca.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Trust the server through these CA certificates (PEM file) instead of a
        /// fingerprint; the profile keeps a copy.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// With --ca: the name the server's certificate must carry. Default: the host
        /// part of --server.
        #[arg(long, value_name = "NAME")]
        server_name: Option<String>,
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
        /// Server address, host:port; for a cluster, its nodes separated by commas
        /// (a:4433,b:4433), tried in order when one is unreachable.
        #[arg(long)]
        server: String,
        /// The server's certificate fingerprint (SHA256:…). Or use --ca.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Trust the server through these CA certificates (PEM file) instead of a
        /// fingerprint; the profile keeps a copy.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// With --ca: the name the server's certificate must carry. Default: the host
        /// part of --server.
        #[arg(long, value_name = "NAME")]
        server_name: Option<String>,
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
    /// Your devices with key fingerprints; approve a new one by its link code, or revoke
    /// one.
    Devices {
        #[command(subcommand)]
        command: Option<DevicesCommand>,
    },
    /// Secret project rooms across departments.
    Room {
        #[command(subcommand)]
        command: RoomCommand,
    },
    /// Messages not yet acknowledged by the server (queued while it was unreachable).
    Outbox {
        /// Withdraw this queued message (its client id) before it is sent.
        #[arg(long, value_name = "CLIENT_ID")]
        cancel: Option<String>,
    },
    /// Change your password (the one that adds devices).
    Password {
        /// Read the current and the new password from standard input, one per line
        /// (else RATHAUS_PASSWORD and RATHAUS_NEW_PASSWORD, else prompts).
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
    /// Send a message to a group (bauamt, bauamt/secret, announcements). `@P1001` in the
    /// text mentions a colleague, `rathaus://GROUP/SEQ` links a post.
    Send {
        /// The group.
        group: String,
        /// The text (with --file: a caption).
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Answer this post (its number in the same group).
        #[arg(long, value_name = "SEQ")]
        reply_to: Option<u64>,
        /// Send this file (a photo, a document); resumes an interrupted upload of it.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Search public groups and announcements (on the server) and your secret groups (on
    /// this device only), best first.
    Search {
        /// Plain words; all must occur (German word forms match: "Baustellen" finds
        /// "Baustelle").
        query: String,
        /// Only this group; a secret group is searched on this device only.
        #[arg(long)]
        group: Option<String>,
        /// Most results (at most 100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Download the file of a post (its SHA-256 is checked).
    Download {
        /// The group.
        group: String,
        /// The post's number.
        seq: u64,
        /// Where to save it. Default: its name in the current directory.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// The document library: folders and documents every colleague reads.
    Docs {
        #[command(subcommand)]
        command: DocsCommand,
    },
    /// Open a link: `rathaus://GROUP/SEQ` shows that post, `rathaus://docs/PATH` downloads
    /// that library document.
    Open {
        /// The link.
        link: String,
        /// Where to save a document. Default: its name in the current directory.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Sync a group and print its timeline (edits, deletes and reactions folded into
    /// their posts).
    Read {
        /// The group.
        group: String,
        /// Show only the newest N posts (of those before --before).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Show only posts before this one (the next older page).
        #[arg(long, value_name = "SEQ")]
        before: Option<u64>,
    },
    /// React to a post with an emoji; the same reaction again takes it back.
    React {
        /// The group.
        group: String,
        /// The post's number.
        seq: u64,
        /// The emoji, e.g. 👍.
        emoji: String,
    },
    /// Replace the text of your own post.
    Edit {
        /// The group.
        group: String,
        /// The post's number.
        seq: u64,
        /// The new text.
        text: String,
    },
    /// Withdraw your own post (it shows as deleted; its text is gone).
    Delete {
        /// The group.
        group: String,
        /// The post's number.
        seq: u64,
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
    /// Admit a pending invitation to a secret group (owners only).
    Approve {
        /// The secret group, e.g. `bauamt/secret`.
        group: String,
        /// The personnel number of the pending user.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        user: Option<String>,
        /// Admit every pending user (each is listed).
        #[arg(long)]
        all: bool,
    },
    /// Show the safety number with a colleague, to compare in person.
    Verify {
        /// The colleague's personnel number.
        user: String,
        /// The numbers matched: mark the colleague's current keys as verified.
        #[arg(long)]
        confirm: bool,
    },
    /// Turn auto-admit of a secret group on or off (owners only): with it on, owners'
    /// clients admit rostered users on sync without `approve`.
    AutoAdmit {
        /// The secret group, e.g. `bauamt/secret`.
        group: String,
        /// `on` or `off`.
        state: Switch,
    },
    /// List a secret group's owners, or (owners only) make a member an owner or take
    /// ownership away.
    Owners {
        /// The secret group, e.g. `bauamt/secret`.
        group: String,
        /// Make this member an owner.
        #[arg(long, value_name = "USER", conflicts_with = "remove")]
        add: Option<String>,
        /// Take this user's ownership away (the last owner stays).
        #[arg(long, value_name = "USER")]
        remove: Option<String>,
        /// Become an owner yourself: only when no owner is left on the roster.
        #[arg(long, conflicts_with_all = ["add", "remove"])]
        claim: bool,
    },
    /// Announcements: draft, submit, approve, publish, acknowledge.
    Announce {
        #[command(subcommand)]
        command: AnnounceCommand,
    },
    /// Remove a post from a public group (department owners and admins).
    Moderate {
        /// The group.
        group: String,
        /// The post's number.
        seq: u64,
    },
    /// A self-contained tour: temporary server and colleagues talking.
    Demo,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DocsCommand {
    /// List a folder (default: the root).
    Ls {
        /// The folder, e.g. /bauamt.
        path: Option<String>,
    },
    /// Store a file as a document (editors, admins; department owners in their folder).
    Put {
        /// The document's path, e.g. /bauamt/bauantrag.pdf.
        path: String,
        /// The file.
        file: PathBuf,
    },
    /// Download a document.
    Get {
        /// The document's path.
        path: String,
        /// Where to save it. Default: its name in the current directory.
        #[arg(long, value_name = "F")]
        out: Option<PathBuf>,
    },
    /// Create a folder (its parent must exist).
    Mkdir {
        /// The folder's path.
        path: String,
    },
    /// Remove a document or an empty folder.
    Rm {
        /// The path.
        path: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AnnounceCommand {
    /// Write a draft (prints its id).
    Draft {
        /// Headline.
        #[arg(long)]
        title: String,
        /// Text.
        #[arg(long)]
        body: String,
        /// Ask colleagues to confirm they have read it.
        #[arg(long)]
        requires_ack: bool,
        /// Hide it after this time: RFC 3339 (2026-12-24T12:00:00Z), or a date
        /// (2026-12-24: shown through the end of that day, UTC).
        #[arg(long)]
        expires: Option<String>,
    },
    /// Hand your draft to the editors.
    Submit {
        /// Announcement id.
        id: u64,
    },
    /// Editor: approve and publish a submitted draft.
    Approve {
        /// Announcement id.
        id: u64,
    },
    /// Editor: send a draft back with a comment.
    Reject {
        /// Announcement id.
        id: u64,
        /// Why.
        #[arg(long)]
        comment: String,
    },
    /// Editor/admin: publish a notice directly.
    Publish {
        /// Headline.
        #[arg(long)]
        title: String,
        /// Text.
        #[arg(long)]
        body: String,
        /// Ask colleagues to confirm they have read it.
        #[arg(long)]
        requires_ack: bool,
        /// Hide it after this time: RFC 3339, or a date (2026-12-24: shown through the
        /// end of that day, UTC).
        #[arg(long)]
        expires: Option<String>,
    },
    /// "I have read it."
    Ack {
        /// Announcement id.
        id: u64,
    },
    /// Editor: pin (or with --unpin, unpin) a published announcement.
    Pin {
        /// Announcement id.
        id: u64,
        /// Unpin instead.
        #[arg(long)]
        unpin: bool,
    },
    /// List published announcements, or with --pending drafts and submissions.
    List {
        /// Show drafts and submissions (editors see all submissions).
        #[arg(long)]
        pending: bool,
    },
}

/// A setting's state on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Switch {
    /// Turned on.
    On,
    /// Turned off.
    Off,
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
    /// Show the audit log of admin, editor and moderation actions.
    Audit {
        /// Check the hash chain and report the first broken link.
        #[arg(long)]
        verify: bool,
    },
    /// Keep a public group's or announcements' entries only this many days (0: forever).
    Retention {
        /// The group.
        group: String,
        /// Days.
        days: u32,
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
    /// Change a department's display name (the slug stays its handle).
    Rename {
        /// The department's slug.
        slug: String,
        /// The new display name.
        #[arg(long)]
        name: String,
    },
    /// Retire a department: its members are taken off, its public and secret groups are
    /// closed to new posts (their history stays readable).
    Remove {
        /// The department's slug.
        slug: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RoomCommand {
    /// Create a room (`room/SLUG`); you own it.
    Create {
        /// Short name: a lowercase letter, then a-z 0-9 -.
        slug: String,
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// Owner: invite a colleague from any department.
    Invite {
        /// The room, e.g. room/sanierung.
        room: String,
        /// The colleague's personnel number.
        user: String,
    },
    /// Accept an invitation.
    Join {
        /// The room.
        room: String,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: String,
    },
    /// The rooms you are invited to.
    Invitations,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DevicesCommand {
    /// Admit your new device by the link code it shows (`rathaus add-device` printed it):
    /// it joins your secret groups.
    Approve {
        /// The link code, e.g. K7QF-2M9X-HR4T.
        code: String,
    },
    /// Revoke one of your other devices: it can no longer log in and leaves every secret
    /// group.
    Remove {
        /// The device number (see `rathaus devices`).
        device: u64,
    },
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
    /// Provision colleagues from an HR export: `;`-separated UTF-8 CSV with personnel
    /// number; name; departments (`,`-separated); roles. Idempotent.
    Import {
        /// The CSV file.
        file: PathBuf,
        /// Write one printable enrollment letter (PDF with the code and its QR code) per
        /// new colleague into this directory.
        #[arg(long, value_name = "DIR")]
        letters: Option<PathBuf>,
    },
    /// Move a colleague between departments: leaving one cuts its secret group off at
    /// once; joining one is a pending invitation for its owners.
    Departments {
        /// Personnel number.
        id: String,
        /// Department to join (repeatable).
        #[arg(long = "add")]
        add: Vec<String>,
        /// Department to leave (repeatable).
        #[arg(long = "remove")]
        remove: Vec<String>,
    },
    /// Lost phone or forgotten password: revokes all the colleague's devices and prints a
    /// new one-time enrollment code.
    Reset {
        /// Personnel number.
        id: String,
    },
    /// Grant or revoke roles.
    Role {
        /// Personnel number.
        id: String,
        /// Role to grant (repeatable).
        #[arg(long = "add")]
        add: Vec<String>,
        /// Role to revoke (repeatable).
        #[arg(long = "remove")]
        remove: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging();
    output::set_utc(cli.utc);
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
        Err(e) if e.is::<import::Reported>() => ExitCode::FAILURE,
        // Reported on stdout already; EX_TEMPFAIL tells scripts "try later, nothing lost".
        Err(e) if e.is::<QueuedSend>() => ExitCode::from(75),
        Err(e) => {
            out.error(&e);
            ExitCode::FAILURE
        }
    }
}

/// A command line clap refuses: its message on stderr, exit code 2 as clap does; with
/// `--json` anywhere on the line, also one JSON error document on stdout (code `Usage`), so
/// scripts read every failure the same way. `--help` and `--version` print as usual.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if std::env::args_os().any(|a| a == "--json") {
        let rendered = e.render().to_string();
        // clap's message without the usage and help hints that follow it.
        let message = rendered
            .lines()
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let message = message.trim_start_matches("error: ").to_owned();
        println!(
            "{}",
            serde_json::json!({"error": {"code": "Usage", "message": message}})
        );
    }
    let _ = e.print();
    ExitCode::from(2)
}

/// A send the server could not take yet: queued, reported, exit code 75.
#[derive(Debug)]
pub(crate) struct QueuedSend;

impl std::fmt::Display for QueuedSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("queued")
    }
}

impl std::error::Error for QueuedSend {}

fn init_logging() {
    // Silent by default: the CLI's output is its stdout, and stderr carries its own one
    // line on failure (DESIGN §9). Libraries log what they refuse, e.g. openmls an
    // `ERROR` for every message of another epoch, which the client meets by design and
    // handles; every failure that matters reaches the user as Rathaus' own error.
    // RUST_LOG turns on diagnostics.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
