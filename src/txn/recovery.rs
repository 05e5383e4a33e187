//! Startup checks, the decision schema, and recovery of in-doubt
//! transactions by any proxy.
//!
//! Before clients are accepted, and then periodically, every shard is visited
//! on its own (concurrently, each step under the control timeout, so one
//! stalled shard delays nobody else): each prepared transaction of this
//! cluster older than the grace period and not in flight in this process is
//! decided on its decision shard C by [`decision::decide`] — commit if C
//! holds its commit row, else the resolver's abort row wins — and committed
//! or rolled back. Then, when every shard answered, decision rows nothing
//! can need any more are pruned in batches. Idempotent: a transaction
//! already finished is simply not found again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tracing::{info, warn};

use super::control::ControlError;
use super::decision::{self, Decision};
use super::{Coordinator, Gid, TxnId};
use crate::admin::Stats;
use crate::config::Config;
use crate::router::ShardId;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("shard {shard}: max_prepared_transactions is 0; set it above 0 (e.g. 100) in postgresql.conf and restart the shard: Pieskieo needs prepared transactions for two-phase commit")]
    NoPreparedTransactions { shard: ShardId },
    #[error("shard {shard}: {message}")]
    Shard { shard: ShardId, message: String },
    #[error("shard {shard}: cannot create the decision table pieskieo.decisions ({message}); the configured user needs CREATE on the database (Pieskieo keeps its two-phase-commit decisions there)")]
    Schema { shard: ShardId, message: String },
    #[error("control connections: {0}")]
    Control(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Runs recovery passes; owns nothing but handles.
pub struct Resolver {
    shards: Vec<ShardId>,
    coord: Arc<Coordinator>,
    /// Filled in as shards are reached, for cross-shard sorts of text.
    collations: Arc<crate::merge::Collations>,
    grace: Duration,
    /// Shards whose startup checks and schema are done.
    ready: std::sync::Mutex<HashSet<ShardId>>,
    /// Each shard's clock as read in the previous pass, so before every
    /// listing of this one (microseconds since the Unix epoch).
    marks: std::sync::Mutex<HashMap<ShardId, i64>>,
}

/// What one shard's visit found.
#[derive(Default)]
struct Visit {
    /// The shard answered its listing.
    listed: bool,
    /// Its clock when it answered.
    mark: Option<i64>,
    /// Transactions still prepared there after the visit (in flight, too
    /// young, undecidable), by decision shard.
    still_prepared: Vec<Gid>,
    finished: usize,
}

impl Resolver {
    pub fn new(
        cfg: &Config,
        coord: Arc<Coordinator>,
        collations: Arc<crate::merge::Collations>,
    ) -> Resolver {
        let mut shards: Vec<ShardId> = cfg.shards.iter().map(|s| ShardId(s.id)).collect();
        shards.sort();
        Resolver {
            shards,
            coord,
            collations,
            grace: Duration::from_millis(cfg.txn.recovery_grace_ms),
            ready: Default::default(),
            marks: Default::default(),
        }
    }

    /// Checks `max_prepared_transactions`, notes the collation, creates the
    /// decision schema: once per shard, when first reached.
    async fn open(&self, shard: ShardId) -> Result<(), StartupError> {
        if self
            .ready
            .lock()
            .map(|r| r.contains(&shard))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let control = self.coord.control();
        let err = |e: ControlError| StartupError::Shard {
            shard,
            message: e.to_string(),
        };
        let mpt = control
            .scalar(shard, "SHOW max_prepared_transactions")
            .await
            .map_err(err)?;
        if mpt.as_deref() == Some("0") {
            return Err(StartupError::NoPreparedTransactions { shard });
        }
        let collation = control
            .scalar(
                shard,
                // `datlocprovider` (PostgreSQL 15+) read through jsonb so older servers answer too.
                "SELECT coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') || ':' || d.datcollate FROM pg_database d WHERE d.datname = current_database()",
            )
            .await
            .map_err(err)?;
        self.collations
            .note(shard.0, collation.as_deref().unwrap_or_default());
        match control.query(shard, decision::SCHEMA_SQL).await {
            Ok(_) => {}
            // The server refused: a configuration problem, not an outage.
            Err(e) if e.code().is_some() => {
                return Err(StartupError::Schema {
                    shard,
                    message: e.to_string(),
                })
            }
            Err(e) => return Err(err(e)),
        }
        if let Ok(mut r) = self.ready.lock() {
            r.insert(shard);
        }
        Ok(())
    }

    /// The startup pass: configuration problems stop the proxy; a shard that
    /// is merely down is retried by the periodic pass.
    pub async fn startup(&self) -> Result<(), StartupError> {
        let opened = join_all(self.shards.iter().map(|s| self.open(*s))).await;
        for (shard, r) in self.shards.iter().zip(opened) {
            match r {
                Ok(()) => {}
                Err(StartupError::Shard { message, .. }) => {
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
    pub async fn pass(&self) -> usize {
        let control = self.coord.control();
        // A commit row decided before its shard's clock read in the previous
        // pass belongs to a transaction whose PREPAREs all happened before
        // this pass listed anything: what is left of it shows in the listings.
        let marks = self
            .marks
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default();
        let visits = join_all(self.shards.iter().map(|s| self.visit(*s))).await;
        let finished = visits.iter().map(|v| v.finished).sum();
        if visits.iter().all(|v| v.listed) {
            let mut keep: HashMap<ShardId, Vec<TxnId>> = HashMap::new();
            for g in visits.iter().flat_map(|v| &v.still_prepared) {
                keep.entry(g.decider).or_default().push(g.txn);
            }
            let prunes = self.shards.iter().filter_map(|s| {
                let mark = *marks.get(s)?;
                let sql = decision::prune_sql(mark, keep.get(s).map(Vec::as_slice).unwrap_or(&[]));
                Some(async move { (*s, control.query(*s, &sql).await) })
            });
            for (shard, r) in join_all(prunes).await {
                if let Err(e) = r {
                    warn!(%shard, error = %e, "pruning decision rows failed");
                }
            }
        }
        if let Ok(mut m) = self.marks.lock() {
            for (s, v) in self.shards.iter().zip(&visits) {
                if let Some(mark) = v.mark {
                    m.insert(*s, mark);
                }
            }
        }
        finished
    }

    /// Lists one shard's prepared transactions and finishes those it can.
    async fn visit(&self, shard: ShardId) -> Visit {
        let mut visit = Visit::default();
        let up = self.open(shard).await;
        if let Some(s) = self.coord.stats.shards.get(shard.0 as usize) {
            s.up.store(up.is_ok(), std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(e) = up {
            if !matches!(e, StartupError::Shard { .. }) {
                warn!(error = %e, "recovery cannot use this shard");
            }
            return visit;
        }
        let control = self.coord.control();
        let cluster = self.coord.cluster();
        // The first row carries the shard's clock, the others its prepared
        // transactions and their ages.
        let sql = format!(
            "SELECT NULL::text, NULL::int8, (extract(epoch from clock_timestamp()) * 1000000)::int8 UNION ALL SELECT gid, (extract(epoch from (now() - prepared)) * 1000)::int8, NULL FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE '{}'",
            Gid::pattern(cluster)
        );
        let rows = match control.query(shard, &sql).await {
            Ok(r) => r,
            Err(e) => {
                warn!(%shard, error = %e, "listing prepared transactions failed");
                return visit;
            }
        };
        visit.listed = true;
        for row in rows {
            if let (Some(None), Some(Some(clock))) = (row.first(), row.get(2)) {
                visit.mark = clock.parse().ok();
                continue;
            }
            let (Some(Some(text)), Some(Some(age))) = (row.first(), row.get(1)) else {
                continue;
            };
            let Some(g) = Gid::parse(cluster, text) else {
                continue;
            };
            let young = age.parse::<u64>().unwrap_or(0) < self.grace.as_millis() as u64;
            if young || self.coord.is_in_flight(g.txn) || g.shard != shard {
                visit.still_prepared.push(g);
                continue;
            }
            let decision = match decision::decide(control, g.txn, g.decider).await {
                Ok(d) => d,
                Err(e) => {
                    warn!(%shard, decider = %g.decider, txn = %g.txn, error = %e, "cannot decide an in-doubt transaction yet");
                    visit.still_prepared.push(g);
                    continue;
                }
            };
            // Rebuilt from parsed numbers: only proxy-made text goes into SQL.
            let gid = g.text(cluster);
            let (action, counter) = match decision {
                Decision::Commit => (
                    format!("COMMIT PREPARED '{gid}'"),
                    &self.coord.stats.recovered_commits,
                ),
                Decision::Abort => (
                    format!("ROLLBACK PREPARED '{gid}'"),
                    &self.coord.stats.recovered_rollbacks,
                ),
            };
            match control.query(shard, &action).await {
                Ok(_) => {
                    visit.finished += 1;
                    Stats::bump(counter, 1);
                    info!(%shard, %gid, ?decision, "recovery finished an in-doubt transaction");
                }
                // Finished meanwhile (by its coordinator or another resolver).
                Err(e) if e.code() == Some("42704") => {}
                Err(e) => {
                    visit.still_prepared.push(g);
                    warn!(%shard, %gid, error = %e, "recovery could not finish a transaction");
                }
            }
        }
        visit
    }

    /// Runs a pass every `interval`, forever.
    pub fn spawn_periodic(self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                self.pass().await;
            }
        })
    }
}
