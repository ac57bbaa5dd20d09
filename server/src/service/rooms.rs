//! Project rooms (`room/slug`): secret groups not tied to a department, for teams across
//! offices. Any colleague creates one and owns it; owners invite colleagues from any
//! department, who see a pending invitation and accept it (`JoinRoom`), after which an
//! owner's client admits them — the same MLS rules as department secret groups, with the
//! room's record in place of the department's. Administrators see that a room exists and
//! who is in it, never its content, and cannot add anyone.

use rathaus_protocol::{DepartmentSlug, Event, GroupHandle, Response, RoomInvitation, UserId};

use super::refused::{NotFound, SecretRefused};
use super::secret::on_roster;
use super::{Refusal, Service};
use crate::store::{DepartmentRecord, UserRecord, Writes};

/// Most colleagues invited to one room and not joined yet.
const MAX_INVITED: usize = 1_000;

/// Most rooms one colleague owns.
pub(super) const MAX_OWNED_ROOMS: usize = 100;

/// Most open room invitations one colleague has: so many fit in one `RoomInvitations`
/// answer, and nobody fills another's list beyond it.
pub(super) const MAX_OPEN_INVITATIONS: usize = 100;

/// Owners an invitation names at most (the room's first ones).
const OWNERS_SHOWN: usize = 16;

