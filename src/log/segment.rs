//! One segment: the `.log` file of batch frames and its sparse `.idx` written once at seal.
//!
//! This module knows the two file layouts (see the tables in [`crate::log`]), scans a log file
//! frame by frame (recovery, index rebuild, `brook check`), and reads whole frames from a
//! position. It holds no state: the partition owns the open segments.

use std::path::{Path, PathBuf};

use super::error::{FrameError, LogError, Result};
use super::fs::{File, Fs};
use super::record::{BatchView, FRAME_HEADER_LEN, frame_len};
use crate::units::Narrow;

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"BROOKSEG";
/// Magic bytes at the start of every index file.
pub const INDEX_MAGIC: &[u8; 8] = b"BROOKIDX";
/// The newest segment file layout: 1 for a segment as appended (offsets dense), 2 for one a
/// compaction rewrote (offsets may skip: a batch may start after the previous one's end).
pub const SEGMENT_FORMAT_VERSION: u32 = 2;
/// Version of the index (and dropped-ranges) file layout.
pub const INDEX_FORMAT_VERSION: u32 = 1;
/// Bytes before the first frame of a segment file.
pub const SEGMENT_HEADER_LEN: u64 = SEGMENT_HEADER_BYTES as u64;
/// [`SEGMENT_HEADER_LEN`] as a buffer length.
pub const SEGMENT_HEADER_BYTES: usize = 24;
const INDEX_HEADER_LEN: usize = 56;
const INDEX_ENTRY_LEN: usize = 16;

/// `<base offset, 20 digits>.log`
pub fn log_file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// `<base offset, 20 digits>.idx`
pub fn index_file_name(base: u64) -> String {
    format!("{base:020}.idx")
}

/// `<base offset, 20 digits>.dropped`: the damaged ranges of a segment an operator dropped
/// (`brook check --repair --drop-corrupt`).
pub fn dropped_file_name(base: u64) -> String {
    format!("{base:020}.dropped")
}

const DROPPED_MAGIC: &[u8; 8] = b"BROOKDRP";

/// The offset ranges recorded as dropped for the segment at `base` in `dir` (none when the file
/// is missing; a damaged file counts as none, so its ranges are reported again).
pub fn read_dropped(fs: &dyn Fs, dir: &Path, base: u64) -> Result<Vec<(u64, u64)>> {
    let path = dir.join(dropped_file_name(base));
    if !fs.exists(&path) {
        return Ok(Vec::new());
    }
    let f = fs
        .open(&path, false)
        .map_err(|e| LogError::io("open", &path, e))?;
    let len = f.size().map_err(|e| LogError::io("stat", &path, e))?;
    if !(16..=1 << 20).contains(&len) {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; len.sat_usize()];
    f.read_exact_at(&mut buf, 0)
        .map_err(|e| LogError::io("read", &path, e))?;
    let (body, crc) = buf.split_at(buf.len() - 4);
    let intact = &body[..8] == DROPPED_MAGIC
        && super::record::crc32c(body) == u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]])
        && (body.len() - 12) % 16 == 0;
    if !intact {
        tracing::warn!(file = %path.display(), "damaged list of dropped ranges ignored");
        return Ok(Vec::new());
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[i..i + 8]);
        u64::from_le_bytes(b)
    };
    Ok((12..body.len())
        .step_by(16)
        .map(|i| (u64_at(i), u64_at(i + 8)))
        .collect())
}

/// Records `ranges` as dropped for the segment at `base` in `dir` (replacing the list).
pub fn write_dropped(fs: &dyn Fs, dir: &Path, base: u64, ranges: &[(u64, u64)]) -> Result<()> {
    let mut out = Vec::with_capacity(16 + ranges.len() * 16);
    out.extend_from_slice(DROPPED_MAGIC);
    out.extend_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
    for (first, next) in ranges {
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&next.to_le_bytes());
    }
    let crc = super::record::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    super::fs::replace_durably(fs, &dir.join(dropped_file_name(base)), &out)
}

/// The base offset named by a segment or index file name, if it is one.
pub fn parse_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ext = match ext {
        "log" => "log",
        "idx" => "idx",
        _ => return None,
    };
    stem.parse().ok().map(|b| (b, ext))
}

