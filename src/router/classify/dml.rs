//! Routing of queries and data changes: which shards a `SELECT`, `UPDATE`
//! or `DELETE` reaches, from the shard keys it fixes (`INSERT`s: insert.rs).

use super::scope::Reach;
use super::*;

/// A sharded table in a FROM list, with the name it is referred to by.
pub(super) struct Binding<'m> {
    pub(super) rule: &'m TableRule,
    pub(super) qualifier: String,
}

fn bind<'m>(
    factor: &TableFactor,
    map: &'m ShardMap,
    ctes: &HashSet<String>,
    out: &mut Vec<Binding<'m>>,
) {
    if let TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    } = factor
    {
        if let Rel::Sharded(rule) = classify_rel(name, map, ctes) {
            let qualifier = alias
                .as_ref()
                .map(|a| ident_name(&a.name))
                .unwrap_or_else(|| object_parts(name).1);
            out.push(Binding { rule, qualifier });
        }
    }
}

fn bind_from<'m>(
    from: &[&TableWithJoins],
    map: &'m ShardMap,
    ctes: &HashSet<String>,
) -> Vec<Binding<'m>> {
    let mut out = Vec::new();
    for twj in from {
        bind(&twj.relation, map, ctes, &mut out);
        for j in &twj.joins {
            bind(&j.relation, map, ctes, &mut out);
        }
    }
    out
}

pub(super) fn conjuncts<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        other => out.push(other),
    }
}

pub(super) fn is_key_ref(e: &Expr, b: &Binding, all: &[Binding]) -> bool {
    match e {
        Expr::Nested(inner) => is_key_ref(inner, b, all),
        Expr::Identifier(id) => {
            let n = ident_name(id);
            n == b.rule.key && all.iter().filter(|x| x.rule.key == n).count() == 1
        }
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [.., q, c] => ident_name(c) == b.rule.key && ident_name(q) == b.qualifier,
            _ => false,
        },
        _ => false,
    }
}

/// A constant usable as a key: `None` when `e` is not a literal.
pub(super) fn literal_key(e: &Expr, ty: KeyType) -> Option<Result<KeyValue, KeyError>> {
    match e {
        Expr::Nested(inner) => literal_key(inner, ty),
        Expr::Cast { expr, .. } => literal_key(expr, ty),
        Expr::TypedString(ts) => literal_value(&ts.value.value, ty, ""),
        Expr::UnaryOp { op, expr } => match (op, expr.as_ref()) {
            (UnaryOperator::Minus, Expr::Value(v)) => literal_value(&v.value, ty, "-"),
            (UnaryOperator::Plus, Expr::Value(v)) => literal_value(&v.value, ty, ""),
            _ => None,
        },
        Expr::Value(v) => literal_value(&v.value, ty, ""),
        _ => None,
    }
}

fn literal_value(v: &Value, ty: KeyType, sign: &str) -> Option<Result<KeyValue, KeyError>> {
    let text = match v {
        Value::Number(n, _) => format!("{sign}{n}"),
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
            if sign.is_empty() =>
        {
            s.clone()
        }
        Value::DollarQuotedString(d) if sign.is_empty() => d.value.clone(),
        _ => return None,
    };
    Some(KeyValue::parse_typed(ty, &text))
}

pub(super) fn is_null(e: &Expr) -> bool {
    match e {
        Expr::Value(v) => matches!(v.value, Value::Null),
        Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => is_null(inner),
        _ => false,
    }
}

