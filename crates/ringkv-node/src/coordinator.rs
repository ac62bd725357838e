//! The coordinator: the read and write paths of Dynamo §4.5 with the sloppy quorum of §4.6.
//!
//! - Any node takes any request. A node that is not among the key's home replicas forwards it
//!   to the first reachable home replica, which coordinates (a forwarded request is never
//!   forwarded again, so a disagreement about the ring cannot loop).
//! - The targets of a request are the home replicas; in sloppy mode (the default) a home
//!   replica believed down, or failing, is replaced by the next fallback of the preference
//!   list, which keeps the write as a hint for it. `strict` requests count home replicas only.
//!   `ringkv_core::quorum::QuorumTracker` decides success, failure and the next fallback.
//! - put/delete: the coordinator applies the DVV update under its own replica id, stores it
//!   durably, sends the resulting version set to the other targets, and answers after W
//!   acknowledgements, its own included; the other replications finish in the background.
//! - A sloppy write that no home replica can take is coordinated by the receiving node as a
//!   fallback, under a one-off actor id (`coordinate_as_fallback`), and stored as hints.
//! - get: ask the targets, answer after R replies with their sync. Replies that arrive later
//!   still count for read repair: once every target answered or the deadline passed, home
//!   replicas whose set lacks something of the merged set receive it. With `--read-fanout
//!   quorum` only R targets are asked at first (this node first); the others are held in
//!   reserve and asked when an asked one fails, when the asked ones are all done, or when
//!   `read_speculate_after` passes without the quorum.
//!
//! Every wait is bounded by the request's deadline: a slow or dead peer costs at most that.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use ringkv_core::constants::{MAX_COUNTER, MAX_SIBLING_VALUE_BYTES, MAX_SIBLINGS};
use ringkv_core::quorum::{
    MAX_FALLBACKS_PER_REQUEST, Progress, Quorum, QuorumMode, QuorumPlan, QuorumTracker, Reply,
    Target,
};
use ringkv_core::{Context, Dot, NodeId, VersionSet};
use ringkv_storage::Durable;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::node::Node;
use crate::settings::ReadFanout;
use crate::transport::TransportError;
use crate::wire::{ClientContext, ClientError, ClientOp, ClientReply, Request, Response};

/// One target's answer: who, and what it said (for reads, its versions).
type TargetReply<T> = (NodeId, Result<T, Failure>);

/// Why a target did not answer ok.
#[derive(Debug)]
enum Failure {
    /// No answer before the deadline, or the connection closed first: the request may still
    /// be applied there.
    TimedOut,
    Failed(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::TimedOut => f.write_str("timed out"),
            Failure::Failed(why) => f.write_str(why),
        }
    }
}

impl Failure {
    fn reply(&self) -> Reply {
        match self {
            Failure::TimedOut => Reply::TimedOut,
            Failure::Failed(_) => Reply::Failed,
        }
    }
}

/// Why a write taking a key from `current` to `next` is refused, if it is: it grows the
/// siblings past `MAX_SIBLINGS`, or their values past `MAX_SIBLING_VALUE_BYTES`. A write
/// that does not grow them (one that reconciles siblings with their context) always goes
/// through, so a key over a limit can always be brought back under it.
fn grows_too_large(current: &VersionSet, next: &VersionSet) -> Option<String> {
    const RECONCILE: &str = "read it and write back with its context to reconcile them";
    let (was, now) = (current.siblings().len(), next.siblings().len());
    if now > MAX_SIBLINGS && now > was {
        return Some(format!(
            "the key would have {now} siblings, over the limit of {MAX_SIBLINGS}: {RECONCILE}"
        ));
    }
    let (was, now) = (current.value_bytes(), next.value_bytes());
    if now > MAX_SIBLING_VALUE_BYTES && now > was {
        return Some(format!(
            "the key's siblings would hold {now} bytes, over the limit of \
             {MAX_SIBLING_VALUE_BYTES}: {RECONCILE}"
        ));
    }
    // A write's context is merged into the key's for good: made-up replica ids or dots in a
    // client's context, and the entry of each new coordinator or one-off actor (a fallback
    // write adds one). Past a token's limits no client could read the key and write back
    // with its context, so any write that grows the context past them is refused: a client
    // context is refused, and writes under a new replica id are refused only once the key's
    // context is full (1,024 replica ids). A write that adds nothing (one that reconciles
    // with the key's context, by a replica id it already names) always goes through.
    let entries = |v: &VersionSet| v.context().len().max(v.cloud().len());
    let (was, now) = (entries(current), entries(next));
    if now > was
        && now > CONTEXT_CHECK_FROM
        && let Err(e) = Context::of(next).try_encode()
    {
        return Some(format!(
            "the key's causal context would grow past what a context token holds ({e}): \
             write with a context this store answered"
        ));
    }
    None
}

/// Why a write taking a key from `current` to `next` with the new `dot` is refused, if it
/// is: `grows_too_large`, or a dot past `MAX_COUNTER`. No replica issues that many writes, so
/// only a forged context naming a counter at the limit leads there; the set would be stored
/// and then refused by every decoder (peers' and this node's own storage alike).
fn refuse_write(current: &VersionSet, next: &VersionSet, dot: &Dot) -> Option<ClientError> {
    if dot.counter > MAX_COUNTER {
        return Some(ClientError::BadRequest(format!(
            "the context names the counter {} of the replica writing, at the limit of \
             {MAX_COUNTER}: not a context this store made",
            dot.counter - 1
        )));
    }
    grows_too_large(current, next).map(ClientError::TooLarge)
}

/// Context entries (replica ids, or exact dots) from which a write that adds more checks that
/// the key's context still encodes as a token; real keys have a few.
const CONTEXT_CHECK_FROM: usize = 32;

impl From<TransportError> for Failure {
    fn from(e: TransportError) -> Failure {
        match e {
            // No answer: the request may have arrived and been applied all the same.
            TransportError::TimedOut(_) | TransportError::Closed(_) => Failure::TimedOut,
            other => Failure::Failed(other.to_string()),
        }
    }
}

