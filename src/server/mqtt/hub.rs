//! What all MQTT connections share: routing into log topics, the subscription trie and one
//! dispatcher task per log partition, the session registry (takeover, expiry, persistence),
//! and retained messages.
//!
//! Live delivery: a dispatcher tails its partition (the frames the flusher just wrote, from
//! memory; the log on the blocking pool when it fell behind), matches each record's
//! MQTT topic once against the trie, and hands an `Arc` of the decoded message to each
//! matching connection's bounded [`super::inbox`]. A connection whose inbox is full is marked
//! lagged and the message is not queued for it: the connection reads that stretch back from
//! the log itself. A slow subscriber therefore costs memory bounded by its inbox, never
//! holds up the others, and loses nothing the log still holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::codec::{MessageProps, Publish, Will};
use super::inbox::{InboxRx, InboxTx};
use super::message::{self, LogMessage};
use super::pressure::{PRESS_BELOW, Pressure};
use super::session::{Owner, PersistedSession, SessionState};
use super::{MqttConfig, MqttStats};
use crate::broker::{Broker, BrokerError};
use crate::log::{
    AppendTicket, BatchBuilder, Durability, LogError, PartitionChoice, Topic, Visibility,
};
use crate::meta::Namespace;
use crate::proto::TopicSettings;
use crate::topic_filter::{self as topic, Trie};
use crate::units::ByteSize;
use crate::units::Narrow;

/// A message for one connection.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// Matched one or more of its (non-shared) subscriptions.
    Log(Arc<LogMessage>),
    /// Picked for it as a member of shared subscription `filter` (raw `$share/...`).
    Shared(Arc<LogMessage>, Arc<str>),
    /// A message that is not in the log (`$SYS`), at QoS 0.
    Unlogged(Arc<LogMessage>),
}

/// Asks a connection to hand its session over to a new connection with the same client id.
pub type Takeover = oneshot::Sender<SessionState>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SubKey {
    conn: u64,
    raw: Arc<str>,
}

#[derive(Clone)]
struct Target {
    inbox: InboxTx,
    shared: bool,
}

enum Slot {
    Online {
        conn: u64,
        owner: Owner,
        inbox: InboxTx,
    },
    Offline {
        state: Box<SessionState>,
        since: Instant,
        conn: u64,
    },
}

/// A retained message as stored in the metadata store.
#[derive(Serialize, Deserialize)]
struct StoredRetained {
    timestamp: i64,
    qos: u8,
    payload: Vec<u8>,
    publisher: Option<String>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    payload_format: Option<u8>,
    expiry: Option<u32>,
    user: Vec<(String, String)>,
}

impl StoredRetained {
    /// The message delivered to new subscribers of `topic`.
    fn into_message(self, topic: String) -> LogMessage {
        LogMessage {
            log_topic: Arc::from(""),
            partition: 0,
            offset: 0,
            timestamp: self.timestamp,
            topic,
            payload: Bytes::from(self.payload),
            qos: self.qos,
            retain: true,
            publisher: self.publisher,
            props: MessageProps {
                payload_format: self.payload_format,
                expiry: self.expiry,
                topic_alias: None,
                response_topic: self.response_topic,
                correlation_data: self.correlation_data.map(Bytes::from),
                user: self.user,
                content_type: self.content_type,
                subscription_ids: Vec::new(),
            },
        }
    }
}

pub struct Hub {
    pub broker: Arc<Broker>,
    /// Logins and the ACL.
    pub auth: Arc<crate::auth::Auth>,
    pub config: MqttConfig,
    pub stats: Arc<MqttStats>,
    subs: RwLock<Trie<SubKey, Target>>,
    /// Push-back from subscribers falling behind to publishers ([`super::pressure`]).
    pub pressure: Pressure,
    sessions: Mutex<HashMap<String, Slot>>,
    /// Log topics with dispatchers, and for how many of their partitions (partitions added
    /// later get theirs at the next housekeeping).
    dispatching: RwLock<HashMap<String, usize>>,
    retained: RwLock<BTreeMap<String, Arc<LogMessage>>>,
    /// The latest `$SYS` messages (retained in memory only), the load averages, when the hub
    /// started and last published them.
    sys: Mutex<SysState>,
    /// Mirror backlogs for `$SYS/brook/mirror/...`.
    mirrors: Arc<crate::mirror::status::MirrorStatus>,
    next_conn: AtomicU64,
    meta_dirty: AtomicBool,
    shutdown: watch::Receiver<bool>,
    /// Dispatchers and delayed wills: they hold the hub (and so the broker), so shutdown waits
    /// for them.
    background: Mutex<tokio::task::JoinSet<()>>,
    /// Itself, for the dispatcher tasks it starts.
    me: std::sync::Weak<Hub>,
}

