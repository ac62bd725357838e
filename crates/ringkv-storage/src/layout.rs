//! The byte layout shared by every engine: how keys are ordered and how values are framed.
//!
//! Both engines order a partition's keys the same way (the in-memory model stores the same
//! encoded keys in a `BTreeMap`), so "storage order" means the same thing everywhere:
//!
//! - record key: `[partition u32 BE][leaf u16 BE][key bytes]` (`leaf` = `LeafIndex::of_key`),
//!   so a partition is a range and one Merkle leaf of it is a range;
//! - Merkle leaf key: `[partition u32 BE][leaf u16 BE]`, value a framed u64 BE;
//! - hint key: `[target length u8][target bytes][partition u32 BE][key bytes]`;
//! - meta key: the UTF-8 name.
//!
//! Every value is framed as `[format version u8][xxh3-64 BE of payload][payload]`. The
//! checksum is computed before the write and verified on every read; a mismatch is
//! `StorageError::Corrupt`, never data.

use bytes::Bytes;
use ringkv_core::constants::{MAX_KEY_BYTES, MAX_PARTITIONS};
use ringkv_core::merkle::LeafIndex;
use ringkv_core::{NodeId, PartitionId, VersionSet};
use xxhash_rust::xxh3::xxh3_64;

use crate::StorageError;

/// The frame format written by this version of the code.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes before the payload in a framed value: version and checksum.
pub const FRAME_HEADER_BYTES: usize = 1 + 8;
/// Bytes of a record key before the user key: partition and leaf.
pub const RECORD_PREFIX_BYTES: usize = 4 + 2;

/// Fjall keyspace holding the records.
pub const RECORDS_KEYSPACE: &str = "records";
/// Fjall keyspace holding the Merkle leaves.
pub const LEAVES_KEYSPACE: &str = "merkle_leaves";
/// Fjall keyspace holding the metadata blobs.
pub const META_KEYSPACE: &str = "meta";
/// Fjall keyspace holding the hints.
pub const HINTS_KEYSPACE: &str = "hints";

/// Wraps `payload` in a frame carrying its checksum.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&xxh3_64(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks a frame and returns its payload. `what` names the value for the error message.
pub fn unframe<'a>(what: &dyn Fn() -> String, framed: &'a [u8]) -> Result<&'a [u8], StorageError> {
    if framed.len() < FRAME_HEADER_BYTES {
        return Err(StorageError::corrupt(
            what(),
            format!("value of {} bytes is shorter than its header", framed.len()),
        ));
    }
    if framed[0] != FORMAT_VERSION {
        return Err(StorageError::corrupt(
            what(),
            format!("unknown format version {}", framed[0]),
        ));
    }
    let stored = u64::from_be_bytes(framed[1..9].try_into().expect("8 bytes"));
    let payload = &framed[FRAME_HEADER_BYTES..];
    let actual = xxh3_64(payload);
    if stored != actual {
        return Err(StorageError::corrupt(
            what(),
            format!("checksum mismatch: stored {stored:016x}, computed {actual:016x}"),
        ));
    }
    Ok(payload)
}

/// Frames a version set for storage.
pub fn encode_versions(versions: &VersionSet) -> Vec<u8> {
    frame(&postcard::to_allocvec(versions).expect("a VersionSet always serializes"))
}

/// Checks and decodes a stored version set (decoding also checks the set's invariants).
pub fn decode_versions(
    what: &dyn Fn() -> String,
    framed: &[u8],
) -> Result<VersionSet, StorageError> {
    let payload = unframe(what, framed)?;
    postcard::from_bytes(payload)
        .map_err(|e| StorageError::corrupt(what(), format!("undecodable version set: {e}")))
}

/// Frames a Merkle leaf hash.
pub fn encode_leaf(hash: u64) -> Vec<u8> {
    frame(&hash.to_be_bytes())
}

