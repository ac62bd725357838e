//! The durable engine: one fjall database (an LSM tree with a write-ahead journal) per node.
//!
//! Layout and framing are in `layout`; the laws are in the crate documentation. How this
//! file keeps them:
//!
//! - `update` and `remove` hold the key's stripe lock (`KEY_LOCK_STRIPES`) for the whole
//!   read-modify-write, then the partition's lock only for the Merkle update and the batch
//!   append, so the in-memory tree changes in the same order the batches reach the journal
//!   and every stored leaf is the XOR of the records stored beside it. The fsync wait
//!   (`GroupCommit`) happens after both locks are released, so writers of the same partition
//!   share fsyncs.
//! - `drop_partition` runs under the partition's lock and bumps the partition's generation;
//!   an `update` that read its key before the drop notices the new generation and reads again.
//! - The Merkle tree of a partition is loaded from its stored leaves on first use (rebuilt
//!   from the records if a leaf fails its checksum); a failed batch append undoes its change
//!   to the in-memory tree.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use ringkv_core::merkle::{LeafIndex, MERKLE_LEAVES, MerkleTree};
use ringkv_core::{NodeId, PartitionId, VersionSet};
use xxhash_rust::xxh3::xxh3_64;

use crate::group_commit::{Durable, GroupCommit};
use crate::layout::{
    self, HINTS_KEYSPACE, LEAVES_KEYSPACE, META_KEYSPACE, RECORDS_KEYSPACE, check_key,
    decode_hint_key, decode_leaf, decode_versions, encode_leaf, encode_versions, hint_key,
    hint_target_prefix, leaf_prefix, next_partition_start, partition_of, partition_prefix,
    prefix_successor, record_key, scan_start, unframe, user_key,
};
use crate::read_cache::ReadCache;
use crate::{
    DEFAULT_MAX_HINTS, DROP_BATCH_KEYS, Hint, HintStore, Key, SCAN_BYTES_MAX, Scanned,
    StorageEngine, StorageError,
};

/// Number of key locks; two keys share a lock when their hashes collide modulo this.
pub const KEY_LOCK_STRIPES: usize = 1024;

/// Sealed memtables (waiting for their flush) from which `writes_may_stall` says yes; fjall
/// itself sleeps writers from 4.
const WRITE_STALL_SEALED_MEMTABLES: usize = 2;

/// Level-0 tables (flushed, not yet compacted) from which `writes_may_stall` says yes: fjall
/// slows writers (a busy loop) from 20 level-0 runs and sleeps them in 10 ms steps from 30,
/// and every run holds at least one table, so this many tables comes first.
const WRITE_STALL_L0_TABLES: usize = 16;

/// Settings of a `FjallEngine`.
#[derive(Debug, Clone)]
pub struct FjallOptions {
    /// Size of fjall's block cache, in bytes.
    pub cache_size_bytes: u64,
    /// Bound of the hint store (distinct hints held).
    pub max_hints: usize,
    /// Bytes of decoded version sets kept for reads (`read_cache`); 0 turns it off.
    pub read_cache_bytes: usize,
}

/// The read cache's default budget.
pub const DEFAULT_READ_CACHE_BYTES: usize = 64 * 1024 * 1024;

impl Default for FjallOptions {
    fn default() -> FjallOptions {
        FjallOptions {
            cache_size_bytes: 64 * 1024 * 1024,
            max_hints: DEFAULT_MAX_HINTS,
            read_cache_bytes: DEFAULT_READ_CACHE_BYTES,
        }
    }
}

type SyncFn = Box<dyn Fn() -> Result<(), StorageError> + Send + Sync>;

/// The fsync of the journal, done so that appends never wait for it: fjall's own
/// `Database::persist(SyncAll)` fsyncs while holding the journal's lock, and every append
/// would queue behind the disk. Instead:
///
/// 1. `persist(Buffer)` moves the journal's buffer to the OS, under the lock (no disk wait);
/// 2. `fdatasync` of the active journal file through a descriptor of our own, outside the lock.
///
/// Why that covers every batch appended before step 1: fjall names journal files `<id>.jnl`
/// in the database folder, the active one is the highest id, and rotating to `<id+1>.jnl`
/// first fsyncs the sealed file (fjall `journal::writer::Writer::rotate`, under the lock). So
/// if a rotation happened since step 1, the bytes flushed in step 1 are durable already or in
/// a newer file; step 2 follows `<id+1>.jnl` while it exists and syncs the newest (or, when
/// the file it followed was deleted, rescans the folder for the newest). The files
/// are preallocated, so `fdatasync` (no timestamps) suffices. Checked again by
/// `tests/durability.rs` whenever fjall is upgraded.
struct JournalSync {
    db: Database,
    dir: std::path::PathBuf,
    /// The active journal as last seen: its id and our descriptor of it.
    active: Mutex<Option<(u64, std::fs::File)>>,
}

