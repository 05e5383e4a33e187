//! The TOML configuration: listen address, node id, users, shards, sharded and
//! reference tables, limits. Loading validates everything and names the field
//! that is wrong.

mod ca;
mod scram;
mod validate;
pub use ca::read_roots;
pub use scram::ScramSecret;

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::router::{KeyType, KeyValue};

/// A configuration error; the message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: field `{field}`: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// This proxy's name in logs and `SHOW CONFIG` (optional). Proxies with
    /// the same configuration, name included, may serve the same shards.
    #[serde(default)]
    pub node_id: Option<String>,
    /// The name of this Pieskieo cluster (every proxy over these shards shares
    /// it): part of every 2PC gid, so recovery never touches another
    /// cluster's prepared transactions on a shared server.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// The database name clients connect to.
    #[serde(default = "default_database")]
    pub database: String,
    /// Shard holding tables not declared sharded or reference.
    #[serde(default)]
    pub default_shard: u32,
    /// Users (from `users`) who may open the admin console.
    #[serde(default)]
    pub admin_users: Vec<String>,
    /// The database name of the admin console.
    #[serde(default = "default_admin_database")]
    pub admin_database: String,
    /// Address of the Prometheus endpoint (`GET /metrics`); off when unset.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Log lines as `text` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Threads serving clients; 0 (the default) means one per CPU core. On
    /// a small machine shared with PostgreSQL, 1 spends the least CPU per
    /// query (no cross-thread wake-ups), as PgBouncer's single thread does.
    #[serde(default)]
    pub workers: usize,
    /// TLS for clients; off when left out.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// The file this was loaded from (for reloads).
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub txn: TxnSettings,
    #[serde(default)]
    pub users: Vec<User>,
    /// Passthrough authentication: users not in `users` are looked up on a
    /// shard (PgBouncer's `auth_query`); off when left out.
    #[serde(default)]
    pub auth_query: Option<AuthQuery>,
    pub shards: Vec<Shard>,
    #[serde(default)]
    pub tables: Vec<ShardedTable>,
    /// Tables copied on every shard: writes go everywhere, reads to one.
    #[serde(default)]
    pub reference_tables: Vec<String>,
    /// Every statement that reads several shards, and every REPEATABLE READ
    /// or SERIALIZABLE block, sees each distributed transaction whole or not
    /// at all (the consistent-read fence; an advisory lock on
    /// `default_shard` across proxies). Off by default; restart-only.
    #[serde(default)]
    pub consistent_reads: bool,
    /// A simple query that one key constant routes to one shard, outside a
    /// transaction block, runs there as a statement prepared with its
    /// constants taken out (parsed and planned once per server connection)
    /// and bound with them. On by default; a reload changes it.
    #[serde(default = "yes")]
    pub prepare_simple_queries: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// How long a client waits for a pooled server connection.
    #[serde(default = "default_pool_timeout_ms")]
    pub pool_timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Client connections at once; the next one gets 53300.
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    /// How long a new client may take to start up and authenticate.
    #[serde(default = "default_startup_timeout_ms")]
    pub startup_timeout_ms: u64,
    /// On SIGTERM, how long open transaction blocks may run before they are
    /// rolled back (those past their commit decision are always finished).
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// A client idle inside a transaction block this long is disconnected
    /// and its block rolled back (0 = never).
    #[serde(default)]
    pub idle_in_transaction_timeout_ms: u64,
    /// The longest wait for any answer from a shard (0 = no limit, the
    /// default, as PgBouncer's `query_timeout`). Past it the statement is
    /// cancelled on the shard (CancelRequest), the server connection is
    /// closed, never reused, and a transaction not yet decided is rolled
    /// back. The client gets 57014 when the statement cannot have taken
    /// effect, 08007 (outcome unknown) for a COMMIT or an autocommit write. Covers a shard that
    /// stalls; a long analytical query needs a limit above its run time.
    #[serde(default)]
    pub query_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: default_max_message_size(),
            pool_timeout_ms: default_pool_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            max_client_connections: default_max_client_connections(),
            startup_timeout_ms: default_startup_timeout_ms(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            idle_in_transaction_timeout_ms: 0,
            query_timeout_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// TLS for clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, server certificate first.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
    /// Refuse clients that do not use TLS (28000), like `hostssl` in pg_hba.conf.
    #[serde(default)]
    pub require: bool,
}

