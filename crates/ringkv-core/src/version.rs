//! Dotted version vectors: the per-key set of concurrent versions and its causal context.
//!
//! A key's state is a `VersionSet`: a version vector (`context`) summarising every write the
//! set has seen, and the siblings, each tagged with the *dot* (replica id, counter) of the one
//! write that created it. This is the compact "DVV set" of Preguiça et al. and Riak's dvvset:
//! one dot per write, so concurrency is tracked exactly and siblings are bounded by real
//! concurrency, never multiplied by stale contexts (riak_kv#746).
//!
//! Invariants of every `VersionSet` (checked by `is_well_formed`, kept by every operation):
//! - every sibling's dot is covered by the set's causal context (vector or dot cloud);
//! - siblings are sorted by dot and no two share a dot;
//! - the dot cloud is canonical: sorted, none covered by the vector or directly after it.
//!
//! Laws (property tests in `tests/version_laws.rs`):
//! - `sync` is commutative, associative and idempotent;
//! - an update whose context covers every sibling replaces them all;
//! - two updates with the same context through the same coordinator both survive;
//! - an update without context never removes another value;
//! - the context has at most one entry per distinct replica id; nothing is pruned by time.
//!
//! Correctness needs one thing from the caller: a replica id never issues the same counter
//! twice. The coordinator always counts from the highest counter it has seen for its own id,
//! and a node that lost its state gets a new epoch, hence a new `ReplicaId`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

use crate::constants::MAX_COUNTER;
use crate::ids::ReplicaId;

/// A collision-resistant fingerprint of a `VersionSet` (`VersionSet::fingerprint`): equal
/// fingerprints mean equal sets, even when a client chose the values to make them collide.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The first 8 bytes in hex name it well enough in logs and test failures.
        write!(f, "Fingerprint(")?;
        self.0[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, "..)")
    }
}

/// One write: the `counter`-th write coordinated by `replica`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub replica: ReplicaId,
    pub counter: u64,
}

/// A causal history: for each replica id, the number of its writes seen (a downward-closed
/// set of dots).
///
/// Canonical form: no entry is zero (a zero entry means the same history as no entry, and two
/// encodings of one history would make digests and `sync` disagree). Every constructor keeps
/// it, and deserializing rejects a zero entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawVersionVector")]
pub struct VersionVector {
    entries: BTreeMap<ReplicaId, u64>,
}

impl VersionVector {
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// Builds a vector from (replica, counter) pairs; a repeated replica keeps its maximum
    /// and zero counters are dropped.
    pub fn from_entries(entries: impl IntoIterator<Item = (ReplicaId, u64)>) -> VersionVector {
        let mut vv = VersionVector::new();
        for (replica, counter) in entries {
            vv.raise(&replica, counter);
        }
        vv
    }

    pub fn get(&self, replica: &ReplicaId) -> u64 {
        self.entries.get(replica).copied().unwrap_or(0)
    }

    /// Whether this history includes the write `dot`. Counters start at 1, so a dot with
    /// counter 0 names no write and nothing covers it.
    pub fn covers(&self, dot: &Dot) -> bool {
        dot.counter != 0 && dot.counter <= self.get(&dot.replica)
    }

