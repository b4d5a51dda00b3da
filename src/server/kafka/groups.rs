//! The group APIs over [`crate::broker::kafka_groups`]: JoinGroup and SyncGroup wait for the
//! rebalance as tasks of their own; Heartbeat, LeaveGroup, the offset APIs and the listings
//! answer at once. Committed offsets go through [`Broker::commit_offsets`], into the same
//! store as native groups' (flushed before the answer), so `brook groups describe` shows them;
//! a commit's metadata string is not kept (OffsetFetch answers it empty).
//!
//! [`Broker::commit_offsets`]: crate::broker::Broker::commit_offsets

use super::KafkaError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;

use super::admin::{code_of, s};
use super::codec::{self, err};
use super::{Answer, Ctx};
use crate::auth::{Op, Principal};
use crate::broker::kafka_groups::{JoinRequest, KafkaGroupError, State};

/// The answer to a group request the ACL refuses (JoinGroup, SyncGroup, Heartbeat,
/// LeaveGroup): GROUP_AUTHORIZATION_FAILED, nothing else.
pub fn group_denied(key: ApiKey, version: i16, id: i32) -> Result<Vec<u8>, KafkaError> {
    let c = err::GROUP_AUTHORIZATION_FAILED;
    match key {
        ApiKey::JoinGroup => codec::response(
            key,
            version,
            id,
            &JoinGroupResponse::default()
                .with_error_code(c)
                .with_generation_id(-1)
                .with_protocol_name(Some(s(""))),
        ),
        ApiKey::SyncGroup => codec::response(
            key,
            version,
            id,
            &SyncGroupResponse::default().with_error_code(c),
        ),
        ApiKey::Heartbeat => codec::response(
            key,
            version,
            id,
            &HeartbeatResponse::default().with_error_code(c),
        ),
        ApiKey::LeaveGroup => codec::response(
            key,
            version,
            id,
            &LeaveGroupResponse::default().with_error_code(c),
        ),
        other => Err(KafkaError::Protocol(format!(
            "no group denial for {other:?}"
        ))),
    }
}

fn code(e: &KafkaGroupError) -> i16 {
    match e {
        KafkaGroupError::UnknownMember => err::UNKNOWN_MEMBER_ID,
        KafkaGroupError::IllegalGeneration { .. } => err::ILLEGAL_GENERATION,
        KafkaGroupError::RebalanceInProgress => err::REBALANCE_IN_PROGRESS,
        KafkaGroupError::InconsistentProtocol | KafkaGroupError::OtherProtocol => {
            err::INCONSISTENT_GROUP_PROTOCOL
        }
        KafkaGroupError::InvalidGroupId => err::INVALID_GROUP_ID,
        KafkaGroupError::FencedInstanceId => err::FENCED_INSTANCE_ID,
        KafkaGroupError::InvalidSessionTimeout(_) => err::INVALID_SESSION_TIMEOUT,
    }
}

fn millis(ms: i32) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

