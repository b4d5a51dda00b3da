//! The write path's division of labour: an appender only encodes into memory; segment rolls
//! (the last write, fsync and index of the full segment, the new file) and the removal of
//! deleted segments happen on the partition's flusher thread. And when a roll cannot be
//! finished (no space for the index), the batches after it fail cleanly and the next append
//! rolls.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::*;
use brook::log::clock::ManualTime;
use brook::log::fs::{FaultFs, File, Fs, StdFs};
use brook::log::segment::log_file_name;
use brook::log::{Durability, FullReason, LogError, OnFull, PartitionChoice};
use brook::units::ByteSize;

/// Wraps a filesystem and, once armed, notes which thread did each write-side operation.
#[derive(Clone)]
struct WhoFs {
    inner: Arc<dyn Fs>,
    armed: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl WhoFs {
    fn new(inner: Arc<dyn Fs>) -> Self {
        WhoFs {
            inner,
            armed: Arc::new(AtomicBool::new(false)),
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn note(&self, op: &str, path: &Path) {
        if self.armed.load(Ordering::SeqCst) {
            let thread = std::thread::current().name().unwrap_or("?").to_string();
            self.seen
                .lock()
                .unwrap()
                .push((format!("{op} {}", path.display()), thread));
        }
    }

    fn wrap(&self, file: Arc<dyn File>, path: &Path) -> Arc<dyn File> {
        Arc::new(WhoFile {
            inner: file,
            fs: self.clone(),
            path: path.display().to_string(),
        })
    }
}

struct WhoFile {
    inner: Arc<dyn File>,
    fs: WhoFs,
    path: String,
}

impl File for WhoFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.fs.note("write", Path::new(&self.path));
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.note("fsync", Path::new(&self.path));
        self.inner.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.note("truncate", Path::new(&self.path));
        self.inner.set_len(len)
    }
}

impl Fs for WhoFs {
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        self.note("create", path);
        let f = self.inner.create(path)?;
        Ok(self.wrap(f, path))
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn File>> {
        let f = self.inner.open(path, write)?;
        Ok(self.wrap(f, path))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.note("mkdir", path);
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.note("remove", path);
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.note("remove dir", path);
        self.inner.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.note("rename", from);
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.note("fsync dir", path);
        self.inner.sync_dir(path)
    }
    fn available_space(&self, path: &Path) -> io::Result<u64> {
        self.inner.available_space(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
}

fn ring_topic() -> brook::log::TopicConfig {
    brook::log::TopicConfig {
        retention_size: ByteSize::kib(256),
        on_full: OnFull::DropOldest,
        ..small_topic(1)
    }
}

#[test]
fn rolls_and_deletes_do_their_file_io_on_the_flusher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = WhoFs::new(Arc::new(StdFs));
    let time = ManualTime::new(T0);
    let topics = [("t", ring_topic())];
    let store = open(
        dir.path(),
        Arc::new(fs.clone()),
        &time,
        no_limits(),
        &topics,
    );
    fs.armed.store(true, Ordering::SeqCst);
    // About 1 MiB through 64 KiB segments and a 256 KiB ring: rolls and deletions all along,
    // with every durability.
    let durabilities = [Durability::None, Durability::Written, Durability::Durable];
    let mut n = 0;
    for i in 0..1000u64 {
        append(&store, "t", 0, n, 10, durabilities[(i % 3) as usize]);
        n += 10;
    }
    let p = Arc::clone(store.topic("t").unwrap().partition(0).unwrap());
    p.flush(true).expect("flush");
    let seen = fs.seen.lock().unwrap().clone();
    let me = std::thread::current().name().unwrap_or("?").to_string();
    let rolls = seen
        .iter()
        .filter(|(op, _)| op.starts_with("create"))
        .count();
    let removals = seen
        .iter()
        .filter(|(op, _)| op.starts_with("remove"))
        .count();
    assert!(rolls >= 10, "segments created: {rolls}");
    assert!(removals >= 10, "files removed: {removals}");
    let here: Vec<_> = seen.iter().filter(|(_, t)| *t == me).collect();
    assert!(
        here.is_empty(),
        "file I/O on the appender's thread: {here:?}"
    );
    assert!(
        seen.iter().all(|(_, t)| t.starts_with("brook-flush")),
        "{seen:?}"
    );
    // What the ring holds is a contiguous run of the newest records, the same after a reopen,
    // and the deleted segments' files are gone.
    let got = read_all(&store, "t", 0);
    assert!(!got.is_empty());
    let first = got[0].0;
    assert_eq!(got.last().unwrap().0, n - 1);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, (o, _))| *o == first + i as u64)
    );
    assert!(got.iter().all(|(o, v)| *v == value(*o)));
    drop(p);
    drop(store);
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    assert_eq!(read_all(&store, "t", 0), got);
    let pdir = dir.path().join("t").join("0");
    let segments = std::fs::read_dir(&pdir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
        })
        .count();
    assert!(
        (2..=6).contains(&segments),
        "{segments} segment files for a 256 KiB ring of 64 KiB segments"
    );
    assert!(
        !pdir.join(log_file_name(0)).exists(),
        "the first segment is deleted"
    );
}

