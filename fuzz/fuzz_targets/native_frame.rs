//! Fuzz the native protocol's frame and message decoders: every byte a client sends goes
//! through them. Run: `cargo +nightly fuzz run native_frame` from the repository root.
#![no_main]

use std::future::Future;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;

/// Polls a future that cannot wait (reads from a slice) to its end.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("a read from a slice never waits"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut direct = Vec::new();
    while let Ok((msg, n)) = brook::proto::decode_frame(rest, 1 << 20) {
        direct.push(msg.to_vec());
        if let Ok(r) = postcard::from_bytes::<brook::proto::RequestFrame<'_>>(msg) {
            // Whatever decodes must encode back to a frame that decodes to the same request.
            let again = brook::proto::encode(&r);
            let (m, _) = brook::proto::decode_frame(&again, usize::MAX).expect("re-encoded frame");
            let back: brook::proto::RequestFrame<'_> = postcard::from_bytes(m).expect("decodes");
            assert_eq!(back, r);
        }
        rest = &rest[n..];
    }
    // The connection's reader, fed the same bytes in pieces (their size from the first byte),
    // must cut the same frames, and stop where the direct walk stopped.
    let piece = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut reader = brook::proto::FrameReader::new();
    let mut framed = Vec::new();
    'feed: for mut chunk in data.chunks(piece) {
        while !chunk.is_empty() {
            ready(reader.fill(&mut chunk)).expect("read from a slice");
            loop {
                match reader.next_frame(1 << 20) {
                    Ok(Some(m)) => framed.push(m.to_vec()),
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }
    assert_eq!(framed, direct);
});
