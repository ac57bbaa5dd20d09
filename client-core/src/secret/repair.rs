//! A secret group whose server copy is behind this device: the server was restored from
//! an older copy of its data and lost commits its members had already processed. Every
//! commit and message at the members' epoch would be refused as `StaleEpoch` for good.
//! An owner's device hands the server its current public state (GroupInfo and ratchet
//! tree, which hold no secrets); the server checks it as it checks a commit's tree and
//! takes it over (`RepairSecretGroup`). Members' own states are untouched: they judged
//! those commits when they processed them.

use rathaus_protocol::{GroupHandle, Request, Response};

use super::mls_group_id;
use crate::error::{ClientError, Result};
use crate::Client;

impl Client {
    /// Repairs the server's copy of `group` from this device's state if the server is
    /// at an earlier epoch and this user owns the group. Returns whether it did; a
    /// `warning` row says so.
    pub(super) async fn repair_if_behind(&mut self, group: &GroupHandle) -> Result<bool> {
        let gid = mls_group_id(group);
        if !self.mls.has_group(&gid)? {
            return Ok(false);
        }
        let info = self.secret_info(group).await?;
        let mine = self.mls.epoch(&gid)?;
        if info.epoch >= mine || !info.owners.contains(&self.identity.user) {
            return Ok(false);
        }
        let request = Request::RepairSecretGroup {
            group: group.clone(),
            group_info: self.mls.group_info(&gid)?,
            ratchet_tree: self.mls.ratchet_tree(&gid)?,
        };
        match self.request(&request).await? {
            Response::Done => {}
            _ => return Err(ClientError::UnexpectedResponse("RepairSecretGroup")),
        }
        let handle = group.to_string();
        let at = self.store.cursor(&handle)?;
        let notice = format!(
            "The server's copy of this secret group was at epoch {}, behind this device's \
             epoch {mine} (it was restored from an older copy and lost changes of the \
             group); this device, as an owner, brought it up to date. Members who missed \
             those changes need to be admitted again.",
            info.epoch
        );
        crate::trust::add_notice(
            self.store.connection(),
            &handle,
            at,
            crate::time_fmt::now_ms(),
            crate::trust::WARNING_KIND,
            &notice,
        )?;
        tracing::warn!(group = %handle, server = info.epoch, mine, "repaired the server's copy");
        Ok(true)
    }
}
