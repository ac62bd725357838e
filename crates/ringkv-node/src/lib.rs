//! The ringkv server: everything that does I/O around the pure core.
//!
//! - `settings`: one struct of validated settings (flags, env, TOML).
//! - `wire`: the inter-node protocol (the only network-serialized types of the node).
//! - `transport`: multiplexed TCP connections between nodes, bounded and deadline-driven.
//! - `membership`: chitchat gossip, failure detection, ring agreement by version.
//! - `node`: identity, storage, replica handlers, background loops.
//! - `coordinator`: the read and write paths, sloppy quorum, forwarding, read repair.
//! - `hinted_handoff`: delivering hints to home replicas that are back.
//! - `anti_entropy`: Merkle exchanges that repair divergent replicas.
//! - `tombstones`: purging tombstones once causally stable; the dot floor.
//! - `http`: the client and admin HTTP API.
//! - `resp`: the Redis-protocol (RESP2) API.
//! - `request_metrics`: request counts and latency per operation, for both front ends.
//! - `seams`: the network, wall clock, randomness and blocking calls, replaceable (simulation).
//! - `server`: start, serve, shut down.
//!
//! Laws: no request waits past its deadline because of a peer; every queue and loop has a
//! bound (see `settings::Limits`); bad input from a client or a peer is an error answered or
//! a connection closed, never a panic.

pub mod admin;
pub mod anti_entropy;
pub mod coordinator;
pub mod error;
pub mod handoff;
pub mod hinted_handoff;
pub mod http;
pub mod membership;
pub mod node;
pub mod request_metrics;
pub mod resp;
pub mod seams;
pub mod server;
pub mod settings;
pub mod sockets;
pub mod tombstones;
pub mod transport;
pub mod wire;

pub use server::run;
pub use settings::{ServerArgs, Settings};

// The unit tests that drive a node's inner steps against a real peer start their nodes as the
// integration tests do, with the same helpers (which name this crate `ringkv_node`).
#[cfg(test)]
extern crate self as ringkv_node;
#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod common;
