//! The topology: the ring the cluster serves from, and the change of membership in progress.
//!
//! A join or a leave does not switch the ring at once. The claimant computes a *target* ring
//! with the claim algorithm and opens a *transition*: every partition whose home replica set
//! changes is *pending* until each node that gains it has received its data. Then, partition
//! by partition, the target ring takes over; when no partition is pending the target becomes
//! the committed ring and the transition ends.
//!
//! Laws (checked by the unit tests below and `tests/topology_props.rs`):
//! - **Reads follow the data.** A pending partition is served by its committed home replicas,
//!   which hold its data; a partition that is not pending by its target home replicas, which
//!   received it. `serving(p)` is the ring whose home replicas own `p` right now.
//! - **Writes reach both.** While `p` is pending, `incoming(p)` (target home replicas that are
//!   not committed home replicas) receive every write too, so a receiver that finished its copy
//!   never falls behind while it waits for the others.
//! - **One change at a time.** A transition starts only when none is open; joins and leaves
//!   asked for meanwhile wait for the next one (`begin_transition` returns `None`).
//! - **Completion is monotone.** `record_received` only removes receivers from pending
//!   partitions; a partition never becomes pending again within a transition.
//! - **A receiver gone for good does not pin the transition.** `release_receiver` takes a
//!   leaving receiver off the pending lists (a committed home replica that stays stands in for
//!   it where no other gaining node holds the partition), or abandons the transition if no
//!   partition has switched yet; a switched partition never goes back.
//! - **Leaving is explicit.** A member leaves only when asked (`request_leave`); being down
//!   changes nothing here.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::hash::{KeyHash, PartitionId};
use crate::ids::NodeId;
use crate::ring::{Member, PreferenceList, Ring, RingError, RingParams};

/// The committed ring, the transition in progress (if any), and the members asked to leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawTopology")]
pub struct Topology {
    committed: Ring,
    transition: Option<Transition>,
    leaving: BTreeSet<NodeId>,
}

/// A change of membership in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    target: Ring,
    /// Each pending partition (by index) with the gaining nodes that have not yet confirmed
    /// they hold its data. Never holds an empty list.
    pending: BTreeMap<u32, Vec<NodeId>>,
    /// Partition-receiver transfers when the transition opened.
    transfers: usize,
}

impl Transition {
    pub fn target(&self) -> &Ring {
        &self.target
    }
    /// Pending partitions with the receivers still expected, ascending.
    pub fn pending(&self) -> impl Iterator<Item = (u32, &[NodeId])> + '_ {
        self.pending.iter().map(|(p, n)| (*p, n.as_slice()))
    }
    /// Partition-receiver pairs still expected.
    pub fn pending_transfers(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }
    /// Partition-receiver pairs when the transition opened.
    pub fn transfers(&self) -> usize {
        self.transfers
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("{0} is not a member of the cluster")]
    NotMember(NodeId),
    #[error("{0} is already leaving")]
    AlreadyLeaving(NodeId),
    #[error(
        "{node} cannot leave: {remaining} members would remain, fewer than the {n} replicas each key needs"
    )]
    TooFewMembers {
        node: NodeId,
        remaining: usize,
        n: u8,
    },
    #[error(transparent)]
    Ring(#[from] RingError),
}

impl Topology {
    /// A settled topology: `ring` committed, no transition, nobody leaving.
    pub fn settled(ring: Ring) -> Topology {
        Topology {
            committed: ring,
            transition: None,
            leaving: BTreeSet::new(),
        }
    }

    pub fn committed(&self) -> &Ring {
        &self.committed
    }
    pub fn transition(&self) -> Option<&Transition> {
        self.transition.as_ref()
    }
    pub fn target(&self) -> Option<&Ring> {
        self.transition.as_ref().map(|t| &t.target)
    }
    /// Members asked to leave that are still in the committed ring.
    pub fn leaving(&self) -> &BTreeSet<NodeId> {
        &self.leaving
    }
    pub fn params(&self) -> RingParams {
        self.committed.params()
    }
    pub fn partition_of(&self, hash: KeyHash) -> PartitionId {
        self.committed.partition_of(hash)
    }

    /// Whether `partition` still waits for its data to reach a gaining node.
    pub fn is_pending(&self, partition: PartitionId) -> bool {
        self.transition
            .as_ref()
            .is_some_and(|t| t.pending.contains_key(&partition.index()))
    }

