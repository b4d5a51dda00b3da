//! The flusher thread of a partition (group commit), the failure rules of the write path, the
//! segment roll and the removal of deleted segments' files: all of a partition's blocking file
//! I/O on the write side happens here, never on an appender's thread.
//!
//! One round: take the whole buffer and every waiter registered so far; write the buffer with
//! one positional write; complete the `Written` waiters; if any waiter wants `Durable`, fsync
//! once and complete those. Appenders that arrive meanwhile form the next round's group, except
//! while a stream keeps arriving: then the round writes what arrives in further passes before
//! its one fsync ([`Gather`]). A round whose durable waiters all allow their fsync to wait
//! (`Waiter::sync_by`) is held unwritten until the earliest allowed moment or a waiter that
//! allows no wait, gathering what arrives, and its records become readable only after its
//! fsync (`Inner::hold`).
//!
//! **Roll.** An appender whose batch does not fit the active segment only opens the next one
//! in memory (`State::next`) and puts its frames there. The flusher then seals the active
//! segment (writes what it has buffered, fsyncs it, writes its index), creates the next
//! segment's file, and makes it active with the frames collected meanwhile; readers see those
//! once the next round has written them. If the index or the new file cannot be written, the
//! batches of the segments to come fail as a failed write does, and the next append tries the
//! roll again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::super::OnFull;
use super::super::error::LogError;
use super::super::segment::{self, SEGMENT_HEADER_LEN, SegmentIndex};
use super::{Active, Inner, Sealed, State, Waiter, create_segment};

/// Rounds a partition's tail holds for its followers (the newest and those just before), and
/// the bytes the older ones may hold: a follower busy while a few small rounds were written (a
/// worker serving many connections) takes them from memory rather than reading the log.
const TAIL_ROUNDS: usize = 4;
const TAIL_BYTES: usize = 16 * 1024;

/// Bounds of a round's linger between its write and its fsync ([`Gather`]).
const LINGER_GAP_MIN: Duration = Duration::from_micros(50);
const LINGER_GAP_MAX: Duration = Duration::from_micros(250);
const LINGER_MIN: Duration = Duration::from_micros(500);
const LINGER_MAX: Duration = Duration::from_millis(2);

/// Why a buffered batch was not written; sent to every waiter it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteFailure {
    /// The filesystem is full (ENOSPC); the partition stays usable.
    NoSpace(String),
    /// Another write error (its kind: a read-only filesystem, ...); the partition was cut back
    /// and stays usable.
    Write(String, std::io::ErrorKind),
    /// An fsync failed, or the file could not be cut back: the partition refuses writes.
    Poisoned(String),
}

/// The flusher threads of a store: a pool shared by all its partitions, so a thousand
/// partitions need no thousand threads; it grows while partitions wait for a thread (their
/// fsyncs then run side by side) and shrinks back when they are done. A partition with work is queued once; a thread takes
/// it, does one step (a seal, a removal of deleted files, or a flush round) and queues it again
/// behind the others if more is waiting. One partition is worked on by one thread at a time.
pub struct Flushers {
    queue: Mutex<Queue>,
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    partitions: VecDeque<Arc<Inner>>,
    /// Threads running, and how many of them wait for work.
    alive: usize,
    idle: usize,
    /// Threads started on demand when none is free, and the most there may be.
    min: usize,
    max: usize,
    /// Partitions open on these threads (some may outlive their store).
    open: usize,
    /// The store is gone: the threads leave once no partition is left.
    closing: bool,
}

/// How long a flusher thread waits for work before it leaves.
pub const IDLE_EXIT: Duration = Duration::from_secs(10);

/// Where a partition stands with the flushers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Sched {
    /// Nothing to do, or the work is not worth a wake-up yet.
    #[default]
    Idle,
    /// In the queue.
    Queued,
    /// A thread (or the partition's own drop) is doing its work.
    Running,
}

impl Flushers {
    /// A pool of at most `max` flusher threads, none started yet: a partition with work starts
    /// one while fewer than `min` run and none is free, and more (up to `max`) start while
    /// partitions wait and every thread is busy (fsyncs of several partitions at once). Every
    /// thread leaves after `IDLE_EXIT` (10 s) without work, so an idle broker keeps none.
    pub fn start(min: usize, max: usize) -> Arc<Flushers> {
        let min = min.max(1);
        Arc::new(Flushers {
            queue: Mutex::new(Queue {
                min,
                max: max.max(min),
                ..Queue::default()
            }),
            ready: Condvar::new(),
        })
    }

    fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        #[cfg(test)]
        if tests::NO_THREADS.get() {
            return Err(std::io::Error::other("no threads (test)"));
        }
        let p = Arc::clone(self);
        std::thread::Builder::new()
            .name("brook-flush".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                yield_to_the_waker();
                p.work()
            })
            .map(|_| ())
    }

    /// The default sizes: one thread per core started on demand (at least two, so a slow fsync
    /// never holds up every partition; at most four), and up to 16 while many partitions sync
    /// at once.
    pub fn default_threads() -> (usize, usize) {
        let kept = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        (kept, 16)
    }

    /// Lets the threads go once every partition is gone (the store is closing; a partition
    /// writes out what it holds when it is dropped).
    pub fn close(&self) {
        self.lock().closing = true;
        self.ready.notify_all();
    }

    /// A partition opened on these threads.
    pub(super) fn opened(&self) {
        self.lock().open += 1;
    }

    /// A partition gone.
    pub(super) fn closed(&self) {
        let mut q = self.lock();
        q.open = q.open.saturating_sub(1);
        if q.closing && q.open == 0 {
            self.ready.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a partition that has work (its `Sched` was just set to `Queued`). A thread is
    /// woken only if one waits: a busy one looks at the queue before it waits (a wake-up nobody
    /// waits for still costs a system call). With none waiting and fewer than `min` running,
    /// one is started. If none runs and none can be started, the caller does the work itself
    /// rather than leave its appenders waiting for a thread that may never come.
    pub(super) fn schedule(self: &Arc<Self>, inner: Arc<Inner>) {
        let mut q = self.lock();
        q.partitions.push_back(inner);
        let wake = q.idle > 0;
        let start = !wake && q.alive < q.min;
        if start {
            q.alive += 1;
        }
        // Woken after the lock is let go, so the thread does not wait for it at once.
        drop(q);
        if wake {
            self.ready.notify_one();
        }
        if start {
            if let Err(e) = self.spawn() {
                let mut q = self.lock();
                q.alive -= 1;
                let orphaned = q.alive == 0;
                drop(q);
                tracing::error!("cannot start a flusher thread: {e}");
                if orphaned {
                    self.work_here();
                }
            }
        }
    }

    /// Does the queued work on the calling thread: the last resort when no flusher thread
    /// runs and none can be started.
    fn work_here(self: &Arc<Self>) {
        loop {
            let Some(inner) = self.lock().partitions.pop_front() else {
                return;
            };
            self.turn(inner);
        }
    }

    /// Queues again a partition this thread just worked on, behind the others. This thread
    /// looks at the queue next, so another is woken only if there is more than this partition
    /// to do: otherwise it would wake to find the queue empty (a wake-up and a context switch
    /// per flush round for nothing).
    fn requeue(&self, inner: Arc<Inner>) {
        let mut q = self.lock();
        q.partitions.push_back(inner);
        let wake = q.partitions.len() > 1 && q.idle > 0;
        drop(q);
        if wake {
            self.ready.notify_one();
        }
    }

    fn work(self: Arc<Self>) {
        loop {
            let inner = {
                let mut q = self.lock();
                loop {
                    if let Some(i) = q.partitions.pop_front() {
                        // More waiting and no thread free to take it: one more, within max.
                        if !q.partitions.is_empty() && q.idle == 0 && q.alive < q.max {
                            q.alive += 1;
                            if let Err(e) = self.spawn() {
                                q.alive -= 1;
                                tracing::warn!("cannot start another flusher thread: {e}");
                            }
                        }
                        break i;
                    }
                    if q.closing && q.open == 0 {
                        q.alive -= 1;
                        return;
                    }
                    q.idle += 1;
                    let (g, waited) = self
                        .ready
                        .wait_timeout(q, IDLE_EXIT)
                        .unwrap_or_else(|e| e.into_inner());
                    q = g;
                    q.idle -= 1;
                    if waited.timed_out() && q.partitions.is_empty() {
                        q.alive -= 1;
                        return;
                    }
                }
            };
            self.turn(inner);
        }
    }

    /// One step of a queued partition's work; queued again behind the others if more waits.
    fn turn(&self, inner: Arc<Inner>) {
        let mut st = inner.lock();
        if st.sched != Sched::Queued {
            // Its drop took it over meanwhile.
            return;
        }
        st.sched = Sched::Running;
        // Group commit bookkeeping is per partition.
        let mut gather = std::mem::take(&mut st.gather);
        st = inner.step(st, &mut gather);
        st.gather = gather;
        if inner.has_work(&st) {
            st.sched = Sched::Queued;
            drop(st);
            self.requeue(inner);
        } else {
            st.sched = Sched::Idle;
            st.wake_at = 1;
            // Only a partition being dropped waits for its flusher to let go (`drain`).
            if st.stop {
                inner.idle_cv.notify_all();
            }
        }
    }
}

impl Inner {
    /// Whether a flusher has something to do for this partition now.
    pub(super) fn has_work(&self, st: &State) -> bool {
        !st.doomed.is_empty()
            || !st.next.is_empty()
            || !st.waiters.is_empty()
            || st.buf.len() >= self.write_buffer
            || (st.stop && !st.buf.is_empty())
    }

    /// One unit of work: removals first, then a seal, else a flush round.
    pub(super) fn step<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        gather: &mut Gather,
    ) -> MutexGuard<'a, State> {
        if !st.doomed.is_empty() {
            return self.unlink(st);
        }
        if !st.next.is_empty() {
            st.wake_at = usize::MAX;
            return self.seal(st);
        }
        if !self.has_work(&st) {
            return st;
        }
        st = gather.wait(self, st);
        st.wake_at = usize::MAX;
        // Gathering lets go of the lock: an appender may have rolled the segment meanwhile.
        if !st.next.is_empty() {
            return self.seal(st);
        }
        self.round(st, gather)
    }

    /// Makes sure a flusher will look at this partition: queues it unless it is queued or being
    /// worked on (then the thread looks again before it lets go), and wakes a gathering round.
    pub(super) fn wake(&self, st: &mut State) {
        self.wake_later(st, &mut Wakes::new(self));
    }

    /// As [`Inner::wake`], with the wake-ups sent when `wakes` is dropped: after the lock, if
    /// `wakes` was made before it.
    pub(super) fn wake_later(&self, st: &mut State, wakes: &mut Wakes<'_>) {
        // Only a running flusher can be gathering (waiting on `flush_cv`).
        if st.sched == Sched::Running {
            wakes.gatherer = true;
        }
        if st.sched == Sched::Idle {
            if let Some(me) = self.me.upgrade() {
                st.sched = Sched::Queued;
                wakes.queue = Some(me);
            }
        }
    }

    /// Writes out everything on the calling thread (a partition being dropped): waits for a
    /// flusher that is working on it, takes the partition over, and steps until nothing is left.
    pub(super) fn drain(&self) {
        let mut st = self.lock();
        st.stop = true;
        // A held round goes ahead (see `Inner::hold`).
        self.flush_cv.notify_all();
        while st.sched == Sched::Running {
            st = self.idle_cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.sched = Sched::Running;
        let mut gather = Gather::default();
        while self.has_work(&st) {
            st = self.step(st, &mut gather);
        }
        st.sched = Sched::Idle;
        self.idle_cv.notify_all();
    }
}

