//! Power loss, for real: `brook serve` runs on a FUSE file system ([`powerfs`]) that keeps what
//! was written in memory until it is fsynced and drops everything unsynced when the test "cuts
//! the power" (some cuts also tear the last write of a segment or of the metadata store). While
//! it runs, clients do what users do, and the test notes every acknowledgement:
//!
//! - native produce with `acks = durable` (topic `nat`, 3 partitions);
//! - MQTT 3.1.1 QoS 1 publishes (PUBACK; the log topic `mqtt`);
//! - Kafka `acks=all` produce with rskafka (topic `kaf`);
//! - topic creates and deletes, and consumer-group offset commits (native);
//! - an MQTT retained message replaced again and again, and a persistent MQTT session's
//!   subscription (SUBACK);
//! - keyed native produces with `acks = durable` to a compacted topic (`cmp`, compacted every
//!   200 ms, so cuts land before, during and after rewrites): after every cut each key's newest
//!   record is the last acknowledged one (or a later attempt), and compaction did remove records;
//! - a mirror of `nat` to an upstream Brook (on an ordinary disk), whose cursor is saved every
//!   `cursor_flush`: at the end the upstream holds every acknowledged record (no gap), and the
//!   records sent twice are few (the cursor was not lost, only its last interval).
//!
//! Then the power goes: the device stops, Brook is killed, the file system loses what was not
//! synced, it is mounted again and Brook restarts on it. Every acknowledged record must be
//! there, once, at dense offsets; every acknowledged topic create and delete, offset commit,
//! retained message and session too. The counts are printed.
//!
//! Needs root and `/dev/fuse` (CI has both); without them the test fails, it does not skip.

mod powerfs;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brook::client::Client;
use brook::log::BatchBuilder;
use brook::proto::{Acks, TopicSettings};
use rumqttc::{Event, Incoming, QoS};
use tokio::sync::mpsc;

use crate::common;
use crate::common::{Addrs, Process, Rng, serve_with};

/// Cuts per run, and which of them tear a write (and of which file).
const CUTS: u64 = 20;
fn tear_of(cut: u64) -> Option<&'static str> {
    match cut % 4 {
        3 if (cut / 4) % 2 == 0 => Some(".log"),
        3 => Some("db"),
        _ => None,
    }
}

const CONFIG: &str = r#"
[log]
min_free = "none"
flush_interval = "100ms"
compaction_interval = "200ms"

[topic_defaults]
segment_size = "128KiB"
max_batch_size = "64KiB"
retention = "none"

[mqtt]
durability = "durable"
max_packet_size = "32KiB"

[[mirror]]
name = "up"
kind = "brook"
topics = ["nat"]
cursor_flush = "200ms"
backoff_min = "50ms"
backoff_max = "200ms"
"#;

/// Everything acknowledged so far (and, where a later unacknowledged attempt may also have
/// landed, what was tried).
#[derive(Default)]
struct Acked {
    native: BTreeSet<String>,
    mqtt: BTreeSet<String>,
    kafka: BTreeSet<String>,
    created: BTreeSet<String>,
    /// Deletes sent (acknowledged or not: an unanswered one may have happened).
    deleting: BTreeSet<String>,
    deleted: BTreeSet<String>,
    /// Committed offset of group `g` on `nat`/0: last acknowledged, last tried.
    commit: Option<(u64, u64)>,
    /// Number in the retained payload `r<n>` on `ret/x`: last acknowledged, last tried.
    retained: Option<(u64, u64)>,
    /// The persistent session `sess` has an acknowledged subscription.
    session: bool,
    /// Compacted topic `cmp`, per key: the newest sequence number acknowledged, and tried.
    compact: BTreeMap<String, (u64, u64)>,
    /// Records acknowledged on `cmp` in all, and read at the last check.
    compact_acked: usize,
    compact_read: usize,
}

type Shared = Arc<Mutex<Acked>>;

fn lock(a: &Shared) -> std::sync::MutexGuard<'_, Acked> {
    a.lock().unwrap_or_else(|e| e.into_inner())
}