pub fn join(
    ctx: Arc<Ctx>,
    r: JoinGroupRequest,
    version: i16,
    id: i32,
    client_id: String,
    peer: SocketAddr,
) -> Answer {
    Box::pin(async move {
        let group = r.group_id.0.to_string();
        let session_timeout = millis(r.session_timeout_ms);
        let rebalance_timeout = if version == 0 {
            session_timeout
        } else {
            millis(r.rebalance_timeout_ms)
        };
        let req = JoinRequest {
            member_id: r.member_id.to_string(),
            instance_id: r.group_instance_id.as_ref().map(|i| i.to_string()),
            client_id,
            client_host: format!("/{}", peer.ip()),
            session_timeout,
            rebalance_timeout,
            protocol_type: r.protocol_type.to_string(),
            protocols: r
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.to_vec()))
                .collect(),
        };
        let outcome = match ctx.broker.kafka_join(&group, req) {
            Ok(rx) => {
                // The coordinator answers within the rebalance timeout; the margin covers its tick.
                let limit = rebalance_timeout.max(session_timeout) + Duration::from_secs(5);
                match tokio::time::timeout(limit, rx).await {
                    Ok(Ok(r)) => r,
                    _ => Err(KafkaGroupError::RebalanceInProgress),
                }
            }
            Err(e) => Err(e),
        };
        let resp = match outcome {
            Ok(o) => JoinGroupResponse::default()
                .with_generation_id(o.generation)
                .with_protocol_type(Some(s(o.protocol_type)))
                .with_protocol_name(Some(s(o.protocol)))
                .with_leader(s(o.leader))
                .with_member_id(s(o.member_id))
                .with_skip_assignment(o.skip_assignment && version >= 9)
                .with_members(
                    o.members
                        .into_iter()
                        .map(|(m, inst, md)| {
                            JoinGroupResponseMember::default()
                                .with_member_id(s(m))
                                .with_group_instance_id(inst.map(s))
                                .with_metadata(md.into())
                        })
                        .collect(),
                ),
            Err(e) => {
                if e == KafkaGroupError::OtherProtocol {
                    tracing::warn!(group = %group, "Kafka client refused: {e}");
                }
                JoinGroupResponse::default()
                    .with_error_code(code(&e))
                    .with_generation_id(-1)
                    .with_member_id(r.member_id.clone())
            }
        };
        codec::response(ApiKey::JoinGroup, version, id, &resp).map(Some)
    })
}

pub fn sync(ctx: Arc<Ctx>, r: SyncGroupRequest, version: i16, id: i32) -> Answer {
    Box::pin(async move {
        let group = r.group_id.0.to_string();
        let assignments = r
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.to_vec()))
            .collect();
        let started = ctx.broker.kafka_groups().sync(
            &group,
            r.member_id.as_str(),
            r.generation_id,
            assignments,
            Instant::now(),
        );
        let outcome = match started {
            // The leader's sync arrives within a session timeout or the member is removed.
            Ok(rx) => match tokio::time::timeout(Duration::from_secs(300), rx).await {
                Ok(Ok(r)) => r,
                _ => Err(KafkaGroupError::RebalanceInProgress),
            },
            Err(e) => Err(e),
        };
        let (ptype, proto) = ctx
            .broker
            .kafka_groups()
            .describe(&group)
            .map(|g| (g.protocol_type, g.protocol))
            .unwrap_or_default();
        let resp = match outcome {
            Ok(a) => SyncGroupResponse::default()
                .with_protocol_type(Some(s(ptype)))
                .with_protocol_name(Some(s(proto)))
                .with_assignment(a.into()),
            Err(e) => SyncGroupResponse::default().with_error_code(code(&e)),
        };
        codec::response(ApiKey::SyncGroup, version, id, &resp).map(Some)
    })
}

pub fn heartbeat(
    ctx: &Ctx,
    r: HeartbeatRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    let c = match ctx.broker.kafka_groups().heartbeat(
        r.group_id.0.as_str(),
        r.member_id.as_str(),
        r.generation_id,
        Instant::now(),
    ) {
        Ok(()) => err::NONE,
        Err(e) => code(&e),
    };
    let resp = HeartbeatResponse::default().with_error_code(c);
    codec::response(ApiKey::Heartbeat, version, id, &resp)
}

pub fn leave(
    ctx: &Ctx,
    r: LeaveGroupRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    let group = r.group_id.0.as_str();
    let mut groups = ctx.broker.kafka_groups();
    let now = Instant::now();
    let resp = if version < 3 {
        let c = match groups.leave(group, r.member_id.as_str(), now) {
            Ok(()) => err::NONE,
            Err(e) => code(&e),
        };
        LeaveGroupResponse::default().with_error_code(c)
    } else {
        LeaveGroupResponse::default().with_members(
            r.members
                .iter()
                .map(|m| {
                    let c = match groups.leave(group, m.member_id.as_str(), now) {
                        Ok(()) => err::NONE,
                        Err(e) => code(&e),
                    };
                    MemberResponse::default()
                        .with_member_id(m.member_id.clone())
                        .with_group_instance_id(m.group_instance_id.clone())
                        .with_error_code(c)
                })
                .collect(),
        )
    };
    drop(groups);
    codec::response(ApiKey::LeaveGroup, version, id, &resp)
}

