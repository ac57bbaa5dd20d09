//! Certificate fingerprints as shown to and typed by people: `SHA256:` followed by 64 hex
//! digits. Parsing is forgiving (case, colons, spaces, missing prefix) because people copy
//! them from screens and e-mails.

/// Why a fingerprint could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fingerprint: expected SHA256: followed by 64 hex digits")]
pub struct InvalidFingerprint;

/// Formats a SHA-256 digest as `SHA256:<64 lowercase hex digits>`.
pub fn format(digest: &[u8; 32]) -> String {
    let mut out = String::with_capacity(7 + 64);
    out.push_str("SHA256:");
    for b in digest {
        out.push(hex_digit(b >> 4));
        out.push(hex_digit(b & 0x0f));
    }
    out
}

/// Parses a fingerprint written by [`format`] (tolerating case, `:` and spaces).
pub fn parse(s: &str) -> Result<[u8; 32], InvalidFingerprint> {
    let s = s.trim();
    let s = s
        .strip_prefix("SHA256:")
        .or_else(|| s.strip_prefix("sha256:"))
        .unwrap_or(s);
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !matches!(b, b':' | b' ' | b'-'))
        .collect();
    if digits.len() != 64 {
        return Err(InvalidFingerprint);
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hi = hex_value(pair[0]).ok_or(InvalidFingerprint)?;
        let lo = hex_value(pair[1]).ok_or(InvalidFingerprint)?;
        out[i] = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_digit(v: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(v & 0x0f)])
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tolerance() {
        let d = [0xabu8; 32];
        let s = format(&d);
        assert_eq!(s.len(), 71);
        assert_eq!(parse(&s), Ok(d));
        assert_eq!(parse(&s.to_uppercase().replace("SHA256:", "")), Ok(d));
        assert!(parse("SHA256:abcd").is_err());
        assert!(parse(&format!("SHA256:{}", "zz".repeat(32))).is_err());
    }
}
