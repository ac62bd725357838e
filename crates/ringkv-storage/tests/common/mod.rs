//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use ringkv_core::merkle::MerkleTree;
use ringkv_core::{NodeId, PartitionId, ReplicaId, VersionSet, VersionVector};
use ringkv_storage::StorageEngine;

/// Partitions in the tests' ring.
pub const TEST_PARTITIONS: u32 = 16;

pub fn partition(index: u32) -> PartitionId {
    PartitionId::new(index, TEST_PARTITIONS).unwrap()
}

pub fn replica(index: usize) -> ReplicaId {
    ReplicaId::new(NodeId::new(format!("n{index}")).unwrap(), 1)
}

pub fn node(index: usize) -> NodeId {
    NodeId::new(format!("n{index}")).unwrap()
}

/// `current` plus a write of `value` by `replica`: a blind write (concurrent with what is
/// there) unless `replace`, which supersedes every sibling.
pub fn write(
    current: Option<&VersionSet>,
    value: &str,
    replica: &ReplicaId,
    replace: bool,
) -> VersionSet {
    let base = current.cloned().unwrap_or_default();
    let context = if replace {
        base.context().clone()
    } else {
        VersionVector::new()
    };
    base.update(
        &context,
        Some(Bytes::copy_from_slice(value.as_bytes())),
        replica,
    )
    .0
}

/// Two different sets with the same 64-bit `VersionSet::digest`: one sibling each, written
/// by `replica(1)` without context, with 8-byte values a client could choose (the pair
/// `ringkv-core`'s `version_laws.rs` checks: found by a collision search). Whatever drops
/// data because a set is "the same" must tell them apart.
pub fn colliding_sets() -> (VersionSet, VersionSet) {
    let one_value = |v: u64| {
        let value = Bytes::copy_from_slice(&v.to_le_bytes());
        VersionSet::new()
            .update(&VersionVector::new(), Some(value), &replica(1))
            .0
    };
    let (a, b) = (
        one_value(0x37d5_7a8a_69a9_a8dd),
        one_value(0x5530_52df_e4e7_45f3),
    );
    assert!(a != b && a.digest() == b.digest(), "the pair collides");
    (a, b)
}

/// Stores a write of `value` to `key`, returning what is stored after.
pub fn put(engine: &dyn StorageEngine, p: PartitionId, key: &[u8], value: &str) -> VersionSet {
    let r = replica(0);
    engine
        .update(p, key, &mut |cur| Some(write(cur, value, &r, false)))
        .unwrap()
        .expect("a write stores a set")
}

pub fn values(set: &VersionSet) -> Vec<String> {
    set.values()
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
        .collect()
}

/// Every key of a partition, read page by page.
pub fn scan_all(
    engine: &dyn StorageEngine,
    p: PartitionId,
    page: usize,
) -> Vec<(Bytes, VersionSet)> {
    let mut out: Vec<(Bytes, VersionSet)> = Vec::new();
    loop {
        let after = out.last().map(|(k, _)| k.clone());
        let batch = engine.scan(p, after.as_deref(), page).unwrap();
        assert!(batch.len() <= page, "scan returned more than its limit");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// The tree of a partition rebuilt from its records, to compare with the stored one.
pub fn rebuilt_tree(engine: &dyn StorageEngine, p: PartitionId) -> MerkleTree {
    let mut tree = MerkleTree::new();
    for (key, versions) in scan_all(engine, p, 1000) {
        tree.update(&key, None, Some(versions.digest()));
    }
    tree
}
