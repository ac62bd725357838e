//! The inter-node protocol: the only types in the node that derive serialization for the
//! network. Frames are length-delimited (u32 big-endian length, then a postcard body) on
//! persistent TCP connections; many requests share one connection, matched by request id.
//!
//! The node's small on-disk records (`Identity`, `RingState`) live here too: they are formats
//! as much as the frames are, and this is the one module of the node that derives serde.
//!
//! Compatibility rule: variants are only ever appended, never reordered or removed
//! (postcard encodes an enum variant by its index). `PROTOCOL_VERSION` is exchanged in
//! `Hello`, the first frame on every connection.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use ringkv_core::topology::Topology;
use ringkv_core::{Context, Dot, Fingerprint, NodeId, PartitionId, VersionSet, VersionVector};
use serde::{Deserialize, Serialize};

/// Changes whenever a frame's shape does: a node refuses peers of another version at `Hello`.
/// 2: `Response::Chunk` carries `resume`. 3: `LeafDigests` carries `after`, and `Digests`
/// says what of the leaves asked it covers. 4: `RingState` carries the cluster's id;
/// `SameVersions`, `OtherCopies` and `Purge` name sets by `Fingerprint` (SHA-256), not by
/// 64-bit digest; `Read` carries `as_home`, answered `NotHome` by a node that is no home
/// replica of the key and holds nothing for it.
pub const PROTOCOL_VERSION: u16 = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Frame {
    /// First frame of a connection, from the connecting side.
    Hello {
        protocol: u16,
        node: NodeId,
    },
    Request {
        id: u64,
        timeout_ms: u32,
        body: Request,
    },
    Response {
        id: u64,
        body: Response,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Ping,
    /// A replica's read: what do you hold for this key? `as_home`: the asker counts the
    /// receiver as one of the key's home replicas (a coordinator asking a home target,
    /// anti-entropy asking a peer); a receiver that is no home replica of the key in its own
    /// ring and holds nothing for it (it handed the partition over and swept it, or has not
    /// received it) answers `NotHome` instead of a "nothing" that would count toward R.
    /// Without `as_home` (a fallback asked for its hints, a checker) it answers what it holds.
    Read {
        key: Bytes,
        as_home: bool,
    },
    /// A replica's write: sync these versions into what you hold (replication, read repair).
    /// `hinted_for` names the home replica a fallback stores it for (sloppy quorum).
    Write {
        key: Bytes,
        versions: VersionSet,
        hinted_for: Option<NodeId>,
    },
    /// A client request forwarded to a home replica, which coordinates it.
    Coordinate(ClientOp),
    /// The sender's current ring, by version.
    FetchRing,
    /// Anti-entropy, step 1: your Merkle root and inner level for this partition.
    MerkleSummary {
        partition: PartitionId,
    },
    /// Anti-entropy, step 2: your leaf hashes under these inner nodes.
    MerkleLeaves {
        partition: PartitionId,
        groups: Vec<u16>,
    },
    /// Anti-entropy, step 3: the (key, version digest) pairs of these leaves (at most
    /// `AE_LEAVES_PER_EXCHANGE`, each below `MERKLE_LEAVES`), of the first only the keys after
    /// `after` (where a previous answer stopped inside it).
    LeafDigests {
        partition: PartitionId,
        leaves: Vec<u16>,
        after: Option<Bytes>,
    },
    /// Handoff: the next records of a partition in storage order, strictly after `after`,
    /// about `max_bytes` of them (at least one record if any is left).
    HandoffChunk {
        partition: PartitionId,
        after: Option<Bytes>,
        max_bytes: u32,
    },
    /// Handoff, to the claimant: `node` holds the data of these partitions for the
    /// transition to the target ring with this digest.
    HandoffReceived {
        node: NodeId,
        target: u64,
        partitions: Vec<u32>,
    },
    /// To the claimant: mark this member as leaving.
    Leave {
        node: NodeId,
    },
    /// Ownership sweep and tombstone purge check: for each (key, version set fingerprint),
    /// whether the receiver holds exactly that version set for the key. A fingerprint, not a
    /// 64-bit digest: the sender drops its copy on a yes.
    SameVersions {
        partition: PartitionId,
        keys: Vec<(Bytes, Fingerprint)>,
    },
    /// Tombstone purge check: for each (key, fingerprint), whether the receiver holds any
    /// other copy of the key: a stored set with another fingerprint, or a hint. Answered with
    /// `Copies` (true: another copy is held; and whether the receiver sees the purge gates
    /// open).
    OtherCopies {
        partition: PartitionId,
        keys: Vec<(Bytes, Fingerprint)>,
    },
    /// From a partition's purge leader: raise the dot floor and remove each key whose set
    /// still has this fingerprint and holds only tombstones. Answered with `Same` (true:
    /// removed).
    Purge {
        partition: PartitionId,
        keys: Vec<(Bytes, Fingerprint)>,
    },
}

/// A client operation as a coordinator runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientOp {
    /// `strict`: only home replicas count toward R (no fallbacks), like Riak's pr.
    Get { key: Bytes, r: u8, strict: bool },
    /// A write of `value` (`None`: delete). `context: None` means a blind overwrite of what the
    /// coordinator holds (RESP `SET`); `Some(vv)` is the client's context (empty: concurrent).
    /// `strict`: only home replicas count toward W (no hinted fallbacks), like Riak's pw.
    Put {
        key: Bytes,
        context: Option<ClientContext>,
        value: Option<Bytes>,
        w: u8,
        strict: bool,
    },
}

