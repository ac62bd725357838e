//! Costs of the per-key version bookkeeping on the hot paths: `sync` (every read with
//! read repair, every anti-entropy and handoff transfer), `update` (every write) and the
//! client context token (every request that carries `X-Context`); and the two hashes of a
//! whole set: `digest` (xxh3, every write, for the Merkle tree) next to `fingerprint`
//! (SHA-256, background purge and handoff checks only).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringkv_core::{Context, NodeId, ReplicaId, VersionSet, VersionVector};

fn replica(i: usize) -> ReplicaId {
    ReplicaId::new(NodeId::new(format!("node-{i}")).unwrap(), 1)
}

fn value(tag: u8) -> Option<Bytes> {
    Some(Bytes::from(vec![tag; 100]))
}

/// Two replicas' views of one key written through 3 coordinators: `siblings` concurrent
/// values on each side, half of them shared, the rest one side has not seen yet.
fn diverged(siblings: usize) -> (VersionSet, VersionSet) {
    let empty = VersionVector::new();
    let mut base = VersionSet::new();
    for i in 0..3 {
        base = base.update(base.context(), value(i as u8), &replica(i)).0;
    }
    let (mut a, mut b) = (base.clone(), base);
    for i in 0..siblings {
        a = a.update(&empty, value(10 + i as u8), &replica(i % 3)).0;
        b = b
            .update(&empty, value(20 + i as u8), &replica((i + 1) % 3))
            .0;
        if i % 2 == 0 {
            b = b.sync(&a);
        }
    }
    (a, b)
}

fn bench_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("sync");
    for siblings in 1..=3 {
        let (a, b) = diverged(siblings);
        group.bench_with_input(
            BenchmarkId::from_parameter(siblings),
            &(a, b),
            |bench, (a, b)| bench.iter(|| black_box(a).sync(black_box(b))),
        );
    }
    group.finish();
}

fn bench_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    for siblings in 1..=3 {
        let (a, _) = diverged(siblings);
        let context = a.context().clone();
        let new = value(99);
        let coordinator = replica(0);
        group.bench_with_input(BenchmarkId::new("covering", siblings), &a, |bench, a| {
            bench.iter(|| black_box(a).update(black_box(&context), new.clone(), &coordinator))
        });
        let empty = VersionVector::new();
        group.bench_with_input(BenchmarkId::new("blind", siblings), &a, |bench, a| {
            bench.iter(|| black_box(a).update(black_box(&empty), new.clone(), &coordinator))
        });
    }
    group.finish();
}

fn bench_context(c: &mut Criterion) {
    let (a, _) = diverged(3);
    let context = Context::new(a.context().clone());
    let token = context.encode();
    let mut group = c.benchmark_group("context");
    group.bench_function("encode_3_entries", |bench| {
        bench.iter(|| black_box(&context).encode())
    });
    group.bench_function("decode_3_entries", |bench| {
        bench.iter(|| Context::decode(black_box(&token)).unwrap())
    });
    group.finish();
}

/// A one-sibling set holding a value of `bytes` bytes.
fn one_value(bytes: usize) -> VersionSet {
    let value = Some(Bytes::from(vec![7; bytes]));
    VersionSet::new()
        .update(&VersionVector::new(), value, &replica(0))
        .0
}

fn bench_hashes(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash");
    for bytes in [0, 1024, 64 * 1024] {
        let set = one_value(bytes);
        group.bench_with_input(BenchmarkId::new("digest", bytes), &set, |bench, set| {
            bench.iter(|| black_box(set).digest())
        });
        group.bench_with_input(
            BenchmarkId::new("fingerprint", bytes),
            &set,
            |bench, set| bench.iter(|| black_box(set).fingerprint()),
        );
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_sync,
    bench_update,
    bench_context,
    bench_hashes
);
criterion_main!(benches);
