//! Disk limits and time: retention by size and time, the store's budget and free-space floor,
//! `drop_oldest` against `reject`, budgets refused when too small, and clock steps.

use std::sync::Arc;

use crate::common::*;
use brook::log::clock::ManualTime;
use brook::log::fs::{FaultFs, StdFs};
use brook::log::{
    Durability, FullReason, LogError, OnFull, PartitionChoice, StoreOptions, TopicConfig,
};
use brook::units::{ByteSize, HumanDuration};

const SEG: u64 = 64 * 1024;
const DAY: i64 = 86_400_000;
const YEAR: i64 = 365 * DAY;

fn topic(on_full: OnFull, retention_size: u64, retention: HumanDuration) -> TopicConfig {
    TopicConfig {
        partitions: 1,
        segment_size: ByteSize(SEG),
        retention,
        retention_size: ByteSize(retention_size),
        on_full,
        max_batch_size: ByteSize::kib(16),
        index_interval: ByteSize(512),
        ..TopicConfig::default()
    }
}

/// Appends ~`bytes` of records to partition 0 in batches of 50; returns the records appended.
fn fill(store: &brook::log::Store, t: &str, first: u64, bytes: u64) -> u64 {
    let mut n = 0;
    while n * 60 < bytes {
        append(store, t, 0, first + n, 50, Durability::Written);
        n += 50;
    }
    n
}

#[test]
fn retention_size_drop_oldest_deletes_whole_segments_oldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_std(
        dir.path(),
        &[(
            "t",
            topic(OnFull::DropOldest, 3 * SEG, HumanDuration::secs(0)),
        )],
    );
    let n = fill(&store, "t", 0, 10 * SEG);
    let p = store.topic("t").expect("t").partitions()[0].clone();
    assert!(p.size() <= 3 * SEG, "size {} over the limit", p.size());
    assert!(p.log_start() > 0, "old segments were deleted");
    assert!(store.records_dropped() > 0);
    assert_eq!(store.records_dropped(), p.log_start(), "every drop counted");
    let got = read_all(&store, "t", 0);
    assert_eq!(got.len() as u64, n - p.log_start(), "a suffix is left");
    assert_eq!(got.last().map(|(_, v)| v.clone()), Some(value(n - 1)));
}

