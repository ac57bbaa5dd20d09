//! Every decoder in `rathaus-protocol` fed arbitrary bytes: it returns a value or an
//! error, never panics, and never reserves memory for more than the bytes it was given
//! (the frame length is checked against the limit before anything is buffered for the
//! body; postcard reads lengths against the remaining input).

use proptest::prelude::*;
use rathaus_protocol::frame::{self, FrameDecoder, HEADER_LEN};
use rathaus_protocol::limits::MAX_CONTROL_FRAME;
use rathaus_protocol::messages::{
    AnnouncementInfo, AnnouncementState, AuditEntry, ClaimedKeyPackage, DepartmentInfo, EntryBody,
    Event, GroupKind, GroupSummary, LogEntry, MemberInfo, PostBody, Request, Response,
    SecretGroupInfo, SessionInfo, UserSummary, WelcomeInfo,
};
use rathaus_protocol::{
    fingerprint, ClientMsgId, Content, ContentBody, DepartmentSlug, DeviceId, DeviceKey, ErrorCode,
    GroupHandle, ProtocolError, Role, Signature, UserId,
};

/// Runs `$check::<T>(bytes)` for every wire type.
macro_rules! for_every_wire_type {
    ($check:ident, $bytes:expr) => {{
        let b: &[u8] = $bytes;
        $check::<Request>(b);
        $check::<Response>(b);
        $check::<Event>(b);
        $check::<PostBody>(b);
        $check::<Content>(b);
        $check::<ContentBody>(b);
        $check::<LogEntry>(b);
        $check::<EntryBody>(b);
        $check::<SessionInfo>(b);
        $check::<GroupKind>(b);
        $check::<GroupSummary>(b);
        $check::<MemberInfo>(b);
        $check::<UserSummary>(b);
        $check::<DepartmentInfo>(b);
        $check::<ClaimedKeyPackage>(b);
        $check::<SecretGroupInfo>(b);
        $check::<WelcomeInfo>(b);
        $check::<AnnouncementState>(b);
        $check::<AnnouncementInfo>(b);
        $check::<AuditEntry>(b);
        $check::<ErrorCode>(b);
        $check::<UserId>(b);
        $check::<DepartmentSlug>(b);
        $check::<GroupHandle>(b);
        $check::<DeviceId>(b);
        $check::<DeviceKey>(b);
        $check::<Signature>(b);
        $check::<ClientMsgId>(b);
        $check::<Role>(b);
    }};
}

