//! The MQTT front end: MQTT 3.1.1 and 5.0 over TCP, served from the log.
//!
//! Every accepted PUBLISH is appended to a log topic chosen by `[[mqtt.route]]` (first
//! matching filter; else `mqtt.default_topic`, created on first use) with the MQTT topic as
//! the record key ([`message`] has the record layout). Subscribers are served from the log:
//! live through the [`hub`]'s per-partition dispatchers and subscription [`crate::topic_filter::Trie`], and
//! after an absence (persistent session) or a lag by reading the log back from the session's
//! position, so an offline subscriber's queue is the log itself, bounded by retention.
//!
//! | module | job |
//! |---|---|
//! | [`codec`] | framing, server-side validation, 3.1.1/5.0 reading via rumqttc's `mqttbytes`, writing |
//! | [`message`] | an MQTT message as a log record and back |
//! | [`session`] | the session state machine (no I/O) |
//! | [`hub`] | routing, dispatchers, session registry, retained messages |
//! | [`conn`] | one connection's task: bytes in and out, actions carried out |
//! | [`inbox`] | a connection's queue of deliveries and takeover requests, sized to its contents |
//! | [`ingest`] | the publishes of one turn of a connection gathered into one batch per partition |
//! | [`pressure`] | push-back from subscribers falling behind to the connections publishing |
//! | [`sys`] | `$SYS/#`: the broker's figures, Mosquitto's topics and Brook's own |
//! | [`ws`] | MQTT over WebSockets: the upgrade, messages as a byte stream |
//!
//! Ingest: the publishes a connection reads in one turn are appended as one batch per log
//! partition ([`ingest`]); publishing connections are held back briefly while a live
//! subscriber falls behind ([`pressure`]).
//!
//! Acknowledgements: QoS 0 is appended without waiting; the PUBACK (QoS 1) and PUBREC (QoS 2)
//! go out once the record has `mqtt.durability` (default `durable`: fsynced; concurrent
//! publishes share one fsync). For a client publishing on its own clock (no acknowledgement
//! outstanding, nothing sent for four times `mqtt.sync_delay` since its last one: a device
//! reporting every so often) the record may be held up to `mqtt.sync_delay` (5 ms) to share
//! one write and fsync with other publishes; it is delivered after that fsync, together with
//! the PUBACK (a connection writes the messages waiting for it with its acknowledgements). A
//! client that waits for each acknowledgement, or keeps several in flight, is never held. QoS 2 is exactly-once within a session: a packet id whose
//! PUBREC was sent is remembered until PUBREL, so a resent PUBLISH is not stored twice; across
//! a broker crash, a resent PUBLISH (DUP) is recognised in the log ([`hub::Hub::stored_recently`]).
//! When the log refuses an append (`reject` policy at its budget): QoS 0 is dropped and
//! counted; 5.0 QoS 1/2 get reason code 0x97; 3.1.1 QoS 1/2 get no acknowledgement and the
//! connection is not read until the log accepts the message, so it stays with the client.
//!
//! Persistent sessions (3.1.1 clean session = 0; 5.0 session expiry > 0) keep their
//! subscriptions, one position per log partition (the lowest offset not sent) and the QoS 1/2
//! messages in flight (packet id, stage, log position) in the metadata store: flushed before
//! SUBACK, at disconnect, and before the connection writes a QoS 1/2 PUBLISH or a PUBREL
//! (write-ahead, one group-committed flush per turn of the connection loop; written every second
//! otherwise). After a crash the session resumes: messages in flight are read back from the log
//! and sent again with their packet ids and DUP (PUBREL where PUBREC had come), nothing that
//! completed is sent again, and the rest is read from the stored positions ([`session`]'s
//! "Durable delivery state").
//!
//! Shared subscriptions (`$share/GROUP/filter`) are delivered live only: each message goes to
//! one connected member (the next one whose queue has room); with no member able to take it,
//! it is counted in `brook_mqtt_dropped_total{reason="shared_full"}` (it stays in the log).
//! Logins and the ACL come from [`crate::auth`]: the CONNECT's user name and password (or a
//! TLS client certificate's CN), then every PUBLISH, will and SUBSCRIBE is checked.
//! A broker shutdown sends 5.0 clients DISCONNECT 0x8B, keeps their sessions and publishes no
//! wills (the clients are not gone; the broker is).