/// The header of a segment as appended (version 1: dense offsets).
pub fn encode_segment_header(base: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    segment_header(base, 1)
}

/// The header of a segment a compaction wrote (version 2: offsets may skip).
pub fn encode_compacted_segment_header(base: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    segment_header(base, 2)
}

fn segment_header(base: u64, version: u32) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    h
}

/// What a segment file's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub base: u64,
    /// Written by a compaction: a batch may start after the previous one's end.
    pub compacted: bool,
}

/// Checks a segment file header. `Ok(None)` means the file is shorter than a header (a segment
/// whose creation was cut short).
pub fn read_segment_header(
    file: &dyn File,
    path: &Path,
    len: u64,
) -> Result<Option<SegmentHeader>> {
    if len < SEGMENT_HEADER_LEN {
        return Ok(None);
    }
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    file.read_exact_at(&mut h, 0)
        .map_err(|e| LogError::io("read header of", path, e))?;
    if &h[..8] != SEGMENT_MAGIC {
        return Err(LogError::BadFile {
            path: path.to_path_buf(),
            what: "not a Brook segment file (bad magic)".into(),
        });
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version > SEGMENT_FORMAT_VERSION {
        return Err(LogError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: SEGMENT_FORMAT_VERSION,
        });
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[16..24]);
    Ok(Some(SegmentHeader {
        base: u64::from_le_bytes(b),
        compacted: version >= 2,
    }))
}

/// One sparse index entry: where a batch starts, and the largest record timestamp of every batch
/// before it in the segment (for time lookups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the batch minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch frame in the `.log` file.
    pub position: u32,
    /// Largest record timestamp of the batches before this one (`i64::MIN` for the first).
    pub max_timestamp_before: i64,
}

/// Everything the `.idx` file of a sealed segment says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentIndex {
    pub base_offset: u64,
    pub next_offset: u64,
    /// Length of the `.log` file, header included.
    pub log_len: u64,
    pub max_timestamp: i64,
    pub max_append_time: i64,
    pub entries: Vec<IndexEntry>,
}

impl SegmentIndex {
    /// Bytes of the encoded index file, without encoding it.
    pub fn encoded_len(&self) -> usize {
        INDEX_HEADER_LEN + self.entries.len() * INDEX_ENTRY_LEN + 4
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entries.len().sat_u32()).to_le_bytes());
        out.extend_from_slice(&self.base_offset.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        out.extend_from_slice(&self.log_len.to_le_bytes());
        out.extend_from_slice(&self.max_timestamp.to_le_bytes());
        out.extend_from_slice(&self.max_append_time.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.relative_offset.to_le_bytes());
            out.extend_from_slice(&e.position.to_le_bytes());
            out.extend_from_slice(&e.max_timestamp_before.to_le_bytes());
        }
        let crc = super::record::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses an index file; `Err` says why it cannot be used (it is then rebuilt).
    pub fn decode(buf: &[u8]) -> std::result::Result<SegmentIndex, BadIndex> {
        if buf.len() < INDEX_HEADER_LEN + 4 {
            return Err(BadIndex::Length(buf.len()));
        }
        if &buf[..8] != INDEX_MAGIC {
            return Err(BadIndex::Magic);
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let actual = super::record::crc32c(body);
        if stored != actual {
            return Err(BadIndex::Checksum { stored, actual });
        }
        let u32_at = |p: usize| u32::from_le_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]);
        let u64_at = |p: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[p..p + 8]);
            u64::from_le_bytes(b)
        };
        let version = u32_at(8);
        if version > INDEX_FORMAT_VERSION {
            return Err(BadIndex::Version(version));
        }
        let count = u32_at(12) as usize;
        if body.len() != INDEX_HEADER_LEN + count * INDEX_ENTRY_LEN {
            return Err(BadIndex::Entries {
                len: buf.len(),
                count,
            });
        }
        let entries = (0..count)
            .map(|i| {
                let p = INDEX_HEADER_LEN + i * INDEX_ENTRY_LEN;
                IndexEntry {
                    relative_offset: u32_at(p),
                    position: u32_at(p + 4),
                    max_timestamp_before: u64_at(p + 8) as i64,
                }
            })
            .collect();
        Ok(SegmentIndex {
            base_offset: u64_at(16),
            next_offset: u64_at(24),
            log_len: u64_at(32),
            max_timestamp: u64_at(40) as i64,
            max_append_time: u64_at(48) as i64,
            entries,
        })
    }
}

