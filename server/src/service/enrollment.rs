//! Enrollment of devices: the first one with a one-time code, further ones with the
//! password. Password hashing (Argon2id) runs on the blocking pool.

use std::net::IpAddr;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ed25519_dalek::VerifyingKey;
use rand::rngs::OsRng;
use rathaus_protocol::limits::{MAX_NAME, MAX_PASSWORD, MIN_PASSWORD};
use rathaus_protocol::{DeviceId, DeviceKey, Response, UserId};
use zeroize::{Zeroize, Zeroizing};

use super::auth::check_version;
use super::refused::DirectoryRefused;
use super::throttle::Factor;
use super::{enrollment_codes, Refusal, Service};
use crate::store::{DeviceRecord, UserRecord, Writes};

/// A device to create, as sent in `Enroll` or `AddDevice`. The password is wiped from
/// memory when this is dropped.
#[derive(Clone)]
pub struct NewDevice {
    /// Personnel number.
    pub user: UserId,
    /// The password (chosen at `Enroll`, proven at `AddDevice`).
    pub password: String,
    /// The device's Ed25519 public key.
    pub device_key: DeviceKey,
    /// The device's name.
    pub device_name: String,
}

impl std::fmt::Debug for NewDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDevice")
            .field("user", &self.user)
            .field("device_name", &self.device_name)
            .finish_non_exhaustive()
    }
}

impl Drop for NewDevice {
    fn drop(&mut self) {
        self.password.zeroize();
    }
}

impl Service {
    /// Answers `Enroll`: checks the one-time code, sets the password, creates the first
    /// device and burns the code. The attempt is charged to the throttle before the code
    /// is looked at; the Argon2 hash of the new password takes one of the bounded slots.
    pub async fn enroll(
        &self,
        peer: IpAddr,
        protocol: u16,
        code: &str,
        device: NewDevice,
    ) -> Result<Response, Refusal> {
        check_version(protocol)?;
        let mut device = device;
        device.user = self.canonical_user(&device.user)?;
        let attempt = self.begin_attempt(Factor::EnrollmentCode, &device.user, Some(peer))?;
        let now = self.now_ms();
        if !self.code_matches(&device.user, code, now)? {
            return Err(DirectoryRefused::CodeInvalid.into());
        }
        let chars = device.password.chars().count();
        if chars < MIN_PASSWORD || device.password.len() > MAX_PASSWORD {
            // The code was right; only the new password is not acceptable.
            attempt.succeeded();
            return Err(DirectoryRefused::Password.into());
        }
        let (device_key, device_name) = match validate_device(&device) {
            Ok(v) => v,
            Err(e) => {
                attempt.succeeded();
                return Err(e);
            }
        };
        let slot = match self.argon2_slot() {
            Ok(slot) => slot,
            Err(e) => {
                attempt.not_checked();
                return Err(e);
            }
        };
        let password = Zeroizing::new(device.password.clone());
        let hash = self
            .argon2(slot, move || hash_password(&password))
            .await??;

        let (id, ticket) = {
            let _dir = self.directory();
            // Checked again under the lock: two concurrent uses of one code, one wins.
            if !self.code_matches(&device.user, code, now)? {
                return Err(DirectoryRefused::CodeInvalid.into());
            }
            let mut user = self
                .db
                .user(&device.user)?
                .ok_or(DirectoryRefused::CodeInvalid)?;
            room_for_a_device(&user)?;
            let id = DeviceId(self.db.store().next_id()?);
            user.password_hash = Some(hash);
            user.devices.push(DeviceRecord {
                id,
                key: device_key,
                name: device_name.clone(),
                created_ms: now,
                revoked: false,
            });
            let mut w = Writes::new();
            w.put_user(&user)?.remove_code(&user.id);
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                now,
                &user.id,
                "device.enroll",
                format!("{}/{}", user.id, id),
                enrollment_detail("enrollment code", &device_name, &device_key, peer),
            )?;
            self.db.apply(w)?;
            audit.commit();
            (id, self.durability.written())
        };
        attempt.succeeded();
        self.durable(ticket).await?;
        tracing::info!(user = %device.user, device = %id, "device enrolled with code");
        Ok(Response::Enrolled {
            device: id,
            org: self.org.clone(),
            user: device.user.clone(),
        })
    }

    /// Answers `AddDevice`: checks the password and creates another device. The attempt
    /// is charged to the throttle before the Argon2 check, which takes one of the bounded
    /// slots or is refused with `Unavailable`.
    pub async fn add_device(
        &self,
        peer: IpAddr,
        protocol: u16,
        device: NewDevice,
    ) -> Result<Response, Refusal> {
        check_version(protocol)?;
        let mut device = device;
        device.user = self.canonical_user(&device.user)?;
        let attempt = self.begin_attempt(Factor::Password, &device.user, Some(peer))?;
        let now = self.now_ms();
        if device.password.len() > MAX_PASSWORD {
            return Err(DirectoryRefused::WrongPassword.into());
        }
        let stored_hash = self
            .db
            .user(&device.user)?
            .filter(|u| !u.removed)
            .and_then(|u| u.password_hash);
        let slot = match self.argon2_slot() {
            Ok(slot) => slot,
            Err(e) => {
                attempt.not_checked();
                return Err(e);
            }
        };
        // An unknown or offboarded user costs the same Argon2 check as a known one, so the
        // answer's timing does not tell whether a personnel number exists.
        let password = Zeroizing::new(device.password.clone());
        let ok = self
            .argon2(slot, move || match stored_hash {
                Some(hash) => verify_password(&password, &hash),
                None => {
                    if let Some(hash) = unknown_user_hash() {
                        verify_password(&password, hash);
                    }
                    false
                }
            })
            .await?;
        if !ok {
            return Err(DirectoryRefused::WrongPassword.into());
        }
        attempt.succeeded();
        let (device_key, device_name) = validate_device(&device)?;
        let (id, ticket) = {
            let _dir = self.directory();
            let mut user = self
                .db
                .user(&device.user)?
                .filter(|u| !u.removed)
                .ok_or(DirectoryRefused::WrongPassword)?;
            room_for_a_device(&user)?;
            let id = DeviceId(self.db.store().next_id()?);
            user.devices.push(DeviceRecord {
                id,
                key: device_key,
                name: device_name.clone(),
                created_ms: now,
                revoked: false,
            });
            let mut w = Writes::new();
            w.put_user(&user)?;
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                now,
                &user.id,
                "device.add",
                format!("{}/{}", user.id, id),
                enrollment_detail("password", &device_name, &device_key, peer),
            )?;
            self.db.apply(w)?;
            audit.commit();
            (id, self.durability.written())
        };
        self.durable(ticket).await?;
        tracing::info!(user = %device.user, device = %id, "device added with password");
        Ok(Response::Enrolled {
            device: id,
            org: self.org.clone(),
            user: device.user.clone(),
        })
    }

    /// Whether `typed` is the user's open, unexpired code.
    fn code_matches(&self, user: &UserId, typed: &str, now: i64) -> Result<bool, Refusal> {
        let Some(digest) = enrollment_codes::digest(typed) else {
            return Ok(false);
        };
        let Some(stored) = self.db.code(user)? else {
            return Ok(false);
        };
        let live = self.db.user(user)?.is_some_and(|u| !u.removed);
        Ok(live
            && now < stored.expires_ms
            && enrollment_codes::same_digest(&digest, &stored.sha256))
    }
}

