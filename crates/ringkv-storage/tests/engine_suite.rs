//! One test suite, run against every engine: what the in-memory model does, the durable
//! engine must do too.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use ringkv_core::merkle::{LeafIndex, MERKLE_LEAVES, MerkleTree};
use ringkv_storage::{
    DROP_BATCH_KEYS, FjallEngine, FjallOptions, MemoryEngine, SCAN_BYTES_MAX, StorageEngine,
    StorageError,
};

fn get_update_remove(engine: &dyn StorageEngine) {
    let p = partition(3);
    assert_eq!(engine.get(p, b"k").unwrap(), None);
    let stored = put(engine, p, b"k", "v1");
    assert_eq!(values(&stored), ["v1"]);
    assert_eq!(engine.get(p, b"k").unwrap(), Some(stored.clone()));
    assert_eq!(
        engine.get(partition(4), b"k").unwrap(),
        None,
        "keys are per partition"
    );

    // `f` sees the current set; returning None leaves it and returns it.
    let mut seen = None;
    let after = engine
        .update(p, b"k", &mut |cur| {
            seen = cur.cloned();
            None
        })
        .unwrap();
    assert_eq!(seen.as_ref(), Some(&stored));
    assert_eq!(after, Some(stored.clone()));
    assert_eq!(engine.update(p, b"absent", &mut |_| None).unwrap(), None);
    assert_eq!(engine.get(p, b"absent").unwrap(), None);

    let two = put(engine, p, b"k", "v2");
    assert_eq!(values(&two), ["v1", "v2"], "a blind write is a sibling");
    assert_ne!(engine.merkle(p).unwrap(), MerkleTree::new());
    engine.remove(p, b"k").unwrap();
    assert_eq!(engine.get(p, b"k").unwrap(), None);
    assert_eq!(
        engine.merkle(p).unwrap(),
        MerkleTree::new(),
        "an emptied partition has the empty tree"
    );
    engine.remove(p, b"k").unwrap();

    let long = vec![b'x'; ringkv_core::constants::MAX_KEY_BYTES + 1];
    assert!(matches!(
        engine.get(p, &long),
        Err(StorageError::KeyTooLong { .. })
    ));
    assert!(matches!(
        engine.update(p, &long, &mut |_| None),
        Err(StorageError::KeyTooLong { .. })
    ));
}

fn scan_paginates(engine: &dyn StorageEngine) {
    let p = partition(1);
    let keys: BTreeSet<Bytes> = (0..100).map(|i| Bytes::from(format!("key-{i}"))).collect();
    for k in &keys {
        put(engine, p, k, "v");
    }
    put(engine, partition(0), b"other-before", "v");
    put(engine, partition(2), b"other-after", "v");
    for page in [1, 7, 100, 1000] {
        let all = scan_all(engine, p, page);
        let got: Vec<Bytes> = all.iter().map(|(k, _)| k.clone()).collect();
        let order: Vec<(LeafIndex, Bytes)> = got
            .iter()
            .map(|k| (LeafIndex::of_key(k), k.clone()))
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "storage order is (leaf, key), no duplicates"
        );
        assert_eq!(
            got.into_iter().collect::<BTreeSet<_>>(),
            keys,
            "page size {page}"
        );
    }
    assert!(engine.scan(p, None, 0).unwrap().is_empty());
    assert!(engine.scan(partition(9), None, 10).unwrap().is_empty());
    // Resuming after a key that is not stored works too.
    let first = engine.scan(p, None, 1).unwrap();
    engine.remove(p, &first[0].0).unwrap();
    let resumed = engine.scan(p, Some(&first[0].0), 1000).unwrap();
    assert_eq!(resumed.len(), 99);
}

/// A partition walk holds about `SCAN_BYTES_MAX` of records at a time however many keys it
/// asks for, and `more` says whether the partition goes on; following `last` sees every key
/// exactly once.
fn scan_readable_is_bounded_by_bytes(engine: &dyn StorageEngine) {
    let p = partition(3);
    let value = "x".repeat(1024 * 1024);
    let count = 20;
    for i in 0..count {
        put(engine, p, format!("big-{i:02}").as_bytes(), &value);
    }
    let (mut after, mut seen, mut scans) = (None::<Bytes>, Vec::new(), 0);
    loop {
        scans += 1;
        assert!(scans <= count + 1, "the walk does not end");
        let step = engine.scan_readable(p, after.as_deref(), 1000).unwrap();
        let bytes: usize = step.entries.iter().map(|(_, v)| v.value_bytes()).sum();
        assert!(
            step.examined >= 1 && bytes <= SCAN_BYTES_MAX + value.len(),
            "{} records, {bytes} bytes in one scan",
            step.examined
        );
        seen.extend(step.entries.into_iter().map(|(k, _)| k));
        if !step.more {
            break;
        }
        after = step.last;
    }
    assert!(scans >= 3, "20 MiB came in {scans} scans");
    let distinct: BTreeSet<Bytes> = seen.iter().cloned().collect();
    assert_eq!((seen.len(), distinct.len()), (count, count));
    // The key limit still applies, and a scan that ends the partition says so.
    let one = engine.scan_readable(p, None, 1).unwrap();
    assert!(one.examined == 1 && one.more);
    assert!(!engine.scan_readable(partition(9), None, 10).unwrap().more);
}