    /// Whether this history includes every write of `other`.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|(r, c)| self.get(r) >= *c)
    }

    /// Union of the two histories (pointwise maximum).
    pub fn merge(&mut self, other: &VersionVector) {
        for (replica, counter) in &other.entries {
            self.raise(replica, *counter);
        }
    }

    pub(crate) fn raise(&mut self, replica: &ReplicaId, counter: u64) {
        if counter == 0 {
            return;
        }
        let slot = self.entries.entry(replica.clone()).or_insert(0);
        *slot = (*slot).max(counter);
    }

    pub fn entries(&self) -> impl Iterator<Item = (&ReplicaId, u64)> {
        self.entries.iter().map(|(r, c)| (r, *c))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One concurrent version of a key. `value == None` is a tombstone (a causal delete).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sibling {
    pub dot: Dot,
    pub value: Option<Bytes>,
}

impl Sibling {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// The versions of one key: the causal context and the siblings it has not superseded.
///
/// The causal context is a set of dots kept in canonical form: a version vector (the
/// contiguous prefix of each replica's dots) plus a *dot cloud*, the dots seen beyond it.
/// The cloud holds the exact dots of client contexts (a write answered to a client names its
/// own dot, not the writes before it) until the gap below them fills in; then they fold into
/// the vector. Every dot in a gap is a real write of this key (a replica issues its dots for a
/// key one after another), so gaps fill as replicas converge and the cloud stays small.
///
/// Deserializing goes through `from_parts_with_cloud`, so a set read from a peer or the disk
/// that breaks the invariants is an error, never a value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawVersionSet")]
pub struct VersionSet {
    context: VersionVector,
    cloud: Vec<Dot>,
    siblings: Vec<Sibling>,
}

impl VersionSet {
    /// The state of a key nobody has written.
    pub fn new() -> VersionSet {
        VersionSet::default()
    }

    /// Builds a set with an empty dot cloud from parts received from elsewhere, checking the
    /// invariants. Siblings are sorted; a dot that appears twice is an error.
    pub fn from_parts(
        context: VersionVector,
        siblings: Vec<Sibling>,
    ) -> Result<VersionSet, VersionSetError> {
        VersionSet::from_parts_with_cloud(context, Vec::new(), siblings)
    }

    /// Builds a set from a vector, a dot cloud and siblings, checking the invariants. The
    /// cloud must be canonical: sorted, no zero counter, no dot the vector covers or that
    /// directly follows the vector's entry for its replica.
    pub fn from_parts_with_cloud(
        context: VersionVector,
        cloud: Vec<Dot>,
        mut siblings: Vec<Sibling>,
    ) -> Result<VersionSet, VersionSetError> {
        siblings.sort_by(|a, b| a.dot.cmp(&b.dot));
        if siblings.windows(2).any(|w| w[0].dot == w[1].dot) {
            return Err(VersionSetError::DuplicateDot);
        }
        // Sibling dots are covered by the context, so bounded by it and the cloud.
        if let Some(d) = cloud.iter().find(|d| d.counter > MAX_COUNTER) {
            return Err(VersionSetError::CounterOverLimit(d.counter));
        }
        let canonical = canonical_cloud(&mut context.clone(), cloud.clone());
        if canonical != cloud || cloud.windows(2).any(|w| w[0] >= w[1]) {
            return Err(VersionSetError::CloudNotCanonical);
        }
        let set = VersionSet {
            context,
            cloud,
            siblings,
        };
        if set.siblings.iter().any(|s| !set.covers(&s.dot)) {
            return Err(VersionSetError::DotNotInContext);
        }
        Ok(set)
    }

    /// Whether this set's causal context includes the write `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.context.covers(dot) || self.cloud.binary_search(dot).is_ok()
    }

    /// A coordinator's write: `value` (or a tombstone, `None`) written by a client that had
    /// read `client_context`, coordinated by `replica`. Returns the new set and the dot of
    /// the new sibling.
    ///
    /// Siblings the client's context covers are superseded; every other sibling survives.
    pub fn update(
        &self,
        client_context: &VersionVector,
        value: Option<Bytes>,
        replica: &ReplicaId,
    ) -> (VersionSet, Dot) {
        self.update_exact(client_context, &[], value, replica)
    }

    /// `update` with a client context that also names exact dots beyond its vector: the
    /// writes a client made itself and was told about (the context a PUT answers). A sibling
    /// is superseded if the vector covers its dot or its dot is one of `client_dots`. The
    /// exact dots join the set's dot cloud, not its vector: a dot does not imply the writes
    /// before it. Keeping them means a superseded write that reaches this replica later is
    /// still recognised as superseded (a delete stays a delete).
    pub fn update_exact(
        &self,
        client_context: &VersionVector,
        client_dots: &[Dot],
        value: Option<Bytes>,
        replica: &ReplicaId,
    ) -> (VersionSet, Dot) {
        let counter = client_dots
            .iter()
            .chain(&self.cloud)
            .filter(|d| d.replica == *replica)
            .map(|d| d.counter)
            .chain([self.context.get(replica), client_context.get(replica)])
            .max()
            .unwrap_or(0)
            + 1;
        let dot = Dot {
            replica: replica.clone(),
            counter,
        };
        let superseded = |d: &Dot| client_context.covers(d) || client_dots.contains(d);
        let mut siblings: Vec<Sibling> = self
            .siblings
            .iter()
            .filter(|s| !superseded(&s.dot))
            .cloned()
            .collect();
        siblings.push(Sibling {
            dot: dot.clone(),
            value,
        });
        siblings.sort_by(|a, b| a.dot.cmp(&b.dot));
        let mut context = self.context.clone();
        context.merge(client_context);
        let mut cloud = self.cloud.clone();
        cloud.extend(client_dots.iter().filter(|d| d.counter > 0).cloned());
        cloud.push(dot.clone());
        let cloud = canonical_cloud(&mut context, cloud);
        (
            VersionSet {
                context,
                cloud,
                siblings,
            },
            dot,
        )
    }

    /// Merges what two replicas hold for the same key. A sibling survives if both hold it, or
    /// if the other side has not seen its dot; a sibling the other side has seen but no longer
    /// holds was superseded there and is dropped. The causal contexts unite.
    pub fn sync(&self, other: &VersionSet) -> VersionSet {
        let mut siblings = Vec::with_capacity(self.siblings.len() + other.siblings.len());
        let (mut i, mut j) = (0, 0);
        while i < self.siblings.len() || j < other.siblings.len() {
            let a = self.siblings.get(i);
            let b = other.siblings.get(j);
            match (a, b) {
                (Some(a), Some(b)) if a.dot == b.dot => {
                    // One dot names one write, so the values agree; if a bug or a corrupt
                    // peer made them differ, pick the smaller so that sync stays commutative.
                    siblings.push(if a.value <= b.value {
                        a.clone()
                    } else {
                        b.clone()
                    });
                    i += 1;
                    j += 1;
                }
                (Some(a), b) if b.is_none_or(|b| a.dot < b.dot) => {
                    if !other.covers(&a.dot) {
                        siblings.push(a.clone());
                    }
                    i += 1;
                }
                (_, Some(b)) => {
                    if !self.covers(&b.dot) {
                        siblings.push(b.clone());
                    }
                    j += 1;
                }
                (_, None) => unreachable!("loop condition guarantees one side remains"),
            }
        }
        let mut context = self.context.clone();
        context.merge(&other.context);
        let cloud = canonical_cloud(
            &mut context,
            self.cloud.iter().chain(&other.cloud).cloned().collect(),
        );
        VersionSet {
            context,
            cloud,
            siblings,
        }
    }

    /// The same set with `replica`'s entry of the vector raised to at least `floor`: it
    /// declares every write of `replica` numbered up to `floor` seen. Sound only when called
    /// by `replica` itself, which knows that no such write of this key survives outside this
    /// set (the node's *dot floor*, raised when tombstones are purged: see
    /// `highest_counter`). The next `update` by `replica` then issues a counter above
    /// `floor`, which no context handed out before the purge can cover.
    pub fn raise_floor(&self, replica: &ReplicaId, floor: u64) -> VersionSet {
        if floor <= self.context.get(replica) {
            return self.clone();
        }
        let mut context = self.context.clone();
        context.raise(replica, floor);
        let cloud = canonical_cloud(&mut context, self.cloud.clone());
        VersionSet {
            context,
            cloud,
            siblings: self.siblings.clone(),
        }
    }

    /// The highest counter of `replica` this set has seen (vector or cloud): the floor its
    /// writes must stay above once this set is forgotten.
    pub fn highest_counter(&self, replica: &ReplicaId) -> u64 {
        self.cloud
            .iter()
            .filter(|d| d.replica == *replica)
            .map(|d| d.counter)
            .chain([self.context.get(replica)])
            .max()
            .unwrap_or(0)
    }

    /// Whether the set holds only tombstones (at least one): a deleted key whose tombstone
    /// may be purged once it is causally stable.
    pub fn is_tombstone_only(&self) -> bool {
        !self.siblings.is_empty() && self.siblings.iter().all(Sibling::is_tombstone)
    }

    /// The version vector of the causal context (its contiguous part). The whole context a
    /// client should get is the vector plus `cloud()`.
    pub fn context(&self) -> &VersionVector {
        &self.context
    }

    /// The dots of the causal context beyond the vector.
    pub fn cloud(&self) -> &[Dot] {
        &self.cloud
    }

    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// Bytes of all sibling values together.
    pub fn value_bytes(&self) -> usize {
        self.values().map(Bytes::len).sum()
    }

    /// The live values (tombstones left out), in dot order.
    pub fn values(&self) -> impl Iterator<Item = &Bytes> {
        self.siblings.iter().filter_map(|s| s.value.as_ref())
    }

    /// Whether every sibling is a tombstone (or there is none): a read answers "not found".
    pub fn is_deleted(&self) -> bool {
        self.siblings.iter().all(Sibling::is_tombstone)
    }

    /// Whether `self` already includes everything `other` holds, so syncing `other` in would
    /// change nothing. Used by read repair to skip replicas that are up to date.
    pub fn includes(&self, other: &VersionSet) -> bool {
        self.sync(other) == *self
    }

    /// A fast 64-bit digest of the whole set, equal on every replica holding the same set (the
    /// encoding is canonical: sorted siblings, ordered vector, canonical cloud). Feeds the
    /// Merkle trees and anti-entropy, which use it only to *find* keys that may differ: a
    /// collision there hides a difference from one exchange, and nothing is dropped for it.
    ///
    /// Never proof that two sets are equal: values are client bytes, and xxh3 is not
    /// collision resistant, so a client can make two different sets with the same digest
    /// (about 2^32 work). Anything that drops data because another set is "the same" compares
    /// the sets themselves when both are on one node, or their `fingerprint`s when one is on
    /// another node.
    pub fn digest(&self) -> u64 {
        let bytes = postcard::to_allocvec(self).expect("a VersionSet always serializes");
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }

    /// A collision-resistant fingerprint of the whole set (SHA-256 of its canonical encoding),
    /// for a node to prove to another that it holds exactly this set: the tombstone purge
    /// checks (`SameVersions`, `OtherCopies`, `Purge`) and the handoff sweep's confirmations.
    /// Finding two sets with one fingerprint is as hard as a SHA-256 collision, so a node may
    /// drop its copy of a set on another's word that it holds the same fingerprint.
    ///
    /// Slower than `digest` (SHA-256 runs at a few hundred MB/s): background work only, never
    /// on the write path.
    pub fn fingerprint(&self) -> Fingerprint {
        let bytes = postcard::to_allocvec(self).expect("a VersionSet always serializes");
        Fingerprint(Sha256::digest(&bytes).into())
    }

    /// Whether this set's fingerprint is `fingerprint`: the one gate through which a set held
    /// here is matched against a set another node names.
    pub fn same_as_fingerprint(&self, fingerprint: &Fingerprint) -> bool {
        self.fingerprint() == *fingerprint
    }

    /// Checks the invariants listed in the module documentation.
    pub fn is_well_formed(&self) -> bool {
        self.siblings.windows(2).all(|w| w[0].dot < w[1].dot)
            && self.siblings.iter().all(|s| self.covers(&s.dot))
            && self.context.entries().all(|(_, c)| c != 0)
            && self.cloud.windows(2).all(|w| w[0] < w[1])
            && canonical_cloud(&mut self.context.clone(), self.cloud.clone()) == self.cloud
    }
}

/// Puts a set of dots beyond `vector` in canonical form: dots the vector covers are dropped,
/// dots that directly follow the vector's entry for their replica fold into it (repeatedly),
/// the rest stay, sorted and unique. Two dot sets are equal exactly when their canonical forms
/// are, which is what keeps `sync` commutative and associative.
pub(crate) fn canonical_cloud(vector: &mut VersionVector, mut dots: Vec<Dot>) -> Vec<Dot> {
    dots.sort();
    dots.dedup();
    let mut kept: Vec<Dot> = Vec::with_capacity(dots.len());
    for dot in dots {
        let seen = vector.get(&dot.replica);
        if dot.counter == 0 || dot.counter <= seen {
            continue;
        }
        if dot.counter == seen + 1 {
            vector.raise(&dot.replica, dot.counter);
        } else {
            kept.push(dot);
        }
    }
    // Sorted by (replica, counter), folding a replica's dot can only make later dots of the
    // same replica contiguous, which the loop already handled; earlier kept ones stay beyond.
    kept.retain(|d| !vector.covers(d));
    kept
}

/// The unchecked wire shape of a `VersionVector` (same encoding).
#[derive(Deserialize)]
struct RawVersionVector {
    entries: BTreeMap<ReplicaId, u64>,
}

impl TryFrom<RawVersionVector> for VersionVector {
    type Error = VersionSetError;
    fn try_from(raw: RawVersionVector) -> Result<VersionVector, VersionSetError> {
        if raw.entries.values().any(|c| *c == 0) {
            return Err(VersionSetError::ZeroCounter);
        }
        if let Some(c) = raw.entries.values().find(|c| **c > MAX_COUNTER) {
            return Err(VersionSetError::CounterOverLimit(*c));
        }
        Ok(VersionVector {
            entries: raw.entries,
        })
    }
}

/// The unchecked wire shape of a `VersionSet` (same field order, same encoding).
#[derive(Deserialize)]
struct RawVersionSet {
    context: VersionVector,
    cloud: Vec<Dot>,
    siblings: Vec<Sibling>,
}

impl TryFrom<RawVersionSet> for VersionSet {
    type Error = VersionSetError;
    fn try_from(raw: RawVersionSet) -> Result<VersionSet, VersionSetError> {
        VersionSet::from_parts_with_cloud(raw.context, raw.cloud, raw.siblings)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionSetError {
    #[error("two siblings carry the same dot")]
    DuplicateDot,
    #[error("a sibling's dot is not covered by the set's context")]
    DotNotInContext,
    #[error("a version vector carries a zero counter")]
    ZeroCounter,
    #[error("the dot cloud is not canonical (unsorted, covered or contiguous dots)")]
    CloudNotCanonical,
    /// No replica issues that many writes (`MAX_COUNTER`, 2^53): only a forged or broken
    /// peer sends one, and counting the next dot past it would overflow.
    #[error("a counter of {0} is over the limit of 2^53")]
    CounterOverLimit(u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    fn replica(name: &str) -> ReplicaId {
        ReplicaId::new(NodeId::new(name).unwrap(), 1)
    }

    fn value(s: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn a_write_with_the_read_context_replaces_the_siblings() {
        let (a, b) = (replica("a"), replica("b"));
        let empty = VersionVector::new();
        let (s1, _) = VersionSet::new().update(&empty, value("x"), &a);
        let (s2, _) = s1.update(&empty, value("y"), &b);
        assert_eq!(s2.values().count(), 2, "a blind write is concurrent");
        let (s3, _) = s2.update(s2.context(), value("z"), &a);
        assert_eq!(
            s3.values().cloned().collect::<Vec<_>>(),
            vec![Bytes::from("z")]
        );
        assert!(s3.is_well_formed());
    }

    #[test]
    fn same_context_through_one_coordinator_keeps_both() {
        let a = replica("a");
        let (s1, _) = VersionSet::new().update(&VersionVector::new(), value("x"), &a);
        let ctx = s1.context().clone();
        let (s2, _) = s1.update(&ctx, value("y"), &a);
        let (s3, _) = s2.update(&ctx, value("z"), &a);
        let values: Vec<_> = s3.values().cloned().collect();
        assert_eq!(values, vec![Bytes::from("y"), Bytes::from("z")]);
    }

    #[test]
    fn sync_drops_what_the_other_side_superseded() {
        let (a, b) = (replica("a"), replica("b"));
        let (s1, _) = VersionSet::new().update(&VersionVector::new(), value("x"), &a);
        let (on_b, _) = s1.update(s1.context(), value("y"), &b);
        let merged = s1.sync(&on_b);
        assert_eq!(merged, on_b);
        assert_eq!(on_b.sync(&s1), on_b);
    }

    #[test]
    fn from_parts_rejects_broken_sets() {
        let a = replica("a");
        let dot = Dot {
            replica: a.clone(),
            counter: 1,
        };
        let sib = Sibling {
            dot: dot.clone(),
            value: None,
        };
        assert_eq!(
            VersionSet::from_parts(VersionVector::new(), vec![sib.clone()]),
            Err(VersionSetError::DotNotInContext)
        );
        let ctx = VersionVector::from_entries([(a, 1)]);
        assert_eq!(
            VersionSet::from_parts(ctx.clone(), vec![sib.clone(), sib.clone()]),
            Err(VersionSetError::DuplicateDot)
        );
        assert!(VersionSet::from_parts(ctx, vec![sib]).unwrap().is_deleted());
    }

    #[test]
    fn zero_counters_are_not_canonical() {
        let a = replica("a");
        // A dot with counter 0 names no write: a set holding one would lose it to any blind
        // write, so it must not be representable.
        let zero_dot = Sibling {
            dot: Dot {
                replica: a.clone(),
                counter: 0,
            },
            value: value("x"),
        };
        assert_eq!(
            VersionSet::from_parts(VersionVector::new(), vec![zero_dot]),
            Err(VersionSetError::DotNotInContext)
        );
        // {a: 0} and {} are one history; only the second is accepted from the wire.
        let raw: BTreeMap<ReplicaId, u64> = [(a, 0)].into_iter().collect();
        let bytes = postcard::to_allocvec(&raw).unwrap();
        assert!(postcard::from_bytes::<VersionVector>(&bytes).is_err());
        let set_bytes = postcard::to_allocvec(&(raw, Vec::<Sibling>::new())).unwrap();
        assert!(postcard::from_bytes::<VersionSet>(&set_bytes).is_err());
    }

    /// A client writes through n4 and is answered the exact dot of its write; its delete with
    /// that context is coordinated by n5, which has not received the write yet. Once n5 and
    /// n4 sync, the value must stay deleted (fault harness, `del-16`).
    #[test]
    fn a_delete_by_exact_dot_supersedes_a_write_that_arrives_later() {
        let (n4, n5) = (replica("n4"), replica("n5"));
        let blind = VersionVector::new();
        let (on_n4, _) = VersionSet::new().update(&blind, value("x"), &n4);
        let (on_n4, written) = on_n4.update(&blind, value("d16-2"), &n4);
        assert!(
            written.counter > 1,
            "the dot is not contiguous from an empty context"
        );
        let (on_n5, _) =
            VersionSet::new().update_exact(&blind, std::slice::from_ref(&written), None, &n5);
        let merged = on_n5.sync(&on_n4);
        let values: Vec<_> = merged.values().cloned().collect();
        assert_eq!(
            values,
            vec![Bytes::from("x")],
            "only the write the delete never saw survives"
        );
        assert!(merged.covers(&written));
        assert!(merged.is_well_formed());
    }
    /// A set or a vector naming a counter over `MAX_COUNTER` does not decode, whether the
    /// counter is in the vector or in the dot cloud (a peer's frame carrying one is refused, so
    /// no node ever counts the next dot past `u64::MAX`); at the limit it does.
    #[test]
    fn counters_over_the_limit_do_not_decode() {
        let r = replica("a");
        let at_limit = VersionSet::from_parts_with_cloud(
            VersionVector::from_entries([(r.clone(), MAX_COUNTER)]),
            Vec::new(),
            Vec::new(),
        )
        .unwrap();
        let bytes = postcard::to_allocvec(&at_limit).unwrap();
        assert_eq!(
            postcard::from_bytes::<VersionSet>(&bytes).unwrap(),
            at_limit
        );
        for huge in [MAX_COUNTER + 1, u64::MAX] {
            let vector = VersionVector::from_entries([(r.clone(), huge)]);
            let bytes = postcard::to_allocvec(&vector).unwrap();
            assert!(
                postcard::from_bytes::<VersionVector>(&bytes).is_err(),
                "{huge}"
            );
            let in_cloud = VersionSet {
                context: VersionVector::from_entries([(r.clone(), 1)]),
                cloud: vec![Dot {
                    replica: r.clone(),
                    counter: huge,
                }],
                siblings: Vec::new(),
            };
            let bytes = postcard::to_allocvec(&in_cloud).unwrap();
            assert!(
                postcard::from_bytes::<VersionSet>(&bytes).is_err(),
                "{huge}"
            );
        }
    }
}
