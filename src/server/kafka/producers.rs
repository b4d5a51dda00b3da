//! Idempotent producers: producer ids, epochs and per-partition sequence numbers, so that a
//! producer's retries never write a batch twice and never leave a gap.
//!
//! InitProducerId hands out ids from a block reserved in `meta` (flushed before the first id of
//! a block is used), so an id is never given out twice, across restarts too. Per (producer,
//! topic, partition) the last five batches are remembered, as Kafka does (clients keep at most
//! five in flight): a batch whose sequence range is one of them is a retry and is answered with
//! the offset it got the first time, without writing; a batch that does not follow the last one
//! gets `OUT_OF_ORDER_SEQUENCE_NUMBER`; a stale epoch gets `INVALID_PRODUCER_EPOCH`. This
//! state is in memory: after a restart a producer's next batch is accepted whatever its
//! sequence (the retry window is what a restart can lose).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::meta::{MetaError, MetaStore, Namespace};

/// Batches remembered per producer and partition.
const REMEMBERED: usize = 5;
/// Producer ids reserved in `meta` at a time.
const ID_BLOCK: i64 = 1000;
const NEXT_ID_KEY: &[u8] = b"next_producer_id";

/// A batch's idempotence fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seq {
    /// -1: not an idempotent producer.
    pub producer_id: i64,
    pub epoch: i16,
    /// Sequence of the first record.
    pub base: i32,
    pub count: u32,
}

/// The outcome of checking a batch's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqCheck {
    /// Write it.
    Append,
    /// Already written at this base offset: answer success, write nothing.
    Duplicate {
        base_offset: u64,
    },
    OutOfOrder {
        expected: i32,
    },
    StaleEpoch {
        current: i16,
    },
}

#[derive(Debug)]
struct PartitionSeq {
    epoch: i16,
    /// (first sequence, last sequence, base offset), oldest first.
    recent: VecDeque<(i32, i32, u64)>,
}

/// Producer ids and sequence state of every idempotent producer.
#[derive(Debug, Default)]
pub struct Producers {
    ids: Mutex<(i64, i64)>,
    seqs: Mutex<HashMap<(i64, String, u32), PartitionSeq>>,
}

fn last_seq(base: i32, count: u32) -> i32 {
    // Sequences wrap from i32::MAX to 0; the remainder is below 2^31 (and not below -2^31).
    let last = (i64::from(base) + i64::from(count) - 1) % (i64::from(i32::MAX) + 1);
    i32::try_from(last).unwrap_or(i32::MAX)
}

impl Producers {
    /// A new producer id (never given out before by this data directory).
    pub fn allocate(&self, meta: &dyn MetaStore) -> Result<i64, MetaError> {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let (next, limit) = &mut *ids;
        if *next >= *limit {
            let stored = meta
                .get(Namespace::Kafka, NEXT_ID_KEY)?
                .and_then(|v| v.as_slice().try_into().ok().map(i64::from_le_bytes))
                .unwrap_or(0);
            let start = stored.max(*next);
            meta.put(
                Namespace::Kafka,
                NEXT_ID_KEY,
                &(start + ID_BLOCK).to_le_bytes(),
            )?;
            meta.flush()?;
            (*next, *limit) = (start, start + ID_BLOCK);
        }
        let id = *next;
        *next += 1;
        Ok(id)
    }

    fn seqs(&self) -> std::sync::MutexGuard<'_, HashMap<(i64, String, u32), PartitionSeq>> {
        self.seqs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a batch of `count` records starting at sequence `base` from producer `id`.
    pub fn check(&self, topic: &str, partition: u32, seq: Seq) -> SeqCheck {
        let Seq {
            producer_id: id,
            epoch,
            base,
            count,
        } = seq;
        if id < 0 {
            return SeqCheck::Append;
        }
        let seqs = self.seqs();
        let Some(s) = seqs.get(&(id, topic.to_string(), partition)) else {
            return SeqCheck::Append;
        };
        if epoch < s.epoch {
            return SeqCheck::StaleEpoch { current: s.epoch };
        }
        if epoch > s.epoch {
            return if base == 0 {
                SeqCheck::Append
            } else {
                SeqCheck::OutOfOrder { expected: 0 }
            };
        }
        let last = last_seq(base, count);
        if let Some(&(_, _, offset)) = s.recent.iter().find(|(f, l, _)| *f == base && *l == last) {
            return SeqCheck::Duplicate {
                base_offset: offset,
            };
        }
        let expected = match s.recent.back() {
            Some(&(_, l, _)) => last_seq(l, 2),
            None => 0,
        };
        if base != expected {
            return SeqCheck::OutOfOrder { expected };
        }
        SeqCheck::Append
    }

