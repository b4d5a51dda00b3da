//! Backoff after failed logins, per user name and per client address, over every listener
//! and connection: after `n` failures in a row a user name (or an address) is refused for
//! `login_backoff × 2^(n-1)`, at most `login_backoff_max`, without its password being checked.
//! A successful login clears the user's and the address's count. Loopback addresses are not
//! held back by address unless `auth.limit_loopback` (the device's own applications share
//! them); their user names are.
//!
//! Password guessing therefore costs the same from 300 connections as from one. The table is
//! bounded: entries whose backoff ended long ago are dropped, and past 8,192 entries new
//! addresses are not recorded (user names still are, and there are only as many as the users
//! file and the guesses name, also bounded).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_ENTRIES: usize = 8192;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Key {
    User(String),
    Addr(IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    until: Instant,
}

/// Failed-login counts and the time each key is held back until.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    limit_loopback: bool,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Backoff {
    /// `base` zero: no backoff.
    pub fn new(base: Duration, max: Duration, limit_loopback: bool) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            limit_loopback,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn keys(&self, user: &str, ip: IpAddr) -> impl Iterator<Item = Key> {
        let ip = ip.to_canonical();
        let by_addr = !ip.is_loopback() || self.limit_loopback;
        std::iter::once(Key::User(user.to_string())).chain(by_addr.then_some(Key::Addr(ip)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        // Counters only: a panic elsewhere cannot leave them half-updated.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a login as `user` from `ip` is still held back (`None`: it may be tried).
    pub fn wait(&self, user: &str, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.base.is_zero() {
            return None;
        }
        let entries = self.lock();
        self.keys(user, ip)
            .filter_map(|k| entries.get(&k))
            .filter(|e| e.until > now)
            .map(|e| e.until - now)
            .max()
    }

    /// Records a failed login.
    pub fn failed(&self, user: &str, ip: IpAddr, now: Instant) {
        if self.base.is_zero() {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            let forget = self.max * 4;
            entries.retain(|_, e| e.until + forget > now);
        }
        for k in self.keys(user, ip) {
            if entries.len() >= MAX_ENTRIES && !entries.contains_key(&k) {
                if let Key::Addr(_) = k {
                    continue;
                }
            }
            let e = entries.entry(k).or_insert(Entry {
                failures: 0,
                until: now,
            });
            // A count whose backoff ended long ago starts again.
            if e.failures > 0 && e.until + self.max * 4 < now {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            let factor = 1u32 << (e.failures - 1).min(16);
            e.until = now + self.base.saturating_mul(factor).min(self.max);
        }
    }

    /// Clears the counts of a user and address that logged in.
    pub fn succeeded(&self, user: &str, ip: IpAddr) {
        if self.base.is_zero() {
            return;
        }
        let mut entries = self.lock();
        for k in self.keys(user, ip) {
            entries.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_double_the_wait_up_to_the_cap_and_success_clears_it() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8), false);
        let far: IpAddr = "192.0.2.1".parse().expect("ip");
        let t = Instant::now();
        assert_eq!(b.wait("u", far, t), None);
        b.failed("u", far, t);
        assert_eq!(b.wait("u", far, t), Some(Duration::from_secs(1)));
        // The address is held back for another user name too.
        assert_eq!(b.wait("v", far, t), Some(Duration::from_secs(1)));
        for _ in 0..10 {
            b.failed("u", far, t);
        }
        assert_eq!(b.wait("u", far, t), Some(Duration::from_secs(8)));
        assert_eq!(b.wait("u", far, t + Duration::from_secs(9)), None);
        b.succeeded("u", far);
        assert_eq!(b.wait("u", far, t), None);
    }

    #[test]
    fn loopback_is_held_back_by_user_only_unless_asked() {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let t = Instant::now();
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), false);
        b.failed("u", lo, t);
        assert!(b.wait("u", lo, t).is_some());
        assert_eq!(b.wait("other", lo, t), None);
        let strict = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), true);
        strict.failed("u", lo, t);
        assert!(strict.wait("other", lo, t).is_some());
        let off = Backoff::new(Duration::ZERO, Duration::ZERO, true);
        off.failed("u", lo, t);
        assert_eq!(off.wait("u", lo, t), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let b = Backoff::new(Duration::from_millis(1), Duration::from_millis(1), false);
        let t = Instant::now();
        for i in 0..20_000u32 {
            let [_, x, y, z] = i.to_be_bytes();
            let ip = IpAddr::from([10, x, y, z]);
            b.failed("u", ip, t);
        }
        assert!(b.lock().len() <= MAX_ENTRIES + 1);
    }
}
