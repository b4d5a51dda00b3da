//! The native protocol listener (see [`crate::proto`] for the wire format).
//!
//! Each connection has a reader and a writer ([`crate::proto::stream`], as the client has). The
//! reader cuts frames from the socket (bounded by `max_frame`), checks them, and starts one task per request; the writer sends each answer as
//! soon as it is ready, so requests are pipelined, and neither a slow durable produce nor a long
//! poll holds up the answers behind it (clients match answers by correlation id). Produces are
//! put in the log by the reader itself, in request order, so order within a partition is what the
//! client sent; only their wait for durability runs concurrently. At most `max_in_flight`
//! requests of one connection run at once (back-pressure on the socket).
//!
//! A malformed, oversized or undecodable frame, or a request before the handshake, gets an
//! `Error` answer (correlation id 0 when it could not be read) and closes that one connection,
//! with the reason logged. Connections beyond `max_connections` are answered with an error and
//! closed, and so is one from an address that holds `auth.max_connections_per_address`
//! already. Until its login (the handshake, then `Authenticate` where users are required) a
//! connection has one `auth.handshake_timeout` from its accept, TLS handshake included, and
//! frames of at most `auth.max_frame_before_login`; it may be closed to make room when half
//! the listener's slots have not logged in ([`crate::auth::ListenerSlots`]). After it, a
//! connection silent for `idle_timeout` is closed, and so is one whose answers go unread that
//! long. Requests are checked against the ACL (`handle::authorize`), and topic listings hold
//! only what the client may see. On shutdown the listener stops accepting, every connection
//! stops reading, and the answers in flight are still sent, within 3 s.

mod handle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::auth::{Auth, ConnSlot, Full, ListenerSlots, Principal};
use crate::broker::Broker;
use crate::net::tls::{Accepted, TlsServer};
use crate::proto::{
    self, ErrorCode, FrameError, PROTOCOL_VERSION, Request, RequestFrame, Response,
};

/// Limits of the native listener.
#[derive(Clone, Debug)]
pub struct NativeLimits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// Largest frame accepted (length field: CRC + message).
    pub max_frame: usize,
    /// Requests of one connection processed at once.
    pub max_in_flight: usize,
}

impl Default for NativeLimits {
    fn default() -> Self {
        NativeLimits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(600),
            max_frame: 16 << 20,
            max_in_flight: 64,
        }
    }
}

/// Connection counters for `/metrics`.
#[derive(Debug, Default)]
pub struct NativeStats {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub protocol_errors: AtomicU64,
}

/// What the native listeners (plain and TLS) share.
#[derive(Debug)]
pub struct Shared {
    pub broker: Arc<Broker>,
    pub auth: Arc<Auth>,
    pub limits: NativeLimits,
    pub stats: Arc<NativeStats>,
    pub slots: ListenerSlots,
}

/// Accepts connections until `shutdown` turns true.
pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Shared {
        broker,
        auth,
        limits,
        stats,
        slots,
    } = &*shared;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            // A connection that ended gives its memory back now, not at the next accept.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("native listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + auth.handshake_timeout();
        let Some(admitted) = auth.admit("native", peer.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = match slots.take() {
            Ok((s, evicted)) => {
                if evicted {
                    auth.pending_evicted("native");
                }
                s
            }
            Err(Full::All) => {
                stats.connections_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "native connection refused: {} connections open", limits.max_connections);
                let mut stream = stream;
                let _ = stream
                    .write_all(&handle::error(
                        0,
                        ErrorCode::Unknown,
                        "too many connections",
                    ))
                    .await;
                continue;
            }
        };
        stats.connections_total.fetch_add(1, Ordering::Relaxed);
        let broker = Arc::clone(broker);
        let auth = Arc::clone(auth);
        let tls = tls.clone();
        let limits = limits.clone();
        let stats = Arc::clone(stats);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            stats.connections_open.fetch_add(1, Ordering::Relaxed);
            let accepted = match &tls {
                None => Ok((Accepted::Plain(stream), None)),
                Some(t) => auth
                    .accept_tls(t, stream)
                    .await
                    .map(|(s, cn)| (Accepted::Tls(Box::new(s)), cn)),
            };
            let result = match accepted {
                Ok((stream, cn)) => {
                    let conn = Conn {
                        peer,
                        broker,
                        auth,
                        limits,
                        slot,
                        deadline,
                    };
                    connection(stream, cn, conn, shutdown).await
                }
                Err(e) => Err(e.into()),
            };
            if let Err(reason) = result {
                stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "native connection closed: {reason}");
            }
            stats.connections_open.fetch_sub(1, Ordering::Relaxed);
            drop(admitted);
        });
        while connections.try_join_next().is_some() {}
    }
    // Let every connection send what it owes.
    while connections.join_next().await.is_some() {}
}

