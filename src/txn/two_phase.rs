//! Two-phase commit with the decision on a participant: PREPARE the other
//! writers, insert the commit row on C and commit C (the decision), then
//! COMMIT PREPARED the others; and every way back when something fails.

use std::time::Instant;

use tracing::{info, warn};

use super::decision::{self, Decision};
use super::fence::{Class, FenceError, FenceGuard, STALL_AFTER};

/// How often a commit holding the fence for unfinished prepared parts
/// tries again, and for how long at most.
const FINISH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
const FINISH_FOR: std::time::Duration = std::time::Duration::from_secs(60);
use super::round::{read_answer, round_on, Answer};
use super::{
    rolled_back, CommitOutcome, Coordinator, FailPoint, Gid, Notice, Participant, Phase,
    PhaseTimes, Report, TxnId,
};
use crate::admin::Stats;
use crate::backend::{BackendError, ServerConn};
use crate::error::SqlState;
use crate::protocol::{ErrorFields, Frame};
use crate::router::ShardId;

/// Marks a transaction in flight in this proxy while it lives.
struct InFlight<'a>(&'a Coordinator, TxnId);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set_in_flight(self.1, false);
    }
}

/// consistent_reads: the commit-class hold of a 2PC from its decision to
/// its last `COMMIT PREPARED`'s answer. Dropped with it still inside (the
/// commit's future was dropped: its client went away, and the session
/// drops what runs for a vanished client), it hands the hold to
/// [`Coordinator::keep_fence`], which finishes the prepared parts itself
/// (the decision was taken) or waits for recovery to (it may have been),
/// so no reader sees half of the transaction meanwhile.
struct Unfinished<'a> {
    coordinator: &'a Coordinator,
    guard: Option<FenceGuard>,
    txn: TxnId,
    decider: ShardId,
    prepared: Vec<ShardId>,
    /// C's COMMIT was answered: the transaction is committed.
    committed: bool,
}

impl Unfinished<'_> {
    /// The hold, for a caller that ends it or hands it on itself.
    fn take(&mut self) -> Option<FenceGuard> {
        self.guard.take()
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        // (No runtime: the process is going down, and its lock with it.)
        if self.guard.is_none() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        warn!(txn = %self.txn, committed = self.committed, "consistent reads: a commit was dropped in its commit phase (its client went away); its prepared parts are finished before the fence lets readers in");
        let shards = std::mem::take(&mut self.prepared);
        self.coordinator.keep_fence(
            self.guard.take(),
            self.txn,
            self.decider,
            shards,
            self.committed,
        );
    }
}

/// A commit's way into the fence while its `PREPARE`s run.
enum Entry {
    /// Waiting to enter.
    Entering,
    /// Inside.
    Held(FenceGuard),
    /// The lock shard refused the fence's lock.
    Refused(FenceError),
    /// Let go while the `PREPARE`s were slow and readers waited: entered
    /// again once they are done.
    LetGo,
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

impl Coordinator {
    pub(super) async fn two_phase(&self, parts: &mut [Participant]) -> CommitOutcome {
        let txn = TxnId::new(self.window);
        self.set_in_flight(txn, true);
        // Off however the commit ends, dropped included: recovery skips a
        // transaction in flight here, and a dropped commit's prepared
        // parts are recovery's (or `Unfinished`'s) to finish.
        let _in_flight = InFlight(self, txn);
        self.two_phase_inner(txn, parts).await
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

        // Phase 1: PREPARE the others, all at once; meanwhile (no round trip
        // of its own) enter the consistent-read fence, held from C's COMMIT
        // to the last COMMIT PREPARED's answer. With the fence, C checks its
        // deferred constraints now too (`SET CONSTRAINTS ALL IMMEDIATE`, as
        // its COMMIT would): a check that waits for a lock must not wait
        // inside the commit phase, where the fence cannot be let go.
        let mut phase = Phase::Preparing;
        let fence = self.fence.is_some();
        let prepare = round_on(parts, |p| {
            if other(p) {
                Some(format!(
                    "PREPARE TRANSACTION '{}'",
                    self.gid(txn, decider, p.shard())
                ))
            } else {
                (fence && p.shard() == decider).then(|| "SET CONSTRAINTS ALL IMMEDIATE".into())
            }
        });
        let (answers, fenced) = self.prepare_fenced(prepare).await;
        let prepared: Vec<ShardId> = answers
            .iter()
            .filter(|(s, a)| a.ok() && *s != decider)
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
        let fenced = match fenced {
            Ok(g) => g,
            Err(e) => {
                warn!(%txn, ?phase, error = %e, "consistent-read fence refused; rolling back");
                self.abort_all(txn, decider, parts, &prepared).await;
                return CommitOutcome::Aborted {
                    error: Report::Proxy {
                        sqlstate: SqlState::CONNECTION_FAILURE,
                        message: format!("transaction rolled back: {e}"),
                    },
                };
            }
        };
        self.hit(FailPoint::AfterPrepare).await;
        // The fence's lock may have been lost since it was entered (its
        // connection closed): taken again before the commit phase starts.
        if let Some(g) = &fenced {
            if let Err(e) = g.confirm().await {
                warn!(%txn, ?phase, error = %e, "consistent-read fence lost and not taken again; rolling back");
                self.abort_all(txn, decider, parts, &prepared).await;
                return CommitOutcome::Aborted {
                    error: Report::Proxy {
                        sqlstate: SqlState::CONNECTION_FAILURE,
                        message: format!("transaction rolled back: {e}"),
                    },
                };
            }
        }
        let prepared_at = Instant::now();
        // From here to the last COMMIT PREPARED's answer the fence hold
        // must outlive this future: a session drops what runs for a client
        // that went away, this commit included.
        let mut fenced = Unfinished {
            coordinator: self,
            guard: fenced,
            txn,
            decider,
            prepared: prepared.clone(),
            committed: false,
        };

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
                        let others: Vec<ShardId> = prepared.clone();
                        self.keep_fence(fenced.take(), txn, decider, others, false);
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
            drop(fenced.take());
            self.abort_all(txn, decider, parts, &prepared).await;
            return CommitOutcome::Aborted { error };
        }
        fenced.committed = true;
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
        let unfinished: Vec<ShardId> = answers
            .iter()
            .filter(|(s, a)| !a.ok() && parts.iter().any(|p| p.shard() == *s && other(p)))
            .map(|(s, _)| *s)
            .collect();
        if !unfinished.is_empty() {
            self.keep_fence(fenced.take(), txn, decider, unfinished, true);
        }
        drop(fenced.take());
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