impl Node {
    /// Entry point for a client operation arriving at this node.
    pub async fn client_op(
        self: &Arc<Self>,
        op: ClientOp,
        timeout: Duration,
    ) -> Result<ClientReply, ClientError> {
        let home = self.home_replicas(op_key(&op)).map_err(|e| match e {
            // Not joined yet: a write was stored nowhere, and says so.
            ClientError::Unavailable { message, .. } if matches!(op, ClientOp::Put { .. }) => {
                ClientError::Unavailable {
                    message,
                    stored_on: Some(0),
                }
            }
            other => other,
        })?;
        if home.contains(self.membership.me()) {
            return self.coordinate(op, timeout).await;
        }
        let deadline = Instant::now() + timeout;
        let mut last_error = String::from("no home replica is reachable");
        // Move on to the next home replica only while the request was certainly not delivered
        // (the connection could not be opened): a forward that may have run must not run twice.
        let mut maybe_delivered = false;
        for node in home.iter().filter(|n| self.membership.is_live(n)) {
            let Some(addr) = self.membership.address(node) else {
                continue;
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            metrics::counter!("ringkv_forwarded_total").increment(1);
            match self
                .peers
                .call(addr, Request::Coordinate(op.clone()), remaining)
                .await
            {
                Ok(Response::Coordinated(result)) => return result,
                Ok(other) => {
                    last_error = format!("{node} answered {}", other.summary());
                    maybe_delivered = true;
                    break;
                }
                Err(e @ TransportError::Unreachable(..)) => last_error = e.to_string(),
                Err(e) => {
                    last_error = e.to_string();
                    maybe_delivered = true;
                    break;
                }
            }
        }
        let is_write = matches!(op, ClientOp::Put { .. });
        if !maybe_delivered {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match op {
                // No home replica took the write: always writeable, a fallback coordinates it.
                ClientOp::Put { strict: false, .. } => {
                    return self.coordinate_as_fallback(op, deadline).await;
                }
                // A sloppy read writes nothing, so any node may coordinate it: the fallbacks
                // standing in for the home replicas answer with the hints they hold.
                ClientOp::Get { strict: false, .. } => return self.coordinate(op, remaining).await,
                _ => {}
            }
        }
        Err(ClientError::Unavailable {
            message: format!("could not reach a coordinator for the key: {last_error}"),
            // A write that reached no coordinator is stored nowhere; one whose answer was lost
            // is indeterminate (unknown count). Reads carry no count.
            stored_on: (is_write && !maybe_delivered).then_some(0),
        })
    }

    /// Coordinates `op` on this node.
    pub(crate) async fn coordinate(
        self: &Arc<Self>,
        op: ClientOp,
        timeout: Duration,
    ) -> Result<ClientReply, ClientError> {
        let n = self
            .membership
            .ring()
            .map(|r| r.topology.params().n)
            .unwrap_or(self.settings.n);
        let quorum =
            |q: u8| Quorum::new(q as u32, n).map_err(|e| ClientError::BadRequest(e.to_string()));
        match op {
            ClientOp::Get { key, r, strict } => {
                let tracker = self.plan(&key, quorum(r)?, strict)?;
                self.coordinate_get(key, tracker, timeout)
                    .await
                    .map(ClientReply::Read)
            }
            ClientOp::Put {
                key,
                context,
                value,
                w,
                strict,
            } => {
                let tracker = self.plan(&key, quorum(w)?, strict)?;
                let written = if self.is_home_of(&key) {
                    self.coordinate_put(key, context, value, tracker, timeout)
                        .await
                } else {
                    // Not a home replica (a peer on an older ring forwarded the write here):
                    // this node may have handed the key over and swept it, raising its dot
                    // floor past the dots still live on the home replicas. Counting from an
                    // empty set raised to that floor would claim to have seen those values
                    // and supersede them unseen; a one-off actor claims nothing it has not.
                    let deadline = Instant::now() + timeout;
                    self.coordinate_as_one_off(key, context, value, tracker, deadline)
                        .await
                };
                written.map(|(stored, dot)| ClientReply::Written { stored, dot })
            }
        }
    }

    fn home_replicas(&self, key: &[u8]) -> Result<Vec<NodeId>, ClientError> {
        let ring = self.membership.ring().ok_or_else(not_joined)?;
        let partition = ring.topology.partition_of(ringkv_core::key_hash(key));
        Ok(ring.topology.home(partition))
    }

    /// The quorum plan of one request on `key`: home replicas, fallbacks, who is down.
    fn plan(
        &self,
        key: &[u8],
        needed: Quorum,
        strict: bool,
    ) -> Result<QuorumTracker<NodeId>, ClientError> {
        let ring = self.membership.ring().ok_or_else(not_joined)?;
        let list = ring
            .topology
            .preference_list(ring.topology.partition_of(ringkv_core::key_hash(key)));
        let home: Vec<NodeId> = list.home().cloned().collect();
        let fallbacks: Vec<NodeId> = list
            .fallbacks()
            .take(MAX_FALLBACKS_PER_REQUEST)
            .cloned()
            .collect();
        // Nodes the failure detector suspects are replaced by fallbacks from the start, so a
        // request does not wait on a dead node. Suspicion is a guess, though: when too few
        // unsuspected nodes are left to reach the quorum, try everyone rather than fail at once.
        let suspected: Vec<NodeId> = home
            .iter()
            .chain(&fallbacks)
            .filter(|n| !self.membership.is_live(n))
            .cloned()
            .collect();
        let candidates = if strict {
            home.len()
        } else {
            home.len() + fallbacks.len()
        };
        let enough = candidates.saturating_sub(
            suspected
                .iter()
                .filter(|n| strict_member(n, &home, strict))
                .count(),
        ) >= needed.get();
        let unreachable = if enough { suspected } else { Vec::new() };
        let mode = if strict {
            QuorumMode::Strict
        } else {
            QuorumMode::Sloppy
        };
        QuorumTracker::new(QuorumPlan {
            needed,
            home,
            fallbacks,
            unreachable,
            mode,
        })
        .map_err(|e| ClientError::Unavailable {
            message: format!("cannot meet the quorum: {e}"),
            stored_on: Some(0),
        })
    }

    async fn coordinate_put(
        self: &Arc<Self>,
        key: Bytes,
        context: Option<ClientContext>,
        value: Option<Bytes>,
        tracker: QuorumTracker<NodeId>,
        timeout: Duration,
    ) -> Result<(VersionSet, Dot), ClientError> {
        let deadline = Instant::now() + timeout;
        let written = self.write_locally(key.clone(), context, value);
        let (stored, dot, durable) =
            tokio::time::timeout_at(deadline, written)
                .await
                .map_err(|_| ClientError::Unavailable {
                    message: "the local write did not finish before the deadline".into(),
                    // It may still be applied here.
                    stored_on: Some(1),
                })??;
        self.write_incoming(&key, &stored, deadline).await;
        self.replicate(key, stored, dot, Some(durable), tracker, deadline)
            .await
    }

    /// A write when no home replica of the key can be reached from here (sloppy mode only):
    /// this node coordinates as a fallback. It holds no history of the key's dots under its
    /// own replica id, so it writes as a *one-off actor* (its node id with a fresh epoch that
    /// no other write ever used), which can never repeat a dot. The versions go to the first
    /// reachable fallbacks as hints for the unreachable home replicas, itself included.
    async fn coordinate_as_fallback(
        self: &Arc<Self>,
        op: ClientOp,
        deadline: Instant,
    ) -> Result<ClientReply, ClientError> {
        let ClientOp::Put {
            key,
            context,
            value,
            w,
            strict: false,
        } = op
        else {
            return Err(ClientError::Internal(
                "only sloppy writes are coordinated by a fallback".into(),
            ));
        };
        let n = self
            .membership
            .ring()
            .map(|r| r.topology.params().n)
            .unwrap_or(self.settings.n);
        let w = Quorum::new(w as u32, n).map_err(|e| ClientError::BadRequest(e.to_string()))?;
        let tracker = self.plan(&key, w, false)?;
        metrics::counter!("ringkv_fallback_coordinated_total").increment(1);
        let (stored, dot) = self
            .coordinate_as_one_off(key, context, value, tracker, deadline)
            .await?;
        Ok(ClientReply::Written { stored, dot })
    }

    /// A write counted by a one-off actor, from what this node holds of the key (a set its
    /// own replica id may not have a full history of), sent to the plan's targets.
    async fn coordinate_as_one_off(
        self: &Arc<Self>,
        key: Bytes,
        context: Option<ClientContext>,
        value: Option<Bytes>,
        tracker: QuorumTracker<NodeId>,
        deadline: Instant,
    ) -> Result<(VersionSet, Dot), ClientError> {
        let current = tokio::time::timeout_at(deadline, self.read_held(key.clone()))
            .await
            .map_err(|_| ClientError::Unavailable {
                message: "the key could not be read here before the deadline".into(),
                stored_on: Some(0),
            })??
            .unwrap_or_default();
        let actor = self.one_off_actor(deadline).await?;
        let (vector, dots) = match &context {
            Some(ctx) => (ctx.vector.clone(), ctx.dots.clone()),
            None => (current.context().clone(), current.cloud().to_vec()),
        };
        let (versions, dot) = current.update_exact(&vector, &dots, value, &actor);
        if let Some(refused) = refuse_write(&current, &versions, &dot) {
            return Err(refused);
        }
        self.write_incoming(&key, &versions, deadline).await;
        self.replicate(key, versions, dot, None, tracker, deadline)
            .await
    }

    /// Whether this node is a home replica serving `key` in the ring it holds.
    fn is_home_of(&self, key: &[u8]) -> bool {
        self.membership.ring().is_some_and(|ring| {
            let partition = ring.topology.partition_of(ringkv_core::key_hash(key));
            ring.topology.is_home(partition, self.membership.me())
        })
    }

    /// Sends a written version set to the request's targets and waits for W of them. The
    /// coordinator itself counts as written if it is a home target and holds the set durably
    /// (`local`, when given, is the fsync of the copy it wrote already; without it, the set
    /// is merged into its store first); as a fallback target it keeps the set as a hint.
    ///
    /// The set goes out while the coordinator's own fsync runs: if this node crashes before
    /// that fsync, the dot may live on at a replica and be gone here, but the restarted node
    /// counts under a new epoch (`node.rs`, identity), so the dot is never issued again.
    async fn replicate(
        self: &Arc<Self>,
        key: Bytes,
        stored: VersionSet,
        dot: Dot,
        mut local: Option<Durable>,
        mut tracker: QuorumTracker<NodeId>,
        deadline: Instant,
    ) -> Result<(VersionSet, Dot), ClientError> {
        let me = self.membership.me().clone();
        // The replica writes are futures polled by this task; those still running when the
        // outcome is known finish on one background task.
        let mut writes = FuturesUnordered::new();
        // A failure answered before every target replied counts, in `stored_on`, each target
        // that may still hold the write (`QuorumTracker::may_hold`): the coordinator's own
        // write waiting for its fsync, replica writes still in flight, and timed-out ones.
        let initial: Vec<Target<NodeId>> = tracker.initial_targets().cloned().collect();
        for target in initial {
            if target.node != me {
                writes.push(
                    self.clone()
                        .write_to(target, key.clone(), stored.clone(), deadline),
                );
                continue;
            }
            let reply = match target.hinted_for {
                // The coordinator's own write counts once it is durable.
                None => match local.take() {
                    Some(durable) => {
                        writes.push(own_fsync(me.clone(), durable, deadline));
                        continue;
                    }
                    // Not written here yet: a fallback coordinator whose ring, adopted since
                    // it found no home replica reachable, now names it a home replica. It
                    // counts once it holds the set, never before.
                    None => {
                        let merged = self.merge_local(key.clone(), stored.clone());
                        match tokio::time::timeout_at(deadline, merged).await {
                            Ok(Ok(_)) => Reply::Ok,
                            _ => Reply::Failed,
                        }
                    }
                },
                Some(home) => {
                    let hinted = self.store_hint(home, key.clone(), stored.clone());
                    match tokio::time::timeout_at(deadline, hinted).await {
                        Ok(Ok(())) => Reply::Ok,
                        _ => Reply::Failed,
                    }
                }
            };
            if let Ok(Some(next)) = tracker.record(&me, reply) {
                writes.push(
                    self.clone()
                        .write_to(next, key.clone(), stored.clone(), deadline),
                );
            }
        }
        let outcome = loop {
            match tracker.progress() {
                Progress::Succeeded => break Ok((stored, dot)),
                Progress::Failed(failure) => {
                    break Err(ClientError::Unavailable {
                        message: format!("write not acknowledged by enough replicas: {failure}"),
                        stored_on: Some(tracker.may_hold() as u32),
                    });
                }
                Progress::Pending => {}
            }
            let Ok(Some((node, result))) = tokio::time::timeout_at(deadline, writes.next()).await
            else {
                break Err(ClientError::Unavailable {
                    message: format!(
                        "write acknowledged by {} of the {} replicas needed before the deadline",
                        tracker.stored_on(),
                        tracker.needed().get()
                    ),
                    stored_on: Some(tracker.may_hold() as u32),
                });
            };
            let reply = match &result {
                Ok(()) => Reply::Ok,
                Err(f) => {
                    debug!(%node, failure = %f, "replica write failed");
                    f.reply()
                }
            };
            if let Ok(Some(next)) = tracker.record(&node, reply) {
                debug!(fallback = %next.node, hinted_for = ?next.hinted_for, "sloppy quorum: using a fallback");
                writes.push(
                    self.clone()
                        .write_to(next, key.clone(), stored.clone(), deadline),
                );
            }
        };
        if !writes.is_empty() {
            // Each write is bounded by the request's deadline.
            tokio::spawn(async move { while writes.next().await.is_some() {} });
        }
        outcome
    }

    /// One target's replica write, as a future the coordinator polls.
    fn write_to(
        self: Arc<Self>,
        target: Target<NodeId>,
        key: Bytes,
        versions: VersionSet,
        deadline: Instant,
    ) -> BoxFuture<'static, TargetReply<()>> {
        Box::pin(async move {
            let result = self
                .send_write(&target.node, key, versions, target.hinted_for, deadline)
                .await;
            (target.node, result)
        })
    }

