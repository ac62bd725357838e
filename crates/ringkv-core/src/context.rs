//! The client context token: a causal context (a `VersionVector`) as an opaque, printable,
//! header-safe string. Clients get it in `X-Context` and hand it back unchanged on their
//! next write of the key (API.md §2).
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
//! 1+n     4     checksum: low 32 bits of xxh3_64(bytes 0..1+n), little endian
//! ```
//!
//! Varints are postcard's (LEB128), so the payload is exactly `postcard` of the entry list.
//! The empty vector is legal and encodes to 6 bytes, the token `AQDAdnLO`: a client that read
//! a key nobody wrote may pass it back. Real contexts hold one entry per coordinator of the
//! key, about 10 to 20 bytes each, so a 3-replica context is about 60 characters.
//!
//! Laws (property tests in `tests/context_props.rs`):
//! - `decode(encode(c)) == c` for every vector within the limits below;
//! - the encoding is canonical: one vector has exactly one token, and `decode` accepts only
//!   canonical tokens (sorted, no duplicate replica, no zero counter, no trailing byte);
//! - `decode` never panics: any other input is a typed `ContextError`.
//!
//! Limits: a token is at most `MAX_CONTEXT_BYTES` characters and carries at most
//! `MAX_CONTEXT_ENTRIES` entries. The limits are checked before anything is allocated for
//! the entries, so a hostile token costs at most a bounded amount of work.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::constants::{MAX_CONTEXT_BYTES, MAX_CONTEXT_ENTRIES};
use crate::ids::{IdError, NodeId, ReplicaId};
use crate::version::VersionVector;

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
pub struct Context(VersionVector);

impl Context {
    pub fn new(vector: VersionVector) -> Context {
        Context(vector)
    }

    pub fn vector(&self) -> &VersionVector {
        &self.0
    }

    pub fn into_vector(self) -> VersionVector {
        self.0
    }

    /// The token for this context (format in the module docs). A vector beyond the limits
    /// (more than `MAX_CONTEXT_ENTRIES` entries, or a token longer than `MAX_CONTEXT_BYTES`)
    /// still encodes, but `decode` will refuse it; `try_encode` checks first.
    pub fn encode(&self) -> String {
        let entries: Vec<(&str, u32, u64)> = self
            .0
            .entries()
            .map(|(replica, counter)| (replica.node().as_str(), replica.epoch(), counter))
            .collect();
        let mut bytes = postcard::to_extend(&entries, vec![CONTEXT_FORMAT_VERSION])
            .expect("serializing into a Vec cannot fail");
        let checksum = checksum(&bytes);
        bytes.extend_from_slice(&checksum);
        URL_SAFE_NO_PAD.encode(&bytes)
    }

    /// Like `encode`, but refuses a context that `decode` would reject for its size.
    pub fn try_encode(&self) -> Result<String, ContextError> {
        if self.0.len() > MAX_CONTEXT_ENTRIES {
            return Err(ContextError::TooManyEntries {
                count: self.0.len() as u64,
            });
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
        decode_payload(&body[1..]).map(Context)
    }
}

/// The low 32 bits of xxh3_64 of `bytes`, little endian.
fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let full = xxhash_rust::xxh3::xxh3_64(bytes).to_le_bytes();
    [full[0], full[1], full[2], full[3]]
}

/// Decodes the entry list of a version 1 token, enforcing the canonical form.
fn decode_payload(payload: &[u8]) -> Result<VersionVector, ContextError> {
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
        let replica = ReplicaId::new(node, epoch);
        if let Some((previous, _)) = entries.last() {
            match previous.cmp(&replica) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Err(ContextError::DuplicateReplica),
                std::cmp::Ordering::Greater => return Err(ContextError::OutOfOrder),
            }
        }
        entries.push((replica, counter));
    }
    if !rest.is_empty() {
        return Err(ContextError::TrailingBytes { count: rest.len() });
    }
    Ok(VersionVector::from_entries(entries))
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
        assert_eq!(token, "AQDAdnLO");
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
        let enc = |entries: &[(&str, u32, u64)]| postcard::to_allocvec(&entries).unwrap();
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
