//! A user's own devices and password (DESIGN §3): listing the devices with their keys
//! (which another device of the same user compares with a link code before admitting
//! it), revoking one, and changing the password used to add devices.

use rathaus_protocol::limits::{MAX_PASSWORD, MIN_PASSWORD};
use rathaus_protocol::{DeviceId, DeviceInfo, GroupHandle, Response};
use zeroize::Zeroizing;

use super::enrollment::{hash_password, verify_password};
use super::refused::{DirectoryRefused, NotFound};
use super::secret::secret_handle;
use super::throttle::Factor;
use super::{Refusal, Service, Session};
use crate::store::{UserRecord, Writes};

impl Service {
    /// The session user's active devices with their keys.
    pub(super) fn own_devices(&self, me: &UserRecord) -> Result<Response, Refusal> {
        Ok(Response::Devices(
            me.active_devices()
                .map(|d| DeviceInfo {
                    device: d.id,
                    name: d.name.clone(),
                    key: d.key,
                    created_ms: d.created_ms,
                })
                .collect(),
        ))
    }

    /// Revokes one of the session user's other devices: it can no longer log in, its
    /// connections end, and its leaves are proposed for removal from every secret group.
    pub(super) async fn remove_device(
        &self,
        session: &Session,
        me: &UserRecord,
        device: DeviceId,
    ) -> Result<Response, Refusal> {
        if device == session.device {
            return Err(DirectoryRefused::RemoveThisDevice.into());
        }
        let ticket = {
            let _dir = self.directory();
            let mut user = self.session_user(session)?;
            let Some(record) = user
                .devices
                .iter_mut()
                .find(|d| d.id == device && !d.revoked)
            else {
                return Err(NotFound::OwnDevice(device).into());
            };
            record.revoked = true;
            let name = record.name.clone();
            let mut w = Writes::new();
            w.put_user(&user)?;
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                self.now_ms(),
                &me.id,
                "device.remove",
                format!("{}/{device}", me.id),
                format!("{name:?}"),
            )?;
            self.db.apply(w)?;
            audit.commit();
            self.durability.written()
        };
        self.durable(ticket).await?;
        self.live.end_device(&me.id, device);
        self.db.store().notify_sessions(me.id.as_str());
        tracing::info!(user = %me.id, %device, "device revoked by its user");
        self.remove_revoked_devices(&me.departments).await;
        Ok(Response::Done)
    }

    /// Changes the session user's password after checking the current one.
    pub(super) async fn change_password(
        &self,
        session: &Session,
        me: &UserRecord,
        old: String,
        new: String,
    ) -> Result<Response, Refusal> {
        if new.chars().count() < MIN_PASSWORD || new.len() > MAX_PASSWORD {
            return Err(DirectoryRefused::Password.into());
        }
        let phc = me
            .password_hash
            .clone()
            .ok_or(DirectoryRefused::NoPassword)?;
        // A session (a device left unlocked) must not be a way to guess the password
        // quickly: the check is charged to the user's password counter like AddDevice.
        let attempt = self.begin_attempt(Factor::Password, &me.id, None)?;
        let slot = match self.argon2_slot() {
            Ok(slot) => slot,
            Err(e) => {
                attempt.not_checked();
                return Err(e);
            }
        };
        let old = Zeroizing::new(old);
        let matches = self
            .argon2(slot, move || verify_password(&old, &phc))
            .await?;
        if !matches {
            return Err(DirectoryRefused::CurrentPasswordWrong.into());
        }
        attempt.succeeded();
        let slot = self.argon2_slot()?;
        let new = Zeroizing::new(new);
        let hash = self.argon2(slot, move || hash_password(&new)).await??;
        let ticket = {
            let _dir = self.directory();
            let mut user = self.session_user(session)?;
            user.password_hash = Some(hash);
            let mut w = Writes::new();
            w.put_user(&user)?;
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                self.now_ms(),
                &me.id,
                "user.password",
                me.id.as_str(),
                String::new(),
            )?;
            self.db.apply(w)?;
            audit.commit();
            self.durability.written()
        };
        self.durable(ticket).await?;
        tracing::info!(user = %me.id, "password changed");
        Ok(Response::Done)
    }

    /// Proposes the removal of revoked devices from the secret groups of `departments`
    /// (DESIGN §5.5); failures are retried by the background task.
    pub(super) async fn remove_revoked_devices(
        &self,
        departments: &[rathaus_protocol::DepartmentSlug],
    ) {
        for slug in departments {
            let group: GroupHandle = secret_handle(slug);
            if let Err(e) = self.drive_removal(&group).await {
                tracing::error!(%group, error = ?e.detail, message = %e.message(), "cannot propose removals yet");
            }
        }
    }
}
