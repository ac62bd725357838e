//! Membership: who is in the cluster, how to reach them, who is alive, and the ring every
//! member agrees on.
//!
//! Gossip and failure detection are chitchat's (scuttlebutt anti-entropy gossip over UDP on
//! the `--listen` port, seed nodes, phi-accrual failure detector). Each node publishes its
//! addresses, zone, weight, status and the version and digest of the ring it holds.
//!
//! The ring is agreed on by versions, like Riak's claimant: the ring with the highest
//! (version, digest) wins and is fetched from a node that holds it over the TCP transport
//! (rings are too big for a gossip datagram at large Q). The *claimant*, the live ring member
//! with the smallest node id, is the only node that makes a new version: when it sees live
//! nodes that are not yet members, it runs the claim algorithm from the current ring (so
//! movement is minimal) and publishes version + 1. Two claimants on two sides of a partition
//! may both make a version; the (version, digest) order picks one everywhere after healing,
//! and the claimant then re-adds whoever is still missing.
//!
//! Laws: a node is never a cluster of its own by accident (only a node started without seeds,
//! or with only itself as seed, creates a ring; a node with seeds waits to be claimed); a
//! failure is not a departure (a down node keeps its partitions); rings only move forward.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion,
    spawn_chitchat_seeded,
};
use ringkv_core::NodeId;
use ringkv_core::ring::{MAX_WEIGHT, MAX_ZONE_BYTES, Member, Ring, RingParams};
use ringkv_core::topology::{Topology, TopologyError};
use tracing::{info, warn};

use crate::seams::Seams;
use crate::settings::Settings;
pub use crate::wire::RingState;

/// Phi above which chitchat considers a peer dead: about this many silent gossip intervals
/// (chitchat's phi is the time since the last heartbeat over the mean interval). 8 is
/// chitchat's default; lower values made loaded machines report live nodes down.
pub const PHI_THRESHOLD: f64 = 8.0;
/// Storage meta key holding the adopted ring.
pub const RING_META_KEY: &str = "ring";

mod keys {
    pub const LISTEN: &str = "listen";
    pub const HTTP: &str = "http";
    pub const RESP: &str = "resp";
    pub const ZONE: &str = "zone";
    pub const WEIGHT: &str = "weight";
    pub const STATUS: &str = "status";
    pub const RING: &str = "ring";
}

/// The highest ring version a node adopts (2^53; one version per membership change, so no
/// cluster reaches it). A forged ring at `u64::MAX` would leave no next version to publish,
/// and membership could never change again.
pub const MAX_RING_VERSION: u64 = 1 << 53;

/// A member's lifecycle status, as it publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not a member of the committed ring yet (waiting to be claimed, or receiving data).
    Joining,
    Up,
    /// Asked to leave; hands its partitions over.
    Leaving,
    /// Left: owns nothing; never claimed again (a node id that left rejoins with a wiped
    /// data directory).
    Left,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Joining => "joining",
            Status::Up => "up",
            Status::Leaving => "leaving",
            Status::Left => "left",
        }
    }
    fn parse(s: &str) -> Option<Status> {
        match s {
            "joining" => Some(Status::Joining),
            "up" => Some(Status::Up),
            "leaving" => Some(Status::Leaving),
            "left" => Some(Status::Left),
            _ => None,
        }
    }
}

/// What one node knows of another.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub id: NodeId,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub resp: Option<SocketAddr>,
    pub zone: String,
    pub weight: u32,
    pub status: Status,
    pub live: bool,
    pub ring_version: u64,
    pub ring_digest: u64,
    /// The gossip generation of this incarnation (its start time): a node restarted, wiped
    /// or not, comes back with a larger one.
    pub generation: u64,
}

/// The node's view of the cluster, swapped as a whole on every refresh.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub peers: BTreeMap<NodeId, PeerInfo>,
}

impl ClusterView {
    pub fn is_live(&self, node: &NodeId) -> bool {
        self.peers.get(node).is_some_and(|p| p.live)
    }
}

