//! Two-stage plans: a query whose subqueries or CTEs read sharded tables
//! across shards, or whose select list computes over aggregates. Each such
//! subquery runs first as a cross-shard read of its own (merged as any
//! other); its rows are then written into the outer query as `VALUES` with
//! their exact types, and the outer query runs like any statement — on one
//! shard when it reads nothing sharded any more — so PostgreSQL itself
//! evaluates every function, cast and comparison of the outer part.
//!
//! Expressions over aggregates are first rewritten into that shape:
//! `SELECT round(avg(x), 2) FROM t GROUP BY g` becomes
//! `SELECT round(a1, 2) FROM (SELECT g AS g1, avg(x) AS a1 FROM t GROUP BY g) s`.

use sqlparser::ast::{
    Distinct, FunctionArguments, Ident, SelectItem, TableAlias, VisitMut, VisitorMut,
};

use super::*;
use crate::router::{Stage, StagedPlan};

/// The table name of stage `i`'s placeholder in the outer statement.
fn marker(i: usize) -> String {
    format!("pieskieo_stage_{i}")
}

/// The placeholder query `SELECT * FROM pieskieo_stage_i`, as printed.
pub(super) fn marker_sql(i: usize) -> String {
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
        Plan::Forward { .. } => unsupported(
            "a subquery or CTE that locks rows or calls functions that may write, over a sharded table across shards, is not supported",
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
        for cte in with.cte_tables.iter_mut() {
            // A CTE reading an earlier one cannot run on its own.
            let text = cte.query.to_string().to_lowercase();
            if names.iter().any(|n| text.contains(n.as_str())) && reads_sharded(&cte.query, map) {
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
        _ => return unsupported("this outer query over subqueries is not supported across shards"),
    }
    Ok(Some(Plan::Staged(std::sync::Arc::new(StagedPlan {
        stages: st.stages,
        outer: outer.to_string(),
    }))))
}

/// The name PostgreSQL gives a select-list expression without an alias
/// (after `FigureColname`), for the forms the rewrite produces.
fn figure_name(e: &Expr) -> String {
    match e {
        Expr::Nested(inner) => figure_name(inner),
        Expr::Identifier(id) => ident_name(id),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name).unwrap_or_default(),
        Expr::Function(f) => object_parts(&f.name).1,
        Expr::Cast {
            expr, data_type, ..
        } => match figure_name(expr).as_str() {
            "?column?" => {
                let t = data_type.to_string().to_lowercase();
                t.split('(').next().unwrap_or_default().trim().to_string()
            }
            n => n.to_string(),
        },
        Expr::Case { .. } => "case".into(),
        _ => "?column?".into(),
    }
}

/// Replaces aggregate calls and grouped expressions with columns of the
/// inner query, registering new aggregates; `Err` names a column that is
/// neither.
struct Lift<'a> {
    groups: &'a [Expr],
    aggs: Vec<Expr>,
    stray: Option<String>,
}

fn group_col(i: usize) -> Ident {
    Ident::with_quote('"', format!("pieskieo_g{}", i + 1))
}

fn agg_col(i: usize) -> Ident {
    Ident::with_quote('"', format!("pieskieo_a{}", i + 1))
}

