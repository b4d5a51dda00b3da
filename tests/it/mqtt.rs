//! MQTT against a real server on loopback (`brook::serve::start` on `127.0.0.1:0`) with
//! rumqttc (3.1.1 and 5.0) and, for what a well-behaved client never sends, raw bytes.

use std::time::Duration;

use crate::common;
use brook::config::Config;
use brook::log::Visibility;
use brook::serve::{Running, start};
use brook::server::mqtt::Route;
use brook::units::ByteSize;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as m5;
use rumqttc::{Event, Incoming, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &std::path::Path) -> Config {
    common::server_config(dir)
}

/// Packets a client's event loop received, forwarded from its task.
struct Inbox<P> {
    rx: mpsc::UnboundedReceiver<P>,
}

impl<P> Inbox<P> {
    async fn expect(&mut self, f: impl Fn(&P) -> bool) -> P {
        loop {
            let p = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .expect("packet in time")
                .expect("connection open");
            if f(&p) {
                return p;
            }
        }
    }

    /// The next packet `pick` accepts, passed through it.
    async fn next<T>(&mut self, pick: impl Fn(P) -> Option<T>) -> T {
        loop {
            let p = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .expect("packet in time")
                .expect("connection open");
            if let Some(t) = pick(p) {
                return t;
            }
        }
    }

    /// No packet that `pick` accepts arrives for `d`.
    async fn quiet<T: std::fmt::Debug>(&mut self, d: Duration, pick: impl Fn(P) -> Option<T>) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if let Some(t) = pick(p) {
                panic!("unexpected message: {t:?}");
            }
        }
    }
}

/// A 3.1.1 client whose event loop runs in a task.
struct V4 {
    client: rumqttc::AsyncClient,
    inbox: Inbox<Incoming>,
    task: tokio::task::JoinHandle<()>,
}

fn v4_options(r: &Running, id: &str) -> rumqttc::MqttOptions {
    let mut o =
        rumqttc::MqttOptions::new(id, "127.0.0.1", r.mqtt_addr.expect("mqtt listener").port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

async fn v4(opts: rumqttc::MqttOptions) -> V4 {
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(e) = el.poll().await {
            if let Event::Incoming(p) = e {
                if tx.send(p).is_err() {
                    return;
                }
            }
        }
    });
    let mut c = V4 {
        client,
        inbox: Inbox { rx },
        task,
    };
    c.inbox.expect(|p| matches!(p, Incoming::ConnAck(_))).await;
    c
}

fn publish4(p: Incoming) -> Option<rumqttc::Publish> {
    match p {
        Incoming::Publish(p) => Some(p),
        _ => None,
    }
}

impl V4 {
    async fn publish(&mut self) -> rumqttc::Publish {
        self.inbox.next(publish4).await
    }

    async fn puback(&mut self) {
        self.inbox
            .expect(|p| matches!(p, Incoming::PubAck(_)))
            .await;
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        self.inbox
            .expect(|p| matches!(p, Incoming::SubAck(_)))
            .await;
    }

    async fn quiet(&mut self, d: Duration) {
        self.inbox.quiet(d, publish4).await;
    }

    /// Drops the connection without DISCONNECT (as a device losing power).
    fn kill(self) {
        self.task.abort();
    }

    async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect");
        let _ = tokio::time::timeout(WAIT, async {
            while self.inbox.rx.recv().await.is_some() {}
        })
        .await;
    }
}

/// A 5.0 client, as [`V4`].
struct V5 {
    client: rumqttc::v5::AsyncClient,
    inbox: Inbox<m5::Packet>,
    task: tokio::task::JoinHandle<()>,
}

fn v5_options(r: &Running, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o =
        rumqttc::v5::MqttOptions::new(id, "127.0.0.1", r.mqtt_addr.expect("mqtt listener").port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

async fn v5(opts: rumqttc::v5::MqttOptions) -> (V5, m5::ConnAck) {
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let p = match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p)) => p,
                Ok(_) => continue,
                // rumqttc reports a server's DISCONNECT as an error: pass it on as the packet.
                Err(rumqttc::v5::ConnectionError::MqttState(
                    rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
                )) => m5::Packet::Disconnect(m5::Disconnect::new(reason_code)),
                Err(_) => return,
            };
            if tx.send(p).is_err() {
                return;
            }
        }
    });
    let mut c = V5 {
        client,
        inbox: Inbox { rx },
        task,
    };
    let ack = c
        .inbox
        .next(|p| match p {
            m5::Packet::ConnAck(a) => Some(a),
            _ => None,
        })
        .await;
    (c, ack)
}

fn publish5(p: m5::Packet) -> Option<m5::Publish> {
    match p {
        m5::Packet::Publish(p) => Some(p),
        _ => None,
    }
}

impl V5 {
    async fn publish(&mut self) -> m5::Publish {
        self.inbox.next(publish5).await
    }

    async fn puback(&mut self) -> m5::PubAck {
        self.inbox
            .next(|p| match p {
                m5::Packet::PubAck(a) => Some(a),
                _ => None,
            })
            .await
    }

    async fn disconnected(&mut self) -> m5::DisconnectReasonCode {
        self.inbox
            .next(|p| match p {
                m5::Packet::Disconnect(d) => Some(d.reason_code),
                _ => None,
            })
            .await
    }

    async fn subscribe_with(&mut self, filter: m5::Filter, props: Option<m5::SubscribeProperties>) {
        self.client
            .subscribe_many_with_properties(
                [filter],
                props.unwrap_or(m5::SubscribeProperties {
                    id: None,
                    user_properties: vec![],
                }),
            )
            .await
            .expect("subscribe");
        self.inbox
            .expect(|p| matches!(p, m5::Packet::SubAck(_)))
            .await;
    }

    async fn subscribe(&mut self, filter: &str, qos: Q5) {
        self.subscribe_with(m5::Filter::new(filter, qos), None)
            .await
    }

    async fn quiet(&mut self, d: Duration) {
        self.inbox.quiet(d, publish5).await;
    }

