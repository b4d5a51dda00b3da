//! One partition: an ordered run of sealed segments plus one active segment, with dense offsets.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the partition's state, appends (encode + buffer), reads, retention |
//! | `open.rs` | recovery when the partition is opened |
//! | `flush.rs` | the flusher threads (a pool per store): group commit, write errors, fsync errors, segment roll, removal of deleted segments |
//!
//! **Write path.** An appender encodes its batch into the partition's in-memory buffer under a
//! short lock (the offsets are assigned there) and, depending on the [`Durability`] it asked for,
//! returns at once (`None`) or registers a one-shot completion and waits for it (`Written`,
//! `Durable`). A flusher thread takes everything buffered at once, writes it with
//! one positional `write`, completes the `Written` waiters, fsyncs once if any waiter wants
//! `Durable`, and completes those. While it writes and fsyncs, the next group collects in the
//! buffer: concurrent producers share one write and one `fdatasync` (group commit), each waiter
//! is woken exactly once, and the file sees few, large, sequential writes. While producers keep
//! arriving during each fsync, a round writes them in further passes and fsyncs once when they
//! pause (a linger of at most four fsyncs, see `flush.rs`). A durable append may also allow
//! its fsync to wait (`append_start_within`: a producer not waiting for the acknowledgement,
//! such as an MQTT device on its own clock): while every append of a round allows it, the
//! round is held unwritten, gathering what arrives, until the earliest allowance is up or an
//! append that allows no wait (a flush among them) comes; then one write and one fsync. Readers
//! see batches once they are written; a held round's, once they are also fsynced.
//!
//! **Threads.** All of a partition's write-side file I/O runs on the store's flusher threads
//! ([`Flushers`]: a pool shared by every partition, started with the first work: one thread
//! per core (2-4) when none is free, up to 16 while many partitions sync at once, each leaving
//! after 10 s without work; a partition with work is queued once and worked on by one thread
//! at a time; under `SCHED_BATCH`, so a woken flusher never preempts the worker that woke
//! it): the writes and
//! fsyncs, the segment roll (an appender whose batch does not fit only opens the next segment
//! in memory; the flusher seals the full one and creates the file) and the removal of deleted
//! segments' files (retention and budgets take a segment out of the log at once and leave its
//! files to the flusher). An appender never waits for the disk, so appending from an async task
//! blocks no worker; only the blocking `append` and `flush` wait, for the flusher.
//!
//! **Errors.** A write error cuts the file back to what was written before and fails every
//! batch that was buffered; an fsync error poisons the partition: fsync errors are not retryable
//! on Linux, so it refuses writes until the store is reopened.

mod compact;
mod flush;
mod open;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::error::{AppendFailure, FullReason, LogError, Result};
use super::fs::{File, Fs};
use super::record::{Batch, BatchHeader, BatchView, encode_frame};
use super::segment::{self, IndexBuilder, SEGMENT_HEADER_LEN, index_file_name, log_file_name};
use super::{Durability, OnFull, TopicConfig};
use crate::units::Narrow;

pub use compact::{Compacted, MIN_CLEANABLE_RATIO};
pub use flush::{Flushers, WriteFailure};
pub use segment::Damage;

/// Store-wide counters shared by every partition.
#[derive(Debug, Default)]
pub struct Usage {
    /// Bytes of all segment and index files (buffered appends included), not counting deleted
    /// segments whose files the flushers have yet to remove.
    pub bytes: AtomicU64,
    /// Bytes of deleted segments still on disk: their flusher removes the files soon.
    pub unlinking: AtomicU64,
    /// Records deleted by retention or to make room.
    pub records_dropped: AtomicU64,
    pub segments_deleted: AtomicU64,
    /// Records removed by compaction (superseded, or tombstones past `delete_retention`).
    pub records_compacted: AtomicU64,
    /// fsyncs of segment data (group commits and seals).
    pub fsyncs: AtomicU64,
    /// Write calls of segment data.
    pub writes: AtomicU64,
    /// fsync latency histogram (see [`FSYNC_BUCKETS_US`]); the last bucket is +Inf.
    pub fsync_buckets: [AtomicU64; FSYNC_BUCKETS_US.len() + 1],
    pub fsync_micros_total: AtomicU64,
    /// Damaged ranges found since open (at open and by reads), each counted once.
    pub damage: Mutex<Vec<DamageReport>>,
    /// Appends that failed, by [`AppendFailure`] (in the order of [`AppendFailure::ALL`]).
    pub append_failures: [AtomicU64; AppendFailure::ALL.len()],
    /// Set while the storage fails appends (the cause of the last failure); cleared by the
    /// next write that succeeds. `failing` spares the lock on every write.
    failing: AtomicBool,
    failing_cause: Mutex<Option<String>>,
}

/// A damaged range of a partition's log, for `/healthz`, metrics and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamageReport {
    pub topic: String,
    pub partition: u32,
    pub path: PathBuf,
    pub damage: segment::Damage,
}

impl std::fmt::Display for DamageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}: offsets {}..{} lost to corruption ({} bytes {}..{}: {})",
            self.topic,
            self.partition,
            self.damage.first_offset,
            self.damage.next_offset,
            self.path.display(),
            self.damage.start,
            self.damage.end,
            self.damage.why
        )
    }
}

impl Usage {
    /// Records damage found (once per range) and logs it.
    pub fn report_damage(&self, report: DamageReport) {
        let mut all = self.damage.lock().unwrap_or_else(|e| e.into_inner());
        if !all.contains(&report) {
            tracing::warn!("{report}; the intact records on both sides are kept and served");
            all.push(report);
        }
    }

