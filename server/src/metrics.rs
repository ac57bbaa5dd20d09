//! What the server counts for Prometheus (served by [`crate::ops`]).
//!
//! Every label value is one of a fixed set of names chosen here or in the protocol
//! (request kinds, error codes, connection states): no label or value ever carries
//! message content, a user id, a group name or anything else a client sent. Secret groups
//! are counted like every other group, in sums only.
//!
//! The metric handles are cheap clones of shared counters, so the service, the group
//! commit and the subscriber tasks each keep their own handle and the registry is built
//! from clones when the metrics listener starts. Each server has its own (no global
//! recorder), so several servers in one test process do not mix their figures.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Labels of `rathaus_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// The request's variant name (`Post`, `Fetch`, …).
    pub(crate) kind: &'static str,
    /// `ok`, or the stable error code of the refusal.
    pub(crate) code: &'static str,
}

/// Labels of `rathaus_connections`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ConnectionLabels {
    /// `authenticated` or `unauthenticated` (handshaking or not yet proven).
    pub(crate) state: &'static str,
}

/// Counters of the service layer.
#[derive(Debug, Clone)]
pub(crate) struct ServiceMetrics {
    /// Authenticated requests by kind and outcome.
    pub(crate) requests: Family<RequestLabels, Counter>,
    /// Requests outside a session (`Ping`, `Enroll`, `AddDevice`, `Hello` with its proof,
    /// and whatever is refused for want of one) by kind and outcome.
    pub(crate) prelogin_requests: Family<RequestLabels, Counter>,
    /// `Post` requests answered with a stored entry (public and secret groups).
    pub(crate) posts: Counter,
    /// Secret-group commits accepted.
    pub(crate) commits: Counter,
    /// Refusals with `RateLimited` (logins and enrollments included).
    pub(crate) throttled: Counter,
    /// Time from a subscriber task taking a posted entry to its frame being written.
    pub(crate) fanout_seconds: Histogram,
    /// Housekeeping runs (retention, stale uploads) on this node: only the node that runs
    /// the background loops counts any.
    pub(crate) housekeeping_runs: Counter,
    /// Connections this node ended because another node on the shared store ended their
    /// session (offboarding, a reset, a revoked device).
    pub(crate) sessions_ended_by_other_nodes: Counter,
    /// Entries stored but not pushed because the frames pushed before were still held
    /// (a subscriber that stopped reading): subscribers fetch them.
    pub(crate) pushes_skipped: Counter,
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            prelogin_requests: Family::default(),
            posts: Counter::default(),
            commits: Counter::default(),
            throttled: Counter::default(),
            housekeeping_runs: Counter::default(),
            sessions_ended_by_other_nodes: Counter::default(),
            pushes_skipped: Counter::default(),
            // 50 µs … ~1.6 s
            fanout_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}

/// Counters of the group commit (one flush acknowledges many writes).
#[derive(Debug, Clone)]
pub(crate) struct FlushMetrics {
    /// How long each flush took.
    pub(crate) seconds: Histogram,
    /// How many writes each flush made durable.
    pub(crate) batch: Histogram,
}

impl Default for FlushMetrics {
    fn default() -> Self {
        Self {
            // 100 µs … ~3.3 s
            seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            // 1 … 32768 writes
            batch: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
        }
    }
}

/// What the transport's defences against hostile peers refused, since start.
#[derive(Debug, Clone, Default)]
pub(crate) struct DefenceMetrics {
    /// Frames refused: malformed, over the limit, or not allowed before authentication.
    pub(crate) refused_frames: Counter,
    /// Connections closed for not authenticating in time.
    pub(crate) auth_timeouts: Counter,
    /// Connections refused because their network held too many unauthenticated ones.
    pub(crate) per_addr_refusals: Counter,
    /// QUIC Retry packets sent (address validation under load).
    pub(crate) retries: Counter,
    /// Connections closed after repeated failed proofs.
    pub(crate) failed_proof_closes: Counter,
}

