//! The broker core: the one API every front end calls (native protocol now; MQTT, HTTP, Kafka
//! API and the mirror later). Front ends never touch files; this layer never touches sockets.
//!
//! | operation | what it does |
//! |---|---|
//! | [`Broker::produce`] | append a batch with the requested durability |
//! | [`Broker::fetch`] | read whole batches, waiting up to `max_wait` for `min_bytes` (long poll) |
//! | [`Broker::list_offsets`] | earliest, latest, or first offset at a timestamp |
//! | [`Broker::create_topic`] & co. | topic admin; configs persisted in `meta` before the files exist |
//! | [`Broker::join_group`] & co. | consumer groups ([`groups`]) and committed offsets (in `meta`, flushed before the answer) |
//! | [`Broker::kafka_join`], [`Broker::kafka_groups`] | Kafka clients' groups ([`kafka_groups`]): same offsets, one protocol per group id |

pub mod groups;
pub mod kafka_groups;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::log::lock::DirLock;
use crate::log::{
    AppendTicket, Appended, Batch, Durability, LogError, OnFull, PartitionChoice, ReadResult,
    Store, StoreOptions, StoreRecovery, Topic, TopicConfig, Visibility,
};
use crate::meta::{Meta, MetaError, Namespace};
use crate::proto::{Assignor, ErrorCode, OffsetSpec, TopicSettings};
use crate::units::Narrow;
use crate::units::{ByteSize, HumanDuration};
use groups::{GroupError, Groups, Joined};
use kafka_groups::{JoinOutcome, JoinRequest, KafkaGroupError, KafkaGroups};

/// Errors of the broker API, each with the protocol's error code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("unknown member {member:?} of group {group:?}")]
    UnknownMember { group: String, member: String },
    #[error("generation {given} of group {group:?} is stale (current {current}); rejoin")]
    IllegalGeneration {
        group: String,
        given: u32,
        current: u32,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
}

impl BrokerError {
    /// The protocol's stable error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::Log(e) => match e {
                LogError::UnknownTopic(_) => ErrorCode::UnknownTopic,
                LogError::TopicExists(_) => ErrorCode::TopicExists,
                LogError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
                LogError::InvalidTopicName { .. }
                | LogError::InvalidTopicConfig { .. }
                | LogError::BudgetTooSmall { .. } => ErrorCode::InvalidTopic,
                LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
                LogError::InvalidBatch(_) => ErrorCode::InvalidBatch,
                LogError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
                LogError::LogFull { .. } => ErrorCode::LogFull,
                LogError::Poisoned { .. } => ErrorCode::StorageFailed,
                LogError::DataLost { .. } => ErrorCode::DataLost,
                LogError::TooMany { .. } => ErrorCode::LimitReached,
                _ => ErrorCode::Io,
            },
            BrokerError::Meta(_) => ErrorCode::Io,
            BrokerError::UnknownMember { .. } => ErrorCode::UnknownMember,
            BrokerError::IllegalGeneration { .. } => ErrorCode::IllegalGeneration,
            BrokerError::Invalid(_) => ErrorCode::InvalidRequest,
            BrokerError::ShuttingDown => ErrorCode::ShuttingDown,
        }
    }
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// Counters for `/metrics`, per topic where it matters.
#[derive(Debug, Default)]
pub struct TopicCounters {
    pub records_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub records_out: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// A committed offset with the log end beside it (for lag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    pub committed: Option<u64>,
    pub end_offset: u64,
}

/// A member of a group as described.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GroupMember {
    pub member_id: String,
    pub client_id: String,
    /// (topic, partition) pairs assigned to it.
    pub assignment: Vec<(String, u32)>,
}

/// A snapshot of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub generation: u32,
    pub members: Vec<GroupMember>,
    pub offsets: Vec<CommittedOffset>,
}

/// What the broker takes from the configuration.
#[derive(Clone, Debug, Default)]
pub struct BrokerOptions {
    /// Where `meta/` (the metadata store) and `topics/` (the log) live.
    pub data_dir: std::path::PathBuf,
    pub log: StoreOptions,
    /// Settings of topics created without their own.
    pub topic_defaults: TopicConfig,
}

