//! The storage engine: topics, partitions and segments on flash. It knows nothing of networks.
//!
//! | module | job |
//! |---|---|
//! | [`record`] | records, batches, the batch frame and its CRC |
//! | [`segment`] | one `.log` file and its `.idx`: layouts, scan, reads |
//! | [`partition`] | ordered segments, roll, group commit, recovery, retention by size |
//! | [`store`] | topics, global budget, free-space floor, time retention, open everything |
//! | [`topic_file`] | the topic descriptor: each topic's existence and settings beside its data |
//! | [`clock`] | the retention timeline that clock steps cannot jump |
//! | [`fs`] | the filesystem seam (real, fault-injecting, slow-fsync) |
//! | [`lock`] | the exclusive lock on a data directory |
//! | [`partitioner`] | Kafka's murmur2 key partitioner |
//!
//! # Files
//!
//! ```text
//! <data_dir>/topics/<topic>/<partition>/<base offset, 20 digits>.log
//! <data_dir>/topics/<topic>/<partition>/<base offset, 20 digits>.idx   (sealed segments only)
//! <data_dir>/topics/<topic>/<partition>/start   (u64 LE: records before it were deleted on
//!                                                request, Kafka's DeleteRecords; optional)
//! <data_dir>/topics/<topic>/@topic                                    (topic descriptor, see topic_file)
//! <data_dir>/topics/@clock                                            (retention timeline)
//! ```
//!
//! ## Segment file (`.log`)
//!
//! | bytes | field | notes |
//! |---|---|---|
//! | 0..8 | magic | `BROOKSEG` |
//! | 8..12 | format version | u32 LE: 1 as appended (offsets dense), 2 as compaction rewrote it (a batch may start after the previous one's end); a larger one is refused |
//! | 12..16 | reserved | zero |
//! | 16..24 | base offset | u64 LE, also in the file name |
//! | 24.. | batch frames | back to back, no padding |
//!
//! ## Batch frame (the same bytes on disk and on the wire)
//!
//! | bytes | field | notes |
//! |---|---|---|
//! | 0..4 | `len` | u32 LE: bytes after this field (CRC + body) |
//! | 4..8 | `crc` | u32 LE: CRC-32C (Castagnoli) of the body |
//! | 8 | body: version | u8: the record layout, 1 plain or 2 nullable (below); a larger one is refused |
//! | 9.. | body: header | postcard [`BatchHeader`]: base offset (varint u64), record count (varint u32), first timestamp, max timestamp, append time (zigzag varint i64, ms), attributes (varint u16; bits 0-2 compression, 0 = none; bit 3 log append time: every record's timestamp is the append time, and so is the max timestamp) |
//! | .. | body: records | `record count` postcard records, back to back |
//!
//! Each record: offset delta (varint u32, = its index in the batch), timestamp delta from the
//! first timestamp (zigzag varint i64), key (`0` = none, or `1` + varint length + bytes), value
//! (varint length + bytes), headers (varint count, then per header: varint length + UTF-8 name,
//! varint length + bytes). A 100-byte value with no key and no headers costs 105 bytes.
//!
//! Version 2, the nullable layout, is the same except that the value and every header value are
//! options like the key (`0` = null, or `1` + varint length + bytes): a Kafka tombstone or null
//! header. A batch is written in it only when one of its records has such a null, so a log
//! without nulls stays readable by Brook versions that know only version 1.
//!
//! ## Index file (`.idx`), written once when the segment is sealed
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `BROOKIDX` |
//! | 8..12 | format version (u32 LE) |
//! | 12..16 | entry count `n` (u32 LE) |
//! | 16..24 | base offset (u64 LE) |
//! | 24..32 | next offset: one past the segment's last record (u64 LE) |
//! | 32..40 | length of the `.log` file (u64 LE); a mismatch means the index is rebuilt |
//! | 40..48 | largest record timestamp (i64 LE) |
//! | 48..56 | largest append time (i64 LE, retention timeline) |
//! | 56..56+16n | entries: relative offset (u32 LE), file position (u32 LE), largest record timestamp of all earlier batches (i64 LE) |
//! | last 4 | CRC-32C of everything before it |
//!
//! An entry is added for the first batch and then for the first batch after every
//! `index_interval` bytes (default 4 KiB), so a lookup reads at most about that much extra.
//!
//! # Guarantees
//!
//! - **Durability** is chosen per append ([`Durability`]). `Durable` returns after `fdatasync`;
//!   concurrent appenders share one write and one fsync (group commit, see [`partition`]).
//! - **Recovery**: sealed segments are trusted through their index (rebuilt if missing or not
//!   matching); the active segment is scanned. Only a damaged *last* frame of the active
//!   segment is a torn write: it is cut, and the cut logged with its bytes and offsets.
//! - **Damage is not a torn tail**: a damaged frame with intact frames after it (found by a
//!   scan at open, or by a read whose CRC check fails) is corruption. The bytes stay; the
//!   intact frames on both sides are kept and served; a read from inside the range fails with
//!   [`LogError::DataLost`] naming the offsets lost (the Kafka API skips them, as compaction
//!   gaps); the range is logged once (WARN), counted and listed by `/healthz` (see
//!   [`partition::Usage::damage`]). A segment with damage keeps no index, so every start scans
//!   it and reports it again. Nothing acknowledged is deleted because of it.
//! - **Limits**: `retention` (time) and `retention_size` (bytes per partition) per topic,
//!   `max_size` and `min_free` for the store. Space is reclaimed by deleting whole sealed
//!   segments, oldest first. At a limit, `on_full = drop_oldest` deletes and `reject` refuses the
//!   append with [`LogError::LogFull`]. At the store's limits, space comes from the oldest sealed
//!   segments of `drop_oldest` topics. Budgets below two segments per partition are refused.
//! - **Compaction** (`cleanup = compact`): sealed segments keep the newest record of each key,
//!   at its offset; a segment is rewritten beside itself and renamed into place, so a cut leaves
//!   the old or the new one (see `partition/compact.rs`, [`Partition::compact`]).
//! - **Time**: retention is measured on a timeline that wall-clock steps cannot move (see
//!   [`clock`]).
//! - **Errors**: a failed write cuts the file back and fails the affected appends; a failed fsync
//!   (or a write that cannot be cut back) poisons the partition until the store is reopened.
//!   Every failed append is counted by [`AppendFailure`] ([`partition::Usage::append_failed`]),
//!   and while the storage fails them (ENOSPC, EROFS, I/O errors) [`partition::Usage::failing`]
//!   names the cause until a write succeeds again (`/healthz`).

