//! Timeline rows for what happened in a secret group, and the people's names in them.

use rathaus_protocol::{GroupHandle, LogEntry};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::error::Result;
use crate::mls::GroupMember;
use crate::store::TimelineRow;

impl Client {
    pub(super) fn membership_row(
        &self,
        group: &GroupHandle,
        entry: &LogEntry,
        committer: &str,
        added: &[GroupMember],
        removed: &[GroupMember],
    ) -> Option<TimelineRow> {
        if added.is_empty() && removed.is_empty() {
            return None;
        }
        let describe = |members: &[GroupMember], with_key: bool| {
            members
                .iter()
                .map(|m| {
                    let device = if with_key {
                        format!("device {}…", short_fingerprint(&m.signature_key))
                    } else {
                        format!("device {}", m.identity.device_id())
                    };
                    format!("{} ({device})", self.name_of(m.identity.user_id()))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if !added.is_empty() {
            parts.push(format!("added {}", describe(added, true)));
        }
        if !removed.is_empty() {
            parts.push(format!("removed {}", describe(removed, false)));
        }
        let mut row = blank_row(group, entry);
        row.sender = committer.to_owned();
        row.sender_name = self.name_of(committer);
        row.kind = "membership".to_owned();
        row.text = format!("{} {}", row.sender_name, parts.join(" and "));
        Some(row)
    }

    /// Refreshes the display names of the department's members (for membership rows).
    pub(super) async fn learn_names(&mut self, group: &GroupHandle) -> Result<()> {
        let Some(slug) = group.department() else {
            return Ok(());
        };
        let public = GroupHandle::Public(slug.clone());
        match self.members(&public).await {
            Ok(members) => self
                .store
                .set_user_names(members.iter().map(|m| (m.user.as_str(), m.name.as_str()))),
            Err(e) if e.is_transient() => Err(e),
            // Names are a nicety; ids are shown instead.
            Err(_) => Ok(()),
        }
    }

    pub(super) fn name_of(&self, user: &str) -> String {
        self.store
            .user_name(user)
            .ok()
            .flatten()
            .unwrap_or_else(|| user.to_owned())
    }

    pub(super) fn display_name_for_rows(&self) -> String {
        self.conn
            .as_ref()
            .map(|(_, info)| info.name.clone())
            .unwrap_or_else(|| self.name_of(self.identity.user.as_str()))
    }

    pub(super) fn rows_after(&self, group: &GroupHandle, seq: u64) -> Result<Vec<TimelineRow>> {
        Ok(self
            .store
            .timeline(&group.to_string())?
            .into_iter()
            .filter(|r| r.seq > seq)
            .collect())
    }
}

fn short_fingerprint(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    format!("{:02x}{:02x}", digest[0], digest[1])
}

pub(super) fn diff(
    before: &[GroupMember],
    after: &[GroupMember],
) -> (Vec<GroupMember>, Vec<GroupMember>) {
    let added = after
        .iter()
        .filter(|m| !before.iter().any(|b| b.identity == m.identity))
        .cloned()
        .collect();
    let removed = before
        .iter()
        .filter(|m| !after.iter().any(|a| a.identity == m.identity))
        .cloned()
        .collect();
    (added, removed)
}

pub(super) fn blank_row(group: &GroupHandle, entry: &LogEntry) -> TimelineRow {
    TimelineRow {
        group: group.to_string(),
        seq: entry.seq,
        sender: entry.sender.to_string(),
        sender_name: entry.sender_name.clone(),
        sent_at_ms: entry.sent_at_ms,
        kind: "mls".to_owned(),
        text: String::new(),
        expires_at_ms: None,
        removes: None,
    }
}
