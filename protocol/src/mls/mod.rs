//! The MLS contract between Rathaus clients and the delivery service (DESIGN §5), defined
//! once for both sides: how a secret group's MLS group id is formed, the server's
//! identity in `external_senders`, the one credential form of a device, the group policy
//! in the group context, and the membership rule every honest client applies to every
//! commit ([`judgement`]).
//!
//! Everything here is plain data and pure functions; the MLS library itself stays with
//! the client's engine and the server's public state, which turn openmls' types into the
//! [`judgement::CommitFacts`] judged here.
//!
//! ```
//! use rathaus_protocol::mls::{group_id, DeviceCredential, GroupPolicy};
//! use rathaus_protocol::{DeviceId, GroupHandle, UserId};
//!
//! let group = GroupHandle::parse("bauamt/secret").unwrap();
//! assert_eq!(group_id(&group), b"rathaus:bauamt/secret".to_vec());
//! let device = DeviceCredential::parse(b"P1001/7").unwrap();
//! assert_eq!(device.device, DeviceId(7));
//! assert!(DeviceCredential::parse(b"P1001/07").is_none()); // one device, one spelling
//! let policy = GroupPolicy { owners: vec![UserId::parse("P1001").unwrap()], auto_admit: false };
//! assert_eq!(GroupPolicy::decode(&policy.encode()), Some(policy));
//! ```

pub mod judgement;
pub mod welcome;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, GroupHandle, UserId};

pub use judgement::{
    judge_commit, CommitFacts, CommitRefusal, Committer, Leaf, MemberDevice, Roster, Verdict,
};
pub use welcome::{judge_welcome, WelcomeFacts, WelcomeRefusal};

/// The MLS ciphersuite of every secret group, as its RFC 9420 code point:
/// `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`.
pub const CIPHERSUITE_CODE: u16 = 0x0001;

/// Credential identity of the server in the `external_senders` extension, and the log
/// sender of the proposals it signs with its removal key.
pub const SERVER_IDENTITY: &str = "rathaus-server";

/// Extension type of the Rathaus group policy (owners, auto-admit) in the group context;
/// from the private-use range of RFC 9420 §17.3. Only members can change the group
/// context, so the server cannot (DESIGN §5.4).
pub const GROUP_POLICY_EXTENSION: u16 = 0xF2A0;

/// Format version of the encoded [`GroupPolicy`].
const POLICY_VERSION: u8 = 1;

/// The MLS group id of a secret group: `"rathaus:<slug>/secret"`. Computed by each side
/// from the handle, so the server cannot point one group's handle at another group.
pub fn group_id(group: &GroupHandle) -> Vec<u8> {
    format!("rathaus:{group}").into_bytes()
}

/// Domain separation of a device link code.
const LINK_DOMAIN: &[u8] = b"rathaus-link-v1";

/// Letters of a link code: no 0/O, 1/I/L, so it can be read aloud and typed.
const LINK_ALPHABET: &[u8; 31] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// The short code a new device shows so that one of its user's existing devices can
/// admit it (DESIGN §5.9, device linking): about 59 bits of SHA-256 over its key, as
/// three groups of four letters (`K7QF-2M9X-HR4T`). The existing device compares it with
/// the key the server lists, so a server that substitutes a key must find a key with the
/// same code.
pub fn link_code(device_key: &[u8; 32]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(LINK_DOMAIN)
        .chain_update(device_key)
        .finalize();
    let bits = digest
        .iter()
        .take(8)
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let letters: Vec<u8> = (0..12)
        .map(|i| LINK_ALPHABET[((bits >> (59 - 5 * i)) & 0x1f) as usize % LINK_ALPHABET.len()])
        .collect();
    letters
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// A link code as typed (any case, with or without dashes and spaces), normalised for
/// comparison with [`link_code`].
pub fn normalize_link_code(typed: &str) -> String {
    let letters: Vec<char> = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    letters
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// The device a leaf's `BasicCredential` names: the UTF-8 bytes `"<user>/<device>"`,
/// with the device number in canonical decimal (no sign, no leading zeros), so that one
/// device has exactly one credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceCredential {
    /// The user's personnel number.
    pub user: UserId,
    /// The device number the server gave at enrollment.
    pub device: DeviceId,
}

impl DeviceCredential {
    /// Parses credential identity bytes; `None` unless they are exactly the canonical form.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (user, device) = text.split_once('/')?;
        let number: u64 = device.parse().ok()?;
        if number.to_string() != device {
            return None;
        }
        Some(Self {
            user: UserId::parse(user).ok()?,
            device: DeviceId(number),
        })
    }

    /// The credential identity bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl fmt::Display for DeviceCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.user, self.device)
    }
}

/// A secret group's own rules, kept in the MLS group context under
/// [`GROUP_POLICY_EXTENSION`], where only members can change them. The server's
/// department record only seeds it at birth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPolicy {
    /// Users whose devices may admit others, remove members and change this policy.
    pub owners: Vec<UserId>,
    /// Whether rostered colleagues are admitted without an owner's explicit approval
    /// (and any member may commit their Add).
    pub auto_admit: bool,
}

impl GroupPolicy {
    /// The extension bytes: a format version, then the postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![POLICY_VERSION];
        // Encoding a Vec of strings and a bool into a Vec cannot fail.
        bytes.extend(postcard::to_allocvec(self).unwrap_or_default());
        bytes
    }

    /// Reads extension bytes; `None` for anything but a valid policy of a known format
    /// with at least one owner.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes.split_first() {
            Some((&POLICY_VERSION, rest)) => {
                let policy: Self = postcard::from_bytes(rest).ok()?;
                (!policy.owners.is_empty()).then_some(policy)
            }
            _ => None,
        }
    }

    /// Whether `user` is an owner.
    pub fn is_owner(&self, user: &UserId) -> bool {
        self.owners.contains(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_have_one_canonical_form() {
        let ok = DeviceCredential::parse(b"P1001/42").unwrap();
        assert_eq!(ok.to_bytes(), b"P1001/42");
        for bad in [
            &b"P1001/042"[..],
            b"P1001/+42",
            b"P1001/ 42",
            b"P1001/",
            b"P1001",
            b"/42",
            b"P1001/42/1",
            b"P 1001/42",
            b"P1001/laptop",
            b"P1001/18446744073709551616",
            b"\xff/1",
        ] {
            assert_eq!(DeviceCredential::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn link_codes_are_short_stable_and_forgiving_to_type() {
        let code = link_code(&[7; 32]);
        assert_eq!(code.len(), 14);
        assert_eq!(code, link_code(&[7; 32]));
        assert_ne!(code, link_code(&[8; 32]));
        assert_eq!(
            normalize_link_code(&code.to_lowercase().replace('-', " ")),
            code
        );
        assert!(!code.contains('0') && !code.contains('O') && !code.contains('I'));
    }

    #[test]
    fn a_policy_without_owners_or_of_another_format_is_not_a_policy() {
        let none = GroupPolicy {
            owners: vec![],
            auto_admit: true,
        };
        assert_eq!(GroupPolicy::decode(&none.encode()), None);
        let mut other = GroupPolicy {
            owners: vec![UserId::parse("P1").unwrap()],
            auto_admit: false,
        }
        .encode();
        other[0] = 2;
        assert_eq!(GroupPolicy::decode(&other), None);
        assert_eq!(GroupPolicy::decode(&[]), None);
        assert_eq!(GroupPolicy::decode(&[1, 0xff, 0xff]), None);
    }
}
