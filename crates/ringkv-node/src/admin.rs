//! The cluster and admin HTTP API (API.md §3): `/status`, `/ring`, `/admin/leave`, and
//! `/admin/plan` (what a join or leave would move, computed without changing anything).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ringkv_core::ring::{Member, Ring};
use ringkv_core::{NodeId, PartitionId};
use serde_json::json;

use crate::error::ApiError;
use crate::handoff::LeaveError;
use crate::http::HttpState;
use crate::membership::Status;
use crate::node::Node;

/// Partitions sampled from local storage to estimate keys and bytes per partition.
const PLAN_SAMPLE_PARTITIONS: usize = 16;
/// Keys counted per sampled partition at most.
const PLAN_SAMPLE_KEYS: usize = 10_000;

/// `GET /status`: 200 once the node is ready to serve (API.md §1: it has a ring, its own or
/// the cluster's it joined), 503 before, with the same body either way.
pub async fn status(State(state): State<HttpState>) -> (StatusCode, Json<serde_json::Value>) {
    let ready = state.node.membership().ring().is_some();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(status_json(&state.node)))
}

/// `/status` as this node sees it.
pub fn status_json(node: &Node) -> serde_json::Value {
    let membership = node.membership();
    let view = membership.view();
    let ring = membership.ring();
    let topology = ring.as_ref().map(|r| &r.topology);
    let ring_members: Vec<Member> = topology
        .map(|t| t.members().into_iter().cloned().collect())
        .unwrap_or_default();
    let mut ids: Vec<NodeId> = ring_members.iter().map(|m| m.id.clone()).collect();
    for p in view.peers.values() {
        if !ids.contains(&p.id) {
            ids.push(p.id.clone());
        }
    }
    if !ids.contains(membership.me()) {
        ids.push(membership.me().clone());
    }
    ids.sort();
    let settings = node.settings();
    let mut members = Vec::new();
    for id in ids {
        let peer = view.peers.get(&id);
        let me = id == *membership.me();
        let live = me || peer.is_some_and(|p| p.live);
        let published = if me {
            membership.own_status()
        } else {
            peer.map(|p| p.status).unwrap_or(Status::Joining)
        };
        let in_committed = topology.is_some_and(|t| t.committed().member(&id).is_some());
        let leaving = topology.is_some_and(|t| t.leaving().contains(&id));
        let left = published == Status::Left;
        // A node that is neither in the ring nor reachable (it left, or was removed while down)
        // is gone, not down, as in Riak: gossip remembers its last state a while, /status not.
        if !me && !live && !ring_members.iter().any(|m| m.id == id) {
            continue;
        }
        let status = match live {
            false => "down",
            true if leaving || left => "leaving",
            true if in_committed => "up",
            true => "joining",
        };
        let (listen, http, zone) = match (me, peer) {
            (true, _) => (
                settings.listen.to_string(),
                settings.http.to_string(),
                settings.zone.clone(),
            ),
            (false, Some(p)) => (p.listen.to_string(), p.http.to_string(), p.zone.clone()),
            (false, None) => (
                String::new(),
                String::new(),
                ring_members
                    .iter()
                    .find(|m| m.id == id)
                    .map(|m| m.zone.clone())
                    .unwrap_or_default(),
            ),
        };
        let owned = topology.map(|t| t.partitions_owned(&id)).unwrap_or(0);
        members.push(json!({
            "node_id": id, "listen": listen, "http": http, "zone": zone, "status": status,
            "partitions_owned": owned, "left": left,
        }));
    }
    let (n, partitions, version) = match &ring {
        Some(r) => (
            r.topology.params().n,
            r.topology.params().partitions,
            r.version,
        ),
        None => (settings.n, settings.partitions, 0),
    };
    let cluster_id = ring.as_ref().map(|r| format!("{:016x}", r.cluster));
    let ae = &node.anti_entropy;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let handoff = node.handoff_report();
    let transition = topology.and_then(|t| t.transition());
    json!({
        "node_id": membership.me(),
        "cluster": {
            "id": cluster_id, "n": n, "partitions": partitions, "ring_version": version,
            "members": members,
            "transition": transition.map(|t| json!({
                "partitions_pending": t.pending().count(),
                "transfers_pending": t.pending_transfers(),
                "transfers_total": t.transfers(),
            })),
        },
        "hints_pending": node.hints.len(),
        "gossip": match membership.gossip_failure() {
            None => "running".to_string(),
            Some(why) => format!("stopped: {why}"),
        },
        "anti_entropy": {
            "passes": load(&ae.passes),
            "partitions_compared": load(&ae.partitions_compared),
            "keys_repaired": load(&ae.keys_repaired),
            "last_full_pass_unix_ms": load(&ae.last_full_pass_unix_ms),
        },
        "tombstones": {
            "purge_candidates": node.tombstones.candidates(),
            "purged": load(&node.tombstones.purged),
            "purges_deferred": load(&node.tombstones.deferred),
            "dot_floor": node.tombstones.dot_floor(),
        },
        "handoff": {
            "cluster_transfers_pending": handoff.cluster_pending,
            "partitions_pending": handoff.awaiting.saturating_sub(handoff.moving),
            "partitions_moving": handoff.moving,
            "partitions_done": handoff.done,
            "bytes_received": handoff.bytes_received,
            "bytes_sent": handoff.bytes_sent,
            "keys_dropped": handoff.keys_dropped,
            "partitions_owned": topology.map(|t| t.partitions_owned(membership.me())).unwrap_or(0),
            "left": node.left_and_drained(),
        },
    })
}

