//! Hinted handoff delivery (Dynamo §4.6): a fallback that took writes for an unreachable home
//! replica hands them over when that replica is reachable again.
//!
//! Every `--hint-interval-ms`, for each target with pending hints that the failure detector
//! believes up, the node sends at most `HINT_DELIVERY_BATCH` hints as ordinary replica
//! writes (the target syncs them in; duplicates are harmless) and deletes each hint on its
//! acknowledgement, unless it changed meanwhile (then it is delivered again next round). A
//! target that cannot be reached is left until the next round. The batch bound throttles
//! delivery so a returning node is not flooded: at most HINT_DELIVERY_BATCH hints per target
//! per interval. Up to `HINT_TARGETS_AT_ONCE` targets are served side by side, so a slow one
//! holds up only its own hints.
//!
//! Each target's hints are walked with a cursor (`HintCursors`): a hint the target answers
//! but refuses (its copy of the key is unreadable, the frame is over its limit) is skipped
//! until the next pass over that target's hints instead of holding back every hint behind it.
//! A pass ends at the last hint; the next starts from the first again, so a refused hint is
//! offered once per pass, never dropped.
//!
//! A hint whose target is no longer a member (it left the cluster) is delivered instead to
//! the partition's current home replicas and the nodes gaining it, and deleted once every one
//! of them acknowledged it (one that is down through a hint for it, kept by a live holder): a
//! departed node never strands a write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::StreamExt;
use ringkv_core::{NodeId, PartitionId};
use ringkv_storage::Hint;
use tracing::{debug, info, warn};

use crate::membership::RingState;
use crate::node::Node;
use crate::transport::TransportError;
use crate::wire::{Request, Response};

/// Most hints delivered to one target per round.
pub const HINT_DELIVERY_BATCH: usize = 256;

/// Hint targets a delivery round works on at once.
pub const HINT_TARGETS_AT_ONCE: usize = 8;

/// Where each target's delivery resumes: the (partition, key) of the last hint offered to it.
/// Holds at most one entry per target with pending hints (pruned every round).
#[derive(Default)]
pub(crate) struct HintCursors(Mutex<HashMap<NodeId, (PartitionId, Bytes)>>);

impl HintCursors {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (PartitionId, Bytes)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, target: &NodeId) -> Option<(PartitionId, Bytes)> {
        self.map().get(target).cloned()
    }

    fn advance(&self, hint: &Hint) {
        self.map()
            .insert(hint.target.clone(), (hint.partition, hint.key.clone()));
    }

    fn restart(&self, target: &NodeId) {
        self.map().remove(target);
    }

    fn keep_only(&self, targets: &[NodeId]) {
        self.map().retain(|t, _| targets.contains(t));
    }
}

/// What became of one hint offered to a node.
enum Offer {
    Stored,
    /// The node answered but did not store it.
    Refused(String),
    /// No answer: the node is down or cut off.
    Unreachable(String),
}

/// The next hints of one target's pass, and whether they end the pass.
struct Batch {
    hints: Vec<Hint>,
    last_of_pass: bool,
}

/// The hint's partition in `ring`, from its key: the partition it was stored under comes
/// from disk, and one stored before the node had a ring was computed with its own
/// `--partitions`, maybe not the cluster's Q (the ring's lookups assert it is in range).
fn ring_partition(ring: &RingState, hint: &Hint) -> PartitionId {
    ring.topology.partition_of(ringkv_core::key_hash(&hint.key))
}

impl Node {
    /// One round of delivery to every reachable target.
    pub(crate) async fn deliver_hints(self: &Arc<Self>) {
        if self.hints.is_empty() || self.settings.disable_repair {
            metrics::gauge!("ringkv_hints_pending").set(0.0);
            return;
        }
        let targets = match self.hint_call(|hints| hints.targets()).await {
            Ok(Ok(t)) => t,
            other => {
                debug!(?other, "could not list hint targets");
                return;
            }
        };
        self.hint_cursors.keep_only(&targets);
        let ring = self.membership.ring();
        // Targets at once: one that answers slowly (each offer just inside the request
        // timeout) holds up its own batch, not every other target's behind it.
        futures::stream::iter(targets)
            .for_each_concurrent(HINT_TARGETS_AT_ONCE, |target| {
                let departed = ring
                    .as_ref()
                    .is_some_and(|r| !r.topology.is_member(&target));
                async move {
                    if departed {
                        self.rehome(&target).await;
                    } else if target != *self.membership.me() && self.membership.is_live(&target) {
                        self.deliver_to(&target).await;
                    } else if self.membership.has_left() {
                        self.pass_on(&target).await;
                    }
                }
            })
            .await;
        metrics::gauge!("ringkv_hints_pending").set(self.hints.len() as f64);
    }

