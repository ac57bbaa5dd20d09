//! What every fuzz target checks: a decoder returns a value or an error, never panics,
//! and whatever it accepts encodes again to a stable encoding.

use rathaus_protocol::frame::{self, FrameDecoder, HEADER_LEN};
use rathaus_protocol::limits::MAX_CONTROL_FRAME;
use serde::{de::DeserializeOwned, Serialize};

/// `data` as the body of one frame of type `T`.
pub fn decode<T: DeserializeOwned + Serialize>(data: &[u8]) {
    let Ok(value) = frame::decode_body::<T>(data) else {
        return;
    };
    // A value decoded from at most a frame's worth of bytes always fits in a frame again
    // unless it was over the limit to begin with.
    let Ok(again) = frame::encode(&value) else {
        assert!(
            data.len() > MAX_CONTROL_FRAME,
            "accepted value does not encode"
        );
        return;
    };
    let reparsed: T = match frame::decode_body(&again[HEADER_LEN..]) {
        Ok(v) => v,
        Err(e) => panic!("re-encoded value does not decode: {e}"),
    };
    match frame::encode(&reparsed) {
        Ok(twice) => assert_eq!(again, twice, "encoding is not stable"),
        Err(e) => panic!("re-decoded value does not encode: {e}"),
    }
}

/// `data` as a byte stream of request frames arriving in chunks. The first two bytes pick
/// the decoder's limit and the chunk size.
pub fn frame_stream(data: &[u8]) {
    let [limit_pick, chunk_pick, rest @ ..] = data else {
        return;
    };
    let limit = match limit_pick % 4 {
        0 => 0,
        1 => 16,
        2 => 4096,
        _ => MAX_CONTROL_FRAME,
    };
    let chunk = usize::from(*chunk_pick).max(1);
    let mut decoder = FrameDecoder::new(limit);
    let mut pushed = 0;
    'stream: for piece in rest.chunks(chunk) {
        decoder.push(piece);
        pushed += piece.len();
        loop {
            match decoder.next_frame::<rathaus_protocol::Request>() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                // Frame boundaries are lost after an error: the stream is abandoned.
                Err(_) => break 'stream,
            }
        }
        assert!(decoder.buffered() <= pushed);
    }
    let _ = decoder.finish();
}
