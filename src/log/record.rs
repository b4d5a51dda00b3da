//! Records, batches and the batch frame: the unit Brook writes, checksums and sends.
//!
//! A producer fills a [`BatchBuilder`]; the partition gives the batch its base offset and append
//! time and stores it as one [`frame`](encode_frame). A reader gets those frames back byte for
//! byte and walks them with [`BatchView`]. The byte layout is documented in [`crate::log`].

use serde::{Deserialize, Serialize};

use super::error::FrameError;
use crate::units::Narrow;

/// The newest batch body layout this Brook reads and writes (see [`RecordLayout`]). A frame whose
/// body starts with a larger number was written by a newer Brook and is refused, never guessed at.
pub const BATCH_FORMAT_VERSION: u8 = RecordLayout::Nullable as u8;

/// How the records of a batch are laid out; the first byte of every batch body.
///
/// A batch is written in the plain layout unless one of its records has a null value or a null
/// header value, so data without nulls reads on every Brook version, and a client that predates
/// nulls never sees the nullable layout (the native server converts it for such clients).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordLayout {
    /// Version 1: every value and header value is a byte string (possibly empty).
    #[default]
    Plain = 1,
    /// Version 2: values and header values may be null (Kafka tombstones, null headers).
    Nullable = 2,
}

impl RecordLayout {
    /// The layout a batch body's first byte names; `None` for a version this Brook does not know.
    pub fn from_version(version: u8) -> Option<RecordLayout> {
        match version {
            1 => Some(RecordLayout::Plain),
            2 => Some(RecordLayout::Nullable),
            _ => None,
        }
    }
}

/// `[len: u32 LE][crc32c: u32 LE]` in front of every batch body.
pub const FRAME_HEADER_LEN: usize = 8;

/// The largest frame a reader accepts (length prefix included). Writers are held to the
/// smaller `max_batch_size` of their partition.
pub const MAX_FRAME_LEN: usize = 64 * 1024 * 1024;

/// CRC-32C (Castagnoli): the checksum of every frame on disk (and of Kafka record batches).
/// The CPU's own instruction where it has one (SSE 4.2 on x86_64, the CRC extension of ARMv8,
/// detected at run time), tables elsewhere (armv7): the appender computes it under the
/// partition's lock, for every batch.
#[inline]
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// One named header value of a record (`mqtt.qos`, user properties, origin headers ...). Kafka
/// headers may have a null value (`None`), which is not the same as an empty one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: Option<Vec<u8>>,
}

impl Header {
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Header {
            name: name.into(),
            value: Some(value.into()),
        }
    }

    /// A header whose value is null.
    pub fn null(name: impl Into<String>) -> Self {
        Header {
            name: name.into(),
            value: None,
        }
    }

    /// The value, with null read as empty (for protocols that cannot say null).
    pub fn bytes(&self) -> &[u8] {
        self.value.as_deref().unwrap_or_default()
    }
}

/// A header as [`BatchBuilder::push`] encodes it: owned ([`Header`]) or borrowed
/// ([`HeaderView`], so a producer that has its headers' bytes elsewhere, as an MQTT publish
/// does, encodes them without copying them first).
pub trait HeaderRef {
    fn name(&self) -> &str;
    /// `None`: a null value.
    fn value(&self) -> Option<&[u8]>;
}

impl HeaderRef for Header {
    fn name(&self) -> &str {
        &self.name
    }
    fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
}

impl HeaderRef for HeaderView<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn value(&self) -> Option<&[u8]> {
        self.value
    }
}

/// An owned record, as a producer hands it over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Milliseconds since the Unix epoch, as the producer saw it (Kafka's CreateTime).
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    /// `None` is a null value: a Kafka tombstone, which compaction reads as "key deleted".
    pub value: Option<Vec<u8>>,
    pub headers: Vec<Header>,
}

impl Record {
    /// A record with this value, no key and no headers.
    pub fn with_value(timestamp: i64, value: impl Into<Vec<u8>>) -> Self {
        Record {
            timestamp,
            value: Some(value.into()),
            ..Record::default()
        }
    }

