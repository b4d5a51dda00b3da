//! Opening a partition: recovery from whatever a crash or power cut left on disk.
//!
//! Sealed segments are trusted through their index when it matches the log file (length and
//! base offset); otherwise the index is rebuilt from a scan, and damage found by that scan is
//! reported and fenced off (reads reaching it fail). The last segment is the active one: it is
//! scanned frame by frame and cut at the first frame whose length, CRC or offset is wrong, and
//! the cut is logged with the bytes and offsets removed. A last segment that already has a valid
//! index was sealed just before the crash; a new active segment is started after it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use super::super::TopicConfig;
use super::super::error::{LogError, Result};
use super::super::fs::Fs;
use super::super::segment::{self, IndexBuilder, SegmentIndex, index_file_name, log_file_name};
use super::{Active, Inner, Partition, Recovery, Sealed, State, Usage, create_segment, flush};

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
        super::super::fs::create_dir_durably(fs.as_ref(), &dir)
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
                    let idx_len = idx.encoded_len() as u64;
                    sealed.push_back(Arc::new(Sealed::new(idx, idx_len, path, file, None)));
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
                    idx.encoded_len() as u64
                } else {
                    0
                };
                sealed.push_back(Arc::new(Sealed::new(idx, idx_len, path, file, corrupt_at)));
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
                active = Some(Active::empty(base, path, file, interval));
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
            waiters: Vec::new(),
            next_offset,
            written_offset: next_offset,
            durable_offset: next_offset,
            assigned_end: 0,
            written_end: 0,
            durable_end: 0,
            flushing: false,
            wake_at: 1,
            stop: false,
            poisoned: None,
            size,
        };
        let inner = Arc::new(Inner {
            topic: topic.to_string(),
            id,
            dir,
            fs,
            cfg,
            write_buffer,
            usage,
            state: Mutex::new(state),
            flush_cv: Condvar::new(),
            idle_cv: Condvar::new(),
            end_tx: tokio::sync::watch::Sender::new(next_offset),
            keep_from: std::sync::atomic::AtomicU64::new(u64::MAX),
        });
        let flusher = flush::spawn_flusher(Arc::clone(&inner))?;
        Ok((
            Partition {
                inner,
                flusher: Mutex::new(Some(flusher)),
            },
            recovery,
        ))
    }
}
