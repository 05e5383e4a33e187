//! The transaction coordinator: one-phase commit when one shard wrote,
//! parallel two-phase commit with a durable decision when several did, and
//! the recovery of in-doubt transactions.

pub mod deadlock;
mod log;
pub(crate) use log::parse_records;
mod recovery;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use tracing::{info, warn};

pub use log::{DecisionLog, LogError, TxnId};
pub use recovery::{Resolver, StartupError};

use crate::admin::Stats;
use crate::backend::{BackendError, PooledConn, ServerConn};
use crate::error::SqlState;
use crate::protocol::{self, ErrorFields, Frame, Severity};
use crate::router::ShardId;

/// The phases of a two-phase commit, and what recovery does if the proxy
/// dies in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `PREPARE TRANSACTION` sent, no decision logged. Recovery: presumed
    /// abort — `ROLLBACK PREPARED` whatever was prepared.
    Preparing,
    /// The commit decision is durable. Recovery: `COMMIT PREPARED` on every
    /// participant still holding the transaction. Terminal for the outcome.
    Committing,
    /// Every participant committed; the completion record is written.
    /// Recovery: nothing to do. Terminal.
    Done,
}

/// A shard enlisted in a client's transaction.
pub struct Participant {
    pub conn: PooledConn,
    /// Anything but a plain read ran here.
    pub wrote: bool,
}

impl Participant {
    pub fn shard(&self) -> ShardId {
        self.conn.shard
    }
}

/// How a commit ended.
pub enum CommitOutcome {
    /// Committed. `warnings` are NoticeResponses for the client (a shard that
    /// could not be told yet; the resolver finishes it).
    Committed { warnings: Vec<Bytes> },
    /// Rolled back everywhere; `error` is the ErrorResponse for the client.
    Aborted { error: Bytes },
}

/// Where a test may make the coordinator crash or stall. Armed only by the
/// test-only setting `txn.test_failpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// After every PREPARE succeeded, before the decision is logged.
    AfterPrepare,
    /// After the decision is durable, before any COMMIT PREPARED.
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
    pub log: DecisionLog,
    node: String,
    next: AtomicU64,
    in_flight: Mutex<HashSet<TxnId>>,
    failpoint: Option<(FailPoint, FailAction)>,
    /// Phase timings of two-phase commits, kept only when a benchmark asks.
    timings: Mutex<Option<Vec<PhaseTimes>>>,
    pub stats: std::sync::Arc<Stats>,
}

/// How long the phases of one two-phase commit took.
#[derive(Debug, Clone, Copy)]
pub struct PhaseTimes {
    /// PREPARE on every writer (and COMMIT on readers).
    pub prepare: std::time::Duration,
    /// The durable write of the decision.
    pub decision: std::time::Duration,
    /// COMMIT PREPARED on every writer.
    pub commit: std::time::Duration,
}

/// Every gid starts with this, then the node id.
pub const GID_PREFIX: &str = "pieskieo";

pub fn gid(node: &str, txn: TxnId, shard: ShardId) -> String {
    format!(
        "{GID_PREFIX}_{node}_{}_{}_{}",
        txn.epoch, txn.number, shard.0
    )
}

/// The transaction and shard of one of `node`'s gids.
pub fn parse_gid(node: &str, gid: &str) -> Option<(TxnId, ShardId)> {
    let rest = gid
        .strip_prefix(GID_PREFIX)?
        .strip_prefix('_')?
        .strip_prefix(node)?
        .strip_prefix('_')?;
    let mut it = rest.split('_');
    let epoch = it.next()?.parse().ok()?;
    let number = it.next()?.parse().ok()?;
    let shard = it.next()?.parse().ok()?;
    it.next()
        .is_none()
        .then_some((TxnId { epoch, number }, ShardId(shard)))
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

    fn error_bytes(&self) -> Option<Bytes> {
        match self {
            Answer::Ok => None,
            Answer::Error(f) => Some(f.bytes.clone()),
            Answer::Lost(e) => Some(protocol::error_response(
                Severity::Error,
                e.sqlstate(),
                &e.to_string(),
                None,
            )),
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
            Ok(()) => match crate::executor::drain(c).await {
                Ok(None) => Answer::Ok,
                Ok(Some(f)) => Answer::Error(f),
                Err(e) => Answer::Lost(e),
            },
        });
    }
    for c in conns.iter_mut() {
        if c.status != b'I' {
            c.mark_broken();
        }
    }
    out
}

impl Coordinator {
    pub fn new(
        log: DecisionLog,
        node: &str,
        failpoint: Option<(FailPoint, FailAction)>,
        stats: std::sync::Arc<Stats>,
    ) -> Coordinator {
        Coordinator {
            log,
            node: node.to_string(),
            next: AtomicU64::new(1),
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
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            _ => {}
        }
    }

