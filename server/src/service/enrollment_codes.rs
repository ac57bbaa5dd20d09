//! One-time enrollment codes: 80 random bits in Crockford base32, shown as
//! `XXXX-XXXX-XXXX-XXXX`, stored only as a SHA-256 hash.

use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// How long a code stays valid after it was issued.
pub const CODE_LIFETIME_MS: i64 = 72 * 3600 * 1000;

/// Crockford's base32 alphabet (no I, L, O, U).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters of a code without grouping.
const CODE_CHARS: usize = 16;

/// A fresh code for display, e.g. `K7QF-2M9X-4D1R-8ZTB`.
pub fn generate() -> String {
    let mut bytes = [0u8; 10];
    OsRng.fill_bytes(&mut bytes);
    let mut bits = u128::from_be_bytes({
        let mut b = [0u8; 16];
        b[6..].copy_from_slice(&bytes);
        b
    });
    let mut chars = [0u8; CODE_CHARS];
    for c in chars.iter_mut().rev() {
        // The mask keeps the index below 32.
        *c = ALPHABET[(bits & 0x1f) as usize];
        bits >>= 5;
    }
    let mut out = String::with_capacity(CODE_CHARS + 3);
    for (i, c) in chars.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(char::from(*c));
    }
    out
}

/// The SHA-256 of a code as typed, after normalisation (dashes and spaces dropped, case
/// folded, O read as 0 and I/L as 1). `None` if it cannot be a code at all.
pub fn digest(typed: &str) -> Option<[u8; 32]> {
    let normalised: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        })
        .collect();
    if normalised.len() != CODE_CHARS || !normalised.bytes().all(|b| ALPHABET.contains(&b)) {
        return None;
    }
    Some(Sha256::digest(normalised.as_bytes()).into())
}

/// Compares two digests in constant time.
pub fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_grouped_and_normalise_forgivingly() {
        let code = generate();
        assert_eq!(code.len(), 19);
        assert_eq!(code.matches('-').count(), 3);
        let d = digest(&code).unwrap();
        assert_eq!(digest(&code.replace('-', " ").to_lowercase()), Some(d));
        assert_eq!(digest("0000-1111-0000-1111"), digest("oooo-iiii-OOOO-LLLL"));
        assert_eq!(digest("ABCD"), None);
        assert_eq!(digest("UUUU-UUUU-UUUU-UUUU"), None);
        assert_ne!(generate(), generate());
    }
}
