//! Kafka record batches (magic v2) to Brook batches and back.
//!
//! In: a produce carries one Kafka batch per partition. [`parse_batch`] checks its header and
//! CRC-32C, decompresses the records section when the producer compressed it (gzip, snappy
//! raw or in Xerial framing, lz4 frame, zstd: all pure Rust, streamed, and stopped as soon as
//! the output passes the topic's bound ([`parse_batch_within`]; [`MAX_DECOMPRESSED`] at most)),
//! and re-encodes every record (timestamp, key, value, headers) into a
//! Brook [`BatchBuilder`]. The producer id, epoch and base sequence come along for the
//! idempotence check.
//!
//! Out: a fetch gets Brook's stored frames; [`encode_batch`] turns each into one uncompressed
//! Kafka batch with the same base offset, dense offset deltas, the records' own timestamps
//! (CreateTime) and a correct CRC. What Kafka can say and Brook cannot: a null value or a null
//! header value is stored as empty (and comes back empty).

use crate::log::record::crc32c;
use crate::log::{BatchBuilder, BatchView, FrameError, Header};
use crate::units::Narrow;

/// Offset of the magic byte in a batch.
const MAGIC_AT: usize = 16;
/// Bytes of a v2 batch header, from base offset to record count.
pub const BATCH_HEADER_LEN: usize = 61;
/// The most a compressed records section may grow to (a decompression bomb stops here).
pub const MAX_DECOMPRESSED: usize = crate::log::record::MAX_FRAME_LEN;

