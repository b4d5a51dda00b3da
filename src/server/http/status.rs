//! The status page (`/`, [`PAGE`]: one HTML file with its style and script inline, loading
//! nothing else) and the document it shows, `/api/status` ([`StatusReport`]): health, the disk,
//! topics with their ingest rate and headroom, consumer groups with their lag, clients, mirrors,
//! and the last hour's history, which [`History`] samples every [`SAMPLE_EVERY`] into a ring
//! of fixed size while the HTTP listener is open.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::HttpState;
use super::health::{disk_space, health};
use crate::broker::GroupSnapshot;
use crate::mirror::StatusRow;
use crate::report::{GroupReport, TopicReport};

/// The status page.
pub const PAGE: &str = include_str!("status.html");

/// How often [`History`] takes a sample, in seconds.
const SAMPLE_SECS: u16 = 10;
/// How often [`History`] takes a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(SAMPLE_SECS as u64);
/// Samples kept: the last hour.
const KEEP: usize = 3600 / SAMPLE_SECS as usize;

/// Everything the status page shows.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub version: &'static str,
    pub uptime_secs: u64,
    /// When this was made (unix ms).
    pub now_ms: i64,
    /// Why the broker is degraded (empty: healthy), as `/healthz` says.
    pub health: Vec<String>,
    pub disk: DiskReport,
    pub topics: Vec<TopicStatus>,
    pub groups: Vec<GroupStatus>,
    pub clients: ClientsReport,
    /// As `/api/mirrors`.
    pub mirrors: Vec<StatusRow>,
    pub history: HistoryReport,
}

/// The log's bytes against its bounds.
#[derive(Debug, Serialize)]
pub struct DiskReport {
    pub data_dir: String,
    /// Bytes of all segment and index files.
    pub log_bytes: u64,
    /// `log.max_size` (0: none).
    pub budget_bytes: u64,
    /// Bytes available on the data directory's filesystem (absent when it cannot be asked).
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    /// `log.min_free` (0: none).
    pub min_free_bytes: u64,
}

/// A topic, as in `/api/topics`, with its traffic and how much more it can take.
#[derive(Debug, Serialize)]
pub struct TopicStatus {
    #[serde(flatten)]
    pub topic: TopicReport,
    /// Records and record bytes appended since the broker started.
    pub records_in: u64,
    pub bytes_in: u64,
    /// Ingest over the last few seconds (absent until there are two readings).
    pub records_per_sec: Option<f64>,
    pub bytes_per_sec: Option<f64>,
    /// Bytes stored in all its partitions.
    pub bytes: u64,
    /// Bytes it can still take before a limit acts (its `retention_size`, `log.max_size`,
    /// `log.min_free` or the disk itself, whichever comes first); then `on_full` applies.
    pub headroom_bytes: Option<u64>,
    /// Seconds until then at the current ingest rate: its own rate against its own bound, all
    /// topics' rate against the log's (absent when nothing comes in).
    pub headroom_secs: Option<f64>,
}

/// A consumer group, as `brook groups describe --json` shows it, with its total lag.
#[derive(Debug, Serialize)]
pub struct GroupStatus {
    #[serde(flatten)]
    pub group: GroupReport,
    pub total_lag: u64,
}

/// Connected clients per listener.
#[derive(Debug, Serialize)]
pub struct ClientsReport {
    pub mqtt_connections: u64,
    /// MQTT sessions held (connected or persistent).
    pub mqtt_sessions: u64,
    pub mqtt_subscriptions: u64,
    pub native_connections: u64,
    pub kafka_connections: u64,
}

/// The ring of samples, oldest first.
#[derive(Debug, Serialize)]
pub struct HistoryReport {
    pub interval_secs: u64,
    pub samples: Vec<Sample>,
}

/// One point of the history.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    pub at_ms: i64,
    /// Ingest of all topics since the sample before (absent for the first).
    pub records_per_sec: Option<f64>,
    pub bytes_per_sec: Option<f64>,
    pub free_bytes: Option<u64>,
    /// Records of all mirrors not yet acknowledged upstream.
    pub mirror_backlog: u64,
}

/// Every topic's ingest counters at one moment.
#[derive(Debug)]
struct Reading {
    at: Instant,
    per_topic: HashMap<String, (u64, u64)>,
}

impl Reading {
    fn take(state: &HttpState) -> Reading {
        let per_topic = state
            .broker
            .topics()
            .iter()
            .map(|t| {
                let c = state.broker.counters(t.name());
                let records = c.records_in.load(Ordering::Relaxed);
                (
                    t.name().to_string(),
                    (records, c.bytes_in.load(Ordering::Relaxed)),
                )
            })
            .collect();
        Reading {
            at: Instant::now(),
            per_topic,
        }
    }

