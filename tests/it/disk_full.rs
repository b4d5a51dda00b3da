//! A real full disk under a real `brook serve`: its data directory on a small tmpfs (the tests
//! run as root, as CI does; without the right to mount, this fails rather than skips).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brook::client::{Client, Producer};
use brook::proto::Acks;

use crate::common;
use crate::common::mirror::{kill_9, runtime};

/// A tmpfs of `size` mounted at `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs (needs root, as CI has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn config(dir: &Path, min_free: &str) -> PathBuf {
    let path = dir.join(format!("brook-{min_free}.toml"));
    std::fs::write(
        &path,
        format!("[log]\nflush_interval = \"100ms\"\nmin_free = \"{min_free}\"\n"),
    )
    .expect("config");
    path
}

/// Started with less free space than `log.min_free`, Brook says so; with `min_free` off and the
/// disk full, appends fail with ENOSPC, `/healthz` is degraded and names it, `brook_healthy` is 0
/// and `brook_append_failures_total{reason="no_space"}` counts them.
#[test]
fn a_full_disk_is_reported_whatever_min_free_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = Tmpfs::mount(&dir.path().join("mnt"), "6m");
    let data = mnt.0.join("data");

    let (mut server, addrs) =
        common::serve_with(&data, Some(&config(dir.path(), "64MiB")), "127.0.0.1:0");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !addrs.log_tail().contains("below log.min_free") {
        assert!(
            Instant::now() < deadline,
            "no start-up warning:\n{}",
            addrs.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_9(&mut server);

    let (mut server, addrs) =
        common::serve_with(&data, Some(&config(dir.path(), "0")), "127.0.0.1:0");
    let rt = runtime();
    let failed = rt.block_on(async {
        let c = Arc::new(
            Client::connect(&addrs.native, "fill")
                .await
                .expect("connect"),
        );
        c.create_topic("fill", brook::proto::TopicSettings::default())
            .await
            .expect("create");
        let mut p = Producer::new(c, "fill", Acks::Durable)
            .await
            .expect("producer");
        let value = vec![b'x'; 64 * 1024];
        for i in 0..400u64 {
            let r = brook::log::Record {
                timestamp: 1_700_000_000_000 + i as i64,
                key: None,
                value: Some(value.clone()),
                headers: Vec::new(),
            };
            let sent = p.send(None, &r).await;
            let flushed = if sent.is_ok() {
                p.flush().await
            } else {
                sent.map(|_| ())
            };
            if let Err(e) = flushed {
                return Some(e.to_string());
            }
        }
        None
    });
    let failed = failed.expect("25 MB into a 6 MB filesystem fails");
    assert!(
        failed.contains("ENOSPC") || failed.contains("space"),
        "{failed}"
    );
    let health = common::http_raw(&addrs.http, "/healthz");
    assert!(
        health.contains("503")
            && health.contains("appends are failing")
            && health.contains("ENOSPC"),
        "{health}"
    );
    let metrics = common::http_raw(&addrs.http, "/metrics");
    assert!(metrics.contains("\nbrook_healthy 0"), "{metrics}");
    let no_space = metrics
        .lines()
        .find_map(|l| l.strip_prefix("brook_append_failures_total{reason=\"no_space\"} "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("brook_append_failures_total{reason=\"no_space\"}");
    assert!(no_space >= 1, "{metrics}");
    // Still serving: what was stored is readable, and the server is up.
    assert!(
        server.try_wait().expect("wait").is_none(),
        "{}",
        addrs.log_tail()
    );
    kill_9(&mut server);
}