impl BrokerOptions {
    pub fn topics_dir(&self) -> std::path::PathBuf {
        self.data_dir.join("topics")
    }

    pub fn meta_dir(&self) -> std::path::PathBuf {
        self.data_dir.join("meta")
    }
}

pub struct Broker {
    /// The data directory's lock, held for the broker's life.
    _lock: DirLock,
    options: BrokerOptions,
    store: Arc<Store>,
    meta: Meta,
    groups: std::sync::Mutex<Groups>,
    kafka_groups: std::sync::Mutex<KafkaGroups>,
    /// Told when a Kafka client joins a group: the group timeouts run only while groups exist.
    kafka_joined: tokio::sync::Notify,
    counters: std::sync::RwLock<std::collections::HashMap<String, Arc<TopicCounters>>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Broker({})", self.options.data_dir.display())
    }
}

fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + topic.len() + 6);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

impl Broker {
    /// Opens the metadata and the log of `options.data_dir`, recovering both. Blocking.
    pub fn open(options: BrokerOptions) -> Result<(Broker, StoreRecovery)> {
        crate::log::fs::create_dir_durably(&crate::log::fs::StdFs, &options.data_dir).map_err(
            |e| LogError::Io {
                op: "create directory",
                path: options.data_dir.clone(),
                source: e,
            },
        )?;
        let lock = DirLock::acquire(&options.data_dir)?;
        let meta = Meta::open(&options.meta_dir())?;
        let topics = meta.topics()?;
        let (store, recovery) = Store::open(options.topics_dir(), options.log.clone(), &topics)?;
        // Topics the metadata store had lost, found on disk by their files: recorded again.
        for (name, cfg) in &recovery.adopted {
            meta.put_topic(name, cfg)?;
        }
        Ok((
            Broker {
                options,
                store: Arc::new(store),
                meta,
                _lock: lock,
                groups: std::sync::Mutex::new(Groups::default()),
                kafka_groups: std::sync::Mutex::new(KafkaGroups::default()),
                kafka_joined: tokio::sync::Notify::new(),
                counters: Default::default(),
            },
            recovery,
        ))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The metadata store (front ends keep their own state there: MQTT sessions, retained
    /// messages).
    pub fn meta(&self) -> &dyn crate::meta::MetaStore {
        self.meta.store()
    }

    pub fn options(&self) -> &BrokerOptions {
        &self.options
    }

    /// Per-topic counters (created on first use).
    pub fn counters(&self, topic: &str) -> Arc<TopicCounters> {
        if let Some(c) = self
            .counters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
        {
            return Arc::clone(c);
        }
        let mut w = self.counters.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(w.entry(topic.to_string()).or_default())
    }

    /// Appends a batch; returns the partition and offsets once it has `durability`.
    pub async fn produce(
        &self,
        topic: &str,
        choice: PartitionChoice<'_>,
        batch: &dyn Batch,
        durability: Durability,
    ) -> Result<(u32, Appended)> {
        let (p, ticket) = self.produce_start(topic, choice, batch, durability)?;
        Ok((p, ticket.finish().await?))
    }

    /// Puts a batch in the log now (offsets assigned in call order) and returns a ticket to
    /// wait on for its durability: produces of one connection are started in request order.
    pub fn produce_start(
        &self,
        topic: &str,
        choice: PartitionChoice<'_>,
        batch: &dyn Batch,
        durability: Durability,
    ) -> Result<(u32, AppendTicket)> {
        self.produce_start_within(topic, choice, batch, durability, Duration::ZERO)
    }

    /// [`Broker::produce_start`] for a producer that does not wait for its acknowledgement
    /// to go on: a `Durable` batch's fsync may wait up to `sync_within` to be shared with
    /// the batches that arrive meanwhile (it is written, and readable, at once).
    pub fn produce_start_within(
        &self,
        topic: &str,
        choice: PartitionChoice<'_>,
        batch: &dyn Batch,
        durability: Durability,
        sync_within: Duration,
    ) -> Result<(u32, AppendTicket)> {
        let r = self
            .store
            .append_start_within(topic, choice, batch, durability, sync_within)?;
        let c = self.counters(topic);
        c.records_in
            .fetch_add(u64::from(batch.count()), Ordering::Relaxed);
        c.bytes_in
            .fetch_add(batch.records_bytes().len() as u64, Ordering::Relaxed);
        Ok(r)
    }

    /// Reads whole batches from `offset`; when fewer than `min_bytes` are there, waits up to
    /// `max_wait` for more to be written.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        min_bytes: usize,
        max_wait: Duration,
    ) -> Result<ReadResult> {
        let p = Arc::clone(self.store.topic(topic)?.partition(partition)?);
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut end = p.watch_end();
        let result = loop {
            end.borrow_and_update();
            let part = Arc::clone(&p);
            let r = tokio::task::spawn_blocking(move || {
                part.read(offset, max_bytes.max(1), Visibility::Written)
            })
            .await
            .map_err(|e| BrokerError::Invalid(format!("read task: {e}")))??;
            if r.frames.len() >= min_bytes.max(1) || r.frames.len() >= max_bytes {
                break r;
            }
            // Not enough yet: wait for the partition to grow, or the deadline.
            match tokio::time::timeout_at(deadline, end.changed()).await {
                Ok(Ok(())) => continue,
                _ => break r,
            }
        };
        let c = self.counters(topic);
        let records: u64 = result
            .batches()
            .map(|b| {
                b.next_offset()
                    .saturating_sub(b.header.base_offset.max(offset))
            })
            .sum();
        c.records_out.fetch_add(records, Ordering::Relaxed);
        c.bytes_out
            .fetch_add(result.frames.len() as u64, Ordering::Relaxed);
        Ok(result)
    }

    /// `(earliest, latest, answer)` for a partition.
    pub fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<(u64, u64, Option<u64>)> {
        let p = Arc::clone(self.store.topic(topic)?.partition(partition)?);
        let (earliest, latest) = (p.log_start(), p.end_offset());
        let answer = match spec {
            OffsetSpec::Earliest => Some(earliest),
            OffsetSpec::Latest => Some(latest),
            OffsetSpec::Timestamp(ts) => p.offset_for_timestamp(ts)?,
        };
        Ok((earliest, latest, answer))
    }

    /// The first record of a partition whose timestamp is at or after `ts` (`None`: all are
    /// older), or with `ts = None` the first record with the largest timestamp (`None`: the
    /// partition is empty): its offset and timestamp.
    pub fn record_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        ts: Option<i64>,
    ) -> Result<Option<(u64, i64)>> {
        let p = Arc::clone(self.store.topic(topic)?.partition(partition)?);
        let Some(ts) = ts.or_else(|| p.max_timestamp()) else {
            return Ok(None);
        };
        Ok(p.record_for_timestamp(ts)?)
    }

