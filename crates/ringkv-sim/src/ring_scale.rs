//! The ring at scale: runs the real claim algorithm (`ringkv_core::ring::Ring::claim`) for a
//! large cluster and measures what the ring's laws promise.
//!
//! Definitions (the same as `ringkv-core`'s `tests/ring_props.rs`):
//! - **Load** of a node: partitions it owns over its weighted fair share `Q·w/W`. Balance is
//!   the largest load; with equal weights it is max/mean partitions per node.
//! - **Moved** by a ring change: partitions whose owner differs between the two rings.
//! - **Optimum** of a join (a leave): the joiner's (leaver's) fair share `Q·w/W`, with `W` the
//!   total weight of the larger membership. No claim can move fewer owners than that, up to
//!   rounding, so `moved / optimum` is the movement overhead (goal ≤ 1.1).
//! - **Home replicas gained**: over all partitions, the nodes that become home replicas (the
//!   data that must be copied). Its optimum is N times the fair share.
//!
//! Joins grow the base cluster one node at a time, each measured against the ring before it;
//! leaves each remove one seeded random member from the base ring.

use std::collections::BTreeMap;
use std::time::Instant;

use ringkv_core::ring::{Member, Ring, RingParams};
use serde::Serialize;

use crate::SimError;
use crate::cluster::ClusterShape;
use crate::rng::Rng;

/// Everything measured about the ring, deterministic for a given shape, params and seed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RingReport {
    pub nodes: usize,
    pub zones: usize,
    pub partitions: u32,
    pub replicas: u8,
    pub balance: Balance,
    pub zone_spread: ZoneSpread,
    pub metadata: Metadata,
    pub changes: Vec<Movement>,
}

/// How evenly the partitions are shared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Balance {
    pub max_partitions: usize,
    pub min_partitions: usize,
    pub mean_partitions: f64,
    /// Partitions per node, max / mean (the figure the goal is stated in for equal weights).
    pub max_over_mean: f64,
    /// Largest and smallest load (owned over weighted fair share).
    pub max_load: f64,
    pub min_load: f64,
    pub by_weight: Vec<WeightShare>,
    /// Every node's load, largest first (for the chart).
    #[serde(skip)]
    pub loads: Vec<f64>,
}

/// Mean partitions of the nodes of one weight, and their fair share.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightShare {
    pub weight: u32,
    pub nodes: usize,
    pub mean_partitions: f64,
    pub fair_partitions: f64,
}

/// Whether each key's home replicas sit in distinct zones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneSpread {
    /// min(N, zones, members): the most distinct zones a home list can span.
    pub target_zones: usize,
    /// Partitions whose home replicas span `target_zones` zones.
    pub partitions_on_target: usize,
    pub fraction_on_target: f64,
    /// The fewest distinct zones of any partition's home replicas.
    pub fewest_zones: usize,
    /// Windows of N consecutive partitions breaking the spread (`Ring::spread_violations`).
    pub spread_violations: usize,
}

/// What the ring costs each node to hold and the cluster to distribute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metadata {
    /// The ring's wire form (postcard), what a node fetches and persists per ring version.
    pub wire_bytes: usize,
    /// Estimated heap size of a ring in memory: the owner table, the precomputed home
    /// lists, the zone indexes and the members.
    pub memory_bytes_estimate: usize,
    /// Bytes the cluster transfers when every other node fetches one new ring version.
    pub fetch_bytes_per_version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Join,
    Leave,
}

/// What one join or leave moved, against the optimum.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Movement {
    pub kind: ChangeKind,
    pub node: String,
    pub weight: u32,
    pub owners_moved: usize,
    /// The joiner's or leaver's fair share of Q.
    pub optimum: f64,
    /// `owners_moved / optimum`.
    pub ratio: f64,
    /// `owners_moved / Q`.
    pub fraction_moved: f64,
    pub replicas_gained: usize,
    /// N times the fair share.
    pub replica_optimum: f64,
    pub replica_ratio: f64,
}

