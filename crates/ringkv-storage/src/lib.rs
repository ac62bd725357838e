//! Storage for ringkv: the `StorageEngine` trait a node stores its replicas through, the
//! in-memory engine (the reference model), the durable fjall engine, and the hint store.
//!
//! # Laws
//!
//! - **Only this crate names a concrete engine.** The node holds a `dyn StorageEngine` and a
//!   `dyn HintStore`; `fjall` appears nowhere else.
//! - **A write returns only after it is durable.** `update`, `remove`, `drop_partition`,
//!   `put_meta` and every hint store write fsync the journal before they return. Concurrent
//!   writers share fsyncs (group commit, see `group_commit`): a writer waits until a sync
//!   that *started after its write reached the journal* has completed, so no write is
//!   acknowledged before the sync covering it. `update_many` stages every key, then waits once. A read may see a write that is not yet
//!   acknowledged (it is in the journal, waiting for its sync); if the process dies before
//!   that sync, the write may be lost, but it was never acknowledged. `update_deferred` is
//!   `update` with the wait handed to the caller (`Durable::wait`, async): the caller
//!   acknowledges nothing before it resolves.
//! - **Every stored value carries a checksum.** Values are framed as
//!   `[format version u8][xxh3-64 of payload][payload]`; the checksum is computed before the
//!   write and verified on every read. A mismatch is `StorageError::Corrupt { what, detail }`
//!   naming the record, never data.
//! - **A key's record and its partition's Merkle leaf change in one atomic batch**, so the
//!   stored Merkle leaves always match the stored records, after a crash too. The in-memory
//!   tree of a partition is loaded lazily from the stored leaves and updated in O(depth)
//!   under the partition's lock, in the same order the batches reach the journal.
//!
//! # On-disk layout (fjall)
//!
//! One fjall database per node, with four keyspaces:
//!
//! | keyspace        | key                                        | value                          |
//! |-----------------|--------------------------------------------|--------------------------------|
//! | `records`       | `[partition u32 BE][leaf u16 BE][key]`     | frame(postcard(`VersionSet`))  |
//! | `merkle_leaves` | `[partition u32 BE][leaf u16 BE]`          | frame(leaf hash u64 BE)        |
//! | `meta`          | name (UTF-8)                               | frame(blob)                    |
//! | `hints`         | `[len u8][target][partition u32 BE][key]`  | frame(postcard(`VersionSet`))  |
//!
//! `leaf` is `LeafIndex::of_key(key)`, so a partition scan and a Merkle-leaf scan are range
//! scans, and "storage order" within a partition is (leaf, key bytes). A leaf whose hash is 0
//! (an empty leaf) is not stored. `frame(p)` is `[1u8][xxh3_64(p) BE][p]` (`layout`).
//!
//! # Hint store
//!
//! Hints live in the `hints` keyspace of the same database (`FjallEngine::hint_store`) and
//! share its group commit. A hint is identified by (target, partition, key); pushing a hint
//! already held merges the two version sets with `VersionSet::sync`, so the backlog grows
//! with distinct keys, not with writes, and a new hint beyond `max_hints` is refused with
//! `StorageError::HintBacklogFull`. `acknowledge` deletes a hint only if its digest is still
//! the one delivered, so a write merged in during delivery is kept for the next round.
//!
//! # Group commit and its one cost
//!
//! See `group_commit`: one sync thread per engine fsyncs whatever was appended since its last
//! fsync. fjall's own `Database::persist(SyncAll)` would hold the journal lock through the
//! fsync and stop every append meanwhile, so the engine flushes the journal buffer under the
//! lock and fsyncs the journal file outside it (`JournalSync` in `fjall_engine`). The one cost
//! is that this leans on how fjall names and rotates its journal files (pinned by Cargo.lock).
//!
//! # Limits
//!
//! Keys are at most `ringkv_core::constants::MAX_KEY_BYTES`; `scan` returns at most `limit`
//! keys; `drop_partition` deletes in batches of `DROP_BATCH_KEYS`; the hint store holds at
//! most `max_hints` distinct (target, partition, key) hints.

pub mod error;
pub mod fjall_engine;
pub mod group_commit;
pub mod layout;
pub mod memory;
pub mod read_cache;

use bytes::Bytes;
use ringkv_core::merkle::{LeafIndex, MerkleTree};
use ringkv_core::{NodeId, PartitionId, VersionSet};

pub use error::StorageError;
pub use fjall_engine::{DEFAULT_READ_CACHE_BYTES, FjallEngine, FjallHintStore, FjallOptions};
pub use group_commit::Durable;
pub use memory::{MemoryEngine, MemoryHintStore};
pub use read_cache::ReadCacheStats;

/// A user key.
pub type Key = Bytes;

