//! The broker through the real binary, as a user drives it: `brook serve`, `brook topics`,
//! `brook produce` and `brook consume`, with a `kill -9` of the server in between.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use crate::common;
use crate::common::brook;

fn serve(data: &Path) -> (common::Process, String) {
    let (child, addrs) = common::serve(data);
    (child, addrs.native)
}

fn run(addr: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut child = brook()
        .args(args)
        .env("BROOK_BROKER", addr)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(input) = stdin {
        let mut s = child.stdin.take().expect("stdin");
        s.write_all(input).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "brook {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[derive(serde::Deserialize)]
struct Line {
    partition: u32,
    offset: u64,
    value: String,
}

#[test]
fn durable_records_survive_kill_9_and_groups_consume_each_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut server, addr) = serve(&data);
    run(
        &addr,
        &["topics", "create", "events", "--partitions", "3"],
        None,
    );
    let input: String = (0..100_000).map(|i| format!("{i}\n")).collect();
    run(
        &addr,
        &["produce", "--topic", "events", "--durability", "durable"],
        Some(input.as_bytes()),
    );
    server.kill().expect("kill -9"); // SIGKILL: no shutdown work at all
    let _ = server.wait();

    let (mut server, addr) = serve(&data);
    let out = run(
        &addr,
        &[
            "consume", "--topic", "events", "--from", "earliest", "--count", "100000", "--format",
            "json",
        ],
        None,
    );
    let lines: Vec<Line> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 100_000, "every acknowledged record survived");
    let mut values: Vec<u64> = lines
        .iter()
        .map(|l| l.value.parse().expect("number"))
        .collect();
    // In produce order within each partition.
    let mut per_partition: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for (l, v) in lines.iter().zip(&values) {
        per_partition
            .entry(l.partition)
            .or_default()
            .push((l.offset, *v));
    }
    assert_eq!(per_partition.len(), 3, "spread over the partitions");
    for (p, recs) in &per_partition {
        assert!(
            recs.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
            "partition {p}: produce order kept"
        );
    }
    values.sort_unstable();
    assert_eq!(values, (0..100_000).collect::<Vec<u64>>());

    // Two group consumers in a row print each record exactly once between them.
    let first = run(
        &addr,
        &[
            "consume", "--topic", "events", "--group", "g", "--from", "earliest", "--count",
            "50000",
        ],
        None,
    );
    let second = run(
        &addr,
        &[
            "consume", "--topic", "events", "--group", "g", "--from", "earliest", "--count",
            "50000",
        ],
        None,
    );
    let mut both: Vec<u64> = first
        .lines()
        .chain(second.lines())
        .map(|l| l.parse().expect("number"))
        .collect();
    assert_eq!(first.lines().count(), 50_000);
    assert_eq!(second.lines().count(), 50_000);
    both.sort_unstable();
    assert_eq!(
        both,
        (0..100_000).collect::<Vec<u64>>(),
        "each record exactly once"
    );

    let described = run(&addr, &["groups", "describe", "g", "--json"], None);
    let g: serde_json::Value = serde_json::from_str(described.trim()).expect("json");
    let committed: u64 = g["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| o["committed"].as_u64().expect("committed"))
        .sum();
    assert_eq!(committed, 100_000);
    let topics = run(&addr, &["topics", "list", "--json"], None);
    assert_eq!(topics.trim(), "[\"events\"]");
    server.kill().expect("kill");
    let _ = server.wait();
}