    /// During a transition, sends a written set to the nodes gaining the key's partition as
    /// well (they do not count toward W: reads do not reach them yet). A copy that fails is
    /// kept as a hint for that node, so the receiver never misses a write it did not copy.
    /// Copies run on their own tasks, at most `FORWARDS_MAX` at once, each bounded in time;
    /// when every slot is taken the hint is stored at once, on this request's time.
    async fn write_incoming(
        self: &Arc<Self>,
        key: &Bytes,
        versions: &VersionSet,
        deadline: Instant,
    ) {
        let Some(ring) = self.membership.ring() else {
            return;
        };
        let partition = ring.topology.partition_of(ringkv_core::key_hash(key));
        for node in ring.topology.incoming(partition) {
            metrics::counter!("ringkv_handoff_forwarded_writes_total").increment(1);
            let (key, versions) = (key.clone(), versions.clone());
            let Ok(permit) = self.handoff.forward_slots.0.clone().try_acquire_owned() else {
                metrics::counter!("ringkv_handoff_forwards_hinted_at_once_total").increment(1);
                let _ = tokio::time::timeout_at(
                    deadline,
                    self.forward_or_hint(node, key, versions, None),
                )
                .await;
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let deadline = Instant::now() + me.settings.request_timeout;
                let copied = me.forward_or_hint(node, key, versions, Some(deadline));
                let _ =
                    tokio::time::timeout_at(deadline + me.settings.request_timeout, copied).await;
            });
        }
    }

    /// One copy for `write_incoming`: into this node's store if it is the gaining node, else
    /// sent to it (when `send_by` is given) and kept as a hint if that fails or is skipped.
    async fn forward_or_hint(
        self: &Arc<Self>,
        node: NodeId,
        key: Bytes,
        versions: VersionSet,
        send_by: Option<Instant>,
    ) {
        if node == *self.membership.me() {
            let _ = self.merge_local(key, versions).await;
            return;
        }
        if let Some(deadline) = send_by {
            let sent = self
                .send_write(&node, key.clone(), versions.clone(), None, deadline)
                .await;
            match sent {
                Ok(()) => return,
                Err(e) => {
                    debug!(%node, error = %e, "write to a gaining node failed; keeping a hint")
                }
            }
        }
        // A leaving node that is down and no longer awaits the partition (the claimant released
        // it: it was removed for good) will never confirm it: a hint would only fill the
        // backlog. The write is on W serving home replicas; receivers that do confirm get it.
        if let Some(ring) = self.membership.ring() {
            let topology = &ring.topology;
            let partition = topology.partition_of(ringkv_core::key_hash(&key));
            if topology.leaving().contains(&node)
                && !topology.awaits(partition, &node)
                && !self.membership.is_live(&node)
            {
                debug!(%node, "no hint kept for a leaving node that no longer receives the partition");
                return;
            }
        }
        if let Err(e) = self.store_hint(node.clone(), key, versions).await {
            warn!(%node, error = %e, "no hint kept for a gaining node; its sweep or anti-entropy brings the write");
        }
    }

    /// The coordinator's own step: the DVV update of what it holds, applied and appended to
    /// the journal; the returned `Durable` resolves once it is synced.
    async fn write_locally(
        &self,
        key: Bytes,
        context: Option<ClientContext>,
        value: Option<Bytes>,
    ) -> Result<(VersionSet, Dot, Durable), ClientError> {
        let partition = self.partition_of(&key);
        let replica = self.replica.clone();
        let floor = self.tombstones.dot_floor.clone();
        let unavailable = |e: ringkv_storage::StorageError| ClientError::Unavailable {
            message: format!("local write failed: {e}"),
            stored_on: Some(0),
        };
        let stopped = self.stopped.clone();
        let (stored, dot, durable) = self
            .store_write(move |s| {
                // Held until the write is in the journal (see `Node::mark_clean_stop`).
                let stopped = stopped
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *stopped {
                    return Err(ringkv_storage::StorageError::Engine(
                        "the node is stopping".into(),
                    ));
                }
                let (mut dot, mut refused) = (None, None);
                let stored = s.update_deferred(partition, &key, &mut |current| {
                    refused = None;
                    // Read inside the key's lock: a purge raises the floor before it removes.
                    let floor = floor.load(std::sync::atomic::Ordering::SeqCst);
                    let current = current
                        .cloned()
                        .unwrap_or_default()
                        .raise_floor(&replica, floor);
                    let (next, d) = match &context {
                        Some(ctx) => {
                            current.update_exact(&ctx.vector, &ctx.dots, value.clone(), &replica)
                        }
                        // No context: a blind overwrite of what this coordinator holds (RESP SET).
                        None => current.update_exact(
                            current.context(),
                            current.cloud(),
                            value.clone(),
                            &replica,
                        ),
                    };
                    if let Some(why) = refuse_write(&current, &next, &d) {
                        refused = Some(why);
                        return None;
                    }
                    dot = Some(d);
                    Some(next)
                });
                stored.map(|(s, durable)| match refused {
                    Some(why) => Err(why),
                    None => Ok((
                        s.expect("an update always stores a set"),
                        dot.expect("the update ran"),
                        durable,
                    )),
                })
            })
            .await?
            .map_err(unavailable)??;
        Ok((stored, dot, durable))
    }

    /// Sends a replica write (or a hinted one) and waits for its acknowledgement.
    async fn send_write(
        &self,
        node: &NodeId,
        key: Bytes,
        versions: VersionSet,
        hinted_for: Option<NodeId>,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let addr = self
            .membership
            .address(node)
            .ok_or_else(|| Failure::Failed(format!("no known address for {node}")))?;
        let request = Request::Write {
            key,
            versions,
            hinted_for,
        };
        match self
            .peers
            .call(
                addr,
                request,
                deadline.saturating_duration_since(Instant::now()),
            )
            .await?
        {
            Response::Ok => Ok(()),
            Response::Error(e) => Err(Failure::Failed(e)),
            other => Err(Failure::Failed(format!(
                "unexpected answer {}",
                other.summary()
            ))),
        }
    }

    async fn coordinate_get(
        self: &Arc<Self>,
        key: Bytes,
        mut tracker: QuorumTracker<NodeId>,
        timeout: Duration,
    ) -> Result<Option<VersionSet>, ClientError> {
        let deadline = Instant::now() + timeout;
        // The remote reads are futures polled by this task (no task per target); those still
        // running when the quorum is met are handed to the read repair task.
        let mut reads = FuturesUnordered::new();
        let mut initial: Vec<Target<NodeId>> = tracker.initial_targets().cloned().collect();
        // With the quorum fanout, R targets are asked (this node first, then in preference
        // order) and the rest wait in reserve: asked if one fails, if all asked ones have
        // answered without the quorum, or once `read_speculate_after` passes.
        let mut reserve: Vec<Target<NodeId>> = Vec::new();
        if self.settings.read_fanout == ReadFanout::Quorum {
            // Home replicas before fallbacks: a fallback stands in for one believed down, and
            // a reachable home replica knows more of the key than it does.
            initial.sort_by_key(|t| (t.node != *self.membership.me(), t.is_fallback()));
            let asked = tracker.needed().get().min(initial.len());
            reserve = initial.split_off(asked);
            reserve.reverse(); // popped from the end: preference order
        }
        let speculate_at =
            (Instant::now() + self.settings.limits.read_speculate_after).min(deadline);
        let mut read_here = None;
        for target in initial {
            if target.node == *self.membership.me() {
                read_here = Some(target);
            } else {
                reads.push(self.clone().read_from(target, key.clone(), deadline));
            }
        }
        let mut replies: Vec<(NodeId, Option<VersionSet>)> = Vec::new();
        // This node's own copy is read first, on this task, while the remote reads are sent.
        let mut here = match read_here {
            Some(me) => {
                let result = self.replica_read(&me, key.clone(), deadline).await;
                Some((me.node, result))
            }
            None => None,
        };
        loop {
            let (node, result) = match here.take() {
                Some(answer) => answer,
                None => {
                    match tracker.progress() {
                        Progress::Succeeded => break,
                        Progress::Failed(failure) => {
                            return Err(ClientError::Unavailable {
                                message: format!("read not answered by enough replicas: {failure}"),
                                stored_on: None,
                            });
                        }
                        Progress::Pending => {}
                    }
                    if reads.is_empty() && !reserve.is_empty() {
                        self.ask_reserve(
                            &mut reserve,
                            &mut reads,
                            &key,
                            deadline,
                            "all asked answered",
                        );
                    }
                    let wait_until = if reserve.is_empty() {
                        deadline
                    } else {
                        speculate_at
                    };
                    match tokio::time::timeout_at(wait_until, reads.next()).await {
                        Ok(Some(answer)) => answer,
                        Err(_) if !reserve.is_empty() => {
                            // The asked replicas are slow: ask the rest as well.
                            while !reserve.is_empty() {
                                self.ask_reserve(&mut reserve, &mut reads, &key, deadline, "slow");
                            }
                            continue;
                        }
                        _ => {
                            return Err(ClientError::Unavailable {
                                message: format!(
                                    "{} of the {} replicas needed answered before the deadline",
                                    replies.len(),
                                    tracker.needed().get()
                                ),
                                stored_on: None,
                            });
                        }
                    }
                }
            };
            let reply = match result {
                Ok(v) => {
                    replies.push((node.clone(), v));
                    Reply::Ok
                }
                Err(f) => {
                    if !reserve.is_empty() {
                        self.ask_reserve(&mut reserve, &mut reads, &key, deadline, "failed");
                    }
                    f.reply()
                }
            };
            if let Ok(Some(next)) = tracker.record(&node, reply) {
                reads.push(self.clone().read_from(next, key.clone(), deadline));
            }
        }
        // A fallback without a hint for the key answers "nothing" and counts toward R (a
        // sloppy quorum), but it knows nothing of the key. While a home replica that may hold
        // it has not answered, that "nothing" must not hide its copy: wait for the home
        // replicas still asked (until the deadline; the quorum is met either way).
        let knew_nothing = replies.iter().any(|(node, held)| {
            held.is_none()
                && tracker
                    .targets()
                    .any(|(t, _)| t.node == *node && t.is_fallback())
        });
        if knew_nothing {
            while !reserve.is_empty() {
                self.ask_reserve(
                    &mut reserve,
                    &mut reads,
                    &key,
                    deadline,
                    "fallback knew nothing",
                );
            }
            while tracker.outstanding().any(|t| !t.is_fallback()) {
                let Ok(Some((node, result))) =
                    tokio::time::timeout_at(deadline, reads.next()).await
                else {
                    break;
                };
                let reply = match result {
                    Ok(v) => {
                        replies.push((node.clone(), v));
                        Reply::Ok
                    }
                    Err(f) => f.reply(),
                };
                let _ = tracker.record(&node, reply);
            }
        }
        let merged = merge_all(replies.iter().map(|(_, v)| v));
        let siblings = merged.as_ref().map(|m| m.values().count()).unwrap_or(0);
        metrics::histogram!("ringkv_read_siblings").record(siblings as f64);
        let home: Vec<NodeId> = tracker
            .targets()
            .filter(|(t, _)| !t.is_fallback())
            .map(|(t, _)| t.node.clone())
            .collect();
        // With every target heard from and every reply already holding the merged set there is
        // nothing to repair (the common case of a quorum-fanout read, or of R = N): no task.
        let repair_due = !reads.is_empty()
            || merged.as_ref().is_some_and(|m| {
                replies
                    .iter()
                    .any(|(node, held)| lacks(&home, node, held, m))
            });
        if repair_due && !self.settings.disable_repair {
            let me = self.clone();
            let started = deadline - timeout;
            tokio::spawn(async move {
                me.read_repair(key, home, replies, reads, (started, deadline))
                    .await
            });
        }
        Ok(merged)
    }

    /// Asks the next reserve target of a quorum-fanout read (a speculative read).
    fn ask_reserve(
        self: &Arc<Self>,
        reserve: &mut Vec<Target<NodeId>>,
        reads: &mut FuturesUnordered<BoxFuture<'static, TargetReply<Option<VersionSet>>>>,
        key: &Bytes,
        deadline: Instant,
        why: &'static str,
    ) {
        if let Some(target) = reserve.pop() {
            metrics::counter!("ringkv_read_speculations_total").increment(1);
            debug!(node = %target.node, why, "speculative read");
            reads.push(self.clone().read_from(target, key.clone(), deadline));
        }
    }

    /// One target's read, as a future the coordinator polls.
    fn read_from(
        self: Arc<Self>,
        target: Target<NodeId>,
        key: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'static, TargetReply<Option<VersionSet>>> {
        Box::pin(async move {
            let result = self.replica_read(&target, key, deadline).await;
            (target.node, result)
        })
    }

    /// What `target` holds for `key`. A home target is asked as one (`Request::Read`'s
    /// `as_home`): if it is no home replica of the key in its own ring and holds nothing,
    /// its `NotHome` fails like an unreachable target's answer (the next fallback is asked),
    /// and a newer ring it names is fetched.
    async fn replica_read(
        self: &Arc<Self>,
        target: &Target<NodeId>,
        key: Bytes,
        deadline: Instant,
    ) -> Result<Option<VersionSet>, Failure> {
        let node = &target.node;
        if node == self.membership.me() {
            return self
                .read_held(key)
                .await
                .map_err(|e| Failure::Failed(e.to_string()));
        }
        let addr = self
            .membership
            .address(node)
            .ok_or_else(|| Failure::Failed(format!("no known address for {node}")))?;
        match self
            .peers
            .call(
                addr,
                Request::Read {
                    key,
                    as_home: !target.is_fallback(),
                },
                deadline.saturating_duration_since(Instant::now()),
            )
            .await?
        {
            Response::Versions(v) => Ok(v),
            Response::NotHome { ring_version } => {
                self.ring_behind(node, ring_version);
                Err(Failure::Failed(format!(
                    "{node} is no home replica of the key in its ring (version {ring_version}) \
                     and holds nothing for it"
                )))
            }
            Response::Error(e) => Err(Failure::Failed(e)),
            other => Err(Failure::Failed(format!(
                "unexpected answer {}",
                other.summary()
            ))),
        }
    }

    /// Waits for the remaining replies (until the deadline), then sends the merged set to
    /// every home replica that answered with less.
    ///
    /// Every repair write lands within one tombstone grace of the read's start, or is not
    /// sent: a reply gathered before a delete may hold the value it deleted, and a tombstone
    /// is purged no sooner than two graces after the delete (`tombstones.rs`). A repair
    /// landing after the purge would bring the deleted value back; anti-entropy, which
    /// compares the replicas as they are, brings them together instead.
    async fn read_repair(
        self: Arc<Self>,
        key: Bytes,
        home: Vec<NodeId>,
        mut replies: Vec<(NodeId, Option<VersionSet>)>,
        mut reads: FuturesUnordered<BoxFuture<'static, TargetReply<Option<VersionSet>>>>,
        (started, deadline): (Instant, Instant),
    ) {
        while let Ok(Some((node, result))) = tokio::time::timeout_at(deadline, reads.next()).await {
            if let Ok(v) = result {
                replies.push((node, v));
            }
        }
        let Some(merged) = merge_all(replies.iter().map(|(_, v)| v)) else {
            return;
        };
        let stale_at = started + self.settings.tombstone_grace;
        let repair_deadline = (Instant::now() + self.settings.request_timeout).min(stale_at);
        for (node, held) in replies {
            if !lacks(&home, &node, &held, &merged) {
                continue;
            }
            if Instant::now() >= stale_at {
                metrics::counter!("ringkv_read_repairs_stale_total").increment(1);
                debug!(%node, "read repair dropped: the read is older than the tombstone grace");
                continue;
            }
            metrics::counter!("ringkv_read_repairs_total").increment(1);
            debug!(%node, "read repair");
            let result = if node == *self.membership.me() {
                self.merge_local(key.clone(), merged.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| Failure::Failed(e.to_string()))
            } else {
                self.send_write(&node, key.clone(), merged.clone(), None, repair_deadline)
                    .await
            };
            if let Err(e) = result {
                debug!(%node, error = %e, "read repair failed");
            }
        }
    }
}