    /// The next `HINT_DELIVERY_BATCH` hints held for `target`, after its cursor; `None` if
    /// they cannot be read. A cursor past the last hint starts the next pass at the first.
    async fn hint_batch(&self, target: &NodeId) -> Option<Batch> {
        let mut after = self.hint_cursors.get(target);
        loop {
            let t = target.clone();
            let cursor = after.clone();
            let hints = match self
                .hint_call(move |hints| {
                    let after = cursor.as_ref().map(|(p, k)| (*p, k.as_ref()));
                    hints.pending(&t, after, HINT_DELIVERY_BATCH)
                })
                .await
            {
                Ok(Ok(batch)) => batch,
                other => {
                    debug!(?other, "could not read hints");
                    return None;
                }
            };
            if hints.is_empty() && after.is_some() {
                self.hint_cursors.restart(target);
                after = None;
                continue;
            }
            let last_of_pass = hints.len() < HINT_DELIVERY_BATCH;
            return Some(Batch {
                hints,
                last_of_pass,
            });
        }
    }

    /// Offers one hint to `node` as an ordinary replica write.
    async fn offer(&self, node: &NodeId, hint: &Hint, hinted_for: Option<NodeId>) -> Offer {
        let Some(addr) = self.membership.address(node) else {
            return Offer::Unreachable(format!("no address for {node}"));
        };
        let request = Request::Write {
            key: hint.key.clone(),
            versions: hint.versions.clone(),
            hinted_for,
        };
        match self
            .peers
            .call(addr, request, self.settings.request_timeout)
            .await
        {
            Ok(Response::Ok) => Offer::Stored,
            Ok(Response::Error(e)) => Offer::Refused(e),
            Ok(_) => Offer::Refused("an answer that is not an acknowledgement".into()),
            // Never sent: this hint alone is over the frame limit. Skipped like a refusal, so it
            // does not hold back the target's other hints.
            Err(e @ TransportError::TooLarge(..)) => Offer::Refused(e.to_string()),
            Err(e) => Offer::Unreachable(e.to_string()),
        }
    }

    /// Deletes a hint that reached its destination (kept if it changed meanwhile).
    async fn acknowledge(&self, hint: Hint) {
        if let Ok(Err(e)) = self.hint_call(move |hints| hints.acknowledge(&hint)).await {
            debug!(error = %e, "could not delete a delivered hint");
        }
    }

    /// Ends a batch walked to its last hint: the next round starts the following pass at the
    /// first hint (offering refused ones again), or resumes after the last one offered.
    /// `refused` hints were refused, the first as `first_refusal` says (one log line a batch).
    fn finish_batch(
        &self,
        target: &NodeId,
        batch_done: bool,
        last_of_pass: bool,
        refused: usize,
        first_refusal: Option<String>,
    ) {
        if batch_done && last_of_pass {
            self.hint_cursors.restart(target);
        }
        if refused > 0 {
            metrics::counter!("ringkv_hint_deliveries_refused_total").increment(refused as u64);
            warn!(
                %target,
                refused,
                first = first_refusal.as_deref().unwrap_or(""),
                "hints refused where they were sent; kept, and offered again next pass"
            );
        }
    }

    async fn deliver_to(self: &Arc<Self>, target: &NodeId) {
        let Some(Batch {
            hints,
            last_of_pass,
        }) = self.hint_batch(target).await
        else {
            return;
        };
        let (mut delivered, mut refused) = (0usize, 0usize);
        let mut first_refusal = None;
        let mut batch_done = true;
        for hint in hints {
            match self.offer(target, &hint, None).await {
                Offer::Stored => {
                    self.hint_cursors.advance(&hint);
                    self.acknowledge(hint).await;
                    delivered += 1;
                    metrics::counter!("ringkv_hints_delivered_total").increment(1);
                }
                Offer::Refused(e) => {
                    self.hint_cursors.advance(&hint);
                    first_refusal.get_or_insert_with(|| format!("{:?}: {e}", hint.key));
                    refused += 1;
                }
                Offer::Unreachable(e) => {
                    debug!(%target, error = %e, "hint delivery failed; retrying next round");
                    batch_done = false;
                    break;
                }
            }
        }
        self.finish_batch(target, batch_done, last_of_pass, refused, first_refusal);
        if delivered > 0 {
            info!(%target, delivered, "delivered hinted writes");
        }
    }

