//! A microcontroller's view of Brook's native protocol: no `std`, no allocator.
#![no_std]

#[path = "../../../src/proto/frame.rs"]
pub mod frame;
#[path = "../../../src/proto/messages.rs"]
pub mod messages;

use messages::{Acks, Produce, Request, RequestFrame};

/// Encodes a framed produce request for `records` (a records section encoded as in the log)
/// into `out`, on the stack; returns the frame's length.
pub fn encode_produce(
    out: &mut [u8],
    correlation_id: u32,
    topic: &str,
    records: &[u8],
    record_count: u32,
    first_timestamp: i64,
) -> Result<usize, frame::FrameError> {
    let request = RequestFrame {
        correlation_id,
        request: Request::Produce(Produce {
            topic,
            partition: None,
            partition_key: None,
            acks: Acks::Durable,
            record_count,
            first_timestamp,
            records,
        }),
    };
    let room = out.len();
    let (_, body) = out.split_at_mut(frame::FRAME_HEADER_LEN.min(room));
    let used = postcard::to_slice(&request, body)
        .map_err(|_| frame::FrameError::BufferTooSmall { needed: room + 1 })?
        .len();
    frame::seal_frame(out, used)
}
