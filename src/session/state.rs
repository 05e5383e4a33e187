//! The transaction-block state machine of a session, after PostgreSQL's own
//! (`src/backend/access/transam/xact.c`, `TBlockState`), for both protocols.
//!
//! Pure: a block state and an event in, the next state and what the session
//! must do out. The session keeps the data of a block (its shards, prelude,
//! savepoints) beside the state and changes both only through
//! `Session::transition`, so every transition is here and in that one method.
//!
//! How PostgreSQL's states map:
//! - `TBLOCK_DEFAULT` and `TBLOCK_STARTED` (one statement, or an extended
//!   segment on one shard in that shard's own transaction): [`Block::Default`];
//! - `TBLOCK_IMPLICIT_INPROGRESS` (a query of several statements, and here
//!   also a Sync segment or a statement spanning shards, which the proxy
//!   must make atomic itself): [`Block::Implicit`];
//! - `TBLOCK_INPROGRESS`: [`Block::InProgress`];
//! - `TBLOCK_ABORT`: [`Block::Failed`]. An error in an implicit block aborts
//!   it at once (`AbortCurrentTransaction`), back to `Default`.

use crate::error::TxnMisuse;

/// Where a session stands. The ReadyForQuery status byte derives from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Block {
    /// No block: a statement runs in a transaction of its own. Holds no
    /// server connection between messages (except an extended segment's).
    Default,
    /// An implicit block: the statements of one query, or of one Sync
    /// segment, committed together at its end. Never seen by ReadyForQuery
    /// (it ends first), so it reports `I`.
    Implicit,
    /// An explicit block after `BEGIN`: shards enlisted stay pinned.
    InProgress,
    /// An explicit block after an error: everything but `COMMIT`,
    /// `ROLLBACK` and `ROLLBACK TO SAVEPOINT` gets 25P02. Ends only by
    /// those.
    Failed,
}

/// What happens to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A query of several statements, or a segment that must be atomic
    /// across shards, starts running.
    StartImplicit,
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackTo,
    /// Any other statement (including `SET`, `PREPARE`, a read).
    Statement,
    /// A statement failed (on a shard, or in the proxy).
    Error,
    /// The end of a query of several statements, or a Sync.
    End,
}

/// What the session does for an event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Go on: run the statement (a savepoint command on the block's shards),
    /// or nothing to do for a bookkeeping event.
    Run,
    /// Do not run it: answer this error (then feed [`Event::Error`]).
    Refuse(TxnMisuse),
    /// Answer the command's tag, with this WARNING first; nothing to run.
    Warn(TxnMisuse),
    /// Begin: the block opens (keeping what an implicit block ran).
    Open,
    /// Commit the block's shards (answer `COMMIT`), after `warn` if any.
    Commit { warn: Option<TxnMisuse> },
    /// Roll back the block's shards (answer `ROLLBACK`), after `warn` if any.
    Rollback { warn: Option<TxnMisuse> },
}

impl Block {
    /// The ReadyForQuery status byte.
    pub(crate) fn status(self) -> u8 {
        match self {
            Block::Default | Block::Implicit => b'I',
            Block::InProgress => b'T',
            Block::Failed => b'E',
        }
    }

    /// Whether a block (of either kind) holds shards for the session.
    pub(crate) fn in_block(self) -> bool {
        !matches!(self, Block::Default)
    }

    /// The transition: the next state and what to do.
    pub(crate) fn on(self, ev: Event) -> (Block, Step) {
        use Block::*;
        use Event as E;
        match (self, ev) {
            (Default, E::StartImplicit) => (Implicit, Step::Run),
            (s, E::StartImplicit) => (s, Step::Run),

            (Default | Implicit, E::Begin) => (InProgress, Step::Open),
            (InProgress, E::Begin) => (InProgress, Step::Warn(TxnMisuse::AlreadyInProgress)),
            (Failed, E::Begin) => (Failed, Step::Refuse(TxnMisuse::Aborted)),

            (Default, E::Commit) => (Default, Step::Warn(TxnMisuse::NoTransaction)),
            (Implicit, E::Commit) => (
                Default,
                Step::Commit {
                    warn: Some(TxnMisuse::NoTransaction),
                },
            ),
            (InProgress, E::Commit) => (Default, Step::Commit { warn: None }),
            // PostgreSQL answers `ROLLBACK` to a COMMIT of a failed block.
            (Failed, E::Commit) => (Default, Step::Rollback { warn: None }),

            (Default, E::Rollback) => (Default, Step::Warn(TxnMisuse::NoTransaction)),
            (Implicit, E::Rollback) => (
                Default,
                Step::Rollback {
                    warn: Some(TxnMisuse::NoTransaction),
                },
            ),
            (InProgress | Failed, E::Rollback) => (Default, Step::Rollback { warn: None }),

            (Default | Implicit, E::Savepoint) => {
                (self, Step::Refuse(TxnMisuse::OutsideBlock("SAVEPOINT")))
            }
            (Default | Implicit, E::Release) => (
                self,
                Step::Refuse(TxnMisuse::OutsideBlock("RELEASE SAVEPOINT")),
            ),
            (Default | Implicit, E::RollbackTo) => (
                self,
                Step::Refuse(TxnMisuse::OutsideBlock("ROLLBACK TO SAVEPOINT")),
            ),
            (InProgress, E::Savepoint | E::Release | E::RollbackTo) => (InProgress, Step::Run),
            // Only ROLLBACK TO may run in a failed block; the session reports
            // success with `Event::Statement`... see `recovered`.
            (Failed, E::RollbackTo) => (Failed, Step::Run),
            (Failed, E::Savepoint | E::Release) => (Failed, Step::Refuse(TxnMisuse::Aborted)),

            (Failed, E::Statement) => (Failed, Step::Refuse(TxnMisuse::Aborted)),
            (s, E::Statement) => (s, Step::Run),

            (Implicit, E::Error) => (Default, Step::Rollback { warn: None }),
            (InProgress, E::Error) => (Failed, Step::Run),
            (s @ (Default | Failed), E::Error) => (s, Step::Run),

            (Implicit, E::End) => (Default, Step::Commit { warn: None }),
            (s, E::End) => (s, Step::Run),
        }
    }

