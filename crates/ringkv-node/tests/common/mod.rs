//! Nodes run in the test's own process on loopback, on the in-memory engine, with their
//! engines and hint stores in the test's hands; a node may answer its peers through a
//! `Distorting` handler (a peer that misbehaves) or a `Delaying` one (a peer that is slow).
//! The node crate's own unit tests use this module too (`lib.rs`), to drive a node's inner
//! steps against such a peer.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ringkv_core::NodeId;
use ringkv_node::node::Node;
use ringkv_node::seams::Seams;
use ringkv_node::settings::StorageKind;
use ringkv_node::transport::Handler;
use ringkv_node::wire::{Request, Response};
use ringkv_node::{ServerArgs, Settings};
use ringkv_storage::{MemoryEngine, MemoryHintStore};
use tokio_util::sync::CancellationToken;

/// A free loopback port (the node binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Running {
    pub node: Arc<Node>,
    pub engine: Arc<MemoryEngine>,
    pub hints: Arc<MemoryHintStore>,
    pub listen: String,
    _dir: tempfile::TempDir,
}

/// Starts node `id` (joining through `seed`) with two home replicas per key (N=2, R=1, W=1
/// unless `tweak` changes them), 100 ms gossip, hint and handoff rounds.
pub async fn start(
    id: &str,
    seed: Option<&str>,
    shutdown: &CancellationToken,
    tweak: impl FnOnce(&mut ServerArgs),
) -> Running {
    start_serving(id, seed, shutdown, tweak, |node| node).await
}

/// `start`, the node's peers answered by `serve(node)` instead of the node itself.
pub async fn start_serving<H: Handler>(
    id: &str,
    seed: Option<&str>,
    shutdown: &CancellationToken,
    tweak: impl FnOnce(&mut ServerArgs),
    serve: impl FnOnce(Arc<Node>) -> Arc<H>,
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = ServerArgs {
        node_id: Some(id.into()),
        listen: Some(listen.clone()),
        http: Some(format!("127.0.0.1:{}", free_port())),
        data_dir: Some(dir.path().to_path_buf()),
        storage: Some(StorageKind::Memory),
        seeds: seed.map(|s| vec![s.to_string()]).unwrap_or_default(),
        partitions: Some(64),
        n: Some(2),
        r: Some(1),
        w: Some(1),
        gossip_interval_ms: Some(100),
        hint_interval_ms: Some(100),
        handoff_interval_ms: Some(100),
        ..Default::default()
    };
    tweak(&mut args);
    let settings = Settings::resolve(args).unwrap();
    let engine = Arc::new(MemoryEngine::new());
    let hints = Arc::new(MemoryHintStore::new(1000));
    let seams = Seams {
        storage: Some((engine.clone(), hints.clone())),
        ..Seams::production()
    };
    let listener = seams.network.bind(settings.listen).await.unwrap();
    let limits = settings.limits.clone();
    let node = Node::start_with(settings, seams, shutdown.clone())
        .await
        .unwrap();
    tokio::spawn(ringkv_node::transport::serve(
        listener,
        serve(node.clone()),
        limits,
        shutdown.clone(),
    ));
    tokio::spawn(node.clone().run_background());
    Running {
        node,
        engine,
        hints,
        listen,
        _dir: dir,
    }
}

/// A peer that misbehaves: it answers as its node does, except where `distort` (given the
/// request and the node's answer) answers something else.
pub struct Distorting<F> {
    pub node: Arc<Node>,
    pub distort: F,
}

impl<F> Handler for Distorting<F>
where
    F: Fn(&Request, Response) -> Response + Send + Sync + 'static,
{
    fn handle(
        self: Arc<Self>,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'static, Response> {
        Box::pin(async move {
            let answer = self.node.clone().handle(request.clone(), timeout).await;
            (self.distort)(&request, answer)
        })
    }
}

/// A peer that answers late: it answers as its node does, but `delay` later for the requests
/// `slow` picks.
pub struct Delaying<F> {
    pub node: Arc<Node>,
    pub delay: Duration,
    pub slow: F,
}

impl<F> Handler for Delaying<F>
where
    F: Fn(&Request) -> bool + Send + Sync + 'static,
{
    fn handle(
        self: Arc<Self>,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'static, Response> {
        Box::pin(async move {
            if (self.slow)(&request) {
                tokio::time::sleep(self.delay).await;
            }
            self.node.clone().handle(request, timeout).await
        })
    }
}

/// Polls `done` every 50 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh in-memory engine, for unit tests that drive storage without a node (the node
/// crate's own sources name no engine: `tests/architecture.rs`).
pub fn memory_engine() -> MemoryEngine {
    MemoryEngine::new()
}

/// Node ids from their names.
pub fn node_ids(names: &[&str]) -> Vec<NodeId> {
    names.iter().map(|n| NodeId::new(*n).unwrap()).collect()
}

/// Whether every node sees a ring of exactly `ids`, with no transition open, all of them up.
pub fn settled(nodes: &[&Running], ids: &[NodeId]) -> bool {
    nodes.iter().all(|n| {
        n.node.membership().ring().is_some_and(|r| {
            r.topology.transition().is_none()
                && r.topology.members().len() == ids.len()
                && ids.iter().all(|id| r.topology.is_member(id))
        }) && ids.iter().all(|id| n.node.membership().is_live(id))
    })
}

/// Starts the nodes `names`, the first founding the ring and the others joining through it
/// (node `i` stops with `shutdowns[i]`), and waits until every one sees the same settled ring.
pub async fn settled_cluster<const K: usize>(
    names: [&str; K],
    shutdowns: [&CancellationToken; K],
    tweak: impl Fn(&mut ServerArgs) + Copy,
) -> ([Running; K], Vec<NodeId>) {
    let mut nodes: Vec<Running> = Vec::with_capacity(K);
    for (name, shutdown) in names.iter().zip(shutdowns) {
        let seed = nodes.first().map(|n| n.listen.clone());
        nodes.push(start(name, seed.as_deref(), shutdown, tweak).await);
    }
    let ids = node_ids(&names);
    let all: Vec<&Running> = nodes.iter().collect();
    eventually(
        Duration::from_secs(30),
        "the nodes never formed a ring",
        || settled(&all, &ids),
    )
    .await;
    let Ok(nodes) = <[Running; K]>::try_from(nodes) else {
        unreachable!("K nodes were started");
    };
    (nodes, ids)
}