    fn kill(self) {
        self.task.abort();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn records(r: &Running, topic: &str) -> Vec<brook::log::Record> {
    let t = r.broker.topic(topic).expect("topic exists");
    let mut out = Vec::new();
    for p in t.partitions() {
        let mut from = p.log_start();
        loop {
            let read = p.read(from, 1 << 20, Visibility::Written).expect("read");
            if read.frames.is_empty() {
                break;
            }
            for b in read.batches() {
                for rec in b.records() {
                    out.push(rec.expect("record").to_record());
                }
            }
            from = read.next_offset;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_all_qos_both_versions_routed_into_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.mqtt.route = vec![Route {
        filter: "factory/#".into(),
        topic: "factory".into(),
    }];
    let r = start(cfg).await.expect("start");
    let mut sub3 = v4(v4_options(&r, "sub3")).await;
    sub3.subscribe("factory/+/temp", QoS::ExactlyOnce).await;
    sub3.subscribe("misc/#", QoS::AtLeastOnce).await;
    let (mut sub5, _) = v5(v5_options(&r, "sub5")).await;
    sub5.subscribe("#", Q5::ExactlyOnce).await;
    let pub3 = v4(v4_options(&r, "pub3")).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        pub3.client
            .publish("factory/line1/temp", qos, false, format!("t{i}"))
            .await
            .expect("publish");
        pub3.client
            .publish("misc/x", qos, false, format!("m{i}"))
            .await
            .expect("publish");
    }
    // Order holds per MQTT topic (the two topics live in different log topics).
    let mut got: std::collections::BTreeMap<String, Vec<(String, u8)>> = Default::default();
    for _ in 0..6 {
        let p = sub3.publish().await;
        got.entry(p.topic.clone())
            .or_default()
            .push((text(&p.payload), p.qos as u8));
    }
    assert_eq!(
        got["factory/line1/temp"],
        [("t0".into(), 0), ("t1".into(), 1), ("t2".into(), 2)],
        "QoS as published (subscription allows 2)"
    );
    assert_eq!(
        got["misc/x"],
        [("m0".into(), 0), ("m1".into(), 1), ("m2".into(), 1)],
        "downgraded to the subscription's QoS 1"
    );
    let mut seen5 = Vec::new();
    for _ in 0..6 {
        let p = sub5.publish().await;
        seen5.push((text(&p.topic), text(&p.payload)));
    }
    assert_eq!(seen5.iter().filter(|(t, _)| t == "misc/x").count(), 3);
    // Routing: factory/# went to log topic "factory", the rest to "mqtt"; key = MQTT topic.
    let factory = records(&r, "factory").await;
    assert_eq!(factory.len(), 3);
    assert!(
        factory
            .iter()
            .all(|rec| rec.key.as_deref() == Some(&b"factory/line1/temp"[..]))
    );
    let qos_header: Vec<String> = factory
        .iter()
        .map(|rec| {
            text(
                rec.headers
                    .iter()
                    .find(|h| h.name == "mqtt.qos")
                    .expect("qos header")
                    .bytes(),
            )
        })
        .collect();
    assert_eq!(qos_header, ["0", "1", "2"]);
    let misc = records(&r, "mqtt").await;
    assert_eq!(misc.len(), 3);
    // Metrics count both ways.
    let m = reqwest_metrics(&r).await;
    assert!(
        m.contains("brook_mqtt_publishes_in_total{qos=\"1\"} 2"),
        "{m}"
    );
    assert!(m.contains("brook_mqtt_connections 3"), "{m}");
    r.stop().await.expect("stop");
}

async fn reqwest_metrics(r: &Running) -> String {
    let mut s = TcpStream::connect(r.http_addr.expect("http listener"))
        .await
        .expect("http");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_gets_what_it_missed_in_order_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(config(dir.path())).await.expect("start");
    let mut o = v4_options(&r, "away");
    o.set_clean_session(false);
    let mut sub = v4(o).await;
    sub.subscribe("sensors/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = v4(v4_options(&r, "pub")).await;
    for i in 0..500 {
        publ.client
            .publish(
                format!("sensors/{}", i % 3),
                QoS::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await
            .expect("publish");
    }
    // All acknowledged (durable) before the broker stops.
    let mut acked = 0;
    while acked < 500 {
        publ.puback().await;
        acked += 1;
    }
    publ.disconnect().await;
    r.stop().await.expect("stop");
    let r = start(config(dir.path())).await.expect("restart");
    let mut o = v4_options(&r, "away");
    o.set_clean_session(false);
    let mut sub = v4(o).await;
    let mut last = [None::<u32>; 3];
    for _ in 0..500 {
        let p = sub.publish().await;
        let n: u32 = text(&p.payload).parse().expect("number");
        let t = (n % 3) as usize;
        assert_eq!(p.topic, format!("sensors/{t}"));
        if let Some(prev) = last[t] {
            assert!(n > prev, "in order per topic: {n} after {prev}");
        }
        last[t] = Some(n);
    }
    sub.quiet(Duration::from_millis(300)).await;
    // Live delivery continues after the backlog.
    let publ = v4(v4_options(&r, "pub")).await;
    publ.client
        .publish("sensors/0", QoS::AtLeastOnce, false, "live")
        .await
        .expect("publish");
    assert_eq!(text(&sub.publish().await.payload), "live");
    r.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_set_delivered_cleared_and_kept_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(config(dir.path())).await.expect("start");
    let mut p = v4(v4_options(&r, "p")).await;
    p.client
        .publish("state/door", QoS::AtLeastOnce, true, "open")
        .await
        .expect("publish");
    p.puback().await;
    p.client
        .publish("state/light", QoS::AtLeastOnce, true, "on")
        .await
        .expect("publish");
    p.puback().await;
    let mut s = v4(v4_options(&r, "s")).await;
    s.subscribe("state/+", QoS::AtLeastOnce).await;
    let mut got = vec![];
    for _ in 0..2 {
        let m = s.publish().await;
        assert!(m.retain, "retained flag on delivery at subscribe");
        got.push((m.topic, text(&m.payload)));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("state/door".into(), "open".into()),
            ("state/light".into(), "on".into())
        ]
    );
    // Live messages to an existing subscription carry retain = 0 (3.1.1).
    p.client
        .publish("state/door", QoS::AtLeastOnce, true, "closed")
        .await
        .expect("publish");
    let m = s.publish().await;
    assert!(!m.retain);
    // An empty retained payload clears it.
    p.client
        .publish("state/light", QoS::AtLeastOnce, true, "")
        .await
        .expect("publish");
    p.puback().await;
    p.puback().await;
    r.stop().await.expect("stop");
    let r = start(config(dir.path())).await.expect("restart");
    let mut s = v4(v4_options(&r, "s2")).await;
    s.subscribe("state/#", QoS::AtMostOnce).await;
    let m = s.publish().await;
    assert_eq!(
        (m.topic.as_str(), text(&m.payload)),
        ("state/door", "closed".to_string())
    );
    s.quiet(Duration::from_millis(300)).await;
    r.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_published_on_a_lost_connection_not_on_disconnect_and_delayed_in_v5() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(config(dir.path())).await.expect("start");
    let mut watcher = v4(v4_options(&r, "watcher")).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    // Lost connection: the will goes out.
    let mut o = v4_options(&r, "dev1");
    o.set_last_will(rumqttc::LastWill::new(
        "wills/dev1",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let dev = v4(o).await;
    dev.kill();
    let m = watcher.publish().await;
    assert_eq!(
        (m.topic.as_str(), text(&m.payload)),
        ("wills/dev1", "gone".to_string())
    );
    // Clean DISCONNECT: no will.
    let mut o = v4_options(&r, "dev2");
    o.set_last_will(rumqttc::LastWill::new(
        "wills/dev2",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    v4(o).await.disconnect().await;
    watcher.quiet(Duration::from_millis(500)).await;
    // 5.0 will delay: back within the delay, no will.
    let will = |topic: &str, delay| {
        m5::LastWill::new(
            topic,
            "gone",
            Q5::AtLeastOnce,
            false,
            Some(m5::LastWillProperties {
                delay_interval: Some(delay),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: vec![],
            }),
        )
    };
    let mut o = v5_options(&r, "dev3");
    o.set_last_will(will("wills/dev3", 2));
    o.set_session_expiry_interval(Some(60));
    o.set_clean_start(false);
    let (dev, _) = v5(o).await;
    dev.kill();
    let mut o = v5_options(&r, "dev3");
    o.set_session_expiry_interval(Some(60));
    o.set_clean_start(false);
    let (dev, ack) = v5(o).await;
    assert!(ack.session_present);
    watcher.quiet(Duration::from_secs(3)).await;
    dev.kill();
    // Away for longer than the delay: the will goes out once it has passed.
    let mut o = v5_options(&r, "dev4");
    o.set_last_will(will("wills/dev4", 1));
    o.set_session_expiry_interval(Some(60));
    let (dev, _) = v5(o).await;
    let t0 = std::time::Instant::now();
    dev.kill();
    let m = watcher.publish().await;
    assert_eq!(m.topic, "wills/dev4");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "not before the delay"
    );
    r.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_gives_each_message_to_one_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(config(dir.path())).await.expect("start");
    let mut a = v4(v4_options(&r, "a")).await;
    a.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce).await;
    let (mut b, _) = v5(v5_options(&r, "b")).await;
    b.subscribe("$share/workers/jobs/#", Q5::AtLeastOnce).await;
    let p = v4(v4_options(&r, "p")).await;
    for i in 0..100 {
        p.client
            .publish(
                format!("jobs/{}", i % 7),
                QoS::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await
            .expect("publish");
    }
    let mut seen = std::collections::BTreeSet::new();
    let (mut na, mut nb) = (0, 0);
    while seen.len() < 100 {
        tokio::select! {
            Some(Incoming::Publish(m)) = a.inbox.rx.recv() => { assert!(seen.insert(text(&m.payload)), "twice"); na += 1; }
            Some(m5::Packet::Publish(m)) = b.inbox.rx.recv() => { assert!(seen.insert(text(&m.payload)), "twice"); nb += 1; }
            _ = tokio::time::sleep(WAIT) => panic!("only {} of 100 delivered", seen.len()),
        }
    }
    assert!(na > 0 && nb > 0, "both members got work: {na} and {nb}");
    a.quiet(Duration::from_millis(300)).await;
    b.quiet(Duration::from_millis(100)).await;
    r.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_features_aliases_options_request_response_assigned_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(config(dir.path())).await.expect("start");
    // Client id assignment.
    let (mut req, ack) = v5(v5_options(&r, "")).await;
    let props = ack.properties.expect("connack properties");
    let assigned = props.assigned_client_identifier.expect("assigned id");
    assert!(!assigned.is_empty());
    assert_eq!(props.topic_alias_max, Some(64));
    // Responder answers on the response topic with the correlation data.
    let (mut resp, _) = v5(v5_options(&r, "responder")).await;
    resp.subscribe("svc/echo", Q5::AtLeastOnce).await;
    req.subscribe("reply/me", Q5::AtLeastOnce).await;
    let props = m5::PublishProperties {
        response_topic: Some("reply/me".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00id-7")),
        user_properties: vec![("unit".into(), "C".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    req.client
        .publish_with_properties("svc/echo", Q5::AtLeastOnce, false, "ping", props)
        .await
        .expect("publish");
    let m = resp.publish().await;
    let p = m.properties.expect("properties passed through");
    assert_eq!(
        p.user_properties,
        vec![("unit".to_string(), "C".to_string())]
    );
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    let back = m5::PublishProperties {
        correlation_data: p.correlation_data.clone(),
        ..Default::default()
    };
    resp.client
        .publish_with_properties(
            p.response_topic.expect("response topic"),
            Q5::AtLeastOnce,
            false,
            "pong",
            back,
        )
        .await
        .expect("reply");
    resp.puback().await;
    let m = req.publish().await;
    assert_eq!(text(&m.payload), "pong");
    assert_eq!(
        m.properties.and_then(|p| p.correlation_data).as_deref(),
        Some(&b"\x00id-7"[..])
    );
    // No Local: my own messages are not sent back to me.
    let mut f = m5::Filter::new("chat", Q5::AtLeastOnce);
    f.nolocal = true;
    req.subscribe_with(f, None).await;
    req.client
        .publish("chat", Q5::AtLeastOnce, false, "mine")
        .await
        .expect("publish");
    req.quiet(Duration::from_millis(400)).await;
    // Retain handling 2: retained messages not sent on subscribe; retain as published.
    resp.client
        .publish("cfg/a", Q5::AtLeastOnce, true, "v1")
        .await
        .expect("publish");
    resp.puback().await;
    let mut f = m5::Filter::new("cfg/#", Q5::AtLeastOnce);
    f.retain_forward_rule = m5::RetainForwardRule::Never;
    f.preserve_retain = true;
    req.subscribe_with(
        f,
        Some(m5::SubscribeProperties {
            id: Some(42),
            user_properties: vec![],
        }),
    )
    .await;
    req.quiet(Duration::from_millis(300)).await;
    resp.client
        .publish("cfg/a", Q5::AtLeastOnce, true, "v2")
        .await
        .expect("publish");
    let m = req.publish().await;
    assert!(m.retain, "retain as published");
    assert_eq!(
        m.properties.expect("props").subscription_identifiers,
        vec![42]
    );
    // Topic alias from the client: first with the topic, then alias only.
    resp.subscribe("long/topic/name", Q5::AtMostOnce).await;
    let with_alias = |alias| m5::PublishProperties {
        topic_alias: Some(alias),
        ..Default::default()
    };
    req.client
        .publish_with_properties(
            "long/topic/name",
            Q5::AtMostOnce,
            false,
            "a1",
            with_alias(3),
        )
        .await
        .expect("publish");
    req.client
        .publish_with_properties("", Q5::AtMostOnce, false, "a2", with_alias(3))
        .await
        .expect("publish");
    for want in ["a1", "a2"] {
        let m = resp.publish().await;
        assert_eq!(
            (text(&m.topic), text(&m.payload)),
            ("long/topic/name".to_string(), want.to_string())
        );
    }
    req.kill();
    resp.kill();
    r.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_takeover_and_keep_alive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(config(dir.path())).await.expect("start");
    let (mut first, _) = v5(v5_options(&r, "same")).await;
    let (_second, _) = v5(v5_options(&r, "same")).await;
    assert_eq!(
        first.disconnected().await,
        m5::DisconnectReasonCode::SessionTakenOver
    );
    // Keep-alive of 1 s and then silence: closed after 1.5 s.
    let mut s = TcpStream::connect(r.mqtt_addr.expect("mqtt listener"))
        .await
        .expect("connect");
    s.write_all(&[
        0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 1, 0, 2, b'k', b'a',
    ])
    .await
    .expect("connect");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.expect("connack");
    assert_eq!(buf, [0x20, 2, 0, 0]);
    let t0 = std::time::Instant::now();
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("closed in time")
        .expect("read");
    assert_eq!(n, 0, "closed by the server");
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "not before 1.5 x keep-alive"
    );
    r.stop().await.expect("stop");
}

async fn raw_connect(r: &Running, id: &[u8], clean: bool) -> TcpStream {
    let mut s = TcpStream::connect(r.mqtt_addr.expect("mqtt listener"))
        .await
        .expect("connect");
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        if clean { 2 } else { 0 },
        0,
        60,
    ];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend(body);
    s.write_all(&pkt).await.expect("send connect");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.expect("connack");
    assert_eq!(ack[3], 0, "accepted");
    s
}

async fn closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("closed in time")
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_connection_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.mqtt.max_packet_size = ByteSize::kib(4);
    let r = start(cfg).await.expect("start");
    let mut watcher = v4(v4_options(&r, "watcher")).await;
    watcher.subscribe("#", QoS::AtMostOnce).await;
    // PUBLISH before CONNECT.
    let mut s = TcpStream::connect(r.mqtt_addr.expect("mqtt listener"))
        .await
        .expect("connect");
    s.write_all(&[0x30, 5, 0, 1, b'a', b'h', b'i'])
        .await
        .expect("send");
    closed(&mut s).await;
    // Wildcard in a PUBLISH topic.
    let mut s = raw_connect(&r, b"bad1", true).await;
    s.write_all(&[0x30, 5, 0, 1, b'#', b'h', b'i'])
        .await
        .expect("send");
    closed(&mut s).await;
    // SUBSCRIBE with reserved flags wrong.
    let mut s = raw_connect(&r, b"bad2", true).await;
    s.write_all(&[0x80, 6, 0, 1, 0, 1, b'a', 0])
        .await
        .expect("send");
    closed(&mut s).await;
    // Oversized packet: a 5.0 client gets DISCONNECT 0x95 (packet too large) as soon as the
    // fixed header announces it.
    let mut s = TcpStream::connect(r.mqtt_addr.expect("mqtt listener"))
        .await
        .expect("connect");
    s.write_all(&[
        0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 2, b'b', b'g',
    ])
    .await
    .expect("connect");
    let connack = read_packet(&mut s).await;
    assert_eq!(&connack[..4], &[0x20, connack[1], 0, 0], "accepted");
    s.write_all(&[0x30, 0xc0, 0x3e])
        .await
        .expect("header of an 8000-byte PUBLISH");
    assert_eq!(
        read_packet(&mut s).await,
        [0xe0, 2, 0x95, 0],
        "DISCONNECT packet too large"
    );
    closed(&mut s).await;
    // 3.1.1 with an empty client id and a persistent session: identifier rejected.
    let mut s = TcpStream::connect(r.mqtt_addr.expect("mqtt listener"))
        .await
        .expect("connect");
    s.write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0, 60, 0, 0])
        .await
        .expect("send");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.expect("connack");
    assert_eq!(ack, [0x20, 2, 0, 2]);
    // MQTT 3.1 (MQIsdp) is refused with "unacceptable protocol version".
    let mut s = TcpStream::connect(r.mqtt_addr.expect("mqtt listener"))
        .await
        .expect("connect");
    s.write_all(&[
        0x10, 14, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60, 0, 0,
    ])
    .await
    .expect("send");
    s.read_exact(&mut ack).await.expect("connack");
    assert_eq!(ack, [0x20, 2, 0, 1]);
    // Nothing was stored, and the good connection still works.
    assert!(
        r.broker.topic("mqtt").is_err(),
        "no log topic was even created"
    );
    let p = v4(v4_options(&r, "good")).await;
    p.client
        .publish("ok", QoS::AtLeastOnce, false, "fine")
        .await
        .expect("publish");
    let m = watcher.publish().await;
    assert_eq!(text(&m.payload), "fine");
    assert_eq!(records(&r, "mqtt").await.len(), 1);
    let metrics = reqwest_metrics(&r).await;
    assert!(
        !metrics.contains("brook_mqtt_protocol_errors_total 0"),
        "{metrics}"
    );
    r.stop().await.expect("stop");
}

/// Reads one MQTT packet (fixed header + body) from a raw stream.
async fn read_packet(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("in time")
        .expect("read");
    assert!(head[1] < 128, "short test packets only");
    let mut body = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut body).await.expect("body");
    let mut p = head.to_vec();
    p.extend(body);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_client_gone_between_pubrec_and_pubrel_stores_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(config(dir.path())).await.expect("start");
    let publish = [0x34u8, 8, 0, 3, b'q', b'/', b'2', 0, 1, b'X'];
    let mut s = raw_connect(&r, b"q2", false).await;
    s.write_all(&publish).await.expect("publish");
    assert_eq!(read_packet(&mut s).await, [0x50, 2, 0, 1], "PUBREC");
    drop(s);
    // Back with the session: the client resends PUBLISH with DUP (allowed before it saw
    // PUBREC), then PUBREL.
    let mut s = raw_connect(&r, b"q2", false).await;
    let mut dup = publish;
    dup[0] |= 0x08;
    s.write_all(&dup).await.expect("resend");
    assert_eq!(read_packet(&mut s).await, [0x50, 2, 0, 1], "PUBREC again");
    s.write_all(&[0x62, 2, 0, 1]).await.expect("pubrel");
    assert_eq!(read_packet(&mut s).await, [0x70, 2, 0, 1], "PUBCOMP");
    assert_eq!(records(&r, "mqtt").await.len(), 1, "stored exactly once");
    r.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_log_v5_gets_quota_exceeded_v311_is_held_until_the_log_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.topic_defaults.segment_size = ByteSize::kib(64);
    cfg.topic_defaults.max_batch_size = ByteSize::kib(16);
    // A packet becomes one batch: the MQTT limit fits the log's.
    cfg.mqtt.max_packet_size = ByteSize::kib(8);
    cfg.topic_defaults.retention_size = ByteSize::kib(130);
    cfg.validate().expect("valid config");
    cfg.topic_defaults.on_full = brook::log::OnFull::Reject;
    let r = start(cfg).await.expect("start");
    let (mut p5, _) = v5(v5_options(&r, "p5")).await;
    let payload = vec![7u8; 2000];
    let mut refused = None;
    for i in 0..200 {
        p5.client
            .publish("fill", Q5::AtLeastOnce, false, payload.clone())
            .await
            .expect("publish");
        if p5.puback().await.reason == m5::PubAckReason::QuotaExceeded {
            refused = Some(i);
            break;
        }
    }
    assert!(refused.is_some(), "the log filled up and said so");
    let stored = records(&r, "mqtt").await.len();
    // 3.1.1 QoS 1 from a client with a 1 s keep-alive: no PUBACK while full, and no close
    // either: its PINGREQs are answered for the 3 s it waits (twice its keep-alive), the
    // refusal is counted once, not at every retry.
    let refused = || async {
        let h = r.http_addr.expect("http listener").to_string();
        let body = brook::client::http_get(&h, "/metrics", None)
            .await
            .expect("metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("brook_mqtt_refused_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("brook_mqtt_refused_total")
    };
    let before = refused().await;
    let (mut p3, connack) = connect_keep_alive(&r, 4, 1).await;
    assert_eq!(connack, [0x20, 2, 0, 0]);
    let mut publish = vec![0x32];
    varint(2 + 4 + 2 + 2000, &mut publish);
    publish.extend_from_slice(&[0, 4, b'f', b'i', b'l', b'l', 0, 1]);
    publish.extend(std::iter::repeat_n(b'w', 2000));
    p3.write_all(&publish).await.expect("PUBLISH");
    for _ in 0..6 {
        p3.write_all(&[0xc0, 0]).await.expect("PINGREQ");
        let answer = read_packet(&mut p3).await;
        assert_eq!(answer, [0xd0, 0], "PINGRESP, not a PUBACK or a close");
        tokio::time::sleep(Duration::from_millis(500)).await; // the client's own pace
    }
    assert_eq!(refused().await, before + 1, "counted once");
    assert_eq!(
        records(&r, "mqtt").await.len(),
        stored,
        "nothing stored, nothing touched"
    );
    // Space comes back (here: the operator deletes the topic; it is created again on use).
    r.broker.delete_topic("mqtt").expect("delete");
    assert_eq!(
        read_packet(&mut p3).await,
        [0x40, 2, 0, 1],
        "the PUBACK at last"
    );
    let recs = records(&r, "mqtt").await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].value, Some(vec![b'w'; 2000]));
    r.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_the_extra_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.mqtt.max_connections = 2;
    let r = start(cfg).await.expect("start");
    let _a = raw_connect(&r, b"a", true).await;
    let _b = raw_connect(&r, b"b", true).await;
    let mut c = TcpStream::connect(r.mqtt_addr.expect("mqtt listener"))
        .await
        .expect("tcp");
    let mut ack = [0u8; 4];
    c.read_exact(&mut ack).await.expect("refusal");
    assert_eq!(ack, [0x20, 2, 0, 3], "server unavailable");
    closed(&mut c).await;
    r.stop().await.expect("stop");
}

/// A subscriber that stops reading while thousands of messages arrive (its socket and then its
/// queue fill up) loses none of them: what did not fit is read back from the log, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_too_slow_for_live_delivery_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(config(dir.path())).await.expect("start");
    let mut slow = raw_connect(&r, b"slow", true).await;
    // SUBSCRIBE pkid 1 to "load/#" QoS 0, then stop reading.
    slow.write_all(&[0x82, 11, 0, 1, 0, 6, b'l', b'o', b'a', b'd', b'/', b'#', 0])
        .await
        .expect("subscribe");
    assert_eq!(read_packet(&mut slow).await, [0x90, 3, 0, 1, 0], "SUBACK");
    let mut p = v4(v4_options(&r, "fast")).await;
    let n = 6000u32;
    let pad = "x".repeat(1000);
    for i in 0..n {
        p.client
            .publish("load/a", QoS::AtLeastOnce, false, format!("{i:06}{pad}"))
            .await
            .expect("publish");
    }
    for _ in 0..n {
        p.puback().await;
    }
    // Now read everything the slow subscriber was sent.
    let mut buf = bytes::BytesMut::new();
    let mut next = 0u32;
    while next < n {
        match rumqttc::mqttbytes::v4::Packet::read(&mut buf, usize::MAX) {
            Ok(rumqttc::mqttbytes::v4::Packet::Publish(m)) => {
                let seq: u32 = text(&m.payload[..6]).parse().expect("sequence");
                assert_eq!(seq, next, "in order, none missing");
                next += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                let n = tokio::time::timeout(WAIT, slow.read_buf(&mut buf))
                    .await
                    .expect("more in time")
                    .expect("read");
                assert!(n > 0, "connection open");
            }
            Err(e) => panic!("bad packet: {e}"),
        }
    }
    let m = reqwest_metrics(&r).await;
    let read_back: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("brook_mqtt_read_back_total "))
        .expect("metric present")
        .parse()
        .expect("number");
    assert!(
        read_back > 0,
        "the live queue overflowed and the log was read back: {m}"
    );
    r.stop().await.expect("stop");
}

/// A persistent subscriber stops reading while large QoS 1 messages arrive, so the server's
/// write to it blocks; the client then comes back on a new connection (as after a network
/// change). The new connection resumes the session at once (session present) and gets every
/// message: the blocked write gives way to the takeover instead of holding the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_held_by_a_connection_that_stopped_reading_is_taken_over_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(config(dir.path())).await.expect("start");
    let mut stuck = raw_connect(&r, b"stuck", false).await;
    // SUBSCRIBE pkid 1 to "big/#" QoS 1, then stop reading.
    stuck
        .write_all(&[0x82, 10, 0, 1, 0, 5, b'b', b'i', b'g', b'/', b'#', 1])
        .await
        .expect("subscribe");
    assert_eq!(read_packet(&mut stuck).await, [0x90, 3, 0, 1, 1], "SUBACK");
    // 64 in flight of 200 KB: more than loopback's socket buffers hold.
    let mut opts = v4_options(&r, "big-pub");
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let mut p = v4(opts).await;
    let n = 100u32;
    let pad = "x".repeat(200 * 1024);
    for i in 0..n {
        p.client
            .publish("big/a", QoS::AtLeastOnce, false, format!("{i:06}{pad}"))
            .await
            .expect("publish");
    }
    for _ in 0..n {
        p.puback().await;
    }
    let mut back = TcpStream::connect(r.mqtt_addr.expect("mqtt listener"))
        .await
        .expect("connect");
    back.write_all(&[
        0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0, 60, 0, 5, b's', b't', b'u', b'c', b'k',
    ])
    .await
    .expect("CONNECT");
    let mut buf = bytes::BytesMut::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut connack = None;
    while seen.len() < n as usize {
        match rumqttc::mqttbytes::v4::Packet::read(&mut buf, usize::MAX) {
            Ok(rumqttc::mqttbytes::v4::Packet::ConnAck(a)) => connack = Some(a),
            Ok(rumqttc::mqttbytes::v4::Packet::Publish(m)) => {
                let seq: u32 = text(&m.payload[..6]).parse().expect("sequence");
                seen.insert(seq);
                let mut ack = bytes::BytesMut::new();
                rumqttc::mqttbytes::v4::PubAck::new(m.pkid)
                    .write(&mut ack)
                    .expect("PUBACK");
                back.write_all(&ack).await.expect("send PUBACK");
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                let got = tokio::time::timeout(WAIT, back.read_buf(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("stalled with {} of {n} messages", seen.len()))
                    .expect("read");
                assert!(got > 0, "connection open ({} of {n} messages)", seen.len());
            }
            Err(e) => panic!("bad packet: {e}"),
        }
        if let Some(a) = &connack {
            assert_eq!(
                (a.session_present, a.code),
                (true, rumqttc::mqttbytes::v4::ConnectReturnCode::Success),
                "the session is resumed, not started anew"
            );
        }
    }
    assert_eq!(seen.len(), n as usize);
    drop(stuck);
    r.stop().await.expect("stop");
}

/// A 3.1.1 client with `keep_alive` (clean session) subscribed to "flood/#" at QoS 0 that reads
/// nothing after its SUBACK, and 48 MB published to it: more than loopback's socket buffers
/// hold (a receive buffer may grow to 32 MiB), so the server's writes to it block.
async fn deaf_subscriber(r: &Running, keep_alive: u16) -> TcpStream {
    let (mut deaf, connack) = connect_keep_alive(r, 4, keep_alive).await;
    assert_eq!(connack, [0x20, 2, 0, 0]);
    deaf.write_all(&[
        0x82, 12, 0, 1, 0, 7, b'f', b'l', b'o', b'o', b'd', b'/', b'#', 0,
    ])
    .await
    .expect("subscribe");
    assert_eq!(read_packet(&mut deaf).await, [0x90, 3, 0, 1, 0], "SUBACK");
    let mut opts = v4_options(r, "flood-pub");
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let mut p = v4(opts).await;
    let pad = "x".repeat(200 * 1024);
    for i in 0..240 {
        p.client
            .publish("flood/a", QoS::AtLeastOnce, false, format!("{i:06}{pad}"))
            .await
            .expect("publish");
    }
    for _ in 0..240 {
        p.puback().await;
    }
    deaf
}

/// A client that stops reading (the server's writes to it block, so its PINGREQs go unread
/// too) is closed after 1.5 times its keep-alive, as a silent one is: it holds no connection,
/// task or buffer for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_its_keep_alive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(config(dir.path())).await.expect("start");
    let deaf = deaf_subscriber(&r, 2).await;
    let connections = || async {
        let m = reqwest_metrics(&r).await;
        m.lines()
            .find_map(|l| l.strip_prefix("brook_mqtt_connections "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("brook_mqtt_connections")
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while connections().await > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client that does not read is still connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(deaf);
    r.stop().await.expect("stop");
}

/// The broker stops (SIGTERM) while a client with a long keep-alive does not read what it was
/// sent: the stop does not wait for that client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_stops_while_a_client_does_not_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(config(dir.path())).await.expect("start");
    let deaf = deaf_subscriber(&r, 600).await;
    tokio::time::timeout(WAIT, r.stop())
        .await
        .expect("stopped in time")
        .expect("stop");
    drop(deaf);
}

/// A raw CONNECT of `version` (4: 3.1.1, 5) with `keep_alive`; returns the stream and the
/// CONNACK packet.
async fn connect_keep_alive(r: &Running, version: u8, keep_alive: u16) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(r.mqtt_addr.expect("mqtt listener"))
        .await
        .expect("connect");
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', version, 2];
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if version == 5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&[0, 2, b'k', b'a']);
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend(body);
    s.write_all(&pkt).await.expect("CONNECT");
    let connack = read_packet(&mut s).await;
    (s, connack)
}

/// `mqtt.max_keepalive`: a 3.1.1 client asking for more (or for none: 0) is refused with
/// CONNACK 2, as Mosquitto does; a 5.0 client is accepted and told the bound as Server Keep
/// Alive (0x13) in its CONNACK; a client within the bound is told nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.mqtt.max_keepalive = 100;
    let r = start(cfg).await.expect("start");
    for asked in [0u16, 101] {
        let (mut s, connack) = connect_keep_alive(&r, 4, asked).await;
        assert_eq!(connack, [0x20, 2, 0, 2], "3.1.1 keep-alive {asked}");
        closed(&mut s).await;
        let (_s, connack) = connect_keep_alive(&r, 5, asked).await;
        assert_eq!(connack[3], 0, "5.0 keep-alive {asked} accepted");
        assert!(
            connack.windows(3).any(|w| w == [0x13, 0, 100]),
            "Server Keep Alive 100 in {connack:?}"
        );
    }
    let (_s, connack) = connect_keep_alive(&r, 4, 100).await;
    assert_eq!(connack, [0x20, 2, 0, 0]);
    let (_s, connack) = connect_keep_alive(&r, 5, 60).await;
    assert_eq!(connack[3], 0);
    assert!(!connack.windows(1).any(|w| w == [0x13]), "{connack:?}");
    r.stop().await.expect("stop");
}

