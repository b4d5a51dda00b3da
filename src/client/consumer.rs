//! [`Consumer`]: reads assigned partitions, optionally as a member of a consumer group (join,
//! heartbeat, commit, leave).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Client, ClientError, Fetched, Joined, Result, decode, lost_range, server_error};
use crate::log::Record;
use crate::proto::{Assignor, ErrorCode, Fetch, OffsetSpec, Request, Response};
use crate::units::Narrow;
/// Where a consumer without a committed offset starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    Offset(u64),
}

/// A record as a consumer gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumed {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub record: Record,
}

struct Membership {
    group: String,
    member_id: String,
    generation: u32,
    last_heartbeat: Instant,
}

/// Reads a topic's partitions (all, one, or those a group assigns) from a position.
pub struct Consumer {
    client: Arc<Client>,
    topic: String,
    start: StartFrom,
    fixed_partition: Option<u32>,
    group: Option<Membership>,
    session_timeout: Duration,
    positions: BTreeMap<u32, u64>,
    /// Positions as of the last commit.
    committed: BTreeMap<u32, u64>,
    /// Commit automatically at most this often, during `poll`.
    auto_commit: Option<(Duration, Instant)>,
}

impl Consumer {
    /// Commits the positions automatically, at most every `interval`, from `poll` (a group
    /// consumer only). Without it, call [`Consumer::commit`].
    pub fn auto_commit(mut self, interval: Duration) -> Self {
        self.auto_commit = Some((interval, Instant::now()));
        self
    }

    /// Consumes `topic` (or only `partition`) without a group.
    pub async fn standalone(
        client: Arc<Client>,
        topic: &str,
        partition: Option<u32>,
        start: StartFrom,
    ) -> Result<Consumer> {
        let mut c = Consumer {
            client,
            topic: topic.to_string(),
            start,
            fixed_partition: partition,
            group: None,
            session_timeout: Duration::from_secs(10),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            auto_commit: None,
        };
        let parts: Vec<u32> = match partition {
            Some(p) => vec![p],
            None => {
                (0..(c.client.describe_topic(topic).await?.partitions.len()).sat_u32()).collect()
            }
        };
        for p in parts {
            let at = c.start_offset(p, None).await?;
            c.positions.insert(p, at);
        }
        Ok(c)
    }

    /// Consumes `topic` as a member of `group`; partitions without a committed offset start at
    /// `start`.
    pub async fn in_group(
        client: Arc<Client>,
        topic: &str,
        group: &str,
        start: StartFrom,
    ) -> Result<Consumer> {
        let mut c = Consumer {
            client,
            topic: topic.to_string(),
            start,
            fixed_partition: None,
            group: Some(Membership {
                group: group.to_string(),
                member_id: String::new(),
                generation: 0,
                last_heartbeat: Instant::now(),
            }),
            session_timeout: Duration::from_secs(10),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            auto_commit: None,
        };
        c.rejoin().await?;
        Ok(c)
    }

    async fn start_offset(&self, partition: u32, committed: Option<u64>) -> Result<u64> {
        if let Some(o) = committed {
            return Ok(o);
        }
        let (earliest, latest, _) = self
            .client
            .list_offsets(&self.topic, partition, OffsetSpec::Latest)
            .await?;
        Ok(match self.start {
            StartFrom::Earliest => earliest,
            StartFrom::Latest => latest,
            StartFrom::Offset(o) => o.clamp(earliest, latest),
        })
    }

    async fn rejoin(&mut self) -> Result<()> {
        let Some(m) = &self.group else { return Ok(()) };
        let (group, member_id) = (m.group.clone(), m.member_id.clone());
        let joined = self
            .client
            .join_group(
                &group,
                &member_id,
                &[&self.topic],
                self.session_timeout,
                Assignor::Range,
            )
            .await;
        let Joined {
            member_id,
            generation,
            assignment,
        } = match joined {
            Err(ClientError::Server {
                code: ErrorCode::UnknownMember,
                ..
            }) => {
                self.client
                    .join_group(
                        &group,
                        "",
                        &[&self.topic],
                        self.session_timeout,
                        Assignor::Range,
                    )
                    .await?
            }
            other => other?,
        };
        let committed: BTreeMap<u32, Option<u64>> = self
            .client
            .fetch_offsets(&group, &self.topic)
            .await?
            .into_iter()
            .collect();
        self.positions.clear();
        self.committed.clear();
        for (t, p) in assignment {
            if t != self.topic {
                continue;
            }
            let c = committed.get(&p).copied().flatten();
            let at = self.start_offset(p, c).await?;
            self.positions.insert(p, at);
            if let Some(c) = c {
                self.committed.insert(p, c);
            }
        }
        self.group = Some(Membership {
            group,
            member_id,
            generation,
            last_heartbeat: Instant::now(),
        });
        Ok(())
    }