/// The shards a binding's rows can be on, from `key = c` / `key IN (...)` in the
/// top-level AND chain; `None` when the WHERE does not pin the key.
pub(super) fn key_shards<'a>(
    selection: Option<&'a Expr>,
    b: &Binding,
    all: &[Binding],
    map: &ShardMap,
) -> Option<Vec<ShardId>> {
    let mut cs = Vec::new();
    conjuncts(selection?, &mut cs);
    for c in cs {
        let values: Option<Vec<&Expr>> = match c {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => {
                let side = |e: &'a Expr| match e {
                    Expr::Subquery(q) => constant_rows(q).filter(|v| v.len() == 1),
                    e => Some(vec![e]),
                };
                if is_key_ref(left, b, all) {
                    side(right)
                } else if is_key_ref(right, b, all) {
                    side(left)
                } else {
                    None
                }
            }
            Expr::In {
                expr,
                target: InTarget::List(list),
                negated: false,
                ..
            } if is_key_ref(expr, b, all) => Some(list.iter().collect()),
            // `key IN (SELECT 17)`, `key IN (VALUES (1), (2))`: constants.
            Expr::In {
                expr,
                target: InTarget::Subquery(q),
                negated: false,
                ..
            } if is_key_ref(expr, b, all) => constant_rows(q),
            _ => None,
        };
        let Some(values) = values else { continue };
        let keys: Option<Vec<KeyValue>> = values
            .iter()
            .map(|v| literal_key(v, b.rule.key_type).and_then(Result::ok))
            .collect();
        let Some(keys) = keys else { continue };
        let mut shards: Vec<ShardId> = keys
            .iter()
            .filter_map(|k| b.rule.shard_for(k, map.shards))
            .collect();
        if shards.is_empty() {
            // No shard can hold such a row; any one answers "no rows".
            shards.push(map.default_shard);
        }
        return Some(shards);
    }
    None
}

/// The values of a subquery that only lists constants, one column wide:
/// `SELECT 17`, `VALUES (1), (2)`, and `UNION ALL`s of them.
fn constant_rows(q: &Query) -> Option<Vec<&Expr>> {
    if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return None;
    }
    fn rows<'q>(body: &'q SetExpr, out: &mut Vec<&'q Expr>) -> Option<()> {
        match body {
            // A stage's rows: SELECT * FROM (VALUES ...) AS v(c).
            SetExpr::Select(sel)
                if sel.selection.is_none()
                    && matches!(
                        sel.projection.as_slice(),
                        [sqlparser::ast::SelectItem::Wildcard(_)]
                    )
                    && matches!(sel.from.as_slice(), [f] if f.joins.is_empty()
                        && matches!(&f.relation, TableFactor::Derived { subquery, .. }
                            if matches!(subquery.body.as_ref(), SetExpr::Values(_)))) =>
            {
                if let Some(TableFactor::Derived { subquery, .. }) =
                    sel.from.first().map(|f| &f.relation)
                {
                    out.extend(constant_rows(subquery)?);
                }
            }
            SetExpr::Select(sel) => {
                let plain = sel.from.is_empty()
                    && sel.selection.is_none()
                    && sel.having.is_none()
                    && sel.distinct.is_none()
                    && matches!(&sel.group_by, GroupByExpr::Expressions(g, _) if g.is_empty());
                match (plain, sel.projection.as_slice()) {
                    (true, [sqlparser::ast::SelectItem::UnnamedExpr(e)])
                    | (true, [sqlparser::ast::SelectItem::ExprWithAlias { expr: e, .. }]) => {
                        out.push(e)
                    }
                    _ => return None,
                }
            }
            SetExpr::Values(v) => {
                for row in &v.rows {
                    match row.content.as_slice() {
                        [e] => out.push(e),
                        _ => return None,
                    }
                }
            }
            SetExpr::SetOperation {
                op: sqlparser::ast::SetOperator::Union,
                left,
                right,
                ..
            } => {
                rows(left, out)?;
                rows(right, out)?;
            }
            SetExpr::Query(q) => out.extend(constant_rows(q)?),
            _ => return None,
        }
        Some(())
    }
    let mut out = Vec::new();
    rows(&q.body, &mut out)?;
    Some(out)
}

/// The ON conditions of joins.
pub(super) fn join_conditions<'a>(
    joins: impl Iterator<Item = &'a sqlparser::ast::Join>,
    out: &mut Vec<&'a Expr>,
) {
    use sqlparser::ast::{JoinConstraint, JoinOperator as J};
    for j in joins {
        let c = match &j.join_operator {
            J::Join(c)
            | J::Inner(c)
            | J::Left(c)
            | J::LeftOuter(c)
            | J::Right(c)
            | J::RightOuter(c)
            | J::FullOuter(c) => c,
            _ => continue,
        };
        if let JoinConstraint::On(e) = c {
            out.push(e);
        }
    }
}

