//! The Kafka API: Kafka clients (librdkafka, Java, Python, Go) produce to and consume from Brook
//! unchanged, over the same broker core as the native protocol and MQTT. Brook is a one-node
//! cluster: node 0 leads every partition and coordinates every group.
//!
//! | module | job |
//! |---|---|
//! | [`codec`] | framing, request/response headers per API version, the implemented APIs |
//! | [`records`] | Kafka record batches (v2, compressed or not) to Brook batches and back |
//! | [`producers`] | idempotent producers: ids, epochs, per-partition sequences |
//! | [`data`] | Produce, Fetch, ListOffsets, InitProducerId |
//! | [`admin`] | ApiVersions, Metadata, CreateTopics, DeleteTopics, DescribeConfigs, FindCoordinator |
//! | [`groups`] | JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit/Fetch, Describe/ListGroups |
//!
//! Each connection is read in order: a produce is put in the log by the reader itself, so
//! a producer's batches keep their order in each partition; its wait for durability, a fetch's
//! long poll and a join's wait for the rebalance run as tasks of their own, and the answers go
//! out in request order, as Kafka clients expect. At most `max_in_flight` requests of one
//! connection are open at once. acks: `0` is appended with durability `none` and gets no
//! answer, `1` is answered once `written`, `-1` (all) once `durable` (fsynced).
//!
//! A malformed request, an oversized one (`max_request_size`), an unknown API, or a version
//! Brook does not implement closes that one connection with the reason logged and counted
//! (an ApiVersions of an unknown version is answered, see [`codec`]). Requests are decoded by
//! the `kafka-protocol` crate, used in a copy whose decoders never allocate more than a request
//! carries (`vendor/kafka-protocol/BROOK.md`: the release sized buffers to claimed counts, and
//! one 21-byte request aborted the process); [`records`] checks claimed counts likewise.

pub mod admin;
pub mod codec;
pub mod data;
pub mod groups;
pub mod producers;
pub mod records;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::broker::Broker;
use crate::units::ByteSize;
use codec::Parsed;

