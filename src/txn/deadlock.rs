//! Deadlocks across shards. Each shard's own detector sees only its part of
//! a cycle (T1 waits for T2 on shard A, T2 for T1 on shard B: one waiter
//! each, no cycle), so the proxy finds them: when a backend has waited for a
//! lock longer than `txn.deadlock_timeout_ms`, it takes every shard's waits
//! (`pg_locks`, `pg_blocking_pids()`), maps server backends to distributed
//! transactions, finds the cycles and cancels the youngest transaction of
//! each with 40P01, as PostgreSQL does within one server.
//!
//! Which distributed transaction a backend serves must be visible to every
//! proxy over the same shards, so each participant carries a tag: at
//! enlistment, pipelined with its `BEGIN` (no extra round trip), it takes
//! `pg_advisory_xact_lock_shared(k1, k2)` with `k1`'s high 16 bits fixed to a
//! reserved value and the other 48 bits the transaction's random tag. Shared
//! advisory locks never conflict with each other, assign no transaction id,
//! and go away with the transaction. Every proxy sees the same graph and
//! picks the same victim (youngest by its first `BEGIN`, then by tag); the
//! proxy that holds the victim's connection cancels it, so the cancelled
//! statement's error is replaced by the deadlock error for its client.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::admin::Stats;
use crate::backend::{send_cancel, Backends, Endpoint, ServerConn};
use crate::config::Config;
use crate::error::SqlState;
use crate::protocol::{self, Severity};
use crate::router::ShardId;

/// The high 16 bits of the first advisory-lock key of every tag ("pi"):
/// the reserved key space. An application using two-key advisory locks with
/// a first key in `0x7069_0000..=0x7069_ffff` would share it.
const TAG_SPACE: i64 = 0x7069;

/// A distributed transaction's tag: 48 random bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(u64);

impl Tag {
    pub fn random() -> Tag {
        Tag(rand::random::<u64>() & 0xffff_ffff_ffff)
    }

