//! The native protocol against a real server on loopback (`brook::serve::start` on
//! `127.0.0.1:0`) with the real client: round trips, long poll, groups, commits across restarts,
//! and malformed frames that must close only their own connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;
use brook::client::{Client, ClientError, Consumer, Producer, StartFrom};
use brook::config::Config;
use brook::log::{BatchBuilder, Record};
use brook::proto::{self, Acks, Assignor, ErrorCode, OffsetSpec, TopicSettings};
use brook::serve::{Running, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(dir: &std::path::Path) -> Config {
    common::server_config(dir)
}

async fn client(r: &Running) -> Arc<Client> {
    Arc::new(
        Client::connect(&r.native_addr.expect("native listener").to_string(), "test")
            .await
            .expect("connect"),
    )
}

fn settings(partitions: u32) -> TopicSettings {
    TopicSettings {
        partitions: Some(partitions),
        ..TopicSettings::default()
    }
}

fn record(v: &str) -> Record {
    Record {
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(v.as_bytes().to_vec()),
        headers: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await.expect("start");
    let c = client(&server).await;
    c.create_topic("t", settings(3)).await.expect("create");
    let err = c.create_topic("t", settings(3)).await.expect_err("exists");
    assert!(
        matches!(
            err,
            ClientError::Server {
                code: ErrorCode::TopicExists,
                ..
            }
        ),
        "{err}"
    );
    let mut p = Producer::new(Arc::clone(&c), "t", Acks::Durable)
        .await
        .expect("producer");
    for i in 0..1000 {
        let mut r = record(&format!("v{i}"));
        r.key = Some(format!("k{}", i % 7).into_bytes());
        p.send(None, &r).await.expect("send");
    }
    p.flush().await.expect("flush");
    assert_eq!(p.acked, 1000);
    // Keys land where Kafka's partitioner says, in order within each key.
    let mut consumer = Consumer::standalone(Arc::clone(&c), "t", None, StartFrom::Earliest)
        .await
        .expect("consumer");
    let mut got = Vec::new();
    while got.len() < 1000 {
        got.extend(consumer.poll(Duration::from_secs(5)).await.expect("poll"));
    }
    assert_eq!(got.len(), 1000);
    for g in &got {
        let key = g.record.key.as_deref().expect("key");
        assert_eq!(
            g.partition,
            brook::log::partitioner::partition_for_key(key, 3)
        );
    }
    for k in 0..7 {
        let key = format!("k{k}");
        let values: Vec<u64> = got
            .iter()
            .filter(|g| g.record.key.as_deref() == Some(key.as_bytes()))
            .map(|g| {
                String::from_utf8_lossy(g.record.value_bytes())[1..]
                    .parse()
                    .expect("number")
            })
            .collect();
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "order within key {key}"
        );
    }
    let (earliest, latest, _) = c
        .list_offsets("t", 0, OffsetSpec::Latest)
        .await
        .expect("offsets");
    assert_eq!(earliest, 0);
    assert!(latest > 0);
    let d = c.describe_topic("t").await.expect("describe");
    assert_eq!(d.partitions.len(), 3);
    assert_eq!(d.partitions.iter().map(|p| p.end_offset).sum::<u64>(), 1000);
    c.delete_topic("t").await.expect("delete");
    assert!(c.list_topics().await.expect("list").is_empty());
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_new_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await.expect("start");
    let c = client(&server).await;
    c.create_topic("t", settings(1)).await.expect("create");
    let reader = Arc::clone(&c);
    let started = Instant::now();
    let fetch = tokio::spawn(async move {
        reader
            .fetch("t", 0, 0, 1 << 20, 1, Duration::from_secs(30))
            .await
    });
    // The fetch is waiting (nothing there yet); now produce.
    let writer = client(&server).await;
    let mut b = BatchBuilder::new();
    b.push(1, None, Some(&b"hello"[..]), &[]);
    writer
        .produce("t", Some(0), None, Acks::Written, &b)
        .await
        .expect("produce");
    let got = fetch.await.expect("task").expect("fetch");
    let records = got.records(0).expect("records");
    assert_eq!(records.len(), 1, "the long poll returned the new record");
    assert_eq!(records[0].1.value.as_deref(), Some(&b"hello"[..]));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "woken before max_wait"
    );
    // An empty long poll returns after max_wait with nothing.
    let got = c
        .fetch("t", 0, 1, 1 << 20, 1, Duration::from_millis(200))
        .await
        .expect("fetch");
    assert!(got.frames.is_empty());
    assert_eq!(got.high_watermark, 1);
    server.stop().await.expect("stop");
}

