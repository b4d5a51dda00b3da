//! The MQTT session as a state machine without I/O: packets from the client and messages from
//! the log go in, [`Action`]s come out (packets to send, records to append, subscriptions to
//! register, state to persist). The connection task ([`super::conn`]) only moves bytes and
//! carries out actions, so every rule here is tested without sockets.
//!
//! Delivery positions: for every log partition carrying MQTT messages the session keeps the
//! next offset it has not yet looked at. A message from the log (live, or read back after an
//! absence) is considered only if its offset is at or past that position, so reading the same
//! part of the log twice never delivers twice within a session.
//!
//! Durable delivery state (persistent sessions): the stored session holds, per partition, the
//! lowest offset not yet sent (queued messages are not sent), and every QoS 1/2 message sent
//! and not completed, as (packet id, stage, log partition and offset). The connection stores
//! it, durably, before it writes a QoS 1/2 PUBLISH or a PUBREL ([`Session::take_needs_sync`]):
//! write-ahead, so after a crash every message the client may have seen is either completed
//! (below the stored position, never sent again) or in the stored list, sent again with its
//! packet id and DUP set (a PUBREL for one the client had acknowledged with PUBREC). A QoS 2
//! message is therefore delivered exactly once across crashes, and a QoS 1 message is sent
//! again only if it was in flight (at most the in-flight window). Acknowledgements need no
//! write of their own: a completion the store missed costs at most a PUBREL or a QoS 1
//! duplicate. Messages for shared subscriptions and retained messages sent on SUBSCRIBE are not
//! in the list (the shared group's position and the retained store bring them back).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::codec::{
    self, ConnAck, Connect, MessageProps, Out, Packet, Publish, Version, Will, reason,
};
use super::message::LogMessage;
use crate::topic_filter as topic;

/// Options of one subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubOptions {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub subscription_id: Option<usize>,
}

/// A log partition: (log topic, partition).
pub type PartitionKey = (Arc<str>, u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Ack,
    Rec,
    Comp,
}

impl Stage {
    fn code(self) -> u8 {
        match self {
            Stage::Ack => 1,
            Stage::Rec => 2,
            Stage::Comp => 3,
        }
    }

    fn from_code(c: u8) -> Option<Stage> {
        match c {
            1 => Some(Stage::Ack),
            2 => Some(Stage::Rec),
            3 => Some(Stage::Comp),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
struct Inflight {
    pkid: u16,
    /// What was sent. An entry restored from the metadata store has only its QoS, retain
    /// flag and subscription ids here until the message is read back from the log
    /// ([`SessionState::unloaded`], [`SessionState::load`]).
    publish: Publish,
    loaded: bool,
    stage: Stage,
    source: Option<(PartitionKey, u64)>,
}

/// A message sent and not completed, as stored: where it is in the log, and how it was sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInflight {
    pub pkid: u16,
    /// 1: waiting for PUBACK, 2: for PUBREC, 3: for PUBCOMP (PUBREL sent).
    pub stage: u8,
    pub qos: u8,
    pub retain: bool,
    pub log_topic: String,
    pub partition: u32,
    pub offset: u64,
    pub subscription_ids: Vec<u32>,
}

#[derive(Clone, Debug)]
struct Queued {
    publish: Publish,
    source: Option<(PartitionKey, u64)>,
}

/// Who a session belongs to: the user that made it. Another user connecting with the same
/// client id is refused, so nobody takes over (or wipes) someone else's session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Owner {
    /// A session stored before owners were recorded: the next login claims it.
    #[default]
    Unknown,
    Anonymous,
    User(String),
}

impl Owner {
    pub fn of(user: Option<&str>) -> Owner {
        user.map_or(Owner::Anonymous, |u| Owner::User(u.to_string()))
    }

    /// Whether `other` may take this session.
    pub fn admits(&self, other: &Owner) -> bool {
        *self == Owner::Unknown || self == other
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Unknown => f.write_str("(unknown)"),
            Owner::Anonymous => f.write_str("anonymous"),
            Owner::User(u) => write!(f, "{u:?}"),
        }
    }
}

/// What outlives a connection (kept in memory while the client is away, and its persistent
/// part in the metadata store).
#[derive(Clone, Debug, Default)]
pub struct SessionState {
    pub client_id: String,
    pub owner: Owner,
    /// Seconds the session is kept after a disconnect; `u32::MAX`: until the client cleans it.
    pub expiry: u32,
    /// Raw filter (including `$share/...`) to its options.
    pub subscriptions: BTreeMap<String, SubOptions>,
    pub positions: HashMap<PartitionKey, u64>,
    /// Per subscription, the log end of each partition when it was made: a subscription only
    /// matches messages appended after it (partitions created later: all of them).
    pub since: HashMap<String, HashMap<PartitionKey, u64>>,
    outbound: VecDeque<Inflight>,
    inbound_qos2: HashSet<u16>,
    next_pkid: u16,
}

/// The persisted part of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedSession {
    pub expiry: u32,
    pub subscriptions: Vec<(String, SubOptions)>,
    pub positions: Vec<(String, u32, u64)>,
    /// (filter, log topic, partition, offset) of [`SessionState::since`].
    pub since: Vec<(String, String, u32, u64)>,
    /// Added after the first release: sessions stored before it read as [`Owner::Unknown`]
    /// ([`PersistedSession::decode`]).
    pub owner: Owner,
    /// Added in the third version (with `next_pkid`): what was sent and not completed.
    /// Sessions stored before have none (their positions were the lowest unacknowledged
    /// offset, so what was in flight is read back from the log).
    pub inflight: Vec<StoredInflight>,
    pub next_pkid: u16,
}

/// A session as stored before in-flight messages were (the second version).
#[derive(Deserialize)]
struct PersistedSessionV2 {
    expiry: u32,
    subscriptions: Vec<(String, SubOptions)>,
    positions: Vec<(String, u32, u64)>,
    since: Vec<(String, String, u32, u64)>,
    owner: Owner,
}

/// A session as stored before owners were recorded.
#[derive(Deserialize)]
struct PersistedSessionV1 {
    expiry: u32,
    subscriptions: Vec<(String, SubOptions)>,
    positions: Vec<(String, u32, u64)>,
    since: Vec<(String, String, u32, u64)>,
}

impl PersistedSession {
    /// Reads a stored session, of this version or one before (postcard is not
    /// self-describing: a shorter version's bytes end before this version's fields).
    pub fn decode(bytes: &[u8]) -> Result<PersistedSession, postcard::Error> {
        let v2 = |v: PersistedSessionV2| PersistedSession {
            expiry: v.expiry,
            subscriptions: v.subscriptions,
            positions: v.positions,
            since: v.since,
            owner: v.owner,
            inflight: Vec::new(),
            next_pkid: 0,
        };
        postcard::from_bytes::<PersistedSession>(bytes)
            .or_else(|_| postcard::from_bytes::<PersistedSessionV2>(bytes).map(v2))
            .or_else(|_| {
                postcard::from_bytes::<PersistedSessionV1>(bytes).map(|v| {
                    v2(PersistedSessionV2 {
                        expiry: v.expiry,
                        subscriptions: v.subscriptions,
                        positions: v.positions,
                        since: v.since,
                        owner: Owner::Unknown,
                    })
                })
            })
    }
}

