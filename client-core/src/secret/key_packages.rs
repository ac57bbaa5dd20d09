//! KeyPackage upkeep: keeping enough one-time KeyPackages (and a last-resort one) on the
//! server for owners to admit this device (DESIGN §5.3).

use rathaus_protocol::{Request, Response};

use crate::client::Client;
use crate::error::{ClientError, Result};

/// One-time KeyPackages a device keeps on the server (DESIGN §5.3).
pub const KEY_PACKAGE_TARGET: u32 = 20;

/// Below this many one-time KeyPackages, a sync publishes more.
pub const KEY_PACKAGE_LOW: u32 = 10;

impl Client {
    /// Publishes KeyPackages when fewer than [`KEY_PACKAGE_LOW`] one-time packages (or no
    /// last-resort one) remain on the server. Returns how many one-time packages it
    /// published.
    pub async fn replenish_key_packages(&mut self) -> Result<u32> {
        let (one_time, last_resort) = match self.request(&Request::KeyPackageStatus).await? {
            Response::KeyPackageStatus {
                one_time,
                last_resort,
            } => (one_time, last_resort),
            _ => return Err(ClientError::UnexpectedResponse("KeyPackageStatus")),
        };
        if one_time >= KEY_PACKAGE_LOW && last_resort {
            return Ok(0);
        }
        let count = KEY_PACKAGE_TARGET.saturating_sub(one_time);
        let batch = self.mls.generate_key_packages(count as usize)?;
        let request = Request::PublishKeyPackages {
            one_time: batch.one_time,
            last_resort: (!last_resort).then_some(batch.last_resort),
        };
        match self.request(&request).await? {
            Response::KeyPackageStatus { .. } => Ok(count),
            _ => Err(ClientError::UnexpectedResponse("PublishKeyPackages")),
        }
    }

    /// Right after enrollment: publish KeyPackages so owners can admit this device at once.
    /// A failure is not fatal; the next sync publishes them.
    pub(crate) async fn publish_initial_key_packages(&mut self) {
        if let Err(e) = self.replenish_key_packages().await {
            tracing::warn!("could not publish KeyPackages after enrollment: {e}");
        }
    }
}
