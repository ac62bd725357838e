//! The async Rust client of ringkv.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringkv_client::Error> {
//! use ringkv_client::{Client, Error, ReadOptions, WriteOptions};
//! let client = Client::connect(&["http://127.0.0.1:8101"]).await?;
//! let ctx = client.put(b"k", "v1", None, WriteOptions::default()).await?;
//! let read = client.get(b"k", ReadOptions::default()).await?;
//! assert_eq!(read.values, ["v1"]);
//! client.delete(b"k", read.context.as_deref(), WriteOptions::default()).await?;
//! match client.get(b"k", ReadOptions::default()).await {
//!     Err(Error::NotFound { context }) => { /* write with `context` to supersede the delete */ }
//!     other => panic!("{other:?}"),
//! }
//! # let _ = ctx; Ok(()) }
//! ```
//!
//! What this crate promises:
//! - **Zero-hop routing** (Dynamo §6.4): requests go straight to the key's first reachable
//!   home replica, computed from the partition table (`GET /ring`) exactly as the nodes do;
//!   `Routing::AnyNode` sends everything to one node instead, which forwards.
//! - **Typed outcomes**: an absent key is `Err(Error::NotFound { context })` (the context of a
//!   tombstone, when there is one); `Error::Unavailable` means the write is indeterminate,
//!   not undone; `Error::BadRequest` / `Error::TooLarge` must not be retried;
//!   `Error::Transport` means no node got the request.
//! - **No duplicated writes**: a write is only resent to another node when the first one
//!   provably never received it (the connection could not be opened).
//! - **Bounded resources**: a bounded connection pool, a bounded number of requests in
//!   flight, at most one ring refresh at a time, at most `MAX_ATTEMPTS_PER_REQUEST` nodes
//!   tried per request.
//!
//! The ring is refreshed periodically (a cheap `/status` check of `ring_version`, then
//! `/ring` only when it moved), and in the background after any transport failure.
//!
//! The integration tests start real `ringkv server` processes; they build the binary with
//! `cargo build -p ringkv --bin ringkv` themselves before starting nodes.

pub mod cart;
mod client;
mod error;
pub mod ring;

pub use bytes::Bytes;
pub use client::{Client, ClientBuilder, ReadOptions, Routing, Versions, WriteOptions};
pub use error::Error;