fn scan_leaf_finds_exactly_a_leafs_keys(engine: &dyn StorageEngine) {
    let p = partition(5);
    let keys: Vec<Bytes> = (0..300)
        .map(|i| Bytes::from(format!("leafy-{i}")))
        .collect();
    for k in &keys {
        put(engine, p, k, "v");
    }
    put(engine, partition(6), b"leafy-0", "v");
    let tree = engine.merkle(p).unwrap();
    let mut seen = BTreeSet::new();
    for i in 0..MERKLE_LEAVES {
        let leaf = LeafIndex::new(i).unwrap();
        let in_leaf = engine.scan_leaf(p, leaf).unwrap().entries;
        assert!(in_leaf.iter().all(|(k, _)| LeafIndex::of_key(k) == leaf));
        assert_eq!(in_leaf.is_empty(), tree.leaf(leaf) == 0, "leaf {i}");
        seen.extend(in_leaf.into_iter().map(|(k, _)| k));
    }
    assert_eq!(seen, keys.into_iter().collect());
}

fn merkle_matches_the_records(engine: &dyn StorageEngine) {
    let p = partition(7);
    for i in 0..50 {
        put(
            engine,
            p,
            format!("m{}", i % 20).as_bytes(),
            &format!("v{i}"),
        );
    }
    for i in 0..5 {
        engine.remove(p, format!("m{i}").as_bytes()).unwrap();
    }
    assert_eq!(engine.merkle(p).unwrap(), rebuilt_tree(engine, p));
    assert_eq!(engine.merkle(partition(8)).unwrap(), MerkleTree::new());
}

fn partitions_lists_nonempty_ones(engine: &dyn StorageEngine) {
    assert!(engine.partitions().unwrap().is_empty());
    for i in [9, 2, 15, 0] {
        put(engine, partition(i), b"k", "v");
    }
    put(engine, partition(2), b"k2", "v");
    let expect: Vec<_> = [0, 2, 9, 15].into_iter().map(partition).collect();
    assert_eq!(engine.partitions().unwrap(), expect);
    engine.remove(partition(9), b"k").unwrap();
    let expect: Vec<_> = [0, 2, 15].into_iter().map(partition).collect();
    assert_eq!(engine.partitions().unwrap(), expect);
}

fn drop_partition_drops_only_it(engine: &dyn StorageEngine) {
    let (doomed, kept) = (partition(4), partition(5));
    // More than one drop batch, written from a few threads to share fsyncs.
    let keys = DROP_BATCH_KEYS + 100;
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for i in (t..keys).step_by(4) {
                    put(engine, doomed, format!("d{i}").as_bytes(), "v");
                }
            });
        }
    });
    put(engine, kept, b"d1", "v");
    let kept_tree = engine.merkle(kept).unwrap();
    engine.drop_partition(doomed).unwrap();
    assert!(engine.scan(doomed, None, 10).unwrap().is_empty());
    assert_eq!(engine.get(doomed, b"d1").unwrap(), None);
    assert_eq!(engine.merkle(doomed).unwrap(), MerkleTree::new());
    assert_eq!(engine.partitions().unwrap(), vec![kept]);
    assert_eq!(engine.merkle(kept).unwrap(), kept_tree);
    // The partition can be written again, with a consistent tree.
    put(engine, doomed, b"again", "v");
    assert_eq!(engine.merkle(doomed).unwrap(), rebuilt_tree(engine, doomed));
    engine.drop_partition(partition(12)).unwrap();
}

fn meta_round_trips(engine: &dyn StorageEngine) {
    assert_eq!(engine.get_meta("ring").unwrap(), None);
    engine.put_meta("ring", b"state-1").unwrap();
    engine.put_meta("node", b"").unwrap();
    assert_eq!(
        engine.get_meta("ring").unwrap().as_deref(),
        Some(&b"state-1"[..])
    );
    assert_eq!(engine.get_meta("node").unwrap().as_deref(), Some(&b""[..]));
    engine.put_meta("ring", b"state-2").unwrap();
    assert_eq!(
        engine.get_meta("ring").unwrap().as_deref(),
        Some(&b"state-2"[..])
    );
}

