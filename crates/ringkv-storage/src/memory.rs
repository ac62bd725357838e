//! The in-memory engine and hint store: the reference model every durable engine is tested
//! against. Nothing here survives the process; everything else (ordering, Merkle trees,
//! hint merging and bounds) behaves exactly as the durable engine must.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ringkv_core::merkle::{LeafIndex, MerkleTree};
use ringkv_core::{NodeId, PartitionId, VersionSet};

use crate::layout::{
    check_key, leaf_prefix, partition_of, partition_prefix, record_key, scan_start, user_key,
};
use crate::{Hint, HintStore, Key, SCAN_BYTES_MAX, Scanned, StorageEngine, StorageError};

#[derive(Default)]
struct MemoryState {
    /// Encoded record key (`layout::record_key`) to versions, so that the order is the
    /// durable engine's order.
    records: BTreeMap<Vec<u8>, VersionSet>,
    trees: HashMap<PartitionId, MerkleTree>,
    meta: BTreeMap<String, Vec<u8>>,
}

/// A `StorageEngine` in a `BTreeMap` behind one lock.
#[derive(Default)]
pub struct MemoryEngine {
    state: RwLock<MemoryState>,
    /// What `writes_may_stall` answers: a test sets it to play an engine throttling writers.
    stalling: AtomicBool,
    /// A key whose writes fail as if its stored record were unreadable (tests of callers).
    refused: Mutex<Option<Vec<u8>>>,
    /// Keys whose record reads fail, as records that fail their checksum (tests of callers).
    unreadable_keys: Mutex<BTreeSet<Vec<u8>>>,
}

impl MemoryEngine {
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    /// Makes `writes_may_stall` answer `stalling`, so callers move writes to their blocking
    /// pool as they do while fjall throttles writers (tests of those callers).
    pub fn set_stalling(&self, stalling: bool) {
        self.stalling.store(stalling, Ordering::SeqCst);
    }

    /// Makes every write to `key` (in any partition) fail with `StorageError::Corrupt`, as a
    /// replica whose copy of that key is unreadable answers; `None` lifts it.
    pub fn refuse_writes_to(&self, key: Option<&[u8]>) {
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = key.map(<[u8]>::to_vec);
    }

    /// Makes reads of these keys' records (in any partition) fail with `StorageError::Corrupt`,
    /// as records that fail their checksum: `get`, `scan` and the updates and `remove_if` that
    /// read a stored record fail, `scan_readable` and `scan_leaf` list them as unreadable. An
    /// empty list lifts it.
    pub fn make_unreadable(&self, keys: &[&[u8]]) {
        *self
            .unreadable_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = keys.iter().map(|k| k.to_vec()).collect();
    }

    /// What is stored for `key`, readable or not (`make_unreadable` does not apply): lets a
    /// test see that a record it made unreadable was kept as it was.
    pub fn peek(&self, partition: PartitionId, key: &[u8]) -> Option<VersionSet> {
        self.read()
            .records
            .get(&record_key(partition, key))
            .cloned()
    }

