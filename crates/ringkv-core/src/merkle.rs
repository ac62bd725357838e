//! Merkle trees over the keys of one partition, for anti-entropy (Dynamo §4.7).
//!
//! The tree has a fixed shape: `MERKLE_LEAVES` leaves under a root, `MERKLE_FANOUT` children
//! per inner node. A key belongs to the leaf chosen by the top bits of xxh3 of the key. A
//! leaf's hash is the XOR of the entry hashes `xxh3(key ++ digest of its version set)` of the
//! keys in it, so a write updates the tree in O(depth) from the old and new digests alone,
//! without reading the other keys of the leaf; the tree is never rebuilt by scanning. Inner
//! nodes hash their children's hashes.
//!
//! Laws: two trees over the same (key, digest) pairs are equal whatever the order of updates;
//! `diff` names exactly the leaves whose key sets or digests differ, and the number of hashes
//! it compares grows with the number of differing leaves, not with the number of keys.
//!
//! # Why XOR is enough
//!
//! XOR is commutative, associative and its own inverse, which is what makes `update` order
//! independent and lets it remove an entry without seeing the others. Its weakness, that two
//! equal terms cancel, cannot bite here: a leaf holds at most one entry per key (the caller
//! removes the old digest when it adds the new one), keys are unique, and `key ++ digest` is
//! injective because the digest has a fixed width, so no two terms of one leaf are the same
//! input to xxh3. Two leaves over different entry sets collide only when the XOR of their
//! symmetric difference is zero, which for a 64-bit hash that behaves like a random function
//! happens with probability 2^-64 per compared pair (inner and root hashes alike). A
//! partition compares at most 1 + 16 + 256 hashes per exchange, so even 10^12 exchanges miss
//! a difference with probability below 10^-5. xxh3 is not a cryptographic hash: a client that
//! crafts colliding keys can hide a difference from anti-entropy, but only delay repair (read
//! repair and the next write to the leaf still converge), never corrupt data.
//!
//! # Diff, whole or step by step
//!
//! `MerkleTree::diff` descends from the root into differing subtrees only. Anti-entropy does
//! the same descent over the network, one level per round trip, with the same pure steps:
//! compare roots, then `differing_children` of the two `inner` levels, then for each differing
//! inner node `differing_children` of the two `leaf_group`s, and `LeafIndex::in_group` to name
//! the leaves. The hashes compared are `1 + FANOUT·[roots differ] + FANOUT·(differing inner
//! nodes)`, at most `1 + FANOUT + FANOUT·min(d, FANOUT)` for `d` differing leaves, whatever the
//! number of keys.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Children per inner node.
pub const MERKLE_FANOUT: usize = 16;
/// Leaves per tree: FANOUT^2, so the tree has a root, one inner level and the leaves.
pub const MERKLE_LEAVES: usize = MERKLE_FANOUT * MERKLE_FANOUT;

/// Index of a leaf, `0..MERKLE_LEAVES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeafIndex(u16);

impl LeafIndex {
    pub fn new(index: usize) -> Option<LeafIndex> {
        (index < MERKLE_LEAVES).then_some(LeafIndex(index as u16))
    }
    pub fn of_key(key: &[u8]) -> LeafIndex {
        // Seeded so that leaf choice is independent of the MD5 ring position.
        let h = xxh3_64_with_seed(key, 0x6b76_6d65_726b_6c65);
        LeafIndex((h >> (64 - MERKLE_LEAVES.trailing_zeros())) as u16)
    }
    pub fn get(self) -> usize {
        self.0 as usize
    }

    /// The leaf that is child `child` of inner node `inner`, if both are below
    /// `MERKLE_FANOUT`. Used to name a leaf found by the step-by-step descent.
    pub fn in_group(inner: usize, child: usize) -> Option<LeafIndex> {
        if inner < MERKLE_FANOUT && child < MERKLE_FANOUT {
            LeafIndex::new(inner * MERKLE_FANOUT + child)
        } else {
            None
        }
    }

    /// The inner node above this leaf.
    pub fn group(self) -> usize {
        self.get() / MERKLE_FANOUT
    }
}

/// The result of comparing two trees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MerkleDiff {
    /// The leaves whose hashes differ, in increasing order.
    pub leaves: Vec<LeafIndex>,
    /// How many pairs of hashes the descent compared: the cost of the exchange.
    pub hashes_compared: usize,
}

/// The positions at which two lists of sibling hashes differ, in increasing order: one step
/// of the descent. A position present in only one list counts as differing, so a malformed
/// list from a peer never hides a difference (the caller rejects wrong lengths when it
/// decodes a peer's message; `diff` always passes equal lengths).
pub fn differing_children(mine: &[u64], theirs: &[u64]) -> Vec<usize> {
    let len = mine.len().max(theirs.len());
    (0..len).filter(|&i| mine.get(i) != theirs.get(i)).collect()
}

