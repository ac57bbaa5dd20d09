//! A minimal HTTP/1.1 listener for `/metrics`, `/healthz` and `/readyz`.
//!
//! Three fixed GET routes, one request per connection, no keep-alive, a bounded request
//! head and a deadline: that is all Prometheus and a load balancer's health check need, so
//! a web framework (and its dependency tree) would only add attack surface to a listener
//! that needs no login.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::{self, ConnectionLabels, Gauges};
use crate::store::Batch;
use crate::transport::ServerCtx;

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// A client gets this long to send its request and read the answer.
const DEADLINE: Duration = Duration::from_secs(10);
/// `/readyz` fails if a durable write takes longer.
const READY_WRITE: Duration = Duration::from_secs(5);
/// Where `/readyz` writes (outside every record prefix, never backed up).
const READY_KEY: &[u8] = b"\x00store/ready";

pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<ServerCtx>,
    data_dir: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    let gauges = Gauges::default();
    let service = &ctx.service;
    let registry = Arc::new(metrics::registry(
        service.metrics(),
        service.flush_metrics(),
        &gauges,
        &ctx.counters,
    ));
    let db_dir = Arc::new(data_dir.join("db"));
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (ctx, registry, gauges, db_dir) = (
            ctx.clone(),
            registry.clone(),
            gauges.clone(),
            db_dir.clone(),
        );
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(DEADLINE, answer(stream, &ctx, &registry, &gauges, &db_dir))
                    .await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    ctx: &ServerCtx,
    registry: &prometheus_client::registry::Registry,
    gauges: &Gauges,
    db_dir: &Path,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return reply(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                "bad request\n",
            )
            .await;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if method != b"GET" {
        return reply(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        )
        .await;
    }
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    match path {
        b"/metrics" => {
            update(ctx, gauges, db_dir).await;
            let body = metrics::encode(registry);
            reply(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
            .await
        }
        b"/healthz" => reply(&mut stream, "200 OK", "text/plain", "ok\n").await,
        b"/readyz" => match ready(ctx).await {
            Ok(()) => reply(&mut stream, "200 OK", "text/plain", "ready\n").await,
            Err(reason) => {
                tracing::warn!(%reason, "readiness check failed");
                reply(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    &format!("not ready: {reason}\n"),
                )
                .await
            }
        },
        _ => reply(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
    }
}

/// Reads the gauges' current values.
async fn update(ctx: &ServerCtx, gauges: &Gauges, db_dir: &Path) {
    let authenticated = ctx.service.live().connections();
    let all = ctx.connection_count();
    let set = |state, n: usize| {
        gauges
            .connections
            .get_or_create(&ConnectionLabels { state })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    };
    set("authenticated", authenticated);
    set("unauthenticated", all.saturating_sub(authenticated));
    gauges
        .users_online
        .set(i64::try_from(ctx.service.live().users_online()).unwrap_or(i64::MAX));
    gauges.background_leader.set(i64::from(ctx.leader.leads()));
    gauges
        .removals_pending
        .set(i64::try_from(ctx.service.pending_removals()).unwrap_or(i64::MAX));
    let dir = db_dir.to_path_buf();
    let store = ctx.service.db().store().clone();
    let bytes = tokio::task::spawn_blocking(move || match store.size_bytes() {
        Some(bytes) => bytes,
        None => dir_size(&dir),
    })
    .await
    .unwrap_or(0);
    gauges
        .store_bytes
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    let blobs = ctx.service.blob_dir().cloned();
    let files = tokio::task::spawn_blocking(move || blobs.map_or(0, |b| b.size_bytes()))
        .await
        .unwrap_or(0);
    gauges
        .files_bytes
        .set(i64::try_from(files).unwrap_or(i64::MAX));
}

/// The store is ready when a write becomes durable in time.
async fn ready(ctx: &ServerCtx) -> Result<(), String> {
    let store = ctx.service.db().store().clone();
    let check = async {
        let mut batch = Batch::default();
        batch.put(
            READY_KEY.to_vec(),
            crate::clock::Clock::now_ms(&crate::clock::SystemClock)
                .to_be_bytes()
                .to_vec(),
        );
        let ticket = store.enqueue(batch).map_err(|e| e.to_string())?;
        store
            .wait_applied(ticket)
            .await
            .map_err(|e| e.to_string())?;
        store.flush().await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(READY_WRITE, check).await {
        Ok(result) => result,
        Err(_) => Err(format!("a durable write took over {READY_WRITE:?}")),
    }
}

async fn reply(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\ncache-control: no-store\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Bytes of the files under `dir` (0 where it cannot be read).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
