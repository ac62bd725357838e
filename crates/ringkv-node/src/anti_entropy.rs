//! Merkle anti-entropy (Dynamo §4.7): replicas of a partition compare their Merkle trees and
//! exchange exactly the keys that differ, in both directions.
//!
//! Every `--anti-entropy-interval-ms` the node makes a pass over the partitions it is a home
//! replica of. For each it picks one other home replica (rotating from pass to pass) and:
//! 1. asks for the peer's root and inner level (`MerkleSummary`); equal roots end the exchange;
//! 2. asks for the leaf hashes under the differing inner nodes only (`MerkleLeaves`);
//! 3. asks for the (key, version digest) pairs of the differing leaves (`LeafDigests`) and
//!    compares them with its own over what the answer covers: the keys whose digests differ, or
//!    that one side lacks. An exchange asks about at most `AE_LEAVES_PER_EXCHANGE` leaves, and
//!    the answer holds about `AE_DIGEST_BYTES_MAX` bytes of pairs: whole leaves in the order
//!    asked, then the first keys of the next leaf if it does not fit, and it says how far it
//!    goes. The next exchange of the partition with this peer starts where the answer stopped
//!    (`LeafCursors`), going round the tree, so every differing leaf is exchanged within a
//!    round, even when the first leaves differ for good (a key one side cannot read or store,
//!    skipped every time) or hold more keys than one answer;
//! 4. for each such key reads the peer's versions, syncs them into its own, and sends the
//!    merged set back if the peer lacked any of it.
//!
//! Repairs are throttled by a budget of keys per second (`AE_KEYS_PER_SECOND`), so a large
//! divergence (a wiped node coming back) refills steadily without starving client traffic.
//! Progress is counted in `/metrics` and summarised in `/status`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::constants::MAX_KEY_BYTES;
use ringkv_core::merkle::{LeafIndex, MERKLE_FANOUT, MERKLE_LEAVES, differing_children};
use ringkv_core::{NodeId, PartitionId, VersionSet};
use ringkv_storage::{Scanned, StorageEngine, StorageError};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::node::Node;
use crate::transport::TransportError;
use crate::wire::{Request, Response};

/// Most keys repaired per second by anti-entropy.
pub const AE_KEYS_PER_SECOND: u64 = 2000;
/// Most differing leaves examined in one partition exchange; the rest wait for the next pass.
pub const AE_LEAVES_PER_EXCHANGE: usize = 64;
/// Most bytes of (key, digest) pairs in one `Digests` answer, a pair counting as its key and
/// `DIGEST_PAIR_BYTES`: far below the frame limit (64 MiB) whatever the keys (up to 4 KiB
/// each) and however many a leaf holds. The rest waits for the next exchange.
pub const AE_DIGEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// What a (key, digest) pair costs in a `Digests` answer besides the key's bytes: the digest
/// and the key's length as postcard encodes them (at most 10 and 3 bytes), rounded up.
const DIGEST_PAIR_BYTES: usize = 16;

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

/// Where an exchange starts among a partition's differing leaves: at `leaf`, or the first
/// differing leaf after it going round the tree; within `leaf`, after the key `after` (where
/// the previous answer stopped in it). The default starts at the first leaf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LeafCursor {
    leaf: u16,
    after: Option<Bytes>,
}

/// Where the next exchange of each (partition, peer) starts: where the previous exchange's
/// answer stopped, when it left differing leaves or keys out (the first leaf otherwise). Holds
/// at most one entry per home partition and other home replica of it (pruned every pass).
#[derive(Default)]
pub(crate) struct LeafCursors(Mutex<BTreeMap<(u32, NodeId), LeafCursor>>);

impl LeafCursors {
    fn map(&self) -> MutexGuard<'_, BTreeMap<(u32, NodeId), LeafCursor>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, partition: PartitionId, peer: &NodeId) -> LeafCursor {
        let at = (partition.index(), peer.clone());
        self.map().get(&at).cloned().unwrap_or_default()
    }

    fn set(&self, partition: PartitionId, peer: &NodeId, next: LeafCursor) {
        let at = (partition.index(), peer.clone());
        if next == LeafCursor::default() {
            self.map().remove(&at);
        } else {
            self.map().insert(at, next);
        }
    }

    fn keep_only(&self, kept: &BTreeSet<(u32, NodeId)>) {
        self.map().retain(|at, _| kept.contains(at));
    }
}

