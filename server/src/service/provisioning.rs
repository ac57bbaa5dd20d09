//! What administrators do: departments, users, offboarding, listings.

use std::collections::BTreeSet;

use rathaus_protocol::limits::{MAX_LIST, MAX_NAME};
use rathaus_protocol::{DepartmentInfo, DepartmentSlug, Response, Role, UserId, UserSummary};

use super::refused::{DirectoryRefused, NotFound};
use super::{enrollment_codes, Broadcast, Refusal, Service};
use crate::store::{CodeRecord, Db, DepartmentRecord, ServerMeta, StoreError, UserRecord, Writes};

/// Writes the settings and the first administrator of a new server; returns the
/// administrator's enrollment code.
pub fn bootstrap(db: &Db, now_ms: i64, org: &str, admin: &UserId) -> Result<String, StoreError> {
    let code = enrollment_codes::generate();
    let user = UserRecord {
        id: admin.clone(),
        name: "Administrator".into(),
        roles: vec![Role::Member, Role::Admin],
        departments: Vec::new(),
        password_hash: None,
        devices: Vec::new(),
        removed: false,
        created_ms: now_ms,
    };
    let mut w = Writes::new();
    w.put_meta(&ServerMeta {
        org: org.to_owned(),
        created_ms: now_ms,
    })?
    .put_user(&user)?
    .put_code(admin, &code_record(&code, now_ms))?
    .put_audit(&super::audit::first_entry(
        now_ms,
        admin,
        "server.init",
        org,
    ))?;
    db.apply(w)?;
    Ok(code)
}

impl Service {
    pub(super) async fn add_department(
        &self,
        me: &UserRecord,
        slug: DepartmentSlug,
        name: String,
        owners: Vec<UserId>,
    ) -> Result<Response, Refusal> {
        self.require_admin(me, "add departments")?;
        if slug.is_reserved_for_departments() {
            return Err(DirectoryRefused::ReservedSlug(slug).into());
        }
        let name = valid_name(&name)?;
        if owners.len() > MAX_LIST {
            return Err(too_many("owners"));
        }
        let owners: Vec<UserId> = owners
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let (dept, ticket) = {
            let _dir = self.directory();
            if self.db.department(&slug)?.is_some() {
                return Err(DirectoryRefused::DepartmentExists(slug).into());
            }
            if self.is_retired(&slug)? {
                return Err(DirectoryRefused::DepartmentRetired(slug).into());
            }
            let mut w = Writes::new();
            for owner in &owners {
                let mut user = self.live_user(owner)?;
                if !user.departments.contains(&slug) {
                    user.departments.push(slug.clone());
                }
                w.put_user(&user)?;
            }
            let dept = DepartmentRecord {
                slug: slug.clone(),
                name,
                owners: owners.clone(),
                members: owners,
                created_ms: self.now_ms(),
            };
            w.put_department(&dept)?;
            let mut audit = self.audit()?;
            let detail = format!("{:?}, owners: {}", dept.name, ids(&dept.owners));
            audit.record(
                &mut w,
                dept.created_ms,
                &me.id,
                "department.add",
                slug.as_str(),
                detail,
            )?;
            self.db.apply(w)?;
            audit.commit();
            (dept, self.durability.written())
        };
        self.durable(ticket).await?;
        tracing::info!(department = %dept.slug, by = %me.id, "department added");
        self.publish(Broadcast::GroupsChanged);
        // Its unborn secret group waits for an owner's client (DESIGN §5.2).
        self.secret_groups_changed(std::slice::from_ref(&dept.slug));
        Ok(Response::Department(department_info(&dept)))
    }