/// Why a Kafka batch was refused (answered with `CORRUPT_MESSAGE` or `INVALID_RECORD`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    #[error("record batch truncated: {0}")]
    Truncated(&'static str),
    #[error("record batch magic {0} is not supported (only v2)")]
    Magic(i8),
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {actual:#010x}")]
    Crc { stored: u32, actual: u32 },
    #[error("invalid record batch: {0}")]
    Invalid(String),
    #[error("{codec} decompression failed: {reason}")]
    Decompress { codec: &'static str, reason: String },
}

impl RecordsError {
    /// `true` when the bytes were damaged in transit (CRC, framing), as opposed to
    /// well-formed but unacceptable.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, RecordsError::Truncated(_) | RecordsError::Crc { .. })
    }
}

/// One parsed produce batch: its idempotence fields and the records as a Brook batch.
#[derive(Debug)]
pub struct ParsedBatch {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// Bits 0-2 of the attributes.
    pub compression: u8,
    pub batch: BatchBuilder,
}

impl ParsedBatch {
    pub fn record_count(&self) -> u32 {
        self.batch.count()
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

/// Splits `records` (a produce's partition data) into its batches without decoding them.
pub fn split_batches(mut records: &[u8]) -> Result<Vec<&[u8]>, RecordsError> {
    let mut out = Vec::new();
    while !records.is_empty() {
        if records.len() < 12 {
            return Err(RecordsError::Truncated("batch length"));
        }
        let len = be_i32(records, 8);
        if len < (BATCH_HEADER_LEN - 12).sat_i32() {
            return Err(RecordsError::Invalid(format!("batch length {len}")));
        }
        let total = 12 + len as usize;
        if records.len() < total {
            return Err(RecordsError::Truncated("batch shorter than its length"));
        }
        out.push(&records[..total]);
        records = &records[total..];
    }
    Ok(out)
}

/// Parses and checks one complete v2 batch (as cut by [`split_batches`]).
pub fn parse_batch(b: &[u8]) -> Result<ParsedBatch, RecordsError> {
    parse_batch_within(b, MAX_DECOMPRESSED)
}

/// As [`parse_batch`], decompressing at most `limit` bytes (the topic's batch bound): a small
/// compressed batch that would inflate past it is refused as soon as it does, without the
/// rest being inflated.
pub fn parse_batch_within(b: &[u8], limit: usize) -> Result<ParsedBatch, RecordsError> {
    let limit = limit.min(MAX_DECOMPRESSED);
    if b.len() < BATCH_HEADER_LEN {
        return Err(RecordsError::Truncated("batch header"));
    }
    let magic = b[MAGIC_AT] as i8;
    if magic != 2 {
        return Err(RecordsError::Magic(magic));
    }
    let stored = u32::from_be_bytes([b[17], b[18], b[19], b[20]]);
    let actual = crc32c(&b[21..]);
    if stored != actual {
        return Err(RecordsError::Crc { stored, actual });
    }
    let attributes = be_i16(b, 21);
    if attributes & 0x30 != 0 {
        return Err(RecordsError::Invalid(
            "transactional and control batches are not supported".into(),
        ));
    }
    let last_offset_delta = be_i32(b, 23);
    let base_timestamp = be_i64(b, 27);
    let producer_id = be_i64(b, 43);
    let producer_epoch = be_i16(b, 51);
    let base_sequence = be_i32(b, 53);
    let count = be_i32(b, 57);
    if count <= 0 {
        return Err(RecordsError::Invalid(format!("record count {count}")));
    }
    if last_offset_delta != count - 1 {
        return Err(RecordsError::Invalid(format!(
            "last offset delta {last_offset_delta} with {count} records"
        )));
    }
    let compression = (attributes & 0x7) as u8;
    let body = &b[BATCH_HEADER_LEN..];
    let decompressed;
    let records = match compression {
        0 => body,
        c => {
            decompressed = decompress_within(c, body, limit)?;
            &decompressed[..]
        }
    };
    // Every record takes several bytes: a count beyond the bytes present is a lie, and would
    // size the buffer below to it.
    if count as usize > records.len() {
        return Err(RecordsError::Invalid(format!(
            "record count {count} in {} bytes of records",
            records.len()
        )));
    }
    let mut batch = BatchBuilder::with_capacity(records.len() + 16 * count as usize);
    let mut rd = Reader { b: records, at: 0 };
    let mut headers: Vec<Header> = Vec::new();
    for i in 0..count {
        let len = rd.varint()?;
        let start = rd.at;
        if len < 0 || rd.b.len() - start < len as usize {
            return Err(RecordsError::Truncated("record"));
        }
        let _attributes = rd.u8()?;
        let ts_delta = rd.varlong()?;
        let offset_delta = rd.varint()?;
        if offset_delta != i {
            return Err(RecordsError::Invalid(format!(
                "record {i} has offset delta {offset_delta}"
            )));
        }
        let key = rd.bytes()?;
        let value = rd.bytes()?;
        let n = rd.varint()?;
        if n < 0 {
            return Err(RecordsError::Invalid(format!("header count {n}")));
        }
        headers.clear();
        for _ in 0..n {
            let name = rd
                .bytes()?
                .ok_or_else(|| RecordsError::Invalid("null header key".into()))?;
            let name = std::str::from_utf8(name)
                .map_err(|_| RecordsError::Invalid("header key is not UTF-8".into()))?;
            let value = rd.bytes()?;
            headers.push(Header {
                name: name.to_string(),
                value: value.map(<[u8]>::to_vec),
            });
        }
        if rd.at - start != len as usize {
            return Err(RecordsError::Invalid(format!(
                "record {i} is {} bytes, its length says {len}",
                rd.at - start
            )));
        }
        batch.push(base_timestamp.wrapping_add(ts_delta), key, value, &headers);
    }
    if rd.at != records.len() {
        return Err(RecordsError::Invalid(format!(
            "{} bytes after the last record",
            records.len() - rd.at
        )));
    }
    Ok(ParsedBatch {
        producer_id,
        producer_epoch,
        base_sequence,
        compression,
        batch,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, RecordsError> {
        let v = *self
            .b
            .get(self.at)
            .ok_or(RecordsError::Truncated("record"))?;
        self.at += 1;
        Ok(v)
    }

    fn varlong(&mut self) -> Result<i64, RecordsError> {
        let mut raw: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = self.u8()?;
            if shift == 63 && byte > 1 {
                return Err(RecordsError::Invalid("varint overflows 64 bits".into()));
            }
            raw |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(RecordsError::Invalid("varint longer than 10 bytes".into()))
    }

    fn varint(&mut self) -> Result<i32, RecordsError> {
        let v = self.varlong()?;
        i32::try_from(v).map_err(|_| RecordsError::Invalid(format!("varint {v} overflows i32")))
    }

    /// A length-prefixed byte string; length -1 is null.
    fn bytes(&mut self) -> Result<Option<&'a [u8]>, RecordsError> {
        let len = self.varint()?;
        if len < 0 {
            return if len == -1 {
                Ok(None)
            } else {
                Err(RecordsError::Invalid(format!("length {len}")))
            };
        }
        let len = len as usize;
        if self.b.len() - self.at < len {
            return Err(RecordsError::Truncated("record field"));
        }
        let s = &self.b[self.at..self.at + len];
        self.at += len;
        Ok(Some(s))
    }
}

/// Reads at most `limit` bytes from a decompressing reader.
fn read_bounded(
    codec: &'static str,
    r: impl std::io::Read,
    limit: usize,
) -> Result<Vec<u8>, RecordsError> {
    use std::io::Read;
    let mut out = Vec::new();
    r.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| RecordsError::Decompress {
            codec,
            reason: e.to_string(),
        })?;
    if out.len() > limit {
        return Err(RecordsError::Decompress {
            codec,
            reason: format!("output exceeds {limit} bytes"),
        });
    }
    Ok(out)
}

/// The Xerial snappy-java stream header (Java and kafka-python producers frame snappy so).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

fn snappy_raw(data: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), RecordsError> {
    let err = |e: snap::Error| RecordsError::Decompress {
        codec: "snappy",
        reason: e.to_string(),
    };
    let n = snap::raw::decompress_len(data).map_err(err)?;
    if out.len() + n > limit {
        return Err(RecordsError::Decompress {
            codec: "snappy",
            reason: format!("output exceeds {limit} bytes"),
        });
    }
    let at = out.len();
    out.resize(at + n, 0);
    snap::raw::Decoder::new()
        .decompress(data, &mut out[at..])
        .map_err(err)?;
    Ok(())
}

/// Decompresses a records section compressed with Kafka codec `codec` (1-4).
pub fn decompress(codec: u8, data: &[u8]) -> Result<Vec<u8>, RecordsError> {
    decompress_within(codec, data, MAX_DECOMPRESSED)
}

/// As [`decompress`], stopping with an error once the output passes `limit` bytes.
pub fn decompress_within(codec: u8, data: &[u8], limit: usize) -> Result<Vec<u8>, RecordsError> {
    match codec {
        1 => read_bounded("gzip", flate2::read::GzDecoder::new(data), limit),
        2 => {
            let mut out = Vec::new();
            if let Some(mut rest) = data.strip_prefix(XERIAL_MAGIC) {
                // version and minimum compatible version, then [u32 BE length][block] ...
                if rest.len() < 8 {
                    return Err(RecordsError::Truncated("xerial snappy header"));
                }
                rest = &rest[8..];
                while !rest.is_empty() {
                    if rest.len() < 4 {
                        return Err(RecordsError::Truncated("xerial snappy block length"));
                    }
                    let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    rest = &rest[4..];
                    if rest.len() < n {
                        return Err(RecordsError::Truncated("xerial snappy block"));
                    }
                    snappy_raw(&rest[..n], &mut out, limit)?;
                    rest = &rest[n..];
                }
            } else {
                snappy_raw(data, &mut out, limit)?;
            }
            Ok(out)
        }
        3 => read_bounded("lz4", lz4_flex::frame::FrameDecoder::new(data), limit),
        4 => {
            let d = ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| {
                RecordsError::Decompress {
                    codec: "zstd",
                    reason: e.to_string(),
                }
            })?;
            read_bounded("zstd", d, limit)
        }
        c => Err(RecordsError::Invalid(format!("compression codec {c}"))),
    }
}

fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z & 0x7f).sat_u8() | 0x80);
        z >>= 7;
    }
    out.push(z.sat_u8());
}

