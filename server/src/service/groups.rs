//! Groups and their logs: listing, posting, fetching, members.

use rathaus_protocol::limits::{MAX_CONTROL_FRAME, MAX_FETCH};
use rathaus_protocol::{
    ClientMsgId, DepartmentSlug, EntryBody, GroupHandle, GroupKind, GroupSummary, MemberInfo,
    PostBody, Response, Role,
};

use super::refused::{NotFound, PostRefused, SecretRefused};
use super::{Refusal, Service, Session};

use crate::store::{DepartmentRecord, StoredEntry, UserRecord};

/// Room left in a `Fetch` answer for everything but the entries' stored bytes.
pub(super) const FETCH_BUDGET: usize = MAX_CONTROL_FRAME - 128 * 1024;

impl Service {
    pub(super) fn list_groups(&self, me: &UserRecord) -> Result<Response, Refusal> {
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
                name: dept.name.clone(),
            });
            if super::secret::on_roster(&dept, &me.id) {
                let handle = GroupHandle::Secret(dept.slug.clone());
                groups.push(GroupSummary {
                    head: self.head(&handle)?,
                    handle,
                    kind: GroupKind::Secret,
                    name: format!("{} (secret)", dept.name),
                });
            }
        }
        for room in self.db.rooms()? {
            if super::secret::on_roster(&room, &me.id) {
                let handle = GroupHandle::Room(room.slug.clone());
                groups.push(GroupSummary {
                    head: self.head(&handle)?,
                    handle,
                    kind: GroupKind::Secret,
                    name: room.name.clone(),
                });
            }
        }
        Ok(Response::Groups(groups))
    }

    pub(super) async fn post(
        &self,
        session: &Session,
        me: &UserRecord,
        group: GroupHandle,
        client_id: ClientMsgId,
        body: PostBody,
    ) -> Result<Response, Refusal> {
        // A live department is known or looked up once; a retired one is refused with its
        // reason.
        self.ensure_open_async(&group).await?;
        if group.is_secret() {
            return self.post_secret(session, me, group, client_id, body).await;
        }
        if group == GroupHandle::Announcements
            && !(me.has_role(Role::Editor) || me.has_role(Role::Admin))
        {
            return Err(PostRefused::AnnouncementsByEditors.into());
        }
        let content = match body {
            PostBody::Public(content) => content,
            PostBody::Mls(_) | PostBody::MlsAttachment { .. } => {
                return Err(PostRefused::MlsInPublic(group).into())
            }
        };
        let content = content
            .validate()
            .map_err(|e| PostRefused::Content(e.to_string()))?;

        let entry = StoredEntry {
            sender: me.id.clone(),
            sender_name: me.name.clone(),
            sent_at_ms: self.now_ms(),
            client_id,
            body: EntryBody::Content(content),
        };
        if let Some(changed) = self.post_change(&group, &entry).await {
            return changed;
        }
        match Self::attachment_of(&entry.body) {
            Some(blob) => {
                if self.db.deduplicated(&group, &me.id, &client_id)?.is_none() {
                    self.check_attachment(me, &group, &blob)?;
                }
                self.append_post_attached(&group, entry, None, Some((me, blob)))
                    .await
            }
            None => self.append_post(&group, entry, None).await,
        }
    }

    pub(super) fn fetch(
        &self,
        session: &Session,
        _me: &UserRecord,
        group: GroupHandle,
        since: u64,
        limit: u32,
    ) -> Result<Response, Refusal> {
        let asked_since = since;
        let since = if group.is_secret() {
            // Only devices in the group read it, and a joiner nothing from before it
            // joined (DESIGN §5).
            self.secret_department(&group)?;
            match self.secret_reader(session, &group)? {
                Some(joined_seq) => {
                    if since > 0 {
                        self.welcome_taken(session, &group, since)?;
                    }
                    since.max(joined_seq)
                }
                None => return Err(SecretRefused::NotAReader(group).into()),
            }
        } else {
            self.ensure_readable(&group)?;
            since
        };
        let limit = limit.min(MAX_FETCH) as usize;
        let head = self.head(&group)?;
        // What the reader asked for, not where a joiner's reading begins. Only a reader
        // at or beyond the head can hold more than the log (the check takes the log lock).
        if asked_since >= head {
            self.notice_reader_ahead(&group, asked_since)?;
        }
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

    pub(super) fn members(&self, me: &UserRecord, group: GroupHandle) -> Result<Response, Refusal> {
        if group.is_secret() {
            return self.secret_members(me, group);
        }
        let members = match self.readable_group(&group)? {
            Some(dept) => {
                let users = self.db.users_by_id(&dept.members)?;
                dept.members
                    .iter()
                    .zip(users)
                    .filter_map(|(id, u)| {
                        let u = u.filter(|u| !u.removed)?;
                        Some(member_info(&u, dept.owners.contains(id)))
                    })
                    .collect()
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

    /// Checks that `group` exists and is served here (a public group or announcements),
    /// without reading its member list: the check on every post and fetch.
    fn ensure_readable(&self, group: &GroupHandle) -> Result<(), Refusal> {
        match group {
            GroupHandle::Announcements => Ok(()),
            GroupHandle::Public(slug) => {
                // A retired department's public group stays readable as it ended; posts
                // to it were refused before this check.
                if self.db.department_exists(slug)? || self.is_retired(slug)? {
                    Ok(())
                } else {
                    Err(NotFound::PublicGroup(slug.clone()).into())
                }
            }
            GroupHandle::Secret(_) | GroupHandle::Room(_) => self.readable_group(group).map(|_| ()),
        }
    }

    /// Checks that `group` exists and is served here; returns its department (`None` for
    /// announcements).
    fn readable_group(&self, group: &GroupHandle) -> Result<Option<DepartmentRecord>, Refusal> {
        match group {
            GroupHandle::Announcements => Ok(None),
            GroupHandle::Public(slug) => self.department_or_not_found(slug).map(Some),
            GroupHandle::Secret(_) | GroupHandle::Room(_) => {
                Err(NotFound::SecretGroup(group.clone()).into())
            }
        }
    }

    pub(super) fn department_or_not_found(
        &self,
        slug: &DepartmentSlug,
    ) -> Result<DepartmentRecord, Refusal> {
        self.db
            .department(slug)?
            .ok_or_else(|| NotFound::PublicGroup(slug.clone()).into())
    }
}

pub(super) fn member_info(u: &UserRecord, owner: bool) -> MemberInfo {
    MemberInfo {
        user: u.id.clone(),
        name: u.name.clone(),
        owner,
        devices: u.active_devices().map(|d| d.id).collect(),
    }
}
