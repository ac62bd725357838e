//! The coordinator: the read and write paths of Dynamo §4.5.
//!
//! - Any node takes any request. A node that is not among the key's home replicas forwards it
//!   to the first reachable home replica, which coordinates (a forwarded request is never
//!   forwarded again, so a disagreement about the ring cannot loop).
//! - put/delete: the coordinator applies the DVV update under its own replica id, stores it
//!   durably, sends the resulting version set to the other home replicas, and answers after W
//!   acknowledgements, its own included; the other replications finish in the background.
//! - get: ask the home replicas, answer after R replies with their sync; the context covers
//!   everything returned. Replies that arrive later still count for read repair: once every
//!   replica answered or the deadline passed, replicas whose set lacks something of the merged
//!   set receive it.
//!
//! Every wait is bounded by the request's deadline: a slow or dead peer costs at most that.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::quorum::Quorum;
use ringkv_core::{Dot, NodeId, VersionSet};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use crate::node::Node;
use crate::transport::TransportError;
use crate::wire::{ClientContext, ClientError, ClientOp, ClientReply, Request, Response};

/// One replica's answer to a read.
type ReadReply = (NodeId, Result<Option<VersionSet>, String>);

impl Node {
    /// Entry point for a client operation arriving at this node.
    pub async fn client_op(
        self: &Arc<Self>,
        op: ClientOp,
        timeout: Duration,
    ) -> Result<ClientReply, ClientError> {
        let key = op_key(&op).clone();
        let ring = self
            .membership
            .ring()
            .ok_or_else(|| ClientError::Unavailable {
                message: "this node has not joined a cluster yet".into(),
                stored_on: None,
            })?;
        let partition = ring.ring.partition_of(ringkv_core::key_hash(&key));
        let home: Vec<NodeId> = ring
            .ring
            .preference_list(partition)
            .home()
            .cloned()
            .collect();
        if home.contains(self.membership.me()) {
            return self.coordinate(op, timeout).await;
        }
        let deadline = Instant::now() + timeout;
        let mut last_error = String::from("no home replica is reachable");
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
                Ok(other) => last_error = format!("{node} answered {other:?}"),
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(ClientError::Unavailable {
            message: format!("could not reach a coordinator for the key: {last_error}"),
            stored_on: Some(0),
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
            .map(|r| r.ring.params().n)
            .unwrap_or(self.settings.n);
        match op {
            ClientOp::Get { key, r } => {
                let r =
                    Quorum::new(r as u32, n).map_err(|e| ClientError::BadRequest(e.to_string()))?;
                self.coordinate_get(key, r, timeout)
                    .await
                    .map(ClientReply::Read)
            }
            ClientOp::Put {
                key,
                context,
                value,
                w,
            } => {
                let w =
                    Quorum::new(w as u32, n).map_err(|e| ClientError::BadRequest(e.to_string()))?;
                self.coordinate_put(key, context, value, w, timeout)
                    .await
                    .map(|(stored, dot)| ClientReply::Written { stored, dot })
            }
        }
    }

    fn home_replicas(&self, key: &[u8]) -> Result<Vec<NodeId>, ClientError> {
        let ring = self
            .membership
            .ring()
            .ok_or_else(|| ClientError::Unavailable {
                message: "this node has not joined a cluster yet".into(),
                stored_on: None,
            })?;
        let partition = ring.ring.partition_of(ringkv_core::key_hash(key));
        Ok(ring
            .ring
            .preference_list(partition)
            .home()
            .cloned()
            .collect())
    }

    async fn coordinate_put(
        self: &Arc<Self>,
        key: Bytes,
        context: Option<ClientContext>,
        value: Option<Bytes>,
        w: Quorum,
        timeout: Duration,
    ) -> Result<(VersionSet, Dot), ClientError> {
        let deadline = Instant::now() + timeout;
        let home = self.home_replicas(&key)?;
        let partition = self.partition_of(&key);
        let replica = self.replica.clone();
        let k = key.clone();
        let (stored, dot) = self
            .store(move |s| {
                let mut dot = None;
                let stored = s.update(partition, &k, &mut |current| {
                    let current = current.cloned().unwrap_or_default();
                    let (next, d) = match &context {
                        Some(ctx) => {
                            current.update_exact(&ctx.vector, &ctx.dots, value.clone(), &replica)
                        }
                        // No context: a blind overwrite of what this coordinator holds (RESP SET).
                        None => current.update(&current.context().clone(), value.clone(), &replica),
                    };
                    dot = Some(d);
                    Some(next)
                });
                stored.map(|s| {
                    (
                        s.expect("an update always stores a set"),
                        dot.expect("the update ran"),
                    )
                })
            })
            .await?
            .map_err(|e| ClientError::Unavailable {
                message: format!("local write failed: {e}"),
                stored_on: Some(0),
            })?;
        let (tx, mut rx) = mpsc::channel::<(NodeId, Result<(), String>)>(home.len().max(1));
        for node in home.iter().filter(|n| *n != self.membership.me()) {
            self.spawn_replica_write(
                node.clone(),
                key.clone(),
                stored.clone(),
                deadline,
                tx.clone(),
            );
        }
        drop(tx);
        let mut acks = 1usize;
        let mut failures = Vec::new();
        while acks < w.get() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((_, Ok(())))) => acks += 1,
                Ok(Some((node, Err(e)))) => failures.push(format!("{node}: {e}")),
                Ok(None) => break,
                Err(_) => {
                    failures.push("the deadline passed".into());
                    break;
                }
            }
        }
        if acks >= w.get() {
            return Ok((stored, dot));
        }
        if home.len() < w.get() {
            failures.push(format!("the key has only {} home replicas", home.len()));
        }
        Err(ClientError::Unavailable {
            message: format!(
                "write acknowledged by {acks} of the {} replicas needed (W={}): {}",
                w.get(),
                w.get(),
                failures.join("; ")
            ),
            stored_on: Some(acks as u32),
        })
    }

    fn spawn_replica_write(
        self: &Arc<Self>,
        node: NodeId,
        key: Bytes,
        versions: VersionSet,
        deadline: Instant,
        tx: mpsc::Sender<(NodeId, Result<(), String>)>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let result = me.send_write(&node, key, versions, deadline).await;
            let _ = tx.send((node, result)).await;
        });
    }

    /// Sends a replica write and waits for its acknowledgement, until `deadline`.
    pub(crate) async fn send_write(
        &self,
        node: &NodeId,
        key: Bytes,
        versions: VersionSet,
        deadline: Instant,
    ) -> Result<(), String> {
        let addr = self
            .membership
            .address(node)
            .ok_or_else(|| format!("no known address for {node}"))?;
        let request = Request::Write {
            key,
            versions,
            hinted_for: None,
        };
        match self
            .peers
            .call(
                addr,
                request,
                deadline.saturating_duration_since(Instant::now()),
            )
            .await
        {
            Ok(Response::Ok) => Ok(()),
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(describe(e)),
        }
    }

    async fn coordinate_get(
        self: &Arc<Self>,
        key: Bytes,
        r: Quorum,
        timeout: Duration,
    ) -> Result<Option<VersionSet>, ClientError> {
        let deadline = Instant::now() + timeout;
        let home = self.home_replicas(&key)?;
        let (tx, mut rx) = mpsc::channel::<ReadReply>(home.len().max(1));
        for node in &home {
            let me = self.clone();
            let (node, key, tx) = (node.clone(), key.clone(), tx.clone());
            tokio::spawn(async move {
                let result = me.replica_read(&node, key, deadline).await;
                let _ = tx.send((node, result)).await;
            });
        }
        drop(tx);
        let mut replies: Vec<(NodeId, Option<VersionSet>)> = Vec::new();
        let mut failures = Vec::new();
        while replies.len() < r.get() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((node, Ok(v)))) => replies.push((node, v)),
                Ok(Some((node, Err(e)))) => failures.push(format!("{node}: {e}")),
                Ok(None) => break,
                Err(_) => {
                    failures.push("the deadline passed".into());
                    break;
                }
            }
            if replies.len() + (home.len() - replies.len() - failures.len()) < r.get() {
                break;
            }
        }
        if replies.len() < r.get() {
            if home.len() < r.get() {
                failures.push(format!("the key has only {} home replicas", home.len()));
            }
            return Err(ClientError::Unavailable {
                message: format!(
                    "{} of the {} replicas needed answered (R={}): {}",
                    replies.len(),
                    r.get(),
                    r.get(),
                    failures.join("; ")
                ),
                stored_on: None,
            });
        }
        let merged = merge_all(replies.iter().map(|(_, v)| v));
        let siblings = merged.as_ref().map(|m| m.values().count()).unwrap_or(0);
        metrics::histogram!("ringkv_read_siblings").record(siblings as f64);
        let me = self.clone();
        tokio::spawn(async move { me.read_repair(key, replies, rx, deadline).await });
        Ok(merged)
    }

    async fn replica_read(
        &self,
        node: &NodeId,
        key: Bytes,
        deadline: Instant,
    ) -> Result<Option<VersionSet>, String> {
        if node == self.membership.me() {
            return self.read_local(key).await.map_err(|e| e.to_string());
        }
        let addr = self
            .membership
            .address(node)
            .ok_or_else(|| format!("no known address for {node}"))?;
        match self
            .peers
            .call(
                addr,
                Request::Read { key },
                deadline.saturating_duration_since(Instant::now()),
            )
            .await
        {
            Ok(Response::Versions(v)) => Ok(v),
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(describe(e)),
        }
    }

    /// Waits for the remaining replies (until the deadline), then sends the merged set to
    /// every replica that answered with less.
    async fn read_repair(
        self: Arc<Self>,
        key: Bytes,
        mut replies: Vec<(NodeId, Option<VersionSet>)>,
        mut rx: mpsc::Receiver<ReadReply>,
        deadline: Instant,
    ) {
        while let Ok(Some((node, result))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if let Ok(v) = result {
                replies.push((node, v));
            }
        }
        let Some(merged) = merge_all(replies.iter().map(|(_, v)| v)) else {
            return;
        };
        let repair_deadline = Instant::now() + self.settings.request_timeout;
        for (node, held) in replies {
            if held.as_ref().is_some_and(|h| h.includes(&merged)) {
                continue;
            }
            metrics::counter!("ringkv_read_repairs_total").increment(1);
            debug!(%node, "read repair");
            let result = if node == *self.membership.me() {
                self.merge_local(key.clone(), merged.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                self.send_write(&node, key.clone(), merged.clone(), repair_deadline)
                    .await
            };
            if let Err(e) = result {
                debug!(%node, error = %e, "read repair failed");
            }
        }
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

fn describe(e: TransportError) -> String {
    match e {
        TransportError::TimedOut(_) => "timed out".into(),
        other => other.to_string(),
    }
}
