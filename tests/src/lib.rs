//! End-to-end test fixtures for Rathaus: a real server on `127.0.0.1:0` with a temporary
//! data directory and a manual clock, and real clients with temporary profiles.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let mut backend = rathaus_tests::TestBackend::start().await?;
//! let mut admin = backend.admin().await?;
//! backend.department(&mut admin, "bauamt", &[]).await?;
//! let mut anna = backend.user(&mut admin, "P1001", "Anna Berg", &["bauamt"]).await?;
//! # Ok(()) }
//! ```

pub mod operator;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ed25519_dalek::SigningKey;
use rathaus_client::net::Connection;
use rathaus_client::{Client, EnrollOptions, ServerTrust};
use rathaus_protocol::{DepartmentSlug, DeviceId, DeviceKey, Role, UserId};
use rathaus_server::clock::ManualClock;
use rathaus_server::store::{
    DepartmentRecord, DeviceRecord, SledStore, Store as _, UserRecord, Writes,
};
use rathaus_server::{InitOptions, RunOptions, RunningServer};

/// Password every fixture user enrolls with.
pub const PASSWORD: &str = "correct horse battery staple";

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
    /// The bootstrap admin's id and one-time code (consumed by [`TestBackend::admin`]).
    admin_code: Option<(String, String)>,
}

impl TestBackend {
    /// Initialises a data directory and starts a server on `127.0.0.1:0`.
    pub async fn start() -> Result<Self> {
        Self::start_serving(None).await
    }

    /// Like [`TestBackend::start`], but the server presents `cert` (issued by a CA, e.g.
    /// [`TestCa::issue`]) with its private key `key`.
    pub async fn start_with_certificate(cert: &Path, key: &Path) -> Result<Self> {
        Self::start_serving(Some((cert.to_path_buf(), key.to_path_buf()))).await
    }