/// Whether read repair owes `node` the merged set: it is a home replica and what it answered
/// (`held`) lacks something of `merged`.
fn lacks(home: &[NodeId], node: &NodeId, held: &Option<VersionSet>, merged: &VersionSet) -> bool {
    home.contains(node) && !held.as_ref().is_some_and(|h| h.includes(merged))
}

/// Whether `node` is one of the candidates of a plan (home replicas only when strict).
fn strict_member(node: &NodeId, home: &[NodeId], strict: bool) -> bool {
    !strict || home.contains(node)
}

fn not_joined() -> ClientError {
    ClientError::Unavailable {
        message: "this node has not joined a cluster yet".into(),
        stored_on: None,
    }
}

fn op_key(op: &ClientOp) -> &Bytes {
    match op {
        ClientOp::Get { key, .. } | ClientOp::Put { key, .. } => key,
    }
}

/// The sync of every set present; `None` if no replica held anything.
fn merge_all<'a>(sets: impl Iterator<Item = &'a Option<VersionSet>>) -> Option<VersionSet> {
    sets.flatten().fold(None, |acc: Option<VersionSet>, s| {
        Some(match acc {
            Some(a) => a.sync(s),
            None => s.clone(),
        })
    })
}

/// The coordinator's own fsync as one of the replica writes it polls, bounded by the deadline.
fn own_fsync(
    me: NodeId,
    durable: Durable,
    deadline: Instant,
) -> BoxFuture<'static, TargetReply<()>> {
    Box::pin(async move {
        let result = match tokio::time::timeout_at(deadline, durable.wait()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::Failed(format!("local write failed: {e}"))),
            Err(_) => Err(Failure::TimedOut),
        };
        (me, result)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ringkv_core::constants::MAX_CONTEXT_ENTRIES;
    use ringkv_core::{ReplicaId, VersionVector};

    /// `n` concurrent siblings of `bytes` bytes each.
    fn siblings(n: usize, bytes: usize) -> VersionSet {
        let writer = ReplicaId::new(NodeId::new("w").unwrap(), 1);
        (0..n).fold(VersionSet::new(), |set, _| {
            let value = Some(Bytes::from(vec![1u8; bytes]));
            set.update(&VersionVector::new(), value, &writer).0
        })
    }

    #[test]
    fn writes_that_grow_siblings_past_a_limit_are_refused_and_others_are_not() {
        let writer = ReplicaId::new(NodeId::new("w").unwrap(), 1);
        let add = |set: &VersionSet, bytes: usize| {
            let value = Some(Bytes::from(vec![2u8; bytes]));
            set.update(&VersionVector::new(), value, &writer).0
        };
        let full = siblings(MAX_SIBLINGS, 1);
        assert!(grows_too_large(&siblings(MAX_SIBLINGS - 1, 1), &full).is_none());
        let why = grows_too_large(&full, &add(&full, 1)).expect("one sibling too many");
        assert!(why.contains("siblings"), "{why}");
        // A reconciling write (the whole context) leaves one sibling: always allowed.
        let merged = full
            .update(full.context(), Some(Bytes::from_static(b"m")), &writer)
            .0;
        assert_eq!(merged.siblings().len(), 1);
        assert!(grows_too_large(&full, &merged).is_none());

        let big = MAX_SIBLING_VALUE_BYTES / 4;
        let heavy = siblings(4, big);
        let why = grows_too_large(&heavy, &add(&heavy, 1)).expect("bytes past the limit");
        assert!(why.contains("bytes"), "{why}");
        assert!(
            grows_too_large(&siblings(3, big), &heavy).is_none(),
            "at the limit"
        );
    }

    #[test]
    fn writes_whose_context_would_outgrow_a_token_are_refused() {
        let writer = ReplicaId::new(NodeId::new("w").unwrap(), 1);
        // A client context naming `count` replica ids nobody has, from `first` on.
        let forged = |first: usize, count: usize| {
            VersionVector::from_entries((first..first + count).map(|i| {
                let id = NodeId::new(format!("made-up-{i}")).unwrap();
                (ReplicaId::new(id, 0), 1)
            }))
        };
        let value = || Some(Bytes::from_static(b"v"));
        let start = siblings(1, 1);
        let (once, _) = start.update(&forged(0, 600), value(), &writer);
        assert!(
            grows_too_large(&start, &once).is_none(),
            "a token still carries it"
        );
        let (twice, _) = once.update(&forged(600, 600), value(), &writer);
        let why = grows_too_large(&once, &twice).expect("1,200 context entries");
        assert!(why.contains("context"), "{why}");
        // Writing back with the key's own context adds nothing: allowed however large.
        let (back, _) = twice.update(twice.context(), value(), &writer);
        assert!(grows_too_large(&twice, &back).is_none());
        // A blind write by a new coordinator id (a fallback's one-off actor) adds one entry:
        // allowed while the context still fits a token, refused once it would not, so one-off
        // writes during a long outage cannot leave a key no client can write back to.
        let newcomer = ReplicaId::new(NodeId::new("fallback-1").unwrap(), 7);
        let (blind, _) = once.update(&VersionVector::new(), value(), &newcomer);
        assert!(grows_too_large(&once, &blind).is_none(), "601 entries fit");
        let full = once
            .update(&forged(600, MAX_CONTEXT_ENTRIES - 601), value(), &writer)
            .0;
        assert_eq!(full.context().len(), MAX_CONTEXT_ENTRIES);
        assert!(
            Context::of(&full).try_encode().is_ok(),
            "a full context still encodes"
        );
        let (blind, _) = full.update(&VersionVector::new(), value(), &newcomer);
        let why = grows_too_large(&full, &blind).expect("one entry past a full context");
        assert!(why.contains("context"), "{why}");
        let (back, _) = full.update(full.context(), value(), &writer);
        assert!(grows_too_large(&full, &back).is_none());
    }

    /// A write whose context names the writing replica's counter at `MAX_COUNTER` would issue
    /// the next dot past it, a set no decoder takes (the coordinator's own storage included):
    /// refused as a bad request. One below the limit is an ordinary write.
    #[test]
    fn a_write_whose_dot_would_pass_the_counter_limit_is_refused() {
        let writer = ReplicaId::new(NodeId::new("w").unwrap(), 1);
        let start = siblings(1, 1);
        for (counter, refused) in [(MAX_COUNTER - 1, false), (MAX_COUNTER, true)] {
            let context = VersionVector::from_entries([(writer.clone(), counter)]);
            let (next, dot) = start.update(&context, Some(Bytes::from_static(b"v")), &writer);
            let answer = refuse_write(&start, &next, &dot);
            assert_eq!(
                matches!(answer, Some(ClientError::BadRequest(_))),
                refused,
                "counter {counter}: {answer:?}"
            );
        }
    }
    /// A write forwarded to a node that is no home replica of its key (a peer on an older ring
    /// sent it) never supersedes a value that node has not seen. Here n2 issued the live value
    /// (n2's dot 1, now held by n1 only) and then forgot the key, raising its dot floor as a
    /// handoff sweep does; a blind write through n2 must leave that value as a sibling. Counting
    /// from an empty set raised to the floor claimed to have seen dot 1 and dropped it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_forwarded_to_a_non_home_node_keeps_the_values_it_has_not_seen() {
        use crate::common::{eventually, start};
        use ringkv_storage::StorageEngine;
        use tokio_util::sync::CancellationToken;
        let shutdown = CancellationToken::new();
        let one_replica = |args: &mut crate::settings::ServerArgs| {
            args.n = Some(1);
            args.anti_entropy_interval_ms = Some(3_600_000);
        };
        let n1 = start("n1", None, &shutdown, one_replica).await;
        let n2 = start("n2", Some(&n1.listen), &shutdown, one_replica).await;
        let (id1, id2) = (NodeId::new("n1").unwrap(), NodeId::new("n2").unwrap());
        eventually(
            Duration::from_secs(30),
            "n2 never held a settled ring of both nodes",
            || {
                n2.node.membership().ring().is_some_and(|r| {
                    r.topology.transition().is_none()
                        && r.topology.is_member(&id1)
                        && r.topology.is_member(&id2)
                })
            },
        )
        .await;
        let ring = n2.node.membership().ring().unwrap();
        let key = (0..10_000)
            .map(|i| Bytes::from(format!("key-{i}")))
            .find(|k| {
                let partition = ring.topology.partition_of(ringkv_core::key_hash(k));
                ring.topology.home(partition) == [id1.clone()]
            })
            .expect("some key lives on n1 alone");
        let partition = ring.topology.partition_of(ringkv_core::key_hash(&key));
        let live = VersionSet::new()
            .update(
                &VersionVector::new(),
                Some(Bytes::from_static(b"old")),
                &n2.node.replica,
            )
            .0;
        n1.engine
            .update(partition, &key, &mut |_| Some(live.clone()))
            .unwrap();
        n2.node
            .tombstones
            .dot_floor
            .store(1, std::sync::atomic::Ordering::SeqCst);

        let op = ClientOp::Put {
            key: key.clone(),
            context: None,
            value: Some(Bytes::from_static(b"new")),
            w: 1,
            strict: false,
        };
        let written = n2.node.coordinate(op, Duration::from_secs(5)).await;
        assert!(written.is_ok(), "{written:?}");
        let held = n1
            .engine
            .get(partition, &key)
            .unwrap()
            .expect("n1 holds the key");
        let mut values: Vec<Bytes> = held
            .siblings()
            .iter()
            .filter_map(|s| s.value.clone())
            .collect();
        values.sort();
        assert_eq!(
            values,
            [Bytes::from_static(b"new"), Bytes::from_static(b"old")]
        );
        shutdown.cancel();
    }

    /// A fallback's "nothing" does not hide a home replica's copy. N=3, R=2: the key's home
    /// replicas are n1 (fails every read, so a fallback stands in), n2 (the coordinator, which
    /// missed the write) and n4 (holds it, answers reads late); n3 is the fallback, with no
    /// hint. n2's and n3's "nothing" meet R at once; the read must still wait for n4 and
    /// answer its value. Before, it answered not found.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fallback_that_knows_nothing_does_not_hide_a_home_replicas_copy() {
        use crate::common::{Delaying, Distorting, eventually, node_ids, start, start_serving};
        use ringkv_storage::StorageEngine;
        use tokio_util::sync::CancellationToken;
        let shutdown = CancellationToken::new();
        let three = |args: &mut crate::settings::ServerArgs| {
            args.n = Some(3);
            args.r = Some(2);
            args.w = Some(2);
            args.anti_entropy_interval_ms = Some(3_600_000);
            args.test_disable_repair = true;
        };
        let failing_reads = |node| {
            Arc::new(Distorting {
                node,
                distort: |request: &Request, answer| match request {
                    Request::Read { .. } => Response::Error("reads fail here".into()),
                    _ => answer,
                },
            })
        };
        let n1 = start_serving("n1", None, &shutdown, three, failing_reads).await;
        let n2 = start("n2", Some(&n1.listen), &shutdown, three).await;
        let _n3 = start("n3", Some(&n1.listen), &shutdown, three).await;
        let slow = |node| {
            Arc::new(Delaying {
                node,
                delay: Duration::from_millis(1500),
                slow: |request: &Request| matches!(request, Request::Read { .. }),
            })
        };
        let n4 = start_serving("n4", Some(&n1.listen), &shutdown, three, slow).await;
        let ids = node_ids(&["n1", "n2", "n3", "n4"]);
        eventually(
            Duration::from_secs(60),
            "n2 never held a settled ring of all four nodes",
            || {
                n2.node.membership().ring().is_some_and(|r| {
                    r.topology.transition().is_none()
                        && ids.iter().all(|id| r.topology.is_member(id))
                })
            },
        )
        .await;
        eventually(
            Duration::from_secs(30),
            "n2 never saw every peer up",
            || ids.iter().all(|id| n2.node.membership().is_live(id)),
        )
        .await;
        let ring = n2.node.membership().ring().unwrap();
        let mut home_of_key = vec![ids[0].clone(), ids[1].clone(), ids[3].clone()];
        home_of_key.sort();
        let key = (0..100_000)
            .map(|i| Bytes::from(format!("key-{i}")))
            .find(|k| {
                let partition = ring.topology.partition_of(ringkv_core::key_hash(k));
                let mut home = ring.topology.home(partition);
                home.sort();
                home == home_of_key
            })
            .expect("some key lives on n1, n2 and n4");
        let partition = ring.topology.partition_of(ringkv_core::key_hash(&key));
        let writer = ReplicaId::new(NodeId::new("n1").unwrap(), 1);
        let held = VersionSet::new()
            .update(
                &VersionVector::new(),
                Some(Bytes::from_static(b"acknowledged")),
                &writer,
            )
            .0;
        n4.engine
            .update(partition, &key, &mut |_| Some(held.clone()))
            .unwrap();

        let read = ClientOp::Get {
            key,
            r: 2,
            strict: false,
        };
        let answer = n2.node.coordinate(read, Duration::from_secs(5)).await;
        let values: Vec<Bytes> = match &answer {
            Ok(ClientReply::Read(Some(set))) => set.values().cloned().collect(),
            other => panic!("the read missed n4's copy: {other:?}"),
        };
        assert_eq!(values, [Bytes::from_static(b"acknowledged")]);
        shutdown.cancel();
    }
    /// A node asked as a home replica of a key it no longer is home for in its own ring, and
    /// holding nothing for it (it handed the partition over and swept it), does not count
    /// toward R. N=2, R=2: n1, the coordinator, still holds the old ring, where the key's home
    /// replicas are n1 and n2 and n3 is the fallback; n2 and n3 hold a newer ring (which n1
    /// cannot fetch from them), where n3 has taken n2's place and holds the acknowledged
    /// write. n1's own "nothing" and n2's met R: the read answered not found.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_no_longer_home_that_holds_nothing_does_not_count_toward_r() {
        use crate::common::{Distorting, eventually, node_ids, settled, start, start_serving};
        use ringkv_core::ring::Ring;
        use ringkv_core::topology::Topology;
        use ringkv_storage::StorageEngine;
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio_util::sync::CancellationToken;
        let shutdown = CancellationToken::new();
        let two = |args: &mut crate::settings::ServerArgs| {
            args.n = Some(2);
            args.r = Some(2);
            args.anti_entropy_interval_ms = Some(3_600_000);
            args.test_disable_repair = true;
        };
        // Once set, n2 and n3 refuse to hand out their ring (n1 keeps the old one), and to
        // take part in a sweep (n2's sweep keeps what the test gives it).
        let diverged = Arc::new(AtomicBool::new(false));
        let keeping_rings = |diverged: Arc<AtomicBool>| {
            move |node| {
                Arc::new(Distorting {
                    node,
                    distort: move |request: &Request, answer| match request {
                        Request::FetchRing | Request::SameVersions { .. }
                            if diverged.load(Ordering::SeqCst) =>
                        {
                            Response::Error("refused by the test".into())
                        }
                        _ => answer,
                    },
                })
            }
        };
        let n1 = start("n1", None, &shutdown, two).await;
        let n2 = start_serving(
            "n2",
            Some(&n1.listen),
            &shutdown,
            two,
            keeping_rings(diverged.clone()),
        )
        .await;
        let n3 = start_serving(
            "n3",
            Some(&n1.listen),
            &shutdown,
            two,
            keeping_rings(diverged.clone()),
        )
        .await;
        let ids = node_ids(&["n1", "n2", "n3"]);
        eventually(
            Duration::from_secs(60),
            "the nodes never formed a ring",
            || settled(&[&n1, &n2, &n3], &ids),
        )
        .await;
        let old = n1.node.membership().ring().unwrap();
        // The newer ring moves partitions away from n2 (it weighs half the others).
        let members: Vec<_> = old
            .topology
            .committed()
            .members()
            .iter()
            .cloned()
            .map(|mut m| {
                m.weight = if m.id == ids[1] { 1 } else { 2 };
                m
            })
            .collect();
        let params = old.topology.params();
        let newer = Ring::claim(Some(old.topology.committed()), &members, params).unwrap();
        let newer =
            crate::wire::RingState::new(old.cluster, old.version + 1, Topology::settled(newer));
        let key = (0..100_000)
            .map(|i| Bytes::from(format!("key-{i}")))
            .find(|k| {
                let partition = old.topology.partition_of(ringkv_core::key_hash(k));
                let was = old.topology.home(partition);
                let now = newer.topology.home(partition);
                was.contains(&ids[0])
                    && was.contains(&ids[1])
                    && now.contains(&ids[2])
                    && !now.contains(&ids[1])
            })
            .expect("some key moves from n2 to n3 and stays on n1");
        diverged.store(true, Ordering::SeqCst);
        assert!(n2.node.membership().adopt(newer.clone()).await);
        assert!(n3.node.membership().adopt(newer).await);
        let partition = old.topology.partition_of(ringkv_core::key_hash(&key));
        let writer = ReplicaId::new(ids[2].clone(), 1);
        let held = VersionSet::new()
            .update(
                &VersionVector::new(),
                Some(Bytes::from_static(b"acknowledged")),
                &writer,
            )
            .0;
        n3.engine
            .update(partition, &key, &mut |_| Some(held.clone()))
            .unwrap();

        let read = ClientOp::Get {
            key: key.clone(),
            r: 2,
            strict: false,
        };
        let answer = n1.node.coordinate(read, Duration::from_secs(5)).await;
        let values: Vec<Bytes> = match &answer {
            Ok(ClientReply::Read(Some(set))) => set.values().cloned().collect(),
            other => panic!("n2's nothing hid n3's copy: {other:?}"),
        };
        assert_eq!(values, [Bytes::from_static(b"acknowledged")]);
        assert_eq!(
            n1.node.membership().ring().unwrap().version,
            old.version,
            "n1 adopted the newer ring: the test checks nothing"
        );

        // The answers themselves: only a node asked as home, home for the key in no ring of
        // its own and holding nothing, answers `NotHome`.
        let ask = |node: &Arc<Node>, as_home: bool| {
            let read = Request::Read {
                key: key.clone(),
                as_home,
            };
            crate::transport::Handler::handle(node.clone(), read, Duration::from_secs(5))
        };
        let answer = ask(&n2.node, true).await;
        assert!(
            matches!(answer, Response::NotHome { ring_version } if ring_version == old.version + 1),
            "{answer:?}"
        );
        // A fallback asked for its hints, and a node home in its ring, may hold nothing.
        let answer = ask(&n2.node, false).await;
        assert!(matches!(answer, Response::Versions(None)), "{answer:?}");
        let answer = ask(&n1.node, true).await;
        assert!(matches!(answer, Response::Versions(None)), "{answer:?}");
        // A node no longer home that still holds the key (its sweep has not dropped it)
        // answers it.
        n2.engine
            .update(partition, &key, &mut |_| Some(held.clone()))
            .unwrap();
        let answer = ask(&n2.node, true).await;
        assert!(
            matches!(answer, Response::Versions(Some(ref v)) if *v == held),
            "{answer:?}"
        );
        shutdown.cancel();
    }
    /// Read repair never writes what a read gathered more than a tombstone grace ago (a
    /// purge may have removed, since, the tombstone that deleted it): such a repair is
    /// dropped, a fresh one is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_repair_older_than_the_tombstone_grace_is_not_written() {
        use crate::common::start;
        use ringkv_storage::StorageEngine;
        use tokio_util::sync::CancellationToken;
        let shutdown = CancellationToken::new();
        let n1 = start("n1", None, &shutdown, |args| {
            args.n = Some(1);
            args.tombstone_grace_ms = Some(1_000);
        })
        .await;
        let me = n1.node.membership().me().clone();
        let key = Bytes::from_static(b"repaired");
        let writer = ReplicaId::new(NodeId::new("elsewhere").unwrap(), 1);
        let seen = VersionSet::new()
            .update(
                &VersionVector::new(),
                Some(Bytes::from_static(b"x")),
                &writer,
            )
            .0;
        let replies = vec![
            (me.clone(), None),
            (writer.node().clone(), Some(seen.clone())),
        ];
        let partition = n1.node.partition_of(&key);
        let now = Instant::now();
        let long_ago = now - Duration::from_secs(2);
        n1.node
            .clone()
            .read_repair(
                key.clone(),
                vec![me.clone()],
                replies.clone(),
                FuturesUnordered::new(),
                (long_ago, now),
            )
            .await;
        assert_eq!(n1.engine.get(partition, &key).unwrap(), None);
        n1.node
            .clone()
            .read_repair(
                key.clone(),
                vec![me],
                replies,
                FuturesUnordered::new(),
                (now, now),
            )
            .await;
        assert_eq!(n1.engine.get(partition, &key).unwrap(), Some(seen));
        shutdown.cancel();
    }
}
