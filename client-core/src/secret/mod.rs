//! Secret groups (DESIGN §5): the MLS-backed side of synchronisation.
//!
//! A department's `slug/secret` group is born on an owner's device with that device as
//! its only member; the rostered colleagues are pending invitations that an owner admits
//! (`approve`), or that owners' clients admit while the owners keep auto-admit on. Every
//! device keeps KeyPackages on the server, joins from Welcomes, and processes the group's
//! log in seq order with the [`MlsEngine`]: each processed entry and the timeline rows it
//! produces are written in one SQLite transaction, so MLS state and history never get out
//! of step.
//!
//! The server may lie (DESIGN §5.9), so the client decides membership:
//! - every commit is judged by `rathaus_protocol::mls::judge_commit` over the tree before
//!   and after it and the group's policy before it (owners, auto-admit, in the MLS group
//!   context where only members can change it); a refused commit is not merged, the group
//!   stays at its epoch and a `warning` row says why; every accepted change is a
//!   `membership` row naming the committer and each device by id and key fingerprint;
//! - a device that has held a group never creates it again (`memory`), and a Welcome is
//!   judged before anything is written and never replaces live state unless this device
//!   processed its own removal;
//! - a claimed KeyPackage must carry exactly the requested device and its pinned key.
//!
//! Removals proposed by the server (its removal key is the group's only external sender)
//! are committed only when the target is no longer on the roster.
//!
//! The files follow those concepts: `policy` (reading and changing the policy),
//! `memory` (what the device remembers of each group), `admission` (birth, Welcomes, approvals), `sync` (what a sync does for secret
//! groups, pushed events), `log` (fetching and processing the log), `send` (messages and
//! commits, retried as intents), `rows` (timeline rows and names), `key_packages` (upkeep
//! on the server) and `view` (the group as this device sees it).

mod admission;
mod intents;
mod key_packages;
mod log;
mod memory;
mod policy;
mod repair;
mod rooms;
mod rows;
mod send;
mod sync;
mod view;

use rathaus_protocol::GroupHandle;
use sha2::{Digest, Sha256};

use crate::error::Result;

pub use admission::Approval;
pub use key_packages::{KEY_PACKAGE_LOW, KEY_PACKAGE_TARGET};
pub use policy::PolicyOutcome;
pub use rathaus_protocol::mls::GroupPolicy;
pub use view::{SecretDevice, SecretGroupView, SecretMember};

/// The log sender of proposals the server makes with its removal key.
const SERVER_SENDER: &str = rathaus_protocol::mls::SERVER_IDENTITY;

/// The MLS group id of a secret group: `"rathaus:slug/secret"`. Computed locally, so the
/// server cannot point one group's handle at another group's state.
pub fn mls_group_id(group: &GroupHandle) -> Vec<u8> {
    rathaus_protocol::mls::group_id(group)
}

/// Fingerprint of a device key, grouped for reading aloud: the first 16 bytes of its
/// SHA-256, in hex.
pub fn key_fingerprint(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    digest[..16]
        .chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Ends the transaction begun on `conn`: commit on success, roll back on failure.
fn finish<T>(conn: &rusqlite::Connection, result: Result<T>) -> Result<T> {
    match result {
        Ok(value) => {
            conn.execute_batch("COMMIT")?;
            Ok(value)
        }
        Err(e) => {
            // Report the operation's error; a failed rollback surfaces on the next statement.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Like [`finish`], for a savepoint opened with `SAVEPOINT name`.
fn finish_savepoint<T>(conn: &rusqlite::Connection, name: &str, result: Result<T>) -> Result<T> {
    match result {
        Ok(value) => {
            conn.execute_batch(&format!("RELEASE {name}"))?;
            Ok(value)
        }
        Err(e) => {
            // Report the operation's error; a failed rollback surfaces on the next statement.
            let _ = conn.execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"));
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests;