#[test]
fn a_roll_that_cannot_write_its_index_fails_the_batches_after_it_and_is_tried_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let time = ManualTime::new(T0);
    let topics = [("t", small_topic(1))];
    let store = open(
        dir.path(),
        Arc::new(fs.clone()),
        &time,
        no_limits(),
        &topics,
    );
    // Fill the first segment to just below its end, everything written and synced.
    let p = Arc::clone(store.topic("t").unwrap().partition(0).unwrap());
    let mut n = 0;
    while p.status().bytes < 60 * 1024 {
        append(&store, "t", 0, n, 10, Durability::Durable);
        n += 10;
    }
    assert_eq!(p.status().segments, 1);
    // No space at all: the seal's index cannot be written.
    fs.set_space_left(Some(0));
    let err = store
        .append(
            "t",
            PartitionChoice::Id(0),
            &batch(n, 100),
            Durability::Written,
        )
        .expect_err("no space for the roll");
    assert!(
        matches!(
            err,
            LogError::LogFull {
                reason: FullReason::NoSpace,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(p.status().segments, 1, "no half-made segment");
    assert_eq!(
        read_all(&store, "t", 0).len() as u64,
        n,
        "nothing before it lost"
    );
    fs.set_space_left(None);
    let (_, a) = store
        .append(
            "t",
            PartitionChoice::Id(0),
            &batch(n, 100),
            Durability::Durable,
        )
        .expect("the roll succeeds once there is space");
    assert_eq!(a.base_offset, n, "the failed batch's offsets are reused");
    assert_eq!(p.status().segments, 2);
    let want = read_all(&store, "t", 0);
    assert_eq!(want.len() as u64, n + 100);
    assert!(want.iter().all(|(o, v)| *v == value(*o)));
    drop(p);
    drop(store);
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    assert_eq!(read_all(&store, "t", 0), want);
}

/// A runtime for a reader thread that waits on a partition's watches.
fn thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn concurrent_appenders_and_a_reader_across_many_rolls_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(T0);
    let topics = [("t", small_topic(1))];
    let store = Arc::new(open(
        dir.path(),
        Arc::new(StdFs),
        &time,
        no_limits(),
        &topics,
    ));
    let p = Arc::clone(store.topic("t").unwrap().partition(0).unwrap());
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let durabilities = [Durability::None, Durability::Written, Durability::Durable];
                for i in 0..300u64 {
                    let first = (w * 300 + i) * 5;
                    append(
                        &store,
                        "t",
                        0,
                        first,
                        5,
                        durabilities[((w + i) % 3) as usize],
                    );
                }
            })
        })
        .collect();
    // A reader follows the written end meanwhile: every read succeeds and offsets run on.
    let reader = {
        let p = Arc::clone(&p);
        std::thread::spawn(move || {
            let rt = thread_runtime();
            let mut next = 0u64;
            let mut values = Vec::new();
            while next < 6000 {
                let r = p
                    .read(next, 64 * 1024, brook::log::Visibility::Written)
                    .expect("read during rolls");
                for b in r.batches() {
                    for rec in b.records() {
                        let rec = rec.expect("record");
                        assert_eq!(rec.offset, next);
                        next += 1;
                        values.push(rec.value.unwrap_or_default().to_vec());
                    }
                }
                if r.frames.is_empty() {
                    // Wait for the written end to move past what was read.
                    let mut end = p.watch_end();
                    rt.block_on(end.wait_for(|e| *e > next))
                        .expect("partition open");
                }
            }
            values
        })
    };
    for w in writers {
        w.join().expect("writer");
    }
    p.flush(true).expect("flush");
    let mut got = reader.join().expect("reader");
    assert_eq!(got.len(), 6000);
    got.sort();
    let mut want: Vec<Vec<u8>> = (0..6000).map(value).collect();
    want.sort();
    assert_eq!(got, want);
    assert!(p.status().segments > 5, "{} segments", p.status().segments);
    drop(p);
    let Ok(store) = Arc::try_unwrap(store) else {
        panic!("store still shared")
    };
    drop(store);
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    assert_eq!(read_all(&store, "t", 0).len(), 6000);
}

