//! The store: topics, their partitions, the global byte budget, the free-space floor, and
//! opening everything after a crash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::clock::{LogClock, SystemTimeSource, TimeSource};
use super::error::{FullReason, LogError, Result};
use super::fs::{Fs, StdFs};
use super::partition::{
    Appended, Compacted, Flushers, Partition, ReadResult, Recovery, Shared, Usage, Visibility,
};
use super::partitioner::partition_for_key;
use super::record::Batch;
use super::segment::SEGMENT_HEADER_LEN;
use super::topic_file;
use super::{Durability, OnFull, StoreOptions, TopicConfig};
use crate::units::Narrow;

type OpenResult = Result<(Partition, Recovery)>;

/// The retention timeline's correction, in the topics directory. `@` cannot occur in a topic
/// name, so no topic directory can collide with it.
pub const CLOCK_FILE: &str = "@clock";

/// How a producer picks the partition of a batch.
#[derive(Clone, Copy, Debug)]
pub enum PartitionChoice<'a> {
    /// This partition.
    Id(u32),
    /// Kafka's default partitioner on this key.
    Key(&'a [u8]),
    /// Round robin.
    Any,
}

/// A topic and its partitions.
#[derive(Debug)]
pub struct Topic {
    name: String,
    config: TopicConfig,
    partitions: Vec<Arc<Partition>>,
    round_robin: AtomicU32,
}

impl Topic {
    /// A topic of these partitions, entered (or replaced) in `topics` under `name`.
    fn install(
        topics: &mut BTreeMap<String, Arc<Topic>>,
        name: &str,
        config: TopicConfig,
        partitions: Vec<Arc<Partition>>,
    ) -> Arc<Topic> {
        let topic = Arc::new(Topic {
            name: name.to_string(),
            config,
            partitions,
            round_robin: AtomicU32::new(0),
        });
        topics.insert(name.to_string(), Arc::clone(&topic));
        topic
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn config(&self) -> &TopicConfig {
        &self.config
    }
    pub fn partitions(&self) -> &[Arc<Partition>] {
        &self.partitions
    }
    pub fn partition(&self, id: u32) -> Result<&Arc<Partition>> {
        self.partitions
            .get(id as usize)
            .ok_or_else(|| LogError::UnknownPartition {
                topic: self.name.clone(),
                partition: id,
                count: self.partitions.len().sat_u32(),
            })
    }
    pub fn choose(&self, choice: PartitionChoice<'_>) -> Result<&Arc<Partition>> {
        let n = self.partitions.len().sat_u32();
        let id = match choice {
            PartitionChoice::Id(id) => id,
            PartitionChoice::Key(k) => partition_for_key(k, n),
            PartitionChoice::Any => self.round_robin.fetch_add(1, Ordering::Relaxed) % n,
        };
        self.partition(id)
    }
}

/// What opening the store found and repaired.
#[derive(Clone, Debug, Default)]
pub struct StoreRecovery {
    /// Topics found on disk that the caller's list (the metadata store) did not name, with the
    /// settings they are served with: the caller records them again.
    pub adopted: Vec<(String, TopicConfig)>,
    pub partitions: usize,
    pub truncated_bytes: u64,
    pub indexes_rebuilt: u32,
    /// Damaged ranges with intact frames after them (kept and skipped; see `Usage::damage`).
    pub damage: Vec<super::partition::DamageReport>,
    pub took: Duration,
}

/// The last free-space measurement, read without a lock on the append path.
struct FreeSpace {
    /// Milliseconds after `epoch` when it was taken; `u64::MAX`: never.
    measured_at_ms: AtomicU64,
    available: AtomicU64,
    /// `Usage::bytes` at that moment.
    usage_at: AtomicU64,
    epoch: Instant,
    /// Serializes the `statvfs` refreshes.
    refresh: Mutex<()>,
}

/// All topics of one data directory.
pub struct Store {
    dir: PathBuf,
    fs: Arc<dyn Fs>,
    opts: StoreOptions,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    usage: Arc<Usage>,
    /// The threads that write every partition's files.
    flushers: Arc<Flushers>,
    clock: LogClock,
    reclaim: Mutex<()>,
    free: FreeSpace,
}

impl Drop for Store {
    fn drop(&mut self) {
        // The threads stay while partitions held elsewhere are still open.
        self.flushers.close();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.dir.display())
    }
}