    /// The config a new topic gets from `settings` and the server's `topic_defaults`.
    pub fn topic_config(&self, settings: &TopicSettings) -> TopicConfig {
        let mut cfg = self.options.topic_defaults.clone();
        if let Some(p) = settings.partitions {
            cfg.partitions = p;
        }
        if let Some(ms) = settings.retention_ms {
            cfg.retention = HumanDuration::millis(ms);
        }
        if let Some(b) = settings.retention_bytes {
            cfg.retention_size = ByteSize(b);
        }
        if let Some(b) = settings.segment_bytes {
            cfg.segment_size = ByteSize(b);
            if cfg.max_batch_size.bytes() > b {
                cfg.max_batch_size = ByteSize(b);
            }
        }
        if let Some(r) = settings.reject_when_full {
            cfg.on_full = if r {
                OnFull::Reject
            } else {
                OnFull::DropOldest
            };
        }
        cfg
    }

    /// Creates a topic: the config is made durable in `meta` first, then the files exist.
    pub fn create_topic(&self, name: &str, settings: &TopicSettings) -> Result<Arc<Topic>> {
        self.create_topic_with(name, self.topic_config(settings))
    }

    /// Creates a topic with a whole config (front ends that size a topic to their own
    /// limits, as MQTT does for its largest packet).
    pub fn create_topic_with(&self, name: &str, cfg: TopicConfig) -> Result<Arc<Topic>> {
        crate::log::store::validate_topic_name(name)?;
        cfg.validate(name)?;
        if cfg.partitions as usize > crate::proto::MAX_PARTITIONS {
            return Err(BrokerError::Invalid(format!(
                "partitions = {} exceeds the protocol's {} per topic",
                cfg.partitions,
                crate::proto::MAX_PARTITIONS
            )));
        }
        if self.store.topic(name).is_ok() {
            return Err(LogError::TopicExists(name.to_string()).into());
        }
        self.meta.put_topic(name, &cfg)?;
        match self.store.create_topic(name, cfg) {
            Ok(t) => Ok(t),
            Err(e) => {
                // Keep meta and the log in agreement.
                if !matches!(e, LogError::TopicExists(_)) {
                    let _ = self.meta.delete_topic(name);
                }
                Err(e.into())
            }
        }
    }

