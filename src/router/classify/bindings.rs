//! The sharded tables a statement reads (its bindings) and the shards their
//! keys pin: `key = c` and `key IN (...)` in WHERE, and joins of co-located
//! tables on their keys.

use super::*;

/// A sharded table in a FROM list, with the name it is referred to by.
pub(super) struct Binding<'m> {
    pub(super) rule: &'m TableRule,
    pub(super) qualifier: String,
}

pub(super) fn bind<'m>(
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

pub(super) fn bind_from<'m>(
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
        // Only a cast that keeps the literal's value as the column will hold
        // it: `'abcdef'::varchar(3)` is "abc", `'0012'::int` into a text
        // key is "12"; any other is no constant the proxy can read.
        Expr::Cast {
            expr, data_type, ..
        } if cast_keeps_value(data_type, ty) => literal_key(expr, ty),
        Expr::TypedString(ts) if cast_keeps_value(&ts.data_type, ty) => {
            literal_value(&ts.value.value, ty, "")
        }
        Expr::UnaryOp { op, expr } => match (op, expr.as_ref()) {
            (UnaryOperator::Minus, Expr::Value(v)) => literal_value(&v.value, ty, "-"),
            (UnaryOperator::Plus, Expr::Value(v)) => literal_value(&v.value, ty, ""),
            _ => None,
        },
        Expr::Value(v) => literal_value(&v.value, ty, ""),
        _ => None,
    }
}

/// Whether a cast to `to` leaves a key literal's text as the key column of
/// type `ty` reads it: a cast within the integer types (whose ranges the
/// key's own parse checks), to unbounded text, or to uuid.
fn cast_keeps_value(to: &sqlparser::ast::DataType, ty: KeyType) -> bool {
    let name = to.to_string().to_ascii_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    match ty {
        KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => matches!(
            name,
            "smallint" | "int2" | "integer" | "int" | "int4" | "bigint" | "int8"
        ),
        KeyType::Text => matches!(name, "text" | "varchar" | "character varying"),
        KeyType::Uuid => name == "uuid",
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
pub(super) fn route_bindings(
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
