//! Ring benchmarks: preference-list lookup (the per-request cost) and claim (the cost of a
//! membership change).

use criterion::{Criterion, criterion_group, criterion_main};
use ringkv_core::ring::{Member, Ring, RingParams};
use ringkv_core::{NodeId, key_hash};
use std::hint::black_box;

fn members(count: usize, zones: usize) -> Vec<Member> {
    (0..count)
        .map(|i| Member {
            id: NodeId::new(format!("node{i:04}")).unwrap(),
            weight: 1,
            zone: format!("z{}", i % zones),
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let params = RingParams {
        partitions: 1024,
        n: 3,
    };
    let ring = Ring::claim(None, &members(100, 5), params).unwrap();
    let keys: Vec<String> = (0..1024).map(|i| format!("user:{i}")).collect();
    let mut i = 0;
    c.bench_function("preference_list_home/q1024_nodes100", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let partition = ring.partition_of(key_hash(black_box(keys[i].as_bytes())));
            let mut home: [Option<&NodeId>; 3] = [None; 3];
            for (slot, node) in home.iter_mut().zip(ring.preference_list(partition).home()) {
                *slot = Some(node);
            }
            black_box(home)
        })
    });
}

fn claim(c: &mut Criterion) {
    let params = RingParams {
        partitions: 1024,
        n: 3,
    };
    let all = members(101, 5);
    c.bench_function("claim_fresh/q1024_nodes100", |b| {
        b.iter(|| Ring::claim(None, black_box(&all[..100]), params).unwrap())
    });
    let before = Ring::claim(None, &all[..100], params).unwrap();
    c.bench_function("claim_join/q1024_nodes100", |b| {
        b.iter(|| Ring::claim(Some(&before), black_box(&all), params).unwrap())
    });
    let big = RingParams {
        partitions: 65536,
        n: 3,
    };
    let many = members(1000, 10);
    let mut group = c.benchmark_group("claim_large");
    group.sample_size(10);
    group.bench_function("fresh/q65536_nodes1000", |b| {
        b.iter(|| Ring::claim(None, black_box(&many), big).unwrap())
    });
    group.finish();
}

criterion_group!(benches, lookup, claim);
criterion_main!(benches);
