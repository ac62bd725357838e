//! The ring: Q equal partitions of the MD5 space, the claim algorithm that assigns them to
//! nodes, and preference lists.
//!
//! Laws this module keeps (checked by `tests/ring_props.rs`):
//! - **Determinism.** `Ring::claim` is a pure function of its inputs; the order of `members`
//!   does not matter (members are kept sorted by id) and nothing iterates a hash map.
//! - **Balance.** Every member owns exactly its largest-remainder quota of the Q partitions:
//!   `floor(Q*w/W)` or one more, so it is within one partition of its exact weighted share.
//! - **Spread.** Any N consecutive partitions are owned by min(N, members) distinct nodes,
//!   and by N distinct zones when there are at least N zones, wherever the quotas allow it:
//!   always in a fresh ring, best effort after incremental claims (repair has a budget);
//!   `Ring::spread_violations` counts the windows where it does not hold.
//! - **Minimal movement.** Claiming from a previous ring first keeps every partition whose owner
//!   stays within quota, gives a leaver's partitions to nodes below quota, then moves only
//!   the surplus of nodes above quota to nodes below it. Constraint repair afterwards may
//!   move at most `moved / REPAIR_BUDGET_DIVISOR` more partitions.
//! - **Home replicas.** A partition's home replicas are the first min(N, members) distinct nodes
//!   clockwise from it, taking first one node per zone not yet taken, so that they span
//!   min(N, zones) distinct zones. They are precomputed, so a lookup is an index.
//! - **Validated wire form.** A serialized ring is its params, its members sorted by id and one
//!   u16 owner index per partition; deserializing checks all of it and rebuilds the tables, so
//!   a malformed ring from a peer is an error, never a panic.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::constants::{MAX_N, MAX_PARTITIONS};
use crate::hash::{KeyHash, PartitionId};
use crate::ids::NodeId;

/// Largest weight a member may have. Weights are relative capacities; 1000 allows fine
/// ratios while keeping `Q * weight` sums far from overflow.
pub const MAX_WEIGHT: u32 = 1000;
/// Most members a ring may have: owners are stored as u16 indexes and `u16::MAX` marks an
/// unassigned partition while claiming.
pub const MAX_MEMBERS: usize = u16::MAX as usize;
/// Longest zone name, in bytes.
pub const MAX_ZONE_BYTES: usize = 64;
/// Constraint repair after an incremental claim may move at most one extra partition per this
/// many partitions moved for balance: spread is worth a little data movement, not a lot.
pub const REPAIR_BUDGET_DIVISOR: usize = 20;
/// Passes of the swap-based repair over the ring.
const REPAIR_ROUNDS: usize = 3;
/// Swap partners examined per conflicting partition during repair.
const SWAP_SEARCH_LIMIT: usize = 256;
/// Total swap evaluations of a repair, per partition of the ring.
const REPAIR_EVALUATIONS_PER_PARTITION: usize = 16;
/// Owner index of a partition not yet assigned during a claim.
const UNASSIGNED: u16 = u16::MAX;
/// Conflict score of a partition near another of the same node (a zone clash scores 1):
/// two replicas on one node are worse than two in one zone.
const NODE_CLASH_SCORE: u32 = 2;

/// A member as the claim algorithm sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Relative capacity, 1..=MAX_WEIGHT.
    pub weight: u32,
    /// Failure domain.
    pub zone: String,
}

/// Q and N, fixed when a cluster is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingParams {
    pub partitions: u32,
    pub n: u8,
}