/// Polls `cond` until it holds (the group state changes asynchronously), for at most 20 s.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_rebalance_on_join_leave_and_death() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await.expect("start");
    let c = client(&server).await;
    c.create_topic("t", settings(4)).await.expect("create");
    let session = Duration::from_secs(1);
    let a = c
        .join_group("g", "", &["t"], session, Assignor::Range)
        .await
        .expect("a joins");
    assert_eq!(a.assignment.len(), 4, "a lone member gets every partition");
    let b = c
        .join_group("g", "", &["t"], session, Assignor::Range)
        .await
        .expect("b joins");
    assert_eq!(b.generation, a.generation + 1);
    assert_eq!(b.assignment.len(), 2);
    // a learns of the rebalance from its heartbeat and rejoins for its new share.
    assert!(
        c.heartbeat("g", &a.member_id, a.generation)
            .await
            .expect("hb")
    );
    let a2 = c
        .join_group("g", &a.member_id, &["t"], session, Assignor::Range)
        .await
        .expect("a rejoins");
    assert_eq!(a2.assignment.len(), 2);
    let mut all: Vec<_> = a2.assignment.iter().chain(&b.assignment).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4, "every partition to exactly one member");
    // A commit from a stale generation is refused.
    let err = c
        .commit_offsets("g", Some((&a.member_id, a.generation)), &[("t", 0, 1)])
        .await
        .expect_err("stale generation");
    assert!(
        matches!(
            err,
            ClientError::Server {
                code: ErrorCode::IllegalGeneration,
                ..
            }
        ),
        "{err}"
    );
    // b leaves: a gets everything again.
    c.leave_group("g", &b.member_id).await.expect("leave");
    let a3 = c
        .join_group("g", &a.member_id, &["t"], session, Assignor::Range)
        .await
        .expect("a rejoins");
    assert_eq!(a3.assignment.len(), 4);
    // A third member joins and then dies (no heartbeats): after its session it is removed.
    let dead = c
        .join_group("g", "", &["t"], session, Assignor::Range)
        .await
        .expect("joins");
    assert_eq!(dead.assignment.len(), 2);
    let a_id = a.member_id.clone();
    let c2 = Arc::clone(&c);
    eventually("the silent member to be removed", || {
        let c = Arc::clone(&c2);
        let a_id = a_id.clone();
        async move {
            // a keeps its own session alive while waiting.
            let _ = c.heartbeat("g", &a_id, 0).await;
            let d = c.describe_group("g").await.expect("describe");
            d.members.len() == 1
        }
    })
    .await;
    let a4 = c
        .join_group("g", &a.member_id, &["t"], session, Assignor::Range)
        .await
        .expect("a rejoins");
    assert_eq!(a4.assignment.len(), 4, "the dead member's partitions moved");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await.expect("start");
    let c = client(&server).await;
    c.create_topic("t", settings(2)).await.expect("create");
    let mut b = BatchBuilder::new();
    for i in 0..10 {
        b.push(i, None, Some(format!("{i}").as_bytes()), &[]);
    }
    c.produce("t", Some(1), None, Acks::Durable, &b)
        .await
        .expect("produce");
    c.commit_offsets("g", None, &[("t", 1, 7)])
        .await
        .expect("commit");
    drop(c);
    server.stop().await.expect("stop");

    let server = start(config(dir.path())).await.expect("restart");
    let c = client(&server).await;
    let offsets = c.fetch_offsets("g", "t").await.expect("offsets");
    assert_eq!(offsets, vec![(0, None), (1, Some(7))]);
    // A group consumer resumes at the committed offset.
    let mut consumer = Consumer::in_group(Arc::clone(&c), "t", "g", StartFrom::Earliest)
        .await
        .expect("consumer");
    let got = consumer.poll(Duration::from_secs(5)).await.expect("poll");
    let from_p1: Vec<u64> = got
        .iter()
        .filter(|g| g.partition == 1)
        .map(|g| g.offset)
        .collect();
    assert_eq!(from_p1, vec![7, 8, 9]);
    assert!(
        c.list_groups()
            .await
            .expect("groups")
            .contains(&"g".to_string())
    );
    consumer.close().await.expect("close");
    server.stop().await.expect("stop");
}

