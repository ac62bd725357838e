//! Property tests for the ring's laws (see the `ring` module docs).
//!
//! Bounds checked here (N = replicas, e = `excess`, see below):
//! - spread, fresh ring: `e == 0` ⇒ at most N-1 violating windows (the wrap-around where Q is
//!   not a multiple of the stripe); otherwise at most 2·(N-1)·(e+1).
//! - join: moved ≤ base + base/20 with base = the new node's quota + g, where g counts the
//!   partitions existing nodes gained through quota rounding (usually 0); so moved ≤
//!   1.05·(⌈fair share⌉ + g) ≤ 1.1·fair share + 2 + 1.05·g. At most g + base/20 moves go
//!   elsewhere than to the new node.
//! - leave: every moved partition belonged to the leaver or to a node whose quota fell by
//!   rounding, except at most base/20 repair moves (base = partitions that had to move).

use proptest::prelude::*;
use ringkv_core::NodeId;
use ringkv_core::ring::{Member, REPAIR_BUDGET_DIVISOR, Ring, RingParams};

fn member(i: usize, weight: u32, zone: usize) -> Member {
    Member {
        id: NodeId::new(format!("n{i:03}")).unwrap(),
        weight,
        zone: format!("z{zone}"),
    }
}

/// How far the counts exceed what a violation-free ring can hold: a node (or zone) owning c
/// partitions has at most floor(Q/d) gaps of d or more between them, so at least
/// c - floor(Q/d) of its gaps are short, and each short gap breaks a window.
fn excess(ring: &Ring) -> usize {
    let q = ring.params().partitions as usize;
    let n = usize::from(ring.params().n);
    let members = ring.members();
    let cap_node = q / n.min(members.len()).min(q);
    let mut total = 0;
    let mut zones = std::collections::BTreeMap::<&str, usize>::new();
    for m in members {
        let c = ring.partitions_owned(&m.id);
        total += c.saturating_sub(cap_node);
        *zones.entry(m.zone.as_str()).or_default() += c;
    }
    if zones.len() >= n {
        let cap_zone = q / n.min(q);
        total += zones
            .values()
            .map(|&c| c.saturating_sub(cap_zone))
            .sum::<usize>();
    }
    total
}

fn moved(a: &Ring, b: &Ring) -> Vec<(NodeId, NodeId)> {
    a.owners()
        .zip(b.owners())
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, y)| (x.1.clone(), y.1.clone()))
        .collect()
}

/// Partitions nodes in both rings gained (or lost, with `gained == false`) in count.
fn count_drift(a: &Ring, b: &Ring, gained: bool) -> usize {
    a.members()
        .iter()
        .filter(|m| b.member(&m.id).is_some())
        .map(|m| {
            let (x, y) = (a.partitions_owned(&m.id), b.partitions_owned(&m.id));
            if gained {
                y.saturating_sub(x)
            } else {
                x.saturating_sub(y)
            }
        })
        .sum()
}

prop_compose! {
    fn cluster(max_members: usize)(
        specs in prop::collection::vec((1u32..=4, 0usize..5), 1..=max_members),
        zones in 1usize..=5,
        n in 1u8..=5,
        q_bits in 4u32..=12,
    ) -> (Vec<Member>, RingParams) {
        let members = specs.iter().enumerate().map(|(i, &(w, z))| member(i, w, z % zones)).collect();
        (members, RingParams { partitions: 1 << q_bits, n })
    }
}

