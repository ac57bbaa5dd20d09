//! KeyPackages (DESIGN §5.3): devices upload them, owners claim one per device of a user
//! they add; each one-time package is handed out once, then the last-resort one.

use std::sync::PoisonError;

use openmls::prelude::KeyPackage;
use rathaus_protocol::{ClaimedKeyPackage, DeviceId, Event, GroupHandle, Response, UserId};

use super::mls::{device_of, validate_key_package};
use super::refused::{MlsRefused, NotFound, SecretRefused};
use super::{Refusal, Service, Session};
use crate::store::{DepartmentRecord, KeyPackageRecord, SecretGroupRecord, UserRecord, Writes};

/// One-time packages kept per device; more are refused.
pub(crate) const MAX_ONE_TIME: usize = 100;

/// Below this many one-time packages a device is told to publish more.
const LOW_WATER: usize = 5;

impl Service {
    pub(super) async fn publish_key_packages(
        &self,
        session: &Session,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<Response, Refusal> {
        if one_time.len() > MAX_ONE_TIME {
            return Err(SecretRefused::TooManyKeyPackages(MAX_ONE_TIME).into());
        }
        let device_key = self.device_key(&session.user, session.device)?;
        for bytes in one_time.iter().chain(last_resort.iter()) {
            let kp = validate_key_package(&self.crypto, bytes)?;
            check_own_package(&kp, session, &device_key)?;
        }
        let (status, ticket) = {
            let _mls = self.mls_lock();
            let mut record = self.db.key_packages(&session.user, session.device)?;
            let room = MAX_ONE_TIME.saturating_sub(record.one_time.len());
            if one_time.len() > room {
                return Err(SecretRefused::KeyPackagesFull {
                    held: record.one_time.len(),
                    room,
                }
                .into());
            }
            record.one_time.extend(one_time);
            if let Some(lr) = last_resort {
                record.last_resort = Some(lr);
            }
            let mut w = Writes::new();
            w.put_key_packages(&session.user, session.device, &record)?;
            self.db.apply(w)?;
            (status(&record), self.durability.written())
        };
        self.durable(ticket).await?;
        tracing::debug!(user = %session.user, device = %session.device, "KeyPackages published");
        Ok(status)
    }

    pub(super) fn key_package_status(&self, session: &Session) -> Result<Response, Refusal> {
        Ok(status(
            &self.db.key_packages(&session.user, session.device)?,
        ))
    }

    pub(super) async fn claim_key_packages(
        &self,
        session: &Session,
        me: &UserRecord,
        group: GroupHandle,
        user: UserId,
    ) -> Result<Response, Refusal> {
        let dept = self.secret_department(&group)?;
        if !super::secret::on_roster(&dept, &user) {
            return Err(SecretRefused::ClaimOffRoster { user, group }.into());
        }
        let target = self
            .db
            .user(&user)?
            .filter(|u| !u.removed)
            .ok_or_else(|| Refusal::from(NotFound::User(user.clone())))?;
        let (packages, low, ticket) = {
            let _mls = self.mls_lock();
            // Authorised under the lock, so a claim never races a birth or a removal.
            let record = self.db.secret_group(&group)?;
            judge_claim(&group, &dept, record.as_ref(), &me.id, session.device)?;
            let mut w = Writes::new();
            let mut packages = Vec::new();
            let mut low = Vec::new();
            for device in target.active_devices() {
                let mut record = self.db.key_packages(&user, device.id)?;
                if record.one_time.is_empty() {
                    if let Some(lr) = &record.last_resort {
                        packages.push(ClaimedKeyPackage {
                            device: device.id,
                            key_package: lr.clone(),
                            last_resort: true,
                        });
                        low.push((device.id, 0));
                    }
                    continue;
                }
                let key_package = record.one_time.remove(0);
                packages.push(ClaimedKeyPackage {
                    device: device.id,
                    key_package,
                    last_resort: false,
                });
                if record.one_time.len() < LOW_WATER {
                    low.push((device.id, record.one_time.len()));
                }
                w.put_key_packages(&user, device.id, &record)?;
            }
            self.db.apply(w)?;
            (packages, low, self.durability.written())
        };
        // A package handed out must stay handed out after a crash.
        self.durable(ticket).await?;
        tracing::debug!(%group, %user, by = %me.id, packages = packages.len(), "KeyPackages claimed");
        for (device, remaining) in low {
            self.push_to(
                &user,
                Some(device),
                Event::KeyPackagesLow {
                    remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                },
            );
        }
        Ok(Response::KeyPackages { user, packages })
    }

    /// The registered key of an active device.
    pub(super) fn device_key(&self, user: &UserId, device: DeviceId) -> Result<[u8; 32], Refusal> {
        self.db
            .user(user)?
            .filter(|u| !u.removed)
            .and_then(|u| u.active_devices().find(|d| d.id == device).map(|d| d.key.0))
            .ok_or_else(|| {
                Refusal::from(NotFound::Device {
                    user: user.clone(),
                    device,
                })
            })
    }

    pub(super) fn mls_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // Guards no data of its own; a poisoned lock is as good as a clean one.
        self.mls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether the device `(me, device)` may claim KeyPackages for `group`, whose department
/// is `dept` and whose MLS state the server holds as `record` (`None` before its birth):
/// a member device on the roster once the group is born, an owner before. Claiming
/// takes packages nobody else can then use, so strangers must not drain them.
fn judge_claim(
    group: &GroupHandle,
    dept: &DepartmentRecord,
    record: Option<&SecretGroupRecord>,
    me: &UserId,
    device: DeviceId,
) -> Result<(), SecretRefused> {
    match record {
        Some(record) => {
            let in_tree = record
                .members
                .iter()
                .any(|m| m.user == *me && m.device == device);
            if !in_tree || !super::secret::on_roster(dept, me) {
                return Err(SecretRefused::ClaimByMembers(group.clone()));
            }
        }
        None => {
            if !dept.owners.contains(me) {
                return Err(SecretRefused::ClaimByOwners(group.clone()));
            }
        }
    }
    Ok(())
}

/// A KeyPackage a device uploads must name that device and carry its registered key.
fn check_own_package(kp: &KeyPackage, session: &Session, key: &[u8; 32]) -> Result<(), Refusal> {
    let leaf = kp.leaf_node();
    let named = device_of(leaf.credential());
    if named.as_ref() != Some(&(session.user.clone(), session.device)) {
        return Err(MlsRefused::KeyPackageCredential {
            user: session.user.clone(),
            device: session.device,
        }
        .into());
    }
    if leaf.signature_key().as_slice() != key {
        return Err(MlsRefused::KeyPackageKey.into());
    }
    Ok(())
}

fn status(record: &KeyPackageRecord) -> Response {
    Response::KeyPackageStatus {
        one_time: u32::try_from(record.one_time.len()).unwrap_or(u32::MAX),
        last_resort: record.last_resort.is_some(),
    }
}
