//! The node: owns the storage engine, membership, the peer pool and the background loops,
//! and serves inter-node requests (replica reads and writes, forwarded client requests,
//! ring fetches).
//!
//! Identity: the first start in a data directory draws a random *epoch* and stores it with the
//! node id. A start after a clean stop reuses it; a start after a crash (no clean-stop marker
//! for that epoch) or in a wiped directory draws a new one, so the node's `ReplicaId` (node
//! id + epoch) is new and its version-vector counters can never collide with what its earlier
//! incarnation issued. That is what lets a coordinator send a write to its replicas before its
//! own copy is durable: a dot lost here in a crash is never issued again, because the
//! restarted node counts under another replica id.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use ringkv_core::{NodeId, PartitionId, ReplicaId, VersionSet, key_hash};
use ringkv_storage::{EngineKind, HintStore, StorageEngine};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::membership::{Membership, RING_META_KEY};
use crate::seams::{Entropy, Seams};
use crate::settings::{Settings, StorageKind};
use crate::transport::{Handler, Peers};
use crate::wire::{ClientError, Identity, Request, Response, RingState};

/// Epochs at or above this are one-off actors of writes coordinated by a fallback.
pub const FALLBACK_EPOCH_BASE: u32 = 1 << 31;
/// Storage meta key counting the one-off actors this node has used.
const ONE_OFF_ACTORS_META_KEY: &str = "one_off_actors";

/// Storage meta key holding this node's identity.
const IDENTITY_META_KEY: &str = "identity";
/// Storage meta key holding the epoch of a node that stopped cleanly; emptied at start, so
/// it names an epoch only between a clean stop and the next start.
const CLEAN_STOP_META_KEY: &str = "clean_stop";
/// Storage meta key set once this node has left the cluster.
const LEFT_META_KEY: &str = "left";

pub struct Node {
    pub(crate) settings: Settings,
    pub(crate) replica: ReplicaId,
    pub(crate) storage: Arc<dyn StorageEngine>,
    pub(crate) hints: Arc<dyn HintStore>,
    pub(crate) membership: Membership,
    pub(crate) peers: Peers,
    pub(crate) shutdown: CancellationToken,
    pub(crate) anti_entropy: crate::anti_entropy::AntiEntropyStats,
    /// Where the next anti-entropy exchange of each (partition, peer) starts.
    pub(crate) leaf_cursors: crate::anti_entropy::LeafCursors,
    pub(crate) handoff: crate::handoff::HandoffState,
    pub(crate) tombstones: crate::tombstones::TombstoneState,
    /// Where delivery of each target's hints resumes.
    pub(crate) hint_cursors: crate::hinted_handoff::HintCursors,
    /// Serialises the allocation of one-off actor ids (held by the storage task itself, so a
    /// caller that gives up at its deadline never lets two allocations overlap).
    pub(crate) one_off_lock: Arc<tokio::sync::Mutex<()>>,
    /// Set by `mark_clean_stop`. A coordinator's own write holds it shared from its check to
    /// its journal append, so every write under this node's replica id is in the journal
    /// before the clean-stop marker, or refused.
    pub(crate) stopped: Arc<std::sync::RwLock<bool>>,
    /// The network, clock, randomness and blocking calls (replaced by the simulation).
    pub(crate) seams: Seams,
    /// Whether a ring fetch prompted by a peer's newer ring runs (`ring_behind`).
    pub(crate) ring_fetch_running: std::sync::atomic::AtomicBool,
}