/// A client's causal context on the wire: the parts of `ringkv_core::Context`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClientContext {
    pub vector: VersionVector,
    pub dots: Vec<Dot>,
}

impl ClientContext {
    /// Whether every counter it names is within `MAX_COUNTER`, as a decoded client token's
    /// are. A peer's `Coordinate` carries the context already decoded, so the node checks it
    /// on receipt: a counter near `u64::MAX` overflowed the next dot's count.
    pub fn counters_in_range(&self) -> bool {
        let max = ringkv_core::constants::MAX_COUNTER;
        self.vector.entries().all(|(_, c)| c <= max) && self.dots.iter().all(|d| d.counter <= max)
    }
}

impl From<&Context> for ClientContext {
    fn from(c: &Context) -> ClientContext {
        ClientContext {
            vector: c.vector().clone(),
            dots: c.dots().to_vec(),
        }
    }
}

impl From<ClientContext> for Context {
    fn from(c: ClientContext) -> Context {
        Context::with_dots(c.vector, c.dots)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Ok,
    Versions(Option<VersionSet>),
    Coordinated(Result<ClientReply, ClientError>),
    Ring(Box<RingState>),
    /// The request could not be served; the text says why.
    Error(String),
    Merkle {
        root: u64,
        inner: Vec<u64>,
    },
    /// Leaf hashes, one list of `MERKLE_FANOUT` per requested group, in request order.
    Leaves(Vec<Vec<u64>>),
    /// Answer to `LeafDigests`: (key, version digest) pairs of the leaves asked, in the order
    /// asked and by key (as bytes) within a leaf, about `AE_DIGEST_BYTES_MAX` bytes of them.
    /// They cover the first `whole` leaves asked to their end (the first only after the
    /// request's `after`), then, if `partial` names a key, the next leaf up to that key
    /// inclusive; nothing of the leaves after. At least one pair if any is left.
    Digests {
        pairs: Vec<(Bytes, u64)>,
        whole: u16,
        partial: Option<Bytes>,
    },
    /// Records of a partition in storage order; `done` when none is left after them. `resume`
    /// is the key the next request starts after: the last key this answer covers, which is
    /// past the last entry when the source scanned over records it cannot read (a chunk of
    /// nothing but those still moves the receiver on).
    Chunk {
        entries: Vec<(Bytes, VersionSet)>,
        done: bool,
        resume: Option<Bytes>,
    },
    /// One answer per key asked, in order.
    Same(Vec<bool>),
    /// Answer to `OtherCopies`: per key, whether another copy is held; and whether the
    /// responder sees nothing that blocks a purge (`tombstones::purge_blocker`: every ring
    /// member up, no membership change, no node outside the ring down that has not left).
    Copies {
        other: Vec<bool>,
        all_live: bool,
    },
    /// Answer to a `Read` asked `as_home` of a node that is no home replica of the key in its
    /// ring (of this version) and holds nothing for it: not a replica's answer, so it counts
    /// as a failure, never toward R. A version above the asker's says its ring is behind.
    NotHome {
        ring_version: u64,
    },
}

/// What a coordinator answers for a client operation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ClientReply {
    /// A read: the merged versions (None if no replica had any).
    Read(Option<VersionSet>),
    /// A write: the versions stored by the coordinator after the write, and the new write's dot.
    Written { stored: VersionSet, dot: Dot },
}

/// Why a client operation failed, as the API reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, thiserror::Error)]
pub enum ClientError {
    #[error("{message}")]
    Unavailable {
        message: String,
        stored_on: Option<u32>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Internal(String),
    /// The write would leave the key with more siblings, or sibling bytes, than allowed
    /// (`ringkv_core::constants::MAX_SIBLINGS`); nothing was written.
    #[error("{0}")]
    TooLarge(String),
}

/// The topology (committed ring, transition, leaving members), its version, and the id of the
/// cluster it belongs to (drawn when the cluster was founded, carried by every later version:
/// a node refuses a ring of another cluster, so a seed of the wrong cluster cannot make a
/// node adopt a ring that omits it, conclude it left, and hand its data over). Version 0
/// never exists: a node without a ring has none. Stored in the node's meta store and sent in
/// answer to `FetchRing`. Never changed once built (it is shared as `Arc<RingState>`), so its
/// digests are computed once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RingState {
    pub cluster: u64,
    pub version: u64,
    pub topology: Topology,
    #[serde(skip)]
    digests: std::sync::OnceLock<(u64, Option<u64>)>,
}

