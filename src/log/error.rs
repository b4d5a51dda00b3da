//! Errors of the storage layer. Every variant carries what a user needs to act on it: the file,
//! the position, the limit that was hit.

use std::io;
use std::path::PathBuf;

/// What is wrong with a frame read from a disk or a peer. `Incomplete` is not a failure: it says
/// how many bytes the frame needs in all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("incomplete frame: {needed} bytes needed")]
    Incomplete { needed: usize },
    #[error("frame length {len} is out of range")]
    BadLength { len: usize },
    #[error("frame checksum mismatch: stored {stored:#010x}, computed {actual:#010x}")]
    BadCrc { stored: u32, actual: u32 },
    #[error("batch format version {found} is newer than this build understands ({supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("malformed batch header: {0}")]
    BadHeader(String),
    #[error("malformed record: {0}")]
    BadRecord(String),
}

/// Which limit made the log refuse an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FullReason {
    /// The partition reached its topic's `retention_size` and the topic's policy is `reject`.
    RetentionSize { limit: u64 },
    /// The store reached `max_size` and nothing could be freed from `drop_oldest` topics.
    Budget { limit: u64 },
    /// The filesystem has less than `min_free` available and nothing could be freed.
    FreeSpaceFloor { available: u64, floor: u64 },
    /// The filesystem itself reported ENOSPC.
    NoSpace,
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullReason::RetentionSize { limit } => {
                write!(
                    f,
                    "partition reached retention_size {limit} bytes (on_full = reject)"
                )
            }
            FullReason::Budget { limit } => write!(
                f,
                "store reached max_size {limit} bytes and no drop_oldest segment can be freed"
            ),
            FullReason::FreeSpaceFloor { available, floor } => write!(
                f,
                "filesystem has {available} bytes available, below min_free {floor}, and no drop_oldest segment can be freed"
            ),
            FullReason::NoSpace => write!(f, "filesystem is full (ENOSPC)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt data in {path} at byte {position}: {source}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        #[source]
        source: FrameError,
    },
    #[error("{path}: {what}")]
    BadFile { path: PathBuf, what: String },
    #[error(
        "{topic}/{partition}: offsets {first}..{next} were lost to corruption of the stored data; read on from {next}"
    )]
    DataLost {
        topic: String,
        partition: u32,
        first: u64,
        next: u64,
    },
    #[error(
        "data directory {dir} is in use by {holder} (a running brook serve?); stop it first, or work on a copy"
    )]
    DirLocked { dir: PathBuf, holder: String },
    #[error("{path}: format version {found} is newer than this build understands ({supported})")]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("log full for {topic}/{partition}: {reason}")]
    LogFull {
        topic: String,
        partition: u32,
        reason: FullReason,
    },
    #[error("batch of {size} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("invalid batch: {0}")]
    InvalidBatch(#[source] FrameError),
    #[error(
        "partition {topic}/{partition} refuses writes after a failed {cause}; restart Brook to reopen it"
    )]
    Poisoned {
        topic: String,
        partition: u32,
        cause: String,
    },
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("topic {topic:?} has no partition {partition} (it has {count})")]
    UnknownPartition {
        topic: String,
        partition: u32,
        count: u32,
    },
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("invalid topic config for {topic:?}: {reason}")]
    InvalidTopicConfig { topic: String, reason: String },
    #[error("{what}: the broker holds {limit} at most ({key}); delete some or raise the limit")]
    TooMany {
        what: &'static str,
        key: &'static str,
        limit: usize,
    },
    #[error(
        "{what}: budget of {budget} bytes is below two segments per partition ({needed} bytes)"
    )]
    BudgetTooSmall {
        what: String,
        budget: u64,
        needed: u64,
    },
    #[error("offset {requested} is out of range: the partition holds {earliest}..{latest}")]
    OffsetOutOfRange {
        requested: u64,
        earliest: u64,
        latest: u64,
    },
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Why an append failed, as `brook_append_failures_total{reason}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendFailure {
    /// The filesystem reported ENOSPC.
    NoSpace,
    /// The filesystem is read-only (EROFS).
    ReadOnly,
    /// Another write error.
    Io,
    /// The partition refuses writes after a failed fsync or write it could not undo.
    Refused,
    /// The topic's `retention_size` with `on_full = "reject"`.
    RetentionSize,
    /// `log.max_size` with nothing left to free.
    MaxSize,
    /// `log.min_free` with nothing left to free.
    MinFree,
}

impl AppendFailure {
    pub const ALL: [AppendFailure; 7] = [
        AppendFailure::NoSpace,
        AppendFailure::ReadOnly,
        AppendFailure::Io,
        AppendFailure::Refused,
        AppendFailure::RetentionSize,
        AppendFailure::MaxSize,
        AppendFailure::MinFree,
    ];

    /// The metric's `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            AppendFailure::NoSpace => "no_space",
            AppendFailure::ReadOnly => "read_only",
            AppendFailure::Io => "io_error",
            AppendFailure::Refused => "partition_refuses_writes",
            AppendFailure::RetentionSize => "retention_size",
            AppendFailure::MaxSize => "max_size",
            AppendFailure::MinFree => "min_free",
        }
    }

    /// What made an append fail, when the storage did (not the batch or the topic name).
    pub fn of(e: &LogError) -> Option<AppendFailure> {
        Some(match e {
            LogError::LogFull { reason, .. } => match reason {
                FullReason::NoSpace => AppendFailure::NoSpace,
                FullReason::RetentionSize { .. } => AppendFailure::RetentionSize,
                FullReason::Budget { .. } => AppendFailure::MaxSize,
                FullReason::FreeSpaceFloor { .. } => AppendFailure::MinFree,
            },
            LogError::Io { source, .. } if source.kind() == io::ErrorKind::ReadOnlyFilesystem => {
                AppendFailure::ReadOnly
            }
            LogError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull => {
                AppendFailure::NoSpace
            }
            LogError::Io { .. } => AppendFailure::Io,
            // A write on a read-only filesystem cannot be cut back either, so the partition
            // refuses writes; the cause names the first error.
            LogError::Poisoned { cause, .. }
                if cause.contains(&io::Error::from_raw_os_error(libc::EROFS).to_string()) =>
            {
                AppendFailure::ReadOnly
            }
            LogError::Poisoned { .. } => AppendFailure::Refused,
            _ => return None,
        })
    }

    /// Whether it says the storage is failing (`/healthz` degraded), not a configured limit.
    pub fn is_storage_fault(self) -> bool {
        matches!(
            self,
            AppendFailure::NoSpace
                | AppendFailure::ReadOnly
                | AppendFailure::Io
                | AppendFailure::Refused
        )
    }
}
