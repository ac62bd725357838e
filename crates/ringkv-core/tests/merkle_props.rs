//! Laws of the Merkle tree: order independence of updates, exactness of `diff`, and a diff
//! cost that depends on the differences, not on the number of keys.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use ringkv_core::merkle::{
    LeafIndex, MERKLE_FANOUT, MERKLE_LEAVES, MerkleTree, differing_children,
};

type Entries = BTreeMap<Vec<u8>, u64>;

fn key(i: u32) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

/// The tree of `entries`, built from scratch in the map's order.
fn tree_of(entries: &Entries) -> MerkleTree {
    let mut tree = MerkleTree::new();
    for (k, d) in entries {
        tree.update(k, None, Some(*d));
    }
    tree
}

/// The leaves holding a key that is on one side only or has different digests.
fn expected_leaves(a: &Entries, b: &Entries) -> Vec<LeafIndex> {
    let keys: BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    let leaves: BTreeSet<LeafIndex> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| LeafIndex::of_key(k))
        .collect();
    leaves.into_iter().collect()
}

/// The exact cost of the descent: the root, then the inner level if the roots differ, then
/// one leaf group per differing inner node.
fn expected_cost(leaves: &[LeafIndex]) -> usize {
    let groups: BTreeSet<usize> = leaves.iter().map(|l| l.group()).collect();
    let inner_level = if leaves.is_empty() { 0 } else { MERKLE_FANOUT };
    1 + inner_level + MERKLE_FANOUT * groups.len()
}

/// A key universe small enough that operations often hit the same key.
fn entries(max_keys: usize) -> impl Strategy<Value = Entries> {
    prop::collection::btree_map((0u32..300).prop_map(key), any::<u64>(), 0..max_keys)
}

/// One write or delete of the history: key number, new digest (`None`: delete).
fn history() -> impl Strategy<Value = Vec<(u32, Option<u64>)>> {
    prop::collection::vec((0u32..60, prop::option::of(0u64..4)), 0..200)
}

proptest! {
    #[test]
    fn updates_are_order_independent(
        ops in history(),
        order in any::<u64>(),
    ) {
        // Replay the history incrementally, giving each update the true old digest.
        let mut model = Entries::new();
        let mut tree = MerkleTree::new();
        for (i, new) in ops {
            let k = key(i);
            let old = model.get(&k).copied();
            let leaf = tree.update(&k, old, new);
            prop_assert_eq!(leaf, LeafIndex::of_key(&k));
            match new {
                Some(d) => model.insert(k, d),
                None => model.remove(&k),
            };
        }
        // Insert the final entries from scratch in a shuffled order.
        let mut shuffled: Vec<(&Vec<u8>, &u64)> = model.iter().collect();
        shuffled.sort_by_key(|(k, _)| xxhash_of(k, order));
        let mut scratch = MerkleTree::new();
        for (k, d) in shuffled {
            scratch.update(k, None, Some(*d));
        }
        prop_assert_eq!(&tree, &scratch);
        prop_assert_eq!(&tree, &tree_of(&model));
        if model.is_empty() {
            prop_assert_eq!(&tree, &MerkleTree::new());
        }
    }

    #[test]
    fn from_leaves_rebuilds_the_tree(entries in entries(200)) {
        let tree = tree_of(&entries);
        let rebuilt = MerkleTree::from_leaves(tree.leaves().to_vec()).unwrap();
        prop_assert_eq!(rebuilt, tree);
    }

    #[test]
    fn diff_names_exactly_the_differing_leaves(
        base in entries(200),
        removed in prop::collection::btree_set(0usize..200, 0..5),
        changed in prop::collection::btree_map(0usize..200, any::<u64>(), 0..5),
        added in entries(5),
    ) {
        let a = base.clone();
        let mut b = base;
        let keys: Vec<Vec<u8>> = b.keys().cloned().collect();
        for i in removed {
            if let Some(k) = keys.get(i) { b.remove(k); }
        }
        for (i, d) in changed {
            if let Some(k) = keys.get(i) { b.insert(k.clone(), d); }
        }
        for (k, d) in added {
            b.insert(k, d);
        }
        let expected = expected_leaves(&a, &b);
        let (ta, tb) = (tree_of(&a), tree_of(&b));
        let diff = ta.diff(&tb);
        prop_assert_eq!(&diff.leaves, &expected);
        prop_assert_eq!(diff.hashes_compared, expected_cost(&expected));
        prop_assert_eq!(tb.diff(&ta), diff.clone());
        prop_assert_eq!(diff.leaves.is_empty(), ta == tb);
        // Repairing exactly the named leaves makes the trees equal.
        let mut leaves = ta.leaves().to_vec();
        for leaf in &diff.leaves {
            leaves[leaf.get()] = tb.leaf(*leaf);
        }
        prop_assert_eq!(MerkleTree::from_leaves(leaves).unwrap(), tb);
    }

    #[test]
    fn differing_children_compares_position_by_position(
        mine in prop::collection::vec(0u64..3, 0..20),
        theirs in prop::collection::vec(0u64..3, 0..20),
    ) {
        let found = differing_children(&mine, &theirs);
        let len = mine.len().max(theirs.len());
        let expected: Vec<usize> =
            (0..len).filter(|&i| mine.get(i) != theirs.get(i)).collect();
        prop_assert_eq!(found, expected);
    }
}