    /// Rolls every participant back, in parallel.
    pub async fn rollback(&self, parts: &mut [Participant]) {
        let mut conns: Vec<&mut ServerConn> = parts.iter_mut().map(|p| &mut *p.conn).collect();
        let sqls = vec!["ROLLBACK".to_string(); conns.len()];
        round(&mut conns, &sqls).await;
        Stats::bump(&self.stats.aborts, 1);
    }

    fn count_participants(&self, parts: &[Participant]) {
        for p in parts {
            if let Some(s) = self.stats.shards.get(p.shard().0 as usize) {
                Stats::bump(&s.transactions, 1);
            }
        }
    }

    /// Commits a client's transaction over its participants.
    pub async fn commit(&self, parts: &mut [Participant]) -> CommitOutcome {
        let writers = parts.iter().filter(|p| p.wrote).count();
        let started = std::time::Instant::now();
        if writers <= 1 {
            // Readers first, then the one writer: no PREPARE, no log record.
            parts.sort_by_key(|p| p.wrote);
            let mut readers: Vec<&mut ServerConn> = parts
                .iter_mut()
                .filter(|p| !p.wrote)
                .map(|p| &mut *p.conn)
                .collect();
            let sqls = vec!["COMMIT".to_string(); readers.len()];
            round(&mut readers, &sqls).await;
            if let Some(w) = parts.iter_mut().find(|p| p.wrote) {
                let mut one = [&mut *w.conn];
                let answer = round(&mut one, &["COMMIT".to_string()])
                    .await
                    .into_iter()
                    .next()
                    .map(|a| match a {
                        // No answer to the COMMIT: it may have committed.
                        Answer::Lost(e) => Answer::Lost(e.unanswered_commit()),
                        a => a,
                    });
                if let Some(error) = answer.as_ref().and_then(Answer::error_bytes) {
                    Stats::bump(&self.stats.aborts, 1);
                    return CommitOutcome::Aborted { error };
                }
            }
            Stats::bump(&self.stats.commits_one_phase, 1);
            self.count_participants(parts);
            self.stats.one_phase_commit.observe(started.elapsed());
            return CommitOutcome::Committed {
                warnings: Vec::new(),
            };
        }
        let outcome = self.two_phase(parts).await;
        match &outcome {
            CommitOutcome::Committed { .. } => {
                Stats::bump(&self.stats.commits_two_phase, 1);
                self.count_participants(parts);
            }
            CommitOutcome::Aborted { .. } => Stats::bump(&self.stats.aborts, 1),
        }
        outcome
    }

    async fn two_phase(&self, parts: &mut [Participant]) -> CommitOutcome {
        let txn = TxnId {
            epoch: self.log.epoch(),
            number: self.next.fetch_add(1, Ordering::Relaxed),
        };
        self.set_in_flight(txn, true);
        let outcome = self.two_phase_inner(txn, parts).await;
        self.set_in_flight(txn, false);
        outcome
    }