/// Tables whose equal keys always live on the same shard.
pub(super) fn co_located(a: &TableRule, b: &TableRule) -> bool {
    a.key_type == b.key_type
        && (matches!(
            (&a.mapping, &b.mapping),
            (super::super::Mapping::Hash, super::super::Mapping::Hash)
        ) || a.name == b.name)
}

/// Groups bindings joined by `x.key = y.key` of co-located tables (in WHERE
/// or ON): each group's rows meet only on one shard. Returns a group id per binding.
fn key_groups(bindings: &[Binding], conds: &[&Expr]) -> Vec<usize> {
    let mut group: Vec<usize> = (0..bindings.len()).collect();
    fn find(g: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while g[r] != r {
            r = g[r];
        }
        g[i] = r;
        r
    }
    let mut cs = Vec::new();
    for c in conds {
        conjuncts(c, &mut cs);
    }
    for c in cs {
        let Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = c
        else {
            continue;
        };
        let side = |e: &Expr| bindings.iter().position(|b| is_key_ref(e, b, bindings));
        if let (Some(i), Some(j)) = (side(left), side(right)) {
            if i != j && co_located(bindings[i].rule, bindings[j].rule) {
                let (a, b) = (find(&mut group, i), find(&mut group, j));
                group[a] = b;
            }
        }
    }
    (0..bindings.len()).map(|i| find(&mut group, i)).collect()
}

/// Combines the bindings' key restrictions into one route.
fn route_bindings(
    bindings: &[Binding],
    selection: Option<&Expr>,
    on: &[&Expr],
    map: &ShardMap,
) -> Result<Route, RouteError> {
    let per: Vec<Option<Vec<ShardId>>> = bindings
        .iter()
        .map(|b| key_shards(selection, b, bindings, map))
        .collect();
    if bindings.len() == 1 {
        return Ok(match &per[0] {
            Some(s) => Route::from_shards(s.clone(), map.shards),
            None => Route::All,
        });
    }
    // Co-located tables joined on their keys: each shard joins its own rows,
    // on the shards the fixed keys allow (every shard if none is fixed).
    let mut conds: Vec<&Expr> = selection.into_iter().collect();
    conds.extend_from_slice(on);
    let groups = key_groups(bindings, &conds);
    if groups.iter().all(|g| *g == groups[0]) {
        let fixed: Vec<ShardId> = per.iter().flatten().flatten().copied().collect();
        return Ok(if per.iter().any(Option::is_some) {
            Route::from_shards(fixed, map.shards)
        } else {
            Route::All
        });
    }
    let mut all = Vec::new();
    for (b, s) in bindings.iter().zip(&per) {
        match s {
            Some(s) => all.extend(s.iter().copied()),
            None => {
                return unsupported(format!(
                    "joins of sharded tables need each table's shard key fixed in WHERE to values on one shard, or the tables joined on their shard keys (\"{}\" is neither)",
                    b.rule.name
                ))
            }
        }
    }
    match Route::from_shards(all, map.shards) {
        Route::One(s) => Ok(Route::One(s)),
        _ => unsupported("joins of sharded tables across shards are not supported unless they join on their shard keys"),
    }
}