    /// Damaged ranges found so far.
    pub fn damage(&self) -> Vec<DamageReport> {
        self.damage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts a failed append (when the storage or a limit made it fail) and, for a storage
    /// fault, remembers its cause until a write succeeds. Returns the error.
    pub fn append_failed(&self, e: LogError) -> LogError {
        if let Some(why) = AppendFailure::of(&e) {
            let i = AppendFailure::ALL
                .iter()
                .position(|f| *f == why)
                .unwrap_or(0);
            self.append_failures[i].fetch_add(1, Ordering::Relaxed);
            if why.is_storage_fault() {
                *self.failing_cause.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                self.failing.store(true, Ordering::Release);
            }
        }
        e
    }

    /// A write of segment data succeeded: the storage is not failing (any more).
    pub(crate) fn write_succeeded(&self) {
        if self.failing.load(Ordering::Acquire) {
            self.failing.store(false, Ordering::Release);
            *self.failing_cause.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Why appends are failing, when the last one the storage failed came after the last
    /// successful write.
    pub fn failing(&self) -> Option<String> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        self.failing_cause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Upper bounds (microseconds) of the fsync latency histogram's buckets.
pub const FSYNC_BUCKETS_US: [u64; 9] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000];

impl Usage {
    /// Records one fsync's duration.
    pub fn observe_fsync(&self, took: std::time::Duration) {
        let us = took.as_micros().min(u128::from(u64::MAX)).sat_u64();
        let i = FSYNC_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(FSYNC_BUCKETS_US.len());
        self.fsync_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.fsync_micros_total.fetch_add(us, Ordering::Relaxed);
    }
}

/// A sealed, immutable segment.
pub(crate) struct Sealed {
    pub base: u64,
    pub next_offset: u64,
    pub log_len: u64,
    pub idx_len: u64,
    pub max_timestamp: i64,
    pub max_append_time: i64,
    pub path: PathBuf,
    pub file: Arc<dyn File>,
    pub index: Arc<[segment::IndexEntry]>,
    /// Damaged ranges a scan found in this segment: readers skip them and are told the
    /// offsets they held. A segment with damage has no index file (it is scanned at each open).
    pub damage: Vec<segment::Damage>,
    /// Rewritten by a compaction: offsets inside it may skip.
    pub compacted: bool,
}

/// The segment being appended to.
struct Active {
    base: u64,
    path: PathBuf,
    file: Arc<dyn File>,
    /// Bytes assigned, buffered ones included.
    size: u64,
    /// Bytes in the file.
    written: u64,
    /// Bytes in the file known to be synced.
    durable: u64,
    index: IndexBuilder,
    max_append_time: i64,
    /// A compacted segment found last at open (offsets inside may skip).
    compacted: bool,
}

impl Active {
    /// A segment holding only its header.
    fn empty(base: u64, path: PathBuf, file: Arc<dyn File>, index_interval: u32) -> Active {
        Active {
            base,
            path,
            file,
            size: SEGMENT_HEADER_LEN,
            written: SEGMENT_HEADER_LEN,
            durable: SEGMENT_HEADER_LEN,
            index: IndexBuilder::new(index_interval),
            max_append_time: i64::MIN,
            compacted: false,
        }
    }
}

impl Sealed {
    fn new(
        idx: segment::SegmentIndex,
        idx_len: u64,
        path: PathBuf,
        file: Arc<dyn File>,
        damage: Vec<segment::Damage>,
        compacted: bool,
    ) -> Sealed {
        Sealed {
            base: idx.base_offset,
            next_offset: idx.next_offset,
            log_len: idx.log_len,
            idx_len,
            max_timestamp: idx.max_timestamp,
            max_append_time: idx.max_append_time,
            path,
            file,
            index: idx.entries.into(),
            damage,
            compacted,
        }
    }
}

/// A segment the appenders have moved on to while the active one is still to be sealed: its
/// frames and their waiters wait here until the flusher has sealed the active segment (its
/// last write, fsync and index) and created this one's file (see `flush.rs`).
struct Next {
    base: u64,
    /// Frames for this segment, in order, from its first byte after the header.
    buf: Vec<u8>,
    waiters: Vec<Waiter>,
    /// Bytes assigned, header included.
    size: u64,
    index: IndexBuilder,
    max_append_time: i64,
}

/// The files of a deleted segment, for its flusher to remove (`bytes` of them).
struct Doomed {
    paths: Vec<PathBuf>,
    bytes: u64,
}

/// Where an append goes: the active segment, or the newest segment waiting for its file.
struct Tail<'a> {
    base: u64,
    buf: &'a mut Vec<u8>,
    waiters: &'a mut Vec<Waiter>,
    size: &'a mut u64,
    index: &'a mut IndexBuilder,
    max_append_time: &'a mut i64,
}

/// An appender waiting for its batch to be written (and synced, if `durable`).
struct Waiter {
    durable: bool,
    /// A durable appender whose fsync may wait until then to be shared with the appends that
    /// come meanwhile (`None`: it may not wait; see [`Partition::append_start_within`]).
    sync_by: Option<Instant>,
    done: oneshot::Sender<Completion>,
}

impl Waiter {
    /// An appender waiting for its write alone, or for an fsync that may not wait.
    fn no_wait(&self) -> bool {
        !self.durable || self.sync_by.is_none()
    }
}

/// What a waiter is told when its round is over.
type Completion = std::result::Result<(), WriteFailure>;

struct State {
    sealed: VecDeque<Arc<Sealed>>,
    active: Active,
    /// Frames encoded but not yet written; they belong at `active.written` in the active file.
    buf: Vec<u8>,
    /// Appenders whose batches are in `buf`, or who asked for a flush, in order.
    waiters: Vec<Waiter>,
    /// Segments appended to after the active one filled up, oldest first; the flusher seals
    /// the active segment and makes the first of these active. Appends go to the last.
    next: VecDeque<Next>,
    /// Deleted segments whose files the flusher is to remove.
    doomed: Vec<Doomed>,
    next_offset: u64,
    written_offset: u64,
    durable_offset: u64,
    /// Byte positions in the partition's append stream (monotonic for the life of the process).
    assigned_end: u64,
    written_end: u64,
    durable_end: u64,
    /// The flusher wants to be woken once this many waiters are registered (1 when idle, the
    /// expected group size while gathering, `usize::MAX` during a round: it looks again after).
    wake_at: usize,
    /// A round holds its appends unwritten (`flush::Inner::hold`): only an append that allows
    /// no wait, or a full write buffer, wakes it.
    held: bool,
    /// Where the partition stands with the flusher threads.
    sched: flush::Sched,
    /// Group-commit bookkeeping of this partition's rounds.
    gather: flush::Gather,
    /// The partition is being dropped: what is left is written on the dropping thread.
    stop: bool,
    poisoned: Option<String>,
    /// Bytes of this partition's files, buffered appends included.
    size: u64,
    /// Records below this offset were deleted on request (Kafka's DeleteRecords) though
    /// their segment remains: the log starts here. Kept in [`START_FILE`].
    start_floor: u64,
    /// The topic's limits in force (they can change while the partition is open:
    /// [`Partition::set_limits`]).
    limits: Limits,
}

/// What of a topic's config a partition applies on every append, changeable at run time.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    segment_size: u64,
    max_batch_size: u64,
    retention_size: Option<u64>,
    on_full: OnFull,
    log_append_time: bool,
}

impl Limits {
    pub(super) fn of(cfg: &TopicConfig) -> Limits {
        Limits {
            segment_size: cfg.segment_size.bytes(),
            max_batch_size: cfg.max_batch_size.bytes(),
            retention_size: cfg.retention_size.limit(),
            on_full: cfg.on_full,
            log_append_time: cfg.timestamp_type == crate::log::TimestampType::LogAppend,
        }
    }