/// Distributed transactions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnSettings {
    /// How often the resolver looks for in-doubt transactions.
    #[serde(default = "default_recovery_interval_ms")]
    pub recovery_interval_ms: u64,
    /// A prepared transaction younger than this is left to its coordinator
    /// (in whichever proxy): longer than a commit normally takes. Resolving
    /// earlier is safe, only wasteful: a live coordinator then loses the race
    /// and its client gets 40000.
    #[serde(default = "default_recovery_grace_ms")]
    pub recovery_grace_ms: u64,
    /// How long a coordinator has, from its first PREPARE, to record its
    /// commit decision (judged by the decision shard's clock); past it the
    /// transaction rolls back. Abort rows are kept this long.
    #[serde(default = "default_commit_deadline_ms")]
    pub commit_deadline_ms: u64,
    /// The longest wait for any control query (recovery, schema setup,
    /// cleanup, resolving an unknown outcome), per shard.
    #[serde(default = "default_control_timeout_ms")]
    pub control_timeout_ms: u64,
    /// Test-only: make the coordinator crash or pause at a point of 2PC
    /// (`after_prepare|after_decision|after_first_commit` `:crash` or `:pause=MS`).
    #[serde(default)]
    pub test_failpoint: Option<String>,
    /// A lock wait on a shard this long makes the proxy look for deadlocks
    /// across shards (0 = off; then participants carry no tag either).
    #[serde(default = "default_deadlock_timeout_ms")]
    pub deadlock_timeout_ms: u64,
}

impl Default for TxnSettings {
    fn default() -> Self {
        TxnSettings {
            recovery_interval_ms: default_recovery_interval_ms(),
            recovery_grace_ms: default_recovery_grace_ms(),
            commit_deadline_ms: default_commit_deadline_ms(),
            control_timeout_ms: default_control_timeout_ms(),
            test_failpoint: None,
            deadlock_timeout_ms: default_deadlock_timeout_ms(),
        }
    }
}

fn default_cluster() -> String {
    "main".into()
}
fn default_recovery_grace_ms() -> u64 {
    10_000
}
fn default_commit_deadline_ms() -> u64 {
    120_000
}
fn default_control_timeout_ms() -> u64 {
    5_000
}
fn default_recovery_interval_ms() -> u64 {
    5000
}
fn default_deadlock_timeout_ms() -> u64 {
    1000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "cleartext")]
    Cleartext,
    /// No password asked, as PostgreSQL's `trust`.
    #[serde(rename = "trust")]
    Trust,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// Plain password; or give `scram_verifier` instead (SCRAM only). A
    /// `trust` user takes neither.
    pub password: Option<String>,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as in `pg_authid`.
    pub scram_verifier: Option<String>,
    #[serde(default = "default_auth")]
    pub auth: AuthMethod,
}

/// Where and how the passwords of users not listed in `users` are looked up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthQuery {
    /// Run with the user name as `$1`; the last column of its first row is
    /// the stored password (`SCRAM-SHA-256$...` or `md5...`). No row, or
    /// NULL, fails as a wrong password does.
    #[serde(default = "default_auth_query")]
    pub query: String,
    /// The shard it runs on (default: `default_shard`).
    #[serde(default)]
    pub shard: Option<u32>,
    /// The role it connects as (default: the shard's own `user`).
    #[serde(default)]
    pub user: Option<String>,
    /// That role's password; with `user` left out, the shard's own password.
    #[serde(default)]
    pub password: Option<String>,
}

/// `pg_authid` as PostgreSQL's own login reads it: only roles that may log
/// in, and no password once `VALID UNTIL` has passed. Needs a superuser (or
/// a `SECURITY DEFINER` function in its place).
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil IS NULL OR rolvaliduntil > now() THEN rolpassword END FROM pg_catalog.pg_authid WHERE rolname = $1 AND rolcanlogin";

fn default_auth_query() -> String {
    DEFAULT_AUTH_QUERY.into()
}