    /// The ring whose home replicas serve `partition` now.
    pub fn serving(&self, partition: PartitionId) -> &Ring {
        match &self.transition {
            Some(t) if !t.pending.contains_key(&partition.index()) => &t.target,
            _ => &self.committed,
        }
    }

    /// The preference list `partition` is served from now.
    pub fn preference_list(&self, partition: PartitionId) -> PreferenceList<'_> {
        self.serving(partition).preference_list(partition)
    }

    /// The home replicas serving `partition` now.
    pub fn home(&self, partition: PartitionId) -> Vec<NodeId> {
        self.preference_list(partition).home().cloned().collect()
    }

    /// Whether `node` is a home replica serving `partition` now.
    pub fn is_home(&self, partition: PartitionId, node: &NodeId) -> bool {
        self.serving(partition).is_home(partition, node)
    }

    /// Nodes that gain `partition` in the transition while it is pending: they receive every
    /// write besides the serving home replicas. Empty when `partition` is not pending.
    pub fn incoming(&self, partition: PartitionId) -> Vec<NodeId> {
        match &self.transition {
            Some(t) if t.pending.contains_key(&partition.index()) => t
                .target
                .preference_list(partition)
                .home()
                .filter(|n| !self.committed.is_home(partition, n))
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether `node` must hold `partition`: it serves it, or gains it in the transition.
    pub fn holds(&self, partition: PartitionId, node: &NodeId) -> bool {
        self.is_home(partition, node) || self.incoming(partition).contains(node)
    }

    /// The pending partitions whose data `node` has not yet confirmed, ascending.
    pub fn awaiting(&self, node: &NodeId) -> Vec<PartitionId> {
        let q = self.params().partitions;
        self.transition
            .iter()
            .flat_map(|t| t.pending.iter())
            .filter(|(_, receivers)| receivers.contains(node))
            .filter_map(|(p, _)| PartitionId::new(*p, q))
            .collect()
    }

    /// Every node of the committed or the target ring, sorted, each once.
    pub fn members(&self) -> Vec<&Member> {
        let mut all: BTreeMap<&NodeId, &Member> = self
            .committed
            .members()
            .iter()
            .map(|m| (&m.id, m))
            .collect();
        if let Some(t) = &self.transition {
            for m in t.target.members() {
                all.entry(&m.id).or_insert(m);
            }
        }
        all.into_values().collect()
    }

    /// Whether `node` is in the committed or the target ring.
    pub fn is_member(&self, node: &NodeId) -> bool {
        self.committed.member(node).is_some()
            || self.target().is_some_and(|t| t.member(node).is_some())
    }

    /// Partitions `node` is the first home replica (owner) of, as served now.
    pub fn partitions_owned(&self, node: &NodeId) -> usize {
        let q = self.params().partitions;
        (0..q)
            .filter_map(|i| PartitionId::new(i, q))
            .filter(|&p| self.serving(p).owner(p) == node)
            .count()
    }

    /// Records that `node` is asked to leave. It keeps serving until a transition that
    /// removes it completes.
    pub fn request_leave(&mut self, node: &NodeId) -> Result<(), TopologyError> {
        if !self.is_member(node) {
            return Err(TopologyError::NotMember(node.clone()));
        }
        if self.leaving.contains(node) {
            return Err(TopologyError::AlreadyLeaving(node.clone()));
        }
        let remaining = self
            .members()
            .iter()
            .filter(|m| m.id != *node && !self.leaving.contains(&m.id))
            .count();
        let n = self.params().n;
        if remaining < usize::from(n).max(1) {
            return Err(TopologyError::TooFewMembers {
                node: node.clone(),
                remaining,
                n,
            });
        }
        self.leaving.insert(node.clone());
        Ok(())
    }

    /// The members the next ring should have: the committed ones not leaving, plus `joiners`
    /// that are not members yet.
    fn next_members(&self, joiners: &[Member]) -> Vec<Member> {
        let mut next: Vec<Member> = self
            .committed
            .members()
            .iter()
            .filter(|m| !self.leaving.contains(&m.id))
            .cloned()
            .collect();
        for j in joiners {
            if !next.iter().any(|m| m.id == j.id) && !self.leaving.contains(&j.id) {
                next.push(j.clone());
            }
        }
        next
    }

    /// The topology after adding `joiners` and removing the leaving members, or `None` when
    /// there is nothing to change or a transition is already open. A change that moves no
    /// partition's home set is committed at once; otherwise a transition opens.
    pub fn begin_transition(&self, joiners: &[Member]) -> Result<Option<Topology>, RingError> {
        if self.transition.is_some() {
            return Ok(None);
        }
        let next = self.next_members(joiners);
        if next.as_slice() == self.committed.members()
            || (next.len() == self.committed.members().len()
                && next.iter().all(|m| self.committed.member(&m.id) == Some(m)))
        {
            return Ok(None);
        }
        let target = Ring::claim(Some(&self.committed), &next, self.params())?;
        let pending: BTreeMap<u32, Vec<NodeId>> = self
            .committed
            .home_changes(&target)
            .into_iter()
            .filter(|c| !c.gained().is_empty())
            .map(|c| (c.partition().index(), c.gained().to_vec()))
            .collect();
        let transfers = pending.values().map(Vec::len).sum();
        let mut next = Topology {
            committed: self.committed.clone(),
            transition: Some(Transition {
                target,
                pending,
                transfers,
            }),
            leaving: self.leaving.clone(),
        };
        next.finish_if_done();
        Ok(Some(next))
    }

    /// Records that `node` holds the data of `partitions` for the open transition; returns
    /// whether anything changed. Partitions that are not pending for `node` are ignored.
    pub fn record_received(&mut self, node: &NodeId, partitions: &[u32]) -> bool {
        let Some(t) = &mut self.transition else {
            return false;
        };
        let mut changed = false;
        for p in partitions {
            if let Some(receivers) = t.pending.get_mut(p) {
                let before = receivers.len();
                receivers.retain(|n| n != node);
                changed |= receivers.len() != before;
                if receivers.is_empty() {
                    t.pending.remove(p);
                }
            }
        }
        changed
    }

    /// Whether `node` is one of the receivers `partition` still waits for.
    pub fn awaits(&self, partition: PartitionId, node: &NodeId) -> bool {
        self.transition.as_ref().is_some_and(|t| {
            t.pending
                .get(&partition.index())
                .is_some_and(|receivers| receivers.contains(node))
        })
    }

    /// Stops waiting for `node`, a member asked to leave, to receive partitions of the open
    /// transition: the claimant calls it for a leaving receiver that is down (removed because
    /// it is gone for good), which would otherwise keep the transition open for ever, and with
    /// it every later join and leave. Returns whether anything changed; nothing does unless
    /// `node` is leaving and a pending receiver.
    ///
    /// - If no partition has switched yet, the transition is **abandoned**: every partition was
    ///   served by the committed ring all along, so its home replicas hold every acknowledged
    ///   write and none of them swept anything (a node sweeps only what it no longer serves).
    ///   The next `begin_transition` plans again from the committed ring, without `node`.
    /// - Otherwise the switched partitions stay switched (their old home replicas may have
    ///   swept them: the committed ring is no longer where their data is), and `node` is taken
    ///   off every pending list. A partition left with no receiver switches only if a gaining
    ///   node that is not leaving confirmed it (it copied and levelled the partition and got
    ///   every write since). If none did, a target home replica that is also a committed one and
    ///   not leaving becomes its receiver instead: it pulls the partition from the other old home
    ///   replicas and levels with them like any gaining node, so the ring it switches to has one
    ///   home replica holding everything the old ones acknowledged, not only what it happened
    ///   to get. Only when no such node exists (every target home replica of the partition is
    ///   leaving) does it switch without one; the old home replicas still keep their copies,
    ///   since a node sweeps only while every home replica is up.
    ///
    /// `node` stays listed as leaving, and a member of the target: the transition after this one
    /// removes it. Cost: O(Q * N).
    pub fn release_receiver(&mut self, node: &NodeId) -> bool {
        if !self.leaving.contains(node) {
            return false;
        }
        let Some(t) = &self.transition else {
            return false;
        };
        if !t.pending.values().any(|receivers| receivers.contains(node)) {
            return false;
        }
        let gains: BTreeMap<u32, Vec<NodeId>> = self
            .committed
            .home_changes(&t.target)
            .into_iter()
            .filter(|c| !c.gained().is_empty())
            .map(|c| (c.partition().index(), c.gained().to_vec()))
            .collect();
        if gains.keys().all(|p| t.pending.contains_key(p)) {
            self.transition = None;
            let committed = &self.committed;
            self.leaving.retain(|n| committed.member(n).is_some());
            return true;
        }
        let q = self.params().partitions;
        let committed = &self.committed;
        let leaving = &self.leaving;
        let t = self.transition.as_mut().expect("checked above");
        let target = &t.target;
        t.pending.retain(|p, receivers| {
            receivers.retain(|n| n != node);
            if !receivers.is_empty() {
                return true;
            }
            let confirmed = gains
                .get(p)
                .is_some_and(|g| g.iter().any(|n| !leaving.contains(n)));
            if confirmed {
                return false;
            }
            let partition = PartitionId::new(*p, q).expect("pending partitions are below Q");
            match target
                .preference_list(partition)
                .home()
                .find(|n| committed.is_home(partition, n) && !leaving.contains(*n))
            {
                Some(stand_in) => {
                    receivers.push(stand_in.clone());
                    true
                }
                None => false,
            }
        });
        true
    }

    /// Ends the transition if no partition is pending: the target becomes the committed ring
    /// and members that left are no longer listed as leaving. Returns whether it ended.
    pub fn finish_if_done(&mut self) -> bool {
        if !self
            .transition
            .as_ref()
            .is_some_and(|t| t.pending.is_empty())
        {
            return false;
        }
        let t = self.transition.take().expect("checked above");
        self.committed = t.target;
        let committed = &self.committed;
        self.leaving.retain(|n| committed.member(n).is_some());
        true
    }
}

/// The wire form, checked on the way in: a peer's malformed topology is an error.
#[derive(Deserialize)]
struct RawTopology {
    committed: Ring,
    transition: Option<Transition>,
    leaving: BTreeSet<NodeId>,
}

impl TryFrom<RawTopology> for Topology {
    type Error = RingError;
    fn try_from(raw: RawTopology) -> Result<Topology, RingError> {
        if let Some(t) = &raw.transition {
            if t.target.params() != raw.committed.params() {
                return Err(RingError::ParamsChanged {
                    previous: raw.committed.params(),
                    next: t.target.params(),
                });
            }
            let q = raw.committed.params().partitions;
            for (p, receivers) in &t.pending {
                if *p >= q || receivers.is_empty() {
                    return Err(RingError::Invalid(format!(
                        "pending partition {p} is out of range or has no receiver"
                    )));
                }
                if let Some(n) = receivers.iter().find(|n| t.target.member(n).is_none()) {
                    return Err(RingError::Invalid(format!(
                        "pending receiver {n} is not a member of the target ring"
                    )));
                }
            }
        }
        Ok(Topology {
            committed: raw.committed,
            transition: raw.transition,
            leaving: raw.leaving,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, zone: &str) -> Member {
        Member {
            id: NodeId::new(id).unwrap(),
            weight: 1,
            zone: zone.into(),
        }
    }

    fn three() -> Topology {
        let params = RingParams {
            partitions: 64,
            n: 3,
        };
        let members = [member("a", "z"), member("b", "z"), member("c", "z")];
        Topology::settled(Ring::claim(None, &members, params).unwrap())
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn a_join_serves_from_the_committed_ring_until_the_data_arrived() {
        let t = three();
        let next = t.begin_transition(&[member("d", "z")]).unwrap().unwrap();
        let awaiting = next.awaiting(&id("d"));
        assert!(!awaiting.is_empty());
        let p = awaiting[0];
        assert!(next.is_pending(p));
        assert!(!next.is_home(p, &id("d")), "reads must not go to d yet");
        assert_eq!(next.incoming(p), vec![id("d")], "writes must reach d");
        assert!(next.holds(p, &id("d")));

        let mut done = next.clone();
        assert!(done.record_received(&id("d"), &[p.index()]));
        assert!(!done.is_pending(p));
        assert!(done.is_home(p, &id("d")), "after the copy, d serves p");
        assert!(done.incoming(p).is_empty());
        assert!(!done.record_received(&id("d"), &[p.index()]), "idempotent");
    }

    #[test]
    fn the_transition_ends_when_every_partition_arrived() {
        let t = three();
        let mut next = t.begin_transition(&[member("d", "z")]).unwrap().unwrap();
        assert!(
            next.begin_transition(&[member("e", "z")])
                .unwrap()
                .is_none(),
            "one change at a time"
        );
        let all: Vec<u32> = next.awaiting(&id("d")).iter().map(|p| p.index()).collect();
        next.record_received(&id("d"), &all);
        assert!(next.finish_if_done());
        assert!(next.transition().is_none());
        assert!(next.committed().member(&id("d")).is_some());
        assert_eq!(next.partitions_owned(&id("d")), 16);
    }

    #[test]
    fn a_leave_hands_every_partition_over_then_drops_the_member() {
        let mut t = three()
            .begin_transition(&[member("d", "z")])
            .unwrap()
            .unwrap();
        let all: Vec<u32> = t.awaiting(&id("d")).iter().map(|p| p.index()).collect();
        t.record_received(&id("d"), &all);
        t.finish_if_done();

        t.request_leave(&id("b")).unwrap();
        assert_eq!(
            t.request_leave(&id("b")),
            Err(TopologyError::AlreadyLeaving(id("b")))
        );
        assert!(
            matches!(
                t.request_leave(&id("c")),
                Err(TopologyError::TooFewMembers { .. })
            ),
            "two members cannot hold three replicas"
        );
        let mut next = t.begin_transition(&[]).unwrap().unwrap();
        assert!(
            next.committed().member(&id("b")).is_some(),
            "b serves until handed over"
        );
        for n in ["a", "c", "d"] {
            let ps: Vec<u32> = next.awaiting(&id(n)).iter().map(|p| p.index()).collect();
            next.record_received(&id(n), &ps);
        }
        assert!(next.finish_if_done());
        assert_eq!(next.partitions_owned(&id("b")), 0);
        assert!(!next.is_member(&id("b")));
        assert!(next.leaving().is_empty());
    }

    /// Every partition's serving home replicas, in partition order.
    fn serving_homes(t: &Topology) -> Vec<Vec<NodeId>> {
        let q = t.params().partitions;
        (0..q)
            .map(|i| t.home(PartitionId::new(i, q).unwrap()))
            .collect()
    }

    fn confirm_all(t: &mut Topology, node: &str) {
        let all: Vec<u32> = t.awaiting(&id(node)).iter().map(|p| p.index()).collect();
        t.record_received(&id(node), &all);
    }

    /// The reviewer's probe: a gaining node dies for good mid-transition and is removed with
    /// a leave. Before `release_receiver`, nothing took it off the pending lists: the
    /// transition never finished and no other change could ever begin.
    #[test]
    fn a_receiver_removed_mid_transition_no_longer_pins_it() {
        let mut t = three()
            .begin_transition(&[member("d", "z"), member("e", "z")])
            .unwrap()
            .unwrap();
        confirm_all(&mut t, "e");
        let awaited = t.awaiting(&id("d"));
        let (confirmed, lost) = awaited.split_at(awaited.len() / 2);
        let confirmed: Vec<u32> = confirmed.iter().map(|p| p.index()).collect();
        t.record_received(&id("d"), &confirmed);
        t.request_leave(&id("d")).unwrap();
        assert!(!t.finish_if_done());
        assert!(t.begin_transition(&[]).unwrap().is_none());
        assert!(!t.awaiting(&id("d")).is_empty(), "pinned by d");

        let before = t.clone();
        assert!(t.release_receiver(&id("d")));
        assert!(!t.release_receiver(&id("d")), "idempotent");
        assert!(t.awaiting(&id("d")).is_empty());
        assert!(t.transition().is_some(), "some partitions had switched");
        let q = t.params().partitions;
        for i in 0..q {
            let p = PartitionId::new(i, q).unwrap();
            if !before.is_pending(p) {
                assert_eq!(
                    t.home(p),
                    before.home(p),
                    "a switched partition stays switched"
                );
            }
        }
        for p in lost {
            match t.transition().unwrap().pending.get(&p.index()) {
                // Switched: e, which is not leaving, gained it and confirmed it.
                None => assert!(
                    t.home(*p).contains(&id("e")),
                    "partition {} switched with no gaining node holding it",
                    p.index()
                ),
                // Waits for an old home replica that stays, to pull and level it.
                Some(receivers) => {
                    assert_eq!(receivers.len(), 1);
                    assert!(before.committed().is_home(*p, &receivers[0]));
                    assert!(before.target().unwrap().is_home(*p, &receivers[0]));
                    assert_eq!(t.home(*p), before.home(*p), "still served by the old homes");
                }
            }
        }
        for n in ["a", "b", "c"] {
            confirm_all(&mut t, n);
        }
        assert!(t.finish_if_done(), "the transition ends without d");
        assert!(
            t.leaving().contains(&id("d")),
            "d is removed by the next one"
        );
        let mut next = t
            .begin_transition(&[])
            .unwrap()
            .expect("d's removal begins");
        assert!(next.awaiting(&id("d")).is_empty());
        for n in ["a", "b", "c", "e"] {
            confirm_all(&mut next, n);
        }
        assert!(next.finish_if_done());
        assert!(!next.is_member(&id("d")));
        assert!(next.leaving().is_empty());
        assert!(
            next.begin_transition(&[member("f", "z")])
                .unwrap()
                .is_some(),
            "a new join begins"
        );
    }

    /// A lone joiner that confirmed part of its partitions and died: each partition it still
    /// awaited now waits for a committed home replica that stays, not for nobody.
    #[test]
    fn a_lone_joiner_removed_mid_transition_hands_its_partitions_to_stand_ins() {
        let mut t = three()
            .begin_transition(&[member("d", "z")])
            .unwrap()
            .unwrap();
        let awaited = t.awaiting(&id("d"));
        t.record_received(&id("d"), &[awaited[0].index()]);
        t.request_leave(&id("d")).unwrap();
        let before = serving_homes(&t);
        assert!(t.release_receiver(&id("d")));
        assert_eq!(serving_homes(&t), before, "nothing switches at once");
        for p in &awaited[1..] {
            let receivers: Vec<NodeId> = t
                .transition()
                .unwrap()
                .pending
                .get(&p.index())
                .unwrap()
                .clone();
            assert_eq!(receivers.len(), 1);
            assert_ne!(receivers[0], id("d"));
            assert!(t.committed().is_home(*p, &receivers[0]));
        }
        for n in ["a", "b", "c"] {
            confirm_all(&mut t, n);
        }
        assert!(t.finish_if_done());
        let mut next = t.begin_transition(&[]).unwrap().unwrap();
        for n in ["a", "b", "c"] {
            confirm_all(&mut next, n);
        }
        assert!(next.finish_if_done());
        assert!(!next.is_member(&id("d")));
    }

    /// Nothing had switched: the transition is abandoned, every partition stays with its
    /// committed home replicas (which never swept it), and the joiner is forgotten.
    #[test]
    fn a_receiver_removed_before_anything_switched_abandons_the_transition() {
        let mut t = three()
            .begin_transition(&[member("d", "z")])
            .unwrap()
            .unwrap();
        let before = serving_homes(&t);
        assert!(
            !t.release_receiver(&id("d")),
            "only a leaving node is released"
        );
        t.request_leave(&id("d")).unwrap();
        assert!(t.release_receiver(&id("d")));
        assert!(t.transition().is_none());
        assert_eq!(serving_homes(&t), before);
        assert_eq!(t, three(), "back to the committed ring, nobody leaving");
        assert!(
            t.begin_transition(&[member("e", "z")]).unwrap().is_some(),
            "a new join begins"
        );
    }

    #[test]
    fn nothing_to_change_opens_no_transition() {
        let t = three();
        assert!(t.begin_transition(&[]).unwrap().is_none());
        assert!(t.begin_transition(&[member("a", "z")]).unwrap().is_none());
        assert_eq!(
            t.clone().request_leave(&id("x")),
            Err(TopologyError::NotMember(id("x")))
        );
    }

    #[test]
    fn the_wire_form_is_checked() {
        let t = three()
            .begin_transition(&[member("d", "z")])
            .unwrap()
            .unwrap();
        let bytes = postcard::to_allocvec(&t).unwrap();
        let back: Topology = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, t);

        #[derive(Serialize)]
        struct Forged {
            committed: Ring,
            transition: Option<Transition>,
            leaving: BTreeSet<NodeId>,
        }
        let target = t.target().unwrap().clone();
        for pending in [
            BTreeMap::from([(64u32, vec![id("d")])]),
            BTreeMap::from([(1u32, vec![])]),
            BTreeMap::from([(1u32, vec![id("stranger")])]),
        ] {
            let forged = Forged {
                committed: t.committed().clone(),
                transition: Some(Transition {
                    target: target.clone(),
                    pending,
                    transfers: 1,
                }),
                leaving: BTreeSet::new(),
            };
            let bytes = postcard::to_allocvec(&forged).unwrap();
            assert!(postcard::from_bytes::<Topology>(&bytes).is_err());
        }
    }
}
