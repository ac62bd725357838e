//! The ring measurements at a size that runs in seconds in a debug build: the goals the scale
//! simulator reports (balance ≤ 1.05, movement ≤ 1.1× optimum, home replicas in distinct
//! zones) hold, the figures agree with the ring they describe, and runs replay from the seed.

use ringkv_core::ring::{Ring, RingParams};
use ringkv_sim::SimError;
use ringkv_sim::cluster::ClusterShape;
use ringkv_sim::ring_scale::{ChangeKind, RingReport, measure, owned_counts};

fn shape(nodes: usize, zones: usize, weights: &[u32]) -> ClusterShape {
    ClusterShape {
        nodes,
        zones,
        weights: weights.to_vec(),
    }
}

const Q4096_N3: RingParams = RingParams {
    partitions: 4096,
    n: 3,
};

fn report(shape: &ClusterShape, changes: usize, seed: u64) -> RingReport {
    measure(shape, Q4096_N3, changes, seed)
        .expect("a valid cluster")
        .0
}

#[test]
fn a_hundred_equal_nodes_are_balanced_within_five_percent() {
    let r = report(&shape(100, 10, &[1]), 1, 1);
    let b = &r.balance;
    assert!(b.max_over_mean <= 1.05, "max/mean {}", b.max_over_mean);
    assert!(b.max_load <= 1.05 && b.min_load >= 0.95, "{b:?}");
    // 4096 / 100 = 40.96: every node owns 40 or 41.
    assert_eq!((b.min_partitions, b.max_partitions), (40, 41));
    assert_eq!(b.loads.len(), 100);
    assert!(
        b.loads.windows(2).all(|w| w[0] >= w[1]),
        "loads sorted, largest first"
    );
}

#[test]
fn weighted_nodes_get_their_weighted_share() {
    let r = report(&shape(60, 6, &[1, 2]), 1, 1);
    let b = &r.balance;
    assert_eq!(b.by_weight.len(), 2);
    for w in &b.by_weight {
        assert_eq!(w.nodes, 30, "every zone holds the same mix: {w:?}");
        assert!(
            (w.mean_partitions - w.fair_partitions).abs() < 1.0,
            "weight {}: mean {} vs fair {}",
            w.weight,
            w.mean_partitions,
            w.fair_partitions
        );
    }
    let heavy = &b.by_weight[1];
    assert!((heavy.fair_partitions - 2.0 * b.by_weight[0].fair_partitions).abs() < 1e-9);
    assert!(b.max_load <= 1.05, "max load {}", b.max_load);
    // max/mean partitions is not the balance figure with weights: heavy nodes own ~2x.
    assert!(b.max_over_mean > 1.3);
}

#[test]
fn joins_and_leaves_move_at_most_a_tenth_more_than_the_optimum() {
    let r = report(&shape(100, 10, &[1]), 3, 7);
    let joins: Vec<_> = r
        .changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Join)
        .collect();
    let leaves: Vec<_> = r
        .changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Leave)
        .collect();
    assert_eq!((joins.len(), leaves.len()), (3, 3));
    assert_eq!(
        joins.iter().map(|c| c.node.as_str()).collect::<Vec<_>>(),
        ["n0100", "n0101", "n0102"],
        "joiners are the next indexes"
    );
    for c in &r.changes {
        assert!(c.ratio <= 1.1, "{c:?}");
        // The optimum cannot be beaten by more than quota rounding (one partition).
        assert!(c.owners_moved as f64 >= c.optimum.floor(), "{c:?}");
        assert!((c.fraction_moved - c.owners_moved as f64 / 4096.0).abs() < 1e-12);
        // Every moved owner makes at least one node a new home replica.
        assert!(c.replicas_gained >= c.owners_moved, "{c:?}");
        assert!((c.replica_optimum - 3.0 * c.optimum).abs() < 1e-9);
    }
    // A join of one equal node to 100: its share is 4096/101.
    assert!((joins[0].optimum - 4096.0 / 101.0).abs() < 1e-9);
    // A leave of one of 100 equal nodes: its share was 4096/100.
    assert!((leaves[0].optimum - 40.96).abs() < 1e-9);
}

