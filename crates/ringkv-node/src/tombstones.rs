//! Purging tombstones once they are causally stable.
//!
//! A delete is a tombstone version; keeping tombstones forever is safe but grows without
//! bound, and purging one early lets an older value come back. A tombstone is purged only
//! when nothing can bring back what it deleted, checked at two moments at least
//! `--tombstone-grace-ms` apart, by the first home replica of the key's partition (its
//! *purge leader*) during its anti-entropy passes:
//! 1. the leader's own set for the key holds only tombstones and has not changed since it was
//!    first seen so (the grace covers messages still in flight when stability began);
//! 2. no membership change is in progress, every node of the ring is up (any of them could
//!    hold a hint or an older copy), and so is every node outside the ring that gossip still
//!    carries and that has not published `Left` (a node that left but has not swept, or was
//!    removed while down, hands its old copies over when it comes back; `purge_blocker`);
//! 3. every other home replica holds exactly the same set (`SameVersions` fingerprints);
//! 4. no node holds another copy of the key: no hint, and no stored set but this tombstone
//!    (`OtherCopies` to every member and to every live gossip peer outside the ring, check 2
//!    having made sure that the others published `Left`; a node that lost the partition may
//!    still hold an old copy its sweep has not handed over, which would bring the deleted
//!    value back once the tombstone is gone). Each peer also answers whether it sees check 2
//!    hold, so a purge waits for what any node cannot see.
//!
//! Then each home replica (the others on `Purge`, the leader last) raises its *dot floor*
//! above every counter of its own replica id in the tombstone, persists the floor, and
//! removes the key only if its set still has the same fingerprint, compared again as a whole
//! set at removal (`remove_if`). A replica that
//! misses the `Purge` keeps the tombstone; anti-entropy copies it back to the others and the
//! next round purges it again.
//!
//! The dot floor is what makes forgetting safe: a coordinator counts its next dot for a key
//! from its own history of that key, so without the floor a purged key would reissue `(r,1)`
//! and a client still holding a context from before the delete would cover, and silently
//! replace, a new write. Every write this node coordinates raises its replica's vector entry
//! to the floor first (`VersionSet::raise_floor`), so its dots stay above any counter that a
//! context handed out before a purge can name. The handoff sweep forgets keys too, so it
//! raises the floor the same way (`Node::forget_local`).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::{Fingerprint, NodeId, PartitionId, VersionSet};
use ringkv_storage::{StorageEngine, StorageError};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::membership::{ClusterView, Status};
use crate::node::Node;
use crate::wire::{Request, Response, RingState};

/// Storage meta key of the dot floor (a big-endian u64).
pub const DOT_FLOOR_META_KEY: &str = "dot_floor";
/// Keys of one partition examined per anti-entropy pass; the scan resumes where it stopped.
pub const PURGE_SCAN_KEYS: usize = 1024;
/// Most tombstones purged per partition per pass (one batch per request).
pub const PURGE_BATCH_KEYS: usize = 256;
/// Most purge candidates remembered; past it new ones wait for a later scan.
pub const PURGE_CANDIDATES_MAX: usize = 100_000;

/// Tombstones seen stable, waiting out the grace period, by (partition, key).
#[derive(Debug, Default)]
pub(crate) struct Candidates {
    /// (fingerprint, when this node first saw that tombstone, when every check first passed).
    /// A fingerprint, not a 64-bit digest: peers are asked whether they hold this very set,
    /// and remove theirs on the leader's word.
    seen: BTreeMap<(u32, Bytes), (Fingerprint, Instant, Option<Instant>)>,
    /// Per partition, the last key of the last batch taken (`next_batch`): the next batch
    /// starts after it. At most one per partition this node leads (`retain_partitions`).
    batch_ends: BTreeMap<u32, Bytes>,
}

impl Candidates {
    /// Records that `key` holds a tombstone-only set with `fingerprint`. A changed set starts
    /// the wait again. Returns false if the table is full and the key was not recorded.
    pub(crate) fn observe(
        &mut self,
        partition: u32,
        key: Bytes,
        fingerprint: Fingerprint,
        now: Instant,
    ) -> bool {
        let slot = (partition, key);
        let full = self.seen.len() >= PURGE_CANDIDATES_MAX;
        match self.seen.get_mut(&slot) {
            Some(entry) if entry.0 == fingerprint => true,
            Some(entry) => {
                *entry = (fingerprint, now, None);
                true
            }
            None if full => false,
            None => {
                self.seen.insert(slot, (fingerprint, now, None));
                true
            }
        }
    }

    /// Records the outcome of the checks of every home replica and member for a ripe
    /// candidate, and says whether it may be purged now: only once every check has passed
    /// in a pass at least `grace` before this one (counted from `healthy_since` if later),
    /// with no failed check since. The grace must run from the moment every home replica
    /// held the tombstone, not from when this node first saw it: the exchange that gives
    /// the last replica the tombstone may run just before the checks, while a message sent
    /// before it (an older copy of the key) is still on its way.
    pub(crate) fn settle(
        &mut self,
        partition: u32,
        key: &Bytes,
        passed: bool,
        now: Instant,
        grace: Duration,
        healthy_since: Option<Instant>,
    ) -> bool {
        let Some(entry) = self.seen.get_mut(&(partition, key.clone())) else {
            return false;
        };
        match (passed, entry.2) {
            (false, _) => {
                entry.2 = None;
                false
            }
            (true, None) => {
                entry.2 = Some(now);
                false
            }
            (true, Some(confirmed)) => {
                let start = healthy_since.map_or(confirmed, |h| h.max(confirmed));
                now.saturating_duration_since(start) >= grace
            }
        }
    }

