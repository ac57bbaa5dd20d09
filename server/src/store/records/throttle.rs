//! Failed-attempt counters of the credential throttle, so that a restart does not hand an
//! attacker fresh free attempts.
//!
//! | key | value |
//! |---|---|
//! | `throttle/<subject>` | [`ThrottleRecord`]; the subject's bytes are the service's own encoding |

use serde::{Deserialize, Serialize};

use super::{decode, encode, prefix_end, Db, StoreError, Writes};

const THROTTLE: &[u8] = b"throttle/";

/// One counter of failed attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleRecord {
    /// Consecutive failures.
    pub count: u32,
    /// Time of the last failure, Unix ms.
    pub last_ms: i64,
    /// Attempts before this time are refused, Unix ms.
    pub blocked_until_ms: i64,
}

impl Db {
    /// Every stored throttle counter with its subject's bytes.
    pub fn throttle_records(&self) -> Result<Vec<(Vec<u8>, ThrottleRecord)>, StoreError> {
        let end = prefix_end(THROTTLE);
        self.kv
            .range(THROTTLE, &end, usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                let record = decode(&k, &v)?;
                Ok((k[THROTTLE.len()..].to_vec(), record))
            })
            .collect()
    }
}

impl Writes {
    /// Stores the counter of `subject`.
    pub fn put_throttle(
        &mut self,
        subject: &[u8],
        record: &ThrottleRecord,
    ) -> Result<&mut Self, StoreError> {
        self.batch.put(throttle_key(subject), encode(record)?);
        Ok(self)
    }

    /// Deletes the counter of `subject`.
    pub fn remove_throttle(&mut self, subject: &[u8]) -> &mut Self {
        self.batch.remove(throttle_key(subject));
        self
    }
}

fn throttle_key(subject: &[u8]) -> Vec<u8> {
    let mut k = THROTTLE.to_vec();
    k.extend_from_slice(subject);
    k
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn throttle_records_round_trip_and_delete() {
        let db = Db::new(Arc::new(MemoryStore::new()));
        let r = ThrottleRecord {
            count: 7,
            last_ms: 5,
            blocked_until_ms: 9,
        };
        let mut w = Writes::new();
        w.put_throttle(b"a\x00b", &r).unwrap();
        w.put_throttle(b"c", &r).unwrap();
        db.apply(w).unwrap();
        let got = db.throttle_records().unwrap();
        assert_eq!(got, vec![(b"a\x00b".to_vec(), r), (b"c".to_vec(), r)]);
        let mut w = Writes::new();
        w.remove_throttle(b"c");
        db.apply(w).unwrap();
        assert_eq!(db.throttle_records().unwrap().len(), 1);
    }
}
