//! Who may open a connection at all: at most `max_connections_per_address` connections open
//! at once from one client address, over every listener together (native, MQTT, Kafka, HTTP,
//! plain and TLS). A connection over the limit is closed at once, before any TLS handshake or
//! password check costs anything, and counted.
//!
//! Loopback peers are not counted unless `limit_loopback = true`: they are the device's own
//! applications, and the default configuration listens on loopback only.
//!
//! Each listener also has its [`ListenerSlots`]: `max_connections` in all, of which at most
//! half are held by connections that have not logged in yet; past that, the oldest of those is
//! closed to make room, so clients that never log in can neither fill the listener nor keep a
//! new client from logging in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// A listener's connection slots.
#[derive(Debug)]
pub struct ListenerSlots {
    all: Arc<Semaphore>,
    max_pending: usize,
    pending: Arc<Mutex<Pending>>,
}

/// Connections that have not logged in, oldest first.
#[derive(Debug, Default)]
struct Pending {
    next: u64,
    queue: std::collections::VecDeque<(u64, Arc<Notify>)>,
}

/// Why a listener refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// `max_connections` are open.
    All,
}

/// A connection's hold on its listener's slots.
#[derive(Debug)]
pub struct ConnSlot {
    _all: OwnedSemaphorePermit,
    /// Until the login: its place among the pending connections, and how it is told to go.
    pending: Option<(u64, Arc<Mutex<Pending>>)>,
    evict: Arc<Notify>,
}

fn lock_pending(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ConnSlot {
    /// The connection has logged in: it no longer counts against the pre-login half.
    pub fn logged_in(&mut self) {
        if let Some((id, pending)) = self.pending.take() {
            lock_pending(&pending).queue.retain(|(i, _)| *i != id);
        }
    }

    /// Whether it has logged in.
    pub fn is_logged_in(&self) -> bool {
        self.pending.is_none()
    }

    /// Completes when a newer connection needed this one's pre-login place: close it.
    pub async fn evicted(&self) {
        self.evict.notified().await
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.logged_in();
    }
}

impl ListenerSlots {
    pub fn new(max_connections: usize) -> ListenerSlots {
        ListenerSlots {
            all: Arc::new(Semaphore::new(max_connections.max(1))),
            max_pending: (max_connections / 2).max(1),
            pending: Arc::default(),
        }
    }

    /// A slot for a new connection, not logged in yet. When half the slots are held by
    /// connections that have not logged in, the oldest of them is told to close
    /// ([`ConnSlot::evicted`]); `Ok(true)` then.
    pub fn take(&self) -> Result<(ConnSlot, bool), Full> {
        let all = Arc::clone(&self.all)
            .try_acquire_owned()
            .map_err(|_| Full::All)?;
        let mut pending = lock_pending(&self.pending);
        let mut evicted = false;
        while pending.queue.len() >= self.max_pending {
            if let Some((_, oldest)) = pending.queue.pop_front() {
                oldest.notify_one();
                evicted = true;
            }
        }
        let id = pending.next;
        pending.next += 1;
        let evict = Arc::new(Notify::new());
        pending.queue.push_back((id, Arc::clone(&evict)));
        Ok((
            ConnSlot {
                _all: all,
                pending: Some((id, Arc::clone(&self.pending))),
                evict,
            },
            evicted,
        ))
    }
}

/// Connections open per client address.
type Counts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Open connections per client address.
#[derive(Debug)]
pub struct Admission {
    max_per_address: usize,
    limit_loopback: bool,
    open: Counts,
}

/// One admitted connection; its address's count drops again when this does.
#[derive(Debug)]
pub struct Slot {
    counted: Option<(IpAddr, Counts)>,
}

fn lock(m: &Mutex<HashMap<IpAddr, usize>>) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
    // The map only holds counters: a panic elsewhere cannot leave it half-updated.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Admission {
    /// `max_per_address` 0: no limit.
    pub fn new(max_per_address: usize, limit_loopback: bool) -> Admission {
        Admission {
            max_per_address,
            limit_loopback,
            open: Arc::default(),
        }
    }

    /// A slot for a new connection from `ip`, or `None` when that address already holds
    /// `max_per_address` connections.
    pub fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let ip = ip.to_canonical();
        if self.max_per_address == 0 || (ip.is_loopback() && !self.limit_loopback) {
            return Some(Slot { counted: None });
        }
        let mut open = lock(&self.open);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max_per_address {
            return None;
        }
        *n += 1;
        Some(Slot {
            counted: Some((ip, Arc::clone(&self.open))),
        })
    }

    /// Connections counted against `ip` now.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        lock(&self.open)
            .get(&ip.to_canonical())
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((ip, open)) = self.counted.take() {
            let mut open = lock(&open);
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_not_logged_in_hold_at_most_half_the_slots() {
        let l = ListenerSlots::new(4);
        let (a, evicted) = l.take().expect("1");
        assert!(!evicted);
        let (mut b, _) = l.take().expect("2");
        // A third pending one makes the oldest (a) go.
        let (c, evicted) = l.take().expect("3");
        assert!(evicted);
        tokio::time::timeout(std::time::Duration::from_secs(1), a.evicted())
            .await
            .expect("a is told to close");
        drop(a);
        b.logged_in();
        let (mut d, _) = l.take().expect("4");
        d.logged_in();
        let (_e, evicted) = l.take().expect("5: c and e pending");
        assert!(!evicted);
        assert_eq!(l.take().unwrap_err(), Full::All);
        drop(c);
        let _f = l.take().expect("room again");
    }

    #[test]
    fn an_address_gets_its_limit_and_a_closed_slot_frees_room() {
        let a = Admission::new(2, false);
        let far: IpAddr = "192.0.2.7".parse().expect("ip");
        let other: IpAddr = "192.0.2.8".parse().expect("ip");
        let s1 = a.admit(far).expect("first");
        let _s2 = a.admit(far).expect("second");
        assert!(a.admit(far).is_none(), "a third from one address");
        let _s3 = a.admit(other).expect("another address has its own count");
        drop(s1);
        assert_eq!(a.open_from(far), 1);
        let _s4 = a.admit(far).expect("room again");
        assert!(a.admit(far).is_none());
    }

    #[test]
    fn loopback_is_free_unless_asked_and_mapped_v4_counts_as_v4() {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let free = Admission::new(1, false);
        let _held: Vec<Slot> = (0..5).map(|_| free.admit(lo).expect("loopback")).collect();
        let strict = Admission::new(1, true);
        let _s = strict.admit(lo).expect("first");
        assert!(strict.admit(lo).is_none());
        let v4: IpAddr = "198.51.100.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:198.51.100.1".parse().expect("ip");
        let _a = strict.admit(v4).expect("v4");
        assert!(strict.admit(mapped).is_none(), "the same client over v6");
        let unlimited = Admission::new(0, true);
        let _many: Vec<Slot> = (0..100)
            .map(|_| unlimited.admit(v4).expect("no limit"))
            .collect();
        assert_eq!(unlimited.open_from(v4), 0);
    }
}
