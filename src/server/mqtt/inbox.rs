//! A connection's inbox: the messages the hub's dispatchers hand it and a request from a new
//! connection to take its session over.
//!
//! One queue under a lock, sized to what is in it: an idle connection's inbox is about 100
//! bytes (two tokio channels, one for deliveries and one for takeovers, cost 2.3 KiB per
//! connection before anything was sent). At most [`CHANNEL`] deliveries wait; one more is
//! refused. A refused message from the log marks the inbox lagged ([`InboxTx::deliver`]): the
//! mark wakes the connection like a delivery does and comes out first ([`Next::Lagged`]), so
//! the connection reads what it missed back from the log at once, even when nothing follows the
//! refused message. A refused shared or `$SYS` message is the caller's to count or drop
//! ([`InboxTx::deliver_or_refuse`]). A queue that empties gives its memory back once it had
//! grown past `KEEP` (8) places.
//!
//! Only the connection's own task waits on its inbox ([`InboxRx`]); any number of dispatchers
//! and claiming connections hold an [`InboxTx`]. Once the connection is gone (its `InboxRx`
//! dropped), deliveries and takeovers are refused.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use super::hub::{Delivery, Takeover};
use super::pressure::CHANNEL;

/// Places an empty queue keeps (a subscriber taking the odd message does not reallocate).
const KEEP: usize = 8;

struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Delivery>,
    /// A message from the log was refused (queue full): the connection reads the log back.
    lagged: bool,
    takeover: Option<Takeover>,
    /// The connection's task, when it waits for a delivery, and for a takeover (apart: a
    /// connection that takes no deliveries now is not woken by each one that arrives).
    delivery_waker: Option<Waker>,
    takeover_waker: Option<Waker>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The senders' side: the hub's subscription targets and session registry hold one.
#[derive(Clone)]
pub struct InboxTx(Arc<Shared>);

/// The connection's side.
pub struct InboxRx(Arc<Shared>);

/// What the connection takes from its inbox.
#[derive(Debug)]
pub enum Next {
    Delivery(Delivery),
    /// Messages from the log were refused since the last time: read them back from the log
    /// (from the session's positions to the partitions' ends now).
    Lagged,
}

/// Why a delivery was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// [`CHANNEL`] deliveries wait already; the inbox is marked lagged.
    Full,
    /// The connection is gone.
    Closed,
}

/// A new inbox.
pub fn inbox() -> (InboxTx, InboxRx) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
    });
    (InboxTx(Arc::clone(&shared)), InboxRx(shared))
}

impl InboxTx {
    /// Queues `d`, a message from the log; on success returns the free places left. Refused
    /// because the inbox is full, it marks the inbox lagged and wakes the connection, which
    /// reads the message back from the log.
    pub fn deliver(&self, d: Delivery) -> Result<usize, Refused> {
        self.queue(d, true)
    }

    /// Queues `d` (a shared subscription's pick, a `$SYS` message) without marking the inbox
    /// lagged when it is full: the log cannot give that message back to this connection.
    pub fn deliver_or_refuse(&self, d: Delivery) -> Result<usize, Refused> {
        self.queue(d, false)
    }

    fn queue(&self, d: Delivery, mark_lagged: bool) -> Result<usize, Refused> {
        let mut st = self.0.lock();
        if st.closed {
            return Err(Refused::Closed);
        }
        let queued = if st.queue.len() >= CHANNEL {
            if !mark_lagged || st.lagged {
                return Err(Refused::Full);
            }
            // Under the lock: the connection cannot take the last queued message and go to
            // sleep between the refusal and the mark.
            st.lagged = true;
            Err(Refused::Full)
        } else {
            st.queue.push_back(d);
            Ok(CHANNEL - st.queue.len())
        };
        let waker = st.delivery_waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        queued
    }

    /// Asks the connection to hand its session over through `reply`; gives it back when the
    /// connection is gone (or already asked).
    pub fn take_over(&self, reply: Takeover) -> Result<(), Takeover> {
        let mut st = self.0.lock();
        if st.closed || st.takeover.is_some() {
            return Err(reply);
        }
        st.takeover = Some(reply);
        let waker = st.takeover_waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl InboxRx {
    /// Completes when a takeover is asked for.
    pub fn takeover(&self) -> impl Future<Output = Takeover> + '_ {
        poll_fn(|cx| {
            let mut st = self.0.lock();
            match st.takeover.take() {
                Some(t) => Poll::Ready(t),
                None => {
                    register(&mut st.takeover_waker, cx.waker());
                    Poll::Pending
                }
            }
        })
    }

    /// Completes when a takeover is asked for, leaving it in the inbox (a connection stuck
    /// writing gives up and ends; its end hands the session over).
    pub fn takeover_asked(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx| {
            let mut st = self.0.lock();
            if st.takeover.is_some() {
                Poll::Ready(())
            } else {
                register(&mut st.takeover_waker, cx.waker());
                Poll::Pending
            }
        })
    }

    /// The takeover asked for, if any (the connection is ending).
    pub fn try_takeover(&self) -> Option<Takeover> {
        self.0.lock().takeover.take()
    }

