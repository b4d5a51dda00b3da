//! `brook bench storage`: append throughput, ack latency, write amplification, read-back
//! throughput and reopen time of the log, on a real directory.
//!
//! Write amplification is bytes written divided by key + value bytes appended, measured two
//! ways: from the process (`/proc/self/io` `write_bytes`: pages this process dirtied, counted
//! again each time an fsync cleaned them in between) and, where readable, from the block device
//! (`/sys/dev/block/MAJ:MIN/stat` sectors written, which adds the filesystem journal and
//! anything else writing to that device meanwhile). The device figure is taken after a final
//! fsync of everything, so data that was only "written" counts too.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use brook::log::clock::{SystemTimeSource, wall_clock_ms};
use brook::log::fs::{Fs, SlowSyncFs, StdFs};
use brook::log::{
    BatchBuilder, Durability, LogError, OnFull, PartitionChoice, Store, StoreOptions, TopicConfig,
    Visibility,
};
use brook::units::Narrow;
use brook::units::{ByteSize, HumanDuration};

/// Parameters of a storage benchmark run (`brook bench storage`).
#[derive(Clone, Debug, clap::Args)]
pub struct StorageBench {
    /// Directory for the store (must not exist); default ./brook-bench-<pid>.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Records to append.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Value bytes per record (no key).
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Concurrent producers (producer i appends to partition i % partitions); default: one per
    /// partition.
    #[arg(long)]
    pub producers: Option<u32>,
    /// What each append waits for: none, written or durable.
    #[arg(long, default_value = "written")]
    pub durability: Durability,
    /// Records per append call.
    #[arg(long, default_value_t = 100)]
    pub batch: u32,
    /// Extra delay in every fsync, imitating a slow SD card (e.g. "10ms").
    #[arg(long)]
    pub fsync_delay: Option<HumanDuration>,
    /// Keep the data directory afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Also time reopening the store as a kill -9 would leave it.
    #[arg(long)]
    pub reopen: bool,
    /// With --reopen: drop the page cache first (needs root) to time a cold start.
    #[arg(long, requires = "reopen")]
    pub cold: bool,
    /// Give records one of N keys, make the topic compacted and time a compaction pass.
    #[arg(long, value_name = "N")]
    pub keys: Option<u64>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What a storage benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct StorageReport {
    pub records: u64,
    pub record_size: usize,
    pub partitions: u32,
    pub producers: u32,
    pub batch: u32,
    pub durability: Durability,
    pub fsync_delay_ms: Option<u64>,
    pub append_secs: f64,
    pub append_records_per_sec: f64,
    pub append_mb_per_sec: f64,
    pub ack_p50_us: u64,
    pub ack_p99_us: u64,
    pub ack_max_us: u64,
    pub write_amplification: Option<f64>,
    pub device_write_amplification: Option<f64>,
    pub read_records_per_sec: f64,
    pub read_mb_per_sec: f64,
    pub reopen_ms: Option<f64>,
    /// Whether the page cache was dropped before the reopen.
    pub reopen_cold: bool,
    pub disk_bytes: u64,
    pub segments: usize,
    /// Write calls and fsyncs of segment data during the append phase.
    pub writes: u64,
    pub fsyncs: u64,
    pub records_per_fsync: f64,
    /// Durable runs only: fsyncs per second the device sustains with one thread per partition
    /// each appending one average write and fsyncing in a loop, measured for one second just
    /// before the run. Records/s cannot exceed this times the records a group can carry.
    pub fsync_ceiling_per_sec: Option<f64>,
    /// With `--keys`: what one compaction pass over the sealed segments did.
    pub compaction: Option<CompactionReport>,
}

/// One compaction pass of the storage bench.
#[derive(Clone, Debug, Serialize)]
pub struct CompactionReport {
    pub keys: u64,
    pub secs: f64,
    pub segments_rewritten: u64,
    pub records_removed: u64,
    /// Bytes of the rewritten segments before, and what the pass wrote for them.
    pub bytes_before: u64,
    pub bytes_written: u64,
    /// Bytes of sealed segments read per second (the pass reads them twice: keys, then
    /// survivors).
    pub mb_per_sec: f64,
    pub disk_bytes_after: u64,
}

impl super::Report for StorageReport {
    fn render(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
        let mut s = format!(
            "storage bench: {} records x {} B, {} partitions, {} producers, batch {}, durability {:?}{}\n",
            self.records,
            self.record_size,
            self.partitions,
            self.producers,
            self.batch,
            self.durability,
            self.fsync_delay_ms
                .map_or(String::new(), |d| format!(", fsync delay {d} ms"))
        );
        s += &format!(
            "  append: {:.0} records/s, {:.1} MB/s ({:.2} s)\n",
            self.append_records_per_sec, self.append_mb_per_sec, self.append_secs
        );
        s += &format!(
            "  ack latency: p50 {} us, p99 {} us, max {} us\n",
            self.ack_p50_us, self.ack_p99_us, self.ack_max_us
        );
        s += &format!(
            "  write amplification: process {}, device {}\n",
            opt(self.write_amplification),
            opt(self.device_write_amplification)
        );
        s += &format!(
            "  read back: {:.0} records/s, {:.1} MB/s\n",
            self.read_records_per_sec, self.read_mb_per_sec
        );
        if let Some(ms) = self.reopen_ms {
            let cache = if self.reopen_cold { "cold" } else { "warm" };
            s += &format!("  reopen after crash: {ms:.1} ms ({cache} page cache)\n");
        }
        s += &format!(
            "  on disk: {} bytes in {} segments; {} writes, {} fsyncs ({:.1} records per fsync)\n",
            self.disk_bytes, self.segments, self.writes, self.fsyncs, self.records_per_fsync
        );
        if let Some(c) = self.fsync_ceiling_per_sec {
            s += &format!(
                "  device fsync ceiling just before: {c:.0} fsyncs/s with {} threads\n",
                self.partitions
            );
        }
        if let Some(c) = &self.compaction {
            s += &format!(
                "  compaction ({} keys): {:.2} s, {:.1} MB/s of segments; {} segments rewritten, {} records removed; {} bytes -> {} written; {} bytes on disk after\n",
                c.keys,
                c.secs,
                c.mb_per_sec,
                c.segments_rewritten,
                c.records_removed,
                c.bytes_before,
                c.bytes_written,
                c.disk_bytes_after
            );
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{0}")]
    Invalid(String),
    #[error("benchmark directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read back {got} records, expected {want}")]
    Lost { got: u64, want: u64 },
}

const TOPIC: &str = "bench";

impl StorageBench {
    /// Producer threads: one per partition unless told.
    fn producer_count(&self) -> u32 {
        self.producers.unwrap_or(self.partitions)
    }

    /// The extra delay in every fsync, if any.
    fn fsync_delay(&self) -> Option<Duration> {
        self.fsync_delay.map(|d| d.0).filter(|d| !d.is_zero())
    }

    pub fn run(&self) -> Result<StorageReport, BenchError> {
        if self.records == 0
            || self.batch == 0
            || self.partitions == 0
            || self.producer_count() == 0
        {
            return Err(BenchError::Invalid(
                "--records, --batch, --partitions and --producers must be positive".into(),
            ));
        }
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("./brook-bench-{}", std::process::id())));
        if dir.exists() {
            return Err(BenchError::Invalid(format!(
                "{} already exists; pick a new --dir",
                dir.display()
            )));
        }
        let result = self.run_in(&dir);
        if !self.keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    fn fs(&self) -> Arc<dyn Fs> {
        match self.fsync_delay() {
            Some(d) if !d.is_zero() => Arc::new(SlowSyncFs::new(StdFs, d)),
            _ => Arc::new(StdFs),
        }
    }

    fn open(&self, dir: &Path) -> Result<Store, BenchError> {
        let cfg = TopicConfig {
            partitions: self.partitions,
            retention: HumanDuration(Duration::ZERO),
            on_full: OnFull::Reject,
            max_batch_size: ByteSize::mib(8),
            cleanup: if self.keys.is_some() {
                brook::log::Cleanup::Compact
            } else {
                brook::log::Cleanup::Delete
            },
            ..TopicConfig::default()
        };
        let opts = StoreOptions {
            min_free: ByteSize::mib(64),
            ..StoreOptions::default()
        };
        let (store, _) = Store::open_with(
            dir,
            self.fs(),
            Box::<SystemTimeSource>::default(),
            opts,
            &[(TOPIC.to_string(), cfg)],
        )?;
        Ok(store)
    }

    fn run_in(&self, dir: &Path) -> Result<StorageReport, BenchError> {
        std::fs::create_dir_all(dir).map_err(|source| BenchError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let fsync_ceiling_per_sec = if self.durability == Durability::Durable {
            Some(fsync_ceiling(
                dir,
                self.partitions,
                (self.record_size + 40) * self.batch as usize * 4,
                self.fsync_delay(),
            )?)
        } else {
            None
        };
        let store = Arc::new(self.open(dir)?);
        let device = device_stat_path(dir);
        let proc_before = process_write_bytes();
        let dev_before = device.as_deref().and_then(device_sectors_written);

        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let progress = (!self.json && std::io::stderr().is_terminal())
            .then(|| spawn_progress("append", self.records, Arc::clone(&done), Arc::clone(&stop)));

        // Producers are tasks, as the front ends' connections will be: a producer waiting for
        // durability costs no thread. One runtime thread runs them all, so the producers' side
        // takes as little CPU from the partitions' flusher threads as it can.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BenchError::Invalid(format!("cannot start the runtime: {e}")))?;
        let started = Instant::now();
        let results = runtime.block_on(async {
            let mut tasks = Vec::new();
            for p in 0..self.producer_count() {
                let quota = self.records / u64::from(self.producer_count())
                    + u64::from(u64::from(p) < self.records % u64::from(self.producer_count()));
                let store = Arc::clone(&store);
                let done = Arc::clone(&done);
                let shape = Shape {
                    batch: self.batch,
                    size: self.record_size,
                    durability: self.durability,
                    keys: self.keys,
                };
                let partition = p % self.partitions;
                tasks.push(tokio::spawn(async move {
                    produce(&store, partition, quota, shape, &done).await
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await);
            }
            out
        });
        let mut latencies = Vec::new();
        let mut first_err = None;
        for r in results {
            match r {
                Ok(Ok(l)) => latencies.extend(l),
                Ok(Err(e)) => {
                    first_err.get_or_insert(BenchError::Log(e));
                }
                Err(_) => {
                    first_err.get_or_insert(BenchError::Invalid("a producer panicked".into()));
                }
            }
        }
        if let Some(e) = first_err {
            stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
        store.flush_all(false)?;
        let append_secs = started.elapsed().as_secs_f64();
        let writes = store.usage().writes.load(Ordering::Relaxed);
        let fsyncs = store.usage().fsyncs.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = progress {
            let _ = h.join();
        }
        store.flush_all(true)?;
        let payload = self.records as f64 * self.record_size as f64;
        let proc_after = process_write_bytes();
        let dev_after = device.as_deref().and_then(device_sectors_written);
        let write_amplification = match (proc_before, proc_after) {
            (Some(a), Some(b)) if payload > 0.0 => Some((b - a) as f64 / payload),
            _ => None,
        };
        let device_write_amplification = match (dev_before, dev_after) {
            (Some(a), Some(b)) if payload > 0.0 => Some((b - a) as f64 * 512.0 / payload),
            _ => None,
        };
        latencies.sort_unstable();
        let pct = |q: usize| {
            latencies
                .get((latencies.len() * q / 100).min(latencies.len().saturating_sub(1)))
                .map_or(0, |&v| u64::from(v))
        };

        // Read everything back, one thread per partition, decoding every record.
        let read_started = Instant::now();
        let readers: Vec<_> = (0..self.partitions)
            .map(|p| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || read_all(&store, p))
            })
            .collect();
        let mut read = 0u64;
        for h in readers {
            read += h
                .join()
                .map_err(|_| BenchError::Invalid("a reader panicked".into()))??;
        }
        let read_secs = read_started.elapsed().as_secs_f64();
        if read != self.records {
            return Err(BenchError::Lost {
                got: read,
                want: self.records,
            });
        }
        let topic = store.topic(TOPIC)?;
        let segments = topic.partitions().iter().map(|p| p.status().segments).sum();
        let disk_bytes = store.used_bytes();
        let ends: Vec<u64> = topic.partitions().iter().map(|p| p.end_offset()).collect();
        drop(topic);

        let compaction = match self.keys {
            Some(keys) => {
                let sealed: u64 = store
                    .topic(TOPIC)?
                    .partitions()
                    .iter()
                    .map(|p| p.size())
                    .sum();
                let t = Instant::now();
                let c = store.compact()?;
                let secs = t.elapsed().as_secs_f64();
                Some(CompactionReport {
                    keys,
                    secs,
                    segments_rewritten: c.segments_rewritten,
                    records_removed: c.records_removed,
                    bytes_before: c.bytes_before,
                    bytes_written: c.bytes_after,
                    mb_per_sec: sealed as f64 / secs.max(1e-9) / 1e6,
                    disk_bytes_after: store.used_bytes(),
                })
            }
            None => None,
        };

        let reopen_ms = if self.reopen {
            // No clean shutdown exists to skip: dropping the store leaves the files exactly as a
            // kill -9 after the last append would.
            drop(store);
            if self.cold {
                drop_page_cache()?;
            }
            let t = Instant::now();
            let store = self.open(dir)?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            let topic = store.topic(TOPIC)?;
            let again: Vec<u64> = topic.partitions().iter().map(|p| p.end_offset()).collect();
            if again != ends {
                return Err(BenchError::Invalid(format!(
                    "reopened store ends at {again:?}, expected {ends:?}"
                )));
            }
            Some(ms)
        } else {
            None
        };

        Ok(StorageReport {
            records: self.records,
            record_size: self.record_size,
            partitions: self.partitions,
            producers: self.producer_count(),
            batch: self.batch,
            durability: self.durability,
            fsync_delay_ms: self.fsync_delay().map(|d| d.as_millis().sat_u64()),
            append_secs,
            append_records_per_sec: self.records as f64 / append_secs,
            append_mb_per_sec: payload / append_secs / 1e6,
            ack_p50_us: pct(50),
            ack_p99_us: pct(99),
            ack_max_us: latencies.last().map_or(0, |&v| u64::from(v)),
            write_amplification,
            device_write_amplification,
            read_records_per_sec: read as f64 / read_secs,
            read_mb_per_sec: payload / read_secs / 1e6,
            reopen_ms,
            reopen_cold: self.cold,
            disk_bytes,
            segments,
            writes,
            fsyncs,
            records_per_fsync: self.records as f64 / fsyncs.max(1) as f64,
            fsync_ceiling_per_sec,
            compaction,
        })
    }
}

/// What each producer appends.
#[derive(Clone, Copy)]
struct Shape {
    batch: u32,
    size: usize,
    durability: Durability,
    keys: Option<u64>,
}

async fn produce(
    store: &Store,
    partition: u32,
    quota: u64,
    shape: Shape,
    done: &AtomicU64,
) -> Result<Vec<u32>, LogError> {
    let Shape {
        batch,
        size,
        durability,
        keys,
    } = shape;
    let mut seq = 0u64;
    let mut value = vec![0u8; size];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(partition);
    let mut builder = BatchBuilder::with_capacity(batch as usize * (size + 8));
    let mut latencies = Vec::with_capacity((quota / u64::from(batch) + 1).sat_usize());
    let mut left = quota;
    while left > 0 {
        let n = left.min(u64::from(batch));
        builder.clear();
        let ts = wall_clock_ms();
        for _ in 0..n {
            super::fill_random(&mut seed, &mut value);
            let key = keys.map(|k| format!("key-{}", seq % k.max(1)));
            builder.push(ts, key.as_deref().map(str::as_bytes), Some(&value), &[]);
            seq += 1;
        }
        let t = Instant::now();
        store
            .append_async(TOPIC, PartitionChoice::Id(partition), &builder, durability)
            .await?;
        latencies.push(t.elapsed().as_micros().min(u128::from(u32::MAX)).sat_u32());
        left -= n;
        done.fetch_add(n, Ordering::Relaxed);
    }
    Ok(latencies)
}

fn read_all(store: &Store, partition: u32) -> Result<u64, LogError> {
    let mut from = store.topic(TOPIC)?.partition(partition)?.log_start();
    let mut count = 0u64;
    loop {
        let r = store.read(TOPIC, partition, from, 1 << 20, Visibility::Written)?;
        if r.frames.is_empty() {
            return Ok(count);
        }
        for batch in r.batches() {
            for rec in batch.records() {
                let rec = rec.map_err(LogError::InvalidBatch)?;
                if rec.offset >= from {
                    count += 1;
                }
            }
        }
        from = r.next_offset;
    }
}

fn spawn_progress(
    what: &'static str,
    total: u64,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut shown = false;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let elapsed = start.elapsed().as_secs_f64();
            if elapsed < 1.0 {
                continue;
            }
            let n = done.load(Ordering::Relaxed);
            let width = 30;
            // A float to integer `as` saturates (and NaN gives 0): no wrap possible.
            #[allow(clippy::cast_possible_truncation)]
            let filled = (n as f64 / total as f64 * width as f64) as usize;
            eprint!(
                "\r{what} [{}{}] {:>3}% {n}/{total} ({:.0}/s) ",
                "#".repeat(filled.min(width)),
                " ".repeat(width - filled.min(width)),
                n * 100 / total.max(1),
                n as f64 / elapsed
            );
            shown = true;
        }
        if shown {
            eprintln!();
        }
    })
}

/// One thread per partition appends `write` bytes and fsyncs, in a loop, for a second.
fn fsync_ceiling(
    dir: &Path,
    threads: u32,
    write: usize,
    delay: Option<Duration>,
) -> Result<f64, BenchError> {
    use std::io::Write;
    let stop = Instant::now() + Duration::from_secs(1);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let path = dir.join(format!("fsync-probe-{i}"));
            std::thread::spawn(move || -> std::io::Result<u64> {
                let mut f = std::fs::File::create(&path)?;
                let buf = vec![0x5au8; write.clamp(64, 1 << 20)];
                let mut n = 0;
                while Instant::now() < stop {
                    f.write_all(&buf)?;
                    if let Some(d) = delay {
                        std::thread::sleep(d);
                    }
                    f.sync_data()?;
                    n += 1;
                }
                drop(f);
                std::fs::remove_file(&path)?;
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| BenchError::Invalid("an fsync probe panicked".into()))?
            .map_err(|source| BenchError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(total as f64)
}

/// Writes dirty pages and drops the page cache, so the next open reads from the device.
fn drop_page_cache() -> Result<(), BenchError> {
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").map_err(|source| BenchError::Dir {
        path: PathBuf::from("/proc/sys/vm/drop_caches (--cold needs root)"),
        source,
    })
}

/// `write_bytes` of `/proc/self/io`.
pub fn process_write_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `/sys/dev/block/MAJ:MIN/stat` of the device holding `dir`.
pub fn device_stat_path(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    // glibc's encoding of dev_t.
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    let p = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    p.exists().then_some(p)
}

/// Sectors (512 bytes) written, field 7 of a block device `stat` file.
pub fn device_sectors_written(stat: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    text.split_whitespace().nth(6)?.parse().ok()
}
