//! `rathaus admin user import FILE.csv [--letters DIR]` and `rathaus admin department
//! rename | remove`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rathaus_client::time_fmt::rfc3339;
use rathaus_client::{parse_import, Client, ImportReport, ServerTrust};
use rathaus_protocol::DepartmentSlug;
use serde_json::{json, Value};

use crate::letters::{self, Letter};
use crate::output::Output;

/// Imports an HR export; writes a letter per new colleague into `letters` if given.
pub(crate) async fn import_users(
    client: &mut Client,
    file: &Path,
    letters_dir: Option<PathBuf>,
    out: &Output,
) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    if let Some(dir) = &letters_dir {
        // Before anything is created, so that no code is lost to an unwritable directory.
        letters::create_dir(dir)?;
    }
    let departments = client.admin_departments().await?;
    let parsed = parse_import(&bytes, &departments);
    let bar = progress_bar(out, parsed.rows.len());
    let report = client
        .admin_import_users(parsed, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .await?;
    bar.finish_and_clear();
    let mut written = Vec::new();
    if let Some(dir) = &letters_dir {
        let identity = client.identity();
        let trust = match &identity.trust {
            ServerTrust::Pinned(fp) => format!("--fingerprint {fp}"),
            _ => "--ca <CA-Zertifikat der IT>".to_owned(),
        };
        for u in &report.created {
            let letter = Letter {
                org: &identity.org,
                user: u.user.as_str(),
                name: &u.name,
                departments: u.departments.iter().map(|d| d.as_str()).collect(),
                code: &u.enrollment_code,
                expires: rfc3339(u.expires_at_ms),
                server: &identity.server,
                trust: trust.clone(),
            };
            written.push(letters::write(dir, &letter)?);
        }
    }
    print_report(out, &report, letters_dir.as_deref(), &written);
    match &report.interrupted {
        // Reported in the output already; the exit status tells scripts.
        Some(_) => Err(Reported.into()),
        None => Ok(()),
    }
}

/// A failure already printed in the command's own output: exit non-zero, print nothing
/// more (so `--json` stays one document).
#[derive(Debug)]
pub(crate) struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the import stopped early (see above)")
    }
}

impl std::error::Error for Reported {}

/// Renames a department (display name only).
pub(crate) async fn rename_department(
    client: &mut Client,
    slug: &str,
    name: &str,
    out: &Output,
) -> Result<()> {
    let slug = DepartmentSlug::parse(slug)?;
    let d = client.admin_rename_department(slug, name).await?;
    out.print(
        json!({"department": d.slug.as_str(), "name": d.name}),
        || format!("department {} is now called {}", d.slug, d.name),
    );
    Ok(())
}

/// Retires a department.
pub(crate) async fn remove_department(client: &mut Client, slug: &str, out: &Output) -> Result<()> {
    let slug = DepartmentSlug::parse(slug)?;
    client.admin_remove_department(slug.clone()).await?;
    out.print(json!({"removed": slug.as_str()}), || {
        format!(
            "department {slug} retired: its members were taken off, {slug} and {slug}/secret \
             are closed to new posts; their history stays readable"
        )
    });
    Ok(())
}

fn progress_bar(out: &Output, total: usize) -> ProgressBar {
    if out.json || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template("importing {bar:40} {pos}/{len} rows {eta}") {
        bar.set_style(style);
    }
    bar
}

fn print_report(out: &Output, report: &ImportReport, dir: Option<&Path>, written: &[PathBuf]) {
    let refused: Vec<Value> = report
        .refused
        .iter()
        .map(|r| json!({"line": r.line, "reason": r.reason}))
        .collect();
    // The codes go to the admin who asked, as `admin user add` prints its code; without
    // --letters this is the only place they appear.
    let users: Vec<Value> = report
        .created
        .iter()
        .map(|u| {
            json!({"line": u.line, "user": u.user.as_str(), "enrollment_code": u.enrollment_code,
                   "expires_at": rfc3339(u.expires_at_ms)})
        })
        .collect();
    let letter_paths: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    out.print(
        json!({"created": report.created.len(), "unchanged": report.unchanged,
               "refused": refused, "users": users, "letters": letter_paths,
               "interrupted": report.interrupted}),
        || {
            let mut text = format!(
                "created {}, unchanged {}, refused {}",
                report.created.len(),
                report.unchanged,
                report.refused.len()
            );
            if let Some(why) = &report.interrupted {
                text.push_str(&format!("\nthe import stopped early: {why}"));
            }
            for r in &report.refused {
                text.push_str(&format!("\nline {}: {}", r.line, r.reason));
            }
            match dir {
                Some(dir) if !written.is_empty() => text.push_str(&format!(
                    "\n{} enrollment letter(s) in {} — print them and hand them over in person",
                    written.len(),
                    dir.display()
                )),
                Some(_) => {}
                None => {
                    for u in &report.created {
                        text.push_str(&format!(
                            "\n{:<12} {}  (until {})",
                            u.user.as_str(),
                            u.enrollment_code,
                            crate::output::human_time(u.expires_at_ms)
                        ));
                    }
                }
            }
            text
        },
    );
}