/// Gauges read at scrape time.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gauges {
    /// Open QUIC connections by state.
    pub(crate) connections: Family<ConnectionLabels, Gauge>,
    /// Bytes of the database directory on disk.
    pub(crate) store_bytes: Gauge,
    /// Bytes of the blob directory (stored files and partial uploads), wherever it is.
    pub(crate) files_bytes: Gauge,
    /// Secret-group removals the server waits to see committed.
    pub(crate) removals_pending: Gauge,
    /// Users with at least one authenticated connection.
    pub(crate) users_online: Gauge,
    /// 1 while this node runs the background loops, 0 while another node does.
    pub(crate) background_leader: Gauge,
}

/// Builds the registry served at `/metrics`.
pub(crate) fn registry(
    service: &ServiceMetrics,
    flush: &FlushMetrics,
    gauges: &Gauges,
    defences: &DefenceMetrics,
) -> Registry {
    let mut r = Registry::with_prefix("rathaus");
    r.register(
        "prelogin_requests",
        "Requests outside a session (Ping, Enroll, AddDevice, Hello and its proof, and \
         those refused as Unauthenticated) by kind and outcome",
        service.prelogin_requests.clone(),
    );
    for (name, help, counter) in [
        (
            "refused_frames",
            "Frames refused: malformed, over the limit, or not allowed before login",
            &defences.refused_frames,
        ),
        (
            "auth_timeouts",
            "Connections closed for not authenticating in time",
            &defences.auth_timeouts,
        ),
        (
            "per_addr_refusals",
            "Connections refused: their network held too many unauthenticated ones",
            &defences.per_addr_refusals,
        ),
        (
            "quic_retries",
            "QUIC Retry packets sent to validate addresses under load",
            &defences.retries,
        ),
        (
            "failed_proof_closes",
            "Connections closed after repeated failed device proofs",
            &defences.failed_proof_closes,
        ),
    ] {
        r.register(name, help, counter.clone());
    }
    r.register(
        "requests",
        "Authenticated requests by kind and outcome (ok or error code)",
        service.requests.clone(),
    );
    r.register(
        "posts_accepted",
        "Posts stored durably",
        service.posts.clone(),
    );
    r.register(
        "commits_accepted",
        "Secret-group commits accepted",
        service.commits.clone(),
    );
    r.register(
        "throttled",
        "Requests refused as RateLimited, logins and enrollments included",
        service.throttled.clone(),
    );
    r.register_with_unit(
        "fanout",
        "From a subscriber task taking a posted entry to its frame written to the client",
        Unit::Seconds,
        service.fanout_seconds.clone(),
    );
    r.register_with_unit(
        "flush",
        "Duration of each group-commit flush (fdatasync included)",
        Unit::Seconds,
        flush.seconds.clone(),
    );
    r.register(
        "flush_batch_writes",
        "Writes made durable by each group-commit flush",
        flush.batch.clone(),
    );
    r.register(
        "connections",
        "Open QUIC connections by state",
        gauges.connections.clone(),
    );
    r.register_with_unit(
        "store",
        "Size of the database on disk",
        Unit::Bytes,
        gauges.store_bytes.clone(),
    );
    r.register_with_unit(
        "files",
        "Size of the stored files and partial uploads in the blob directory",
        Unit::Bytes,
        gauges.files_bytes.clone(),
    );
    r.register(
        "removal_proposals_pending",
        "Secret-group removals waiting for a member's commit",
        gauges.removals_pending.clone(),
    );
    r.register(
        "housekeeping_runs",
        "Housekeeping runs (retention, stale uploads) on this node",
        service.housekeeping_runs.clone(),
    );
    r.register(
        "sessions_ended_by_other_nodes",
        "Connections ended here because another node ended their session (offboarding, a reset, a revoked device)",
        service.sessions_ended_by_other_nodes.clone(),
    );
    r.register(
        "pushes_skipped",
        "Entries stored but not pushed while the pushed frames held reached their bound (subscribers fetch them)",
        service.pushes_skipped.clone(),
    );
    r.register(
        "background_leader",
        "1 while this node runs the background loops (retention, removal proposals), \
         0 while another node of the database does",
        gauges.background_leader.clone(),
    );
    r.register(
        "users_online",
        "Users with at least one authenticated connection",
        gauges.users_online.clone(),
    );
    r
}

/// The text exposition of `registry`.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; an error would only mean a truncated scrape.
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}
