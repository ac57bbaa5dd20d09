//! Thousands of colleagues written straight into a server's store, and bare data
//! directories, for load tests and benchmarks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use ed25519_dalek::SigningKey;
use rathaus_client::net::Connection;
use rathaus_protocol::{DepartmentSlug, DeviceId, DeviceKey, Role, UserId};
use rathaus_server::store::{DepartmentRecord, DeviceRecord, UserRecord, Writes};
use rathaus_server::InitOptions;

use crate::now_ms;

/// A user with one device, written straight into a server's store (no enrollment, no
/// Argon2): how the load tests and benchmarks get thousands of colleagues quickly.
#[derive(Clone)]
pub struct ProvisionedUser {
    /// Personnel number.
    pub id: UserId,
    /// The device's id.
    pub device: DeviceId,
    /// The device's key.
    pub key: SigningKey,
}

impl std::fmt::Debug for ProvisionedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionedUser")
            .field("id", &self.id)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl ProvisionedUser {
    /// Connects over `endpoint` (shared by many connections) and authenticates.
    pub async fn connect(
        &self,
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        fingerprint: &str,
    ) -> Result<Connection> {
        let conn =
            Connection::connect_with_endpoint(endpoint.clone(), &addr.to_string(), fingerprint)
                .await?;
        conn.authenticate(&self.id, self.device, &self.key).await?;
        Ok(conn)
    }
}

/// What to write with [`provision_users`].
#[derive(Debug, Clone)]
pub struct Provisioning<'a> {
    /// Personnel numbers are `{prefix}{index}`.
    pub prefix: &'a str,
    /// How many users.
    pub count: usize,
    /// Departments (created if missing) every user is a member of.
    pub departments: &'a [&'a str],
    /// Extra roles of every user (`member` is always given).
    pub roles: &'a [Role],
}

/// Writes users with one device each straight into the (stopped) server's data directory
/// `data_dir` (as made by `init`), and makes them members of `departments`. Flushes
/// before returning.
pub fn provision_users(data_dir: &Path, what: &Provisioning<'_>) -> Result<Vec<ProvisionedUser>> {
    let store = rathaus_server::open_records(data_dir)?;
    let db = rathaus_server::store::Db::new(store.clone());
    let now = now_ms();
    let mut roles = vec![Role::Member];
    roles.extend(what.roles.iter().copied().filter(|r| *r != Role::Member));
    let departments = what
        .departments
        .iter()
        .map(|d| DepartmentSlug::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mut users = Vec::with_capacity(what.count);
    for chunk_start in (0..what.count).step_by(1000) {
        let mut w = Writes::new();
        for i in chunk_start..(chunk_start + 1000).min(what.count) {
            let id = UserId::parse(&format!("{}{i}", what.prefix))?;
            // Deterministic keys: generating 40,000 random keys is no faster and these
            // accounts only exist for the duration of a test.
            let mut seed = [0u8; 32];
            seed[..what.prefix.len().min(16)]
                .copy_from_slice(&what.prefix.as_bytes()[..what.prefix.len().min(16)]);
            seed[24..].copy_from_slice(&(i as u64).to_be_bytes());
            let key = SigningKey::from_bytes(&seed);
            let device = DeviceId(store.next_id()?);
            w.put_user(&UserRecord {
                id: id.clone(),
                name: format!("Kollegin {i}"),
                roles: roles.clone(),
                departments: departments.clone(),
                password_hash: None,
                devices: vec![DeviceRecord {
                    id: device,
                    key: DeviceKey(key.verifying_key().to_bytes()),
                    name: "provisioned".into(),
                    created_ms: now,
                    revoked: false,
                }],
                removed: false,
                created_ms: now,
            })?;
            users.push(ProvisionedUser { id, device, key });
        }
        db.apply(w)?;
    }
    let mut w = Writes::new();
    for slug in &departments {
        let mut dept = db.department(slug)?.unwrap_or_else(|| DepartmentRecord {
            slug: slug.clone(),
            name: slug.as_str().to_owned(),
            owners: Vec::new(),
            members: Vec::new(),
            created_ms: now,
        });
        dept.members.extend(users.iter().map(|u| u.id.clone()));
        w.put_department(&dept)?;
    }
    db.apply(w)?;
    store.flush_blocking()?;
    Ok(users)
}

/// Initialises a server data directory in `root` (no clients enrolled) and returns it;
/// its records are in sled (for [`provision_users`], which writes them directly).
pub fn init_data_dir(root: &Path) -> Result<PathBuf> {
    init_data_dir_on(root, None)
}

/// Like [`init_data_dir`], with the records in the PostgreSQL database `store` names
/// (`None`: sled in the data directory).
pub fn init_data_dir_on(root: &Path, store: Option<&str>) -> Result<PathBuf> {
    let data = root.join("server");
    rathaus_server::init(
        &InitOptions {
            data_dir: data.clone(),
            listen: Some("127.0.0.1:0".parse()?),
            org: Some("Stadt Teststadt".into()),
            admin_user: None,
            store: store.map(str::to_owned),
        },
        &rathaus_server::clock::SystemClock,
    )?;
    Ok(data)
}
