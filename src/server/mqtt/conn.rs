//! One MQTT connection: reads packets into the [`Session`] state machine and carries out its
//! actions (write packets, append to the log, register subscriptions, persist), feeds it
//! messages from its inbox ([`super::inbox`]) or, after an absence or a lag, from the log itself.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::net::read_held;
use crate::net::tls::{Accepted, ReadHalf, WriteHalf};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::codec::{self, CodecError, Connect, Out, Publish, Version, reason};
use super::hub::{Delivery, Hub, Takeover};
use super::inbox::{self, InboxRx, InboxTx, Next};
use super::ingest::{self, Acks, Gathered};
use super::message;
use super::pressure::{HOLD_MAX, RELIEVE_BELOW};
use super::session::{Ack, Action, AppendOutcome, Limits, Owner, Session, SessionState};
use crate::auth::{ConnSlot, Op, Principal, Refusal};
use crate::broker::BrokerError;
use crate::log::{AppendTicket, BatchBuilder, Durability, LogError};
use crate::net::tls::write_flushed;
use crate::topic_filter as topic;
use crate::units::Narrow;

/// How often a refused (log full) 3.1.1 QoS 1/2 message is offered to the log again.
const RETRY: Duration = Duration::from_millis(250);
/// Bytes read from a paused connection (for its PINGREQs) before reading stops altogether.
const PAUSED_READ: usize = 4096;
/// Bytes read back from the log per step when catching up.
const CATCH_UP_BYTES: usize = 256 * 1024;
/// What a connection's reads are given room for at first; a connection whose reads fill the
/// room gets twice as much next time, up to `READ_ROOM_MAX` (a streaming publisher's reads
/// then carry dozens of publishes, appended as one batch).
const READ_ROOM: usize = 4096;
const READ_ROOM_MAX: usize = 64 * 1024;
/// A read below this size marks a quiet connection (pings, the odd message).
const QUIET_READ: usize = 512;
/// A write buffer up to this size is let go after each write (a busy connection's larger one
/// is kept for the next).
const OUT_KEEP: usize = 16 * 1024;
/// Deliveries taken from the inbox in one turn of the connection loop.
const DRAIN: usize = 64;
/// How long the last packets (a DISCONNECT) may take to write when the connection ends
/// anyway: a client that does not read them does not hold up its successor or the shutdown.
const GOODBYE_WRITE: Duration = Duration::from_secs(5);

type AckWait = Pin<Box<dyn Future<Output = AppendOutcome> + Send>>;

/// How an append ends for its acknowledgements: stored once the ticket completes (and, for a
/// retained message, once `flush_meta` has stored the retained copy too).
async fn outcome(ticket: AppendTicket, flush_meta: Option<Arc<Hub>>) -> AppendOutcome {
    match ticket.finish().await {
        Ok(_) => {}
        Err(LogError::LogFull { .. }) => return AppendOutcome::QuotaExceeded,
        Err(e) => {
            tracing::error!("mqtt: append failed: {e}");
            return AppendOutcome::Failed;
        }
    }
    if let Some(hub) = flush_meta {
        match tokio::task::spawn_blocking(move || hub.flush_meta()).await {
            Ok(Ok(())) => {}
            _ => return AppendOutcome::Failed,
        }
    }
    AppendOutcome::Stored
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().sat_i64())
}

/// Why a connection closed before its CONNECT was read (logged with the peer).
#[derive(Debug, thiserror::Error)]
pub enum BeforeConnect {
    #[error(transparent)]
    Tls(#[from] crate::net::tls::HandshakeError),
    #[error("WebSocket handshake: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    #[error("no WebSocket upgrade within auth.handshake_timeout")]
    WebSocketTimeout,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("closed before CONNECT")]
    Closed,
    #[error("read: {0}")]
    Read(std::io::Error),
    #[error("closed before its CONNECT to make room for a newer connection")]
    Evicted,
}

