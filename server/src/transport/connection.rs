//! One task per connection: handshake, then one task per bidirectional stream.
//!
//! Until it authenticates, a connection holds a [`StrangerSlot`] of its network and must
//! authenticate before [`ConnectionLimits::auth_deadline`](super::ConnectionLimits)
//! passes; then its stream and window limits rise to those of a colleague: first
//! [`IDLE_STREAMS`] streams, [`STREAMS_PER_CONNECTION`] once it has [`BUSY_STREAMS`]
//! open at once.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rathaus_protocol::close::{
    ACCOUNT_REMOVED as CLOSE_ACCOUNT_REMOVED, AUTH_TIMEOUT as CLOSE_AUTH_TIMEOUT,
    FAILED_PROOFS as CLOSE_FAILED_PROOFS,
};
use tokio::task::JoinSet;

use super::admission::{
    self, StrangerSlot, BUSY_STREAMS, IDLE_STREAMS, RECEIVE_WINDOW, STREAMS_PER_CONNECTION,
};
use super::{stream, ServerCtx};
use crate::service::{LiveConnection, Session, SessionCache};

/// Failed device-key proofs one connection may make before it is closed.
const MAX_FAILED_PROOFS: u32 = 3;

/// What the stream tasks of one connection share.
pub(crate) struct ConnectionCtx {
    /// The QUIC connection.
    pub(crate) conn: quinn::Connection,
    /// The peer's address (for throttling and logs).
    pub(crate) peer: SocketAddr,
    /// Set once the connection authenticated; then valid for all its streams.
    session: Mutex<Option<Session>>,
    /// The network's place for this stranger; given back when it authenticates.
    stranger: Mutex<Option<StrangerSlot>>,
    /// Device-key proofs that failed on this connection.
    failed_proofs: AtomicU32,
    /// The session's user record between requests.
    pub(crate) user_cache: SessionCache,
    /// The server.
    pub(crate) server: Arc<ServerCtx>,
}

impl ConnectionCtx {
    /// The peer's IP, IPv4-mapped IPv6 folded to IPv4 so throttling sees one address.
    pub(crate) fn peer_ip(&self) -> IpAddr {
        self.peer.ip().to_canonical()
    }

    /// The authenticated identity, if any.
    pub(crate) fn session(&self) -> Option<Session> {
        self.session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The user's share of the request budget, if the connection has authenticated.
    /// Taken per stream, not kept: an idle connection holds none.
    pub(crate) fn user_share(&self) -> Option<Arc<super::frame_io::ByteBudget>> {
        self.session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| self.server.user_budgets.of(&s.user))
    }

    /// Whether the connection has authenticated.
    pub(crate) fn is_authenticated(&self) -> bool {
        self.session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Counts a failed device proof.
    pub(crate) fn proof_failed(&self) {
        self.failed_proofs.fetch_add(1, Ordering::SeqCst);
    }

    /// Closes the connection if it has failed too many device proofs (called once the
    /// answer to the last one is delivered).
    pub(crate) fn close_if_failing_proofs(&self) {
        let n = self.failed_proofs.load(Ordering::SeqCst);
        if n < MAX_FAILED_PROOFS {
            return;
        }
        let total = admission::count(&self.server.counters.failed_proof_closes);
        if admission::worth_logging(total) {
            tracing::warn!(peer = %self.peer, closed = total, "closing a connection after {n} failed device proofs");
        }
        self.conn.close(
            quinn::VarInt::from_u32(CLOSE_FAILED_PROOFS),
            b"too many failed device proofs",
        );
    }

    /// Marks the connection authenticated and registers it as live for the user; it is
    /// no longer a stranger, so its limits rise (its streams to [`IDLE_STREAMS`] until it
    /// gets busy).
    pub(crate) fn authenticate(&self, session: Session) {
        self.conn
            .set_max_concurrent_bi_streams(quinn::VarInt::from_u32(IDLE_STREAMS));
        self.conn
            .set_receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW));
        drop(
            self.stranger
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let id = self.id();
        let live: Arc<dyn LiveConnection> = Arc::new(Live(self.conn.clone()));
        self.server
            .service
            .live()
            .register(&session.user, session.device, id, live);
        *self.session.lock().unwrap_or_else(PoisonError::into_inner) = Some(session);
    }

