//! Upstream mirroring: chosen local topics are sent to a Kafka cluster, an MQTT broker or another
//! Brook whenever the link is up, resuming exactly where they stopped.
//!
//! Per `[[mirror]]`, every partition of every matching topic has a task that reads the log from
//! its cursor ([`cursor`]: the next offset to send) like any consumer, but only what is
//! durable (fsynced), takes up to `batch_records` records (no waiting when there is a backlog;
//! live traffic goes out as it becomes durable, or once caught up after at most `linger` for a
//! fuller batch), adds the origin headers (`brook.node`,
//! `brook.topic`, `brook.partition`, `brook.offset`), sends them ([`sink`]) and advances the
//! cursor only once the upstream acknowledged them (Kafka: acks=all; MQTT: every PUBACK at QoS 1;
//! Brook: durable). One batch
//! is in flight per partition, so order within a partition holds. On a failure the task backs
//! off exponentially with jitter (from `backoff_min` up to `backoff_max`) and resumes from the
//! cursor; when the link returns, the backlog drains at once, batch after batch. Cursors reach
//! `meta` at most every `cursor_flush` (default 1 s): a crash re-sends at most that much
//! (duplicates carry the same origin headers), never leaves a gap.
//!
//! Retention: after each cursor flush, every mirrored partition of an `on_full = reject` topic
//! is told the lowest durable cursor of the mirrors covering it, and time retention keeps every
//! segment from there on (producers meet the full log instead of records vanishing). Under
//! `drop_oldest`, records deleted before they were sent are counted per mirror and partition
//! (`dropped_records`) and logged; a partition without a cursor is owed everything from
//! offset 0, so a mirror added to a topic with history counts what retention already removed.
//!
//! Bandwidth: a mirror's `bandwidth_limit` (bytes per second) is shared between its topics in
//! proportion to their `priority` ([`shaper`]), so alarms drain first and telemetry still moves.
//!
//! The other direction, `direction = "in"` (upstream topics into local ones), is [`inbound`].
//! Both directions reach the upstream through [`link`]: TLS and the login (SASL for Kafka).
//! The settings that take one of a few values are enums in [`settings`]; failures upstream are
//! [`MirrorError`]s, shown in the status and logged.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | [`Mirrors`]: starts every mirror, flushes cursors, tells `reject` topics what to keep; helpers both directions share |
//! | [`settings`] | a `[[mirror]]` entry, its enums, defaults and checks |
//! | `outbound.rs` | mirrors out: one send loop per partition |
//! | [`inbound`] (and `inbound_mqtt.rs`) | mirrors in |
//! | [`link`] | TLS and login to the upstream |
//! | [`sink`] | Kafka, MQTT and Brook upstreams |
//! | [`cursor`], [`shaper`], [`status`] | cursors, the bandwidth limit, what `brook mirror status` shows |

pub mod cursor;
pub mod inbound;
mod inbound_mqtt;
pub mod link;
mod outbound;
pub mod settings;
pub mod shaper;
pub mod sink;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::Broker;
use crate::log::Record;
use crate::units::{BadSetting, Narrow};
use cursor::{CursorKey, Cursors};
pub use link::Link;
pub use settings::{
    Direction, KafkaCompression, MirrorConfig, MqttVersion, SaslMechanism, UpstreamKind, validate,
};
pub use status::{LinkState, MirrorStatus, PartitionState, StatusRow};

/// Why a mirror's link, or a send or fetch upstream, failed (shown in its status and logged;
/// the mirror retries with backoff).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    /// The upstream, or the way to it, failed; the message says what was tried and why.
    #[error("{0}")]
    Upstream(String),
    /// The mirror's own settings or files (password, CA, certificate) cannot be used.
    #[error(transparent)]
    Setting(#[from] BadSetting),
}

impl From<String> for MirrorError {
    fn from(s: String) -> Self {
        MirrorError::Upstream(s)
    }
}

impl From<&str> for MirrorError {
    fn from(s: &str) -> Self {
        MirrorError::Upstream(s.to_string())
    }
}

/// The mirror's node id: `node`, else the host name.
fn node_of(cfg: &MirrorConfig) -> Arc<str> {
    Arc::from(if cfg.node.is_empty() {
        hostname()
    } else {
        cfg.node.clone()
    })
}

/// The host name (the default node id).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "brook".into())
}

/// The running mirrors.
pub struct Mirrors {
    pub status: Arc<MirrorStatus>,
    cursors: Arc<Cursors>,
    tasks: tokio::task::JoinSet<()>,
    configs: Arc<Vec<MirrorConfig>>,
}

