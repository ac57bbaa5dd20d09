//! `DIR/ops.sock`: how the `backup` and `admin-code` commands reach a running server.
//!
//! One request per connection: a JSON line (`{"op": "backup"}` or
//! `{"op": "admin-code", "user": "P1001"}`), answered by a JSON line
//! (`{"ok": true, …}` or `{"ok": false, "error": "…"}`). A backup answer is followed by
//! exactly `bytes` bytes of store snapshot. Access control is the file system's: the
//! socket is 0600 inside the 0700 data directory.
//!
//! The server takes the snapshot into a file in the data directory (the one place it may
//! write) while its writes are paused, then streams that file: a slow reader never holds
//! the pause.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rathaus_protocol::UserId;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::error::ServerError;
use crate::transport::ServerCtx;

/// The socket's file name in the data directory.
pub(crate) const SOCKET: &str = "ops.sock";
/// Longest request line.
const MAX_REQUEST: usize = 4096;
/// A client gets this long to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// A request on the socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub(crate) enum OpsRequest {
    /// A snapshot of the store.
    Backup,
    /// A break-glass admin code.
    AdminCode {
        /// For whom.
        user: String,
    },
}

/// The answer line.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct OpsAnswer {
    /// Whether the request succeeded.
    pub(crate) ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// Backup: pairs in the snapshot.
    #[serde(default)]
    pub(crate) records: u64,
    /// Backup: the id a restored store must continue after.
    #[serde(default)]
    pub(crate) next_id: u64,
    /// Backup: bytes of snapshot that follow the line.
    #[serde(default)]
    pub(crate) bytes: u64,
    /// Backup: how long writes were held back for the snapshot, in ms.
    #[serde(default)]
    pub(crate) paused_ms: u64,
    /// Backup: the server's blob directory, whose files go into the backup beside the
    /// snapshot (it may be outside the data directory, `[files] dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) files_dir: Option<PathBuf>,
    /// Admin code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) admin_code: Option<crate::service::AdminCode>,
}

impl OpsAnswer {
    fn refused(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            ..Self::default()
        }
    }
}

/// Binds `DIR/ops.sock`, replacing a stale one (this process holds the database lock, so
/// no other server of this directory runs).
pub(crate) fn bind(data_dir: &Path) -> Result<UnixListener, ServerError> {
    remove_stale_snapshots(data_dir);
    let path = data_dir.join(SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ServerError::io(
                format!("cannot remove {}", path.display()),
                e,
            ))
        }
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| ServerError::io(format!("cannot create {}", path.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ServerError::io(format!("cannot restrict {}", path.display()), e))?;
    }
    Ok(listener)
}

pub(crate) async fn serve(
    listener: UnixListener,
    ctx: Arc<ServerCtx>,
    data_dir: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    // One snapshot at a time: each holds the writes back and takes disk space.
    let backups = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (ctx, dir, backups) = (ctx.clone(), data_dir.clone(), backups.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &ctx, &dir, &backups).await {
                tracing::warn!(error = %e, "operations socket request failed");
            }
        });
    }
    let _ = std::fs::remove_file(data_dir.join(SOCKET));
}