    pub(super) async fn add_user(
        &self,
        me: &UserRecord,
        id: UserId,
        name: String,
        departments: Vec<DepartmentSlug>,
        roles: Vec<Role>,
    ) -> Result<Response, Refusal> {
        self.require_admin(me, "add users")?;
        if id.as_str() == super::removal::SERVER_USER {
            return Err(DirectoryRefused::ReservedUser(id).into());
        }
        let name = valid_name(&name)?;
        if departments.len() > MAX_LIST || roles.len() > MAX_LIST {
            return Err(too_many("departments or roles"));
        }
        let departments: Vec<DepartmentSlug> = departments
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let roles: Vec<Role> = roles
            .into_iter()
            .chain([Role::Member])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let now = self.now_ms();
        let code = enrollment_codes::generate();
        let record = code_record(&code, now);
        let ticket = {
            let _dir = self.directory();
            if self.db.user(&id)?.is_some() {
                return Err(DirectoryRefused::UserExists(id).into());
            }
            let mut w = Writes::new();
            for slug in &departments {
                let mut dept = self
                    .db
                    .department(slug)?
                    .ok_or_else(|| NotFound::Department(slug.clone()))?;
                dept.members.push(id.clone());
                w.put_department(&dept)?;
            }
            let user = UserRecord {
                id: id.clone(),
                name,
                roles,
                departments: departments.clone(),
                password_hash: None,
                devices: Vec::new(),
                removed: false,
                created_ms: now,
            };
            w.put_user(&user)?.put_code(&id, &record)?;
            let mut audit = self.audit()?;
            let detail = format!(
                "{:?}, departments: {}, roles: {}",
                user.name,
                ids(&departments),
                super::roles::role_names(user.roles.iter())
            );
            audit.record(&mut w, now, &me.id, "user.add", id.as_str(), detail)?;
            self.db.apply(w)?;
            audit.commit();
            self.durability.written()
        };
        self.durable(ticket).await?;
        tracing::info!(user = %id, by = %me.id, "user added");
        if !departments.is_empty() {
            self.publish(Broadcast::GroupsChanged);
            // A pending invitation for the owners (DESIGN §5.4).
            self.secret_groups_changed(&departments);
        }
        Ok(Response::UserAdded {
            user: id,
            enrollment_code: code,
            expires_at_ms: record.expires_ms,
        })
    }

