//! The Kafka API: Kafka clients (librdkafka, Java, Python, Go) produce to and consume from Brook
//! unchanged, over the same broker core as the native protocol and MQTT. Brook is a one-node
//! cluster: node 0 leads every partition and coordinates every group.
//!
//! | module | job |
//! |---|---|
//! | [`codec`] | framing, request/response headers per API version, the implemented APIs |
//! | [`records`] | Kafka record batches (v2, compressed or not) to Brook batches and back |
//! | [`producers`] | idempotent producers: ids, epochs, per-partition sequences |
//! | [`data`] | Produce, Fetch, ListOffsets, InitProducerId, DeleteRecords |
//! | [`oversize`] | a Produce over `max_request_size` read through and answered MESSAGE_TOO_LARGE |
//! | [`admin`] | ApiVersions, Metadata, Create/DeleteTopics, CreatePartitions, Describe/Alter/IncrementalAlterConfigs, FindCoordinator, DescribeCluster |
//! | (this module) | the listener, the connection loop, SaslHandshake and SaslAuthenticate |
//! | [`groups`] | JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit/Fetch/Delete, Describe/List/DeleteGroups |
//!
//! Each connection is read in order: a produce is put in the log by the reader itself, so
//! a producer's batches keep their order in each partition; its wait for durability, a fetch's
//! long poll and a join's wait for the rebalance run as tasks of their own, and the answers go
//! out in request order, as Kafka clients expect. At most `max_in_flight` requests of one
//! connection are open at once. acks: `0` is appended with durability `none` and gets no
//! answer, `1` is answered once `written`, `-1` (all) once `durable` (fsynced).
//!
//! Logins and the ACL: with a users file every connection logs in with SASL (SaslHandshake,
//! then SaslAuthenticate, or after a v0 handshake the bare tokens as librdkafka 2.0 and older
//! clients send them: PLAIN, or SCRAM-SHA-512 against the `$7$` hashes, see
//! [`crate::auth::sasl`]) before anything but ApiVersions, unless anonymous clients are
//! allowed; a TLS client certificate can be the login instead (`cert_cn_as_username`). Until
//! the login a connection has one `auth.handshake_timeout` from its accept and requests of at
//! most `auth.max_frame_before_login`; afterwards `idle_timeout` between requests (and for a
//! write of answers the client does not read; at a stop, 3 s). Every
//! request is held to the ACL of who logged in: produce = `produce`, fetch and list offsets =
//! `consume`, create and delete topics = `admin`, Metadata lists what the user may describe,
//! the group APIs need the group (see [`crate::auth::acl`]). The plain listener and the TLS one
//! (`listeners.kafka_tls`) share the handlers; each names itself in Metadata.
//!
//! A malformed request, an oversized one (`max_request_size`), an unknown API, or a version
//! Brook does not implement closes that one connection with the reason logged and counted
//! (an ApiVersions of an unknown version is answered, see [`codec`]; a Produce up to four
//! times the limit is read through and answered MESSAGE_TOO_LARGE, see [`oversize`]).
//! Transactions are refused: FindCoordinator for a transaction coordinator answers
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED with the reason (clients fail at once). Requests are decoded by
//! the `kafka-protocol` crate, used in a copy whose decoders never allocate more than a request
//! carries (`vendor/kafka-protocol/BROOK.md`: the release sized buffers to claimed counts, and
//! one 21-byte request aborted the process); [`records`] checks claimed counts likewise.

pub mod admin;
pub mod codec;
pub mod data;
pub mod groups;
pub mod oversize;
pub mod producers;
pub mod records;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
    SyncGroupRequest,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::auth::sasl::{self, Mechanism, SaslError, Scram};
use crate::auth::{ConnSlot, Full, ListenerSlots, Principal};
use crate::broker::Broker;
use crate::net::tls::{Accepted, ReadHalf, TlsServer, WriteHalf, write_flushed};
use crate::units::Narrow;
use crate::units::{BadSetting, ByteSize, HumanDuration};
use codec::{Parsed, err};

