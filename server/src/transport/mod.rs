//! QUIC transport: the endpoint, the accept loop with its connection limit, graceful
//! shutdown, and the per-connection and per-stream tasks. This layer moves frames; the
//! rules live in [`crate::service`].

mod admission;
mod connection;
mod frame_io;
mod housekeeping;
mod stream;

pub use admission::{ConnectionLimits, DefenceStats};
pub(crate) use stream::request_kind;
mod subscribe;
pub mod tls;
pub mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rathaus_protocol::UserId;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::clock::{Clock, SystemClock};
use crate::data_dir::DataDir;
use crate::error::ServerError;
use crate::service::{RetentionRun, Service, ThrottleStats};
use crate::store::{Db, Leadership};
use tls::TlsIdentity;

/// How `start` runs the server.
#[derive(Clone)]
pub struct RunOptions {
    /// The data directory made by `init`.
    pub data_dir: PathBuf,
    /// Listen address; default: the one in `config.json`.
    pub listen: Option<SocketAddr>,
    /// Certificate (PEM or DER) to use instead of `DIR/cert.der`; needs `key`.
    pub cert: Option<PathBuf>,
    /// Private key (PEM or DER) for `cert`.
    pub key: Option<PathBuf>,
    /// Connections beyond this many are refused.
    pub max_connections: usize,
    /// What strangers (connections that have not authenticated) may do, and the byte
    /// budget of all requests in flight.
    pub limits: ConnectionLimits,
    /// Time source for the rules.
    pub clock: Arc<dyn Clock>,
    /// HTTP listener for `/metrics`, `/healthz`, `/readyz`; `None`: none.
    pub metrics_listen: Option<SocketAddr>,
    /// UDP receive and send buffer sizes asked of the kernel.
    pub udp_buffers: udp::SocketBuffers,
    /// Largest file accepted (`[limits] max_upload_bytes`, default 100 MiB); posts
    /// whose body encodes larger are refused too (and never above the protocol's
    /// `MAX_POST_PAYLOAD`).
    pub max_upload_bytes: usize,
    /// Retention of public groups and announcements without a policy, in days; 0: forever.
    pub default_retention_days: u32,
    /// The records' store, overriding `config.json`: `"sled"` (the database in the data
    /// directory) or `postgres://…`; `None`: as `init` wrote it.
    pub store: Option<String>,
    /// The blob directory (`[files] dir`, `--files-dir`): stored files and partial
    /// uploads. The nodes of one cluster share it (an NFS or CephFS mount), so that a
    /// file uploaded through one node downloads through any. `None`: `DIR/blobs`.
    pub files_dir: Option<PathBuf>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("max_connections", &self.max_connections)
            .field("limits", &self.limits)
            .field("metrics_listen", &self.metrics_listen)
            .field("udp_buffers", &self.udp_buffers)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("default_retention_days", &self.default_retention_days)
            .field("store", &self.store.as_ref().map(|_| "…"))
            .field("files_dir", &self.files_dir)
            .finish_non_exhaustive()
    }
}

impl RunOptions {
    /// Defaults: listen address from `config.json`, the certificate from `init`, 20,000
    /// connections, the default [`ConnectionLimits`], the system clock.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: None,
            cert: None,
            key: None,
            max_connections: 20_000,
            limits: ConnectionLimits::default(),
            clock: Arc::new(SystemClock),
            metrics_listen: None,
            udp_buffers: udp::SocketBuffers {
                recv: udp::SERVER_SOCKET_BUFFER,
                send: udp::SERVER_SOCKET_BUFFER,
            },
            max_upload_bytes: crate::service::blobs::DEFAULT_MAX_UPLOAD as usize,
            default_retention_days: 0,
            store: None,
            files_dir: None,
        }
    }
}

/// A server that is listening.
#[derive(Debug)]
pub struct RunningServer {
    /// The bound address.
    local_addr: SocketAddr,
    /// The certificate fingerprint clients pin.
    fingerprint: String,
    /// The QUIC endpoint.
    endpoint: quinn::Endpoint,
    /// Shared state of all connections.
    ctx: Arc<ServerCtx>,
    /// Tells the accept loop to stop.
    stop: watch::Sender<bool>,
    /// The accept loop (owns the connection tasks).
    accept: tokio::task::JoinHandle<()>,
    /// Retention at start and hourly; holds the service, so shutdown waits for it.
    housekeeping: tokio::task::JoinHandle<()>,
    /// The task that drives pending secret-group removals.
    removals: tokio::task::JoinHandle<()>,
    /// The metrics listener and the operations socket.
    operations: crate::ops::Operations,
}

