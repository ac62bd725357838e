//! The deterministic cluster simulation: the real node (coordinator, gossip, hinted handoff,
//! read repair, anti-entropy, handoff) for a cluster of 3 to 9 nodes in one process, on
//! turmoil's simulated network and clock, with the in-memory engine.
//!
//! A run is a seed. From it come the plan (cluster size, clock skews, faults and their times)
//! and every random choice inside the run: turmoil's latencies, the clients' operations, the
//! nodes' epochs and gossip peers, datagram loss. The same seed gives the same history, byte
//! for byte.
//!
//! Phases (virtual time): the cluster forms (`BOOTSTRAP`); clients run (`WORKLOAD`) while the
//! faults of the plan come and go, each healed before the workload ends (a node asked to
//! leave is stopped for good once it has left); then, once every
//! client's last operation is over, the checker waits at most `CONVERGENCE_BOUND` for every
//! key's home replicas to hold the same versions and the ring to settle, and the checkers of
//! `check` judge the history.
//!
//! Clients reach a node through a *front door*: the node's real transport (`transport::serve`)
//! on a second port, whose handler passes a client operation to `Node::client_op`, as the HTTP
//! front end does, and a leave request to `Node::request_leave`, as `POST /admin/leave` does
//! (HTTP parsing itself is not simulated).

pub mod check;
pub mod net;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::BoxFuture;
use ringkv_core::NodeId;
use ringkv_node::Settings;
use ringkv_node::handoff::{LeaveError, REFUSED_PREFIX};
use ringkv_node::node::Node;
use ringkv_node::seams::{BLOCKING_CALLS_MAX, Blocking, Network, Seams};
use ringkv_node::settings::{ReadFanout, ServerArgs, StorageKind};
use ringkv_node::transport::Handler;
use ringkv_node::wire::{Request, Response, RingState};
use ringkv_storage::{HintStore, MemoryEngine, MemoryHintStore, StorageEngine};
use tokio_util::sync::CancellationToken;

use crate::rng::Rng;
use net::{GossipFaults, SeededEntropy, SharedFaults, SimNetwork, SkewedClock};
pub use workload::History;

/// Inter-node port of every simulated node.
pub const NODE_PORT: u16 = 7000;
/// Front-door port (client operations) of every simulated node.
pub const FRONT_PORT: u16 = 7001;
/// Time the cluster has to form before the workload starts.
pub const BOOTSTRAP: Duration = Duration::from_secs(8);
/// How long the clients run.
pub const WORKLOAD: Duration = Duration::from_secs(20);
/// How long after the workload (every fault healed) the replicas have to converge.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);
/// Tombstone grace in the simulation: longer than any fault here holds a message back.
pub const TOMBSTONE_GRACE_MS: u64 = 3000;
/// Ring partitions of the simulated cluster.
const PARTITIONS: u32 = 16;
/// The simulation's epoch (2025-01-01T00:00:00Z): the wall clock starts there.
const EPOCH_UNIX_SECS: u64 = 1_735_689_600;
/// Largest clock skew of a node, either way.
const MAX_SKEW_MS: u64 = 10 * 60 * 1000;
/// Largest message latency on a healthy network, and under the delay fault.
const BASE_LATENCY: Duration = Duration::from_millis(5);
const SLOW_LATENCY: Duration = Duration::from_millis(400);
/// Hint backlog of a simulated node.
const HINT_BACKLOG: usize = 100_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Nodes at the start (3 to 9); a join fault adds one more.
    pub nodes: Option<usize>,
    /// Inject faults (partitions, loss, delay, crashes, pauses, skew, joins, leaves).
    pub faults: bool,
    /// The deliberately broken build: hinted handoff, read repair and anti-entropy off
    /// (`Settings::disable_repair`). Some seed of the CI batch must catch it.
    pub broken: bool,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: None,
            faults: true,
            broken: false,
        }
    }

    /// The command that replays this run with full tracing.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "RUST_LOG=debug cargo run --release -p ringkv-sim -- cluster --seed {} --trace",
            self.seed
        );
        if let Some(n) = self.nodes {
            cmd.push_str(&format!(" --nodes {n}"));
        }
        if !self.faults {
            cmd.push_str(" --no-faults");
        }
        if self.broken {
            cmd.push_str(" --broken");
        }
        cmd
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClusterSimError {
    #[error("invalid simulation: {0}")]
    Invalid(String),
    #[error("the simulation failed: {0}")]
    Turmoil(String),
}

