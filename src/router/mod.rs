//! The router: a pure function from one SQL statement and the shard map to a
//! [`Plan`] — which shards run it and how. No I/O here.

mod cache;
mod classify;
mod copy;
mod copy_rows;
mod hash;
mod inline;
mod key;
mod keyed;
mod normalize;
mod preview;
mod settings;
mod split;

#[cfg(test)]
mod key_tests;
#[cfg(test)]
mod subquery_tests;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;

pub use cache::{Later, PlanCache, Prepare};
pub use classify::{
    calls_unknown_function, fill_keys, materialize, materialize_typed, with_columns,
};
pub use copy::{CopyFormat, CopyIn, CopyKeys, CopyOptions, CopyOut, CopyPlacement, Header};
pub use copy_rows::{Dest, RowError, RowRouter};
pub use hash::partition_hash;
pub use inline::{inline_params, max_param, param_literal, typed_literal};
pub use key::{KeyError, KeyType, KeyValue};
pub use keyed::KeyedPlan;
pub use normalize::Normalized;
pub use preview::{preview, PREVIEW_COLUMNS};
pub use settings::may_change_settings;
pub use split::{after_words, first_word_in, leading_words, matching_paren, split_statements};

use crate::config::{toml_key, Config, Method};
use crate::error::SqlState;

/// A sample configuration (three shards; hash, range and list tables; a
/// reference table) for tests, benchmarks and fuzzing.
#[doc(hidden)]
pub const SAMPLE_CONFIG: &str = include_str!("sample.toml");

/// A shard's id: its position in the shard list, and its hash remainder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    One(ShardId),
    /// Any one shard will do: statements on reference tables, catalogs or no
    /// table at all (`SELECT 1`). The session picks the shard it already uses.
    Any,
    /// Several, but not all, shards; sorted, no repeats, at least two.
    Some(Vec<ShardId>),
    All,
}

impl Route {
    /// Builds the narrowest route for a set of shards.
    pub fn from_shards(mut shards: Vec<ShardId>, total: u32) -> Route {
        shards.sort();
        shards.dedup();
        match shards.len() {
            1 => Route::One(shards[0]),
            n if n as u32 >= total => Route::All,
            _ => Route::Some(shards),
        }
    }

    pub fn shards(&self, total: u32) -> Vec<ShardId> {
        match self {
            Route::One(s) => vec![*s],
            Route::Any => vec![ShardId(0)],
            Route::Some(v) => v.clone(),
            Route::All => (0..total).map(ShardId).collect(),
        }
    }
}

/// Whether a statement (or a participant's statements so far) wrote.
/// Ordered: `a | b` is the less certain-to-be-read of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Writes {
    /// Proven read-only from the text: plain reads of tables and of
    /// functions known to be read-only.
    #[default]
    No,
    /// Not proven either way (a function the classifier does not know, a
    /// statement it cannot parse): the coordinator asks the shard
    /// (`pg_current_xact_id_if_assigned()`) before deciding.
    Maybe,
    /// Writes or locks rows, or changes the schema.
    Yes,
}

impl Writes {
    /// Anything but a proven read.
    pub fn may(self) -> bool {
        self != Writes::No
    }
}

impl From<bool> for Writes {
    fn from(write: bool) -> Writes {
        if write {
            Writes::Yes
        } else {
            Writes::No
        }
    }
}

impl std::ops::BitOr for Writes {
    type Output = Writes;
    fn bitor(self, other: Writes) -> Writes {
        self.max(other)
    }
}

impl std::ops::BitOrAssign for Writes {
    fn bitor_assign(&mut self, other: Writes) {
        *self = (*self).max(other);
    }
}

