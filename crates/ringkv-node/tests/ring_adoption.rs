//! A node adopts newer versions of its own cluster's ring, including one listing none of the
//! members it knew, and refuses rings of another cluster: another cluster id (a seed of the
//! wrong cluster), other Q or N (every stored partition id depends on Q).
//! Nodes run in this process on the in-memory engine.

mod common;

use std::time::Duration;

use common::{eventually, node_ids, settled, start};
use ringkv_core::NodeId;
use ringkv_core::ring::{Member, Ring, RingParams};
use ringkv_core::topology::Topology;
use ringkv_node::wire::RingState;
use tokio_util::sync::CancellationToken;

fn member(id: &str) -> Member {
    Member {
        id: NodeId::new(id).unwrap(),
        weight: 1,
        zone: "default".into(),
    }
}

/// A settled ring of `ids` at `version`, with `params`, of the cluster `cluster`.
fn ring(cluster: u64, version: u64, ids: &[&str], params: RingParams) -> RingState {
    let members: Vec<Member> = ids.iter().map(|id| member(id)).collect();
    let ring = Ring::claim(None, &members, params).unwrap();
    RingState::new(cluster, version, Topology::settled(ring))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rings_of_another_cluster_are_refused_and_newer_ones_of_this_cluster_adopted() {
    let shutdown = CancellationToken::new();
    let n1 = start("n1", None, &shutdown, |_| {}).await;
    let ids = node_ids(&["n1"]);
    eventually(Duration::from_secs(30), "n1 never formed a ring", || {
        settled(&[&n1], &ids)
    })
    .await;
    let membership = n1.node.membership();
    let current = membership.ring().unwrap();
    let params = current.topology.params();
    let later = current.version + 10;
    let ours = current.cluster;

    let other_q = RingParams {
        partitions: params.partitions / 2,
        ..params
    };
    let other_n = RingParams { n: 1, ..params };
    for (what, foreign) in [
        ("another Q", ring(ours, later + 40, &["n1"], other_q)),
        ("another N", ring(ours, later + 40, &["n1"], other_n)),
        // Same Q and N, a higher version, not listing this node: adopted, it made the node
        // conclude it had left and hand all its data to the other cluster.
        (
            "another cluster id",
            ring(ours ^ 1, later + 40, &["m1", "m2"], params),
        ),
    ] {
        assert!(
            !membership.adopt(foreign).await,
            "adopted a ring with {what}"
        );
        assert_eq!(
            membership.ring().unwrap().version,
            current.version,
            "{what}: the ring changed"
        );
    }
    assert!(
        !membership.has_left(),
        "a refused ring made it conclude it left"
    );
    // A newer ring of this cluster (the same Q and N), below the refused ones, is adopted;
    // so is a later one that lists none of the members this node knew.
    assert!(
        membership
            .adopt(ring(ours, later, &["n1", "n9"], params))
            .await
    );
    assert_eq!(membership.ring().unwrap().version, later);
    assert!(
        membership
            .adopt(ring(ours, later + 1, &["x1", "x2"], params))
            .await
    );
    assert_eq!(membership.ring().unwrap().version, later + 1);
    shutdown.cancel();
}
