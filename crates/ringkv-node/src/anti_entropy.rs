//! Merkle anti-entropy (Dynamo §4.7): replicas of a partition compare their Merkle trees and
//! exchange exactly the keys that differ, in both directions.
//!
//! Every `--anti-entropy-interval-ms` the node makes a pass over the partitions it is a home
//! replica of. For each it picks one other home replica (rotating from pass to pass) and:
//! 1. asks for the peer's root and inner level (`MerkleSummary`); equal roots end the exchange;
//! 2. asks for the leaf hashes under the differing inner nodes only (`MerkleLeaves`);
//! 3. asks for the (key, version digest) pairs of the differing leaves (`LeafDigests`) and
//!    compares them with its own: the keys whose digests differ, or that one side lacks;
//! 4. for each such key reads the peer's versions, syncs them into its own, and sends the
//!    merged set back if the peer lacked any of it.
//!
//! Repairs are throttled by a budget of keys per second (`AE_KEYS_PER_SECOND`), so a large
//! divergence (a wiped node coming back) refills steadily without starving client traffic.
//! Progress is counted in `/metrics` and summarised in `/status`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::merkle::{LeafIndex, MERKLE_FANOUT, differing_children};
use ringkv_core::{NodeId, PartitionId, VersionSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::node::Node;
use crate::transport::TransportError;
use crate::wire::{Request, Response};

/// Most keys repaired per second by anti-entropy.
pub const AE_KEYS_PER_SECOND: u64 = 2000;
/// Most differing leaves examined in one partition exchange; the rest wait for the next pass.
pub const AE_LEAVES_PER_EXCHANGE: usize = 64;

/// Anti-entropy progress, as `/status` reports it.
#[derive(Debug, Default)]
pub struct AntiEntropyStats {
    pub passes: AtomicU64,
    pub partitions_compared: AtomicU64,
    pub keys_repaired: AtomicU64,
    pub last_full_pass_unix_ms: AtomicU64,
}

/// (key, version digest) pairs of some Merkle leaves.
type Digests = Vec<(Bytes, u64)>;

/// How the repair of one key ended.
enum Repair {
    Done,
    /// Either side refused or could not read it; the exchange goes on with the next key.
    Skipped(String),
}

/// A key-per-second budget: `spend` waits when the current second's budget is used up.
pub(crate) struct Budget {
    window_start: Instant,
    spent: u64,
}

impl Budget {
    pub(crate) fn new() -> Budget {
        Budget {
            window_start: Instant::now(),
            spent: 0,
        }
    }

    async fn spend(&mut self) {
        if self.window_start.elapsed() >= Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.spent = 0;
        }
        if self.spent >= AE_KEYS_PER_SECOND {
            // Rate limiting, not synchronisation: wait out the rest of this second.
            tokio::time::sleep_until(self.window_start + Duration::from_secs(1)).await;
            self.window_start = Instant::now();
            self.spent = 0;
        }
        self.spent += 1;
    }
}

impl Node {
    /// One pass over every partition this node is a home replica of.
    pub(crate) async fn anti_entropy_pass(self: &Arc<Self>) {
        let Some(ring) = self.membership.ring() else {
            return;
        };
        if self.settings.disable_repair {
            return;
        }
        let me = self.membership.me().clone();
        let pass = self.anti_entropy.passes.fetch_add(1, Ordering::Relaxed);
        let mut budget = Budget::new();
        let q = ring.topology.params().partitions;
        let mut led = HashSet::new();
        for index in 0..q {
            if self.shutdown.is_cancelled() {
                return;
            }
            let partition = PartitionId::new(index, q).expect("in range");
            let home = ring.topology.home(partition);
            if home.first() == Some(&me) {
                led.insert(index);
            }
            let peers: Vec<NodeId> = home.into_iter().filter(|n| *n != me).collect();
            if !ring.topology.is_home(partition, &me) || peers.is_empty() {
                continue;
            }
            let peer = &peers[(pass as usize + index as usize) % peers.len()];
            if self.membership.is_live(peer)
                && let Err(e) = self.exchange(partition, peer, &mut budget).await
            {
                debug!(partition = index, %peer, error = %e, "anti-entropy exchange failed");
            }
            self.purge_tombstones(&ring, partition).await;
        }
        self.tombstones.retain_partitions(|p| led.contains(&p));
        let now = self.seams.clock.unix_millis();
        self.anti_entropy
            .last_full_pass_unix_ms
            .store(now, Ordering::Relaxed);
        metrics::counter!("ringkv_anti_entropy_passes_total").increment(1);
    }

