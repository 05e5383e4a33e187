//! The transaction coordinator: one-phase commit when one shard wrote, and
//! two-phase commit whose decision is a row committed one-phase on one of
//! the writers when several did; recovery of in-doubt transactions by any
//! proxy. No state on the local disk: everything recovery needs is in the
//! gids and the shards' `pieskieo.decisions` tables.
//!
//! The coordinator returns typed outcomes (SQLSTATEs, messages, PostgreSQL's
//! own error frames); the session encodes them for the client.

mod control;
pub mod deadlock;
mod decision;
pub mod fence;
mod id;
mod recovery;
mod round;
mod two_phase;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::executor::read_rows;
use round::{round_on, Answer};

pub(crate) use control::{control_pool, Login};
pub use control::{Control, ControlError};
pub use decision::{Decision, SCHEMA as DECISION_SCHEMA};
pub use id::{Gid, TxnId, GID_PREFIX};
pub use recovery::{Resolver, StartupError};

use crate::admin::Stats;
use crate::backend::{BackendError, PooledConn, ServerConn};
use crate::error::SqlState;
use crate::protocol::Frame;
use crate::router::{ShardId, Writes};

/// The phases of a two-phase commit, and what recovery does if the proxy
/// dies in each. Writers other than the decision shard C are "the others".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `PREPARE TRANSACTION` sent to the others. Recovery (after the grace
    /// period): C holds no commit row, so the resolver's abort row wins and
    /// it rolls back what was prepared; C's own transaction died with the
    /// proxy's connection.
    Preparing,
    /// The commit row is inserted on C and its `COMMIT` sent. Recovery: the
    /// resolver's abort-row insert waits for C's transaction to end, then
    /// reads the winner: commit if C committed, else abort.
    Deciding,
    /// C committed: the transaction is committed. Recovery: `COMMIT
    /// PREPARED` wherever the others still hold it. Terminal for the outcome.
    Committing,
    /// Every participant finished. Recovery: nothing to do; the decision row
    /// is pruned later. Terminal.
    Done,
}

/// A shard enlisted in a client's transaction.
pub struct Participant {
    pub conn: PooledConn,
    /// Whether what ran here wrote: proven by the text, or to be asked.
    pub wrote: Writes,
}

impl crate::executor::Enlisted for Participant {
    fn shard(&self) -> ShardId {
        self.conn.shard
    }

    fn conn(&mut self) -> &mut crate::backend::ServerConn {
        &mut self.conn
    }
}

impl Participant {
    pub fn shard(&self) -> ShardId {
        self.conn.shard
    }

    /// Ends like a writer: anything not proven read-only (after
    /// [`Coordinator::settle`], `Maybe` is left only on a lone candidate,
    /// whose one-phase COMMIT is right either way).
    fn writer(&self) -> bool {
        self.wrote.may()
    }
}

/// Whether this transaction wrote or locked rows: PostgreSQL assigns a
/// transaction id exactly then.
const WROTE_SQL: &str = "SELECT pg_current_xact_id_if_assigned() IS NOT NULL";

/// What the client is told when a commit fails. Either PostgreSQL's own
/// error, relayed unchanged, or one the proxy states.
#[derive(Debug, Clone)]
pub enum Report {
    /// An ErrorResponse from a shard, exactly as it sent it.
    Server(Frame),
    Proxy {
        sqlstate: SqlState,
        message: String,
    },
}

/// A WARNING for the client alongside a successful commit.
#[derive(Debug, Clone)]
pub struct Notice {
    pub sqlstate: SqlState,
    pub message: String,
}

/// How a commit ended.
#[derive(Debug)]
pub enum CommitOutcome {
    /// Committed. `warnings` name shards not yet told (recovery finishes them).
    Committed { warnings: Vec<Notice> },
    /// Rolled back everywhere (or left for recovery to roll back).
    Aborted { error: Report },
    /// The decision shard's answer to `COMMIT` was lost and it could not be
    /// asked again: the client gets 08007 (transaction_resolution_unknown);
    /// recovery finishes the transaction either way.
    Unknown { shard: ShardId, message: String },
}