/// Position of the last indexed batch whose base offset is at most `offset` (or the first frame).
pub fn index_position(entries: &[IndexEntry], base: u64, offset: u64) -> u64 {
    let rel = offset
        .saturating_sub(base)
        .min(u64::from(u32::MAX))
        .sat_u32();
    let i = entries.partition_point(|e| e.relative_offset <= rel);
    if i == 0 {
        SEGMENT_HEADER_LEN
    } else {
        u64::from(entries[i - 1].position)
    }
}

/// Position to start looking for the first batch whose max timestamp reaches `ts`.
pub fn index_position_for_time(entries: &[IndexEntry], ts: i64) -> u64 {
    let i = entries.partition_point(|e| e.max_timestamp_before < ts);
    if i == 0 {
        SEGMENT_HEADER_LEN
    } else {
        u64::from(entries[i - 1].position)
    }
}

/// Why a scan stopped before the end of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanStop {
    /// A frame that failed its length, CRC, version or header check.
    BadFrame(FrameError),
    /// The file ends inside a frame.
    Truncated { needed: usize, available: u64 },
    /// A batch whose base offset does not continue the previous one.
    OffsetGap { expected: u64, found: u64 },
    /// An undecodable record inside a frame whose CRC matched.
    BadRecord(FrameError),
}

impl std::fmt::Display for ScanStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanStop::BadFrame(e) | ScanStop::BadRecord(e) => write!(f, "{e}"),
            ScanStop::Truncated { needed, available } => write!(
                f,
                "file ends inside a frame ({available} of {needed} bytes present)"
            ),
            ScanStop::OffsetGap { expected, found } => {
                write!(f, "batch starts at offset {found}, expected {expected}")
            }
        }
    }
}

/// A damaged range inside a segment with intact frames after it: corruption (bit rot, a bad
/// block), not a torn write. The bytes stay on disk; readers skip the range and are told which
/// offsets it held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// File position of the first damaged byte.
    pub start: u64,
    /// File position of the next intact frame (or the end of the file).
    pub end: u64,
    /// First offset the range held.
    pub first_offset: u64,
    /// First offset after it (the next intact frame's base offset).
    pub next_offset: u64,
    /// What was wrong with the first damaged frame.
    pub why: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bytes {}..{} damaged ({}): offsets {}..{} lost",
            self.start, self.end, self.why, self.first_offset, self.next_offset
        )
    }
}

/// What a full scan of a segment file found.
#[derive(Clone, Debug)]
pub struct Scan {
    /// Bytes from the start of the file through the last intact frame.
    pub valid_len: u64,
    pub next_offset: u64,
    pub batches: u64,
    pub records: u64,
    pub max_timestamp: i64,
    pub max_append_time: i64,
    /// The sparse index of the intact part.
    pub index: Vec<IndexEntry>,
    /// Damaged ranges with intact frames after them (only from [`scan_resync`]).
    pub damage: Vec<Damage>,
    /// Where and why the scan stopped early, if it did: the damaged tail.
    pub stop: Option<(u64, ScanStop)>,
    /// What the first bad frame claimed to hold, when its header was still readable.
    pub torn_batch: Option<(u64, u32)>,
}

impl Scan {
    /// The index of the segment at `base` that this scan read, for a log file of `log_len`
    /// bytes.
    pub fn segment_index(&self, base: u64, log_len: u64) -> SegmentIndex {
        SegmentIndex {
            base_offset: base,
            next_offset: self.next_offset,
            log_len,
            max_timestamp: self.max_timestamp,
            max_append_time: self.max_append_time,
            entries: self.index.clone(),
        }
    }
}

/// Builds a sparse index while frames are appended or scanned.
#[derive(Clone, Debug)]
pub struct IndexBuilder {
    pub entries: Vec<IndexEntry>,
    interval: u64,
    since_last: u64,
    pub max_timestamp: i64,
}