/// The hash a key contributes to its leaf.
pub fn entry_hash(key: &[u8], version_digest: u64) -> u64 {
    let mut buf = Vec::with_capacity(key.len() + 8);
    buf.extend_from_slice(key);
    buf.extend_from_slice(&version_digest.to_be_bytes());
    xxh3_64(&buf)
}

/// The Merkle tree of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    leaves: Vec<u64>,
    inner: Vec<u64>,
    root: u64,
}

impl Default for MerkleTree {
    fn default() -> Self {
        MerkleTree::new()
    }
}

impl MerkleTree {
    /// The tree of an empty partition.
    pub fn new() -> MerkleTree {
        MerkleTree::from_leaves(vec![0; MERKLE_LEAVES]).expect("right number of leaves")
    }

    /// Rebuilds the inner levels from stored leaf hashes (a node keeps only the leaves on
    /// disk, updated in the same batch as the record that changed them).
    pub fn from_leaves(leaves: Vec<u64>) -> Result<MerkleTree, MerkleError> {
        if leaves.len() != MERKLE_LEAVES {
            return Err(MerkleError::WrongLeafCount(leaves.len()));
        }
        let mut tree = MerkleTree {
            leaves,
            inner: vec![0; MERKLE_FANOUT],
            root: 0,
        };
        for i in 0..MERKLE_FANOUT {
            tree.rehash_inner(i);
        }
        tree.rehash_root();
        Ok(tree)
    }

    /// Records that `key` changed from `old_digest` to `new_digest` (`None`: absent).
    /// Returns the leaf that changed. O(depth).
    pub fn update(
        &mut self,
        key: &[u8],
        old_digest: Option<u64>,
        new_digest: Option<u64>,
    ) -> LeafIndex {
        let leaf = LeafIndex::of_key(key);
        let mut h = self.leaves[leaf.get()];
        if let Some(d) = old_digest {
            h ^= entry_hash(key, d);
        }
        if let Some(d) = new_digest {
            h ^= entry_hash(key, d);
        }
        self.leaves[leaf.get()] = h;
        self.rehash_inner(leaf.get() / MERKLE_FANOUT);
        self.rehash_root();
        leaf
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    pub fn leaves(&self) -> &[u64] {
        &self.leaves
    }

    pub fn leaf(&self, leaf: LeafIndex) -> u64 {
        self.leaves[leaf.get()]
    }

    /// The inner level: one hash per group of `MERKLE_FANOUT` leaves.
    pub fn inner(&self) -> &[u64] {
        &self.inner
    }

    /// The `MERKLE_FANOUT` leaf hashes under inner node `inner`, if it exists.
    pub fn leaf_group(&self, inner: usize) -> Option<&[u64]> {
        let start = inner.checked_mul(MERKLE_FANOUT)?;
        self.leaves.get(start..start + MERKLE_FANOUT)
    }

    /// The leaves where `self` and `other` differ, found by descending from the root into
    /// differing subtrees only (see the module docs for the cost).
    pub fn diff(&self, other: &MerkleTree) -> MerkleDiff {
        let mut diff = MerkleDiff {
            leaves: Vec::new(),
            hashes_compared: 1,
        };
        if self.root == other.root {
            return diff;
        }
        diff.hashes_compared += MERKLE_FANOUT;
        for inner in differing_children(&self.inner, &other.inner) {
            diff.hashes_compared += MERKLE_FANOUT;
            let mine = self
                .leaf_group(inner)
                .expect("an inner node has a leaf group");
            let theirs = other
                .leaf_group(inner)
                .expect("an inner node has a leaf group");
            let leaves = differing_children(mine, theirs)
                .into_iter()
                .map(|child| LeafIndex::in_group(inner, child).expect("a leaf of the group"));
            diff.leaves.extend(leaves);
        }
        diff
    }

    fn rehash_inner(&mut self, i: usize) {
        let children = &self.leaves[i * MERKLE_FANOUT..(i + 1) * MERKLE_FANOUT];
        self.inner[i] = hash_children(children);
    }

    fn rehash_root(&mut self) {
        self.root = hash_children(&self.inner);
    }
}

fn hash_children(children: &[u64]) -> u64 {
    let mut buf = [0u8; MERKLE_FANOUT * 8];
    for (chunk, h) in buf.chunks_exact_mut(8).zip(children) {
        chunk.copy_from_slice(&h.to_be_bytes());
    }
    xxh3_64(&buf)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    #[error("a Merkle tree has {MERKLE_LEAVES} leaves, got {0}")]
    WrongLeafCount(usize),
}