/// Topic names and their settings.
type Topics = Vec<(String, TopicConfig)>;

/// The prefix of a deleted topic's directory while its files are removed; leftovers of a crash
/// are removed at open.
const DELETING_PREFIX: &str = "@deleting.";

/// The topics to open: those `known` names (the metadata store's list) and those the directory
/// holds, by their descriptors ([`topic_file`]). Writes the descriptor of a known topic that has
/// none (a directory from before descriptors, or a create cut short) or a damaged one. A topic
/// directory that `known` does not name is adopted with its descriptor's settings, or without
/// one with default settings (but no time retention) and as many partitions as it has
/// directories, and logged: nothing acknowledged is left unreachable. Returns the list and the adopted topics.
pub fn discover_topics(
    fs: &dyn Fs,
    dir: &Path,
    known: &[(String, TopicConfig)],
) -> Result<(Topics, Topics)> {
    let mut all: BTreeMap<String, TopicConfig> = known.iter().cloned().collect();
    let mut adopted = Vec::new();
    let names = fs.list_dir(dir).map_err(|e| LogError::io("list", dir, e))?;
    for name in names {
        let tdir = dir.join(&name);
        if name.starts_with(DELETING_PREFIX) {
            fs.remove_dir_all(&tdir)
                .map_err(|e| LogError::io("remove", &tdir, e))?;
            tracing::info!(dir = %tdir.display(), "removed the rest of a deleted topic");
            continue;
        }
        if validate_topic_name(&name).is_err() || !tdir.is_dir() {
            continue;
        }
        let on_disk = match topic_file::read(fs, &tdir)? {
            Some(Ok(cfg)) => Some(cfg),
            Some(Err(topic_file::Unusable::NewerVersion(v))) => {
                return Err(LogError::UnsupportedVersion {
                    path: tdir.join(topic_file::TOPIC_FILE),
                    found: v,
                    supported: topic_file::TOPIC_FILE_VERSION,
                });
            }
            Some(Err(topic_file::Unusable::Damaged(why))) => {
                tracing::warn!(topic = %name, "topic descriptor damaged ({why}); rewriting it");
                None
            }
            None => None,
        };
        match (all.get(&name), on_disk) {
            (Some(known), Some(disk)) => {
                if *known != disk {
                    tracing::warn!(topic = %name, "the metadata store's settings differ from the topic descriptor's; using the descriptor's");
                    all.insert(name, disk);
                }
            }
            (Some(known), None) => topic_file::write(fs, &tdir, known)?,
            (None, Some(disk)) => {
                tracing::warn!(topic = %name, partitions = disk.partitions, "topic found on disk without a metadata entry; serving it again");
                adopted.push((name.clone(), disk.clone()));
                all.insert(name, disk);
            }
            (None, None) => {
                let partitions = fs
                    .list_dir(&tdir)
                    .map_err(|e| LogError::io("list", &tdir, e))?
                    .iter()
                    .filter_map(|n| n.parse::<u32>().ok())
                    .max()
                    .map_or(1, |m| m + 1);
                // Its settings are lost: default ones, but no time retention, which could
                // delete what it holds before an operator has looked.
                let cfg = TopicConfig {
                    partitions,
                    retention: crate::units::HumanDuration(std::time::Duration::ZERO),
                    ..TopicConfig::default()
                };
                tracing::warn!(topic = %name, partitions, "topic directory without descriptor or metadata entry; serving it again with default settings and no time retention");
                topic_file::write(fs, &tdir, &cfg)?;
                adopted.push((name.clone(), cfg.clone()));
                all.insert(name, cfg);
            }
        }
    }
    // Known topics with no directory yet (a create cut short before its files): created on
    // open with their descriptor.
    for (name, cfg) in &all {
        let tdir = dir.join(name);
        if !fs.exists(&tdir) {
            super::fs::create_dir_durably(fs, &tdir)
                .map_err(|e| LogError::io("create directory", &tdir, e))?;
            topic_file::write(fs, &tdir, cfg)?;
        }
    }
    Ok((all.into_iter().collect(), adopted))
}

/// [`check_budget`] with topic `name`'s config replaced by `config`.
fn check_budget_with(
    opts: &StoreOptions,
    topics: &BTreeMap<String, Arc<Topic>>,
    name: &str,
    config: &TopicConfig,
) -> Result<()> {
    check_budget(
        opts,
        topics.iter().map(|(n, t)| {
            if n == name {
                (n.as_str(), config)
            } else {
                (n.as_str(), &t.config)
            }
        }),
    )
}

