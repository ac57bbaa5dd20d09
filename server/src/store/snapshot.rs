//! Point-in-time copies of a store, for `rathaus-server backup` and `restore`.
//!
//! A snapshot is every key-value pair of the store, in key order, each written as
//! `u32 BE key length ‖ key ‖ u32 BE value length ‖ value`, and nothing else: the values
//! are the stored bytes as they are on disk (format-version byte and all), so a secret
//! group's entries stay MLS ciphertext. What the pairs mean is the records layer's
//! business; a snapshot neither knows nor changes it.
//!
//! [`Store::snapshot`](super::Store::snapshot) writes one while no write is applied, so
//! every atomic batch is in it wholly or not at all.

use std::io::{self, Read, Write};

use super::{KeyValue, StoreError};

/// Keys the store keeps for itself, apart from every record prefix (which are ASCII).
pub(crate) const INTERNAL_PREFIX: &[u8] = b"\x00store/";

/// Where a restored store keeps the id it must continue after (see [`Store::next_id`]).
///
/// [`Store::next_id`]: super::Store::next_id
pub(crate) const ID_FLOOR_KEY: &[u8] = b"\x00store/id_floor";

/// Longest key a snapshot may hold (sled keys of this server are far shorter).
const MAX_KEY: usize = 64 * 1024;

/// Longest value a snapshot may hold (the largest records are MLS trees of big groups).
const MAX_VALUE: usize = 256 * 1024 * 1024;

/// What a snapshot holds, besides its pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotInfo {
    /// Key-value pairs written.
    pub records: u64,
    /// An id greater than every id the store handed out before the snapshot: a store
    /// restored from it must hand out only greater ones.
    pub next_id: u64,
}

/// Writes one pair.
pub(crate) fn write_pair(out: &mut dyn Write, key: &[u8], value: &[u8]) -> io::Result<()> {
    for part in [key, value] {
        let len = u32::try_from(part.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "record too large"))?;
        out.write_all(&len.to_be_bytes())?;
        out.write_all(part)?;
    }
    Ok(())
}

/// Reads the pairs of a snapshot, one by one.
pub struct SnapshotReader<R> {
    /// The snapshot's bytes.
    input: R,
    /// Pairs read so far (for error messages).
    read: u64,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the snapshot in `input`.
    pub fn new(input: R) -> Self {
        Self { input, read: 0 }
    }

    /// The next pair, `None` at the clean end; an error for a truncated or oversized one.
    pub fn next_pair(&mut self) -> Result<Option<KeyValue>, StoreError> {
        let Some(key) = self.part(MAX_KEY, true)? else {
            return Ok(None);
        };
        let value = self
            .part(MAX_VALUE, false)?
            .ok_or_else(|| self.corrupt("ends inside a record"))?;
        self.read += 1;
        Ok(Some((key, value)))
    }

    fn part(&mut self, max: usize, may_end: bool) -> Result<Option<Vec<u8>>, StoreError> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < len.len() {
            match self.input.read(&mut len[got..]) {
                Ok(0) if got == 0 && may_end => return Ok(None),
                Ok(0) => return Err(self.corrupt("ends inside a length")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::Backend(format!("reading a snapshot: {e}"))),
            }
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            return Err(self.corrupt(&format!("a part of {len} bytes exceeds {max}")));
        }
        let mut buf = vec![0u8; len];
        self.input
            .read_exact(&mut buf)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => self.corrupt("ends inside a record"),
                _ => StoreError::Backend(format!("reading a snapshot: {e}")),
            })?;
        Ok(Some(buf))
    }

    fn corrupt(&self, reason: &str) -> StoreError {
        StoreError::Corrupt {
            key: format!("snapshot record {}", self.read + 1),
            reason: reason.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pairs_round_trip_and_truncation_is_an_error_not_an_end() {
        let mut bytes = Vec::new();
        write_pair(&mut bytes, b"log/a", b"\x01ciphertext").unwrap();
        write_pair(&mut bytes, b"", b"").unwrap();
        let mut r = SnapshotReader::new(bytes.as_slice());
        assert_eq!(
            r.next_pair().unwrap(),
            Some((b"log/a".to_vec(), b"\x01ciphertext".to_vec()))
        );
        assert_eq!(r.next_pair().unwrap(), Some((Vec::new(), Vec::new())));
        assert_eq!(r.next_pair().unwrap(), None);
        for cut in 1..bytes.len() - 8 {
            let mut r = SnapshotReader::new(&bytes[..cut]);
            let first = r.next_pair();
            assert!(
                first.is_err() || r.next_pair().is_err(),
                "cut at {cut} not noticed"
            );
        }
        let huge = u32::MAX.to_be_bytes();
        assert!(SnapshotReader::new(&huge[..]).next_pair().is_err());
    }
}
