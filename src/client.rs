//! An async Rust client for the native protocol (used by the CLI, the tests and benchmarks).
//!
//! [`Client`] is one connection: requests are pipelined (many in flight, answers matched by
//! correlation id). [`Producer`] batches records per partition with a size and a linger bound
//! and keeps several batches in flight; [`Consumer`] reads assigned partitions, optionally as a
//! member of a consumer group (join, heartbeat, commit, leave).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use heapless::Vec as HVec;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::log::record::RecordLayout;
use crate::log::{BatchBuilder, BatchView, Record};
use crate::proto::{
    self, Acks, Assignor, CommitEntry, ErrorCode, Fetch, OffsetSpec, PROTOCOL_VERSION, Produce,
    Request, RequestFrame, Response, ResponseFrame, TopicOptions, TopicSettings,
};
use crate::units::Narrow;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection lost: {0}")]
    Closed(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{message} ({code:?})")]
    Server { code: ErrorCode, message: String },
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Answers awaited, by correlation id; `None` once the connection is gone (every waiter has
/// failed, and a new request fails at once instead of waiting for an answer that cannot come).
type Pending = Arc<Mutex<Option<HashMap<u32, oneshot::Sender<Vec<u8>>>>>>;

/// One connection to a Brook server.
pub struct Client {
    out: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU32,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    pub server: String,
    /// The protocol version this connection speaks: ours, or 1 with a server that predates
    /// version 2 (which cannot store null values).
    pub protocol: u16,
}

/// TLS settings of a client connection: the CAs to trust and, for mutual TLS, a certificate.
#[derive(Clone)]
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    /// The name to verify the server's certificate against (default: the address's host).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CAs in `ca_file` (PEM); presents `cert_key` (certificate chain and key
    /// files, PEM) when given. Errors name the file.
    pub fn new(
        ca_file: &std::path::Path,
        cert_key: Option<(&std::path::Path, &std::path::Path)>,
    ) -> std::result::Result<ClientTls, crate::net::tls::TlsError> {
        let config = crate::net::tls::client_config(ca_file, cert_key)?;
        Ok(ClientTls::with_config(Arc::new(config)))
    }

    /// From a ready rustls configuration (shared by every connection that uses it).
    pub fn with_config(config: Arc<rustls::ClientConfig>) -> ClientTls {
        ClientTls {
            connector: tokio_rustls::TlsConnector::from(config),
            server_name: None,
        }
    }
}

/// Sends queued requests, several per write when they are ready together.
async fn write_requests<W: tokio::io::AsyncWrite + Unpin>(
    mut wr: W,
    mut out_rx: mpsc::Receiver<Vec<u8>>,
) {
    let mut buf = Vec::new();
    while let Some(frame) = out_rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&frame);
        while let Ok(more) = out_rx.try_recv() {
            buf.extend_from_slice(&more);
            if buf.len() > 1 << 20 {
                break;
            }
        }
        if crate::net::tls::write_flushed(&mut wr, &buf).await.is_err() {
            return;
        }
    }
}

/// Cuts answers from the connection and hands each to its waiter; when the connection ends,
/// every waiter fails and so does every later request.
async fn read_answers<R: tokio::io::AsyncRead + Unpin>(mut rd: R, p: Pending) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        loop {
            match proto::decode_frame(&buf, usize::MAX) {
                Ok((msg, total)) => {
                    let id = postcard::take_from_bytes::<u32>(msg).map(|(id, _)| id);
                    let msg = msg.to_vec();
                    buf.drain(..total);
                    if let Ok(id) = id {
                        let waiter = p
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .as_mut()
                            .and_then(|m| m.remove(&id));
                        if let Some(w) = waiter {
                            let _ = w.send(msg);
                        } else if id == 0 {
                            // An error about the connection itself; every waiter fails.
                            let all: Vec<_> = p
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .as_mut()
                                .map(|m| m.drain().collect())
                                .unwrap_or_default();
                            for (_, w) in all {
                                let _ = w.send(msg.clone());
                            }
                        }
                    }
                }
                Err(proto::FrameError::Incomplete { .. }) => break,
                Err(_) => {
                    *p.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    return;
                }
            }
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                *p.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// An owned fetch answer: whole batch frames as stored.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    pub frames: Vec<u8>,
    pub high_watermark: u64,
    pub log_start: u64,
    pub next_offset: u64,
}

