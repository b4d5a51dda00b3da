//! The Kafka listener with raw bytes, for what a well-behaved client never sends, against a
//! real server on loopback (`brook::serve::start` on `127.0.0.1:0`).

use std::time::Duration;

use crate::common;
use brook::serve::start;
use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes, encode_request_header_into_buffer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

fn request<R: Encodable>(key: ApiKey, version: i16, id: i32, r: &R) -> Vec<u8> {
    let mut buf = header_only(key as i16, version, id);
    r.encode(&mut buf, version).expect("body");
    let n = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&n.to_be_bytes());
    buf.to_vec()
}

/// Reads one response; `None` when the server closed the connection.
async fn response(s: &mut TcpStream) -> Option<bytes::Bytes> {
    let mut size = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut size))
        .await
        .expect("in time")
        .ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).await.ok()?;
    Some(body.into())
}

#[tokio::test]
async fn api_versions_answers_what_is_implemented_and_refuses_unknown_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(common::server_config(dir.path()))
        .await
        .expect("start");
    let mut s = TcpStream::connect(r.kafka_addr.expect("kafka listener"))
        .await
        .expect("connect");

    // v3 (flexible request header, v0 response header as the protocol says).
    s.write_all(&request(
        ApiKey::ApiVersions,
        3,
        7,
        &ApiVersionsRequest::default(),
    ))
    .await
    .expect("write");
    let mut b = response(&mut s).await.expect("answer");
    let h = ResponseHeader::decode(&mut b, 0).expect("header");
    assert_eq!(h.correlation_id, 7);
    let v = ApiVersionsResponse::decode(&mut b, 3).expect("body");
    assert_eq!(v.error_code, 0);
    let produce = v
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Produce as i16)
        .expect("produce advertised");
    assert_eq!((produce.min_version, produce.max_version), (3, 11));
    assert!(
        !v.api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::EndTxn as i16),
        "only what is implemented is advertised"
    );

    // A version from the future: a v0 answer with UNSUPPORTED_VERSION and the list.
    let mut raw = request(ApiKey::ApiVersions, 3, 8, &ApiVersionsRequest::default());
    raw[6..8].copy_from_slice(&99i16.to_be_bytes());
    s.write_all(&raw).await.expect("write");
    let mut b = response(&mut s).await.expect("answer");
    assert_eq!(
        ResponseHeader::decode(&mut b, 0).expect("h").correlation_id,
        8
    );
    let v = ApiVersionsResponse::decode(&mut b, 0).expect("v0 body");
    assert_eq!(v.error_code, 35);
    assert!(!v.api_keys.is_empty());
    r.stop().await.expect("stop");
}

#[tokio::test]
async fn bad_requests_close_only_their_own_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(common::server_config(dir.path()))
        .await
        .expect("start");
    let mut good = TcpStream::connect(r.kafka_addr.expect("kafka listener"))
        .await
        .expect("connect");
    for bad in [
        // an unknown API key
        {
            let mut b = request(ApiKey::Metadata, 9, 1, &MetadataRequest::default());
            b[4..6].copy_from_slice(&999i16.to_be_bytes());
            b
        },
        // an API Brook does not implement (transactions)
        {
            let mut b = request(ApiKey::Metadata, 9, 1, &MetadataRequest::default());
            b[4..6].copy_from_slice(&(ApiKey::EndTxn as i16).to_be_bytes());
            b
        },
        // a version Brook does not implement
        {
            let mut b = request(ApiKey::Metadata, 9, 1, &MetadataRequest::default());
            b[6..8].copy_from_slice(&13i16.to_be_bytes());
            b
        },
        // a size beyond kafka.max_request_size
        (1i32 << 30).to_be_bytes().to_vec(),
        // a body cut short
        {
            let mut b = request(ApiKey::Metadata, 9, 1, &MetadataRequest::default());
            b.truncate(12);
            let n = (b.len() - 4) as i32;
            b[..4].copy_from_slice(&n.to_be_bytes());
            b
        },
    ] {
        let mut s = TcpStream::connect(r.kafka_addr.expect("kafka listener"))
            .await
            .expect("connect");
        s.write_all(&bad).await.expect("write");
        assert!(response(&mut s).await.is_none(), "closed without an answer");
    }
    // The other connection is undisturbed.
    good.write_all(&request(
        ApiKey::Metadata,
        9,
        5,
        &MetadataRequest::default(),
    ))
    .await
    .expect("write");
    let mut b = response(&mut good).await.expect("answer");
    let hv = ApiKey::Metadata.response_header_version(9);
    assert_eq!(
        ResponseHeader::decode(&mut b, hv)
            .expect("h")
            .correlation_id,
        5
    );
    let m = MetadataResponse::decode(&mut b, 9).expect("metadata");
    assert_eq!(m.brokers.len(), 1);
    assert_eq!(
        m.brokers[0].port,
        i32::from(r.kafka_addr.expect("kafka listener").port())
    );
    assert!(!b.has_remaining());
    r.stop().await.expect("stop");
}

