//! Printing: human text, or one JSON document with `--json`; errors as one line on stderr.

use rathaus_client::ClientError;
use serde_json::{json, Value};

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
