//! `brook bench mirror`: how fast a backlog drains upstream once the link returns.
//!
//! A fresh `brook serve` takes `--records` records of `--record-size` bytes (durable, keyed over
//! 64 keys) into a topic of `--partitions` partitions with no mirror configured; then it is
//! restarted with a `[[mirror]]` to `--upstream` (`--kind kafka`, `mqtt` or `brook`) and the
//! clock runs from the restart until `/api/mirrors` shows every record acknowledged upstream.
//! For a Kafka upstream the same run then writes the same records straight to the same cluster
//! with a plain rskafka producer: the same records with the same origin headers, the same batch
//! size, one batch in flight per partition, all partitions at once (`direct_records_per_sec`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{BenchResult, Report, rss_kib, start_server};
use brook::client::{Client, Producer};
use brook::log::Record;
use brook::log::partitioner::partition_for_key;
use brook::proto::{Acks, TopicSettings};
use brook::units::Narrow;

/// Parameters of `brook bench mirror`.
#[derive(Clone, Debug, clap::Args)]
pub struct MirrorBench {
    /// Upstream kind: kafka, mqtt or brook.
    #[arg(long, default_value = "kafka")]
    pub kind: String,
    /// Upstream address (Kafka bootstrap server, MQTT broker, Brook native listener).
    #[arg(long)]
    pub upstream: String,
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Records per batch (the mirror's batch_records and the plain producer's batch).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct MirrorReport {
    pub kind: String,
    pub upstream: String,
    pub records: u64,
    pub record_size: usize,
    pub partitions: u32,
    pub batch: usize,
    pub backlog_secs: f64,
    pub drain_secs: f64,
    pub drain_records_per_sec: f64,
    pub direct_secs: Option<f64>,
    pub direct_records_per_sec: Option<f64>,
    /// drain / direct.
    pub drain_vs_direct: Option<f64>,
    pub peak_rss_kib: Option<u64>,
}

impl Report for MirrorReport {
    fn render(&self) -> String {
        let mut s = format!(
            "mirror to {} ({}): {} records of {} B over {} partitions, batches of {}\n\
             backlog written in {:.2} s\n\
             drained in {:.2} s: {:.0} records/s\n",
            self.upstream,
            self.kind,
            self.records,
            self.record_size,
            self.partitions,
            self.batch,
            self.backlog_secs,
            self.drain_secs,
            self.drain_records_per_sec
        );
        if let (Some(d), Some(r), Some(x)) = (
            self.direct_secs,
            self.direct_records_per_sec,
            self.drain_vs_direct,
        ) {
            s.push_str(&format!(
                "plain rskafka producer: {d:.2} s, {r:.0} records/s (drain = {:.0} % of it)\n",
                x * 100.0
            ));
        }
        if let Some(k) = self.peak_rss_kib {
            s.push_str(&format!(
                "brook serve peak RSS: {:.1} MiB\n",
                k as f64 / 1024.0
            ));
        }
        s
    }
}

fn record(i: u64, size: usize) -> Record {
    let mut value = format!("{i:012}").into_bytes();
    value.resize(size.max(12), b'x');
    Record {
        timestamp: 1_700_000_000_000 + i as i64,
        key: Some(format!("key-{}", i % 64).into_bytes()),
        value: Some(value),
        headers: Vec::new(),
    }
}

impl MirrorBench {
    pub async fn run(&self) -> BenchResult<MirrorReport> {
        if !matches!(self.kind.as_str(), "kafka" | "mqtt" | "brook") {
            return Err(format!("--kind {}: kafka, mqtt or brook", self.kind).into());
        }
        let id = std::process::id();
        let dir = PathBuf::from(format!("./brook-bench-mirror-{id}"));
        if dir.exists() {
            return Err(format!("{} already exists", dir.display()).into());
        }
        let result = self.measure(&dir, id).await;
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(format!("./brook-bench-mirror-{id}.toml"));
        result
    }