#[test]
fn retention_size_reject_refuses_and_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_std(
        dir.path(),
        &[("t", topic(OnFull::Reject, 3 * SEG, HumanDuration::secs(0)))],
    );
    let mut n = 0u64;
    let err = loop {
        match store.append(
            "t",
            PartitionChoice::Id(0),
            &batch(n, 50),
            Durability::Written,
        ) {
            Ok(_) => n += 50,
            Err(e) => break e,
        }
        assert!(n < 100_000, "never refused");
    };
    assert!(
        matches!(
            err,
            LogError::LogFull {
                reason: FullReason::RetentionSize { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("log full"), "{err}");
    assert_eq!(store.records_dropped(), 0);
    let got = read_all(&store, "t", 0);
    assert_eq!(got.len() as u64, n, "nothing stored was touched");
    assert_eq!(got[0].1, value(0));
}

#[test]
fn global_budget_takes_space_from_drop_oldest_topics_oldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(T0);
    let opts = StoreOptions {
        max_size: ByteSize(8 * SEG),
        ..no_limits()
    };
    let none = HumanDuration::secs(0);
    let topics = [
        ("ring", topic(OnFull::DropOldest, 0, none)),
        ("older", topic(OnFull::DropOldest, 0, none)),
        ("keep", topic(OnFull::Reject, 0, none)),
    ];
    let store = open(dir.path(), Arc::new(StdFs), &time, opts, &topics);
    fill(&store, "older", 0, 2 * SEG);
    time.advance(1000);
    fill(&store, "ring", 0, 2 * SEG);
    time.advance(1000);
    fill(&store, "keep", 0, 2 * SEG);
    time.advance(1000);
    // Now push past the budget through the reject topic: space must come from "older" first.
    fill(&store, "keep", 100_000, 4 * SEG);
    assert!(store.used_bytes() <= 8 * SEG + 16 * 1024);
    let older = store.topic("older").expect("older").partitions()[0].clone();
    let ring = store.topic("ring").expect("ring").partitions()[0].clone();
    let keep = store.topic("keep").expect("keep").partitions()[0].clone();
    assert!(
        older.log_start() > 0,
        "the oldest drop_oldest segments went first"
    );
    assert_eq!(
        keep.log_start(),
        0,
        "a reject topic is never trimmed for the budget"
    );
    if ring.log_start() > 0 {
        assert_eq!(
            older.status().segments,
            1,
            "a newer topic lost data while an older one still had sealed segments"
        );
    }
    // Keep going until nothing can be freed: then appends fail with "log full".
    let mut n = 200_000;
    let err = loop {
        match store.append(
            "keep",
            PartitionChoice::Id(0),
            &batch(n, 50),
            Durability::Written,
        ) {
            Ok(_) => n += 50,
            Err(e) => break e,
        }
        assert!(n < 1_000_000, "never refused");
    };
    assert!(
        matches!(
            err,
            LogError::LogFull {
                reason: FullReason::Budget { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(keep.log_start(), 0);
}

#[test]
fn budgets_below_two_segments_per_partition_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        max_size: ByteSize(3 * SEG),
        ..no_limits()
    };
    let mut t = topic(OnFull::DropOldest, 0, HumanDuration::secs(0));
    t.partitions = 2;
    let err = brook::log::Store::open(dir.path(), opts.clone(), &[("t".into(), t.clone())])
        .expect_err("refused at start-up");
    assert!(matches!(err, LogError::BudgetTooSmall { .. }), "{err}");
    assert!(err.to_string().contains("max_size"), "{err}");

    let (store, _) = brook::log::Store::open(dir.path(), opts, &[]).expect("empty store opens");
    let err = store.create_topic("t", t).expect_err("refused at creation");
    assert!(matches!(err, LogError::BudgetTooSmall { .. }), "{err}");

    let small = topic(OnFull::Reject, SEG, HumanDuration::secs(0));
    let err = store
        .create_topic("u", small)
        .expect_err("retention_size too small");
    assert!(err.to_string().contains("retention_size"), "{err}");
}

#[test]
fn free_space_floor_counts_as_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let time = ManualTime::new(T0);
    let opts = StoreOptions {
        min_free: ByteSize::mib(100),
        ..no_limits()
    };
    let topics = [("t", topic(OnFull::Reject, 0, HumanDuration::secs(0)))];
    let store = open(dir.path(), Arc::new(fs.clone()), &time, opts, &topics);
    append(&store, "t", 0, 0, 5, Durability::Written);
    fs.set_available(Some(50 << 20));
    store.maintain().expect("maintain measures free space");
    let err = store
        .append(
            "t",
            PartitionChoice::Id(0),
            &batch(5, 5),
            Durability::Written,
        )
        .expect_err("below the floor");
    assert!(
        matches!(
            err,
            LogError::LogFull {
                reason: FullReason::FreeSpaceFloor { .. },
                ..
            }
        ),
        "{err}"
    );
    fs.set_available(Some(500 << 20));
    store.maintain().expect("maintain");
    append(&store, "t", 0, 5, 5, Durability::Written);
    assert_eq!(read_all(&store, "t", 0).len(), 10);
}

/// Time retention deletes sealed segments whose newest batch is older than `retention`.
#[test]
fn time_retention_deletes_old_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(T0);
    let topics = [("t", topic(OnFull::DropOldest, 0, HumanDuration::secs(3600)))];
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    let old = fill(&store, "t", 0, 3 * SEG);
    time.advance(2 * 3600 * 1000);
    let young = fill(&store, "t", old, 2 * SEG);
    store.maintain().expect("maintain");
    let got = read_all(&store, "t", 0);
    let start = got.first().map(|(o, _)| *o).unwrap_or(0);
    assert!(start > 0, "old segments expired");
    assert!(start <= old, "no young record expired");
    assert_eq!(got.last().map(|(o, _)| *o), Some(old + young - 1));
}

/// The wall clock jumps forward by years (NTP sync on a board without RTC that booted in 1970):
/// nothing is deleted at once; the log ages at the pace of real time.
#[test]
fn forward_clock_step_does_not_wipe_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(0); // booted at 1970
    let topics = [(
        "t",
        topic(OnFull::DropOldest, 0, HumanDuration::secs(7 * 86_400)),
    )];
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    let n = fill(&store, "t", 0, 4 * SEG);
    time.advance(60_000);
    time.step_wall(56 * YEAR); // NTP
    store.maintain().expect("maintain");
    assert_eq!(
        read_all(&store, "t", 0).len() as u64,
        n,
        "nothing deleted by the step"
    );
    assert_eq!(store.clock().steps(), 1);
    // Across a restart too.
    drop(store);
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    store.maintain().expect("maintain");
    assert_eq!(
        read_all(&store, "t", 0).len() as u64,
        n,
        "nothing deleted after restart"
    );
    // Real time passing still ages the data: 8 days later the sealed segments are gone.
    time.advance(8 * DAY);
    store.maintain().expect("maintain");
    let left = read_all(&store, "t", 0);
    assert!(left.len() as u64 <= n && left.first().map(|(o, _)| *o) > Some(0));
}

