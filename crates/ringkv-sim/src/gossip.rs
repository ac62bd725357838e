//! What the two gossip simulations share: the setup, one run's figures, a summary over runs
//! and node naming.

use std::time::Duration;

use serde::Serialize;

/// Most nodes a gossip simulation accepts: addresses are 10.x.y.z.
pub const MAX_GOSSIP_NODES: usize = 1 << 24;
/// Length of the default node names, `n0000` to `n9999`.
pub const DEFAULT_ID_BYTES: usize = 5;
/// Longest node name a gossip simulation accepts. ringkv's node ids stop at 64 bytes
/// (`ringkv_core::constants::MAX_NODE_ID_BYTES`), and ringkv's chitchat learns no node with a
/// longer one; longer names only serve to show that.
pub const MAX_ID_BYTES: usize = 8192;

/// One gossip simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GossipSetup {
    pub nodes: usize,
    /// Nodes `0..seeds` are every other node's seeds.
    pub seeds: usize,
    /// The gossip interval in (virtual) milliseconds; rounds are counted in these.
    pub interval_ms: u64,
    /// Changes timed one after the other in one converged cluster.
    pub changes: usize,
    /// Largest datagram the simulated network carries.
    pub mtu_bytes: usize,
    /// Give up when bootstrap or a change takes more rounds than this.
    pub max_rounds: u32,
    /// Length of every node's name (see `node_name`).
    pub id_bytes: usize,
}

impl GossipSetup {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn validate(&self) -> Result<(), GossipError> {
        if self.nodes < 2 || self.nodes > MAX_GOSSIP_NODES {
            return Err(GossipError::Invalid(format!(
                "nodes must be in 2..={MAX_GOSSIP_NODES}, got {}",
                self.nodes
            )));
        }
        if !(2..=MAX_ID_BYTES).contains(&self.id_bytes) {
            return Err(GossipError::Invalid(format!(
                "node names must be 2..={MAX_ID_BYTES} bytes, got {}",
                self.id_bytes
            )));
        }
        if self.seeds == 0
            || self.interval_ms == 0
            || self.changes == 0
            || self.mtu_bytes == 0
            || self.max_rounds == 0
        {
            return Err(GossipError::Invalid(
                "seeds, interval, changes, MTU and max rounds must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Node `index`'s name: `n` and the index zero-padded to `id_bytes` in all (longer only
/// when the index has more digits, so names stay distinct).
pub fn node_name(index: usize, id_bytes: usize) -> String {
    let digits = id_bytes.saturating_sub(1);
    format!("n{index:0digits$}")
}

/// The figures of one simulated cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GossipRun {
    pub nodes: usize,
    /// Rounds from the first node's start until every node sees all nodes live.
    pub bootstrap_rounds: f64,
    /// For each change, rounds from its publication until every node knows it.
    pub change_rounds: Vec<f64>,
    /// Bytes sent per node per round while the changes spread.
    pub bytes_per_node_round: u64,
    /// The largest Syn sent (a node's whole digest).
    pub largest_syn_bytes: usize,
    /// Datagrams the network refused for being larger than the MTU.
    pub refused_datagrams: u64,
    /// Nodes whose gossip server stopped (chitchat panicked in it).
    pub stopped_servers: usize,
}

/// Mean, smallest and largest of some samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub samples: usize,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let sum: f64 = samples.iter().sum();
        Some(Stats {
            samples: samples.len(),
            mean: sum / samples.len() as f64,
            min: samples.iter().copied().fold(f64::INFINITY, f64::min),
            max: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GossipError {
    #[error("invalid gossip setup: {0}")]
    Invalid(String),
    #[error("could not build the simulated runtime: {0}")]
    Runtime(String),
    #[error("could not start a simulated node: {0}")]
    Spawn(String),
    #[error(
        "{nodes} nodes did not converge within {rounds} rounds \
         ({refused_datagrams} datagrams refused for size, \
         {stopped_servers} gossip servers stopped by a panic in chitchat)"
    )]
    NoConvergence {
        nodes: usize,
        rounds: u32,
        refused_datagrams: u64,
        stopped_servers: usize,
    },
}
