//! Hint delivery between nodes running in this process on loopback with the in-memory
//! engine, a target's engine told to refuse writes to one key:
//! - a hint its target answers but refuses does not hold back the target's other hints: the
//!   fallback skips it for the rest of the pass, delivers the others, keeps the refused one
//!   and offers it again on the next pass;
//! - a hint over the inter-node frame limit (never sent) does not hold them back either;
//! - the hints of a node that is no longer a member go to their partitions' holders; one that
//!   is down does not hold back the others, and gets its writes as hints kept by a live holder;
//! - a node that left the ring is not reported `left` (safe to stop) while it still holds a
//!   hint, and once it is, it refuses the replica and hinted writes a peer with an older ring
//!   still sends it (else it would count toward that peer's quorum and be stopped), and does
//!   not answer a read of a key it does not hold.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Running, eventually, settled_cluster};
use ringkv_core::{NodeId, PartitionId, ReplicaId, VersionSet, VersionVector, key_hash};
use ringkv_node::node::Node;
use ringkv_node::seams::Seams;
use ringkv_node::settings::Limits;
use ringkv_node::transport::Peers;
use ringkv_node::wire::{Request, Response};
use ringkv_storage::{Hint, HintStore, MemoryEngine, StorageEngine};
use tokio_util::sync::CancellationToken;

