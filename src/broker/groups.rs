//! Consumer groups with broker-side assignment, as a state machine without I/O: every method
//! takes the current time and returns what changed; the broker persists offsets and answers.
//!
//! A member joins a group for a set of topics and gets a member id (new members send an empty
//! one). Every join, leave or expiry starts a new *generation* and computes a new assignment at
//! once (range or round robin over the members subscribed to each topic). Members learn of it
//! from their next heartbeat (`rejoin`) and rejoin to get their partitions; a commit or
//! heartbeat carrying an old generation is refused with `IllegalGeneration`. A member that sends
//! no heartbeat for its session timeout is removed and its partitions move to the others.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::proto::Assignor;
use crate::units::Narrow;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub client_id: String,
    pub topics: Vec<String>,
    pub session_timeout: Duration,
    pub last_seen: Instant,
    pub assignment: Vec<(String, u32)>,
}

#[derive(Clone, Debug, Default)]
pub struct Group {
    pub generation: u32,
    pub assignor: Option<Assignor>,
    pub members: BTreeMap<String, Member>,
}

/// What a join gives the member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    pub member_id: String,
    pub generation: u32,
    /// (topic, partition) pairs assigned to the member.
    pub assignment: Vec<(String, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupError {
    UnknownMember,
    IllegalGeneration { current: u32 },
    Invalid(String),
}

/// All groups of a broker.
#[derive(Debug, Default)]
pub struct Groups {
    groups: BTreeMap<String, Group>,
    next_member: u64,
}

impl Groups {
    /// Joins (or rejoins) `member_id` (empty for a new member). `partitions(topic)` gives a
    /// topic's partition count (`None` for an unknown topic). Returns the member id, the
    /// generation and the member's assignment.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        group: &str,
        member_id: &str,
        client_id: &str,
        topics: Vec<String>,
        session_timeout: Duration,
        assignor: Assignor,
        now: Instant,
        partitions: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<Joined, GroupError> {
        if topics.is_empty() {
            return Err(GroupError::Invalid(
                "a member must subscribe to a topic".into(),
            ));
        }
        for t in &topics {
            if partitions(t).is_none() {
                return Err(GroupError::Invalid(format!("unknown topic {t:?}")));
            }
        }
        let g = self.groups.entry(group.to_string()).or_default();
        let id = if member_id.is_empty() {
            self.next_member += 1;
            format!("{client_id}-{}", self.next_member)
        } else if g.members.contains_key(member_id) {
            member_id.to_string()
        } else {
            return Err(GroupError::UnknownMember);
        };
        let changed = match g.members.get(&id) {
            Some(m) => m.topics != topics,
            None => true,
        };
        let m = g.members.entry(id.clone()).or_insert_with(|| Member {
            client_id: client_id.to_string(),
            topics: topics.clone(),
            session_timeout,
            last_seen: now,
            assignment: Vec::new(),
        });
        m.topics = topics;
        m.session_timeout = session_timeout;
        m.last_seen = now;
        if changed || g.assignor != Some(assignor) {
            g.assignor = Some(assignor);
            rebalance(g, partitions);
        }
        let assignment = g.members[&id].assignment.clone();
        Ok(Joined {
            member_id: id,
            generation: g.generation,
            assignment,
        })
    }

    /// Records a heartbeat; `Ok(true)` means the group moved on: rejoin.
    pub fn heartbeat(
        &mut self,
        group: &str,
        member_id: &str,
        generation: u32,
        now: Instant,
    ) -> Result<bool, GroupError> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or(GroupError::UnknownMember)?;
        let m = g
            .members
            .get_mut(member_id)
            .ok_or(GroupError::UnknownMember)?;
        m.last_seen = now;
        Ok(generation != g.generation)
    }

    /// Removes a member; the others are rebalanced.
    pub fn leave(
        &mut self,
        group: &str,
        member_id: &str,
        partitions: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<(), GroupError> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or(GroupError::UnknownMember)?;
        g.members
            .remove(member_id)
            .ok_or(GroupError::UnknownMember)?;
        rebalance(g, partitions);
        Ok(())
    }

    /// Removes members whose session timed out; returns `(group, member)` of each removed.
    pub fn expire(
        &mut self,
        now: Instant,
        partitions: &dyn Fn(&str) -> Option<u32>,
    ) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        for (name, g) in &mut self.groups {
            let dead: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| now.duration_since(m.last_seen) > m.session_timeout)
                .map(|(id, _)| id.clone())
                .collect();
            if dead.is_empty() {
                continue;
            }
            for id in dead {
                g.members.remove(&id);
                gone.push((name.clone(), id));
            }
            rebalance(g, partitions);
        }
        gone
    }

    /// Checks that a commit comes from a current member (or from no member at all).
    pub fn check_commit(&self, group: &str, member: Option<(&str, u32)>) -> Result<(), GroupError> {
        let Some((id, generation)) = member else {
            return Ok(());
        };
        let g = self.groups.get(group).ok_or(GroupError::UnknownMember)?;
        if !g.members.contains_key(id) {
            return Err(GroupError::UnknownMember);
        }
        if g.generation != generation {
            return Err(GroupError::IllegalGeneration {
                current: g.generation,
            });
        }
        Ok(())
    }

    pub fn get(&self, group: &str) -> Option<&Group> {
        self.groups.get(group)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.groups.keys()
    }
}

