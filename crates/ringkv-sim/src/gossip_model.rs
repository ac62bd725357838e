//! A seeded model of how one change spreads through a converged chitchat cluster: replayable
//! from its seed and cheap enough for many seeds and for sizes the real protocol (see
//! `chitchat_net`) is too slow or too large for.
//!
//! What it keeps from chitchat 0.13 (`server.rs`, `select_nodes_for_gossip`):
//! - every node ticks once per interval, the ticks spread evenly over it (node `i` at
//!   `i/n` of the interval, as `chitchat_net` starts them);
//! - on its tick a node runs a push-pull exchange (Syn, SynAck, Ack) with 3 distinct live
//!   peers chosen uniformly, and, when none of them is a seed, with a random seed with
//!   probability seeds / live peers;
//! - an exchange leaves both sides knowing what either knew: a change is one key, far below
//!   the delta's room in a datagram; and it takes no time, as in `chitchat_net`.
//!
//! What it leaves out: bootstrap, failure detection, dead nodes, lost datagrams, and the
//! digest outgrowing a datagram (see `chitchat_net::largest_gossiping_cluster`).
//!
//! Law: `change_rounds` is a pure function of its setup and seed.

use crate::gossip::{GossipError, GossipSetup};
use crate::rng::Rng;

/// Peers a chitchat node gossips with per tick (chitchat's `GOSSIP_COUNT`).
pub const GOSSIP_FANOUT: usize = 3;

/// Rounds until every node knows a change that a seeded random node publishes at a seeded
/// random instant of the first round.
pub fn change_rounds(setup: &GossipSetup, seed: u64) -> Result<f64, GossipError> {
    setup.validate()?;
    let n = setup.nodes;
    let mut rng = Rng::new(seed);
    let mut knows = vec![false; n];
    knows[rng.below(n)] = true;
    let mut knowing = 1;
    let published = rng.fraction();
    for round in 0..setup.max_rounds {
        for node in 0..n {
            let at = f64::from(round) + node as f64 / n as f64;
            if at < published {
                continue;
            }
            for peer in gossip_peers(node, n, setup.seeds, &mut rng) {
                if knows[node] != knows[peer] {
                    knows[node] = true;
                    knows[peer] = true;
                    knowing += 1;
                }
            }
            if knowing == n {
                return Ok(at - published);
            }
        }
    }
    Err(GossipError::NoConvergence {
        nodes: n,
        rounds: setup.max_rounds,
        refused_datagrams: 0,
        stopped_servers: 0,
    })
}

/// The peers `node` exchanges with on one tick: `GOSSIP_FANOUT` distinct others, plus a
/// seed with probability seeds / live peers when none of those is a seed.
fn gossip_peers(node: usize, n: usize, seeds: usize, rng: &mut Rng) -> Vec<usize> {
    let mut peers = Vec::with_capacity(GOSSIP_FANOUT + 1);
    while peers.len() < GOSSIP_FANOUT.min(n - 1) {
        let peer = rng.below(n);
        if peer != node && !peers.contains(&peer) {
            peers.push(peer);
        }
    }
    let seed_peers: Vec<usize> = (0..seeds.min(n)).filter(|&s| s != node).collect();
    let met_a_seed = peers.iter().any(|p| seed_peers.contains(p));
    if !met_a_seed && !seed_peers.is_empty() {
        let probability = seed_peers.len() as f64 / (n - 1) as f64;
        if rng.fraction() <= probability {
            peers.push(seed_peers[rng.below(seed_peers.len())]);
        }
    }
    peers
}
