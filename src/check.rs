//! `brook check DIR [--repair]`: verifies every segment of a data directory without opening the
//! store (so it also works on a copy, with Brook stopped).
//!
//! For each partition it checks segment headers, every frame's length and CRC, every record,
//! that offsets are contiguous within and across segments, and that each sealed segment's index
//! agrees with its log. Findings are graded like fsck's:
//!
//! | exit | meaning |
//! |---|---|
//! | 0 | clean |
//! | 1 | only repairable problems: a torn tail in an active segment, a missing or stale index (`--repair` cuts the tail and rewrites the index), a missing or damaged topic descriptor (`brook serve` rewrites it from the metadata store) |
//! | 2 | corruption: a damaged frame with intact frames after it (in any segment), or damage at the end of a sealed segment; reported with the offsets it held and never "repaired" (that would delete acknowledged data), while `brook serve` keeps and serves the intact records on both sides |
//! | 8 | the check could not run (the directory is missing, or a running Brook holds it) |
//!
//! `--repair --drop-corrupt` records each damaged range as dropped (`<base>.dropped` beside the
//! segment) and counts it as repaired (exit 1): its offsets stay lost and the bytes stay where
//! they are, but `brook serve` and `brook check` stop reporting it. Nothing intact is touched.
//!
//! It takes the data directory's lock ([`crate::log::lock`]) for its whole run, so it never
//! reads files a running Brook is writing and `--repair` never cuts under a live broker. A
//! read-only copy that has no lock file can still be checked (not repaired).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::log::error::{LogError, Result};
use crate::log::fs::{Fs, StdFs};
use crate::log::lock::DirLock;
use crate::log::segment::{
    self, SEGMENT_HEADER_LEN, SegmentIndex, index_file_name, log_file_name, parse_file_name,
};
use crate::log::topic_file;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// `--repair` fixes it without losing acknowledged data.
    Repairable,
    /// Data in a sealed segment is damaged.
    Corrupt,
}

#[derive(Clone, Debug)]
pub struct Finding {
    pub path: PathBuf,
    pub position: u64,
    pub what: String,
    pub severity: Severity,
    /// Set when `--repair` fixed it.
    pub repaired: bool,
}

/// The summary of one partition.
#[derive(Clone, Debug, Default)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: String,
    pub segments: usize,
    pub batches: u64,
    pub records: u64,
    pub first_offset: u64,
    pub next_offset: u64,
    pub bytes: u64,
    pub findings: Vec<Finding>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Findings about topics as a whole (their descriptors).
    pub topics: Vec<Finding>,
    pub partitions: Vec<PartitionReport>,
}

impl Report {
    /// 0 clean, 1 repairable only, 2 corrupt.
    pub fn exit_code(&self) -> u8 {
        match self
            .partitions
            .iter()
            .flat_map(|p| &p.findings)
            .chain(&self.topics)
            .map(|f| f.severity)
            .max()
        {
            None => 0,
            Some(Severity::Repairable) => 1,
            Some(Severity::Corrupt) => 2,
        }
    }

    /// A human-readable summary, one line per partition plus one per finding.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.topics {
            let _ = writeln!(out, "{}: {}", f.path.display(), f.what);
        }
        for p in &self.partitions {
            let status = match p.findings.iter().map(|f| f.severity).max() {
                None => "ok",
                Some(Severity::Repairable) => "REPAIRABLE",
                Some(Severity::Corrupt) => "CORRUPT",
            };
            let _ = writeln!(
                out,
                "{}/{}: {} segments, {} batches, {} records, offsets {}..{}, {} bytes: {status}",
                p.topic,
                p.partition,
                p.segments,
                p.batches,
                p.records,
                p.first_offset,
                p.next_offset,
                p.bytes
            );
            for f in &p.findings {
                let _ = writeln!(
                    out,
                    "  {} at byte {}: {}{}",
                    f.path.display(),
                    f.position,
                    f.what,
                    if f.repaired { " (repaired)" } else { "" }
                );
            }
        }
        let code = self.exit_code();
        let _ = writeln!(
            out,
            "{} partitions checked: {}",
            self.partitions.len(),
            match code {
                0 => "clean",
                1 => "repairable problems only",
                _ => "CORRUPT sealed data found",
            }
        );
        out
    }
}

