//! Compaction (`cleanup = compact`): a partition's sealed segments keep only the newest record
//! of each key.
//!
//! A pass reads the keys of the whole partition (sealed segments and the written part of the
//! active one) into a map of key hash -> newest offset, then looks at each sealed segment: a
//! record is superseded when a newer record has its key; a key whose newest record is a
//! tombstone (a null value) older than `delete_retention` is dead, and all its records go.
//! Records without a key are always kept. A segment is rewritten only when at least
//! [`MIN_CLEANABLE_RATIO`] of its records would go, so the card is not worn for a few bytes, or
//! when it holds a record of a dead key (a delete must not stay readable for ever, nor may an
//! older value outlive its tombstone; segments are done oldest first, so a cut between two
//! rewrites leaves the tombstone, never the value alone).
//!
//! The rewrite keeps every surviving record at its offset, with its timestamp, key, value and
//! headers; a run of survivors with consecutive offsets stays one batch (a batch nothing was
//! taken from is copied byte for byte), so offsets keep their meaning and readers skip the
//! gaps. A segment left with no record is deleted instead (except the first, which holds the
//! log's start): reads that fall between segments go on at the next one. The new segment
//! (format version 2, which allows gaps) and its index are written to `<name>.compacting`, fsynced, then renamed over the old files, log first, under the
//! partition's lock, and the directory is fsynced. A cut at any point leaves either the old
//! segment (the `.compacting` files are removed at the next open) or the new one (an old index
//! beside it no longer matches its length and is rebuilt, gaps allowed, ending where the next
//! segment starts).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::error::LogError;
use super::super::fs::File;
use super::super::record::{
    BatchBuilder, BatchHeader, BatchView, Header, RecordView, encode_frame,
};
use super::super::segment::{
    self, IndexBuilder, SEGMENT_HEADER_LEN, SegmentIndex, index_file_name, log_file_name,
};
use super::{Partition, Result, Sealed};
use crate::units::Narrow;

/// Suffix of a compaction's output until it replaces the segment.
pub(crate) const TEMP_SUFFIX: &str = ".compacting";

/// A segment is rewritten only when at least this share of its records is superseded
/// (Kafka's `min.cleanable.dirty.ratio` default).
pub const MIN_CLEANABLE_RATIO: f64 = 0.5;

/// What one compaction pass over a partition did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    pub segments_rewritten: u64,
    pub records_removed: u64,
    /// Bytes of the rewritten segments before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl std::ops::AddAssign for Compacted {
    fn add_assign(&mut self, o: Compacted) {
        self.segments_rewritten += o.segments_rewritten;
        self.records_removed += o.records_removed;
        self.bytes_before += o.bytes_before;
        self.bytes_after += o.bytes_after;
    }
}

/// 128 bits of a key: two SipHash runs with different prefixes. The map holds hashes, not keys,
/// so its size does not depend on key lengths; at 128 bits a collision (which would drop a
/// record of another key) is out of reach.
type KeyHash = (u64, u64);

fn key_hash(key: &[u8]) -> KeyHash {
    let half = |salt: u8| {
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(0x0062_726f_6f6b, u64::from(salt));
        key.hash(&mut h);
        h.finish()
    };
    (half(1), half(2))
}