pub struct Membership {
    me: NodeId,
    settings: Settings,
    chitchat: ChitchatHandle,
    view: RwLock<Arc<ClusterView>>,
    ring: RwLock<Option<Arc<RingState>>>,
    /// Addresses of the nodes gossip carries, and of ring members after chitchat forgot them
    /// (a member down for long); pruned to those on every refresh.
    known: RwLock<HashMap<NodeId, PeerInfo>>,
    /// Whether this node was a member and left (persisted by the node).
    left: std::sync::atomic::AtomicBool,
    /// Set by the handoff round once this node has left and holds neither keys nor hints:
    /// stopping it then loses nothing. Only then does it publish (and report) `left`.
    drained: std::sync::atomic::AtomicBool,
    /// Whether this incarnation of the node (this data directory) was ever made a member: it
    /// held a ring listing it and not leaving. Only such a node can leave; a wiped node that
    /// restarts under the id of a member being removed is a newcomer, not a leaver.
    made_member: std::sync::atomic::AtomicBool,
    /// Serialises the making of new ring versions on this node (claimant rounds, leaves).
    claim_lock: tokio::sync::Mutex<()>,
    /// Handoff confirmations received as claimant: per node, the target digest and the
    /// partitions it holds. Folded into the next ring version.
    received: std::sync::Mutex<BTreeMap<NodeId, (u64, Vec<u32>)>>,
    /// Why the gossip task ended, if it did (chitchat's task can panic; it did when its
    /// digest outgrew a datagram, which the vendored chitchat now prevents by learning no
    /// more nodes, docs/design.md §12).
    gossip_failure: Arc<std::sync::Mutex<Option<String>>>,
    /// Ranks of rings refused as another cluster's (`adopt`), bounded.
    refused_rings: Mutex<BTreeSet<(u64, u64)>>,
    /// As claimant: since when each leaving member has been seen down without a break (at
    /// most one entry per leaving member; `release_dead_receivers`).
    down_since: Mutex<BTreeMap<NodeId, tokio::time::Instant>>,
}

/// Gossip intervals a leaving receiver must stay down, as seen by the claimant, before the
/// transition stops waiting for it (on top of the failure detector's own eight or so): a
/// claimant that just started, whose view does not show its peers up yet, or a node that
/// only missed a few rounds, does not lose its partitions to stand-ins.
const RELEASE_AFTER_DOWN_INTERVALS: u32 = 30;

/// Rings refused as another cluster's that `better_ring_holder` passes over (the oldest
/// forgotten first).
const REFUSED_RINGS_MAX: usize = 64;

/// Of `peers`, the live one advertising the best ring above `mine` that is not `refused`.
fn best_ring_holder<'a>(
    peers: impl Iterator<Item = &'a PeerInfo>,
    me: &NodeId,
    mine: (u64, u64),
    refused: &BTreeSet<(u64, u64)>,
) -> Option<(NodeId, SocketAddr, u64)> {
    peers
        .filter(|p| p.live && p.id != *me)
        .map(|p| (p, (p.ring_version, p.ring_digest)))
        .filter(|(_, rank)| *rank > mine && !refused.contains(rank))
        .max_by_key(|(_, rank)| *rank)
        .map(|(p, _)| (p.id.clone(), p.listen, p.ring_version))
}

/// Why `next` cannot be a later version of `current`'s cluster, if it cannot: Q and N are
/// fixed when a cluster is created (every stored partition id depends on Q). A ring with
/// others comes from another cluster (a seed of the wrong cluster): adopting it would misplace
/// every key, and stored partitions past its Q would fail every sweep. (Members are not
/// compared: a node down through a whole change of membership must still adopt the ring that
/// no longer lists anyone it knew, and hand its keys over.)
fn foreign_ring(current: &RingState, next: &RingState) -> Option<String> {
    if current.cluster != next.cluster {
        return Some(format!(
            "cluster {:016x} where this node is in cluster {:016x}",
            next.cluster, current.cluster
        ));
    }
    let (was, now) = (current.topology.params(), next.topology.params());
    if was != now {
        return Some(format!(
            "Q={} N={} where this cluster has Q={} N={}",
            now.partitions, now.n, was.partitions, was.n
        ));
    }
    None
}

