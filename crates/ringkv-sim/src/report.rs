//! A scale report as Markdown tables (what `ringkv-sim scale` prints and `docs/benchmarks.md`
//! quotes) and as SVG charts.

use std::fmt::Write as _;

use crate::chitchat_net::{DELTA_ROOM_MARGIN_BYTES, DELTA_ROOM_MIN_BYTES, full_view_syn_bytes};
use crate::ring_scale::{ChangeKind, Movement, RingReport};
use crate::scale::{GossipRow, ScaleReport, ScaleTimings};
use crate::svg::{Chart, Rule, Series, render};

/// The balance goal: the most loaded node within 5% of its fair share.
pub const BALANCE_GOAL: f64 = 1.05;
/// The movement goal: a join or leave moves at most 1.1 times the optimum.
pub const MOVEMENT_GOAL: f64 = 1.1;

/// The report as Markdown: the ring, the changes, gossip; timings last.
pub fn tables(report: &ScaleReport, timings: &ScaleTimings) -> String {
    let mut out = String::new();
    ring_table(&mut out, report);
    changes_table(&mut out, &report.ring, timings);
    gossip_table(&mut out, report);
    timings_line(&mut out, timings);
    out
}

fn ring_table(out: &mut String, report: &ScaleReport) {
    let ring = &report.ring;
    let (b, z, m) = (&ring.balance, &ring.zone_spread, &ring.metadata);
    let _ = writeln!(
        out,
        "Ring: {} nodes in {} zones, weights {:?}, Q = {}, N = {}, seed {}\n",
        ring.nodes, ring.zones, report.weights, ring.partitions, ring.replicas, report.seed
    );
    let _ = writeln!(out, "| figure | value | goal |\n|---|---|---|");
    let _ = writeln!(
        out,
        "| partitions per node, max / mean | {} / {:.1} = {:.3} | ≤ {BALANCE_GOAL} |",
        b.max_partitions, b.mean_partitions, b.max_over_mean
    );
    let _ = writeln!(
        out,
        "| load (owned / weighted fair share), max · min | {:.3} · {:.3} | max ≤ {BALANCE_GOAL} ({}) |",
        b.max_load,
        b.min_load,
        verdict(b.max_load <= BALANCE_GOAL)
    );
    for w in &b.by_weight {
        let _ = writeln!(
            out,
            "| weight {}: {} nodes, mean partitions (fair share) | {:.2} ({:.2}) | |",
            w.weight, w.nodes, w.mean_partitions, w.fair_partitions
        );
    }
    let _ = writeln!(
        out,
        "| partitions whose {} home replicas span {} distinct zones | {} of {} ({:.2}%); fewest zones {} | all |",
        ring.replicas,
        z.target_zones,
        z.partitions_on_target,
        ring.partitions,
        100.0 * z.fraction_on_target,
        z.fewest_zones
    );
    let _ = writeln!(
        out,
        "| windows of N consecutive partitions breaking the spread | {} | 0 |",
        z.spread_violations
    );
    let _ = writeln!(
        out,
        "| ring metadata per node: wire form (postcard) · in memory (est.) | {} · {} | |",
        bytes(m.wire_bytes as u64),
        bytes(m.memory_bytes_estimate as u64)
    );
    let _ = writeln!(
        out,
        "| bytes fetched cluster-wide per ring version (wire × (n − 1)) | {} | |\n",
        bytes(m.fetch_bytes_per_version)
    );
}

fn changes_table(out: &mut String, ring: &RingReport, timings: &ScaleTimings) {
    let _ = writeln!(
        out,
        "| change | owners moved | optimum (fair share) | × optimum | of Q | home replicas gained | optimum (N × fair) | × optimum | claim |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (i, c) in ring.changes.iter().enumerate() {
        let claim_ms = timings
            .ring
            .change_claim_ms
            .get(i)
            .copied()
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| {} {} (w {}) | {} | {:.1} | {:.3} | {:.3}% | {} | {:.1} | {:.3} | {claim_ms:.0} ms |",
            kind(c.kind),
            c.node,
            c.weight,
            c.owners_moved,
            c.optimum,
            c.ratio,
            100.0 * c.fraction_moved,
            c.replicas_gained,
            c.replica_optimum,
            c.replica_ratio
        );
    }
    let worst = worst_ratio(&ring.changes);
    let _ = writeln!(
        out,
        "\nWorst owners-moved ratio {worst:.3} (goal ≤ {MOVEMENT_GOAL}: {}).\n",
        verdict(worst <= MOVEMENT_GOAL)
    );
}

