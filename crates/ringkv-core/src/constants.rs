//! Named limits. Every bound in ringkv has a name here or in the settings struct of the
//! node, so that "how big can this get?" always has an answer.

/// Longest key accepted, in bytes (API.md §2).
pub const MAX_KEY_BYTES: usize = 4096;
/// Default largest value accepted, in bytes (`--max-value-bytes`).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Longest node id (API.md §1: `[A-Za-z0-9_.-]{1,64}`).
pub const MAX_NODE_ID_BYTES: usize = 64;
/// Default number of ring partitions, Q.
pub const DEFAULT_PARTITIONS: u32 = 1024;
/// Largest Q accepted. Q must be a power of two so that a partition is a prefix of the hash.
pub const MAX_PARTITIONS: u32 = 1 << 20;
/// Default replication factor, N.
pub const DEFAULT_N: u8 = 3;
/// Largest N accepted.
pub const MAX_N: u8 = 16;
/// Most entries a version vector decoded from a client context may carry. A vector has one
/// entry per replica id that ever coordinated a write of the key, so this is generous.
pub const MAX_CONTEXT_ENTRIES: usize = 1024;
/// Longest context token accepted, in bytes of its printable form.
pub const MAX_CONTEXT_BYTES: usize = 64 * 1024;