    /// After a `ROLLBACK TO SAVEPOINT` succeeded: a failed block is usable again.
    pub(crate) fn recovered(self) -> Block {
        match self {
            Block::Failed => Block::InProgress,
            s => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Block::*;
    use super::Event as E;
    use super::*;

    fn outside(what: &'static str) -> Step {
        Step::Refuse(TxnMisuse::OutsideBlock(what))
    }

    /// Every state against every event, as xact.c decides it.
    #[test]
    fn transitions() {
        let nt = || Some(TxnMisuse::NoTransaction);
        let table: Vec<(Block, Event, Block, Step)> = vec![
            (Default, E::StartImplicit, Implicit, Step::Run),
            (Implicit, E::StartImplicit, Implicit, Step::Run),
            (InProgress, E::StartImplicit, InProgress, Step::Run),
            (Failed, E::StartImplicit, Failed, Step::Run),
            (Default, E::Begin, InProgress, Step::Open),
            (Implicit, E::Begin, InProgress, Step::Open),
            (
                InProgress,
                E::Begin,
                InProgress,
                Step::Warn(TxnMisuse::AlreadyInProgress),
            ),
            (Failed, E::Begin, Failed, Step::Refuse(TxnMisuse::Aborted)),
            (
                Default,
                E::Commit,
                Default,
                Step::Warn(TxnMisuse::NoTransaction),
            ),
            (Implicit, E::Commit, Default, Step::Commit { warn: nt() }),
            (InProgress, E::Commit, Default, Step::Commit { warn: None }),
            (Failed, E::Commit, Default, Step::Rollback { warn: None }),
            (
                Default,
                E::Rollback,
                Default,
                Step::Warn(TxnMisuse::NoTransaction),
            ),
            (
                Implicit,
                E::Rollback,
                Default,
                Step::Rollback { warn: nt() },
            ),
            (
                InProgress,
                E::Rollback,
                Default,
                Step::Rollback { warn: None },
            ),
            (Failed, E::Rollback, Default, Step::Rollback { warn: None }),
            (Default, E::Savepoint, Default, outside("SAVEPOINT")),
            (Implicit, E::Savepoint, Implicit, outside("SAVEPOINT")),
            (InProgress, E::Savepoint, InProgress, Step::Run),
            (
                Failed,
                E::Savepoint,
                Failed,
                Step::Refuse(TxnMisuse::Aborted),
            ),
            (Default, E::Release, Default, outside("RELEASE SAVEPOINT")),
            (Implicit, E::Release, Implicit, outside("RELEASE SAVEPOINT")),
            (InProgress, E::Release, InProgress, Step::Run),
            (Failed, E::Release, Failed, Step::Refuse(TxnMisuse::Aborted)),
            (
                Default,
                E::RollbackTo,
                Default,
                outside("ROLLBACK TO SAVEPOINT"),
            ),
            (
                Implicit,
                E::RollbackTo,
                Implicit,
                outside("ROLLBACK TO SAVEPOINT"),
            ),
            (InProgress, E::RollbackTo, InProgress, Step::Run),
            (Failed, E::RollbackTo, Failed, Step::Run),
            (Default, E::Statement, Default, Step::Run),
            (Implicit, E::Statement, Implicit, Step::Run),
            (InProgress, E::Statement, InProgress, Step::Run),
            (
                Failed,
                E::Statement,
                Failed,
                Step::Refuse(TxnMisuse::Aborted),
            ),
            (Default, E::Error, Default, Step::Run),
            (Implicit, E::Error, Default, Step::Rollback { warn: None }),
            (InProgress, E::Error, Failed, Step::Run),
            (Failed, E::Error, Failed, Step::Run),
            (Default, E::End, Default, Step::Run),
            (Implicit, E::End, Default, Step::Commit { warn: None }),
            (InProgress, E::End, InProgress, Step::Run),
            (Failed, E::End, Failed, Step::Run),
        ];
        for (from, ev, to, step) in table {
            assert_eq!(from.on(ev), (to, step), "{from:?} on {ev:?}");
        }
    }

    #[test]
    fn status_bytes() {
        assert_eq!(Default.status(), b'I');
        assert_eq!(Implicit.status(), b'I');
        assert_eq!(InProgress.status(), b'T');
        assert_eq!(Failed.status(), b'E');
        assert_eq!(Failed.recovered(), InProgress);
        assert_eq!(Implicit.recovered(), Implicit);
    }
}