impl Node {
    pub async fn start(
        settings: Settings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Node>> {
        Node::start_with(settings, Seams::production(), shutdown).await
    }

    /// Starts a node on the given seams (the simulation's network, clock and randomness).
    pub async fn start_with(
        settings: Settings,
        mut seams: Seams,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Node>> {
        let (storage, hints) = match seams.storage.take() {
            Some(opened) => opened,
            None => {
                let kind = match settings.storage {
                    StorageKind::Fjall => EngineKind::Fjall,
                    StorageKind::Memory => EngineKind::Memory,
                };
                let opened = ringkv_storage::open(
                    kind,
                    &settings.data_dir.join("fjall"),
                    settings.hint_backlog_max,
                    settings.read_cache_bytes,
                )?;
                (opened.engine, opened.hints)
            }
        };
        let replica = load_identity(&settings, storage.as_ref(), seams.entropy.as_ref())?;
        let ring = match storage.get_meta(RING_META_KEY)? {
            Some(bytes) => Some(
                postcard::from_bytes::<RingState>(&bytes)
                    .map_err(|e| anyhow::anyhow!("stored ring is unreadable: {e}"))?,
            ),
            None => None,
        };
        let left = storage.get_meta(LEFT_META_KEY)?.is_some();
        let handoff =
            crate::handoff::HandoffState::load(storage.get_meta(crate::handoff::HANDOFF_META_KEY)?);
        let tombstones = crate::tombstones::TombstoneState::load(
            storage.get_meta(crate::tombstones::DOT_FLOOR_META_KEY)?,
        );
        let membership = Membership::start(&settings, &seams, ring, left).await?;
        let peers = Peers::new(
            settings.node_id.clone(),
            settings.limits.clone(),
            seams.network.clone(),
        );
        let node = Arc::new(Node {
            settings,
            replica,
            storage,
            hints,
            membership,
            peers,
            shutdown,
            anti_entropy: Default::default(),
            leaf_cursors: Default::default(),
            hint_cursors: Default::default(),
            handoff,
            tombstones,
            one_off_lock: Arc::new(tokio::sync::Mutex::new(())),
            stopped: Arc::new(std::sync::RwLock::new(false)),
            seams,
            ring_fetch_running: Default::default(),
        });
        node.persist_ring().await;
        info!(node = %node.settings.node_id, epoch = node.replica.epoch(), "node started");
        Ok(node)
    }

    /// Stops gossip, the last thing a stopped node runs; its other tasks must have ended
    /// (they hold the node), as `server::run` awaits them before calling this.
    pub async fn close(self) {
        self.membership.shutdown().await;
    }

    /// N of the cluster this node is in (its own `--n` until it has a ring).
    pub fn replicas_n(&self) -> u8 {
        self.membership
            .ring()
            .map_or(self.settings.n, |r| r.topology.params().n)
    }

    /// The R a read naming none uses: as configured, and if not configured, 2 or N if smaller.
    pub fn default_r(&self) -> u8 {
        let s = &self.settings;
        s.default_quorum(s.r, s.quorums_given.0, self.replicas_n())
    }

    /// The W a write naming none uses (as `default_r`).
    pub fn default_w(&self) -> u8 {
        let s = &self.settings;
        s.default_quorum(s.w, s.quorums_given.1, self.replicas_n())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Tombstone purge progress (what `/status` shows under `tombstones`).
    pub fn tombstones(&self) -> &crate::tombstones::TombstoneState {
        &self.tombstones
    }

    /// Runs a storage call on the blocking pool (the engines fsync), or inline in the
    /// simulation (`Seams::blocking`).
    pub(crate) async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn StorageEngine) -> T + Send + 'static,
    ) -> Result<T, ClientError> {
        let storage = self.storage.clone();
        self.seams
            .run_blocking(move || f(storage.as_ref()))
            .await
            .map_err(|e| ClientError::Internal(format!("storage task failed: {e}")))
    }

    /// Runs a write on a request's path (`update_deferred`: it reaches the journal, the
    /// caller awaits the fsync). On the calling task: applying a write takes microseconds (the
    /// fsync is no longer under the journal lock), and a trip through the blocking pool cost
    /// two thread switches per write (docs/benchmarks.md). On the pool when the engine says a
    /// write may stall (fjall sleeps writers while memtable flushes are behind), so a runtime
    /// worker never sleeps in the engine.
    pub(crate) async fn store_write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn StorageEngine) -> T + Send + 'static,
    ) -> Result<T, ClientError> {
        if self.storage.writes_may_stall() {
            return self.store(f).await;
        }
        Ok(f(self.storage.as_ref()))
    }

    /// Runs a hint store call where storage calls run.
    pub(crate) async fn hint_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn HintStore) -> T + Send + 'static,
    ) -> Result<T, String> {
        let hints = self.hints.clone();
        self.seams.run_blocking(move || f(hints.as_ref())).await
    }

    pub(crate) fn partition_of(&self, key: &[u8]) -> PartitionId {
        let q = self
            .membership
            .ring()
            .map(|r| r.topology.params().partitions)
            .unwrap_or(self.settings.partitions);
        PartitionId::of(key_hash(key), q)
    }

    /// Syncs `versions` into what this node holds for `key`.
    pub(crate) async fn merge_local(
        &self,
        key: Bytes,
        versions: VersionSet,
    ) -> Result<VersionSet, ClientError> {
        let partition = self.partition_of(&key);
        let (stored, durable) = self
            .store_write(move |s| {
                s.update_deferred(partition, &key, &mut |current| match current {
                    Some(cur) if cur.includes(&versions) => None,
                    Some(cur) => Some(cur.sync(&versions)),
                    None => Some(versions.clone()),
                })
            })
            .await?
            .map_err(|e| ClientError::Internal(e.to_string()))?;
        // The fsync is awaited here, not on a storage thread (group commit's sync thread).
        durable
            .wait()
            .await
            .map_err(|e| ClientError::Internal(e.to_string()))?;
        Ok(stored.unwrap_or_default())
    }

    /// A replica id never used before by any write: this node's id with a fresh epoch from
    /// the reserved range, the counter persisted before the id is used. Waits at most until
    /// `deadline`, for the lock and for the storage (a stalled disk fails the request, it does
    /// not pile requests up behind the lock).
    pub(crate) async fn one_off_actor(&self, deadline: Instant) -> Result<ReplicaId, ClientError> {
        let timed_out = || ClientError::Unavailable {
            message: "no one-off actor id could be persisted before the deadline".into(),
            stored_on: Some(0),
        };
        let guard = tokio::time::timeout_at(deadline, self.one_off_lock.clone().lock_owned())
            .await
            .map_err(|_| timed_out())?;
        let allocate = self.store(move |s| -> Result<u32, ringkv_storage::StorageError> {
            // Released when the allocation ends, whether or not its caller still waits.
            let _guard = guard;
            let used = match s.get_meta(ONE_OFF_ACTORS_META_KEY)? {
                Some(b) if b.len() == 4 => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                _ => 0,
            };
            s.put_meta(ONE_OFF_ACTORS_META_KEY, &(used + 1).to_be_bytes())?;
            Ok(used)
        });
        let used = tokio::time::timeout_at(deadline, allocate)
            .await
            .map_err(|_| timed_out())??
            .map_err(|e| ClientError::Internal(e.to_string()))?;
        if used >= FALLBACK_EPOCH_BASE - 1 {
            return Err(ClientError::Internal(
                "one-off actor ids are exhausted".into(),
            ));
        }
        Ok(ReplicaId::new(
            self.replica.node().clone(),
            FALLBACK_EPOCH_BASE + used,
        ))
    }

    /// Keeps `versions` for `target`, a home replica that could not take them, until it can.
    pub(crate) async fn store_hint(
        &self,
        target: NodeId,
        key: Bytes,
        versions: VersionSet,
    ) -> Result<(), ClientError> {
        // Every hint this node would keep, a peer's or its own as a coordinator: none once it
        // has left (it may already report `left`, and be stopped).
        let _accepted = self
            .accept_write()
            .map_err(|why| ClientError::Unavailable {
                message: why,
                stored_on: None,
            })?;
        // Without a ring the partition would be computed with this node's own
        // `--partitions`, which may not be the cluster's Q, and the hint filed where
        // purging (`tombstones::hinted_keys`) never looks.
        let Some(ring) = self.membership.ring() else {
            return Err(ClientError::Unavailable {
                message: "this node has no ring yet; it keeps no hint".into(),
                stored_on: None,
            });
        };
        let partition = ring.topology.partition_of(key_hash(&key));
        let hint = ringkv_storage::Hint {
            target,
            partition,
            key,
            versions,
        };
        let result = self
            .hint_call(move |hints| hints.push(hint))
            .await
            .map_err(|e| ClientError::Internal(format!("hint task failed: {e}")))?;
        result.map_err(|e| {
            metrics::counter!("ringkv_hints_refused_total").increment(1);
            tracing::warn!(error = %e, "hint refused");
            ClientError::Unavailable {
                message: e.to_string(),
                stored_on: None,
            }
        })?;
        metrics::gauge!("ringkv_hints_pending").set(self.hints.len() as f64);
        Ok(())
    }

    /// Everything this node holds for `key`: its own replica and the hints it keeps for others.
    pub(crate) async fn held_locally(
        &self,
        key: Bytes,
    ) -> Result<(Option<VersionSet>, Vec<(NodeId, VersionSet)>), ClientError> {
        let own = self.read_local(key.clone()).await?;
        let partition = self.partition_of(&key);
        let hinted = self
            .hint_call(
                move |hints| -> Result<Vec<(NodeId, VersionSet)>, ringkv_storage::StorageError> {
                    let mut out = Vec::new();
                    for target in hints.targets()? {
                        if let Some(v) = hints.get(&target, partition, &key)? {
                            out.push((target, v));
                        }
                    }
                    Ok(out)
                },
            )
            .await
            .map_err(|e| ClientError::Internal(format!("hint task failed: {e}")))?
            .map_err(|e| ClientError::Internal(e.to_string()))?;
        Ok((own, hinted))
    }

    /// What this node can answer a replica read with: its own replica, synced with any
    /// hints it keeps for the key (a fallback answers with what it holds for others).
    pub(crate) async fn read_held(&self, key: Bytes) -> Result<Option<VersionSet>, ClientError> {
        if self.hints.is_empty() {
            return self.read_local(key).await;
        }
        let (own, hinted) = self.held_locally(key).await?;
        Ok(hinted
            .into_iter()
            .map(|(_, v)| v)
            .chain(own)
            .reduce(|a, b| a.sync(&b)))
    }

    /// What this node's own replica holds for `key`. Run on the calling task, not the
    /// blocking pool: a read never waits for a disk sync (the engines serve it from memory or
    /// the page cache), and a trip through the pool costs two thread switches per read, the
    /// largest cost of a read on a small machine (docs/benchmarks.md).
    pub(crate) async fn read_local(&self, key: Bytes) -> Result<Option<VersionSet>, ClientError> {
        let partition = self.partition_of(&key);
        self.storage
            .get(partition, &key)
            .map_err(|e| ClientError::Internal(e.to_string()))
    }

    /// Answers a replica's `Read`. A "nothing" counts toward R at the asker, so it is only
    /// answered by a node whose "nothing" means the key has no value here: one that left, or
    /// that is asked as a home replica of a key it is not home for in its own ring (a
    /// coordinator on an older ring asking a node that handed the partition over and swept
    /// it), answers so that the asker counts it as failed. The ring is looked at only when
    /// nothing is held: a node home in both rings, or holding the key, reads as before.
    async fn serve_read(&self, key: Bytes, as_home: bool) -> Response {
        metrics::counter!("ringkv_replica_reads_total").increment(1);
        // A reference to the frame's bytes, not a copy of the key.
        let asked_as_home = as_home.then(|| key.clone());
        match self.read_held(key).await {
            Ok(None) if self.membership.has_left() => {
                Response::Error("this node has left the ring".into())
            }
            Ok(None) => match asked_as_home.and_then(|key| self.not_home_of(&key)) {
                Some(ring_version) => {
                    metrics::counter!("ringkv_replica_reads_not_home_total").increment(1);
                    Response::NotHome { ring_version }
                }
                None => Response::Versions(None),
            },
            Ok(v) => Response::Versions(v),
            Err(e) => Response::Error(e.to_string()),
        }
    }

    /// The version of this node's ring if this node is no home replica serving `key` in it
    /// (0 without a ring: version 0 never exists); `None` if it is one.
    fn not_home_of(&self, key: &[u8]) -> Option<u64> {
        let Some(ring) = self.membership.ring() else {
            return Some(0);
        };
        let partition = ring.topology.partition_of(key_hash(key));
        (!ring.topology.is_home(partition, self.membership.me())).then_some(ring.version)
    }

    /// A peer answered with a ring newer than this node's (`version`): fetch it from that peer
    /// now rather than at the next membership round, which fetches it only once gossip says
    /// who holds it. At most one such fetch runs at a time (every read meeting the peer would
    /// ask otherwise), bounded by the request timeout.
    pub(crate) fn ring_behind(self: &Arc<Self>, holder: &NodeId, version: u64) {
        use std::sync::atomic::Ordering;
        if self.membership.ring().is_some_and(|r| r.version >= version) {
            return;
        }
        let Some(addr) = self.membership.address(holder) else {
            return;
        };
        if self
            .ring_fetch_running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        let (me, holder) = (self.clone(), holder.clone());
        tokio::spawn(async move {
            me.fetch_ring(&holder, addr, version).await;
            me.ring_fetch_running.store(false, Ordering::SeqCst);
        });
    }

    /// Fetches `holder`'s ring, of `version` or newer, and adopts it if it is newer than this
    /// node's (persisted when adopted).
    async fn fetch_ring(&self, holder: &NodeId, addr: std::net::SocketAddr, version: u64) {
        match self
            .peers
            .call(addr, Request::FetchRing, self.settings.request_timeout)
            .await
        {
            Ok(Response::Ring(state)) if state.version >= version => {
                if self.membership.adopt(*state).await {
                    self.persist_ring().await;
                }
            }
            Ok(other) => {
                warn!(%holder, answer = other.summary(), "could not fetch the newer ring")
            }
            Err(e) => warn!(%holder, error = %e, "could not fetch the newer ring"),
        }
    }

    /// Stores the current ring so a restart resumes with it.
    pub(crate) async fn persist_ring(&self) {
        let Some(ring) = self.membership.ring() else {
            return;
        };
        let bytes = postcard::to_allocvec(ring.as_ref()).expect("rings serialize");
        if let Err(e) = self
            .store(move |s| s.put_meta(RING_META_KEY, &bytes))
            .await
            .map(|r| r.map_err(|e| e.to_string()))
        {
            warn!(error = ?e, "could not persist the ring");
        }
    }

    /// One round of membership upkeep: refresh the view, fetch a newer ring, claim joiners.
    pub(crate) async fn membership_round(&self) {
        self.membership.refresh().await;
        let known = self.membership.known_addresses();
        self.peers.forget_others(|addr| known.contains(addr));
        if let Some((holder, addr, version)) = self.membership.better_ring_holder() {
            self.fetch_ring(&holder, addr, version).await;
        }
        if let Some((next, _claiming)) = self.membership.next_ring_as_claimant().await {
            info!(
                version = next.version,
                "claimant: publishing a new ring version"
            );
            if self.membership.adopt(next).await {
                self.persist_ring().await;
            }
        }
        if self.membership.has_left() {
            let stored = self.store(|s| s.get_meta(LEFT_META_KEY)).await;
            if !matches!(stored, Ok(Ok(Some(_)))) {
                let _ = self.store(|s| s.put_meta(LEFT_META_KEY, b"1")).await;
            }
        }
        metrics::gauge!("ringkv_peers_up").set(
            self.membership
                .view()
                .peers
                .values()
                .filter(|p| p.live)
                .count() as f64,
        );
    }

    /// Background loops; returns when shutdown is requested.
    pub async fn run_background(self: Arc<Self>) {
        let membership = tokio::spawn(self.clone().every(
            self.settings.gossip_interval,
            "membership",
            |n| async move { n.membership_round().await }.boxed(),
        ));
        let hints = tokio::spawn(self.clone().every(
            self.settings.hint_interval,
            "hinted handoff",
            |n| async move { n.deliver_hints().await }.boxed(),
        ));
        let anti_entropy = tokio::spawn(self.clone().every(
            self.settings.anti_entropy_interval,
            "anti-entropy",
            |n| {
                async move {
                    let before = n
                        .anti_entropy
                        .keys_repaired
                        .load(std::sync::atomic::Ordering::Relaxed);
                    n.anti_entropy_pass().await;
                    crate::anti_entropy::log_pass(before, &n);
                }
                .boxed()
            },
        ));
        let handoff = tokio::spawn(self.clone().every(
            self.settings.handoff_interval,
            "handoff",
            |n| async move { n.handoff_round().await }.boxed(),
        ));
        let _ = tokio::join!(membership, hints, anti_entropy, handoff);
    }

    /// Runs `round` every `period` until shutdown. Each round is its own task, so a bug in one
    /// round is logged and the loop goes on instead of silently stopping for good.
    async fn every(
        self: Arc<Self>,
        period: Duration,
        name: &'static str,
        round: impl Fn(Arc<Node>) -> BoxFuture<'static, ()> + Send + 'static,
    ) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = tokio::spawn(round(self.clone())).await {
                tracing::error!(error = %e, loop_name = name, "background round failed");
            }
        }
    }

    async fn serve_request(self: Arc<Self>, request: Request, timeout: Duration) -> Response {
        if let Some(why) = self.outside_the_ring(&request) {
            return Response::Error(why);
        }
        match request {
            Request::Ping => Response::Ok,
            Request::Read { key, as_home } => self.serve_read(key, as_home).await,
            Request::Write {
                key,
                versions,
                hinted_for: None,
            } => {
                let _accepted = match self.accept_write() {
                    Ok(accepted) => accepted,
                    Err(why) => return Response::Error(why),
                };
                match self.merge_local(key, versions).await {
                    Ok(_) => Response::Ok,
                    Err(e) => Response::Error(e.to_string()),
                }
            }
            // `store_hint` refuses, and counts, like the replica write above.
            Request::Write {
                key,
                versions,
                hinted_for: Some(target),
            } => match self.store_hint(target, key, versions).await {
                Ok(()) => Response::Ok,
                Err(e) => Response::Error(e.to_string()),
            },
            Request::Coordinate(crate::wire::ClientOp::Put {
                context: Some(ctx), ..
            }) if !ctx.counters_in_range() => Response::Coordinated(Err(ClientError::BadRequest(
                "the context names a counter over the limit".into(),
            ))),
            Request::Coordinate(op) => Response::Coordinated(self.coordinate(op, timeout).await),
            ae @ (Request::MerkleSummary { .. }
            | Request::MerkleLeaves { .. }
            | Request::LeafDigests { .. }) => self.serve_anti_entropy(ae).await,
            Request::FetchRing => match self.membership.ring() {
                Some(r) => Response::Ring(Box::new((*r).clone())),
                None => Response::Error("this node has no ring yet".into()),
            },
            Request::HandoffChunk {
                partition,
                after,
                max_bytes,
            } => self.serve_chunk(partition, after, max_bytes).await,
            Request::HandoffReceived {
                node,
                target,
                partitions,
            } => {
                if self.membership.claimant().as_ref() != Some(self.membership.me()) {
                    return Response::Error("this node is not the claimant".into());
                }
                // Kept until the transition ends: only for members (a bounded set).
                if !self
                    .membership
                    .ring()
                    .is_some_and(|r| r.topology.is_member(&node))
                {
                    return Response::Error(format!("{node} is not a member of the ring"));
                }
                self.membership.record_received(node, target, partitions);
                Response::Ok
            }
            Request::Leave { .. }
                if self.membership.claimant().as_ref() != Some(self.membership.me()) =>
            {
                Response::Error("this node is not the claimant".into())
            }
            Request::Leave { node } => match self.membership.leave_as_claimant(&node).await {
                Ok(next) => {
                    if next.is_some() {
                        self.persist_ring().await;
                    }
                    Response::Ok
                }
                Err(e) => Response::Error(format!("{}{e}", crate::handoff::REFUSED_PREFIX)),
            },
            Request::SameVersions { partition, keys } => {
                self.serve_same_versions(partition, keys).await
            }
            purge @ (Request::OtherCopies { .. } | Request::Purge { .. }) => {
                self.serve_purge(purge).await
            }
        }
    }
}