/// A finished run: its history (what the determinism test compares) and what the checkers
/// found (empty: the run passed).
#[derive(Debug, Clone)]
pub struct SimOutcome {
    pub history: Vec<String>,
    pub violations: Vec<String>,
    /// Virtual time from the end of the workload to convergence, if it converged.
    pub converged_after: Option<Duration>,
}

impl SimOutcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// A fault of the plan, with its start and its length (virtual time from the workload start).
#[derive(Debug, Clone)]
pub enum Fault {
    /// The nodes split in two sides: TCP stalls between them (held, delivered after healing,
    /// as TCP retransmits), gossip datagrams between them are lost.
    Partition { side: Vec<usize> },
    /// A share of all gossip datagrams is lost.
    Loss { rate: f64 },
    /// Every message takes up to `SLOW_LATENCY`: datagrams reorder, TCP segments are
    /// resequenced by the simulated stack.
    Delay,
    /// The node's host crashes (its tasks and memory are gone; its storage keeps what was
    /// stored) and restarts after the fault's length.
    Crash { node: usize },
    /// Nothing reaches the node or leaves it for the fault's length, then everything held
    /// arrives at once (a stop-the-world pause, seen from the network).
    Pause { node: usize },
    /// A new node joins.
    Join,
    /// An operator asks some running node to remove this member (as `POST
    /// /admin/leave?node=ID` does); once it has left, the simulation stops it for good.
    Leave { node: usize },
}

#[derive(Debug, Clone)]
pub struct ScheduledFault {
    pub at: Duration,
    pub length: Duration,
    pub fault: Fault,
}

/// The plan of a run, drawn from its seed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub nodes: usize,
    /// Which replicas the nodes' reads ask: half the seeds run each fanout.
    pub read_fanout: ReadFanout,
    pub skews_ms: Vec<i64>,
    pub faults: Vec<ScheduledFault>,
}

impl Plan {
    pub fn draw(config: &SimConfig) -> Result<Plan, ClusterSimError> {
        let mut rng = Rng::new(config.seed ^ 0x706c_616e);
        let nodes = match config.nodes {
            Some(n) if (3..=9).contains(&n) => n,
            Some(n) => {
                return Err(ClusterSimError::Invalid(format!(
                    "--nodes {n}: the cluster simulation runs 3 to 9 nodes"
                )));
            }
            None => 3 + rng.below(3),
        };
        let mut skews_ms = Vec::new();
        let mut faults = Vec::new();
        if config.faults {
            for _ in 0..nodes + 1 {
                let skew = rng.below(2 * MAX_SKEW_MS as usize + 1) as i64 - MAX_SKEW_MS as i64;
                skews_ms.push(skew);
            }
            let count = 1 + rng.below(4);
            let mut joined = false;
            for _ in 0..count {
                let length = Duration::from_millis(1000 + rng.below(5000) as u64);
                let latest = WORKLOAD.saturating_sub(length + Duration::from_secs(2));
                let at = Duration::from_millis(500 + rng.below(latest.as_millis() as usize) as u64);
                let fault = match rng.below(6) {
                    0 => {
                        let mut side: Vec<usize> =
                            (0..nodes).filter(|_| rng.below(2) == 0).collect();
                        if side.is_empty() {
                            side.push(rng.below(nodes));
                        }
                        if side.len() == nodes {
                            side.pop();
                        }
                        Fault::Partition { side }
                    }
                    1 => Fault::Loss {
                        rate: 0.1 + rng.fraction() * 0.5,
                    },
                    2 => Fault::Delay,
                    3 => Fault::Crash {
                        node: rng.below(nodes),
                    },
                    4 => Fault::Pause {
                        node: rng.below(nodes),
                    },
                    _ if !joined && nodes < 9 => {
                        joined = true;
                        Fault::Join
                    }
                    _ => Fault::Delay,
                };
                faults.push(ScheduledFault { at, length, fault });
            }
            faults.extend(draw_leave(config.seed, nodes, &faults));
            faults.sort_by_key(|f| f.at);
        } else {
            skews_ms = vec![0; nodes + 1];
        }
        // From a stream of its own, so the rest of a seed's plan is the same either way.
        let read_fanout = match Rng::new(config.seed ^ 0x6661_6e6f_7574).below(2) {
            0 => ReadFanout::All,
            _ => ReadFanout::Quorum,
        };
        Ok(Plan {
            nodes,
            read_fanout,
            skews_ms,
            faults,
        })
    }
}

