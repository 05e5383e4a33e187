//! Two-stage plans: a query whose subqueries or CTEs read sharded tables
//! across shards, or whose select list computes over aggregates. Each such
//! subquery runs first as a cross-shard read of its own (merged as any
//! other); its rows are then written into the outer query as `VALUES` with
//! their exact types, and the outer query runs like any statement — on one
//! shard when it reads nothing sharded any more — so PostgreSQL itself
//! evaluates every function, cast and comparison of the outer part.
//!
//! Expressions over aggregates are first rewritten into that shape (rewrite.rs):
//! `SELECT round(avg(x), 2) FROM t GROUP BY g` becomes
//! `SELECT round(a1, 2) FROM (SELECT g AS g1, avg(x) AS a1 FROM t GROUP BY g) s`.

use sqlparser::ast::{VisitMut, VisitorMut};

use super::*;
use crate::router::{Stage, StagedPlan};

/// The table name of stage `i`'s placeholder in the outer statement.
fn marker(i: usize) -> String {
    format!("pieskieo_stage_{i}")
}

/// The placeholder query `SELECT * FROM pieskieo_stage_i`, as printed.
pub(in crate::router) fn marker_sql(i: usize) -> String {
    format!("SELECT * FROM {}", marker(i))
}

fn marker_query(i: usize) -> Option<Query> {
    match Parser::parse_sql(&PostgreSqlDialect {}, &marker_sql(i))
        .ok()?
        .pop()?
    {
        Statement::Query(q) => Some(*q),
        _ => None,
    }
}