/// The leaves one exchange asks about, out of the differing leaves (ascending): at most
/// `AE_LEAVES_PER_EXCHANGE` of them, the first at or after `start`, going round past the last
/// leaf to the first.
fn leaves_from(differing: &[u16], start: u16) -> Vec<u16> {
    debug_assert!(differing.is_sorted());
    let split = differing.partition_point(|l| *l < start);
    differing[split..]
        .iter()
        .chain(&differing[..split])
        .take(AE_LEAVES_PER_EXCHANGE)
        .copied()
        .collect()
}

/// What one `Digests` answer covers of the leaves asked (see `Response::Digests`): of the
/// first leaf only the keys after `after`; every key of the first `whole` leaves; and of the
/// leaf after them, the keys up to `partial` inclusive, if it names one. Keys are compared as
/// bytes, the order a leaf scan returns them in.
#[derive(Debug, Clone, PartialEq)]
struct Covered {
    leaves: Vec<u16>,
    after: Option<Bytes>,
    whole: usize,
    partial: Option<Bytes>,
}

impl Covered {
    /// What a peer says its answer to a request for `leaves` (after `after`) covers, if that
    /// is possible: no more leaves than asked; a partial leaf only if one is left, named by a
    /// key of that leaf within the key limit (the node keeps it for the next exchange), past
    /// `after` in the first leaf; and something, if anything was asked (an answer that covers
    /// nothing would leave the next exchange where this one started).
    fn new(
        leaves: Vec<u16>,
        after: Option<Bytes>,
        whole: u16,
        partial: Option<Bytes>,
    ) -> Result<Covered, String> {
        let whole = whole as usize;
        let wrong = |why: &str| Err(format!("digests of the wrong shape: {why}"));
        if whole > leaves.len() {
            return wrong("more leaves covered than asked");
        }
        if let Some(key) = &partial {
            match leaves.get(whole) {
                None => return wrong("a partial leaf after every leaf asked"),
                Some(_) if key.len() > MAX_KEY_BYTES => {
                    return wrong("a partial leaf named by a key over the key limit");
                }
                Some(leaf) if LeafIndex::of_key(key).get() != *leaf as usize => {
                    return wrong("a partial leaf named by a key of another leaf");
                }
                Some(_) if whole == 0 && after.as_ref().is_some_and(|a| key <= a) => {
                    return wrong("a partial leaf that ends before it starts");
                }
                Some(_) => {}
            }
        } else if whole == 0 && !leaves.is_empty() {
            return wrong("nothing covered");
        }
        Ok(Covered {
            leaves,
            after,
            whole,
            partial,
        })
    }

    /// The leaves it covers keys of, in the order asked.
    fn leaves(&self) -> &[u16] {
        &self.leaves[..self.whole + usize::from(self.partial.is_some())]
    }

    /// Whether the answer covers `key`: a key it covers and does not hold is not on the peer.
    fn contains(&self, key: &[u8]) -> bool {
        let leaf = LeafIndex::of_key(key).get();
        let Some(at) = self.leaves().iter().position(|l| *l as usize == leaf) else {
            return false;
        };
        let started = at > 0 || self.after.as_deref().is_none_or(|a| key > a);
        let ended = at < self.whole || self.partial.as_deref().is_some_and(|p| key <= p);
        started && ended
    }

    /// Where the next exchange starts, this one having asked out of `differing` (ascending):
    /// after the last key covered, or from the first leaf again when it covered every
    /// differing leaf to its end.
    fn next(&self, differing: &[u16]) -> LeafCursor {
        match (&self.partial, self.leaves[..self.whole].last()) {
            (Some(key), _) => LeafCursor {
                leaf: self.leaves[self.whole],
                after: Some(key.clone()),
            },
            (None, Some(last)) if self.whole < differing.len() => LeafCursor {
                leaf: ((*last as usize + 1) % MERKLE_LEAVES) as u16,
                after: None,
            },
            (None, _) => LeafCursor::default(),
        }
    }
}

