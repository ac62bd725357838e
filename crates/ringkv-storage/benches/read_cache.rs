//! Costs of the read cache (`ReadCache`): a hit, a write of a key already held, an insert
//! while the cache grows (a write-only load on a fresh node), and an insert into a full cache
//! (each one evicts).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use ringkv_core::{NodeId, ReplicaId, VersionSet, VersionVector};
use ringkv_storage::read_cache::ReadCache;

fn set() -> VersionSet {
    let replica = ReplicaId::new(NodeId::new("n1").expect("node id"), 1);
    VersionSet::new()
        .update(
            &VersionVector::new(),
            Some(Bytes::from_static(&[7u8; 100])),
            &replica,
        )
        .0
}

fn key(i: u64) -> Vec<u8> {
    format!("partition-key-{i:08}").into_bytes()
}

fn read_cache(c: &mut Criterion) {
    let versions = set();
    let big = ReadCache::new(1 << 30);
    for i in 0..100_000 {
        big.put(&key(i), Some(&versions));
    }
    let mut i = 0u64;
    c.bench_function("read_cache/get hit (100k held)", |b| {
        b.iter(|| {
            i = (i + 7_919) % 100_000;
            black_box(big.get(&key(i)))
        })
    });
    c.bench_function("read_cache/put replacing (100k held)", |b| {
        b.iter(|| {
            i = (i + 7_919) % 100_000;
            big.put(&key(i), Some(&versions))
        })
    });
    c.bench_function("read_cache/put new, growing (fresh cache per 100k)", |b| {
        let mut cache = ReadCache::new(1 << 30);
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            if n.is_multiple_of(100_000) {
                cache = ReadCache::new(1 << 30);
            }
            cache.put(&key(n), Some(&versions))
        })
    });
    let full = ReadCache::new(4 << 20);
    let mut n = 0u64;
    while full.bytes() < (4 << 20) - (64 << 10) {
        full.put(&key(n), Some(&versions));
        n += 1;
    }
    c.bench_function("read_cache/put new, full (evicts)", |b| {
        b.iter(|| {
            n += 1;
            full.put(&key(n), Some(&versions))
        })
    });
}

criterion_group!(benches, read_cache);
criterion_main!(benches);