/// A group id serves one protocol at a time: a native member cannot join a group Kafka clients
/// use, and a Kafka member cannot join a group native members use; both get a clear error.
#[tokio::test]
async fn a_group_id_serves_one_protocol_at_a_time() {
    use brook::broker::kafka_groups::{JoinRequest, KafkaGroupError};
    use brook::proto::{Assignor, TopicSettings};
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(common::server_config(dir.path()))
        .await
        .expect("start");
    r.broker
        .create_topic("t", &TopicSettings::default())
        .expect("topic");
    let kafka_member = |group: &str| {
        r.broker.kafka_join(
            group,
            JoinRequest {
                member_id: String::new(),
                instance_id: None,
                client_id: "k".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout: Duration::from_secs(10),
                rebalance_timeout: Duration::from_secs(10),
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Vec::new())],
            },
        )
    };
    let native_member = |group: &str| {
        r.broker.join_group(
            group,
            "",
            "n",
            vec!["t".into()],
            Duration::from_secs(10),
            Assignor::Range,
        )
    };
    let joined = kafka_member("kg").expect("kafka member joins");
    drop(joined);
    let e = native_member("kg").expect_err("native refused");
    assert!(e.to_string().contains("in use by Kafka clients"), "{e}");
    native_member("ng").expect("native member joins");
    assert_eq!(
        kafka_member("ng").err(),
        Some(KafkaGroupError::OtherProtocol)
    );
    r.stop().await.expect("stop");
}

/// A Kafka member that stops heartbeating is removed once its session times out: the
/// listener's group timeouts run every 250 ms while a group exists (an idle broker with no
/// group does not run them, and must start again when a client joins). The housekeeping round
/// also runs them, every `log.flush_interval`: a minute here, so only the listener's can do it.
#[tokio::test]
async fn a_silent_kafka_member_is_removed_after_its_session_timeout() {
    use brook::broker::kafka_groups::JoinRequest;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::server_config(dir.path());
    config.log.flush_interval = brook::units::HumanDuration::secs(60);
    let r = start(config).await.expect("start");
    // A session of one second (the least a member may ask for).
    let join = || {
        r.broker.kafka_join(
            "quiet",
            JoinRequest {
                member_id: String::new(),
                instance_id: None,
                client_id: "k".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout: Duration::from_secs(1),
                rebalance_timeout: Duration::from_secs(1),
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Vec::new())],
            },
        )
    };
    let members = || {
        r.broker
            .kafka_groups()
            .describe("quiet")
            .map_or(0, |g| g.members.len())
    };
    // Twice: the second time the group timeouts start again after they went quiet.
    for round in 0..2 {
        let joined = join().expect("join");
        let outcome = tokio::time::timeout(WAIT, joined)
            .await
            .expect("join answered in time")
            .expect("answered")
            .expect("joined");
        assert_eq!(outcome.leader, outcome.member_id, "round {round}");
        assert_eq!(members(), 1, "round {round}");
        // No heartbeat, no SyncGroup: gone after about a second.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while members() != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: the silent member is still there after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    r.stop().await.expect("stop");
}

/// The encoded request header alone (with the size prefix left for the body).
fn header_only(key: i16, version: i16, id: i32) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    let header = RequestHeader::default()
        .with_request_api_key(key)
        .with_request_api_version(version)
        .with_correlation_id(id)
        .with_client_id(Some(StrBytes::from_static_str("raw")));
    encode_request_header_into_buffer(&mut buf, &header).expect("header");
    buf
}

/// Counts and lengths that claim far more than the request carries, for every API and version
/// Brook serves (its ApiVersions answer says which): the first array count or length of each
/// body says 2^31-1 (or the largest compact varint). One such 21-byte Metadata request used to
/// abort the whole process (`Vec::with_capacity(2147483647)` in the Kafka crate). Each gets an
/// error or a closed connection; Brook stays up and answers a valid client afterwards; and this
/// test process, which runs the server, is not aborted.
#[tokio::test]
async fn claimed_counts_and_lengths_allocate_nothing_that_was_not_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(common::server_config(dir.path()))
        .await
        .expect("start");
    let mut s = TcpStream::connect(r.kafka_addr.expect("kafka listener"))
        .await
        .expect("connect");
    s.write_all(&request(
        ApiKey::ApiVersions,
        0,
        1,
        &ApiVersionsRequest::default(),
    ))
    .await
    .expect("write");
    let mut b = response(&mut s).await.expect("api versions");
    ResponseHeader::decode(&mut b, 0).expect("header");
    let apis = ApiVersionsResponse::decode(&mut b, 0)
        .expect("api versions")
        .api_keys;
    assert!(apis.len() > 10, "{apis:?}");
    let bodies: [&[u8]; 4] = [
        &[0x7f, 0xff, 0xff, 0xff],
        &[
            0x7f, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff,
        ],
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
        &[
            0x00, 0x01, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x7f, 0xff,
        ],
    ];
    let mut sent = 0;
    for api in &apis {
        for version in [api.min_version, api.max_version] {
            for body in bodies {
                let mut buf = header_only(api.api_key, version, 9);
                buf.put_slice(body);
                let n = (buf.len() - 4) as i32;
                buf[..4].copy_from_slice(&n.to_be_bytes());
                let mut s = TcpStream::connect(r.kafka_addr.expect("kafka listener"))
                    .await
                    .expect("connect");
                s.write_all(&buf).await.expect("write");
                // An error answer or a closed connection; either way, no abort.
                let _ = response(&mut s).await;
                sent += 1;
            }
        }
    }
    assert!(sent >= 80, "{sent} requests");
    // Still up, and a valid client is answered.
    let mut s = TcpStream::connect(r.kafka_addr.expect("kafka listener"))
        .await
        .expect("connect");
    s.write_all(&request(
        ApiKey::Metadata,
        9,
        5,
        &MetadataRequest::default(),
    ))
    .await
    .expect("write");
    let mut b = response(&mut s)
        .await
        .expect("answer after the hostile requests");
    let hv = ApiKey::Metadata.response_header_version(9);
    assert_eq!(
        ResponseHeader::decode(&mut b, hv)
            .expect("h")
            .correlation_id,
        5
    );
    r.stop().await.expect("stop");
}

