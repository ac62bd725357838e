//! Gossip on chitchat itself: n real chitchat 0.13 nodes (its state machine, server loop,
//! peer selection, failure detector and wire format, configured as `ringkv-node` configures
//! them) exchanging serialized datagrams over chitchat's in-process `ChannelTransport`, with
//! the largest UDP payload (65,507 bytes) as the MTU: a larger datagram is refused, as a UDP
//! socket refuses it.
//!
//! The nodes run on a single-threaded tokio runtime whose clock is *paused*: virtual time
//! advances only when every node is idle, straight to the next timer. So an interval costs
//! the CPU time of the work done in it, not wall time; a datagram takes no virtual time (on a
//! real network it takes far less than an interval); and no node falls behind its schedule
//! however slow the machine is. Nodes start `interval / n` apart, so their gossip ticks are
//! spread evenly over the interval, as independent processes' are.
//!
//! What is measured (see `GossipRun`):
//! - bootstrap: from the first node's start, the rounds until every node sees all n nodes
//!   live (checked once per round);
//! - changes: once converged, nodes spread over the cluster publish, one after the other, a
//!   new value of ringkv's `ring` key (what the claimant does when it makes a ring version);
//!   every node's key-change listener records the virtual instant it learns the value, and a
//!   change's rounds are the last of those instants after the publication, in intervals;
//! - bytes: every datagram is counted by a metering wrapper around the transport, which also
//!   keeps the largest Syn (a node's whole digest) and the datagrams refused for size;
//! - stopped servers: nodes whose gossip task ended, which only a panic inside chitchat does.
//!
//! Every Syn and SynAck carries the sender's whole digest, one entry per known node, and
//! chitchat sizes a SynAck's delta to what the datagram has left, asserting that this is at
//! least 100 bytes. ringkv's chitchat stops learning nodes before that (vendored patch,
//! vendor/chitchat/VENDORED.md): a node learns no node whose entry would leave a SynAck less
//! than 100 bytes plus a 1 KiB margin of delta, and no node whose id is longer than 64
//! bytes. So a cluster has a hard size limit (`largest_gossiping_cluster`): past it, nodes
//! stop learning nodes and the cluster never converges, but gossip keeps running.
//!
//! Not deterministic: chitchat seeds its peer-selection generator from the operating system
//! and offers no way to pass a seed, so runs differ; report several changes. `gossip_model`
//! is the seeded, replayable counterpart.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{
    ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId, ChitchatMessage,
    FailureDetectorConfig, ListenerHandle, ProtocolVersion, Serializable, spawn_chitchat,
};
use tokio::time::Instant;

use crate::gossip::{GossipError, GossipRun, GossipSetup, MAX_GOSSIP_NODES, node_name};

/// The largest UDP payload; chitchat sizes its deltas to fit it.
pub const UDP_PAYLOAD_MAX_BYTES: usize = 65_507;
/// Chitchat's phi threshold in ringkv (`ringkv_node::membership::PHI_THRESHOLD`).
const PHI_THRESHOLD: f64 = 8.0;
/// Heartbeat samples per peer in ringkv's failure detector configuration.
const SAMPLING_WINDOW: usize = 100;
/// How long a dead node's state is kept, as in ringkv (nothing dies here).
const DEAD_NODE_GRACE: Duration = ringkv_node::settings::DEAD_NODE_GRACE_DEFAULT;
/// The gossip port every simulated node listens on (each node has its own address).
const GOSSIP_PORT: u16 = 7946;
/// The cluster id ringkv gossips under.
const CLUSTER_ID: &str = "ringkv";
/// The key the measured changes write: ringkv's ring version and digest key.
const RING_KEY: &str = "ring";
/// How often, per interval, a change's wait looks at what the listeners recorded. The timing
/// itself comes from the listeners, so this only bounds how long the simulation runs past
/// the last learner. (Bootstrap is checked once per interval.)
const CHANGE_POLLS_PER_ROUND: u32 = 4;
/// Chitchat's envelope header: magic number (2 bytes), protocol version, message type.
const ENVELOPE_HEADER_BYTES: usize = 4;
/// A node's digest entry beyond its id: heartbeat, last GC version, max version (u64 each).
const NODE_DIGEST_BYTES: usize = 24;
/// The least room for a delta chitchat accepts (`DeltaSerializer::with_mtu` asserts it).
pub const DELTA_ROOM_MIN_BYTES: usize = 100;
/// The room ringkv's chitchat keeps for a SynAck's delta on top of `DELTA_ROOM_MIN_BYTES`:
/// a node learns no node past it (`MAX_DIGEST_LEN` in vendor/chitchat/src/lib.rs).
pub const DELTA_ROOM_MARGIN_BYTES: usize = 1024;
/// The longest node id ringkv's chitchat learns a node under (`MAX_NEW_NODE_ID_LEN`).
pub const LEARNT_ID_MAX_BYTES: usize = 64;

