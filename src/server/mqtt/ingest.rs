//! The publishes one connection reads in one turn, gathered into one log batch per partition.
//!
//! A client that streams publishes sends dozens in one TCP segment. Appended one by one, each
//! takes the partition's lock, gets its own batch frame and checksum and, for QoS 1, its own
//! wait for the fsync. Gathered, consecutive publishes to the same partition become one batch:
//! one lock, one frame, one completion for all their acknowledgements, which still go out in
//! the order the publishes came. Order in the log is the order read; a publish with side
//! effects of its own (retained, a QoS 2 resend) is appended alone, after what was gathered.

use std::sync::Arc;

use super::codec::Publish;
use super::message;
use super::session::Ack;
use crate::log::{Durability, Topic};

/// The most record bytes gathered into one batch before it is appended.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Publishes gathered for one partition (of a log topic `T`), in the order they were read.
pub struct Gathered<T: ?Sized = Topic> {
    place: Option<(Arc<T>, u32)>,
    publishes: Vec<(Publish, Ack)>,
    bytes: usize,
}

impl<T: ?Sized> Default for Gathered<T> {
    fn default() -> Self {
        Gathered {
            place: None,
            publishes: Vec::new(),
            bytes: 0,
        }
    }
}

/// The publishes of one batch, taken out of [`Gathered`].
pub struct Batch<T: ?Sized = Topic> {
    pub topic: Arc<T>,
    pub partition: u32,
    pub publishes: Vec<(Publish, Ack)>,
    /// Record bytes, about (to size the batch's buffer).
    pub bytes: usize,
}

impl<T: ?Sized> Gathered<T> {
    /// Whether `publish`, for `partition` of `topic`, may join what is gathered: the same
    /// partition, and the batch stays within [`BATCH_BYTES`] (a first publish always joins).
    pub fn fits(&self, topic: &Arc<T>, partition: u32, publish: &Publish) -> bool {
        match &self.place {
            None => true,
            Some((t, p)) => {
                Arc::ptr_eq(t, topic)
                    && *p == partition
                    && self.bytes + message::record_bound(publish) <= BATCH_BYTES
            }
        }
    }

    /// Adds `publish` (check [`Gathered::fits`] first).
    pub fn push(&mut self, topic: Arc<T>, partition: u32, publish: Publish, ack: Ack) {
        self.bytes += message::record_bound(&publish);
        self.place.get_or_insert((topic, partition));
        self.publishes.push((publish, ack));
    }

    /// Everything gathered, leaving nothing.
    pub fn take(&mut self) -> Option<Batch<T>> {
        let (topic, partition) = self.place.take()?;
        let bytes = std::mem::take(&mut self.bytes);
        Some(Batch {
            topic,
            partition,
            publishes: std::mem::take(&mut self.publishes),
            bytes,
        })
    }
}

/// What a batch waits for: the stronger of what its publishes ask (QoS 0: written, so that
/// subscribers see it at once; QoS 1/2: `acked`, the configured `mqtt.durability`).
pub fn durability(publishes: &[(Publish, Ack)], acked: Durability) -> Durability {
    publishes
        .iter()
        .map(|(_, ack)| match ack {
            Ack::None => Durability::Written,
            _ => acked,
        })
        .max()
        .unwrap_or(Durability::Written)
}

/// The acknowledgements one append completes, in order.
#[derive(Debug)]
pub enum Acks {
    One(Ack),
    Many(Vec<Ack>),
}

impl IntoIterator for Acks {
    type Item = Ack;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Ack>, std::vec::IntoIter<Ack>>;
    fn into_iter(self) -> Self::IntoIter {
        match self {
            Acks::One(a) => Some(a).into_iter().chain(Vec::new()),
            Acks::Many(v) => None.into_iter().chain(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn publish(qos: u8, len: usize) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: "a/b".into(),
            pkid: 1,
            payload: Bytes::from(vec![0u8; len]),
            props: Default::default(),
        }
    }

    #[test]
    fn durability_is_the_strongest_asked() {
        let q0 = (publish(0, 1), Ack::None);
        let q1 = (publish(1, 1), Ack::PubAck(1));
        assert_eq!(
            durability(std::slice::from_ref(&q0), Durability::Durable),
            Durability::Written
        );
        assert_eq!(
            durability(&[q0.clone(), q1.clone()], Durability::Durable),
            Durability::Durable
        );
        // QoS 0 is written at once even where QoS 1 is configured to wait for nothing.
        assert_eq!(durability(&[q1, q0], Durability::None), Durability::Written);
    }

    #[test]
    fn acks_keep_their_order() {
        let many = Acks::Many(vec![Ack::PubAck(1), Ack::PubRec(2), Ack::PubAck(3)]);
        let got: Vec<Ack> = many.into_iter().collect();
        assert_eq!(got, vec![Ack::PubAck(1), Ack::PubRec(2), Ack::PubAck(3)]);
        let one: Vec<Ack> = Acks::One(Ack::PubAck(9)).into_iter().collect();
        assert_eq!(one, vec![Ack::PubAck(9)]);
    }

    #[test]
    fn a_batch_stays_within_its_bound() {
        let mut g = Gathered::<str>::default();
        let topic: Arc<str> = Arc::from("t");
        let other: Arc<str> = Arc::from("t");
        let big = publish(0, BATCH_BYTES / 2);
        assert!(g.fits(&topic, 0, &big));
        g.push(Arc::clone(&topic), 0, big.clone(), Ack::None);
        assert!(g.fits(&topic, 0, &publish(0, 10)));
        assert!(!g.fits(&topic, 1, &publish(0, 10)), "another partition");
        assert!(!g.fits(&other, 0, &publish(0, 10)), "another topic");
        g.push(Arc::clone(&topic), 0, publish(0, 10), Ack::None);
        assert!(!g.fits(&topic, 0, &big), "past BATCH_BYTES");
        let b = g.take().expect("gathered");
        assert_eq!(b.publishes.len(), 2);
        assert_eq!(b.partition, 0);
        assert!(g.take().is_none());
        // Alone, even a publish larger than the bound joins.
        assert!(g.fits(&topic, 0, &publish(0, 2 * BATCH_BYTES)));
    }
}
