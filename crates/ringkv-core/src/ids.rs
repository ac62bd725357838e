//! Names of nodes and of replicas.
//!
//! A `NodeId` is the stable name an operator gives a node. A `ReplicaId` is the name under
//! which a node's writes are counted in version vectors: the node id plus an *epoch* that
//! changes whenever the node lost its state (a wiped data directory) or may have lost some
//! (it stopped without recording a clean stop). Reusing an actor id after losing its
//! counters is how Riak lost acknowledged writes (riak_kv#679); a fresh epoch makes the new
//! incarnation a new actor, so its dots can never collide with the old.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

use crate::constants::MAX_NODE_ID_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("node id must be 1 to {MAX_NODE_ID_BYTES} characters of [A-Za-z0-9_.-], got {0:?}")]
    InvalidNodeId(String),
}

/// A node's stable name: `[A-Za-z0-9_.-]{1,64}`.
///
/// Shared, not owned: node ids are cloned on every request (preference lists, quorum
/// trackers) and with every version set (each replica id in its context and dots), so a
/// clone is a reference count, not an allocation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    pub fn new(id: impl Into<String>) -> Result<NodeId, IdError> {
        let id = id.into();
        if Self::valid(&id) {
            Ok(NodeId(Arc::from(id)))
        } else {
            Err(IdError::InvalidNodeId(id))
        }
    }

    fn valid(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= MAX_NODE_ID_BYTES
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NodeId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node id")
            }
            // Borrowed or not, the id is copied once, into its shared allocation.
            fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<NodeId, E> {
                if NodeId::valid(id) {
                    Ok(NodeId(Arc::from(id)))
                } else {
                    Err(E::custom(IdError::InvalidNodeId(id.to_owned())))
                }
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl std::str::FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        NodeId::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The actor that counts writes in version vectors: a node in one incarnation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId {
    node: NodeId,
    epoch: u32,
}

impl ReplicaId {
    pub fn new(node: NodeId, epoch: u32) -> ReplicaId {
        ReplicaId { node, epoch }
    }
    pub fn node(&self) -> &NodeId {
        &self.node
    }
    pub fn epoch(&self) -> u32 {
        self.epoch
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node, self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_follow_the_contract() {
        assert!(NodeId::new("n1").is_ok());
        assert!(NodeId::new("a.b-c_D9").is_ok());
        assert!(NodeId::new("x".repeat(64)).is_ok());
        assert!(NodeId::new("x".repeat(65)).is_err());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("has space").is_err());
        assert!(NodeId::new("slash/").is_err());
        assert!(NodeId::new("é").is_err());
    }

    #[test]
    fn deserializing_checks_the_invariant() {
        let bad = postcard::to_allocvec(&"bad id").unwrap();
        assert!(postcard::from_bytes::<NodeId>(&bad).is_err());
        let good = postcard::to_allocvec(&"good").unwrap();
        assert_eq!(
            postcard::from_bytes::<NodeId>(&good).unwrap().as_str(),
            "good"
        );
    }
}
