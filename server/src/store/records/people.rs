//! People: colleagues, their devices and their open enrollment codes.
//!
//! Keys: `user/<id>`, `userfold/<lower-case id>` (finds a personnel number typed in
//! any case), `code/<user>` (see the table in the parent module).

use rathaus_protocol::{DepartmentSlug, DeviceId, DeviceKey, Role, UserId};
use serde::{Deserialize, Serialize};

use super::{code_key, decode, encode, user_fold_key, user_key, Db, StoreError, Writes, USER};

/// A user (a colleague, identified by personnel number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Personnel number.
    pub id: UserId,
    /// Display name.
    pub name: String,
    /// Roles; always contains [`Role::Member`].
    pub roles: Vec<Role>,
    /// Departments the user belongs to.
    pub departments: Vec<DepartmentSlug>,
    /// Argon2id PHC string, set at enrollment.
    pub password_hash: Option<String>,
    /// Every device ever enrolled, revoked ones included (ids are never reused).
    pub devices: Vec<DeviceRecord>,
    /// Offboarded: can never authenticate again; posts remain.
    pub removed: bool,
    /// When the user was provisioned, Unix ms.
    pub created_ms: i64,
}

impl UserRecord {
    /// Whether the user has `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Devices that may still authenticate.
    pub fn active_devices(&self) -> impl Iterator<Item = &DeviceRecord> {
        self.devices.iter().filter(|d| !d.revoked)
    }
}

/// A device of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Server-allocated id.
    pub id: DeviceId,
    /// Ed25519 public key; proves possession at login.
    pub key: DeviceKey,
    /// Name given at enrollment.
    pub name: String,
    /// Enrollment time, Unix ms.
    pub created_ms: i64,
    /// Revoked devices can no longer authenticate.
    pub revoked: bool,
}

/// An open enrollment code. Only its hash is stored, so a database copy cannot enroll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRecord {
    /// SHA-256 of the normalised code.
    pub sha256: [u8; 32],
    /// When it was issued, Unix ms.
    pub created_ms: i64,
    /// When it stops working, Unix ms.
    pub expires_ms: i64,
}

impl Db {
    /// A user.
    pub fn user(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError> {
        self.get(&user_key(id))
    }

    /// [`Db::user`] without holding the caller's thread for a database's round trip.
    pub async fn user_async(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError> {
        self.get_async(&user_key(id)).await
    }

    /// The users `ids`, in their order (`None` where there is none): a roster's records
    /// in one read of the store.
    pub fn users_by_id(&self, ids: &[UserId]) -> Result<Vec<Option<UserRecord>>, StoreError> {
        let keys: Vec<Vec<u8>> = ids.iter().map(user_key).collect();
        self.kv
            .get_many(&keys)?
            .into_iter()
            .zip(&keys)
            .map(|(value, key)| value.map(|v| decode(key, &v)).transpose())
            .collect()
    }

    /// The personnel number as stored, for one typed in any case (`p1001` → `P1001`);
    /// `None` if no such user exists.
    pub fn canonical_user_id(&self, id: &UserId) -> Result<Option<UserId>, StoreError> {
        if self.kv.get(&user_key(id))?.is_some() {
            return Ok(Some(id.clone()));
        }
        let Some(bytes) = self.kv.get(&user_fold_key(id))? else {
            return Ok(None);
        };
        Ok(std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| UserId::parse(s).ok()))
    }

    /// Writes the case-folded index of personnel numbers for stores written before it
    /// existed; returns how many entries it wrote.
    pub fn index_user_ids(&self) -> Result<usize, StoreError> {
        let mut writes = Writes::new();
        let mut n = 0;
        for user in self.users()? {
            if self.kv.get(&user_fold_key(&user.id))?.is_none() {
                writes.batch.put(
                    user_fold_key(&user.id),
                    user.id.as_str().as_bytes().to_vec(),
                );
                n += 1;
            }
        }
        if n > 0 {
            self.apply(writes)?;
        }
        Ok(n)
    }

    /// All users, ordered by id.
    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.all_under(USER)
    }

    /// The user's open enrollment code.
    pub fn code(&self, user: &UserId) -> Result<Option<CodeRecord>, StoreError> {
        self.get(&code_key(user))
    }
}

impl Writes {
    /// Stores a user.
    pub fn put_user(&mut self, user: &UserRecord) -> Result<&mut Self, StoreError> {
        self.records.users = true;
        self.batch.put(user_key(&user.id), encode(user)?);
        // Personnel numbers are matched ignoring case: the folded form names the stored one.
        self.batch.put(
            user_fold_key(&user.id),
            user.id.as_str().as_bytes().to_vec(),
        );
        Ok(self)
    }

    /// Stores the user's open enrollment code (replacing an earlier one).
    pub fn put_code(&mut self, user: &UserId, code: &CodeRecord) -> Result<&mut Self, StoreError> {
        self.batch.put(code_key(user), encode(code)?);
        Ok(self)
    }

    /// Burns the user's enrollment code.
    pub fn remove_code(&mut self, user: &UserId) -> &mut Self {
        self.batch.remove(code_key(user));
        self
    }
}