    async fn measure(&self, dir: &std::path::Path, id: u32) -> BenchResult<MirrorReport> {
        // 1. The backlog, written while no mirror is configured.
        let started = Instant::now();
        {
            let server = start_server("mirror", Some(dir.to_path_buf()), None)?;
            let client = Arc::new(Client::connect(&server.addr, "bench").await?);
            client
                .create_topic(
                    "bench",
                    TopicSettings {
                        partitions: Some(self.partitions),
                        ..TopicSettings::default()
                    },
                )
                .await?;
            let mut p = Producer::new(client, "bench", Acks::Durable).await?;
            for i in 0..self.records {
                p.send(None, &record(i, self.record_size)).await?;
            }
            p.flush().await?;
        }
        let backlog_secs = started.elapsed().as_secs_f64();

        // 2. The link returns: restart with the mirror and time the drain.
        let upstream_topic = format!("bench-{id}");
        let template = if self.kind == "mqtt" {
            format!("{upstream_topic}/{{key}}")
        } else {
            upstream_topic.clone()
        };
        let config = PathBuf::from(format!("./brook-bench-mirror-{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "[[mirror]]\nname = \"bench\"\nkind = \"{}\"\nupstream = [\"{}\"]\ntopics = [\"bench\"]\nnode = \"bench\"\ntopic_template = \"{template}\"\nbatch_records = {}\n",
                self.kind, self.upstream, self.batch
            ),
        )?;
        let t0 = Instant::now();
        let server = start_server("mirror", Some(dir.to_path_buf()), Some(&config))?;
        let pid = server.child.id();
        loop {
            let body = brook::client::http_get(&server.http_addr, "/api/mirrors", None)
                .await
                .map_err(|e| e.to_string())?;
            let rows: Vec<serde_json::Value> = serde_json::from_str(&body)?;
            let sent: u64 = rows
                .iter()
                .map(|r| r["sent_records"].as_u64().unwrap_or(0))
                .sum();
            if rows.len() == self.partitions as usize && sent >= self.records {
                break;
            }
            if t0.elapsed() > Duration::from_secs(3600) {
                return Err(format!("drain unfinished after an hour ({sent} sent)").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drain_secs = t0.elapsed().as_secs_f64();
        let peak_rss_kib = rss_kib(pid).map(|(_, hwm)| hwm);
        drop(server);

        // 3. The same records straight from a plain rskafka producer (Kafka only).
        let direct_secs = if self.kind == "kafka" {
            Some(self.direct_kafka(&format!("bench-direct-{id}")).await?)
        } else {
            None
        };
        let drain_rps = self.records as f64 / drain_secs;
        let direct_rps = direct_secs.map(|d| self.records as f64 / d);
        Ok(MirrorReport {
            kind: self.kind.clone(),
            upstream: self.upstream.clone(),
            records: self.records,
            record_size: self.record_size,
            partitions: self.partitions,
            batch: self.batch,
            backlog_secs,
            drain_secs,
            drain_records_per_sec: drain_rps,
            direct_secs,
            direct_records_per_sec: direct_rps,
            drain_vs_direct: direct_rps.map(|d| drain_rps / d),
            peak_rss_kib,
        })
    }

    async fn direct_kafka(&self, topic: &str) -> BenchResult<f64> {
        use rskafka::client::partition::{Compression, UnknownTopicHandling};
        let client = rskafka::client::ClientBuilder::new(vec![self.upstream.clone()])
            .build()
            .await?;
        client
            .controller_client()?
            .create_topic(topic, self.partitions as i32, 1, 10_000)
            .await?;
        // The same records as the mirror sends: placed as the local producer placed them, with
        // the same four origin headers (an upstream that stores headers pays for them in both).
        let mut per: Vec<Vec<rskafka::record::Record>> = vec![Vec::new(); self.partitions as usize];
        for i in 0..self.records {
            let r = record(i, self.record_size);
            let key = r.key.clone().unwrap_or_default();
            let p = partition_for_key(&key, self.partitions);
            let offset = per[p as usize].len();
            let headers = [
                ("brook.node", "bench".to_string()),
                ("brook.topic", "bench".to_string()),
                ("brook.partition", p.to_string()),
                ("brook.offset", offset.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_bytes()))
            .collect();
            per[p as usize].push(rskafka::record::Record {
                key: r.key,
                value: r.value,
                headers,
                timestamp: rskafka::chrono::DateTime::from_timestamp_millis(r.timestamp)
                    .unwrap_or_default(),
            });
        }
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (p, records) in per.into_iter().enumerate() {
            let pc = client
                .partition_client(topic, p.sat_i32(), UnknownTopicHandling::Retry)
                .await?;
            let batch = self.batch;
            tasks.spawn(async move {
                let mut rest = records;
                while !rest.is_empty() {
                    let tail = rest.split_off(batch.min(rest.len()));
                    pc.produce(rest, Compression::NoCompression)
                        .await
                        .map_err(|e| e.to_string())?;
                    rest = tail;
                }
                Ok::<(), String>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| e.to_string())??;
        }
        Ok(t0.elapsed().as_secs_f64())
    }
}
