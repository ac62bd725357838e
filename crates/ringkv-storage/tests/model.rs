//! The in-memory engine is the model: random operation sequences applied to it and to the
//! fjall engine (reopened at random points) must give the same observable results, Merkle
//! roots included. Same for the two hint stores.

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use ringkv_core::merkle::{LeafIndex, MERKLE_LEAVES};
use ringkv_core::{PartitionId, VersionSet};
use ringkv_storage::{
    DEFAULT_READ_CACHE_BYTES, FjallEngine, FjallHintStore, FjallOptions, Hint, HintStore,
    MemoryEngine, MemoryHintStore, StorageEngine, StorageError,
};

const MODEL_PARTITIONS: u32 = 3;
const MODEL_KEYS: u8 = 12;

#[derive(Debug, Clone)]
enum Op {
    Write {
        p: u32,
        key: u8,
        value: u8,
        replica: usize,
        replace: bool,
    },
    Keep {
        p: u32,
        key: u8,
    },
    Get {
        p: u32,
        key: u8,
    },
    Remove {
        p: u32,
        key: u8,
    },
    Scan {
        p: u32,
        after: Option<u8>,
        limit: usize,
    },
    ScanLeaf {
        p: u32,
        key: u8,
    },
    Drop {
        p: u32,
    },
    PutMeta {
        name: u8,
        value: u8,
    },
    Reopen,
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..MODEL_PARTITIONS;
    let k = 0..MODEL_KEYS;
    prop_oneof![
        6 => (p.clone(), k.clone(), any::<u8>(), 0..3usize, any::<bool>())
            .prop_map(|(p, key, value, replica, replace)| Op::Write { p, key, value, replica, replace }),
        1 => (p.clone(), k.clone()).prop_map(|(p, key)| Op::Keep { p, key }),
        3 => (p.clone(), k.clone()).prop_map(|(p, key)| Op::Get { p, key }),
        2 => (p.clone(), k.clone()).prop_map(|(p, key)| Op::Remove { p, key }),
        2 => (p.clone(), proptest::option::of(k.clone()), 0..6usize)
            .prop_map(|(p, after, limit)| Op::Scan { p, after, limit }),
        1 => (p.clone(), k).prop_map(|(p, key)| Op::ScanLeaf { p, key }),
        1 => p.prop_map(|p| Op::Drop { p }),
        1 => (0..3u8, any::<u8>()).prop_map(|(name, value)| Op::PutMeta { name, value }),
        1 => Just(Op::Reopen),
    ]
}

/// What an operation returned, in a comparable form.
#[derive(Debug, PartialEq)]
enum Outcome {
    Stored(Option<VersionSet>),
    Unit,
    Entries(Vec<(Bytes, VersionSet)>),
}

fn apply(engine: &dyn StorageEngine, op: &Op) -> Result<Outcome, StorageError> {
    Ok(match op {
        Op::Write {
            p,
            key: k,
            value,
            replica: r,
            replace,
        } => {
            let r = replica(*r);
            let value = value.to_string();
            Outcome::Stored(engine.update(partition(*p), &key(*k), &mut |cur| {
                Some(write(cur, &value, &r, *replace))
            })?)
        }
        Op::Keep { p, key: k } => {
            Outcome::Stored(engine.update(partition(*p), &key(*k), &mut |_| None)?)
        }
        Op::Get { p, key: k } => Outcome::Stored(engine.get(partition(*p), &key(*k))?),
        Op::Remove { p, key: k } => {
            engine.remove(partition(*p), &key(*k))?;
            Outcome::Unit
        }
        Op::Scan { p, after, limit } => {
            let after = after.map(key);
            Outcome::Entries(engine.scan(partition(*p), after.as_deref(), *limit)?)
        }
        Op::ScanLeaf { p, key: k } => Outcome::Entries(
            engine
                .scan_leaf(partition(*p), LeafIndex::of_key(&key(*k)))?
                .entries,
        ),
        Op::Drop { p } => {
            engine.drop_partition(partition(*p))?;
            Outcome::Unit
        }
        Op::PutMeta { name, value } => {
            engine.put_meta(&format!("meta-{name}"), &[*value])?;
            Outcome::Unit
        }
        Op::Reopen => Outcome::Unit,
    })
}