/// The audit entry's detail of an enrollment: how, which device, from where (never the
/// password or code).
fn enrollment_detail(how: &str, name: &str, key: &DeviceKey, peer: IpAddr) -> String {
    let fingerprint: String = key.0[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("with {how}: device {name:?}, key {fingerprint}…, from {peer}")
}

fn validate_device(device: &NewDevice) -> Result<(DeviceKey, String), Refusal> {
    if VerifyingKey::from_bytes(&device.device_key.0).is_err() {
        return Err(DirectoryRefused::DeviceKey.into());
    }
    let name = device.device_name.trim();
    if name.len() > MAX_NAME {
        return Err(DirectoryRefused::DeviceName.into());
    }
    let name = if name.is_empty() { "device" } else { name };
    Ok((device.device_key, name.to_owned()))
}

pub(super) fn hash_password(password: &str) -> Result<String, Refusal> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Refusal::internal(format!("argon2 hashing: {e}")))
}

/// A hash to check passwords against for users that do not exist (or have no password):
/// made once, with the same Argon2 parameters as every real hash.
fn unknown_user_hash() -> Option<&'static str> {
    static HASH: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        // The password is random and thrown away: nothing can match this hash.
        let secret = SaltString::generate(&mut OsRng);
        hash_password(secret.as_str()).ok()
    })
    .as_deref()
}

pub(super) fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "stored password hash is unreadable");
            false
        }
    }
}

/// Devices one colleague may have active at once (Signal links at most five).
pub(super) const MAX_ACTIVE_DEVICES: usize = 16;

/// Devices ever enrolled under one id (revoked ones stay on record, so that their proofs
/// are refused and their leaves removed).
pub(super) const MAX_DEVICE_RECORDS: usize = 256;

/// Whether `user` may enroll one more device.
fn room_for_a_device(user: &UserRecord) -> Result<(), Refusal> {
    let active = user.active_devices().count();
    if active >= MAX_ACTIVE_DEVICES || user.devices.len() >= MAX_DEVICE_RECORDS {
        return Err(DirectoryRefused::TooManyDevices {
            user: user.id.clone(),
            active,
            records: MAX_DEVICE_RECORDS,
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The stand-in hash for unknown users costs what a real one costs: same algorithm,
    /// version and parameters, and no password matches it.
    #[test]
    fn unknown_users_are_checked_against_an_equally_costly_hash() {
        let stand_in = PasswordHash::new(unknown_user_hash().unwrap()).unwrap();
        let real_phc = hash_password("correct horse battery").unwrap();
        let real = PasswordHash::new(&real_phc).unwrap();
        assert_eq!(stand_in.algorithm, real.algorithm);
        assert_eq!(stand_in.version, real.version);
        assert_eq!(stand_in.params, real.params);
        assert!(!verify_password("", unknown_user_hash().unwrap()));
        assert!(!verify_password(
            "correct horse battery",
            unknown_user_hash().unwrap()
        ));
    }
}