pub async fn ring(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    let node = &state.node;
    let ring = node
        .membership()
        .ring()
        .ok_or_else(|| ApiError::unavailable("this node has not joined a cluster yet", None))?;
    let topology = &ring.topology;
    let params = topology.params();
    let view = node.membership().view();
    let table: Vec<_> = (0..params.partitions)
        .map(|i| {
            let p = PartitionId::new(i, params.partitions).expect("in range");
            let owners: Vec<_> = topology.preference_list(p).home().map(|n| n.as_str()).collect();
            json!({"partition": i, "first_hash": format!("{:032x}", p.first_hash(params.partitions).0), "owners": owners})
        })
        .collect();
    let members: Vec<_> = topology
        .members()
        .into_iter()
        .map(|m| {
            let http = if m.id == *node.membership().me() {
                Some(node.settings().http.to_string())
            } else {
                view.peers.get(&m.id).map(|p| p.http.to_string())
            };
            json!({"node_id": m.id, "zone": m.zone, "weight": m.weight, "http": http})
        })
        .collect();
    Ok(Json(json!({
        "cluster_id": format!("{:016x}", ring.cluster),
        "version": ring.version, "n": params.n, "partitions": params.partitions,
        "members": members, "table": table,
        "pending": topology.transition().map(|t| t.pending().map(|(p, _)| {
            let partition = PartitionId::new(p, params.partitions).expect("in range");
            let target: Vec<_> = t.target().preference_list(partition).home().map(|n| n.as_str()).collect();
            json!({"partition": p, "target_owners": target})
        }).collect::<Vec<_>>()),
    })))
}

/// `POST /admin/leave?node=ID` (this node when the query names none, as `ringkv leave`
/// without an ID sends): `202` once the claimant recorded the leave. Any other parameter, or
/// `node` empty, without `=` or given twice, is a 400: a mistyped query must not fall back to
/// "this node" and make the receiving node leave.
pub async fn leave(State(state): State<HttpState>, uri: Uri) -> Result<Response, ApiError> {
    let node = match strict_query(&uri, &["node"])?.get("node") {
        Some(id) => {
            NodeId::new(id.as_str()).map_err(|e| ApiError::bad_request(format!("node: {e}")))?
        }
        None => state.node.membership().me().clone(),
    };
    match state.node.request_leave(node.clone()).await {
        Ok(version) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"node_id": node, "status": "leaving", "ring_version": version})),
        )
            .into_response()),
        Err(LeaveError::Refused(why)) => Err(ApiError::bad_request(why)),
        Err(LeaveError::Unavailable(why)) => Err(ApiError::unavailable(why, None)),
    }
}