/// The wall clock jumps backwards (booting with a stale clock): stored data does not become
/// "from the future" and live forever; it ages normally.
#[test]
fn backward_clock_step_does_not_freeze_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(T0);
    let topics = [(
        "t",
        topic(OnFull::DropOldest, 0, HumanDuration::secs(86_400)),
    )];
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    fill(&store, "t", 0, 4 * SEG);
    drop(store);
    time.set_wall(0); // reboot into 1970
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    assert!(
        store.now() >= T0,
        "the timeline resumes where the log left off"
    );
    time.advance(2 * DAY);
    store.maintain().expect("maintain");
    let start = store.topic("t").expect("t").partitions()[0].log_start();
    assert!(start > 0, "data aged while the wall clock said 1970");
}

/// Two steps while running (a stale clock corrected, then set wrong again) are both absorbed.
#[test]
fn repeated_steps_are_absorbed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(T0);
    let topics = [("t", topic(OnFull::DropOldest, 0, HumanDuration::secs(3600)))];
    let store = open(dir.path(), Arc::new(StdFs), &time, no_limits(), &topics);
    let n = fill(&store, "t", 0, 3 * SEG);
    time.advance(1000);
    time.step_wall(10 * YEAR);
    store.maintain().expect("maintain");
    time.advance(1000);
    time.step_wall(-20 * YEAR);
    let m = fill(&store, "t", n, SEG);
    store.maintain().expect("maintain");
    assert_eq!(store.clock().steps(), 2);
    assert_eq!(read_all(&store, "t", 0).len() as u64, n + m);
}

/// Keys land where Kafka's default partitioner puts them; no key spreads evenly.
#[test]
fn keys_pick_partitions_like_kafka() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = small_topic(3);
    cfg.partitions = 3;
    let store = open_std(dir.path(), &[("t", cfg)]);
    let mut b = brook::log::BatchBuilder::new();
    b.push(T0, Some(&b"foobar"[..]), Some(&b"v"[..]), &[]);
    let (p, _) = store
        .append(
            "t",
            PartitionChoice::Key(b"foobar"),
            &b,
            Durability::Written,
        )
        .expect("append");
    // murmur2("foobar") = -790332482 (Kafka's UtilsTest); & 0x7fffffff = 1357151166; % 3 = 0.
    assert_eq!(p, 1_357_151_166 % 3);
    let mut seen = [0u32; 3];
    for _ in 0..30 {
        let (p, _) = store
            .append("t", PartitionChoice::Any, &b, Durability::None)
            .expect("append");
        seen[p as usize] += 1;
    }
    assert_eq!(seen, [10, 10, 10]);
}

/// Offsets by time: the first record at or after a timestamp, across segments.
#[test]
fn offset_for_timestamp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_std(dir.path(), &[("t", small_topic(1))]);
    let n = fill(&store, "t", 0, 3 * SEG); // record k has timestamp T0 + k
    let p = store.topic("t").expect("t").partitions()[0].clone();
    assert!(p.status().segments > 2);
    for k in [0, 1, 49, 50, 777, n / 2, n - 1] {
        assert_eq!(
            p.offset_for_timestamp(T0 + k as i64).expect("lookup"),
            Some(k)
        );
    }
    assert_eq!(p.offset_for_timestamp(T0 - 5).expect("lookup"), Some(0));
    assert_eq!(p.offset_for_timestamp(T0 + n as i64).expect("lookup"), None);
    // The record found comes with its own timestamp; the largest is the last record's here.
    assert_eq!(
        p.record_for_timestamp(T0 + 49).expect("lookup"),
        Some((49, T0 + 49))
    );
    assert_eq!(p.max_timestamp(), Some(T0 + n as i64 - 1));
    let empty = open_std(&dir.path().join("empty"), &[("e", small_topic(1))]);
    assert_eq!(
        empty.topic("e").expect("e").partitions()[0].max_timestamp(),
        None
    );
}