/// Calls `f` on every batch of `file` between the segment header and `end`.
fn for_each_batch(
    file: &dyn File,
    path: &Path,
    end: u64,
    mut f: impl FnMut(&BatchView<'_>) -> Result<()>,
) -> Result<()> {
    segment::for_each_batch(file, path, SEGMENT_HEADER_LEN, end, |view, _| {
        f(view).map(|()| ControlFlow::Continue(()))
    })
}

/// Calls `f` on every record of `file` up to `end`.
fn for_each_record(
    file: &dyn File,
    path: &Path,
    end: u64,
    mut f: impl FnMut(&RecordView<'_>, &BatchHeader),
) -> Result<()> {
    for_each_batch(file, path, end, |b| {
        for r in b.records() {
            let r = r.map_err(|source| LogError::Corrupt {
                path: path.to_path_buf(),
                position: 0,
                source,
            })?;
            f(&r, &b.header);
        }
        Ok(())
    })
}

/// The newest record of a key.
#[derive(Clone, Copy)]
struct Newest {
    offset: u64,
    /// The append time of its batch, when it is a tombstone.
    tombstone: Option<i64>,
}

/// Which records of a sealed segment stay.
struct Survival<'a> {
    newest: &'a HashMap<KeyHash, Newest>,
    /// Tombstones in batches appended before this (retention timeline) go.
    tombstone_horizon: i64,
}

impl Survival<'_> {
    fn newest(&self, r: &RecordView<'_>) -> Option<Newest> {
        r.key.and_then(|k| self.newest.get(&key_hash(k)).copied())
    }

    /// A key whose newest record is a tombstone past the horizon: every record of it goes.
    fn is_dead(&self, n: Newest) -> bool {
        n.tombstone.is_some_and(|t| t < self.tombstone_horizon)
    }

    fn keeps(&self, r: &RecordView<'_>) -> bool {
        match self.newest(r) {
            None => r.key.is_none(),
            Some(n) => n.offset == r.offset && !self.is_dead(n),
        }
    }

    /// Whether `r` belongs to a dead key. Such records are removed from every segment, oldest
    /// first, whatever else the segment holds: were the tombstone to go while an older value
    /// stayed, the deleted key would come back.
    fn of_dead_key(&self, r: &RecordView<'_>) -> bool {
        self.newest(r).is_some_and(|n| self.is_dead(n))
    }
}

