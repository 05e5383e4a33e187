//! Routing of `INSERT`s into sharded tables: each row to its key's shard
//! (a multi-row `INSERT` split per shard), keys left to the cluster, and the
//! `INSERT ... SELECT` forms ORMs send for many rows.

use super::bindings::{is_null, literal_key};
use super::*;
use crate::router::SplitPart;

pub(super) fn route_insert(
    stmt: &Statement,
    t: &Tables,
    map: &ShardMap,
    original: Option<&Statement>,
) -> Result<Plan, RouteError> {
    let Statement::Insert(ins) = stmt else {
        return unsupported("not an INSERT");
    };
    let TableObject::TableName(target) = &ins.table else {
        return unsupported("INSERT INTO a table function is not supported");
    };
    // INSERT INTO sharded (cols) SELECT over unsharded or reference data
    // (not SQLAlchemy's VALUES form below): its rows are routed by the
    // proxy.
    if let (Rel::Sharded(rule), Some(q), None) = (
        classify_rel(target, map, &t.facts.ctes),
        &ins.source,
        super::keys::values_form(ins),
    ) {
        if !matches!(q.body.as_ref(), SetExpr::Values(_)) {
            if let (true, Some(count)) = (ins.columns.is_empty(), values_width(ins)) {
                return Ok(Plan::NeedColumns(crate::router::ColumnRequest {
                    table: target.to_string(),
                    count,
                }));
            }
            return insert_select(ins, target, rule, q, t, map);
        }
    }
    t.check_no_local_mix(map)?;
    // SQLAlchemy's INSERT ... SELECT ... FROM (VALUES ...) ORDER BY n: the
    // rows it lists, in that order.
    if let (Rel::Sharded(_), Some(v)) = (
        classify_rel(target, map, &t.facts.ctes),
        super::keys::values_form(ins),
    ) {
        let orig = match original {
            Some(Statement::Insert(o)) => super::keys::values_form(o).map(Statement::Insert),
            _ => None,
        };
        if original.is_none() || orig.is_some() {
            let stmt = Statement::Insert(v);
            let t = Tables::gather(&stmt, map);
            return route_insert(&stmt, &t, map, orig.as_ref());
        }
    }
    let rule = match classify_rel(target, map, &t.facts.ctes) {
        Rel::Sharded(rule) => rule,
        Rel::Reference(name) => {
            if let Some(s) = t.sharded.first() {
                return unsupported(format!(
                    "filling reference table \"{name}\" from sharded table \"{}\" is not supported",
                    s.name
                ));
            }
            return Ok(Plan::Replicate);
        }
        Rel::Catalog | Rel::Other(_) => {
            return Ok(default_route(map, Writes::Yes));
        }
    };
    // Without a column list the values fill the table's first columns: the
    // session learns which, and the key's place among them, from the catalog.
    if let (true, Some(count)) = (ins.columns.is_empty(), values_width(ins)) {
        return Ok(Plan::NeedColumns(crate::router::ColumnRequest {
            table: target.to_string(),
            count,
        }));
    }
    if t.sharded.len() <= 1 {
        if let Some(req) = super::keys::request(ins, target, rule)? {
            return Ok(Plan::NeedKeys(req));
        }
    }
    let values = match &ins.source {
        Some(q) if q.with.is_none() => match q.body.as_ref() {
            SetExpr::Values(v) => v,
            _ => {
                return unsupported(format!(
                    "INSERT into sharded table \"{}\" needs VALUES (INSERT ... SELECT is not supported yet)",
                    rule.name
                ))
            }
        },
        _ => {
            return unsupported(format!(
                "INSERT into sharded table \"{}\" needs VALUES with the shard key \"{}\"",
                rule.name, rule.key
            ))
        }
    };
    if t.sharded.len() > 1 {
        return unsupported(
            "INSERT into a sharded table that reads other sharded tables is not supported; SELECT the values first, then INSERT them",
        );
    }
    let Some(idx) = ins
        .columns
        .iter()
        .position(|c| object_parts(c).1 == rule.key)
    else {
        return unsupported(format!(
            "INSERT into sharded table \"{}\" must name its columns, including the shard key \"{}\"",
            rule.name, rule.key
        ));
    };
    let mut groups: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
    for (i, row) in values.rows.iter().enumerate() {
        let Some(e) = row.content.get(idx) else {
            return Err(RouteError::Syntax(
                "INSERT has more target columns than expressions".into(),
            ));
        };
        if is_null(e) {
            return Err(RouteError::NullKey {
                table: rule.name.clone(),
                column: rule.key.clone(),
            });
        }
        let key = match literal_key(e, rule.key_type) {
            Some(Ok(k)) => k,
            Some(Err(err)) => return Err(RouteError::BadKey(err)),
            None => {
                return unsupported(format!(
                    "the shard key \"{}\" of table \"{}\" must be a constant in INSERT",
                    rule.key, rule.name
                ))
            }
        };
        let shard = rule.place(&key, map.shards)?;
        groups.entry(shard).or_default().push(i);
    }
    if groups.len() == 1 {
        let shard = *groups.keys().next().unwrap_or(&map.default_shard);
        return Ok(Plan::Forward {
            route: Route::One(shard),
            write: Writes::Yes,
        });
    }
    let mut parts = Vec::with_capacity(groups.len());
    for (shard, rows) in groups {
        // With parameters, the client's own statement is cut, not the one
        // carrying bound values.
        let mut s = original.unwrap_or(stmt).clone();
        if let Statement::Insert(i) = &mut s {
            if let Some(SetExpr::Values(v)) = i.source.as_mut().map(|q| q.body.as_mut()) {
                let all = std::mem::take(&mut v.rows);
                v.rows = rows.iter().filter_map(|&r| all.get(r).cloned()).collect();
            }
        }
        let params = if original.is_some() {
            renumber_placeholders(&mut s)
        } else {
            Vec::new()
        };
        parts.push(SplitPart {
            shard,
            sql: s.to_string(),
            params,
            rows,
        });
    }
    Ok(Plan::Split { parts })
}