/// Checks a topic name: 1 to 249 of `A-Z a-z 0-9 . _ -`, not `.` or `..` (as Kafka).
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(LogError::InvalidTopicName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

impl Store {
    /// Opens the store in `dir` on the real filesystem with the system clock.
    pub fn open(
        dir: impl Into<PathBuf>,
        opts: StoreOptions,
        topics: &[(String, TopicConfig)],
    ) -> Result<(Store, StoreRecovery)> {
        Self::open_with(
            dir,
            Arc::new(StdFs),
            Box::<SystemTimeSource>::default(),
            opts,
            topics,
        )
    }

    /// Opens the store with an explicit filesystem and time source (tests, benchmarks).
    /// Every partition of `topics` is opened (in parallel) and recovered, and so is every topic
    /// the directory holds that `topics` does not name (see [`discover_topics`]).
    pub fn open_with(
        dir: impl Into<PathBuf>,
        fs: Arc<dyn Fs>,
        time: Box<dyn TimeSource>,
        opts: StoreOptions,
        topics: &[(String, TopicConfig)],
    ) -> Result<(Store, StoreRecovery)> {
        let started = Instant::now();
        let dir = dir.into();
        super::fs::create_dir_durably(fs.as_ref(), &dir)
            .map_err(|e| LogError::io("create directory", &dir, e))?;
        let check = |topics: &[(String, TopicConfig)]| -> Result<()> {
            for (name, cfg) in topics {
                validate_topic_name(name)?;
                cfg.validate(name)?;
            }
            check_budget(&opts, topics.iter().map(|(n, c)| (n.as_str(), c)))
        };
        // Before anything is written for them, and again with the topics found on disk.
        check(topics)?;
        let (topics, adopted) = discover_topics(fs.as_ref(), &dir, topics)?;
        let topics = topics.as_slice();
        if !adopted.is_empty() {
            check(topics)?;
        }

        let usage = Arc::new(Usage::default());
        let (kept, most) = Flushers::default_threads();
        let flushers = Flushers::start(kept, most);
        let shared = Shared {
            fs: Arc::clone(&fs),
            write_buffer: opts.write_buffer.bytes().sat_usize(),
            usage: Arc::clone(&usage),
            flushers: Arc::clone(&flushers),
        };
        let jobs: Vec<(usize, u32)> = topics
            .iter()
            .enumerate()
            .flat_map(|(t, (_, c))| (0..c.partitions).map(move |p| (t, p)))
            .collect();
        let results: Vec<Mutex<Option<OpenResult>>> =
            jobs.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicU32::new(0);
        // The calling thread opens partitions too; one more thread per core while there are
        // more partitions (none for a store with one partition or none).
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(jobs.len());
        let open_next = || {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&(t, p)) = jobs.get(i) else { break };
                let (name, cfg) = &topics[t];
                let r = Partition::open(
                    name,
                    p,
                    dir.join(name).join(p.to_string()),
                    cfg.clone(),
                    &shared,
                );
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            }
        };
        std::thread::scope(|s| {
            for _ in 1..workers {
                s.spawn(open_next);
            }
            open_next();
        });
        let mut recovery = StoreRecovery {
            adopted,
            ..StoreRecovery::default()
        };
        let mut opened: Vec<Vec<Arc<Partition>>> = topics.iter().map(|_| Vec::new()).collect();
        for (slot, &(t, _)) in results.into_iter().zip(&jobs) {
            let r = slot
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| {
                    Err(LogError::BadFile {
                        path: dir.clone(),
                        what: "a partition was not opened".into(),
                    })
                });
            let (p, rec) = r?;
            recovery.partitions += 1;
            recovery.truncated_bytes += rec.truncated_bytes;
            recovery.indexes_rebuilt += rec.indexes_rebuilt;
            recovery.damage.extend(rec.damage);
            opened[t].push(Arc::new(p));
        }
        let mut map = BTreeMap::new();
        for ((name, cfg), partitions) in topics.iter().zip(opened) {
            map.insert(
                name.clone(),
                Arc::new(Topic {
                    name: name.clone(),
                    config: cfg.clone(),
                    partitions,
                    round_robin: AtomicU32::new(0),
                }),
            );
        }
        let newest = map
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter_map(|p| p.newest_append_time())
            .max();
        let clock = LogClock::start(time, fs.as_ref(), Some(&dir.join(CLOCK_FILE)), newest)?;
        recovery.took = started.elapsed();
        // Already under the floor: appends will delete drop_oldest data or be refused at once.
        if let Some(floor) = opts.min_free.limit() {
            if let Ok(available) = fs.available_space(&dir) {
                if available < floor {
                    tracing::warn!(
                        "{} has {available} bytes free, below log.min_free ({floor}): appends will delete the oldest segments of drop_oldest topics, and be refused once none are left",
                        dir.display()
                    );
                }
            }
        }
        Ok((
            Store {
                dir,
                fs,
                opts,
                topics: RwLock::new(map),
                usage,
                flushers,
                clock,
                reclaim: Mutex::new(()),
                free: FreeSpace {
                    measured_at_ms: AtomicU64::new(u64::MAX),
                    available: AtomicU64::new(0),
                    usage_at: AtomicU64::new(0),
                    epoch: Instant::now(),
                    refresh: Mutex::new(()),
                },
            },
            recovery,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// Creates a topic's directory, its descriptor ([`topic_file`]) and its partitions, all
    /// durably before it returns.
    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<Arc<Topic>> {
        validate_topic_name(name)?;
        config.validate(name)?;
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        if topics.contains_key(name) {
            return Err(LogError::TopicExists(name.to_string()));
        }
        let max = (self.opts.max_topics, self.opts.max_partitions);
        if max.0 > 0 && topics.len() >= max.0 {
            return Err(LogError::TooMany {
                what: "topics",
                key: "log.max_topics",
                limit: max.0,
            });
        }
        let partitions: usize = topics.values().map(|t| t.partitions.len()).sum();
        if max.1 > 0 && partitions + config.partitions as usize > max.1 {
            return Err(LogError::TooMany {
                what: "partitions",
                key: "log.max_partitions",
                limit: max.1,
            });
        }
        check_budget(
            &self.opts,
            topics
                .iter()
                .map(|(n, t)| (n.as_str(), &t.config))
                .chain(std::iter::once((name, &config))),
        )?;
        let tdir = self.dir.join(name);
        super::fs::create_dir_durably(self.fs.as_ref(), &tdir)
            .map_err(|e| LogError::io("create directory", &tdir, e))?;
        topic_file::write(self.fs.as_ref(), &tdir, &config)?;
        let partitions = self.open_partitions(name, &tdir, &config, 0..config.partitions)?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io("fsync directory", &self.dir, e))?;
        Ok(Topic::install(&mut topics, name, config, partitions))
    }

    /// Opens (creating where new) partitions `ids` of topic `name` in `tdir`.
    fn open_partitions(
        &self,
        name: &str,
        tdir: &Path,
        config: &TopicConfig,
        ids: std::ops::Range<u32>,
    ) -> Result<Vec<Arc<Partition>>> {
        ids.map(|p| {
            let (part, _) = Partition::open(
                name,
                p,
                tdir.join(p.to_string()),
                config.clone(),
                &self.shared(),
            )?;
            Ok(Arc::new(part))
        })
        .collect()
    }

    /// Grows a topic to `count` partitions: the new partitions' directories first, then the
    /// descriptor that names them (the commit point: a cut before it leaves empty directories
    /// the topic does not use, and a later growth opens them again). Keys are placed by
    /// `murmur2(key) % partitions`, so keyed records written afterwards may go to another
    /// partition than the same key's earlier ones (as in Kafka).
    pub fn add_partitions(&self, name: &str, count: u32) -> Result<Arc<Topic>> {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let old = topics
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))?;
        let have = old.partitions.len().sat_u32();
        if count <= have {
            return Err(LogError::InvalidTopicConfig {
                topic: name.to_string(),
                reason: format!("it has {have} partitions and can only grow (asked for {count})"),
            });
        }
        let mut config = old.config.clone();
        config.partitions = count;
        config.validate(name)?;
        let max = self.opts.max_partitions;
        let total: usize = topics.values().map(|t| t.partitions.len()).sum();
        if max > 0 && total + (count - have) as usize > max {
            return Err(LogError::TooMany {
                what: "partitions",
                key: "log.max_partitions",
                limit: max,
            });
        }
        check_budget_with(&self.opts, &topics, name, &config)?;
        let tdir = self.dir.join(name);
        let mut partitions = old.partitions.clone();
        partitions.extend(self.open_partitions(name, &tdir, &config, have..count)?);
        self.fs
            .sync_dir(&tdir)
            .map_err(|e| LogError::io("fsync directory", &tdir, e))?;
        topic_file::write(self.fs.as_ref(), &tdir, &config)?;
        Ok(Topic::install(&mut topics, name, config, partitions))
    }

    /// Changes a topic's config (not its partition count: [`Store::add_partitions`]): the
    /// descriptor first (the commit point), then every partition applies the new limits from
    /// its next append, and time retention from the next maintenance.
    pub fn alter_topic(&self, name: &str, config: TopicConfig) -> Result<Arc<Topic>> {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let old = topics
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))?;
        if config.partitions != old.config.partitions {
            return Err(LogError::InvalidTopicConfig {
                topic: name.to_string(),
                reason: "the partition count changes only by adding partitions".into(),
            });
        }
        config.validate(name)?;
        check_budget_with(&self.opts, &topics, name, &config)?;
        topic_file::write(self.fs.as_ref(), &self.dir.join(name), &config)?;
        for p in &old.partitions {
            p.set_limits(&config);
        }
        let partitions = old.partitions.clone();
        Ok(Topic::install(&mut topics, name, config, partitions))
    }

    /// Removes a topic and its files.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        let topic = self
            .topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))?;
        for p in &topic.partitions {
            p.release_usage();
        }
        // One atomic step makes the topic gone (a rename to a name no topic can have), so a
        // power cut during the removal of its files cannot bring back part of it.
        let tdir = self.dir.join(name);
        // Unique, in case the rest of an earlier deletion of the same name is still there.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let doomed = self.dir.join(format!("{DELETING_PREFIX}{name}.{stamp}"));
        self.fs
            .rename(&tdir, &doomed)
            .map_err(|e| LogError::io("rename", &tdir, e))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io("fsync directory", &self.dir, e))?;
        self.fs
            .remove_dir_all(&doomed)
            .map_err(|e| LogError::io("remove", &doomed, e))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io("fsync directory", &self.dir, e))
    }

    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))
    }

    /// Whether any topic is compacted (`cleanup = compact`): whether [`Store::compact`] has
    /// anything to look at.
    pub fn compacts_any(&self) -> bool {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|t| t.config.cleanup.compacts())
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Appends a batch to a topic, blocking until it has the requested durability. Returns the
    /// partition chosen and the offsets assigned.
    pub fn append(
        &self,
        topic: &str,
        choice: PartitionChoice<'_>,
        batch: &dyn Batch,
        durability: Durability,
    ) -> Result<(u32, Appended)> {
        let (partition, now) = self
            .prepare_append(topic, choice, batch)
            .map_err(|e| self.usage.append_failed(e))?;
        let appended = partition
            .append(batch, durability, now)
            .map_err(|e| self.usage.append_failed(e))?;
        Ok((partition.id(), appended))
    }

    /// [`Store::append`] for async callers: waits for durability without blocking a thread.
    pub async fn append_async(
        &self,
        topic: &str,
        choice: PartitionChoice<'_>,
        batch: &dyn Batch,
        durability: Durability,
    ) -> Result<(u32, Appended)> {
        let (p, ticket) = self.append_start(topic, choice, batch, durability)?;
        Ok((p, ticket.finish().await?))
    }

    /// Puts the batch in the log now (offsets assigned, order fixed) and returns the partition
    /// and a ticket to wait on for durability (see [`super::partition::AppendTicket`]).
    pub fn append_start(
        &self,
        topic: &str,
        choice: PartitionChoice<'_>,
        batch: &dyn Batch,
        durability: Durability,
    ) -> Result<(u32, super::partition::AppendTicket)> {
        self.append_start_within(topic, choice, batch, durability, Duration::ZERO)
    }

    /// [`Store::append_start`] for an append whose fsync may wait up to `sync_within` to be
    /// shared (see [`super::partition::Partition::append_start_within`]).
    pub fn append_start_within(
        &self,
        topic: &str,
        choice: PartitionChoice<'_>,
        batch: &dyn Batch,
        durability: Durability,
        sync_within: Duration,
    ) -> Result<(u32, super::partition::AppendTicket)> {
        let (partition, now) = self
            .prepare_append(topic, choice, batch)
            .map_err(|e| self.usage.append_failed(e))?;
        let ticket = partition
            .append_start_within(batch, durability, sync_within, now)
            .map_err(|e| self.usage.append_failed(e))?;
        Ok((partition.id(), ticket))
    }

    /// What a partition opened now shares with the others.
    fn shared(&self) -> Shared {
        Shared {
            fs: Arc::clone(&self.fs),
            write_buffer: self.opts.write_buffer.bytes().sat_usize(),
            usage: Arc::clone(&self.usage),
            flushers: Arc::clone(&self.flushers),
        }
    }

    /// Picks the partition, makes room under the store's limits, and reads the timeline.
    fn prepare_append(
        &self,
        topic: &str,
        choice: PartitionChoice<'_>,
        batch: &dyn Batch,
    ) -> Result<(Arc<Partition>, i64)> {
        let topic = self.topic(topic)?;
        let partition = Arc::clone(topic.choose(choice)?);
        self.ensure_room(&topic, partition.id(), batch.frame_len_bound() as u64)?;
        Ok((partition, self.clock.now(self.fs.as_ref())))
    }

    /// Reads batches from one partition.
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_bytes: usize,
        visibility: Visibility,
    ) -> Result<ReadResult> {
        self.topic(topic)?
            .partition(partition)?
            .read(from, max_bytes, visibility)
    }

    /// Makes room for `need` more bytes under `max_size` and `min_free`, deleting the oldest
    /// sealed segments of `drop_oldest` topics (oldest first across topics) when necessary.
    fn ensure_room(&self, topic: &Topic, partition: u32, need: u64) -> Result<()> {
        let full = |reason| LogError::LogFull {
            topic: topic.name.clone(),
            partition,
            reason,
        };
        if let Some(max) = self.opts.max_size.limit() {
            while self.usage.bytes.load(Ordering::Relaxed) + need > max {
                if !self.reclaim_one("max_size") {
                    if self.drop_oldest_sealing() {
                        // Segments are still being sealed (their data is in memory, not yet on
                        // the disk): a later append reclaims them.
                        break;
                    }
                    return Err(full(FullReason::Budget { limit: max }));
                }
            }
        }
        if let Some(floor) = self.opts.min_free.limit() {
            let mut fresh = false;
            loop {
                let available = self.available_space(fresh)?;
                if available >= floor + need {
                    break;
                }
                if !fresh {
                    fresh = true;
                    continue;
                }
                if !self.reclaim_one("min_free") {
                    return Err(full(FullReason::FreeSpaceFloor { available, floor }));
                }
            }
        }
        Ok(())
    }

    /// Available bytes on the filesystem, measured at most every 250 ms and estimated in between
    /// from what was appended and deleted since. Deleted segments whose files are still to be
    /// removed (by their flushers, moments later) count as free.
    fn available_space(&self, fresh: bool) -> Result<u64> {
        let f = &self.free;
        let now_ms = f.epoch.elapsed().as_millis().sat_u64();
        let at = f.measured_at_ms.load(Ordering::Acquire);
        if fresh || at == u64::MAX || now_ms.saturating_sub(at) > 250 {
            let _one = f.refresh.lock().unwrap_or_else(|e| e.into_inner());
            let used = self.usage.bytes.load(Ordering::Relaxed);
            let available = self
                .fs
                .available_space(&self.dir)
                .map_err(|e| LogError::io("statvfs", &self.dir, e))?
                // Read after the measure: a removal in between is missed, never counted twice.
                + self.usage.unlinking.load(Ordering::Relaxed);
            f.available.store(available, Ordering::Relaxed);
            f.usage_at.store(used, Ordering::Relaxed);
            f.measured_at_ms.store(now_ms, Ordering::Release);
        }
        let used = self.usage.bytes.load(Ordering::Relaxed);
        let usage_at = f.usage_at.load(Ordering::Relaxed);
        Ok((f.available.load(Ordering::Relaxed) + usage_at).saturating_sub(used))
    }

    /// Whether a partition of a `drop_oldest` topic has full segments its flusher has yet to
    /// seal (they can be deleted once it has).
    fn drop_oldest_sealing(&self) -> bool {
        self.topics()
            .iter()
            .filter(|t| t.config.on_full == OnFull::DropOldest)
            .flat_map(|t| t.partitions.iter())
            .any(|p| p.sealing())
    }

    /// Deletes the oldest sealed segment among `drop_oldest` topics. Returns whether one was.
    fn reclaim_one(&self, why: &str) -> bool {
        let _guard = self.reclaim.lock().unwrap_or_else(|e| e.into_inner());
        let topics = self.topics();
        let oldest = topics
            .iter()
            .filter(|t| t.config.on_full == OnFull::DropOldest)
            .flat_map(|t| t.partitions.iter())
            .filter_map(|p| p.oldest_sealed_time().map(|t| (t, p)))
            .min_by_key(|(t, _)| *t);
        match oldest {
            Some((_, p)) => p.delete_oldest(why),
            None => false,
        }
    }

    /// Periodic housekeeping: writes and fsyncs buffered data, deletes segments older than
    /// their topic's `retention` on the retention timeline, and measures the free space again.
    /// Call it every `flush_interval`.
    pub fn maintain(&self) -> Result<()> {
        let now = self.clock.now(self.fs.as_ref());
        let mut first_err = None;
        if self.opts.min_free.limit().is_some() {
            if let Err(e) = self.available_space(true) {
                first_err.get_or_insert(e);
            }
        }
        for topic in self.topics() {
            let cutoff = topic
                .config
                .retention
                .limit()
                .filter(|_| topic.config.cleanup.deletes())
                .map(|r| now.saturating_sub(r.as_millis().sat_i64()));
            for p in &topic.partitions {
                if let Err(e) = p.flush(true) {
                    first_err.get_or_insert(e);
                }
                if let Some(cutoff) = cutoff {
                    if let Err(e) = p.expire(cutoff) {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Compacts the sealed segments of every topic whose `cleanup` compacts (see
    /// [`Partition::compact`]). Blocks on disk I/O for as long as the rewrites take: call it
    /// every `compaction_interval` from a thread of its own, never from the flusher's.
    pub fn compact(&self) -> Result<Compacted> {
        let now = self.clock.now(self.fs.as_ref());
        let mut total = Compacted::default();
        let mut first_err = None;
        for topic in self.topics() {
            if !topic.config.cleanup.compacts() {
                continue;
            }
            let horizon = now.saturating_sub(topic.config.delete_retention.as_millis() as i64);
            for p in &topic.partitions {
                match p.compact(horizon) {
                    Ok(c) => total += c,
                    Err(e) => {
                        tracing::warn!(topic = %topic.name, partition = p.id(), "compaction failed: {e}");
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        self.usage
            .records_compacted
            .fetch_add(total.records_removed, Ordering::Relaxed);
        first_err.map_or(Ok(total), Err)
    }

    /// Writes (and with `sync`, fsyncs) everything buffered in every partition.
    pub fn flush_all(&self, sync: bool) -> Result<()> {
        for topic in self.topics() {
            for p in &topic.partitions {
                p.flush(sync)?;
            }
        }
        Ok(())
    }

    /// Bytes of all segment and index files.
    pub fn used_bytes(&self) -> u64 {
        self.usage.bytes.load(Ordering::Relaxed)
    }

    /// Records removed by compaction, since open.
    pub fn records_compacted(&self) -> u64 {
        self.usage.records_compacted.load(Ordering::Relaxed)
    }

    /// Records deleted by retention or to make room, since open.
    pub fn records_dropped(&self) -> u64 {
        self.usage.records_dropped.load(Ordering::Relaxed)
    }

    /// Store-wide counters (bytes, drops, writes, fsyncs).
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// The retention timeline (see [`super::clock`]).
    pub fn clock(&self) -> &LogClock {
        &self.clock
    }

    /// Now, on the retention timeline.
    pub fn now(&self) -> i64 {
        self.clock.now(self.fs.as_ref())
    }
}

/// Refuses budgets below two segments per partition.
fn check_budget<'a>(
    opts: &StoreOptions,
    topics: impl Iterator<Item = (&'a str, &'a TopicConfig)>,
) -> Result<()> {
    let mut needed = 0u64;
    for (_, cfg) in topics {
        needed += u64::from(cfg.partitions) * 2 * (cfg.segment_size.bytes() + SEGMENT_HEADER_LEN);
    }
    if let Some(max) = opts.max_size.limit() {
        if max < needed {
            return Err(LogError::BudgetTooSmall {
                what: "log.max_size".into(),
                budget: max,
                needed,
            });
        }
    }
    Ok(())
}
