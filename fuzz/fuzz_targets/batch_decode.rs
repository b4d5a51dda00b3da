//! Fuzz the batch decoder: every frame Brook reads from a disk or a peer goes through it.
//! Run: `cargo +nightly fuzz run batch_decode` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Must never panic; whatever it accepts must re-encode to a frame it accepts again.
    if let Ok(records) = brook::log::record::decode_all(data) {
        let mut b = brook::log::BatchBuilder::new();
        for r in &records {
            b.push_record(r);
        }
        if !b.is_empty() {
            let h = brook::log::BatchHeader {
                base_offset: 0,
                record_count: b.count(),
                first_timestamp: b.first_timestamp(),
                max_timestamp: b.max_timestamp(),
                append_time: 0,
                attributes: 0,
            };
            let mut out = Vec::new();
            brook::log::record::encode_frame(&mut out, &h, b.layout(), b.records_bytes());
            assert_eq!(brook::log::record::decode_all(&out).ok(), Some(records));
        }
        // The conversion a protocol 1 client gets must read back too.
        if let Ok(Some(plain)) = brook::log::record::frames_as_plain(data) {
            assert!(brook::log::record::decode_all(&plain).is_ok());
        }
    }
});