/// Runs one simulated cluster: bootstrap, then `setup.changes` changes. Builds its own
/// paused runtime.
pub fn run(setup: &GossipSetup) -> Result<GossipRun, GossipError> {
    setup.validate()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| GossipError::Runtime(e.to_string()))?;
    runtime.block_on(run_cluster(setup))
}

async fn run_cluster(setup: &GossipSetup) -> Result<GossipRun, GossipError> {
    let transport = MeteredTransport::new(setup.mtu_bytes);
    let start = Instant::now();
    let handles = spawn_cluster(setup, &transport).await?;
    let outcome = measure(&handles, setup, &transport, start).await;
    for handle in handles {
        handle.abort();
    }
    outcome
}

async fn measure(
    handles: &[ChitchatHandle],
    setup: &GossipSetup,
    transport: &MeteredTransport,
    start: Instant,
) -> Result<GossipRun, GossipError> {
    let no_convergence = async || {
        let stopped_servers = stopped_servers(handles).await;
        GossipError::NoConvergence {
            nodes: setup.nodes,
            rounds: setup.max_rounds,
            refused_datagrams: transport.meter().refused,
            stopped_servers,
        }
    };
    let Some(bootstrap_rounds) = wait_until_converged(handles, setup, start).await else {
        return Err(no_convergence().await);
    };
    let before = transport.meter().clone();
    let mut change_rounds = Vec::with_capacity(setup.changes);
    for change in 0..setup.changes {
        let changer = change * setup.nodes / setup.changes;
        let value = format!("{}:{:016x}", change + 2, change);
        let Some(rounds) = time_one_change(handles, changer, &value, setup).await else {
            return Err(no_convergence().await);
        };
        change_rounds.push(rounds);
    }
    let after = transport.meter().clone();
    let rounds: f64 = change_rounds.iter().sum();
    Ok(GossipRun {
        nodes: setup.nodes,
        bootstrap_rounds,
        change_rounds,
        bytes_per_node_round: per_node_round(after.bytes - before.bytes, setup.nodes, rounds),
        largest_syn_bytes: after.largest_syn_bytes,
        refused_datagrams: after.refused,
        stopped_servers: stopped_servers(handles).await,
    })
}

/// Nodes whose gossip server has ended. Nothing shuts them down during a run, so each of
/// these panicked.
async fn stopped_servers(handles: &[ChitchatHandle]) -> usize {
    let mut stopped = 0;
    for handle in handles {
        // `timeout` polls the watcher once before looking at the (zero) deadline.
        let ended = tokio::time::timeout(Duration::ZERO, handle.termination_watcher()).await;
        stopped += usize::from(ended.is_ok());
    }
    stopped
}

fn per_node_round(bytes: u64, nodes: usize, rounds: f64) -> u64 {
    (bytes as f64 / (nodes as f64 * rounds.max(1.0))).round() as u64
}

/// A distinct address per node, as on a real network: 10.x.y.z, all on the gossip port.
pub fn node_addr(index: usize) -> SocketAddr {
    let [_, a, b, c] = (index as u32).to_be_bytes();
    SocketAddr::from((Ipv4Addr::new(10, a, b, c), GOSSIP_PORT))
}

fn chitchat_id(index: usize, id_bytes: usize) -> ChitchatId {
    ChitchatId::new(node_name(index, id_bytes), 1, node_addr(index))
}

/// Digest entry bytes of node `index`: its chitchat id and three u64s.
fn digest_entry_bytes(index: usize, id_bytes: usize) -> usize {
    chitchat_id(index, id_bytes).serialized_len() + NODE_DIGEST_BYTES
}

/// Bytes of the digest of a node that knows nodes `0..nodes` (version 0 wire format, which
/// ringkv uses): a u16 count, then each node's entry.
pub fn digest_bytes(nodes: usize, id_bytes: usize) -> usize {
    2 + (0..nodes)
        .map(|i| digest_entry_bytes(i, id_bytes))
        .sum::<usize>()
}

/// Bytes of the Syn a node sends once it knows all of `nodes`: the envelope header, its
/// digest and the cluster id. Every Syn carries the whole digest.
pub fn full_view_syn_bytes(nodes: usize, id_bytes: usize) -> usize {
    ENVELOPE_HEADER_BYTES + digest_bytes(nodes, id_bytes) + CLUSTER_ID.to_string().serialized_len()
}

