//! `direction = "in"`: chosen upstream topics brought down into local topics (commands and
//! configuration for the device), with the same cursor, ordering and outage guarantees as the
//! way out.
//!
//! **Kafka and Brook upstreams** are read by offset: every partition of every upstream topic
//! matching `topics` has a task that fetches from its cursor (the next upstream offset, in the
//! same cursor store as the way out, keyed by mirror, upstream topic and partition), appends
//! what came durably to the local topic `topic_template` names (`{topic}` is the upstream
//! name; created with the upstream partition count when missing), and only then advances the
//! cursor. Upstream partition `p` goes to local partition `p` when the local topic has it, else
//! by key, so order per partition holds. Each record gains `brook.upstream.topic`,
//! `brook.upstream.partition` and `brook.upstream.offset` headers. Cursors reach the disk at
//! most every `cursor_flush`; after a crash the task also looks at the end of its local
//! partition for the last record it appended (by those headers) and resumes after it, so with
//! partitions mapped one to one nothing is appended twice (placed by key, a crash may append
//! at most a `cursor_flush` of records again, recognisable by the headers). The offsets live on the device, not in an upstream consumer group (rskafka has
//! no group client): the device resumes where it stopped whatever the upstream remembers, and
//! two devices never share a group's partitions. Records the upstream deleted before they were
//! fetched are counted as dropped, as on the way out.
//!
//! **MQTT upstreams**: one persistent session (MQTT 5, clean start off, the session kept for
//! 30 days of absence) subscribes to the `topics` filters at QoS 1, with manual
//! acknowledgements: each message is appended durably to the local topic (`topic_template`,
//! one name: the record key is the MQTT topic, as for MQTT publishes into Brook) before its
//! PUBACK goes back, so a message is never acknowledged unstored; the broker queues what
//! arrives while the link is down. Messages that arrive together (at most the session's
//! Receive Maximum, 100, should be unacknowledged at a time) are stored in one append. A crash
//! between an append and the broker reading its PUBACKs brings those messages again (MQTT's
//! at-least-once); a broker that ignores the Receive Maximum (Mosquitto 2.0.11 does for a
//! returning session's queue) can have sent, and so send again, thousands.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::cursor::{CursorKey, Cursors};
use super::sink::{connect_brook, connect_kafka, timed};
use super::status::MirrorStatus;
use super::{MirrorConfig, back_off, load_cursor, now_ms, record_bytes};
use crate::broker::Broker;
use crate::log::{BatchBuilder, Durability, Header, PartitionChoice, Record};
use crate::proto::{OffsetSpec, TopicSettings};

/// How long a fetch waits upstream for new records.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// Bytes asked for per fetch.
const FETCH_BYTES: u32 = 1 << 20;
/// Bytes per local append (upstream batches may be larger than one append takes).
const APPEND_BYTES: usize = 256 * 1024;

/// What a fetch brought: records with their upstream offsets, and the upstream end.
struct Fetched {
    records: Vec<(u64, Record)>,
    high_watermark: u64,
}

/// A Kafka cluster or a Brook read by offset; one per task (its own connection).
enum Source {
    Kafka {
        upstream: Vec<String>,
        link: Arc<super::Link>,
        client: Option<Arc<rskafka::client::Client>>,
        partitions: std::collections::HashMap<
            (String, u32),
            Arc<rskafka::client::partition::PartitionClient>,
        >,
    },
    Brook {
        upstream: Vec<String>,
        link: Arc<super::Link>,
        client: Option<Arc<crate::client::Client>>,
    },
}

impl Source {
    fn new(cfg: &MirrorConfig, link: Arc<super::Link>) -> Source {
        match cfg.kind.as_str() {
            "kafka" => Source::Kafka {
                upstream: cfg.upstream.clone(),
                link,
                client: None,
                partitions: Default::default(),
            },
            _ => Source::Brook {
                upstream: cfg.upstream.clone(),
                link,
                client: None,
            },
        }
    }

    fn reset(&mut self) {
        match self {
            Source::Kafka {
                client, partitions, ..
            } => {
                *client = None;
                partitions.clear();
            }
            Source::Brook { client, .. } => *client = None,
        }
    }