    pub(super) async fn remove_user(
        &self,
        me: &UserRecord,
        id: &UserId,
    ) -> Result<Response, Refusal> {
        self.require_admin(me, "remove users")?;
        if *id == me.id {
            return Err(DirectoryRefused::RemoveSelf.into());
        }
        let (ticket, left) = {
            let _dir = self.directory();
            let mut user = self.db.user(id)?.ok_or_else(|| no_such_user(id))?;
            if user.removed {
                return Err(DirectoryRefused::OffboardedAlready(id.clone()).into());
            }
            let mut w = Writes::new();
            let mut left = Vec::new();
            for dept in self.db.departments()? {
                if dept.members.contains(id) || dept.owners.contains(id) {
                    left.push(dept.slug.clone());
                    let mut dept = dept;
                    dept.members.retain(|m| m != id);
                    dept.owners.retain(|o| o != id);
                    w.put_department(&dept)?;
                }
            }
            let detail = format!(
                "left departments: {}; devices revoked: {}",
                ids(&user.departments),
                user.active_devices().count()
            );
            user.removed = true;
            user.departments.clear();
            for d in &mut user.devices {
                d.revoked = true;
            }
            w.put_user(&user)?.remove_code(id);
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                self.now_ms(),
                &me.id,
                "user.remove",
                id.as_str(),
                detail,
            )?;
            self.db.apply(w)?;
            audit.commit();
            (self.durability.written(), left)
        };
        self.durable(ticket).await?;
        let ended = self.live.end_all(id);
        self.db.store().notify_sessions(id.as_str());
        tracing::info!(user = %id, by = %me.id, connections_ended = ended, "user offboarded");
        // The roster check already keeps the user out of every secret group; now take
        // their devices out of the MLS groups too (DESIGN §5.5). A failure here is
        // retried by the background task, so it does not fail the offboarding.
        self.secret_groups_changed(&left);
        for slug in left {
            let group = rathaus_protocol::GroupHandle::Secret(slug);
            if let Err(e) = self.drive_removal(&group).await {
                tracing::error!(%group, error = ?e.detail, message = %e.message(), "cannot propose removals yet");
            }
        }
        self.publish(Broadcast::GroupsChanged);
        Ok(Response::Done)
    }

    /// Moves a user between departments (DESIGN §5.5, §5.4): leaving one cuts its secret
    /// group off at once and proposes the removal of the user's devices; joining one is a
    /// pending invitation for its owners. Audited.
    pub(super) async fn set_departments(
        &self,
        me: &UserRecord,
        id: &UserId,
        add: Vec<DepartmentSlug>,
        remove: Vec<DepartmentSlug>,
    ) -> Result<Response, Refusal> {
        self.require_admin(me, "move users between departments")?;
        if add.len() > MAX_LIST || remove.len() > MAX_LIST {
            return Err(too_many("departments"));
        }
        if let Some(both) = add.iter().find(|a| remove.contains(a)) {
            return Err(DirectoryRefused::JoinAndLeave(both.clone()).into());
        }
        let (ticket, user, joined, left) = {
            let _dir = self.directory();
            let mut user = self.live_user(id)?;
            let mut w = Writes::new();
            let (mut joined, mut left) = (Vec::new(), Vec::new());
            for slug in add.iter().chain(&remove) {
                let mut dept = self
                    .db
                    .department(slug)?
                    .ok_or_else(|| NotFound::Department(slug.clone()))?;
                let member = dept.members.contains(id) || dept.owners.contains(id);
                if add.contains(slug) && !member {
                    dept.members.push(id.clone());
                    user.departments.push(slug.clone());
                    joined.push(slug.clone());
                } else if remove.contains(slug) && member {
                    dept.members.retain(|m| m != id);
                    dept.owners.retain(|o| o != id);
                    user.departments.retain(|d| d != slug);
                    left.push(slug.clone());
                } else {
                    continue;
                }
                w.put_department(&dept)?;
            }
            if joined.is_empty() && left.is_empty() {
                return Ok(Response::User(summary(&user)));
            }
            user.departments.sort();
            user.departments.dedup();
            w.put_user(&user)?;
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                self.now_ms(),
                &me.id,
                "user.departments",
                id.as_str(),
                format!("joined: {}; left: {}", ids(&joined), ids(&left)),
            )?;
            self.db.apply(w)?;
            audit.commit();
            (self.durability.written(), user, joined, left)
        };
        self.durable(ticket).await?;
        tracing::info!(user = %id, by = %me.id, joined = joined.len(), left = left.len(), "user moved");
        let mut changed = joined.clone();
        changed.extend(left.iter().cloned());
        self.secret_groups_changed(&changed);
        // Those who left get the push too, so their clients stop showing the group.
        self.push_to_all(
            vec![id.clone()],
            rathaus_protocol::Event::SecretGroupsChanged,
        );
        self.remove_revoked_devices(&left).await;
        self.publish(Broadcast::GroupsChanged);
        Ok(Response::User(summary(&user)))
    }

    /// A lost phone or a forgotten password: revokes every device of the user (their
    /// leaves are proposed for removal from every secret group), ends their sessions,
    /// clears the password and issues a new enrollment code. The user stays on their
    /// rosters; the device they enroll next is a new device that owners admit again.
    pub(super) async fn reset_user(
        &self,
        me: &UserRecord,
        id: &UserId,
    ) -> Result<Response, Refusal> {
        self.require_admin(me, "reset users")?;
        if *id == me.id {
            return Err(DirectoryRefused::ResetSelf.into());
        }
        let now = self.now_ms();
        let code = enrollment_codes::generate();
        let record = code_record(&code, now);
        let (ticket, departments) = {
            let _dir = self.directory();
            let mut user = self.live_user(id)?;
            let revoked = user.active_devices().count();
            for d in &mut user.devices {
                d.revoked = true;
            }
            user.password_hash = None;
            let mut w = Writes::new();
            w.put_user(&user)?.put_code(id, &record)?;
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                now,
                &me.id,
                "user.reset",
                id.as_str(),
                format!("devices revoked: {revoked}; new enrollment code issued"),
            )?;
            self.db.apply(w)?;
            audit.commit();
            (self.durability.written(), user.departments.clone())
        };
        self.durable(ticket).await?;
        let ended = self.live.end_all(id);
        self.db.store().notify_sessions(id.as_str());
        tracing::info!(user = %id, by = %me.id, connections_ended = ended, "user reset");
        self.secret_groups_changed(&departments);
        self.remove_revoked_devices(&departments).await;
        Ok(Response::UserAdded {
            user: id.clone(),
            enrollment_code: code,
            expires_at_ms: record.expires_ms,
        })
    }

    /// Tells everybody on the rosters of these departments' secret groups to re-read them.
    pub(super) fn secret_groups_changed(&self, departments: &[DepartmentSlug]) {
        for slug in departments {
            match self.db.department(slug) {
                Ok(Some(dept)) => self.push_to_all(
                    super::secret::roster(&dept),
                    rathaus_protocol::Event::SecretGroupsChanged,
                ),
                Ok(None) => {}
                Err(e) => tracing::error!(department = %slug, error = %e, "cannot read roster"),
            }
        }
    }

    pub(super) fn list_users(&self, me: &UserRecord) -> Result<Response, Refusal> {
        self.require_admin(me, "list users")?;
        let users = self
            .db
            .users()?
            .into_iter()
            .filter(|u| !u.removed)
            .map(|u| UserSummary {
                enrolled: u.password_hash.is_some(),
                devices: u32::try_from(u.active_devices().count()).unwrap_or(u32::MAX),
                user: u.id,
                name: u.name,
                roles: u.roles,
                departments: u.departments,
            })
            .collect();
        Ok(Response::Users(users))
    }

    pub(super) fn list_departments(&self, me: &UserRecord) -> Result<Response, Refusal> {
        self.require_admin(me, "list departments")?;
        let depts = self.db.departments()?.iter().map(department_info).collect();
        Ok(Response::Departments(depts))
    }

    /// A user that exists and was not offboarded.
    fn live_user(&self, id: &UserId) -> Result<UserRecord, Refusal> {
        self.db
            .user(id)?
            .filter(|u| !u.removed)
            .ok_or_else(|| no_such_user(id))
    }
}