    /// The value, with null read as empty (for protocols that cannot say null).
    pub fn value_bytes(&self) -> &[u8] {
        self.value.as_deref().unwrap_or_default()
    }
}

/// The per-batch fields that precede the records in a batch body (postcard-encoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    /// Offset of the first record; record `i` has offset `base_offset + i`.
    pub base_offset: u64,
    pub record_count: u32,
    /// Timestamp of the first record.
    pub first_timestamp: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp: i64,
    /// When the broker stored the batch, on its retention timeline (see `log::clock`).
    pub append_time: i64,
    /// Bits 0-2: compression (0 = none; no other value is written yet). Bit 3
    /// ([`ATTR_LOG_APPEND_TIME`]): every record's timestamp is `append_time`. Others reserved,
    /// zero.
    pub attributes: u16,
}

/// [`BatchHeader::attributes`] bit: the batch's records carry its append time (a topic with
/// `timestamp_type = "log_append"`), as Kafka's LogAppendTime.
pub const ATTR_LOG_APPEND_TIME: u16 = 0x8;

impl BatchHeader {
    /// Offset one past the last record of the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// How a record is laid out inside a batch body (postcard), plain layout: a value and header
/// values that are byte strings.
#[derive(Serialize)]
#[serde(bound = "")]
struct PlainOut<'a, H: HeaderRef> {
    offset_delta: u32,
    timestamp_delta: i64,
    key: Option<&'a [u8]>,
    value: &'a [u8],
    headers: PlainHeadersOut<'a, H>,
}

/// The nullable layout: as the plain one, with `0`/`1 + bytes` for the value and every header
/// value.
#[derive(Serialize)]
#[serde(bound = "")]
struct NullableOut<'a, H: HeaderRef> {
    offset_delta: u32,
    timestamp_delta: i64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: NullableHeadersOut<'a, H>,
}

/// Headers in the plain layout: `(name, bytes)` pairs.
struct PlainHeadersOut<'a, H>(&'a [H]);

impl<H: HeaderRef> Serialize for PlainHeadersOut<'_, H> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for h in self.0 {
            seq.serialize_element(&(h.name(), BytesRef(h.value().unwrap_or_default())))?;
        }
        seq.end()
    }
}

/// Headers in the nullable layout: `(name, None | Some(bytes))` pairs, as [`Header`]'s own
/// serde form.
struct NullableHeadersOut<'a, H>(&'a [H]);

impl<H: HeaderRef> Serialize for NullableHeadersOut<'_, H> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for h in self.0 {
            seq.serialize_element(&(h.name(), h.value().map(BytesRef)))?;
        }
        seq.end()
    }
}

/// A byte slice serialized as bytes (postcard: varint length + the bytes, as `Vec<u8>` is).
struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[derive(Deserialize)]
struct PlainIn<'a> {
    offset_delta: u32,
    timestamp_delta: i64,
    #[serde(borrow)]
    key: Option<&'a [u8]>,
    #[serde(borrow)]
    value: &'a [u8],
    #[serde(borrow)]
    headers: PlainHeadersIn<'a>,
}

#[derive(Deserialize)]
struct NullableIn<'a> {
    offset_delta: u32,
    timestamp_delta: i64,
    #[serde(borrow)]
    key: Option<&'a [u8]>,
    #[serde(borrow)]
    value: Option<&'a [u8]>,
    #[serde(borrow)]
    headers: Vec<HeaderView<'a>>,
}

/// Plain-layout headers read straight into [`HeaderView`]s (no second list).
struct PlainHeadersIn<'a>(Vec<HeaderView<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for PlainHeadersIn<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = PlainHeadersIn<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of (name, bytes) headers")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                // A peer's count is not trusted for the allocation: each header takes at least
                // two bytes, and postcard stops at the end of the input anyway.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some((name, value)) = seq.next_element::<(&'de str, &'de [u8])>()? {
                    out.push(HeaderView {
                        name,
                        value: Some(value),
                    });
                }
                Ok(PlainHeadersIn(out))
            }
        }
        d.deserialize_seq(Visit(std::marker::PhantomData))
    }
}

