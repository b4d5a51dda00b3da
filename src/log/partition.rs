//! One partition: an ordered run of sealed segments plus one active segment, with dense offsets.
//!
//! Writers encode their batch into the partition's in-memory buffer under a short lock and then,
//! depending on the [`Durability`] they asked for, either return at once (`None`) or wait until a
//! *flusher* has written (`Written`) or written and fsynced (`Durable`) the buffer up to their
//! batch. Whoever arrives when no flush is running becomes the flusher and takes everything
//! buffered so far, so concurrent producers share one `write` and one `fdatasync` (group commit)
//! and the file sees few, large, sequential writes. Readers see batches once they are written.
//!
//! A write error rolls the partition back to what was written before (the tail is cut off again)
//! and fails every batch that was waiting on it; an fsync error poisons the partition: fsync
//! errors are not retryable on Linux, so it refuses writes until the store is reopened.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::error::{FullReason, LogError, Result};
use super::fs::{File, Fs};
use super::record::{BatchBuilder, BatchHeader, BatchView, encode_frame};
use super::segment::{
    self, IndexBuilder, SEGMENT_HEADER_LEN, SegmentIndex, index_file_name, log_file_name,
};
use super::{Durability, OnFull, TopicConfig};

/// Store-wide counters shared by every partition.
#[derive(Debug, Default)]
pub struct Usage {
    /// Bytes of all segment and index files (buffered appends included).
    pub bytes: AtomicU64,
    /// Records deleted by retention or to make room.
    pub records_dropped: AtomicU64,
    pub segments_deleted: AtomicU64,
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
    /// Where a scan found damage in this sealed segment; reads reaching it fail.
    pub corrupt_at: Option<u64>,
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
}

impl Active {
    fn is_empty(&self) -> bool {
        self.size <= SEGMENT_HEADER_LEN
    }
}

struct State {
    sealed: VecDeque<Arc<Sealed>>,
    active: Active,
    /// Frames encoded but not yet written; they belong at `active.written` in the active file.
    buf: Vec<u8>,
    next_offset: u64,
    written_offset: u64,
    durable_offset: u64,
    /// Byte positions in the partition's append stream (monotonic for the life of the process).
    assigned_end: u64,
    written_end: u64,
    durable_end: u64,
    sync_wanted: u64,
    flushing: bool,
    /// Bumped whenever buffered batches are discarded after a failed write.
    epoch: u64,
    last_failure: Option<String>,
    poisoned: Option<String>,
    /// Bytes of this partition's files, buffered appends included.
    size: u64,
}

/// Where a successful append put its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub next_offset: u64,
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
        let mut rest: &[u8] = &self.frames;
        std::iter::from_fn(move || {
            let view = BatchView::parse(rest).ok()?;
            rest = &rest[view.frame().len()..];
            Some(view)
        })
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

pub struct Partition {
    topic: String,
    id: u32,
    dir: PathBuf,
    fs: Arc<dyn Fs>,
    cfg: TopicConfig,
    write_buffer: usize,
    usage: Arc<Usage>,
    state: Mutex<State>,
    cv: Condvar,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Partition({}/{})", self.topic, self.id)
    }
}

/// What opening a partition found, for the caller to report.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// Bytes cut from the end of the active segment (a torn write).
    pub truncated_bytes: u64,
    /// Indexes rebuilt because they were missing or unusable.
    pub indexes_rebuilt: u32,
    /// Sealed segments with damage (reads reaching it fail).
    pub corrupt_segments: Vec<(PathBuf, u64, String)>,
}