fn concurrent_updates_are_atomic(engine: &dyn StorageEngine) {
    // Each update replaces the counter with counter + 1: a lost update shows as a low total.
    let p = partition(10);
    let (threads, per_thread) = (8, 40);
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let r = replica(t);
                for i in 0..per_thread {
                    let key = format!("counter-{}", i % 3);
                    engine
                        .update(p, key.as_bytes(), &mut |cur| {
                            let n: u64 = cur.map_or(0, |c| values(c)[0].parse().unwrap());
                            Some(write(cur, &(n + 1).to_string(), &r, true))
                        })
                        .unwrap();
                }
            });
        }
    });
    let total: u64 = (0..3)
        .map(|i| {
            let set = engine
                .get(p, format!("counter-{i}").as_bytes())
                .unwrap()
                .unwrap();
            assert_eq!(set.siblings().len(), 1);
            values(&set)[0].parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(total, threads as u64 * per_thread as u64);
    assert_eq!(engine.merkle(p).unwrap(), rebuilt_tree(engine, p));
}

fn reads_never_go_back_behind_a_finished_write(engine: &dyn StorageEngine) {
    // One writer raises a counter key by key; readers check every read shows at least the
    // last write that finished before the read began (a read cache filled with what a read
    // saw before a write would show an older value after it).
    use std::sync::atomic::{AtomicU64, Ordering};
    let p = partition(12);
    let keys = 64u64;
    let rounds = 60u64;
    let finished: Vec<AtomicU64> = (0..keys).map(|_| AtomicU64::new(0)).collect();
    let writing = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while writing.load(Ordering::SeqCst) {
                    for k in 0..keys {
                        let floor = finished[k as usize].load(Ordering::SeqCst);
                        let key = format!("monotonic-{k}");
                        let seen = engine
                            .get(p, key.as_bytes())
                            .unwrap()
                            .map_or(0, |set| values(&set)[0].parse::<u64>().unwrap());
                        assert!(
                            seen >= floor,
                            "{key}: read {seen} after write {floor} finished"
                        );
                    }
                }
            });
        }
        let r = replica(0);
        for i in 1..=rounds {
            for k in 0..keys {
                let key = format!("monotonic-{k}");
                engine
                    .update(p, key.as_bytes(), &mut |cur| {
                        Some(write(cur, &i.to_string(), &r, true))
                    })
                    .unwrap();
                finished[k as usize].store(i, Ordering::SeqCst);
            }
        }
        writing.store(false, Ordering::SeqCst);
    });
    for k in 0..keys {
        let set = engine
            .get(p, format!("monotonic-{k}").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(values(&set), vec![rounds.to_string()]);
    }
}

fn writes_racing_drops_keep_the_tree_consistent(engine: &dyn StorageEngine) {
    // Writers keep writing to a partition that is dropped under them; whatever survives, the
    // stored tree must equal the tree of the stored records.
    let p = partition(11);
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for i in 0..60 {
                    put(engine, p, format!("race-{}", (t + i) % 10).as_bytes(), "v");
                }
            });
        }
        s.spawn(move || {
            for _ in 0..10 {
                engine.drop_partition(p).unwrap();
            }
        });
    });
    assert_eq!(engine.merkle(p).unwrap(), rebuilt_tree(engine, p));
    put(engine, p, b"race-after", "v");
    assert_eq!(engine.merkle(p).unwrap(), rebuilt_tree(engine, p));
}

fn remove_if_keeps_a_key_that_changed(engine: &dyn StorageEngine) {
    let p = partition(5);
    let first = put(engine, p, b"k", "v1");
    let second = put(engine, p, b"k", "v2");
    assert!(
        !engine.remove_if(p, b"k", &first).unwrap(),
        "the key changed since it was read"
    );
    assert_eq!(engine.get(p, b"k").unwrap(), Some(second.clone()));
    assert!(engine.remove_if(p, b"k", &second).unwrap());
    assert_eq!(engine.get(p, b"k").unwrap(), None);
    assert!(!engine.remove_if(p, b"k", &second).unwrap());
    assert_eq!(engine.merkle(p).unwrap(), rebuilt_tree(engine, p));
}

