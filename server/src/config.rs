//! The configuration file of `rathaus-server run --config FILE` (DESIGN §11).
//!
//! TOML; every key is documented in `server/rathaus-server.example.toml`. Unknown keys and
//! bad values are errors that name the key and the line, and the server does not start.
//! Command-line flags override the file; what is in neither takes the defaults of
//! [`RunOptions::new`](crate::RunOptions::new).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rathaus_protocol::blobs::MAX_UPLOAD_LIMIT;
use serde::Deserialize;
use toml::Spanned;

/// The file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The data directory made by `init`.
    pub data: Option<PathBuf>,
    /// QUIC listen address (default: the one `init` wrote to `DIR/config.json`).
    pub listen: Option<SocketAddr>,
    /// Which store holds the records: `"sled"`, the embedded database in `DIR/db`, or
    /// `"postgres://…"`, a PostgreSQL database (default: the one `init` chose).
    pub store: Option<Spanned<String>>,
    /// Certificate (PEM or DER) instead of `DIR/cert.der`; needs `key`.
    pub cert: Option<PathBuf>,
    /// Private key for `cert`.
    pub key: Option<PathBuf>,
    /// `[limits]`.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[udp]`.
    #[serde(default)]
    pub udp: UdpSection,
    /// `[retention]`.
    #[serde(default)]
    pub retention: RetentionSection,
    /// `[log]`.
    #[serde(default)]
    pub log: LogSection,
    /// `[metrics]`.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[files]`.
    #[serde(default)]
    pub files: FilesSection,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Connections beyond this many are refused.
    pub max_connections: Option<Spanned<usize>>,
    /// Largest file accepted, in bytes (default 100 MiB, at most 64 GiB); posts whose
    /// body encodes larger are refused too.
    pub max_upload_bytes: Option<Spanned<usize>>,
}

/// `[udp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpSection {
    /// Receive buffer asked of the kernel (capped by `net.core.rmem_max`).
    pub recv_buffer_bytes: Option<Spanned<usize>>,
    /// Send buffer asked of the kernel (capped by `net.core.wmem_max`).
    pub send_buffer_bytes: Option<Spanned<usize>>,
}

/// `[retention]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// Days a public group or `announcements` without a policy of its own
    /// (`rathaus admin retention`) keeps its entries; 0: forever (default).
    pub default_days: Option<Spanned<u32>>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `text` (default) or `json`, one object per line.
    pub format: Option<LogFormat>,
    /// A `tracing` filter such as `info` or `info,rathaus_server=debug`; `RUST_LOG`
    /// overrides it.
    pub level: Option<Spanned<String>>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of the HTTP listener for `/metrics`, `/healthz`, `/readyz`; none: off.
    pub listen: Option<SocketAddr>,
}

/// `[files]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSection {
    /// The blob directory: stored files and partial uploads (default `DIR/blobs`). The
    /// nodes of one cluster point it at the same shared storage.
    pub dir: Option<Spanned<PathBuf>>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type (the message names key and
    /// line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and the offending text.
        message: String,
    },
    /// A value of the right type outside what the server accepts.
    #[error("{path}, line {line}: {key}: {reason}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key, dotted (`limits.max_upload_bytes`).
        key: &'static str,
        /// Its line (1-based).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks `text` (read from `path`, named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let refuse =
            |key: &'static str, span: std::ops::Range<usize>, reason: String| ConfigError::Value {
                path: path.to_path_buf(),
                key,
                line: line_of(text, span.start),
                reason,
            };
        if let Some(store) = &file.store {
            let url = store.get_ref();
            if url != "sled" && !crate::store::is_postgres_url(url) {
                return Err(refuse(
                    "store",
                    store.span(),
                    format!(
                        "{url:?} is not a store of this build: \"sled\" (the embedded database in the data directory) or \"postgres://…\" (a PostgreSQL database)"
                    ),
                ));
            }
        }
        let positive = [
            ("limits.max_connections", &file.limits.max_connections),
            ("udp.recv_buffer_bytes", &file.udp.recv_buffer_bytes),
            ("udp.send_buffer_bytes", &file.udp.send_buffer_bytes),
        ];
        for (key, value) in positive {
            if let Some(v) = value.as_ref().filter(|v| *v.get_ref() == 0) {
                return Err(refuse(key, v.span(), "must be at least 1".into()));
            }
        }
        if let Some(v) = &file.limits.max_upload_bytes {
            if *v.get_ref() == 0 || *v.get_ref() as u64 > MAX_UPLOAD_LIMIT {
                return Err(refuse(
                    "limits.max_upload_bytes",
                    v.span(),
                    format!(
                        "{} is outside 1..={MAX_UPLOAD_LIMIT} (64 GiB, the largest file limit)",
                        v.get_ref()
                    ),
                ));
            }
        }
        if let Some(days) = &file.retention.default_days {
            if *days.get_ref() > MAX_RETENTION_DAYS {
                return Err(refuse(
                    "retention.default_days",
                    days.span(),
                    format!("{} is more than {MAX_RETENTION_DAYS} days", days.get_ref()),
                ));
            }
        }
        if let Some(level) = &file.log.level {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(level.get_ref()) {
                return Err(refuse(
                    "log.level",
                    level.span(),
                    format!("{:?} is not a log filter: {e}", level.get_ref()),
                ));
            }
        }
        if let Some(dir) = &file.files.dir {
            if dir.get_ref().as_os_str().is_empty() {
                return Err(refuse(
                    "files.dir",
                    dir.span(),
                    "must name a directory".into(),
                ));
            }
        }
        if let (Some(_), None) | (None, Some(_)) = (&file.cert, &file.key) {
            return Err(ConfigError::Value {
                path: path.to_path_buf(),
                key: "cert",
                line: 1,
                reason: "cert and key must be given together".into(),
            });
        }
        Ok(file)
    }
}

