//! The numbers people compare in person: a safety number for a pair of users and a group
//! code for a secret group in one epoch. Pure functions over keys and rosters; the
//! client feeds them what it pinned or what its MLS state holds.

use std::fmt;

use rathaus_protocol::UserId;
use sha2::{Digest, Sha256, Sha512};

/// Domain separation of the per-user half of a safety number (format version 1).
const SAFETY_DOMAIN: &[u8] = b"rathaus-safety-number-v1";
/// Domain separation of the group code (format version 2: over every leaf).
const GROUP_CODE_DOMAIN: &[u8] = b"rathaus-group-code-v2";
/// SHA-512 iterations per half, as in Signal's numeric fingerprints: cheap once, costly for
/// someone searching for a second key set with the same digits.
const SAFETY_ITERATIONS: usize = 5200;
/// Digit groups per user half (5 digits each): 30 digits, about 99 bits.
const SAFETY_GROUPS_PER_USER: usize = 6;
/// Digit groups of a group code (4 digits each): 24 digits, about 79 bits.
const GROUP_CODE_GROUPS: usize = 6;

/// A safety number for two users: 12 groups of 5 digits, the same on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    /// The twelve 5-digit groups, in display order.
    pub groups: Vec<String>,
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.groups.join(" "))
    }
}

/// A group code: 6 groups of 4 digits, equal for all members in the same epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCode {
    /// The epoch the code belongs to.
    pub epoch: u64,
    /// The six 4-digit groups, in display order.
    pub groups: Vec<String>,
}

impl fmt::Display for GroupCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.groups.join(" "))
    }
}

/// One device key of a user, as fed into a safety number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceKeyEntry {
    /// Device id.
    pub device: String,
    /// Ed25519 public key (the device key, which also signs its MLS leaves).
    pub key: Vec<u8>,
}

/// The safety number of users `a` and `b` with their device keys.
///
/// Construction (version 1): for each user, the device list is sorted by device id and
/// encoded as `SAFETY_DOMAIN ‖ len(user) ‖ user ‖ count ‖ (len(device) ‖ device ‖
/// len(key) ‖ key)*` with big-endian u32 lengths. Starting from `h = encoding`, the half is
/// iterated `h = SHA-512(h ‖ encoding)` 5200 times; its first 30 bytes become six 5-byte
/// chunks, each read as a big-endian integer modulo 100 000 (five digits). The two 30-digit
/// halves are put in lexicographic order, so both users compute the same 60 digits.
pub fn safety_number(a: (&str, &[DeviceKeyEntry]), b: (&str, &[DeviceKeyEntry])) -> SafetyNumber {
    let mut halves = [user_half(a.0, a.1), user_half(b.0, b.1)];
    halves.sort();
    SafetyNumber {
        groups: halves.concat(),
    }
}

/// One leaf of a secret group as fed into a group code.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupLeafEntry {
    /// Personnel number.
    pub user: UserId,
    /// Device id.
    pub device: String,
    /// The leaf's signature key.
    pub key: Vec<u8>,
}

/// The group code of a secret group in one epoch.
///
/// Construction (version 2): `SHA-256(GROUP_CODE_DOMAIN ‖ len(group) ‖ group ‖ epoch (u64
/// BE) ‖ count ‖ (len(user) ‖ user ‖ len(device) ‖ device ‖ len(key) ‖ key)* over the
/// sorted leaves ‖ len(auth) ‖ epoch_authenticator)`; its first 24 bytes become six 4-byte
/// chunks, each a big-endian u32 modulo 10 000. Every leaf counts, so a second device under
/// a known user id changes the code. The epoch authenticator is secret to the members of
/// the epoch, so the server can neither compute nor steer the code.
pub fn group_code(
    group: &str,
    epoch: u64,
    leaves: &[GroupLeafEntry],
    authenticator: &[u8],
) -> GroupCode {
    let mut leaves: Vec<&GroupLeafEntry> = leaves.iter().collect();
    leaves.sort_unstable();
    let mut hash = Sha256::new();
    hash.update(GROUP_CODE_DOMAIN);
    put_bytes(&mut hash, group.as_bytes());
    hash.update(epoch.to_be_bytes());
    put_len(&mut hash, leaves.len());
    for leaf in &leaves {
        put_bytes(&mut hash, leaf.user.as_str().as_bytes());
        put_bytes(&mut hash, leaf.device.as_bytes());
        put_bytes(&mut hash, &leaf.key);
    }
    put_bytes(&mut hash, authenticator);
    let digest = hash.finalize();
    let groups = digest
        .chunks_exact(4)
        .take(GROUP_CODE_GROUPS)
        .map(|c| {
            let n = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            format!("{:04}", n % 10_000)
        })
        .collect();
    GroupCode { epoch, groups }
}

