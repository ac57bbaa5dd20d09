//! Renaming and retiring departments.
//!
//! A rename changes the display name only: the slug is the department's handle in every
//! group, link and profile, so it stays.
//!
//! Retiring works like archiving a channel in Mattermost: the department's members and
//! owners are taken off it (its secret group's roster is empty from then on, so the server
//! delivers it to nobody and accepts nothing for it), its public group ends with a final
//! entry that says who retired it and stays readable as it ended, and every later post to
//! either group is refused with that reason. The slug is never handed out again: a new
//! department under it would show its members the old one's history. Both are audited.

use rathaus_protocol::{Content, DepartmentSlug, EntryBody, Event, GroupHandle, Response};

use super::open_departments::{Look, Lookup};
use super::refused::{NotFound, PostRefused};
use super::{group_log, provisioning, Broadcast, Refusal, Service};
use crate::store::{RetiredDepartment, StoredEntry, UserRecord, Writes};

impl Service {
    pub(super) async fn rename_department(
        &self,
        me: &UserRecord,
        slug: &DepartmentSlug,
        name: String,
    ) -> Result<Response, Refusal> {
        self.require_admin(me, "rename departments")?;
        let name = provisioning::valid_name(&name)?;
        let (ticket, dept) = {
            let _dir = self.directory();
            let mut dept = self.department_or_not_found(slug)?;
            if dept.name == name {
                return Ok(Response::Department(provisioning::department_info(&dept)));
            }
            let old = std::mem::replace(&mut dept.name, name);
            let mut w = Writes::new();
            w.put_department(&dept)?;
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                self.now_ms(),
                &me.id,
                "department.rename",
                slug.as_str(),
                format!("{old:?} → {:?}", dept.name),
            )?;
            self.db.apply(w)?;
            audit.commit();
            (self.durability.written(), dept)
        };
        self.durable(ticket).await?;
        tracing::info!(department = %slug, by = %me.id, "department renamed");
        self.publish(Broadcast::GroupsChanged);
        Ok(Response::Department(provisioning::department_info(&dept)))
    }

    pub(super) async fn remove_department(
        &self,
        me: &UserRecord,
        slug: &DepartmentSlug,
    ) -> Result<Response, Refusal> {
        self.require_admin(me, "retire departments")?;
        let group = GroupHandle::Public(slug.clone());
        let (appended, roster) = {
            let _dir = self.directory();
            let dept = self.department_or_not_found(slug)?;
            let roster = super::secret::roster(&dept);
            let now = self.now_ms();
            let mut w = Writes::new();
            let mut taken_off = 0usize;
            for id in dept.members.iter().chain(&dept.owners) {
                if let Some(mut user) = self.db.user(id)? {
                    if user.departments.contains(slug) {
                        user.departments.retain(|d| d != slug);
                        w.put_user(&user)?;
                        taken_off += 1;
                    }
                }
            }
            w.retire_department(&RetiredDepartment {
                slug: slug.clone(),
                name: dept.name.clone(),
                by: me.id.clone(),
                retired_ms: now,
            })?;
            let text = format!(
                "{} ({}) retired the department {}. This group and {slug}/secret are closed: \
                 what was posted stays readable, nothing new can be posted.",
                me.name, me.id, dept.name
            );
            let entry = StoredEntry {
                sender: me.id.clone(),
                sender_name: me.name.clone(),
                sent_at_ms: now,
                client_id: group_log::server_client_id(),
                body: EntryBody::Content(Content::text(&text)),
            };
            let detail = format!(
                "{:?}, members taken off: {taken_off}, owners were: {}",
                dept.name,
                provisioning::ids(&dept.owners)
            );
            let appended = self.append_entry(&group, |_seq| {
                let mut audit = self.audit()?;
                audit.record(
                    &mut w,
                    now,
                    &me.id,
                    "department.remove",
                    slug.as_str(),
                    detail,
                )?;
                Ok((entry, w, audit))
            })?;
            (appended, roster)
        };
        // Applied: from here on every post looks the department up (and finds it gone).
        self.open_departments.forget(slug);
        self.deliver(appended).await?;
        tracing::info!(department = %slug, by = %me.id, "department retired");
        // Their clients re-read the secret groups and stop showing this one.
        self.push_to_all(roster, Event::SecretGroupsChanged);
        self.publish(Broadcast::GroupsChanged);
        Ok(Response::Done)
    }

    /// Checks that a post may go to `group`: announcements, or a group of a department
    /// that exists. A retired department's groups are refused with the reason; an unknown
    /// public group is `NotFound` (an unknown secret group is left to the secret path).
    pub(super) fn ensure_open(&self, group: &GroupHandle) -> Result<(), Refusal> {
        let Some((slug, look)) = self.look_open(group) else {
            return Ok(());
        };
        let exists = self.db.department_exists(slug)?;
        self.found_open(group, slug, look, exists)
    }

    /// [`Service::ensure_open`] for an async caller: on a store shared with other nodes
    /// the lookup does not hold this thread for the database's round trip.
    pub(super) async fn ensure_open_async(&self, group: &GroupHandle) -> Result<(), Refusal> {
        let Some((slug, look)) = self.look_open(group) else {
            return Ok(());
        };
        let exists = self.db.department_exists_async(slug).await?;
        self.found_open(group, slug, look, exists)
    }

    /// The department `group` belongs to, if it has to be looked up, with the lookup
    /// to remember its answer by.
    fn look_open<'g>(&self, group: &'g GroupHandle) -> Option<(&'g DepartmentSlug, Lookup)> {
        let slug = match group {
            GroupHandle::Public(slug) | GroupHandle::Secret(slug) => slug,
            // Rooms are not departments: the secret path checks them.
            GroupHandle::Announcements | GroupHandle::Room(_) => return None,
        };
        match self.open_departments.look(slug, self.db.records_kept_for()) {
            Look::Open => None,
            Look::Unknown(lookup) => Some((slug, lookup)),
        }
    }

    /// Decides on a department looked up in the store (`exists`); remembers one that
    /// exists.
    fn found_open(
        &self,
        group: &GroupHandle,
        slug: &DepartmentSlug,
        lookup: Lookup,
        exists: bool,
    ) -> Result<(), Refusal> {
        if exists {
            self.open_departments.found(slug, lookup);
            return Ok(());
        }
        match self.db.retired_department(slug)? {
            Some(r) => Err(PostRefused::Retired {
                slug: slug.clone(),
                name: r.name,
                by: r.by,
            }
            .into()),
            None if group.is_secret() => Ok(()),
            None => Err(NotFound::PublicGroup(slug.clone()).into()),
        }
    }

    /// Whether `slug` names a retired department (its public group stays readable).
    pub(super) fn is_retired(&self, slug: &DepartmentSlug) -> Result<bool, Refusal> {
        Ok(self.db.retired_department(slug)?.is_some())
    }
}
