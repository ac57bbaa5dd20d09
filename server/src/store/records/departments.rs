//! Departments and project rooms, with their rosters and a room's open invitations.
//!
//! Keys: `dept/<slug>`, `room/<slug>`, `roominv/<slug>` (see the table in the parent
//! module).

use rathaus_protocol::{DepartmentSlug, UserId};
use serde::{Deserialize, Serialize};

use super::{department_key, encode, key, Db, StoreError, Writes, DEPT, ROOM, ROOM_INVITED};

/// A department with its public group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepartmentRecord {
    /// Short name and public group handle.
    pub slug: DepartmentSlug,
    /// Display name.
    pub name: String,
    /// Owners (also members).
    pub owners: Vec<UserId>,
    /// Members (the roster).
    pub members: Vec<UserId>,
    /// Creation time, Unix ms.
    pub created_ms: i64,
}

impl Db {
    /// A department.
    pub fn department(
        &self,
        slug: &DepartmentSlug,
    ) -> Result<Option<DepartmentRecord>, StoreError> {
        self.get(&department_key(slug))
    }

    /// Whether department `slug` exists, without decoding its record (which lists every
    /// member: reading it per post would make a post cost grow with the department).
    pub fn department_exists(&self, slug: &DepartmentSlug) -> Result<bool, StoreError> {
        Ok(self.kv.get(&department_key(slug))?.is_some())
    }

    /// [`Db::department_exists`] without holding the caller's thread for a database's
    /// round trip.
    pub async fn department_exists_async(&self, slug: &DepartmentSlug) -> Result<bool, StoreError> {
        Ok(self.kv.get_async(&department_key(slug)).await?.is_some())
    }

    /// All departments, ordered by slug.
    pub fn departments(&self) -> Result<Vec<DepartmentRecord>, StoreError> {
        self.all_under(DEPT)
    }

    /// A project room (`room/slug`): same shape as a department — owners and the roster —
    /// kept under its own keys so it is never mistaken for one.
    pub fn room(&self, slug: &DepartmentSlug) -> Result<Option<DepartmentRecord>, StoreError> {
        self.get(&key(ROOM, &[slug.as_str().as_bytes()]))
    }

    /// Every project room.
    pub fn rooms(&self) -> Result<Vec<DepartmentRecord>, StoreError> {
        self.all_under(ROOM)
    }

    /// Users invited to a room who have not joined yet.
    pub fn room_invitations(&self, slug: &DepartmentSlug) -> Result<Vec<UserId>, StoreError> {
        Ok(self
            .get(&key(ROOM_INVITED, &[slug.as_str().as_bytes()]))?
            .unwrap_or_default())
    }
}

impl Writes {
    /// Stores a department.
    pub fn put_department(&mut self, dept: &DepartmentRecord) -> Result<&mut Self, StoreError> {
        self.records.departments = true;
        self.batch.put(department_key(&dept.slug), encode(dept)?);
        Ok(self)
    }

    /// Stores a project room's record.
    pub fn put_room(&mut self, room: &DepartmentRecord) -> Result<&mut Self, StoreError> {
        self.batch
            .put(key(ROOM, &[room.slug.as_str().as_bytes()]), encode(room)?);
        Ok(self)
    }

    /// Stores who is invited to a room and has not joined yet.
    pub fn put_room_invitations(
        &mut self,
        slug: &DepartmentSlug,
        invited: &[UserId],
    ) -> Result<&mut Self, StoreError> {
        self.batch.put(
            key(ROOM_INVITED, &[slug.as_str().as_bytes()]),
            encode(&invited.to_vec())?,
        );
        Ok(self)
    }
}
