//! Rewrites that give a query a shape the router plans exactly: expressions
//! over aggregates lifted above a grouped subquery (which then runs as a
//! stage, see stage.rs), and `SELECT count(*)` over a subquery that only
//! filters flattened into one count.

use sqlparser::ast::{
    Distinct, FunctionArguments, Ident, SelectItem, TableAlias, VisitMut, VisitorMut,
};

use super::*;

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
