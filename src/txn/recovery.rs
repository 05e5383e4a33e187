//! Startup checks, the decision schema, and recovery of in-doubt
//! transactions by any proxy.
//!
//! Before clients are accepted, and then periodically, every shard is visited
//! on its own (concurrently, each step under the control timeout, so one
//! stalled shard delays nobody else): each prepared transaction of this
//! cluster older than the grace period and not in flight in this process is
//! decided on its decision shard C by [`decision::decide`] — commit if C
//! holds its commit row, else the resolver's abort row wins — and committed
//! or rolled back. Each shard keeps its own schedule, and transactions are
//! decided per decision shard concurrently. A shard's decision rows nothing
//! can need any more are pruned in batches once every shard has been listed
//! since that shard's clock was read. Idempotent: a transaction already
//! finished is simply not found again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// What the listener needs from the configuration (TLS files, the
    /// `auth_query` pool); the message says which.
    #[error("{0}")]
    Frontend(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Runs recovery; owns nothing but handles.
pub struct Resolver {
    shards: Vec<ShardId>,
    coord: Arc<Coordinator>,
    /// Filled in as shards are reached, for cross-shard sorts of text.
    collations: Arc<crate::merge::Collations>,
    grace: Duration,
    /// Shards whose startup checks and schema are done.
    ready: std::sync::Mutex<HashSet<ShardId>>,
    /// Each shard's latest answered listing.
    listings: std::sync::Mutex<HashMap<ShardId, Listing>>,
    /// Per decision shard, the clock mark its next prune may use: taken at
    /// one of its listings, usable once every shard was listed after it.
    marks: std::sync::Mutex<HashMap<ShardId, Mark>>,
}

/// A shard's clock as read by one of its listings.
#[derive(Clone, Copy)]
struct Mark {
    /// Microseconds since the Unix epoch, on that shard's clock.
    clock_us: i64,
    /// When its answer arrived here: after the clock was read.
    read_by: Instant,
}

/// What one listing of a shard left behind.
struct Listing {
    /// When the listing was sent: before the shard looked.
    sent: Instant,
    /// Transactions still prepared there after the visit (in flight, too
    /// young, undecidable), by decision shard.
    still_prepared: Vec<Gid>,
}

/// What one shard's visit found.
struct Visit {
    sent: Instant,
    /// The shard's clock, when it answered its listing.
    mark: Option<Mark>,
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
            listings: Default::default(),
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

    /// One recovery pass: every shard visited once, concurrently. Returns
    /// how many prepared transactions it finished.
    pub async fn pass(&self) -> usize {
        join_all(self.shards.iter().map(|s| self.round(*s)))
            .await
            .into_iter()
            .sum()
    }

    /// One shard's turn: its visit, then the pruning of its decision rows
    /// when every shard has been listed since its previous mark.
    async fn round(&self, shard: ShardId) -> usize {
        let visit = self.visit(shard).await;
        let Some(mark) = visit.mark else {
            return visit.finished;
        };
        if let Ok(mut l) = self.listings.lock() {
            l.insert(
                shard,
                Listing {
                    sent: visit.sent,
                    still_prepared: visit.still_prepared,
                },
            );
        }
        self.prune(shard, mark).await;
        visit.finished
    }

    /// A commit row decided before a mark of its shard C belongs to a
    /// transaction whose PREPAREs all happened before that clock was read:
    /// any listing sent after its answer arrived shows what is left of that
    /// transaction on the listed shard. Once every shard has such a listing,
    /// C's rows decided before the mark that no listing still holds are
    /// done with. `fresh` becomes the mark for C's next prune.
    async fn prune(&self, shard: ShardId, fresh: Mark) {
        let Some(mark) = self.marks.lock().ok().and_then(|m| m.get(&shard).copied()) else {
            if let Ok(mut m) = self.marks.lock() {
                m.insert(shard, fresh);
            }
            return;
        };
        let keep: Option<Vec<TxnId>> = self.listings.lock().ok().and_then(|l| {
            let mut keep = Vec::new();
            for s in &self.shards {
                let listing = l.get(s).filter(|x| x.sent >= mark.read_by)?;
                keep.extend(
                    listing
                        .still_prepared
                        .iter()
                        .filter(|g| g.decider == shard)
                        .map(|g| g.txn),
                );
            }
            Some(keep)
        });
        // Some shard has not been listed since: the mark waits for it.
        let Some(keep) = keep else { return };
        let sql = decision::prune_sql(mark.clock_us, &keep);
        if let Err(e) = self.coord.control().query(shard, &sql).await {
            warn!(%shard, error = %e, "pruning decision rows failed");
            return;
        }
        if let Ok(mut m) = self.marks.lock() {
            m.insert(shard, fresh);
        }
    }

    /// Lists one shard's prepared transactions and finishes those it can.
    /// Transactions are decided per decision shard concurrently, so one
    /// stalled decision shard holds up only its own.
    async fn visit(&self, shard: ShardId) -> Visit {
        let mut visit = Visit {
            sent: Instant::now(),
            mark: None,
            still_prepared: Vec::new(),
            finished: 0,
        };
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
        visit.sent = Instant::now();
        let rows = match control.query(shard, &sql).await {
            Ok(r) => r,
            Err(e) => {
                warn!(%shard, error = %e, "listing prepared transactions failed");
                return visit;
            }
        };
        let read_by = Instant::now();
        let mut due: HashMap<ShardId, Vec<Gid>> = HashMap::new();
        for row in rows {
            if let (Some(None), Some(Some(clock))) = (row.first(), row.get(2)) {
                visit.mark = clock
                    .parse()
                    .ok()
                    .map(|clock_us| Mark { clock_us, read_by });
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
            due.entry(g.decider).or_default().push(g);
        }
        let by_decider = join_all(due.into_values().map(|gids| async move {
            let mut finished = 0;
            let mut left = Vec::new();
            for g in gids {
                if self.finish(shard, g).await {
                    finished += 1;
                } else {
                    left.push(g);
                }
            }
            (finished, left)
        }))
        .await;
        for (finished, left) in by_decider {
            visit.finished += finished;
            visit.still_prepared.extend(left);
        }
        visit
    }

    /// Decides one in-doubt transaction on its decision shard and finishes
    /// it on `shard`; false when it is still prepared there.
    async fn finish(&self, shard: ShardId, g: Gid) -> bool {
        let control = self.coord.control();
        let cluster = self.coord.cluster();
        let decision = match decision::decide(control, g.txn, g.decider).await {
            Ok(d) => d,
            Err(e) => {
                warn!(%shard, decider = %g.decider, txn = %g.txn, error = %e, "cannot decide an in-doubt transaction yet");
                return false;
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
                Stats::bump(counter, 1);
                info!(%shard, %gid, ?decision, "recovery finished an in-doubt transaction");
                true
            }
            // Finished meanwhile (by its coordinator or another resolver).
            Err(e) if e.code() == Some("42704") => true,
            Err(e) => {
                warn!(%shard, %gid, error = %e, "recovery could not finish a transaction");
                false
            }
        }
    }

    /// Visits every shard every `interval`, forever, each on its own
    /// schedule: a shard that stalls delays only its own visits.
    pub fn spawn_periodic(self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let this = &self;
            join_all(this.shards.iter().map(|s| async move {
                loop {
                    tokio::time::sleep(interval).await;
                    this.round(*s).await;
                }
            }))
            .await;
        })
    }
}