impl Membership {
    /// Starts gossip. `ring` is the ring this node persisted before, if any.
    pub async fn start(
        settings: &Settings,
        seams: &Seams,
        ring: Option<RingState>,
        left: bool,
    ) -> anyhow::Result<Membership> {
        let me = settings.node_id.clone();
        let generation = seams.clock.unix_millis();
        let seeds: Vec<String> = settings
            .seeds
            .iter()
            .filter(|s| !settings.is_own_address(s))
            .map(|s| s.to_string())
            .collect();
        let ring = match ring {
            Some(ring) => Some(ring),
            None if seeds.is_empty() => {
                Some(Self::founding_ring(settings, seams.entropy.next_u64())?)
            }
            None => None,
        };
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(me.as_str().to_string(), generation, settings.listen),
            cluster_id: "ringkv".into(),
            gossip_interval: settings.gossip_interval,
            listen_addr: settings.listen,
            seed_nodes: seeds,
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: PHI_THRESHOLD,
                sampling_window_size: 100,
                max_interval: settings.gossip_interval * 20,
                initial_interval: settings.gossip_interval,
                dead_node_grace_period: settings.dead_node_grace,
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let mut initial = vec![
            (keys::LISTEN.to_string(), settings.listen.to_string()),
            (keys::HTTP.to_string(), settings.http.to_string()),
            (keys::ZONE.to_string(), settings.zone.clone()),
            (keys::WEIGHT.to_string(), settings.weight.to_string()),
        ];
        if let Some(resp) = settings.resp {
            initial.push((keys::RESP.to_string(), resp.to_string()));
        }
        let chitchat = spawn_chitchat_seeded(
            config,
            initial,
            seams.network.gossip(),
            seams.entropy.next_u64(),
        )
        .await?;
        let gossip_failure = Arc::new(std::sync::Mutex::new(None));
        let watcher = chitchat.termination_watcher();
        let failure = gossip_failure.clone();
        tokio::spawn(async move {
            if let Err(e) = watcher.await {
                tracing::error!(error = %e, "gossip stopped: this node's view of the cluster is frozen; restart it");
                metrics::gauge!("ringkv_gossip_stopped").set(1.0);
                *failure.lock().unwrap() = Some(e.to_string());
            }
        });
        let membership = Membership {
            me,
            settings: settings.clone(),
            chitchat,
            view: RwLock::new(Arc::new(ClusterView::default())),
            ring: RwLock::new(None),
            known: RwLock::new(HashMap::new()),
            left: std::sync::atomic::AtomicBool::new(left),
            drained: std::sync::atomic::AtomicBool::new(false),
            made_member: std::sync::atomic::AtomicBool::new(
                ring.as_ref()
                    .is_some_and(|r| r.topology.is_member(&settings.node_id)),
            ),
            claim_lock: tokio::sync::Mutex::new(()),
            received: std::sync::Mutex::new(BTreeMap::new()),
            gossip_failure,
            refused_rings: Mutex::new(BTreeSet::new()),
            down_since: Mutex::new(BTreeMap::new()),
        };
        if let Some(ring) = ring {
            membership.adopt(ring).await;
        } else {
            membership.publish_status().await;
        }
        membership.refresh().await;
        Ok(membership)
    }