    /// The largest frame an append may bring: the batch limit, within a segment.
    fn max_frame_len(&self) -> usize {
        let seg_room = self.segment_size.saturating_sub(SEGMENT_HEADER_LEN);
        self.max_batch_size.min(seg_room).sat_usize()
    }
}

/// The file, in a partition's directory, holding the offset records were deleted up to.
pub(super) const START_FILE: &str = "start";

impl State {
    /// The first offset served: the oldest segment's base, or the deleted-records floor.
    fn log_start(&self) -> u64 {
        self.sealed
            .front()
            .map_or(self.active.base, |s| s.base)
            .max(self.start_floor)
    }

    /// The segment appends go to now.
    fn tail(&mut self) -> Tail<'_> {
        match self.next.back_mut() {
            Some(n) => Tail {
                base: n.base,
                buf: &mut n.buf,
                waiters: &mut n.waiters,
                size: &mut n.size,
                index: &mut n.index,
                max_append_time: &mut n.max_append_time,
            },
            None => Tail {
                base: self.active.base,
                buf: &mut self.buf,
                waiters: &mut self.waiters,
                size: &mut self.active.size,
                index: &mut self.active.index,
                max_append_time: &mut self.active.max_append_time,
            },
        }
    }

    /// Frame bytes of the segments to come (`next`), headers not included.
    fn next_bytes(&self) -> u64 {
        self.next.iter().map(|n| n.size - SEGMENT_HEADER_LEN).sum()
    }

    /// Bytes assigned to the segment appends go to (header included).
    fn tail_size(&self) -> u64 {
        self.next.back().map_or(self.active.size, |n| n.size)
    }
}

/// An append whose batch is in the log's buffer, with its offsets assigned; [`finish`] waits
/// for the durability it asked for.
///
/// [`finish`]: AppendTicket::finish
pub struct AppendTicket {
    appended: Appended,
    done: Option<oneshot::Receiver<Completion>>,
    inner: Arc<Inner>,
}

impl AppendTicket {
    /// The offsets assigned.
    pub fn appended(&self) -> Appended {
        self.appended
    }

    /// Waits until the batch has the requested durability.
    pub async fn finish(self) -> Result<Appended> {
        if let Some(rx) = self.done {
            let usage = &self.inner.usage;
            self.inner
                .completed(rx.await)
                .map_err(|e| usage.append_failed(e))?;
        }
        Ok(self.appended)
    }
}

/// Where a successful append put its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub next_offset: u64,
    /// The append time the records carry, on a log-append-time topic (Kafka's
    /// `log_append_time_ms` in a produce answer); `None` where they keep the producer's.
    pub log_append_time: Option<i64>,
}

/// How far a reader may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Visibility {
    /// Everything written to the file (the default for consumers).
    #[default]
    Written,
    /// Only what is fsynced: what survives a power cut (the mirror reads this).
    Durable,
}

/// What a read returns: whole batch frames as stored.
#[derive(Clone, Debug, Default)]
pub struct ReadResult {
    pub frames: Vec<u8>,
    /// Offset after the last record returned, or the requested offset if none was.
    pub next_offset: u64,
    /// First offset still stored.
    pub log_start: u64,
    /// Offset after the last visible record.
    pub high_watermark: u64,
}

impl ReadResult {
    /// Iterates the batches of `frames` (already verified when they were read).
    pub fn batches(&self) -> impl Iterator<Item = BatchView<'_>> {
        batches_in(&self.frames)
    }
}

/// The batches of whole stored frames, in order (up to the first that does not parse).
pub fn batches_in(frames: &[u8]) -> impl Iterator<Item = BatchView<'_>> {
    parsed_with(frames, BatchView::parse)
}

/// The batches of `frames`, each cut by `parse`, up to the first that does not parse.
fn parsed_with<'a>(
    frames: &'a [u8],
    parse: fn(&'a [u8]) -> std::result::Result<BatchView<'a>, super::FrameError>,
) -> impl Iterator<Item = BatchView<'a>> {
    let mut rest = frames;
    std::iter::from_fn(move || {
        let view = parse(rest).ok()?;
        rest = &rest[view.frame().len()..];
        Some(view)
    })
}

