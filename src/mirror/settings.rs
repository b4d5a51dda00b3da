//! A `[[mirror]]` entry ([`MirrorConfig`]): its settings, their defaults and their checks (every
//! error names the key). The settings that take one of a few values are enums parsed by serde
//! (a value outside them is refused when the file is read, naming the line).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Link;
use crate::topic_filter::glob;
use crate::units::{BadSetting, ByteSize, HumanDuration};

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

/// One `[[mirror]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    pub name: String,
    /// `kafka`, `mqtt` or `brook` (required).
    pub kind: Option<UpstreamKind>,
    /// Upstream addresses (`host:port`): Kafka bootstrap servers, an MQTT broker (the first is
    /// used), or Brook native listeners.
    pub upstream: Vec<String>,
    /// Local topics to mirror: names, or patterns with `*` (any run of characters).
    pub topics: Vec<String>,
    /// `out` (local topics sent upstream) or `in` (upstream topics brought into local ones).
    pub direction: Direction,
    /// Out: the upstream topic name; `{node}` and `{topic}` are replaced, and for MQTT `{key}`
    /// (the record key), e.g. `site/{node}/{key}`. In: the local topic name (`{topic}` is the
    /// upstream name; for MQTT one plain name, the MQTT topic becomes the record key).
    pub topic_template: String,
    /// This device's name in the origin headers and templates; empty: the host name.
    pub node: String,
    /// Records per batch sent.
    pub batch_records: usize,
    /// Out: once caught up, how long to wait for a batch to fill before sending what there is
    /// (fewer, larger sends on a metered link); `0`: send as soon as records are durable.
    pub linger: HumanDuration,
    /// Kafka only: `none`, `gzip` or `snappy`.
    pub compression: KafkaCompression,
    /// Kafka and Brook: create missing upstream topics (with the local partition count).
    pub create_topics: bool,
    pub cursor_flush: HumanDuration,
    pub backoff_min: HumanDuration,
    pub backoff_max: HumanDuration,
    /// Bytes per second for the whole mirror (record key, value and headers, before
    /// compression); `0` or `"none"`: as fast as the upstream takes them.
    pub bandwidth_limit: ByteSize,
    /// The user name to log in with upstream (Kafka: over SASL; empty: anonymous).
    pub username: String,
    /// A file holding the password (its first line), rather than the config in plain text.
    pub password_file: Option<std::path::PathBuf>,
    /// An environment variable holding the password.
    pub password_env: String,
    /// Kafka: the SASL mechanism for `username`: `plain` (default), `scram-sha-256` or
    /// `scram-sha-512`.
    pub sasl_mechanism: SaslMechanism,
    /// MQTT: the protocol spoken upstream, `5` (default) or `3.1.1` (for brokers without MQTT 5;
    /// no origin headers then, 3.1.1 has nowhere to carry them).
    pub mqtt_version: MqttVersion,
    /// Encrypt the link with TLS. Default false.
    pub tls: bool,
    /// With `tls`: the CAs (PEM) to trust. Unset: the system bundle
    /// (`/etc/ssl/certs/ca-certificates.crt`).
    pub ca_file: Option<std::path::PathBuf>,
    /// With `tls`: a client certificate chain and its key (PEM), for upstreams that require one.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// Share of the bandwidth limit per topic name or pattern (1 to 1000; unlisted topics: 1).
    /// The longest matching pattern wins. Topics with backlog split the limit in proportion.
    pub priority: BTreeMap<String, u32>,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            name: String::new(),
            kind: None,
            upstream: Vec::new(),
            topics: Vec::new(),
            direction: Direction::Out,
            topic_template: "{topic}".into(),
            node: String::new(),
            batch_records: 1000,
            linger: HumanDuration::millis(0),
            compression: KafkaCompression::None,
            create_topics: true,
            cursor_flush: HumanDuration::secs(1),
            backoff_min: HumanDuration::millis(200),
            backoff_max: HumanDuration::secs(30),
            bandwidth_limit: ByteSize(0),
            username: String::new(),
            password_file: None,
            password_env: String::new(),
            sasl_mechanism: SaslMechanism::Plain,
            mqtt_version: MqttVersion::V5,
            tls: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            priority: BTreeMap::new(),
        }
    }
}

