//! Statement classification: transaction control and settings by their leading
//! words, everything else through `sqlparser`'s PostgreSQL AST.

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, Expr, FromTable, GroupByExpr, InTarget, ObjectName, Query,
    SetExpr, Statement, TableFactor, TableObject, TableWithJoins, UnaryOperator,
    UpdateTableFromKind, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

mod bindings;
mod dml;
mod insert;
mod keys;
mod merge;
mod rewrite;
mod scope;
mod stage;
mod tables;

pub use insert::with_columns;
pub use keys::fill_keys;
pub(super) use stage::marker_sql as stage_marker;
pub(crate) use stage::type_name;
pub use stage::{materialize, materialize_typed};

pub(super) use self::names_table as sharded_table_named;

use dml::{route_modify, route_select};
use insert::route_insert;
pub use tables::calls_unknown_function;
use tables::{classify_rel, ident_name, object_parts, Rel, Tables, AGGREGATES};

use super::{
    after_words, leading_words, matching_paren, Bound, KeyError, KeyType, KeyValue, Plan, Route,
    RouteError, SetCommand, ShardId, ShardMap, TableRule, Writes,
};

/// Transaction control and session settings, recognised by their leading words
/// (sqlparser does not know every PostgreSQL spelling of these).
pub(super) fn lexical(sql: &str) -> Result<Option<Plan>, RouteError> {
    let words = leading_words(sql, 6);
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let unsupported = |m: &str| Err(RouteError::Unsupported(m.to_string()));
    let chained = w.contains(&"chain") && !w.contains(&"no");
    let plan = match w.as_slice() {
        ["prepare", "transaction", ..] | ["commit" | "rollback", "prepared", ..] => {
            return unsupported(
                "PREPARE TRANSACTION, COMMIT PREPARED and ROLLBACK PREPARED are reserved to the Pieskieo coordinator",
            )
        }
        ["commit" | "end" | "rollback" | "abort", ..] if chained => {
            return unsupported("COMMIT AND CHAIN and ROLLBACK AND CHAIN are not supported")
        }
        ["preview", ..] => {
            let at = after_words(sql, 1).unwrap_or(sql.len());
            Plan::Preview(sql[at..].trim().to_string())
        }
        ["begin", ..] | ["start", "transaction", ..] => Plan::Begin,
        ["prepare", name, ..] => prepare(sql, name)?,
        ["execute", name, ..] => {
            let rest_at = after_words(sql, 2).unwrap_or(sql.len());
            let rest = sql[rest_at..].trim_start();
            let args = match rest.strip_prefix('(') {
                Some(_) => {
                    let open = sql.len() - rest.len();
                    let close = matching_paren(sql, open).ok_or_else(|| syntax_near(rest))?;
                    sql[open + 1..close].to_string()
                }
                None if rest.is_empty() => String::new(),
                None => return Err(syntax_near(rest)),
            };
            Plan::Execute { name: name.to_string(), args }
        }
        ["deallocate", "prepare", "all", ..] | ["deallocate", "all", ..] => Plan::Deallocate(None),
        ["deallocate", "prepare", name, ..] | ["deallocate", name, ..] => Plan::Deallocate(Some(name.to_string())),
        ["commit" | "end", ..] => Plan::Commit,
        ["rollback" | "abort", rest @ ..] => {
            let rest = match rest {
                ["work" | "transaction", r @ ..] => r,
                r => r,
            };
            match rest {
                ["to", "savepoint", name, ..] | ["to", name, ..] => Plan::RollbackTo(name.to_string()),
                _ => Plan::Rollback,
            }
        }
        ["savepoint", name, ..] => Plan::Savepoint(name.to_string()),
        ["release", "savepoint", name, ..] | ["release", name, ..] => Plan::Release(name.to_string()),
        ["set", "role", ..]
        | ["set", "session" | "local", "role", ..]
        | ["set", "session", "authorization", ..]
        | ["reset", "role", ..]
        | ["reset", "session", "authorization", ..] => {
            return unsupported("SET ROLE and SET SESSION AUTHORIZATION are not supported through Pieskieo")
        }
        ["set", "local" | "session", "standard_conforming_strings", ..]
        | ["set", "standard_conforming_strings", ..]
            if sets_bool_off(sql, "standard_conforming_strings") =>
        {
            return unsupported("standard_conforming_strings = off is not supported by Pieskieo: it reads every statement with backslashes as ordinary characters in '...' strings, as PostgreSQL does by default; keep it on and write backslash escapes as E'...'")
        }
        // `SET CONSTRAINTS` is no setting: it lasts to the transaction's end.
        ["set", "local", ..]
        | ["set", "constraints", ..]
        | ["set", "transaction", ..]
        | ["set", "session", TXN_MODE_A | TXN_MODE_B | TXN_MODE_C, ..]
        | ["set" | "reset", TXN_MODE_A | TXN_MODE_B | TXN_MODE_C, ..] => Plan::Set(SetCommand::Local),
        ["set", "session", "characteristics", ..] => Plan::Set(SetCommand::Defaults(session_characteristics(sql))),
        ["set", "session", rest @ ..] | ["set", rest @ ..] => match setting_name(rest) {
            Some(name) => Plan::Set(SetCommand::Set(name)),
            None => return Ok(None),
        },
        ["reset", "all", ..] | ["discard", "all", ..] => Plan::Set(SetCommand::ResetAll),
        ["reset", rest @ ..] => match setting_name(rest) {
            Some(name) => Plan::Set(SetCommand::Reset(name)),
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    Ok(Some(plan))
}

/// The settings of the current transaction's modes, which PostgreSQL
/// starts afresh from the `default_transaction_*` ones in every transaction.
const TXN_MODE_A: &str = "transaction_isolation";
const TXN_MODE_B: &str = "transaction_read_only";
const TXN_MODE_C: &str = "transaction_deferrable";

/// What `SET SESSION CHARACTERISTICS AS TRANSACTION modes` sets: each
/// `default_transaction_*` setting it names, with a statement setting it
/// alone (so that `RESET default_transaction_isolation` takes back that
/// one). PostgreSQL's grammar: modes separated by commas or blanks, the last
/// of a kind wins. Text outside that grammar (PostgreSQL will refuse it, or
/// this reads it wrong) is kept whole under all three names: replaying it is
/// harmless, and the isolation level is still read from its text.
fn session_characteristics(sql: &str) -> Vec<(String, String)> {
    const NAMES: [&str; 3] = [
        "default_transaction_isolation",
        "default_transaction_read_only",
        "default_transaction_deferrable",
    ];
    let whole = || {
        NAMES
            .iter()
            .map(|n| (n.to_string(), sql.trim().trim_end_matches(';').to_string()))
            .collect()
    };
    let Some(words) = transaction_mode_words(sql) else {
        return whole();
    };
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut set: BTreeMap<&str, String> = BTreeMap::new();
    let mut rest = w.as_slice();
    while !rest.is_empty() {
        let (name, value, n) = match rest {
            ["isolation", "level", "read", "uncommitted", ..] => {
                (NAMES[0], "'read uncommitted'", 4)
            }
            ["isolation", "level", "read", "committed", ..] => (NAMES[0], "'read committed'", 4),
            ["isolation", "level", "repeatable", "read", ..] => (NAMES[0], "'repeatable read'", 4),
            ["isolation", "level", "serializable", ..] => (NAMES[0], "'serializable'", 3),
            ["read", "only", ..] => (NAMES[1], "on", 2),
            ["read", "write", ..] => (NAMES[1], "off", 2),
            ["deferrable", ..] => (NAMES[2], "on", 1),
            ["not", "deferrable", ..] => (NAMES[2], "off", 2),
            _ => return whole(),
        };
        set.insert(name, format!("SET {name} = {value}"));
        rest = &rest[n..];
    }
    if set.is_empty() {
        return whole();
    }
    set.into_iter().map(|(n, s)| (n.to_string(), s)).collect()
}

/// The words after `SET SESSION CHARACTERISTICS AS TRANSACTION`, commas
/// between modes skipped; `None` when anything else stands there.
fn transaction_mode_words(sql: &str) -> Option<Vec<String>> {
    let head = leading_words(sql, 5);
    if head != ["set", "session", "characteristics", "as", "transaction"] {
        return None;
    }
    let mut rest = &sql[after_words(sql, 5)?..];
    let mut out = Vec::new();
    loop {
        let words = leading_words(rest, usize::MAX);
        if !words.is_empty() {
            rest = &rest[after_words(rest, words.len())?..];
            out.extend(words);
        }
        let t = rest.trim_start();
        if let Some(r) = t.strip_prefix(',') {
            rest = r;
            continue;
        }
        if t.trim_end_matches(';').trim().is_empty() {
            return Some(out);
        }
        return None;
    }
}

/// Whether `SET ... name {=|TO} value` sets a boolean to false, with the
/// spellings PostgreSQL's `parse_bool` takes (`off`, `of`, `false` and its
/// prefixes, `no`, `n`, `0`), quoted or not.
fn sets_bool_off(sql: &str, name: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    let Some(at) = lower.find(name) else {
        return false;
    };
    let rest = lower[at + name.len()..].trim_start();
    let rest = rest
        .strip_prefix('=')
        .or_else(|| {
            rest.strip_prefix("to")
                .filter(|r| r.starts_with(char::is_whitespace))
        })
        .unwrap_or(rest);
    let value = rest
        .trim()
        .trim_end_matches(';')
        .trim()
        .trim_matches(|c| c == '\'' || c == '"')
        .trim();
    !value.is_empty()
        && (matches!(value, "of" | "off" | "0")
            || "false".starts_with(value)
            || "no".starts_with(value))
}

fn syntax_near(rest: &str) -> RouteError {
    let near: String = rest.chars().take(20).collect();
    RouteError::Syntax(format!("syntax error at or near \"{near}\""))
}

/// Splits `PREPARE name [(types)] AS body` into its parts.
fn prepare(sql: &str, name: &str) -> Result<Plan, RouteError> {
    let at = after_words(sql, 2).unwrap_or(sql.len());
    let mut rest = sql[at..].trim_start();
    let mut types = String::new();
    if rest.starts_with('(') {
        let open = sql.len() - rest.len();
        let close = matching_paren(sql, open).ok_or_else(|| syntax_near(rest))?;
        types = sql[open + 1..close].to_string();
        rest = sql[close + 1..].trim_start();
    }
    let body = match rest.get(..2) {
        Some(kw)
            if kw.eq_ignore_ascii_case("as")
                && rest[2..].starts_with(|c: char| c.is_whitespace()) =>
        {
            rest[2..].trim()
        }
        _ => return Err(syntax_near(rest)),
    };
    Ok(Plan::Prepare {
        name: name.to_string(),
        types,
        body: body.to_string(),
    })
}

/// The configuration parameter a `SET`/`RESET` names, with PostgreSQL's aliases.
fn setting_name(rest: &[&str]) -> Option<String> {
    Some(match rest {
        ["time", "zone", ..] => "timezone".into(),
        ["names", ..] => "client_encoding".into(),
        ["schema", ..] => "search_path".into(),
        ["xml", "option", ..] => "xmloption".into(),
        [name, ..] => name.to_string(),
        [] => return None,
    })
}

/// Routes a statement through its parsed AST.
pub(super) fn parsed(sql: &str, map: &ShardMap, params: &[Bound]) -> Result<Plan, RouteError> {
    let mut stmts = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) => s,
        Err(e) => return unparsed(sql, map, &e.to_string()),
    };
    match stmts.as_mut_slice() {
        [stmt] => {
            if !params.is_empty() {
                // Route on the values; a split keeps the client's placeholders.
                let original = stmt.clone();
                bind_placeholders(stmt, params);
                return route_statement(stmt, map, Some(&original));
            }
            route_statement(stmt, map, None)
        }
        _ => Err(RouteError::Syntax(
            "cannot insert multiple commands into a prepared statement".into(),
        )),
    }
}