    async fn start_serving(tls: Option<(PathBuf, PathBuf)>) -> Result<Self> {
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
            admin_code: Some((report.admin_user, report.enrollment_code)),
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
        let report = rathaus_server::init(
            &InitOptions {
                data_dir: data.path().join("server"),
                listen: Some("127.0.0.1:0".parse()?),
                org: Some("Stadt Teststadt".into()),
                admin_user: None,
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
            admin_code: Some((report.admin_user, report.enrollment_code)),
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

    /// Starts the server (again), on the same port if it ran before.
    pub async fn run(&mut self) -> Result<()> {
        let mut options = RunOptions::new(self.data_dir());
        options.listen = Some(self.addr);
        options.clock = self.clock.clone();
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
        let dir = self.profile_dir(user);
        let user_id =
            UserId::parse(user).map_err(|e| rathaus_client::ClientError::Invalid(e.to_string()))?;
        Client::enroll(
            &dir,
            EnrollOptions {
                server: self.addr.to_string(),
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

/// A `rathaus-server run` child process (for crash tests: it can be SIGKILLed).
pub struct ServerProcess {
    /// The child.
    pub child: Child,
    /// The address it printed.
    pub addr: SocketAddr,
    /// The fingerprint it printed.
    pub fingerprint: String,
}

impl ServerProcess {
    /// Starts `rathaus-server run --data DIR --listen LISTEN` and waits for its
    /// "listening on ADDR fingerprint FP" line.
    pub fn spawn(data: &Path, listen: &str) -> Result<Self> {
        Self::spawn_logged(data, listen, None)
    }

    /// Like [`ServerProcess::spawn`], with the server binary at `bin`.
    pub fn spawn_bin(bin: &Path, data: &Path, listen: &str) -> Result<Self> {
        Self::launch(bin, data, listen, None, None)
    }

    /// Like [`ServerProcess::spawn`], serving the CA-issued certificate `cert` with its
    /// private key `key` (`run --cert FILE --key FILE`).
    pub fn spawn_with_certificate(
        data: &Path,
        listen: &str,
        cert: &Path,
        key: &Path,
    ) -> Result<Self> {
        Self::launch(
            &workspace_bin("rathaus-server")?,
            data,
            listen,
            None,
            Some((cert, key)),
        )
    }

    /// Like [`ServerProcess::spawn`]; with `log`, the server logs at the most verbose
    /// level (`RUST_LOG=trace`) and its stderr is appended to that file.
    pub fn spawn_logged(data: &Path, listen: &str, log: Option<&Path>) -> Result<Self> {
        Self::launch(&workspace_bin("rathaus-server")?, data, listen, log, None)
    }

    fn launch(
        bin: &Path,
        data: &Path,
        listen: &str,
        log: Option<&Path>,
        tls: Option<(&Path, &Path)>,
    ) -> Result<Self> {
        use std::io::BufRead;
        let mut command = Command::new(bin);
        command
            .args(["run", "--data"])
            .arg(data)
            .args(["--listen", listen])
            .stdout(Stdio::piped());
        if let Some((cert, key)) = tls {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                command.env("RUST_LOG", "trace").stderr(Stdio::from(file));
            }
            None => {
                command.stderr(Stdio::null());
            }
        }
        let mut child = command.spawn().context("cannot start rathaus-server")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout of rathaus-server"))?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let line = lines
            .next()
            .ok_or_else(|| anyhow!("rathaus-server exited before listening"))??;
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let (addr, fingerprint) = parse_listening_line(&line)?;
        Ok(Self {
            child,
            addr,
            fingerprint,
        })
    }

    /// SIGKILL: no shutdown handler runs, nothing is flushed beyond what was acknowledged.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `listening on ADDR fingerprint SHA256:…`.
pub fn parse_listening_line(line: &str) -> Result<(SocketAddr, String)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["listening", "on", addr, "fingerprint", fp, ..] => Ok((addr.parse()?, (*fp).to_owned())),
        _ => bail!("unexpected first line from rathaus-server: {line:?}"),
    }
}

/// Path of a binary of this workspace (`rathaus`, `rathaus-server`), building it if the
/// test run did not.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test binary location {}", exe.display()))?;
    let path = profile_dir.join(name);
    // `cargo test --workspace` (the README's command) builds every binary before the tests
    // run. Only a missing binary is built here: building one package alone unifies
    // dependency features differently and would recompile them. After changing the CLI or
    // the server, run `cargo build --workspace` before `cargo test -p rathaus-tests`.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = BUILD.lock().map_err(|_| anyhow!("poisoned"))?;
    if !path.exists() {
        let package = if name == "rathaus" {
            "rathaus-cli"
        } else {
            "rathaus-server"
        };
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", package, "--bin", name])
            .status()?;
        if !status.success() || !path.exists() {
            bail!("cannot build {name}");
        }
    }
    Ok(path)
}

/// Every file below `dir` whose raw bytes contain `needle` (for canary checks: secret
/// content must appear nowhere in what the server stores).
pub fn files_containing(dir: &Path, needle: &[u8]) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        } else if meta.is_file() {
            let bytes = std::fs::read(&path)?;
            if contains(&bytes, needle) {
                found.push(path);
            }
        }
    }
    Ok(found)
}

/// Whether `haystack` contains `needle` as a contiguous byte string.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

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
    let store = Arc::new(SledStore::open(&data_dir.join("db"))?);
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

/// A certificate authority for tests of CA validation: it issues server certificates the
/// way an organisation's CA would.
pub struct TestCa {
    /// The CA certificate, PEM: the file IT hands out for `rathaus enroll --ca`.
    pub pem: String,
    /// Signs the certificates this CA issues.
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// PEM of the intermediate certificates between this CA and its root (empty for a
    /// root): appended to every certificate it issues, as a server's bundle would be.
    chain: String,
}

impl TestCa {
    /// A new CA named `name`, with a fresh key.
    pub fn new(name: &str) -> Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let params = ca_params(name)?;
        let pem = params.self_signed(&key)?.pem();
        Ok(Self {
            pem,
            issuer: rcgen::Issuer::new(params, key),
            chain: String::new(),
        })
    }

