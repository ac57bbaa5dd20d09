//! Reading and writing frames on QUIC streams, size-bounded and within the server's byte
//! budget.
//!
//! Reading goes through the protocol crate's incremental [`FrameDecoder`]: the stream is
//! read only as far as the current frame still needs, so memory grows with the bytes that
//! actually arrived, never with what a length prefix announces. Every byte read is first
//! taken from the server-wide [`ByteBudget`] and given back when the stream's task ends,
//! so all requests in flight together hold at most the budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use rathaus_protocol::frame::{self, FrameDecoder};
use rathaus_protocol::ProtocolError;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest piece read from a stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Why no frame could be read.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The peer sent bytes that are not a valid frame: answer with an error.
    Protocol(ProtocolError),
    /// The server-wide budget for request bytes is spent: answer `Unavailable`.
    OverBudget,
    /// The stream or connection broke: nobody to answer.
    Stream(String),
}

/// The bytes of requests being received or handled, bounded: server-wide, for strangers,
/// and per user.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    /// One permit per byte.
    permits: Arc<Semaphore>,
    /// The size of the budget, for logs.
    total: usize,
    /// Whose budget it is, for logs.
    whose: &'static str,
    /// How often a read was refused because the budget was spent.
    refused: AtomicU64,
}

impl ByteBudget {
    /// A budget of `total` bytes for `whose` requests.
    pub(crate) fn new(total: usize, whose: &'static str) -> Self {
        // tokio caps a semaphore's permits; a budget beyond that is no budget anyway.
        let total = total.min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
            whose,
            refused: AtomicU64::new(0),
        }
    }

    /// Bytes currently held by requests.
    pub(crate) fn in_use(&self) -> usize {
        self.total - self.permits.available_permits()
    }

    /// Reads refused so far because the budget was spent.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes).ok()?;
        match self.permits.clone().try_acquire_many_owned(n) {
            Ok(p) => Some(p),
            Err(_) => {
                let before = self.refused.fetch_add(1, Ordering::Relaxed);
                // The first refusal and then every 1,000th: a flood must not flood the log.
                if before.is_multiple_of(1000) {
                    tracing::warn!(
                        budget = self.total,
                        whose = self.whose,
                        refused = before + 1,
                        "request byte budget spent; refusing reads with Unavailable"
                    );
                }
                None
            }
        }
    }
}

fn merge(held: &mut Option<OwnedSemaphorePermit>, permit: OwnedSemaphorePermit) {
    match held {
        Some(held) => held.merge(permit),
        None => *held = Some(permit),
    }
}

/// Reads frames from one stream, holding the budget for what it read until dropped.
pub(crate) struct FrameReader {
    /// The incremental decoder (its limit is the stream's current frame limit).
    decoder: FrameDecoder,
    /// Where the bytes are accounted.
    budget: Arc<ByteBudget>,
    /// The share of the budget the connection's user may hold, if it is a colleague's.
    user_budget: Option<Arc<ByteBudget>>,
    /// The budget held for the bytes read so far on this stream.
    held: Option<OwnedSemaphorePermit>,
    /// The user's share held for them.
    user_held: Option<OwnedSemaphorePermit>,
}

impl FrameReader {
    /// A reader accepting bodies of at most `limit` bytes, accounted in `budget` and, for
    /// a colleague's connection, in their share `user_budget` too.
    pub(crate) fn new(
        limit: usize,
        budget: Arc<ByteBudget>,
        user_budget: Option<Arc<ByteBudget>>,
    ) -> Self {
        Self {
            decoder: FrameDecoder::new(limit),
            budget,
            user_budget,
            held: None,
            user_held: None,
        }
    }

