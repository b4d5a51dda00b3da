//! A mirror's bandwidth limit, shared between its topics in proportion to their priority.
//!
//! Every partition task asks for the bytes of its next batch before sending it. Grants are
//! ordered by start-time fair queuing over topics: a topic's tag advances by `bytes / priority`
//! with each grant, and a waiting request of the topic with the smallest tag goes next, so over any stretch
//! where several topics have backlog each gets bytes in proportion to its priority (however
//! many partitions it has), and a topic of priority 1 still gets its share: nothing starves.
//! A topic keeps its place for half a second of the limit while its next request is on its
//! way (each partition has one batch in flight, so between two requests it waits for the
//! upstream): shares hold when batches take a while to be acknowledged, not only when every
//! topic has a request waiting at every instant.
//! Grants are paced by a deficit token bucket: a grant is allowed once the bucket is not in
//! debt, then its bytes are taken (the bucket may go negative), and the bucket refills at the
//! limit. Over `n` batches the bytes sent stay within one batch of `limit x time`, with no burst
//! after an idle spell (the bucket holds at most a tenth of a second of credit).
//!
//! Without a limit there is no pacing and no ordering: each partition sends as fast as the
//! upstream takes it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// A request for `bytes` from a partition of `topic`.
struct Ask {
    topic: String,
    priority: u32,
    bytes: u64,
    seq: u64,
    granted: oneshot::Sender<()>,
}

/// Handle the partition tasks share; cheap to clone.
#[derive(Clone)]
pub struct Shaper {
    asks: Option<mpsc::UnboundedSender<Ask>>,
}