impl Config {
    /// Names of `trust` users, when the listener is reachable from another
    /// host: a warning for the log at startup and at reload.
    pub fn exposed_trust_users(&self) -> Option<Vec<&str>> {
        let trust: Vec<&str> = self
            .users
            .iter()
            .filter(|u| u.auth == AuthMethod::Trust)
            .map(|u| u.name.as_str())
            .collect();
        (!trust.is_empty() && !self.listen_addr().ip().is_loopback()).then_some(trust)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub id: u32,
    #[serde(default = "default_host")]
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// TLS to this shard, as libpq's `sslmode`; both the relayed
    /// connections and the proxy's own control connections follow it.
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM file of the CA(s) the shard's certificate must chain to; needed
    /// by `verify-ca` and `verify-full`, checked by `require` when given.
    #[serde(default)]
    pub sslrootcert: Option<std::path::PathBuf>,
}

/// libpq's `sslmode`, for the proxy's connections to one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS: no `SSLRequest` is sent.
    Disable,
    /// TLS when the shard offers it (its certificate unchecked), plain when
    /// it answers `N`. The default, as in libpq: an existing configuration
    /// keeps working against a shard without TLS, and is encrypted against
    /// one with it.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is checked only when
    /// `sslrootcert` is given (then as `verify-ca`, as libpq does).
    Require,
    /// TLS, the certificate chaining to `sslrootcert`; any host name.
    VerifyCa,
    /// TLS, the certificate chaining to `sslrootcert` and valid for `host`.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Hash,
    Range,
    List,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardedTable {
    pub name: String,
    /// The shard key column.
    pub key: String,
    pub key_type: KeyType,
    #[serde(default = "default_method")]
    pub method: Method,
    /// For `method = "range"`: `from` inclusive, `to` exclusive; either may be left out.
    #[serde(default)]
    pub ranges: Vec<RangeRule>,
    /// For `method = "list"`.
    #[serde(default)]
    pub lists: Vec<ListRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeRule {
    pub from: Option<toml::Value>,
    pub to: Option<toml::Value>,
    pub shard: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRule {
    pub values: Vec<toml::Value>,
    pub shard: u32,
}

fn default_listen() -> String {
    "127.0.0.1:6432".into()
}
fn default_database() -> String {
    "app".into()
}
fn default_admin_database() -> String {
    "pieskieo".into()
}
fn default_max_message_size() -> usize {
    64 << 20
}
fn default_pool_timeout_ms() -> u64 {
    5000
}
fn default_connect_timeout_ms() -> u64 {
    5000
}
fn default_max_client_connections() -> usize {
    1000
}
fn default_startup_timeout_ms() -> u64 {
    10_000
}
fn default_shutdown_timeout_ms() -> u64 {
    10_000
}
fn default_auth() -> AuthMethod {
    AuthMethod::ScramSha256
}
fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_pool_size() -> usize {
    10
}
fn default_method() -> Method {
    Method::Hash
}

/// Turns a TOML scalar into a key of the table's type.
pub fn toml_key(ty: KeyType, v: &toml::Value) -> Result<KeyValue, String> {
    match v {
        toml::Value::Integer(i) => KeyValue::parse(ty, &i.to_string()),
        toml::Value::String(s) => KeyValue::parse(ty, s),
        other => Err(format!(
            "expected an integer or a string, found {}",
            other.type_str()
        )),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut cfg = Config::parse(&text, &file)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    pub fn listen_addr(&self) -> SocketAddr {
        // validate() has checked it parses
        self.listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 6432)))
    }
}

/// What a reload from `old` to `new` changes, or why it is refused: anything
/// that needs a restart (address, node id, cluster, `[txn]`, shard addresses) or
/// would move rows already stored (shard count, a sharded table's key or rules).
pub fn reload_changes(old: &Config, new: &Config) -> Result<Vec<String>, String> {
    let refuse = |what: String| {
        Err(format!(
            "reload refused, the old configuration stays: {what}"
        ))
    };
    if old.listen != new.listen
        || old.node_id != new.node_id
        || old.cluster != new.cluster
        || old.txn != new.txn
        || old.workers != new.workers
        || old.limits.query_timeout_ms != new.limits.query_timeout_ms
    {
        return refuse(
            "`listen`, `node_id`, `cluster`, `workers`, `limits.query_timeout_ms` and `[txn]` (including `txn.deadlock_timeout_ms`) change only with a restart".into(),
        );
    }
    if old.consistent_reads != new.consistent_reads {
        return refuse(format!(
            "`consistent_reads` changes only with a restart (it is {}, the file says {})",
            old.consistent_reads, new.consistent_reads
        ));
    }
    if old.shards.len() != new.shards.len() {
        return refuse(format!(
            "the shard count would change from {} to {}, moving existing rows",
            old.shards.len(),
            new.shards.len()
        ));
    }
    if old.default_shard != new.default_shard {
        return refuse(
            "`default_shard` holds unsharded tables; changing it would move them".into(),
        );
    }
    for n in &new.shards {
        let Some(o) = old.shards.iter().find(|o| o.id == n.id) else {
            return refuse(format!("shard {} is new", n.id));
        };
        if (&o.host, o.port, &o.database, &o.user) != (&n.host, n.port, &n.database, &n.user) {
            return refuse(format!(
                "shard {}'s address changes only with a restart",
                n.id
            ));
        }
        // Connections already open keep the TLS they were made with, and
        // an encrypted pool must never quietly hand out plain ones.
        if (o.sslmode, &o.sslrootcert) != (n.sslmode, &n.sslrootcert) {
            return refuse(format!(
                "shard {}'s `sslmode` and `sslrootcert` change only with a restart",
                n.id
            ));
        }
    }
    let mut changes = Vec::new();
    for o in &old.tables {
        match new.tables.iter().find(|t| t.name == o.name) {
            None => return refuse(format!("sharded table `{}` would disappear", o.name)),
            Some(n) => {
                let rules = |t: &ShardedTable| {
                    format!(
                        "{}|{:?}|{:?}|{:?}|{:?}",
                        t.key, t.key_type, t.method, t.ranges, t.lists
                    )
                };
                if rules(o) != rules(n) {
                    return refuse(format!(
                        "table `{}`'s shard key or rules would change, moving existing rows",
                        o.name
                    ));
                }
            }
        }
    }
    for n in &new.tables {
        if !old.tables.iter().any(|t| t.name == n.name) {
            changes.push(format!("sharded table `{}` added", n.name));
        }
    }
    for n in &new.shards {
        if let Some(o) = old.shards.iter().find(|o| o.id == n.id) {
            if o.pool_size != n.pool_size {
                changes.push(format!(
                    "shard {} pool_size {} -> {}",
                    n.id, o.pool_size, n.pool_size
                ));
            }
        }
    }
    if old.reference_tables != new.reference_tables {
        changes.push(format!(
            "reference_tables {:?} -> {:?}",
            old.reference_tables, new.reference_tables
        ));
    }
    let users = |c: &Config| c.users.iter().map(|u| u.name.clone()).collect::<Vec<_>>();
    if users(old) != users(new)
        || old.users.iter().zip(&new.users).any(|(a, b)| {
            a.password != b.password || a.scram_verifier != b.scram_verifier || a.auth != b.auth
        })
    {
        changes.push("users".into());
    }
    if old.auth_query != new.auth_query {
        changes.push("auth_query".into());
    }
    if format!("{:?}", old.limits) != format!("{:?}", new.limits) {
        changes.push("limits".into());
    }
    if old.admin_users != new.admin_users {
        changes.push("admin_users".into());
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = "n1"
[[users]]
name = "app"
password = "secret"
[[shards]]
id = 0
port = 5432
database = "postgres"
user = "postgres"
[[shards]]
id = 1
port = 5433
database = "postgres"
user = "postgres"
[[tables]]
name = "accounts"
key = "id"
key_type = "int8"
"#;

    #[test]
    fn good_config_loads_with_defaults() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.listen, "127.0.0.1:6432");
        assert_eq!(c.shards[0].pool_size, 10);
        assert_eq!(c.tables[0].method, Method::Hash);
        assert_eq!(c.txn.deadlock_timeout_ms, 1000);
    }