/// Inbound QoS 2 flow control: a 5.0 publisher's QoS 2 messages hold their place in the
/// Receive Maximum (64) until PUBCOMP, not PUBREC; the 65th unreleased one gets DISCONNECT
/// 0x93; the 64 before it were stored once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_qos2_quota_is_released_at_pubcomp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(config(dir.path())).await.expect("start");
    let (mut s, connack) = connect_keep_alive(&r, 5, 60).await;
    assert_eq!(connack[3], 0);
    let publish = |id: u16| {
        let mut body = vec![0, 1, b'q'];
        body.extend_from_slice(&id.to_be_bytes());
        body.push(0); // no properties
        body.extend_from_slice(b"m");
        let mut pkt = vec![0x34, body.len() as u8];
        pkt.extend(body);
        pkt
    };
    // One released at once: its place is free again.
    s.write_all(&publish(1)).await.expect("publish");
    assert_eq!(read_packet(&mut s).await[..4], [0x50, 2, 0, 1], "PUBREC 1");
    s.write_all(&[0x62, 2, 0, 1]).await.expect("PUBREL");
    assert_eq!(read_packet(&mut s).await[..4], [0x70, 2, 0, 1], "PUBCOMP 1");
    for id in 2..=65u16 {
        s.write_all(&publish(id)).await.expect("publish");
        let rec = read_packet(&mut s).await;
        assert_eq!(rec[0], 0x50, "PUBREC {id}: {rec:?}");
    }
    s.write_all(&publish(66)).await.expect("one too many");
    assert_eq!(
        read_packet(&mut s).await[..3],
        [0xe0, 2, 0x93],
        "DISCONNECT receive maximum exceeded"
    );
    closed(&mut s).await;
    let recs = records(&r, "mqtt").await;
    assert_eq!(recs.len(), 65, "each stored once");
    r.stop().await.expect("stop");
}