impl MirrorConfig {
    /// MQTT 3.1.1 upstream rather than MQTT 5 (`mqtt_version`, checked at load).
    pub fn mqtt_311(&self) -> bool {
        self.mqtt_version == MqttVersion::V311
    }

    /// Checks one entry; errors name the key.
    pub fn validate(&self, i: usize) -> Result<(), BadSetting> {
        let at = if self.name.is_empty() {
            format!("mirror[{i}]")
        } else {
            format!("mirror {:?}", self.name)
        };
        if self.name.is_empty() || self.name.contains('\0') {
            return Err(BadSetting::new(
                format!("{at}.name"),
                "required (a short unique name)",
            ));
        }
        let Some(kind) = self.kind else {
            return Err(BadSetting::new(
                format!("{at}.kind"),
                "required: \"kafka\", \"mqtt\" or \"brook\"",
            ));
        };
        if self.topic_template.contains("{key}")
            && kind != UpstreamKind::Mqtt
            && self.direction == Direction::Out
        {
            return Err(BadSetting::new(
                format!("{at}.topic_template"),
                "{key} is for kind = \"mqtt\" (one MQTT topic per record key)",
            ));
        }
        if self.upstream.is_empty() {
            return Err(BadSetting::new(
                format!("{at}.upstream"),
                "at least one host:port",
            ));
        }
        for u in &self.upstream {
            let ok = u
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(BadSetting::new(
                    format!("{at}.upstream"),
                    format!("{u:?} is not host:port"),
                ));
            }
        }
        if self.topics.is_empty() {
            return Err(BadSetting::new(
                format!("{at}.topics"),
                "at least one topic name or pattern",
            ));
        }
        if self.direction == Direction::In {
            if kind == UpstreamKind::Mqtt && self.topic_template.contains('{') {
                return Err(BadSetting::new(
                    format!("{at}.topic_template"),
                    format!(
                        "{:?}: an MQTT mirror in writes one local topic (e.g. \"commands\"; the MQTT topic becomes the record key)",
                        self.topic_template
                    ),
                ));
            }
            if self.topic_template.contains("{key}") {
                return Err(BadSetting::new(
                    format!("{at}.topic_template"),
                    "{key} is for mirrors out",
                ));
            }
            if self.bandwidth_limit.0 != 0 || !self.priority.is_empty() || !self.linger.0.is_zero()
            {
                return Err(BadSetting::new(
                    at.clone(),
                    "bandwidth_limit, priority and linger are for mirrors out",
                ));
            }
        }
        if !self.topic_template.contains("{topic}") && self.topics.len() > 1 {
            return Err(BadSetting::new(
                format!("{at}.topic_template"),
                format!(
                    "{:?}: must contain {{topic}} when several topics are mirrored",
                    self.topic_template
                ),
            ));
        }
        if !(1..=100_000).contains(&self.batch_records) {
            return Err(BadSetting::new(
                format!("{at}.batch_records"),
                "1 to 100000",
            ));
        }
        if self.compression != KafkaCompression::None && kind != UpstreamKind::Kafka {
            return Err(BadSetting::new(
                format!("{at}.compression"),
                "only for kind = \"kafka\"",
            ));
        }
        if self.cursor_flush.0.is_zero() || self.backoff_min.0.is_zero() {
            return Err(BadSetting::new(
                format!("{at}.cursor_flush / backoff_min"),
                "must be greater than zero",
            ));
        }
        if self.backoff_max.0 < self.backoff_min.0 {
            return Err(BadSetting::new(
                format!("{at}.backoff_max"),
                "is below backoff_min",
            ));
        }
        if self.sasl_mechanism != SaslMechanism::Plain && kind != UpstreamKind::Kafka {
            return Err(BadSetting::new(
                format!("{at}.sasl_mechanism"),
                "only for kind = \"kafka\"",
            ));
        }
        if self.mqtt_version != MqttVersion::V5 && kind != UpstreamKind::Mqtt {
            return Err(BadSetting::new(
                format!("{at}.mqtt_version"),
                "only for kind = \"mqtt\"",
            ));
        }
        if !self.tls
            && (self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some())
        {
            return Err(BadSetting::new(
                at.clone(),
                "ca_file, cert_file and key_file are for a TLS link: set tls = true",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(BadSetting::new(
                at.clone(),
                "cert_file and key_file go together",
            ));
        }
        if (self.password_file.is_some() || !self.password_env.is_empty())
            && self.username.is_empty()
        {
            return Err(BadSetting::new(
                format!("{at}.password_file / password_env"),
                "set username too",
            ));
        }
        if self.password_file.is_some() && !self.password_env.is_empty() {
            return Err(BadSetting::new(
                at.clone(),
                "password_file and password_env both set; choose one",
            ));
        }
        Link::load(self).map_err(|e| e.under(&at))?;
        if self.linger.0 > Duration::from_secs(3600) {
            return Err(BadSetting::new(
                format!("{at}.linger"),
                format!("{}: at most 1h", self.linger),
            ));
        }
        if self.bandwidth_limit.0 != 0 && self.bandwidth_limit.0 < 1024 {
            return Err(BadSetting::new(
                format!("{at}.bandwidth_limit"),
                format!(
                    "{}: at least 1KiB per second (or \"none\")",
                    self.bandwidth_limit
                ),
            ));
        }
        for (pattern, p) in &self.priority {
            if !(1..=1000).contains(p) {
                return Err(BadSetting::new(
                    format!("{at}.priority.{pattern:?}"),
                    format!("{p}: 1 to 1000"),
                ));
            }
            if !self
                .topics
                .iter()
                .any(|t| glob(pattern, t) || glob(t, pattern))
            {
                return Err(BadSetting::new(
                    format!("{at}.priority.{pattern:?}"),
                    "matches none of this mirror's topics",
                ));
            }
        }
        Ok(())
    }

    pub(super) fn matches(&self, topic: &str) -> bool {
        self.topics.iter().any(|p| glob(p, topic))
    }

    /// Whether this mirror sends local `topic` upstream (so retention must wait for it).
    pub(super) fn sends(&self, topic: &str) -> bool {
        self.direction == Direction::Out && self.matches(topic)
    }

    /// User name and password for the upstream, if a user name is set: the password comes from
    /// `password_file` (first line) or `password_env` (else empty). Errors name the key.
    pub fn credentials(&self) -> Result<Option<(String, String)>, BadSetting> {
        if self.username.is_empty() {
            return Ok(None);
        }
        let password = if let Some(f) = &self.password_file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| BadSetting::new("password_file", format!("{:?}: {e}", f.display())))?;
            text.lines().next().unwrap_or("").to_string()
        } else if !self.password_env.is_empty() {
            std::env::var(&self.password_env).map_err(|_| {
                BadSetting::new(
                    "password_env",
                    format!("{:?}: the variable is not set", self.password_env),
                )
            })?
        } else {
            String::new()
        };
        Ok(Some((self.username.clone(), password)))
    }

    /// The topic's share of the bandwidth limit: its longest matching priority pattern, or 1.
    pub fn priority_of(&self, topic: &str) -> u32 {
        self.priority
            .iter()
            .filter(|(p, _)| glob(p, topic))
            .max_by_key(|(p, _)| p.len())
            .map_or(1, |(_, v)| *v)
    }
}

