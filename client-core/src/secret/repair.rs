//! A secret group whose server copy is behind this device: the server was restored from
//! an older copy of its data and lost commits its members had already processed. Every
//! commit and message at the members' epoch would be refused as `StaleEpoch` for good.
//! An owner's device hands the server its current public state (GroupInfo and ratchet
//! tree, which hold no secrets); the server checks it as it checks a commit's tree and
//! takes it over (`RepairSecretGroup`). Members' own states are untouched: they judged
//! those commits when they processed them.
//!
//! A member who had not processed the lost commits yet stays behind for good: the commits
//! that would bring its device to the group's epoch are gone. Its device says so
//! ([`Client::missed_lost_changes`], a `MissedChanges` error and a warning) and what
//! brings it back: the path of a lost phone (an administrator resets the user's devices,
//! the server has the old device's leaf removed, the user enrolls again and an owner
//! admits the new device).

use rathaus_protocol::{GroupHandle, Request, Response};

use super::{memory, mls_group_id};
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
            crate::store::RowKind::Warning,
            &notice,
        )?;
        tracing::warn!(group = %handle, server = info.epoch, mine, "repaired the server's copy");
        Ok(true)
    }
}

impl Client {
    /// After this device fetched everything the server has of `group`: if the server's
    /// copy is at a later epoch than this device, the commits in between are lost (the
    /// owner's device repaired the server's copy from its own state after a restore) and
    /// this device cannot catch up. Returns the error to give the user, and warns once in
    /// the group's timeline.
    pub(crate) async fn missed_lost_changes(
        &mut self,
        group: &GroupHandle,
    ) -> Result<Option<ClientError>> {
        let gid = mls_group_id(group);
        if !self.mls.has_group(&gid)? {
            return Ok(None);
        }
        let info = self.secret_info(group).await?;
        let mine = self.mls.epoch(&gid)?;
        if info.epoch <= mine {
            return Ok(None);
        }
        let me = self.identity.user.clone();
        let text = format!(
            "This device missed changes to {group} that the server no longer holds (it was \
             restored from an older copy; this device is at epoch {mine}, the group at {}). \
             It can no longer read or write there. To be admitted again: an administrator \
             resets your devices (rathaus admin user reset {me}), you enroll again with the \
             new code, and an owner approves you (rathaus approve {group} {me}).",
            info.epoch
        );
        if memory::first_warning(self.mls.connection(), &gid, "missed-changes")? {
            self.local_warning(group, &text)?;
        }
        tracing::warn!(group = %group, server = info.epoch, mine, "missed lost changes");
        Ok(Some(ClientError::MissedChanges(text)))
    }
}