pub fn offset_commit(
    ctx: &Ctx,
    who: &Principal,
    r: OffsetCommitRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    let group = r.group_id.0.as_str();
    let group_ok = who.allows(Op::Group(group));
    let allowed = ctx.broker.kafka_groups().check_commit(
        group,
        r.member_id.as_str(),
        r.generation_id_or_member_epoch,
        Instant::now(),
    );
    if let Err(e) = &allowed {
        tracing::debug!(group, member = %r.member_id.as_str(), "Kafka offset commit refused: {e}");
    }
    // Per partition: Some(code) is decided; None is committed below.
    let mut plan: Vec<(usize, i32, Option<i16>)> = Vec::new();
    let mut offsets = Vec::new();
    for (ti, t) in r.topics.iter().enumerate() {
        let topic = t.name.0.as_str();
        let partitions = ctx.broker.topic(topic).map(|t| t.partitions().len());
        let topic_ok = group_ok && who.allows(Op::Consume(topic));
        for p in &t.partitions {
            let decided = match (&allowed, &partitions) {
                _ if !group_ok => Some(err::GROUP_AUTHORIZATION_FAILED),
                _ if !topic_ok => Some(err::TOPIC_AUTHORIZATION_FAILED),
                (Err(e), _) => Some(code(e)),
                (_, Err(e)) => Some(code_of(e)),
                (_, Ok(n)) if p.partition_index < 0 || p.partition_index as usize >= *n => {
                    Some(err::UNKNOWN_TOPIC_OR_PARTITION)
                }
                _ if p.committed_offset < 0 => Some(err::INVALID_REQUEST),
                _ => {
                    offsets.push((
                        topic.to_string(),
                        p.partition_index as u32,
                        p.committed_offset as u64,
                    ));
                    None
                }
            };
            plan.push((ti, p.partition_index, decided));
        }
    }
    let committed = if offsets.is_empty() {
        err::NONE
    } else {
        match ctx.broker.commit_offsets(group, None, &offsets) {
            Ok(()) => err::NONE,
            Err(e) => {
                tracing::warn!(group, "Kafka offset commit failed: {e}");
                code_of(&e)
            }
        }
    };
    let mut topics: Vec<OffsetCommitResponseTopic> = r
        .topics
        .iter()
        .map(|t| OffsetCommitResponseTopic::default().with_name(t.name.clone()))
        .collect();
    for (ti, p, decided) in plan {
        topics[ti].partitions.push(
            OffsetCommitResponsePartition::default()
                .with_partition_index(p)
                .with_error_code(decided.unwrap_or(committed)),
        );
    }
    let resp = OffsetCommitResponse::default().with_topics(topics);
    codec::response(ApiKey::OffsetCommit, version, id, &resp)
}