impl IndexBuilder {
    pub fn new(interval: u32) -> Self {
        IndexBuilder {
            entries: Vec::new(),
            interval: u64::from(interval.max(1)),
            since_last: 0,
            max_timestamp: i64::MIN,
        }
    }

    /// Records a batch at `position` of `len` bytes.
    pub fn add(&mut self, rel_offset: u32, position: u64, len: u64, max_timestamp: i64) {
        if self.entries.is_empty() || self.since_last >= self.interval {
            self.entries.push(IndexEntry {
                relative_offset: rel_offset,
                position: position.sat_u32(),
                max_timestamp_before: self.max_timestamp,
            });
            self.since_last = 0;
        }
        self.since_last += len;
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
    }

    /// Drops entries at or past `position` (after a failed write is rolled back).
    pub fn truncate_to(&mut self, position: u64) {
        self.entries.retain(|e| u64::from(e.position) < position);
    }
}

/// Reads `file` frame by frame from the header to `len`, verifying lengths, CRCs, versions and
/// offset continuity from `base`. `verify_records` also decodes every record.
pub fn scan(file: &dyn File, path: &Path, len: u64, base: u64, opts: ScanOptions) -> Result<Scan> {
    let from = (SEGMENT_HEADER_LEN, base);
    scan_range(file, path, len, base, from, opts)
}

/// How a scan reads a segment.
#[derive(Clone, Copy, Debug)]
pub struct ScanOptions {
    /// Bytes of log between index entries of the index it builds.
    pub index_interval: u32,
    /// Decode every record too (not only each frame's CRC and header).
    pub verify_records: bool,
    /// The segment was compacted: a batch starting after the previous one's end is a gap
    /// compaction left, not lost data.
    pub gaps: bool,
}

/// [`scan`] from file position `from.0`, where a frame with base offset `from.1` is expected;
/// index entries are relative to the segment's `base`.
fn scan_range(
    file: &dyn File,
    path: &Path,
    len: u64,
    base: u64,
    (start, expected): (u64, u64),
    opts: ScanOptions,
) -> Result<Scan> {
    let ScanOptions {
        index_interval,
        verify_records,
        gaps,
    } = opts;
    const CHUNK: usize = 1 << 20;
    let mut out = Scan {
        valid_len: start.min(len),
        next_offset: expected,
        batches: 0,
        records: 0,
        max_timestamp: i64::MIN,
        max_append_time: i64::MIN,
        index: Vec::new(),
        damage: Vec::new(),
        stop: None,
        torn_batch: None,
    };
    let mut idx = IndexBuilder::new(index_interval);
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_pos = start; // file position of buf[0]
    let mut pos = start;
    while pos < len {
        let in_buf = (pos - buf_pos).sat_usize();
        let have = buf.len() - in_buf;
        let frame = frame_len(&buf[in_buf..]);
        let needed = match frame {
            Ok(n) => n,
            Err(FrameError::Incomplete { needed }) => needed,
            Err(e) => {
                out.stop = Some((pos, ScanStop::BadFrame(e)));
                break;
            }
        };
        if have < needed {
            let left = len - pos;
            if (needed as u64) > left {
                out.stop = Some((
                    pos,
                    ScanStop::Truncated {
                        needed,
                        available: left,
                    },
                ));
                out.torn_batch = torn_header(file, pos, left);
                break;
            }
            let want = (needed.max(CHUNK) as u64).min(left).sat_usize();
            buf.resize(want, 0);
            file.read_exact_at(&mut buf, pos)
                .map_err(|e| LogError::io("read", path, e))?;
            buf_pos = pos;
            continue;
        }
        let view = match BatchView::parse(&buf[in_buf..in_buf + needed]) {
            Ok(v) => v,
            Err(e) => {
                out.stop = Some((pos, ScanStop::BadFrame(e)));
                out.torn_batch = torn_header(file, pos, len - pos);
                break;
            }
        };
        let h = view.header;
        let continues = if gaps {
            h.base_offset >= out.next_offset
        } else {
            h.base_offset == out.next_offset
        };
        if !continues {
            out.stop = Some((
                pos,
                ScanStop::OffsetGap {
                    expected: out.next_offset,
                    found: h.base_offset,
                },
            ));
            break;
        }
        if verify_records {
            if let Some(Err(e)) = view.records().find(|r| r.is_err()) {
                out.stop = Some((pos, ScanStop::BadRecord(e)));
                break;
            }
        }
        idx.add(
            (h.base_offset - base).sat_u32(),
            pos,
            needed as u64,
            h.max_timestamp,
        );
        out.batches += 1;
        out.records += u64::from(h.record_count);
        out.next_offset = h.next_offset();
        out.max_timestamp = out.max_timestamp.max(h.max_timestamp);
        out.max_append_time = out.max_append_time.max(h.append_time);
        pos += needed as u64;
        out.valid_len = pos;
    }
    out.index = idx.entries;
    Ok(out)
}