fn varlong_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

fn bytes_len(b: Option<&[u8]>) -> usize {
    match b {
        Some(b) => varlong_len(b.len() as i64) + b.len(),
        None => 1,
    }
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            put_varlong(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        None => put_varlong(out, -1),
    }
}

/// Appends one Brook batch as an uncompressed Kafka v2 batch to `out`.
pub fn encode_batch(out: &mut Vec<u8>, batch: &BatchView<'_>) -> Result<(), FrameError> {
    let h = &batch.header;
    let start = out.len();
    out.reserve(BATCH_HEADER_LEN + batch.frame().len() + 8 * h.record_count as usize);
    out.extend_from_slice(&(h.base_offset as i64).to_be_bytes());
    out.extend_from_slice(&[0; 4]); // batch length, set below
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    out.push(2); // magic
    out.extend_from_slice(&[0; 4]); // crc, set below
    let crc_from = out.len();
    // Attributes: no compression; the timestamp type (bit 3: LogAppendTime, whose clients take
    // every record's time from the batch's max timestamp).
    let log_append = h.attributes & crate::log::record::ATTR_LOG_APPEND_TIME != 0;
    out.extend_from_slice(&(if log_append { 0x08i16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&(h.record_count as i32 - 1).to_be_bytes());
    out.extend_from_slice(&h.first_timestamp.to_be_bytes());
    out.extend_from_slice(&h.max_timestamp.to_be_bytes());
    out.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    out.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    out.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    out.extend_from_slice(&(h.record_count as i32).to_be_bytes());
    for r in batch.records() {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        let ts_delta = r.timestamp.wrapping_sub(h.first_timestamp);
        let offset_delta = (r.offset - h.base_offset) as i64;
        let mut len = 1
            + varlong_len(ts_delta)
            + varlong_len(offset_delta)
            + bytes_len(r.key)
            + bytes_len(r.value)
            + varlong_len(r.headers.len() as i64);
        for hd in &r.headers {
            len += bytes_len(Some(hd.name.as_bytes())) + bytes_len(hd.value);
        }
        put_varlong(out, len as i64);
        out.push(0);
        put_varlong(out, ts_delta);
        put_varlong(out, offset_delta);
        put_bytes(out, r.key);
        put_bytes(out, r.value);
        put_varlong(out, r.headers.len() as i64);
        for hd in &r.headers {
            put_bytes(out, Some(hd.name.as_bytes()));
            put_bytes(out, hd.value);
        }
    }
    let len = (out.len() - start - 12).sat_i32();
    out[start + 8..start + 12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c(&out[crc_from..]);
    out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::{BatchHeader, RecordLayout, encode_frame};
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record as KRecord, RecordBatchDecoder, RecordBatchEncoder,
        RecordEncodeOptions, TimestampType,
    };
    use proptest::prelude::*;

    /// Timestamp delta, key, value, headers: any of them but the header names may be null.
    type Rec = (
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(String, Option<Vec<u8>>)>,
    );

    fn records() -> impl Strategy<Value = Vec<Rec>> {
        prop::collection::vec(
            (
                -5_000i64..5_000,
                prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
                prop::option::weighted(0.8, prop::collection::vec(any::<u8>(), 0..300)),
                prop::collection::vec(
                    (
                        "[a-z.]{1,8}",
                        prop::option::weighted(0.8, prop::collection::vec(any::<u8>(), 0..10)),
                    ),
                    0..3,
                ),
            ),
            1..20,
        )
    }

    fn kafka_encode(base_ts: i64, recs: &[Rec], producer: (i64, i16, i32)) -> Vec<u8> {
        let krecs: Vec<KRecord> = recs
            .iter()
            .enumerate()
            .map(|(i, (ts, k, v, h))| KRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: producer.0,
                producer_epoch: producer.1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: producer.2 + i.sat_i32(),
                timestamp: base_ts + ts,
                key: k.clone().map(Bytes::from),
                value: v.clone().map(Bytes::from),
                headers: h
                    .iter()
                    .map(|(n, v)| (StrBytes::from_string(n.clone()), v.clone().map(Bytes::from)))
                    .collect::<IndexMap<_, _>>(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &krecs,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .expect("encode");
        buf.to_vec()
    }

    proptest! {
        /// A batch made by kafka-protocol's encoder parses into the same records.
        #[test]
        fn parses_what_kafka_protocol_encodes(base in 0i64..2_000_000_000_000, recs in records()) {
            // Duplicate header names collapse in kafka-protocol's IndexMap: keep them unique.
            let recs: Vec<Rec> = recs.into_iter().map(|(t, k, v, mut h)| {
                h.sort_by(|a, b| a.0.cmp(&b.0));
                h.dedup_by(|a, b| a.0 == b.0);
                (t, k, v, h)
            }).collect();
            let bytes = kafka_encode(base, &recs, (7, 1, 100));
            let parts = split_batches(&bytes).expect("split");
            prop_assert_eq!(parts.len(), 1);
            let parsed = parse_batch(parts[0]).expect("parse");
            prop_assert_eq!(parsed.producer_id, 7);
            prop_assert_eq!(parsed.base_sequence, 100);
            prop_assert_eq!(parsed.record_count() as usize, recs.len());
            let mut frame = Vec::new();
            let header = BatchHeader {
                base_offset: 40,
                record_count: parsed.batch.count(),
                first_timestamp: parsed.batch.first_timestamp(),
                max_timestamp: parsed.batch.max_timestamp(),
                append_time: 0,
                attributes: 0,
            };
            encode_frame(&mut frame, &header, parsed.batch.layout(), parsed.batch.records_bytes());
            let view = BatchView::parse(&frame).expect("frame");
            let nulls = recs.iter().any(|(_, _, v, h)| v.is_none() || h.iter().any(|x| x.1.is_none()));
            prop_assert_eq!(view.layout == RecordLayout::Nullable, nulls);
            for (r, (ts, k, v, h)) in view.records().zip(&recs) {
                let r = r.expect("record");
                prop_assert_eq!(r.timestamp, base + ts);
                prop_assert_eq!(r.key, k.as_deref());
                prop_assert_eq!(r.value, v.as_deref());
                let got: Vec<(String, Option<Vec<u8>>)> = r
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect();
                prop_assert_eq!(&got, h);
            }
        }

        /// What we encode for a fetch decodes with kafka-protocol's decoder (CRC checked there)
        /// into the same records at the same offsets.
        #[test]
        fn kafka_protocol_decodes_what_we_encode(base_offset in 0u64..1 << 40, recs in records()) {
            let mut b = BatchBuilder::new();
            for (ts, k, v, h) in &recs {
                let hs: Vec<Header> = h
                    .iter()
                    .map(|(n, v)| Header { name: n.clone(), value: v.clone() })
                    .collect();
                b.push(1_700_000_000_000 + ts, k.as_deref(), v.as_deref(), &hs);
            }
            let header = BatchHeader {
                base_offset,
                record_count: b.count(),
                first_timestamp: b.first_timestamp(),
                max_timestamp: b.max_timestamp(),
                append_time: 0,
                attributes: 0,
            };
            let mut frame = Vec::new();
            encode_frame(&mut frame, &header, b.layout(), b.records_bytes());
            let view = BatchView::parse(&frame).expect("frame");
            let mut out = Vec::new();
            encode_batch(&mut out, &view).expect("encode");
            let mut buf = Bytes::from(out);
            let set = RecordBatchDecoder::decode(&mut buf).expect("kafka-protocol decodes it");
            prop_assert_eq!(set.records.len(), recs.len());
            for (i, (r, (ts, k, v, h))) in set.records.iter().zip(&recs).enumerate() {
                prop_assert_eq!(r.offset, (base_offset + i as u64) as i64);
                prop_assert_eq!(r.timestamp, 1_700_000_000_000 + ts);
                prop_assert_eq!(r.key.as_deref(), k.as_deref());
                prop_assert_eq!(r.value.as_deref(), v.as_deref());
                // Header names may repeat in Brook; kafka-protocol keeps the last of each.
                for (n, val) in h {
                    let last = h.iter().rev().find(|(m, _)| m == n).map(|(_, v)| v);
                    let got = r.headers.get(n.as_bytes()).map(|v| v.as_deref());
                    prop_assert_eq!(got, last.map(|v| v.as_deref()));
                    let _ = val;
                }
            }
        }

        /// Damaged batches are refused, never mis-parsed into something else, and never panic.
        #[test]
        fn damaged_batches_are_refused(recs in records(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = kafka_encode(1_700_000_000_000, &recs, (-1, -1, -1));
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(parts) = split_batches(&bytes) {
                for p in parts {
                    // Anything past the length fields is covered by the CRC.
                    if i >= 21 {
                        prop_assert!(parse_batch(p).is_err());
                    } else {
                        let _ = parse_batch(p);
                    }
                }
            }
        }
    }

    /// A batch whose header claims 2^31-1 records (with its CRC made right again) is refused
    /// before anything is sized to the claim.
    #[test]
    fn a_claimed_record_count_beyond_the_bytes_is_refused() {
        let recs: Vec<Rec> = vec![(0, None, Some(b"v".to_vec()), vec![])];
        let mut bytes = kafka_encode(1_700_000_000_000, &recs, (-1, -1, -1));
        // last offset delta (at 23) and record count (at 57) agree on the lie.
        bytes[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        bytes[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let crc = crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        match parse_batch(&bytes) {
            Err(RecordsError::Invalid(why)) => assert!(why.contains("record count"), "{why}"),
            other => panic!("accepted: {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn compressed_sections_decompress() {
        let plain: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        // gzip
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).expect("gzip");
        assert_eq!(
            decompress(1, &gz.finish().expect("gzip")).expect("gunzip"),
            plain
        );
        // snappy, raw and in Xerial framing (two blocks)
        let raw = snap::raw::Encoder::new()
            .compress_vec(&plain)
            .expect("snappy");
        assert_eq!(decompress(2, &raw).expect("raw snappy"), plain);
        let mut xerial = XERIAL_MAGIC.to_vec();
        xerial.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        for half in plain.chunks(plain.len() / 2) {
            let block = snap::raw::Encoder::new()
                .compress_vec(half)
                .expect("snappy");
            xerial.extend_from_slice(&(block.len().sat_u32()).to_be_bytes());
            xerial.extend_from_slice(&block);
        }
        assert_eq!(decompress(2, &xerial).expect("xerial snappy"), plain);
        // lz4 frame
        let mut lz = lz4_flex::frame::FrameEncoder::new(Vec::new());
        std::io::Write::write_all(&mut lz, &plain).expect("lz4");
        assert_eq!(
            decompress(3, &lz.finish().expect("lz4")).expect("unlz4"),
            plain
        );
        // zstd: a frame made by the reference encoder (`zstd -19`, with its checksum)
        let zst: &[u8] = &[
            0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x68, 0x9d, 0x00, 0x00, 0x68, 0x68, 0x65, 0x6c, 0x6c,
            0x6f, 0x20, 0x7a, 0x73, 0x74, 0x64, 0x2c, 0x20, 0x0a, 0x01, 0x00, 0x57, 0x4a, 0x12,
            0x4c, 0x24, 0xf8, 0xff,
        ];
        assert_eq!(
            decompress(4, zst).expect("unzstd"),
            b"hello zstd, hello zstd, hello zstd\n"
        );
        // garbage in each codec is an error, not a panic
        for c in 1..=4 {
            assert!(
                decompress(c, b"not compressed at all").is_err(),
                "codec {c}"
            );
        }
        assert!(decompress(5, b"").is_err());
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_bound() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(MAX_DECOMPRESSED >> 20) + 1 {
            std::io::Write::write_all(&mut gz, &zeros).expect("gzip");
        }
        let small = gz.finish().expect("gzip");
        assert!(small.len() < 1 << 20);
        let e = decompress(1, &small).expect_err("bounded");
        assert!(e.to_string().contains("exceeds"), "{e}");
        // With a topic's bound (2 MiB here) the same bomb stops there, every codec.
        let e = decompress_within(1, &small, 2 << 20).expect_err("bounded");
        assert!(e.to_string().contains("exceeds 2097152 bytes"), "{e}");
        let mut lz = lz4_flex::frame::FrameEncoder::new(Vec::new());
        std::io::Write::write_all(&mut lz, &vec![0u8; 3 << 20]).expect("lz4");
        let lz = lz.finish().expect("lz4");
        assert!(decompress_within(3, &lz, 2 << 20).is_err());
        assert!(decompress_within(3, &lz, 4 << 20).is_ok());
        let raw = snap::raw::Encoder::new()
            .compress_vec(&vec![0u8; 3 << 20])
            .expect("snappy");
        assert!(decompress_within(2, &raw, 2 << 20).is_err());
    }
}
