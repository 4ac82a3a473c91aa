//! The broker's failures. The program under test never causes these.

/// A failure of the queue, the event log or the fan-out.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Redis is unreachable or answered with an error; callers map this to UNAVAILABLE.
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// Stored data did not parse: a bug or a version mismatch, never user input.
    #[error("corrupt stored data: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// No submission with this id (or it expired).
    #[error("submission {0} not found")]
    NotFound(String),
    /// The queue is at its configured maximum.
    #[error("the queue is full ({0} jobs waiting)")]
    QueueFull(u64),
    /// The submission's owner already has this many unfinished submissions (its quota).
    #[error("{0} unfinished submissions already; wait for one to finish")]
    OwnerBusy(u64),
    /// Redis is not connected right now (reconnecting); fail fast instead of queueing.
    #[error("redis is not connected")]
    Unavailable,
    /// Redis answered in a shape the broker does not expect (a bug or a version
    /// mismatch): an internal error, never "closed".
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// The broker is shutting down.
    #[error("broker closed")]
    Closed,
    /// The standalone broker's `--data-dir` store failed (persist.rs): the change was not
    /// kept, so it is refused rather than accepted and lost on the next restart.
    #[error("storage: {0}")]
    Storage(String),
}

/// Shorthand used across the crate.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
