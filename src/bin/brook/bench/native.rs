//! `brook bench native`: producers and consumers over loopback against a real `brook serve`
//! (started as a child process on a fresh data directory, so its memory is measured on its own,
//! or an existing one with `--broker`).
//!
//! Producers are connections sending batches of `--batch` records with up to `--inflight`
//! requests pipelined each; the figure is records acknowledged per second and the
//! request-to-acknowledgement latency. Then `--consumers` connections read the whole topic back
//! from offset 0 (one fetch in flight per partition), decoding every record: consume records/s.
//! The server's resident memory (VmRSS, and the peak VmHWM) is read from `/proc` when idle and
//! after the load.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use brook::client::{Client, ClientError, ClientTls};
use brook::log::clock::wall_clock_ms;
use brook::log::{BatchBuilder, Durability};
use brook::proto::{Acks, TopicSettings};
use brook::units::Narrow;

/// Parameters of `brook bench native`.
#[derive(Clone, Debug, clap::Args)]
pub struct NativeBench {
    /// Use this running server instead of starting one (its memory is then not measured).
    #[arg(long)]
    pub broker: Option<String>,
    /// Data directory of the server started (must not exist); default ./brook-bench-native-<pid>.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Value bytes per record.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Producer connections.
    #[arg(long, default_value_t = 4)]
    pub producers: u32,
    /// Consumer connections reading the topic back.
    #[arg(long, default_value_t = 4)]
    pub consumers: u32,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Records per produce request.
    #[arg(long, default_value_t = 100)]
    pub batch: u32,
    /// Produce requests pipelined per producer.
    #[arg(long, default_value_t = 16)]
    pub inflight: u32,
    /// What an acknowledgement means: none, written or durable.
    #[arg(long, default_value = "written")]
    pub durability: Durability,
    /// Over TLS: DIR holds ca.pem (trusted by the clients) and server.pem / server.key (the
    /// started server's, valid for 127.0.0.1).
    #[arg(long, value_name = "DIR", value_parser = super::BenchTls::parse)]
    pub tls: Option<super::BenchTls>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct NativeReport {
    pub tls: bool,
    pub records: u64,
    pub record_size: usize,
    pub producers: u32,
    pub consumers: u32,
    pub partitions: u32,
    pub batch: u32,
    pub inflight: u32,
    pub durability: Durability,
    pub produce_records_per_sec: f64,
    pub produce_mb_per_sec: f64,
    pub consume_records_per_sec: f64,
    pub consume_mb_per_sec: f64,
    /// Produce request to acknowledgement.
    pub p50_us: u64,
    pub p99_us: u64,
    pub server_rss_idle_kib: Option<u64>,
    pub server_rss_loaded_kib: Option<u64>,
    pub server_rss_peak_kib: Option<u64>,
}

impl super::Report for NativeReport {
    fn render(&self) -> String {
        let kib =
            |v: Option<u64>| v.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        format!(
            "native bench{}: {} records x {} B, {} producers, {} consumers, {} partitions, batch {}, {} in flight, durability {:?}\n  produce: {:.0} records/s, {:.1} MB/s; ack latency p50 {} us, p99 {} us\n  consume: {:.0} records/s, {:.1} MB/s\n  server RSS: idle {}, after load {}, peak {}\n",
            if self.tls { " over TLS" } else { "" },
            self.records,
            self.record_size,
            self.producers,
            self.consumers,
            self.partitions,
            self.batch,
            self.inflight,
            self.durability,
            self.produce_records_per_sec,
            self.produce_mb_per_sec,
            self.p50_us,
            self.p99_us,
            self.consume_records_per_sec,
            self.consume_mb_per_sec,
            kib(self.server_rss_idle_kib),
            kib(self.server_rss_loaded_kib),
            kib(self.server_rss_peak_kib),
        )
    }
}

use super::{BenchResult, rss_kib, start_server_tls};

impl NativeBench {
    pub async fn run(&self) -> BenchResult<NativeReport> {
        if self.records == 0 || self.producers == 0 || self.consumers == 0 || self.batch == 0 {
            return Err("--records, --producers, --consumers and --batch must be positive".into());
        }
        let server = match &self.broker {
            Some(_) => None,
            None => Some(start_server_tls(
                "native",
                self.dir.clone(),
                self.tls.as_ref(),
            )?),
        };
        let addr = match (&self.broker, &server) {
            (Some(a), _) => a.clone(),
            (None, Some(s)) => match (&self.tls, &s.native_tls_addr) {
                (Some(_), Some(a)) => a.clone(),
                _ => s.addr.clone(),
            },
            _ => return Err("neither a broker address nor a started server".into()),
        };
        let tls = match &self.tls {
            Some(t) => Some(ClientTls::with_config(t.client_config()?)),
            None => None,
        };
        let pid = server.as_ref().map(|s| s.child.id());
        let admin = Client::connect_with(&addr, "bench-admin", tls.as_ref()).await?;
        let idle = pid.and_then(rss_kib);
        let topic = format!("bench-{}", std::process::id());
        admin
            .create_topic(
                &topic,
                TopicSettings {
                    partitions: Some(self.partitions),
                    ..TopicSettings::default()
                },
            )
            .await?;
        let acks = match self.durability {
            Durability::None => Acks::None,
            Durability::Written => Acks::Written,
            Durability::Durable => Acks::Durable,
        };

        // Produce.
        let started = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..self.producers {
            let quota = self.records / u64::from(self.producers)
                + u64::from(u64::from(p) < self.records % u64::from(self.producers));
            let client = Client::connect_with(&addr, "bench-producer", tls.as_ref()).await?;
            let topic = topic.clone();
            let (batch, size, inflight) = (self.batch, self.record_size, self.inflight.max(1));
            let partition = p % self.partitions;
            tasks.push(tokio::spawn(async move {
                produce(
                    client, &topic, partition, quota, batch, size, inflight, acks,
                )
                .await
            }));
        }
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await??);
        }
        let produce_secs = started.elapsed().as_secs_f64();
        latencies.sort_unstable();