/// [`scan`], but a damaged frame followed by intact ones is corruption, not a torn tail: the scan
/// looks for the next intact frame (length in range, CRC right, base offset not behind), records
/// the range between as [`Damage`] and goes on from there. Only damage with no intact frame
/// after it ends the scan (`stop`): that is the tail a crash can tear.
pub fn scan_resync(
    file: &dyn File,
    path: &Path,
    len: u64,
    base: u64,
    opts: ScanOptions,
) -> Result<Scan> {
    let mut out = scan(file, path, len, base, opts)?;
    while let Some((pos, why)) = out.stop.clone() {
        let next = match why {
            // An intact frame that starts later than expected: the offsets between are lost.
            ScanStop::OffsetGap { expected, found } if found > expected => Some((pos, found)),
            _ => next_intact_frame(file, path, pos, len, out.next_offset)?,
        };
        let Some((next_pos, next_base)) = next else {
            break;
        };
        out.damage.push(Damage {
            start: pos,
            end: next_pos,
            first_offset: out.next_offset,
            next_offset: next_base,
            why: why.to_string(),
        });
        let from = (next_pos, next_base);
        let rest = scan_range(file, path, len, base, from, opts)?;
        out.index.extend(rest.index);
        out.valid_len = rest.valid_len;
        out.next_offset = rest.next_offset;
        out.batches += rest.batches;
        out.records += rest.records;
        out.max_timestamp = out.max_timestamp.max(rest.max_timestamp);
        out.max_append_time = out.max_append_time.max(rest.max_append_time);
        out.stop = rest.stop;
        out.torn_batch = rest.torn_batch;
    }
    Ok(out)
}

/// The position and base offset of the first intact frame after the damaged one at `from`:
/// its length is in range and inside the file, its CRC and batch header are right, and its
/// base offset is at or after `expected` (Brook never writes an offset twice).
fn next_intact_frame(
    file: &dyn File,
    path: &Path,
    from: u64,
    len: u64,
    expected: u64,
) -> Result<Option<(u64, u64)>> {
    const WINDOW: u64 = 1 << 20;
    let mut window = Vec::new();
    let mut window_pos = from + 1;
    let mut pos = from + 1;
    while pos + (FRAME_HEADER_LEN as u64) < len {
        if pos < window_pos
            || pos + (FRAME_HEADER_LEN + 1 + super::record::MAX_HEADER_LEN) as u64
                > window_pos + window.len() as u64
        {
            window_pos = pos;
            let n = WINDOW.min(len - pos).sat_usize();
            window.resize(n, 0);
            file.read_exact_at(&mut window, pos)
                .map_err(|e| LogError::io("read", path, e))?;
        }
        let at = &window[(pos - window_pos).sat_usize()..];
        if let Ok(n) = frame_len(at) {
            let fits = pos + n as u64 <= len;
            let header = at
                .get(FRAME_HEADER_LEN + 1..)
                .and_then(|b| postcard::take_from_bytes::<super::record::BatchHeader>(b).ok())
                .map(|(h, _)| h);
            let plausible = at
                .get(FRAME_HEADER_LEN)
                .is_some_and(|v| super::record::RecordLayout::from_version(*v).is_some())
                && header.is_some_and(|h| h.base_offset >= expected && h.record_count > 0);
            if fits && plausible {
                let mut frame = vec![0u8; n];
                file.read_exact_at(&mut frame, pos)
                    .map_err(|e| LogError::io("read", path, e))?;
                if let (Ok(view), Some(h)) = (BatchView::parse(&frame), header) {
                    if view.header == h {
                        return Ok(Some((pos, h.base_offset)));
                    }
                }
            }
        }
        pos += 1;
    }
    Ok(None)
}

