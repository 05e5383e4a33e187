//! INSERTs that leave the shard key to the cluster (the column omitted, or
//! `DEFAULT`): which rows need a key, and the statement with the keys the
//! session obtained filled in, to be planned like any INSERT.

use sqlparser::ast::{Ident, InsertOverriding};

use super::*;
use crate::router::{KeyRequest, KeySource};

fn is_default(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(id) if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default"))
}

/// What an INSERT into `rule`'s table that does not give every row's key
/// needs; `None` when every row has its key.
pub(super) fn request(
    ins: &sqlparser::ast::Insert,
    target: &ObjectName,
    rule: &TableRule,
) -> Result<Option<KeyRequest>, RouteError> {
    let source = match rule.key_type {
        KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => KeySource::Sequence,
        KeyType::Uuid => KeySource::Random,
        KeyType::Text => KeySource::None,
    };
    let rows = match &ins.source {
        // INSERT ... DEFAULT VALUES
        None if ins.columns.is_empty() => 1,
        None => return Ok(None),
        Some(q) => match q.body.as_ref() {
            SetExpr::Values(v) => {
                match ins
                    .columns
                    .iter()
                    .position(|c| object_parts(c).1 == rule.key)
                {
                    Some(idx) => v
                        .rows
                        .iter()
                        .filter(|r| r.content.get(idx).is_some_and(is_default))
                        .count(),
                    None if ins.columns.is_empty() => return Ok(None),
                    None => v.rows.len(),
                }
            }
            _ => return Ok(None),
        },
    };
    if rows == 0 {
        return Ok(None);
    }
    if source == KeySource::None {
        return unsupported(format!(
            "INSERT into sharded table \"{}\" must give the shard key \"{}\": the cluster chooses keys only for integer (sequence) and uuid keys",
            rule.name, rule.key
        ));
    }
    Ok(Some(KeyRequest {
        table: target.to_string(),
        column: rule.key.clone(),
        rows,
        source,
    }))
}

/// The INSERT with `keys` (one per row that needs one, in order) filled in:
/// as literals, or with `first_param`, as placeholders `$first_param`,
/// `$first_param + 1`, ... (the extended protocol binds the keys as
/// parameters, so the statement text stays the same from one execution to
/// the next). `always`: the key is an identity column `GENERATED ALWAYS`.
pub fn fill_keys(
    sql: &str,
    column: &str,
    keys: &[String],
    first_param: Option<usize>,
    always: bool,
) -> Result<String, RouteError> {
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| RouteError::Syntax(e.to_string()))?;
    let Some(Statement::Insert(ins)) = stmts.first_mut() else {
        return Err(RouteError::Syntax("not an INSERT".into()));
    };
    if let Some(v) = values_form(ins) {
        *ins = v;
    }
    let mut next = keys.iter().enumerate().map(|(i, k)| match first_param {
        Some(p) => Expr::value(Value::Placeholder(format!("${}", p + i))),
        None => Expr::value(Value::SingleQuotedString(k.clone())),
    });
    if ins.source.is_none() {
        // DEFAULT VALUES: the key is the one column given.
        ins.columns = vec![ObjectName::from(vec![Ident::with_quote('"', column)])];
        let mut q =
            match Parser::parse_sql(&PostgreSqlDialect {}, "VALUES (NULL)").map(|mut s| s.pop()) {
                Ok(Some(Statement::Query(q))) => q,
                _ => return Err(RouteError::Syntax("VALUES".into())),
            };
        if let SetExpr::Values(v) = q.body.as_mut() {
            for row in &mut v.rows {
                row.content = next.next().into_iter().collect();
            }
        }
        ins.source = Some(q);
    } else if let Some(SetExpr::Values(v)) = ins.source.as_mut().map(|q| q.body.as_mut()) {
        match ins.columns.iter().position(|c| object_parts(c).1 == column) {
            Some(idx) => {
                for row in &mut v.rows {
                    if let Some(e) = row.content.get_mut(idx) {
                        if is_default(e) {
                            if let Some(k) = next.next() {
                                *e = k;
                            }
                        }
                    }
                }
            }
            None => {
                ins.columns
                    .push(ObjectName::from(vec![Ident::with_quote('"', column)]));
                for row in &mut v.rows {
                    if let Some(k) = next.next() {
                        row.content.push(k);
                    }
                }
            }
        }
    }
    if always {
        ins.overriding = Some(InsertOverriding::System);
    }
    Ok(stmts
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("; "))
}