/// A cheap deterministic shuffle key.
fn xxhash_of(k: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(k, seed)
}

#[test]
fn leaf_groups_and_indices_agree() {
    let tree = tree_of(&(0..1000).map(|i| (key(i), u64::from(i))).collect());
    for inner in 0..MERKLE_FANOUT {
        let group = tree.leaf_group(inner).unwrap();
        assert_eq!(group.len(), MERKLE_FANOUT);
        for (child, hash) in group.iter().enumerate() {
            let leaf = LeafIndex::in_group(inner, child).unwrap();
            assert_eq!(leaf.group(), inner);
            assert_eq!(tree.leaf(leaf), *hash);
        }
    }
    assert!(tree.leaf_group(MERKLE_FANOUT).is_none());
    assert!(tree.leaf_group(usize::MAX).is_none());
    assert!(LeafIndex::in_group(MERKLE_FANOUT, 0).is_none());
    assert!(LeafIndex::in_group(0, MERKLE_FANOUT).is_none());
    assert!(LeafIndex::new(MERKLE_LEAVES).is_none());
}

/// `d` keys outside `0..1_000_000`, each in a leaf of its own.
fn keys_in_distinct_leaves(d: usize) -> Vec<Vec<u8>> {
    let mut seen = BTreeSet::new();
    let candidates = (1_000_000..).map(key);
    candidates
        .filter(|k| seen.insert(LeafIndex::of_key(k)))
        .take(d)
        .collect()
}

/// The descent's cost for a tree of `base_keys` keys against the same tree plus `extra`.
fn cost_with_extra_keys(base: &MerkleTree, extra: &[Vec<u8>]) -> (usize, usize) {
    let mut other = base.clone();
    for k in extra {
        other.update(k, None, Some(7));
    }
    let diff = base.diff(&other);
    assert_eq!(diff.leaves.len(), extra.len());
    (diff.hashes_compared, expected_cost(&diff.leaves))
}

#[test]
fn diff_cost_depends_on_differences_not_on_keys() {
    let small = tree_of(&(0..1_000).map(|i| (key(i), u64::from(i))).collect());
    let large = tree_of(&(0..100_000).map(|i| (key(i), u64::from(i))).collect());
    assert_eq!(large.diff(&large.clone()).hashes_compared, 1);
    assert_eq!(small.diff(&small.clone()).hashes_compared, 1);

    for d in [1, 2, 5, 16, 40, 100, MERKLE_LEAVES] {
        let extra = keys_in_distinct_leaves(d);
        let (small_cost, exact) = cost_with_extra_keys(&small, &extra);
        let (large_cost, _) = cost_with_extra_keys(&large, &extra);
        assert_eq!(small_cost, exact, "d = {d}");
        assert_eq!(
            large_cost, small_cost,
            "d = {d}: cost must not depend on key count"
        );
        let bound = 1 + MERKLE_FANOUT + MERKLE_FANOUT * d.min(MERKLE_FANOUT);
        assert!(small_cost <= bound, "d = {d}: {small_cost} > {bound}");
    }
    // One differing leaf costs the root, the inner level and one leaf group.
    let one = keys_in_distinct_leaves(1);
    assert_eq!(cost_with_extra_keys(&large, &one).0, 1 + 2 * MERKLE_FANOUT);
}
