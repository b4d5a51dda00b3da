//! What every mirrored partition is doing, for `/api/mirrors`, the `brook_mirror_*` metrics and
//! `brook mirror status`: state and why, backlog in records and bytes, age of the oldest unsent
//! record, drain rate and the time left at that rate, last error, records dropped unsent.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cursor::CursorKey;
use crate::log::Partition;

/// How far back the drain rate looks (an exponentially weighted mean over about this long).
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Where a partition's link stands (`state` in the status, snake_case in JSON).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Not yet through its first send or fetch.
    #[default]
    Starting,
    /// The last send (or fetch) succeeded.
    Connected,
    /// Connected, waiting for the mirror's bandwidth limit.
    Throttled,
    /// The last send failed (see `last_error`); retrying after a backoff.
    BackingOff,
}

impl LinkState {
    /// Whether the upstream answered lately (`brook_mirror_connected`).
    pub fn is_up(self) -> bool {
        matches!(self, LinkState::Connected | LinkState::Throttled)
    }
}

/// What one partition's task is doing.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PartitionState {
    pub state: LinkState,
    /// Next offset to send (out) or to fetch (in).
    pub cursor: u64,
    /// The cursor as last saved to disk: a crash goes back to it (what lies between is sent
    /// again, or for mirrors in found in the local log).
    pub saved_cursor: u64,
    /// Durable end of the local partition (outbound; read when the status is asked for, so it
    /// grows while the upstream is down), or the upstream's end when last fetched (inbound).
    pub end: u64,
    /// The local partition an outbound mirror reads, for `end`.
    #[serde(skip)]
    pub source: Option<Source>,
    pub sent_records: u64,
    /// Bytes of the records acknowledged upstream (key, value and headers, before compression).
    pub sent_bytes: u64,
    /// Records retention deleted before they were mirrored (drop_oldest).
    pub dropped_records: u64,
    pub last_error: Option<String>,
    /// Unix ms of the last acknowledged batch.
    pub last_success_ms: Option<i64>,
    /// Timestamp (unix ms) of the oldest record read and not yet acknowledged.
    pub oldest_unsent_ms: Option<i64>,
    /// Mean size of the records read so far (for the backlog in bytes).
    #[serde(skip)]
    mean_record_bytes: f64,
    /// Records per second acknowledged, averaged over about [`RATE_WINDOW`].
    #[serde(skip)]
    rate: f64,
    #[serde(skip)]
    rate_at: Option<Instant>,
}

impl PartitionState {
    /// Counts `records` (`bytes` in all) acknowledged now.
    pub fn sent(&mut self, records: u64, bytes: u64, now_ms: i64) {
        self.sent_records += records;
        self.sent_bytes += bytes;
        self.last_success_ms = Some(now_ms);
        let now = Instant::now();
        let dt = self
            .rate_at
            .map_or(RATE_WINDOW, |t| now.duration_since(t))
            .max(Duration::from_millis(1));
        let alpha = (dt.as_secs_f64() / RATE_WINDOW.as_secs_f64()).min(1.0);
        let instant = records as f64 / dt.as_secs_f64();
        // The first batch counts as if spread over a whole window.
        self.rate = self.rate * (1.0 - alpha) + instant * alpha;
        self.rate_at = Some(now);
    }

    /// Notes the size of records read ahead (`records` records, `bytes` in all).
    pub fn read(&mut self, records: u64, bytes: u64) {
        if records > 0 {
            let n = records as f64;
            let mean = bytes as f64 / n;
            self.mean_record_bytes = if self.mean_record_bytes == 0.0 {
                mean
            } else {
                0.9 * self.mean_record_bytes + 0.1 * mean
            };
        }
    }

    /// The drain rate now: none sent for a whole window means 0.
    fn rate_now(&self) -> f64 {
        match self.rate_at {
            Some(t) if t.elapsed() < 2 * RATE_WINDOW => self.rate,
            _ => 0.0,
        }
    }
}

/// The local partition an outbound mirror sends from.
#[derive(Clone)]
pub struct Source(pub Arc<Partition>);

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Source(partition {})", self.0.id())
    }
}

/// One row of the status.
#[derive(Clone, Debug, Serialize)]
pub struct StatusRow {
    pub mirror: String,
    pub topic: String,
    pub partition: u32,
    #[serde(flatten)]
    pub state: PartitionState,
    pub backlog_records: u64,
    /// Estimated from the mean size of the records read.
    pub backlog_bytes: u64,
    /// Age of the oldest record not yet acknowledged upstream, in milliseconds (0: none).
    pub oldest_unsent_age_ms: u64,
    /// Records per second acknowledged lately.
    pub drain_records_per_sec: f64,
    /// Seconds to drain the backlog at that rate (absent when nothing drains).
    pub eta_secs: Option<f64>,
}

