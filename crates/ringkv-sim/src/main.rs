//! `ringkv-sim`: ringkv's simulators on the command line.
//!
//! `ringkv-sim scale --nodes 1000 --partitions 65536 --zones 10` prints the scale report as
//! Markdown tables (or JSON with `--json`) and writes its SVG charts to `--charts` (by default
//! `docs/scale`, relative to where it runs: run it from the repository root).
//!
//! `ringkv-sim cluster --seed 7` runs the deterministic cluster simulation for one seed and
//! prints its history; `--seeds 1000` runs a thousand seeds from `--seed` on. A failing seed
//! prints its violations and the command that replays it with tracing.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use ringkv_core::constants::DEFAULT_N;
use ringkv_core::ring::RingParams;
use ringkv_sim::chitchat_net::UDP_PAYLOAD_MAX_BYTES;
use ringkv_sim::cluster::ClusterShape;
use ringkv_sim::cluster_sim::{self, SimConfig};
use ringkv_sim::gossip::DEFAULT_ID_BYTES;
use ringkv_sim::report;
use ringkv_sim::scale::{self, GossipEngine, GossipPlan, ScaleConfig};

#[derive(Parser)]
#[command(name = "ringkv-sim", about = "ringkv's simulators")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The real claim algorithm and real gossip at scale: balance, movement, zone spread,
    /// ring size, gossip rounds.
    Scale(ScaleArgs),
    /// The deterministic cluster simulation: the real node code for 3 to 9 nodes on a
    /// simulated network and clock, a workload, faults from the seed, and the checkers.
    Cluster(ClusterArgs),
}

#[derive(Args)]
struct ClusterArgs {
    /// The first seed to run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many seeds to run, from `--seed` on.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Nodes at the start (3 to 9; by default 3 to 5, from the seed).
    #[arg(long)]
    nodes: Option<usize>,
    /// Run without faults.
    #[arg(long)]
    no_faults: bool,
    /// The deliberately broken build: hinted handoff, read repair and anti-entropy off.
    #[arg(long)]
    broken: bool,
    /// Print the nodes' tracing (filter with RUST_LOG; default debug) to stderr.
    #[arg(long)]
    trace: bool,
    /// Print each run's history.
    #[arg(long)]
    history: bool,
}

#[derive(Args)]
struct ScaleArgs {
    /// Nodes in the cluster whose ring is claimed.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Q, the number of ring partitions (a power of two).
    #[arg(long, default_value_t = 65536)]
    partitions: u32,
    /// Zones; member i is in zone i mod zones.
    #[arg(long, default_value_t = 10)]
    zones: usize,
    /// N, the replicas per key.
    #[arg(long, default_value_t = DEFAULT_N)]
    replicas: u8,
    /// Weights handed out in turn within each zone, e.g. `1,2` (half the nodes weigh 2).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    weights: Vec<u32>,
    /// Joins, and leaves, measured.
    #[arg(long, default_value_t = 3)]
    changes: usize,
    /// Seed of every seeded choice (leavers, the gossip model).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Gossip simulations to run.
    #[arg(long, value_enum, default_value_t = GossipEngine::Both)]
    gossip: GossipEngine,
    /// Cluster sizes whose gossip rounds are measured.
    #[arg(long, value_delimiter = ',', default_value = "10,30,100,300,1000")]
    gossip_sizes: Vec<usize>,
    /// Seed nodes every node is configured with.
    #[arg(long, default_value_t = 3)]
    gossip_seeds: usize,
    /// Changes timed per chitchat cluster.
    #[arg(long, default_value_t = 3)]
    chitchat_changes: usize,
    /// Seeds of the model per size.
    #[arg(long, default_value_t = 20)]
    model_runs: usize,
    /// Largest datagram of the simulated network, in bytes.
    #[arg(long, default_value_t = UDP_PAYLOAD_MAX_BYTES)]
    mtu: usize,
    /// Length of the simulated nodes' names, in bytes (ringkv accepts up to 64).
    #[arg(long, default_value_t = DEFAULT_ID_BYTES)]
    id_bytes: usize,
    /// Give up on a gossip phase after this many rounds.
    #[arg(long, default_value_t = 100)]
    max_rounds: u32,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Directory the SVG charts are written to.
    #[arg(long, default_value = "docs/scale")]
    charts: PathBuf,
    /// Write no charts.
    #[arg(long)]
    no_charts: bool,
}

