//! Startup checks and recovery of in-doubt transactions.
//!
//! Before clients are accepted, and then periodically: on every reachable
//! shard, each prepared transaction of this node that is not in flight in
//! this process is committed if the decision log holds its commit decision,
//! else rolled back (presumed abort). Idempotent: a transaction already
//! finished is simply not found again.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{gid, parse_gid, Coordinator, LogError, GID_PREFIX};
use crate::backend::{BackendError, ServerConn};
use crate::config::{Config, Shard};
use crate::router::ShardId;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("shard {shard}: max_prepared_transactions is 0; set it above 0 (e.g. 100) in postgresql.conf and restart the shard: Pieskieo needs prepared transactions for two-phase commit")]
    NoPreparedTransactions { shard: ShardId },
    #[error("shard {shard}: another Pieskieo with node_id `{node}` is already running against this shard; every proxy needs its own node_id")]
    DuplicateNode { shard: ShardId, node: String },
    #[error("shard {shard}: {message}")]
    Shard { shard: ShardId, message: String },
    #[error("tls: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// A 64-bit advisory-lock key for a node id (FNV-1a), computed by the proxy,
/// so no configured text is pasted into SQL.
fn lock_key(node: &str) -> i64 {
    crate::protocol::fnv1a(format!("pieskieo-node:{node}").bytes()) as i64
}

/// Holds one control connection per shard: it keeps this node's advisory
/// lock and runs recovery.
pub struct Resolver {
    shards: Vec<Shard>,
    control: Vec<Option<ServerConn>>,
    coord: Arc<Coordinator>,
    /// Filled in as shards are reached, for cross-shard sorts of text.
    collations: Arc<crate::merge::Collations>,
    connect_timeout: Duration,
}