/// Reads one MQTT packet of any size: (first byte, body).
async fn read_whole_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut first = [0u8; 1];
    tokio::time::timeout(WAIT, s.read_exact(&mut first))
        .await
        .expect("in time")
        .expect("read");
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("length");
        len |= usize::from(b[0] & 0x7f) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.expect("body");
    (first[0], body)
}

use crate::common::mqtt_varint as varint;

/// A QoS 1 PUBLISH to "big/<tag>" of exactly `total` bytes; 5.0 ones carry `user_props` empty
/// user properties (the costliest to store: one more byte each as record headers).
fn publish_of_size(total: usize, v5: bool, user_props: usize, tag: &str) -> Vec<u8> {
    let topic = format!("big/{tag}");
    let mut props = Vec::new();
    for _ in 0..user_props {
        props.extend_from_slice(&[0x26, 0, 0, 0, 0]);
    }
    let mut head = Vec::new();
    head.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    head.extend_from_slice(topic.as_bytes());
    head.extend_from_slice(&[0, 7]);
    if v5 {
        varint(props.len(), &mut head);
        head.extend_from_slice(&props);
    }
    // 1 byte of type and flags, 3 bytes of remaining length (up to 2 MiB).
    let remaining = total - 4;
    let payload = remaining - head.len();
    let mut pkt = vec![0x32];
    varint(remaining, &mut pkt);
    assert_eq!(pkt.len(), 4);
    pkt.extend_from_slice(&head);
    pkt.extend(std::iter::repeat_n(b'p', payload));
    assert_eq!(pkt.len(), total);
    pkt
}