/// Where a test may make the coordinator crash or stall. Armed only by the
/// test-only setting `txn.test_failpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// After every PREPARE succeeded, before the decision row is inserted.
    AfterPrepare,
    /// After C answered the decision row's INSERT and its COMMIT was sent,
    /// before the COMMIT's answer is read.
    AfterDecisionInsert,
    /// After C committed, before any COMMIT PREPARED.
    AfterDecision,
    /// After the first participant's COMMIT PREPARED.
    AfterFirstCommit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAction {
    Crash,
    Pause(u64),
}

/// Parses `"<point>:crash"` or `"<point>:pause=<ms>"`.
pub fn parse_failpoint(s: &str) -> Option<(FailPoint, FailAction)> {
    let (point, action) = s.split_once(':')?;
    let point = match point {
        "after_prepare" => FailPoint::AfterPrepare,
        "after_decision_insert" => FailPoint::AfterDecisionInsert,
        "after_decision" => FailPoint::AfterDecision,
        "after_first_commit" => FailPoint::AfterFirstCommit,
        _ => return None,
    };
    let action = match action {
        "crash" => FailAction::Crash,
        a => FailAction::Pause(a.strip_prefix("pause=")?.parse().ok()?),
    };
    Some((point, action))
}

pub struct Coordinator {
    cluster: String,
    /// This proxy's name in logs (optional `node_id`).
    node: String,
    control: Arc<Control>,
    /// How long a coordinator has, from choosing a transaction id, to insert
    /// its commit row (judged by C's clock; see [`TxnId`]).
    window: Duration,
    in_flight: Mutex<HashSet<TxnId>>,
    failpoint: Option<(FailPoint, FailAction)>,
    /// Phase timings of two-phase commits, kept only when a benchmark asks.
    timings: Mutex<Option<Vec<PhaseTimes>>>,
    /// `consistent_reads`: the fence commit phases and snapshots share.
    fence: Option<fence::Fence>,
    pub stats: Arc<Stats>,
}

/// How long the phases of one two-phase commit took.
#[derive(Debug, Clone, Copy)]
pub struct PhaseTimes {
    /// PREPARE on every writer but C.
    pub prepare: Duration,
    /// The decision: C's insert and COMMIT.
    pub decision: Duration,
    /// COMMIT PREPARED on the others (and readers' COMMIT).
    pub commit: Duration,
}

pub(super) fn rolled_back(message: String) -> Report {
    Report::Proxy {
        sqlstate: SqlState::TRANSACTION_ROLLBACK,
        message,
    }
}

impl Coordinator {
    pub fn new(
        cluster: &str,
        node: &str,
        control: Arc<Control>,
        window: Duration,
        failpoint: Option<(FailPoint, FailAction)>,
        stats: Arc<Stats>,
    ) -> Coordinator {
        Coordinator {
            cluster: cluster.to_string(),
            node: node.to_string(),
            control,
            window,
            in_flight: Mutex::new(HashSet::new()),
            failpoint,
            timings: Mutex::new(None),
            fence: None,
            stats,
        }
    }

    /// With `consistent_reads`: commit phases enter `fence`.
    pub fn with_fence(mut self, fence: Option<fence::Fence>) -> Coordinator {
        self.fence = fence;
        self
    }

    /// The consistent-read fence, when `consistent_reads` is on.
    pub fn fence(&self) -> Option<&fence::Fence> {
        self.fence.as_ref()
    }

    /// Two-phase commits under way in this process.
    pub fn in_flight(&self) -> Vec<TxnId> {
        self.in_flight
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// How many two-phase commits are under way in this process.
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.lock().map(|s| s.len()).unwrap_or_default()
    }

