//! The consistent-read fence (`consistent_reads = true`): the commit phase
//! of two-phase commits (C's `COMMIT` to the last `COMMIT PREPARED`
//! answered) and the moment multi-shard readers take their snapshots never
//! overlap, so a reader sees each distributed transaction whole or not at
//! all.
//!
//! Two levels, one shape. In this process, a two-class lock: committers
//! share it, snapshot-takers share it, the classes exclude each other. It is
//! phase-fair: while one class waits, newcomers of the class that holds it
//! queue behind, and when a batch ends a waiting class of the other kind
//! goes first; so neither class starves. Across proxies, each batch (a run
//! of holders of one class) takes one PostgreSQL advisory lock on the lock
//! shard over a dedicated control connection: shared for committers,
//! exclusive for snapshot-takers — so all readers waiting in this proxy
//! take their snapshots under one acquisition. A batch also closes to
//! newcomers once another proxy waits for the lock (see `watch`), so a busy
//! proxy lets other proxies' batches in. The lock is session-level: if the proxy dies, its connection
//! dies and PostgreSQL releases it.
//!
//! The lock connection can die while the proxy lives (terminated, a
//! network cut): PostgreSQL lets the lock go with it. The connection turns
//! off every server-side timeout that could end it, and a batch looks at it
//! before each holder goes on (entering, and a committer again just before
//! its decision: [`FenceGuard::confirm`]) and every [`WATCH_EVERY`]: once
//! it is closed the batch takes the lock again on a new connection, and
//! nobody of the batch goes on until it has. What was already under way
//! when the server let go (a commit phase, a reader's snapshot-taking) is
//! not covered: nothing this proxy does can stop another proxy's batch
//! from taking the lock at that instant.
//!
//! Holds are RAII guards: a waiter dropped while it waits (its client went
//! away) leaves nothing behind; the advisory lock is taken and released by
//! tasks of the fence's own, never by a future that can be dropped halfway.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool};
use tokio::sync::Notify;
use tracing::warn;

use crate::router::ShardId;

mod stall;
pub use stall::{Reading, Share, STALL_AFTER};

/// The advisory lock's key: `'pieskfnc'` as a big-endian `bigint`. One-key
/// advisory locks never collide with the two-key deadlock tags
/// (`0x7069xxxx`, k2), which PostgreSQL keeps in another key space.
pub const LOCK_KEY: i64 = 0x7069_6573_6b66_6e63;

/// How often a batch that holds the advisory lock looks for other proxies
/// waiting for it (`pg_locks`, through the control pool): when one waits,
/// the batch takes no newcomers, so it ends and the other proxy's batch
/// gets the lock. As often, it looks whether its lock connection closed.
/// Under a steady stream of commits the batch never ends by itself, so a
/// reader on another proxy waits for this look: at 20 ms its median read
/// was 24 ms (`cargo bench --bench consistent`), at 5 ms 9.5 ms, for one
/// `pg_locks` query per 5 ms while a batch is open.
pub const WATCH_EVERY: Duration = Duration::from_millis(5);

/// Every how many watch ticks a closed batch of readers is looked at for
/// stalls ([`STALL_AFTER`] apart).
const STALL_TICKS: u32 = 20;

/// Run on each new lock connection: no server-side timeout may end the
/// session (and with it the lock) or a lock wait; the proxy bounds its own
/// waits. Through `pg_settings`, so a server without one of them (before
/// PostgreSQL 14, `idle_session_timeout`) still connects.
const LOCK_SESSION_SETUP: &str = "SELECT pg_catalog.set_config(name, '0', false) FROM pg_catalog.pg_settings WHERE name IN ('statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout', 'idle_session_timeout')";

/// Who enters the fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A two-phase commit in its commit phase.
    Commit,
    /// A reader taking its snapshots on several shards.
    Snapshot,
}

impl Class {
    fn index(self) -> usize {
        match self {
            Class::Commit => 0,
            Class::Snapshot => 1,
        }
    }

    fn other(self) -> Class {
        match self {
            Class::Commit => Class::Snapshot,
            Class::Snapshot => Class::Commit,
        }
    }

    fn lock_sql(self) -> String {
        match self {
            Class::Commit => format!("SELECT pg_advisory_lock_shared({LOCK_KEY})"),
            Class::Snapshot => format!("SELECT pg_advisory_lock({LOCK_KEY})"),
        }
    }