/// Whether a statement names the proxy's schema as an identifier: `pieskieo`
/// (any case, or quoted exactly) followed by `.`, or after `SCHEMA`. Text in
/// string literals and comments does not count.
pub(super) fn names_reserved_schema(sql: &str) -> bool {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let name = crate::txn::DECISION_SCHEMA;
    let bytes = sql.as_bytes();
    if !bytes
        .windows(name.len())
        .any(|w| w.eq_ignore_ascii_case(name.as_bytes()))
    {
        return false;
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        // Unreadable text that mentions the name: refuse rather than guess.
        return true;
    };
    // A search path is a list of names in a literal: `'pieskieo'`,
    // `'public, "pieskieo"'`.
    let sets_search_path = tokens.iter().any(|t| match t {
        Token::Word(w) => w.value.eq_ignore_ascii_case("search_path"),
        Token::SingleQuotedString(v) => v.eq_ignore_ascii_case("search_path"),
        _ => false,
    });
    let tokens: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    tokens.iter().enumerate().any(|(i, t)| match t {
        // As a schema: `pieskieo.t`, `SCHEMA pieskieo`; in a search path:
        // `SET search_path = pieskieo`.
        Token::Word(w) => {
            let ours = match w.quote_style {
                None => w.value.eq_ignore_ascii_case(name),
                Some(_) => w.value == name,
            };
            let dotted = matches!(tokens.get(i + 1), Some(Token::Period));
            let schema = i > 0
                && matches!(tokens.get(i - 1), Some(Token::Word(k)) if k.value.eq_ignore_ascii_case("schema"));
            ours && (dotted || schema || sets_search_path)
        }
        // A search path given as text:
        // `set_config('search_path', 'public, pieskieo', false)`.
        Token::SingleQuotedString(v) | Token::EscapedStringLiteral(v) if sets_search_path => {
            path_names_schema(v, name)
        }
        _ => false,
    })
}