proptest! {
    // Small rings are where a greedy layout runs out of room near the end; many cases, cheap.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn small_rings_without_excess_keep_the_spread_everywhere(
        specs in prop::collection::vec((1u32..=4, 0usize..6), 1..=12),
        zones in 1usize..=6,
        n in 2u8..=5,
        q_bits in 3u32..=7,
    ) {
        let members: Vec<Member> =
            specs.iter().enumerate().map(|(i, &(w, z))| member(i, w, z % zones)).collect();
        let params = RingParams { partitions: 1 << q_bits, n };
        let ring = Ring::claim(None, &members, params).unwrap();
        if excess(&ring) == 0 {
            prop_assert_eq!(ring.spread_violations(), 0);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn shares_are_within_one_of_the_weighted_share((members, params) in cluster(12)) {
        let ring = Ring::claim(None, &members, params).unwrap();
        let total: u32 = members.iter().map(|m| m.weight).sum();
        for m in &members {
            let exact = f64::from(params.partitions) * f64::from(m.weight) / f64::from(total);
            let owned = ring.partitions_owned(&m.id) as f64;
            prop_assert!((owned - exact).abs() < 1.0, "{} owns {owned}, share {exact}", m.id);
        }
    }

    #[test]
    fn home_lists_hold_distinct_nodes_in_distinct_zones((members, params) in cluster(12)) {
        let ring = Ring::claim(None, &members, params).unwrap();
        let zones: std::collections::BTreeSet<&str> = members.iter().map(|m| m.zone.as_str()).collect();
        let want = usize::from(params.n).min(members.len());
        for (p, owner) in ring.owners() {
            let list = ring.preference_list(p);
            let home: Vec<&NodeId> = list.home().collect();
            let mut distinct = home.clone();
            distinct.sort();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), want);
            let mut home_zones: Vec<&str> = home.iter().map(|h| ring.member(h).unwrap().zone.as_str()).collect();
            home_zones.sort();
            home_zones.dedup();
            prop_assert_eq!(home_zones.len(), want.min(zones.len()));
            prop_assert!(home.contains(&owner));
            prop_assert!(home.iter().all(|h| ring.is_home(p, h)));
            // Fallbacks walk the ring; checking a few partitions keeps the test fast.
            if p.index() >= 8 {
                continue;
            }
            let fallbacks: Vec<&NodeId> = list.fallbacks().collect();
            prop_assert_eq!(fallbacks.len() + home.len(), members.len());
            prop_assert!(fallbacks.iter().all(|f| !home.contains(f)));
        }
    }

    #[test]
    fn fallbacks_are_the_other_members_in_clockwise_order((members, params) in cluster(12)) {
        let ring = Ring::claim(None, &members, params).unwrap();
        let owners: Vec<&NodeId> = ring.owners().map(|(_, o)| o).collect();
        let q = owners.len();
        // The first and last partitions: the walk wraps around the ring's end from the latter.
        for (p, _) in ring.owners().filter(|(p, _)| (p.index() as usize) < 4 || p.index() as usize + 4 >= q) {
            let list = ring.preference_list(p);
            let mut seen: Vec<&NodeId> = list.home().collect();
            let mut want = Vec::new();
            let start = p.index() as usize;
            let clockwise = (0..q).map(|k| owners[(start + k) % q]);
            for node in clockwise.chain(ring.members().iter().map(|m| &m.id)) {
                if !seen.contains(&node) {
                    seen.push(node);
                    want.push(node);
                }
            }
            prop_assert_eq!(list.fallbacks().collect::<Vec<_>>(), want);
        }
    }

    #[test]
    fn spread_violations_stay_within_the_bound((members, params) in cluster(12)) {
        let ring = Ring::claim(None, &members, params).unwrap();
        let (v, e, n) = (ring.spread_violations(), excess(&ring), usize::from(params.n));
        if e == 0 {
            prop_assert_eq!(v, 0, "violations with no excess");
        } else {
            prop_assert!(v <= 2 * (n - 1) * (e + 1), "{v} violations, excess {e}");
        }
    }

    #[test]
    fn a_join_moves_about_the_new_nodes_share(
        (members, params) in cluster(12),
        weight in 1u32..=4,
        zone in 0usize..6,
    ) {
        let before = Ring::claim(None, &members, params).unwrap();
        let mut more = members.clone();
        more.push(member(99, weight, zone));
        let after = Ring::claim(Some(&before), &more, params).unwrap();
        let newcomer = &more.last().unwrap().id;
        let g = count_drift(&before, &after, true);
        let base = after.partitions_owned(newcomer) + g;
        let moves = moved(&before, &after);
        prop_assert!(moves.len() <= base + base / REPAIR_BUDGET_DIVISOR, "{} moves, base {base}", moves.len());
        let total: u32 = more.iter().map(|m| m.weight).sum();
        let fair = f64::from(params.partitions) * f64::from(weight) / f64::from(total);
        prop_assert!(moves.len() as f64 <= 1.1 * fair + 2.0 + 1.05 * g as f64);
        let elsewhere = moves.iter().filter(|(_, to)| to != newcomer).count();
        prop_assert!(elsewhere <= g + base / REPAIR_BUDGET_DIVISOR, "{elsewhere} moves not to the newcomer");
    }

    #[test]
    fn a_leave_moves_only_the_leavers_partitions((members, params) in cluster(12), pick in any::<prop::sample::Index>()) {
        prop_assume!(members.len() > 1);
        let before = Ring::claim(None, &members, params).unwrap();
        let mut fewer = members.clone();
        let leaver = fewer.remove(pick.index(members.len())).id;
        let after = Ring::claim(Some(&before), &fewer, params).unwrap();
        let lost = count_drift(&before, &after, false);
        let base = before.partitions_owned(&leaver) + lost;
        let moves = moved(&before, &after);
        prop_assert!(moves.len() <= base + base / REPAIR_BUDGET_DIVISOR);
        let from_others = moves.iter().filter(|(from, _)| *from != leaver).count();
        prop_assert!(from_others <= lost + base / REPAIR_BUDGET_DIVISOR, "{from_others} moves from stayers");
        prop_assert_eq!(after.partitions_owned(&leaver), 0);
    }

    #[test]
    fn claim_ignores_member_order((members, params) in cluster(12), seed in any::<u64>()) {
        let ring = Ring::claim(None, &members, params).unwrap();
        let mut shuffled = members.clone();
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(&Ring::claim(None, &shuffled, params).unwrap(), &ring);
        let mut more = shuffled.clone();
        more.push(member(99, 2, 1));
        let a = Ring::claim(Some(&ring), &more, params).unwrap();
        more.reverse();
        prop_assert_eq!(Ring::claim(Some(&ring), &more, params).unwrap(), a);
    }

    #[test]
    fn postcard_round_trips((members, params) in cluster(12)) {
        let ring = Ring::claim(None, &members, params).unwrap();
        let bytes = postcard::to_allocvec(&ring).unwrap();
        prop_assert!(bytes.len() <= 2 * params.partitions as usize + 32 * members.len() + 16);
        prop_assert_eq!(postcard::from_bytes::<Ring>(&bytes).unwrap(), ring);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = postcard::from_bytes::<Ring>(&bytes);
    }

    #[test]
    fn mutated_rings_never_panic((members, params) in cluster(4), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let ring = Ring::claim(None, &members, params).unwrap();
        let mut bytes = postcard::to_allocvec(&ring).unwrap();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(decoded) = postcard::from_bytes::<Ring>(&bytes) {
            // Whatever decodes is a valid ring: its home lists work.
            let p = decoded.owners().next().unwrap().0;
            prop_assert!(decoded.preference_list(p).home().count() >= 1);
        }
    }
}