/// A line typed into `brook produce` is sent after the linger, while the input stays open.
#[test]
fn produce_sends_a_pausing_input_after_the_linger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addr) = serve(&dir.path().join("data"));
    run(&addr, &["topics", "create", "typed"], None);
    let mut producer = brook()
        .args(["produce", "--topic", "typed"])
        .env("BROOK_BROKER", &addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn produce");
    let mut stdin = producer.stdin.take().expect("stdin");
    stdin.write_all(b"hello\n").expect("type a line");
    stdin.flush().expect("flush");
    // The input stays open; the record must still arrive.
    let mut consumer = brook()
        .args(["consume", "--topic", "typed", "--count", "1"])
        .env("BROOK_BROKER", &addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn consume");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = consumer.try_wait().expect("try_wait") {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = consumer.kill();
    let out = consumer.wait_with_output().expect("output");
    drop(stdin);
    let _ = producer.wait();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        status.is_some_and(|s| s.success()),
        "the typed record never arrived"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
}

/// `brook topics create --cleanup compact --delete-retention 1h` makes a compacted topic (as the
/// HTTP API shows); a bad policy is refused by the CLI with the choices.
#[test]
fn topics_create_sets_the_cleanup_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addrs) = common::serve(&dir.path().join("data"));
    let args = ["topics", "create", "state", "--cleanup", "compact"];
    run(&addrs.native, &args, None);
    run(
        &addrs.native,
        &[
            "topics",
            "create",
            "both",
            "--cleanup",
            "compact_delete",
            "--delete-retention",
            "1h",
        ],
        None,
    );
    let topics = common::http_raw(&addrs.http, "/api/topics");
    let _ = server.kill();
    let _ = server.wait();
    let json = topics.split("\r\n\r\n").nth(1).expect("a body");
    let v: serde_json::Value = serde_json::from_str(json).expect("json");
    let cleanup = |name: &str| {
        v.as_array()
            .and_then(|a| a.iter().find(|t| t["name"] == name))
            .map(|t| (t["cleanup"].clone(), t["delete_retention"].clone()))
    };
    assert_eq!(
        cleanup("state"),
        Some((serde_json::json!("compact"), serde_json::json!("1d")))
    );
    assert_eq!(
        cleanup("both"),
        Some((serde_json::json!("compact_delete"), serde_json::json!("1h")))
    );
    let out = brook()
        .args(["topics", "create", "x", "--cleanup", "shred"])
        .env("BROOK_BROKER", &addrs.native)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("compact_delete"));
}

/// The connection flags are accepted anywhere on the line: after the subcommand (`brook topics
/// create t --broker ADDR`) and before the command name (`brook --broker ADDR topics list`,
/// `--broker=ADDR` too), and win over BROOK_BROKER (which names a dead address here).
#[test]
fn connection_flags_are_accepted_anywhere_on_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, native) = serve(&dir.path().join("data"));
    let dead = "127.0.0.1:1";
    run(
        dead,
        &["topics", "create", "late", "--broker", &native],
        None,
    );
    let listed = run(dead, &["topics", "list", "--broker", &native], None);
    run(dead, &["groups", "list", "--broker", &native], None);
    let before = run(dead, &["--broker", &native, "topics", "list"], None);
    let joined = format!("--broker={native}");
    let before_eq = run(dead, &[&joined, "topics", "list", "--json"], None);
    let _ = server.kill();
    let _ = server.wait();
    assert!(listed.contains("late"), "{listed}");
    assert!(before.contains("late"), "{before}");
    assert!(before_eq.contains("late"), "{before_eq}");
}

/// Exit status: 0 success, 1 a failure (cannot connect), 2 a usage error (clap's, or a bad
/// value; with "did you mean" for a mistyped command or flag), 3 the server refused.
#[test]
fn exit_codes_tell_usage_failure_and_refusal_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, native) = serve(&dir.path().join("data"));
    let status = |args: &[&str], broker: &str| {
        let out = brook()
            .args(args)
            .env("BROOK_BROKER", broker)
            .output()
            .expect("run brook");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = status(&["topcs", "list"], &native);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("topics"), "a suggestion: {err}");
    let (code, err) = status(&["topics", "list", "--brokr", "x"], &native);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--broker"), "a suggestion: {err}");
    let (code, err) = status(&["consume", "--topic", "t", "--from", "yesterday"], &native);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = status(&["topics", "describe", "no-such-topic"], &native);
    assert_eq!(code, Some(3), "{err}");
    let (code, err) = status(&["topics", "list"], "127.0.0.1:1");
    assert_eq!(code, Some(1), "{err}");
    let (code, _) = status(&["topics", "list"], &native);
    assert_eq!(code, Some(0));
    let _ = server.kill();
    let _ = server.wait();
}