/// Most keys `drop_partition` deletes in one batch.
pub const DROP_BATCH_KEYS: usize = 1024;

/// Default bound of the hint store: distinct (target, partition, key) hints held.
pub const DEFAULT_MAX_HINTS: usize = 100_000;

/// A node's replica store. Every method is safe to call from many threads.
pub trait StorageEngine: Send + Sync + 'static {
    /// The versions stored for `key`, or `None` if the key is absent.
    fn get(&self, partition: PartitionId, key: &[u8]) -> Result<Option<VersionSet>, StorageError>;

    /// Atomic read-modify-write of one key under a per-key lock: `f` sees the current set and
    /// returns the new set to store, or `None` to leave it unchanged. `f` may be called more
    /// than once (if the partition is dropped concurrently), so it should be a function of
    /// its argument. Durable before it returns; the partition's Merkle leaf changes in the
    /// same batch. Returns what is stored afterwards. When `f` leaves the set unchanged, it
    /// returns once what `f` saw is durable (another writer's change may still be waiting for
    /// its fsync), so a caller can vouch for it.
    fn update(
        &self,
        partition: PartitionId,
        key: &[u8],
        f: &mut dyn FnMut(Option<&VersionSet>) -> Option<VersionSet>,
    ) -> Result<Option<VersionSet>, StorageError>;

    /// `update` that returns before the durability wait: what it stored is applied (reads
    /// see it) and appended to the journal, and durable once the returned `Durable`
    /// resolves. A node's write path awaits that without holding a thread through the fsync.
    /// Engines without a journal are durable on return.
    fn update_deferred(
        &self,
        partition: PartitionId,
        key: &[u8],
        f: &mut dyn FnMut(Option<&VersionSet>) -> Option<VersionSet>,
    ) -> Result<(Option<VersionSet>, Durable), StorageError> {
        self.update(partition, key, f)
            .map(|stored| (stored, Durable::ready()))
    }
    /// Whether a write might block now for longer than applying it takes (the engine is
    /// throttling writers). Callers that apply writes on an async worker move them to a
    /// blocking thread while this is true.
    fn writes_may_stall(&self) -> bool {
        false
    }
    /// The read cache's counters, for engines that keep one.
    fn read_cache_stats(&self) -> Option<ReadCacheStats> {
        None
    }
    /// Removes a key (tombstone purge, or data this node no longer replicates), updating the
    /// Merkle leaf in the same batch. Removing an absent key is not an error.
    fn remove(&self, partition: PartitionId, key: &[u8]) -> Result<(), StorageError>;

    /// Removes a key only if its stored set is still exactly `expected`, so a write that
    /// arrived since the caller looked is never lost. Returns whether it removed the key.
    /// Durable before it returns.
    ///
    /// The sets themselves are compared, not their digests: a client can make two different
    /// sets with the same 64-bit `VersionSet::digest`, and removing on an equal digest would
    /// drop a write the caller never saw.
    fn remove_if(
        &self,
        partition: PartitionId,
        key: &[u8],
        expected: &VersionSet,
    ) -> Result<bool, StorageError>;

    /// `update` of many keys of one partition with one durability wait at the end (a handoff
    /// chunk): `f` gets each key's current set and the incoming one and returns the set to
    /// store, or `None` to leave the key unchanged. Keys are applied in order; if an error
    /// stops it, the keys before may be stored, the rest are not.
    fn update_many(
        &self,
        partition: PartitionId,
        entries: &[(Key, VersionSet)],
        f: &mut dyn FnMut(Option<&VersionSet>, &VersionSet) -> Option<VersionSet>,
    ) -> Result<(), StorageError>;

    /// Up to `limit` keys of `partition` in storage order (leaf, then key bytes), starting
    /// strictly after the key `after`. Feed the last key returned back as `after` to resume.
    fn scan(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Key, VersionSet)>, StorageError>;

    /// `scan`, except that a record that cannot be read (`StorageError::Corrupt`) does not end
    /// it: its key is listed in `unreadable`, never served, and the scan goes on. For the
    /// background walks over a whole partition (handoff, the ownership sweep, tombstone
    /// scans), which one bad record must not stop for good. At most `limit` keys and about
    /// `SCAN_BYTES_MAX` bytes of records; `Scanned::more` says whether the partition goes on.
    /// Resume after `Scanned::last`.
    fn scan_readable(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Scanned, StorageError>;

    /// Every key of one Merkle leaf of `partition` (anti-entropy after a diff), in key order.
    /// Like `scan_readable`, a record that cannot be read is listed in `unreadable` and the
    /// scan goes on, so one bad record does not stop the exchange of everything else.
    fn scan_leaf(&self, partition: PartitionId, leaf: LeafIndex) -> Result<Scanned, StorageError>;

    /// A copy of the partition's Merkle tree (the empty tree for an empty partition).
    fn merkle(&self, partition: PartitionId) -> Result<MerkleTree, StorageError>;

    /// The partitions holding at least one key, ascending.
    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError>;

    /// Deletes every key of `partition` (in batches of `DROP_BATCH_KEYS`) and its Merkle
    /// state. Durable before it returns.
    fn drop_partition(&self, partition: PartitionId) -> Result<(), StorageError>;

    /// A small metadata blob (node identity, ring state, handoff progress).
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;

    /// Stores a metadata blob durably, replacing any previous value.
    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError>;
}

