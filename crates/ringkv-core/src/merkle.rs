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
        let mut tree = MerkleTree { leaves, inner: vec![0; MERKLE_FANOUT], root: 0 };
        for i in 0..MERKLE_FANOUT {
            tree.rehash_inner(i);
        }
        tree.rehash_root();
        Ok(tree)
    }

    /// Records that `key` changed from `old_digest` to `new_digest` (`None`: absent).
    /// Returns the leaf that changed. O(depth).
    pub fn update(&mut self, key: &[u8], old_digest: Option<u64>, new_digest: Option<u64>) -> LeafIndex {
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
