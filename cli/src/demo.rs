//! `rathaus demo`: a self-contained tour. Starts a temporary server in this process,
//! provisions a department, two colleagues and an editor of the communications office,
//! and shows the colleagues talking in the public group and in the department's end-to-end
//! encrypted secret group, the department proposing an announcement that the editor
//! approves, and finally what the operator's server holds of each.
//! Everything lives in a temporary directory that is removed afterwards.

use anyhow::{Context, Result};
use rathaus_client::{AnnouncementDraft, Client, EnrollOptions, ServerTrust};
use rathaus_protocol::{DepartmentSlug, GroupHandle, Role, UserId};
use rathaus_server::clock::SystemClock;
use rathaus_server::{InitOptions, RunOptions};
use serde_json::json;

use crate::output::Output;
use crate::posts::{row_json, row_text};

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
            store: None,
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
                    trust: ServerTrust::Pinned(fingerprint),
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
    let (eva_code, _) = admin
        .admin_add_user(
            UserId::parse("P2001")?,
            "Eva Koch",
            vec![],
            vec![Role::Editor],
        )
        .await?;
    say(&format!(
        "   enrollment codes: P1001 {anna_code}, P1002 {jonas_code} (single use, 72 h)"
    ));
    say("   and Eva Koch (P2001), editor in the communications office");

    say("-- Anna and Jonas enroll their phones with personnel number + code");
    let mut anna = enroll(tmp.path().join("anna"), "P1001", anna_code).await?;
    let mut jonas = enroll(tmp.path().join("jonas"), "P1002", jonas_code).await?;
    let mut eva = enroll(tmp.path().join("eva"), "P2001", eva_code).await?;

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
    say("\n-- Anna owns the Bauamt: her client creates the MLS group 'bauamt/secret' with");
    say("   only her device in it; Jonas is a pending invitation until she approves him,");
    say("   then his client joins from the Welcome");
    anna.sync().await?;
    for (user, _) in anna.approve_all(&secret).await? {
        say(&format!("   Anna approved {user}"));
    }
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

    say("\n-- The Bauamt proposes an announcement; the communications office approves it");
    let draft = anna
        .announce_draft(AnnouncementDraft {
            title: "Rathausplatz gesperrt".into(),
            text: "Von Montag bis Freitag ist der Rathausplatz wegen Bauarbeiten gesperrt.".into(),
            requires_ack: true,
            expires_at_ms: None,
        })
        .await?;
    anna.announce_submit(draft.id).await?;
    say(&format!(
        "   Anna drafted and submitted announcement #{}",
        draft.id
    ));
    let pending = eva.announcements(true).await?;
    say(&format!(
        "   Eva sees {} announcement(s) waiting for approval",
        pending.len()
    ));
    let approved = eva.announce_approve(draft.id).await?;
    say(&format!(
        "   Eva approved it: published as announcements #{}",
        approved.seq.unwrap_or_default()
    ));
    let announcements = jonas.read(&GroupHandle::Announcements).await?;
    for row in &announcements {
        say(&format!("   Jonas reads: {}", row_text(row)));
    }
    jonas.announce_ack(draft.id).await?;
    let acks = eva
        .announcements(false)
        .await?
        .into_iter()
        .find(|a| a.id == draft.id)
        .map(|a| a.acked_by.iter().map(|u| u.to_string()).collect::<Vec<_>>())
        .unwrap_or_default();
    say(&format!("   Eva sees who has read it: {}", acks.join(", ")));

    for c in [&mut admin, &mut anna, &mut jonas, &mut eva] {
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
                   "announcements": announcements.iter().map(row_json).collect::<Vec<_>>(),
                   "acknowledged_by": acks,
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
