//! [`Producer`]: batches records per partition with a size and a linger bound and keeps several
//! batches in flight on one [`Client`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Client, ClientError, Result, decode, produced, server_error};
use crate::log::{BatchBuilder, Record};
use crate::proto::{Acks, Response};
use crate::units::Narrow;

/// Batches records per partition and keeps up to `max_in_flight` batches in flight.
pub struct Producer {
    client: Arc<Client>,
    topic: String,
    acks: Acks,
    partitions: u32,
    batch_bytes: usize,
    linger: Duration,
    max_in_flight: usize,
    open: BTreeMap<Option<u32>, (BatchBuilder, Instant)>,
    in_flight: VecDeque<oneshot::Receiver<Vec<u8>>>,
    /// Records acknowledged so far.
    pub acked: u64,
}

impl Producer {
    /// A producer for `topic` (its partition count is looked up now, to place keys).
    pub async fn new(client: Arc<Client>, topic: &str, acks: Acks) -> Result<Producer> {
        let partitions = (client.describe_topic(topic).await?.partitions.len()).sat_u32();
        Ok(Producer {
            client,
            topic: topic.to_string(),
            acks,
            partitions,
            batch_bytes: 64 * 1024,
            linger: Duration::from_millis(5),
            max_in_flight: 16,
            open: BTreeMap::new(),
            in_flight: VecDeque::new(),
            acked: 0,
        })
    }

    /// Bytes of records per batch before it is sent (default 64 KiB).
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// How long a partly filled batch may wait for more records (default 5 ms).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Adds a record: to `partition` when given, else by its key (Kafka's partitioner), else to
    /// the round-robin batch.
    pub async fn send(&mut self, partition: Option<u32>, record: &Record) -> Result<()> {
        let target = partition.or_else(|| {
            record
                .key
                .as_deref()
                .map(|k| crate::log::partitioner::partition_for_key(k, self.partitions))
        });
        let entry = self
            .open
            .entry(target)
            .or_insert_with(|| (BatchBuilder::new(), Instant::now()));
        if entry.0.is_empty() {
            entry.1 = Instant::now();
        }
        entry.0.push_record(record);
        let full = entry.0.records_len() >= self.batch_bytes;
        let stale = entry.1.elapsed() >= self.linger;
        if full || stale {
            self.dispatch(target).await?;
        }
        self.collect_done().await
    }

    async fn dispatch(&mut self, target: Option<u32>) -> Result<()> {
        let Some((batch, _)) = self.open.remove(&target) else {
            return Ok(());
        };
        if batch.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= self.max_in_flight {
            self.wait_oldest().await?;
        }
        let rx = self
            .client
            .submit_produce(&self.topic, target, None, self.acks, &batch)
            .await?;
        self.in_flight.push_back(rx);
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<()> {
        if let Some(rx) = self.in_flight.pop_front() {
            let (_, base, next) = produced(rx).await?;
            self.acked += next - base;
        }
        Ok(())
    }

    /// Collects answers that have already arrived.
    async fn collect_done(&mut self) -> Result<()> {
        while let Some(rx) = self.in_flight.front_mut() {
            match rx.try_recv() {
                Ok(bytes) => {
                    self.in_flight.pop_front();
                    match decode(&bytes)?.response {
                        Response::Produced {
                            base_offset,
                            next_offset,
                            ..
                        } => self.acked += next_offset - base_offset,
                        other => return Err(server_error(&other)),
                    }
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(ClientError::Closed(
                        "the server closed the connection".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sends the open batches whose linger has passed, without waiting for acknowledgements
    /// (call it when no record arrived for a while).
    pub async fn send_lingering(&mut self) -> Result<()> {
        let due: Vec<Option<u32>> = self
            .open
            .iter()
            .filter(|(_, (b, since))| !b.is_empty() && since.elapsed() >= self.linger)
            .map(|(t, _)| *t)
            .collect();
        for t in due {
            self.dispatch(t).await?;
        }
        self.collect_done().await
    }

    /// How long a partly filled batch may wait.
    pub fn linger_time(&self) -> Duration {
        self.linger
    }

    /// Sends every open batch and waits for every acknowledgement.
    pub async fn flush(&mut self) -> Result<()> {
        let targets: Vec<Option<u32>> = self.open.keys().copied().collect();
        for t in targets {
            self.dispatch(t).await?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(())
    }
}