/// Members a leave must leave behind (the ring's N: the topology refuses a leave below it).
const MIN_MEMBERS: usize = 3;
/// The latest a leave is asked for: early enough in the workload for its handoff to run
/// while clients write, and to finish well within the convergence bound.
const LATEST_LEAVE: Duration = Duration::from_secs(14);

/// Whether the seed schedules a leave, and of which node, drawn from a stream of its own (so
/// the other faults of a seed's plan are the same with or without it). Half the seeds that can
/// leave one node do: those with more than N nodes, and those of N nodes with a join, whose
/// leave comes after it (the operator waits for the joiner to be a member before asking; see
/// `workload::spawn_admin`). Never the founding node `n1`: every other node's only seed is
/// `n1`, so a node restarting after a crash, or the joiner, could no longer find the cluster
/// once it is gone. A third of the leaves also crash the leaver within a second of the request,
/// for 1 to 3 s, most often before its partitions have switched (the other faults rarely hit
/// the leaver in that window).
fn draw_leave(seed: u64, nodes: usize, faults: &[ScheduledFault]) -> Vec<ScheduledFault> {
    let mut rng = Rng::new(seed ^ 0x006c_6561_7665);
    if rng.below(2) == 0 {
        return Vec::new();
    }
    let earliest = if nodes > MIN_MEMBERS {
        Duration::from_millis(500)
    } else {
        match faults.iter().find(|f| matches!(f.fault, Fault::Join)) {
            Some(join) => join.at + Duration::from_secs(1),
            None => return Vec::new(),
        }
    };
    if earliest > LATEST_LEAVE {
        return Vec::new();
    }
    let span = (LATEST_LEAVE - earliest).as_millis() as usize;
    let at = earliest + Duration::from_millis(rng.below(span + 1) as u64);
    let node = 1 + rng.below(nodes - 1);
    let mut planned = vec![ScheduledFault {
        at,
        length: Duration::ZERO,
        fault: Fault::Leave { node },
    }];
    if rng.below(3) == 0 {
        // Healed by LATEST_LEAVE + 4 s, 2 s before the workload ends, as every fault.
        planned.push(ScheduledFault {
            at: at + Duration::from_millis(rng.below(1000) as u64),
            length: Duration::from_millis(1000 + rng.below(2000) as u64),
            fault: Fault::Crash { node },
        });
    }
    planned
}

pub fn node_name(index: usize) -> String {
    format!("n{}", index + 1)
}

/// What the driver and the clients share with a node's host across its restarts.
struct NodeSlot {
    storage: Arc<dyn StorageEngine>,
    hints: Arc<dyn HintStore>,
    starts: AtomicU64,
    node: Mutex<Option<Arc<Node>>>,
}

/// The running nodes, for the checker (rings), the clients and the driver.
#[derive(Clone, Default)]
pub struct NodeTable {
    slots: Arc<Mutex<BTreeMap<usize, Arc<NodeSlot>>>>,
    /// Nodes that left and were stopped for good: clients no longer send them anything.
    gone: Arc<Mutex<BTreeSet<usize>>>,
}

