//! Authentication and authorization: the one place every front end asks who a client is and
//! what it may do.
//!
//! | module | job |
//! |---|---|
//! | [`password`] | the users file (Mosquitto 2.x format), password hashes |
//! | [`acl`] | access rules per user: MQTT publish/subscribe, log produce/consume/admin |
//! | [`sasl`] | SASL PLAIN and SCRAM-SHA-512 for the Kafka listener |
//! | [`backoff`] | failed logins back off per user name and per address |
//!
//! `[auth]` in brook.toml names a users file and an ACL file; both are read at start and again
//! on SIGHUP (a file that fails to load then is logged and the old contents stay in force;
//! connections stay open and are held to the new rules from their next request). With no
//! users file, anonymous clients are allowed (`allow_anonymous` unset); with one, they are
//! refused unless `allow_anonymous = true`. A listener on a non-loopback address needs a users
//! file or an explicit `allow_anonymous = true`, or Brook refuses to start.
//!
//! Password checks are slow on purpose, so they run on the blocking pool, at most
//! `login_concurrency` at once (a reconnect storm queues instead of exhausting CPU and memory),
//! a refused login is answered only after `failed_login_delay`, and failures back off per user
//! name and per address ([`backoff`]).
//!
//! Before any of that, [`admission`] caps the connections one client address holds open
//! (`max_connections_per_address`, over every listener); every new connection must finish its
//! handshakes and its login (TLS, then MQTT CONNECT, the native handshake and Authenticate, or
//! Kafka's SASL exchange) within one `handshake_timeout` from its accept, sending frames of at
//! most `max_frame_before_login` until then, and connections that have not logged in hold at
//! most half of a listener's `max_connections` (past that the oldest is closed). Each refusal
//! is counted in `brook_auth_*` metrics.

pub mod acl;
pub mod admission;
pub mod backoff;
pub mod password;
pub mod sasl;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

pub use acl::{Acl, Denied, Op, Who};
pub use admission::{Admission, ConnSlot, Full, ListenerSlots, Slot};
pub use password::{PasswordHash, Users};

use crate::units::Narrow;
use crate::units::{ByteSize, HumanDuration};

/// `[auth]` in brook.toml.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Users and password hashes (`brook passwd`; Mosquitto 2.x files work as they are).
    pub users_file: Option<PathBuf>,
    /// Access rules (see [`acl`]). Unset: whoever may connect may do everything.
    pub acl_file: Option<PathBuf>,
    /// Whether clients without a login are let in. Unset: yes without a users file, no with one.
    pub allow_anonymous: Option<bool>,
    /// A file holding the token `/api/...` requires (`Authorization: Bearer TOKEN`).
    pub http_token_file: Option<PathBuf>,
    /// Whether `/metrics` needs the token too. Default false (`/healthz` is always open).
    pub metrics_need_token: bool,
    /// Password checks running at once. Default 2.
    pub login_concurrency: usize,
    /// How long a refused login waits for its answer. Default "1s".
    pub failed_login_delay: HumanDuration,
    /// First wait after a failed login for the same user name or address; it doubles with
    /// each failure in a row. Default "1s"; "0s": no backoff.
    pub login_backoff: HumanDuration,
    /// Longest backoff. Default "1m".
    pub login_backoff_max: HumanDuration,
    /// Time a new connection has to finish its handshakes and login (TLS, then MQTT CONNECT,
    /// the native handshake and Authenticate, or Kafka SASL), counted once from the accept.
    /// Default "10s".
    pub handshake_timeout: HumanDuration,
    /// Largest frame (native), packet (MQTT CONNECT) or request (Kafka) a connection may send
    /// before it has logged in. Default "64KiB".
    pub max_frame_before_login: ByteSize,
    /// Connections one client address may hold open at once, over every listener. Default 64;
    /// 0: no limit.
    pub max_connections_per_address: usize,
    /// Whether loopback clients count against that limit too. Default false.
    pub limit_loopback: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users_file: None,
            acl_file: None,
            allow_anonymous: None,
            http_token_file: None,
            metrics_need_token: false,
            login_concurrency: 2,
            failed_login_delay: HumanDuration::secs(1),
            login_backoff: HumanDuration::secs(1),
            login_backoff_max: HumanDuration::secs(60),
            handshake_timeout: HumanDuration::secs(10),
            max_frame_before_login: ByteSize::kib(64),
            max_connections_per_address: 64,
            limit_loopback: false,
        }
    }
}

