//! The client: a profile (key + store) and, when online, an authenticated connection.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rathaus_protocol::{
    DepartmentInfo, DepartmentSlug, DeviceId, DeviceKey, GroupHandle, GroupKind, MemberInfo,
    Request, Response, Role, SessionInfo, UserId, UserSummary, PROTOCOL_VERSION,
};
use rustls_pki_types::CertificateDer;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{ClientError, Result};
use crate::mls::{DeviceIdentity, MlsEngine};
use crate::net::{CaTrust, Connection, ServerTrust, Subscription};
use crate::store::{self, ProfileStore};

/// Settings keys in the profile store.
mod keys {
    pub(super) const SERVER: &str = "server";
    pub(super) const FINGERPRINT: &str = "fingerprint";
    /// How the server is trusted: `fingerprint` (also when unset: profiles from before CA
    /// validation) or `ca` (the certificates are in the `server_ca` table).
    pub(super) const SERVER_TRUST: &str = "server_trust";
    /// The TLS server name checked by CA validation.
    pub(super) const SERVER_NAME: &str = "server_name";
    pub(super) const USER: &str = "user";
    pub(super) const DEVICE: &str = "device";
    pub(super) const ORG: &str = "org";
}

/// Who this profile is and where its server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Server address, `host:port`, or the nodes of a cluster separated by commas, tried
    /// in order (see [`crate::net::server_addresses`]).
    pub server: String,
    /// How the server's certificate is trusted: a pinned fingerprint or a CA.
    pub trust: ServerTrust,
    /// Personnel number.
    pub user: UserId,
    /// This device.
    pub device: DeviceId,
    /// Organisation name.
    pub org: String,
}

/// What enrollment needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// Server address, `host:port`, or the nodes of a cluster separated by commas.
    pub server: String,
    /// How to trust the server's certificate: the fingerprint printed by
    /// `rathaus-server init`, or the CA that issued it.
    pub trust: ServerTrust,
    /// Personnel number.
    pub user: UserId,
    /// One-time enrollment code from the admin.
    pub code: String,
    /// The password to set.
    pub password: String,
    /// A name for this device.
    pub device_name: String,
}

/// A group as listed for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// Handle.
    pub handle: GroupHandle,
    /// Kind.
    pub kind: GroupKind,
    /// Display name.
    pub name: String,
    /// Latest seq on the server.
    pub head: u64,
    /// Entries after the user's read mark.
    pub unread: u64,
}

/// A Rathaus client bound to one profile directory.
#[derive(Debug)]
pub struct Client {
    /// The profile directory.
    pub(crate) dir: PathBuf,
    /// The profile database.
    pub(crate) store: ProfileStore,
    /// The device key (transport auth; MLS signature key).
    pub(crate) key: SigningKey,
    /// Who we are.
    pub(crate) identity: Identity,
    /// The authenticated connection, once connected.
    pub(crate) conn: Option<(Connection, SessionInfo)>,
    /// MLS state of the secret groups, on its own connection to the profile file (so a
    /// processed message and its history rows commit in one transaction there).
    pub(crate) mls: MlsEngine,
    /// Told how a long catch-up goes (see [`Client::on_catch_up`]).
    pub(crate) catch_up: Option<CatchUpHook>,
    /// Index into the server addresses of the node that answered last: tried first next
    /// time, so a dead node costs one failed attempt, not one per connection.
    pub(crate) server_at: usize,
}

/// A function told how a catch-up goes.
pub(crate) struct CatchUpHook(Box<dyn FnMut(&CatchUp) + Send>);

impl std::fmt::Debug for CatchUpHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CatchUpHook")
    }
}

/// How far fetching one group's backlog has come: after each page of entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    /// The group being fetched.
    pub group: String,
    /// Entries fetched so far in this catch-up.
    pub done: u64,
    /// Entries the server held beyond the cursor when it started (grows if more arrive).
    pub total: u64,
}

impl Client {
    /// Has `hook` told, after each page, how far fetching a group's backlog has come (a
    /// progress bar for long catch-ups). Called only for backlogs beyond one page.
    pub fn on_catch_up(&mut self, hook: impl FnMut(&CatchUp) + Send + 'static) {
        self.catch_up = Some(CatchUpHook(Box::new(hook)));
    }

