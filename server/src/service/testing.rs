//! A service over memory with a manual clock, and helpers to provision and enroll.

use std::net::IpAddr;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use rathaus_protocol::{DeviceId, DeviceKey, Request, Response, Role, UserId, PROTOCOL_VERSION};

use super::{bootstrap, NewDevice, Service, Session};
use crate::clock::ManualClock;
use crate::store::{Db, MemoryStore};

pub(crate) const T0: i64 = 1_750_000_000_000;
pub(crate) const PASSWORD: &str = "correct horse battery";

pub(crate) struct Fixture {
    pub(crate) service: Service,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) admin: Session,
}

pub(crate) fn removal_key() -> super::RemovalKey {
    super::RemovalKey::new(SigningKey::from_bytes(&[0xee; 32]))
}

pub(crate) fn addr() -> IpAddr {
    IpAddr::from([192, 0, 2, 1])
}

pub(crate) fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

impl Fixture {
    pub(crate) async fn new() -> Self {
        let clock = Arc::new(ManualClock::new(T0));
        let db = Db::new(Arc::new(MemoryStore::new()));
        let code = bootstrap(&db, T0, "Stadt Musterhausen", &uid("admin")).unwrap();
        let service = Service::new(db, clock.clone(), removal_key()).unwrap();
        let device = enroll(&service, "admin", &code).await.unwrap();
        let admin = Session {
            user: uid("admin"),
            device,
        };
        Self {
            service,
            clock,
            admin,
        }
    }

    /// Adds and enrolls a user; returns their session.
    pub(crate) async fn user(&self, id: &str, roles: &[Role]) -> Session {
        let code = self.add_user(id, roles).await;
        let device = enroll(&self.service, id, &code).await.unwrap();
        Session {
            user: uid(id),
            device,
        }
    }

    /// Adds a user; returns the enrollment code.
    pub(crate) async fn add_user(&self, id: &str, roles: &[Role]) -> String {
        let r = self
            .service
            .handle(
                &self.admin,
                Request::AddUser {
                    user: uid(id),
                    name: format!("User {id}"),
                    departments: Vec::new(),
                    roles: roles.to_vec(),
                },
            )
            .await
            .unwrap();
        match r {
            Response::UserAdded {
                enrollment_code, ..
            } => enrollment_code,
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub(crate) fn new_device(user: &str, password: &str) -> NewDevice {
    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    NewDevice {
        user: uid(user),
        password: password.into(),
        device_key: DeviceKey(key.to_bytes()),
        device_name: "test".into(),
    }
}

pub(crate) async fn enroll(
    service: &Service,
    user: &str,
    code: &str,
) -> Result<DeviceId, super::Refusal> {
    match service
        .enroll(addr(), PROTOCOL_VERSION, code, new_device(user, PASSWORD))
        .await?
    {
        Response::Enrolled { device, .. } => Ok(device),
        other => panic!("unexpected {other:?}"),
    }
}