/// Every packet `mqtt.max_packet_size` admits fits the log: a 5.0 PUBLISH of exactly the
/// limit (from a client with a 256-byte id, the longest, half its bytes empty user properties) and a
/// 3.1.1 one are acknowledged, delivered to a subscriber, and read back after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_at_the_size_limit_fit_the_log_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let limit = cfg.mqtt.max_packet_size.bytes() as usize;
    let r = start(cfg.clone()).await.expect("start");
    let mut sub = raw_connect(&r, b"big-sub", true).await;
    let mut subscribe = vec![0, 1, 0, 5];
    subscribe.extend_from_slice(b"big/#");
    subscribe.push(1);
    let mut pkt = vec![0x82, subscribe.len() as u8];
    pkt.extend(subscribe);
    sub.write_all(&pkt).await.expect("SUBSCRIBE");
    assert_eq!(read_whole_packet(&mut sub).await.0, 0x90, "SUBACK");
    // 5.0, the longest client id.
    let id = "i".repeat(256);
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut connect = vec![0x10];
    varint(body.len(), &mut connect);
    connect.extend(body);
    let mut v5 = TcpStream::connect(r.mqtt_addr.expect("mqtt listener"))
        .await
        .expect("connect");
    v5.write_all(&connect).await.expect("CONNECT");
    let (kind, ack) = read_whole_packet(&mut v5).await;
    assert_eq!((kind, ack[1]), (0x20, 0), "CONNACK");
    // One byte longer: refused, 0x85 (client identifier not valid).
    let mut long = TcpStream::connect(r.mqtt_addr.expect("mqtt listener"))
        .await
        .expect("connect");
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 1, 1];
    body.extend(std::iter::repeat_n(b'i', 257));
    let mut connect = vec![0x10];
    varint(body.len(), &mut connect);
    connect.extend(body);
    long.write_all(&connect).await.expect("CONNECT");
    let (kind, ack) = read_whole_packet(&mut long).await;
    assert_eq!((kind, ack[1]), (0x20, 0x85), "a 257-byte client id");
    v5.write_all(&publish_of_size(limit, true, limit / 10, "v5"))
        .await
        .expect("PUBLISH");
    let (kind, ack) = read_whole_packet(&mut v5).await;
    assert_eq!(kind, 0x40, "PUBACK");
    assert!(ack.len() == 2 || ack[2] == 0, "PUBACK reason {ack:?}");
    let mut v3 = raw_connect(&r, b"big-v3", true).await;
    v3.write_all(&publish_of_size(limit, false, 0, "v3"))
        .await
        .expect("PUBLISH");
    assert_eq!(read_whole_packet(&mut v3).await.0, 0x40, "PUBACK");
    for _ in 0..2 {
        let (kind, body) = read_whole_packet(&mut sub).await;
        assert_eq!(kind & 0xf0, 0x30, "delivered");
        // The 5.0 one's user properties do not go to a 3.1.1 subscriber: half its size.
        assert!(body.len() > limit / 2 - 1000, "{} bytes", body.len());
        let at = 2 + usize::from(body[1]);
        let pkid = [body[at], body[at + 1]];
        sub.write_all(&[0x40, 2, pkid[0], pkid[1]])
            .await
            .expect("PUBACK");
    }
    let sizes = |recs: Vec<brook::log::Record>| {
        let mut v: Vec<usize> = recs.iter().map(|r| r.value_bytes().len()).collect();
        v.sort();
        v
    };
    let before = sizes(records(&r, "mqtt").await);
    assert_eq!(before.len(), 2);
    r.stop().await.expect("stop");
    let r = start(cfg).await.expect("restart");
    assert_eq!(
        sizes(records(&r, "mqtt").await),
        before,
        "both read back after a restart"
    );
    r.stop().await.expect("stop");
}