    /// Tells the catch-up hook, if any, about a page (beyond the first of a backlog that
    /// fits in one page, which is over before anyone could look).
    pub(crate) fn report_catch_up(&mut self, group: &str, start: u64, last: u64, head: u64) {
        let total = head.saturating_sub(start);
        if total <= u64::from(rathaus_protocol::limits::MAX_FETCH) {
            return;
        }
        if let Some(hook) = self.catch_up.as_mut() {
            (hook.0)(&CatchUp {
                group: group.to_owned(),
                done: last.saturating_sub(start),
                total,
            });
        }
    }

    /// Enrolls a new device with a one-time code and creates the profile in `dir`.
    /// The password and code are wiped from memory once sent.
    pub async fn enroll(dir: &Path, mut options: EnrollOptions) -> Result<Client> {
        let password = Zeroizing::new(std::mem::take(&mut options.password));
        let code = Zeroizing::new(std::mem::take(&mut options.code));
        if dir.join(store::DB_FILE).exists() || dir.join(store::KEY_FILE).exists() {
            return Err(ClientError::AlreadyEnrolled(dir.to_path_buf()));
        }
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let (conn, _) = Connection::connect_any(&options.server, 0, &options.trust).await?;
        let mut request = Request::Enroll {
            protocol: PROTOCOL_VERSION,
            user: options.user.clone(),
            code: code.to_string(),
            password: password.to_string(),
            device_key: DeviceKey(key.verifying_key().to_bytes()),
            device_name: options.device_name.clone(),
        };
        let response = conn.request(&request).await;
        wipe_secrets(&mut request);
        conn.close().await;
        // The server answers with the personnel number as it stores it (typed in any case).
        let (device, org, user) = match response? {
            Response::Enrolled { device, org, user } => (device, org, user),
            _ => return Err(ClientError::UnexpectedResponse("Enroll")),
        };
        let mut client =
            Self::create_profile(dir, key, &options.server, &options.trust, user, device, org)?;
        client.publish_initial_key_packages().await;
        Ok(client)
    }

    /// Enrolls another device of an already enrolled user, proven by the password.
    pub async fn add_device(
        dir: &Path,
        server: &str,
        trust: &ServerTrust,
        user: UserId,
        password: &str,
        device_name: &str,
    ) -> Result<Client> {
        if dir.join(store::DB_FILE).exists() || dir.join(store::KEY_FILE).exists() {
            return Err(ClientError::AlreadyEnrolled(dir.to_path_buf()));
        }
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let (conn, _) = Connection::connect_any(server, 0, trust).await?;
        let mut request = Request::AddDevice {
            protocol: PROTOCOL_VERSION,
            user: user.clone(),
            password: password.to_owned(),
            device_key: DeviceKey(key.verifying_key().to_bytes()),
            device_name: device_name.to_owned(),
        };
        let response = conn.request(&request).await;
        wipe_secrets(&mut request);
        conn.close().await;
        let (device, org, user) = match response? {
            Response::Enrolled { device, org, user } => (device, org, user),
            _ => return Err(ClientError::UnexpectedResponse("AddDevice")),
        };
        let mut client = Self::create_profile(dir, key, server, trust, user, device, org)?;
        client.publish_initial_key_packages().await;
        Ok(client)
    }

    /// Opens an enrolled profile.
    pub fn open(dir: &Path) -> Result<Client> {
        if !dir.join(store::DB_FILE).exists() {
            return Err(ClientError::NotEnrolled(dir.to_path_buf()));
        }
        let key = store::load_device_key(dir)?;
        let store = ProfileStore::open(dir)?;
        let get = |k: &str| -> Result<String> {
            store
                .setting(k)?
                .ok_or_else(|| ClientError::NotEnrolled(dir.to_path_buf()))
        };
        let user = UserId::parse(&get(keys::USER)?)
            .map_err(|e| ClientError::Invalid(format!("corrupt profile: {e}")))?;
        let device = get(keys::DEVICE)?
            .parse::<u64>()
            .map_err(|_| ClientError::Invalid("corrupt profile: device id".into()))?;
        let trust = match store.setting(keys::SERVER_TRUST)?.as_deref() {
            None | Some("fingerprint") => ServerTrust::Pinned(get(keys::FINGERPRINT)?),
            Some("ca") => {
                let certificates = store
                    .server_ca()?
                    .into_iter()
                    .map(CertificateDer::from)
                    .collect();
                let ca = CaTrust::from_der(certificates, &get(keys::SERVER_NAME)?)
                    .map_err(|e| ClientError::Invalid(format!("corrupt profile: {e}")))?;
                ServerTrust::Ca(ca)
            }
            Some(other) => {
                return Err(ClientError::Invalid(format!(
                    "corrupt profile: unknown server trust {other:?}"
                )))
            }
        };
        let identity = Identity {
            server: get(keys::SERVER)?,
            trust,
            user,
            device: DeviceId(device),
            org: store.setting(keys::ORG)?.unwrap_or_default(),
        };
        let mls = open_engine(dir, &key, &identity)?;
        Ok(Client {
            dir: dir.to_path_buf(),
            store,
            key,
            identity,
            conn: None,
            mls,
            catch_up: None,
            server_at: 0,
        })
    }