async fn read_connect(
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
    max: usize,
    bytes_in: &std::sync::atomic::AtomicU64,
) -> Result<Connect, BeforeConnect> {
    loop {
        if let Some(c) = codec::read_connect(buf, max)? {
            return Ok(c);
        }
        match read_held(rd, buf).await {
            Ok(0) => return Err(BeforeConnect::Closed),
            Ok(n) => {
                bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => return Err(BeforeConnect::Read(e)),
        }
    }
}

/// Answers a CONNECT with a refusal (`code` as a 5.0 reason; 3.1.1 gets its return code).
async fn refuse(wr: &mut WriteHalf, version: Version, code: u8) {
    let mut buf = BytesMut::new();
    codec::write(
        version,
        &Out::ConnAck(codec::ConnAck {
            reason: code,
            ..codec::ConnAck::default()
        }),
        &mut buf,
    );
    let _ = write_flushed(wr, &buf).await;
    let _ = wr.shutdown().await;
}

/// How a connection ended, for the will and the session.
enum End {
    /// DISCONNECT from the client (the will is discarded).
    Graceful,
    Abnormal,
    /// The broker is shutting down: the session is kept, the will is not published (the
    /// client is not gone; the broker is).
    Shutdown,
    TakenOver(Takeover),
}

/// Serves one accepted connection to its end.
/// `slot` is the connection's hold on the listener (released from the pre-login half once
/// the CONNECT is accepted); `deadline` ends the time for the TLS handshake, CONNECT and login.
pub async fn serve(
    stream: Accepted,
    cert_user: Option<String>,
    peer: SocketAddr,
    mut slot: ConnSlot,
    deadline: Instant,
    hub: Arc<Hub>,
    stop: watch::Receiver<bool>,
) {
    // The handshake's state (the CONNECT, the login, the claim of the session) lives in its
    // own allocation, gone once the connection runs: the task of an idle connection is only
    // as large as its loop.
    let Some(Admitted {
        mut c,
        rd,
        inbuf,
        inbox,
    }) = Box::pin(admit(
        stream, cert_user, peer, &mut slot, deadline, &hub, stop,
    ))
    .await
    else {
        return;
    };
    let end = c.run(rd, inbuf, &inbox).await;
    Box::pin(c.finish(end, inbox)).await;
}

/// A connection whose CONNECT was accepted, ready to run.
struct Admitted {
    c: Conn,
    rd: ReadHalf,
    inbuf: BytesMut,
    inbox: InboxRx,
}

/// Reads and checks the CONNECT, logs the client in and claims its session; `None` when the
/// connection was refused or closed (the reason is logged and, where MQTT has one, sent).
async fn admit(
    stream: Accepted,
    cert_user: Option<String>,
    peer: SocketAddr,
    slot: &mut ConnSlot,
    deadline: Instant,
    hub: &Arc<Hub>,
    stop: watch::Receiver<bool>,
) -> Option<Admitted> {
    let (mut rd, mut wr) = stream.split();
    let max = hub.config.max_packet_size.bytes().sat_usize();
    let mut inbuf = BytesMut::with_capacity(4096);
    let connect_timeout = hub.auth.handshake_timeout();
    let before_login = max.min(hub.auth.max_frame_before_login());
    let read = tokio::select! {
        r = tokio::time::timeout_at(deadline, read_connect(&mut rd, &mut inbuf, before_login, &hub.stats.bytes_in)) => r,
        _ = slot.evicted() => Ok(Err(BeforeConnect::Evicted)),
    };
    let connect = match read {
        Ok(Ok(c)) => c,
        Ok(Err(why)) => {
            hub.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "mqtt: closing connection: {why}");
            if let BeforeConnect::Codec(CodecError::UnsupportedProtocol { .. }) = why {
                // 3.1.1 form: return code 1, unacceptable protocol version.
                let _ = write_flushed(&mut wr, &[0x20, 2, 0, 1]).await;
            }
            return None;
        }
        Err(_) => {
            hub.auth.handshake_timed_out();
            tracing::info!(%peer, "mqtt: closing connection: no CONNECT within {connect_timeout:?}");
            return None;
        }
    };
    let version = connect.version;
    let mut client_id = connect.client_id.clone();
    let mut assigned = None;
    let conn = hub.next_conn_id();
    if client_id.len() > message::MAX_CLIENT_ID {
        // Every record a client publishes carries its id: a bound on it keeps any packet
        // mqtt.max_packet_size admits within one log batch.
        refuse(&mut wr, version, reason::CLIENT_ID_NOT_VALID).await;
        tracing::info!(%peer, len = client_id.len(), "mqtt: connection refused: client id longer than {} bytes", message::MAX_CLIENT_ID);
        return None;
    }
    if client_id.is_empty() {
        if version == Version::V311 && !connect.clean_start {
            // MQTT-3.1.3-8: identifier rejected.
            let _ = write_flushed(&mut wr, &[0x20, 2, 0, 2]).await;
            tracing::info!(%peer, "mqtt: empty client id with clean session = 0 refused");
            return None;
        }
        client_id = format!("brook-{conn:x}-{:x}", now_ms());
        assigned = Some(client_id.clone());
    }
    // A 3.1.1 client asking for a longer keep-alive than mqtt.max_keepalive (or none) is
    // refused, as Mosquitto does (3.1.1 cannot be told another); 5.0 clients are told the bound.
    if version == Version::V311
        && super::session::bounded_keepalive(connect.keep_alive, hub.config.max_keepalive).is_some()
    {
        let _ = write_flushed(&mut wr, &[0x20, 2, 0, 2]).await;
        tracing::info!(%peer, client = %client_id, keep_alive = connect.keep_alive, "mqtt: connection refused: keep-alive over mqtt.max_keepalive ({} s; 0 is none)", hub.config.max_keepalive);
        return None;
    }
    // A verified client certificate is the login (tls.cert_cn_as_username).
    let login = match &cert_user {
        Some(cn) => Ok(Some(hub.auth.login_certificate(cn))),
        None => {
            hub.auth
                .login(
                    connect.username.as_deref(),
                    connect.password.as_deref().map(str::as_bytes),
                    peer.ip(),
                )
                .await
        }
    };
    let user = match login {
        Ok(user) => user,
        Err(refusal) => {
            let code = match refusal {
                Refusal::BadCredentials | Refusal::BackedOff(_) => {
                    reason::BAD_USER_NAME_OR_PASSWORD
                }
                Refusal::LoginRequired => reason::NOT_AUTHORIZED,
            };
            refuse(&mut wr, version, code).await;
            tracing::info!(%peer, client = %client_id, user = connect.username.as_deref().unwrap_or(""), "mqtt: connection refused: {refusal}");
            return None;
        }
    };
    let grants = Principal::new(Arc::clone(&hub.auth), user, &client_id);
    if let Some(will) = &connect.will {
        if !grants.allows(Op::Publish(&will.message.topic)) {
            refuse(&mut wr, version, reason::NOT_AUTHORIZED).await;
            tracing::info!(%peer, client = %client_id, user = grants.name(), topic = %will.message.topic, "mqtt: connection refused: the ACL does not allow its will topic");
            return None;
        }
    }
    slot.logged_in();
    let owner = Owner::of(grants.user.as_deref());
    let (inbox_tx, inbox) = inbox::inbox();
    let previous = match hub.claim(&client_id, conn, &owner, &inbox_tx).await {
        Ok(p) => p,
        Err(held_by) => {
            refuse(&mut wr, version, reason::NOT_AUTHORIZED).await;
            tracing::warn!(%peer, client = %client_id, user = grants.name(), "mqtt: connection refused: client id {client_id:?} is the session of user {held_by}");
            return None;
        }
    };
    let (mut state, present) = match previous {
        Some(s) if !connect.clean_start => (s, true),
        prev => {
            if prev.is_some() || !connect.clean_start {
                if let Err(e) = hub.forget(&client_id) {
                    tracing::warn!(client = %client_id, "mqtt: {e}");
                }
            }
            (SessionState::new(client_id.clone(), 0), false)
        }
    };
    state.owner = owner;
    // Restored in-flight messages are read back from the log to be sent again.
    let lost = hub.load_inflight(&mut state, version == Version::V5).await;
    if lost > 0 {
        tracing::warn!(client = %client_id, lost, "mqtt: in-flight messages the log no longer has are not sent again");
    }
    // In-flight messages are sent again only where the ACL still lets this client read them.
    let dropped = state.retain_outbound(|t| grants.allows(Op::Subscribe(t)));
    if dropped > 0 {
        tracing::info!(client = %client_id, dropped, "mqtt: in-flight messages not sent again: the ACL no longer allows them");
    }
    let limits = Limits {
        max_inflight: hub.config.max_inflight,
        topic_alias_max: hub.config.topic_alias_max,
        max_packet_size: max.sat_u32(),
        max_session_expiry: hub.config.max_session_expiry_secs(),
        max_keepalive: hub.config.max_keepalive,
    };
    let mut sm = Session::start(&connect, state, present, assigned, limits);
    // A resumed session keeps only the subscriptions the ACL still allows.
    let dropped = sm.keep_allowed_subscriptions(|f| {
        let inner = topic::parse_filter(f).map_or(f, |p| p.filter);
        grants.allows(Op::Subscribe(inner))
    });
    for f in dropped {
        tracing::info!(client = %client_id, filter = %f, "mqtt: stored subscription dropped: the ACL no longer allows it");
    }
    sm.grants = Some(grants);
    hub.stats.connections.fetch_add(1, Ordering::Relaxed);
    hub.stats.connections_total.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, client = %client_id, ?version, present, "mqtt: connected");
    let mut c = Conn {
        hub: Arc::clone(hub),
        conn,
        peer,
        sm,
        wr,
        out: BytesMut::new(),
        inbox: inbox_tx,
        acks: VecDeque::new(),
        acked_at: None,
        gathered: Gathered::default(),
        held: VecDeque::new(),
        retrying: false,
        catch_up: Vec::new(),
        dirty: false,
        published: false,
        stop,
    };
    // A resumed session: its subscriptions go live again, and what was published while it
    // was away is read back from the log.
    let filters: Vec<String> = c.sm.filters().map(str::to_string).collect();
    for f in &filters {
        c.hub.subscribe(conn, f, &c.inbox);
    }
    if !filters.is_empty() {
        c.start_catch_up();
    }
    Some(Admitted {
        c,
        rd,
        inbuf,
        inbox,
    })
}

