//! Storage engines. TEMPORARY stand-in matching the agreed trait, replaced by the real crate.
use bytes::Bytes;
use ringkv_core::merkle::{LeafIndex, MerkleTree};
use ringkv_core::{NodeId, PartitionId, VersionSet};
use std::collections::BTreeMap;
use std::sync::Mutex;

pub type Key = Bytes;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage engine error: {0}")]
    Engine(String),
    #[error("hint backlog is full ({max} hints)")]
    HintBacklogFull { max: usize },
}

pub trait StorageEngine: Send + Sync + 'static {
    fn get(&self, partition: PartitionId, key: &[u8]) -> Result<Option<VersionSet>, StorageError>;
    fn update(
        &self,
        partition: PartitionId,
        key: &[u8],
        f: &mut dyn FnMut(Option<&VersionSet>) -> Option<VersionSet>,
    ) -> Result<Option<VersionSet>, StorageError>;
    fn remove(&self, partition: PartitionId, key: &[u8]) -> Result<(), StorageError>;
    fn scan(&self, partition: PartitionId, after: Option<&[u8]>, limit: usize) -> Result<Vec<(Key, VersionSet)>, StorageError>;
    fn scan_leaf(&self, partition: PartitionId, leaf: LeafIndex) -> Result<Vec<(Key, VersionSet)>, StorageError>;
    fn merkle(&self, partition: PartitionId) -> Result<MerkleTree, StorageError>;
    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError>;
    fn drop_partition(&self, partition: PartitionId) -> Result<(), StorageError>;
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError>;
}

pub struct Hint {
    pub target: NodeId,
    pub partition: PartitionId,
    pub key: Key,
    pub versions: VersionSet,
}

#[derive(Default)]
pub struct MemoryEngine {
    data: Mutex<BTreeMap<(PartitionId, Vec<u8>), VersionSet>>,
    meta: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryEngine {
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }
}

impl StorageEngine for MemoryEngine {
    fn get(&self, p: PartitionId, key: &[u8]) -> Result<Option<VersionSet>, StorageError> {
        Ok(self.data.lock().unwrap().get(&(p, key.to_vec())).cloned())
    }
    fn update(&self, p: PartitionId, key: &[u8], f: &mut dyn FnMut(Option<&VersionSet>) -> Option<VersionSet>) -> Result<Option<VersionSet>, StorageError> {
        let mut d = self.data.lock().unwrap();
        let k = (p, key.to_vec());
        if let Some(n) = f(d.get(&k)) {
            d.insert(k.clone(), n);
        }
        Ok(d.get(&k).cloned())
    }
    fn remove(&self, p: PartitionId, key: &[u8]) -> Result<(), StorageError> {
        self.data.lock().unwrap().remove(&(p, key.to_vec()));
        Ok(())
    }
    fn scan(&self, _: PartitionId, _: Option<&[u8]>, _: usize) -> Result<Vec<(Key, VersionSet)>, StorageError> {
        Ok(vec![])
    }
    fn scan_leaf(&self, _: PartitionId, _: LeafIndex) -> Result<Vec<(Key, VersionSet)>, StorageError> {
        Ok(vec![])
    }
    fn merkle(&self, _: PartitionId) -> Result<MerkleTree, StorageError> {
        Ok(MerkleTree::new())
    }
    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError> {
        Ok(vec![])
    }
    fn drop_partition(&self, _: PartitionId) -> Result<(), StorageError> {
        Ok(())
    }
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.meta.lock().unwrap().get(name).cloned())
    }
    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        self.meta.lock().unwrap().insert(name.into(), value.to_vec());
        Ok(())
    }
}

/// TEMPORARY: stands in until the durable engine lands.
pub type FjallEngine = MemoryEngine;
impl MemoryEngine {
    pub fn open(_dir: &std::path::Path, _o: ()) -> Result<MemoryEngine, StorageError> {
        Ok(MemoryEngine::new())
    }
}
