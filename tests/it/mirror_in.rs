//! Mirrors in (`direction = "in"`) through the real binary: upstream topics of another Brook,
//! tansu (Kafka) and Mosquitto (MQTT) brought into local topics across the local Brook being
//! away, the upstream killed and restarted mid-drain, and a `kill -9` of the local Brook
//! mid-drain. Every record arrives, in order per partition; from Kafka and Brook nothing is
//! appended twice (the local log says where to resume), from MQTT re-sends come only after a
//! crash (at-least-once).

use std::path::Path;
use std::time::{Duration, Instant};

use brook::client::Client;

use crate::common;
use crate::common::mirror::*;

const ORIGIN: &str = "brook.upstream.";

fn in_config(
    dir: &Path,
    kind: &str,
    upstream: &str,
    topics: &str,
    template: &str,
) -> std::path::PathBuf {
    let path = dir.join("brook.toml");
    std::fs::write(
        &path,
        format!(
            "[log]\nflush_interval = \"100ms\"\nmin_free = 0\n\n[[mirror]]\nname = \"down\"\ndirection = \"in\"\nkind = \"{kind}\"\nupstream = [\"{upstream}\"]\ntopics = [{topics}]\ntopic_template = \"{template}\"\ncursor_flush = \"200ms\"\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n"
        ),
    )
    .expect("write config");
    path
}

/// The scenario for upstreams read by offset: `write(first, n)` adds records upstream.
/// Records written while the local Brook is away all arrive once it starts (the local topic is
/// created with the upstream's two partitions); the upstream killed and restarted mid-drain,
/// and the local Brook killed mid-drain, lose nothing, keep order and append nothing twice.
fn offset_scenario(
    dir: &Path,
    cfg: &Path,
    start_upstream: impl Fn() -> common::Process,
    write: impl Fn(u64, u64),
) {
    let rt = runtime();
    let mut up = start_upstream();
    write(0, 5_000);
    let (mut local, laddrs) = common::serve_with(&dir.join("local"), Some(cfg), "127.0.0.1:0");
    let got = upstream_records(&rt, ORIGIN, &laddrs.native, "commands", 2, 5_000);
    assert_eq!(
        check_complete(&got, 5_000),
        0,
        "no failure, so no re-appends"
    );

    write(5_000, 20_000);
    kill_9(&mut up);
    let mut up = start_upstream();
    let got = upstream_records(&rt, ORIGIN, &laddrs.native, "commands", 2, 25_000);
    check_complete(&got, 25_000);

    write(25_000, 20_000);
    kill_9(&mut local);
    let (mut local, laddrs) = common::serve_with(&dir.join("local"), Some(cfg), "127.0.0.1:0");
    let got = upstream_records(&rt, ORIGIN, &laddrs.native, "commands", 2, 45_000);
    let dups = check_complete(&got, 45_000);
    // The cursor on disk may lag; the local log says where to resume: nothing twice.
    assert_eq!(dups, 0, "records appended twice after the kill -9");
    kill_9(&mut local);
    kill_9(&mut up);
}

/// Another Brook's topic `commands` brought in over the native protocol.
#[test]
fn brook_upstream_in_across_outages_and_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up_addr = free_addr();
    let cfg = in_config(dir.path(), "brook", &up_addr, "\"commands\"", "{topic}");
    let up_data = dir.path().join("up");
    let rt = runtime();
    offset_scenario(
        dir.path(),
        &cfg,
        || {
            let (child, addrs) = common::serve_with(&up_data, None, &up_addr);
            rt.block_on(async {
                let c = Client::connect(&addrs.native, "t").await.expect("connect");
                let _ = c
                    .create_topic(
                        "commands",
                        brook::proto::TopicSettings {
                            partitions: Some(2),
                            ..Default::default()
                        },
                    )
                    .await;
            });
            child
        },
        |first, n| produce(&rt, &up_addr, "commands", first, n),
    );
}

/// tansu's topic `commands` brought in with rskafka (records written there by rskafka).
#[test]
fn kafka_upstream_in_tansu_across_outages_and_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up_addr = free_addr();
    let cfg = in_config(dir.path(), "kafka", &up_addr, "\"commands\"", "{topic}");
    let tansu_dir = dir.path().join("tansu");
    let rt = runtime();
    let created = std::cell::Cell::new(false);
    offset_scenario(
        dir.path(),
        &cfg,
        || {
            let child = start_tansu(&tansu_dir, &up_addr);
            if !created.replace(true) {
                rt.block_on(async {
                    let c = rskafka::client::ClientBuilder::new(vec![up_addr.clone()])
                        .build()
                        .await
                        .expect("connect tansu");
                    c.controller_client()
                        .expect("controller")
                        .create_topic("commands", 2, 1, 10_000)
                        .await
                        .expect("create topic");
                });
            }
            child
        },
        |first, n| kafka_produce(&rt, &up_addr, "commands", first, n),
    );
}

