//! A node whose storage engine stalls (fjall throttling writers, a slow disk) still answers
//! every client request by its deadline: the request gets `unavailable`, the node does not
//! hang. The node runs in this process with the in-memory engine told to report a stall and
//! every blocking-pool slot taken, so a write waits for a slot that never comes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringkv_node::node::Node;
use ringkv_node::seams::{BLOCKING_CALLS_MAX, Seams};
use ringkv_node::settings::StorageKind;
use ringkv_node::wire::ClientError;
use ringkv_node::wire::ClientOp;
use ringkv_node::{ServerArgs, Settings};
use ringkv_storage::{MemoryEngine, MemoryHintStore};
use tokio_util::sync::CancellationToken;

fn put(key: &'static [u8]) -> ClientOp {
    ClientOp::Put {
        key: Bytes::from_static(key),
        context: None,
        value: Some(Bytes::from_static(b"v")),
        w: 1,
        strict: false,
    }
}

/// A free loopback port (the node binds it for gossip right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_stalled_engine_is_answered_by_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::resolve(ServerArgs {
        node_id: Some("n1".into()),
        listen: Some(format!("127.0.0.1:{}", free_port())),
        http: Some(format!("127.0.0.1:{}", free_port())),
        data_dir: Some(dir.path().to_path_buf()),
        storage: Some(StorageKind::Memory),
        partitions: Some(64),
        n: Some(1),
        r: Some(1),
        w: Some(1),
        ..Default::default()
    })
    .unwrap();
    let engine = Arc::new(MemoryEngine::new());
    let slots = Arc::new(tokio::sync::Semaphore::new(BLOCKING_CALLS_MAX));
    let seams = Seams {
        blocking_slots: slots.clone(),
        storage: Some((engine.clone(), Arc::new(MemoryHintStore::new(1000)))),
        ..Seams::production()
    };
    let shutdown = CancellationToken::new();
    let node = Node::start_with(settings, seams, shutdown.clone())
        .await
        .unwrap();
    tokio::spawn(node.clone().run_background());
    // Writes succeed once the one-node cluster has its ring.
    let formed = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match node.client_op(put(b"first"), Duration::from_secs(1)).await {
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() < formed => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the node never took a write: {e:?}"),
        }
    }

    engine.set_stalling(true);
    let _taken = slots
        .clone()
        .acquire_many_owned(BLOCKING_CALLS_MAX as u32)
        .await
        .unwrap();
    let answered = tokio::time::timeout(
        Duration::from_secs(10),
        node.client_op(put(b"second"), Duration::from_millis(300)),
    )
    .await
    .expect("a write on a stalled engine hung past its deadline");
    assert!(
        matches!(answered, Err(ClientError::Unavailable { .. })),
        "{answered:?}"
    );
    shutdown.cancel();
}
