//! Fuzz the Kafka listener's decoders: every request a Kafka client sends goes through the
//! header parser, the `kafka-protocol` body decoder of its API (Brook's bounded copy, see
//! `vendor/kafka-protocol/BROOK.md`), and for Produce Brook's own record batch parser; SASL
//! bytes go through the PLAIN and SCRAM parsers. Input: one request without its size prefix.
//! Run: `cargo +nightly fuzz run kafka_request` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = brook::server::kafka::codec::decode_request(data);
});