/// A header borrowed from a stored batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct HeaderView<'a> {
    pub name: &'a str,
    /// `None`: a null header value (Kafka).
    pub value: Option<&'a [u8]>,
}

impl<'a> HeaderView<'a> {
    /// The value, with null read as empty.
    pub fn bytes(&self) -> &'a [u8] {
        self.value.unwrap_or_default()
    }
}

/// A record borrowed from a stored batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    /// `None`: a null value (a Kafka tombstone).
    pub value: Option<&'a [u8]>,
    pub headers: Vec<HeaderView<'a>>,
}

impl<'a> RecordView<'a> {
    pub fn to_record(&self) -> Record {
        Record {
            timestamp: self.timestamp,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers: self
                .headers
                .iter()
                .map(|h| Header {
                    name: h.name.to_string(),
                    value: h.value.map(<[u8]>::to_vec),
                })
                .collect(),
        }
    }

    /// The value, with null read as empty (for protocols that cannot say null).
    pub fn value_bytes(&self) -> &'a [u8] {
        self.value.unwrap_or_default()
    }

    /// Whether the record needs the nullable layout.
    pub fn has_null(&self) -> bool {
        self.value.is_none() || self.headers.iter().any(|h| h.value.is_none())
    }
}

/// Collects records into the encoded records section of a batch. The partition adds the header
/// and the frame when it appends, so a producer's encoding work is done outside any lock.
///
/// The section is in the plain layout until a record with a null value or null header value
/// arrives; the records so far are then re-encoded in the nullable layout (once per batch).
#[derive(Clone, Debug, Default)]
pub struct BatchBuilder {
    records: Vec<u8>,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    layout: RecordLayout,
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(bytes: usize) -> Self {
        BatchBuilder {
            records: Vec::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// Adds one record (`value` `None`: a null value). Its offset is the batch's base offset plus
    /// the number of records before it.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) {
        self.push_with(timestamp, key, value, headers);
    }

    /// [`BatchBuilder::push`] with headers of any form, borrowed ones included.
    pub fn push_with<H: HeaderRef>(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[H],
    ) {
        if self.count == 0 {
            self.first_timestamp = timestamp;
            self.max_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let nulls = value.is_none() || headers.iter().any(|h| h.value().is_none());
        if nulls && self.layout == RecordLayout::Plain {
            self.make_nullable();
        }
        let offset_delta = self.count;
        let timestamp_delta = timestamp.wrapping_sub(self.first_timestamp);
        // Serializing into a Vec cannot fail: every field is a plain integer, option or slice.
        let out = std::mem::take(&mut self.records);
        let encoded = match self.layout {
            RecordLayout::Plain => postcard::to_extend(
                &PlainOut {
                    offset_delta,
                    timestamp_delta,
                    key,
                    value: value.unwrap_or_default(),
                    headers: PlainHeadersOut(headers),
                },
                out,
            ),
            RecordLayout::Nullable => postcard::to_extend(
                &NullableOut {
                    offset_delta,
                    timestamp_delta,
                    key,
                    value,
                    headers: NullableHeadersOut(headers),
                },
                out,
            ),
        };
        self.records = match encoded {
            Ok(v) => v,
            Err(_) => unreachable!("postcard to_extend into a Vec is infallible for records"),
        };
        self.count += 1;
    }

    /// Re-encodes the records so far in the nullable layout.
    fn make_nullable(&mut self) {
        let plain = std::mem::take(&mut self.records);
        let count = self.count;
        self.count = 0;
        self.layout = RecordLayout::Nullable;
        let first = self.first_timestamp;
        let max = self.max_timestamp;
        let header = BatchHeader {
            base_offset: 0,
            record_count: count,
            first_timestamp: first,
            max_timestamp: max,
            append_time: 0,
            attributes: 0,
        };
        let iter = RecordIter {
            header,
            layout: RecordLayout::Plain,
            rest: &plain,
            index: 0,
        };
        for r in iter.flatten() {
            self.push_with(r.timestamp, r.key, r.value, &r.headers);
        }
        self.first_timestamp = first;
        self.max_timestamp = max;
    }

    /// The layout of the records section so far.
    pub fn layout(&self) -> RecordLayout {
        self.layout
    }

    pub fn push_record(&mut self, record: &Record) {
        self.push(
            record.timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        );
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the encoded records so far.
    pub fn records_len(&self) -> usize {
        self.records.len()
    }

    /// Empties the builder, keeping its allocation.
    pub fn clear(&mut self) {
        self.records.clear();
        self.count = 0;
        self.layout = RecordLayout::Plain;
    }

    pub fn first_timestamp(&self) -> i64 {
        self.first_timestamp
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    pub fn records_bytes(&self) -> &[u8] {
        &self.records
    }

    /// The frame length this batch will have once its header is added (an upper bound: the
    /// header's varints are counted at their widest).
    pub fn frame_len_bound(&self) -> usize {
        FRAME_HEADER_LEN + 1 + MAX_HEADER_LEN + self.records.len()
    }
}

/// A batch ready to append: its encoded records section and what the header needs.
/// Implemented by [`BatchBuilder`] (local producers) and [`EncodedBatch`] (records that arrived
/// encoded from a peer).
pub trait Batch: Send + Sync {
    fn records_bytes(&self) -> &[u8];
    fn count(&self) -> u32;
    fn first_timestamp(&self) -> i64;
    fn max_timestamp(&self) -> i64;
    /// How [`Self::records_bytes`] is laid out.
    fn layout(&self) -> RecordLayout;
    fn is_empty(&self) -> bool {
        self.count() == 0
    }
    /// The frame length this batch will have once its header is added (an upper bound).
    fn frame_len_bound(&self) -> usize {
        FRAME_HEADER_LEN + 1 + MAX_HEADER_LEN + self.records_bytes().len()
    }
}

impl Batch for BatchBuilder {
    fn records_bytes(&self) -> &[u8] {
        &self.records
    }
    fn layout(&self) -> RecordLayout {
        self.layout
    }
    fn count(&self) -> u32 {
        self.count
    }
    fn first_timestamp(&self) -> i64 {
        self.first_timestamp
    }
    fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
}

/// A records section received already encoded (a produce from the network), checked record by
/// record before it is trusted.
#[derive(Clone, Copy, Debug)]
pub struct EncodedBatch<'a> {
    records: &'a [u8],
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    layout: RecordLayout,
}

impl<'a> EncodedBatch<'a> {
    /// Decodes every record of `records` (which must hold exactly `count` in `layout`, with
    /// timestamps relative to `first_timestamp`) to check it.
    pub fn parse(
        records: &'a [u8],
        count: u32,
        first_timestamp: i64,
        layout: RecordLayout,
    ) -> Result<EncodedBatch<'a>, FrameError> {
        let max_timestamp = validate_records(records, count, first_timestamp, layout)?;
        Ok(EncodedBatch {
            records,
            count,
            first_timestamp,
            max_timestamp,
            layout,
        })
    }
}

impl Batch for EncodedBatch<'_> {
    fn records_bytes(&self) -> &[u8] {
        self.records
    }
    fn layout(&self) -> RecordLayout {
        self.layout
    }
    fn count(&self) -> u32 {
        self.count
    }
    fn first_timestamp(&self) -> i64 {
        self.first_timestamp
    }
    fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
}

/// postcard's worst case for [`BatchHeader`]: u64 (10) + u32 (5) + 3 x i64 (10) + u16 (3).
pub const MAX_HEADER_LEN: usize = 10 + 5 + 30 + 3;

/// Appends one complete frame (`len`, `crc`, version, header, records) to `out` and returns its
/// length. `records` must be laid out as `layout` says.
pub fn encode_frame(
    out: &mut Vec<u8>,
    header: &BatchHeader,
    layout: RecordLayout,
    records: &[u8],
) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    out.push(layout as u8);
    let buf = std::mem::take(out);
    *out = match postcard::to_extend(header, buf) {
        Ok(v) => v,
        Err(_) => unreachable!("postcard to_extend into a Vec is infallible for batch headers"),
    };
    out.extend_from_slice(records);
    let body = &out[start + FRAME_HEADER_LEN..];
    let crc = crc32c(body);
    let len = (body.len() + 4).sat_u32();
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Reads the length prefix of the frame at the start of `buf`: the whole frame's size in bytes.
pub fn frame_len(buf: &[u8]) -> Result<usize, FrameError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Err(FrameError::Incomplete {
            needed: FRAME_HEADER_LEN,
        });
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    // The length counts the CRC (4) and a body of at least the version byte and a header.
    if !(4 + 1 + 6..=MAX_FRAME_LEN - 4).contains(&len) {
        return Err(FrameError::BadLength { len });
    }
    Ok(len + 4)
}

