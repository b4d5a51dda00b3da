//! Where a mirror sends: a Kafka cluster (rskafka; acks=all), another Brook (the native client;
//! durable), or an MQTT broker (rumqttc, MQTT 5 or 3.1.1, QoS 1, PUBACK per message). A send
//! returns once the upstream acknowledged every record of the batch; any error drops the
//! connection, and the next send reconnects.
//!
//! Placement upstream (Kafka and Brook): a record keeps its partition number when the upstream
//! topic has enough partitions, otherwise it goes by its key (Kafka's murmur2; no key: the local
//! partition number modulo the upstream count), so one key stays in one partition and its order
//! holds. Missing upstream topics are created with the local partition count.

use super::MirrorError;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::Link;
use crate::log::partitioner::partition_for_key;
use crate::log::{BatchBuilder, Record};
use crate::proto::{Acks, TopicSettings};
use crate::units::Narrow;

/// How long one upstream operation may take before it counts as failed (rskafka's own retries
/// never give up).
const OP_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn timed<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, MirrorError> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(MirrorError::Upstream(format!("{what}: {e}"))),
        Err(_) => Err(MirrorError::Upstream(format!(
            "{what}: no answer within {OP_TIMEOUT:?}"
        ))),
    }
}

/// A Kafka client for `upstream` (bootstrap servers) over `link` (TLS, SASL); rskafka's
/// retries end after 10 s.
pub(super) async fn connect_kafka(
    upstream: &[String],
    client_id: &str,
    link: &Link,
) -> Result<rskafka::client::Client, MirrorError> {
    link.usable()?;
    let backoff = rskafka::BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        base: 2.0,
        deadline: Some(Duration::from_secs(10)),
    };
    let mut builder = rskafka::client::ClientBuilder::new(upstream.to_vec())
        .client_id(client_id)
        .backoff_config(backoff);
    if let Some(tls) = link.kafka_tls() {
        builder = builder.tls_config(tls);
    }
    if let Some(sasl) = link.kafka_sasl() {
        builder = builder.sasl_config(sasl);
    }
    timed("connect", builder.build()).await
}

