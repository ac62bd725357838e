//! `ringkv-sim scale`: the ring measurements of `ring_scale` for one large cluster, plus
//! gossip rounds for a range of cluster sizes, on chitchat itself and on the model.
//!
//! Law: with the model as the only gossip engine, `run` is a pure function of its config
//! (timings aside, which `ScaleTimings` keeps apart).

use std::time::Instant;

use ringkv_core::constants::MAX_NODE_ID_BYTES;
use ringkv_core::ring::RingParams;
use serde::Serialize;

use crate::SimError;
use crate::chitchat_net;
use crate::cluster::ClusterShape;
use crate::gossip::{GossipRun, GossipSetup, Stats};
use crate::gossip_model;
use crate::ring_scale::{self, RingReport, RingTimings};
use crate::rng::Rng;

/// Which gossip simulations to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GossipEngine {
    /// chitchat 0.13 itself on a simulated network (not seedable).
    Chitchat,
    /// The seeded model of chitchat's gossip.
    Model,
    /// Both, side by side.
    Both,
    /// No gossip measurement.
    None,
}

impl GossipEngine {
    fn chitchat(self) -> bool {
        matches!(self, GossipEngine::Chitchat | GossipEngine::Both)
    }
    fn model(self) -> bool {
        matches!(self, GossipEngine::Model | GossipEngine::Both)
    }
}

/// The gossip part of a scale run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipPlan {
    pub engine: GossipEngine,
    pub sizes: Vec<usize>,
    pub seeds: usize,
    pub interval_ms: u64,
    /// Changes timed per chitchat cluster.
    pub chitchat_changes: usize,
    /// Seeds (runs) of the model per size.
    pub model_runs: usize,
    pub mtu_bytes: usize,
    pub max_rounds: u32,
    /// Length of the simulated nodes' names.
    pub id_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleConfig {
    pub shape: ClusterShape,
    pub params: RingParams,
    /// Joins and leaves measured.
    pub ring_changes: usize,
    pub seed: u64,
    pub gossip: GossipPlan,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScaleReport {
    pub seed: u64,
    pub weights: Vec<u32>,
    pub ring: RingReport,
    pub gossip: Vec<GossipRow>,
    pub mtu_bytes: usize,
    pub id_bytes: usize,
    /// The largest cluster chitchat gossips in with names of `id_bytes`
    /// (`chitchat_net::largest_gossiping_cluster`).
    pub gossip_limit_nodes: usize,
    /// The same with names of ringkv's longest node id.
    pub gossip_limit_nodes_longest_ids: usize,
}

/// Gossip figures for one cluster size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GossipRow {
    pub nodes: usize,
    pub log2_nodes: f64,
    /// The Syn of a node that knows every node (`chitchat_net::full_view_syn_bytes`).
    pub full_view_syn_bytes: usize,
    /// chitchat itself: its run, or why it failed.
    pub chitchat: Option<Result<ChitchatFigures, String>>,
    /// The model's change rounds over `model_runs` seeds.
    pub model: Option<Stats>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChitchatFigures {
    pub bootstrap_rounds: f64,
    pub change_rounds: Stats,
    pub bytes_per_node_round: u64,
    pub largest_syn_bytes: usize,
    pub refused_datagrams: u64,
    pub stopped_servers: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScaleTimings {
    pub ring: RingTimings,
    /// Wall-clock seconds of the chitchat simulation per size.
    pub chitchat_seconds: Vec<(usize, f64)>,
    pub total_seconds: f64,
}

/// Runs the whole scale simulation; `progress` hears what is being done (slow steps take
/// minutes at 1000 nodes).
pub fn run(
    config: &ScaleConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<(ScaleReport, ScaleTimings), SimError> {
    let started = Instant::now();
    progress(&format!(
        "claiming the ring: {} nodes, Q = {}, {} joins and leaves",
        config.shape.nodes, config.params.partitions, config.ring_changes
    ));
    let (ring, ring_timings) = ring_scale::measure(
        &config.shape,
        config.params,
        config.ring_changes,
        config.seed,
    )?;
    let mut rows = Vec::with_capacity(config.gossip.sizes.len());
    let mut chitchat_seconds = Vec::new();
    let sizes: &[usize] = if config.gossip.engine == GossipEngine::None {
        &[]
    } else {
        &config.gossip.sizes
    };
    for &nodes in sizes {
        let (row, seconds) = gossip_row(nodes, config, progress)?;
        rows.push(row);
        chitchat_seconds.extend(seconds.map(|s| (nodes, s)));
    }
    let report = ScaleReport {
        seed: config.seed,
        weights: config.shape.weights.clone(),
        ring,
        gossip: rows,
        mtu_bytes: config.gossip.mtu_bytes,
        id_bytes: config.gossip.id_bytes,
        gossip_limit_nodes: chitchat_net::largest_gossiping_cluster(
            config.gossip.mtu_bytes,
            config.gossip.id_bytes,
        ),
        gossip_limit_nodes_longest_ids: chitchat_net::largest_gossiping_cluster(
            config.gossip.mtu_bytes,
            MAX_NODE_ID_BYTES,
        ),
    };
    let timings = ScaleTimings {
        ring: ring_timings,
        chitchat_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    Ok((report, timings))
}

fn setup(nodes: usize, plan: &GossipPlan) -> GossipSetup {
    GossipSetup {
        nodes,
        seeds: plan.seeds,
        interval_ms: plan.interval_ms,
        changes: plan.chitchat_changes,
        mtu_bytes: plan.mtu_bytes,
        max_rounds: plan.max_rounds,
        id_bytes: plan.id_bytes,
    }
}

/// One size's row, and the chitchat simulation's wall-clock seconds if it ran.
fn gossip_row(
    nodes: usize,
    config: &ScaleConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<(GossipRow, Option<f64>), SimError> {
    let plan = &config.gossip;
    let setup = setup(nodes, plan);
    setup.validate()?;
    let model = if plan.engine.model() {
        let rounds = (0..plan.model_runs)
            .map(|run| gossip_model::change_rounds(&setup, model_seed(config.seed, nodes, run)))
            .collect::<Result<Vec<f64>, _>>()?;
        Stats::of(&rounds)
    } else {
        None
    };
    let mut seconds = None;
    let chitchat = if plan.engine.chitchat() {
        progress(&format!("chitchat: {nodes} nodes on the simulated network"));
        let started = Instant::now();
        let outcome = chitchat_net::run(&setup);
        seconds = Some(started.elapsed().as_secs_f64());
        Some(outcome.map(figures).map_err(|e| e.to_string()))
    } else {
        None
    };
    let row = GossipRow {
        nodes,
        log2_nodes: (nodes as f64).log2(),
        full_view_syn_bytes: chitchat_net::full_view_syn_bytes(nodes, plan.id_bytes),
        chitchat,
        model,
    };
    Ok((row, seconds))
}

fn figures(run: GossipRun) -> ChitchatFigures {
    ChitchatFigures {
        bootstrap_rounds: run.bootstrap_rounds,
        change_rounds: Stats::of(&run.change_rounds).unwrap_or(Stats {
            samples: 0,
            mean: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        }),
        bytes_per_node_round: run.bytes_per_node_round,
        largest_syn_bytes: run.largest_syn_bytes,
        refused_datagrams: run.refused_datagrams,
        stopped_servers: run.stopped_servers,
    }
}

/// The model's seed for one size and run, derived from the run's seed.
pub fn model_seed(seed: u64, nodes: usize, run: usize) -> u64 {
    let mut rng = Rng::new(seed ^ ((nodes as u64) << 32) ^ run as u64);
    rng.next_u64()
}