impl JournalSync {
    /// The highest `<id>.jnl` in `dir`: fjall's active journal.
    fn newest(dir: &std::path::Path) -> Result<Option<u64>, StorageError> {
        Ok(std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name();
                name.to_str()?.strip_suffix(".jnl")?.parse::<u64>().ok()
            })
            .max())
    }

    fn new(db: Database, dir: std::path::PathBuf) -> Result<JournalSync, StorageError> {
        let newest = JournalSync::newest(&dir)?;
        let active = match newest {
            Some(id) => Some((id, std::fs::File::open(dir.join(format!("{id}.jnl")))?)),
            None => None,
        };
        Ok(JournalSync {
            db,
            dir,
            active: Mutex::new(active),
        })
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.db.persist(PersistMode::Buffer)?;
        let mut active = lock(&self.active);
        let mut id = active.as_ref().map(|(id, _)| *id);
        // Follow rotations: the newest existing `<id>.jnl` is the active journal.
        while let Some(next) = id.map(|i| i + 1).filter(|n| self.path(*n).exists()) {
            id = Some(next);
        }
        // fjall deletes sealed journals oldest first, once flushed: a followed file that is
        // gone means it rotated at least twice since the last sync and deleted the journal
        // after ours too. Following `<id+1>` would stay on the deleted file for good, syncing
        // it instead of the one holding the appends; the newest in the folder is the active.
        if id.is_some_and(|i| !self.path(i).exists()) {
            id = JournalSync::newest(&self.dir)?;
        }
        if active.as_ref().map(|(i, _)| *i) != id {
            *active = match id {
                Some(id) => Some((id, std::fs::File::open(self.path(id))?)),
                None => None,
            };
        }
        match active.as_ref() {
            Some((_, file)) => file.sync_data().map_err(StorageError::from),
            // No journal file seen at open (a layout this code does not know): fjall's own.
            None => self
                .db
                .persist(PersistMode::SyncAll)
                .map_err(StorageError::from),
        }
    }

    fn path(&self, id: u64) -> std::path::PathBuf {
        self.dir.join(format!("{id}.jnl"))
    }

    #[cfg(test)]
    fn active_id(&self) -> Option<u64> {
        lock(&self.active).as_ref().map(|(id, _)| *id)
    }
}

/// What the engine and its hint store share: the database, its keyspaces, the group commit.
struct Shared {
    db: Database,
    records: Keyspace,
    leaves: Keyspace,
    meta: Keyspace,
    hints: Keyspace,
    /// The sync thread's journal state, read by tests.
    #[cfg(test)]
    journal: Arc<JournalSync>,
    /// Held by a test to keep the sync thread from completing a sync.
    #[cfg(test)]
    sync_gate: Arc<Mutex<()>>,
    commit: GroupCommit<SyncFn>,
}

impl Shared {
    /// Appends `batch` to the journal and returns the ticket to wait for.
    fn append(&self, batch: fjall::OwnedWriteBatch) -> Result<u64, StorageError> {
        batch.commit()?;
        Ok(self.commit.appended())
    }
}

#[derive(Default)]
struct PartitionState {
    /// `None` until first used, then loaded from the stored leaves.
    tree: Option<MerkleTree>,
    /// Bumped by `drop_partition`, so that a read-modify-write that read before the drop
    /// knows its read is stale.
    generation: u64,
}

/// What a read-modify-write decided.
enum Change {
    Keep,
    Put(VersionSet),
    Delete,
}

/// The durable `StorageEngine`.
pub struct FjallEngine {
    shared: Arc<Shared>,
    options: FjallOptions,
    key_locks: Vec<Mutex<()>>,
    partitions: Mutex<HashMap<PartitionId, Arc<Mutex<PartitionState>>>>,
    hint_store: OnceLock<Arc<FjallHintStore>>,
    /// Decoded sets for `get`; kept coherent under the key and partition locks.
    cache: ReadCache,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its state consistent before anything can panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `lock` without waiting: `None` if another thread holds it.
fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Which of the `KEY_LOCK_STRIPES` key locks guards `encoded`.
fn key_stripe(encoded: &[u8]) -> usize {
    (xxh3_64(encoded) % KEY_LOCK_STRIPES as u64) as usize
}

fn describe_key(key: &[u8]) -> String {
    String::from_utf8_lossy(&key[..key.len().min(64)]).into_owned()
}

impl FjallEngine {
    /// Opens (or creates) the database in `dir`. An existing directory is resumed: records,
    /// Merkle leaves, metadata and hints are all there, as of the last acknowledged write.
    pub fn open(dir: impl AsRef<Path>, options: FjallOptions) -> Result<FjallEngine, StorageError> {
        let db = Database::builder(dir.as_ref())
            .cache_size(options.cache_size_bytes)
            .open()?;
        let keyspace = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        let (records, leaves) = (keyspace(RECORDS_KEYSPACE)?, keyspace(LEAVES_KEYSPACE)?);
        let (meta, hints) = (keyspace(META_KEYSPACE)?, keyspace(HINTS_KEYSPACE)?);
        let journal = Arc::new(JournalSync::new(db.clone(), dir.as_ref().to_path_buf())?);
        let syncer = journal.clone();
        #[cfg(test)]
        let sync_gate = Arc::new(Mutex::new(()));
        #[cfg(test)]
        let gate = sync_gate.clone();
        let sync: SyncFn = Box::new(move || {
            #[cfg(test)]
            let _held = lock(&gate);
            syncer.sync()
        });
        let shared = Arc::new(Shared {
            db,
            records,
            leaves,
            meta,
            hints,
            #[cfg(test)]
            journal,
            #[cfg(test)]
            sync_gate,
            commit: GroupCommit::new(sync),
        });
        // What fjall replayed after a process crash reached the OS but maybe no disk: one
        // sync before anything is served, so nothing vouches for it before (the start ticket).
        let at_start = shared.commit.latest();
        shared.commit.wait_durable(at_start)?;
        let cache = ReadCache::new(options.read_cache_bytes);
        Ok(FjallEngine {
            shared,
            options,
            key_locks: (0..KEY_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            partitions: Mutex::new(HashMap::new()),
            hint_store: OnceLock::new(),
            cache,
        })
    }

    /// The hint store kept in the same database (created on first call, then shared; its
    /// bound is `FjallOptions::max_hints`).
    pub fn hint_store(&self) -> Result<Arc<FjallHintStore>, StorageError> {
        if let Some(store) = self.hint_store.get() {
            return Ok(store.clone());
        }
        let store = Arc::new(FjallHintStore::new(
            self.shared.clone(),
            self.options.max_hints,
        )?);
        Ok(self.hint_store.get_or_init(|| store).clone())
    }

    /// How many journal fsyncs ran since opening, the one at open included (to observe group
    /// commit).
    pub fn fsync_count(&self) -> u64 {
        self.shared.commit.fsync_count()
    }

    fn key_lock(&self, encoded: &[u8]) -> MutexGuard<'_, ()> {
        lock(&self.key_locks[key_stripe(encoded)])
    }

