//! Crash and fault-injection tests on real files: power loss (unsynced bytes vanish or survive
//! in part), a torn last batch at every byte, short writes with ENOSPC, failing fsyncs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::*;
use brook::log::clock::ManualTime;
use brook::log::fs::{FaultFs, StdFs};
use brook::log::segment::{SEGMENT_HEADER_LEN, log_file_name};
use brook::log::{Durability, FullReason, LogError, PartitionChoice, Store};
use proptest::prelude::*;

fn partition_dir(root: &Path, topic: &str, p: u32) -> PathBuf {
    root.join(topic).join(p.to_string())
}

/// Records acknowledged as durable survive a power cut at any point; what is readable after
/// recovery is exactly an intact prefix of what was appended (no gap, no garbage), whatever part
/// of the unsynced tail the cut left behind.
fn power_loss_case(seed: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let time = ManualTime::new(T0);
    let topics = [("t", small_topic(2))];
    let mut rng = Rng(seed | 1);
    let mut appended: Vec<Vec<u64>> = vec![Vec::new(), Vec::new()]; // value numbers per partition
    let mut durable_upto = [0usize; 2]; // records acknowledged durable per partition
    {
        let store = open(
            dir.path(),
            Arc::new(fs.clone()),
            &time,
            no_limits(),
            &topics,
        );
        let mut next_value = 0u64;
        for _ in 0..(20 + rng.below(60)) {
            let p = rng.below(2) as u32;
            let n = 1 + rng.below(30);
            let d = match rng.below(3) {
                0 => Durability::None,
                1 => Durability::Written,
                _ => Durability::Durable,
            };
            append(&store, "t", p, next_value, n, d);
            appended[p as usize].extend(next_value..next_value + n);
            next_value += n;
            if d == Durability::Durable {
                // Everything before it in this partition is durable too.
                durable_upto[p as usize] = appended[p as usize].len();
            }
        }
        // The store is dropped without any shutdown work that a power cut would not allow...
        drop(store);
    }
    // ...and the cut then drops what was not synced, except a random part of the tail.
    let mut cut_rng = Rng(seed.wrapping_mul(31) | 1);
    fs.power_loss(|_, synced, len| cut_rng.below(len - synced + 1))
        .expect("power loss");

    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    for p in 0..2u32 {
        let got = read_all(&store, "t", p);
        let want = &appended[p as usize];
        assert!(
            got.len() >= durable_upto[p as usize],
            "seed {seed}: partition {p} lost durable records: {} readable, {} acknowledged durable",
            got.len(),
            durable_upto[p as usize]
        );
        assert!(
            got.len() <= want.len(),
            "seed {seed}: more records than appended"
        );
        for (i, (offset, v)) in got.iter().enumerate() {
            assert_eq!(*offset, i as u64, "seed {seed}: offsets are dense from 0");
            assert_eq!(v, &value(want[i]), "seed {seed}: record {i} intact");
        }
    }
    // The recovered store accepts new appends that continue the offsets.
    let (_, a) = store
        .append(
            "t",
            PartitionChoice::Id(0),
            &batch(9999, 1),
            Durability::Durable,
        )
        .expect("append after recovery");
    assert_eq!(a.base_offset, read_all(&store, "t", 0).len() as u64 - 1);
}