/// Reads: from any offset, whole batches, at least one batch even when it exceeds max_bytes;
/// offsets outside the log are refused with the range.
#[test]
fn reads_from_any_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_std(dir.path(), &[("t", small_topic(1))]);
    let n = fill(&store, "t", 0, 3 * SEG);
    let p = store.topic("t").expect("t").partitions()[0].clone();
    for from in [0, 1, 49, 50, 51, 1000, n - 1] {
        let r = p
            .read(from, 1, brook::log::Visibility::Written)
            .expect("read");
        let first = r.batches().next().expect("one batch at least");
        assert!(first.header.base_offset <= from && from < first.next_offset());
    }
    let r = p
        .read(n, 1 << 20, brook::log::Visibility::Written)
        .expect("read at the end");
    assert!(r.frames.is_empty());
    assert_eq!(r.high_watermark, n);
    let err = p
        .read(n + 1, 1 << 20, brook::log::Visibility::Written)
        .expect_err("past the end");
    assert!(matches!(err, LogError::OffsetOutOfRange { .. }), "{err}");
}

/// A topic grows: the new partitions take records, survive a reopen (the descriptor names the
/// new count, even where the caller's list of known topics still has the old one), and a topic
/// never shrinks or passes `log.max_partitions`.
#[test]
fn partitions_are_added_durably_and_only_ever_grow() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open_std(dir.path(), &[("t", small_topic(2))]);
        append(&store, "t", 1, 0, 10, Durability::Durable);
        let t = store.add_partitions("t", 4).expect("grow");
        assert_eq!(t.partitions().len(), 4);
        append(&store, "t", 3, 0, 7, Durability::Durable);
        assert!(store.add_partitions("t", 4).is_err(), "same count");
        assert!(store.add_partitions("t", 3).is_err(), "shrink");
        assert!(store.add_partitions("nope", 3).is_err(), "unknown");
    }
    let store = open_std(dir.path(), &[("t", small_topic(2))]);
    let t = store.topic("t").expect("t");
    assert_eq!(t.partitions().len(), 4, "the descriptor's count wins");
    assert_eq!(read_all(&store, "t", 1).len(), 10);
    assert_eq!(read_all(&store, "t", 3).len(), 7);
    drop(store);
    let mut opts = no_limits();
    opts.max_partitions = 5;
    let store = open(
        dir.path(),
        Arc::new(StdFs),
        &ManualTime::new(T0),
        opts,
        &[("t", small_topic(4))],
    );
    assert!(matches!(
        store.add_partitions("t", 6),
        Err(LogError::TooMany { .. })
    ));
    store.add_partitions("t", 5).expect("up to the cap");
}

/// DeleteRecords: records before an offset inside a segment are gone (reads refused, offsets
/// by time skip them), the segments wholly before it are deleted, and the start survives a
/// reopen; an offset past the end is refused.
#[test]
fn records_deleted_before_an_offset_stay_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n;
    let cut;
    {
        let store = open_std(dir.path(), &[("t", small_topic(1))]);
        n = fill(&store, "t", 0, 3 * SEG); // record k has timestamp T0 + k
        let p = store.topic("t").expect("t").partitions()[0].clone();
        let segments = p.status().segments;
        cut = n / 2 + 7;
        assert_eq!(p.delete_records_before(cut).expect("delete"), cut);
        assert!(
            p.status().segments < segments,
            "whole segments before it went"
        );
        assert_eq!(p.log_start(), cut);
        assert!(matches!(
            p.read(cut - 1, 1 << 20, brook::log::Visibility::Written),
            Err(LogError::OffsetOutOfRange { earliest, .. }) if earliest == cut
        ));
        let r = p
            .read(cut, 1 << 20, brook::log::Visibility::Written)
            .expect("read");
        assert!(!r.frames.is_empty() && r.log_start == cut);
        assert_eq!(
            p.record_for_timestamp(T0).expect("by time"),
            Some((cut, T0 + cut as i64)),
            "offsets by time start at the cut"
        );
        assert_eq!(
            p.delete_records_before(cut - 10).expect("below"),
            cut,
            "no change"
        );
        assert!(p.delete_records_before(n + 1).is_err(), "past the end");
    }
    let store = open_std(dir.path(), &[("t", small_topic(1))]);
    let p = store.topic("t").expect("t").partitions()[0].clone();
    assert_eq!(p.log_start(), cut, "kept across a reopen");
    assert_eq!(p.end_offset(), n);
    assert_eq!(p.delete_records_before(n).expect("all"), n);
    assert_eq!(p.log_start(), n);
}

