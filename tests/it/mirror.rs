//! Upstream mirroring through the real binary: a local `brook serve` mirrors to a real upstream
//! started by the test (another `brook serve`; tansu, a Kafka-API broker), across the upstream
//! being down, stopped and restarted mid-drain, and a `kill -9` of the local Brook mid-drain.
//! Every record must arrive, in order per partition; duplicates may only be re-sends (same
//! origin headers) after a failure.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use brook::client::Client;

use crate::common;
use crate::common::mirror::*;

/// Brook to Brook: records produced while the upstream is down all arrive once it starts; a
/// `kill -9` of the local Brook mid-drain and a stop/restart of the upstream mid-drain lose
/// nothing and keep order.
#[test]
fn brook_upstream_gets_everything_across_outages_and_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let up_addr = free_addr();
    let cfg = mirror_config(dir.path(), "brook", &up_addr);
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    create_telemetry(&rt, &laddrs.native, 2);
    // Upstream down: 5,000 records wait in the local log.
    produce(&rt, &laddrs.native, "telemetry", 0, 5_000);
    let (mut up, _) = common::serve_with(&dir.path().join("up"), None, &up_addr);
    let got = upstream_records(&rt, "brook.", &up_addr, "telemetry", 2, 5_000);
    assert_eq!(check_complete(&got, 5_000), 0, "no failure, no re-sends");
    wait_saved(&rt, &laddrs.http);

    // kill -9 of the local Brook while it drains 20,000 more; it resumes from its cursor.
    produce(&rt, &laddrs.native, "telemetry", 5_000, 20_000);
    kill_9(&mut local);
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    let got = upstream_records(&rt, "brook.", &up_addr, "telemetry", 2, 25_000);
    check_complete(&got, 25_000);

    // The upstream dies mid-drain and comes back on the same address.
    produce(&rt, &laddrs.native, "telemetry", 25_000, 20_000);
    kill_9(&mut up);
    let (mut up, _) = common::serve_with(&dir.path().join("up"), None, &up_addr);
    let got = upstream_records(&rt, "brook.", &up_addr, "telemetry", 2, 45_000);
    check_complete(&got, 45_000);
    // Re-sends come only from a failure (at most a cursor_flush of records each): none of the
    // first 5,000, sent before any.
    assert_eq!(
        dups_before(&got, 5_000),
        0,
        "records sent before any failure arrived twice"
    );

    // Status: both partitions connected with nothing left behind (the status follows the
    // cursor a moment after the last acknowledgement).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = common::brook()
            .args(["mirror", "status", "--http", &laddrs.http, "--json"])
            .output()
            .expect("brook mirror status");
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("status json");
        let done = rows.len() == 2
            && rows.iter().all(|r| {
                r["mirror"] == "up" && r["backlog_records"] == 0 && r["state"] == "connected"
            });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "status: {rows:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    kill_9(&mut local);
    kill_9(&mut up);
}

/// Writes the mirror config for a Kafka upstream: topics named `{node}.{topic}`, gzip.
fn kafka_mirror_config(dir: &Path, upstream: &str) -> std::path::PathBuf {
    let cfg = mirror_config(dir, "kafka", upstream);
    let text = std::fs::read_to_string(&cfg).expect("config")
        + "topic_template = \"{node}.{topic}\"\ncompression = \"gzip\"\n";
    std::fs::write(&cfg, text).expect("config");
    cfg
}

fn create_telemetry(rt: &tokio::runtime::Runtime, native: &str, partitions: u32) {
    rt.block_on(async {
        let c = Client::connect(native, "t").await.expect("connect");
        c.create_topic(
            "telemetry",
            brook::proto::TopicSettings {
                partitions: Some(partitions),
                ..Default::default()
            },
        )
        .await
        .expect("create");
    });
}