/// The largest owners-moved ratio of the changes (0 when there are none).
pub fn worst_ratio(changes: &[Movement]) -> f64 {
    changes.iter().map(|c| c.ratio).fold(0.0, f64::max)
}

fn kind(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Join => "join",
        ChangeKind::Leave => "leave",
    }
}

fn gossip_table(out: &mut String, report: &ScaleReport) {
    if report.gossip.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "Gossip: rounds (gossip intervals) until every node knows one node's change\n"
    );
    let _ = writeln!(
        out,
        "| nodes | log2 n | chitchat: bootstrap | chitchat: change mean (min–max, k) | model: change mean (min–max, runs) | full-view Syn bytes: computed · measured | gossip sent per node per round |\n|---|---|---|---|---|---|---|"
    );
    for row in &report.gossip {
        gossip_line(out, row, report.mtu_bytes);
    }
    let _ = writeln!(
        out,
        "\nchitchat gossips in clusters of up to {} nodes with {}-byte node names ({} with \
         64-byte names): past that a Syn outgrows a {}-byte datagram, or nodes stop learning \
         nodes, keeping at least {} bytes of each SynAck for its delta.\n",
        report.gossip_limit_nodes,
        report.id_bytes,
        report.gossip_limit_nodes_longest_ids,
        report.mtu_bytes,
        DELTA_ROOM_MIN_BYTES + DELTA_ROOM_MARGIN_BYTES
    );
}

fn gossip_line(out: &mut String, row: &GossipRow, mtu_bytes: usize) {
    let (bootstrap, change, sent) = match &row.chitchat {
        Some(Ok(c)) => (
            format!("{:.1}", c.bootstrap_rounds),
            format!(
                "{:.2} ({:.2}–{:.2}, {})",
                c.change_rounds.mean,
                c.change_rounds.min,
                c.change_rounds.max,
                c.change_rounds.samples
            ),
            bytes(c.bytes_per_node_round),
        ),
        Some(Err(e)) => ("failed".into(), e.clone(), "–".into()),
        None => ("–".into(), "–".into(), "–".into()),
    };
    let model = row.model.map_or("–".into(), |s| {
        format!("{:.2} ({:.2}–{:.2}, {})", s.mean, s.min, s.max, s.samples)
    });
    let fits = if row.full_view_syn_bytes <= mtu_bytes {
        ""
    } else {
        " (too big)"
    };
    let measured = match &row.chitchat {
        Some(Ok(c)) => format!(" · {}", c.largest_syn_bytes),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "| {} | {:.1} | {bootstrap} | {change} | {model} | {}{measured}{fits} | {sent} |",
        row.nodes, row.log2_nodes, row.full_view_syn_bytes
    );
}

