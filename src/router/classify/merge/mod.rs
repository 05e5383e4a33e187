//! Planning a `SELECT` that several shards answer: what each shard runs and
//! how the proxy merges their answers ([`crate::merge`]), or why it cannot
//! give the answer one PostgreSQL would.

use sqlparser::ast::{
    Distinct, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, LimitClause, OrderByKind,
    OrderBySort, Select, SelectItem,
};

use super::bindings::{is_key_ref, Binding};
use super::*;
use crate::merge::{AggFunc, CmpOp, Cond, Lit, MergePlan, Output, Shape, SortKey};

mod group;

use group::plan_groups;

fn refuse<T>(what: impl std::fmt::Display) -> Result<T, RouteError> {
    unsupported(format!(
        "{what} in a SELECT that spans shards is not supported; fix the shard key in WHERE to reach one shard"
    ))
}

/// A non-negative integer constant (`LIMIT 10`, `OFFSET '5'` from a bound value).
fn count_literal(e: &Expr, what: &str) -> Result<u64, RouteError> {
    let text = match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.clone(),
            Value::SingleQuotedString(s) => s.clone(),
            _ => String::new(),
        },
        Expr::Nested(inner) => return count_literal(inner, what),
        // `LIMIT $1::INTEGER` (SQLAlchemy), the value bound.
        Expr::Cast { expr, .. } => return count_literal(expr, what),
        _ => String::new(),
    };
    text.trim()
        .parse::<u64>()
        .or_else(|_| refuse(format!("{what} other than a non-negative integer constant")))
}

/// An aggregate call the merge knows how to combine.
struct Agg<'a> {
    func: AggFunc,
    call: &'a sqlparser::ast::Function,
}

fn aggregate<'a>(e: &'a Expr, bindings: &[Binding]) -> Result<Option<Agg<'a>>, RouteError> {
    let Expr::Function(f) = strip(e) else {
        return Ok(None);
    };
    let (_, name) = object_parts(&f.name);
    if !AGGREGATES.contains(&name.as_str()) {
        return Ok(None);
    }
    let func = match name.as_str() {
        "count" => AggFunc::Count,
        "sum" => AggFunc::Sum,
        "min" => AggFunc::Min,
        "max" => AggFunc::Max,
        "avg" => AggFunc::Avg,
        "bool_and" | "every" => AggFunc::BoolAnd,
        "bool_or" => AggFunc::BoolOr,
        other => return refuse(format!("aggregate {other}()")),
    };
    if !f.within_group.is_empty() {
        return refuse(format!("{name}() WITHIN GROUP"));
    }
    if let FunctionArguments::List(list) = &f.args {
        if !list.clauses.is_empty() {
            return refuse(format!("ORDER BY or other clauses inside {name}()"));
        }
        if matches!(
            list.duplicate_treatment,
            Some(sqlparser::ast::DuplicateTreatment::Distinct)
        ) {
            // Distinct values of the shard key never meet on two shards.
            let on_key = matches!(
                list.args.as_slice(),
                [FunctionArg::Unnamed(FunctionArgExpr::Expr(x))]
                    if bindings.len() == 1 && is_key_ref(x, &bindings[0], bindings)
            );
            match func {
                AggFunc::Min | AggFunc::Max | AggFunc::BoolAnd | AggFunc::BoolOr => {}
                AggFunc::Count if on_key => {}
                _ => {
                    return refuse(format!(
                        "{name}(DISTINCT ...) on anything but the shard key"
                    ))
                }
            }
        }
    }
    Ok(Some(Agg { func, call: f }))
}

