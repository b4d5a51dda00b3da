//! Opening a partition: recovery from whatever a crash or power cut left on disk.
//!
//! Sealed segments are trusted through their index when it matches the log file (length and
//! base offset); otherwise the index is rebuilt from a scan. The last segment is the active
//! one: it is scanned frame by frame, and a damaged frame with no intact frame after it (the
//! only thing a crash can tear) is cut, logged with the bytes and offsets removed. A damaged
//! frame *followed* by intact frames, in any segment, is corruption ([`segment::scan_resync`]):
//! the intact frames are kept, the damaged range is reported ([`Usage::report_damage`]) and
//! readers skip it; an active segment with such damage is sealed as it is (without an index)
//! and a new active segment starts after it. A last segment that already has a valid index was
//! sealed just before the crash; a new active segment is started after it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use super::super::TopicConfig;
use super::super::error::{LogError, Result};
use super::super::fs::Fs;
use super::super::segment::{self, IndexBuilder, index_file_name, log_file_name};
use super::{
    Active, Damage, DamageReport, Inner, Partition, Recovery, Sealed, Shared, State, Usage,
    create_segment, flush,
};

/// Damage found in a segment at open: logged once, counted, kept for `/healthz`; unless an
/// operator dropped it (`brook check --repair --drop-corrupt`): then it is only skipped.
fn report(
    recovery: &mut Recovery,
    usage: &Usage,
    (topic, partition): (&str, u32),
    (fs, path, base): (&dyn Fs, &std::path::Path, u64),
    damage: &[Damage],
) -> Result<()> {
    let dropped = match path.parent() {
        Some(dir) => segment::read_dropped(fs, dir, base)?,
        None => Vec::new(),
    };
    for d in damage {
        if dropped.contains(&(d.first_offset, d.next_offset)) {
            continue;
        }
        let r = DamageReport {
            topic: topic.to_string(),
            partition,
            path: path.to_path_buf(),
            damage: d.clone(),
        };
        usage.report_damage(r.clone());
        recovery.damage.push(r);
    }
    Ok(())
}

impl Partition {
    /// Opens (or creates) the partition stored in `dir`, recovering from whatever state a crash
    /// left: the active segment is cut at its first damaged frame, missing indexes are rebuilt.
    pub(crate) fn open(
        topic: &str,
        id: u32,
        dir: PathBuf,
        cfg: TopicConfig,
        shared: &Shared,
    ) -> Result<(Partition, Recovery)> {
        let Shared {
            fs,
            write_buffer,
            usage,
            flushers,
        } = shared.clone();
        super::super::fs::create_dir_durably(fs.as_ref(), &dir)
            .map_err(|e| LogError::io("create directory", &dir, e))?;
        let mut recovery = Recovery::default();
        let names = fs
            .list_dir(&dir)
            .map_err(|e| LogError::io("list", &dir, e))?;
        // A compaction cut short: its output never replaced anything; the segment it was
        // rewriting is whole.
        for n in names
            .iter()
            .filter(|n| n.ends_with(super::compact::TEMP_SUFFIX))
        {
            let p = dir.join(n);
            fs.remove_file(&p)
                .map_err(|e| LogError::io("remove", &p, e))?;
            tracing::info!(file = %p.display(), "removed the output of an unfinished compaction");
        }
        let mut bases: Vec<u64> = names
            .iter()
            .filter_map(|n| segment::parse_file_name(n))
            .filter(|(_, ext)| *ext == "log")
            .map(|(b, _)| b)
            .collect();
        bases.sort_unstable();
        let interval = cfg.index_interval_bytes();

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
                    let Some(header) = segment::read_segment_header(file.as_ref(), &path, len)?
                    else {
                        return Err(LogError::BadFile {
                            path,
                            what: "sealed segment shorter than its header".into(),
                        });
                    };
                    let idx_len = idx.encoded_len() as u64;
                    let seg = Sealed::new(idx, idx_len, path, file, Vec::new(), header.compacted);
                    sealed.push_back(Arc::new(seg));
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
            let compacted = header.is_some_and(|h| h.compacted);
            let opts = segment::ScanOptions {
                index_interval: interval,
                verify_records: false,
                gaps: compacted,
            };
            if !last {
                // A sealed segment without a usable index: rebuild it from the data.
                if header.is_none() {
                    return Err(LogError::BadFile {
                        path,
                        what: "sealed segment shorter than its header".into(),
                    });
                }
                let mut scan = segment::scan_resync(file.as_ref(), &path, len, base, opts)?;
                if compacted && scan.stop.is_none() {
                    // Its last records may have been compacted away: it ends where the next
                    // segment starts.
                    scan.next_offset = scan.next_offset.max(bases[i + 1]);
                }
                if let Some((pos, why)) = scan.stop.take() {
                    // A sealed segment has no torn tail: damage up to its end is corruption.
                    scan.damage.push(Damage {
                        start: pos,
                        end: len,
                        first_offset: scan.next_offset,
                        next_offset: bases[i + 1],
                        why: why.to_string(),
                    });
                    scan.next_offset = bases[i + 1];
                }
                let idx = scan.segment_index(base, len);
                let idx_len = if scan.damage.is_empty() {
                    segment::write_index(fs.as_ref(), &dir, &idx)?;
                    recovery.indexes_rebuilt += 1;
                    idx.encoded_len() as u64
                } else {
                    report(
                        &mut recovery,
                        &usage,
                        (topic, id),
                        (fs.as_ref(), &path, base),
                        &scan.damage,
                    )?;
                    0
                };
                let seg = Sealed::new(idx, idx_len, path, file, scan.damage, compacted);
                sealed.push_back(Arc::new(seg));
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
            let scan = segment::scan_resync(file.as_ref(), &path, len, base, opts)?;
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
            if !scan.damage.is_empty() {
                // Corruption, not a torn write: everything intact is kept. The segment is
                // sealed as it is (without an index, so the next open scans it again) and a
                // new active segment starts after it.
                report(
                    &mut recovery,
                    &usage,
                    (topic, id),
                    (fs.as_ref(), &path, base),
                    &scan.damage,
                )?;
                let idx = scan.segment_index(base, scan.valid_len);
                let seg = Sealed::new(idx, 0, path, file, scan.damage, compacted);
                sealed.push_back(Arc::new(seg));
                continue;
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
                compacted,
            });
        }