/// Checks (and with `repair`, fixes the repairable problems of) the data directory `dir`, which
/// is either a Brook data directory (holding `topics/`) or a topics directory itself.
/// What `brook check` may change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Repair {
    /// Nothing: report only.
    #[default]
    No,
    /// Cut torn tails of active segments, rewrite missing or stale indexes.
    Safe,
    /// Also record every damaged range as dropped (`--drop-corrupt`): its offsets stay lost,
    /// but `brook serve` and `brook check` stop reporting them.
    DropCorrupt,
}

pub fn check(dir: &Path, repair: Repair) -> Result<Report> {
    check_with_progress(dir, repair, &|_| {})
}

/// The `topics` directory of a data directory, or `dir` itself when it is one.
fn topics_dir(fs: &StdFs, dir: &Path) -> std::path::PathBuf {
    if fs.exists(&dir.join("topics")) {
        dir.join("topics")
    } else {
        dir.to_path_buf()
    }
}

/// Bytes of the segment files under a data directory (or its `topics` directory): what
/// [`check_with_progress`] reports progress against. Unreadable entries count nothing.
pub fn segment_bytes(dir: &Path) -> u64 {
    let topics = topics_dir(&StdFs, dir);
    let entries = |d: &Path| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
    };
    entries(&topics)
        .filter(|t| t.is_dir())
        .flat_map(|t| entries(&t).filter(|p| p.is_dir()).collect::<Vec<_>>())
        .flat_map(|p| entries(&p).collect::<Vec<_>>())
        .filter(|f| f.extension().is_some_and(|x| x == "log"))
        .filter_map(|f| f.metadata().ok().map(|m| m.len()))
        .sum()
}