pub mod clock;
pub mod error;
pub mod fs;
pub mod lock;
pub mod partition;
pub mod partitioner;
pub mod record;
pub mod segment;
pub mod store;
pub mod topic_file;

use serde::{Deserialize, Serialize};

pub use error::{AppendFailure, FrameError, FullReason, LogError, Result};
pub use partition::{
    AppendTicket, Appended, Partition, PartitionStatus, ReadResult, Usage, Visibility,
    WrittenFrames, batches_in,
};
pub use record::{
    Batch, BatchBuilder, BatchHeader, BatchView, EncodedBatch, Header, HeaderRef, HeaderView,
    Record, RecordView,
};
pub use store::{PartitionChoice, Store, StoreRecovery, Topic};

use crate::units::{ByteSize, HumanDuration};

/// What an append waits for before it returns; ordered from the weakest to the strongest.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Buffered in Brook's memory: lost if the process dies before the next write.
    None,
    /// Written to the operating system: survives a crash of Brook, not a power cut.
    #[default]
    Written,
    /// Written and fsynced: survives a power cut.
    Durable,
}

/// A word that names no [`Durability`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a durability (none, written, durable)")]
pub struct NotADurability(pub String);

impl std::str::FromStr for Durability {
    type Err = NotADurability;
    fn from_str(s: &str) -> std::result::Result<Self, NotADurability> {
        match s {
            "none" => Ok(Durability::None),
            "written" => Ok(Durability::Written),
            "durable" => Ok(Durability::Durable),
            _ => Err(NotADurability(s.into())),
        }
    }
}

