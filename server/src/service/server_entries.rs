//! Entries the server writes into a log itself: published announcements and moderation
//! notes. They take the next seq like any post, go into one atomic batch with the writes
//! that belong to them (the announcement's new state, the removed post's tombstone, the
//! audit record), are acknowledged only once durable, and are pushed like any post.

use std::sync::{Arc, PoisonError};

use rand::rngs::OsRng;
use rand::RngCore;
use rathaus_protocol::{frame, ClientMsgId, Event, GroupHandle, Response};

use super::audit::AuditAppend;
use super::{Broadcast, Heads, Refusal, Service};
use crate::store::{StoredEntry, Writes};

/// An entry applied to the store, not yet known durable.
#[derive(Debug)]
pub(super) struct Appended {
    /// Its group.
    group: GroupHandle,
    /// Its seq.
    pub(super) seq: u64,
    /// The entry, to push once durable.
    entry: StoredEntry,
    /// Its group-commit ticket.
    ticket: u64,
}

/// What [`Service::append_entry`]'s builder returns: the new entry, the writes that go
/// with it, and the audit chain holding the action's record (committed once applied).
pub(super) type Built<'a> = (StoredEntry, Writes, AuditAppend<'a>);

impl Service {
    /// Under the log lock: allocates the next seq of `group`, lets `build` make the entry
    /// (and read whatever it must read consistently with the log), and applies everything
    /// in one batch. Call [`Service::deliver`] afterwards, outside every lock.
    pub(super) fn append_entry<'s>(
        &'s self,
        group: &GroupHandle,
        build: impl FnOnce(u64) -> Result<Built<'s>, Refusal>,
    ) -> Result<Appended, Refusal> {
        let mut heads = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let head = self.written_head(&heads, group)?;
        let seq = self.next_seq(&heads, group)?;
        let (entry, mut w, audit) = build(seq)?;
        w.put_entry(group, seq, &entry)?;
        self.db.apply(w)?;
        audit.commit();
        let durable = heads.get(group).map_or(head, |h| h.durable);
        heads.insert(
            group.clone(),
            Heads {
                written: seq,
                durable,
            },
        );
        Ok(Appended {
            group: group.clone(),
            seq,
            entry,
            ticket: self.durability.written(),
        })
    }

    /// Waits until an appended entry is durable, lets readers see it and pushes it to
    /// every subscriber who may read the group.
    pub(super) async fn deliver(&self, appended: Appended) -> Result<u64, Refusal> {
        let Appended {
            group,
            seq,
            entry,
            ticket,
        } = appended;
        self.durable(ticket).await?;
        {
            let mut heads = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(h) = heads.get_mut(&group) {
                h.durable = h.durable.max(seq);
            }
        }
        self.index_entry(&group, seq, &entry);
        let event = Response::Event(Event::Posted {
            group: group.clone(),
            entry: entry.to_log_entry(seq),
        });
        match frame::encode(&event) {
            Ok(bytes) => self.publish(Broadcast::Posted {
                readers: self.readers_of(&group),
                group,
                frame: Arc::new(bytes),
            }),
            Err(e) => tracing::error!(%group, seq, error = %e, "cannot encode event"),
        }
        Ok(seq)
    }
}

/// A fresh idempotency id for an entry the server writes (nobody retries it).
pub(super) fn server_client_id() -> ClientMsgId {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    ClientMsgId(id)
}
