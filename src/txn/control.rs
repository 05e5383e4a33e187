//! The control plane: the proxy's own queries to the shards (recovery,
//! schema setup, startup checks, cleanup, resolving an unknown commit
//! outcome), through `tokio-postgres` with one small `deadpool-postgres`
//! pool per shard. Every call has a deadline, on the client side and as
//! `statement_timeout` on the server, so a stalled or partitioned shard
//! costs its caller that deadline and nothing more.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::config::{Config, Shard};
use crate::router::ShardId;

/// Why a control query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("shard {shard}: no answer within {ms} ms")]
    Timeout { shard: ShardId, ms: u64 },
    #[error("shard {shard}: {message}")]
    Failed {
        shard: ShardId,
        /// The server's SQLSTATE, when the server answered with an error.
        code: Option<String>,
        message: String,
    },
    #[error("shard {shard} is not configured")]
    NoShard { shard: ShardId },
}

impl ControlError {
    /// The server's SQLSTATE code, when it answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ControlError::Failed { code, .. } => code.as_deref(),
            ControlError::Timeout { .. } | ControlError::NoShard { .. } => None,
        }
    }
}

/// Per-shard control pools.
pub struct Control {
    pools: Vec<(ShardId, Pool)>,
    timeout: Duration,
}

/// Connections per shard for control traffic: recovery visits a shard with
/// one, and a commit whose outcome is unknown may need another meanwhile.
const POOL_SIZE: usize = 4;

fn pool(shard: &Shard, timeout: Duration, connect: Duration) -> Result<Pool, String> {
    let login = Login {
        user: &shard.user,
        password: shard.password.as_deref(),
        application_name: "pieskieo-control",
        size: POOL_SIZE,
    };
    control_pool(shard, &login, timeout, connect)
}

/// Who a control pool logs in as, and how many connections it keeps.
pub(crate) struct Login<'a> {
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub application_name: &'a str,
    pub size: usize,
}

/// A control pool to `shard` as `login`, with the control plane's deadlines:
/// `timeout` for a connection from the pool and, as `statement_timeout`, on
/// the server; `connect` for a new connection. Connects lazily.
pub(crate) fn control_pool(
    shard: &Shard,
    login: &Login<'_>,
    timeout: Duration,
    connect: Duration,
) -> Result<Pool, String> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&shard.host)
        .port(shard.port)
        .dbname(&shard.database)
        .user(login.user)
        .application_name(login.application_name)
        .connect_timeout(connect)
        .keepalives_idle(Duration::from_secs(10))
        // A server-side wait (a lock, a unique-key check) ends too.
        .options(format!("-c statement_timeout={}", timeout.as_millis()));
    if let Some(p) = login.password {
        pg.password(p);
    }
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(login.size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(connect))
        .wait_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| e.to_string())
}

impl Control {
    pub fn new(cfg: &Config) -> Result<Control, String> {
        let timeout = Duration::from_millis(cfg.txn.control_timeout_ms);
        let connect = Duration::from_millis(cfg.limits.connect_timeout_ms);
        let mut pools = Vec::new();
        for s in &cfg.shards {
            pools.push((ShardId(s.id), pool(s, timeout, connect)?));
        }
        Ok(Control { pools, timeout })
    }

    /// Runs proxy-made SQL (one or more statements) on `shard`; the rows of
    /// every statement, as text. Times out after the control timeout; a
    /// connection that timed out is never reused.
    pub async fn query(
        &self,
        shard: ShardId,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ControlError> {
        let pool = self
            .pools
            .iter()
            .find(|(s, _)| *s == shard)
            .map(|(_, p)| p)
            .ok_or(ControlError::NoShard { shard })?;
        let ms = self.timeout.as_millis() as u64;
        let timeout = ControlError::Timeout { shard, ms };
        let failed = |e: String| ControlError::Failed {
            shard,
            code: None,
            message: e,
        };
        let client = match tokio::time::timeout(self.timeout, pool.get()).await {
            Err(_) => return Err(timeout),
            Ok(Err(deadpool_postgres::PoolError::Timeout(_))) => return Err(timeout),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Ok(Ok(c)) => c,
        };
        match tokio::time::timeout(self.timeout, client.simple_query(sql)).await {
            Err(_) => {
                // Its answer may still come: nobody else may read it.
                let _ = deadpool_postgres::Object::take(client);
                Err(timeout)
            }
            Ok(Err(e)) => Err(ControlError::Failed {
                shard,
                code: e.code().map(|c| c.code().to_string()),
                message: e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string()),
            }),
            Ok(Ok(messages)) => Ok(messages
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect()),
        }
    }

    /// The first value of the first row.
    pub async fn scalar(&self, shard: ShardId, sql: &str) -> Result<Option<String>, ControlError> {
        Ok(self
            .query(shard, sql)
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }

    pub fn shards(&self) -> Vec<ShardId> {
        self.pools.iter().map(|(s, _)| *s).collect()
    }
}
