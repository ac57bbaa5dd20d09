//! [`TestBackend`]: a real server on `127.0.0.1:0` (in this process or as a child
//! process) with a temporary data directory, a manual clock, and real clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use rathaus_client::{Client, EnrollOptions, ServerTrust};
use rathaus_protocol::{DepartmentSlug, Role, UserId};
use rathaus_server::clock::ManualClock;
use rathaus_server::store::Store;
use rathaus_server::{InitOptions, RunOptions, RunningServer};

use crate::{init_tracing, now_ms, workspace_bin, ServerProcess, TestDatabase, PASSWORD};

/// A real server in this process plus the directories of its clients.
pub struct TestBackend {
    /// Server data directory (removed on drop).
    pub data: tempfile::TempDir,
    /// Client profiles live below this directory.
    pub profiles: tempfile::TempDir,
    /// The running server, if running in this process.
    pub server: Option<RunningServer>,
    /// The running server, if running as a `rathaus-server` child process
    /// (see [`TestBackend::start_process`]).
    pub process: Option<ServerProcess>,
    /// Where a child process server writes its log (stderr), if anywhere.
    pub server_log: Option<PathBuf>,
    /// The server's clock, advanced by tests (enrollment expiry, throttling).
    pub clock: Arc<ManualClock>,
    /// Where the server listens.
    pub addr: SocketAddr,
    /// Its certificate fingerprint.
    pub fingerprint: String,
    /// A CA-issued certificate and its key (PEM files) the server serves instead of its
    /// self-signed one, if any (see [`TestBackend::start_with_certificate`]).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The blob directory the in-process server is started with ([`TestBackend::run`];
    /// `[files] dir`), if not `DIR/blobs`.
    pub files_dir: Option<PathBuf>,
    /// The bootstrap admin's id and one-time code (consumed by [`TestBackend::admin`]).
    admin_code: Option<(String, String)>,
    /// The server's PostgreSQL database under `RATHAUS_TEST_STORE` (dropped after the
    /// server, being the last field); `None`: the sled database in the data directory.
    pub database: Option<TestDatabase>,
}

impl TestBackend {
    /// Initialises a data directory and starts a server on `127.0.0.1:0`.
    pub async fn start() -> Result<Self> {
        Self::start_serving(None).await
    }

    /// Like [`TestBackend::start`], but on the sled database in the data directory
    /// whatever `RATHAUS_TEST_STORE` says (for tests of sled data directories).
    pub async fn start_on_sled() -> Result<Self> {
        Self::start_serving_on(None, None).await
    }

    /// Like [`TestBackend::start`], on `database` (`None`: sled in the data directory)
    /// whatever `RATHAUS_TEST_STORE` says.
    pub async fn start_on(database: Option<TestDatabase>) -> Result<Self> {
        Self::start_serving_on(None, database).await
    }

    /// Like [`TestBackend::start`], with the records in the (empty) PostgreSQL database
    /// `store` names, exactly as given (e.g. with `sslmode` and `sslrootcert`); nothing is
    /// created or dropped there.
    pub async fn start_on_store(store: &str) -> Result<Self> {
        Self::start_inner(None, None, Some(store.to_owned())).await
    }

    /// Like [`TestBackend::start`], but the server presents `cert` (issued by a CA, e.g.
    /// [`TestCa::issue`]) with its private key `key`.
    pub async fn start_with_certificate(cert: &Path, key: &Path) -> Result<Self> {
        Self::start_serving(Some((cert.to_path_buf(), key.to_path_buf()))).await
    }

    async fn start_serving(tls: Option<(PathBuf, PathBuf)>) -> Result<Self> {
        Self::start_serving_on(tls, TestDatabase::create_if_configured()?).await
    }

    async fn start_serving_on(
        tls: Option<(PathBuf, PathBuf)>,
        database: Option<TestDatabase>,
    ) -> Result<Self> {
        let store = database.as_ref().map(|d| d.url().to_owned());
        Self::start_inner(tls, database, store).await
    }

