//! Model test: random sequences of append / roll (small segments) / size retention / time
//! retention / reopen, checked after every step against a plain in-memory model of what must be
//! readable.

use std::sync::Arc;

use crate::common::*;
use brook::log::clock::ManualTime;
use brook::log::fs::StdFs;
use brook::log::{Durability, OnFull, TopicConfig};
use brook::units::{ByteSize, HumanDuration};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Append `count` records to a partition.
    Append { partition: u32, count: u64 },
    /// Let time pass, then run housekeeping (flush, time retention).
    Tick { ms: i64 },
    /// Drop and reopen the store.
    Reopen,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u32..2, 1u64..120).prop_map(|(partition, count)| Op::Append { partition, count }),
        1 => (0i64..4_000).prop_map(|ms| Op::Tick { ms }),
        1 => Just(Op::Reopen),
    ]
}

/// What the model knows of one partition: every record appended, with its append time.
#[derive(Default)]
struct ModelPartition {
    records: Vec<(u64, i64)>, // (value number, append time)
}

fn topic(retention_size: Option<u64>, retention_ms: Option<u64>) -> TopicConfig {
    TopicConfig {
        partitions: 2,
        segment_size: ByteSize::kib(64),
        retention: HumanDuration::millis(retention_ms.unwrap_or(0)),
        retention_size: ByteSize(retention_size.unwrap_or(0)),
        on_full: OnFull::DropOldest,
        max_batch_size: ByteSize::kib(16),
        index_interval: ByteSize(512),
        ..TopicConfig::default()
    }
}

fn run(ops: Vec<Op>, retention_size: Option<u64>, retention_ms: Option<u64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let time = ManualTime::new(T0);
    let cfg = topic(retention_size, retention_ms);
    let topics = [("m", cfg.clone())];
    let mut store = Some(open(
        dir.path(),
        Arc::new(StdFs),
        &time,
        no_limits(),
        &topics[..],
    ));
    let mut model: Vec<ModelPartition> = vec![ModelPartition::default(), ModelPartition::default()];
    let mut next_value = 0u64;
    for (step, op) in ops.iter().enumerate() {
        let s = store.as_ref().expect("store open");
        match op {
            Op::Append { partition, count } => {
                append(s, "m", *partition, next_value, *count, Durability::Written);
                let now = s.now();
                model[*partition as usize]
                    .records
                    .extend((next_value..next_value + count).map(|v| (v, now)));
                next_value += count;
            }
            Op::Tick { ms } => {
                time.advance(*ms);
                s.maintain().expect("maintain");
            }
            Op::Reopen => {
                // Drop the old store (joining its flushers) before opening the files again.
                drop(store.take());
                store = Some(open(
                    dir.path(),
                    Arc::new(StdFs),
                    &time,
                    no_limits(),
                    &topics[..],
                ));
            }
        }
        let s = store.as_ref().expect("store open");
        let now = s.now();
        for p in 0..2u32 {
            let got = read_all(s, "m", p);
            let want = &model[p as usize].records;
            // What is readable is a suffix of what was appended, at the right offsets, intact.
            assert!(got.len() <= want.len(), "step {step} {op:?}: extra records");
            let skipped = want.len() - got.len();
            for (i, (offset, v)) in got.iter().enumerate() {
                assert_eq!(*offset, (skipped + i) as u64, "step {step}: offset");
                assert_eq!(v, &value(want[skipped + i].0), "step {step}: value");
            }
            let part = s.topic("m").expect("topic").partitions()[p as usize].clone();
            assert_eq!(part.log_start(), skipped as u64, "step {step}: log start");
            // Nothing is deleted that no limit asked for.
            match (retention_size, retention_ms) {
                (None, None) => assert_eq!(skipped, 0, "step {step}: deleted without a limit"),
                (None, Some(r)) => {
                    // Records appended within the retention period are all still there.
                    if let Some(first_young) = want.iter().position(|(_, t)| now - t < r as i64) {
                        assert!(
                            skipped <= first_young,
                            "step {step}: a record younger than retention was deleted"
                        );
                    }
                }
                (Some(limit), _) => {
                    assert!(
                        part.size() <= limit,
                        "step {step}: partition holds {} bytes over retention_size {limit}",
                        part.size()
                    );
                    // At most what the limit needs was deleted: the newest `limit - segment`
                    // bytes of records are all there.
                    let keep = limit - cfg.segment_size.bytes() - 1024;
                    let mut bytes = 0u64;
                    let mut must_have = 0usize;
                    for (v, _) in want.iter().rev() {
                        bytes += value(*v).len() as u64 + 40;
                        if bytes > keep {
                            break;
                        }
                        must_have += 1;
                    }
                    assert!(
                        got.len() >= must_have,
                        "step {step}: {} records left, at least {must_have} fit the limit",
                        got.len()
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn without_limits(ops in proptest::collection::vec(arb_op(), 1..60)) {
        run(ops, None, None);
    }

    #[test]
    fn size_retention(ops in proptest::collection::vec(arb_op(), 1..80)) {
        run(ops, Some(3 * 64 * 1024), None);
    }

    #[test]
    fn time_retention(ops in proptest::collection::vec(arb_op(), 1..80)) {
        run(ops, None, Some(5_000));
    }
}
