//! Routing of queries and data changes: which shards a `SELECT`, `UPDATE`
//! or `DELETE` reaches, from the shard keys it fixes (`INSERT`s: insert.rs).

use super::bindings::{
    bind, bind_from, conjuncts, is_key_ref, join_conditions, literal_key, route_bindings, Binding,
};
use super::scope::Reach;
use super::*;

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
        return unsupported("data-modifying WITH on sharded tables is not supported; run each modifying statement on its own (in one transaction block for atomicity)");
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
        if let Some(flat) = super::rewrite::flatten_count(q) {
            let flat_source = source.and_then(super::rewrite::flatten_count);
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
            "sharded table \"{}\" in this subquery or CTE is not supported across shards; fix its shard key to reach one shard, join it on the shard key, or run it as a query of its own first",
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
            match super::rewrite::lift_aggregates(q).map(|l| super::stage::plan_staged(&l, map)) {
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
            plan: std::sync::Arc::new(crate::merge::MergePlan { write, ..plan }),
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