/// First value of a one-row control query.
async fn scalar(conn: &mut ServerConn, sql: &str) -> Result<Option<String>, String> {
    match conn.simple(sql).await {
        Ok(Ok(frames)) => Ok(ServerConn::text_values(&frames)
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .map(|b| String::from_utf8_lossy(&b).into_owned())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

impl Resolver {
    pub fn new(
        cfg: &Config,
        coord: Arc<Coordinator>,
        collations: Arc<crate::merge::Collations>,
    ) -> Resolver {
        let mut shards = cfg.shards.clone();
        shards.sort_by_key(|s| s.id);
        Resolver {
            control: shards.iter().map(|_| None).collect(),
            shards,
            coord,
            collations,
            connect_timeout: Duration::from_millis(cfg.limits.connect_timeout_ms),
        }
    }

    /// Connects, checks `max_prepared_transactions`, takes the node lock.
    async fn open(&self, shard: &Shard) -> Result<ServerConn, StartupError> {
        let id = ShardId(shard.id);
        let mut conn = ServerConn::connect(id, shard, self.connect_timeout)
            .await
            .map_err(|e: BackendError| StartupError::Shard {
                shard: id,
                message: e.to_string(),
            })?;
        let mpt = scalar(&mut conn, "SHOW max_prepared_transactions")
            .await
            .map_err(|message| StartupError::Shard { shard: id, message })?;
        if mpt.as_deref() == Some("0") {
            return Err(StartupError::NoPreparedTransactions { shard: id });
        }
        let collation = scalar(
            &mut conn,
            // `datlocprovider` (PostgreSQL 15+) read through jsonb so older servers answer too.
            "SELECT coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') || ':' || d.datcollate FROM pg_database d WHERE d.datname = current_database()",
        )
        .await
        .map_err(|message| StartupError::Shard { shard: id, message })?;
        self.collations
            .note(shard.id, collation.as_deref().unwrap_or_default());
        let key = lock_key(self.coord.node());
        let got = scalar(&mut conn, &format!("SELECT pg_try_advisory_lock({key})"))
            .await
            .map_err(|message| StartupError::Shard { shard: id, message })?;
        if got.as_deref() != Some("t") {
            return Err(StartupError::DuplicateNode {
                shard: id,
                node: self.coord.node().to_string(),
            });
        }
        Ok(conn)
    }

    /// The startup pass: configuration problems stop the proxy; a shard that
    /// is merely down is retried by the periodic pass.
    pub async fn startup(&mut self) -> Result<(), StartupError> {
        for i in 0..self.shards.len() {
            match self.open(&self.shards[i]).await {
                Ok(c) => self.control[i] = Some(c),
                Err(StartupError::Shard { shard, message }) => {
                    warn!(%shard, error = %message, "shard unreachable at startup; recovery will retry it");
                }
                Err(e) => return Err(e),
            }
        }
        self.pass().await;
        Ok(())
    }

    /// One recovery pass over every shard. Returns how many prepared
    /// transactions it finished.
    // The index walks three parallel vectors while `self` is borrowed mutably.
    #[allow(clippy::needless_range_loop)]
    pub async fn pass(&mut self) -> usize {
        let node = self.coord.node().to_string();
        // Only commits logged before this pass listed anything can be judged
        // done by it: a later one may have prepared after its shard was listed.
        let logged_before = self.coord.log.undone();
        let mut finished = 0;
        let mut reachable = vec![false; self.shards.len()];
        let mut still_prepared = std::collections::HashSet::new();
        for i in 0..self.shards.len() {
            if self.control[i].is_none() {
                match self.open(&self.shards[i]).await {
                    Ok(c) => self.control[i] = Some(c),
                    Err(e) => {
                        if let Some(s) = self.coord.stats.shards.get(i) {
                            s.up.store(false, std::sync::atomic::Ordering::Relaxed);
                        }
                        if !matches!(e, StartupError::Shard { .. }) {
                            warn!(error = %e, "recovery cannot use this shard");
                        }
                        continue;
                    }
                }
            }
            let Some(conn) = self.control[i].as_mut() else {
                continue;
            };
            // `_` is a LIKE wildcard: escape it. The node id is validated to [A-Za-z0-9_].
            let pattern = format!("{GID_PREFIX}_{node}_").replace('_', "\\_") + "%";
            let sql = format!("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE '{pattern}'");
            let frames = match conn.simple(&sql).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    warn!(shard = i, error = %e, "listing prepared transactions failed");
                    continue;
                }
                Err(e) => {
                    warn!(shard = i, error = %e, "control connection lost");
                    self.control[i] = None;
                    continue;
                }
            };
            reachable[i] = true;
            if let Some(s) = self.coord.stats.shards.get(i) {
                s.up.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let mut lost = false;
            for row in ServerConn::text_values(&frames) {
                if lost {
                    break;
                }
                let Some(Some(g)) = row.first() else { continue };
                let Some((txn, shard)) = parse_gid(&node, &String::from_utf8_lossy(g)) else {
                    continue;
                };
                if self.coord.is_in_flight(txn) {
                    still_prepared.insert(txn);
                    continue;
                }
                let commit = self.coord.log.is_committed(txn);
                // Rebuilt from parsed numbers: only proxy-made text goes into SQL.
                let g = gid(&node, txn, shard);
                let action = if commit {
                    format!("COMMIT PREPARED '{g}'")
                } else {
                    format!("ROLLBACK PREPARED '{g}'")
                };
                match conn.simple(&action).await {
                    Ok(Ok(_)) => {
                        finished += 1;
                        let counter = if commit {
                            &self.coord.stats.recovered_commits
                        } else {
                            &self.coord.stats.recovered_rollbacks
                        };
                        crate::admin::Stats::bump(counter, 1);
                        info!(shard = i, gid = %g, committed = commit, "recovery finished an in-doubt transaction");
                    }
                    Ok(Err(e)) if e.code == "42704" => {} // finished meanwhile
                    Ok(Err(e)) => {
                        still_prepared.insert(txn);
                        warn!(shard = i, gid = %g, error = %e, "recovery could not finish a transaction");
                    }
                    Err(e) => {
                        still_prepared.insert(txn);
                        warn!(shard = i, error = %e, "control connection lost");
                        lost = true;
                    }
                }
            }
            if lost {
                self.control[i] = None;
                reachable[i] = false;
            }
        }
        // A logged commit is done once no participant can still hold it.
        for (txn, shards) in logged_before {
            if self.coord.is_in_flight(txn) || still_prepared.contains(&txn) {
                continue;
            }
            if shards
                .iter()
                .all(|s| reachable.get(s.0 as usize).copied().unwrap_or(false))
            {
                let _ = self.coord.log.done(txn).await;
            }
        }
        finished
    }

    /// Runs a pass every `interval`, forever.
    pub fn spawn_periodic(mut self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                self.pass().await;
            }
        })
    }
}