    fn partition_state(&self, partition: PartitionId) -> Arc<Mutex<PartitionState>> {
        lock(&self.partitions).entry(partition).or_default().clone()
    }

    fn read_record(
        &self,
        partition: PartitionId,
        encoded: &[u8],
    ) -> Result<Option<VersionSet>, StorageError> {
        let Some(framed) = self.shared.records.get(encoded)? else {
            return Ok(None);
        };
        let what = || {
            format!(
                "record of key {:?} in partition {}",
                describe_key(&encoded[6..]),
                partition.index()
            )
        };
        decode_versions(&what, &framed).map(Some)
    }

    fn load_tree(&self, partition: PartitionId) -> Result<MerkleTree, StorageError> {
        let mut leaves = vec![0u64; MERKLE_LEAVES];
        for guard in self.shared.leaves.prefix(partition_prefix(partition)) {
            let (k, v) = guard.into_inner()?;
            let leaf = layout::leaf_of(&k)?;
            let what = || {
                format!(
                    "Merkle leaf {} of partition {}",
                    leaf.get(),
                    partition.index()
                )
            };
            leaves[leaf.get()] = decode_leaf(&what, &v)?;
        }
        Ok(MerkleTree::from_leaves(leaves).expect("MERKLE_LEAVES leaves"))
    }