#[test]
fn power_loss_keeps_durable_records_and_an_intact_prefix() {
    for seed in 1..40u64 {
        power_loss_case(seed * 7919);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn power_loss_property(seed in any::<u64>()) {
        power_loss_case(seed);
    }
}

/// Cut the active segment at every byte offset inside its last batch: recovery keeps exactly
/// the batches before it and logs the cut; the store goes on from there.
#[test]
fn torn_last_batch_at_every_byte() {
    let src = tempfile::tempdir().expect("tempdir");
    let topics = [("t", small_topic(1))];
    let (last_start, len) = {
        let store = open_std(src.path(), &topics);
        append(&store, "t", 0, 0, 5, Durability::Durable);
        append(&store, "t", 0, 5, 5, Durability::Durable);
        let before = file_len(&partition_dir(src.path(), "t", 0).join(log_file_name(0)));
        append(&store, "t", 0, 10, 7, Durability::Durable);
        let after = file_len(&partition_dir(src.path(), "t", 0).join(log_file_name(0)));
        (before, after)
    };
    assert!(last_start > SEGMENT_HEADER_LEN && len > last_start);
    for cut in last_start..len {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(src.path(), dir.path());
        let seg = partition_dir(dir.path(), "t", 0).join(log_file_name(0));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .and_then(|f| f.set_len(cut))
            .expect("truncate");
        let store = open_std(dir.path(), &topics);
        let got = read_all(&store, "t", 0);
        assert_eq!(got.len(), 10, "cut at {cut}: the two intact batches remain");
        assert_eq!(
            file_len(&seg),
            last_start,
            "cut at {cut}: the torn bytes are gone"
        );
        append(&store, "t", 0, 100, 1, Durability::Durable);
        let got = read_all(&store, "t", 0);
        assert_eq!(got.last().map(|(o, _)| *o), Some(10));
        assert_eq!(got.last().map(|(_, v)| v.clone()), Some(value(100)));
    }
}

/// A garbage tail after the last intact batch (e.g. a block of zeroes) is cut too.
#[test]
fn garbage_tail_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topics = [("t", small_topic(1))];
    {
        let store = open_std(dir.path(), &topics);
        append(&store, "t", 0, 0, 3, Durability::Durable);
    }
    let seg = partition_dir(dir.path(), "t", 0).join(log_file_name(0));
    let mut bytes = std::fs::read(&seg).expect("read");
    let good = bytes.len() as u64;
    bytes.extend(std::iter::repeat_n(0u8, 4096));
    std::fs::write(&seg, &bytes).expect("write");
    let store = open_std(dir.path(), &topics);
    assert_eq!(read_all(&store, "t", 0).len(), 3);
    assert_eq!(file_len(&seg), good);
}

/// A segment file created but cut before its header was complete is rebuilt empty.
#[test]
fn torn_segment_header_is_rewritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topics = [("t", small_topic(1))];
    drop(open_std(dir.path(), &topics));
    let seg = partition_dir(dir.path(), "t", 0).join(log_file_name(0));
    std::fs::write(&seg, b"BROOK").expect("write");
    let store = open_std(dir.path(), &topics);
    append(&store, "t", 0, 0, 2, Durability::Durable);
    assert_eq!(read_all(&store, "t", 0).len(), 2);
}

/// A write that runs out of space fails with "log full (ENOSPC)", leaves no partial batch on
/// disk, fails the batches that were buffered with it, and the partition works again once
/// space is back.
#[test]
fn enospc_short_write_is_cut_back() {
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
    append(&store, "t", 0, 0, 4, Durability::Durable);
    fs.set_space_left(Some(50));
    let err = store
        .append(
            "t",
            PartitionChoice::Id(0),
            &batch(4, 10),
            Durability::Written,
        )
        .expect_err("no space");
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
    fs.set_space_left(None);
    assert_eq!(read_all(&store, "t", 0).len(), 4);
    let (_, a) = store
        .append(
            "t",
            PartitionChoice::Id(0),
            &batch(20, 2),
            Durability::Durable,
        )
        .expect("append after space returns");
    assert_eq!(a.base_offset, 4, "the failed batch's offsets are reused");
    drop(store);
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    let got = read_all(&store, "t", 0);
    assert_eq!(got.len(), 6);
    assert_eq!(got[4].1, value(20));
}