/// `remove_if` compares whole sets: a set with the same 64-bit digest as the stored one, but
/// different, removes nothing (with a digest comparison it removed the stored write).
fn remove_if_keeps_a_different_set_with_the_same_digest(engine: &dyn StorageEngine) {
    let p = partition(5);
    let (stored, other) = colliding_sets();
    engine
        .update(p, b"k", &mut |_| Some(stored.clone()))
        .unwrap();
    assert!(
        !engine.remove_if(p, b"k", &other).unwrap(),
        "a different set with the same digest removed the stored one"
    );
    assert_eq!(engine.get(p, b"k").unwrap(), Some(stored.clone()));
    assert!(engine.remove_if(p, b"k", &stored).unwrap());
    assert_eq!(engine.get(p, b"k").unwrap(), None);
    assert_eq!(engine.merkle(p).unwrap(), rebuilt_tree(engine, p));
}

fn update_many_applies_each_key(engine: &dyn StorageEngine) {
    let p = partition(6);
    let held = put(engine, p, b"a", "mine");
    let elsewhere = MemoryEngine::new();
    let theirs_a = put(&elsewhere, p, b"a", "theirs");
    let theirs_b = put(&elsewhere, p, b"b", "new");
    let entries = vec![
        (Bytes::from_static(b"a"), theirs_a.clone()),
        (Bytes::from_static(b"b"), theirs_b.clone()),
    ];
    let mut calls = 0;
    engine
        .update_many(p, &entries, &mut |current, incoming| {
            calls += 1;
            Some(match current {
                Some(c) => c.sync(incoming),
                None => incoming.clone(),
            })
        })
        .unwrap();
    assert_eq!(calls, 2);
    assert_eq!(engine.get(p, b"a").unwrap(), Some(held.sync(&theirs_a)));
    assert_eq!(engine.get(p, b"b").unwrap(), Some(theirs_b));
    assert_eq!(engine.merkle(p).unwrap(), rebuilt_tree(engine, p));
    engine.update_many(p, &entries, &mut |_, _| None).unwrap();
    assert_eq!(
        scan_all(engine, p, 10).len(),
        2,
        "None leaves keys unchanged"
    );
}

macro_rules! engine_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            fn run(test: fn(&dyn StorageEngine)) {
                let (engine, _dir): (Arc<dyn StorageEngine>, Option<tempfile::TempDir>) = $make;
                test(&*engine);
            }

            #[test]
            fn get_update_remove() {
                run(super::get_update_remove)
            }
            #[test]
            fn remove_if_keeps_a_key_that_changed() {
                run(super::remove_if_keeps_a_key_that_changed)
            }
            #[test]
            fn remove_if_keeps_a_different_set_with_the_same_digest() {
                run(super::remove_if_keeps_a_different_set_with_the_same_digest)
            }
            #[test]
            fn update_many_applies_each_key() {
                run(super::update_many_applies_each_key)
            }
            #[test]
            fn scan_paginates() {
                run(super::scan_paginates)
            }
            #[test]
            fn scan_readable_is_bounded_by_bytes() {
                run(super::scan_readable_is_bounded_by_bytes)
            }
            #[test]
            fn scan_leaf_finds_exactly_a_leafs_keys() {
                run(super::scan_leaf_finds_exactly_a_leafs_keys)
            }
            #[test]
            fn merkle_matches_the_records() {
                run(super::merkle_matches_the_records)
            }
            #[test]
            fn partitions_lists_nonempty_ones() {
                run(super::partitions_lists_nonempty_ones)
            }
            #[test]
            fn drop_partition_drops_only_it() {
                run(super::drop_partition_drops_only_it)
            }
            #[test]
            fn meta_round_trips() {
                run(super::meta_round_trips)
            }
            #[test]
            fn concurrent_updates_are_atomic() {
                run(super::concurrent_updates_are_atomic)
            }
            #[test]
            fn reads_never_go_back_behind_a_finished_write() {
                run(super::reads_never_go_back_behind_a_finished_write)
            }
            #[test]
            fn writes_racing_drops_keep_the_tree_consistent() {
                run(super::writes_racing_drops_keep_the_tree_consistent)
            }
        }
    };
}

engine_suite!(memory, (Arc::new(MemoryEngine::new()), None));
engine_suite!(fjall, {
    let dir = tempfile::tempdir().unwrap();
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    (Arc::new(engine), Some(dir))
});
// The read cache so small that entries are evicted all the time: reads miss and fill it
// while writes update it.
engine_suite!(fjall_tiny_read_cache, {
    let dir = tempfile::tempdir().unwrap();
    let options = FjallOptions {
        read_cache_bytes: 64 * 400,
        ..FjallOptions::default()
    };
    let engine = FjallEngine::open(dir.path(), options).unwrap();
    (Arc::new(engine), Some(dir))
});
