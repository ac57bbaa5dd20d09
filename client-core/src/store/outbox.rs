//! The outbox: messages written on this device and not yet acknowledged by the server,
//! each with its client id, so that a retry after a lost answer is stored only once.

use rathaus_protocol::ClientMsgId;
use rusqlite::{params, OptionalExtension};

use super::{fork, insert_row, record_own_entry, to_i64, to_u64, ProfileStore, TimelineRow};
use crate::error::{ClientError, Result};

/// A message waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// The client id that makes retries idempotent.
    pub client_id: ClientMsgId,
    /// Target group handle.
    pub group: String,
    /// Encoded `PostBody`.
    pub body: Vec<u8>,
    /// How often sending was attempted.
    pub attempts: u32,
}

/// A message of the outbox the server has not acknowledged.
#[derive(Debug, Clone)]
pub struct UnacknowledgedItem {
    /// The client id.
    pub client_id: ClientMsgId,
    /// Target group handle.
    pub group: String,
    /// Encoded `PostBody`.
    pub body: Vec<u8>,
    /// When it was written, Unix ms.
    pub created_ms: i64,
    /// Whether it was handed to the server already (then it may have arrived).
    pub attempted: bool,
}

impl ProfileStore {
    /// Puts a message into the outbox (state `queued`).
    pub fn enqueue(
        &self,
        client_id: ClientMsgId,
        group: &str,
        body: &[u8],
        now_ms: i64,
    ) -> Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO outbox(client_id, grp, body, state, created_ms, attempts)
             VALUES (?1, ?2, ?3, 'queued', ?4, 0)",
            )?
            .execute(params![client_id.0.as_slice(), group, body, now_ms])?;
        Ok(())
    }

    /// Messages not yet acknowledged, oldest first.
    pub fn unacknowledged(&self) -> Result<Vec<UnacknowledgedItem>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT client_id, grp, body, created_ms, state FROM outbox
             WHERE state != 'acked' ORDER BY created_ms, rowid",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, group, body, created, state)| {
                let id: [u8; 16] = id.try_into().ok()?;
                Some(UnacknowledgedItem {
                    client_id: ClientMsgId(id),
                    group,
                    body,
                    created_ms: created,
                    attempted: state != "queued",
                })
            })
            .collect())
    }

    /// Withdraws a queued message that no send has been attempted for; `false` if there
    /// is none (unknown, acknowledged, or possibly on its way already).
    pub fn cancel_queued(&self, client_id: ClientMsgId) -> Result<bool> {
        let n = self
            .db
            .prepare_cached("DELETE FROM outbox WHERE client_id = ?1 AND state = 'queued'")?
            .execute(params![client_id.0.as_slice()])?;
        Ok(n > 0)
    }

    /// Messages not yet acknowledged, oldest first.
    pub fn pending(&self) -> Result<Vec<OutboxItem>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT client_id, grp, body, attempts FROM outbox
             WHERE state != 'acked' ORDER BY created_ms, rowid",
        )?;
        let rows = stmt
            .query_map([], |r| {
                let id: Vec<u8> = r.get(0)?;
                Ok((id, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)?))
            })?
            .collect::<std::result::Result<Vec<(Vec<u8>, String, Vec<u8>, i64)>, _>>()?;
        rows.into_iter()
            .map(|(id, group, body, attempts)| {
                let id: [u8; 16] = id
                    .try_into()
                    .map_err(|_| ClientError::Invalid("corrupt outbox entry".into()))?;
                Ok(OutboxItem {
                    client_id: ClientMsgId(id),
                    group,
                    body,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    /// Records a send attempt (state `sent`).
    pub fn mark_sent(&self, client_id: ClientMsgId) -> Result<()> {
        self.db
            .prepare_cached(
                "UPDATE outbox SET state = 'sent', attempts = attempts + 1 WHERE client_id = ?1",
            )?
            .execute([client_id.0.as_slice()])?;
        Ok(())
    }

    /// Records the server's acknowledgement and the resulting timeline row, in one
    /// transaction.
    pub fn mark_acked(&mut self, client_id: ClientMsgId, row: &TimelineRow) -> Result<()> {
        let tx = self.db.transaction()?;
        // Public groups: the outbox holds the plaintext post, which can be sent again.
        let requeue_own =
            rathaus_protocol::GroupHandle::parse(&row.group).is_ok_and(|g| !g.is_secret());
        fork::cut_if_taken(
            &tx,
            &row.group,
            row.seq,
            &row.mark(),
            requeue_own,
            crate::time_fmt::now_ms(),
        )?;
        tx.prepare_cached("UPDATE outbox SET state = 'acked', seq = ?2 WHERE client_id = ?1")?
            .execute(params![client_id.0.as_slice(), to_i64(row.seq)])?;
        insert_row(&tx, row)?;
        tx.commit()?;
        Ok(())
    }

    /// Like [`ProfileStore::mark_acked`] for an MLS application message of this device,
    /// which is also remembered as its own, so that fetching it back skips it.
    pub fn mark_acked_own_mls(&mut self, client_id: ClientMsgId, row: &TimelineRow) -> Result<()> {
        let tx = self.db.transaction()?;
        // The seq of a row held from before a restore of the server (received at another
        // time): set aside from there, kept on this device, so the own message shows.
        if fork::row_mark(&tx, &row.group, row.seq)?
            .is_some_and(|held| held.sent_at_ms != row.sent_at_ms)
        {
            fork::cut_fork(&tx, &row.group, row.seq, false, crate::time_fmt::now_ms())?;
        }
        tx.prepare_cached("UPDATE outbox SET state = 'acked', seq = ?2 WHERE client_id = ?1")?
            .execute(params![client_id.0.as_slice(), to_i64(row.seq)])?;
        insert_row(&tx, row)?;
        record_own_entry(&tx, &row.group, row.seq)?;
        tx.commit()?;
        Ok(())
    }

    /// The seq and server time of an acknowledged message, if it was acknowledged.
    pub fn receipt(&self, client_id: ClientMsgId) -> Result<Option<(u64, i64)>> {
        let row: Option<(i64, i64)> = self
            .db
            .prepare_cached(
                "SELECT o.seq, t.sent_at_ms FROM outbox o
                 JOIN timeline t ON t.grp = o.grp AND t.seq = o.seq
                 WHERE o.client_id = ?1 AND o.state = 'acked' AND o.failure IS NULL",
            )?
            .query_row([client_id.0.as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(row.map(|(seq, at)| (to_u64(seq), at)))
    }

    /// Drops an outbox entry the server refused for good (e.g. `Forbidden`).
    pub fn mark_failed(&self, client_id: ClientMsgId, reason: &str) -> Result<()> {
        self.db
            .prepare_cached("UPDATE outbox SET state = 'acked', failure = ?2 WHERE client_id = ?1")?
            .execute(params![client_id.0.as_slice(), reason])?;
        Ok(())
    }
}