    /// An intermediate CA named `name`, issued by this one. The certificates it issues
    /// come with the intermediate appended, so a client trusting only the root validates
    /// them.
    pub fn intermediate(&self, name: &str) -> Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let params = ca_params(name)?;
        let pem = params.signed_by(&key, &self.issuer)?.pem();
        Ok(Self {
            chain: format!("{pem}{}", self.chain),
            pem,
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns the path.
    pub fn write_pem(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem)?;
        Ok(path)
    }

    /// Issues a server certificate for `names` (DNS names and IP addresses), valid from
    /// yesterday for a year, and writes it and its private key as PEM into `dir`
    /// (`<stem>.crt`, `<stem>.key`). Returns the two paths.
    pub fn issue(&self, names: &[&str], dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf)> {
        let now = time::OffsetDateTime::now_utc();
        self.issue_valid(
            names,
            dir,
            stem,
            now - time::Duration::days(1),
            now + time::Duration::days(365),
        )
    }

    /// Like [`TestCa::issue`], but the certificate expired yesterday.
    pub fn issue_expired(
        &self,
        names: &[&str],
        dir: &Path,
        stem: &str,
    ) -> Result<(PathBuf, PathBuf)> {
        let now = time::OffsetDateTime::now_utc();
        self.issue_valid(
            names,
            dir,
            stem,
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
    }

    fn issue_valid(
        &self,
        names: &[&str],
        dir: &Path,
        stem: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<(PathBuf, PathBuf)> {
        let key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names)?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.chain))?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}

/// Certificate parameters of a CA named `name` (root or intermediate).
fn ca_params(name: &str) -> Result<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    Ok(params)
}

/// Initialises a server data directory in `root` (no clients enrolled) and returns it.
pub fn init_data_dir(root: &Path) -> Result<PathBuf> {
    let data = root.join("server");
    rathaus_server::init(
        &InitOptions {
            data_dir: data.clone(),
            listen: Some("127.0.0.1:0".parse()?),
            org: Some("Stadt Teststadt".into()),
            admin_user: None,
        },
        &rathaus_server::clock::SystemClock,
    )?;
    Ok(data)
}

/// A client endpoint on `127.0.0.1:0` that many connections can share (one UDP socket
/// instead of one per connection). It stands in for many devices, each of which would
/// have a socket of its own, so it gets the server's large socket buffers: a burst to a
/// thousand connections must not overflow one default-sized receive buffer.
pub fn shared_endpoint() -> Result<quinn::Endpoint> {
    let (socket, _) = rathaus_server::transport::udp::bind(
        "127.0.0.1:0".parse()?,
        rathaus_server::transport::udp::SERVER_SOCKET_BUFFER,
    )?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// Resident set size of process `pid` in KiB (Linux `/proc`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for process {pid}"))
}

/// CPU time (user + system) this process has used so far, all threads (Linux `/proc`).
/// `/proc` counts in USER_HZ ticks, which the kernel ABI fixes at 100 per second, so the
/// resolution is 10 ms: measure phases of a second or more.
pub fn process_cpu_time() -> Result<Duration> {
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Field 2 (the command) may contain spaces; everything after its ')' is fixed.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/self/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime field 14, stime field 15.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no field {i} in /proc/self/stat"))
    };
    let total = ticks(14)? + ticks(15)?;
    Ok(Duration::from_millis(total * 1000 / USER_HZ))
}

/// Bytes of every key and value live in a (stopped) server's store: unlike the size of
/// the files, this does not depend on when the storage engine allocates or reclaims space.
pub fn store_bytes(data_dir: &Path) -> Result<u64> {
    let store = SledStore::open(&data_dir.join("db"))?;
    Ok(store
        .range(&[], &[0xff; 16], usize::MAX)?
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum())
}

/// Total size in bytes of the files below `dir`.
pub fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Path of a binary built next to the running executable (for tools such as the
/// benchmark, which run from `target/<profile>/` rather than `target/<profile>/deps/`).
/// Builds it with the same profile if missing.
pub fn sibling_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("unexpected executable location {}", exe.display()))?;
    let path = dir.join(name);
    if !path.exists() {
        let package = if name == "rathaus" {
            "rathaus-cli"
        } else {
            "rathaus-server"
        };
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", package, "--bin", name]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        if !cmd.status()?.success() || !path.exists() {
            bail!("cannot build {name}");
        }
    }
    Ok(path)
}

/// Runs `f` with a generous bound, so a hang fails the test instead of blocking CI.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .map_err(|_| anyhow!("timed out: {what}"))
}

/// Current wall-clock time in Unix milliseconds.
pub fn now_ms() -> i64 {
    rathaus_client::time_fmt::now_ms()
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