/// Routes a query; `source` is the client's text before bound values
/// replaced its placeholders (what a merge's shard statement is made from).
pub(super) fn route_select(
    q: &Query,
    source: Option<&Query>,
    t: &Tables,
    map: &ShardMap,
) -> Result<Plan, RouteError> {
    let modifies = q.with.as_ref().is_some_and(|w| {
        w.cte_tables.iter().any(|c| {
            matches!(
                *c.query.body,
                SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_)
            )
        })
    });
    // Locks and functions anywhere in the query count, subqueries and CTEs too.
    let write = if modifies {
        Writes::Yes
    } else {
        t.facts.writes()
    };
    // Subqueries and CTEs: one shard when every sharded table they read,
    // at any depth, is pinned there (scoped as SQL scopes names: a CTE may
    // shadow a sharded table in one part of the statement only).
    let reach = if t.facts.queries > 1 {
        super::scope::reach(q, map)
    } else {
        Reach::NoSharded
    };
    match reach {
        Reach::One(shard) => {
            t.check_no_local_mix(map)?;
            return Ok(Plan::Forward {
                route: Route::One(shard),
                write,
            });
        }
        // The routing below reads names without scopes: a CTE named like a
        // distributed table would hide the table everywhere.
        Reach::Spread | Reach::Local
            if t.facts.ctes.iter().any(|c| {
                map.tables.contains_key(c) || map.reference.contains(c)
            }) =>
        {
            return unsupported(
                "a sharded table read in one part of the statement shares its name with a CTE of another part; rename the CTE",
            )
        }
        Reach::Spread | Reach::NoSharded | Reach::Local => {}
    }
    if t.sharded.is_empty() {
        t.check_no_local_mix(map)?;
        if t.other.is_empty() {
            return Ok(Plan::Forward {
                route: Route::Any,
                write,
            });
        }
        return Ok(default_route(map, write));
    }
    t.check_no_local_mix(map)?;
    if modifies {
        return unsupported("data-modifying WITH on sharded tables is not supported");
    }
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return unsupported(format!(
            "set operations (UNION, INTERSECT, EXCEPT) over sharded table \"{}\" are not supported yet",
            t.sharded[0].name
        ));
    };
    let from: Vec<&TableWithJoins> = sel.from.iter().collect();
    let bindings = bind_from(&from, map, &t.facts.ctes);
    let local = reach == Reach::Local || t.facts.queries == 1;
    if bindings.len() < t.sharded.len() && !local {
        // A count of a filtering subquery is a count of the same rows.
        if let Some(flat) = super::stage::flatten_count(q) {
            let flat_source = source.and_then(super::stage::flatten_count);
            let stmt = Statement::Query(Box::new(flat.clone()));
            let ft = Tables::gather(&stmt, map);
            return route_select(&flat, flat_source.as_ref(), &ft, map);
        }
        // Subqueries over sharded tables run first, as stages of their own.
        if source.is_none() {
            if let Some(p) = super::stage::plan_staged(q, map)? {
                return Ok(p);
            }
        }
        return unsupported(format!(
            "sharded table \"{}\" in a subquery or CTE is not supported yet",
            t.sharded[0].name
        ));
    }
    let mut on = Vec::new();
    join_conditions(from.iter().flat_map(|t| t.joins.iter()), &mut on);
    let route = route_bindings(&bindings, sel.selection.as_ref(), &on, map)?;
    if let Route::One(_) = route {
        return Ok(Plan::Forward { route, write });
    }
    // Several shards answer: merge what concatenation would get wrong.
    let merged = match super::merge::plan_merge(q, source, t, &bindings, local) {
        Ok(m) => m,
        // Expressions over aggregates: the aggregates as a stage, the
        // expressions evaluated by PostgreSQL over their merged values.
        Err(e) if source.is_none() && t.facts.queries == 1 && t.facts.aggregates => {
            match super::stage::lift_aggregates(q).map(|l| super::stage::plan_staged(&l, map)) {
                Some(Ok(Some(p))) => return Ok(p),
                _ => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    match merged {
        None => Ok(Plan::Forward { route, write }),
        Some(plan) => Ok(Plan::Merge {
            route,
            plan: std::sync::Arc::new(plan),
        }),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn route_modify(
    target: &ObjectName,
    alias: Option<&sqlparser::ast::Ident>,
    joins: &[sqlparser::ast::Join],
    extra: &[&TableWithJoins],
    selection: Option<&Expr>,
    assignments: &[(&AssignmentTarget, &Expr)],
    returning: Option<&Vec<sqlparser::ast::SelectItem>>,
    t: &Tables,
    map: &ShardMap,
) -> Result<Plan, RouteError> {
    t.check_no_local_mix(map)?;
    // Subqueries: pinned to one shard, or answered per shard for its own
    // rows, as for a SELECT over the same tables and conditions.
    let reach = if t.facts.queries > 0 {
        modify_reach(
            target,
            alias,
            joins,
            extra,
            selection,
            assignments,
            returning,
            map,
        )
    } else {
        Reach::NoSharded
    };
    match classify_rel(target, map, &t.facts.ctes) {
        Rel::Sharded(rule) => {
            let mut bindings = vec![Binding {
                rule,
                qualifier: alias
                    .map(ident_name)
                    .unwrap_or_else(|| object_parts(target).1),
            }];
            for j in joins {
                bind(&j.relation, map, &t.facts.ctes, &mut bindings);
            }
            bindings.extend(bind_from(extra, map, &t.facts.ctes));
            let scoped = matches!(reach, Reach::One(_) | Reach::Local);
            if bindings.len() < t.sharded.len() && !scoped {
                return unsupported(format!(
                    "sharded table \"{}\" in a subquery of an UPDATE or DELETE is supported only when every sharded table it reads is pinned to the target rows' shard (by key, or correlated on the key); fix the shard key or select the keys first",
                    t.sharded[0].name
                ));
            }
            let mut on = Vec::new();
            join_conditions(
                joins
                    .iter()
                    .chain(extra.iter().flat_map(|t| t.joins.iter())),
                &mut on,
            );
            let route = match reach {
                Reach::One(s) => Route::One(s),
                _ => route_bindings(&bindings, selection, &on, map)?,
            };
            for (target, value) in assignments {
                let names: Vec<&ObjectName> = match target {
                    AssignmentTarget::ColumnName(n) => vec![n],
                    AssignmentTarget::Tuple(v) => v.iter().collect(),
                };
                if names.iter().any(|n| object_parts(n).1 == rule.key) {
                    let to = literal_key(value, rule.key_type)
                        .and_then(Result::ok)
                        .and_then(|k| rule.shard_for(&k, map.shards));
                    match (&route, to) {
                        (Route::One(s), Some(d)) if *s == d => {}
                        _ => {
                            return unsupported(format!(
                                "updating shard key \"{}\" of table \"{}\" could move rows to another shard; delete and re-insert them instead",
                                rule.key, rule.name
                            ))
                        }
                    }
                }
            }
            if route != Route::One(route.shards(map.shards)[0])
                && t.facts.queries > 0
                && reach != Reach::Local
            {
                return unsupported(
                    "subqueries in an UPDATE or DELETE that spans shards are not supported yet",
                );
            }
            Ok(Plan::Forward {
                route,
                write: Writes::Yes,
            })
        }
        Rel::Reference(name) => {
            if let Some(s) = t.sharded.first() {
                return unsupported(format!(
                    "writing reference table \"{name}\" from sharded table \"{}\" is not supported",
                    s.name
                ));
            }
            Ok(Plan::Replicate)
        }
        Rel::Catalog | Rel::Other(_) => Ok(default_route(map, Writes::Yes)),
    }
}

/// [`super::scope::reach`] of an UPDATE or DELETE, read as the SELECT of
/// the same tables, conditions and expressions.
#[allow(clippy::too_many_arguments)]
fn modify_reach(
    target: &ObjectName,
    alias: Option<&sqlparser::ast::Ident>,
    joins: &[sqlparser::ast::Join],
    extra: &[&TableWithJoins],
    selection: Option<&Expr>,
    assignments: &[(&AssignmentTarget, &Expr)],
    returning: Option<&Vec<sqlparser::ast::SelectItem>>,
    map: &ShardMap,
) -> Reach {
    let mut items: Vec<String> = assignments.iter().map(|(_, v)| v.to_string()).collect();
    items.extend(returning.into_iter().flatten().map(|i| i.to_string()));
    if items.is_empty() {
        items.push("1".into());
    }
    let mut from = target.to_string();
    if let Some(a) = alias {
        from.push_str(&format!(" AS {a}"));
    }
    for j in joins {
        from.push_str(&format!(" {j}"));
    }
    for e in extra {
        from.push_str(&format!(", {e}"));
    }
    let mut sql = format!("SELECT {} FROM {from}", items.join(", "));
    if let Some(w) = selection {
        sql.push_str(&format!(" WHERE {w}"));
    }
    match Parser::parse_sql(&PostgreSqlDialect {}, &sql).map(|mut v| v.pop()) {
        Ok(Some(Statement::Query(q))) => super::scope::reach(&q, map),
        _ => Reach::Spread,
    }
}

/// For a statement whose only sharded table is pinned by `key = $n` (or, in
/// a one-row INSERT, whose key value is `$n`): that table and `n - 1`.
/// Everything else about its route is then fixed; only the value moves it.
pub(super) fn keyed_param<'m>(
    stmt: &Statement,
    map: &'m ShardMap,
) -> Option<(&'m TableRule, usize)> {
    let t = Tables::gather(stmt, map);
    if t.sharded.len() != 1 || !t.other.is_empty() {
        return None;
    }
    fn placeholder(e: &Expr) -> Option<usize> {
        match e {
            Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => placeholder(inner),
            Expr::Value(v) => match &v.value {
                Value::Placeholder(p) => p
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n > 0)
                    .map(|n| n - 1),
                _ => None,
            },
            _ => None,
        }
    }
    let pinned = |selection: Option<&Expr>, b: Binding<'m>| {
        let all = [b];
        let mut cs = Vec::new();
        conjuncts(selection?, &mut cs);
        cs.into_iter()
            .find_map(|c| match c {
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                } if is_key_ref(left, &all[0], &all) => placeholder(right),
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                } if is_key_ref(right, &all[0], &all) => placeholder(left),
                _ => None,
            })
            .map(|n| (all[0].rule, n))
    };
    let single = |name: &ObjectName, alias: Option<&sqlparser::ast::Ident>| match classify_rel(
        name,
        map,
        &t.facts.ctes,
    ) {
        Rel::Sharded(rule) => Some(Binding {
            rule,
            qualifier: alias
                .map(ident_name)
                .unwrap_or_else(|| object_parts(name).1),
        }),
        _ => None,
    };
    match stmt {
        Statement::Query(q) => {
            let SetExpr::Select(sel) = q.body.as_ref() else {
                return None;
            };
            let from: Vec<&TableWithJoins> = sel.from.iter().collect();
            let mut bindings = bind_from(&from, map, &t.facts.ctes);
            if bindings.len() != 1 {
                return None;
            }
            pinned(sel.selection.as_ref(), bindings.remove(0))
        }
        Statement::Update(u) => {
            let TableFactor::Table { name, alias, .. } = &u.table.relation else {
                return None;
            };
            if u.from.is_some() || !u.table.joins.is_empty() {
                return None;
            }
            let b = single(name, alias.as_ref().map(|a| &a.name))?;
            let touches_key = u.assignments.iter().any(|a| match &a.target {
                AssignmentTarget::ColumnName(n) => object_parts(n).1 == b.rule.key,
                AssignmentTarget::Tuple(v) => v.iter().any(|n| object_parts(n).1 == b.rule.key),
            });
            if touches_key {
                return None;
            }
            pinned(u.selection.as_ref(), b)
        }
        Statement::Delete(d) => {
            let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
            let [only] = from.as_slice() else {
                return None;
            };
            if d.using.is_some() || !only.joins.is_empty() {
                return None;
            }
            let TableFactor::Table { name, alias, .. } = &only.relation else {
                return None;
            };
            let b = single(name, alias.as_ref().map(|a| &a.name))?;
            pinned(d.selection.as_ref(), b)
        }
        Statement::Insert(ins) => {
            let TableObject::TableName(target) = &ins.table else {
                return None;
            };
            let Rel::Sharded(rule) = classify_rel(target, map, &t.facts.ctes) else {
                return None;
            };
            let q = ins.source.as_ref().filter(|q| q.with.is_none())?;
            let SetExpr::Values(v) = q.body.as_ref() else {
                return None;
            };
            let [row] = v.rows.as_slice() else {
                return None;
            };
            let idx = ins
                .columns
                .iter()
                .position(|c| object_parts(c).1 == rule.key)?;
            placeholder(row.content.get(idx)?).map(|n| (rule, n))
        }
        _ => None,
    }
}
