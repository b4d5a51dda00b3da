//! Round trips of every native protocol message through a frame, and robustness of the frame
//! and message decoders against arbitrary bytes.

use brook::proto::{
    self, Acks, Assignor, CommitEntry, ErrorCode, Fetch, OffsetSpec, Produce, Request,
    RequestFrame, Response, ResponseFrame, TopicSettings,
};
use proptest::prelude::*;

fn round_trip_request(r: &RequestFrame<'_>) {
    let frame = proto::encode(r);
    let (msg, n) = proto::decode_frame(&frame, usize::MAX).expect("frame");
    assert_eq!(n, frame.len());
    let back: RequestFrame<'_> = postcard::from_bytes(msg).expect("decodes");
    assert_eq!(&back, r);
}

fn round_trip_response(r: &ResponseFrame<'_>) {
    let frame = proto::encode(r);
    let (msg, _) = proto::decode_frame(&frame, usize::MAX).expect("frame");
    let back: ResponseFrame<'_> = postcard::from_bytes(msg).expect("decodes");
    assert_eq!(&back, r);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn requests_round_trip(
        id in any::<u32>(),
        topic in "[a-z0-9._-]{1,30}",
        bytes in proptest::collection::vec(any::<u8>(), 0..500),
        n in any::<u32>(),
        o in any::<u64>(),
        t in any::<i64>(),
        which in 0u8..17,
        topics in proptest::collection::vec("[a-z]{1,8}", 0..16),
    ) {
        let mut group_topics = heapless::Vec::<&str, { proto::MAX_GROUP_TOPICS }>::new();
        for t in &topics {
            let _ = group_topics.push(t.as_str());
        }
        let mut commits = heapless::Vec::<CommitEntry<'_>, { proto::MAX_COMMIT }>::new();
        let _ = commits.push(CommitEntry { topic: &topic, partition: n, offset: o });
        let request = match which {
            0 => Request::Handshake { version: n as u16, client_id: &topic },
            1 => Request::Produce(Produce {
                topic: &topic,
                partition: Some(n),
                partition_key: Some(&bytes),
                acks: Acks::Durable,
                record_count: n,
                first_timestamp: t,
                records: &bytes,
            }),
            2 => Request::Fetch(Fetch { topic: &topic, partition: n, offset: o, max_bytes: n, min_bytes: 1, max_wait_ms: n }),
            3 => Request::ListOffsets { topic: &topic, partition: n, spec: OffsetSpec::Timestamp(t) },
            4 => Request::CreateTopic { name: &topic, settings: TopicSettings { partitions: Some(n), retention_ms: Some(o), retention_bytes: None, segment_bytes: Some(o), reject_when_full: Some(true) } },
            5 => Request::DeleteTopic { name: &topic },
            6 => Request::DescribeTopic { name: &topic },
            7 => Request::ListTopics,
            8 => Request::JoinGroup { group: &topic, member_id: "", topics: group_topics, session_timeout_ms: n, assignor: Assignor::RoundRobin },
            9 => Request::Heartbeat { group: &topic, member_id: &topic, generation: n },
            10 => Request::LeaveGroup { group: &topic, member_id: &topic },
            11 => Request::CommitOffsets { group: &topic, member: Some((&topic, n)), offsets: commits },
            12 => Request::FetchOffsets { group: &topic, topic: &topic },
            13 => Request::DescribeGroup { group: &topic },
            15 => Request::CreateTopicWith {
                name: &topic,
                settings: TopicSettings::default(),
                options: proto::TopicOptions {
                    cleanup: Some(proto::CleanupPolicy::CompactDelete),
                    delete_retention_ms: Some(o),
                },
            },
            14 => Request::ProduceBatch {
                layout: n as u8,
                produce: Produce {
                    topic: &topic,
                    partition: None,
                    partition_key: None,
                    acks: Acks::Written,
                    record_count: n,
                    first_timestamp: t,
                    records: &bytes,
                },
            },
            _ => Request::Authenticate { username: &topic, password: &bytes },
        };
        round_trip_request(&RequestFrame { correlation_id: id, request });
    }

    #[test]
    fn responses_round_trip(
        id in any::<u32>(),
        s in "[a-z]{0,20}",
        bytes in proptest::collection::vec(any::<u8>(), 0..500),
        o in any::<u64>(),
        which in 0u8..5,
    ) {
        let response = match which {
            0 => Response::Error { code: ErrorCode::LogFull, message: &s },
            1 => Response::Produced { partition: 3, base_offset: o, next_offset: o.wrapping_add(1) },
            2 => Response::Fetched { high_watermark: o, log_start: 0, next_offset: o, frames: &bytes },
            3 => Response::Offset { earliest: 0, latest: o, offset: Some(o) },
            _ => Response::Heartbeat { rejoin: o % 2 == 0 },
        };
        round_trip_response(&ResponseFrame { correlation_id: id, response });
    }

    /// Arbitrary bytes never panic the frame or message decoders.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = proto::decode_frame(&bytes, 1 << 20);
        let _ = postcard::from_bytes::<RequestFrame<'_>>(&bytes);
        let _ = postcard::from_bytes::<ResponseFrame<'_>>(&bytes);
    }

    /// A flipped bit in a frame is caught by the frame's CRC or length checks.
    #[test]
    fn flipped_bit_is_detected(topic in "[a-z]{1,10}", bit in any::<proptest::sample::Index>()) {
        let mut frame = proto::encode(&RequestFrame { correlation_id: 9, request: Request::DeleteTopic { name: &topic } });
        let i = bit.index(frame.len() * 8);
        frame[i / 8] ^= 1 << (i % 8);
        prop_assert!(proto::decode_frame(&frame, 1 << 20).is_err());
    }
}

#[test]
fn error_codes_are_stable() {
    // Wire values must never change; a retired code is never reused.
    assert_eq!(ErrorCode::InvalidRequest as u16, 2);
    assert_eq!(ErrorCode::UnknownTopic as u16, 10);
    assert_eq!(ErrorCode::LogFull as u16, 20);
    assert_eq!(ErrorCode::IllegalGeneration as u16, 31);
    assert_eq!(ErrorCode::ShuttingDown as u16, 40);
    assert_eq!(ErrorCode::AuthenticationFailed as u16, 50);
    assert_eq!(ErrorCode::NotAuthorized as u16, 51);
    for code in [
        2u16, 3, 4, 10, 11, 12, 13, 14, 15, 16, 20, 21, 22, 30, 31, 32, 33, 40, 50, 51,
    ] {
        assert_eq!(ErrorCode::from_u16(code) as u16, code);
    }
    assert_eq!(ErrorCode::from_u16(9999), ErrorCode::Unknown);
}

/// The native_frame fuzz target's regression inputs still decode without panicking.
#[test]
fn fuzz_regressions_do_not_panic() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/native_frame");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("fuzz/regressions/native_frame exists") {
        let bytes = std::fs::read(e.expect("entry").path()).expect("read seed");
        let mut rest: &[u8] = &bytes;
        while let Ok((msg, used)) = proto::decode_frame(rest, 1 << 20) {
            let _ = postcard::from_bytes::<RequestFrame<'_>>(msg);
            rest = &rest[used..];
        }
        n += 1;
    }
    assert!(n > 0);
}