/// Frames the last flusher rounds wrote, shared from memory with the readers that follow the
/// end of the partition ([`Partition::tail`]): the newest round, and before it the few rounds
/// just before (see `flush.rs`'s `TAIL_ROUNDS`), so a follower that was busy while some rounds
/// were written still takes them from memory.
#[derive(Clone, Debug)]
pub struct WrittenFrames {
    /// Offset of the first record held.
    pub first_offset: u64,
    /// Offset after the last.
    pub next_offset: u64,
    /// Each round's first offset and whole batch frames as stored, oldest first, contiguous.
    rounds: Vec<(u64, bytes::Bytes)>,
}

impl WrittenFrames {
    /// The batches, in order. They were encoded by this process and never left its memory,
    /// so their CRCs are not computed a second time ([`BatchView::parse_own`]).
    pub fn batches(&self) -> impl Iterator<Item = BatchView<'_>> {
        self.batches_from(self.first_offset)
    }

    /// The batches of the rounds that hold offsets from `from` on (the first may start
    /// before it).
    pub fn batches_from(&self, from: u64) -> impl Iterator<Item = BatchView<'_>> {
        // A round ends where the next begins.
        let before = self
            .rounds
            .windows(2)
            .take_while(|w| w[1].0 <= from)
            .count();
        self.rounds[before..]
            .iter()
            .flat_map(|(_, frames)| parsed_with(frames, BatchView::parse_own))
    }
}

/// A snapshot of a partition's shape, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    pub log_start: u64,
    pub next_offset: u64,
    pub durable_offset: u64,
    pub segments: usize,
    pub bytes: u64,
    pub poisoned: Option<String>,
}

/// What opening a partition found, for the caller to report.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// Bytes cut from the end of the active segment (a torn write).
    pub truncated_bytes: u64,
    /// Indexes rebuilt because they were missing or unusable.
    pub indexes_rebuilt: u32,
    /// Damaged ranges with intact frames after them (kept, skipped by readers).
    pub damage: Vec<DamageReport>,
}

/// What every partition of a store shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub fs: Arc<dyn Fs>,
    /// Buffered bytes that wake a flusher though no appender waits.
    pub write_buffer: usize,
    pub usage: Arc<Usage>,
    pub flushers: Arc<Flushers>,
}

/// What the partition and the flusher threads share.
struct Inner {
    topic: String,
    id: u32,
    dir: PathBuf,
    fs: Arc<dyn Fs>,
    /// The config the partition was opened with: its index interval (the limits that can
    /// change are `State::limits`).
    cfg: TopicConfig,
    write_buffer: usize,
    usage: Arc<Usage>,
    state: Mutex<State>,
    /// Wakes a flusher thread gathering a group commit for this partition.
    flush_cv: Condvar,
    /// Signalled when a flusher thread lets go of the partition.
    idle_cv: Condvar,
    /// The store's flusher threads.
    flushers: Arc<Flushers>,
    /// Itself, to be queued for the flushers.
    me: std::sync::Weak<Inner>,
    /// The written (readable) end offset, for readers waiting on new data.
    end_tx: tokio::sync::watch::Sender<u64>,
    /// The frames of the last write, while someone follows the end ([`Partition::tail`]).
    tail_tx: tokio::sync::watch::Sender<Option<WrittenFrames>>,
    /// Under `on_full = reject`, time retention keeps every segment holding an offset at or
    /// after this (records not yet mirrored upstream); `u64::MAX`: no such floor.
    keep_from: AtomicU64,
}

/// A partition; dropped, it writes out what it holds on the dropping thread.
pub struct Partition {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Partition({}/{})", self.inner.topic, self.inner.id)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.inner.drain();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flushers.closed();
    }
}

impl Inner {
    /// Scans the sealed segment at `path` for damage a read ran into, and serves it from then
    /// on as a damaged segment: its damage reported and skipped, its index file removed (so the
    /// next open scans it again instead of trusting it).
    fn locate_damage(&self, path: &Path) -> Result<()> {
        let seg = {
            let st = self.lock();
            match st.sealed.iter().position(|s| s.path == path) {
                Some(i) if st.sealed[i].damage.is_empty() => Arc::clone(&st.sealed[i]),
                // Not sealed (the active segment is scanned at open), or already located.
                _ => return Ok(()),
            }
        };
        let interval = self.cfg.index_interval_bytes();
        let opts = segment::ScanOptions {
            index_interval: interval,
            verify_records: false,
            gaps: seg.compacted,
        };
        let mut scan =
            segment::scan_resync(seg.file.as_ref(), &seg.path, seg.log_len, seg.base, opts)?;
        if let Some((pos, why)) = scan.stop.take() {
            scan.damage.push(segment::Damage {
                start: pos,
                end: seg.log_len,
                first_offset: scan.next_offset,
                next_offset: seg.next_offset,
                why: why.to_string(),
            });
        }
        if scan.damage.is_empty() {
            return Ok(());
        }
        let idx_path = self.dir.join(index_file_name(seg.base));
        match self.fs.remove_file(&idx_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io("remove", &idx_path, e)),
        }
        for d in &scan.damage {
            self.usage.report_damage(DamageReport {
                topic: self.topic.clone(),
                partition: self.id,
                path: seg.path.clone(),
                damage: d.clone(),
            });
        }
        let damaged = Sealed {
            base: seg.base,
            next_offset: seg.next_offset,
            log_len: seg.log_len,
            idx_len: 0,
            max_timestamp: seg.max_timestamp,
            max_append_time: seg.max_append_time,
            path: seg.path.clone(),
            file: Arc::clone(&seg.file),
            index: scan.index.into(),
            damage: scan.damage,
            compacted: seg.compacted,
        };
        let mut st = self.lock();
        let st = &mut *st;
        if let Some(slot) = st.sealed.iter_mut().find(|s| s.path == path) {
            st.size -= slot.idx_len.min(st.size);
            self.usage.bytes.fetch_sub(slot.idx_len, Ordering::Relaxed);
            *slot = Arc::new(damaged);
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // State is consistent at every unlock; a panic elsewhere does not invalidate it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn poisoned(&self, cause: &str) -> LogError {
        LogError::Poisoned {
            topic: self.topic.clone(),
            partition: self.id,
            cause: cause.to_string(),
        }
    }