    /// The two keys of the tag's advisory lock.
    fn keys(self) -> (i32, i32) {
        let k1 = ((TAG_SPACE << 16) | (self.0 >> 32) as i64) as i32;
        let k2 = (self.0 & 0xffff_ffff) as u32 as i32;
        (k1, k2)
    }
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

/// What a shard joining a block receives: its `BEGIN`, and, when deadlock
/// detection is on, the tag's lock in the same message. The newline ends a
/// `--` comment the client's `BEGIN` may carry.
pub fn begin_sql(begin: &str, tag: Tag, detecting: bool) -> String {
    if !detecting {
        return begin.to_string();
    }
    let mut sql = String::with_capacity(begin.len() + TAG_SQL_MAX);
    sql.push_str(begin);
    sql.push_str("\n;");
    push_tag_sql(&mut sql, tag);
    sql
}

/// The query that tags a shard's transaction for the detector (a shared
/// advisory lock held to the end of the transaction).
pub fn tag_sql(tag: Tag) -> String {
    let mut sql = String::with_capacity(TAG_SQL_MAX);
    push_tag_sql(&mut sql, tag);
    sql
}

/// The tag taken by the server session before the shard's `BEGIN`, so
/// that nothing runs inside the transaction before the client's statement:
/// a REPEATABLE READ or SERIALIZABLE block whose shard joins with a `LOCK`
/// takes its snapshot at the first query after the lock, as in PostgreSQL
/// (the transaction's own tag, a `SELECT`, would take it before the lock
/// waits). Shared advisory locks held by a session show in `pg_locks` as
/// the transaction's do. The connection gives it back
/// ([`session_untag_sql`]) before it is used again.
///
/// Run outside the client's transaction, the `SELECT` is a transaction of
/// its own, at the session's default level: READ COMMITTED, named, so that
/// a session whose defaults are SERIALIZABLE, READ ONLY and DEFERRABLE does
/// not wait there for a safe snapshot where PostgreSQL's `SHOW` or `LOCK`
/// takes none.
pub fn session_tag_sql(tag: Tag) -> String {
    read_committed_call("pg_advisory_lock_shared", tag)
}

/// Gives back the session's [`session_tag_sql`] (read committed, as it:
/// at the next checkout, under the client's defaults).
pub fn session_untag_sql(tag: Tag) -> String {
    read_committed_call("pg_advisory_unlock_shared", tag)
}

/// `function(k1, k2)` of the tag in a READ COMMITTED transaction of its own.
fn read_committed_call(function: &str, tag: Tag) -> String {
    const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED; ";
    const COMMIT: &str = "; COMMIT";
    let mut sql = String::with_capacity(BEGIN.len() + TAG_SQL_MAX + COMMIT.len());
    sql.push_str(BEGIN);
    push_call(&mut sql, function, tag);
    sql.push_str(COMMIT);
    sql
}

/// The longest [`tag_sql`].
const TAG_SQL_MAX: usize = 64;

/// Appends [`tag_sql`] to `sql`, without the formatter (this runs for every
/// shard joining a block).
fn push_tag_sql(sql: &mut String, tag: Tag) {
    push_call(sql, "pg_advisory_xact_lock_shared", tag);
}

/// Appends `SELECT function(k1, k2)` of the tag's keys to `sql`.
fn push_call(sql: &mut String, function: &str, tag: Tag) {
    fn push_int(sql: &mut String, n: i32) {
        if n < 0 {
            sql.push('-');
        }
        let mut digits = [0u8; 10];
        let mut v = n.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        // ASCII digits: pushed as one str, not char by char (each char
        // pushed is encoded as UTF-8 on its own).
        sql.push_str(std::str::from_utf8(&digits[i..]).unwrap_or_default());
    }
    let (k1, k2) = tag.keys();
    sql.push_str("SELECT ");
    sql.push_str(function);
    sql.push('(');
    push_int(sql, k1);
    sql.push_str(", ");
    push_int(sql, k2);
    sql.push(')');
}

/// Every lock wait on a shard: waiter, blocker, their tags (if they serve a
/// distributed transaction), how long the waiter has waited, and when each
/// one's transaction began (microseconds since the epoch).
const WAITS_SQL: &str = "WITH tags AS (
    SELECT pid, ((classid::int8 & 65535) << 32) | objid::int8 AS tag
    FROM pg_locks
    WHERE locktype = 'advisory' AND objsubid = 2 AND granted
      AND classid::int8 >> 16 = 28777
), waits AS (
    SELECT pid, min(coalesce(waitstart, clock_timestamp())) AS since
    FROM pg_locks WHERE NOT granted AND pid IS NOT NULL GROUP BY pid
)
SELECT w.pid, wt.tag, (extract(epoch FROM clock_timestamp() - w.since) * 1000)::int8,
       b.pid, bt.tag,
       (extract(epoch FROM wa.xact_start) * 1000000)::int8,
       (extract(epoch FROM ba.xact_start) * 1000000)::int8
FROM waits w
CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS b(pid)
LEFT JOIN tags wt ON wt.pid = w.pid
LEFT JOIN tags bt ON bt.pid = b.pid
LEFT JOIN pg_stat_activity wa ON wa.pid = w.pid
LEFT JOIN pg_stat_activity ba ON ba.pid = b.pid";

/// A vertex of the wait-for graph: a distributed transaction, or a backend
/// that serves none (it has only the shard it is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Txn(Tag),
    Local(ShardId, i32),
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Txn(t) => write!(f, "distributed transaction {t}"),
            Node::Local(s, pid) => write!(f, "process {pid} on shard {s}"),
        }
    }
}

/// One waits-for edge on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub shard: ShardId,
    pub waiter: Node,
    pub waiter_pid: i32,
    pub blocker: Node,
    pub blocker_pid: i32,
    pub waited_ms: i64,
}

/// A cycle to break: its edges in order, and the transaction to cancel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlock {
    pub cycle: Vec<Wait>,
    pub victim: Tag,
}

