//! Timeline rows for what happened in a secret group, and the people's names in them.

use rathaus_protocol::mls::{DeviceCredential, MemberDevice};
use rathaus_protocol::{GroupHandle, LogEntry};

use crate::client::Client;
use crate::error::Result;
use crate::mls::GroupMember;
use crate::store::{RowKind, TimelineRow};

impl Client {
    /// The membership row of an accepted commit, from the tree's difference: the
    /// committer and every device by personnel number, device and key fingerprint (the
    /// display names come from the server and may lie; the ids and keys come from MLS).
    pub(super) fn membership_row(
        &self,
        group: &GroupHandle,
        entry: &LogEntry,
        committer: &DeviceCredential,
        added: &[MemberDevice],
        removed: &[MemberDevice],
    ) -> Option<TimelineRow> {
        if added.is_empty() && removed.is_empty() {
            return None;
        }
        let describe = |members: &[MemberDevice], with_key: bool| {
            members
                .iter()
                .map(|m| self.device_label(m, with_key))
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
        row.sender = committer.user.to_string();
        row.sender_name = self.name_of(committer.user.as_str());
        row.kind = RowKind::Membership;
        row.text = format!(
            "{} {}",
            self.person(committer.user.as_str()),
            parts.join(" and ")
        );
        Some(row)
    }

    /// "Lena Koch (P1003)", or just "P1003" when no other name is known.
    pub(super) fn person(&self, user: &str) -> String {
        let name = self.name_of(user);
        if name == user {
            user.to_owned()
        } else {
            format!("{name} ({user})")
        }
    }

    /// "Lena Koch (P1003, device 3, key 3f9a 12cd)".
    pub(super) fn device_label(&self, device: &MemberDevice, with_key: bool) -> String {
        let user = device.credential.user.as_str();
        let name = self.name_of(user);
        let mut ids = format!("{user}, device {}", device.credential.device);
        if with_key {
            ids.push_str(&format!(
                ", key {}",
                short_fingerprint(&device.signature_key)
            ));
        }
        if name == user {
            ids
        } else {
            format!("{name} ({ids})")
        }
    }

    /// Refreshes the display names of the department's members (for membership rows).
    pub(super) async fn learn_names(&mut self, group: &GroupHandle) -> Result<()> {
        // A department's colleagues are its public group's members; a room lists its own.
        let public = match (group.department(), group.room()) {
            (Some(slug), _) => GroupHandle::Public(slug.clone()),
            (None, Some(_)) => group.clone(),
            (None, None) => return Ok(()),
        };
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

/// The first two groups of a key's fingerprint ([`super::key_fingerprint`]).
pub(super) fn short_fingerprint(key: &[u8]) -> String {
    super::key_fingerprint(key)
        .split(' ')
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A member of this device's MLS group as the verdict's type.
pub(super) fn member_device(member: &GroupMember) -> MemberDevice {
    MemberDevice {
        credential: member.identity.credential_id().clone(),
        signature_key: member.signature_key.clone(),
    }
}

pub(super) fn diff(
    before: &[GroupMember],
    after: &[GroupMember],
) -> (Vec<MemberDevice>, Vec<MemberDevice>) {
    let added = after
        .iter()
        .filter(|m| !before.iter().any(|b| b.identity == m.identity))
        .map(member_device)
        .collect();
    let removed = before
        .iter()
        .filter(|m| !after.iter().any(|a| a.identity == m.identity))
        .map(member_device)
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
        kind: RowKind::Mls,
        text: String::new(),
        expires_at_ms: None,
        removes: None,
        content: None,
    }
}