fn hint_for(target: &NodeId, ring_holder: &Node, key: &str) -> Hint {
    let ring = ring_holder.membership().ring().unwrap();
    let key = Bytes::copy_from_slice(key.as_bytes());
    let writer = ReplicaId::new(NodeId::new("n1").unwrap(), 1);
    let (versions, _) =
        VersionSet::default().update(&VersionVector::new(), Some(key.clone()), &writer);
    Hint {
        target: target.clone(),
        partition: ring.topology.partition_of(key_hash(&key)),
        key,
        versions,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hint_does_not_hold_back_the_others_and_is_offered_again() {
    let shutdown = CancellationToken::new();
    let ([n1, n2], ids) = settled_cluster(["n1", "n2"], [&shutdown; 2], |_| {}).await;
    let target = ids[1].clone();

    let mut hints: Vec<Hint> = (0..12)
        .map(|i| hint_for(&target, &n1.node, &format!("cart-{i}")))
        .collect();
    hints.sort_by(|a, b| (a.partition, &a.key).cmp(&(b.partition, &b.key)));
    for hint in &hints {
        n1.hints.push(hint.clone()).unwrap();
    }
    let keys: Vec<(PartitionId, Bytes)> =
        hints.iter().map(|h| (h.partition, h.key.clone())).collect();
    // The first hint in delivery order is the one the target refuses.
    let (bad_partition, bad_key) = keys[0].clone();
    n2.engine.refuse_writes_to(Some(&bad_key));

    let stored =
        |engine: &MemoryEngine, (p, k): &(PartitionId, Bytes)| engine.get(*p, k).unwrap().is_some();
    eventually(
        Duration::from_secs(20),
        "the hints behind a refused one were never delivered",
        || keys[1..].iter().all(|k| stored(&n2.engine, k)),
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "delivered hints were not deleted",
        || n1.hints.len() == 1,
    )
    .await;
    let kept = n1.hints.pending(&target, None, 10).unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].partition, kept[0].key.clone()),
        (bad_partition, bad_key.clone())
    );
    assert!(!stored(&n2.engine, &keys[0]));

    // Once the target takes it, the refused hint is delivered on a later pass.
    n2.engine.refuse_writes_to(None);
    eventually(
        Duration::from_secs(20),
        "the refused hint was never offered again",
        || stored(&n2.engine, &keys[0]) && n1.hints.is_empty(),
    )
    .await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_over_the_frame_limit_does_not_hold_back_the_others() {
    let shutdown = CancellationToken::new();
    let ([n1, n2], ids) = settled_cluster(["n1", "n2"], [&shutdown; 2], |_| {}).await;
    let target = ids[1].clone();

    let mut hints: Vec<Hint> = (0..6)
        .map(|i| hint_for(&target, &n1.node, &format!("big-{i}")))
        .collect();
    hints.sort_by(|a, b| (a.partition, &a.key).cmp(&(b.partition, &b.key)));
    // The first in delivery order carries a value larger than any frame a peer accepts.
    let huge = Bytes::from(vec![b'x'; Limits::default().max_frame_bytes + 1]);
    let writer = ReplicaId::new(NodeId::new("n1").unwrap(), 1);
    hints[0].versions = VersionSet::default()
        .update(&VersionVector::new(), Some(huge), &writer)
        .0;
    for hint in &hints {
        n1.hints.push(hint.clone()).unwrap();
    }
    eventually(
        Duration::from_secs(20),
        "the hints behind one over the frame limit were never delivered",
        || {
            hints[1..]
                .iter()
                .all(|h| n2.engine.get(h.partition, &h.key).unwrap().is_some())
                && n1.hints.len() == 1
        },
    )
    .await;
    // Kept (never sent), and nothing of it reached the target. (The others were deleted once
    // acknowledged, just after they arrived: hence the wait for a single hint above.)
    let kept = n1.hints.pending(&target, None, 10).unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].key, hints[0].key);
    assert!(
        n2.engine
            .get(hints[0].partition, &hints[0].key)
            .unwrap()
            .is_none()
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_left_is_not_reported_left_while_it_holds_a_hint() {
    let shutdown = CancellationToken::new();
    let ([n1, n2, n3], ids) = settled_cluster(["n1", "n2", "n3"], [&shutdown; 3], |_| {}).await;

    n1.node.request_leave(ids[2].clone()).await.unwrap();
    eventually(Duration::from_secs(30), "n3 never left the ring", || {
        n3.node.membership().has_left()
    })
    .await;

    // n3 keeps two hints for n1; n1 refuses one of them.
    let refused = hint_for(&ids[0], &n3.node, "refused");
    let taken = hint_for(&ids[0], &n3.node, "taken");
    n1.engine.refuse_writes_to(Some(&refused.key));
    n3.hints.push(refused.clone()).unwrap();
    n3.hints.push(taken.clone()).unwrap();
    eventually(
        Duration::from_secs(20),
        "n3 never delivered its other hint",
        || {
            n1.engine
                .get(taken.partition, &taken.key)
                .unwrap()
                .is_some()
        },
    )
    .await;
    // Handoff rounds run every 100 ms: for two seconds, twenty of them must all see the hint.
    let window = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < window {
        assert_eq!(n3.hints.len(), 1);
        assert!(
            !n3.node.left_and_drained(),
            "n3 reported it could be stopped while it held a hint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    n1.engine.refuse_writes_to(None);
    eventually(
        Duration::from_secs(20),
        "n3 never reported left once its hint was delivered",
        || n3.node.left_and_drained(),
    )
    .await;
    assert!(n3.hints.is_empty());
    assert!(
        n1.engine
            .get(refused.partition, &refused.key)
            .unwrap()
            .is_some()
    );

    // A peer still on the ring before the leave sends n3 a replica write and a hint.
    let peer = Peers::new(
        NodeId::new("old-ring").unwrap(),
        Limits::default(),
        Seams::production().network,
    );
    let late = hint_for(&ids[0], &n1.node, "late");
    let n3_addr = n3.listen.parse().unwrap();
    for hinted_for in [None, Some(ids[0].clone())] {
        let write = Request::Write {
            key: late.key.clone(),
            versions: late.versions.clone(),
            hinted_for,
        };
        let answer = peer
            .call(n3_addr, write, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            matches!(answer, Response::Error(ref why) if why.contains("left")),
            "a node that left took a write: {answer:?}"
        );
    }
    assert!(n3.engine.get(late.partition, &late.key).unwrap().is_none());
    assert!(n3.hints.is_empty());
    assert!(n3.node.left_and_drained());
    // Nor does its "nothing" answer a read as a replica's would.
    let read = Request::Read {
        key: late.key.clone(),
        as_home: true,
    };
    let answer = peer
        .call(n3_addr, read, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        matches!(answer, Response::Error(ref why) if why.contains("left")),
        "a node that left answered a read: {answer:?}"
    );
    drop(n2);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_of_a_departed_node_are_rehomed_around_a_holder_that_is_down() {
    let (shutdown, n3_shutdown) = (CancellationToken::new(), CancellationToken::new());
    let ([n1, n2, n3], ids) = settled_cluster(
        ["n1", "n2", "n3"],
        [&shutdown, &shutdown, &n3_shutdown],
        |_| {},
    )
    .await;
    n3_shutdown.cancel();
    drop(n3);
    eventually(Duration::from_secs(30), "n1 never saw n3 down", || {
        !n1.node.membership().is_live(&ids[2])
    })
    .await;

    // Hints for a node that is no longer a member: each goes to its partition's holders.
    let ghost = NodeId::new("ghost").unwrap();
    let mut hints: Vec<Hint> = (0..40)
        .map(|i| hint_for(&ghost, &n1.node, &format!("orphan-{i}")))
        .collect();
    hints.sort_by(|a, b| (a.partition, &a.key).cmp(&(b.partition, &b.key)));
    for hint in &hints {
        n1.hints.push(hint.clone()).unwrap();
    }
    let ring = n1.node.membership().ring().unwrap();
    let (waiting, movable): (Vec<&Hint>, Vec<&Hint>) = hints
        .iter()
        .partition(|h| ring.topology.home(h.partition).contains(&ids[2]));
    // Some held back by n3 come before some that n3 does not hold, in delivery order.
    let first_waiting = hints
        .iter()
        .position(|h| ring.topology.home(h.partition).contains(&ids[2]))
        .unwrap();
    assert!(
        movable
            .iter()
            .any(|h| (h.partition, &h.key)
                > (hints[first_waiting].partition, &hints[first_waiting].key)),
        "no hint behind one that waits for n3"
    );
    eventually(
        Duration::from_secs(20),
        "hints whose holders are all up were held back by a holder that is down",
        || {
            movable
                .iter()
                .all(|h| n2.engine.get(h.partition, &h.key).unwrap().is_some())
        },
    )
    .await;
    // The writes n3 holds wait for it as hints of its own, kept by a live holder, and the
    // departed node's hints are all gone.
    let for_n3 = |n: &Running| n.hints.pending(&ids[2], None, 100).unwrap();
    eventually(
        Duration::from_secs(20),
        "the down holder's writes were not handed to a keeper",
        || {
            n1.hints.pending(&ghost, None, 100).unwrap().is_empty()
                && for_n3(&n1).len() + for_n3(&n2).len() == waiting.len()
        },
    )
    .await;
    let mut kept: Vec<Bytes> = [&n1, &n2]
        .iter()
        .flat_map(|n| for_n3(n))
        .map(|h| h.key)
        .collect();
    kept.sort();
    let mut want: Vec<Bytes> = waiting.iter().map(|h| h.key.clone()).collect();
    want.sort();
    assert_eq!(kept, want);
    shutdown.cancel();
}

/// A hint is filed under a partition read back from disk. One filed before its node had the
/// cluster's ring (computed with the node's own `--partitions`) can name a partition past the
/// cluster's Q: re-homed by that number, the ring's lookup panicked, every round, and the
/// departed node's other hints stayed undelivered. Hints go by their key's partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_filed_under_a_partition_past_the_rings_is_rehomed_by_its_key() {
    let shutdown = CancellationToken::new();
    let ([n1, n2], _ids) = settled_cluster(["n1", "n2"], [&shutdown; 2], |_| {}).await;
    let ghost = NodeId::new("ghost").unwrap();
    let q = n1
        .node
        .membership()
        .ring()
        .unwrap()
        .topology
        .params()
        .partitions;
    let mut hints: Vec<Hint> = (0..8)
        .map(|i| hint_for(&ghost, &n1.node, &format!("orphan-{i}")))
        .collect();
    hints[0].partition = PartitionId::new(q + 5, 2 * q).unwrap();
    for hint in &hints {
        n1.hints.push(hint.clone()).unwrap();
    }
    let ring = n1.node.membership().ring().unwrap();
    eventually(
        Duration::from_secs(20),
        "the departed node's hints were not all re-homed",
        || {
            n1.hints.pending(&ghost, None, 100).unwrap().is_empty()
                && hints.iter().all(|h| {
                    let p = ring.topology.partition_of(key_hash(&h.key));
                    n2.engine.get(p, &h.key).unwrap().is_some()
                })
        },
    )
    .await;
    shutdown.cancel();
}

/// A node without the cluster's ring keeps no hint: it would file it under a partition of its
/// own `--partitions`, where purging never looks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_ring_keeps_no_hint() {
    let shutdown = CancellationToken::new();
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    let lone = common::start("lone", Some(&nowhere), &shutdown, |_| {}).await;
    assert!(lone.node.membership().ring().is_none(), "no ring to join");
    let peer = Peers::new(
        NodeId::new("peer").unwrap(),
        Limits::default(),
        Seams::production().network,
    );
    let writer = ReplicaId::new(NodeId::new("peer").unwrap(), 1);
    let (versions, _) = VersionSet::default().update(
        &VersionVector::new(),
        Some(Bytes::from_static(b"v")),
        &writer,
    );
    let write = Request::Write {
        key: Bytes::from_static(b"k"),
        versions,
        hinted_for: Some(NodeId::new("elsewhere").unwrap()),
    };
    let answer = peer
        .call(lone.listen.parse().unwrap(), write, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        matches!(answer, Response::Error(ref why) if why.contains("no ring")),
        "a node without a ring kept a hint: {answer:?}"
    );
    assert!(lone.hints.is_empty());
    shutdown.cancel();
}

/// One round delivers to its targets side by side: a target answering each hint slowly (n2,
/// first in delivery order) holds up its own hints, not another target's. One after the
/// other, n3 waited for n2's whole batch: 60 hints at 500 ms, 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_target_does_not_hold_up_hint_delivery_to_the_others() {
    let shutdown = CancellationToken::new();
    let n1 = common::start("n1", None, &shutdown, |_| {}).await;
    let n2 = common::start_serving(
        "n2",
        Some(&n1.listen),
        &shutdown,
        |_| {},
        |node| {
            // Up, and each replica write answered inside the request timeout: overloaded.
            std::sync::Arc::new(common::Delaying {
                node,
                delay: Duration::from_millis(500),
                slow: |request: &Request| matches!(request, Request::Write { .. }),
            })
        },
    )
    .await;
    let n3 = common::start("n3", Some(&n1.listen), &shutdown, |_| {}).await;
    let ids = common::node_ids(&["n1", "n2", "n3"]);
    eventually(
        Duration::from_secs(30),
        "the nodes never formed a ring",
        || common::settled(&[&n1, &n2, &n3], &ids),
    )
    .await;
    for i in 0..60 {
        n1.hints
            .push(hint_for(&ids[1], &n1.node, &format!("slow-{i}")))
            .unwrap();
    }
    let fast: Vec<Hint> = (0..5)
        .map(|i| hint_for(&ids[2], &n1.node, &format!("fast-{i}")))
        .collect();
    for hint in &fast {
        n1.hints.push(hint.clone()).unwrap();
    }
    eventually(
        Duration::from_secs(10),
        "hints for n3 waited behind the slow n2's",
        || {
            fast.iter()
                .all(|h| n3.engine.get(h.partition, &h.key).unwrap().is_some())
        },
    )
    .await;
    shutdown.cancel();
}