    fn totals(&self) -> (u64, u64) {
        self.per_topic
            .values()
            .fold((0, 0), |(r, b), (tr, tb)| (r + tr, b + tb))
    }

    /// Records and bytes per second of `topic` since `earlier` (None: too little time passed).
    fn rates_since(&self, earlier: &Reading, topic: &str) -> Option<(f64, f64)> {
        let dt = self.at.duration_since(earlier.at).as_secs_f64();
        if dt < 0.5 {
            return None;
        }
        let (r1, b1) = self.per_topic.get(topic).copied().unwrap_or_default();
        let (r0, b0) = earlier.per_topic.get(topic).copied().unwrap_or_default();
        Some((
            r1.saturating_sub(r0) as f64 / dt,
            b1.saturating_sub(b0) as f64 / dt,
        ))
    }
}

/// The last hour, sampled, and the readings ingest rates are measured against.
#[derive(Debug)]
pub struct History {
    started: Instant,
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    samples: VecDeque<Sample>,
    /// The two latest readings: a rate asked for just after a sample uses the one before.
    latest: Option<Reading>,
    before: Option<Reading>,
}

impl Ring {
    /// Adds a sample made of `reading` and the rest, dropping the oldest beyond [`KEEP`].
    fn push(&mut self, reading: Reading, at_ms: i64, free_bytes: Option<u64>, mirror_backlog: u64) {
        let rates = self.latest.as_ref().and_then(|last| {
            let dt = reading.at.duration_since(last.at).as_secs_f64();
            let ((r1, b1), (r0, b0)) = (reading.totals(), last.totals());
            (dt > 0.0).then(|| {
                (
                    r1.saturating_sub(r0) as f64 / dt,
                    b1.saturating_sub(b0) as f64 / dt,
                )
            })
        });
        if self.samples.len() == KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at_ms,
            records_per_sec: rates.map(|r| round(r.0)),
            bytes_per_sec: rates.map(|r| round(r.1)),
            free_bytes,
            mirror_backlog,
        });
        self.before = self.latest.replace(reading);
    }
}

impl Default for History {
    fn default() -> History {
        History {
            started: Instant::now(),
            inner: Mutex::new(Ring::default()),
        }
    }
}

impl History {
    /// Takes a sample now.
    pub fn sample(&self, state: &HttpState) {
        let reading = Reading::take(state);
        let free_bytes = disk_space(state.broker.store().dir()).map(|d| d.available);
        let mirror_backlog = state.mirrors.rows().iter().map(|r| r.backlog_records).sum();
        let at_ms = crate::log::clock::wall_clock_ms();
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).push(
            reading,
            at_ms,
            free_bytes,
            mirror_backlog,
        );
    }

    /// Samples every [`SAMPLE_EVERY`] until the broker stops.
    pub async fn run(state: std::sync::Arc<HttpState>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tick.tick() => state.history.sample(&state),
            }
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The status document now.
pub fn report(state: &HttpState) -> StatusReport {
    let broker = &state.broker;
    let store = broker.store();
    let options = store.options();
    let disk = disk_space(store.dir());
    let log_bytes = store.used_bytes();
    let budget_bytes = options.max_size.bytes();
    let min_free_bytes = options.min_free.limit().unwrap_or(0);
    // Room left for the whole log: the budget, the floor of free space, the disk.
    let log_room = [
        (budget_bytes > 0).then(|| budget_bytes.saturating_sub(log_bytes)),
        disk.map(|d| d.available.saturating_sub(min_free_bytes)),
    ]
    .into_iter()
    .flatten()
    .min();
    let now = Reading::take(state);
    let history = state
        .history
        .inner
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let base = match (&history.latest, &history.before) {
        (Some(l), _) if now.at.duration_since(l.at) >= Duration::from_secs(1) => Some(l),
        (_, Some(b)) => Some(b),
        (l, None) => l.as_ref(),
    };
    // The log's room fills at every topic's rate together.
    let log_rate: f64 = base
        .map(|b| {
            now.per_topic
                .keys()
                .filter_map(|t| now.rates_since(b, t))
                .map(|(_, bytes)| bytes)
                .sum()
        })
        .unwrap_or(0.0);
    let log_secs = log_room
        .filter(|_| log_rate > 0.0)
        .map(|room| room as f64 / log_rate);
    let topics = broker
        .topics()
        .iter()
        .map(|t| {
            let topic = super::topic_report(t);
            let (records_in, bytes_in) = now.per_topic.get(t.name()).copied().unwrap_or_default();
            let rates = base.and_then(|b| now.rates_since(b, t.name()));
            let bytes: u64 = topic.partitions.iter().map(|p| p.bytes).sum();
            let own_room = (topic.retention_size > 0).then(|| {
                topic
                    .partitions
                    .iter()
                    .map(|p| topic.retention_size.saturating_sub(p.bytes))
                    .sum::<u64>()
            });
            let headroom_bytes = [own_room, log_room].into_iter().flatten().min();
            let own_secs = match (own_room, rates) {
                (Some(room), Some((_, b))) if b > 0.0 => Some(room as f64 / b),
                _ => None,
            };
            // Only a topic that takes data runs out of room.
            let ingesting = rates.is_some_and(|(_, b)| b > 0.0);
            let headroom_secs = [own_secs, log_secs.filter(|_| ingesting)]
                .into_iter()
                .flatten()
                .min_by(f64::total_cmp)
                .map(round);
            TopicStatus {
                records_in,
                bytes_in,
                records_per_sec: rates.map(|r| round(r.0)),
                bytes_per_sec: rates.map(|r| round(r.1)),
                bytes,
                headroom_bytes,
                headroom_secs,
                topic,
            }
        })
        .collect();
    let samples = history.samples.iter().copied().collect();
    drop(history);
    let groups = broker
        .list_groups()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|name| {
            let snap = broker.describe_group(&name).ok()?;
            let group = group_report(&name, &snap);
            let total_lag = group.offsets.iter().map(|o| o.lag).sum();
            Some(GroupStatus { group, total_lag })
        })
        .collect();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    StatusReport {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.history.started.elapsed().as_secs(),
        now_ms: crate::log::clock::wall_clock_ms(),
        health: health(state),
        disk: DiskReport {
            data_dir: store.dir().display().to_string(),
            log_bytes,
            budget_bytes,
            free_bytes: disk.map(|d| d.available),
            total_bytes: disk.map(|d| d.total),
            min_free_bytes,
        },
        topics,
        groups,
        clients: ClientsReport {
            mqtt_connections: load(&state.mqtt.connections),
            mqtt_sessions: load(&state.mqtt.sessions),
            mqtt_subscriptions: load(&state.mqtt.subscriptions),
            native_connections: load(&state.native.connections_open),
            kafka_connections: load(&state.kafka.connections),
        },
        mirrors: state.mirrors.rows(),
        history: HistoryReport {
            interval_secs: SAMPLE_EVERY.as_secs(),
            samples,
        },
    }
}