/// Sends raw bytes on a fresh connection and returns what the server answered before closing.
async fn raw(addr: std::net::SocketAddr, handshake: bool, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    if handshake {
        let hs = proto::encode(&proto::RequestFrame {
            correlation_id: 1,
            request: proto::Request::Handshake {
                version: proto::PROTOCOL_VERSION,
                client_id: "raw",
            },
        });
        s.write_all(&hs).await.expect("write");
    }
    s.write_all(bytes).await.expect("write");
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .expect("read");
    out
}

/// The error frames in what a server sent.
fn errors(mut bytes: &[u8]) -> Vec<ErrorCode> {
    let mut out = Vec::new();
    while let Ok((msg, n)) = proto::decode_frame(bytes, usize::MAX) {
        if let Ok(r) = postcard::from_bytes::<proto::ResponseFrame<'_>>(msg) {
            if let proto::Response::Error { code, .. } = r.response {
                out.push(code);
            }
        }
        bytes = &bytes[n..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.native.max_frame_size = brook::units::ByteSize::kib(64);
    let server = start(cfg).await.expect("start");
    let good = client(&server).await;
    good.create_topic("t", settings(1)).await.expect("create");
    let addr = server.native_addr.expect("native listener");

    // Random bytes.
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut noise = vec![0u8; 4096];
    for b in &mut noise {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
    assert!(!errors(&raw(addr, false, &noise).await).is_empty());
    // A huge length.
    let answer = raw(addr, true, &[0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]).await;
    assert!(
        errors(&answer).contains(&ErrorCode::InvalidRequest),
        "{answer:?}"
    );
    // A wrong CRC.
    let mut frame = proto::encode(&proto::RequestFrame {
        correlation_id: 2,
        request: proto::Request::ListTopics,
    });
    frame[5] ^= 0xff;
    assert!(errors(&raw(addr, true, &frame).await).contains(&ErrorCode::InvalidRequest));
    // A truncated frame, then the connection ends.
    let frame = proto::encode(&proto::RequestFrame {
        correlation_id: 3,
        request: proto::Request::ListTopics,
    });
    let answer = raw(addr, true, &frame[..frame.len() - 2]).await;
    assert!(
        errors(&answer).is_empty(),
        "a partial frame is only ever waited for"
    );
    // A valid frame whose message is not a request.
    let mut junk = vec![0u8; 8];
    junk.extend_from_slice(&[0xff; 20]);
    let n = junk.len() - 8;
    proto::seal_frame(&mut junk, n).expect("seal");
    assert!(errors(&raw(addr, true, &junk).await).contains(&ErrorCode::InvalidRequest));
    // A request before the handshake.
    let frame = proto::encode(&proto::RequestFrame {
        correlation_id: 4,
        request: proto::Request::ListTopics,
    });
    assert!(errors(&raw(addr, false, &frame).await).contains(&ErrorCode::HandshakeRequired));
    // A newer protocol version.
    let frame = proto::encode(&proto::RequestFrame {
        correlation_id: 5,
        request: proto::Request::Handshake {
            version: proto::PROTOCOL_VERSION + 1,
            client_id: "future",
        },
    });
    assert!(errors(&raw(addr, false, &frame).await).contains(&ErrorCode::UnsupportedVersion));
    // A produce whose records section is broken is refused; the connection stays usable.
    let err = good
        .send(&proto::Request::Produce(proto::Produce {
            topic: "t",
            partition: Some(0),
            partition_key: None,
            acks: Acks::Written,
            record_count: 3,
            first_timestamp: 0,
            records: &[1, 2, 3],
        }))
        .await
        .expect("answer");
    let r = brook::client::decode(&err).expect("decodes");
    assert!(matches!(
        r.response,
        proto::Response::Error {
            code: ErrorCode::InvalidBatch,
            ..
        }
    ));

    // Through all of it, the well-behaved connection kept working and nothing was stored.
    let mut b = BatchBuilder::new();
    b.push(1, None, Some(&b"still fine"[..]), &[]);
    let (_, base, _) = good
        .produce("t", Some(0), None, Acks::Durable, &b)
        .await
        .expect("produce on the good connection");
    assert_eq!(base, 0);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await.expect("start");
    let c = client(&server).await;
    c.create_topic("t", settings(1)).await.expect("create");
    let mut b = BatchBuilder::new();
    b.push(1, None, Some(&b"x"[..]), &[]);
    c.produce("t", Some(0), None, Acks::Durable, &b)
        .await
        .expect("produce");
    c.commit_offsets("g", None, &[("t", 0, 0)])
        .await
        .expect("commit");
    let get = |path: &'static str| {
        let addr = server.http_addr.expect("http listener");
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        }
    };
    let m = get("/metrics").await;
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    for series in [
        "brook_records_in_total{topic=\"t\"} 1",
        "brook_bytes_in_total{topic=\"t\"}",
        "brook_records_out_total{topic=\"t\"}",
        "brook_disk_used_bytes",
        "brook_disk_budget_bytes",
        "brook_segments{topic=\"t\",partition=\"0\"} 1",
        "brook_connections{listener=\"native\"} 1",
        "brook_group_lag{group=\"g\",topic=\"t\",partition=\"0\"} 1",
        "brook_fsync_seconds_bucket{le=\"+Inf\"}",
        "brook_fsync_seconds_count",
        "brook_heap_bytes{state=\"in_use\"}",
        "brook_heap_bytes{state=\"mapped\"}",
        "brook_heap_bytes{state=\"free\"}",
        "brook_resident_bytes",
    ] {
        assert!(m.contains(series), "missing {series} in\n{m}");
    }
    // The arena's bytes in use are resident: more than nothing, less than the resident set.
    let figure = |name: &str| -> u64 {
        let line = m.lines().find(|l| l.starts_with(name)).expect(name);
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect(name)
    };
    let (heap, rss) = (
        figure("brook_heap_bytes{state=\"in_use\"}"),
        figure("brook_resident_bytes"),
    );
    assert!(heap > 0 && heap < rss, "heap {heap}, resident {rss}");
    let h = get("/healthz").await;
    assert!(h.starts_with("HTTP/1.1 200") && h.ends_with("ok\n"), "{h}");
    let t = get("/api/topics").await;
    let body = t.split("\r\n\r\n").nth(1).expect("body");
    let json: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(json[0]["name"], "t");
    assert_eq!(json[0]["partitions"][0]["end_offset"], 1);
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_commit_commits_what_earlier_polls_returned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await.expect("start");
    let c = client(&server).await;
    c.create_topic("t", settings(1)).await.expect("create");
    let mut b = BatchBuilder::new();
    for i in 0..5 {
        b.push(i, None, Some(&b"x"[..]), &[]);
    }
    c.produce("t", Some(0), None, Acks::Durable, &b)
        .await
        .expect("produce");
    let mut consumer = Consumer::in_group(Arc::clone(&c), "t", "auto", StartFrom::Earliest)
        .await
        .expect("consumer")
        .auto_commit(Duration::ZERO);
    let got = consumer.poll(Duration::from_secs(5)).await.expect("poll");
    assert_eq!(got.len(), 5);
    // Nothing returned so far counts as processed: at most the start position is committed.
    let before = c.fetch_offsets("auto", "t").await.expect("offsets");
    assert!(
        before == vec![(0, None)] || before == vec![(0, Some(0))],
        "{before:?}"
    );
    // The next poll commits what the previous one returned.
    let _ = consumer
        .poll(Duration::from_millis(10))
        .await
        .expect("poll");
    assert_eq!(
        c.fetch_offsets("auto", "t").await.expect("offsets"),
        vec![(0, Some(5))]
    );
    server.stop().await.expect("stop");
}

