//! The topic descriptor: a small file in each topic's directory that says the topic exists and
//! how it is configured, so the data directory alone can always say which topics it holds. The
//! log never depends on the metadata store to be found: a topic whose metadata entry was lost
//! (a power cut, a damaged store) is found here at start and served again.
//!
//! `<data_dir>/topics/<topic>/@topic` (`@` cannot occur in a partition's directory name):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `BROOKTOP` |
//! | 8..12 | format version (u32 LE), currently 1; a larger one is refused |
//! | 12..16 | body length `n` (u32 LE) |
//! | 16..16+n | body: the [`TopicConfig`] as JSON (self-describing, so fields can be added) |
//! | last 4 | CRC-32C of everything before it |
//!
//! It is written to `@topic.tmp`, fsynced, renamed into place and the topic directory fsynced,
//! so a power cut leaves either the old descriptor or the new one, never a torn one.

use std::path::Path;

use super::TopicConfig;
use super::error::{LogError, Result};
use super::fs::Fs;
use super::record::crc32c;
use crate::units::Narrow;

/// The descriptor's file name inside the topic directory.
pub const TOPIC_FILE: &str = "@topic";
const MAGIC: &[u8; 8] = b"BROOKTOP";
/// Version of the descriptor layout.
pub const TOPIC_FILE_VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
/// Larger than any descriptor Brook writes; a longer file is damaged.
const MAX_LEN: u64 = 64 * 1024;

/// The descriptor's bytes for `config`.
pub fn encode(config: &TopicConfig) -> Vec<u8> {
    // A struct of plain fields: serializing it cannot fail.
    let body = serde_json::to_vec(config).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&TOPIC_FILE_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len().sat_u32()).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Why a descriptor cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// Damaged: short, bad magic, checksum or body.
    Damaged(String),
    /// Written by a newer Brook.
    NewerVersion(u32),
}

/// Parses a descriptor.
pub fn decode(buf: &[u8]) -> std::result::Result<TopicConfig, Unusable> {
    let damaged = |s: &str| Err(Unusable::Damaged(s.to_string()));
    if buf.len() < HEADER_LEN + 4 {
        return damaged("shorter than a descriptor");
    }
    if &buf[..8] != MAGIC {
        return damaged("bad magic");
    }
    let (head, crc) = buf.split_at(buf.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c(head) != stored {
        return damaged("checksum mismatch");
    }
    let version = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if version > TOPIC_FILE_VERSION {
        return Err(Unusable::NewerVersion(version));
    }
    let len = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
    if HEADER_LEN + len != head.len() {
        return damaged("body length does not match the file");
    }
    serde_json::from_slice(&head[HEADER_LEN..])
        .map_err(|e| Unusable::Damaged(format!("settings unreadable: {e}")))
}

/// Reads the descriptor of the topic directory `tdir`: `Ok(None)` when there is none.
pub fn read(
    fs: &dyn Fs,
    tdir: &Path,
) -> Result<Option<std::result::Result<TopicConfig, Unusable>>> {
    let path = tdir.join(TOPIC_FILE);
    if !fs.exists(&path) {
        return Ok(None);
    }
    let f = fs
        .open(&path, false)
        .map_err(|e| LogError::io("open", &path, e))?;
    let len = f.size().map_err(|e| LogError::io("stat", &path, e))?;
    if len > MAX_LEN {
        return Ok(Some(Err(Unusable::Damaged(format!(
            "{len} bytes is too large for a descriptor"
        )))));
    }
    let mut buf = vec![0u8; len.sat_usize()];
    f.read_exact_at(&mut buf, 0)
        .map_err(|e| LogError::io("read", &path, e))?;
    Ok(Some(decode(&buf)))
}

/// Writes the descriptor of the topic directory `tdir` (which exists) and makes it durable.
pub fn write(fs: &dyn Fs, tdir: &Path, config: &TopicConfig) -> Result<()> {
    super::fs::replace_durably(fs, &tdir.join(TOPIC_FILE), &encode(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::ByteSize;

    #[test]
    fn round_trip_and_every_damaged_byte_is_caught() {
        let cfg = TopicConfig {
            partitions: 3,
            segment_size: ByteSize::mib(1),
            ..TopicConfig::default()
        };
        let bytes = encode(&cfg);
        assert_eq!(decode(&bytes), Ok(cfg));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flipped byte {i} went unnoticed");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "truncated to {n}");
        }
    }

    #[test]
    fn newer_version_is_refused() {
        let mut bytes = encode(&TopicConfig::default());
        bytes[8] = 2;
        let n = bytes.len() - 4;
        let crc = crc32c(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes), Err(Unusable::NewerVersion(2)));
    }

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = super::super::fs::StdFs;
        assert_eq!(read(&fs, dir.path()).expect("read"), None);
        let cfg = TopicConfig {
            partitions: 2,
            ..TopicConfig::default()
        };
        write(&fs, dir.path(), &cfg).expect("write");
        assert_eq!(read(&fs, dir.path()).expect("read"), Some(Ok(cfg)));
        assert!(!dir.path().join("@topic.tmp").exists());
    }
}