/// What to do with one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Send the statement text unchanged. `write` says whether it may write
    /// (see [`Writes`]); never `No` for something that could.
    Forward {
        route: Route,
        write: Writes,
    },
    /// A `SELECT` several shards answer whose rows the proxy must combine
    /// (sort, limit, aggregate, group): each shard runs `plan.sql`.
    Merge {
        route: Route,
        plan: std::sync::Arc<crate::merge::MergePlan>,
    },
    /// A write to every shard that holds a copy (DDL, reference tables):
    /// the client is answered as if there were one copy.
    Replicate,
    /// A multi-row `INSERT` whose rows belong to several shards: one
    /// statement per shard, tags summed.
    Split {
        parts: Vec<SplitPart>,
    },
    /// `COPY ... FROM STDIN`: the client's rows go to the shards of their
    /// keys (or every shard, or the default shard), one COPY per shard.
    CopyIn(Box<CopyIn>),
    /// `COPY ... TO STDOUT` several shards answer: their rows concatenated.
    CopyOut(Box<CopyOut>),
    /// `INSERT INTO sharded (cols) SELECT ...` whose SELECT reads no
    /// sharded table: the SELECT runs on `source` (as `COPY (select) TO
    /// STDOUT`) and its rows go to their shards as in `into`.
    InsertSelect {
        into: Box<CopyIn>,
        select: String,
        source: Route,
        /// The SELECT reads tables (not only functions such as
        /// `generate_series`): it would miss writes of the client's block.
        reads_tables: bool,
    },
    Begin,
    Commit,
    Rollback,
    Savepoint(String),
    Release(String),
    RollbackTo(String),
    /// A session setting (`SET`, `RESET`, `DISCARD ALL`, ...).
    Set(SetCommand),
    /// SQL-level `PREPARE name [(types)] AS body`: the parts as the client wrote them.
    Prepare {
        name: String,
        types: String,
        body: String,
    },
    /// SQL-level `EXECUTE name [(args)]`.
    Execute {
        name: String,
        args: String,
    },
    /// `DEALLOCATE [PREPARE] name`, or `ALL` (`None`).
    Deallocate(Option<String>),
    /// `PREVIEW statement`: where it would go, without running it.
    Preview(String),
    /// An `INSERT` into a sharded table that leaves some rows' shard key to
    /// the cluster: the session obtains the keys, fills them in with
    /// [`fill_keys`] and plans the statement that results.
    NeedKeys(KeyRequest),
    /// An `INSERT` into a sharded table without a column list: the session
    /// reads the table's columns from the catalog, lists the first `count`
    /// of them with [`with_columns`] (what PostgreSQL fills in the same
    /// order), and plans the statement that results.
    NeedColumns(ColumnRequest),
    /// A query in two stages: each stage (a subquery or CTE over sharded
    /// tables, or the aggregates an expression computes over) runs first,
    /// then the outer query with the stages' rows in place of them.
    Staged(std::sync::Arc<StagedPlan>),
}

/// See [`Plan::Staged`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedPlan {
    pub stages: Vec<Stage>,
    /// The outer query, stage `i` written as `SELECT * FROM pieskieo_stage_i`.
    pub outer: String,
    /// How the filled outer statement runs, when that is known before the
    /// stages' rows are in place (a COPY over one stage's rows: any one
    /// shard), so the session need not plan a statement of every row again;
    /// `None`: plan the filled statement.
    pub filled: Option<Box<Plan>>,
}

/// One stage of a [`StagedPlan`]: a cross-shard read of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// The subquery as a statement of its own.
    pub sql: String,
    /// How it runs: [`Plan::Forward`] (no write) or [`Plan::Merge`].
    pub plan: Plan,
}

impl StagedPlan {
    /// The outer query with each stage's rows (from [`materialize`]) in place.
    ///
    /// Only the markers the planner wrote are replaced: the tokens `SELECT *
    /// FROM pieskieo_stage_<i>`, never the same text inside a string
    /// constant or a quoted name (a bound value, or a stored value passed
    /// between stages, can hold anything).
    pub fn fill(&self, rows: &[String]) -> String {
        inline::fill_markers(&self.outer, rows).unwrap_or_else(|| self.outer.clone())
    }
}

/// The columns an `INSERT` without a column list fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRequest {
    /// The table as the statement names it (for the catalog lookup).
    pub table: String,
    /// How many values each row gives.
    pub count: usize,
}

/// The keys an `INSERT` needs before it can be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRequest {
    /// The table as the statement names it (for the catalog lookup).
    pub table: String,
    /// The shard key column.
    pub column: String,
    /// How many rows need a key.
    pub rows: usize,
    pub source: KeySource,
}

/// Where keys chosen by the cluster come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// The column's own sequence (`serial`, `bigserial`, identity) on the
    /// sequence shard, the default shard: one sequence for the whole
    /// cluster, so keys are unique and numbered as one server numbers them.
    Sequence,
    /// A random (version 4) uuid made by the proxy.
    Random,
    /// The cluster cannot choose such keys (text).
    None,
}

