//! The client context token: a causal context as an opaque, printable, header-safe string.
//! Clients get it in `X-Context` and hand it back unchanged on their next write of the key
//! (API.md §2).
//!
//! A context is a version vector plus a short list of *exact dots*. A read answers the merged
//! set's vector, which covers every sibling returned. A write answers the client's own context
//! plus the dot of the write it just made. That dot must not be folded into the vector when the
//! writes before it are unknown to the client: two writes through one coordinator with the same
//! context get dots (r,5) and (r,6), and a context `{r:6}` handed to the second writer would let
//! its next write silently supersede the first writer's value, which it never saw. So the dot
//! stays exact unless it directly follows the vector's entry for its replica.
//!
//! # Format (version 1)
//!
//! The token is the URL-safe base64 alphabet (`A-Z a-z 0-9 - _`) without padding, so it is
//! printable ASCII and safe in an HTTP header, a URL and JSON. It encodes these bytes:
//!
//! ```text
//! offset  size  field
//! 0       1     format version, 0x01
//! 1       n     payload: varint(entry count), then per entry in strictly ascending
//!               ReplicaId order (node id, then epoch):
//!                 varint(len) + node id bytes ([A-Za-z0-9_.-]{1,64})
//!                 varint(epoch: u32)
//!                 varint(counter: u64, >= 1)
//!               then varint(dot count), then per exact dot in strictly ascending
//!               (replica, counter) order: node id, epoch, counter as above; a dot is
//!               never covered by the vector nor directly after its vector entry
//! 1+n     4     checksum: low 32 bits of xxh3_64(bytes 0..1+n), little endian
//! ```
//!
//! Varints are postcard's (LEB128), so the payload is exactly `postcard` of the entry list.
//! The empty context is legal and encodes to 7 bytes, the token `AQAABA6BFQ`: a client that read
//! a key nobody wrote may pass it back. Real contexts hold one entry per coordinator of the
//! key, about 10 to 20 bytes each, so a 3-replica context is about 60 characters.
//!
//! Laws (property tests in `tests/context_props.rs`):
//! - `decode(encode(c)) == c` for every vector within the limits below;
//! - the encoding is canonical: one vector has exactly one token, and `decode` accepts only
//!   canonical tokens (sorted, no duplicate replica, no zero counter, no trailing byte);
//! - `decode` never panics: any other input is a typed `ContextError`.
//!
//! Limits: a token is at most `MAX_CONTEXT_BYTES` characters, carries at most
//! `MAX_CONTEXT_ENTRIES` entries and dots, and no counter above `MAX_COUNTER`. The limits are checked before anything is allocated for
//! the entries, so a hostile token costs at most a bounded amount of work.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::constants::{MAX_CONTEXT_BYTES, MAX_CONTEXT_ENTRIES, MAX_COUNTER};
use crate::ids::{IdError, NodeId, ReplicaId};
use crate::version::{Dot, VersionSet, VersionVector, canonical_cloud};

/// The format version written by `encode`. Bump it (and keep decoding the old one for a
/// while) whenever the byte layout changes.
pub const CONTEXT_FORMAT_VERSION: u8 = 1;
/// Bytes of checksum at the end of a decoded token.
const CHECKSUM_BYTES: usize = 4;

/// Why a context token was rejected. Every variant is a client error (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("context token is empty")]
    Empty,
    #[error("context token is {len} characters long, the limit is {MAX_CONTEXT_BYTES}")]
    TooLong { len: usize },
    #[error("context token is not unpadded URL-safe base64: {0}")]
    NotBase64(String),
    #[error("context token is too short ({len} bytes) to hold a version and a checksum")]
    Truncated { len: usize },
    #[error("context token has format version {0}, this node understands only version 1")]
    UnknownVersion(u8),
    #[error("context token checksum does not match: the token was altered or truncated")]
    BadChecksum,
    #[error("context carries {count} entries, the limit is {MAX_CONTEXT_ENTRIES}")]
    TooManyEntries { count: u64 },
    #[error("context names an invalid replica: {0}")]
    InvalidReplica(IdError),
    #[error("context carries a zero counter (zero entries are left out of a canonical vector)")]
    ZeroCounter,
    #[error(
        "context carries the counter {0}, over the limit of {MAX_COUNTER}: not a context this store made"
    )]
    CounterTooLarge(u64),
    #[error("context names the same replica twice")]
    DuplicateReplica,
    #[error("context entries are not in ascending replica order")]
    OutOfOrder,
    #[error("context token has {count} bytes after its last entry")]
    TrailingBytes { count: usize },
    #[error("malformed context: {0}")]
    Malformed(&'static str),
}

/// The causal context a client reads and passes back, as an opaque printable token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    vector: VersionVector,
    /// Exact dots beyond the vector, sorted, none covered by or directly after the vector.
    dots: Vec<Dot>,
}

