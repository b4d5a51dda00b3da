//! The `brook` binary: `serve` starts on the embedded default and stops cleanly on SIGTERM;
//! `config default` and `config check` behave as documented.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::common::brook;

#[test]
fn serve_opens_the_data_dir_and_stops_on_sigterm() {
    serve_until_sigterm("info");
}

/// A BROOK_LOG that is not a filter (a typo of a level) is named on stderr and logging goes on
/// at info, rather than going silent.
#[test]
fn a_bad_brook_log_warns_and_logs_at_info() {
    for bad in ["debg", "warn,brook::mirror=loud"] {
        let log = serve_until_sigterm(bad);
        assert!(
            log.contains(&format!("BROOK_LOG={bad:?}")) && log.contains("using info"),
            "{bad}: {log}"
        );
    }
}

/// `brook serve` with every listener on an ephemeral loopback port and its data in `data`.
fn serve_command(data: &std::path::Path) -> std::process::Command {
    let mut cmd = brook();
    cmd.args([
        "serve",
        "--native",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--mqtt",
        "127.0.0.1:0",
        "--kafka",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(data);
    cmd
}

/// `brook serve` on a fresh data dir with BROOK_LOG=`brook_log`, until it says it listens, then
/// SIGTERM; checks a clean exit and returns what it wrote on stderr.
fn serve_until_sigterm(brook_log: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut child = serve_command(&data)
        .env("BROOK_LOG", brook_log)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn brook serve");
    let stderr = child.stderr.take().expect("stderr");
    // Lines arrive through a channel, so a server that logs nothing fails the test (after 20 s)
    // instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = String::new();
    // Wait for the line that says the log is open (no sleeping).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !log.contains("listening") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => break,
        }
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().expect("wait");
    let _ = reader.join();
    log.extend(rx.try_iter().map(|l| l + "\n"));
    assert!(log.contains("listening"), "serve did not start:\n{log}");
    assert!(data.join("topics").is_dir(), "topics directory created");
    assert!(data.join("meta").is_dir(), "metadata directory created");
    assert!(status.success(), "exit status {status:?}:\n{log}");
    assert!(log.contains("shutting down"), "{log}");
    log
}

/// Under systemd (`Type=notify`, `WatchdogSec=`) `brook serve` says `READY=1` once it listens,
/// `WATCHDOG=1` from its housekeeping round at half the watchdog interval while that keeps
/// running, and `STOPPING=1` on SIGTERM, after which it exits cleanly.
#[test]
fn tells_systemd_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut child = crate::common::Process::new(
        serve_command(&dir.path().join("data"))
            .env("NOTIFY_SOCKET", &path)
            // A ping every 200 ms.
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID")
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn brook serve"),
    );
    let mut buf = [0u8; 512];
    let mut next = || -> String {
        let n = sock.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // (A ping may come first: the housekeeping thread starts before the listeners.)
    let first = std::iter::repeat_with(&mut next)
        .take(50)
        .find(|m| m != "WATCHDOG=1")
        .unwrap_or_default();
    assert!(
        first.starts_with("READY=1"),
        "first notification: {first:?}"
    );
    // Five pings, none of them more than a few intervals after the one before.
    let mut last = Instant::now();
    for i in 0..5 {
        let msg = next();
        assert_eq!(msg, "WATCHDOG=1", "notification {i} after READY");
        assert!(
            last.elapsed() < Duration::from_secs(5),
            "ping {i} came {:?} after the one before",
            last.elapsed()
        );
        last = Instant::now();
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // Pings may still come until the housekeeping thread hears of the shutdown.
    let stopping = std::iter::repeat_with(&mut next)
        .take(50)
        .find(|m| m != "WATCHDOG=1");
    assert_eq!(stopping.as_deref(), Some("STOPPING=1"));
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn config_default_is_valid_and_check_names_bad_keys() {
    let out = brook().args(["config", "default"]).output().expect("run");
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &out.stdout).expect("write");
    let out = brook()
        .args(["config", "check"])
        .arg(&good)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    // `brook config check` of `text`: whether it passed, and what it said on stderr.
    let check = |text: &str| {
        std::fs::write(&bad, text).expect("write");
        let out = brook()
            .args(["config", "check"])
            .arg(&bad)
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check("[log]\nmin_fre = \"1GiB\"\n");
    assert!(!ok);
    assert!(err.contains("min_fre") && err.contains("bad.toml"), "{err}");

    // The files a config names are read as `serve` reads them: missing ones fail the check.
    for (section, key, file) in [
        ("auth", "users_file", "users"),
        ("auth", "acl_file", "acl"),
        ("auth", "http_token_file", "token"),
    ] {
        let missing = dir.path().join(file).display().to_string();
        let (ok, err) = check(&format!("[{section}]\n{key} = {missing:?}\n"));
        assert!(!ok, "{key}: a missing file passed");
        assert!(
            err.contains(&format!("{section}.{key}")) && err.contains(file),
            "{key}: {err}"
        );
    }
    let (ok, err) = check(&format!(
        "[listeners]\nmqtt_tls = \"127.0.0.1:0\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        dir.path().join("cert.pem").display().to_string(),
        dir.path().join("key.pem").display().to_string()
    ));
    assert!(!ok, "a missing certificate passed");
    assert!(err.contains("cert.pem"), "{err}");

    let (ok, err) = check("[topic_defaults]\nsegment_size = \"12 bananas\"\n");
    assert!(!ok);
    assert!(
        err.contains("segment_size") && err.contains("bananas"),
        "{err}"
    );
}

#[test]
fn version_names_the_release_commit_target_and_profile() {
    let out = brook().arg("--version").output().expect("run");
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    let expected_start = format!("brook {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(v.starts_with(&expected_start), "{v}");
    let commit = v[expected_start.len()..].split(',').next().expect("commit");
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{v}"
    );
    assert!(v.contains("-linux-"), "the target triple: {v}");
    assert!(v.trim_end().ends_with(" profile)"), "{v}");
}

/// The README's quick start gives each protocol's consumer its own group: a group id serves one
/// protocol at a time (a native and a Kafka member of one group refuse each other).
#[test]
fn the_quick_start_uses_a_group_per_protocol() {
    let readme = include_str!("../../README.md");
    let start = readme.find("## Quick start").expect("a quick start");
    let end = readme[start..]
        .find("\n## ")
        .map_or(readme.len(), |e| start + e);
    let mut native = Vec::new();
    let mut kafka = Vec::new();
    for line in readme[start..end].lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            match (words.first().copied(), pair[0]) {
                (Some("brook"), "--group") => native.push(pair[1]),
                (_, "-G") if line.contains("kcat") => kafka.push(pair[1]),
                _ => {}
            }
        }
    }
    assert!(
        !native.is_empty() && !kafka.is_empty(),
        "{native:?} {kafka:?}"
    );
    for g in &native {
        assert!(
            !kafka.contains(g),
            "group {g} is used by the native CLI and by kcat"
        );
    }
}

/// `runtime.worker_threads` sets the async runtime's worker threads (`brook_runtime_workers`);
/// 0, the default, is one per two cores, at least one.
#[test]
fn runtime_worker_threads_apply() {
    use crate::common::auth::{http, metric};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("brook.toml");
    std::fs::write(&config, "[runtime]\nworker_threads = 3\n").expect("config");
    let (_server, addrs) =
        crate::common::serve_with(&dir.path().join("a"), Some(&config), "127.0.0.1:0");
    let m = http(&addrs.http, "/metrics", None).expect("metrics");
    assert_eq!(metric(&m, "brook_runtime_workers "), 3, "{m}");

    let (_server, addrs) = crate::common::serve(&dir.path().join("b"));
    let m = http(&addrs.http, "/metrics", None).expect("metrics");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        metric(&m, "brook_runtime_workers "),
        (cores / 2).max(1) as u64,
        "{m}"
    );
}

