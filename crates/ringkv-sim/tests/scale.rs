//! The `scale` subcommand end to end, at a size that runs in seconds: the library run replays
//! from its seed, and the binary prints the tables or JSON, writes the charts, and turns bad
//! arguments into an error message and a failing exit status.

use std::process::{Command, Output};

use ringkv_core::ring::RingParams;
use ringkv_sim::cluster::ClusterShape;
use ringkv_sim::report;
use ringkv_sim::scale::{self, GossipEngine, GossipPlan, ScaleConfig};

fn config(seed: u64) -> ScaleConfig {
    ScaleConfig {
        shape: ClusterShape {
            nodes: 40,
            zones: 4,
            weights: vec![1, 2],
        },
        params: RingParams {
            partitions: 1024,
            n: 3,
        },
        ring_changes: 2,
        seed,
        gossip: GossipPlan {
            engine: GossipEngine::Model,
            sizes: vec![10, 100],
            seeds: 3,
            interval_ms: 1000,
            chitchat_changes: 1,
            model_runs: 5,
            mtu_bytes: 65_507,
            max_rounds: 100,
            id_bytes: 5,
        },
    }
}

#[test]
fn a_model_only_run_replays_from_its_seed() {
    let (a, _) = scale::run(&config(9), &mut |_| {}).unwrap();
    let (b, _) = scale::run(&config(9), &mut |_| {}).unwrap();
    assert_eq!(a, b);
    let (c, _) = scale::run(&config(10), &mut |_| {}).unwrap();
    assert_ne!(a.gossip, c.gossip, "the seed drives the model");
    assert_eq!(a.gossip.len(), 2);
    assert!(
        a.gossip
            .iter()
            .all(|r| r.chitchat.is_none() && r.model.is_some())
    );
}

#[test]
fn the_report_renders_as_tables_and_charts() {
    let (r, t) = scale::run(&config(1), &mut |_| {}).unwrap();
    let tables = report::tables(&r, &t);
    for needle in [
        "partitions per node, max / mean",
        "| join n0040 (w 1) |",
        "| leave ",
        "| 100 | 6.6 |",
        "chitchat gossips in clusters of up to 1399 nodes with 5-byte node names",
    ] {
        assert!(tables.contains(needle), "{needle:?} missing from\n{tables}");
    }
    let charts = report::charts(&r);
    let names: Vec<&str> = charts.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "partitions-per-node.svg",
            "gossip-rounds.svg",
            "gossip-datagram.svg"
        ]
    );
    for (name, svg) in &charts {
        assert!(
            svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"),
            "{name}"
        );
        assert!(svg.contains("<polyline"), "{name} draws a line");
    }
}

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringkv-sim"))
        .args(args)
        .output()
        .expect("the binary runs")
}

const SMALL: [&str; 12] = [
    "scale",
    "--nodes",
    "30",
    "--partitions",
    "1024",
    "--zones",
    "3",
    "--gossip",
    "model",
    "--gossip-sizes",
    "10,30",
    "--changes=1",
];

#[test]
fn the_binary_prints_json_and_writes_the_charts() {
    let dir = tempfile::tempdir().unwrap();
    let charts = dir.path().join("charts");
    let mut args = SMALL.to_vec();
    args.extend(["--json", "--charts", charts.to_str().unwrap()]);
    let out = sim(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["report"]["ring"]["nodes"], 30);
    assert_eq!(json["report"]["ring"]["partitions"], 1024);
    assert_eq!(json["report"]["gossip"].as_array().unwrap().len(), 2);
    assert!(json["timings"]["total_seconds"].as_f64().unwrap() >= 0.0);
    for name in [
        "partitions-per-node.svg",
        "gossip-rounds.svg",
        "gossip-datagram.svg",
    ] {
        let svg = std::fs::read_to_string(charts.join(name)).unwrap();
        assert!(svg.starts_with("<svg "), "{name}");
    }
}

#[test]
fn the_binary_rejects_bad_arguments_with_a_message() {
    let args: Vec<&str> = SMALL
        .iter()
        .map(|&a| if a == "1024" { "1000" } else { a })
        .chain(["--no-charts"])
        .collect();
    let out = sim(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("power of two"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = sim(&[
        "scale",
        "--no-charts",
        "--gossip",
        "model",
        "--gossip-sizes",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("nodes must be in 2.."),
        "{stderr}"
    );
}

#[test]
fn without_gossip_only_the_ring_is_reported() {
    let mut ring_only = config(1);
    ring_only.gossip.engine = GossipEngine::None;
    let (r, t) = scale::run(&ring_only, &mut |_| {}).unwrap();
    assert!(r.gossip.is_empty());
    assert!(!report::tables(&r, &t).contains("Gossip:"));
    let charts = report::charts(&r);
    assert_eq!(charts.len(), 1);
    assert_eq!(charts[0].0, "partitions-per-node.svg");
}
