//! Brook's integration tests, in one binary (one link per target instead of one per file):
//! each module is what was one test file. Only `tests/mirror_shaping.rs`, a timing check that
//! must not share the cores with other tests, is a binary of its own. Run one with a filter, e.g.
//! `cargo test --test it crash::` or `cargo test --test it -- kafka_clients:: mqtt::`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

mod boards;
mod check_cli;
mod cli;
mod codec_props;
mod crash;
mod dashboard;
mod disk_full;
mod kafka;
mod kafka_clients;
mod layers;
mod limits;
mod meta_crash;
mod mirror;
mod mirror_in;
mod mirror_secure;
mod model;
mod mqtt;
mod mqtt_clients;
mod native;
mod native_cli;
mod power_loss;
mod proto_props;
mod security;
mod status_page;
mod tls;
mod write_path;
