//! Readers that stall the fence. A multi-shard statement holds the
//! snapshot class from sending until each shard's first answer; a shard
//! that waits for a lock sends nothing, so if the lock's holder is a
//! distributed transaction whose commit waits for the fence, nobody moves —
//! and every commit and multi-shard read of the cluster waits with it. No
//! server's deadlock detector sees the fence.
//!
//! So a batch of readers the fence holds longer than [`STALL_AFTER`] while
//! commits wait is looked at (`pg_locks` on the shards not yet answered):
//! - a shard waiting for a row lock (`transactionid`, `tuple`) has taken
//!   its snapshot — PostgreSQL locks rows only while executing, after
//!   `PortalStart` took the snapshot — so it no longer needs the fence; a
//!   statement whose every shard answered or waits so lets go;
//! - a shard waiting for any other lock (a relation lock behind an
//!   uncommitted `ALTER`, taken at parse analysis, before the snapshot) may
//!   not take its snapshot yet: once the statement has held the fence so for
//!   the deadlock timeout, it is cancelled with `40P01`, as a deadlock victim;
//!   so is one waiting for a safe snapshot (`SERIALIZABLE READ ONLY
//!   DEFERRABLE`: for the serializable writers running there to finish);
//! - a shard that answers neither the statement nor the look is fenced out
//!   after the deadlock timeout (see [`unstall`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::warn;

use super::{FenceGuard, Inner};
use crate::backend::{send_cancel, Endpoint, Verdict};
use crate::error::SqlState;
use crate::protocol::{self, Severity};
use crate::router::ShardId;

/// How long a commit waits behind readers before the fence asks why: a
/// batch of readers normally lasts about one round trip.
pub const STALL_AFTER: Duration = Duration::from_millis(100);

/// A statement's hold on the snapshot class, shared by its shards'
/// connections (each through a [`Share`]). The hold goes when the last
/// share and the statement let go of it, or earlier when the watcher saw
/// every shard still owing an answer wait for a row lock.
pub struct Reading {
    guard: Mutex<Option<FenceGuard>>,
    parts: Mutex<Vec<Part>>,
    next: AtomicU64,
    since: Instant,
    cancelled: AtomicBool,
    /// The statement may take snapshots while it runs (a function the
    /// classifier does not know, or nobody said): a row-lock wait proves
    /// nothing. Cleared by [`Reading::single_snapshot`].
    resnapshots: AtomicBool,
}

/// A shard of a reading that has not answered yet.
#[derive(Clone)]
pub struct Part {
    id: u64,
    pub shard: ShardId,
    /// The server backend and how to cancel it, with the error its client
    /// gets instead of the cancel's.
    pub pid: i32,
    pub secret_key: i32,
    pub endpoint: Arc<Endpoint>,
    pub verdict: Verdict,
    /// Set to refuse what the connection reads from now on (see
    /// [`unstall`]: a shard that answers nobody).
    fenced_out: Arc<AtomicBool>,
    /// Seen waiting for a row lock: it has its snapshot. Or fenced out:
    /// nothing it answers is used.
    taken: bool,
}

/// One connection's part of a reading: dropped at the shard's first
/// answer (or when the connection goes).
pub struct Share {
    reading: Arc<Reading>,
    id: u64,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.reading.parts().retain(|p| p.id != self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Reading {
    pub(super) fn new(guard: FenceGuard) -> Reading {
        Reading {
            guard: Mutex::new(Some(guard)),
            parts: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            since: Instant::now(),
            cancelled: AtomicBool::new(false),
            resnapshots: AtomicBool::new(true),
        }
    }

    fn parts(&self) -> MutexGuard<'_, Vec<Part>> {
        lock(&self.parts)
    }

    /// A share for the connection to `shard`'s backend `pid`, which owes
    /// the statement's first answer.
    pub fn share(
        self: &Arc<Reading>,
        shard: ShardId,
        pid: i32,
        secret_key: i32,
        endpoint: Arc<Endpoint>,
        verdict: Verdict,
        fenced_out: Arc<AtomicBool>,
    ) -> Share {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.parts().push(Part {
            id,
            shard,
            pid,
            secret_key,
            endpoint,
            verdict,
            fenced_out,
            taken: false,
        });
        Share {
            reading: self.clone(),
            id,
        }
    }

    /// The statement is known to take one snapshot per shard (it calls no
    /// function the classifier does not know): a shard waiting for a row
    /// lock has taken it, and may let go. Otherwise (a `VOLATILE`
    /// function's queries snapshot as they run) only the victim rule
    /// applies.
    pub fn single_snapshot(&self) {
        self.resnapshots.store(false, Ordering::Relaxed);
    }

    /// Whether it still holds the fence.
    fn holds(&self) -> bool {
        lock(&self.guard).is_some()
    }

    /// Lets go of the fence now.
    fn release(&self) {
        let guard = lock(&self.guard).take();
        drop(guard);
    }
}

/// What the look reports for a backend waiting for a safe snapshot (see
/// [`unstall`]); a victim like one waiting for a relation lock.
const SAFE_SNAPSHOT: &str = "safe snapshot";

/// The error a stalled reader's client gets.
fn victim_error(waits: &[(ShardId, i32, String)]) -> Bytes {
    let detail: Vec<String> = waits
        .iter()
        .map(|(shard, pid, locktype)| {
            let what = match locktype.as_str() {
                SAFE_SNAPSHOT => "a safe snapshot (serializable writers to finish)".to_string(),
                lock => format!("a {lock} lock"),
            };
            format!("Process {pid} on shard {shard} waits for {what} while the statement holds the consistent-read fence, which a committing transaction waits for.")
        })
        .collect();
    protocol::error_response_with_hint(
        Severity::Error,
        SqlState::DEADLOCK_DETECTED,
        "deadlock detected",
        Some(&detail.join("\n")),
        "Retry the statement. With consistent_reads on, a statement reading several shards cannot wait, before its snapshot, for a lock a committing transaction holds.",
    )
}

/// Resets the "a look is under way" flag however the look ends.
struct Looking<'a>(&'a AtomicBool);