#[test]
fn followers_of_the_end_get_each_write_from_memory_and_idle_ones_cost_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(T0);
    let topics = [("t", small_topic(1))];
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    let p = Arc::clone(store.topic("t").unwrap().partition(0).unwrap());
    let mut tail = p.tail();
    let mut next = 0u64;
    // Enough to roll a few times: the seal's last write is shared like any other.
    for i in 0..600u64 {
        append(&store, "t", 0, i * 10, 10, Durability::Written);
        let w = tail
            .borrow_and_update()
            .clone()
            .expect("the write is shared");
        assert!(
            w.first_offset <= next && next < w.next_offset,
            "{w:?} at {next}"
        );
        for b in w.batches() {
            for r in b.records() {
                let r = r.expect("record");
                if r.offset >= next {
                    assert_eq!(r.offset, next);
                    assert_eq!(r.value, Some(&value(next)[..]));
                    next += 1;
                }
            }
        }
        assert_eq!(next, w.next_offset);
    }
    assert_eq!(next, 6000);
    assert!(p.status().segments > 3, "{} segments", p.status().segments);
    drop(tail);
    append(&store, "t", 0, 6000, 10, Durability::Written);
    assert!(
        p.tail().borrow().is_none(),
        "nothing kept while no one follows"
    );
}

/// A follower busy while a few small writes went by (an MQTT dispatcher on a worker serving
/// many connections) finds them all in memory; a bigger gap is left to a read of the log.
#[test]
fn a_follower_that_missed_a_few_writes_takes_them_from_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(T0);
    let topics = [("t", small_topic(1))];
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    let p = Arc::clone(store.topic("t").unwrap().partition(0).unwrap());
    let tail = p.tail();
    // Three writes of 10 records, not looked at in between.
    for i in 0..3u64 {
        append(&store, "t", 0, i * 10, 10, Durability::Written);
    }
    let w = tail.borrow().clone().expect("shared");
    assert_eq!((w.first_offset, w.next_offset), (0, 30));
    let offsets = |from| -> Vec<u64> {
        w.batches_from(from)
            .flat_map(|b| {
                b.records()
                    .map(|r| r.expect("record").offset)
                    .collect::<Vec<_>>()
            })
            .filter(|o| *o >= from)
            .collect()
    };
    assert_eq!(offsets(0), (0..30).collect::<Vec<_>>());
    assert_eq!(offsets(17), (17..30).collect::<Vec<_>>());
    // Only the rounds that hold offsets from 20 on are walked.
    assert_eq!(w.batches_from(20).count(), 1);
    // Many more writes: only the last few are held.
    for i in 3..40u64 {
        append(&store, "t", 0, i * 10, 10, Durability::Written);
    }
    let w = tail.borrow().clone().expect("shared");
    assert_eq!(w.next_offset, 400);
    assert!(
        (360..400).contains(&w.first_offset),
        "holds from {}",
        w.first_offset
    );
}

