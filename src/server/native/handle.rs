//! One function per operation of the native protocol: decode what the request carries, call
//! the broker, encode the answer. Every answer is a framed [`ResponseFrame`].

use std::sync::Arc;
use std::time::Duration;

use heapless::Vec as HVec;

use crate::auth::{Denied, Op, Principal};
use crate::broker::{Broker, BrokerError};
use crate::log::record::{RecordLayout, frames_as_plain};
use crate::log::{Durability, EncodedBatch, LogError, OnFull, PartitionChoice};
use crate::proto::{
    self, Acks, Assigned, CommitEntry, ErrorCode, Fetch, MemberAssignment, MemberInfo, OffsetInfo,
    PartitionInfo, Produce, Request, Response, TopicInfo,
};
use crate::units::Narrow;

/// Encodes an answer to `correlation_id` (the same bytes as a [`ResponseFrame`]).
pub fn answer(correlation_id: u32, response: &Response<'_>) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Out<'r, 'a> {
        correlation_id: u32,
        response: &'r Response<'a>,
    }
    proto::encode(&Out {
        correlation_id,
        response,
    })
}

/// Encodes an error answer.
pub fn error(correlation_id: u32, code: ErrorCode, message: &str) -> Vec<u8> {
    answer(correlation_id, &Response::Error { code, message })
}

fn broker_error(correlation_id: u32, e: &BrokerError) -> Vec<u8> {
    error(correlation_id, e.code(), &e.to_string())
}

/// Checks `request` against the ACL; `Err` names what was refused ("produce to \"t\"").
/// Listing topics needs no grant (the list holds only what the client may describe); reading a
/// topic or its offsets needs `consume`; joining a group, committing to it or reading its
/// offsets needs the group and `consume` on its topics; heartbeats and leaving need the group;
/// creating and deleting topics, listing and describing groups need `admin`.
pub fn authorize(who: &Principal, request: &Request<'_>) -> Result<(), Denied> {
    let check = |op: Op<'_>| {
        if who.allows(op) {
            Ok(())
        } else {
            Err(op.denied())
        }
    };
    match request {
        Request::Produce(p) | Request::ProduceBatch { produce: p, .. } => {
            check(Op::Produce(p.topic))
        }
        Request::Fetch(f) => check(Op::Consume(f.topic)),
        Request::ListOffsets { topic, .. } => check(Op::Consume(topic)),
        Request::FetchOffsets { group, topic, .. } => {
            check(Op::Group(group))?;
            check(Op::Consume(topic))
        }
        Request::DescribeTopic { name } => check(Op::Consume(name)),
        Request::JoinGroup { group, topics, .. } => {
            check(Op::Group(group))?;
            topics.iter().try_for_each(|t| check(Op::Consume(t)))
        }
        Request::CommitOffsets { group, offsets, .. } => {
            check(Op::Group(group))?;
            offsets.iter().try_for_each(|c| check(Op::Consume(c.topic)))
        }
        Request::Heartbeat { group, .. } | Request::LeaveGroup { group, .. } => {
            check(Op::Group(group))
        }
        Request::CreateTopic { .. }
        | Request::CreateTopicWith { .. }
        | Request::DeleteTopic { .. }
        | Request::ListGroups
        | Request::DescribeGroup { .. } => check(Op::Admin),
        Request::Handshake { .. } | Request::Authenticate { .. } | Request::ListTopics => Ok(()),
    }
}

/// Runs `f` on the blocking pool: for the requests that write files or read the log.
async fn off_workers<T: Send + 'static>(
    broker: &Arc<Broker>,
    f: impl FnOnce(&Broker) -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, BrokerError> {
    let b = Arc::clone(broker);
    tokio::task::spawn_blocking(move || f(&b))
        .await
        .unwrap_or_else(|e| Err(BrokerError::Invalid(format!("request task: {e}"))))
}