/// Wake-ups of the flusher threads decided under a partition's lock and sent when this is
/// dropped. Made before the lock guard, it is dropped after it: a thread woken while the waker
/// still holds the lock would at once wait for the lock (a second wake-up and a context switch
/// for each). Nothing is lost by waking late: the state the woken thread looks at was changed
/// under the lock, and a thread that waits checked it under the lock first.
pub(super) struct Wakes<'a> {
    inner: &'a Inner,
    gatherer: bool,
    queue: Option<Arc<Inner>>,
}

impl<'a> Wakes<'a> {
    pub(super) fn new(inner: &'a Inner) -> Self {
        Wakes {
            inner,
            gatherer: false,
            queue: None,
        }
    }
}

impl Drop for Wakes<'_> {
    fn drop(&mut self) {
        if self.gatherer {
            self.inner.flush_cv.notify_one();
        }
        if let Some(me) = self.queue.take() {
            self.inner.flushers.schedule(me);
        }
    }
}

/// Puts the calling flusher thread under `SCHED_BATCH`, so that when an appender wakes it the
/// kernel does not preempt the appender for it: it runs on an idle core at once, else when the
/// appender's thread next waits (a runtime worker that has read a turn's publishes). Under the
/// default policy a woken flusher took the core from the worker that woke it, and on a
/// 2-core machine under load the two fell into taking turns after every few messages: rounds
/// of a handful of records, and the worker switched out 100,000 times in a run of a million
/// (BENCHMARKS.md, "System calls, hand-offs and preemptions per MQTT message"). Nothing
/// changes where a core is free. Best effort: if the policy cannot be set, the thread runs as
/// before.
fn yield_to_the_waker() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is the calling
        // thread, whose policy alone changes.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc != 0 {
            tracing::debug!(
                "flusher thread: SCHED_BATCH not set: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Group commit across rounds. When a round's fsync completes, the producers it releases
/// typically come straight back with their next batch; starting the next fsync without them
/// would split the producers into two groups that alternate, each fsync carrying half of them.
/// So before a round that will fsync, the flusher waits until as many durable appenders are
/// buffered as were buffered plus released when the last round ended, for at most a quarter of
/// the last fsync's duration (capped at 250 us). A lone producer costs at most that linger.
///
/// Producers that do not wait for their acknowledgements (many devices sending at once, each
/// on its own clock) keep arriving while an fsync runs. When two or more did during the last
/// one, the next round lingers between its write and its fsync: what arrives is written
/// (subscribers see it as before) and joins the round's fsync, until the group expected as
/// above is complete, a gap of half an fsync passes with nothing new, or the linger reaches
/// four fsyncs (at most 2 ms). Many producers streaming at once then share one fsync per
/// linger instead of one every few messages; their acknowledgements wait up to the linger
/// more. Producers that wait for each acknowledgement never trigger it: while their fsync runs
/// nobody arrives.
#[derive(Default)]
pub(super) struct Gather {
    expect: usize,
    last_sync: Duration,
    /// Two or more durable appenders arrived during the last fsync.
    stream: bool,
}

impl Gather {
    /// How long a lingering round waits for the next arrival, and for all of them.
    fn linger_bounds(&self) -> (Duration, Duration) {
        let gap = (self.last_sync / 2).clamp(LINGER_GAP_MIN, LINGER_GAP_MAX);
        let bound = (self.last_sync * 4).clamp(LINGER_MIN, LINGER_MAX);
        (gap, bound)
    }

    fn wait<'a>(&self, inner: &'a Inner, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let durable = State::durable_waiters;
        // A stream is gathered after the write instead (`Inner::linger`): waiting here would
        // hold its records back from subscribers too.
        if self.expect < 2 || self.stream || st.stop || durable(&st) == 0 {
            return st;
        }
        let deadline = Instant::now() + (self.last_sync / 4).min(Duration::from_micros(250));
        // Appenders wake us when the group is complete, not at every arrival.
        st.wake_at = self.expect + (st.waiters.len() - durable(&st));
        while durable(&st) < self.expect {
            let now = Instant::now();
            if now >= deadline || st.stop || !st.next.is_empty() {
                break;
            }
            st = inner.wait_for_arrivals(st, deadline - now);
        }
        st
    }
}

