//! Helpers of the mirror tests (both directions): real upstreams started on loopback (another
//! Brook, tansu, Mosquitto), producing and reading back with origin headers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use brook::client::Client;

use super::Process;

pub fn kill_9(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.wait();
}

/// A loopback address nothing listens on yet (the upstream starts there later).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// The port of a `host:port` address.
pub fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

/// A free loopback address and its port, for an upstream the test starts.
pub fn free_port() -> (String, u16) {
    let addr = free_addr();
    let port = port_of(&addr);
    (addr, port)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Produces `n` records keyed `k{i % 10}`, 100-byte values `v{first + i}...`, durably, through the native
/// protocol.
pub fn produce(rt: &tokio::runtime::Runtime, addr: &str, topic: &str, first: u64, n: u64) {
    rt.block_on(async {
        let c = std::sync::Arc::new(Client::connect(addr, "test").await.expect("connect"));
        let mut p = brook::client::Producer::new(c, topic, brook::proto::Acks::Durable)
            .await
            .expect("producer")
            .batch_bytes(16 * 1024);
        for i in first..first + n {
            let r = brook::log::Record {
                timestamp: 1_700_000_000_000 + i as i64,
                key: Some(format!("k{}", i % 10).into_bytes()),
                value: Some(format!("v{i:08}{:>90}", "x").into_bytes()),
                headers: Vec::new(),
            };
            p.send(None, &r).await.expect("send");
        }
        p.flush().await.expect("flush");
    });
}

/// Origin (partition, offset) -> value of every record of a Brook topic, in its order per
/// partition, waiting until `want` distinct origins are there. `origin` is the prefix of the
/// origin headers: `brook.` for records mirrored out, `brook.upstream.` for records brought in.
pub fn upstream_records(
    rt: &tokio::runtime::Runtime,
    origin: &str,
    addr: &str,
    topic: &str,
    partitions: u32,
    want: usize,
) -> BTreeMap<u32, Vec<(u32, u64, String)>> {
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut out: BTreeMap<u32, Vec<(u32, u64, String)>> = BTreeMap::new();
            if let Ok(c) = Client::connect(addr, "check").await {
                for p in 0..partitions {
                    let mut next = 0;
                    loop {
                        let Ok(f) = c.fetch(topic, p, next, 1 << 20, 1, Duration::ZERO).await
                        else {
                            break;
                        };
                        let recs = f.records(next).expect("records");
                        if recs.is_empty() {
                            break;
                        }
                        for (off, r) in recs {
                            let h = |n: &str| {
                                r.headers
                                    .iter()
                                    .find(|h| h.name == n)
                                    .map(|h| String::from_utf8_lossy(h.bytes()).into_owned())
                                    .expect("origin header")
                            };
                            out.entry(p).or_default().push((
                                h(&format!("{origin}partition")).parse().expect("partition"),
                                h(&format!("{origin}offset")).parse().expect("offset"),
                                String::from_utf8_lossy(r.value_bytes()).into_owned(),
                            ));
                            next = off + 1;
                        }
                    }
                }
            }
            let distinct: std::collections::HashSet<(u32, u64)> =
                out.values().flatten().map(|(p, o, _)| (*p, *o)).collect();
            if distinct.len() >= want {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {want} records upstream",
                distinct.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Every origin record exactly covers 0..n per local partition, in order: a value seen again is
/// a re-send of a run already sent; returns the number of duplicates.
pub fn check_complete(got: &BTreeMap<u32, Vec<(u32, u64, String)>>, total: usize) -> usize {
    let mut seen: BTreeMap<(u32, u64), String> = BTreeMap::new();
    let mut dups = 0;
    for (up, recs) in got {
        let mut max: Option<u64> = None;
        for (p, o, v) in recs {
            assert_eq!(p, up, "a record kept its partition number");
            if let Some(prev) = seen.insert((*p, *o), v.clone()) {
                assert_eq!(&prev, v, "a re-send carries the same record");
                dups += 1;
                continue;
            }
            if let Some(m) = max {
                assert!(*o > m, "partition {p}: origin offset {o} after {m}");
            }
            max = Some(*o);
        }
    }
    assert_eq!(seen.len(), total, "every record arrived");
    // Dense offsets from 0 in each local partition.
    let mut by_p: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (p, o) in seen.keys() {
        by_p.entry(*p).or_default().push(*o);
    }
    for (p, offs) in by_p {
        assert_eq!(
            offs,
            (0..offs.len() as u64).collect::<Vec<_>>(),
            "partition {p} has a gap"
        );
    }
    dups
}

/// The tansu binary: `BROOK_TANSU`, else the CI cache (`tests/peers.sh` installs it there).
pub fn tansu() -> std::path::PathBuf {
    let path = std::env::var_os("BROOK_TANSU")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("BROOK_CACHE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache/brook-ci")
                });
            cache.join("tansu/bin/tansu")
        });
    assert!(
        path.exists(),
        "tansu is missing at {}: run tests/peers.sh (cargo install tansu --version 0.6.0 --features libsql into the cache)",
        path.display()
    );
    path
}