impl SessionState {
    pub fn new(client_id: String, expiry: u32) -> Self {
        SessionState {
            client_id,
            expiry,
            ..SessionState::default()
        }
    }

    /// Restores a session from the metadata store.
    pub fn restore(client_id: String, p: PersistedSession) -> Self {
        SessionState {
            client_id,
            owner: p.owner,
            expiry: p.expiry,
            subscriptions: p.subscriptions.into_iter().collect(),
            positions: p
                .positions
                .into_iter()
                .map(|(t, p, o)| ((Arc::from(t), p), o))
                .collect(),
            since: p
                .since
                .into_iter()
                .fold(HashMap::new(), |mut m, (f, t, p, o)| {
                    m.entry(f)
                        .or_insert_with(HashMap::new)
                        .insert((Arc::from(t), p), o);
                    m
                }),
            outbound: p
                .inflight
                .into_iter()
                .filter_map(|i| {
                    let stage = Stage::from_code(i.stage)?;
                    Some(Inflight {
                        pkid: i.pkid,
                        publish: Publish {
                            dup: true,
                            qos: i.qos.min(2),
                            retain: i.retain,
                            topic: String::new(),
                            pkid: i.pkid,
                            payload: Bytes::new(),
                            props: MessageProps {
                                subscription_ids: i
                                    .subscription_ids
                                    .into_iter()
                                    .map(|n| n as usize)
                                    .collect(),
                                ..MessageProps::default()
                            },
                        },
                        loaded: false,
                        stage,
                        source: Some(((Arc::from(i.log_topic), i.partition), i.offset)),
                    })
                })
                .collect(),
            next_pkid: p.next_pkid,
            ..SessionState::default()
        }
    }

    /// Drops in-flight messages at or past their partition's end in `ends` (lost with the
    /// log's tail); returns how many.
    pub fn retain_inflight_below(&mut self, ends: &HashMap<PartitionKey, u64>) -> usize {
        let before = self.outbound.len();
        self.outbound.retain(|i| match &i.source {
            Some((k, off)) => ends.get(k).is_none_or(|end| off < end),
            None => true,
        });
        before - self.outbound.len()
    }

    /// Restored in-flight messages still to be read back from the log before they can be
    /// sent again: (log topic, partition, offset). A PUBREL needs no message.
    pub fn unloaded(&self) -> Vec<(Arc<str>, u32, u64)> {
        self.outbound
            .iter()
            .filter(|i| !i.loaded && i.stage != Stage::Comp)
            .filter_map(|i| i.source.as_ref())
            .map(|((t, p), o)| (Arc::clone(t), *p, *o))
            .collect()
    }

    /// Fills in restored in-flight messages from the log: `read` gives the message at a log
    /// position, or `None` when the log no longer has it (retention, a power cut); those
    /// entries are dropped (a PUBREL is still sent). `v5`: the client gets 5.0 properties.
    /// Returns how many were dropped.
    pub fn load(
        &mut self,
        mut read: impl FnMut(&PartitionKey, u64) -> Option<LogMessage>,
        v5: bool,
    ) -> usize {
        let before = self.outbound.len();
        self.outbound.retain_mut(|i| {
            if i.loaded || i.stage == Stage::Comp {
                return true;
            }
            let Some((key, offset)) = &i.source else {
                return false;
            };
            let Some(m) = read(key, *offset) else {
                return false;
            };
            let p = &mut i.publish;
            p.topic = m.topic;
            p.payload = m.payload;
            if v5 {
                let ids = std::mem::take(&mut p.props.subscription_ids);
                p.props = MessageProps {
                    subscription_ids: ids,
                    ..m.props
                };
            } else {
                p.props = MessageProps::default();
            }
            i.loaded = true;
            true
        });
        before - self.outbound.len()
    }

    /// What the metadata store keeps of the in-flight messages (those with a log position).
    fn stored_inflight(&self) -> Vec<StoredInflight> {
        self.outbound
            .iter()
            .filter_map(|i| {
                let ((t, partition), offset) = i.source.as_ref()?;
                Some(StoredInflight {
                    pkid: i.pkid,
                    stage: i.stage.code(),
                    qos: i.publish.qos,
                    retain: i.publish.retain,
                    log_topic: t.to_string(),
                    partition: *partition,
                    offset: *offset,
                    subscription_ids: i
                        .publish
                        .props
                        .subscription_ids
                        .iter()
                        .filter_map(|n| u32::try_from(*n).ok())
                        .collect(),
                })
            })
            .collect()
    }

    /// Drops in-flight messages whose topic `keep` refuses (the ACL changed while the client
    /// was away); returns how many.
    pub fn retain_outbound(&mut self, mut keep: impl FnMut(&str) -> bool) -> usize {
        let before = self.outbound.len();
        self.outbound.retain(|i| keep(&i.publish.topic));
        before - self.outbound.len()
    }

    /// Lowest offset per partition not yet sent (in-flight messages are stored beside).
    fn committed_positions(&self, queued: &VecDeque<Queued>) -> Vec<(String, u32, u64)> {
        let mut low: HashMap<&PartitionKey, u64> =
            self.positions.iter().map(|(k, v)| (k, *v)).collect();
        for (k, off) in queued.iter().filter_map(|q| q.source.as_ref()) {
            if let Some(v) = low.get_mut(k) {
                *v = (*v).min(*off);
            }
        }
        let mut v: Vec<_> = low
            .into_iter()
            .map(|((t, p), o)| (t.to_string(), *p, o))
            .collect();
        v.sort();
        v
    }

    pub fn has_subscriptions(&self) -> bool {
        !self.subscriptions.is_empty()
    }
}

/// Limits the server applies to a session.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_inflight: u16,
    pub topic_alias_max: u16,
    pub max_packet_size: u32,
    /// Cap on a session's expiry interval, seconds (`u32::MAX`: no cap).
    pub max_session_expiry: u32,
    /// Longest keep-alive, seconds (0: no bound); a client's 0 counts as longer.
    pub max_keepalive: u16,
}

/// The keep-alive a client gets: its own, or `max` when it asks for more (or for none).
/// `None` when `max` is 0 (no bound) or the client's is within it.
pub fn bounded_keepalive(asked: u16, max: u16) -> Option<u16> {
    (max > 0 && (asked == 0 || asked > max)).then_some(max)
}