impl Partition {
    /// Opens (or creates) the partition stored in `dir`, recovering from whatever state a crash
    /// left: the active segment is cut at its first damaged frame, missing indexes are rebuilt.
    pub(crate) fn open(
        topic: &str,
        id: u32,
        dir: PathBuf,
        fs: Arc<dyn Fs>,
        cfg: TopicConfig,
        write_buffer: usize,
        usage: Arc<Usage>,
    ) -> Result<(Partition, Recovery)> {
        fs.create_dir_all(&dir)
            .map_err(|e| LogError::io("create directory", &dir, e))?;
        let mut recovery = Recovery::default();
        let names = fs
            .list_dir(&dir)
            .map_err(|e| LogError::io("list", &dir, e))?;
        let mut bases: Vec<u64> = names
            .iter()
            .filter_map(|n| segment::parse_file_name(n))
            .filter(|(_, ext)| *ext == "log")
            .map(|(b, _)| b)
            .collect();
        bases.sort_unstable();
        let interval = cfg.index_interval.bytes().min(u64::from(u32::MAX)) as u32;

        let mut sealed: VecDeque<Arc<Sealed>> = VecDeque::new();
        let mut active = None;
        let mut active_next = None;
        for (i, &base) in bases.iter().enumerate() {
            let last = i + 1 == bases.len();
            let path = dir.join(log_file_name(base));
            let idx_path = dir.join(index_file_name(base));
            let index = segment::read_index(fs.as_ref(), &idx_path)?;
            let file = fs
                .open(&path, last)
                .map_err(|e| LogError::io("open", &path, e))?;
            let len = file.size().map_err(|e| LogError::io("stat", &path, e))?;
            match index {
                Some(Ok(idx)) if idx.base_offset == base && idx.log_len == len => {
                    if segment::read_segment_header(file.as_ref(), &path, len)?.is_none() {
                        return Err(LogError::BadFile {
                            path,
                            what: "sealed segment shorter than its header".into(),
                        });
                    }
                    let idx_len = idx.encode().len() as u64;
                    sealed.push_back(Arc::new(Sealed {
                        base,
                        next_offset: idx.next_offset,
                        log_len: len,
                        idx_len,
                        max_timestamp: idx.max_timestamp,
                        max_append_time: idx.max_append_time,
                        path,
                        file,
                        index: idx.entries.into(),
                        corrupt_at: None,
                    }));
                    continue;
                }
                Some(Ok(_)) | Some(Err(_)) => {
                    if !last {
                        tracing::warn!(index = %idx_path.display(), "index does not match its segment; rebuilding it");
                    }
                    fs.remove_file(&idx_path)
                        .map_err(|e| LogError::io("remove", &idx_path, e))?;
                }
                None => {}
            }
            let header = segment::read_segment_header(file.as_ref(), &path, len)?;
            if !last {
                // A sealed segment without a usable index: rebuild it from the data.
                if header.is_none() {
                    return Err(LogError::BadFile {
                        path,
                        what: "sealed segment shorter than its header".into(),
                    });
                }
                let scan = segment::scan(file.as_ref(), &path, len, base, interval, false)?;
                let corrupt_at = scan.stop.as_ref().map(|(pos, why)| {
                    tracing::error!(segment = %path.display(), position = pos, "corrupt sealed segment: {why}");
                    recovery
                        .corrupt_segments
                        .push((path.clone(), *pos, why.to_string()));
                    *pos
                });
                let next_offset = if corrupt_at.is_some() {
                    bases[i + 1]
                } else {
                    scan.next_offset
                };
                let idx = SegmentIndex {
                    base_offset: base,
                    next_offset,
                    log_len: len,
                    max_timestamp: scan.max_timestamp,
                    max_append_time: scan.max_append_time,
                    entries: scan.index,
                };
                let idx_len = if corrupt_at.is_none() {
                    segment::write_index(fs.as_ref(), &dir, &idx)?;
                    recovery.indexes_rebuilt += 1;
                    idx.encode().len() as u64
                } else {
                    0
                };
                sealed.push_back(Arc::new(Sealed {
                    base,
                    next_offset,
                    log_len: len,
                    idx_len,
                    max_timestamp: idx.max_timestamp,
                    max_append_time: idx.max_append_time,
                    path,
                    file,
                    index: idx.entries.into(),
                    corrupt_at,
                }));
                continue;
            }
            // The last segment is the active one: scan it and cut a torn tail.
            if header.is_none() {
                file.set_len(0)
                    .map_err(|e| LogError::io("truncate", &path, e))?;
                file.write_all_at(&segment::encode_segment_header(base), 0)
                    .map_err(|e| LogError::io("write", &path, e))?;
                file.sync_data()
                    .map_err(|e| LogError::io("fsync", &path, e))?;
                recovery.truncated_bytes += len;
                if len > 0 {
                    tracing::warn!(segment = %path.display(), bytes = len, "segment header was torn; rewrote it");
                }
                active = Some(Active {
                    base,
                    path,
                    file,
                    size: SEGMENT_HEADER_LEN,
                    written: SEGMENT_HEADER_LEN,
                    durable: SEGMENT_HEADER_LEN,
                    index: IndexBuilder::new(interval),
                    max_append_time: i64::MIN,
                });
                continue;
            }
            let scan = segment::scan(file.as_ref(), &path, len, base, interval, false)?;
            if let Some((pos, why)) = &scan.stop {
                let cut = len - pos;
                let claimed = match scan.torn_batch {
                    Some((b, n)) => format!(
                        " (the damaged batch claimed offsets {b}..{})",
                        b + u64::from(n)
                    ),
                    None => String::new(),
                };
                tracing::warn!(
                    segment = %path.display(),
                    position = pos,
                    bytes = cut,
                    first_lost_offset = scan.next_offset,
                    "torn tail cut: {why}; {cut} bytes removed, offsets from {} were never completely written{claimed}",
                    scan.next_offset
                );
                file.set_len(*pos)
                    .map_err(|e| LogError::io("truncate", &path, e))?;
                file.sync_data()
                    .map_err(|e| LogError::io("fsync", &path, e))?;
                recovery.truncated_bytes += cut;
            }
            let mut index = IndexBuilder::new(interval);
            index.entries = scan.index;
            index.max_timestamp = scan.max_timestamp;
            active_next = Some(scan.next_offset);
            active = Some(Active {
                base,
                path,
                file,
                size: scan.valid_len,
                written: scan.valid_len,
                durable: scan.valid_len,
                index,
                max_append_time: scan.max_append_time,
            });
        }

        // Contiguity between segments.
        for pair in sealed.iter().collect::<Vec<_>>().windows(2) {
            if pair[0].next_offset != pair[1].base {
                tracing::error!(
                    segment = %pair[0].path.display(),
                    "segment ends at offset {} but the next one starts at {}",
                    pair[0].next_offset,
                    pair[1].base
                );
            }
        }

        let active = match active {
            Some(a) => a,
            None => {
                // A fresh partition, or the last segment was sealed right before a crash.
                let base = sealed.back().map_or(0, |s| s.next_offset);
                create_segment(fs.as_ref(), &dir, base, interval)?
            }
        };
        let next_offset = active_next.unwrap_or(active.base);
        let size = sealed.iter().map(|s| s.log_len + s.idx_len).sum::<u64>() + active.size;
        usage.bytes.fetch_add(size, Ordering::Relaxed);
        let state = State {
            sealed,
            active,
            buf: Vec::new(),
            next_offset,
            written_offset: next_offset,
            durable_offset: next_offset,
            assigned_end: 0,
            written_end: 0,
            durable_end: 0,
            sync_wanted: 0,
            flushing: false,
            epoch: 0,
            last_failure: None,
            poisoned: None,
            size,
        };
        Ok((
            Partition {
                topic: topic.to_string(),
                id,
                dir,
                fs,
                cfg,
                write_buffer,
                usage,
                state: Mutex::new(state),
                cv: Condvar::new(),
            },
            recovery,
        ))
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // State is kept consistent at every unlock; a panic elsewhere does not invalidate it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.cv.wait(st).unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one batch and returns once it has the requested durability.
    pub fn append(
        &self,
        batch: &BatchBuilder,
        durability: Durability,
        append_time: i64,
    ) -> Result<Appended> {
        if batch.is_empty() {
            return Err(LogError::InvalidBatch(super::FrameError::BadHeader(
                "batch with no records".into(),
            )));
        }
        let bound = batch.frame_len_bound();
        let limit = self.max_frame_len();
        if bound > limit {
            return Err(LogError::BatchTooLarge { size: bound, limit });
        }
        let mut st = self.lock();
        if let Some(cause) = &st.poisoned {
            return Err(self.poisoned(cause));
        }
        while !st.active.is_empty() && st.active.size + bound as u64 > self.cfg.segment_size.bytes()
        {
            if st.flushing {
                // The roll must not race a flush; look again once it is done.
                st = self.wait(st);
                if let Some(cause) = &st.poisoned {
                    return Err(self.poisoned(cause));
                }
                continue;
            }
            st = self.roll(st)?;
        }
        if let Some(limit) = self.cfg.retention_size.limit() {
            while st.size + bound as u64 > limit {
                match self.cfg.on_full {
                    OnFull::Reject => {
                        return Err(self.full(FullReason::RetentionSize { limit }));
                    }
                    OnFull::DropOldest => {
                        if !self.delete_oldest_locked(&mut st, "retention_size")? {
                            return Err(self.full(FullReason::RetentionSize { limit }));
                        }
                    }
                }
            }
        }
        let header = BatchHeader {
            base_offset: st.next_offset,
            record_count: batch.count(),
            first_timestamp: batch.first_timestamp(),
            max_timestamp: batch.max_timestamp(),
            append_time,
            attributes: 0,
        };
        let position = st.active.size;
        let len = encode_frame(&mut st.buf, &header, batch.records_bytes()) as u64;
        let rel = (header.base_offset - st.active.base) as u32;
        st.active
            .index
            .add(rel, position, len, header.max_timestamp);
        st.active.size += len;
        st.active.max_append_time = st.active.max_append_time.max(append_time);
        st.size += len;
        self.usage.bytes.fetch_add(len, Ordering::Relaxed);
        st.next_offset = header.next_offset();
        st.assigned_end += len;
        let appended = Appended {
            base_offset: header.base_offset,
            next_offset: header.next_offset(),
        };
        let my_end = st.assigned_end;
        let my_epoch = st.epoch;
        match durability {
            Durability::None => {
                if st.buf.len() >= self.write_buffer && !st.flushing {
                    // Errors reach the writers that wait; fire-and-forget ones learn of them later.
                    drop(self.flush_locked(st, false));
                }
                Ok(appended)
            }
            Durability::Written | Durability::Durable => {
                self.wait_for(st, my_end, my_epoch, durability == Durability::Durable)?;
                Ok(appended)
            }
        }
    }

    fn max_frame_len(&self) -> usize {
        let seg_room = self
            .cfg
            .segment_size
            .bytes()
            .saturating_sub(SEGMENT_HEADER_LEN);
        (self.cfg.max_batch_size.bytes().min(seg_room)) as usize
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

    /// Blocks until the stream is written (and synced, if `durable`) up to `end`.
    fn wait_for<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        end: u64,
        epoch: u64,
        durable: bool,
    ) -> Result<()> {
        loop {
            if st.epoch != epoch {
                let why = st.last_failure.clone().unwrap_or_default();
                return Err(match &st.poisoned {
                    Some(cause) => self.poisoned(cause),
                    None => LogError::io("write", &st.active.path, std::io::Error::other(why)),
                });
            }
            let done = if durable {
                st.durable_end >= end
            } else {
                st.written_end >= end
            };
            if done {
                return Ok(());
            }
            if let Some(cause) = &st.poisoned {
                return Err(self.poisoned(cause));
            }
            if durable {
                st.sync_wanted = st.sync_wanted.max(end);
            }
            if st.flushing {
                st = self.wait(st);
            } else {
                st = self.flush_locked(st, durable)?;
            }
        }
    }

    /// Becomes the flusher: writes everything buffered (and fsyncs when asked or wanted by a
    /// waiter) outside the lock, then publishes the new watermarks. Returns the lock re-taken.
    fn flush_locked<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        sync: bool,
    ) -> Result<MutexGuard<'a, State>> {
        debug_assert!(!st.flushing);
        let sync = sync || st.sync_wanted > st.durable_end;
        if st.buf.is_empty() && (!sync || st.durable_end >= st.written_end) {
            return Ok(st);
        }
        st.flushing = true;
        let buf = std::mem::take(&mut st.buf);
        let target_end = st.assigned_end;
        let target_offset = st.next_offset;
        let pos = st.active.written;
        let file = Arc::clone(&st.active.file);
        drop(st);