/// A topic's config changes while it is open: the next append is held to the new batch limit,
/// the descriptor keeps the change across a reopen, and the partition count cannot change
/// this way.
#[test]
fn an_altered_topic_config_applies_at_once_and_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = || {
        let mut b = brook::log::BatchBuilder::new();
        b.push(T0, None, Some(&vec![7u8; 20 * 1024]), &[]);
        b
    };
    {
        let store = open_std(dir.path(), &[("t", small_topic(1))]);
        let p = store.topic("t").expect("t").partitions()[0].clone();
        assert!(matches!(
            p.append(&big(), Durability::Written, T0),
            Err(LogError::BatchTooLarge { .. })
        ));
        let mut cfg = small_topic(1);
        cfg.max_batch_size = ByteSize::kib(32);
        store.alter_topic("t", cfg.clone()).expect("alter");
        p.append(&big(), Durability::Written, T0)
            .expect("fits the new limit");
        let mut more = cfg.clone();
        more.partitions = 2;
        assert!(
            store.alter_topic("t", more).is_err(),
            "partitions only grow by adding"
        );
    }
    let store = open_std(dir.path(), &[("t", small_topic(1))]);
    let t = store.topic("t").expect("t");
    assert_eq!(t.config().max_batch_size, ByteSize::kib(32), "kept");
    t.partitions()[0]
        .append(&big(), Durability::Written, T0)
        .expect("still fits after a reopen");
}

/// A log-append-time topic: every record carries its batch's append time, whatever the
/// producer gave, in reads, offsets by time and the largest timestamp, across a reopen.
#[test]
fn a_log_append_time_topic_stamps_records_at_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = small_topic(1);
    cfg.timestamp_type = brook::log::TimestampType::LogAppend;
    let check = |store: &brook::log::Store| {
        let p = store.topic("t").expect("t").partitions()[0].clone();
        let stamps: Vec<i64> = read_all_records(&p).into_iter().map(|(_, ts)| ts).collect();
        assert_eq!(stamps, vec![T0 + 5, T0 + 5, T0 + 9]);
        assert_eq!(p.max_timestamp(), Some(T0 + 9));
        assert_eq!(
            p.record_for_timestamp(T0 + 6).expect("by time"),
            Some((2, T0 + 9))
        );
    };
    {
        let store = open_std(dir.path(), &[("t", cfg.clone())]);
        let p = store.topic("t").expect("t").partitions()[0].clone();
        let mut b = brook::log::BatchBuilder::new();
        b.push(1_000, None, Some(&b"old"[..]), &[]);
        b.push(2_000, None, Some(&b"older"[..]), &[]);
        p.append(&b, Durability::Written, T0 + 5).expect("append");
        let mut b = brook::log::BatchBuilder::new();
        b.push(T0 + 100_000, None, Some(&b"future"[..]), &[]);
        p.append(&b, Durability::Written, T0 + 9).expect("append");
        check(&store);
    }
    check(&open_std(dir.path(), &[("t", cfg)]));
}

/// (offset, timestamp) of every record of a partition.
fn read_all_records(p: &brook::log::Partition) -> Vec<(u64, i64)> {
    let r = p
        .read(p.log_start(), 1 << 20, brook::log::Visibility::Written)
        .expect("read");
    r.batches()
        .flat_map(|b| b.records().map(|r| r.expect("record")))
        .map(|r| (r.offset, r.timestamp))
        .collect()
}
