//! Dispatch: each command to the function of its group (`enroll.rs`, `posts.rs`,
//! `sync.rs`, `members.rs`, …), and the profile every command opens.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use rathaus_client::Client;
use rathaus_protocol::UserId;

use crate::enroll::ServerArgs;
use crate::output::Output;
use crate::{Cli, Command};

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
            let server = ServerArgs {
                server,
                fingerprint,
                ca,
                server_name,
            };
            crate::enroll::enroll(
                profile,
                server,
                &user,
                code,
                device_name,
                password_stdin,
                out,
            )
            .await
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
            let server = ServerArgs {
                server,
                fingerprint,
                ca,
                server_name,
            };
            crate::enroll::add_device(profile, server, &user, device_name, password_stdin, out)
                .await
        }
        Command::Whoami => crate::enroll::whoami(profile, out).await,
        Command::Admin { command } => crate::admin::admin(profile, command, out).await,
        Command::Groups => crate::sync::groups(profile, out).await,
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
        Command::Sync => crate::sync::sync(profile, out).await,
        Command::Listen { count } => crate::listen::listen(profile, count, out).await,
        Command::Approve { group, user, all } => {
            crate::members::approve(profile, group, user, all, out).await
        }
        Command::AutoAdmit { group, state } => {
            crate::members::auto_admit(profile, group, state, out).await
        }
        Command::Devices { command } => crate::devices::devices(profile, command, out).await,
        Command::Outbox { cancel } => crate::sync::outbox(profile, cancel, out),
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
        Command::Moderate { group, seq } => crate::posts::moderate(profile, &group, seq, out).await,
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

pub(crate) fn profile_dir(profile: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = profile {
        return Ok(p);
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("no profile given: use --profile DIR or set RATHAUS_PROFILE"))?;
    Ok(PathBuf::from(home).join(".rathaus"))
}
