//! The flusher thread of a partition (group commit), the failure rules of the write path, and
//! the segment roll.
//!
//! One round: take the whole buffer and every waiter registered so far; write the buffer with
//! one positional write; complete the `Written` waiters; if any waiter wants `Durable`, fsync
//! once and complete those. Appenders that arrive meanwhile form the next round's group.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::super::error::{LogError, Result};
use super::super::segment::{self, SEGMENT_HEADER_LEN, SegmentIndex};
use super::{Inner, Sealed, State, Waiter, create_segment};

/// Why a buffered batch was not written; sent to every waiter it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteFailure {
    /// The filesystem is full (ENOSPC); the partition stays usable.
    NoSpace(String),
    /// Another write error; the partition was cut back and stays usable.
    Write(String),
    /// An fsync failed, or the file could not be cut back: the partition refuses writes.
    Poisoned(String),
}

pub(super) fn spawn_flusher(inner: Arc<Inner>) -> Result<JoinHandle<()>> {
    let dir = inner.dir.clone();
    std::thread::Builder::new()
        .name(format!("brook-flush-{}", inner.id))
        .stack_size(256 * 1024)
        .spawn(move || run(&inner))
        .map_err(|e| LogError::io("start the flusher thread for", dir, e))
}

fn run(inner: &Inner) {
    let mut gather = Gather::default();
    let mut st = inner.lock();
    loop {
        let work = !st.waiters.is_empty()
            || st.buf.len() >= inner.write_buffer
            || (st.stop && !st.buf.is_empty());
        if !work {
            if st.stop {
                return;
            }
            st.wake_at = 1;
            st = inner.flush_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        st = gather.wait(inner, st);
        st.wake_at = usize::MAX;
        st = inner.round(st, &mut gather);
    }
}

/// Group commit across rounds. When a round's fsync completes, the producers it releases
/// typically come straight back with their next batch; starting the next fsync without them
/// would split the producers into two groups that alternate, each fsync carrying half of them.
/// So before a round that will fsync, the flusher waits until as many durable appenders are
/// buffered as were buffered plus released when the last round ended, for at most a quarter of
/// the last fsync's duration (capped at 250 us). A lone producer costs at most that linger.
#[derive(Default)]
struct Gather {
    expect: usize,
    last_sync: Duration,
}

impl Gather {
    fn wait<'a>(&self, inner: &'a Inner, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let durable = |st: &State| st.waiters.iter().filter(|w| w.durable).count();
        if self.expect < 2 || st.stop || durable(&st) == 0 {
            return st;
        }
        let deadline = Instant::now() + (self.last_sync / 4).min(Duration::from_micros(250));
        // Appenders wake us when the group is complete, not at every arrival.
        st.wake_at = self.expect + (st.waiters.len() - durable(&st));
        while durable(&st) < self.expect {
            let now = Instant::now();
            if now >= deadline || st.stop {
                break;
            }
            st = inner
                .flush_cv
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        st
    }
}

fn complete(waiters: Vec<Waiter>, result: &std::result::Result<(), WriteFailure>) {
    for w in waiters {
        // A waiter that gave up (its future was dropped) does not care.
        let _ = w.done.send(result.clone());
    }
}

impl Inner {
    /// One flush round. Takes the lock back before returning.
    fn round<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        gather: &mut Gather,
    ) -> MutexGuard<'a, State> {
        if let Some(cause) = st.poisoned.clone() {
            let waiters = std::mem::take(&mut st.waiters);
            drop(st);
            complete(waiters, &Err(WriteFailure::Poisoned(cause)));
            return self.lock();
        }
        st.flushing = true;
        let buf = std::mem::take(&mut st.buf);
        let waiters = std::mem::take(&mut st.waiters);
        let target_end = st.assigned_end;
        let target_offset = st.next_offset;
        let pos = st.active.written;
        let end_pos = pos + buf.len() as u64;
        let file = Arc::clone(&st.active.file);
        let sync = waiters.iter().any(|w| w.durable);
        drop(st);

        let wrote = if buf.is_empty() {
            Ok(())
        } else {
            self.usage.writes.fetch_add(1, Ordering::Relaxed);
            file.write_all_at(&buf, pos)
        };

        let mut st = self.lock();
        if let Err(e) = wrote {
            let (failure, mut failed) = self.rollback(&mut st, e);
            st.flushing = false;
            self.idle_cv.notify_all();
            drop(st);
            failed.extend(waiters);
            complete(failed, &Err(failure));
            return self.lock();
        }
        st.active.written = end_pos;
        st.written_end = target_end;
        st.written_offset = target_offset;
        self.end_tx.send_replace(target_offset);
        if st.buf.capacity() == 0 {
            let mut b = buf;
            b.clear();
            st.buf = b;
        }
        if !sync {
            st.flushing = false;
            self.idle_cv.notify_all();
            drop(st);
            complete(waiters, &Ok(()));
            return self.lock();
        }
        drop(st);
        let (durable, written): (Vec<Waiter>, Vec<Waiter>) =
            waiters.into_iter().partition(|w| w.durable);
        complete(written, &Ok(()));

        let sync_started = Instant::now();
        let synced = file.sync_data();
        self.usage.fsyncs.fetch_add(1, Ordering::Relaxed);
        gather.last_sync = sync_started.elapsed();
        self.usage.observe_fsync(gather.last_sync);

        let mut st = self.lock();
        let result = match synced {
            Ok(()) => {
                st.active.durable = end_pos;
                st.durable_end = target_end;
                st.durable_offset = target_offset;
                Ok(())
            }
            Err(e) => {
                let cause = format!("fsync {}: {e}", st.active.path.display());
                Err(self.poison(&mut st, cause))
            }
        };
        let failed_later = if result.is_err() {
            std::mem::take(&mut st.waiters)
        } else {
            Vec::new()
        };
        st.flushing = false;
        self.idle_cv.notify_all();
        gather.expect = durable.len() + st.waiters.iter().filter(|w| w.durable).count();
        drop(st);
        complete(durable, &result);
        complete(failed_later, &result);
        self.lock()
    }

    fn poison(&self, st: &mut State, cause: String) -> WriteFailure {
        tracing::error!(topic = %self.topic, partition = self.id, "{cause}; the partition refuses writes until reopened");
        st.poisoned = Some(cause.clone());
        WriteFailure::Poisoned(cause)
    }

    /// After a failed write: cut the file back to what was written before and discard everything
    /// buffered. Returns the failure and the waiters still registered (they fail too). Poisons
    /// the partition if even the cut fails.
    fn rollback(&self, st: &mut State, e: std::io::Error) -> (WriteFailure, Vec<Waiter>) {
        let cause = format!("write {}: {e}", st.active.path.display());
        tracing::error!(topic = %self.topic, partition = self.id, "{cause}; discarding unwritten batches");
        let good = st.active.written;
        let lost = st.assigned_end - st.written_end;
        st.buf.clear();
        st.size -= lost;
        self.usage.bytes.fetch_sub(lost, Ordering::Relaxed);
        st.active.size = good;
        st.active.index.truncate_to(good);
        st.next_offset = st.written_offset;
        st.assigned_end = st.written_end;
        let waiters = std::mem::take(&mut st.waiters);
        let failure = if let Err(te) = st.active.file.set_len(good) {
            self.poison(
                st,
                format!("{cause}; then cutting the file back failed: {te}"),
            )
        } else if e.raw_os_error() == Some(libc::ENOSPC) {
            WriteFailure::NoSpace(cause)
        } else {
            WriteFailure::Write(cause)
        };
        (failure, waiters)
    }

    /// Seals the active segment and starts a new one. Runs entirely under the lock, with no
    /// flush round in progress, so no batch can slip into the old segment meanwhile. The buffered
    /// batches are written and the whole segment fsynced first, whatever their writers asked for.
    pub(super) fn roll(&self, st: &mut State) -> Result<()> {
        debug_assert!(!st.flushing);
        let waiters = std::mem::take(&mut st.waiters);
        if !st.buf.is_empty() {
            let buf = std::mem::take(&mut st.buf);
            let pos = st.active.written;
            self.usage.writes.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = st.active.file.write_all_at(&buf, pos) {
                let (failure, mut failed) = self.rollback(st, e);
                failed.extend(waiters);
                complete(failed, &Err(failure.clone()));
                return Err(self.failure(failure));
            }
            st.active.written = pos + buf.len() as u64;
            st.written_end = st.assigned_end;
            st.written_offset = st.next_offset;
            self.end_tx.send_replace(st.next_offset);
            st.buf = buf;
            st.buf.clear();
        }
        if st.active.durable < st.active.written {
            self.usage.fsyncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = st.active.file.sync_data() {
                let cause = format!("fsync {}: {e}", st.active.path.display());
                let failure = self.poison(st, cause);
                complete(waiters, &Err(failure.clone()));
                return Err(self.failure(failure));
            }
            st.active.durable = st.active.written;
            st.durable_end = st.written_end;
            st.durable_offset = st.written_offset;
        }
        complete(waiters, &Ok(()));

        let interval = self.cfg.index_interval_bytes();
        let idx = SegmentIndex {
            base_offset: st.active.base,
            next_offset: st.next_offset,
            log_len: st.active.written,
            max_timestamp: st.active.index.max_timestamp,
            max_append_time: st.active.max_append_time,
            entries: st.active.index.entries.clone(),
        };
        let idx_path = segment::write_index(self.fs.as_ref(), &self.dir, &idx)?;
        let new = match create_segment(self.fs.as_ref(), &self.dir, st.next_offset, interval) {
            Ok(a) => a,
            Err(e) => {
                let _ = self.fs.remove_file(&idx_path);
                return Err(e);
            }
        };
        let idx_len = idx.encoded_len() as u64;
        let old = std::mem::replace(&mut st.active, new);
        st.size += idx_len + SEGMENT_HEADER_LEN;
        self.usage
            .bytes
            .fetch_add(idx_len + SEGMENT_HEADER_LEN, Ordering::Relaxed);
        st.sealed.push_back(Arc::new(Sealed::new(
            idx,
            idx_len,
            old.path,
            old.file,
            Vec::new(),
            old.compacted,
        )));
        Ok(())
    }
}