/// `INSERT INTO t (a, b) SELECT p0::T, p1 FROM (VALUES ($1, $2, 0), ($3, $4,
/// 1)) AS s(p0, p1, n) ORDER BY n` — SQLAlchemy's "insertmanyvalues", which
/// makes sequence values follow the parameters' order — as the `INSERT ...
/// VALUES` it means: one row per `VALUES` row in that order, each the select
/// list over that row. `None` when the statement is not of that shape.
pub(super) fn values_form(ins: &sqlparser::ast::Insert) -> Option<sqlparser::ast::Insert> {
    if let Some(v) = unnest_form(ins) {
        return Some(v);
    }
    let q = ins.source.as_ref()?;
    if q.with.is_some() || q.limit_clause.is_some() || q.fetch.is_some() || !q.locks.is_empty() {
        return None;
    }
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return None;
    };
    let [TableWithJoins {
        relation:
            TableFactor::Derived {
                lateral: false,
                subquery,
                alias: Some(alias),
                ..
            },
        joins,
    }] = sel.from.as_slice()
    else {
        return None;
    };
    let plain = joins.is_empty()
        && sel.selection.is_none()
        && sel.having.is_none()
        && sel.distinct.is_none()
        && matches!(&sel.group_by, GroupByExpr::Expressions(g, m) if g.is_empty() && m.is_empty());
    let SetExpr::Values(values) = subquery.body.as_ref() else {
        return None;
    };
    if !plain || subquery.order_by.is_some() || subquery.limit_clause.is_some() {
        return None;
    }
    let cols: Vec<String> = alias.columns.iter().map(|c| ident_name(&c.name)).collect();
    let table = ident_name(&alias.name);
    // The order is the VALUES order when there is none, or ORDER BY a
    // column holding increasing integer constants.
    if let Some(o) = &q.order_by {
        let sqlparser::ast::OrderByKind::Expressions(items) = &o.kind else {
            return None;
        };
        let [item] = items.as_slice() else {
            return None;
        };
        if !matches!(
            item.options.sort,
            None | Some(sqlparser::ast::OrderBySort::Asc)
        ) || item.options.nulls_first.is_some()
        {
            return None;
        }
        let col = match &item.expr {
            Expr::Identifier(id) => ident_name(id),
            Expr::CompoundIdentifier(p) if p.len() == 2 && ident_name(&p[0]) == table => {
                ident_name(&p[1])
            }
            _ => return None,
        };
        let at = cols.iter().position(|c| *c == col)?;
        let mut last: Option<i64> = None;
        for row in &values.rows {
            let n: i64 = match row.content.get(at)? {
                Expr::Value(v) => match &v.value {
                    Value::Number(n, _) => n.parse().ok()?,
                    _ => return None,
                },
                _ => return None,
            };
            if last.is_some_and(|l| l >= n) {
                return None;
            }
            last = Some(n);
        }
    }
    let mut rows = Vec::with_capacity(values.rows.len());
    for row in &values.rows {
        if row.content.len() != cols.len() {
            return None;
        }
        let mut out = Vec::with_capacity(sel.projection.len());
        for item in &sel.projection {
            let sqlparser::ast::SelectItem::UnnamedExpr(e) = item else {
                return None;
            };
            let mut e = e.clone();
            let mut stray = false;
            let _ = sqlparser::ast::visit_expressions_mut(&mut e, |x| {
                let name = match &*x {
                    Expr::Identifier(id) => Some(ident_name(id)),
                    Expr::CompoundIdentifier(p) if p.len() == 2 && ident_name(&p[0]) == table => {
                        Some(ident_name(&p[1]))
                    }
                    Expr::CompoundIdentifier(_) => {
                        stray = true;
                        None
                    }
                    _ => None,
                };
                if let Some(n) = name {
                    match cols.iter().position(|c| *c == n) {
                        Some(i) => *x = Expr::Nested(Box::new(row.content[i].clone())),
                        None => stray = true,
                    }
                }
                ControlFlow::<()>::Continue(())
            });
            if stray {
                return None;
            }
            out.push(e);
        }
        let mut r = row.clone();
        r.content = out;
        rows.push(r);
    }
    let mut v = ins.clone();
    let mut body = (**subquery).clone();
    if let SetExpr::Values(vals) = body.body.as_mut() {
        vals.rows = rows;
    }
    body.order_by = None;
    v.source = Some(Box::new(body));
    Some(v)
}