/// A native client on the first of `upstream` that answers, over `link` (TLS, login).
pub(super) async fn connect_brook(
    upstream: &[String],
    client_id: &str,
    link: &Link,
) -> Result<crate::client::Client, MirrorError> {
    link.usable()?;
    let mut last = String::from("no upstream address");
    let login = link.login().map(|(u, p)| (u.as_str(), p.as_bytes()));
    let tls = link.brook_tls();
    for addr in upstream {
        match timed(
            "connect",
            crate::client::Client::connect_secure(addr, client_id, tls.as_ref(), login),
        )
        .await
        {
            Ok(c) => return Ok(c),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(MirrorError::Upstream(last))
}

/// The upstream partition of a record.
fn place(record: &Record, local: u32, upstream_count: u32) -> u32 {
    if local < upstream_count {
        return local;
    }
    match &record.key {
        Some(k) => partition_for_key(k, upstream_count),
        None => local % upstream_count.max(1),
    }
}

/// Groups records by upstream partition, keeping their order within each group.
pub(super) fn groups(
    records: &[Record],
    local: u32,
    upstream_count: u32,
) -> BTreeMap<u32, Vec<&Record>> {
    let mut out: BTreeMap<u32, Vec<&Record>> = BTreeMap::new();
    for r in records {
        out.entry(place(r, local, upstream_count))
            .or_default()
            .push(r);
    }
    out
}

pub struct KafkaSink {
    upstream: Vec<String>,
    link: Arc<Link>,
    compression: rskafka::client::partition::Compression,
    create_topics: bool,
    client: Option<Arc<rskafka::client::Client>>,
    partitions: HashMap<(String, u32), Arc<rskafka::client::partition::PartitionClient>>,
    counts: HashMap<String, u32>,
}

impl KafkaSink {
    pub fn new(
        upstream: Vec<String>,
        link: Arc<Link>,
        compression: super::KafkaCompression,
        create_topics: bool,
    ) -> KafkaSink {
        use super::KafkaCompression as C;
        use rskafka::client::partition::Compression;
        let compression = match compression {
            C::Gzip => Compression::Gzip,
            C::Snappy => Compression::Snappy,
            C::None => Compression::NoCompression,
        };
        KafkaSink {
            upstream,
            link,
            compression,
            create_topics,
            client: None,
            partitions: HashMap::new(),
            counts: HashMap::new(),
        }
    }

    fn reset(&mut self) {
        self.client = None;
        self.partitions.clear();
        self.counts.clear();
    }

    async fn client(&mut self) -> Result<Arc<rskafka::client::Client>, MirrorError> {
        if let Some(c) = &self.client {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(connect_kafka(&self.upstream, "brook-mirror", &self.link).await?);
        self.client = Some(Arc::clone(&c));
        Ok(c)
    }

    /// The upstream topic's partition count, creating the topic when missing.
    async fn count(&mut self, topic: &str, local_count: u32) -> Result<u32, MirrorError> {
        if let Some(n) = self.counts.get(topic) {
            return Ok(*n);
        }
        let client = self.client().await?;
        let topics = timed("list topics", client.list_topics()).await?;
        let n = match topics.iter().find(|t| t.name == topic) {
            Some(t) => t.partitions.len().sat_u32(),
            None if self.create_topics => {
                let ctl = client.controller_client().map_err(|e| e.to_string())?;
                timed(
                    "create topic",
                    ctl.create_topic(topic, local_count as i32, 1, 10_000),
                )
                .await?;
                tracing::info!(
                    topic,
                    partitions = local_count,
                    "mirror created the upstream topic"
                );
                local_count
            }
            None => {
                return Err(MirrorError::Upstream(format!(
                    "upstream topic {topic:?} does not exist"
                )));
            }
        };
        if n == 0 {
            return Err(MirrorError::Upstream(format!(
                "upstream topic {topic:?} has no partitions"
            )));
        }
        self.counts.insert(topic.to_string(), n);
        Ok(n)
    }

    async fn partition(
        &mut self,
        topic: &str,
        p: u32,
    ) -> Result<Arc<rskafka::client::partition::PartitionClient>, MirrorError> {
        let k = (topic.to_string(), p);
        if let Some(pc) = self.partitions.get(&k) {
            return Ok(Arc::clone(pc));
        }
        let client = self.client().await?;
        let pc = timed(
            "partition leader",
            client.partition_client(
                topic,
                p as i32,
                rskafka::client::partition::UnknownTopicHandling::Retry,
            ),
        )
        .await?;
        let pc = Arc::new(pc);
        self.partitions.insert(k, Arc::clone(&pc));
        Ok(pc)
    }

    async fn try_send(
        &mut self,
        topic: &str,
        local: u32,
        local_count: u32,
        records: &[Record],
    ) -> Result<(), MirrorError> {
        let count = self.count(topic, local_count).await?;
        for (p, recs) in groups(records, local, count) {
            let pc = self.partition(topic, p).await?;
            let out: Vec<rskafka::record::Record> = recs
                .into_iter()
                .map(|r| rskafka::record::Record {
                    key: r.key.clone(),
                    value: r.value.clone(),
                    headers: r
                        .headers
                        .iter()
                        .map(|h| (h.name.clone(), h.bytes().to_vec()))
                        .collect(),
                    timestamp: rskafka::chrono::DateTime::from_timestamp_millis(r.timestamp)
                        .unwrap_or_default(),
                })
                .collect();
            timed("produce", pc.produce(out, self.compression)).await?;
        }
        Ok(())
    }

    pub async fn send(
        &mut self,
        topic: &str,
        local: u32,
        local_count: u32,
        records: &[Record],
    ) -> Result<(), MirrorError> {
        let r = self.try_send(topic, local, local_count, records).await;
        if r.is_err() {
            self.reset();
        }
        r
    }
}

pub struct BrookSink {
    upstream: Vec<String>,
    link: Arc<Link>,
    client: Option<Arc<crate::client::Client>>,
    counts: HashMap<String, u32>,
}

impl BrookSink {
    pub fn new(upstream: Vec<String>, link: Arc<Link>) -> BrookSink {
        BrookSink {
            upstream,
            link,
            client: None,
            counts: HashMap::new(),
        }
    }

    async fn client(&mut self) -> Result<Arc<crate::client::Client>, MirrorError> {
        if let Some(c) = &self.client {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(connect_brook(&self.upstream, "brook-mirror", &self.link).await?);
        self.client = Some(Arc::clone(&c));
        Ok(c)
    }

    async fn try_send(
        &mut self,
        topic: &str,
        local: u32,
        local_count: u32,
        records: &[Record],
    ) -> Result<(), MirrorError> {
        let client = self.client().await?;
        let count = match self.counts.get(topic) {
            Some(n) => *n,
            None => {
                let n = match timed("describe topic", client.describe_topic(topic)).await {
                    Ok(d) => d.partitions.len().sat_u32(),
                    Err(_) => {
                        let settings = TopicSettings {
                            partitions: Some(local_count),
                            ..TopicSettings::default()
                        };
                        // Another mirror may create it at the same time: describe again.
                        let _ = timed("create topic", client.create_topic(topic, settings)).await;
                        (timed("describe topic", client.describe_topic(topic))
                            .await?
                            .partitions
                            .len())
                        .sat_u32()
                    }
                };
                self.counts.insert(topic.to_string(), n.max(1));
                n.max(1)
            }
        };
        for (p, recs) in groups(records, local, count) {
            let mut batch = BatchBuilder::new();
            for r in recs {
                batch.push_record(r);
            }
            timed(
                "produce",
                client.produce(topic, Some(p), None, Acks::Durable, &batch),
            )
            .await?;
        }
        Ok(())
    }

    pub async fn send(
        &mut self,
        topic: &str,
        local: u32,
        local_count: u32,
        records: &[Record],
    ) -> Result<(), MirrorError> {
        let r = self.try_send(topic, local, local_count, records).await;
        if r.is_err() {
            self.client = None;
            self.counts.clear();
        }
        r
    }
}

/// An MQTT broker upstream (QoS 1): each record is one PUBLISH to the topic the template gives
/// it (`{key}` is the record key); the batch counts as sent once every PUBACK is in. MQTT 5
/// carries the origin headers as user properties; MQTT 3.1.1 (`mqtt_version = "3.1.1"`, for
/// brokers that speak nothing newer) has nowhere to put them and sends the value alone.
pub struct MqttSink {
    host: String,
    port: u16,
    client_id: String,
    link: Arc<Link>,
    v311: bool,
    conn: Option<MqttConn>,
}

/// An MQTT upstream's host and port (the config check made sure it is `host:port`; 1883 if not).
pub(super) fn mqtt_host_port(upstream: &str) -> (String, u16) {
    upstream
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse().unwrap_or(1883)))
        .unwrap_or((upstream.to_string(), 1883))
}

/// A connection (rumqttc queues and reconnects inside it) in either protocol version.
enum MqttConn {
    V5(rumqttc::v5::AsyncClient, Box<rumqttc::v5::EventLoop>),
    V311(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
}

impl MqttSink {
    pub fn new(upstream: &str, client_id: String, link: Arc<Link>, v311: bool) -> MqttSink {
        let (host, port) = mqtt_host_port(upstream);
        MqttSink {
            host,
            port,
            client_id,
            link,
            v311,
            conn: None,
        }
    }

    /// The MQTT topic of a record: `base` (the template, node and topic filled in) with `{key}`
    /// (the key as UTF-8; empty without one) filled in, wildcards and empty levels removed.
    fn topic_of(base: &str, r: &Record) -> String {
        let key = r
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let t = base.replace("{key}", &key);
        let t: Vec<&str> = t
            .split('/')
            .filter(|l| !l.is_empty() && *l != "+" && *l != "#")
            .collect();
        if t.is_empty() {
            "brook".to_string()
        } else {
            t.join("/")
        }
    }

    fn connect(&self) -> Result<MqttConn, MirrorError> {
        self.link.usable()?;
        let login = self.link.login();
        if self.v311 {
            let mut o = rumqttc::MqttOptions::new(&self.client_id, &self.host, self.port);
            o.set_keep_alive(Duration::from_secs(30));
            o.set_transport(self.link.mqtt_transport());
            if let Some((user, password)) = login {
                o.set_credentials(user.clone(), password.clone());
            }
            o.set_clean_session(true);
            let (client, events) = rumqttc::AsyncClient::new(o, 64);
            Ok(MqttConn::V311(client, Box::new(events)))
        } else {
            let mut o = rumqttc::v5::MqttOptions::new(&self.client_id, &self.host, self.port);
            o.set_keep_alive(Duration::from_secs(30));
            o.set_transport(self.link.mqtt_transport());
            if let Some((user, password)) = login {
                o.set_credentials(user.clone(), password.clone());
            }
            o.set_clean_start(true);
            let (client, events) = rumqttc::v5::AsyncClient::new(o, 64);
            Ok(MqttConn::V5(client, Box::new(events)))
        }
    }

    async fn try_send(&mut self, base: &str, records: &[Record]) -> Result<(), MirrorError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let topics: Vec<String> = records.iter().map(|r| Self::topic_of(base, r)).collect();
        match self.conn.as_mut() {
            Some(MqttConn::V5(client, events)) => send_v5(client, events, records, topics).await,
            Some(MqttConn::V311(client, events)) => {
                send_v311(client, events, records, topics).await
            }
            None => Err("not connected".into()),
        }
    }

    pub async fn send(&mut self, base: &str, records: &[Record]) -> Result<(), MirrorError> {
        let r = match tokio::time::timeout(OP_TIMEOUT, self.try_send(base, records)).await {
            Ok(r) => r,
            Err(_) => Err(MirrorError::Upstream(format!(
                "no PUBACKs within {OP_TIMEOUT:?}"
            ))),
        };
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

/// Publishes `records` over MQTT 5 (origin headers as user properties) and waits for every
/// PUBACK. The first error ends both halves: a refused connection must not leave the
/// publishing half waiting on a full request queue.
async fn send_v5(
    client: &rumqttc::v5::AsyncClient,
    events: &mut rumqttc::v5::EventLoop,
    records: &[Record],
    topics: Vec<String>,
) -> Result<(), MirrorError> {
    use rumqttc::v5::Event;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PublishProperties};
    let client = client.clone();
    let publish = async move {
        for (r, topic) in records.iter().zip(topics) {
            let props = PublishProperties {
                user_properties: r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.clone(),
                            String::from_utf8_lossy(h.bytes()).into_owned(),
                        )
                    })
                    .collect(),
                ..PublishProperties::default()
            };
            client
                .publish_with_properties(
                    topic,
                    QoS::AtLeastOnce,
                    false,
                    r.value_bytes().to_vec(),
                    props,
                )
                .await
                .map_err(|e| MirrorError::Upstream(format!("publish: {e}")))?;
        }
        Ok::<(), MirrorError>(())
    };
    let want = records.len();
    let acks = async move {
        let mut acked = 0;
        while acked < want {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    if !matches!(
                        a.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ) {
                        return Err(MirrorError::Upstream(format!(
                            "PUBACK refused: {:?}",
                            a.reason
                        )));
                    }
                    acked += 1;
                }
                Ok(_) => {}
                Err(e) => return Err(MirrorError::Upstream(format!("mqtt: {e}"))),
            }
        }
        Ok(())
    };
    tokio::try_join!(publish, acks).map(|_| ())
}