impl Fetched {
    /// The owned form of a `Fetched` answer (`None` for any other answer).
    pub fn from_response(r: &Response<'_>) -> Option<Fetched> {
        match r {
            Response::Fetched {
                high_watermark,
                log_start,
                next_offset,
                frames,
            } => Some(Fetched {
                frames: frames.to_vec(),
                high_watermark: *high_watermark,
                log_start: *log_start,
                next_offset: *next_offset,
            }),
            _ => None,
        }
    }

    /// Every record from `from` on.
    pub fn records(&self, from: u64) -> Result<Vec<(u64, Record)>> {
        let mut out = Vec::new();
        let mut rest: &[u8] = &self.frames;
        while !rest.is_empty() {
            let b = BatchView::parse(rest).map_err(|e| ClientError::Protocol(e.to_string()))?;
            for r in b.records() {
                let r = r.map_err(|e| ClientError::Protocol(e.to_string()))?;
                if r.offset >= from {
                    out.push((r.offset, r.to_record()));
                }
            }
            rest = &rest[b.frame().len()..];
        }
        Ok(out)
    }
}

/// A topic as `describe` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TopicDescription {
    pub name: String,
    pub retention_ms: u64,
    pub retention_bytes: u64,
    pub segment_bytes: u64,
    pub reject_when_full: bool,
    pub partitions: Vec<proto::PartitionInfo>,
}

/// A member of a group as `describe` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GroupMember {
    pub member_id: String,
    pub client_id: String,
    /// (topic, partition) pairs assigned to it.
    pub assignment: Vec<(String, u32)>,
}

/// What joining a group gives the member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    pub member_id: String,
    pub generation: u32,
    /// (topic, partition) pairs assigned to the member.
    pub assignment: Vec<(String, u32)>,
}

/// A group as `describe` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GroupDescription {
    pub generation: u32,
    pub members: Vec<GroupMember>,
    /// (topic, partition, committed, end offset)
    pub offsets: Vec<(String, u32, Option<u64>, u64)>,
}

fn server_error(r: &Response<'_>) -> ClientError {
    match r {
        Response::Error { code, message } => ClientError::Server {
            code: *code,
            message: message.to_string(),
        },
        other => ClientError::Protocol(format!("unexpected answer {other:?}")),
    }
}

impl Client {
    /// Connects and performs the handshake.
    pub async fn connect(addr: &str, client_id: &str) -> Result<Client> {
        Client::connect_with(addr, client_id, None).await
    }

    /// Connects (over TLS with `tls`) and performs the handshake; a server that refuses our
    /// protocol version as too new is asked again, on a new connection, with version 1.
    pub async fn connect_with(
        addr: &str,
        client_id: &str,
        tls: Option<&ClientTls>,
    ) -> Result<Client> {
        match Client::connect_version(addr, client_id, tls, PROTOCOL_VERSION).await {
            Err(ClientError::Server {
                code: ErrorCode::UnsupportedVersion,
                ..
            }) => Client::connect_version(addr, client_id, tls, 1).await,
            other => other,
        }
    }

