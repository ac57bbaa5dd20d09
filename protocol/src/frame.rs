//! The frame codec: `u32` big-endian body length, then a postcard body.
//!
//! [`FrameDecoder`] is an incremental, sans-IO decoder: push whatever bytes arrived, then
//! ask for frames. "Need more bytes" (`Ok(None)`) is kept apart from "this is wrong"
//! (`Err`). The length prefix is checked against the limit *before* any buffer for the
//! body is reserved, so an attacker announcing 4 GiB costs nothing.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::ProtocolError;
use crate::limits::MAX_CONTROL_FRAME;

/// Length of the frame header (the big-endian body length).
pub const HEADER_LEN: usize = 4;

/// Encodes `value` as one frame (header + body). Fails only if the body would exceed
/// [`MAX_CONTROL_FRAME`] or the value cannot be serialized.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtocolError> {
    encode_with_limit(value, MAX_CONTROL_FRAME)
}

/// Encodes `value` as one frame whose body may be at most `limit` bytes.
pub fn encode_with_limit<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut out = vec![0u8; HEADER_LEN];
    let mut out = postcard::to_extend(value, std::mem::take(&mut out))
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > limit {
        return Err(ProtocolError::FrameTooLarge { len, limit });
    }
    // `len <= limit <= u32::MAX` on every platform we build for; checked to be total anyway.
    let len32 = u32::try_from(len).map_err(|_| ProtocolError::FrameTooLarge { len, limit })?;
    out[..HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

/// Encodes the message `with(tail)` as one frame of two parts: the frame up to its last
/// field, and `tail`, that field's bytes, untouched, so that a stream can send a file's
/// chunk without copying it into the frame. `with` must build a message whose last field
/// is a byte string holding what it is given (`Response::Chunk`, `Request::UploadChunk`);
/// that is checked, and anything else fails. The two parts are, end to end, the bytes of
/// [`encode_with_limit`]`(&with(tail), limit)`.
pub fn encode_split<T: Serialize>(
    with: impl Fn(Vec<u8>) -> T,
    tail: Vec<u8>,
    limit: usize,
) -> Result<(Vec<u8>, Vec<u8>), ProtocolError> {
    let mut head = split_head(&with)?;
    let mut n = tail.len();
    while n >= 0x80 {
        head.push((n as u8) | 0x80);
        n >>= 7;
    }
    head.push(n as u8);
    let len = head.len() + tail.len();
    if len > limit {
        return Err(ProtocolError::FrameTooLarge { len, limit });
    }
    let len32 = u32::try_from(len).map_err(|_| ProtocolError::FrameTooLarge { len, limit })?;
    let mut frame = Vec::with_capacity(HEADER_LEN + head.len());
    frame.extend_from_slice(&len32.to_be_bytes());
    frame.extend_from_slice(&head);
    Ok((frame, tail))
}

/// Where the byte string of `body` begins, if `body` encodes `with(bytes)` for some
/// bytes (see [`encode_split`]): so that a receiver can take a file's chunk out of the
/// frame it arrived in instead of copying it. `None` for any other body (an error
/// answer, say), which the receiver decodes as usual.
pub fn split_offset<T: Serialize>(with: impl Fn(Vec<u8>) -> T, body: &[u8]) -> Option<usize> {
    let head = split_head(&with).ok()?;
    let rest = body.strip_prefix(head.as_slice())?;
    // The length as postcard writes it: LEB128, at most ten bytes for a u64, the tenth
    // holding its top bit only (more would overflow, which postcard refuses too).
    let mut len: u64 = 0;
    for (i, &b) in rest.iter().enumerate().take(10) {
        if i == 9 && b > 1 {
            return None;
        }
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let offset = head.len() + i + 1;
            return (body.len().checked_sub(offset)? as u64 == len).then_some(offset);
        }
    }
    None
}

