//! The decision table, `pieskieo.decisions`, on every shard: the SQL that
//! creates it, records a commit or an abort, and prunes it.
//!
//! A two-phase commit's decision is a row inserted into this table on one of
//! its writers, C, inside C's own transaction: C's `COMMIT` is the decision.
//! A resolver that finds a transaction prepared and its coordinator silent
//! inserts an `abort` row under the same key on C instead. The primary key
//! makes exactly one of the two win: an insert waits for a concurrent
//! uncommitted insert of the same key, then fails (the coordinator: its
//! transaction on C aborts) or does nothing (the resolver: it reads the
//! winner). Every key carries its deadline (see [`TxnId`]): a commit row is
//! accepted only before it, by C's clock, and an abort row is kept until
//! after it, so no coordinator can commit an id once its abort row is gone.

use super::control::{Control, ControlError};
use super::TxnId;
use crate::router::ShardId;

/// Creates the schema and table if missing. Serialized by an advisory lock
/// so that proxies starting together do not trip over each other's
/// `CREATE ... IF NOT EXISTS` (which is not safe against itself).
pub const SCHEMA_SQL: &str = "BEGIN;
SELECT pg_advisory_xact_lock(7325431190017171283);
CREATE SCHEMA IF NOT EXISTS pieskieo;
REVOKE ALL ON SCHEMA pieskieo FROM PUBLIC;
CREATE TABLE IF NOT EXISTS pieskieo.decisions (
    txn uuid PRIMARY KEY,
    outcome text NOT NULL CHECK (outcome IN ('commit', 'abort')),
    deadline timestamptz NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMIT";

/// The name client statements may not touch.
pub const SCHEMA: &str = "pieskieo";

/// How long past its deadline an abort row is kept: covers a coordinator's
/// insert that checked the deadline just before it and then stalled.
pub const ABORT_ROW_MARGIN_SECS: u64 = 60;

/// The coordinator's commit row, run inside C's transaction. Past the
/// deadline the `CASE` yields NULL and the insert fails (23502).
pub fn commit_row_sql(txn: TxnId) -> String {
    let d = txn.deadline_sql();
    format!(
        "INSERT INTO pieskieo.decisions (txn, outcome, deadline) VALUES ('{}', 'commit', CASE WHEN clock_timestamp() < {d} THEN {d} END)",
        txn.uuid()
    )
}

/// The SQLSTATE of the commit row's insert when the deadline had passed.
pub const DEADLINE_PASSED: &str = "23502";
/// ... and when a resolver's abort row was there first.
pub const ABORTED_BY_RESOLVER: &str = "23505";

/// What C says about a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Abort,
}

/// Decides `txn` on its decision shard by the one rule both sides obey:
/// insert an abort row unless a row is there (waiting for an uncommitted
/// one), then read the row that won. Safe against a live coordinator in any
/// proxy; idempotent.
pub async fn decide(
    control: &Control,
    txn: TxnId,
    decider: ShardId,
) -> Result<Decision, ControlError> {
    let sql = format!(
        "INSERT INTO pieskieo.decisions (txn, outcome, deadline) VALUES ('{u}', 'abort', {d}) ON CONFLICT (txn) DO NOTHING; SELECT outcome FROM pieskieo.decisions WHERE txn = '{u}'",
        u = txn.uuid(),
        d = txn.deadline_sql()
    );
    match control.scalar(decider, &sql).await?.as_deref() {
        Some("commit") => Ok(Decision::Commit),
        Some("abort") => Ok(Decision::Abort),
        other => Err(ControlError::Failed {
            shard: decider,
            code: None,
            message: format!("unexpected decision row for {txn}: {other:?}"),
        }),
    }
}

/// Deletes up to a batch of rows nothing can need any more: commit rows
/// decided before `mark_us` (C's clock, read before every shard was listed)
/// for transactions no shard still has prepared, and abort rows well past
/// their deadline.
pub fn prune_sql(mark_us: i64, still_prepared: &[TxnId]) -> String {
    let keep = if still_prepared.is_empty() {
        String::new()
    } else {
        let ids: Vec<String> = still_prepared
            .iter()
            .map(|t| format!("'{}'", t.uuid()))
            .collect();
        format!(" AND txn NOT IN ({})", ids.join(", "))
    };
    format!(
        "DELETE FROM pieskieo.decisions WHERE txn IN (SELECT txn FROM pieskieo.decisions WHERE ((outcome = 'commit' AND decided_at < to_timestamp({mark_us}::float8 / 1000000)) OR (outcome = 'abort' AND deadline < clock_timestamp() - interval '{ABORT_ROW_MARGIN_SECS} seconds')){keep} LIMIT {PRUNE_BATCH})"
    )
}

/// Rows deleted per statement.
const PRUNE_BATCH: usize = 1000;