/// Checks every mirror and that names are unique.
pub fn validate(mirrors: &[MirrorConfig]) -> Result<(), BadSetting> {
    for (i, m) in mirrors.iter().enumerate() {
        m.validate(i)?;
        if mirrors[..i].iter().any(|o| o.name == m.name) {
            return Err(BadSetting::new(
                format!("mirror {:?}.name", m.name),
                "used twice",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_topic_names() {
        assert!(glob("telemetry", "telemetry"));
        assert!(!glob("telemetry", "telemetry2"));
        assert!(glob("sensor-*", "sensor-7"));
        assert!(glob("*", "anything"));
        assert!(glob("a*b*c", "a-x-b-y-c"));
        assert!(!glob("a*b", "a-x-c"));
    }

    #[test]
    fn the_minimal_form_is_valid_and_bad_keys_are_named() {
        let m: MirrorConfig = toml::from_str(
            "name = \"cloud\"\nkind = \"kafka\"\nupstream = [\"central.example:9092\"]\ntopics = [\"telemetry\"]",
        )
        .expect("parse");
        validate(std::slice::from_ref(&m)).expect("valid");
        let mut bad = m.clone();
        bad.kind = None;
        assert!(
            validate(&[bad])
                .unwrap_err()
                .to_string()
                .contains("kind: required")
        );
        // Values outside a setting's few are refused when the file is read, naming them.
        for (key, value) in [
            ("kind", "amqp"),
            ("direction", "sideways"),
            ("compression", "lz4"),
            ("sasl_mechanism", "scram-md5"),
            ("mqtt_version", "3"),
        ] {
            let text = format!(
                "name = \"c\"\nupstream = [\"h:1\"]\ntopics = [\"t\"]\n{key} = \"{value}\""
            );
            let e = toml::from_str::<MirrorConfig>(&text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(value) && e.contains("expected"), "{key}: {e}");
        }
        let mut bad = m.clone();
        bad.upstream = vec!["nohost".into()];
        assert!(
            validate(&[bad])
                .unwrap_err()
                .to_string()
                .contains("upstream")
        );
        let mut inward = m.clone();
        inward.direction = Direction::In;
        validate(std::slice::from_ref(&inward)).expect("a Kafka mirror in");
        inward.kind = Some(UpstreamKind::Mqtt);
        inward.topic_template = "{topic}".into();
        assert!(
            validate(&[inward])
                .unwrap_err()
                .to_string()
                .contains("topic_template")
        );
        assert!(
            validate(&[m.clone(), m])
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn link_keys_are_checked_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = || MirrorConfig {
            name: "cloud".into(),
            kind: Some(UpstreamKind::Kafka),
            upstream: vec!["central.example:9093".into()],
            topics: vec!["telemetry".into()],
            ..MirrorConfig::default()
        };
        let err = |m: MirrorConfig| validate(&[m]).unwrap_err().to_string();
        let mut m = base();
        m.ca_file = Some(dir.path().join("ca.pem"));
        assert!(err(m).contains("set tls = true"));
        let mut m = base();
        m.tls = true;
        m.ca_file = Some(dir.path().join("missing.pem"));
        let e = err(m);
        assert!(e.contains("ca_file") && e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let mut m = base();
        m.tls = true;
        m.ca_file = Some(empty);
        assert!(err(m).contains("no certificate"));
        let mut m = base();
        m.tls = true;
        m.cert_file = Some(dir.path().join("c.pem"));
        assert!(err(m).contains("cert_file and key_file go together"));
        let mut m = base();
        m.kind = Some(UpstreamKind::Mqtt);
        m.sasl_mechanism = SaslMechanism::ScramSha256;
        assert!(err(m).contains("only for kind"));
        let mut m = base();
        m.mqtt_version = MqttVersion::V311;
        assert!(err(m).contains("mqtt_version: only for kind"));
        let mut m = base();
        m.username = "gw1".into();
        m.password_env = "BROOK_TEST_SURELY_UNSET_VARIABLE".into();
        assert!(err(m).contains("password_env"));
        let mut m = base();
        m.username = "gw1".into();
        m.sasl_mechanism = SaslMechanism::ScramSha512;
        validate(&[m]).expect("a Kafka login is valid now");
    }
}