impl Conn {
    /// After the loop: the subscriptions end; the session is stored, handed to the connection
    /// that took it over, kept or forgotten; the will is published unless the client said
    /// goodbye (or the broker is the one going).
    async fn finish(mut self, end: End, inbox: InboxRx) {
        let hub = Arc::clone(&self.hub);
        let conn = self.conn;
        let client_id = self.sm.client_id().to_owned();
        let will = self.sm.will.take();
        let expiry = self.sm.expiry();
        for f in self.sm.filters() {
            hub.unsubscribe(conn, f);
        }
        let persisted = self.sm.persisted();
        let state = self.sm.into_state();
        if expiry > 0 {
            if let Err(e) = hub.persist_durably(&client_id, persisted).await {
                tracing::warn!(client = %client_id, "mqtt: cannot persist session: {e}");
            }
        }
        hub.stats.connections.fetch_sub(1, Ordering::Relaxed);
        let publish_will = match end {
            End::TakenOver(reply) => {
                let _ = reply.send(state);
                true
            }
            End::Graceful | End::Shutdown => {
                hub.release(&client_id, conn, state, &inbox);
                false
            }
            End::Abnormal => {
                hub.release(&client_id, conn, state, &inbox);
                true
            }
        };
        if publish_will {
            if let Some(will) = will {
                hub.publish_will(client_id, conn, will, expiry);
            }
        }
    }
}