/// `$SYS/#`: Mosquitto's topics and Brook's own are published every `mqtt.sys_interval`; a
/// new subscriber gets the latest at once (retained), and the next round live; the counters
/// count; nothing lands in the log; `#` does not match them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_are_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.mqtt.sys_interval = brook::units::HumanDuration::secs(1);
    let r = start(cfg).await.expect("start");
    let mut all = v4(v4_options(&r, "everything")).await;
    all.client
        .subscribe("#", QoS::AtMostOnce)
        .await
        .expect("subscribe #");
    let mut p = v4(v4_options(&r, "pub")).await;
    for _ in 0..3 {
        p.client
            .publish("plain/t", QoS::AtLeastOnce, false, b"x".to_vec())
            .await
            .expect("publish");
        p.inbox.expect(|p| matches!(p, Incoming::PubAck(_))).await;
    }
    let mut sys = v4(v4_options(&r, "sys")).await;
    sys.client
        .subscribe("$SYS/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe $SYS/#");
    let mut seen = std::collections::BTreeMap::new();
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/bytes/received",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/load/messages/received/1min",
        "$SYS/brook/log/bytes",
        "$SYS/brook/partitions",
    ];
    // The retained round comes at once (it may predate these clients); a later one counts them.
    let counted = |seen: &std::collections::BTreeMap<String, String>| {
        wanted.iter().all(|t| seen.contains_key(*t))
            && seen["$SYS/broker/clients/connected"] == "3"
            && seen["$SYS/broker/messages/received"]
                .parse::<u64>()
                .is_ok_and(|n| n >= 3)
            && seen["$SYS/brook/partitions"] != "0"
    };
    while !counted(&seen) {
        let p = sys
            .inbox
            .next(|p| match p {
                Incoming::Publish(p) => Some(p),
                _ => None,
            })
            .await;
        seen.insert(
            p.topic.clone(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        );
    }
    assert!(
        seen["$SYS/broker/version"].starts_with("brook "),
        "{seen:?}"
    );
    assert_ne!(seen["$SYS/broker/bytes/received"], "0", "{seen:?}");
    // `#` saw the plain messages only.
    let got = all
        .inbox
        .next(|p| match p {
            Incoming::Publish(p) => Some(p.topic),
            _ => None,
        })
        .await;
    assert_eq!(got, "plain/t");
    all.inbox
        .quiet(Duration::from_millis(1500), |p| match p {
            Incoming::Publish(p) if p.topic.starts_with("$SYS") => Some(p.topic),
            _ => None,
        })
        .await;
    let recs = records(&r, "mqtt").await;
    assert_eq!(recs.len(), 3, "no $SYS message in the log");
    r.stop().await.expect("stop");
}

