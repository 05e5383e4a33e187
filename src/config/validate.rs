//! Checking a parsed configuration: every field in range, names unique, ids
//! consistent, sharding rules well formed; an error names the field.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{toml_key, AuthMethod, Config, ConfigError, Method, ScramSecret, Shard, SslMode};
use crate::router::KeyType;

impl Config {
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |field: String, message: String| ConfigError::Invalid {
            file: file.to_string(),
            field,
            message,
        };
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "listen".into(),
                format!("`{}` is not an address like 127.0.0.1:6432", self.listen),
            ));
        }
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 32
                && n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        };
        if self.node_id.as_deref().is_some_and(|n| !name_ok(n)) {
            return Err(bad(
                "node_id".into(),
                "must be 1 to 32 characters of letters, digits and `_`".into(),
            ));
        }
        if !name_ok(&self.cluster) {
            return Err(bad(
                "cluster".into(),
                "must be 1 to 32 characters of letters, digits and `_`".into(),
            ));
        }
        if self.txn.commit_deadline_ms < 1000 || self.txn.commit_deadline_ms > 86_400_000 {
            return Err(bad(
                "txn.commit_deadline_ms".into(),
                "must be between 1000 and 86400000".into(),
            ));
        }
        if self.txn.control_timeout_ms == 0 {
            return Err(bad(
                "txn.control_timeout_ms".into(),
                "must be above 0".into(),
            ));
        }
        if self.database.is_empty() {
            return Err(bad("database".into(), "must not be empty".into()));
        }
        if self.limits.max_message_size < 1024 {
            return Err(bad(
                "limits.max_message_size".into(),
                "must be at least 1024".into(),
            ));
        }
        if self.txn.recovery_interval_ms == 0 {
            return Err(bad(
                "txn.recovery_interval_ms".into(),
                "must be above 0".into(),
            ));
        }
        if let Some(fp) = &self.txn.test_failpoint {
            if crate::txn::parse_failpoint(fp).is_none() {
                return Err(bad(
                    "txn.test_failpoint".into(),
                    format!("`{fp}` is not <point>:crash or <point>:pause=MS"),
                ));
            }
        }
        if self.shards.is_empty() {
            return Err(bad(
                "shards".into(),
                "at least one shard is required".into(),
            ));
        }
        let n = self.shards.len() as u32;
        let mut seen = HashSet::new();
        for (i, s) in self.shards.iter().enumerate() {
            if s.id >= n || !seen.insert(s.id) {
                return Err(bad(
                    format!("shards[{i}].id"),
                    format!(
                        "shard ids must be 0..{} with no repeats; found {}",
                        n - 1,
                        s.id
                    ),
                ));
            }
            if s.pool_size == 0 {
                return Err(bad(
                    format!("shards[{i}].pool_size"),
                    "must be at least 1".into(),
                ));
            }
            if s.port == 0 {
                return Err(bad(format!("shards[{i}].port"), "must not be 0".into()));
            }
            check_shard_tls(s).map_err(|(field, m)| bad(format!("shards[{i}].{field}"), m))?;
        }
        if self.default_shard >= n {
            return Err(bad(
                "default_shard".into(),
                format!("no shard with id {}", self.default_shard),
            ));
        }
        if self.users.is_empty() && self.auth_query.is_none() {
            return Err(bad(
                "users".into(),
                "at least one user is required (or `[auth_query]`)".into(),
            ));
        }
        if let Some(q) = &self.auth_query {
            if !q.query.contains("$1") {
                return Err(bad(
                    "auth_query.query".into(),
                    "must take the user name as `$1`".into(),
                ));
            }
            if q.shard.is_some_and(|s| s >= n) {
                return Err(bad(
                    "auth_query.shard".into(),
                    format!("no shard with id {}", q.shard.unwrap_or_default()),
                ));
            }
            if q.password.is_some() && q.user.is_none() {
                return Err(bad(
                    "auth_query.password".into(),
                    "needs `auth_query.user` (without both, the shard's own user and password are used)".into(),
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if !names.insert(u.name.as_str()) {
                return Err(bad(
                    format!("users[{i}].name"),
                    format!("duplicate user `{}`", u.name),
                ));
            }
            match (&u.password, &u.scram_verifier, u.auth) {
                (None, None, AuthMethod::Trust) => {}
                (Some(_), _, AuthMethod::Trust) | (_, Some(_), AuthMethod::Trust) => {
                    return Err(bad(
                        format!("users[{i}].auth"),
                        "a trust user is never asked for a password: remove `password` and `scram_verifier`, or choose another `auth`".into(),
                    ))
                }
                (None, None, _) => {
                    return Err(bad(
                        format!("users[{i}]"),
                        "needs `password` or `scram_verifier`".into(),
                    ))
                }
                (None, Some(_), AuthMethod::Md5 | AuthMethod::Cleartext) => {
                    return Err(bad(
                        format!("users[{i}].auth"),
                        "md5 and cleartext need `password`, not only `scram_verifier`".into(),
                    ))
                }
                (_, Some(v), _) if ScramSecret::parse(v).is_none() => {
                    return Err(bad(
                        format!("users[{i}].scram_verifier"),
                        "expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>".into(),
                    ))
                }
                _ => {}
            }
        }
        for (i, a) in self.admin_users.iter().enumerate() {
            if !names.contains(a.as_str()) {
                return Err(bad(
                    format!("admin_users[{i}]"),
                    format!("`{a}` is not one of `users`"),
                ));
            }
        }
        if self.admin_database == self.database {
            return Err(bad(
                "admin_database".into(),
                "must differ from `database`".into(),
            ));
        }
        // The files are read (and their PEM checked) by the frontend when
        // it builds its acceptor, at start, at reload and by `pieskieo check`.
        if let Some(t) = &self.tls {
            for (field, path) in [("tls.cert", &t.cert), ("tls.key", &t.key)] {
                if let Err(e) = std::fs::metadata(path) {
                    return Err(bad(field.into(), format!("{}: {e}", path.display())));
                }
            }
        }
        if let Some(m) = &self.metrics_listen {
            if m.parse::<SocketAddr>().is_err() {
                return Err(bad(
                    "metrics_listen".into(),
                    format!("`{m}` is not an address like 127.0.0.1:9930"),
                ));
            }
        }
        let mut tables = HashSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            let f = |rest: &str| format!("tables[{i}].{rest}");
            if t.name.is_empty() || !tables.insert(t.name.as_str()) {
                return Err(bad(
                    f("name"),
                    format!("empty or duplicate table `{}`", t.name),
                ));
            }
            if t.key.is_empty() {
                return Err(bad(f("key"), "must name the shard key column".into()));
            }
            match t.method {
                Method::Hash => {
                    if !t.ranges.is_empty() || !t.lists.is_empty() {
                        return Err(bad(
                            f("method"),
                            "`ranges` and `lists` need method range or list".into(),
                        ));
                    }
                }
                Method::Range => {
                    if t.ranges.is_empty() || !t.lists.is_empty() {
                        return Err(bad(
                            f("ranges"),
                            "method range needs `ranges` (and no `lists`)".into(),
                        ));
                    }
                    if t.key_type == KeyType::Uuid {
                        return Err(bad(
                            f("key_type"),
                            "range sharding supports integer and text keys".into(),
                        ));
                    }
                    for (j, r) in t.ranges.iter().enumerate() {
                        if r.shard >= n {
                            return Err(bad(
                                f(&format!("ranges[{j}].shard")),
                                format!("no shard with id {}", r.shard),
                            ));
                        }
                        for (name, v) in [("from", &r.from), ("to", &r.to)] {
                            if let Some(v) = v {
                                toml_key(t.key_type, v)
                                    .map_err(|m| bad(f(&format!("ranges[{j}].{name}")), m))?;
                            }
                        }
                    }
                }
                Method::List => {
                    if t.lists.is_empty() || !t.ranges.is_empty() {
                        return Err(bad(
                            f("lists"),
                            "method list needs `lists` (and no `ranges`)".into(),
                        ));
                    }
                    for (j, l) in t.lists.iter().enumerate() {
                        if l.shard >= n {
                            return Err(bad(
                                f(&format!("lists[{j}].shard")),
                                format!("no shard with id {}", l.shard),
                            ));
                        }
                        for v in &l.values {
                            toml_key(t.key_type, v)
                                .map_err(|m| bad(f(&format!("lists[{j}].values")), m))?;
                        }
                    }
                }
            }
        }
        for (i, r) in self.reference_tables.iter().enumerate() {
            if tables.contains(r.as_str()) {
                return Err(bad(
                    format!("reference_tables[{i}]"),
                    format!("`{r}` is also declared as a sharded table"),
                ));
            }
        }
        Ok(())
    }
}