/// `[kafka]`: the Kafka API listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port` clients are told to connect to (Metadata, FindCoordinator). Empty: the
    /// listener's own address (127.0.0.1 when it listens on every address).
    pub advertised: String,
    /// The same for clients of the TLS listener (`listeners.kafka_tls`).
    pub advertised_tls: String,
    pub max_connections: usize,
    /// Largest request accepted; larger ones close the connection.
    pub max_request_size: ByteSize,
    /// Requests of one connection processed at once.
    pub max_in_flight: usize,
    /// A logged-in connection that sends no request for this long is closed. Default "10m".
    pub idle_timeout: HumanDuration,
    /// Metadata requests for an unknown topic create it (with `topic_defaults`), as Kafka's
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            advertised: String::new(),
            advertised_tls: String::new(),
            max_connections: 1024,
            max_request_size: ByteSize::mib(16),
            max_in_flight: 16,
            idle_timeout: HumanDuration::secs(600),
            auto_create_topics: true,
        }
    }
}

/// Why a Kafka connection is closed (logged with the peer), or a request cannot be answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KafkaError {
    /// The peer broke the protocol (a frame, a request or a login that does not parse or is
    /// not allowed where it came); the message says how.
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Tls(#[from] crate::net::tls::HandshakeError),
}

impl From<String> for KafkaError {
    fn from(s: String) -> Self {
        KafkaError::Protocol(s)
    }
}