    /// Completes with the next delivery, or the lagged mark.
    pub fn next(&self) -> impl Future<Output = Next> + '_ {
        poll_fn(|cx| {
            let mut st = self.0.lock();
            match take(&mut st) {
                Some(d) => Poll::Ready(d),
                None => {
                    register(&mut st.delivery_waker, cx.waker());
                    Poll::Pending
                }
            }
        })
    }

    /// The next delivery or the lagged mark, if one waits.
    pub fn try_next(&self) -> Option<Next> {
        take(&mut self.0.lock())
    }

    /// Deliveries waiting.
    pub fn waiting(&self) -> usize {
        self.0.lock().queue.len()
    }
}

/// The lagged mark first (what is queued was written before the refused message, so the
/// read-back covers it too), then the queue in order.
fn take(st: &mut State) -> Option<Next> {
    if std::mem::take(&mut st.lagged) {
        return Some(Next::Lagged);
    }
    let d = st.queue.pop_front()?;
    if st.queue.is_empty() && st.queue.capacity() > KEEP {
        st.queue = VecDeque::new();
    }
    Some(Next::Delivery(d))
}

fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

impl Drop for InboxRx {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.closed = true;
        // What waits is for no one now; a takeover's claimant learns through its dropped reply.
        let queue = std::mem::take(&mut st.queue);
        let takeover = st.takeover.take();
        st.delivery_waker = None;
        st.takeover_waker = None;
        drop(st);
        drop((queue, takeover));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::mqtt::codec::MessageProps;
    use crate::server::mqtt::message::LogMessage;
    use std::time::Duration;

    fn msg(offset: u64) -> Delivery {
        Delivery::Unlogged(Arc::new(LogMessage {
            log_topic: Arc::from("mqtt"),
            partition: 0,
            offset,
            timestamp: 0,
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: 0,
            retain: false,
            publisher: None,
            props: MessageProps::default(),
        }))
    }

    fn offset(n: &Next) -> u64 {
        match n {
            Next::Delivery(Delivery::Log(m) | Delivery::Shared(m, _) | Delivery::Unlogged(m)) => {
                m.offset
            }
            Next::Lagged => u64::MAX,
        }
    }

    fn lagged(rx: &InboxRx) -> bool {
        let mut st = rx.0.lock();
        std::mem::take(&mut st.lagged)
    }

    #[tokio::test]
    async fn deliveries_come_out_in_order_and_wake_the_waiting_task() {
        let (tx, rx) = inbox();
        let waiter = tokio::spawn(async move {
            let a = rx.next().await;
            let b = rx.next().await;
            (offset(&a), offset(&b))
        });
        tokio::task::yield_now().await;
        assert_eq!(tx.deliver(msg(1)), Ok(CHANNEL - 1));
        tx.deliver(msg(2)).expect("room");
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(got, (1, 2));
    }

    #[test]
    fn a_full_inbox_refuses_and_marks_itself_lagged() {
        let (tx, rx) = inbox();
        for i in 0..CHANNEL {
            tx.deliver(msg(i as u64)).expect("room");
        }
        assert_eq!(tx.deliver(msg(9999)).err(), Some(Refused::Full));
        assert_eq!(rx.waiting(), CHANNEL);
        assert!(
            matches!(rx.try_next(), Some(Next::Lagged)),
            "the mark comes out before the queue"
        );
        assert!(
            matches!(rx.try_next(), Some(Next::Delivery(_))),
            "the mark is cleared once taken"
        );
        while rx.try_next().is_some() {}
        assert_eq!(
            rx.0.lock().queue.capacity(),
            0,
            "an emptied queue gives its memory back"
        );
        assert!(tx.deliver(msg(1)).is_ok());
    }

    #[test]
    fn a_refused_shared_or_sys_message_does_not_mark_the_inbox_lagged() {
        let (tx, rx) = inbox();
        for i in 0..CHANNEL {
            tx.deliver_or_refuse(msg(i as u64)).expect("room");
        }
        assert_eq!(tx.deliver_or_refuse(msg(9999)).err(), Some(Refused::Full));
        assert!(!lagged(&rx), "the log cannot give it back: no read-back");
    }

    #[tokio::test]
    async fn a_takeover_reaches_the_connection_and_is_refused_once_it_is_gone() {
        let (tx, rx) = inbox();
        let (reply, _answer) = tokio::sync::oneshot::channel();
        assert!(tx.take_over(reply).is_ok());
        let (second, _) = tokio::sync::oneshot::channel();
        assert!(tx.take_over(second).is_err(), "one takeover at a time");
        tokio::time::timeout(Duration::from_secs(5), rx.takeover())
            .await
            .expect("the takeover waits in the inbox");
        tx.deliver(msg(1)).expect("room");
        drop(rx);
        assert_eq!(tx.deliver(msg(2)).err(), Some(Refused::Closed));
        let (late, _) = tokio::sync::oneshot::channel();
        assert!(tx.take_over(late).is_err());
    }
}