pub mod codec;
pub mod conn;
pub mod hub;
pub mod inbox;
pub mod ingest;
pub mod message;
pub mod pressure;
pub mod session;
pub mod sys;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{Full, ListenerSlots};
use crate::log::Durability;
use crate::net::tls::{Accepted, TlsServer};
use crate::units::Narrow;
use crate::units::{BadSetting, ByteSize, HumanDuration};
use hub::Hub;

/// One routing rule: MQTT topic filter → log topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub filter: String,
    pub topic: String,
}

/// The longest `mqtt.sync_delay` accepted.
const MAX_SYNC_DELAY: Duration = Duration::from_secs(1);

/// `[mqtt]` in brook.toml.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Connections open at once; more are refused. Default 4096.
    pub max_connections: usize,
    /// Largest packet accepted. Default "1MiB".
    pub max_packet_size: ByteSize,
    /// What a QoS 1 PUBACK / QoS 2 PUBREC promises. Default durable.
    pub durability: Durability,
    /// How long a durable publish may be held to share its write and fsync with other
    /// publishes (delivered and acknowledged after them), for a client publishing on its own
    /// clock: no acknowledgement outstanding, nothing sent for four times this since its last
    /// one. Default "5ms"; "0s": never.
    pub sync_delay: HumanDuration,
    /// Unacknowledged QoS 1/2 messages per session, each way. Default 64.
    pub max_inflight: u16,
    /// Topic aliases a 5.0 client may use. Default 64.
    pub topic_alias_max: u16,
    /// Cap on session expiry; "none": no cap. Default "none".
    pub max_session_expiry: HumanDuration,
    /// Longest keep-alive a client may ask for, seconds (Mosquitto's `max_keepalive`); a
    /// keep-alive of 0 (none) counts as longer. 5.0 clients are told this as Server Keep Alive,
    /// 3.1.1 clients asking for more are refused (CONNACK 2). 0: no bound. Default 65535.
    pub max_keepalive: u16,
    /// How often `$SYS/#` is published ([`sys`]). Default "10s"; "0s": never.
    pub sys_interval: HumanDuration,
    /// Log topic for unrouted messages. Default "mqtt".
    pub default_topic: String,
    /// Routing rules, first match wins.
    pub route: Vec<Route>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_connections: 4096,
            max_packet_size: ByteSize::mib(1),
            durability: Durability::Durable,
            sync_delay: HumanDuration::millis(5),
            max_inflight: 64,
            topic_alias_max: 64,
            max_session_expiry: HumanDuration(Duration::ZERO),
            max_keepalive: u16::MAX,
            sys_interval: HumanDuration::secs(10),
            default_topic: "mqtt".into(),
            route: Vec::new(),
        }
    }
}

impl MqttConfig {
    /// The session expiry cap in seconds (`u32::MAX`: none).
    pub fn max_session_expiry_secs(&self) -> u32 {
        if self.max_session_expiry.0.is_zero() {
            u32::MAX
        } else {
            u32::try_from(self.max_session_expiry.0.as_secs()).unwrap_or(u32::MAX)
        }
    }

