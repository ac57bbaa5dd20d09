//! The real binaries: a `rathaus-server` child process and where the binaries are.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

/// A `rathaus-server run` child process (for crash tests: it can be SIGKILLed).
pub struct ServerProcess {
    /// The child.
    pub child: Child,
    /// The address it printed.
    pub addr: SocketAddr,
    /// The fingerprint it printed.
    pub fingerprint: String,
    /// Where it serves `/metrics`, if started with [`ServerProcess::spawn_with_metrics`].
    pub metrics: Option<SocketAddr>,
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

    /// Like [`ServerProcess::spawn_logged`], also serving `/metrics` on a port of its
    /// own on 127.0.0.1 (in [`ServerProcess::metrics`]).
    pub fn spawn_with_metrics(data: &Path, listen: &str, log: Option<&Path>) -> Result<Self> {
        Self::launch_with(
            &workspace_bin("rathaus-server")?,
            data,
            listen,
            log,
            None,
            true,
        )
    }

    pub(crate) fn launch(
        bin: &Path,
        data: &Path,
        listen: &str,
        log: Option<&Path>,
        tls: Option<(&Path, &Path)>,
    ) -> Result<Self> {
        Self::launch_with(bin, data, listen, log, tls, false)
    }

    fn launch_with(
        bin: &Path,
        data: &Path,
        listen: &str,
        log: Option<&Path>,
        tls: Option<(&Path, &Path)>,
        metrics: bool,
    ) -> Result<Self> {
        use std::io::BufRead;
        let mut command = Command::new(bin);
        command
            .args(["run", "--data"])
            .arg(data)
            .args(["--listen", listen])
            .stdout(Stdio::piped());
        if metrics {
            command.args(["--metrics-listen", "127.0.0.1:0"]);
        }
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
        let metrics = if metrics {
            let line = lines
                .next()
                .ok_or_else(|| anyhow!("rathaus-server printed no metrics address"))??;
            let addr = line
                .strip_prefix("metrics on http://")
                .and_then(|s| s.strip_suffix("/metrics"))
                .ok_or_else(|| anyhow!("unexpected metrics line from rathaus-server: {line:?}"))?;
            Some(addr.parse()?)
        } else {
            None
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let (addr, fingerprint) = parse_listening_line(&line)?;
        Ok(Self {
            child,
            addr,
            fingerprint,
            metrics,
        })
    }

    /// The value of the unlabelled sample `metric` on `/metrics` (`None`: not served, or
    /// no such sample).
    pub fn metric(&self, metric: &str) -> Result<Option<f64>> {
        let addr = self
            .metrics
            .ok_or_else(|| anyhow!("this server serves no metrics"))?;
        metric_at(addr, metric)
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

/// The value of the unlabelled sample `metric` on the `/metrics` of the listener at
/// `addr` (`None`: no such sample).
pub fn metric_at(addr: std::net::SocketAddr, metric: &str) -> Result<Option<f64>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.lines().find_map(|l| {
        let (name, value) = l.split_once(' ')?;
        (name == metric).then(|| value.trim().parse().ok())?
    }))
}