    async fn start_inner(
        tls: Option<(PathBuf, PathBuf)>,
        database: Option<TestDatabase>,
        store: Option<String>,
    ) -> Result<Self> {
        init_tracing();
        let data = tempfile::tempdir()?;
        let profiles = tempfile::tempdir()?;
        let clock = Arc::new(ManualClock::new(now_ms()));
        let report = rathaus_server::init(
            &InitOptions {
                data_dir: data.path().join("server"),
                listen: Some("127.0.0.1:0".parse()?),
                org: Some("Stadt Teststadt".into()),
                admin_user: None,
                store,
            },
            clock.as_ref(),
        )?;
        let mut backend = Self {
            data,
            profiles,
            server: None,
            process: None,
            server_log: None,
            clock,
            addr: "127.0.0.1:0".parse()?,
            fingerprint: report.fingerprint.clone(),
            tls,
            files_dir: None,
            admin_code: Some((report.admin_user, report.enrollment_code)),
            database,
        };
        backend.run().await?;
        Ok(backend)
    }

    /// Like [`TestBackend::start`], but the server runs as a `rathaus-server run` child
    /// process (so it can be SIGKILLed, see [`TestBackend::kill`]). With `log`, the server
    /// runs with `RUST_LOG=trace` and its stderr goes to that file (appended across
    /// restarts).
    pub async fn start_process(log: Option<PathBuf>) -> Result<Self> {
        init_tracing();
        let data = tempfile::tempdir()?;
        let profiles = tempfile::tempdir()?;
        let clock = Arc::new(ManualClock::new(now_ms()));
        let database = TestDatabase::create_if_configured()?;
        let report = rathaus_server::init(
            &InitOptions {
                data_dir: data.path().join("server"),
                listen: Some("127.0.0.1:0".parse()?),
                org: Some("Stadt Teststadt".into()),
                admin_user: None,
                store: database.as_ref().map(|d| d.url().to_owned()),
            },
            clock.as_ref(),
        )?;
        let mut backend = Self {
            data,
            profiles,
            server: None,
            process: None,
            server_log: log,
            clock,
            addr: "127.0.0.1:0".parse()?,
            fingerprint: report.fingerprint.clone(),
            tls: None,
            files_dir: None,
            admin_code: Some((report.admin_user, report.enrollment_code)),
            database,
        };
        backend.spawn_process()?;
        Ok(backend)
    }

    /// SIGKILLs the child process server (no shutdown handler runs).
    pub fn kill(&mut self) -> Result<()> {
        match self.process.take() {
            Some(p) => p.kill(),
            None => bail!("no server process to kill"),
        }
    }

    /// Restarts the child process server on the same address.
    pub fn restart_process(&mut self) -> Result<()> {
        if let Some(p) = self.process.take() {
            p.kill()?;
        }
        self.spawn_process()
    }

    fn spawn_process(&mut self) -> Result<()> {
        let process = ServerProcess::launch(
            &workspace_bin("rathaus-server")?,
            &self.data_dir(),
            &self.addr.to_string(),
            self.server_log.as_deref(),
            self.tls.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )?;
        self.addr = process.addr;
        self.fingerprint = process.fingerprint.clone();
        self.process = Some(process);
        Ok(())
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().join("server")
    }

    /// Opens the stopped server's records where they are: its PostgreSQL database, or the
    /// sled database in the data directory (flush it before starting the server again).
    pub fn open_store(&self) -> Result<Arc<dyn Store>> {
        Ok(rathaus_server::open_records(&self.data_dir())?)
    }

    /// The stopped server's records, concatenated key and value (of its database, or the
    /// bytes of every file of the data directory on sled): where no plaintext of a secret
    /// group may be found.
    pub fn stored_bytes(&self) -> Result<Vec<u8>> {
        match &self.database {
            Some(d) => d.dump(),
            None => {
                let mut out = Vec::new();
                let mut stack = vec![self.data_dir()];
                while let Some(path) = stack.pop() {
                    let meta = std::fs::symlink_metadata(&path)?;
                    if meta.is_dir() {
                        for entry in std::fs::read_dir(&path)? {
                            stack.push(entry?.path());
                        }
                    } else if meta.is_file() {
                        // Regular files only: the operations socket is no data.
                        out.extend(std::fs::read(&path)?);
                    }
                }
                Ok(out)
            }
        }
    }