/// How long the fsync behind a publish's acknowledgement may wait to be shared with other
/// publishes (`mqtt.sync_delay`, `delay`): only for a client publishing on its own clock, one
/// with no acknowledgement outstanding that sent nothing for four times the delay after its
/// last one. A client waiting for each acknowledgement before it sends again (its next
/// publish follows at once) or keeping several in flight is never held; nor is a first
/// publish, about which nothing is known.
pub(super) fn sync_within(
    delay: Duration,
    nothing_outstanding: bool,
    acked_at: Option<std::time::Instant>,
    now: std::time::Instant,
) -> Duration {
    match acked_at {
        Some(at)
            if nothing_outstanding
                && now.saturating_duration_since(at) >= delay.saturating_mul(4) =>
        {
            delay
        }
        _ => Duration::ZERO,
    }
}

struct Conn {
    hub: Arc<Hub>,
    conn: u64,
    peer: SocketAddr,
    sm: Session,
    wr: WriteHalf,
    out: BytesMut,
    /// What the hub's subscriptions of this connection deliver to.
    inbox: InboxTx,
    /// Appends waiting for their durability, in the order their acknowledgements go out.
    acks: VecDeque<(Acks, AckWait)>,
    /// When the last of them completed ([`sync_within`]).
    acked_at: Option<std::time::Instant>,
    /// Publishes of this turn not appended yet ([`ingest`]).
    gathered: Gathered,
    /// A 3.1.1 QoS 1/2 message the log refused, and whatever was read after it: reading stops
    /// until the log accepts it; they are appended in order then.
    held: VecDeque<(Publish, Ack)>,
    /// Set while held publishes are offered to the log again (each is counted and logged once).
    retrying: bool,
    /// Log partitions still to read back: (topic, partition, end).
    catch_up: Vec<(Arc<str>, u32, u64)>,
    /// Positions moved since the session was last persisted.
    dirty: bool,
    /// Whether the client has published on this connection (a publisher may be held back
    /// while a subscriber catches up, [`super::pressure`]).
    published: bool,
    /// Turns true when the broker stops.
    stop: watch::Receiver<bool>,
}

enum Flow {
    Go,
    Stop(End),
}

/// Why a write to the client did not complete ([`Conn::write_out`]).
enum WriteStop {
    Failed(std::io::Error),
    /// The client read nothing for 1.5 times its keep-alive.
    Stalled,
    /// A new connection asks for the session.
    TakenOver,
    Shutdown,
}

impl Conn {
    fn paused(&self) -> bool {
        !self.held.is_empty()
            || self.sm.inbound_unacked() >= usize::from(self.hub.config.max_inflight)
    }

    fn start_catch_up(&mut self) {
        self.catch_up = self
            .hub
            .partition_ends()
            .into_iter()
            .map(|(t, p, _, end)| (t, p, end))
            .collect();
    }

