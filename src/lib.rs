//! # Brook
//!
//! A small-footprint streaming broker for edge and IoT devices: Kafka's model (topics,
//! partitions, offsets) in bounded, flash-friendly segments on a single ARM board.
//!
//! | module | job |
//! |---|---|
//! | [`auth`] | users (password hashes), SASL, ACL rules, login backoff, connection admission, the HTTP token: every front end asks here |
//! | [`broker`] | the core API every front end calls: produce, fetch (long poll), admin, groups; takes [`broker::BrokerOptions`], not the whole config |
//! | [`log`] | the storage engine: records, batches, segments, partitions, the store |
//! | [`memory`] | the process's own memory: allocator figures, resident set, giving freed memory back |
//! | [`report`] | the JSON documents shown to people (HTTP API, CLI `--json`): one set of field names |
//! | [`proto`] | the native wire protocol: frames and messages (no_std), and frames on a connection ([`proto::stream`], shared by the client and the listener) |
//! | [`net`] | networking shared by listeners, client and mirror: TLS configs and streams, one read for a connection that holds no buffer while quiet |
//! | [`meta`] | small state that is not a log (topic configs, group offsets, MQTT sessions and retained messages, the Kafka producer-id block), on sled behind a trait |
//! | [`client`] | async Rust client for the native protocol: producer, consumer, groups |
//! | [`config`] | the `brook.toml` file: assembles the sections of the modules below, defaults, validation, the commented default |
//! | [`check`] | `brook check`: verifies every segment of a data directory |
//! | [`mirror`] | upstream mirroring: cursors, the per-partition send loop, Kafka and Brook sinks, status |
//! | [`serve`] | `brook serve`: the one module that takes the whole config; opens the broker, starts the front ends and mirrors, housekeeping and compaction, graceful shutdown |
//! | [`server`] | the front ends: native, MQTT ([`server::mqtt`]), Kafka API ([`server::kafka`]) and HTTP ([`server::http`]: the status page, metrics, health, JSON API) listeners, systemd notification |
//! | [`topic_filter`] | MQTT topic names and filters, the subscription trie, `*` globs: shared by ACLs, MQTT and the mirror |
//! | [`units`] | human-readable sizes and durations, and the error of a setting that cannot be used |
//!
//! The `brook` binary (`src/bin/brook/`) is the command line on top: argument parsing, the
//! client commands (`topics`, `produce`, `consume`, `groups`, `mirror status`, `passwd`) and,
//! with the `bench` feature (on by default, left out of the ARM builds), `brook bench ...`.
//!
//! The layers point one way (`tests/it/layers.rs` checks it from the source): [`units`],
//! [`log`], [`meta`], [`proto`], [`topic_filter`], [`memory`], [`net`] and [`report`] at the bottom; [`broker`] on the
//! log and the metadata store; [`auth`] beside it; the front ends ([`server`]), the [`mirror`]
//! and the [`client`] above; [`config`] assembles the sections; only [`serve`] (and the binary)
//! takes the whole config.
//!
//! The path of a record: a producer (the [`client`], or anything speaking [`proto`]) sends a
//! produce frame to the native listener ([`server::native`]), which checks the frame and, in
//! request order, hands the batch to [`broker::Broker::produce_start`]. The broker picks the
//! partition (explicit, by key with Kafka's murmur2, or round robin) through
//! [`log::Store::append_start`], which checks the store's budget and free-space floor;
//! [`log::Partition`] frames the batch (`len`, CRC-32C, header, records) into its buffer and
//! assigns the offsets, and a flusher thread writes and fsyncs it in a group commit according to
//! the requested [`log::Durability`]; when the [`log::AppendTicket`] completes, the answer goes
//! back. Consumers fetch (long poll)
//! and get the stored frames back byte for byte; groups commit the next offset to read in
//! [`meta`]. Housekeeping (on `brook serve`'s main thread, [`serve`]) flushes and applies retention every
//! `log.flush_interval` and runs the MQTT hub's round every second; a cleaner
//! task compacts `cleanup = compact` topics ([`log::Store::compact`]) on a blocking thread every
//! `log.compaction_interval`.
//!
//! Where work runs: async workers never wait for the disk. The store's flusher threads (a pool
//! started with the first work: 2-4 when none is free, up to 16 while partitions wait; none
//! after 10 s without work) do all of each partition's writes, fsyncs, segment
//! rolls and file removals (an append only encodes into memory); reads of stored data run on the blocking pool ([`broker::Broker::fetch`],
//! the mirror, an MQTT session's read-back), except at the very end of a partition, where MQTT
//! dispatchers take the frames just written from memory ([`log::Partition::tail`]); requests
//! that write files or look up offsets by time run on the blocking pool as well.
//!
//! Over MQTT ([`server::mqtt`]), a PUBLISH becomes a record (key = MQTT topic, properties as
//! headers) of the log topic its route names; the publishes one connection reads in one turn
//! go to each partition as one batch, through the same [`broker::Broker::produce_start`]; the
//! PUBACKs wait for the configured durability. Publishing connections are held back briefly
//! while a live subscriber falls behind. A
//! dispatcher per log partition tails it and hands each record to the subscribers the trie
//! finds; a persistent session that was away reads the log back from its stored position.
//!
//! Over the Kafka API ([`server::kafka`]), each partition's record batch of a Produce is
//! checked (CRC, decompressed if need be, idempotent sequence) and becomes one Brook batch,
//! again through [`broker::Broker::produce_start`], answered once `acks` is met; a Fetch turns
//! the stored frames back into Kafka batches. Kafka consumer groups run Kafka's own protocol
//! ([`broker::kafka_groups`]) and commit into the same offsets store.

pub mod auth;
pub mod broker;
pub mod check;
pub mod client;
pub mod config;
pub mod log;
pub mod memory;
pub mod meta;
pub mod mirror;
pub mod net;
pub mod proto;
pub mod report;
pub mod serve;
pub mod server;
pub mod topic_filter;
pub mod units;