    async fn connect_version(
        addr: &str,
        client_id: &str,
        tls: Option<&ClientTls>,
        version: u16,
    ) -> Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (out, out_rx) = mpsc::channel::<Vec<u8>>(256);
        let (reader, writer) =
            match tls {
                None => {
                    let (rd, wr) = stream.into_split();
                    (
                        tokio::spawn(read_answers(rd, Arc::clone(&pending))),
                        tokio::spawn(write_requests(wr, out_rx)),
                    )
                }
                Some(t) => {
                    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                    let name = t.server_name.as_deref().unwrap_or(host);
                    let name = rustls::pki_types::ServerName::try_from(
                        name.trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_string(),
                    )
                    .map_err(|e| ClientError::Protocol(format!("TLS server name {name:?}: {e}")))?;
                    let stream = t.connector.connect(name, stream).await.map_err(|e| {
                        ClientError::Connect {
                            addr: addr.to_string(),
                            source: e,
                        }
                    })?;
                    let (rd, wr) = tokio::io::split(stream);
                    (
                        tokio::spawn(read_answers(rd, Arc::clone(&pending))),
                        tokio::spawn(write_requests(wr, out_rx)),
                    )
                }
            };
        let mut client = Client {
            out,
            pending,
            next_id: AtomicU32::new(1),
            reader,
            writer,
            server: String::new(),
            protocol: version,
        };
        let bytes = client
            .send(&Request::Handshake { version, client_id })
            .await?;
        match decode(&bytes)?.response {
            Response::Handshake { server, .. } => client.server = server.to_string(),
            other => return Err(server_error(&other)),
        }
        Ok(client)
    }

    /// Logs in as `username`; call it right after [`Client::connect`], before anything else.
    /// A refusal is [`ErrorCode::AuthenticationFailed`] and the server closes the connection.
    pub async fn login(&self, username: &str, password: &[u8]) -> Result<()> {
        let bytes = self
            .send(&Request::Authenticate { username, password })
            .await?;
        match decode(&bytes)?.response {
            Response::Done => Ok(()),
            other => Err(server_error(&other)),
        }
    }

    /// Connects, performs the handshake and, given a user name and password, logs in.
    pub async fn connect_as(
        addr: &str,
        client_id: &str,
        login: Option<(&str, &[u8])>,
    ) -> Result<Client> {
        Client::connect_secure(addr, client_id, None, login).await
    }

    /// Connects (over TLS with `tls`), performs the handshake and logs in with `login`.
    pub async fn connect_secure(
        addr: &str,
        client_id: &str,
        tls: Option<&ClientTls>,
        login: Option<(&str, &[u8])>,
    ) -> Result<Client> {
        let client = Client::connect_with(addr, client_id, tls).await?;
        if let Some((user, password)) = login {
            client.login(user, password).await?;
        }
        Ok(client)
    }

    /// Sends a request and waits for its answer (the raw message, decode with [`decode`]).
    pub async fn send(&self, request: &Request<'_>) -> Result<Vec<u8>> {
        let rx = self.submit(request).await?;
        rx.await
            .map_err(|_| ClientError::Closed("the server closed the connection".into()))
    }

    /// Sends a request without waiting: the answer arrives on the returned channel (pipelining).
    pub async fn submit(&self, request: &Request<'_>) -> Result<oneshot::Receiver<Vec<u8>>> {
        let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        let frame = proto::encode(&RequestFrame {
            correlation_id: id,
            request: request.clone(),
        });
        let (tx, rx) = oneshot::channel();
        match self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            Some(m) => m.insert(id, tx),
            None => {
                return Err(ClientError::Closed(
                    "the server closed the connection".into(),
                ));
            }
        };
        self.out
            .send(frame)
            .await
            .map_err(|_| ClientError::Closed("connection writer stopped".into()))?;
        Ok(rx)
    }

    async fn expect_done(&self, request: &Request<'_>) -> Result<()> {
        let bytes = self.send(request).await?;
        match decode(&bytes)?.response {
            Response::Done => Ok(()),
            other => Err(server_error(&other)),
        }
    }

    /// Produces one batch; returns `(partition, base offset, next offset)`.
    pub async fn produce(
        &self,
        topic: &str,
        partition: Option<u32>,
        partition_key: Option<&[u8]>,
        acks: Acks,
        batch: &BatchBuilder,
    ) -> Result<(u32, u64, u64)> {
        let rx = self
            .submit_produce(topic, partition, partition_key, acks, batch)
            .await?;
        produced(rx).await
    }

    async fn submit_produce(
        &self,
        topic: &str,
        partition: Option<u32>,
        partition_key: Option<&[u8]>,
        acks: Acks,
        batch: &BatchBuilder,
    ) -> Result<oneshot::Receiver<Vec<u8>>> {
        let produce = Produce {
            topic,
            partition,
            partition_key,
            acks,
            record_count: batch.count(),
            first_timestamp: batch.first_timestamp(),
            records: batch.records_bytes(),
        };
        match batch.layout() {
            RecordLayout::Plain => self.submit(&Request::Produce(produce)).await,
            layout if self.protocol >= 2 => {
                self.submit(&Request::ProduceBatch {
                    layout: layout as u8,
                    produce,
                })
                .await
            }
            _ => Err(ClientError::Protocol(format!(
                "the server ({}) speaks protocol 1, which cannot store null values",
                self.server
            ))),
        }
    }

    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        min_bytes: u32,
        max_wait: Duration,
    ) -> Result<Fetched> {
        let bytes = self
            .send(&Request::Fetch(Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                min_bytes,
                max_wait_ms: max_wait.as_millis().min(u128::from(u32::MAX)).sat_u32(),
            }))
            .await?;
        let r = decode(&bytes)?.response;
        Fetched::from_response(&r).ok_or_else(|| server_error(&r))
    }

    /// `(earliest, latest, answer)`.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<(u64, u64, Option<u64>)> {
        let bytes = self
            .send(&Request::ListOffsets {
                topic,
                partition,
                spec,
            })
            .await?;
        match decode(&bytes)?.response {
            Response::Offset {
                earliest,
                latest,
                offset,
            } => Ok((earliest, latest, offset)),
            other => Err(server_error(&other)),
        }
    }

    pub async fn create_topic(&self, name: &str, settings: TopicSettings) -> Result<()> {
        self.expect_done(&Request::CreateTopic { name, settings })
            .await
    }

    /// [`Client::create_topic`] with the settings of protocol 2 (a cleanup policy); with a
    /// server that predates them, only default options are accepted.
    pub async fn create_topic_with(
        &self,
        name: &str,
        settings: TopicSettings,
        options: TopicOptions,
    ) -> Result<()> {
        if options == TopicOptions::default() {
            return self.create_topic(name, settings).await;
        }
        if self.protocol < 2 {
            return Err(ClientError::Protocol(format!(
                "the server ({}) speaks protocol 1, which cannot set a cleanup policy",
                self.server
            )));
        }
        self.expect_done(&Request::CreateTopicWith {
            name,
            settings,
            options,
        })
        .await
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.expect_done(&Request::DeleteTopic { name }).await
    }

    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let bytes = self.send(&Request::DescribeTopic { name }).await?;
        match decode(&bytes)?.response {
            Response::Topic(t) => Ok(TopicDescription {
                name: t.name.to_string(),
                retention_ms: t.retention_ms,
                retention_bytes: t.retention_bytes,
                segment_bytes: t.segment_bytes,
                reject_when_full: t.reject_when_full,
                partitions: t.partitions.to_vec(),
            }),
            other => Err(server_error(&other)),
        }
    }

    pub async fn list_topics(&self) -> Result<Vec<String>> {
        let bytes = self.send(&Request::ListTopics).await?;
        match decode(&bytes)?.response {
            Response::Topics { names, .. } => Ok(names.iter().map(|s| s.to_string()).collect()),
            other => Err(server_error(&other)),
        }
    }

    /// Joins a group; returns `(member id, generation, assignment)`.
    pub async fn join_group(
        &self,
        group: &str,
        member_id: &str,
        topics: &[&str],
        session_timeout: Duration,
        assignor: Assignor,
    ) -> Result<Joined> {
        let mut t: HVec<&str, { proto::MAX_GROUP_TOPICS }> = HVec::new();
        for topic in topics {
            t.push(topic).map_err(|_| {
                ClientError::Protocol("too many topics for one group member".into())
            })?;
        }
        let bytes = self
            .send(&Request::JoinGroup {
                group,
                member_id,
                topics: t,
                session_timeout_ms: session_timeout
                    .as_millis()
                    .min(u128::from(u32::MAX))
                    .sat_u32(),
                assignor,
            })
            .await?;
        match decode(&bytes)?.response {
            Response::Joined {
                member_id,
                generation,
                assignment,
            } => Ok(Joined {
                member_id: member_id.to_string(),
                generation,
                assignment: assignment
                    .iter()
                    .map(|a| (a.topic.to_string(), a.partition))
                    .collect(),
            }),
            other => Err(server_error(&other)),
        }
    }

    /// `true`: the group moved on, rejoin.
    pub async fn heartbeat(&self, group: &str, member_id: &str, generation: u32) -> Result<bool> {
        let bytes = self
            .send(&Request::Heartbeat {
                group,
                member_id,
                generation,
            })
            .await?;
        match decode(&bytes)?.response {
            Response::Heartbeat { rejoin } => Ok(rejoin),
            other => Err(server_error(&other)),
        }
    }

    pub async fn leave_group(&self, group: &str, member_id: &str) -> Result<()> {
        self.expect_done(&Request::LeaveGroup { group, member_id })
            .await
    }

    /// Commits `(topic, partition, next offset to read)` entries.
    pub async fn commit_offsets(
        &self,
        group: &str,
        member: Option<(&str, u32)>,
        offsets: &[(&str, u32, u64)],
    ) -> Result<()> {
        for chunk in offsets.chunks(proto::MAX_COMMIT) {
            let mut o: HVec<CommitEntry<'_>, { proto::MAX_COMMIT }> = HVec::new();
            for (topic, partition, offset) in chunk {
                let _ = o.push(CommitEntry {
                    topic,
                    partition: *partition,
                    offset: *offset,
                });
            }
            self.expect_done(&Request::CommitOffsets {
                group,
                member,
                offsets: o,
            })
            .await?;
        }
        Ok(())
    }

    /// `(partition, committed)` for every partition of `topic`.
    pub async fn fetch_offsets(&self, group: &str, topic: &str) -> Result<Vec<(u32, Option<u64>)>> {
        let bytes = self.send(&Request::FetchOffsets { group, topic }).await?;
        match decode(&bytes)?.response {
            Response::Offsets { offsets } => {
                Ok(offsets.iter().map(|o| (o.partition, o.committed)).collect())
            }
            other => Err(server_error(&other)),
        }
    }

    pub async fn list_groups(&self) -> Result<Vec<String>> {
        let bytes = self.send(&Request::ListGroups).await?;
        match decode(&bytes)?.response {
            Response::Groups { names, .. } => Ok(names.iter().map(|s| s.to_string()).collect()),
            other => Err(server_error(&other)),
        }
    }

    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let bytes = self.send(&Request::DescribeGroup { group }).await?;
        match decode(&bytes)?.response {
            Response::Group {
                generation,
                members,
                assignments,
                offsets,
            } => Ok(GroupDescription {
                generation,
                members: members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let a = assignments
                            .iter()
                            .filter(|a| a.member as usize == i)
                            .map(|a| (a.assigned.topic.to_string(), a.assigned.partition))
                            .collect();
                        GroupMember {
                            member_id: m.member_id.to_string(),
                            client_id: m.client_id.to_string(),
                            assignment: a,
                        }
                    })
                    .collect(),
                offsets: offsets
                    .iter()
                    .map(|o| (o.topic.to_string(), o.partition, o.committed, o.end_offset))
                    .collect(),
            }),
            other => Err(server_error(&other)),
        }
    }
}

