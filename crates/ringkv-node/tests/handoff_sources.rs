//! Where a gaining node's copy of a partition comes from:
//! - a replica that cannot read some of its records (they fail their checksum): the join
//!   completes without them, and the source keeps them, reported, instead of dropping them;
//! - a run of unreadable records longer than one chunk request scans: the chunk answers move
//!   the receiver's cursor past it, so the readable records behind it still arrive;
//! - a source that missed writes the other old replicas hold: the gaining node levels with
//!   them before it confirms the partition;
//! - a node that does not hold a partition in its own ring does not vouch for a copy of it
//!   (`SameVersions`), even one it has: a sweeper would drop its own copy on that word.
//!
//! Nodes run in this process on the in-memory engine, anti-entropy off.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Running, eventually, node_ids, settled, start};
use ringkv_core::{NodeId, PartitionId, ReplicaId, VersionSet, VersionVector, key_hash};
use ringkv_node::ServerArgs;
use ringkv_node::handoff::{CHUNK_KEYS, CHUNK_SCANS_MAX};
use ringkv_node::seams::Seams;
use ringkv_node::transport::Peers;
use ringkv_node::wire::{ClientOp, Request, Response};
use ringkv_storage::StorageEngine;
use tokio_util::sync::CancellationToken;

fn no_anti_entropy(args: &mut ServerArgs) {
    args.anti_entropy_interval_ms = Some(3_600_000);
}

fn one_replica(args: &mut ServerArgs) {
    no_anti_entropy(args);
    args.n = Some(1);
    args.w = Some(1);
}

/// n1 alone in a ring of one replica per key, and the ids of n1 and the n2 that will join.
async fn lone_replica(shutdown: &CancellationToken) -> (Running, Vec<NodeId>) {
    let n1 = start("n1", None, shutdown, one_replica).await;
    let ids = node_ids(&["n1", "n2"]);
    eventually(Duration::from_secs(30), "n1 never formed a ring", || {
        settled(&[&n1], &ids[..1])
    })
    .await;
    (n1, ids)
}