/// A shard's `sslmode` and `sslrootcert` agree, the CA file loads, and the
/// host can be checked against a certificate: (field, what is wrong).
fn check_shard_tls(s: &Shard) -> Result<(), (&'static str, String)> {
    let mode = s.sslmode.as_str();
    match (s.sslmode, &s.sslrootcert) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err((
                "sslrootcert",
                format!("sslmode {mode} needs `sslrootcert`, the PEM file of the CA the shard's certificate is checked against"),
            ))
        }
        (SslMode::Disable | SslMode::Prefer, Some(_)) => {
            return Err((
                "sslrootcert",
                format!("is used only with sslmode require, verify-ca or verify-full; sslmode is {mode}"),
            ))
        }
        (_, Some(path)) => {
            super::read_roots(path).map_err(|m| ("sslrootcert", m))?;
        }
        (_, None) => {}
    }
    // The name a certificate is checked against (verify-full) and sent as
    // SNI; also parsed under the other modes that may use TLS, so a host
    // that cannot be named fails here rather than at the first handshake.
    if s.sslmode != SslMode::Disable
        && rustls_pki_types::ServerName::try_from(s.host.as_str()).is_err()
    {
        return Err((
            "host",
            format!(
                "`{}` is neither a DNS name nor an IP address, which TLS (sslmode {mode}) needs",
                s.host
            ),
        ));
    }
    Ok(())
}