async fn answer(
    stream: UnixStream,
    ctx: &ServerCtx,
    dir: &Path,
    backups: &tokio::sync::Mutex<()>,
) -> std::io::Result<()> {
    let mut stream = tokio::io::BufReader::new(stream);
    let mut line = Vec::new();
    let read = tokio::time::timeout(
        REQUEST_DEADLINE,
        (&mut stream)
            .take(MAX_REQUEST as u64)
            .read_until(b'\n', &mut line),
    )
    .await;
    let request = match read {
        Ok(Ok(_)) => serde_json::from_slice::<OpsRequest>(&line),
        _ => return Ok(()),
    };
    let mut stream = stream.into_inner();
    match request {
        Err(e) => {
            send_line(
                &mut stream,
                &OpsAnswer::refused(format!("bad request: {e}")),
            )
            .await
        }
        Ok(OpsRequest::AdminCode { user }) => {
            let answer = match UserId::parse(&user) {
                Err(e) => OpsAnswer::refused(e.to_string()),
                Ok(user) => match ctx.service.break_glass_admin_code(&user).await {
                    Ok(code) => OpsAnswer {
                        ok: true,
                        admin_code: Some(code),
                        ..OpsAnswer::default()
                    },
                    Err(refusal) => {
                        if let Some(detail) = &refusal.detail {
                            tracing::error!(%detail, "break-glass admin code failed");
                        }
                        OpsAnswer::refused(refusal.message())
                    }
                },
            };
            send_line(&mut stream, &answer).await
        }
        Ok(OpsRequest::Backup) => {
            let _one = backups.lock().await;
            let tmp = dir.join(format!("backup-{}.snapshot.tmp", next_tmp()));
            let result = snapshot_to(ctx, tmp.clone()).await;
            let outcome = match result {
                Err(e) => send_line(&mut stream, &OpsAnswer::refused(e)).await,
                Ok(mut answer) => {
                    answer.files_dir = ctx.service.blob_dir().map(|d| d.root().to_path_buf());
                    send_line(&mut stream, &answer).await?;
                    let mut file = tokio::fs::File::open(&tmp).await?;
                    tokio::io::copy(&mut file, &mut stream).await?;
                    stream.shutdown().await
                }
            };
            let _ = tokio::fs::remove_file(&tmp).await;
            outcome
        }
    }
}

/// Takes a snapshot of the store into `path`.
async fn snapshot_to(ctx: &ServerCtx, path: PathBuf) -> Result<OpsAnswer, String> {
    let store = ctx.service.db().store().clone();
    tokio::task::spawn_blocking(move || {
        let file =
            create_private(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        let started = Instant::now();
        let info = store.snapshot(&mut out).map_err(|e| e.to_string())?;
        let paused = started.elapsed();
        out.flush()
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let bytes = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
        tracing::info!(
            records = info.records,
            bytes,
            paused_ms = paused.as_millis() as u64,
            "backup snapshot taken"
        );
        Ok(OpsAnswer {
            ok: true,
            records: info.records,
            next_id: info.next_id,
            bytes,
            paused_ms: u64::try_from(paused.as_millis()).unwrap_or(u64::MAX),
            ..OpsAnswer::default()
        })
    })
    .await
    .map_err(|e| format!("snapshot task: {e}"))?
}

async fn send_line(stream: &mut UnixStream, answer: &OpsAnswer) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

/// Removes the snapshot files of backups a previous run did not finish (it crashed or was
/// killed mid-backup); only this process writes them, and it has just started.
fn remove_stale_snapshots(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("backup-") && name.ends_with(".snapshot.tmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = %name, "removed an unfinished backup snapshot"),
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "cannot remove an unfinished backup snapshot")
                }
            }
        }
    }
}

fn next_tmp() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// The client side: sends `request` to the server running in `data_dir`. `Ok(None)`: no
/// server listens there (no socket, or a stale one).
pub(crate) fn request(
    data_dir: &Path,
    request: &OpsRequest,
) -> Result<Option<(OpsAnswer, BufReader<std::os::unix::net::UnixStream>)>, ServerError> {
    let path = data_dir.join(SOCKET);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(ServerError::io(
                format!("cannot connect to {}", path.display()),
                e,
            ))
        }
    };
    let io = |e| {
        ServerError::io(
            format!("talking to the server through {}", path.display()),
            e,
        )
    };
    let mut line = serde_json::to_vec(request).map_err(|e| ServerError::Invalid(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut answer = Vec::new();
    reader.read_until(b'\n', &mut answer).map_err(io)?;
    let answer: OpsAnswer = serde_json::from_slice(&answer).map_err(|e| {
        ServerError::Invalid(format!(
            "the server's answer on {} is not understood: {e}",
            path.display()
        ))
    })?;
    Ok(Some((answer, reader)))
}
