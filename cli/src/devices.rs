//! `rathaus devices` and `rathaus password`: one's own devices, linking a new one by its
//! link code, revoking one, and the password that adds devices.

use std::path::PathBuf;

use anyhow::Result;
use rathaus_client::time_fmt::rfc3339;
use rathaus_protocol::DeviceId;
use serde_json::json;

use crate::commands::open;
use crate::output::Output;
use crate::{password, DevicesCommand};

/// `rathaus devices [approve CODE | remove DEVICE]`.
pub(crate) async fn devices(
    profile: Option<PathBuf>,
    command: Option<DevicesCommand>,
    out: &Output,
) -> Result<()> {
    let mut client = open(profile)?;
    match command {
        None => {
            let devices = client.devices().await?;
            let list: Vec<_> = devices
                .iter()
                .map(|d| {
                    json!({"device": d.device.0, "name": d.name, "fingerprint": d.fingerprint,
                           "this_device": d.this_device, "linked": d.linked,
                           "enrolled_at": rfc3339(d.created_ms)})
                })
                .collect();
            out.print(json!({"devices": list}), || {
                devices
                    .iter()
                    .map(|d| {
                        let mark = if d.this_device {
                            " (this device)"
                        } else if d.linked {
                            " (linked)"
                        } else {
                            " (not linked with this device)"
                        };
                        format!("{:>6}  {:<24} {}{mark}", d.device, d.name, d.fingerprint)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Some(DevicesCommand::Approve { code }) => {
            let linked = client.approve_device(&code).await?;
            let groups: Vec<_> = linked
                .groups
                .iter()
                .map(|(g, seq)| json!({"group": g.to_string(), "seq": seq}))
                .collect();
            out.print(json!({"device": linked.device.0, "groups": groups}), || {
                let mut text = format!("device {} is linked with this device", linked.device);
                if linked.groups.is_empty() {
                    text.push_str("; it is in none of your secret groups yet");
                }
                for (g, seq) in &linked.groups {
                    text.push_str(&format!("\nadded it to {g} (commit #{seq})"));
                }
                text
            });
        }
        Some(DevicesCommand::Remove { device }) => {
            client.remove_device(DeviceId(device)).await?;
            out.print(json!({"removed": device}), || {
                format!("device {device} revoked: it can no longer log in and leaves your secret groups")
            });
        }
    }
    client.disconnect().await;
    Ok(())
}

/// `rathaus password`.
pub(crate) async fn change_password(
    profile: Option<PathBuf>,
    password_stdin: bool,
    out: &Output,
) -> Result<()> {
    let mut client = open(profile)?;
    let (old, new) = password::read_change(password_stdin)?;
    client.change_password(&old, &new).await?;
    client.disconnect().await;
    out.print(json!({"changed": true}), || "password changed".to_owned());
    Ok(())
}
