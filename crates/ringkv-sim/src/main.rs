//! `ringkv-sim`: ringkv's simulators on the command line.
//!
//! `ringkv-sim scale --nodes 1000 --partitions 65536 --zones 10` prints the scale report as
//! Markdown tables (or JSON with `--json`) and writes its SVG charts to `--charts` (by default
//! `docs/scale`, relative to where it runs: run it from the repository root).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use ringkv_core::constants::DEFAULT_N;
use ringkv_core::ring::RingParams;
use ringkv_sim::chitchat_net::UDP_PAYLOAD_MAX_BYTES;
use ringkv_sim::cluster::ClusterShape;
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
    }
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

/// Past its size limit chitchat panics in every node's gossip task; the simulation counts
/// those (`stopped_servers`), so their messages, one per node, are left out. Any other panic
/// is reported as usual.
fn quiet_chitchat_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_chitchat = info
            .location()
            .is_some_and(|l| l.file().contains("/chitchat-"));
        if !in_chitchat {
            default(info);
        }
    }));
}