/// New generation, new assignment for every member.
fn rebalance(g: &mut Group, partitions: &dyn Fn(&str) -> Option<u32>) {
    g.generation += 1;
    for m in g.members.values_mut() {
        m.assignment.clear();
    }
    let mut topics: Vec<String> = g
        .members
        .values()
        .flat_map(|m| m.topics.iter().cloned())
        .collect();
    topics.sort();
    topics.dedup();
    let assignor = g.assignor.unwrap_or(Assignor::Range);
    let mut rr = 0usize;
    for t in topics {
        let n = partitions(&t).unwrap_or(0);
        let subscribers: Vec<String> = g
            .members
            .iter()
            .filter(|(_, m)| m.topics.contains(&t))
            .map(|(id, _)| id.clone())
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        let k = subscribers.len().sat_u32();
        for p in 0..n {
            let who = match assignor {
                // Members in id order take consecutive ranges; the first n % k get one more.
                Assignor::Range => {
                    let base = n / k;
                    let extra = n % k;
                    let cut = extra * (base + 1);
                    if p < cut {
                        p / (base + 1)
                    } else {
                        extra + (p - cut) / base.max(1)
                    }
                }
                Assignor::RoundRobin => {
                    rr += 1;
                    ((rr - 1) % subscribers.len()).sat_u32()
                }
            };
            let id = &subscribers[who as usize];
            if let Some(m) = g.members.get_mut(id) {
                m.assignment.push((t.clone(), p));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(t: &str) -> Option<u32> {
        match t {
            "a" => Some(5),
            "b" => Some(2),
            _ => None,
        }
    }

    #[test]
    fn every_partition_goes_to_exactly_one_member() {
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            let mut g = Groups::default();
            let now = Instant::now();
            let t = Duration::from_secs(10);
            let topics = vec!["a".to_string(), "b".to_string()];
            let mut ids = Vec::new();
            for i in 0..3 {
                let id = g
                    .join(
                        "g",
                        "",
                        &format!("c{i}"),
                        topics.clone(),
                        t,
                        assignor,
                        now,
                        &parts,
                    )
                    .expect("join")
                    .member_id;
                ids.push(id);
            }
            let group = g.get("g").expect("group");
            let mut all: Vec<(String, u32)> = group
                .members
                .values()
                .flat_map(|m| m.assignment.clone())
                .collect();
            all.sort();
            let want: Vec<(String, u32)> = (0..5)
                .map(|p| ("a".to_string(), p))
                .chain((0..2).map(|p| ("b".to_string(), p)))
                .collect();
            assert_eq!(all, want, "{assignor:?}");
            assert_eq!(group.generation, 3);
            // A member that stops heartbeating is removed; its partitions move.
            g.heartbeat("g", &ids[0], 3, now + Duration::from_secs(9))
                .expect("hb");
            g.heartbeat("g", &ids[1], 3, now + Duration::from_secs(9))
                .expect("hb");
            let gone = g.expire(now + Duration::from_secs(11), &parts);
            assert_eq!(gone, vec![("g".to_string(), ids[2].clone())]);
            let group = g.get("g").expect("group");
            assert_eq!(group.generation, 4);
            let n: usize = group.members.values().map(|m| m.assignment.len()).sum();
            assert_eq!(n, 7);
            assert_eq!(
                g.heartbeat("g", &ids[0], 3, now),
                Ok(true),
                "stale generation: rejoin"
            );
            assert_eq!(
                g.check_commit("g", Some((&ids[0], 3))),
                Err(GroupError::IllegalGeneration { current: 4 })
            );
        }
    }

    #[test]
    fn unknown_topics_and_members_are_refused() {
        let mut g = Groups::default();
        let now = Instant::now();
        let t = Duration::from_secs(10);
        assert!(matches!(
            g.join(
                "g",
                "",
                "c",
                vec!["zzz".into()],
                t,
                Assignor::Range,
                now,
                &parts
            ),
            Err(GroupError::Invalid(_))
        ));
        assert_eq!(
            g.join(
                "g",
                "nobody",
                "c",
                vec!["a".into()],
                t,
                Assignor::Range,
                now,
                &parts
            ),
            Err(GroupError::UnknownMember)
        );
    }
}