/// Decodes an answer.
/// The range `first..next` a `DataLost` answer names ("...: offsets 120..160 were lost ...").
pub fn lost_range(message: &str) -> Option<(u64, u64)> {
    let range = message
        .split("offsets ")
        .nth(1)?
        .split_whitespace()
        .next()?;
    let (a, b) = range.split_once("..")?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

pub fn decode(bytes: &[u8]) -> Result<ResponseFrame<'_>> {
    postcard::from_bytes(bytes)
        .map_err(|e| ClientError::Protocol(format!("undecodable answer: {e}")))
}

async fn produced(rx: oneshot::Receiver<Vec<u8>>) -> Result<(u32, u64, u64)> {
    let bytes = rx
        .await
        .map_err(|_| ClientError::Closed("the server closed the connection".into()))?;
    match decode(&bytes)?.response {
        Response::Produced {
            partition,
            base_offset,
            next_offset,
        } => Ok((partition, base_offset, next_offset)),
        other => Err(server_error(&other)),
    }
}

/// Batches records per partition and keeps up to `max_in_flight` batches in flight.
pub struct Producer {
    client: Arc<Client>,
    topic: String,
    acks: Acks,
    partitions: u32,
    batch_bytes: usize,
    linger: Duration,
    max_in_flight: usize,
    open: BTreeMap<Option<u32>, (BatchBuilder, Instant)>,
    in_flight: VecDeque<oneshot::Receiver<Vec<u8>>>,
    /// Records acknowledged so far.
    pub acked: u64,
}