/// A group as the CLI's `groups describe --json` shows it.
fn group_report(group: &str, snap: &GroupSnapshot) -> GroupReport {
    GroupReport::new(
        group,
        snap.generation,
        snap.members.iter().map(|m| {
            let assignment = m.assignment.as_slice();
            (m.member_id.as_str(), m.client_id.as_str(), assignment)
        }),
        snap.offsets.iter().map(|o| {
            let (topic, partition) = (o.topic.as_str(), o.partition);
            (topic, partition, o.committed, o.end_offset)
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: Instant, records: u64, bytes: u64) -> Reading {
        Reading {
            at,
            per_topic: HashMap::from([("t".to_string(), (records, bytes))]),
        }
    }

    #[test]
    fn the_ring_keeps_the_last_hour_and_rates_between_samples() {
        let t0 = Instant::now();
        let mut ring = Ring::default();
        ring.push(reading(t0, 100, 1000), 0, Some(5), 0);
        assert_eq!(
            ring.samples[0].records_per_sec, None,
            "no rate from one reading"
        );
        let t1 = t0 + SAMPLE_EVERY;
        ring.push(reading(t1, 600, 6000), 10_000, Some(4), 7);
        assert_eq!(ring.samples[1].records_per_sec, Some(50.0));
        assert_eq!(ring.samples[1].bytes_per_sec, Some(500.0));
        assert_eq!(ring.samples[1].mirror_backlog, 7);
        // A topic deleted and made again restarts its counter: no negative rate.
        ring.push(reading(t1 + SAMPLE_EVERY, 10, 10), 20_000, None, 0);
        assert_eq!(ring.samples[2].records_per_sec, Some(0.0));
        // A rate asked for right after a sample is measured against the one before it.
        let now = reading(t1 + SAMPLE_EVERY, 10, 10);
        let before = ring.before.as_ref().expect("two readings");
        assert_eq!(now.rates_since(before, "t"), Some((0.0, 0.0)));
        assert_eq!(
            now.rates_since(ring.latest.as_ref().expect("latest"), "t"),
            None
        );
        let mut at = t1 + SAMPLE_EVERY;
        for i in 0..2 * KEEP as i64 {
            at += SAMPLE_EVERY;
            ring.push(reading(at, 10, 10), i, None, 0);
        }
        assert_eq!(ring.samples.len(), KEEP, "an hour of samples, no more");
        assert_eq!(ring.samples[0].at_ms, KEEP as i64, "the oldest went first");
    }
}
