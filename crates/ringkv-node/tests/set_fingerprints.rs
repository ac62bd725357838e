//! The checks a node answers before a peer drops data (`SameVersions` for the handoff sweep
//! and the tombstone purge, `OtherCopies` and `Purge` for the purge) name version sets by
//! `Fingerprint`: a node says it holds "the same" set, or removes its own, only for that
//! set's fingerprint, never for a different set that shares its 64-bit digest; and `Purge`
//! removes only a set of tombstones.
//!
//! One node runs in this process on the in-memory engine, anti-entropy off (so no purge of
//! its own), and is asked directly through its request handler.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Running, eventually, node_ids, settled, start};
use ringkv_core::{NodeId, PartitionId, ReplicaId, VersionSet, VersionVector, key_hash};
use ringkv_node::ServerArgs;
use ringkv_node::transport::Handler;
use ringkv_node::wire::{Request, Response};
use ringkv_storage::StorageEngine;
use tokio_util::sync::CancellationToken;

const KEY: &[u8] = b"k";

fn lone(args: &mut ServerArgs) {
    args.anti_entropy_interval_ms = Some(3_600_000);
    args.n = Some(1);
    args.w = Some(1);
}

fn writer() -> ReplicaId {
    ReplicaId::new(NodeId::new("n1").unwrap(), 1)
}

/// Two different sets with the same 64-bit `VersionSet::digest` (the pair `ringkv-core`'s
/// `version_laws.rs` checks, found by a collision search over 8 value bytes).
fn colliding_sets() -> (VersionSet, VersionSet) {
    let one_value = |v: u64| {
        let value = Bytes::copy_from_slice(&v.to_le_bytes());
        VersionSet::new()
            .update(&VersionVector::new(), Some(value), &writer())
            .0
    };
    let (a, b) = (
        one_value(0x37d5_7a8a_69a9_a8dd),
        one_value(0x5530_52df_e4e7_45f3),
    );
    assert!(a != b && a.digest() == b.digest(), "the pair collides");
    (a, b)
}

/// The same set with every sibling replaced by one tombstone.
fn deleted(set: &VersionSet) -> VersionSet {
    let tombstone = set.update(set.context(), None, &writer()).0;
    assert!(tombstone.is_tombstone_only());
    tombstone
}

async fn ask(node: &Running, request: Request) -> Response {
    Arc::clone(&node.node)
        .handle(request, Duration::from_secs(5))
        .await
}

fn store(node: &Running, p: PartitionId, set: &VersionSet) {
    node.engine
        .update(p, KEY, &mut |_| Some(set.clone()))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_match_sets_by_fingerprint_not_by_digest() {
    let shutdown = CancellationToken::new();
    let n1 = start("n1", None, &shutdown, lone).await;
    let ids = node_ids(&["n1"]);
    eventually(Duration::from_secs(30), "n1 never formed a ring", || {
        settled(&[&n1], &ids)
    })
    .await;
    let ring = n1.node.membership().ring().unwrap();
    let p = ring.topology.partition_of(key_hash(KEY));
    let (held, other) = colliding_sets();
    let keys = |set: &VersionSet| vec![(Bytes::from_static(KEY), set.fingerprint())];
    store(&n1, p, &held);

    // Handoff sweep and purge check: "do you hold exactly this set?"
    let same = |set: &VersionSet| Request::SameVersions {
        partition: p,
        keys: keys(set),
    };
    assert!(
        matches!(ask(&n1, same(&other)).await, Response::Same(s) if s == [false]),
        "a different set with the held set's digest passed for the held one"
    );
    assert!(matches!(ask(&n1, same(&held)).await, Response::Same(s) if s == [true]));

    // Purge check: "do you hold any copy other than this set?"
    let copies = |set: &VersionSet| Request::OtherCopies {
        partition: p,
        keys: keys(set),
    };
    assert!(
        matches!(ask(&n1, copies(&other)).await, Response::Copies { other, .. } if other == [true]),
        "the held set went unreported next to a different set with its digest"
    );
    assert!(
        matches!(ask(&n1, copies(&held)).await, Response::Copies { other, .. } if other == [false])
    );

    // Purge removes only tombstones, and only the set named.
    let purge = |set: &VersionSet| Request::Purge {
        partition: p,
        keys: keys(set),
    };
    assert!(matches!(ask(&n1, purge(&held)).await, Response::Same(s) if s == [false]));
    assert_eq!(
        n1.engine.get(p, KEY).unwrap(),
        Some(held.clone()),
        "a purge removed a live value"
    );
    let (tombstone, other_tombstone) = (deleted(&held), deleted(&deleted(&held)));
    store(&n1, p, &tombstone);
    assert!(matches!(ask(&n1, purge(&other_tombstone)).await, Response::Same(s) if s == [false]));
    assert_eq!(n1.engine.get(p, KEY).unwrap(), Some(tombstone.clone()));
    assert!(matches!(ask(&n1, purge(&tombstone)).await, Response::Same(s) if s == [true]));
    assert_eq!(n1.engine.get(p, KEY).unwrap(), None);
    shutdown.cancel();
}