/// The body of `with(empty)` up to its last field's length, checked to be a message
/// whose last field is a byte string: empty, that field is its length alone, a single 0
/// at the very end; with one byte it is 1 and that byte, at the same place.
fn split_head<T: Serialize>(with: &impl Fn(Vec<u8>) -> T) -> Result<Vec<u8>, ProtocolError> {
    let body = |bytes: Vec<u8>| {
        postcard::to_allocvec(&with(bytes)).map_err(|e| ProtocolError::Malformed(e.to_string()))
    };
    let mut head = body(Vec::new())?;
    let probe = body(vec![0xa5])?;
    let fits = head.last() == Some(&0)
        && probe.len() == head.len() + 1
        && probe[..head.len() - 1] == head[..head.len() - 1]
        && probe[head.len() - 1..] == [1, 0xa5];
    if !fits {
        return Err(ProtocolError::Malformed(
            "a split frame needs a message whose last field is a byte string".into(),
        ));
    }
    head.pop();
    Ok(head)
}

/// Decodes a whole frame body (without header) into `T`. Trailing bytes are an error.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(format!(
            "{} trailing bytes after the frame body",
            rest.len()
        )));
    }
    Ok(value)
}

/// Reads the announced body length from a header, rejecting it if over `limit`.
pub fn body_len(header: [u8; HEADER_LEN], limit: usize) -> Result<usize, ProtocolError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > limit {
        return Err(ProtocolError::FrameTooLarge { len, limit });
    }
    Ok(len)
}

/// An incremental frame decoder over a byte buffer.
///
/// Its buffer only ever holds bytes that arrived: a header announcing a large body costs
/// nothing until the body itself comes in. An IO driver asks [`FrameDecoder::wanted`] how
/// many bytes the next frame still needs, reads at most that many, pushes them and asks
/// [`FrameDecoder::next_frame`] again; it then never reads past a frame and never holds
/// more than one frame's bytes.
#[derive(Debug)]
pub struct FrameDecoder {
    /// Bytes received and not yet consumed as frames.
    buf: Vec<u8>,
    /// Largest body this decoder accepts.
    limit: usize,
}

/// A buffer that held a large frame is given back once the frame is consumed, so a
/// long-lived stream (a subscription) does not keep its largest frame's memory forever.
const KEEP_CAPACITY: usize = 64 * 1024;

