//! A bounded cache of decoded version sets in front of fjall.
//!
//! A point read from fjall walks the memtable's skiplist (and, past it, the segments), then
//! decodes the record; profiles put that walk at about a fifth of a node's CPU per GET when
//! the key is not cached. This cache keeps, for recently read or written keys, the decoded set
//! or the fact that the key holds nothing, in sharded hash maps.
//!
//! Coherence (the engine keeps these; docs/design.md §5):
//! - a write sets the key's entry to what it stored (or, for a delete, to "nothing") under the
//!   key's lock and its partition's lock, right after its batch is appended, so an entry never
//!   lags the store (write-through: a key just written is the key most likely read next);
//! - a read that misses fills the entry, found or not, under the key's lock (no write of the
//!   key can interleave) and only if the partition's drop generation did not move since it
//!   read;
//! - `drop_partition` removes the partition's entries under the partition's lock.
//!
//! It serves `get`, and the engine's read-modify-writes, which hold the key's lock (under which
//! an entry equals the stored record) and check the drop generation before they append.
//!
//! Bounded: each shard holds at most `budget / SHARDS` bytes (keys, values and a fixed
//! overhead per entry and sibling). Past that it evicts by CLOCK (second chance): a lookup
//! that finds an entry, or a write that replaces it, marks it used; a hand sweeps the shard's
//! entries in order, clearing marks, and evicts the first unmarked one. A new entry starts
//! unmarked, so keys read once (a scan, a load of new keys) go before keys read again.

use std::sync::{Mutex, MutexGuard, PoisonError};

use indexmap::IndexMap;
use ringkv_core::VersionSet;
use xxhash_rust::xxh3::xxh3_64;

/// Independent locks, so concurrent reads of different keys rarely meet.
const SHARDS: usize = 64;
/// Bytes counted per entry and per sibling on top of keys and values (map slot, vectors,
/// clocks): an estimate, so the budget bounds memory within a small factor.
const ENTRY_OVERHEAD: usize = 96;
const SIBLING_OVERHEAD: usize = 64;

struct Entry {
    /// `None`: the key is known to hold nothing.
    versions: Option<VersionSet>,
    /// As counted against the budget.
    size: usize,
    /// Used since the hand last passed (CLOCK's reference bit).
    used: bool,
}

#[derive(Default)]
struct Shard {
    /// In insertion order, except that a removal moves the last entry into the gap; the hand
    /// is an index into it.
    entries: IndexMap<Vec<u8>, Entry>,
    hand: usize,
    bytes: usize,
    /// Lookups answered and not, counted under the shard's lock (no shared counter to
    /// bounce between cores on every read).
    hits: u64,
    misses: u64,
}

impl Shard {
    fn remove(&mut self, key: &[u8]) {
        if let Some(entry) = self.entries.swap_remove(key) {
            self.bytes -= entry.size;
        }
    }

    /// Evicts one entry other than `keep` by CLOCK; false if there is none. Bounded: the first
    /// sweep clears every mark it passes, so an unmarked entry (other than `keep`) turns up
    /// within two sweeps of the shard.
    fn evict_one(&mut self, keep: &[u8]) -> bool {
        for _ in 0..=2 * self.entries.len() {
            if self.hand >= self.entries.len() {
                self.hand = 0;
            }
            let Some((key, entry)) = self.entries.get_index_mut(self.hand) else {
                return false;
            };
            if entry.used || key.as_slice() == keep {
                entry.used = false;
                self.hand += 1;
                continue;
            }
            // The last entry moves into the hand's slot and is looked at next.
            if let Some((_, entry)) = self.entries.swap_remove_index(self.hand) {
                self.bytes -= entry.size;
            }
            return true;
        }
        false
    }
}

pub struct ReadCache {
    shards: Vec<Mutex<Shard>>,
    shard_budget: usize,
}

/// What the cache holds and how it has served, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCacheStats {
    /// Lookups that found the key's set.
    pub hits: u64,
    /// Lookups that did not (the read went to fjall).
    pub misses: u64,
    /// Keys held.
    pub entries: u64,
    /// Bytes held, as counted against the budget.
    pub bytes: u64,
    /// The budget, in bytes (0: the cache is off).
    pub budget_bytes: u64,
}

/// What an entry is counted as.
fn size_of(key: &[u8], versions: Option<&VersionSet>) -> usize {
    ENTRY_OVERHEAD
        + key.len()
        + versions.map_or(0, |versions| {
            versions
                .siblings()
                .iter()
                .map(|s| SIBLING_OVERHEAD + s.value.as_ref().map_or(0, |v| v.len()))
                .sum::<usize>()
                + versions.context().len() * 16
        })
}

