//! A Produce request larger than `kafka.max_request_size` (and at most [`READ_THROUGH`] times
//! that) from a logged-in client: read through as it arrives, its record sets skipped and never
//! kept, and answered MESSAGE_TOO_LARGE for every partition it names, so the client learns why
//! instead of reconnecting and resending. Any other request over the limit, a larger one, or one
//! whose layout does not parse closes the connection, as before.

use super::KafkaError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::io::AsyncReadExt;

use super::codec::{self, err};
use crate::net::tls::ReadHalf;
use crate::units::Narrow;

/// How many times `max_request_size` an oversized Produce may be and still be read through.
pub const READ_THROUGH: usize = 4;

/// Topic names longer than this are not Kafka's (249 at most): the request is refused.
const MAX_NAME: usize = 4096;

/// The rest of one request on the socket, read field by field; `left` bytes remain.
struct Rest<'a> {
    rd: &'a mut ReadHalf,
    left: u64,
}

impl Rest<'_> {
    async fn take<const N: usize>(&mut self) -> Result<[u8; N], KafkaError> {
        if self.left < N as u64 {
            return Err("the request ends inside a field".into());
        }
        let mut b = [0u8; N];
        self.rd
            .read_exact(&mut b)
            .await
            .map_err(|e| format!("connection lost inside a request: {e}"))?;
        self.left -= N as u64;
        Ok(b)
    }

    async fn i16(&mut self) -> Result<i16, KafkaError> {
        Ok(i16::from_be_bytes(self.take().await?))
    }

    async fn i32(&mut self) -> Result<i32, KafkaError> {
        Ok(i32::from_be_bytes(self.take().await?))
    }

    async fn uvarint(&mut self) -> Result<u64, KafkaError> {
        let mut v = 0u64;
        for shift in (0..35).step_by(7) {
            let [b] = self.take::<1>().await?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a variable-length integer runs past 5 bytes".into())
    }

    /// Reads and drops `n` bytes through a small buffer.
    async fn skip(&mut self, n: u64) -> Result<(), KafkaError> {
        if n > self.left {
            return Err("a length runs past the request's end".into());
        }
        let mut buf = [0u8; 8192];
        let mut n = n;
        while n > 0 {
            let chunk = n.min(buf.len() as u64).sat_usize();
            self.rd
                .read_exact(&mut buf[..chunk])
                .await
                .map_err(|e| format!("connection lost inside a request: {e}"))?;
            n -= chunk as u64;
            self.left -= chunk as u64;
        }
        Ok(())
    }

    /// A length: compact (unsigned varint, length + 1, 0 = null) or classic (`i16`/`i32`, -1 =
    /// null); `None` for null.
    async fn len(&mut self, compact: bool, wide: bool) -> Result<Option<u64>, KafkaError> {
        if compact {
            return Ok(self.uvarint().await?.checked_sub(1));
        }
        let n = if wide {
            i64::from(self.i32().await?)
        } else {
            i64::from(self.i16().await?)
        };
        Ok(u64::try_from(n).ok())
    }

    async fn string(&mut self, compact: bool) -> Result<Option<String>, KafkaError> {
        let Some(n) = self.len(compact, false).await? else {
            return Ok(None);
        };
        if n.sat_usize() > MAX_NAME || n > self.left {
            return Err(KafkaError::Protocol(format!("a string of {n} bytes")));
        }
        let mut b = vec![0u8; n.sat_usize()];
        self.rd
            .read_exact(&mut b)
            .await
            .map_err(|e| format!("connection lost inside a request: {e}"))?;
        self.left -= n;
        String::from_utf8(b)
            .map(Some)
            .map_err(|_| "a string is not UTF-8".into())
    }

    /// Skips tagged fields (flexible versions).
    async fn tags(&mut self, flexible: bool) -> Result<(), KafkaError> {
        if !flexible {
            return Ok(());
        }
        for _ in 0..self.uvarint().await? {
            let _tag = self.uvarint().await?;
            let size = self.uvarint().await?;
            self.skip(size).await?;
        }
        Ok(())
    }

    /// An array's element count (compact or classic); null counts as none.
    async fn count(&mut self, compact: bool) -> Result<u64, KafkaError> {
        Ok(self.len(compact, true).await?.unwrap_or(0))
    }
}