    fn unlock_sql(self) -> String {
        match self {
            Class::Commit => format!("SELECT pg_advisory_unlock_shared({LOCK_KEY})"),
            Class::Snapshot => format!("SELECT pg_advisory_unlock({LOCK_KEY})"),
        }
    }
}

/// The fence could not be entered: the lock shard did not grant the
/// advisory lock. Nothing was held; the caller did nothing yet.
#[derive(Debug, Clone, thiserror::Error)]
#[error("consistent reads: could not take the commit/snapshot lock on shard {shard}: {message}")]
pub struct FenceError {
    pub shard: ShardId,
    pub message: String,
}

/// The cross-proxy half: the lock shard and its dedicated connection (a
/// pool of one, so each batch's lock waits for the previous batch's unlock).
pub struct LockShard {
    pub shard: ShardId,
    pool: Pool,
    timeout: Duration,
    /// For watching `pg_locks` while a batch holds the lock.
    control: Option<Arc<super::Control>>,
}

impl LockShard {
    /// `pool` must hold at most one connection: that serializes batches.
    pub fn new(
        shard: ShardId,
        pool: Pool,
        timeout: Duration,
        control: Option<Arc<super::Control>>,
    ) -> LockShard {
        LockShard {
            shard,
            pool,
            timeout,
            control,
        }
    }

    /// Whether another session waits for the fence's lock. This proxy's
    /// own connection never waits while it holds the lock, so a waiter is
    /// another proxy.
    async fn others_wait(&self) -> bool {
        let Some(control) = &self.control else {
            return false;
        };
        let (hi, lo) = ((LOCK_KEY >> 32) as u32, LOCK_KEY as u32);
        let sql = format!(
            "SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = {hi} AND objid = {lo} AND objsubid = 1 LIMIT 1"
        );
        matches!(control.query(self.shard, &sql).await, Ok(rows) if !rows.is_empty())
    }

    async fn take(&self, class: Class) -> Result<Object, String> {
        let client = match tokio::time::timeout(self.timeout, self.pool.get()).await {
            Err(_) => {
                return Err(format!(
                    "no connection within {} ms",
                    self.timeout.as_millis()
                ))
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(c)) => c,
        };
        match tokio::time::timeout(self.timeout, client.simple_query(&class.lock_sql())).await {
            Ok(Ok(_)) => Ok(client),
            Ok(Err(e)) => {
                // A lock wait cut by statement_timeout leaves nothing held,
                // but the connection is not worth keeping either way.
                let _ = Object::take(client);
                Err(e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string()))
            }
            Err(_) => {
                // The lock may still be granted later: drop the connection
                // so the server lets it go.
                let _ = Object::take(client);
                Err(format!("no answer within {} ms", self.timeout.as_millis()))
            }
        }
    }

    async fn release(&self, client: Object, class: Class) {
        if client.is_closed() {
            // Seen only now: the batch ended within one watch of the loss.
            warn!(shard = %self.shard, ?class, "consistent reads: the fence's lock connection had closed before its batch ended; what the batch began after that was not covered");
            drop(Object::take(client));
            return;
        }
        let sql = class.unlock_sql();
        match tokio::time::timeout(self.timeout, client.simple_query(&sql)).await {
            Ok(Ok(_)) => {}
            outcome => {
                warn!(shard = %self.shard, ok = outcome.is_ok(), "consistent reads: unlock failed; closing the lock connection");
                // Closing the session releases every advisory lock it held.
                let _ = Object::take(client);
            }
        }
    }
}

/// The cross-proxy lock of the current batch.
enum Lock {
    /// Being taken (again, after its connection closed).
    Pending,
    /// Held (by `conn`, when there is a lock shard).
    Held(Option<Object>),
    /// Refused: every holder of this batch waiting for it gets the error;
    /// a holder joining later asks again.
    Failed(FenceError),
}

impl Lock {
    /// Whether the lock connection has closed under the batch: then
    /// PostgreSQL no longer holds the lock for it.
    fn lost(&self) -> bool {
        matches!(self, Lock::Held(Some(c)) if c.is_closed())
    }
}