/// As [`send_v5`] over MQTT 3.1.1: the value alone (no properties), a PUBACK is always a yes.
async fn send_v311(
    client: &rumqttc::AsyncClient,
    events: &mut rumqttc::EventLoop,
    records: &[Record],
    topics: Vec<String>,
) -> Result<(), MirrorError> {
    use rumqttc::{Event, Packet, QoS};
    let client = client.clone();
    let publish = async move {
        for (r, topic) in records.iter().zip(topics) {
            client
                .publish(topic, QoS::AtLeastOnce, false, r.value_bytes().to_vec())
                .await
                .map_err(|e| MirrorError::Upstream(format!("publish: {e}")))?;
        }
        Ok::<(), MirrorError>(())
    };
    let want = records.len();
    let acks = async move {
        let mut acked = 0;
        while acked < want {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => return Err(MirrorError::Upstream(format!("mqtt: {e}"))),
            }
        }
        Ok(())
    };
    tokio::try_join!(publish, acks).map(|_| ())
}

/// A mirror's upstream.
pub enum Sink {
    Kafka(KafkaSink),
    Brook(BrookSink),
    Mqtt(Box<MqttSink>),
}

impl Sink {
    /// Sends `records` of local partition `local` (of `local_count`) to upstream topic `topic`;
    /// returns once every one is acknowledged.
    pub async fn send(
        &mut self,
        topic: &str,
        local: u32,
        local_count: u32,
        records: &[Record],
    ) -> Result<(), MirrorError> {
        match self {
            Sink::Kafka(s) => s.send(topic, local, local_count, records).await,
            Sink::Brook(s) => s.send(topic, local, local_count, records).await,
            Sink::Mqtt(s) => s.send(topic, records).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: Option<&str>) -> Record {
        Record {
            key: key.map(|k| k.as_bytes().to_vec()),
            ..Record::default()
        }
    }

    #[test]
    fn records_keep_their_partition_or_go_by_key() {
        assert_eq!(place(&rec(Some("a")), 2, 4), 2);
        let by_key = place(&rec(Some("sensor-7")), 5, 2);
        assert_eq!(by_key, partition_for_key(b"sensor-7", 2));
        assert_eq!(place(&rec(None), 5, 2), 1);
        let recs = vec![rec(Some("x")), rec(Some("y")), rec(Some("x"))];
        let g = groups(&recs, 3, 2);
        let px = partition_for_key(b"x", 2);
        assert_eq!(
            g[&px]
                .iter()
                .filter(|r| r.key.as_deref() == Some(&b"x"[..]))
                .count(),
            2
        );
    }
}
