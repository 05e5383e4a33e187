//! What a statement names: its relations sorted into sharded, reference,
//! catalog and local tables, and the facts the routing rules look at
//! (aggregates, windows, locks, calls that may write), gathered in one walk.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, ObjectName, ObjectNamePart, Query, SetExpr, Statement, TableFactor, Visit, Visitor,
};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::stage;
use super::{RouteError, ShardMap, TableRule, Writes};

pub(super) fn ident_name(id: &sqlparser::ast::Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

/// `(schema, name)` of an object name, folded as PostgreSQL folds identifiers.
pub(super) fn object_parts(name: &ObjectName) -> (Option<String>, String) {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(id) => ident_name(id),
            ObjectNamePart::Function(f) => f.to_string(),
        })
        .collect();
    let last = parts.last().cloned().unwrap_or_default();
    let schema = if parts.len() >= 2 {
        parts.get(parts.len() - 2).cloned()
    } else {
        None
    };
    (schema, last)
}

/// What a relation named in a statement is, for routing.
pub(super) enum Rel<'m> {
    Sharded(&'m TableRule),
    Reference(String),
    /// System catalogs exist on every shard.
    Catalog,
    /// Not declared: lives on the default shard.
    Other(String),
}

pub(super) fn classify_rel<'m>(
    name: &ObjectName,
    map: &'m ShardMap,
    ctes: &HashSet<String>,
) -> Rel<'m> {
    let (schema, table) = object_parts(name);
    if schema.is_none() && ctes.contains(&table) {
        return Rel::Catalog;
    }
    if matches!(schema.as_deref(), Some("pg_catalog" | "information_schema"))
        || table.starts_with("pg_")
        || schema.is_none() && stage::is_marker(&table)
    {
        return Rel::Catalog;
    }
    if let Some(rule) = map.tables.get(&table) {
        return Rel::Sharded(rule);
    }
    if map.reference.contains(&table) {
        return Rel::Reference(table);
    }
    Rel::Other(table)
}

pub(super) const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "xmlagg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "range_agg",
    "range_intersect_agg",
];

/// Everything about a statement the routing rules look at, gathered in one walk.
#[derive(Default)]
pub(super) struct Facts {
    relations: Vec<ObjectName>,
    pub(super) ctes: HashSet<String>,
    pub(super) queries: usize,
    pub(super) aggregates: bool,
    pub(super) windows: bool,
    skip_next_relation: bool,
    /// A locking clause (`FOR UPDATE`, ...) anywhere: a subquery, a CTE.
    locks: bool,
    /// `SELECT ... INTO`: creates a table.
    select_into: bool,
    /// A call of a function not known to be read-only (it may write).
    unknown_functions: bool,
}

/// Whether `sql` may call a function the classifier does not know (one that
/// may write, or take snapshots as it runs); `true` when it cannot tell.
pub fn calls_unknown_function(sql: &str, map: &ShardMap) -> bool {
    let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return true;
    };
    stmts
        .iter()
        .any(|s| Tables::gather(s, map).facts.unknown_functions)
}

impl Facts {
    /// What a query's own text proves about writing.
    pub(super) fn writes(&self) -> Writes {
        if self.locks || self.select_into {
            Writes::Yes
        } else if self.unknown_functions {
            Writes::Maybe
        } else {
            Writes::No
        }
    }

    fn call(&mut self, name: &ObjectName) {
        let (schema, name) = object_parts(name);
        let builtin = matches!(schema.as_deref(), None | Some("pg_catalog"));
        if !builtin || !READ_ONLY_FUNCTIONS.contains(&name.as_str()) {
            self.unknown_functions = true;
        }
    }
}

/// Functions that never write (besides the aggregates): calls of anything
/// else make a statement "may write", checked on the shard at commit.
const READ_ONLY_FUNCTIONS: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "variance",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "abs",
    "ceil",
    "ceiling",
    "floor",
    "round",
    "trunc",
    "mod",
    "power",
    "sqrt",
    "exp",
    "ln",
    "log",
    "sign",
    "random",
    "length",
    "char_length",
    "octet_length",
    "lower",
    "upper",
    "initcap",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "substr",
    "substring",
    "replace",
    "concat",
    "concat_ws",
    "left",
    "right",
    "position",
    "strpos",
    "split_part",
    "repeat",
    "reverse",
    "lpad",
    "rpad",
    "format",
    "to_char",
    "to_date",
    "to_timestamp",
    "to_number",
    "date_trunc",
    "date_part",
    "age",
    "now",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "generate_series",
    "unnest",
    "array_length",
    "array_position",
    "cardinality",
    "row_number",
    "rank",
    "dense_rank",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "ntile",
    "percent_rank",
    "cume_dist",
    "md5",
    "encode",
    "decode",
    "to_json",
    "to_jsonb",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "jsonb_array_length",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "version",
    "current_database",
    "current_user",
    "current_schema",
    "current_setting",
    "pg_typeof",
    "pg_backend_pid",
    "pg_current_xact_id_if_assigned",
    "hashint8extended",
    "hashtextextended",
];

impl Visitor for Facts {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        self.queries += 1;
        self.locks |= !q.locks.is_empty();
        if let SetExpr::Select(sel) = q.body.as_ref() {
            self.select_into |= sel.into.is_some();
        }
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.insert(ident_name(&cte.alias.name));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        // `FROM generate_series(...)` is a function call, not a table.
        if let TableFactor::Table {
            name,
            args: Some(_),
            ..
        } = t
        {
            self.skip_next_relation = true;
            self.call(name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        if std::mem::take(&mut self.skip_next_relation) {
            return ControlFlow::Continue(());
        }
        self.relations.push(r.clone());
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            if f.over.is_some() {
                self.windows = true;
            }
            self.call(&f.name);
            let (_, name) = object_parts(&f.name);
            if AGGREGATES.contains(&name.as_str()) {
                self.aggregates = true;
            }
        }
        ControlFlow::Continue(())
    }
}

/// The relations of a statement, sorted into kinds.
pub(super) struct Tables<'m> {
    pub(super) facts: Facts,
    pub(super) sharded: Vec<&'m TableRule>,
    pub(super) reference: Vec<String>,
    pub(super) other: Vec<String>,
}

impl<'m> Tables<'m> {
    pub(super) fn gather(stmt: &Statement, map: &'m ShardMap) -> Tables<'m> {
        let mut facts = Facts::default();
        let _ = stmt.visit(&mut facts);
        let mut t = Tables {
            sharded: Vec::new(),
            reference: Vec::new(),
            other: Vec::new(),
            facts,
        };
        for r in &t.facts.relations {
            match classify_rel(r, map, &t.facts.ctes) {
                Rel::Sharded(rule) => t.sharded.push(rule),
                Rel::Reference(n) => t.reference.push(n),
                Rel::Catalog => {}
                Rel::Other(n) => t.other.push(n),
            }
        }
        t
    }

    pub(super) fn distributed(&self) -> Option<String> {
        self.sharded
            .first()
            .map(|r| r.name.clone())
            .or_else(|| self.reference.first().cloned())
    }

    /// Sharded tables may only meet reference tables and catalogs.
    pub(super) fn check_no_local_mix(&self, map: &ShardMap) -> Result<(), RouteError> {
        if let (Some(d), Some(o)) = (self.distributed(), self.other.first()) {
            return Err(RouteError::Unsupported(format!(
                "statement uses distributed table \"{d}\" together with \"{o}\", which is neither sharded nor a reference table and lives only on shard {}",
                map.default_shard
            )));
        }
        Ok(())
    }
}
