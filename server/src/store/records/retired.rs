//! Retired departments.
//!
//! Keys (continuing the table in the parent module):
//!
//! | key | value |
//! |---|---|
//! | `retired/<slug>` | [`RetiredDepartment`] |
//!
//! The department record itself is deleted when a department is retired; this record
//! remains, so that its groups' logs stay readable as they ended, posts to them are
//! refused with a reason, and the slug is never handed out again (a new department under
//! it would show its members the old one's history).

use rathaus_protocol::{DepartmentSlug, UserId};
use serde::{Deserialize, Serialize};

use super::{encode, key, Db, StoreError, Writes};

/// A department that was retired by an administrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredDepartment {
    /// Its slug (also in the key).
    pub slug: DepartmentSlug,
    /// Its display name when it was retired, for the refusal of later posts.
    pub name: String,
    /// The administrator who retired it.
    pub by: UserId,
    /// When, Unix ms.
    pub retired_ms: i64,
}

impl Db {
    /// The retirement record of `slug`, if the department was retired.
    pub fn retired_department(
        &self,
        slug: &DepartmentSlug,
    ) -> Result<Option<RetiredDepartment>, StoreError> {
        self.get(&retired_key(slug))
    }

    /// Every retired department, ordered by slug.
    pub fn retired_departments(&self) -> Result<Vec<RetiredDepartment>, StoreError> {
        self.all_under(RETIRED)
    }
}

impl Writes {
    /// Retires a department: deletes its record and keeps `retired`.
    pub fn retire_department(
        &mut self,
        retired: &RetiredDepartment,
    ) -> Result<&mut Self, StoreError> {
        self.records.departments = true;
        self.batch.remove(super::department_key(&retired.slug));
        self.batch.put(retired_key(&retired.slug), encode(retired)?);
        Ok(self)
    }
}

const RETIRED: &[u8] = b"retired/";

fn retired_key(slug: &DepartmentSlug) -> Vec<u8> {
    key(RETIRED, &[slug.as_str().as_bytes()])
}