impl From<&str> for KafkaError {
    fn from(s: &str) -> Self {
        KafkaError::Protocol(s.to_string())
    }
}

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), BadSetting> {
        for (key, value) in [
            ("kafka.advertised", &self.advertised),
            ("kafka.advertised_tls", &self.advertised_tls),
        ] {
            let ok = value.is_empty()
                || value
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(BadSetting::new(
                    key,
                    format!("{value:?} is not host:port (e.g. \"gateway.local:9092\")"),
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(BadSetting::new(
                "kafka.max_connections",
                "must be at least 1",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(BadSetting::new("kafka.max_in_flight", "must be at least 1"));
        }
        if self.idle_timeout.0.is_zero() {
            return Err(BadSetting::new(
                "kafka.idle_timeout",
                "must be greater than zero",
            ));
        }
        if self.max_request_size.bytes() < 64 * 1024 {
            return Err(BadSetting::new(
                "kafka.max_request_size",
                format!("{} is below 64KiB", self.max_request_size),
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
    /// Logins (SASL), the ACL, the per-address connection limit.
    pub auth: Arc<crate::auth::Auth>,
    pub producers: producers::Producers,
    /// The listeners' connection slots (plain and TLS together).
    pub slots: ListenerSlots,
    /// Host and port in Metadata and FindCoordinator answers: `[plain, TLS]`, each listener
    /// naming itself, so a client stays on the listener (and security) it came in by.
    pub advertised: [(String, i32); 2],
}

/// `host:port` for a listener: the configured one, else its own address.
fn advertise(configured: &str, key: &str, local: Option<SocketAddr>) -> (String, i32) {
    if let Some((h, p)) = configured.rsplit_once(':') {
        return (h.to_string(), p.parse::<i32>().unwrap_or(9092));
    }
    let Some(local) = local else {
        return ("127.0.0.1".to_string(), 9092);
    };
    let ip = if local.ip().is_unspecified() {
        tracing::warn!(
            "kafka listener on {local}: clients are told 127.0.0.1:{}; set {key} to the address they should use",
            local.port()
        );
        "127.0.0.1".to_string()
    } else {
        local.ip().to_string()
    };
    (ip, i32::from(local.port()))
}

impl Ctx {
    /// `local`: the plain and TLS listeners' addresses.
    pub fn new(
        broker: Arc<Broker>,
        config: KafkaConfig,
        stats: Arc<KafkaStats>,
        auth: Arc<crate::auth::Auth>,
        local: [Option<SocketAddr>; 2],
    ) -> Ctx {
        let advertised = [
            advertise(&config.advertised, "kafka.advertised", local[0]),
            advertise(&config.advertised_tls, "kafka.advertised_tls", local[1]),
        ];
        Ctx {
            broker,
            slots: ListenerSlots::new(config.max_connections),
            config,
            stats,
            auth,
            producers: producers::Producers::default(),
            advertised,
        }
    }
}

/// An answer on its way: `None` for a request that gets none (produce with acks 0).
type Pending = oneshot::Receiver<Option<Vec<u8>>>;

/// Accepts Kafka connections (plain, or TLS with `tls`) until `shutdown` turns true; the
/// `owner` also runs the group timeouts.
pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    owner: bool,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    // The group timeouts run every 250 ms while any group exists; with none the owner sleeps
    // until a client joins one (an idle broker is not woken four times a second for nothing).
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut groups_held = false;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            // A connection that ended gives its memory back now, not at the next accept.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
            _ = ctx.broker.kafka_group_joined(), if owner && !groups_held => {
                groups_held = true;
                tick.reset();
                continue;
            }
            _ = tick.tick(), if owner && groups_held => {
                let mut groups = ctx.broker.kafka_groups();
                for (g, m) in groups.tick(std::time::Instant::now()) {
                    tracing::info!(group = %g, member = %m, "Kafka member removed: session or rebalance timed out");
                }
                groups_held = !groups.is_empty();
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
        let deadline = Instant::now() + ctx.auth.handshake_timeout();
        let Some(admitted) = ctx.auth.admit("kafka", peer.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = match ctx.slots.take() {
            Ok((s, evicted)) => {
                if evicted {
                    ctx.auth.pending_evicted("kafka");
                }
                s
            }
            Err(Full::All) => {
                ctx.stats
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "kafka connection refused: {} connections open", ctx.config.max_connections);
                continue;
            }
        };
        ctx.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        let ctx = Arc::clone(&ctx);
        let stop = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
            let accepted = match &tls {
                None => Ok((Accepted::Plain(stream), None)),
                Some(t) => ctx
                    .auth
                    .accept_tls(t, stream)
                    .await
                    .map(|(s, cn)| (Accepted::Tls(Box::new(s)), cn)),
            };
            let result = match accepted {
                Ok((stream, cn)) => {
                    let over_tls = tls.is_some();
                    let conn = Conn {
                        peer,
                        slot,
                        deadline,
                        over_tls,
                    };
                    connection(stream, cn, conn, &ctx, stop).await
                }
                Err(e) => Err(KafkaError::from(e)),
            };
            if let Err(reason) = result {
                ctx.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "kafka connection closed: {reason}");
            }
            ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
            drop(admitted);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// Reads one request (size prefix, then that many bytes). `Ok(None)`: the client closed the
/// connection between requests.
/// How long answers still pending may take once the broker stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// What came off the socket.
enum Read {
    Request(Vec<u8>),
    /// A request of this many bytes, over the limit; nothing of it read yet.
    Oversized(u64),
    /// The client closed the connection between requests.
    Closed,
}

async fn read_request(rd: &mut ReadHalf, max: usize) -> Result<Read, KafkaError> {
    let mut size = [0u8; 4];
    if rd.read_exact(&mut size).await.is_err() {
        return Ok(Read::Closed);
    }
    let size = i32::from_be_bytes(size);
    if size < 0 {
        return Err(KafkaError::Protocol(format!("request of {size} bytes")));
    }
    if size as usize > max {
        return Ok(Read::Oversized(size as u64));
    }
    // The buffer grows with the bytes that arrive, never to the size the peer claims.
    let mut body = Vec::with_capacity((size as usize).min(64 * 1024));
    match rd.take(size as u64).read_to_end(&mut body).await {
        Ok(n) if n == size as usize => Ok(Read::Request(body)),
        Ok(n) => Err(KafkaError::Protocol(format!(
            "connection lost inside a request ({n} of {size} bytes)"
        ))),
        Err(e) => Err(KafkaError::Protocol(format!(
            "connection lost inside a request: {e}"
        ))),
    }
}

/// Where a connection stands with its login.
enum Login {
    /// No login yet; `Some`: SaslHandshake chose this mechanism.
    Waiting(Option<Mechanism>),
    /// SCRAM's first message was answered.
    Scram(Box<Scram>),
    Done(Principal),
}

/// One accepted connection.
struct Conn {
    peer: SocketAddr,
    /// Its hold on the listener: in the pre-login half until it has logged in.
    slot: ConnSlot,
    /// The end of the time for the TLS handshake and the login.
    deadline: Instant,
    over_tls: bool,
}

/// Serves one connection; `Err` carries the reason it was closed for.
async fn connection(
    stream: Accepted,
    cert_user: Option<String>,
    conn: Conn,
    ctx: &Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), KafkaError> {
    let Conn {
        peer,
        mut slot,
        deadline,
        over_tls,
    } = conn;
    let (mut rd, mut wr) = stream.split();
    let in_flight = ctx.config.max_in_flight;
    let (tx, mut rx) = mpsc::channel::<Pending>(in_flight);
    // Once the broker stops, answers still pending get a short grace: a JoinGroup held for the
    // rest of its group (up to its rebalance timeout) or a long Fetch must not hold the
    // shutdown.
    let mut stop = shutdown.clone();
    let mut give_up = Box::pin(async move {
        let _ = stop.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    });
    // A client that does not read its answers is let go after the idle timeout, as one that
    // sends nothing is.
    let idle = ctx.config.idle_timeout.0;
    let mut writer = tokio::spawn(async move {
        async fn write(wr: &mut WriteHalf, out: &[u8], within: Duration) -> bool {
            matches!(
                tokio::time::timeout(within, write_flushed(wr, out)).await,
                Ok(Ok(()))
            )
        }
        let mut out = Vec::with_capacity(64 * 1024);
        while let Some(pending) = rx.recv().await {
            let answer = tokio::select! {
                a = pending => a,
                _ = &mut give_up => break,
            };
            match answer {
                Ok(Some(bytes)) => out.extend_from_slice(&bytes),
                Ok(None) => {}
                // The handler failed: the client cannot be answered in order any more.
                Err(_) => break,
            }
            if out.len() >= 256 * 1024 || rx.is_empty() {
                // A client that does not read holds the writer (and, its queue full, the
                // reader) only until the stop's grace.
                let written = tokio::select! {
                    biased;
                    ok = write(&mut wr, &out, idle) => ok,
                    _ = &mut give_up => false,
                };
                if !written {
                    return;
                }
                out.clear();
            }
        }
        if !out.is_empty() {
            let _ = write(&mut wr, &out, idle).await;
        }
        let _ = wr.shutdown().await;
    });
    let send_now = |bytes: Vec<u8>| {
        let (done, pending) = oneshot::channel();
        let _ = done.send(Some(bytes));
        pending
    };
    let auth = &ctx.auth;
    // A verified client certificate is the login (tls.cert_cn_as_username).
    let mut login = match cert_user {
        Some(cn) => {
            slot.logged_in();
            Login::Done(Principal::new(
                Arc::clone(auth),
                Some(auth.login_certificate(&cn)),
                "",
            ))
        }
        None => Login::Waiting(None),
    };
    let slots = Arc::new(Semaphore::new(in_flight));
    let max = ctx.config.max_request_size.bytes().sat_usize();
    let mut raw_sasl = false;
    let result = loop {
        // Until the login, one deadline from the accept and small requests; then the idle
        // timeout between requests.
        let logged_in = slot.is_logged_in();
        // Where anonymous clients are let in, the first request other than ApiVersions logs
        // in, so it may be as large as any (a producer's first Produce often is).
        let open = logged_in || auth.anonymous_allowed();
        let (limit, until) = if logged_in {
            (max, Instant::now() + idle)
        } else if open {
            (max, deadline)
        } else {
            (max.min(auth.max_frame_before_login()), deadline)
        };
        let read = tokio::select! {
            r = tokio::time::timeout_at(until, read_request(&mut rd, limit)) => r,
            _ = shutdown.wait_for(|s| *s) => break Ok(()),
            _ = slot.evicted(), if !logged_in => {
                break Err("closed before its login to make room for a newer connection".into());
            }
        };
        let body = match read {
            Ok(Ok(Read::Request(b))) => b,
            Ok(Ok(Read::Closed)) => break Ok(()),
            Ok(Ok(Read::Oversized(size))) => {
                if !open || size > (max * oversize::READ_THROUGH) as u64 {
                    break Err(KafkaError::Protocol(format!(
                        "request of {size} bytes (the limit here is {limit})"
                    )));
                }
                // A Produce a little over the limit is read through and answered
                // MESSAGE_TOO_LARGE; anything else closes the connection.
                let through = oversize::read_through(&mut rd, size, max);
                match tokio::time::timeout(idle, through).await {
                    Ok(Ok(answer)) => {
                        ctx.stats.requests.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%peer, size, "kafka: a Produce over kafka.max_request_size answered MESSAGE_TOO_LARGE");
                        if let Some(answer) = answer {
                            if tx.send(send_now(answer)).await.is_err() {
                                break Ok(());
                            }
                        }
                        continue;
                    }
                    Ok(Err(reason)) => break Err(reason),
                    Err(_) => {
                        break Err(KafkaError::Protocol(format!(
                            "a request of {size} bytes took over {idle:?}"
                        )));
                    }
                }
            }
            Ok(Err(reason)) => break Err(reason),
            Err(_) if logged_in => {
                tracing::info!(%peer, "kafka connection idle for {idle:?}; closing");
                break Ok(());
            }
            Err(_) => {
                auth.handshake_timed_out();
                break Err(KafkaError::Protocol(format!(
                    "no login within {:?} (auth.handshake_timeout)",
                    auth.handshake_timeout()
                )));
            }
        };
        ctx.stats.requests.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            break Ok(());
        };
        // After a SaslHandshake v0 the SASL tokens come and go bare, each behind its size.
        if raw_sasl && matches!(login, Login::Waiting(Some(_)) | Login::Scram(_)) {
            let client = "";
            let (step, next) = sasl_step(auth, peer, client, login, &body).await;
            login = next;
            match step {
                Ok(token) => {
                    let mut framed = (token.len().sat_i32()).to_be_bytes().to_vec();
                    framed.extend_from_slice(&token);
                    if tx.send(send_now(framed)).await.is_err() {
                        break Ok(());
                    }
                    if let Login::Done(_) = &login {
                        slot.logged_in();
                        raw_sasl = false;
                    }
                    continue;
                }
                // SASL v0 has no way to say why: the connection closes.
                Err(m) => break Err(KafkaError::Protocol(format!("SASL login failed: {m}"))),
            }
        }
        let mut frame = match codec::parse(Bytes::from(body)) {
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
        let version = frame.header.request_api_version;
        let id = frame.header.correlation_id;
        // The login: SaslHandshake, then SaslAuthenticate once (PLAIN) or twice (SCRAM).
        match frame.key {
            ApiKey::SaslHandshake => {
                let r: SaslHandshakeRequest = codec::body(&mut frame)?;
                let chosen = Mechanism::parse(r.mechanism.as_str()).filter(|_| auth.has_users());
                let code = match (&login, chosen) {
                    (Login::Waiting(None), Some(_)) => err::NONE,
                    (Login::Waiting(None), None) => err::UNSUPPORTED_SASL_MECHANISM,
                    _ => err::ILLEGAL_SASL_STATE,
                };
                let names = if auth.has_users() {
                    Mechanism::NAMES.iter().map(|n| admin::s(*n)).collect()
                } else {
                    Vec::new()
                };
                let resp = SaslHandshakeResponse::default()
                    .with_error_code(code)
                    .with_mechanisms(names);
                let bytes = codec::response(ApiKey::SaslHandshake, version, id, &resp)?;
                if tx.send(send_now(bytes)).await.is_err() {
                    break Ok(());
                }
                if code != err::NONE {
                    break Err(KafkaError::Protocol(format!(
                        "SASL mechanism {:?} refused{}",
                        r.mechanism.as_str(),
                        if auth.has_users() {
                            ""
                        } else {
                            " (no users file: nothing to log in with)"
                        }
                    )));
                }
                login = Login::Waiting(chosen);
                raw_sasl = version == 0;
                continue;
            }
            ApiKey::SaslAuthenticate => {
                let r: SaslAuthenticateRequest = codec::body(&mut frame)?;
                let client = frame.header.client_id.as_deref().unwrap_or("").to_string();
                let (step, next) = sasl_step(auth, peer, &client, login, &r.auth_bytes).await;
                login = next;
                let (code, message, bytes) = match &step {
                    Ok(b) => (err::NONE, None, b.clone()),
                    Err(m) => (
                        err::SASL_AUTHENTICATION_FAILED,
                        Some(admin::s(m.to_string())),
                        Vec::new(),
                    ),
                };
                let resp = SaslAuthenticateResponse::default()
                    .with_error_code(code)
                    .with_error_message(message)
                    .with_auth_bytes(Bytes::from(bytes));
                let bytes = codec::response(ApiKey::SaslAuthenticate, version, id, &resp)?;
                if tx.send(send_now(bytes)).await.is_err() {
                    break Ok(());
                }
                match step {
                    Err(m) => break Err(KafkaError::Protocol(format!("SASL login failed: {m}"))),
                    Ok(_) => {
                        if let Login::Done(p) = &login {
                            slot.logged_in();
                            tracing::debug!(%peer, user = p.name(), "kafka: logged in");
                        }
                        continue;
                    }
                }
            }
            _ => {}
        }
        let who = match &login {
            Login::Done(p) => p.clone(),
            // Anonymous, where allowed, once a request other than ApiVersions arrives.
            Login::Waiting(None) if frame.key == ApiKey::ApiVersions => {
                let answer = admin::api_versions(version, id)?;
                if tx.send(send_now(answer)).await.is_err() {
                    break Ok(());
                }
                continue;
            }
            Login::Waiting(None) => {
                let client = frame.header.client_id.as_deref().unwrap_or("");
                match auth.login(None, None, peer.ip()).await {
                    Ok(_) => {
                        let p = Principal::new(Arc::clone(auth), None, client);
                        slot.logged_in();
                        login = Login::Done(p.clone());
                        p
                    }
                    Err(refusal) => {
                        break Err(KafkaError::Protocol(format!(
                            "{:?} before a login: {refusal} (SASL PLAIN or SCRAM-SHA-512)",
                            frame.key
                        )));
                    }
                }
            }
            Login::Waiting(Some(_)) | Login::Scram(_) => {
                break Err(KafkaError::Protocol(format!(
                    "{:?} in the middle of a SASL login",
                    frame.key
                )));
            }
        };
        let (done, pending) = oneshot::channel();
        match start(ctx, frame, peer, &who, over_tls) {
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
    // The answers owed are sent; when the broker stops, within its grace (a client that
    // does not read them is not waited for longer).
    let stopping = async {
        let _ = shutdown.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = &mut writer => {}
        () = stopping => writer.abort(),
    }
    result
}

/// One SaslAuthenticate: the bytes to answer (or why the login failed) and the next state.
async fn sasl_step(
    auth: &Arc<crate::auth::Auth>,
    peer: SocketAddr,
    client: &str,
    login: Login,
    bytes: &[u8],
) -> (Result<Vec<u8>, SaslError>, Login) {
    let ip = peer.ip();
    match login {
        Login::Waiting(Some(Mechanism::Plain)) => {
            let (user, password) = match sasl::parse_plain(bytes) {
                Ok(x) => x,
                Err(e) => return (Err(e.into()), Login::Waiting(None)),
            };
            match auth.login(Some(&user), Some(&password), ip).await {
                Ok(Some(u)) => (
                    Ok(Vec::new()),
                    Login::Done(Principal::new(Arc::clone(auth), Some(u), client)),
                ),
                Ok(None) => (
                    Ok(Vec::new()),
                    Login::Done(Principal::new(Arc::clone(auth), None, client)),
                ),
                Err(refusal) => (
                    Err(SaslError::Refused { user, refusal }),
                    Login::Waiting(None),
                ),
            }
        }
        Login::Waiting(Some(Mechanism::ScramSha512)) => {
            let user = match Scram::user_of(bytes) {
                Ok((u, _, _)) => u,
                Err(e) => return (Err(e.into()), Login::Waiting(None)),
            };
            let secret = match auth.scram_secret(&user, ip) {
                Ok(s) => s,
                Err(refusal) => {
                    return (
                        Err(SaslError::Refused { user, refusal }),
                        Login::Waiting(None),
                    );
                }
            };
            match Scram::start(bytes, secret) {
                Ok((scram, first)) => (Ok(first), Login::Scram(Box::new(scram))),
                Err(e) => (Err(e), Login::Waiting(None)),
            }
        }
        Login::Scram(scram) => {
            let user = scram.user().to_string();
            let outcome = scram.finish(bytes);
            match auth.scram_done(&user, ip, outcome.is_ok()).await {
                Ok(u) => (
                    outcome,
                    Login::Done(Principal::new(Arc::clone(auth), Some(u), client)),
                ),
                Err(refusal) => (
                    Err(SaslError::Refused { user, refusal }),
                    Login::Waiting(None),
                ),
            }
        }
        other => (
            Err(SaslError::NoMechanism),
            match other {
                Login::Done(p) => Login::Done(p),
                _ => Login::Waiting(None),
            },
        ),
    }
}

/// A boxed handler future: the encoded answer, `None` for no answer.
pub type Answer = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<Vec<u8>>, KafkaError>> + Send + 'static>,
>;

/// How a request was started.
pub enum Started {
    /// Answered on the spot.
    Now(Option<Vec<u8>>),
    /// Answered by a task (durability, long poll, rebalance).
    Later(Answer),
}

/// Starts one request: quick ones are answered here, produces are appended here (in order).
fn start(
    ctx: &Arc<Ctx>,
    mut frame: codec::Frame,
    peer: SocketAddr,
    who: &Principal,
    over_tls: bool,
) -> Result<Started, KafkaError> {
    let listener = usize::from(over_tls);
    use crate::auth::Op;
    let key = frame.key;
    let version = frame.header.request_api_version;
    let id = frame.header.correlation_id;
    let now = |r: Vec<u8>| Ok(Started::Now(Some(r)));
    // JoinGroup, SyncGroup, Heartbeat and LeaveGroup need the group.
    let denied = |group: &GroupId| -> Option<Result<Started, KafkaError>> {
        (!who.allows(Op::Group(group.0.as_str())))
            .then(|| groups::group_denied(key, version, id).map(|r| Started::Now(Some(r))))
    };
    let who = who.clone();
    match key {
        ApiKey::ApiVersions => now(admin::api_versions(version, id)?),
        ApiKey::Metadata => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| {
                admin::metadata(c, &who, listener, r, version, id)
            })
        }
        ApiKey::CreateTopics => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| admin::create_topics(c, &who, r, version, id))
        }
        ApiKey::DeleteTopics => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| admin::delete_topics(c, &who, r, version, id))
        }
        ApiKey::DescribeConfigs => now(admin::describe_configs(
            ctx,
            &who,
            codec::body(&mut frame)?,
            version,
            id,
        )?),
        ApiKey::FindCoordinator => now(admin::find_coordinator(
            ctx,
            listener,
            codec::body(&mut frame)?,
            version,
            id,
        )?),
        ApiKey::Produce => data::produce(ctx, &who, codec::body(&mut frame)?, version, id),
        ApiKey::Fetch => Ok(Started::Later(data::fetch(
            Arc::clone(ctx),
            &who,
            codec::body(&mut frame)?,
            version,
            id,
        ))),
        ApiKey::ListOffsets => {
            let r: kafka_protocol::messages::ListOffsetsRequest = codec::body(&mut frame)?;
            // A lookup by time (not earliest or latest) reads the log.
            let by_time = r
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .any(|p| p.timestamp >= 0 || p.timestamp == -3);
            if by_time {
                blocking(ctx, move |c| data::list_offsets(c, &who, r, version, id))
            } else {
                now(data::list_offsets(ctx, &who, r, version, id)?)
            }
        }
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
            let r: JoinGroupRequest = codec::body(&mut frame)?;
            if let Some(d) = denied(&r.group_id) {
                return d;
            }
            Ok(Started::Later(groups::join(
                Arc::clone(ctx),
                r,
                version,
                id,
                client,
                peer,
            )))
        }
        ApiKey::SyncGroup => {
            let r: SyncGroupRequest = codec::body(&mut frame)?;
            if let Some(d) = denied(&r.group_id) {
                return d;
            }
            Ok(Started::Later(groups::sync(
                Arc::clone(ctx),
                r,
                version,
                id,
            )))
        }
        ApiKey::Heartbeat => {
            let r: HeartbeatRequest = codec::body(&mut frame)?;
            if let Some(d) = denied(&r.group_id) {
                return d;
            }
            now(groups::heartbeat(ctx, r, version, id)?)
        }
        ApiKey::LeaveGroup => {
            let r: LeaveGroupRequest = codec::body(&mut frame)?;
            if let Some(d) = denied(&r.group_id) {
                return d;
            }
            now(groups::leave(ctx, r, version, id)?)
        }
        ApiKey::OffsetCommit => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| groups::offset_commit(c, &who, r, version, id))
        }
        ApiKey::OffsetFetch => now(groups::offset_fetch(
            ctx,
            &who,
            codec::body(&mut frame)?,
            version,
            id,
        )?),
        ApiKey::DescribeGroups => now(groups::describe_groups(
            ctx,
            &who,
            codec::body(&mut frame)?,
            version,
            id,
        )?),
        ApiKey::ListGroups => now(groups::list_groups(
            ctx,
            &who,
            codec::body(&mut frame)?,
            version,
            id,
        )?),
        ApiKey::CreatePartitions => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| {
                admin::create_partitions(c, &who, r, version, id)
            })
        }
        ApiKey::DeleteRecords => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| data::delete_records(c, &who, r, version, id))
        }
        ApiKey::AlterConfigs => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| admin::alter_configs(c, &who, r, version, id))
        }
        ApiKey::IncrementalAlterConfigs => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| {
                admin::incremental_alter_configs(c, &who, r, version, id)
            })
        }
        ApiKey::DeleteGroups => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| groups::delete_groups(c, &who, r, version, id))
        }
        ApiKey::OffsetDelete => {
            let r = codec::body(&mut frame)?;
            blocking(ctx, move |c| groups::offset_delete(c, &who, r, version, id))
        }
        ApiKey::DescribeCluster => {
            drop(codec::body::<
                kafka_protocol::messages::DescribeClusterRequest,
            >(&mut frame)?);
            now(admin::describe_cluster(ctx, listener, version, id)?)
        }
        other => Err(KafkaError::Protocol(format!(
            "API {other:?} is not implemented"
        ))),
    }
}

/// Runs a handler that writes files or flushes metadata on the blocking pool.
fn blocking(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&Ctx) -> Result<Vec<u8>, KafkaError> + Send + 'static,
) -> Result<Started, KafkaError> {
    let ctx = Arc::clone(ctx);
    Ok(Started::Later(Box::pin(async move {
        tokio::task::spawn_blocking(move || f(&ctx))
            .await
            .map_err(|e| format!("handler task: {e}"))?
            .map(Some)
    })))
}