    pub(crate) fn forget(&mut self, partition: u32, key: &Bytes) {
        self.seen.remove(&(partition, key.clone()));
    }

    /// Up to `limit` candidates of `partition` stable for at least `grace`, counted from
    /// `healthy_since` if that is later (the grace runs only while the cluster is whole).
    pub(crate) fn ripe(
        &self,
        partition: u32,
        now: Instant,
        grace: Duration,
        healthy_since: Option<Instant>,
        limit: usize,
    ) -> Vec<(Bytes, Fingerprint)> {
        self.seen
            .range((partition, Bytes::new())..)
            .take_while(|((p, _), _)| *p == partition)
            .filter(|(_, (_, since, _))| ripened(*since, now, grace, healthy_since))
            .take(limit)
            .map(|((_, key), (fingerprint, _, _))| (key.clone(), *fingerprint))
            .collect()
    }

    /// The next batch of up to `limit` ripe candidates of `partition` (as `ripe` says), taken
    /// in key order from just after where the previous batch of the partition ended, wrapping
    /// around to its first key. Candidates that keep failing their checks stay in the table;
    /// taken from the first key every time, the first `limit` of them would be the whole batch
    /// pass after pass and the partition's other tombstones would never be purged. This way
    /// each ripe candidate is tried at least once in any `ceil(ripe / limit)` batches in a
    /// row, in an order that depends on the keys alone.
    pub(crate) fn next_batch(
        &mut self,
        partition: u32,
        now: Instant,
        grace: Duration,
        healthy_since: Option<Instant>,
        limit: usize,
    ) -> Vec<(Bytes, Fingerprint)> {
        let after = self.batch_ends.get(&partition).cloned().unwrap_or_default();
        let tail = self
            .seen
            .range((Excluded((partition, after.clone())), Unbounded))
            .take_while(|((p, _), _)| *p == partition);
        // The wrap ends at `after` included: a batch lists each candidate once.
        let head = self
            .seen
            .range((partition, Bytes::new())..=(partition, after))
            .take_while(|((p, _), _)| *p == partition);
        let batch: Vec<(Bytes, Fingerprint)> = tail
            .chain(head)
            .filter(|(_, (_, since, _))| ripened(*since, now, grace, healthy_since))
            .take(limit)
            .map(|((_, key), (fingerprint, _, _))| (key.clone(), *fingerprint))
            .collect();
        if let Some((last, _)) = batch.last() {
            self.batch_ends.insert(partition, last.clone());
        }
        batch
    }

    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }

    /// Forgets the candidates (and where batches end) of every partition `keep` rejects.
    fn retain_partitions(&mut self, keep: impl Fn(u32) -> bool) {
        self.seen.retain(|(p, _), _| keep(*p));
        self.batch_ends.retain(|p, _| keep(*p));
    }
}

/// Whether a candidate first seen at `since` has been stable for `grace`, counted from
/// `healthy_since` if that is later (the grace runs only while the cluster is whole).
fn ripened(since: Instant, now: Instant, grace: Duration, healthy_since: Option<Instant>) -> bool {
    let start = healthy_since.map_or(since, |h| h.max(since));
    now.saturating_duration_since(start) >= grace
}

/// What a key's set must still be for `Node::forget_local` to remove it.
#[derive(Debug, Clone)]
pub(crate) enum Expected {
    /// Exactly this set, held on this node (the sweep's own scan): compared whole.
    Set(VersionSet),
    /// The set with this fingerprint, named by another node (a purge leader's `Purge`).
    Fingerprint(Fingerprint),
}

impl Expected {
    pub(crate) fn matches(&self, held: &VersionSet) -> bool {
        match self {
            Expected::Set(expected) => held == expected,
            Expected::Fingerprint(f) => held.same_as_fingerprint(f),
        }
    }
}

/// Which keys `Node::forget_local` may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forget {
    /// Only a set of tombstones (a purge).
    Tombstones,
    /// Any set (data handed to its home replicas).
    Any,
}

/// Purge progress, as `/status` and `/metrics` report it.
#[derive(Debug, Default)]
pub struct TombstoneState {
    pub(crate) candidates: Mutex<Candidates>,
    /// Where the next scan of each partition starts (after this key).
    cursors: Mutex<HashMap<u32, Bytes>>,
    /// This node's dot floor: every dot it issues from now on is above it.
    pub(crate) dot_floor: Arc<AtomicU64>,
    /// Held while the floor is raised and persisted.
    floor_persist: Arc<Mutex<()>>,
    /// The last time this node, or a node it asked, saw a ring member down or a membership
    /// change in progress: grace periods start again from it.
    unhealthy_at: Mutex<Option<Instant>>,
    pub purged: AtomicU64,
    pub deferred: AtomicU64,
}

impl TombstoneState {
    pub(crate) fn load(stored: Option<Vec<u8>>) -> TombstoneState {
        let floor = stored
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        TombstoneState {
            dot_floor: Arc::new(AtomicU64::new(floor)),
            ..Default::default()
        }
    }

    pub fn dot_floor(&self) -> u64 {
        self.dot_floor.load(Ordering::SeqCst)
    }

    pub fn candidates(&self) -> usize {
        self.candidates.lock().unwrap().len()
    }

    /// Forgets the candidates and scan cursors of partitions this node no longer leads
    /// (`keep` says which it does): only a leader purges, and the table is bounded, so
    /// entries left by a ring change would otherwise fill it and stop purging for good.
    pub(crate) fn retain_partitions(&self, keep: impl Fn(u32) -> bool) {
        self.candidates.lock().unwrap().retain_partitions(&keep);
        self.cursors.lock().unwrap().retain(|p, _| keep(*p));
    }
}