pub fn offset_fetch(
    ctx: &Ctx,
    who: &Principal,
    r: OffsetFetchRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    let group = r.group_id.0.as_str();
    if !who.allows(Op::Group(group)) {
        let c = err::GROUP_AUTHORIZATION_FAILED;
        let topics = r
            .topics
            .iter()
            .flatten()
            .map(|t| {
                OffsetFetchResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partition_indexes
                            .iter()
                            .map(|p| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(*p)
                                    .with_committed_offset(-1)
                                    .with_error_code(c)
                            })
                            .collect(),
                    )
            })
            .collect();
        let resp = OffsetFetchResponse::default()
            .with_topics(topics)
            .with_error_code(c);
        return codec::response(ApiKey::OffsetFetch, version, id, &resp);
    }
    // The topics asked about; null (v2+): every topic the group has offsets for.
    let wanted: Vec<(TopicName, Option<Vec<i32>>)> = match &r.topics {
        Some(ts) => ts
            .iter()
            .map(|t| (t.name.clone(), Some(t.partition_indexes.clone())))
            .collect(),
        None => {
            let mut names: Vec<String> = ctx
                .broker
                .describe_group(group)
                .map(|g| {
                    g.offsets
                        .into_iter()
                        .filter(|o| o.committed.is_some())
                        .map(|o| o.topic)
                        .collect()
                })
                .unwrap_or_default();
            names.dedup();
            names.retain(|n| who.allows(Op::Describe(n)));
            names.into_iter().map(|n| (TopicName(s(n)), None)).collect()
        }
    };
    let mut top_error = err::NONE;
    let topics = wanted
        .into_iter()
        .map(|(name, parts)| {
            if !who.allows(Op::Consume(name.0.as_str())) {
                let partitions = parts
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| {
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(-1)
                            .with_error_code(err::TOPIC_AUTHORIZATION_FAILED)
                    })
                    .collect();
                return OffsetFetchResponseTopic::default()
                    .with_name(name)
                    .with_partitions(partitions);
            }
            let committed = ctx.broker.fetch_offsets(group, name.0.as_str());
            let partitions = match (&committed, parts) {
                (Ok(c), Some(ps)) => ps
                    .into_iter()
                    .map(|p| {
                        let found = c.iter().find(|o| o.partition as i64 == i64::from(p));
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(
                                found.and_then(|o| o.committed).map_or(-1, |o| o as i64),
                            )
                            .with_metadata(Some(s("")))
                            .with_error_code(if found.is_some() {
                                err::NONE
                            } else {
                                err::UNKNOWN_TOPIC_OR_PARTITION
                            })
                    })
                    .collect(),
                (Ok(c), None) => c
                    .iter()
                    .filter_map(|o| {
                        o.committed.map(|off| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(o.partition as i32)
                                .with_committed_offset(off as i64)
                                .with_metadata(Some(s("")))
                        })
                    })
                    .collect(),
                (Err(e), Some(ps)) => {
                    let c = code_of(e);
                    ps.into_iter()
                        .map(|p| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(-1)
                                .with_error_code(c)
                        })
                        .collect()
                }
                (Err(e), None) => {
                    top_error = code_of(e);
                    Vec::new()
                }
            };
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    let resp = OffsetFetchResponse::default()
        .with_topics(topics)
        .with_error_code(top_error);
    codec::response(ApiKey::OffsetFetch, version, id, &resp)
}

pub fn describe_groups(
    ctx: &Ctx,
    who: &Principal,
    r: DescribeGroupsRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    let admin = who.allows(Op::Admin);
    let groups = r
        .groups
        .iter()
        .map(|g| {
            let out = DescribedGroup::default().with_group_id(g.clone());
            if !admin {
                return out.with_error_code(err::GROUP_AUTHORIZATION_FAILED);
            }
            // Bound first: the guard must not be held while the broker looks further.
            let described = ctx.broker.kafka_groups().describe(g.0.as_str());
            match described {
                Some(info) => out
                    .with_group_state(s(info.state.name()))
                    .with_protocol_type(s(info.protocol_type))
                    .with_protocol_data(s(info.protocol))
                    .with_members(
                        info.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(s(m.member_id))
                                    .with_group_instance_id(m.instance_id.map(s))
                                    .with_client_id(s(m.client_id))
                                    .with_client_host(s(m.client_host))
                                    .with_member_metadata(m.metadata.into())
                                    .with_member_assignment(m.assignment.into())
                            })
                            .collect(),
                    ),
                None => {
                    let has_offsets = ctx
                        .broker
                        .list_groups()
                        .is_ok_and(|names| names.iter().any(|n| n == g.0.as_str()));
                    out.with_group_state(s(if has_offsets { "Empty" } else { "Dead" }))
                }
            }
        })
        .collect();
    let resp = DescribeGroupsResponse::default().with_groups(groups);
    codec::response(ApiKey::DescribeGroups, version, id, &resp)
}

