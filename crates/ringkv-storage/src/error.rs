//! The storage layer's one error type.
//!
//! Expected failures (a full disk, a full hint backlog, a corrupt record) are typed variants
//! with messages that say what happened; a broken internal invariant is a panic, not an error.

/// Everything a storage engine or hint store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The operating system refused an I/O operation.
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The embedded engine reported an error (including a poisoned journal after a failed
    /// fsync: from then on every write fails, and the node must restart and recover).
    #[error("storage engine failed: {0}")]
    Engine(String),
    /// A stored record failed its checksum or could not be decoded. `what` names the record
    /// (which keyspace, which partition and key), `detail` says what was wrong. Corrupt data is
    /// never returned as data.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
    /// The hint store already holds its bound of distinct (target, key) hints.
    #[error(
        "hint backlog is full: {max} hints are pending (raise max_hints or restore the target nodes)"
    )]
    HintBacklogFull { max: usize },
    /// A key longer than `ringkv_core::constants::MAX_KEY_BYTES`.
    #[error("key of {len} bytes is longer than the {max} bytes allowed")]
    KeyTooLong { len: usize, max: usize },
    /// The engine was closed (or a fatal fsync failure made it refuse further writes).
    #[error("storage is closed")]
    Closed,
}

impl From<fjall::Error> for StorageError {
    fn from(e: fjall::Error) -> StorageError {
        match e {
            fjall::Error::Io(io) => StorageError::Io(io),
            // fjall refuses writes after a failed journal write or fsync.
            fjall::Error::Poisoned => StorageError::Closed,
            other => StorageError::Engine(other.to_string()),
        }
    }
}

impl StorageError {
    pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }
}
