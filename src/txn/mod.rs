//! The transaction coordinator: one-phase commit when one shard wrote, and
//! two-phase commit whose decision is a row committed one-phase on one of
//! the writers when several did; recovery of in-doubt transactions by any
//! proxy. No state on the local disk: everything recovery needs is in the
//! gids and the shards' `pieskieo.decisions` tables.
//!
//! The coordinator returns typed outcomes (SQLSTATEs, messages, PostgreSQL's
//! own error frames); the session encodes them for the client.

mod control;
mod decision;
mod id;
mod recovery;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

pub use control::{Control, ControlError};
pub use decision::{Decision, SCHEMA as DECISION_SCHEMA};
pub use id::{Gid, TxnId, GID_PREFIX};
pub use recovery::{Resolver, StartupError};

use crate::admin::Stats;
use crate::backend::{BackendError, PooledConn, ServerConn};
use crate::error::SqlState;
use crate::protocol::{ErrorFields, Frame};
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

/// What one statement sent to one connection came back with.
enum Answer {
    Ok,
    Error(Frame),
    Lost(BackendError),
}

impl Answer {
    fn ok(&self) -> bool {
        matches!(self, Answer::Ok)
    }

    fn report(&self) -> Option<Report> {
        match self {
            Answer::Ok => None,
            Answer::Error(f) => Some(Report::Server(f.clone())),
            Answer::Lost(e) => Some(Report::Proxy {
                sqlstate: e.sqlstate(),
                message: e.to_string(),
            }),
        }
    }

    fn describe(&self) -> String {
        match self {
            Answer::Ok => "ok".into(),
            Answer::Error(f) => ErrorFields::parse(f.body()).to_string(),
            Answer::Lost(e) => e.to_string(),
        }
    }
}

/// What the decision shard answered to the commit row and its COMMIT.
enum OnDecider {
    /// C committed: the transaction is committed.
    Committed,
    /// The commit row was refused (deadline passed, or a resolver's abort
    /// row won); C rolled back.
    Refused(Frame),
    /// C's COMMIT failed (a deferred constraint, a serialization failure);
    /// C rolled back.
    Failed(Frame),
    /// An answer never came: whether C committed is unknown.
    Lost(BackendError),
}

/// Sends `sqls[i]` to `conns[i]`, all before reading any answer, so the
/// shards work in parallel: one write and one read per shard.
async fn round(conns: &mut [&mut ServerConn], sqls: &[String]) -> Vec<Answer> {
    let mut sent = Vec::with_capacity(conns.len());
    for (c, sql) in conns.iter_mut().zip(sqls) {
        let r = async {
            c.send_query(sql).await?;
            c.flush().await
        }
        .await;
        sent.push(r);
    }
    let mut out = Vec::with_capacity(conns.len());
    for (c, s) in conns.iter_mut().zip(sent) {
        out.push(match s {
            Err(e) => Answer::Lost(e),
            Ok(()) => read_answer(c).await,
        });
    }
    for c in conns.iter_mut() {
        if c.status != b'I' {
            c.mark_broken();
        }
    }
    out
}

/// The rows of one query's answer, or the error it ended with.
async fn read_rows(c: &mut ServerConn) -> Result<Result<Vec<Frame>, Frame>, BackendError> {
    let mut rows = Vec::new();
    let mut err = None;
    loop {
        let f = c.read().await?;
        match f.tag {
            b'Z' => break,
            b'E' => err = Some(f),
            b'D' => rows.push(f),
            _ => {}
        }
    }
    Ok(match err {
        Some(e) => Err(e),
        None => Ok(rows),
    })
}

async fn read_answer(c: &mut ServerConn) -> Answer {
    match crate::executor::drain(c).await {
        Ok(None) => Answer::Ok,
        Ok(Some(f)) => Answer::Error(f),
        Err(e) => Answer::Lost(e),
    }
}

/// One statement on every connection of `parts` picked by `pick`.
async fn round_on(
    parts: &mut [Participant],
    pick: impl Fn(&Participant) -> Option<String>,
) -> Vec<(ShardId, Answer)> {
    let mut conns = Vec::new();
    let mut sqls = Vec::new();
    let mut shards = Vec::new();
    for p in parts.iter_mut() {
        if let Some(sql) = pick(p) {
            shards.push(p.shard());
            sqls.push(sql);
            conns.push(&mut *p.conn);
        }
    }
    let answers = round(&mut conns, &sqls).await;
    shards.into_iter().zip(answers).collect()
}