/// An MQTT 3.1.1 client whose event loop forwards what arrives (and stops at the first error:
/// no reconnect, so nothing is re-sent after a cut).
struct Mqtt {
    client: rumqttc::AsyncClient,
    rx: mpsc::UnboundedReceiver<Incoming>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn mqtt(addrs: &Addrs, id: &str, clean: bool) -> (Mqtt, bool) {
    let port: u16 = addrs
        .mqtt
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("mqtt port");
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(e) = el.poll().await {
            if let Event::Incoming(p) = e {
                if tx.send(p).is_err() {
                    return;
                }
            }
        }
    });
    let present = loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Incoming::ConnAck(a))) => break a.session_present,
            Ok(Some(_)) => {}
            other => panic!("{id}: no CONNACK ({other:?})"),
        }
    };
    (Mqtt { client, rx, task }, present)
}

impl Mqtt {
    /// Waits for a packet `pick` accepts.
    async fn expect<T>(
        &mut self,
        wait: Duration,
        pick: impl Fn(Incoming) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if let Some(t) = pick(p) {
                return Some(t);
            }
        }
        None
    }

    /// One QoS 1 publish; true once its PUBACK arrived.
    async fn publish(&mut self, topic: &str, retain: bool, payload: &str) -> bool {
        if self
            .client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .is_err()
        {
            return false;
        }
        self.expect(Duration::from_secs(30), |p| {
            matches!(p, Incoming::PubAck(_)).then_some(())
        })
        .await
        .is_some()
    }
}

