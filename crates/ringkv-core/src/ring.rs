//! The ring: Q equal partitions of the MD5 space, the claim algorithm that assigns them to
//! nodes, and preference lists. (CONTRACT STUB: being implemented.)

use serde::{Deserialize, Serialize};

use crate::hash::{KeyHash, PartitionId};
use crate::ids::NodeId;

/// A member as the claim algorithm sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Relative capacity, 1..=MAX_WEIGHT.
    pub weight: u32,
    /// Failure domain.
    pub zone: String,
}

/// Q and N, fixed when a cluster is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingParams {
    pub partitions: u32,
    pub n: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("invalid ring: {0}")]
    Invalid(String),
}

/// The partition table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    params: RingParams,
    members: Vec<Member>,
    owners: Vec<u16>,
}

impl Ring {
    /// Assigns partitions to `members`, moving as little as possible from `previous`.
    pub fn claim(previous: Option<&Ring>, members: &[Member], params: RingParams) -> Result<Ring, RingError> {
        let _ = (previous, members, params);
        todo!()
    }
    pub fn params(&self) -> RingParams {
        self.params
    }
    pub fn members(&self) -> &[Member] {
        &self.members
    }
    pub fn owner(&self, partition: PartitionId) -> &NodeId {
        &self.members[self.owners[partition.index() as usize] as usize].id
    }
    pub fn partition_of(&self, hash: KeyHash) -> PartitionId {
        PartitionId::of(hash, self.params.partitions)
    }
    /// Home replicas (first N distinct nodes clockwise from the partition) then fallbacks.
    pub fn preference_list(&self, partition: PartitionId) -> PreferenceList<'_> {
        let _ = partition;
        todo!()
    }
    pub fn partitions_owned(&self, node: &NodeId) -> usize {
        let _ = node;
        todo!()
    }
}

/// A partition's preference list.
#[derive(Debug, Clone)]
pub struct PreferenceList<'r> {
    ring: &'r Ring,
    partition: PartitionId,
}

impl<'r> PreferenceList<'r> {
    pub fn partition(&self) -> PartitionId {
        self.partition
    }
    /// The first min(N, members) distinct nodes.
    pub fn home(&self) -> impl Iterator<Item = &'r NodeId> + '_ {
        let _ = self.ring;
        std::iter::empty()
    }
    /// Every other member, in ring order.
    pub fn fallbacks(&self) -> impl Iterator<Item = &'r NodeId> + '_ {
        std::iter::empty()
    }
}