/// Produces pipelined on one connection are appended in the order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produces_keep_their_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await.expect("start");
    let c = client(&server).await;
    c.create_topic("t", settings(2)).await.expect("create");
    let mut pending = Vec::new();
    for i in 0..300u32 {
        let mut b = BatchBuilder::new();
        b.push(i64::from(i), None, Some(i.to_string().as_bytes()), &[]);
        let acks = if i % 3 == 0 {
            Acks::Durable
        } else {
            Acks::Written
        };
        let rx = c
            .submit(&proto::Request::Produce(proto::Produce {
                topic: "t",
                partition: None,
                partition_key: None,
                acks,
                record_count: b.count(),
                first_timestamp: b.first_timestamp(),
                records: b.records_bytes(),
            }))
            .await
            .expect("submit");
        pending.push(rx);
    }
    for rx in pending {
        let bytes = rx.await.expect("answer");
        assert!(matches!(
            brook::client::decode(&bytes).expect("decodes").response,
            proto::Response::Produced { .. }
        ));
    }
    for p in 0..2 {
        let got = c
            .fetch("t", p, 0, 1 << 20, 1, Duration::from_secs(5))
            .await
            .expect("fetch")
            .records(0)
            .expect("records");
        let values: Vec<u32> = got
            .iter()
            .map(|(_, r)| {
                String::from_utf8_lossy(r.value_bytes())
                    .parse()
                    .expect("number")
            })
            .collect();
        assert_eq!(values.len(), 150);
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: {values:?}"
        );
    }
    server.stop().await.expect("stop");
}