/// State shared by the accept loop and every connection.
#[derive(Debug)]
pub(crate) struct ServerCtx {
    /// The rules.
    pub(crate) service: Arc<Service>,
    /// The connection limit.
    max_connections: usize,
    /// Connections being handshaken or served.
    connections: AtomicUsize,
    /// Open `Subscribe` streams (shutdown waits for them to hear `ShuttingDown`).
    pub(crate) subscribers: AtomicUsize,
    /// Unauthenticated connections per source network, and the limits on them.
    pub(crate) admission: Arc<admission::Admission>,
    /// The bytes of all requests in flight on authenticated connections.
    pub(crate) budget: Arc<frame_io::ByteBudget>,
    /// The bytes of all requests in flight on connections not authenticated yet.
    pub(crate) prelogin_budget: Arc<frame_io::ByteBudget>,
    /// Each colleague's share, while one of their requests is read or handled.
    pub(crate) user_budgets: UserBudgets,
    /// What the defences refused.
    pub(crate) counters: admission::Counters,
    /// Whether this node runs the background loops (one node of a shared database at a
    /// time).
    pub(crate) leader: Leadership,
}

/// Each colleague's share of the request budget, one for all of their connections and
/// devices, held by the streams reading or handling their requests.
#[derive(Debug)]
pub(crate) struct UserBudgets {
    /// The share's size.
    bytes: usize,
    /// Per user, while one of their streams holds it.
    shares: std::sync::Mutex<HashMap<UserId, Weak<frame_io::ByteBudget>>>,
}