    fn is_readable(&self, key: &[u8]) -> bool {
        !self
            .unreadable_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key)
    }

    fn check_readable(&self, key: &[u8]) -> Result<(), StorageError> {
        if self.is_readable(key) {
            return Ok(());
        }
        Err(StorageError::corrupt(
            format!("record of key {key:?}"),
            "records are unreadable (test knob)".to_string(),
        ))
    }

    /// Splits scanned records into the readable ones and the keys made unreadable.
    fn sort_readable(&self, records: Vec<(Key, VersionSet)>) -> Scanned {
        let mut out = Scanned::default();
        for (key, versions) in records {
            out.examined += 1;
            out.last = Some(key.clone());
            if self.is_readable(&key) {
                out.entries.push((key, versions));
            } else {
                out.unreadable.push(key);
            }
        }
        out
    }

    fn check_all_readable(&self, entries: &[(Key, VersionSet)]) -> Result<(), StorageError> {
        entries
            .iter()
            .try_for_each(|(key, _)| self.check_readable(key))
    }

    fn read(&self) -> RwLockReadGuard<'_, MemoryState> {
        // A panic in a caller's closure happens before any change, so the state is intact.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, MemoryState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn collect_range(
    records: &BTreeMap<Vec<u8>, VersionSet>,
    start: Bound<Vec<u8>>,
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<(Key, VersionSet)>, StorageError> {
    records
        .range((start, Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .take(limit)
        .map(|(k, v)| Ok((user_key(k)?, v.clone())))
        .collect()
}

impl StorageEngine for MemoryEngine {
    fn writes_may_stall(&self) -> bool {
        self.stalling.load(Ordering::SeqCst)
    }

    fn get(&self, partition: PartitionId, key: &[u8]) -> Result<Option<VersionSet>, StorageError> {
        check_key(key)?;
        self.check_readable(key)?;
        Ok(self
            .read()
            .records
            .get(&record_key(partition, key))
            .cloned())
    }

    fn update(
        &self,
        partition: PartitionId,
        key: &[u8],
        f: &mut dyn FnMut(Option<&VersionSet>) -> Option<VersionSet>,
    ) -> Result<Option<VersionSet>, StorageError> {
        check_key(key)?;
        if self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_deref()
            == Some(key)
        {
            return Err(StorageError::corrupt(
                "record",
                "writes to this key are refused (test knob)".to_string(),
            ));
        }
        let encoded = record_key(partition, key);
        let mut guard = self.write();
        let state = &mut *guard;
        let current = state.records.get(&encoded);
        if current.is_some() {
            // As on disk: an update reads the record it replaces.
            self.check_readable(key)?;
        }
        let Some(new) = f(current) else {
            return Ok(current.cloned());
        };
        let old_digest = current.map(VersionSet::digest);
        state
            .trees
            .entry(partition)
            .or_default()
            .update(key, old_digest, Some(new.digest()));
        state.records.insert(encoded, new.clone());
        Ok(Some(new))
    }

    fn remove(&self, partition: PartitionId, key: &[u8]) -> Result<(), StorageError> {
        check_key(key)?;
        let mut guard = self.write();
        let state = &mut *guard;
        if let Some(old) = state.records.remove(&record_key(partition, key)) {
            state
                .trees
                .entry(partition)
                .or_default()
                .update(key, Some(old.digest()), None);
        }
        Ok(())
    }

    fn remove_if(
        &self,
        partition: PartitionId,
        key: &[u8],
        expected: &VersionSet,
    ) -> Result<bool, StorageError> {
        check_key(key)?;
        let mut guard = self.write();
        let state = &mut *guard;
        let encoded = record_key(partition, key);
        if state.records.contains_key(&encoded) {
            self.check_readable(key)?;
        }
        if state.records.get(&encoded) != Some(expected) {
            return Ok(false);
        }
        state.records.remove(&encoded);
        state
            .trees
            .entry(partition)
            .or_default()
            .update(key, Some(expected.digest()), None);
        Ok(true)
    }

    fn update_many(
        &self,
        partition: PartitionId,
        entries: &[(Key, VersionSet)],
        f: &mut dyn FnMut(Option<&VersionSet>, &VersionSet) -> Option<VersionSet>,
    ) -> Result<(), StorageError> {
        for (key, incoming) in entries {
            self.update(partition, key, &mut |current| f(current, incoming))?;
        }
        Ok(())
    }

    fn scan(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Key, VersionSet)>, StorageError> {
        let prefix = partition_prefix(partition);
        let start = scan_start(partition, after);
        let entries = collect_range(&self.read().records, start, &prefix, limit)?;
        self.check_all_readable(&entries)?;
        Ok(entries)
    }

    fn scan_readable(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Scanned, StorageError> {
        let prefix = partition_prefix(partition);
        let start = scan_start(partition, after);
        // Up to `limit` records and about `SCAN_BYTES_MAX` bytes of keys and values, as fjall.
        let (mut records, mut bytes, mut more) = (Vec::new(), 0usize, false);
        for (k, v) in self
            .read()
            .records
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
        {
            if records.len() == limit || bytes >= SCAN_BYTES_MAX {
                more = true;
                break;
            }
            // Values, plus an estimate of each sibling's dot and the causal context.
            bytes += k.len() + v.value_bytes() + 32 * (v.siblings().len() + v.context().len());
            records.push((user_key(k)?, v.clone()));
        }
        Ok(Scanned {
            more,
            ..self.sort_readable(records)
        })
    }

    fn scan_leaf(&self, partition: PartitionId, leaf: LeafIndex) -> Result<Scanned, StorageError> {
        let prefix = leaf_prefix(partition, leaf);
        let start = Bound::Included(prefix.to_vec());
        let records = collect_range(&self.read().records, start, &prefix, usize::MAX)?;
        Ok(self.sort_readable(records))
    }

    fn merkle(&self, partition: PartitionId) -> Result<MerkleTree, StorageError> {
        Ok(self
            .read()
            .trees
            .get(&partition)
            .cloned()
            .unwrap_or_default())
    }

    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError> {
        let state = self.read();
        let mut out: Vec<PartitionId> = Vec::new();
        for k in state.records.keys() {
            let p = partition_of(k)?;
            if out.last() != Some(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    fn drop_partition(&self, partition: PartitionId) -> Result<(), StorageError> {
        let mut state = self.write();
        let prefix = partition_prefix(partition);
        state.records.retain(|k, _| !k.starts_with(&prefix));
        state.trees.remove(&partition);
        Ok(())
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.read().meta.get(name).cloned())
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        self.write().meta.insert(name.to_string(), value.to_vec());
        Ok(())
    }
}

type HintMap = BTreeMap<NodeId, BTreeMap<(PartitionId, Key), VersionSet>>;

/// A `HintStore` in a `BTreeMap`, bounded like the durable one.
pub struct MemoryHintStore {
    max_hints: usize,
    hints: Mutex<HintMap>,
}

impl MemoryHintStore {
    /// A store holding at most `max_hints` distinct hints.
    pub fn new(max_hints: usize) -> MemoryHintStore {
        MemoryHintStore {
            max_hints,
            hints: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HintMap> {
        self.hints.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl HintStore for MemoryHintStore {
    fn push(&self, hint: Hint) -> Result<(), StorageError> {
        check_key(&hint.key)?;
        let mut hints = self.lock();
        let held: usize = hints.values().map(BTreeMap::len).sum();
        let id = (hint.partition, hint.key);
        let existing = hints.get_mut(&hint.target).and_then(|m| m.get_mut(&id));
        match existing {
            Some(existing) => *existing = existing.sync(&hint.versions),
            None if held >= self.max_hints => {
                return Err(StorageError::HintBacklogFull {
                    max: self.max_hints,
                });
            }
            None => {
                hints
                    .entry(hint.target)
                    .or_default()
                    .insert(id, hint.versions);
            }
        }
        Ok(())
    }

    fn pending(
        &self,
        target: &NodeId,
        after: Option<(PartitionId, &[u8])>,
        limit: usize,
    ) -> Result<Vec<Hint>, StorageError> {
        let hints = self.lock();
        let Some(per_target) = hints.get(target) else {
            return Ok(Vec::new());
        };
        let start = match after {
            Some((partition, key)) => Bound::Excluded((partition, Key::copy_from_slice(key))),
            None => Bound::Unbounded,
        };
        Ok(per_target
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|((partition, key), versions)| Hint {
                target: target.clone(),
                partition: *partition,
                key: key.clone(),
                versions: versions.clone(),
            })
            .collect())
    }

    fn acknowledge(&self, hint: &Hint) -> Result<(), StorageError> {
        let mut hints = self.lock();
        let Some(per_target) = hints.get_mut(&hint.target) else {
            return Ok(());
        };
        let id = (hint.partition, hint.key.clone());
        if per_target
            .get(&id)
            .is_some_and(|held| *held == hint.versions)
        {
            per_target.remove(&id);
        }
        hints.retain(|_, m| !m.is_empty());
        Ok(())
    }

    fn get(
        &self,
        target: &NodeId,
        partition: PartitionId,
        key: &[u8],
    ) -> Result<Option<VersionSet>, StorageError> {
        let hints = self.lock();
        let id = (partition, Key::copy_from_slice(key));
        Ok(hints.get(target).and_then(|m| m.get(&id)).cloned())
    }

    fn targets(&self) -> Result<Vec<NodeId>, StorageError> {
        Ok(self.lock().keys().cloned().collect())
    }

    fn len(&self) -> usize {
        self.lock().values().map(BTreeMap::len).sum()
    }
}