fn is_loopback(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

/// Why the auth settings, or the users, ACL or token files they name, cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A setting is refused; the message names the key and how to go on.
    #[error("{0}")]
    Settings(String),
    /// A file cannot be read.
    #[error("cannot read {what} {path:?}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file's contents are refused; the reason names the line, rule or key in it.
    #[error("{what} {path:?}: {reason}")]
    Content {
        what: &'static str,
        path: PathBuf,
        reason: Malformed,
    },
}

/// A users file, ACL file, password hash, user name or SASL message that does not parse; the
/// message says where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

impl From<String> for Malformed {
    fn from(s: String) -> Self {
        Malformed(s)
    }
}

impl From<&str> for Malformed {
    fn from(s: &str) -> Self {
        Malformed(s.to_string())
    }
}

/// A listener as the login rules see it: its config key, its address and what it serves.
#[derive(Clone, Copy, Debug)]
pub struct Exposed<'a> {
    pub key: &'a str,
    pub addr: &'a str,
    pub serves: Serves,
}

/// What a listener serves, for [`AuthConfig::validate`].
#[derive(Clone, Copy, Debug)]
pub enum Serves {
    /// Records (native, MQTT, Kafka): a login is required off loopback, or a client
    /// certificate that logs in.
    Data { certificate_logs_in: bool },
    /// The HTTP API: a token is required off loopback.
    Http,
}

