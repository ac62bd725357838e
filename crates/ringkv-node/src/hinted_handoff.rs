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
        let hints = self.hints.clone();
        let targets = match tokio::task::spawn_blocking(move || hints.targets()).await {
            Ok(Ok(t)) => t,
            other => {
                debug!(?other, "could not list hint targets");
                return;
            }
        };
        for target in targets {
            if target != *self.membership.me() && self.membership.is_live(&target) {
                self.deliver_to(&target).await;
            }
        }
        metrics::gauge!("ringkv_hints_pending").set(self.hints.len() as f64);
    }

    async fn deliver_to(self: &Arc<Self>, target: &ringkv_core::NodeId) {
        let Some(addr) = self.membership.address(target) else {
            return;
        };
        let hints = self.hints.clone();
        let t = target.clone();
        let batch =
            match tokio::task::spawn_blocking(move || hints.pending(&t, HINT_DELIVERY_BATCH)).await
            {
                Ok(Ok(batch)) => batch,
                other => {
                    debug!(?other, "could not read hints");
                    return;
                }
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
                    let hints = self.hints.clone();
                    if let Ok(Err(e)) =
                        tokio::task::spawn_blocking(move || hints.acknowledge(&hint)).await
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
}