/// As [`check`], calling `progress` with the bytes of each segment as it is checked.
pub fn check_with_progress(dir: &Path, repair: Repair, progress: &dyn Fn(u64)) -> Result<Report> {
    let fs = StdFs;
    let topics_dir = topics_dir(&fs, dir);
    if !fs.exists(&topics_dir) {
        return Err(LogError::BadFile {
            path: topics_dir,
            what: "no such directory".into(),
        });
    }
    let data_dir = if topics_dir == dir {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let _lock = match DirLock::acquire(data_dir) {
        Ok(lock) => Some(lock),
        Err(LogError::Io { .. }) if repair == Repair::No => None,
        Err(e) => return Err(e),
    };
    let mut report = Report::default();
    let list = |p: &Path| {
        fs.list_dir(p)
            .map_err(|e| LogError::io("list", p.to_path_buf(), e))
    };
    for topic in list(&topics_dir)? {
        let tdir = topics_dir.join(&topic);
        if topic.starts_with('@') || !tdir.is_dir() {
            continue;
        }
        let descriptor = |what: String, severity| Finding {
            path: tdir.join(topic_file::TOPIC_FILE),
            position: 0,
            what,
            severity,
            repaired: false,
        };
        let mut compacts = false;
        match topic_file::read(&fs, &tdir)? {
            Some(Ok(cfg)) => compacts = cfg.cleanup.compacts(),
            None => report.topics.push(descriptor(
                "no topic descriptor: brook serve writes it from the metadata store, or serves the topic with default settings".into(),
                Severity::Repairable,
            )),
            Some(Err(topic_file::Unusable::Damaged(why))) => report.topics.push(descriptor(
                format!("topic descriptor damaged ({why}): brook serve rewrites it from the metadata store"),
                Severity::Repairable,
            )),
            Some(Err(topic_file::Unusable::NewerVersion(v))) => report.topics.push(descriptor(
                format!("topic descriptor has format version {v}, newer than this build understands"),
                Severity::Corrupt,
            )),
        }
        let mut parts: Vec<(u32, String)> = list(&tdir)?
            .into_iter()
            .filter_map(|n| n.parse::<u32>().ok().map(|i| (i, n)))
            .collect();
        parts.sort();
        for (_, part) in parts {
            let pdir = tdir.join(&part);
            let mut r = check_partition(&fs, &pdir, repair, compacts, progress)?;
            r.topic = topic.clone();
            r.partition = part;
            report.partitions.push(r);
        }
    }
    Ok(report)
}

/// `compacts`: the topic is compacted, so a segment may end before the next starts (its last
/// records, or whole segments between, were compacted away).
fn check_partition(
    fs: &StdFs,
    dir: &Path,
    mode: Repair,
    compacts: bool,
    progress: &dyn Fn(u64),
) -> Result<PartitionReport> {
    let repair = mode != Repair::No;
    let mut r = PartitionReport::default();
    let mut bases: Vec<u64> = fs
        .list_dir(dir)
        .map_err(|e| LogError::io("list", dir, e))?
        .iter()
        .filter_map(|n| parse_file_name(n))
        .filter(|(_, ext)| *ext == "log")
        .map(|(b, _)| b)
        .collect();
    bases.sort_unstable();
    r.segments = bases.len();
    r.first_offset = bases.first().copied().unwrap_or(0);
    let mut expected_next: Option<u64> = None;
    let mut previous_compacted = false;
    for (i, &base) in bases.iter().enumerate() {
        let last = i + 1 == bases.len();
        let path = dir.join(log_file_name(base));
        let idx_path = dir.join(index_file_name(base));
        let finding = |position, what: String, severity| Finding {
            path: path.clone(),
            position,
            what,
            severity,
            repaired: false,
        };
        let file = fs
            .open(&path, repair)
            .map_err(|e| LogError::io("open", &path, e))?;
        let len = file.size().map_err(|e| LogError::io("stat", &path, e))?;
        r.bytes += len;
        progress(len);
        let compacted = match segment::read_segment_header(file.as_ref(), &path, len) {
            Ok(Some(h)) if h.base == base => h.compacted,
            Ok(Some(h)) => {
                r.findings.push(finding(
                    16,
                    format!("header says base offset {}, file name says {base}", h.base),
                    Severity::Corrupt,
                ));
                continue;
            }
            Ok(None) => {
                let sev = if last {
                    Severity::Repairable
                } else {
                    Severity::Corrupt
                };
                r.findings.push(finding(
                    0,
                    format!("{len} bytes: shorter than a segment header"),
                    sev,
                ));
                continue;
            }
            Err(e) => {
                r.findings
                    .push(finding(0, e.to_string(), Severity::Corrupt));
                continue;
            }
        };
        if let Some(prev) = expected_next {
            // A compacted segment may end before the next one starts (its last records were
            // superseded).
            if prev > base || (prev < base && !previous_compacted && !compacts) {
                r.findings.push(finding(
                    SEGMENT_HEADER_LEN,
                    format!("segment starts at offset {base}, the previous one ends at {prev}"),
                    Severity::Corrupt,
                ));
            }
        }
        let opts = segment::ScanOptions {
            index_interval: 4096,
            verify_records: true,
            gaps: compacted,
        };
        previous_compacted = compacted;
        let scan = segment::scan_resync(file.as_ref(), &path, len, base, opts)?;
        r.batches += scan.batches;
        r.records += scan.records;
        r.next_offset = scan.next_offset;
        expected_next = Some(scan.next_offset);
        let index = segment::read_index(fs, &idx_path)?;
        let sealed = !last || matches!(&index, Some(Ok(idx)) if idx.log_len == len);
        let mut dropped = segment::read_dropped(fs, dir, base)?;
        let before = dropped.len();
        // Damage running to the end of a sealed segment: its offsets reach the next one.
        let sealed_tail = match (&scan.stop, bases.get(i + 1)) {
            (Some((pos, why)), Some(&next)) if sealed => Some((*pos, why.to_string(), next)),
            _ => None,
        };
        let damaged = scan
            .damage
            .iter()
            .map(|d| {
                let what = format!(
                    "{d}; the intact frames after it are kept (brook serve skips the range)"
                );
                (d.start, (d.first_offset, d.next_offset), what)
            })
            .chain(sealed_tail.iter().map(|(pos, why, next)| {
                let what = format!("{why}: offsets {}..{next} lost", scan.next_offset);
                (*pos, (scan.next_offset, *next), what)
            }));
        for (pos, range, what) in damaged {
            if dropped.contains(&range) {
                continue;
            }
            let mut f = finding(pos, what, Severity::Corrupt);
            if mode == Repair::DropCorrupt {
                dropped.push(range);
                f.what
                    .push_str("; dropped: no longer reported, the offsets stay lost");
                f.severity = Severity::Repairable;
                f.repaired = true;
            }
            r.findings.push(f);
        }
        if dropped.len() != before {
            segment::write_dropped(fs, dir, base, &dropped)?;
        }
        if let Some((pos, why)) = &scan.stop {
            if sealed {
                if sealed_tail.is_none() {
                    r.findings
                        .push(finding(*pos, format!("{why}"), Severity::Corrupt));
                }
                continue;
            }
            let cut = len - pos;
            let mut f = finding(
                *pos,
                format!(
                    "torn tail: {why}; {cut} bytes after offset {} would be cut",
                    scan.next_offset
                ),
                Severity::Repairable,
            );
            if repair {
                file.set_len(*pos)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| LogError::io("truncate", &path, e))?;
                f.repaired = true;
                r.bytes -= cut;
            }
            r.findings.push(f);
            continue;
        }
        if !scan.damage.is_empty() {
            // Brook keeps no index for a damaged segment (it scans it at every start).
            continue;
        }
        if !sealed {
            if let Some(Ok(_)) | Some(Err(_)) = &index {
                let mut f = finding(
                    0,
                    format!("stale index {} for the active segment", idx_path.display()),
                    Severity::Repairable,
                );
                if repair {
                    fs.remove_file(&idx_path)
                        .map_err(|e| LogError::io("remove", &idx_path, e))?;
                    f.repaired = true;
                }
                r.findings.push(f);
            }
            continue;
        }
        // A compacted segment may end anywhere from its last record to the next segment's start.
        let latest_end = match bases.get(i + 1) {
            Some(&next) if compacted || compacts => next,
            _ => scan.next_offset,
        };
        let problem = match &index {
            None => Some("index missing".to_string()),
            Some(Err(why)) => Some(format!("index unusable: {why}")),
            Some(Ok(idx)) => index_disagrees(file.as_ref(), idx, &scan, len, latest_end),
        };
        if let Some(what) = problem {
            let mut f = finding(0, what, Severity::Repairable);
            if repair {
                let mut idx = scan.segment_index(base, len);
                idx.next_offset = latest_end;
                segment::write_index(fs, dir, &idx)?;
                f.repaired = true;
            }
            r.findings.push(f);
        }
    }
    Ok(r)
}

/// Why an index does not describe its log, if it does not. Its end offset must lie between the
/// log's (one past its last record) and `latest_end`.
fn index_disagrees(
    file: &dyn crate::log::fs::File,
    idx: &SegmentIndex,
    scan: &segment::Scan,
    len: u64,
    latest_end: u64,
) -> Option<String> {
    if idx.log_len != len {
        return Some(format!(
            "index says the log is {} bytes, it is {len}",
            idx.log_len
        ));
    }
    if idx.next_offset < scan.next_offset || idx.next_offset > latest_end {
        return Some(format!(
            "index says the segment ends at offset {}, the log at {}",
            idx.next_offset, scan.next_offset
        ));
    }
    for e in &idx.entries {
        let pos = u64::from(e.position);
        let want = idx.base_offset + u64::from(e.relative_offset);
        match segment::batch_header_at(file, pos, len.saturating_sub(pos)) {
            Some(h) if h.base_offset == want => {}
            _ => {
                return Some(format!(
                    "index entry for offset {want} points at byte {pos}, where no such batch starts"
                ));
            }
        }
    }
    None
}