/// A checked batch frame borrowed from a buffer.
#[derive(Clone, Debug)]
pub struct BatchView<'a> {
    pub header: BatchHeader,
    pub layout: RecordLayout,
    records: &'a [u8],
    frame: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Parses and verifies the frame at the start of `buf` (length, CRC, version, header).
    /// `Incomplete` means `buf` holds only the beginning of a frame.
    pub fn parse(buf: &'a [u8]) -> Result<BatchView<'a>, FrameError> {
        Self::parse_checked(buf, true)
    }

    /// [`BatchView::parse`] without the CRC: for frames this process encoded and still holds
    /// in memory (what a flusher round just wrote, [`super::WrittenFrames`]), never for bytes
    /// read from a file or a peer. Everything else is checked as by `parse`.
    pub fn parse_own(buf: &'a [u8]) -> Result<BatchView<'a>, FrameError> {
        Self::parse_checked(buf, false)
    }

    fn parse_checked(buf: &'a [u8], verify_crc: bool) -> Result<BatchView<'a>, FrameError> {
        let total = frame_len(buf)?;
        if buf.len() < total {
            return Err(FrameError::Incomplete { needed: total });
        }
        let body = &buf[FRAME_HEADER_LEN..total];
        if verify_crc {
            let stored_crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let actual = crc32c(body);
            if actual != stored_crc {
                return Err(FrameError::BadCrc {
                    stored: stored_crc,
                    actual,
                });
            }
        }
        let version = body[0];
        let Some(layout) = RecordLayout::from_version(version) else {
            return Err(FrameError::UnsupportedVersion {
                found: version,
                supported: BATCH_FORMAT_VERSION,
            });
        };
        let (header, records) = postcard::take_from_bytes::<BatchHeader>(&body[1..])
            .map_err(|e| FrameError::BadHeader(e.to_string()))?;
        if header.record_count == 0 {
            return Err(FrameError::BadHeader("batch with no records".into()));
        }
        if header
            .base_offset
            .checked_add(u64::from(header.record_count))
            .is_none()
        {
            return Err(FrameError::BadHeader("offsets overflow u64".into()));
        }
        Ok(BatchView {
            header,
            layout,
            records,
            frame: &buf[..total],
        })
    }

    /// The whole frame, as stored.
    pub fn frame(&self) -> &'a [u8] {
        self.frame
    }

    pub fn next_offset(&self) -> u64 {
        self.header.next_offset()
    }

    /// The records, in offset order. An undecodable record (possible only for a frame whose
    /// CRC matched but whose writer was broken) ends the iteration with an error.
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter {
            header: self.header,
            layout: self.layout,
            rest: self.records,
            index: 0,
        }
    }

    /// The records section, as laid out by [`Self::layout`].
    pub fn records_bytes(&self) -> &'a [u8] {
        self.records
    }
}