impl RingParams {
    /// Checks that Q is a power of two in 1..=MAX_PARTITIONS and N is in 1..=MAX_N.
    pub fn validate(&self) -> Result<(), RingError> {
        if !self.partitions.is_power_of_two() || self.partitions > MAX_PARTITIONS {
            return Err(RingError::Invalid(format!(
                "partitions must be a power of two in 1..={MAX_PARTITIONS}, got {}",
                self.partitions
            )));
        }
        if self.n == 0 || self.n > MAX_N {
            return Err(RingError::Invalid(format!(
                "n must be in 1..={MAX_N}, got {}",
                self.n
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("invalid ring: {0}")]
    Invalid(String),
    #[error("a ring needs at least one member")]
    NoMembers,
    #[error("a ring holds at most {MAX_MEMBERS} members, got {0}")]
    TooManyMembers(usize),
    #[error("member {0} appears more than once")]
    DuplicateMember(NodeId),
    #[error("member {id} has weight {weight}, must be in 1..={MAX_WEIGHT}")]
    InvalidWeight { id: NodeId, weight: u32 },
    #[error("member {0} has a zone name longer than {MAX_ZONE_BYTES} bytes")]
    InvalidZone(NodeId),
    #[error("ring params changed from {previous:?} to {next:?}; Q and N are fixed per cluster")]
    ParamsChanged {
        previous: RingParams,
        next: RingParams,
    },
}

/// The partition table, with each partition's home replicas precomputed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRing")]
pub struct Ring {
    params: RingParams,
    /// Sorted by id; owners and home lists index into it.
    members: Vec<Member>,
    owners: Vec<u16>,
    /// Zone index of each member; zones are numbered in name order.
    zone_of: Vec<u16>,
    zone_count: usize,
    /// `home_len` member indexes per partition.
    homes: Vec<u16>,
    home_len: usize,
}

/// What a partition's home replica set gains and loses from one ring to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeChange {
    partition: PartitionId,
    gained: Vec<NodeId>,
    lost: Vec<NodeId>,
}

impl HomeChange {
    pub fn partition(&self) -> PartitionId {
        self.partition
    }
    /// Nodes that are home replicas in the next ring but were not before.
    pub fn gained(&self) -> &[NodeId] {
        &self.gained
    }
    /// Nodes that were home replicas but are not in the next ring.
    pub fn lost(&self) -> &[NodeId] {
        &self.lost
    }
}

impl Ring {
    /// Assigns partitions to `members`, moving as little as possible from `previous`.
    pub fn claim(
        previous: Option<&Ring>,
        members: &[Member],
        params: RingParams,
    ) -> Result<Ring, RingError> {
        params.validate()?;
        let mut members = members.to_vec();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        validate_members(&members)?;
        let (zone_of, zone_count) = zone_indexes(&members);
        let quotas = quotas(&members, params.partitions);
        let spread = Spread::new(params.n, members.len(), zone_count);
        let mut table = Table {
            owners: Vec::new(),
            zone_of: &zone_of,
            spread,
        };
        match previous {
            None => {
                table.owners = stripe(&zone_of, zone_count, &quotas, spread);
                repair(&mut table, None, usize::MAX);
                // The stripe spreads every node evenly but is greedy: near the ring's end it
                // can be left with a heavy zone it cannot place apart, and swaps cannot undo
                // that. The column layout always keeps the spread when the quotas allow it.
                if let Some(columns) = columns(&zone_of, &quotas, spread) {
                    let params_n = usize::from(params.n);
                    let count = |owners: &[u16]| {
                        violations(owners, &zone_of, zone_count, params_n, members.len())
                    };
                    if count(&columns) < count(&table.owners) {
                        table.owners = columns;
                    }
                }
            }
            Some(prev) => {
                if prev.params != params {
                    return Err(RingError::ParamsChanged {
                        previous: prev.params,
                        next: params,
                    });
                }
                let kept = carry_over(prev, &members);
                table.owners = kept.clone();
                rebalance(&mut table, &quotas);
                let moved = table
                    .owners
                    .iter()
                    .zip(&kept)
                    .filter(|(a, b)| a != b)
                    .count();
                repair(&mut table, Some(&kept), moved / REPAIR_BUDGET_DIVISOR);
            }
        }
        let owners = table.owners;
        Ok(Ring::from_parts(
            params, members, owners, zone_of, zone_count,
        ))
    }

    /// Builds the derived tables; the parts must already be valid.
    fn from_parts(
        params: RingParams,
        members: Vec<Member>,
        owners: Vec<u16>,
        zone_of: Vec<u16>,
        zone_count: usize,
    ) -> Ring {
        let home_len = usize::from(params.n).min(members.len());
        let homes = build_homes(&owners, &zone_of, zone_count, home_len);
        Ring {
            params,
            members,
            owners,
            zone_of,
            zone_count,
            homes,
            home_len,
        }
    }

    pub fn params(&self) -> RingParams {
        self.params
    }
    /// The members, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.index_of(id).map(|i| &self.members[i])
    }
    fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.members.binary_search_by(|m| m.id.cmp(id)).ok()
    }
    pub fn owner(&self, partition: PartitionId) -> &NodeId {
        &self.members[usize::from(self.owners[partition.index() as usize])].id
    }
    /// Every partition with its owner, clockwise from partition 0.
    pub fn owners(&self) -> impl Iterator<Item = (PartitionId, &NodeId)> + '_ {
        self.owners.iter().enumerate().map(|(i, &o)| {
            (
                PartitionId::new(i as u32, self.params.partitions).expect("index < Q"),
                &self.members[usize::from(o)].id,
            )
        })
    }
    pub fn partition_of(&self, hash: KeyHash) -> PartitionId {
        PartitionId::of(hash, self.params.partitions)
    }
    /// Home replicas (first N distinct nodes clockwise from the partition) then fallbacks.
    pub fn preference_list(&self, partition: PartitionId) -> PreferenceList<'_> {
        assert!(
            partition.index() < self.params.partitions,
            "partition of another ring"
        );
        PreferenceList {
            ring: self,
            partition,
        }
    }
    fn home_indexes(&self, partition: PartitionId) -> &[u16] {
        let start = partition.index() as usize * self.home_len;
        &self.homes[start..start + self.home_len]
    }
    /// Whether `node` is one of the home replicas of `partition`.
    pub fn is_home(&self, partition: PartitionId, node: &NodeId) -> bool {
        match self.index_of(node) {
            Some(i) => self.home_indexes(partition).contains(&(i as u16)),
            None => false,
        }
    }
    pub fn partitions_owned(&self, node: &NodeId) -> usize {
        match self.index_of(node) {
            Some(i) => self.owners.iter().filter(|&&o| usize::from(o) == i).count(),
            None => 0,
        }
    }

    /// Windows of N consecutive partitions (one starting at each partition, wrapping around)
    /// holding fewer than min(N, members) distinct nodes, or fewer than N distinct zones when
    /// there are at least N zones.
    pub fn spread_violations(&self) -> usize {
        violations(
            &self.owners,
            &self.zone_of,
            self.zone_count,
            usize::from(self.params.n),
            self.members.len(),
        )
    }

    /// For each partition whose home replica set differs in `next`: who gains and who loses
    /// it. Partitions are those of `next`; Q is fixed per cluster, but if it differs, each
    /// partition of `next` is compared with the partition of `self` holding its first hash.
    pub fn home_changes(&self, next: &Ring) -> Vec<HomeChange> {
        let q_next = next.params.partitions;
        let mut changes = Vec::new();
        for index in 0..q_next {
            let partition = PartitionId::new(index, q_next).expect("index < Q");
            let before = self.partition_of(partition.first_hash(q_next));
            let old: Vec<&NodeId> = self.preference_list(before).home().collect();
            let new: Vec<&NodeId> = next.preference_list(partition).home().collect();
            let gained: Vec<NodeId> = new
                .iter()
                .filter(|n| !old.contains(n))
                .map(|&n| n.clone())
                .collect();
            let lost: Vec<NodeId> = old
                .iter()
                .filter(|n| !new.contains(n))
                .map(|&n| n.clone())
                .collect();
            if !gained.is_empty() || !lost.is_empty() {
                changes.push(HomeChange {
                    partition,
                    gained,
                    lost,
                });
            }
        }
        changes
    }
}