impl Producer {
    /// A producer for `topic` (its partition count is looked up now, to place keys).
    pub async fn new(client: Arc<Client>, topic: &str, acks: Acks) -> Result<Producer> {
        let partitions = (client.describe_topic(topic).await?.partitions.len()).sat_u32();
        Ok(Producer {
            client,
            topic: topic.to_string(),
            acks,
            partitions,
            batch_bytes: 64 * 1024,
            linger: Duration::from_millis(5),
            max_in_flight: 16,
            open: BTreeMap::new(),
            in_flight: VecDeque::new(),
            acked: 0,
        })
    }

    /// Bytes of records per batch before it is sent (default 64 KiB).
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// How long a partly filled batch may wait for more records (default 5 ms).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Adds a record: to `partition` when given, else by its key (Kafka's partitioner), else to
    /// the round-robin batch.
    pub async fn send(&mut self, partition: Option<u32>, record: &Record) -> Result<()> {
        let target = partition.or_else(|| {
            record
                .key
                .as_deref()
                .map(|k| crate::log::partitioner::partition_for_key(k, self.partitions))
        });
        let entry = self
            .open
            .entry(target)
            .or_insert_with(|| (BatchBuilder::new(), Instant::now()));
        if entry.0.is_empty() {
            entry.1 = Instant::now();
        }
        entry.0.push_record(record);
        let full = entry.0.records_len() >= self.batch_bytes;
        let stale = entry.1.elapsed() >= self.linger;
        if full || stale {
            self.dispatch(target).await?;
        }
        self.collect_done().await
    }

