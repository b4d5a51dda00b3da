//! The Kafka wire format around the handlers: `[size: i32 BE][request header][body]` in,
//! `[size][response header][body]` out, with each API's header version (flexible versions carry
//! tagged fields), and the table of what Brook implements.
//!
//! [`SUPPORTED`] is the one list of APIs and versions: ApiVersions advertises exactly it, and a
//! request for anything else never reaches a handler. An ApiVersions request of a version Brook
//! does not know gets the v0 answer with `UNSUPPORTED_VERSION` and the list (as the protocol
//! asks, so the client can pick); any other unsupported API or version closes the connection
//! with the reason logged, because no valid answer can be encoded for it.

use super::KafkaError;
use crate::units::Narrow;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Encodable, decode_request_header_from_buffer};

/// Kafka error codes Brook answers with.
pub mod err {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
    pub const ILLEGAL_SASL_STATE: i16 = 34;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REQUEST: i16 = 42;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
    pub const INVALID_RECORD: i16 = 87;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
}

/// Every API Brook answers, with the versions it implements (a subset of what the
/// `kafka-protocol` crate can encode: Produce and Fetch stop before topic ids replaced topic
/// names; OffsetFetch before its multi-group form).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeCluster, 0, 1),
    // v0: the tokens follow bare (librdkafka 2.0 wants v0 listed before it logs in at all).
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// The versions of `key` Brook implements, if any.
pub fn supported(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, lo, hi)| (lo, hi))
}

/// A request as cut from the socket: its header and the body still encoded.
#[derive(Debug)]
pub struct Frame {
    pub key: ApiKey,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// What reading a request's header can give.
#[derive(Debug)]
pub enum Parsed {
    Request(Frame),
    /// ApiVersions of a version Brook does not know: answer v0 with UNSUPPORTED_VERSION.
    ApiVersionsTooNew {
        correlation_id: i32,
    },
}

/// Decodes the header of one request (the size prefix already removed).
pub fn parse(mut body: Bytes) -> Result<Parsed, KafkaError> {
    if body.len() < 8 {
        return Err(KafkaError::Protocol(format!(
            "request of {} bytes has no header",
            body.len()
        )));
    }
    let raw_key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let key = ApiKey::try_from(raw_key).map_err(|_| format!("unknown API key {raw_key}"))?;
    let Some((lo, hi)) = supported(key) else {
        return Err(KafkaError::Protocol(format!(
            "API {key:?} (key {raw_key}) is not implemented"
        )));
    };
    if !(lo..=hi).contains(&version) {
        if key == ApiKey::ApiVersions {
            return Ok(Parsed::ApiVersionsTooNew { correlation_id });
        }
        return Err(KafkaError::Protocol(format!(
            "{key:?} version {version} is not supported ({lo} to {hi})"
        )));
    }
    let header = decode_request_header_from_buffer(&mut body)
        .map_err(|e| format!("{key:?} v{version}: malformed request header: {e}"))?;
    Ok(Parsed::Request(Frame { key, header, body }))
}

/// Encodes a response: size, the header of `key`'s version, the body.
pub fn response<R: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Vec<u8>, KafkaError> {
    let header_version = key.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| format!("{key:?} v{version}: encoding the header: {e}"))?;
    body.encode(&mut buf, version)
        .map_err(|e| format!("{key:?} v{version}: encoding the answer: {e}"))?;
    let size = (buf.len() - 4).sat_i32();
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.to_vec())
}

/// Decodes a request body of type `R` at `version`. Bytes after the fields Brook knows are
/// ignored, as Kafka's own broker does (newer clients add tagged fields and such).
pub fn body<R: kafka_protocol::protocol::Decodable>(frame: &mut Frame) -> Result<R, KafkaError> {
    let version = frame.header.request_api_version;
    let r = R::decode(&mut frame.body, version)
        .map_err(|e| format!("{:?} v{version}: malformed request: {e}", frame.key))?;
    if frame.body.has_remaining() {
        tracing::debug!(
            "{:?} v{version}: {} bytes after the request ignored",
            frame.key,
            frame.body.remaining()
        );
    }
    Ok(r)
}