impl RingState {
    pub fn new(cluster: u64, version: u64, topology: Topology) -> RingState {
        RingState {
            cluster,
            version,
            topology,
            digests: std::sync::OnceLock::new(),
        }
    }
    fn digests(&self) -> (u64, Option<u64>) {
        *self.digests.get_or_init(|| {
            let hash = |bytes: Vec<u8>| xxhash_rust::xxh3::xxh3_64(&bytes);
            (
                hash(postcard::to_allocvec(&self.topology).expect("topologies serialize")),
                // The committed ring with the target: a transition back to a ring met before
                // (a join, then the leave of another node) is a new one, and handoff progress
                // recorded for the old one must not count for it.
                self.topology.target().map(|t| {
                    let pair = (self.topology.committed(), t);
                    hash(postcard::to_allocvec(&pair).expect("rings serialize"))
                }),
            )
        })
    }
    pub fn digest(&self) -> u64 {
        self.digests().0
    }
    /// The digest of the open transition, if any: of its committed ring and its target ring
    /// (what handoff progress and confirmations are recorded against). Two transitions to
    /// the same target from different committed rings differ.
    pub fn target_digest(&self) -> Option<u64> {
        self.digests().1
    }
    pub(crate) fn rank(&self) -> (u64, u64) {
        (self.version, self.digest())
    }
}

/// Who this data directory belongs to: the node id, and the epoch drawn when the directory
/// was first used (part of the node's replica id).
#[derive(Debug, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    pub epoch: u32,
}

/// A receiving node's handoff progress, stored in its meta store after every chunk so a
/// restart resumes where it stopped instead of starting over.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HandoffProgress {
    /// Digest of the target ring these partitions are received for (`RingState::target_digest`).
    pub target: u64,
    /// Partitions fully received for that target.
    pub done: BTreeSet<u32>,
    /// For partitions in progress, the last key stored (the next chunk starts after it).
    pub cursors: BTreeMap<u32, Bytes>,
    /// Bytes of records received by handoff since the node was created, over all transitions.
    pub bytes_received: u64,
}

/// Most characters of a peer's answer an error message or a log line carries.
pub const SUMMARY_CHARS: usize = 200;

impl Response {
    /// The answer as an error message or a log line carries it: its `Debug` form, cut to
    /// `SUMMARY_CHARS` (an unexpected answer may hold a whole frame of values, up to the
    /// frame limit, and would otherwise reach a client's 503 body in full).
    pub fn summary(&self) -> String {
        let full = format!("{self:?}");
        match full.char_indices().nth(SUMMARY_CHARS) {
            Some((cut, _)) => format!("{}... ({} bytes in all)", &full[..cut], full.len()),
            None => full,
        }
    }
}

#[cfg(test)]
mod tests {
    use ringkv_core::NodeId;
    use ringkv_core::ring::{Member, Ring, RingParams};
    use ringkv_core::topology::Topology;

    use super::{Response, RingState, SUMMARY_CHARS};

    /// A peer's answer reaches an error message cut short, however large it is.
    #[test]
    fn a_summary_of_an_answer_is_bounded() {
        let huge = Response::Error("x".repeat(1 << 20));
        let summary = huge.summary();
        assert!(
            summary.chars().count() < SUMMARY_CHARS + 40,
            "{}",
            summary.len()
        );
        assert!(summary.starts_with("Error(\"xxx"), "{summary}");
        assert_eq!(Response::Ok.summary(), "Ok");
    }

    fn member(id: &str) -> Member {
        Member {
            id: NodeId::new(id).unwrap(),
            weight: 1,
            zone: String::new(),
        }
    }

    /// x joins (its transition's target is R1); later e joins and then leaves, and the leave's
    /// transition often targets R1 again. Handoff progress recorded for the first transition
    /// (x received its partitions) must not count for the last (x swept some of them when e
    /// took them, and must receive them again), so the two transitions' digests differ.
    #[test]
    fn a_transition_back_to_an_earlier_target_has_a_new_digest() {
        let params = RingParams {
            partitions: 64,
            n: 3,
        };
        let base: Vec<Member> = ["a", "b", "c"].iter().map(|id| member(id)).collect();
        let r0 = Ring::claim(None, &base, params).unwrap();
        let join_x = Topology::settled(r0)
            .begin_transition(&[member("x")])
            .unwrap()
            .unwrap();
        let r1 = join_x.target().unwrap().clone();
        let mut same_target = 0;
        for e in ["e", "y", "a0", "nn", "w9", "zz", "m5", "q1"] {
            let join_e = Topology::settled(r1.clone())
                .begin_transition(&[member(e)])
                .unwrap()
                .unwrap();
            let mut leave_e = Topology::settled(join_e.target().unwrap().clone());
            leave_e.request_leave(&NodeId::new(e).unwrap()).unwrap();
            let leave_e = leave_e.begin_transition(&[]).unwrap().unwrap();
            if leave_e.target() != Some(&r1) {
                continue;
            }
            same_target += 1;
            assert_ne!(
                RingState::new(1, 2, join_x.clone()).target_digest(),
                RingState::new(1, 9, leave_e).target_digest(),
                "e = {e}: the leave's transition targets R1 again"
            );
        }
        assert!(
            same_target > 0,
            "no case led back to R1: the test checks nothing"
        );
    }
}