    /// Delivers the hints held for a node that left to the partitions' current holders.
    async fn rehome(self: &Arc<Self>, departed: &NodeId) {
        let Some(ring) = self.membership.ring() else {
            return;
        };
        let Some(Batch {
            hints,
            last_of_pass,
        }) = self.hint_batch(departed).await
        else {
            return;
        };
        let (mut delivered, mut refused, mut held_back) = (0usize, 0usize, 0usize);
        let mut first_refusal = None;
        let mut batch_done = true;
        'hints: for hint in hints {
            let partition = ring_partition(&ring, &hint);
            let mut holders = ring.topology.home(partition);
            holders.extend(ring.topology.incoming(partition));
            let (mut stored_everywhere, mut refused_here) = (true, false);
            let (mut down, mut keeper) = (Vec::new(), None);
            for holder in holders {
                // A holder that is down now does not hold back the hints behind this one: it
                // gets a hint of its own below, kept by a live holder.
                if holder != *self.membership.me() && !self.membership.is_live(&holder) {
                    down.push(holder);
                    continue;
                }
                let offer = if holder == *self.membership.me() {
                    match self
                        .merge_local(hint.key.clone(), hint.versions.clone())
                        .await
                    {
                        Ok(_) => Offer::Stored,
                        Err(e) => Offer::Refused(e.to_string()),
                    }
                } else {
                    self.offer(&holder, &hint, None).await
                };
                match offer {
                    Offer::Stored => {
                        keeper.get_or_insert(holder);
                    }
                    Offer::Refused(e) => {
                        first_refusal
                            .get_or_insert_with(|| format!("{:?} at {holder}: {e}", hint.key));
                        stored_everywhere = false;
                        refused_here = true;
                    }
                    Offer::Unreachable(e) => {
                        debug!(%departed, %holder, error = %e, "re-homing a hint failed; retrying next round");
                        batch_done = false;
                        break 'hints;
                    }
                }
            }
            // Each holder that is down gets the write as a hint, kept by a live holder that
            // stored it; until one is kept, the departed node's hint stays.
            for holder in down {
                if refused_here {
                    // The hint stays anyway; no keeper copy until every live holder took it.
                    stored_everywhere = false;
                    break;
                }
                let kept = match &keeper {
                    Some(keeper) if keeper == self.membership.me() => {
                        match self
                            .store_hint(holder.clone(), hint.key.clone(), hint.versions.clone())
                            .await
                        {
                            Ok(()) => Offer::Stored,
                            Err(e) => Offer::Refused(e.to_string()),
                        }
                    }
                    Some(keeper) => self.offer(keeper, &hint, Some(holder.clone())).await,
                    None => Offer::Refused("no live holder stored it".into()),
                };
                match kept {
                    Offer::Stored => {}
                    Offer::Refused(e) => {
                        first_refusal.get_or_insert_with(|| {
                            format!("{:?} kept for {holder}: {e}", hint.key)
                        });
                        stored_everywhere = false;
                    }
                    Offer::Unreachable(e) => {
                        debug!(%departed, error = %e, "a keeper for a down holder's hint failed; retrying next round");
                        batch_done = false;
                        break 'hints;
                    }
                }
            }
            self.hint_cursors.advance(&hint);
            if stored_everywhere {
                self.acknowledge(hint).await;
                delivered += 1;
            } else if refused_here {
                refused += 1;
            } else {
                held_back += 1;
            }
        }
        self.finish_batch(departed, batch_done, last_of_pass, refused, first_refusal);
        if delivered > 0 {
            info!(%departed, delivered, "re-homed the hints of a departed node");
        }
        if held_back > 0 {
            debug!(%departed, held_back, "hints of a departed node wait for a holder or its keeper");
        }
    }

    /// A node that left hands the hints it keeps for a down member to a live member.
    async fn pass_on(self: &Arc<Self>, target: &NodeId) {
        let Some(ring) = self.membership.ring() else {
            return;
        };
        let Some(Batch {
            hints,
            last_of_pass,
        }) = self.hint_batch(target).await
        else {
            return;
        };
        let mut refused = 0usize;
        let mut first_refusal = None;
        let mut batch_done = true;
        for hint in hints {
            let list = ring.topology.preference_list(ring_partition(&ring, &hint));
            let keeper = list
                .fallbacks()
                .chain(list.home())
                .find(|n| *n != target && self.membership.is_live(n))
                .cloned();
            let Some(keeper) = keeper else {
                batch_done = false;
                break;
            };
            match self.offer(&keeper, &hint, Some(target.clone())).await {
                Offer::Stored => {
                    self.hint_cursors.advance(&hint);
                    self.acknowledge(hint).await;
                }
                Offer::Refused(e) => {
                    self.hint_cursors.advance(&hint);
                    first_refusal.get_or_insert_with(|| format!("{:?} at {keeper}: {e}", hint.key));
                    refused += 1;
                }
                Offer::Unreachable(_) => {
                    batch_done = false;
                    break;
                }
            }
        }
        self.finish_batch(target, batch_done, last_of_pass, refused, first_refusal);
    }
}
