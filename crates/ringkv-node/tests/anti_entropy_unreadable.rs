//! Anti-entropy passes over a partition where one replica holds a record that fails its
//! checksum:
//! - every other differing key of the partition is still repaired, and the unreadable record is
//!   kept, not overwritten (the divergence is written straight into one engine, so only
//!   anti-entropy can repair it);
//! - the partition's other stable tombstones are still purged, and the unreadable one is kept.
//!
//! Nodes run in this process on the in-memory engine.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{eventually, settled_cluster};
use ringkv_core::{PartitionId, ReplicaId, key_hash};
use ringkv_node::ServerArgs;
use ringkv_node::wire::ClientOp;
use ringkv_storage::StorageEngine;
use tokio_util::sync::CancellationToken;

fn quick_anti_entropy(args: &mut ServerArgs) {
    args.anti_entropy_interval_ms = Some(200);
}

/// Stores `value` over whatever `engine` holds for `key`, as a write coordinated by `writer`.
fn write_directly(engine: &dyn StorageEngine, partition: PartitionId, key: &[u8], value: &str) {
    let writer = ReplicaId::new(ringkv_core::NodeId::new("elsewhere").unwrap(), 0);
    engine
        .update(partition, key, &mut |current| {
            let current = current.cloned().unwrap_or_default();
            let context = current.context().clone();
            Some(
                current
                    .update(&context, Some(Bytes::from(value.to_string())), &writer)
                    .0,
            )
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_does_not_stop_the_repair_of_its_partition() {
    let shutdown = CancellationToken::new();
    let ([n1, n2], _) = settled_cluster(["n1", "n2"], [&shutdown; 2], quick_anti_entropy).await;
    let ring = n1.node.membership().ring().unwrap();
    let partition_of = |key: &[u8]| ring.topology.partition_of(key_hash(key));

    // The victim, on both replicas (N=2), through the client path. Its name sorts before the
    // other keys, so an exchange meets it first.
    let victim = Bytes::from_static(b"a-victim");
    let p = partition_of(&victim);
    let put = ClientOp::Put {
        key: victim.clone(),
        context: None,
        value: Some(Bytes::from_static(b"first")),
        w: 2,
        strict: false,
    };
    n1.node
        .client_op(put, Duration::from_secs(5))
        .await
        .unwrap();

    // Then n2 alone gets a newer victim and 12 more keys of the same partition, so the
    // victim's leaf differs and so do the others'.
    write_directly(n2.engine.as_ref(), p, &victim, "second");
    let others: Vec<Bytes> = (0..20_000)
        .map(|i| Bytes::from(format!("item-{i}")))
        .filter(|k| partition_of(k) == p)
        .take(12)
        .collect();
    assert_eq!(others.len(), 12, "too few keys in the victim's partition");
    for key in &others {
        write_directly(n2.engine.as_ref(), p, key, "only-on-n2");
    }
    // n1 can no longer read its copy of the victim.
    n1.engine.make_unreadable(&[victim.as_ref()]);

    eventually(
        Duration::from_secs(30),
        "anti-entropy never repaired the keys beside the unreadable record",
        || {
            others
                .iter()
                .all(|k| n1.engine.get(p, k).unwrap().is_some())
        },
    )
    .await;
    // Kept as it was on n1 (not replaced by n2's copy), and n2's copy is untouched.
    let kept = n1.engine.peek(p, &victim).unwrap();
    assert_eq!(
        kept.values().collect::<Vec<_>>(),
        [&Bytes::from_static(b"first")]
    );
    let on_n2 = n2.engine.get(p, &victim).unwrap().unwrap();
    assert_eq!(
        on_n2.values().collect::<Vec<_>>(),
        [&Bytes::from_static(b"second")]
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_tombstone_does_not_stop_the_purge_of_the_others() {
    let shutdown = CancellationToken::new();
    let quick_purge = |args: &mut ServerArgs| {
        quick_anti_entropy(args);
        args.tombstone_grace_ms = Some(300);
    };
    let ([n1, n2], ids) = settled_cluster(["n1", "n2"], [&shutdown; 2], quick_purge).await;
    let ring = n1.node.membership().ring().unwrap();
    let partition_of = |key: &[u8]| ring.topology.partition_of(key_hash(key));
    // The victim sorts first, so a purge batch (taken in key order) always meets it.
    let victim = Bytes::from_static(b"a-victim");
    let p = partition_of(&victim);
    let mut keys = vec![victim.clone()];
    keys.extend(
        (0..20_000)
            .map(|i| Bytes::from(format!("gone-{i}")))
            .filter(|k| partition_of(k) == p)
            .take(8),
    );
    assert_eq!(keys.len(), 9, "too few keys in the victim's partition");
    for value in [Some(Bytes::from_static(b"v")), None] {
        for key in &keys {
            let put = ClientOp::Put {
                key: key.clone(),
                context: None,
                value: value.clone(),
                w: 2,
                strict: false,
            };
            n1.node
                .client_op(put, Duration::from_secs(5))
                .await
                .unwrap();
        }
    }
    // The replica that does not lead the purge can no longer read its victim tombstone.
    let leader = ring.topology.home(p)[0].clone();
    let other = if leader == ids[0] { &n2 } else { &n1 };
    let leading = if leader == ids[0] { &n1 } else { &n2 };
    other.engine.make_unreadable(&[victim.as_ref()]);

    eventually(
        Duration::from_secs(30),
        "the tombstones beside the unreadable one were never purged",
        || {
            keys[1..].iter().all(|k| {
                leading.engine.get(p, k).unwrap().is_none()
                    && other.engine.get(p, k).unwrap().is_none()
            })
        },
    )
    .await;
    assert!(leading.engine.get(p, &victim).unwrap().is_some());
    assert!(other.engine.peek(p, &victim).is_some());
    shutdown.cancel();
}
