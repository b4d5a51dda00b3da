//! `brook serve`: opens the metadata and the log (recovering both), runs the periodic
//! housekeeping (write and fsync buffered data, time retention, free-space measurement) every
//! `log.flush_interval`, and on shutdown writes and fsyncs everything before returning.
//!
//! The network front ends (native protocol, MQTT, Kafka API, HTTP) attach here; none exists
//! yet, so today `serve` hosts the storage engine only.

use std::future::Future;
use std::sync::Arc;

use crate::config::Config;
use crate::log::{LogError, Store};
use crate::meta::{Meta, MetaError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("housekeeping task failed: {0}")]
    Task(String),
}

/// Runs Brook with `config` until `shutdown` completes.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let meta = Meta::open(&config.meta_dir())?;
    let topics = meta.topics()?;
    let topics_dir = config.topics_dir();
    let opts = config.log.clone();
    let (store, recovery) =
        tokio::task::spawn_blocking(move || Store::open(topics_dir, opts, &topics))
            .await
            .map_err(|e| ServeError::Task(e.to_string()))??;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        topics = store.topics().len(),
        partitions = recovery.partitions,
        truncated_bytes = recovery.truncated_bytes,
        indexes_rebuilt = recovery.indexes_rebuilt,
        corrupt_segments = recovery.corrupt_segments.len(),
        "log opened in {:?}",
        recovery.took
    );
    let store = Arc::new(store);
    let mut tick = tokio::time::interval(config.log.flush_interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                let s = Arc::clone(&store);
                match tokio::task::spawn_blocking(move || s.maintain()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("housekeeping: {e}"),
                    Err(e) => tracing::error!("housekeeping task: {e}"),
                }
            }
        }
    }
    tracing::info!("shutting down: writing and syncing everything");
    let s = Arc::clone(&store);
    tokio::task::spawn_blocking(move || s.flush_all(true))
        .await
        .map_err(|e| ServeError::Task(e.to_string()))??;
    meta.store().flush()?;
    Ok(())
}
