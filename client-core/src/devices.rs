//! A user's own devices (DESIGN §3, §5.9): listing them with key fingerprints, linking a
//! further device — which joins the user's secret groups only after one of the user's
//! existing devices approved it, as Signal links devices — revoking one, and changing
//! the password that adds devices.
//!
//! Linking: the new device (`rathaus add-device`) shows its *link code*, derived from its
//! key ([`rathaus_protocol::mls::link_code`]). On an existing device the user types it
//! (`rathaus devices approve CODE`); that device finds the listed device whose key gives
//! the code, pins the key as linked, and commits an Add of that device to every secret
//! group it is in, with a KeyPackage that must carry exactly that key. The new device in
//! turn treats the device whose Welcome admitted it as linked.

use rathaus_protocol::mls::{link_code, normalize_link_code};
use rathaus_protocol::{DepartmentSlug, DeviceId, GroupHandle, Request, Response, UserId};

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::secret::key_fingerprint;

/// One of this user's devices, as `rathaus devices` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnDevice {
    /// The device number.
    pub device: DeviceId,
    /// Its name.
    pub name: String,
    /// Fingerprint of its key, to compare.
    pub fingerprint: String,
    /// Whether it is the device asking.
    pub this_device: bool,
    /// Whether it is linked with this device (approved by it, or its approver).
    pub linked: bool,
    /// When it was enrolled, Unix ms.
    pub created_ms: i64,
}

/// What approving a device did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedDevice {
    /// The device approved.
    pub device: DeviceId,
    /// The secret groups it was added to, with the seq of each commit.
    pub groups: Vec<(GroupHandle, u64)>,
}

impl Client {
    /// The code this device shows so that another device of the same user can admit it.
    pub fn link_code(&self) -> String {
        link_code(&self.key.verifying_key().to_bytes())
    }

    /// This user's active devices, as the server lists them.
    pub async fn devices(&mut self) -> Result<Vec<OwnDevice>> {
        let listed = match self.request(&Request::OwnDevices).await? {
            Response::Devices(d) => d,
            _ => return Err(ClientError::UnexpectedResponse("OwnDevices")),
        };
        listed
            .into_iter()
            .map(|d| {
                let this_device = d.device == self.identity.device;
                Ok(OwnDevice {
                    fingerprint: key_fingerprint(&d.key.0),
                    linked: !this_device && self.is_linked(&d.device.to_string())?,
                    this_device,
                    device: d.device,
                    name: d.name,
                    created_ms: d.created_ms,
                })
            })
            .collect()
    }

    /// Approves a further device of this user by the link code it shows: links it and adds
    /// it to every secret group this device is in.
    pub async fn approve_device(&mut self, code: &str) -> Result<LinkedDevice> {
        let code = normalize_link_code(code);
        let listed = match self.request(&Request::OwnDevices).await? {
            Response::Devices(d) => d,
            _ => return Err(ClientError::UnexpectedResponse("OwnDevices")),
        };
        let Some(device) = listed
            .into_iter()
            .find(|d| d.device != self.identity.device && link_code(&d.key.0) == code)
        else {
            return Err(ClientError::Invalid(format!(
                "none of your devices shows the code {code}; check the code on the new device \
                 (if it is right, the server lists another key for it: do not approve)"
            )));
        };
        self.link_own_device(&device.device.to_string(), &device.key.0)?;
        let mut groups = Vec::new();
        for info in self.secret_group_infos().await? {
            if let Some(seq) = self.link_into_group(&info.group, device.device).await? {
                groups.push((info.group, seq));
            }
        }
        Ok(LinkedDevice {
            device: device.device,
            groups,
        })
    }

    /// Revokes one of this user's other devices: it can no longer log in and leaves every
    /// secret group.
    pub async fn remove_device(&mut self, device: DeviceId) -> Result<()> {
        match self.request(&Request::RemoveDevice { device }).await? {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse("RemoveDevice")),
        }
    }

    /// Changes this user's password (the one that adds devices).
    pub async fn change_password(&mut self, old: &str, new: &str) -> Result<()> {
        let mut request = Request::ChangePassword {
            old: old.to_owned(),
            new: new.to_owned(),
        };
        let response = self.request(&request).await;
        crate::client::wipe_secrets(&mut request);
        match response? {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse("ChangePassword")),
        }
    }

    /// Admin: moves a user between departments; returns the user's departments after.
    pub async fn admin_set_departments(
        &mut self,
        user: UserId,
        add: Vec<DepartmentSlug>,
        remove: Vec<DepartmentSlug>,
    ) -> Result<Vec<DepartmentSlug>> {
        match self
            .request(&Request::SetDepartments { user, add, remove })
            .await?
        {
            Response::User(u) => Ok(u.departments),
            _ => Err(ClientError::UnexpectedResponse("SetDepartments")),
        }
    }

    /// Admin: revokes all devices of a user and issues a new enrollment code (lost phone,
    /// forgotten password); returns the code and its expiry.
    pub async fn admin_reset_user(&mut self, user: UserId) -> Result<(String, i64)> {
        match self.request(&Request::ResetUser { user }).await? {
            Response::UserAdded {
                enrollment_code,
                expires_at_ms,
                ..
            } => Ok((enrollment_code, expires_at_ms)),
            _ => Err(ClientError::UnexpectedResponse("ResetUser")),
        }
    }
}
