//! A node forgets the address of a node that left the ring once gossip forgets it too: the
//! map of known addresses holds what gossip carries plus the ring's members, not every id
//! ever seen. Nodes run in this process on the in-memory engine, gossip keeping a dead
//! node's state for one second.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, settled_cluster};
use ringkv_node::ServerArgs;
use tokio_util::sync::CancellationToken;

fn short_grace(args: &mut ServerArgs) {
    args.test_dead_node_grace_ms = Some(1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_of_a_node_that_left_and_stopped_is_forgotten() {
    let (shutdown, n3_shutdown) = (CancellationToken::new(), CancellationToken::new());
    let ([n1, n2, n3], ids) = settled_cluster(
        ["n1", "n2", "n3"],
        [&shutdown, &shutdown, &n3_shutdown],
        short_grace,
    )
    .await;
    assert!(n1.node.membership().address(&ids[2]).is_some());

    n1.node.request_leave(ids[2].clone()).await.unwrap();
    eventually(Duration::from_secs(30), "n3 never left and drained", || {
        n3.node.left_and_drained()
    })
    .await;
    // Stop n3 as `server::run` does: its tasks end, then its gossip.
    n3_shutdown.cancel();
    let n3_node = n3.node;
    eventually(Duration::from_secs(10), "n3's tasks never ended", || {
        Arc::strong_count(&n3_node) == 1
    })
    .await;
    let Ok(n3_node) = Arc::try_unwrap(n3_node) else {
        panic!("n3 is still referenced");
    };
    n3_node.close().await;

    eventually(
        Duration::from_secs(60),
        "n1 still keeps the address of n3, which left and stopped",
        || n1.node.membership().address(&ids[2]).is_none(),
    )
    .await;
    // Members are kept, whatever gossip holds.
    assert!(n1.node.membership().address(&ids[1]).is_some());
    drop(n2);
    shutdown.cancel();
}