/// Whether a relation name is a stage placeholder.
pub(super) fn is_marker(table: &str) -> bool {
    table
        .strip_prefix("pieskieo_stage_")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn reads_sharded(q: &Query, map: &ShardMap) -> bool {
    super::scope::reach(q, map) != super::scope::Reach::NoSharded
}

/// Qualifiers a query uses that it does not define itself: a correlated
/// subquery cannot run on its own.
fn correlated(q: &Query) -> bool {
    #[derive(Default)]
    struct Names {
        defined: HashSet<String>,
        used: HashSet<String>,
    }
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if let Some(w) = &q.with {
                for c in &w.cte_tables {
                    self.defined.insert(ident_name(&c.alias.name));
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
            let alias = match t {
                TableFactor::Table { name, alias, .. } => {
                    self.defined.insert(object_parts(name).1);
                    alias
                }
                TableFactor::Derived { alias, .. }
                | TableFactor::Function { alias, .. }
                | TableFactor::UNNEST { alias, .. }
                | TableFactor::NestedJoin { alias, .. }
                | TableFactor::TableFunction { alias, .. } => alias,
                _ => return ControlFlow::Continue(()),
            };
            if let Some(a) = alias {
                self.defined.insert(ident_name(&a.name));
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::CompoundIdentifier(parts) = e {
                if let [.., q, _] = parts.as_slice() {
                    self.used.insert(ident_name(q));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut n = Names::default();
    let _ = q.visit(&mut n);
    n.used.iter().any(|u| !n.defined.contains(u))
}

/// Plans one stage: a cross-shard read (forward or merge) of its own.
fn stage_plan(q: &Query, map: &ShardMap) -> Result<Plan, RouteError> {
    let stmt = Statement::Query(Box::new(q.clone()));
    match super::route_statement(&stmt, map, None)? {
        p @ Plan::Forward {
            write: Writes::No, ..
        } => Ok(p),
        p @ Plan::Merge { .. } => Ok(p),
        // A stage in stages of its own (`x > (SELECT avg(x) + 1 FROM t)`):
        // its stages run first, then it, then the outer query.
        p @ Plan::Staged(_) => Ok(p),
        Plan::Forward { .. } => unsupported(
            "a subquery or CTE that locks rows or calls functions that may write, over a sharded table across shards, is not supported; lock or write in a statement of its own, or fix the shard key to reach one shard",
        ),
        _ => unsupported(
            "subqueries and CTEs over sharded tables nested in each other across shards are not supported; fix the shard key to reach one shard",
        ),
    }
}

struct Stager<'m> {
    map: &'m ShardMap,
    stages: Vec<Stage>,
    error: Option<RouteError>,
}

impl Stager<'_> {
    /// Replaces `q` with a placeholder when it reads sharded tables.
    fn take(&mut self, q: &mut Query) {
        if self.error.is_some() || !reads_sharded(q, self.map) {
            return;
        }
        if correlated(q) {
            self.error = Some(RouteError::Unsupported(
                "a correlated subquery over a sharded table that is not joined on the shard key is not supported across shards; correlate it on the shard key or fix the key to reach one shard".into(),
            ));
            return;
        }
        let sql = q.to_string();
        match (stage_plan(q, self.map), marker_query(self.stages.len())) {
            (Ok(plan), Some(m)) => {
                self.stages.push(Stage { sql, plan });
                *q = m;
            }
            (Err(e), _) => self.error = Some(e),
            (_, None) => self.error = Some(RouteError::Syntax("stage placeholder".into())),
        }
    }
}

/// Takes the subqueries of expressions (not those nested deeper).
struct InExprs<'s, 'm> {
    stager: &'s mut Stager<'m>,
    depth: usize,
}

impl VisitorMut for InExprs<'_, '_> {
    type Break = ();
    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        if self.depth == 0 {
            self.stager.take(q);
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }
    fn post_visit_query(&mut self, _q: &mut Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

/// A two-stage plan for a query whose own FROM list may read sharded tables
/// only where the outer statement can still be routed; `None` when there
/// is nothing to stage.
pub(super) fn plan_staged(q: &Query, map: &ShardMap) -> Result<Option<Plan>, RouteError> {
    let mut outer = q.clone();
    let mut st = Stager {
        map,
        stages: Vec::new(),
        error: None,
    };
    if let Some(with) = outer.with.as_mut() {
        if with.recursive {
            return Ok(None);
        }
        let names: Vec<String> = with
            .cte_tables
            .iter()
            .map(|c| ident_name(&c.alias.name))
            .collect();
        for (i, cte) in with.cte_tables.iter_mut().enumerate() {
            // A CTE reading an earlier one cannot run on its own.
            let mut reads_earlier = false;
            let _ = sqlparser::ast::visit_relations(&*cte.query, |r| {
                if let [one] = r.0.as_slice() {
                    let read = one.as_ident().map(ident_name);
                    reads_earlier |= names[..i].iter().any(|n| Some(n) == read.as_ref());
                }
                ControlFlow::<()>::Continue(())
            });
            if reads_earlier && reads_sharded(&cte.query, map) {
                return Ok(None);
            }
            st.take(&mut cte.query);
        }
    }
    let SetExpr::Select(sel) = outer.body.as_mut() else {
        return Ok(None);
    };
    for twj in sel.from.iter_mut() {
        let factors =
            std::iter::once(&mut twj.relation).chain(twj.joins.iter_mut().map(|j| &mut j.relation));
        for f in factors {
            if let TableFactor::Derived {
                lateral: false,
                subquery,
                ..
            } = f
            {
                st.take(subquery);
            }
        }
    }
    {
        let mut v = InExprs {
            stager: &mut st,
            depth: 0,
        };
        if let Some(w) = sel.selection.as_mut() {
            let _ = VisitMut::visit(w, &mut v);
        }
        for item in sel.projection.iter_mut() {
            let _ = VisitMut::visit(item, &mut v);
        }
        if let Some(h) = sel.having.as_mut() {
            let _ = VisitMut::visit(h, &mut v);
        }
    }
    if let Some(e) = st.error {
        return Err(e);
    }
    if st.stages.is_empty() {
        return Ok(None);
    }
    // The outer statement must be routable once the stages are in place.
    let check = Statement::Query(Box::new(outer.clone()));
    match super::route_statement(&check, map, None)? {
        Plan::Forward { .. } | Plan::Merge { .. } => {}
        _ => return unsupported("this outer query over subqueries is not supported across shards; fix the shard key to reach one shard, or run the subquery as a query of its own first"),
    }
    Ok(Some(Plan::Staged(std::sync::Arc::new(StagedPlan {
        stages: st.stages,
        outer: outer.to_string(),
        filled: None,
    }))))
}

/// The stage's rows as a query with their exact types: `SELECT * FROM
/// (VALUES ('1'::int8, 'x'::text), ...) AS pieskieo_values("id", "v")`, or
/// a typed query of no rows. `Err` names a type the proxy cannot spell.
pub fn materialize(
    columns: &[(String, u32)],
    rows: &[Vec<Option<String>>],
) -> Result<String, String> {
    let typed: Vec<(String, u32, i32)> = columns.iter().map(|(n, t)| (n.clone(), *t, -1)).collect();
    materialize_typed(&typed, rows)
}

/// [`materialize`] of columns with their type modifiers (a RowDescription's
/// `atttypmod`, -1 for none): `numeric(10,2)`, `varchar(8)` and the like keep
/// them, so the outer query's RowDescription has them too.
pub fn materialize_typed(
    columns: &[(String, u32, i32)],
    rows: &[Vec<Option<String>>],
) -> Result<String, String> {
    let types: Vec<String> = columns
        .iter()
        .map(|(_, oid, typmod)| {
            type_name(*oid)
                .map(|t| format!("{t}{}", modifier(*oid, *typmod)))
                .ok_or_else(|| {
                    format!("a subquery's column of type OID {oid} cannot be passed between the stages of a cross-shard query; cast it to text")
                })
        })
        .collect::<Result<_, _>>()?;
    let types: Vec<&str> = types.iter().map(String::as_str).collect();
    let names: Vec<String> = columns
        .iter()
        .map(|(n, _, _)| format!("\"{}\"", n.replace('"', "\"\"")))
        .collect();
    let value = |v: &Option<String>, t: &str| match v {
        None => format!("NULL::{t}"),
        Some(s) => format!("{}::{t}", crate::router::inline::quote(s)),
    };
    if rows.is_empty() {
        let cols: Vec<String> = names
            .iter()
            .zip(&types)
            .map(|(n, t)| format!("NULL::{t} AS {n}"))
            .collect();
        return Ok(format!("SELECT {} WHERE false", cols.join(", ")));
    }
    let mut out = String::from("SELECT * FROM (VALUES ");
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('(');
        let vals: Vec<String> = r.iter().zip(&types).map(|(v, t)| value(v, t)).collect();
        out.push_str(&vals.join(", "));
        out.push(')');
    }
    out.push_str(&format!(") AS pieskieo_values({})", names.join(", ")));
    Ok(out)
}

/// A type modifier as SQL writes it (`(10,2)`, `(8)`), for the types whose
/// values read back unchanged under it; empty for none.
fn modifier(oid: u32, typmod: i32) -> String {
    match oid {
        // numeric: ((precision << 16) | scale) + 4, scale 0..=precision.
        1700 if typmod >= 4 => {
            let (p, s) = (((typmod - 4) >> 16) & 0xffff, (typmod - 4) & 0xffff);
            if (1..=1000).contains(&p) && s <= p {
                format!("({p},{s})")
            } else {
                String::new()
            }
        }
        // varchar, bpchar: length + 4.
        1042 | 1043 if typmod >= 5 => format!("({})", typmod - 4),
        // time, timestamp, timestamptz, timetz: fractional digits.
        1083 | 1114 | 1184 | 1266 if (0..=6).contains(&typmod) => format!("({typmod})"),
        _ => String::new(),
    }
}

/// Type names for the built-in types a stage may carry.
pub(crate) fn type_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "bool",
        17 => "bytea",
        18 => "\"char\"",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "float4",
        701 => "float8",
        790 => "money",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1266 => "timetz",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        1000 => "bool[]",
        1005 => "int2[]",
        1007 => "int4[]",
        1016 => "int8[]",
        1009 => "text[]",
        1015 => "varchar[]",
        1231 => "numeric[]",
        1022 => "float8[]",
        2951 => "uuid[]",
        // Text forms that read back as the same value (a COPY of merged
        // rows carries any column). Not `bit`: without its length it reads
        // as `bit(1)`.
        142 => "xml",
        650 => "cidr",
        774 => "macaddr8",
        829 => "macaddr",
        869 => "inet",
        1562 => "varbit",
        3614 => "tsvector",
        3904 => "int4range",
        3906 => "numrange",
        3908 => "tsrange",
        3910 => "tstzrange",
        3912 => "daterange",
        3926 => "int8range",
        199 => "json[]",
        1001 => "bytea[]",
        1014 => "bpchar[]",
        1021 => "float4[]",
        1041 => "inet[]",
        1115 => "timestamp[]",
        1182 => "date[]",
        1183 => "time[]",
        1185 => "timestamptz[]",
        1187 => "interval[]",
        3807 => "jsonb[]",
        _ => return None,
    })
}
