//! `brook check` on real data directories, through the real binary: exit 0 clean, 1 for a torn
//! tail or a missing index (what `--repair` fixes), 2 for a corrupt sealed segment, 8 when it
//! cannot check (a running Brook holds the directory). And topics whose metadata entry is gone,
//! found again by `brook serve` from their files.

use std::path::Path;

use crate::common;
use crate::common::*;
use brook::log::Durability;
use brook::log::segment::{index_file_name, log_file_name};

fn brook_check(dir: &Path, repair: bool) -> (i32, String) {
    let mut cmd = brook();
    cmd.arg("check").arg(dir);
    if repair {
        cmd.arg("--repair");
    }
    let out = cmd.output().expect("run brook check");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().expect("exit code"), text)
}

/// A data directory (`<dir>/topics/...`, as `brook serve` lays it out) with a few sealed
/// segments and an active one.
fn make_store(dir: &Path) {
    let store = open_std(&dir.join("topics"), &[("t", small_topic(2))]);
    for i in 0..60 {
        append(&store, "t", 0, i * 40, 40, Durability::Written);
    }
    append(&store, "t", 1, 0, 10, Durability::Durable);
    store.flush_all(true).expect("flush");
}

fn partition0(dir: &Path) -> std::path::PathBuf {
    dir.join("topics").join("t").join("0")
}

fn segments(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| {
            brook::log::segment::parse_file_name(&e.ok()?.file_name().to_string_lossy())
                .filter(|(_, ext)| *ext == "log")
                .map(|(b, _)| b)
        })
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn clean_store_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_store(dir.path());
    let (code, out) = brook_check(dir.path(), false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("t/0:") && out.contains("t/1:"), "{out}");
    assert!(out.contains("2400 records"), "{out}");
    assert!(out.contains("clean"), "{out}");
}

#[test]
fn torn_tail_exits_1_and_repair_cuts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_store(dir.path());
    let segs = segments(&partition0(dir.path()));
    assert!(segs.len() > 2, "several segments: {segs:?}");
    let active = partition0(dir.path()).join(log_file_name(*segs.last().expect("one")));
    let len = std::fs::metadata(&active).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .and_then(|f| f.set_len(len - 7))
        .expect("truncate");
    let (code, out) = brook_check(dir.path(), false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("torn tail"), "{out}");
    assert_eq!(
        std::fs::metadata(&active).expect("stat").len(),
        len - 7,
        "check alone changes nothing"
    );
    let (code, out) = brook_check(dir.path(), true);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("(repaired)"), "{out}");
    let (code, out) = brook_check(dir.path(), false);
    assert_eq!(code, 0, "clean after repair: {out}");
    // The repaired store opens with every record before the torn batch.
    let store = open_std(&dir.path().join("topics"), &[("t", small_topic(2))]);
    assert_eq!(read_all(&store, "t", 0).len(), 2400 - 40);
}