/// Best effort: the base offset and record count a damaged frame claims, for the log message.
fn torn_header(file: &dyn File, pos: u64, available: u64) -> Option<(u64, u32)> {
    batch_header_at(file, pos, available).map(|h| (h.base_offset, h.record_count))
}

/// The batch header of the frame at `pos`, decoded without checking the frame's CRC (the caller
/// knows whether to trust it), reading at most `available` bytes.
pub fn batch_header_at(
    file: &dyn File,
    pos: u64,
    available: u64,
) -> Option<super::record::BatchHeader> {
    let n = available
        .min((FRAME_HEADER_LEN + 1 + super::record::MAX_HEADER_LEN) as u64)
        .sat_usize();
    let mut b = vec![0u8; n];
    file.read_exact_at(&mut b, pos).ok()?;
    let body = b.get(FRAME_HEADER_LEN + 1..)?;
    let (h, _) = postcard::take_from_bytes::<super::record::BatchHeader>(body).ok()?;
    Some(h)
}

/// Whole frames read from a segment.
pub struct FramesRead {
    pub frames: Vec<u8>,
    /// Offset one past the last record returned (equal to the request when nothing was).
    pub next_offset: u64,
    /// File position after the last frame returned.
    pub end_position: u64,
}

/// Reads whole, verified frames from `start` (a batch boundary) up to `end`, skipping batches
/// that end at or before `from_offset`, until `max_bytes` would be exceeded. The first batch is
/// returned even when it alone exceeds `max_bytes`, so a reader always makes progress.
pub fn read_frames(
    file: &dyn File,
    path: &Path,
    start: u64,
    end: u64,
    from_offset: u64,
    max_bytes: usize,
) -> Result<FramesRead> {
    let window = max_bytes.clamp(64 * 1024, 16 << 20);
    let mut out = Vec::new();
    let mut next_offset = from_offset;
    let mut buf = Vec::new();
    let mut pos = start;
    'outer: while pos < end {
        let want = (window as u64).min(end - pos) as usize;
        buf.resize(want, 0);
        file.read_exact_at(&mut buf, pos)
            .map_err(|e| LogError::io("read", path, e))?;
        let mut at = 0usize;
        loop {
            if pos >= end {
                break 'outer;
            }
            let needed = match frame_len(&buf[at..]) {
                Ok(n) => n,
                Err(FrameError::Incomplete { needed }) => needed,
                Err(source) => {
                    return Err(LogError::Corrupt {
                        path: path.to_path_buf(),
                        position: pos,
                        source,
                    });
                }
            };
            if pos + needed as u64 > end {
                return Err(LogError::Corrupt {
                    path: path.to_path_buf(),
                    position: pos,
                    source: FrameError::Incomplete { needed },
                });
            }
            if buf.len() - at < needed {
                if !out.is_empty() && out.len() + needed > max_bytes {
                    break 'outer;
                }
                if needed > window {
                    // One frame larger than the window: read exactly it.
                    buf.resize(needed, 0);
                    file.read_exact_at(&mut buf, pos)
                        .map_err(|e| LogError::io("read", path, e))?;
                    at = 0;
                } else {
                    continue 'outer;
                }
            }
            let view =
                BatchView::parse(&buf[at..at + needed]).map_err(|source| LogError::Corrupt {
                    path: path.to_path_buf(),
                    position: pos,
                    source,
                })?;
            if view.next_offset() > from_offset {
                if !out.is_empty() && out.len() + needed > max_bytes {
                    break 'outer;
                }
                out.extend_from_slice(view.frame());
                next_offset = view.next_offset();
            }
            at += needed;
            pos += needed as u64;
            if at >= buf.len() {
                continue 'outer;
            }
        }
    }
    Ok(FramesRead {
        frames: out,
        next_offset,
        end_position: pos,
    })
}