/// The workload, until `stop`: every task notes what was acknowledged.
fn start_workload(
    rt: &tokio::runtime::Runtime,
    addrs: &Addrs,
    acked: &Shared,
    cut: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let go = |stop: &Arc<AtomicBool>| !stop.load(Ordering::Relaxed);

    // Native durable produce, 10 records a batch, round robin over 3 partitions.
    {
        let (addr, acked, stop) = (addrs.native.clone(), Arc::clone(acked), Arc::clone(stop));
        tasks.push(rt.spawn(async move {
            let Ok(c) = Client::connect(&addr, "pl-native").await else {
                return;
            };
            let mut n = 0u64;
            while go(&stop) {
                let values: Vec<String> = (0..10).map(|i| format!("n{cut}-{n}-{i}")).collect();
                let mut b = BatchBuilder::new();
                for v in &values {
                    b.push(common::T0, None, Some(v.as_bytes()), &[]);
                }
                match c
                    .produce("nat", Some((n % 3) as u32), None, Acks::Durable, &b)
                    .await
                {
                    Ok(_) => lock(&acked).native.extend(values),
                    Err(_) => return,
                }
                n += 1;
            }
        }));
    }
    // MQTT QoS 1, one in flight.
    {
        let (a, acked, stop) = (addrs_clone(addrs), Arc::clone(acked), Arc::clone(stop));
        tasks.push(rt.spawn(async move {
            let (mut m, _) = mqtt(&a, &format!("pl-pub-{cut}"), true).await;
            let mut n = 0u64;
            while go(&stop) {
                let v = format!("m{cut}-{n}");
                if !m.publish(&format!("sensors/{}", n % 4), false, &v).await {
                    return;
                }
                lock(&acked).mqtt.insert(v);
                n += 1;
            }
        }));
    }
    // Kafka acks=all, one record at a time.
    {
        let (addr, acked, stop) = (addrs.kafka.clone(), Arc::clone(acked), Arc::clone(stop));
        tasks.push(rt.spawn(async move {
            let Ok(client) = rskafka::client::ClientBuilder::new(vec![addr])
                .build()
                .await
            else {
                return;
            };
            let Ok(pc) = client
                .partition_client(
                    "kaf",
                    0,
                    rskafka::client::partition::UnknownTopicHandling::Error,
                )
                .await
            else {
                return;
            };
            let mut n = 0u64;
            while go(&stop) {
                let v = format!("k{cut}-{n}");
                let record = rskafka::record::Record {
                    key: None,
                    value: Some(v.clone().into_bytes()),
                    headers: BTreeMap::new(),
                    timestamp: rskafka::chrono::DateTime::from_timestamp_millis(common::T0)
                        .unwrap_or_default(),
                };
                match pc
                    .produce(
                        vec![record],
                        rskafka::client::partition::Compression::NoCompression,
                    )
                    .await
                {
                    Ok(_) => {
                        lock(&acked).kafka.insert(v);
                    }
                    Err(_) => return,
                }
                n += 1;
            }
        }));
    }
    // Keyed durable produces to the compacted topic: 10 keys of 40 per batch.
    {
        let (addr, acked, stop) = (addrs.native.clone(), Arc::clone(acked), Arc::clone(stop));
        tasks.push(rt.spawn(async move {
            let Ok(c) = Client::connect(&addr, "pl-compact").await else {
                return;
            };
            // Sequence numbers grow across cuts: the cut number leads.
            let mut n = cut * 1_000_000;
            while go(&stop) {
                let mut b = BatchBuilder::new();
                let mut tried = Vec::new();
                for i in 0..10u64 {
                    let key = format!("c{}", (n + i * 7) % 40);
                    let value = format!("{}{:>400}", n + i, "");
                    b.push(
                        common::T0,
                        Some(key.as_bytes()),
                        Some(value.as_bytes()),
                        &[],
                    );
                    tried.push((key, n + i));
                }
                {
                    let mut a = lock(&acked);
                    for (k, seq) in &tried {
                        let e = a.compact.entry(k.clone()).or_insert((0, 0));
                        e.1 = e.1.max(*seq);
                    }
                }
                match c.produce("cmp", Some(0), None, Acks::Durable, &b).await {
                    Ok(_) => {
                        let mut a = lock(&acked);
                        a.compact_acked += tried.len();
                        for (k, seq) in tried {
                            let e = a.compact.entry(k).or_insert((0, 0));
                            e.0 = e.0.max(seq);
                        }
                    }
                    Err(_) => return,
                }
                n += 10;
            }
        }));
    }
    // Topic creates and deletes, offset commits.
    {
        let (addr, acked, stop) = (addrs.native.clone(), Arc::clone(acked), Arc::clone(stop));
        tasks.push(rt.spawn(async move {
            let Ok(c) = Client::connect(&addr, "pl-admin").await else {
                return;
            };
            let mut n = 0u64;
            while go(&stop) {
                let name = format!("c{cut}-{n}");
                let settings = TopicSettings {
                    partitions: Some(1),
                    ..TopicSettings::default()
                };
                if c.create_topic(&name, settings).await.is_err() {
                    return;
                }
                lock(&acked).created.insert(name);
                // The one before it is deleted again (topics stay few: Brook opens them all).
                if n > 0 {
                    let old = format!("c{cut}-{}", n - 1);
                    lock(&acked).deleting.insert(old.clone());
                    if c.delete_topic(&old).await.is_err() {
                        return;
                    }
                    lock(&acked).deleted.insert(old);
                }
                let end = c
                    .list_offsets("nat", 0, brook::proto::OffsetSpec::Latest)
                    .await
                    .map(|(_, latest, _)| latest);
                let Ok(end) = end else { return };
                let committed = lock(&acked).commit.map_or(0, |(a, _)| a);
                let want = end.max(committed);
                {
                    let mut g = lock(&acked);
                    let acked_before = g.commit.map_or(0, |(a, _)| a);
                    g.commit = Some((acked_before, want));
                }
                if c.commit_offsets("g", None, &[("nat", 0, want)])
                    .await
                    .is_err()
                {
                    return;
                }
                lock(&acked).commit = Some((want, want));
                n += 1;
            }
        }));
    }
    // The retained message, replaced again and again.
    {
        let (a, acked, stop) = (addrs_clone(addrs), Arc::clone(acked), Arc::clone(stop));
        tasks.push(rt.spawn(async move {
            let (mut m, _) = mqtt(&a, &format!("pl-ret-{cut}"), true).await;
            while go(&stop) {
                let n = {
                    let mut g = lock(&acked);
                    let (done, tried) = g.retained.unwrap_or((0, 0));
                    g.retained = Some((done, tried + 1));
                    tried + 1
                };
                if !m.publish("ret/x", true, &format!("r{n}")).await {
                    return;
                }
                {
                    let mut g = lock(&acked);
                    if let Some((done, tried)) = g.retained {
                        g.retained = Some((done.max(n), tried));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tasks
}

fn addrs_clone(a: &Addrs) -> Addrs {
    Addrs {
        native: a.native.clone(),
        http: a.http.clone(),
        mqtt: a.mqtt.clone(),
        kafka: a.kafka.clone(),
        listening: a.listening.clone(),
        log: Arc::clone(&a.log),
    }
}

/// Every record of a topic, checking offsets are dense from 0.
async fn read_topic(c: &Client, topic: &str) -> Vec<String> {
    let parts = c
        .describe_topic(topic)
        .await
        .unwrap_or_else(|e| panic!("describe {topic}: {e}"))
        .partitions
        .len() as u32;
    let mut values = Vec::new();
    for p in 0..parts {
        let mut next = 0u64;
        loop {
            let f = c
                .fetch(topic, p, next, 1 << 20, 1, Duration::ZERO)
                .await
                .unwrap_or_else(|e| panic!("fetch {topic}/{p} at {next}: {e}"));
            let recs = f.records(next).expect("records");
            for (offset, r) in &recs {
                assert_eq!(
                    *offset, next,
                    "{topic}/{p}: a gap or a repeat in the offsets"
                );
                next += 1;
                values.push(String::from_utf8_lossy(r.value_bytes()).into_owned());
            }
            if recs.is_empty() || next >= f.high_watermark {
                break;
            }
        }
    }
    values
}

/// Checks everything acknowledged so far against the restarted Brook; returns the counts.
async fn verify(addrs: &Addrs, acked: &Shared, cut: u64) -> [usize; 3] {
    let c = Client::connect(&addrs.native, "pl-verify")
        .await
        .expect("connect for verification");
    // Asked one by one: a topic list answer holds at most 256 names.
    let exists = |t: String| {
        let c = &c;
        async move { (c.describe_topic(&t).await.is_ok(), t) }
    };
    let (created, deleted) = {
        let a = lock(acked);
        let created: Vec<String> = a.created.difference(&a.deleting).cloned().collect();
        (created, a.deleted.iter().cloned().collect::<Vec<_>>())
    };
    for t in created {
        let (there, t) = exists(t).await;
        assert!(
            there,
            "after cut {cut}: acknowledged topic {t} is gone\n{}",
            addrs.log_tail()
        );
    }
    for t in deleted {
        let (there, t) = exists(t).await;
        assert!(!there, "after cut {cut}: deleted topic {t} came back");
    }
    let mut counts = [0; 3];
    for (i, topic) in ["nat", "mqtt", "kaf"].into_iter().enumerate() {
        if !exists(topic.to_string()).await.0 {
            continue;
        }
        let values = read_topic(&c, topic).await;
        let mut seen = BTreeSet::new();
        for v in &values {
            assert!(
                seen.insert(v.as_str()),
                "after cut {cut}: {topic} holds {v} twice"
            );
        }
        let a = lock(acked);
        let want = match topic {
            "nat" => &a.native,
            "mqtt" => &a.mqtt,
            _ => &a.kafka,
        };
        let lost: Vec<&String> = want.iter().filter(|v| !seen.contains(v.as_str())).collect();
        assert!(
            lost.is_empty(),
            "after cut {cut}: {} acknowledged records of {topic} lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        counts[i] = want.len();
    }
    // The compacted topic: each key's newest record is its last acknowledged one (or a later
    // attempt that landed); nothing is read twice.
    let compact = lock(acked).compact.clone();
    if !compact.is_empty() {
        let mut newest: BTreeMap<String, u64> = BTreeMap::new();
        let mut read = 0usize;
        let mut next = 0u64;
        loop {
            let f = c
                .fetch("cmp", 0, next, 1 << 20, 1, Duration::ZERO)
                .await
                .unwrap_or_else(|e| panic!("after cut {cut}: fetch cmp at {next}: {e}"));
            let recs = f.records(next).expect("records");
            for (offset, r) in &recs {
                assert!(*offset >= next, "after cut {cut}: cmp offsets go back");
                next = offset + 1;
                read += 1;
                let key =
                    String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
                let seq: u64 = String::from_utf8_lossy(r.value_bytes())
                    .trim()
                    .parse()
                    .expect("a sequence number");
                newest.insert(key, seq);
            }
            if recs.is_empty() || next >= f.high_watermark {
                break;
            }
        }
        for (key, (done, tried)) in &compact {
            let got = newest.get(key).copied();
            assert!(
                got.is_some_and(|g| g >= *done && g <= *tried) || (*done == 0 && got.is_none()),
                "after cut {cut}: key {key} of cmp reads {got:?}, acknowledged {done} (tried {tried})\n{}",
                addrs.log_tail()
            );
        }
        let mut a = lock(acked);
        a.compact_read = read;
    }
    let commit = lock(acked).commit;
    if let Some((done, tried)) = commit {
        let got = c.fetch_offsets("g", "nat").await.expect("fetch offsets");
        let p0 = got.iter().find(|(p, _)| *p == 0).and_then(|(_, o)| *o);
        assert!(
            p0.is_some_and(|o| o >= done && o <= tried),
            "after cut {cut}: group g's offset is {p0:?}, acknowledged {done} (tried {tried})"
        );
    }
    let retained = lock(acked).retained;
    if let Some((done, tried)) = retained.filter(|(d, _)| *d > 0) {
        let (mut m, _) = mqtt(addrs, "pl-check-ret", true).await;
        m.client
            .subscribe("ret/x", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let got = m
            .expect(Duration::from_secs(10), |p| match p {
                Incoming::Publish(p) if p.retain => {
                    Some(String::from_utf8_lossy(&p.payload).into_owned())
                }
                _ => None,
            })
            .await;
        let n: Option<u64> = got
            .as_deref()
            .and_then(|s| s.strip_prefix('r')?.parse().ok());
        assert!(
            n.is_some_and(|n| n >= done && n <= tried),
            "after cut {cut}: retained message is {got:?}, acknowledged r{done} (tried r{tried})"
        );
    }
    // The persistent session: present again, and subscribed (re-subscribing is harmless).
    let (mut m, present) = mqtt(addrs, "pl-sess", false).await;
    let had = lock(acked).session;
    assert!(
        present || !had,
        "after cut {cut}: the persistent session with an acknowledged subscription is gone"
    );
    m.client
        .subscribe("sess/t", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    if m.expect(Duration::from_secs(10), |p| {
        matches!(p, Incoming::SubAck(_)).then_some(())
    })
    .await
    .is_some()
    {
        lock(acked).session = true;
    }
    counts
}

/// Waits until the upstream holds every acknowledged record of `nat`; returns the records
/// upstream and how many of them are repeats (the same origin partition and offset).
async fn mirrored(up: &Addrs, acked: &Shared) -> (usize, usize) {
    let c = Client::connect(&up.native, "pl-upstream")
        .await
        .expect("connect upstream");
    let want = lock(acked).native.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut values = Vec::new();
        if c.describe_topic("nat").await.is_ok() {
            values = read_topic(&c, "nat").await;
        }
        let have: BTreeSet<&str> = values.iter().map(String::as_str).collect();
        let missing = want.iter().filter(|v| !have.contains(v.as_str())).count();
        if missing == 0 {
            return (values.len(), values.len() - have.len());
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged records never reached the upstream\n{}",
            up.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn start(mnt: &Path, config: &Path) -> (Process, Addrs) {
    serve_with(&mnt.join("data"), Some(config), "127.0.0.1:0")
}

#[test]
fn nothing_acknowledged_is_lost_across_power_cuts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let config = dir.path().join("brook.toml");
    let (_upstream, up) = serve_with(&dir.path().join("up"), None, "127.0.0.1:0");
    std::fs::write(&config, format!("{CONFIG}upstream = [\"{}\"]\n", up.native)).expect("config");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ctl = powerfs::Control::new();
    let acked: Shared = Arc::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let mut torn_cuts = 0;

    for cut in 0..=CUTS {
        let session = ctl.mount(&mnt);
        let (mut server, addrs) = start(&mnt, &config);
        let counts = rt.block_on(verify(&addrs, &acked, cut));
        if cut == CUTS {
            let (created, deleted) = {
                let a = lock(&acked);
                (a.created.len(), a.deleted.len())
            };
            println!(
                "power loss: {CUTS} cuts ({torn_cuts} tearing a write) in {:.1} s; all acknowledged \
                 items back: {} native, {} MQTT, {} Kafka records; {} topics created, {} deleted; \
                 group offset, retained message and persistent session checked after every cut",
                started.elapsed().as_secs_f64(),
                counts[0],
                counts[1],
                counts[2],
                created,
                deleted,
            );
            assert!(
                counts.iter().all(|&n| n > 0),
                "every kind of record was acknowledged"
            );
            let (acked_n, read_n) = {
                let a = lock(&acked);
                (a.compact_acked, a.compact_read)
            };
            println!(
                "compacted topic: {acked_n} records acknowledged, {read_n} left after compaction; \
                 the newest of each of its 40 keys checked after every cut"
            );
            assert!(
                read_n < acked_n / 2,
                "compaction removed too little: {read_n} of {acked_n} records left"
            );
            let (sent, twice) = rt.block_on(mirrored(&up, &acked));
            println!(
                "mirror: every acknowledged record upstream; {twice} of {sent} records upstream \
                 were sent twice across the {CUTS} cuts"
            );
            // A lost cursor would send everything again after a cut.
            assert!(
                twice * 2 < sent,
                "{twice} of {sent} mirrored records are duplicates"
            );
            break;
        }
        if cut == 0 {
            rt.block_on(async {
                let c = Client::connect(&addrs.native, "pl-setup")
                    .await
                    .expect("connect");
                for (name, partitions) in [("nat", 3), ("kaf", 1)] {
                    let s = TopicSettings {
                        partitions: Some(partitions),
                        ..TopicSettings::default()
                    };
                    c.create_topic(name, s).await.expect("create topic");
                }
                let options = brook::proto::TopicOptions {
                    cleanup: Some(brook::proto::CleanupPolicy::Compact),
                    delete_retention_ms: None,
                };
                c.create_topic_with("cmp", TopicSettings::default(), options)
                    .await
                    .expect("create the compacted topic");
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = start_workload(&rt, &addrs, &acked, cut, &stop);
        match tear_of(cut) {
            Some(suffix) => {
                // Let the workload get going, then tear the next write to such a file.
                std::thread::sleep(Duration::from_millis(100 + rng.next() % 400));
                ctl.tear_next_write(suffix, rng.next());
                let deadline = Instant::now() + Duration::from_secs(30);
                while ctl.torn().is_none() {
                    assert!(
                        Instant::now() < deadline,
                        "cut {cut}: no write to a {suffix} file in 30 s\n{}",
                        addrs.log_tail()
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                torn_cuts += 1;
                let (file, kept, of) = ctl.torn().unwrap_or_default();
                println!(
                    "cut {cut}: tore a write to {file}: {kept} of {of} bytes reached the disk"
                );
            }
            None => {
                std::thread::sleep(Duration::from_millis(200 + rng.next() % 1000));
                ctl.kill_device();
            }
        }
        // The device is dead: Brook is killed, the clients dropped, the power cut.
        let _ = server.kill();
        let _ = server.wait();
        stop.store(true, Ordering::Relaxed);
        for t in &tasks {
            t.abort();
        }
        rt.block_on(async {
            for t in tasks {
                let _ = t.await;
            }
        });
        drop(session);
        ctl.cut();
    }
    assert!(torn_cuts >= 5, "{torn_cuts} torn cuts");
    let (writes, file_syncs, dir_syncs) = ctl.counts();
    println!(
        "file system: {writes} writes, {file_syncs} file fsyncs, {dir_syncs} directory fsyncs"
    );
}