/// Failed appends are counted by reason and, while the storage fails them, the store says so
/// (`/healthz` reads it): ENOSPC until a write succeeds again; a read-only filesystem (EROFS on
/// the write, and on the cut back) as a read-only failure, never as a failed fsync.
#[test]
fn failed_appends_are_counted_by_reason_and_failing_until_a_write_succeeds() {
    use brook::log::AppendFailure;
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let time = ManualTime::new(T0);
    let topics = [("t", small_topic(2))];
    let store = open(
        dir.path(),
        Arc::new(fs.clone()),
        &time,
        no_limits(),
        &topics,
    );
    let count = |why: AppendFailure| {
        let i = AppendFailure::ALL
            .iter()
            .position(|f| *f == why)
            .expect("reason");
        store.usage().append_failures[i].load(std::sync::atomic::Ordering::Relaxed)
    };
    append(&store, "t", 0, 0, 4, Durability::Durable);
    assert_eq!(store.usage().failing(), None);
    fs.set_space_left(Some(50));
    store
        .append(
            "t",
            PartitionChoice::Id(0),
            &batch(4, 10),
            Durability::Written,
        )
        .expect_err("no space");
    assert_eq!(count(AppendFailure::NoSpace), 1);
    let failing = store.usage().failing().expect("failing after ENOSPC");
    assert!(failing.contains("ENOSPC"), "{failing}");
    fs.set_space_left(None);
    append(&store, "t", 0, 4, 2, Durability::Durable);
    assert_eq!(store.usage().failing(), None, "a write succeeded since");

    fs.set_read_only(true);
    let err = store
        .append(
            "t",
            PartitionChoice::Id(1),
            &batch(0, 2),
            Durability::Durable,
        )
        .expect_err("read-only");
    assert_eq!(count(AppendFailure::ReadOnly), 1);
    let failing = store.usage().failing().expect("failing on EROFS");
    for text in [err.to_string(), failing] {
        assert!(text.contains("Read-only file system"), "{text}");
        assert!(!text.contains("fsync"), "not an fsync failure: {text}");
    }
    // The cut back failed too: the partition refuses writes until a restart, for the same cause.
    store
        .append(
            "t",
            PartitionChoice::Id(1),
            &batch(2, 2),
            Durability::Durable,
        )
        .expect_err("refused");
    assert_eq!(count(AppendFailure::ReadOnly), 2);
    assert_eq!(count(AppendFailure::Refused) + count(AppendFailure::Io), 0);
}

/// After an fsync error the partition refuses writes (fsync errors are not retryable) until the
/// store is reopened; what was durable before is intact; other partitions are unaffected.
#[test]
fn fsync_error_poisons_the_partition_until_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let time = ManualTime::new(T0);
    let topics = [("t", small_topic(2))];
    let store = open(
        dir.path(),
        Arc::new(fs.clone()),
        &time,
        no_limits(),
        &topics,
    );
    append(&store, "t", 0, 0, 3, Durability::Durable);
    append(&store, "t", 1, 0, 3, Durability::Written);
    fs.set_fail_fsync(true);
    let err = store
        .append(
            "t",
            PartitionChoice::Id(0),
            &batch(3, 2),
            Durability::Durable,
        )
        .expect_err("fsync fails");
    assert!(matches!(err, LogError::Poisoned { .. }), "{err}");
    fs.set_fail_fsync(false);
    let err = store
        .append(
            "t",
            PartitionChoice::Id(0),
            &batch(5, 1),
            Durability::Written,
        )
        .expect_err("still poisoned");
    assert!(matches!(err, LogError::Poisoned { .. }), "{err}");
    assert!(
        store.topic("t").expect("t").partitions()[0]
            .status()
            .poisoned
            .is_some()
    );
    append(&store, "t", 1, 3, 1, Durability::Written);
    drop(store);
    let store = open(dir.path(), Arc::new(fs), &time, no_limits(), &topics);
    assert!(read_all(&store, "t", 0).len() >= 3);
    append(&store, "t", 0, 50, 1, Durability::Durable);
    assert_eq!(read_all(&store, "t", 1).len(), 4);
}

/// Many concurrent durable producers share fsyncs (group commit) and every acknowledged record
/// is there afterwards.
#[test]
fn group_commit_shares_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let time = ManualTime::new(T0);
    let topics = [("t", small_topic(1))];
    let store = Arc::new(open(
        dir.path(),
        Arc::new(fs.clone()),
        &time,
        no_limits(),
        &topics,
    ));
    let syncs_before = fs.syncs();
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    append(&store, "t", 0, t * 1000 + i, 1, Durability::Durable);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("producer");
    }
    let syncs = fs.syncs() - syncs_before;
    let got = read_all(&store, "t", 0);
    assert_eq!(got.len(), 800);
    assert!(
        syncs < 800,
        "800 durable appends from 16 producers took {syncs} fsyncs: no group commit"
    );
}