/// Writes `count` keys `{prefix}-{i}` (each its own value) through `node`'s client path.
async fn write_keys(node: &Running, prefix: &str, count: usize) -> Vec<(PartitionId, Bytes)> {
    let ring = node.node.membership().ring().unwrap();
    let mut keys = Vec::with_capacity(count);
    for i in 0..count {
        let key = Bytes::from(format!("{prefix}-{i}"));
        let put = ClientOp::Put {
            key: key.clone(),
            context: None,
            value: Some(key.clone()),
            w: 1,
            strict: false,
        };
        node.node
            .client_op(put, Duration::from_secs(2))
            .await
            .unwrap();
        keys.push((ring.topology.partition_of(key_hash(&key)), key));
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_only_source_cannot_read_do_not_stall_the_join() {
    let shutdown = CancellationToken::new();
    let (n1, ids) = lone_replica(&shutdown).await;
    let keys = write_keys(&n1, "cart", 90).await;
    // Every third record fails its checksum on n1, the only replica.
    let unreadable: Vec<&[u8]> = keys.iter().step_by(3).map(|(_, k)| k.as_ref()).collect();
    n1.engine.make_unreadable(&unreadable);

    let n2 = start("n2", Some(&n1.listen), &shutdown, one_replica).await;
    eventually(
        Duration::from_secs(60),
        "the join stalled on records the only source cannot read",
        || settled(&[&n1, &n2], &ids),
    )
    .await;
    let ring = n1.node.membership().ring().unwrap();
    let (mut moved, mut moved_unreadable) = (0, 0);
    for (partition, key) in &keys {
        if !ring.topology.home(*partition).contains(&ids[1]) {
            continue;
        }
        if unreadable.contains(&key.as_ref()) {
            moved_unreadable += 1;
        } else {
            moved += 1;
            assert!(
                n2.engine.get(*partition, key).unwrap().is_some(),
                "{key:?} did not reach n2"
            );
        }
    }
    assert!(
        moved > 0 && moved_unreadable > 0,
        "{moved} / {moved_unreadable} keys moved"
    );

    // n1's sweep drops what it handed over and keeps, reported, what it cannot read.
    let moved_from_n1 = |readable: bool| {
        keys.iter()
            .filter(|(p, k)| {
                ring.topology.home(*p).contains(&ids[1])
                    && unreadable.contains(&k.as_ref()) != readable
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    let (handed_over, kept) = (moved_from_n1(true), moved_from_n1(false));
    eventually(
        Duration::from_secs(30),
        "n1 never dropped what it handed over",
        || {
            handed_over
                .iter()
                .all(|(p, k)| n1.engine.get(*p, k).unwrap().is_none())
        },
    )
    .await;
    for (partition, key) in &kept {
        let scanned = n1.engine.scan_readable(*partition, None, 1000).unwrap();
        assert!(
            scanned.unreadable.contains(key),
            "{key:?} was dropped unread"
        );
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_answers_cross_a_run_of_unreadable_records_longer_than_one_request_scans() {
    let shutdown = CancellationToken::new();
    let (n1, _) = lone_replica(&shutdown).await;
    let ring = n1.node.membership().ring().unwrap();
    let partition = PartitionId::new(5, ring.topology.params().partitions).unwrap();
    // Records of one partition, stored straight into n1's engine; in storage order, a run of
    // unreadable ones longer than one chunk request scans, then readable ones.
    let run = CHUNK_SCANS_MAX * CHUNK_KEYS + CHUNK_KEYS / 2;
    let keys: Vec<Bytes> = (0u32..)
        .map(|i| Bytes::from(format!("k{i:08}")))
        .filter(|k| ring.topology.partition_of(key_hash(k)) == partition)
        .take(run + 20)
        .collect();
    let writer = ReplicaId::new(NodeId::new("n1").unwrap(), 1);
    for key in &keys {
        let (versions, _) =
            VersionSet::default().update(&VersionVector::new(), Some(key.clone()), &writer);
        n1.engine
            .update(partition, key, &mut |_| Some(versions.clone()))
            .unwrap();
    }
    let stored: Vec<Bytes> = n1
        .engine
        .scan_readable(partition, None, usize::MAX)
        .unwrap()
        .entries
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(stored.len(), keys.len());
    let (unreadable, readable) = stored.split_at(run);
    let refs: Vec<&[u8]> = unreadable.iter().map(|k| k.as_ref()).collect();
    n1.engine.make_unreadable(&refs);
    let position = |key: &Option<Bytes>| key.as_ref().map(|k| stored.iter().position(|s| s == k));

    // Follow the chunk protocol as a receiving node does, each request after the last
    // answer's `resume`.
    let peers = Peers::new(
        NodeId::new("probe").unwrap(),
        n1.node.settings().limits.clone(),
        Seams::production().network,
    );
    let addr = n1.listen.parse().unwrap();
    let (mut after, mut received, mut requests) = (None, Vec::new(), 0);
    loop {
        requests += 1;
        assert!(requests <= 20, "no end after {requests} chunk requests");
        let request = Request::HandoffChunk {
            partition,
            after: after.clone(),
            max_bytes: 1 << 20,
        };
        match peers.call(addr, request, Duration::from_secs(10)).await {
            Ok(Response::Chunk {
                entries,
                done,
                resume,
            }) => {
                received.extend(entries.into_iter().map(|(k, _)| k));
                if done {
                    break;
                }
                assert!(
                    position(&resume) > position(&after),
                    "the cursor did not move past {after:?}"
                );
                after = resume;
            }
            other => panic!("chunk request {requests}: {other:?}"),
        }
    }
    assert_eq!(received, readable, "the readable records behind the run");
    assert!(requests > 1, "the run was crossed in one request");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gaining_node_levels_its_copy_with_every_old_replica() {
    let shutdown = CancellationToken::new();
    let n1 = start("n1", None, &shutdown, no_anti_entropy).await;
    let n2 = start("n2", Some(&n1.listen), &shutdown, no_anti_entropy).await;
    let ids = node_ids(&["n1", "n2", "n3"]);
    eventually(Duration::from_secs(30), "n1 and n2 never settled", || {
        settled(&[&n1, &n2], &ids[..2])
    })
    .await;
    // Writes n1 missed (acknowledged by n2 alone, W=1): stored straight into n2's engine, so
    // nothing but the handoff can bring them to n3.
    let ring = n1.node.membership().ring().unwrap();
    let writer = ReplicaId::new(NodeId::new("n2").unwrap(), 1);
    let keys: Vec<(PartitionId, Bytes)> = (0..200)
        .map(|i| {
            let key = Bytes::from(format!("missed-{i}"));
            (ring.topology.partition_of(key_hash(&key)), key)
        })
        .collect();
    for (partition, key) in &keys {
        let (versions, _) =
            VersionSet::default().update(&VersionVector::new(), Some(key.clone()), &writer);
        n2.engine
            .update(*partition, key, &mut |_| Some(versions.clone()))
            .unwrap();
    }

    let n3 = start("n3", Some(&n1.listen), &shutdown, no_anti_entropy).await;
    eventually(Duration::from_secs(60), "the join never completed", || {
        settled(&[&n1, &n2, &n3], &ids)
    })
    .await;
    // n3 copies each partition from a node that loses it first; where that is n1, only the
    // levelling with n2 brings the missed writes. Checked as soon as the ring settled: n2 keeps
    // the partitions it stays home of, so no sweep of its own brings them later.
    let ring = n3.node.membership().ring().unwrap();
    let (mut checked, mut from_n1) = (0, 0);
    for (partition, key) in &keys {
        let home: Vec<NodeId> = ring.topology.home(*partition);
        if !home.contains(&ids[2]) {
            continue;
        }
        checked += 1;
        from_n1 += usize::from(!home.contains(&ids[0]));
        assert!(
            n3.engine.get(*partition, key).unwrap().is_some(),
            "{key:?}: n3 confirmed its partition without the write n1 missed"
        );
    }
    assert!(
        checked > 0 && from_n1 > 0,
        "{checked} keys checked, {from_n1} copied from n1"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_a_new_home_cannot_read_stay_and_the_rest_of_the_partition_is_dropped() {
    let shutdown = CancellationToken::new();
    let (n1, ids) = lone_replica(&shutdown).await;
    let keys = write_keys(&n1, "sweep", 300).await;
    // The joining node will not be able to read every tenth key once it holds it, so it
    // refuses n1's sweep of those.
    let n2 = start("n2", Some(&n1.listen), &shutdown, one_replica).await;
    let unreadable: Vec<&[u8]> = keys.iter().step_by(10).map(|(_, k)| k.as_ref()).collect();
    n2.engine.make_unreadable(&unreadable);
    eventually(Duration::from_secs(60), "the join never completed", || {
        settled(&[&n1, &n2], &ids)
    })
    .await;
    let ring = n1.node.membership().ring().unwrap();
    type Keys = Vec<(PartitionId, Bytes)>;
    let (refused, handed): (Keys, Keys) = keys
        .iter()
        .filter(|(p, _)| ring.topology.home(*p).contains(&ids[1]))
        .cloned()
        .partition(|(_, k)| unreadable.contains(&k.as_ref()));
    // Partitions holding a refused key and others too: where one refusal used to stop it all.
    let shared = handed
        .iter()
        .filter(|(p, _)| refused.iter().any(|(q, _)| q == p))
        .count();
    assert!(
        !refused.is_empty() && shared > 0,
        "{} refused keys, {shared} keys beside them",
        refused.len()
    );
    eventually(
        Duration::from_secs(30),
        "n1 never dropped the keys n2 took",
        || {
            handed
                .iter()
                .all(|(p, k)| n1.engine.get(*p, k).unwrap().is_none())
        },
    )
    .await;
    for (partition, key) in &refused {
        assert!(
            n1.engine.get(*partition, key).unwrap().is_some(),
            "{key:?} was dropped although n2 refused it"
        );
    }
    assert!(!n1.node.membership().has_left());
    shutdown.cancel();
}

/// Two nodes on diverging rings (each naming the other as a partition's home) each vouched
/// for the other's copy when asked `SameVersions`, and both swept the key: it was on no node.
/// A node vouches only for partitions its own ring makes it hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_hold_a_partition_does_not_vouch_for_a_copy_of_it() {
    let shutdown = CancellationToken::new();
    let n1 = start("n1", None, &shutdown, one_replica).await;
    let n2 = start("n2", Some(&n1.listen), &shutdown, one_replica).await;
    let ids = node_ids(&["n1", "n2"]);
    eventually(Duration::from_secs(30), "n1 and n2 never settled", || {
        settled(&[&n1, &n2], &ids)
    })
    .await;
    let ring = n1.node.membership().ring().unwrap();
    // A key whose only home (N=1) is n1; both nodes hold the same copy of it.
    let (partition, key) = (0..)
        .map(|i| Bytes::from(format!("k{i}")))
        .map(|key| (ring.topology.partition_of(key_hash(&key)), key))
        .find(|(p, _)| ring.topology.home(*p) == [ids[0].clone()])
        .unwrap();
    let writer = ReplicaId::new(NodeId::new("n1").unwrap(), 1);
    let (versions, _) =
        VersionSet::default().update(&VersionVector::new(), Some(key.clone()), &writer);
    for n in [&n1, &n2] {
        n.engine
            .update(partition, &key, &mut |_| Some(versions.clone()))
            .unwrap();
    }
    let peers = Peers::new(
        NodeId::new("sweeper").unwrap(),
        ringkv_node::settings::Limits::default(),
        Seams::production().network,
    );
    let ask = |n: &Running| {
        let request = Request::SameVersions {
            partition,
            keys: vec![(key.clone(), versions.fingerprint())],
        };
        let addr = n.listen.parse().unwrap();
        let peers = &peers;
        async move { peers.call(addr, request, Duration::from_secs(10)).await }
    };
    let holder = ask(&n1).await.unwrap();
    assert!(
        matches!(&holder, Response::Same(same) if same == &[true]),
        "the home vouches: {holder:?}"
    );
    let other = ask(&n2).await.unwrap();
    assert!(
        matches!(&other, Response::Error(why) if why.contains("not a holder")),
        "a node that does not hold the partition vouched: {other:?}"
    );
    shutdown.cancel();
}

/// The sweep goes round: it starts each round where the last one ran out of its budget. Before,
/// it started every round at the first key of the first partition, so more keys kept every
/// round (here unreadable) than one round's budget in a low partition meant the partitions
/// after it were never handed over (and a leaving node never drained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_kept_every_round_do_not_starve_the_sweep_of_later_partitions() {
    let shutdown = CancellationToken::new();
    let n1 = start("n1", None, &shutdown, one_replica).await;
    let n2 = start("n2", Some(&n1.listen), &shutdown, one_replica).await;
    let ids = node_ids(&["n1", "n2"]);
    eventually(Duration::from_secs(30), "n1 and n2 never settled", || {
        settled(&[&n1, &n2], &ids)
    })
    .await;
    let ring = n1.node.membership().ring().unwrap();
    let on_n1: Vec<PartitionId> = (0..ring.topology.params().partitions)
        .map(|i| PartitionId::new(i, ring.topology.params().partitions).unwrap())
        .filter(|p| ring.topology.home(*p) == [ids[0].clone()])
        .collect();
    let (low, high) = (on_n1[0], *on_n1.last().unwrap());
    let in_partition = |p: PartitionId, prefix: &str, count: usize| -> Vec<Bytes> {
        (0..)
            .map(|i| Bytes::from(format!("{prefix}-{i}")))
            .filter(|k| ring.topology.partition_of(key_hash(k)) == p)
            .take(count)
            .collect()
    };
    // n2 holds copies of n1's partitions: more unreadable ones in the low partition than one
    // round's budget, and one readable key in the high one.
    let writer = ReplicaId::new(NodeId::new("n1").unwrap(), 1);
    let stuck = in_partition(
        low,
        "stuck",
        ringkv_node::handoff::SWEEP_KEYS_PER_ROUND + 100,
    );
    let [wanted] = <[Bytes; 1]>::try_from(in_partition(high, "wanted", 1)).unwrap();
    for (p, key) in stuck.iter().map(|k| (low, k)).chain([(high, &wanted)]) {
        let (versions, _) =
            VersionSet::default().update(&VersionVector::new(), Some(key.clone()), &writer);
        n2.engine
            .update(p, key, &mut |_| Some(versions.clone()))
            .unwrap();
    }
    let refs: Vec<&[u8]> = stuck.iter().map(|k| k.as_ref()).collect();
    n2.engine.make_unreadable(&refs);
    eventually(
        Duration::from_secs(30),
        "the key behind a partition of kept keys was never handed over",
        || {
            n1.engine.get(high, &wanted).unwrap().is_some()
                && n2.engine.get(high, &wanted).unwrap().is_none()
        },
    )
    .await;
    shutdown.cancel();
}