impl Shaper {
    /// A shaper for `bytes_per_sec` (0: unlimited, every ask is granted at once).
    pub fn new(bytes_per_sec: u64) -> Shaper {
        if bytes_per_sec == 0 {
            return Shaper { asks: None };
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(pace(rx, bytes_per_sec as f64));
        Shaper { asks: Some(tx) }
    }

    /// Whether a limit is set (asks may wait).
    pub fn is_limited(&self) -> bool {
        self.asks.is_some()
    }

    /// Waits until `bytes` of `topic` (at `priority`, at least 1) may be sent.
    pub async fn acquire(&self, topic: &str, priority: u32, bytes: u64) {
        let Some(asks) = &self.asks else {
            return;
        };
        let (granted, wait) = oneshot::channel();
        let ask = Ask {
            topic: topic.to_string(),
            priority: priority.max(1),
            bytes,
            seq: 0,
            granted,
        };
        if asks.send(ask).is_ok() {
            // The pacing task only ends with the runtime.
            let _ = wait.await;
        }
    }
}

/// The pacing task: grants the waiting ask whose topic has the smallest start tag (first come
/// first within a topic), at the limit.
async fn pace(mut rx: mpsc::UnboundedReceiver<Ask>, rate: f64) {
    let mut waiting: Vec<Ask> = Vec::new();
    // Finish tag of each topic's last grant, and the virtual time (start tag of the last grant).
    let mut finish: HashMap<String, f64> = HashMap::new();
    let mut vtime = 0.0f64;
    let mut seq = 0u64;
    let mut tokens = 0.0f64;
    let mut last = Instant::now();
    let burst = rate / 10.0;
    let slack = rate / 2.0;
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(a) => waiting.push(a),
                None => return,
            }
        }
        while let Ok(a) = rx.try_recv() {
            waiting.push(a);
        }
        for a in waiting.iter_mut().filter(|a| a.seq == 0) {
            seq += 1;
            a.seq = seq;
        }
        waiting.retain(|a| !a.granted.is_closed());
        // A topic starts where its last grant finished, but no further back than half a second
        // of the limit before now: a topic that is away for a moment (its one batch in flight
        // upstream) keeps its place, one that was idle for longer does not bank credit.
        let start = |a: &Ask| match finish.get(&a.topic) {
            Some(f) => f.max(vtime - slack),
            None => vtime,
        };
        let Some(i) = waiting
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| start(a).total_cmp(&start(b)).then(a.seq.cmp(&b.seq)))
            .map(|(i, _)| i)
        else {
            continue;
        };
        // Refill, and wait out any debt before granting.
        let now = Instant::now();
        tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(burst);
        last = now;
        if tokens < -0.5 {
            tokio::time::sleep(Duration::from_secs_f64(-tokens / rate)).await;
            // Asks that came meanwhile may go first.
            continue;
        }
        let a = waiting.swap_remove(i);
        let tag = start(&a);
        tokens -= a.bytes as f64;
        vtime = tag;
        finish.insert(
            a.topic.clone(),
            tag + a.bytes as f64 / f64::from(a.priority),
        );
        let _ = a.granted.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paced by tokio's paused clock: the shares and the rate are exact, not timed.
    #[tokio::test(start_paused = true)]
    async fn shares_follow_priority_and_the_rate_holds() {
        let shaper = Shaper::new(100_000);
        let sent: std::sync::Arc<std::sync::Mutex<HashMap<&'static str, u64>>> = Default::default();
        let mut tasks = Vec::new();
        // alarms (priority 3) with one partition, telemetry (priority 1) with three.
        for (topic, prio) in [
            ("alarms", 3),
            ("telemetry", 1),
            ("telemetry", 1),
            ("telemetry", 1),
        ] {
            let (s, sent) = (shaper.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    s.acquire(topic, prio, 1_000).await;
                    *sent.lock().expect("lock").entry(topic).or_default() += 1_000;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
        let got = sent.lock().expect("lock").clone();
        for t in tasks {
            t.abort();
        }
        let (a, t) = (got["alarms"] as f64, got["telemetry"] as f64);
        let total = a + t;
        assert!(
            (total - 2_000_000.0).abs() <= 2_000.0,
            "{total} bytes in 20 s at 100 kB/s"
        );
        assert!((a / t - 3.0).abs() < 0.05, "alarms:telemetry = {}", a / t);
    }

    /// Each task spends 11 ms on the upstream per batch (one batch in flight), a bit more than
    /// the 10 ms between two grants, and asks for its next share meanwhile: the shares hold.
    #[tokio::test(start_paused = true)]
    async fn shares_hold_when_each_batch_takes_a_while_upstream() {
        let shaper = Shaper::new(100_000);
        let sent: std::sync::Arc<std::sync::Mutex<HashMap<&'static str, u64>>> = Default::default();
        let mut tasks = Vec::new();
        for (topic, prio) in [("alarms", 3), ("telemetry", 1), ("telemetry", 1)] {
            let (s, sent) = (shaper.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                // As the mirror does: the next batch's share is asked for while one is sent.
                s.acquire(topic, prio, 1_000).await;
                loop {
                    tokio::join!(
                        tokio::time::sleep(Duration::from_millis(11)),
                        s.acquire(topic, prio, 1_000)
                    );
                    *sent.lock().expect("lock").entry(topic).or_default() += 1_000;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
        let got = sent.lock().expect("lock").clone();
        for t in tasks {
            t.abort();
        }
        let (a, t) = (got["alarms"] as f64, got["telemetry"] as f64);
        assert!((a / t - 3.0).abs() < 0.15, "alarms:telemetry = {}", a / t);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_topic_gets_the_whole_rate_and_unlimited_is_immediate() {
        let shaper = Shaper::new(50_000);
        let t0 = Instant::now();
        for _ in 0..100 {
            shaper.acquire("t", 1, 5_000).await;
        }
        // 500,000 bytes: the first batch goes at once, the other 99 at 50 kB/s.
        let took = t0.elapsed().as_secs_f64();
        assert!((took - 9.9).abs() < 0.01, "{took} s");
        let free = Shaper::new(0);
        let t0 = Instant::now();
        free.acquire("t", 1, u64::MAX).await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }
}