/// Starts tansu on `addr` with its SQLite store in `dir`, and waits until it accepts.
///
/// tansu 0.6.0 keeps record headers in a SQLite table with no index, so every fetched record
/// scans all headers ever stored: a fetch of a few thousand records with the four origin
/// headers takes minutes and clients time out. The index it lacks is added here (to the peer's
/// database, through Python's sqlite3; tansu itself is unchanged).
pub fn start_tansu(dir: &Path, addr: &str) -> Process {
    start_tansu_with(dir, addr, addr, &[])
}

/// [`start_tansu`] telling clients to come to `advertised` (e.g. a TLS proxy in front), with
/// more broker arguments (e.g. `--authentication`).
pub fn start_tansu_with(dir: &Path, addr: &str, advertised: &str, more: &[&str]) -> Process {
    std::fs::create_dir_all(dir).expect("tansu dir");
    let url = format!("tcp://{addr}");
    let advertised = format!("tcp://{advertised}");
    // tansu reads the SQLite path relative to its working directory.
    let child = Process::new(
        std::process::Command::new(tansu())
            .current_dir(dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(more)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn tansu"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let python = std::env::var("BROOK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let indexed = std::process::Command::new(&python)
        .arg("-c")
        .arg(
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=30); \
             c.execute('create index if not exists brook_test_header on header (topition, offset_id)'); \
             c.commit()",
        )
        .arg(dir.join("tansu.db"))
        .status()
        .expect("python for tansu's index (run tests/run.sh)");
    assert!(indexed.success(), "indexing tansu's header table failed");
    child
}

/// Reads every record of `topic` from a Kafka cluster with rskafka, waiting until `want`
/// distinct origins are there.
pub fn kafka_records(
    rt: &tokio::runtime::Runtime,
    origin: &str,
    addr: &str,
    topic: &str,
    want: usize,
) -> BTreeMap<u32, Vec<(u32, u64, String)>> {
    kafka_records_as(rt, origin, addr, None, None, topic, want)
}

/// [`kafka_records`] over TLS and logging in with `sasl`, when given.
pub fn kafka_records_as(
    rt: &tokio::runtime::Runtime,
    origin: &str,
    addr: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    sasl: Option<rskafka::client::SaslConfig>,
    topic: &str,
    want: usize,
) -> BTreeMap<u32, Vec<(u32, u64, String)>> {
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let mut out: BTreeMap<u32, Vec<(u32, u64, String)>> = BTreeMap::new();
            let read = async {
                let mut builder = rskafka::client::ClientBuilder::new(vec![addr.to_string()]);
                if let Some(tls) = tls.clone() {
                    builder = builder.tls_config(tls);
                }
                if let Some(sasl) = sasl.clone() {
                    builder = builder.sasl_config(sasl);
                }
                let client = builder.build().await.map_err(|e| e.to_string())?;
                let topics = client.list_topics().await.map_err(|e| e.to_string())?;
                let Some(t) = topics.into_iter().find(|t| t.name == topic) else {
                    return Ok::<_, String>(());
                };
                for p in t.partitions {
                    let pc = client
                        .partition_client(
                            topic,
                            p,
                            rskafka::client::partition::UnknownTopicHandling::Error,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut next = 0i64;
                    loop {
                        let (recs, hw) = pc
                            .fetch_records(next, 1..4_000_000, 100)
                            .await
                            .map_err(|e| e.to_string())?;
                        for r in &recs {
                            let h = |n: &str| {
                                String::from_utf8_lossy(&r.record.headers[n]).into_owned()
                            };
                            out.entry(p as u32).or_default().push((
                                h(&format!("{origin}partition")).parse().expect("partition"),
                                h(&format!("{origin}offset")).parse().expect("offset"),
                                String::from_utf8_lossy(r.record.value.as_deref().unwrap_or(&[]))
                                    .into_owned(),
                            ));
                            next = r.offset + 1;
                        }
                        if recs.is_empty() || next >= hw {
                            break;
                        }
                    }
                }
                Ok(())
            };
            let r = tokio::time::timeout(Duration::from_secs(20), read).await;
            let distinct: std::collections::HashSet<(u32, u64)> =
                out.values().flatten().map(|(p, o, _)| (*p, *o)).collect();
            if matches!(r, Ok(Ok(()))) && distinct.len() >= want {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {want} records in the Kafka upstream ({r:?})",
                distinct.len()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// Mosquitto on `port` with its persistence in `dir` (stopped with SIGTERM, so it saves).
pub fn start_mosquitto(dir: &Path, port: u16) -> Process {
    start_mosquitto_with(dir, port, "allow_anonymous true\n")
}

/// Mosquitto as [`start_mosquitto`] with `auth` as its authentication lines.
pub fn start_mosquitto_with(dir: &Path, port: u16, auth: &str) -> Process {
    std::fs::create_dir_all(dir).expect("dir");
    // Started as root, Mosquitto drops to its own user: let it write its database here.
    let mut perms = std::fs::metadata(dir).expect("dir").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
    std::fs::set_permissions(dir, perms).expect("chmod");
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\n{auth}persistence true\npersistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 0\n",
            dir.display()
        ),
    )
    .expect("conf");
    let child = Process::new(
        std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

pub fn stop(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
}

/// Records arriving twice among the first `first` produced (values `v{index:08}...`, as
/// [`produce`] writes them): those were sent before any failure, so re-sends must not include
/// them.
pub fn dups_before(got: &BTreeMap<u32, Vec<(u32, u64, String)>>, first: u64) -> usize {
    let mut seen = std::collections::HashMap::<&str, u32>::new();
    for (_, _, v) in got.values().flatten() {
        *seen.entry(v.as_str()).or_default() += 1;
    }
    seen.iter()
        .filter(|(v, n)| **n > 1 && v[1..9].parse::<u64>().expect("index") < first)
        .count()
}

/// Waits until every mirrored partition's cursor is saved to disk (`saved_cursor` has caught up
/// with `cursor` in `/api/mirrors`): a crash from then on re-sends nothing sent so far.
pub fn wait_saved(rt: &tokio::runtime::Runtime, http: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = rt
            .block_on(brook::client::http_get(http, "/api/mirrors", None))
            .expect("/api/mirrors");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body).expect("json");
        if !rows.is_empty() && rows.iter().all(|r| r["saved_cursor"] == r["cursor"]) {
            return;
        }
        assert!(Instant::now() < deadline, "cursors not saved: {rows:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sent bytes per topic, a snapshot time and how many partitions have sent anything yet,
/// from the local Brook's `/api/mirrors`.
pub fn sent_bytes_by_topic(
    rt: &tokio::runtime::Runtime,
    http: &str,
) -> (Instant, BTreeMap<String, u64>, usize) {
    let body = rt
        .block_on(brook::client::http_get(http, "/api/mirrors", None))
        .expect("/api/mirrors");
    let at = Instant::now();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).expect("json");
    let mut out = BTreeMap::new();
    let mut moving = 0;
    for r in rows {
        let sent = r["sent_bytes"].as_u64().expect("sent_bytes");
        moving += usize::from(sent > 0);
        *out.entry(r["topic"].as_str().expect("topic").to_string())
            .or_default() += sent;
    }
    (at, out, moving)
}

/// Waits until mirror `good` has sent `n` records (over all its partitions) and every partition
/// of mirror `bad` is backing off having sent nothing; returns bad's last errors.
pub fn good_sent_bad_refused(rt: &tokio::runtime::Runtime, http: &str, n: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let body = rt
            .block_on(brook::client::http_get(http, "/api/mirrors", None))
            .expect("/api/mirrors");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body).expect("json");
        let of = |m: &str| rows.iter().filter(|r| r["mirror"] == m).collect::<Vec<_>>();
        let sent = |rows: &[&serde_json::Value]| {
            rows.iter()
                .map(|r| r["sent_records"].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        let (good, bad) = (of("good"), of("bad"));
        if sent(&good) == n && !bad.is_empty() && bad.iter().all(|r| r["state"] == "backing_off") {
            assert_eq!(sent(&bad), 0, "{bad:?}");
            return bad
                .iter()
                .map(|r| r["last_error"].as_str().expect("an error").to_string())
                .collect();
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Mosquitto with its log in `dir/mosquitto.log` (connection messages on); returns the child
/// and the log's path.
pub fn start_mosquitto_logged(dir: &Path, port: u16) -> (Process, std::path::PathBuf) {
    let log = dir.join("mosquitto.log");
    let lines = format!(
        "allow_anonymous true\nlog_dest file {}\nconnection_messages true\n",
        log.display()
    );
    (start_mosquitto_with(dir, port, &lines), log)
}

/// Asserts Mosquitto logged at least `min` sessions of clients whose id starts with `client`,
/// every one with protocol `want` (`p2`: MQTT 3.1.1, `p5`: MQTT 5).
pub fn assert_mosquitto_protocol(log: &Path, client: &str, min: usize, want: &str) {
    let protocols = mosquitto_protocols(log, client);
    assert!(protocols.len() >= min, "{client}'s sessions: {protocols:?}");
    assert!(
        protocols.iter().all(|p| p == want),
        "{client} spoke {want}: {protocols:?}"
    );
}

/// The protocol versions Mosquitto logged for clients whose id starts with `client`: from
/// "New client connected from ... as ID (p2, c1, k30)", where p2 is MQTT 3.1.1 and p5 MQTT 5.
fn mosquitto_protocols(log: &Path, client: &str) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(&format!(" as {client}")).nth(1))
        .filter_map(|rest| rest.split(" (").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .map(str::to_string)
        .collect()
}

/// Writes `dir/brook.toml` with one mirror, `up`, of kind `kind` to `upstream`, for the topic
/// `telemetry` (node `gw1`, batches of 500, cursors saved every 200 ms, retries 50-500 ms).
pub fn mirror_config(dir: &Path, kind: &str, upstream: &str) -> std::path::PathBuf {
    let path = dir.join("brook.toml");
    std::fs::write(
        &path,
        format!(
            "[log]\nflush_interval = \"100ms\"\nmin_free = 0\n\n[[mirror]]\nname = \"up\"\nkind = \"{kind}\"\nupstream = [\"{upstream}\"]\ntopics = [\"telemetry\"]\nnode = \"gw1\"\nbatch_records = 500\ncursor_flush = \"200ms\"\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n"
        ),
    )
    .expect("write config");
    path
}
