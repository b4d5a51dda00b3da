//! The metadata store (sled) under `kill -9`: a child process records topics one by one,
//! printing each once `put_topic` (which flushes) has returned; the parent kills it at random
//! moments, reopens the store and checks that every printed entry is there and that the store
//! opens at all (sled 0.34 has open reports of stores that would not reopen after an abrupt stop).

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::common;
use brook::log::TopicConfig;
use brook::meta::Meta;

const CHILD_ENV: &str = "BROOK_META_CRASH_CHILD_DIR";

#[test]
fn sled_keeps_flushed_entries_across_kill_9() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        // Child role: write until killed.
        let meta = Meta::open(std::path::Path::new(&dir)).expect("child opens meta");
        let start = meta.topics().expect("topics").len();
        for i in start.. {
            let cfg = TopicConfig {
                partitions: (i % 7 + 1) as u32,
                ..TopicConfig::default()
            };
            meta.put_topic(&format!("t{i:06}"), &cfg).expect("put");
            println!("{i}");
        }
        unreachable!();
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut confirmed = 0usize;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wait_for = 1 + (seed % 150) as usize;
        let mut child = common::command(&exe)
            .args([
                "--exact",
                "meta_crash::sled_keeps_flushed_entries_across_kill_9",
                "--nocapture",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let mut last = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
            if let Ok(i) = line.trim().parse::<usize>() {
                last = Some(i);
                if i + 1 >= confirmed + wait_for {
                    break;
                }
            }
        }
        child.kill().expect("kill -9"); // SIGKILL on Unix
        let _ = child.wait();
        if let Some(i) = last {
            confirmed = i + 1;
        }
        let meta = Meta::open(dir.path())
            .unwrap_or_else(|e| panic!("round {round}: sled did not reopen after kill -9: {e}"));
        let topics = meta.topics().expect("topics readable");
        assert!(
            topics.len() >= confirmed,
            "round {round}: {} entries after reopen, {confirmed} were confirmed flushed",
            topics.len()
        );
        for (i, (name, cfg)) in topics.iter().take(confirmed).enumerate() {
            assert_eq!(name, &format!("t{i:06}"), "round {round}");
            assert_eq!(cfg.partitions, (i % 7 + 1) as u32, "round {round}");
        }
        confirmed = topics.len();
    }
    assert!(confirmed > 12, "the child made progress");
}