fn timings_line(out: &mut String, timings: &ScaleTimings) {
    let chitchat: Vec<String> = timings
        .chitchat_seconds
        .iter()
        .map(|(n, s)| format!("{n} nodes {s:.1} s"))
        .collect();
    let _ = writeln!(
        out,
        "Time: fresh claim {:.0} ms; chitchat simulation {}; total {:.1} s.",
        timings.ring.fresh_claim_ms,
        if chitchat.is_empty() {
            "not run".to_string()
        } else {
            chitchat.join(", ")
        },
        timings.total_seconds
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// Bytes with a binary unit.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The charts, as (file name, SVG document).
pub fn charts(report: &ScaleReport) -> Vec<(&'static str, String)> {
    let mut charts = vec![("partitions-per-node.svg", render(&load_chart(report)))];
    if !report.gossip.is_empty() {
        charts.push(("gossip-rounds.svg", render(&rounds_chart(report))));
        charts.push(("gossip-datagram.svg", render(&datagram_chart(report))));
    }
    charts
}

fn load_chart(report: &ScaleReport) -> Chart {
    let ring = &report.ring;
    let loads = &ring.balance.loads;
    Chart {
        title: format!(
            "Load per node: {} nodes, {} zones, Q = {}",
            ring.nodes, ring.zones, ring.partitions
        ),
        x_label: "nodes, most loaded first".into(),
        y_label: "partitions owned / weighted fair share".into(),
        y_range: Some((0.9, 1.1)),
        series: vec![Series {
            name: "load".into(),
            points: loads
                .iter()
                .enumerate()
                .map(|(i, &l)| ((i + 1) as f64, l))
                .collect(),
            ..Series::default()
        }],
        rules: vec![
            Rule {
                y: BALANCE_GOAL,
                label: format!("goal ≤ {BALANCE_GOAL}"),
            },
            Rule {
                y: 1.0,
                label: "fair share".into(),
            },
        ],
        ..Chart::default()
    }
}

fn size_ticks(report: &ScaleReport) -> Vec<f64> {
    report.gossip.iter().map(|r| r.nodes as f64).collect()
}

fn rounds_chart(report: &ScaleReport) -> Chart {
    let chitchat: Vec<(usize, f64, f64, f64)> = report
        .gossip
        .iter()
        .filter_map(|r| match &r.chitchat {
            Some(Ok(c)) => Some((
                r.nodes,
                c.change_rounds.mean,
                c.change_rounds.min,
                c.change_rounds.max,
            )),
            _ => None,
        })
        .collect();
    let model: Vec<(usize, f64, f64, f64)> = report
        .gossip
        .iter()
        .filter_map(|r| r.model.map(|s| (r.nodes, s.mean, s.min, s.max)))
        .collect();
    let series_of = |name: &str, rows: &[(usize, f64, f64, f64)], dashed: bool| Series {
        name: name.into(),
        points: rows.iter().map(|r| (r.0 as f64, r.1)).collect(),
        whiskers: rows.iter().map(|r| (r.0 as f64, r.2, r.3)).collect(),
        markers: true,
        dashed,
    };
    Chart {
        title: "Rounds until every node knows a change (straight on log x = O(log n))".into(),
        x_label: "nodes (log scale)".into(),
        y_label: "gossip rounds (mean, min–max)".into(),
        x_log: true,
        x_ticks: size_ticks(report),
        series: vec![
            series_of("chitchat 0.13, simulated network", &chitchat, false),
            series_of("seeded model", &model, true),
        ],
        ..Chart::default()
    }
}

fn datagram_chart(report: &ScaleReport) -> Chart {
    // Far enough past the limit to show the crossing.
    let largest = report
        .gossip
        .iter()
        .map(|r| r.nodes)
        .max()
        .unwrap_or(0)
        .max(report.gossip_limit_nodes * 3 / 2);
    let step = (largest / 40).max(1);
    let syn_kib = |n: usize| full_view_syn_bytes(n, report.id_bytes) as f64 / 1024.0;
    let points = (1..=largest.div_ceil(step))
        .map(|k| k * step)
        .map(|n| (n as f64, syn_kib(n)))
        .collect();
    let measured = report
        .gossip
        .iter()
        .filter_map(|r| match &r.chitchat {
            Some(Ok(c)) => Some((r.nodes as f64, c.largest_syn_bytes as f64 / 1024.0)),
            _ => None,
        })
        .collect();
    Chart {
        title: format!(
            "Every Syn carries the whole digest: gossip breaks past {} nodes",
            report.gossip_limit_nodes
        ),
        x_label: "nodes".into(),
        y_label: "full-view Syn (KiB)".into(),
        series: vec![
            Series {
                name: format!("computed (v0 wire format, {}-byte names)", report.id_bytes),
                points,
                ..Series::default()
            },
            Series {
                name: "largest Syn measured on chitchat".into(),
                points: measured,
                markers: true,
                ..Series::default()
            },
        ],
        rules: vec![Rule {
            y: report.mtu_bytes as f64 / 1024.0,
            label: format!("datagram, {} bytes", report.mtu_bytes),
        }],
        ..Chart::default()
    }
}
