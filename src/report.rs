//! The JSON documents Brook shows people: what the HTTP API serves (`/api/topics`) and what
//! the CLI prints with `--json` (`brook topics describe`, `brook groups describe`). One type per
//! document, so the same thing has the same field names wherever it is read. (`/api/mirrors`
//! and `brook mirror status --json` are one document already: the CLI prints what it fetched.)

use serde::{Deserialize, Serialize};

use crate::log::{Cleanup, OnFull};
use crate::units::HumanDuration;

/// A topic: its settings and partitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicReport {
    pub name: String,
    /// Age after which records are deleted, as a duration ("7d"; "0s": none).
    pub retention: String,
    /// Bytes a partition keeps (0: no bound).
    pub retention_size: u64,
    pub segment_size: u64,
    pub on_full: OnFull,
    /// Where known (the native protocol does not carry it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<Cleanup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_retention: Option<String>,
    pub partitions: Vec<PartitionReport>,
}

/// One partition of a [`TopicReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionReport {
    pub partition: u32,
    /// First offset still stored.
    pub log_start: u64,
    /// Offset after the last record written.
    pub end_offset: u64,
    /// Offset after the last record fsynced.
    pub durable_offset: u64,
    pub segments: u64,
    pub bytes: u64,
    /// Why the partition refuses writes, when it does (shown where known: the HTTP API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuses_writes: Option<String>,
}

/// A duration as reports show it.
pub fn duration(ms: u64) -> String {
    HumanDuration::millis(ms).to_string()
}

/// Records between a group's committed offset (none: the start) and the end.
pub fn lag(committed: Option<u64>, end_offset: u64) -> u64 {
    end_offset - committed.unwrap_or(0).min(end_offset)
}

/// A consumer group: members and, per partition of its topics, committed offset and lag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    pub group: String,
    pub generation: u32,
    pub members: Vec<MemberReport>,
    pub offsets: Vec<GroupOffsetReport>,
}

impl GroupReport {
    /// From a group's parts, wherever they were read: members as (member id, client id,
    /// assigned (topic, partition) pairs), offsets as (topic, partition, committed, end offset).
    pub fn new<'a>(
        group: &str,
        generation: u32,
        members: impl IntoIterator<Item = (&'a str, &'a str, &'a [(String, u32)])>,
        offsets: impl IntoIterator<Item = (&'a str, u32, Option<u64>, u64)>,
    ) -> GroupReport {
        GroupReport {
            group: group.to_string(),
            generation,
            members: members
                .into_iter()
                .map(|(member_id, client_id, assignment)| MemberReport {
                    member_id: member_id.to_string(),
                    client_id: client_id.to_string(),
                    assignment: assignment
                        .iter()
                        .map(|(topic, partition)| AssignedReport {
                            topic: topic.clone(),
                            partition: *partition,
                        })
                        .collect(),
                })
                .collect(),
            offsets: offsets
                .into_iter()
                .map(
                    |(topic, partition, committed, end_offset)| GroupOffsetReport {
                        topic: topic.to_string(),
                        partition,
                        committed,
                        end_offset,
                        lag: lag(committed, end_offset),
                    },
                )
                .collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    pub member_id: String,
    pub client_id: String,
    pub assignment: Vec<AssignedReport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedReport {
    pub topic: String,
    pub partition: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffsetReport {
    pub topic: String,
    pub partition: u32,
    /// The next offset the group reads (none committed yet: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<u64>,
    pub end_offset: u64,
    /// Records between the committed offset (or the start) and the end.
    pub lag: u64,
}
