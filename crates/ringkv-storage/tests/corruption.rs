//! A stored value whose bytes changed is reported as `StorageError::Corrupt`, never returned
//! as data. The bytes are changed through fjall directly, behind the engine's back.

mod common;

use std::path::Path;

use bytes::Bytes;
use common::*;
use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use ringkv_core::merkle::LeafIndex;
use ringkv_storage::layout::{
    FRAME_HEADER_BYTES, HINTS_KEYSPACE, LEAVES_KEYSPACE, META_KEYSPACE, RECORDS_KEYSPACE, hint_key,
    record_key,
};
use ringkv_storage::{FjallEngine, FjallOptions, Hint, HintStore, StorageEngine, StorageError};

/// Flips one bit at `offset` of every value in `keyspace`.
fn flip_values(dir: &Path, keyspace: &str, offset: usize) {
    let db = Database::builder(dir).open().unwrap();
    let ks = db
        .keyspace(keyspace, KeyspaceCreateOptions::default)
        .unwrap();
    let entries: Vec<_> = ks.iter().map(|g| g.into_inner().unwrap()).collect();
    assert!(!entries.is_empty(), "nothing stored in {keyspace}");
    for (k, v) in entries {
        let mut v = v.to_vec();
        let at = offset.min(v.len() - 1);
        v[at] ^= 0x04;
        ks.insert(k, v).unwrap();
    }
    db.persist(PersistMode::SyncAll).unwrap();
}

fn is_corrupt<T: std::fmt::Debug>(r: Result<T, StorageError>, naming: &str) -> bool {
    match r {
        Err(StorageError::Corrupt { what, detail }) => {
            assert!(
                what.contains(naming),
                "{what:?} should name {naming:?} ({detail})"
            );
            true
        }
        other => panic!("expected Corrupt naming {naming:?}, got {other:?}"),
    }
}

#[test]
fn a_flipped_record_byte_is_corrupt_on_every_read_path() {
    // Payload, checksum and version byte: each flip is caught.
    for offset in [FRAME_HEADER_BYTES + 3, 4, 0] {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(2);
        {
            let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
            put(&engine, p, b"victim", "precious");
        }
        flip_values(dir.path(), RECORDS_KEYSPACE, offset);
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        assert!(is_corrupt(engine.get(p, b"victim"), "victim"));
        assert!(is_corrupt(engine.scan(p, None, 10), "victim"));
        // The leaf scan (anti-entropy) lists it and serves nothing of it.
        let leaf = engine.scan_leaf(p, LeafIndex::of_key(b"victim")).unwrap();
        assert!(leaf.entries.is_empty());
        assert_eq!(leaf.unreadable, vec![Bytes::from_static(b"victim")]);
        assert!(is_corrupt(
            engine.update(p, b"victim", &mut |_| None),
            "victim"
        ));
    }
}

#[test]
fn a_readable_scan_lists_a_corrupt_record_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let p = partition(2);
    let keys: [&[u8]; 3] = [b"a-before", b"victim", b"z-after"];
    {
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        for key in keys {
            put(&engine, p, key, "precious");
        }
    }
    // Only the victim's value is changed.
    {
        let db = Database::builder(dir.path()).open().unwrap();
        let ks = db
            .keyspace(RECORDS_KEYSPACE, KeyspaceCreateOptions::default)
            .unwrap();
        let victim = record_key(p, b"victim");
        let mut v = ks.get(&victim).unwrap().unwrap().to_vec();
        v[FRAME_HEADER_BYTES + 3] ^= 0x04;
        ks.insert(&victim, v).unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    assert!(is_corrupt(engine.scan(p, None, 10), "victim"));
    let all = engine.scan_readable(p, None, 10).unwrap();
    // Storage order is by Merkle leaf, then key: compare as sets.
    let mut readable: Vec<Bytes> = all.entries.iter().map(|(k, _)| k.clone()).collect();
    readable.sort();
    assert_eq!(
        readable,
        [
            Bytes::from_static(b"a-before"),
            Bytes::from_static(b"z-after")
        ]
    );
    assert_eq!(all.unreadable, [Bytes::from_static(b"victim")]);
    assert_eq!(all.examined, 3);
    // Each key's Merkle leaf scan serves it, or lists it when it is the victim.
    for key in keys {
        let leaf = engine.scan_leaf(p, LeafIndex::of_key(key)).unwrap();
        let served = leaf.entries.iter().any(|(k, _)| k.as_ref() == key);
        let listed = leaf.unreadable.iter().any(|k| k.as_ref() == key);
        assert_eq!(
            (served, listed),
            (key != b"victim", key == b"victim"),
            "{key:?}"
        );
    }
    // One key at a time, resuming after `last`, the walk meets every key once and ends.
    let mut after: Option<Bytes> = None;
    let mut seen = Vec::new();
    loop {
        let step = engine.scan_readable(p, after.as_deref(), 1).unwrap();
        if step.examined == 0 {
            break;
        }
        seen.extend(step.entries.into_iter().map(|(k, _)| k));
        seen.extend(step.unreadable);
        after = step.last;
        assert!(seen.len() <= 3, "the walk does not end");
    }
    seen.sort();
    assert_eq!(seen, keys.map(Bytes::from_static));
}