    /// The first ring of a new cluster, whose id is `cluster`.
    fn founding_ring(settings: &Settings, cluster: u64) -> anyhow::Result<RingState> {
        let me = Member {
            id: settings.node_id.clone(),
            weight: settings.weight,
            zone: settings.zone.clone(),
        };
        let params = RingParams {
            partitions: settings.partitions,
            n: settings.n,
        };
        let ring = Ring::claim(None, &[me], params)?;
        info!(
            partitions = params.partitions,
            n = params.n,
            cluster = format!("{cluster:016x}"),
            "founding a new cluster"
        );
        Ok(RingState::new(cluster, 1, Topology::settled(ring)))
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn ring(&self) -> Option<Arc<RingState>> {
        self.ring.read().unwrap().clone()
    }

    pub fn view(&self) -> Arc<ClusterView> {
        self.view.read().unwrap().clone()
    }

    /// The inter-node address of a node, if it was ever seen.
    pub fn address(&self, node: &NodeId) -> Option<SocketAddr> {
        if *node == self.me {
            return Some(self.settings.listen);
        }
        self.known.read().unwrap().get(node).map(|p| p.listen)
    }

    /// The inter-node addresses of this node and of every node it knows (one gossip carries,
    /// or a ring member), gathered once: the peer pool checks each pooled address against
    /// this set, not against every known node in turn.
    pub fn known_addresses(&self) -> BTreeSet<SocketAddr> {
        let known = self.known.read().unwrap();
        known
            .values()
            .map(|p| p.listen)
            .chain(std::iter::once(self.settings.listen))
            .collect()
    }

    /// Whether a node is believed alive (the node itself always is).
    pub fn is_live(&self, node: &NodeId) -> bool {
        *node == self.me || self.view().is_live(node)
    }

    /// Adopts `state` if it is newer than the current ring and a ring of the same cluster;
    /// returns whether it did.
    pub async fn adopt(&self, state: RingState) -> bool {
        {
            let mut ring = self.ring.write().unwrap();
            if ring.as_ref().is_some_and(|cur| cur.rank() >= state.rank()) {
                return false;
            }
            let refusal = if state.version > MAX_RING_VERSION {
                Some(format!(
                    "its version is over {MAX_RING_VERSION}, which no cluster reaches"
                ))
            } else {
                ring.as_deref().and_then(|cur| foreign_ring(cur, &state))
            };
            if let Some(why) = refusal {
                warn!(
                    version = state.version,
                    "refusing a ring of another cluster: {why}"
                );
                let mut refused = self.refused_rings.lock().unwrap();
                if refused.len() >= REFUSED_RINGS_MAX {
                    refused.pop_first();
                }
                refused.insert(state.rank());
                return false;
            }
            info!(
                version = state.version,
                members = state.topology.committed().members().len(),
                pending = state.topology.transition().map(|t| t.pending_transfers()),
                "adopting ring"
            );
            let was_member = ring
                .as_ref()
                .is_some_and(|r| r.topology.is_member(&self.me));
            let member = state.topology.is_member(&self.me);
            if member && !state.topology.leaving().contains(&self.me) {
                self.made_member
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if was_member && !member && self.made_member.load(std::sync::atomic::Ordering::SeqCst) {
                info!("this node left the cluster: it owns no partition any more");
                self.left.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            *ring = Some(Arc::new(state));
        }
        self.publish_status().await;
        true
    }

    /// Why gossip stopped, if it did (`None` while it runs).
    pub fn gossip_failure(&self) -> Option<String> {
        self.gossip_failure.lock().unwrap().clone()
    }

    /// Whether this node was a member and has left.
    pub fn has_left(&self) -> bool {
        self.left.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this node has left and passed on everything it held (`Node::left_and_drained`).
    pub fn left_and_drained(&self) -> bool {
        self.has_left() && self.drained.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records whether this node (having left) is drained, and publishes the status it implies
    /// when that changed.
    pub(crate) async fn set_drained(&self, drained: bool) {
        let was = self
            .drained
            .swap(drained, std::sync::atomic::Ordering::SeqCst);
        if was != drained {
            self.publish_status().await;
        }
    }

    /// This node's own status, from the ring it holds.
    pub fn own_status(&self) -> Status {
        let ring = self.ring();
        let topology = ring.as_ref().map(|r| &r.topology);
        match topology {
            // Other nodes' `/status` shows what this publishes: `left` only once stopping this
            // node loses nothing, `leaving` until then.
            _ if self.left_and_drained() => Status::Left,
            _ if self.has_left() => Status::Leaving,
            Some(t) if t.leaving().contains(&self.me) => Status::Leaving,
            Some(t) if t.committed().member(&self.me).is_some() => Status::Up,
            _ => Status::Joining,
        }
    }

    async fn publish_status(&self) {
        self.chitchat
            .with_chitchat(|c| {
                // Read under chitchat's lock, so two publications racing for it cannot leave
                // the older one last (a `leaving` computed before the node was drained,
                // written after its `left`).
                let status = self.own_status();
                let ring_key = self
                    .ring()
                    .map(|r| format!("{}:{:016x}", r.version, r.digest()))
                    .unwrap_or_default();
                let state = c.self_node_state();
                state.set(keys::STATUS, status.as_str());
                state.set(keys::RING, &ring_key);
            })
            .await;
    }

    /// Rebuilds the cluster view from chitchat's state.
    pub async fn refresh(&self) {
        let peers = self
            .chitchat
            .with_chitchat(|c| {
                let live: std::collections::HashSet<ChitchatId> = c.live_nodes().cloned().collect();
                // Every generation gossip still carries, dead ones included: what a datagram
                // must hold (docs/design.md §12).
                metrics::gauge!("ringkv_gossip_node_states").set(c.node_states().len() as f64);
                let mut newest: BTreeMap<String, PeerInfo> = BTreeMap::new();
                let mut generation: HashMap<String, u64> = HashMap::new();
                for (id, state) in c.node_states() {
                    let Some(info) = peer_info(id, state, live.contains(id)) else {
                        continue;
                    };
                    let g = generation.entry(id.node_id.to_string()).or_insert(0);
                    if id.generation_id >= *g {
                        *g = id.generation_id;
                        newest.insert(id.node_id.to_string(), info);
                    }
                }
                newest
            })
            .await;
        let view = ClusterView {
            peers: peers.into_values().map(|p| (p.id.clone(), p)).collect(),
        };
        {
            let ring = self.ring();
            let mut known = self.known.write().unwrap();
            for p in view.peers.values() {
                known.insert(p.id.clone(), p.clone());
            }
            // Bounded by what gossip carries now plus the ring's members: an id that is
            // neither (a node that left and was forgotten, or one a forged datagram named)
            // is dropped.
            known.retain(|id, _| {
                view.peers.contains_key(id)
                    || ring.as_ref().is_some_and(|r| r.topology.is_member(id))
            });
        }
        *self.view.write().unwrap() = Arc::new(view);
    }

    /// The peer advertising the best ring, if it is better than ours and not one refused as
    /// another cluster's (which would otherwise hide this cluster's newer rings for good).
    pub fn better_ring_holder(&self) -> Option<(NodeId, SocketAddr, u64)> {
        let mine = self.ring().map(|r| r.rank()).unwrap_or((0, 0));
        let refused = self.refused_rings.lock().unwrap().clone();
        best_ring_holder(self.view().peers.values(), &self.me, mine, &refused)
    }

    /// The claimant: the live member of the committed ring with the smallest id.
    pub fn claimant(&self) -> Option<NodeId> {
        let current = self.ring()?;
        current
            .topology
            .committed()
            .members()
            .iter()
            .map(|m| &m.id)
            .filter(|id| self.is_live(id))
            .min()
            .cloned()
    }

    /// Takes a node's handoff confirmation (this node being the claimant).
    pub fn record_received(&self, node: NodeId, target: u64, partitions: Vec<u32>) {
        let mut received = self.received.lock().unwrap();
        let entry = received.entry(node).or_insert((target, Vec::new()));
        if entry.0 != target {
            *entry = (target, Vec::new());
        }
        entry.1.extend(partitions);
        entry.1.sort_unstable();
        entry.1.dedup();
    }

    /// If this node is the claimant, the next ring version: confirmed handoffs folded in,
    /// a finished transition committed, or a new transition for live joining nodes and
    /// leaving members. `None` when nothing changes. Holds the claim lock while the caller
    /// adopts the result.
    pub async fn next_ring_as_claimant(
        &self,
    ) -> Option<(RingState, tokio::sync::MutexGuard<'_, ()>)> {
        let guard = self.claim_lock.lock().await;
        if self.claimant().as_ref() != Some(&self.me) {
            // Another claimant's rounds: what this node saw down before is stale.
            self.down_since.lock().unwrap().clear();
            return None;
        }
        let current = self.ring()?;
        let mut topology = current.topology.clone();
        if let Some(target) = current.target_digest() {
            let received = std::mem::take(&mut *self.received.lock().unwrap());
            for (node, (digest, partitions)) in received {
                if digest == target {
                    topology.record_received(&node, &partitions);
                }
            }
        }
        self.release_dead_receivers(&mut topology);
        topology.finish_if_done();
        let joiners = claimable_joiners(&self.view(), &topology);
        match topology.begin_transition(&joiners) {
            Ok(Some(next)) => {
                info!(
                    joining = joiners.len(),
                    leaving = next.leaving().len(),
                    transfers = next.transition().map(|t| t.pending_transfers()),
                    "claimant: starting a transition"
                );
                topology = next;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "claim failed; membership stays as it is"),
        }
        if topology == current.topology {
            return None;
        }
        Some((
            RingState::new(current.cluster, current.version.checked_add(1)?, topology),
            guard,
        ))
    }

    /// Takes every member asked to leave that has been down for `RELEASE_AFTER_DOWN_INTERVALS`
    /// off the open transition's pending lists (`Topology::release_receiver`): one removed
    /// because it is gone for good would otherwise keep the transition, and every later join
    /// and leave, waiting for ever. A leaving receiver that is up still receives what it
    /// awaits: it holds what it serves until the next transition removes it. Bounded by the
    /// leaving members, O(Q * N) each.
    fn release_dead_receivers(&self, topology: &mut Topology) {
        let now = tokio::time::Instant::now();
        let patience = self.settings.gossip_interval * RELEASE_AFTER_DOWN_INTERVALS;
        let down: Vec<NodeId> = {
            let mut down_since = self.down_since.lock().unwrap();
            down_since.retain(|n, _| topology.leaving().contains(n) && !self.is_live(n));
            for n in topology.leaving() {
                if !self.is_live(n) {
                    down_since.entry(n.clone()).or_insert(now);
                }
            }
            down_since
                .iter()
                .filter(|(_, since)| now.duration_since(**since) >= patience)
                .map(|(n, _)| n.clone())
                .collect()
        };
        for node in down {
            let pending = topology.transition().map(|t| t.pending_transfers());
            if topology.release_receiver(&node) {
                warn!(
                    %node,
                    pending_before = ?pending,
                    pending_after = ?topology.transition().map(|t| t.pending_transfers()),
                    abandoned = topology.transition().is_none(),
                    "claimant: a leaving node that is down no longer receives partitions"
                );
            }
        }
    }

    /// As claimant, marks `node` as leaving in a new ring version and adopts it.
    pub async fn leave_as_claimant(&self, node: &NodeId) -> Result<Option<RingState>, String> {
        let _guard = self.claim_lock.lock().await;
        if self.claimant().as_ref() != Some(&self.me) {
            return Err("this node is not the claimant".into());
        }
        let current = self.ring().ok_or("this node has no ring")?;
        let mut topology = current.topology.clone();
        match topology.request_leave(node) {
            Ok(()) => {}
            Err(TopologyError::AlreadyLeaving(_)) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        }
        let version = current
            .version
            .checked_add(1)
            .ok_or("the ring's version is at its limit")?;
        let next = RingState::new(current.cluster, version, topology);
        self.adopt(next.clone()).await;
        Ok(Some(next))
    }

    pub async fn shutdown(self) {
        let _ = self.chitchat.shutdown().await;
    }
}

/// The live joining peers the claimant may add to the ring: those whose published weight and
/// zone a ring accepts. One that publishes a weight outside 1..=`MAX_WEIGHT` or a zone over
/// `MAX_ZONE_BYTES` (a misconfigured node, or a forged datagram: gossip is not authenticated)
/// is left out, with a warning; passed on, it made `Ring::claim` refuse the whole claim, every
/// round, and no node could join or leave while it was up.
fn claimable_joiners(view: &ClusterView, topology: &Topology) -> Vec<Member> {
    view.peers
        .values()
        .filter(|p| p.live && p.status == Status::Joining && !topology.is_member(&p.id))
        .filter(|p| {
            let valid = (1..=MAX_WEIGHT).contains(&p.weight) && p.zone.len() <= MAX_ZONE_BYTES;
            if !valid {
                warn!(
                    node = %p.id,
                    weight = p.weight,
                    zone_bytes = p.zone.len(),
                    "a joining node publishes a weight or zone no ring accepts; not claimed"
                );
            }
            valid
        })
        .map(|p| Member {
            id: p.id.clone(),
            weight: p.weight,
            zone: p.zone.clone(),
        })
        .collect()
}

fn peer_info(id: &ChitchatId, state: &NodeState, live: bool) -> Option<PeerInfo> {
    let node = NodeId::new(id.node_id.to_string()).ok()?;
    let addr = |k: &str| state.get(k).and_then(|v| v.parse::<SocketAddr>().ok());
    let (ring_version, ring_digest) = state
        .get(keys::RING)
        .and_then(|v| v.split_once(':'))
        .and_then(|(v, d)| Some((v.parse().ok()?, u64::from_str_radix(d, 16).ok()?)))
        .unwrap_or((0, 0));
    Some(PeerInfo {
        id: node,
        listen: addr(keys::LISTEN)?,
        http: addr(keys::HTTP)?,
        resp: addr(keys::RESP),
        zone: state.get(keys::ZONE).unwrap_or("default").to_string(),
        weight: state
            .get(keys::WEIGHT)
            .and_then(|w| w.parse().ok())
            .unwrap_or(1),
        status: state
            .get(keys::STATUS)
            .and_then(Status::parse)
            .unwrap_or(Status::Joining),
        live,
        ring_version,
        ring_digest,
        generation: id.generation_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, live: bool, ring: (u64, u64)) -> PeerInfo {
        PeerInfo {
            id: NodeId::new(id).unwrap(),
            listen: "127.0.0.1:7000".parse().unwrap(),
            http: "127.0.0.1:8000".parse().unwrap(),
            resp: None,
            zone: "default".into(),
            weight: 1,
            status: Status::Up,
            live,
            ring_version: ring.0,
            ring_digest: ring.1,
            generation: 1,
        }
    }

    /// Joining peers publishing a weight or zone no ring accepts are not claimed; before,
    /// one of them made the claimant's whole claim fail, every round, so nobody could join.
    #[test]
    fn joiners_with_a_weight_or_zone_no_ring_accepts_are_not_claimed() {
        let founder = Member {
            id: NodeId::new("n1").unwrap(),
            weight: 1,
            zone: "default".into(),
        };
        let params = RingParams {
            partitions: 64,
            n: 3,
        };
        let ring = Ring::claim(None, &[founder], params).unwrap();
        let topology = Topology::settled(ring);
        let joining = |id: &str, weight: u32, zone: String| PeerInfo {
            status: Status::Joining,
            weight,
            zone,
            ..peer(id, true, (0, 0))
        };
        let view = ClusterView {
            peers: [
                joining("n2", 1, "default".into()),
                joining("zero", 0, "default".into()),
                joining("heavy", MAX_WEIGHT + 1, "default".into()),
                joining("wide", 1, "z".repeat(MAX_ZONE_BYTES + 1)),
            ]
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect(),
        };
        let joiners = claimable_joiners(&view, &topology);
        let ids: Vec<&str> = joiners.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["n2"]);
        let next = topology
            .begin_transition(&joiners)
            .expect("the claim goes through")
            .expect("n2 joins");
        assert!(next.is_member(&NodeId::new("n2").unwrap()));
    }

    /// A ring at a version no cluster reaches is refused (and remembered as refused, so its
    /// holder is not fetched from again and again); before, a ring at `u64::MAX` was adopted
    /// and left no next version, so membership could never change again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ring_whose_version_is_over_the_limit_is_refused() {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let n1 = crate::common::start("n1", None, &shutdown, |args| args.n = Some(1)).await;
        let membership = n1.node.membership();
        crate::common::eventually(Duration::from_secs(30), "n1 never founded its ring", || {
            membership.ring().is_some()
        })
        .await;
        let current = membership.ring().unwrap();
        for version in [u64::MAX, MAX_RING_VERSION + 1] {
            let forged = RingState::new(current.cluster, version, current.topology.clone());
            assert!(!membership.adopt(forged.clone()).await, "version {version}");
            assert_eq!(membership.ring().unwrap().version, current.version);
            assert!(
                membership
                    .refused_rings
                    .lock()
                    .unwrap()
                    .contains(&forged.rank())
            );
        }
        let next = RingState::new(
            current.cluster,
            current.version + 1,
            current.topology.clone(),
        );
        assert!(membership.adopt(next).await, "an ordinary next version");
        shutdown.cancel();
    }

    /// A refused ring of another cluster, however high its version, does not hide this
    /// cluster's newer ring from the node.
    #[test]
    fn the_best_ring_holder_passes_over_refused_rings() {
        let me = NodeId::new("n1").unwrap();
        let peers = [
            peer("n2", true, (11, 7)),
            peer("x1", true, (50, 9)),
            peer("n3", false, (12, 1)),
            peer("n1", true, (99, 1)),
        ];
        let best = |refused: &BTreeSet<(u64, u64)>| {
            best_ring_holder(peers.iter(), &me, (10, 3), refused).map(|(id, _, v)| (id, v))
        };
        let x1 = (NodeId::new("x1").unwrap(), 50);
        assert_eq!(best(&BTreeSet::new()), Some(x1), "the highest live ring");
        let refused = BTreeSet::from([(50, 9)]);
        let n2 = (NodeId::new("n2").unwrap(), 11);
        assert_eq!(best(&refused), Some(n2), "the refused one passed over");
        let nothing_better = best_ring_holder(peers.iter(), &me, (60, 0), &refused);
        assert!(nothing_better.is_none());
    }
}