impl FrameDecoder {
    /// A decoder accepting bodies of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
        }
    }

    /// The largest body this decoder accepts.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Changes the largest body accepted from the next frame on (a connection's limit
    /// rises once it has authenticated).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Appends received bytes. The buffer grows by exactly what arrived (amortised).
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Makes room at once for the whole frame whose header is buffered (if its length is
    /// within the limit), so that its body is copied into place once as it arrives instead
    /// of moving each time the buffer doubles. Only for a peer trusted with that much
    /// memory before it sends it: a client reading its server's answer, never a server
    /// reading a client's request.
    pub fn reserve_announced(&mut self) {
        if let Some(len) = self.announced().filter(|&len| len <= self.limit) {
            let total = HEADER_LEN + len;
            self.buf.reserve_exact(total.saturating_sub(self.buf.len()));
        }
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes the next frame needs before [`FrameDecoder::next_frame`] can
    /// return it: the rest of the header, then the rest of the body. `0` when a whole
    /// frame is buffered or the announced length is over the limit (then `next_frame`
    /// reports the error). Reading at most this many bytes at a time keeps the buffer
    /// within one frame.
    pub fn wanted(&self) -> usize {
        let Some(len) = self.announced() else {
            return HEADER_LEN - self.buf.len();
        };
        if len > self.limit {
            return 0;
        }
        (HEADER_LEN + len).saturating_sub(self.buf.len())
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or an error if the
    /// buffered bytes can never form a valid frame (after an error, the stream must be
    /// abandoned: frame boundaries are lost).
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtocolError> {
        let Some(total) = self.complete_frame()? else {
            return Ok(None);
        };
        let value = decode_body(&self.buf[HEADER_LEN..total]);
        self.buf.drain(..total);
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        value.map(Some)
    }

    /// The next complete frame as it arrived, header included (its body from
    /// [`HEADER_LEN`] on), undecoded; `Ok(None)` if more bytes are needed, an error as for
    /// [`FrameDecoder::next_frame`]. A buffer holding exactly the frame is handed over
    /// as it is, without a copy.
    pub fn next_raw_frame(&mut self) -> Result<Option<Vec<u8>>, ProtocolError> {
        let Some(total) = self.complete_frame()? else {
            return Ok(None);
        };
        if self.buf.len() == total {
            return Ok(Some(std::mem::take(&mut self.buf)));
        }
        let frame = self.buf[..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(frame))
    }

    /// The length (header included) of the frame at the front of the buffer once it is
    /// all there, `Ok(None)` before, an error if its announced length is over the limit.
    fn complete_frame(&self) -> Result<Option<usize>, ProtocolError> {
        let Some(len) = self.announced() else {
            return Ok(None);
        };
        if len > self.limit {
            return Err(ProtocolError::FrameTooLarge {
                len,
                limit: self.limit,
            });
        }
        let total = HEADER_LEN + len;
        Ok((self.buf.len() >= total).then_some(total))
    }

    /// Call when the stream has ended: an error if a partial frame is left over.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = self
            .announced()
            .map_or(HEADER_LEN, |len| HEADER_LEN.saturating_add(len));
        Err(ProtocolError::Truncated {
            have: self.buf.len(),
            need,
        })
    }

    /// The body length the buffered header announces, once the header is complete.
    fn announced(&self) -> Option<usize> {
        let header: [u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(u32::from_be_bytes(header) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCode, Event, Request, Response};
    use proptest::prelude::*;

    /// A chunk's frame in two parts is, end to end, the frame encoded whole, for every
    /// length's varint (one to three bytes) and both messages that carry chunks; a
    /// message whose last field is not a byte string is refused.
    #[test]
    fn a_split_frame_is_the_whole_frame_in_two_parts() {
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 256 * 1024] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (head, tail) = encode_split(
                |bytes| Response::Chunk { bytes },
                bytes.clone(),
                MAX_CONTROL_FRAME,
            )
            .unwrap();
            assert_eq!(tail, bytes);
            let whole = encode(&Response::Chunk {
                bytes: bytes.clone(),
            })
            .unwrap();
            assert_eq!([head, tail].concat(), whole, "Chunk of {len} bytes");

            let upload = |bytes| Request::UploadChunk {
                upload: 300,
                index: 7,
                bytes,
            };
            let (head, tail) = encode_split(upload, bytes.clone(), MAX_CONTROL_FRAME).unwrap();
            assert_eq!(
                [head, tail].concat(),
                encode(&upload(bytes)).unwrap(),
                "UploadChunk of {len} bytes"
            );
        }
        assert!(matches!(
            encode_split(|_| Request::Subscribe, vec![1, 2, 3], MAX_CONTROL_FRAME),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            encode_split(|bytes| Response::Chunk { bytes }, vec![0; 100], 50),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }

    /// A receiver finds a chunk's bytes where they start in the frame it got, for every
    /// length's varint, straight from the decoder's buffer; an error answer, a cut or
    /// padded chunk, or another message is not taken for a chunk.
    #[test]
    fn a_chunk_is_found_in_its_frame_and_nothing_else_is() {
        let chunk = |bytes| Response::Chunk { bytes };
        for len in [0usize, 1, 127, 128, 16_384, 256 * 1024] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut decoder = FrameDecoder::new(MAX_CONTROL_FRAME);
            decoder.push(&encode(&chunk(bytes.clone())).unwrap());
            let frame = decoder.next_raw_frame().unwrap().unwrap();
            assert_eq!(decoder.buffered(), 0);
            let body = &frame[HEADER_LEN..];
            let at = split_offset(chunk, body).unwrap();
            assert_eq!(&body[at..], &bytes[..], "{len} bytes");
            // One byte short or one too many: not a chunk of that length.
            assert_eq!(split_offset(chunk, &body[..body.len() - 1]), None);
            assert_eq!(split_offset(chunk, &[body, &[0]].concat()), None);
        }
        let error = encode(&Response::error(ErrorCode::Forbidden, "no")).unwrap();
        assert_eq!(split_offset(chunk, &error[HEADER_LEN..]), None);
        assert_eq!(split_offset(chunk, &[]), None);
        assert_eq!(split_offset(|_| Request::Subscribe, &[0, 0]), None);
        // An endless length varint is no chunk either.
        let head = split_head(&chunk).unwrap();
        assert_eq!(
            split_offset(chunk, &[head.clone(), vec![0xff; 16]].concat()),
            None
        );
        // Nor one that overflows a u64 in its tenth byte.
        let overflow = [head, vec![0x80; 9], vec![0x02]].concat();
        assert_eq!(split_offset(chunk, &overflow), None);
        // Two frames buffered: the first is handed out, the second stays.
        let mut decoder = FrameDecoder::new(MAX_CONTROL_FRAME);
        let one = encode(&chunk(vec![1, 2, 3])).unwrap();
        decoder.push(&[one.clone(), one.clone()].concat());
        assert_eq!(decoder.next_raw_frame().unwrap().unwrap(), one);
        assert_eq!(decoder.buffered(), one.len());
    }

    /// A frame announced within the limit gets its whole room at once and decodes as
    /// before; one announced over the limit gets none, and is refused.
    #[test]
    fn room_is_made_for_an_announced_frame_only_within_the_limit() {
        let frame = encode(&Response::Chunk {
            bytes: vec![9u8; 100_000],
        })
        .unwrap();
        let mut decoder = FrameDecoder::new(200_000);
        decoder.push(&frame[..10]);
        decoder.reserve_announced();
        assert!(decoder.buf.capacity() >= frame.len());
        for piece in frame[10..].chunks(7_000) {
            decoder.push(piece);
            decoder.reserve_announced();
        }
        match decoder.next_frame::<Response>().unwrap() {
            Some(Response::Chunk { bytes }) => assert_eq!(bytes, vec![9u8; 100_000]),
            other => panic!("{other:?}"),
        }

        let mut small = FrameDecoder::new(1_000);
        small.push(&frame[..10]);
        small.reserve_announced();
        assert!(small.buf.capacity() < 1_000);
        assert!(small.next_frame::<Response>().is_err());
    }

    /// File chunks are byte strings, which postcard writes exactly as it wrote them when
    /// they were sequences of `u8` (length, then the bytes): peers of either kind read
    /// each other's chunks.
    #[test]
    fn chunk_bytes_keep_the_wire_form_of_a_byte_sequence() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let fields_as_sequence = postcard::to_allocvec(&(7u64, 3u32, bytes.clone())).unwrap();
        let request = Request::UploadChunk {
            upload: 7,
            index: 3,
            bytes: bytes.clone(),
        };
        let encoded = postcard::to_allocvec(&request).unwrap();
        assert!(encoded.ends_with(&fields_as_sequence));
        let tag = &encoded[..encoded.len() - fields_as_sequence.len()];
        let old_form = [tag, &fields_as_sequence].concat();
        assert_eq!(postcard::from_bytes::<Request>(&old_form).unwrap(), request);

        let sequence = postcard::to_allocvec(&bytes).unwrap();
        let response = Response::Chunk {
            bytes: bytes.clone(),
        };
        let encoded = postcard::to_allocvec(&response).unwrap();
        assert!(encoded.ends_with(&sequence));
        let tag = &encoded[..encoded.len() - sequence.len()];
        let old_form = [tag, &sequence].concat();
        assert_eq!(
            postcard::from_bytes::<Response>(&old_form).unwrap(),
            response
        );
    }

    #[test]
    fn oversize_length_is_rejected_before_the_body_arrives() {
        let mut d = FrameDecoder::new(16);
        d.push(&(17u32).to_be_bytes());
        assert_eq!(
            d.next_frame::<Request>(),
            Err(ProtocolError::FrameTooLarge { len: 17, limit: 16 })
        );
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let bytes = encode(&Request::Ping).unwrap();
        let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
        for b in &bytes[..bytes.len() - 1] {
            d.push(&[*b]);
            assert_eq!(d.next_frame::<Request>(), Ok(None));
        }
        assert!(d.finish().is_err());
        d.push(&bytes[bytes.len() - 1..]);
        assert_eq!(d.next_frame::<Request>(), Ok(Some(Request::Ping)));
        assert!(d.finish().is_ok());
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut bytes = encode(&Request::Ping).unwrap();
        bytes.push(0);
        let len = (bytes.len() - HEADER_LEN) as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
        d.push(&bytes);
        assert!(matches!(
            d.next_frame::<Request>(),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn a_bare_header_costs_no_body_buffer() {
        let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
        d.push(&(1024u32 * 1024).to_be_bytes());
        assert_eq!(d.next_frame::<Request>(), Ok(None));
        assert_eq!(d.buffered(), HEADER_LEN);
        assert!(d.buf.capacity() < 1024, "{}", d.buf.capacity());
        assert_eq!(d.wanted(), 1024 * 1024);
        assert_eq!(
            d.finish(),
            Err(ProtocolError::Truncated {
                have: HEADER_LEN,
                need: HEADER_LEN + 1024 * 1024
            })
        );
    }

    #[test]
    fn wanted_counts_down_to_the_end_of_the_frame() {
        let bytes = encode(&Request::Ping).unwrap();
        let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
        assert_eq!(d.wanted(), HEADER_LEN);
        let mut fed = 0;
        while d.wanted() > 0 {
            let n = d.wanted().min(3);
            d.push(&bytes[fed..fed + n]);
            fed += n;
        }
        assert_eq!(fed, bytes.len());
        assert_eq!(d.next_frame::<Request>(), Ok(Some(Request::Ping)));
        assert_eq!(d.wanted(), HEADER_LEN);
    }

    #[test]
    fn over_limit_wants_nothing_more() {
        let mut d = FrameDecoder::new(8);
        d.push(&9u32.to_be_bytes());
        assert_eq!(d.wanted(), 0);
        assert!(d.next_frame::<Request>().is_err());
        d.set_limit(9);
        assert_eq!(d.wanted(), 9);
    }

    #[test]
    fn encoding_over_the_limit_fails() {
        let big = Request::Ping;
        assert!(encode_with_limit(&big, 0).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            for limit in [0usize, 7, 1024, MAX_CONTROL_FRAME] {
                let mut d = FrameDecoder::new(limit);
                d.push(&bytes);
                let _ = d.next_frame::<Request>();
                let mut d = FrameDecoder::new(limit);
                d.push(&bytes);
                let _ = d.next_frame::<Response>();
                let mut d = FrameDecoder::new(limit);
                d.push(&bytes);
                let _ = d.next_frame::<Event>();
                let mut d = FrameDecoder::new(limit);
                d.push(&bytes);
                let _ = d.next_raw_frame();
            }
            let at = split_offset(|bytes| Response::Chunk { bytes }, &bytes);
            prop_assert!(at.is_none_or(|at| at <= bytes.len()));
            let _ = decode_body::<Request>(&bytes);
            let _ = decode_body::<Response>(&bytes);
            let _ = decode_body::<Event>(&bytes);
            let _ = decode_body::<crate::Content>(&bytes);
        }

        #[test]
        fn reading_what_is_wanted_never_buffers_past_one_frame(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            step in 1usize..64,
            limit in 0usize..2048,
        ) {
            let mut d = FrameDecoder::new(limit);
            let mut at = 0;
            loop {
                match d.next_frame::<Request>() {
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                    Err(_) => break,
                }
                let n = d.wanted().min(step).min(bytes.len() - at);
                prop_assert!(d.wanted() > 0);
                if n == 0 {
                    break;
                }
                d.push(&bytes[at..at + n]);
                at += n;
                prop_assert!(d.buffered() <= HEADER_LEN + limit);
            }
        }

        #[test]
        fn arbitrary_bodies_behind_a_valid_header_never_panic(body in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut framed = (body.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&body);
            let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
            d.push(&framed);
            let _ = d.next_frame::<Request>();
        }

        #[test]
        fn frames_round_trip_in_any_chunking(text in ".{0,200}", cut in 0usize..64, seq in any::<u64>()) {
            let req = Request::Fetch {
                group: crate::GroupHandle::parse("bauamt").unwrap(),
                since: seq,
                limit: 10,
            };
            let content = crate::Content::text(text.clone());
            let post = Request::Post {
                group: crate::GroupHandle::parse("bauamt").unwrap(),
                client_id: crate::ClientMsgId([7; 16]),
                body: crate::PostBody::Public(content.into()),
            };
            let mut stream = encode(&req).unwrap();
            stream.extend(encode(&post).unwrap());
            let cut = cut.min(stream.len());
            let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
            d.push(&stream[..cut]);
            let mut got = Vec::new();
            while let Some(r) = d.next_frame::<Request>().unwrap() { got.push(r); }
            d.push(&stream[cut..]);
            while let Some(r) = d.next_frame::<Request>().unwrap() { got.push(r); }
            prop_assert_eq!(got, vec![req, post]);
        }
    }
}
