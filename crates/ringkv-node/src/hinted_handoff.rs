//! Hinted handoff delivery (Dynamo §4.6): a fallback that took writes for an unreachable home
//! replica hands them over when that replica is reachable again.
//!
//! Every `--hint-interval-ms`, for each target with pending hints that the failure detector
//! believes up, the node sends at most `HINT_DELIVERY_BATCH` hints as ordinary replica
//! writes (the target syncs them in; duplicates are harmless) and deletes each hint on its
//! acknowledgement, unless it changed meanwhile (then it is delivered again next round). A
//! target that fails a delivery is left until the next round. The batch bound throttles
//! delivery so a returning node is not flooded: at most HINT_DELIVERY_BATCH hints per target
//! per interval.
//!
//! A hint whose target is no longer a member (it left the cluster) is delivered instead to
//! the partition's current home replicas and the nodes gaining it, and deleted once every one
//! of them acknowledged it: a departed node never strands a write.

use std::sync::Arc;

use tracing::{debug, info};

use crate::node::Node;
use crate::wire::{Request, Response};

/// Most hints delivered to one target per round.
pub const HINT_DELIVERY_BATCH: usize = 256;

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
        let ring = self.membership.ring();
        for target in targets {
            let departed = ring
                .as_ref()
                .is_some_and(|r| !r.topology.is_member(&target));
            if departed {
                self.rehome(&target).await;
            } else if target != *self.membership.me() && self.membership.is_live(&target) {
                self.deliver_to(&target).await;
            } else if self.membership.has_left() {
                self.pass_on(&target).await;
            }
        }
        metrics::gauge!("ringkv_hints_pending").set(self.hints.len() as f64);
    }

    /// The next `HINT_DELIVERY_BATCH` hints held for `target` (`None` if they cannot be read).
    async fn hint_batch(&self, target: &ringkv_core::NodeId) -> Option<Vec<ringkv_storage::Hint>> {
        let t = target.clone();
        match self
            .hint_call(move |hints| hints.pending(&t, HINT_DELIVERY_BATCH))
            .await
        {
            Ok(Ok(batch)) => Some(batch),
            other => {
                debug!(?other, "could not read hints");
                None
            }
        }
    }

    async fn deliver_to(self: &Arc<Self>, target: &ringkv_core::NodeId) {
        let Some(addr) = self.membership.address(target) else {
            return;
        };
        let Some(batch) = self.hint_batch(target).await else {
            return;
        };
        let mut delivered = 0usize;
        for hint in batch {
            let request = Request::Write {
                key: hint.key.clone(),
                versions: hint.versions.clone(),
                hinted_for: None,
            };
            match self
                .peers
                .call(addr, request, self.settings.request_timeout)
                .await
            {
                Ok(Response::Ok) => {
                    if let Ok(Err(e)) = self.hint_call(move |hints| hints.acknowledge(&hint)).await
                    {
                        debug!(error = %e, "could not delete a delivered hint");
                    }
                    delivered += 1;
                    metrics::counter!("ringkv_hints_delivered_total").increment(1);
                }
                other => {
                    debug!(%target, ?other, "hint delivery failed; retrying next round");
                    break;
                }
            }
        }
        if delivered > 0 {
            info!(%target, delivered, "delivered hinted writes");
        }
    }

    /// Delivers the hints held for a node that left to the partitions' current holders.
    async fn rehome(self: &Arc<Self>, departed: &ringkv_core::NodeId) {
        let Some(ring) = self.membership.ring() else {
            return;
        };
        let Some(batch) = self.hint_batch(departed).await else {
            return;
        };
        let mut delivered = 0usize;
        for hint in batch {
            let mut holders = ring.topology.home(hint.partition);
            holders.extend(ring.topology.incoming(hint.partition));
            let mut all = true;
            for holder in holders {
                let ok = if holder == *self.membership.me() {
                    self.merge_local(hint.key.clone(), hint.versions.clone())
                        .await
                        .is_ok()
                } else {
                    let request = Request::Write {
                        key: hint.key.clone(),
                        versions: hint.versions.clone(),
                        hinted_for: None,
                    };
                    matches!(self.ask(&holder, request).await, Ok(Response::Ok))
                };
                all &= ok;
            }
            if !all {
                debug!(%departed, "re-homing a hint failed; retrying next round");
                break;
            }
            let _ = self.hint_call(move |hints| hints.acknowledge(&hint)).await;
            delivered += 1;
        }
        if delivered > 0 {
            info!(%departed, delivered, "re-homed the hints of a departed node");
        }
    }

    /// A node that left hands the hints it keeps for a down member to a live member.
    async fn pass_on(self: &Arc<Self>, target: &ringkv_core::NodeId) {
        let Some(ring) = self.membership.ring() else {
            return;
        };
        let Some(batch) = self.hint_batch(target).await else {
            return;
        };
        for hint in batch {
            let keeper = ring
                .topology
                .preference_list(hint.partition)
                .fallbacks()
                .chain(ring.topology.preference_list(hint.partition).home())
                .find(|n| *n != target && self.membership.is_live(n))
                .cloned();
            let Some(keeper) = keeper else {
                return;
            };
            let request = Request::Write {
                key: hint.key.clone(),
                versions: hint.versions.clone(),
                hinted_for: Some(target.clone()),
            };
            if !matches!(self.ask(&keeper, request).await, Ok(Response::Ok)) {
                return;
            }
            let _ = self.hint_call(move |hints| hints.acknowledge(&hint)).await;
        }
    }
}
