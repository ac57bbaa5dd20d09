//! Project rooms (`room/slug`, DESIGN §4): secret groups across departments. The creator
//! owns the room; owners invite colleagues, who accept (`join_room`); the inviting owner's
//! client then admits them on its next sync — only the colleagues *it* invited, so a
//! server that puts someone on a room's roster admits nobody by that alone.

use rathaus_protocol::{DepartmentSlug, GroupHandle, Request, Response, RoomInvitation, UserId};

use super::mls_group_id;
use super::send::Intent;
use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::store;

impl Client {
    /// Creates a room owned by this user and its MLS group on this device.
    pub async fn create_room(&mut self, slug: &DepartmentSlug, name: &str) -> Result<GroupHandle> {
        let request = Request::CreateRoom {
            slug: slug.clone(),
            name: name.to_owned(),
        };
        match self.request(&request).await? {
            Response::Done => {}
            _ => return Err(ClientError::UnexpectedResponse("CreateRoom")),
        }
        let room = GroupHandle::Room(slug.clone());
        self.sync_secret_group(&room).await?;
        Ok(room)
    }

    /// An owner invites a colleague; once they accept, this device admits them.
    pub async fn invite_to_room(&mut self, room: &GroupHandle, user: &UserId) -> Result<()> {
        let request = Request::InviteToRoom {
            room: room.clone(),
            user: user.clone(),
        };
        match self.request(&request).await? {
            Response::Done => {}
            _ => return Err(ClientError::UnexpectedResponse("InviteToRoom")),
        }
        store::set_setting_on(
            self.mls.connection(),
            &invited_key(&mls_group_id(room), user),
            Some("1"),
        )?;
        // They may have accepted already (an earlier invitation).
        self.sync_secret_group(room).await?;
        Ok(())
    }

    /// The rooms this user is invited to.
    pub async fn room_invitations(&mut self) -> Result<Vec<RoomInvitation>> {
        match self.request(&Request::RoomInvitations).await? {
            Response::RoomInvitations(r) => Ok(r),
            _ => Err(ClientError::UnexpectedResponse("RoomInvitations")),
        }
    }

    /// Accepts an invitation; this device joins once the inviting owner's client admitted
    /// it (on its next sync).
    pub async fn join_room(&mut self, room: &GroupHandle) -> Result<()> {
        match self
            .request(&Request::JoinRoom { room: room.clone() })
            .await?
        {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse("JoinRoom")),
        }
    }

    /// Leaves a room: the server stops delivering it at once and has this user's devices
    /// removed from it.
    pub async fn leave_room(&mut self, room: &GroupHandle) -> Result<()> {
        match self
            .request(&Request::LeaveRoom { room: room.clone() })
            .await?
        {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse("LeaveRoom")),
        }
    }

    /// The pending colleagues of a room that this device's user invited: an owner's
    /// client admits these on sync.
    pub(super) fn invited_by_me(
        &self,
        room: &GroupHandle,
        pending: &[UserId],
    ) -> Result<Vec<UserId>> {
        let gid = mls_group_id(room);
        let conn = self.mls.connection();
        let mut out = Vec::new();
        for user in pending {
            if store::setting_on(conn, &invited_key(&gid, user))?.is_some() {
                out.push(user.clone());
            }
        }
        Ok(out)
    }

    /// Admits the colleagues this owner invited who accepted.
    pub(super) async fn admit_invited(
        &mut self,
        room: &GroupHandle,
        pending: &[UserId],
    ) -> Result<()> {
        let users = self.invited_by_me(room, pending)?;
        if !users.is_empty() {
            self.commit_intent(room, Intent::Add(users)).await?;
        }
        Ok(())
    }
}

fn invited_key(gid: &[u8], user: &UserId) -> String {
    format!("room_invited:{}:{user}", String::from_utf8_lossy(gid))
}
