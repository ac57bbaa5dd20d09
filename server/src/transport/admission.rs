//! What a connection may do before it has authenticated, and the counters an operator
//! reads when someone tries to abuse that.
//!
//! Before `Authenticated` a connection is a stranger's: it may open only
//! [`PRE_AUTH_STREAMS`] streams, send frames of at most [`PRE_AUTH_FRAME`] bytes carrying
//! `Ping`, `Enroll`, `AddDevice`, `Hello` or `Prove`, and must authenticate within
//! [`ConnectionLimits::auth_deadline`]. Each source network (an IPv4 address, an IPv6 /64)
//! may hold at most [`ConnectionLimits::unauthenticated_per_addr`] such connections at a
//! time; beyond [`ConnectionLimits::retry_above`] unauthenticated connections server-wide,
//! a client must first prove with a QUIC Retry that it receives at its source address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rathaus_protocol::Request;

use crate::service::throttle::network_of;

/// Streams a connection may have open before it has authenticated.
pub(crate) const PRE_AUTH_STREAMS: u32 = 4;

/// Largest frame body accepted before authentication: `Enroll` with the longest password
/// and device name fits several times over.
pub(crate) const PRE_AUTH_FRAME: usize = 8 * 1024;

/// Bytes a connection may have in flight (sent, not yet read by the server) before it
/// has authenticated: its few small frames.
pub(crate) const PRE_AUTH_RECEIVE_WINDOW: u32 = 64 * 1024;

/// Streams an authenticated connection may have open at once (one request each), once
/// it has shown that it uses them ([`BUSY_STREAMS`] open at once). A device needs a
/// handful: its subscription, a few requests, and a file transfer's chunks in flight (16
/// per direction; a transfer in each direction at once waits for streams to end); the
/// peer gets a new stream for every one that ends. quinn keeps a slot in two hash maps for
/// every stream the peer may open, whether it does or not, so this limit is memory a
/// connection holds: 256 cost about 16 KiB per connection, 32 about 2 KiB.
pub(crate) const STREAMS_PER_CONNECTION: u32 = 32;

/// Streams an authenticated connection may have open at once until it gets busy: what an
/// idle device holds (its subscription and a request or two) with room to spare, at a
/// fraction of [`STREAMS_PER_CONNECTION`]'s memory. Seven, not eight: quinn's two maps
/// hold a slot per stream the peer may open, and a hash map of eight buckets holds seven
/// entries; at eight, both doubled when the connection authenticated (heaptrack: 676
/// bytes of every idle connection).
pub(crate) const IDLE_STREAMS: u32 = 7;

/// Streams open at once on an authenticated connection that raise its limit from
/// [`IDLE_STREAMS`] to [`STREAMS_PER_CONNECTION`] for the rest of its life (QUIC limits
/// only grow); the peer learns the new limit within a round trip, long before it has
/// used the idle limit up.
pub(crate) const BUSY_STREAMS: usize = IDLE_STREAMS as usize / 2;

/// Bytes an authenticated connection may have in flight across all its streams.
pub(crate) const RECEIVE_WINDOW: u32 = 8 * 1024 * 1024;

/// Bytes one stream may have in flight: one largest control frame and its header.
pub(crate) const STREAM_RECEIVE_WINDOW: u32 =
    rathaus_protocol::limits::MAX_CONTROL_FRAME as u32 + 64 * 1024;