/// Whether a search path's text (`public, "pieskieo"`) lists `schema`.
fn path_names_schema(path: &str, schema: &str) -> bool {
    path.split(',').map(str::trim).any(|e| {
        match e.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
            Some(quoted) => quoted == schema,
            None => e.eq_ignore_ascii_case(schema),
        }
    })
}

/// The table, key parameter and write flag of a statement that one bound
/// value routes (see [`super::KeyedPlan`]).
pub(super) fn keyed<'m>(sql: &str, map: &'m ShardMap) -> Option<(&'m TableRule, usize, Writes)> {
    if names_reserved_schema(sql) || lexical(sql).ok()?.is_some() {
        return None;
    }
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [stmt] = stmts.as_slice() else {
        return None;
    };
    let (rule, param) = dml::keyed_param(stmt, map)?;
    let write = match stmt {
        Statement::Insert(_) => Writes::Yes,
        // Planned with the key unknown: it must route (to every shard) and
        // say whether it writes; a pinned key then narrows it to one shard.
        _ => match route_statement(stmt, map, Some(stmt)).ok()? {
            Plan::Forward { write, .. } => write,
            Plan::Merge { .. } => Writes::No,
            _ => return None,
        },
    };
    Some((rule, param, write))
}

/// The values of `EXECUTE name (args)`, read as literals for routing.
pub(super) fn literal_bounds(args: &str) -> Vec<Bound> {
    fn bound(e: &Expr) -> Bound {
        match e {
            Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => bound(inner),
            Expr::TypedString(ts) => match &ts.value.value {
                Value::SingleQuotedString(s) => Bound::Text(s.clone()),
                _ => Bound::Unknown,
            },
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => match expr.as_ref() {
                Expr::Value(v) => match &v.value {
                    Value::Number(n, _) => Bound::Text(format!("-{n}")),
                    _ => Bound::Unknown,
                },
                _ => Bound::Unknown,
            },
            Expr::Value(v) => match &v.value {
                Value::Null => Bound::Null,
                Value::Number(n, _) => Bound::Text(n.clone()),
                Value::SingleQuotedString(s)
                | Value::EscapedStringLiteral(s)
                | Value::UnicodeStringLiteral(s) => Bound::Text(s.clone()),
                Value::DollarQuotedString(d) => Bound::Text(d.value.clone()),
                _ => Bound::Unknown,
            },
            _ => Bound::Unknown,
        }
    }
    let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, &format!("SELECT {args}")) else {
        return Vec::new();
    };
    match stmts.as_slice() {
        [Statement::Query(q)] => match q.body.as_ref() {
            SetExpr::Select(sel) => sel
                .projection
                .iter()
                .map(|item| match item {
                    sqlparser::ast::SelectItem::UnnamedExpr(e) => bound(e),
                    _ => Bound::Unknown,
                })
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Replaces `$n` with the bound value's text (for routing only).
fn bind_placeholders(stmt: &mut Statement, params: &[Bound]) {
    let _ = sqlparser::ast::visit_expressions_mut(stmt, |e| {
        if let Expr::Value(v) = e {
            if let Value::Placeholder(p) = &v.value {
                let n = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok());
                match n.and_then(|n| params.get(n.wrapping_sub(1))) {
                    Some(Bound::Text(text)) => v.value = Value::SingleQuotedString(text.clone()),
                    Some(Bound::Null) => v.value = Value::Null,
                    Some(Bound::Unknown) | None => {}
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The first sharded (or, with `reference`, reference) table a statement's
/// words name, read without parsing.
pub(super) fn names_table(sql: &str, map: &ShardMap, reference: bool) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .unwrap_or_default();
    tokens.into_iter().find_map(|t| match t {
        Token::Word(w) => {
            let name = if w.quote_style.is_some() {
                w.value.clone()
            } else {
                w.value.to_lowercase()
            };
            (map.tables.contains_key(&name) || reference && map.reference.contains(&name))
                .then_some(name)
        }
        _ => None,
    })
}

/// A statement sqlparser cannot read goes to the default shard only when it
/// names no sharded or reference table; otherwise routing it would be a guess.
fn unparsed(sql: &str, map: &ShardMap, err: &str) -> Result<Plan, RouteError> {
    if let Some(name) = names_table(sql, map, true) {
        return Err(RouteError::Syntax(format!(
            "Pieskieo cannot parse this statement on distributed table \"{name}\": {err}"
        )));
    }
    // Text the classifier cannot read may write anything.
    Ok(Plan::Forward {
        route: Route::One(map.default_shard),
        write: Writes::Maybe,
    })
}

fn unsupported<T>(m: impl Into<String>) -> Result<T, RouteError> {
    Err(RouteError::Unsupported(m.into()))
}

fn default_route(map: &ShardMap, write: Writes) -> Plan {
    Plan::Forward {
        route: Route::One(map.default_shard),
        write,
    }
}

/// Routes a parsed statement. `original` is the statement before bound values
/// replaced its placeholders, when it has parameters.
fn route_statement(
    stmt: &Statement,
    map: &ShardMap,
    original: Option<&Statement>,
) -> Result<Plan, RouteError> {
    let tables = Tables::gather(stmt, map);
    match stmt {
        Statement::Query(q) => {
            let source = match original {
                Some(Statement::Query(o)) => Some(o.as_ref()),
                _ => None,
            };
            route_select(q, source, &tables, map)
        }
        Statement::Insert(_) => route_insert(stmt, &tables, map, original),
        Statement::Update(u) => {
            let TableFactor::Table { name, alias, .. } = &u.table.relation else {
                return unsupported("UPDATE of this kind of target is not supported");
            };
            let mut extra = Vec::new();
            if let Some(UpdateTableFromKind::BeforeSet(f) | UpdateTableFromKind::AfterSet(f)) =
                &u.from
            {
                extra.extend(f.iter());
            }
            let assignments: Vec<(&AssignmentTarget, &Expr)> = u
                .assignments
                .iter()
                .map(|a| (&a.target, &a.value))
                .collect();
            route_modify(
                name,
                alias.as_ref().map(|a| &a.name),
                &u.table.joins,
                &extra,
                u.selection.as_ref(),
                &assignments,
                u.returning.as_ref(),
                &tables,
                map,
            )
        }
        Statement::Delete(d) => {
            let from = match &d.from {
                FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v) => v,
            };
            let Some(first) = from.first() else {
                return unsupported("DELETE without a table is not supported");
            };
            let TableFactor::Table { name, alias, .. } = &first.relation else {
                return unsupported("DELETE of this kind of target is not supported");
            };
            let extra: Vec<&TableWithJoins> = from
                .iter()
                .skip(1)
                .chain(d.using.iter().flatten())
                .collect();
            route_modify(
                name,
                alias.as_ref().map(|a| &a.name),
                &first.joins,
                &extra,
                d.selection.as_ref(),
                &[],
                d.returning.as_ref(),
                &tables,
                map,
            )
        }
        Statement::Explain {
            statement,
            analyze,
            options,
            ..
        } => {
            // EXPLAIN ANALYZE runs the statement: it writes what it writes.
            let analyze = *analyze
                || options.iter().flatten().any(|o| {
                    o.name.value.eq_ignore_ascii_case("analyze")
                        && !o.arg.as_ref().is_some_and(|a| {
                            let t = a.to_string().to_ascii_lowercase();
                            t == "false" || t == "off" || t == "0"
                        })
                });
            match route_statement(statement, map, None)? {
                Plan::Forward { route, write } => Ok(Plan::Forward {
                    route,
                    write: if analyze { write } else { Writes::No },
                }),
                Plan::Split { .. } => {
                    unsupported("EXPLAIN of an INSERT whose rows span shards is not supported")
                }
                Plan::Replicate if analyze => unsupported(
                    "EXPLAIN ANALYZE of a statement that runs on every shard is not supported",
                ),
                Plan::Replicate => Ok(Plan::Forward {
                    route: Route::Any,
                    write: Writes::No,
                }),
                _ => Ok(default_route(map, Writes::No)),
            }
        }
        Statement::CreateTable(c) if c.query.is_some() && tables.distributed().is_some() => {
            unsupported("CREATE TABLE ... AS over distributed tables is not supported")
        }
        Statement::CreateView(_) if tables.distributed().is_some() => {
            unsupported("views over distributed tables are not supported")
        }
        s if is_ddl(s) => Ok(Plan::Replicate),
        Statement::Copy { source, .. } => {
            let table = match source {
                sqlparser::ast::CopySource::Table { table_name, .. } => {
                    match classify_rel(table_name, map, &tables.facts.ctes) {
                        Rel::Sharded(r) => Some(r.name.clone()),
                        Rel::Reference(n) => Some(n),
                        Rel::Catalog | Rel::Other(_) => None,
                    }
                }
                sqlparser::ast::CopySource::Query(_) => tables.distributed(),
            };
            match table {
                Some(t) => unsupported(format!(
                    "COPY of distributed table \"{t}\" is not supported yet"
                )),
                None => Ok(default_route(map, Writes::Yes)),
            }
        }
        Statement::ShowVariable { .. } => Ok(Plan::Forward {
            route: Route::Any,
            write: Writes::No,
        }),
        _ => match tables.distributed() {
            Some(t) => unsupported(format!(
                "this statement is not supported on distributed table \"{t}\""
            )),
            None => Ok(default_route(map, Writes::Yes)),
        },
    }
}

/// Schema changes go to every shard so each holds the same tables.
fn is_ddl(s: &Statement) -> bool {
    matches!(
        s,
        Statement::CreateTable(_)
            | Statement::AlterTable(_)
            | Statement::Drop { .. }
            | Statement::CreateIndex(_)
            | Statement::AlterIndex { .. }
            | Statement::Truncate(_)
            | Statement::CreateView(_)
            | Statement::AlterView(_)
            | Statement::CreateSchema { .. }
            | Statement::AlterSchema(_)
            | Statement::CreateExtension(_)
            | Statement::DropExtension(_)
            | Statement::CreateType { .. }
            | Statement::AlterType(_)
            | Statement::CreateDomain(_)
            | Statement::DropDomain(_)
            | Statement::CreateSequence { .. }
            | Statement::CreateFunction(_)
            | Statement::DropFunction(_)
            | Statement::CreateTrigger(_)
            | Statement::DropTrigger(_)
            | Statement::Comment { .. }
            | Statement::Grant(_)
            | Statement::Revoke(_)
            | Statement::CreateRole(_)
            | Statement::CreatePolicy(_)
            | Statement::DropPolicy(_)
            | Statement::RenameTable(_)
    )
}
