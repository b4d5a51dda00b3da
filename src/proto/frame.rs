//! The native protocol's frame: `[len: u32 LE][crc32c: u32 LE][message]`, where `len` counts the
//! CRC and the message and the CRC (CRC-32C) covers the message.
//!
//! This file uses `core` only (no `std`, no allocation), so a microcontroller can frame a request
//! in a stack buffer; `tests/no_std_proto` compiles it in a `#![no_std]` crate.

/// Bytes before the message.
pub const FRAME_HEADER_LEN: usize = 8;

/// CRC-32C (Castagnoli), as for log batches.
pub const FRAME_CRC: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// What is wrong with a frame. `Incomplete` is not a failure: more bytes are needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer holds only the start of a frame; `needed` bytes make the whole frame.
    Incomplete { needed: usize },
    /// The length field is below the minimum (a CRC and a one-byte message).
    TooShort { len: usize },
    /// The length field is above what this side accepts.
    TooLarge { len: usize, max: usize },
    /// The message does not match its checksum.
    BadCrc { stored: u32, actual: u32 },
    /// The output buffer is too small for the frame.
    BufferTooSmall { needed: usize },
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::Incomplete { needed } => write!(f, "incomplete frame ({needed} bytes)"),
            FrameError::TooShort { len } => write!(f, "frame length {len} is too short"),
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            FrameError::BadCrc { stored, actual } => write!(
                f,
                "frame checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
            ),
            FrameError::BufferTooSmall { needed } => {
                write!(f, "buffer too small: {needed} bytes needed")
            }
        }
    }
}

/// Finds the frame at the start of `buf`. Returns the message and the frame's total size.
/// `max_len` bounds the length field (CRC + message), so a peer cannot make us buffer without
/// limit.
pub fn decode_frame(buf: &[u8], max_len: usize) -> Result<(&[u8], usize), FrameError> {
    if buf.len() < 4 {
        return Err(FrameError::Incomplete {
            needed: FRAME_HEADER_LEN,
        });
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len < 5 {
        return Err(FrameError::TooShort { len });
    }
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let total = len + 4;
    if buf.len() < total {
        return Err(FrameError::Incomplete { needed: total });
    }
    let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let message = &buf[FRAME_HEADER_LEN..total];
    let actual = FRAME_CRC.checksum(message);
    if stored != actual {
        return Err(FrameError::BadCrc { stored, actual });
    }
    Ok((message, total))
}

/// Writes the frame header for the `message_len` bytes already placed at
/// `out[FRAME_HEADER_LEN..FRAME_HEADER_LEN + message_len]`; returns the frame's total size.
pub fn seal_frame(out: &mut [u8], message_len: usize) -> Result<usize, FrameError> {
    let total = FRAME_HEADER_LEN + message_len;
    if out.len() < total {
        return Err(FrameError::BufferTooSmall { needed: total });
    }
    let len = u32::try_from(message_len + 4).map_err(|_| FrameError::TooLarge {
        len: message_len + 4,
        max: u32::MAX as usize,
    })?;
    let crc = FRAME_CRC.checksum(&out[FRAME_HEADER_LEN..total]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(total)
}