/// Why a partition's ripe tombstones cannot be purged now, if they cannot: a membership
/// change in progress, a ring member that is not up, or a node outside the ring that is not
/// up and may still hold an old copy of a key (`view` gives the nodes gossip carries and the
/// status each published; `live` says which are up).
///
/// A node outside the ring answers `OtherCopies` only while it is up, so one that is down is
/// a copy nobody can rule out, unless it published `Left`: it holds no key and no hint any
/// more. `Leaving` is published by a node that left the ring but has not swept its old
/// partitions yet; `Up` by a node removed from the ring while it was down (it holds the ring
/// it had). Either hands its old copy to the home replicas when it comes back, and with the
/// tombstone purged the deleted value would come back with it.
///
/// `Joining` blocks too. A node publishes it whenever its ring does not list it as committed,
/// so the status does not say whether it holds keys: a joiner that received partitions in a
/// transition that did not end with it a member keeps copies its sweep would hand over. A
/// joiner that never received anything only delays purging: chitchat forgets a dead node
/// after its grace (`Settings::dead_node_grace`), and `Membership::refresh` drops a forgotten
/// node from the view unless it is a ring member, so it stops blocking then. (So does a
/// leaver down for longer than that grace: this check cannot cover its return.)
pub(crate) fn purge_blocker(
    ring: &RingState,
    view: &ClusterView,
    live: impl Fn(&NodeId) -> bool,
) -> Option<String> {
    if ring.topology.transition().is_some() || !ring.topology.leaving().is_empty() {
        return Some("a membership change is in progress".into());
    }
    let members = ring.topology.members();
    if let Some(down) = members.iter().map(|m| &m.id).find(|n| !live(n)) {
        return Some(format!("{down} is not reachable"));
    }
    let outside = view
        .peers
        .values()
        .filter(|p| !ring.topology.is_member(&p.id))
        .find(|p| p.status != Status::Left && !live(&p.id));
    outside.map(|p| {
        format!(
            "{} is not reachable and outside the ring, not left (it may hold an old copy)",
            p.id
        )
    })
}

impl Node {
    /// The leader's purge step for one partition: scan for tombstones, then purge those that
    /// stayed stable for the grace period while every check holds.
    pub(crate) async fn purge_tombstones(
        self: &Arc<Self>,
        ring: &RingState,
        partition: PartitionId,
    ) {
        if ring.topology.home(partition).first() != Some(self.membership.me()) {
            return;
        }
        if let Err(e) = self.scan_tombstones(partition).await {
            debug!(partition = partition.index(), error = %e, "tombstone scan failed");
            return;
        }
        let (now, grace) = (Instant::now(), self.settings.tombstone_grace);
        let waited = self.tombstones.candidates.lock().unwrap().ripe(
            partition.index(),
            now,
            grace,
            None,
            PURGE_BATCH_KEYS,
        );
        let waited = waited.len();
        if waited == 0 {
            return;
        }
        if let Some(why) = self.purge_blocked_by(ring) {
            self.mark_unhealthy();
            self.defer(waited, &why);
            return;
        }
        // Stable long enough, and the cluster whole for a grace period too. The batch starts
        // after the previous one (`Candidates::next_batch`).
        let healthy_since = *self.tombstones.unhealthy_at.lock().unwrap();
        let ripe = self.tombstones.candidates.lock().unwrap().next_batch(
            partition.index(),
            now,
            grace,
            healthy_since,
            PURGE_BATCH_KEYS,
        );
        if ripe.is_empty() {
            return;
        }
        let batch: Vec<Bytes> = ripe.iter().map(|(key, _)| key.clone()).collect();
        match self
            .purge_batch(ring, partition, ripe, (now, grace, healthy_since))
            .await
        {
            Ok(0) => {}
            Ok(purged) => info!(
                partition = partition.index(),
                purged, "purged stable tombstones"
            ),
            Err(e) => {
                // Checks that could not finish (a peer did not answer) confirm nothing: the
                // wait for every check to pass starts over.
                let mut candidates = self.tombstones.candidates.lock().unwrap();
                for key in &batch {
                    candidates.settle(partition.index(), key, false, now, grace, healthy_since);
                }
                drop(candidates);
                self.defer(1, &e);
            }
        }
    }

    fn mark_unhealthy(&self) {
        *self.tombstones.unhealthy_at.lock().unwrap() = Some(Instant::now());
    }

    /// `purge_blocker` for `ring` as this node sees the cluster now (one view for every
    /// question, so a peer's status and liveness come from the same refresh).
    fn purge_blocked_by(&self, ring: &RingState) -> Option<String> {
        let view = self.membership.view();
        let me = self.membership.me();
        purge_blocker(ring, &view, |n| n == me || view.is_live(n))
    }

    /// Whether this node sees nothing that blocks a purge (`purge_blocker`): every ring member
    /// up, no membership change in progress, and no node outside the ring down that may hold
    /// an old copy. Peers answer `OtherCopies` with it, so a purge waits for what any of them
    /// cannot see.
    fn sees_whole_cluster(&self) -> bool {
        self.membership
            .ring()
            .is_some_and(|r| self.purge_blocked_by(&r).is_none())
    }

    fn defer(&self, keys: usize, why: &str) {
        self.tombstones
            .deferred
            .fetch_add(keys as u64, Ordering::Relaxed);
        metrics::counter!("ringkv_tombstone_purges_deferred_total").increment(keys as u64);
        debug!(keys, reason = why, "tombstone purge deferred");
    }