/// A broker shutdown does not wait for requests that wait on others: a JoinGroup held for the
/// rest of its group (up to the rebalance timeout, 5 minutes for librdkafka) is dropped after
/// a short grace, so `stop` returns in seconds.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_held_join() {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::{GroupId, JoinGroupRequest, JoinGroupResponse};
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(common::server_config(dir.path()))
        .await
        .expect("start");
    let addr = r.kafka_addr.expect("kafka listener");
    let join = |client: &str| {
        request(
            ApiKey::JoinGroup,
            5,
            1,
            &JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("held")))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(300_000)
                .with_member_id(StrBytes::from_string(client.into()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str("range"))
                        .with_metadata(bytes::Bytes::new()),
                ]),
        )
    };
    let mut a = TcpStream::connect(addr).await.expect("connect");
    a.write_all(&join("")).await.expect("write");
    let mut b = response(&mut a).await.expect("a joins at once");
    let _ = ResponseHeader::decode(&mut b, 0).expect("header");
    let ja = JoinGroupResponse::decode(&mut b, 5).expect("join");
    assert_eq!(ja.error_code, 0);
    // b's join waits for a to rejoin, which it never does.
    let mut b = TcpStream::connect(addr).await.expect("connect");
    b.write_all(&join("")).await.expect("write");
    let waiting = std::time::Instant::now();
    while r
        .broker
        .kafka_groups()
        .describe("held")
        .is_none_or(|g| g.members.len() < 2)
    {
        assert!(waiting.elapsed() < WAIT, "b's join never arrived");
        tokio::task::yield_now().await;
    }
    stops_promptly(r).await;
}

/// Without logins, a connection's first request may be as large as any other (a producer's
/// first Produce often is): it is answered, not cut at the pre-login frame cap (64 KiB).
#[tokio::test]
async fn an_anonymous_connection_may_start_with_a_large_produce() {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(common::server_config(dir.path()))
        .await
        .expect("start");
    let mut s = TcpStream::connect(r.kafka_addr.expect("kafka listener"))
        .await
        .expect("connect");
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("first")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(bytes::Bytes::from(vec![0u8; 200 * 1024]))),
                ]),
        ]);
    s.write_all(&request(ApiKey::Produce, 9, 3, &produce))
        .await
        .expect("write");
    let mut b = response(&mut s).await.expect("answered, not closed");
    let h =
        ResponseHeader::decode(&mut b, ApiKey::Produce.response_header_version(9)).expect("header");
    assert_eq!(h.correlation_id, 3);
    let p = ProduceResponse::decode(&mut b, 9).expect("produce response");
    assert_ne!(
        p.responses[0].partition_responses[0].error_code, 0,
        "garbage is refused"
    );
    r.stop().await.expect("stop");
}

/// A client that sends request after request and reads no answer (the server's writes to it
/// block, then its queue of answers fills) does not hold up the broker's stop.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_client_that_does_not_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(common::server_config(dir.path()))
        .await
        .expect("start");
    let mut s = TcpStream::connect(r.kafka_addr.expect("kafka listener"))
        .await
        .expect("connect");
    // 400,000 ApiVersions: 70 MB of answers, far more than the socket buffers hold (loopback's
    // receive buffer may grow to 32 MiB).
    let one = request(ApiKey::ApiVersions, 0, 1, &ApiVersionsRequest::default());
    let flood: Vec<u8> = std::iter::repeat_n(one, 400_000).flatten().collect();
    let (_rd, mut wr) = s.split();
    // The server stops reading once its writes block: send what it takes, then stop.
    let _ = tokio::time::timeout(Duration::from_secs(5), wr.write_all(&flood)).await;
    stops_promptly(r).await;
}

/// The broker stops within 15 s.
async fn stops_promptly(r: brook::serve::Running) {
    let t0 = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(20), r.stop())
        .await
        .expect("stop returned in time")
        .expect("stop");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
}
