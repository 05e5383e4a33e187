//! Server side: hand-framed connections to PostgreSQL shards and their pools.

mod conn;
mod endpoint;
mod kept;
mod pool;
mod registry;
mod tls;

pub use conn::{
    send_cancel, BlockStatement, ServerConn, SnapshotHold, MAX_PREPARED_PER_CONNECTION,
};
pub use endpoint::Endpoint;
pub use kept::Kept;
pub use pool::{PooledConn, Pools};
pub use registry::{Backends, Ours, Verdict};

use crate::error::SqlState;
use crate::router::ShardId;

/// A failure talking to a shard. Every variant names the shard.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("shard {shard} is unavailable: {message}")]
    Connect { shard: ShardId, message: String },
    /// TLS as the shard's `sslmode` asks could not be had: the shard
    /// offers none, or its certificate failed the check.
    #[error("shard {shard}: {message}")]
    Tls { shard: ShardId, message: String },
    #[error("shard {shard}: authentication failed: {message}")]
    Auth { shard: ShardId, message: String },
    #[error("shard {shard}: connection lost: {message}")]
    Io { shard: ShardId, message: String },
    #[error("shard {shard}: server closed the connection unexpectedly")]
    Closed { shard: ShardId },
    #[error("shard {shard}: protocol error: {message}")]
    Protocol { shard: ShardId, message: String },
    #[error("shard {shard}: timed out waiting for a server connection from the pool")]
    PoolTimeout { shard: ShardId },
    #[error("canceling statement: shard {shard} did not answer within query_timeout_ms ({ms} ms)")]
    QueryTimeout { shard: ShardId, ms: u64 },
    /// A statement that commits by itself (COMMIT, an autocommit write) got
    /// no answer: it may or may not have taken effect.
    #[error("transaction resolution unknown: shard {shard} gave no answer to a statement that commits ({cause}); check whether it took effect before retrying")]
    OutcomeUnknown { shard: ShardId, cause: String },
    /// `consistent_reads`: the shard did not answer, nor the fence's look
    /// at it, while the statement held the fence that commits waited for;
    /// the fence let the statement go, so what the shard answers later
    /// (perhaps from a snapshot taken outside the fence) is refused.
    #[error("deadlock detected: shard {shard} did not answer while the statement held the consistent-read fence, which committing transactions wait for; its answer is refused")]
    FencedOut { shard: ShardId },
}

impl BackendError {
    pub fn sqlstate(&self) -> SqlState {
        match self {
            BackendError::Connect { .. }
            | BackendError::Tls { .. }
            | BackendError::Auth { .. }
            | BackendError::Io { .. }
            | BackendError::Closed { .. }
            | BackendError::Protocol { .. }
            | BackendError::PoolTimeout { .. } => SqlState::CONNECTION_FAILURE,
            BackendError::QueryTimeout { .. } => SqlState::QUERY_CANCELED,
            BackendError::OutcomeUnknown { .. } => SqlState::TRANSACTION_RESOLUTION_UNKNOWN,
            BackendError::FencedOut { .. } => SqlState::DEADLOCK_DETECTED,
        }
    }

    /// This error, met while waiting for the answer to a statement that
    /// commits by itself: when the statement reached the server and no answer
    /// came back, its outcome is unknown (08007), never "cancelled".
    pub fn unanswered_commit(self) -> BackendError {
        match self {
            BackendError::QueryTimeout { shard, .. }
            | BackendError::Io { shard, .. }
            | BackendError::Closed { shard }
            | BackendError::Protocol { shard, .. }
            | BackendError::FencedOut { shard } => BackendError::OutcomeUnknown {
                shard,
                cause: self.to_string(),
            },
            BackendError::Connect { .. }
            | BackendError::Tls { .. }
            | BackendError::Auth { .. }
            | BackendError::PoolTimeout { .. }
            | BackendError::OutcomeUnknown { .. } => self,
        }
    }
}