#[test]
fn a_corrupt_merkle_leaf_is_rebuilt_corrupt_meta_is_an_error_and_a_corrupt_hint_is_passed_over_then_replaced()
 {
    let dir = tempfile::tempdir().unwrap();
    let p = partition(3);
    let root = {
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        put(&engine, p, b"k", "v");
        put(&engine, p, b"k2", "v2");
        engine.put_meta("ring", b"state").unwrap();
        let hint = Hint {
            target: node(1),
            partition: p,
            key: Bytes::from_static(b"hinted"),
            versions: write(None, "v", &replica(0), false),
        };
        engine.hint_store().unwrap().push(hint).unwrap();
        engine.merkle(p).unwrap().root()
    };
    for ks in [LEAVES_KEYSPACE, META_KEYSPACE, HINTS_KEYSPACE] {
        flip_values(dir.path(), ks, FRAME_HEADER_BYTES);
    }
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    // Leaves are derived from the records: rebuilt (and stored), and the partition writable.
    assert_eq!(engine.merkle(p).unwrap().root(), root);
    put(&engine, p, b"k3", "v3");
    let root = engine.merkle(p).unwrap().root();
    drop(engine);
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    assert_eq!(
        engine.merkle(p).unwrap().root(),
        root,
        "the rebuilt leaves were stored"
    );
    assert!(is_corrupt(engine.get_meta("ring"), "ring"));
    // A hint that fails its checksum is passed over by delivery, neither served nor dropped.
    let hints = engine.hint_store().unwrap();
    assert_eq!(hints.pending(&node(1), None, 10).unwrap(), []);
    assert_eq!(hints.len(), 1);
    // A new hint for the same key replaces it (before, every later hint for that key failed
    // on the unreadable one, so this node could never be its fallback again).
    let again = Hint {
        target: node(1),
        partition: p,
        key: Bytes::from_static(b"hinted"),
        versions: write(None, "again", &replica(1), false),
    };
    hints.push(again.clone()).unwrap();
    assert_eq!(hints.pending(&node(1), None, 10).unwrap(), [again]);
    assert_eq!(hints.len(), 1, "replaced, not added");
    // The record itself is intact.
    assert_eq!(values(&engine.get(p, b"k").unwrap().unwrap()), ["v"]);
}

/// A hint key that does not decode (its target is not a node id) is passed over when the
/// store lists its targets: the other targets' hints are still found and delivered (before,
/// listing failed at that key, and no hint was delivered at all).
#[test]
fn a_hint_key_that_does_not_decode_does_not_hide_the_other_targets() {
    let dir = tempfile::tempdir().unwrap();
    let p = partition(5);
    {
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        for target in [node(1), node(2)] {
            let hint = Hint {
                target,
                partition: p,
                key: Bytes::from_static(b"hinted"),
                versions: write(None, "v", &replica(0), false),
            };
            engine.hint_store().unwrap().push(hint).unwrap();
        }
    }
    {
        let db = Database::builder(dir.path()).open().unwrap();
        let ks = db
            .keyspace(HINTS_KEYSPACE, KeyspaceCreateOptions::default)
            .unwrap();
        // Sorts before both targets' hints: a target length of 1 naming "!" (not a node id).
        ks.insert([1u8, b'!', 0, 0, 0, 0], b"x").unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    let hints = engine.hint_store().unwrap();
    assert_eq!(hints.targets().unwrap(), [node(1), node(2)]);
    assert_eq!(hints.pending(&node(2), None, 10).unwrap().len(), 1);
}

#[test]
fn a_record_that_decodes_to_a_broken_version_set_is_corrupt() {
    // A valid checksum over a payload that is not a well-formed VersionSet.
    let dir = tempfile::tempdir().unwrap();
    let p = partition(4);
    drop(FjallEngine::open(dir.path(), FjallOptions::default()).unwrap());
    {
        let db = Database::builder(dir.path()).open().unwrap();
        let ks = db
            .keyspace(RECORDS_KEYSPACE, KeyspaceCreateOptions::default)
            .unwrap();
        ks.insert(
            record_key(p, b"garbage"),
            ringkv_storage::layout::frame(&[0xff; 7]),
        )
        .unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    assert!(is_corrupt(engine.get(p, b"garbage"), "garbage"));
}

#[test]
fn delivery_walks_past_a_corrupt_hint_to_the_ones_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = partition(3);
    let hint = |key: &'static str| Hint {
        target: node(1),
        partition: p,
        key: Bytes::from_static(key.as_bytes()),
        versions: write(None, key, &replica(0), false),
    };
    {
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        for key in ["h-a", "h-b", "h-c"] {
            engine.hint_store().unwrap().push(hint(key)).unwrap();
        }
    }
    // Only h-b's bytes change.
    {
        let db = Database::builder(dir.path()).open().unwrap();
        let ks = db
            .keyspace(HINTS_KEYSPACE, KeyspaceCreateOptions::default)
            .unwrap();
        let victim = hint_key(&node(1), p, b"h-b");
        let mut v = ks.get(&victim).unwrap().unwrap().to_vec();
        v[FRAME_HEADER_BYTES + 1] ^= 0x04;
        ks.insert(&victim, v).unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    let hints = engine.hint_store().unwrap();
    let keys = |batch: Vec<Hint>| batch.into_iter().map(|h| h.key).collect::<Vec<_>>();
    assert_eq!(
        keys(hints.pending(&node(1), None, 10).unwrap()),
        ["h-a", "h-c"]
    );
    // One at a time, resuming after each: h-b is passed over, h-c is reached.
    assert_eq!(keys(hints.pending(&node(1), None, 1).unwrap()), ["h-a"]);
    assert_eq!(
        keys(hints.pending(&node(1), Some((p, b"h-a")), 1).unwrap()),
        ["h-c"]
    );
    assert_eq!(hints.len(), 3, "the corrupt hint is kept");
}
