//! `$SYS/#`: the broker's own figures as MQTT messages, every `mqtt.sys_interval` (default
//! 10 s; "0s" turns them off), as Mosquitto publishes them, so the dashboards and monitoring
//! scripts written for it read Brook unchanged; plus Brook's own under `$SYS/brook/`.
//!
//! They are not stored in the log: each is retained in memory (a new subscriber gets the
//! latest at once) and handed to the matching live subscriptions at QoS 0. Subscribing takes
//! an ACL rule like any topic (`subscribe = ["$SYS/#"]`; `#` alone never matches `$SYS`).
//!
//! | topic | value |
//! |---|---|
//! | `$SYS/broker/version` | `brook X.Y.Z` |
//! | `$SYS/broker/uptime` | `N seconds` |
//! | `$SYS/broker/clients/connected`, `/disconnected`, `/total` | connections; persistent sessions away; both |
//! | `$SYS/broker/messages/received`, `/sent` | PUBLISH packets in and out since start |
//! | `$SYS/broker/publish/messages/received`, `/sent` | the same (Mosquitto has both) |
//! | `$SYS/broker/bytes/received`, `/sent` | MQTT bytes in and out since start |
//! | `$SYS/broker/subscriptions/count` | live subscriptions |
//! | `$SYS/broker/retained messages/count` | retained messages |
//! | `$SYS/broker/load/{messages,bytes}/{received,sent}/{1min,5min,15min}` | per-minute rates, exponentially averaged over 1, 5, 15 minutes |
//! | `$SYS/brook/log/bytes`, `$SYS/brook/log/free_bytes` | bytes in the log; bytes free on its file system |
//! | `$SYS/brook/partitions` | partitions of all topics |
//! | `$SYS/brook/mirror/<name>/backlog` | records not yet mirrored upstream, per mirror |

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::MqttStats;

/// Exponentially averaged per-minute rates of four counters, over 1, 5 and 15 minutes.
#[derive(Debug)]
pub struct Load {
    last: Option<(Instant, [u64; 4])>,
    /// `[counter][window]`, per minute.
    avg: [[f64; 3]; 4],
}

impl Default for Load {
    fn default() -> Self {
        Load {
            last: None,
            avg: [[0.0; 3]; 4],
        }
    }
}

const COUNTERS: [&str; 4] = [
    "messages/received",
    "messages/sent",
    "bytes/received",
    "bytes/sent",
];
const WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

fn counters(stats: &MqttStats) -> [u64; 4] {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let sum = |a: &[std::sync::atomic::AtomicU64; 3]| a.iter().map(g).sum::<u64>();
    [
        sum(&stats.publishes_in),
        sum(&stats.publishes_out),
        g(&stats.bytes_in),
        g(&stats.bytes_out),
    ]
}

impl Load {
    /// Takes a sample now.
    pub fn sample(&mut self, stats: &MqttStats, now: Instant) {
        let c = counters(stats);
        if let Some((then, prev)) = self.last {
            let secs = now.duration_since(then).as_secs_f64();
            if secs > 0.0 {
                for (i, avg) in self.avg.iter_mut().enumerate() {
                    let per_min = c[i].saturating_sub(prev[i]) as f64 * 60.0 / secs;
                    for (w, (_, window)) in avg.iter_mut().zip(WINDOWS) {
                        *w += (per_min - *w) * (1.0 - (-secs / window).exp());
                    }
                }
            }
        }
        self.last = Some((now, c));
    }
}

/// The `$SYS` messages of this moment: (topic, payload).
pub fn messages(
    stats: &MqttStats,
    load: &Load,
    uptime_secs: u64,
    sessions_away: u64,
    brook: &[(String, String)],
) -> Vec<(String, String)> {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let c = counters(stats);
    let connected = g(&stats.connections);
    let mut out = vec![
        (
            "$SYS/broker/version".to_string(),
            concat!("brook ", env!("CARGO_PKG_VERSION")).to_string(),
        ),
        (
            "$SYS/broker/uptime".into(),
            format!("{uptime_secs} seconds"),
        ),
        (
            "$SYS/broker/clients/connected".into(),
            connected.to_string(),
        ),
        (
            "$SYS/broker/clients/disconnected".into(),
            sessions_away.to_string(),
        ),
        (
            "$SYS/broker/clients/total".into(),
            (connected + sessions_away).to_string(),
        ),
        ("$SYS/broker/messages/received".into(), c[0].to_string()),
        ("$SYS/broker/messages/sent".into(), c[1].to_string()),
        (
            "$SYS/broker/publish/messages/received".into(),
            c[0].to_string(),
        ),
        ("$SYS/broker/publish/messages/sent".into(), c[1].to_string()),
        ("$SYS/broker/bytes/received".into(), c[2].to_string()),
        ("$SYS/broker/bytes/sent".into(), c[3].to_string()),
        (
            "$SYS/broker/subscriptions/count".into(),
            g(&stats.subscriptions).to_string(),
        ),
        (
            "$SYS/broker/retained messages/count".into(),
            g(&stats.retained).to_string(),
        ),
    ];
    for (i, name) in COUNTERS.iter().enumerate() {
        for (w, (window, _)) in WINDOWS.iter().enumerate() {
            out.push((
                format!("$SYS/broker/load/{name}/{window}"),
                format!("{:.2}", load.avg[i][w]),
            ));
        }
    }
    out.extend(brook.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_is_reported_per_minute() {
        let stats = MqttStats::default();
        let mut load = Load::default();
        let t0 = Instant::now();
        load.sample(&stats, t0);
        // 10 messages a second for 15 minutes, sampled every 10 s.
        for step in 1..=90u64 {
            stats.publishes_in[1].fetch_add(100, Ordering::Relaxed);
            load.sample(&stats, t0 + std::time::Duration::from_secs(step * 10));
        }
        let one = load.avg[0][0];
        assert!((one - 600.0).abs() < 1.0, "1min {one}");
        // After one window at a steady rate, an average stands at 1 - 1/e of it.
        assert!((load.avg[0][2] - 600.0 * (1.0 - (-1.0f64).exp())).abs() < 5.0);
        let msgs = messages(
            &stats,
            &load,
            900,
            2,
            &[("$SYS/brook/partitions".into(), "3".into())],
        );
        let get = |t: &str| msgs.iter().find(|(k, _)| k == t).map(|(_, v)| v.clone());
        assert_eq!(
            get("$SYS/broker/messages/received").as_deref(),
            Some("9000")
        );
        assert_eq!(get("$SYS/broker/uptime").as_deref(), Some("900 seconds"));
        assert_eq!(get("$SYS/broker/clients/total").as_deref(), Some("2"));
        assert_eq!(get("$SYS/brook/partitions").as_deref(), Some("3"));
        assert!(get("$SYS/broker/load/messages/received/15min").is_some());
    }
}