/// A flush round gathers durable appenders with the lock released; an appender may roll the
/// segment meanwhile. The round must then write (and claim written, durable, shared with the
/// tail) only the active segment's frames, not the offsets already given out in the next one:
/// a round that claimed them moved the dispatchers of MQTT subscribers past records no one had
/// written yet, and those records were never delivered live.
#[test]
fn a_round_that_gathers_across_a_roll_claims_only_what_it_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(T0);
    let topics = [("t", small_topic(1))];
    let fs = brook::log::fs::SlowSyncFs::new(StdFs, std::time::Duration::from_millis(2));
    let store = Arc::new(open(dir.path(), Arc::new(fs), &time, no_limits(), &topics));
    let p = Arc::clone(store.topic("t").unwrap().partition(0).unwrap());
    const WRITERS: u64 = 6;
    const EACH: u64 = 150;
    const TOTAL: u64 = WRITERS * EACH * 5;
    let mut tail = p.tail();
    let follower = {
        let p = Arc::clone(&p);
        std::thread::spawn(move || {
            let rt = thread_runtime();
            let mut seen = 0u64;
            while seen < TOTAL {
                let Some(w) = tail.borrow_and_update().clone() else {
                    rt.block_on(tail.changed()).expect("partition open");
                    continue;
                };
                // Every shared write holds exactly the records it claims.
                let offsets: Vec<u64> = w
                    .batches()
                    .flat_map(|b| {
                        b.records()
                            .map(|r| r.expect("record").offset)
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let want: Vec<u64> = (w.first_offset..w.next_offset).collect();
                assert_eq!(
                    offsets, want,
                    "a shared write claims offsets it does not hold"
                );
                // And a reader finds the last record claimed written.
                let last = w.next_offset - 1;
                let r = p
                    .read(last, 1 << 20, brook::log::Visibility::Written)
                    .expect("read");
                assert!(
                    r.next_offset > last,
                    "record {last} claimed written, not found"
                );
                seen = seen.max(w.next_offset);
                if seen < TOTAL {
                    rt.block_on(tail.changed()).expect("partition open");
                }
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..EACH {
                    append(&store, "t", 0, (w * EACH + i) * 5, 5, Durability::Durable);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    follower.join().expect("follower");
    assert!(p.status().segments > 3, "{} segments", p.status().segments);
    // Everything reads back in order, durable end included.
    let r = read_all(&store, "t", 0);
    assert_eq!(r.len() as u64, TOTAL);
    assert!(r.iter().enumerate().all(|(i, (o, _))| *o == i as u64));
    assert_eq!(p.status().durable_offset, TOTAL);
}

#[test]
fn a_ring_keeps_taking_appends_while_its_flusher_is_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(T0);
    // Every fsync takes 20 ms: the appenders get several segments ahead of the seals.
    let fs = brook::log::fs::SlowSyncFs::new(StdFs, std::time::Duration::from_millis(20));
    let topics = [("t", ring_topic())];
    let store = open(dir.path(), Arc::new(fs), &time, no_limits(), &topics);
    let p = Arc::clone(store.topic("t").unwrap().partition(0).unwrap());
    let mut n = 0;
    for _ in 0..3000u64 {
        append(&store, "t", 0, n, 10, Durability::None);
        n += 10;
    }
    p.flush(true).expect("flush");
    let limit = 256 * 1024;
    assert!(
        p.status().bytes <= limit,
        "{} bytes over a retention_size of {limit}",
        p.status().bytes
    );
    let got = read_all(&store, "t", 0);
    assert_eq!(got.last().unwrap().0, n - 1);
    let first = got[0].0;
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, (o, _))| *o == first + i as u64)
    );
}

#[test]
fn a_partition_that_outlives_its_store_still_writes_and_drops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(T0);
    let topics = [("t", small_topic(2))];
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    let t = store.topic("t").unwrap();
    let (p0, p1) = (
        Arc::clone(t.partition(0).unwrap()),
        Arc::clone(t.partition(1).unwrap()),
    );
    drop(t);
    // Buffered and not yet written when the store goes.
    p1.append(&batch(0, 5), Durability::None, T0)
        .expect("append");
    drop(store);
    // The flusher threads stay while a partition is open: a durable append still completes.
    let a = p0
        .append(&batch(0, 5), Durability::Durable, T0)
        .expect("durable append after the store closed");
    assert_eq!(a.next_offset, 5);
    drop(p0);
    // Dropped, the other one writes out what it buffered itself.
    drop(p1);
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    assert_eq!(read_all(&store, "t", 0).len(), 5);
    assert_eq!(read_all(&store, "t", 1).len(), 5);
}
