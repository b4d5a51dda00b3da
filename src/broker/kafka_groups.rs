//! Consumer groups of Kafka clients, with Kafka's own protocol: the broker coordinates, a client
//! (the leader) assigns.
//!
//! A group moves through Kafka's states. A join (new member, changed subscription, or a member
//! rejoining after it heard of a rebalance from its heartbeat) puts the group in
//! `PreparingRebalance`; every member's JoinGroup waits until all known members have rejoined
//! (members that do not within the rebalance timeout are removed). Then the generation goes up,
//! a protocol every member supports is chosen, every waiting join is answered (the leader also
//! gets every member's subscription) and the group waits in `CompletingRebalance` for the
//! leader's SyncGroup, whose assignment answers every member's SyncGroup; then `Stable`.
//! Heartbeats tell members of a rebalance (`RebalanceInProgress`); a member silent for its
//! session timeout is removed and the others rebalance. Waiting in JoinGroup or SyncGroup is not
//! silence, and every member's session restarts when a join completes (as in Kafka). Static
//! members (KIP-345, a `group.instance.id`): one that joins under a new member id replaces the
//! member with its instance id, whose id is fenced; in a `Stable` group with an unchanged
//! subscription it is answered at once with the current generation and its old assignment, no
//! rebalance (a returning leader gets `skip_assignment`). Offsets
//! are committed through the broker into the same store as native groups' once
//! [`KafkaGroups::check_commit`] accepts the member.
//!
//! No I/O: a waiting join or sync is a oneshot the caller awaits; [`KafkaGroups::tick`] runs
//! the timeouts. State is in memory: after a restart members get `UnknownMember` and rejoin.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Why a group operation was refused (each maps to a Kafka error code).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KafkaGroupError {
    #[error("unknown member")]
    UnknownMember,
    #[error("generation {given} is not the group's ({current})")]
    IllegalGeneration { given: i32, current: i32 },
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    #[error("no protocol in common with the group's members")]
    InconsistentProtocol,
    #[error("invalid group id")]
    InvalidGroupId,
    #[error("another member has joined with this member's group.instance.id")]
    FencedInstanceId,
    #[error("session timeout {0:?} is outside 1 s to 5 min")]
    InvalidSessionTimeout(Duration),
    #[error(
        "the group id is in use by native Brook consumers; a group id serves one protocol at a time"
    )]
    OtherProtocol,
}

pub type Result<T, E = KafkaGroupError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    /// Kafka's name for the state (DescribeGroups, ListGroups).
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// What a finished join tells one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinOutcome {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member and its metadata for the chosen protocol; only the leader gets them.
    pub members: Vec<(String, Option<String>, Vec<u8>)>,
    /// A static leader back in a stable group: the assignment stands (JoinGroup v9's
    /// `skip_assignment`).
    pub skip_assignment: bool,
}

/// A member as described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

/// A group as described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    pub state: State,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberInfo>,
}

/// One join's parameters.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Vec<u8>)>,
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Vec<u8>)>,
    assignment: Vec<u8>,
    last_seen: Instant,
    join: Option<oneshot::Sender<Result<JoinOutcome>>>,
    sync: Option<oneshot::Sender<Result<Vec<u8>>>>,
}

struct Group {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    rebalance_deadline: Instant,
    /// Member ids whose static instance joined again under a new id (KIP-345): fenced.
    fenced: BTreeSet<String>,
}

/// Fenced member ids a group remembers, the oldest forgotten first.
const MAX_FENCED: usize = 1024;

impl Group {
    /// The member `id`, or why not: fenced (its instance came back under a new id) or unknown.
    fn member(&mut self, id: &str) -> Result<&mut Member> {
        if self.fenced.contains(id) {
            return Err(KafkaGroupError::FencedInstanceId);
        }
        self.members
            .get_mut(id)
            .ok_or(KafkaGroupError::UnknownMember)
    }
}

/// Every Kafka group of the broker.
#[derive(Default)]
pub struct KafkaGroups {
    groups: BTreeMap<String, Group>,
    next_member: u64,
}

impl std::fmt::Debug for KafkaGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KafkaGroups({} groups)", self.groups.len())
    }
}