/// A long poll does not hold up the answers to later requests on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_does_not_block_later_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await.expect("start");
    let c = client(&server).await;
    c.create_topic("t", settings(2)).await.expect("create");
    let mut waiting = c
        .submit(&proto::Request::Fetch(proto::Fetch {
            topic: "t",
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            min_bytes: 1,
            max_wait_ms: 30_000,
        }))
        .await
        .expect("submit long poll");
    // On the same connection: produce to partition 1 and read it back.
    let mut b = BatchBuilder::new();
    b.push(1, None, Some(&b"p1"[..]), &[]);
    c.produce("t", Some(1), None, Acks::Durable, &b)
        .await
        .expect("produce");
    let got = c
        .fetch("t", 1, 0, 1 << 20, 1, Duration::from_secs(5))
        .await
        .expect("fetch");
    assert_eq!(got.records(0).expect("records").len(), 1);
    assert!(
        matches!(
            waiting.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ),
        "the long poll is still waiting, and did not hold up the later answers"
    );
    // Data on partition 0 wakes it.
    let mut b = BatchBuilder::new();
    b.push(1, None, Some(&b"p0"[..]), &[]);
    c.produce("t", Some(0), None, Acks::Written, &b)
        .await
        .expect("produce");
    let bytes = waiting.await.expect("long poll answered");
    match brook::client::decode(&bytes).expect("decodes").response {
        proto::Response::Fetched { frames, .. } => assert!(!frames.is_empty()),
        other => panic!("unexpected {other:?}"),
    }
    server.stop().await.expect("stop");
}

/// A client whose server went away fails every request at once (before the fix, a request
/// made after the connection closed waited forever for an answer that could not come).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_after_the_server_went_away_fail_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await.expect("start");
    let c = client(&server).await;
    c.list_topics().await.expect("list while up");
    server.stop().await.expect("stop");
    let failed = tokio::time::timeout(Duration::from_secs(20), async {
        for _ in 0..3 {
            let err = c.list_topics().await.expect_err("the server is gone");
            assert!(matches!(err, ClientError::Closed(_)), "{err}");
        }
    })
    .await;
    assert!(failed.is_ok(), "a request hung on a closed connection");
}