/// Iterator over the records of a [`BatchView`].
pub struct RecordIter<'a> {
    header: BatchHeader,
    layout: RecordLayout,
    rest: &'a [u8],
    index: u32,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.header.record_count {
            if !self.rest.is_empty() {
                let extra = self.rest.len();
                self.rest = &[];
                return Some(Err(FrameError::BadRecord(format!(
                    "{extra} bytes after the last record"
                ))));
            }
            return None;
        }
        let decoded = match self.layout {
            RecordLayout::Plain => {
                postcard::take_from_bytes::<PlainIn<'a>>(self.rest).map(|(r, rest)| {
                    let rec = NullableIn {
                        offset_delta: r.offset_delta,
                        timestamp_delta: r.timestamp_delta,
                        key: r.key,
                        value: Some(r.value),
                        headers: r.headers.0,
                    };
                    (rec, rest)
                })
            }
            RecordLayout::Nullable => postcard::take_from_bytes::<NullableIn<'a>>(self.rest),
        };
        let (rec, rest) = match decoded {
            Ok(x) => x,
            Err(e) => {
                self.index = self.header.record_count;
                self.rest = &[];
                return Some(Err(FrameError::BadRecord(e.to_string())));
            }
        };
        if rec.offset_delta != self.index {
            self.index = self.header.record_count;
            self.rest = &[];
            return Some(Err(FrameError::BadRecord(format!(
                "offset delta {} where {} was expected",
                rec.offset_delta, self.index
            ))));
        }
        self.rest = rest;
        self.index += 1;
        let timestamp = if self.header.attributes & ATTR_LOG_APPEND_TIME != 0 {
            self.header.append_time
        } else {
            self.header
                .first_timestamp
                .wrapping_add(rec.timestamp_delta)
        };
        Some(Ok(RecordView {
            offset: self.header.base_offset + u64::from(rec.offset_delta),
            timestamp,
            key: rec.key,
            value: rec.value,
            headers: rec.headers,
        }))
    }
}