impl UserBudgets {
    fn new(bytes: usize) -> Self {
        Self {
            bytes,
            shares: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// `user`'s share, for a connection of theirs to hold.
    pub(crate) fn of(&self, user: &UserId) -> Arc<frame_io::ByteBudget> {
        let mut shares = self
            .shares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(share) = shares.get(user).and_then(Weak::upgrade) {
            return share;
        }
        // Shares nobody reads with any more go every 1,024 new ones: the map holds the
        // users reading now, and at most 1,024 more.
        if shares.len() >= 1024 && shares.len().is_multiple_of(1024) {
            shares.retain(|_, s| s.strong_count() > 0);
        }
        let share = Arc::new(frame_io::ByteBudget::new(self.bytes, "one colleague"));
        shares.insert(user.clone(), Arc::downgrade(&share));
        share
    }
}

impl ServerCtx {
    /// Connections being handshaken or served.
    pub(crate) fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Opens the data directory, binds the endpoint and starts serving. Returns once listening.
pub async fn start(opts: RunOptions) -> Result<RunningServer, ServerError> {
    let dir = DataDir::new(&opts.data_dir);
    let config = dir.read_config()?;
    let listen = match opts.listen {
        Some(a) => a,
        None => config.listen.parse().map_err(|e| ServerError::Config {
            path: dir.config(),
            reason: format!("listen address {:?}: {e}", config.listen),
        })?,
    };
    let identity = match (&opts.cert, &opts.key) {
        (Some(cert), Some(key)) => TlsIdentity::load(cert, key)?,
        (None, None) => TlsIdentity::load(&dir.cert(), &dir.key())?,
        _ => {
            return Err(ServerError::Invalid(
                "--cert and --key must be given together".into(),
            ))
        }
    };
    let server_config = identity.server_config()?;
    let store = dir.open_records(&config, opts.store.as_deref())?;
    let removal_key = dir.removal_key()?;
    let db = Db::new(store);
    let service = Service::new(db.clone(), opts.clock.clone(), removal_key)?;
    let index = crate::search::SearchIndex::open(&dir.search(), db)
        .map_err(|e| ServerError::Search(e.to_string()))?;
    service.set_search_index(Arc::new(index));
    service.set_max_post_bytes(opts.max_upload_bytes);
    service.set_max_upload_bytes(opts.max_upload_bytes as u64);
    let files_dir = opts.files_dir.clone().unwrap_or_else(|| dir.blobs());
    let blobs = crate::service::blobs::BlobDir::open(&files_dir)
        .map_err(|e| ServerError::io(format!("cannot open {}", files_dir.display()), e))?;
    service.set_blob_dir(blobs);
    // Nothing is in flight on this node yet: files no record names (a crash between a
    // record's removal and its file's) can go, unless they are fresh (another node of the
    // cluster may be storing them right now, see `clean_blobs`).
    service.clean_blobs(true).await?;
    service.set_default_retention_days(opts.default_retention_days);
    let leader = service.db().store().leadership();
    let socket = udp::bind_server(listen, opts.udp_buffers)
        .map_err(|e| ServerError::io(format!("cannot listen on {listen}"), e))?;
    let endpoint = quinn::Endpoint::new(
        udp::endpoint_config(&dir.reset_key()?),
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| ServerError::io(format!("cannot listen on {listen}"), e))?;
    let local_addr = endpoint
        .local_addr()
        .map_err(|e| ServerError::io("cannot read the bound address", e))?;
    let ctx = Arc::new(ServerCtx {
        service: Arc::new(service),
        max_connections: opts.max_connections,
        connections: AtomicUsize::new(0),
        subscribers: AtomicUsize::new(0),
        admission: Arc::new(admission::Admission::new(opts.limits)),
        budget: Arc::new(frame_io::ByteBudget::new(
            opts.limits.request_bytes,
            "everyone",
        )),
        prelogin_budget: Arc::new(frame_io::ByteBudget::new(
            opts.limits
                .prelogin_request_bytes
                .min(opts.limits.request_bytes),
            "strangers",
        )),
        user_budgets: UserBudgets::new(opts.limits.user_request_bytes),
        counters: admission::Counters::default(),
        leader,
    });
    let (stop, stop_rx) = watch::channel(false);
    let housekeeping = tokio::spawn(housekeeping::retention_loop(
        ctx.service.clone(),
        ctx.leader.clone(),
        stop_rx.clone(),
    ));
    let removals = tokio::spawn(
        ctx.service
            .clone()
            .run_removals(ctx.leader.clone(), stop_rx.clone()),
    );
    // Several nodes on one database: their posts reach this node's subscribers too, and
    // the sessions they end, end here.
    if let Some(notices) = ctx.service.db().store().other_nodes_notices() {
        tokio::spawn(
            ctx.service
                .clone()
                .follow_other_nodes(notices, stop_rx.clone()),
        );
    }
    let operations = crate::ops::Operations::start(
        ctx.clone(),
        opts.data_dir.clone(),
        opts.metrics_listen,
        stop_rx.clone(),
    )
    .await?;
    let accept = tokio::spawn(accept_loop(endpoint.clone(), ctx.clone(), stop_rx));
    tracing::info!(addr = %local_addr, data = %dir.root().display(), "server started");
    Ok(RunningServer {
        local_addr,
        fingerprint: identity.fingerprint(),
        endpoint,
        ctx,
        stop,
        accept,
        housekeeping,
        removals,
        operations,
    })
}

/// Time granted to subscribers to receive `ShuttingDown`, and to connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl RunningServer {
    /// The address the endpoint is bound to (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The certificate fingerprint, `SHA256:<hex>`.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// What the defences against hostile clients have refused since start.
    pub fn defence_stats(&self) -> DefenceStats {
        let c = &self.ctx.counters;
        let get = |a: &prometheus_client::metrics::counter::Counter| a.get();
        DefenceStats {
            refused_frames: get(&c.refused_frames),
            over_budget: self.ctx.budget.refused() + self.ctx.prelogin_budget.refused(),
            auth_timeouts: get(&c.auth_timeouts),
            per_addr_refusals: get(&c.per_addr_refusals),
            retries: get(&c.retries),
            failed_proof_closes: get(&c.failed_proof_closes),
            unauthenticated_now: self.ctx.admission.unauthenticated(),
            request_bytes_now: self.ctx.budget.in_use() + self.ctx.prelogin_budget.in_use(),
            prelogin_request_bytes_now: self.ctx.prelogin_budget.in_use(),
        }
    }

    /// What the credential throttle has done since start.
    pub fn throttle_stats(&self) -> ThrottleStats {
        self.ctx.service.throttle_stats()
    }

    /// The organisation name from the store.
    pub fn org(&self) -> &str {
        self.ctx.service.org()
    }

    /// Which kind of store holds the records: `"sled"` or `"postgres"`.
    pub fn store_kind(&self) -> &'static str {
        if self.ctx.service.db().store().shared() {
            "postgres"
        } else {
            "sled"
        }
    }

    /// Whether this node runs the background loops now (always on sled; on PostgreSQL,
    /// one node of the database at a time).
    pub fn leads_background(&self) -> bool {
        self.ctx.leader.leads()
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.operations.metrics_addr
    }

    /// Enforces the retention policies now, by the server's clock (the server also does
    /// so at start, hourly and when a policy is set). Returns what was deleted.
    pub async fn enforce_retention(&self) -> Result<Vec<RetentionRun>, ServerError> {
        Ok(self.ctx.service.enforce_retention().await?)
    }

    /// Stops gracefully: stop accepting, tell subscribers `ShuttingDown`, close every
    /// connection, flush the database. When this returns the database is closed.
    pub async fn shutdown(self) {
        let Self {
            local_addr,
            endpoint,
            ctx,
            stop,
            accept,
            housekeeping,
            removals,
            operations,
            ..
        } = self;
        let _ = stop.send(true);
        let _ = removals.await;
        ctx.service.announce_shutdown();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while ctx.subscribers.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        endpoint.close(
            quinn::VarInt::from_u32(rathaus_protocol::close::SHUTTING_DOWN),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, endpoint.wait_idle()).await;
        let _ = accept.await;
        let _ = housekeeping.await;
        operations.stopped().await;
        ctx.service.live().clear();
        if let Err(e) = ctx.service.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        // Commits what the index still has queued and marks it closed cleanly, so the
        // next start does not rebuild it.
        let service = ctx.service.clone();
        let _ = tokio::task::spawn_blocking(move || service.close_search()).await;
        // Dropping the last handles closes the database (releasing its lock) and lets the
        // endpoint driver release the UDP socket, so a restart can bind the same port.
        drop(endpoint);
        drop(ctx);
        wait_until_port_is_free(local_addr).await;
        tracing::info!("server stopped");
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn wait(self) {
        wait_for_signal().await;
        tracing::info!("signal received, shutting down");
        self.shutdown().await;
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: Arc<ServerCtx>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if let Some(incoming) = admit(&ctx, incoming) {
                    let (incoming, slot) = incoming;
                    ctx.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(connection::serve(Box::new(incoming), slot, ctx.clone()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // The endpoint is being closed; give connections a moment to wind down, then cut.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
}

/// Decides about an incoming connection before any state is kept for it: refused over
/// the connection limit, asked to Retry when many strangers are connected and its address
/// is not validated yet, refused when its network holds too many strangers already.
fn admit(
    ctx: &Arc<ServerCtx>,
    incoming: quinn::Incoming,
) -> Option<(quinn::Incoming, admission::StrangerSlot)> {
    let peer = incoming.remote_address();
    if ctx.connections.load(Ordering::SeqCst) >= ctx.max_connections {
        tracing::warn!(%peer, "connection limit reached, refusing");
        incoming.refuse();
        return None;
    }
    if ctx.admission.under_load() && !incoming.remote_address_validated() && incoming.may_retry() {
        let n = admission::count(&ctx.counters.retries);
        if admission::worth_logging(n) {
            tracing::warn!(
                %peer,
                retries = n,
                unauthenticated = ctx.admission.unauthenticated(),
                "many unauthenticated connections; asking new clients to retry (QUIC Retry)"
            );
        }
        if let Err(e) = incoming.retry() {
            e.into_incoming().refuse();
        }
        return None;
    }
    match ctx.admission.enter(peer.ip()) {
        Some(slot) => Some((incoming, slot)),
        None => {
            let n = admission::count(&ctx.counters.per_addr_refusals);
            if admission::worth_logging(n) {
                tracing::warn!(
                    %peer,
                    limit = ctx.admission.limits.unauthenticated_per_addr,
                    refused = n,
                    "too many unauthenticated connections from this network, refusing"
                );
            }
            incoming.refuse();
            None
        }
    }
}

/// Waits (briefly) until the endpoint driver has closed the socket bound to `addr`.
async fn wait_until_port_is_free(addr: SocketAddr) {
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while Instant::now() < deadline {
        if std::net::UdpSocket::bind(addr).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::warn!(%addr, "the UDP socket is still bound after shutdown");
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests;
