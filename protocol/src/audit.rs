//! The audit log's hash chain: how an entry's hash is computed and how a chain is checked.

use sha2::{Digest, Sha256};

use crate::messages::AuditEntry;

/// Domain separator of audit entry hashes.
const AUDIT_CONTEXT: &[u8] = b"rathaus-audit-v1";

/// The hash of an entry's fields (everything but `hash` itself).
pub fn entry_hash(entry: &AuditEntry) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(AUDIT_CONTEXT);
    h.update(entry.index.to_be_bytes());
    h.update(entry.at_ms.to_be_bytes());
    for field in [
        entry.actor.as_str(),
        entry.action.as_str(),
        entry.target.as_str(),
        entry.detail.as_str(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.update(entry.prev_hash);
    h.finalize().into()
}

/// The first place a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit log broken at entry {index}: {reason}")]
pub struct BrokenLink {
    /// Index of the first bad entry.
    pub index: u64,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks a chain starting at entry 0, or continuing after `prev` (the entry before the
/// first of `entries`).
pub fn verify_chain(prev: Option<&AuditEntry>, entries: &[AuditEntry]) -> Result<(), BrokenLink> {
    let first = prev.map_or(0, |p| p.index + 1);
    let mut expected_prev = prev.map_or([0u8; 32], |p| p.hash);
    for (expected_index, e) in (first..).zip(entries) {
        if e.index != expected_index {
            return Err(BrokenLink {
                index: expected_index,
                reason: "entry missing or out of order",
            });
        }
        if e.prev_hash != expected_prev {
            return Err(BrokenLink {
                index: e.index,
                reason:
                    "does not point to the previous entry (an earlier entry was changed or removed)",
            });
        }
        if entry_hash(e) != e.hash {
            return Err(BrokenLink {
                index: e.index,
                reason: "content does not match its hash (the entry was changed)",
            });
        }
        expected_prev = e.hash;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserId;

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let mut e = AuditEntry {
                index: i,
                at_ms: 1000 + i as i64,
                actor: UserId::parse("admin").unwrap(),
                action: "user.add".into(),
                target: format!("P{i}"),
                detail: String::new(),
                prev_hash: out.last().map_or([0; 32], |p| p.hash),
                hash: [0; 32],
            };
            e.hash = entry_hash(&e);
            out.push(e);
        }
        out
    }

    #[test]
    fn an_intact_chain_verifies_and_any_edit_is_found() {
        let c = chain(5);
        assert_eq!(verify_chain(None, &c), Ok(()));
        assert_eq!(verify_chain(Some(&c[1]), &c[2..]), Ok(()));

        let mut edited = c.clone();
        edited[2].target = "P99".into();
        assert_eq!(verify_chain(None, &edited).unwrap_err().index, 2);

        let mut rehashed = c.clone();
        rehashed[2].target = "P99".into();
        rehashed[2].hash = entry_hash(&rehashed[2]);
        assert_eq!(verify_chain(None, &rehashed).unwrap_err().index, 3);

        let mut removed = c.clone();
        removed.remove(1);
        assert_eq!(verify_chain(None, &removed).unwrap_err().index, 1);
    }
}
