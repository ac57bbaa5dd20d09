//! The operator's side doors of a running server:
//!
//! - an HTTP listener (off unless configured; meant for loopback) with `/metrics` in the
//!   Prometheus text format, `/healthz` (the process answers) and `/readyz` (the store
//!   accepts a durable write), see [`http`];
//! - a Unix socket `DIR/ops.sock` (mode 0600, in the 0700 data directory, so only the
//!   server's own user and root reach it) through which `rathaus-server backup` and
//!   `admin-code` reach a server that holds the database lock, see [`socket`].

pub(crate) mod http;
pub(crate) mod socket;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::ServerError;
use crate::transport::ServerCtx;

/// The listeners started next to the QUIC endpoint.
#[derive(Debug)]
pub(crate) struct Operations {
    /// Where `/metrics` is served, if it is.
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// The listener tasks; they end when the server's stop signal turns true.
    tasks: Vec<JoinHandle<()>>,
}

impl Operations {
    /// Binds the metrics listener (if asked for) and the operations socket.
    pub(crate) async fn start(
        ctx: Arc<ServerCtx>,
        data_dir: PathBuf,
        metrics_listen: Option<SocketAddr>,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, ServerError> {
        let mut tasks = Vec::new();
        let mut metrics_addr = None;
        if let Some(addr) = metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ServerError::io(format!("cannot listen for metrics on {addr}"), e))?;
            let bound = listener
                .local_addr()
                .map_err(|e| ServerError::io("cannot read the metrics address", e))?;
            if !bound.ip().is_loopback() {
                tracing::warn!(addr = %bound, "the metrics listener is not on loopback; it needs no login, so firewall it");
            }
            metrics_addr = Some(bound);
            tasks.push(tokio::spawn(http::serve(
                listener,
                ctx.clone(),
                data_dir.clone(),
                stop.clone(),
            )));
        }
        // Without the socket the server still serves; only online backups and admin codes
        // wait for it to stop (e.g. a data directory whose path is too long for a socket).
        match socket::bind(&data_dir) {
            Ok(listener) => tasks.push(tokio::spawn(socket::serve(listener, ctx, data_dir, stop))),
            Err(e) => tracing::warn!(
                error = %e,
                "no operations socket: `backup` and `admin-code` need the server stopped"
            ),
        }
        Ok(Self {
            metrics_addr,
            tasks,
        })
    }

    /// Waits for the listeners to end (after the stop signal).
    pub(crate) async fn stopped(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