/// A QoS 2 PUBLISH stored just before the broker went down, whose PUBREC the client never
/// got, is resent (DUP) after the restart with the same packet id: it is acknowledged and not
/// stored a second time. A new message under that packet id afterwards (DUP clear) is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_resend_after_a_restart_is_not_stored_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let r = start(cfg.clone()).await.expect("start");
    let publish = [0x34u8, 10, 0, 3, b'q', b'/', b'r', 0, 5, b'o', b'n', b'e'];
    let mut s = raw_connect(&r, b"q2-restart", false).await;
    s.write_all(&publish).await.expect("publish");
    // Stored and acknowledged; the client is taken to have missed the PUBREC.
    assert_eq!(read_packet(&mut s).await, [0x50, 2, 0, 5], "PUBREC");
    drop(s);
    r.stop().await.expect("stop");
    let r = start(cfg).await.expect("restart");
    let mut s = raw_connect(&r, b"q2-restart", false).await;
    let mut dup = publish;
    dup[0] |= 0x08;
    s.write_all(&dup).await.expect("resend");
    assert_eq!(read_packet(&mut s).await, [0x50, 2, 0, 5], "PUBREC again");
    s.write_all(&[0x62, 2, 0, 5]).await.expect("pubrel");
    assert_eq!(read_packet(&mut s).await, [0x70, 2, 0, 5], "PUBCOMP");
    assert_eq!(records(&r, "mqtt").await.len(), 1, "stored once");
    // The packet id is free again: a new message under it is stored.
    s.write_all(&publish).await.expect("a new message, same id");
    assert_eq!(read_packet(&mut s).await, [0x50, 2, 0, 5], "PUBREC");
    assert_eq!(
        records(&r, "mqtt").await.len(),
        2,
        "a new message is stored"
    );
    r.stop().await.expect("stop");
}