impl State {
    /// Registered waiters that want their batches fsynced.
    fn durable_waiters(&self) -> usize {
        self.waiters.iter().filter(|w| w.durable).count()
    }
}

pub(super) fn complete(waiters: Vec<Waiter>, result: &std::result::Result<(), WriteFailure>) {
    for w in waiters {
        // A waiter that gave up (its future was dropped) does not care.
        let _ = w.done.send(result.clone());
    }
}

/// What the write passes of a round wrote: where the active file ends, what that makes
/// readable, and the durable waiters the round's fsync is to complete.
struct Pass {
    file: Arc<dyn super::super::fs::File>,
    end_pos: u64,
    target_offset: u64,
    target_end: u64,
    durable: Vec<Waiter>,
    /// What this pass wrote and has not yet made readable (a held round's write, announced
    /// after its fsync).
    unannounced: Option<Unannounced>,
}

/// Frames written and not yet readable, and where they take the partition's readable end.
struct Unannounced {
    frames: Vec<u8>,
    next_offset: u64,
    end: u64,
}

impl Pass {
    /// Takes a later pass of the same round in: its end, and its durable waiters for the fsync.
    fn join(&mut self, later: Pass) {
        self.end_pos = later.end_pos;
        self.target_offset = later.target_offset;
        self.target_end = later.target_end;
        self.durable.extend(later.durable);
    }
}