/// Why a native connection was closed for something its peer did (logged with the peer; the
/// peer is sent the same words in an `Error` answer where it can still read one).
#[derive(Debug, thiserror::Error)]
pub enum Closed {
    #[error(transparent)]
    Tls(#[from] crate::net::tls::HandshakeError),
    #[error("bad frame: {0}")]
    Frame(FrameError),
    #[error("undecodable request: {0}")]
    Undecodable(postcard::Error),
    #[error("request before the handshake")]
    NoHandshake,
    #[error("client speaks protocol version {0}, this server {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("Authenticate must come right after the handshake")]
    LateLogin,
    #[error("login as {user:?} refused: {refusal}")]
    Login {
        user: String,
        refusal: crate::auth::Refusal,
    },
    #[error("{0}: send Authenticate right after the handshake")]
    LoginRequired(crate::auth::Refusal),
    #[error("closed before its login to make room for a newer connection")]
    Evicted,
    #[error("connection ended inside a frame ({0} bytes)")]
    EndedInFrame(usize),
    #[error("read error: {0}")]
    Read(std::io::Error),
    #[error("no handshake and login within {0:?} (auth.handshake_timeout)")]
    HandshakeTimeout(Duration),
}

/// What one connection is served with.
struct Conn {
    peer: SocketAddr,
    broker: Arc<Broker>,
    auth: Arc<Auth>,
    limits: NativeLimits,
    /// Its hold on the listener: in the pre-login half until it has logged in.
    slot: ConnSlot,
    /// The end of the time for the TLS handshake, the handshake and the login.
    deadline: tokio::time::Instant,
}

/// Serves one connection. `Err` carries the reason it was closed for a protocol violation.
async fn connection(
    stream: Accepted,
    cert_user: Option<String>,
    conn: Conn,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Closed> {
    let Conn {
        peer,
        broker,
        auth,
        limits,
        mut slot,
        deadline,
    } = conn;
    let (mut rd, wr) = stream.split();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(limits.max_in_flight.max(1));
    let slots = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    // A client that does not read its answers is let go after the idle timeout, as one that
    // sends nothing is.
    let mut writer = tokio::spawn(proto::write_frames_within(
        wr,
        rx,
        Some(limits.idle_timeout),
    ));
    let mut frames = proto::FrameReader::new();
    let mut client_id: Option<Arc<str>> = None;
    // The protocol version the client said it speaks (what its fetch answers may hold).
    let mut client_version = PROTOCOL_VERSION;
    let mut principal: Option<Principal> = None;
    let result: Result<(), Closed> = 'conn: loop {
        // Cut every complete frame out of the buffer.
        loop {
            let max_frame = if slot.is_logged_in() {
                limits.max_frame
            } else {
                limits.max_frame.min(auth.max_frame_before_login())
            };
            match frames.next_frame(max_frame) {
                Ok(Some(msg)) => {
                    let owned = msg.to_vec();
                    let frame = match postcard::from_bytes::<RequestFrame<'_>>(&owned) {
                        Ok(r) => r,
                        Err(e) => {
                            let reason = Closed::Undecodable(e);
                            let _ = tx
                                .send(handle::error(
                                    0,
                                    ErrorCode::InvalidRequest,
                                    &reason.to_string(),
                                ))
                                .await;
                            break 'conn Err(reason);
                        }
                    };
                    let id = frame.correlation_id;
                    // First the handshake.
                    let Some(client) = client_id.clone() else {
                        let Request::Handshake {
                            version,
                            client_id: c,
                        } = frame.request
                        else {
                            let reason = Closed::NoHandshake;
                            let _ = tx
                                .send(handle::error(
                                    id,
                                    ErrorCode::HandshakeRequired,
                                    &reason.to_string(),
                                ))
                                .await;
                            break 'conn Err(reason);
                        };
                        if version > PROTOCOL_VERSION {
                            let reason = Closed::Version(version);
                            let _ = tx
                                .send(handle::error(
                                    id,
                                    ErrorCode::UnsupportedVersion,
                                    &reason.to_string(),
                                ))
                                .await;
                            break 'conn Err(reason);
                        }
                        client_id = Some(Arc::from(c));
                        client_version = version;
                        // A verified client certificate is the login (cert_cn_as_username).
                        if let Some(cn) = &cert_user {
                            let user = auth.login_certificate(cn);
                            principal = Some(Principal::new(Arc::clone(&auth), Some(user), c));
                            slot.logged_in();
                        } else if auth.anonymous_allowed() {
                            // Nothing more to prove (a login may still follow).
                            slot.logged_in();
                        }
                        let server = concat!("brook ", env!("CARGO_PKG_VERSION"));
                        let bytes = handle::answer(
                            id,
                            &Response::Handshake {
                                version: PROTOCOL_VERSION,
                                server,
                            },
                        );
                        if tx.send(bytes).await.is_err() {
                            break 'conn Ok(());
                        }
                        continue;
                    };
                    // Then the login, if any: reading waits for the password check, so
                    // nothing sent after it runs before it is decided.
                    if let Request::Authenticate { username, password } = frame.request {
                        if principal.is_some() {
                            let reason = Closed::LateLogin;
                            let _ = tx
                                .send(handle::error(
                                    id,
                                    ErrorCode::InvalidRequest,
                                    &reason.to_string(),
                                ))
                                .await;
                            break 'conn Err(reason);
                        }
                        match auth.login(Some(username), Some(password), peer.ip()).await {
                            Ok(user) => {
                                principal = Some(Principal::new(Arc::clone(&auth), user, &client));
                                slot.logged_in();
                                if tx.send(handle::answer(id, &Response::Done)).await.is_err() {
                                    break 'conn Ok(());
                                }
                                continue;
                            }
                            Err(refusal) => {
                                let _ = tx
                                    .send(handle::error(
                                        id,
                                        ErrorCode::AuthenticationFailed,
                                        &refusal.to_string(),
                                    ))
                                    .await;
                                break 'conn Err(Closed::Login {
                                    user: username.to_string(),
                                    refusal,
                                });
                            }
                        }
                    }
                    let who = match &principal {
                        Some(p) => p.clone(),
                        None => match auth.login(None, None, peer.ip()).await {
                            Ok(_) => {
                                let p = Principal::new(Arc::clone(&auth), None, &client);
                                principal = Some(p.clone());
                                p
                            }
                            Err(refusal) => {
                                let reason = Closed::LoginRequired(refusal);
                                let _ = tx
                                    .send(handle::error(
                                        id,
                                        ErrorCode::AuthenticationFailed,
                                        &reason.to_string(),
                                    ))
                                    .await;
                                break 'conn Err(reason);
                            }
                        },
                    };
                    if let Err(op) = handle::authorize(&who, &frame.request) {
                        let reason = format!("user {:?} may not {op}", who.name());
                        tracing::debug!(%peer, client = %client, "native: {reason}");
                        if tx
                            .send(handle::error(id, ErrorCode::NotAuthorized, &reason))
                            .await
                            .is_err()
                        {
                            break 'conn Ok(());
                        }
                        continue;
                    }
                    // Produces are put in the log right here, in request order (so a
                    // pipelining producer keeps its order within each partition); only the wait
                    // for durability runs concurrently.
                    let produce = match &frame.request {
                        Request::Produce(p) => Some((1, p)),
                        Request::ProduceBatch { layout, produce } => Some((*layout, produce)),
                        _ => None,
                    };
                    if let Some((layout, p)) = produce {
                        let sent = match handle::produce_start(&broker, id, layout, p) {
                            Ok(done) => answer_later(&slots, &tx, &mut shutdown, done).await,
                            Err(answer) => tx.send(answer).await.is_ok(),
                        };
                        if !sent {
                            break 'conn Ok(());
                        }
                        continue;
                    }
                    drop(frame);
                    let broker = Arc::clone(&broker);
                    let work = async move {
                        match postcard::from_bytes::<RequestFrame<'_>>(&owned) {
                            Ok(r) => {
                                let peer = handle::Peer {
                                    client_version,
                                    max_frame: limits.max_frame,
                                };
                                handle::handle(&broker, &who, peer, r.correlation_id, r.request)
                                    .await
                            }
                            Err(e) => handle::error(id, ErrorCode::InvalidRequest, &e.to_string()),
                        }
                    };
                    if !answer_later(&slots, &tx, &mut shutdown, work).await {
                        break 'conn Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let reason = Closed::Frame(e);
                    let _ = tx
                        .send(handle::error(
                            0,
                            ErrorCode::InvalidRequest,
                            &reason.to_string(),
                        ))
                        .await;
                    break 'conn Err(reason);
                }
            }
        }
        // Until the handshake and login, one deadline from the accept; then the idle timeout.
        let logged_in = slot.is_logged_in();
        let until = if logged_in {
            tokio::time::Instant::now() + limits.idle_timeout
        } else {
            deadline
        };
        let read = tokio::select! {
            _ = slot.evicted(), if !logged_in => {
                break 'conn Err(Closed::Evicted);
            }
            r = tokio::time::timeout_at(until, frames.fill(&mut rd)) => r,
            _ = shutdown.wait_for(|s| *s) => {
                break 'conn Ok(());
            }
        };
        match read {
            Ok(Ok(0)) => {
                if frames.partial() > 0 {
                    break 'conn Err(Closed::EndedInFrame(frames.partial()));
                }
                break 'conn Ok(());
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                break 'conn Err(Closed::Read(e));
            }
            Err(_) => {
                if !logged_in {
                    auth.handshake_timed_out();
                    break 'conn Err(Closed::HandshakeTimeout(auth.handshake_timeout()));
                }
                tracing::info!(%peer, "native connection idle for {:?}; closing", limits.idle_timeout);
                break 'conn Ok(());
            }
        }
    };
    drop(tx);
    // The answers owed are sent; when the broker stops, within SHUTDOWN_GRACE (a client that
    // does not read them is not waited for longer).
    let stopping = async {
        let _ = shutdown.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = &mut writer => {}
        () = stopping => {
            writer.abort();
            tracing::info!(%peer, "native connection: answers not taken within {SHUTDOWN_GRACE:?} of the stop are dropped");
        }
    }
    result
}

/// How long the answers still owed when the broker stops may take to write.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Runs a request's work in its own task and queues its answer when done. Waits for one of the
/// connection's `max_in_flight` slots first (back-pressure on reading). `false`: the connection's
/// writer is gone, or the server stops while every slot is taken (a client that does not read
/// its answers holds them).
async fn answer_later(
    slots: &Arc<Semaphore>,
    tx: &mpsc::Sender<Vec<u8>>,
    shutdown: &mut watch::Receiver<bool>,
    work: impl std::future::Future<Output = Vec<u8>> + Send + 'static,
) -> bool {
    // The slot first: one free at once (the usual case) registers no wait for the stop.
    let permit = tokio::select! {
        biased;
        p = Arc::clone(slots).acquire_owned() => p,
        _ = shutdown.wait_for(|s| *s) => return false,
    };
    let Ok(permit) = permit else {
        return false;
    };
    if tx.is_closed() {
        return false;
    }
    let tx = tx.clone();
    tokio::spawn(async move {
        let answer = work.await;
        let _ = tx.send(answer).await;
        drop(permit);
    });
    true
}