        let wrote = if buf.is_empty() {
            Ok(())
        } else {
            file.write_all_at(&buf, pos)
        };
        let synced = match (&wrote, sync) {
            (Ok(()), true) => Some(file.sync_data()),
            _ => None,
        };

        let mut st = self.lock();
        st.flushing = false;
        let result = match (wrote, synced) {
            (Err(e), _) => {
                let err = self.rollback(&mut st, e);
                Err(err)
            }
            (Ok(()), Some(Err(e))) => {
                let cause = format!("fsync {}: {e}", st.active.path.display());
                tracing::error!(topic = %self.topic, partition = self.id, "{cause}; the partition refuses writes until reopened");
                st.poisoned = Some(cause.clone());
                st.epoch += 1;
                st.last_failure = Some(cause.clone());
                Err(self.poisoned(&cause))
            }
            (Ok(()), synced) => {
                st.active.written = pos + buf.len() as u64;
                st.written_end = target_end;
                st.written_offset = target_offset;
                if synced.is_some() {
                    st.active.durable = st.active.written;
                    st.durable_end = target_end;
                    st.durable_offset = target_offset;
                }
                if st.buf.capacity() == 0 {
                    let mut b = buf;
                    b.clear();
                    st.buf = b;
                }
                Ok(())
            }
        };
        self.cv.notify_all();
        result.map(|()| st)
    }

    /// After a failed write: cut the file back to what was written before, discard everything
    /// buffered (those batches fail), and reset offsets. Poisons the partition if even that fails.
    fn rollback(&self, st: &mut State, e: std::io::Error) -> LogError {
        let no_space = e.raw_os_error() == Some(libc::ENOSPC);
        let cause = format!("write {}: {e}", st.active.path.display());
        tracing::error!(topic = %self.topic, partition = self.id, "{cause}; discarding unwritten batches");
        let good = st.active.written;
        if let Err(te) = st.active.file.set_len(good) {
            let cause = format!("{cause}; then truncate failed: {te}");
            st.poisoned = Some(cause.clone());
        }
        let lost = st.assigned_end - st.written_end;
        st.buf.clear();
        st.size -= lost;
        self.usage.bytes.fetch_sub(lost, Ordering::Relaxed);
        st.active.size = good;
        st.active.index.truncate_to(good);
        st.next_offset = st.written_offset;
        st.assigned_end = st.written_end;
        st.epoch += 1;
        st.last_failure = Some(cause.clone());
        if let Some(p) = &st.poisoned {
            return self.poisoned(p);
        }
        if no_space {
            self.full(FullReason::NoSpace)
        } else {
            LogError::io("write", &st.active.path, e)
        }
    }

    /// Seals the active segment and starts a new one. Runs entirely under the lock and with no
    /// flush in progress, so no batch can slip into the old segment's buffer meanwhile.
    fn roll<'a>(&'a self, mut st: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>> {
        debug_assert!(!st.flushing);
        if !st.buf.is_empty() {
            let buf = std::mem::take(&mut st.buf);
            let pos = st.active.written;
            if let Err(e) = st.active.file.write_all_at(&buf, pos) {
                let err = self.rollback(&mut st, e);
                self.cv.notify_all();
                return Err(err);
            }
            st.active.written = pos + buf.len() as u64;
            st.written_end = st.assigned_end;
            st.written_offset = st.next_offset;
            st.buf = buf;
            st.buf.clear();
        }
        if st.active.durable < st.active.written {
            // The whole segment is synced when sealed, whatever its writers asked for.
            if let Err(e) = st.active.file.sync_data() {
                let cause = format!("fsync {}: {e}", st.active.path.display());
                tracing::error!(topic = %self.topic, partition = self.id, "{cause}; the partition refuses writes until reopened");
                st.poisoned = Some(cause.clone());
                st.epoch += 1;
                st.last_failure = Some(cause.clone());
                self.cv.notify_all();
                return Err(self.poisoned(&cause));
            }
            st.active.durable = st.active.written;
            st.durable_end = st.written_end;
            st.durable_offset = st.written_offset;
        }
        self.cv.notify_all();
        let interval = self.cfg.index_interval.bytes().min(u64::from(u32::MAX)) as u32;
        let idx = SegmentIndex {
            base_offset: st.active.base,
            next_offset: st.next_offset,
            log_len: st.active.written,
            max_timestamp: st.active.index.max_timestamp,
            max_append_time: st.active.max_append_time,
            entries: st.active.index.entries.clone(),
        };
        let idx_path = segment::write_index(self.fs.as_ref(), &self.dir, &idx)?;
        let new = match create_segment(self.fs.as_ref(), &self.dir, st.next_offset, interval) {
            Ok(a) => a,
            Err(e) => {
                let _ = self.fs.remove_file(&idx_path);
                return Err(e);
            }
        };
        let idx_len = idx.encode().len() as u64;
        let old = std::mem::replace(&mut st.active, new);
        st.size += idx_len + SEGMENT_HEADER_LEN;
        self.usage
            .bytes
            .fetch_add(idx_len + SEGMENT_HEADER_LEN, Ordering::Relaxed);
        st.sealed.push_back(Arc::new(Sealed {
            base: old.base,
            next_offset: idx.next_offset,
            log_len: old.written,
            idx_len,
            max_timestamp: idx.max_timestamp,
            max_append_time: idx.max_append_time,
            path: old.path,
            file: old.file,
            index: idx.entries.into(),
            corrupt_at: None,
        }));
        Ok(st)
    }

    /// Writes out buffered batches; with `sync`, also fsyncs what is written.
    pub fn flush(&self, sync: bool) -> Result<()> {
        let mut st = self.lock();
        while st.flushing {
            st = self.wait(st);
        }
        if let Some(cause) = &st.poisoned {
            return Err(self.poisoned(cause));
        }
        if sync {
            st.sync_wanted = st.sync_wanted.max(st.assigned_end);
        }
        self.flush_locked(st, sync).map(drop)
    }

    /// Deletes the oldest sealed segment. Returns whether there was one.
    fn delete_oldest_locked(&self, st: &mut State, why: &str) -> Result<bool> {
        let Some(seg) = st.sealed.front().cloned() else {
            return Ok(false);
        };
        let idx_path = self.dir.join(index_file_name(seg.base));
        self.fs
            .remove_file(&seg.path)
            .map_err(|e| LogError::io("remove", &seg.path, e))?;
        if self.fs.exists(&idx_path) {
            self.fs
                .remove_file(&idx_path)
                .map_err(|e| LogError::io("remove", &idx_path, e))?;
        }
        st.sealed.pop_front();
        let freed = seg.log_len + seg.idx_len;
        st.size -= freed;
        self.usage.bytes.fetch_sub(freed, Ordering::Relaxed);
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
        Ok(true)
    }

    /// Deletes the oldest sealed segment to make room for another topic or the filesystem.
    pub(crate) fn delete_oldest(&self, why: &str) -> Result<bool> {
        let mut st = self.lock();
        self.delete_oldest_locked(&mut st, why)
    }

    /// Append time of the oldest sealed segment, if there is one (for cross-topic reclaim).
    pub(crate) fn oldest_sealed_time(&self) -> Option<i64> {
        self.lock().sealed.front().map(|s| s.max_append_time)
    }

    /// Deletes sealed segments whose newest batch was appended before `cutoff` (timeline ms).
    pub(crate) fn expire(&self, cutoff: i64) -> Result<u32> {
        let mut st = self.lock();
        let mut n = 0;
        while st
            .sealed
            .front()
            .is_some_and(|s| s.max_append_time < cutoff)
        {
            self.delete_oldest_locked(&mut st, "retention time")?;
            n += 1;
        }
        Ok(n)
    }

    /// Reads whole batches starting with the one that holds `from`, up to about `max_bytes`.
    pub fn read(&self, from: u64, max_bytes: usize, visibility: Visibility) -> Result<ReadResult> {
        let st = self.lock();
        let log_start = st.sealed.front().map_or(st.active.base, |s| s.base);
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
            return Ok(empty);
        }
        // Find the segment holding `from`.
        let (file, path, start, end) = if from >= st.active.base {
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
            )
        } else {
            let i = st.sealed.partition_point(|s| s.base <= from) - 1;
            let seg = &st.sealed[i];
            let start = segment::index_position(&seg.index, seg.base, from);
            let end = seg.corrupt_at.unwrap_or(seg.log_len);
            if let Some(pos) = seg.corrupt_at {
                if start >= pos || from >= seg.next_offset {
                    return Err(LogError::Corrupt {
                        path: seg.path.clone(),
                        position: pos,
                        source: super::FrameError::BadHeader(
                            "damaged sealed segment (see brook check)".into(),
                        ),
                    });
                }
            }
            (Arc::clone(&seg.file), seg.path.clone(), start, end)
        };
        drop(st);
        let got = segment::read_frames(file.as_ref(), &path, start, end, from, max_bytes)?;
        Ok(ReadResult {
            frames: got.frames,
            next_offset: got.next_offset,
            log_start,
            high_watermark: hw,
        })
    }

    /// First offset whose record timestamp is at or after `ts`, or `None` if every stored record
    /// is older.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<u64>> {
        let st = self.lock();
        let mut target = None;
        for seg in &st.sealed {
            if seg.max_timestamp >= ts {
                let start = segment::index_position_for_time(&seg.index, ts);
                let end = seg.corrupt_at.unwrap_or(seg.log_len);
                target = Some((Arc::clone(&seg.file), seg.path.clone(), start, end));
                break;
            }
        }
        if target.is_none() && st.active.index.max_timestamp >= ts {
            let start = segment::index_position_for_time(&st.active.index.entries, ts);
            target = Some((
                Arc::clone(&st.active.file),
                st.active.path.clone(),
                start,
                st.active.written,
            ));
        }
        drop(st);
        let Some((file, path, mut pos, end)) = target else {
            return Ok(None);
        };
        while pos < end {
            let got = segment::read_frames(file.as_ref(), &path, pos, end, 0, 1 << 20)?;
            if got.frames.is_empty() {
                break;
            }
            let mut rest: &[u8] = &got.frames;
            while !rest.is_empty() {
                let view = BatchView::parse(rest).map_err(|source| LogError::Corrupt {
                    path: path.clone(),
                    position: pos,
                    source,
                })?;
                if view.header.max_timestamp >= ts {
                    for r in view.records() {
                        let r = r.map_err(|source| LogError::Corrupt {
                            path: path.clone(),
                            position: pos,
                            source,
                        })?;
                        if r.timestamp >= ts {
                            return Ok(Some(r.offset));
                        }
                    }
                }
                pos += view.frame().len() as u64;
                rest = &rest[view.frame().len()..];
            }
        }
        Ok(None)
    }

    /// First stored offset.
    pub fn log_start(&self) -> u64 {
        let st = self.lock();
        st.sealed.front().map_or(st.active.base, |s| s.base)
    }

    /// Offset after the last readable (written) record.
    pub fn end_offset(&self) -> u64 {
        self.lock().written_offset
    }

    pub fn status(&self) -> PartitionStatus {
        let st = self.lock();
        PartitionStatus {
            log_start: st.sealed.front().map_or(st.active.base, |s| s.base),
            next_offset: st.written_offset,
            durable_offset: st.durable_offset,
            segments: st.sealed.len() + 1,
            bytes: st.size,
            poisoned: st.poisoned.clone(),
        }
    }

    /// Appends time of the newest batch stored (timeline ms), if any.
    pub(crate) fn newest_append_time(&self) -> Option<i64> {
        let st = self.lock();
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
        self.lock().size
    }

    /// Removes this partition's accounting from the store (when its topic is deleted).
    pub(crate) fn release_usage(&self) {
        let st = self.lock();
        self.usage.bytes.fetch_sub(st.size, Ordering::Relaxed);
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
    Ok(Active {
        base,
        path,
        file,
        size: SEGMENT_HEADER_LEN,
        written: SEGMENT_HEADER_LEN,
        durable: SEGMENT_HEADER_LEN,
        index: IndexBuilder::new(interval),
        max_append_time: i64::MIN,
    })
}