#[derive(Debug)]
struct SysState {
    retained: BTreeMap<String, Arc<LogMessage>>,
    load: super::sys::Load,
    started: Instant,
    last: Option<Instant>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().sat_i64())
}

impl Hub {
    /// Loads persisted sessions and retained messages, and starts a dispatcher for every
    /// existing log topic MQTT routes to.
    pub fn start(
        broker: Arc<Broker>,
        auth: Arc<crate::auth::Auth>,
        config: MqttConfig,
        stats: Arc<MqttStats>,
        mirrors: Arc<crate::mirror::status::MirrorStatus>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Hub>, BrokerError> {
        let mut sessions = HashMap::new();
        for (k, v) in broker.meta().scan(Namespace::MqttSessions)? {
            let (Ok(id), Ok(p)) = (String::from_utf8(k), PersistedSession::decode(&v)) else {
                tracing::warn!("mqtt: skipping an unreadable persisted session");
                continue;
            };
            let state = restore(&broker, id.clone(), p);
            sessions.insert(
                id,
                Slot::Offline {
                    state: Box::new(state),
                    since: Instant::now(),
                    conn: 0,
                },
            );
        }
        let mut retained = BTreeMap::new();
        for (k, v) in broker.meta().scan(Namespace::MqttRetained)? {
            let (Ok(topic), Ok(r)) = (
                String::from_utf8(k),
                postcard::from_bytes::<StoredRetained>(&v),
            ) else {
                tracing::warn!("mqtt: skipping an unreadable retained message");
                continue;
            };
            let msg = r.into_message(topic.clone());
            retained.insert(topic, Arc::new(msg));
        }
        stats
            .sessions
            .store(sessions.len() as u64, Ordering::Relaxed);
        stats
            .retained
            .store(retained.len() as u64, Ordering::Relaxed);
        let hub = Arc::new_cyclic(|me| Hub {
            broker,
            auth,
            config,
            stats,
            subs: RwLock::new(Trie::default()),
            pressure: Pressure::default(),
            sessions: Mutex::new(sessions),
            dispatching: RwLock::new(HashMap::new()),
            retained: RwLock::new(retained),
            sys: Mutex::new(SysState {
                retained: BTreeMap::new(),
                load: super::sys::Load::default(),
                started: Instant::now(),
                last: None,
            }),
            mirrors,
            next_conn: AtomicU64::new(1),
            meta_dirty: AtomicBool::new(false),
            shutdown,
            background: Mutex::new(tokio::task::JoinSet::new()),
            me: me.clone(),
        });
        let need = message::batch_bound(hub.config.max_packet_size.bytes());
        for t in hub.log_topics() {
            if let Ok(topic) = hub.broker.topic(&t) {
                let max = topic.config().max_batch_size.bytes();
                if max < need {
                    tracing::warn!(
                        topic = %t,
                        "mqtt: log topic's max_batch_size ({max} bytes) is below what a packet of mqtt.max_packet_size can take ({need} bytes): larger messages will be refused; recreate the topic or lower mqtt.max_packet_size"
                    );
                }
                hub.dispatch(&t);
            }
        }
        Ok(hub)
    }

    /// Every log topic MQTT messages may go to.
    pub fn log_topics(&self) -> Vec<String> {
        let mut v: Vec<String> = self.config.route.iter().map(|r| r.topic.clone()).collect();
        v.push(self.config.default_topic.clone());
        v.sort();
        v.dedup();
        v
    }

    /// The log topic for MQTT topic `name`: the first matching route, else the default.
    pub fn route(&self, name: &str) -> &str {
        self.config
            .route
            .iter()
            .find(|r| topic::matches(&r.filter, name))
            .map_or(self.config.default_topic.as_str(), |r| r.topic.as_str())
    }

    /// Every existing partition of the MQTT log topics, with its end offset.
    pub fn partition_ends(&self) -> Vec<(Arc<str>, u32, u64, u64)> {
        let mut out = Vec::new();
        for t in self.log_topics() {
            let Ok(topic) = self.broker.topic(&t) else {
                continue;
            };
            let name: Arc<str> = Arc::from(t.as_str());
            for (i, p) in topic.partitions().iter().enumerate() {
                out.push((
                    Arc::clone(&name),
                    i.sat_u32(),
                    p.log_start(),
                    p.end_offset(),
                ));
            }
        }
        out
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn ensure_topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        let topic = match self.broker.topic(name) {
            Ok(t) => t,
            Err(BrokerError::Log(LogError::UnknownTopic(_))) => {
                // Sized so that any packet mqtt.max_packet_size admits fits one batch.
                let mut cfg = self.broker.topic_config(&TopicSettings::default());
                let need = message::batch_bound(self.config.max_packet_size.bytes());
                // (Config validation holds `need` within topic_defaults.segment_size.)
                if cfg.max_batch_size.bytes() < need {
                    cfg.max_batch_size = ByteSize(need.min(cfg.segment_size.bytes()));
                }
                match self.broker.create_topic_with(name, cfg) {
                    Ok(_) => tracing::info!(topic = name, "mqtt: created log topic"),
                    Err(BrokerError::Log(LogError::TopicExists(_))) => {}
                    Err(e) => return Err(e),
                }
                self.broker.topic(name)?
            }
            Err(e) => return Err(e),
        };
        self.dispatch(name);
        Ok(topic)
    }

    /// Where a message published to MQTT topic `name` is stored: its log topic (created when
    /// missing) and the partition its name hashes to (the same choice [`Hub::append`] makes).
    pub fn place(&self, name: &str) -> Result<(Arc<Topic>, u32), BrokerError> {
        let topic = self.ensure_topic(self.route(name))?;
        let n = topic.partitions().len().sat_u32();
        Ok((
            topic,
            crate::log::partitioner::partition_for_key(name.as_bytes(), n),
        ))
    }

    /// Appends `batch` (records made by [`message::push`]) to `partition` of log topic `topic`
    /// (from [`Hub::place`]); the ticket completes at `durability`, a `Durable` one's fsync
    /// waiting up to `sync_within` to be shared ([`super::conn`]'s publishers on their own
    /// clock, `mqtt.sync_delay`).
    pub fn append_batch(
        &self,
        topic: &Topic,
        partition: u32,
        batch: &BatchBuilder,
        durability: Durability,
        sync_within: Duration,
    ) -> Result<AppendTicket, BrokerError> {
        let (_, ticket) = self.broker.produce_start_within(
            topic.name(),
            PartitionChoice::Id(partition),
            batch,
            durability,
            sync_within,
        )?;
        Ok(ticket)
    }

    /// Puts `publish` from `client_id` in the log; the ticket completes at `durability` (see
    /// [`Hub::append_batch`] for `sync_within`).
    pub fn append(
        &self,
        publish: &Publish,
        client_id: &str,
        durability: Durability,
        sync_within: Duration,
    ) -> Result<AppendTicket, BrokerError> {
        let (topic, partition) = self.place(&publish.topic)?;
        let batch = message::batch(publish, client_id, now_ms());
        self.append_batch(&topic, partition, &batch, durability, sync_within)
    }

    /// Whether `publish` (a QoS 2 resend, DUP set, whose packet id the session does not hold:
    /// its state was lost in a broker restart) is already in the log: a record among the last
    /// 4,096 of its partition (4 MiB at most) from `client_id` with the same packet id, topic
    /// and payload. Then it is acknowledged again and not stored twice.
    pub async fn stored_recently(self: &Arc<Self>, publish: &Publish, client_id: &str) -> bool {
        let hub = Arc::clone(self);
        let (publish, client_id) = (publish.clone(), client_id.to_string());
        tokio::task::spawn_blocking(move || hub.stored_recently_blocking(&publish, &client_id))
            .await
            .unwrap_or(false)
    }

    /// [`Hub::stored_recently`] on the calling thread (it reads the log).
    fn stored_recently_blocking(&self, publish: &Publish, client_id: &str) -> bool {
        let Ok(topic) = self.broker.topic(self.route(&publish.topic)) else {
            return false;
        };
        let n = topic.partitions().len().sat_u32();
        let p = crate::log::partitioner::partition_for_key(publish.topic.as_bytes(), n);
        let Ok(part) = topic.partition(p) else {
            return false;
        };
        let pkid = publish.pkid.to_string();
        let mut from = part.end_offset().saturating_sub(4096).max(part.log_start());
        let mut budget: usize = 4 << 20;
        while budget > 0 {
            let Ok(read) = part.read(from, budget.min(1 << 20), Visibility::Written) else {
                return false;
            };
            if read.frames.is_empty() {
                return false;
            }
            budget = budget.saturating_sub(read.frames.len());
            for b in read.batches() {
                for r in b.records().flatten() {
                    from = r.offset + 1;
                    let header = |name: &str| {
                        r.headers
                            .iter()
                            .find(|h| h.name == name)
                            .and_then(|h| h.value)
                    };
                    if header("mqtt.pkid") == Some(pkid.as_bytes())
                        && header("mqtt.client") == Some(client_id.as_bytes())
                        && r.key == Some(publish.topic.as_bytes())
                        && r.value == Some(&publish.payload[..])
                    {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Stores (or, for an empty payload, clears) the retained message of `publish`'s topic.
    /// Durable after the next [`Hub::flush_meta`].
    pub fn retain(&self, publish: &Publish, client_id: &str) -> Result<(), BrokerError> {
        let meta = self.broker.meta();
        let mut map = self.retained.write().unwrap_or_else(|e| e.into_inner());
        if publish.payload.is_empty() {
            meta.remove(Namespace::MqttRetained, publish.topic.as_bytes())?;
            map.remove(&publish.topic);
        } else {
            let p = &publish.props;
            let stored = StoredRetained {
                timestamp: now_ms(),
                qos: publish.qos,
                payload: publish.payload.to_vec(),
                publisher: Some(client_id.to_owned()),
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.as_ref().map(|b| b.to_vec()),
                payload_format: p.payload_format,
                expiry: p.expiry,
                user: p.user.clone(),
            };
            let bytes = postcard::to_allocvec(&stored)
                .map_err(|e| BrokerError::Invalid(format!("retained message: {e}")))?;
            meta.put(Namespace::MqttRetained, publish.topic.as_bytes(), &bytes)?;
            map.insert(
                publish.topic.clone(),
                Arc::new(stored.into_message(publish.topic.clone())),
            );
        }
        self.stats
            .retained
            .store(map.len() as u64, Ordering::Relaxed);
        self.meta_dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Retained messages whose topic matches `filter` (the latest `$SYS` ones included).
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<LogMessage>> {
        let mut out: Vec<Arc<LogMessage>> = {
            let map = self.retained.read().unwrap_or_else(|e| e.into_inner());
            map.values()
                .filter(|m| topic::matches(filter, &m.topic))
                .cloned()
                .collect()
        };
        if filter.starts_with('$') {
            let sys = self.sys.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(
                sys.retained
                    .values()
                    .filter(|m| topic::matches(filter, &m.topic))
                    .cloned(),
            );
        }
        out
    }

    /// Publishes `$SYS/#` when `mqtt.sys_interval` has passed since the last time (called
    /// from the housekeeping, every second).
    fn publish_sys(&self) {
        let interval = self.config.sys_interval.0;
        if interval.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut sys = self.sys.lock().unwrap_or_else(|e| e.into_inner());
        if sys.last.is_some_and(|t| now.duration_since(t) < interval) {
            return;
        }
        sys.last = Some(now);
        sys.load.sample(&self.stats, now);
        let away = {
            let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            s.values()
                .filter(|slot| matches!(slot, Slot::Offline { .. }))
                .count() as u64
        };
        let store = self.broker.store();
        let mut brook = vec![
            (
                "$SYS/brook/log/bytes".to_string(),
                store.used_bytes().to_string(),
            ),
            (
                "$SYS/brook/partitions".to_string(),
                store
                    .topics()
                    .iter()
                    .map(|t| t.partitions().len())
                    .sum::<usize>()
                    .to_string(),
            ),
        ];
        if let Ok(free) = crate::log::fs::available_space(store.dir()) {
            brook.push(("$SYS/brook/log/free_bytes".to_string(), free.to_string()));
        }
        let mut backlog: BTreeMap<String, u64> = BTreeMap::new();
        for row in self.mirrors.rows() {
            *backlog.entry(row.mirror.clone()).or_default() += row.backlog_records;
        }
        for (name, n) in backlog {
            brook.push((format!("$SYS/brook/mirror/{name}/backlog"), n.to_string()));
        }
        let uptime = now.duration_since(sys.started).as_secs();
        let messages = super::sys::messages(&self.stats, &sys.load, uptime, away, &brook);
        let ts = now_ms();
        let mut fresh = Vec::with_capacity(messages.len());
        for (topic, payload) in messages {
            let msg = Arc::new(LogMessage {
                log_topic: Arc::from("$SYS"),
                partition: 0,
                offset: 0,
                timestamp: ts,
                topic: topic.clone(),
                payload: bytes::Bytes::from(payload),
                qos: 0,
                retain: true,
                publisher: None,
                props: MessageProps::default(),
            });
            sys.retained.insert(topic, Arc::clone(&msg));
            fresh.push(msg);
        }
        drop(sys);
        let subs = self.subs.read().unwrap_or_else(|e| e.into_inner());
        for msg in fresh {
            let mut targets: Vec<(u64, &Target)> = Vec::new();
            subs.for_each_match(&msg.topic, |k, t| {
                if !t.shared {
                    targets.push((k.conn, t));
                }
            });
            targets.sort_unstable_by_key(|(c, _)| *c);
            targets.dedup_by_key(|(c, _)| *c);
            for (_, t) in targets {
                // QoS 0, and the next one comes soon: a full inbox just misses this one.
                let _ = t
                    .inbox
                    .deliver_or_refuse(Delivery::Unlogged(Arc::clone(&msg)));
            }
        }
    }

    /// Registers connection `conn`'s subscription `raw` for live delivery.
    pub fn subscribe(&self, conn: u64, raw: &str, inbox: &InboxTx) {
        let Ok(parsed) = topic::parse_filter(raw) else {
            return;
        };
        let mut subs = self.subs.write().unwrap_or_else(|e| e.into_inner());
        subs.insert(
            parsed.filter,
            SubKey {
                conn,
                raw: Arc::from(raw),
            },
            Target {
                inbox: inbox.clone(),
                shared: parsed.share_group.is_some(),
            },
        );
        self.stats
            .subscriptions
            .store(subs.len() as u64, Ordering::Relaxed);
    }

    pub fn unsubscribe(&self, conn: u64, raw: &str) {
        let Ok(parsed) = topic::parse_filter(raw) else {
            return;
        };
        let mut subs = self.subs.write().unwrap_or_else(|e| e.into_inner());
        subs.remove(
            parsed.filter,
            &SubKey {
                conn,
                raw: Arc::from(raw),
            },
        );
        self.stats
            .subscriptions
            .store(subs.len() as u64, Ordering::Relaxed);
    }

    /// Starts the dispatcher of every partition of log topic `name` (once), from the end. On
    /// every publish, so a topic already dispatched costs one lookup; partitions added later
    /// are picked up by the housekeeping.
    fn dispatch(&self, name: &str) {
        let d = self.dispatching.read().unwrap_or_else(|e| e.into_inner());
        if d.contains_key(name) {
            return;
        }
        drop(d);
        self.dispatch_from(name, false);
    }

    /// As [`Hub::dispatch`]; `from_start`: from the first stored offset (a recreated topic).
    /// Partitions added to a topic since its dispatchers started get theirs, from their start.
    fn dispatch_from(&self, name: &str, from_start: bool) {
        let Ok(topic) = self.broker.topic(name) else {
            return;
        };
        let count = topic.partitions().len();
        let running = |d: &HashMap<String, usize>| d.get(name).is_some_and(|n| *n >= count);
        if running(&self.dispatching.read().unwrap_or_else(|e| e.into_inner())) {
            return;
        }
        let mut d = self.dispatching.write().unwrap_or_else(|e| e.into_inner());
        if running(&d) {
            return;
        }
        let first_new = d.insert(name.to_owned(), count);
        let Some(hub) = self.me.upgrade() else {
            return;
        };
        let name: Arc<str> = Arc::from(name);
        let mut bg = self.background.lock().unwrap_or_else(|e| e.into_inner());
        for (i, p) in topic.partitions().iter().enumerate() {
            if first_new.is_some_and(|n| i < n) {
                continue;
            }
            let start = if from_start || first_new.is_some() {
                p.log_start()
            } else {
                p.end_offset()
            };
            bg.spawn(dispatcher(
                Arc::clone(&hub),
                Arc::clone(&name),
                i.sat_u32(),
                start,
            ));
        }
    }

    /// A dispatcher of log topic `name` stopped: the next publish to it starts a new one.
    fn dispatcher_ended(&self, name: &str) {
        self.dispatching
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Claims client id `id` for connection `conn` of `owner`: returns the session state it
    /// had (from a connection it takes over, or kept while the client was away). `Err` names
    /// the owner when the session belongs to another user; nothing is changed then.
    pub async fn claim(
        &self,
        id: &str,
        conn: u64,
        owner: &Owner,
        inbox: &InboxTx,
    ) -> Result<Option<SessionState>, Owner> {
        let waiting = {
            let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let held_by = match s.get(id) {
                Some(Slot::Online { owner, .. }) => Some(owner),
                Some(Slot::Offline { state, .. }) => Some(&state.owner),
                None => None,
            };
            if let Some(held_by) = held_by.filter(|h| !h.admits(owner)) {
                self.stats.foreign_refused.fetch_add(1, Ordering::Relaxed);
                return Err(held_by.clone());
            }
            let prev = s.insert(
                id.to_owned(),
                Slot::Online {
                    conn,
                    owner: owner.clone(),
                    inbox: inbox.clone(),
                },
            );
            match prev {
                None => {
                    self.stats.sessions.fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
                Some(Slot::Offline { state, .. }) => return Ok(Some(*state)),
                Some(Slot::Online { inbox: old, .. }) => {
                    let (tx, rx) = oneshot::channel();
                    // Sent under the lock: the old connection finds it even while exiting.
                    if old.take_over(tx).is_err() {
                        None
                    } else {
                        Some(rx)
                    }
                }
            }
        };
        self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
        // The old connection hands the session over as it ends; it ends promptly (a write to
        // a client that does not read gives up on the takeover). Without an answer (that
        // connection is gone and did not hand it over) the session is what was stored, as
        // after a crash: never a new, empty session in place of one that exists.
        let handed = match waiting {
            Some(rx) => rx.await.ok(),
            None => None,
        };
        if handed.is_some() {
            return Ok(handed);
        }
        tracing::warn!(
            client = id,
            "mqtt: the connection that had this session ended without handing it over: resuming it as stored"
        );
        Ok(self.stored_session(id))
    }

    /// A session as stored in the metadata store, restored as after a restart.
    fn stored_session(&self, id: &str) -> Option<SessionState> {
        let bytes = match self
            .broker
            .meta()
            .get(Namespace::MqttSessions, id.as_bytes())
        {
            Ok(b) => b?,
            Err(e) => {
                tracing::warn!(client = id, "mqtt: reading the stored session: {e}");
                return None;
            }
        };
        match PersistedSession::decode(&bytes) {
            Ok(p) => Some(restore(&self.broker, id.to_owned(), p)),
            Err(e) => {
                tracing::warn!(client = id, "mqtt: the stored session is unreadable: {e}");
                None
            }
        }
    }

    /// Connection `conn` ends. Hands the state to a connection that took over, keeps it while
    /// the client is away (expiry > 0), or forgets it. Returns whether it was taken over.
    pub fn release(&self, id: &str, conn: u64, state: SessionState, inbox: &InboxRx) -> bool {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let ours = matches!(s.get(id), Some(Slot::Online { conn: c, .. }) if *c == conn);
        if !ours {
            if let Some(reply) = inbox.try_takeover() {
                let _ = reply.send(state);
            }
            return true;
        }
        if state.expiry == 0 {
            s.remove(id);
            self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
            drop(s);
            if let Err(e) = self
                .broker
                .meta()
                .remove(Namespace::MqttSessions, id.as_bytes())
            {
                tracing::warn!(client = id, "mqtt: cannot forget session: {e}");
            }
            self.meta_dirty.store(true, Ordering::Relaxed);
        } else {
            s.insert(
                id.to_owned(),
                Slot::Offline {
                    state: Box::new(state),
                    since: Instant::now(),
                    conn,
                },
            );
        }
        false
    }

    /// Reads the restored in-flight messages of `state` back from the log, so they can be sent
    /// again; returns how many the log no longer has (dropped).
    pub async fn load_inflight(&self, state: &mut SessionState, v5: bool) -> usize {
        let mut found = HashMap::new();
        for (t, p, offset) in state.unloaded() {
            let Ok(read) = self.broker.fetch(&t, p, offset, 1, 0, Duration::ZERO).await else {
                continue;
            };
            let record = read
                .batches()
                .flat_map(|b| b.records())
                .map_while(Result::ok)
                .find(|r| r.offset == offset);
            if let Some(m) = record.and_then(|r| message::from_record(&t, p, &r)) {
                found.insert(((t, p), offset), m);
            }
        }
        state.load(|k, o| found.remove(&(k.clone(), o)), v5)
    }

    /// Forgets a session's persisted part (clean start).
    pub fn forget(&self, id: &str) -> Result<(), BrokerError> {
        self.broker
            .meta()
            .remove(Namespace::MqttSessions, id.as_bytes())?;
        self.meta_dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a session's persistent part (durable after [`Hub::flush_meta`]).
    pub fn persist(&self, id: &str, p: &PersistedSession) -> Result<(), BrokerError> {
        let bytes =
            postcard::to_allocvec(p).map_err(|e| BrokerError::Invalid(format!("session: {e}")))?;
        self.broker
            .meta()
            .put(Namespace::MqttSessions, id.as_bytes(), &bytes)?;
        self.meta_dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a session's persistent part and flushes it, off the async threads.
    pub async fn persist_durably(
        self: &Arc<Self>,
        id: &str,
        p: PersistedSession,
    ) -> Result<(), BrokerError> {
        let (hub, id) = (Arc::clone(self), id.to_owned());
        tokio::task::spawn_blocking(move || {
            hub.persist(&id, &p)?;
            hub.flush_meta()
        })
        .await
        .map_err(|e| BrokerError::Invalid(format!("persist task: {e}")))?
    }

    /// Makes the metadata writes so far durable (blocking: one fsync).
    pub fn flush_meta(&self) -> Result<(), BrokerError> {
        self.meta_dirty.store(false, Ordering::Relaxed);
        self.broker.meta().flush()?;
        Ok(())
    }

    /// Publishes a will: now, or after its delay unless the client is back by then.
    pub fn publish_will(self: &Arc<Self>, id: String, conn: u64, will: Will, session_expiry: u32) {
        let delay = will.delay.min(session_expiry);
        let hub = Arc::clone(self);
        let mut stop = self.shutdown.clone();
        let mut bg = self.background.lock().unwrap_or_else(|e| e.into_inner());
        while bg.try_join_next().is_some() {}
        bg.spawn(async move {
            if delay > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {}
                    // A will still waiting when the broker stops is not published.
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                }
                let back = {
                    let s = hub.sessions.lock().unwrap_or_else(|e| e.into_inner());
                    match s.get(&id) {
                        Some(Slot::Online { .. }) => true,
                        Some(Slot::Offline { conn: c, .. }) => *c != conn,
                        None => false,
                    }
                };
                if back {
                    return;
                }
            }
            let publish = will.message;
            if publish.retain {
                if let Err(e) = hub.retain(&publish, &id) {
                    tracing::warn!(client = %id, "mqtt: will not retained: {e}");
                }
            }
            match hub.append(&publish, &id, Durability::Written, Duration::ZERO) {
                Ok(t) => {
                    if let Err(e) = t.finish().await {
                        tracing::warn!(client = %id, "mqtt: will not stored: {e}");
                    } else {
                        hub.stats.wills.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => tracing::warn!(client = %id, "mqtt: will not stored: {e}"),
            }
        });
    }

    /// Waits for the dispatchers and pending wills to see the shutdown and end.
    pub async fn join_background(&self) {
        let mut set =
            std::mem::take(&mut *self.background.lock().unwrap_or_else(|e| e.into_inner()));
        while set.join_next().await.is_some() {}
    }

    /// Starts dispatchers for MQTT log topics other front ends created, expires sessions whose
    /// client has been away longer than their expiry interval, and flushes metadata written
    /// since the last call. Blocking.
    pub fn housekeeping(&self) {
        self.publish_sys();
        // A log topic created by another front end (native, Kafka) after start has no
        // dispatcher yet: start one from its first record (nothing was delivered from it).
        for t in self.log_topics() {
            if self.broker.topic(&t).is_ok() {
                self.dispatch_from(&t, true);
            }
        }
        let expired: Vec<String> = {
            let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<String> = s
                .iter()
                .filter_map(|(id, slot)| match slot {
                    Slot::Offline { state, since, .. }
                        if state.expiry != u32::MAX
                            && since.elapsed() >= Duration::from_secs(u64::from(state.expiry)) =>
                    {
                        Some(id.clone())
                    }
                    _ => None,
                })
                .collect();
            for id in &ids {
                s.remove(id);
            }
            ids
        };
        for id in &expired {
            self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
            if let Err(e) = self.forget(id) {
                tracing::warn!(client = %id, "mqtt: cannot forget expired session: {e}");
            }
            tracing::info!(client = %id, "mqtt: session expired");
        }
        if self.meta_dirty.load(Ordering::Relaxed) {
            if let Err(e) = self.flush_meta() {
                tracing::error!("mqtt: metadata flush: {e}");
            }
        }
    }

    /// Whether any connected client has a subscription (live delivery; an offline persistent
    /// session reads back from its own positions when it returns).
    fn has_subscriptions(&self) -> bool {
        !self
            .subs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Delivers the records at or after offset `from` in `batches`.
    fn deliver_batches<'a>(
        &self,
        topic: &Arc<str>,
        partition: u32,
        batches: impl Iterator<Item = crate::log::BatchView<'a>>,
        from: u64,
    ) {
        // Sending never blocks (try_send), so the matches are used under the read lock.
        let subs = self.subs.read().unwrap_or_else(|e| e.into_inner());
        if subs.is_empty() {
            return;
        }
        let mut direct: Vec<(u64, &Target)> = Vec::new();
        let mut shared: HashMap<&Arc<str>, Vec<&Target>> = HashMap::new();
        for batch in batches {
            if batch.next_offset() <= from {
                continue;
            }
            for r in batch.records() {
                let Ok(r) = r else { break };
                if r.offset < from {
                    continue;
                }
                // Matched on the record's key (the MQTT topic) first: a message no one
                // subscribed to is never decoded further.
                let Some(name) = r.key.and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                direct.clear();
                shared.clear();
                subs.for_each_match(name, |k, t| {
                    if t.shared {
                        shared.entry(&k.raw).or_default().push(t);
                    } else {
                        direct.push((k.conn, t));
                    }
                });
                if direct.is_empty() && shared.is_empty() {
                    continue;
                }
                let Some(msg) = message::from_record(topic, partition, &r) else {
                    continue;
                };
                self.send(Arc::new(msg), &mut direct, &shared);
            }
        }
    }

    /// Hands `msg` to the connections it matched: each once, and one member of each shared
    /// subscription's group.
    fn send(
        &self,
        msg: Arc<LogMessage>,
        direct: &mut Vec<(u64, &Target)>,
        shared: &HashMap<&Arc<str>, Vec<&Target>>,
    ) {
        direct.sort_unstable_by_key(|(c, _)| *c);
        direct.dedup_by_key(|(c, _)| *c);
        for (_, t) in direct.iter() {
            // A full inbox marks itself lagged: its connection reads the log back.
            if let Ok(free) = t.inbox.deliver(Delivery::Log(Arc::clone(&msg))) {
                if free < PRESS_BELOW {
                    self.pressure.press();
                }
            }
        }
        for (raw, members) in shared {
            let n = members.len();
            let first = (msg.offset % n.sat_u64()).sat_usize();
            let sent = (0..n).any(|i| {
                members[(first + i) % n]
                    .inbox
                    .deliver_or_refuse(Delivery::Shared(Arc::clone(&msg), Arc::clone(raw)))
                    .is_ok()
            });
            if !sent {
                self.stats.dropped_shared.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A stored session as it resumes: a power cut may have lost log tail a position pointed
/// past, so positions are kept within the log (never skipping new records), and in-flight
/// messages that are no longer there are forgotten (their offsets will be given to new
/// records).
fn restore(broker: &Broker, id: String, p: PersistedSession) -> SessionState {
    let mut state = SessionState::restore(id, p);
    let mut ends = HashMap::new();
    for ((t, p), pos) in state.positions.iter_mut() {
        if let Ok((start, end, _)) = broker.list_offsets(t, *p, crate::proto::OffsetSpec::Latest) {
            *pos = (*pos).clamp(start, end);
            ends.insert((Arc::clone(t), *p), end);
        }
    }
    let lost = state.retain_inflight_below(&ends);
    if lost > 0 {
        tracing::warn!(client = %state.client_id, lost, "mqtt: in-flight messages past the log's end after a restart are not sent again");
    }
    state
}

/// Tails one log partition and hands each record to the connections whose subscriptions match.
/// At the end of the partition the records come from memory, as the flusher wrote them
/// ([`crate::log::Partition::tail`]); a dispatcher that fell behind reads the log on the blocking
/// pool, so no read waits for the disk on an async worker.
async fn dispatcher(hub: Arc<Hub>, topic: Arc<str>, partition: u32, mut pos: u64) {
    let stop = hub.shutdown.clone();
    let part = match hub
        .broker
        .topic(&topic)
        .and_then(|t| Ok(Arc::clone(t.partition(partition)?)))
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%topic, partition, "mqtt dispatcher: {e}");
            return;
        }
    };
    let mut tail = part.tail();
    // Made once (a wait for the next write registers no timer and no watch waiter of its own).
    let mut stop_wait = stop.clone();
    let stopped = async move { stop_wait.wait_for(|s| *s).await.is_ok() };
    tokio::pin!(stopped);
    let look_again = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(look_again);
    loop {
        let last = tail.borrow_and_update().clone();
        match last {
            Some(w) if w.first_offset <= pos && pos < w.next_offset => {
                hub.deliver_batches(&topic, partition, w.batches_from(pos), pos);
                pos = w.next_offset;
            }
            // With no subscription at all, what was written before now goes to no one: the
            // dispatcher moves past it without reading it back.
            _ if part.end_offset() > pos && !hub.has_subscriptions() => {
                pos = part.end_offset();
            }
            _ if part.end_offset() > pos => {
                let p = Arc::clone(&part);
                let read =
                    tokio::task::spawn_blocking(move || p.read(pos, 1 << 20, Visibility::Written))
                        .await;
                match read {
                    Ok(Ok(r)) => {
                        hub.deliver_batches(&topic, partition, r.batches(), pos);
                        pos = pos.max(r.next_offset);
                    }
                    Ok(Err(LogError::OffsetOutOfRange { .. })) => pos = part.log_start(),
                    Ok(Err(e)) => {
                        // A deleted topic's partition, or an I/O error: stop; a recreated topic
                        // gets a new dispatcher.
                        tracing::debug!(%topic, partition, "mqtt dispatcher stops: {e}");
                        hub.dispatcher_ended(&topic);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%topic, partition, "mqtt dispatcher: read task: {e}");
                        hub.dispatcher_ended(&topic);
                        return;
                    }
                }
            }
            _ => {
                tokio::select! {
                    _ = &mut stopped => return,
                    changed = tail.changed() => if changed.is_err() {
                        hub.dispatcher_ended(&topic);
                        return;
                    },
                    // A deleted and recreated topic is a new partition: look again now and then.
                    _ = &mut look_again => {
                        look_again.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                        let replaced = hub.broker.topic(&topic).map_or(true, |t| {
                            t.partition(partition).map_or(true, |p| !Arc::ptr_eq(p, &part))
                        });
                        if replaced {
                            hub.dispatcher_ended(&topic);
                            if partition == 0 {
                                hub.dispatch_from(&topic, true);
                            }
                            return;
                        }
                    }
                }
            }
        }
        if *stop.borrow() {
            return;
        }
    }
}