fn user_half(user: &str, devices: &[DeviceKeyEntry]) -> Vec<String> {
    let mut devices = devices.to_vec();
    devices.sort();
    let mut encoding = Vec::new();
    encoding.extend_from_slice(SAFETY_DOMAIN);
    push_bytes(&mut encoding, user.as_bytes());
    push_len(&mut encoding, devices.len());
    for d in &devices {
        push_bytes(&mut encoding, d.device.as_bytes());
        push_bytes(&mut encoding, &d.key);
    }
    let mut h = encoding.clone();
    for _ in 0..SAFETY_ITERATIONS {
        let mut hash = Sha512::new();
        hash.update(&h);
        hash.update(&encoding);
        h = hash.finalize().to_vec();
    }
    h.chunks_exact(5)
        .take(SAFETY_GROUPS_PER_USER)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    // Lengths come from ids (≤ 64 bytes), keys (32 bytes) and device lists; clamping
    // keeps the conversion total.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    push_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_len(hash: &mut Sha256, len: usize) {
    hash.update(u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_bytes(hash: &mut Sha256, bytes: &[u8]) {
    put_len(hash, bytes.len());
    hash.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(device: &str, key: u8) -> DeviceKeyEntry {
        DeviceKeyEntry {
            device: device.into(),
            key: vec![key; 32],
        }
    }

    #[test]
    fn safety_numbers_are_symmetric_and_formatted_like_signals() {
        let anna = [dev("1", 1)];
        let jonas = [dev("2", 2), dev("3", 3)];
        let ab = safety_number(("P1001", &anna), ("P1002", &jonas));
        let ba = safety_number(("P1002", &jonas), ("P1001", &anna));
        assert_eq!(ab, ba);
        assert_eq!(ab.groups.len(), 12);
        assert!(ab.groups.iter().all(|g| g.len() == 5));
        assert_eq!(ab.to_string().len(), 12 * 5 + 11);
        // Device order does not matter; a changed key or an extra device does.
        let jonas_reordered = [dev("3", 3), dev("2", 2)];
        assert_eq!(
            ab,
            safety_number(("P1001", &anna), ("P1002", &jonas_reordered))
        );
        let jonas_changed = [dev("2", 2), dev("3", 4)];
        assert_ne!(
            ab,
            safety_number(("P1001", &anna), ("P1002", &jonas_changed))
        );
        assert_ne!(ab, safety_number(("P1001", &anna), ("P1002", &jonas[..1])));
    }

    fn leaf(user: &str, device: &str, key: u8) -> GroupLeafEntry {
        GroupLeafEntry {
            user: UserId::parse(user).unwrap(),
            device: device.into(),
            key: vec![key; 32],
        }
    }

    #[test]
    fn group_codes_cover_every_leaf_epoch_and_authenticator() {
        let leaves = vec![leaf("P1002", "2", 2), leaf("P1001", "1", 1)];
        let code = group_code("bauamt/secret", 3, &leaves, &[7; 32]);
        assert_eq!(code.groups.len(), 6);
        assert!(code.groups.iter().all(|g| g.len() == 4));
        let reordered = vec![leaf("P1001", "1", 1), leaf("P1002", "2", 2)];
        assert_eq!(code, group_code("bauamt/secret", 3, &reordered, &[7; 32]));
        assert_ne!(code, group_code("bauamt/secret", 3, &leaves, &[8; 32]));
        assert_ne!(code, group_code("bauamt/secret", 3, &leaves[..1], &[7; 32]));
        assert_ne!(code, group_code("bauamt/secret", 4, &leaves, &[7; 32]));
        // A ghost device under a known user id, or a swapped key, changes the code.
        let mut ghost = leaves.clone();
        ghost.push(leaf("P1001", "4242", 9));
        assert_ne!(code, group_code("bauamt/secret", 3, &ghost, &[7; 32]));
        let swapped = vec![leaf("P1002", "2", 3), leaf("P1001", "1", 1)];
        assert_ne!(code, group_code("bauamt/secret", 3, &swapped, &[7; 32]));
    }
}