/// `INSERT INTO t (a, b) SELECT * FROM UNNEST('{1,2}'::int8[], '{x,y}'::text[])`
/// — Django's bulk_create — as `INSERT INTO t (a, b) VALUES ('1'::int8,
/// 'x'::text), ('2'::int8, 'y'::text)`: the arrays must be constants
/// (client-side binding), one-dimensional.
fn unnest_form(ins: &sqlparser::ast::Insert) -> Option<sqlparser::ast::Insert> {
    let q = ins.source.as_ref()?;
    if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return None;
    }
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return None;
    };
    let star = matches!(
        sel.projection.as_slice(),
        [sqlparser::ast::SelectItem::Wildcard(_)]
    );
    let plain = star
        && sel.selection.is_none()
        && sel.having.is_none()
        && sel.distinct.is_none()
        && matches!(&sel.group_by, GroupByExpr::Expressions(g, m) if g.is_empty() && m.is_empty());
    let [TableWithJoins { relation, joins }] = sel.from.as_slice() else {
        return None;
    };
    if !plain || !joins.is_empty() {
        return None;
    }
    let arrays: Vec<&Expr> = match relation {
        TableFactor::UNNEST {
            array_exprs,
            with_offset: false,
            with_ordinality: false,
            ..
        } => array_exprs.iter().collect(),
        TableFactor::Table {
            name,
            args: Some(args),
            with_ordinality: false,
            ..
        } if object_parts(name).1 == "unnest" => args
            .args
            .iter()
            .map(|a| match a {
                sqlparser::ast::FunctionArg::Unnamed(sqlparser::ast::FunctionArgExpr::Expr(e)) => {
                    Some(e)
                }
                _ => None,
            })
            .collect::<Option<_>>()?,
        _ => return None,
    };
    if arrays.is_empty() || (!ins.columns.is_empty() && arrays.len() != ins.columns.len()) {
        return None;
    }
    let mut columns: Vec<Vec<Expr>> = Vec::new();
    for a in arrays {
        let (text, elem) = array_constant(a)?;
        let items = parse_array(&text)?;
        columns.push(
            items
                .into_iter()
                .map(|v| {
                    let value = match v {
                        Some(v) => Expr::value(Value::SingleQuotedString(v)),
                        None => Expr::value(Value::Null),
                    };
                    match &elem {
                        Some(t) => Expr::Cast {
                            kind: sqlparser::ast::CastKind::DoubleColon,
                            expr: Box::new(value),
                            data_type: t.clone(),
                            format: None,
                        },
                        None => value,
                    }
                })
                .collect(),
        );
    }
    // UNNEST pads shorter arrays with NULLs.
    let n = columns.iter().map(Vec::len).max()?;
    let mut template = match Parser::parse_sql(&PostgreSqlDialect {}, "VALUES (NULL)")
        .ok()?
        .pop()?
    {
        Statement::Query(q) => q,
        _ => return None,
    };
    let SetExpr::Values(v) = template.body.as_mut() else {
        return None;
    };
    let proto = v.rows.first()?.clone();
    v.rows = (0..n)
        .map(|i| {
            let mut r = proto.clone();
            r.content = columns
                .iter()
                .map(|c| {
                    c.get(i)
                        .cloned()
                        .unwrap_or_else(|| Expr::value(Value::Null))
                })
                .collect();
            r
        })
        .collect();
    let mut out = ins.clone();
    out.source = Some(template);
    Some(out)
}

/// The text and element type of `('{...}')::type[]` / `'{...}'::type[]`.
fn array_constant(e: &Expr) -> Option<(String, Option<sqlparser::ast::DataType>)> {
    use sqlparser::ast::{ArrayElemTypeDef, DataType};
    match e {
        Expr::Nested(inner) => array_constant(inner),
        Expr::Cast {
            expr, data_type, ..
        } => {
            let (text, inner) = array_constant(expr)?;
            let elem = match data_type {
                DataType::Array(
                    ArrayElemTypeDef::SquareBracket(t, _) | ArrayElemTypeDef::AngleBracket(t),
                ) => Some((**t).clone()),
                _ => return None,
            };
            Some((text, elem.or(inner)))
        }
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                Some((s.clone(), None))
            }
            _ => None,
        },
        _ => None,
    }
}

/// A one-dimensional PostgreSQL array literal's elements (`NULL` unquoted
/// is NULL; quoted elements take backslash escapes).
fn parse_array(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut v = String::new();
            loop {
                match chars.next()? {
                    '\\' => v.push(chars.next()?),
                    '"' => break,
                    c => v.push(c),
                }
            }
            out.push(Some(v));
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            let mut v = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if matches!(c, '{' | '}' | '"' | '\\') {
                    return None;
                }
                v.push(c);
                chars.next();
            }
            let v = v.trim().to_string();
            out.push(if v.eq_ignore_ascii_case("null") {
                None
            } else {
                Some(v)
            });
        }
        match chars.next() {
            None => return Some(out),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}
