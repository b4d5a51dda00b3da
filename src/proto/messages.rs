//! The native protocol's messages, postcard-encoded inside a frame (see [`super::frame`]).
//!
//! Every message borrows its strings and byte strings from the frame it was decoded from, and
//! every list is a `heapless::Vec` with a fixed bound, so this file needs neither `std` nor an
//! allocator: a microcontroller can build a [`Request::Produce`] on the stack and encode it with
//! `postcard::to_slice`. `tests/no_std_proto` compiles it in a `#![no_std]` crate.
//!
//! A request is a [`RequestFrame`]: correlation id + [`Request`]; the answer is a
//! [`ResponseFrame`] with the same correlation id. Requests on one connection are pipelined:
//! a client may send many before reading answers. Answers come back as they are ready, in any
//! order (match them by correlation id); produces are applied in the order they were sent.

use heapless::Vec as HVec;
use serde::{Deserialize, Serialize};

/// Version of the message layout; sent in the handshake. A server answers a newer client with
/// [`ErrorCode::UnsupportedVersion`] (a client may then connect again with an older version).
///
/// - 1: the first.
/// - 2: [`Request::ProduceBatch`] carries records in the nullable layout (null values and header
///   values); fetch answers hold batches in either layout. A version 1 client gets every batch in
///   the plain layout (nulls as empty). [`Request::CreateTopicWith`] sets the cleanup policy.
pub const PROTOCOL_VERSION: u16 = 2;

/// Bounds of the lists in messages.
pub const MAX_TOPICS: usize = 256;
pub const MAX_PARTITIONS: usize = 256;
pub const MAX_GROUP_TOPICS: usize = 16;
pub const MAX_MEMBERS: usize = 64;
pub const MAX_COMMIT: usize = 64;

/// Stable numeric error codes. A retired code is never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u16)]
pub enum ErrorCode {
    /// Anything not covered below; the message says what.
    Unknown = 1,
    /// The request could not be decoded, or broke the protocol's rules.
    InvalidRequest = 2,
    UnsupportedVersion = 3,
    /// The first request on a connection must be a handshake.
    HandshakeRequired = 4,
    UnknownTopic = 10,
    TopicExists = 11,
    UnknownPartition = 12,
    InvalidTopic = 13,
    OffsetOutOfRange = 14,
    InvalidBatch = 15,
    BatchTooLarge = 16,
    /// The log refused the append at a limit (`on_full = reject`, budget, free-space floor).
    LogFull = 20,
    /// The partition refuses writes after an fsync error, until Brook restarts.
    StorageFailed = 21,
    /// A disk or metadata error.
    Io = 22,
    /// The offsets asked for were lost to corruption of the stored data; the message names
    /// the range, and reading on from its end works.
    DataLost = 23,
    /// A limit of the broker (`log.max_topics`, `log.max_partitions`) would be passed.
    LimitReached = 24,
    UnknownMember = 30,
    /// The member's generation is not the group's current one: rejoin.
    IllegalGeneration = 31,
    /// The group is rebalancing: rejoin.
    RebalanceInProgress = 32,
    InvalidGroup = 33,
    /// The server is shutting down.
    ShuttingDown = 40,
    /// Unknown user or wrong password, or no login where one is required; the connection
    /// closes.
    AuthenticationFailed = 50,
    /// The ACL does not allow this request to this user.
    NotAuthorized = 51,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> ErrorCode {
        match v {
            2 => ErrorCode::InvalidRequest,
            3 => ErrorCode::UnsupportedVersion,
            4 => ErrorCode::HandshakeRequired,
            10 => ErrorCode::UnknownTopic,
            11 => ErrorCode::TopicExists,
            12 => ErrorCode::UnknownPartition,
            13 => ErrorCode::InvalidTopic,
            14 => ErrorCode::OffsetOutOfRange,
            15 => ErrorCode::InvalidBatch,
            16 => ErrorCode::BatchTooLarge,
            20 => ErrorCode::LogFull,
            21 => ErrorCode::StorageFailed,
            22 => ErrorCode::Io,
            23 => ErrorCode::DataLost,
            24 => ErrorCode::LimitReached,
            30 => ErrorCode::UnknownMember,
            31 => ErrorCode::IllegalGeneration,
            32 => ErrorCode::RebalanceInProgress,
            33 => ErrorCode::InvalidGroup,
            40 => ErrorCode::ShuttingDown,
            50 => ErrorCode::AuthenticationFailed,
            51 => ErrorCode::NotAuthorized,
            _ => ErrorCode::Unknown,
        }
    }
}

