//! Periodic work that no request triggers: retention runs and the cleanup of stale
//! uploads, at start and then hourly.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::service::Service;

/// How often retention policies are enforced (they are also enforced when one is set).
const RETENTION_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Enforces retention now and every [`RETENTION_INTERVAL`] until `stop` says so.
pub(super) async fn retention_loop(service: Arc<Service>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(RETENTION_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                if let Err(e) = service.enforce_retention().await {
                    tracing::error!(error = %e, "retention run failed; retrying at the next interval");
                }
                if let Err(e) = service.clean_blobs(false).await {
                    tracing::error!(error = %e, "cleaning up stale uploads failed; retrying at the next interval");
                }
            }
        }
    }
}
