//! The native wire protocol: TCP, one frame per message, requests pipelined.
//!
//! # Frame
//!
//! | bytes | field | notes |
//! |---|---|---|
//! | 0..4 | `len` | u32 LE: bytes after this field (CRC + message) |
//! | 4..8 | `crc` | u32 LE: CRC-32C (Castagnoli) of the message |
//! | 8.. | message | postcard: a [`RequestFrame`] or a [`ResponseFrame`] |
//!
//! A message is `correlation id (varint u32)` followed by the request or response: a varint
//! variant index, then the variant's fields in order, each as postcard encodes it (varints for
//! integers, `varint length + bytes` for strings and byte strings, `0`/`1 + value` for options,
//! `varint count + items` for lists). The variant indexes are the order of [`Request`] and
//! [`Response`] in `messages.rs`; new variants are only ever appended.
//!
//! # Conversation
//!
//! The client opens with `Handshake { version, client_id }`; the server answers with its version
//! or `Error { UnsupportedVersion }` for a newer client. A client with a login sends
//! `Authenticate { username, password }` next (a server with users requires it; a refusal is
//! `Error { AuthenticationFailed }` and the connection closes; a request the ACL forbids gets
//! `Error { NotAuthorized }` and the connection stays). Then any requests, pipelined: each answer
//! carries its request's correlation id and is sent as soon as it is ready, so a long poll does
//! not hold up the answers behind it; produces are applied in the order they were sent. A frame
//! that is malformed, oversized or not decodable closes the connection after an `Error` answer
//! (correlation id 0 when unknown), with the reason logged; nothing else is affected.
//!
//! A produce carries a batch's records section encoded exactly as in the log (see
//! [`crate::log`]), so the server adds only the batch header: `Produce` in the plain layout,
//! `ProduceBatch` (protocol 2) in the layout it names. A fetch answer carries whole log frames,
//! byte for byte as stored; a client that said version 1 in its handshake gets batches with nulls
//! converted to the plain layout (nulls as empty), which is all it can read.
//!
//! `frame.rs` and `messages.rs` use no `std` and no allocator (bounded lists are
//! `heapless::Vec`), so a microcontroller can encode a produce; `tests/no_std_proto` proves it.
//! `stream.rs` reads and writes frames on a connection, for the client and the listener alike.

pub mod frame;
pub mod messages;
pub mod stream;

pub use frame::{FRAME_HEADER_LEN, FrameError, decode_frame, seal_frame};
pub use messages::*;
pub use stream::{FrameReader, write_frames, write_frames_within};

/// Encodes a message into a new frame.
pub fn encode<T: serde::Serialize>(message: &T) -> Vec<u8> {
    let mut out = vec![0u8; FRAME_HEADER_LEN];
    out = match postcard::to_extend(message, out) {
        Ok(v) => v,
        Err(_) => unreachable!("postcard to_extend into a Vec is infallible for protocol messages"),
    };
    let n = out.len() - FRAME_HEADER_LEN;
    match seal_frame(&mut out, n) {
        Ok(_) => out,
        Err(_) => unreachable!("the buffer was sized for the frame"),
    }
}

/// Appends a framed message to `out` (for writing several responses at once).
pub fn encode_into<T: serde::Serialize>(message: &T, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    let buf = std::mem::take(out);
    *out = match postcard::to_extend(message, buf) {
        Ok(v) => v,
        Err(_) => unreachable!("postcard to_extend into a Vec is infallible for protocol messages"),
    };
    let n = out.len() - start - FRAME_HEADER_LEN;
    if seal_frame(&mut out[start..], n).is_err() {
        unreachable!("the buffer was sized for the frame");
    }
}
