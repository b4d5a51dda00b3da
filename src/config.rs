//! `brook.toml`: one [`Config`] with serde defaults, unknown keys rejected by name, and a
//! [`Config::validate`] step for the rules that span keys. [`DEFAULT_CONFIG`] is the commented
//! default that `brook config default` prints; a test keeps it equal to `Config::default()`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::log::{StoreOptions, TopicConfig};

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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./brook-data"),
            log: StoreOptions::default(),
            topic_defaults: TopicConfig::default(),
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
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Parses TOML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: origin.to_path_buf(),
            message,
        })?;
        Ok(cfg)
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
    pub fn validate(&self) -> Result<(), String> {
        if self.data_dir.as_os_str().is_empty() {
            return Err("data_dir: must not be empty".into());
        }
        self.topic_defaults
            .validate("topic_defaults")
            .map_err(|e| format!("topic_defaults: {e}"))?;
        if self.log.flush_interval.0.is_zero() {
            return Err("log.flush_interval: must be greater than zero".into());
        }
        if self.log.write_buffer.bytes() < 4096 || self.log.write_buffer.bytes() > 64 << 20 {
            return Err(format!(
                "log.write_buffer = {} is outside 4KiB..=64MiB",
                self.log.write_buffer
            ));
        }
        if let Some(max) = self.log.max_size.limit() {
            let seg = self.topic_defaults.segment_size.bytes();
            if max < 2 * seg {
                return Err(format!(
                    "log.max_size = {} is below two segments of topic_defaults.segment_size ({})",
                    self.log.max_size, self.topic_defaults.segment_size
                ));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_matches_code_default() {
        let parsed = Config::parse(DEFAULT_CONFIG, Path::new("default")).expect("default parses");
        assert_eq!(parsed, Config::default());
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
    }
}