fn rolled_back(message: String) -> Report {
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
            stats,
        }
    }

    /// Two-phase commits under way in this process.
    pub fn in_flight(&self) -> Vec<TxnId> {
        self.in_flight
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
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
        if let Some(error) = answers.iter().find_map(|(_, a)| a.report()) {
            round_on(parts, |p| (!p.writer()).then(|| "ROLLBACK".into())).await;
            return CommitOutcome::Aborted { error };
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

    async fn two_phase(&self, parts: &mut [Participant]) -> CommitOutcome {
        let txn = TxnId::new(self.window);
        self.set_in_flight(txn, true);
        let outcome = self.two_phase_inner(txn, parts).await;
        self.set_in_flight(txn, false);
        outcome
    }

    fn gid(&self, txn: TxnId, decider: ShardId, shard: ShardId) -> String {
        Gid {
            txn,
            decider,
            shard,
        }
        .text(&self.cluster)
    }

    async fn two_phase_inner(&self, txn: TxnId, parts: &mut [Participant]) -> CommitOutcome {
        let started = Instant::now();
        // C: the first writer. It never prepares; its COMMIT is the decision.
        let Some(decider) = parts.iter().find(|p| p.writer()).map(|p| p.shard()) else {
            return self.commit_readers(parts).await;
        };
        let other = |p: &Participant| p.writer() && p.shard() != decider;

        // Phase 1: PREPARE the others, all at once.
        let mut phase = Phase::Preparing;
        let answers = round_on(parts, |p| {
            other(p).then(|| {
                format!(
                    "PREPARE TRANSACTION '{}'",
                    self.gid(txn, decider, p.shard())
                )
            })
        })
        .await;
        let prepared: Vec<ShardId> = answers
            .iter()
            .filter(|(_, a)| a.ok())
            .map(|(s, _)| *s)
            .collect();
        if let Some((shard, a)) = answers.iter().find(|(_, a)| !a.ok()) {
            warn!(%shard, %txn, ?phase, error = %a.describe(), "PREPARE failed; rolling back");
            let error = a
                .report()
                .unwrap_or_else(|| rolled_back("PREPARE failed".into()));
            self.abort_all(txn, decider, parts, &prepared).await;
            return CommitOutcome::Aborted { error };
        }
        self.hit(FailPoint::AfterPrepare).await;
        let prepared_at = Instant::now();

        // The decision: the commit row and COMMIT on C, in one write unless
        // a test stops between them.
        phase = Phase::Deciding;
        let Some(c) = parts.iter_mut().find(|p| p.shard() == decider) else {
            return CommitOutcome::Aborted {
                error: rolled_back("internal error: decision shard vanished".into()),
            };
        };
        let decision = match self.decide_on(txn, &mut c.conn).await {
            OnDecider::Committed => Ok(()),
            OnDecider::Refused(f) => Err(self.explain_refusal(txn, decider, f)),
            OnDecider::Failed(f) => Err(Report::Server(f)),
            OnDecider::Lost(e) => {
                warn!(shard = %decider, %txn, ?phase, error = %e, "decision shard's COMMIT answer lost; asking it again");
                match decision::decide(&self.control, txn, decider).await {
                    Ok(Decision::Commit) => Ok(()),
                    Ok(Decision::Abort) => Err(rolled_back(format!(
                        "the connection to shard {decider} was lost during COMMIT and the transaction was rolled back: {e}"
                    ))),
                    Err(again) => {
                        warn!(shard = %decider, %txn, error = %again, "decision unknown; recovery will finish it");
                        return CommitOutcome::Unknown {
                            shard: decider,
                            message: format!(
                                "the connection to shard {decider} was lost during COMMIT and the shard cannot be reached ({again}); whether the transaction committed is unknown; recovery will finish it"
                            ),
                        };
                    }
                }
            }
        };
        if let Err(error) = decision {
            self.abort_all(txn, decider, parts, &prepared).await;
            return CommitOutcome::Aborted { error };
        }
        phase = Phase::Committing;
        let decided_at = Instant::now();
        self.hit(FailPoint::AfterDecision).await;

        // Phase 2: COMMIT PREPARED on the others and COMMIT on the readers, at once.
        let phase2 = |p: &Participant, only: Option<ShardId>| -> Option<String> {
            if only.is_some_and(|s| s != p.shard()) {
                return None;
            }
            if other(p) {
                Some(format!(
                    "COMMIT PREPARED '{}'",
                    self.gid(txn, decider, p.shard())
                ))
            } else if !p.writer() {
                Some("COMMIT".into())
            } else {
                None
            }
        };
        let mut answers = Vec::new();
        if matches!(self.failpoint, Some((FailPoint::AfterFirstCommit, _))) {
            let first = parts.iter().find(|p| other(p)).map(|p| p.shard());
            answers.extend(
                round_on(parts, |p| {
                    phase2(p, first).filter(|_| Some(p.shard()) == first)
                })
                .await,
            );
            self.hit(FailPoint::AfterFirstCommit).await;
            answers.extend(
                round_on(parts, |p| {
                    phase2(p, None).filter(|_| Some(p.shard()) != first)
                })
                .await,
            );
        } else {
            answers = round_on(parts, |p| phase2(p, None)).await;
        }
        let mut warnings = Vec::new();
        for (shard, a) in &answers {
            if a.ok() {
                continue;
            }
            if parts.iter().any(|p| p.shard() == *shard && !p.writer()) {
                warnings.extend(self.reader_warnings(std::slice::from_ref(&(*shard, a))));
                continue;
            }
            warn!(%shard, %txn, ?phase, error = %a.describe(), "COMMIT PREPARED failed; recovery will finish it");
            warnings.push(Notice {
                sqlstate: SqlState::WARNING,
                message: format!(
                    "transaction committed, but shard {shard} has not confirmed yet ({}); it will be finished automatically",
                    a.describe()
                ),
            });
        }
        let elapsed = started.elapsed();
        Stats::bump(&self.stats.two_phase_micros, elapsed.as_micros() as u64);
        Stats::bump(
            &self.stats.decision_micros,
            (decided_at - prepared_at).as_micros() as u64,
        );
        self.stats.two_phase_prepare.observe(prepared_at - started);
        self.stats
            .two_phase_decision
            .observe(decided_at - prepared_at);
        self.stats.two_phase_commit.observe(decided_at.elapsed());
        if let Ok(mut t) = self.timings.lock() {
            if let Some(v) = t.as_mut() {
                v.push(PhaseTimes {
                    prepare: prepared_at - started,
                    decision: decided_at - prepared_at,
                    commit: decided_at.elapsed(),
                });
            }
        }
        if warnings.is_empty() {
            phase = Phase::Done;
        }
        info!(%txn, decider = %decider, shards = prepared.len() + 1, ?phase, "two-phase commit");
        CommitOutcome::Committed { warnings }
    }

    /// Inserts the commit row on C and commits C.
    async fn decide_on(&self, txn: TxnId, conn: &mut ServerConn) -> OnDecider {
        let insert = decision::commit_row_sql(txn);
        let split = matches!(self.failpoint, Some((FailPoint::AfterDecisionInsert, _)));
        let sent = async {
            conn.send_query(&insert).await?;
            if split {
                conn.flush().await?;
                if let Some(e) = crate::executor::drain(conn).await? {
                    return Ok(Some(e));
                }
            }
            conn.send_query("COMMIT").await?;
            conn.flush().await?;
            Ok::<_, BackendError>(None)
        }
        .await;
        let outcome = match sent {
            Err(e) => OnDecider::Lost(e),
            Ok(Some(e)) => {
                // The insert failed (split mode): end C's transaction.
                let _ = conn.simple("ROLLBACK").await;
                OnDecider::Refused(e)
            }
            Ok(None) => {
                let insert = if split {
                    self.hit(FailPoint::AfterDecisionInsert).await;
                    Answer::Ok
                } else {
                    read_answer(conn).await
                };
                match (insert, read_answer(conn).await) {
                    // COMMIT after a failed insert answers ROLLBACK.
                    (Answer::Error(e), _) => OnDecider::Refused(e),
                    (Answer::Lost(e), _) | (Answer::Ok, Answer::Lost(e)) => OnDecider::Lost(e),
                    (Answer::Ok, Answer::Error(e)) => OnDecider::Failed(e),
                    (Answer::Ok, Answer::Ok) => OnDecider::Committed,
                }
            }
        };
        if conn.status != b'I' || matches!(outcome, OnDecider::Lost(_)) {
            conn.mark_broken();
        }
        outcome
    }

    /// A refused commit row means the deadline passed or a resolver decided
    /// first; tell the client that, not a constraint on a table it never saw.
    fn explain_refusal(&self, txn: TxnId, decider: ShardId, refusal: Frame) -> Report {
        let fields = ErrorFields::parse(refusal.body());
        let why = match fields.code.as_str() {
            decision::DEADLINE_PASSED => "its commit deadline passed before the decision",
            decision::ABORTED_BY_RESOLVER => {
                "it took longer than the recovery grace period and recovery rolled it back"
            }
            _ => return Report::Server(refusal),
        };
        warn!(%txn, %decider, why, "commit refused on the decision shard");
        rolled_back(format!("transaction rolled back: {why}"))
    }

    /// Rolls back everything after a failed PREPARE or a refused decision:
    /// `ROLLBACK PREPARED` where PREPARE succeeded, `ROLLBACK` where a
    /// transaction is still open; a connection that is gone took its
    /// transaction with it (or recovery rolls back what it prepared).
    async fn abort_all(
        &self,
        txn: TxnId,
        decider: ShardId,
        parts: &mut [Participant],
        prepared: &[ShardId],
    ) {
        round_on(parts, |p| {
            if prepared.contains(&p.shard()) {
                Some(format!(
                    "ROLLBACK PREPARED '{}'",
                    self.gid(txn, decider, p.shard())
                ))
            } else if p.conn.status != b'I' {
                Some("ROLLBACK".into())
            } else {
                None
            }
        })
        .await;
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
