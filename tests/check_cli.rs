//! `brook check` on real data directories, through the real binary: exit 0 clean, 1 for a torn
//! tail or a missing index (what `--repair` fixes), 2 for a corrupt sealed segment.

mod common;

use std::path::Path;

use brook::log::Durability;
use brook::log::segment::{index_file_name, log_file_name};
use common::*;

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
    assert_eq!(code, 2);
    assert!(out.contains("no such directory"), "{out}");
}
