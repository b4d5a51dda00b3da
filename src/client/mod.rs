//! An async Rust client for the native protocol (used by the CLI, the tests and benchmarks), and
//! a GET of the HTTP API ([`http_get`]).
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | [`Client`]: one connection, pipelined requests, every request of the protocol |
//! | `producer.rs` | [`Producer`]: batching per partition, several batches in flight |
//! | `consumer.rs` | [`Consumer`]: assigned partitions, consumer groups |
//! | `http.rs` | [`http_get`] |
//!
//! [`Client`] is one connection: requests are pipelined (many in flight, answers matched by
//! correlation id). [`Producer`] batches records per partition with a size and a linger bound
//! and keeps several batches in flight; [`Consumer`] reads assigned partitions, optionally as a
//! member of a consumer group (join, heartbeat, commit, leave).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heapless::Vec as HVec;
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

mod consumer;
mod http;
mod producer;

pub use consumer::{Consumed, Consumer, StartFrom};
pub use http::http_get;
pub use producer::Producer;

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
    /// The HTTP API answered something other than 200.
    #[error("{url}: {status}")]
    Http { url: String, status: String },
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

/// Cuts answers from the connection and hands each to its waiter; when the connection ends,
/// every waiter fails and so does every later request.
async fn read_answers<R: tokio::io::AsyncRead + Unpin>(mut rd: R, p: Pending) {
    let mut frames = proto::FrameReader::new();
    loop {
        loop {
            match frames.next_frame(usize::MAX) {
                Ok(Some(msg)) => {
                    let id = postcard::take_from_bytes::<u32>(msg).map(|(id, _)| id);
                    let msg = msg.to_vec();
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
                Ok(None) => break,
                Err(_) => {
                    *p.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    return;
                }
            }
        }
        match frames.fill(&mut rd).await {
            Ok(0) | Err(_) => {
                *p.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return;
            }
            Ok(_) => {}
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
                        tokio::spawn(proto::write_frames(wr, out_rx)),
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
                        tokio::spawn(proto::write_frames(wr, out_rx)),
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

/// The offsets of a produce answer: `(partition, base offset, next offset)`.
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