impl Context {
    pub fn new(vector: VersionVector) -> Context {
        Context {
            vector,
            dots: Vec::new(),
        }
    }

    /// A context of a vector and exact dots, in canonical form: dots the vector covers are
    /// dropped and dots that directly follow the vector's entry are folded into it.
    /// The same canonical form as a version set's dot cloud.
    pub fn with_dots(mut vector: VersionVector, dots: Vec<Dot>) -> Context {
        let dots = canonical_cloud(&mut vector, dots);
        Context { vector, dots }
    }

    /// The whole causal context of a version set (vector and dot cloud): what a client that
    /// read the set has seen.
    pub fn of(set: &VersionSet) -> Context {
        Context::with_dots(set.context().clone(), set.cloud().to_vec())
    }

    /// Whether this context has seen no write at all.
    pub fn is_empty(&self) -> bool {
        self.vector.is_empty() && self.dots.is_empty()
    }

    /// This context plus one more write the client knows of (its own).
    pub fn with_dot(&self, dot: Dot) -> Context {
        let mut dots = self.dots.clone();
        dots.push(dot);
        Context::with_dots(self.vector.clone(), dots)
    }

    pub fn vector(&self) -> &VersionVector {
        &self.vector
    }

    pub fn dots(&self) -> &[Dot] {
        &self.dots
    }

    /// Whether the client that holds this context has seen the write `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.vector.covers(dot) || self.dots.binary_search(dot).is_ok()
    }

    /// The token for this context (format in the module docs). A vector beyond the limits
    /// (more than `MAX_CONTEXT_ENTRIES` entries, or a token longer than `MAX_CONTEXT_BYTES`)
    /// still encodes, but `decode` will refuse it; `try_encode` checks first.
    pub fn encode(&self) -> String {
        let entries: Vec<(&str, u32, u64)> = self
            .vector
            .entries()
            .map(|(replica, counter)| (replica.node().as_str(), replica.epoch(), counter))
            .collect();
        let dots: Vec<(&str, u32, u64)> = self
            .dots
            .iter()
            .map(|d| (d.replica.node().as_str(), d.replica.epoch(), d.counter))
            .collect();
        let bytes = postcard::to_extend(&entries, vec![CONTEXT_FORMAT_VERSION])
            .expect("serializing into a Vec cannot fail");
        let mut bytes =
            postcard::to_extend(&dots, bytes).expect("serializing into a Vec cannot fail");
        let checksum = checksum(&bytes);
        bytes.extend_from_slice(&checksum);
        URL_SAFE_NO_PAD.encode(&bytes)
    }

    /// Like `encode`, but refuses a context that `decode` would reject for its size or its
    /// counters.
    pub fn try_encode(&self) -> Result<String, ContextError> {
        let count = self.vector.len().max(self.dots.len());
        if count > MAX_CONTEXT_ENTRIES {
            return Err(ContextError::TooManyEntries {
                count: count as u64,
            });
        }
        let highest = self.vector.entries().map(|(_, c)| c);
        if let Some(c) = highest
            .chain(self.dots.iter().map(|d| d.counter))
            .find(|c| *c > MAX_COUNTER)
        {
            return Err(ContextError::CounterTooLarge(c));
        }
        let token = self.encode();
        if token.len() > MAX_CONTEXT_BYTES {
            return Err(ContextError::TooLong { len: token.len() });
        }
        Ok(token)
    }

    /// Parses a token made by `encode`. Never panics; anything but a canonical token of a
    /// known version within the limits is an error.
    pub fn decode(token: &str) -> Result<Context, ContextError> {
        if token.is_empty() {
            return Err(ContextError::Empty);
        }
        if token.len() > MAX_CONTEXT_BYTES {
            return Err(ContextError::TooLong { len: token.len() });
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|e| ContextError::NotBase64(e.to_string()))?;
        if bytes.len() < 1 + CHECKSUM_BYTES {
            return Err(ContextError::Truncated { len: bytes.len() });
        }
        if bytes[0] != CONTEXT_FORMAT_VERSION {
            return Err(ContextError::UnknownVersion(bytes[0]));
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        if checksum(body) != sum {
            return Err(ContextError::BadChecksum);
        }
        decode_payload(&body[1..])
    }
}

/// The low 32 bits of xxh3_64 of `bytes`, little endian.
fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let full = xxhash_rust::xxh3::xxh3_64(bytes).to_le_bytes();
    [full[0], full[1], full[2], full[3]]
}

