//! Sealing a file for a secret group: ChaCha20-Poly1305 in the STREAM construction
//! (as RustCrypto's `aead::stream::StreamBE32`: a 7-byte nonce prefix, a big-endian 32-bit
//! counter, a last-segment flag byte), with a fresh key per file.
//!
//! Segment `i` (of [`SEALED_SEGMENT`] plaintext bytes, the last one shorter) is sealed
//! with counter `i` and the last-segment flag on the final one, so a chunk cut off,
//! reordered or taken from another file fails to open. Every segment seals to exactly
//! one transfer chunk, which is what makes uploads and downloads resumable chunk by chunk
//! without the whole file in memory.
//!
//! The AEAD is ring's (its ChaCha20-Poly1305 is the assembly of BoringSSL, about twice as
//! fast on this server's CPUs as the portable implementation, which took 11 % of a 50 MiB
//! transfer's CPU); the bytes are those of `StreamBE32`, which sealed the files of earlier
//! builds (a test checks both agree).

use rand::RngCore;
use rathaus_protocol::blobs::{FileKey, SEALED_SEGMENT};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use crate::error::{ClientError, Result};

/// Associated data of every segment: binds the ciphertext to this use.
const AAD: &[u8] = b"rathaus-file-v1";

/// A fresh random file key.
pub(crate) fn fresh_key() -> FileKey {
    let mut key = [0u8; 32];
    let mut nonce_prefix = [0u8; 7];
    rand::rngs::OsRng.fill_bytes(&mut key);
    rand::rngs::OsRng.fill_bytes(&mut nonce_prefix);
    FileKey { key, nonce_prefix }
}

/// Seals and opens the segments of one file.
pub(crate) struct Sealer {
    key: LessSafeKey,
    nonce_prefix: [u8; 7],
    /// Number of segments of the file.
    segments: u64,
}

impl Sealer {
    /// For a file of `plain_size` bytes sealed with `key`.
    pub(crate) fn new(key: &FileKey, plain_size: u64) -> Result<Self> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key.key)
            .map_err(|_| ClientError::Invalid("a file key must be 32 bytes".into()))?;
        let segments = plain_size.div_ceil(SEALED_SEGMENT as u64).max(1);
        if segments > u64::from(u32::MAX) {
            return Err(ClientError::Invalid("the file is too large to seal".into()));
        }
        Ok(Self {
            key: LessSafeKey::new(unbound),
            nonce_prefix: key.nonce_prefix,
            segments,
        })
    }

    /// Seals segment `index` in place (the buffer grows by the tag).
    pub(crate) fn seal(&self, index: u64, segment: &mut Vec<u8>) -> Result<()> {
        let nonce = self.nonce(index)?;
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(AAD), segment)
            .map_err(|_| ClientError::Invalid("cannot seal the file".into()))
    }

    /// [`Sealer::open_slice`] on a buffer of its own, which shrinks by the tag.
    #[cfg(test)]
    pub(crate) fn open(&self, index: u64, chunk: &mut Vec<u8>) -> Result<()> {
        let plain = self.open_slice(index, chunk)?;
        chunk.truncate(plain);
        Ok(())
    }

    /// Opens chunk `index` in place in `chunk` and returns the length of its plaintext,
    /// which begins where the chunk did (the tag's bytes after it are left as they were).
    /// A chunk that was changed, cut off or moved fails.
    pub(crate) fn open_slice(&self, index: u64, chunk: &mut [u8]) -> Result<usize> {
        let nonce = self.nonce(index)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(AAD), chunk)
            .map_err(|_| {
                ClientError::Invalid(format!(
                    "chunk {index} of the file does not open with its key: it was changed on \
                     the way or on the server"
                ))
            })?
            .len();
        Ok(plain)
    }

    /// The nonce of segment `index`: prefix, big-endian counter, last-segment flag.
    fn nonce(&self, index: u64) -> Result<Nonce> {
        if index >= self.segments {
            return Err(ClientError::Invalid(format!(
                "the file has no segment {index}"
            )));
        }
        // index < segments <= u32::MAX, checked in `new`.
        let position = index as u32;
        let mut nonce = [0u8; 12];
        nonce[..7].copy_from_slice(&self.nonce_prefix);
        nonce[7..11].copy_from_slice(&position.to_be_bytes());
        nonce[11] = u8::from(index + 1 == self.segments);
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_open_only_in_place() {
        let key = fresh_key();
        let size = SEALED_SEGMENT as u64 + 10;
        let sealer = Sealer::new(&key, size).unwrap();
        let mut first = vec![7u8; SEALED_SEGMENT];
        sealer.seal(0, &mut first).unwrap();
        assert_eq!(first.len(), rathaus_protocol::blobs::BLOB_CHUNK);
        let mut last = vec![9u8; 10];
        sealer.seal(1, &mut last).unwrap();

        let mut moved = first.clone();
        assert!(
            sealer.open(1, &mut moved).is_err(),
            "a chunk in another place"
        );
        let mut flipped = last.clone();
        flipped[0] ^= 1;
        assert!(sealer.open(1, &mut flipped).is_err(), "a changed chunk");
        let other = Sealer::new(&fresh_key(), size).unwrap();
        assert!(other.open(0, &mut first.clone()).is_err(), "another key");

        sealer.open(0, &mut first).unwrap();
        assert_eq!(first, vec![7u8; SEALED_SEGMENT]);
        // The last segment sealed as not-last (a file cut short) does not open as last.
        let longer = Sealer::new(&key, 3 * SEALED_SEGMENT as u64).unwrap();
        let mut not_last = vec![9u8; 10];
        longer.seal(1, &mut not_last).unwrap();
        assert!(
            sealer.open(1, &mut not_last).is_err(),
            "truncation is noticed"
        );
        sealer.open(1, &mut last).unwrap();
        assert_eq!(last, vec![9u8; 10]);
    }

    /// Files sealed by earlier builds (RustCrypto's `StreamBE32`) open, and new ones are
    /// byte for byte what those builds would have made.
    #[test]
    fn segments_are_those_of_rustcryptos_stream_be32() {
        use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
        use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
        let key = fresh_key();
        let size = 2 * SEALED_SEGMENT as u64 + 1000;
        let sealer = Sealer::new(&key, size).unwrap();
        let stream: StreamBE32<ChaCha20Poly1305> = StreamBE32::from_aead(
            ChaCha20Poly1305::new_from_slice(&key.key).unwrap(),
            (&key.nonce_prefix).into(),
        );
        for (index, len) in [(0u64, SEALED_SEGMENT), (1, SEALED_SEGMENT), (2, 1000)] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + index as usize) as u8).collect();
            let mut ours = plain.clone();
            sealer.seal(index, &mut ours).unwrap();
            let mut theirs = plain.clone();
            stream
                .encrypt_in_place(index as u32, index == 2, AAD, &mut theirs)
                .unwrap();
            assert_eq!(ours, theirs, "segment {index}");
            sealer.open(index, &mut theirs).unwrap();
            assert_eq!(theirs, plain);
        }
    }
}
