//! `brook serve`: opens the broker (metadata and log, recovering both), binds the listeners of
//! the front ends ([`crate::server`]), starts the mirrors, runs the periodic housekeeping in one
//! round (`housekeeping.rs`: write and fsync buffered data, time retention, free-space
//! measurement, expiry of group members every `log.flush_interval`; the MQTT hub's session
//! expiry, `$SYS` and metadata flush every second; freed memory returned every 10 s) and the
//! compaction every `log.compaction_interval`, and on
//! shutdown stops accepting, lets the answers in flight go out, and writes and fsyncs
//! everything. The one module that takes the whole [`Config`]: each part gets its section.
//!
//! [`start`] is the library entry point (tests bind `127.0.0.1:0` and read the addresses from
//! [`Running`]; the housekeeping gets a thread of its own); [`run`] is `brook serve`'s: it runs
//! until a shutdown future completes, opening the log and then running the housekeeping on the
//! calling thread.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::Auth;
use crate::broker::{Broker, BrokerError};
use crate::config::Config;
use crate::server::{http, kafka, mqtt, native, systemd};

mod housekeeping;

use housekeeping::{Housekeeper, housekeeping};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("task failed: {0}")]
    Task(String),
}

/// A running broker. A listener turned off (`""`) has no address.
pub struct Running {
    pub broker: Arc<Broker>,
    pub native_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub mqtt_addr: Option<SocketAddr>,
    pub kafka_addr: Option<SocketAddr>,
    pub native_tls_addr: Option<SocketAddr>,
    pub mqtt_tls_addr: Option<SocketAddr>,
    pub http_tls_addr: Option<SocketAddr>,
    pub kafka_tls_addr: Option<SocketAddr>,
    pub mqtt_ws_addr: Option<SocketAddr>,
    pub mqtt_wss_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A bound listener and its address.
type Bound = Option<(TcpListener, SocketAddr)>;

/// Binds a listener when `addr` is set (`""`: the listener is off).
async fn bind(what: &'static str, addr: &str) -> Result<Bound, ServeError> {
    if addr.is_empty() {
        return Ok(None);
    }
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })?;
    let a = l
        .local_addr()
        .map_err(|e| ServeError::Task(e.to_string()))?;
    Ok(Some((l, a)))
}

fn show(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "-".to_string(), |a| a.to_string())
}

/// The plain and TLS listeners of one front end, each with the TLS server it needs (the first
/// one is the front end's owner: Kafka's group timeouts, MQTT's last housekeeping at shutdown).
fn pair(
    plain: Bound,
    tls_bound: Bound,
    tls: &Option<Arc<crate::net::tls::TlsServer>>,
) -> Vec<(TcpListener, Option<Arc<crate::net::tls::TlsServer>>, bool)> {
    let mut out = Vec::new();
    if let Some((l, _)) = plain {
        out.push((l, None, true));
    }
    if let Some((l, _)) = tls_bound {
        let first = out.is_empty();
        out.push((l, tls.clone(), first));
    }
    out
}

/// Opens the broker and starts every listener and the housekeeping, on a thread of its own.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    let (running, keeper) = open(config, OpenOn::BlockingPool).await?;
    std::thread::Builder::new()
        .name("brook-housekeep".into())
        .spawn(move || keeper.run())
        .map_err(|e| ServeError::Task(format!("cannot start the housekeeping thread: {e}")))?;
    Ok(running)
}

/// Runs Brook on `runtime` with `config` until `shutdown` completes, then stops it
/// ([`Running::stop`]). The calling thread opens the log and the metadata, then runs the
/// housekeeping rounds: an idle broker has this thread and the runtime's workers only.
pub fn run(
    runtime: &tokio::runtime::Runtime,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (running, keeper) = runtime.block_on(open(config, OpenOn::Caller))?;
    let stopped = runtime.spawn(async move {
        shutdown.await;
        running.stop().await
    });
    keeper.run();
    runtime
        .block_on(stopped)
        .map_err(|e| ServeError::Task(e.to_string()))?
}

/// Where [`open`] opens the log and the metadata (blocking file I/O, recovery included).
enum OpenOn {
    /// On the runtime's blocking pool: the caller may be an async worker.
    BlockingPool,
    /// On the calling thread, which `block_on` runs and is no worker: a blocking-pool thread
    /// (started only for this) is spared.
    Caller,
}

