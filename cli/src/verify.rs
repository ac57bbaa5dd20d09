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
    let Some(mut report) = client.safety_number(user).await? else {
        return Err(anyhow!(
            "no key of {user} is known on this device yet: you share no secret group with \
             them that this device is a member of, so there is nothing to verify"
        ));
    };
    if confirm {
        client.confirm_verified(&report)?;
        // Show what is stored now (a key that changed meanwhile stays unverified).
        for d in &mut report.devices {
            if let Some(pin) = client.device_pin(&d.user, &d.device)? {
                *d = pin;
            }
        }
    }
    let devices: Vec<Value> = report
        .devices
        .iter()
        .map(|d| {
            json!({"device": d.device, "fingerprint": key_fingerprint(&d.key),
                   "verified": d.verified, "key_changed": d.changed_ms.is_some()})
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
                let mark = if d.verified {
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

/// What `rathaus members` shows about one device's key.
pub(crate) struct DeviceMarks {
    /// The key was compared in person and confirmed.
    pub(crate) verified: bool,
    /// The key replaced an earlier one and was not verified since.
    pub(crate) key_changed: bool,
}

impl DeviceMarks {
    /// The suffix of the device's line in human output.
    pub(crate) fn human(&self, user: &UserId) -> String {
        if self.key_changed {
            format!("  KEY CHANGED — verify with `rathaus verify {user}`")
        } else if self.verified {
            "  (verified)".to_owned()
        } else {
            String::new()
        }
    }
}

/// The trust marks of one device of `user`, from this device's pins.
pub(crate) fn device_marks(
    client: &Client,
    user: &UserId,
    device: &SecretDevice,
) -> Result<DeviceMarks> {
    let pin = client.device_pin(user, &device.device)?;
    Ok(DeviceMarks {
        verified: pin.as_ref().is_some_and(|p| p.verified),
        key_changed: pin.as_ref().is_some_and(|p| p.changed_ms.is_some()),
    })
}
