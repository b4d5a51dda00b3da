//! `direction = "in"` from an MQTT broker: one persistent session subscribes to the `topics`
//! filters at QoS 1, with manual acknowledgements: each message is appended durably to the
//! local topic (`topic_template`, one name: the record key is the MQTT topic, as for MQTT
//! publishes into Brook) before its PUBACK goes back, so a message is never acknowledged
//! unstored; the broker queues what arrives while the link is down. A crash between an append
//! and the broker reading its PUBACKs brings those messages again (MQTT's at-least-once).
//!
//! **MQTT 5** (the default): clean start off and the session kept for 30 days of absence;
//! messages that arrive together (at most the session's Receive Maximum, 100, should be
//! unacknowledged at a time) are stored in one append. A broker that ignores the Receive
//! Maximum (Mosquitto 2.0.11 does for a returning session's queue) can have sent, and so send
//! again, thousands. User properties become record headers.
//!
//! **MQTT 3.1.1** (`mqtt_version = "3.1.1"`): clean session off, so the broker keeps the
//! session for as long as it keeps sessions; how many messages are unacknowledged at a time is
//! the broker's setting (Mosquitto: `max_inflight_messages`, 20 by default). No properties:
//! records carry only `brook.upstream.topic`.

use super::MirrorError;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::cursor::CursorKey;
use super::inbound::{append_local, ensure_local, local_name};
use super::sink::mqtt_host_port;
use super::status::{LinkState, MirrorStatus};
use super::{Link, MirrorConfig, back_off, now_ms, record_bytes};
use crate::broker::Broker;
use crate::log::{Header, Record};

/// How long the broker keeps the session (and queues for it) while the device is away: 30
/// days. Not "never" (0xFFFFFFFF): Mosquitto 2.0.11 then saves no queue when it restarts.
const SESSION_EXPIRY_SECS: u32 = 30 * 24 * 3600;

/// Messages in flight from the broker to us at most (MQTT 5 Receive Maximum), and the most
/// stored in one append: bounds what one append holds, and what a crash between an append and
/// its PUBACKs brings again.
const RECEIVE_MAXIMUM: u16 = 100;

/// Runs an `in` mirror of an MQTT broker: one persistent session subscribed to the filters,
/// each message stored durably before its PUBACK.
pub(super) async fn run_mqtt(
    broker: Arc<Broker>,
    cfg: Arc<MirrorConfig>,
    node: Arc<str>,
    status: Arc<MirrorStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = local_name(&cfg, &node, "");
    let key: CursorKey = (cfg.name.clone(), local.clone(), 0);
    let client_id = format!("brook-{node}-{}-in", cfg.name);
    let link = Link::for_mirror(&cfg);
    let mut backoff = cfg.backoff_min.0;
    status.update(&key, |s| s.state = LinkState::Starting);
    loop {
        let session = MqttSession {
            broker: &broker,
            cfg: &cfg,
            link: &link,
            local: &local,
            key: &key,
            status: &status,
            client_id: &client_id,
        };
        let Some(failure) = session.run(&mut backoff, &mut shutdown).await else {
            return;
        };
        let failure = format!("bringing in failed: {failure}");
        if !back_off(&cfg, &key, &status, &mut backoff, failure, &mut shutdown).await {
            return;
        }
    }
}

/// One connection of an MQTT mirror in.
struct MqttSession<'a> {
    broker: &'a Broker,
    cfg: &'a MirrorConfig,
    link: &'a Link,
    local: &'a str,
    key: &'a CursorKey,
    status: &'a MirrorStatus,
    client_id: &'a str,
}

/// A message from the upstream, kept until it is acknowledged.
enum Publish {
    V5(rumqttc::v5::mqttbytes::v5::Publish),
    V311(rumqttc::Publish),
}

/// What the MQTT event loop task hands the session.
enum Incoming {
    Publish(Publish),
    /// Every filter acknowledged (or why not).
    Subscribed(Result<(), MirrorError>),
    Failed(MirrorError),
}

