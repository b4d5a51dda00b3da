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
//! **MQTT upstreams**: see the `inbound_mqtt` module.

use super::MirrorError;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::cursor::{CursorKey, Cursors};
use super::sink::{connect_brook, connect_kafka, timed};
use super::status::{LinkState, MirrorStatus};
use super::{MirrorConfig, back_off, load_cursor, now_ms, record_bytes};
use crate::broker::Broker;
use crate::log::{BatchBuilder, Durability, Header, PartitionChoice, Record};
use crate::proto::{OffsetSpec, TopicSettings};
use crate::units::Narrow;

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
        match cfg.kind {
            Some(super::UpstreamKind::Kafka) => Source::Kafka {
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
    ) -> Result<Arc<rskafka::client::Client>, MirrorError> {
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
    ) -> Result<Arc<crate::client::Client>, MirrorError> {
        if let Some(c) = client {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(connect_brook(upstream, "brook-mirror-in", link).await?);
        *client = Some(Arc::clone(&c));
        Ok(c)
    }

    /// Upstream topics with their partition counts.
    async fn topics(&mut self) -> Result<Vec<(String, u32)>, MirrorError> {
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
                        .map(|t| (t.name, t.partitions.len().sat_u32()))
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
                            out.push((n, d.partitions.len().sat_u32()));
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
    ) -> Result<Fetched, Result<(u64, u64), MirrorError>> {
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
    ) -> Result<Fetched, Result<(u64, u64), MirrorError>> {
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
                        FETCH_WAIT.as_millis().sat_i32(),
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
                                        value: rec.value,
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
                        records: f
                            .records(offset)
                            .map_err(|e| Err(MirrorError::Upstream(e.to_string())))?,
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
pub(super) fn local_name(cfg: &MirrorConfig, node: &str, upstream_topic: &str) -> String {
    cfg.topic_template
        .replace("{node}", node)
        .replace("{topic}", upstream_topic)
}

/// Makes sure the local topic exists (with `partitions` when created here).
pub(super) fn ensure_local(
    broker: &Broker,
    cfg: &MirrorConfig,
    name: &str,
    partitions: u32,
) -> Result<(), MirrorError> {
    if broker.topic(name).is_ok() {
        return Ok(());
    }
    if !cfg.create_topics {
        return Err(MirrorError::Upstream(format!(
            "local topic {name:?} does not exist (create_topics = false)"
        )));
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
        Err(e) => Err(MirrorError::Upstream(format!(
            "creating local topic {name:?}: {e}"
        ))),
    }
}

/// Appends `records` (from upstream partition `partition`) durably to the local topic.
pub(super) async fn append_local(
    broker: &Broker,
    local: &str,
    partition: u32,
    records: &[Record],
) -> Result<(), MirrorError> {
    let t = broker.topic(local).map_err(|e| e.to_string())?;
    let count = t.partitions().len().sat_u32();
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
                        .map(|h| h.bytes().to_vec())
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
    status.update(&key, |s| s.state = LinkState::Starting);
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
                    s.state = LinkState::Connected;
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
                            s.state = LinkState::Connected;
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