/// Wall-clock times of the claims, in milliseconds (they vary run to run, so they are kept
/// apart from the deterministic report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RingTimings {
    pub fresh_claim_ms: f64,
    /// One per entry of `RingReport::changes`.
    pub change_claim_ms: Vec<f64>,
}

/// Claims the base ring of `shape`, then `changes` joins and `changes` leaves.
pub fn measure(
    shape: &ClusterShape,
    params: RingParams,
    changes: usize,
    seed: u64,
) -> Result<(RingReport, RingTimings), SimError> {
    shape.validate()?;
    if shape.nodes + changes >= ringkv_core::ring::MAX_MEMBERS {
        return Err(SimError::Invalid(
            "too many joins for the member limit".into(),
        ));
    }
    let members = shape.members(shape.nodes);
    let started = Instant::now();
    let base = Ring::claim(None, &members, params)?;
    let fresh_claim_ms = elapsed_ms(started);
    let mut movements = Vec::new();
    let mut change_claim_ms = Vec::new();
    let mut before = base.clone();
    for joined in shape.nodes..shape.nodes + changes {
        let (after, ms) = timed_claim(&before, &shape.members(joined + 1), params)?;
        movements.push(movement(
            &before,
            &after,
            &shape.member(joined),
            ChangeKind::Join,
        ));
        change_claim_ms.push(ms);
        before = after;
    }
    for leaver in pick_distinct(shape.nodes, changes.min(shape.nodes - 1), seed) {
        let rest: Vec<Member> = members
            .iter()
            .filter(|m| m.id != members[leaver].id)
            .cloned()
            .collect();
        let (after, ms) = timed_claim(&base, &rest, params)?;
        movements.push(movement(&base, &after, &members[leaver], ChangeKind::Leave));
        change_claim_ms.push(ms);
    }
    let report = RingReport {
        nodes: shape.nodes,
        zones: shape.zones,
        partitions: params.partitions,
        replicas: params.n,
        balance: balance(&base),
        zone_spread: zone_spread(&base),
        metadata: metadata(&base)?,
        changes: movements,
    };
    let timings = RingTimings {
        fresh_claim_ms,
        change_claim_ms,
    };
    Ok((report, timings))
}