    async fn dispatch(&mut self, target: Option<u32>) -> Result<()> {
        let Some((batch, _)) = self.open.remove(&target) else {
            return Ok(());
        };
        if batch.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= self.max_in_flight {
            self.wait_oldest().await?;
        }
        let rx = self
            .client
            .submit_produce(&self.topic, target, None, self.acks, &batch)
            .await?;
        self.in_flight.push_back(rx);
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<()> {
        if let Some(rx) = self.in_flight.pop_front() {
            let (_, base, next) = produced(rx).await?;
            self.acked += next - base;
        }
        Ok(())
    }

    /// Collects answers that have already arrived.
    async fn collect_done(&mut self) -> Result<()> {
        while let Some(rx) = self.in_flight.front_mut() {
            match rx.try_recv() {
                Ok(bytes) => {
                    self.in_flight.pop_front();
                    match decode(&bytes)?.response {
                        Response::Produced {
                            base_offset,
                            next_offset,
                            ..
                        } => self.acked += next_offset - base_offset,
                        other => return Err(server_error(&other)),
                    }
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(ClientError::Closed(
                        "the server closed the connection".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sends the open batches whose linger has passed, without waiting for acknowledgements
    /// (call it when no record arrived for a while).
    pub async fn send_lingering(&mut self) -> Result<()> {
        let due: Vec<Option<u32>> = self
            .open
            .iter()
            .filter(|(_, (b, since))| !b.is_empty() && since.elapsed() >= self.linger)
            .map(|(t, _)| *t)
            .collect();
        for t in due {
            self.dispatch(t).await?;
        }
        self.collect_done().await
    }

    /// How long a partly filled batch may wait.
    pub fn linger_time(&self) -> Duration {
        self.linger
    }

    /// Sends every open batch and waits for every acknowledgement.
    pub async fn flush(&mut self) -> Result<()> {
        let targets: Vec<Option<u32>> = self.open.keys().copied().collect();
        for t in targets {
            self.dispatch(t).await?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(())
    }
}

/// Where a consumer without a committed offset starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    Offset(u64),
}

/// A record as a consumer gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumed {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub record: Record,
}

struct Membership {
    group: String,
    member_id: String,
    generation: u32,
    last_heartbeat: Instant,
}

/// Reads a topic's partitions (all, one, or those a group assigns) from a position.
pub struct Consumer {
    client: Arc<Client>,
    topic: String,
    start: StartFrom,
    fixed_partition: Option<u32>,
    group: Option<Membership>,
    session_timeout: Duration,
    positions: BTreeMap<u32, u64>,
    /// Positions as of the last commit.
    committed: BTreeMap<u32, u64>,
    /// Commit automatically at most this often, during `poll`.
    auto_commit: Option<(Duration, Instant)>,
}

impl Consumer {
    /// Commits the positions automatically, at most every `interval`, from `poll` (a group
    /// consumer only). Without it, call [`Consumer::commit`].
    pub fn auto_commit(mut self, interval: Duration) -> Self {
        self.auto_commit = Some((interval, Instant::now()));
        self
    }

    /// Consumes `topic` (or only `partition`) without a group.
    pub async fn standalone(
        client: Arc<Client>,
        topic: &str,
        partition: Option<u32>,
        start: StartFrom,
    ) -> Result<Consumer> {
        let mut c = Consumer {
            client,
            topic: topic.to_string(),
            start,
            fixed_partition: partition,
            group: None,
            session_timeout: Duration::from_secs(10),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            auto_commit: None,
        };
        let parts: Vec<u32> = match partition {
            Some(p) => vec![p],
            None => {
                (0..(c.client.describe_topic(topic).await?.partitions.len()).sat_u32()).collect()
            }
        };
        for p in parts {
            let at = c.start_offset(p, None).await?;
            c.positions.insert(p, at);
        }
        Ok(c)
    }

    /// Consumes `topic` as a member of `group`; partitions without a committed offset start at
    /// `start`.
    pub async fn in_group(
        client: Arc<Client>,
        topic: &str,
        group: &str,
        start: StartFrom,
    ) -> Result<Consumer> {
        let mut c = Consumer {
            client,
            topic: topic.to_string(),
            start,
            fixed_partition: None,
            group: Some(Membership {
                group: group.to_string(),
                member_id: String::new(),
                generation: 0,
                last_heartbeat: Instant::now(),
            }),
            session_timeout: Duration::from_secs(10),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            auto_commit: None,
        };
        c.rejoin().await?;
        Ok(c)
    }

    async fn start_offset(&self, partition: u32, committed: Option<u64>) -> Result<u64> {
        if let Some(o) = committed {
            return Ok(o);
        }
        let (earliest, latest, _) = self
            .client
            .list_offsets(&self.topic, partition, OffsetSpec::Latest)
            .await?;
        Ok(match self.start {
            StartFrom::Earliest => earliest,
            StartFrom::Latest => latest,
            StartFrom::Offset(o) => o.clamp(earliest, latest),
        })
    }

    async fn rejoin(&mut self) -> Result<()> {
        let Some(m) = &self.group else { return Ok(()) };
        let (group, member_id) = (m.group.clone(), m.member_id.clone());
        let joined = self
            .client
            .join_group(
                &group,
                &member_id,
                &[&self.topic],
                self.session_timeout,
                Assignor::Range,
            )
            .await;
        let Joined {
            member_id,
            generation,
            assignment,
        } = match joined {
            Err(ClientError::Server {
                code: ErrorCode::UnknownMember,
                ..
            }) => {
                self.client
                    .join_group(
                        &group,
                        "",
                        &[&self.topic],
                        self.session_timeout,
                        Assignor::Range,
                    )
                    .await?
            }
            other => other?,
        };
        let committed: BTreeMap<u32, Option<u64>> = self
            .client
            .fetch_offsets(&group, &self.topic)
            .await?
            .into_iter()
            .collect();
        self.positions.clear();
        self.committed.clear();
        for (t, p) in assignment {
            if t != self.topic {
                continue;
            }
            let c = committed.get(&p).copied().flatten();
            let at = self.start_offset(p, c).await?;
            self.positions.insert(p, at);
            if let Some(c) = c {
                self.committed.insert(p, c);
            }
        }
        self.group = Some(Membership {
            group,
            member_id,
            generation,
            last_heartbeat: Instant::now(),
        });
        Ok(())
    }

    /// The partitions being read and the next offset of each.
    pub fn positions(&self) -> &BTreeMap<u32, u64> {
        &self.positions
    }

    /// Fetches from every assigned partition; waits up to `max_wait` when nothing is there.
    /// Heartbeats (and rejoins after a rebalance) as needed.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<Consumed>> {
        self.keep_alive().await?;
        if let Some((interval, last)) = self.auto_commit {
            if last.elapsed() >= interval {
                // What earlier polls returned is taken as processed.
                self.commit().await?;
                self.auto_commit = Some((interval, Instant::now()));
            }
        }
        let mut out = Vec::new();
        for wait in [Duration::ZERO, max_wait] {
            let mut pending = Vec::new();
            for (&p, &at) in &self.positions {
                let rx = self
                    .client
                    .submit(&Request::Fetch(Fetch {
                        topic: &self.topic,
                        partition: p,
                        offset: at,
                        max_bytes: 1 << 20,
                        min_bytes: 1,
                        max_wait_ms: wait.as_millis().sat_u32(),
                    }))
                    .await?;
                pending.push((p, at, rx));
            }
            for (p, at, rx) in pending {
                let bytes = rx
                    .await
                    .map_err(|_| ClientError::Closed("the server closed the connection".into()))?;
                let r = decode(&bytes)?.response;
                let fetched = match (Fetched::from_response(&r), &r) {
                    (Some(f), _) => f,
                    (
                        None,
                        Response::Error {
                            code: ErrorCode::OffsetOutOfRange,
                            ..
                        },
                    ) => {
                        // The data was deleted by retention: continue at the earliest offset.
                        let (earliest, latest, _) = self
                            .client
                            .list_offsets(&self.topic, p, OffsetSpec::Earliest)
                            .await?;
                        self.positions.insert(p, at.clamp(earliest, latest));
                        continue;
                    }
                    (
                        None,
                        Response::Error {
                            code: ErrorCode::DataLost,
                            message,
                        },
                    ) => {
                        // Offsets lost to corruption on the server: say so, and read on after
                        // them (as Kafka clients do).
                        let Some((first, next)) = lost_range(message) else {
                            return Err(server_error(&r));
                        };
                        tracing::warn!(
                            topic = %self.topic,
                            partition = p,
                            "offsets {first}..{next} were lost to corruption on the server; reading on from {next}"
                        );
                        self.positions.insert(p, next.max(at + 1));
                        continue;
                    }
                    (None, other) => return Err(server_error(other)),
                };
                for (offset, record) in fetched.records(at)? {
                    out.push(Consumed {
                        topic: self.topic.clone(),
                        partition: p,
                        offset,
                        record,
                    });
                }
                if fetched.next_offset > at {
                    self.positions.insert(p, fetched.next_offset);
                }
            }
            if !out.is_empty() || self.positions.is_empty() {
                break;
            }
        }
        if self.positions.is_empty() && !max_wait.is_zero() {
            tokio::time::sleep(max_wait.min(Duration::from_millis(200))).await;
        }
        Ok(out)
    }

    /// Sets the next offset to read in a partition (e.g. after a partial read).
    pub fn seek(&mut self, partition: u32, offset: u64) {
        if self.positions.contains_key(&partition) || self.fixed_partition.is_none() {
            self.positions.insert(partition, offset);
        }
    }

    async fn keep_alive(&mut self) -> Result<()> {
        let Some(m) = &self.group else { return Ok(()) };
        if m.last_heartbeat.elapsed() < self.session_timeout / 3 {
            return Ok(());
        }
        let rejoin = match self
            .client
            .heartbeat(&m.group, &m.member_id, m.generation)
            .await
        {
            Ok(r) => r,
            Err(ClientError::Server {
                code: ErrorCode::UnknownMember,
                ..
            }) => true,
            Err(e) => return Err(e),
        };
        if let Some(m) = &mut self.group {
            m.last_heartbeat = Instant::now();
        }
        if rejoin {
            // Keep what was read: commit before the assignment changes.
            self.commit().await.ok();
            self.rejoin().await?;
        }
        Ok(())
    }

    /// Commits the current positions (the next offsets to read) for the group.
    pub async fn commit(&mut self) -> Result<()> {
        let Some(m) = &self.group else { return Ok(()) };
        let changed: Vec<(&str, u32, u64)> = self
            .positions
            .iter()
            .filter(|(p, o)| self.committed.get(p) != Some(o))
            .map(|(p, o)| (self.topic.as_str(), *p, *o))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        self.client
            .commit_offsets(&m.group, Some((&m.member_id, m.generation)), &changed)
            .await?;
        self.committed = self.positions.clone();
        Ok(())
    }

    /// Leaves the group (its partitions move to the other members at once).
    pub async fn close(self) -> Result<()> {
        if let Some(m) = &self.group {
            self.client.leave_group(&m.group, &m.member_id).await?;
        }
        Ok(())
    }
}
