//! The pure core of ringkv: everything about Dynamo that can be said without I/O.
//!
//! Laws this crate keeps:
//! - No network, disk, wall clock, random generator, thread or async runtime. Anything that
//!   varies (time, randomness, a replica's epoch) is passed in as a value. A test
//!   (`tests/architecture.rs` in the `ringkv` crate) checks the dependency list.
//! - Every function is deterministic: the same inputs give the same outputs on every node,
//!   which is what lets every node derive the same ring and the same Merkle hashes.
//! - Types whose values have invariants (`NodeId`, `PartitionId`, `Quorum`, `PreferenceList`)
//!   check them in their constructors and keep their fields private.

pub mod constants;
pub mod context;
pub mod hash;
pub mod ids;
pub mod merkle;
pub mod quorum;
pub mod ring;
pub mod topology;
pub mod version;

pub use context::{Context, ContextError};
pub use hash::{KeyHash, PartitionId, key_hash};
pub use ids::{IdError, NodeId, ReplicaId};
pub use version::{Dot, Fingerprint, Sibling, VersionSet, VersionVector};
