//! Groups and their logs: listing, posting, fetching, members.

use std::sync::{Arc, PoisonError};

use rathaus_protocol::limits::{MAX_CONTROL_FRAME, MAX_FETCH};
use rathaus_protocol::{
    frame, ClientMsgId, DepartmentSlug, EntryBody, ErrorCode, Event, GroupHandle, GroupKind,
    GroupSummary, MemberInfo, PostBody, Response, Role,
};

use super::{Broadcast, Heads, Refusal, Service};
use crate::store::{DepartmentRecord, StoredEntry, UserRecord, Writes};

/// Room left in a `Fetch` answer for everything but the entries' stored bytes.
pub(super) const FETCH_BUDGET: usize = MAX_CONTROL_FRAME - 128 * 1024;

impl Service {
    pub(super) fn list_groups(&self, _me: &UserRecord) -> Result<Response, Refusal> {
        let mut groups = vec![GroupSummary {
            handle: GroupHandle::Announcements,
            kind: GroupKind::Announcements,
            name: "Announcements".into(),
            head: self.head(&GroupHandle::Announcements)?,
        }];
        for dept in self.db.departments()? {
            let handle = GroupHandle::Public(dept.slug.clone());
            groups.push(GroupSummary {
                head: self.head(&handle)?,
                handle,
                kind: GroupKind::Public,
                name: dept.name,
            });
        }
        Ok(Response::Groups(groups))
    }

    pub(super) async fn post(
        &self,
        me: &UserRecord,
        group: GroupHandle,
        client_id: ClientMsgId,
        body: PostBody,
    ) -> Result<Response, Refusal> {
        self.readable_group(&group)?;
        if group == GroupHandle::Announcements
            && !(me.has_role(Role::Editor) || me.has_role(Role::Admin))
        {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only editors and administrators may post announcements",
            ));
        }
        let content = match body {
            PostBody::Public(content) => content,
            PostBody::Mls(_) => {
                return Err(Refusal::new(
                    ErrorCode::Invalid,
                    format!("{group} is server-readable; MLS messages belong in secret groups"),
                ))
            }
        };
        content
            .validate()
            .map_err(|e| Refusal::new(ErrorCode::Invalid, e.to_string()))?;

        let now = self.now_ms();
        let (seq, sent_at_ms, duplicate, ticket, entry) = {
            let mut heads = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(seq) = self.db.deduplicated(&group, &me.id, &client_id)? {
                let sent_at = self
                    .db
                    .entries(&group, seq - 1, 1)?
                    .first()
                    .map_or(now, |(_, e, _)| e.sent_at_ms);
                (seq, sent_at, true, self.commit.latest(), None)
            } else {
                let head = match heads.get(&group) {
                    Some(h) => h.written,
                    None => self.db.head(&group)?,
                };
                let seq = head + 1;
                let entry = StoredEntry {
                    sender: me.id.clone(),
                    sender_name: me.name.clone(),
                    sent_at_ms: now,
                    client_id,
                    body: EntryBody::Content(content),
                };
                let mut w = Writes::new();
                w.put_entry(&group, seq, &entry)?;
                self.db.apply(w)?;
                let durable = heads.get(&group).map_or(head, |h| h.durable);
                heads.insert(
                    group.clone(),
                    Heads {
                        written: seq,
                        durable,
                    },
                );
                (seq, now, false, self.commit.written(), Some(entry))
            }
        };
        self.durable(ticket).await?;
        self.mark_durable(&group, seq);
        if let Some(entry) = entry {
            tracing::debug!(%group, seq, "entry stored");
            let event = Response::Event(Event::Posted {
                group: group.clone(),
                entry: entry.to_log_entry(seq),
            });
            match frame::encode(&event) {
                Ok(bytes) => self.publish(Broadcast::Posted {
                    group,
                    frame: Arc::new(bytes),
                }),
                Err(e) => tracing::error!(%group, seq, error = %e, "cannot encode event"),
            }
        }
        Ok(Response::Posted {
            seq,
            sent_at_ms,
            duplicate,
        })
    }

    pub(super) fn fetch(
        &self,
        _me: &UserRecord,
        group: GroupHandle,
        since: u64,
        limit: u32,
    ) -> Result<Response, Refusal> {
        self.readable_group(&group)?;
        let limit = limit.min(MAX_FETCH) as usize;
        let head = self.head(&group)?;
        let mut entries = Vec::new();
        let mut budget = FETCH_BUDGET;
        for (seq, entry, size) in self.db.entries(&group, since, limit)? {
            if seq > head {
                break;
            }
            let cost = size + 128;
            if cost > budget && !entries.is_empty() {
                break;
            }
            budget = budget.saturating_sub(cost);
            entries.push(entry.to_log_entry(seq));
        }
        Ok(Response::Entries {
            group,
            entries,
            head,
        })
    }

    pub(super) fn members(
        &self,
        _me: &UserRecord,
        group: GroupHandle,
    ) -> Result<Response, Refusal> {
        let members = match self.readable_group(&group)? {
            Some(dept) => {
                let mut out = Vec::new();
                for id in &dept.members {
                    if let Some(u) = self.db.user(id)?.filter(|u| !u.removed) {
                        out.push(member_info(&u, dept.owners.contains(id)));
                    }
                }
                out
            }
            None => self
                .db
                .users()?
                .iter()
                .filter(|u| !u.removed)
                .map(|u| member_info(u, u.has_role(Role::Editor) || u.has_role(Role::Admin)))
                .collect(),
        };
        Ok(Response::Members { group, members })
    }

    /// Checks that `group` exists and is served here; returns its department (`None` for
    /// announcements).
    fn readable_group(&self, group: &GroupHandle) -> Result<Option<DepartmentRecord>, Refusal> {
        match group {
            GroupHandle::Announcements => Ok(None),
            GroupHandle::Public(slug) => self.department_or_not_found(slug).map(Some),
            GroupHandle::Secret(_) => Err(Refusal::new(
                ErrorCode::NotFound,
                format!("secret group {group} does not exist yet"),
            )),
        }
    }

    fn department_or_not_found(&self, slug: &DepartmentSlug) -> Result<DepartmentRecord, Refusal> {
        self.db.department(slug)?.ok_or_else(|| {
            Refusal::new(ErrorCode::NotFound, format!("group {slug} does not exist"))
        })
    }

    /// The group's durable head (what readers may see).
    pub(super) fn head(&self, group: &GroupHandle) -> Result<u64, Refusal> {
        let mut heads = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = heads.get(group) {
            return Ok(h.durable);
        }
        // Not touched since start: everything on disk is as durable as it gets.
        let on_disk = self.db.head(group)?;
        heads.insert(
            group.clone(),
            Heads {
                written: on_disk,
                durable: on_disk,
            },
        );
        Ok(on_disk)
    }

    fn mark_durable(&self, group: &GroupHandle, seq: u64) {
        let mut heads = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = heads.get_mut(group) {
            h.durable = h.durable.max(seq);
        }
    }
}

fn member_info(u: &UserRecord, owner: bool) -> MemberInfo {
    MemberInfo {
        user: u.id.clone(),
        name: u.name.clone(),
        owner,
        devices: u.active_devices().map(|d| d.id).collect(),
    }
}
