//! `rathaus demo`: a self-contained tour. Starts a temporary server in this process,
//! provisions a department and two colleagues, and shows them talking in the public group
//! and in the department's end-to-end encrypted secret group, then what the operator's
//! server holds of each.
//! Everything lives in a temporary directory that is removed afterwards.

use anyhow::{Context, Result};
use rathaus_client::{Client, EnrollOptions};
use rathaus_protocol::{DepartmentSlug, GroupHandle, Role, UserId};
use rathaus_server::clock::SystemClock;
use rathaus_server::{InitOptions, RunOptions};
use serde_json::json;

use crate::commands::{row_json, row_text};
use crate::output::Output;

pub(crate) async fn run(out: &Output) -> Result<()> {
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let data = tmp.path().join("server");
    let say = |s: &str| {
        if !out.json {
            println!("{s}");
        }
    };

    say("== Rathaus demo: a temporary server on 127.0.0.1 ==");
    let report = rathaus_server::init(
        &InitOptions {
            data_dir: data.clone(),
            listen: Some("127.0.0.1:0".parse()?),
            org: Some("Stadt Musterstadt".into()),
            admin_user: None,
        },
        &SystemClock,
    )?;
    let mut options = RunOptions::new(&data);
    options.listen = Some("127.0.0.1:0".parse()?);
    let server = rathaus_server::start(options).await?;
    let addr = server.local_addr().to_string();
    let fingerprint = server.fingerprint();
    say(&format!(
        "server listening on {addr}\ncertificate fingerprint {fingerprint}"
    ));

    let enroll = |dir: std::path::PathBuf, user: &str, code: String| {
        let addr = addr.clone();
        let fingerprint = fingerprint.clone();
        let user = user.to_owned();
        async move {
            Client::enroll(
                &dir,
                EnrollOptions {
                    server: addr,
                    fingerprint,
                    user: UserId::parse(&user)?,
                    code,
                    password: format!("{user}-demo-password"),
                    device_name: "demo".into(),
                },
            )
            .await
            .with_context(|| format!("enrolling {user}"))
        }
    };

    say(&format!(
        "\n-- IT enrolls the bootstrap admin '{}' with its one-time code",
        report.admin_user
    ));
    let mut admin = enroll(
        tmp.path().join("admin"),
        &report.admin_user,
        report.enrollment_code.clone(),
    )
    .await?;

    say("-- IT provisions Anna Berg (P1001) and Jonas Weber (P1002), and the department Bauamt");
    let (anna_code, _) = admin
        .admin_add_user(
            UserId::parse("P1001")?,
            "Anna Berg",
            vec![],
            vec![Role::Author],
        )
        .await?;
    let bauamt_slug = DepartmentSlug::parse("bauamt")?;
    admin
        .admin_add_department(bauamt_slug.clone(), "Bauamt", vec![UserId::parse("P1001")?])
        .await?;
    let (jonas_code, _) = admin
        .admin_add_user(
            UserId::parse("P1002")?,
            "Jonas Weber",
            vec![bauamt_slug],
            vec![],
        )
        .await?;
    say(&format!(
        "   enrollment codes: P1001 {anna_code}, P1002 {jonas_code} (single use, 72 h)"
    ));

    say("-- Anna and Jonas enroll their phones with personnel number + code");
    let mut anna = enroll(tmp.path().join("anna"), "P1001", anna_code).await?;
    let mut jonas = enroll(tmp.path().join("jonas"), "P1002", jonas_code).await?;

    let bauamt = GroupHandle::parse("bauamt")?;
    say("\n-- Anna posts in the public group 'bauamt'; Jonas reads and answers");
    anna.send_text(
        &bauamt,
        "Guten Morgen! Die Baustelle Rathausplatz ist ab Montag gesperrt.",
    )
    .await?;
    jonas.read(&bauamt).await?;
    jonas
        .send_text(&bauamt, "Danke, ich sage dem Bauhof Bescheid.")
        .await?;
    let timeline = anna.read(&bauamt).await?;
    for row in &timeline {
        say(&format!("   {}", row_text(row)));
    }

    let secret = GroupHandle::parse("bauamt/secret")?;
    say("\n-- Anna owns the Bauamt: her client creates the MLS group 'bauamt/secret' and");
    say("   admits Jonas's device; his client joins from the Welcome");
    anna.sync().await?;
    jonas.sync().await?;
    anna.send_text(
        &secret,
        "Vertraulich: die Ausschreibung Rathausplatz geht an Firma Krause.",
    )
    .await?;
    jonas.read(&secret).await?;
    jonas
        .send_text(&secret, "Verstanden, bleibt unter uns bis zur Sitzung.")
        .await?;
    let secret_timeline = anna.read(&secret).await?;
    for row in &secret_timeline {
        say(&format!("   {}", row_text(row)));
    }

    for c in [&mut admin, &mut anna, &mut jonas] {
        c.disconnect().await;
    }
    server.shutdown().await;
    say("\n-- What the operator's server stores for 'bauamt' (public: server-readable)");
    let inspection = rathaus_server::inspect(&data, Some(&bauamt))?;
    show_entries(&say, &inspection, false);
    say("\n-- ... and for 'bauamt/secret': MLS ciphertext only, no key to read it");
    let secret_inspection = rathaus_server::inspect(&data, Some(&secret))?;
    show_entries(&say, &secret_inspection, true);
    say("\nDemo finished; the temporary server and profiles are deleted.");
    if out.json {
        let messages: Vec<_> = timeline.iter().map(row_json).collect();
        let secret_messages: Vec<_> = secret_timeline.iter().map(row_json).collect();
        println!(
            "{}",
            json!({"server": addr, "fingerprint": fingerprint,
                   "group": "bauamt", "messages": messages, "inspect": inspection,
                   "secret": {"group": "bauamt/secret", "messages": secret_messages,
                              "inspect": secret_inspection}})
        );
    }
    Ok(())
}

/// Prints the operator's view of a group's entries; for a secret group with the first
/// bytes of the stored ciphertext.
fn show_entries(say: &impl Fn(&str), inspection: &serde_json::Value, with_bytes: bool) {
    let Some(entries) = inspection.get("entries").and_then(|e| e.as_array()) else {
        return;
    };
    for e in entries {
        let bytes = if with_bytes {
            let b64 = e.get("bytes").and_then(|b| b.as_str()).unwrap_or("");
            format!("  {}…", b64.chars().take(32).collect::<String>())
        } else {
            String::new()
        };
        say(&format!(
            "   seq {} kind {} size {} bytes{bytes}",
            e.get("seq").unwrap_or(&json!(null)),
            e.get("kind").and_then(|k| k.as_str()).unwrap_or("?"),
            e.get("size").unwrap_or(&json!(null))
        ));
    }
}