impl VisitorMut for Lift<'_> {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        let bare = match &*e {
            Expr::Nested(inner) => inner.as_ref().clone(),
            other => other.clone(),
        };
        if let Some(i) = self.groups.iter().position(|g| *g == bare) {
            *e = Expr::Identifier(group_col(i));
            return ControlFlow::Continue(());
        }
        match &bare {
            Expr::Function(f) if AGGREGATES.contains(&object_parts(&f.name).1.as_str()) => {
                let i = match self.aggs.iter().position(|a| *a == bare) {
                    Some(i) => i,
                    None => {
                        self.aggs.push(bare.clone());
                        self.aggs.len() - 1
                    }
                };
                *e = Expr::Identifier(agg_col(i));
            }
            Expr::Identifier(id) if !id.value.starts_with("pieskieo_") => {
                self.stray.get_or_insert(e.to_string());
            }
            Expr::CompoundIdentifier(_) => {
                self.stray.get_or_insert(e.to_string());
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// `SELECT <expressions over aggregates> FROM t ... GROUP BY g HAVING h
/// ORDER BY o LIMIT l` as `SELECT <the same over columns> FROM (SELECT g,
/// <the aggregates> FROM t ... GROUP BY g) s WHERE h ORDER BY o LIMIT l`;
/// `None` when the query is not of that kind.
pub(super) fn lift_aggregates(q: &Query) -> Option<Query> {
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return None;
    };
    if q.with.is_some() || !sel.named_window.is_empty() || sel.qualify.is_some() {
        return None;
    }
    let mut windows = false;
    let _ = sqlparser::ast::visit_expressions(q, |e| {
        windows |= matches!(e, Expr::Function(f) if f.over.is_some());
        ControlFlow::<()>::Continue(())
    });
    if windows {
        return None;
    }
    if matches!(sel.distinct, Some(Distinct::On(_))) {
        return None;
    }
    let GroupByExpr::Expressions(group_by, modifiers) = &sel.group_by else {
        return None;
    };
    if !modifiers.is_empty() {
        return None;
    }
    let items: Vec<(Expr, Option<Ident>)> = sel
        .projection
        .iter()
        .map(|i| match i {
            SelectItem::UnnamedExpr(e) => Some((e.clone(), None)),
            SelectItem::ExprWithAlias { expr, alias } => Some((expr.clone(), Some(alias.clone()))),
            _ => None,
        })
        .collect::<Option<_>>()?;
    // GROUP BY 1 / GROUP BY alias name a select-list expression.
    let mut groups = Vec::new();
    for g in group_by {
        let g = match g {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => items
                    .get(n.parse::<usize>().ok()?.checked_sub(1)?)?
                    .0
                    .clone(),
                _ => g.clone(),
            },
            Expr::Identifier(id) => items
                .iter()
                .find(|(_, a)| a.as_ref().is_some_and(|a| ident_name(a) == ident_name(id)))
                .map(|(e, _)| e.clone())
                .unwrap_or_else(|| g.clone()),
            _ => g.clone(),
        };
        if matches!(g, Expr::Rollup(_) | Expr::Cube(_) | Expr::GroupingSets(_)) {
            return None;
        }
        groups.push(match g {
            Expr::Nested(inner) => *inner,
            g => g,
        });
    }
    let mut lift = Lift {
        groups: &groups,
        aggs: Vec::new(),
        stray: None,
    };
    let mut projection = Vec::new();
    for (e, alias) in &items {
        let mut out = e.clone();
        let _ = VisitMut::visit(&mut out, &mut lift);
        let alias = match alias {
            Some(a) => Some(a.clone()),
            None if figure_name(&out) != figure_name(e) => {
                Some(Ident::with_quote('"', figure_name(e)))
            }
            None => None,
        };
        projection.push(match alias {
            Some(alias) => SelectItem::ExprWithAlias { expr: out, alias },
            None => SelectItem::UnnamedExpr(out),
        });
    }
    let mut having = sel.having.clone();
    if let Some(h) = having.as_mut() {
        let _ = VisitMut::visit(h, &mut lift);
    }
    let mut order_by = q.order_by.clone();
    if let Some(sqlparser::ast::OrderBy {
        kind: sqlparser::ast::OrderByKind::Expressions(v),
        ..
    }) = order_by.as_mut()
    {
        for o in v.iter_mut() {
            // Positions and output names refer to the outer select list as they did.
            let output = match &o.expr {
                Expr::Value(v) => matches!(v.value, Value::Number(..)),
                Expr::Identifier(id) => items
                    .iter()
                    .any(|(_, a)| a.as_ref().is_some_and(|a| ident_name(a) == ident_name(id))),
                _ => false,
            };
            if !output {
                let _ = VisitMut::visit(&mut o.expr, &mut lift);
            }
        }
    } else if order_by.is_some() {
        return None;
    }
    if lift.stray.is_some() || lift.aggs.is_empty() {
        return None;
    }
    // Already plain aggregates and grouped columns, compared by nothing the
    // merge cannot do: lifting would give the same query again.
    let plain = |e: &Expr| matches!(e, Expr::Identifier(id) if id.value.starts_with("pieskieo_"));
    let items_plain = projection.iter().all(|i| match i {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => plain(e),
        _ => false,
    });
    if items_plain && having.is_none() {
        return None;
    }
    // Every aggregate must be one the merge combines; its arguments must
    // not hold further aggregates.
    for a in &lift.aggs {
        if let Expr::Function(f) = a {
            if let FunctionArguments::List(l) = &f.args {
                if l.args.iter().any(|x| {
                    let mut inner = false;
                    let _ = sqlparser::ast::visit_expressions(x, |y| {
                        if let Expr::Function(g) = y {
                            inner |= AGGREGATES.contains(&object_parts(&g.name).1.as_str());
                        }
                        ControlFlow::<()>::Continue(())
                    });
                    inner
                }) {
                    return None;
                }
            }
        }
    }
    let mut inner = q.clone();
    inner.order_by = None;
    inner.limit_clause = None;
    inner.fetch = None;
    let (aggs, ngroups) = (lift.aggs.clone(), groups.len());
    if let SetExpr::Select(s) = inner.body.as_mut() {
        s.distinct = None;
        s.having = None;
        s.projection = groups
            .iter()
            .enumerate()
            .map(|(i, g)| SelectItem::ExprWithAlias {
                expr: g.clone(),
                alias: group_col(i),
            })
            .chain(
                aggs.iter()
                    .enumerate()
                    .map(|(i, a)| SelectItem::ExprWithAlias {
                        expr: a.clone(),
                        alias: agg_col(i),
                    }),
            )
            .collect();
        s.group_by = GroupByExpr::Expressions(groups.clone(), Vec::new());
    }
    let _ = ngroups;
    let mut outer = q.clone();
    outer.order_by = order_by;
    if let SetExpr::Select(s) = outer.body.as_mut() {
        s.projection = projection;
        s.having = None;
        s.selection = having;
        s.group_by = GroupByExpr::Expressions(Vec::new(), Vec::new());
        s.from = vec![TableWithJoins {
            relation: TableFactor::Derived {
                lateral: false,
                subquery: Box::new(inner),
                alias: Some(TableAlias {
                    explicit: true,
                    name: Ident::new("pieskieo_groups"),
                    columns: Vec::new(),
                    at: None,
                }),
                sample: None,
            },
            joins: Vec::new(),
        }];
    }
    Some(outer)
}