impl Plan {
    /// Transaction-block control: the block state machine decides these
    /// itself, in every state (even a failed block).
    pub fn is_block_control(&self) -> bool {
        matches!(
            self,
            Plan::Begin
                | Plan::Commit
                | Plan::Rollback
                | Plan::Savepoint(_)
                | Plan::Release(_)
                | Plan::RollbackTo(_)
        )
    }
}

/// One shard's share of a split `INSERT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitPart {
    pub shard: ShardId,
    /// The statement with only this shard's rows.
    pub sql: String,
    /// With parameters: the statement's `$k` is the client's parameter
    /// `params[k - 1]` (0-based); empty without parameters.
    pub params: Vec<usize>,
    /// The positions (0-based) in the client's `VALUES` of this part's rows.
    pub rows: Vec<usize>,
}

/// Session-setting statements, keyed by the setting they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetCommand {
    /// `SET [SESSION] name ...`: lasts for the client's session.
    Set(String),
    /// `RESET name`.
    Reset(String),
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION ...`: the
    /// `default_transaction_*` settings it sets, each with a statement that
    /// sets it alone.
    Defaults(Vec<(String, String)>),
    /// `RESET ALL` / `DISCARD ALL`.
    ResetAll,
    /// `SET LOCAL ...`, `SET TRANSACTION ...`, and `SET`/`RESET` of the
    /// current transaction's own modes (`transaction_isolation`,
    /// `transaction_read_only`, `transaction_deferrable`, which every
    /// transaction starts afresh): lasts until the transaction ends.
    Local,
}

/// Why a statement cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{0}")]
    Syntax(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("shard key column \"{column}\" of table \"{table}\" cannot be NULL")]
    NullKey { table: String, column: String },
    #[error("no shard of table \"{table}\" holds key {key}")]
    NoShard { table: String, key: String },
    #[error("{0}")]
    BadKey(KeyError),
    /// The statement names the proxy's own schema (`pieskieo`, where the
    /// commit decisions live): clients may not read or change it.
    #[error("permission denied for schema pieskieo: it holds Pieskieo's commit decisions and is reserved to the proxy (pg_dump: add --exclude-schema=pieskieo)")]
    Reserved,
    /// A COPY option names a column its column list leaves out (the shard
    /// key, which the shards' list has): PostgreSQL's error.
    #[error("{option} column \"{column}\" not referenced by COPY")]
    NotInCopy {
        option: &'static str,
        column: String,
    },
}

impl RouteError {
    pub fn sqlstate(&self) -> SqlState {
        match self {
            RouteError::Syntax(_) => SqlState::SYNTAX_ERROR,
            RouteError::Unsupported(_) => SqlState::FEATURE_NOT_SUPPORTED,
            RouteError::NullKey { .. } => SqlState::NOT_NULL_VIOLATION,
            RouteError::NoShard { .. } => SqlState::CHECK_VIOLATION,
            RouteError::BadKey(KeyError::Invalid(_)) => SqlState::INVALID_TEXT_REPRESENTATION,
            RouteError::BadKey(KeyError::OutOfRange(_)) => SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            RouteError::Reserved => SqlState::INSUFFICIENT_PRIVILEGE,
            RouteError::NotInCopy { .. } => SqlState::INVALID_COLUMN_REFERENCE,
        }
    }
}

/// How one sharded table maps keys to shards.
#[derive(Debug, Clone)]
pub struct TableRule {
    pub name: String,
    pub key: String,
    pub key_type: KeyType,
    pub mapping: Mapping,
}

#[derive(Debug, Clone)]
pub enum Mapping {
    Hash,
    /// `(from inclusive, to exclusive, shard)`; `None` is unbounded.
    Range(Vec<(Option<KeyValue>, Option<KeyValue>, ShardId)>),
    List(HashMap<KeyValue, ShardId>),
}

impl TableRule {
    /// The shard that owns `key`, or `None` when range/list rules cover no such key.
    pub fn shard_for(&self, key: &KeyValue, shards: u32) -> Option<ShardId> {
        match &self.mapping {
            Mapping::Hash => {
                let h = partition_hash(key, self.key_type == KeyType::Int8);
                Some(ShardId((h % shards as u64) as u32))
            }
            Mapping::Range(rules) => rules
                .iter()
                .find(|(from, to, _)| {
                    from.as_ref().is_none_or(|f| key >= f) && to.as_ref().is_none_or(|t| key < t)
                })
                .map(|r| r.2),
            Mapping::List(map) => map.get(key).copied(),
        }
    }

    /// [`TableRule::shard_for`], or the error a row with no shard gets.
    pub fn place(&self, key: &KeyValue, shards: u32) -> Result<ShardId, RouteError> {
        self.shard_for(key, shards)
            .ok_or_else(|| RouteError::NoShard {
                table: self.name.clone(),
                key: key.to_string(),
            })
    }
}

/// The routing view of the configuration.
#[derive(Debug, Clone)]
pub struct ShardMap {
    pub shards: u32,
    pub default_shard: ShardId,
    pub tables: HashMap<String, TableRule>,
    pub reference: HashSet<String>,
}

impl ShardMap {
    /// Builds the map from a validated configuration.
    pub fn from_config(cfg: &Config) -> ShardMap {
        let tables = cfg
            .tables
            .iter()
            .map(|t| {
                let mapping = match t.method {
                    Method::Hash => Mapping::Hash,
                    Method::Range => Mapping::Range(
                        t.ranges
                            .iter()
                            .map(|r| {
                                let conv = |v: &Option<toml::Value>| {
                                    v.as_ref().and_then(|v| toml_key(t.key_type, v).ok())
                                };
                                (conv(&r.from), conv(&r.to), ShardId(r.shard))
                            })
                            .collect(),
                    ),
                    Method::List => Mapping::List(
                        t.lists
                            .iter()
                            .flat_map(|l| {
                                l.values
                                    .iter()
                                    .filter_map(|v| toml_key(t.key_type, v).ok())
                                    .map(move |k| (k, ShardId(l.shard)))
                            })
                            .collect(),
                    ),
                };
                (
                    t.name.clone(),
                    TableRule {
                        name: t.name.clone(),
                        key: t.key.clone(),
                        key_type: t.key_type,
                        mapping,
                    },
                )
            })
            .collect();
        ShardMap {
            shards: cfg.shards.len() as u32,
            default_shard: ShardId(cfg.default_shard),
            tables,
            reference: cfg.reference_tables.iter().cloned().collect(),
        }
    }
}

/// Plans one statement (one element of [`split_statements`]).
pub fn plan(sql: &str, map: &ShardMap) -> Result<Plan, RouteError> {
    plan_bound(sql, map, &[])
}

/// A parameter value as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    Null,
    /// The value's text form.
    Text(String),
    /// A value the proxy cannot read (binary of an unknown type): it
    /// constrains nothing, so routing never guesses from it.
    Unknown,
}

/// The values of `EXECUTE name (args)` as the router sees them.
pub fn execute_args(args: &str) -> Vec<Bound> {
    classify::literal_bounds(args)
}

/// Plans a statement with `$n` parameters bound to `params[n - 1]`. The
/// values are used for routing only; the statement itself is sent as the
/// client wrote it.
pub fn plan_bound(sql: &str, map: &ShardMap, params: &[Bound]) -> Result<Plan, RouteError> {
    if classify::names_reserved_schema(sql) {
        return Err(RouteError::Reserved);
    }
    if let Some(p) = classify::lexical(sql)? {
        return Ok(p);
    }
    match leading_words(sql, 1).first().map(String::as_str) {
        Some("copy") => return copy::plan(sql, map),
        // A lock on a distributed table is taken on every shard, in the
        // same mode (outside a block each shard refuses it, as PostgreSQL does).
        Some("lock") if classify::sharded_table_named(sql, map, true).is_some() => {
            return Ok(Plan::Forward {
                route: Route::All,
                write: Writes::No,
            })
        }
        // VACUUM and ANALYZE cannot run in a transaction block: every shard
        // runs them on its own (outside a block; `Writes::No` keeps them out
        // of a proxy block), each on its own rows. Inside the client's block
        // the shards refuse them, as PostgreSQL does.
        Some("vacuum" | "analyze" | "analyse")
            if classify::sharded_table_named(sql, map, true).is_some()
                || !copy::names_any_table(sql) =>
        {
            return Ok(Plan::Forward {
                route: Route::All,
                write: Writes::No,
            });
        }
        _ => {}
    }
    classify::parsed(sql, map, params)
}
