//! The client's one error type.
//!
//! The variants keep apart what a caller must treat differently: the key has no value
//! (`NotFound`), the cluster could not reach a quorum and a write may or may not have
//! happened (`Unavailable`), the request itself was wrong and retrying cannot help
//! (`BadRequest`, `TooLarge`), no node could be reached at all so nothing was done
//! (`Transport`), and a node answered something this client does not understand (`Protocol`).

/// Everything a [`crate::Client`] call can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The key has no live value: it was never written, or it was deleted. `context` is the
    /// tombstone's context when a delete is known; pass it to the next write so that the
    /// write supersedes the delete rather than being concurrent with it.
    #[error("not found")]
    NotFound { context: Option<String> },
    /// Fewer than R (reads) or W (writes) replicas answered before the deadline, or the
    /// answer to a write was lost in transit. A write is then *indeterminate*, not undone:
    /// `stored_on` is how many replicas the coordinator knows hold it (`None` when the client
    /// never got the coordinator's answer, so nothing is known).
    #[error("unavailable: {message} (stored on {stored_on:?})")]
    Unavailable {
        message: String,
        stored_on: Option<u32>,
    },
    /// The node refused the request: bad quorum, bad context, bad key. Do not retry.
    #[error("bad request: {message}")]
    BadRequest { message: String },
    /// The key or the value is over the node's limit. Do not retry.
    #[error("too large: {message}")]
    TooLarge { message: String },
    /// No node could be reached (connection refused, no route, ...). The request was never
    /// delivered, so a write did not happen.
    #[error("transport: {0}")]
    Transport(String),
    /// A node answered something outside the API contract (unexpected status or body).
    #[error("protocol: {0}")]
    Protocol(String),
}

impl Error {
    /// Whether the call may have changed the stored data although it failed: a write that
    /// reached a coordinator, or whose answer was lost.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}
