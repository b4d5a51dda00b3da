//! The `brook` binary: `serve` starts on the embedded default and stops cleanly on SIGTERM;
//! `config default` and `config check` behave as documented.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::common::brook;

#[test]
fn serve_opens_the_data_dir_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut child = brook()
        .args([
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
        .arg(&data)
        .env("BROOK_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn brook serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut log = String::new();
    // Wait for the line that says the log is open (no sleeping).
    for line in lines.by_ref() {
        let line = line.expect("line");
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening") {
            break;
        }
    }
    assert!(log.contains("listening"), "serve did not start:\n{log}");
    assert!(data.join("topics").is_dir(), "topics directory created");
    assert!(data.join("meta").is_dir(), "metadata directory created");
    let pid = child.id() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().expect("wait");
    for line in lines {
        log.push_str(&line.expect("line"));
        log.push('\n');
    }
    assert!(status.success(), "exit status {status:?}:\n{log}");
    assert!(log.contains("shutting down"), "{log}");
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
    std::fs::write(&bad, "[log]\nmin_fre = \"1GiB\"\n").expect("write");
    let out = brook()
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("min_fre") && err.contains("bad.toml"), "{err}");

    std::fs::write(&bad, "[topic_defaults]\nsegment_size = \"12 bananas\"\n").expect("write");
    let out = brook()
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("segment_size") && err.contains("bananas"),
        "{err}"
    );
}