    async fn run(&mut self, mut rd: ReadHalf, mut inbuf: BytesMut, inbox: &InboxRx) -> End {
        let mut stop = self.stop.clone();
        let max = self.hub.config.max_packet_size.bytes().sat_usize();
        let keep_alive = Duration::from_millis(u64::from(self.sm.keep_alive) * 1500);
        let mut deadline = Instant::now() + keep_alive;
        // Made once, not at every turn of the loop: a turn then registers no timer and no
        // watch waiter (on a fleet of quiet devices each message is a turn of its own). The
        // keep-alive timer is moved on only when it fires before `deadline`.
        let stopped = async { stop.wait_for(|s| *s).await.is_ok() };
        tokio::pin!(stopped);
        let keep_alive_timer = tokio::time::sleep_until(deadline);
        tokio::pin!(keep_alive_timer);
        let mut persist_tick = tokio::time::interval(Duration::from_secs(1));
        persist_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(RETRY);
        let mut last_read = 0usize;
        let mut room = READ_ROOM;
        // The end of the current hold (pressure from a subscriber), if one began.
        let mut hold_until: Option<Instant> = None;
        if let Flow::Stop(end) = self.run_actions().await {
            return end;
        }
        loop {
            // Complete packets already buffered.
            while !self.paused() {
                match codec::read(self.sm.version, &mut inbuf, max) {
                    Ok(Some(p)) => {
                        self.hub.stats.packets_in.fetch_add(1, Ordering::Relaxed);
                        self.sm.handle(p);
                        if let Flow::Stop(end) = self.run_actions().await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // What came before the bad packet is stored.
                        self.append_gathered().await;
                        return self.protocol_error(e).await;
                    }
                }
            }
            self.append_gathered().await;
            if !self.out.is_empty() {
                // Messages already waiting go out in the same write (a publisher subscribed
                // to what it sends gets its PUBACK and the message together).
                if self.takes_deliveries() {
                    if let Some(next) = inbox.try_next() {
                        self.take_deliveries(next, inbox);
                        if let Flow::Stop(end) = self.run_actions().await {
                            return end;
                        }
                    }
                }
                match self.write_out(inbox, keep_alive).await {
                    Ok(()) => {}
                    Err(WriteStop::Failed(e)) => {
                        tracing::debug!(peer = %self.peer, "mqtt: write: {e}");
                        return End::Abnormal;
                    }
                    Err(WriteStop::Stalled) => {
                        tracing::info!(peer = %self.peer, client = %self.sm.client_id(), "mqtt: closing connection: the client read nothing for 1.5 times its keep-alive");
                        return End::Abnormal;
                    }
                    // The new connection gets the session from `finish` (the takeover stays
                    // in the inbox); the old one is not told, it does not read.
                    Err(WriteStop::TakenOver) => {
                        tracing::info!(peer = %self.peer, client = %self.sm.client_id(), "mqtt: session taken over while the client was not reading");
                        return End::Abnormal;
                    }
                    Err(WriteStop::Shutdown) => return End::Shutdown,
                }
            }
            // A publisher without subscriptions of its own is held back (not read) while a
            // subscriber falls behind, for at most HOLD_MAX per episode.
            let pressure = &self.hub.pressure;
            let relieved = (self.published && pressure.is_on()).then(|| pressure.relieved());
            let holding = relieved.is_some()
                && pressure.is_on()
                && !self.sm.has_subscriptions()
                && Instant::now() < *hold_until.get_or_insert_with(|| Instant::now() + HOLD_MAX);
            if relieved.is_none() {
                hold_until = None;
            }
            if self.paused() || holding {
                deadline = Instant::now() + keep_alive;
            }
            // A quiet connection (its last read was small) holds no buffer while it waits: the
            // next read starts small. A busy one keeps room for the next chunk.
            if inbuf.is_empty() && last_read < QUIET_READ {
                if inbuf.capacity() > 0 {
                    inbuf = BytesMut::new();
                }
                room = READ_ROOM;
            } else if inbuf.capacity() - inbuf.len() < room / 4 {
                inbuf.reserve(room);
            }
            let catching_up = !self.catch_up.is_empty();
            let wants = self.sm.wants_more();
            tokio::select! {
                biased;
                _ = &mut stopped => {
                    self.send(Out::Disconnect(reason::SERVER_SHUTTING_DOWN));
                    self.write_goodbye().await;
                    return End::Shutdown;
                }
                reply = inbox.takeover() => {
                    self.send(Out::Disconnect(reason::SESSION_TAKEN_OVER));
                    self.write_goodbye().await;
                    tracing::info!(peer = %self.peer, client = %self.sm.client_id(), "mqtt: session taken over");
                    return End::TakenOver(reply);
                }
                outcome = async {
                    match self.acks.front_mut() {
                        Some((_, wait)) => wait.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if !self.acks.is_empty() => {
                    if let Some((acks, _)) = self.acks.pop_front() {
                        for ack in acks {
                            self.sm.appended(ack, outcome);
                        }
                    }
                    if self.acks.is_empty() {
                        self.acked_at = Some(std::time::Instant::now());
                    }
                }
                // While a publish is held (log full, 3.1.1) or the inbound quota is used up,
                // the connection is read only a little: enough to answer the PINGREQs that
                // come next, so the client sees a live server that is not acknowledging,
                // rather than a dead one to reconnect to and resend everything.
                // Held back: until the subscriber relieves the pressure, or the hold's end.
                _ = async {
                    if let (Some(relieved), Some(until)) = (relieved, hold_until) {
                        let _ = tokio::time::timeout_at(until, relieved).await;
                    }
                }, if holding => {}
                r = read_held(&mut rd, &mut inbuf), if (!self.paused() || inbuf.len() < PAUSED_READ) && !holding => {
                    match r {
                        Ok(0) => {
                            tracing::debug!(peer = %self.peer, "mqtt: connection closed by the client without DISCONNECT");
                            return End::Abnormal;
                        }
                        Ok(n) => {
                            self.hub.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                            deadline = Instant::now() + keep_alive;
                            last_read = n;
                            if n >= room / 2 {
                                room = (room * 2).min(READ_ROOM_MAX);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(peer = %self.peer, "mqtt: read: {e}");
                            return End::Abnormal;
                        }
                    }
                    if self.paused() {
                        while inbuf.starts_with(&[0xc0, 0]) {
                            let _ = inbuf.split_to(2);
                            self.send(Out::PingResp);
                        }
                    }
                    continue;
                }
                // The keep-alive is the client's to keep only while the server reads it.
                _ = &mut keep_alive_timer, if !keep_alive.is_zero() && !self.paused() && !holding => {
                    if Instant::now() < deadline {
                        keep_alive_timer.as_mut().reset(deadline);
                        continue;
                    }
                    tracing::info!(peer = %self.peer, client = %self.sm.client_id(), "mqtt: keep-alive expired");
                    self.send(Out::Disconnect(reason::KEEP_ALIVE_TIMEOUT));
                    self.write_goodbye().await;
                    return End::Abnormal;
                }
                next = inbox.next(), if !catching_up && wants => self.take_deliveries(next, inbox),
                _ = std::future::ready(()), if catching_up && wants => {
                    if let Err(e) = self.catch_up_step().await {
                        tracing::warn!(peer = %self.peer, "mqtt: reading back from the log: {e}");
                        self.catch_up.pop();
                    }
                }
                _ = retry.tick(), if !self.held.is_empty() => {
                    self.retrying = true;
                    while let Some((publish, ack)) = self.held.pop_front() {
                        let left = self.held.len();
                        self.append(publish, ack).await;
                        if self.held.len() > left {
                            break;
                        }
                    }
                    self.retrying = false;
                    if self.held.is_empty() {
                        tracing::info!(peer = %self.peer, client = %self.sm.client_id(), "mqtt: the log accepts again: the held publishes are stored, reading on");
                    }
                }
                // Only a session with read-back positions to save wakes up for it.
                _ = persist_tick.tick(), if self.dirty => {
                    if self.sm.expiry() > 0 {
                        self.dirty = false;
                        if let Err(e) = self.hub.persist(self.sm.client_id(), &self.sm.persisted()) {
                            tracing::warn!("mqtt: persisting session: {e}");
                        }
                    }
                }
            }
            if let Flow::Stop(end) = self.run_actions().await {
                return end;
            }
        }
    }

    /// The session's read-back positions moved: saved within a second if the session outlives
    /// the connection. A clean session's are never saved, so it arms no timer for them (on a
    /// fleet of clean subscribers that was one wake-up a second per subscriber).
    fn positions_moved(&mut self) {
        self.dirty |= self.sm.expiry() > 0;
    }

    /// Takes `next` and what else is waiting in the inbox (at most `DRAIN`) in one turn: one
    /// write (and for a persistent session one store of its delivery state) for all of it.
    fn take_deliveries(&mut self, next: Next, inbox: &InboxRx) {
        let now = now_ms();
        self.take_delivery(next, now);
        for _ in 1..DRAIN {
            if !self.takes_deliveries() {
                break;
            }
            match inbox.try_next() {
                Some(next) => self.take_delivery(next, now),
                None => break,
            }
        }
        if inbox.waiting() < RELIEVE_BELOW {
            self.hub.pressure.relieve();
        }
    }

    /// Whether messages from the inbox may be taken now: no read-back from the log runs (it
    /// goes first) and the session's in-flight window has room.
    fn takes_deliveries(&self) -> bool {
        self.catch_up.is_empty() && self.sm.wants_more()
    }

    fn take_delivery(&mut self, next: Next, now: i64) {
        match next {
            Next::Lagged => {
                self.hub.stats.read_back.fetch_add(1, Ordering::Relaxed);
                // Some messages did not fit the inbox: read them back from the log (what is
                // still queued is offered afterwards, and skipped as already seen).
                self.start_catch_up();
            }
            Next::Delivery(Delivery::Log(m)) => {
                self.sm.offer(&m, now);
                self.positions_moved();
            }
            Next::Delivery(Delivery::Shared(m, raw)) => self.sm.offer_shared(&m, &raw, now),
            Next::Delivery(Delivery::Unlogged(m)) => self.sm.offer_unlogged(&m, now),
        }
    }

    /// Writes what is queued for the client. When it includes a QoS 1/2 PUBLISH or a PUBREL
    /// of a persistent session, the session is stored durably first (write-ahead; the
    /// session module's "Durable delivery state"); sessions writing at the same time share one
    /// flush of the metadata store.
    ///
    /// A client that does not read blocks the write, and while it does the connection reads
    /// nothing either: the write gives up when a new connection asks for the session, when the
    /// broker stops, and after 1.5 times the keep-alive (the client's packets went unread
    /// that long; with keep-alive 0 it waits).
    async fn write_out(&mut self, inbox: &InboxRx, keep_alive: Duration) -> Result<(), WriteStop> {
        self.store_before_write().await;
        let mut stop = self.stop.clone();
        let stall = async {
            if keep_alive.is_zero() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(keep_alive).await;
        };
        // The write first: one that completes at once (the usual case) never arms the timer
        // or the waits.
        let written = tokio::select! {
            biased;
            r = self.write_buffered() => r.map_err(WriteStop::Failed),
            () = inbox.takeover_asked() => Err(WriteStop::TakenOver),
            _ = stop.wait_for(|s| *s) => Err(WriteStop::Shutdown),
            () = stall => Err(WriteStop::Stalled),
        };
        self.clear_out();
        written
    }

    /// Writes the last packets of a connection that ends, for at most [`GOODBYE_WRITE`].
    async fn write_goodbye(&mut self) {
        self.store_before_write().await;
        let _ = tokio::time::timeout(GOODBYE_WRITE, self.write_buffered()).await;
        self.clear_out();
    }

    async fn store_before_write(&mut self) {
        if self.sm.take_needs_sync()
            && self.sm.expiry() > 0
            && self.hub.config.durability != Durability::None
        {
            let (id, p) = (self.sm.client_id(), self.sm.persisted());
            if let Err(e) = self.hub.persist_durably(id, p).await {
                // Sent anyway: the message is due, and a crash before the next store that
                // works only sends it again.
                tracing::error!(client = %id, "mqtt: cannot store the delivery state: {e}");
            }
            self.dirty = false;
        }
    }

    async fn write_buffered(&mut self) -> std::io::Result<()> {
        self.hub
            .stats
            .bytes_out
            .fetch_add(self.out.len() as u64, Ordering::Relaxed);
        write_flushed(&mut self.wr, &self.out).await
    }

    fn clear_out(&mut self) {
        if self.out.capacity() <= OUT_KEEP {
            // Small writes: the next one allocates what it needs.
            self.out = BytesMut::new();
        } else {
            self.out.clear();
        }
    }

    async fn protocol_error(&mut self, e: CodecError) -> End {
        self.hub
            .stats
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(peer = %self.peer, client = %self.sm.client_id(), "mqtt: closing connection: {e}");
        let rc = match e {
            CodecError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            CodecError::Malformed(_) | CodecError::BadLength => reason::MALFORMED,
            CodecError::Auth => reason::BAD_AUTH_METHOD,
            _ => reason::PROTOCOL_ERROR,
        };
        self.send(Out::Disconnect(rc));
        self.write_goodbye().await;
        End::Abnormal
    }

    fn send(&mut self, out: Out) {
        if let Out::Publish(p) = &out {
            self.hub.stats.publishes_out[usize::from(p.qos.min(2))].fetch_add(1, Ordering::Relaxed);
        }
        if matches!(out, Out::Disconnect(_)) && self.sm.version == Version::V311 {
            return;
        }
        codec::write(self.sm.version, &out, &mut self.out);
    }

    /// Reads the next stretch of one partition back from the log into the session.
    async fn catch_up_step(&mut self) -> Result<(), BrokerError> {
        let Some((topic, partition, end)) = self.catch_up.last().cloned() else {
            return Ok(());
        };
        let key = (Arc::clone(&topic), partition);
        let (start, _, _) =
            self.hub
                .broker
                .list_offsets(&topic, partition, crate::proto::OffsetSpec::Earliest)?;
        let (pos, lost) = self.sm.read_back_from(&key, start);
        if lost > 0 {
            tracing::warn!(
                client = %self.sm.client_id(), %topic, partition,
                "mqtt: {lost} messages this session had not received were dropped by retention"
            );
        }
        if pos >= end {
            self.catch_up.pop();
            return Ok(());
        }
        let read = self
            .hub
            .broker
            .fetch(&topic, partition, pos, CATCH_UP_BYTES, 0, Duration::ZERO)
            .await?;
        let now = now_ms();
        for batch in read.batches() {
            for r in batch.records() {
                let Ok(r) = r else { break };
                if let Some(m) = message::from_record(&topic, partition, &r) {
                    self.sm.offer(&m, now);
                }
            }
        }
        let next = read.next_offset.max(pos);
        self.sm.read_back_to(key, next);
        self.positions_moved();
        if next >= end || read.frames.is_empty() {
            self.catch_up.pop();
        }
        Ok(())
    }

    /// Gathers `publish` into this turn's batch ([`ingest`]), or appends it alone when it has
    /// side effects of its own (retained, a QoS 2 resend) or publishes are held.
    async fn gather(&mut self, publish: Publish, ack: Ack) {
        self.published = true;
        let alone = publish.retain
            || (publish.dup && matches!(ack, Ack::PubRec(_)))
            || !self.held.is_empty();
        let place = if alone {
            None
        } else {
            self.hub.place(&publish.topic).ok()
        };
        let Some((topic, partition)) = place else {
            // (An error of the log is reported by the single append.)
            self.append_gathered().await;
            Box::pin(self.append(publish, ack)).await;
            return;
        };
        if !self.gathered.fits(&topic, partition, &publish) {
            self.append_gathered().await;
        }
        self.gathered.push(topic, partition, publish, ack);
    }

    /// Appends the publishes gathered this turn, if any. The append runs in its own
    /// allocation: its state is needed only while it runs, and the connection's future (so
    /// every idle connection) stays the size of its loop.
    async fn append_gathered(&mut self) {
        let Some(mut batch) = self.gathered.take() else {
            return;
        };
        if batch.publishes.len() == 1 {
            if let Some((publish, ack)) = batch.publishes.pop() {
                Box::pin(self.append(publish, ack)).await;
            }
        } else {
            Box::pin(self.append_batch(batch)).await;
        }
    }

    /// Appends gathered publishes as one batch. A batch the log refuses is offered again one
    /// publish at a time, so each gets the answer a single publish gets (held, refused,
    /// dropped and counted).
    async fn append_batch(&mut self, batch: ingest::Batch) {
        let publishes = batch.publishes;
        let durability = ingest::durability(&publishes, self.hub.config.durability);
        // Several publishes in one turn: a client sending as fast as it can, not on a clock.
        let sync_within = Duration::ZERO;
        let mut records = BatchBuilder::with_capacity(batch.bytes);
        let now = now_ms();
        for (publish, _) in &publishes {
            message::push(&mut records, publish, self.sm.client_id(), now);
        }
        match self.hub.append_batch(
            &batch.topic,
            batch.partition,
            &records,
            durability,
            sync_within,
        ) {
            Ok(ticket) => {
                let acks: Vec<Ack> = publishes
                    .into_iter()
                    .map(|(_, ack)| ack)
                    .filter(|ack| *ack != Ack::None)
                    .collect();
                if !acks.is_empty() {
                    let wait = Box::pin(outcome(ticket, None));
                    self.acks.push_back((Acks::Many(acks), wait));
                }
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, count = publishes.len(), "mqtt: a batch was refused ({e}); appending its publishes one by one");
                for (publish, ack) in publishes {
                    Box::pin(self.append(publish, ack)).await;
                }
            }
        }
    }

    /// Appends one publish. Its callers in the gathering path box this future: inline, it
    /// would sit in every connection's future, idle ones included (about 500 bytes each).
    async fn append(&mut self, publish: Publish, ack: Ack) {
        // Nothing passes a held publish.
        if !self.held.is_empty() && !self.retrying {
            self.held.push_back((publish, ack));
            return;
        }
        // A QoS 2 resend whose first copy the log has (the session's state was lost in a
        // broker restart between the append and the PUBREC): acknowledged, not stored again.
        if publish.dup
            && matches!(ack, Ack::PubRec(_))
            && self
                .hub
                .stored_recently(&publish, self.sm.client_id())
                .await
        {
            tracing::debug!(peer = %self.peer, pkid = publish.pkid, "mqtt: a QoS 2 resend already stored; not stored again");
            self.acks
                .push_back((Acks::One(ack), Box::pin(async { AppendOutcome::Stored })));
            return;
        }
        let durability = if ack == Ack::None {
            Durability::Written
        } else {
            self.hub.config.durability
        };
        let retain_flush = publish.retain && ack != Ack::None;
        let within = sync_within(
            self.hub.config.sync_delay.0,
            self.acks.is_empty(),
            self.acked_at,
            std::time::Instant::now(),
        );
        match self
            .hub
            .append(&publish, self.sm.client_id(), durability, within)
        {
            Ok(ticket) => {
                if publish.retain {
                    if let Err(e) = self.hub.retain(&publish, self.sm.client_id()) {
                        tracing::warn!("mqtt: retained message not stored: {e}");
                    }
                }
                if ack == Ack::None {
                    return;
                }
                let flush = retain_flush.then(|| Arc::clone(&self.hub));
                self.acks
                    .push_back((Acks::One(ack), Box::pin(outcome(ticket, flush))));
            }
            Err(BrokerError::Log(LogError::LogFull { topic, reason, .. })) => {
                if ack == Ack::None {
                    self.hub.stats.dropped_qos0.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if self.sm.version == Version::V311 {
                    // Counted and logged once per message, not at every retry.
                    if !self.retrying {
                        self.hub.stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(peer = %self.peer, client = %self.sm.client_id(), %topic, "mqtt: log full ({reason}): holding a 3.1.1 publish unacknowledged, reading nothing more from this client until the log accepts it");
                    }
                    if self.retrying {
                        self.held.push_front((publish, ack));
                    } else {
                        self.held.push_back((publish, ack));
                    }
                } else {
                    self.hub.stats.refused.fetch_add(1, Ordering::Relaxed);
                    self.acks.push_back((
                        Acks::One(ack),
                        Box::pin(async { AppendOutcome::QuotaExceeded }),
                    ));
                }
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, "mqtt: append: {e}");
                self.acks
                    .push_back((Acks::One(ack), Box::pin(async { AppendOutcome::Failed })));
            }
        }
    }

    async fn run_actions(&mut self) -> Flow {
        loop {
            let actions = self.sm.take_actions();
            if actions.len() == 0 {
                return Flow::Go;
            }
            for a in actions {
                // Gathered publishes go to the log before anything that may depend on them
                // (a subscription from now on, a close).
                if !matches!(a, Action::Send(_) | Action::Append { .. }) {
                    self.append_gathered().await;
                }
                match a {
                    Action::Send(out) => self.send(out),
                    Action::Append { publish, ack } => {
                        self.hub.stats.publishes_in[usize::from(publish.qos.min(2))]
                            .fetch_add(1, Ordering::Relaxed);
                        self.gather(publish, ack).await;
                    }
                    Action::Subscribe { filter, is_new, .. } => {
                        self.hub.subscribe(self.conn, &filter, &self.inbox);
                        // A new subscription matches what is appended from now on; a repeated
                        // SUBSCRIBE keeps where the subscription started. A session's first
                        // subscription also starts its reading positions at the end.
                        if is_new && !filter.starts_with("$share/") {
                            let ends = self.hub.partition_ends();
                            let ends = ends.into_iter().map(|(t, p, _, end)| (t, p, end));
                            self.sm.subscribed_from(filter, ends.collect());
                        }
                    }
                    Action::Unsubscribe { filter } => self.hub.unsubscribe(self.conn, &filter),
                    Action::SendRetained { filter, options } => {
                        let now = now_ms();
                        for m in self.hub.retained_matching(&filter) {
                            self.sm.offer_retained(&m, &options, now);
                        }
                    }
                    Action::Persist => {
                        if self.sm.expiry() > 0 {
                            let (id, p) = (self.sm.client_id(), self.sm.persisted());
                            if let Err(e) = self.hub.persist_durably(id, p).await {
                                tracing::error!(client = %id, "mqtt: cannot persist subscriptions: {e}");
                            }
                        }
                    }
                    Action::Close {
                        reason,
                        graceful,
                        error,
                        why,
                    } => {
                        if let Some(rc) = reason {
                            self.send(Out::Disconnect(rc));
                        }
                        self.write_goodbye().await;
                        self.out.clear();
                        if graceful {
                            tracing::debug!(peer = %self.peer, "mqtt: {why}");
                            return Flow::Stop(End::Graceful);
                        }
                        if error {
                            self.hub
                                .stats
                                .protocol_errors
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::info!(peer = %self.peer, client = %self.sm.client_id(), "mqtt: closing connection: {why}");
                        }
                        return Flow::Stop(End::Abnormal);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::sync_within;

    /// Only a client on its own clock lets its fsync wait: nothing outstanding, and quiet for
    /// four times the delay since its last acknowledgement.
    #[test]
    fn only_a_client_publishing_on_its_own_clock_lets_its_fsync_wait() {
        let delay = Duration::from_millis(5);
        let now = Instant::now() + Duration::from_secs(1);
        let quiet = Some(now - Duration::from_millis(100));
        let eager = Some(now - Duration::from_micros(80));
        assert_eq!(sync_within(delay, true, quiet, now), delay);
        // Waits for each acknowledgement and sends again at once.
        assert_eq!(sync_within(delay, true, eager, now), Duration::ZERO);
        // Keeps others in flight.
        assert_eq!(sync_within(delay, false, quiet, now), Duration::ZERO);
        // Its first publish: nothing known.
        assert_eq!(sync_within(delay, true, None, now), Duration::ZERO);
        // Turned off.
        assert_eq!(
            sync_within(Duration::ZERO, true, quiet, now),
            Duration::ZERO
        );
    }
}
