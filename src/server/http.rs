//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/api/topics` and
//! `/api/mirrors` (JSON).
//!
//! With `auth.http_token_file` set, `/api/...` (and `/metrics` with `auth.metrics_need_token`)
//! answer 401 without `Authorization: Bearer TOKEN`; `/healthz` is always open.
//!
//! A deliberately small HTTP/1.1 server: GET only, one request per connection, request heads up
//! to 8 KiB. Anything else gets a 4xx answer.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::native::NativeStats;
use crate::broker::Broker;
use crate::log::partition::FSYNC_BUCKETS_US;
use crate::net::tls::TlsServer;

/// What the HTTP endpoint reads from.
pub struct HttpState {
    pub broker: Arc<Broker>,
    pub native: Arc<NativeStats>,
    pub mqtt: Arc<super::mqtt::MqttStats>,
    pub kafka: Arc<super::kafka::KafkaStats>,
    pub mirrors: Arc<crate::mirror::MirrorStatus>,
    pub auth: Arc<crate::auth::Auth>,
}

pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    state: Arc<HttpState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("http listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = state.auth.admit("http", peer.ip()) else {
            continue;
        };
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            // One request per connection: the handshakes and the request within the timeout.
            let served = tokio::time::timeout(state.auth.handshake_timeout(), async {
                match &tls {
                    None => serve_one(stream, &state).await,
                    Some(t) => match state.auth.accept_tls(t, stream).await {
                        Ok((s, _)) => serve_one(s, &state).await,
                        Err(e) => {
                            tracing::debug!("http: {e}");
                            Ok(())
                        }
                    },
                }
            })
            .await;
            if served.is_err() {
                state.auth.handshake_timed_out();
                tracing::debug!(%peer, "http: no complete request within the handshake timeout");
            }
            drop(admitted);
        });
    }
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    state: &HttpState,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if head.len() > 8192 {
            return respond(&mut stream, 431, "text/plain", "request head too large\n").await;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "only GET is supported\n").await;
    }
    let path = target.split('?').next().unwrap_or("");
    let text = String::from_utf8_lossy(&head);
    let authorization = text.split("\r\n").skip(1).find_map(|h| {
        let (name, value) = h.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| value.trim())
    });
    if !state.auth.http_allows(path, authorization) {
        return respond(
            &mut stream,
            401,
            "text/plain",
            "a token is required: Authorization: Bearer TOKEN (auth.http_token_file)\n",
        )
        .await;
    }
    match path {
        "/metrics" => {
            let body = metrics(state);
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body).await
        }
        "/healthz" => {
            let problems = health(state);
            if problems.is_empty() {
                respond(&mut stream, 200, "text/plain", "ok\n").await
            } else {
                respond(
                    &mut stream,
                    503,
                    "text/plain",
                    &format!("degraded: {}\n", problems.join("; ")),
                )
                .await
            }
        }
        "/api/topics" => {
            let body = topics_json(state);
            respond(&mut stream, 200, "application/json", &body).await
        }
        "/api/mirrors" => {
            let body = serde_json::to_string(&state.mirrors.rows()).unwrap_or_else(|_| "[]".into());
            respond(&mut stream, 200, "application/json", &body).await
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    }
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Why the broker is degraded (empty when healthy).
pub fn health(state: &HttpState) -> Vec<String> {
    let mut problems = Vec::new();
    let store = state.broker.store();
    let dir = store.dir();
    if let Some(cause) = store.usage().failing() {
        problems.push(format!("appends are failing: {cause}"));
    }
    match statvfs_flags(dir) {
        Some((read_only, available)) => {
            if read_only {
                problems.push("filesystem is read-only".to_string());
            }
            if available == 0 {
                problems.push(format!(
                    "no space left on the filesystem of {}",
                    dir.display()
                ));
            }
            if let Some(floor) = store.options().min_free.limit() {
                if available < floor {
                    problems.push(format!(
                        "{available} bytes available, below min_free {floor}"
                    ));
                }
            }
        }
        None => problems.push(format!("cannot stat {}", dir.display())),
    }
    for d in store.usage().damage() {
        problems.push(d.to_string());
    }
    for t in store.topics() {
        for p in t.partitions() {
            if let Some(cause) = p.status().poisoned {
                problems.push(format!("{}/{} refuses writes: {cause}", t.name(), p.id()));
            }
        }
    }
    problems
}

/// Every reason's count of failed appends, zeros included (a rate needs the series first).
fn append_failures(usage: &crate::log::partition::Usage) -> Vec<(&'static str, u64)> {
    crate::log::AppendFailure::ALL
        .iter()
        .zip(&usage.append_failures)
        .map(|(f, n)| (f.label(), n.load(Ordering::Relaxed)))
        .collect()
}

fn statvfs_flags(path: &std::path::Path) -> Option<(bool, u64)> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is NUL-terminated and `st` is a writable statvfs filled in by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // field widths differ between 32- and 64-bit targets
    let available = st.f_bavail as u64 * st.f_frsize as u64;
    Some(((st.f_flag & libc::ST_RDONLY) != 0, available))
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
    if let Some((_, available)) = statvfs_flags(store.dir()) {
        let _ = writeln!(m, "brook_disk_free_bytes {available}");
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
                    let lag = o.end_offset - o.committed.unwrap_or(0).min(o.end_offset);
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

fn topics_json(state: &HttpState) -> String {
    use crate::report::{PartitionReport, TopicReport};
    let topics: Vec<TopicReport> = state
        .broker
        .topics()
        .iter()
        .map(|t| {
            let cfg = t.config();
            TopicReport {
                name: t.name().to_string(),
                retention: cfg.retention.to_string(),
                retention_size: cfg.retention_size.bytes(),
                segment_size: cfg.segment_size.bytes(),
                on_full: cfg.on_full,
                cleanup: Some(cfg.cleanup),
                delete_retention: Some(cfg.delete_retention.to_string()),
                partitions: t
                    .partitions()
                    .iter()
                    .map(|p| {
                        let s = p.status();
                        PartitionReport {
                            partition: p.id(),
                            log_start: s.log_start,
                            end_offset: s.next_offset,
                            durable_offset: s.durable_offset,
                            segments: s.segments as u64,
                            bytes: s.bytes,
                            refuses_writes: s.poisoned,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    serde_json::to_string(&topics).unwrap_or_else(|_| "[]".into())
}