impl Deadlock {
    /// PostgreSQL's shape: "deadlock detected", one detail line per wait.
    pub fn error(&self) -> bytes::Bytes {
        let detail: Vec<String> = self
            .cycle
            .iter()
            .map(|w| {
                format!(
                    "{} (process {} on shard {}) waits for {} (process {}).",
                    capitalized(&w.waiter.to_string()),
                    w.waiter_pid,
                    w.shard,
                    w.blocker,
                    w.blocker_pid
                )
            })
            .collect();
        protocol::error_response(
            Severity::Error,
            SqlState::DEADLOCK_DETECTED,
            "deadlock detected",
            Some(&detail.join("\n")),
        )
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The cycles in `waits` that some member has waited in for at least
/// `threshold_ms`, each with its victim: the youngest distributed
/// transaction in it (latest first `BEGIN` in `started`, then highest tag).
/// The victim leaves the graph and the search goes on, so every cycle that
/// does not run through an earlier victim is found. Cycles of local backends
/// only are left to the shard's own detector.
pub fn find_deadlocks(
    waits: &[Wait],
    started: &HashMap<Tag, i64>,
    threshold_ms: i64,
) -> Vec<Deadlock> {
    let mut removed: HashSet<Node> = HashSet::new();
    let mut out = Vec::new();
    while let Some(cycle) = find_cycle(waits, &removed) {
        let victim = cycle
            .iter()
            .filter_map(|&i| match waits[i].waiter {
                Node::Txn(t) => Some(t),
                Node::Local(..) => None,
            })
            .max_by_key(|t| (started.get(t).copied().unwrap_or(i64::MAX), *t));
        let long = cycle.iter().any(|&i| waits[i].waited_ms >= threshold_ms);
        match victim {
            Some(v) => {
                removed.insert(Node::Txn(v));
                if long {
                    out.push(Deadlock {
                        cycle: cycle.iter().map(|&i| waits[i].clone()).collect(),
                        victim: v,
                    });
                }
            }
            None => {
                removed.insert(waits[cycle[0]].waiter);
            }
        }
    }
    out
}

/// One cycle of the graph without `removed`, as edge indexes, if any.
fn find_cycle(waits: &[Wait], removed: &HashSet<Node>) -> Option<Vec<usize>> {
    let mut out: HashMap<Node, Vec<usize>> = HashMap::new();
    for (i, w) in waits.iter().enumerate() {
        if w.waiter != w.blocker && !removed.contains(&w.waiter) && !removed.contains(&w.blocker) {
            out.entry(w.waiter).or_default().push(i);
        }
    }
    let mut nodes: Vec<Node> = out.keys().copied().collect();
    nodes.sort();
    // Iterative depth-first search; `path` holds the edges taken.
    let mut done: HashSet<Node> = HashSet::new();
    for start in nodes {
        if done.contains(&start) {
            continue;
        }
        let mut on_path: HashMap<Node, usize> = HashMap::new();
        let mut path: Vec<usize> = Vec::new();
        let mut stack: Vec<(Node, usize)> = vec![(start, 0)];
        on_path.insert(start, 0);
        while let Some((node, next)) = stack.last_mut() {
            let edges = out.get(node).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(&e) = edges.get(*next) {
                *next += 1;
                let to = waits[e].blocker;
                if let Some(&depth) = on_path.get(&to) {
                    let mut cycle = path[depth..].to_vec();
                    cycle.push(e);
                    return Some(cycle);
                }
                if !done.contains(&to) {
                    path.push(e);
                    on_path.insert(to, path.len());
                    stack.push((to, 0));
                }
            } else {
                let node = *node;
                stack.pop();
                on_path.remove(&node);
                done.insert(node);
                path.pop();
            }
        }
    }
    None
}

/// The background task: one control connection per shard, polled every half
/// threshold.
pub struct Detector {
    /// Indexed by shard id.
    shards: Vec<Arc<Endpoint>>,
    control: Vec<Option<ServerConn>>,
    backends: Arc<Backends>,
    stats: Arc<Stats>,
    threshold: Duration,
    connect_timeout: Duration,
    /// Backends cancelled lately: not cancelled again while the cancel lands.
    cancelled: HashMap<(ShardId, i32), Instant>,
    /// Per shard, a poll still under way (a shard slow to answer).
    polling: Vec<Option<tokio::task::JoinHandle<Polled>>>,
}

/// What polling a shard gives back: the control connection, if still good,
/// and the raw rows of [`WAITS_SQL`].
type Polled = (Option<ServerConn>, Vec<Vec<Option<bytes::Bytes>>>);

impl Detector {
    /// `None` when `txn.deadlock_timeout_ms` is 0 (off).
    pub fn new(
        cfg: &Config,
        endpoints: &[Arc<Endpoint>],
        backends: Arc<Backends>,
        stats: Arc<Stats>,
    ) -> Option<Detector> {
        if cfg.txn.deadlock_timeout_ms == 0 {
            return None;
        }
        let shards = endpoints.to_vec();
        Some(Detector {
            control: shards.iter().map(|_| None).collect(),
            polling: shards.iter().map(|_| None).collect(),
            shards,
            backends,
            stats,
            threshold: Duration::from_millis(cfg.txn.deadlock_timeout_ms),
            connect_timeout: Duration::from_millis(cfg.limits.connect_timeout_ms),
            cancelled: HashMap::new(),
        })
    }

    pub fn spawn(mut self) -> tokio::task::JoinHandle<()> {
        let tick = (self.threshold / 2).max(Duration::from_millis(20));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                self.pass().await;
            }
        })
    }

    /// Every shard's waits, asked of all shards at once. A shard that
    /// cannot answer within the pass is skipped this time (a cycle through it
    /// is found once it answers); its poll goes on, and what it brings back
    /// late is too old to use, but its connection is kept.
    // The index walks four parallel vectors while `self` is borrowed mutably.
    #[allow(clippy::needless_range_loop)]
    async fn collect(&mut self) -> (Vec<Wait>, HashMap<Tag, i64>) {
        let answer_timeout = self.threshold.max(Duration::from_secs(2));
        let deadline =
            tokio::time::Instant::now() + (self.threshold / 2).max(Duration::from_millis(500));
        let mut fresh = vec![false; self.shards.len()];
        for i in 0..self.shards.len() {
            if self.polling[i].is_none() {
                let shard = self.shards[i].clone();
                let (conn, connect) = (self.control[i].take(), self.connect_timeout);
                self.polling[i] = Some(tokio::spawn(async move {
                    poll_shard(shard, conn, connect, answer_timeout).await
                }));
                fresh[i] = true;
            }
        }
        let mut answers = Vec::new();
        for i in 0..self.shards.len() {
            let Some(task) = self.polling[i].as_mut() else {
                continue;
            };
            let Ok(done) = tokio::time::timeout_at(deadline, task).await else {
                continue;
            };
            self.polling[i] = None;
            if let Ok((conn, rows)) = done {
                self.control[i] = conn;
                if fresh[i] {
                    answers.push((i, rows));
                }
            }
        }
        let mut waits = Vec::new();
        let mut started: HashMap<Tag, i64> = HashMap::new();
        for (i, rows) in answers {
            let id = self.shards[i].shard;
            for row in rows {
                let num = |j: usize| -> Option<i64> {
                    let b = row.get(j)?.as_ref()?;
                    std::str::from_utf8(b).ok()?.parse().ok()
                };
                let (Some(wpid), Some(bpid)) = (num(0), num(3)) else {
                    continue;
                };
                let (wpid, bpid) = (wpid as i32, bpid as i32);
                let node = |tag: Option<i64>, pid: i32| match tag {
                    Some(t) => Node::Txn(Tag(t as u64)),
                    None => Node::Local(id, pid),
                };
                let waiter = node(num(1), wpid);
                let blocker = node(num(4), bpid);
                for (n, at) in [(waiter, num(5)), (blocker, num(6))] {
                    if let (Node::Txn(t), Some(at)) = (n, at) {
                        let e = started.entry(t).or_insert(at);
                        *e = (*e).min(at);
                    }
                }
                waits.push(Wait {
                    shard: id,
                    waiter,
                    waiter_pid: wpid,
                    blocker,
                    blocker_pid: bpid,
                    waited_ms: num(2).unwrap_or(0),
                });
            }
        }
        (waits, started)
    }

    async fn pass(&mut self) {
        let (waits, started) = self.collect().await;
        let threshold_ms = self.threshold.as_millis() as i64;
        if !waits.iter().any(|w| w.waited_ms >= threshold_ms) {
            return;
        }
        let quiet = self.threshold * 3;
        self.cancelled.retain(|_, at| at.elapsed() < quiet);
        for d in find_deadlocks(&waits, &started, threshold_ms) {
            // Every waiting backend of the victim, in the cycle or not (its
            // transaction fails anyway; a wait elsewhere would hold up its
            // client's answer); ours only: the proxy holding the others
            // makes the same choice and acts.
            let mut acted = false;
            for w in waits.iter().filter(|w| w.waiter == Node::Txn(d.victim)) {
                let Some(ours) = self.backends.ours(w.shard, w.waiter_pid) else {
                    continue;
                };
                acted = true;
                if self.cancelled.contains_key(&(w.shard, w.waiter_pid)) {
                    continue;
                }
                if let Ok(mut v) = ours.verdict.lock() {
                    *v = Some(d.error());
                }
                self.cancelled
                    .insert((w.shard, w.waiter_pid), Instant::now());
                let (endpoint, pid, key) = (ours.endpoint.clone(), w.waiter_pid, ours.secret_key);
                tokio::spawn(async move {
                    if let Err(e) = send_cancel(&endpoint, pid, key).await {
                        warn!(addr = %endpoint, error = %e, "cannot cancel a deadlock victim");
                    }
                });
            }
            if acted {
                Stats::bump(&self.stats.deadlocks, 1);
                let cycle: Vec<String> = d
                    .cycle
                    .iter()
                    .map(|w| format!("{} waits on shard {} for {}", w.waiter, w.shard, w.blocker))
                    .collect();
                warn!(victim = %d.victim, cycle = %cycle.join("; "), "distributed deadlock: cancelling the youngest transaction");
            }
        }
    }
}

