//! The settings of a `[[mirror]]` entry that take one of a few values, parsed by serde (a
//! value outside them is refused when the file is read, naming the line).

use serde::{Deserialize, Serialize};

/// What the upstream is (`kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// A Kafka cluster (or anything speaking its API).
    Kafka,
    /// An MQTT broker.
    Mqtt,
    /// Another Brook, over the native protocol.
    Brook,
}

/// Which way records go (`direction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Local topics sent upstream.
    #[default]
    Out,
    /// Upstream topics brought into local ones.
    In,
}

/// The codec of batches sent to a Kafka upstream (`compression`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaCompression {
    #[default]
    None,
    Gzip,
    Snappy,
}

/// The SASL mechanism of a Kafka login (`sasl_mechanism`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[default]
    #[serde(rename = "plain")]
    Plain,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

/// The MQTT protocol spoken upstream (`mqtt_version`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MqttVersion {
    #[default]
    #[serde(rename = "5")]
    V5,
    #[serde(rename = "3.1.1")]
    V311,
}