/// A user as an admin sees them.
pub(super) fn summary(u: &UserRecord) -> UserSummary {
    UserSummary {
        enrolled: u.password_hash.is_some(),
        devices: u32::try_from(u.active_devices().count()).unwrap_or(u32::MAX),
        user: u.id.clone(),
        name: u.name.clone(),
        roles: u.roles.clone(),
        departments: u.departments.clone(),
    }
}

pub(super) fn department_info(d: &DepartmentRecord) -> DepartmentInfo {
    DepartmentInfo {
        slug: d.slug.clone(),
        name: d.name.clone(),
        owners: d.owners.clone(),
        members: u32::try_from(d.members.len()).unwrap_or(u32::MAX),
    }
}

pub(super) fn code_record(code: &str, now_ms: i64) -> CodeRecord {
    CodeRecord {
        // A freshly generated code always normalises; the fallback is unreachable and
        // would only make the code unusable, never usable by someone else.
        sha256: enrollment_codes::digest(code).unwrap_or([0xff; 32]),
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(enrollment_codes::CODE_LIFETIME_MS),
    }
}

pub(super) fn valid_name(name: &str) -> Result<String, Refusal> {
    let name = name.trim();
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(DirectoryRefused::Name.into());
    }
    Ok(name.to_owned())
}

/// A list of ids for the audit log.
pub(super) fn ids<T: std::fmt::Display>(list: &[T]) -> String {
    if list.is_empty() {
        return "none".to_owned();
    }
    list.iter().map(T::to_string).collect::<Vec<_>>().join(", ")
}

fn too_many(what: &'static str) -> Refusal {
    DirectoryRefused::TooMany(what).into()
}

fn no_such_user(id: &UserId) -> Refusal {
    NotFound::User(id.clone()).into()
}
