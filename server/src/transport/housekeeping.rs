//! Periodic work that no request triggers: retention runs and the cleanup of stale
//! uploads, when this node starts to run the background loops and then hourly, on one
//! node of a shared database at a time ([`Leadership`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::service::Service;
use crate::store::Leadership;

/// How often retention policies are enforced (they are also enforced when one is set).
const RETENTION_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// While this node leads, enforces retention at once and every [`RETENTION_INTERVAL`];
/// until `stop` says so.
pub(super) async fn retention_loop(
    service: Arc<Service>,
    mut leader: Leadership,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = leader.acquired() => {}
        }
        let mut tick = tokio::time::interval(RETENTION_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                () = leader.lost() => break,
                _ = tick.tick() => {
                    if !leader.leads() {
                        break;
                    }
                    service.run_housekeeping().await;
                }
            }
        }
    }
}