    /// Runs phase 1 (`prepare`) and enters the fence's commit class
    /// meanwhile. The hold covers nothing yet (nothing is decided), so
    /// while the `PREPARE`s take longer than [`STALL_AFTER`] (one waits for
    /// a lock, perhaps held by a block whose next read waits in the fence
    /// for this very batch: a deadlock no server sees) and readers wait,
    /// it is let go, and taken again once every `PREPARE` answered.
    async fn prepare_fenced<F>(
        &self,
        prepare: F,
    ) -> (
        Vec<(ShardId, Answer)>,
        Result<Option<FenceGuard>, FenceError>,
    )
    where
        F: std::future::Future<Output = Vec<(ShardId, Answer)>>,
    {
        let Some(fence) = &self.fence else {
            return (prepare.await, Ok(None));
        };
        let mut prepare = std::pin::pin!(prepare);
        let mut entering = std::pin::pin!(fence.enter(Class::Commit));
        let mut entry = Entry::Entering;
        let mut look_at = tokio::time::Instant::now() + STALL_AFTER;
        let answers = loop {
            let entered = !matches!(entry, Entry::Entering);
            let holds = matches!(entry, Entry::Held(_));
            tokio::select! {
                answers = &mut prepare => break answers,
                r = &mut entering, if !entered => entry = match r {
                    Ok(g) => Entry::Held(g),
                    Err(e) => Entry::Refused(e),
                },
                _ = tokio::time::sleep_until(look_at), if holds => {
                    if matches!(&entry, Entry::Held(g) if g.others_wait()) {
                        warn!("consistent reads: a commit's PREPAREs are slow while readers wait; letting the fence go until they are done");
                        entry = Entry::LetGo;
                        break prepare.await;
                    }
                    look_at = tokio::time::Instant::now() + STALL_AFTER;
                }
            }
        };
        let fenced = match entry {
            Entry::Entering => entering.await.map(Some),
            Entry::Held(g) => Ok(Some(g)),
            Entry::Refused(e) => Err(e),
            Entry::LetGo => fence.enter(Class::Commit).await.map(Some),
        };
        (answers, fenced)
    }

    /// consistent_reads: a transaction committed (or perhaps committed) on
    /// C whose prepared parts on `shards` are not finished yet would be
    /// half visible, so its commit-class hold stays until they are: a task
    /// finishes them itself (`COMMIT PREPARED` through the control plane,
    /// every [`FINISH_EVERY`]), at most for [`FINISH_FOR`]. When the
    /// outcome is unknown (`committed` false: C's answer was lost, or the
    /// commit was dropped before it was read) the task first asks C, as
    /// recovery would (an abort row wins unless C committed): waiting for
    /// recovery's grace period instead held every reader back that long.
    fn keep_fence(
        &self,
        guard: Option<FenceGuard>,
        txn: TxnId,
        decider: ShardId,
        shards: Vec<ShardId>,
        committed: bool,
    ) {
        let Some(guard) = guard else {
            return;
        };
        let control = self.control.clone();
        let gids: Vec<(ShardId, String)> = shards
            .iter()
            .map(|s| (*s, self.gid(txn, decider, *s)))
            .collect();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut left = gids;
            let mut outcome = committed.then_some(Decision::Commit);
            while !left.is_empty() && started.elapsed() < FINISH_FOR {
                tokio::time::sleep(FINISH_EVERY).await;
                if outcome.is_none() {
                    match decision::decide(&control, txn, decider).await {
                        Ok(d) => outcome = Some(d),
                        Err(e) => {
                            warn!(%txn, shard = %decider, error = %e, "consistent reads: the outcome of a commit is still unknown")
                        }
                    }
                }
                let mut still = Vec::new();
                for (shard, gid) in left {
                    let sql = match outcome {
                        Some(Decision::Commit) => format!("COMMIT PREPARED '{gid}'"),
                        Some(Decision::Abort) => format!("ROLLBACK PREPARED '{gid}'"),
                        // Recovery may still finish it first.
                        None => format!("SELECT 1 FROM pg_prepared_xacts WHERE gid = '{gid}'"),
                    };
                    match control.query(shard, &sql).await {
                        // Finished now, or no longer prepared.
                        Ok(rows) if outcome.is_some() || rows.is_empty() => {}
                        // 42704: recovery finished it first.
                        Err(e) if e.code() == Some("42704") => {}
                        _ => still.push((shard, gid)),
                    }
                }
                left = still;
            }
            if !left.is_empty() {
                warn!(%txn, "consistent reads: prepared parts still unfinished; readers may now see part of this transaction until recovery finishes it");
            }
            drop(guard);
        });
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
