//! Keys on the ring: MD5 of the key as a big-endian 128-bit integer, and the partition
//! that hash falls in.
//!
//! Q is a power of two, so the ring's Q equal partitions are exactly the values sharing their
//! top log2(Q) bits, and finding a key's partition is a shift.

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// A key's position on the 2^128 ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyHash(pub u128);

/// MD5 of the key, read as a big-endian integer.
pub fn key_hash(key: &[u8]) -> KeyHash {
    let digest = Md5::digest(key);
    KeyHash(u128::from_be_bytes(digest.into()))
}

/// Index of one of the Q equal partitions, `0..Q`, numbered clockwise from hash 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionId(u32);

impl PartitionId {
    /// The partition with this index in a ring of `partitions` (Q) partitions, if it exists.
    pub fn new(index: u32, partitions: u32) -> Option<PartitionId> {
        (index < partitions).then_some(PartitionId(index))
    }

    /// The partition holding `hash` in a ring of `partitions` partitions (a power of two).
    pub fn of(hash: KeyHash, partitions: u32) -> PartitionId {
        debug_assert!(partitions.is_power_of_two());
        let bits = partitions.trailing_zeros();
        if bits == 0 {
            PartitionId(0)
        } else {
            PartitionId((hash.0 >> (128 - bits)) as u32)
        }
    }

    /// The first hash of this partition in a ring of `partitions` partitions.
    pub fn first_hash(self, partitions: u32) -> KeyHash {
        let bits = partitions.trailing_zeros();
        if bits == 0 {
            KeyHash(0)
        } else {
            KeyHash((self.0 as u128) << (128 - bits))
        }
    }

    pub fn index(self) -> u32 {
        self.0
    }

    /// The next partition clockwise.
    pub fn next(self, partitions: u32) -> PartitionId {
        PartitionId((self.0 + 1) % partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_a_known_vector() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(key_hash(b"").0, 0xd41d8cd98f00b204e9800998ecf8427e);
    }

    #[test]
    fn partitions_are_hash_prefixes() {
        let q = 1024;
        let h = KeyHash(0xd41d8cd98f00b204e9800998ecf8427e);
        let p = PartitionId::of(h, q);
        assert_eq!(
            p.index(),
            0xd41d8cd98f00b204e9800998ecf8427e_u128.wrapping_shr(118) as u32
        );
        assert!(p.first_hash(q) <= h);
        assert!(h < PartitionId(p.index() + 1).first_hash(q));
        assert_eq!(PartitionId::of(KeyHash(u128::MAX), q).index(), q - 1);
        assert_eq!(PartitionId::of(KeyHash(u128::MAX), 1).index(), 0);
        assert_eq!(PartitionId(q - 1).next(q).index(), 0);
    }
}