/// A partition's preference list: its home replicas, then every other member as fallbacks.
#[derive(Debug, Clone)]
pub struct PreferenceList<'r> {
    ring: &'r Ring,
    partition: PartitionId,
}

impl<'r> PreferenceList<'r> {
    pub fn partition(&self) -> PartitionId {
        self.partition
    }
    /// The first min(N, members) distinct nodes, one per zone first (see the module laws).
    pub fn home(&self) -> impl Iterator<Item = &'r NodeId> + '_ {
        let ring = self.ring;
        ring.home_indexes(self.partition)
            .iter()
            .map(move |&i| &ring.members[usize::from(i)].id)
    }
    /// Every other member, in clockwise ring order of first ownership; members owning no
    /// partition come last, in id order. Computed lazily by walking the ring; the walk stops
    /// once every member is found (with no member left beyond the home replicas, as on a
    /// cluster of N nodes, it visits nothing instead of all Q owners on every request).
    pub fn fallbacks(&self) -> impl Iterator<Item = &'r NodeId> + '_ {
        let ring = self.ring;
        let mut seen = vec![false; ring.members.len()];
        for &h in ring.home_indexes(self.partition) {
            seen[usize::from(h)] = true;
        }
        let others = seen.iter().filter(|&&s| !s).count();
        let (before, from_start) = ring.owners.split_at(self.partition.index() as usize);
        let walk = from_start.iter().chain(before).map(|&o| usize::from(o));
        walk.chain(0..ring.members.len())
            .filter(move |&i| !std::mem::replace(&mut seen[i], true))
            .take(others)
            .map(move |i| &ring.members[i].id)
    }
}

/// The wire form of a ring: what is needed to rebuild it, nothing derived.
#[derive(Deserialize)]
struct RawRing {
    params: RingParams,
    members: Vec<Member>,
    owners: Vec<u16>,
}

/// `RawRing` borrowed, so serializing does not clone the ring.
#[derive(Serialize)]
struct RawRingRef<'a> {
    params: RingParams,
    members: &'a [Member],
    owners: &'a [u16],
}

impl Serialize for Ring {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawRingRef {
            params: self.params,
            members: &self.members,
            owners: &self.owners,
        }
        .serialize(s)
    }
}

impl TryFrom<RawRing> for Ring {
    type Error = RingError;
    fn try_from(raw: RawRing) -> Result<Ring, RingError> {
        raw.params.validate()?;
        validate_members(&raw.members)?;
        if raw.members.windows(2).any(|w| w[0].id >= w[1].id) {
            return Err(RingError::Invalid("members are not sorted by id".into()));
        }
        if raw.owners.len() != raw.params.partitions as usize {
            return Err(RingError::Invalid(format!(
                "{} owners for {} partitions",
                raw.owners.len(),
                raw.params.partitions
            )));
        }
        if let Some(bad) = raw
            .owners
            .iter()
            .find(|&&o| usize::from(o) >= raw.members.len())
        {
            return Err(RingError::Invalid(format!(
                "owner index {bad} out of range"
            )));
        }
        let (zone_of, zone_count) = zone_indexes(&raw.members);
        Ok(Ring::from_parts(
            raw.params,
            raw.members,
            raw.owners,
            zone_of,
            zone_count,
        ))
    }
}

/// Checks count, weights, zone names and (on sorted input) uniqueness of ids.
fn validate_members(members: &[Member]) -> Result<(), RingError> {
    if members.is_empty() {
        return Err(RingError::NoMembers);
    }
    if members.len() > MAX_MEMBERS {
        return Err(RingError::TooManyMembers(members.len()));
    }
    if let Some(w) = members.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(RingError::DuplicateMember(w[0].id.clone()));
    }
    for m in members {
        if !(1..=MAX_WEIGHT).contains(&m.weight) {
            return Err(RingError::InvalidWeight {
                id: m.id.clone(),
                weight: m.weight,
            });
        }
        if m.zone.len() > MAX_ZONE_BYTES {
            return Err(RingError::InvalidZone(m.id.clone()));
        }
    }
    // Sorted input makes duplicates adjacent; unsorted input (from the wire) is rejected by
    // the caller's sortedness check, which also implies uniqueness.
    Ok(())
}

