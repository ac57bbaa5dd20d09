//! `members`, `approve`, `auto-admit` and `owners`: who is in a group, and for secret
//! groups who is admitted and who admits.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use rathaus_client::{Approval, Client, PolicyOutcome, SecretGroupView};
use rathaus_protocol::{GroupHandle, UserId};
use serde_json::{json, Value};

use crate::commands::open;
use crate::output::Output;
use crate::Switch;

/// `members GROUP`: a secret group's roster with each device's admission, or a public
/// group's members.
pub(crate) async fn members(profile: Option<PathBuf>, group: String, out: &Output) -> Result<()> {
    if GroupHandle::parse(&group)?.is_secret() {
        let group = GroupHandle::parse(&group)?;
        let mut client = open(profile)?;
        let view = client.secret_group(&group).await?;
        print_secret_members(out, &view, &client)?;
        client.disconnect().await;
        Ok(())
    } else {
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
}

/// `approve GROUP USER | --all`.
pub(crate) async fn approve(
    profile: Option<PathBuf>,
    group: String,
    user: Option<String>,
    all: bool,
    out: &Output,
) -> Result<()> {
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

/// `auto-admit GROUP on|off`.
pub(crate) async fn auto_admit(
    profile: Option<PathBuf>,
    group: String,
    state: Switch,
    out: &Output,
) -> Result<()> {
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

/// `owners GROUP [--add USER | --remove USER | --claim]`.
pub(crate) async fn owners(
    profile: Option<PathBuf>,
    group: String,
    add: Option<String>,
    remove: Option<String>,
    claim: bool,
    out: &Output,
) -> Result<()> {
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
                    m.user.as_str(),
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
            lines.push(format!("owners: {}", join_users(&view.owners)));
            lines.push(format!(
                "auto-admit: {}",
                if view.auto_admit { "on" } else { "off" }
            ));
            if view.pending.is_empty() {
                lines.push("pending invitations: none".to_owned());
            } else {
                lines.push(format!(
                    "pending invitations: {} (an owner runs `rathaus approve {} USER`)",
                    join_users(&view.pending),
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

/// Personnel numbers as a comma-separated list, for people.
fn join_users(users: &[UserId]) -> String {
    users
        .iter()
        .map(UserId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