/// Partitions added to a live MQTT log topic (Kafka's CreatePartitions, `Broker::add_partitions`)
/// are delivered from too: the hub starts their dispatchers at its next housekeeping, from their
/// first record, so messages routed to them reach subscribers.
#[tokio::test]
async fn partitions_added_to_an_mqtt_log_topic_are_delivered_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let log_topic = cfg.mqtt.default_topic.clone();
    let r = start(cfg).await.expect("start");
    let mut sub = v4(v4_options(&r, "grow-sub")).await;
    sub.subscribe("grow/#", QoS::AtLeastOnce).await;
    let publ = v4(v4_options(&r, "grow-pub")).await;
    publ.client
        .publish("grow/first", QoS::AtLeastOnce, false, "first")
        .await
        .expect("publish");
    assert_eq!(text(&sub.publish().await.payload), "first");
    let before = r
        .broker
        .topic(&log_topic)
        .expect("log topic")
        .partitions()
        .len();
    r.broker
        .add_partitions(&log_topic, before as u32 + 3)
        .expect("grow");
    // Many MQTT topics (the record keys): some land in the new partitions.
    let names: Vec<String> = (0..40).map(|i| format!("grow/{i}")).collect();
    for n in &names {
        publ.client
            .publish(n.as_str(), QoS::AtLeastOnce, false, n.clone())
            .await
            .expect("publish");
    }
    let mut got = std::collections::BTreeSet::new();
    while got.len() < names.len() {
        got.insert(text(&sub.publish().await.payload));
    }
    let t = r.broker.topic(&log_topic).expect("log topic");
    let in_new: u64 = t.partitions()[before..]
        .iter()
        .map(|p| p.end_offset())
        .sum();
    assert!(in_new > 0, "some messages went to the new partitions");
    r.stop().await.expect("stop");
}

/// `mqtt.sync_delay`: a client publishing on its own clock (quiet for four times the delay
/// after its last PUBACK) has its QoS 1 message held for the write and fsync it may share: it
/// is delivered, and acknowledged, no sooner than the delay; a client that publishes again as
/// soon as it is acknowledged is never held, nor is a first publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_its_own_clock_is_held_for_a_shared_fsync_and_an_eager_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    let delay = Duration::from_secs(1);
    cfg.mqtt.sync_delay = brook::units::HumanDuration(delay);
    // The periodic flush fsyncs whatever is written (a held fsync too): not within the test.
    cfg.log.flush_interval = brook::units::HumanDuration::secs(60);
    let r = start(cfg).await.expect("start");
    let mut sub = v4(v4_options(&r, "watcher")).await;
    sub.subscribe("clock/#", QoS::AtLeastOnce).await;
    let mut dev = v4(v4_options(&r, "device")).await;

    let publish = async |c: &mut V4, payload: &str| {
        c.client
            .publish("clock/a", QoS::AtLeastOnce, false, payload.to_string())
            .await
            .expect("publish");
    };
    let started = std::time::Instant::now();
    publish(&mut dev, "first").await;
    dev.puback().await;
    assert!(
        started.elapsed() < delay,
        "a first publish was held: {:?}",
        started.elapsed()
    );
    assert_eq!(&sub.publish().await.payload[..], b"first");

    // Quiet for longer than four times the delay: the device reports on its own clock now.
    tokio::time::sleep(delay * 4 + Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    publish(&mut dev, "second").await;
    assert_eq!(&sub.publish().await.payload[..], b"second");
    let delivered = started.elapsed();
    dev.puback().await;
    let acked = started.elapsed();
    for (what, after) in [("delivered", delivered), ("acknowledged", acked)] {
        assert!(
            after >= delay - Duration::from_millis(50),
            "{what} after {after:?}, before the write and fsync it may wait for"
        );
    }

    // A client that publishes again as soon as it is acknowledged: never held.
    let mut eager = v4(v4_options(&r, "eager")).await;
    let started = std::time::Instant::now();
    for i in 0..5 {
        publish(&mut eager, &format!("eager {i}")).await;
        eager.puback().await;
    }
    assert!(
        started.elapsed() < delay * 4,
        "5 publishes acknowledged one after the other took {:?}",
        started.elapsed()
    );
}