/// Zone index per member (zones numbered in name order) and the number of zones.
fn zone_indexes(members: &[Member]) -> (Vec<u16>, usize) {
    let names: BTreeMap<&str, u16> = BTreeMap::new();
    let mut names = names;
    for m in members {
        let next = names.len() as u16;
        names.entry(m.zone.as_str()).or_insert(next);
    }
    // Renumber in name order so the numbering does not depend on member order.
    let order: BTreeMap<&str, u16> = names
        .keys()
        .enumerate()
        .map(|(i, &z)| (z, i as u16))
        .collect();
    let zone_of = members.iter().map(|m| order[m.zone.as_str()]).collect();
    (zone_of, order.len())
}

/// Largest-remainder quotas: `floor(Q*w/W)` each, plus one for the largest remainders
/// (ties to the smaller id, i.e. the smaller index, as members are sorted by id).
fn quotas(members: &[Member], partitions: u32) -> Vec<u32> {
    let total: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
    let exact: Vec<u64> = members
        .iter()
        .map(|m| u64::from(partitions) * u64::from(m.weight))
        .collect();
    let mut quotas: Vec<u32> = exact.iter().map(|e| (e / total) as u32).collect();
    let assigned: u64 = quotas.iter().map(|&q| u64::from(q)).sum();
    let mut by_remainder: Vec<usize> = (0..members.len()).collect();
    by_remainder.sort_by_key(|&i| (std::cmp::Reverse(exact[i] % total), i));
    for &i in by_remainder
        .iter()
        .take((u64::from(partitions) - assigned) as usize)
    {
        quotas[i] += 1;
    }
    quotas
}

/// Distances within which two partitions should not share a node or a zone.
#[derive(Debug, Clone, Copy)]
struct Spread {
    node_distance: usize,
    /// 0 when there are fewer zones than N: zones are then spread by the home-list walk.
    zone_distance: usize,
}

impl Spread {
    fn new(n: u8, members: usize, zones: usize) -> Spread {
        let n = usize::from(n);
        let zone_distance = if zones >= n { n } else { 0 };
        Spread {
            node_distance: n.min(members),
            zone_distance,
        }
    }
    fn reach(&self) -> usize {
        self.node_distance.max(self.zone_distance)
    }
}

/// An owner table under construction.
struct Table<'a> {
    owners: Vec<u16>,
    zone_of: &'a [u16],
    spread: Spread,
}

impl Table<'_> {
    /// How badly `node` would clash with the assigned partitions near `p` (not counting `p`).
    fn conflict(&self, p: usize, node: u16) -> u32 {
        let q = self.owners.len();
        let zone = self.zone_of[usize::from(node)];
        let mut score = 0;
        for delta in 1..self.spread.reach().min(q) {
            for other in [(p + delta) % q, (p + q - delta) % q] {
                let o = self.owners[other];
                if o == UNASSIGNED {
                    continue;
                }
                if o == node && delta < self.spread.node_distance {
                    score += NODE_CLASH_SCORE;
                }
                if self.zone_of[usize::from(o)] == zone && delta < self.spread.zone_distance {
                    score += 1;
                }
            }
        }
        score
    }

    /// Cyclic distance between two partitions.
    fn distance(&self, a: usize, b: usize) -> usize {
        let q = self.owners.len();
        let d = a.abs_diff(b);
        d.min(q - d)
    }
}

/// A fraction `num/den`, ordered by value: the ideal position of an item's next use in
/// stride scheduling, `(2k+1)/(2*count)` of the ring (the common factor is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deadline {
    num: u64,
    den: u64,
}

impl Deadline {
    fn after(used: u64, count: u64) -> Deadline {
        Deadline {
            num: 2 * used + 1,
            den: count,
        }
    }
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> Ordering {
        (u128::from(self.num) * u128::from(other.den))
            .cmp(&(u128::from(other.num) * u128::from(self.den)))
    }
}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Stride-scheduling queues for the fresh layout: zones by their next ideal position, and
/// within each zone its nodes by theirs. Only items with quota left are queued.
struct Strides {
    zone_total: Vec<u64>,
    zone_used: Vec<u64>,
    node_quota: Vec<u64>,
    node_used: Vec<u64>,
    zones: BTreeSet<(Deadline, u16)>,
    nodes: Vec<BTreeSet<(Deadline, u16)>>,
}

impl Strides {
    fn new(zone_of: &[u16], zone_count: usize, quotas: &[u32]) -> Strides {
        let mut s = Strides {
            zone_total: vec![0; zone_count],
            zone_used: vec![0; zone_count],
            node_quota: quotas.iter().map(|&q| u64::from(q)).collect(),
            node_used: vec![0; quotas.len()],
            zones: BTreeSet::new(),
            nodes: vec![BTreeSet::new(); zone_count],
        };
        for (node, &quota) in quotas.iter().enumerate() {
            let zone = usize::from(zone_of[node]);
            s.zone_total[zone] += u64::from(quota);
            if quota > 0 {
                s.nodes[zone].insert((Deadline::after(0, u64::from(quota)), node as u16));
            }
        }
        for (zone, &total) in s.zone_total.iter().enumerate() {
            if total > 0 {
                s.zones.insert((Deadline::after(0, total), zone as u16));
            }
        }
        s
    }