/// Each thread of process `pid`: its name and the text of `/proc/PID/task/TID/<file>`
/// (nothing for a process that is gone).
#[cfg(target_os = "linux")]
fn threads_of(pid: u32, file: &str) -> Vec<(String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            let name = std::fs::read_to_string(t.join("comm")).ok()?;
            let text = std::fs::read_to_string(t.join(file)).ok()?;
            Some((name.trim().to_string(), text))
        })
        .collect()
}

/// Creates `topic` on the broker at `native` and appends two records to it durably, with the
/// `brook` CLI.
fn produce_durably(native: &str, topic: &str) {
    let out = crate::common::brook()
        .env("BROOK_BROKER", native)
        .args(["topics", "create", topic])
        .output()
        .expect("brook topics create");
    assert!(out.status.success(), "{out:?}");
    let mut produce = crate::common::brook()
        .env("BROOK_BROKER", native)
        .args(["produce", "--topic", topic, "--durability", "durable"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("brook produce");
    std::io::Write::write_all(&mut produce.stdin.take().expect("stdin"), b"one\ntwo\n")
        .expect("write");
    assert!(produce.wait().expect("wait").success());
}

/// An idle `brook serve` keeps two threads: its main thread, which runs the housekeeping
/// rounds (the broker's and the MQTT hub's, once two blocking-pool tasks that kept two
/// threads, then a thread of their own), and the runtime's worker (one per two cores). The
/// log's flushers (two kept until session 24), sled's I/O threads (seven in sled 0.34, then
/// one kept) and the blocking pool's start when there is work and leave within seconds of it.
#[cfg(target_os = "linux")]
#[test]
fn idle_serve_keeps_few_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addrs) = crate::common::serve(dir.path());
    let names = || -> Vec<String> {
        threads_of(server.id(), "comm")
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Under qemu-user (the ARM runs in CI) the emulator adds a thread of its own (its RCU
    // thread, named like the main thread "qemu-<arch>"), which is not Brook's.
    let emulated = names().iter().any(|n| n.starts_with("qemu-"));
    let bound = 1 + (cores / 2).max(1) + usize::from(emulated);
    // Some work first: a topic created (a metadata flush on sled's threads) and records
    // appended durably (a flusher thread).
    produce_durably(&addrs.native, "idle");
    assert!(
        names().iter().any(|n| n.starts_with("brook-flush")),
        "no flusher thread ran: {:?}",
        names()
    );
    // Flusher threads leave 10 s after their last work.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = names();
    while seen.len() > bound && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        seen = names();
    }
    assert!(
        seen.len() <= bound,
        "{} threads, bound {bound}: {seen:?}",
        seen.len()
    );
    // And they sleep: the housekeeping round once a second, the rest woken by nothing (a CPU
    // that is never woken can sleep deeply). Before the round had a thread of its own, and
    // before the Kafka group timeouts waited for a group, an idle broker woke 11-12 times a
    // second; Mosquitto 2.0 wakes 10 times. Counted over 4 s, qemu's own threads left out.
    let switches = || -> Vec<(String, u64)> {
        threads_of(server.id(), "status")
            .into_iter()
            .filter(|(name, _)| !name.starts_with("qemu-"))
            .map(|(name, status)| {
                let n = status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum();
                (name, n)
            })
            .collect()
    };
    let span = std::time::Duration::from_secs(4);
    let before = switches();
    std::thread::sleep(span);
    let after = switches();
    let woken: u64 =
        after.iter().map(|(_, n)| n).sum::<u64>() - before.iter().map(|(_, n)| n).sum::<u64>();
    assert_eq!(
        before.len(),
        after.len(),
        "threads came or went while idle: {before:?} {after:?}"
    );
    assert!(
        woken <= 4 * span.as_secs(),
        "{woken} wake-ups in {span:?} idle: {before:?} -> {after:?}"
    );
}

/// The log's flusher threads run under SCHED_BATCH, so a flusher an appender wakes does not
/// take the core from the runtime worker that woke it; the workers keep the default policy.
#[cfg(target_os = "linux")]
#[test]
fn flusher_threads_yield_to_the_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addrs) = crate::common::serve(dir.path());
    // Flushers start with the first work.
    produce_durably(&addrs.native, "yield");
    // (name, scheduling policy: field 41 of /proc/PID/task/TID/stat, after the name's ")")
    let threads: Vec<(String, u32)> = threads_of(server.id(), "stat")
        .into_iter()
        .filter_map(|(name, stat)| {
            let policy = stat
                .rsplit_once(") ")?
                .1
                .split_whitespace()
                .nth(38)?
                .parse()
                .ok()?;
            Some((name, policy))
        })
        .collect();
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    let policy = |prefix: &str| -> Vec<u32> {
        threads
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, p)| *p)
            .collect()
    };
    let flushers = policy("brook-flush");
    assert!(!flushers.is_empty(), "no flusher threads: {threads:?}");
    assert!(
        flushers.iter().all(|p| *p == SCHED_BATCH),
        "flushers: {threads:?}"
    );
    assert!(
        policy("tokio-rt-worker").iter().all(|p| *p == SCHED_OTHER),
        "workers: {threads:?}"
    );
}