    fn id(&self) -> u64 {
        self.conn.stable_id() as u64
    }
}

/// The registry's handle on a connection.
struct Live(quinn::Connection);

impl LiveConnection for Live {
    fn end_account_removed(&self) {
        self.0.close(
            quinn::VarInt::from_u32(CLOSE_ACCOUNT_REMOVED),
            b"account removed",
        );
    }
}

/// Decrements the live connection count when the connection task ends, however it ends.
struct Slot(Arc<ServerCtx>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one incoming connection until it closes.
///
/// The task keeps its future, sized for the largest state it may reach, for the whole life
/// of the connection, which is mostly idle: so the handshake (the `Incoming`, its timeout)
/// and the authentication deadline live on the heap only while they are needed, and what
/// stays is the accept loop's few hundred bytes.
pub(crate) async fn serve(
    incoming: Box<quinn::Incoming>,
    slot: StrangerSlot,
    server: Arc<ServerCtx>,
) {
    let _slot = Slot(server.clone());
    let peer = incoming.remote_address();
    let deadline = tokio::time::Instant::now() + server.admission.limits.auth_deadline;
    let Some(conn) = Box::pin(handshake(incoming, deadline, &server)).await else {
        return;
    };
    tracing::debug!(%peer, "connection open");
    let ctx = Arc::new(ConnectionCtx {
        conn: conn.clone(),
        peer,
        session: Mutex::new(None),
        stranger: Mutex::new(Some(slot)),
        failed_proofs: AtomicU32::new(0),
        user_cache: SessionCache::default(),
        server,
    });
    let mut streams = JoinSet::new();
    let mut auth_deadline = Some(Box::pin(tokio::time::sleep_until(deadline)));
    let mut busy = false;
    let reason = loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(stream::serve(ctx.clone(), send, recv));
                    if !busy && streams.len() >= BUSY_STREAMS && ctx.is_authenticated() {
                        busy = true;
                        conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(
                            STREAMS_PER_CONNECTION,
                        ));
                    }
                }
                Err(e) => break e,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            () = fired(&mut auth_deadline), if auth_deadline.is_some() => {
                auth_deadline = None;
                if !ctx.is_authenticated() {
                    auth_timeout(&ctx.server, peer);
                    conn.close(
                        quinn::VarInt::from_u32(CLOSE_AUTH_TIMEOUT),
                        b"not authenticated in time",
                    );
                }
            }
        }
    };
    if let Some(session) = ctx.session() {
        ctx.server
            .service
            .live()
            .unregister(&session.user, ctx.id());
        tracing::debug!(%peer, user = %session.user, reason = %reason, "connection closed");
    } else {
        tracing::debug!(%peer, reason = %reason, "connection closed");
    }
    streams.shutdown().await;
}

/// The QUIC handshake of `incoming`, if it completes before `deadline`.
async fn handshake(
    incoming: Box<quinn::Incoming>,
    deadline: tokio::time::Instant,
    server: &ServerCtx,
) -> Option<quinn::Connection> {
    let peer = incoming.remote_address();
    match incoming.accept() {
        Ok(connecting) => match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "handshake failed");
                None
            }
            Err(_) => {
                auth_timeout(server, peer);
                None
            }
        },
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot accept connection");
            None
        }
    }
}

/// Completes when the deadline in `sleep` passes; never while there is none.
async fn fired(sleep: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match sleep {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

fn auth_timeout(server: &ServerCtx, peer: SocketAddr) {
    let n = admission::count(&server.counters.auth_timeouts);
    if admission::worth_logging(n) {
        tracing::warn!(
            %peer,
            deadline_s = server.admission.limits.auth_deadline.as_secs(),
            timeouts = n,
            "closing a connection that did not authenticate in time"
        );
    }
}
