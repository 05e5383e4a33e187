//! The control plane: the proxy's own queries to the shards (recovery,
//! schema setup, startup checks, cleanup, resolving an unknown commit
//! outcome), through `tokio-postgres` with one small `deadpool-postgres`
//! pool per shard. Every call has a deadline, on the client side and as
//! `statement_timeout` on the server, so a stalled or partitioned shard
//! costs its caller that deadline and nothing more. TLS follows the
//! shard's `sslmode`, with the same rustls configuration (and certificate
//! check) as the relayed connections, through `tokio-postgres-rustls`.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{NoTls, SimpleQueryMessage};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::backend::Endpoint;
use crate::config::{Config, SslMode};
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

fn pool(endpoint: &Endpoint, timeout: Duration, connect: Duration) -> Result<Pool, String> {
    let shard = &endpoint.cfg;
    let login = Login {
        user: &shard.user,
        password: shard.password.as_deref(),
        application_name: "pieskieo-control",
        size: POOL_SIZE,
        setup: None,
    };
    control_pool(endpoint, &login, timeout, connect)
}

/// Who a control pool logs in as, and how many connections it keeps.
pub(crate) struct Login<'a> {
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub application_name: &'a str,
    pub size: usize,
    /// A query run once on each new connection, before anyone uses it.
    pub setup: Option<&'static str>,
}

/// A control pool to `shard` as `login`, with the control plane's deadlines:
/// `timeout` for a connection from the pool and, as `statement_timeout`, on
/// the server; `connect` for a new connection. Connects lazily.
pub(crate) fn control_pool(
    endpoint: &Endpoint,
    login: &Login<'_>,
    timeout: Duration,
    connect: Duration,
) -> Result<Pool, String> {
    let shard = &endpoint.cfg;
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
    // tokio-postgres knows whether to ask for TLS and whether a plain answer
    // will do; what the certificate must prove is the rustls verifier's.
    pg.ssl_mode(match shard.sslmode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    let recycling = || ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = match endpoint.client_config() {
        Some(tls) => Manager::from_config(
            pg,
            MakeRustlsConnect::new(Arc::unwrap_or_clone(tls)),
            recycling(),
        ),
        None => Manager::from_config(pg, NoTls, recycling()),
    };
    let mut builder = Pool::builder(mgr).max_size(login.size);
    if let Some(sql) = login.setup {
        builder = builder.post_create(Hook::async_fn(move |client, _| {
            Box::pin(async move {
                client
                    .simple_query(sql)
                    .await
                    .map(|_| ())
                    .map_err(HookError::Backend)
            })
        }));
    }
    builder
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(connect))
        .wait_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| e.to_string())
}

/// An error and what caused it, on one line: tokio-postgres and deadpool
/// keep the reason (a refused certificate, a refused connection) in the
/// source chain, out of their own messages.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    message
}

impl Control {
    /// One pool per endpoint.
    pub fn new(cfg: &Config, endpoints: &[Arc<Endpoint>]) -> Result<Control, String> {
        let timeout = Duration::from_millis(cfg.txn.control_timeout_ms);
        let connect = Duration::from_millis(cfg.limits.connect_timeout_ms);
        let mut pools = Vec::new();
        for e in endpoints {
            pools.push((e.shard, pool(e, timeout, connect)?));
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
            Ok(Err(e)) => return Err(failed(with_causes(&e))),
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
                    .unwrap_or_else(|| with_causes(&e)),
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