/// Compares everything the engines let one observe.
fn assert_same_state(model: &dyn StorageEngine, real: &dyn StorageEngine) {
    assert_eq!(model.partitions().unwrap(), real.partitions().unwrap());
    for p in (0..MODEL_PARTITIONS).map(partition) {
        let (mt, rt) = (model.merkle(p).unwrap(), real.merkle(p).unwrap());
        assert_eq!(
            mt.root(),
            rt.root(),
            "Merkle root of partition {}",
            p.index()
        );
        assert_eq!(mt, rt);
        assert_eq!(
            rt,
            rebuilt_tree(real, p),
            "stored tree matches the stored records"
        );
        assert_eq!(scan_all(model, p, 1000), scan_all(real, p, 1000));
        for leaf in (0..MERKLE_LEAVES)
            .step_by(37)
            .map(|i| LeafIndex::new(i).unwrap())
        {
            assert_eq!(
                model.scan_leaf(p, leaf).unwrap(),
                real.scan_leaf(p, leaf).unwrap()
            );
        }
    }
    for name in 0..3 {
        let name = format!("meta-{name}");
        assert_eq!(
            model.get_meta(&name).unwrap(),
            real.get_meta(&name).unwrap()
        );
    }
}

fn open(dir: &Path) -> FjallEngine {
    open_with_cache(dir, DEFAULT_READ_CACHE_BYTES)
}

