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

pub mod cursor;
pub mod inbound;
mod inbound_mqtt;
pub mod link;
pub mod settings;
pub mod shaper;
pub mod sink;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::broker::Broker;
use crate::log::{Header, Record, Visibility};
use crate::topic_filter::glob;
use crate::units::HumanDuration;
use crate::units::Narrow;
use crate::units::{BadSetting, ByteSize};
use cursor::{CursorKey, Cursors};
pub use link::Link;
pub use settings::{Direction, KafkaCompression, MqttVersion, SaslMechanism, UpstreamKind};
use shaper::Shaper;
use sink::{BrookSink, KafkaSink, MqttSink, Sink};
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

/// One `[[mirror]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    pub name: String,
    /// `kafka`, `mqtt` or `brook` (required).
    pub kind: Option<UpstreamKind>,
    /// Upstream addresses (`host:port`): Kafka bootstrap servers, an MQTT broker (the first is
    /// used), or Brook native listeners.
    pub upstream: Vec<String>,
    /// Local topics to mirror: names, or patterns with `*` (any run of characters).
    pub topics: Vec<String>,
    /// `out` (local topics sent upstream) or `in` (upstream topics brought into local ones).
    pub direction: Direction,
    /// Out: the upstream topic name; `{node}` and `{topic}` are replaced, and for MQTT `{key}`
    /// (the record key), e.g. `site/{node}/{key}`. In: the local topic name (`{topic}` is the
    /// upstream name; for MQTT one plain name, the MQTT topic becomes the record key).
    pub topic_template: String,
    /// This device's name in the origin headers and templates; empty: the host name.
    pub node: String,
    /// Records per batch sent.
    pub batch_records: usize,
    /// Out: once caught up, how long to wait for a batch to fill before sending what there is
    /// (fewer, larger sends on a metered link); `0`: send as soon as records are durable.
    pub linger: HumanDuration,
    /// Kafka only: `none`, `gzip` or `snappy`.
    pub compression: KafkaCompression,
    /// Kafka and Brook: create missing upstream topics (with the local partition count).
    pub create_topics: bool,
    pub cursor_flush: HumanDuration,
    pub backoff_min: HumanDuration,
    pub backoff_max: HumanDuration,
    /// Bytes per second for the whole mirror (record key, value and headers, before
    /// compression); `0` or `"none"`: as fast as the upstream takes them.
    pub bandwidth_limit: ByteSize,
    /// The user name to log in with upstream (Kafka: over SASL; empty: anonymous).
    pub username: String,
    /// A file holding the password (its first line), rather than the config in plain text.
    pub password_file: Option<std::path::PathBuf>,
    /// An environment variable holding the password.
    pub password_env: String,
    /// Kafka: the SASL mechanism for `username`: `plain` (default), `scram-sha-256` or
    /// `scram-sha-512`.
    pub sasl_mechanism: SaslMechanism,
    /// MQTT: the protocol spoken upstream, `5` (default) or `3.1.1` (for brokers without MQTT 5;
    /// no origin headers then, 3.1.1 has nowhere to carry them).
    pub mqtt_version: MqttVersion,
    /// Encrypt the link with TLS. Default false.
    pub tls: bool,
    /// With `tls`: the CAs (PEM) to trust. Unset: the system bundle
    /// (`/etc/ssl/certs/ca-certificates.crt`).
    pub ca_file: Option<std::path::PathBuf>,
    /// With `tls`: a client certificate chain and its key (PEM), for upstreams that require one.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// Share of the bandwidth limit per topic name or pattern (1 to 1000; unlisted topics: 1).
    /// The longest matching pattern wins. Topics with backlog split the limit in proportion.
    pub priority: BTreeMap<String, u32>,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            name: String::new(),
            kind: None,
            upstream: Vec::new(),
            topics: Vec::new(),
            direction: Direction::Out,
            topic_template: "{topic}".into(),
            node: String::new(),
            batch_records: 1000,
            linger: HumanDuration::millis(0),
            compression: KafkaCompression::None,
            create_topics: true,
            cursor_flush: HumanDuration::secs(1),
            backoff_min: HumanDuration::millis(200),
            backoff_max: HumanDuration::secs(30),
            bandwidth_limit: ByteSize(0),
            username: String::new(),
            password_file: None,
            password_env: String::new(),
            sasl_mechanism: SaslMechanism::Plain,
            mqtt_version: MqttVersion::V5,
            tls: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            priority: BTreeMap::new(),
        }
    }
}

