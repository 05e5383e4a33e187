//! A statement's `$n` parameters written into its text as typed literals,
//! for plans the proxy carries out in steps of its own (two-stage plans
//! through the extended protocol): each step is SQL text that runs on some
//! shard where the client's parameters do not exist. `$1` of type `int4`
//! bound to `5` becomes `('5'::int4)`, which PostgreSQL reads back as the
//! same value: the text form of a value is its type's exact input.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::classify::type_name;

/// A parameter's value as SQL: a literal of the parameter's type, or, when
/// the proxy cannot spell that type (a user's enum or domain, or a type the
/// client left to the server), an untyped literal that PostgreSQL resolves
/// from its context exactly as it resolved the parameter's type.
pub fn param_literal(value: Option<&str>, oid: u32) -> String {
    match (value, type_name(oid)) {
        (v, Some(t)) => typed_literal(v, t),
        (None, None) => "NULL".to_string(),
        (Some(v), None) => quote(v),
    }
}

/// A value in its text form as a literal of the type `ty` (SQL that names
/// a type): `('5'::int4)`, `(NULL::int4)`.
pub fn typed_literal(value: Option<&str>, ty: &str) -> String {
    match value {
        None => format!("(NULL::{ty})"),
        Some(v) => format!("({}::{ty})", quote(v)),
    }
}

/// A string constant that reads as `v` whatever `standard_conforming_strings` is.
pub(crate) fn quote(v: &str) -> String {
    if v.contains('\\') {
        format!("E'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", v.replace('\'', "''"))
    }
}

/// Byte offset of each line's start: the tokenizer counts lines from 1 and
/// columns in characters from 1.
pub(crate) fn line_starts(sql: &str) -> Vec<usize> {
    let mut starts = vec![0usize];
    starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
    starts
}

pub(crate) fn byte_at(
    sql: &str,
    starts: &[usize],
    at: sqlparser::tokenizer::Location,
) -> Option<usize> {
    let line = usize::try_from(at.line).ok()?.checked_sub(1)?;
    let col = usize::try_from(at.column).ok()?.checked_sub(1)?;
    let start = *starts.get(line)?;
    Some(start + sql.get(start..)?.char_indices().nth(col)?.0)
}

/// The highest `$n` that `sql` names outside strings and comments (0 for
/// none); `None` when the text does not scan.
pub fn max_param(sql: &str) -> Option<usize> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    Some(
        tokens
            .iter()
            .filter_map(|t| match t {
                Token::Placeholder(p) => p.strip_prefix('$')?.parse::<usize>().ok(),
                _ => None,
            })
            .max()
            .unwrap_or(0),
    )
}

/// `sql` with each marker `SELECT * FROM pieskieo_stage_<i>` (as tokens)
/// replaced by `rows[i]`; `None` when the text does not scan.
pub(crate) fn fill_markers(sql: &str, rows: &[String]) -> Option<String> {
    let tokens: Vec<_> = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let starts = line_starts(sql);
    let word = |t: &Token, w: &str| matches!(t, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w));
    let mut out = String::with_capacity(sql.len() + rows.iter().map(String::len).sum::<usize>());
    let mut copied = 0;
    for w in tokens.windows(4) {
        if !(word(&w[0].token, "select") && w[1].token == Token::Mul && word(&w[2].token, "from")) {
            continue;
        }
        let Token::Word(name) = &w[3].token else {
            continue;
        };
        let Some(k) = name
            .value
            .strip_prefix("pieskieo_stage_")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if name.quote_style.is_some() {
            continue;
        }
        let (Some(r), Some(from), Some(at)) = (
            rows.get(k),
            byte_at(sql, &starts, w[0].span.start),
            byte_at(sql, &starts, w[3].span.start),
        ) else {
            continue;
        };
        if from < copied {
            continue;
        }
        out.push_str(&sql[copied..from]);
        out.push_str(r);
        copied = at + name.value.len();
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

/// `sql` with every `$n` outside strings, quoted names and comments
/// replaced by `literals[n - 1]`; `None` when the text does not scan or
/// names a parameter that has no value.
pub fn inline_params(sql: &str, literals: &[String]) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    let starts = line_starts(sql);
    let mut out = String::with_capacity(sql.len() + 16 * literals.len());
    let mut copied = 0;
    for t in tokens {
        let Token::Placeholder(p) = &t.token else {
            continue;
        };
        let n: usize = p.strip_prefix('$')?.parse().ok()?;
        let literal = literals.get(n.checked_sub(1)?)?;
        let at = byte_at(sql, &starts, t.span.start)?;
        if sql.get(at..at + p.len())? != p {
            return None;
        }
        out.push_str(&sql[copied..at]);
        out.push_str(literal);
        copied = at + p.len();
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_typed_literals_outside_strings_and_comments() {
        let lits = vec![
            param_literal(Some("2"), 23),
            param_literal(Some("o'k\\"), 25),
        ];
        assert_eq!(
            inline_params(
                "SELECT round(avg(x), $1) -- $2\n, '$1', \"$2\", $$ $1 $$, $2 FROM t WHERE ü = $2",
                &lits
            )
            .unwrap(),
            "SELECT round(avg(x), ('2'::int4)) -- $2\n, '$1', \"$2\", $$ $1 $$, (E'o''k\\\\'::text) FROM t WHERE ü = (E'o''k\\\\'::text)"
        );
        assert_eq!(param_literal(None, 20), "(NULL::int8)");
        assert_eq!(param_literal(Some("a"), 0), "'a'");
        assert_eq!(param_literal(None, 0), "NULL");
        assert_eq!(
            typed_literal(Some("it's"), "pg_catalog.text"),
            "('it''s'::pg_catalog.text)"
        );
        assert_eq!(typed_literal(None, "public.\"T\""), "(NULL::public.\"T\")");
        // $10 is not $1 followed by 0.
        let many: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
        assert_eq!(
            inline_params("SELECT $10, $1", &many).unwrap(),
            "SELECT 10, 1"
        );
        assert_eq!(inline_params("SELECT $2", &lits[..1]), None);
    }

    #[test]
    fn only_the_planner_s_markers_are_filled() {
        let rows = vec!["VALUES (1)".to_string(), "VALUES (2)".to_string()];
        let sql = "SELECT 'SELECT * FROM pieskieo_stage_0', \"SELECT * FROM pieskieo_stage_1\" FROM (SELECT * FROM pieskieo_stage_1) a, (SELECT * FROM pieskieo_stage_0) b WHERE x = E'\\' SELECT * FROM pieskieo_stage_0'";
        assert_eq!(
            fill_markers(sql, &rows).unwrap(),
            "SELECT 'SELECT * FROM pieskieo_stage_0', \"SELECT * FROM pieskieo_stage_1\" FROM (VALUES (2)) a, (VALUES (1)) b WHERE x = E'\\' SELECT * FROM pieskieo_stage_0'"
        );
        // pieskieo_stage_10 is not pieskieo_stage_1 followed by 0.
        let many: Vec<String> = (0..11).map(|i| format!("V{i}")).collect();
        assert_eq!(
            fill_markers(
                "SELECT * FROM pieskieo_stage_10 JOIN (SELECT * FROM pieskieo_stage_1) x",
                &many
            )
            .unwrap(),
            "V10 JOIN (V1) x"
        );
    }
}