impl ScaleArgs {
    fn config(&self) -> ScaleConfig {
        ScaleConfig {
            shape: ClusterShape {
                nodes: self.nodes,
                zones: self.zones,
                weights: self.weights.clone(),
            },
            params: RingParams {
                partitions: self.partitions,
                n: self.replicas,
            },
            ring_changes: self.changes,
            seed: self.seed,
            gossip: GossipPlan {
                engine: self.gossip,
                sizes: self.gossip_sizes.clone(),
                seeds: self.gossip_seeds,
                // Rounds are counted in intervals, so its length only has to match ringkv's
                // default (1 s) for the failure detector's settings to mean the same.
                interval_ms: 1000,
                chitchat_changes: self.chitchat_changes,
                model_runs: self.model_runs,
                mtu_bytes: self.mtu,
                max_rounds: self.max_rounds,
                id_bytes: self.id_bytes,
            },
        }
    }
}

fn main() -> anyhow::Result<()> {
    quiet_chitchat_panics();
    match Cli::parse().command {
        Command::Scale(args) => scale_command(&args),
        Command::Cluster(args) => cluster_command(&args),
    }
}

fn cluster_command(args: &ClusterArgs) -> anyhow::Result<()> {
    if args.trace {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let mut failed = Vec::new();
    let started = std::time::Instant::now();
    for seed in args.seed..args.seed.saturating_add(args.seeds) {
        let config = SimConfig {
            seed,
            nodes: args.nodes,
            faults: !args.no_faults,
            broken: args.broken,
        };
        let outcome = cluster_sim::run_reported(&config);
        if args.history || args.seeds == 1 {
            for line in &outcome.history {
                println!("{line}");
            }
        }
        if outcome.passed() {
            eprintln!(
                "ringkv-sim: seed {seed} passed (converged after {:?})",
                outcome.converged_after.unwrap_or_default()
            );
        } else {
            eprintln!("{}", cluster_sim::failure_report(&config, &outcome));
            failed.push(seed);
        }
    }
    eprintln!(
        "ringkv-sim: {} of {} seeds passed in {:.1}s",
        args.seeds as usize - failed.len(),
        args.seeds,
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(failed.is_empty(), "seeds that failed: {failed:?}");
    Ok(())
}

fn scale_command(args: &ScaleArgs) -> anyhow::Result<()> {
    let mut progress = |step: &str| eprintln!("ringkv-sim: {step}");
    let (report, timings) = scale::run(&args.config(), &mut progress)?;
    if args.json {
        let json = serde_json::json!({ "report": report, "timings": timings });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", report::tables(&report, &timings));
    }
    if !args.no_charts {
        std::fs::create_dir_all(&args.charts)
            .with_context(|| format!("creating {}", args.charts.display()))?;
        for (name, svg) in report::charts(&report) {
            let path = args.charts.join(name);
            std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("ringkv-sim: wrote {}", path.display());
        }
    }
    Ok(())
}

/// A panic in chitchat stops that node's gossip task (past its size limit it did in every
/// node's, before ringkv's chitchat stopped learning nodes there); the simulation counts those
/// (`stopped_servers`), so their messages, one per node, are left out. Any other panic is
/// reported as usual.
fn quiet_chitchat_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_chitchat = info
            .location()
            .is_some_and(|l| l.file().contains("/chitchat-") || l.file().contains("chitchat/src/"));
        if !in_chitchat {
            default(info);
        }
    }));
}