    /// Examines the next keys of `partition`, recording tombstone-only sets as candidates and
    /// dropping candidates that were written since.
    async fn scan_tombstones(&self, partition: PartitionId) -> Result<(), String> {
        let index = partition.index();
        let after = self.tombstones.cursors.lock().unwrap().get(&index).cloned();
        // Unreadable records are skipped (a tombstone there is not purged; the record is
        // reported wherever it is read).
        let scanned = self
            .store(move |s| s.scan_readable(partition, after.as_deref(), PURGE_SCAN_KEYS))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let next = scanned.last.filter(|_| scanned.more);
        let batch = scanned.entries;
        {
            let now = Instant::now();
            let mut candidates = self.tombstones.candidates.lock().unwrap();
            for (key, versions) in batch {
                if versions.is_tombstone_only() {
                    candidates.observe(index, key, versions.fingerprint(), now);
                } else {
                    candidates.forget(index, &key);
                }
            }
            // A candidate whose record can no longer be read is not purged (and would fail
            // its checks every pass).
            for key in &scanned.unreadable {
                candidates.forget(index, key);
            }
            metrics::gauge!("ringkv_tombstone_purge_candidates").set(candidates.len() as f64);
        }
        let mut cursors = self.tombstones.cursors.lock().unwrap();
        match next {
            Some(key) => cursors.insert(index, key),
            None => cursors.remove(&index),
        };
        Ok(())
    }

    /// Checks a batch of ripe candidates against every home replica and every member, then
    /// purges the ones that pass everywhere. Returns how many this node removed.
    async fn purge_batch(
        self: &Arc<Self>,
        ring: &RingState,
        partition: PartitionId,
        ripe: Vec<(Bytes, Fingerprint)>,
        (now, grace, healthy_since): (Instant, Duration, Option<Instant>),
    ) -> Result<usize, String> {
        let index = partition.index();
        let me = self.membership.me().clone();
        // 1. Still the same tombstone here.
        let local = self.same_versions(partition, ripe.clone()).await?;
        let mut keys: Vec<(Bytes, Fingerprint)> = Vec::new();
        for ((key, fingerprint), same) in ripe.into_iter().zip(local) {
            if same {
                keys.push((key, fingerprint));
            } else {
                self.tombstones
                    .candidates
                    .lock()
                    .unwrap()
                    .forget(index, &key);
            }
        }
        let checked = keys.clone();
        // 2. The same set on every other home replica.
        let others: Vec<NodeId> = ring
            .topology
            .home(partition)
            .into_iter()
            .filter(|n| *n != me)
            .collect();
        for peer in &others {
            let request = Request::SameVersions {
                partition,
                keys: keys.clone(),
            };
            let Response::Same(same) = self.ask(peer, request).await? else {
                return Err(format!("unexpected answer from {peer} to SameVersions"));
            };
            keys = keys
                .into_iter()
                .zip(same.into_iter().chain(std::iter::repeat(false)))
                .filter_map(|(k, same)| same.then_some(k))
                .collect();
        }
        // 3. No other copy anywhere, this node included: no hint for the key, and no stored
        // set other than this tombstone (a node that lost the partition and has not handed
        // its old copy over yet would bring the deleted value back after the purge). Asked
        // of every ring member and every live gossip peer outside the ring (a node that left);
        // a peer outside the ring that is down has published `Left` (`purge_blocker`).
        let other = self.other_copies(partition, keys.clone()).await?;
        keys = keys
            .into_iter()
            .zip(other)
            .filter_map(|(k, other)| (!other).then_some(k))
            .collect();
        let mut asked: Vec<NodeId> = ring
            .topology
            .members()
            .into_iter()
            .map(|m| m.id.clone())
            .collect();
        let view = self.membership.view();
        // Checked again on the view the peers to ask are taken from: a node outside the ring
        // that went down since `purge_tombstones` checked would otherwise go unasked.
        if let Some(why) = purge_blocker(ring, &view, |n| *n == me || view.is_live(n)) {
            self.mark_unhealthy();
            return Err(why);
        }
        let outside: Vec<NodeId> = view
            .peers
            .iter()
            .filter(|(id, p)| p.live && !asked.contains(id))
            .map(|(id, _)| id.clone())
            .collect();
        asked.extend(outside);
        asked.retain(|n| *n != me);
        for peer in &asked {
            if keys.is_empty() {
                break;
            }
            let request = Request::OtherCopies {
                partition,
                keys: keys.clone(),
            };
            let Response::Copies { other, all_live } = self.ask(peer, request).await? else {
                return Err(format!("unexpected answer from {peer} to OtherCopies"));
            };
            if !all_live {
                // A partial partition (this node reaches everyone, others do not): a stale
                // message may be held up on a cut link. Wait for a whole grace period after
                // it heals.
                self.mark_unhealthy();
                return Err(format!("{peer} sees a ring member down"));
            }
            keys = keys
                .into_iter()
                .zip(other.into_iter().chain(std::iter::repeat(true)))
                .filter_map(|(k, other)| (!other).then_some(k))
                .collect();
        }
        // Purged only a grace after every check first passed (`Candidates::settle`).
        {
            let mut candidates = self.tombstones.candidates.lock().unwrap();
            keys = checked
                .into_iter()
                .filter(|(key, _)| {
                    let passed = keys.iter().any(|(k, _)| k == key);
                    candidates.settle(index, key, passed, now, grace, healthy_since)
                })
                .collect();
        }
        if keys.is_empty() {
            return Ok(0);
        }
        // 4. Purge: the other home replicas first, this node last.
        for peer in &others {
            let request = Request::Purge {
                partition,
                keys: keys.clone(),
            };
            if let Err(e) = self.ask(peer, request).await {
                debug!(%peer, error = %e, "purge request failed; the tombstone will come back");
            }
        }
        let removed = self.purge_local(partition, keys.clone()).await?;
        let mut candidates = self.tombstones.candidates.lock().unwrap();
        for (key, _) in &keys {
            candidates.forget(index, key);
        }
        Ok(removed.into_iter().filter(|r| *r).count())
    }

