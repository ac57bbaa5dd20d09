//! `rathaus room …`: secret project rooms across departments.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use rathaus_protocol::{DepartmentSlug, GroupHandle, UserId};
use serde_json::json;

use crate::commands::open;
use crate::output::Output;
use crate::RoomCommand;

pub(crate) async fn room(
    profile: Option<PathBuf>,
    command: RoomCommand,
    out: &Output,
) -> Result<()> {
    let mut client = open(profile)?;
    match command {
        RoomCommand::Create { slug, name } => {
            let room = client
                .create_room(&DepartmentSlug::parse(&slug)?, &name)
                .await?;
            out.print(json!({"room": room.to_string(), "name": name}), || {
                format!(
                    "created {room} ({name}); you own it. Invite colleagues with `rathaus room \
                     invite {room} P1002`"
                )
            });
        }
        RoomCommand::Invite { room, user } => {
            let room = parse_room(&room)?;
            let user = UserId::parse(&user)?;
            client.invite_to_room(&room, &user).await?;
            out.print(
                json!({"room": room.to_string(), "invited": user.as_str()}),
                || {
                    format!(
                        "invited {user} to {room}; once they accept (`rathaus room join {room}`), \
                     your next sync admits them"
                    )
                },
            );
        }
        RoomCommand::Join { room } => {
            let room = parse_room(&room)?;
            client.join_room(&room).await?;
            out.print(json!({"room": room.to_string(), "joined": true}), || {
                format!("accepted the invitation to {room}; you are in once its owner's client admits you")
            });
        }
        RoomCommand::Leave { room } => {
            let room = parse_room(&room)?;
            client.leave_room(&room).await?;
            out.print(json!({"room": room.to_string(), "left": true}), || {
                format!("left {room}")
            });
        }
        RoomCommand::Invitations => {
            let invitations = client.room_invitations().await?;
            let list: Vec<_> = invitations
                .iter()
                .map(|i| {
                    let owners: Vec<&str> = i.owners.iter().map(|o| o.as_str()).collect();
                    json!({"room": i.room.to_string(), "name": i.name, "owners": owners})
                })
                .collect();
            out.print(json!({"invitations": list}), || {
                if invitations.is_empty() {
                    return "no invitations".to_owned();
                }
                invitations
                    .iter()
                    .map(|i| {
                        format!(
                            "{}  {}  (join with `rathaus room join {}`)",
                            i.room, i.name, i.room
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

fn parse_room(room: &str) -> Result<GroupHandle> {
    let handle = GroupHandle::parse(room)?;
    if handle.room().is_none() {
        return Err(anyhow!(
            "{room} is not a room; rooms are named like room/sanierung"
        ));
    }
    Ok(handle)
}