    /// The earliest-due node, preferring zones then nodes that `allowed` accepts.
    fn pick(&self, zone_ok: impl Fn(u16) -> bool, node_ok: impl Fn(u16) -> bool) -> Option<u16> {
        self.zones
            .iter()
            .filter(|(_, z)| zone_ok(*z))
            .find_map(|(_, z)| {
                self.nodes[usize::from(*z)]
                    .iter()
                    .map(|&(_, n)| n)
                    .find(|&n| node_ok(n))
            })
    }

    fn deadline_of(&self, zone: u16, node: u16) -> (Deadline, Deadline) {
        let (z, n) = (usize::from(zone), usize::from(node));
        (
            Deadline::after(self.zone_used[z], self.zone_total[z]),
            Deadline::after(self.node_used[n], self.node_quota[n]),
        )
    }

    fn remaining(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .flat_map(|set| set.iter().map(|&(_, n)| n))
    }

    fn consume(&mut self, zone: u16, node: u16) {
        let (zd, nd) = self.deadline_of(zone, node);
        let (z, n) = (usize::from(zone), usize::from(node));
        self.zones.remove(&(zd, zone));
        self.nodes[z].remove(&(nd, node));
        self.zone_used[z] += 1;
        self.node_used[n] += 1;
        let (zd, nd) = self.deadline_of(zone, node);
        if self.zone_used[z] < self.zone_total[z] {
            self.zones.insert((zd, zone));
        }
        if self.node_used[n] < self.node_quota[n] {
            self.nodes[z].insert((nd, node));
        }
    }
}

/// Windows of `n` consecutive partitions of `owners` breaking the spread (see
/// `Ring::spread_violations`).
fn violations(
    owners: &[u16],
    zone_of: &[u16],
    zone_count: usize,
    n: usize,
    members: usize,
) -> usize {
    let q = owners.len();
    let window = n.min(q);
    let want_nodes = window.min(members);
    let want_zones = if zone_count >= n { window } else { 0 };
    (0..q)
        .filter(|&start| {
            let mut nodes: Vec<u16> = (0..window).map(|k| owners[(start + k) % q]).collect();
            let mut zones: Vec<u16> = nodes.iter().map(|&o| zone_of[usize::from(o)]).collect();
            nodes.sort_unstable();
            nodes.dedup();
            zones.sort_unstable();
            zones.dedup();
            nodes.len() < want_nodes || zones.len() < want_zones
        })
        .count()
}

/// A fresh layout that keeps the spread exactly whenever every zone (or, without the zone
/// constraint, every node) has at most `r = floor(Q/d)` partitions, `d` being the spread
/// distance; `None` when some has more, or when there is nothing to spread.
///
/// The ring is cut into `r` blocks of `floor(Q/r)` or one more partitions (the longer ones
/// first), each at least `d` long. Slots are visited column by column: offset 0 of every
/// block, then offset 1 of every block, and so on; zones, largest first, take consecutive
/// runs of that order. A run of at most `r` slots meets each block at most once, so two of
/// its slots in one column are whole blocks apart; a run that crosses into the next column
/// is shorter than `r` (zones of exactly `r` come first and fill whole columns), so its two
/// ends sit at least two blocks apart, or cross into the last, partial, column whose blocks
/// are the longer ones. Either way every pair is at least `d` apart around the ring. Within
/// a zone's run, its nodes take turns by stride scheduling, so they are `d` apart too (the
/// node distance is never more than the zone distance).
fn columns(zone_of: &[u16], quotas: &[u32], spread: Spread) -> Option<Vec<u16>> {
    let by_zone = spread.zone_distance > 0;
    let d = if by_zone {
        spread.zone_distance
    } else {
        spread.node_distance
    };
    let q: usize = quotas.iter().map(|&x| x as usize).sum();
    if d < 2 || q < d {
        return None;
    }
    let r = q / d;
    // Colours: zones, or every node its own colour without the zone constraint.
    let colour_of = |node: usize| {
        if by_zone {
            usize::from(zone_of[node])
        } else {
            node
        }
    };
    let colours = quotas
        .len()
        .max(zone_of.iter().map(|&z| usize::from(z) + 1).max()?);
    let mut counts = vec![0usize; colours];
    for (node, &quota) in quotas.iter().enumerate() {
        counts[colour_of(node)] += quota as usize;
    }
    if counts.iter().any(|&c| c > r) {
        return None;
    }
    let mut order: Vec<usize> = (0..colours).filter(|&c| counts[c] > 0).collect();
    order.sort_by_key(|&c| (std::cmp::Reverse(counts[c]), c));
    // Each colour's nodes, interleaved by stride scheduling.
    let mut items = Vec::with_capacity(q);
    for colour in order {
        let mut queue: BTreeSet<(Deadline, u16)> = BTreeSet::new();
        let mut used = vec![0u64; quotas.len()];
        for (node, &quota) in quotas.iter().enumerate() {
            if quota > 0 && colour_of(node) == colour {
                queue.insert((Deadline::after(0, u64::from(quota)), node as u16));
            }
        }
        while let Some((_, node)) = queue.pop_first() {
            items.push(node);
            let n = usize::from(node);
            used[n] += 1;
            if used[n] < u64::from(quotas[n]) {
                queue.insert((Deadline::after(used[n], u64::from(quotas[n])), node));
            }
        }
    }
    let (base, longer) = (q / r, q % r);
    let start = |block: usize| block * base + block.min(longer);
    let len = |block: usize| base + usize::from(block < longer);
    let slots = (0..=base).flat_map(|offset| {
        (0..r)
            .filter(move |&b| offset < len(b))
            .map(move |b| start(b) + offset)
    });
    let mut owners = vec![UNASSIGNED; q];
    for (slot, node) in slots.zip(items) {
        owners[slot] = node;
    }
    Some(owners)
}