/// Opens the broker and starts every listener; the housekeeping is returned to be run.
async fn open(config: Config, on: OpenOn) -> Result<(Running, Housekeeper), ServeError> {
    let auth = Arc::new(Auth::open(&config.auth)?);
    let tls = if config.listeners.any_tls() {
        Some(Arc::new(crate::net::tls::TlsServer::open(&config.tls)?))
    } else {
        None
    };
    let l = &config.listeners;
    let native = bind("native", &l.native).await?;
    let native_tls = bind("native over TLS", &l.native_tls).await?;
    let http = bind("http", &l.http).await?;
    let http_tls = bind("http over TLS", &l.http_tls).await?;
    let mqtt = bind("mqtt", &l.mqtt).await?;
    let mqtt_tls = bind("mqtt over TLS", &l.mqtt_tls).await?;
    let kafka = bind("kafka", &l.kafka).await?;
    let kafka_tls = bind("kafka over TLS", &l.kafka_tls).await?;
    let mqtt_ws = bind("mqtt over WebSockets", &l.mqtt_ws).await?;
    let mqtt_wss = bind("mqtt over WebSockets over TLS", &l.mqtt_wss).await?;
    let addr = |b: &Bound| b.as_ref().map(|x| x.1);
    let (native_addr, native_tls_addr) = (addr(&native), addr(&native_tls));
    let (http_addr, http_tls_addr) = (addr(&http), addr(&http_tls));
    let (mqtt_addr, mqtt_tls_addr) = (addr(&mqtt), addr(&mqtt_tls));
    let (kafka_addr, kafka_tls_addr) = (addr(&kafka), addr(&kafka_tls));
    let (mqtt_ws_addr, mqtt_wss_addr) = (addr(&mqtt_ws), addr(&mqtt_wss));
    let mqtt_config = config.mqtt.clone();
    let kafka_config = config.kafka.clone();
    let flush_interval = config.log.flush_interval.0;
    let limits = config.native.limits();
    let data_dir = config.data_dir.clone();
    let options = config.broker_options();
    let (broker, recovery) = match on {
        OpenOn::Caller => Broker::open(options)?,
        OpenOn::BlockingPool => tokio::task::spawn_blocking(move || Broker::open(options))
            .await
            .map_err(|e| ServeError::Task(e.to_string()))??,
    };
    tracing::info!(
        data_dir = %data_dir.display(),
        topics = broker.topics().len(),
        partitions = recovery.partitions,
        truncated_bytes = recovery.truncated_bytes,
        indexes_rebuilt = recovery.indexes_rebuilt,
        damaged_ranges = recovery.damage.len(),
        "log opened in {:?}",
        recovery.took
    );
    let broker = Arc::new(broker);
    let (shutdown, rx) = watch::channel(false);
    let stats = Arc::new(native::NativeStats::default());
    let mqtt_stats = Arc::new(mqtt::MqttStats::default());
    let kafka_stats = Arc::new(kafka::KafkaStats::default());
    let mirror_configs = config.mirror.clone();
    let mirrors = crate::mirror::Mirrors::start(Arc::clone(&broker), mirror_configs, rx.clone());
    let hub = {
        let (b, st, stop) = (Arc::clone(&broker), Arc::clone(&mqtt_stats), rx.clone());
        let m = Arc::clone(&mirrors.status);
        mqtt::hub::Hub::start(b, Arc::clone(&auth), mqtt_config, st, m, stop)?
    };
    let mut tasks = Vec::new();
    let native_shared = Arc::new(native::Shared {
        broker: Arc::clone(&broker),
        auth: Arc::clone(&auth),
        slots: crate::auth::ListenerSlots::new(limits.max_connections),
        limits,
        stats: Arc::clone(&stats),
    });
    for (listener, tls, _) in pair(native, native_tls, &tls) {
        tasks.push(tokio::spawn(native::run(
            listener,
            tls,
            Arc::clone(&native_shared),
            rx.clone(),
        )));
    }
    let http_state = Arc::new(http::HttpState {
        broker: Arc::clone(&broker),
        native: stats,
        mqtt: mqtt_stats,
        kafka: Arc::clone(&kafka_stats),
        mirrors: Arc::clone(&mirrors.status),
        auth: Arc::clone(&auth),
        history: http::status::History::default(),
    });
    if http.is_some() || http_tls.is_some() {
        tasks.push(tokio::spawn(http::status::History::run(
            Arc::clone(&http_state),
            rx.clone(),
        )));
    }
    for (listener, tls, _) in pair(http, http_tls, &tls) {
        tasks.push(tokio::spawn(http::run(
            listener,
            tls,
            Arc::clone(&http_state),
            rx.clone(),
        )));
    }
    let mut mqtt_listeners: Vec<_> = pair(mqtt, mqtt_tls, &tls)
        .into_iter()
        .map(|(l, t, o)| (l, t, o, false))
        .collect();
    for (l, t, o) in pair(mqtt_ws, mqtt_wss, &tls) {
        let owner = o && mqtt_listeners.is_empty();
        mqtt_listeners.push((l, t, owner, true));
    }
    let mqtt_slots = Arc::new(crate::auth::ListenerSlots::new(hub.config.max_connections));
    for (listener, tls, owner, ws) in mqtt_listeners {
        tasks.push(tokio::spawn(mqtt::run(
            listener,
            tls,
            owner,
            ws,
            Arc::clone(&hub),
            Arc::clone(&mqtt_slots),
            rx.clone(),
        )));
    }
    let kafka_ctx = Arc::new(kafka::Ctx::new(
        Arc::clone(&broker),
        kafka_config,
        kafka_stats,
        Arc::clone(&auth),
        [kafka_addr, kafka_tls_addr],
    ));
    let b = Arc::clone(&broker);
    tasks.push(tokio::spawn(async move { mirrors.join(&b).await }));
    for (listener, tls, owner) in pair(kafka, kafka_tls, &tls) {
        tasks.push(tokio::spawn(kafka::run(
            listener,
            tls,
            owner,
            Arc::clone(&kafka_ctx),
            rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(reload_on_sighup(
        Arc::clone(&auth),
        tls.clone(),
        rx.clone(),
    )));
    // The cleaner: compaction on a blocking thread of its own, so a long rewrite never delays
    // the housekeeping's flushes. With no compacted topic it starts none (an idle broker would
    // otherwise start and end a thread every interval).
    let store = Arc::clone(broker.store());
    let compaction_interval = config.log.compaction_interval.0;
    let mut cleaner_stop = rx.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(compaction_interval.max(std::time::Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cleaner_stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            if !store.compacts_any() {
                continue;
            }
            let s = Arc::clone(&store);
            match tokio::task::spawn_blocking(move || s.compact()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!("compaction: {e}"),
                Err(e) => tracing::error!("compaction task: {e}"),
            }
        }
    }));
    let (keeper, ender) = housekeeping(
        Arc::clone(&broker),
        Arc::clone(&hub),
        flush_interval,
        systemd::watchdog_period(),
        rx,
    );
    tasks.push(ender);
    tracing::info!(
        native = %show(native_addr),
        http = %show(http_addr),
        mqtt = %show(mqtt_addr),
        kafka = %show(kafka_addr),
        native_tls = %show(native_tls_addr),
        mqtt_tls = %show(mqtt_tls_addr),
        http_tls = %show(http_tls_addr),
        kafka_tls = %show(kafka_tls_addr),
        mqtt_ws = %show(mqtt_ws_addr),
        mqtt_wss = %show(mqtt_wss_addr),
        "listening"
    );
    if let Err(e) = systemd::notify(&format!(
        "READY=1\nSTATUS=listening: native {}, http {}, mqtt {}, kafka {}",
        show(native_addr),
        show(http_addr),
        show(mqtt_addr),
        show(kafka_addr)
    )) {
        tracing::warn!("cannot notify systemd: {e}");
    }
    let running = Running {
        broker,
        native_addr,
        http_addr,
        mqtt_addr,
        kafka_addr,
        native_tls_addr,
        mqtt_tls_addr,
        http_tls_addr,
        kafka_tls_addr,
        mqtt_ws_addr,
        mqtt_wss_addr,
        shutdown,
        tasks,
    };
    Ok((running, keeper))
}

/// Re-reads the users, ACL and token files on every SIGHUP until shutdown.
async fn reload_on_sighup(
    auth: Arc<Auth>,
    tls: Option<Arc<crate::net::tls::TlsServer>>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP (no reload of users and ACL): {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                let a = Arc::clone(&auth);
                let t = tls.clone();
                // Errors are logged; the old files stay in force.
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = a.reload();
                    if let Some(t) = t {
                        match t.reload() {
                            Ok(()) => tracing::info!("tls: certificate and key re-read"),
                            Err(e) => tracing::error!("tls: reload failed, the previous certificate stays: {e}"),
                        }
                    }
                })
                .await;
            }
        }
    }
}

impl Running {
    /// Stops accepting, lets the answers in flight go out, then writes and fsyncs everything.
    pub async fn stop(self) -> Result<(), ServeError> {
        tracing::info!("shutting down: finishing requests, then writing and syncing everything");
        let _ = systemd::notify("STOPPING=1");
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let b = Arc::clone(&self.broker);
        tokio::task::spawn_blocking(move || b.flush_all())
            .await
            .map_err(|e| ServeError::Task(e.to_string()))??;
        Ok(())
    }
}