/// `GET /admin/plan?join=ID[:WEIGHT[:ZONE]]&leave=ID`: what the change would move, from the
/// ring this node holds (the target ring if a transition is open), changing nothing.
pub async fn plan(
    State(state): State<HttpState>,
    uri: Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    let node = state.node.clone();
    let ring = node
        .membership()
        .ring()
        .ok_or_else(|| ApiError::unavailable("this node has not joined a cluster yet", None))?;
    let base = ring
        .topology
        .target()
        .unwrap_or(ring.topology.committed())
        .clone();
    let params = strict_query(&uri, &["join", "leave"])?;
    let mut members: Vec<Member> = base.members().to_vec();
    if let Some(join) = params.get("join") {
        let member = parse_member(join)?;
        if base.member(&member.id).is_some() {
            return Err(ApiError::bad_request(format!(
                "{} is already a member",
                member.id
            )));
        }
        members.push(member);
    }
    if let Some(leave) = params.get("leave") {
        let id = NodeId::new(leave.as_str())
            .map_err(|e| ApiError::bad_request(format!("leave: {e}")))?;
        if base.member(&id).is_none() {
            return Err(ApiError::bad_request(format!("{id} is not a member")));
        }
        members.retain(|m| m.id != id);
        // The same refusal the leave itself would give, not a plan that cannot happen.
        let n = base.params().n;
        if members.len() < usize::from(n) {
            return Err(ApiError::bad_request(
                ringkv_core::topology::TopologyError::TooFewMembers {
                    node: id,
                    remaining: members.len(),
                    n,
                }
                .to_string(),
            ));
        }
    }
    if members.len() == base.members().len() && !params.contains_key("join") {
        return Err(ApiError::bad_request(
            "say what would change: join=ID[:WEIGHT[:ZONE]] and/or leave=ID",
        ));
    }
    let next = Ring::claim(Some(&base), &members, base.params())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (keys_per_partition, bytes_per_partition) = node.partition_size_estimate().await;
    Ok(Json(plan_json(
        &base,
        &next,
        keys_per_partition,
        bytes_per_partition,
        ring.version,
    )))
}

/// The plan of moving from `base` to `next`, per node.
fn plan_json(
    base: &Ring,
    next: &Ring,
    keys_per_partition: f64,
    bytes_per_partition: f64,
    version: u64,
) -> serde_json::Value {
    let q = base.params().partitions;
    let n = base.params().n;
    let mut ids: Vec<&NodeId> = base
        .members()
        .iter()
        .chain(next.members())
        .map(|m| &m.id)
        .collect();
    ids.sort();
    ids.dedup();
    let mut gains: BTreeMap<&NodeId, u64> = BTreeMap::new();
    let mut losses: BTreeMap<&NodeId, u64> = BTreeMap::new();
    for change in base.home_changes(next) {
        for g in change.gained() {
            *gains
                .entry(ids[ids.binary_search(&g).expect("a member")])
                .or_default() += 1;
        }
        for l in change.lost() {
            *losses
                .entry(ids[ids.binary_search(&l).expect("a member")])
                .or_default() += 1;
        }
    }
    let replicas = |ring: &Ring, id: &NodeId| -> u64 {
        (0..q)
            .filter(|&i| ring.is_home(PartitionId::new(i, q).expect("in range"), id))
            .count() as u64
    };
    let total_weight: u64 = next.members().iter().map(|m| u64::from(m.weight)).sum();
    let mut optimal = 0.0f64;
    let mut rows = Vec::new();
    for id in &ids {
        let before = replicas(base, id);
        let after = replicas(next, id);
        if let Some(m) = next.member(id) {
            let fair = (f64::from(q) * f64::from(n) * f64::from(m.weight) / total_weight as f64)
                .min(f64::from(q));
            optimal += (fair - before as f64).max(0.0);
        }
        let gained = gains.get(id).copied().unwrap_or(0);
        let lost = losses.get(id).copied().unwrap_or(0);
        let member = next
            .member(id)
            .or(base.member(id))
            .expect("a member of one ring");
        rows.push(json!({
            "node_id": id, "zone": member.zone, "weight": member.weight,
            "owned_before": base.partitions_owned(id), "owned_after": next.partitions_owned(id),
            "replicas_before": before, "replicas_after": after,
            "replicas_gained": gained, "replicas_lost": lost,
            "est_keys_in": (gained as f64 * keys_per_partition).round(),
            "est_bytes_in": (gained as f64 * bytes_per_partition).round(),
            "est_keys_out": (lost as f64 * keys_per_partition).round(),
            "est_bytes_out": (lost as f64 * bytes_per_partition).round(),
        }));
    }
    let moved: u64 = gains.values().sum();
    json!({
        "ring_version": version, "partitions": q, "n": n,
        "replicas_moved": moved,
        "replicas_moved_optimal": optimal.ceil(),
        "movement_ratio": if optimal > 0.0 { moved as f64 / optimal.ceil() } else { 0.0 },
        "keys_per_partition_estimate": keys_per_partition.round(),
        "bytes_per_partition_estimate": bytes_per_partition.round(),
        "nodes": rows,
    })
}

