//! The mirror's bandwidth limit and priority shares, end to end against a second Brook.
//!
//! Alone in its own test binary (the rest are one binary, `tests/it`): cargo runs test binaries
//! one after another, so this timing check does not share the machine's two cores with the tansu
//! and Kafka tests of `tests/it/mirror.rs` (beside them the share drifted to 3.3-3.8:1; alone it
//! measured 3.0-3.3:1).
//! Under qemu it is skipped (see `.ci/run`): emulation would measure itself, not Brook.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::time::{Duration, Instant};

use brook::client::Client;

#[path = "it/common/mod.rs"]
mod common;
use common::mirror::*;

/// A backlog on two topics drains at the mirror's bandwidth limit (within 10 %), shared 3:1
/// (within 25 %) between `alarms` (priority 3, one partition) and `telemetry` (priority 1,
/// three partitions);
/// once alarms is drained telemetry gets the whole limit, and everything arrives.
#[test]
fn bandwidth_limit_holds_and_priorities_share_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let up_addr = free_addr();
    let limit = 400 * 1024u64;
    let cfg = dir.path().join("brook.toml");
    std::fs::write(
        &cfg,
        format!(
            "[log]\nflush_interval = \"100ms\"\nmin_free = 0\n\n[[mirror]]\nname = \"up\"\nkind = \"brook\"\nupstream = [\"{up_addr}\"]\ntopics = [\"alarms\", \"telemetry\"]\nnode = \"gw1\"\nbatch_records = 50\nbackoff_max = \"250ms\"\nbandwidth_limit = \"400KiB\"\npriority = {{ alarms = 3 }}\n"
        ),
    )
    .expect("config");
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    rt.block_on(async {
        let c = Client::connect(&laddrs.native, "t").await.expect("connect");
        for (t, n) in [("alarms", 1), ("telemetry", 3)] {
            c.create_topic(
                t,
                brook::proto::TopicSettings {
                    partitions: Some(n),
                    ..Default::default()
                },
            )
            .await
            .expect("create");
        }
    });
    // About 1.6 MB of alarms and 3.3 MB of telemetry wait for the upstream.
    produce(&rt, &laddrs.native, "alarms", 0, 10_000);
    produce(&rt, &laddrs.native, "telemetry", 0, 20_000);
    let (mut up, _) = common::serve_with(&dir.path().join("up"), None, &up_addr);

    // Measure over three seconds once every partition is moving: each came out of its backoff
    // on its own (within `backoff_max` of the others), and a topic with a partition still
    // waiting would be measured short of its share.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (t1, first) = loop {
        let (at, s, moving) = sent_bytes_by_topic(&rt, &laddrs.http);
        if moving == 4 {
            break (at, s);
        }
        assert!(Instant::now() < deadline, "the mirror did not start: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(3));
    let (t2, second, _) = sent_bytes_by_topic(&rt, &laddrs.http);
    let secs = (t2 - t1).as_secs_f64();
    let alarms = (second["alarms"] - first["alarms"]) as f64;
    let telemetry = (second["telemetry"] - first["telemetry"]) as f64;
    let rate = (alarms + telemetry) / secs;
    assert!(
        (rate / limit as f64 - 1.0).abs() <= 0.10,
        "{rate:.0} B/s against a limit of {limit} B/s"
    );
    // End to end the share also depends on every task keeping a request at the shaper while
    // the machine is busy with everything else (this runs beside the whole suite): within 25 %
    // here; the shaper's unit tests check the exact 3:1 on a paused clock.
    assert!(
        (alarms / telemetry / 3.0 - 1.0).abs() <= 0.25,
        "alarms {alarms} B, telemetry {telemetry} B: not 3:1"
    );

    // Alarms drained, telemetry alone gets the whole limit.
    let got = upstream_records(&rt, "brook.", &up_addr, "alarms", 1, 10_000);
    check_complete(&got, 10_000);
    let (t1, first, _) = sent_bytes_by_topic(&rt, &laddrs.http);
    std::thread::sleep(Duration::from_secs(2));
    let (t2, second, _) = sent_bytes_by_topic(&rt, &laddrs.http);
    let rate = (second["telemetry"] - first["telemetry"]) as f64 / (t2 - t1).as_secs_f64();
    assert!(
        (rate / limit as f64 - 1.0).abs() <= 0.10,
        "telemetry alone: {rate:.0} B/s against a limit of {limit} B/s"
    );
    let got = upstream_records(&rt, "brook.", &up_addr, "telemetry", 3, 20_000);
    check_complete(&got, 20_000);
    kill_9(&mut local);
    kill_9(&mut up);
}