impl NodeTable {
    fn slot(&self, index: usize) -> Option<Arc<NodeSlot>> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&index)
            .cloned()
    }

    /// The running nodes, by index.
    pub fn running(&self) -> Vec<(usize, Arc<Node>)> {
        let slots: Vec<(usize, Arc<NodeSlot>)> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(i, s)| (*i, s.clone()))
            .collect();
        slots
            .into_iter()
            .filter_map(|(i, s)| {
                s.node
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .map(|n| (i, n))
            })
            .collect()
    }

    fn clear(&self, index: usize) {
        if let Some(slot) = self.slot(index) {
            *slot.node.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Whether the node left the cluster and was stopped for good.
    pub fn is_gone(&self, index: usize) -> bool {
        self.gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&index)
    }

    fn retire(&self, index: usize) {
        self.clear(index);
        self.gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index);
    }

    /// The newest ring (version, then digest) the running nodes hold.
    pub fn newest_ring(&self) -> Option<Arc<RingState>> {
        self.running()
            .iter()
            .filter_map(|(_, n)| n.membership().ring())
            .max_by_key(|r| (r.version, r.digest()))
    }
}

/// A node's front door: client operations go to `Node::client_op` (as from the HTTP front
/// end), a `Leave` to `Node::request_leave` (as from `POST /admin/leave?node=ID`: refused
/// with `handoff::REFUSED_PREFIX`, the 400; otherwise an error to try again, the 503);
/// anything else is served as the inter-node port serves it.
struct FrontDoor(Arc<Node>);

impl Handler for FrontDoor {
    fn handle(
        self: Arc<Self>,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'static, Response> {
        async move {
            match request {
                Request::Coordinate(op) => {
                    Response::Coordinated(self.0.client_op(op, timeout).await)
                }
                Request::Leave { node } => match self.0.request_leave(node).await {
                    Ok(_) => Response::Ok,
                    Err(LeaveError::Refused(why)) => {
                        Response::Error(format!("{REFUSED_PREFIX}{why}"))
                    }
                    Err(LeaveError::Unavailable(why)) => Response::Error(why),
                },
                other => self.0.clone().handle(other, timeout).await,
            }
        }
        .boxed()
    }
}

fn addr_of(name: &str, port: u16) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(name), port)
}

fn settings_for(index: usize, broken: bool, read_fanout: ReadFanout) -> Result<Settings, String> {
    let name = node_name(index);
    let listen = addr_of(&name, NODE_PORT);
    let seeds = if index == 0 {
        Vec::new()
    } else {
        vec![addr_of(&node_name(0), NODE_PORT).to_string()]
    };
    let args = ServerArgs {
        node_id: Some(name.clone()),
        listen: Some(listen.to_string()),
        http: Some(SocketAddr::new(listen.ip(), 8080).to_string()),
        data_dir: Some(format!("/simulated/{name}").into()),
        seeds,
        storage: Some(StorageKind::Memory),
        partitions: Some(PARTITIONS),
        n: Some(3),
        r: Some(2),
        w: Some(2),
        gossip_interval_ms: Some(100),
        anti_entropy_interval_ms: Some(500),
        hint_interval_ms: Some(200),
        request_timeout_ms: Some(1000),
        // Tombstones are purged within a run, so the resurrection checker covers purging.
        tombstone_grace_ms: Some(TOMBSTONE_GRACE_MS),
        handoff_interval_ms: Some(200),
        handoff_bytes_per_second: Some(10_000_000),
        hint_backlog_max: Some(HINT_BACKLOG),
        read_fanout: Some(read_fanout),
        test_disable_repair: broken,
        ..Default::default()
    };
    Settings::resolve(args).map_err(|e| e.to_string())
}