#[test]
fn the_moved_count_is_the_owner_difference_of_the_real_rings() {
    let s = shape(40, 4, &[1]);
    let r = report(&s, 1, 3);
    let before = Ring::claim(None, &s.members(40), Q4096_N3).unwrap();
    let after = Ring::claim(Some(&before), &s.members(41), Q4096_N3).unwrap();
    let differing = before
        .owners()
        .zip(after.owners())
        .filter(|(a, b)| a.1 != b.1)
        .count();
    assert_eq!(r.changes[0].owners_moved, differing);
    assert_eq!(
        owned_counts(&after)[40],
        after.partitions_owned(&s.member(40).id)
    );
}

#[test]
fn home_replicas_span_as_many_zones_as_there_can_be() {
    let r = report(&shape(100, 10, &[1]), 0, 1);
    let z = &r.zone_spread;
    assert_eq!(z.target_zones, 3);
    assert_eq!(z.partitions_on_target, 4096);
    assert_eq!(z.fewest_zones, 3);
    assert_eq!(z.fraction_on_target, 1.0);
    // With two zones and N = 3, two zones is the most a home list can span.
    let r = report(&shape(10, 2, &[1]), 0, 1);
    assert_eq!(r.zone_spread.target_zones, 2);
    assert_eq!(r.zone_spread.partitions_on_target, 4096);
}

#[test]
fn ring_metadata_is_the_wire_form_and_stays_near_two_bytes_per_partition() {
    let s = shape(100, 10, &[1]);
    let r = report(&s, 0, 1);
    let ring = Ring::claim(None, &s.members(100), Q4096_N3).unwrap();
    let wire = postcard::to_allocvec(&ring).unwrap().len();
    assert_eq!(r.metadata.wire_bytes, wire);
    assert!(wire <= 2 * 4096 + 32 * 100 + 16, "{wire} bytes");
    assert_eq!(r.metadata.fetch_bytes_per_version, wire as u64 * 99);
    assert!(r.metadata.memory_bytes_estimate > 2 * 4096 * (1 + 3));
}

#[test]
fn a_run_replays_from_its_seed() {
    let s = shape(50, 5, &[1, 3]);
    assert_eq!(report(&s, 2, 42), report(&s, 2, 42));
    let leavers = |seed| -> Vec<String> {
        report(&s, 2, seed)
            .changes
            .into_iter()
            .filter(|c| c.kind == ChangeKind::Leave)
            .map(|c| c.node)
            .collect()
    };
    assert_ne!(
        (1..6).map(leavers).collect::<Vec<_>>(),
        vec![leavers(1); 5],
        "the seed picks the leavers"
    );
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let invalid = |s: ClusterShape, params: RingParams| {
        matches!(
            measure(&s, params, 1, 1),
            Err(SimError::Invalid(_) | SimError::Ring(_))
        )
    };
    assert!(invalid(shape(0, 1, &[1]), Q4096_N3));
    assert!(invalid(shape(10, 0, &[1]), Q4096_N3));
    assert!(invalid(shape(10, 11, &[1]), Q4096_N3));
    assert!(invalid(shape(10, 2, &[]), Q4096_N3));
    assert!(invalid(shape(10, 2, &[0]), Q4096_N3));
    assert!(invalid(
        shape(10, 2, &[1]),
        RingParams {
            partitions: 1000,
            n: 3
        }
    ));
    assert!(invalid(
        shape(10, 2, &[1]),
        RingParams {
            partitions: 1024,
            n: 0
        }
    ));
    assert!(invalid(shape(70_000, 2, &[1]), Q4096_N3));
}