        // Contiguity between segments (on a compacted topic a segment compacted to nothing is
        // deleted, and the one before it ends where it started).
        for pair in sealed.iter().collect::<Vec<_>>().windows(2) {
            let gap_allowed = cfg.cleanup.compacts() && pair[0].next_offset < pair[1].base;
            if pair[0].next_offset != pair[1].base && !gap_allowed {
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
        // Records deleted on request below a floor inside the oldest segment.
        let start_floor = read_start_floor(fs.as_ref(), &dir)?.min(next_offset);
        let size = sealed.iter().map(|s| s.log_len + s.idx_len).sum::<u64>() + active.size;
        usage.bytes.fetch_add(size, Ordering::Relaxed);
        let state = State {
            sealed,
            active,
            buf: Vec::new(),
            waiters: Vec::new(),
            next: std::collections::VecDeque::new(),
            doomed: Vec::new(),
            next_offset,
            written_offset: next_offset,
            durable_offset: next_offset,
            assigned_end: 0,
            written_end: 0,
            durable_end: 0,
            wake_at: 1,
            held: false,
            sched: flush::Sched::Idle,
            gather: flush::Gather::default(),
            stop: false,
            poisoned: None,
            size,
            start_floor,
            limits: super::Limits::of(&cfg),
        };
        let inner = Arc::new_cyclic(|me| Inner {
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
            flushers,
            me: me.clone(),
            end_tx: tokio::sync::watch::Sender::new(next_offset),
            tail_tx: tokio::sync::watch::Sender::new(None),
            keep_from: std::sync::atomic::AtomicU64::new(u64::MAX),
        });
        inner.flushers.opened();
        Ok((Partition { inner }, recovery))
    }
}

/// The deleted-records floor in the partition's [`super::START_FILE`] (0 without one).
fn read_start_floor(fs: &dyn Fs, dir: &std::path::Path) -> Result<u64> {
    let path = dir.join(super::START_FILE);
    if !fs.exists(&path) {
        return Ok(0);
    }
    let f = fs
        .open(&path, false)
        .map_err(|e| LogError::io("open", &path, e))?;
    let mut b = [0u8; 8];
    match f.read_exact_at(&mut b, 0) {
        Ok(()) => Ok(u64::from_le_bytes(b)),
        Err(e) => Err(LogError::BadFile {
            path,
            what: format!("deleted-records floor unreadable: {e}"),
        }),
    }
}
