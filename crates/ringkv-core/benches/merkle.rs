//! Costs of the Merkle tree: one incremental update, and a diff of two trees of 10k keys
//! that differ in 0, 1 or 100 leaves.

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringkv_core::merkle::{LeafIndex, MerkleTree};

const BASE_KEYS: u32 = 10_000;

fn key(i: u32) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

fn base_tree() -> MerkleTree {
    let mut tree = MerkleTree::new();
    for i in 0..BASE_KEYS {
        tree.update(&key(i), None, Some(u64::from(i)));
    }
    tree
}

/// The base tree plus `d` new keys, each in a leaf of its own.
fn with_differing_leaves(base: &MerkleTree, d: usize) -> MerkleTree {
    let mut tree = base.clone();
    let mut leaves = BTreeSet::new();
    let extra = (BASE_KEYS..)
        .map(key)
        .filter(|k| leaves.insert(LeafIndex::of_key(k)));
    for k in extra.take(d) {
        tree.update(&k, None, Some(1));
    }
    tree
}

fn update(c: &mut Criterion) {
    let mut tree = base_tree();
    let k = key(42);
    let mut digest = 42u64;
    c.bench_function("merkle/update", |b| {
        b.iter(|| {
            let next = digest.wrapping_add(1);
            tree.update(black_box(&k), Some(digest), Some(next));
            digest = next;
        })
    });
}

fn diff(c: &mut Criterion) {
    let base = base_tree();
    let mut group = c.benchmark_group("merkle/diff");
    for d in [0, 1, 100] {
        let other = with_differing_leaves(&base, d);
        assert_eq!(base.diff(&other).leaves.len(), d);
        group.bench_with_input(BenchmarkId::from_parameter(d), &other, |b, other| {
            b.iter(|| black_box(&base).diff(black_box(other)))
        });
    }
    group.finish();
}

criterion_group!(benches, update, diff);
criterion_main!(benches);
