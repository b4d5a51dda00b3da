//! # Brook
//!
//! A small-footprint streaming broker for edge and IoT devices: Kafka's model (topics,
//! partitions, offsets) in bounded, flash-friendly segments on a single ARM board.
//!
//! | module | job |
//! |---|---|
//! | [`broker`] | the core API every front end calls: produce, fetch (long poll), admin, groups |
//! | [`log`] | the storage engine: records, batches, segments, partitions, the store |
//! | [`proto`] | the native wire protocol: frames and messages (no_std) |
//! | [`meta`] | small state that is not a log (topic configs now), on sled behind a trait |
//! | [`client`] | async Rust client for the native protocol: producer, consumer, groups |
//! | [`config`] | the `brook.toml` file: defaults, validation, the commented default |
//! | [`check`] | `brook check`: verifies every segment of a data directory |
//! | [`server`] | `brook serve`: opens everything, housekeeping, graceful shutdown |
//! | [`tools`] | the CLI's client commands: topics, produce, consume, groups |
//! | [`bench`] | `brook bench ...`: measured throughput, latency, write amplification |
//! | [`units`] | human-readable sizes and durations |
//!
//! The path of a record: a producer (the [`client`], or anything speaking [`proto`]) sends a
//! produce frame to the native listener ([`server::native`]), which checks the frame and hands the
//! batch to [`broker::Broker::produce`]. The broker picks the partition (explicit, by key with
//! Kafka's murmur2, or round robin) through [`log::Store::append`], which checks the store's
//! budget and free-space floor; [`log::Partition`] frames the batch (`len`, CRC-32C, header,
//! records), buffers it, and its flusher thread writes and fsyncs it in a group commit according
//! to the requested [`log::Durability`], then the answer goes back. Consumers fetch (long poll)
//! and get the stored frames back byte for byte; groups commit the next offset to read in
//! [`meta`].

pub mod bench;
pub mod broker;
pub mod check;
pub mod client;
pub mod config;
pub mod log;
pub mod meta;
pub mod proto;
pub mod server;
pub mod tools;
pub mod units;