    /// Whether this node holds exactly these (key, fingerprint) pairs (a record it cannot read
    /// is not the same: that tombstone is not purged).
    async fn same_versions(
        &self,
        partition: PartitionId,
        keys: Vec<(Bytes, Fingerprint)>,
    ) -> Result<Vec<bool>, String> {
        self.store(
            move |s| -> Result<Vec<bool>, ringkv_storage::StorageError> {
                keys.iter()
                    .map(|(k, f)| {
                        Ok(matches!(held(s, partition, k)?,
                            Held::Set(v) if v.is_tombstone_only() && v.same_as_fingerprint(f)))
                    })
                    .collect()
            },
        )
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// For each (key, fingerprint), whether this node holds a copy of the key other than that
    /// exact set: a stored set with another fingerprint, a record it cannot read (it may be
    /// anything), or a hint (for any target).
    pub(crate) async fn other_copies(
        &self,
        partition: PartitionId,
        keys: Vec<(Bytes, Fingerprint)>,
    ) -> Result<Vec<bool>, String> {
        let asked = keys.clone();
        let stored = self
            .store(
                move |s| -> Result<Vec<bool>, ringkv_storage::StorageError> {
                    asked
                        .iter()
                        .map(|(k, f)| {
                            Ok(match held(s, partition, k)? {
                                Held::Set(v) => !v.same_as_fingerprint(f),
                                Held::Unreadable => true,
                                Held::Absent => false,
                            })
                        })
                        .collect()
                },
            )
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let keys: Vec<Bytes> = keys.into_iter().map(|(k, _)| k).collect();
        let hinted = self.hinted_keys(partition, keys).await?;
        Ok(stored
            .into_iter()
            .zip(hinted)
            .map(|(s, h)| s || h)
            .collect())
    }

    /// For each key, whether this node keeps a hint for it (for any target).
    async fn hinted_keys(
        &self,
        partition: PartitionId,
        keys: Vec<Bytes>,
    ) -> Result<Vec<bool>, String> {
        if self.hints.is_empty() {
            return Ok(vec![false; keys.len()]);
        }
        self.hint_call(
            move |hints| -> Result<Vec<bool>, ringkv_storage::StorageError> {
                let targets = hints.targets()?;
                let mut out = Vec::with_capacity(keys.len());
                for key in &keys {
                    let mut held = false;
                    for target in &targets {
                        if hints.get(target, partition, key)?.is_some() {
                            held = true;
                            break;
                        }
                    }
                    out.push(held);
                }
                Ok(out)
            },
        )
        .await
        .map_err(|e| format!("hint task failed: {e}"))?
        .map_err(|e| e.to_string())
    }

    /// Removes the keys whose sets still have the given fingerprints and hold only tombstones,
    /// after raising and persisting the dot floor above every counter of this node's replica
    /// id in them. Returns, per key, whether it is gone.
    pub(crate) async fn purge_local(
        &self,
        partition: PartitionId,
        keys: Vec<(Bytes, Fingerprint)>,
    ) -> Result<Vec<bool>, String> {
        let keys = keys
            .into_iter()
            .map(|(k, f)| (k, Expected::Fingerprint(f)))
            .collect();
        let removed = self
            .forget_local(partition, keys, Forget::Tombstones)
            .await?;
        let count = removed.iter().filter(|r| **r).count() as u64;
        self.tombstones.purged.fetch_add(count, Ordering::Relaxed);
        metrics::counter!("ringkv_tombstones_purged_total").increment(count);
        Ok(removed)
    }

    /// Removes the keys whose sets are still what `Expected` says (and, for `Tombstones`, hold
    /// only tombstones). First the dot floor is raised above every counter of this node's
    /// replica id in them and persisted: the node forgets its history of those keys, and a
    /// write it coordinates for one of them later (it gains the partition back, or a peer with
    /// an older ring forwards one to it) must not issue a dot it issued before, which the
    /// replicas' contexts already cover and would drop. Returns, per key, whether it is gone.
    pub(crate) async fn forget_local(
        &self,
        partition: PartitionId,
        keys: Vec<(Bytes, Expected)>,
        which: Forget,
    ) -> Result<Vec<bool>, String> {
        let replica = self.replica.clone();
        let floor = self.tombstones.dot_floor.clone();
        let persisting = self.tombstones.floor_persist.clone();
        self.store(
            move |s| -> Result<Vec<bool>, ringkv_storage::StorageError> {
                // The floor first: a write that runs after a removal must see it. Each key's set
                // as read here is what `remove_if` removes, compared whole: a key written
                // since stays.
                let mut highest = 0;
                let mut matched: Vec<Option<VersionSet>> = Vec::with_capacity(keys.len());
                for (key, expected) in &keys {
                    let found = s.get(partition, key)?.filter(|v| {
                        (which == Forget::Any || v.is_tombstone_only()) && expected.matches(v)
                    });
                    if let Some(v) = &found {
                        highest = highest.max(v.highest_counter(&replica));
                    }
                    matched.push(found);
                }
                // One raise at a time, so the stored floor never goes back (two callers
                // writing 10 then 7 would leave 7 on disk for the next start).
                let _persisting = persisting.lock().unwrap_or_else(PoisonError::into_inner);
                if highest > floor.load(Ordering::SeqCst) {
                    s.put_meta(DOT_FLOOR_META_KEY, &highest.to_be_bytes())?;
                    floor.store(highest, Ordering::SeqCst);
                }
                drop(_persisting);
                keys.iter()
                    .zip(&matched)
                    .map(|((key, _), found)| match found {
                        Some(v) => s.remove_if(partition, key, v),
                        None => Ok(false),
                    })
                    .collect()
            },
        )
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// Serves a purge leader's `OtherCopies` and `Purge` requests.
    pub(crate) async fn serve_purge(&self, request: Request) -> Response {
        match request {
            Request::OtherCopies { partition, keys } => {
                let keys = keys.into_iter().take(PURGE_BATCH_KEYS).collect();
                match self.other_copies(partition, keys).await {
                    Ok(other) => Response::Copies {
                        other,
                        all_live: self.sees_whole_cluster(),
                    },
                    Err(e) => Response::Error(e),
                }
            }
            Request::Purge { partition, keys } => {
                let keys = keys.into_iter().take(PURGE_BATCH_KEYS).collect();
                match self.purge_local(partition, keys).await {
                    Ok(removed) => Response::Same(removed),
                    Err(e) => Response::Error(e),
                }
            }
            _ => Response::Error("not a purge request".into()),
        }
    }
}

/// What a node holds for a key, a record that fails its checksum told apart from an error
/// of the engine: the purge and sweep checks decide per key, so one bad record does not fail
/// the whole batch (pass after pass).
pub(crate) enum Held {
    Absent,
    Set(VersionSet),
    Unreadable,
}

/// What this node holds for `key`, once that is durable. The peer asking drops or purges its
/// own copy on this answer, and a plain read may see a write still waiting for its fsync (a
/// crash would take it back), so this reads through a read-modify-write that changes nothing:
/// it waits until what it read is durable (`StorageEngine::update`).
pub(crate) fn held(
    s: &dyn StorageEngine,
    partition: PartitionId,
    key: &[u8],
) -> Result<Held, StorageError> {
    match s.update(partition, key, &mut |_| None) {
        Ok(None) => Ok(Held::Absent),
        Ok(Some(v)) => Ok(Held::Set(v)),
        Err(StorageError::Corrupt { .. }) => Ok(Held::Unreadable),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::PeerInfo;

    /// A fingerprint for each `n` (of a one-value set whose value is `n`).
    fn fp(n: u64) -> Fingerprint {
        let replica = ringkv_core::ReplicaId::new(NodeId::new("n").unwrap(), 1);
        let value = Bytes::copy_from_slice(&n.to_be_bytes());
        let (set, _) = VersionSet::new().update(&Default::default(), Some(value), &replica);
        set.fingerprint()
    }

    fn key(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn candidates_and_cursors_of_partitions_not_led_are_forgotten() {
        let state = TombstoneState::load(None);
        let now = Instant::now();
        {
            let mut c = state.candidates.lock().unwrap();
            for p in 0..4 {
                assert!(c.observe(p, key("a"), fp(1), now));
                assert!(c.observe(p, key("b"), fp(2), now));
            }
        }
        state
            .cursors
            .lock()
            .unwrap()
            .extend((0..4).map(|p| (p, key("a"))));
        for p in 0..4 {
            let mut c = state.candidates.lock().unwrap();
            assert_eq!(c.next_batch(p, now, Duration::ZERO, None, 1).len(), 1);
        }
        state.retain_partitions(|p| p % 2 == 0);
        assert_eq!(state.candidates(), 4);
        let c = state.candidates.lock().unwrap();
        let ends: Vec<u32> = c.batch_ends.keys().copied().collect();
        assert_eq!(
            ends,
            vec![0, 2],
            "where batches end, kept for led partitions only"
        );
        for p in 0..4 {
            let left = c.ripe(p, now, Duration::ZERO, None, 10).len();
            assert_eq!(left, if p % 2 == 0 { 2 } else { 0 }, "partition {p}");
        }
        let mut cursors: Vec<u32> = state.cursors.lock().unwrap().keys().copied().collect();
        cursors.sort_unstable();
        assert_eq!(cursors, vec![0, 2]);
    }

    /// A ripe candidate is purged only a whole grace after a pass in which every check passed
    /// (every home replica held the tombstone): the first such pass only starts that wait, a
    /// failed check starts it over, and an unhealthy cluster holds it back as for ripening.
    #[test]
    fn a_candidate_is_purged_only_a_grace_after_every_check_first_passed() {
        let grace = Duration::from_secs(5);
        let mut c = Candidates::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(c.observe(1, key("k"), fp(7), t0));
        // Ripe by age at 5 s, but another home replica does not hold the tombstone yet.
        assert!(!c.settle(1, &key("k"), false, at(5), grace, None));
        // At 6 s every check passes: the wait starts now, nothing is purged.
        assert!(!c.settle(1, &key("k"), true, at(6), grace, None));
        assert!(!c.settle(1, &key("k"), true, at(10), grace, None));
        assert!(c.settle(1, &key("k"), true, at(11), grace, None));
        // A failed check starts the wait over.
        assert!(!c.settle(1, &key("k"), false, at(12), grace, None));
        assert!(!c.settle(1, &key("k"), true, at(13), grace, None));
        assert!(!c.settle(1, &key("k"), true, at(17), grace, None));
        assert!(c.settle(1, &key("k"), true, at(18), grace, None));
        // The cluster was unhealthy until 20 s: a grace from then.
        assert!(!c.settle(1, &key("k"), true, at(24), grace, Some(at(20))));
        assert!(c.settle(1, &key("k"), true, at(25), grace, Some(at(20))));
        // A new tombstone (another digest) starts from scratch.
        assert!(c.observe(1, key("k"), fp(8), at(26)));
        assert!(!c.settle(1, &key("k"), true, at(40), grace, None));
        // A key that is no candidate is never purged.
        assert!(!c.settle(1, &key("other"), true, at(40), grace, None));
    }

    #[test]
    fn a_candidate_ripens_only_after_the_grace_without_change() {
        let grace = Duration::from_secs(5);
        let mut c = Candidates::default();
        let t0 = Instant::now();
        assert!(c.observe(3, key("a"), fp(7), t0));
        assert!(c.observe(3, key("b"), fp(9), t0));
        assert!(c.observe(4, key("a"), fp(7), t0));
        assert!(
            c.ripe(3, t0 + Duration::from_secs(4), grace, None, 10)
                .is_empty()
        );
        // Seen again unchanged: the wait keeps its start.
        assert!(c.observe(3, key("a"), fp(7), t0 + Duration::from_secs(3)));
        // Changed: the wait starts over.
        assert!(c.observe(3, key("b"), fp(10), t0 + Duration::from_secs(3)));
        let ripe = c.ripe(3, t0 + Duration::from_secs(5), grace, None, 10);
        assert_eq!(ripe, vec![(key("a"), fp(7))]);
        let ripe = c.ripe(3, t0 + Duration::from_secs(8), grace, None, 10);
        assert_eq!(ripe, vec![(key("a"), fp(7)), (key("b"), fp(10))]);
        assert_eq!(
            c.ripe(3, t0 + Duration::from_secs(8), grace, None, 1).len(),
            1
        );
        c.forget(3, &key("a"));
        assert_eq!(
            c.ripe(3, t0 + Duration::from_secs(8), grace, None, 10),
            vec![(key("b"), fp(10))]
        );
        assert_eq!(
            c.ripe(4, t0 + Duration::from_secs(8), grace, None, 10),
            vec![(key("a"), fp(7))]
        );
    }

    fn member(id: &str) -> ringkv_core::ring::Member {
        ringkv_core::ring::Member {
            id: NodeId::new(id).unwrap(),
            weight: 1,
            zone: "z".into(),
        }
    }

    fn ring_of(ids: &[&str]) -> ringkv_core::topology::Topology {
        let members: Vec<_> = ids.iter().map(|i| member(i)).collect();
        let params = ringkv_core::ring::RingParams {
            partitions: 16,
            n: 3,
        };
        ringkv_core::topology::Topology::settled(
            ringkv_core::ring::Ring::claim(None, &members, params).unwrap(),
        )
    }

    /// The view of a node that gossip tells these (node, status) pairs.
    fn view_of(peers: &[(&str, Status)]) -> ClusterView {
        let peer = |(id, status): &(&str, Status)| PeerInfo {
            id: NodeId::new(*id).unwrap(),
            listen: "127.0.0.1:7000".parse().unwrap(),
            http: "127.0.0.1:8000".parse().unwrap(),
            resp: None,
            zone: "z".into(),
            weight: 1,
            status: *status,
            live: true,
            ring_version: 1,
            ring_digest: 0,
            generation: 1,
        };
        ClusterView {
            peers: peers
                .iter()
                .map(|p| (NodeId::new(p.0).unwrap(), peer(p)))
                .collect(),
        }
    }

    /// Liveness with every node up but `down`.
    fn up_but<'a>(down: &'a [&str]) -> impl Fn(&NodeId) -> bool + 'a {
        move |n| !down.contains(&n.as_str())
    }

    const MEMBERS: [(&str, Status); 4] = [
        ("a", Status::Up),
        ("b", Status::Up),
        ("c", Status::Up),
        ("d", Status::Up),
    ];

    #[test]
    fn purging_waits_for_every_member_and_a_settled_ring() {
        let topology = ring_of(&["a", "b", "c", "d"]);
        let view = view_of(&MEMBERS);
        let settled = RingState::new(7, 1, topology.clone());
        assert_eq!(purge_blocker(&settled, &view, |_| true), None);
        let down = purge_blocker(&settled, &view, up_but(&["b"]));
        assert_eq!(down.as_deref(), Some("b is not reachable"));
        // A member gossip forgot (down for long) is still a member.
        let forgot_b = view_of(&[MEMBERS[0], MEMBERS[2], MEMBERS[3]]);
        let down = purge_blocker(&settled, &forgot_b, up_but(&["b"]));
        assert_eq!(down.as_deref(), Some("b is not reachable"));
        let mut leaving = topology.clone();
        leaving.request_leave(&NodeId::new("c").unwrap()).unwrap();
        assert!(purge_blocker(&RingState::new(7, 2, leaving), &view, |_| true).is_some());
        let joining = topology.begin_transition(&[member("e")]).unwrap().unwrap();
        assert!(purge_blocker(&RingState::new(7, 2, joining), &view, |_| true).is_some());
    }

    /// A node outside the ring that is down blocks purging unless it published `Left`: `x`
    /// left the ring but has not swept its old partitions (`Leaving`), and would hand its
    /// copy of a purged key, from before the delete, to the home replicas when it comes back.
    /// `w` was removed from the ring while down (it still publishes the `Up` of its old ring)
    /// and would do the same; `y` is a joiner, whose status does not say whether it holds
    /// keys. A drained node (`Left`) holds nothing, and a node gossip forgot blocks nothing.
    #[test]
    fn purging_waits_for_a_node_outside_the_ring_that_is_down_and_has_not_left() {
        let settled = RingState::new(7, 1, ring_of(&["a", "b", "c", "d"]));
        let mut peers = MEMBERS.to_vec();
        peers.extend([
            ("w", Status::Up),
            ("x", Status::Leaving),
            ("y", Status::Joining),
            ("z", Status::Left),
        ]);
        let view = view_of(&peers);
        assert_eq!(purge_blocker(&settled, &view, |_| true), None);
        for blocker in ["x", "w", "y"] {
            let why = purge_blocker(&settled, &view, up_but(&[blocker]));
            assert!(
                why.as_deref()
                    .is_some_and(|w| w.starts_with(&format!("{blocker} "))),
                "{blocker} down: {why:?}"
            );
        }
        assert_eq!(purge_blocker(&settled, &view, up_but(&["z"])), None);
        let forgotten = view_of(&[MEMBERS[0], MEMBERS[1], MEMBERS[2], MEMBERS[3], peers[7]]);
        let gone = ["w", "x", "y", "z"];
        assert_eq!(purge_blocker(&settled, &forgotten, up_but(&gone)), None);
        // A member of the ring publishing `Left` (an older incarnation's state) still counts
        // as a member.
        let mut stale = peers.clone();
        stale[1] = ("b", Status::Left);
        let why = purge_blocker(&settled, &view_of(&stale), up_but(&["b"]));
        assert_eq!(why.as_deref(), Some("b is not reachable"));
    }

    #[test]
    fn the_grace_starts_again_after_the_cluster_was_not_whole() {
        let grace = Duration::from_secs(5);
        let mut c = Candidates::default();
        let t0 = Instant::now();
        c.observe(1, key("k"), fp(7), t0);
        let unhealthy = Some(t0 + Duration::from_secs(3));
        assert!(
            c.ripe(1, t0 + Duration::from_secs(6), grace, unhealthy, 10)
                .is_empty()
        );
        assert_eq!(
            c.ripe(1, t0 + Duration::from_secs(8), grace, unhealthy, 10),
            vec![(key("k"), fp(7))]
        );
        // Unhealthy before the tombstone was seen changes nothing.
        let earlier = Some(t0);
        assert_eq!(
            c.ripe(1, t0 + Duration::from_secs(5), grace, earlier, 10)
                .len(),
            1
        );
    }

    /// Candidates that fail their checks for good (a replica holding another set for ever)
    /// stay in the table; they must not be the whole batch pass after pass. Each batch starts
    /// after the previous one, wrapping around, so every ripe candidate of the partition is
    /// tried, each at most once per batch, and candidates of other partitions never.
    #[test]
    fn every_ripe_candidate_is_tried_though_the_first_ones_fail_for_good() {
        let mut c = Candidates::default();
        let t0 = Instant::now();
        let total = PURGE_BATCH_KEYS + PURGE_BATCH_KEYS / 2;
        let k = |i: usize| Bytes::from(format!("k{i:05}"));
        for i in 0..total {
            assert!(c.observe(1, k(i), fp(7), t0));
        }
        assert!(c.observe(0, key("zz"), fp(1), t0));
        assert!(c.observe(2, key("a"), fp(1), t0));
        let mut tried = std::collections::BTreeSet::new();
        let mut batches = Vec::new();
        for _ in 0..3 {
            let batch = c.next_batch(1, t0, Duration::ZERO, None, PURGE_BATCH_KEYS);
            let keys: std::collections::BTreeSet<Bytes> =
                batch.iter().map(|(k, _)| k.clone()).collect();
            assert_eq!(keys.len(), PURGE_BATCH_KEYS, "a full batch, each key once");
            for key in &keys {
                // Every check fails: nothing is purged, the candidate stays.
                assert!(!c.settle(1, key, false, t0, Duration::ZERO, None));
            }
            tried.extend(keys);
            batches.push(batch);
        }
        assert_eq!(
            tried.len(),
            total,
            "every candidate of the partition is tried"
        );
        assert!(tried.iter().all(|t| t.starts_with(b"k")));
        // The second batch is the rest of the partition, then its first keys again; the third
        // starts where the second ended.
        assert_eq!(batches[1][0].0, k(PURGE_BATCH_KEYS));
        assert_eq!(batches[1][PURGE_BATCH_KEYS / 2].0, k(0));
        assert_eq!(batches[2][0].0, k(PURGE_BATCH_KEYS / 2));
        // The next batch starts after where the last ended even once that key is gone (purged)
        // and a later one was recorded; a partition smaller than a batch gives all of it every
        // time.
        let end = batches[2].last().unwrap().0.clone();
        assert_eq!(end, k(total - 1));
        c.forget(1, &end);
        assert!(c.observe(1, k(total), fp(7), t0));
        let next = c.next_batch(1, t0, Duration::ZERO, None, PURGE_BATCH_KEYS);
        assert_eq!((&next[0].0, &next[1].0), (&k(total), &k(0)));
        let small = c.next_batch(2, t0, Duration::ZERO, None, PURGE_BATCH_KEYS);
        assert_eq!(small, vec![(key("a"), fp(1))]);
        assert_eq!(c.next_batch(2, t0, Duration::ZERO, None, 10), small);
        // Candidates not ripe yet are passed over and do not end a batch.
        assert!(c.observe(2, key("b"), fp(1), t0 + Duration::from_secs(10)));
        let grace = Duration::from_secs(5);
        let at = t0 + Duration::from_secs(6);
        assert_eq!(c.next_batch(2, at, grace, None, 10), small);
    }

    #[test]
    fn the_candidate_table_is_bounded() {
        let mut c = Candidates::default();
        let now = Instant::now();
        let one = fp(1);
        for i in 0..PURGE_CANDIDATES_MAX {
            assert!(c.observe(0, Bytes::from(i.to_be_bytes().to_vec()), one, now));
        }
        assert!(!c.observe(1, key("one too many"), fp(1), now));
        assert_eq!(c.len(), PURGE_CANDIDATES_MAX);
        // A known key can still be refreshed.
        assert!(c.observe(0, Bytes::from(0usize.to_be_bytes().to_vec()), fp(2), now));
    }
}
