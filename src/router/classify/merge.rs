//! Planning a `SELECT` that several shards answer: what each shard runs and
//! how the proxy merges their answers ([`crate::merge`]), or why it cannot
//! give the answer one PostgreSQL would.

use sqlparser::ast::{
    Distinct, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, LimitClause, OrderByKind,
    OrderBySort, Select, SelectItem,
};

use super::dml::{is_key_ref, Binding};
use super::*;
use crate::merge::{AggFunc, CmpOp, Cond, Lit, MergePlan, Output, Shape, SortKey};

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

/// Builds the shards' select list and the outputs that combine it.
struct GroupPlanner<'a> {
    bindings: &'a [Binding<'a>],
    group_exprs: Vec<Expr>,
    /// Shard select list.
    cols: Vec<SelectItem>,
    outputs: Vec<Output>,
    /// Output index of each aggregate call or grouped expression already made.
    made: Vec<(Expr, usize)>,
}

impl GroupPlanner<'_> {
    fn made_for(&self, e: &Expr) -> Option<usize> {
        let e = strip(e);
        self.made.iter().find(|(x, _)| x == e).map(|(_, i)| *i)
    }

    fn col(&mut self, expr: Expr, alias: Ident) -> usize {
        self.cols.push(SelectItem::ExprWithAlias { expr, alias });
        self.cols.len() - 1
    }

    /// An output for an aggregate call: its partial column(s) and combiner.
    /// `reuse`: an equal call already made will do (HAVING, ORDER BY); each
    /// select-list item gets an output of its own.
    fn agg(
        &mut self,
        e: &Expr,
        alias: Option<&Ident>,
        reuse: bool,
    ) -> Result<Option<usize>, RouteError> {
        let Some(a) = aggregate(e, self.bindings)? else {
            return Ok(None);
        };
        if reuse {
            if let Some(i) = self.made_for(e) {
                return Ok(Some(i));
            }
        }
        let name = alias
            .cloned()
            .unwrap_or_else(|| quoted(&object_parts(&a.call.name).1));
        let partial = |fname: &str| {
            let mut f = a.call.clone();
            f.name = ObjectName::from(vec![Ident::new(fname)]);
            Expr::Function(f)
        };
        let out = match a.func {
            AggFunc::Avg => {
                let col = self.col(partial("sum"), name);
                let count = self.col(partial("count"), quoted("pieskieo_count"));
                Output::Agg {
                    func: AggFunc::Avg,
                    col,
                    count: Some(count),
                }
            }
            func => {
                let col = self.col(strip(e).clone(), name);
                Output::Agg {
                    func,
                    col,
                    count: None,
                }
            }
        };
        self.outputs.push(out);
        let i = self.outputs.len() - 1;
        self.made.push((strip(e).clone(), i));
        Ok(Some(i))
    }

    /// An output passing a grouped expression (or constant) through.
    fn pass(&mut self, e: &Expr, alias: Option<&Ident>, reuse: bool) -> Option<usize> {
        let e = strip(e);
        if !self.group_exprs.iter().any(|g| strip(g) == e) && !constant(e) {
            return None;
        }
        if reuse {
            if let Some(i) = self.made_for(e) {
                return Some(i);
            }
        }
        let col = match alias {
            Some(a) => self.col(e.clone(), a.clone()),
            None => {
                self.cols.push(SelectItem::UnnamedExpr(e.clone()));
                self.cols.len() - 1
            }
        };
        self.outputs.push(Output::Pass(col));
        let i = self.outputs.len() - 1;
        self.made.push((e.clone(), i));
        Some(i)
    }

    /// An output for an expression in HAVING or ORDER BY (hidden if new).
    fn operand(&mut self, e: &Expr, clause: &str) -> Result<usize, RouteError> {
        if let Some(i) = self.agg(e, None, true)? {
            return Ok(i);
        }
        if let Some(i) = self.pass(e, None, true) {
            return Ok(i);
        }
        if has_aggregate(e) {
            return refuse(format!("expressions over aggregates in {clause} ({e})"));
        }
        refuse(format!(
            "{clause} expression {e}, which is neither grouped nor an aggregate,"
        ))
    }

    fn cond(&mut self, e: &Expr) -> Result<Cond, RouteError> {
        Ok(match e {
            Expr::Nested(inner) => self.cond(inner)?,
            Expr::BinaryOp { left, op, right } => {
                let cmp = match op {
                    BinaryOperator::And => {
                        return Ok(Cond::And(
                            Box::new(self.cond(left)?),
                            Box::new(self.cond(right)?),
                        ))
                    }
                    BinaryOperator::Or => {
                        return Ok(Cond::Or(
                            Box::new(self.cond(left)?),
                            Box::new(self.cond(right)?),
                        ))
                    }
                    BinaryOperator::Eq => CmpOp::Eq,
                    BinaryOperator::NotEq => CmpOp::Ne,
                    BinaryOperator::Lt => CmpOp::Lt,
                    BinaryOperator::LtEq => CmpOp::Le,
                    BinaryOperator::Gt => CmpOp::Gt,
                    BinaryOperator::GtEq => CmpOp::Ge,
                    other => return refuse(format!("operator {other} in HAVING")),
                };
                Cond::Cmp(cmp, Box::new(self.cond(left)?), Box::new(self.cond(right)?))
            }
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Cond::Not(Box::new(self.cond(expr)?)),
            Expr::IsNull(x) => Cond::IsNull(Box::new(self.cond(x)?), false),
            Expr::IsNotNull(x) => Cond::IsNull(Box::new(self.cond(x)?), true),
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let x = self.cond(expr)?;
                let both = Cond::And(
                    Box::new(Cond::Cmp(
                        CmpOp::Ge,
                        Box::new(x.clone()),
                        Box::new(self.cond(low)?),
                    )),
                    Box::new(Cond::Cmp(
                        CmpOp::Le,
                        Box::new(x),
                        Box::new(self.cond(high)?),
                    )),
                );
                if *negated {
                    Cond::Not(Box::new(both))
                } else {
                    both
                }
            }
            Expr::Value(v) => Cond::Lit(match &v.value {
                Value::Null => Lit::Null,
                Value::Boolean(b) => Lit::Bool(*b),
                Value::Number(n, _) => Lit::Number(n.clone()),
                Value::SingleQuotedString(s) => Lit::Text(s.clone()),
                other => return refuse(format!("literal {other} in HAVING")),
            }),
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } if number(expr).is_some() => Cond::Lit(Lit::Number(format!(
                "-{}",
                number(expr).unwrap_or_default()
            ))),
            other => Cond::Col(self.operand(other, "HAVING")?),
        })
    }
}

