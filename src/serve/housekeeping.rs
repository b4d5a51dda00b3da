//! The housekeeping round: the broker's (buffered data written and fsynced, retention, free
//! space, group expiry: every `log.flush_interval`), the MQTT hub's (session expiry, `$SYS`,
//! metadata: every second), the allocator's (freed memory returned: every 10 s) and the
//! systemd watchdog's ping, in one round on one thread that sleeps between rounds in one timed
//! wait: an idle broker wakes about once a second and no async worker with it (the round as a
//! blocking-pool task cost the worker a timer, a hand-off and a completion each time).
//!
//! [`Housekeeper::run`] runs the rounds on the thread that calls it: `brook serve` gives it
//! its main thread, which would otherwise only wait for the runtime (a thread fewer; under
//! qemu-user each thread also costs the emulator most of a MiB); the library's
//! [`super::start`] gives it a thread of its own.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::server::{mqtt, systemd};

/// The housekeeping rounds, to be run on a thread by [`Housekeeper::run`] until the broker
/// shuts down.
pub struct Housekeeper {
    broker: Arc<Broker>,
    hub: Arc<mqtt::hub::Hub>,
    flush_interval: Duration,
    watchdog: Option<Duration>,
    /// Disconnected when the broker shuts down.
    stop: mpsc::Receiver<()>,
    /// Dropped when the rounds are over (the shutdown waits for it).
    _done: oneshot::Sender<()>,
    /// The hub's round starts dispatcher tasks: the thread works in the runtime's context.
    runtime: tokio::runtime::Handle,
}

/// The housekeeping of `broker` and `hub`, and the task that ends it once `stop` turns true and
/// completes when its last round is over. Call from within the runtime.
pub(super) fn housekeeping(
    broker: Arc<Broker>,
    hub: Arc<mqtt::hub::Hub>,
    flush_interval: Duration,
    watchdog: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) -> (Housekeeper, JoinHandle<()>) {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel();
    let keeper = Housekeeper {
        broker,
        hub,
        flush_interval,
        watchdog,
        stop: stop_rx,
        _done: done_tx,
        runtime: tokio::runtime::Handle::current(),
    };
    let ender = tokio::spawn(async move {
        let _ = stop.wait_for(|s| *s).await;
        drop(stop_tx);
        // Err once the rounds are over: the sender is dropped, never used.
        let _ = done_rx.await;
    });
    (keeper, ender)
}

impl Housekeeper {
    /// Runs the rounds on the calling thread until the broker shuts down (or the task from
    /// [`housekeeping`] is gone).
    pub fn run(self) {
        let _runtime = self.runtime.enter();
        let period = [Some(self.flush_interval), Some(HUB_EVERY), self.watchdog]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(HUB_EVERY);
        let mut maintain = Due::new(self.flush_interval, period);
        let mut hub_round = Due::new(HUB_EVERY, period);
        let mut trim = Due::new(TRIM_EVERY, period);
        let mut last_ping = Instant::now();
        let mut next = Instant::now();
        loop {
            match self
                .stop
                .recv_timeout(next.saturating_duration_since(Instant::now()))
            {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            // After a late round the pace starts again from now (no rounds in a burst).
            next = if next + period > now {
                next + period
            } else {
                now + period
            };
            let (maintain_due, hub_due, trim_due) =
                (maintain.take(now), hub_round.take(now), trim.take(now));
            let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let r = if maintain_due {
                    self.broker.maintain()
                } else {
                    Ok(())
                };
                if hub_due {
                    self.hub.housekeeping();
                }
                if trim_due {
                    crate::memory::release_free();
                }
                r
            }));
            match round {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("housekeeping: {e}"),
                Err(_) => tracing::error!("housekeeping round panicked; the next one runs"),
            }
            // The watchdog hears from us only while housekeeping keeps running.
            if let Some(period) = self.watchdog {
                if last_ping.elapsed() >= period / 2 {
                    let _ = systemd::notify("WATCHDOG=1");
                    last_ping = Instant::now();
                }
            }
        }
    }
}

/// How often housekeeping hands freed memory back to the operating system.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// How often the MQTT hub's housekeeping runs.
const HUB_EVERY: Duration = Duration::from_secs(1);

/// A job of the housekeeping round that is due every `every`, run by rounds that come every
/// `period` (the shortest of the jobs'): due at the first round and then at the round nearest
/// each further `every`.
struct Due {
    every: Duration,
    slack: Duration,
    next: Option<Instant>,
}

impl Due {
    fn new(every: Duration, period: Duration) -> Self {
        Due {
            every,
            slack: period / 2,
            next: None,
        }
    }

    /// Whether the job runs in the round at `now`. Its pace is kept whether rounds come a
    /// little early or late; after a stall it starts again from `now`.
    fn take(&mut self, now: Instant) -> bool {
        let next = match self.next {
            None => now + self.every,
            Some(next) if now + self.slack < next => return false,
            Some(next) if next + self.every <= now => now + self.every,
            Some(next) => next + self.every,
        };
        self.next = Some(next);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Due;
    use std::time::{Duration, Instant};

    /// Which of the rounds `period` apart (with a little jitter) run a job due every `every`.
    fn runs(every: Duration, period: Duration, rounds: u32) -> Vec<u32> {
        let t0 = Instant::now();
        let mut due = Due::new(every, period);
        (0..rounds)
            .filter(|&i| {
                // Rounds come a little early or late.
                let jitter = Duration::from_millis(u64::from(i % 3) * 7);
                due.take(t0 + period * i + jitter)
            })
            .collect()
    }

    #[test]
    fn housekeeping_jobs_run_at_their_own_pace_in_the_shared_rounds() {
        let s = Duration::from_secs(1);
        // Every round, from the first.
        assert_eq!(runs(s, s, 5), vec![0, 1, 2, 3, 4]);
        // Every tenth round.
        assert_eq!(runs(10 * s, s, 25), vec![0, 10, 20]);
        // A hub round every second when the flushes come every 100 ms.
        assert_eq!(runs(s, s / 10, 25), vec![0, 10, 20]);
        // A flush interval of 2.4 s in rounds a second apart: the rounds nearest 0, 2.4, 4.8
        // and 7.2 s.
        assert_eq!(runs(s * 12 / 5, s, 8), vec![0, 2, 5, 7]);
        // After a stall of 30 s, the pace starts again.
        let t0 = Instant::now();
        let mut due = Due::new(s, s);
        assert!(due.take(t0));
        assert!(due.take(t0 + 30 * s));
        assert!(!due.take(t0 + 30 * s + s / 4));
        assert!(due.take(t0 + 31 * s));
    }
}