impl Drop for Looking<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Looks at the readers holding the fence (see the module doc): lets go of
/// those whose shards all took their snapshots, cancels those that waited
/// for another lock longer than `victim_after`. One look at a time.
pub(super) async fn unstall(inner: Arc<Inner>, victim_after: Duration) {
    if inner.looking.swap(true, Ordering::AcqRel) {
        return;
    }
    let _looking = Looking(&inner.looking);
    let Some(control) = inner.lock.as_ref().and_then(|l| l.control.clone()) else {
        return;
    };
    let readings: Vec<Arc<Reading>> = inner
        .state()
        .readings
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .filter(|r| r.holds())
        .collect();
    let mut pids: BTreeMap<ShardId, Vec<i32>> = BTreeMap::new();
    for r in &readings {
        for p in r.parts().iter().filter(|p| !p.taken) {
            pids.entry(p.shard).or_default().push(p.pid);
        }
    }
    if pids.is_empty() {
        return;
    }
    let asks = pids.into_iter().map(|(shard, pids)| {
        let list: Vec<String> = pids.iter().map(i32::to_string).collect();
        // A SERIALIZABLE READ ONLY DEFERRABLE block's first snapshot waits
        // for the serializable writers running there — perhaps one whose
        // commit waits for the fence — in no lock of `pg_locks`.
        let pids = list.join(", ");
        let sql = format!(
            "SELECT pid, locktype FROM pg_catalog.pg_locks WHERE NOT granted AND pid IN ({pids}) \
             UNION ALL SELECT pid, '{SAFE_SNAPSHOT}' FROM pg_catalog.pg_stat_activity \
             WHERE wait_event = 'SafeSnapshot' AND pid IN ({pids})"
        );
        let control = control.clone();
        async move { (shard, control.query(shard, &sql).await) }
    });
    let mut waiting: HashMap<(ShardId, i32), String> = HashMap::new();
    // Shards that did not answer the look (within the control timeout).
    let mut silent: Vec<ShardId> = Vec::new();
    for (shard, rows) in futures_util::future::join_all(asks).await {
        let Ok(rows) = rows else {
            silent.push(shard);
            continue;
        };
        for row in rows {
            if let [Some(pid), Some(locktype)] = row.as_slice() {
                if let Ok(pid) = pid.parse::<i32>() {
                    waiting.insert((shard, pid), locktype.clone());
                }
            }
        }
    }
    for r in readings {
        let mut parts = r.parts();
        // A row lock is taken while executing: that shard has its snapshot
        // (its only one, unless the statement may take more).
        let once = !r.resnapshots.load(Ordering::Relaxed);
        // A shard that answers neither the statement nor the look (stopped,
        // cut off) would hold every commit of the cluster for as long as
        // it stalls: after the deadlock timeout its part is fenced out —
        // whatever its connection reads from then on is refused (40P01),
        // so no snapshot it takes after the fence let go reaches the client.
        let overdue = r.since.elapsed() >= victim_after;
        for p in parts.iter_mut() {
            let lock = waiting.get(&(p.shard, p.pid)).map(String::as_str);
            p.taken |= once && matches!(lock, Some("transactionid" | "tuple"));
            if overdue && !p.taken && silent.contains(&p.shard) {
                p.fenced_out.store(true, Ordering::Release);
                p.taken = true;
                warn!(shard = %p.shard, pid = p.pid, "consistent reads: a shard answers neither a statement holding the fence nor the fence's look at it; letting the statement go (its answer there will be refused, 40P01)");
                let (endpoint, pid, key) = (p.endpoint.clone(), p.pid, p.secret_key);
                tokio::spawn(async move {
                    let _ = send_cancel(&endpoint, pid, key).await;
                });
            }
        }
        // Every shard still owing an answer has its snapshot. (With none
        // owing, the statement holds the fence itself, for a step to come.)
        if !parts.is_empty() && parts.iter().all(|p| p.taken) {
            drop(parts);
            r.release();
            continue;
        }
        let blocked: Vec<(ShardId, i32, String)> = parts
            .iter()
            .filter(|p| !p.taken)
            .filter_map(|p| {
                waiting
                    .get(&(p.shard, p.pid))
                    .map(|l| (p.shard, p.pid, l.clone()))
            })
            .collect();
        if blocked.is_empty()
            || r.since.elapsed() < victim_after
            || r.cancelled.swap(true, Ordering::AcqRel)
        {
            continue;
        }
        let error = victim_error(&blocked);
        // The verdicts are set while the shares are still owed (the parts'
        // lock held): each connection then reads its ReadyForQuery after
        // the verdict, and is closed rather than reused, so a cancel that
        // comes late hits no other statement.
        for p in parts.iter() {
            if let Ok(mut v) = p.verdict.lock() {
                *v = Some(error.clone());
            }
        }
        let victims: Vec<Part> = parts.clone();
        drop(parts);
        warn!(waits = ?blocked.iter().map(|(s, p, l)| format!("shard {s} pid {p} waits for {l}")).collect::<Vec<_>>(),
            "consistent reads: a statement waits for a lock while holding the fence that commits wait for; cancelling it (40P01)");
        for p in victims {
            tokio::spawn(async move {
                if let Err(e) = send_cancel(&p.endpoint, p.pid, p.secret_key).await {
                    warn!(addr = %p.endpoint, error = %e, "consistent reads: cannot cancel a stalled reader");
                }
            });
        }
    }
}