struct State {
    /// The class holding the fence, if any.
    active: Option<Class>,
    holders: usize,
    /// Numbers batches, so a late lock answer finds out its batch is over.
    batch: u64,
    lock: Lock,
    /// Numbers the times a lock was handed to a batch, so a watcher of a
    /// lock connection that closed stops when the lock is taken again.
    taken: u64,
    /// The batch takes no newcomers (another proxy waits for the lock).
    closed: bool,
    /// Tasks waiting to enter, per class.
    waiting: [usize; 2],
    /// The class of the batch that ended last: when both wait, the other goes.
    last: Option<Class>,
    /// When the batch began.
    since: Instant,
    /// The statements of a snapshot batch, for [`stall::unstall`].
    readings: Vec<Weak<Reading>>,
}

struct Inner {
    state: Mutex<State>,
    changed: Notify,
    lock: Option<LockShard>,
    /// A look at stalled readers is under way.
    looking: AtomicBool,
    /// How long a reader may hold the fence while it waits for a lock
    /// (other than a row lock) before it is cancelled.
    victim_after: Duration,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Whether the batch holds the lock now: `Ok(false)` while it is being
    /// taken — and when its connection turns out closed, which starts
    /// taking it again (nobody of the batch goes on meanwhile).
    fn held(self: &Arc<Inner>) -> Result<bool, FenceError> {
        let mut s = self.state();
        if s.lock.lost() {
            retake(self, &mut s);
        }
        match &s.lock {
            Lock::Held(_) => Ok(true),
            Lock::Failed(e) => Err(e.clone()),
            Lock::Pending => Ok(false),
        }
    }

    /// Waits until the batch holds the lock (or it was refused).
    async fn until_held(self: &Arc<Inner>) -> Result<(), FenceError> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.held()? {
                return Ok(());
            }
            notified.await;
        }
    }
}

/// The batch's lock connection closed (terminated, a server-side timeout,
/// the network): the server let the lock go. The batch takes it again on a
/// new connection; until then `held` says no.
fn retake(inner: &Arc<Inner>, s: &mut State) {
    let Lock::Held(Some(conn)) = std::mem::replace(&mut s.lock, Lock::Pending) else {
        return;
    };
    // Out of the pool for good: its replacement is a new connection.
    drop(Object::take(conn));
    let shard = inner.lock.as_ref().map(|l| l.shard);
    match (s.active, s.holders > 0) {
        (Some(class), true) => {
            warn!(shard = ?shard, ?class, holders = s.holders, "consistent reads: the fence's lock connection closed while its batch held the lock; taking it again before anyone of the batch goes on (a commit phase or snapshot already under way was not covered meanwhile)");
            tokio::spawn(take_lock(inner.clone(), s.batch, class));
        }
        _ => s.lock = Lock::Held(None),
    }
}

/// The two-class fence. Cheap to clone (a handle).
#[derive(Clone)]
pub struct Fence {
    inner: Arc<Inner>,
}

/// A hold on the fence; dropping it leaves.
pub struct FenceGuard {
    inner: Arc<Inner>,
    class: Class,
}

impl std::fmt::Debug for FenceGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FenceGuard({:?})", self.class)
    }
}

/// Counts a waiter for as long as it waits (dropped when it enters or is
/// cancelled).
struct Waiting<'a> {
    inner: &'a Inner,
    class: Class,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut s = self.inner.state();
        s.waiting[self.class.index()] -= 1;
        drop(s);
        self.inner.changed.notify_waiters();
    }
}