/// A fresh layout: walks the ring once, giving each partition the earliest-due zone (stride
/// scheduling interleaves zones evenly) and within it the earliest-due node, skipping zones
/// and nodes that would break the spread; if all clash, the least-clashing node.
fn stripe(zone_of: &[u16], zone_count: usize, quotas: &[u32], spread: Spread) -> Vec<u16> {
    let q: usize = quotas.iter().map(|&x| x as usize).sum();
    let mut table = Table {
        owners: vec![UNASSIGNED; q],
        zone_of,
        spread,
    };
    // Without a zone constraint, zone-first scheduling would delay heavy nodes until they
    // cannot fit; scheduling nodes alone (one virtual zone) keeps every node evenly spaced.
    let one_zone = vec![0u16; zone_of.len()];
    let (sched_zone_of, sched_zones) = if spread.zone_distance == 0 {
        (&one_zone[..], 1)
    } else {
        (zone_of, zone_count)
    };
    let mut strides = Strides::new(sched_zone_of, sched_zones, quotas);
    for p in 0..q {
        let (near_nodes, near_zones) = near(&table, p);
        let pick = strides
            .pick(|z| !near_zones.contains(&z), |n| !near_nodes.contains(&n))
            .unwrap_or_else(|| {
                strides
                    .remaining()
                    .min_by_key(|&n| {
                        let zone = sched_zone_of[usize::from(n)];
                        (table.conflict(p, n), strides.deadline_of(zone, n), n)
                    })
                    .expect("quotas sum to Q, so some node has quota left")
            });
        table.owners[p] = pick;
        strides.consume(sched_zone_of[usize::from(pick)], pick);
    }
    table.owners
}

/// Assigned nodes within the node distance of `p` and zones within the zone distance.
fn near(table: &Table, p: usize) -> (Vec<u16>, Vec<u16>) {
    let q = table.owners.len();
    let (mut nodes, mut zones) = (Vec::new(), Vec::new());
    for delta in 1..table.spread.reach().min(q) {
        for other in [(p + delta) % q, (p + q - delta) % q] {
            let o = table.owners[other];
            if o == UNASSIGNED {
                continue;
            }
            if delta < table.spread.node_distance {
                nodes.push(o);
            }
            if delta < table.spread.zone_distance {
                zones.push(table.zone_of[usize::from(o)]);
            }
        }
    }
    (nodes, zones)
}

/// The previous owner table in terms of the new member indexes; leavers' partitions are
/// `UNASSIGNED`.
fn carry_over(prev: &Ring, members: &[Member]) -> Vec<u16> {
    let remap: Vec<u16> = prev
        .members
        .iter()
        .map(|m| {
            members
                .binary_search_by(|x| x.id.cmp(&m.id))
                .map_or(UNASSIGNED, |i| i as u16)
        })
        .collect();
    prev.owners.iter().map(|&o| remap[usize::from(o)]).collect()
}

/// Brings every node to its quota with few moves: unassigned partitions go to nodes below
/// quota, then nodes below quota take partitions from nodes above it.
fn rebalance(table: &mut Table, quotas: &[u32]) {
    let mut counts = vec![0u32; quotas.len()];
    for &o in &table.owners {
        if o != UNASSIGNED {
            counts[usize::from(o)] += 1;
        }
    }
    fill_unassigned(table, quotas, &mut counts);
    for taker in 0..quotas.len() {
        take_surplus(table, quotas, &mut counts, taker as u16);
    }
    debug_assert!(counts.iter().zip(quotas).all(|(c, q)| c == q));
}

/// Gives each unassigned partition, clockwise, to the node below quota that clashes least,
/// then has the most missing, then the smallest id.
fn fill_unassigned(table: &mut Table, quotas: &[u32], counts: &mut [u32]) {
    let q = table.owners.len();
    let mut takers: Vec<u16> = (0..quotas.len() as u16)
        .filter(|&n| counts[usize::from(n)] < quotas[usize::from(n)])
        .collect();
    for p in 0..q {
        if table.owners[p] != UNASSIGNED {
            continue;
        }
        let best = *takers
            .iter()
            .min_by_key(|&&n| {
                let missing = quotas[usize::from(n)] - counts[usize::from(n)];
                (table.conflict(p, n), std::cmp::Reverse(missing), n)
            })
            .expect("nodes below quota miss at least as many partitions as are unassigned");
        table.owners[p] = best;
        counts[usize::from(best)] += 1;
        takers.retain(|&n| counts[usize::from(n)] < quotas[usize::from(n)]);
    }
}

