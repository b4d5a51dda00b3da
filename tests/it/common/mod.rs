//! Helpers shared by the storage tests: small topics, batches of known values, reading back.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use brook::log::clock::{ManualTime, TimeSource};
use brook::log::fs::{Fs, StdFs};
use brook::log::{
    BatchBuilder, Durability, PartitionChoice, Store, StoreOptions, TopicConfig, Visibility,
};
use brook::units::{ByteSize, HumanDuration};

pub mod auth;
pub mod mirror;
pub mod pki;

pub const T0: i64 = 1_780_000_000_000; // a wall clock in 2026

/// A child process a test started (`brook serve`, Mosquitto, tansu), killed and reaped when
/// dropped if it still runs, so a test that fails part-way leaves nothing behind. Derefs to the
/// [`Child`] for the tests' own signals and waits.
pub struct Process(Child);

impl Process {
    pub fn new(child: Child) -> Self {
        Process(child)
    }
}

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A tiny deterministic PRNG so failures reproduce from the seed.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A topic with 64 KiB segments, no retention, 4 KiB batches at most.
pub fn small_topic(partitions: u32) -> TopicConfig {
    TopicConfig {
        partitions,
        segment_size: ByteSize::kib(64),
        retention: HumanDuration(std::time::Duration::ZERO),
        max_batch_size: ByteSize::kib(16),
        index_interval: ByteSize(256),
        ..TopicConfig::default()
    }
}

/// No store-wide limits.
pub fn no_limits() -> StoreOptions {
    StoreOptions {
        min_free: ByteSize(0),
        ..StoreOptions::default()
    }
}

pub fn open(
    dir: &Path,
    fs: Arc<dyn Fs>,
    time: &ManualTime,
    opts: StoreOptions,
    topics: &[(&str, TopicConfig)],
) -> Store {
    let topics: Vec<(String, TopicConfig)> = topics
        .iter()
        .map(|(n, c)| (n.to_string(), c.clone()))
        .collect();
    Store::open_with(
        dir,
        fs,
        Box::new(time.clone()) as Box<dyn TimeSource>,
        opts,
        &topics,
    )
    .expect("store opens")
    .0
}

pub fn open_std(dir: &Path, topics: &[(&str, TopicConfig)]) -> Store {
    open(
        dir,
        Arc::new(StdFs),
        &ManualTime::new(T0),
        no_limits(),
        topics,
    )
}

/// The value of record `n`: recognisable and of varying length.
pub fn value(n: u64) -> Vec<u8> {
    let mut v = format!("value-{n}-").into_bytes();
    v.resize(20 + (n % 50) as usize, b'x');
    v
}

/// A batch of records `first..first + count`, values from [`value`].
pub fn batch(first: u64, count: u64) -> BatchBuilder {
    let mut b = BatchBuilder::new();
    for n in first..first + count {
        b.push(
            T0 + n as i64,
            Some(format!("k{n}").as_bytes()),
            Some(&value(n)),
            &[],
        );
    }
    b
}

/// Appends `count` records starting at value number `first` to one partition.
pub fn append(store: &Store, topic: &str, partition: u32, first: u64, count: u64, d: Durability) {
    store
        .append(
            topic,
            PartitionChoice::Id(partition),
            &batch(first, count),
            d,
        )
        .expect("append");
}

/// Every readable record of a partition as (offset, value), from its first offset.
pub fn read_all(store: &Store, topic: &str, partition: u32) -> Vec<(u64, Vec<u8>)> {
    let p = Arc::clone(
        store
            .topic(topic)
            .expect("topic")
            .partition(partition)
            .expect("partition"),
    );
    let mut from = p.log_start();
    let mut out = Vec::new();
    loop {
        let r = p.read(from, 64 * 1024, Visibility::Written).expect("read");
        if r.frames.is_empty() {
            return out;
        }
        for b in r.batches() {
            for rec in b.records() {
                let rec = rec.expect("record decodes");
                if rec.offset >= from {
                    out.push((rec.offset, rec.value_bytes().to_vec()));
                }
            }
        }
        from = r.next_offset;
    }
}

/// A command for `program`, run through `BROOK_TEST_RUNNER` when set (e.g.
/// `qemu-aarch64 -L /usr/aarch64-linux-gnu` when the tests run for an ARM target under
/// emulation: there is no binfmt_misc to start a foreign binary directly).
pub fn command(program: impl AsRef<OsStr>) -> Command {
    match std::env::var("BROOK_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut parts = runner.split_whitespace();
            let mut c = Command::new(parts.next().unwrap_or_default());
            c.args(parts).arg(program);
            c
        }
        _ => Command::new(program),
    }
}