impl AuthConfig {
    /// Whether clients without a login are let in.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.users_file.is_none())
    }

    /// Checks the section against the listeners it guards; the message names the key and says
    /// how to go on.
    pub fn validate(&self, listeners: &[Exposed<'_>]) -> Result<(), AuthError> {
        if self.handshake_timeout.0.is_zero() {
            return Err(AuthError::Settings(
                "auth.handshake_timeout: must be greater than zero".into(),
            ));
        }
        if self.login_concurrency == 0 || self.login_concurrency > 64 {
            return Err(AuthError::Settings(format!(
                "auth.login_concurrency = {} is outside 1..=64",
                self.login_concurrency
            )));
        }
        if self.failed_login_delay.0 > std::time::Duration::from_secs(60) {
            return Err(AuthError::Settings(
                "auth.failed_login_delay: at most 60s".into(),
            ));
        }
        if self.login_backoff_max.0 < self.login_backoff.0 {
            return Err(AuthError::Settings(format!(
                "auth.login_backoff_max = {} is below auth.login_backoff = {}",
                self.login_backoff_max, self.login_backoff
            )));
        }
        let frame = self.max_frame_before_login.bytes();
        if !(1024..=16 << 20).contains(&frame) {
            return Err(AuthError::Settings(format!(
                "auth.max_frame_before_login = {} is outside 1KiB..=16MiB",
                self.max_frame_before_login
            )));
        }
        if self.allow_anonymous == Some(false) && self.users_file.is_none() {
            return Err(AuthError::Settings(
                "auth.allow_anonymous = false without auth.users_file: no client could log in"
                    .into(),
            ));
        }
        let open = self.allow_anonymous == Some(true);
        let ways = "either add users (auth.users_file, made with `brook passwd`) or set \
                    auth.allow_anonymous = true to let anyone on the network in";
        for l in listeners {
            if l.addr.is_empty() || is_loopback(l.addr) || open {
                continue;
            }
            let (key, addr) = (l.key, l.addr);
            match l.serves {
                Serves::Data {
                    certificate_logs_in,
                } => {
                    if self.users_file.is_none() && !certificate_logs_in {
                        return Err(AuthError::Settings(format!(
                            "{key} = {addr:?} is reachable from the network and no login is required: {ways}"
                        )));
                    }
                }
                Serves::Http => {
                    if self.http_token_file.is_none() {
                        return Err(AuthError::Settings(format!(
                            "{key} = {addr:?} is reachable from the network and the API is open: either \
                             set auth.http_token_file or set auth.allow_anonymous = true"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Why a login was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown user or wrong password.
    BadCredentials,
    /// No login, and anonymous clients are not allowed.
    LoginRequired,
    /// Too many failed logins for this user name or address: held back this long.
    BackedOff(Duration),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::BadCredentials => "bad user name or password",
            Refusal::LoginRequired => "a login is required",
            Refusal::BackedOff(_) => "too many failed logins, try again later",
        })
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AuthStats {
    pub logins: AtomicU64,
    pub logins_failed: AtomicU64,
    pub anonymous_refused: AtomicU64,
    /// Denials by operation: publish, subscribe, produce, consume, admin, group (topics
    /// left out of a listing are not counted).
    pub denied: [AtomicU64; 6],
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Connections closed at once: their address already held `max_connections_per_address`.
    pub address_limit_refusals: AtomicU64,
    /// Connections closed for not finishing their handshakes within `handshake_timeout`.
    pub handshake_timeouts: AtomicU64,
    /// Logins refused unchecked: their user name or address was backing off.
    pub logins_backed_off: AtomicU64,
    /// Connections closed before their login to make room for a newer one (half a
    /// listener's slots were held by connections that had not logged in).
    pub pending_evictions: AtomicU64,
}

impl AuthStats {
    /// Prometheus text lines.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let name = "brook_auth_logins_total";
        let _ = writeln!(
            out,
            "# HELP {name} Logins by outcome.\n# TYPE {name} counter\n\
             {name}{{outcome=\"ok\"}} {}\n{name}{{outcome=\"bad_credentials\"}} {}\n\
             {name}{{outcome=\"login_required\"}} {}\n{name}{{outcome=\"backed_off\"}} {}",
            g(&self.logins),
            g(&self.logins_failed),
            g(&self.anonymous_refused),
            g(&self.logins_backed_off)
        );
        let name = "brook_auth_denied_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests the ACL refused, by operation.\n# TYPE {name} counter"
        );
        for (i, op) in [
            "publish",
            "subscribe",
            "produce",
            "consume",
            "admin",
            "group",
        ]
        .iter()
        .enumerate()
        {
            let _ = writeln!(out, "{name}{{op=\"{op}\"}} {}", g(&self.denied[i]));
        }
        let name = "brook_auth_reloads_total";
        let _ = writeln!(
            out,
            "# HELP {name} Users and ACL files re-read (SIGHUP), by outcome.\n# TYPE {name} counter\n\
             {name}{{outcome=\"ok\"}} {}\n{name}{{outcome=\"failed\"}} {}",
            g(&self.reloads),
            g(&self.reload_failures)
        );
        let name = "brook_auth_address_limit_refusals_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections closed at once: their address held max_connections_per_address.\n# TYPE {name} counter\n{name} {}",
            g(&self.address_limit_refusals)
        );
        let name = "brook_auth_handshake_timeouts_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections closed for not finishing their handshakes within handshake_timeout.\n# TYPE {name} counter\n{name} {}",
            g(&self.handshake_timeouts)
        );
        let name = "brook_auth_pending_evictions_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections closed before their login to make room: half the listener's slots had not logged in.\n# TYPE {name} counter\n{name} {}",
            g(&self.pending_evictions)
        );
    }
}

/// What the files held when last read.
#[derive(Debug, Default)]
struct Loaded {
    users: Option<Users>,
    acl: Option<Acl>,
    http_token: Option<String>,
}

impl Loaded {
    fn read(config: &AuthConfig) -> Result<Loaded, AuthError> {
        let users = config.users_file.as_deref().map(Users::load).transpose()?;
        let acl = config.acl_file.as_deref().map(Acl::load).transpose()?;
        let http_token = match &config.http_token_file {
            None => None,
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| AuthError::Read {
                    what: "auth.http_token_file",
                    path: p.clone(),
                    source,
                })?;
                let token = text.trim().to_string();
                if token.len() < 16 {
                    return Err(AuthError::Content {
                        what: "auth.http_token_file",
                        path: p.clone(),
                        reason: "the token is shorter than 16 characters".into(),
                    });
                }
                Some(token)
            }
        };
        Ok(Loaded {
            users,
            acl,
            http_token,
        })
    }
}

/// The running authenticator, shared by every listener.
#[derive(Debug)]
pub struct Auth {
    config: AuthConfig,
    loaded: RwLock<Arc<Loaded>>,
    checks: Arc<Semaphore>,
    admission: Admission,
    backoff: backoff::Backoff,
    pub stats: AuthStats,
}

