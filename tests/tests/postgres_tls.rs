//! TLS to PostgreSQL: a throwaway cluster of its own with `ssl=on` and a certificate from
//! a test CA, listening on 127.0.0.1. A server with `sslmode=verify-full` and that CA
//! stores and serves posts; with another CA it refuses to start and says why. Needs
//! PostgreSQL's programs (`/usr/lib/postgresql/*/bin`) and skips itself without; run as
//! root, the cluster runs as the `postgres` user (PostgreSQL refuses root).

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use rathaus_protocol::GroupHandle;
use rathaus_server::RunOptions;
use rathaus_tests::{TestBackend, TestCa};

/// A PostgreSQL cluster in a temporary directory, stopped and removed on drop.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    /// `None` (with a printed reason) when PostgreSQL's programs are not installed.
    fn start(ca: &TestCa) -> Option<Self> {
        let Some(bin) = postgres_bin() else {
            println!("skipped: no /usr/lib/postgresql/*/bin/initdb (install PostgreSQL)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.issue(&["127.0.0.1"], dir.path(), "server").unwrap();
        let as_root = run_output("id", &["-u"]) == "0";
        if as_root {
            let uid: u32 = run_output("id", &["-u", "postgres"]).parse().unwrap();
            let gid: u32 = run_output("id", &["-g", "postgres"]).parse().unwrap();
            for path in [dir.path(), &cert, &key] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        }
        // PostgreSQL refuses a key others may read.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let port = free_port();
        let cluster = Self { bin, dir, port };
        let data = cluster.dir.path().join("data");
        cluster.postgres_run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
            ],
        );
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {dir} -c ssl=on -c ssl_cert_file={cert} \
             -c ssl_key_file={key}",
            dir = cluster.dir.path().display(),
            cert = cert.display(),
            key = key.display(),
        );
        let log = cluster.dir.path().join("server.log");
        cluster.postgres_run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
                "start".as_ref(),
            ],
        );
        Some(cluster)
    }

    /// The URL of its `postgres` database over TCP, TLS checked against `root`.
    fn url(&self, mode: &str, root: &Path) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode={mode}&sslrootcert={}",
            self.port,
            root.display()
        )
    }

    /// Runs PostgreSQL's `program` (as the postgres user when this runs as root).
    fn postgres_run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let program = self.bin.join(program);
        let mut command = if run_output("id", &["-u"]) == "0" {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = command.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        self.postgres_run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "stop".as_ref(),
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgres_over_verified_tls_posts_and_reads_and_refuses_a_wrong_ca() {
    let ca = TestCa::new("Stadtwerke Test-CA").unwrap();
    let Some(cluster) = Cluster::start(&ca) else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let right = ca.write_pem(certs.path()).unwrap();
    let other_dir = certs.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let wrong = TestCa::new("Fremde CA")
        .unwrap()
        .write_pem(&other_dir)
        .unwrap();

    let mut backend = TestBackend::start_on_store(&cluster.url("verify-full", &right))
        .await
        .unwrap();
    let mut admin = backend.admin().await.unwrap();
    backend.department(&mut admin, "bauamt", &[]).await.unwrap();
    let code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &["bauamt"], &[])
        .await
        .unwrap();
    let mut anna = backend.enroll("P1001", &code).await.unwrap();
    let bau = GroupHandle::parse("bauamt").unwrap();
    anna.send_text(&bau, "Über TLS gespeichert").await.unwrap();
    let texts: Vec<String> = anna
        .read(&bau)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.text)
        .collect();
    assert_eq!(texts, vec!["Über TLS gespeichert".to_owned()]);
    anna.disconnect().await;
    admin.disconnect().await;
    backend.stop().await;

    // The same server, told to trust another CA: it does not start, and says why.
    let mut options = RunOptions::new(backend.data_dir());
    options.listen = Some("127.0.0.1:0".parse().unwrap());
    options.store = Some(cluster.url("verify-full", &wrong));
    let refused = match rathaus_server::start(options).await {
        Ok(server) => {
            server.shutdown().await;
            panic!("the server started on a database whose certificate it cannot verify");
        }
        Err(e) => e.to_string(),
    };
    println!("with another CA: {refused}");
    assert!(
        refused.contains("does not verify") && refused.contains(&wrong.display().to_string()),
        "the refusal names the certificate problem and the CA file: {refused}"
    );

    // With the right CA it starts again, and the post is still there.
    backend.run().await.unwrap();
    anna.send_text(&bau, "Nach dem Neustart").await.unwrap();
    let texts: Vec<String> = anna
        .read(&bau)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.text)
        .collect();
    assert_eq!(
        texts,
        vec![
            "Über TLS gespeichert".to_owned(),
            "Nach dem Neustart".to_owned()
        ]
    );
    anna.disconnect().await;
    backend.stop().await;
    drop(cluster);
}

fn postgres_bin() -> Option<PathBuf> {
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    bins.sort_by_key(|b| {
        b.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    bins.pop()
}

fn run_output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A TCP port free on 127.0.0.1 just now (the cluster binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