    /// Starts the server (again), on the same port if it ran before.
    pub async fn run(&mut self) -> Result<()> {
        let mut options = RunOptions::new(self.data_dir());
        options.listen = Some(self.addr);
        options.clock = self.clock.clone();
        options.files_dir.clone_from(&self.files_dir);
        if let Some((cert, key)) = &self.tls {
            options.cert = Some(cert.clone());
            options.key = Some(key.clone());
        }
        let server = rathaus_server::start(options).await?;
        self.addr = server.local_addr();
        self.fingerprint = server.fingerprint();
        self.server = Some(server);
        Ok(())
    }

    /// Stops the server gracefully (a child process server is killed).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        if let Some(process) = self.process.take() {
            let _ = process.kill();
        }
    }

    /// Enrolls the bootstrap admin (once).
    pub async fn admin(&mut self) -> Result<Client> {
        let (user, code) = self
            .admin_code
            .take()
            .ok_or_else(|| anyhow!("the admin was enrolled already"))?;
        Ok(self.enroll(&user, &code).await?)
    }

    /// The bootstrap admin's id and enrollment code, without enrolling (for CLI tests).
    pub fn take_admin_code(&mut self) -> Option<(String, String)> {
        self.admin_code.take()
    }

    /// Enrolls `user` with `code` into a fresh profile.
    pub async fn enroll(&self, user: &str, code: &str) -> rathaus_client::Result<Client> {
        self.enroll_at(&self.addr.to_string(), user, code).await
    }

    /// Like [`TestBackend::enroll`], through (and afterwards connecting to) `server`: e.g.
    /// another node on the same database, presenting the same certificate.
    pub async fn enroll_at(
        &self,
        server: &str,
        user: &str,
        code: &str,
    ) -> rathaus_client::Result<Client> {
        let dir = self.profile_dir(user);
        let user_id =
            UserId::parse(user).map_err(|e| rathaus_client::ClientError::Invalid(e.to_string()))?;
        Client::enroll(
            &dir,
            EnrollOptions {
                server: server.to_owned(),
                trust: ServerTrust::Pinned(self.fingerprint.clone()),
                user: user_id,
                code: code.to_owned(),
                password: PASSWORD.to_owned(),
                device_name: format!("{user}'s test device"),
            },
        )
        .await
    }

    /// A fresh, unused profile directory for `user`.
    pub fn profile_dir(&self, user: &str) -> PathBuf {
        for n in 0.. {
            let dir = self.profiles.path().join(format!("{user}-{n}"));
            if !dir.exists() {
                return dir;
            }
        }
        unreachable!("an unbounded counter always finds a free name")
    }

    /// Creates a department via the admin client.
    pub async fn department(&self, admin: &mut Client, slug: &str, owners: &[&str]) -> Result<()> {
        let owners = owners
            .iter()
            .map(|o| UserId::parse(o))
            .collect::<Result<Vec<_>, _>>()?;
        admin
            .admin_add_department(DepartmentSlug::parse(slug)?, slug, owners)
            .await?;
        Ok(())
    }

    /// Provisions `user` via the admin client and returns its one-time code.
    pub async fn provision(
        &self,
        admin: &mut Client,
        user: &str,
        name: &str,
        departments: &[&str],
        roles: &[Role],
    ) -> Result<String> {
        let departments = departments
            .iter()
            .map(|d| DepartmentSlug::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        let (code, _) = admin
            .admin_add_user(UserId::parse(user)?, name, departments, roles.to_vec())
            .await?;
        Ok(code)
    }

    /// Provisions and enrolls a member of `departments`.
    pub async fn user(
        &self,
        admin: &mut Client,
        user: &str,
        name: &str,
        departments: &[&str],
    ) -> Result<Client> {
        self.staff(admin, user, name, departments, &[]).await
    }

    /// Provisions and enrolls a colleague with `roles` (beyond `member`).
    pub async fn staff(
        &self,
        admin: &mut Client,
        user: &str,
        name: &str,
        departments: &[&str],
        roles: &[Role],
    ) -> Result<Client> {
        let code = self
            .provision(admin, user, name, departments, roles)
            .await?;
        Ok(self.enroll(user, &code).await?)
    }

    /// Runs the retention policies now, by the server's (manual) clock.
    pub async fn enforce_retention(&self) -> Result<Vec<rathaus_server::service::RetentionRun>> {
        let server = self
            .server
            .as_ref()
            .ok_or_else(|| anyhow!("the server is not running"))?;
        Ok(server.enforce_retention().await?)
    }
}