/// The stage's rows as a query with their exact types: `SELECT * FROM
/// (VALUES ('1'::int8, 'x'::text), ...) AS pieskieo_values("id", "v")`, or
/// a typed query of no rows. `Err` names a type the proxy cannot spell.
pub fn materialize(
    columns: &[(String, u32)],
    rows: &[Vec<Option<String>>],
) -> Result<String, String> {
    let types: Vec<&str> = columns
        .iter()
        .map(|(_, oid)| {
            type_name(*oid).ok_or_else(|| {
                format!("a subquery's column of type OID {oid} cannot be passed between the stages of a cross-shard query; cast it to text")
            })
        })
        .collect::<Result<_, _>>()?;
    let names: Vec<String> = columns
        .iter()
        .map(|(n, _)| format!("\"{}\"", n.replace('"', "\"\"")))
        .collect();
    let value = |v: &Option<String>, t: &str| match v {
        None => format!("NULL::{t}"),
        Some(s) if s.contains('\\') => {
            format!("E'{}'::{t}", s.replace('\\', "\\\\").replace('\'', "''"))
        }
        Some(s) => format!("'{}'::{t}", s.replace('\'', "''")),
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

/// Type names for the built-in types a stage may carry.
fn type_name(oid: u32) -> Option<&'static str> {
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
        _ => return None,
    })
}

/// `SELECT count(*) FROM (SELECT ... FROM t WHERE w) s` (how ORMs count a
/// page's rows) as `SELECT count(*) FROM t WHERE w`, when that is the same
/// query: the subquery only filters rows (no DISTINCT, grouping, aggregates,
/// limits or locks) and the outer query only counts them. Runs as an
/// ordinary cross-shard merge, parameters and both protocols included.
pub(super) fn flatten_count(q: &Query) -> Option<Query> {
    if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return None;
    }
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return None;
    };
    let counts_only = !sel.projection.is_empty()
        && sel.projection.iter().all(|i| {
            let e = match i {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                _ => return false,
            };
            matches!(e, Expr::Function(f)
                if object_parts(&f.name).1 == "count"
                    && f.over.is_none()
                    && f.filter.is_none()
                    && matches!(&f.args, FunctionArguments::List(l)
                        if l.duplicate_treatment.is_none()
                            && l.clauses.is_empty()
                            && matches!(l.args.as_slice(),
                                [sqlparser::ast::FunctionArg::Unnamed(sqlparser::ast::FunctionArgExpr::Wildcard)])))
        });
    let plain_outer = counts_only
        && sel.selection.is_none()
        && sel.having.is_none()
        && sel.distinct.is_none()
        && matches!(&sel.group_by, GroupByExpr::Expressions(g, m) if g.is_empty() && m.is_empty());
    if !plain_outer {
        return None;
    }
    let [TableWithJoins {
        relation:
            TableFactor::Derived {
                lateral: false,
                subquery,
                ..
            },
        joins,
    }] = sel.from.as_slice()
    else {
        return None;
    };
    if !joins.is_empty()
        || subquery.with.is_some()
        || subquery.order_by.is_some()
        || subquery.limit_clause.is_some()
        || subquery.fetch.is_some()
        || !subquery.locks.is_empty()
    {
        return None;
    }
    let SetExpr::Select(inner) = subquery.body.as_ref() else {
        return None;
    };
    let mut calls = false;
    let _ = sqlparser::ast::visit_expressions(&inner.projection, |e| {
        if let Expr::Function(f) = e {
            calls |= f.over.is_some() || AGGREGATES.contains(&object_parts(&f.name).1.as_str());
        }
        ControlFlow::<()>::Continue(())
    });
    let filters_only = inner.distinct.is_none()
        && inner.having.is_none()
        && inner.into.is_none()
        && inner.named_window.is_empty()
        && matches!(&inner.group_by, GroupByExpr::Expressions(g, m) if g.is_empty() && m.is_empty())
        && !calls;
    if !filters_only {
        return None;
    }
    let mut flat = (**subquery).clone();
    if let SetExpr::Select(s) = flat.body.as_mut() {
        s.projection = sel.projection.clone();
    }
    Some(flat)
}