/// One shard's lock waits (raw rows of [`WAITS_SQL`]), over `conn` or a new
/// control connection; gives back the connection if it is still good.
async fn poll_shard(
    shard: Arc<Endpoint>,
    conn: Option<ServerConn>,
    connect_timeout: Duration,
    answer_timeout: Duration,
) -> (Option<ServerConn>, Vec<Vec<Option<bytes::Bytes>>>) {
    let id = shard.shard;
    let mut conn = match conn {
        Some(c) => c,
        None => match ServerConn::connect(&shard, connect_timeout).await {
            Ok(mut c) => {
                c.answer_timeout = Some(answer_timeout);
                c
            }
            Err(e) => {
                debug!(shard = %id, error = %e, "deadlock detector cannot reach shard");
                return (None, Vec::new());
            }
        },
    };
    match conn.simple(WAITS_SQL).await {
        Ok(Ok(frames)) => (Some(conn), ServerConn::text_values(&frames)),
        Ok(Err(e)) => {
            warn!(shard = %id, error = %e, "deadlock detector query failed");
            (Some(conn), Vec::new())
        }
        Err(e) => {
            debug!(shard = %id, error = %e, "deadlock detector lost its connection");
            (None, Vec::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(shard: u32, from: Node, to: Node, ms: i64) -> Wait {
        let pid = |n: Node| match n {
            Node::Txn(t) => t.0 as i32 * 10 + shard as i32,
            Node::Local(_, p) => p,
        };
        Wait {
            shard: ShardId(shard),
            waiter: from,
            waiter_pid: pid(from),
            blocker: to,
            blocker_pid: pid(to),
            waited_ms: ms,
        }
    }

    fn t(n: u64) -> Node {
        Node::Txn(Tag(n))
    }

    fn starts(v: &[(u64, i64)]) -> HashMap<Tag, i64> {
        v.iter().map(|(t, s)| (Tag(*t), *s)).collect()
    }

    #[test]
    fn the_tag_query_spells_both_keys_as_the_formatter_would() {
        for t in [
            0,
            1,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff_ffff,
            0x1234_5678_9abc,
        ] {
            let tag = Tag(t);
            let (k1, k2) = tag.keys();
            let sql = tag_sql(tag);
            assert_eq!(
                sql,
                format!("SELECT pg_advisory_xact_lock_shared({k1}, {k2})")
            );
            assert!(sql.len() <= TAG_SQL_MAX);
            assert_eq!(begin_sql("BEGIN", tag, true), format!("BEGIN\n;{sql}"));
            assert_eq!(
                session_tag_sql(tag),
                format!("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_lock_shared({k1}, {k2}); COMMIT")
            );
            assert_eq!(
                session_untag_sql(tag),
                format!("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_unlock_shared({k1}, {k2}); COMMIT")
            );
        }
        assert_eq!(begin_sql("BEGIN", Tag(5), false), "BEGIN");
    }

    #[test]
    fn the_youngest_of_a_two_shard_cycle_is_the_victim() {
        let waits = [wait(0, t(1), t(2), 1500), wait(1, t(2), t(1), 900)];
        let d = find_deadlocks(&waits, &starts(&[(1, 100), (2, 200)]), 1000);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].victim, Tag(2));
        assert_eq!(d[0].cycle.len(), 2);
        // Not yet long enough: nothing.
        assert!(find_deadlocks(&waits, &starts(&[(1, 100), (2, 200)]), 2000).is_empty());
    }

    #[test]
    fn three_way_cycles_chains_and_local_cycles() {
        let three = [
            wait(0, t(1), t(2), 1200),
            wait(1, t(2), t(3), 1100),
            wait(2, t(3), t(1), 1000),
        ];
        let d = find_deadlocks(&three, &starts(&[(1, 1), (2, 3), (3, 2)]), 1000);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].victim, Tag(2));
        // A chain is no cycle.
        let chain = [wait(0, t(1), t(2), 5000), wait(1, t(2), t(3), 5000)];
        assert!(find_deadlocks(&chain, &starts(&[]), 1000).is_empty());
        // A cycle through a backend that serves no distributed transaction.
        let l = Node::Local(ShardId(0), 77);
        let via = [
            wait(0, t(1), l, 3000),
            wait(0, l, t(2), 3000),
            wait(1, t(2), t(1), 3000),
        ];
        let d = find_deadlocks(&via, &starts(&[(1, 5), (2, 1)]), 1000);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].victim, Tag(1));
        // Local backends only: the shard's own detector's business.
        let m = Node::Local(ShardId(0), 78);
        assert!(find_deadlocks(
            &[wait(0, l, m, 3000), wait(0, m, l, 3000)],
            &starts(&[]),
            1000
        )
        .is_empty());
    }

    #[test]
    fn two_disjoint_cycles_lose_one_transaction_each() {
        let waits = [
            wait(0, t(1), t(2), 2000),
            wait(1, t(2), t(1), 2000),
            wait(0, t(3), t(4), 2000),
            wait(1, t(4), t(3), 2000),
        ];
        let s = starts(&[(1, 1), (2, 2), (3, 3), (4, 4)]);
        let mut victims: Vec<Tag> = find_deadlocks(&waits, &s, 1000)
            .into_iter()
            .map(|d| d.victim)
            .collect();
        victims.sort();
        assert_eq!(victims, vec![Tag(2), Tag(4)]);
    }

    #[test]
    fn tags_fill_the_reserved_key_space_and_read_back() {
        let tag = Tag(0xabcd_1234_5678);
        let (k1, k2) = tag.keys();
        assert_eq!((k1 as u32) >> 16, 0x7069);
        // As pg_locks shows them: classid = k1, objid = k2 (as oids).
        let back = (((k1 as u32 as u64) & 0xffff) << 32) | k2 as u32 as u64;
        assert_eq!(back, tag.0);
        assert!(begin_sql("BEGIN -- x", tag, true).starts_with("BEGIN -- x\n;SELECT"));
        assert_eq!(begin_sql("BEGIN", tag, false), "BEGIN");
    }
}