    /// Grows a topic to `count` partitions ([`crate::log::Store::add_partitions`]), then
    /// records the new count in `meta` (the topic's descriptor is the reference if a cut
    /// comes between).
    pub fn add_partitions(&self, name: &str, count: u32) -> Result<Arc<Topic>> {
        if count as usize > crate::proto::MAX_PARTITIONS {
            return Err(BrokerError::Invalid(format!(
                "partitions = {count} exceeds the protocol's {} per topic",
                crate::proto::MAX_PARTITIONS
            )));
        }
        let topic = self.store.add_partitions(name, count)?;
        self.meta.put_topic(name, topic.config())?;
        Ok(topic)
    }

    /// Changes a topic's config ([`crate::log::Store::alter_topic`]), then records it in
    /// `meta` (the descriptor is the reference if a cut comes between).
    pub fn alter_topic(&self, name: &str, cfg: TopicConfig) -> Result<Arc<Topic>> {
        let topic = self.store.alter_topic(name, cfg)?;
        self.meta.put_topic(name, topic.config())?;
        Ok(topic)
    }

    /// Deletes a partition's records before `offset` (`None`: all of them, up to its end);
    /// returns the new log start ([`crate::log::Partition::delete_records_before`]).
    pub fn delete_records(&self, topic: &str, partition: u32, offset: Option<u64>) -> Result<u64> {
        let p = Arc::clone(self.store.topic(topic)?.partition(partition)?);
        let offset = offset.unwrap_or_else(|| p.end_offset());
        Ok(p.delete_records_before(offset)?)
    }