/// Equal weights in as many zones as N: a perfect stripe exists only up to the wrap-around.
#[test]
fn three_nodes_three_replicas_break_only_the_wrap() {
    let members: Vec<Member> = (0..3).map(|i| member(i, 1, i)).collect();
    let ring = Ring::claim(
        None,
        &members,
        RingParams {
            partitions: 1024,
            n: 3,
        },
    )
    .unwrap();
    assert!(
        ring.spread_violations() <= 2,
        "{}",
        ring.spread_violations()
    );
}

/// A larger fixed case: 64 nodes in 8 zones, Q = 8192, joined one at a time from 60.
#[test]
fn large_ring_grows_cleanly() {
    let params = RingParams {
        partitions: 8192,
        n: 3,
    };
    let members: Vec<Member> = (0..64)
        .map(|i| member(i, 1 + (i % 2) as u32, i % 8))
        .collect();
    let mut ring = Ring::claim(None, &members[..60], params).unwrap();
    assert_eq!(ring.spread_violations(), 0);
    for k in 61..=64 {
        let next = Ring::claim(Some(&ring), &members[..k], params).unwrap();
        let total: u32 = members[..k].iter().map(|m| m.weight).sum();
        let fair = 8192.0 * f64::from(members[k - 1].weight) / f64::from(total);
        assert!(
            moved(&ring, &next).len() as f64 <= 1.1 * fair + 2.0,
            "join {k}"
        );
        ring = next;
    }
}

#[test]
fn a_ring_round_trips_through_json() {
    use ringkv_core::NodeId;
    use ringkv_core::ring::{Member, Ring, RingParams};
    let members: Vec<Member> = (0..5)
        .map(|i| Member {
            id: NodeId::new(format!("n{i}")).unwrap(),
            weight: 1 + i % 2,
            zone: format!("z{}", i % 3),
        })
        .collect();
    let ring = Ring::claim(
        None,
        &members,
        RingParams {
            partitions: 64,
            n: 3,
        },
    )
    .unwrap();
    let json = serde_json::to_string(&ring).unwrap();
    let back: Ring = serde_json::from_str(&json).unwrap();
    assert_eq!(back, ring);
    let mut broken: serde_json::Value = serde_json::from_str(&json).unwrap();
    broken["owners"] = serde_json::json!([99]);
    assert!(
        serde_json::from_value::<Ring>(broken).is_err(),
        "a bad owner table is refused"
    );
}
