//! Per-shard pools of [`ServerConn`]s. A connection goes back only when it owes
//! nothing and the server is idle; anything else is closed on return.

use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};

use std::sync::Arc;

use super::{BackendError, ServerConn};
use crate::admin::{ShardStats, Stats};
use crate::config::{Config, Shard};
use crate::router::ShardId;

pub struct ShardManager {
    id: ShardId,
    cfg: Shard,
    connect_timeout: Duration,
    /// `limits.query_timeout_ms`; `None` when 0.
    answer_timeout: Option<Duration>,
    stats: Arc<ShardStats>,
}

impl managed::Manager for ShardManager {
    type Type = ServerConn;
    type Error = BackendError;

    async fn create(&self) -> Result<ServerConn, BackendError> {
        let mut conn = ServerConn::connect(self.id, &self.cfg, self.connect_timeout).await?;
        conn.stats = Some(self.stats.clone());
        conn.answer_timeout = self.answer_timeout;
        Ok(conn)
    }

    async fn recycle(&self, conn: &mut ServerConn, _: &Metrics) -> RecycleResult<BackendError> {
        if conn.is_reusable() {
            Ok(())
        } else {
            Err(RecycleError::message(
                "connection owes responses or is not idle",
            ))
        }
    }
}

pub type PooledConn = Object<ShardManager>;

/// One pool per shard, indexed by shard id.
pub struct Pools {
    pools: Vec<managed::Pool<ShardManager>>,
    wait: Duration,
    stats: Arc<Stats>,
}

impl Pools {
    pub fn new(cfg: &Config, stats: &Arc<Stats>) -> Pools {
        let mut shards: Vec<&Shard> = cfg.shards.iter().collect();
        shards.sort_by_key(|s| s.id);
        let connect_timeout = Duration::from_millis(cfg.limits.connect_timeout_ms);
        let pools = shards
            .into_iter()
            .map(|s| {
                let mgr = ShardManager {
                    id: ShardId(s.id),
                    cfg: s.clone(),
                    connect_timeout,
                    answer_timeout: (cfg.limits.query_timeout_ms > 0)
                        .then(|| Duration::from_millis(cfg.limits.query_timeout_ms)),
                    stats: stats.shards.get(s.id as usize).cloned().unwrap_or_default(),
                };
                managed::Pool::builder(mgr)
                    .max_size(s.pool_size)
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .expect("pool with a runtime always builds")
            })
            .collect();
        Pools {
            pools,
            wait: Duration::from_millis(cfg.limits.pool_timeout_ms),
            stats: stats.clone(),
        }
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
            p.resize(size);
        }
    }

    /// (max size, size, available, waiting) of each shard's pool.
    pub fn status(&self) -> Vec<(usize, usize, usize, usize)> {
        self.pools
            .iter()
            .map(|p| {
                let s = p.status();
                (s.max_size, s.size, s.available, s.waiting)
            })
            .collect()
    }

    /// A connection to `shard`, waiting at most the configured pool timeout.
    pub async fn get(&self, shard: ShardId) -> Result<PooledConn, BackendError> {
        let pool = self
            .pools
            .get(shard.0 as usize)
            .ok_or(BackendError::Connect {
                shard,
                message: "no such shard".into(),
            })?;
        let timeouts = Timeouts {
            wait: Some(self.wait),
            create: None,
            recycle: None,
        };
        let started = std::time::Instant::now();
        let got = pool.timeout_get(&timeouts).await;
        self.stats.pool_wait.observe(started.elapsed());
        if let Some(s) = self.stats.shards.get(shard.0 as usize) {
            let up = !matches!(got, Err(PoolError::Backend(_)));
            s.up.store(up, std::sync::atomic::Ordering::Relaxed);
        }
        match got {
            Ok(c) => Ok(c),
            Err(PoolError::Backend(e)) => Err(e),
            Err(PoolError::Timeout(_)) => Err(BackendError::PoolTimeout { shard }),
            Err(e) => Err(BackendError::Connect {
                shard,
                message: e.to_string(),
            }),
        }
    }
}