impl MirrorConfig {
    /// MQTT 3.1.1 upstream rather than MQTT 5 (`mqtt_version`, checked at load).
    pub fn mqtt_311(&self) -> bool {
        self.mqtt_version == MqttVersion::V311
    }

    /// Checks one entry; errors name the key.
    pub fn validate(&self, i: usize) -> Result<(), BadSetting> {
        let at = if self.name.is_empty() {
            format!("mirror[{i}]")
        } else {
            format!("mirror {:?}", self.name)
        };
        if self.name.is_empty() || self.name.contains('\0') {
            return Err(BadSetting::new(
                format!("{at}.name"),
                "required (a short unique name)",
            ));
        }
        let Some(kind) = self.kind else {
            return Err(BadSetting::new(
                format!("{at}.kind"),
                "required: \"kafka\", \"mqtt\" or \"brook\"",
            ));
        };
        if self.topic_template.contains("{key}")
            && kind != UpstreamKind::Mqtt
            && self.direction == Direction::Out
        {
            return Err(BadSetting::new(
                format!("{at}.topic_template"),
                "{key} is for kind = \"mqtt\" (one MQTT topic per record key)",
            ));
        }
        if self.upstream.is_empty() {
            return Err(BadSetting::new(
                format!("{at}.upstream"),
                "at least one host:port",
            ));
        }
        for u in &self.upstream {
            let ok = u
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(BadSetting::new(
                    format!("{at}.upstream"),
                    format!("{u:?} is not host:port"),
                ));
            }
        }
        if self.topics.is_empty() {
            return Err(BadSetting::new(
                format!("{at}.topics"),
                "at least one topic name or pattern",
            ));
        }
        if self.direction == Direction::In {
            if kind == UpstreamKind::Mqtt && self.topic_template.contains('{') {
                return Err(BadSetting::new(
                    format!("{at}.topic_template"),
                    format!(
                        "{:?}: an MQTT mirror in writes one local topic (e.g. \"commands\"; the MQTT topic becomes the record key)",
                        self.topic_template
                    ),
                ));
            }
            if self.topic_template.contains("{key}") {
                return Err(BadSetting::new(
                    format!("{at}.topic_template"),
                    "{key} is for mirrors out",
                ));
            }
            if self.bandwidth_limit.0 != 0 || !self.priority.is_empty() || !self.linger.0.is_zero()
            {
                return Err(BadSetting::new(
                    at.clone(),
                    "bandwidth_limit, priority and linger are for mirrors out",
                ));
            }
        }
        if !self.topic_template.contains("{topic}") && self.topics.len() > 1 {
            return Err(BadSetting::new(
                format!("{at}.topic_template"),
                format!(
                    "{:?}: must contain {{topic}} when several topics are mirrored",
                    self.topic_template
                ),
            ));
        }
        if !(1..=100_000).contains(&self.batch_records) {
            return Err(BadSetting::new(
                format!("{at}.batch_records"),
                "1 to 100000",
            ));
        }
        if self.compression != KafkaCompression::None && kind != UpstreamKind::Kafka {
            return Err(BadSetting::new(
                format!("{at}.compression"),
                "only for kind = \"kafka\"",
            ));
        }
        if self.cursor_flush.0.is_zero() || self.backoff_min.0.is_zero() {
            return Err(BadSetting::new(
                format!("{at}.cursor_flush / backoff_min"),
                "must be greater than zero",
            ));
        }
        if self.backoff_max.0 < self.backoff_min.0 {
            return Err(BadSetting::new(
                format!("{at}.backoff_max"),
                "is below backoff_min",
            ));
        }
        if self.sasl_mechanism != SaslMechanism::Plain && kind != UpstreamKind::Kafka {
            return Err(BadSetting::new(
                format!("{at}.sasl_mechanism"),
                "only for kind = \"kafka\"",
            ));
        }
        if self.mqtt_version != MqttVersion::V5 && kind != UpstreamKind::Mqtt {
            return Err(BadSetting::new(
                format!("{at}.mqtt_version"),
                "only for kind = \"mqtt\"",
            ));
        }
        if !self.tls
            && (self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some())
        {
            return Err(BadSetting::new(
                at.clone(),
                "ca_file, cert_file and key_file are for a TLS link: set tls = true",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(BadSetting::new(
                at.clone(),
                "cert_file and key_file go together",
            ));
        }
        if (self.password_file.is_some() || !self.password_env.is_empty())
            && self.username.is_empty()
        {
            return Err(BadSetting::new(
                format!("{at}.password_file / password_env"),
                "set username too",
            ));
        }
        if self.password_file.is_some() && !self.password_env.is_empty() {
            return Err(BadSetting::new(
                at.clone(),
                "password_file and password_env both set; choose one",
            ));
        }
        Link::load(self).map_err(|e| e.under(&at))?;
        if self.linger.0 > Duration::from_secs(3600) {
            return Err(BadSetting::new(
                format!("{at}.linger"),
                format!("{}: at most 1h", self.linger),
            ));
        }
        if self.bandwidth_limit.0 != 0 && self.bandwidth_limit.0 < 1024 {
            return Err(BadSetting::new(
                format!("{at}.bandwidth_limit"),
                format!(
                    "{}: at least 1KiB per second (or \"none\")",
                    self.bandwidth_limit
                ),
            ));
        }
        for (pattern, p) in &self.priority {
            if !(1..=1000).contains(p) {
                return Err(BadSetting::new(
                    format!("{at}.priority.{pattern:?}"),
                    format!("{p}: 1 to 1000"),
                ));
            }
            if !self
                .topics
                .iter()
                .any(|t| glob(pattern, t) || glob(t, pattern))
            {
                return Err(BadSetting::new(
                    format!("{at}.priority.{pattern:?}"),
                    "matches none of this mirror's topics",
                ));
            }
        }
        Ok(())
    }

    fn matches(&self, topic: &str) -> bool {
        self.topics.iter().any(|p| glob(p, topic))
    }

    /// Whether this mirror sends local `topic` upstream (so retention must wait for it).
    fn sends(&self, topic: &str) -> bool {
        self.direction == Direction::Out && self.matches(topic)
    }

    /// User name and password for the upstream, if a user name is set: the password comes from
    /// `password_file` (first line) or `password_env` (else empty). Errors name the key.
    pub fn credentials(&self) -> Result<Option<(String, String)>, BadSetting> {
        if self.username.is_empty() {
            return Ok(None);
        }
        let password = if let Some(f) = &self.password_file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| BadSetting::new("password_file", format!("{:?}: {e}", f.display())))?;
            text.lines().next().unwrap_or("").to_string()
        } else if !self.password_env.is_empty() {
            std::env::var(&self.password_env).map_err(|_| {
                BadSetting::new(
                    "password_env",
                    format!("{:?}: the variable is not set", self.password_env),
                )
            })?
        } else {
            String::new()
        };
        Ok(Some((self.username.clone(), password)))
    }

    /// The topic's share of the bandwidth limit: its longest matching priority pattern, or 1.
    pub fn priority_of(&self, topic: &str) -> u32 {
        self.priority
            .iter()
            .filter(|(p, _)| glob(p, topic))
            .max_by_key(|(p, _)| p.len())
            .map_or(1, |(_, v)| *v)
    }
}