impl Service {
    /// Creates a room owned by `me`.
    pub(super) async fn create_room(
        &self,
        me: &UserRecord,
        slug: DepartmentSlug,
        name: String,
    ) -> Result<Response, Refusal> {
        let name = name.trim().to_owned();
        if name.is_empty() || name.len() > rathaus_protocol::limits::MAX_NAME {
            return Err(SecretRefused::RoomName.into());
        }
        let group = GroupHandle::Room(slug.clone());
        let ticket = {
            let _dir = self.directory();
            if self.db.room(&slug)?.is_some() {
                return Err(SecretRefused::Exists(group).into());
            }
            let rooms = self.db.rooms()?;
            if rooms.iter().filter(|r| r.owners.contains(&me.id)).count() >= MAX_OWNED_ROOMS {
                return Err(SecretRefused::TooManyRooms {
                    max: MAX_OWNED_ROOMS,
                }
                .into());
            }
            let room = DepartmentRecord {
                slug: slug.clone(),
                name: name.clone(),
                owners: vec![me.id.clone()],
                members: vec![me.id.clone()],
                created_ms: self.now_ms(),
            };
            let mut w = Writes::new();
            w.put_room(&room)?;
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                self.now_ms(),
                &me.id,
                "room.create",
                group.to_string(),
                format!("{name:?}"),
            )?;
            self.db.apply(w)?;
            audit.commit();
            self.durability.written()
        };
        self.durable(ticket).await?;
        tracing::info!(%group, by = %me.id, "room created");
        // Its unborn secret group waits for the owner's client.
        self.push_to_all(vec![me.id.clone()], Event::SecretGroupsChanged);
        Ok(Response::Done)
    }

    /// An owner invites `user`: a pending invitation on the invitee's side.
    pub(super) async fn invite_to_room(
        &self,
        me: &UserRecord,
        group: GroupHandle,
        user: UserId,
    ) -> Result<Response, Refusal> {
        let slug = room_slug(&group)?;
        let ticket = {
            let _dir = self.directory();
            let room = self.room_or_not_found(&group, slug)?;
            if !room.owners.contains(&me.id) {
                return Err(SecretRefused::InviteByOwners(group).into());
            }
            if self.db.user(&user)?.is_none_or(|u| u.removed) {
                return Err(NotFound::Colleague(user).into());
            }
            if on_roster(&room, &user) {
                return Ok(Response::Done);
            }
            let mut invited = self.db.room_invitations(slug)?;
            if invited.contains(&user) {
                return Ok(Response::Done);
            }
            if invited.len() >= MAX_INVITED {
                return Err(SecretRefused::TooManyInvitations {
                    group,
                    max: MAX_INVITED,
                }
                .into());
            }
            if self.open_invitations(&user)?.len() >= MAX_OPEN_INVITATIONS {
                return Err(SecretRefused::InviteeHasTooMany {
                    user,
                    max: MAX_OPEN_INVITATIONS,
                }
                .into());
            }
            invited.push(user.clone());
            let mut w = Writes::new();
            w.put_room_invitations(slug, &invited)?;
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                self.now_ms(),
                &me.id,
                "room.invite",
                group.to_string(),
                user.to_string(),
            )?;
            self.db.apply(w)?;
            audit.commit();
            self.durability.written()
        };
        self.durable(ticket).await?;
        self.push_to_all(vec![user], Event::SecretGroupsChanged);
        Ok(Response::Done)
    }

    /// The invitee accepts: on the roster now, so an owner's client admits them.
    pub(super) async fn join_room(
        &self,
        me: &UserRecord,
        group: GroupHandle,
    ) -> Result<Response, Refusal> {
        let slug = room_slug(&group)?;
        let (ticket, room) = {
            let _dir = self.directory();
            let mut room = self.room_or_not_found(&group, slug)?;
            if on_roster(&room, &me.id) {
                return Ok(Response::Done);
            }
            let mut invited = self.db.room_invitations(slug)?;
            if !invited.contains(&me.id) {
                return Err(SecretRefused::NotInvited(group).into());
            }
            invited.retain(|u| *u != me.id);
            room.members.push(me.id.clone());
            let mut w = Writes::new();
            w.put_room(&room)?.put_room_invitations(slug, &invited)?;
            self.db.apply(w)?;
            (self.durability.written(), room)
        };
        self.durable(ticket).await?;
        tracing::info!(%group, user = %me.id, "joined room");
        self.push_to_all(super::secret::roster(&room), Event::SecretGroupsChanged);
        Ok(Response::Done)
    }

    /// Leaves a room: off its roster at once; the removal of the devices is proposed.
    pub(super) async fn leave_room(
        &self,
        me: &UserRecord,
        group: GroupHandle,
    ) -> Result<Response, Refusal> {
        let slug = room_slug(&group)?;
        let ticket = {
            let _dir = self.directory();
            let mut room = self.room_or_not_found(&group, slug)?;
            let mut invited = self.db.room_invitations(slug)?;
            let was_invited = invited.contains(&me.id);
            if !on_roster(&room, &me.id) && !was_invited {
                return Ok(Response::Done);
            }
            room.members.retain(|u| *u != me.id);
            room.owners.retain(|u| *u != me.id);
            invited.retain(|u| *u != me.id);
            let mut w = Writes::new();
            w.put_room(&room)?.put_room_invitations(slug, &invited)?;
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                self.now_ms(),
                &me.id,
                "room.leave",
                group.to_string(),
                String::new(),
            )?;
            self.db.apply(w)?;
            audit.commit();
            self.durability.written()
        };
        self.durable(ticket).await?;
        if let Some(room) = self.db.room(slug)? {
            self.push_to_all(super::secret::roster(&room), Event::SecretGroupsChanged);
        }
        if let Err(e) = self.drive_removal(&group).await {
            tracing::error!(%group, error = ?e.detail, message = %e.message(), "cannot propose removals yet");
        }
        Ok(Response::Done)
    }

    /// The rooms `me` is invited to and has not joined (at most
    /// [`MAX_OPEN_INVITATIONS`], each naming at most [`OWNERS_SHOWN`] owners).
    pub(super) fn room_invitations(&self, me: &UserRecord) -> Result<Response, Refusal> {
        let out = self
            .open_invitations(&me.id)?
            .into_iter()
            .take(MAX_OPEN_INVITATIONS)
            .map(|room| RoomInvitation {
                room: GroupHandle::Room(room.slug.clone()),
                name: room.name,
                owners: room.owners.into_iter().take(OWNERS_SHOWN).collect(),
            })
            .collect();
        Ok(Response::RoomInvitations(out))
    }

    /// The rooms `user` is invited to and has not joined.
    fn open_invitations(&self, user: &UserId) -> Result<Vec<DepartmentRecord>, Refusal> {
        let mut out = Vec::new();
        for room in self.db.rooms()? {
            if self.db.room_invitations(&room.slug)?.contains(user) {
                out.push(room);
            }
        }
        Ok(out)
    }

    fn room_or_not_found(
        &self,
        group: &GroupHandle,
        slug: &DepartmentSlug,
    ) -> Result<DepartmentRecord, Refusal> {
        self.db
            .room(slug)?
            .ok_or_else(|| NotFound::NoSuchRoom(group.clone()).into())
    }
}

fn room_slug(group: &GroupHandle) -> Result<&DepartmentSlug, Refusal> {
    group
        .room()
        .ok_or_else(|| SecretRefused::NotARoom(group.clone()).into())
}