/// Decodes the entry list and exact dots of a version 1 token, enforcing the canonical form.
fn decode_payload(payload: &[u8]) -> Result<Context, ContextError> {
    let (entries, rest) = decode_entries(payload, Order::ReplicaUnique)?;
    let (dots, rest) = decode_entries(rest, Order::DotAscending)?;
    if !rest.is_empty() {
        return Err(ContextError::TrailingBytes { count: rest.len() });
    }
    let vector = VersionVector::from_entries(entries);
    let dots: Vec<Dot> = dots
        .into_iter()
        .map(|(replica, counter)| Dot { replica, counter })
        .collect();
    let context = Context::with_dots(vector.clone(), dots.clone());
    if context.vector != vector || context.dots != dots {
        return Err(ContextError::Malformed(
            "exact dots are covered by or directly follow the vector",
        ));
    }
    Ok(context)
}

/// (replica, counter) pairs, as a token lists them.
type Entries = Vec<(ReplicaId, u64)>;

/// The order a list of pairs must be in: a vector names each replica once; exact dots may
/// name a replica several times, in ascending (replica, counter) order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    ReplicaUnique,
    DotAscending,
}

/// Decodes one canonical list of (replica, counter) pairs, returning what follows it.
fn decode_entries(payload: &[u8], order: Order) -> Result<(Entries, &[u8]), ContextError> {
    let (count, mut rest) = postcard::take_from_bytes::<u64>(payload)
        .map_err(|_| ContextError::Malformed("entry count is not a varint"))?;
    if count > MAX_CONTEXT_ENTRIES as u64 {
        return Err(ContextError::TooManyEntries { count });
    }
    let mut entries: Vec<(ReplicaId, u64)> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let ((node, epoch, counter), tail) = postcard::take_from_bytes::<(&str, u32, u64)>(rest)
            .map_err(|_| {
                ContextError::Malformed("entry is truncated or not node id, epoch, counter")
            })?;
        rest = tail;
        let node = NodeId::new(node).map_err(ContextError::InvalidReplica)?;
        if counter == 0 {
            return Err(ContextError::ZeroCounter);
        }
        if counter > MAX_COUNTER {
            return Err(ContextError::CounterTooLarge(counter));
        }
        let replica = ReplicaId::new(node, epoch);
        if let Some((previous, previous_counter)) = entries.last() {
            match (previous.cmp(&replica), order) {
                (std::cmp::Ordering::Less, _) => {}
                (std::cmp::Ordering::Equal, Order::DotAscending) if *previous_counter < counter => {
                }
                (std::cmp::Ordering::Equal, Order::ReplicaUnique) => {
                    return Err(ContextError::DuplicateReplica);
                }
                _ => return Err(ContextError::OutOfOrder),
            }
        }
        entries.push((replica, counter));
    }
    Ok((entries, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(name: &str, epoch: u32) -> ReplicaId {
        ReplicaId::new(NodeId::new(name).unwrap(), epoch)
    }

    /// Builds a token around an arbitrary payload, with a valid version and checksum, so
    /// that the payload checks can be reached.
    fn token_with_payload(payload: &[u8]) -> String {
        let mut bytes = vec![CONTEXT_FORMAT_VERSION];
        bytes.extend_from_slice(payload);
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        URL_SAFE_NO_PAD.encode(&bytes)
    }

    #[test]
    fn round_trips() {
        let vv = VersionVector::from_entries([(replica("a", 1), 3), (replica("b", 2), 7)]);
        let ctx = Context::new(vv);
        let token = ctx.encode();
        assert_eq!(Context::decode(&token), Ok(ctx));
    }

    #[test]
    fn the_empty_vector_encodes() {
        let token = Context::default().encode();
        // Pinned: a change here is a change of format, which needs a new version byte.
        assert_eq!(token, "AQAABA6BFQ");
        assert_eq!(Context::decode(&token), Ok(Context::default()));
    }

    #[test]
    fn rejects_the_obvious() {
        assert_eq!(Context::decode(""), Err(ContextError::Empty));
        let long = "A".repeat(MAX_CONTEXT_BYTES + 1);
        assert!(matches!(
            Context::decode(&long),
            Err(ContextError::TooLong { .. })
        ));
        assert!(matches!(
            Context::decode("ab+/"),
            Err(ContextError::NotBase64(_))
        ));
        assert!(matches!(
            Context::decode("AQ"),
            Err(ContextError::Truncated { len: 1 })
        ));
        let mut bytes = URL_SAFE_NO_PAD.decode(Context::default().encode()).unwrap();
        bytes[0] = 2;
        let token = URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(
            Context::decode(&token),
            Err(ContextError::UnknownVersion(2))
        );
        bytes[0] = 1;
        bytes[1] = 1;
        let token = URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(Context::decode(&token), Err(ContextError::BadChecksum));
    }

    #[test]
    fn rejects_non_canonical_payloads() {
        let enc = |entries: &[(&str, u32, u64)]| {
            let mut p = postcard::to_allocvec(&entries).unwrap();
            p.push(0);
            p
        };
        let dup = enc(&[("a", 1, 1), ("a", 1, 2)]);
        assert_eq!(
            Context::decode(&token_with_payload(&dup)),
            Err(ContextError::DuplicateReplica)
        );
        let unsorted = enc(&[("b", 1, 1), ("a", 1, 2)]);
        assert_eq!(
            Context::decode(&token_with_payload(&unsorted)),
            Err(ContextError::OutOfOrder)
        );
        let zero = enc(&[("a", 1, 0)]);
        assert_eq!(
            Context::decode(&token_with_payload(&zero)),
            Err(ContextError::ZeroCounter)
        );
        let at_limit = enc(&[("a", 1, MAX_COUNTER)]);
        assert!(Context::decode(&token_with_payload(&at_limit)).is_ok());
        for huge in [MAX_COUNTER + 1, u64::MAX] {
            let over = enc(&[("a", 1, huge)]);
            assert_eq!(
                Context::decode(&token_with_payload(&over)),
                Err(ContextError::CounterTooLarge(huge))
            );
        }
        let bad_id = enc(&[("a b", 1, 1)]);
        assert!(matches!(
            Context::decode(&token_with_payload(&bad_id)),
            Err(ContextError::InvalidReplica(_))
        ));
        let mut trailing = enc(&[("a", 1, 1)]);
        trailing.push(0);
        assert_eq!(
            Context::decode(&token_with_payload(&trailing)),
            Err(ContextError::TrailingBytes { count: 1 })
        );
        let many = postcard::to_allocvec(&(MAX_CONTEXT_ENTRIES as u64 + 1)).unwrap();
        assert_eq!(
            Context::decode(&token_with_payload(&many)),
            Err(ContextError::TooManyEntries {
                count: MAX_CONTEXT_ENTRIES as u64 + 1
            })
        );
        let short = postcard::to_allocvec(&2u64).unwrap();
        assert!(matches!(
            Context::decode(&token_with_payload(&short)),
            Err(ContextError::Malformed(_))
        ));
    }
}

#[cfg(test)]
mod exact_dot_tests {
    use super::*;
    use crate::version::VersionSet;
    use bytes::Bytes;

    fn replica(name: &str) -> ReplicaId {
        ReplicaId::new(NodeId::new(name).unwrap(), 1)
    }

    /// Two writers share one read context through one coordinator. The second writer's
    /// answered context must not let its next write supersede the first writer's value.
    #[test]
    fn a_put_context_never_covers_a_concurrent_write() {
        let r = replica("r");
        let (base, _) = VersionSet::new().update(&VersionVector::new(), Some(Bytes::from("x")), &r);
        let read = Context::new(base.context().clone());
        let (s1, dot1) = base.update_exact(read.vector(), read.dots(), Some(Bytes::from("a")), &r);
        let (s2, dot2) = s1.update_exact(read.vector(), read.dots(), Some(Bytes::from("b")), &r);
        let answered_to_b = read.with_dot(dot2.clone());
        assert!(answered_to_b.covers(&dot2));
        assert!(
            !answered_to_b.covers(&dot1),
            "writer b never saw writer a's value"
        );
        let token = answered_to_b.encode();
        let decoded = Context::decode(&token).unwrap();
        assert_eq!(decoded, answered_to_b);
        let (s3, _) = s2.update_exact(
            decoded.vector(),
            decoded.dots(),
            Some(Bytes::from("b2")),
            &r,
        );
        let values: Vec<_> = s3.values().cloned().collect();
        assert_eq!(values, vec![Bytes::from("a"), Bytes::from("b2")]);
    }

    /// A client that keeps writing with the context each PUT answered collects several exact
    /// dots of one coordinator; the token must carry them and decode.
    #[test]
    fn several_exact_dots_of_one_replica_round_trip() {
        let r = replica("r");
        let d = |c| Dot {
            replica: r.clone(),
            counter: c,
        };
        let ctx = Context::with_dots(
            VersionVector::from_entries([(r.clone(), 2)]),
            vec![d(4), d(6), d(9)],
        );
        assert_eq!(ctx.dots().len(), 3);
        assert_eq!(Context::decode(&ctx.encode()), Ok(ctx));
    }

    #[test]
    fn contiguous_dots_fold_into_the_vector() {
        let r = replica("r");
        let vv = VersionVector::from_entries([(r.clone(), 4)]);
        let d = |c| Dot {
            replica: r.clone(),
            counter: c,
        };
        let ctx = Context::with_dots(vv, vec![d(6), d(5), d(3), d(8)]);
        assert_eq!(ctx.vector().get(&r), 6);
        assert_eq!(ctx.dots(), &[d(8)]);
        assert_eq!(Context::decode(&ctx.encode()), Ok(ctx));
    }
}