    fn full(&self, reason: FullReason) -> LogError {
        LogError::LogFull {
            topic: self.topic.clone(),
            partition: self.id,
            reason,
        }
    }

    fn failure(&self, f: WriteFailure) -> LogError {
        match f {
            WriteFailure::Poisoned(cause) => self.poisoned(&cause),
            WriteFailure::NoSpace(_) => self.full(FullReason::NoSpace),
            WriteFailure::Write(msg, kind) => {
                LogError::io("write", self.dir.clone(), std::io::Error::new(kind, msg))
            }
        }
    }

    /// What a waiter's completion means for its caller.
    fn completed(
        &self,
        r: std::result::Result<Completion, oneshot::error::RecvError>,
    ) -> Result<()> {
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => Err(self.failure(f)),
            Err(_) => Err(self.failure(WriteFailure::Write(
                "the partition's flusher stopped".into(),
                std::io::ErrorKind::Other,
            ))),
        }
    }

    /// Deletes the oldest sealed segment. Returns whether there was one. It leaves the log at
    /// once (readers, sizes, budgets); its flusher removes the files (see `flush.rs`), so no
    /// appender waits for the file system.
    fn delete_oldest_locked(&self, st: &mut State, why: &str) -> bool {
        let Some(seg) = st.sealed.pop_front() else {
            return false;
        };
        let freed = seg.log_len + seg.idx_len;
        st.size -= freed;
        self.usage.bytes.fetch_sub(freed, Ordering::Relaxed);
        self.usage.unlinking.fetch_add(freed, Ordering::Relaxed);
        let records = seg.next_offset - seg.base;
        self.usage
            .records_dropped
            .fetch_add(records, Ordering::Relaxed);
        self.usage.segments_deleted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            topic = %self.topic,
            partition = self.id,
            "deleted segment {} (offsets {}..{}, {} bytes) for {why}",
            seg.path.display(),
            seg.base,
            seg.next_offset,
            freed
        );
        st.doomed.push(Doomed {
            paths: vec![
                seg.path.clone(),
                self.dir.join(index_file_name(seg.base)),
                self.dir.join(segment::dropped_file_name(seg.base)),
            ],
            bytes: freed,
        });
        self.wake(st);
        true
    }
}

impl Partition {
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Follows the readable end offset: changes whenever written data becomes readable.
    pub fn watch_end(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.end_tx.subscribe()
    }

    /// Follows the end of the partition from memory: each write's frames as the flusher wrote
    /// them, with the few writes before (a reader that finds a gap between the last it took
    /// and what is held reads the log for the rest). Nothing is kept while no one follows.
    pub fn tail(&self) -> tokio::sync::watch::Receiver<Option<WrittenFrames>> {
        self.inner.tail_tx.subscribe()
    }

    /// Appends one batch and blocks until it has the requested durability.
    pub fn append(
        &self,
        batch: &dyn Batch,
        durability: Durability,
        append_time: i64,
    ) -> Result<Appended> {
        let (appended, done) = self.submit(batch, durability, None, append_time)?;
        if let Some(rx) = done {
            self.inner.completed(rx.blocking_recv())?;
        }
        Ok(appended)
    }

    /// Appends one batch and waits, without blocking a thread, until it has the requested
    /// durability.
    pub async fn append_async(
        &self,
        batch: &dyn Batch,
        durability: Durability,
        append_time: i64,
    ) -> Result<Appended> {
        self.append_start(batch, durability, append_time)?
            .finish()
            .await
    }

    /// Puts the batch in the log now (its offsets are assigned here, so batches started in a
    /// sequence keep that order) and returns a ticket to wait on for its durability. A connection
    /// that pipelines produces starts each in request order and waits for them concurrently.
    pub fn append_start(
        &self,
        batch: &dyn Batch,
        durability: Durability,
        append_time: i64,
    ) -> Result<AppendTicket> {
        self.append_start_within(batch, durability, Duration::ZERO, append_time)
    }

    /// [`Partition::append_start`] for a `Durable` append whose fsync may wait up to
    /// `sync_within` to be shared with the appends that arrive meanwhile: its producer does
    /// not wait for the acknowledgement to go on (a device publishing on its own clock).
    /// While every append of its round allows a wait, the round is held unwritten, no longer
    /// than the allowance of its earliest append, and its batches become readable after their
    /// fsync; an append that allows no wait ends the hold (the batches are then readable once
    /// written, as without the allowance).
    pub fn append_start_within(
        &self,
        batch: &dyn Batch,
        durability: Durability,
        sync_within: Duration,
        append_time: i64,
    ) -> Result<AppendTicket> {
        let sync_by = (durability == Durability::Durable && !sync_within.is_zero())
            .then(|| Instant::now() + sync_within);
        let (appended, done) = self.submit(batch, durability, sync_by, append_time)?;
        Ok(AppendTicket {
            appended,
            done,
            inner: Arc::clone(&self.inner),
        })
    }

