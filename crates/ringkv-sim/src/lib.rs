//! ringkv's simulators: the *scale simulator* (`ringkv-sim scale`), which runs the real claim
//! algorithm and real gossip for clusters of hundreds to thousands of nodes, in one process,
//! and reports what grows with them; and the deterministic *cluster simulation*
//! (`ringkv-sim cluster`, `cluster_sim`), the real node code for 3 to 9 nodes on turmoil's
//! network and clock, with faults and checkers, replayable from its seed.
//!
//! Modules:
//! - `cluster_sim`: the deterministic cluster simulation (plan, hosts, workload, checkers);
//! - `cluster`: the simulated members (names, zones round robin, a weight mix);
//! - `ring_scale`: balance, movement on joins and leaves, zone spread and ring size, from
//!   `ringkv_core::ring` itself;
//! - `chitchat_net`: chitchat 0.13 itself on a simulated network with a paused clock;
//! - `gossip_model`: a seeded model of chitchat's gossip, for many seeds and large sizes;
//! - `scale`, `report`, `svg`: the subcommand, its tables and its charts.
//!
//! Laws:
//! - Every figure but wall-clock timings and the scale simulator's chitchat runs (which let
//!   chitchat seed its peer choice from the operating system) is a pure function of the
//!   command's arguments, including `--seed`: a run replays. A cluster simulation's history
//!   is a pure function of its seed.
//! - Nothing sleeps: the gossip simulations run on virtual time.
//! - Bad arguments are errors (`SimError`), never panics.

pub mod chitchat_net;
pub mod cluster;
pub mod cluster_sim;
pub mod gossip;
pub mod gossip_model;
pub mod report;
pub mod ring_scale;
pub mod rng;
pub mod scale;
pub mod svg;

use ringkv_core::ring::RingError;

use crate::gossip::GossipError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulation: {0}")]
    Invalid(String),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(transparent)]
    Gossip(#[from] GossipError),
    #[error("could not encode the ring: {0}")]
    Encode(String),
}