    /// Checks the section; the message names the key.
    pub fn validate(&self) -> Result<(), BadSetting> {
        if self.max_connections == 0 {
            return Err(BadSetting::new(
                "mqtt.max_connections",
                "must be at least 1",
            ));
        }
        let size = self.max_packet_size.bytes();
        // The largest packet must fit one log batch a reader takes (64 MiB, headers and
        // framing included): about 53 MiB. (MQTT itself stops at 268,435,455 bytes.)
        let max = (crate::log::record::MAX_FRAME_LEN as u64 - 1024) * 5 / 6;
        if !(1024..=max).contains(&size) {
            return Err(BadSetting::new(
                "mqtt.max_packet_size",
                format!(
                    "{} is outside 1KiB..={max} bytes (about {}MiB): a packet becomes one log batch, and a batch is at most 64MiB with its headers",
                    self.max_packet_size,
                    max >> 20
                ),
            ));
        }
        if self.max_inflight == 0 {
            return Err(BadSetting::new("mqtt.max_inflight", "must be at least 1"));
        }
        if self.sync_delay.0 > MAX_SYNC_DELAY {
            return Err(BadSetting::new(
                "mqtt.sync_delay",
                format!(
                    "{} is above {}: an acknowledgement would wait that long for its fsync",
                    self.sync_delay,
                    HumanDuration(MAX_SYNC_DELAY)
                ),
            ));
        }
        crate::log::store::validate_topic_name(&self.default_topic)
            .map_err(|e| BadSetting::new("mqtt.default_topic", e))?;
        for (i, r) in self.route.iter().enumerate() {
            crate::topic_filter::validate_filter(&r.filter).map_err(|e| {
                BadSetting::new(
                    format!("mqtt.route[{i}].filter"),
                    format!("{:?}: {e}", r.filter),
                )
            })?;
            crate::log::store::validate_topic_name(&r.topic)
                .map_err(|e| BadSetting::new(format!("mqtt.route[{i}].topic"), e))?;
        }
        Ok(())
    }
}

/// Counters and gauges for `/metrics`.
#[derive(Debug, Default)]
pub struct MqttStats {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub sessions: AtomicU64,
    pub subscriptions: AtomicU64,
    pub retained: AtomicU64,
    pub packets_in: AtomicU64,
    /// PUBLISH received, by QoS.
    pub publishes_in: [AtomicU64; 3],
    /// PUBLISH sent, by QoS (redeliveries included).
    pub publishes_out: [AtomicU64; 3],
    /// QoS 0 messages the log refused (full, `reject` policy).
    pub dropped_qos0: AtomicU64,
    /// QoS 1/2 messages the log refused (answered 0x97 under 5.0, held under 3.1.1).
    pub refused: AtomicU64,
    /// Shared-subscription messages no member could take.
    pub dropped_shared: AtomicU64,
    pub wills: AtomicU64,
    pub takeovers: AtomicU64,
    /// MQTT bytes read from and written to clients.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Connections refused: their client id's session belongs to another user.
    pub foreign_refused: AtomicU64,
    /// Times a connection's queue overflowed and it read the log back instead.
    pub read_back: AtomicU64,
    pub protocol_errors: AtomicU64,
}