/// `brook topics describe --json` prints the document `/api/topics` serves for the topic: the
/// same field names and, for what the native protocol carries, the same values.
#[test]
fn topic_json_has_the_http_api_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addrs) = common::serve(&dir.path().join("data"));
    let native = addrs.native.clone();
    run(
        &native,
        &[
            "topics",
            "create",
            "j",
            "--partitions",
            "2",
            "--retention",
            "3d",
        ],
        None,
    );
    run(&native, &["produce", "--topic", "j"], Some(b"a\nb\nc\n"));
    let cli: serde_json::Value =
        serde_json::from_str(run(&native, &["topics", "describe", "j", "--json"], None).trim())
            .expect("cli json");
    let http = common::http_raw(&addrs.http, "/api/topics");
    let body = http.split("\r\n\r\n").nth(1).expect("body");
    let all: Vec<serde_json::Value> = serde_json::from_str(body).expect("http json");
    let api = all.iter().find(|t| t["name"] == "j").expect("topic j");
    let _ = server.kill();
    let _ = server.wait();
    let cli = cli.as_object().expect("object");
    assert!(!cli.is_empty());
    for (k, v) in cli {
        if k == "partitions" {
            continue;
        }
        assert_eq!(&api[k.as_str()], v, "field {k}: cli {cli:?}, api {api}");
    }
    let (cp, ap) = (
        cli["partitions"].as_array().expect("cli"),
        api["partitions"].as_array().expect("api"),
    );
    assert_eq!(cp.len(), 2);
    for (c, a) in cp.iter().zip(ap) {
        for (k, v) in c.as_object().expect("partition") {
            assert_eq!(&a[k.as_str()], v, "partition field {k}: {c} vs {a}");
        }
    }
    assert_eq!(cli["retention"], "3d");
}