/// Brook to a Kafka cluster: records produced while it is down arrive once it starts (the
/// topic is created there, named by the template); the upstream killed (`kill -9`) and
/// restarted mid-drain, and the local Brook killed mid-drain, lose nothing and keep order;
/// duplicates are only re-sends after the local crash.
fn kafka_upstream_scenario(
    dir: &Path,
    up_addr: &str,
    start_upstream: impl Fn() -> common::Process,
) {
    let rt = runtime();
    let cfg = kafka_mirror_config(dir, up_addr);
    let (mut local, laddrs) = common::serve_with(&dir.join("local"), Some(&cfg), "127.0.0.1:0");
    create_telemetry(&rt, &laddrs.native, 2);
    produce(&rt, &laddrs.native, "telemetry", 0, 5_000);
    let mut up = start_upstream();
    let dups = check_complete(
        &kafka_records(&rt, "brook.", up_addr, "gw1.telemetry", 5_000),
        5_000,
    );
    assert_eq!(dups, 0, "no failure yet, so no re-sends");

    produce(&rt, &laddrs.native, "telemetry", 5_000, 20_000);
    kill_9(&mut up);
    let mut up = start_upstream();
    check_complete(
        &kafka_records(&rt, "brook.", up_addr, "gw1.telemetry", 25_000),
        25_000,
    );

    wait_saved(&rt, &laddrs.http);
    produce(&rt, &laddrs.native, "telemetry", 25_000, 20_000);
    kill_9(&mut local);
    let (mut local, _) = common::serve_with(&dir.join("local"), Some(&cfg), "127.0.0.1:0");
    let got = kafka_records(&rt, "brook.", up_addr, "gw1.telemetry", 45_000);
    check_complete(&got, 45_000);
    // Re-sends come only from the failures: none of the first 5,000, sent before any.
    assert_eq!(
        dups_before(&got, 5_000),
        0,
        "records sent before any failure arrived twice"
    );
    kill_9(&mut local);
    kill_9(&mut up);
}

/// The Kafka scenario against tansu (a Kafka-API broker in Rust, SQLite storage), read back
/// with rskafka.
#[test]
fn kafka_upstream_tansu_across_outage_upstream_crash_and_local_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up_addr = free_addr();
    let tansu_dir = dir.path().join("tansu");
    kafka_upstream_scenario(dir.path(), &up_addr, || start_tansu(&tansu_dir, &up_addr));
}