    /// Starts keeping phase timings (for benchmarks).
    pub fn record_timings(&self) {
        if let Ok(mut t) = self.timings.lock() {
            *t = Some(Vec::new());
        }
    }

    /// The phase timings kept so far.
    pub fn take_timings(&self) -> Vec<PhaseTimes> {
        self.timings
            .lock()
            .ok()
            .and_then(|mut t| t.as_mut().map(std::mem::take))
            .unwrap_or_default()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    pub fn is_in_flight(&self, txn: TxnId) -> bool {
        self.in_flight
            .lock()
            .map(|s| s.contains(&txn))
            .unwrap_or(true)
    }

    fn set_in_flight(&self, txn: TxnId, on: bool) {
        if let Ok(mut s) = self.in_flight.lock() {
            if on {
                s.insert(txn);
            } else {
                s.remove(&txn);
            }
        }
    }

    async fn hit(&self, point: FailPoint) {
        match self.failpoint {
            Some((p, FailAction::Crash)) if p == point => {
                warn!(?point, "test failpoint: crashing");
                std::process::abort();
            }
            Some((p, FailAction::Pause(ms))) if p == point => {
                warn!(?point, ms, "test failpoint: pausing");
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            _ => {}
        }
    }

    /// Rolls every participant back, in parallel.
    pub async fn rollback(&self, parts: &mut [Participant]) {
        round_on(parts, |_| Some("ROLLBACK".into())).await;
        Stats::bump(&self.stats.aborts, 1);
    }

    fn count_participants(&self, parts: &[Participant]) {
        for p in parts {
            if let Some(s) = self.stats.shards.get(p.shard().0 as usize) {
                Stats::bump(&s.transactions, 1);
            }
        }
    }

    /// Commits a client's transaction over its participants. Readers end
    /// only after the decision (so nothing they hold, an advisory lock say,
    /// is released before it), and roll back if it is an abort.
    pub async fn commit(&self, parts: &mut [Participant]) -> CommitOutcome {
        let started = Instant::now();
        if let Err(error) = self.settle(parts).await {
            self.rollback(parts).await;
            return CommitOutcome::Aborted { error };
        }
        let writers = parts.iter().filter(|p| p.writer()).count();
        let outcome = match writers {
            0 => self.commit_readers(parts).await,
            1 => self.one_phase(parts).await,
            _ => self.two_phase(parts).await,
        };
        match &outcome {
            CommitOutcome::Committed { .. } if writers <= 1 => {
                Stats::bump(&self.stats.commits_one_phase, 1);
                self.count_participants(parts);
                self.stats.one_phase_commit.observe(started.elapsed());
            }
            CommitOutcome::Committed { .. } => {
                Stats::bump(&self.stats.commits_two_phase, 1);
                self.count_participants(parts);
            }
            CommitOutcome::Aborted { .. } => Stats::bump(&self.stats.aborts, 1),
            CommitOutcome::Unknown { .. } => {}
        }
        outcome
    }

    /// Exact write detection: when the outcome depends on it (two or more
    /// participants may have written), each one whose statements the
    /// classifier could not prove read-only or writing is asked whether its
    /// transaction wrote, all at once, and becomes a writer or a reader.
    async fn settle(&self, parts: &mut [Participant]) -> Result<(), Report> {
        let candidates = parts.iter().filter(|p| p.writer()).count();
        if candidates < 2 || !parts.iter().any(|p| p.wrote == Writes::Maybe) {
            return Ok(());
        }
        let mut unsure: Vec<&mut Participant> = parts
            .iter_mut()
            .filter(|p| p.wrote == Writes::Maybe)
            .collect();
        let mut sent = Vec::with_capacity(unsure.len());
        for p in unsure.iter_mut() {
            let r = async {
                p.conn.send_query(WROTE_SQL).await?;
                p.conn.flush().await
            }
            .await;
            sent.push(r);
        }
        let mut failure = None;
        for (p, r) in unsure.iter_mut().zip(sent) {
            let answer = match r {
                Err(e) => Err(e),
                Ok(()) => read_rows(&mut p.conn).await,
            };
            match answer {
                Ok(Ok(frames)) => {
                    let wrote = ServerConn::text_values(&frames)
                        .first()
                        .and_then(|r| r.first().cloned().flatten())
                        .is_some_and(|v| v.as_ref() != b"f");
                    p.wrote = Writes::from(wrote);
                }
                Ok(Err(f)) => {
                    failure.get_or_insert(Report::Server(f));
                }
                Err(e) => {
                    failure.get_or_insert(Report::Proxy {
                        sqlstate: e.sqlstate(),
                        message: e.to_string(),
                    });
                }
            }
        }
        match failure {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// No writer: every participant commits at once.
    async fn commit_readers(&self, parts: &mut [Participant]) -> CommitOutcome {
        let answers = round_on(parts, |_| Some("COMMIT".into())).await;
        match answers.iter().find_map(|(_, a)| a.report()) {
            Some(error) => CommitOutcome::Aborted { error },
            None => CommitOutcome::Committed {
                warnings: Vec::new(),
            },
        }
    }

    /// One writer: its COMMIT is the decision; then the readers end.
    async fn one_phase(&self, parts: &mut [Participant]) -> CommitOutcome {
        let answers = round_on(parts, |p| p.writer().then(|| "COMMIT".into())).await;
        // No answer to the writer's COMMIT: it may have committed (08007).
        let lost = answers.into_iter().find_map(|(_, a)| match a {
            Answer::Lost(e) => match e.unanswered_commit() {
                BackendError::OutcomeUnknown { shard, cause } => Some(Err((shard, cause))),
                other => Some(Ok(Answer::Lost(other))),
            },
            a => a.report().map(|_| Ok(a)),
        });
        match lost {
            Some(Err((shard, cause))) => {
                round_on(parts, |p| (!p.writer()).then(|| "ROLLBACK".into())).await;
                return CommitOutcome::Unknown {
                    shard,
                    message: BackendError::OutcomeUnknown { shard, cause }.to_string(),
                };
            }
            Some(Ok(a)) => {
                round_on(parts, |p| (!p.writer()).then(|| "ROLLBACK".into())).await;
                if let Some(error) = a.report() {
                    return CommitOutcome::Aborted { error };
                }
            }
            None => {}
        }
        let answers = round_on(parts, |p| (!p.writer()).then(|| "COMMIT".into())).await;
        let answers: Vec<(ShardId, &Answer)> = answers.iter().map(|(s, a)| (*s, a)).collect();
        CommitOutcome::Committed {
            warnings: self.reader_warnings(&answers),
        }
    }

    /// Readers that failed to commit after a committed decision: their
    /// transactions wrote nothing, so the outcome stands; the client hears.
    fn reader_warnings<'a>(
        &self,
        answers: impl IntoIterator<Item = &'a (ShardId, &'a Answer)>,
    ) -> Vec<Notice> {
        answers
            .into_iter()
            .filter(|(_, a)| !a.ok())
            .map(|(shard, a)| Notice {
                sqlstate: SqlState::WARNING,
                message: format!(
                    "transaction committed, but read-only shard {shard} reported: {}",
                    a.describe()
                ),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failpoints_parse() {
        assert_eq!(
            parse_failpoint("after_decision:crash"),
            Some((FailPoint::AfterDecision, FailAction::Crash))
        );
        assert_eq!(
            parse_failpoint("after_decision_insert:crash"),
            Some((FailPoint::AfterDecisionInsert, FailAction::Crash))
        );
        assert_eq!(
            parse_failpoint("after_prepare:pause=150"),
            Some((FailPoint::AfterPrepare, FailAction::Pause(150)))
        );
        assert_eq!(parse_failpoint("nowhere:crash"), None);
    }
}