#[test]
fn flipped_byte_in_sealed_segment_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_store(dir.path());
    let segs = segments(&partition0(dir.path()));
    let sealed = partition0(dir.path()).join(log_file_name(segs[0]));
    let mut bytes = std::fs::read(&sealed).expect("read");
    let i = bytes.len() / 2;
    bytes[i] ^= 0x40;
    std::fs::write(&sealed, &bytes).expect("write");
    let (code, out) = brook_check(dir.path(), false);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("CORRUPT"), "{out}");
    assert!(out.contains("checksum"), "{out}");
    // --repair never touches a corrupt sealed segment.
    let (code, _) = brook_check(dir.path(), true);
    assert_eq!(code, 2);
    assert_eq!(std::fs::read(&sealed).expect("read"), bytes);
    // Reading through the damage fails loudly instead of skipping it.
    let store = open_std(&dir.path().join("topics"), &[("t", small_topic(2))]);
    let p = store.topic("t").expect("t").partitions()[0].clone();
    let mut from = 0;
    let err = loop {
        match p.read(from, 4096, brook::log::Visibility::Written) {
            Ok(r) if r.frames.is_empty() => panic!("read the whole partition past the damage"),
            Ok(r) => from = r.next_offset,
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn missing_index_exits_1_and_is_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_store(dir.path());
    let segs = segments(&partition0(dir.path()));
    let idx = partition0(dir.path()).join(index_file_name(segs[0]));
    std::fs::remove_file(&idx).expect("remove index");
    let (code, out) = brook_check(dir.path(), false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("index missing"), "{out}");
    // Opening the store rebuilds it, as --repair would.
    drop(open_std(
        &dir.path().join("topics"),
        &[("t", small_topic(2))],
    ));
    assert!(idx.exists());
    let (code, out) = brook_check(dir.path(), false);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn missing_directory_is_a_clear_error() {
    let (code, out) = brook_check(Path::new("/nonexistent/brook-data"), false);
    assert_eq!(code, 8);
    assert!(out.contains("no such directory"), "{out}");
}

/// `brook CMD ARGS --broker ADDR`, its exit code and output.
fn brook_cli(addr: &str, args: &[&str]) -> (i32, String) {
    let out = brook()
        .args(args)
        .env("BROOK_BROKER", addr)
        .output()
        .expect("run brook");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().expect("exit code"), text)
}

#[test]
fn check_and_a_second_serve_are_refused_beside_a_running_brook() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_store(dir.path());
    let (server, addrs) = serve(dir.path());
    for repair in [false, true] {
        let (code, out) = brook_check(dir.path(), repair);
        assert_eq!(code, 8, "repair={repair}: {out}");
        assert!(
            out.contains("in use by process") && out.contains(&server.id().to_string()),
            "repair={repair}: {out}"
        );
    }
    // The topics directory named directly is guarded too.
    let (code, out) = brook_check(&dir.path().join("topics"), true);
    assert_eq!(code, 8, "{out}");
    let second = brook()
        .args(["serve", "--native", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args([
            "--mqtt",
            "127.0.0.1:0",
            "--kafka",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("second serve");
    let text = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second serve started: {text}");
    assert!(text.contains("in use by process"), "{text}");
    // The first one still serves its data.
    let (code, out) = brook_cli(&addrs.native, &["topics", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains('t'), "{out}");
    drop(server);
    let (code, out) = brook_check(dir.path(), false);
    assert_eq!(code, 0, "after the server stopped: {out}");
}

/// A data directory whose metadata store knows nothing (lost in a power cut, or deleted): the
/// topics are found by their files and every record is served again.
#[test]
fn topics_without_metadata_are_served_again() {
    for keep_descriptor in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        make_store(dir.path());
        let descriptor = dir.path().join("topics/t/@topic");
        assert!(descriptor.exists(), "the store wrote no descriptor");
        if !keep_descriptor {
            std::fs::remove_file(&descriptor).expect("remove descriptor");
            let (code, out) = brook_check(dir.path(), false);
            assert_eq!(code, 1, "{out}");
            assert!(out.contains("no topic descriptor"), "{out}");
        }
        let (server, addrs) = serve(dir.path());
        let (code, out) = brook_cli(&addrs.native, &["topics", "describe", "t"]);
        assert_eq!(
            code,
            0,
            "descriptor={keep_descriptor}: {out}\n{}",
            addrs.log_tail()
        );
        assert!(
            out.contains("partitions: 2") || out.contains("2 partitions"),
            "{out}"
        );
        let (code, out) = brook_cli(
            &addrs.native,
            &["consume", "--topic", "t", "--partition", "0"],
        );
        assert_eq!(code, 0, "{out}");
        assert_eq!(out.lines().count(), 2400, "descriptor={keep_descriptor}");
        let log = addrs.log_tail();
        assert!(log.contains("serving it again"), "{log}");
        drop(server);
        // Recorded in the metadata store again: a restart does not need to adopt it twice.
        let (server, addrs) = serve(dir.path());
        let (code, out) = brook_cli(&addrs.native, &["topics", "describe", "t"]);
        assert_eq!(code, 0, "{out}");
        assert!(!addrs.log_tail().contains("serving it again"));
        drop(server);
        let (code, out) = brook_check(dir.path(), false);
        assert_eq!(code, 0, "{out}");
    }
}

/// The raw answer (status line, headers, body) of `GET path` on the HTTP listener.
/// Reads partition `p` of `topic` from offset 0 through the native client, reading on past
/// each range the server reports lost. Returns the offsets read and the ranges lost.
fn read_past_damage(addr: &str, topic: &str, p: u32) -> (Vec<u64>, Vec<(u64, u64)>) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = brook::client::Client::connect(addr, "damage")
            .await
            .expect("connect");
        let (mut offsets, mut lost) = (Vec::new(), Vec::new());
        let mut next = 0u64;
        loop {
            match c
                .fetch(topic, p, next, 1 << 20, 1, std::time::Duration::ZERO)
                .await
            {
                Ok(f) => {
                    let recs = f.records(next).expect("records");
                    if recs.is_empty() {
                        return (offsets, lost);
                    }
                    for (o, _) in recs {
                        offsets.push(o);
                        next = o + 1;
                    }
                }
                Err(brook::client::ClientError::Server { code, message }) => {
                    assert_eq!(code, brook::proto::ErrorCode::DataLost, "{message}");
                    let range = brook::client::lost_range(&message)
                        .unwrap_or_else(|| panic!("no range in {message:?}"));
                    assert_eq!(range.0, next, "{message}");
                    lost.push(range);
                    next = range.1;
                }
                Err(e) => panic!("fetch at {next}: {e}"),
            }
        }
    })
}

/// The offsets a Kafka client (rskafka) reads from partition `p`: it moves past lost ranges.
fn read_with_kafka(addr: &str, topic: &str, p: i32) -> Vec<u64> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = rskafka::client::ClientBuilder::new(vec![addr.to_string()])
            .build()
            .await
            .expect("kafka client");
        let pc = client
            .partition_client(
                topic,
                p,
                rskafka::client::partition::UnknownTopicHandling::Error,
            )
            .await
            .expect("partition client");
        let mut offsets = Vec::new();
        let mut next = 0i64;
        loop {
            let (recs, hw) = pc
                .fetch_records(next, 1..1_000_000, 100)
                .await
                .expect("kafka fetch");
            for r in &recs {
                offsets.push(r.offset as u64);
                next = r.offset + 1;
            }
            if recs.is_empty() || next >= hw {
                return offsets;
            }
        }
    })
}