impl Node {
    /// Why a peer's request names a partition this cluster's ring does not have (the engine
    /// keeps state per partition it is asked about, so a peer must not make it count to
    /// 2^32), if it does.
    fn outside_the_ring(&self, request: &Request) -> Option<String> {
        let named: &[u32] = match request {
            Request::MerkleSummary { partition }
            | Request::MerkleLeaves { partition, .. }
            | Request::LeafDigests { partition, .. }
            | Request::HandoffChunk { partition, .. }
            | Request::SameVersions { partition, .. }
            | Request::OtherCopies { partition, .. }
            | Request::Purge { partition, .. } => &[partition.index()],
            Request::HandoffReceived { partitions, .. } => partitions,
            Request::Ping
            | Request::Read { .. }
            | Request::Write { .. }
            | Request::Coordinate(_)
            | Request::FetchRing
            | Request::Leave { .. } => return None,
        };
        let Some(ring) = self.membership.ring() else {
            return Some("this node has no ring yet".into());
        };
        let q = ring.topology.params().partitions;
        named
            .iter()
            .find(|p| **p >= q)
            .map(|p| format!("partition {p} is not in this ring of {q} partitions"))
    }

    /// Records that this node stopped cleanly, so the next start keeps the epoch. From here
    /// on the node coordinates no write under its replica id (`stopped`); every write it
    /// coordinated before is in the journal ahead of the marker, so it is durable once the
    /// marker is (one journal, synced in order).
    pub(crate) fn mark_clean_stop(&self) -> Result<(), ringkv_storage::StorageError> {
        let mut stopped = self
            .stopped
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *stopped = true;
        self.storage
            .put_meta(CLEAN_STOP_META_KEY, &self.replica.epoch().to_be_bytes())
    }
}