impl MqttStats {
    /// Prometheus text lines.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, kind, help, v) in [
            (
                "brook_mqtt_connections",
                "gauge",
                "Open MQTT connections.",
                &self.connections,
            ),
            (
                "brook_mqtt_connections_total",
                "counter",
                "MQTT connections accepted.",
                &self.connections_total,
            ),
            (
                "brook_mqtt_connections_refused_total",
                "counter",
                "MQTT connections refused at max_connections.",
                &self.connections_refused,
            ),
            (
                "brook_mqtt_sessions",
                "gauge",
                "MQTT sessions, connected or kept for an absent client.",
                &self.sessions,
            ),
            (
                "brook_mqtt_subscriptions",
                "gauge",
                "Subscriptions of connected MQTT clients.",
                &self.subscriptions,
            ),
            (
                "brook_mqtt_retained",
                "gauge",
                "Retained MQTT messages.",
                &self.retained,
            ),
            (
                "brook_mqtt_refused_total",
                "counter",
                "QoS 1/2 messages the log refused (full, reject policy).",
                &self.refused,
            ),
            (
                "brook_mqtt_wills_total",
                "counter",
                "Will messages published.",
                &self.wills,
            ),
            (
                "brook_mqtt_takeovers_total",
                "counter",
                "Sessions taken over by a new connection.",
                &self.takeovers,
            ),
            (
                "brook_mqtt_foreign_session_refusals_total",
                "counter",
                "Connections refused: their client id's session belongs to another user.",
                &self.foreign_refused,
            ),
            (
                "brook_mqtt_read_back_total",
                "counter",
                "Times a subscriber too slow for live delivery read the log back instead.",
                &self.read_back,
            ),
            (
                "brook_mqtt_protocol_errors_total",
                "counter",
                "MQTT connections closed for a protocol violation.",
                &self.protocol_errors,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                g(v)
            );
        }
        for (name, help, by_qos) in [
            (
                "brook_mqtt_publishes_in_total",
                "PUBLISH packets received, by QoS.",
                &self.publishes_in,
            ),
            (
                "brook_mqtt_publishes_out_total",
                "PUBLISH packets sent, by QoS.",
                &self.publishes_out,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (q, a) in by_qos.iter().enumerate() {
                let _ = writeln!(out, "{name}{{qos=\"{q}\"}} {}", g(a));
            }
        }
        let name = "brook_mqtt_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} MQTT messages not delivered or not stored, by reason.\n# TYPE {name} counter"
        );
        let _ = writeln!(
            out,
            "{name}{{reason=\"log_full_qos0\"}} {}",
            g(&self.dropped_qos0)
        );
        let _ = writeln!(
            out,
            "{name}{{reason=\"shared_full\"}} {}",
            g(&self.dropped_shared)
        );
    }
}

/// Accepts MQTT connections until `shutdown` turns true: over TLS with `tls`, over WebSockets
/// with `ws`. At shutdown the `owner` also waits for the hub's background tasks and runs its
/// housekeeping a last time (`serve` runs it every second until then).
pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    owner: bool,
    ws: bool,
    hub: Arc<Hub>,
    slots: Arc<ListenerSlots>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            // A connection that ended gives its memory back now, not at the next accept.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        };
        let (mut stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("mqtt listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + hub.auth.handshake_timeout();
        let Some(admitted) = hub.auth.admit("mqtt", peer.ip()) else {
            continue;
        };
        let slot = match slots.take() {
            Ok((s, evicted)) => {
                if evicted {
                    hub.auth.pending_evicted("mqtt");
                }
                s
            }
            Err(Full::All) => {
                hub.stats
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "mqtt connection refused: {} connections open", hub.config.max_connections);
                // CONNACK "server unavailable" (3.1.1 code 3, read by 5.0 clients as a refusal).
                let _ = stream.write_all(&[0x20, 2, 0, 3]).await;
                continue;
            }
        };
        let hub = Arc::clone(&hub);
        let stop = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            let accepted = match &tls {
                None => Ok((Accepted::Plain(stream), None)),
                Some(t) => hub
                    .auth
                    .accept_tls(t, stream)
                    .await
                    .map(|(s, cn)| (Accepted::Tls(Box::new(s)), cn)),
            };
            // Over WebSockets: the upgrade too, within the same deadline.
            let accepted = match accepted {
                Ok((s, cn)) if ws => {
                    let max = hub.config.max_packet_size.bytes().sat_usize() + 1024;
                    match tokio::time::timeout_at(deadline, ws::accept(s, max)).await {
                        Ok(Ok(w)) => Ok((Accepted::Carried(Box::new(w)), cn)),
                        Ok(Err(e)) => Err(e),
                        Err(_) => {
                            hub.auth.handshake_timed_out();
                            Err(conn::BeforeConnect::WebSocketTimeout)
                        }
                    }
                }
                other => other.map_err(conn::BeforeConnect::from),
            };
            match accepted {
                Ok((s, cn)) => conn::serve(s, cn, peer, slot, deadline, hub, stop).await,
                Err(e) => {
                    hub.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, "mqtt: closing connection: {e}");
                }
            }
            drop(admitted);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    if !owner {
        return;
    }
    hub.join_background().await;
    let h = Arc::clone(&hub);
    let _ = tokio::task::spawn_blocking(move || h.housekeeping()).await;
}