/// Flips one byte of a file.
fn flip(path: &Path, pos: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8];
    f.read_exact_at(&mut b, pos).expect("read");
    f.write_all_at(&[b[0] ^ 0x5a], pos).expect("write");
}

/// What a damaged range looks like to every reader, after `make_store` (2,400 records in
/// `t/0` in batches of 40) and one flipped byte: `brook check` exit 2 naming the offsets,
/// `--repair` cutting nothing, and a `brook serve` that keeps and serves every intact record
/// on both sides, tells a native consumer the range lost, lets a Kafka client move past it,
/// and says so on `/healthz`, in `/metrics` and in its log.
fn damaged_range_is_kept_and_reported(
    segment_of: impl Fn(&[u64]) -> u64,
    position_of: impl Fn(u64) -> u64,
    seen_at_start: bool,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    make_store(dir.path());
    let p0 = partition0(dir.path());
    let bases = segments(&p0);
    assert!(bases.len() >= 3, "{bases:?}");
    let seg = p0.join(log_file_name(segment_of(&bases)));
    let len = std::fs::metadata(&seg).expect("stat").len();
    flip(&seg, position_of(len));

    let (code, out) = brook_check(dir.path(), false);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("lost") && out.contains("intact frames after it are kept"),
        "{out}"
    );
    let (code, out) = brook_check(dir.path(), true);
    assert_eq!(code, 2, "{out}");
    assert_eq!(
        std::fs::metadata(&seg).expect("stat").len(),
        len,
        "--repair cut data"
    );

    for start in 0..2 {
        let (server, addrs) = serve(dir.path());
        let (offsets, lost) = read_past_damage(&addrs.native, "t", 0);
        assert_eq!(lost.len(), 1, "start {start}: {lost:?}");
        let (a, b) = lost[0];
        assert_eq!(b - a, 40, "one batch of 40 records lost: {lost:?}");
        let want: Vec<u64> = (0..2400).filter(|o| !(a..b).contains(o)).collect();
        assert_eq!(
            offsets, want,
            "start {start}: every intact record, in order"
        );
        assert_eq!(
            read_with_kafka(&addrs.kafka, "t", 0),
            want,
            "Kafka moves past the loss"
        );
        // The CLI's consumer reads on past the loss and says so.
        let out = brook()
            .args(["consume", "--topic", "t", "--partition", "0"])
            .env("BROOK_BROKER", &addrs.native)
            .output()
            .expect("brook consume");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().count(),
            want.len()
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("offsets {a}..{b} were lost to corruption")),
            "{err}"
        );
        let health = common::http_raw(&addrs.http, "/healthz");
        assert!(
            health.contains("degraded") && health.contains(&format!("t/0: offsets {a}..{b} lost")),
            "{health}"
        );
        let metrics = common::http_raw(&addrs.http, "/metrics");
        assert!(
            metrics.contains("brook_corrupt_frames_total 1"),
            "{metrics}"
        );
        let log = addrs.log_tail();
        assert!(log.contains("lost to corruption"), "{log}");
        if start == 0 && !seen_at_start {
            // Found by the read (the segment was opened through its index): the index is
            // gone, so the next start scans the segment and reports it at once.
            assert!(!p0.join(index_file_name(segment_of(&bases))).exists());
        }
        drop(server);
    }

    // The operator drops the range explicitly: no longer reported, still skipped, nothing
    // intact touched.
    let mut cmd = brook();
    let out = cmd
        .args(["check", "--drop-corrupt"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "--drop-corrupt without --repair was accepted"
    );
    let out = brook()
        .args(["check", "--repair", "--drop-corrupt"])
        .arg(dir.path())
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("dropped"), "{text}");
    assert_eq!(
        std::fs::metadata(&seg).expect("stat").len(),
        len,
        "data was cut"
    );
    let (code, out) = brook_check(dir.path(), false);
    assert_eq!(code, 0, "{out}");
    let (server, addrs) = serve(dir.path());
    let (offsets, lost) = read_past_damage(&addrs.native, "t", 0);
    assert_eq!((offsets.len(), lost.len()), (2360, 1));
    let health = common::http_raw(&addrs.http, "/healthz");
    assert!(!health.contains("degraded"), "{health}");
    let metrics = common::http_raw(&addrs.http, "/metrics");
    assert!(
        metrics.contains("brook_corrupt_frames_total 0"),
        "{metrics}"
    );
    drop(server);
}