/// Renumbers `$n` placeholders `$1..$k` in order of appearance; returns, for
/// each new number, the client's parameter index (0-based).
pub(super) fn renumber_placeholders(stmt: &mut Statement) -> Vec<usize> {
    let mut order: Vec<usize> = Vec::new();
    let _ = sqlparser::ast::visit_expressions_mut(stmt, |e| {
        if let Expr::Value(v) = e {
            if let Value::Placeholder(p) = &v.value {
                if let Some(n) = p
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n > 0)
                {
                    let k = match order.iter().position(|&o| o == n - 1) {
                        Some(k) => k,
                        None => {
                            order.push(n - 1);
                            order.len() - 1
                        }
                    };
                    v.value = Value::Placeholder(format!("${}", k + 1));
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    order
}

/// `INSERT INTO sharded (cols) SELECT ...`: planned when the SELECT reads
/// only unsharded tables (on the default shard), reference tables, catalogs
/// or functions such as `generate_series`, and proves read-only.
fn insert_select(
    ins: &sqlparser::ast::Insert,
    target: &sqlparser::ast::ObjectName,
    rule: &TableRule,
    q: &sqlparser::ast::Query,
    t: &Tables,
    map: &ShardMap,
) -> Result<Plan, RouteError> {
    if t.sharded.len() > 1 {
        return unsupported(format!(
            "INSERT INTO sharded table \"{}\" ... SELECT from sharded tables is not supported: the SELECT may read only unsharded or reference tables",
            rule.name
        ));
    }
    if ins.returning.is_some() || ins.on.is_some() {
        return unsupported(format!(
            "INSERT INTO sharded table \"{}\" ... SELECT with RETURNING or ON CONFLICT is not supported; INSERT ... VALUES supports both",
            rule.name
        ));
    }
    if t.facts.writes() != Writes::No {
        return unsupported(format!(
            "INSERT INTO sharded table \"{}\" ... SELECT whose SELECT may write (a function Pieskieo does not know) is not supported; SELECT the values first, then INSERT them",
            rule.name
        ));
    }
    let columns: Vec<String> = ins.columns.iter().map(|c| object_parts(c).1).collect();
    if !columns.contains(&rule.key) {
        return unsupported(format!(
            "INSERT into sharded table \"{}\" must name its columns, including the shard key \"{}\"",
            rule.name, rule.key
        ));
    }
    let (schema, name) = object_parts(target);
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let relation = match schema {
        Some(s) => format!("{}.{}", quote(&s), quote(&name)),
        None => quote(&name),
    };
    let source = if t.other.is_empty() {
        Route::Any
    } else {
        Route::One(map.default_shard)
    };
    Ok(Plan::InsertSelect {
        into: Box::new(crate::router::CopyIn {
            table: rule.name.clone(),
            relation,
            columns: Some(columns),
            options: crate::router::CopyOptions::text(),
            placement: crate::router::CopyPlacement::Sharded,
            keys: None,
        }),
        select: q.to_string(),
        source,
        reads_tables: !t.reference.is_empty() || !t.other.is_empty(),
    })
}

/// How many values each row of an `INSERT ... VALUES` (or `INSERT ...
/// SELECT` of a plain select list) gives; `None` for `DEFAULT VALUES` and
/// sources whose width the text does not show (`SELECT *`).
fn values_width(ins: &sqlparser::ast::Insert) -> Option<usize> {
    let q = ins.source.as_ref()?;
    match q.body.as_ref() {
        SetExpr::Values(v) => v.rows.first().map(|r| r.len()),
        SetExpr::Select(s)
            if !s.projection.iter().any(|i| {
                matches!(
                    i,
                    sqlparser::ast::SelectItem::Wildcard(_)
                        | sqlparser::ast::SelectItem::QualifiedWildcard(..)
                )
            }) =>
        {
            Some(s.projection.len())
        }
        _ => None,
    }
}

/// `sql`, an `INSERT` without a column list, with `columns` listed after
/// its table (and alias): the rest of the text stays as the client wrote
/// it, so PostgreSQL's error positions after that point move by the
/// length of the list only. `None` when the text cannot be read so.
pub fn with_columns(sql: &str, columns: &[String]) -> Option<String> {
    use sqlparser::ast::Spanned;
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Insert(ins)] = stmts.as_slice() else {
        return None;
    };
    if !ins.columns.is_empty() {
        return None;
    }
    let TableObject::TableName(name) = &ins.table else {
        return None;
    };
    let end = match &ins.table_alias {
        Some(a) => a.alias.span.end,
        None => name.span().end,
    };
    let at = crate::router::inline::byte_at(sql, &crate::router::inline::line_starts(sql), end)?;
    let list: Vec<String> = columns
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect();
    Some(format!(
        "{} ({}){}",
        &sql[..at],
        list.join(", "),
        &sql[at..]
    ))
}