impl ReadCache {
    /// A cache of at most `budget_bytes` (0: caches nothing).
    pub fn new(budget_bytes: usize) -> ReadCache {
        ReadCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_budget: budget_bytes / SHARDS,
        }
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let shard = &self.shards[(xxh3_64(key) % SHARDS as u64) as usize];
        // Every critical section leaves the shard consistent before anything can panic.
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the cache knows of `key` (an encoded record key): `None` if nothing, else the
    /// key's set, or `Some(None)` when the key is known to hold nothing.
    pub fn get(&self, key: &[u8]) -> Option<Option<VersionSet>> {
        let mut shard = self.shard(key);
        let found = shard.entries.get_mut(key).map(|entry| {
            entry.used = true;
            entry.versions.clone()
        });
        match found {
            Some(_) => shard.hits += 1,
            None => shard.misses += 1,
        }
        found
    }

    /// What the cache knows of `key`, as `get`, without counting a hit or a miss (for the
    /// engine's read-modify-writes, so the counts stay those of reads).
    pub fn known(&self, key: &[u8]) -> Option<Option<VersionSet>> {
        self.shard(key)
            .entries
            .get(key)
            .map(|entry| entry.versions.clone())
    }

    /// Records `versions` (`None`: nothing) as what `key` holds, evicting other entries of
    /// its shard to stay within the budget. A key already held is replaced in place and
    /// marked used (a write of a key just read or written); a new one starts unmarked. A set
    /// larger than a whole shard's budget is not cached (and the key's older entry is gone).
    pub fn put(&self, key: &[u8], versions: Option<&VersionSet>) {
        let size = size_of(key, versions);
        let mut shard = self.shard(key);
        if size > self.shard_budget {
            shard.remove(key);
            return;
        }
        let replaced = shard.entries.get_mut(key).map(|entry| {
            entry.versions = versions.cloned();
            entry.used = true;
            std::mem::replace(&mut entry.size, size)
        });
        let held = replaced.unwrap_or(0);
        // Bounded: each round removes an entry other than this key, or ends.
        while shard.bytes - held + size > self.shard_budget {
            if !shard.evict_one(key) {
                break;
            }
        }
        shard.bytes = shard.bytes - held + size;
        if replaced.is_none() {
            let entry = Entry {
                versions: versions.cloned(),
                size,
                used: false,
            };
            shard.entries.insert(key.to_vec(), entry);
        }
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &[u8]) {
        self.shard(key).remove(key);
    }