impl Fence {
    /// A fence for this process only (tests), or also across proxies.
    pub fn new(lock: Option<LockShard>) -> Fence {
        Fence {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    active: None,
                    holders: 0,
                    batch: 0,
                    lock: Lock::Held(None),
                    taken: 0,
                    closed: false,
                    waiting: [0, 0],
                    last: None,
                    since: Instant::now(),
                    readings: Vec::new(),
                }),
                changed: Notify::new(),
                lock,
                looking: AtomicBool::new(false),
                victim_after: Duration::from_millis(1000),
            }),
        }
    }

    /// The fence `consistent_reads` asks for, its lock on `default_shard`
    /// over a dedicated control connection (`application_name`
    /// `pieskieo-fence`); `None` when the setting is off.
    pub(crate) fn for_config(
        cfg: &crate::config::Config,
        endpoints: &[Arc<crate::backend::Endpoint>],
        control: Arc<super::Control>,
    ) -> Result<Option<Fence>, String> {
        if !cfg.consistent_reads {
            return Ok(None);
        }
        let shard = ShardId(cfg.default_shard);
        let endpoint = endpoints
            .iter()
            .find(|e| e.shard == shard)
            .ok_or_else(|| format!("consistent_reads: shard {shard} is not configured"))?;
        let login = super::control::Login {
            user: &endpoint.cfg.user,
            password: endpoint.cfg.password.as_deref(),
            application_name: "pieskieo-fence",
            size: 1,
            setup: Some(LOCK_SESSION_SETUP),
        };
        let timeout = Duration::from_millis(cfg.txn.control_timeout_ms);
        let connect = Duration::from_millis(cfg.limits.connect_timeout_ms);
        let pool = super::control::control_pool(endpoint, &login, timeout, connect)?;
        let mut fence = Fence::new(Some(LockShard::new(shard, pool, timeout, Some(control))));
        // The deadlock timeout, also when the detector is off: the fence's
        // stalls are its own.
        let victim_after = match cfg.txn.deadlock_timeout_ms {
            0 => 1000,
            ms => ms,
        };
        if let Some(inner) = Arc::get_mut(&mut fence.inner) {
            inner.victim_after = Duration::from_millis(victim_after);
        }
        Ok(Some(fence))
    }

    /// A multi-shard statement's snapshot hold, seen by the stall watcher.
    pub fn reading(&self, guard: FenceGuard) -> Arc<Reading> {
        let r = Arc::new(Reading::new(guard));
        let mut s = self.inner.state();
        // A batch of readers may never end (no committer waits): drop the
        // finished now and then, amortized O(1) per statement.
        if s.readings.len() >= 64 && s.readings.len().is_power_of_two() {
            s.readings.retain(|w| w.strong_count() > 0);
        }
        s.readings.push(Arc::downgrade(&r));
        drop(s);
        r
    }

    /// The shard holding the cross-proxy lock, if any.
    pub fn lock_shard(&self) -> Option<ShardId> {
        self.inner.lock.as_ref().map(|l| l.shard)
    }

    /// Enters as `class`: waits for the other class to leave (and for this
    /// batch's advisory lock). Cancel-safe.
    pub async fn enter(&self, class: Class) -> Result<FenceGuard, FenceError> {
        let inner = &self.inner;
        let waiting = {
            inner.state().waiting[class.index()] += 1;
            Waiting { inner, class }
        };
        // A committer held up by readers looks at why every STALL_AFTER —
        // by the clock, not after a quiet STALL_AFTER: waiters of either
        // class coming and going wake it far more often than that.
        let mut look_at = tokio::time::Instant::now() + STALL_AFTER;
        let guard = loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(g) = self.try_join(class) {
                break g;
            }
            if class == Class::Snapshot {
                notified.await;
                continue;
            }
            if tokio::time::timeout_at(look_at, notified).await.is_err() {
                self.look_at_stalls();
                look_at = tokio::time::Instant::now() + STALL_AFTER;
            }
        };
        drop(waiting);
        // (The state's lock is let go before `guard` may be dropped.)
        inner.until_held().await?;
        Ok(guard)
    }

    /// When a batch of readers has held the fence for [`STALL_AFTER`],
    /// looks (in a task of its own) at the readers that may be stuck.
    fn look_at_stalls(&self) {
        let s = self.inner.state();
        if s.active == Some(Class::Snapshot) && s.since.elapsed() >= STALL_AFTER {
            drop(s);
            tokio::spawn(stall::unstall(self.inner.clone(), self.inner.victim_after));
        }
    }

    /// Joins the batch of `class` or starts one, if the rules allow now.
    fn try_join(&self, class: Class) -> Option<FenceGuard> {
        let mut s = self.inner.state();
        let other_waits = s.waiting[class.other().index()] > 0;
        match s.active {
            Some(c) if c == class => {
                if other_waits || s.closed {
                    return None;
                }
                s.holders += 1;
                // The lock shard refused this batch's lock (it was down, or
                // the lock not granted in time) while its older holders
                // stay: a newcomer asks again, rather than getting that
                // refusal for as long as they do.
                if matches!(s.lock, Lock::Failed(_)) && self.inner.lock.is_some() {
                    s.lock = Lock::Pending;
                    tokio::spawn(take_lock(self.inner.clone(), s.batch, class));
                }
            }
            Some(_) => return None,
            None => {
                if other_waits && s.last == Some(class) {
                    return None;
                }
                s.active = Some(class);
                s.holders = 1;
                s.batch += 1;
                s.closed = false;
                s.since = Instant::now();
                if self.inner.lock.is_some() {
                    s.lock = Lock::Pending;
                    let batch = s.batch;
                    let inner = self.inner.clone();
                    // Spawned before anything awaits: a cancelled leader
                    // cannot leave the lock half taken.
                    tokio::spawn(take_lock(inner, batch, class));
                } else {
                    s.lock = Lock::Held(None);
                }
            }
        }
        Some(FenceGuard {
            inner: self.inner.clone(),
            class,
        })
    }
}