/// Writes records `first..first + n` to a Kafka topic of two partitions (by key, as
/// [`produce`] does on a Brook), in batches of 500.
fn kafka_produce(rt: &tokio::runtime::Runtime, addr: &str, topic: &str, first: u64, n: u64) {
    use rskafka::client::partition::{Compression, UnknownTopicHandling};
    rt.block_on(async {
        let c = rskafka::client::ClientBuilder::new(vec![addr.to_string()])
            .build()
            .await
            .expect("connect");
        let mut per: Vec<Vec<rskafka::record::Record>> = vec![Vec::new(), Vec::new()];
        for i in first..first + n {
            let key = format!("k{}", i % 10).into_bytes();
            let p = brook::log::partitioner::partition_for_key(&key, 2) as usize;
            per[p].push(rskafka::record::Record {
                key: Some(key),
                value: Some(format!("v{i:08}{:>90}", "x").into_bytes()),
                headers: Default::default(),
                timestamp: rskafka::chrono::DateTime::from_timestamp_millis(
                    1_700_000_000_000 + i as i64,
                )
                .expect("timestamp"),
            });
        }
        for (p, mut recs) in per.into_iter().enumerate() {
            let pc = c
                .partition_client(topic, p as i32, UnknownTopicHandling::Retry)
                .await
                .expect("partition");
            while !recs.is_empty() {
                let rest = recs.split_off(recs.len().min(500));
                pc.produce(recs, Compression::NoCompression)
                    .await
                    .expect("produce");
                recs = rest;
            }
        }
    });
}

/// Values of the local topic `commands` (partition 0 suffices: the MQTT mirror places records
/// by key and the test uses one MQTT topic), in log order.
fn local_values(rt: &tokio::runtime::Runtime, native: &str) -> Vec<String> {
    rt.block_on(async {
        let c = Client::connect(native, "check").await.expect("connect");
        let mut out = Vec::new();
        let d = c.describe_topic("commands").await;
        let Ok(d) = d else {
            return out;
        };
        for p in 0..d.partitions.len() as u32 {
            let mut next = 0;
            loop {
                let f = c
                    .fetch("commands", p, next, 1 << 20, 1, Duration::ZERO)
                    .await
                    .expect("fetch");
                let recs = f.records(next).expect("records");
                if recs.is_empty() {
                    break;
                }
                for (off, r) in recs {
                    assert_eq!(r.key.as_deref(), Some(&b"cmd/dev1"[..]), "key = MQTT topic");
                    out.push(String::from_utf8_lossy(r.value_bytes()).into_owned());
                    next = off + 1;
                }
            }
        }
        out
    })
}