    /// Encodes the batch into the buffer (rolling the segment and applying `retention_size`
    /// first when needed) and, unless `durability` is `None`, registers for its completion.
    fn submit(
        &self,
        batch: &dyn Batch,
        durability: Durability,
        sync_by: Option<Instant>,
        append_time: i64,
    ) -> Result<(Appended, Option<oneshot::Receiver<Completion>>)> {
        let inner = &*self.inner;
        if batch.is_empty() {
            return Err(LogError::InvalidBatch(super::FrameError::BadHeader(
                "batch with no records".into(),
            )));
        }
        let bound = batch.frame_len_bound();
        // Dropped after `st`: the flusher is woken once the lock is let go.
        let mut wakes = flush::Wakes::new(inner);
        let mut st = inner.lock();
        let limit = st.limits.max_frame_len();
        if bound > limit {
            return Err(LogError::BatchTooLarge { size: bound, limit });
        }
        if let Some(cause) = &st.poisoned {
            return Err(inner.poisoned(cause));
        }
        // A full segment: the batch starts the next one, whose file the flusher creates
        // once it has sealed this one (see `flush.rs`).
        let rolls = st.tail_size() > SEGMENT_HEADER_LEN
            && st.tail_size() + bound as u64 > st.limits.segment_size;
        let rolled_size = u64::from(rolls) * SEGMENT_HEADER_LEN;
        if let Some(limit) = st.limits.retention_size {
            while st.size + rolled_size + bound as u64 > limit {
                let freed = match st.limits.on_full {
                    OnFull::Reject => false,
                    OnFull::DropOldest => inner.delete_oldest_locked(&mut st, "retention_size"),
                };
                if !freed && st.limits.on_full == OnFull::DropOldest && !st.next.is_empty() {
                    // The oldest segments are still to be sealed: the flusher deletes as soon
                    // as it has sealed one (the overshoot is in memory, not on the disk).
                    break;
                }
                if !freed {
                    return Err(inner.full(FullReason::RetentionSize { limit }));
                }
            }
        }
        if rolls {
            let base = st.next_offset;
            st.next.push_back(Next {
                base,
                buf: Vec::new(),
                waiters: Vec::new(),
                size: SEGMENT_HEADER_LEN,
                index: IndexBuilder::new(inner.cfg.index_interval_bytes()),
                max_append_time: i64::MIN,
            });
            st.size += SEGMENT_HEADER_LEN;
            inner
                .usage
                .bytes
                .fetch_add(SEGMENT_HEADER_LEN, Ordering::Relaxed);
            inner.wake_later(&mut st, &mut wakes);
        }
        // A log-append-time topic: the records carry the append time (the time index too).
        let log_append = st.limits.log_append_time;
        let header = BatchHeader {
            base_offset: st.next_offset,
            record_count: batch.count(),
            first_timestamp: batch.first_timestamp(),
            max_timestamp: if log_append {
                append_time
            } else {
                batch.max_timestamp()
            },
            append_time,
            attributes: if log_append {
                super::record::ATTR_LOG_APPEND_TIME
            } else {
                0
            },
        };
        let write_buffer = inner.write_buffer;
        let wake_at = st.wake_at;
        let held = st.held;
        let tail = st.tail();
        let position = *tail.size;
        let len = encode_frame(tail.buf, &header, batch.layout(), batch.records_bytes()) as u64;
        let rel = (header.base_offset - tail.base).sat_u32();
        tail.index.add(rel, position, len, header.max_timestamp);
        *tail.size += len;
        *tail.max_append_time = (*tail.max_append_time).max(append_time);
        let full = tail.buf.len() >= write_buffer;
        let (done, wake) = match durability {
            Durability::None => (None, full && (wake_at != usize::MAX || held)),
            Durability::Written | Durability::Durable => {
                let (tx, rx) = oneshot::channel();
                let waiter = Waiter {
                    durable: durability == Durability::Durable,
                    sync_by,
                    done: tx,
                };
                let ends_hold = held && (full || waiter.no_wait());
                tail.waiters.push(waiter);
                (Some(rx), tail.waiters.len() >= wake_at || ends_hold)
            }
        };
        if wake {
            inner.wake_later(&mut st, &mut wakes);
        }
        st.size += len;
        inner.usage.bytes.fetch_add(len, Ordering::Relaxed);
        st.next_offset = header.next_offset();
        st.assigned_end += len;
        let appended = Appended {
            base_offset: header.base_offset,
            next_offset: header.next_offset(),
            log_append_time: log_append.then_some(append_time),
        };
        Ok((appended, done))
    }