/// A node's (key, digest) pairs of some leaves, and how far they go.
#[derive(Debug, Default)]
struct DigestsCut {
    pairs: Digests,
    /// Leaves covered to their end.
    whole: usize,
    /// The last key covered of the leaf after them, if the pairs stop inside it.
    partial: Option<Bytes>,
}

/// The (key, digest) pairs of `leaves` of a partition, in that order and by key within a leaf,
/// the first leaf's only after `after`: whole leaves while they fit in `max_bytes`, then the
/// keys of the next leaf that fit; at least one pair if any is left. A record that fails its
/// checksum is left out and listed apart. A leaf index out of the tree counts as empty.
fn digests_of_leaves(
    s: &dyn StorageEngine,
    partition: PartitionId,
    leaves: &[u16],
    after: Option<&Bytes>,
    max_bytes: usize,
) -> Result<(DigestsCut, Vec<Bytes>), StorageError> {
    let (mut cut, mut unreadable, mut bytes) = (DigestsCut::default(), Vec::new(), 0usize);
    for (at, leaf) in leaves.iter().enumerate() {
        let scanned = match LeafIndex::new(*leaf as usize) {
            Some(leaf) => s.scan_leaf(partition, leaf)?,
            None => Scanned::default(),
        };
        let start = if at == 0 { after } else { None };
        unreadable.extend(scanned.unreadable);
        let mut in_leaf = false;
        for (key, versions) in scanned.entries {
            if start.is_some_and(|a| key <= *a) {
                continue;
            }
            let cost = key.len() + DIGEST_PAIR_BYTES;
            if bytes.saturating_add(cost) > max_bytes && !cut.pairs.is_empty() {
                if in_leaf {
                    cut.partial = cut.pairs.last().map(|(k, _)| k.clone());
                }
                return Ok((cut, unreadable));
            }
            bytes += cost;
            cut.pairs.push((key, versions.digest()));
            in_leaf = true;
        }
        cut.whole = at + 1;
    }
    Ok((cut, unreadable))
}

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
        let mut paired = BTreeSet::new();
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
            paired.extend(peers.iter().map(|p| (index, p.clone())));
            let peer = &peers[(pass as usize + index as usize) % peers.len()];
            if self.membership.is_live(peer)
                && let Err(e) = self.exchange(partition, peer, &mut budget).await
            {
                debug!(partition = index, %peer, error = %e, "anti-entropy exchange failed");
            }
            self.purge_tombstones(&ring, partition).await;
        }
        self.tombstones.retain_partitions(|p| led.contains(&p));
        self.leaf_cursors.keep_only(&paired);
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
    /// `AE_LEAVES_PER_EXCHANGE` differing leaves of them, from where the previous exchange with
    /// this peer stopped). `Ok(true)` when the two trees were already equal.
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
        // Leaves that differ for good (a key skipped below every time) must not take every
        // exchange's places, nor a leaf too large for one answer: each exchange goes on from
        // where the previous one stopped. It moves on before the repairs, which may fail for
        // good at some key.
        let cursor = self.leaf_cursors.get(partition, peer);
        let asked = leaves_from(&leaves, cursor.leaf);
        let after = cursor.after.filter(|_| asked.first() == Some(&cursor.leaf));
        let (keys, covered) = self.differing_keys(partition, peer, asked, after).await?;
        self.leaf_cursors
            .set(partition, peer, covered.next(&leaves));
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

    /// The keys of `leaves` (the first only after `after`) whose version digests differ between
    /// this node and `peer`, as far as the peer's answer covers them; and how far that is.
    async fn differing_keys(
        &self,
        partition: PartitionId,
        peer: &NodeId,
        leaves: Vec<u16>,
        after: Option<Bytes>,
    ) -> Result<(Vec<Bytes>, Covered), String> {
        let request = Request::LeafDigests {
            partition,
            leaves: leaves.clone(),
            after: after.clone(),
        };
        let Response::Digests {
            pairs: theirs,
            whole,
            partial,
        } = self.ask(peer, request).await?
        else {
            return Err("unexpected answer to LeafDigests".into());
        };
        let covered = Covered::new(leaves, after, whole, partial)?;
        // A key the answer does not cover is not missing on the peer: only what it covers is
        // compared, on both sides.
        if theirs.iter().any(|(key, _)| !covered.contains(key)) {
            return Err("digests of the wrong shape: a key outside what the answer covers".into());
        }
        let mine = self
            .leaf_digests(
                partition,
                covered.leaves().to_vec(),
                covered.after.clone(),
                usize::MAX,
            )
            .await?
            .pairs;
        // Ordered maps: the keys to repair come out in key order, whatever the process (a
        // HashMap's order changed from run to run and broke the simulation's replay).
        let theirs: BTreeMap<Bytes, u64> = theirs.into_iter().collect();
        let mine: BTreeMap<Bytes, u64> = mine
            .into_iter()
            .filter(|(key, _)| covered.contains(key))
            .collect();
        let mut keys: Vec<Bytes> = mine
            .iter()
            .filter(|(k, d)| theirs.get(*k) != Some(d))
            .map(|(k, _)| k.clone())
            .collect();
        keys.extend(theirs.keys().filter(|k| !mine.contains_key(*k)).cloned());
        Ok((keys, covered))
    }

    /// This node's (key, digest) pairs of some leaves of a partition, about `max_bytes` of
    /// them (`digests_of_leaves`). A record that fails its checksum is left out (logged and
    /// counted): the exchange goes on for every other key, and the record is kept, neither
    /// served nor overwritten (see `repair_key`).
    async fn leaf_digests(
        &self,
        partition: PartitionId,
        leaves: Vec<u16>,
        after: Option<Bytes>,
        max_bytes: usize,
    ) -> Result<DigestsCut, String> {
        let (digests, unreadable) = self
            .store(move |s| digests_of_leaves(s, partition, &leaves, after.as_ref(), max_bytes))
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

    /// Syncs one key both ways with `peer`. `Err` only when the peer cannot be reached or is
    /// no home replica of the key (the exchange ends); a key that either side refuses, or cannot read (its record fails its
    /// checksum), is `Skipped`. Such a local record is not overwritten with the peer's copy:
    /// the dots this node issued in it are unknown, and a write it coordinates later could
    /// reissue one that other replicas already hold.
    ///
    /// The peer is asked as a home replica: one that is none in its own ring and holds
    /// nothing for the key answers `NotHome`, which ends the exchange (it holds nothing of
    /// the partition to exchange, and a write would only give it keys its sweep drops again);
    /// a newer ring it names is fetched.
    async fn repair_key(self: &Arc<Self>, peer: &NodeId, key: Bytes) -> Result<Repair, String> {
        let read = Request::Read {
            key: key.clone(),
            as_home: true,
        };
        let theirs = match self.ask_peer(peer, read).await? {
            Response::Versions(v) => v,
            Response::NotHome { ring_version } => {
                self.ring_behind(peer, ring_version);
                return Err(format!(
                    "{peer} is no home replica of the partition in its ring (version \
                     {ring_version})"
                ));
            }
            Response::Error(e) => return Ok(Repair::Skipped(format!("peer read: {e}"))),
            other => return Err(format!("unexpected answer to Read: {}", other.summary())),
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
                other => return Err(format!("unexpected answer {}", other.summary())),
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
            Request::LeafDigests {
                partition,
                leaves,
                after,
            } => {
                let leaves: Vec<u16> = leaves.into_iter().take(AE_LEAVES_PER_EXCHANGE).collect();
                if let Some(leaf) = leaves.iter().find(|l| **l as usize >= MERKLE_LEAVES) {
                    return Response::Error(format!(
                        "leaf {leaf} is not one of a tree's {MERKLE_LEAVES}"
                    ));
                }
                match self
                    .leaf_digests(partition, leaves, after, AE_DIGEST_BYTES_MAX)
                    .await
                {
                    Ok(cut) => Response::Digests {
                        pairs: cut.pairs,
                        whole: cut.whole as u16,
                        partial: cut.partial,
                    },
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

    use ringkv_core::merkle::MERKLE_LEAVES;
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
    /// through `bend`, which the test sets, and notes them in `asked`, and the size of each
    /// `Digests` answer it sends (encoded) in `digests_bytes`.
    struct Pair {
        n1: Running,
        n2: Running,
        partition: PartitionId,
        bend: Arc<Mutex<Bend>>,
        asked: Arc<Mutex<Vec<&'static str>>>,
        digests_bytes: Arc<Mutex<Vec<usize>>>,
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
        pair_of(shutdown, 64).await
    }

    /// `pair` in a ring of `partitions` partitions.
    async fn pair_of(shutdown: &CancellationToken, partitions: u32) -> Pair {
        // No passes of their own: the test runs each exchange.
        let no_passes = |args: &mut ServerArgs| {
            args.anti_entropy_interval_ms = Some(3_600_000);
            args.partitions = Some(partitions);
        };
        let bend: Arc<Mutex<Bend>> = Arc::new(Mutex::new(|answer| answer));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let digests_bytes = Arc::new(Mutex::new(Vec::new()));
        let (b, a, d) = (bend.clone(), asked.clone(), digests_bytes.clone());
        let distort = move |request: &Request, answer: Response| match step(request) {
            Some(step) => {
                a.lock().unwrap().push(step);
                let answer = (*b.lock().unwrap())(answer);
                if step == "digests" {
                    let bytes = postcard::to_allocvec(&answer).unwrap().len();
                    d.lock().unwrap().push(bytes);
                }
                answer
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
            digests_bytes,
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

    /// Whatever leaves differ (for good: none is repaired) and wherever the cursor stands,
    /// going on from where each exchange's answer stopped (answers that cover every leaf
    /// asked) asks about every differing leaf within `ceil(differing / AE_LEAVES_PER_EXCHANGE)`
    /// exchanges; and an exchange that covers them all starts the next from the first leaf.
    #[test]
    fn exchanges_go_round_every_differing_leaf() {
        let sets: [Vec<u16>; 5] = [
            (0..MERKLE_LEAVES as u16).collect(),
            (0..MERKLE_LEAVES as u16).step_by(3).collect(),
            (100..100 + AE_LEAVES_PER_EXCHANGE as u16 + 1).collect(),
            (0..MERKLE_LEAVES as u16).rev().step_by(2).rev().collect(),
            vec![7, 200, 255],
        ];
        for differing in &sets {
            for first in 0..MERKLE_LEAVES as u16 {
                let (mut start, mut seen) = (first, BTreeSet::new());
                for _ in 0..differing.len().div_ceil(AE_LEAVES_PER_EXCHANGE) {
                    let asked = leaves_from(differing, start);
                    assert!(asked.len() <= AE_LEAVES_PER_EXCHANGE);
                    seen.extend(asked.iter().copied());
                    let whole = asked.len() as u16;
                    let next = Covered::new(asked, None, whole, None)
                        .unwrap()
                        .next(differing);
                    assert_eq!(next.after, None);
                    start = next.leaf;
                }
                assert_eq!(
                    seen.len(),
                    differing.len(),
                    "from leaf {first}: {differing:?}"
                );
                if differing.len() <= AE_LEAVES_PER_EXCHANGE {
                    assert_eq!(start, 0);
                }
            }
        }
    }

    /// Pairs of many leaves cut at a small budget: each answer holds at most the budget's worth
    /// of pairs (or a single one); what the requester takes the answer to cover, from its own
    /// copy of the same records, is exactly the pairs the answer holds; and going on from where
    /// each answer stopped covers every key of the differing leaves once in a round, through
    /// empty leaves and a leaf that takes several answers.
    #[test]
    fn answers_cut_at_the_budget_go_on_where_the_last_one_stopped() {
        const BUDGET: usize = 300;
        let engine = crate::common::memory_engine();
        let p = PartitionId::new(0, 1).unwrap();
        // Leaves 0, 4, 8, ... hold nothing, leaf 3 more than one answer's worth.
        let mut keys: Vec<Bytes> = (0..3000)
            .map(|i| Bytes::from(format!("key-{i}")))
            .filter(|k| !LeafIndex::of_key(k).get().is_multiple_of(4))
            .collect();
        keys.extend(
            (0..1_000_000)
                .map(|i| Bytes::from(format!("many-{i}")))
                .filter(|k| LeafIndex::of_key(k).get() == 3)
                .take(100),
        );
        for key in &keys {
            write_directly(&engine, p, key, "v", "w1");
        }
        let differing: Vec<u16> = (0..MERKLE_LEAVES as u16).filter(|l| l % 3 == 0).collect();
        let expected: BTreeSet<Bytes> = keys
            .into_iter()
            .filter(|k| differing.contains(&(LeafIndex::of_key(k).get() as u16)))
            .collect();
        let (mut cursor, mut seen) = (LeafCursor::default(), BTreeSet::new());
        for _ in 0..expected.len() {
            let asked = leaves_from(&differing, cursor.leaf);
            let after = cursor.after.filter(|_| asked.first() == Some(&cursor.leaf));
            let (cut, _) = digests_of_leaves(&engine, p, &asked, after.as_ref(), BUDGET).unwrap();
            let bytes: usize = cut
                .pairs
                .iter()
                .map(|(k, _)| k.len() + DIGEST_PAIR_BYTES)
                .sum();
            assert!(bytes <= BUDGET || cut.pairs.len() == 1, "{bytes} bytes");
            let covered =
                Covered::new(asked, after.clone(), cut.whole as u16, cut.partial).unwrap();
            let (mine, _) =
                digests_of_leaves(&engine, p, covered.leaves(), after.as_ref(), usize::MAX)
                    .unwrap();
            let mine: Vec<_> = mine
                .pairs
                .into_iter()
                .filter(|(k, _)| covered.contains(k))
                .collect();
            assert_eq!(mine, cut.pairs, "the requester's side of {covered:?}");
            for (key, _) in cut.pairs {
                assert!(seen.insert(key.clone()), "{key:?} covered twice in a round");
            }
            cursor = covered.next(&differing);
            if seen.len() == expected.len() {
                break;
            }
        }
        assert_eq!(seen, expected);
    }

    /// Some key of a leaf other than `key`'s.
    fn a_key_outside_the_leaf_of(key: &[u8]) -> Bytes {
        (0..)
            .map(|i| Bytes::from(format!("elsewhere-{i}")))
            .find(|k| LeafIndex::of_key(k) != LeafIndex::of_key(key))
            .unwrap()
    }

    /// A key over the key limit in the leaf of `key`.
    fn a_key_over_the_limit_in_the_leaf_of(key: &[u8]) -> Bytes {
        let padding = "x".repeat(MAX_KEY_BYTES);
        (0..)
            .map(|i| Bytes::from(format!("{i}{padding}")))
            .find(|k| LeafIndex::of_key(k) == LeafIndex::of_key(key))
            .unwrap()
    }

    /// A `Digests` answer that cannot be what was asked ends the exchange with an error at
    /// that answer: more leaves covered than asked, a partial leaf past the leaves asked,
    /// named by a key of another leaf or by a key over the key limit (kept for the next
    /// exchange), nothing covered, a key outside what the answer says it covers. n1 asks about
    /// one leaf, the one of the key it alone holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn digests_of_the_wrong_shape_end_the_exchange() {
        let shutdown = CancellationToken::new();
        let pair = pair(&shutdown).await;
        let bends: [(&str, Bend); 6] = [
            ("more leaves than asked", |answer| match answer {
                Response::Digests { pairs, partial, .. } => Response::Digests {
                    pairs,
                    whole: u16::MAX,
                    partial,
                },
                other => other,
            }),
            ("a partial leaf past those asked", |answer| match answer {
                Response::Digests { pairs, whole, .. } => Response::Digests {
                    pairs,
                    whole,
                    partial: Some(Bytes::from_static(b"only-on-n1")),
                },
                other => other,
            }),
            (
                "a partial leaf of another leaf's key",
                |answer| match answer {
                    Response::Digests { pairs, .. } => Response::Digests {
                        pairs,
                        whole: 0,
                        partial: Some(a_key_outside_the_leaf_of(b"only-on-n1")),
                    },
                    other => other,
                },
            ),
            (
                "a partial leaf named by a key over the limit",
                |answer| match answer {
                    Response::Digests { pairs, .. } => Response::Digests {
                        pairs,
                        whole: 0,
                        partial: Some(a_key_over_the_limit_in_the_leaf_of(b"only-on-n1")),
                    },
                    other => other,
                },
            ),
            ("nothing covered", |answer| match answer {
                Response::Digests { .. } => Response::Digests {
                    pairs: Vec::new(),
                    whole: 0,
                    partial: None,
                },
                other => other,
            }),
            ("a key outside", |answer| match answer {
                Response::Digests {
                    mut pairs,
                    whole,
                    partial,
                } => {
                    pairs.push((a_key_outside_the_leaf_of(b"only-on-n1"), 1));
                    Response::Digests {
                        pairs,
                        whole,
                        partial,
                    }
                }
                other => other,
            }),
        ];
        let steps = ["summary", "leaves", "digests"];
        pair.each_ends_the_exchange(&bends, "digests of the wrong shape", &steps)
            .await;
        shutdown.cancel();
    }

    /// One key of `partition` per Merkle leaf, by leaf index, for every leaf: `prefix-i` for
    /// the first `i` that lands in it.
    fn a_key_per_leaf(pair: &Pair, prefix: &str) -> BTreeMap<usize, Bytes> {
        let ring = pair.n1.node.membership().ring().unwrap();
        let mut keys = BTreeMap::new();
        for i in 0..10_000_000 {
            let key = Bytes::from(format!("{prefix}-{i}"));
            if ring.topology.partition_of(key_hash(&key)) == pair.partition {
                keys.entry(LeafIndex::of_key(&key).get()).or_insert(key);
                if keys.len() == MERKLE_LEAVES {
                    return keys;
                }
            }
        }
        panic!("some leaf of the partition got no key");
    }

    /// Stores `value` for `key` in `engine` over whatever it held, as written by `writer`.
    fn write_directly(
        engine: &impl StorageEngine,
        partition: PartitionId,
        key: &[u8],
        value: &str,
        writer: &str,
    ) {
        let writer = ReplicaId::new(NodeId::new(writer).unwrap(), 1);
        let value = Bytes::from(value.to_string());
        let (versions, _) =
            VersionSet::default().update(&VersionVector::new(), Some(value), &writer);
        engine
            .update(partition, key, &mut |_| Some(versions.clone()))
            .unwrap();
    }

    fn values_of(versions: Option<VersionSet>) -> Vec<Bytes> {
        versions
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default()
    }

    /// `AE_LEAVES_PER_EXCHANGE` leaves that differ for good (n1 cannot read its copy of one key
    /// in each, so the repair of each is skipped, exchange after exchange) come before the last
    /// leaf of the partition, where n1 alone holds a key: that key still reaches n2 within as
    /// many exchanges as it takes to go once over the differing leaves. (Each exchange took the
    /// first differing leaves in tree order, the same ones every time, and the last leaf was
    /// never exchanged.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leaves_that_stay_different_do_not_starve_the_later_ones() {
        let shutdown = CancellationToken::new();
        let pair = pair(&shutdown).await;
        let p = pair.partition;
        let by_leaf = a_key_per_leaf(&pair, "k");
        // The pair's own key differs too, wherever its leaf is.
        let first = LeafIndex::of_key(b"only-on-n1").get();
        let (&late_leaf, late) = by_leaf.iter().rev().find(|(l, _)| **l != first).unwrap();
        let stuck: Vec<Bytes> = by_leaf
            .iter()
            .filter(|(l, _)| **l != first && **l != late_leaf)
            .take(AE_LEAVES_PER_EXCHANGE)
            .map(|(_, k)| k.clone())
            .collect();
        for key in &stuck {
            write_directly(&*pair.n1.engine, p, key, "n1's", "w1");
            write_directly(&*pair.n2.engine, p, key, "n2's", "w2");
        }
        let unreadable: Vec<&[u8]> = stuck.iter().map(|k| k.as_ref()).collect();
        pair.n1.engine.make_unreadable(&unreadable);
        write_directly(&*pair.n1.engine, p, late, "late", "w1");

        let differing = stuck.len() + 2;
        for _ in 0..differing.div_ceil(AE_LEAVES_PER_EXCHANGE) {
            assert_eq!(pair.exchange(|answer| answer).await.0, Ok(false));
        }
        assert_eq!(
            values_of(pair.n2.engine.get(p, late).unwrap()),
            [Bytes::from_static(b"late")],
            "the key in the last differing leaf never reached n2"
        );
        // The records that stay different are kept as they were on both sides.
        for key in &stuck {
            assert_eq!(
                values_of(pair.n1.engine.peek(p, key)),
                [Bytes::from_static(b"n1's")]
            );
            assert_eq!(
                values_of(pair.n2.engine.get(p, key).unwrap()),
                [Bytes::from_static(b"n2's")]
            );
        }
        shutdown.cancel();
    }

    /// The differing leaves hold more (key, digest) pairs than one `Digests` answer may carry:
    /// 64 leaves, each with a small key n1 alone holds, and 1500 keys of 4000 bytes (6 MB of
    /// pairs) that both nodes hold alike. Every answer n2 sends stays within
    /// `AE_DIGEST_BYTES_MAX` (and a last key and a few bytes of framing), so it takes more
    /// than one; the exchanges go on where each answer stopped until the trees are equal; and
    /// the keys repaired are exactly the differing ones (a big key an answer does not cover is
    /// not taken for one n2 lacks). (n2 answered every pair of the leaves asked, whatever
    /// their size: 6 MB here, and over the frame limit with more or larger keys, when the
    /// answer became an error and the partition was never repaired.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_digests_answer_stays_within_its_byte_budget_and_the_next_goes_on_from_it() {
        let shutdown = CancellationToken::new();
        // Few partitions, so that large keys of one partition are quick to find.
        let pair = pair_of(&shutdown, 4).await;
        let p = pair.partition;
        let ring = pair.n1.node.membership().ring().unwrap();
        let first = LeafIndex::of_key(b"only-on-n1").get();
        let mut small: BTreeMap<usize, Bytes> = a_key_per_leaf(&pair, "small")
            .into_iter()
            .filter(|(leaf, _)| *leaf != first)
            .take(AE_LEAVES_PER_EXCHANGE - 1)
            .collect();
        for key in small.values() {
            write_directly(&*pair.n1.engine, p, key, "small", "w1");
        }
        small.insert(first, Bytes::from_static(b"only-on-n1"));
        let padding = "x".repeat(4000 - 8);
        let big: Vec<Bytes> = (0..1_000_000)
            .map(|i| Bytes::from(format!("{i:08}{padding}")))
            .filter(|k| small.contains_key(&LeafIndex::of_key(k).get()))
            .filter(|k| ring.topology.partition_of(key_hash(k)) == p)
            .take(1500)
            .collect();
        assert_eq!(big.len(), 1500);
        for key in &big {
            write_directly(&*pair.n1.engine, p, key, "big", "w1");
            write_directly(&*pair.n2.engine, p, key, "big", "w1");
        }
        let repaired_before = pair
            .n1
            .node
            .anti_entropy
            .keys_repaired
            .load(Ordering::Relaxed);

        let mut exchanges = 0;
        while pair.exchange(|answer| answer).await.0 == Ok(false) {
            exchanges += 1;
            assert!(exchanges <= 8, "the trees never became equal");
        }
        assert_eq!(pair.exchange(|answer| answer).await.0, Ok(true));
        let sent = std::mem::take(&mut *pair.digests_bytes.lock().unwrap());
        let most = AE_DIGEST_BYTES_MAX + MAX_KEY_BYTES + 64;
        assert!(sent.iter().all(|b| *b <= most), "answers of {sent:?} bytes");
        assert!(
            sent.len() > 1,
            "one answer of {sent:?} bytes: the test cut nothing"
        );
        for key in small.values() {
            assert!(
                pair.n2.engine.get(p, key).unwrap().is_some(),
                "{key:?} never reached n2"
            );
        }
        let repaired = pair
            .n1
            .node
            .anti_entropy
            .keys_repaired
            .load(Ordering::Relaxed);
        assert_eq!(
            repaired - repaired_before,
            small.len() as u64,
            "keys repaired"
        );
        shutdown.cancel();
    }
}
