//! Changing a colleague's roles (`rathaus admin user role ID --add R --remove R`).
//!
//! Roles are read from the user's record on every request, so a change applies to open
//! sessions at once.

use std::collections::BTreeSet;

use rathaus_protocol::limits::MAX_LIST;
use rathaus_protocol::{Response, Role, UserId, UserSummary};

use super::refused::{DirectoryRefused, NotFound};
use super::{Refusal, Service};
use crate::store::{UserRecord, Writes};

impl Service {
    pub(super) async fn set_roles(
        &self,
        me: &UserRecord,
        id: &UserId,
        add: Vec<Role>,
        remove: Vec<Role>,
    ) -> Result<Response, Refusal> {
        self.require_admin(me, "change roles")?;
        if add.len() > MAX_LIST || remove.len() > MAX_LIST {
            return Err(DirectoryRefused::TooManyRoles.into());
        }
        let add: BTreeSet<Role> = add.into_iter().collect();
        let remove: BTreeSet<Role> = remove.into_iter().collect();
        if remove.contains(&Role::Member) {
            return Err(DirectoryRefused::KeepMember.into());
        }
        if let Some(both) = add.intersection(&remove).next() {
            return Err(DirectoryRefused::RoleBoth(both.as_str()).into());
        }
        if *id == me.id && remove.contains(&Role::Admin) {
            return Err(DirectoryRefused::OwnAdminRole.into());
        }
        let (user, ticket) = {
            let _dir = self.directory();
            let mut user = self
                .db
                .user(id)?
                .filter(|u| !u.removed)
                .ok_or_else(|| Refusal::from(NotFound::User(id.clone())))?;
            let before: BTreeSet<Role> = user.roles.iter().copied().collect();
            let after: BTreeSet<Role> = before
                .iter()
                .chain(&add)
                .copied()
                .filter(|r| !remove.contains(r))
                .chain([Role::Member])
                .collect();
            if after == before {
                (user, self.durability.latest())
            } else {
                user.roles = after.iter().copied().collect();
                let mut w = Writes::new();
                w.put_user(&user)?;
                let mut audit = self.audit()?;
                audit.record(
                    &mut w,
                    self.now_ms(),
                    &me.id,
                    "user.roles",
                    id.as_str(),
                    format!(
                        "{} → {}",
                        role_names(before.iter()),
                        role_names(after.iter())
                    ),
                )?;
                self.db.apply(w)?;
                audit.commit();
                (user, self.durability.written())
            }
        };
        self.durable(ticket).await?;
        tracing::info!(user = %id, by = %me.id, roles = %role_names(user.roles.iter()), "roles changed");
        Ok(Response::User(user_summary(&user)))
    }
}

fn user_summary(u: &UserRecord) -> UserSummary {
    UserSummary {
        user: u.id.clone(),
        name: u.name.clone(),
        roles: u.roles.clone(),
        departments: u.departments.clone(),
        enrolled: u.password_hash.is_some(),
        devices: u32::try_from(u.active_devices().count()).unwrap_or(u32::MAX),
    }
}

pub(super) fn role_names<'a>(roles: impl Iterator<Item = &'a Role>) -> String {
    roles.map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
}