/// `brook consume --group G --follow` stopped by SIGINT, by SIGTERM, or by its reader closing
/// stdout (`| head`) commits exactly what it printed and leaves the group: each next run starts
/// at the first record the last one did not print. Between them the runs print every record
/// once (the pipe's run: once what it wrote, of which the test reads only the start).
#[test]
fn consume_with_a_group_commits_what_it_printed_however_it_is_stopped() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, addr) = serve(&dir.path().join("data"));
    run(
        &addr,
        &["topics", "create", "ev", "--partitions", "2"],
        None,
    );
    let n = 20_000usize;
    let input: String = (0..n).map(|i| format!("{i:06}\n")).collect();
    run(&addr, &["produce", "--topic", "ev"], Some(input.as_bytes()));
    let follow = || {
        brook()
            .args([
                "consume", "--topic", "ev", "--group", "g", "--from", "earliest",
            ])
            .args(["--follow", "--format", "json"])
            .env("BROOK_BROKER", &addr)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn consume")
    };
    let parse = |l: &str| -> (u32, u64, String) {
        let l: Line = serde_json::from_str(l).expect("json line");
        (l.partition, l.offset, l.value)
    };
    let mut seen: Vec<(u32, u64, String)> = Vec::new();
    // Stopped by a signal: everything it printed is read (to its end), and is committed.
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut c = follow();
        let mut lines = BufReader::new(c.stdout.take().expect("stdout")).lines();
        for _ in 0..500 {
            let l = lines.next().expect("a line").expect("read");
            seen.push(parse(&l));
        }
        // SAFETY: kill(2) on the child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(c.id() as i32, signal) }, 0);
        for l in lines {
            seen.push(parse(&l.expect("read")));
        }
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "signal {signal}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut unique = std::collections::BTreeSet::new();
    for r in &seen {
        assert!(unique.insert(r.clone()), "printed twice: {r:?}");
    }
    // Its reader closes stdout after 100 lines (`| head -n 100`).
    let mut c = follow();
    let mut lines = BufReader::new(c.stdout.take().expect("stdout")).lines();
    let mut piped = Vec::new();
    for _ in 0..100 {
        piped.push(parse(&lines.next().expect("a line").expect("read")));
    }
    drop(lines);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = c.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after its stdout closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    // The rest, without --follow.
    let rest = run(
        &addr,
        &[
            "consume", "--topic", "ev", "--group", "g", "--from", "earliest", "--format", "json",
        ],
        None,
    );
    let rest: Vec<(u32, u64, String)> = rest.lines().map(parse).collect();
    for r in &piped {
        assert!(
            unique.insert(r.clone()),
            "printed again after a signal: {r:?}"
        );
    }
    // What the pipe run wrote past what the test read is committed too (it was printed): the
    // next run starts after it, in each partition, and repeats nothing.
    for r in &rest {
        assert!(unique.insert(r.clone()), "printed twice: {r:?}");
    }
    let first_rest: BTreeMap<u32, u64> = rest.iter().fold(BTreeMap::new(), |mut m, r| {
        m.entry(r.0).or_insert(r.1);
        m
    });
    let last_piped: BTreeMap<u32, u64> = piped.iter().fold(BTreeMap::new(), |mut m, r| {
        let e = m.entry(r.0).or_insert(r.1);
        *e = (*e).max(r.1);
        m
    });
    for (p, first) in &first_rest {
        if let Some(last) = last_piped.get(p) {
            assert!(
                first > last,
                "partition {p}: the pipe run's lines came again"
            );
        }
    }
    // Nothing is lost except what the pipe took and the test did not read: the gap between
    // the pipe run's last line read and the next run's first, per partition.
    let lost_to_the_pipe: usize = n - unique.len();
    assert!(
        lost_to_the_pipe < n / 2,
        "{lost_to_the_pipe} of {n} records went into the closed pipe"
    );
    // The group was left: nobody is a member.
    let g = run(&addr, &["groups", "describe", "g", "--json"], None);
    let g: serde_json::Value = serde_json::from_str(&g).expect("json");
    assert_eq!(g["members"].as_array().map(Vec::len), Some(0), "{g}");
}

/// On a terminal, `brook produce < FILE` and `brook check DIR` show progress (on stderr; the
/// terminal here is a pty from `script`); piped, they print exactly what they did before.
#[test]
fn progress_shows_on_a_terminal_and_not_when_piped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut server, addr) = serve(&data);
    run(&addr, &["topics", "create", "big"], None);
    let file = dir.path().join("lines.txt");
    let lines: String = (0..200_000).map(|i| format!("line {i:08}\n")).collect();
    std::fs::write(&file, lines).expect("input file");
    // The shell line goes through the emulator too when the tests run for another target.
    let runner = std::env::var("BROOK_TEST_RUNNER").unwrap_or_default();
    let bin = format!("{runner} {}", env!("CARGO_BIN_EXE_brook"));
    let on_a_terminal = |cmd: String| {
        let out = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("BROOK_BROKER", &addr)
            .stdin(Stdio::null())
            .output()
            .expect("run script (util-linux)");
        assert!(out.status.success(), "{cmd}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = on_a_terminal(format!("{bin} produce --topic big < {}", file.display()));
    assert!(
        shown.contains("producing"),
        "no progress on a terminal: {shown:?}"
    );
    let _ = server.kill();
    let _ = server.wait();
    let shown = on_a_terminal(format!("{bin} check {}", data.display()));
    assert!(
        shown.contains("checking"),
        "no progress on a terminal: {shown:?}"
    );
    // Piped: the report alone, nothing on stderr.
    let out = brook()
        .arg("check")
        .arg(&data)
        .output()
        .expect("brook check");
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!report.contains("checking"), "{report}");
    assert!(report.contains("big"), "{report}");
}