    async fn two_phase_inner(&self, txn: TxnId, parts: &mut [Participant]) -> CommitOutcome {
        let started = std::time::Instant::now();
        // Phase 1: readers COMMIT and writers PREPARE, all at once.
        let sqls: Vec<String> = parts
            .iter()
            .map(|p| {
                if p.wrote {
                    format!("PREPARE TRANSACTION '{}'", gid(&self.node, txn, p.shard()))
                } else {
                    "COMMIT".into()
                }
            })
            .collect();
        let answers = {
            let mut conns: Vec<&mut ServerConn> = parts.iter_mut().map(|p| &mut *p.conn).collect();
            round(&mut conns, &sqls).await
        };
        let mut phase = Phase::Preparing;
        let failed = parts.iter().zip(&answers).find(|(p, a)| p.wrote && !a.ok());
        if let Some((p, a)) = failed {
            let error = a.error_bytes().unwrap_or_default();
            warn!(shard = %p.shard(), txn = ?txn, ?phase, error = %a.describe(), "PREPARE failed; rolling back");
            self.abort_prepared(txn, parts, &answers).await;
            return CommitOutcome::Aborted { error };
        }
        self.hit(FailPoint::AfterPrepare).await;
        let prepared_at = std::time::Instant::now();

        let writers: Vec<ShardId> = parts
            .iter()
            .filter(|p| p.wrote)
            .map(|p| p.shard())
            .collect();
        if let Err(e) = self.log.commit(txn, &writers).await {
            warn!(txn = ?txn, ?phase, error = %e, "cannot make the commit decision durable; rolling back");
            self.abort_prepared(txn, parts, &answers).await;
            let error = protocol::error_response(
                Severity::Error,
                SqlState::INTERNAL_ERROR,
                &format!("transaction rolled back: the decision log could not be written: {e}"),
                None,
            );
            return CommitOutcome::Aborted { error };
        }
        phase = Phase::Committing;
        let decided_at = std::time::Instant::now();
        self.hit(FailPoint::AfterDecision).await;

        // Phase 2: COMMIT PREPARED everywhere at once.
        let mut writer_parts: Vec<&mut Participant> =
            parts.iter_mut().filter(|p| p.wrote).collect();
        let mut answers = Vec::new();
        if matches!(self.failpoint, Some((FailPoint::AfterFirstCommit, _))) {
            if let Some((first, rest)) = writer_parts.split_first_mut() {
                let sql = format!("COMMIT PREPARED '{}'", gid(&self.node, txn, first.shard()));
                answers.extend(round(&mut [&mut *first.conn], &[sql]).await);
                self.hit(FailPoint::AfterFirstCommit).await;
                let sqls: Vec<String> = rest
                    .iter()
                    .map(|p| format!("COMMIT PREPARED '{}'", gid(&self.node, txn, p.shard())))
                    .collect();
                let mut conns: Vec<&mut ServerConn> =
                    rest.iter_mut().map(|p| &mut *p.conn).collect();
                answers.extend(round(&mut conns, &sqls).await);
            }
        } else {
            let sqls: Vec<String> = writer_parts
                .iter()
                .map(|p| format!("COMMIT PREPARED '{}'", gid(&self.node, txn, p.shard())))
                .collect();
            let mut conns: Vec<&mut ServerConn> =
                writer_parts.iter_mut().map(|p| &mut *p.conn).collect();
            answers = round(&mut conns, &sqls).await;
        }
        let mut warnings = Vec::new();
        for (p, a) in writer_parts.iter().zip(&answers) {
            if !a.ok() {
                warn!(shard = %p.shard(), txn = ?txn, ?phase, error = %a.describe(), "COMMIT PREPARED failed; the resolver will finish it");
                warnings.push(protocol::error_response(
                    Severity::Warning,
                    SqlState::WARNING,
                    &format!(
                        "transaction committed, but shard {} has not confirmed yet ({}); it will be finished automatically",
                        p.shard(),
                        a.describe()
                    ),
                    None,
                ));
            }
        }
        Stats::bump(
            &self.stats.two_phase_micros,
            started.elapsed().as_micros() as u64,
        );
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
            let _ = self.log.done(txn).await;
            phase = Phase::Done;
        }
        info!(txn = ?txn, shards = writers.len(), ?phase, "two-phase commit");
        CommitOutcome::Committed { warnings }
    }

    /// Presumed abort, done eagerly: `ROLLBACK PREPARED` where PREPARE
    /// succeeded, `ROLLBACK` where it did not.
    async fn abort_prepared(&self, txn: TxnId, parts: &mut [Participant], answers: &[Answer]) {
        let mut conns = Vec::new();
        let mut sqls = Vec::new();
        for (p, a) in parts.iter_mut().zip(answers) {
            if !p.wrote {
                continue;
            }
            let sql = if a.ok() {
                format!("ROLLBACK PREPARED '{}'", gid(&self.node, txn, p.shard()))
            } else {
                "ROLLBACK".to_string()
            };
            if matches!(a, Answer::Lost(_)) {
                // The connection is gone; the server rolled back (or the
                // resolver will, for a prepared one).
                continue;
            }
            sqls.push(sql);
            conns.push(&mut *p.conn);
        }
        round(&mut conns, &sqls).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_round_trip_and_stay_ours() {
        let t = TxnId {
            epoch: 3,
            number: 77,
        };
        let g = gid("node_1", t, ShardId(2));
        assert_eq!(g, "pieskieo_node_1_3_77_2");
        assert_eq!(parse_gid("node_1", &g), Some((t, ShardId(2))));
        assert_eq!(parse_gid("node", &g), None);
        assert_eq!(parse_gid("node_1", "other_node_1_3_77_2"), None);
    }

    #[test]
    fn failpoints_parse() {
        assert_eq!(
            parse_failpoint("after_decision:crash"),
            Some((FailPoint::AfterDecision, FailAction::Crash))
        );
        assert_eq!(
            parse_failpoint("after_prepare:pause=150"),
            Some((FailPoint::AfterPrepare, FailAction::Pause(150)))
        );
        assert_eq!(parse_failpoint("nowhere:crash"), None);
    }
}