/// Producers that do not wait for each acknowledgement (a stream of durable appends) share
/// one fsync across a linger: the round writes what keeps arriving and syncs once, instead of
/// once per fsync's worth of arrivals. Every acknowledgement still survives a power cut that
/// keeps nothing unsynced.
#[test]
fn a_stream_of_durable_appends_shares_an_fsync_across_a_linger() {
    const SYNC: std::time::Duration = std::time::Duration::from_millis(1);
    const PRODUCERS: u64 = 4;
    const EACH: u64 = 400;
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let time = ManualTime::new(T0);
    let topic = brook::log::TopicConfig {
        segment_size: brook::units::ByteSize::mib(8),
        ..small_topic(1)
    };
    let topics = [("t", topic)];
    let slow = brook::log::fs::SlowSyncFs::new(fs.clone(), SYNC);
    let store = Arc::new(open(
        dir.path(),
        Arc::new(slow),
        &time,
        no_limits(),
        &topics,
    ));
    let syncs_before = fs.syncs();
    let started = std::time::Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut tickets = Vec::new();
                for i in 0..EACH {
                    let b = batch(t * EACH + i, 1);
                    let (_, ticket) = store
                        .append_start("t", PartitionChoice::Id(0), &b, Durability::Durable)
                        .expect("append");
                    tickets.push(ticket);
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                tickets
            })
        })
        .collect();
    let tickets: Vec<_> = producers
        .into_iter()
        .flat_map(|p| p.join().expect("producer"))
        .collect();
    let streamed = started.elapsed();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for t in tickets {
        rt.block_on(t.finish()).expect("acknowledged durable");
    }
    let syncs = (fs.syncs() - syncs_before).max(1);
    // Without a linger the rounds follow each other, an fsync each (SYNC) while the stream
    // lasts; with it, a round also spans the linger (up to four fsyncs).
    let per_sync = streamed / u32::try_from(syncs).expect("few fsyncs");
    assert!(
        per_sync >= SYNC * 8 / 5,
        "{syncs} fsyncs in {streamed:?} of streaming ({per_sync:?} apart): no linger"
    );
    drop(store);
    fs.power_loss(|_, _, _| 0).expect("power loss");
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    assert_eq!(
        read_all(&store, "t", 0).len() as u64,
        PRODUCERS * EACH,
        "acknowledged records lost in a power cut"
    );
}