/// `taker` takes what it misses from nodes above quota: one partition per equal segment of
/// the ring where it clashes with nothing (spreading its partitions evenly), then the
/// least-clashing ones anywhere.
fn take_surplus(table: &mut Table, quotas: &[u32], counts: &mut [u32], taker: u16) {
    let q = table.owners.len();
    let t = usize::from(taker);
    let need = quotas[t].saturating_sub(counts[t]) as usize;
    if need == 0 {
        return;
    }
    let offset = t * q / quotas.len();
    let has_surplus = |counts: &[u32], o: u16| counts[usize::from(o)] > quotas[usize::from(o)];
    for segment in 0..need {
        let (start, end) = (
            offset + segment * q / need,
            offset + (segment + 1) * q / need,
        );
        let found = (start..end)
            .map(|p| p % q)
            .find(|&p| has_surplus(counts, table.owners[p]) && table.conflict(p, taker) == 0);
        if let Some(p) = found {
            move_partition(table, counts, p, taker);
        }
    }
    while counts[t] < quotas[t] {
        let p = (0..q)
            .filter(|&p| has_surplus(counts, table.owners[p]))
            .min_by_key(|&p| (table.conflict(p, taker), p))
            .expect("a node below quota implies a node above it");
        move_partition(table, counts, p, taker);
    }
}

fn move_partition(table: &mut Table, counts: &mut [u32], p: usize, to: u16) {
    counts[usize::from(table.owners[p])] -= 1;
    counts[usize::from(to)] += 1;
    table.owners[p] = to;
}

/// Lowers spread clashes by swapping the owners of two distant partitions (so every count,
/// hence every quota, is kept). With `before`, a swap's cost is the number of partitions it
/// newly moves away from their previous owner, and the total cost stays within `budget`;
/// moved partitions are tried first as swap partners because swapping them costs less.
/// At most `REPAIR_EVALUATIONS_PER_PARTITION * Q` swaps are evaluated, so hopeless layouts
/// (quotas that cannot be spread) cost linear time.
fn repair(table: &mut Table, before: Option<&[u16]>, budget: usize) {
    let mut budget = i64::try_from(budget).unwrap_or(i64::MAX);
    let q = table.owners.len();
    let reach = table.spread.reach();
    if reach < 2 || q < 2 * reach {
        return;
    }
    let mut work = REPAIR_EVALUATIONS_PER_PARTITION * q;
    for _ in 0..REPAIR_ROUNDS {
        let mut improved = false;
        let moved: Vec<usize> = before.map_or(Vec::new(), |b| {
            (0..q).filter(|&x| table.owners[x] != b[x]).collect()
        });
        for p in 0..q {
            if work == 0 {
                return;
            }
            if table.conflict(p, table.owners[p]) == 0 {
                continue;
            }
            let scan = (reach..q - reach + 1).map(|d| (p + d) % q);
            let limit = SWAP_SEARCH_LIMIT.min(work);
            let candidates = moved
                .iter()
                .copied()
                .chain(scan)
                .filter(|&x| table.distance(p, x) >= reach)
                .take(limit);
            work -= limit;
            let best = candidates
                .filter_map(|x| {
                    swap_gain(table, before, p, x)
                        .map(|(gain, cost)| (std::cmp::Reverse(gain), cost, x))
                })
                .filter(|&(_, cost, _)| cost <= budget)
                .min();
            if let Some((_, cost, x)) = best {
                table.owners.swap(p, x);
                budget -= cost.max(0);
                improved = true;
            }
        }
        if !improved {
            break;
        }
    }
}

/// Clash reduction and movement cost of swapping the owners of `a` and `b` (at least the
/// spread reach apart, so their neighbourhoods are disjoint), if it reduces clashes.
fn swap_gain(table: &Table, before: Option<&[u16]>, a: usize, b: usize) -> Option<(u32, i64)> {
    let (oa, ob) = (table.owners[a], table.owners[b]);
    if oa == ob {
        return None;
    }
    let now = table.conflict(a, oa) + table.conflict(b, ob);
    let after = table.conflict(a, ob) + table.conflict(b, oa);
    if after >= now {
        return None;
    }
    let cost = before.map_or(0, |prev| {
        let moved = |p: usize, owner: u16| i64::from(owner != prev[p]);
        moved(a, ob) + moved(b, oa) - moved(a, oa) - moved(b, ob)
    });
    Some((now - after, cost))
}