    /// Who this profile is.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The profile directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The local store (read access for apps and tools).
    pub fn store(&self) -> &ProfileStore {
        &self.store
    }

    /// Connects and authenticates, if not connected yet. Returns the session.
    pub async fn connect(&mut self) -> Result<SessionInfo> {
        if let Some((conn, info)) = &self.conn {
            if conn.raw().close_reason().is_none() {
                return Ok(info.clone());
            }
        }
        self.conn = None;
        // Nodes of a cluster share the database: a node that is unreachable, or that
        // goes away during the login, passes to the next.
        let count = crate::net::server_addresses(&self.identity.server).len();
        let mut attempt = 0;
        loop {
            let (conn, at) = Connection::connect_any(
                &self.identity.server,
                self.server_at,
                &self.identity.trust,
            )
            .await?;
            match conn
                .authenticate(&self.identity.user, self.identity.device, &self.key)
                .await
            {
                Ok(info) => {
                    self.server_at = at;
                    self.conn = Some((conn, info.clone()));
                    return Ok(info);
                }
                Err(
                    e @ (ClientError::ConnectionLost(_)
                    | ClientError::ServerShuttingDown
                    | ClientError::Timeout(_)),
                ) if attempt + 1 < count => {
                    tracing::info!(error = %e, "login failed on one node, trying the next");
                    self.server_at = at + 1;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes the connection, if any.
    pub async fn disconnect(&mut self) {
        if let Some((conn, _)) = self.conn.take() {
            conn.close().await;
        }
    }

    /// Sends one request over the authenticated connection, connecting first if needed.
    pub async fn request(&mut self, request: &Request) -> Result<Response> {
        self.connect().await?;
        let (conn, _) = self
            .conn
            .as_ref()
            .ok_or_else(|| ClientError::ConnectionLost("not connected".into()))?;
        let result = conn.request(request).await;
        if let Err(e) = &result {
            if e.is_transient() {
                self.conn = None;
            }
        }
        result
    }

    /// The session as the server sees it now.
    pub async fn whoami(&mut self) -> Result<SessionInfo> {
        match self.request(&Request::Whoami).await? {
            Response::Me(info) => Ok(info),
            _ => Err(ClientError::UnexpectedResponse("Whoami")),
        }
    }

    /// The groups this user can see, with unread counts.
    pub async fn groups(&mut self) -> Result<Vec<GroupView>> {
        let groups = match self.request(&Request::ListGroups).await? {
            Response::Groups(g) => g,
            _ => return Err(ClientError::UnexpectedResponse("ListGroups")),
        };
        groups
            .into_iter()
            .map(|g| {
                let mark = self.store.read_mark(&g.handle.to_string())?;
                Ok(GroupView {
                    unread: g.head.saturating_sub(mark),
                    handle: g.handle,
                    kind: g.kind,
                    name: g.name,
                    head: g.head,
                })
            })
            .collect()
    }

    /// The members of a group.
    pub async fn members(&mut self, group: &GroupHandle) -> Result<Vec<MemberInfo>> {
        match self
            .request(&Request::Members {
                group: group.clone(),
            })
            .await?
        {
            Response::Members { members, .. } => Ok(members),
            _ => Err(ClientError::UnexpectedResponse("Members")),
        }
    }

    /// Opens the event subscription on the current connection.
    pub async fn subscribe(&mut self) -> Result<Subscription> {
        self.connect().await?;
        let (conn, _) = self
            .conn
            .as_ref()
            .ok_or_else(|| ClientError::ConnectionLost("not connected".into()))?;
        conn.subscribe().await
    }

    /// Admin: creates a department and its public group.
    pub async fn admin_add_department(
        &mut self,
        slug: DepartmentSlug,
        name: &str,
        owners: Vec<UserId>,
    ) -> Result<DepartmentInfo> {
        let request = Request::AddDepartment {
            slug,
            name: name.to_owned(),
            owners,
        };
        match self.request(&request).await? {
            Response::Department(d) => Ok(d),
            _ => Err(ClientError::UnexpectedResponse("AddDepartment")),
        }
    }

    /// Admin: provisions a user; returns the one-time enrollment code and its expiry.
    pub async fn admin_add_user(
        &mut self,
        user: UserId,
        name: &str,
        departments: Vec<DepartmentSlug>,
        roles: Vec<Role>,
    ) -> Result<(String, i64)> {
        let request = Request::AddUser {
            user,
            name: name.to_owned(),
            departments,
            roles,
        };
        match self.request(&request).await? {
            Response::UserAdded {
                enrollment_code,
                expires_at_ms,
                ..
            } => Ok((enrollment_code, expires_at_ms)),
            _ => Err(ClientError::UnexpectedResponse("AddUser")),
        }
    }

    /// Admin: offboards a user.
    pub async fn admin_remove_user(&mut self, user: UserId) -> Result<()> {
        match self.request(&Request::RemoveUser { user }).await? {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse("RemoveUser")),
        }
    }

    /// Admin: all users.
    pub async fn admin_users(&mut self) -> Result<Vec<UserSummary>> {
        match self.request(&Request::ListUsers).await? {
            Response::Users(u) => Ok(u),
            _ => Err(ClientError::UnexpectedResponse("ListUsers")),
        }
    }

    /// Admin: all departments.
    pub async fn admin_departments(&mut self) -> Result<Vec<DepartmentInfo>> {
        match self.request(&Request::ListDepartments).await? {
            Response::Departments(d) => Ok(d),
            _ => Err(ClientError::UnexpectedResponse("ListDepartments")),
        }
    }

    fn create_profile(
        dir: &Path,
        key: SigningKey,
        server: &str,
        trust: &ServerTrust,
        user: UserId,
        device: DeviceId,
        org: String,
    ) -> Result<Client> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ClientError::io(format!("cannot create {}", dir.display()), e))?;
        store::restrict_permissions(dir)?;
        store::write_device_key(dir, &key)?;
        let store = ProfileStore::open(dir)?;
        store.set_setting(keys::SERVER, server)?;
        match trust {
            ServerTrust::Pinned(fingerprint) => {
                store.set_setting(keys::SERVER_TRUST, "fingerprint")?;
                store.set_setting(keys::FINGERPRINT, fingerprint)?;
            }
            ServerTrust::Ca(ca) => {
                store.set_server_ca(ca.certificates().iter().map(|c| c.as_ref()))?;
                store.set_setting(keys::SERVER_NAME, ca.server_name())?;
                store.set_setting(keys::SERVER_TRUST, "ca")?;
            }
        }
        store.set_setting(keys::USER, user.as_str())?;
        store.set_setting(keys::DEVICE, &device.0.to_string())?;
        store.set_setting(keys::ORG, &org)?;
        let identity = Identity {
            server: server.to_owned(),
            trust: trust.clone(),
            user,
            device,
            org,
        };
        let mls = open_engine(dir, &key, &identity)?;
        Ok(Client {
            dir: dir.to_path_buf(),
            store,
            key,
            identity,
            conn: None,
            mls,
            catch_up: None,
            server_at: 0,
        })
    }
}

/// Overwrites the passwords and code a request carried, once it is sent.
pub(crate) fn wipe_secrets(request: &mut Request) {
    match request {
        Request::Enroll { code, password, .. } => {
            code.zeroize();
            password.zeroize();
        }
        Request::AddDevice { password, .. } => password.zeroize(),
        Request::ChangePassword { old, new } => {
            old.zeroize();
            new.zeroize();
        }
        _ => {}
    }
}

/// Prepared statements each connection to the profile file keeps (rusqlite's default
/// is 16).
pub(crate) const STATEMENT_CACHE: usize = 128;

/// Opens the MLS engine on a second connection to the profile file. WAL mode (set by
/// the store) lets both connections work on the file; the busy timeout covers the moments
/// one of them writes.
fn open_engine(dir: &Path, key: &SigningKey, identity: &Identity) -> Result<MlsEngine> {
    let conn = rusqlite::Connection::open(dir.join(store::DB_FILE))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Deleted MLS secrets (used epoch keys, consumed KeyPackage private keys) are
    // overwritten instead of lingering in free pages; per connection, so set here too.
    conn.pragma_update(None, "secure_delete", "ON")?;
    // Room for every statement a page of secret-group entries runs (store, trust and
    // engine), so none is parsed again per entry.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let me = DeviceIdentity::new(identity.user.as_str(), &identity.device.0.to_string())?;
    Ok(MlsEngine::with_connection(conn, key.clone(), me)?)
}
