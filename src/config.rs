//! `brook.toml`: one [`Config`] with serde defaults, unknown keys rejected by name, and a
//! [`Config::validate`] step for the rules that span keys. [`DEFAULT_CONFIG`] is the commented
//! default that `brook config default` prints; a test keeps it equal to `Config::default()`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::log::{StoreOptions, TopicConfig};
use crate::units::Narrow;
use crate::units::{BadSetting, ByteSize, HumanDuration};

/// The commented default configuration, shipped in the binary.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where topics and metadata live. Default "./brook-data".
    pub data_dir: PathBuf,
    /// Store-wide storage settings.
    pub log: StoreOptions,
    /// Settings for topics created without their own.
    pub topic_defaults: TopicConfig,
    /// Where the front ends listen.
    pub listeners: Listeners,
    /// Limits of the native protocol listener.
    pub native: NativeConfig,
    /// The MQTT front end: limits, durability of acknowledgements, routing into log topics.
    pub mqtt: crate::server::mqtt::MqttConfig,
    /// The Kafka API listener: advertised address, limits, topic auto-creation.
    pub kafka: crate::server::kafka::KafkaConfig,
    /// Users, access rules, the HTTP token, login limits.
    pub auth: crate::auth::AuthConfig,
    /// The certificate of the TLS listeners, client certificates.
    pub tls: crate::net::tls::TlsConfig,
    /// Upstream mirrors (`[[mirror]]`).
    pub mirror: Vec<crate::mirror::MirrorConfig>,
    /// Threads.
    pub runtime: RuntimeConfig,
}

/// Threads of the async runtime (the log's flusher threads come on top: a pool of 2-4, up to
/// 16 while many partitions sync at once).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads serving connections. Default 0: one per two CPU cores, at least one
    /// ([`RuntimeConfig::workers`]).
    pub worker_threads: usize,
}

impl RuntimeConfig {
    /// The worker threads to start: `worker_threads`, or with 0 one per two cores (at least
    /// one). The other cores are the flusher threads' and the kernel's (TCP, the filesystem):
    /// on a 2-core machine a second worker made 8 MQTT publishers at QoS 0 cost 40 % more CPU
    /// for 15 % less throughput, the workers waking each other to steal work (BENCHMARKS.md,
    /// "Worker threads").
    pub fn workers(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    }
}

/// Listener addresses. Loopback by default; `""` turns a listener off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listeners {
    /// Native protocol. Default "127.0.0.1:7420".
    pub native: String,
    /// HTTP: /metrics, /healthz, /api. Default "127.0.0.1:7421".
    pub http: String,
    /// MQTT 3.1.1 and 5.0. Default "127.0.0.1:1883".
    pub mqtt: String,
    /// Kafka API. Default "127.0.0.1:9092".
    pub kafka: String,
    /// Native protocol over TLS (`[tls]`). Default "": none.
    pub native_tls: String,
    /// MQTT over TLS (`[tls]`), e.g. "0.0.0.0:8883". Default "": none.
    pub mqtt_tls: String,
    /// HTTP over TLS (`[tls]`). Default "": none.
    pub http_tls: String,
    /// Kafka API over TLS (`[tls]`), e.g. "0.0.0.0:9093". Default "": none.
    pub kafka_tls: String,
    /// MQTT over WebSockets (subprotocol `mqtt`), e.g. "0.0.0.0:8080". Default "": none.
    pub mqtt_ws: String,
    /// MQTT over WebSockets over TLS (`[tls]`), e.g. "0.0.0.0:8081". Default "": none.
    pub mqtt_wss: String,
}

impl Listeners {
    /// Whether any TLS listener is configured.
    pub fn any_tls(&self) -> bool {
        !(self.native_tls.is_empty()
            && self.mqtt_tls.is_empty()
            && self.http_tls.is_empty()
            && self.kafka_tls.is_empty()
            && self.mqtt_wss.is_empty())
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            native: "127.0.0.1:7420".into(),
            http: "127.0.0.1:7421".into(),
            mqtt: "127.0.0.1:1883".into(),
            kafka: "127.0.0.1:9092".into(),
            native_tls: String::new(),
            mqtt_tls: String::new(),
            http_tls: String::new(),
            kafka_tls: String::new(),
            mqtt_ws: String::new(),
            mqtt_wss: String::new(),
        }
    }
}