/// Aggregates and groups: shards aggregate their own rows per group, the
/// proxy combines the groups, then applies HAVING, DISTINCT, ORDER BY and
/// LIMIT/OFFSET.
fn plan_groups(
    q: &Query,
    sel: &Select,
    order: &[&sqlparser::ast::OrderByExpr],
    group_by: &[&Expr],
    limits: Limits,
    distinct: bool,
    bindings: &[Binding],
) -> Result<MergePlan, RouteError> {
    let Some(items) = items(sel) else {
        return refuse("* together with aggregates or GROUP BY");
    };
    let mut group_exprs = Vec::new();
    for g in group_by {
        match output_ref(g, &items)? {
            Some(i) if has_aggregate(items[i].0) => {
                return Err(RouteError::Unsupported(format!(
                    "aggregate functions are not allowed in GROUP BY ({})",
                    items[i].0
                )))
            }
            Some(i) => group_exprs.push(strip(items[i].0).clone()),
            None => group_exprs.push(strip(g).clone()),
        }
    }
    let mut p = GroupPlanner {
        bindings,
        group_exprs: group_exprs.clone(),
        cols: Vec::new(),
        outputs: Vec::new(),
        made: Vec::new(),
    };
    for (e, alias) in &items {
        if p.agg(e, *alias, false)?.is_some() {
            continue;
        }
        if p.pass(e, *alias, false).is_none() {
            if has_aggregate(e) {
                return refuse(format!("expressions over aggregates ({e})"));
            }
            return Err(RouteError::Unsupported(format!(
                "column {e} must appear in the GROUP BY clause or be used in an aggregate function"
            )));
        }
    }
    let visible = p.outputs.len();
    // Every grouping expression must be a shard column to group on.
    let mut keys = Vec::new();
    for g in &group_exprs {
        let i = match p.made_for(g) {
            Some(i) => i,
            None => p.pass(g, None, true).unwrap_or(0),
        };
        if let Output::Pass(c) = p.outputs[i] {
            keys.push(c);
        }
    }
    let having = match &sel.having {
        Some(h) => Some(p.cond(h)?),
        None => None,
    };
    let mut sort = Vec::new();
    for o in order {
        let i = match output_ref(&o.expr, &items)? {
            Some(i) => i,
            None => match items.iter().position(|(e, _)| strip(e) == strip(&o.expr)) {
                Some(i) => i,
                None => p.operand(&o.expr, "ORDER BY")?,
            },
        };
        sort.push(sort_key(i, o));
    }
    let mut shard_q = q.clone();
    shard_q.order_by = None;
    shard_q.limit_clause = None;
    shard_q.fetch = None;
    if let SetExpr::Select(s) = shard_q.body.as_mut() {
        s.projection = p.cols;
        s.distinct = None;
        s.having = None;
        s.group_by = GroupByExpr::Expressions(group_exprs, Vec::new());
    }
    Ok(MergePlan {
        sql: shard_q.to_string(),
        shape: Shape::Groups {
            keys,
            outputs: p.outputs,
            visible,
            having,
        },
        order: sort,
        offset: limits.offset,
        limit: limits.limit,
        distinct,
        params: Vec::new(),
    })
}
