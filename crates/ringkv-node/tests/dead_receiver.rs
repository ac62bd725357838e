//! A joining node that dies for good in the middle of its transfer, and is then removed with a
//! leave, does not pin the transition: the claimant stops waiting for it (old home replicas
//! stand in for the partitions it had not confirmed), the transition ends, the next one
//! removes it, and the cluster takes a new join afterwards. No acknowledged write is lost.
//! Nodes run in this process on the in-memory engine.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Running, eventually, node_ids, settled, settled_cluster, start};
use ringkv_node::wire::{ClientOp, ClientReply};
use tokio_util::sync::CancellationToken;

const KEYS: usize = 300;

fn value(i: usize) -> Bytes {
    Bytes::from(format!("{i:04}").repeat(512))
}

async fn write_keys(node: &Running) {
    for i in 0..KEYS {
        let put = ClientOp::Put {
            key: Bytes::from(format!("k-{i}")),
            context: None,
            value: Some(value(i)),
            w: 2,
            strict: false,
        };
        node.node
            .client_op(put, Duration::from_secs(5))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_that_dies_mid_transfer_is_removed_and_the_cluster_moves_on() {
    let (shutdown, n4_shutdown) = (CancellationToken::new(), CancellationToken::new());
    let ([n1, n2, n3], _) = settled_cluster(["n1", "n2", "n3"], [&shutdown; 3], |_| {}).await;
    write_keys(&n1).await;

    // n4 joins, its copy throttled to about 16 KiB/s: the transfer takes tens of seconds.
    let n4 = start("n4", Some(&n1.listen), &n4_shutdown, |a| {
        a.handoff_bytes_per_second = Some(16 * 1024);
    })
    .await;
    let ids = node_ids(&["n1", "n2", "n3", "n4", "n5"]);
    eventually(
        Duration::from_secs(30),
        "n4 never confirmed a partition",
        || {
            n1.node.membership().ring().is_some_and(|r| {
                r.topology
                    .transition()
                    .is_some_and(|t| t.pending_transfers() < t.transfers())
            })
        },
    )
    .await;
    let ring = n1.node.membership().ring().unwrap();
    assert!(
        !ring.topology.awaiting(&ids[3]).is_empty(),
        "n4 finished its transfer before it could be stopped; throttle it more"
    );

    // n4 dies for good, and the operator removes it.
    n4_shutdown.cancel();
    let n4_node = n4.node;
    eventually(Duration::from_secs(10), "n4's tasks never ended", || {
        Arc::strong_count(&n4_node) == 1
    })
    .await;
    let Ok(n4_node) = Arc::try_unwrap(n4_node) else {
        panic!("n4 is still referenced");
    };
    n4_node.close().await;
    n1.node.request_leave(ids[3].clone()).await.unwrap();

    let three = [&n1, &n2, &n3];
    let mut stand_ins = false;
    eventually(
        Duration::from_secs(90),
        "the transition n4 was receiving in never ended, or n4 was never removed",
        || {
            // An old home replica receiving a partition n4 gained: it stands in for n4.
            stand_ins |= n1.node.membership().ring().is_some_and(|r| {
                r.topology.transition().is_some_and(|t| {
                    t.pending().any(|(p, receivers)| {
                        let p = ringkv_core::PartitionId::new(p, 64).unwrap();
                        receivers
                            .iter()
                            .any(|n| r.topology.committed().is_home(p, n))
                    })
                })
            });
            settled(&three, &ids[..3])
        },
    )
    .await;
    assert!(
        stand_ins,
        "no old home replica stood in for the partitions n4 had not confirmed"
    );

    let n5 = start("n5", Some(&n1.listen), &shutdown, |_| {}).await;
    let four = [&n1, &n2, &n3, &n5];
    let members = [
        ids[0].clone(),
        ids[1].clone(),
        ids[2].clone(),
        ids[4].clone(),
    ];
    eventually(Duration::from_secs(60), "n5 never joined", || {
        settled(&four, &members)
    })
    .await;

    for i in 0..KEYS {
        let get = ClientOp::Get {
            key: Bytes::from(format!("k-{i}")),
            r: 2,
            strict: true,
        };
        let reply = n2
            .node
            .client_op(get, Duration::from_secs(5))
            .await
            .unwrap();
        let ClientReply::Read(Some(versions)) = reply else {
            panic!("k-{i} was lost: {reply:?}");
        };
        let values: Vec<&Bytes> = versions.values().collect();
        assert!(
            values.iter().any(|v| **v == value(i)),
            "k-{i} lost its value: {} siblings",
            values.len()
        );
    }
    shutdown.cancel();
}