impl Mirrors {
    /// Starts every configured mirror.
    pub fn start(
        broker: Arc<Broker>,
        configs: Vec<MirrorConfig>,
        shutdown: watch::Receiver<bool>,
    ) -> Mirrors {
        let status = Arc::new(MirrorStatus::default());
        let cursors = Arc::new(Cursors::default());
        let all = Arc::new(configs.clone());
        // Until the first cursor flush says more, a mirrored `reject` topic keeps everything.
        for t in broker.topics() {
            if configs.iter().any(|m| m.sends(t.name())) {
                for p in t.partitions() {
                    p.set_keep_from(Some(0));
                }
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for cfg in configs {
            if cfg.direction == Direction::In {
                let node = node_of(&cfg);
                let (b, c, st, sd) = (
                    Arc::clone(&broker),
                    Arc::clone(&cursors),
                    Arc::clone(&status),
                    shutdown.clone(),
                );
                let cfg = Arc::new(cfg);
                if cfg.kind == Some(UpstreamKind::Mqtt) {
                    tasks.spawn(inbound_mqtt::run_mqtt(b, cfg, node, st, sd));
                } else {
                    tasks.spawn(inbound::run_offsets(b, cfg, node, c, st, sd));
                }
                continue;
            }
            tasks.spawn(outbound::run_mirror(
                Arc::clone(&broker),
                Arc::new(cfg),
                Arc::clone(&cursors),
                Arc::clone(&status),
                shutdown.clone(),
            ));
        }
        if !tasks.is_empty() {
            // Cursor flushes: at most every cursor_flush (the smallest of the mirrors').
            let b = Arc::clone(&broker);
            let c = Arc::clone(&cursors);
            let st = Arc::clone(&status);
            let mirrors = Arc::clone(&all);
            let mut stop = shutdown.clone();
            let every = all
                .iter()
                .map(|m| m.cursor_flush.0)
                .min()
                .unwrap_or(Duration::from_secs(1));
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    let stopping = tokio::select! {
                        _ = stop.wait_for(|s| *s) => true,
                        _ = tick.tick() => false,
                    };
                    flush(&b, &c, &st, &mirrors).await;
                    if stopping {
                        return;
                    }
                }
            });
        }
        Mirrors {
            status,
            cursors,
            tasks,
            configs: all,
        }
    }

    /// Waits for every task to see the shutdown; the cursors are flushed a last time.
    pub async fn join(mut self, broker: &Arc<Broker>) {
        while self.tasks.join_next().await.is_some() {}
        // With no mirror there is no cursor to save and no partition kept for one (and no
        // blocking-pool thread is started for nothing as the broker starts).
        if self.configs.is_empty() {
            return;
        }
        flush(broker, &self.cursors, &self.status, &self.configs).await;
    }
}

/// Flushes the cursors, then tells every mirrored partition of a `reject` topic to keep what
/// no mirror has durably sent (time retention skips it; producers feel the full log instead).
async fn flush(
    broker: &Arc<Broker>,
    cursors: &Arc<Cursors>,
    status: &MirrorStatus,
    mirrors: &[MirrorConfig],
) {
    let (b, c) = (Arc::clone(broker), Arc::clone(cursors));
    match tokio::task::spawn_blocking(move || c.flush(b.meta())).await {
        Ok(Ok(durable)) => {
            for (k, v) in &durable {
                status.update(k, |s| s.saved_cursor = *v);
            }
            for t in broker.topics() {
                let covering: Vec<&MirrorConfig> =
                    mirrors.iter().filter(|m| m.sends(t.name())).collect();
                for (i, p) in t.partitions().iter().enumerate() {
                    let floor = covering
                        .iter()
                        .map(|m| {
                            let k = (m.name.clone(), t.name().to_string(), i.sat_u32());
                            durable.get(&k).copied().unwrap_or(0)
                        })
                        .min();
                    p.set_keep_from(floor);
                }
            }
        }
        Ok(Err(e)) => tracing::error!("mirror cursors not saved: {e}"),
        Err(e) => tracing::error!("mirror cursor task: {e}"),
    }
}

/// What a record weighs for the bandwidth limit and the status: key, value and header bytes.
fn record_bytes(r: &Record) -> u64 {
    let headers: usize = r
        .headers
        .iter()
        .map(|h| h.name.len() + h.bytes().len())
        .sum();
    (r.key.as_ref().map_or(0, |k| k.len()) + r.value_bytes().len() + headers) as u64
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().sat_i64())
}

/// After a failure: logs it, shows it in the status, and waits `backoff` with jitter (then
/// doubles it, up to `backoff_max`). `false`: shutdown came first.
async fn back_off(
    cfg: &MirrorConfig,
    key: &CursorKey,
    status: &MirrorStatus,
    backoff: &mut Duration,
    failure: String,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let wait = backoff.mul_f64(0.5 + jitter());
    tracing::warn!(mirror = %cfg.name, topic = %key.1, partition = key.2, "{failure}; retrying in {wait:?}");
    status.update(key, |s| {
        s.state = LinkState::BackingOff;
        s.last_error = Some(failure);
    });
    let stopped = tokio::select! {
        _ = shutdown.wait_for(|s| *s) => true,
        _ = tokio::time::sleep(wait) => false,
    };
    *backoff = (*backoff * 2).min(cfg.backoff_max.0);
    !stopped
}

/// A pseudo-random fraction in [0, 1) for jitter (no need for a real RNG).
fn jitter() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(n.wrapping_mul(2_654_435_761) % 1000) / 1000.0
}

/// Loads the partition's cursor; `None` when the task should stop (shutdown, topic gone).
async fn load_cursor(broker: &Arc<Broker>, cursors: &Arc<Cursors>, key: &CursorKey) -> Option<u64> {
    let (b, c, k) = (Arc::clone(broker), Arc::clone(cursors), key.clone());
    match tokio::task::spawn_blocking(move || c.get(b.meta(), &k)).await {
        // No cursor yet: the mirror owes everything ever written to the partition, so records
        // retention deleted before the first send count as dropped too.
        Ok(Ok(c)) => Some(c.unwrap_or(0)),
        Ok(Err(e)) => {
            tracing::error!(mirror = %key.0, "reading the cursor: {e}; starting from 0");
            Some(0)
        }
        Err(_) => None,
    }
}