    /// Forgets every key that starts with `prefix` (a partition's).
    pub fn remove_prefix(&self, prefix: &[u8]) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let mut freed = 0;
            shard.entries.retain(|key, entry| {
                let keep = !key.starts_with(prefix);
                if !keep {
                    freed += entry.size;
                }
                keep
            });
            shard.bytes -= freed;
        }
    }

    /// Bytes held, as counted against the budget.
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).bytes)
            .sum()
    }

    /// Totals over the shards (each locked in turn, so not one instant's).
    pub fn stats(&self) -> ReadCacheStats {
        let mut stats = ReadCacheStats {
            budget_bytes: (self.shard_budget * SHARDS) as u64,
            ..ReadCacheStats::default()
        };
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            stats.hits += shard.hits;
            stats.misses += shard.misses;
            stats.entries += shard.entries.len() as u64;
            stats.bytes += shard.bytes as u64;
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ringkv_core::{NodeId, ReplicaId, VersionVector};

    fn set(value: &[u8]) -> VersionSet {
        let replica = ReplicaId::new(NodeId::new("n1").unwrap(), 1);
        VersionSet::new()
            .update(
                &VersionVector::new(),
                Some(Bytes::copy_from_slice(value)),
                &replica,
            )
            .0
    }

    #[test]
    fn put_get_remove_and_remove_prefix() {
        let cache = ReadCache::new(1 << 20);
        cache.put(b"p1-a", Some(&set(b"x")));
        cache.put(b"p1-b", Some(&set(b"y")));
        cache.put(b"p2-a", Some(&set(b"z")));
        assert_eq!(cache.get(b"p1-a"), Some(Some(set(b"x"))));
        cache.put(b"p1-a", Some(&set(b"x2")));
        assert_eq!(cache.get(b"p1-a"), Some(Some(set(b"x2"))));
        cache.remove(b"p1-b");
        assert_eq!(cache.get(b"p1-b"), None);
        cache.remove_prefix(b"p1");
        assert_eq!(cache.get(b"p1-a"), None);
        assert_eq!(cache.get(b"p2-a"), Some(Some(set(b"z"))));
        cache.remove(b"p2-a");
        assert_eq!(cache.bytes(), 0, "every removal gives its bytes back");
    }

    #[test]
    fn a_key_known_to_hold_nothing_is_told_apart_from_one_not_cached() {
        let cache = ReadCache::new(1 << 20);
        assert_eq!(cache.get(b"k"), None, "not cached");
        cache.put(b"k", None);
        assert_eq!(cache.get(b"k"), Some(None), "known to hold nothing");
        assert_eq!(cache.bytes(), size_of(b"k", None));
        cache.put(b"k", Some(&set(b"v1")));
        assert_eq!(cache.get(b"k"), Some(Some(set(b"v1"))));
        assert_eq!(cache.bytes(), size_of(b"k", Some(&set(b"v1"))));
        cache.put(b"k", None);
        assert_eq!(cache.get(b"k"), Some(None), "a delete is remembered");
        cache.put(b"k", Some(&set(b"a longer value")));
        cache.put(b"k", Some(&set(&vec![0u8; 1 << 20])));
        assert_eq!(cache.get(b"k"), None, "a set past the budget is dropped");
        assert_eq!(cache.bytes(), 0);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (3, 2));
    }

    #[test]
    fn stats_count_hits_misses_entries_and_bytes() {
        let cache = ReadCache::new(1 << 20);
        assert_eq!(
            cache.stats(),
            ReadCacheStats {
                budget_bytes: (((1 << 20) / SHARDS) * SHARDS) as u64,
                ..ReadCacheStats::default()
            }
        );
        assert_eq!(cache.get(b"a"), None);
        cache.put(b"a", Some(&set(b"x")));
        cache.put(b"b", Some(&set(b"y")));
        assert!(cache.get(b"a").is_some());
        assert!(cache.get(b"a").is_some());
        assert_eq!(cache.get(b"c"), None);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (2, 2, 2));
        assert_eq!(stats.bytes, cache.bytes() as u64);
        assert!(stats.bytes > 0);
        cache.remove(b"a");
        assert_eq!(cache.stats().entries, 1);
        assert_eq!(ReadCache::new(0).stats().budget_bytes, 0);
    }

    #[test]
    fn the_budget_bounds_the_bytes_held() {
        let budget = 64 * 1024;
        let cache = ReadCache::new(budget);
        for i in 0..10_000u32 {
            let versions = set(&[7u8; 100]);
            // Sets and keys known to hold nothing, both counted.
            let versions = (i % 3 != 0).then_some(&versions);
            cache.put(format!("key-{i}").as_bytes(), versions);
            assert!(cache.bytes() <= budget, "{} bytes after {i}", cache.bytes());
        }
        assert!(
            cache.bytes() > budget / 2,
            "the cache is used: {}",
            cache.bytes()
        );
        // A set larger than a shard's budget is not kept.
        cache.put(b"huge", Some(&set(&vec![0u8; budget])));
        assert_eq!(cache.get(b"huge"), None);
        assert_eq!(ReadCache::new(0).bytes(), 0);
        let none = ReadCache::new(0);
        none.put(b"k", Some(&set(b"v")));
        none.put(b"j", None);
        assert_eq!(none.get(b"j"), None);
        assert_eq!(none.get(b"k"), None, "a zero budget caches nothing");
    }
    /// A stream of keys read once each (a scan, a load of new keys) must not displace the keys
    /// read again and again: each hot key is looked up (and filled on a miss, as the engine
    /// does) between inserts of keys never seen again, with the cache five times the hot set.
    #[test]
    fn keys_read_again_outlast_a_stream_of_keys_read_once() {
        let per_entry = size_of(b"hot-00000", Some(&set(&[7u8; 100])));
        let cache = ReadCache::new(SHARDS * 50 * per_entry);
        let hot: Vec<Vec<u8>> = (0..SHARDS * 10)
            .map(|i| format!("hot-{i:05}").into_bytes())
            .collect();
        let versions = set(&[7u8; 100]);
        let (mut hits, mut lookups) = (0u32, 0u32);
        for round in 0..40_000usize {
            let key = &hot[round % hot.len()];
            let found = cache.get(key).is_some();
            if !found {
                cache.put(key, Some(&versions));
            }
            if round >= 20_000 {
                lookups += 1;
                hits += u32::from(found);
            }
            cache.put(format!("once-{round:06}").as_bytes(), Some(&versions));
        }
        let rate = f64::from(hits) / f64::from(lookups);
        assert!(
            rate >= 0.95,
            "hot keys found {hits} of {lookups} times ({rate:.3})"
        );
    }
    /// With every entry marked used, an insert still finds room (the hand clears the marks and
    /// comes round), the bytes stay within the budget, and the new key is held.
    #[test]
    fn eviction_finds_room_when_every_entry_was_used() {
        let budget = SHARDS * 4 * size_of(b"key-00000", Some(&set(&[1u8; 100])));
        let cache = ReadCache::new(budget);
        let versions = set(&[1u8; 100]);
        let keys: Vec<String> = (0..2_000).map(|i| format!("key-{i:05}")).collect();
        for key in &keys {
            cache.put(key.as_bytes(), Some(&versions));
        }
        let held: Vec<&String> = keys
            .iter()
            .filter(|k| cache.get(k.as_bytes()).is_some())
            .collect();
        assert!(!held.is_empty());
        for key in &held {
            assert!(
                cache.get(key.as_bytes()).is_some(),
                "each held key marked used"
            );
        }
        for i in 0..500 {
            let key = format!("new-{i:05}");
            cache.put(key.as_bytes(), Some(&versions));
            assert!(cache.bytes() <= budget, "{} bytes after {i}", cache.bytes());
            assert!(cache.known(key.as_bytes()).is_some(), "{key} was cached");
        }
    }
}