/// A segment file written by a newer Brook is refused with a clear error, never misread.
#[test]
fn newer_segment_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topics = [("t", small_topic(1))];
    {
        let store = open_std(dir.path(), &topics);
        append(&store, "t", 0, 0, 2, Durability::Durable);
    }
    let seg = partition_dir(dir.path(), "t", 0).join(log_file_name(0));
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes[8] = 9;
    std::fs::write(&seg, &bytes).expect("write");
    let topics: Vec<(String, _)> = vec![("t".into(), small_topic(1))];
    let err = Store::open(dir.path(), no_limits(), &topics).expect_err("refused");
    assert!(
        matches!(err, LogError::UnsupportedVersion { found: 9, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").len()
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// `(offset, key, value)` of a record.
type KeyedRecord = (u64, Option<Vec<u8>>, Option<Vec<u8>>);
/// Every record of partition 0 of a topic, in order.
type Keyed = Vec<KeyedRecord>;
/// A state a cut can leave: its name, how to make it in a partition directory, what it reads,
/// and what it reads once compacted again.
type CutCase<'a> = (&'a str, Box<dyn Fn(&Path) + 'a>, Keyed, Keyed);

fn read_keyed(store: &Store, topic: &str) -> Keyed {
    let p = Arc::clone(
        store
            .topic(topic)
            .expect("topic")
            .partition(0)
            .expect("partition"),
    );
    let mut from = p.log_start();
    let mut out = Vec::new();
    loop {
        let r = p
            .read(from, 16 * 1024, brook::log::Visibility::Written)
            .expect("read");
        if r.frames.is_empty() {
            assert!(
                from >= r.high_watermark,
                "a read at {from} below the end returned nothing"
            );
            return out;
        }
        for b in r.batches() {
            for rec in b.records() {
                let rec = rec.expect("record decodes");
                if rec.offset >= from {
                    let last = out.last().map(|(o, _, _)| *o);
                    assert!(last < Some(rec.offset), "offsets only grow");
                    out.push((
                        rec.offset,
                        rec.key.map(<[u8]>::to_vec),
                        rec.value.map(<[u8]>::to_vec),
                    ));
                }
            }
        }
        from = r.next_offset;
    }
}

/// Asserts `got == want`, naming the first record where they part (not the whole lists).
fn same(got: &Keyed, want: &Keyed, what: &str) {
    let show = |r: Option<&KeyedRecord>| {
        r.map(|(o, k, v)| {
            let t = |b: &Option<Vec<u8>>| {
                b.as_ref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_string())
            };
            format!("{o} {:?} {:?}", t(k), t(v))
        })
    };
    if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        panic!(
            "{what}: {} records read, {} wanted; first difference at {i}: read {:?}, wanted {:?}",
            got.len(),
            want.len(),
            show(got.get(i)),
            show(want.get(i))
        );
    }
}

/// What compaction must leave: every keyless record, and the newest record of each key (a
/// tombstone too, unless `drop_tombstones`), at its offset.
fn compacted_view(all: &Keyed, drop_tombstones: bool) -> Keyed {
    let mut newest = std::collections::HashMap::new();
    for (o, k, _) in all {
        if let Some(k) = k {
            newest.insert(k.clone(), *o);
        }
    }
    all.iter()
        .filter(|(o, k, v)| match k {
            None => true,
            Some(k) => newest[k] == *o && !(drop_tombstones && v.is_none()),
        })
        .cloned()
        .collect()
}

fn compact_topic() -> brook::log::TopicConfig {
    brook::log::TopicConfig {
        cleanup: brook::log::Cleanup::Compact,
        ..small_topic(1)
    }
}

/// 30 keys written over and over (some deleted with a tombstone), keyless records between:
/// compaction keeps exactly the newest record of each key and every keyless one, at their
/// offsets, reads skip the gaps, the segments shrink, and appends go on at the right offset.
/// Then every state a cut can leave is opened: the rewrite unfinished (its `.compacting` output
/// present in part), the new segment in place beside the old index, and done; each reads the
/// same records without reporting damage. Past `delete_retention`, tombstones go too.
#[test]
fn compaction_keeps_the_newest_of_each_key_and_survives_a_cut_anywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(T0);
    let topics = [("c", compact_topic())];
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    let mut rng = Rng(7);
    for round in 0..400u64 {
        let mut b = brook::log::BatchBuilder::new();
        for i in 0..5u64 {
            let n = round * 5 + i;
            let key = format!("key-{}", rng.below(30));
            let value = match rng.below(20) {
                0 => None,
                _ => Some(format!("{key}={n}{:>60}", "").into_bytes()),
            };
            let key = (rng.below(10) != 0).then_some(key);
            b.push(
                T0 + n as i64,
                key.as_deref().map(str::as_bytes),
                value.as_deref(),
                &[],
            );
        }
        store
            .append("c", PartitionChoice::Id(0), &b, Durability::Written)
            .expect("append");
    }
    store.flush_all(true).expect("flush");
    let before = read_keyed(&store, "c");
    assert_eq!(before.len(), 2000);
    let pdir = partition_dir(dir.path(), "c", 0);
    let untouched = tempfile::tempdir().expect("tempdir");
    copy_dir(&pdir, untouched.path());
    let bytes_before = store.used_bytes();

    let done = store.compact().expect("compact");
    assert!(done.segments_rewritten > 0, "{done:?}");
    let after = read_keyed(&store, "c");
    // What is left is what was there (same offsets, same contents), less what was removed ...
    let kept: Keyed = before
        .iter()
        .filter(|r| after.contains(r))
        .cloned()
        .collect();
    same(&after, &kept, "records kept as they were");
    assert_eq!((before.len() - after.len()) as u64, done.records_removed);
    // ... and it holds the newest record of each key and every keyless one.
    let needed = compacted_view(&before, false);
    let missing: Vec<_> = needed
        .iter()
        .filter(|r| !after.contains(r))
        .map(|r| r.0)
        .collect();
    assert!(
        missing.is_empty(),
        "newest records lost at offsets {missing:?}"
    );
    assert!(done.records_removed > 500, "{done:?}");
    assert!(store.used_bytes() < bytes_before, "the log shrank");
    assert_eq!(store.records_compacted(), done.records_removed);
    // Reading from inside a gap starts at the next record kept.
    let p = Arc::clone(store.topic("c").expect("t").partition(0).expect("p"));
    let gap = (0..2000u64)
        .find(|o| !after.iter().any(|(a, _, _)| a == o))
        .expect("a gap");
    let r = p
        .read(gap, 1024, brook::log::Visibility::Written)
        .expect("read in a gap");
    let first = r
        .batches()
        .flat_map(|b| b.records().flatten().map(|x| x.offset).collect::<Vec<_>>())
        .find(|&o| o >= gap);
    assert_eq!(first, after.iter().map(|x| x.0).find(|&o| o > gap));
    // A second pass finds nothing worth rewriting.
    assert_eq!(store.compact().expect("again").segments_rewritten, 0);
    // Appends go on after the last offset.
    let (_, a) = store
        .append(
            "c",
            PartitionChoice::Id(0),
            &batch(5000, 1),
            Durability::Durable,
        )
        .expect("append after compaction");
    assert_eq!(a.base_offset, 2000);
    drop(store);
    let done_dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&pdir, done_dir.path());

    // The states a power cut can leave, each opened in the partition's place.
    let rewritten: Vec<u64> = std::fs::read_dir(done_dir.path())
        .expect("list")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().into_string().expect("utf-8");
            let base = name.strip_suffix(".log")?.parse::<u64>().ok()?;
            // Rewritten by the compaction: segment format version 2.
            let new = std::fs::read(done_dir.path().join(&name)).expect("read");
            (new.get(8) == Some(&2)).then_some(base)
        })
        .collect();
    assert!(!rewritten.is_empty());
    let seg = |d: &Path, base: u64| d.join(log_file_name(base));
    let mut appended = after.clone();
    appended.push((2000, Some(b"k5000".to_vec()), Some(value(5000))));
    let cases: [CutCase<'_>; 3] = [
        (
            "cut while writing the new segment",
            Box::new(|d: &Path| {
                copy_dir(untouched.path(), d);
                for &b in &rewritten {
                    let new = std::fs::read(seg(done_dir.path(), b)).expect("read");
                    let tmp = d.join(format!("{}.compacting", log_file_name(b)));
                    std::fs::write(tmp, &new[..new.len() / 2]).expect("write");
                }
            }),
            before.clone(),
            after.clone(),
        ),
        (
            "cut between the segment's rename and the index's",
            Box::new(|d: &Path| {
                copy_dir(untouched.path(), d);
                for &b in &rewritten {
                    std::fs::copy(seg(done_dir.path(), b), seg(d, b)).expect("copy");
                }
            }),
            after.clone(),
            after.clone(),
        ),
        (
            "cut after the compaction and an append",
            Box::new(|d: &Path| copy_dir(done_dir.path(), d)),
            appended.clone(),
            appended,
        ),
    ];
    for (what, make, want, compacted) in cases {
        std::fs::remove_dir_all(&pdir).expect("clear");
        std::fs::create_dir_all(&pdir).expect("mkdir");
        make(&pdir);
        let (store, recovery) = Store::open_with(
            dir.path(),
            Arc::new(StdFs),
            Box::new(time.clone()) as Box<dyn brook::log::clock::TimeSource>,
            no_limits(),
            &[("c".to_string(), compact_topic())],
        )
        .expect("opens");
        assert!(
            recovery.damage.is_empty(),
            "{what}: damage reported {:?}",
            recovery.damage
        );
        same(&read_keyed(&store, "c"), &want, what);
        let leftovers = std::fs::read_dir(&pdir)
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".compacting"))
            })
            .count();
        assert_eq!(leftovers, 0, "{what}: unfinished output removed");
        // And it compacts (again) to the same records.
        store.compact().expect("compact after the cut");
        same(&read_keyed(&store, "c"), &compacted, what);
    }

    // Past delete_retention, tombstones go as well (from sealed segments: keyless records
    // first seal everything written so far).
    time.advance(2 * 86_400_000);
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    let sealed_end = read_keyed(&store, "c").last().expect("records").0 + 1;
    for n in 0..40 {
        let mut b = brook::log::BatchBuilder::new();
        b.push(T0, None, Some(&[b'f'; 4000][..]), &[]);
        let _ = n;
        store
            .append("c", PartitionChoice::Id(0), &b, Durability::Written)
            .expect("filler");
    }
    store.flush_all(true).expect("flush");
    // Keys whose newest record is a tombstone: deleted.
    let mut last = std::collections::HashMap::new();
    for (_, k, v) in read_keyed(&store, "c") {
        if let Some(k) = k {
            last.insert(k, v.is_none());
        }
    }
    let of_deleted_keys = |s: &Store| {
        read_keyed(s, "c")
            .iter()
            .filter(|r| r.0 < sealed_end && r.1.as_ref().is_some_and(|k| last[k]))
            .count()
    };
    assert!(of_deleted_keys(&store) > 0);
    store.compact().expect("compact");
    assert_eq!(
        of_deleted_keys(&store),
        0,
        "past delete_retention a deleted key's tombstone goes, and every older value with it"
    );
}

