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
/// Largest write counter a client context may name (2^53). A counter counts the writes one
/// replica id coordinated to one key (plus the dot floor), so no real context comes near it:
/// a million writes a second to one key for a century is under 2^52. Refusing more keeps a
/// forged context from pushing a key's or the node's dot floor's next counter past `u64`.
pub const MAX_COUNTER: u64 = 1 << 53;
/// Most siblings a write may leave a key with (Riak's `siblings_maximum` default). Concurrent
/// writes that no client reconciles (writes without a context, or with one that was never
/// read back) add one each; past this a write that would add another is refused, while
/// writes that do not grow the set, a reconciling write among them, always go through.
pub const MAX_SIBLINGS: usize = 100;
/// Most bytes of values a write may leave a key's siblings holding, together: a set must
/// stay well inside one inter-node frame (64 MiB) to be read and replicated at all.
pub const MAX_SIBLING_VALUE_BYTES: usize = 32 * 1024 * 1024;