/// Decodes one whole request as the listener would (header, body, and for Produce every
/// partition's record batches), without acting on it: the Kafka fuzz target's entry point.
/// `Ok` names the API; nothing a peer sends may make it panic or allocate more than the
/// request's own bytes.
pub fn decode_request(bytes: &[u8]) -> Result<ApiKey, KafkaError> {
    use kafka_protocol::messages::*;
    let mut f = match parse(Bytes::copy_from_slice(bytes))? {
        Parsed::Request(f) => f,
        Parsed::ApiVersionsTooNew { .. } => return Ok(ApiKey::ApiVersions),
    };
    let key = f.key;
    match key {
        ApiKey::Produce => {
            let r: ProduceRequest = body(&mut f)?;
            for t in &r.topic_data {
                for p in &t.partition_data {
                    if let Some(data) = &p.records {
                        for b in super::records::split_batches(data).map_err(|e| e.to_string())? {
                            super::records::parse_batch(b).map_err(|e| e.to_string())?;
                        }
                    }
                }
            }
        }
        ApiKey::Fetch => drop(body::<FetchRequest>(&mut f)?),
        ApiKey::ListOffsets => drop(body::<ListOffsetsRequest>(&mut f)?),
        ApiKey::Metadata => drop(body::<MetadataRequest>(&mut f)?),
        ApiKey::OffsetCommit => drop(body::<OffsetCommitRequest>(&mut f)?),
        ApiKey::OffsetFetch => drop(body::<OffsetFetchRequest>(&mut f)?),
        ApiKey::FindCoordinator => drop(body::<FindCoordinatorRequest>(&mut f)?),
        ApiKey::JoinGroup => drop(body::<JoinGroupRequest>(&mut f)?),
        ApiKey::Heartbeat => drop(body::<HeartbeatRequest>(&mut f)?),
        ApiKey::LeaveGroup => drop(body::<LeaveGroupRequest>(&mut f)?),
        ApiKey::SyncGroup => drop(body::<SyncGroupRequest>(&mut f)?),
        ApiKey::DescribeGroups => drop(body::<DescribeGroupsRequest>(&mut f)?),
        ApiKey::ListGroups => drop(body::<ListGroupsRequest>(&mut f)?),
        ApiKey::ApiVersions => drop(body::<ApiVersionsRequest>(&mut f)?),
        ApiKey::CreateTopics => drop(body::<CreateTopicsRequest>(&mut f)?),
        ApiKey::DeleteTopics => drop(body::<DeleteTopicsRequest>(&mut f)?),
        ApiKey::DescribeConfigs => drop(body::<DescribeConfigsRequest>(&mut f)?),
        ApiKey::InitProducerId => drop(body::<InitProducerIdRequest>(&mut f)?),
        ApiKey::CreatePartitions => drop(body::<CreatePartitionsRequest>(&mut f)?),
        ApiKey::DeleteRecords => drop(body::<DeleteRecordsRequest>(&mut f)?),
        ApiKey::AlterConfigs => drop(body::<AlterConfigsRequest>(&mut f)?),
        ApiKey::IncrementalAlterConfigs => drop(body::<IncrementalAlterConfigsRequest>(&mut f)?),
        ApiKey::DeleteGroups => drop(body::<DeleteGroupsRequest>(&mut f)?),
        ApiKey::OffsetDelete => drop(body::<OffsetDeleteRequest>(&mut f)?),
        ApiKey::DescribeCluster => drop(body::<DescribeClusterRequest>(&mut f)?),
        ApiKey::SaslHandshake => drop(body::<SaslHandshakeRequest>(&mut f)?),
        ApiKey::SaslAuthenticate => {
            let r: SaslAuthenticateRequest = body(&mut f)?;
            let _ = crate::auth::sasl::parse_plain(&r.auth_bytes);
            let _ = crate::auth::sasl::Scram::user_of(&r.auth_bytes);
        }
        other => return Err(KafkaError::Protocol(format!("{other:?} is not served"))),
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::{Message, StrBytes, encode_request_header_into_buffer};

    fn request<R: Encodable>(key: ApiKey, version: i16, r: &R) -> Bytes {
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("t")));
        encode_request_header_into_buffer(&mut buf, &header).expect("header");
        r.encode(&mut buf, version).expect("body");
        buf.freeze()
    }

    /// A default request of `key` at `version`, framed as the listener reads it.
    fn default_request(key: ApiKey, version: i16) -> Bytes {
        use kafka_protocol::messages::*;
        macro_rules! enc {
            ($t:ty) => {
                request(key, version, &<$t>::default())
            };
        }
        match key {
            ApiKey::Produce => enc!(ProduceRequest),
            ApiKey::Fetch => enc!(FetchRequest),
            ApiKey::ListOffsets => enc!(ListOffsetsRequest),
            ApiKey::Metadata => enc!(MetadataRequest),
            ApiKey::OffsetCommit => enc!(OffsetCommitRequest),
            ApiKey::OffsetFetch => enc!(OffsetFetchRequest),
            ApiKey::FindCoordinator => enc!(FindCoordinatorRequest),
            ApiKey::JoinGroup => enc!(JoinGroupRequest),
            ApiKey::Heartbeat => enc!(HeartbeatRequest),
            ApiKey::LeaveGroup => enc!(LeaveGroupRequest),
            ApiKey::SyncGroup => enc!(SyncGroupRequest),
            ApiKey::DescribeGroups => enc!(DescribeGroupsRequest),
            ApiKey::ListGroups => enc!(ListGroupsRequest),
            ApiKey::ApiVersions => enc!(ApiVersionsRequest),
            ApiKey::CreateTopics => enc!(CreateTopicsRequest),
            ApiKey::DeleteTopics => enc!(DeleteTopicsRequest),
            ApiKey::DescribeConfigs => enc!(DescribeConfigsRequest),
            ApiKey::InitProducerId => enc!(InitProducerIdRequest),
            ApiKey::CreatePartitions => enc!(CreatePartitionsRequest),
            ApiKey::DeleteRecords => enc!(DeleteRecordsRequest),
            ApiKey::AlterConfigs => enc!(AlterConfigsRequest),
            ApiKey::IncrementalAlterConfigs => enc!(IncrementalAlterConfigsRequest),
            ApiKey::DeleteGroups => enc!(DeleteGroupsRequest),
            ApiKey::OffsetDelete => enc!(OffsetDeleteRequest),
            ApiKey::DescribeCluster => enc!(DescribeClusterRequest),
            ApiKey::SaslHandshake => enc!(SaslHandshakeRequest),
            ApiKey::SaslAuthenticate => enc!(SaslAuthenticateRequest),
            other => panic!("{other:?} has no seed"),
        }
    }

    /// Every API and version Brook serves decodes through [`decode_request`], and so do the
    /// fuzz target's seeds and regressions (`fuzz/regressions/kafka_request/`: never a panic).
    /// With `BROOK_WRITE_SEEDS=1` the seeds are (re)written there.
    #[test]
    fn every_served_request_decodes_and_the_regressions_do_not_panic() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/kafka_request");
        for &(key, lo, hi) in SUPPORTED {
            for v in [lo, hi] {
                let b = default_request(key, v);
                assert_eq!(decode_request(&b), Ok(key), "{key:?} v{v}");
                if std::env::var_os("BROOK_WRITE_SEEDS").is_some() {
                    std::fs::write(dir.join(format!("seed_{key:?}_v{v}")), &b).expect("seed");
                }
            }
        }
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("fuzz/regressions/kafka_request exists") {
            let bytes = std::fs::read(e.expect("entry").path()).expect("read");
            let _ = decode_request(&bytes);
            // Every prefix too: a request cut anywhere is an error, never a panic.
            for cut in 0..bytes.len().min(512) {
                let _ = decode_request(&bytes[..cut]);
            }
            n += 1;
        }
        assert!(n > SUPPORTED.len(), "{n} regression inputs");
    }

    #[test]
    fn every_supported_version_is_one_the_crate_can_encode() {
        for &(key, lo, hi) in SUPPORTED {
            let crate_range = key.valid_versions();
            assert!(
                crate_range.min <= lo && hi <= crate_range.max && lo <= hi,
                "{key:?} {lo}..={hi} outside {crate_range}"
            );
        }
        assert_eq!(ApiVersionsRequest::VERSIONS.min, 0);
    }

    #[test]
    fn headers_of_flexible_and_old_versions_parse() {
        for v in [0i16, 3] {
            let b = request(ApiKey::ApiVersions, v, &ApiVersionsRequest::default());
            let Parsed::Request(mut f) = parse(b).expect("parse") else {
                panic!("v{v} is supported")
            };
            assert_eq!(f.header.correlation_id, 42);
            let _: ApiVersionsRequest = body(&mut f).expect("body");
        }
        for v in [1i16, 9, 12] {
            let b = request(ApiKey::Metadata, v, &MetadataRequest::default());
            let Parsed::Request(mut f) = parse(b).expect("parse") else {
                panic!("v{v}")
            };
            let _: MetadataRequest = body(&mut f).expect("body");
        }
    }

    #[test]
    fn unsupported_versions_and_keys_are_told_apart() {
        let mut b = request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).to_vec();
        b[2..4].copy_from_slice(&9i16.to_be_bytes());
        assert!(matches!(
            parse(Bytes::from(b)),
            Ok(Parsed::ApiVersionsTooNew { correlation_id: 42 })
        ));
        let mut b = request(ApiKey::Metadata, 1, &MetadataRequest::default()).to_vec();
        b[2..4].copy_from_slice(&13i16.to_be_bytes());
        assert!(
            parse(Bytes::from(b))
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        let mut b = request(ApiKey::Metadata, 1, &MetadataRequest::default()).to_vec();
        b[0..2].copy_from_slice(&999i16.to_be_bytes());
        assert!(
            parse(Bytes::from(b))
                .unwrap_err()
                .to_string()
                .contains("unknown API key")
        );
        assert!(parse(Bytes::from_static(&[0, 3])).is_err());
        // A body cut short is an error, never a panic.
        let b = request(
            ApiKey::Metadata,
            9,
            &MetadataRequest::default().with_topics(None),
        );
        for cut in 8..b.len() {
            if let Ok(Parsed::Request(mut f)) = parse(b.slice(..cut)) {
                assert!(body::<MetadataRequest>(&mut f).is_err() || cut == b.len());
            }
        }
    }
}