impl Inner {
    /// One flush round: one write pass and, if a waiter wants it durable, one fsync, with the
    /// passes of a linger between them while a stream keeps arriving (see [`Gather`]). Takes
    /// the lock back before returning.
    fn round<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        gather: &mut Gather,
    ) -> MutexGuard<'a, State> {
        if let Some(cause) = st.poisoned.clone() {
            let waiters = self.abandon_unwritten(&mut st);
            drop(st);
            complete(waiters, &Err(WriteFailure::Poisoned(cause)));
            return self.lock();
        }
        // Appends that all allow their fsync to wait are held, unwritten, and then written,
        // synced and made readable together (`Inner::hold`).
        let held = !st.stop && self.may_hold(&st);
        if held {
            st = self.hold(st);
        }
        // Ended by its allowance, the round's records become readable after its fsync; ended
        // by an append that allows no wait, as they are written.
        let deferred = held && !st.waiters.iter().any(Waiter::no_wait);
        let stopping = st.stop;
        let Some(mut pass) = self.write_pass(st, !deferred) else {
            return self.lock();
        };
        if pass.durable.is_empty() {
            let mut st = self.lock();
            self.announce(&mut st, pass.unannounced.take());
            return st;
        }
        if !deferred && gather.stream && !stopping && pass.durable.len() >= 2 {
            self.linger(gather, &mut pass);
        }

        let sync_started = Instant::now();
        let synced = pass.file.sync_data();
        self.usage.fsyncs.fetch_add(1, Ordering::Relaxed);
        gather.last_sync = sync_started.elapsed();
        self.usage.observe_fsync(gather.last_sync);

        let mut st = self.lock();
        // A held round's records become readable with their acknowledgements: a subscriber
        // gets a message and its publisher the PUBACK in the same turn of the runtime. (Also
        // after a failed fsync: they are written, as they were readable before.)
        self.announce(&mut st, pass.unannounced.take());
        let result = match synced {
            Ok(()) => {
                st.active.durable = pass.end_pos;
                st.durable_end = pass.target_end;
                st.durable_offset = pass.target_offset;
                Ok(())
            }
            Err(e) => {
                let cause = format!("fsync {}: {e}", st.active.path.display());
                Err(self.poison(&mut st, cause))
            }
        };
        let failed_later = if result.is_err() {
            self.abandon_unwritten(&mut st)
        } else {
            Vec::new()
        };
        let arrived = st.durable_waiters();
        gather.expect = pass.durable.len() + arrived;
        gather.stream = arrived >= 2;
        drop(st);
        complete(pass.durable, &result);
        complete(failed_later, &result);
        self.lock()
    }

    /// Writes the buffer at the end of the active file, makes it readable (with `announce`;
    /// else the caller does, [`Inner::announce`]) and completes the `Written` waiters; returns
    /// what the durable ones still wait for. `None` if the write failed (its waiters, and those
    /// of everything buffered, are failed). The lock is let go.
    fn write_pass<'a>(&'a self, mut st: MutexGuard<'a, State>, announce: bool) -> Option<Pass> {
        let buf = std::mem::take(&mut st.buf);
        let waiters = std::mem::take(&mut st.waiters);
        // What the buffer takes the active segment to. Offsets and bytes given out in segments
        // still to be created (`next`) are not written by this pass: claiming them would tell
        // readers and waiters about records that are only in memory.
        let (target_offset, target_end) = match st.next.front() {
            Some(first) => (first.base, st.assigned_end - st.next_bytes()),
            None => (st.next_offset, st.assigned_end),
        };
        let pos = st.active.written;
        let end_pos = pos + buf.len() as u64;
        let file = Arc::clone(&st.active.file);
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
            drop(st);
            failed.extend(waiters);
            complete(failed, &Err(failure));
            return None;
        }
        st.active.written = end_pos;
        self.usage.write_succeeded();
        let mut unannounced = Some(Unannounced {
            frames: buf,
            next_offset: target_offset,
            end: target_end,
        });
        if announce {
            self.announce(&mut st, unannounced.take());
        }
        drop(st);
        let (durable, written): (Vec<Waiter>, Vec<Waiter>) =
            waiters.into_iter().partition(|w| w.durable);
        complete(written, &Ok(()));
        Some(Pass {
            file,
            end_pos,
            target_offset,
            target_end,
            durable,
            unannounced,
        })
    }

    /// Makes what a pass wrote readable: the new end to readers and those who wait for it, the
    /// frames to those who follow the tail. The buffer comes back for the next appends if no
    /// one keeps it.
    fn announce(&self, st: &mut State, written: Option<Unannounced>) {
        let Some(w) = written else {
            return;
        };
        st.written_end = w.end;
        let first_offset = std::mem::replace(&mut st.written_offset, w.next_offset);
        self.end_tx.send_replace(w.next_offset);
        if let Some(mut b) = self.share_written(w.frames, first_offset, w.next_offset) {
            if st.buf.capacity() == 0 {
                b.clear();
                st.buf = b;
            }
        }
    }

    /// Waits at most `left` for appenders to wake a gathering round (see `State::wake_at`).
    fn wait_for_arrivals<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        left: Duration,
    ) -> MutexGuard<'a, State> {
        self.flush_cv
            .wait_timeout(st, left)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0)
    }

    /// Holds the round's fsync back while durable appends keep arriving: what came is written
    /// (and so delivered) and joins the round, until the group the last round released is all
    /// back (producers that wait for their acknowledgements: nobody else is coming), a gap
    /// passes with nothing new, the linger reaches its bound, or the segment rolls.
    fn linger(&self, gather: &Gather, pass: &mut Pass) {
        let durable = State::durable_waiters;
        let (gap, bound) = gather.linger_bounds();
        let started = Instant::now();
        let mut st = self.lock();
        loop {
            let missing = gather.expect.saturating_sub(pass.durable.len());
            if missing == 0 {
                break;
            }
            // Appenders wake us when the rest of the group is here, not at every arrival.
            st.wake_at = missing + (st.waiters.len() - durable(&st));
            let until = (Instant::now() + gap).min(started + bound);
            loop {
                let now = Instant::now();
                if now >= until || st.stop || durable(&st) >= missing {
                    break;
                }
                st = self.wait_for_arrivals(st, until - now);
            }
            st.wake_at = usize::MAX;
            if durable(&st) == 0 || self.goes_ahead(&st) {
                break;
            }
            let Some(more) = self.write_pass(st, true) else {
                return;
            };
            pass.join(more);
            if started.elapsed() >= bound {
                return;
            }
            st = self.lock();
        }
        st.wake_at = usize::MAX;
    }

    /// Whether the round's appends may be held: some wait for an fsync, and every one of them
    /// allows it to wait (`Waiter::sync_by`).
    fn may_hold(&self, st: &State) -> bool {
        // (No roll is pending: `step` seals before a round.)
        !st.waiters.is_empty()
            && !st.waiters.iter().any(Waiter::no_wait)
            && st.buf.len() < self.write_buffer
    }

    /// Holds a round whose appends all allow their fsync to wait, writing nothing: what
    /// arrives meanwhile joins the round, until the earliest allowed moment, an append that
    /// allows no wait (a client waiting for its acknowledgement, a flush), a full write
    /// buffer, a roll or a stop. The round then writes it all with one write and one fsync;
    /// when the allowance ended the hold, its records become readable only after the fsync.
    /// Devices publishing on their own clock share the fsync, their subscribers are not shown
    /// a record a power cut could take back, and each client's PUBACK and the messages for it
    /// go out together. Only an append that ends the hold wakes the round, not every arrival.
    fn hold<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.held = true;
        while let Some(until) = st.waiters.iter().filter_map(|w| w.sync_by).min() {
            let now = Instant::now();
            if now >= until
                || self.goes_ahead(&st)
                || st.buf.len() >= self.write_buffer
                || st.waiters.iter().any(Waiter::no_wait)
            {
                break;
            }
            st = self.wait_for_arrivals(st, until - now);
        }
        st.held = false;
        st
    }

    /// A held or lingering round goes ahead at once: the partition stops, failed, or rolls.
    fn goes_ahead(&self, st: &State) -> bool {
        st.stop || st.poisoned.is_some() || !st.next.is_empty()
    }

    /// Hands the frames just written to the readers following the end ([`super::Partition::tail`]),
    /// or gives the buffer back when no one follows.
    fn share_written(&self, buf: Vec<u8>, first_offset: u64, next_offset: u64) -> Option<Vec<u8>> {
        if self.tail_tx.receiver_count() == 0 {
            if self.tail_tx.borrow().is_some() {
                self.tail_tx.send_replace(None);
            }
            return Some(buf);
        }
        if buf.is_empty() {
            return Some(buf);
        }
        // The rounds just before, while they are few and small and join this one.
        let mut rounds = Vec::with_capacity(TAIL_ROUNDS);
        let held = self.tail_tx.borrow();
        if let Some(prev) = held.as_ref().filter(|p| p.next_offset == first_offset) {
            let mut bytes = 0;
            let keep = prev
                .rounds
                .iter()
                .rev()
                .take(TAIL_ROUNDS - 1)
                .take_while(|(_, f)| {
                    bytes += f.len();
                    bytes <= TAIL_BYTES
                })
                .count();
            rounds.extend_from_slice(&prev.rounds[prev.rounds.len() - keep..]);
        }
        // The borrow is let go before the send (it holds the channel's lock).
        drop(held);
        rounds.push((first_offset, bytes::Bytes::from(buf)));
        self.tail_tx.send_replace(Some(super::WrittenFrames {
            first_offset: rounds[0].0,
            next_offset,
            rounds,
        }));
        None
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
        let waiters = self.abandon_unwritten(st);
        let failure = if let Err(te) = st.active.file.set_len(good) {
            self.poison(
                st,
                format!("{cause}; then cutting the file back failed: {te}"),
            )
        } else if e.raw_os_error() == Some(libc::ENOSPC) {
            WriteFailure::NoSpace(cause)
        } else {
            WriteFailure::Write(cause, e.kind())
        };
        (failure, waiters)
    }

    /// Forgets every batch not yet written (the active segment's buffer and the segments to
    /// come) and returns their waiters, and those of flush requests, to be failed.
    pub(super) fn abandon_unwritten(&self, st: &mut State) -> Vec<Waiter> {
        let lost = st.assigned_end - st.written_end + SEGMENT_HEADER_LEN * st.next.len() as u64;
        st.buf.clear();
        st.size -= lost;
        self.usage.bytes.fetch_sub(lost, Ordering::Relaxed);
        let good = st.active.written;
        st.active.size = good;
        st.active.index.truncate_to(good);
        st.next_offset = st.written_offset;
        st.assigned_end = st.written_end;
        let mut waiters = std::mem::take(&mut st.waiters);
        for n in st.next.drain(..) {
            waiters.extend(n.waiters);
        }
        waiters
    }

    /// Seals the active segment and makes the first of `State::next` active (see the module
    /// docs). The lock is released while the files are written.
    fn seal<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        if let Some(cause) = st.poisoned.clone() {
            let waiters = self.abandon_unwritten(&mut st);
            drop(st);
            complete(waiters, &Err(WriteFailure::Poisoned(cause)));
            return self.lock();
        }
        // While `next` is not empty appends go there: the active segment is the flusher's.
        let buf = std::mem::take(&mut st.buf);
        let waiters = std::mem::take(&mut st.waiters);
        let Some(first) = st.next.front() else {
            return st;
        };
        let (base, end) = (first.base, st.assigned_end - st.next_bytes());
        let file = Arc::clone(&st.active.file);
        let pos = st.active.written;
        let end_pos = pos + buf.len() as u64;
        let unsynced = st.active.durable < end_pos;
        drop(st);

        if !buf.is_empty() {
            self.usage.writes.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = file.write_all_at(&buf, pos) {
                let mut st = self.lock();
                let (failure, mut failed) = self.rollback(&mut st, e);
                drop(st);
                failed.extend(waiters);
                complete(failed, &Err(failure));
                return self.lock();
            }
            self.usage.write_succeeded();
        }
        let synced = if unsynced {
            self.usage.fsyncs.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let r = file.sync_data();
            self.usage.observe_fsync(started.elapsed());
            r
        } else {
            Ok(())
        };
        let mut st = self.lock();
        st.active.written = end_pos;
        st.written_end = end;
        let first_offset = std::mem::replace(&mut st.written_offset, base);
        self.end_tx.send_replace(base);
        self.share_written(buf, first_offset, base);
        if let Err(e) = synced {
            let cause = format!("fsync {}: {e}", st.active.path.display());
            let failure = self.poison(&mut st, cause);
            let mut failed = self.abandon_unwritten(&mut st);
            drop(st);
            failed.extend(waiters);
            complete(failed, &Err(failure));
            return self.lock();
        }
        st.active.durable = end_pos;
        st.durable_end = end;
        st.durable_offset = base;
        let idx = SegmentIndex {
            base_offset: st.active.base,
            next_offset: base,
            log_len: end_pos,
            max_timestamp: st.active.index.max_timestamp,
            max_append_time: st.active.max_append_time,
            entries: st.active.index.entries.clone(),
        };
        drop(st);
        complete(waiters, &Ok(()));

        let interval = self.cfg.index_interval_bytes();
        let created =
            segment::write_index(self.fs.as_ref(), &self.dir, &idx).and_then(|idx_path| {
                create_segment(self.fs.as_ref(), &self.dir, base, interval).inspect_err(|_| {
                    let _ = self.fs.remove_file(&idx_path);
                })
            });
        let mut st = self.lock();
        let new = match created {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(topic = %self.topic, partition = self.id, "sealing segment {}: {e}; failing the batches after it", st.active.path.display());
                let failure = match &e {
                    LogError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                        WriteFailure::NoSpace(e.to_string())
                    }
                    LogError::Io { source, .. } => {
                        WriteFailure::Write(e.to_string(), source.kind())
                    }
                    _ => WriteFailure::Write(e.to_string(), std::io::ErrorKind::Other),
                };
                let failed = self.abandon_unwritten(&mut st);
                drop(st);
                complete(failed, &Err(failure));
                return self.lock();
            }
        };
        let Some(next) = st.next.pop_front() else {
            return st;
        };
        let idx_len = idx.encoded_len() as u64;
        st.size += idx_len;
        self.usage.bytes.fetch_add(idx_len, Ordering::Relaxed);
        let old = std::mem::replace(
            &mut st.active,
            Active {
                size: next.size,
                index: next.index,
                max_append_time: next.max_append_time,
                ..new
            },
        );
        st.buf = next.buf;
        st.waiters = next.waiters;
        st.sealed.push_back(Arc::new(Sealed::new(
            idx,
            idx_len,
            old.path,
            old.file,
            Vec::new(),
            old.compacted,
        )));
        // Appends that went past `retention_size` while nothing was sealed yet.
        if let (Some(limit), OnFull::DropOldest) = (st.limits.retention_size, st.limits.on_full) {
            while st.size > limit && self.delete_oldest_locked(&mut st, "retention_size") {}
        }
        st
    }

    /// Removes the files of deleted segments (see `Inner::delete_oldest_locked`). The lock is
    /// released meanwhile. A file that cannot be removed is logged; the next open finds it.
    fn unlink<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let doomed = std::mem::take(&mut st.doomed);
        drop(st);
        for d in doomed {
            for path in &d.paths {
                match self.fs.remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::error!(topic = %self.topic, partition = self.id, "remove {}: {e}", path.display());
                    }
                }
            }
            self.usage.unlinking.fetch_sub(d.bytes, Ordering::Relaxed);
        }
        self.lock()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use crate::log::record::BatchBuilder;
    use crate::log::{Durability, PartitionChoice, Store, StoreOptions, TopicConfig};

    thread_local! {
        /// Makes flusher threads fail to start when asked for from this thread.
        pub(super) static NO_THREADS: Cell<bool> = const { Cell::new(false) };
    }

    /// With no flusher thread running and none able to start, an appender does the round
    /// itself rather than wait for a thread that never comes: its records are acknowledged
    /// and readable.
    #[test]
    fn an_append_with_no_flusher_thread_to_be_had_is_written_by_its_appender() {
        let dir = tempfile::tempdir().expect("tempdir");
        let topics = [("t".to_string(), TopicConfig::default())];
        let (store, _) = Store::open(dir.path(), StoreOptions::default(), &topics).expect("open");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            NO_THREADS.set(true);
            let mut b = BatchBuilder::new();
            b.push(0, Some(b"k"), Some(b"v"), &[]);
            let r = store.append("t", PartitionChoice::Id(0), &b, Durability::Durable);
            let _ = tx.send((r.map(|(_, a)| a.base_offset), store));
        });
        let (appended, store) = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the append finishes");
        assert_eq!(appended.expect("append"), 0);
        let topic = store.topic("t").expect("topic");
        assert_eq!(topic.partition(0).expect("partition").durable_offset(), 1);
    }

    /// A store with one topic of one partition.
    fn one_partition() -> (tempfile::TempDir, Store, Arc<super::super::Partition>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let topics = [("t".to_string(), TopicConfig::default())];
        let (store, _) = Store::open(dir.path(), StoreOptions::default(), &topics).expect("open");
        let topic = store.topic("t").expect("topic");
        let part = Arc::clone(topic.partition(0).expect("partition"));
        (dir, store, part)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Appends one durable record whose fsync may wait `allow`.
    fn append_within(store: &Store, allow: std::time::Duration) -> super::super::AppendTicket {
        let (_, ticket) = store
            .append_start_within(
                "t",
                PartitionChoice::Id(0),
                &one_record(),
                Durability::Durable,
                allow,
            )
            .expect("append");
        ticket
    }

    fn one_record() -> BatchBuilder {
        let mut b = BatchBuilder::new();
        b.push(0, Some(b"k"), Some(b"v"), &[]);
        b
    }

    /// Durable appends that allow their fsync to wait are held unwritten, then written with one
    /// write, synced with one fsync and made readable together when the first one's allowance
    /// is up.
    #[test]
    fn appends_that_allow_a_wait_are_held_then_written_synced_and_readable_together() {
        let (_dir, store, part) = one_partition();
        let allow = std::time::Duration::from_secs(3);
        let usage = || {
            let u = store.usage();
            (
                u.writes.load(Ordering::Relaxed),
                u.fsyncs.load(Ordering::Relaxed),
            )
        };
        let (writes, fsyncs) = usage();
        let started = std::time::Instant::now();
        let first = append_within(&store, allow);
        let second = append_within(&store, allow);
        // Held: nothing written, nothing readable, while the allowance runs.
        assert_eq!(usage(), (writes, fsyncs));
        assert_eq!(part.end_offset(), 0);
        assert_eq!(*part.watch_end().borrow(), 0);
        let rt = runtime();
        assert_eq!(rt.block_on(first.finish()).expect("first").base_offset, 0);
        assert_eq!(rt.block_on(second.finish()).expect("second").base_offset, 1);
        assert!(
            started.elapsed() >= allow,
            "written before the allowance was up"
        );
        assert_eq!(usage(), (writes + 1, fsyncs + 1));
        assert_eq!(part.durable_offset(), 2);
        assert_eq!(part.end_offset(), 2);
        assert_eq!(*part.watch_end().borrow(), 2);
    }

    /// An append that allows no wait (one that waits for its fsync, or only for its write)
    /// ends a hold at once, and the held appends are written and synced with it.
    #[test]
    fn an_append_that_allows_no_wait_ends_a_hold() {
        for urgent in [Durability::Durable, Durability::Written] {
            let (_dir, store, part) = one_partition();
            let allow = std::time::Duration::from_secs(60);
            let fsyncs = || store.usage().fsyncs.load(Ordering::Relaxed);
            let before = fsyncs();
            let held = append_within(&store, allow);
            assert_eq!(part.end_offset(), 0, "the held record is written");
            let started = std::time::Instant::now();
            let (_, appended) = store
                .append("t", PartitionChoice::Id(0), &one_record(), urgent)
                .expect("an append that waits for nobody");
            assert_eq!(appended.base_offset, 1);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "the {urgent:?} append waited for the hold"
            );
            let rt = runtime();
            assert_eq!(rt.block_on(held.finish()).expect("held").base_offset, 0);
            assert_eq!(fsyncs(), before + 1);
            assert_eq!(part.durable_offset(), 2);
            assert_eq!(part.end_offset(), 2);
        }
    }
}