/// What a topic does when one of its limits is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Delete the oldest sealed segments (a ring buffer: telemetry).
    #[default]
    DropOldest,
    /// Refuse the append with "log full" (back-pressure); nothing stored is touched.
    Reject,
}

/// Which time a topic's records carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimestampType {
    /// The producer's (Kafka's CreateTime).
    #[default]
    Create,
    /// When the broker stored the batch (Kafka's LogAppendTime): every record of a batch
    /// carries its append time; what the producer gave is not shown.
    LogAppend,
}

impl TimestampType {
    fn is_create(&self) -> bool {
        *self == TimestampType::Create
    }
}

/// What happens to a topic's old records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Cleanup {
    /// Sealed segments older than `retention` are deleted whole (Kafka's `delete`).
    #[default]
    Delete,
    /// Sealed segments keep only the newest record of each key; tombstones (null values) go
    /// after `delete_retention`. No time retention (Kafka's `compact`).
    Compact,
    /// Both: compacted, and deleted when older than `retention` (`compact,delete`).
    CompactDelete,
}

impl Cleanup {
    fn is_delete(&self) -> bool {
        *self == Cleanup::Delete
    }

    /// Whether sealed segments are compacted.
    pub fn compacts(&self) -> bool {
        matches!(self, Cleanup::Compact | Cleanup::CompactDelete)
    }

    /// Whether time retention deletes old segments.
    pub fn deletes(&self) -> bool {
        matches!(self, Cleanup::Delete | Cleanup::CompactDelete)
    }

    /// Kafka's name (`cleanup.policy`).
    pub fn kafka_name(&self) -> &'static str {
        match self {
            Cleanup::Delete => "delete",
            Cleanup::Compact => "compact",
            Cleanup::CompactDelete => "compact,delete",
        }
    }
}

fn is_default_delete_retention(d: &HumanDuration) -> bool {
    *d == TopicConfig::default().delete_retention
}

/// Per-topic storage settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicConfig {
    /// Number of partitions. Default 1; 1 to 4096.
    pub partitions: u32,
    /// A segment is sealed when the next batch would take it past this size. Default 8MiB;
    /// 64KiB to 1GiB.
    pub segment_size: ByteSize,
    /// Sealed segments whose newest batch is older than this are deleted. Default 7d; "none"
    /// keeps data until a size limit needs the room.
    pub retention: HumanDuration,
    /// Bound on each partition's bytes on disk (as Kafka's `retention.bytes`). Default "none";
    /// otherwise at least two segments.
    pub retention_size: ByteSize,
    /// What happens at a limit: "drop_oldest" (default) or "reject".
    pub on_full: OnFull,
    /// Largest batch accepted, frame included. Default 1MiB; at most the segment size.
    pub max_batch_size: ByteSize,
    /// Bytes of log between sparse index entries. Default 4KiB; 64B to 1MiB.
    pub index_interval: ByteSize,
    /// "create" (default: the producer's time) or "log_append" (the broker's, at append).
    /// Left out of descriptors when "create", so they stay readable by earlier versions.
    #[serde(skip_serializing_if = "TimestampType::is_create")]
    pub timestamp_type: TimestampType,
    /// "delete" (default), "compact" or "compact_delete" (see [`Cleanup`]). Left out of
    /// descriptors when "delete".
    #[serde(skip_serializing_if = "Cleanup::is_delete")]
    pub cleanup: Cleanup,
    /// On a compacted topic, how long a tombstone stays readable after it was appended, so a
    /// consumer that is behind still sees the delete (Kafka's `delete.retention.ms`). Default 1d.
    #[serde(skip_serializing_if = "is_default_delete_retention")]
    pub delete_retention: HumanDuration,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            segment_size: ByteSize::mib(8),
            retention: HumanDuration::secs(7 * 86_400),
            retention_size: ByteSize(0),
            on_full: OnFull::DropOldest,
            max_batch_size: ByteSize::mib(1),
            index_interval: ByteSize::kib(4),
            timestamp_type: TimestampType::Create,
            cleanup: Cleanup::Delete,
            delete_retention: HumanDuration::secs(86_400),
        }
    }
}