    #[test]
    fn consistent_reads_is_off_by_default_and_changes_only_with_a_restart() {
        let old = Config::parse(GOOD, "t.toml").unwrap();
        assert!(!old.consistent_reads);
        let new = Config::parse(&format!("consistent_reads = true\n{GOOD}"), "t.toml").unwrap();
        assert!(new.consistent_reads);
        let e = reload_changes(&old, &new).unwrap_err();
        assert!(
            e.contains("`consistent_reads`") && e.contains("old configuration stays"),
            "{e}"
        );
        let e = Config::parse(&format!("consistent_reads = \"yes\"\n{GOOD}"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("consistent_reads"), "{e}");
    }

    #[test]
    fn deadlock_detection_changes_only_with_a_restart() {
        let old = Config::parse(GOOD, "t.toml").unwrap();
        let new =
            Config::parse(&format!("{GOOD}[txn]\ndeadlock_timeout_ms = 0\n"), "t.toml").unwrap();
        assert_eq!(new.txn.deadlock_timeout_ms, 0);
        let e = reload_changes(&old, &new).unwrap_err();
        assert!(e.contains("txn.deadlock_timeout_ms"), "{e}");
    }

    #[test]
    fn trust_users_need_no_password_and_warn_off_loopback() {
        let trust = "[[users]]\nname = \"t\"\nauth = \"trust\"\n";
        let c = Config::parse(&format!("{GOOD}{trust}"), "t.toml").unwrap();
        assert_eq!(c.users[1].auth, AuthMethod::Trust);
        assert!(c.exposed_trust_users().is_none(), "127.0.0.1 is loopback");
        for listen in ["0.0.0.0:6432", "192.168.1.5:6432", "[::]:6432"] {
            let text = format!("listen = \"{listen}\"\n{GOOD}{trust}");
            let c = Config::parse(&text, "t.toml").unwrap();
            assert_eq!(c.exposed_trust_users(), Some(vec!["t"]), "{listen}");
        }
        let v6 = format!("listen = \"[::1]:6432\"\n{GOOD}{trust}");
        assert!(Config::parse(&v6, "t.toml")
            .unwrap()
            .exposed_trust_users()
            .is_none());
        let exposed = format!("listen = \"0.0.0.0:6432\"\n{GOOD}");
        assert!(Config::parse(&exposed, "t.toml")
            .unwrap()
            .exposed_trust_users()
            .is_none());
        // A password on a trust user would protect nothing: refused.
        let e = Config::parse(&format!("{GOOD}{trust}password = \"p\"\n"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("users[1].auth") && e.contains("never asked"),
            "{e}"
        );
    }

    #[test]
    fn auth_query_defaults_and_checks() {
        let no_users = GOOD.replace("[[users]]\nname = \"app\"\npassword = \"secret\"\n", "");
        assert!(
            Config::parse(&no_users, "t.toml").is_err(),
            "no users, no auth_query"
        );
        let c = Config::parse(&format!("{no_users}[auth_query]\n"), "t.toml").unwrap();
        let q = c.auth_query.as_ref().unwrap();
        assert_eq!(q.query, DEFAULT_AUTH_QUERY);
        assert_eq!((q.shard, q.user.as_deref()), (None, None));
        let cases = [
            ("shard = 2\n", "auth_query.shard"),
            ("query = \"SELECT 1\"\n", "auth_query.query"),
            ("password = \"p\"\n", "auth_query.password"),
            ("timeout = 1\n", "timeout"),
        ];
        for (extra, field) in cases {
            let text = format!("{GOOD}[auth_query]\n{extra}");
            let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        let old = Config::parse(GOOD, "t.toml").unwrap();
        let new = Config::parse(&format!("{GOOD}[auth_query]\nshard = 1\n"), "t.toml").unwrap();
        assert_eq!(reload_changes(&old, &new).unwrap(), vec!["auth_query"]);
    }

    #[test]
    fn shard_tls_defaults_to_prefer_and_changes_only_with_a_restart() {
        let old = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(old.shards[0].sslmode, SslMode::Prefer);
        let off = GOOD.replace("port = 5433\n", "port = 5433\nsslmode = \"disable\"\n");
        let new = Config::parse(&off, "t.toml").unwrap();
        assert_eq!(new.shards[1].sslmode, SslMode::Disable);
        let e = reload_changes(&old, &new).unwrap_err();
        assert!(e.contains("shard 1") && e.contains("sslmode"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                GOOD.replace("node_id = \"n1\"", "node_id = \"n-1\""),
                "node_id",
            ),
            (GOOD.replace("id = 1\n", "id = 5\n"), "shards[1].id"),
            (
                GOOD.replace("key_type = \"int8\"", "key_type = \"float\""),
                "key_type",
            ),
            (format!("bogus = 1\n{GOOD}"), "bogus"),
            (format!("cluster = \"a b\"\n{GOOD}"), "cluster"),
            (format!("{GOOD}[txn]\nlog_dir = \"x\"\n"), "log_dir"),
            (
                format!("reference_tables = [\"accounts\"]\n{GOOD}"),
                "reference_tables[0]",
            ),
            (format!("default_shard = 7\n{GOOD}"), "default_shard"),
            (
                GOOD.replace("port = 5433\n", "port = 5433\nsslmode = \"verify-full\"\n"),
                "shards[1].sslrootcert",
            ),
            (
                GOOD.replace(
                    "port = 5433\n",
                    "port = 5433\nsslmode = \"verify-ca\"\nsslrootcert = \"/no/such/ca.crt\"\n",
                ),
                "shards[1].sslrootcert",
            ),
            (
                GOOD.replace("port = 5433\n", "port = 5433\nhost = \"a b\"\n"),
                "shards[1].host",
            ),
            (
                GOOD.replace("method", "x").replace(
                    "key_type = \"int8\"",
                    "key_type = \"int8\"\nmethod = \"range\"",
                ),
                "tables[0].ranges",
            ),
        ];
        for (text, field) in cases {
            let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(e.contains("t.toml") && e.contains(field), "{field}: {e}");
        }
    }
}