/// The text of a numeric literal.
fn number(e: &Expr) -> Option<String> {
    match strip(e) {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(n.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Nested(inner) => strip(inner),
        other => other,
    }
}

/// Whether an expression reads no column (a constant per group).
fn constant(e: &Expr) -> bool {
    let mut found = false;
    let _ = sqlparser::ast::visit_expressions(e, |x| {
        if matches!(
            x,
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Subquery(_)
        ) {
            found = true;
        }
        // `count(*) + 1` names no column, but is one value per shard.
        if let Expr::Function(f) = x {
            if f.over.is_some() || AGGREGATES.contains(&object_parts(&f.name).1.as_str()) {
                found = true;
            }
        }
        ControlFlow::<()>::Continue(())
    });
    !found
}

fn has_aggregate(e: &Expr) -> bool {
    let mut found = false;
    let _ = sqlparser::ast::visit_expressions(e, |x| {
        if let Expr::Function(f) = x {
            if AGGREGATES.contains(&object_parts(&f.name).1.as_str()) {
                found = true;
            }
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// Whether every window function of a query over one sharded table has
/// the table's shard key among its `PARTITION BY` expressions.
fn partitioned_by_key(q: &Query, bindings: &[Binding]) -> bool {
    let [b] = bindings else {
        return false;
    };
    let mut all = true;
    let _ = sqlparser::ast::visit_expressions(q, |e| {
        if let Expr::Function(f) = e {
            match &f.over {
                None => {}
                Some(sqlparser::ast::WindowType::WindowSpec(spec)) => {
                    all &= spec.window_name.is_none()
                        && spec.partition_by.iter().any(|p| is_key_ref(p, b, bindings));
                }
                Some(sqlparser::ast::WindowType::NamedWindow(_)) => all = false,
            }
        }
        ControlFlow::<()>::Continue(())
    });
    all
}

/// Whether a query calls aggregates of its own (not only in subqueries).
fn own_aggregates(q: &Query) -> bool {
    struct Own {
        depth: usize,
        found: bool,
    }
    impl Visitor for Own {
        type Break = ();
        fn pre_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e {
                if self.depth == 1
                    && f.over.is_none()
                    && AGGREGATES.contains(&object_parts(&f.name).1.as_str())
                {
                    self.found = true;
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = Own {
        depth: 0,
        found: false,
    };
    let _ = q.visit(&mut v);
    v.found
}

fn quoted(name: &str) -> Ident {
    Ident::with_quote('"', name)
}

/// The select list as (expression, alias) pairs; `None` with a wildcard.
fn items(sel: &Select) -> Option<Vec<(&Expr, Option<&Ident>)>> {
    sel.projection
        .iter()
        .map(|i| match i {
            SelectItem::UnnamedExpr(e) => Some((e, None)),
            SelectItem::ExprWithAlias { expr, alias } => Some((expr, Some(alias))),
            _ => None,
        })
        .collect()
}

/// The select-list position an ORDER BY / GROUP BY item names by number or
/// by output alias.
fn output_ref(e: &Expr, items: &[(&Expr, Option<&Ident>)]) -> Result<Option<usize>, RouteError> {
    match strip(e) {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => match n.parse::<usize>() {
                Ok(k) if k >= 1 && k <= items.len() => Ok(Some(k - 1)),
                _ => Err(RouteError::Syntax(format!(
                    "position {n} is not in select list"
                ))),
            },
            _ => Ok(None),
        },
        Expr::Identifier(id) => {
            let n = ident_name(id);
            Ok(items
                .iter()
                .position(|(_, a)| a.is_some_and(|a| ident_name(a) == n)))
        }
        _ => Ok(None),
    }
}

struct Limits {
    offset: u64,
    limit: Option<u64>,
}

fn limits(q: &Query) -> Result<Limits, RouteError> {
    let mut l = Limits {
        offset: 0,
        limit: None,
    };
    match &q.limit_clause {
        None => {}
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) => {
            if !limit_by.is_empty() {
                return refuse("LIMIT BY");
            }
            if let Some(e) = limit {
                l.limit = Some(count_literal(e, "LIMIT")?);
            }
            if let Some(o) = offset {
                l.offset = count_literal(&o.value, "OFFSET")?;
            }
        }
        Some(LimitClause::OffsetCommaLimit { .. }) => return refuse("LIMIT offset, count"),
    }
    if let Some(f) = &q.fetch {
        if f.with_ties || f.percent {
            return refuse("FETCH ... WITH TIES or PERCENT");
        }
        l.limit = Some(match &f.quantity {
            Some(e) => count_literal(e, "FETCH FIRST")?,
            None => 1,
        });
    }
    Ok(l)
}

fn order_items(q: &Query) -> Result<Vec<&sqlparser::ast::OrderByExpr>, RouteError> {
    match q.order_by.as_ref().map(|o| &o.kind) {
        None => Ok(Vec::new()),
        Some(OrderByKind::Expressions(v)) => {
            if v.iter()
                .any(|o| matches!(o.options.sort, Some(OrderBySort::Using(_))))
            {
                return refuse("ORDER BY ... USING");
            }
            Ok(v.iter().collect())
        }
        Some(OrderByKind::All(_)) => refuse("ORDER BY ALL"),
    }
}

fn sort_key(col: usize, o: &sqlparser::ast::OrderByExpr) -> SortKey {
    let desc = matches!(o.options.sort, Some(OrderBySort::Desc));
    SortKey {
        col,
        desc,
        // PostgreSQL: NULLs sort as larger than every value.
        nulls_first: o.options.nulls_first.unwrap_or(desc),
    }
}

/// Plans a multi-shard `SELECT`: `None` when concatenating the shards' rows
/// is already the exact answer. `bound` carries the values of `$n`
/// parameters (for LIMIT/OFFSET); the shards' statement is made from
/// `source`, the client's own text, with its placeholders renumbered.
pub(super) fn plan_merge(
    bound: &Query,
    source: Option<&Query>,
    t: &Tables,
    bindings: &[Binding],
    local: bool,
) -> Result<Option<MergePlan>, RouteError> {
    let q = source.unwrap_or(bound);
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return refuse("set operations");
    };
    let sel: &Select = sel;
    // Window functions partitioned by the shard key: every partition lives
    // on one shard, so each shard computes them exactly for its rows.
    let windows = t.facts.windows || !sel.named_window.is_empty();
    if windows && !(sel.named_window.is_empty() && partitioned_by_key(q, bindings)) {
        return refuse("window functions (unless PARTITION BY includes the shard key)");
    }
    // Subqueries each shard evaluates for its own rows are part of its
    // statement; others would be answered from one shard's rows only.
    if t.facts.queries > 1 && !local {
        return refuse("subqueries and CTEs");
    }
    if sel.into.is_some() {
        return refuse("SELECT INTO");
    }
    let distinct = match &sel.distinct {
        None | Some(Distinct::All) => false,
        Some(Distinct::Distinct) => true,
        Some(Distinct::On(_)) => return refuse("DISTINCT ON"),
    };
    let group_exprs: Vec<&Expr> = match &sel.group_by {
        GroupByExpr::Expressions(v, modifiers) => {
            if !modifiers.is_empty() {
                return refuse("GROUP BY modifiers");
            }
            v.iter().collect()
        }
        GroupByExpr::All(_) => return refuse("GROUP BY ALL"),
    };
    if group_exprs
        .iter()
        .any(|e| matches!(e, Expr::Rollup(_) | Expr::Cube(_) | Expr::GroupingSets(_)))
    {
        return refuse("ROLLUP, CUBE and GROUPING SETS");
    }
    let limits = limits(bound)?;
    let order = order_items(q)?;
    let aggregates = if t.facts.queries > 1 || windows {
        own_aggregates(q)
    } else {
        t.facts.aggregates
    };
    let grouped = aggregates || !group_exprs.is_empty() || sel.having.is_some();
    if windows && grouped {
        return refuse("window functions together with aggregates or GROUP BY");
    }
    let mut plan = if !grouped {
        if order.is_empty() && limits.limit.is_none() && limits.offset == 0 && !distinct {
            return Ok(None);
        }
        plan_rows(q, sel, &order, limits, distinct)?
    } else {
        plan_groups(q, sel, &order, &group_exprs, limits, distinct, bindings)?
    };
    if source.is_some() {
        plan.params = renumber(&mut plan.sql);
    }
    Ok(Some(plan))
}

/// Renumbers the `$n` of a shard statement in order of appearance (LIMIT and
/// OFFSET placeholders are gone); returns the client's parameter for each.
fn renumber(sql: &mut String) -> Vec<usize> {
    let Ok(mut stmts) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Vec::new();
    };
    let Some(stmt) = stmts.first_mut() else {
        return Vec::new();
    };
    let params = super::insert::renumber_placeholders(stmt);
    *sql = stmt.to_string();
    params
}

/// No aggregates: shards sort and limit their own rows, the proxy merges
/// the sorted streams on hidden copies of the sort keys.
fn plan_rows(
    q: &Query,
    sel: &Select,
    order: &[&sqlparser::ast::OrderByExpr],
    limits: Limits,
    distinct: bool,
) -> Result<MergePlan, RouteError> {
    let all: Vec<Option<(&Expr, Option<&Ident>)>> = sel
        .projection
        .iter()
        .map(|i| match i {
            SelectItem::UnnamedExpr(e) => Some((e, None)),
            SelectItem::ExprWithAlias { expr, alias } => Some((expr, Some(alias))),
            _ => None,
        })
        .collect();
    let mut hidden = Vec::new();
    let mut keys = Vec::new();
    for (i, o) in order.iter().enumerate() {
        let expr = match strip(&o.expr) {
            e if number(e).is_some() => {
                let n = number(e).unwrap_or_default();
                let k: usize = n.parse().unwrap_or(0);
                if k == 0 || k > all.len() {
                    return Err(RouteError::Syntax(format!(
                        "ORDER BY position {n} is not in select list"
                    )));
                }
                match all[..k]
                    .iter()
                    .all(Option::is_some)
                    .then(|| all[k - 1])
                    .flatten()
                {
                    Some((e, _)) => e.clone(),
                    None => return refuse("ORDER BY position after * in the select list"),
                }
            }
            Expr::Identifier(id) => {
                let n = ident_name(id);
                all.iter()
                    .flatten()
                    .find(|(_, a)| a.is_some_and(|a| ident_name(a) == n))
                    .map(|(e, _)| (*e).clone())
                    .unwrap_or_else(|| o.expr.clone())
            }
            _ => o.expr.clone(),
        };
        hidden.push(SelectItem::ExprWithAlias {
            expr,
            alias: quoted(&format!("pieskieo_sort_{}", i + 1)),
        });
        keys.push(sort_key(i, o));
    }
    let mut shard_q = q.clone();
    if let SetExpr::Select(s) = shard_q.body.as_mut() {
        s.projection.extend(hidden.iter().cloned());
    }
    push_down_limit(&mut shard_q, &limits);
    Ok(MergePlan {
        sql: shard_q.to_string(),
        shape: Shape::Rows {
            hidden: hidden.len(),
        },
        order: keys,
        offset: limits.offset,
        limit: limits.limit,
        distinct,
        params: Vec::new(),
        write: Writes::No,
    })
}

/// Each shard returns at most `offset + limit` rows and skips none.
fn push_down_limit(q: &mut Query, limits: &Limits) {
    q.fetch = None;
    q.limit_clause = limits.limit.map(|l| LimitClause::LimitOffset {
        limit: Some(Expr::value(Value::Number(
            limits.offset.saturating_add(l).to_string(),
            false,
        ))),
        offset: None,
        limit_by: Vec::new(),
    });
}
