//! A simple adaptive threadpool that returns a oneshot future.
//!
//! Brook: rewritten. sled 0.34.7 kept seven threads waiting, each waking every second to
//! look for work, and counted "waiting" threads in a way that could wrap below zero. This
//! pool keeps no thread: it starts one whenever a job is queued with no thread waiting to
//! take it (so a job that waits for another job, as a flush waits for a log write, never
//! waits behind itself), and a thread leaves after one second without work. An idle broker
//! runs none.

use std::{
    collections::VecDeque,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    thread,
    time::Duration,
};

use parking_lot::{Condvar, Mutex};

use crate::{debug_delay, warn, Error, Lazy, OneShot, Result};

// This is lower for CI reasons.
#[cfg(windows)]
const MAX_THREADS: usize = 16;

#[cfg(not(windows))]
const MAX_THREADS: usize = 128;

/// How long a thread waits for more work before it leaves.
const IDLE_EXIT: Duration = Duration::from_secs(1);

type Work = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct State {
    jobs: VecDeque<Work>,
    /// Threads waiting on `ready` (including any notified that have not yet woken).
    waiting: usize,
    /// Threads alive or being started.
    threads: usize,
}

struct Queue {
    ready: Condvar,
    state: Mutex<State>,
}

static QUEUE: Lazy<Queue, fn() -> Queue> = Lazy::new(init_queue);
static BROKEN: AtomicBool = AtomicBool::new(false);

fn init_queue() -> Queue {
    Queue { ready: Condvar::new(), state: Mutex::new(State::default()) }
}

/// Takes jobs until `IDLE_EXIT` passes without one.
fn perform_work() {
    let mut state = QUEUE.state.lock();
    loop {
        debug_delay();
        if let Some(job) = state.jobs.pop_front() {
            drop(state);
            (job)();
            state = QUEUE.state.lock();
            continue;
        }
        state.waiting += 1;
        let timed_out = QUEUE.ready.wait_for(&mut state, IDLE_EXIT).timed_out();
        state.waiting -= 1;
        if timed_out && state.jobs.is_empty() {
            state.threads -= 1;
            return;
        }
    }
}

fn spawn_new_thread() -> Result<()> {
    if BROKEN.load(Relaxed) {
        return Err(Error::ReportableBug(
            "IO thread unexpectedly panicked. please report \
            this bug on the sled github repo."
                .to_string(),
        ));
    }

    static SPAWNS: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);
    let spawn_id = SPAWNS.fetch_add(1, Relaxed);

    let spawn_res = thread::Builder::new()
        .name(format!("sled-io-{}", spawn_id))
        .spawn(move || {
            debug_delay();
            let res = std::panic::catch_unwind(perform_work);
            if res.is_err() {
                QUEUE.state.lock().threads -= 1;
                // IO thread panicked, shut down the system
                log::error!(
                    "IO thread unexpectedly terminated.
                    please report this error at the sled github repo. {:?}",
                    res
                );
                BROKEN.store(true, Relaxed);
            }
        });

    if let Err(e) = spawn_res {
        static E: AtomicBool = AtomicBool::new(false);

        QUEUE.state.lock().threads -= 1;

        if !E.swap(true, Relaxed) {
            // only execute this once
            warn!(
                "Failed to dynamically increase the threadpool size: {:?}.",
                e,
            )
        }
    }

    Ok(())
}

/// Spawn a function on the threadpool.
pub fn spawn<F, R>(work: F) -> Result<OneShot<R>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static + Sized,
{
    let (promise_filler, promise) = OneShot::pair();
    let task = move || {
        let result = (work)();
        promise_filler.fill(result);
    };

    let mut state = QUEUE.state.lock();
    state.jobs.push_back(Box::new(task));
    // A thread for every queued job: a waiting one, or a new one.
    let start = state.jobs.len() > state.waiting && state.threads < MAX_THREADS;
    if start {
        state.threads += 1;
    }
    // having held the mutex makes this linearized with the wait in perform_work.
    drop(state);
    QUEUE.ready.notify_one();
    if start {
        spawn_new_thread()?;
        // No thread could be started and none runs: the caller does the queued work itself
        // rather than leave it waiting for a thread that may never come.
        loop {
            let mut state = QUEUE.state.lock();
            if state.threads > 0 {
                break;
            }
            let Some(job) = state.jobs.pop_front() else {
                break;
            };
            drop(state);
            (job)();
        }
    }

    Ok(promise)
}
