//! Passthrough authentication (PgBouncer's `auth_query`): the stored password
//! of a user not listed in `[[users]]` is read from a shard, on every login,
//! with the control plane's deadlines. Nothing is cached, so a password
//! changed, a role dropped or expired on the shard counts from the next login.

use std::time::Duration;

use deadpool_postgres::Pool;
use tracing::warn;

use crate::config::Config;
use crate::router::ShardId;

/// What the lookup found for a user.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// No row: no such role (or, under the default query, one that cannot log in).
    NoRow,
    /// A row whose password is NULL: none set (or, under the default query, expired).
    NoPassword,
    /// The stored password, as `pg_authid.rolpassword` keeps it.
    Password(String),
}

/// Why a lookup gave no answer. Either way the client is refused; the log
/// names the shard.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    /// The shard could not be reached, or did not answer in time.
    #[error("shard {shard}: {message}")]
    Unavailable { shard: ShardId, message: String },
    /// The shard answered with an error (the query, or the lookup role's
    /// own login or privileges, are wrong): an operator's mistake.
    #[error("shard {shard}: {message}")]
    Failed { shard: ShardId, message: String },
}

/// Everything a lookup depends on: a reload with the same settings keeps the
/// pool (and its connections), any change builds a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    shard: u32,
    host: String,
    port: u16,
    database: String,
    user: String,
    password: Option<String>,
    query: String,
    timeout_ms: u64,
    connect_ms: u64,
}

impl Settings {
    fn of(cfg: &Config) -> Option<Settings> {
        let q = cfg.auth_query.as_ref()?;
        let id = q.shard.unwrap_or(cfg.default_shard);
        let shard = cfg.shards.iter().find(|s| s.id == id)?;
        let (user, password) = match &q.user {
            Some(u) => (u.clone(), q.password.clone()),
            None => (shard.user.clone(), shard.password.clone()),
        };
        Some(Settings {
            shard: id,
            host: shard.host.clone(),
            port: shard.port,
            database: shard.database.clone(),
            user,
            password,
            query: q.query.clone(),
            timeout_ms: cfg.txn.control_timeout_ms,
            connect_ms: cfg.limits.connect_timeout_ms,
        })
    }
}

/// Connections for concurrent logins; more wait (up to the control timeout).
const POOL_SIZE: usize = 4;

/// The lookup of stored passwords on the `auth_query` shard.
pub(crate) struct PasswordLookup {
    settings: Settings,
    pool: Pool,
}

impl PasswordLookup {
    /// The lookup `cfg` asks for (`None` without `[auth_query]`); `previous`
    /// is kept when nothing it depends on changed. No connection is made yet.
    pub(crate) fn new(
        cfg: &Config,
        previous: Option<&std::sync::Arc<PasswordLookup>>,
    ) -> Result<Option<std::sync::Arc<PasswordLookup>>, String> {
        let Some(settings) = Settings::of(cfg) else {
            return Ok(None);
        };
        if let Some(p) = previous.filter(|p| p.settings == settings) {
            return Ok(Some(p.clone()));
        }
        let shard = cfg
            .shards
            .iter()
            .find(|s| s.id == settings.shard)
            .ok_or_else(|| format!("auth_query: no shard {}", settings.shard))?;
        let login = crate::txn::Login {
            user: &settings.user,
            password: settings.password.as_deref(),
            application_name: "pieskieo-auth",
            size: POOL_SIZE,
            setup: None,
        };
        // The lookup reaches its shard as the control plane does, TLS included.
        let endpoint =
            crate::backend::Endpoint::new(shard).map_err(|e| format!("auth_query: {e}"))?;
        let pool = crate::txn::control_pool(
            &endpoint,
            &login,
            Duration::from_millis(settings.timeout_ms),
            Duration::from_millis(settings.connect_ms),
        )
        .map_err(|e| format!("auth_query: {e}"))?;
        Ok(Some(std::sync::Arc::new(PasswordLookup { settings, pool })))
    }

    fn shard(&self) -> ShardId {
        ShardId(self.settings.shard)
    }

    /// The stored password of `user`: the last column of the query's first row.
    pub(crate) async fn stored_password(&self, user: &str) -> Result<Found, LookupError> {
        let r = self.query(user).await;
        if let Err(e) = &r {
            warn!(shard = %self.shard(), %user, error = %e, "auth_query lookup failed");
        }
        r
    }

    async fn query(&self, user: &str) -> Result<Found, LookupError> {
        let shard = self.shard();
        let limit = Duration::from_millis(self.settings.timeout_ms);
        let late = || LookupError::Unavailable {
            shard,
            message: format!("no answer within {} ms", self.settings.timeout_ms),
        };
        let from_pg = |e: tokio_postgres::Error| match e.as_db_error() {
            Some(d) => LookupError::Failed {
                shard,
                message: format!("{} ({})", d.message(), d.code().code()),
            },
            None => LookupError::Unavailable {
                shard,
                message: with_causes(&e),
            },
        };
        let client = match tokio::time::timeout(limit, self.pool.get()).await {
            Err(_) | Ok(Err(deadpool_postgres::PoolError::Timeout(_))) => return Err(late()),
            Ok(Err(deadpool_postgres::PoolError::Backend(e))) => return Err(from_pg(e)),
            Ok(Err(e)) => {
                return Err(LookupError::Unavailable {
                    shard,
                    message: with_causes(&e),
                })
            }
            Ok(Ok(c)) => c,
        };
        let run = async {
            let stmt = client.prepare_cached(&self.settings.query).await?;
            client.query(&stmt, &[&user]).await
        };
        let rows = match tokio::time::timeout(limit, run).await {
            Err(_) => {
                // Its answer may still come: nobody else may read it.
                let _ = deadpool_postgres::Object::take(client);
                return Err(late());
            }
            Ok(r) => r.map_err(from_pg)?,
        };
        let Some(row) = rows.first() else {
            return Ok(Found::NoRow);
        };
        let Some(last) = row.len().checked_sub(1) else {
            return Err(LookupError::Failed {
                shard,
                message: "auth_query returned no columns".into(),
            });
        };
        match row.try_get::<_, Option<String>>(last) {
            Ok(Some(p)) => Ok(Found::Password(p)),
            Ok(None) => Ok(Found::NoPassword),
            Err(e) => Err(LookupError::Failed {
                shard,
                message: format!("auth_query's last column is not text: {e}"),
            }),
        }
    }
}

/// An error and its causes ("error connecting to server: Connection refused").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