/// Takes the advisory lock for batch `batch`; hands it to the batch, or
/// releases it at once if the batch is already over.
async fn take_lock(inner: Arc<Inner>, batch: u64, class: Class) {
    let Some(lock) = inner.lock.as_ref() else {
        return;
    };
    let got = lock.take(class).await;
    let late = {
        let mut s = inner.state();
        let current = s.batch == batch && s.holders > 0;
        match got {
            Ok(conn) if current => {
                s.lock = Lock::Held(Some(conn));
                s.taken += 1;
                tokio::spawn(watch(inner.clone(), batch, s.taken));
                None
            }
            Ok(conn) => Some(conn),
            Err(message) => {
                warn!(shard = %lock.shard, %message, "consistent reads: the lock shard refused the fence lock");
                if current {
                    s.lock = Lock::Failed(FenceError {
                        shard: lock.shard,
                        message,
                    });
                }
                None
            }
        }
    };
    match late {
        // Everyone left while it was taken: nobody needs it.
        Some(conn) => lock.release(conn, class).await,
        None => inner.changed.notify_waiters(),
    }
}

/// While batch `batch` holds the lock it was handed the `taken`-th time:
/// closes the batch to newcomers once another proxy waits for the lock, and
/// takes the lock again if its connection closed (which ends this watcher;
/// the new lock gets its own).
async fn watch(inner: Arc<Inner>, batch: u64, taken: u64) {
    let Some(lock) = inner.lock.as_ref() else {
        return;
    };
    let fence = Fence {
        inner: inner.clone(),
    };
    let mut ticks = 0u32;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let closed = {
            let mut s = inner.state();
            if s.batch != batch || s.holders == 0 || s.taken != taken {
                return;
            }
            if s.lock.lost() {
                retake(&inner, &mut s);
                drop(s);
                inner.changed.notify_waiters();
                return;
            }
            s.closed
        };
        if !closed && lock.others_wait().await {
            let mut s = inner.state();
            if s.batch == batch {
                s.closed = true;
            }
        }
        // A batch of readers that another proxy waits for (perhaps a
        // commit) is looked at, as a local committer would look at it.
        ticks += 1;
        if closed && ticks.is_multiple_of(STALL_TICKS) {
            fence.look_at_stalls();
        }
    }
}

impl FenceGuard {
    /// Whether holders of the other class wait for this batch to end: in
    /// this proxy, or in another one (the batch closed to newcomers).
    pub fn others_wait(&self) -> bool {
        let s = self.inner.state();
        s.waiting[self.class.other().index()] > 0 || s.closed
    }

    /// Right before a holder starts what the fence protects (a committer
    /// its decision): waits until the batch holds the lock, taking it again
    /// first if its connection closed since the holder entered. An error:
    /// the lock shard refused it again; nothing was started.
    pub async fn confirm(&self) -> Result<(), FenceError> {
        self.inner.until_held().await
    }
}

impl Drop for FenceGuard {
    fn drop(&mut self) {
        let mut s = self.inner.state();
        s.holders -= 1;
        if s.holders == 0 {
            s.active = None;
            s.last = Some(self.class);
            s.readings.clear();
            let lock = std::mem::replace(&mut s.lock, Lock::Held(None));
            if let Lock::Held(Some(conn)) = lock {
                let inner = self.inner.clone();
                let class = self.class;
                tokio::spawn(async move {
                    if let Some(l) = inner.lock.as_ref() {
                        l.release(conn, class).await;
                    }
                });
            }
        }
        drop(s);
        self.inner.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