/// The Kafka scenario against another Brook's Kafka listener.
#[test]
fn kafka_upstream_across_outage_upstream_crash_and_local_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up_addr = free_addr();
    let data = dir.path().join("up");
    kafka_upstream_scenario(dir.path(), &up_addr, || {
        let mut c = common::brook();
        c.args(["serve", "--native", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--mqtt", "127.0.0.1:0", "--kafka", &up_addr, "--data-dir"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = common::Process::new(c.spawn().expect("upstream brook"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&up_addr).is_err() {
            assert!(Instant::now() < deadline, "upstream did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    });
}

type Received = std::sync::Arc<std::sync::Mutex<BTreeMap<u32, Vec<(u32, u64, String)>>>>;

/// Brook to an MQTT broker (Mosquitto): each record one QoS 1 PUBLISH to
/// `site/{node}/{key}` with the origin headers as MQTT 5 user properties. Records produced while
/// Mosquitto is down arrive after it starts; Mosquitto stopped and restarted mid-drain and a
/// `kill -9` of the local Brook mid-drain lose nothing; order per partition holds.
#[test]
fn mqtt_upstream_gets_everything_across_outages_and_kill_9() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (up_addr, port) = free_port();
    let mut up = start_mosquitto(&dir.path().join("mosq"), port);

    // A persistent subscriber: Mosquitto keeps its messages while it is away.
    let got: Received = Default::default();
    let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
    {
        let got = std::sync::Arc::clone(&got);
        rt.spawn(async move {
            let mut o = rumqttc::v5::MqttOptions::new("checker", "127.0.0.1", port);
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(3600));
            o.set_keep_alive(Duration::from_secs(5));
            let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
            client
                .subscribe("site/#", QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            loop {
                match el.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) => {
                        assert!(p.topic.starts_with(b"site/gw1/k"), "{:?}", p.topic);
                        let props = p.properties.expect("user properties");
                        let h = |n: &str| {
                            props
                                .user_properties
                                .iter()
                                .find(|(k, _)| k == n)
                                .map(|(_, v)| v.clone())
                                .expect("origin property")
                        };
                        let part: u32 = h("brook.partition").parse().expect("partition");
                        got.lock().expect("lock").entry(part).or_default().push((
                            part,
                            h("brook.offset").parse().expect("offset"),
                            String::from_utf8_lossy(&p.payload).into_owned(),
                        ));
                    }
                    Ok(_) => {}
                    // Mosquitto restarting: rumqttc reconnects on the next poll.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }
    subscribed_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("subscribed");
    stop(&mut up);

    let cfg = mirror_config(dir.path(), "mqtt", &up_addr);
    let text =
        std::fs::read_to_string(&cfg).expect("config") + "topic_template = \"site/{node}/{key}\"\n";
    std::fs::write(&cfg, text).expect("config");
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    create_telemetry(&rt, &laddrs.native, 2);
    let wait_for = |want: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let g = got.lock().expect("lock").clone();
            let distinct: std::collections::HashSet<(u32, u64)> =
                g.values().flatten().map(|(p, o, _)| (*p, *o)).collect();
            if distinct.len() >= want {
                return g;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {want} records through Mosquitto",
                distinct.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    produce(&rt, &laddrs.native, "telemetry", 0, 3_000);
    let mut up = start_mosquitto(&dir.path().join("mosq"), port);
    assert_eq!(
        check_complete(&wait_for(3_000), 3_000),
        0,
        "no failure, no re-sends"
    );

    produce(&rt, &laddrs.native, "telemetry", 3_000, 3_000);
    stop(&mut up);
    let mut up = start_mosquitto(&dir.path().join("mosq"), port);
    check_complete(&wait_for(6_000), 6_000);

    wait_saved(&rt, &laddrs.http);
    produce(&rt, &laddrs.native, "telemetry", 6_000, 3_000);
    kill_9(&mut local);
    let (mut local, _) = common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    let got = wait_for(9_000);
    check_complete(&got, 9_000);
    // Re-sends come only from the failures: Mosquitto's restart (it sends what it restored from
    // its database again) and the kill -9 (up to a cursor_flush of records). Nothing of the first
    // 3,000, sent before any failure, arrives twice.
    assert_eq!(
        dups_before(&got, 3_000),
        0,
        "records sent before any failure arrived twice"
    );
    kill_9(&mut local);
    stop(&mut up);
}

/// An MQTT 3.1.1 upstream (`mqtt_version = "3.1.1"`, for brokers without MQTT 5): Mosquitto logs
/// the mirror's sessions as protocol 3.1.1 and the values arrive bare (3.1.1 has no
/// properties). Records produced while Mosquitto is down all arrive once it starts, a `kill -9`
/// of the local Brook mid-drain loses nothing, and each key (one partition, one MQTT topic)
/// keeps its order.
#[test]
fn mqtt_3_1_1_upstream_across_outage_and_kill_9() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let dir = tempfile::tempdir().expect("tempdir");
    // Multi-threaded: the subscriber task runs between block_on calls.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (up_addr, port) = free_port();
    let mosq = dir.path().join("mosq");
    let (mut up, log) = start_mosquitto_logged(&mosq, port);

    // A persistent 3.1.1 subscriber: (MQTT topic, record index) in arrival order.
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
    {
        let got = std::sync::Arc::clone(&got);
        rt.spawn(async move {
            let mut o = MqttOptions::new("checker311", "127.0.0.1", port);
            o.set_clean_session(false);
            o.set_keep_alive(Duration::from_secs(5));
            let (client, mut el) = AsyncClient::new(o, 100);
            client
                .subscribe("site/#", QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let value = String::from_utf8_lossy(&p.payload).into_owned();
                        let index = value
                            .get(1..9)
                            .and_then(|d| d.parse().ok())
                            .unwrap_or_else(|| panic!("a bare record value: {value:?}"));
                        got.lock().expect("lock").push((p.topic, index));
                    }
                    Ok(_) => {}
                    // Mosquitto restarting: rumqttc reconnects on the next poll.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }
    subscribed_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("subscribed");
    stop(&mut up);

    let cfg = mirror_config(dir.path(), "mqtt", &up_addr);
    let text = std::fs::read_to_string(&cfg).expect("config")
        + "topic_template = \"site/{node}/{key}\"\nmqtt_version = \"3.1.1\"\n";
    std::fs::write(&cfg, text).expect("config");
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    create_telemetry(&rt, &laddrs.native, 2);
    // Every index 0..want arrived, on its key's topic, in order per topic (an index seen again
    // is a re-send after the kill -9); returns the re-sends.
    let wait_for = |want: u64| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let g = got.lock().expect("lock").clone();
            let mut first_seen = std::collections::HashSet::new();
            let mut last: BTreeMap<&str, u64> = BTreeMap::new();
            let mut resent = 0;
            for (topic, i) in &g {
                assert_eq!(
                    topic,
                    &format!("site/gw1/k{}", i % 10),
                    "record {i}'s topic"
                );
                if !first_seen.insert(*i) {
                    resent += 1;
                    continue;
                }
                if let Some(prev) = last.insert(topic, *i) {
                    assert!(*i > prev, "{topic}: record {i} after {prev}");
                }
            }
            if first_seen.len() as u64 >= want {
                assert!(
                    first_seen.iter().all(|i| *i < want),
                    "records beyond {want}"
                );
                return resent;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {want} records through Mosquitto",
                first_seen.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    produce(&rt, &laddrs.native, "telemetry", 0, 2_000);
    let (mut up, _) = start_mosquitto_logged(&mosq, port);
    assert_eq!(wait_for(2_000), 0, "no failure, no re-sends");

    wait_saved(&rt, &laddrs.http);
    produce(&rt, &laddrs.native, "telemetry", 2_000, 2_000);
    kill_9(&mut local);
    let (mut local, _) = common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    wait_for(4_000);
    assert_mosquitto_protocol(&log, "brook-gw1-up-telemetry-", 1, "p2");
    kill_9(&mut local);
    stop(&mut up);
}

/// Retention meets mirroring, upstream down: a `reject` topic keeps every segment not yet
/// mirrored even past its retention time (a control topic that is not mirrored expires), and
/// everything arrives once the upstream starts; a `drop_oldest` topic over its size bound loses
/// its oldest records (those the mirror had not read ahead), and the mirror's drop counter says
/// exactly how many never arrived.
#[test]
fn retention_keeps_unmirrored_reject_records_and_counts_drop_oldest_losses() {
    use brook::proto::{OffsetSpec, TopicSettings};
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let up_addr = free_addr();
    let cfg = dir.path().join("brook.toml");
    std::fs::write(
        &cfg,
        format!(
            "[log]\nflush_interval = \"100ms\"\nmin_free = 0\n\n[[mirror]]\nname = \"up\"\nkind = \"brook\"\nupstream = [\"{up_addr}\"]\ntopics = [\"keep\", \"ring\"]\ncursor_flush = \"100ms\"\nbackoff_min = \"50ms\"\nbackoff_max = \"200ms\"\n"
        ),
    )
    .expect("config");
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    let segment = 64 * 1024;
    rt.block_on(async {
        let c = Client::connect(&laddrs.native, "t").await.expect("connect");
        for (name, reject, bytes) in [
            ("keep", true, None),
            ("control", true, None),
            ("ring", false, Some(3 * segment)),
        ] {
            c.create_topic(
                name,
                TopicSettings {
                    partitions: Some(1),
                    retention_ms: if reject { Some(1_000) } else { None },
                    retention_bytes: bytes,
                    segment_bytes: Some(segment),
                    reject_when_full: Some(reject),
                },
            )
            .await
            .expect("create");
        }
    });
    produce(&rt, &laddrs.native, "keep", 0, 3_000);
    produce(&rt, &laddrs.native, "control", 0, 3_000);
    produce(&rt, &laddrs.native, "ring", 0, 8_000);
    let earliest = |topic: &str| {
        rt.block_on(async {
            let c = Client::connect(&laddrs.native, "t").await.expect("connect");
            c.list_offsets(topic, 0, OffsetSpec::Earliest)
                .await
                .expect("offsets")
                .0
        })
    };
    // The control topic's old segments expire; the mirrored one's stay.
    let deadline = Instant::now() + Duration::from_secs(60);
    while earliest("control") == 0 {
        assert!(Instant::now() < deadline, "control topic never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        earliest("keep"),
        0,
        "unmirrored records of a reject topic were deleted"
    );
    let lost = earliest("ring");
    assert!(
        lost > 0,
        "the ring topic should have dropped its oldest records"
    );

    let (mut up, _) = common::serve_with(&dir.path().join("up"), None, &up_addr);
    let keep = upstream_records(&rt, "brook.", &up_addr, "keep", 1, 3_000);
    check_complete(&keep, 3_000);
    // Records the mirror had read ahead before retention removed them still go out; every
    // other record below the log start is lost, and the status counts exactly those.
    upstream_records(&rt, "brook.", &up_addr, "ring", 1, (8_000 - lost) as usize);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = common::brook()
            .args(["mirror", "status", "--http", &laddrs.http, "--json"])
            .output()
            .expect("brook mirror status");
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
        let ring_row = rows.iter().find(|r| r["topic"] == "ring").cloned();
        if let Some(r) = ring_row {
            if r["backlog_records"] == 0 && r["state"] == "connected" {
                let ring =
                    upstream_records(&rt, "brook.", &up_addr, "ring", 1, (8_000 - lost) as usize);
                let got: std::collections::BTreeSet<u64> =
                    ring[&0].iter().map(|(_, o, _)| *o).collect();
                assert!(
                    got.range(lost..).copied().eq(lost..8_000),
                    "a gap above the log start"
                );
                let dropped = r["dropped_records"].as_u64().expect("dropped");
                assert_eq!(dropped, 8_000 - got.len() as u64, "{r}");
                assert!(dropped > 0 || got.len() == 8_000);
                break;
            }
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    kill_9(&mut local);
    kill_9(&mut up);
}

/// `linger`: records that trickle in one durable produce at a time go upstream as one batch
/// once the linger has passed, not one send per record.
#[test]
fn linger_gathers_a_trickle_into_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (mut up, uaddrs) = common::serve_with(&dir.path().join("up"), None, "127.0.0.1:0");
    let cfg = mirror_config(dir.path(), "brook", &uaddrs.native);
    let text = std::fs::read_to_string(&cfg).expect("config") + "linger = \"5s\"\n";
    std::fs::write(&cfg, text).expect("config");
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    create_telemetry(&rt, &laddrs.native, 1);
    // The mirror picks the new topic up (within its 2 s rescan).
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent_bytes_by_topic(&rt, &laddrs.http).1.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the mirror did not pick the topic up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A trickle: one record every 300 ms (input pacing, well inside the 5 s linger; without
    // a linger each would go up alone).
    for i in 0..5 {
        produce(&rt, &laddrs.native, "telemetry", i, 1);
        std::thread::sleep(Duration::from_millis(300));
    }
    let got = upstream_records(&rt, "brook.", &uaddrs.native, "telemetry", 1, 5);
    assert_eq!(check_complete(&got, 5), 0);
    let batches = rt.block_on(async {
        let c = Client::connect(&uaddrs.native, "check")
            .await
            .expect("connect");
        // Every batch upstream, fetch after fetch.
        let (mut n, mut next) = (0, 0);
        while next < 5 {
            let f = c
                .fetch("telemetry", 0, next, 1 << 20, 1, Duration::ZERO)
                .await
                .expect("fetch");
            let mut rest: &[u8] = &f.frames;
            while !rest.is_empty() {
                let b = brook::log::BatchView::parse(rest).expect("batch");
                next = b.next_offset();
                rest = &rest[b.frame().len()..];
                n += 1;
            }
        }
        n
    });
    assert_eq!(batches, 1, "five records lingered into one upstream batch");
    kill_9(&mut local);
    kill_9(&mut up);
}

/// MQTT upstream with a login: Mosquitto refuses anonymous clients; the mirror with the right
/// password (from `password_file`) gets its records acknowledged, one with a wrong password
/// backs off with the refusal as its last error and sends nothing.
#[test]
fn mqtt_upstream_login_with_a_password_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (up_addr, port) = free_port();
    let mosq = dir.path().join("mosq");
    std::fs::create_dir_all(&mosq).expect("dir");
    let passwd = mosq.join("passwd");
    let made = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["gw1", "s3cret"])
        .status()
        .expect("mosquitto_passwd (apt-get install mosquitto)");
    assert!(made.success());
    let mut perms = std::fs::metadata(&passwd).expect("passwd").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&passwd, perms).expect("chmod");
    let mut up = start_mosquitto_with(
        &mosq,
        port,
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            passwd.display()
        ),
    );
    std::fs::write(dir.path().join("good"), "s3cret\n").expect("password");
    std::fs::write(dir.path().join("bad"), "guess\n").expect("password");
    let cfg = dir.path().join("brook.toml");
    let mirror = |name: &str| {
        format!(
            "[[mirror]]\nname = \"{name}\"\nkind = \"mqtt\"\nupstream = [\"{up_addr}\"]\ntopics = [\"telemetry\"]\nnode = \"gw1\"\ntopic_template = \"site/{{node}}/{{key}}\"\nusername = \"gw1\"\npassword_file = \"{}\"\nbackoff_max = \"500ms\"\n",
            dir.path().join(name).display()
        )
    };
    std::fs::write(
        &cfg,
        format!(
            "[log]\nflush_interval = \"100ms\"\nmin_free = 0\n\n{}{}",
            mirror("good"),
            mirror("bad")
        ),
    )
    .expect("config");
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    create_telemetry(&rt, &laddrs.native, 1);
    produce(&rt, &laddrs.native, "telemetry", 0, 100);
    for err in good_sent_bad_refused(&rt, &laddrs.http, 100) {
        assert!(
            err.contains("NotAuthorized") || err.contains("BadUserNamePassword"),
            "{err}"
        );
    }
    kill_9(&mut local);
    stop(&mut up);
}

/// Brook upstream with users and an ACL: the mirror logging in with the right password (from
/// `password_file`) gets every record there; one with a wrong password backs off with the
/// refusal as its last error and sends nothing.
#[test]
fn brook_upstream_login_with_a_password_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let users = dir.path().join("users");
    for (user, password) in [("gw1", "s3cret"), ("gw2", "other")] {
        let mut passwd = common::brook()
            .arg("passwd")
            .arg(&users)
            .args([user, "--iterations", "1000"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("brook passwd");
        std::io::Write::write_all(
            &mut passwd.stdin.take().expect("stdin"),
            format!("{password}\n").as_bytes(),
        )
        .expect("password");
        assert!(passwd.wait().expect("wait").success());
    }
    std::fs::write(
        dir.path().join("acl.toml"),
        "[[rule]]\nuser = \"gw1\"\nproduce = [\"telemetry\"]\nconsume = [\"telemetry\"]\nadmin = true\n",
    )
    .expect("acl");
    let up_cfg = dir.path().join("up.toml");
    std::fs::write(
        &up_cfg,
        format!(
            "[auth]\nusers_file = {:?}\nacl_file = {:?}\nfailed_login_delay = \"10ms\"\n",
            users,
            dir.path().join("acl.toml")
        ),
    )
    .expect("config");
    let (mut up, uaddrs) = common::serve_with(&dir.path().join("up"), Some(&up_cfg), "127.0.0.1:0");
    std::fs::write(dir.path().join("good"), "s3cret\n").expect("password");
    std::fs::write(dir.path().join("bad"), "guess\n").expect("password");
    let mirror = |name: &str| {
        format!(
            "[[mirror]]\nname = \"{name}\"\nkind = \"brook\"\nupstream = [\"{}\"]\ntopics = [\"telemetry\"]\nnode = \"gw1\"\nusername = \"{}\"\npassword_file = {:?}\nbackoff_max = \"500ms\"\n",
            uaddrs.native,
            // The bad link logs in as another user: failed logins hold their user name back
            // (auth.login_backoff), and gw1's own link must not be held back by it.
            if name == "good" { "gw1" } else { "gw2" },
            dir.path().join(name)
        )
    };
    let cfg = dir.path().join("brook.toml");
    std::fs::write(
        &cfg,
        format!(
            "[log]\nflush_interval = \"100ms\"\nmin_free = 0\n\n{}{}",
            mirror("good"),
            mirror("bad")
        ),
    )
    .expect("config");
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    create_telemetry(&rt, &laddrs.native, 2);
    produce(&rt, &laddrs.native, "telemetry", 0, 100);
    for err in good_sent_bad_refused(&rt, &laddrs.http, 100) {
        assert!(err.contains("bad user name or password"), "{err}");
    }
    // Read back upstream as gw1: the 100 records, once each.
    let count = rt.block_on(async {
        let c = Client::connect_as(&uaddrs.native, "check", Some(("gw1", b"s3cret")))
            .await
            .expect("login upstream");
        let mut n = 0;
        for p in 0..c
            .describe_topic("telemetry")
            .await
            .expect("describe")
            .partitions
            .len()
        {
            let f = c
                .fetch("telemetry", p as u32, 0, 1 << 24, 0, Duration::ZERO)
                .await
                .expect("fetch");
            n += f.records(0).expect("records").len();
        }
        n
    });
    assert_eq!(count, 100);
    kill_9(&mut local);
    kill_9(&mut up);
}

/// While the upstream is down the backlog grows with what is produced: `brook mirror status`,
/// `/api/mirrors` and `brook_mirror_backlog_records` all count every record not sent, and the
/// oldest unsent record's age is reported, not only what the mirror read before its first
/// failed send.
#[test]
fn the_backlog_is_counted_while_the_upstream_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let cfg = mirror_config(dir.path(), "brook", &free_addr());
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    create_telemetry(&rt, &laddrs.native, 1);
    let rows = || {
        let body = rt
            .block_on(brook::client::http_get(&laddrs.http, "/api/mirrors", None))
            .expect("/api/mirrors");
        serde_json::from_str::<Vec<serde_json::Value>>(&body).expect("json")
    };
    let await_rows = |what: &str, ok: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let rows = rows();
            if rows.len() == 1 && ok(&rows[0]) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {rows:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // One record read, its send failed: the mirror backs off with it in hand.
    produce(&rt, &laddrs.native, "telemetry", 0, 1);
    await_rows("backing off with one record", &|r| {
        r["state"] == "backing_off" && r["backlog_records"] == 1
    });
    // 50 more while it retries.
    produce(&rt, &laddrs.native, "telemetry", 1, 50);
    await_rows("51 records waiting", &|r| {
        r["backlog_records"] == 51 && r["oldest_unsent_age_ms"].as_u64().is_some_and(|a| a > 0)
    });
    // Nothing drains while it is down: no rate, no ETA.
    await_rows("no drain", &|r| {
        r["drain_records_per_sec"] == 0.0 && r["eta_secs"].is_null()
    });
    let out = common::brook()
        .args(["mirror", "status", "--http", &laddrs.http, "--json"])
        .output()
        .expect("brook mirror status");
    let status: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status[0]["backlog_records"], 51, "{status:?}");
    let metrics = rt
        .block_on(brook::client::http_get(&laddrs.http, "/metrics", None))
        .expect("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("brook_mirror_backlog_records{") && l.ends_with(" 51")),
        "{metrics}"
    );
    kill_9(&mut local);
}