/// What `StorageEngine::scan_readable` (or `scan_leaf`) found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scanned {
    /// The readable records, in storage order.
    pub entries: Vec<(Key, VersionSet)>,
    /// Keys whose record failed its checksum or did not decode.
    pub unreadable: Vec<Key>,
    /// The last key examined, readable or not: where the next scan resumes.
    pub last: Option<Key>,
    /// Keys examined.
    pub examined: usize,
    /// Whether the scan stopped at a limit (keys asked for, or `SCAN_BYTES_MAX`) rather than
    /// at the end of the partition: resume after `last`.
    pub more: bool,
}

/// Most bytes of stored records one `scan_readable` collects (it takes at least one record):
/// a partition walk holds at most about this much, however large the values.
pub const SCAN_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A write destined for `target` that another node accepted on its behalf (hinted handoff).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    pub target: NodeId,
    pub partition: PartitionId,
    pub key: Key,
    pub versions: VersionSet,
}

/// Durable, bounded store of hints. Hints are identified by (target, partition, key).
pub trait HintStore: Send + Sync + 'static {
    /// Stores a hint durably. A hint for a (target, partition, key) already held is merged
    /// into it (`VersionSet::sync`), so the backlog is bounded by keys, not by writes. A new
    /// hint when `max_hints` are held is refused with `StorageError::HintBacklogFull`.
    fn push(&self, hint: Hint) -> Result<(), StorageError>;

    /// Up to `limit` hints for `target`, in (partition, key) order, starting after the
    /// (partition, key) `after` (from the first when `None`). Delivery walks a target's hints
    /// with this cursor, so a hint the target keeps refusing does not hold back the others.
    /// A stored hint that fails its checksum is passed over (logged), never served: it stays
    /// held (`len`, `is_empty`) and does not stop the walk.
    fn pending(
        &self,
        target: &NodeId,
        after: Option<(PartitionId, &[u8])>,
        limit: usize,
    ) -> Result<Vec<Hint>, StorageError>;

    /// Deletes a delivered hint, but only if the stored hint is still exactly the one
    /// delivered (the same version set, compared whole, not by digest): a hint merged after
    /// delivery started is kept. Durable.
    fn acknowledge(&self, hint: &Hint) -> Result<(), StorageError>;

    /// The hint held for `target` of `key`, if any.
    fn get(
        &self,
        target: &NodeId,
        partition: PartitionId,
        key: &[u8],
    ) -> Result<Option<VersionSet>, StorageError>;

    /// The targets with at least one pending hint, sorted.
    fn targets(&self) -> Result<Vec<NodeId>, StorageError>;

    /// The number of hints held.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which engine a node runs on; the node names engines only through this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// fjall: durable, embedded; the default.
    Fjall,
    /// In memory: for tests; everything is lost when the process ends.
    Memory,
}

/// A node's storage: the engine and its hint store.
pub struct OpenedStorage {
    pub engine: std::sync::Arc<dyn StorageEngine>,
    pub hints: std::sync::Arc<dyn HintStore>,
}

/// Opens the engine of `kind` in `dir` (created if absent) with a hint store bounded by
/// `max_hints` and, for fjall, a read cache of `read_cache_bytes` (0: none).
pub fn open(
    kind: EngineKind,
    dir: &std::path::Path,
    max_hints: usize,
    read_cache_bytes: usize,
) -> Result<OpenedStorage, StorageError> {
    match kind {
        EngineKind::Memory => Ok(OpenedStorage {
            engine: std::sync::Arc::new(MemoryEngine::new()),
            hints: std::sync::Arc::new(MemoryHintStore::new(max_hints)),
        }),
        EngineKind::Fjall => {
            std::fs::create_dir_all(dir)?;
            let engine = FjallEngine::open(
                dir,
                FjallOptions {
                    max_hints,
                    read_cache_bytes,
                    ..FjallOptions::default()
                },
            )?;
            let hints = engine.hint_store()?;
            Ok(OpenedStorage {
                engine: std::sync::Arc::new(engine),
                hints,
            })
        }
    }
}