impl Handler for Node {
    fn handle(
        self: Arc<Self>,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'static, Response> {
        self.serve_request(request, timeout).boxed()
    }
}

fn load_identity(
    settings: &Settings,
    storage: &dyn StorageEngine,
    entropy: &dyn Entropy,
) -> anyhow::Result<ReplicaId> {
    let mut previous = None;
    if let Some(bytes) = storage.get_meta(IDENTITY_META_KEY)? {
        let identity: Identity = postcard::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("stored identity is unreadable: {e}"))?;
        anyhow::ensure!(
            identity.node_id == settings.node_id,
            "data directory belongs to node {}, not {}",
            identity.node_id,
            settings.node_id
        );
        let clean = storage.get_meta(CLEAN_STOP_META_KEY)?.as_deref()
            == Some(&identity.epoch.to_be_bytes()[..]);
        // Running from here on: a crash before the next clean stop must not reuse this epoch.
        storage.put_meta(CLEAN_STOP_META_KEY, &[])?;
        if clean {
            return Ok(ReplicaId::new(identity.node_id, identity.epoch));
        }
        info!(
            old_epoch = identity.epoch,
            "the last stop was not clean: writes sent but not yet durable here may be lost, \
             so this start counts under a new epoch"
        );
        previous = Some(identity.epoch);
    }
    // Node epochs are drawn below FALLBACK_EPOCH_BASE; one-off actors take the range above.
    let mut epoch = ((entropy.next_u64() as u32) % FALLBACK_EPOCH_BASE).max(1);
    while Some(epoch) == previous {
        epoch = ((entropy.next_u64() as u32) % FALLBACK_EPOCH_BASE).max(1);
    }
    let identity = Identity {
        node_id: settings.node_id.clone(),
        epoch,
    };
    storage.put_meta(IDENTITY_META_KEY, &postcard::to_allocvec(&identity)?)?;
    Ok(ReplicaId::new(identity.node_id, epoch))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use ringkv_core::{ReplicaId, VersionVector};
    use tokio_util::sync::CancellationToken;

    use crate::common::start;
    use crate::wire::{ClientContext, ClientError, ClientOp, Request, Response};

    /// A peer's `Coordinate` whose context names a counter over `MAX_COUNTER` (only a forged or
    /// broken peer sends one: client tokens are checked when decoded) is refused as a bad
    /// request. Before, the coordinator counted the next dot past `u64::MAX`: a panic in
    /// debug builds, a wrapped dot 0 in release builds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_context_with_a_counter_over_the_limit_is_refused() {
        let shutdown = CancellationToken::new();
        let n1 = start("n1", None, &shutdown, |args| args.n = Some(1)).await;
        let me = n1.node.replica.clone();
        let other = ReplicaId::new(ringkv_core::NodeId::new("elsewhere").unwrap(), 7);
        for (replica, counter) in [
            (me.clone(), u64::MAX),
            (other, ringkv_core::constants::MAX_COUNTER + 1),
            // At the limit for the writing replica itself: the next dot would pass it, and the
            // stored set would then fail to decode here and at every peer.
            (me.clone(), ringkv_core::constants::MAX_COUNTER),
        ] {
            let context = ClientContext {
                vector: VersionVector::from_entries([(replica, counter)]),
                dots: Vec::new(),
            };
            let op = ClientOp::Put {
                key: Bytes::from_static(b"k"),
                context: Some(context),
                value: Some(Bytes::from_static(b"v")),
                w: 1,
                strict: false,
            };
            let answer = n1
                .node
                .clone()
                .serve_request(Request::Coordinate(op), Duration::from_secs(5))
                .await;
            assert!(
                matches!(
                    answer,
                    Response::Coordinated(Err(ClientError::BadRequest(_)))
                ),
                "counter {counter}: {answer:?}"
            );
        }
        let read = ClientOp::Get {
            key: Bytes::from_static(b"k"),
            r: 1,
            strict: false,
        };
        let answer = n1.node.client_op(read, Duration::from_secs(5)).await;
        assert!(
            matches!(answer, Ok(crate::wire::ClientReply::Read(None))),
            "nothing was stored, and the key still reads: {answer:?}"
        );
        shutdown.cancel();
    }

    /// Allocating a one-off actor id waits no longer than its request's deadline. Here
    /// another allocation holds the lock for good (as one stuck on a stalled disk would):
    /// the request fails as unavailable at its deadline, and the next allocation, once the
    /// lock is free, gets an id no other allocation got. Before, it waited on the lock with
    /// no deadline at all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_one_off_actor_is_allocated_by_the_deadline_or_not_at_all() {
        let shutdown = CancellationToken::new();
        let n1 = start("n1", None, &shutdown, |args| args.n = Some(1)).await;
        let first = n1
            .node
            .one_off_actor(tokio::time::Instant::now() + Duration::from_secs(5))
            .await
            .expect("a free lock gives an id");
        let held = n1.node.one_off_lock.clone().lock_owned().await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        let answer = tokio::time::timeout(Duration::from_secs(10), n1.node.one_off_actor(deadline))
            .await
            .expect("the allocation waited past its deadline");
        assert!(
            matches!(answer, Err(ClientError::Unavailable { .. })),
            "{answer:?}"
        );
        drop(held);
        let next = n1
            .node
            .one_off_actor(tokio::time::Instant::now() + Duration::from_secs(5))
            .await
            .expect("the lock is free again");
        assert_ne!(first, next);
        shutdown.cancel();
    }
}
