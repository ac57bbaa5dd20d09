//! One task per connection: handshake, then one task per bidirectional stream.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinSet;

use super::{stream, ServerCtx};
use crate::service::{LiveConnection, Session};

/// QUIC application close code sent to an offboarded user's connections.
const CLOSE_ACCOUNT_REMOVED: u32 = 0x10;

/// What the stream tasks of one connection share.
pub(crate) struct ConnectionCtx {
    /// The QUIC connection.
    pub(crate) conn: quinn::Connection,
    /// The peer's address (for throttling and logs).
    pub(crate) peer: SocketAddr,
    /// Set once the connection authenticated; then valid for all its streams.
    session: Mutex<Option<Session>>,
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

    /// Marks the connection authenticated and registers it as live for the user.
    pub(crate) fn authenticate(&self, session: Session) {
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
pub(crate) async fn serve(incoming: quinn::Incoming, server: Arc<ServerCtx>) {
    let _slot = Slot(server.clone());
    let peer = incoming.remote_address();
    let conn = match incoming.accept() {
        Ok(connecting) => match connecting.await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "handshake failed");
                return;
            }
        },
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot accept connection");
            return;
        }
    };
    tracing::debug!(%peer, "connection open");
    let ctx = Arc::new(ConnectionCtx {
        conn: conn.clone(),
        peer,
        session: Mutex::new(None),
        server,
    });
    let mut streams = JoinSet::new();
    let reason = loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(stream::serve(ctx.clone(), send, recv));
                }
                Err(e) => break e,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
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