    /// Reads one frame. `Ok(None)` if the stream ended cleanly before a frame started.
    /// The length is checked against the limit as soon as the header is in, before any
    /// byte of the body is read.
    pub(crate) async fn read<T: DeserializeOwned>(
        &mut self,
        recv: &mut RecvStream,
    ) -> Result<Option<T>, ReadFailure> {
        loop {
            if let Some(value) = self.decoder.next_frame().map_err(ReadFailure::Protocol)? {
                return Ok(Some(value));
            }
            let want = self.decoder.wanted().clamp(1, READ_CHUNK);
            match recv.read_chunk(want, true).await {
                Ok(Some(chunk)) => {
                    let n = chunk.bytes.len();
                    if let Some(user) = &self.user_budget {
                        let permit = user.take(n).ok_or(ReadFailure::OverBudget)?;
                        merge(&mut self.user_held, permit);
                    }
                    let permit = self.budget.take(n).ok_or(ReadFailure::OverBudget)?;
                    merge(&mut self.held, permit);
                    self.decoder.push(&chunk.bytes);
                }
                Ok(None) => {
                    self.decoder.finish().map_err(ReadFailure::Protocol)?;
                    return Ok(None);
                }
                Err(e) => return Err(ReadFailure::Stream(e.to_string())),
            }
        }
    }
}

/// Writes one frame. Returns `false` if the stream is gone.
pub(crate) async fn write_frame<T: Serialize>(send: &mut SendStream, value: &T) -> bool {
    match frame::encode(value) {
        Ok(bytes) => write_bytes(send, Bytes::from(bytes)).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a response frame");
            let fallback = rathaus_protocol::Response::error(
                rathaus_protocol::ErrorCode::Internal,
                "the answer could not be encoded",
            );
            match frame::encode(&fallback) {
                Ok(bytes) => write_bytes(send, Bytes::from(bytes)).await,
                Err(_) => false,
            }
        }
    }
}

/// Writes the answer to `DownloadChunk`: the frame's head, then the chunk's bytes as read
/// from the blob, not copied into the frame. Returns `false` if the stream is gone.
pub(crate) async fn write_chunk_response(send: &mut SendStream, bytes: Vec<u8>) -> bool {
    let chunk = |bytes| rathaus_protocol::Response::Chunk { bytes };
    match frame::encode_split(chunk, bytes, rathaus_protocol::limits::MAX_CONTROL_FRAME) {
        Ok((head, tail)) => write_parts(send, [Bytes::from(head), Bytes::from(tail)]).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a chunk's frame");
            let fallback = rathaus_protocol::Response::error(
                rathaus_protocol::ErrorCode::Internal,
                "the answer could not be encoded",
            );
            write_frame(send, &fallback).await
        }
    }
}

/// Writes already-encoded frame bytes. Returns `false` if the stream is gone. The stream
/// keeps `bytes` (a reference to them) until the peer has them, so a frame is not copied
/// again: not a file's chunk, not an event shared by a thousand subscribers.
pub(crate) async fn write_bytes(send: &mut SendStream, bytes: Bytes) -> bool {
    write_parts(send, [bytes]).await
}

/// Writes the parts of a frame one after another (see [`write_bytes`]).
///
/// The loop is quinn's `write_chunk` written out: its nested futures took 192 bytes of
/// every subscription's task, `write_chunks` alone takes a few dozen.
async fn write_parts<const N: usize>(send: &mut SendStream, parts: [Bytes; N]) -> bool {
    let mut chunks = parts;
    let mut rest: &mut [Bytes] = &mut chunks;
    while !rest.is_empty() {
        match send.write_chunks(rest).await {
            Ok(written) => rest = &mut rest[written.chunks..],
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_budget_refuses_beyond_its_size_and_gets_bytes_back() {
        let budget = ByteBudget::new(10, "test");
        let a = budget.take(6).unwrap();
        assert_eq!(budget.in_use(), 6);
        assert!(budget.take(5).is_none());
        assert_eq!(budget.refused(), 1);
        let b = budget.take(4).unwrap();
        drop(a);
        assert_eq!(budget.in_use(), 4);
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }
}
