//! The simulated cluster's members: how nodes are named, zoned and weighted.
//!
//! Member `i` is named `node_name(i, DEFAULT_ID_BYTES)` (`n0000`, ...), sits in zone
//! `i mod zones` (round robin) and has weight `weights[(i / zones) mod weights.len()]`, so
//! every zone holds the same mix of weights and zone capacities stay equal. A joiner is
//! simply the next index, so growing a cluster keeps the round robin.

use ringkv_core::NodeId;
use ringkv_core::ring::{MAX_MEMBERS, MAX_WEIGHT, Member};

use crate::SimError;
use crate::gossip::{DEFAULT_ID_BYTES, node_name};

/// Nodes, zones and the weight mix of a simulated cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterShape {
    pub nodes: usize,
    pub zones: usize,
    /// Weights handed out in turn within each zone; `[1]` for equal nodes.
    pub weights: Vec<u32>,
}

impl ClusterShape {
    /// Checks counts and weights, leaving room for one joiner beyond `nodes`.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.nodes == 0 || self.nodes >= MAX_MEMBERS {
            return Err(SimError::Invalid(format!(
                "nodes must be in 1..{MAX_MEMBERS}, got {}",
                self.nodes
            )));
        }
        if self.zones == 0 || self.zones > self.nodes {
            return Err(SimError::Invalid(format!(
                "zones must be in 1..=nodes ({}), got {}",
                self.nodes, self.zones
            )));
        }
        if self.weights.is_empty() || self.weights.iter().any(|w| !(1..=MAX_WEIGHT).contains(w)) {
            return Err(SimError::Invalid(format!(
                "weights must be a non-empty list of values in 1..={MAX_WEIGHT}"
            )));
        }
        Ok(())
    }

    /// Member `index` (any index, so joiners past `nodes` follow the same pattern).
    pub fn member(&self, index: usize) -> Member {
        let weight = self.weights[(index / self.zones) % self.weights.len()];
        Member {
            id: NodeId::new(node_name(index, DEFAULT_ID_BYTES))
                .expect("n followed by digits is a valid node id"),
            weight,
            zone: zone_name(index % self.zones),
        }
    }

    /// Members `0..count`.
    pub fn members(&self, count: usize) -> Vec<Member> {
        (0..count).map(|i| self.member(i)).collect()
    }
}

/// Zone `index`'s name.
pub fn zone_name(index: usize) -> String {
    format!("zone-{index:02}")
}