/// The session's client half: acknowledgements and the goodbye.
enum Client {
    V5(rumqttc::v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

impl Client {
    async fn ack(&self, p: &Publish) -> Result<(), MirrorError> {
        let r = match (self, p) {
            (Client::V5(c), Publish::V5(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            (Client::V311(c), Publish::V311(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            _ => Err("a message of the other protocol version".into()),
        };
        r.map_err(|e| MirrorError::Upstream(format!("ack: {e}")))
    }

    async fn disconnect(&self) {
        match self {
            Client::V5(c) => drop(c.disconnect().await),
            Client::V311(c) => drop(c.disconnect().await),
        }
    }
}

/// Sends `item` to the session; `false` once the session is gone or the item ends it.
fn forward(tx: &mpsc::UnboundedSender<Incoming>, item: Incoming) -> bool {
    let failed = matches!(item, Incoming::Failed(_));
    tx.send(item).is_ok() && !failed
}

impl MqttSession<'_> {
    /// An MQTT 5 session; its event loop runs in the returned task, feeding `tx`.
    async fn connect_v5(
        &self,
        tx: mpsc::UnboundedSender<Incoming>,
    ) -> Result<(Client, JoinHandle<()>), MirrorError> {
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
        use rumqttc::v5::{AsyncClient, Event, MqttOptions};
        let (host, port) = mqtt_host_port(&self.cfg.upstream[0]);
        let mut o = MqttOptions::new(self.client_id, host, port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_transport(self.link.mqtt_transport());
        if let Some((user, password)) = self.link.login() {
            o.set_credentials(user.clone(), password.clone());
        }
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(SESSION_EXPIRY_SECS));
        o.set_manual_acks(true);
        o.set_receive_maximum(Some(RECEIVE_MAXIMUM));
        let (client, mut events) =
            AsyncClient::new(o, self.cfg.topics.len() + usize::from(RECEIVE_MAXIMUM));
        // Queued now, sent once connected (every time: the broker may have lost the session).
        for f in &self.cfg.topics {
            client
                .subscribe(f.clone(), QoS::AtLeastOnce)
                .await
                .map_err(|e| format!("subscribe {f:?}: {e}"))?;
        }
        let poller = tokio::spawn(async move {
            loop {
                let item = match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => Incoming::Publish(Publish::V5(p)),
                    Ok(Event::Incoming(Packet::SubAck(a))) => Incoming::Subscribed(
                        match a
                            .return_codes
                            .iter()
                            .find(|r| !matches!(r, SubscribeReasonCode::Success(_)))
                        {
                            Some(r) => Err(MirrorError::Upstream(format!(
                                "subscription refused: {r:?}"
                            ))),
                            None => Ok(()),
                        },
                    ),
                    Ok(_) => continue,
                    Err(e) => Incoming::Failed(MirrorError::Upstream(format!("mqtt: {e}"))),
                };
                if !forward(&tx, item) {
                    return;
                }
            }
        });
        Ok((Client::V5(client), poller))
    }

    /// As [`Self::connect_v5`], over MQTT 3.1.1.
    async fn connect_v311(
        &self,
        tx: mpsc::UnboundedSender<Incoming>,
    ) -> Result<(Client, JoinHandle<()>), MirrorError> {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
        let (host, port) = mqtt_host_port(&self.cfg.upstream[0]);
        let mut o = MqttOptions::new(self.client_id, host, port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_transport(self.link.mqtt_transport());
        if let Some((user, password)) = self.link.login() {
            o.set_credentials(user.clone(), password.clone());
        }
        o.set_clean_session(false);
        o.set_manual_acks(true);
        let (client, mut events) =
            AsyncClient::new(o, self.cfg.topics.len() + usize::from(RECEIVE_MAXIMUM));
        for f in &self.cfg.topics {
            client
                .subscribe(f.clone(), QoS::AtLeastOnce)
                .await
                .map_err(|e| format!("subscribe {f:?}: {e}"))?;
        }
        let poller = tokio::spawn(async move {
            loop {
                let item = match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => Incoming::Publish(Publish::V311(p)),
                    Ok(Event::Incoming(Packet::SubAck(a))) => Incoming::Subscribed(
                        match a
                            .return_codes
                            .iter()
                            .find(|r| !matches!(r, SubscribeReasonCode::Success(_)))
                        {
                            Some(r) => Err(MirrorError::Upstream(format!(
                                "subscription refused: {r:?}"
                            ))),
                            None => Ok(()),
                        },
                    ),
                    Ok(_) => continue,
                    Err(e) => Incoming::Failed(MirrorError::Upstream(format!("mqtt: {e}"))),
                };
                if !forward(&tx, item) {
                    return;
                }
            }
        });
        Ok((Client::V311(client), poller))
    }

    /// Connects, subscribes and stores messages until a failure (returned) or shutdown (`None`).
    /// The event loop runs in its own task (it must keep polling for acknowledgements to go
    /// out); messages that arrived together are stored as one durable append, then
    /// acknowledged.
    async fn run(
        &self,
        backoff: &mut Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<MirrorError> {
        if let Err(e) = ensure_local(self.broker, self.cfg, self.local, 1) {
            return Some(e);
        }
        if let Err(e) = self.link.usable() {
            return Some(e);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let connected = if self.cfg.mqtt_311() {
            self.connect_v311(tx).await
        } else {
            self.connect_v5(tx).await
        };
        let (client, poller) = match connected {
            Ok(c) => c,
            Err(e) => return Some(e),
        };
        let failure = loop {
            let item = tokio::select! {
                item = rx.recv() => item,
                _ = shutdown.wait_for(|s| *s) => None,
            };
            let first = match item {
                None if *shutdown.borrow() => {
                    client.disconnect().await;
                    poller.abort();
                    return None;
                }
                None => break MirrorError::from("mqtt event loop ended"),
                Some(Incoming::Failed(e)) => break e,
                Some(Incoming::Subscribed(Err(e))) => break e,
                Some(Incoming::Subscribed(Ok(()))) => {
                    *backoff = self.cfg.backoff_min.0;
                    self.status
                        .update(self.key, |s| s.state = LinkState::Connected);
                    continue;
                }
                Some(Incoming::Publish(p)) => p,
            };
            // Whatever else already arrived goes in the same append.
            let mut publishes = vec![first];
            let mut after: Option<Incoming> = None;
            while publishes.len() < usize::from(RECEIVE_MAXIMUM) {
                match rx.try_recv() {
                    Ok(Incoming::Publish(p)) => publishes.push(p),
                    Ok(other) => {
                        after = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let records: Vec<Record> = publishes.iter().map(record_of).collect();
            let bytes: u64 = records.iter().map(record_bytes).sum();
            if let Err(e) = append_local(self.broker, self.local, u32::MAX, &records).await {
                break e;
            }
            let mut acked = Ok(());
            for p in &publishes {
                acked = client.ack(p).await;
                if acked.is_err() {
                    break;
                }
            }
            if let Err(e) = acked {
                break e;
            }
            self.status.update(self.key, |s| {
                s.state = LinkState::Connected;
                s.read(records.len() as u64, bytes);
                s.sent(records.len() as u64, bytes, now_ms());
            });
            match after {
                Some(Incoming::Failed(e)) | Some(Incoming::Subscribed(Err(e))) => break e,
                _ => {}
            }
        };
        poller.abort();
        Some(failure)
    }
}

/// The local record of an MQTT message: key = the MQTT topic, user properties (MQTT 5) as
/// headers plus `brook.upstream.topic`.
fn record_of(p: &Publish) -> Record {
    let (mqtt_topic, payload, mut headers) = match p {
        Publish::V5(p) => (
            String::from_utf8_lossy(&p.topic).into_owned(),
            p.payload.to_vec(),
            p.properties
                .as_ref()
                .map(|pr| {
                    pr.user_properties
                        .iter()
                        .map(|(k, v)| Header::new(k.clone(), v.as_bytes()))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        Publish::V311(p) => (p.topic.clone(), p.payload.to_vec(), Vec::new()),
    };
    headers.push(Header::new("brook.upstream.topic", mqtt_topic.as_bytes()));
    Record {
        timestamp: now_ms(),
        key: Some(mqtt_topic.into_bytes()),
        value: Some(payload),
        headers,
    }
}