/// A segment compaction leaves empty is deleted, except the first (the log's start stays); reads
/// from any offset, inside the deleted range too, go on at the next record kept.
#[test]
fn segments_compacted_to_nothing_are_deleted_but_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(T0);
    let topics = [("c", compact_topic())];
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    // One key, written until five segments are sealed.
    let mut n = 0u64;
    while store
        .topic("c")
        .expect("t")
        .partition(0)
        .expect("p")
        .status()
        .segments
        < 6
    {
        let mut b = brook::log::BatchBuilder::new();
        for _ in 0..10 {
            b.push(T0, Some(&b"only"[..]), Some(&value(n)), &[]);
            n += 1;
        }
        store
            .append("c", PartitionChoice::Id(0), &b, Durability::Written)
            .expect("append");
    }
    store.flush_all(true).expect("flush");
    let pdir = partition_dir(dir.path(), "c", 0);
    let logs = |d: &Path| {
        std::fs::read_dir(d)
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count()
    };
    assert_eq!(logs(&pdir), 6);
    let done = store.compact().expect("compact");
    assert_eq!(done.segments_rewritten, 5, "{done:?}");
    assert_eq!(
        logs(&pdir),
        2,
        "the first (emptied) and the active segment are left"
    );
    let p = Arc::clone(store.topic("c").expect("t").partition(0).expect("p"));
    assert_eq!(p.log_start(), 0, "the log still starts at 0");
    let got = read_keyed(&store, "c");
    assert_eq!(got.last().map(|r| r.2.clone()), Some(Some(value(n - 1))));
    assert_eq!(got.last().map(|r| r.0), Some(n - 1));
    for from in [0, 1, n / 2, got[0].0] {
        let r = p
            .read(from, 1024, brook::log::Visibility::Written)
            .expect("read");
        let first = r
            .batches()
            .flat_map(|b| b.records().flatten().map(|x| x.offset).collect::<Vec<_>>())
            .find(|&o| o >= from);
        assert_eq!(first, Some(got[0].0.max(from)), "read from {from}");
    }
    drop(store);
    // Reopened: the gap between the first and the active segment is expected, not damage.
    let (store, recovery) = Store::open_with(
        dir.path(),
        Arc::new(StdFs),
        Box::new(time.clone()) as Box<dyn brook::log::clock::TimeSource>,
        no_limits(),
        &[("c".to_string(), compact_topic())],
    )
    .expect("opens");
    assert!(recovery.damage.is_empty());
    assert_eq!(read_keyed(&store, "c"), got);
}
