//! How a mirror reaches its upstream: TLS (a CA bundle, optionally a client certificate for
//! mutual TLS; rustls with ring, the same provider as the listeners) and a login (MQTT and
//! Brook: user name and password; Kafka: SASL PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512), the
//! password read from a file or an environment variable rather than the config.
//!
//! The files are read once when the mirror starts (shared by all its partition tasks); a
//! problem then (a CA file gone since the config was checked) fails every connection attempt
//! with that reason, shown in the mirror's status, and never falls back to plaintext or to no
//! login.

use super::MirrorError;
use crate::units::BadSetting;
use std::path::Path;
use std::sync::Arc;

use super::MirrorConfig;

/// Where `tls = true` looks for CAs when `ca_file` is unset (Debian, Raspberry Pi OS, Ubuntu
/// and Jetson Linux keep the system's bundle here).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The secured link settings of one mirror.
#[derive(Clone, Default)]
pub struct Link {
    tls: Option<Arc<rustls::ClientConfig>>,
    login: Option<(String, String)>,
    sasl: super::SaslMechanism,
    /// Why the settings could not be loaded: every connection attempt fails with this.
    problem: Option<MirrorError>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("tls", &self.tls.is_some())
            .field("user", &self.login.as_ref().map(|(u, _)| u))
            .field("sasl", &self.sasl)
            .field("problem", &self.problem)
            .finish()
    }
}

impl Link {
    /// Reads the CA, certificate, key and password files `cfg` names. Errors name the key.
    pub fn load(cfg: &MirrorConfig) -> Result<Link, BadSetting> {
        let login = cfg.credentials()?;
        let tls = if cfg.tls {
            let ca = cfg.ca_file.as_deref().unwrap_or(Path::new(SYSTEM_CA_FILE));
            let cert_key = match (&cfg.cert_file, &cfg.key_file) {
                (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                _ => None,
            };
            let config = crate::net::tls::client_config(ca, cert_key).map_err(|e| {
                if cfg.ca_file.is_none() {
                    BadSetting::new("ca_file (unset, so the system bundle)", e)
                } else {
                    BadSetting::new("ca_file / cert_file / key_file", e)
                }
            })?;
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Link {
            tls,
            login,
            sasl: cfg.sasl_mechanism,
            problem: None,
        })
    }

    /// [`Link::load`], or on an error (logged) a link whose every connection fails with it.
    pub fn for_mirror(cfg: &MirrorConfig) -> Arc<Link> {
        Arc::new(Link::load(cfg).unwrap_or_else(|e| {
            tracing::error!(mirror = %cfg.name, "{e}");
            Link {
                problem: Some(e.into()),
                ..Link::default()
            }
        }))
    }

    /// `Err` with the load problem, if any: the caller must not connect.
    pub fn usable(&self) -> Result<(), MirrorError> {
        match &self.problem {
            Some(p) => Err(p.clone()),
            None => Ok(()),
        }
    }

    /// User name and password (MQTT, Brook).
    pub fn login(&self) -> Option<&(String, String)> {
        self.login.as_ref()
    }

    /// The Brook client's TLS settings.
    pub fn brook_tls(&self) -> Option<crate::client::ClientTls> {
        self.tls
            .as_ref()
            .map(|c| crate::client::ClientTls::with_config(Arc::clone(c)))
    }

    /// The rustls configuration for the Kafka client.
    pub fn kafka_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    /// The Kafka SASL settings (PLAIN unless `sasl_mechanism` says otherwise).
    pub fn kafka_sasl(&self) -> Option<rskafka::client::SaslConfig> {
        use rskafka::client::{Credentials, SaslConfig};
        let (user, password) = self.login.clone()?;
        let c = Credentials::new(user, password);
        Some(match self.sasl {
            super::SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(c),
            super::SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(c),
            super::SaslMechanism::Plain => SaslConfig::Plain(c),
        })
    }

    /// The MQTT client's transport: TLS with this link's configuration, or plain TCP.
    pub fn mqtt_transport(&self) -> rumqttc::Transport {
        match &self.tls {
            Some(c) => rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
                Arc::clone(c),
            )),
            None => rumqttc::Transport::tcp(),
        }
    }
}
