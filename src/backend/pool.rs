//! Per-shard pools of [`ServerConn`]s. A connection goes back only when it owes
//! nothing and the server is idle; anything else is closed on return.
//!
//! deadpool returns every dropped object to its idle queue and judges it only
//! at the next checkout, so a dirty connection (one that owes answers, sits in
//! a transaction holding locks, timed out, or whose server hung up) would keep
//! its server session until some later client happened to pop it. A
//! [`PooledConn`] therefore judges itself when dropped, and a dirty one is
//! taken out of the pool and closed at once.

use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use super::{BackendError, Backends, Endpoint, ServerConn};
use crate::admin::{ShardStats, Stats};
use crate::config::Config;
use crate::router::ShardId;

pub struct ShardManager {
    id: ShardId,
    endpoint: Arc<Endpoint>,
    connect_timeout: Duration,
    /// `limits.query_timeout_ms`; `None` when 0.
    answer_timeout: Option<Duration>,
    stats: Arc<ShardStats>,
    backends: Arc<Backends>,
}

impl managed::Manager for ShardManager {
    /// Boxed: deadpool moves its objects through several layers per
    /// checkout, and a connection's buffers and maps are some hundreds of
    /// bytes to copy each time; a box is one pointer.
    type Type = Box<ServerConn>;
    type Error = BackendError;

    async fn create(&self) -> Result<Box<ServerConn>, BackendError> {
        let mut conn = ServerConn::connect(&self.endpoint, self.connect_timeout).await?;
        conn.stats = Some(self.stats.clone());
        conn.answer_timeout = self.answer_timeout;
        self.backends.register(
            self.id,
            conn.process_id,
            &conn.verdict,
            conn.endpoint.clone(),
            conn.secret_key,
        );
        Ok(Box::new(conn))
    }

    async fn recycle(
        &self,
        conn: &mut Box<ServerConn>,
        _: &Metrics,
    ) -> RecycleResult<BackendError> {
        // The server may have hung up while the connection sat idle.
        if conn.is_reusable() && !conn.hung_up() {
            Ok(())
        } else {
            Err(RecycleError::message(
                "connection owes responses or is not idle",
            ))
        }
    }
}

/// A server connection borrowed from its shard's pool. On drop it goes back
/// only if it is clean ([`ServerConn::is_reusable`], and nothing unread is
/// buffered); otherwise it leaves the pool and its socket is closed, so the
/// server ends the session and releases its locks now.
pub struct PooledConn(Option<Object<ShardManager>>);

impl std::ops::Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.0.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.0.as_mut().expect("present until dropped")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(mut obj) = self.0.take() {
            // Whatever it still held for a statement is over with it.
            obj.snapshot_hold = None;
            // Only what the connection already holds is judged here (no
            // poll of the socket): a server that hangs up later, while the
            // connection waits in the pool, is caught at the next checkout
            // (`recycle`), which polls it once. Polling at both ends cost
            // about 400 instructions per statement for no earlier closure
            // that anyone sees.
            if !obj.is_reusable() || obj.holds_unread() {
                if obj.owes() > 0 {
                    // The server may still be running a statement (and
                    // would notice the closed socket only when it ends).
                    obj.spawn_cancel();
                }
                // Detached from the pool (its slot is freed); dropping the
                // connection closes the socket.
                drop(Object::take(obj));
            }
        }
    }
}

/// One pool per shard, indexed by shard id.
pub struct Pools {
    pools: Vec<managed::Pool<ShardManager>>,
    wait: Duration,
    stats: Arc<Stats>,
    backends: Arc<Backends>,
    /// Per shard: checkouts waiting now for a free connection. Sessions
    /// keeping an idle connection of that shard ([`super::Kept`]) hand it
    /// back while this is not zero.
    wanting: Vec<AtomicUsize>,
    /// Per shard: the sessions that have kept a connection of it, and how
    /// many connections are kept now; a waiting checkout takes one of those
    /// ([`super::Kept`]).
    keepers: Vec<super::kept::Keepers>,
    /// Per shard: a reload made the pool smaller and it may still hold more
    /// connections than it may; read at every keep and take, so the pool's
    /// status (a lock) is only asked while this is set.
    shrunk: Vec<std::sync::atomic::AtomicBool>,
}