/// The `brook` binary built for these tests.
pub fn brook() -> Command {
    command(env!("CARGO_BIN_EXE_brook"))
}

/// A server config for tests: every listener on an ephemeral loopback port, data in `dir`,
/// housekeeping every 100 ms, no free-space floor.
pub fn server_config(dir: &Path) -> brook::config::Config {
    let mut c = brook::config::Config {
        data_dir: dir.to_path_buf(),
        ..brook::config::Config::default()
    };
    c.listeners.native = "127.0.0.1:0".into();
    c.listeners.http = "127.0.0.1:0".into();
    c.listeners.mqtt = "127.0.0.1:0".into();
    c.listeners.kafka = "127.0.0.1:0".into();
    c.log.flush_interval = HumanDuration::millis(100);
    c.log.min_free = ByteSize(0);
    c
}

/// Where a `brook serve` started by [`serve`] listens.
pub struct Addrs {
    pub native: String,
    pub http: String,
    pub mqtt: String,
    pub kafka: String,
    /// The whole "listening" log line, for the addresses of the other listeners
    /// ([`log_field`]: `mqtt_ws=`, `mqtt_tls=`, ...).
    pub listening: String,
    /// The server's log so far (the last 200 lines), for failure messages.
    pub log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

impl Addrs {
    /// The server's recent log, to print when a test fails.
    pub fn log_tail(&self) -> String {
        let g = self.log.lock().unwrap_or_else(|e| e.into_inner());
        g.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Starts `brook serve` on ephemeral loopback ports with data in `data`; returns the child and
/// its addresses, read from its "listening" log line (no sleeping).
pub fn serve(data: &Path) -> (Process, Addrs) {
    serve_with(data, None, "127.0.0.1:0")
}

/// As [`serve`], with a config file and the native listener on `native`.
pub fn serve_with(data: &Path, config: Option<&Path>, native: &str) -> (Process, Addrs) {
    serve_on(data, config, native, "127.0.0.1:0")
}

/// As [`serve_with`], with the MQTT listener on `mqtt` (a restart on the same port, for
/// clients that reconnect by themselves).
pub fn serve_on(data: &Path, config: Option<&Path>, native: &str, mqtt: &str) -> (Process, Addrs) {
    let mut cmd = brook();
    if let Some(c) = config {
        cmd.arg("serve").arg("--config").arg(c);
    } else {
        cmd.arg("serve");
    }
    let mut child = Process::new(
        cmd.args([
            "--native",
            native,
            "--http",
            "127.0.0.1:0",
            "--mqtt",
            mqtt,
            "--kafka",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .env("BROOK_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn brook serve"),
    );
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    let field = |line: &str, name: &str| {
        line.split(name)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    };
    let addrs = loop {
        let Some(line) = lines.next() else {
            panic!("brook serve exited before listening:\n{seen}");
        };
        let line = line.expect("line");
        seen.push_str(&line);
        seen.push('\n');
        if let (Some(native), Some(http), Some(mqtt), Some(kafka)) = (
            field(&line, "native="),
            field(&line, "http="),
            field(&line, "mqtt="),
            field(&line, "kafka="),
        ) {
            break Addrs {
                native,
                http,
                mqtt,
                kafka,
                listening: line.clone(),
                log: Default::default(),
            };
        }
    };
    // Keep draining the log (the server must never block on a full pipe), keeping its tail.
    let log = std::sync::Arc::clone(&addrs.log);
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(seen.lines().map(str::to_string));
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let mut g = log.lock().unwrap_or_else(|e| e.into_inner());
            if g.len() == 200 {
                g.pop_front();
            }
            g.push_back(line);
        }
    });
    (child, addrs)
}

/// Appends `n` as an MQTT variable byte integer (remaining lengths, property lengths).
pub fn mqtt_varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

/// The value after `name` (e.g. `"mqtt_ws="`) in a log line.
pub fn log_field(line: &str, name: &str) -> String {
    line.split(name)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        .to_string()
}

/// A plain HTTP/1.0 GET of `path` from `addr`: the whole answer, headers included.
#[allow(dead_code)]
pub fn http_raw(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}