/// Null values and null header values (Kafka tombstones) stay null through the log for a
/// protocol 2 client; a client that said protocol 1 in its handshake gets the same batch in the
/// plain layout, nulls as empty; a produce naming an unknown record layout is refused and the
/// connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_values_stay_null_and_protocol_1_clients_read_them_empty() {
    use brook::log::record::{BatchView, Header, RecordLayout};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await.expect("start");
    let c = client(&server).await;
    assert_eq!(c.protocol, proto::PROTOCOL_VERSION);
    c.create_topic("t", settings(1)).await.expect("create");
    let mut b = BatchBuilder::new();
    b.push(
        5,
        Some(&b"plain"[..]),
        Some(&b"x"[..]),
        &[Header::new("e", "")],
    );
    b.push(
        6,
        Some(&b"gone"[..]),
        None,
        &[Header::null("h"), Header::new("e", "")],
    );
    b.push(7, Some(&b"empty"[..]), Some(&b""[..]), &[]);
    assert_eq!(b.layout(), RecordLayout::Nullable);
    c.produce("t", Some(0), None, Acks::Durable, &b)
        .await
        .expect("produce with nulls");
    let got = c
        .fetch("t", 0, 0, 1 << 20, 1, Duration::from_secs(5))
        .await
        .expect("fetch");
    let recs: Vec<Record> = got
        .records(0)
        .expect("records")
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0].value.as_deref(), Some(&b"x"[..]));
    assert_eq!(recs[0].headers, vec![Header::new("e", "")]);
    assert_eq!(recs[1].value, None, "a null value reads back null");
    assert_eq!(
        recs[1].headers,
        vec![Header::null("h"), Header::new("e", "")]
    );
    assert_eq!(
        recs[2].value.as_deref(),
        Some(&b""[..]),
        "empty is not null"
    );

    // A protocol 1 client: handshake with version 1, then a fetch, on a raw connection.
    let addr = server.native_addr.expect("native listener");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut out = proto::encode(&proto::RequestFrame {
        correlation_id: 1,
        request: proto::Request::Handshake {
            version: 1,
            client_id: "old",
        },
    });
    out.extend(proto::encode(&proto::RequestFrame {
        correlation_id: 2,
        request: proto::Request::Fetch(proto::Fetch {
            topic: "t",
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            min_bytes: 1,
            max_wait_ms: 5_000,
        }),
    }));
    // A produce in a layout nobody knows: refused, and the connection goes on.
    out.extend(proto::encode(&proto::RequestFrame {
        correlation_id: 3,
        request: proto::Request::ProduceBatch {
            layout: 9,
            produce: proto::Produce {
                topic: "t",
                partition: Some(0),
                partition_key: None,
                acks: Acks::Durable,
                record_count: 1,
                first_timestamp: 0,
                records: &[0, 0, 0, 0, 0],
            },
        },
    }));
    out.extend(proto::encode(&proto::RequestFrame {
        correlation_id: 4,
        request: proto::Request::ListTopics,
    }));
    s.write_all(&out).await.expect("write");
    let mut buf = Vec::new();
    let mut answers = std::collections::HashMap::new();
    while answers.len() < 4 {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("answers within 10 s")
            .expect("read");
        assert!(n > 0, "closed after {} answers", answers.len());
        buf.extend_from_slice(&chunk[..n]);
        while let Ok((msg, total)) = proto::decode_frame(&buf, usize::MAX) {
            let msg = msg.to_vec();
            buf.drain(..total);
            let id = postcard::from_bytes::<proto::ResponseFrame<'_>>(&msg)
                .expect("answer")
                .correlation_id;
            answers.insert(id, msg);
        }
    }
    let fetched = postcard::from_bytes::<proto::ResponseFrame<'_>>(&answers[&2]).expect("fetch");
    let proto::Response::Fetched { frames, .. } = fetched.response else {
        panic!("fetch answered {:?}", fetched.response);
    };
    let view = BatchView::parse(frames).expect("a frame");
    assert_eq!(
        view.layout,
        RecordLayout::Plain,
        "a protocol 1 client gets layout 1"
    );
    let old: Vec<_> = view.records().collect::<Result<_, _>>().expect("records");
    assert_eq!(old[1].value, Some(&b""[..]), "null reads as empty for it");
    assert_eq!(old[1].headers[0].value, Some(&b""[..]));
    assert_eq!(old[0].value, Some(&b"x"[..]));
    assert_eq!(old[2].timestamp, 7);
    let refused = postcard::from_bytes::<proto::ResponseFrame<'_>>(&answers[&3]).expect("answer");
    assert!(
        matches!(
            refused.response,
            proto::Response::Error {
                code: ErrorCode::InvalidBatch,
                ..
            }
        ),
        "{:?}",
        refused.response
    );
    let listed = postcard::from_bytes::<proto::ResponseFrame<'_>>(&answers[&4]).expect("answer");
    assert!(matches!(listed.response, proto::Response::Topics { .. }));
    server.stop().await.expect("stop");
}

/// A client that asks for a lot and does not read the answers (the server's writes to it block,
/// and its in-flight slots stay taken) does not hold up the broker's stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_stops_while_a_client_does_not_read_its_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await.expect("start");
    let c = client(&server).await;
    c.create_topic("t", settings(1)).await.expect("create");
    let mut p = Producer::new(Arc::clone(&c), "t", Acks::Durable)
        .await
        .expect("producer");
    let big = "x".repeat(64 * 1024);
    for _ in 0..32 {
        p.send(Some(0), &record(&big)).await.expect("send");
    }
    p.flush().await.expect("flush");
    let mut s = tokio::net::TcpStream::connect(server.native_addr.expect("native listener"))
        .await
        .expect("connect");
    let mut out = proto::encode(&proto::RequestFrame {
        correlation_id: 1,
        request: proto::Request::Handshake {
            version: proto::PROTOCOL_VERSION,
            client_id: "deaf",
        },
    });
    // 200 fetches of the whole 2 MiB: far more than the socket buffers and every slot hold.
    for id in 2..202 {
        out.extend(proto::encode(&proto::RequestFrame {
            correlation_id: id,
            request: proto::Request::Fetch(proto::Fetch {
                topic: "t",
                partition: 0,
                offset: 0,
                max_bytes: 4 << 20,
                min_bytes: 1,
                max_wait_ms: 0,
            }),
        }));
    }
    s.write_all(&out).await.expect("write");
    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("stopped in time")
        .expect("stop");
    drop(s);
}