    /// Remembers a batch that was appended at `base_offset`.
    pub fn record(&self, topic: &str, partition: u32, seq: Seq, base_offset: u64) {
        let Seq {
            producer_id: id,
            epoch,
            base,
            count,
        } = seq;
        if id < 0 {
            return;
        }
        let mut seqs = self.seqs();
        let s = seqs
            .entry((id, topic.to_string(), partition))
            .or_insert_with(|| PartitionSeq {
                epoch,
                recent: VecDeque::with_capacity(REMEMBERED),
            });
        if epoch != s.epoch {
            s.epoch = epoch;
            s.recent.clear();
        }
        if s.recent.len() == REMEMBERED {
            s.recent.pop_front();
        }
        s.recent
            .push_back((base, last_seq(base, count), base_offset));
    }

    /// Forgets a deleted topic's sequences.
    pub fn forget_topic(&self, topic: &str) {
        self.seqs().retain(|(_, t, _), _| t != topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sq(producer_id: i64, epoch: i16, base: i32, count: u32) -> Seq {
        Seq {
            producer_id,
            epoch,
            base,
            count,
        }
    }

    #[test]
    fn retries_are_recognised_and_gaps_refused() {
        let p = Producers::default();
        assert_eq!(p.check("t", 0, sq(1, 0, 0, 10)), SeqCheck::Append);
        p.record("t", 0, sq(1, 0, 0, 10), 100);
        assert_eq!(p.check("t", 0, sq(1, 0, 10, 5)), SeqCheck::Append);
        p.record("t", 0, sq(1, 0, 10, 5), 110);
        // A retry of either batch gets its first offset back.
        assert_eq!(
            p.check("t", 0, sq(1, 0, 0, 10)),
            SeqCheck::Duplicate { base_offset: 100 }
        );
        assert_eq!(
            p.check("t", 0, sq(1, 0, 10, 5)),
            SeqCheck::Duplicate { base_offset: 110 }
        );
        // A gap, or a batch from the past that is not remembered, is out of order.
        assert_eq!(
            p.check("t", 0, sq(1, 0, 16, 1)),
            SeqCheck::OutOfOrder { expected: 15 }
        );
        assert_eq!(
            p.check("t", 0, sq(1, 0, 3, 1)),
            SeqCheck::OutOfOrder { expected: 15 }
        );
        // Other partitions and producers are independent.
        assert_eq!(p.check("t", 1, sq(1, 0, 7, 1)), SeqCheck::Append);
        assert_eq!(p.check("t", 0, sq(2, 0, 7, 1)), SeqCheck::Append);
        // A new epoch starts at 0; the old epoch is fenced.
        assert_eq!(
            p.check("t", 0, sq(1, 1, 5, 1)),
            SeqCheck::OutOfOrder { expected: 0 }
        );
        assert_eq!(p.check("t", 0, sq(1, 1, 0, 1)), SeqCheck::Append);
        p.record("t", 0, sq(1, 1, 0, 1), 200);
        assert_eq!(
            p.check("t", 0, sq(1, 0, 15, 1)),
            SeqCheck::StaleEpoch { current: 1 }
        );
        // Non-idempotent producers are never checked.
        assert_eq!(p.check("t", 0, sq(-1, -1, -1, 3)), SeqCheck::Append);
    }

    #[test]
    fn sequences_wrap_and_only_five_batches_are_remembered() {
        let p = Producers::default();
        let near = i32::MAX - 1;
        p.record("t", 0, sq(9, 0, near, 2), 0);
        assert_eq!(p.check("t", 0, sq(9, 0, 0, 1)), SeqCheck::Append);
        let q = Producers::default();
        for i in 0..6 {
            q.record("t", 0, sq(9, 0, i, 1), i as u64);
        }
        assert_eq!(
            q.check("t", 0, sq(9, 0, 5, 1)),
            SeqCheck::Duplicate { base_offset: 5 }
        );
        assert_eq!(
            q.check("t", 0, sq(9, 0, 1, 1)),
            SeqCheck::Duplicate { base_offset: 1 }
        );
        assert_eq!(
            q.check("t", 0, sq(9, 0, 0, 1)),
            SeqCheck::OutOfOrder { expected: 6 }
        );
    }
}
