//! The team most end-to-end tests start from: the bootstrap admin, Anna Berg (P1001,
//! owner of `bauamt`) and Jonas Weber (P1002, a member), each with an enrolled device.

use anyhow::{ensure, Result};
use rathaus_client::{Approval, Client};
use rathaus_protocol::{GroupHandle, UserId};

use crate::{within, TestBackend};

/// Whether [`TestBackend::bauamt_team`] also sets up `bauamt/secret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    /// Only the public group: no device has given birth to the secret group yet.
    NotYet,
    /// Anna's device has given birth to `bauamt/secret` and admitted Jonas' device.
    Admitted,
}

impl TestBackend {
    /// Enrolls the admin, Anna (owner of `bauamt`) and Jonas (member); with
    /// [`Secret::Admitted`], Anna's device gives birth to `bauamt/secret`, admits Jonas'
    /// device, and Jonas' device has joined. Returns `(admin, anna, jonas)`.
    pub async fn bauamt_team(&mut self, secret: Secret) -> Result<(Client, Client, Client)> {
        let mut admin = self.admin().await?;
        let anna_code = self
            .provision(&mut admin, "P1001", "Anna Berg", &[], &[])
            .await?;
        self.department(&mut admin, "bauamt", &["P1001"]).await?;
        let jonas_code = self
            .provision(&mut admin, "P1002", "Jonas Weber", &["bauamt"], &[])
            .await?;
        let mut anna = self.enroll("P1001", &anna_code).await?;
        let mut jonas = self.enroll("P1002", &jonas_code).await?;
        if secret == Secret::Admitted {
            let group = GroupHandle::parse("bauamt/secret")?;
            within("birth", anna.sync()).await??;
            let approval =
                within("approve", anna.approve(&group, &UserId::parse("P1002")?)).await??;
            ensure!(
                matches!(approval, Approval::Added { .. }),
                "Jonas' device was not admitted: {approval:?}"
            );
            within("join", jonas.sync()).await??;
        }
        Ok((admin, anna, jonas))
    }
}