/// Checks every mirror and that names are unique.
pub fn validate(mirrors: &[MirrorConfig]) -> Result<(), BadSetting> {
    for (i, m) in mirrors.iter().enumerate() {
        m.validate(i)?;
        if mirrors[..i].iter().any(|o| o.name == m.name) {
            return Err(BadSetting::new(
                format!("mirror {:?}.name", m.name),
                "used twice",
            ));
        }
    }
    Ok(())
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
            tasks.spawn(run_mirror(
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

/// Watches for topics matching the mirror and runs one task per partition.
async fn run_mirror(
    broker: Arc<Broker>,
    cfg: Arc<MirrorConfig>,
    cursors: Arc<Cursors>,
    status: Arc<MirrorStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let node = node_of(&cfg);
    // Topics mirrored, and how many of their partitions (partitions added later join).
    let mut running: std::collections::HashMap<String, u32> = Default::default();
    let mut parts = tokio::task::JoinSet::new();
    let shaper = Shaper::new(cfg.bandwidth_limit.0);
    // The CA bundle, certificates and password are read once per mirror, not per partition.
    let link = Link::for_mirror(&cfg);
    loop {
        for t in broker.topics() {
            let name = t.name().to_string();
            let count = t.partitions().len().sat_u32();
            let started = running.get(&name).copied().unwrap_or(0);
            if !cfg.matches(&name) || started >= count {
                continue;
            }
            tracing::info!(mirror = %cfg.name, topic = %name, partitions = count, "mirroring");
            for p in started..count {
                parts.spawn(run_partition(
                    Arc::clone(&broker),
                    Arc::clone(&cfg),
                    Arc::clone(&link),
                    Arc::clone(&node),
                    name.clone(),
                    p,
                    Arc::clone(&cursors),
                    Arc::clone(&status),
                    shaper.clone(),
                    shutdown.clone(),
                ));
            }
            running.insert(name, count);
        }
        // New topics are picked up within a few seconds.
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    while parts.join_next().await.is_some() {}
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

#[allow(clippy::too_many_arguments)]
async fn run_partition(
    broker: Arc<Broker>,
    cfg: Arc<MirrorConfig>,
    link: Arc<Link>,
    node: Arc<str>,
    topic: String,
    partition: u32,
    cursors: Arc<Cursors>,
    status: Arc<MirrorStatus>,
    shaper: Shaper,
    mut shutdown: watch::Receiver<bool>,
) {
    let priority = cfg.priority_of(&topic);
    let key: CursorKey = (cfg.name.clone(), topic.clone(), partition);
    let upstream_topic = cfg
        .topic_template
        .replace("{node}", &node)
        .replace("{topic}", &topic);
    let mut sink = match cfg.kind {
        Some(UpstreamKind::Kafka) => Sink::Kafka(KafkaSink::new(
            cfg.upstream.clone(),
            link,
            cfg.compression,
            cfg.create_topics,
        )),
        Some(UpstreamKind::Mqtt) => Sink::Mqtt(Box::new(MqttSink::new(
            &cfg.upstream[0],
            format!("brook-{node}-{}-{topic}-{partition}", cfg.name),
            link,
            cfg.mqtt_311(),
        ))),
        _ => Sink::Brook(BrookSink::new(cfg.upstream.clone(), link)),
    };
    let mut backoff = cfg.backoff_min.0;
    status.update(&key, |s| s.state = LinkState::Starting);
    let Some(mut next) = load_cursor(&broker, &cursors, &key).await else {
        return;
    };
    // Records read ahead and not yet acknowledged, from `next` on, origin headers added: the
    // log is read once however the batches are cut, and a failed batch is sent again as is.
    let mut pending: std::collections::VecDeque<Record> = Default::default();
    // The offset of each pending record.
    let mut offsets: std::collections::VecDeque<u64> = Default::default();
    // Bytes the shaper already granted for the next batch (asked for while the last was sent).
    let mut granted: u64 = 0;
    // Since when a batch smaller than batch_records has waited for more (linger).
    let mut linger_since: Option<std::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let Ok(t) = broker.topic(&topic) else {
            tracing::info!(mirror = %cfg.name, topic, "topic deleted: mirroring stops");
            return;
        };
        let Ok(part) = t.partition(partition) else {
            return;
        };
        let part = Arc::clone(part);
        let local_count = t.partitions().len().sat_u32();
        drop(t);
        if pending.is_empty() || linger_since.is_some() {
            let start = part.log_start();
            if pending.is_empty() && next < start {
                // Retention (drop_oldest) deleted records before they were mirrored.
                let lost = start - next;
                tracing::warn!(mirror = %cfg.name, topic, partition, lost, "records deleted before they were mirrored");
                status.update(&key, |s| s.dropped_records += lost);
                next = start;
                cursors.advance(&key, next);
            }
            let mut end_rx = part.watch_end();
            end_rx.borrow_and_update();
            // Past what is already read ahead (lingering), else from the cursor.
            let from = offsets.back().map_or(next, |o| o + 1);
            let read = {
                let p = Arc::clone(&part);
                tokio::task::spawn_blocking(move || p.read(from, 1 << 20, Visibility::Durable))
                    .await
            };
            let r = match read {
                Ok(Ok(r)) => r,
                Ok(Err(crate::log::LogError::OffsetOutOfRange { earliest, .. }))
                    if pending.is_empty() =>
                {
                    // The cursor is past the end: the topic was deleted and made again.
                    tracing::warn!(mirror = %cfg.name, topic, partition, next, "cursor past the end of the log (topic recreated?): starting over");
                    next = earliest;
                    cursors.advance(&key, next);
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::error!(mirror = %cfg.name, topic, partition, "read: {e}");
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
                Err(_) => return,
            };
            let before = pending.len();
            'batches: for b in r.batches() {
                for rec in b.records() {
                    let Ok(rec) = rec else {
                        break 'batches;
                    };
                    if rec.offset < from {
                        continue;
                    }
                    let mut out = rec.to_record();
                    out.headers.extend([
                        Header::new("brook.node", node.as_bytes()),
                        Header::new("brook.topic", topic.as_bytes()),
                        Header::new("brook.partition", partition.to_string()),
                        Header::new("brook.offset", rec.offset.to_string()),
                    ]);
                    pending.push_back(out);
                    offsets.push_back(rec.offset);
                }
            }
            let read_bytes: u64 = pending.iter().skip(before).map(record_bytes).sum();
            status.update(&key, |s| {
                s.cursor = next;
                s.end = r.high_watermark;
                s.read((pending.len() - before) as u64, read_bytes);
                s.oldest_unsent_ms = pending.front().map(|r| r.timestamp);
            });
            if pending.is_empty() {
                // Nothing durable past the cursor: wait for the partition to grow (durability
                // follows within a flush interval, hence the poll).
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    _ = end_rx.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            let caught_up = offsets.back().is_some_and(|o| o + 1 >= r.high_watermark);
            if !cfg.linger.0.is_zero() && caught_up && pending.len() < cfg.batch_records {
                let since = *linger_since.get_or_insert_with(std::time::Instant::now);
                let left = cfg.linger.0.saturating_sub(since.elapsed());
                if !left.is_zero() {
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return,
                        _ = end_rx.changed() => {}
                        _ = tokio::time::sleep(left.min(Duration::from_millis(200))) => {}
                    }
                    continue;
                }
            }
            linger_since = None;
        }
        let n = pending.len().min(cfg.batch_records);
        let last = offsets[n - 1];
        let batch = &pending.make_contiguous()[..n];
        let bytes: u64 = batch.iter().map(record_bytes).sum();
        if shaper.is_limited() && granted < bytes {
            status.update(&key, |s| {
                if s.state == LinkState::Connected {
                    s.state = LinkState::Throttled;
                }
            });
            tokio::select! {
                _ = shaper.acquire(&topic, priority, bytes - granted) => granted = bytes,
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        // Under a limit, the next batch's share is asked for while this one is upstream (as
        // much again), so the topic is waiting at the shaper even while its one batch is in
        // flight and priorities hold however long acknowledgements take.
        let ahead = async {
            if shaper.is_limited() {
                shaper.acquire(&topic, priority, bytes).await;
                bytes
            } else {
                0
            }
        };
        let sent = tokio::select! {
            (r, more) = async { tokio::join!(sink.send(&upstream_topic, partition, local_count, batch), ahead) } => {
                granted = granted - bytes.min(granted) + more;
                r
            }
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match sent {
            Ok(()) => {
                pending.drain(..n);
                offsets.drain(..n);
                next = last + 1;
                cursors.advance(&key, next);
                status.sent_total.fetch_add(n as u64, Ordering::Relaxed);
                status.update(&key, |s| {
                    s.state = LinkState::Connected;
                    s.cursor = next;
                    s.end = s.end.max(next);
                    s.sent(n as u64, bytes, now_ms());
                    s.oldest_unsent_ms = pending.front().map(|r| r.timestamp);
                });
                backoff = cfg.backoff_min.0;
            }
            Err(e) => {
                let failure = format!("upstream send failed: {e}");
                if !back_off(&cfg, &key, &status, &mut backoff, failure, &mut shutdown).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_topic_names() {
        assert!(glob("telemetry", "telemetry"));
        assert!(!glob("telemetry", "telemetry2"));
        assert!(glob("sensor-*", "sensor-7"));
        assert!(glob("*", "anything"));
        assert!(glob("a*b*c", "a-x-b-y-c"));
        assert!(!glob("a*b", "a-x-c"));
    }

    #[test]
    fn the_minimal_form_is_valid_and_bad_keys_are_named() {
        let m: MirrorConfig = toml::from_str(
            "name = \"cloud\"\nkind = \"kafka\"\nupstream = [\"central.example:9092\"]\ntopics = [\"telemetry\"]",
        )
        .expect("parse");
        validate(std::slice::from_ref(&m)).expect("valid");
        let mut bad = m.clone();
        bad.kind = None;
        assert!(
            validate(&[bad])
                .unwrap_err()
                .to_string()
                .contains("kind: required")
        );
        // Values outside a setting's few are refused when the file is read, naming them.
        for (key, value) in [
            ("kind", "amqp"),
            ("direction", "sideways"),
            ("compression", "lz4"),
            ("sasl_mechanism", "scram-md5"),
            ("mqtt_version", "3"),
        ] {
            let text = format!(
                "name = \"c\"\nupstream = [\"h:1\"]\ntopics = [\"t\"]\n{key} = \"{value}\""
            );
            let e = toml::from_str::<MirrorConfig>(&text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(value) && e.contains("expected"), "{key}: {e}");
        }
        let mut bad = m.clone();
        bad.upstream = vec!["nohost".into()];
        assert!(
            validate(&[bad])
                .unwrap_err()
                .to_string()
                .contains("upstream")
        );
        let mut inward = m.clone();
        inward.direction = Direction::In;
        validate(std::slice::from_ref(&inward)).expect("a Kafka mirror in");
        inward.kind = Some(UpstreamKind::Mqtt);
        inward.topic_template = "{topic}".into();
        assert!(
            validate(&[inward])
                .unwrap_err()
                .to_string()
                .contains("topic_template")
        );
        assert!(
            validate(&[m.clone(), m])
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn link_keys_are_checked_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = || MirrorConfig {
            name: "cloud".into(),
            kind: Some(UpstreamKind::Kafka),
            upstream: vec!["central.example:9093".into()],
            topics: vec!["telemetry".into()],
            ..MirrorConfig::default()
        };
        let err = |m: MirrorConfig| validate(&[m]).unwrap_err().to_string();
        let mut m = base();
        m.ca_file = Some(dir.path().join("ca.pem"));
        assert!(err(m).contains("set tls = true"));
        let mut m = base();
        m.tls = true;
        m.ca_file = Some(dir.path().join("missing.pem"));
        let e = err(m);
        assert!(e.contains("ca_file") && e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let mut m = base();
        m.tls = true;
        m.ca_file = Some(empty);
        assert!(err(m).contains("no certificate"));
        let mut m = base();
        m.tls = true;
        m.cert_file = Some(dir.path().join("c.pem"));
        assert!(err(m).contains("cert_file and key_file go together"));
        let mut m = base();
        m.kind = Some(UpstreamKind::Mqtt);
        m.sasl_mechanism = SaslMechanism::ScramSha256;
        assert!(err(m).contains("only for kind"));
        let mut m = base();
        m.mqtt_version = MqttVersion::V311;
        assert!(err(m).contains("mqtt_version: only for kind"));
        let mut m = base();
        m.username = "gw1".into();
        m.password_env = "BROOK_TEST_SURELY_UNSET_VARIABLE".into();
        assert!(err(m).contains("password_env"));
        let mut m = base();
        m.username = "gw1".into();
        m.sasl_mechanism = SaslMechanism::ScramSha512;
        validate(&[m]).expect("a Kafka login is valid now");
    }
}
