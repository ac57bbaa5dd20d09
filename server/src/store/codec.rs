//! Stored-value encoding: one format-version byte, then postcard.

use serde::{de::DeserializeOwned, Serialize};

use super::StoreError;

/// The format version this build writes.
const FORMAT_V1: u8 = 1;

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![FORMAT_V1]).map_err(|e| StoreError::Encode(e.to_string()))
}

pub(super) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => postcard::from_bytes(body).map_err(|e| StoreError::Corrupt {
            key: printable(key),
            reason: e.to_string(),
        }),
        Some((&version, _)) => Err(StoreError::UnknownFormat {
            key: printable(key),
            version,
        }),
        None => Err(StoreError::Corrupt {
            key: printable(key),
            reason: "empty value".into(),
        }),
    }
}

/// A key as text for error messages (keys are mostly ASCII with binary suffixes).
pub(super) fn printable(key: &[u8]) -> String {
    key.iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                char::from(b).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_format_version() {
        let bytes = encode(&("x".to_string(), 7u64)).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
        let back: (String, u64) = decode(b"k", &bytes).unwrap();
        assert_eq!(back, ("x".to_string(), 7));
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(matches!(
            decode::<(String, u64)>(b"k", &future),
            Err(StoreError::UnknownFormat { version: 9, .. })
        ));
        assert!(decode::<(String, u64)>(b"k", &[]).is_err());
    }
}