/// Whether chitchat can gossip among `digest` bytes' worth of known nodes over datagrams of
/// `mtu_bytes`: the Syn fits, and a SynAck (header, digest, delta) leaves the delta at least
/// `DELTA_ROOM_MIN_BYTES` + `DELTA_ROOM_MARGIN_BYTES` of chitchat's own datagram size, which
/// is fixed at the largest UDP payload whatever the network carries (past that a node learns
/// no more nodes).
fn gossips(digest: usize, mtu_bytes: usize) -> bool {
    let syn = ENVELOPE_HEADER_BYTES + digest + CLUSTER_ID.to_string().serialized_len();
    let delta_room = UDP_PAYLOAD_MAX_BYTES.saturating_sub(ENVELOPE_HEADER_BYTES + digest);
    syn <= mtu_bytes && delta_room >= DELTA_ROOM_MIN_BYTES + DELTA_ROOM_MARGIN_BYTES
}

/// The largest cluster chitchat can gossip in over datagrams of `mtu_bytes` (0 if none):
/// past it, nodes stop learning nodes (or Syns stop fitting a datagram). With ids longer than
/// `LEARNT_ID_MAX_BYTES` no node learns another, so at most one.
pub fn largest_gossiping_cluster(mtu_bytes: usize, id_bytes: usize) -> usize {
    let mut digest = digest_bytes(0, id_bytes);
    let mut nodes = 0;
    while nodes < MAX_GOSSIP_NODES {
        let next = digest + digest_entry_bytes(nodes, id_bytes);
        if !gossips(next, mtu_bytes) {
            break;
        }
        digest = next;
        nodes += 1;
    }
    if id_bytes > LEARNT_ID_MAX_BYTES {
        return nodes.min(1);
    }
    nodes
}

/// Chitchat's configuration as `ringkv-node` builds it, with this simulation's interval.
fn node_config(index: usize, setup: &GossipSetup) -> ChitchatConfig {
    let addr = node_addr(index);
    let seeds = (0..setup.seeds.min(setup.nodes))
        .filter(|&s| s != index)
        .map(|s| node_addr(s).to_string())
        .collect();
    ChitchatConfig {
        chitchat_id: chitchat_id(index, setup.id_bytes),
        cluster_id: CLUSTER_ID.into(),
        gossip_interval: setup.interval(),
        listen_addr: addr,
        seed_nodes: seeds,
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: PHI_THRESHOLD,
            sampling_window_size: SAMPLING_WINDOW,
            max_interval: setup.interval() * 20,
            initial_interval: setup.interval(),
            dead_node_grace_period: DEAD_NODE_GRACE,
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V0,
    }
}

/// The keys a ringkv node publishes, with values of realistic length.
fn ringkv_keys(index: usize) -> Vec<(String, String)> {
    let addr = node_addr(index);
    vec![
        ("listen".into(), addr.to_string()),
        ("http".into(), SocketAddr::new(addr.ip(), 8080).to_string()),
        ("zone".into(), format!("zone-{:02}", index % 10)),
        ("weight".into(), "1".into()),
        ("status".into(), "up".into()),
        (RING_KEY.into(), format!("1:{:016x}", 0)),
    ]
}

/// Starts the nodes `interval / n` apart, so their gossip ticks are evenly spread.
async fn spawn_cluster(
    setup: &GossipSetup,
    transport: &MeteredTransport,
) -> Result<Vec<ChitchatHandle>, GossipError> {
    let stagger = setup.interval() / setup.nodes as u32;
    let mut handles = Vec::with_capacity(setup.nodes);
    for index in 0..setup.nodes {
        let handle = spawn_chitchat(node_config(index, setup), ringkv_keys(index), transport)
            .await
            .map_err(|e| GossipError::Spawn(e.to_string()))?;
        handles.push(handle);
        tokio::time::sleep(stagger).await;
    }
    Ok(handles)
}

/// Rounds from `start` until every node sees all nodes live; `None` after `max_rounds`.
async fn wait_until_converged(
    handles: &[ChitchatHandle],
    setup: &GossipSetup,
    start: Instant,
) -> Option<f64> {
    let deadline = start + setup.interval() * setup.max_rounds;
    while Instant::now() < deadline {
        if all_see_all_live(handles).await {
            let elapsed = Instant::now() - start;
            return Some(elapsed.as_secs_f64() / setup.interval().as_secs_f64());
        }
        tokio::time::sleep(setup.interval()).await;
    }
    None
}