/// What a produce waits for (as `log::Durability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acks {
    None,
    Written,
    Durable,
}

/// Where ListOffsets looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// First offset whose record timestamp is at or after this (ms since the epoch).
    Timestamp(i64),
}

/// How a group's partitions are spread over its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Assignor {
    /// Per topic, consecutive ranges of partitions (Kafka's range assignor).
    Range,
    /// All partitions of all topics dealt out in turn.
    RoundRobin,
}

/// A produce: one batch (its records section, encoded as in the log) for one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Produce<'a> {
    pub topic: &'a str,
    /// The partition; when `None`, `partition_key` picks it (Kafka's murmur2), else round robin.
    pub partition: Option<u32>,
    pub partition_key: Option<&'a [u8]>,
    pub acks: Acks,
    pub record_count: u32,
    /// Timestamp of the first record; the records carry theirs relative to it.
    pub first_timestamp: i64,
    /// The records, encoded as in a log batch (offset deltas from 0, timestamp deltas from the
    /// first record's timestamp).
    pub records: &'a [u8],
}

/// A fetch: whole batches from `offset`, waiting up to `max_wait_ms` for `min_bytes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: u32,
    pub min_bytes: u32,
    pub max_wait_ms: u32,
}

/// Settings of a new topic; `None` takes the server's `topic_defaults`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSettings {
    pub partitions: Option<u32>,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: Option<u64>,
    /// `Some(true)`: on_full = reject; `Some(false)`: drop_oldest.
    pub reject_when_full: Option<bool>,
}

/// What happens to a topic's old records (as `log::Cleanup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CleanupPolicy {
    Delete,
    Compact,
    CompactDelete,
}

/// Settings of a new topic beyond [`TopicSettings`] (protocol 2, [`Request::CreateTopicWith`]);
/// `None` takes the server's `topic_defaults`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicOptions {
    pub cleanup: Option<CleanupPolicy>,
    /// How long a tombstone stays on a compacted topic.
    pub delete_retention_ms: Option<u64>,
}

/// One committed offset: the next offset the group will read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitEntry<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub offset: u64,
}