    pub(crate) async fn ask(&self, peer: &NodeId, request: Request) -> Result<Response, String> {
        match self.ask_peer(peer, request).await? {
            Response::Error(e) => Err(e),
            r => Ok(r),
        }
    }

    /// `ask`, keeping the peer's `Error` answer as an answer: `Err` means it was not reached.
    /// A request over the frame limit, never sent, counts as refused (`Error`): it concerns
    /// that request alone.
    pub(crate) async fn ask_peer(
        &self,
        peer: &NodeId,
        request: Request,
    ) -> Result<Response, String> {
        let addr = self
            .membership
            .address(peer)
            .ok_or_else(|| format!("no address for {peer}"))?;
        match self
            .peers
            .call(addr, request, self.settings.request_timeout)
            .await
        {
            Ok(answer) => Ok(answer),
            Err(e @ TransportError::TooLarge(..)) => Ok(Response::Error(e.to_string())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Compares one partition with one peer and repairs the differing keys both ways (at most
    /// `AE_LEAVES_PER_EXCHANGE` differing leaves of them). `Ok(true)` when the two trees were
    /// already equal.
    pub(crate) async fn exchange(
        self: &Arc<Self>,
        partition: PartitionId,
        peer: &NodeId,
        budget: &mut Budget,
    ) -> Result<bool, String> {
        let mine = self
            .store(move |s| s.merkle(partition))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.anti_entropy
            .partitions_compared
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ringkv_anti_entropy_partitions_compared_total").increment(1);
        let Response::Merkle { root, inner } =
            self.ask(peer, Request::MerkleSummary { partition }).await?
        else {
            return Err("unexpected answer to MerkleSummary".into());
        };
        if root == mine.root() {
            return Ok(true);
        }
        if inner.len() != MERKLE_FANOUT {
            return Err(format!("a summary of {} inner hashes", inner.len()));
        }
        let groups: Vec<u16> = differing_children(mine.inner(), &inner)
            .into_iter()
            .map(|g| g as u16)
            .collect();
        let Response::Leaves(theirs) = self
            .ask(
                peer,
                Request::MerkleLeaves {
                    partition,
                    groups: groups.clone(),
                },
            )
            .await?
        else {
            return Err("unexpected answer to MerkleLeaves".into());
        };
        if theirs.len() != groups.len() || theirs.iter().any(|g| g.len() != MERKLE_FANOUT) {
            return Err("leaf groups of the wrong shape".into());
        }
        let mut leaves = Vec::new();
        for (group, their_leaves) in groups.iter().zip(&theirs) {
            let my_leaves = mine.leaf_group(*group as usize).ok_or("bad group")?;
            for child in differing_children(my_leaves, their_leaves) {
                let leaf = LeafIndex::in_group(*group as usize, child).ok_or("bad leaf")?;
                leaves.push(leaf.get() as u16);
            }
        }
        leaves.truncate(AE_LEAVES_PER_EXCHANGE);
        let keys = self.differing_keys(partition, peer, leaves).await?;
        let mut skipped = 0usize;
        for key in keys {
            budget.spend().await;
            if let Repair::Skipped(why) = self.repair_key(peer, key.clone()).await? {
                // One key either side cannot read or store (a record that fails its checksum)
                // must not hold back the rest of the partition, pass after pass.
                debug!(partition = partition.index(), %peer, ?key, why, "anti-entropy skipped a key");
                skipped += 1;
            }
        }
        if skipped > 0 {
            metrics::counter!("ringkv_anti_entropy_keys_skipped_total").increment(skipped as u64);
        }
        Ok(false)
    }

    /// The keys of `leaves` whose version digests differ between this node and `peer`.
    async fn differing_keys(
        &self,
        partition: PartitionId,
        peer: &NodeId,
        leaves: Vec<u16>,
    ) -> Result<Vec<Bytes>, String> {
        let Response::Digests(theirs) = self
            .ask(
                peer,
                Request::LeafDigests {
                    partition,
                    leaves: leaves.clone(),
                },
            )
            .await?
        else {
            return Err("unexpected answer to LeafDigests".into());
        };
        let mine = self.leaf_digests(partition, leaves).await?;
        // Ordered maps: the keys to repair come out in key order, whatever the process (a
        // HashMap's order changed from run to run and broke the simulation's replay).
        let theirs: BTreeMap<Bytes, u64> = theirs.into_iter().collect();
        let mine: BTreeMap<Bytes, u64> = mine.into_iter().collect();
        let mut keys: Vec<Bytes> = mine
            .iter()
            .filter(|(k, d)| theirs.get(*k) != Some(d))
            .map(|(k, _)| k.clone())
            .collect();
        keys.extend(theirs.keys().filter(|k| !mine.contains_key(*k)).cloned());
        Ok(keys)
    }

    /// This node's (key, digest) pairs of some leaves of a partition. A record that fails its
    /// checksum is left out (logged and counted): the exchange goes on for every other key,
    /// and the record is kept, neither served nor overwritten (see `repair_key`).
    pub(crate) async fn leaf_digests(
        &self,
        partition: PartitionId,
        leaves: Vec<u16>,
    ) -> Result<Vec<(Bytes, u64)>, String> {
        let (digests, unreadable) = self
            .store(
                move |s| -> Result<(Digests, Vec<Bytes>), ringkv_storage::StorageError> {
                    let (mut digests, mut unreadable) = (Vec::new(), Vec::new());
                    for leaf in leaves
                        .into_iter()
                        .filter_map(|l| LeafIndex::new(l as usize))
                    {
                        let scanned = s.scan_leaf(partition, leaf)?;
                        digests.extend(scanned.entries.into_iter().map(|(k, v)| (k, v.digest())));
                        unreadable.extend(scanned.unreadable);
                    }
                    Ok((digests, unreadable))
                },
            )
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if !unreadable.is_empty() {
            warn!(
                partition = partition.index(),
                keys = ?unreadable,
                "anti-entropy left out records that fail their checksum"
            );
            metrics::counter!("ringkv_unreadable_records_skipped_total")
                .increment(unreadable.len() as u64);
        }
        Ok(digests)
    }

    /// Syncs one key both ways with `peer`. `Err` only when the peer cannot be reached (the
    /// exchange ends); a key that either side refuses, or cannot read (its record fails its
    /// checksum), is `Skipped`. Such a local record is not overwritten with the peer's copy:
    /// the dots this node issued in it are unknown, and a write it coordinates later could
    /// reissue one that other replicas already hold.
    async fn repair_key(&self, peer: &NodeId, key: Bytes) -> Result<Repair, String> {
        let theirs = match self
            .ask_peer(peer, Request::Read { key: key.clone() })
            .await?
        {
            Response::Versions(v) => v,
            Response::Error(e) => return Ok(Repair::Skipped(format!("peer read: {e}"))),
            other => return Err(format!("unexpected answer to Read: {other:?}")),
        };
        let merged = match &theirs {
            Some(v) => self.merge_local(key.clone(), v.clone()).await,
            None => self
                .read_local(key.clone())
                .await
                .map(Option::unwrap_or_default),
        };
        let merged = match merged {
            Ok(merged) => merged,
            Err(e) => return Ok(Repair::Skipped(format!("local: {e}"))),
        };
        if merged == VersionSet::default() {
            return Ok(Repair::Done);
        }
        if !theirs.as_ref().is_some_and(|t| t.includes(&merged)) {
            let request = Request::Write {
                key,
                versions: merged,
                hinted_for: None,
            };
            match self.ask_peer(peer, request).await? {
                Response::Ok => {}
                Response::Error(e) => return Ok(Repair::Skipped(format!("peer write: {e}"))),
                other => return Err(format!("unexpected answer {other:?}")),
            }
        }
        self.anti_entropy
            .keys_repaired
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ringkv_anti_entropy_keys_repaired_total").increment(1);
        Ok(Repair::Done)
    }

    /// Serves a peer's anti-entropy requests.
    pub(crate) async fn serve_anti_entropy(&self, request: Request) -> Response {
        match request {
            Request::MerkleSummary { partition } => {
                match self.store(move |s| s.merkle(partition)).await {
                    Ok(Ok(tree)) => Response::Merkle {
                        root: tree.root(),
                        inner: tree.inner().to_vec(),
                    },
                    Ok(Err(e)) => Response::Error(e.to_string()),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
            Request::MerkleLeaves { partition, groups } => {
                // A tree has MERKLE_FANOUT groups: a longer list only repeats them.
                let groups: Vec<u16> = groups.into_iter().take(MERKLE_FANOUT).collect();
                match self.store(move |s| s.merkle(partition)).await {
                    Ok(Ok(tree)) => Response::Leaves(
                        groups
                            .iter()
                            .map(|g| {
                                tree.leaf_group(*g as usize)
                                    .map(<[u64]>::to_vec)
                                    .unwrap_or_else(|| vec![0; MERKLE_FANOUT])
                            })
                            .collect(),
                    ),
                    Ok(Err(e)) => Response::Error(e.to_string()),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
            Request::LeafDigests { partition, leaves } => {
                let leaves: Vec<u16> = leaves.into_iter().take(AE_LEAVES_PER_EXCHANGE).collect();
                match self.leaf_digests(partition, leaves).await {
                    Ok(d) => Response::Digests(d),
                    Err(e) => Response::Error(e),
                }
            }
            _ => Response::Error("not an anti-entropy request".into()),
        }
    }
}

/// Logs a finished pass that repaired something.
pub(crate) fn log_pass(repaired_before: u64, node: &Node) {
    let repaired = node.anti_entropy.keys_repaired.load(Ordering::Relaxed) - repaired_before;
    if repaired > 0 {
        info!(repaired, "anti-entropy pass repaired keys");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ringkv_core::{ReplicaId, VersionVector, key_hash};
    use ringkv_storage::StorageEngine;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::common::{Distorting, Running, eventually, node_ids, settled, start, start_serving};
    use crate::settings::ServerArgs;

    /// What the peer does to its anti-entropy answers.
    type Bend = fn(Response) -> Response;

    /// n1 and n2, both home replicas of every partition (N=2), whose trees differ in
    /// `partition`: n1 alone holds a key of it. n2 answers the anti-entropy steps it is asked
    /// through `bend`, which the test sets, and notes them in `asked`.
    struct Pair {
        n1: Running,
        n2: Running,
        partition: PartitionId,
        bend: Arc<Mutex<Bend>>,
        asked: Arc<Mutex<Vec<&'static str>>>,
    }

    fn step(request: &Request) -> Option<&'static str> {
        match request {
            Request::MerkleSummary { .. } => Some("summary"),
            Request::MerkleLeaves { .. } => Some("leaves"),
            Request::LeafDigests { .. } => Some("digests"),
            _ => None,
        }
    }

    async fn pair(shutdown: &CancellationToken) -> Pair {
        // No passes of their own: the test runs each exchange.
        let no_passes = |args: &mut ServerArgs| args.anti_entropy_interval_ms = Some(3_600_000);
        let bend: Arc<Mutex<Bend>> = Arc::new(Mutex::new(|answer| answer));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (b, a) = (bend.clone(), asked.clone());
        let distort = move |request: &Request, answer: Response| match step(request) {
            Some(step) => {
                a.lock().unwrap().push(step);
                (*b.lock().unwrap())(answer)
            }
            None => answer,
        };
        let n1 = start("n1", None, shutdown, no_passes).await;
        let n2 = start_serving("n2", Some(&n1.listen), shutdown, no_passes, |node| {
            Arc::new(Distorting { node, distort })
        })
        .await;
        let ids = node_ids(&["n1", "n2"]);
        eventually(
            Duration::from_secs(30),
            "the nodes never formed a ring",
            || settled(&[&n1, &n2], &ids),
        )
        .await;
        let key = Bytes::from_static(b"only-on-n1");
        let ring = n1.node.membership().ring().unwrap();
        let partition = ring.topology.partition_of(key_hash(&key));
        let writer = ReplicaId::new(ids[0].clone(), 1);
        let (versions, _) =
            VersionSet::default().update(&VersionVector::new(), Some(key.clone()), &writer);
        n1.engine
            .update(partition, &key, &mut |_| Some(versions.clone()))
            .unwrap();
        Pair {
            n1,
            n2,
            partition,
            bend,
            asked,
        }
    }

    impl Pair {
        /// One exchange of n1 with n2, n2 answering through `bend`; and the steps n2 was asked.
        async fn exchange(&self, bend: Bend) -> (Result<bool, String>, Vec<&'static str>) {
            *self.bend.lock().unwrap() = bend;
            self.asked.lock().unwrap().clear();
            let peer = self.n2.node.membership().me().clone();
            let result = self
                .n1
                .node
                .exchange(self.partition, &peer, &mut Budget::new())
                .await;
            (result, std::mem::take(&mut *self.asked.lock().unwrap()))
        }

        /// Each of `bends` ends its exchange with an error that says `why`, with nothing asked
        /// after `steps`. n1 goes on: answered honestly, the next exchange repairs the
        /// partition, and the one after finds the trees equal.
        async fn each_ends_the_exchange(&self, bends: &[(&str, Bend)], why: &str, steps: &[&str]) {
            for (what, bend) in bends {
                let (result, asked) = self.exchange(*bend).await;
                assert!(
                    matches!(&result, Err(e) if e.contains(why)),
                    "{what}: {result:?}"
                );
                assert_eq!(asked, steps, "{what}: the steps asked");
            }
            assert_eq!(self.exchange(|answer| answer).await.0, Ok(false));
            assert_eq!(self.exchange(|answer| answer).await.0, Ok(true));
        }
    }

    /// A summary of more or fewer inner hashes than `MERKLE_FANOUT` ends the exchange with an
    /// error at that answer. (Unchecked, a short one was compared hash by hash with what was
    /// not there, and the exchange went on to ask for leaves.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_summary_of_the_wrong_shape_ends_the_exchange() {
        let shutdown = CancellationToken::new();
        let pair = pair(&shutdown).await;
        let bends: [(&str, Bend); 2] = [
            ("a hash short", |answer| match answer {
                Response::Merkle { root, mut inner } => {
                    inner.pop();
                    Response::Merkle { root, inner }
                }
                other => other,
            }),
            ("a hash over", |answer| match answer {
                Response::Merkle { root, mut inner } => {
                    inner.push(0);
                    Response::Merkle { root, inner }
                }
                other => other,
            }),
        ];
        pair.each_ends_the_exchange(&bends, "inner hashes", &["summary"])
            .await;
        shutdown.cancel();
    }

    /// Leaf groups of the wrong shape (a group fewer or more than asked, a group of fewer or
    /// more than `MERKLE_FANOUT` hashes) end the exchange with an error at that answer.
    /// (Unchecked, the groups were paired with those asked as far as both went and compared
    /// with what was not there, and the exchange went on to ask for digests.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leaf_groups_of_the_wrong_shape_end_the_exchange() {
        let shutdown = CancellationToken::new();
        let pair = pair(&shutdown).await;
        let bends: [(&str, Bend); 4] = [
            ("a group fewer", |answer| match answer {
                Response::Leaves(mut groups) => {
                    groups.pop();
                    Response::Leaves(groups)
                }
                other => other,
            }),
            ("a group more", |answer| match answer {
                Response::Leaves(mut groups) => {
                    groups.push(vec![0; MERKLE_FANOUT]);
                    Response::Leaves(groups)
                }
                other => other,
            }),
            ("a hash short", |answer| match answer {
                Response::Leaves(mut groups) => {
                    groups[0].pop();
                    Response::Leaves(groups)
                }
                other => other,
            }),
            ("a hash over", |answer| match answer {
                Response::Leaves(mut groups) => {
                    groups[0].push(0);
                    Response::Leaves(groups)
                }
                other => other,
            }),
        ];
        pair.each_ends_the_exchange(&bends, "wrong shape", &["summary", "leaves"])
            .await;
        shutdown.cancel();
    }
}