async fn all_see_all_live(handles: &[ChitchatHandle]) -> bool {
    for handle in handles {
        let live = handle.with_chitchat(|c| c.live_nodes().count()).await;
        if live < handles.len() {
            return false;
        }
    }
    true
}

/// When each node learned the value being timed (the changer knows it when it publishes).
type Learned = Arc<Mutex<Vec<Option<Instant>>>>;

fn lock(learned: &Learned) -> MutexGuard<'_, Vec<Option<Instant>>> {
    // A listener cannot panic while holding the lock, but a poisoned lock still holds
    // usable instants.
    learned.lock().unwrap_or_else(|e| e.into_inner())
}

/// Node `changer` publishes `value` under the ring key; returns the rounds until the last
/// node learned it, or `None` after `max_rounds`.
async fn time_one_change(
    handles: &[ChitchatHandle],
    changer: usize,
    value: &str,
    setup: &GossipSetup,
) -> Option<f64> {
    let learned: Learned = Arc::new(Mutex::new(vec![None; handles.len()]));
    let mut listeners: Vec<ListenerHandle> = Vec::with_capacity(handles.len());
    for (index, handle) in handles.iter().enumerate() {
        let listener = subscribe(
            handle,
            index,
            handles[changer].chitchat_id(),
            value,
            &learned,
        );
        listeners.push(listener.await);
    }
    // Publish half a tick spacing after the last wake-up, so that the publication never ties
    // with a node's tick (ticks are `interval / n` apart) and its order is well defined.
    tokio::time::sleep(setup.interval() / (2 * handles.len() as u32)).await;
    let published = Instant::now();
    lock(&learned)[changer] = Some(published);
    let value_owned = value.to_string();
    handles[changer]
        .with_chitchat(move |c| c.self_node_state().set(RING_KEY, &value_owned))
        .await;
    let deadline = published + setup.interval() * setup.max_rounds;
    let step = setup.interval() / CHANGE_POLLS_PER_ROUND;
    while Instant::now() < deadline {
        tokio::time::sleep(step).await;
        let learned = lock(&learned);
        if learned.iter().all(Option::is_some) {
            let last = learned.iter().flatten().max().copied()?;
            return Some((last - published).as_secs_f64() / setup.interval().as_secs_f64());
        }
    }
    None
}

/// Records in `learned[index]` when the node behind `handle` first sees `changer`'s ring
/// key hold `value`.
async fn subscribe(
    handle: &ChitchatHandle,
    index: usize,
    changer: &ChitchatId,
    value: &str,
    learned: &Learned,
) -> ListenerHandle {
    let (changer, value, learned) = (changer.clone(), value.to_string(), Arc::clone(learned));
    handle
        .with_chitchat(move |c| {
            let (changer, value, learned) = (changer.clone(), value.clone(), learned.clone());
            c.subscribe_event(RING_KEY, move |event| {
                if *event.node == changer && event.value == value {
                    lock(&learned)[index].get_or_insert_with(Instant::now);
                }
            })
        })
        .await
}

/// What crossed the simulated network.
#[derive(Debug, Clone, Default)]
struct Meter {
    bytes: u64,
    largest_syn_bytes: usize,
    /// Datagrams larger than the MTU, which the network refused.
    refused: u64,
}

/// Chitchat's in-process transport with every datagram metered.
#[derive(Clone)]
struct MeteredTransport {
    inner: ChannelTransport,
    meter: Arc<Mutex<Meter>>,
}

impl MeteredTransport {
    fn new(mtu_bytes: usize) -> MeteredTransport {
        MeteredTransport {
            inner: ChannelTransport::with_mtu(mtu_bytes),
            meter: Arc::default(),
        }
    }

    fn meter(&self) -> MutexGuard<'_, Meter> {
        self.meter.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Transport for MeteredTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.inner.open(listen_addr).await?;
        Ok(Box::new(MeteredSocket {
            inner,
            meter: Arc::clone(&self.meter),
        }))
    }
}

struct MeteredSocket {
    inner: Box<dyn Socket>,
    meter: Arc<Mutex<Meter>>,
}

#[async_trait]
impl Socket for MeteredSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let is_syn = matches!(envelope.message, ChitchatMessage::Syn { .. });
        let outcome = self.inner.send(to, envelope).await;
        let mut meter = self.meter.lock().unwrap_or_else(|e| e.into_inner());
        match &outcome {
            Ok(sent) => {
                meter.bytes += sent.num_bytes_sent as u64;
                if is_syn {
                    meter.largest_syn_bytes = meter.largest_syn_bytes.max(sent.num_bytes_sent);
                }
            }
            Err(_) => meter.refused += 1,
        }
        outcome
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.inner.recv().await
    }
}