/// What the connection task must do, in order.
#[derive(Debug)]
pub enum Action {
    Send(Out),
    /// Append a PUBLISH to the log; when it has the configured durability, report back with
    /// [`Session::appended`] and `ack`.
    Append {
        publish: Publish,
        ack: Ack,
    },
    /// Register a subscription for live delivery; a new one (`is_new`) starts at the log end.
    Subscribe {
        filter: String,
        options: SubOptions,
        is_new: bool,
    },
    Unsubscribe {
        filter: String,
    },
    /// Deliver the retained messages matching `filter` (through [`Session::offer_retained`]).
    SendRetained {
        filter: String,
        options: SubOptions,
    },
    /// Write the session's persistent part (subscriptions, positions) and flush it.
    Persist,
    /// Close the connection: `reason` is the 5.0 reason code sent in DISCONNECT (if any),
    /// `graceful` whether the will is discarded, `error` whether the client broke the protocol.
    Close {
        reason: Option<u8>,
        graceful: bool,
        error: bool,
        why: String,
    },
}

/// The acknowledgement an appended PUBLISH is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    None,
    PubAck(u16),
    PubRec(u16),
}

/// How an append ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    Stored,
    /// The log refused it (`reject` policy at its budget).
    QuotaExceeded,
    Failed,
}

/// One connected session.
pub struct Session {
    /// What outlives the connection; the connection reads it through the methods below.
    state: SessionState,
    /// Who the client is and what the ACL lets it do; `None`: everything (unit tests).
    pub grants: Option<crate::auth::Principal>,
    pub version: Version,
    pub will: Option<Will>,
    pub keep_alive: u16,
    limits: Limits,
    window: usize,
    client_max_packet: u32,
    aliases: HashMap<u16, String>,
    queued: VecDeque<Queued>,
    inbound_unacked: usize,
    actions: VecDeque<Action>,
    /// A QoS 1/2 PUBLISH or a PUBREL was queued for sending since the last
    /// [`Session::take_needs_sync`].
    needs_sync: bool,
}

/// Queued deliveries a session takes before the connection stops pulling more.
const QUEUE_LIMIT: usize = 256;

impl Session {
    /// A session for `connect` with `state` (new or resumed); queues the CONNACK and, for a
    /// resumed session, the redelivery of unacknowledged messages.
    pub fn start(
        connect: &Connect,
        mut state: SessionState,
        session_present: bool,
        assigned_client_id: Option<String>,
        limits: Limits,
    ) -> Session {
        let expiry = connect.session_expiry.min(limits.max_session_expiry);
        state.expiry = expiry;
        let window = usize::from(connect.receive_maximum.min(limits.max_inflight).max(1));
        // 3.1.1 clients over the bound were refused before; 5.0 clients are told the bound.
        let server_keep_alive = bounded_keepalive(connect.keep_alive, limits.max_keepalive);
        let mut s = Session {
            grants: None,
            version: connect.version,
            will: connect.will.clone(),
            keep_alive: server_keep_alive.unwrap_or(connect.keep_alive),
            window,
            client_max_packet: connect.max_packet_size,
            aliases: HashMap::new(),
            queued: VecDeque::new(),
            inbound_unacked: 0,
            actions: VecDeque::new(),
            needs_sync: false,
            state,
            limits,
        };
        let v5 = s.version == Version::V5;
        s.actions.push_back(Action::Send(Out::ConnAck(ConnAck {
            session_present,
            reason: reason::SUCCESS,
            session_expiry: (v5 && expiry != connect.session_expiry).then_some(expiry),
            receive_maximum: v5.then_some(s.limits.max_inflight),
            max_packet_size: v5.then_some(s.limits.max_packet_size),
            assigned_client_id: if v5 { assigned_client_id } else { None },
            topic_alias_max: v5.then_some(s.limits.topic_alias_max),
            server_keep_alive: if v5 { server_keep_alive } else { None },
            reason_string: None,
        })));
        // Unacknowledged deliveries go again, in their order: PUBLISH with DUP, or PUBREL.
        // (Restored ones the log no longer had were dropped by SessionState::load.)
        s.state
            .outbound
            .retain(|i| i.loaded || i.stage == Stage::Comp);
        let redo: Vec<Out> = s
            .state
            .outbound
            .iter()
            .map(|i| match i.stage {
                Stage::Comp => Out::PubRel(i.pkid, 0),
                _ => {
                    let mut p = i.publish.clone();
                    p.dup = true;
                    Out::Publish(p)
                }
            })
            .collect();
        s.actions.extend(redo.into_iter().map(Action::Send));
        s
    }

    /// Whether the ACL lets this client do `op`.
    pub fn may(&self, op: crate::auth::Op<'_>) -> bool {
        self.grants.as_ref().is_none_or(|g| g.allows(op))
    }

    /// The client identifier (assigned by the server when the client sent none).
    pub fn client_id(&self) -> &str {
        &self.state.client_id
    }

    /// Session expiry in seconds (0: the session ends with the connection).
    pub fn expiry(&self) -> u32 {
        self.state.expiry
    }

    /// Whether the session subscribes to anything.
    pub fn has_subscriptions(&self) -> bool {
        self.state.has_subscriptions()
    }

