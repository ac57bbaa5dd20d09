//! `rathaus enroll`, `add-device` and `whoami`: a profile comes into being on a device,
//! trusting one server (by its certificate's fingerprint or through CA certificates),
//! and tells who it is.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use rathaus_client::net::host_of;
use rathaus_client::{CaTrust, Client, EnrollOptions, ServerTrust};
use rathaus_protocol::UserId;
use serde_json::{json, Value};

use crate::commands::{open, profile_dir};
use crate::output::Output;
use crate::password;

/// Where the server is and how it is trusted, as given on the command line.
pub(crate) struct ServerArgs {
    /// `--server`: host:port, or a cluster's nodes separated by commas.
    pub(crate) server: String,
    /// `--fingerprint SHA256:…`.
    pub(crate) fingerprint: Option<String>,
    /// `--ca FILE`.
    pub(crate) ca: Option<PathBuf>,
    /// `--server-name`, only with `--ca`.
    pub(crate) server_name: Option<String>,
}

/// `enroll --server ADDR --fingerprint FP --user ID --code CODE`.
pub(crate) async fn enroll(
    profile: Option<PathBuf>,
    server: ServerArgs,
    user: &str,
    code: String,
    device_name: Option<String>,
    password_stdin: bool,
    out: &Output,
) -> Result<()> {
    let dir = profile_dir(profile)?;
    let user = UserId::parse(user)?;
    let trust = server_trust(&server)?;
    let mut password = password::read(password_stdin, true)?;
    let client = Client::enroll(
        &dir,
        EnrollOptions {
            server: server.server,
            trust,
            user,
            code,
            // Moved, not copied: the client wipes it once sent.
            password: std::mem::take(&mut *password),
            device_name: device_name.unwrap_or_else(default_device_name),
        },
    )
    .await?;
    print_enrolled(out, &client);
    Ok(())
}

/// `add-device --server ADDR --fingerprint FP --user ID`.
pub(crate) async fn add_device(
    profile: Option<PathBuf>,
    server: ServerArgs,
    user: &str,
    device_name: Option<String>,
    password_stdin: bool,
    out: &Output,
) -> Result<()> {
    let dir = profile_dir(profile)?;
    let user = UserId::parse(user)?;
    let trust = server_trust(&server)?;
    let password = password::read(password_stdin, false)?;
    let name = device_name.unwrap_or_else(default_device_name);
    let client = Client::add_device(&dir, &server.server, &trust, user, &password, &name).await?;
    let id = client.identity();
    let code = client.link_code();
    out.print(
        json!({"user": id.user.as_str(), "device": id.device.0, "link_code": code,
               "server": id.server, "fingerprint": id.trust.fingerprint(),
               "trust": trust_json(&id.trust), "org": id.org,
               "profile": client.dir().display().to_string()}),
        || {
            format!(
                "enrolled {} as device {} at {} ({})\nprofile: {}\n\nThis device joins \
                 your secret groups once you approve it on one of your other devices:\n  \
                 rathaus devices approve {code}",
                id.user,
                id.device,
                id.org,
                id.server,
                client.dir().display()
            )
        },
    );
    Ok(())
}

/// `whoami`.
pub(crate) async fn whoami(profile: Option<PathBuf>, out: &Output) -> Result<()> {
    let mut client = open(profile)?;
    let me = client.whoami().await?;
    let id = client.identity().clone();
    let roles: Vec<&str> = me.roles.iter().map(|r| r.as_str()).collect();
    let departments: Vec<&str> = me.departments.iter().map(|d| d.as_str()).collect();
    out.print(
        json!({"user": me.user.as_str(), "name": me.name, "device": me.device.0,
               "roles": roles, "departments": departments, "org": me.org,
               "server": id.server, "fingerprint": id.trust.fingerprint(),
               "trust": trust_json(&id.trust)}),
        || {
            format!(
                "{} ({}), device {} at {}\nroles: {}\ndepartments: {}\nserver: {} ({})",
                me.name,
                me.user,
                me.device,
                me.org,
                roles.join(", "),
                if departments.is_empty() {
                    "-".to_owned()
                } else {
                    departments.join(", ")
                },
                id.server,
                trust_text(&id.trust)
            )
        },
    );
    client.disconnect().await;
    Ok(())
}

fn default_device_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this computer".to_owned());
    format!("rathaus CLI on {host}")
}

/// How the server is to be trusted, from `--fingerprint` or `--ca [--server-name]`:
/// exactly one of the two.
fn server_trust(args: &ServerArgs) -> Result<ServerTrust> {
    let server_name = &args.server_name;
    match (&args.fingerprint, &args.ca) {
        (Some(_), Some(_)) => Err(anyhow!(
            "give either --fingerprint or --ca, not both: the server is trusted one way"
        )),
        (None, None) => Err(anyhow!(
            "give --fingerprint SHA256:… (from `rathaus-server init`) or --ca FILE (the CA \
             that issued the server's certificate)"
        )),
        (Some(_), None) if server_name.is_some() => Err(anyhow!(
            "--server-name only applies with --ca (a pinned certificate is trusted by its \
             fingerprint, whatever its name)"
        )),
        (Some(fingerprint), None) => Ok(ServerTrust::Pinned(fingerprint.clone())),
        (None, Some(path)) => {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow!("cannot read the CA file {}: {e}", path.display()))?;
            let name = server_name
                .clone()
                .unwrap_or_else(|| host_of(&args.server).to_owned());
            let ca =
                CaTrust::from_pem(&pem, &name).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            Ok(ServerTrust::Ca(ca))
        }
    }
}

/// How the server is trusted, for `--json`.
fn trust_json(trust: &ServerTrust) -> Value {
    match trust {
        ServerTrust::Ca(ca) => json!({"method": "ca", "server_name": ca.server_name(),
                                      "ca_fingerprints": ca.fingerprints()}),
        other => json!({"method": "fingerprint", "fingerprint": other.fingerprint()}),
    }
}

/// How the server is trusted, for people.
fn trust_text(trust: &ServerTrust) -> String {
    match trust {
        ServerTrust::Ca(ca) => format!(
            "certificate validated as {} by CA {}",
            ca.server_name(),
            ca.fingerprints().join(", ")
        ),
        other => other.fingerprint().unwrap_or_default().to_owned(),
    }
}

fn print_enrolled(out: &Output, client: &Client) {
    let id = client.identity();
    out.print(
        json!({"user": id.user.as_str(), "device": id.device.0, "server": id.server,
               "fingerprint": id.trust.fingerprint(), "trust": trust_json(&id.trust),
               "org": id.org,
               "profile": client.dir().display().to_string()}),
        || {
            format!(
                "enrolled {} as device {} at {} ({})\nprofile: {}",
                id.user,
                id.device,
                id.org,
                id.server,
                client.dir().display()
            )
        },
    );
}