/// Home replicas of every partition, `home_len` per partition.
///
/// Walking clockwise, the home list takes the first node of each new zone until it has
/// min(N, zones), then the first nodes not yet taken. Rather than walk from every partition,
/// this sweeps the doubled ring backwards keeping each zone's and node's next position, so
/// the first occurrences are the smallest positions: O(Q log members). Members owning no
/// partition sit past the end, in id order.
fn build_homes(owners: &[u16], zone_of: &[u16], zone_count: usize, home_len: usize) -> Vec<u16> {
    let q = owners.len();
    let members = zone_of.len();
    let beyond = 2 * q;
    let member_at = |pos: usize| {
        if pos >= beyond {
            (pos - beyond) as u16
        } else {
            owners[pos % q]
        }
    };
    let mut next_node: Vec<usize> = (0..members).map(|i| beyond + i).collect();
    let mut next_zone = vec![usize::MAX; zone_count];
    for (i, &z) in zone_of.iter().enumerate().rev() {
        next_zone[usize::from(z)] = beyond + i;
    }
    let mut node_order: BTreeSet<(usize, u16)> = next_node
        .iter()
        .enumerate()
        .map(|(i, &p)| (p, i as u16))
        .collect();
    let mut zone_order: BTreeSet<(usize, u16)> = next_zone
        .iter()
        .enumerate()
        .map(|(z, &p)| (p, z as u16))
        .collect();
    let zone_target = home_len.min(zone_count);
    let mut homes = vec![0u16; q * home_len];
    let mut chosen: Vec<(usize, u16)> = Vec::with_capacity(home_len);
    for pos in (0..beyond).rev() {
        let node = owners[pos % q];
        let zone = zone_of[usize::from(node)];
        node_order.remove(&(next_node[usize::from(node)], node));
        next_node[usize::from(node)] = pos;
        node_order.insert((pos, node));
        zone_order.remove(&(next_zone[usize::from(zone)], zone));
        next_zone[usize::from(zone)] = pos;
        zone_order.insert((pos, zone));
        if pos >= q {
            continue;
        }
        chosen.clear();
        chosen.extend(
            zone_order
                .iter()
                .take(zone_target)
                .map(|&(p, _)| (p, member_at(p))),
        );
        for &(p, n) in &node_order {
            if chosen.len() == home_len {
                break;
            }
            if !chosen.iter().any(|&(_, c)| c == n) {
                chosen.push((p, n));
            }
        }
        chosen.sort_unstable();
        let slot = &mut homes[pos * home_len..(pos + 1) * home_len];
        for (s, &(_, n)) in slot.iter_mut().zip(&chosen) {
            *s = n;
        }
    }
    homes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, weight: u32, zone: &str) -> Member {
        Member {
            id: NodeId::new(id).unwrap(),
            weight,
            zone: zone.into(),
        }
    }

    fn params(partitions: u32, n: u8) -> RingParams {
        RingParams { partitions, n }
    }

    #[test]
    fn rejects_bad_input() {
        let ok = [member("a", 1, "z")];
        assert!(Ring::claim(None, &ok, params(3, 3)).is_err());
        assert!(Ring::claim(None, &ok, params(8, 0)).is_err());
        assert!(Ring::claim(None, &[], params(8, 3)).is_err());
        assert!(Ring::claim(None, &[member("a", 0, "z")], params(8, 3)).is_err());
        assert!(Ring::claim(None, &[member("a", MAX_WEIGHT + 1, "z")], params(8, 3)).is_err());
        let dup = [member("a", 1, "z"), member("a", 2, "y")];
        assert_eq!(
            Ring::claim(None, &dup, params(8, 3)),
            Err(RingError::DuplicateMember(NodeId::new("a").unwrap()))
        );
        let ring = Ring::claim(None, &ok, params(8, 3)).unwrap();
        assert!(matches!(
            Ring::claim(Some(&ring), &ok, params(16, 3)),
            Err(RingError::ParamsChanged { .. })
        ));
    }

    #[test]
    fn four_zones_stripe_perfectly() {
        let members: Vec<Member> = (0..8)
            .map(|i| member(&format!("n{i}"), 1, &format!("z{}", i % 4)))
            .collect();
        let ring = Ring::claim(None, &members, params(64, 3)).unwrap();
        assert_eq!(ring.spread_violations(), 0);
        for m in &members {
            assert_eq!(ring.partitions_owned(&m.id), 8);
        }
        let p = PartitionId::new(5, 64).unwrap();
        let home: Vec<&NodeId> = ring.preference_list(p).home().collect();
        assert_eq!(home.len(), 3);
        assert_eq!(home[0], ring.owner(p));
        let fallbacks: Vec<&NodeId> = ring.preference_list(p).fallbacks().collect();
        assert_eq!(fallbacks.len(), 5);
        assert!(fallbacks.iter().all(|f| !home.contains(f)));
        assert!(home.iter().all(|h| ring.is_home(p, h)));
    }

    #[test]
    fn quotas_use_largest_remainders_with_ties_to_smaller_ids() {
        let members = [
            member("a", 1, "z"),
            member("b", 1, "z"),
            member("c", 1, "z"),
        ];
        assert_eq!(quotas(&members, 16), vec![6, 5, 5]);
        let members = [member("a", 1, "z"), member("b", 2, "z")];
        assert_eq!(quotas(&members, 4), vec![1, 3]);
    }

    #[test]
    fn unowned_members_still_fill_home_lists() {
        let members: Vec<Member> = (0..5).map(|i| member(&format!("n{i}"), 1, "z")).collect();
        let ring = Ring::claim(None, &members, params(2, 3)).unwrap();
        let p = PartitionId::new(0, 2).unwrap();
        assert_eq!(ring.preference_list(p).home().count(), 3);
        assert_eq!(ring.preference_list(p).fallbacks().count(), 2);
    }

    #[test]
    fn malformed_wire_rings_are_errors() {
        let members = [member("a", 1, "z"), member("b", 1, "z")];
        let ring = Ring::claim(None, &members, params(4, 2)).unwrap();
        let raw = |owners: Vec<u16>, members: Vec<Member>| RawRing {
            params: params(4, 2),
            members,
            owners,
        };
        assert!(Ring::try_from(raw(vec![0, 1, 0], members.to_vec())).is_err());
        assert!(Ring::try_from(raw(vec![0, 1, 0, 2], members.to_vec())).is_err());
        assert!(
            Ring::try_from(raw(
                vec![0, 1, 0, 1],
                vec![members[1].clone(), members[0].clone()]
            ))
            .is_err()
        );
        let bytes = postcard::to_allocvec(&ring).unwrap();
        assert_eq!(postcard::from_bytes::<Ring>(&bytes).unwrap(), ring);
    }
}