/// `[kafka]`: the Kafka API listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port` clients are told to connect to (Metadata, FindCoordinator). Empty: the
    /// listener's own address (127.0.0.1 when it listens on every address).
    pub advertised: String,
    pub max_connections: usize,
    /// Largest request accepted; larger ones close the connection.
    pub max_request_size: ByteSize,
    /// Requests of one connection processed at once.
    pub max_in_flight: usize,
    /// Metadata requests for an unknown topic create it (with `topic_defaults`), as Kafka's
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            advertised: String::new(),
            max_connections: 1024,
            max_request_size: ByteSize::mib(16),
            max_in_flight: 16,
            auto_create_topics: true,
        }
    }
}

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.advertised.is_empty() {
            let ok = self
                .advertised
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(format!(
                    "kafka.advertised = {:?} is not host:port (e.g. \"gateway.local:9092\")",
                    self.advertised
                ));
            }
        }
        if self.max_connections == 0 {
            return Err("kafka.max_connections: must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            return Err("kafka.max_in_flight: must be at least 1".into());
        }
        if self.max_request_size.bytes() < 64 * 1024 {
            return Err(format!(
                "kafka.max_request_size = {} is below 64KiB",
                self.max_request_size
            ));
        }
        Ok(())
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct KafkaStats {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub requests: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Produce batches answered as duplicates of an earlier one (idempotent retries).
    pub duplicate_batches: AtomicU64,
}

impl KafkaStats {
    /// Prometheus text lines.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, kind, help, v) in [
            (
                "brook_kafka_connections",
                "gauge",
                "Open Kafka API connections.",
                &self.connections,
            ),
            (
                "brook_kafka_connections_total",
                "counter",
                "Kafka API connections accepted.",
                &self.connections_total,
            ),
            (
                "brook_kafka_connections_refused_total",
                "counter",
                "Kafka API connections refused at max_connections.",
                &self.connections_refused,
            ),
            (
                "brook_kafka_requests_total",
                "counter",
                "Kafka API requests read.",
                &self.requests,
            ),
            (
                "brook_kafka_protocol_errors_total",
                "counter",
                "Kafka API connections closed for a malformed or unsupported request.",
                &self.protocol_errors,
            ),
            (
                "brook_kafka_duplicate_batches_total",
                "counter",
                "Idempotent producer retries recognised and not written again.",
                &self.duplicate_batches,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// What every handler needs.
#[derive(Debug)]
pub struct Ctx {
    pub broker: Arc<Broker>,
    pub config: KafkaConfig,
    pub stats: Arc<KafkaStats>,
    /// Asked for the per-address connection limit (the Kafka API has no logins yet).
    pub auth: Arc<crate::auth::Auth>,
    pub producers: producers::Producers,
    /// Host and port in Metadata and FindCoordinator answers.
    pub advertised_host: String,
    pub advertised_port: i32,
}

impl Ctx {
    pub fn new(
        broker: Arc<Broker>,
        config: KafkaConfig,
        stats: Arc<KafkaStats>,
        auth: Arc<crate::auth::Auth>,
        local: SocketAddr,
    ) -> Ctx {
        let (advertised_host, advertised_port) = match config.advertised.rsplit_once(':') {
            Some((h, p)) if !config.advertised.is_empty() => {
                (h.to_string(), p.parse::<i32>().unwrap_or(9092))
            }
            _ => {
                let ip = if local.ip().is_unspecified() {
                    tracing::warn!(
                        "kafka listener on {local}: clients are told 127.0.0.1:{}; set kafka.advertised to the address they should use",
                        local.port()
                    );
                    "127.0.0.1".to_string()
                } else {
                    local.ip().to_string()
                };
                (ip, i32::from(local.port()))
            }
        };
        Ctx {
            broker,
            config,
            stats,
            auth,
            producers: producers::Producers::default(),
            advertised_host,
            advertised_port,
        }
    }
}

/// An answer on its way: `None` for a request that gets none (produce with acks 0).
type Pending = oneshot::Receiver<Option<Vec<u8>>>;

/// Accepts Kafka connections until `shutdown` turns true; runs the group timeouts.
pub async fn run(listener: TcpListener, ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(ctx.config.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
            _ = tick.tick() => {
                for (g, m) in ctx.broker.kafka_groups().tick(std::time::Instant::now()) {
                    tracing::info!(group = %g, member = %m, "Kafka member removed: session or rebalance timed out");
                }
                continue;
            }
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("kafka listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = ctx.auth.admit("kafka", peer.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            ctx.stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "kafka connection refused: {} connections open", ctx.config.max_connections);
            continue;
        };
        ctx.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        let ctx = Arc::clone(&ctx);
        let stop = shutdown.clone();
        connections.spawn(async move {
            ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
            if let Err(reason) = connection(stream, peer, &ctx, stop).await {
                ctx.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "kafka connection closed: {reason}");
            }
            ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            drop(admitted);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// Serves one connection; `Err` carries the reason it was closed for.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let (mut rd, mut wr) = stream.into_split();
    let in_flight = ctx.config.max_in_flight;
    let (tx, mut rx) = mpsc::channel::<Pending>(in_flight);
    let writer = tokio::spawn(async move {
        let mut out = Vec::with_capacity(64 * 1024);
        while let Some(pending) = rx.recv().await {
            match pending.await {
                Ok(Some(bytes)) => out.extend_from_slice(&bytes),
                Ok(None) => {}
                // The handler failed: the client cannot be answered in order any more.
                Err(_) => break,
            }
            if out.len() >= 256 * 1024 || rx.is_empty() {
                if wr.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
        if !out.is_empty() {
            let _ = wr.write_all(&out).await;
        }
        let _ = wr.shutdown().await;
    });
    let slots = Arc::new(Semaphore::new(in_flight));
    let max = ctx.config.max_request_size.bytes() as usize;
    let result = loop {
        let mut size = [0u8; 4];
        let read = tokio::select! {
            r = rd.read_exact(&mut size) => r,
            _ = shutdown.wait_for(|s| *s) => break Ok(()),
        };
        if read.is_err() {
            break Ok(()); // closed by the client
        }
        let size = i32::from_be_bytes(size);
        if size < 0 || size as usize > max {
            break Err(format!(
                "request of {size} bytes (kafka.max_request_size is {max})"
            ));
        }
        // The buffer grows with the bytes that arrive, never to the size the peer claims.
        let mut body = Vec::with_capacity((size as usize).min(64 * 1024));
        match (&mut rd).take(size as u64).read_to_end(&mut body).await {
            Ok(n) if n == size as usize => {}
            Ok(n) => {
                break Err(format!(
                    "connection lost inside a request ({n} of {size} bytes)"
                ));
            }
            Err(e) => break Err(format!("connection lost inside a request: {e}")),
        }
        ctx.stats.requests.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            break Ok(());
        };
        let frame = match codec::parse(Bytes::from(body)) {
            Ok(Parsed::Request(f)) => f,
            Ok(Parsed::ApiVersionsTooNew { correlation_id }) => {
                let (done, pending) = oneshot::channel();
                let _ = done.send(admin::api_versions_unsupported(correlation_id).ok());
                if tx.send(pending).await.is_err() {
                    break Ok(());
                }
                continue;
            }
            Err(reason) => break Err(reason),
        };
        let (done, pending) = oneshot::channel();
        match start(ctx, frame, peer) {
            Ok(Started::Now(answer)) => {
                let _ = done.send(answer);
                drop(permit);
            }
            Ok(Started::Later(fut)) => {
                tokio::spawn(async move {
                    match fut.await {
                        Ok(answer) => {
                            let _ = done.send(answer);
                        }
                        Err(reason) => {
                            tracing::warn!(%peer, "kafka request failed: {reason}");
                            drop(done);
                        }
                    }
                    drop(permit);
                });
            }
            Err(reason) => break Err(reason),
        }
        if tx.send(pending).await.is_err() {
            break Ok(());
        }
    };
    drop(tx);
    let _ = writer.await;
    result
}

/// A boxed handler future: the encoded answer, `None` for no answer.
pub type Answer = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<Vec<u8>>, String>> + Send + 'static>,
>;

/// How a request was started.
pub enum Started {
    /// Answered on the spot.
    Now(Option<Vec<u8>>),
    /// Answered by a task (durability, long poll, rebalance).
    Later(Answer),
}

/// Starts one request: quick ones are answered here, produces are appended here (in order).
fn start(ctx: &Arc<Ctx>, mut frame: codec::Frame, peer: SocketAddr) -> Result<Started, String> {
    let key = frame.key;
    let version = frame.header.request_api_version;
    let id = frame.header.correlation_id;
    let now = |r: Vec<u8>| Ok(Started::Now(Some(r)));
    match key {
        ApiKey::ApiVersions => now(admin::api_versions(version, id)?),
        ApiKey::Metadata => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| admin::metadata(c, r, version, id))
        }
        ApiKey::CreateTopics => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| admin::create_topics(c, r, version, id))
        }
        ApiKey::DeleteTopics => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| admin::delete_topics(c, r, version, id))
        }
        ApiKey::DescribeConfigs => now(admin::describe_configs(
            ctx,
            codec::body(&mut frame)?,
            version,
            id,
        )?),
        ApiKey::FindCoordinator => now(admin::find_coordinator(
            ctx,
            codec::body(&mut frame)?,
            version,
            id,
        )?),
        ApiKey::Produce => data::produce(ctx, codec::body(&mut frame)?, version, id),
        ApiKey::Fetch => Ok(Started::Later(data::fetch(
            Arc::clone(ctx),
            codec::body(&mut frame)?,
            version,
            id,
        ))),
        ApiKey::ListOffsets => now(data::list_offsets(
            ctx,
            codec::body(&mut frame)?,
            version,
            id,
        )?),
        ApiKey::InitProducerId => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| data::init_producer_id(c, r, version, id))
        }
        ApiKey::JoinGroup => {
            let client = frame
                .header
                .client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default();
            Ok(Started::Later(groups::join(
                Arc::clone(ctx),
                codec::body(&mut frame)?,
                version,
                id,
                client,
                peer,
            )))
        }
        ApiKey::SyncGroup => Ok(Started::Later(groups::sync(
            Arc::clone(ctx),
            codec::body(&mut frame)?,
            version,
            id,
        ))),
        ApiKey::Heartbeat => now(groups::heartbeat(
            ctx,
            codec::body(&mut frame)?,
            version,
            id,
        )?),
        ApiKey::LeaveGroup => now(groups::leave(ctx, codec::body(&mut frame)?, version, id)?),
        ApiKey::OffsetCommit => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| groups::offset_commit(c, r, version, id))
        }
        ApiKey::OffsetFetch => now(groups::offset_fetch(
            ctx,
            codec::body(&mut frame)?,
            version,
            id,
        )?),
        ApiKey::DescribeGroups => now(groups::describe_groups(
            ctx,
            codec::body(&mut frame)?,
            version,
            id,
        )?),
        ApiKey::ListGroups => now(groups::list_groups(
            ctx,
            codec::body(&mut frame)?,
            version,
            id,
        )?),
        other => Err(format!("API {other:?} is not implemented")),
    }
}

/// Runs a handler that writes files or flushes metadata on the blocking pool.
fn blocking(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&Ctx) -> Result<Vec<u8>, String> + Send + 'static,
) -> Result<Started, String> {
    let ctx = Arc::clone(ctx);
    Ok(Started::Later(Box::pin(async move {
        tokio::task::spawn_blocking(move || f(&ctx))
            .await
            .map_err(|e| format!("handler task: {e}"))?
            .map(Some)
    })))
}
