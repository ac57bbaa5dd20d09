//! `import`: bulk provisioning of `n` colleagues from an HR export, as the admin runs it:
//! `rathaus admin user import FILE.csv` as a whole process (read the file, resolve
//! departments, send chunks, each one atomic batch with one durable flush). Baseline: the
//! same colleagues provisioned one `AddUser` request at a time, as a script around
//! `rathaus admin user add` would (without a process per user). A second row writes an
//! enrollment letter (PDF with QR code) per colleague as well.

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Result};
use rathaus_protocol::{DepartmentSlug, UserId};
use rathaus_tests::{sibling_bin, TestBackend};

use super::report::Row;

/// Departments the colleagues are spread over (a city administration has dozens).
const DEPARTMENTS: usize = 20;

pub(crate) async fn import(n: usize, suffix: &str) -> Result<Vec<Row>> {
    let tmp = tempfile::tempdir()?;
    let csv = tmp.path().join("personal.csv");
    let mut text = String::from("Personalnummer;Name;Abteilungen;Rollen\r\n");
    for i in 0..n {
        let d = i % DEPARTMENTS;
        let _ = write!(text, "P{i:05};Kollegin Nummer {i};amt{d:02};\r\n");
    }
    std::fs::write(&csv, &text)?;

    // Baseline: one request per colleague, on a server of its own.
    let baseline = {
        let (mut backend, mut admin) = server_with_departments().await?;
        let t = Instant::now();
        for i in 0..n {
            let d = i % DEPARTMENTS;
            admin
                .admin_add_user(
                    UserId::parse(&format!("P{i:05}"))?,
                    &format!("Kollegin Nummer {i}"),
                    vec![DepartmentSlug::parse(&format!("amt{d:02}"))?],
                    Vec::new(),
                )
                .await?;
        }
        let elapsed = t.elapsed();
        admin.disconnect().await;
        backend.stop().await;
        elapsed
    };
    eprintln!(
        "   {n} single AddUser requests: {:.2} s",
        baseline.as_secs_f64()
    );

    let plain = run_import(&csv, None, n).await?;
    eprintln!("   rathaus admin user import: {:.2} s", plain.as_secs_f64());
    let letters_dir = tmp.path().join("briefe");
    let letters = run_import(&csv, Some(&letters_dir), n).await?;
    eprintln!("   ... with --letters: {:.2} s", letters.as_secs_f64());
    let written = std::fs::read_dir(&letters_dir)?.count();
    if written != n {
        bail!("{written} letters written for {n} colleagues");
    }

    Ok(vec![
        Row::new(format!("import-{n}{suffix}"), plain.as_secs_f64(), "s")
            .baseline(baseline.as_secs_f64())
            .bar(10.0)
            .note(format!(
                "`rathaus admin user import` of {n} rows into {DEPARTMENTS} departments, \
                 whole process; baseline: {n} single AddUser requests; bar: 5,000 in 10 s"
            )),
        Row::new(
            format!("import-{n}-letters{suffix}"),
            letters.as_secs_f64(),
            "s",
        )
        .baseline(plain.as_secs_f64())
        .note(
            "the same with `--letters`: one PDF with QR code per colleague; baseline: \
             without letters",
        ),
    ])
}

/// A fresh server with the departments, and its admin enrolled.
async fn server_with_departments() -> Result<(TestBackend, rathaus_client::Client)> {
    let mut backend = TestBackend::start().await?;
    let mut admin = backend.admin().await?;
    for d in 0..DEPARTMENTS {
        backend
            .department(&mut admin, &format!("amt{d:02}"), &[])
            .await?;
    }
    Ok((backend, admin))
}

/// Imports `csv` into a fresh server with the `rathaus` binary; the time of the process.
async fn run_import(
    csv: &std::path::Path,
    letters: Option<&std::path::Path>,
    n: usize,
) -> Result<std::time::Duration> {
    let rathaus = sibling_bin("rathaus")?;
    let (mut backend, mut admin) = server_with_departments().await?;
    admin.disconnect().await;
    let mut cmd = tokio::process::Command::new(&rathaus);
    cmd.arg("--profile")
        .arg(admin.dir())
        .args(["--json", "admin", "user", "import"])
        .arg(csv);
    if let Some(dir) = letters {
        cmd.arg("--letters").arg(dir);
    }
    let t = Instant::now();
    let out = cmd.stderr(Stdio::inherit()).output().await?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        bail!("rathaus admin user import failed: {}", out.status);
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    if report["created"].as_u64() != Some(n as u64) {
        bail!("import created {} of {n}", report["created"]);
    }
    backend.stop().await;
    Ok(elapsed)
}