impl KafkaGroups {
    /// Whether no group is held (then [`KafkaGroups::tick`] has nothing to time out).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// `true` while the group has members (a native member may not join it then).
    pub fn has_members(&self, group: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| !g.members.is_empty())
    }

    /// Joins (or rejoins) a member; the receiver yields the outcome once the rebalance completes.
    pub fn join(
        &mut self,
        group: &str,
        req: JoinRequest,
        now: Instant,
    ) -> Result<oneshot::Receiver<Result<JoinOutcome>>> {
        if group.is_empty() || group.len() > 249 {
            return Err(KafkaGroupError::InvalidGroupId);
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&req.session_timeout) {
            return Err(KafkaGroupError::InvalidSessionTimeout(req.session_timeout));
        }
        if req.protocols.is_empty() || req.protocol_type.is_empty() {
            return Err(KafkaGroupError::InconsistentProtocol);
        }
        let g = self
            .groups
            .entry(group.to_string())
            .or_insert_with(|| Group {
                state: State::Empty,
                generation: 0,
                protocol_type: String::new(),
                protocol: String::new(),
                leader: None,
                members: BTreeMap::new(),
                rebalance_deadline: now,
                fenced: BTreeSet::new(),
            });
        if g.fenced.contains(&req.member_id) {
            return Err(KafkaGroupError::FencedInstanceId);
        }
        if !g.members.is_empty() {
            let common = req.protocols.iter().any(|(p, _)| {
                g.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(q, _)| q == p))
            });
            if g.protocol_type != req.protocol_type || !common {
                return Err(KafkaGroupError::InconsistentProtocol);
            }
        }
        let id = if req.member_id.is_empty() {
            self.next_member += 1;
            format!("{}-{:016x}", req.client_id, self.next_member)
        } else if g.members.contains_key(&req.member_id) {
            req.member_id.clone()
        } else {
            return Err(KafkaGroupError::UnknownMember);
        };
        let (tx, rx) = oneshot::channel();
        // A static member (KIP-345) back under a new member id takes its old place: the old
        // id is fenced, and in a stable group with the same subscription it keeps its
        // assignment and nobody rebalances.
        if let Some(iid) = req.instance_id.as_deref() {
            let old_id = g
                .members
                .iter()
                .find(|(mid, m)| **mid != id && m.instance_id.as_deref() == Some(iid))
                .map(|(mid, _)| mid.clone());
            if let Some((old_id, mut old)) =
                old_id.and_then(|o| g.members.remove(&o).map(|m| (o, m)))
            {
                if let Some(j) = old.join.take() {
                    let _ = j.send(Err(KafkaGroupError::FencedInstanceId));
                }
                if let Some(s) = old.sync.take() {
                    let _ = s.send(Err(KafkaGroupError::FencedInstanceId));
                }
                let was_leader = g.leader.as_deref() == Some(old_id.as_str());
                if was_leader {
                    g.leader = Some(id.clone());
                }
                if g.fenced.len() >= MAX_FENCED {
                    g.fenced.pop_first();
                }
                g.fenced.insert(old_id);
                if g.state == State::Stable && old.protocols == req.protocols {
                    old.client_id = req.client_id;
                    old.client_host = req.client_host;
                    old.session_timeout = req.session_timeout;
                    old.rebalance_timeout = req.rebalance_timeout.max(req.session_timeout);
                    old.last_seen = now;
                    g.members.insert(id.clone(), old);
                    let members = if was_leader {
                        current_members(g)
                    } else {
                        Vec::new()
                    };
                    let _ = tx.send(Ok(JoinOutcome {
                        generation: g.generation,
                        protocol_type: g.protocol_type.clone(),
                        protocol: g.protocol.clone(),
                        leader: g.leader.clone().unwrap_or_default(),
                        member_id: id,
                        members,
                        skip_assignment: was_leader,
                    }));
                    return Ok(rx);
                }
            }
        }
        let m = g.members.entry(id).or_insert_with(|| Member {
            instance_id: req.instance_id.clone(),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            session_timeout: req.session_timeout,
            rebalance_timeout: req.rebalance_timeout,
            protocols: Vec::new(),
            assignment: Vec::new(),
            last_seen: now,
            join: None,
            sync: None,
        });
        m.protocols = req.protocols;
        m.session_timeout = req.session_timeout;
        m.rebalance_timeout = req.rebalance_timeout.max(req.session_timeout);
        m.last_seen = now;
        if let Some(old) = m.join.replace(tx) {
            let _ = old.send(Err(KafkaGroupError::RebalanceInProgress));
        }
        g.protocol_type = req.protocol_type;
        // Any join outside a rebalance starts one: a new member, a changed subscription, or a
        // member that heard of a rebalance and comes back.
        if g.state != State::PreparingRebalance {
            start_rebalance(g, now);
        }
        try_complete_join(g, now);
        Ok(rx)
    }

    /// A SyncGroup: the leader hands in the assignment; everyone gets their own part.
    pub fn sync(
        &mut self,
        group: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
        now: Instant,
    ) -> Result<oneshot::Receiver<Result<Vec<u8>>>> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or(KafkaGroupError::UnknownMember)?;
        g.member(member_id)?;
        let m = g
            .members
            .get_mut(member_id)
            .ok_or(KafkaGroupError::UnknownMember)?;
        m.last_seen = now;
        if generation != g.generation {
            return Err(KafkaGroupError::IllegalGeneration {
                given: generation,
                current: g.generation,
            });
        }
        let (tx, rx) = oneshot::channel();
        match g.state {
            State::Empty | State::PreparingRebalance => {
                return Err(KafkaGroupError::RebalanceInProgress);
            }
            State::Stable => {
                let _ = tx.send(Ok(m.assignment.clone()));
            }
            State::CompletingRebalance => {
                m.sync = Some(tx);
                if g.leader.as_deref() == Some(member_id) {
                    let mut given: BTreeMap<String, Vec<u8>> = assignments.into_iter().collect();
                    for (id, m) in &mut g.members {
                        m.assignment = given.remove(id).unwrap_or_default();
                    }
                    g.state = State::Stable;
                }
                if g.state == State::Stable {
                    for m in g.members.values_mut() {
                        if let Some(s) = m.sync.take() {
                            let _ = s.send(Ok(m.assignment.clone()));
                        }
                    }
                }
            }
        }
        Ok(rx)
    }

    /// A heartbeat: `Ok` while the member's generation is current and no rebalance is due.
    pub fn heartbeat(
        &mut self,
        group: &str,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<()> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or(KafkaGroupError::UnknownMember)?;
        g.member(member_id)?.last_seen = now;
        if g.state == State::PreparingRebalance {
            return Err(KafkaGroupError::RebalanceInProgress);
        }
        if generation != g.generation {
            return Err(KafkaGroupError::IllegalGeneration {
                given: generation,
                current: g.generation,
            });
        }
        Ok(())
    }

    /// Members leave; the rest rebalance.
    pub fn leave(&mut self, group: &str, member_id: &str, now: Instant) -> Result<()> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or(KafkaGroupError::UnknownMember)?;
        g.member(member_id)?;
        g.members.remove(member_id);
        after_removal(g, now);
        Ok(())
    }

    /// Whether a commit from `member` (empty id and generation -1: a client outside any group)
    /// may go ahead.
    pub fn check_commit(
        &mut self,
        group: &str,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<()> {
        let Some(g) = self.groups.get_mut(group) else {
            return if generation < 0 {
                Ok(())
            } else {
                Err(KafkaGroupError::UnknownMember)
            };
        };
        if generation < 0 && member_id.is_empty() {
            return if g.members.is_empty() {
                Ok(())
            } else {
                Err(KafkaGroupError::IllegalGeneration {
                    given: generation,
                    current: g.generation,
                })
            };
        }
        g.member(member_id)?.last_seen = now;
        if g.state == State::CompletingRebalance {
            return Err(KafkaGroupError::RebalanceInProgress);
        }
        if generation != g.generation {
            return Err(KafkaGroupError::IllegalGeneration {
                given: generation,
                current: g.generation,
            });
        }
        Ok(())
    }

    /// Runs the timeouts: expired sessions, rebalances whose stragglers ran out of time.
    /// Returns `(group, member)` of every member removed.
    pub fn tick(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        for (name, g) in &mut self.groups {
            let rebalance_over =
                g.state == State::PreparingRebalance && now >= g.rebalance_deadline;
            let dead: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| {
                    if g.state == State::PreparingRebalance {
                        // A member waiting in JoinGroup is alive; one that did not rejoin in
                        // time is gone.
                        m.join.is_none() && rebalance_over
                    } else {
                        // A member waiting in SyncGroup for the leader is alive.
                        let syncing = m.sync.as_ref().is_some_and(|s| !s.is_closed());
                        !syncing && now.duration_since(m.last_seen) > m.session_timeout
                    }
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in &dead {
                g.members.remove(id);
                gone.push((name.clone(), id.clone()));
            }
            if !dead.is_empty() {
                after_removal(g, now);
            } else if rebalance_over {
                try_complete_join(g, now);
            }
        }
        self.groups
            .retain(|_, g| !(g.members.is_empty() && g.state == State::Empty));
        gone
    }

    pub fn describe(&self, group: &str) -> Option<GroupInfo> {
        let g = self.groups.get(group)?;
        Some(GroupInfo {
            state: g.state,
            generation: g.generation,
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone(),
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberInfo {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m
                        .protocols
                        .iter()
                        .find(|(p, _)| *p == g.protocol)
                        .map(|(_, md)| md.clone())
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Whether a member of `group` is assigned partitions of `topic` (OffsetDelete refuses to
    /// delete offsets the group is using).
    pub fn uses_topic(&self, group: &str, topic: &str) -> bool {
        self.groups.get(group).is_some_and(|g| {
            g.members.values().any(|m| {
                assigned_partitions(&m.assignment)
                    .iter()
                    .any(|(t, _)| t == topic)
            })
        })
    }

    /// `(name, protocol type, state)` of every group with members.
    pub fn list(&self) -> Vec<(String, String, State)> {
        self.groups
            .iter()
            .map(|(n, g)| (n.clone(), g.protocol_type.clone(), g.state))
            .collect()
    }
}

/// The (topic, partition) pairs of a consumer-protocol assignment (empty when it is another
/// protocol's or malformed: it is only shown, never acted on).
pub fn assigned_partitions(assignment: &[u8]) -> Vec<(String, u32)> {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    use kafka_protocol::protocol::Decodable;
    let mut buf = bytes::Bytes::copy_from_slice(assignment);
    if assignment.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([assignment[0], assignment[1]]);
    bytes::Buf::advance(&mut buf, 2);
    match ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3)) {
        Ok(a) => a
            .assigned_partitions
            .iter()
            .flat_map(|tp| {
                tp.partitions
                    .iter()
                    .map(|p| (tp.topic.to_string(), (*p).max(0) as u32))
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn start_rebalance(g: &mut Group, now: Instant) {
    for m in g.members.values_mut() {
        if let Some(s) = m.sync.take() {
            let _ = s.send(Err(KafkaGroupError::RebalanceInProgress));
        }
    }
    let wait = g
        .members
        .values()
        .map(|m| m.rebalance_timeout)
        .max()
        .unwrap_or_default();
    g.state = State::PreparingRebalance;
    g.rebalance_deadline = now + wait;
}

fn after_removal(g: &mut Group, now: Instant) {
    if g.leader
        .as_ref()
        .is_some_and(|l| !g.members.contains_key(l))
    {
        g.leader = None;
    }
    if g.members.is_empty() {
        g.state = State::Empty;
        g.generation += 1;
        g.protocol.clear();
        return;
    }
    if g.state != State::PreparingRebalance {
        start_rebalance(g, now);
    }
    try_complete_join(g, now);
}

/// Every member, its instance id and its metadata for the group's protocol (what the leader
/// assigns from).
fn current_members(g: &Group) -> Vec<(String, Option<String>, Vec<u8>)> {
    g.members
        .iter()
        .map(|(id, m)| {
            let md = m
                .protocols
                .iter()
                .find(|(p, _)| *p == g.protocol)
                .map(|(_, md)| md.clone())
                .unwrap_or_default();
            (id.clone(), m.instance_id.clone(), md)
        })
        .collect()
}

/// Completes the join phase once every member has rejoined.
fn try_complete_join(g: &mut Group, now: Instant) {
    if g.state != State::PreparingRebalance || g.members.values().any(|m| m.join.is_none()) {
        return;
    }
    let leader = match &g.leader {
        Some(l) if g.members.contains_key(l) => l.clone(),
        _ => match g.members.keys().next() {
            Some(first) => first.clone(),
            None => return,
        },
    };
    // The leader's most preferred protocol that every member supports.
    let protocol = g.members[&leader]
        .protocols
        .iter()
        .map(|(p, _)| p.clone())
        .find(|p| {
            g.members
                .values()
                .all(|m| m.protocols.iter().any(|(q, _)| q == p))
        })
        .unwrap_or_default();
    g.generation += 1;
    g.leader = Some(leader.clone());
    g.protocol = protocol.clone();
    g.state = State::CompletingRebalance;
    let members = current_members(g);
    for (id, m) in &mut g.members {
        m.assignment.clear();
        // Every session restarts here, as in Kafka: a member that joined first and waited for
        // the others has not been silent, and must not expire before its SyncGroup arrives.
        m.last_seen = now;
        if let Some(tx) = m.join.take() {
            let _ = tx.send(Ok(JoinOutcome {
                generation: g.generation,
                protocol_type: g.protocol_type.clone(),
                protocol: protocol.clone(),
                leader: leader.clone(),
                member_id: id.clone(),
                members: if *id == leader {
                    members.clone()
                } else {
                    Vec::new()
                },
                skip_assignment: false,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(member: &str, client: &str) -> JoinRequest {
        JoinRequest {
            member_id: member.into(),
            instance_id: None,
            client_id: client.into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), client.as_bytes().to_vec())],
        }
    }

    fn done<T: std::fmt::Debug>(rx: &mut oneshot::Receiver<T>) -> T {
        rx.try_recv().expect("answered")
    }

    #[test]
    fn two_members_join_sync_and_one_leaves() {
        let mut gs = KafkaGroups::default();
        let t0 = Instant::now();
        let mut a = gs.join("g", req("", "a"), t0).expect("join a");
        let ja = done(&mut a).expect("a joined");
        assert_eq!(ja.generation, 1);
        assert_eq!(ja.leader, ja.member_id);
        assert_eq!(ja.members.len(), 1);
        let mut s = gs
            .sync(
                "g",
                &ja.member_id,
                1,
                vec![(ja.member_id.clone(), b"A".to_vec())],
                t0,
            )
            .expect("sync");
        assert_eq!(done(&mut s).expect("assignment"), b"A");
        gs.heartbeat("g", &ja.member_id, 1, t0).expect("stable");

        // b joins: it waits; a hears of the rebalance and rejoins; both get generation 2.
        let mut b = gs.join("g", req("", "b"), t0).expect("join b");
        assert!(b.try_recv().is_err(), "b waits for a");
        assert_eq!(
            gs.heartbeat("g", &ja.member_id, 1, t0),
            Err(KafkaGroupError::RebalanceInProgress)
        );
        let mut a2 = gs.join("g", req(&ja.member_id, "a"), t0).expect("rejoin a");
        let (ja2, jb) = (done(&mut a2).expect("a"), done(&mut b).expect("b"));
        assert_eq!((ja2.generation, jb.generation), (2, 2));
        assert_eq!(ja2.leader, ja.member_id, "the leader stays");
        assert_eq!(ja2.members.len(), 2);
        assert!(jb.members.is_empty(), "only the leader gets the members");

        // b's sync waits for the leader's.
        let mut sb = gs.sync("g", &jb.member_id, 2, vec![], t0).expect("sync b");
        assert!(sb.try_recv().is_err());
        let plan = vec![
            (ja.member_id.clone(), b"A2".to_vec()),
            (jb.member_id.clone(), b"B2".to_vec()),
        ];
        let mut sa = gs.sync("g", &ja.member_id, 2, plan, t0).expect("sync a");
        assert_eq!(done(&mut sa).expect("a"), b"A2");
        assert_eq!(done(&mut sb).expect("b"), b"B2");
        // An old generation is refused for commits; the current one is fine.
        assert!(matches!(
            gs.check_commit("g", &ja.member_id, 1, t0),
            Err(KafkaGroupError::IllegalGeneration { .. })
        ));
        gs.check_commit("g", &ja.member_id, 2, t0).expect("commit");
        assert!(
            gs.check_commit("g", "", -1, t0).is_err(),
            "group has members"
        );

        // a leaves: b is told to rejoin and becomes the leader.
        gs.leave("g", &ja.member_id, t0).expect("leave");
        assert_eq!(
            gs.heartbeat("g", &jb.member_id, 2, t0),
            Err(KafkaGroupError::RebalanceInProgress)
        );
        let mut b3 = gs.join("g", req(&jb.member_id, "b"), t0).expect("rejoin b");
        let jb3 = done(&mut b3).expect("b");
        assert_eq!(
            (jb3.generation, jb3.leader.as_str()),
            (3, jb.member_id.as_str())
        );
    }

    /// KIP-345: a static member that comes back under a new member id takes the old one's
    /// place and assignment without a rebalance; the old id is fenced.
    #[test]
    fn a_static_member_rejoins_without_a_rebalance() {
        let mut gs = KafkaGroups::default();
        let t0 = Instant::now();
        let stat = |member: &str, client: &str, iid: &str| JoinRequest {
            instance_id: Some(iid.into()),
            ..req(member, client)
        };
        let mut a = gs.join("g", stat("", "a", "ia"), t0).expect("join a");
        let ja = done(&mut a).expect("a");
        let mut b = gs.join("g", stat("", "b", "ib"), t0).expect("join b");
        let mut a2 = gs
            .join("g", stat(&ja.member_id, "a", "ia"), t0)
            .expect("rejoin a");
        let (ja, jb) = (done(&mut a2).expect("a"), done(&mut b).expect("b"));
        assert_eq!(ja.generation, 2);
        let plan = vec![
            (ja.member_id.clone(), b"A".to_vec()),
            (jb.member_id.clone(), b"B".to_vec()),
        ];
        let mut sb = gs.sync("g", &jb.member_id, 2, vec![], t0).expect("sync b");
        let mut sa = gs.sync("g", &ja.member_id, 2, plan, t0).expect("sync a");
        assert_eq!(done(&mut sa).expect("a"), b"A");
        assert_eq!(done(&mut sb).expect("b"), b"B");

        // b restarts: a new member id, the same instance id; no rebalance, same assignment.
        let mut b2 = gs.join("g", stat("", "b", "ib"), t0).expect("b again");
        let jb2 = done(&mut b2).expect("answered at once");
        assert_ne!(jb2.member_id, jb.member_id);
        assert_eq!(
            (jb2.generation, jb2.leader.as_str()),
            (2, ja.member_id.as_str())
        );
        assert!(!jb2.skip_assignment && jb2.members.is_empty());
        let mut sb2 = gs.sync("g", &jb2.member_id, 2, vec![], t0).expect("sync");
        assert_eq!(done(&mut sb2).expect("b"), b"B");
        gs.heartbeat("g", &ja.member_id, 2, t0)
            .expect("a is undisturbed");
        assert_eq!(
            gs.describe("g").expect("g").members.len(),
            2,
            "no duplicate"
        );
        for r in [
            gs.heartbeat("g", &jb.member_id, 2, t0),
            gs.check_commit("g", &jb.member_id, 2, t0),
            gs.leave("g", &jb.member_id, t0),
        ] {
            assert_eq!(r, Err(KafkaGroupError::FencedInstanceId));
        }
        assert_eq!(
            gs.join("g", stat(&jb.member_id, "b", "ib"), t0).err(),
            Some(KafkaGroupError::FencedInstanceId)
        );

        // The leader comes back: it keeps leading and is told to skip the assignment.
        let mut a3 = gs.join("g", stat("", "a", "ia"), t0).expect("a again");
        let ja3 = done(&mut a3).expect("at once");
        assert_eq!(ja3.leader, ja3.member_id);
        assert!(ja3.skip_assignment && ja3.members.len() == 2);
        gs.heartbeat("g", &jb2.member_id, 2, t0)
            .expect("still stable");

        // A changed subscription rebalances, still without a duplicate member.
        let mut changed = stat("", "b", "ib");
        changed.protocols = vec![("range".into(), b"other".to_vec())];
        let _b3 = gs.join("g", changed, t0).expect("b changed");
        let info = gs.describe("g").expect("g");
        assert_eq!(
            (info.state, info.members.len()),
            (State::PreparingRebalance, 2)
        );
    }

    #[test]
    fn silent_members_expire_and_stragglers_are_dropped() {
        let mut gs = KafkaGroups::default();
        let t0 = Instant::now();
        let ja = done(&mut gs.join("g", req("", "a"), t0).expect("a")).expect("a");
        drop(gs.sync("g", &ja.member_id, 1, vec![], t0).expect("sync"));
        let mut b = gs.join("g", req("", "b"), t0).expect("b");
        // a never rejoins: after the rebalance timeout it is removed and b goes on alone.
        assert!(gs.tick(t0 + Duration::from_secs(29)).is_empty());
        let gone = gs.tick(t0 + Duration::from_secs(31));
        assert_eq!(gone, vec![("g".to_string(), ja.member_id.clone())]);
        let jb = done(&mut b).expect("b");
        assert_eq!(jb.members.len(), 1);
        // b then falls silent past its session timeout: the group empties.
        let t1 = t0 + Duration::from_secs(31);
        drop(
            gs.sync("g", &jb.member_id, jb.generation, vec![], t1)
                .expect("sync"),
        );
        assert!(gs.tick(t1 + Duration::from_secs(5)).is_empty());
        assert_eq!(gs.tick(t1 + Duration::from_secs(11)).len(), 1);
        assert!(!gs.has_members("g"));
        gs.check_commit("g", "", -1, t1)
            .expect("simple commit on an empty group");
    }

    #[test]
    fn waiting_in_join_or_sync_is_not_silence() {
        let mut gs = KafkaGroups::default();
        let t0 = Instant::now();
        let ja = done(&mut gs.join("g", req("", "a"), t0).expect("a")).expect("a");
        drop(gs.sync("g", &ja.member_id, 1, vec![], t0).expect("sync"));
        // b joins at once; a is busy (handing over its partitions) and rejoins 15 s later,
        // past b's 10 s session timeout.
        let mut b = gs.join("g", req("", "b"), t0).expect("b");
        let t1 = t0 + Duration::from_secs(15);
        gs.heartbeat("g", &ja.member_id, 1, t1)
            .expect_err("a hears of the rebalance");
        let mut a = gs
            .join("g", req(&ja.member_id, "a"), t1)
            .expect("a rejoins");
        let (ja, jb) = (done(&mut a).expect("a"), done(&mut b).expect("b"));
        assert!(
            gs.tick(t1 + Duration::from_secs(1)).is_empty(),
            "b waited, it was not silent"
        );
        // b waits in SyncGroup for the leader, longer than its session timeout.
        let mut sb = gs
            .sync(
                "g",
                &jb.member_id,
                jb.generation,
                vec![],
                t1 + Duration::from_secs(1),
            )
            .expect("b syncs");
        let t2 = t1 + Duration::from_secs(12);
        gs.heartbeat("g", &ja.member_id, ja.generation, t2)
            .expect("the leader is alive");
        assert!(
            gs.tick(t2 + Duration::from_secs(1)).is_empty(),
            "b is waiting, not silent"
        );
        let assignment = vec![(jb.member_id.clone(), b"p0".to_vec())];
        drop(
            gs.sync("g", &ja.member_id, ja.generation, assignment, t2)
                .expect("leader"),
        );
        assert_eq!(done(&mut sb), Ok(b"p0".to_vec()));
    }

    #[test]
    fn bad_joins_are_refused() {
        let mut gs = KafkaGroups::default();
        let t0 = Instant::now();
        assert_eq!(
            gs.join("", req("", "a"), t0).err(),
            Some(KafkaGroupError::InvalidGroupId)
        );
        assert_eq!(
            gs.join("g", req("nobody", "a"), t0).err(),
            Some(KafkaGroupError::UnknownMember)
        );
        let mut r = req("", "a");
        r.session_timeout = Duration::from_millis(10);
        assert!(matches!(
            gs.join("g", r, t0),
            Err(KafkaGroupError::InvalidSessionTimeout(_))
        ));
        let _a = gs.join("g", req("", "a"), t0).expect("a");
        let mut other = req("", "b");
        other.protocols = vec![("cooperative-sticky".into(), vec![])];
        assert_eq!(
            gs.join("g", other, t0).err(),
            Some(KafkaGroupError::InconsistentProtocol)
        );
    }
}