fn open_with_cache(dir: &Path, read_cache_bytes: usize) -> FjallEngine {
    let options = FjallOptions {
        read_cache_bytes,
        ..FjallOptions::default()
    };
    FjallEngine::open(dir, options).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fjall_engine_behaves_like_the_model(
        ops in proptest::collection::vec(op(), 1..40),
        // The read cache off, small enough to evict all the time, and the default.
        cache in prop_oneof![Just(0usize), Just(16 * 1024), Just(DEFAULT_READ_CACHE_BYTES)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let model = MemoryEngine::new();
        let mut real = Some(open_with_cache(dir.path(), cache));
        for op in &ops {
            if let Op::Reopen = op {
                drop(real.take());
                real = Some(open_with_cache(dir.path(), cache));
                assert_same_state(&model, real.as_ref().unwrap());
            }
            let expected = apply(&model, op).unwrap();
            let got = apply(real.as_ref().unwrap(), op).unwrap();
            prop_assert_eq!(expected, got, "after {:?}", op);
        }
        assert_same_state(&model, real.as_ref().unwrap());
        drop(real.take());
        assert_same_state(&model, &open(dir.path()));
    }
}

const MODEL_MAX_HINTS: usize = 6;

#[derive(Debug, Clone)]
enum HintOp {
    Push {
        target: usize,
        p: u32,
        key: u8,
        value: u8,
        replica: usize,
    },
    /// Reads `pending` for a target, after a cursor or from the start, and remembers the
    /// hints, as a delivery would.
    Read {
        target: usize,
        after: Option<(u32, u8)>,
        limit: usize,
    },
    /// Acknowledges the `n`-th remembered hint (possibly changed since it was read).
    Ack {
        n: usize,
    },
    Reopen,
}

fn hint_op() -> impl Strategy<Value = HintOp> {
    prop_oneof![
        5 => (0..3usize, 0..2u32, 0..5u8, any::<u8>(), 0..2usize)
            .prop_map(|(target, p, key, value, replica)| HintOp::Push { target, p, key, value, replica }),
        2 => (0..3usize, proptest::option::of((0..2u32, 0..5u8)), 0..5usize)
            .prop_map(|(target, after, limit)| HintOp::Read { target, after, limit }),
        3 => (0..16usize).prop_map(|n| HintOp::Ack { n }),
        1 => Just(HintOp::Reopen),
    ]
}

fn hint_store(engine: &FjallEngine) -> Arc<FjallHintStore> {
    engine.hint_store().unwrap()
}

fn push_result(r: Result<(), StorageError>) -> Result<(), String> {
    r.map_err(|e| match e {
        StorageError::HintBacklogFull { max } => format!("full at {max}"),
        other => panic!("unexpected error {other}"),
    })
}

fn assert_same_hints(model: &MemoryHintStore, real: &dyn HintStore) {
    assert_eq!(model.len(), real.len());
    assert_eq!(model.targets().unwrap(), real.targets().unwrap());
    for t in 0..3 {
        assert_eq!(
            model.pending(&node(t), None, 100).unwrap(),
            real.pending(&node(t), None, 100).unwrap()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fjall_hint_store_behaves_like_the_model(ops in proptest::collection::vec(hint_op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let options = FjallOptions { max_hints: MODEL_MAX_HINTS, ..FjallOptions::default() };
        let model = MemoryHintStore::new(MODEL_MAX_HINTS);
        let mut engine = Some(FjallEngine::open(dir.path(), options.clone()).unwrap());
        let mut real = hint_store(engine.as_ref().unwrap());
        let mut delivered: Vec<Hint> = Vec::new();
        for op in &ops {
            match op {
                HintOp::Push { target, p, key: k, value, replica: r } => {
                    let current = model.pending(&node(*target), None, 100).unwrap();
                    let id = (partition(*p), Bytes::from(key(*k)));
                    let held = current.iter().find(|h| (h.partition, h.key.clone()) == id).map(|h| &h.versions);
                    let versions = write(held, &value.to_string(), &replica(*r), false);
                    let hint = Hint { target: node(*target), partition: id.0, key: id.1, versions };
                    let expected = push_result(model.push(hint.clone()));
                    prop_assert_eq!(expected, push_result(real.push(hint)));
                    prop_assert!(model.len() <= MODEL_MAX_HINTS);
                }
                HintOp::Read { target, after, limit } => {
                    let after_key = after.map(|(p, k)| (partition(p), key(k)));
                    let after = after_key.as_ref().map(|(p, k)| (*p, k.as_ref()));
                    let got = real.pending(&node(*target), after, *limit).unwrap();
                    prop_assert_eq!(&model.pending(&node(*target), after, *limit).unwrap(), &got);
                    delivered.extend(got);
                }
                HintOp::Ack { n } => {
                    if let Some(hint) = delivered.get(*n) {
                        model.acknowledge(hint).unwrap();
                        real.acknowledge(hint).unwrap();
                    }
                }
                HintOp::Reopen => {
                    drop(real);
                    drop(engine.take());
                    engine = Some(FjallEngine::open(dir.path(), options.clone()).unwrap());
                    real = hint_store(engine.as_ref().unwrap());
                }
            }
            assert_same_hints(&model, &*real);
        }
    }
}

/// The laws the hint-store model test relies on, stated directly for both stores.
fn hint_store_laws(store: &dyn HintStore, max_hints: usize) {
    let p = partition(1);
    let hint = |t: usize, k: &str, versions: VersionSet| Hint {
        target: node(t),
        partition: p,
        key: Bytes::copy_from_slice(k.as_bytes()),
        versions,
    };
    let v1 = write(None, "one", &replica(0), false);
    let v2 = write(None, "two", &replica(1), false);
    store.push(hint(1, "a", v1.clone())).unwrap();
    store.push(hint(1, "a", v2.clone())).unwrap();
    assert_eq!(store.len(), 1, "a second hint for the same key is merged");
    let pending = store.pending(&node(1), None, 10).unwrap();
    assert_eq!(values(&pending[0].versions), ["one", "two"]);

    // Acknowledging what was read before a merge keeps the merged hint.
    let delivered = pending[0].clone();
    store
        .push(hint(1, "a", write(None, "three", &replica(2), false)))
        .unwrap();
    store.acknowledge(&delivered).unwrap();
    assert_eq!(store.len(), 1, "changed since delivery: kept");
    let fresh = store.pending(&node(1), None, 10).unwrap();
    store.acknowledge(&fresh[0]).unwrap();
    assert!(store.is_empty());
    assert!(store.targets().unwrap().is_empty());

    for i in 0..max_hints {
        store
            .push(hint(i % 3, &format!("k{i}"), v1.clone()))
            .unwrap();
    }
    assert!(matches!(
        store.push(hint(0, "one-too-many", v1.clone())),
        Err(StorageError::HintBacklogFull { max }) if max == max_hints
    ));
    store.push(hint(0, "k0", v2)).unwrap();
    assert_eq!(
        store.len(),
        max_hints,
        "merging into a held hint is allowed at the bound"
    );
    assert_eq!(store.targets().unwrap(), vec![node(0), node(1), node(2)]);
    assert_eq!(store.pending(&node(0), None, 1).unwrap().len(), 1);

    // A cursor walks a target's hints in order, strictly after the (partition, key) given,
    // whether or not that key is held.
    let keys = |hints: Vec<Hint>| -> Vec<Bytes> { hints.into_iter().map(|h| h.key).collect() };
    let first = store.pending(&node(0), None, 1).unwrap();
    assert_eq!(keys(first), [Bytes::from_static(b"k0")]);
    let next = store.pending(&node(0), Some((p, b"k0")), 1).unwrap();
    assert_eq!(keys(next), [Bytes::from_static(b"k3")]);
    let between = store.pending(&node(0), Some((p, b"k1")), 10).unwrap();
    assert_eq!(keys(between), [Bytes::from_static(b"k3")]);
    assert!(
        store
            .pending(&node(0), Some((p, b"k3")), 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .pending(&node(0), Some((partition(0), b"zzz")), 10)
            .unwrap()
            .len()
            == 2,
        "an earlier partition's key sorts before every key of a later one"
    );
}

/// Acknowledging a delivered hint compares the stored hint's set with the delivered one
/// whole: a different set with the same 64-bit digest (a hint merged after delivery began
/// could be one) keeps the stored hint (with a digest comparison it was deleted undelivered).
fn hint_acknowledgement_compares_whole_sets(store: &dyn HintStore) {
    let (stored, delivered) = colliding_sets();
    let hint = |versions: VersionSet| Hint {
        target: node(7),
        partition: partition(2),
        key: Bytes::from_static(b"h"),
        versions,
    };
    store.push(hint(stored.clone())).unwrap();
    store.acknowledge(&hint(delivered)).unwrap();
    assert_eq!(
        store.get(&node(7), partition(2), b"h").unwrap(),
        Some(stored.clone()),
        "a hint was deleted on the acknowledgement of a different set with its digest"
    );
    store.acknowledge(&hint(stored)).unwrap();
    assert!(store.is_empty());
}

#[test]
fn memory_hint_store_keeps_the_laws() {
    hint_acknowledgement_compares_whole_sets(&MemoryHintStore::new(5));
    hint_store_laws(&MemoryHintStore::new(5), 5);
}

#[test]
fn fjall_hint_store_keeps_the_laws_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = FjallOptions {
        max_hints: 5,
        ..FjallOptions::default()
    };
    let engine = FjallEngine::open(dir.path(), options.clone()).unwrap();
    let store = engine.hint_store().unwrap();
    hint_acknowledgement_compares_whole_sets(&*store);
    hint_store_laws(&*store, 5);
    let before: Vec<Vec<Hint>> = (0..3)
        .map(|t| store.pending(&node(t), None, 10).unwrap())
        .collect();
    drop(store);
    drop(engine);
    let engine = FjallEngine::open(dir.path(), options).unwrap();
    let store = engine.hint_store().unwrap();
    assert_eq!(store.len(), 5);
    let after: Vec<Vec<Hint>> = (0..3)
        .map(|t| store.pending(&node(t), None, 10).unwrap())
        .collect();
    assert_eq!(before, after);
    assert!(matches!(
        store.push(Hint {
            target: node(0),
            partition: partition(2),
            key: Bytes::from_static(b"new"),
            versions: write(None, "x", &replica(0), false),
        }),
        Err(StorageError::HintBacklogFull { max: 5 })
    ));
}

#[test]
fn an_unused_partition_is_empty_in_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    let real = open(dir.path());
    let p = PartitionId::new(MODEL_PARTITIONS, TEST_PARTITIONS).unwrap();
    assert_same_state(&MemoryEngine::new(), &real);
    assert!(real.scan(p, None, 10).unwrap().is_empty());
}