pub fn decode_leaf(what: &dyn Fn() -> String, framed: &[u8]) -> Result<u64, StorageError> {
    let payload = unframe(what, framed)?;
    let bytes: [u8; 8] = payload.try_into().map_err(|_| {
        StorageError::corrupt(what(), format!("leaf hash of {} bytes", payload.len()))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Rejects keys longer than `MAX_KEY_BYTES`.
pub fn check_key(key: &[u8]) -> Result<(), StorageError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StorageError::KeyTooLong {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

pub fn partition_prefix(partition: PartitionId) -> [u8; 4] {
    partition.index().to_be_bytes()
}

/// Where a scan of `partition`'s records starts: strictly after the user key `after`, or at
/// the partition's first record.
pub fn scan_start(partition: PartitionId, after: Option<&[u8]>) -> std::ops::Bound<Vec<u8>> {
    match after {
        Some(after) => std::ops::Bound::Excluded(record_key(partition, after)),
        None => std::ops::Bound::Included(partition_prefix(partition).to_vec()),
    }
}

pub fn leaf_prefix(partition: PartitionId, leaf: LeafIndex) -> [u8; RECORD_PREFIX_BYTES] {
    let mut out = [0u8; RECORD_PREFIX_BYTES];
    out[..4].copy_from_slice(&partition.index().to_be_bytes());
    out[4..].copy_from_slice(&(leaf.get() as u16).to_be_bytes());
    out
}

/// `[partition][leaf][key]`.
pub fn record_key(partition: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_PREFIX_BYTES + key.len());
    out.extend_from_slice(&leaf_prefix(partition, LeafIndex::of_key(key)));
    out.extend_from_slice(key);
    out
}

/// The user key of an encoded record key.
pub fn user_key(record_key: &[u8]) -> Result<Bytes, StorageError> {
    if record_key.len() < RECORD_PREFIX_BYTES {
        return Err(StorageError::corrupt(
            "record key",
            format!("{} bytes, shorter than its prefix", record_key.len()),
        ));
    }
    Ok(Bytes::copy_from_slice(&record_key[RECORD_PREFIX_BYTES..]))
}

/// The partition an encoded record or leaf key belongs to.
pub fn partition_of(encoded: &[u8]) -> Result<PartitionId, StorageError> {
    let bytes: [u8; 4] = encoded
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StorageError::corrupt("record key", "shorter than a partition id"))?;
    let index = u32::from_be_bytes(bytes);
    PartitionId::new(index, MAX_PARTITIONS).ok_or_else(|| {
        StorageError::corrupt(
            "record key",
            format!("partition {index} beyond {MAX_PARTITIONS}"),
        )
    })
}

/// The leaf index stored in an encoded leaf key.
pub fn leaf_of(encoded: &[u8]) -> Result<LeafIndex, StorageError> {
    let bytes: [u8; 2] = encoded
        .get(4..6)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            StorageError::corrupt("Merkle leaf key", "shorter than partition and leaf")
        })?;
    let index = u16::from_be_bytes(bytes) as usize;
    LeafIndex::new(index).ok_or_else(|| {
        StorageError::corrupt("Merkle leaf key", format!("leaf {index} out of range"))
    })
}

/// The first encoded key of the partition after `partition`, if any.
pub fn next_partition_start(partition: PartitionId) -> Option<[u8; 4]> {
    partition.index().checked_add(1).map(u32::to_be_bytes)
}

/// `[target length][target]`: the prefix of every hint for `target`.
pub fn hint_target_prefix(target: &NodeId) -> Vec<u8> {
    let name = target.as_str().as_bytes();
    let mut out = Vec::with_capacity(1 + name.len());
    out.push(u8::try_from(name.len()).expect("node ids are at most 64 bytes"));
    out.extend_from_slice(name);
    out
}

pub fn hint_key(target: &NodeId, partition: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut out = hint_target_prefix(target);
    out.extend_from_slice(&partition.index().to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Splits an encoded hint key into its target, partition and key.
pub fn decode_hint_key(encoded: &[u8]) -> Result<(NodeId, PartitionId, Bytes), StorageError> {
    let bad = |detail: &str| StorageError::corrupt("hint key", detail.to_string());
    let len = *encoded.first().ok_or_else(|| bad("empty"))? as usize;
    let name = encoded
        .get(1..1 + len)
        .ok_or_else(|| bad("shorter than its target"))?;
    let name = std::str::from_utf8(name).map_err(|_| bad("target is not UTF-8"))?;
    let target = NodeId::new(name).map_err(|e| bad(&e.to_string()))?;
    let rest = &encoded[1 + len..];
    let partition = partition_of(rest)?;
    Ok((target, partition, Bytes::copy_from_slice(&rest[4..])))
}

/// The smallest key greater than every key starting with `prefix` (`None`: no such key).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < u8::MAX {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_a_flipped_bit_is_caught() {
        let framed = frame(b"payload");
        let what = || "test value".to_string();
        assert_eq!(unframe(&what, &framed).unwrap(), b"payload");
        for i in 0..framed.len() {
            let mut bad = framed.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(unframe(&what, &bad), Err(StorageError::Corrupt { .. })),
                "byte {i}"
            );
        }
        assert!(matches!(
            unframe(&what, &framed[..5]),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn record_keys_sort_by_partition_then_leaf() {
        let p = |i| PartitionId::new(i, 16).unwrap();
        let a = record_key(p(1), b"zzz");
        let b = record_key(p(2), b"aaa");
        assert!(a < b);
        assert_eq!(partition_of(&a).unwrap(), p(1));
        assert_eq!(user_key(&a).unwrap().as_ref(), b"zzz");
        assert_eq!(leaf_of(&a).unwrap(), LeafIndex::of_key(b"zzz"));
    }

    #[test]
    fn hint_keys_round_trip() {
        let t = NodeId::new("node-1").unwrap();
        let p = PartitionId::new(7, 16).unwrap();
        let k = hint_key(&t, p, b"key");
        assert!(k.starts_with(&hint_target_prefix(&t)));
        assert_eq!(
            decode_hint_key(&k).unwrap(),
            (t, p, Bytes::from_static(b"key"))
        );
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff]), None);
    }
}
