//! Reading and writing frames on QUIC streams, size-bounded.

use quinn::{ReadExactError, RecvStream, SendStream};
use rathaus_protocol::frame::{self, HEADER_LEN};
use rathaus_protocol::ProtocolError;
use serde::{de::DeserializeOwned, Serialize};

/// Why no frame could be read.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The peer sent bytes that are not a valid frame: answer with an error.
    Protocol(ProtocolError),
    /// The stream or connection broke: nobody to answer.
    Stream(String),
}

/// Reads one frame of at most `limit` body bytes. `Ok(None)` if the stream ended cleanly
/// before a frame started. The length is checked before the body buffer is allocated.
pub(crate) async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    limit: usize,
) -> Result<Option<T>, ReadFailure> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(have)) => {
            return Err(ReadFailure::Protocol(ProtocolError::Truncated {
                have,
                need: HEADER_LEN,
            }))
        }
        Err(ReadExactError::ReadError(e)) => return Err(ReadFailure::Stream(e.to_string())),
    }
    let len = frame::body_len(header, limit).map_err(ReadFailure::Protocol)?;
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(have)) => {
            return Err(ReadFailure::Protocol(ProtocolError::Truncated {
                have: HEADER_LEN + have,
                need: HEADER_LEN + len,
            }))
        }
        Err(ReadExactError::ReadError(e)) => return Err(ReadFailure::Stream(e.to_string())),
    }
    frame::decode_body(&body)
        .map(Some)
        .map_err(ReadFailure::Protocol)
}

/// Writes one frame. Returns `false` if the stream is gone.
pub(crate) async fn write_frame<T: Serialize>(send: &mut SendStream, value: &T) -> bool {
    match frame::encode(value) {
        Ok(bytes) => write_bytes(send, &bytes).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a response frame");
            let fallback = rathaus_protocol::Response::error(
                rathaus_protocol::ErrorCode::Internal,
                "the answer could not be encoded",
            );
            match frame::encode(&fallback) {
                Ok(bytes) => write_bytes(send, &bytes).await,
                Err(_) => false,
            }
        }
    }
}

/// Writes already-encoded frame bytes. Returns `false` if the stream is gone.
pub(crate) async fn write_bytes(send: &mut SendStream, bytes: &[u8]) -> bool {
    send.write_all(bytes).await.is_ok()
}