/// A hash to check unknown users against, so an unknown name takes as long as a known one.
fn decoy() -> &'static PasswordHash {
    static DECOY: std::sync::OnceLock<PasswordHash> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| PasswordHash::Pbkdf2Sha512 {
        iterations: password::DEFAULT_ITERATIONS,
        salt: vec![0; 12],
        hash: [0; 64],
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Reads the users, ACL and token files; errors name the file and line.
    pub fn open(config: &AuthConfig) -> Result<Auth, AuthError> {
        let loaded = Loaded::read(config)?;
        Ok(Auth {
            config: config.clone(),
            loaded: RwLock::new(Arc::new(loaded)),
            checks: Arc::new(Semaphore::new(config.login_concurrency.max(1))),
            admission: Admission::new(config.max_connections_per_address, config.limit_loopback),
            backoff: backoff::Backoff::new(
                config.login_backoff.0,
                config.login_backoff_max.0,
                config.limit_loopback,
            ),
            stats: AuthStats::default(),
        })
    }

    /// A slot for a new connection from `ip`, or `None` (counted and logged) when that address
    /// holds `max_connections_per_address` already: close the connection at once.
    pub fn admit(&self, listener: &str, ip: IpAddr) -> Option<Slot> {
        let slot = self.admission.admit(ip);
        if slot.is_none() {
            self.stats
                .address_limit_refusals
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %ip, listener,
                "connection refused: {} connections open from this address (auth.max_connections_per_address)",
                self.config.max_connections_per_address
            );
        }
        slot
    }

    /// Time a new connection has to finish its handshakes.
    pub fn handshake_timeout(&self) -> Duration {
        self.config.handshake_timeout.0
    }

    /// Largest frame a connection may send before it has logged in.
    pub fn max_frame_before_login(&self) -> usize {
        self.config.max_frame_before_login.bytes().sat_usize()
    }

    /// Whether a users file is configured (the Kafka listener then asks for SASL).
    pub fn has_users(&self) -> bool {
        self.config.users_file.is_some()
    }

    /// Whether clients without a login are let in.
    pub fn anonymous_allowed(&self) -> bool {
        self.config.anonymous_allowed()
    }

    /// Counts a connection closed before its login to make room for a newer one.
    pub fn pending_evicted(&self, listener: &str) {
        self.stats.pending_evictions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            listener,
            "half the listener's connections had not logged in: the oldest of them is closed"
        );
    }

    /// Counts a connection closed for a handshake that took too long.
    pub fn handshake_timed_out(&self) {
        self.stats
            .handshake_timeouts
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The TLS handshake of a new connection on `tls`, within `handshake_timeout` (a timeout
    /// is counted). Returns the stream and the client certificate's CN (with
    /// `cert_cn_as_username`), or why the connection is to be closed.
    pub async fn accept_tls(
        &self,
        tls: &crate::net::tls::TlsServer,
        stream: tokio::net::TcpStream,
    ) -> Result<(crate::net::tls::ServerStream, Option<String>), crate::net::tls::HandshakeError>
    {
        tls.accept(stream, self.handshake_timeout())
            .await
            .inspect_err(|e| {
                if let crate::net::tls::HandshakeError::TimedOut(_) = e {
                    self.handshake_timed_out();
                }
            })
    }

    fn current(&self) -> Arc<Loaded> {
        match self.loaded.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the files (SIGHUP). On an error the old contents stay in force.
    pub fn reload(&self) -> Result<(), AuthError> {
        match Loaded::read(&self.config) {
            Ok(fresh) => {
                let users = fresh.users.as_ref().map_or(0, Users::len);
                let rules = fresh.acl.as_ref().map_or(0, Acl::len);
                match self.loaded.write() {
                    Ok(mut g) => *g = Arc::new(fresh),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(fresh),
                }
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(users, acl_rules = rules, "auth: users and ACL re-read");
                Ok(())
            }
            Err(e) => {
                self.stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!("auth: reload failed, the previous users and ACL stay: {e}");
                Err(e)
            }
        }
    }

    /// Checks a login. `Ok(Some(user))`: a user whose password matched; `Ok(None)`: an
    /// anonymous client (no user name, or a name while no users file is configured). A refusal
    /// comes after `failed_login_delay`.
    pub async fn login(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        peer: IpAddr,
    ) -> Result<Option<Arc<str>>, Refusal> {
        let loaded = self.current();
        let held = match (username, loaded.users.as_ref()) {
            (Some(name), Some(_)) => self.held_back(name, peer),
            _ => None,
        };
        let refusal = match (username, loaded.users.as_ref()) {
            _ if held.is_some() => Refusal::BackedOff(held.unwrap_or_default()),
            (Some(name), Some(users)) => {
                let hash = users.get(name).cloned();
                let known = hash.is_some();
                let hash = hash.unwrap_or_else(|| decoy().clone());
                let password = password.unwrap_or_default().to_vec();
                let matched = match Arc::clone(&self.checks).acquire_owned().await {
                    Ok(permit) => tokio::task::spawn_blocking(move || {
                        let ok = hash.verify(&password);
                        drop(permit);
                        ok
                    })
                    .await
                    .unwrap_or(false),
                    Err(_) => false,
                };
                if known && matched {
                    return Ok(Some(self.logged_in(name, peer)));
                }
                self.failed(name, peer);
                Refusal::BadCredentials
            }
            _ if self.config.anonymous_allowed() => {
                self.stats.logins.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            _ => {
                self.stats.anonymous_refused.fetch_add(1, Ordering::Relaxed);
                Refusal::LoginRequired
            }
        };
        tokio::time::sleep(self.config.failed_login_delay.0).await;
        Err(refusal)
    }

    /// How long logins as `name` from `peer` are still held back; counts and logs a refusal.
    fn held_back(&self, name: &str, peer: IpAddr) -> Option<Duration> {
        let wait = self.backoff.wait(name, peer, std::time::Instant::now())?;
        self.stats.logins_backed_off.fetch_add(1, Ordering::Relaxed);
        tracing::info!(user = name, %peer, "login refused unchecked: backing off for {wait:?} after failed logins");
        Some(wait)
    }

    fn logged_in(&self, name: &str, peer: IpAddr) -> Arc<str> {
        self.stats.logins.fetch_add(1, Ordering::Relaxed);
        self.backoff.succeeded(name, peer);
        Arc::from(name)
    }

    fn failed(&self, name: &str, peer: IpAddr) {
        self.stats.logins_failed.fetch_add(1, Ordering::Relaxed);
        self.backoff.failed(name, peer, std::time::Instant::now());
    }

    /// Starts a SCRAM-SHA-512 login as `name`: the user's secret (`None` for an unknown user,
    /// or one whose hash is not PBKDF2-SHA512: the exchange goes on and fails at its end), or
    /// a refusal while the name or address backs off.
    pub fn scram_secret(
        &self,
        name: &str,
        peer: IpAddr,
    ) -> Result<Option<sasl::ScramSecret>, Refusal> {
        if self.held_back(name, peer).is_some() {
            return Err(Refusal::BackedOff(Duration::ZERO));
        }
        let loaded = self.current();
        Ok(match loaded.users.as_ref().and_then(|u| u.get(name)) {
            Some(PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            }) => Some(sasl::ScramSecret {
                salt: salt.clone(),
                iterations: *iterations,
                salted: *hash,
            }),
            _ => None,
        })
    }

    /// The end of a SCRAM login: counts it; a failure is answered after
    /// `failed_login_delay`.
    pub async fn scram_done(
        &self,
        name: &str,
        peer: IpAddr,
        ok: bool,
    ) -> Result<Arc<str>, Refusal> {
        if ok {
            return Ok(self.logged_in(name, peer));
        }
        self.failed(name, peer);
        tokio::time::sleep(self.config.failed_login_delay.0).await;
        Err(Refusal::BadCredentials)
    }

    /// Logs in the holder of a verified client certificate as its CN (`cert_cn_as_username`).
    pub fn login_certificate(&self, cn: &str) -> Arc<str> {
        self.stats.logins.fetch_add(1, Ordering::Relaxed);
        Arc::from(cn)
    }

    /// Whether `who` may do `op` (always, without an ACL file). A denial is counted.
    pub fn allows(&self, who: &Who<'_>, op: Op<'_>) -> bool {
        let loaded = self.current();
        let ok = loaded.acl.as_ref().is_none_or(|acl| acl.allows(who, op));
        if !ok {
            let i = match op {
                Op::Publish(_) => 0,
                Op::Subscribe(_) => 1,
                Op::Produce(_) => 2,
                Op::Consume(_) => 3,
                Op::Admin => 4,
                Op::Group(_) => 5,
                Op::Describe(_) => return false,
            };
            self.stats.denied[i].fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Whether an HTTP request for `path` with this `Authorization` header value may be
    /// answered: `/healthz` always, `/metrics` unless `metrics_need_token`, the rest with the
    /// token when one is configured.
    pub fn http_allows(&self, path: &str, authorization: Option<&str>) -> bool {
        if path == "/healthz" || (path == "/metrics" && !self.config.metrics_need_token) {
            return true;
        }
        let loaded = self.current();
        let Some(token) = loaded.http_token.as_deref() else {
            return true;
        };
        authorization
            .and_then(http_token_given)
            .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
    }
}

/// The token in an `Authorization` header's value: `Bearer TOKEN`, or `Basic` with the token
/// as the password (what a browser sends for the status page; the user name is not looked at).
/// None for any other scheme or a value that does not decode.
pub fn http_token_given(header: &str) -> Option<String> {
    use base64::Engine as _;
    let (scheme, rest) = header.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_string())
}

/// A connection's identity: who logged in (None: anonymous), its client id, and the rules it
/// is held to. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Principal {
    auth: Arc<Auth>,
    pub user: Option<Arc<str>>,
    pub client_id: Arc<str>,
}

impl Principal {
    pub fn new(auth: Arc<Auth>, user: Option<Arc<str>>, client_id: &str) -> Principal {
        Principal {
            auth,
            user,
            client_id: Arc::from(client_id),
        }
    }

    /// Whether this client may do `op` (a denial is counted).
    pub fn allows(&self, op: Op<'_>) -> bool {
        self.auth.allows(
            &Who {
                user: self.user.as_deref(),
                client_id: &self.client_id,
            },
            op,
        )
    }

    /// The user name for logs: the name, or "anonymous".
    pub fn name(&self) -> &str {
        self.user.as_deref().unwrap_or("anonymous")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LO: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn logins_against_a_users_file() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        let mut u = Users::default();
        u.set("alice", PasswordHash::new(b"wonderland", 10).unwrap());
        std::fs::write(&users, u.render()).unwrap();
        let config = AuthConfig {
            users_file: Some(users.clone()),
            failed_login_delay: HumanDuration(std::time::Duration::ZERO),
            login_backoff: HumanDuration(std::time::Duration::ZERO),
            ..AuthConfig::default()
        };
        let auth = Auth::open(&config).unwrap();
        assert_eq!(
            auth.login(Some("alice"), Some(b"wonderland"), LO).await,
            Ok(Some(Arc::from("alice")))
        );
        assert_eq!(
            auth.login(Some("alice"), Some(b"x"), LO).await,
            Err(Refusal::BadCredentials)
        );
        assert_eq!(
            auth.login(Some("bob"), Some(b"wonderland"), LO).await,
            Err(Refusal::BadCredentials)
        );
        assert_eq!(
            auth.login(None, None, LO).await,
            Err(Refusal::LoginRequired)
        );
        // A reload picks up a new user; a broken file leaves the old users in force.
        u.set("bob", PasswordHash::new(b"builder", 10).unwrap());
        std::fs::write(&users, u.render()).unwrap();
        auth.reload().unwrap();
        assert!(auth.login(Some("bob"), Some(b"builder"), LO).await.is_ok());
        std::fs::write(&users, "garbage\n").unwrap();
        assert!(auth.reload().is_err());
        assert!(auth.login(Some("bob"), Some(b"builder"), LO).await.is_ok());
        assert_eq!(auth.stats.logins_failed.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn without_users_every_client_is_anonymous() {
        let auth = Auth::open(&AuthConfig::default()).unwrap();
        assert_eq!(auth.login(Some("any"), Some(b"thing"), LO).await, Ok(None));
        assert_eq!(auth.login(None, None, LO).await, Ok(None));
    }

    #[test]
    fn the_http_token_guards_the_api_but_not_health() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
        let auth = Auth::open(&AuthConfig {
            http_token_file: Some(f.clone()),
            ..AuthConfig::default()
        })
        .unwrap();
        assert!(auth.http_allows("/healthz", None));
        assert!(auth.http_allows("/metrics", None));
        assert!(!auth.http_allows("/api/topics", None));
        assert!(!auth.http_allows("/api/topics", Some("Bearer wrong")));
        assert!(auth.http_allows("/api/topics", Some("Bearer 0123456789abcdef0123")));
        // A browser's Basic authentication: the token is the password, any user name.
        use base64::Engine as _;
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(!auth.http_allows("/", None));
        assert!(auth.http_allows("/", Some(&basic("me:0123456789abcdef0123"))));
        assert!(auth.http_allows("/api/status", Some(&basic(":0123456789abcdef0123"))));
        assert!(!auth.http_allows("/", Some(&basic("0123456789abcdef0123:x"))));
        assert!(!auth.http_allows("/", Some(&basic("0123456789abcdef0123"))));
        assert!(!auth.http_allows("/", Some("Basic !!not base64")));
        assert!(!auth.http_allows("/", Some("Digest 0123456789abcdef0123")));
        std::fs::write(&f, "short").unwrap();
        let e = Auth::open(&AuthConfig {
            http_token_file: Some(f),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("shorter than 16"), "{e}");
    }
}