    fn tree<'a>(
        &self,
        state: &'a mut PartitionState,
        partition: PartitionId,
    ) -> Result<&'a mut MerkleTree, StorageError> {
        if state.tree.is_none() {
            let tree = match self.load_tree(partition) {
                Ok(tree) => tree,
                // The leaves are derived from the records: rebuild them, rather than leave
                // the partition unwritable (every write updates its leaf) for good.
                Err(e @ StorageError::Corrupt { .. }) => {
                    tracing::warn!(error = %e, "rebuilding a Merkle tree from its records");
                    self.rebuild_tree(partition)?
                }
                Err(e) => return Err(e),
            };
            state.tree = Some(tree);
        }
        Ok(state.tree.as_mut().expect("just loaded"))
    }

    /// The partition's tree computed from its records, its stored leaves replaced by it. Runs
    /// under the partition's lock, which every record change takes. A record that cannot be
    /// read is left out (its digest is unknown): anti-entropy then sees that key differ, and
    /// skips it.
    fn rebuild_tree(&self, partition: PartitionId) -> Result<MerkleTree, StorageError> {
        let mut tree = MerkleTree::new();
        for guard in self.shared.records.prefix(partition_prefix(partition)) {
            let (k, v) = guard.into_inner()?;
            let key = user_key(&k)?;
            let what = || record_description(partition, &key);
            match decode_versions(&what, &v) {
                Ok(versions) => {
                    tree.update(&key, None, Some(versions.digest()));
                }
                Err(StorageError::Corrupt { .. }) => {
                    tracing::warn!(
                        ?key,
                        "a record that fails its checksum is left out of the rebuilt tree"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        // Every leaf written (an empty one removed), and any other key under the partition's
        // prefix removed: no key is both removed and written in the batch.
        let mut batch = self.shared.db.batch();
        for guard in self.shared.leaves.prefix(partition_prefix(partition)) {
            let k = guard.key()?;
            let is_leaf_key = layout::leaf_of(&k)
                .is_ok_and(|leaf| k.as_ref() == leaf_prefix(partition, leaf).as_slice());
            if !is_leaf_key {
                batch.remove(&self.shared.leaves, k);
            }
        }
        for index in 0..MERKLE_LEAVES {
            let leaf = LeafIndex::new(index).expect("below MERKLE_LEAVES");
            put_leaf(
                &mut batch,
                &self.shared.leaves,
                partition,
                leaf,
                tree.leaf(leaf),
            );
        }
        // Not waited for (the locks are held): the journal is one ordered log, so the next
        // write that is made durable makes this durable too, and if a crash takes it back the
        // next load finds the bad leaf again and rebuilds again.
        self.shared.append(batch)?;
        Ok(tree)
    }

    /// Puts the record change and the leaf it changes in one batch and appends it. Must be
    /// called under the partition's lock. Returns the group-commit ticket.
    fn append_change(
        &self,
        state: &mut PartitionState,
        partition: PartitionId,
        key: &[u8],
        old: Option<&VersionSet>,
        new: Option<&VersionSet>,
    ) -> Result<u64, StorageError> {
        let (old_digest, new_digest) = (old.map(VersionSet::digest), new.map(VersionSet::digest));
        let tree = self.tree(state, partition)?;
        let leaf = tree.update(key, old_digest, new_digest);
        let mut batch = self.shared.db.batch();
        let encoded = record_key(partition, key);
        match new {
            Some(versions) => {
                batch.insert(&self.shared.records, encoded, encode_versions(versions))
            }
            None => batch.remove(&self.shared.records, encoded),
        }
        put_leaf(
            &mut batch,
            &self.shared.leaves,
            partition,
            leaf,
            tree.leaf(leaf),
        );
        self.shared.append(batch).inspect_err(|_| {
            tree.update(key, new_digest, old_digest);
        })
    }

    /// The read-modify-write behind `update` and `remove`.
    fn modify(
        &self,
        partition: PartitionId,
        key: &[u8],
        decide: &mut dyn FnMut(Option<&VersionSet>) -> Change,
    ) -> Result<Option<VersionSet>, StorageError> {
        let (ticket, stored) = self.modify_staged(partition, key, decide)?;
        self.shared.commit.wait_durable(ticket)?;
        Ok(stored)
    }

    /// `modify` up to the journal: returns the ticket to wait for and what is stored
    /// afterwards. When nothing changed the ticket is the newest one taken (under the key
    /// lock, so it covers whatever write of this key was read): a caller that answers "I hold
    /// this" must not do so while that state is only in the journal's buffer.
    fn modify_staged(
        &self,
        partition: PartitionId,
        key: &[u8],
        decide: &mut dyn FnMut(Option<&VersionSet>) -> Change,
    ) -> Result<(u64, Option<VersionSet>), StorageError> {
        check_key(key)?;
        let encoded = record_key(partition, key);
        let _key_guard = self.key_lock(&encoded);
        let part = self.partition_state(partition);
        // Optimistic: read without the partition lock, then check no drop happened since.
        // The cache is current under the key's lock (every change of the record sets its
        // entry under it), so an entry spares the fjall read.
        let generation = lock(&part).generation;
        let mut current = match self.cache.known(&encoded) {
            Some(known) => known,
            None => self.read_record(partition, &encoded)?,
        };
        let mut change = decide(current.as_ref());
        let mut state = lock(&part);
        if state.generation != generation {
            current = self.read_record(partition, &encoded)?;
            change = decide(current.as_ref());
        }
        // The cache follows the store while both locks are held.
        match change {
            Change::Keep => Ok((self.shared.commit.latest(), current)),
            Change::Put(new) => {
                let ticket =
                    self.append_change(&mut state, partition, key, current.as_ref(), Some(&new))?;
                self.cache.put(&encoded, Some(&new));
                Ok((ticket, Some(new)))
            }
            Change::Delete if current.is_none() => Ok((self.shared.commit.latest(), None)),
            Change::Delete => {
                let ticket =
                    self.append_change(&mut state, partition, key, current.as_ref(), None)?;
                self.cache.put(&encoded, None);
                Ok((ticket, None))
            }
        }
    }

    /// Deletes every record and leaf of the partition, in batches; returns the last batch's
    /// ticket. Under the partition's lock; the caller settles the cache and the tree.
    fn drop_all(
        &self,
        state: &mut PartitionState,
        partition: PartitionId,
    ) -> Result<Option<u64>, StorageError> {
        let mut last_ticket = None;
        // Each round deletes DROP_BATCH_KEYS records; the loop ends when none is left.
        while let Some(ticket) = self.drop_some(state, partition)? {
            last_ticket = Some(ticket);
        }
        // Leaves left over (only if a corrupt record's digest could not be subtracted).
        let mut batch = self.shared.db.batch();
        for guard in self.shared.leaves.prefix(partition_prefix(partition)) {
            batch.remove(&self.shared.leaves, guard.key()?);
        }
        if !batch.is_empty() {
            last_ticket = Some(self.shared.append(batch)?);
        }
        Ok(last_ticket)
    }

    /// Deletes up to `DROP_BATCH_KEYS` records of the partition with their leaf changes.
    /// Returns the ticket of the batch, or `None` when the partition had no record left.
    fn drop_some(
        &self,
        state: &mut PartitionState,
        partition: PartitionId,
    ) -> Result<Option<u64>, StorageError> {
        let mut batch = self.shared.db.batch();
        let tree = self.tree(state, partition)?;
        let mut touched = Vec::new();
        for guard in self
            .shared
            .records
            .prefix(partition_prefix(partition))
            .take(DROP_BATCH_KEYS)
        {
            let (k, v) = guard.into_inner()?;
            let key = user_key(&k)?;
            let what = || {
                format!(
                    "record of key {:?} in partition {}",
                    describe_key(&key),
                    partition.index()
                )
            };
            match decode_versions(&what, &v) {
                Ok(versions) => touched.push(tree.update(&key, Some(versions.digest()), None)),
                // Its digest is unknown, so its leaf cannot be corrected now; the leaves of
                // the partition are all deleted at the end of the drop.
                Err(e) => tracing::warn!(error = %e, "dropping a corrupt record"),
            }
            batch.remove(&self.shared.records, k);
        }
        if batch.is_empty() {
            return Ok(None);
        }
        touched.sort();
        touched.dedup();
        for leaf in touched {
            put_leaf(
                &mut batch,
                &self.shared.leaves,
                partition,
                leaf,
                tree.leaf(leaf),
            );
        }
        self.shared.append(batch).map(Some)
    }
}

fn put_leaf(
    batch: &mut fjall::OwnedWriteBatch,
    leaves: &Keyspace,
    partition: PartitionId,
    leaf: LeafIndex,
    hash: u64,
) {
    let key = leaf_prefix(partition, leaf);
    if hash == 0 {
        batch.remove(leaves, key)
    } else {
        batch.insert(leaves, key, encode_leaf(hash))
    }
}

/// `(start, end)` bounds of the records of `partition`, starting at `start`.
fn partition_range(
    partition: PartitionId,
    start: Bound<Vec<u8>>,
) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let end = match next_partition_start(partition) {
        Some(next) => Bound::Excluded(next.to_vec()),
        None => Bound::Unbounded,
    };
    (start, end)
}

fn record_description(partition: PartitionId, key: &[u8]) -> String {
    format!(
        "record of key {:?} in partition {}",
        describe_key(key),
        partition.index()
    )
}

fn decode_entries(
    partition: PartitionId,
    iter: impl Iterator<Item = fjall::Guard>,
) -> Result<Vec<(Key, VersionSet)>, StorageError> {
    iter.map(|guard| {
        let (k, v) = guard.into_inner()?;
        let key = user_key(&k)?;
        let what = || record_description(partition, &key);
        Ok((key.clone(), decode_versions(&what, &v)?))
    })
    .collect()
}

/// Decodes records, listing those that fail their checksum or do not decode as unreadable.
/// Decodes `records` into a `Scanned`, stopping after `limit` records or once `max_bytes` of
/// record bytes were taken (at least one record).
fn scan_records(
    partition: PartitionId,
    records: impl Iterator<Item = fjall::Guard>,
    limit: usize,
    max_bytes: usize,
) -> Result<Scanned, StorageError> {
    let mut out = Scanned::default();
    let mut bytes = 0usize;
    for guard in records {
        if out.examined == limit || bytes >= max_bytes {
            out.more = true;
            break;
        }
        let (k, v) = guard.into_inner()?;
        let key = user_key(&k)?;
        out.examined += 1;
        bytes += k.len() + v.len();
        out.last = Some(key.clone());
        let what = || record_description(partition, &key);
        match decode_versions(&what, &v) {
            Ok(versions) => out.entries.push((key, versions)),
            Err(StorageError::Corrupt { .. }) => out.unreadable.push(key),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

impl StorageEngine for FjallEngine {
    fn get(&self, partition: PartitionId, key: &[u8]) -> Result<Option<VersionSet>, StorageError> {
        check_key(key)?;
        let encoded = record_key(partition, key);
        if let Some(known) = self.cache.get(&encoded) {
            return Ok(known);
        }
        // A miss fills the cache under the key's lock, so no write of this key interleaves
        // (writes update the cache under it), and only if no drop ran since the read. A read
        // runs on a runtime thread: it never waits for either lock (a writer may hold the key's
        // stripe while fjall stalls it, a drop holds the partition's lock for the whole drop),
        // it then just reads without filling.
        let Some(_key_guard) = try_lock(&self.key_locks[key_stripe(&encoded)]) else {
            return self.read_record(partition, &encoded);
        };
        let part = self.partition_state(partition);
        let Some(generation) = try_lock(&part).map(|state| state.generation) else {
            return self.read_record(partition, &encoded);
        };
        let current = self.read_record(partition, &encoded)?;
        if let Some(state) = try_lock(&part)
            && state.generation == generation
        {
            self.cache.put(&encoded, current.as_ref());
        }
        Ok(current)
    }

    fn update(
        &self,
        partition: PartitionId,
        key: &[u8],
        f: &mut dyn FnMut(Option<&VersionSet>) -> Option<VersionSet>,
    ) -> Result<Option<VersionSet>, StorageError> {
        self.modify(partition, key, &mut |current| match f(current) {
            Some(new) => Change::Put(new),
            None => Change::Keep,
        })
    }

    fn update_deferred(
        &self,
        partition: PartitionId,
        key: &[u8],
        f: &mut dyn FnMut(Option<&VersionSet>) -> Option<VersionSet>,
    ) -> Result<(Option<VersionSet>, Durable), StorageError> {
        let (ticket, stored) =
            self.modify_staged(partition, key, &mut |current| match f(current) {
                Some(new) => Change::Put(new),
                None => Change::Keep,
            })?;
        Ok((stored, self.shared.commit.durable(ticket)))
    }

    fn read_cache_stats(&self) -> Option<crate::ReadCacheStats> {
        Some(self.cache.stats())
    }

    fn writes_may_stall(&self) -> bool {
        // fjall halts writers while 4 or more sealed memtables wait for their flush, and slows
        // then halts them while compaction is behind on level 0; well before either, writes
        // go where sleeping is harmless.
        [
            &self.shared.records,
            &self.shared.leaves,
            &self.shared.hints,
        ]
        .iter()
        .any(|k| {
            k.sealed_memtable_count() >= WRITE_STALL_SEALED_MEMTABLES
                || k.l0_table_count() >= WRITE_STALL_L0_TABLES
        })
    }

    fn remove(&self, partition: PartitionId, key: &[u8]) -> Result<(), StorageError> {
        self.modify(partition, key, &mut |_| Change::Delete)
            .map(|_| ())
    }

    fn remove_if(
        &self,
        partition: PartitionId,
        key: &[u8],
        expected: &VersionSet,
    ) -> Result<bool, StorageError> {
        let mut removed = false;
        self.modify(partition, key, &mut |current| match current {
            Some(v) if v == expected => {
                removed = true;
                Change::Delete
            }
            _ => {
                removed = false;
                Change::Keep
            }
        })?;
        Ok(removed)
    }

    fn update_many(
        &self,
        partition: PartitionId,
        entries: &[(Key, VersionSet)],
        f: &mut dyn FnMut(Option<&VersionSet>, &VersionSet) -> Option<VersionSet>,
    ) -> Result<(), StorageError> {
        let mut last = 0;
        for (key, incoming) in entries {
            let (ticket, _) =
                self.modify_staged(partition, key, &mut |current| match f(current, incoming) {
                    Some(new) => Change::Put(new),
                    None => Change::Keep,
                })?;
            last = last.max(ticket);
        }
        self.shared.commit.wait_durable(last)
    }

    fn scan(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Key, VersionSet)>, StorageError> {
        let start = scan_start(partition, after);
        let iter = self
            .shared
            .records
            .range(partition_range(partition, start))
            .take(limit);
        decode_entries(partition, iter)
    }

    fn scan_readable(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Scanned, StorageError> {
        let start = scan_start(partition, after);
        let range = self.shared.records.range(partition_range(partition, start));
        scan_records(partition, range, limit, SCAN_BYTES_MAX)
    }

    fn scan_leaf(&self, partition: PartitionId, leaf: LeafIndex) -> Result<Scanned, StorageError> {
        let records = self.shared.records.prefix(leaf_prefix(partition, leaf));
        scan_records(partition, records, usize::MAX, usize::MAX)
    }

    fn merkle(&self, partition: PartitionId) -> Result<MerkleTree, StorageError> {
        let part = self.partition_state(partition);
        let mut state = lock(&part);
        Ok(self.tree(&mut state, partition)?.clone())
    }

    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError> {
        // One seek per partition: find the first key at or after `cursor`, then jump past
        // its partition.
        let mut out = Vec::new();
        let mut cursor = Vec::new();
        while let Some(guard) = self.shared.records.range(cursor.clone()..).next() {
            let partition = partition_of(&guard.key()?)?;
            out.push(partition);
            match next_partition_start(partition) {
                Some(next) => cursor = next.to_vec(),
                None => break,
            }
        }
        Ok(out)
    }

    fn drop_partition(&self, partition: PartitionId) -> Result<(), StorageError> {
        let part = self.partition_state(partition);
        let mut state = lock(&part);
        let dropped = self.drop_all(&mut state, partition);
        // Whether or not every batch made it, some records may be gone: every cache entry of
        // the partition and every read made before now are stale, on the error path too.
        state.generation += 1;
        self.cache.remove_prefix(&partition_prefix(partition));
        state.tree = match dropped {
            Ok(_) => Some(MerkleTree::new()),
            // The in-memory tree took changes a failed batch never stored: load it again from
            // the stored leaves, which every appended batch kept equal to the stored records.
            Err(_) => None,
        };
        drop(state);
        match dropped? {
            Some(ticket) => self.shared.commit.wait_durable(ticket),
            None => Ok(()),
        }
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(framed) = self.shared.meta.get(name)? else {
            return Ok(None);
        };
        let what = || format!("metadata {name:?}");
        unframe(&what, &framed).map(|payload| Some(payload.to_vec()))
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        let mut batch = self.shared.db.batch();
        batch.insert(&self.shared.meta, name, layout::frame(value));
        let ticket = self.shared.append(batch)?;
        self.shared.commit.wait_durable(ticket)
    }
}

/// The durable `HintStore`, in the `hints` keyspace of a `FjallEngine`'s database (get it
/// with `FjallEngine::hint_store`). Writes share the engine's group commit.
pub struct FjallHintStore {
    shared: Arc<Shared>,
    max_hints: usize,
    /// The number of hints held; the lock also serializes push and acknowledge, which are
    /// read-modify-writes.
    held: Mutex<usize>,
}

impl FjallHintStore {
    fn new(shared: Arc<Shared>, max_hints: usize) -> Result<FjallHintStore, StorageError> {
        let held = shared.hints.len()?;
        Ok(FjallHintStore {
            shared,
            max_hints,
            held: Mutex::new(held),
        })
    }

    fn read(&self, encoded: &[u8]) -> Result<Option<VersionSet>, StorageError> {
        let Some(framed) = self.shared.hints.get(encoded)? else {
            return Ok(None);
        };
        decode_versions(&|| describe_hint(encoded), &framed).map(Some)
    }
}

fn describe_hint(encoded: &[u8]) -> String {
    match decode_hint_key(encoded) {
        Ok((target, partition, key)) => {
            format!(
                "hint for {target} of key {:?} in partition {}",
                describe_key(&key),
                partition.index()
            )
        }
        Err(_) => "hint".to_string(),
    }
}

impl HintStore for FjallHintStore {
    fn push(&self, hint: Hint) -> Result<(), StorageError> {
        check_key(&hint.key)?;
        let encoded = hint_key(&hint.target, hint.partition, &hint.key);
        let mut held = lock(&self.held);
        let (merged, is_new) = match self.read(&encoded) {
            Ok(Some(existing)) => (existing.sync(&hint.versions), false),
            // Unreadable, it is lost already: replaced, or this node could never keep a hint
            // for that key again.
            Err(e @ StorageError::Corrupt { .. }) => {
                tracing::warn!(error = %e, "a hint that fails its checksum is replaced by a new one");
                (hint.versions, false)
            }
            Err(e) => return Err(e),
            Ok(None) if *held >= self.max_hints => {
                return Err(StorageError::HintBacklogFull {
                    max: self.max_hints,
                });
            }
            Ok(None) => (hint.versions, true),
        };
        let mut batch = self.shared.db.batch();
        batch.insert(&self.shared.hints, encoded, encode_versions(&merged));
        let ticket = self.shared.append(batch)?;
        *held += usize::from(is_new);
        drop(held);
        self.shared.commit.wait_durable(ticket)
    }

    fn pending(
        &self,
        target: &NodeId,
        after: Option<(PartitionId, &[u8])>,
        limit: usize,
    ) -> Result<Vec<Hint>, StorageError> {
        let prefix = hint_target_prefix(target);
        let end = match prefix_successor(&prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let start = match after {
            Some((partition, key)) => Bound::Excluded(hint_key(target, partition, key)),
            None => Bound::Included(prefix),
        };
        let mut out = Vec::new();
        // Bounded by the target's hints, which `max_hints` bounds.
        for guard in self.shared.hints.range((start, end)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = guard.into_inner()?;
            let decoded = decode_hint_key(&k).and_then(|(target, partition, key)| {
                let versions = decode_versions(&|| describe_hint(&k), &v)?;
                Ok(Hint {
                    target,
                    partition,
                    key,
                    versions,
                })
            });
            match decoded {
                Ok(hint) => out.push(hint),
                // Passed over, not served and not deleted: one bad hint must not stop delivery
                // of its target's others for good (the walk resumes after what it returned).
                Err(e @ StorageError::Corrupt { .. }) => {
                    tracing::warn!(error = %e, "a hint that fails its checksum is passed over");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn acknowledge(&self, hint: &Hint) -> Result<(), StorageError> {
        let encoded = hint_key(&hint.target, hint.partition, &hint.key);
        let mut held = lock(&self.held);
        let unchanged = self
            .read(&encoded)?
            .is_some_and(|stored| stored == hint.versions);
        if !unchanged {
            return Ok(());
        }
        let mut batch = self.shared.db.batch();
        batch.remove(&self.shared.hints, encoded);
        let ticket = self.shared.append(batch)?;
        *held -= 1;
        drop(held);
        self.shared.commit.wait_durable(ticket)
    }

    fn get(
        &self,
        target: &NodeId,
        partition: PartitionId,
        key: &[u8],
    ) -> Result<Option<VersionSet>, StorageError> {
        self.read(&hint_key(target, partition, key))
    }

    fn targets(&self) -> Result<Vec<NodeId>, StorageError> {
        // One seek per target: read the first hint at or after `cursor`, then jump past
        // every hint of its target.
        let mut out = Vec::new();
        let mut cursor = Vec::new();
        while let Some(guard) = self.shared.hints.range(cursor.clone()..).next() {
            let key = guard.key()?;
            let target = match decode_hint_key(&key) {
                Ok((target, _, _)) => target,
                // Passed over (kept, logged), as `pending` passes over a hint that fails its
                // checksum: one bad key must not stop the delivery of every other target's.
                Err(e @ StorageError::Corrupt { .. }) => {
                    tracing::warn!(error = %e, "a hint key that does not decode is passed over");
                    let mut after = key.to_vec();
                    after.push(0);
                    cursor = after;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let next = prefix_successor(&hint_target_prefix(&target));
            out.push(target);
            match next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        out.sort();
        Ok(out)
    }

    fn len(&self) -> usize {
        *lock(&self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_ids(dir: &Path) -> Vec<u64> {
        let mut ids: Vec<u64> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".jnl")?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort();
        ids
    }

    fn one_value(value: &[u8]) -> VersionSet {
        let replica = ringkv_core::ReplicaId::new(ringkv_core::NodeId::new("n1").unwrap(), 1);
        VersionSet::new()
            .update(
                &ringkv_core::VersionVector::new(),
                Some(bytes::Bytes::copy_from_slice(value)),
                &replica,
            )
            .0
    }

    /// A replica write that finds the key already holding what it brings changes nothing,
    /// but its acknowledgement vouches for that state: it must wait for the sync of the write
    /// it read (here still unsynced), not answer at once.
    #[test]
    fn a_write_that_changes_nothing_is_durable_only_with_what_it_read() {
        use std::task::{Context, Poll, Waker};
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        let partition = PartitionId::new(7, 1024).unwrap();
        let versions = one_value(b"v");
        let gate = lock(&engine.shared.sync_gate);
        let (_, first) = engine
            .update_deferred(partition, b"k", &mut |_| Some(versions.clone()))
            .unwrap();
        let (stored, second) = engine
            .update_deferred(partition, b"k", &mut |current| match current {
                Some(cur) if cur.includes(&versions) => None,
                _ => Some(versions.clone()),
            })
            .unwrap();
        assert_eq!(
            stored.as_ref(),
            Some(&versions),
            "the second write changed nothing"
        );
        let mut cx = Context::from_waker(Waker::noop());
        let mut second = std::pin::pin!(second.wait());
        assert!(
            second.as_mut().poll(&mut cx).is_pending(),
            "acknowledged before the sync of the state it vouches for"
        );
        drop(gate);
        engine
            .shared
            .commit
            .wait_durable(engine.shared.commit.latest())
            .unwrap();
        assert!(matches!(second.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
        let mut first = std::pin::pin!(first.wait());
        assert!(matches!(first.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    }

    /// The read cache is write-through and remembers absence: a key just written, and a key
    /// found empty once, are answered without reading fjall; a delete is remembered too.
    #[test]
    fn writes_fill_the_read_cache_and_a_key_found_empty_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        let partition = PartitionId::of(ringkv_core::key_hash(b"k"), 64);
        let set = VersionSet::default()
            .update_exact(
                &Default::default(),
                &[],
                Some(bytes::Bytes::from_static(b"v")),
                &ringkv_core::ReplicaId::new(NodeId::new("n1").unwrap(), 1),
            )
            .0;
        let counts = |engine: &FjallEngine| {
            let stats = engine.read_cache_stats().unwrap();
            (stats.hits, stats.misses)
        };
        engine
            .update(partition, b"k", &mut |_| Some(set.clone()))
            .unwrap();
        assert_eq!(engine.get(partition, b"k").unwrap(), Some(set.clone()));
        assert_eq!(counts(&engine), (1, 0), "the write filled the cache");
        assert_eq!(engine.get(partition, b"absent").unwrap(), None);
        assert_eq!(
            counts(&engine),
            (1, 1),
            "first read of an absent key misses"
        );
        assert_eq!(engine.get(partition, b"absent").unwrap(), None);
        assert_eq!(counts(&engine), (2, 1), "its absence is remembered");
        engine.remove(partition, b"k").unwrap();
        assert_eq!(engine.get(partition, b"k").unwrap(), None);
        assert_eq!(counts(&engine), (3, 1), "a delete is remembered");
        engine.drop_partition(partition).unwrap();
        assert_eq!(engine.get(partition, b"absent").unwrap(), None);
        assert_eq!(
            counts(&engine),
            (3, 2),
            "a drop forgets the partition's entries"
        );
    }

    /// A drop that fails after some of its batches were appended still forgets the cache's
    /// entries of the partition and its in-memory tree: reads and read-modify-writes then see
    /// what is stored, and the tree is what the stored leaves say (before, the deleted records
    /// were still served from the cache and built on by writes).
    #[test]
    fn a_drop_that_fails_midway_leaves_no_stale_cache_entry_or_tree() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        let partition = PartitionId::new(7, 1024).unwrap();
        let keys: Vec<Vec<u8>> = (0..DROP_BATCH_KEYS + 100)
            .map(|i| format!("k{i:05}").into_bytes())
            .collect();
        for key in &keys {
            let value = one_value(key);
            engine
                .update(partition, key, &mut |_| Some(value.clone()))
                .unwrap();
        }
        // A malformed record key that sorts after every record of the partition: the drop's
        // first batch is appended, then the second fails on it.
        let mut malformed = partition_prefix(partition).to_vec();
        malformed.push(0xff);
        engine.shared.records.insert(malformed, b"x").unwrap();
        assert!(engine.drop_partition(partition).is_err());
        let mut deleted = 0;
        for key in &keys {
            let stored = engine
                .shared
                .records
                .get(record_key(partition, key))
                .unwrap();
            let expected = stored.is_some().then(|| one_value(key));
            deleted += usize::from(stored.is_none());
            assert_eq!(engine.get(partition, key).unwrap(), expected, "{key:?}");
            let mut seen = None;
            engine
                .update(partition, key, &mut |current| {
                    seen = Some(current.cloned());
                    None
                })
                .unwrap();
            assert_eq!(seen, Some(expected), "{key:?}: what a write builds on");
        }
        assert_eq!(deleted, DROP_BATCH_KEYS, "the first batch was deleted");
        let stored_tree = engine.load_tree(partition).unwrap();
        assert_eq!(engine.merkle(partition).unwrap(), stored_tree);
    }

    /// Writes `value` under the key `k` through the engine (a ticket, a sync).
    fn write_k(engine: &FjallEngine, value: &str) {
        let partition = PartitionId::of(ringkv_core::key_hash(b"k"), 64);
        let set = VersionSet::default()
            .update_exact(
                &Default::default(),
                &[],
                Some(bytes::Bytes::from(value.to_owned())),
                &ringkv_core::ReplicaId::new(NodeId::new("n1").unwrap(), 1),
            )
            .0;
        engine
            .update(partition, b"k", &mut |_| Some(set.clone()))
            .unwrap();
    }

    /// Appends past 64 MB straight to a keyspace (no ticket, so no sync), then flushes until
    /// fjall seals its journal and opens the next. Incompressible filler: the journal
    /// compresses large values.
    fn rotate_journal(engine: &FjallEngine, dir: &std::path::Path, round: u32) {
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(round);
        let mut filler = || {
            (0..(1 << 20) / 8)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()
                })
                .collect::<Vec<u8>>()
        };
        let before = journal_ids(dir).last().copied();
        let meta = &engine.shared.meta;
        for i in 0..70u32 {
            meta.insert(format!("filler-{round}-{i}"), filler())
                .unwrap();
        }
        // Each flush checks the journal's size; keep flushing something until it rotated.
        for i in 0.. {
            if journal_ids(dir).last().copied() != before {
                return;
            }
            assert!(i < 100, "fjall never rotated its journal");
            meta.insert(format!("flush-{round}-{i}"), b"x").unwrap();
            meta.rotate_memtable_and_wait().unwrap();
        }
    }

    /// Data fjall replayed at open (after a process crash: in the OS, maybe not on disk) is
    /// synced before the engine serves anything that could vouch for it.
    #[test]
    fn opening_syncs_what_the_journal_held() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        write_k(&engine, "kept");
        drop(engine);
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        assert_eq!(
            engine.fsync_count(),
            1,
            "one sync at open, before any write"
        );
    }

    /// `JournalSync` fsyncs the file fjall appends to, also after fjall rotated its journal
    /// (which it does past 64 MB, on a memtable flush).
    #[test]
    fn the_journal_sync_follows_the_active_journal_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        write_k(&engine, "before");
        let first = journal_ids(dir.path());
        assert_eq!(first.len(), 1, "one journal at the start: {first:?}");
        let active = |engine: &FjallEngine| engine.shared.journal.active_id();
        assert_eq!(active(&engine), Some(first[0]));
        rotate_journal(&engine, dir.path(), 0);
        write_k(&engine, "after");
        let newest = *journal_ids(dir.path()).last().unwrap();
        assert!(newest > first[0]);
        assert_eq!(active(&engine), Some(newest), "fsyncs the newest journal");
    }

    /// Two rotations between two syncs (in production: heavy appends during one slow fsync),
    /// and fjall deleting the sealed journals once flushed: the sync used to follow
    /// `<id+1>.jnl`, found it gone, and fsynced the deleted file it had followed from then
    /// on, never the journal holding the appends it acknowledged.
    #[test]
    fn the_journal_sync_finds_the_active_journal_after_rotations_deleted_its_successor() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        write_k(&engine, "before");
        let first = *journal_ids(dir.path()).last().unwrap();
        assert_eq!(engine.shared.journal.active_id(), Some(first));
        rotate_journal(&engine, dir.path(), 0);
        rotate_journal(&engine, dir.path(), 1);
        // Flush every keyspace, so that fjall deletes the sealed journals.
        for i in 0.. {
            if journal_ids(dir.path()).len() == 1 {
                break;
            }
            assert!(
                i < 100,
                "sealed journals never deleted: {:?}",
                journal_ids(dir.path())
            );
            let shared = &engine.shared;
            for keyspace in [&shared.records, &shared.leaves, &shared.hints] {
                let _ = keyspace.rotate_memtable_and_wait();
            }
            shared.meta.insert(format!("x-{i}"), b"x").unwrap();
            shared.meta.rotate_memtable_and_wait().unwrap();
        }
        let newest = *journal_ids(dir.path()).last().unwrap();
        assert!(newest >= first + 2, "two rotations: {first} then {newest}");
        write_k(&engine, "after");
        assert_eq!(
            engine.shared.journal.active_id(),
            Some(newest),
            "the group commit fsyncs the journal holding the writes it acknowledges"
        );
    }
}