        // Consume everything back.
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..self.consumers {
            let parts: Vec<u32> = (0..self.partitions)
                .filter(|p| p % self.consumers == c)
                .collect();
            let client = Client::connect_with(&addr, "bench-consumer", tls.as_ref()).await?;
            let topic = topic.clone();
            tasks.push(tokio::spawn(
                async move { consume(client, &topic, parts).await },
            ));
        }
        let mut consumed = 0;
        for t in tasks {
            consumed += t.await??;
        }
        let consume_secs = started.elapsed().as_secs_f64();
        if consumed != self.records {
            return Err(format!("consumed {consumed} records, produced {}", self.records).into());
        }
        let loaded = pid.and_then(rss_kib);
        admin.delete_topic(&topic).await.ok();
        drop(server);
        let bytes = self.records as f64 * self.record_size as f64;
        Ok(NativeReport {
            tls: self.tls.is_some(),
            records: self.records,
            record_size: self.record_size,
            producers: self.producers,
            consumers: self.consumers,
            partitions: self.partitions,
            batch: self.batch,
            inflight: self.inflight,
            durability: self.durability,
            produce_records_per_sec: self.records as f64 / produce_secs,
            produce_mb_per_sec: bytes / produce_secs / 1e6,
            consume_records_per_sec: self.records as f64 / consume_secs,
            consume_mb_per_sec: bytes / consume_secs / 1e6,
            p50_us: super::quantile(&latencies, 0.50),
            p99_us: super::quantile(&latencies, 0.99),
            server_rss_idle_kib: idle.map(|(rss, _)| rss),
            server_rss_loaded_kib: loaded.map(|(rss, _)| rss),
            server_rss_peak_kib: loaded.map(|(_, hwm)| hwm),
        })
    }
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    client: Client,
    topic: &str,
    partition: u32,
    quota: u64,
    batch: u32,
    size: usize,
    inflight: u32,
    acks: Acks,
) -> BenchResult<Vec<u64>> {
    let client = Arc::new(client);
    let mut value = vec![0u8; size];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(partition);
    let mut pending = std::collections::VecDeque::new();
    let mut latencies = Vec::with_capacity((quota / u64::from(batch) + 1).sat_usize());
    let mut left = quota;
    let mut b = BatchBuilder::with_capacity(batch as usize * (size + 8));
    while left > 0 || !pending.is_empty() {
        if left > 0 && pending.len() < inflight as usize {
            let n = left.min(u64::from(batch));
            b.clear();
            let ts = wall_clock_ms();
            for _ in 0..n {
                super::fill_random(&mut seed, &mut value);
                b.push(ts, None, Some(&value), &[]);
            }
            let rx = client
                .submit(&brook::proto::Request::Produce(brook::proto::Produce {
                    topic,
                    partition: Some(partition),
                    partition_key: None,
                    acks,
                    record_count: b.count(),
                    first_timestamp: b.first_timestamp(),
                    records: b.records_bytes(),
                }))
                .await?;
            pending.push_back((Instant::now(), rx));
            left -= n;
            continue;
        }
        let Some((t, rx)) = pending.pop_front() else {
            break;
        };
        let bytes = rx
            .await
            .map_err(|_| ClientError::Closed("server closed the connection".into()))?;
        match brook::client::decode(&bytes)?.response {
            brook::proto::Response::Produced { .. } => {}
            other => return Err(format!("produce failed: {other:?}").into()),
        }
        latencies.push(t.elapsed().as_micros().sat_u64());
    }
    Ok(latencies)
}

async fn consume(client: Client, topic: &str, partitions: Vec<u32>) -> BenchResult<u64> {
    let mut total = 0u64;
    let mut positions: Vec<(u32, u64, u64)> = Vec::new(); // partition, next, end
    for p in partitions {
        let (earliest, latest, _) = client
            .list_offsets(topic, p, brook::proto::OffsetSpec::Latest)
            .await?;
        positions.push((p, earliest, latest));
    }
    while positions.iter().any(|(_, next, end)| next < end) {
        let mut pending = Vec::new();
        for (i, (p, next, end)) in positions.iter().enumerate() {
            if next < end {
                let rx = client
                    .submit(&brook::proto::Request::Fetch(brook::proto::Fetch {
                        topic,
                        partition: *p,
                        offset: *next,
                        max_bytes: 1 << 20,
                        min_bytes: 1,
                        max_wait_ms: 1000,
                    }))
                    .await?;
                pending.push((i, rx));
            }
        }
        for (i, rx) in pending {
            let bytes = rx
                .await
                .map_err(|_| ClientError::Closed("server closed the connection".into()))?;
            match brook::client::decode(&bytes)?.response {
                brook::proto::Response::Fetched {
                    frames,
                    next_offset,
                    ..
                } => {
                    let from = positions[i].1;
                    let mut rest = frames;
                    while !rest.is_empty() {
                        let b = brook::log::BatchView::parse(rest)
                            .map_err(|e| format!("bad batch: {e}"))?;
                        for r in b.records() {
                            let r = r.map_err(|e| format!("bad record: {e}"))?;
                            if r.offset >= from {
                                total += 1;
                            }
                        }
                        rest = &rest[b.frame().len()..];
                    }
                    positions[i].1 = next_offset.max(from);
                }
                other => return Err(format!("fetch failed: {other:?}").into()),
            }
        }
    }
    Ok(total)
}