pub fn list_groups(
    ctx: &Ctx,
    who: &Principal,
    r: ListGroupsRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    if !who.allows(Op::Admin) {
        let resp = ListGroupsResponse::default().with_error_code(err::CLUSTER_AUTHORIZATION_FAILED);
        return codec::response(ApiKey::ListGroups, version, id, &resp);
    }
    let kafka = ctx.broker.kafka_groups().list();
    let names = ctx.broker.list_groups().unwrap_or_default();
    let groups = names
        .into_iter()
        .map(|n| match kafka.iter().find(|(k, _, _)| *k == n) {
            Some((_, ptype, state)) => (n, ptype.clone(), state.name()),
            None => {
                let native = ctx
                    .broker
                    .describe_group(&n)
                    .is_ok_and(|g| !g.members.is_empty());
                if native {
                    (n, "brook".to_string(), "Stable")
                } else {
                    (n, "consumer".to_string(), State::Empty.name())
                }
            }
        })
        .filter(|(_, _, state)| {
            r.states_filter.is_empty()
                || r.states_filter
                    .iter()
                    .any(|f| f.as_str().eq_ignore_ascii_case(state))
        })
        .map(|(n, ptype, state)| {
            ListedGroup::default()
                .with_group_id(GroupId(s(n)))
                .with_protocol_type(s(ptype))
                .with_group_state(s(state))
        })
        .collect();
    let resp = ListGroupsResponse::default().with_groups(groups);
    codec::response(ApiKey::ListGroups, version, id, &resp)
}

/// DeleteGroups (admin): a group's committed offsets go; a group with members is refused
/// (NON_EMPTY_GROUP), one with neither members nor offsets is GROUP_ID_NOT_FOUND.
pub fn delete_groups(
    ctx: &Ctx,
    who: &Principal,
    r: DeleteGroupsRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
    let admin = who.allows(Op::Admin);
    let results = r
        .groups_names
        .iter()
        .map(|g| {
            let name = g.0.as_str();
            let code = if !admin {
                err::GROUP_AUTHORIZATION_FAILED
            } else if ctx.broker.group_has_members(name) {
                err::NON_EMPTY_GROUP
            } else {
                match ctx.broker.delete_group_offsets(name, None) {
                    Ok(0) => err::GROUP_ID_NOT_FOUND,
                    Ok(_) => {
                        tracing::info!(
                            group = name,
                            "kafka: group deleted (its committed offsets)"
                        );
                        err::NONE
                    }
                    Err(e) => code_of(&e),
                }
            };
            DeletableGroupResult::default()
                .with_group_id(g.clone())
                .with_error_code(code)
        })
        .collect();
    let resp = DeleteGroupsResponse::default().with_results(results);
    codec::response(ApiKey::DeleteGroups, version, id, &resp)
}

/// OffsetDelete (admin): a group's committed offsets for some partitions; refused per topic
/// while a member is assigned partitions of it (GROUP_SUBSCRIBED_TO_TOPIC).
pub fn offset_delete(
    ctx: &Ctx,
    who: &Principal,
    r: OffsetDeleteRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    use kafka_protocol::messages::offset_delete_response::{
        OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
    };
    let group = r.group_id.0.as_str();
    let whole = |code| {
        codec::response(
            ApiKey::OffsetDelete,
            version,
            id,
            &OffsetDeleteResponse::default().with_error_code(code),
        )
    };
    if !who.allows(Op::Admin) {
        return whole(err::GROUP_AUTHORIZATION_FAILED);
    }
    let known = ctx
        .broker
        .list_groups()
        .is_ok_and(|names| names.iter().any(|n| n == group));
    if !known {
        return whole(err::GROUP_ID_NOT_FOUND);
    }
    let mut topics = Vec::new();
    for t in &r.topics {
        let name = t.name.0.as_str();
        let in_use = ctx.broker.kafka_groups().uses_topic(group, name);
        let parts: Vec<(String, u32)> = t
            .partitions
            .iter()
            .filter_map(|p| u32::try_from(p.partition_index).ok())
            .map(|p| (name.to_string(), p))
            .collect();
        let code = if in_use {
            err::GROUP_SUBSCRIBED_TO_TOPIC
        } else if ctx.broker.topic(name).is_err() {
            err::UNKNOWN_TOPIC_OR_PARTITION
        } else {
            match ctx.broker.delete_group_offsets(group, Some(&parts)) {
                Ok(_) => err::NONE,
                Err(e) => code_of(&e),
            }
        };
        topics.push(
            OffsetDeleteResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                ),
        );
    }
    let resp = OffsetDeleteResponse::default().with_topics(topics);
    codec::response(ApiKey::OffsetDelete, version, id, &resp)
}