    /// The partitions being read and the next offset of each.
    pub fn positions(&self) -> &BTreeMap<u32, u64> {
        &self.positions
    }

    /// Fetches from every assigned partition; waits up to `max_wait` when nothing is there.
    /// Heartbeats (and rejoins after a rebalance) as needed.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<Consumed>> {
        self.keep_alive().await?;
        if let Some((interval, last)) = self.auto_commit {
            if last.elapsed() >= interval {
                // What earlier polls returned is taken as processed.
                self.commit().await?;
                self.auto_commit = Some((interval, Instant::now()));
            }
        }
        let mut out = Vec::new();
        for wait in [Duration::ZERO, max_wait] {
            let mut pending = Vec::new();
            for (&p, &at) in &self.positions {
                let rx = self
                    .client
                    .submit(&Request::Fetch(Fetch {
                        topic: &self.topic,
                        partition: p,
                        offset: at,
                        max_bytes: 1 << 20,
                        min_bytes: 1,
                        max_wait_ms: wait.as_millis().sat_u32(),
                    }))
                    .await?;
                pending.push((p, at, rx));
            }
            for (p, at, rx) in pending {
                let bytes = rx
                    .await
                    .map_err(|_| ClientError::Closed("the server closed the connection".into()))?;
                let r = decode(&bytes)?.response;
                let fetched = match (Fetched::from_response(&r), &r) {
                    (Some(f), _) => f,
                    (
                        None,
                        Response::Error {
                            code: ErrorCode::OffsetOutOfRange,
                            ..
                        },
                    ) => {
                        // The data was deleted by retention: continue at the earliest offset.
                        let (earliest, latest, _) = self
                            .client
                            .list_offsets(&self.topic, p, OffsetSpec::Earliest)
                            .await?;
                        self.positions.insert(p, at.clamp(earliest, latest));
                        continue;
                    }
                    (
                        None,
                        Response::Error {
                            code: ErrorCode::DataLost,
                            message,
                        },
                    ) => {
                        // Offsets lost to corruption on the server: say so, and read on after
                        // them (as Kafka clients do).
                        let Some((first, next)) = lost_range(message) else {
                            return Err(server_error(&r));
                        };
                        tracing::warn!(
                            topic = %self.topic,
                            partition = p,
                            "offsets {first}..{next} were lost to corruption on the server; reading on from {next}"
                        );
                        self.positions.insert(p, next.max(at + 1));
                        continue;
                    }
                    (None, other) => return Err(server_error(other)),
                };
                for (offset, record) in fetched.records(at)? {
                    out.push(Consumed {
                        topic: self.topic.clone(),
                        partition: p,
                        offset,
                        record,
                    });
                }
                if fetched.next_offset > at {
                    self.positions.insert(p, fetched.next_offset);
                }
            }
            if !out.is_empty() || self.positions.is_empty() {
                break;
            }
        }
        if self.positions.is_empty() && !max_wait.is_zero() {
            tokio::time::sleep(max_wait.min(Duration::from_millis(200))).await;
        }
        Ok(out)
    }

    /// Sets the next offset to read in a partition (e.g. after a partial read).
    pub fn seek(&mut self, partition: u32, offset: u64) {
        if self.positions.contains_key(&partition) || self.fixed_partition.is_none() {
            self.positions.insert(partition, offset);
        }
    }

    async fn keep_alive(&mut self) -> Result<()> {
        let Some(m) = &self.group else { return Ok(()) };
        if m.last_heartbeat.elapsed() < self.session_timeout / 3 {
            return Ok(());
        }
        let rejoin = match self
            .client
            .heartbeat(&m.group, &m.member_id, m.generation)
            .await
        {
            Ok(r) => r,
            Err(ClientError::Server {
                code: ErrorCode::UnknownMember,
                ..
            }) => true,
            Err(e) => return Err(e),
        };
        if let Some(m) = &mut self.group {
            m.last_heartbeat = Instant::now();
        }
        if rejoin {
            // Keep what was read: commit before the assignment changes.
            self.commit().await.ok();
            self.rejoin().await?;
        }
        Ok(())
    }

    /// Commits the current positions (the next offsets to read) for the group.
    pub async fn commit(&mut self) -> Result<()> {
        let Some(m) = &self.group else { return Ok(()) };
        let changed: Vec<(&str, u32, u64)> = self
            .positions
            .iter()
            .filter(|(p, o)| self.committed.get(p) != Some(o))
            .map(|(p, o)| (self.topic.as_str(), *p, *o))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        self.client
            .commit_offsets(&m.group, Some((&m.member_id, m.generation)), &changed)
            .await?;
        self.committed = self.positions.clone();
        Ok(())
    }

    /// Leaves the group (its partitions move to the other members at once).
    pub async fn close(self) -> Result<()> {
        if let Some(m) = &self.group {
            self.client.leave_group(&m.group, &m.member_id).await?;
        }
        Ok(())
    }
}
