//! Crash and fault-injection tests on real files: power loss (unsynced bytes vanish or survive
//! in part), a torn last batch at every byte, short writes with ENOSPC, failing fsyncs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use brook::log::clock::ManualTime;
use brook::log::fs::{FaultFs, StdFs};
use brook::log::segment::{SEGMENT_HEADER_LEN, log_file_name};
use brook::log::{Durability, FullReason, LogError, PartitionChoice, Store};
use common::*;
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