impl Partition {
    /// One compaction pass (see the module docs). `tombstone_horizon`: tombstones appended
    /// before this time (retention timeline) are removed. Blocks on disk I/O: run it on a
    /// thread of its own. A partition with damaged segments is left as it is.
    pub fn compact(&self, tombstone_horizon: i64) -> Result<Compacted> {
        let inner = &*self.inner;
        let (sealed, active) = {
            let st = inner.lock();
            let sealed: Vec<Arc<Sealed>> = st.sealed.iter().cloned().collect();
            let active = (
                Arc::clone(&st.active.file),
                st.active.path.clone(),
                st.active.written,
            );
            (sealed, active)
        };
        let mut done = Compacted::default();
        if sealed.is_empty() {
            return Ok(done);
        }
        if sealed.iter().any(|s| !s.damage.is_empty()) {
            tracing::warn!(topic = %inner.topic, partition = inner.id, "not compacted: the partition has damaged segments (see /healthz)");
            return Ok(done);
        }
        let mut newest: HashMap<KeyHash, Newest> = HashMap::new();
        let mut note = |r: &RecordView<'_>, h: &BatchHeader| {
            if let Some(k) = r.key {
                let n = Newest {
                    offset: r.offset,
                    tombstone: r.value.is_none().then_some(h.append_time),
                };
                newest.insert(key_hash(k), n);
            }
        };
        for seg in &sealed {
            for_each_record(seg.file.as_ref(), &seg.path, seg.log_len, &mut note)?;
        }
        for_each_record(active.0.as_ref(), &active.1, active.2, &mut note)?;
        let survival = Survival {
            newest: &newest,
            tombstone_horizon,
        };
        for seg in &sealed {
            let (mut total, mut gone, mut dead) = (0u64, 0u64, false);
            for_each_record(seg.file.as_ref(), &seg.path, seg.log_len, |r, _| {
                total += 1;
                if !survival.keeps(r) {
                    gone += 1;
                    dead |= survival.of_dead_key(r);
                }
            })?;
            let worth_it = (gone as f64) >= MIN_CLEANABLE_RATIO * total as f64;
            if gone == 0 || !(worth_it || dead) {
                continue;
            }
            // Nothing left: the segment goes (unless it is the first, which keeps the log's
            // start where it was, so committed offsets stay in range).
            if gone == total && self.drop_emptied(seg)? {
                done.segments_rewritten += 1;
                done.records_removed += gone;
                done.bytes_before += seg.log_len + seg.idx_len;
                continue;
            }
            if let Some(bytes_after) = self.rewrite(seg, &survival)? {
                done.segments_rewritten += 1;
                done.records_removed += gone;
                done.bytes_before += seg.log_len + seg.idx_len;
                done.bytes_after += bytes_after;
            }
        }
        if done.segments_rewritten > 0 {
            tracing::info!(
                topic = %inner.topic,
                partition = inner.id,
                segments = done.segments_rewritten,
                records_removed = done.records_removed,
                bytes_before = done.bytes_before,
                bytes_after = done.bytes_after,
                "compacted"
            );
        }
        Ok(done)
    }

    /// Deletes `seg`, all of whose records compaction removes, unless it is the partition's
    /// first segment (or went away meanwhile): index first, then the segment, then the
    /// directory is fsynced. A cut between leaves a segment without an index, rebuilt at open.
    fn drop_emptied(&self, seg: &Arc<Sealed>) -> Result<bool> {
        let inner = &*self.inner;
        let fs = inner.fs.as_ref();
        {
            let mut st = inner.lock();
            let st = &mut *st;
            let Some(i) = st.sealed.iter().position(|s| Arc::ptr_eq(s, seg)) else {
                return Ok(false);
            };
            if i == 0 {
                return Ok(false);
            }
            let idx_path = inner.dir.join(index_file_name(seg.base));
            match fs.remove_file(&idx_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io("remove", &idx_path, e)),
            }
            fs.remove_file(&seg.path)
                .map_err(|e| LogError::io("remove", &seg.path, e))?;
            st.sealed.remove(i);
            let bytes = seg.log_len + seg.idx_len;
            st.size = st.size.saturating_sub(bytes);
            inner.usage.bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        fs.sync_dir(&inner.dir)
            .map_err(|e| LogError::io("fsync", &inner.dir, e))?;
        Ok(true)
    }

    /// Writes the survivors of `seg` to a new segment and puts it in `seg`'s place. Returns the
    /// new segment's bytes (log and index), or `None` when `seg` went away meanwhile
    /// (retention) and nothing was replaced.
    fn rewrite(&self, seg: &Arc<Sealed>, survival: &Survival<'_>) -> Result<Option<u64>> {
        let inner = &*self.inner;
        let fs = inner.fs.as_ref();
        let log_path = inner.dir.join(log_file_name(seg.base));
        let idx_path = inner.dir.join(index_file_name(seg.base));
        let log_tmp = inner
            .dir
            .join(format!("{}{TEMP_SUFFIX}", log_file_name(seg.base)));
        let idx_tmp = inner
            .dir
            .join(format!("{}{TEMP_SUFFIX}", index_file_name(seg.base)));
        let result = self.write_survivors(seg, survival, &log_tmp, &idx_tmp);
        let (file, index, idx_len) = match result {
            Ok(x) => x,
            Err(e) => {
                let _ = fs.remove_file(&log_tmp);
                let _ = fs.remove_file(&idx_tmp);
                return Err(e);
            }
        };
        let new_bytes = index.log_len + idx_len;
        let replaced = {
            let mut st = inner.lock();
            let st = &mut *st;
            match st.sealed.iter_mut().find(|s| Arc::ptr_eq(s, seg)) {
                None => false,
                Some(slot) => {
                    fs.rename(&log_tmp, &log_path)
                        .map_err(|e| LogError::io("rename", &log_tmp, e))?;
                    fs.rename(&idx_tmp, &idx_path)
                        .map_err(|e| LogError::io("rename", &idx_tmp, e))?;
                    let old_bytes = slot.log_len + slot.idx_len;
                    *slot = Arc::new(Sealed::new(
                        index,
                        idx_len,
                        log_path,
                        file,
                        Vec::new(),
                        true,
                    ));
                    st.size = (st.size + new_bytes).saturating_sub(old_bytes);
                    inner.usage.bytes.fetch_add(new_bytes, Ordering::Relaxed);
                    inner.usage.bytes.fetch_sub(old_bytes, Ordering::Relaxed);
                    true
                }
            }
        };
        if !replaced {
            // Deleted by retention while it was being rewritten.
            let _ = fs.remove_file(&log_tmp);
            let _ = fs.remove_file(&idx_tmp);
            return Ok(None);
        }
        fs.sync_dir(&inner.dir)
            .map_err(|e| LogError::io("fsync", &inner.dir, e))?;
        Ok(Some(new_bytes))
    }

    /// Writes the new segment and its index to the temporary paths, both fsynced.
    fn write_survivors(
        &self,
        seg: &Sealed,
        survival: &Survival<'_>,
        log_tmp: &Path,
        idx_tmp: &Path,
    ) -> Result<(Arc<dyn File>, SegmentIndex, u64)> {
        let inner = &*self.inner;
        let fs = inner.fs.as_ref();
        let interval = inner.cfg.index_interval_bytes();
        let file = fs
            .create(log_tmp)
            .map_err(|e| LogError::io("create", log_tmp, e))?;
        let mut w = Writer {
            file: file.as_ref(),
            path: log_tmp,
            out: segment::encode_compacted_segment_header(seg.base).to_vec(),
            flushed: 0,
            index: IndexBuilder::new(interval),
            max_append_time: i64::MIN,
            base: seg.base,
        };
        let mut builder = BatchBuilder::new();
        for_each_batch(seg.file.as_ref(), &seg.path, seg.log_len, |b| {
            // Sized by the bytes there, not by the count a (damaged) header may claim.
            let claimed = b.header.record_count as usize;
            let mut records = Vec::with_capacity(claimed.min(b.records_bytes().len()));
            for r in b.records() {
                let r = r.map_err(|source| LogError::Corrupt {
                    path: seg.path.clone(),
                    position: 0,
                    source,
                })?;
                if survival.keeps(&r) {
                    records.push(r);
                }
            }
            if records.len() == b.header.record_count as usize {
                // Nothing taken from this batch: the frame as it was.
                w.add_frame(&b.header, b.frame());
            } else {
                // Runs of consecutive offsets, each a batch of its own.
                let mut i = 0;
                while i < records.len() {
                    let mut j = i + 1;
                    while j < records.len() && records[j].offset == records[j - 1].offset + 1 {
                        j += 1;
                    }
                    builder.clear();
                    for r in &records[i..j] {
                        let headers: Vec<Header> = r
                            .headers
                            .iter()
                            .map(|h| Header {
                                name: h.name.to_string(),
                                value: h.value.map(<[u8]>::to_vec),
                            })
                            .collect();
                        builder.push(r.timestamp, r.key, r.value, &headers);
                    }
                    let header = BatchHeader {
                        base_offset: records[i].offset,
                        record_count: builder.count(),
                        first_timestamp: builder.first_timestamp(),
                        max_timestamp: builder.max_timestamp(),
                        append_time: b.header.append_time,
                        attributes: b.header.attributes,
                    };
                    let mut frame = Vec::with_capacity(builder.frame_len_bound());
                    encode_frame(
                        &mut frame,
                        &header,
                        builder.layout(),
                        builder.records_bytes(),
                    );
                    w.add_frame(&header, &frame);
                    i = j;
                }
            }
            w.spill(1 << 20)
        })?;
        w.spill(0)?;
        let log_len = w.flushed;
        file.sync_data()
            .map_err(|e| LogError::io("fsync", log_tmp, e))?;
        let (index, max_append_time) = (w.index, w.max_append_time);
        let idx = SegmentIndex {
            base_offset: seg.base,
            // The segment still ends where it did, whatever was taken from its end.
            next_offset: seg.next_offset,
            log_len,
            max_timestamp: index.max_timestamp,
            max_append_time,
            entries: index.entries,
        };
        segment::write_index_at(fs, idx_tmp, &idx)?;
        let idx_len = idx.encoded_len() as u64;
        Ok((file, idx, idx_len))
    }
}

/// The new segment as it is written: frames gather in `out` and go to the file in large writes.
struct Writer<'a> {
    file: &'a dyn File,
    path: &'a Path,
    out: Vec<u8>,
    /// File position of `out[0]`.
    flushed: u64,
    index: IndexBuilder,
    max_append_time: i64,
    base: u64,
}

impl Writer<'_> {
    fn add_frame(&mut self, header: &BatchHeader, frame: &[u8]) {
        let pos = self.flushed + self.out.len() as u64;
        self.out.extend_from_slice(frame);
        self.index.add(
            (header.base_offset - self.base).sat_u32(),
            pos,
            frame.len() as u64,
            header.max_timestamp,
        );
        self.max_append_time = self.max_append_time.max(header.append_time);
    }

    /// Writes what is gathered once it is at least `at_least` bytes.
    fn spill(&mut self, at_least: usize) -> Result<()> {
        if self.out.len() >= at_least.max(1) {
            self.file
                .write_all_at(&self.out, self.flushed)
                .map_err(|e| LogError::io("write", self.path, e))?;
            self.flushed += self.out.len() as u64;
            self.out.clear();
        }
        Ok(())
    }
}
