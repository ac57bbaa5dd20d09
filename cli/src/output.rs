//! Printing: human text, or one JSON document with `--json`; errors as one line on stderr.

use std::sync::atomic::{AtomicBool, Ordering};

use rathaus_client::ClientError;
use serde_json::{json, Value};

/// `--utc`: human output shows times in UTC instead of the local time zone.
static UTC: AtomicBool = AtomicBool::new(false);

/// Chooses UTC (`--utc`) or the local time zone for times in human output.
pub(crate) fn set_utc(utc: bool) {
    UTC.store(utc, Ordering::Relaxed);
}

/// A time for people to read: local time with its offset (`2026-12-01 09:15:00 +01:00`,
/// the offset in force at that instant, from the system's time zone rules), or with
/// `--utc` RFC 3339 in UTC. JSON output always carries RFC 3339 UTC.
pub(crate) fn human_time(ms: i64) -> String {
    if UTC.load(Ordering::Relaxed) {
        return rathaus_client::time_fmt::rfc3339(ms);
    }
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
        None => rathaus_client::time_fmt::rfc3339(ms),
    }
}

/// Where results go.
pub(crate) struct Output {
    /// Print JSON instead of text.
    pub(crate) json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    /// Prints a result: `human` as text, or `doc` as JSON.
    pub(crate) fn print(&self, doc: Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{doc}");
        } else {
            let text = human();
            if !text.is_empty() {
                println!("{text}");
            }
        }
    }

    /// Prints one line of a stream (`listen`): a JSON line or text.
    pub(crate) fn line(&self, doc: Value, human: String) {
        if self.json {
            println!("{doc}");
        } else {
            println!("{human}");
        }
    }

    /// Reports a failure: one line on stderr; with `--json` also a JSON error on stdout.
    pub(crate) fn error(&self, e: &anyhow::Error) {
        let code = error_code(e);
        let message = one_line(e);
        if self.json {
            println!("{}", json!({"error": {"code": code, "message": message}}));
        }
        eprintln!("rathaus: {message}");
    }
}

/// The stable code of a failure: the client library's for its errors, `Invalid` for
/// what the CLI itself refuses (arguments, files, passwords it was given).
pub(crate) fn error_code(e: &anyhow::Error) -> &'static str {
    e.chain()
        .find_map(|cause| cause.downcast_ref::<ClientError>())
        .map_or("Invalid", ClientError::code_name)
}

fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}