/// Reads the `size`-byte request (its size already read) through and returns the answer to
/// send, or `None` for `acks = 0` (Kafka answers no such Produce). `Err`: not a Produce, or not
/// one that parses; the connection is closed with that reason.
pub async fn read_through(
    rd: &mut ReadHalf,
    size: u64,
    limit: usize,
) -> Result<Option<Vec<u8>>, KafkaError> {
    let mut r = Rest { rd, left: size };
    let key = r.i16().await?;
    if key != ApiKey::Produce as i16 {
        return Err(KafkaError::Protocol(format!(
            "request of {size} bytes (the limit here is {limit}; api key {key})"
        )));
    }
    let version = r.i16().await?;
    let correlation_id = r.i32().await?;
    let Some((lo, hi)) = codec::supported(ApiKey::Produce) else {
        return Err("Produce is not served".into());
    };
    if !(lo..=hi).contains(&version) {
        return Err(KafkaError::Protocol(format!(
            "Produce v{version} of {size} bytes"
        )));
    }
    let flexible = version >= 9;
    // Request header: client id (always a classic nullable string), then tags when flexible.
    let _client = r.string(false).await?;
    r.tags(flexible).await?;
    let _transactional_id = r.string(flexible).await?;
    let acks = r.i16().await?;
    let _timeout = r.i32().await?;
    let mut topics = Vec::new();
    for _ in 0..r.count(flexible).await? {
        let name = r.string(flexible).await?.unwrap_or_default();
        let mut partitions = Vec::new();
        for _ in 0..r.count(flexible).await? {
            let index = r.i32().await?;
            if let Some(n) = r.len(flexible, true).await? {
                r.skip(n).await?;
            }
            r.tags(flexible).await?;
            partitions.push(
                PartitionProduceResponse::default()
                    .with_index(index)
                    .with_error_code(err::MESSAGE_TOO_LARGE)
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1)
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "the request is {size} bytes; kafka.max_request_size is {limit}"
                    )))),
            );
        }
        r.tags(flexible).await?;
        topics.push(
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_string(name)))
                .with_partition_responses(partitions),
        );
    }
    let left = r.left;
    r.skip(left).await?;
    if acks == 0 {
        return Ok(None);
    }
    let resp = ProduceResponse::default().with_responses(topics);
    codec::response(ApiKey::Produce, version, correlation_id, &resp).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tls::Accepted;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, RequestHeader};
    use kafka_protocol::protocol::{Decodable, Encodable, encode_request_header_into_buffer};
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    /// A request as the client sends it after its size.
    fn produce(version: i16, acks: i16, record_bytes: usize) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("big")));
        encode_request_header_into_buffer(&mut buf, &header).expect("header");
        let topic = |name: &'static str, parts: &[i32]| {
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str(name)))
                .with_partition_data(
                    parts
                        .iter()
                        .map(|&i| {
                            PartitionProduceData::default()
                                .with_index(i)
                                .with_records(Some(Bytes::from(vec![0xab; record_bytes])))
                        })
                        .collect(),
                )
        };
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(1000)
            .with_topic_data(vec![topic("a", &[0, 3]), topic("b", &[1])])
            .encode(&mut buf, version)
            .expect("body");
        buf.to_vec()
    }

    /// Feeds `bytes` (then `after`) through an in-memory connection; returns the answer and
    /// what is left to read after it.
    fn run(bytes: Vec<u8>, after: &[u8]) -> (Result<Option<Vec<u8>>, KafkaError>, Vec<u8>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (mut rd, _wr) = Accepted::Carried(Box::new(server)).split();
            let size = bytes.len() as u64;
            let mut feed = bytes;
            feed.extend_from_slice(after);
            let writer = tokio::spawn(async move {
                let mut client = client;
                let _ = client.write_all(&feed).await;
                client
            });
            let answer = read_through(&mut rd, size, 1000).await;
            drop(writer.await);
            let mut rest = vec![0u8; after.len()];
            if answer.is_ok() {
                rd.read_exact(&mut rest).await.expect("the rest");
            }
            (answer, rest)
        })
    }

    #[test]
    fn every_produce_version_is_answered_message_too_large_per_partition() {
        for version in 3..=11 {
            let (answer, rest) = run(produce(version, -1, 100_000), b"next");
            let answer = answer.expect("answered").expect("acks=-1 is answered");
            assert_eq!(rest, b"next", "v{version}: the next request is untouched");
            let mut b = Bytes::from(answer[4..].to_vec());
            let header_version = ApiKey::Produce.response_header_version(version);
            let h = kafka_protocol::messages::ResponseHeader::decode(&mut b, header_version)
                .expect("header");
            assert_eq!(h.correlation_id, 7);
            let r = ProduceResponse::decode(&mut b, version).expect("body");
            let seen: Vec<(String, i32, i16)> = r
                .responses
                .iter()
                .flat_map(|t| {
                    t.partition_responses
                        .iter()
                        .map(|p| (t.name.0.to_string(), p.index, p.error_code))
                })
                .collect();
            let too_large = err::MESSAGE_TOO_LARGE;
            assert_eq!(
                seen,
                vec![
                    ("a".into(), 0, too_large),
                    ("a".into(), 3, too_large),
                    ("b".into(), 1, too_large)
                ],
                "v{version}"
            );
        }
    }

    #[test]
    fn acks_0_gets_no_answer_and_other_apis_close() {
        let (answer, _) = run(produce(9, 0, 5000), b"");
        assert_eq!(answer, Ok(None));
        let mut fetch = produce(9, 1, 10);
        fetch[1] = ApiKey::Fetch as u8;
        assert!(run(fetch, b"").0.is_err());
        let mut old = produce(3, 1, 10);
        old[3] = 1; // Produce v1: not served
        assert!(run(old, b"").0.is_err());
    }

    proptest! {
        /// Garbage after a Produce header never panics, never reads past the request, and is
        /// answered or refused.
        #[test]
        fn garbage_is_refused_or_read_through(tail in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..40) {
            let mut req = produce(9, 1, 16);
            req.truncate(cut.min(req.len()));
            req.extend_from_slice(&tail);
            let (answer, rest) = run(req, b"after");
            if answer.is_ok() {
                prop_assert_eq!(rest, b"after".to_vec());
            }
        }
    }
}