fn timed_claim(
    previous: &Ring,
    members: &[Member],
    params: RingParams,
) -> Result<(Ring, f64), SimError> {
    let started = Instant::now();
    let ring = Ring::claim(Some(previous), members, params)?;
    Ok((ring, elapsed_ms(started)))
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// `count` distinct indexes in `0..n`, in the order drawn from `seed`.
fn pick_distinct(n: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut picked = Vec::with_capacity(count);
    while picked.len() < count.min(n) {
        let candidate = rng.below(n);
        if !picked.contains(&candidate) {
            picked.push(candidate);
        }
    }
    picked
}

/// Partitions owned by each member, in the ring's member order (sorted by id).
pub fn owned_counts(ring: &Ring) -> Vec<usize> {
    let members = ring.members();
    let mut counts = vec![0usize; members.len()];
    for (_, owner) in ring.owners() {
        if let Ok(i) = members.binary_search_by(|m| m.id.cmp(owner)) {
            counts[i] += 1;
        }
    }
    counts
}

/// A member's weighted fair share of the ring's partitions.
fn fair_share(ring: &Ring, weight: u32) -> f64 {
    let total: u64 = ring.members().iter().map(|m| u64::from(m.weight)).sum();
    f64::from(ring.params().partitions) * f64::from(weight) / total as f64
}

fn balance(ring: &Ring) -> Balance {
    let counts = owned_counts(ring);
    let members = ring.members();
    let mean = f64::from(ring.params().partitions) / members.len() as f64;
    let mut loads: Vec<f64> = members
        .iter()
        .zip(&counts)
        .map(|(m, &c)| c as f64 / fair_share(ring, m.weight))
        .collect();
    loads.sort_by(|a, b| b.total_cmp(a));
    let max_partitions = counts.iter().copied().max().unwrap_or(0);
    Balance {
        max_partitions,
        min_partitions: counts.iter().copied().min().unwrap_or(0),
        mean_partitions: mean,
        max_over_mean: max_partitions as f64 / mean,
        max_load: loads.first().copied().unwrap_or(0.0),
        min_load: loads.last().copied().unwrap_or(0.0),
        by_weight: by_weight(ring, &counts),
        loads,
    }
}

fn by_weight(ring: &Ring, counts: &[usize]) -> Vec<WeightShare> {
    let mut groups: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
    for (m, &c) in ring.members().iter().zip(counts) {
        let group = groups.entry(m.weight).or_default();
        group.0 += 1;
        group.1 += c;
    }
    groups
        .into_iter()
        .map(|(weight, (nodes, owned))| WeightShare {
            weight,
            nodes,
            mean_partitions: owned as f64 / nodes as f64,
            fair_partitions: fair_share(ring, weight),
        })
        .collect()
}

fn zone_spread(ring: &Ring) -> ZoneSpread {
    let zones: Vec<&str> = {
        let mut z: Vec<&str> = ring.members().iter().map(|m| m.zone.as_str()).collect();
        z.sort_unstable();
        z.dedup();
        z
    };
    let target = usize::from(ring.params().n)
        .min(zones.len())
        .min(ring.members().len());
    let mut on_target = 0;
    let mut fewest = usize::MAX;
    for (partition, _) in ring.owners() {
        let mut home_zones: Vec<&str> = ring
            .preference_list(partition)
            .home()
            .filter_map(|id| ring.member(id).map(|m| m.zone.as_str()))
            .collect();
        home_zones.sort_unstable();
        home_zones.dedup();
        fewest = fewest.min(home_zones.len());
        on_target += usize::from(home_zones.len() >= target);
    }
    let q = ring.params().partitions as usize;
    ZoneSpread {
        target_zones: target,
        partitions_on_target: on_target,
        fraction_on_target: on_target as f64 / q as f64,
        fewest_zones: fewest,
        spread_violations: ring.spread_violations(),
    }
}

fn metadata(ring: &Ring) -> Result<Metadata, SimError> {
    let wire = postcard::to_allocvec(ring).map_err(|e| SimError::Encode(e.to_string()))?;
    Ok(Metadata {
        wire_bytes: wire.len(),
        memory_bytes_estimate: memory_estimate(ring),
        fetch_bytes_per_version: wire.len() as u64 * (ring.members().len() as u64 - 1),
    })
}

/// Owner indexes (u16 per partition), home lists (u16 per replica per partition), zone
/// indexes (u16 per member) and members (struct plus id and zone strings).
fn memory_estimate(ring: &Ring) -> usize {
    let q = ring.params().partitions as usize;
    let members = ring.members();
    let home_len = usize::from(ring.params().n).min(members.len());
    let member_bytes: usize = members
        .iter()
        .map(|m| std::mem::size_of::<Member>() + m.id.as_str().len() + m.zone.len())
        .sum();
    2 * q + 2 * q * home_len + 2 * members.len() + member_bytes
}

fn movement(before: &Ring, after: &Ring, node: &Member, kind: ChangeKind) -> Movement {
    let owners_moved = before
        .owners()
        .zip(after.owners())
        .filter(|(a, b)| a.1 != b.1)
        .count();
    let larger = match kind {
        ChangeKind::Join => after,
        ChangeKind::Leave => before,
    };
    let optimum = fair_share(larger, node.weight);
    let replicas_gained: usize = before
        .home_changes(after)
        .iter()
        .map(|c| c.gained().len())
        .sum();
    let home_len = usize::from(after.params().n).min(after.members().len());
    let replica_optimum = optimum * home_len as f64;
    Movement {
        kind,
        node: node.id.as_str().to_string(),
        weight: node.weight,
        owners_moved,
        optimum,
        ratio: owners_moved as f64 / optimum,
        fraction_moved: owners_moved as f64 / f64::from(after.params().partitions),
        replicas_gained,
        replica_optimum,
        replica_ratio: replicas_gained as f64 / replica_optimum,
    }
}