/// Handles one request (not the handshake) and returns the framed answer.
pub async fn handle(
    broker: &Arc<Broker>,
    who: &Principal,
    peer: Peer,
    id: u32,
    request: Request<'_>,
) -> Vec<u8> {
    let client_id: &str = &who.client_id;
    let result = match request {
        Request::Handshake { .. } => Err(BrokerError::Invalid("handshake sent twice".into())),
        Request::Authenticate { .. } => Err(BrokerError::Invalid(
            "Authenticate must come right after the handshake".into(),
        )),
        Request::Produce(p) => match produce_start(broker, id, 1, &p) {
            Ok(done) => return done.await,
            Err(answer) => return answer,
        },
        Request::ProduceBatch { layout, produce } => {
            match produce_start(broker, id, layout, &produce) {
                Ok(done) => return done.await,
                Err(answer) => return answer,
            }
        }
        Request::Fetch(f) => return fetch(broker, id, peer, f).await,
        Request::ListOffsets {
            topic,
            partition,
            spec,
        } => {
            let offsets = if let proto::OffsetSpec::Timestamp(_) = spec {
                // A lookup by time reads the log.
                let topic = topic.to_string();
                off_workers(broker, move |b| b.list_offsets(&topic, partition, spec)).await
            } else {
                broker.list_offsets(topic, partition, spec)
            };
            offsets.map(|(earliest, latest, offset)| {
                answer(
                    id,
                    &Response::Offset {
                        earliest,
                        latest,
                        offset,
                    },
                )
            })
        }
        Request::CreateTopic { name, settings } => {
            let cfg = broker.topic_config(&settings);
            let name = name.to_string();
            off_workers(broker, move |b| b.create_topic_with(&name, cfg))
                .await
                .map(|_| answer(id, &Response::Done))
        }
        Request::CreateTopicWith {
            name,
            settings,
            options,
        } => {
            let mut cfg = broker.topic_config(&settings);
            if let Some(c) = options.cleanup {
                cfg.cleanup = match c {
                    proto::CleanupPolicy::Delete => crate::log::Cleanup::Delete,
                    proto::CleanupPolicy::Compact => crate::log::Cleanup::Compact,
                    proto::CleanupPolicy::CompactDelete => crate::log::Cleanup::CompactDelete,
                };
            }
            if let Some(ms) = options.delete_retention_ms {
                cfg.delete_retention = crate::units::HumanDuration::millis(ms);
            }
            let name = name.to_string();
            off_workers(broker, move |b| b.create_topic_with(&name, cfg))
                .await
                .map(|_| answer(id, &Response::Done))
        }
        Request::DeleteTopic { name } => {
            let name = name.to_string();
            off_workers(broker, move |b| b.delete_topic(&name))
                .await
                .map(|()| answer(id, &Response::Done))
        }
        Request::DescribeTopic { name } => broker.topic(name).map(|t| describe_topic(id, &t)),
        Request::ListTopics => {
            let topics = broker.topics();
            let mut names: HVec<&str, { proto::MAX_TOPICS }> = HVec::new();
            let mut truncated = false;
            for t in topics.iter().filter(|t| who.allows(Op::Describe(t.name()))) {
                if names.push(t.name()).is_err() {
                    truncated = true;
                    break;
                }
            }
            Ok(answer(id, &Response::Topics { names, truncated }))
        }
        Request::JoinGroup {
            group,
            member_id,
            topics,
            session_timeout_ms,
            assignor,
        } => broker
            .join_group(
                group,
                member_id,
                client_id,
                topics.iter().map(|t| t.to_string()).collect(),
                Duration::from_millis(u64::from(session_timeout_ms)),
                assignor,
            )
            .map(|joined| {
                let mut a: HVec<Assigned<'_>, { proto::MAX_PARTITIONS }> = HVec::new();
                for (topic, partition) in &joined.assignment {
                    let _ = a.push(Assigned {
                        topic,
                        partition: *partition,
                    });
                }
                answer(
                    id,
                    &Response::Joined {
                        member_id: &joined.member_id,
                        generation: joined.generation,
                        assignment: a,
                    },
                )
            }),
        Request::Heartbeat {
            group,
            member_id,
            generation,
        } => broker
            .heartbeat(group, member_id, generation)
            .map(|rejoin| answer(id, &Response::Heartbeat { rejoin })),
        Request::LeaveGroup { group, member_id } => broker
            .leave_group(group, member_id)
            .map(|()| answer(id, &Response::Done)),
        Request::CommitOffsets {
            group,
            member,
            offsets,
        } => {
            let list: Vec<(String, u32, u64)> = offsets
                .iter()
                .map(
                    |CommitEntry {
                         topic,
                         partition,
                         offset,
                     }| { (topic.to_string(), *partition, *offset) },
                )
                .collect();
            let broker = Arc::clone(broker);
            let group = group.to_string();
            let member = member.map(|(m, g)| (m.to_string(), g));
            // The commit flushes sled: off the async threads.
            tokio::task::spawn_blocking(move || {
                broker.commit_offsets(
                    &group,
                    member.as_ref().map(|(m, g)| (m.as_str(), *g)),
                    &list,
                )
            })
            .await
            .unwrap_or_else(|e| Err(BrokerError::Invalid(format!("commit task: {e}"))))
            .map(|()| answer(id, &Response::Done))
        }
        Request::FetchOffsets { group, topic } => {
            broker.fetch_offsets(group, topic).map(|offsets| {
                let mut o: HVec<OffsetInfo<'_>, { proto::MAX_PARTITIONS }> = HVec::new();
                for c in &offsets {
                    let _ = o.push(OffsetInfo {
                        topic: &c.topic,
                        partition: c.partition,
                        committed: c.committed,
                        end_offset: c.end_offset,
                    });
                }
                answer(id, &Response::Offsets { offsets: o })
            })
        }
        Request::ListGroups => broker.list_groups().map(|groups| {
            let mut names: HVec<&str, { proto::MAX_TOPICS }> = HVec::new();
            let mut truncated = false;
            for g in &groups {
                if names.push(g).is_err() {
                    truncated = true;
                    break;
                }
            }
            answer(id, &Response::Groups { names, truncated })
        }),
        Request::DescribeGroup { group } => broker.describe_group(group).map(|snap| {
            let mut members: HVec<MemberInfo<'_>, { proto::MAX_MEMBERS }> = HVec::new();
            let mut assignments: HVec<MemberAssignment<'_>, { proto::MAX_PARTITIONS }> =
                HVec::new();
            for (i, m) in snap.members.iter().enumerate() {
                let info = MemberInfo {
                    member_id: &m.member_id,
                    client_id: &m.client_id,
                };
                if members.push(info).is_err() {
                    break;
                }
                for (topic, partition) in &m.assignment {
                    let _ = assignments.push(MemberAssignment {
                        member: i.sat_u16(),
                        assigned: Assigned {
                            topic,
                            partition: *partition,
                        },
                    });
                }
            }
            let mut offsets: HVec<OffsetInfo<'_>, { proto::MAX_PARTITIONS }> = HVec::new();
            for c in &snap.offsets {
                let _ = offsets.push(OffsetInfo {
                    topic: &c.topic,
                    partition: c.partition,
                    committed: c.committed,
                    end_offset: c.end_offset,
                });
            }
            answer(
                id,
                &Response::Group {
                    generation: snap.generation,
                    members,
                    assignments,
                    offsets,
                },
            )
        }),
    };
    result.unwrap_or_else(|e| broker_error(id, &e))
}