/// Runs one node's host until the simulation ends or crashes it.
async fn run_node(
    index: usize,
    slot: Arc<NodeSlot>,
    faults: SharedFaults,
    seed: u64,
    skew_ms: i64,
    broken: bool,
    read_fanout: ReadFanout,
) -> Result<(), Box<dyn std::error::Error>> {
    let start = slot.starts.fetch_add(1, Ordering::SeqCst);
    let settings = settings_for(index, broken, read_fanout)?;
    let incarnation = seed ^ ((index as u64 + 1) << 32) ^ (start << 48);
    let network: Arc<dyn Network> = Arc::new(SimNetwork::new(faults, incarnation ^ 0x6e6574));
    let seams = Seams {
        network: network.clone(),
        clock: Arc::new(SkewedClock { skew_ms }),
        entropy: Arc::new(SeededEntropy::new(incarnation)),
        blocking: Blocking::Inline,
        blocking_slots: Arc::new(tokio::sync::Semaphore::new(BLOCKING_CALLS_MAX)),
        storage: Some((slot.storage.clone(), slot.hints.clone())),
    };
    let limits = settings.limits.clone();
    let listener = network.bind(settings.listen).await?;
    let front = network
        .bind(SocketAddr::new(settings.listen.ip(), FRONT_PORT))
        .await?;
    let shutdown = CancellationToken::new();
    let node = Node::start_with(settings, seams, shutdown.clone())
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(ringkv_node::transport::serve(
        listener,
        node.clone(),
        limits.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(ringkv_node::transport::serve(
        front,
        Arc::new(FrontDoor(node.clone())),
        limits,
        shutdown.clone(),
    ));
    *slot.node.lock().unwrap_or_else(|e| e.into_inner()) = Some(node.clone());
    node.run_background().await;
    Ok(())
}

/// Runs one seed.
pub fn run(config: &SimConfig) -> Result<SimOutcome, ClusterSimError> {
    let plan = Plan::draw(config)?;
    let history = History::default();
    history.push(format!(
        "plan seed={} nodes={} broken={} read_fanout={:?} skews_ms={:?}",
        config.seed, plan.nodes, config.broken, plan.read_fanout, plan.skews_ms
    ));
    for f in &plan.faults {
        history.push(format!(
            "plan fault at={}ms length={}ms {:?}",
            f.at.as_millis(),
            f.length.as_millis(),
            f.fault
        ));
    }
    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_UNIX_SECS))
        .simulation_duration(BOOTSTRAP + WORKLOAD + CONVERGENCE_BOUND + Duration::from_secs(30))
        .max_message_latency(BASE_LATENCY)
        .tcp_capacity(65_536)
        .udp_capacity(4_096)
        .build();
    let faults: SharedFaults = Arc::new(Mutex::new(GossipFaults::default()));
    let table = NodeTable::default();
    let add_node = |sim: &mut turmoil::Sim<'_>, index: usize| {
        let slot = Arc::new(NodeSlot {
            storage: Arc::new(MemoryEngine::new()),
            hints: Arc::new(MemoryHintStore::new(HINT_BACKLOG)),
            starts: AtomicU64::new(0),
            node: Mutex::new(None),
        });
        table
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, slot.clone());
        let (faults, seed, skew, broken, fanout) = (
            faults.clone(),
            config.seed,
            plan.skews_ms.get(index).copied().unwrap_or(0),
            config.broken,
            plan.read_fanout,
        );
        sim.host(node_name(index), move || {
            run_node(
                index,
                slot.clone(),
                faults.clone(),
                seed,
                skew,
                broken,
                fanout,
            )
        });
    };
    for index in 0..plan.nodes {
        add_node(&mut sim, index);
    }
    let workload_start = BOOTSTRAP;
    let workload_end = BOOTSTRAP + WORKLOAD;
    let records = Arc::new(Mutex::new(check::Records::default()));
    workload::spawn_clients(
        &mut sim,
        config.seed,
        plan.nodes,
        table.clone(),
        records.clone(),
        workload_start..workload_end,
        history.clone(),
    );
    workload::spawn_checker(
        &mut sim,
        config.seed,
        table.clone(),
        records.clone(),
        workload::clients_done(workload_end),
        CONVERGENCE_BOUND,
        history.clone(),
    );
    let leave = plan.faults.iter().find_map(|f| match f.fault {
        Fault::Leave { node } => Some((node, workload_start + f.at)),
        _ => None,
    });
    if let Some((node, at)) = leave {
        workload::spawn_admin(
            &mut sim,
            config.seed,
            table.clone(),
            node,
            at,
            workload_end,
            history.clone(),
        );
    }
    let clients = workload::client_names(leave.is_some());

    // The driver: step the simulation, start and heal faults on schedule.
    let mut events: Vec<(Duration, usize, bool)> = Vec::new();
    for (i, f) in plan.faults.iter().enumerate() {
        events.push((workload_start + f.at, i, true));
        if !matches!(f.fault, Fault::Join | Fault::Leave { .. }) {
            events.push((workload_start + f.at + f.length, i, false));
        }
    }
    events.sort_by_key(|e| (e.0, e.1, e.2));
    let mut next_event = 0;
    let mut formed_checked = false;
    let mut extra_nodes = plan.nodes;
    let mut violations = Vec::new();
    // A node asked to leave and still to be stopped once it has.
    let mut leaving: Option<usize> = None;
    loop {
        let done = sim
            .step()
            .map_err(|e| ClusterSimError::Turmoil(e.to_string()))?;
        if done {
            break;
        }
        let now = sim.elapsed();
        if !formed_checked && now >= workload_start {
            formed_checked = true;
            let formed = cluster_formed(&table, plan.nodes);
            history.push(format!("{}ms cluster formed: {formed}", now.as_millis()));
            if !formed {
                violations.push(format!(
                    "the cluster of {} nodes did not form within {:?}",
                    plan.nodes, BOOTSTRAP
                ));
            }
        }
        if let Some(node) = leaving
            && let Some(version) = has_left(&table, node)
        {
            leaving = None;
            if sim.is_host_running(node_name(node)) {
                sim.crash(node_name(node));
            }
            table.retire(node);
            history.push(format!(
                "{}ms {} has left (ring version {version}): stopped for good",
                now.as_millis(),
                node_name(node)
            ));
        }
        while next_event < events.len() && events[next_event].0 <= now {
            let (_, i, begin) = events[next_event];
            next_event += 1;
            let fault = &plan.faults[i].fault;
            let skipped = match fault {
                Fault::Crash { node } | Fault::Pause { node } if table.is_gone(*node) => {
                    " (skipped: the node has left)"
                }
                _ => "",
            };
            history.push(format!(
                "{}ms fault {} {:?}{skipped}",
                now.as_millis(),
                if begin { "begins" } else { "heals" },
                fault
            ));
            if skipped.is_empty() {
                apply(
                    &mut sim,
                    &faults,
                    &table,
                    fault,
                    begin,
                    plan.nodes,
                    &hosts(extra_nodes, &clients),
                );
            }
            match fault {
                Fault::Join if begin => {
                    add_node(&mut sim, extra_nodes);
                    extra_nodes += 1;
                }
                Fault::Leave { node } => leaving = Some(*node),
                _ => {}
            }
        }
    }
    let records = records.lock().unwrap_or_else(|e| e.into_inner());
    violations.extend(check::check(&records, CONVERGENCE_BOUND));
    let converged_after = records.converged_after;
    for v in &violations {
        history.push(format!("violation: {v}"));
    }
    Ok(SimOutcome {
        history: history.lines(),
        violations,
        converged_after,
    })
}