/// Checks that `records` is a well-formed records section of exactly `count` records whose
/// timestamps are relative to `first_timestamp`; returns the largest timestamp. Used on batches
/// that arrive encoded from a peer.
pub fn validate_records(
    records: &[u8],
    count: u32,
    first_timestamp: i64,
    layout: RecordLayout,
) -> Result<i64, FrameError> {
    if count == 0 {
        return Err(FrameError::BadHeader("batch with no records".into()));
    }
    let header = BatchHeader {
        base_offset: 0,
        record_count: count,
        first_timestamp,
        max_timestamp: 0,
        append_time: 0,
        attributes: 0,
    };
    let iter = RecordIter {
        header,
        layout,
        rest: records,
        index: 0,
    };
    let mut max = i64::MIN;
    for r in iter {
        max = max.max(r?.timestamp);
    }
    Ok(max)
}

/// Appends `batch` to `out` as a plain-layout frame (null values and header values become
/// empty), with the same header: what a reader that predates the nullable layout can read.
/// Returns the frame's length.
pub fn encode_plain(out: &mut Vec<u8>, batch: &BatchView<'_>) -> Result<usize, FrameError> {
    if batch.layout == RecordLayout::Plain {
        out.extend_from_slice(batch.frame());
        return Ok(batch.frame().len());
    }
    let mut records = Vec::with_capacity(batch.records.len());
    for (i, r) in batch.records().enumerate() {
        let r = r?;
        let record = PlainOut {
            offset_delta: i.sat_u32(),
            // For a log-append batch this makes even a reader that ignores the attribute see
            // the append time.
            timestamp_delta: r.timestamp.wrapping_sub(batch.header.first_timestamp),
            key: r.key,
            value: r.value_bytes(),
            headers: PlainHeadersOut(&r.headers),
        };
        records = match postcard::to_extend(&record, records) {
            Ok(v) => v,
            Err(_) => unreachable!("postcard to_extend into a Vec is infallible for records"),
        };
    }
    Ok(encode_frame(
        out,
        &batch.header,
        RecordLayout::Plain,
        &records,
    ))
}

