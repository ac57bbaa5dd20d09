//! `rathaus verify USER`: the safety number to compare in person, and the trust marks
//! `rathaus members` shows for secret groups (DESIGN §5.8).

use anyhow::{anyhow, Result};
use rathaus_client::{key_fingerprint, Client, SecretDevice};
use rathaus_protocol::{GroupHandle, UserId};
use serde_json::{json, Value};

use crate::output::Output;

pub(crate) async fn run(
    client: &mut Client,
    user: &UserId,
    confirm: bool,
    out: &Output,
) -> Result<()> {
    let Some(report) = client.safety_number(user).await? else {
        return Err(anyhow!(
            "no key of {user} is known on this device yet: you share no secret group with \
             them that this device is a member of, so there is nothing to verify"
        ));
    };
    if confirm {
        client.confirm_verified(&report)?;
    }
    let devices: Vec<Value> = report
        .devices
        .iter()
        .map(|d| {
            json!({"device": d.device, "fingerprint": key_fingerprint(&d.key),
                   "verified": d.verified || confirm, "key_changed": d.changed_ms.is_some() && !confirm})
        })
        .collect();
    out.print(
        json!({"user": report.user, "safety_number": report.number.to_string(),
               "devices": devices, "confirmed": confirm}),
        || {
            let groups = &report.number.groups;
            let mut lines = vec![format!("Safety number with {}:", report.user)];
            for row in groups.chunks(4) {
                lines.push(format!("    {}", row.join(" ")));
            }
            lines.push(String::new());
            for d in &report.devices {
                let mark = if confirm || d.verified {
                    "verified"
                } else if d.changed_ms.is_some() {
                    "KEY CHANGED, not verified"
                } else {
                    "not verified"
                };
                lines.push(format!(
                    "device {:<6} key {}  ({mark})",
                    d.device,
                    key_fingerprint(&d.key)
                ));
            }
            lines.push(String::new());
            if confirm {
                lines.push(format!("Marked the keys of {} as verified.", report.user));
            } else {
                lines.push(format!(
                    "Compare this number with {} in person; if it matches, run `rathaus verify \
                     {} --confirm`.",
                    report.user, report.user
                ));
            }
            lines.join("\n")
        },
    );
    Ok(())
}

/// The group code of a secret group, for `rathaus members` (`None` if not a member).
pub(crate) fn group_code(client: &Client, group: &GroupHandle) -> Result<Option<String>> {
    Ok(client.group_check_code(group)?.map(|c| c.to_string()))
}

/// Trust marks of one device for `rathaus members`: JSON fields and a human suffix.
pub(crate) fn device_marks(client: &Client, user: &str, device: &SecretDevice) -> (Value, String) {
    let pin = client.device_pin(user, &device.device).ok().flatten();
    let verified = pin.as_ref().is_some_and(|p| p.verified);
    let changed = pin.as_ref().is_some_and(|p| p.changed_ms.is_some());
    let human = if changed {
        format!("  KEY CHANGED — verify with `rathaus verify {user}`")
    } else if verified {
        "  (verified)".to_owned()
    } else {
        String::new()
    };
    (json!({"verified": verified, "key_changed": changed}), human)
}