/// `ID[:WEIGHT[:ZONE]]`.
fn parse_member(text: &str) -> Result<Member, ApiError> {
    let mut parts = text.splitn(3, ':');
    let id = NodeId::new(parts.next().unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("join: {e}")))?;
    let weight = match parts.next() {
        Some(w) => w
            .parse()
            .map_err(|_| ApiError::bad_request(format!("join: weight {w:?} is not a number")))?,
        None => 1,
    };
    let zone = parts.next().unwrap_or("default").to_string();
    Ok(Member { id, weight, zone })
}

/// The query parameters of an admin request, percent-decoded. Each must be one of `allowed`,
/// given once, as `name=value` with a value: anything else is a 400, so that a typo is an
/// error rather than a parameter silently left out.
fn strict_query(uri: &Uri, allowed: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let decode = |text: &str| {
        crate::http::percent_decode(text)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ApiError::bad_request(format!("{text:?} is not percent-encoded UTF-8")))
    };
    let mut params = BTreeMap::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(ApiError::bad_request(format!(
                "parameter {pair:?} has no value (name=value)"
            )));
        };
        let (name, value) = (decode(name)?, decode(value)?);
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {name:?}; this endpoint takes {}",
                allowed.join(", ")
            )));
        }
        if value.is_empty() {
            return Err(ApiError::bad_request(format!("{name} must not be empty")));
        }
        if params.insert(name.clone(), value).is_some() {
            return Err(ApiError::bad_request(format!(
                "{name} is given more than once"
            )));
        }
    }
    Ok(params)
}

impl Node {
    /// Average keys and record bytes per partition replica, estimated from a sample of the
    /// partitions this node holds (partitions it replicates but holds no key of count as
    /// empty).
    pub(crate) async fn partition_size_estimate(&self) -> (f64, f64) {
        let Some(ring) = self.membership.ring() else {
            return (0.0, 0.0);
        };
        let q = ring.topology.params().partitions;
        let me = self.membership.me();
        let replicated = (0..q)
            .filter_map(|i| PartitionId::new(i, q))
            .filter(|p| ring.topology.is_home(*p, me))
            .count();
        let sampled = self
            .store(|s| -> Result<Sample, ringkv_storage::StorageError> {
                let held = s.partitions()?;
                let step = (held.len() / PLAN_SAMPLE_PARTITIONS).max(1);
                let mut sample = Sample {
                    held: held.len(),
                    ..Sample::default()
                };
                for p in held.iter().step_by(step).take(PLAN_SAMPLE_PARTITIONS) {
                    sample.partitions += 1;
                    for (k, v) in s.scan_readable(*p, None, PLAN_SAMPLE_KEYS)?.entries {
                        sample.keys += 1;
                        sample.bytes += crate::handoff::record_bytes(&k, &v);
                    }
                }
                Ok(sample)
            })
            .await;
        match sampled {
            Ok(Ok(s)) if s.partitions > 0 => {
                let held_share = (s.held as f64 / replicated.max(s.held) as f64).min(1.0);
                let per = |x: u64| x as f64 / s.partitions as f64 * held_share;
                (per(s.keys), per(s.bytes))
            }
            _ => (0.0, 0.0),
        }
    }
}

/// Counts from sampling local partitions.
#[derive(Default)]
struct Sample {
    held: usize,
    partitions: usize,
    keys: u64,
    bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(query: &str, allowed: &[&str]) -> Result<Vec<(String, String)>, String> {
        let uri: Uri = format!("/admin/leave{query}").parse().unwrap();
        strict_query(&uri, allowed)
            .map(|m| m.into_iter().collect())
            .map_err(|e| e.message)
    }

    #[test]
    fn admin_queries_name_only_known_parameters_once_with_a_value() {
        let node = |v: &str| vec![("node".to_string(), v.to_string())];
        assert_eq!(parsed("", &["node"]), Ok(vec![]));
        assert_eq!(parsed("?", &["node"]), Ok(vec![]));
        assert_eq!(parsed("?node=n3", &["node"]), Ok(node("n3")));
        assert_eq!(parsed("?node=n%33", &["node"]), Ok(node("n3")));
        assert_eq!(parsed("?&node=n3&", &["node"]), Ok(node("n3")));
        for bad in [
            "?node",
            "?node=",
            "?Node=n3",
            "?nodes=n3",
            "?node=n3&node=n4",
            "?node=n3&force",
            "?node=n3&force=1",
            "?node=%ff",
            "?node=%zz",
            "?=n3",
        ] {
            assert!(parsed(bad, &["node"]).is_err(), "{bad} was accepted");
        }
    }
}