// Without an allocator nothing can be boxed: the largest variants (bounded lists) set the size.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request<'a> {
    /// Must come first on a connection.
    Handshake {
        version: u16,
        client_id: &'a str,
    },
    #[serde(borrow)]
    Produce(Produce<'a>),
    #[serde(borrow)]
    Fetch(Fetch<'a>),
    ListOffsets {
        topic: &'a str,
        partition: u32,
        spec: OffsetSpec,
    },
    CreateTopic {
        name: &'a str,
        settings: TopicSettings,
    },
    DeleteTopic {
        name: &'a str,
    },
    DescribeTopic {
        name: &'a str,
    },
    ListTopics,
    /// Join (or rejoin, with the member id the server gave) a group for these topics.
    JoinGroup {
        group: &'a str,
        member_id: &'a str,
        #[serde(borrow)]
        topics: HVec<&'a str, MAX_GROUP_TOPICS>,
        session_timeout_ms: u32,
        assignor: Assignor,
    },
    Heartbeat {
        group: &'a str,
        member_id: &'a str,
        generation: u32,
    },
    LeaveGroup {
        group: &'a str,
        member_id: &'a str,
    },
    /// Commit offsets; a member passes its id and generation, a standalone client `None`.
    CommitOffsets {
        group: &'a str,
        member: Option<(&'a str, u32)>,
        #[serde(borrow)]
        offsets: HVec<CommitEntry<'a>, MAX_COMMIT>,
    },
    FetchOffsets {
        group: &'a str,
        topic: &'a str,
    },
    ListGroups,
    DescribeGroup {
        group: &'a str,
    },
    /// Logs in; right after the handshake, before anything else. Answered with `Done`, or
    /// `AuthenticationFailed` and the connection closes. Without it a connection is
    /// anonymous, which the server may refuse.
    Authenticate {
        username: &'a str,
        password: &'a [u8],
    },
    /// Protocol 2: a produce whose records section is in the log batch layout `layout` (the
    /// version byte of a batch body: 1 plain, 2 nullable). [`Request::Produce`] is layout 1.
    ProduceBatch {
        layout: u8,
        #[serde(borrow)]
        produce: Produce<'a>,
    },
    /// Protocol 2: [`Request::CreateTopic`] with more settings.
    CreateTopicWith {
        name: &'a str,
        settings: TopicSettings,
        options: TopicOptions,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame<'a> {
    pub correlation_id: u32,
    #[serde(borrow)]
    pub request: Request<'a>,
}

/// State of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub partition: u32,
    pub log_start: u64,
    pub end_offset: u64,
    pub durable_offset: u64,
    pub segments: u32,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo<'a> {
    pub name: &'a str,
    pub retention_ms: u64,
    pub retention_bytes: u64,
    pub segment_bytes: u64,
    pub reject_when_full: bool,
    pub partitions: HVec<PartitionInfo, MAX_PARTITIONS>,
}

/// A partition assigned to a group member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned<'a> {
    pub topic: &'a str,
    pub partition: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo<'a> {
    pub member_id: &'a str,
    pub client_id: &'a str,
}

/// A partition assigned to the member at `member` in the members list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAssignment<'a> {
    pub member: u16,
    #[serde(borrow)]
    pub assigned: Assigned<'a>,
}

/// A committed offset and how far behind the log end it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetInfo<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub committed: Option<u64>,
    pub end_offset: u64,
}

#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response<'a> {
    Error {
        code: ErrorCode,
        message: &'a str,
    },
    Handshake {
        version: u16,
        server: &'a str,
    },
    Produced {
        partition: u32,
        base_offset: u64,
        next_offset: u64,
    },
    /// Whole batch frames as stored in the log.
    Fetched {
        high_watermark: u64,
        log_start: u64,
        next_offset: u64,
        frames: &'a [u8],
    },
    Offset {
        earliest: u64,
        latest: u64,
        /// The answer to the spec (`None`: no record at or after the timestamp).
        offset: Option<u64>,
    },
    Done,
    #[serde(borrow)]
    Topic(TopicInfo<'a>),
    Topics {
        #[serde(borrow)]
        names: HVec<&'a str, MAX_TOPICS>,
        /// More topics exist than fit.
        truncated: bool,
    },
    Joined {
        member_id: &'a str,
        generation: u32,
        #[serde(borrow)]
        assignment: HVec<Assigned<'a>, MAX_PARTITIONS>,
    },
    Heartbeat {
        /// The group is rebalancing: rejoin to get the new assignment.
        rejoin: bool,
    },
    Offsets {
        #[serde(borrow)]
        offsets: HVec<OffsetInfo<'a>, MAX_PARTITIONS>,
    },
    Groups {
        #[serde(borrow)]
        names: HVec<&'a str, MAX_TOPICS>,
        truncated: bool,
    },
    Group {
        generation: u32,
        #[serde(borrow)]
        members: HVec<MemberInfo<'a>, MAX_MEMBERS>,
        #[serde(borrow)]
        assignments: HVec<MemberAssignment<'a>, MAX_PARTITIONS>,
        #[serde(borrow)]
        offsets: HVec<OffsetInfo<'a>, MAX_PARTITIONS>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame<'a> {
    pub correlation_id: u32,
    #[serde(borrow)]
    pub response: Response<'a>,
}