    /// Writes out buffered batches and, with `sync`, fsyncs what is written; blocks until done.
    pub fn flush(&self, sync: bool) -> Result<()> {
        let inner = &*self.inner;
        let rx = {
            let mut wakes = flush::Wakes::new(inner);
            let mut st = inner.lock();
            if let Some(cause) = &st.poisoned {
                return Err(inner.poisoned(cause));
            }
            let pending = st.assigned_end > st.written_end || !st.buf.is_empty();
            let unsynced = sync && st.active.durable < st.active.size;
            if !pending && !unsynced {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            st.tail().waiters.push(Waiter {
                durable: sync,
                sync_by: None,
                done: tx,
            });
            // A flush request is never worth gathering for.
            inner.wake_later(&mut st, &mut wakes);
            rx
        };
        inner.completed(rx.blocking_recv())
    }

    /// Deletes the oldest sealed segment to make room for another topic or the filesystem.
    pub(crate) fn delete_oldest(&self, why: &str) -> bool {
        let mut st = self.inner.lock();
        self.inner.delete_oldest_locked(&mut st, why)
    }

    /// Whether full segments wait for the flusher to seal them.
    pub(crate) fn sealing(&self) -> bool {
        !self.inner.lock().next.is_empty()
    }

    /// Append time of the oldest sealed segment, if there is one (for cross-topic reclaim).
    pub(crate) fn oldest_sealed_time(&self) -> Option<i64> {
        self.inner.lock().sealed.front().map(|s| s.max_append_time)
    }

    /// Sets the offset from which segments are kept from time retention when the topic's
    /// policy is `reject` (the mirror's acknowledged cursor); `None` lifts it.
    pub fn set_keep_from(&self, offset: Option<u64>) {
        self.inner
            .keep_from
            .store(offset.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Deletes sealed segments whose newest batch was appended before `cutoff` (timeline ms);
    /// under `reject`, never one holding records at or after the keep-from floor.
    pub(crate) fn expire(&self, cutoff: i64) -> Result<u32> {
        let mut st = self.inner.lock();
        let keep_from = match st.limits.on_full {
            OnFull::Reject => self.inner.keep_from.load(Ordering::Relaxed),
            OnFull::DropOldest => u64::MAX,
        };
        let mut n = 0;
        while st
            .sealed
            .front()
            .is_some_and(|s| s.max_append_time < cutoff && s.next_offset <= keep_from)
        {
            self.inner.delete_oldest_locked(&mut st, "retention time");
            n += 1;
        }
        Ok(n)
    }

    /// Reads whole batches starting with the one that holds `from`, up to about `max_bytes`.
    /// Damage in a sealed segment is skipped: the intact records before and after it are
    /// served, and a read from inside it fails with [`LogError::DataLost`] naming the offsets
    /// lost. Damage a read finds first (a frame whose CRC fails in a segment opened through
    /// its index) is located by a scan of that segment, reported, and skipped the same way.
    pub fn read(&self, from: u64, max_bytes: usize, visibility: Visibility) -> Result<ReadResult> {
        match self.read_once(from, max_bytes, visibility) {
            Err(LogError::Corrupt { path, .. }) => {
                self.inner.locate_damage(&path)?;
                self.read_once(from, max_bytes, visibility)
            }
            r => r,
        }
    }

    fn read_once(&self, from: u64, max_bytes: usize, visibility: Visibility) -> Result<ReadResult> {
        let mut at = from;
        loop {
            let (got, segment_end) = self.read_segment(at, max_bytes, visibility)?;
            match segment_end {
                // Nothing left in this segment at or after `at` (compaction removed its last
                // records): go on in the next one.
                Some(end) if got.frames.is_empty() && end > at && at < got.high_watermark => {
                    at = end;
                }
                _ => return Ok(got),
            }
        }
    }

    /// [`Self::read_once`] within the segment holding `from`; with the end offset of that
    /// segment when it is sealed.
    fn read_segment(
        &self,
        from: u64,
        max_bytes: usize,
        visibility: Visibility,
    ) -> Result<(ReadResult, Option<u64>)> {
        let st = self.inner.lock();
        let log_start = st.log_start();
        let hw = match visibility {
            Visibility::Written => st.written_offset,
            Visibility::Durable => st.durable_offset,
        };
        if from < log_start || from > st.next_offset {
            return Err(LogError::OffsetOutOfRange {
                requested: from,
                earliest: log_start,
                latest: st.next_offset,
            });
        }
        let empty = ReadResult {
            frames: Vec::new(),
            next_offset: from,
            log_start,
            high_watermark: hw,
        };
        if from >= hw {
            return Ok((empty, None));
        }
        // Find the segment holding `from`.
        let (file, path, start, end, segment_end) = if from >= st.active.base {
            let end = match visibility {
                Visibility::Written => st.active.written,
                Visibility::Durable => st.active.durable,
            };
            let start = segment::index_position(&st.active.index.entries, st.active.base, from);
            (
                Arc::clone(&st.active.file),
                st.active.path.clone(),
                start,
                end,
                None,
            )
        } else {
            let i = st.sealed.partition_point(|s| s.base <= from) - 1;
            let seg = &st.sealed[i];
            let mut start = segment::index_position(&seg.index, seg.base, from);
            let mut end = seg.log_len;
            for d in &seg.damage {
                if (d.first_offset..d.next_offset).contains(&from) {
                    return Err(LogError::DataLost {
                        topic: self.inner.topic.clone(),
                        partition: self.inner.id,
                        first: d.first_offset,
                        next: d.next_offset,
                    });
                }
                if d.next_offset <= from {
                    // The index entry may lie before this damage: start after it.
                    start = start.max(d.end);
                } else if d.start >= start {
                    end = end.min(d.start);
                }
            }
            // Where the next segment starts: on a compacted topic whole segments between may
            // have gone.
            let seg_end = st.sealed.get(i + 1).map_or(st.active.base, |s| s.base);
            (
                Arc::clone(&seg.file),
                seg.path.clone(),
                start,
                end,
                Some(seg_end),
            )
        };
        drop(st);
        let got = segment::read_frames(file.as_ref(), &path, start, end, from, max_bytes)?;
        let read = ReadResult {
            frames: got.frames,
            next_offset: got.next_offset,
            log_start,
            high_watermark: hw,
        };
        Ok((read, segment_end))
    }

    /// First offset whose record timestamp is at or after `ts`, or `None` if every stored record
    /// is older.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<u64>> {
        Ok(self.record_for_timestamp(ts)?.map(|(offset, _)| offset))
    }

    /// The largest record timestamp stored, or `None` when the partition is empty.
    pub fn max_timestamp(&self) -> Option<i64> {
        let st = self.inner.lock();
        st.sealed
            .iter()
            .map(|s| s.max_timestamp)
            .chain(std::iter::once(st.active.index.max_timestamp))
            .chain(st.next.iter().map(|n| n.index.max_timestamp))
            .max()
            .filter(|&t| t != i64::MIN)
    }

    /// The first record whose timestamp is at or after `ts`: its offset and timestamp.
    pub fn record_for_timestamp(&self, ts: i64) -> Result<Option<(u64, i64)>> {
        // The segments that may hold it, oldest first: the first is enough unless records
        // at its start were deleted on request (the floor), which may hide its match.
        let st = self.inner.lock();
        let floor = st.start_floor;
        let mut targets = Vec::new();
        for seg in &st.sealed {
            if seg.max_timestamp >= ts {
                let start = segment::index_position_for_time(&seg.index, ts);
                let end = seg
                    .damage
                    .iter()
                    .map(|d| d.start)
                    .filter(|&d| d >= start)
                    .min()
                    .unwrap_or(seg.log_len);
                targets.push((Arc::clone(&seg.file), seg.path.clone(), start, end));
                if seg.base >= floor || targets.len() == 2 {
                    break;
                }
            }
        }
        if targets.len() < 2 && st.active.index.max_timestamp >= ts {
            let start = segment::index_position_for_time(&st.active.index.entries, ts);
            targets.push((
                Arc::clone(&st.active.file),
                st.active.path.clone(),
                start,
                st.active.written,
            ));
        }
        drop(st);
        for (file, path, pos, end) in targets {
            if let Some(found) = Self::first_at_or_after(file.as_ref(), &path, pos, end, ts, floor)?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Scans one segment's frames from `pos` to `end` for the first record at or after time
    /// `ts` and offset `floor`.
    fn first_at_or_after(
        file: &dyn crate::log::fs::File,
        path: &Path,
        pos: u64,
        end: u64,
        ts: i64,
        floor: u64,
    ) -> Result<Option<(u64, i64)>> {
        let mut found = None;
        segment::for_each_batch(file, path, pos, end, |view, at| {
            if view.header.max_timestamp >= ts {
                for r in view.records() {
                    let r = r.map_err(|source| LogError::Corrupt {
                        path: path.to_path_buf(),
                        position: at,
                        source,
                    })?;
                    if r.timestamp >= ts && r.offset >= floor {
                        found = Some((r.offset, r.timestamp));
                        return Ok(std::ops::ControlFlow::Break(()));
                    }
                }
            }
            Ok(std::ops::ControlFlow::Continue(()))
        })?;
        Ok(found)
    }

    /// Applies a changed topic config's limits (segment size, batch size, retention size, the
    /// policy when full, the timestamp type) from the next append on; what is stored stays as
    /// it is.
    pub fn set_limits(&self, cfg: &TopicConfig) {
        self.inner.lock().limits = Limits::of(cfg);
    }

    /// First stored offset.
    pub fn log_start(&self) -> u64 {
        self.inner.lock().log_start()
    }

    /// Deletes the records before `offset` (Kafka's DeleteRecords): the floor is stored first
    /// (the partition's `start` file, durably), then the sealed segments wholly below it go.
    /// Returns the new log start. An offset past the written end is refused; one at or below
    /// the start changes nothing.
    pub fn delete_records_before(&self, offset: u64) -> Result<u64> {
        let mut st = self.inner.lock();
        if offset > st.written_offset {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                earliest: st.log_start(),
                latest: st.written_offset,
            });
        }
        if offset <= st.log_start() {
            return Ok(st.log_start());
        }
        super::fs::replace_durably(
            self.inner.fs.as_ref(),
            &self.inner.dir.join(START_FILE),
            &offset.to_le_bytes(),
        )?;
        st.start_floor = offset;
        while st.sealed.front().is_some_and(|s| s.next_offset <= offset) {
            self.inner
                .delete_oldest_locked(&mut st, "records deleted on request");
        }
        Ok(st.log_start())
    }

    /// Offset after the last readable (written) record.
    pub fn end_offset(&self) -> u64 {
        self.inner.lock().written_offset
    }

    /// Offset after the last fsynced record (what survives a power cut).
    pub fn durable_offset(&self) -> u64 {
        self.inner.lock().durable_offset
    }

    pub fn status(&self) -> PartitionStatus {
        let st = self.inner.lock();
        PartitionStatus {
            log_start: st.log_start(),
            next_offset: st.written_offset,
            durable_offset: st.durable_offset,
            segments: st.sealed.len() + 1,
            bytes: st.size,
            poisoned: st.poisoned.clone(),
        }
    }

    /// Appends time of the newest batch stored (timeline ms), if any.
    pub(crate) fn newest_append_time(&self) -> Option<i64> {
        let st = self.inner.lock();
        let t = st
            .sealed
            .iter()
            .map(|s| s.max_append_time)
            .chain(std::iter::once(st.active.max_append_time))
            .max()
            .unwrap_or(i64::MIN);
        (t != i64::MIN).then_some(t)
    }

    /// Bytes on disk (buffered appends included).
    pub fn size(&self) -> u64 {
        self.inner.lock().size
    }

    /// Removes this partition's accounting from the store (when its topic is deleted).
    /// Its directory is about to go: nothing more is written to it or removed from it (the
    /// batches not yet written fail, and so does every later append).
    pub(crate) fn release_usage(&self) {
        let inner = &*self.inner;
        let mut st = inner.lock();
        let failed = inner.abandon_unwritten(&mut st);
        for d in st.doomed.drain(..) {
            inner.usage.unlinking.fetch_sub(d.bytes, Ordering::Relaxed);
        }
        let cause = "the topic was deleted".to_string();
        st.poisoned = Some(cause.clone());
        inner.usage.bytes.fetch_sub(st.size, Ordering::Relaxed);
        drop(st);
        flush::complete(failed, &Err(WriteFailure::Poisoned(cause)));
    }
}

fn create_segment(fs: &dyn Fs, dir: &Path, base: u64, interval: u32) -> Result<Active> {
    let path = dir.join(log_file_name(base));
    let file = fs
        .create(&path)
        .map_err(|e| LogError::io("create", &path, e))?;
    let header = segment::encode_segment_header(base);
    let res = file
        .write_all_at(&header, 0)
        .map_err(|e| LogError::io("write", &path, e))
        .and_then(|()| {
            file.sync_data()
                .map_err(|e| LogError::io("fsync", &path, e))
        })
        .and_then(|()| {
            fs.sync_dir(dir)
                .map_err(|e| LogError::io("fsync directory", dir, e))
        });
    if let Err(e) = res {
        let _ = fs.remove_file(&path);
        return Err(e);
    }
    Ok(Active::empty(base, path, file, interval))
}
