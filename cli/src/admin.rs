//! `admin …`: provisioning people and departments, roles, enrollment letters, imports,
//! offboarding and the audit trail (administrators; the server checks every request).

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use rathaus_client::time_fmt::rfc3339;
use rathaus_protocol::{DepartmentSlug, GroupHandle, Role, UserId};
use serde_json::{json, Value};

use crate::commands::open;
use crate::output::{human_time, Output};
use crate::{AdminCommand, DepartmentCommand, UserCommand};

pub(crate) async fn admin(
    profile: Option<PathBuf>,
    command: AdminCommand,
    out: &Output,
) -> Result<()> {
    let mut client = open(profile)?;
    match command {
        AdminCommand::User {
            command: UserCommand::Import { file, letters },
        } => crate::import::import_users(&mut client, &file, letters, out).await?,
        AdminCommand::Department {
            command: DepartmentCommand::Rename { slug, name },
        } => crate::import::rename_department(&mut client, &slug, &name, out).await?,
        AdminCommand::Department {
            command: DepartmentCommand::Remove { slug },
        } => crate::import::remove_department(&mut client, &slug, out).await?,
        AdminCommand::Department {
            command: DepartmentCommand::Add { slug, name, owners },
        } => {
            let slug = DepartmentSlug::parse(&slug)?;
            let owners = owners
                .iter()
                .map(|o| UserId::parse(o))
                .collect::<Result<Vec<_>, _>>()?;
            let d = client.admin_add_department(slug, &name, owners).await?;
            let owners: Vec<&str> = d.owners.iter().map(|o| o.as_str()).collect();
            out.print(
                json!({"department": d.slug.as_str(), "name": d.name, "owners": owners,
                       "groups": [d.slug.as_str(), format!("{}/secret", d.slug)]}),
                || {
                    format!(
                        "created department {} ({}), owners: {}",
                        d.slug,
                        d.name,
                        owners.join(", ")
                    )
                },
            );
        }
        AdminCommand::Department {
            command: DepartmentCommand::List,
        } => {
            let list = client.admin_departments().await?;
            let docs: Vec<Value> = list
                .iter()
                .map(|d| {
                    json!({"department": d.slug.as_str(), "name": d.name,
                    "owners": d.owners.iter().map(|o| o.as_str()).collect::<Vec<_>>(),
                    "members": d.members})
                })
                .collect();
            out.print(json!({"departments": docs}), || {
                list.iter()
                    .map(|d| {
                        format!(
                            "{:<20} {:<30} {} member(s)",
                            d.slug.as_str(),
                            d.name,
                            d.members
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        AdminCommand::User {
            command:
                UserCommand::Add {
                    id,
                    name,
                    departments,
                    roles,
                },
        } => {
            let user = UserId::parse(&id)?;
            let departments = departments
                .iter()
                .map(|d| DepartmentSlug::parse(d))
                .collect::<Result<Vec<_>, _>>()?;
            let roles = roles
                .iter()
                .map(|r| Role::parse(r))
                .collect::<Result<Vec<_>, _>>()?;
            let (code, expires) = client
                .admin_add_user(user.clone(), &name, departments, roles)
                .await?;
            out.print(
                json!({"user": user.as_str(), "enrollment_code": code, "expires_at": rfc3339(expires)}),
                || {
                    format!(
                        "created {user} ({name})\nenrollment code: {code}\n(valid once, until {})",
                        human_time(expires)
                    )
                },
            );
        }
        AdminCommand::User {
            command: UserCommand::Remove { id },
        } => {
            let user = UserId::parse(&id)?;
            client.admin_remove_user(user.clone()).await?;
            out.print(json!({"removed": user.as_str()}), || {
                format!("{user} offboarded: sessions ended, devices revoked")
            });
        }
        AdminCommand::User {
            command: UserCommand::Departments { id, add, remove },
        } => {
            let user = UserId::parse(&id)?;
            let add = add
                .iter()
                .map(|d| DepartmentSlug::parse(d))
                .collect::<Result<Vec<_>, _>>()?;
            let remove = remove
                .iter()
                .map(|d| DepartmentSlug::parse(d))
                .collect::<Result<Vec<_>, _>>()?;
            let departments = client
                .admin_set_departments(user.clone(), add, remove)
                .await?;
            let names: Vec<&str> = departments.iter().map(|d| d.as_str()).collect();
            out.print(json!({"user": user.as_str(), "departments": names}), || {
                format!("{user}: {}", names.join(", "))
            });
        }
        AdminCommand::User {
            command: UserCommand::Reset { id },
        } => {
            let user = UserId::parse(&id)?;
            let (code, expires) = client.admin_reset_user(user.clone()).await?;
            out.print(
                json!({"user": user.as_str(), "enrollment_code": code,
                       "expires_at": rfc3339(expires)}),
                || {
                    format!(
                        "{user}: all devices revoked; new one-time enrollment code {code} \
                         (valid until {})",
                        human_time(expires)
                    )
                },
            );
        }
        AdminCommand::User {
            command: UserCommand::Role { id, add, remove },
        } => {
            let user = UserId::parse(&id)?;
            let add = add
                .iter()
                .map(|r| Role::parse(r))
                .collect::<Result<Vec<_>, _>>()?;
            let remove = remove
                .iter()
                .map(|r| Role::parse(r))
                .collect::<Result<Vec<_>, _>>()?;
            let u = client.admin_set_roles(user, add, remove).await?;
            let roles: Vec<&str> = u.roles.iter().map(|r| r.as_str()).collect();
            out.print(json!({"user": u.user.as_str(), "roles": roles}), || {
                format!("{}: {}", u.user, roles.join(", "))
            });
        }
        AdminCommand::Audit { verify } => {
            let (entries, broken) = if verify {
                client.admin_audit_verify().await?
            } else {
                (client.admin_audit().await?, None)
            };
            let docs: Vec<Value> = entries
                .iter()
                .map(|e| {
                    json!({"index": e.index, "at": rfc3339(e.at_ms), "actor": e.actor.as_str(),
                                "action": e.action, "target": e.target, "detail": e.detail})
                })
                .collect();
            let mut doc = json!({"entries": docs});
            if verify {
                doc["verified"] = json!(broken.is_none());
                doc["broken_at"] = json!(broken.as_ref().map(|b| b.index));
                doc["problem"] = json!(broken.as_ref().map(|b| b.to_string()));
            }
            out.print(doc, || {
                let mut lines: Vec<String> = entries
                    .iter()
                    .map(|e| {
                        format!(
                            "{:>5} {} {:<10} {:<22} {} {}",
                            e.index,
                            human_time(e.at_ms),
                            e.actor.as_str(),
                            e.action,
                            e.target,
                            e.detail
                        )
                    })
                    .collect();
                if verify {
                    lines.push(match &broken {
                        None => format!("audit chain intact ({} entries)", entries.len()),
                        Some(b) => format!("AUDIT CHAIN BROKEN: {b}"),
                    });
                }
                lines.join("\n")
            });
            client.disconnect().await;
            if let Some(b) = broken {
                return Err(anyhow!("{b}"));
            }
            return Ok(());
        }
        AdminCommand::Retention { group, days } => {
            let group = GroupHandle::parse(&group)?;
            let days = (days > 0).then_some(days);
            client.admin_set_retention(&group, days).await?;
            out.print(
                json!({"group": group.to_string(), "retention_days": days}),
                || match days {
                    Some(d) => format!("{group}: entries older than {d} days are deleted"),
                    None => format!("{group}: entries are kept forever"),
                },
            );
        }
        AdminCommand::User {
            command: UserCommand::List,
        } => {
            let users = client.admin_users().await?;
            let docs: Vec<Value> = users
                .iter()
                .map(|u| {
                    json!({"user": u.user.as_str(), "name": u.name,
                    "roles": u.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                    "departments": u.departments.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
                    "enrolled": u.enrolled, "devices": u.devices})
                })
                .collect();
            out.print(json!({"users": docs}), || {
                users
                    .iter()
                    .map(|u| {
                        format!(
                            "{:<16} {:<28} {}{}",
                            u.user.as_str(),
                            u.name,
                            u.roles
                                .iter()
                                .map(|r| r.as_str())
                                .collect::<Vec<_>>()
                                .join(","),
                            if u.enrolled { "" } else { "  (not enrolled)" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    client.disconnect().await;
    Ok(())
}
