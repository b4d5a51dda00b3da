//! `brook bench mqtt`: MQTT 3.1.1 publishers and subscribers over loopback against a real
//! broker: a `brook serve` started as a child on a fresh data directory, or any MQTT broker at
//! `--target` (Mosquitto, for a comparison in one go; `--target-pid` lets its CPU time and
//! memory be read from `/proc`).
//!
//! Subscribers connect first and subscribe to `bench/#` with `--qos`; then `--publishers`
//! connections publish `--messages` in all (split evenly) of `--payload` bytes to
//! `bench/<publisher>`, each keeping up to `--inflight` QoS 1/2 messages unacknowledged. Every
//! payload starts with its send time, so each subscriber measures publish-to-deliver latency.
//! Figures: publish messages/s (first send to the last acknowledgement; QoS 0: to the answer
//! to a PINGREQ sent after the last message, which a broker gives once it has read them all),
//! delivered messages/s, latency p50/p99, and the broker's CPU time per message published.
//! The clients are lean: packets are written in batches and parsed with rumqttc's `mqttbytes`.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, Packet, PubAck, Publish, Subscribe};
use serde::Serialize;
use tokio::io::{AsyncReadExt, ReadHalf, WriteHalf};

use super::{BenchResult, BenchStream, BenchTls, Broker, cpu_seconds, quantile, rss_kib};
use brook::units::Narrow;

type Rd = ReadHalf<Box<dyn BenchStream>>;
type Wr = WriteHalf<Box<dyn BenchStream>>;
type Tls = Option<std::sync::Arc<rustls::ClientConfig>>;

/// A subscriber that hears nothing for this long stops and reports what arrived (a broker
/// that dropped messages never sends them).
const IDLE: Duration = Duration::from_secs(5);

/// Another MQTT broker to measure instead of the `brook serve` a bench starts.
#[derive(Clone, Debug, clap::Args)]
pub struct TargetBroker {
    /// Measure this MQTT broker (host:port) instead of starting `brook serve`.
    #[arg(long)]
    pub target: Option<String>,
    /// Process id of the --target broker, to read its CPU time and memory from /proc.
    #[arg(long)]
    pub target_pid: Option<u32>,
}