/// `frames` (whole frames, as a fetch returns them) with every nullable-layout batch converted
/// to the plain layout; `None` when all are plain already (the usual case: nothing is copied).
pub fn frames_as_plain(frames: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
    let mut rest = frames;
    let mut any = false;
    while !rest.is_empty() {
        let n = frame_len(rest)?.min(rest.len());
        if rest.get(FRAME_HEADER_LEN) != Some(&(RecordLayout::Plain as u8)) {
            any = true;
            break;
        }
        rest = &rest[n..];
    }
    if !any {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(frames.len());
    let mut rest = frames;
    while !rest.is_empty() {
        let batch = BatchView::parse(rest)?;
        encode_plain(&mut out, &batch)?;
        rest = &rest[batch.frame().len()..];
    }
    Ok(Some(out))
}

/// Walks every frame in `buf`, verifying each, until the buffer ends or a frame is bad.
/// Exists so fuzzers and property tests drive exactly what readers run.
pub fn decode_all(mut buf: &[u8]) -> Result<Vec<Record>, FrameError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let batch = BatchView::parse(buf)?;
        for r in batch.records() {
            out.push(r?.to_record());
        }
        buf = &buf[batch.frame().len()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(base: u64, count: u32) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            record_count: count,
            first_timestamp: 10,
            max_timestamp: 12,
            append_time: 99,
            attributes: 0,
        }
    }

    #[test]
    fn frame_round_trip() {
        let mut b = BatchBuilder::new();
        b.push(
            10,
            Some(b"k"),
            Some(b"v1"),
            &[Header::new("mqtt.qos", vec![1])],
        );
        b.push(12, None, Some(b"v2"), &[]);
        let mut out = Vec::new();
        let n = encode_frame(&mut out, &header(7, 2), b.layout(), b.records_bytes());
        assert_eq!(n, out.len());
        let view = BatchView::parse(&out).expect("valid frame");
        let recs: Vec<_> = view.records().collect::<Result<_, _>>().expect("records");
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].offset, 7);
        assert_eq!(recs[0].key, Some(&b"k"[..]));
        assert_eq!(recs[0].headers[0].name, "mqtt.qos");
        assert_eq!(recs[1].offset, 8);
        assert_eq!(recs[1].timestamp, 12);
    }

    /// The nullable layout's headers are written as `Header`'s derived serde form was (the
    /// layout on disk since version 2), for owned and borrowed headers alike.
    #[test]
    fn nullable_headers_keep_the_derived_form() {
        #[derive(Serialize)]
        struct Derived<'a> {
            offset_delta: u32,
            timestamp_delta: i64,
            key: Option<&'a [u8]>,
            value: Option<&'a [u8]>,
            headers: &'a [Header],
        }
        let headers = [Header::new("k", b"v".to_vec()), Header::null("n")];
        let want = postcard::to_allocvec(&Derived {
            offset_delta: 0,
            timestamp_delta: 0,
            key: Some(b"key"),
            value: None,
            headers: &headers,
        })
        .expect("encodes");
        let mut owned = BatchBuilder::new();
        owned.push(5, Some(b"key"), None, &headers);
        assert_eq!(owned.layout(), RecordLayout::Nullable);
        assert_eq!(owned.records_bytes(), &want[..]);
        let views = [
            HeaderView {
                name: "k",
                value: Some(b"v"),
            },
            HeaderView {
                name: "n",
                value: None,
            },
        ];
        let mut borrowed = BatchBuilder::new();
        borrowed.push_with(5, Some(b"key"), None, &views);
        assert_eq!(borrowed.records_bytes(), &want[..]);
    }

    #[test]
    fn newer_version_is_refused() {
        let mut b = BatchBuilder::new();
        b.push(1, None, Some(b"x"), &[]);
        let mut out = Vec::new();
        encode_frame(&mut out, &header(0, 1), b.layout(), b.records_bytes());
        out[FRAME_HEADER_LEN] = BATCH_FORMAT_VERSION + 1;
        let crc = crc32c(&out[FRAME_HEADER_LEN..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            BatchView::parse(&out),
            Err(FrameError::UnsupportedVersion { found: 3, .. })
        ));
    }

    #[test]
    fn incomplete_and_bad_crc_are_told_apart() {
        let mut b = BatchBuilder::new();
        b.push(1, None, Some(b"hello"), &[]);
        let mut out = Vec::new();
        encode_frame(&mut out, &header(0, 1), b.layout(), b.records_bytes());
        assert!(matches!(
            BatchView::parse(&out[..out.len() - 1]),
            Err(FrameError::Incomplete { .. })
        ));
        let last = out.len() - 1;
        out[last] ^= 0xff;
        assert!(matches!(
            BatchView::parse(&out),
            Err(FrameError::BadCrc { .. })
        ));
    }
}
