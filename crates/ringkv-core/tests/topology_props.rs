//! Property tests for the topology's laws (see the `topology` module docs): random joins,
//! leaves and handoff confirmations, in any interleaving, never let a partition be served by a
//! node that does not hold its data (but for a node removed while down for good, until the
//! next transition removes it), and every transition ends, also when a gaining node is removed
//! in the middle of it.

use std::collections::BTreeSet;

use proptest::prelude::*;
use ringkv_core::NodeId;
use ringkv_core::PartitionId;
use ringkv_core::ring::{Member, Ring, RingParams};
use ringkv_core::topology::Topology;

const Q: u32 = 64;

fn member(i: u8, zone: u8, weight: u32) -> Member {
    Member {
        id: NodeId::new(format!("n{i}")).unwrap(),
        weight,
        zone: format!("z{zone}"),
    }
}

#[derive(Debug, Clone)]
enum Step {
    Join {
        id: u8,
        zone: u8,
        weight: u32,
    },
    Leave(u8),
    /// A member is removed because it is down for good: asked to leave, then released from
    /// the transition, as the claimant does for a leaving receiver that is not live.
    LeaveDead(u8),
    /// A gaining node confirms some of the partitions it awaits (a fraction by `pick`).
    Confirm {
        node: u8,
        pick: u8,
    },
    /// The claimant's round: commit a finished transition or open the next one.
    Claim,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..10, 0u8..3, 1u32..3).prop_map(|(id, zone, weight)| Step::Join { id, zone, weight }),
        (0u8..10).prop_map(Step::Leave),
        (0u8..10).prop_map(Step::LeaveDead),
        (0u8..10, any::<u8>()).prop_map(|(node, pick)| Step::Confirm { node, pick }),
        Just(Step::Claim),
        Just(Step::Claim),
    ]
}

/// Which nodes hold each partition's data: the founding ring's home replicas, then every
/// node that confirmed the partition (it received it).
struct Holders(Vec<BTreeSet<NodeId>>);

impl Holders {
    fn of(ring: &Ring) -> Holders {
        Holders(
            (0..Q)
                .map(|i| {
                    let p = PartitionId::new(i, Q).unwrap();
                    ring.preference_list(p).home().cloned().collect()
                })
                .collect(),
        )
    }
}

/// The laws that hold at every step. `released`: nodes removed while down for good, which
/// may be listed as home replicas of partitions they never received until the next
/// transition removes them; every other serving home replica holds the partition's data.
fn check(
    t: &Topology,
    holders: &Holders,
    released: &BTreeSet<NodeId>,
) -> Result<(), TestCaseError> {
    for i in 0..Q {
        let p = PartitionId::new(i, Q).unwrap();
        let homes = t.home(p);
        for node in &homes {
            prop_assert!(
                holders.0[i as usize].contains(node) || released.contains(node),
                "partition {i} served by {node}, which never received it"
            );
        }
        prop_assert!(
            homes.iter().all(|n| released.contains(n))
                || homes
                    .iter()
                    .any(|n| holders.0[i as usize].contains(n) && !released.contains(n)),
            "partition {i} served by no node holding it (and not all of them are gone)"
        );
        for node in released {
            prop_assert!(
                !t.awaits(p, node),
                "partition {i} still awaits released {node}"
            );
        }
        if let Some(target) = t.target()
            && t.is_pending(p)
        {
            let incoming = t.incoming(p);
            for node in target.preference_list(p).home() {
                prop_assert!(
                    t.committed().is_home(p, node) || incoming.contains(node),
                    "pending partition {i}: target home {node} receives no writes"
                );
            }
        }
    }
    for node in t.leaving() {
        prop_assert!(t.is_member(node), "{node} is leaving but no member");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_interleaving_keeps_reads_on_nodes_that_hold_the_data(steps in prop::collection::vec(step(), 1..60)) {
        let params = RingParams { partitions: Q, n: 3 };
        let founders = [member(0, 0, 1), member(1, 1, 1), member(2, 2, 1)];
        let mut t = Topology::settled(Ring::claim(None, &founders, params).unwrap());
        let mut holders = Holders::of(t.committed());
        let mut waiting: Vec<Member> = Vec::new();
        let mut released: BTreeSet<NodeId> = BTreeSet::new();
        for step in steps {
            match step {
                Step::Join { id, zone, weight } => {
                    let m = member(id, zone, weight);
                    if !t.is_member(&m.id) && !waiting.iter().any(|w| w.id == m.id) {
                        waiting.push(m);
                    }
                }
                Step::Leave(id) => {
                    let id = NodeId::new(format!("n{id}")).unwrap();
                    let _ = t.request_leave(&id);
                }
                Step::LeaveDead(id) => {
                    let id = NodeId::new(format!("n{id}")).unwrap();
                    if t.request_leave(&id).is_ok() || t.leaving().contains(&id) {
                        let before = t.clone();
                        if t.release_receiver(&id) {
                            // Abandoning the transition is safe only if nothing had switched:
                            // then no partition's serving home replicas change.
                            for i in 0..Q {
                                let p = PartitionId::new(i, Q).unwrap();
                                if !before.is_pending(p) {
                                    // The set: a partition whose home replicas only change order moves no data.
                                    let set = |t: &Topology| t.home(p).into_iter().collect::<BTreeSet<_>>();
                                    prop_assert_eq!(set(&t), set(&before), "switched partition {} went back", i);
                                }
                            }
                        }
                        released.insert(id);
                    }
                }
                Step::Confirm { node, pick } => {
                    let node = NodeId::new(format!("n{node}")).unwrap();
                    let awaiting = t.awaiting(&node);
                    let chosen: Vec<u32> = awaiting
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| (*k as u8).wrapping_mul(37) <= pick)
                        .map(|(_, p)| p.index())
                        .collect();
                    let before = t.transition().map(|tr| tr.pending_transfers());
                    t.record_received(&node, &chosen);
                    for p in &chosen {
                        holders.0[*p as usize].insert(node.clone());
                    }
                    let after = t.transition().map(|tr| tr.pending_transfers());
                    prop_assert!(after <= before, "confirmations only remove pending transfers");
                }
                Step::Claim => {
                    t.finish_if_done();
                    if let Some(next) = t.begin_transition(&waiting).unwrap() {
                        waiting.retain(|w| !next.is_member(&w.id));
                        t = next;
                    }
                }
            }
            released.retain(|n| t.is_member(n));
            check(&t, &holders, &released)?;
        }
        // Every transition ends once each gaining node confirmed what it awaits.
        for _ in 0..4 {
            for m in t.members().iter().map(|m| m.id.clone()).collect::<Vec<_>>() {
                let all: Vec<u32> = t.awaiting(&m).iter().map(|p| p.index()).collect();
                for p in &all {
                    holders.0[*p as usize].insert(m.clone());
                }
                t.record_received(&m, &all);
            }
            t.finish_if_done();
            if let Some(next) = t.begin_transition(&[]).unwrap() {
                t = next;
            }
            released.retain(|n| t.is_member(n));
            check(&t, &holders, &released)?;
        }
        prop_assert!(t.transition().is_none(), "the transition never ended");
        prop_assert!(t.leaving().is_empty(), "a leave never completed: {:?}", t.leaving());
    }
}