/// Waits until the local topic holds `want` distinct values, then checks they are 0..want in
/// order (a value seen again must repeat one already there: a re-append); returns duplicates.
fn wait_mqtt_complete(rt: &tokio::runtime::Runtime, native: &str, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let vals = local_values(rt, native);
        let distinct: std::collections::BTreeSet<&String> = vals.iter().collect();
        if distinct.len() >= want {
            let mut max: Option<u64> = None;
            let mut dups = 0;
            let mut seen = std::collections::HashSet::new();
            for v in &vals {
                let n: u64 = v.parse().expect("a number");
                if !seen.insert(n) {
                    dups += 1;
                    continue;
                }
                if let Some(m) = max {
                    assert_eq!(n, m + 1, "message {n} after {m}: order or a gap");
                } else {
                    assert_eq!(n, 0, "the first message");
                }
                max = Some(n);
            }
            assert_eq!(seen.len(), want, "every message arrived");
            return dups;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {want} messages brought in",
            distinct.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the MQTT mirror in reports its subscription acknowledged.
fn wait_subscribed(rt: &tokio::runtime::Runtime, http: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = rt
            .block_on(brook::client::http_get(http, "/api/mirrors", None))
            .expect("/api/mirrors");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body).expect("json");
        if rows.iter().any(|r| r["state"] == "connected") {
            return;
        }
        assert!(Instant::now() < deadline, "not subscribed: {rows:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the local topic holds at least `n` records.
fn wait_values(rt: &tokio::runtime::Runtime, native: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while local_values(rt, native).len() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} messages brought in"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` QoS 1 messages `first..first + n` to `cmd/dev1` with mosquitto_pub (one per line).
fn mosquitto_pub(port: u16, first: u64, n: u64) {
    use std::io::Write;
    let mut child = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "cmd/dev1",
            "-l",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (apt-get install mosquitto-clients)");
    let mut stdin = child.stdin.take().expect("stdin");
    for i in first..first + n {
        writeln!(stdin, "{i}").expect("write");
    }
    drop(stdin);
    assert!(child.wait().expect("mosquitto_pub").success());
}

/// An MQTT subscription brought in: the persistent session keeps Mosquitto queueing while the
/// local Brook is away (messages published meanwhile arrive after it starts); Mosquitto stopped
/// and restarted mid-drain, and a `kill -9` of the local Brook mid-drain, lose nothing and keep
/// the order (each message is stored durably before its PUBACK).
#[test]
fn mqtt_upstream_in_across_outages_and_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (up_addr, port) = free_port();
    let mut up = start_mosquitto(&dir.path().join("mosq"), port);
    let cfg = in_config(dir.path(), "mqtt", &up_addr, "\"cmd/#\"", "commands");
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    // Subscribed (the session exists from then on): the first message comes through.
    wait_subscribed(&rt, &laddrs.http);
    mosquitto_pub(port, 0, 1);
    wait_mqtt_complete(&rt, &laddrs.native, 1);

    // Away: Mosquitto queues for the session.
    kill_9(&mut local);
    mosquitto_pub(port, 1, 1_999);
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    assert_eq!(wait_mqtt_complete(&rt, &laddrs.native, 2_000), 0);

    // kill -9 of the local Brook mid-drain: Mosquitto sends again what it had not seen
    // acknowledged at the crash. Mosquitto 2.0.11 sends a returning session's whole queue
    // without waiting for acknowledgements (it ignores the Receive Maximum for queued
    // messages), so that can be a few thousand; they are re-sends (the run before had none).
    kill_9(&mut local);
    mosquitto_pub(port, 2_000, 20_000);
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    wait_values(&rt, &laddrs.native, 3_000);
    kill_9(&mut local);
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    let dups = wait_mqtt_complete(&rt, &laddrs.native, 22_000);
    assert!(dups < 20_000, "{dups} duplicates");

    // Mosquitto restarts mid-drain (it saves its queue on SIGTERM): nothing is lost.
    // Mosquitto 2.0.11 sends the messages it restored from its database again at the next
    // reconnect even once acknowledged, so duplicates are not bounded here.
    kill_9(&mut local);
    mosquitto_pub(port, 22_000, 20_000);
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    wait_values(&rt, &laddrs.native, 23_000);
    stop(&mut up);
    let mut up = start_mosquitto(&dir.path().join("mosq"), port);
    wait_mqtt_complete(&rt, &laddrs.native, 42_000);
    kill_9(&mut local);
    stop(&mut up);
}

/// An MQTT 3.1.1 subscription brought in (`mqtt_version = "3.1.1"`): Mosquitto logs the
/// mirror's session as protocol 3.1.1; with clean session off it queues while the local Brook
/// is away (`kill -9`), and everything arrives once it starts, in order; a `kill -9` mid-drain
/// loses nothing (each message is stored durably before its PUBACK).
#[test]
fn mqtt_3_1_1_upstream_in_across_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (up_addr, port) = free_port();
    let (mut up, log) = start_mosquitto_logged(&dir.path().join("mosq"), port);
    let cfg = in_config(dir.path(), "mqtt", &up_addr, "\"cmd/#\"", "commands");
    let text = std::fs::read_to_string(&cfg).expect("config")
        + "node = \"gw1\"\nmqtt_version = \"3.1.1\"\n";
    std::fs::write(&cfg, text).expect("config");
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    wait_subscribed(&rt, &laddrs.http);
    mosquitto_pub(port, 0, 1);
    wait_mqtt_complete(&rt, &laddrs.native, 1);

    // Away: Mosquitto queues for the session.
    kill_9(&mut local);
    mosquitto_pub(port, 1, 1_999);
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    assert_eq!(wait_mqtt_complete(&rt, &laddrs.native, 2_000), 0);

    // kill -9 mid-drain: what was stored stays, what was not comes again.
    kill_9(&mut local);
    mosquitto_pub(port, 2_000, 10_000);
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    wait_values(&rt, &laddrs.native, 2_500);
    kill_9(&mut local);
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    wait_mqtt_complete(&rt, &laddrs.native, 12_000);
    assert_mosquitto_protocol(&log, "brook-gw1-down-in", 4, "p2");
    kill_9(&mut local);
    stop(&mut up);
}