/// Status of every mirror.
#[derive(Debug, Default)]
pub struct MirrorStatus {
    parts: Mutex<BTreeMap<CursorKey, PartitionState>>,
    pub sent_total: AtomicU64,
}

impl MirrorStatus {
    pub fn update(&self, k: &CursorKey, f: impl FnOnce(&mut PartitionState)) {
        let mut g = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        f(g.entry(k.clone()).or_default());
    }

    pub fn rows(&self) -> Vec<StatusRow> {
        let now = super::now_ms();
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((m, t, p), s)| {
                let mut s = s.clone();
                if let Some(Source(part)) = &s.source {
                    s.end = s.end.max(part.durable_offset());
                }
                let backlog = s.end.saturating_sub(s.cursor);
                // Nothing drains while the upstream refuses (the ETA is unknown then).
                let rate = match s.state {
                    LinkState::BackingOff => 0.0,
                    _ => s.rate_now(),
                };
                StatusRow {
                    mirror: m.clone(),
                    topic: t.clone(),
                    partition: *p,
                    backlog_records: backlog,
                    backlog_bytes: estimate(backlog as f64 * s.mean_record_bytes),
                    oldest_unsent_age_ms: s
                        .oldest_unsent_ms
                        .filter(|_| backlog > 0)
                        .map_or(0, |ts| now.saturating_sub(ts).max(0) as u64),
                    drain_records_per_sec: (rate * 10.0).round() / 10.0,
                    eta_secs: (backlog == 0)
                        .then_some(0.0)
                        .or((rate > 0.0).then(|| (backlog as f64 / rate * 10.0).round() / 10.0)),
                    state: s,
                }
            })
            .collect()
    }

    /// Prometheus text lines.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let rows = self.rows();
        type Get = fn(&StatusRow) -> f64;
        let metrics: [(&str, &str, &str, Get); 7] = [
            (
                "brook_mirror_backlog_records",
                "gauge",
                "Durable records not yet acknowledged upstream.",
                |r| r.backlog_records as f64,
            ),
            (
                "brook_mirror_backlog_bytes",
                "gauge",
                "Estimated bytes not yet acknowledged upstream.",
                |r| r.backlog_bytes as f64,
            ),
            (
                "brook_mirror_oldest_unsent_age_seconds",
                "gauge",
                "Age of the oldest record not yet acknowledged upstream.",
                |r| r.oldest_unsent_age_ms as f64 / 1000.0,
            ),
            (
                "brook_mirror_sent_records_total",
                "counter",
                "Records acknowledged upstream.",
                |r| r.state.sent_records as f64,
            ),
            (
                "brook_mirror_sent_bytes_total",
                "counter",
                "Record bytes (key, value, headers) acknowledged upstream.",
                |r| r.state.sent_bytes as f64,
            ),
            (
                "brook_mirror_dropped_records_total",
                "counter",
                "Records retention deleted before they were mirrored.",
                |r| r.state.dropped_records as f64,
            ),
            (
                "brook_mirror_connected",
                "gauge",
                "1 while the partition's last send succeeded.",
                |r| f64::from(r.state.state.is_up()),
            ),
        ];
        for (name, kind, help, get) in metrics {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for r in &rows {
                let _ = writeln!(
                    out,
                    "{name}{{mirror=\"{}\",topic=\"{}\",partition=\"{}\"}} {}",
                    r.mirror,
                    r.topic,
                    r.partition,
                    get(r)
                );
            }
        }
    }
}

/// A non-negative estimate as a whole number: a float to integer `as` saturates (and NaN gives
/// 0), so nothing wraps.
#[allow(clippy::cast_possible_truncation)]
fn estimate(x: f64) -> u64 {
    x as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_age_rate_and_eta_follow_the_counts() {
        let st = MirrorStatus::default();
        let k: CursorKey = ("m".into(), "t".into(), 0);
        st.update(&k, |s| {
            s.state = LinkState::Connected;
            s.end = 1_000;
            s.cursor = 100;
            s.read(100, 10_000);
            s.oldest_unsent_ms = Some(super::super::now_ms() - 5_000);
            s.sent(100, 10_000, 0);
        });
        let r = &st.rows()[0];
        assert_eq!(r.backlog_records, 900);
        assert_eq!(r.backlog_bytes, 90_000);
        assert!((5_000..6_000).contains(&r.oldest_unsent_age_ms));
        assert!(r.drain_records_per_sec > 0.0);
        let eta = r.eta_secs.expect("an eta while draining");
        assert!((eta - 900.0 / r.drain_records_per_sec).abs() < 1.0);
        let mut text = String::new();
        st.render(&mut text);
        assert!(text.contains(
            "brook_mirror_backlog_records{mirror=\"m\",topic=\"t\",partition=\"0\"} 900"
        ));
        assert!(text.contains(
            "brook_mirror_sent_bytes_total{mirror=\"m\",topic=\"t\",partition=\"0\"} 10000"
        ));
    }
}
