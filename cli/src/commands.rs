//! One function per command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rathaus_client::net::host_of;
use rathaus_client::time_fmt::rfc3339;
use rathaus_client::{
    Approval, CaTrust, Client, ClientError, EnrollOptions, PolicyOutcome, SecretGroupView,
    ServerTrust, TimelineRow,
};
use rathaus_protocol::{DepartmentSlug, Event, GroupHandle, Role, UserId};
use serde_json::{json, Value};

use crate::output::{human_time, Output};
use crate::{password, AdminCommand, Cli, Command, DepartmentCommand, Switch, UserCommand};

pub(crate) async fn run(cli: Cli, out: &Output) -> Result<()> {
    let profile = cli.profile.clone();
    match cli.command {
        Command::Enroll {
            server,
            fingerprint,
            ca,
            server_name,
            user,
            code,
            device_name,
            password_stdin,
        } => {
            let dir = profile_dir(profile)?;
            let user = UserId::parse(&user)?;
            let trust = server_trust(&server, fingerprint, ca, server_name)?;
            let mut password = password::read(password_stdin, true)?;
            let client = Client::enroll(
                &dir,
                EnrollOptions {
                    server,
                    trust,
                    user,
                    code,
                    // Moved, not copied: the client wipes it once sent.
                    password: std::mem::take(&mut *password),
                    device_name: device_name.unwrap_or_else(default_device_name),
                },
            )
            .await?;
            print_enrolled(out, &client);
            Ok(())
        }
        Command::AddDevice {
            server,
            fingerprint,
            ca,
            server_name,
            user,
            device_name,
            password_stdin,
        } => {
            let dir = profile_dir(profile)?;
            let user = UserId::parse(&user)?;
            let trust = server_trust(&server, fingerprint, ca, server_name)?;
            let password = password::read(password_stdin, false)?;
            let name = device_name.unwrap_or_else(default_device_name);
            let client = Client::add_device(&dir, &server, &trust, user, &password, &name).await?;
            let id = client.identity();
            let code = client.link_code();
            out.print(
                json!({"user": id.user.as_str(), "device": id.device.0, "link_code": code,
                       "server": id.server, "fingerprint": id.trust.fingerprint(),
                       "trust": trust_json(&id.trust), "org": id.org,
                       "profile": client.dir().display().to_string()}),
                || {
                    format!(
                        "enrolled {} as device {} at {} ({})\nprofile: {}\n\nThis device joins \
                         your secret groups once you approve it on one of your other devices:\n  \
                         rathaus devices approve {code}",
                        id.user,
                        id.device,
                        id.org,
                        id.server,
                        client.dir().display()
                    )
                },
            );
            Ok(())
        }
        Command::Whoami => {
            let mut client = open(profile)?;
            let me = client.whoami().await?;
            let id = client.identity().clone();
            let roles: Vec<&str> = me.roles.iter().map(|r| r.as_str()).collect();
            let departments: Vec<&str> = me.departments.iter().map(|d| d.as_str()).collect();
            out.print(
                json!({"user": me.user.as_str(), "name": me.name, "device": me.device.0,
                       "roles": roles, "departments": departments, "org": me.org,
                       "server": id.server, "fingerprint": id.trust.fingerprint(),
                       "trust": trust_json(&id.trust)}),
                || {
                    format!(
                        "{} ({}), device {} at {}\nroles: {}\ndepartments: {}\nserver: {} ({})",
                        me.name,
                        me.user,
                        me.device,
                        me.org,
                        roles.join(", "),
                        if departments.is_empty() {
                            "-".to_owned()
                        } else {
                            departments.join(", ")
                        },
                        id.server,
                        trust_text(&id.trust)
                    )
                },
            );
            client.disconnect().await;
            Ok(())
        }
        Command::Admin { command } => admin(profile, command, out).await,
        Command::Groups => {
            let mut client = open(profile)?;
            let groups = client.overview().await?;
            let docs: Vec<Value> = groups
                .iter()
                .map(|o| {
                    let g = &o.group;
                    json!({"handle": g.handle.to_string(), "kind": g.kind.as_str(),
                           "name": g.name, "head": g.head, "unread": o.unread,
                           "mentions": o.mentions})
                })
                .collect();
            out.print(json!({"groups": docs}), || {
                groups
                    .iter()
                    .map(|o| {
                        let g = &o.group;
                        format!(
                            "{:<24} {:<13} {:>5} unread {:>4} @me  {}",
                            g.handle.to_string(),
                            g.kind.as_str(),
                            o.unread,
                            o.mentions,
                            crate::posts::escape(&g.name)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            client.disconnect().await;
            Ok(())
        }
        Command::Send {
            group,
            text,
            reply_to,
            file: Some(file),
        } => {
            if reply_to.is_some() {
                return Err(anyhow!(
                    "--reply-to is for text posts; send the file on its own"
                ));
            }
            crate::files::send_file(profile, &group, &file, text, out).await
        }
        Command::Send {
            group,
            text,
            reply_to,
            file: None,
        } => {
            let text = text.unwrap_or_default();
            crate::posts::send(profile, &group, &text, reply_to, out).await
        }
        Command::Download {
            group,
            seq,
            out: to,
        } => crate::files::download(profile, &group, seq, to, out).await,
        Command::Docs { command } => crate::docs::docs(profile, command, out).await,
        Command::Read {
            group,
            limit,
            before,
        } => crate::posts::read(profile, &group, limit, before, out).await,
        Command::React { group, seq, emoji } => {
            crate::posts::react(profile, &group, seq, &emoji, out).await
        }
        Command::Edit { group, seq, text } => {
            crate::posts::edit(profile, &group, seq, &text, out).await
        }
        Command::Delete { group, seq } => crate::posts::delete(profile, &group, seq, out).await,
        Command::Open { link, out: to } => {
            if rathaus_client::files::docs_link_path(&link).is_some() {
                crate::docs::open_docs_link(profile, &link, to, out).await
            } else {
                crate::posts::open_link(profile, &link, out).await
            }
        }
        Command::Sync => {
            let mut client = open(profile)?;
            crate::progress::show_catch_up(&mut client, out);
            let report = client.sync().await?;
            let fetched: serde_json::Map<String, Value> = report
                .fetched
                .iter()
                .map(|(g, n)| (g.clone(), json!(n)))
                .collect();
            let failed: Vec<Value> = report
                .failed
                .iter()
                .map(|f| {
                    json!({"client_id": f.client_id.to_string(), "group": f.group,
                                "code": f.code.map(|c| c.as_str()), "reason": f.reason})
                })
                .collect();
            out.print(
                json!({"sent": report.sent, "failed": failed, "fetched": fetched}),
                || {
                    let mut lines = vec![format!("sent {} queued message(s)", report.sent)];
                    for f in &report.failed {
                        lines.push(format!("not delivered to {}: {}", f.group, f.reason));
                    }
                    for (g, n) in &report.fetched {
                        lines.push(format!("{g}: {n} new"));
                    }
                    if report.fetched.is_empty() {
                        lines.push("nothing new".into());
                    }
                    lines.join("\n")
                },
            );
            client.disconnect().await;
            Ok(())
        }
        Command::Listen { count } => listen(profile, count, out).await,
        Command::Members { group } if GroupHandle::parse(&group)?.is_secret() => {
            let group = GroupHandle::parse(&group)?;
            let mut client = open(profile)?;
            let view = client.secret_group(&group).await?;
            print_secret_members(out, &view, &client)?;
            client.disconnect().await;
            Ok(())
        }
        Command::Approve { group, user, all } => {
            let group = GroupHandle::parse(&group)?;
            let mut client = open(profile)?;
            let outcomes = match user {
                Some(user) if !all => {
                    let user = UserId::parse(&user)?;
                    let outcome = client.approve(&group, &user).await?;
                    vec![(user, outcome)]
                }
                _ => client.approve_all(&group).await?,
            };
            let rows: Vec<_> = outcomes
                .iter()
                .map(|(user, outcome)| approval_row(&group, user, outcome))
                .collect();
            if all {
                let texts: Vec<String> = rows.iter().map(|(_, t)| t.clone()).collect();
                out.print(
                    json!({"group": group.to_string(),
                           "approved": rows.iter().map(|(j, _)| j.clone()).collect::<Vec<_>>()}),
                    || {
                        if texts.is_empty() {
                            format!("nobody is waiting for approval in {group}")
                        } else {
                            texts.join("\n")
                        }
                    },
                );
            } else if let Some((json, text)) = rows.into_iter().next() {
                out.print(json, || text);
            }
            client.disconnect().await;
            Ok(())
        }
        Command::AutoAdmit { group, state } => {
            let group = GroupHandle::parse(&group)?;
            let on = state == Switch::On;
            let mut client = open(profile)?;
            let outcome = client.set_auto_admit(&group, on).await?;
            let word = if on { "on" } else { "off" };
            let (status, seq, text) = match outcome {
                PolicyOutcome::Changed { seq } => (
                    "changed",
                    Some(seq),
                    format!("turned auto-admit {word} for {group} (commit #{seq})"),
                ),
                PolicyOutcome::Unchanged => (
                    "unchanged",
                    None,
                    format!("auto-admit is already {word} for {group}"),
                ),
            };
            out.print(
                json!({"group": group.to_string(), "auto_admit": on, "status": status,
                       "seq": seq}),
                || text,
            );
            client.disconnect().await;
            Ok(())
        }
        Command::Devices { command } => crate::devices::devices(profile, command, out).await,
        Command::Outbox { cancel } => {
            let client = open(profile)?;
            if let Some(id) = cancel {
                let found = client
                    .outbox()?
                    .into_iter()
                    .find(|m| m.client_id.to_string() == id.to_ascii_lowercase());
                let withdrawn = match found {
                    Some(m) if !m.attempted => client.cancel_queued(m.client_id)?,
                    Some(_) => {
                        return Err(anyhow!(
                            "message {id} may have reached the server already; it cannot be \
                             withdrawn (delete it once it is delivered)"
                        ))
                    }
                    None => false,
                };
                if !withdrawn {
                    return Err(anyhow!("no queued message {id} (see `rathaus outbox`)"));
                }
                out.print(json!({"cancelled": id}), || {
                    format!("withdrew message {id}")
                });
                return Ok(());
            }
            let queued = client.outbox()?;
            let list: Vec<Value> = queued
                .iter()
                .map(|m| {
                    json!({"client_id": m.client_id.to_string(), "group": m.group,
                           "text": m.text, "created_at": rfc3339(m.created_ms),
                           "attempted": m.attempted})
                })
                .collect();
            out.print(json!({"queued": list}), || {
                if queued.is_empty() {
                    return "nothing queued: every message reached the server".to_owned();
                }
                queued
                    .iter()
                    .map(|m| format!("{}  {}  {}", m.client_id, m.group, m.text))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(())
        }
        Command::Room { command } => crate::rooms::room(profile, command, out).await,
        Command::Search {
            query,
            group,
            limit,
        } => crate::search::search(profile, query, group, limit, out).await,
        Command::Password { password_stdin } => {
            crate::devices::change_password(profile, password_stdin, out).await
        }
        Command::Owners {
            group,
            add,
            remove,
            claim,
        } => {
            let group = GroupHandle::parse(&group)?;
            if !group.is_secret() {
                return Err(anyhow!(
                    "{group} is not a secret group; only secret groups have owners who admit \
                     members (e.g. {}/secret)",
                    group.department().map_or("bauamt", |d| d.as_str())
                ));
            }
            let mut client = open(profile)?;
            let change = match (add, remove) {
                _ if claim => {
                    let me = client.identity().user.clone();
                    Some((client.claim_ownership(&group).await?, me, true))
                }
                (Some(user), _) => {
                    let user = UserId::parse(&user)?;
                    Some((client.add_owner(&group, &user).await?, user, true))
                }
                (None, Some(user)) => {
                    let user = UserId::parse(&user)?;
                    Some((client.remove_owner(&group, &user).await?, user, false))
                }
                (None, None) => None,
            };
            let view = client.secret_group(&group).await?;
            let owners: Vec<Value> = view
                .owners
                .iter()
                .map(|o| {
                    let name = view
                        .members
                        .iter()
                        .find(|m| &m.user == o)
                        .map_or(o.as_str(), |m| m.name.as_str());
                    json!({"user": o, "name": name})
                })
                .collect();
            let (status, seq) = match &change {
                Some((PolicyOutcome::Changed { seq }, ..)) => (Some("changed"), Some(*seq)),
                Some((PolicyOutcome::Unchanged, ..)) => (Some("unchanged"), None),
                None => (None, None),
            };
            out.print(
                json!({"group": group.to_string(), "owners": owners, "status": status,
                       "seq": seq}),
                || {
                    let mut lines = Vec::new();
                    if let Some((outcome, user, added)) = &change {
                        lines.push(match (outcome, added) {
                            (PolicyOutcome::Changed { seq }, true) => {
                                format!("made {user} an owner of {group} (commit #{seq})")
                            }
                            (PolicyOutcome::Changed { seq }, false) => {
                                format!("{user} is no longer an owner of {group} (commit #{seq})")
                            }
                            (PolicyOutcome::Unchanged, true) => {
                                format!("{user} is already an owner of {group}")
                            }
                            (PolicyOutcome::Unchanged, false) => {
                                format!("{user} is not an owner of {group}")
                            }
                        });
                    }
                    lines.extend(owners.iter().map(|o| {
                        format!(
                            "{:<16} {}",
                            o["user"].as_str().unwrap_or_default(),
                            o["name"].as_str().unwrap_or_default()
                        )
                    }));
                    lines.join("\n")
                },
            );
            client.disconnect().await;
            Ok(())
        }
        Command::Members { group } => {
            let group = GroupHandle::parse(&group)?;
            let mut client = open(profile)?;
            let members = client.members(&group).await?;
            let docs: Vec<Value> = members
                .iter()
                .map(|m| {
                    json!({"user": m.user.as_str(), "name": m.name, "owner": m.owner,
                           "devices": m.devices.iter().map(|d| d.0).collect::<Vec<_>>()})
                })
                .collect();
            out.print(json!({"group": group.to_string(), "members": docs}), || {
                members
                    .iter()
                    .map(|m| {
                        format!(
                            "{:<16} {}{} ({} device(s))",
                            m.user.as_str(),
                            m.name,
                            if m.owner { " [owner]" } else { "" },
                            m.devices.len()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            client.disconnect().await;
            Ok(())
        }
        Command::Announce { command } => {
            let mut client = open(profile)?;
            let result = crate::announce::run(&mut client, command, out).await;
            client.disconnect().await;
            result
        }
        Command::Moderate { group, seq } => {
            let group = GroupHandle::parse(&group)?;
            let mut client = open(profile)?;
            client.remove_post(&group, seq).await?;
            out.print(json!({"group": group.to_string(), "removed": seq}), || {
                format!("removed post #{seq} from {group}")
            });
            client.disconnect().await;
            Ok(())
        }
        Command::Verify { user, confirm } => {
            let user = UserId::parse(&user)?;
            let mut client = open(profile)?;
            let result = crate::verify::run(&mut client, &user, confirm, out).await;
            client.disconnect().await;
            result
        }
        Command::Demo => crate::demo::run(out).await,
    }
}

async fn admin(profile: Option<PathBuf>, command: AdminCommand, out: &Output) -> Result<()> {
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

/// `listen`: subscribe, catch up, then print every new message; reconnects with backoff
/// when the connection drops, and stops for good when the account was removed.
async fn listen(profile: Option<PathBuf>, count: Option<u64>, out: &Output) -> Result<()> {
    let mut client = open(profile)?;
    crate::progress::show_catch_up(&mut client, out);
    let mut printed = 0u64;
    let mut backoff = Duration::from_millis(500);
    loop {
        let session = async {
            let sub = client.subscribe().await?;
            // Catch up on what arrived while offline; events for entries fetched here are
            // skipped by the cursor check.
            let groups = client.groups().await?;
            let mut caught_up = Vec::new();
            for g in groups.iter().filter(|g| !g.handle.is_secret()) {
                let before = client.store().cursor(&g.handle.to_string())?;
                client.fetch_group(&g.handle).await?;
                let rows = client.store().timeline(&g.handle.to_string())?;
                caught_up.extend(rows.into_iter().filter(|r| r.seq > before));
            }
            // Secret groups: KeyPackages, Welcomes, births, and each group's log.
            let secret = client.secret_group_infos().await?;
            let mut befores = Vec::new();
            for info in &secret {
                let handle = info.group.to_string();
                befores.push((handle.clone(), client.store().cursor(&handle)?));
            }
            client.sync_secret_groups().await?;
            for (handle, before) in befores {
                let rows = client.store().timeline(&handle)?;
                caught_up.extend(rows.into_iter().filter(|r| r.seq > before));
            }
            Ok::<_, ClientError>((sub, caught_up))
        }
        .await;
        let (mut sub, caught_up) = match session {
            Ok((sub, rows)) => (sub, rows),
            Err(ClientError::AccountRemoved) => return Err(ClientError::AccountRemoved.into()),
            Err(e) if e.is_transient() => {
                eprintln!("rathaus: {e}; retrying in {} s", backoff.as_secs_f32());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if !out.json {
            eprintln!("listening as {} (Ctrl-C to stop)", client.identity().user);
        }
        backoff = Duration::from_millis(500);
        for row in caught_up {
            out.line(row_json_event(&row), row_text_event(&row));
            // What `listen` printed was seen: it no longer counts as unread.
            client.mark_shown(std::slice::from_ref(&row))?;
            printed += 1;
            if count.is_some_and(|c| printed >= c) {
                client.disconnect().await;
                return Ok(());
            }
        }
        loop {
            let event = tokio::select! {
                e = sub.next() => e,
                _ = tokio::signal::ctrl_c() => {
                    client.disconnect().await;
                    return Ok(());
                }
            };
            match event {
                Ok(Event::ShuttingDown) => {
                    eprintln!("rathaus: the server is restarting; reconnecting");
                    break;
                }
                Ok(event) => {
                    for row in client.apply_event(&event).await? {
                        out.line(row_json_event(&row), row_text_event(&row));
                        client.mark_shown(std::slice::from_ref(&row))?;
                        printed += 1;
                        if count.is_some_and(|c| printed >= c) {
                            client.disconnect().await;
                            return Ok(());
                        }
                    }
                }
                Err(ClientError::AccountRemoved) => {
                    return Err(ClientError::AccountRemoved.into());
                }
                Err(e) => {
                    eprintln!("rathaus: {e}; reconnecting");
                    break;
                }
            }
        }
        client.disconnect().await;
        tokio::time::sleep(backoff).await;
    }
}

pub(crate) fn open(profile: Option<PathBuf>) -> Result<Client> {
    let dir = profile_dir(profile)?;
    Ok(Client::open(&dir)?)
}

fn profile_dir(profile: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = profile {
        return Ok(p);
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("no profile given: use --profile DIR or set RATHAUS_PROFILE"))?;
    Ok(PathBuf::from(home).join(".rathaus"))
}

fn default_device_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this computer".to_owned());
    format!("rathaus CLI on {host}")
}

/// How the server is to be trusted, from `--fingerprint` or `--ca [--server-name]`:
/// exactly one of the two.
fn server_trust(
    server: &str,
    fingerprint: Option<String>,
    ca: Option<PathBuf>,
    server_name: Option<String>,
) -> Result<ServerTrust> {
    match (fingerprint, ca) {
        (Some(_), Some(_)) => Err(anyhow!(
            "give either --fingerprint or --ca, not both: the server is trusted one way"
        )),
        (None, None) => Err(anyhow!(
            "give --fingerprint SHA256:… (from `rathaus-server init`) or --ca FILE (the CA \
             that issued the server's certificate)"
        )),
        (Some(_), None) if server_name.is_some() => Err(anyhow!(
            "--server-name only applies with --ca (a pinned certificate is trusted by its \
             fingerprint, whatever its name)"
        )),
        (Some(fingerprint), None) => Ok(ServerTrust::Pinned(fingerprint)),
        (None, Some(path)) => {
            let pem = std::fs::read(&path)
                .map_err(|e| anyhow!("cannot read the CA file {}: {e}", path.display()))?;
            let name = server_name.unwrap_or_else(|| host_of(server).to_owned());
            let ca =
                CaTrust::from_pem(&pem, &name).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            Ok(ServerTrust::Ca(ca))
        }
    }
}

/// How the server is trusted, for `--json`.
fn trust_json(trust: &ServerTrust) -> Value {
    match trust {
        ServerTrust::Ca(ca) => json!({"method": "ca", "server_name": ca.server_name(),
                                      "ca_fingerprints": ca.fingerprints()}),
        other => json!({"method": "fingerprint", "fingerprint": other.fingerprint()}),
    }
}

/// How the server is trusted, for people.
fn trust_text(trust: &ServerTrust) -> String {
    match trust {
        ServerTrust::Ca(ca) => format!(
            "certificate validated as {} by CA {}",
            ca.server_name(),
            ca.fingerprints().join(", ")
        ),
        other => other.fingerprint().unwrap_or_default().to_owned(),
    }
}

fn print_enrolled(out: &Output, client: &Client) {
    let id = client.identity();
    out.print(
        json!({"user": id.user.as_str(), "device": id.device.0, "server": id.server,
               "fingerprint": id.trust.fingerprint(), "trust": trust_json(&id.trust),
               "org": id.org,
               "profile": client.dir().display().to_string()}),
        || {
            format!(
                "enrolled {} as device {} at {} ({})\nprofile: {}",
                id.user,
                id.device,
                id.org,
                id.server,
                client.dir().display()
            )
        },
    );
}

pub(crate) fn row_json(row: &TimelineRow) -> Value {
    json!({"seq": row.seq, "sender": row.sender, "sender_name": row.sender_name,
           "sent_at": rfc3339(row.sent_at_ms), "kind": row.kind, "text": row.text})
}

pub(crate) fn row_text(row: &TimelineRow) -> String {
    crate::posts::line(row.seq, row.sent_at_ms, &row.sender_name, &row.text)
}

fn row_json_event(row: &TimelineRow) -> Value {
    let mut doc = row_json(row);
    if let Some(map) = doc.as_object_mut() {
        map.insert("group".into(), json!(row.group));
    }
    doc
}

fn row_text_event(row: &TimelineRow) -> String {
    format!("[{}] {}", row.group, row_text(row))
}

fn print_secret_members(out: &Output, view: &SecretGroupView, client: &Client) -> Result<()> {
    let group_code = crate::verify::group_code(client, &view.group)?;
    let mut marks = Vec::new();
    let mut members: Vec<Value> = Vec::new();
    for m in &view.members {
        let mut devices = Vec::new();
        for d in &m.devices {
            let mark = crate::verify::device_marks(client, &m.user, d)?;
            devices.push(json!({"device": d.device, "fingerprint": d.fingerprint,
                                "verified": mark.verified, "key_changed": mark.key_changed}));
            marks.push(mark.human(&m.user));
        }
        members.push(json!({"user": m.user, "name": m.name, "owner": m.owner,
                            "devices": devices}));
    }
    out.print(
        json!({"group": view.group.to_string(), "born": view.born, "joined": view.joined,
               "epoch": view.epoch, "members": members, "owners": view.owners,
               "auto_admit": view.auto_admit, "pending": view.pending,
               "group_code": group_code}),
        || {
            let mut lines = vec![format!(
                "{} (epoch {}{})",
                view.group,
                view.epoch,
                if view.joined {
                    ""
                } else if view.born {
                    ", this device is not a member yet"
                } else {
                    ", not created yet: an owner's client creates it on sync"
                }
            )];
            let mut marks = marks.iter();
            for m in &view.members {
                lines.push(format!(
                    "{:<16} {}{}",
                    m.user,
                    m.name,
                    if m.owner { " [owner]" } else { "" }
                ));
                for d in &m.devices {
                    let mark = marks.next().map_or("", String::as_str);
                    lines.push(format!(
                        "    device {:<6} key {}{mark}",
                        d.device, d.fingerprint
                    ));
                }
            }
            if let Some(code) = &group_code {
                lines.push(format!(
                    "group code: {code}  (everybody in the meeting should see the same)"
                ));
            }
            lines.push(format!("owners: {}", view.owners.join(", ")));
            lines.push(format!(
                "auto-admit: {}",
                if view.auto_admit { "on" } else { "off" }
            ));
            if view.pending.is_empty() {
                lines.push("pending invitations: none".to_owned());
            } else {
                lines.push(format!(
                    "pending invitations: {} (an owner runs `rathaus approve {} USER`)",
                    view.pending.join(", "),
                    view.group
                ));
            }
            lines.join("\n")
        },
    );
    Ok(())
}

/// The JSON object and the line of text for one approval.
fn approval_row(
    group: &GroupHandle,
    user: &UserId,
    outcome: &Approval,
) -> (serde_json::Value, String) {
    let (status, seq, devices, text) = match *outcome {
        Approval::Added { seq, devices } => (
            "added",
            Some(seq),
            devices,
            format!("added {user} to {group} ({devices} device(s), commit #{seq})"),
        ),
        Approval::AlreadyMember => (
            "already_member",
            None,
            0,
            format!("{user} is already a member of {group}"),
        ),
        Approval::NoDevices => (
            "no_devices",
            None,
            0,
            format!("{user} has no enrolled device yet; approve again after they enrolled"),
        ),
        Approval::Queued => (
            "queued",
            None,
            0,
            format!(
                "the server is not reachable; the approval of {user} is kept and carried out on \
                 your next sync"
            ),
        ),
    };
    (
        json!({"group": group.to_string(), "user": user.as_str(), "status": status,
               "seq": seq, "devices": devices}),
        text,
    )
}