fn cluster_formed(table: &NodeTable, nodes: usize) -> bool {
    let running = table.running();
    running.len() == nodes
        && running.iter().all(|(_, n)| {
            n.membership().ring().is_some_and(|r| {
                r.topology.transition().is_none() && r.topology.committed().members().len() == nodes
            })
        })
}

/// Whether a node asked to leave has left, and the version of the ring that says so: it
/// reports it itself (`/status` `"left": true`: out of the ring, holding no keys or hints) or, while it is down, the newest ring of the
/// running nodes no longer lists it (a ring that does not list a member has no transition
/// pending that involves it).
fn has_left(table: &NodeTable, node: usize) -> Option<u64> {
    let running = table.running();
    let id = NodeId::new(node_name(node)).ok()?;
    match running.iter().find(|(i, _)| *i == node) {
        Some((_, n)) => {
            let ring = n.membership().ring()?;
            (n.left_and_drained() && !ring.topology.is_member(&id)).then_some(ring.version)
        }
        None => {
            let ring = table.newest_ring()?;
            (!ring.topology.is_member(&id)).then_some(ring.version)
        }
    }
}

fn ip(sim: &turmoil::Sim<'_>, index: usize) -> IpAddr {
    sim.lookup(node_name(index))
}

fn cut(faults: &SharedFaults, a: IpAddr, b: IpAddr, on: bool) {
    let mut f = faults.lock().unwrap_or_else(|e| e.into_inner());
    if on {
        f.cut.insert((a.min(b), a.max(b)));
    } else {
        f.cut.remove(&(a.min(b), a.max(b)));
    }
}

