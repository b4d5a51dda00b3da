//! The Kafka API through the real binary with real Kafka clients: confluent-kafka (librdkafka)
//! and kafka-python from PyPI (scenarios in `tests/kafka/kafka_check.py`) and kcat from
//! Debian; `tests/run.sh` installs them. A missing client fails the test with the command to
//! install it. One topic is the same data whichever protocol wrote it: Kafka, native, MQTT.

use crate::common;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kcat() -> Command {
    let found = Command::new("sh")
        .args(["-c", "command -v kcat"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "kcat is missing: apt-get install kcat (tests/run.sh installs it)"
    );
    Command::new("kcat")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn with_stdin(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn kill_9(child: &mut std::process::Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.wait();
}

/// Runs one scenario of `tests/kafka/kafka_check.py` against a fresh `brook serve`.
fn python_scenario(name: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addrs) = common::serve(&dir.path().join("data"));
    run_scenario(name, &mut server, &addrs);
    kill_9(&mut server);
}

/// Runs one scenario of `tests/kafka/kafka_check.py` against `server`.
fn run_scenario(name: &str, server: &mut common::Process, addrs: &common::Addrs) {
    let python = std::env::var("BROOK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_clients = Command::new(&python)
        .args(["-c", "import confluent_kafka, kafka"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_clients,
        "confluent-kafka or kafka-python is missing for {python}: run tests/run.sh (it makes a venv with them and sets BROOK_TEST_PYTHON)"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/kafka_check.py");
    let out = Command::new(&python)
        .arg(script)
        .args(["--bootstrap", &addrs.kafka, name])
        .output()
        .expect("run python");
    let server_state = server.try_wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kafka scenario {name} failed:\n{stdout}\n{}\nbrook serve (exited: {server_state:?}) logged:\n{}",
        String::from_utf8_lossy(&out.stderr),
        addrs.log_tail()
    );
    assert!(stdout.contains(&format!("ok {name}")), "{stdout}");
}

/// confluent-kafka with acks=all and idempotence on, for each codec (none, gzip, snappy, lz4,
/// zstd): keys, values and headers come back intact, in order per key, none lost or doubled.
#[test]
fn confluent_kafka_produces_with_every_codec() {
    python_scenario("codecs");
}

/// A group of three confluent-kafka consumers, members joining and one leaving while it
/// consumes 6,000 records from 6 partitions (paced, so partitions change hands part-way): each
/// record is processed once, in partition order, and every commit, periodic or at a hand-over,
/// is accepted. A failure prints the hand-overs that led to it.
#[test]
fn three_member_group_processes_each_record_once() {
    python_scenario("group");
}

/// Create (with configs), describe configs, delete; duplicate topic, replication factor 3,
/// `cleanup.policy=compact` and a bad name are refused with Kafka's codes.
#[test]
fn admin_client_creates_describes_and_deletes_topics() {
    python_scenario("admin");
}

/// ListOffsets by time and MAX_TIMESTAMP answer the found record's offset and timestamp
/// (confluent-kafka's admin client, kafka-python); a Produce over `kafka.max_request_size` is
/// answered MESSAGE_TOO_LARGE at once and the connection goes on; a transactional producer fails
/// at once with a fatal error that says why.
#[test]
fn list_offsets_by_time_oversized_produce_and_transactions() {
    python_scenario("times-refusals");
}

/// Static membership (KIP-345): a consumer with a `group.instance.id` that closes and comes
/// back takes its old place at once, with the same partitions; the other member does not
/// rebalance.
#[test]
fn a_static_member_comes_back_without_a_rebalance() {
    python_scenario("static");
}

/// DeleteGroups (confluent-kafka): refused while the group has a member, done for an idle
/// one, not found for an unknown one; OffsetDelete (kafka-python): refused for a topic a member
/// is assigned, done for another; DescribeCluster names the one node.
#[test]
fn groups_are_deleted_and_the_cluster_described() {
    python_scenario("group-admin");
}

/// IncrementalAlterConfigs (SET, DELETE) and AlterConfigs change a topic's configs at run time
/// (a raised max.message.bytes admits the next large record), validate_only changes nothing,
/// and broker configs, unknown keys and unknown topics are refused with Kafka's codes.
#[test]
fn topic_configs_change_at_run_time() {
    python_scenario("alter-configs");
}

/// Tombstones (null values) and null header values come back null, not empty, to confluent-kafka
/// and kafka-python, from batches that mix them with ordinary records, compressed or not.
#[test]
fn tombstones_and_null_headers_stay_null() {
    python_scenario("nulls");
}

/// `cleanup.policy=compact`: once compacted, confluent-kafka and kafka-python read the newest
/// value of every key at its offset (tombstones null, then gone past `delete.retention.ms`),
/// skipping the gaps. Then Brook is killed and the disk made to look as a cut mid-compaction
/// leaves it (a rewrite's unfinished output beside the segment, a rewritten segment whose index
/// was not yet replaced): after the restart a consumer reads the same, and compaction goes on.
#[test]
fn a_compacted_topic_reads_right_after_compaction_and_after_a_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("brook.toml");
    std::fs::write(&config, "[log]\ncompaction_interval = \"1s\"\n").expect("config");
    let (mut server, addrs) = common::serve_with(&data, Some(&config), "127.0.0.1:0");
    run_scenario("compact", &mut server, &addrs);
    kill_9(&mut server);
    let pdir = data.join("topics/compacted/0");
    let mut compacted: Vec<std::path::PathBuf> = std::fs::read_dir(&pdir)
        .expect("partition dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.get(8) == Some(&2)))
        .collect();
    compacted.sort();
    assert!(compacted.len() >= 2, "compacted segments: {compacted:?}");
    // An unfinished rewrite of the first: half its output, beside it.
    let first = std::fs::read(&compacted[0]).expect("read");
    let mut unfinished = compacted[0].clone().into_os_string();
    unfinished.push(".compacting");
    std::fs::write(&unfinished, &first[..first.len() / 2]).expect("write");
    // A rewrite cut between its two renames: the second's index is the old one (here: gone).
    std::fs::remove_file(compacted[1].with_extension("idx")).expect("remove index");
    let (mut server, addrs) = common::serve_with(&data, Some(&config), "127.0.0.1:0");
    run_scenario("compact-verify", &mut server, &addrs);
    let log = addrs.log_tail();
    kill_9(&mut server);
    assert!(
        !std::path::Path::new(&unfinished).exists(),
        "the unfinished output was removed"
    );
    assert!(
        log.contains("damaged_ranges=0") && log.contains("indexes_rebuilt=1"),
        "{log}"
    );
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
    // `brook check` finds the compacted topic clean: gaps inside and between segments expected.
    let out = common::brook()
        .arg("check")
        .arg(&data)
        .output()
        .expect("brook check");
    assert!(
        out.status.success(),
        "brook check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// kafka-python: an idempotent acks=all gzip producer; commit, restart from the committed
/// offset, seek, seek to either end, offsets for times.
#[test]
fn kafka_python_commits_and_seeks() {
    python_scenario("commit-seek");
}

/// A librdkafka producer (acks=all, idempotent) and a group consumer run for a minute: no
/// error or warning is logged and every record arrives.
#[test]
fn librdkafka_runs_a_minute_without_errors() {
    python_scenario("minute");
}

/// kcat (librdkafka 2.0 from Debian): idempotent acks=all produce with each codec, then a
/// consumer group reads everything back.
#[test]
fn kcat_produces_and_a_kcat_group_consumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addrs) = common::serve(&dir.path().join("data"));
    let b = addrs.kafka.as_str();
    let lines: String = (0..500).map(|i| format!("k{}:v{i}\n", i % 5)).collect();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let mut p = kcat();
        p.args(["-b", b, "-P", "-t", "kc", "-K:", "-X", "acks=all"])
            .args(["-X", "enable.idempotence=true", "-X"])
            .arg(format!("compression.codec={codec}"));
        ok(with_stdin(p, lines.as_bytes()), "kcat -P");
    }
    let out = ok(
        kcat()
            .args([
                "-b",
                b,
                "-G",
                "kcat-group",
                "kc",
                "-e",
                "-q",
                "-f",
                "%k %s\n",
            ])
            .args(["-X", "auto.offset.reset=earliest"])
            .output()
            .expect("kcat -G"),
        "kcat -G",
    );
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), 2500, "{out}");
    for i in 0..500 {
        let want = format!("k{} v{i}", i % 5);
        assert_eq!(got.iter().filter(|l| **l == want).count(), 5, "{want}");
    }
    // The group's offsets are committed where Brook shows them.
    let described = ok(
        common::brook()
            .args(["groups", "describe", "kcat-group"])
            .env("BROOK_BROKER", &addrs.native)
            .output()
            .expect("brook groups describe"),
        "brook groups describe",
    );
    assert!(described.contains("kc"), "{described}");
    kill_9(&mut server);
}

/// Kafka-written records are read by `brook consume` and by an MQTT subscriber (the MQTT log
/// topic, key = MQTT topic); `brook produce` and MQTT publishes are read by kcat.
#[test]
fn one_topic_whichever_protocol_wrote_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addrs) = common::serve(&dir.path().join("data"));
    let b = addrs.kafka.as_str();
    let mqtt_port = addrs.mqtt.rsplit(':').next().expect("port").to_string();

    // Kafka -> brook consume.
    let mut p = kcat();
    p.args(["-b", b, "-P", "-t", "fromkafka", "-K:", "-X", "acks=all"]);
    ok(with_stdin(p, b"a:one\nb:two\n"), "kcat -P");
    let out = ok(
        common::brook()
            .args(["consume", "--topic", "fromkafka", "--from", "earliest"])
            .args(["--count", "2", "--format", "json"])
            .env("BROOK_BROKER", &addrs.native)
            .output()
            .expect("brook consume"),
        "brook consume",
    );
    assert!(
        out.contains("one") && out.contains("two") && out.contains("\"a\""),
        "{out}"
    );

    // Kafka -> MQTT subscriber: a record in the MQTT log topic with key = MQTT topic.
    // stdbuf: mosquitto_sub's debug lines (SUBACK) must not sit in a pipe buffer.
    let mut sub = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub", "-p", &mqtt_port])
        .args(["-t", "sensors/#", "-C", "1", "-v", "-d"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("stdbuf mosquitto_sub (apt-get install mosquitto-clients)");
    let mut sub_out = BufReader::new(sub.stdout.take().expect("stdout"));
    // Wait for the SUBACK before publishing (mosquitto_sub -d prints it).
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            sub_out.read_line(&mut line).expect("read") > 0,
            "mosquitto_sub ended"
        );
        if line.contains("SUBACK") {
            break;
        }
    }
    let mut p = kcat();
    p.args(["-b", b, "-P", "-t", "mqtt", "-K", "|"]);
    ok(with_stdin(p, b"sensors/t1|21.5\n"), "kcat -P to mqtt");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut sub_out, &mut rest).expect("read");
    let _ = sub.wait();
    assert!(rest.contains("sensors/t1 21.5"), "{rest}");

    // MQTT and brook produce -> kcat.
    ok(
        Command::new("mosquitto_pub")
            .args(["-p", &mqtt_port, "-t", "plant/p1", "-m", "hot", "-q", "1"])
            .output()
            .expect("mosquitto_pub"),
        "mosquitto_pub",
    );
    let mut prod = common::brook();
    prod.args(["produce", "--topic", "fromkafka"])
        .env("BROOK_BROKER", &addrs.native);
    ok(with_stdin(prod, b"three\n"), "brook produce");
    let out = ok(
        kcat()
            .args(["-b", b, "-C", "-t", "mqtt", "-e", "-q", "-f", "%k=%s\n"])
            .output()
            .expect("kcat -C"),
        "kcat -C mqtt",
    );
    assert!(out.contains("plant/p1=hot"), "{out}");
    let out = ok(
        kcat()
            .args(["-b", b, "-C", "-t", "fromkafka", "-e", "-q", "-f", "%s\n"])
            .output()
            .expect("kcat -C"),
        "kcat -C fromkafka",
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), ["one", "two", "three"]);
    kill_9(&mut server);
}