    /// The subscription filters, `$share/...` ones included.
    pub fn filters(&self) -> impl Iterator<Item = &str> + '_ {
        self.state.subscriptions.keys().map(String::as_str)
    }

    /// Drops the stored subscriptions of a resumed session that `allowed` refuses now (the ACL
    /// may have changed while it was away); returns the filters dropped.
    pub fn keep_allowed_subscriptions(
        &mut self,
        mut allowed: impl FnMut(&str) -> bool,
    ) -> Vec<String> {
        let mut dropped = Vec::new();
        self.state.subscriptions.retain(|f, _| {
            let ok = allowed(f);
            if !ok {
                dropped.push(f.clone());
            }
            ok
        });
        dropped
    }

    /// A new (not `$share`) subscription to `filter` matches what is appended from `ends` on
    /// (the end of every log partition now); a session's first subscription also starts its
    /// reading positions there.
    pub fn subscribed_from(&mut self, filter: String, ends: Vec<(Arc<str>, u32, u64)>) {
        let first = self.state.subscriptions.len() == 1;
        let mut since = HashMap::new();
        for (t, p, end) in ends {
            since.insert((Arc::clone(&t), p), end);
            if first {
                self.state.positions.entry((t, p)).or_insert(end);
            }
        }
        self.state.since.insert(filter, since);
    }

    /// Where reading `key` back resumes, given the partition's first offset `start`: the stored
    /// position, or `start` when there is none or retention deleted past it (the messages lost
    /// so are returned to be reported).
    pub fn read_back_from(&mut self, key: &PartitionKey, start: u64) -> (u64, u64) {
        let pos = *self.state.positions.entry(key.clone()).or_insert(start);
        if pos < start {
            self.state.positions.insert(key.clone(), start);
            (start, start - pos)
        } else {
            (pos, 0)
        }
    }

    /// Records that reading `key` back got up to `next` (positions never move back).
    pub fn read_back_to(&mut self, key: PartitionKey, next: u64) {
        let p = self.state.positions.entry(key).or_insert(next);
        *p = (*p).max(next);
    }

    /// Takes the actions produced so far, and their queue's memory: a connection between
    /// turns holds none.
    pub fn take_actions(&mut self) -> std::collections::vec_deque::IntoIter<Action> {
        std::mem::take(&mut self.actions).into_iter()
    }

    /// Whether the session takes more messages now (else they wait in the log).
    pub fn wants_more(&self) -> bool {
        self.queued.len() < QUEUE_LIMIT
    }

    /// Whether what was queued for sending since the last call includes a QoS 1/2 PUBLISH or
    /// a PUBREL: a persistent session's state must then be stored durably before it is written
    /// to the client (the module's "Durable delivery state").
    pub fn take_needs_sync(&mut self) -> bool {
        std::mem::take(&mut self.needs_sync)
    }

    /// Unacknowledged inbound QoS 1/2 publishes (appends not yet answered).
    pub fn inbound_unacked(&self) -> usize {
        self.inbound_unacked
    }

    /// The persistent part, positions at the lowest unacknowledged offset.
    pub fn persisted(&self) -> PersistedSession {
        PersistedSession {
            expiry: self.state.expiry,
            subscriptions: self
                .state
                .subscriptions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            positions: self.state.committed_positions(&self.queued),
            since: self
                .state
                .since
                .iter()
                .flat_map(|(f, m)| {
                    m.iter()
                        .map(move |((t, p), o)| (f.clone(), t.to_string(), *p, *o))
                })
                .collect(),
            owner: self.state.owner.clone(),
            inflight: self.state.stored_inflight(),
            next_pkid: self.state.next_pkid,
        }
    }

    /// Ends the connection's part: queued deliveries are dropped (they are re-read from the
    /// log from the persisted positions), the state is handed back.
    pub fn into_state(mut self) -> SessionState {
        for q in &self.queued {
            if let Some((k, off)) = &q.source {
                if let Some(p) = self.state.positions.get_mut(k) {
                    *p = (*p).min(*off);
                }
            }
        }
        self.queued.clear();
        self.state
    }

    fn close(&mut self, reason: u8, why: impl Into<String>) {
        let v5 = self.version == Version::V5;
        self.actions.push_back(Action::Close {
            reason: v5.then_some(reason),
            graceful: false,
            error: true,
            why: why.into(),
        });
    }

    /// A packet from the client.
    pub fn handle(&mut self, packet: Packet) {
        match packet {
            Packet::Connect(_) => self.close(reason::PROTOCOL_ERROR, "second CONNECT"),
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(id) => self.on_outbound_ack(id, Stage::Ack),
            Packet::PubRec(id, ok) => {
                if let Some(pos) = self.find(id, Stage::Rec) {
                    if ok {
                        self.state.outbound[pos].stage = Stage::Comp;
                        self.needs_sync = true;
                        self.actions.push_back(Action::Send(Out::PubRel(id, 0)));
                    } else {
                        self.state.outbound.remove(pos);
                        self.pump();
                    }
                }
            }
            Packet::PubComp(id) => self.on_outbound_ack(id, Stage::Comp),
            Packet::PubRel(id) => {
                let rc = if self.state.inbound_qos2.remove(&id) {
                    0
                } else {
                    reason::PACKET_ID_NOT_FOUND
                };
                self.actions.push_back(Action::Send(Out::PubComp(id, rc)));
            }
            Packet::Subscribe {
                pkid,
                filters,
                subscription_id,
            } => self.on_subscribe(pkid, filters, subscription_id),
            Packet::Unsubscribe { pkid, filters } => {
                let mut codes = Vec::with_capacity(filters.len());
                for f in filters {
                    self.state.since.remove(&f);
                    if self.state.subscriptions.remove(&f).is_some() {
                        codes.push(reason::SUCCESS);
                        self.actions.push_back(Action::Unsubscribe { filter: f });
                    } else {
                        codes.push(reason::NO_SUBSCRIPTION_EXISTED);
                    }
                }
                self.actions.push_back(Action::Persist);
                self.actions
                    .push_back(Action::Send(Out::UnsubAck(pkid, codes)));
            }
            Packet::PingReq => self.actions.push_back(Action::Send(Out::PingResp)),
            Packet::Disconnect {
                reason: rc,
                session_expiry,
            } => {
                if let Some(e) = session_expiry {
                    if self.state.expiry == 0 && e != 0 {
                        self.close(
                            reason::PROTOCOL_ERROR,
                            "session expiry set on DISCONNECT after 0 on CONNECT",
                        );
                        return;
                    }
                    self.state.expiry = e.min(self.limits.max_session_expiry);
                }
                // 0x04: disconnect with will message.
                let graceful = rc != 0x04;
                if graceful {
                    self.will = None;
                }
                self.actions.push_back(Action::Close {
                    reason: None,
                    graceful,
                    error: false,
                    why: format!("client disconnected (reason {rc:#04x})"),
                });
            }
        }
    }

    fn find(&self, id: u16, stage: Stage) -> Option<usize> {
        self.state
            .outbound
            .iter()
            .position(|i| i.pkid == id && i.stage == stage)
    }

    fn on_outbound_ack(&mut self, id: u16, stage: Stage) {
        if let Some(pos) = self.find(id, stage) {
            self.state.outbound.remove(pos);
            self.pump();
        }
    }

    fn on_publish(&mut self, mut p: Publish) {
        let v5 = self.version == Version::V5;
        if let Some(alias) = p.props.topic_alias.take() {
            if !v5 || alias == 0 || alias > self.limits.topic_alias_max {
                self.close(
                    reason::TOPIC_ALIAS_INVALID,
                    format!("topic alias {alias} out of range"),
                );
                return;
            }
            if p.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        self.close(
                            reason::PROTOCOL_ERROR,
                            format!("unknown topic alias {alias}"),
                        );
                        return;
                    }
                }
            } else {
                self.aliases.insert(alias, p.topic.clone());
            }
        }
        if let Err(e) = topic::validate_name(&p.topic) {
            self.close(
                reason::TOPIC_NAME_INVALID,
                format!("PUBLISH to {:?}: {e}", p.topic),
            );
            return;
        }
        if !self.may(crate::auth::Op::Publish(&p.topic)) {
            // Refused by the ACL: 5.0 says so in the acknowledgement; 3.1.1 has no negative
            // acknowledgement, so the message is acknowledged per its QoS and dropped
            // (MQTT-3.3.5-2). Counted in brook_auth_denied_total either way.
            tracing::debug!(client = %self.state.client_id, topic = %p.topic, "mqtt: publish denied by the ACL");
            let rc = if v5 { reason::NOT_AUTHORIZED } else { 0 };
            match p.qos {
                0 => {}
                1 => self
                    .actions
                    .push_back(Action::Send(Out::PubAck(p.pkid, rc))),
                _ => {
                    if !v5 {
                        // The PUBREL that follows is answered with PUBCOMP.
                        self.state.inbound_qos2.insert(p.pkid);
                    }
                    self.actions
                        .push_back(Action::Send(Out::PubRec(p.pkid, rc)));
                }
            }
            return;
        }
        if p.qos == 2 && self.state.inbound_qos2.contains(&p.pkid) {
            // Already stored: a resend before PUBREL. Answer again, store nothing.
            self.actions.push_back(Action::Send(Out::PubRec(p.pkid, 0)));
            return;
        }
        // The quota (5.0's Receive Maximum) counts a QoS 1 publish until its PUBACK and a QoS
        // 2 one until its PUBCOMP: a PUBREC does not free its place. 3.1.1 has no quota to
        // exceed: its clients are held back by not reading them while `max_inflight` appends
        // wait (the connection's `paused`); packet ids bound the QoS 2 ones awaiting PUBREL.
        let used = self.inbound_unacked + self.state.inbound_qos2.len();
        if p.qos > 0 && self.version == Version::V5 && used >= usize::from(self.limits.max_inflight)
        {
            self.close(
                reason::RECEIVE_MAXIMUM_EXCEEDED,
                "more unacknowledged QoS 1/2 publishes than Receive Maximum",
            );
            return;
        }
        let ack = match p.qos {
            0 => Ack::None,
            1 => Ack::PubAck(p.pkid),
            _ => Ack::PubRec(p.pkid),
        };
        if ack != Ack::None {
            self.inbound_unacked += 1;
        }
        self.actions.push_back(Action::Append { publish: p, ack });
    }

    /// The log answered an [`Action::Append`].
    pub fn appended(&mut self, ack: Ack, outcome: AppendOutcome) {
        let rc = match outcome {
            AppendOutcome::Stored => reason::SUCCESS,
            AppendOutcome::QuotaExceeded => reason::QUOTA_EXCEEDED,
            AppendOutcome::Failed => reason::UNSPECIFIED,
        };
        if ack != Ack::None {
            self.inbound_unacked = self.inbound_unacked.saturating_sub(1);
        }
        if outcome != AppendOutcome::Stored && self.version == Version::V311 {
            // 3.1.1 has no negative acknowledgement: the connection task holds a refused
            // message and retries; any other failure closes the connection unacknowledged.
            if ack != Ack::None {
                self.close(reason::UNSPECIFIED, "the log failed to store a message");
            }
            return;
        }
        match ack {
            Ack::None => {}
            Ack::PubAck(id) => self.actions.push_back(Action::Send(Out::PubAck(id, rc))),
            Ack::PubRec(id) => {
                if rc == reason::SUCCESS {
                    self.state.inbound_qos2.insert(id);
                }
                self.actions.push_back(Action::Send(Out::PubRec(id, rc)));
            }
        }
    }

    fn on_subscribe(&mut self, pkid: u16, filters: Vec<codec::SubFilter>, sub_id: Option<usize>) {
        let v5 = self.version == Version::V5;
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for f in filters {
            let parsed = match topic::parse_filter(&f.filter) {
                Ok(p) => p,
                Err(_) => {
                    codes.push(if v5 {
                        reason::TOPIC_FILTER_INVALID
                    } else {
                        0x80
                    });
                    continue;
                }
            };
            if parsed.share_group.is_some() && f.no_local {
                // MQTT-3.8.3-4: No Local on a shared subscription is a protocol error.
                self.close(reason::PROTOCOL_ERROR, "No Local on a shared subscription");
                return;
            }
            if !self.may(crate::auth::Op::Subscribe(parsed.filter)) {
                tracing::debug!(client = %self.state.client_id, filter = %f.filter, "mqtt: subscription denied by the ACL");
                codes.push(if v5 { reason::NOT_AUTHORIZED } else { 0x80 });
                continue;
            }
            let options = SubOptions {
                qos: f.qos.min(2),
                no_local: f.no_local,
                retain_as_published: f.retain_as_published,
                retain_handling: f.retain_handling,
                subscription_id: sub_id,
            };
            let shared = parsed.share_group.is_some();
            let is_new = self
                .state
                .subscriptions
                .insert(f.filter.clone(), options.clone())
                .is_none();
            codes.push(options.qos);
            self.actions.push_back(Action::Subscribe {
                filter: f.filter.clone(),
                options: options.clone(),
                is_new,
            });
            // Retained messages are not sent for shared subscriptions (MQTT-3.8.4-?; 5.0 4.8.2).
            let send = !shared
                && match options.retain_handling {
                    0 => true,
                    1 => is_new,
                    _ => false,
                };
            if send {
                retained.push((f.filter, options));
            }
        }
        self.actions.push_back(Action::Persist);
        self.actions
            .push_back(Action::Send(Out::SubAck(pkid, codes)));
        for (filter, options) in retained {
            self.actions
                .push_back(Action::SendRetained { filter, options });
        }
    }

    /// A message from the log (live, or read back): delivered if a subscription matches and
    /// the session has not looked at that offset yet.
    pub fn offer(&mut self, msg: &LogMessage, now_ms: i64) {
        let key: PartitionKey = (Arc::clone(&msg.log_topic), msg.partition);
        let pos = self.state.positions.entry(key.clone()).or_insert(0);
        if msg.offset < *pos {
            return;
        }
        *pos = msg.offset + 1;
        let mut qos = None::<u8>;
        let mut retain = false;
        let mut ids = Vec::new();
        for (filter, o) in &self.state.subscriptions {
            if filter.starts_with("$share/") || !topic::matches(filter, &msg.topic) {
                continue;
            }
            if o.no_local && msg.publisher.as_deref() == Some(self.state.client_id.as_str()) {
                continue;
            }
            if let Some(start) = self.state.since.get(filter).and_then(|m| m.get(&key)) {
                if msg.offset < *start {
                    continue;
                }
            }
            qos = Some(qos.map_or(o.qos, |q| q.max(o.qos)));
            retain |= o.retain_as_published && msg.retain;
            ids.extend(o.subscription_id);
        }
        let Some(qos) = qos else {
            return;
        };
        self.enqueue(
            msg,
            qos.min(msg.qos),
            retain,
            ids,
            Some((key, msg.offset)),
            now_ms,
        );
    }

    /// A message for shared subscription `filter` (raw `$share/...`), picked for this member.
    pub fn offer_shared(&mut self, msg: &LogMessage, filter: &str, now_ms: i64) {
        let Some(o) = self.state.subscriptions.get(filter) else {
            return;
        };
        let (qos, ids) = (o.qos.min(msg.qos), o.subscription_id.into_iter().collect());
        self.enqueue(msg, qos, false, ids, None, now_ms);
    }

    /// A message that is not in the log (`$SYS`): sent at QoS 0 to the matching
    /// subscriptions, no position kept.
    pub fn offer_unlogged(&mut self, msg: &LogMessage, now_ms: i64) {
        let mut ids = Vec::new();
        let mut matched = false;
        for (filter, o) in &self.state.subscriptions {
            if !filter.starts_with("$share/") && topic::matches(filter, &msg.topic) {
                matched = true;
                ids.extend(o.subscription_id);
            }
        }
        if matched {
            self.enqueue(msg, 0, false, ids, None, now_ms);
        }
    }

    /// A retained message for a new subscription with `options`: sent with retain set.
    pub fn offer_retained(&mut self, msg: &LogMessage, options: &SubOptions, now_ms: i64) {
        let ids = options.subscription_id.into_iter().collect();
        self.enqueue(msg, options.qos.min(msg.qos), true, ids, None, now_ms);
    }

    fn enqueue(
        &mut self,
        msg: &LogMessage,
        qos: u8,
        retain: bool,
        subscription_ids: Vec<usize>,
        source: Option<(PartitionKey, u64)>,
        now_ms: i64,
    ) {
        let mut props = if self.version == Version::V5 {
            MessageProps {
                subscription_ids,
                ..msg.props.clone()
            }
        } else {
            MessageProps::default()
        };
        if let Some(expiry) = props.expiry {
            let age = u32::try_from((now_ms - msg.timestamp).max(0) / 1000).unwrap_or(u32::MAX);
            if age >= expiry {
                return;
            }
            props.expiry = Some(expiry - age);
        }
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: msg.topic.clone(),
            pkid: 0,
            payload: Bytes::clone(&msg.payload),
            props,
        };
        if codec::publish_len(self.version, &publish) as u64 > u64::from(self.client_max_packet) {
            // Too large for this client: dropped as if delivered (MQTT-3.1.2-25).
            return;
        }
        self.queued.push_back(Queued { publish, source });
        self.pump();
    }

    fn next_pkid(&mut self) -> u16 {
        loop {
            self.state.next_pkid = self.state.next_pkid.wrapping_add(1).max(1);
            let id = self.state.next_pkid;
            if !self.state.outbound.iter().any(|i| i.pkid == id) {
                return id;
            }
        }
    }

    /// Sends queued messages while the in-flight window has room (QoS 0 needs none, but
    /// keeps its place in the queue).
    fn pump(&mut self) {
        while let Some(front) = self.queued.front() {
            if front.publish.qos > 0 && self.state.outbound.len() >= self.window {
                return;
            }
            let Some(Queued {
                mut publish,
                source,
            }) = self.queued.pop_front()
            else {
                return;
            };
            if publish.qos > 0 {
                publish.pkid = self.next_pkid();
                self.needs_sync = true;
                self.state.outbound.push_back(Inflight {
                    pkid: publish.pkid,
                    publish: publish.clone(),
                    loaded: true,
                    stage: if publish.qos == 1 {
                        Stage::Ack
                    } else {
                        Stage::Rec
                    },
                    source,
                });
            }
            self.actions.push_back(Action::Send(Out::Publish(publish)));
        }
    }

    /// Messages sent and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.state.outbound.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_inflight: 2,
            topic_alias_max: 4,
            max_packet_size: 1 << 20,
            max_session_expiry: u32::MAX,
            max_keepalive: 100,
        }
    }

    fn connect(version: Version) -> Connect {
        Connect {
            version,
            client_id: "c".into(),
            clean_start: true,
            keep_alive: 30,
            session_expiry: 0,
            receive_maximum: u16::MAX,
            max_packet_size: u32::MAX,
            topic_alias_max: 0,
            will: None,
            username: None,
            password: None,
        }
    }

    fn msg(topic: &str, offset: u64, qos: u8) -> LogMessage {
        LogMessage {
            log_topic: Arc::from("mqtt"),
            partition: 0,
            offset,
            timestamp: 0,
            topic: topic.into(),
            payload: Bytes::from_static(b"x"),
            qos,
            retain: false,
            publisher: Some("other".into()),
            props: MessageProps::default(),
        }
    }

    fn sent(s: &mut Session) -> Vec<Out> {
        s.take_actions()
            .filter_map(|a| match a {
                Action::Send(o) => Some(o),
                _ => None,
            })
            .collect()
    }

    fn subscribe(s: &mut Session, filter: &str, qos: u8) {
        s.handle(Packet::Subscribe {
            pkid: 1,
            filters: vec![codec::SubFilter {
                filter: filter.into(),
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            }],
            subscription_id: None,
        });
        let _ = s.take_actions().count();
    }

    fn new_session(version: Version) -> Session {
        let mut s = Session::start(
            &connect(version),
            SessionState::new("c".into(), 0),
            false,
            None,
            limits(),
        );
        let _ = s.take_actions().count();
        s
    }

    #[test]
    fn window_and_downgrade() {
        let mut s = new_session(Version::V311);
        subscribe(&mut s, "a/#", 1);
        for off in 0..4 {
            s.offer(&msg("a/b", off, 2), 0);
        }
        let out = sent(&mut s);
        assert_eq!(out.len(), 2, "window of 2");
        let Out::Publish(p) = &out[0] else { panic!() };
        assert_eq!(p.qos, 1, "downgraded to the subscription's QoS");
        s.handle(Packet::PubAck(p.pkid));
        assert_eq!(sent(&mut s).len(), 1, "one more once acknowledged");
        // Persisted: the lowest offset not sent (3 is queued), and what is in flight (1, 2).
        let p = s.persisted();
        assert_eq!(p.positions, vec![("mqtt".to_string(), 0, 3)]);
        let offsets: Vec<u64> = p.inflight.iter().map(|i| i.offset).collect();
        assert_eq!(offsets, vec![1, 2]);
        // Offsets already looked at are not delivered twice.
        s.offer(&msg("a/b", 2, 1), 0);
        assert!(sent(&mut s).is_empty());
    }

    #[test]
    fn no_match_no_delivery_and_dollar_topics() {
        let mut s = new_session(Version::V311);
        subscribe(&mut s, "#", 0);
        s.offer(&msg("$SYS/x", 0, 0), 0);
        s.offer(&msg("b", 1, 0), 0);
        let out = sent(&mut s);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn qos2_inbound_is_stored_once() {
        let mut s = new_session(Version::V5);
        let p = Publish {
            dup: false,
            qos: 2,
            retain: false,
            topic: "t".into(),
            pkid: 9,
            payload: Bytes::new(),
            props: MessageProps::default(),
        };
        s.handle(Packet::Publish(p.clone()));
        let acts: Vec<_> = s.take_actions().collect();
        assert!(matches!(
            acts[0],
            Action::Append {
                ack: Ack::PubRec(9),
                ..
            }
        ));
        s.appended(Ack::PubRec(9), AppendOutcome::Stored);
        assert_eq!(sent(&mut s), vec![Out::PubRec(9, 0)]);
        // A resend (client lost the PUBREC) is answered without a second append.
        s.handle(Packet::Publish(Publish { dup: true, ..p }));
        assert_eq!(sent(&mut s), vec![Out::PubRec(9, 0)]);
        s.handle(Packet::PubRel(9));
        assert_eq!(sent(&mut s), vec![Out::PubComp(9, 0)]);
        s.handle(Packet::PubRel(9));
        assert_eq!(
            sent(&mut s),
            vec![Out::PubComp(9, reason::PACKET_ID_NOT_FOUND)]
        );
    }

    #[test]
    fn keep_alive_is_bounded_and_5_0_clients_are_told() {
        assert_eq!(bounded_keepalive(30, 100), None);
        assert_eq!(bounded_keepalive(100, 100), None);
        assert_eq!(bounded_keepalive(101, 100), Some(100));
        assert_eq!(
            bounded_keepalive(0, 100),
            Some(100),
            "none is longer than any"
        );
        assert_eq!(bounded_keepalive(0, 0), None, "0: no bound");
        for (asked, told, got) in [(0, Some(100), 100), (500, Some(100), 100), (30, None, 30)] {
            let mut s = Session::start(
                &Connect {
                    keep_alive: asked,
                    ..connect(Version::V5)
                },
                SessionState::new("c".into(), 0),
                false,
                None,
                limits(),
            );
            match s.take_actions().next() {
                Some(Action::Send(Out::ConnAck(c))) => assert_eq!(c.server_keep_alive, told),
                other => panic!("{other:?}"),
            }
            assert_eq!(s.keep_alive, got);
        }
    }

    #[test]
    fn a_qos2_publish_holds_its_quota_place_until_pubcomp() {
        let mut s = new_session(Version::V5);
        let max = s.limits.max_inflight;
        let publish = |pkid: u16| Publish {
            dup: false,
            qos: 2,
            retain: false,
            topic: "t".into(),
            pkid,
            payload: Bytes::new(),
            props: MessageProps::default(),
        };
        for id in 1..=max {
            s.handle(Packet::Publish(publish(id)));
            let _ = s.take_actions().count();
            s.appended(Ack::PubRec(id), AppendOutcome::Stored);
            assert_eq!(sent(&mut s), vec![Out::PubRec(id, 0)]);
        }
        // A resend of one already held is answered again and takes no new place.
        s.handle(Packet::Publish(publish(1)));
        assert_eq!(sent(&mut s), vec![Out::PubRec(1, 0)]);
        // PUBREL/PUBCOMP frees one place: one more fits.
        s.handle(Packet::PubRel(1));
        assert_eq!(sent(&mut s), vec![Out::PubComp(1, 0)]);
        s.handle(Packet::Publish(publish(max + 1)));
        assert!(matches!(
            s.take_actions().next(),
            Some(Action::Append { .. })
        ));
        s.appended(Ack::PubRec(max + 1), AppendOutcome::Stored);
        let _ = sent(&mut s);
        // Past the quota: DISCONNECT 0x93.
        s.handle(Packet::Publish(publish(max + 2)));
        assert!(matches!(
            s.take_actions().next(),
            Some(Action::Close {
                reason: Some(reason::RECEIVE_MAXIMUM_EXCEEDED),
                ..
            })
        ));
    }

    /// A 3.1.1 client, told no Receive Maximum, may have more QoS 2 messages awaiting PUBREL.
    #[test]
    fn a_311_client_has_no_receive_maximum() {
        let mut s = new_session(Version::V311);
        for id in 1..=3 * s.limits.max_inflight {
            s.handle(Packet::Publish(Publish {
                dup: false,
                qos: 2,
                retain: false,
                topic: "t".into(),
                pkid: id,
                payload: Bytes::new(),
                props: MessageProps::default(),
            }));
            assert!(matches!(
                s.take_actions().next(),
                Some(Action::Append { .. })
            ));
            s.appended(Ack::PubRec(id), AppendOutcome::Stored);
            assert_eq!(sent(&mut s), vec![Out::PubRec(id, 0)]);
        }
    }

    #[test]
    fn quota_exceeded_by_version() {
        let mut s = new_session(Version::V5);
        s.appended(Ack::PubAck(3), AppendOutcome::QuotaExceeded);
        assert_eq!(sent(&mut s), vec![Out::PubAck(3, reason::QUOTA_EXCEEDED)]);
        let mut s = new_session(Version::V311);
        s.appended(Ack::None, AppendOutcome::QuotaExceeded);
        assert!(s.take_actions().next().is_none(), "QoS 0 dropped silently");
    }

    #[test]
    fn topic_alias_in() {
        let mut s = new_session(Version::V5);
        let mut p = Publish {
            dup: false,
            qos: 0,
            retain: false,
            topic: "long/topic".into(),
            pkid: 0,
            payload: Bytes::new(),
            props: MessageProps {
                topic_alias: Some(1),
                ..MessageProps::default()
            },
        };
        s.handle(Packet::Publish(p.clone()));
        p.topic = String::new();
        s.handle(Packet::Publish(p.clone()));
        let topics: Vec<String> = s
            .take_actions()
            .filter_map(|a| match a {
                Action::Append { publish, .. } => Some(publish.topic),
                _ => None,
            })
            .collect();
        assert_eq!(topics, vec!["long/topic", "long/topic"]);
        p.props.topic_alias = Some(5);
        s.handle(Packet::Publish(p));
        assert!(matches!(
            s.take_actions().next(),
            Some(Action::Close {
                reason: Some(0x94),
                ..
            })
        ));
    }

    #[test]
    fn wildcard_publish_closes() {
        let mut s = new_session(Version::V311);
        s.handle(Packet::Publish(Publish {
            dup: false,
            qos: 0,
            retain: false,
            topic: "a/+".into(),
            pkid: 0,
            payload: Bytes::new(),
            props: MessageProps::default(),
        }));
        assert!(matches!(
            s.take_actions().next(),
            Some(Action::Close { .. })
        ));
    }

    #[test]
    fn resumed_session_redelivers_with_dup() {
        let mut s = new_session(Version::V311);
        subscribe(&mut s, "a", 1);
        s.offer(&msg("a", 5, 1), 0);
        let _ = sent(&mut s);
        let state = s.into_state();
        let s2 = Session::start(&connect(Version::V311), state, true, None, limits());
        let mut s2 = s2;
        let out = sent(&mut s2);
        assert!(matches!(&out[0], Out::ConnAck(c) if c.session_present));
        assert!(matches!(&out[1], Out::Publish(p) if p.dup && p.qos == 1));
    }

    /// The stored delivery state across a crash: what completed is never sent again, what
    /// was in flight goes again with its packet id and DUP (PUBREL once PUBREC came), and new
    /// messages get packet ids the client cannot confuse with those.
    #[test]
    fn a_restored_session_resends_only_what_was_in_flight() {
        let mut s = new_session(Version::V5);
        s.state.expiry = 60;
        subscribe(&mut s, "a", 2);
        assert!(!s.take_needs_sync());
        for off in 0..4 {
            s.offer(&msg("a", off, 2), 0);
        }
        let out = sent(&mut s);
        let ids: Vec<u16> = out
            .iter()
            .map(|o| match o {
                Out::Publish(p) => p.pkid,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids.len(), 2);
        assert!(
            s.take_needs_sync(),
            "QoS 2 PUBLISHes need the state stored first"
        );
        assert!(!s.take_needs_sync());
        // The first completes; the second is acknowledged with PUBREC only.
        s.handle(Packet::PubRec(ids[0], true));
        assert!(matches!(sent(&mut s)[..], [Out::PubRel(id, _)] if id == ids[0]));
        assert!(s.take_needs_sync(), "a PUBREL needs the state stored first");
        s.handle(Packet::PubComp(ids[0]));
        let third = match &sent(&mut s)[..] {
            [Out::Publish(p)] => p.pkid,
            other => panic!("{other:?}"),
        };
        s.handle(Packet::PubRec(ids[1], true));
        let _ = sent(&mut s);
        let bytes = postcard::to_allocvec(&s.persisted()).expect("encode");
        // The crash: only the stored bytes remain.
        drop(s);
        let stored = PersistedSession::decode(&bytes).expect("decode");
        assert_eq!(stored.positions, vec![("mqtt".to_string(), 0, 3)]);
        let mut state = SessionState::restore("c".into(), stored);
        assert_eq!(state.unloaded(), vec![(Arc::from("mqtt"), 0, 2)]);
        let dropped = state.load(|_, off| Some(msg("a", off, 2)), true);
        assert_eq!(dropped, 0);
        let mut c = connect(Version::V5);
        c.clean_start = false;
        c.session_expiry = 60;
        let mut s = Session::start(&c, state, true, None, limits());
        let out = sent(&mut s);
        assert!(matches!(&out[0], Out::ConnAck(a) if a.session_present));
        assert!(matches!(out[1], Out::PubRel(id, _) if id == ids[1]));
        assert!(
            matches!(&out[2], Out::Publish(p) if p.pkid == third && p.dup && p.topic == "a" && &p.payload[..] == b"x")
        );
        assert_eq!(out.len(), 3);
        // Offsets below the stored position are not offered again; the next is, with a new id.
        s.offer(&msg("a", 2, 2), 0);
        assert!(sent(&mut s).is_empty());
        s.handle(Packet::PubComp(ids[1]));
        s.offer(&msg("a", 3, 2), 0);
        let next = match &sent(&mut s)[..] {
            [Out::Publish(p)] => p.pkid,
            other => panic!("{other:?}"),
        };
        assert!(next != third && !ids.contains(&next));
    }

    /// A restored message the log no longer has is dropped; a PUBREL needs no message.
    #[test]
    fn restored_messages_the_log_lost_are_dropped() {
        let stored = PersistedSession {
            expiry: 60,
            subscriptions: vec![],
            positions: vec![("mqtt".into(), 0, 10)],
            since: vec![],
            owner: Owner::Anonymous,
            inflight: [(1, 1, 5), (2, 3, 6), (3, 2, 12)]
                .into_iter()
                .map(|(pkid, stage, offset)| StoredInflight {
                    pkid,
                    stage,
                    qos: 2,
                    retain: false,
                    log_topic: "mqtt".into(),
                    partition: 0,
                    offset,
                    subscription_ids: vec![],
                })
                .collect(),
            next_pkid: 3,
        };
        let mut state = SessionState::restore("c".into(), stored);
        let ends = HashMap::from([((Arc::from("mqtt"), 0), 10)]);
        assert_eq!(
            state.retain_inflight_below(&ends),
            1,
            "offset 12 is past the end"
        );
        assert_eq!(state.load(|_, _| None, false), 1, "offset 5 is gone");
        let s = Session::start(&connect(Version::V311), state, true, None, limits());
        let mut s = s;
        let out = sent(&mut s);
        assert!(matches!(out[1..], [Out::PubRel(2, _)]));
    }

    /// Sessions stored by the two earlier versions still read.
    #[test]
    fn earlier_stored_sessions_decode() {
        let subs = vec![(
            "a".to_string(),
            SubOptions {
                qos: 1,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
                subscription_id: None,
            },
        )];
        let positions = vec![("mqtt".to_string(), 0u32, 7u64)];
        let since: Vec<(String, String, u32, u64)> = vec![];
        let v1 = postcard::to_allocvec(&(60u32, &subs, &positions, &since)).expect("v1");
        let v2 =
            postcard::to_allocvec(&(60u32, &subs, &positions, &since, Owner::User("u".into())))
                .expect("v2");
        let d1 = PersistedSession::decode(&v1).expect("decode v1");
        assert_eq!(
            (d1.owner, d1.positions.clone()),
            (Owner::Unknown, positions.clone())
        );
        let d2 = PersistedSession::decode(&v2).expect("decode v2");
        assert_eq!(d2.owner, Owner::User("u".into()));
        assert!(d2.inflight.is_empty() && d2.subscriptions == subs);
    }

    #[test]
    fn no_local_and_expiry() {
        let mut s = new_session(Version::V5);
        s.handle(Packet::Subscribe {
            pkid: 1,
            filters: vec![codec::SubFilter {
                filter: "a".into(),
                qos: 0,
                no_local: true,
                retain_as_published: false,
                retain_handling: 0,
            }],
            subscription_id: Some(7),
        });
        let _ = s.take_actions().count();
        let mut own = msg("a", 0, 0);
        own.publisher = Some("c".into());
        s.offer(&own, 0);
        assert!(sent(&mut s).is_empty(), "own message not delivered");
        let mut old = msg("a", 1, 0);
        old.props.expiry = Some(10);
        s.offer(&old, 11_000);
        assert!(sent(&mut s).is_empty(), "expired");
        let mut fresh = msg("a", 2, 0);
        fresh.props.expiry = Some(10);
        s.offer(&fresh, 4_000);
        let out = sent(&mut s);
        let Out::Publish(p) = &out[0] else { panic!() };
        assert_eq!(p.props.expiry, Some(6), "remaining lifetime");
        assert_eq!(p.props.subscription_ids, vec![7]);
    }
}