/// Limits of the native protocol listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NativeConfig {
    /// Connections open at once; more are refused. Default 1024.
    pub max_connections: usize,
    /// A connection silent this long is closed, and one that reads none of its answers this
    /// long. Default "10m".
    pub idle_timeout: HumanDuration,
    /// Largest frame accepted. Default "16MiB"; at least 64KiB.
    pub max_frame_size: ByteSize,
    /// Requests of one connection processed at once (pipelining). Default 64.
    pub max_in_flight: usize,
}

impl Default for NativeConfig {
    fn default() -> Self {
        NativeConfig {
            max_connections: 1024,
            idle_timeout: HumanDuration::secs(600),
            max_frame_size: ByteSize::mib(16),
            max_in_flight: 64,
        }
    }
}

impl NativeConfig {
    pub fn limits(&self) -> crate::server::native::NativeLimits {
        crate::server::native::NativeLimits {
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout.0,
            max_frame: self.max_frame_size.bytes().sat_usize(),
            max_in_flight: self.max_in_flight,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./brook-data"),
            log: StoreOptions::default(),
            topic_defaults: TopicConfig::default(),
            listeners: Listeners::default(),
            native: NativeConfig::default(),
            mqtt: crate::server::mqtt::MqttConfig::default(),
            kafka: crate::server::kafka::KafkaConfig::default(),
            auth: crate::auth::AuthConfig::default(),
            tls: crate::net::tls::TlsConfig::default(),
            mirror: Vec::new(),
            runtime: RuntimeConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: Invalid,
    },
}

/// Why settings cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error(transparent)]
    Setting(#[from] BadSetting),
    #[error("topic_defaults: {0}")]
    TopicDefaults(#[source] crate::log::LogError),
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

impl Config {
    /// Parses TOML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate().map_err(|source| ConfigError::Invalid {
            path: origin.to_path_buf(),
            source,
        })?;
        Ok(cfg)
    }