    /// Deletes a topic: forgotten in `meta` first, then its files go.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.store.topic(name)?;
        self.meta.delete_topic(name)?;
        self.store.delete_topic(name)?;
        Ok(())
    }

    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        Ok(self.store.topic(name)?)
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.store.topics()
    }

    fn partitions_of(&self) -> impl Fn(&str) -> Option<u32> + '_ {
        |t: &str| {
            self.store
                .topic(t)
                .ok()
                .map(|t| t.partitions().len().sat_u32())
        }
    }

    fn group_error(group: &str, member: &str, given: u32, e: GroupError) -> BrokerError {
        match e {
            GroupError::UnknownMember => BrokerError::UnknownMember {
                group: group.to_string(),
                member: member.to_string(),
            },
            GroupError::IllegalGeneration { current } => BrokerError::IllegalGeneration {
                group: group.to_string(),
                given,
                current,
            },
            GroupError::Invalid(m) => BrokerError::Invalid(m),
        }
    }

    fn lock_groups(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The groups of Kafka clients (sync, heartbeat, leave, commit checks, timeouts).
    pub fn kafka_groups(&self) -> std::sync::MutexGuard<'_, KafkaGroups> {
        self.kafka_groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A Kafka client joins a group; refused while native members use the same group id.
    pub fn kafka_join(
        &self,
        group: &str,
        req: JoinRequest,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<JoinOutcome, KafkaGroupError>>, KafkaGroupError>
    {
        let native = self.lock_groups();
        if native.get(group).is_some_and(|g| !g.members.is_empty()) {
            return Err(KafkaGroupError::OtherProtocol);
        }
        let joined = self.kafka_groups().join(group, req, Instant::now())?;
        self.kafka_joined.notify_one();
        Ok(joined)
    }

    /// Completes when a Kafka client has joined a group since the last time it completed (or
    /// since the start): whoever runs [`KafkaGroups::tick`] needs to run it only while
    /// groups exist, and learns here when one may have appeared.
    pub async fn kafka_group_joined(&self) {
        self.kafka_joined.notified().await;
    }

    /// Joins a group; returns the member id, the generation and the member's partitions.
    pub fn join_group(
        &self,
        group: &str,
        member_id: &str,
        client_id: &str,
        topics: Vec<String>,
        session_timeout: Duration,
        assignor: Assignor,
    ) -> Result<Joined> {
        if group.is_empty() || group.len() > 249 {
            return Err(BrokerError::Invalid(
                "group id must be 1 to 249 bytes".into(),
            ));
        }
        let timeout = session_timeout.clamp(Duration::from_secs(1), Duration::from_secs(300));
        let parts = self.partitions_of();
        let mut native = self.lock_groups();
        if self.kafka_groups().has_members(group) {
            return Err(BrokerError::Invalid(format!(
                "group {group:?} is in use by Kafka clients; a group id serves one protocol at a time"
            )));
        }
        native
            .join(
                group,
                member_id,
                client_id,
                topics,
                timeout,
                assignor,
                Instant::now(),
                &parts,
            )
            .map_err(|e| Self::group_error(group, member_id, 0, e))
    }

    /// A heartbeat; `true` means rejoin.
    pub fn heartbeat(&self, group: &str, member_id: &str, generation: u32) -> Result<bool> {
        self.lock_groups()
            .heartbeat(group, member_id, generation, Instant::now())
            .map_err(|e| Self::group_error(group, member_id, generation, e))
    }

    pub fn leave_group(&self, group: &str, member_id: &str) -> Result<()> {
        let parts = self.partitions_of();
        self.lock_groups()
            .leave(group, member_id, &parts)
            .map_err(|e| Self::group_error(group, member_id, 0, e))
    }

    /// Commits offsets (each the next offset to read) and makes them durable before returning.
    pub fn commit_offsets(
        &self,
        group: &str,
        member: Option<(&str, u32)>,
        offsets: &[(String, u32, u64)],
    ) -> Result<()> {
        if group.is_empty() {
            return Err(BrokerError::Invalid("empty group id".into()));
        }
        self.lock_groups()
            .check_commit(group, member)
            .map_err(|e| {
                let (m, g) = member.unwrap_or(("", 0));
                Self::group_error(group, m, g, e)
            })?;
        for (topic, partition, offset) in offsets {
            self.store.topic(topic)?.partition(*partition)?;
            self.meta.store().put(
                Namespace::GroupOffsets,
                &offset_key(group, topic, *partition),
                &offset.to_le_bytes(),
            )?;
        }
        self.meta.store().flush()?;
        Ok(())
    }

    /// The committed offsets of a group for a topic (every partition, `None` where none).
    pub fn fetch_offsets(&self, group: &str, topic: &str) -> Result<Vec<CommittedOffset>> {
        let t = self.store.topic(topic)?;
        let mut out = Vec::new();
        for p in t.partitions() {
            let v = self
                .meta
                .store()
                .get(Namespace::GroupOffsets, &offset_key(group, topic, p.id()))?;
            let committed = v.and_then(|b| b.as_slice().try_into().ok().map(u64::from_le_bytes));
            out.push(CommittedOffset {
                topic: topic.to_string(),
                partition: p.id(),
                committed,
                end_offset: p.end_offset(),
            });
        }
        Ok(out)
    }

    /// Whether `group` has members now (native or Kafka).
    pub fn group_has_members(&self, group: &str) -> bool {
        self.lock_groups()
            .get(group)
            .is_some_and(|g| !g.members.is_empty())
            || self.kafka_groups().has_members(group)
    }

    /// Deletes a group's committed offsets: every partition's, or with `only` those of
    /// (topic, partition). Durable before returning; returns how many were deleted. A group with
    /// members is the caller's to refuse.
    pub fn delete_group_offsets(
        &self,
        group: &str,
        only: Option<&[(String, u32)]>,
    ) -> Result<usize> {
        let keys: Vec<Vec<u8>> = match only {
            Some(list) => list.iter().map(|(t, p)| offset_key(group, t, *p)).collect(),
            None => {
                let mut prefix = group.as_bytes().to_vec();
                prefix.push(0);
                self.meta
                    .store()
                    .scan(Namespace::GroupOffsets)?
                    .into_iter()
                    .map(|(k, _)| k)
                    .filter(|k| k.starts_with(&prefix))
                    .collect()
            }
        };
        let mut deleted = 0;
        for k in keys {
            if self
                .meta
                .store()
                .get(Namespace::GroupOffsets, &k)?
                .is_some()
            {
                self.meta.store().remove(Namespace::GroupOffsets, &k)?;
                deleted += 1;
            }
        }
        self.meta.store().flush()?;
        Ok(deleted)
    }

    /// Every group with members or committed offsets.
    pub fn list_groups(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.lock_groups().names().cloned().collect();
        names.extend(self.kafka_groups().list().into_iter().map(|(n, _, _)| n));
        for (k, _) in self.meta.store().scan(Namespace::GroupOffsets)? {
            if let Some(end) = k.iter().position(|&b| b == 0) {
                names.push(String::from_utf8_lossy(&k[..end]).into_owned());
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Members, assignments and committed offsets (with lag) of a group.
    pub fn describe_group(&self, group: &str) -> Result<GroupSnapshot> {
        let (generation, members, mut topics) = {
            let g = self.lock_groups();
            match g.get(group) {
                Some(gr) => (
                    gr.generation,
                    gr.members
                        .iter()
                        .map(|(id, m)| GroupMember {
                            member_id: id.clone(),
                            client_id: m.client_id.clone(),
                            assignment: m.assignment.clone(),
                        })
                        .collect::<Vec<_>>(),
                    gr.members
                        .values()
                        .flat_map(|m| m.topics.clone())
                        .collect::<Vec<_>>(),
                ),
                None => (0, Vec::new(), Vec::new()),
            }
        };
        let (generation, members) = match self.kafka_groups().describe(group) {
            Some(k) if members.is_empty() => {
                let members = k
                    .members
                    .iter()
                    .map(|m| {
                        let assignment = kafka_groups::assigned_partitions(&m.assignment);
                        topics.extend(assignment.iter().map(|(t, _)| t.clone()));
                        GroupMember {
                            member_id: m.member_id.clone(),
                            client_id: m.client_id.clone(),
                            assignment,
                        }
                    })
                    .collect();
                (k.generation.max(0) as u32, members)
            }
            _ => (generation, members),
        };
        let mut prefix = group.as_bytes().to_vec();
        prefix.push(0);
        for (k, _) in self.meta.store().scan(Namespace::GroupOffsets)? {
            if let Some(rest) = k.strip_prefix(prefix.as_slice()) {
                if let Some(end) = rest.iter().position(|&b| b == 0) {
                    topics.push(String::from_utf8_lossy(&rest[..end]).into_owned());
                }
            }
        }
        topics.sort();
        topics.dedup();
        let mut offsets = Vec::new();
        for t in topics {
            if let Ok(o) = self.fetch_offsets(group, &t) {
                offsets.extend(o);
            }
        }
        Ok(GroupSnapshot {
            generation,
            members,
            offsets,
        })
    }

    /// Periodic housekeeping: the log's (flush, retention, free space) and expired members.
    pub fn maintain(&self) -> Result<()> {
        let parts = self.partitions_of();
        for (g, m) in self.lock_groups().expire(Instant::now(), &parts) {
            tracing::info!(group = %g, member = %m, "member removed after its session timed out");
        }
        for (g, m) in self.kafka_groups().tick(Instant::now()) {
            tracing::info!(group = %g, member = %m, "Kafka member removed: session or rebalance timed out");
        }
        self.store.maintain()?;
        Ok(())
    }

    /// Writes and fsyncs everything (log and metadata).
    pub fn flush_all(&self) -> Result<()> {
        self.store.flush_all(true)?;
        self.meta.store().flush()?;
        Ok(())
    }
}