/// Longest retention period (100 years), as for `rathaus admin retention`.
const MAX_RETENTION_DAYS: u32 = 36_500;

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        ConfigFile::parse(Path::new("server.toml"), text)
    }

    #[test]
    fn the_example_file_parses_with_every_key() {
        let example = include_str!("../rathaus-server.example.toml");
        // Every key of the example, uncommented, is accepted.
        let uncommented: String = example
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.contains(" = "))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        for (text, store) in [(example, None), (uncommented.as_str(), Some("sled"))] {
            let file = parse(text).unwrap();
            assert_eq!(file.data.as_deref(), Some(Path::new("/var/lib/rathaus")));
            assert_eq!(file.store.map(|s| s.into_inner()).as_deref(), store);
            assert_eq!(file.metrics.listen.unwrap().to_string(), "127.0.0.1:9464");
            assert_eq!(file.log.format, Some(LogFormat::Text));
            assert!(file.limits.max_upload_bytes.is_some());
            assert_eq!(
                file.files.dir.map(|d| d.into_inner()),
                store.map(|_| PathBuf::from("/srv/rathaus-files"))
            );
        }
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = parse("data = \"/d\"\n\n[metrics]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen") && err.contains("line 5"), "{err}");
        let err = parse("[limit]\nmax_upload_bytes = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limit") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn a_bad_value_is_named_with_its_line() {
        let err = parse("data = \"/d\"\nlisten = \"nonsense\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("nonsense"), "{err}");
        let err = parse("[log]\nformat = \"xml\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("xml"), "{err}");
        let err = parse("data = \"/d\"\n[limits]\nmax_upload_bytes = 100000000000\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("limits.max_upload_bytes") && err.contains("line 3"),
            "{err}"
        );
        let err = parse("store = \"mysql://db\"\n").unwrap_err().to_string();
        assert!(err.contains("store") && err.contains("line 1"), "{err}");
        let file = parse("store = \"postgres://rathaus@localhost/rathaus\"\n").unwrap();
        assert_eq!(
            file.store.unwrap().into_inner(),
            "postgres://rathaus@localhost/rathaus"
        );
        let err = parse("[log]\nlevel = \"info,=[\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.level") && err.contains("line 2"), "{err}");
        let err = parse("[files]\ndir = \"\"\n").unwrap_err().to_string();
        assert!(err.contains("files.dir") && err.contains("line 2"), "{err}");
        let file = parse("[files]\ndir = \"/mnt/rathaus-files\"\n").unwrap();
        assert_eq!(
            file.files.dir.unwrap().into_inner(),
            PathBuf::from("/mnt/rathaus-files")
        );
        let err = parse("[udp]\n\nrecv_buffer_bytes = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("udp.recv_buffer_bytes") && err.contains("line 3"),
            "{err}"
        );
    }
}