    async fn kafka(
        upstream: &[String],
        link: &super::Link,
        client: &mut Option<Arc<rskafka::client::Client>>,
    ) -> Result<Arc<rskafka::client::Client>, String> {
        if let Some(c) = client {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(connect_kafka(upstream, "brook-mirror-in", link).await?);
        *client = Some(Arc::clone(&c));
        Ok(c)
    }

    async fn brook(
        upstream: &[String],
        link: &super::Link,
        client: &mut Option<Arc<crate::client::Client>>,
    ) -> Result<Arc<crate::client::Client>, String> {
        if let Some(c) = client {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(connect_brook(upstream, "brook-mirror-in", link).await?);
        *client = Some(Arc::clone(&c));
        Ok(c)
    }

    /// Upstream topics with their partition counts.
    async fn topics(&mut self) -> Result<Vec<(String, u32)>, String> {
        let r = match self {
            Source::Kafka {
                upstream,
                link,
                client,
                ..
            } => {
                let c = Self::kafka(upstream, link, client).await?;
                timed("list topics", c.list_topics()).await.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name, t.partitions.len() as u32))
                        .collect()
                })
            }
            Source::Brook {
                upstream,
                link,
                client,
            } => {
                let c = Self::brook(upstream, link, client).await?;
                let names = timed("list topics", c.list_topics()).await;
                match names {
                    Ok(names) => {
                        let mut out = Vec::new();
                        for n in names {
                            let d = timed("describe topic", c.describe_topic(&n)).await?;
                            out.push((n, d.partitions.len() as u32));
                        }
                        Ok(out)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if r.is_err() {
            self.reset();
        }
        r
    }

    /// Records of `topic`/`partition` from `offset` (waiting a little upstream for new ones).
    /// `Err(Ok(earliest))`: `offset` is no longer (or not yet) in the upstream log, which now
    /// starts at `earliest`.
    async fn fetch(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<Fetched, Result<(u64, u64), String>> {
        let r = self.try_fetch(topic, partition, offset).await;
        if matches!(r, Err(Err(_))) {
            self.reset();
        }
        r
    }

    async fn try_fetch(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<Fetched, Result<(u64, u64), String>> {
        match self {
            Source::Kafka {
                upstream,
                link,
                client,
                partitions,
            } => {
                use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
                let k = (topic.to_string(), partition);
                let pc = match partitions.get(&k) {
                    Some(pc) => Arc::clone(pc),
                    None => {
                        let c = Self::kafka(upstream, link, client).await.map_err(Err)?;
                        let pc = timed(
                            "partition leader",
                            c.partition_client(
                                topic,
                                partition as i32,
                                UnknownTopicHandling::Retry,
                            ),
                        )
                        .await
                        .map_err(Err)?;
                        let pc = Arc::new(pc);
                        partitions.insert(k, Arc::clone(&pc));
                        pc
                    }
                };
                let got = timed(
                    "fetch",
                    pc.fetch_records(
                        offset as i64,
                        1..FETCH_BYTES as i32,
                        FETCH_WAIT.as_millis() as i32,
                    ),
                )
                .await;
                match got {
                    Ok((recs, hw)) => Ok(Fetched {
                        records: recs
                            .into_iter()
                            .filter(|r| r.offset >= offset as i64)
                            .map(|r| {
                                let rec = r.record;
                                (
                                    r.offset as u64,
                                    Record {
                                        timestamp: rec.timestamp.timestamp_millis(),
                                        key: rec.key,
                                        value: rec.value.unwrap_or_default(),
                                        headers: rec
                                            .headers
                                            .into_iter()
                                            .map(|(k, v)| Header::new(k, v))
                                            .collect(),
                                    },
                                )
                            })
                            .collect(),
                        high_watermark: hw.max(0) as u64,
                    }),
                    Err(e) => {
                        // Out of range? Ask where the log is now.
                        let earliest = timed("list offsets", pc.get_offset(OffsetAt::Earliest))
                            .await
                            .map_err(|_| e.clone())
                            .map_err(Err)?;
                        let latest = timed("list offsets", pc.get_offset(OffsetAt::Latest))
                            .await
                            .map_err(|_| e.clone())
                            .map_err(Err)?;
                        let (earliest, latest) = (earliest.max(0) as u64, latest.max(0) as u64);
                        if offset < earliest || offset > latest {
                            Err(Ok((earliest, latest)))
                        } else {
                            Err(Err(e))
                        }
                    }
                }
            }
            Source::Brook {
                upstream,
                link,
                client,
            } => {
                let c = Self::brook(upstream, link, client).await.map_err(Err)?;
                let got = timed(
                    "fetch",
                    c.fetch(topic, partition, offset, FETCH_BYTES, 1, FETCH_WAIT),
                )
                .await;
                match got {
                    Ok(f) => Ok(Fetched {
                        records: f.records(offset).map_err(|e| Err(e.to_string()))?,
                        high_watermark: f.high_watermark,
                    }),
                    Err(e) => {
                        let (earliest, latest, _) = timed(
                            "list offsets",
                            c.list_offsets(topic, partition, OffsetSpec::Earliest),
                        )
                        .await
                        .map_err(|_| Err(e.clone()))?;
                        if offset < earliest || offset > latest {
                            Err(Ok((earliest, latest)))
                        } else {
                            Err(Err(e))
                        }
                    }
                }
            }
        }
    }
}

/// The local topic an upstream topic comes down into.
fn local_name(cfg: &MirrorConfig, node: &str, upstream_topic: &str) -> String {
    cfg.topic_template
        .replace("{node}", node)
        .replace("{topic}", upstream_topic)
}

/// Makes sure the local topic exists (with `partitions` when created here).
fn ensure_local(
    broker: &Broker,
    cfg: &MirrorConfig,
    name: &str,
    partitions: u32,
) -> Result<(), String> {
    if broker.topic(name).is_ok() {
        return Ok(());
    }
    if !cfg.create_topics {
        return Err(format!(
            "local topic {name:?} does not exist (create_topics = false)"
        ));
    }
    let settings = TopicSettings {
        partitions: Some(partitions.max(1)),
        ..TopicSettings::default()
    };
    match broker.create_topic(name, &settings) {
        Ok(_) => {
            tracing::info!(mirror = %cfg.name, topic = name, partitions, "mirror created the local topic");
            Ok(())
        }
        // Created meanwhile by another task.
        Err(_) if broker.topic(name).is_ok() => Ok(()),
        Err(e) => Err(format!("creating local topic {name:?}: {e}")),
    }
}

/// Appends `records` (from upstream partition `partition`) durably to the local topic.
async fn append_local(
    broker: &Broker,
    local: &str,
    partition: u32,
    records: &[Record],
) -> Result<(), String> {
    let t = broker.topic(local).map_err(|e| e.to_string())?;
    let count = t.partitions().len() as u32;
    drop(t);
    for (p, recs) in super::sink::groups(records, partition, count) {
        // Upstream batches can be larger than a local append takes: cut them, and wait for
        // durability once, after the last.
        let mut tickets = Vec::new();
        let mut batch = BatchBuilder::new();
        let last = recs.len().saturating_sub(1);
        for (i, r) in recs.into_iter().enumerate() {
            batch.push_record(r);
            if batch.frame_len_bound() >= APPEND_BYTES || i == last {
                let (_, t) = broker
                    .produce_start(local, PartitionChoice::Id(p), &batch, Durability::Durable)
                    .map_err(|e| format!("local append to {local:?}: {e}"))?;
                tickets.push(t);
                batch.clear();
            }
        }
        for t in tickets {
            t.finish()
                .await
                .map_err(|e| format!("local append to {local:?}: {e}"))?;
        }
    }
    Ok(())
}

/// Records looked at, from the end of the local partition, for the last one brought in.
const RESUME_SCAN_RECORDS: u64 = 10_000;

/// The upstream offset after the last record of upstream `topic`/`partition` that local
/// partition `partition` holds (found among its last [`RESUME_SCAN_RECORDS`] records), when
/// upstream partitions map one to one onto local ones. `None`: not found, or records are placed
/// by key (then one upstream partition spreads over several local ones, and the cursor alone
/// says where to resume).
fn appended_up_to(broker: &Broker, local: &str, topic: &str, partition: u32) -> Option<u64> {
    use crate::log::Visibility;
    let t = broker.topic(local).ok()?;
    let part = Arc::clone(t.partition(partition).ok()?);
    drop(t);
    let end = part.end_offset();
    let mut from = end
        .saturating_sub(RESUME_SCAN_RECORDS)
        .max(part.log_start());
    let mut found = None;
    while from < end {
        let r = part.read(from, 1 << 20, Visibility::Written).ok()?;
        if r.next_offset <= from {
            break;
        }
        for b in r.batches() {
            for rec in b.records().flatten() {
                let h = |n: &str| {
                    rec.headers
                        .iter()
                        .find(|h| h.name == n)
                        .map(|h| h.value.to_vec())
                };
                if h("brook.upstream.topic").as_deref() == Some(topic.as_bytes())
                    && h("brook.upstream.partition") == Some(partition.to_string().into_bytes())
                {
                    found = h("brook.upstream.offset")
                        .and_then(|v| String::from_utf8(v).ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(|o| o + 1)
                        .or(found);
                }
            }
        }
        from = r.next_offset;
    }
    found
}

/// Runs an `in` mirror of a Kafka or Brook upstream: watches the upstream topics and runs one
/// task per matching partition.
pub(super) async fn run_offsets(
    broker: Arc<Broker>,
    cfg: Arc<MirrorConfig>,
    node: Arc<str>,
    cursors: Arc<Cursors>,
    status: Arc<MirrorStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The CA bundle, certificates and password are read once per mirror, not per partition.
    let link = super::Link::for_mirror(&cfg);
    let mut source = Source::new(&cfg, Arc::clone(&link));
    let mut running: HashSet<(String, u32)> = HashSet::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut warned = false;
    loop {
        match source.topics().await {
            Ok(topics) => {
                warned = false;
                for (name, count) in topics {
                    if !cfg.matches(&name) {
                        continue;
                    }
                    let local = local_name(&cfg, &node, &name);
                    if let Err(e) = ensure_local(&broker, &cfg, &local, count) {
                        tracing::error!(mirror = %cfg.name, "{e}");
                        continue;
                    }
                    for p in 0..count {
                        if running.insert((name.clone(), p)) {
                            tasks.spawn(run_partition(
                                Arc::clone(&broker),
                                Arc::clone(&cfg),
                                Arc::clone(&link),
                                name.clone(),
                                p,
                                local.clone(),
                                Arc::clone(&cursors),
                                Arc::clone(&status),
                                shutdown.clone(),
                            ));
                        }
                    }
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(mirror = %cfg.name, "upstream topics: {e} (retrying)");
                    warned = true;
                }
            }
        }
        // New upstream topics and partitions are picked up within a few seconds.
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

#[allow(clippy::too_many_arguments)]
async fn run_partition(
    broker: Arc<Broker>,
    cfg: Arc<MirrorConfig>,
    link: Arc<super::Link>,
    topic: String,
    partition: u32,
    local: String,
    cursors: Arc<Cursors>,
    status: Arc<MirrorStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let key: CursorKey = (cfg.name.clone(), topic.clone(), partition);
    let mut source = Source::new(&cfg, link);
    let mut backoff = cfg.backoff_min.0;
    status.update(&key, |s| s.state = "starting".into());
    let Some(mut next) = load_cursor(&broker, &cursors, &key).await else {
        return;
    };
    // The cursor on disk may lag what was appended (it is flushed every cursor_flush): the
    // local log itself says how far this partition came.
    let found = {
        let (b, l, t) = (Arc::clone(&broker), local.clone(), topic.clone());
        tokio::task::spawn_blocking(move || appended_up_to(&b, &l, &t, partition)).await
    };
    if let Ok(Some(after)) = found {
        if after > next {
            tracing::info!(mirror = %cfg.name, topic, partition, cursor = next, resume = after, "resuming after the last record the local log holds");
            next = after;
            cursors.advance(&key, next);
        }
    }
    loop {
        if *shutdown.borrow() {
            return;
        }
        let fetched = tokio::select! {
            r = source.fetch(&topic, partition, next) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let failure = match fetched {
            Ok(f) if f.records.is_empty() => {
                status.update(&key, |s| {
                    s.state = "connected".into();
                    s.cursor = next;
                    s.end = f.high_watermark.max(next);
                    s.oldest_unsent_ms = None;
                });
                backoff = cfg.backoff_min.0;
                continue;
            }
            Ok(f) => {
                let last = f.records.last().map_or(next, |(o, _)| *o);
                let records: Vec<Record> = f
                    .records
                    .into_iter()
                    .map(|(off, mut r)| {
                        r.headers.extend([
                            Header::new("brook.upstream.topic", topic.as_bytes()),
                            Header::new("brook.upstream.partition", partition.to_string()),
                            Header::new("brook.upstream.offset", off.to_string()),
                        ]);
                        r
                    })
                    .collect();
                let bytes: u64 = records.iter().map(record_bytes).sum();
                let oldest = records.first().map(|r| r.timestamp);
                status.update(&key, |s| {
                    s.read(records.len() as u64, bytes);
                    s.oldest_unsent_ms = oldest;
                    s.end = f.high_watermark.max(last + 1);
                });
                match append_local(&broker, &local, partition, &records).await {
                    Ok(()) => {
                        next = last + 1;
                        cursors.advance(&key, next);
                        status.update(&key, |s| {
                            s.state = "connected".into();
                            s.cursor = next;
                            s.sent(records.len() as u64, bytes, now_ms());
                            s.oldest_unsent_ms = None;
                        });
                        backoff = cfg.backoff_min.0;
                        continue;
                    }
                    Err(e) => e,
                }
            }
            Err(Ok((earliest, _latest))) => {
                if next < earliest {
                    let lost = earliest - next;
                    tracing::warn!(mirror = %cfg.name, topic, partition, lost, "upstream records deleted before they were brought in");
                    status.update(&key, |s| s.dropped_records += lost);
                } else {
                    tracing::warn!(mirror = %cfg.name, topic, partition, next, "cursor past the upstream end (topic recreated?): starting over");
                }
                next = earliest;
                cursors.advance(&key, next);
                continue;
            }
            Err(Err(e)) => e,
        };
        let failure = format!("bringing in failed: {failure}");
        if !back_off(&cfg, &key, &status, &mut backoff, failure, &mut shutdown).await {
            return;
        }
    }
}

/// Runs an `in` mirror of an MQTT broker: one persistent session subscribed to the filters,
/// each message stored durably before its PUBACK.
pub(super) async fn run_mqtt(
    broker: Arc<Broker>,
    cfg: Arc<MirrorConfig>,
    node: Arc<str>,
    status: Arc<MirrorStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = local_name(&cfg, &node, "");
    let key: CursorKey = (cfg.name.clone(), local.clone(), 0);
    let client_id = format!("brook-{node}-{}-in", cfg.name);
    let mut backoff = cfg.backoff_min.0;
    status.update(&key, |s| s.state = "starting".into());
    loop {
        let session = MqttSession {
            broker: &broker,
            cfg: &cfg,
            local: &local,
            key: &key,
            status: &status,
            client_id: &client_id,
        };
        let Some(failure) = session.run(&mut backoff, &mut shutdown).await else {
            return;
        };
        let failure = format!("bringing in failed: {failure}");
        if !back_off(&cfg, &key, &status, &mut backoff, failure, &mut shutdown).await {
            return;
        }
    }
}

/// One connection of an MQTT mirror in.
struct MqttSession<'a> {
    broker: &'a Broker,
    cfg: &'a MirrorConfig,
    local: &'a str,
    key: &'a CursorKey,
    status: &'a MirrorStatus,
    client_id: &'a str,
}

/// What the MQTT event loop task hands the session.
enum Incoming {
    Publish(rumqttc::v5::mqttbytes::v5::Publish),
    /// Every filter acknowledged (or why not).
    Subscribed(Result<(), String>),
    Failed(String),
}

/// How long the broker keeps the session (and queues for it) while the device is away: 30
/// days. Not "never" (0xFFFFFFFF): Mosquitto 2.0.11 then saves no queue when it restarts.
const SESSION_EXPIRY_SECS: u32 = 30 * 24 * 3600;

/// Messages in flight from the broker to us at most (MQTT 5 Receive Maximum): bounds what one
/// append holds, and what a crash between an append and its PUBACKs brings again.
const RECEIVE_MAXIMUM: u16 = 100;

impl MqttSession<'_> {
    /// Connects, subscribes and stores messages until a failure (returned) or shutdown (`None`).
    /// The event loop runs in its own task (it must keep polling for acknowledgements to go
    /// out); messages that arrived together are stored as one durable append, then
    /// acknowledged.
    async fn run(
        &self,
        backoff: &mut Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<String> {
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
        use rumqttc::v5::{AsyncClient, Event, MqttOptions};

        if let Err(e) = ensure_local(self.broker, self.cfg, self.local, 1) {
            return Some(e);
        }
        let upstream = &self.cfg.upstream[0];
        let (host, port) = upstream
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.parse().unwrap_or(1883)))
            .unwrap_or((upstream.clone(), 1883));
        let link = super::Link::for_mirror(self.cfg);
        if let Err(e) = link.usable() {
            return Some(e);
        }
        let mut o = MqttOptions::new(self.client_id, host, port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_transport(link.mqtt_transport());
        if let Some((user, password)) = link.login() {
            o.set_credentials(user.clone(), password.clone());
        }
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(SESSION_EXPIRY_SECS));
        o.set_manual_acks(true);
        o.set_receive_maximum(Some(RECEIVE_MAXIMUM));
        let (client, mut events) =
            AsyncClient::new(o, self.cfg.topics.len() + usize::from(RECEIVE_MAXIMUM));
        // Queued now, sent once connected (every time: the broker may have lost the session).
        for f in &self.cfg.topics {
            if let Err(e) = client.subscribe(f.clone(), QoS::AtLeastOnce).await {
                return Some(format!("subscribe {f:?}: {e}"));
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            loop {
                let item = match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => Incoming::Publish(p),
                    Ok(Event::Incoming(Packet::SubAck(a))) => Incoming::Subscribed(
                        match a
                            .return_codes
                            .iter()
                            .find(|r| !matches!(r, SubscribeReasonCode::Success(_)))
                        {
                            Some(r) => Err(format!("subscription refused: {r:?}")),
                            None => Ok(()),
                        },
                    ),
                    Ok(_) => continue,
                    Err(e) => Incoming::Failed(format!("mqtt: {e}")),
                };
                let failed = matches!(item, Incoming::Failed(_));
                if tx.send(item).is_err() || failed {
                    return;
                }
            }
        });
        let failure = loop {
            let item = tokio::select! {
                item = rx.recv() => item,
                _ = shutdown.wait_for(|s| *s) => None,
            };
            let first = match item {
                None if *shutdown.borrow() => {
                    let _ = client.disconnect().await;
                    poller.abort();
                    return None;
                }
                None => break "mqtt event loop ended".to_string(),
                Some(Incoming::Failed(e)) => break e,
                Some(Incoming::Subscribed(Err(e))) => break e,
                Some(Incoming::Subscribed(Ok(()))) => {
                    *backoff = self.cfg.backoff_min.0;
                    self.status
                        .update(self.key, |s| s.state = "connected".into());
                    continue;
                }
                Some(Incoming::Publish(p)) => p,
            };
            // Whatever else already arrived goes in the same append.
            let mut publishes = vec![first];
            let mut after: Option<Incoming> = None;
            while publishes.len() < usize::from(RECEIVE_MAXIMUM) {
                match rx.try_recv() {
                    Ok(Incoming::Publish(p)) => publishes.push(p),
                    Ok(other) => {
                        after = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let records: Vec<Record> = publishes.iter().map(record_of).collect();
            let bytes: u64 = records.iter().map(record_bytes).sum();
            if let Err(e) = append_local(self.broker, self.local, u32::MAX, &records).await {
                break e;
            }
            let mut acked = Ok(());
            for p in &publishes {
                if let Err(e) = client.ack(p).await {
                    acked = Err(format!("ack: {e}"));
                    break;
                }
            }
            if let Err(e) = acked {
                break e;
            }
            self.status.update(self.key, |s| {
                s.state = "connected".into();
                s.read(records.len() as u64, bytes);
                s.sent(records.len() as u64, bytes, now_ms());
            });
            match after {
                Some(Incoming::Failed(e)) | Some(Incoming::Subscribed(Err(e))) => break e,
                _ => {}
            }
        };
        poller.abort();
        Some(failure)
    }
}

/// The local record of an MQTT message: key = the MQTT topic, user properties as headers plus
/// `brook.upstream.topic`.
fn record_of(p: &rumqttc::v5::mqttbytes::v5::Publish) -> Record {
    let mqtt_topic = String::from_utf8_lossy(&p.topic).into_owned();
    let mut headers: Vec<Header> = p
        .properties
        .as_ref()
        .map(|pr| {
            pr.user_properties
                .iter()
                .map(|(k, v)| Header::new(k.clone(), v.as_bytes()))
                .collect()
        })
        .unwrap_or_default();
    headers.push(Header::new("brook.upstream.topic", mqtt_topic.as_bytes()));
    Record {
        timestamp: now_ms(),
        key: Some(mqtt_topic.into_bytes()),
        value: p.payload.to_vec(),
        headers,
    }
}