impl TopicConfig {
    /// `index_interval` in bytes, as the index builder takes it (validated to at most 1 MiB).
    pub fn index_interval_bytes(&self) -> u32 {
        crate::units::Narrow::sat_u32(self.index_interval.bytes())
    }

    /// Checks the rules that involve more than one field; errors name the topic and the key.
    pub fn validate(&self, topic: &str) -> Result<()> {
        let bad = |reason: String| {
            Err(LogError::InvalidTopicConfig {
                topic: topic.to_string(),
                reason,
            })
        };
        if !(1..=4096).contains(&self.partitions) {
            return bad(format!(
                "partitions = {} is outside 1..=4096",
                self.partitions
            ));
        }
        let seg = self.segment_size.bytes();
        if !(64 * 1024..=1 << 30).contains(&seg) {
            return bad(format!(
                "segment_size = {} is outside 64KiB..=1GiB",
                self.segment_size
            ));
        }
        if self.max_batch_size.bytes() < 1024 || self.max_batch_size.bytes() > seg {
            return bad(format!(
                "max_batch_size = {} must be between 1KiB and segment_size ({})",
                self.max_batch_size, self.segment_size
            ));
        }
        // A batch the reader would refuse must never be accepted: it would be acknowledged,
        // never delivered, and cut at the next start with everything after it.
        if self.max_batch_size.bytes() > record::MAX_FRAME_LEN as u64 {
            return bad(format!(
                "max_batch_size = {} is above 64MiB, the largest frame a reader takes",
                self.max_batch_size
            ));
        }
        if !(64..=1 << 20).contains(&self.index_interval.bytes()) {
            return bad(format!(
                "index_interval = {} is outside 64B..=1MiB",
                self.index_interval
            ));
        }
        if let Some(limit) = self.retention_size.limit() {
            let needed = 2 * (seg + segment::SEGMENT_HEADER_LEN);
            if limit < needed {
                return Err(LogError::BudgetTooSmall {
                    what: format!("retention_size of topic {topic:?}"),
                    budget: limit,
                    needed,
                });
            }
        }
        Ok(())
    }
}

/// Store-wide storage settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// Bound on all topics' bytes together. Default "none"; otherwise at least two segments per
    /// partition of every topic.
    pub max_size: ByteSize,
    /// Treat the log as full when the filesystem has less than this available. Default 256MiB;
    /// "none" turns it off.
    pub min_free: ByteSize,
    /// Batches appended with durability `none` are written once this much is buffered per
    /// partition (or at the next `flush_interval`). Default 256KiB.
    pub write_buffer: ByteSize,
    /// How often buffered data is written and fsynced, and time retention runs. Default 1s.
    pub flush_interval: HumanDuration,
    /// Topics the broker holds at most; creating one more (by any protocol, auto-creation
    /// included) is refused. Default 256; 0: no limit.
    pub max_topics: usize,
    /// Partitions of all topics together, likewise (each holds open files and, today, a
    /// thread). Default 1024; 0: no limit.
    pub max_partitions: usize,
    /// How often compacted topics' sealed segments are looked at (and rewritten where at
    /// least half of a segment's records are superseded). Default 30s.
    pub compaction_interval: HumanDuration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_size: ByteSize(0),
            min_free: ByteSize::mib(256),
            write_buffer: ByteSize::kib(256),
            flush_interval: HumanDuration::secs(1),
            max_topics: 256,
            max_partitions: 1024,
            compaction_interval: HumanDuration::secs(30),
        }
    }
}