/// The limits on strangers, configurable for tests and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A connection that has not authenticated this long after it arrived is closed.
    pub auth_deadline: Duration,
    /// Unauthenticated connections (including handshakes) one IPv4 address or IPv6 /64
    /// may hold at once. A town hall's NAT puts everyone behind one address, but each
    /// colleague's connection authenticates within milliseconds; 128 leaves room for a
    /// whole building reconnecting after a restart (and for load tools that connect 64 at
    /// a time from one address).
    pub unauthenticated_per_addr: usize,
    /// Beyond this many unauthenticated connections server-wide, new clients must answer
    /// a QUIC Retry (proving their source address) before the server keeps any state.
    pub retry_above: usize,
    /// Bytes of all requests being received or handled at once, server-wide.
    pub request_bytes: usize,
    /// Of those, what connections that have not authenticated may hold, in a budget of
    /// their own: strangers who spend it delay other strangers (logins among them), never
    /// the requests of colleagues who are logged in.
    pub prelogin_request_bytes: usize,
    /// Of those, what one colleague's connections may hold together: a colleague who
    /// spends it waits for their own requests, never for others'.
    pub user_request_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            auth_deadline: Duration::from_secs(15),
            unauthenticated_per_addr: 128,
            retry_above: 256,
            request_bytes: 128 * 1024 * 1024,
            // 2,000 strangers' 8 KiB frames at once.
            prelogin_request_bytes: 16 * 1024 * 1024,
            // Sixteen 1 MiB requests at once.
            user_request_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What the defences have refused so far (all since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DefenceStats {
    /// Frames refused: over their limit, malformed, or not allowed before authentication.
    pub refused_frames: u64,
    /// Reads refused because the server-wide request byte budget was spent.
    pub over_budget: u64,
    /// Connections closed because they did not authenticate in time.
    pub auth_timeouts: u64,
    /// Connections refused because their address held too many unauthenticated ones.
    pub per_addr_refusals: u64,
    /// QUIC Retry packets sent because many connections were unauthenticated.
    pub retries: u64,
    /// Connections closed after repeated failed device proofs.
    pub failed_proof_closes: u64,
    /// Unauthenticated connections right now.
    pub unauthenticated_now: usize,
    /// Request bytes held right now.
    pub request_bytes_now: usize,
    /// Of those, held by connections that had not authenticated.
    pub prelogin_request_bytes_now: usize,
}

/// Counters shared by the transport tasks (exported at `/metrics` too).
pub(crate) use crate::metrics::DefenceMetrics as Counters;

/// Counts one more of `counter` and returns the new total.
pub(crate) fn count(counter: &prometheus_client::metrics::counter::Counter) -> u64 {
    counter.inc() + 1
}

pub(crate) use crate::service::worth_logging;

/// Unauthenticated connections per source network.
#[derive(Debug)]
pub(crate) struct Admission {
    /// The limits in force.
    pub(crate) limits: ConnectionLimits,
    /// Per network: how many connections have not authenticated yet.
    strangers: Mutex<HashMap<IpAddr, usize>>,
    /// Their sum, read on every incoming connection.
    total: AtomicUsize,
}

/// One unauthenticated connection's place in [`Admission`]; given back when the
/// connection authenticates or ends.
#[derive(Debug)]
pub(crate) struct StrangerSlot {
    admission: Arc<Admission>,
    network: IpAddr,
}

impl Drop for StrangerSlot {
    fn drop(&mut self) {
        let mut map = self
            .admission
            .strangers
            .lock()
            // Single map updates; a poisoned lock holds valid counts.
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.network) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.network);
            }
        }
        self.admission.total.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    pub(crate) fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            strangers: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
        }
    }

    /// Unauthenticated connections right now.
    pub(crate) fn unauthenticated(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// Whether new connections should first answer a Retry.
    pub(crate) fn under_load(&self) -> bool {
        self.unauthenticated() >= self.limits.retry_above
    }

    /// A place for one more unauthenticated connection from `ip`, if its network has room.
    pub(crate) fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<StrangerSlot> {
        let network = network_of(ip);
        let mut map = self
            .strangers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(network).or_insert(0);
        if *n >= self.limits.unauthenticated_per_addr {
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        Some(StrangerSlot {
            admission: self.clone(),
            network,
        })
    }
}

/// Whether a stranger may send `request` (everything else needs a session).
pub(crate) fn allowed_before_auth(request: &Request) -> bool {
    matches!(
        request,
        Request::Ping
            | Request::Enroll { .. }
            | Request::AddDevice { .. }
            | Request::Hello { .. }
            | Request::Prove { .. }
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_address_holds_only_so_many_strangers_and_gets_them_back() {
        let admission = Arc::new(Admission::new(ConnectionLimits {
            unauthenticated_per_addr: 2,
            ..ConnectionLimits::default()
        }));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admission.enter(a).unwrap();
        let _second = admission.enter(a).unwrap();
        assert!(admission.enter(a).is_none());
        assert!(
            admission.enter(b).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert!(admission.enter(a).is_some());
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let admission = Arc::new(Admission::new(ConnectionLimits {
            unauthenticated_per_addr: 1,
            ..ConnectionLimits::default()
        }));
        let _one = admission.enter("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(admission
            .enter("2001:db8:1:2:ffff::9".parse().unwrap())
            .is_none());
        assert!(admission
            .enter("2001:db8:1:3::1".parse().unwrap())
            .is_some());
    }

    #[test]
    fn logging_thins_out_under_a_flood() {
        let logged = (1..=1000).filter(|n| worth_logging(*n)).count();
        assert_eq!(logged, 20);
    }
}