/// Calls `f` with every batch of `file` from position `start` to `end`, and the batch's
/// position, in order, until it breaks.
pub fn for_each_batch(
    file: &dyn File,
    path: &Path,
    start: u64,
    end: u64,
    mut f: impl FnMut(&BatchView<'_>, u64) -> Result<std::ops::ControlFlow<()>>,
) -> Result<()> {
    let mut pos = start;
    while pos < end {
        let got = read_frames(file, path, pos, end, 0, 1 << 20)?;
        if got.frames.is_empty() {
            break;
        }
        let mut rest: &[u8] = &got.frames;
        while !rest.is_empty() {
            let view = BatchView::parse(rest).map_err(|source| LogError::Corrupt {
                path: path.to_path_buf(),
                position: pos,
                source,
            })?;
            if f(&view, pos)?.is_break() {
                return Ok(());
            }
            pos += view.frame().len() as u64;
            rest = &rest[view.frame().len()..];
        }
    }
    Ok(())
}

/// Writes a new index file and makes it durable.
pub fn write_index(fs: &dyn Fs, dir: &Path, index: &SegmentIndex) -> Result<PathBuf> {
    let path = dir.join(index_file_name(index.base_offset));
    write_index_at(fs, &path, index)?;
    Ok(path)
}

/// Writes an index file at `path` and makes it durable.
pub fn write_index_at(fs: &dyn Fs, path: &Path, index: &SegmentIndex) -> Result<()> {
    let bytes = index.encode();
    let f = fs
        .create(path)
        .map_err(|e| LogError::io("create", path, e))?;
    f.write_all_at(&bytes, 0)
        .map_err(|e| LogError::io("write", path, e))?;
    f.sync_data().map_err(|e| LogError::io("fsync", path, e))?;
    Ok(())
}

/// Why an index file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadIndex {
    #[error("{0} bytes is too short or too long for an index")]
    Length(usize),
    #[error("bad magic")]
    Magic,
    #[error("checksum mismatch (stored {stored:#010x}, computed {actual:#010x})")]
    Checksum { stored: u32, actual: u32 },
    #[error("format version {0} is newer than this build understands ({INDEX_FORMAT_VERSION})")]
    Version(u32),
    #[error("length {len} does not match {count} entries")]
    Entries { len: usize, count: usize },
}