/// A checkout waiting for a connection, counted while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl Pools {
    /// One pool per endpoint (`endpoints` indexed by shard id).
    pub fn new(cfg: &Config, endpoints: &[Arc<Endpoint>], stats: &Arc<Stats>) -> Pools {
        let connect_timeout = Duration::from_millis(cfg.limits.connect_timeout_ms);
        let backends = Arc::new(Backends::default());
        let pools = endpoints
            .iter()
            .map(|e| {
                let s = &e.cfg;
                let mgr = ShardManager {
                    id: e.shard,
                    endpoint: e.clone(),
                    connect_timeout,
                    answer_timeout: (cfg.limits.query_timeout_ms > 0)
                        .then(|| Duration::from_millis(cfg.limits.query_timeout_ms)),
                    stats: stats.shards.get(s.id as usize).cloned().unwrap_or_default(),
                    backends: backends.clone(),
                };
                managed::Pool::builder(mgr)
                    .max_size(s.pool_size)
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .expect("pool with a runtime always builds")
            })
            .collect();
        Pools {
            wanting: endpoints.iter().map(|_| AtomicUsize::new(0)).collect(),
            keepers: endpoints.iter().map(|_| Default::default()).collect(),
            shrunk: endpoints.iter().map(|_| Default::default()).collect(),
            pools,
            wait: Duration::from_millis(cfg.limits.pool_timeout_ms),
            stats: stats.clone(),
            backends,
        }
    }

    /// Every live connection of these pools, by shard and backend pid.
    pub fn backends(&self) -> Arc<Backends> {
        self.backends.clone()
    }

    pub fn len(&self) -> usize {
        self.pools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// Changes a shard's pool size (a reload).
    pub fn resize(&self, shard: ShardId, size: usize) {
        if let Some(p) = self.pools.get(shard.0 as usize) {
            if size < p.status().max_size {
                if let Some(f) = self.shrunk.get(shard.0 as usize) {
                    f.store(true, SeqCst);
                }
            }
            p.resize(size);
        }
    }

    /// (max size, size, available, waiting) of each shard's pool. A
    /// connection an idle session keeps counts as available: any checkout
    /// that finds the pool empty takes it.
    pub fn status(&self) -> Vec<(usize, usize, usize, usize)> {
        self.pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let s = p.status();
                let kept = self.keepers.get(i).map_or(0, |k| k.count());
                (s.max_size, s.size, s.available + kept, s.waiting)
            })
            .collect()
    }

    /// The pool of `shard` holds more connections than it may (its size
    /// was lowered by a reload): none is kept, each goes back to be closed.
    pub(super) fn over_limit(&self, shard: ShardId) -> bool {
        let i = shard.0 as usize;
        let Some(flag) = self.shrunk.get(i).filter(|f| f.load(SeqCst)) else {
            return false;
        };
        let over = self.pools.get(i).is_some_and(|p| {
            let s = p.status();
            s.size > s.max_size
        });
        if !over {
            flag.store(false, SeqCst);
        }
        over
    }

    /// Some checkout waits for a connection of `shard` now.
    pub(super) fn is_wanted(&self, shard: ShardId) -> bool {
        self.wanting
            .get(shard.0 as usize)
            .is_some_and(|w| w.load(SeqCst) > 0)
    }

    /// Who keeps connections of `shard`.
    pub(super) fn keepers(&self, shard: ShardId) -> Option<&super::kept::Keepers> {
        self.keepers.get(shard.0 as usize)
    }

    /// A connection to `shard`, waiting at most the configured pool timeout.
    pub async fn get(&self, shard: ShardId) -> Result<PooledConn, BackendError> {
        let pool = self
            .pools
            .get(shard.0 as usize)
            .ok_or_else(|| BackendError::Connect {
                shard,
                message: "no such shard".into(),
            })?;
        // A free connection first, with no timer and no clock read; only a
        // checkout that must wait is timed (and bounded by `pool_timeout_ms`).
        let now = Timeouts {
            wait: Some(Duration::ZERO),
            create: None,
            recycle: None,
        };
        let got = match pool.timeout_get(&now).await {
            Err(PoolError::Timeout(_)) => {
                // Counted first: a session that keeps a connection after
                // this sees the count and hands it back to the pool; one
                // kept before is found by the look that follows.
                let _waiting = self.wanting.get(shard.0 as usize).map(|w| {
                    w.fetch_add(1, SeqCst);
                    Waiting(w)
                });
                if let Some(c) = self
                    .keepers
                    .get(shard.0 as usize)
                    .and_then(|k| k.take_one(shard))
                {
                    self.stats.pool_wait.observe(Duration::ZERO);
                    return Ok(c);
                }
                let timeouts = Timeouts {
                    wait: Some(self.wait),
                    ..now
                };
                let started = std::time::Instant::now();
                let got = pool.timeout_get(&timeouts).await;
                self.stats.pool_wait.observe(started.elapsed());
                got
            }
            got => {
                self.stats.pool_wait.observe(Duration::ZERO);
                got
            }
        };
        if let Some(s) = self.stats.shards.get(shard.0 as usize) {
            let up = !matches!(got, Err(PoolError::Backend(_)));
            s.up.store(up, std::sync::atomic::Ordering::Relaxed);
        }
        match got {
            Ok(c) => Ok(PooledConn(Some(c))),
            Err(PoolError::Backend(e)) => Err(e),
            Err(PoolError::Timeout(_)) => Err(BackendError::PoolTimeout { shard }),
            Err(e) => Err(BackendError::Connect {
                shard,
                message: e.to_string(),
            }),
        }
    }
}
