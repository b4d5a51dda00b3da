//! Fuzz the native protocol's frame and message decoders: every byte a client sends goes
//! through them. Run: `cargo +nightly fuzz run native_frame` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((msg, n)) = brook::proto::decode_frame(rest, 1 << 20) {
        if let Ok(r) = postcard::from_bytes::<brook::proto::RequestFrame<'_>>(msg) {
            // Whatever decodes must encode back to a frame that decodes to the same request.
            let again = brook::proto::encode(&r);
            let (m, _) = brook::proto::decode_frame(&again, usize::MAX).expect("re-encoded frame");
            let back: brook::proto::RequestFrame<'_> = postcard::from_bytes(m).expect("decodes");
            assert_eq!(back, r);
        }
        rest = &rest[n..];
    }
});
