//! The retention timeline: the clock that decides when a segment is old enough to delete.
//!
//! A Raspberry Pi has no real-time clock. It may boot at 1970 (or at the time saved at last
//! shutdown) and jump by days or years when NTP syncs. Were retention to use the wall clock, such
//! a jump would make every stored record look ancient and wipe the log at once.
//!
//! **The rule.** Brook stamps each batch with an *append time* on its own timeline and measures
//! retention on that timeline only. The timeline is the wall clock plus a correction:
//!
//! 1. *While Brook runs*, every reading compares how far the wall clock moved with how far the
//!    monotonic clock moved. If they disagree by more than [`JUMP_TOLERANCE_MS`], the wall clock
//!    stepped; the step is absorbed into the correction, so the timeline keeps advancing at the
//!    monotonic rate and no stored record ages by the size of the step (forward or backward).
//! 2. *At start-up* the timeline resumes at `max(wall + min(correction, 0), newest append time
//!    in the log)`: it never starts behind what the log already holds (a clock that boots at 1970
//!    cannot make stored data look like it comes from the future, which would keep it forever),
//!    and a correction that was holding the timeline *behind* the wall clock (an earlier forward
//!    step) is kept, so the records stamped before that step do not age by it after a restart.
//!    Time that passed while Brook was stopped counts only as far as the wall clock shows it.
//! 3. The correction is persisted (a 16-byte file, `@clock`, in the topics directory) only when it
//!    changes, which happens on a clock step or a start-up adjustment: not on the write path.
//!
//! Record timestamps (what consumers see and what time lookups search) are never rewritten: they
//! are the producer's, or the wall clock's at produce time.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::error::{LogError, Result};
use super::fs::Fs;
use crate::units::Narrow;

/// How far the wall clock may drift from the monotonic clock between two readings before the
/// difference counts as a clock step.
pub const JUMP_TOLERANCE_MS: i64 = 60_000;

/// Where the time comes from. Tests drive a fake one.
pub trait TimeSource: Send + Sync {
    /// Wall-clock milliseconds since the Unix epoch.
    fn wall_ms(&self) -> i64;
    /// Monotonic milliseconds since an arbitrary start.
    fn mono_ms(&self) -> i64;
}

/// The system clocks.
pub struct SystemTimeSource {
    start: Instant,
}

impl Default for SystemTimeSource {
    fn default() -> Self {
        SystemTimeSource {
            start: Instant::now(),
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (negative before 1970).
pub fn wall_clock_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis().sat_i64(),
        Err(e) => -(e.duration().as_millis().sat_i64()),
    }
}

impl TimeSource for SystemTimeSource {
    fn wall_ms(&self) -> i64 {
        wall_clock_ms()
    }
    fn mono_ms(&self) -> i64 {
        self.start.elapsed().as_millis().sat_i64()
    }
}

struct ClockState {
    last_wall: i64,
    last_mono: i64,
    correction: i64,
    steps: u64,
}

/// The retention timeline of one store.
pub struct LogClock {
    source: Box<dyn TimeSource>,
    state: Mutex<ClockState>,
    path: Option<PathBuf>,
}

impl LogClock {
    /// Starts the timeline for a log whose newest append time is `newest_append` (or `None` for
    /// an empty log), with the correction persisted at `path` (when given).
    pub fn start(
        source: Box<dyn TimeSource>,
        fs: &dyn Fs,
        path: Option<&Path>,
        newest_append: Option<i64>,
    ) -> Result<LogClock> {
        let stored = match path {
            Some(p) => read_correction(fs, p)?,
            None => 0,
        };
        let wall = source.wall_ms();
        let mut now = wall.saturating_add(stored.min(0));
        if let Some(newest) = newest_append {
            now = now.max(newest);
        }
        let correction = now - wall;
        let clock = LogClock {
            state: Mutex::new(ClockState {
                last_wall: wall,
                last_mono: source.mono_ms(),
                correction,
                steps: 0,
            }),
            source,
            path: path.map(Path::to_path_buf),
        };
        if correction != stored {
            tracing::info!(
                correction_ms = correction,
                previous_ms = stored,
                "retention timeline resumes {} ms from the wall clock",
                correction
            );
            clock.persist(fs, correction)?;
        }
        Ok(clock)
    }

    /// The current time on the retention timeline, in milliseconds.
    pub fn now(&self, fs: &dyn Fs) -> i64 {
        let wall = self.source.wall_ms();
        let mono = self.source.mono_ms();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let expected = st.last_wall + (mono - st.last_mono);
        let step = wall - expected;
        st.last_wall = wall;
        st.last_mono = mono;
        if step.abs() > JUMP_TOLERANCE_MS {
            st.correction -= step;
            st.steps += 1;
            let correction = st.correction;
            drop(st);
            tracing::warn!(
                step_ms = step,
                correction_ms = correction,
                "wall clock stepped; retention ages are kept on Brook's own timeline"
            );
            if let Err(e) = self.persist(fs, correction) {
                tracing::error!("cannot persist the retention timeline correction: {e}");
            }
            return wall + correction;
        }
        wall + st.correction
    }

    /// Clock steps absorbed since start.
    pub fn steps(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).steps
    }

    /// Milliseconds between the wall clock and the timeline.
    pub fn correction(&self) -> i64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .correction
    }

    fn persist(&self, fs: &dyn Fs, correction: i64) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(b"BRKCLOCK");
        bytes[8..].copy_from_slice(&correction.to_le_bytes());
        super::fs::replace_durably(fs, path, &bytes)
    }
}

fn read_correction(fs: &dyn Fs, path: &Path) -> Result<i64> {
    if !fs.exists(path) {
        return Ok(0);
    }
    let f = fs
        .open(path, false)
        .map_err(|e| LogError::io("open", path, e))?;
    let mut b = [0u8; 16];
    if f.read_exact_at(&mut b, 0).is_err() || &b[..8] != b"BRKCLOCK" {
        tracing::warn!(path = %path.display(), "unreadable clock file; starting from the wall clock");
        return Ok(0);
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[8..]);
    Ok(i64::from_le_bytes(v))
}

/// A time source moved by hand: for tests and drills of clock steps. Clones share the time.
#[derive(Clone, Debug, Default)]
pub struct ManualTime {
    wall: std::sync::Arc<std::sync::atomic::AtomicI64>,
    mono: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl ManualTime {
    /// Starts at wall-clock `wall_ms` and monotonic 0.
    pub fn new(wall_ms: i64) -> Self {
        let t = ManualTime::default();
        t.wall.store(wall_ms, std::sync::atomic::Ordering::SeqCst);
        t
    }

    /// Lets `ms` pass: both clocks advance.
    pub fn advance(&self, ms: i64) {
        use std::sync::atomic::Ordering::SeqCst;
        self.wall.fetch_add(ms, SeqCst);
        self.mono.fetch_add(ms, SeqCst);
    }

    /// Steps the wall clock by `ms` (NTP sync, a user setting the date); monotonic time stays.
    pub fn step_wall(&self, ms: i64) {
        self.wall.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sets the wall clock (a reboot into a board without RTC, say); monotonic time stays.
    pub fn set_wall(&self, ms: i64) {
        self.wall.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl TimeSource for ManualTime {
    fn wall_ms(&self) -> i64 {
        self.wall.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn mono_ms(&self) -> i64 {
        self.mono.load(std::sync::atomic::Ordering::SeqCst)
    }
}
