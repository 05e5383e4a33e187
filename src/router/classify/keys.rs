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
