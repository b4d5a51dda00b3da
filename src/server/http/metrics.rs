//! The Prometheus text exposition (`/metrics`): the log's, each listener's, the mirrors' and
//! the process's figures.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::HttpState;
use super::health::{disk_space, health};
use crate::log::partition::FSYNC_BUCKETS_US;

/// Every reason's count of failed appends, zeros included (a rate needs the series first).
fn append_failures(usage: &crate::log::partition::Usage) -> Vec<(&'static str, u64)> {
    crate::log::AppendFailure::ALL
        .iter()
        .zip(&usage.append_failures)
        .map(|(f, n)| (f.label(), n.load(Ordering::Relaxed)))
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition.
pub fn metrics(state: &HttpState) -> String {
    let broker = &state.broker;
    let store = broker.store();
    let usage = store.usage();
    let mut m = String::with_capacity(4096);
    let family = |m: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    let topics = store.topics();
    for (name, help, pick) in [
        ("brook_records_in_total", "Records appended, per topic.", 0),
        (
            "brook_bytes_in_total",
            "Record bytes appended, per topic.",
            1,
        ),
        (
            "brook_records_out_total",
            "Records fetched by consumers, per topic.",
            2,
        ),
        (
            "brook_bytes_out_total",
            "Bytes fetched by consumers, per topic.",
            3,
        ),
    ] {
        family(&mut m, name, "counter", help);
        for t in &topics {
            let c = broker.counters(t.name());
            let v = match pick {
                0 => c.records_in.load(Ordering::Relaxed),
                1 => c.bytes_in.load(Ordering::Relaxed),
                2 => c.records_out.load(Ordering::Relaxed),
                _ => c.bytes_out.load(Ordering::Relaxed),
            };
            let _ = writeln!(m, "{name}{{topic=\"{}\"}} {v}", esc(t.name()));
        }
    }
    family(
        &mut m,
        "brook_disk_used_bytes",
        "gauge",
        "Bytes of all segment and index files.",
    );
    let _ = writeln!(m, "brook_disk_used_bytes {}", store.used_bytes());
    family(
        &mut m,
        "brook_disk_free_bytes",
        "gauge",
        "Bytes available on the data directory's filesystem.",
    );
    if let Some(disk) = disk_space(store.dir()) {
        let _ = writeln!(m, "brook_disk_free_bytes {}", disk.available);
    }
    family(
        &mut m,
        "brook_disk_min_free_bytes",
        "gauge",
        "log.min_free (0: none).",
    );
    let _ = writeln!(
        m,
        "brook_disk_min_free_bytes {}",
        store.options().min_free.limit().unwrap_or(0)
    );
    family(
        &mut m,
        "brook_disk_budget_bytes",
        "gauge",
        "log.max_size (0: none).",
    );
    let _ = writeln!(
        m,
        "brook_disk_budget_bytes {}",
        store.options().max_size.bytes()
    );
    family(
        &mut m,
        "brook_append_failures_total",
        "counter",
        "Appends the log refused or failed, by reason (no_space, read_only, io_error, partition_refuses_writes: storage faults; retention_size, max_size, min_free: configured limits).",
    );
    for (why, n) in append_failures(usage) {
        let _ = writeln!(m, "brook_append_failures_total{{reason=\"{why}\"}} {n}");
    }
    family(
        &mut m,
        "brook_records_dropped_total",
        "counter",
        "Records deleted by retention or to make room.",
    );
    let _ = writeln!(m, "brook_records_dropped_total {}", store.records_dropped());
    family(
        &mut m,
        "brook_records_compacted_total",
        "counter",
        "Records removed by compaction: superseded by a newer record of their key, or tombstones past delete_retention.",
    );
    let _ = writeln!(
        m,
        "brook_records_compacted_total {}",
        store.records_compacted()
    );
    family(
        &mut m,
        "brook_corrupt_frames_total",
        "counter",
        "Damaged ranges found in the log (at start or by a read): their offsets are lost, the intact records on both sides are kept.",
    );
    let _ = writeln!(
        m,
        "brook_corrupt_frames_total {}",
        store.usage().damage().len()
    );
    family(&mut m, "brook_segments", "gauge", "Segments per partition.");
    for t in &topics {
        for p in t.partitions() {
            let s = p.status();
            let _ = writeln!(
                m,
                "brook_segments{{topic=\"{}\",partition=\"{}\"}} {}",
                esc(t.name()),
                p.id(),
                s.segments
            );
        }
    }
    family(
        &mut m,
        "brook_partition_end_offset",
        "gauge",
        "Offset after the last readable record.",
    );
    for t in &topics {
        for p in t.partitions() {
            let _ = writeln!(
                m,
                "brook_partition_end_offset{{topic=\"{}\",partition=\"{}\"}} {}",
                esc(t.name()),
                p.id(),
                p.end_offset()
            );
        }
    }
    family(
        &mut m,
        "brook_connections",
        "gauge",
        "Open connections per listener.",
    );
    let _ = writeln!(
        m,
        "brook_connections{{listener=\"native\"}} {}",
        state.native.connections_open.load(Ordering::Relaxed)
    );
    family(
        &mut m,
        "brook_connections_total",
        "counter",
        "Accepted connections per listener.",
    );
    let _ = writeln!(
        m,
        "brook_connections_total{{listener=\"native\"}} {}",
        state.native.connections_total.load(Ordering::Relaxed)
    );
    family(
        &mut m,
        "brook_connections_refused_total",
        "counter",
        "Connections refused at the connection limit.",
    );
    let _ = writeln!(
        m,
        "brook_connections_refused_total{{listener=\"native\"}} {}",
        state.native.connections_refused.load(Ordering::Relaxed)
    );
    family(
        &mut m,
        "brook_protocol_errors_total",
        "counter",
        "Connections closed for a protocol violation.",
    );
    let _ = writeln!(
        m,
        "brook_protocol_errors_total{{listener=\"native\"}} {}",
        state.native.protocol_errors.load(Ordering::Relaxed)
    );
    state.mqtt.render(&mut m);
    state.kafka.render(&mut m);
    state.mirrors.render(&mut m);
    state.auth.stats.render(&mut m);
    family(
        &mut m,
        "brook_group_lag",
        "gauge",
        "Records between a group's committed offset and the log end.",
    );
    if let Ok(groups) = broker.list_groups() {
        for g in groups {
            if let Ok(snap) = broker.describe_group(&g) {
                for o in snap.offsets {
                    let lag = crate::report::lag(o.committed, o.end_offset);
                    let _ = writeln!(
                        m,
                        "brook_group_lag{{group=\"{}\",topic=\"{}\",partition=\"{}\"}} {lag}",
                        esc(&g),
                        esc(&o.topic),
                        o.partition
                    );
                }
            }
        }
    }
    family(
        &mut m,
        "brook_fsync_seconds",
        "histogram",
        "Duration of group-commit fsyncs.",
    );
    let mut cumulative = 0;
    for (i, b) in FSYNC_BUCKETS_US.iter().enumerate() {
        cumulative += usage.fsync_buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(
            m,
            "brook_fsync_seconds_bucket{{le=\"{}\"}} {cumulative}",
            *b as f64 / 1e6
        );
    }
    cumulative += usage.fsync_buckets[FSYNC_BUCKETS_US.len()].load(Ordering::Relaxed);
    let _ = writeln!(m, "brook_fsync_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(
        m,
        "brook_fsync_seconds_sum {}",
        usage.fsync_micros_total.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(m, "brook_fsync_seconds_count {cumulative}");
    family(
        &mut m,
        "brook_healthy",
        "gauge",
        "1 when /healthz reports ok.",
    );
    let _ = writeln!(m, "brook_healthy {}", u8::from(health(state).is_empty()));
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        family(
            &mut m,
            "brook_runtime_workers",
            "gauge",
            "Worker threads of the async runtime (`runtime.worker_threads`).",
        );
        let _ = writeln!(m, "brook_runtime_workers {}", rt.metrics().num_workers());
    }
    if let Some(heap) = crate::memory::heap() {
        family(
            &mut m,
            "brook_heap_bytes",
            "gauge",
            "Memory the allocator holds for Brook: in use in its arenas, large blocks mapped on their own (resident only where written), freed but kept for reuse.",
        );
        let _ = writeln!(m, "brook_heap_bytes{{state=\"in_use\"}} {}", heap.in_use);
        let _ = writeln!(m, "brook_heap_bytes{{state=\"mapped\"}} {}", heap.mapped);
        let _ = writeln!(m, "brook_heap_bytes{{state=\"free\"}} {}", heap.free);
    }
    if let Some(rss) = crate::memory::resident() {
        family(
            &mut m,
            "brook_resident_bytes",
            "gauge",
            "The process's resident set (mapped code and libraries included).",
        );
        let _ = writeln!(m, "brook_resident_bytes {rss}");
    }
    m
}
