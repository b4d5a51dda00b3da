//! Push-back from live subscribers to publishers.
//!
//! Each subscribing connection has an inbox ([`super::inbox`]) of at most [`CHANNEL`] messages
//! from the dispatchers.
//! When publishers outpace a subscriber, its inbox fills; once it overflows, the subscriber
//! reads what it missed back from the log, and its lag (and so each message's latency) grows
//! for as long as the publishers stay faster. To keep live delivery live, a dispatcher that
//! leaves an inbox less than half free presses: publishing connections (those without
//! subscriptions of their own, which must keep reading their acknowledgements) then stop
//! reading until the subscriber has drained its inbox to a quarter, or for at most
//! [`HOLD_MAX`] per episode. TCP carries the push-back to the clients.
//!
//! A subscriber that cannot keep up even so overflows its inbox, reads from the log
//! instead, and presses no more while it does: one slow reader holds publishers back for at
//! most [`HOLD_MAX`], never for good.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::units::Narrow;

/// Messages waiting in a connection's inbox before it is marked lagged.
pub const CHANNEL: usize = 1024;
/// A dispatcher presses when an inbox has fewer free places than this.
pub const PRESS_BELOW: usize = CHANNEL / 2;
/// A subscriber relieves when fewer messages than this wait in its inbox.
pub const RELIEVE_BELOW: usize = CHANNEL / 4;
/// The longest a publishing connection is held back in one episode of pressure.
pub const HOLD_MAX: Duration = Duration::from_millis(100);

/// Whether a subscriber is falling behind, shared by the hub's dispatchers and connections.
pub struct Pressure {
    started: Instant,
    /// Milliseconds after `started` (plus one) of the last press; 0: none since relieved.
    pressed_at: AtomicU64,
    relieved: Notify,
}

impl Default for Pressure {
    fn default() -> Self {
        Pressure {
            started: Instant::now(),
            pressed_at: AtomicU64::new(0),
            relieved: Notify::new(),
        }
    }
}

impl Pressure {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis().sat_u64() + 1
    }

    /// A dispatcher left a subscriber's inbox more than half full.
    pub fn press(&self) {
        self.pressed_at.store(self.now(), Ordering::Relaxed);
    }

    /// A subscriber drained its inbox (below [`RELIEVE_BELOW`]): publishers may go on.
    pub fn relieve(&self) {
        if self.pressed_at.load(Ordering::Relaxed) != 0 {
            self.pressed_at.store(0, Ordering::Relaxed);
            self.relieved.notify_waiters();
        }
    }

    /// Whether publishers should hold back: pressed, and recently (a subscriber that left
    /// without relieving stops counting after [`HOLD_MAX`]).
    pub fn is_on(&self) -> bool {
        let at = self.pressed_at.load(Ordering::Relaxed);
        at != 0 && self.now().saturating_sub(at) < HOLD_MAX.as_millis().sat_u64()
    }

    /// Completes at the next [`Pressure::relieve`] after this call (take it before checking
    /// [`Pressure::is_on`], so that no relief is missed in between).
    pub fn relieved(&self) -> Notified<'_> {
        self.relieved.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relief_wakes_a_holder_that_looked_before_it() {
        let p = Pressure::default();
        assert!(!p.is_on());
        p.press();
        assert!(p.is_on());
        let relieved = p.relieved();
        p.relieve();
        assert!(!p.is_on());
        tokio::time::timeout(Duration::from_secs(5), relieved)
            .await
            .expect("woken by the relief");
    }

    #[test]
    fn pressure_left_alone_wears_off() {
        let p = Pressure::default();
        p.press();
        assert!(p.is_on());
        std::thread::sleep(HOLD_MAX + Duration::from_millis(20));
        assert!(
            !p.is_on(),
            "a press not renewed stops counting after HOLD_MAX"
        );
    }
}
