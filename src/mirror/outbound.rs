//! Mirrors out: a task per mirror watches for matching topics and runs one send loop per
//! partition (read what is durable from the cursor, batch, send, advance once acknowledged).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::cursor::{CursorKey, Cursors};
use super::shaper::Shaper;
use super::sink::{BrookSink, KafkaSink, MqttSink, Sink};
use super::status::{LinkState, MirrorStatus, Source};
use super::{
    Link, MirrorConfig, UpstreamKind, back_off, load_cursor, node_of, now_ms, record_bytes,
};
use crate::broker::Broker;
use crate::log::{Header, Record, Visibility};
use crate::units::Narrow;
/// Watches for topics matching the mirror and runs one task per partition.
pub(super) async fn run_mirror(
    broker: Arc<Broker>,
    cfg: Arc<MirrorConfig>,
    cursors: Arc<Cursors>,
    status: Arc<MirrorStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let node = node_of(&cfg);
    // Topics mirrored, and how many of their partitions (partitions added later join).
    let mut running: std::collections::HashMap<String, u32> = Default::default();
    let mut parts = tokio::task::JoinSet::new();
    let shaper = Shaper::new(cfg.bandwidth_limit.0);
    // The CA bundle, certificates and password are read once per mirror, not per partition.
    let link = Link::for_mirror(&cfg);
    loop {
        for t in broker.topics() {
            let name = t.name().to_string();
            let count = t.partitions().len().sat_u32();
            let started = running.get(&name).copied().unwrap_or(0);
            if !cfg.matches(&name) || started >= count {
                continue;
            }
            tracing::info!(mirror = %cfg.name, topic = %name, partitions = count, "mirroring");
            for p in started..count {
                parts.spawn(run_partition(
                    Arc::clone(&broker),
                    Arc::clone(&cfg),
                    Arc::clone(&link),
                    Arc::clone(&node),
                    name.clone(),
                    p,
                    Arc::clone(&cursors),
                    Arc::clone(&status),
                    shaper.clone(),
                    shutdown.clone(),
                ));
            }
            running.insert(name, count);
        }
        // New topics are picked up within a few seconds.
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    while parts.join_next().await.is_some() {}
}

#[allow(clippy::too_many_arguments)]
async fn run_partition(
    broker: Arc<Broker>,
    cfg: Arc<MirrorConfig>,
    link: Arc<Link>,
    node: Arc<str>,
    topic: String,
    partition: u32,
    cursors: Arc<Cursors>,
    status: Arc<MirrorStatus>,
    shaper: Shaper,
    mut shutdown: watch::Receiver<bool>,
) {
    let priority = cfg.priority_of(&topic);
    let key: CursorKey = (cfg.name.clone(), topic.clone(), partition);
    let upstream_topic = cfg
        .topic_template
        .replace("{node}", &node)
        .replace("{topic}", &topic);
    let mut sink = match cfg.kind {
        Some(UpstreamKind::Kafka) => Sink::Kafka(KafkaSink::new(
            cfg.upstream.clone(),
            link,
            cfg.compression,
            cfg.create_topics,
        )),
        Some(UpstreamKind::Mqtt) => Sink::Mqtt(Box::new(MqttSink::new(
            &cfg.upstream[0],
            format!("brook-{node}-{}-{topic}-{partition}", cfg.name),
            link,
            cfg.mqtt_311(),
        ))),
        _ => Sink::Brook(BrookSink::new(cfg.upstream.clone(), link)),
    };
    let mut backoff = cfg.backoff_min.0;
    status.update(&key, |s| s.state = LinkState::Starting);
    let Some(mut next) = load_cursor(&broker, &cursors, &key).await else {
        return;
    };
    // Records read ahead and not yet acknowledged, from `next` on, origin headers added: the
    // log is read once however the batches are cut, and a failed batch is sent again as is.
    let mut pending: std::collections::VecDeque<Record> = Default::default();
    // The offset of each pending record.
    let mut offsets: std::collections::VecDeque<u64> = Default::default();
    // Bytes the shaper already granted for the next batch (asked for while the last was sent).
    let mut granted: u64 = 0;
    // Since when a batch smaller than batch_records has waited for more (linger).
    let mut linger_since: Option<std::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let Ok(t) = broker.topic(&topic) else {
            tracing::info!(mirror = %cfg.name, topic, "topic deleted: mirroring stops");
            return;
        };
        let Ok(part) = t.partition(partition) else {
            return;
        };
        let part = Arc::clone(part);
        let local_count = t.partitions().len().sat_u32();
        drop(t);
        if pending.is_empty() || linger_since.is_some() {
            let start = part.log_start();
            if pending.is_empty() && next < start {
                // Retention (drop_oldest) deleted records before they were mirrored.
                let lost = start - next;
                tracing::warn!(mirror = %cfg.name, topic, partition, lost, "records deleted before they were mirrored");
                status.update(&key, |s| s.dropped_records += lost);
                next = start;
                cursors.advance(&key, next);
            }
            let mut end_rx = part.watch_end();
            end_rx.borrow_and_update();
            // Past what is already read ahead (lingering), else from the cursor.
            let from = offsets.back().map_or(next, |o| o + 1);
            let read = {
                let p = Arc::clone(&part);
                tokio::task::spawn_blocking(move || p.read(from, 1 << 20, Visibility::Durable))
                    .await
            };
            let r = match read {
                Ok(Ok(r)) => r,
                Ok(Err(crate::log::LogError::OffsetOutOfRange { earliest, .. }))
                    if pending.is_empty() =>
                {
                    // The cursor is past the end: the topic was deleted and made again.
                    tracing::warn!(mirror = %cfg.name, topic, partition, next, "cursor past the end of the log (topic recreated?): starting over");
                    next = earliest;
                    cursors.advance(&key, next);
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::error!(mirror = %cfg.name, topic, partition, "read: {e}");
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
                Err(_) => return,
            };
            let before = pending.len();
            'batches: for b in r.batches() {
                for rec in b.records() {
                    let Ok(rec) = rec else {
                        break 'batches;
                    };
                    if rec.offset < from {
                        continue;
                    }
                    let mut out = rec.to_record();
                    out.headers.extend([
                        Header::new("brook.node", node.as_bytes()),
                        Header::new("brook.topic", topic.as_bytes()),
                        Header::new("brook.partition", partition.to_string()),
                        Header::new("brook.offset", rec.offset.to_string()),
                    ]);
                    pending.push_back(out);
                    offsets.push_back(rec.offset);
                }
            }
            let read_bytes: u64 = pending.iter().skip(before).map(record_bytes).sum();
            status.update(&key, |s| {
                s.cursor = next;
                s.end = r.high_watermark;
                s.source = Some(Source(Arc::clone(&part)));
                s.read((pending.len() - before) as u64, read_bytes);
                s.oldest_unsent_ms = pending.front().map(|r| r.timestamp);
            });
            if pending.is_empty() {
                // Nothing durable past the cursor: wait for the partition to grow (durability
                // follows within a flush interval, hence the poll).
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    _ = end_rx.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            let caught_up = offsets.back().is_some_and(|o| o + 1 >= r.high_watermark);
            if !cfg.linger.0.is_zero() && caught_up && pending.len() < cfg.batch_records {
                let since = *linger_since.get_or_insert_with(std::time::Instant::now);
                let left = cfg.linger.0.saturating_sub(since.elapsed());
                if !left.is_zero() {
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return,
                        _ = end_rx.changed() => {}
                        _ = tokio::time::sleep(left.min(Duration::from_millis(200))) => {}
                    }
                    continue;
                }
            }
            linger_since = None;
        }
        let n = pending.len().min(cfg.batch_records);
        let last = offsets[n - 1];
        let batch = &pending.make_contiguous()[..n];
        let bytes: u64 = batch.iter().map(record_bytes).sum();
        if shaper.is_limited() && granted < bytes {
            status.update(&key, |s| {
                if s.state == LinkState::Connected {
                    s.state = LinkState::Throttled;
                }
            });
            tokio::select! {
                _ = shaper.acquire(&topic, priority, bytes - granted) => granted = bytes,
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        // Under a limit, the next batch's share is asked for while this one is upstream (as
        // much again), so the topic is waiting at the shaper even while its one batch is in
        // flight and priorities hold however long acknowledgements take.
        let ahead = async {
            if shaper.is_limited() {
                shaper.acquire(&topic, priority, bytes).await;
                bytes
            } else {
                0
            }
        };
        let sent = tokio::select! {
            (r, more) = async { tokio::join!(sink.send(&upstream_topic, partition, local_count, batch), ahead) } => {
                granted = granted - bytes.min(granted) + more;
                r
            }
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match sent {
            Ok(()) => {
                pending.drain(..n);
                offsets.drain(..n);
                next = last + 1;
                cursors.advance(&key, next);
                status.sent_total.fetch_add(n as u64, Ordering::Relaxed);
                status.update(&key, |s| {
                    s.state = LinkState::Connected;
                    s.cursor = next;
                    s.end = s.end.max(next);
                    s.sent(n as u64, bytes, now_ms());
                    s.oldest_unsent_ms = pending.front().map(|r| r.timestamp);
                });
                backoff = cfg.backoff_min.0;
            }
            Err(e) => {
                let failure = format!("upstream send failed: {e}");
                if !back_off(&cfg, &key, &status, &mut backoff, failure, &mut shutdown).await {
                    return;
                }
            }
        }
    }
}
