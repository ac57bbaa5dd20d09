//! One function per command.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use rathaus_client::net::host_of;
use rathaus_client::time_fmt::rfc3339;
use rathaus_client::{CaTrust, Client, EnrollOptions, ServerTrust, TimelineRow};
use rathaus_protocol::{GroupHandle, UserId};
use serde_json::{json, Value};

use crate::output::Output;
use crate::{password, Cli, Command};

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
        Command::Admin { command } => crate::admin::admin(profile, command, out).await,
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
        Command::Listen { count } => crate::listen::listen(profile, count, out).await,
        Command::Approve { group, user, all } => {
            crate::members::approve(profile, group, user, all, out).await
        }
        Command::AutoAdmit { group, state } => {
            crate::members::auto_admit(profile, group, state, out).await
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
        } => crate::members::owners(profile, group, add, remove, claim, out).await,
        Command::Members { group } => crate::members::members(profile, group, out).await,
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
           "sent_at": rfc3339(row.sent_at_ms), "kind": row.kind.as_str(), "text": row.text})
}

pub(crate) fn row_text(row: &TimelineRow) -> String {
    crate::posts::line(row.seq, row.sent_at_ms, &row.sender_name, &row.text)
}