#[test]
fn damage_mid_active_segment_keeps_the_frames_after_it() {
    // The first frame of the active segment (the last one): intact frames follow it.
    damaged_range_is_kept_and_reported(
        |bases| bases[bases.len() - 1],
        |_| brook::log::segment::SEGMENT_HEADER_LEN + 20,
        true,
    );
}

#[test]
fn damage_in_a_sealed_segment_is_found_by_a_read_and_skipped() {
    // A frame in the middle of the first (sealed, indexed) segment.
    damaged_range_is_kept_and_reported(|bases| bases[0], |len| len / 2, false);
}

#[test]
fn damaged_index_is_rebuilt_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_store(dir.path());
    let p0 = partition0(dir.path());
    let idx = p0.join(index_file_name(segments(&p0)[0]));
    flip(&idx, 30);
    let (code, out) = brook_check(dir.path(), false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("index unusable"), "{out}");
    let (server, addrs) = serve(dir.path());
    let (offsets, lost) = read_past_damage(&addrs.native, "t", 0);
    assert!(lost.is_empty(), "{lost:?}");
    assert_eq!(offsets, (0..2400).collect::<Vec<_>>());
    let health = common::http_raw(&addrs.http, "/healthz");
    assert!(
        health.contains("200") && !health.contains("degraded"),
        "{health}"
    );
    drop(server);
    let (code, out) = brook_check(dir.path(), false);
    assert_eq!(code, 0, "rebuilt at start: {out}");
}

#[test]
fn damaged_frame_length_mid_active_segment_keeps_the_frames_after_it() {
    // The length field of the active segment's first frame now claims about 4 MiB: the scan
    // must find the intact frame after it instead of taking the rest as a torn tail.
    damaged_range_is_kept_and_reported(
        |bases| bases[bases.len() - 1],
        |_| brook::log::segment::SEGMENT_HEADER_LEN + 2,
        true,
    );
}