/// Decodes `bytes` as a frame body and, through the incremental decoder, as a frame
/// stream under several limits. Whatever decodes must encode again and decode to an
/// equal encoding (the codec is canonical for values it accepted).
fn decode_everywhere<T>(bytes: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    if let Ok(value) = frame::decode_body::<T>(bytes) {
        if let Ok(again) = frame::encode(&value) {
            let reparsed: T = frame::decode_body(&again[HEADER_LEN..])
                .unwrap_or_else(|e| panic!("re-encoded value does not decode: {e}"));
            let twice = frame::encode(&reparsed).expect("encodes once, encodes twice");
            assert_eq!(again, twice, "encoding is not stable");
        }
    }
    for limit in [0, 1, 64, 4096, MAX_CONTROL_FRAME] {
        let mut d = FrameDecoder::new(limit);
        d.push(bytes);
        // A stream of frames: keep taking until "need more" or an error.
        for _ in 0..bytes.len() + 1 {
            match d.next_frame::<T>() {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        let _ = d.finish();
        assert!(
            d.buffered() <= bytes.len(),
            "decoder buffered bytes it never got"
        );
    }
}

/// Valid frames of the common messages, as seeds that mutations start from.
fn valid_frames() -> Vec<Vec<u8>> {
    let group = GroupHandle::parse("bauamt").expect("valid handle");
    let user = UserId::parse("P1001").expect("valid id");
    let entry = LogEntry {
        seq: 42,
        sender: user.clone(),
        sender_name: "Anna Berg".into(),
        sent_at_ms: 1_700_000_000_000,
        client_id: ClientMsgId([3; 16]),
        body: EntryBody::Content(Content::text("Die Baustelle ist ab Montag gesperrt.")),
    };
    let frames = [
        frame::encode(&Request::Ping),
        frame::encode(&Request::Post {
            group: group.clone(),
            client_id: ClientMsgId([7; 16]),
            body: PostBody::Public(Content::text("Hallo Bauamt").into()),
        }),
        frame::encode(&Request::Post {
            group: GroupHandle::parse("bauamt/secret").expect("valid handle"),
            client_id: ClientMsgId([8; 16]),
            body: PostBody::Mls(vec![0, 1, 0, 2, 0xde, 0xad]),
        }),
        frame::encode(&Request::Fetch {
            group: group.clone(),
            since: 7,
            limit: 100,
        }),
        frame::encode(&Response::Posted {
            seq: 9,
            sent_at_ms: 1,
            duplicate: false,
        }),
        frame::encode(&Response::Entries {
            group: group.clone(),
            entries: vec![entry.clone()],
            head: 42,
        }),
        frame::encode(&Response::error(ErrorCode::StaleEpoch, "epoch 3 is over")),
        frame::encode(&Response::Event(Event::Posted { group, entry })),
    ];
    frames
        .into_iter()
        .map(|f| f.expect("sample messages encode"))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        for_every_wire_type!(decode_everywhere, &bytes);
        // The body alone, behind a valid header.
        let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        for_every_wire_type!(decode_everywhere, &framed);
    }

    #[test]
    fn mutated_valid_frames_never_panic_any_decoder(
        seed in 0usize..8,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let frames = valid_frames();
        let mut bytes = frames[seed % frames.len()].clone();
        for (at, xor) in flips {
            let i = at % bytes.len();
            bytes[i] ^= xor;
        }
        let len = cut % (bytes.len() + 1);
        for_every_wire_type!(decode_everywhere, &bytes[..len]);
        for_every_wire_type!(decode_everywhere, &bytes);
    }

    #[test]
    fn identifier_and_fingerprint_parsers_are_total(s in ".{0,100}", bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        let _ = UserId::parse(&s);
        let _ = DepartmentSlug::parse(&s);
        let _ = GroupHandle::parse(&s);
        let _ = Role::parse(&s);
        let _ = fingerprint::parse(&s);
        let _ = Signature::try_from(bytes.clone());
        let lossy = String::from_utf8_lossy(&bytes);
        let _ = GroupHandle::parse(&lossy);
        let _ = fingerprint::parse(&lossy);
        if let Ok(content) = frame::decode_body::<Content>(&bytes) {
            let _ = content.validate();
            let _ = content.summary();
        }
    }
}

#[test]
fn valid_frames_decode() {
    for bytes in valid_frames() {
        let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
        d.push(&bytes);
        let decoded = d.next_frame::<Request>().ok().flatten().is_some() || {
            let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
            d.push(&bytes);
            d.next_frame::<Response>().ok().flatten().is_some()
        };
        assert!(decoded, "a sample frame does not decode");
    }
}

#[test]
fn an_oversized_length_is_refused_before_anything_is_buffered_for_the_body() {
    for limit in [0usize, 16, MAX_CONTROL_FRAME] {
        let mut d = FrameDecoder::new(limit);
        let announced = limit + 1;
        d.push(&(announced as u32).to_be_bytes());
        assert_eq!(
            d.next_frame::<Request>(),
            Err(ProtocolError::FrameTooLarge {
                len: announced,
                limit
            })
        );
        assert_eq!(
            d.buffered(),
            HEADER_LEN,
            "no room was reserved for the body"
        );
    }
    let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
    d.push(&u32::MAX.to_be_bytes());
    assert!(matches!(
        d.next_frame::<Response>(),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
}

#[test]
fn huge_announced_lengths_inside_a_body_fail_without_allocating_them() {
    // `Request::Post` with a `PostBody::Mls` claiming 2^63 bytes, and `Response::Entries`
    // claiming 2^63 entries: postcard checks lengths against the remaining input (and
    // serde caps pre-allocation), so this fails fast instead of reserving exabytes.
    let post = frame::encode(&Request::Post {
        group: GroupHandle::parse("bauamt/secret").expect("valid handle"),
        client_id: ClientMsgId([1; 16]),
        body: PostBody::Mls(vec![1, 2, 3]),
    })
    .expect("encodes");
    let huge_varint = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    // Replace the Mls payload's length (the byte before the payload) with a huge varint.
    let body = &post[HEADER_LEN..];
    let payload_at = body.len() - 3;
    let mut forged = body[..payload_at - 1].to_vec();
    forged.extend_from_slice(&huge_varint);
    forged.extend_from_slice(&body[payload_at..]);
    assert!(frame::decode_body::<Request>(&forged).is_err());

    let entries = frame::encode(&Response::Entries {
        group: GroupHandle::parse("bauamt").expect("valid handle"),
        entries: Vec::new(),
        head: 0,
    })
    .expect("encodes");
    let body = &entries[HEADER_LEN..];
    // Layout: variant, group, entries length (0), head (0): swap the length.
    let mut forged = body[..body.len() - 2].to_vec();
    forged.extend_from_slice(&huge_varint);
    forged.push(0);
    assert!(frame::decode_body::<Response>(&forged).is_err());
}