/// Starts a produce: the batch is checked and put in the log now, in the order the connection
/// sent it; the returned future waits for the durability asked for and encodes the answer.
/// `Err` is the (framed) error answer.
pub fn produce_start(
    broker: &Broker,
    id: u32,
    layout: u8,
    p: &Produce<'_>,
) -> Result<impl std::future::Future<Output = Vec<u8>> + Send + 'static, Vec<u8>> {
    let Some(layout) = RecordLayout::from_version(layout) else {
        let reason = format!("record layout {layout} is unknown to this server");
        return Err(error(id, ErrorCode::InvalidBatch, &reason));
    };
    let batch = EncodedBatch::parse(p.records, p.record_count, p.first_timestamp, layout)
        .map_err(|e| broker_error(id, &BrokerError::Log(LogError::InvalidBatch(e))))?;
    let choice = match (p.partition, p.partition_key) {
        (Some(n), _) => PartitionChoice::Id(n),
        (None, Some(k)) => PartitionChoice::Key(k),
        (None, None) => PartitionChoice::Any,
    };
    let durability = match p.acks {
        Acks::None => Durability::None,
        Acks::Written => Durability::Written,
        Acks::Durable => Durability::Durable,
    };
    let (partition, ticket) = broker
        .produce_start(p.topic, choice, &batch, durability)
        .map_err(|e| broker_error(id, &e))?;
    Ok(async move {
        match ticket.finish().await {
            Ok(a) => answer(
                id,
                &Response::Produced {
                    partition,
                    base_offset: a.base_offset,
                    next_offset: a.next_offset,
                },
            ),
            Err(e) => broker_error(id, &BrokerError::Log(e)),
        }
    })
}

/// What a request's answer depends on of its connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The protocol version the client said in its handshake.
    pub client_version: u16,
    /// The largest frame this listener accepts, and so sends.
    pub max_frame: usize,
}

/// A fetch answer; a protocol 1 client gets batches with nulls in the plain layout.
async fn fetch(broker: &Broker, id: u32, peer: Peer, f: Fetch<'_>) -> Vec<u8> {
    let max_wait = Duration::from_millis(u64::from(f.max_wait_ms.min(60_000)));
    match broker
        .fetch(
            f.topic,
            f.partition,
            f.offset,
            // An answer is never larger than the frames this server accepts.
            (f.max_bytes as usize).clamp(1, peer.max_frame),
            f.min_bytes as usize,
            max_wait,
        )
        .await
    {
        Ok(r) => {
            let plain = match peer.client_version {
                1 => match frames_as_plain(&r.frames) {
                    Ok(plain) => plain,
                    Err(e) => {
                        return broker_error(id, &BrokerError::Log(LogError::InvalidBatch(e)));
                    }
                },
                _ => None,
            };
            answer(
                id,
                &Response::Fetched {
                    high_watermark: r.high_watermark,
                    log_start: r.log_start,
                    next_offset: r.next_offset,
                    frames: plain.as_deref().unwrap_or(&r.frames),
                },
            )
        }
        Err(e) => broker_error(id, &e),
    }
}

fn describe_topic(id: u32, t: &crate::log::Topic) -> Vec<u8> {
    let cfg = t.config();
    let mut partitions: HVec<PartitionInfo, { proto::MAX_PARTITIONS }> = HVec::new();
    for p in t.partitions() {
        let s = p.status();
        let _ = partitions.push(PartitionInfo {
            partition: p.id(),
            log_start: s.log_start,
            end_offset: s.next_offset,
            durable_offset: s.durable_offset,
            segments: s.segments.sat_u32(),
            bytes: s.bytes,
        });
    }
    answer(
        id,
        &Response::Topic(TopicInfo {
            name: t.name(),
            retention_ms: cfg.retention.as_millis(),
            retention_bytes: cfg.retention_size.bytes(),
            segment_bytes: cfg.segment_size.bytes(),
            reject_when_full: cfg.on_full == OnFull::Reject,
            partitions,
        }),
    )
}