    /// Reads every file the settings name, as `brook serve` does at start: the users, ACL and
    /// HTTP token files and, with a TLS listener on, the certificate, key and client CA (a
    /// mirror's files are read by [`Config::validate`]). `brook config check` runs it, so a
    /// missing, unreadable or malformed file fails the check, not the service's start.
    /// Relative paths are resolved against the current directory, as `brook serve` does.
    pub fn check_files(&self) -> Result<(), Invalid> {
        crate::auth::Auth::open(&self.auth)?;
        if self.listeners.any_tls() {
            crate::net::tls::TlsServer::open(&self.tls)?;
        }
        Ok(())
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks the rules that span keys. The message names the key.
    /// The listeners as the login rules see them (see [`crate::auth::AuthConfig::validate`]).
    fn exposed_listeners(&self) -> Vec<crate::auth::Exposed<'_>> {
        use crate::auth::{Exposed, Serves};
        let l = &self.listeners;
        // Devices that must show a certificate whose CN is their user name are logged in.
        let by_cert = self.tls.require_client_cert && self.tls.cert_cn_as_username;
        let data = |key, addr, certificate_logs_in| Exposed {
            key,
            addr,
            serves: Serves::Data {
                certificate_logs_in,
            },
        };
        let http = |key, addr| Exposed {
            key,
            addr,
            serves: Serves::Http,
        };
        vec![
            data("listeners.native", &l.native, false),
            data("listeners.mqtt", &l.mqtt, false),
            data("listeners.kafka", &l.kafka, false),
            data("listeners.mqtt_ws", &l.mqtt_ws, false),
            data("listeners.native_tls", &l.native_tls, by_cert),
            data("listeners.mqtt_wss", &l.mqtt_wss, by_cert),
            data("listeners.mqtt_tls", &l.mqtt_tls, by_cert),
            data("listeners.kafka_tls", &l.kafka_tls, by_cert),
            http("listeners.http", &l.http),
            http("listeners.http_tls", &l.http_tls),
        ]
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        let bad = |key: &str, problem: String| Err(BadSetting::new(key, problem).into());
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty".into());
        }
        self.topic_defaults
            .validate("topic_defaults")
            .map_err(Invalid::TopicDefaults)?;
        if self.log.flush_interval.0.is_zero() {
            return bad("log.flush_interval", "must be greater than zero".into());
        }
        if self.log.write_buffer.bytes() < 4096 || self.log.write_buffer.bytes() > 64 << 20 {
            return bad(
                "log.write_buffer",
                format!("{} is outside 4KiB..=64MiB", self.log.write_buffer),
            );
        }
        for (key, addr) in [
            ("listeners.native", &self.listeners.native),
            ("listeners.http", &self.listeners.http),
            ("listeners.mqtt", &self.listeners.mqtt),
            ("listeners.kafka", &self.listeners.kafka),
            ("listeners.native_tls", &self.listeners.native_tls),
            ("listeners.mqtt_tls", &self.listeners.mqtt_tls),
            ("listeners.http_tls", &self.listeners.http_tls),
            ("listeners.kafka_tls", &self.listeners.kafka_tls),
            ("listeners.mqtt_ws", &self.listeners.mqtt_ws),
            ("listeners.mqtt_wss", &self.listeners.mqtt_wss),
        ] {
            if addr.is_empty() {
                continue; // off
            }
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return bad(
                    key,
                    format!("{addr:?} is not an IP address and port (e.g. \"127.0.0.1:7420\")"),
                );
            }
        }
        self.tls.validate(self.listeners.any_tls())?;
        self.auth.validate(&self.exposed_listeners())?;
        if self.runtime.worker_threads > 256 {
            return bad(
                "runtime.worker_threads",
                format!("{} is above 256", self.runtime.worker_threads),
            );
        }
        if self.native.max_connections == 0 {
            return bad("native.max_connections", "must be at least 1".into());
        }
        if self.native.max_in_flight == 0 {
            return bad("native.max_in_flight", "must be at least 1".into());
        }
        if self.native.max_frame_size.bytes() < 64 * 1024 {
            return bad(
                "native.max_frame_size",
                format!("{} is below 64KiB", self.native.max_frame_size),
            );
        }
        if self.native.idle_timeout.0.is_zero() {
            return bad("native.idle_timeout", "must be greater than zero".into());
        }
        self.mqtt.validate()?;
        let need = crate::server::mqtt::message::batch_bound(self.mqtt.max_packet_size.bytes());
        if need > self.topic_defaults.segment_size.bytes() {
            return bad(
                "mqtt.max_packet_size",
                format!(
                    "{} does not fit topic_defaults.segment_size = {}: a packet becomes one log batch of up to {need} bytes (headers included); lower the one or raise the other",
                    self.mqtt.max_packet_size, self.topic_defaults.segment_size
                ),
            );
        }
        self.kafka.validate()?;
        crate::mirror::validate(&self.mirror)?;
        if let Some(max) = self.log.max_size.limit() {
            let seg = self.topic_defaults.segment_size.bytes();
            if max < 2 * seg {
                return bad(
                    "log.max_size",
                    format!(
                        "{} is below two segments of topic_defaults.segment_size ({})",
                        self.log.max_size, self.topic_defaults.segment_size
                    ),
                );
            }
        }
        Ok(())
    }

    /// Where the log's topics live.
    pub fn topics_dir(&self) -> PathBuf {
        self.data_dir.join("topics")
    }

    /// Where the metadata store lives.
    pub fn meta_dir(&self) -> PathBuf {
        self.data_dir.join("meta")
    }

    /// What the broker takes of it.
    pub fn broker_options(&self) -> crate::broker::BrokerOptions {
        crate::broker::BrokerOptions {
            data_dir: self.data_dir.clone(),
            log: self.log.clone(),
            topic_defaults: self.topic_defaults.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthConfig;

    fn lan() -> Listeners {
        Listeners {
            native: "0.0.0.0:7420".into(),
            http: "127.0.0.1:7421".into(),
            mqtt: "127.0.0.1:1883".into(),
            kafka: "127.0.0.1:9092".into(),
            ..Listeners::default()
        }
    }

    /// The login rules of `auth` against `listeners` (and default TLS settings).
    fn guard(auth: &AuthConfig, listeners: &Listeners) -> Result<(), crate::auth::AuthError> {
        let c = Config {
            auth: auth.clone(),
            listeners: listeners.clone(),
            ..Config::default()
        };
        auth.validate(&c.exposed_listeners())
    }

    #[test]
    fn a_network_listener_needs_a_login_or_an_explicit_open_door() {
        let none = AuthConfig::default();
        assert!(guard(&none, &Listeners::default()).is_ok());
        let e = guard(&none, &lan()).unwrap_err().to_string();
        assert!(
            e.contains("listeners.native") && e.contains("allow_anonymous = true"),
            "{e}"
        );
        assert!(e.contains("brook passwd"), "{e}");
        let with_users = AuthConfig {
            users_file: Some("users".into()),
            ..AuthConfig::default()
        };
        assert!(guard(&with_users, &lan()).is_ok());
        assert!(!with_users.anonymous_allowed());
        let open = AuthConfig {
            allow_anonymous: Some(true),
            ..AuthConfig::default()
        };
        assert!(guard(&open, &lan()).is_ok());
        let l = Listeners {
            http: "[::]:7421".into(),
            ..Listeners::default()
        };
        let e = guard(&with_users, &l).unwrap_err().to_string();
        assert!(e.contains("auth.http_token_file"), "{e}");
        // The Kafka listener has logins (SASL) like the others.
        let l = Listeners {
            kafka: "10.0.0.1:9092".into(),
            ..Listeners::default()
        };
        assert!(guard(&with_users, &l).is_ok());
        let e = guard(&none, &l).unwrap_err().to_string();
        assert!(e.contains("listeners.kafka"), "{e}");
        let closed = AuthConfig {
            allow_anonymous: Some(false),
            ..AuthConfig::default()
        };
        let e = guard(&closed, &Listeners::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no client could log in"), "{e}");
    }

    #[test]
    fn embedded_default_matches_code_default() {
        let parsed = Config::parse(DEFAULT_CONFIG, Path::new("default")).expect("default parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn limits_the_reader_cannot_serve_are_refused() {
        let e = Config::parse(
            "[mqtt]\nmax_packet_size = \"256MiB\"\n",
            Path::new("x.toml"),
        )
        .expect_err("over MQTT's and the log's maximum");
        assert!(e.to_string().contains("mqtt.max_packet_size"), "{e}");
        let e = Config::parse("[mqtt]\nmax_packet_size = \"50MiB\"\n", Path::new("x"))
            .expect_err("a packet larger than a segment");
        assert!(e.to_string().contains("topic_defaults.segment_size"), "{e}");
        assert!(
            Config::parse(
                "[mqtt]\nmax_packet_size = \"50MiB\"\n[topic_defaults]\nsegment_size = \"64MiB\"\n",
                Path::new("x")
            )
            .is_ok()
        );
        let e = Config::parse(
            "[topic_defaults]\nsegment_size = \"256MiB\"\nmax_batch_size = \"100MiB\"\n",
            Path::new("x.toml"),
        )
        .expect_err("over the reader's frame cap");
        assert!(e.to_string().contains("max_batch_size"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[log]\nmax_sise = \"1GiB\"\n", Path::new("x.toml"))
            .expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("max_sise"), "{msg}");
        assert!(msg.contains("x.toml"), "{msg}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::parse(
            "[topic_defaults]\nsegment_size = \"8 parsecs\"\n",
            Path::new("x.toml"),
        )
        .expect_err("bad unit");
        assert!(err.to_string().contains("segment_size"), "{err}");
        let err = Config::parse(
            "[topic_defaults]\nsegment_size = \"1KiB\"\n",
            Path::new("x.toml"),
        )
        .expect_err("too small");
        assert!(err.to_string().contains("segment_size"), "{err}");
        let err = Config::parse(
            "[topic_defaults]\nretention_size = \"10MiB\"\n",
            Path::new("x.toml"),
        )
        .expect_err("below two segments");
        assert!(err.to_string().contains("retention_size"), "{err}");
        let err = Config::parse("[mqtt]\nsync_delay = \"2s\"\n", Path::new("x.toml"))
            .expect_err("a sync delay above a second");
        assert!(err.to_string().contains("mqtt.sync_delay"), "{err}");
    }
}