fn apply(
    sim: &mut turmoil::Sim<'_>,
    faults: &SharedFaults,
    table: &NodeTable,
    fault: &Fault,
    begin: bool,
    nodes: usize,
    hosts: &[String],
) {
    match fault {
        Fault::Partition { side } => {
            for a in side {
                for b in (0..nodes).filter(|b| !side.contains(b)) {
                    let (ia, ib) = (ip(sim, *a), ip(sim, b));
                    cut(faults, ia, ib, begin);
                    if begin {
                        sim.hold(node_name(*a), node_name(b));
                    } else {
                        sim.release(node_name(*a), node_name(b));
                    }
                }
            }
        }
        Fault::Loss { rate } => {
            faults.lock().unwrap_or_else(|e| e.into_inner()).loss = if begin { *rate } else { 0.0 };
        }
        Fault::Delay => {
            sim.set_max_message_latency(if begin { SLOW_LATENCY } else { BASE_LATENCY });
        }
        Fault::Crash { node } => {
            if begin {
                sim.crash(node_name(*node));
                table.clear(*node);
            } else {
                sim.bounce(node_name(*node));
            }
        }
        Fault::Pause { node } => {
            let name = node_name(*node);
            for other in hosts.iter().filter(|h| **h != name) {
                if begin {
                    sim.hold(name.as_str(), other.as_str());
                } else {
                    sim.release(name.as_str(), other.as_str());
                }
            }
        }
        Fault::Join | Fault::Leave { .. } => {}
    }
}

/// Every host of the simulation: the nodes registered so far and the clients.
fn hosts(registered: usize, clients: &[String]) -> Vec<String> {
    (0..registered)
        .map(node_name)
        .chain(clients.iter().cloned())
        .collect()
}

/// Runs one seed; an error or a panic inside the run is reported as a violation, so a batch
/// goes on and the seed is printed.
pub fn run_reported(config: &SimConfig) -> SimOutcome {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(config)));
    let failure = match result {
        Ok(Ok(outcome)) => return outcome,
        Ok(Err(e)) => e.to_string(),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            format!("the run panicked: {message}")
        }
    };
    SimOutcome {
        history: vec![format!("seed {} failed to run: {failure}", config.seed)],
        violations: vec![failure],
        converged_after: None,
    }
}

/// What a failed run prints: the seed, the violations, and the replay command.
pub fn failure_report(config: &SimConfig, outcome: &SimOutcome) -> String {
    let mut out = format!("ringkv-sim: seed {} FAILED:\n", config.seed);
    for v in &outcome.violations {
        out.push_str(&format!("  - {v}\n"));
    }
    out.push_str(&format!("  replay: {}", config.replay_command()));
    out
}