/// Reads and checks an index file. `Ok(None)`: missing; an inner `Err`: unusable.
pub fn read_index(
    fs: &dyn Fs,
    path: &Path,
) -> Result<Option<std::result::Result<SegmentIndex, BadIndex>>> {
    if !fs.exists(path) {
        return Ok(None);
    }
    let f = fs
        .open(path, false)
        .map_err(|e| LogError::io("open", path, e))?;
    let len = f.size().map_err(|e| LogError::io("stat", path, e))?;
    if len > (256 << 20) {
        return Ok(Some(Err(BadIndex::Length(len.sat_usize()))));
    }
    let mut buf = vec![0u8; len.sat_usize()];
    f.read_exact_at(&mut buf, 0)
        .map_err(|e| LogError::io("read", path, e))?;
    Ok(Some(SegmentIndex::decode(&buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trip_and_damage() {
        let idx = SegmentIndex {
            base_offset: 100,
            next_offset: 250,
            log_len: 9999,
            max_timestamp: 5,
            max_append_time: 6,
            entries: vec![
                IndexEntry {
                    relative_offset: 0,
                    position: 24,
                    max_timestamp_before: i64::MIN,
                },
                IndexEntry {
                    relative_offset: 50,
                    position: 4200,
                    max_timestamp_before: 3,
                },
            ],
        };
        let mut bytes = idx.encode();
        assert_eq!(SegmentIndex::decode(&bytes), Ok(idx.clone()));
        bytes[30] ^= 1;
        assert!(SegmentIndex::decode(&bytes).is_err());
    }

    #[test]
    fn file_names() {
        assert_eq!(log_file_name(42), "00000000000000000042.log");
        assert_eq!(
            parse_file_name("00000000000000000042.idx"),
            Some((42, "idx"))
        );
        assert_eq!(parse_file_name("42.log"), None);
        assert_eq!(parse_file_name("00000000000000000042.tmp"), None);
    }

    #[test]
    fn index_lookup() {
        let e = |r, p, t| IndexEntry {
            relative_offset: r,
            position: p,
            max_timestamp_before: t,
        };
        let entries = [e(0, 24, i64::MIN), e(10, 500, 7), e(20, 900, 9)];
        assert_eq!(index_position(&entries, 100, 100), 24);
        assert_eq!(index_position(&entries, 100, 115), 500);
        assert_eq!(index_position(&entries, 100, 125), 900);
        assert_eq!(index_position_for_time(&entries, 8), 500);
        assert_eq!(index_position_for_time(&entries, 1), 24);
        assert_eq!(index_position_for_time(&entries, 100), 900);
    }

    const OPTS: ScanOptions = ScanOptions {
        index_interval: 64,
        verify_records: true,
        gaps: false,
    };

    /// A segment of five 10-record batches in memory.
    fn segment() -> (Vec<u8>, Vec<u64>) {
        use super::super::record::{BatchBuilder, BatchHeader, encode_frame};
        let mut file = encode_segment_header(100).to_vec();
        let mut starts = Vec::new();
        for b in 0..5u64 {
            let mut batch = BatchBuilder::new();
            for r in 0..10 {
                batch.push(1_000, None, Some(format!("v{b}-{r}").as_bytes()), &[]);
            }
            let h = BatchHeader {
                base_offset: 100 + b * 10,
                record_count: 10,
                first_timestamp: 1_000,
                max_timestamp: 1_000,
                append_time: 1_000,
                attributes: 0,
            };
            starts.push(file.len() as u64);
            encode_frame(&mut file, &h, batch.layout(), batch.records_bytes());
        }
        (file, starts)
    }

    struct Mem(Vec<u8>);
    impl File for Mem {
        fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
            let start = (pos.sat_usize()).min(self.0.len());
            let n = buf.len().min(self.0.len() - start);
            buf[..n].copy_from_slice(&self.0[start..start + n]);
            Ok(n)
        }
        fn write_all_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
            unreachable!()
        }
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn size(&self) -> std::io::Result<u64> {
            Ok(self.0.len() as u64)
        }
        fn set_len(&self, _: u64) -> std::io::Result<()> {
            unreachable!()
        }
    }

    #[test]
    fn any_flipped_byte_of_a_middle_frame_loses_that_frame_only() {
        let (clean, starts) = segment();
        let len = clean.len() as u64;
        let path = Path::new("mem.log");
        for pos in starts[2]..starts[3] {
            let mut bytes = clean.clone();
            bytes[pos.sat_usize()] ^= 0x10;
            let scan = scan_resync(&Mem(bytes), path, len, 100, OPTS).expect("scan");
            assert_eq!(
                scan.stop, None,
                "byte {pos}: the intact tail was taken as torn"
            );
            assert_eq!(scan.next_offset, 150, "byte {pos}");
            assert_eq!(scan.records, 40, "byte {pos}: every intact record is kept");
            assert_eq!(scan.damage.len(), 1, "byte {pos}");
            let d = &scan.damage[0];
            assert_eq!((d.first_offset, d.next_offset), (120, 130), "byte {pos}");
            assert_eq!((d.start, d.end), (starts[2], starts[3]), "byte {pos}");
        }
    }

    #[test]
    fn a_flipped_byte_of_the_last_frame_is_a_torn_tail() {
        let (clean, starts) = segment();
        let len = clean.len() as u64;
        for pos in starts[4]..len {
            let mut bytes = clean.clone();
            bytes[pos.sat_usize()] ^= 0x10;
            let scan =
                scan_resync(&Mem(bytes), Path::new("mem.log"), len, 100, OPTS).expect("scan");
            assert!(scan.damage.is_empty(), "byte {pos}: {:?}", scan.damage);
            assert_eq!(scan.stop.map(|(p, _)| p), Some(starts[4]), "byte {pos}");
            assert_eq!(scan.next_offset, 140);
        }
    }
}