/// Parameters of `brook bench mqtt`.
#[derive(Clone, Debug, clap::Args)]
pub struct MqttBench {
    #[command(flatten)]
    pub broker: TargetBroker,
    /// Publishing connections.
    #[arg(long, default_value_t = 8)]
    pub publishers: u32,
    /// Subscribing connections (each subscribes to every publisher's topic).
    #[arg(long, default_value_t = 1)]
    pub subscribers: u32,
    /// QoS of publishes and subscriptions: 0, 1 or 2.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Payload bytes per message (at least 16).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Messages published in all, split evenly over the publishers.
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Unacknowledged QoS 1/2 messages per publisher.
    #[arg(long, default_value_t = 100)]
    pub inflight: u32,
    /// Subscribers keep persistent sessions (clean session 0), so the broker stores what it
    /// delivers (for Brook, the durable delivery state before every QoS 1/2 send).
    #[arg(long)]
    pub persistent: bool,
    /// Over TLS: DIR holds ca.pem (trusted by the clients) and, for the server the bench
    /// starts, server.pem / server.key (valid for 127.0.0.1); with --target, a TLS listener.
    #[arg(long, value_name = "DIR", value_parser = BenchTls::parse)]
    pub tls: Option<BenchTls>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct MqttReport {
    pub broker: String,
    pub tls: bool,
    pub publishers: u32,
    pub subscribers: u32,
    pub qos: u8,
    pub payload: usize,
    pub messages: u64,
    pub inflight: u32,
    pub persistent: bool,
    pub publish_msgs_per_sec: f64,
    pub deliver_msgs_per_sec: f64,
    pub delivered: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Broker CPU time (user + system) over the run, per message published.
    pub broker_cpu_us_per_msg: Option<f64>,
    pub broker_rss_peak_kib: Option<u64>,
}

impl super::Report for MqttReport {
    fn render(&self) -> String {
        format!(
            "mqtt bench against {}{}: {} messages x {} B, QoS {}, {} publishers ({} in flight each), {} {}subscribers\n  publish: {:.0} msgs/s; delivered {} at {:.0} msgs/s\n  publish-to-deliver latency: p50 {} us, p99 {} us, max {} us\n  broker CPU: {} per message; broker peak RSS: {}\n",
            self.broker,
            if self.tls { " over TLS" } else { "" },
            self.messages,
            self.payload,
            self.qos,
            self.publishers,
            self.inflight,
            self.subscribers,
            if self.persistent { "persistent " } else { "" },
            self.publish_msgs_per_sec,
            self.delivered,
            self.deliver_msgs_per_sec,
            self.p50_us,
            self.p99_us,
            self.max_us,
            self.broker_cpu_us_per_msg
                .map_or("n/a".into(), |c| format!("{c:.2} us")),
            self.broker_rss_peak_kib
                .map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
        )
    }
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Reads packets into `buf` until `f` says stop; `f` sees each packet.
async fn read_packets(
    s: &mut Rd,
    buf: &mut BytesMut,
    mut f: impl FnMut(Packet) -> bool,
) -> BenchResult<()> {
    loop {
        loop {
            match Packet::read(buf, usize::MAX) {
                Ok(p) => {
                    if !f(p) {
                        return Ok(());
                    }
                }
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(e) => return Err(format!("bad packet from the broker: {e}").into()),
            }
        }
        if s.read_buf(buf).await? == 0 {
            return Err("broker closed the connection".into());
        }
    }
}

async fn connect(addr: &str, id: &str, tls: &Tls) -> BenchResult<(Rd, Wr, BytesMut)> {
    connect_session(addr, id, tls, true).await
}

/// Nanoseconds of the wall clock (a run's stamp in client ids).
fn run_stamp() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Connects with MQTT 3.1.1's clean session flag `clean`.
async fn connect_session(
    addr: &str,
    id: &str,
    tls: &Tls,
    clean: bool,
) -> BenchResult<(Rd, Wr, BytesMut)> {
    let stream = super::connect_stream(addr, tls.as_ref()).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut out = BytesMut::new();
    let mut c = Connect::new(id);
    c.keep_alive = 60;
    c.clean_session = clean;
    Packet::Connect(c).write(&mut out, usize::MAX)?;
    brook::net::tls::write_flushed(&mut wr, &out).await?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut ok = false;
    read_packets(&mut rd, &mut buf, |p| {
        ok = matches!(p, Packet::ConnAck(ref a) if a.code == rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
        false
    })
    .await?;
    if !ok {
        return Err(format!("{addr} refused the connection").into());
    }
    Ok((rd, wr, buf))
}

impl MqttBench {
    pub async fn run(&self) -> BenchResult<MqttReport> {
        if self.publishers == 0 || self.messages == 0 || self.inflight == 0 || self.qos > 2 {
            return Err("publishers, messages and inflight must be at least 1; qos 0..=2".into());
        }
        if self.payload < 16 {
            return Err("--payload must be at least 16 bytes (send time and sequence)".into());
        }
        let broker = Broker::mqtt(
            "mqtt",
            self.broker.target.as_deref(),
            self.broker.target_pid,
            self.tls.as_ref(),
        )?;
        let (addr, pid, tls) = (broker.mqtt_addr.clone(), broker.pid, broker.tls.clone());
        let base = Instant::now();
        let per_pub = self.messages / u64::from(self.publishers);
        let total = per_pub * u64::from(self.publishers);
        let expected = total * u64::from(self.subscribers);
        // Subscribers first.
        let mut subs = Vec::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(self.subscribers.max(1) as usize);
        for i in 0..self.subscribers {
            // A persistent session gets an id of its own: none left by an earlier run resumes.
            let id = if self.persistent {
                format!("bench-sub-{i}-{}-{}", std::process::id(), run_stamp())
            } else {
                format!("bench-sub-{i}")
            };
            let (mut rd, mut wr, mut buf) =
                connect_session(&addr, &id, &tls, !self.persistent).await?;
            let q = self.qos;
            let ready = ready_tx.clone();
            subs.push(tokio::spawn(async move {
                let mut out = BytesMut::new();
                let mut sub = Subscribe::new("bench/#", qos(q));
                sub.pkid = 1;
                Packet::Subscribe(sub).write(&mut out, usize::MAX)?;
                brook::net::tls::write_flushed(&mut wr, &out).await?;
                out.clear();
                read_packets(&mut rd, &mut buf, |p| !matches!(p, Packet::SubAck(_))).await?;
                let _ = ready.send(()).await;
                let mut lat = Vec::with_capacity((total.sat_usize()).min(1 << 24));
                let mut got = 0u64;
                let mut last = Instant::now();
                while got < total {
                    // Every complete packet buffered, then the acknowledgements they need.
                    loop {
                        match Packet::read(&mut buf, usize::MAX) {
                            Ok(Packet::Publish(p)) => {
                                let sent = p
                                    .payload
                                    .get(..8)
                                    .and_then(|b| b.try_into().ok())
                                    .map_or(0, u64::from_le_bytes);
                                let now = base.elapsed().as_nanos().sat_u64();
                                lat.push(now.saturating_sub(sent) / 1000);
                                got += 1;
                                match p.qos {
                                    QoS::AtLeastOnce => Packet::PubAck(PubAck::new(p.pkid))
                                        .write(&mut out, usize::MAX)?,
                                    QoS::ExactlyOnce => {
                                        Packet::PubRec(rumqttc::mqttbytes::v4::PubRec::new(p.pkid))
                                            .write(&mut out, usize::MAX)?
                                    }
                                    QoS::AtMostOnce => 0,
                                };
                            }
                            Ok(Packet::PubRel(r)) => {
                                Packet::PubComp(rumqttc::mqttbytes::v4::PubComp::new(r.pkid))
                                    .write(&mut out, usize::MAX)?;
                            }
                            Ok(_) => {}
                            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                            Err(e) => return Err(format!("bad packet from the broker: {e}").into()),
                        }
                    }
                    if !out.is_empty() {
                        brook::net::tls::write_flushed(&mut wr, &out).await?;
                        out.clear();
                    }
                    last = Instant::now();
                    if got >= total {
                        break;
                    }
                    match tokio::time::timeout(IDLE, rd.read_buf(&mut buf)).await {
                        Ok(Ok(0)) => return Err("broker closed a subscriber's connection".into()),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_) => break, // IDLE without a message: report what arrived
                    }
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((got, lat, last))
            }));
        }
        drop(ready_tx);
        for _ in 0..self.subscribers {
            ready_rx
                .recv()
                .await
                .ok_or("a subscriber failed to subscribe")?;
        }
        let cpu0 = pid.and_then(cpu_seconds);
        let start = Instant::now();
        let mut pubs = Vec::new();
        for i in 0..self.publishers {
            let (mut rd, mut wr, mut buf) = connect(&addr, &format!("bench-pub-{i}"), &tls).await?;
            let (q, size, inflight) = (self.qos, self.payload, self.inflight);
            pubs.push(tokio::spawn(async move {
                let topic = format!("bench/{i}");
                let mut out = BytesMut::with_capacity(64 * 1024);
                let mut payload = vec![0u8; size];
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(i);
                super::fill_random(&mut seed, &mut payload);
                let (mut sent, mut unacked, mut pkid) = (0u64, 0u32, 0u16);
                while sent < per_pub {
                    while sent < per_pub && (q == 0 || unacked < inflight) && out.len() < 32 * 1024
                    {
                        payload[..8]
                            .copy_from_slice(&(base.elapsed().as_nanos().sat_u64()).to_le_bytes());
                        payload[8..16].copy_from_slice(&sent.to_le_bytes());
                        let mut p = Publish::new(topic.as_str(), qos(q), payload.clone());
                        if q > 0 {
                            pkid = pkid.wrapping_add(1).max(1);
                            p.pkid = pkid;
                            unacked += 1;
                        }
                        Packet::Publish(p).write(&mut out, usize::MAX)?;
                        sent += 1;
                    }
                    brook::net::tls::write_flushed(&mut wr, &out).await?;
                    out.clear();
                    if q > 0 && (unacked >= inflight || sent == per_pub) {
                        let mut rel = Vec::new();
                        read_packets(&mut rd, &mut buf, |p| {
                            match p {
                                Packet::PubAck(_) | Packet::PubComp(_) => unacked -= 1,
                                Packet::PubRec(r) => rel.push(r.pkid),
                                _ => {}
                            }
                            unacked >= inflight && rel.is_empty()
                        })
                        .await?;
                        for id in rel {
                            Packet::PubRel(rumqttc::mqttbytes::v4::PubRel::new(id))
                                .write(&mut out, usize::MAX)?;
                        }
                    }
                }
                while q > 0 && unacked > 0 {
                    let mut rel = Vec::new();
                    read_packets(&mut rd, &mut buf, |p| {
                        match p {
                            Packet::PubAck(_) | Packet::PubComp(_) => unacked -= 1,
                            Packet::PubRec(r) => rel.push(r.pkid),
                            _ => {}
                        }
                        unacked > 0 && rel.is_empty()
                    })
                    .await?;
                    for id in rel {
                        Packet::PubRel(rumqttc::mqttbytes::v4::PubRel::new(id))
                            .write(&mut out, usize::MAX)?;
                    }
                    if !out.is_empty() {
                        brook::net::tls::write_flushed(&mut wr, &out).await?;
                        out.clear();
                    }
                }
                if q == 0 {
                    // The broker answers a PINGREQ after everything sent before it.
                    Packet::PingReq.write(&mut out, usize::MAX)?;
                    brook::net::tls::write_flushed(&mut wr, &out).await?;
                    read_packets(&mut rd, &mut buf, |p| !matches!(p, Packet::PingResp)).await?;
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Instant::now())
            }));
        }
        let mut published = start;
        for p in pubs {
            published = published.max(p.await??);
        }
        let publish_secs = published.duration_since(start).as_secs_f64();
        let mut lat = Vec::new();
        let mut delivered = 0;
        let mut delivered_at = published;
        for s in subs {
            let (got, l, last) = s.await??;
            delivered += got;
            lat.extend(l);
            delivered_at = delivered_at.max(last);
        }
        let cpu1 = pid.and_then(cpu_seconds);
        lat.sort_unstable();
        if delivered < expected {
            eprintln!("warning: {delivered} of {expected} deliveries arrived");
        }
        Ok(MqttReport {
            broker: match &self.broker.target {
                Some(t) => t.clone(),
                None => "brook serve (child)".into(),
            },
            tls: self.tls.is_some(),
            publishers: self.publishers,
            subscribers: self.subscribers,
            qos: self.qos,
            payload: self.payload,
            messages: total,
            inflight: self.inflight,
            persistent: self.persistent,
            publish_msgs_per_sec: total as f64 / publish_secs.max(1e-9),
            deliver_msgs_per_sec: delivered as f64
                / delivered_at.duration_since(start).as_secs_f64().max(1e-9),
            delivered,
            p50_us: quantile(&lat, 0.50),
            p99_us: quantile(&lat, 0.99),
            max_us: lat.last().copied().unwrap_or(0),
            broker_cpu_us_per_msg: match (cpu0, cpu1) {
                (Some(a), Some(b)) => Some((b - a) * 1e6 / total as f64),
                _ => None,
            },
            broker_rss_peak_kib: pid.and_then(rss_kib).map(|(_, peak)| peak),
        })
    }
}

/// `brook bench mqtt-fleet`: many connected devices at a steady rate. `clients` connections
/// each subscribe (QoS 1) to their own topic `fleet/<i>`; the first `publishers` of them
/// publish QoS 1 to that topic at `rate` messages/s for `duration`. Every message must come
/// back to its publisher; the broker's peak RSS is read from `/proc` each second.
#[derive(Clone, Debug, clap::Args)]
pub struct MqttFleet {
    #[command(flatten)]
    pub broker: TargetBroker,
    /// Connected clients, each subscribed to its own topic.
    #[arg(long, default_value_t = 1000)]
    pub clients: u32,
    /// How many of them publish.
    #[arg(long, default_value_t = 100)]
    pub publishers: u32,
    /// Messages per second per publisher.
    #[arg(long, default_value_t = 10)]
    pub rate: u32,
    /// How long they publish.
    #[arg(long, default_value = "60s")]
    pub duration: brook::units::HumanDuration,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct FleetReport {
    pub broker: String,
    pub clients: u32,
    pub publishers: u32,
    pub rate: u32,
    pub duration_secs: f64,
    pub published: u64,
    pub acknowledged: u64,
    pub delivered: u64,
    /// Messages published and never delivered back (must be 0).
    pub missing: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub broker_rss_peak_kib: Option<u64>,
    pub broker_cpu_seconds: Option<f64>,
}

impl super::Report for FleetReport {
    fn render(&self) -> String {
        format!(
            "mqtt fleet against {}: {} clients, {} publishing QoS 1 at {}/s for {:.0} s\n  published {}, acknowledged {}, delivered {}, missing {}\n  publish-to-deliver latency: p50 {} us, p99 {} us\n  broker peak RSS: {}; broker CPU: {}\n",
            self.broker,
            self.clients,
            self.publishers,
            self.rate,
            self.duration_secs,
            self.published,
            self.acknowledged,
            self.delivered,
            self.missing,
            self.p50_us,
            self.p99_us,
            self.broker_rss_peak_kib
                .map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            self.broker_cpu_seconds
                .map_or("n/a".into(), |c| format!("{c:.2} s")),
        )
    }
}

/// Lifts the soft open-files limit to the hard one (a fleet needs a socket per client).
fn raise_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

#[derive(Default)]
struct DeviceResult {
    published: u64,
    acknowledged: u64,
    delivered: u64,
    latencies: Vec<u64>,
}

async fn device(
    addr: String,
    i: u32,
    publish: bool,
    interval: Duration,
    base: Instant,
    ready: tokio::sync::mpsc::Sender<()>,
    mut go: tokio::sync::watch::Receiver<Option<Instant>>,
) -> BenchResult<DeviceResult> {
    let (mut rd, mut wr, mut buf) = connect(&addr, &format!("fleet-{i}"), &None).await?;
    let topic = format!("fleet/{i}");
    let mut out = BytesMut::new();
    let mut sub = Subscribe::new(topic.as_str(), QoS::AtLeastOnce);
    sub.pkid = 1;
    Packet::Subscribe(sub).write(&mut out, usize::MAX)?;
    brook::net::tls::write_flushed(&mut wr, &out).await?;
    out.clear();
    read_packets(&mut rd, &mut buf, |p| !matches!(p, Packet::SubAck(_))).await?;
    let _ = ready.send(()).await;
    drop(ready);
    let until = match go.wait_for(Option::is_some).await {
        Ok(u) => u.unwrap_or_else(Instant::now),
        Err(_) => return Ok(DeviceResult::default()),
    };
    let mut r = DeviceResult::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pkid = 1u16;
    let drain_until = until + Duration::from_secs(10);
    loop {
        let publishing = publish && Instant::now() < until;
        if !publishing && (!publish || r.delivered >= r.published && r.acknowledged >= r.published)
        {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if publishing => {
                let mut payload = vec![0u8; 100];
                payload[..8].copy_from_slice(&(base.elapsed().as_nanos().sat_u64()).to_le_bytes());
                pkid = pkid.wrapping_add(1).max(2);
                let mut p = Publish::new(topic.as_str(), QoS::AtLeastOnce, payload);
                p.pkid = pkid;
                Packet::Publish(p).write(&mut out, usize::MAX)?;
                r.published += 1;
            }
            n = rd.read_buf(&mut buf) => {
                if n? == 0 {
                    return Err(format!("broker closed fleet client {i}").into());
                }
                loop {
                    match Packet::read(&mut buf, usize::MAX) {
                        Ok(Packet::Publish(p)) => {
                            let sent = p.payload.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
                            r.latencies.push((base.elapsed().as_nanos().sat_u64()).saturating_sub(sent) / 1000);
                            r.delivered += 1;
                            Packet::PubAck(PubAck::new(p.pkid)).write(&mut out, usize::MAX)?;
                        }
                        Ok(Packet::PubAck(_)) => r.acknowledged += 1,
                        Ok(_) => {}
                        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                        Err(e) => return Err(format!("bad packet: {e}").into()),
                    }
                }
            }
            _ = tokio::time::sleep_until(drain_until.into()), if !publishing => break,
        }
        if !out.is_empty() {
            brook::net::tls::write_flushed(&mut wr, &out).await?;
            out.clear();
        }
    }
    Ok(r)
}

impl MqttFleet {
    pub async fn run(&self) -> BenchResult<FleetReport> {
        if self.clients == 0 || self.publishers > self.clients || self.rate == 0 {
            return Err("need clients >= publishers and a rate of at least 1/s".into());
        }
        raise_nofile();
        let broker = Broker::mqtt(
            "mqtt-fleet",
            self.broker.target.as_deref(),
            self.broker.target_pid,
            None,
        )?;
        let (addr, pid) = (broker.mqtt_addr.clone(), broker.pid);
        let base = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / f64::from(self.rate));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(self.clients as usize);
        // The run starts once every client is connected and subscribed.
        let (go_tx, go_rx) = tokio::sync::watch::channel(None::<Instant>);
        let mut tasks = Vec::new();
        for i in 0..self.clients {
            tasks.push(tokio::spawn(device(
                addr.clone(),
                i,
                i < self.publishers,
                interval,
                base,
                ready_tx.clone(),
                go_rx.clone(),
            )));
        }
        drop(ready_tx);
        for _ in 0..self.clients {
            ready_rx
                .recv()
                .await
                .ok_or("a fleet client failed to connect or subscribe")?;
        }
        let cpu0 = pid.and_then(cpu_seconds);
        let start = Instant::now();
        let _ = go_tx.send(Some(start + self.duration.0));
        let mut peak = None;
        let mut results = Vec::new();
        let sampler = async {
            loop {
                if let Some((_, hwm)) = pid.and_then(rss_kib) {
                    peak = Some(hwm);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        let collect = async {
            for t in tasks {
                results.push(t.await);
            }
        };
        tokio::select! {
            _ = collect => {}
            _ = sampler => {}
        }
        let cpu1 = pid.and_then(cpu_seconds);
        if let Some((_, hwm)) = pid.and_then(rss_kib) {
            peak = Some(hwm);
        }
        let mut total = DeviceResult::default();
        for r in results {
            let r = r.map_err(|e| format!("fleet client task: {e}"))??;
            total.published += r.published;
            total.acknowledged += r.acknowledged;
            total.delivered += r.delivered;
            total.latencies.extend(r.latencies);
        }
        total.latencies.sort_unstable();
        let lat = &total.latencies;
        Ok(FleetReport {
            broker: match &self.broker.target {
                Some(t) => t.clone(),
                None => "brook serve (child)".into(),
            },
            clients: self.clients,
            publishers: self.publishers,
            rate: self.rate,
            duration_secs: self.duration.0.as_secs_f64(),
            published: total.published,
            acknowledged: total.acknowledged,
            delivered: total.delivered,
            missing: total.published.saturating_sub(total.delivered),
            p50_us: quantile(lat, 0.5),
            p99_us: quantile(lat, 0.99),
            broker_rss_peak_kib: peak,
            broker_cpu_seconds: match (cpu0, cpu1) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
        })
    }
}
