//! `COPY` statements: read far enough to route them (which table, which
//! columns, which direction, the options that decide how rows are framed),
//! with PostgreSQL's own grammar (sqlparser does not read every option
//! pgbench and pg_dump send). The statement text itself goes to the shards
//! unchanged: they check what the proxy does not need to.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

mod options;
mod query;

use super::{matching_paren, KeySource, KeyType, Plan, Route, RouteError, ShardMap, Writes};
use options::options;

/// How rows are written in the data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
}

/// Whether the data starts with a header line (text and CSV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    No,
    Skip,
    /// `HEADER MATCH`: each shard checks the names against its columns.
    Match,
}

/// The options that decide how rows are framed and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    pub format: CopyFormat,
    pub delimiter: u8,
    pub null: Vec<u8>,
    pub header: Header,
    pub quote: u8,
    pub escape: u8,
    /// Columns whose unquoted null string is read as a value (CSV).
    pub force_not_null: Vec<String>,
    /// Columns whose quoted null string is read as NULL (CSV).
    pub force_null: Vec<String>,
    /// `FORCE_NOT_NULL *` / `FORCE_NULL *` (PostgreSQL 17): every column.
    pub force_not_null_all: bool,
    pub force_null_all: bool,
    pub encoding: Option<String>,
}

impl CopyOptions {
    /// The text format's defaults (what `COPY ... TO STDOUT` writes).
    pub fn text() -> CopyOptions {
        CopyOptions::defaults()
    }

    fn defaults() -> CopyOptions {
        CopyOptions {
            format: CopyFormat::Text,
            delimiter: b'\t',
            null: b"\\N".to_vec(),
            header: Header::No,
            quote: b'"',
            escape: b'"',
            force_not_null: Vec::new(),
            force_null: Vec::new(),
            force_not_null_all: false,
            force_null_all: false,
            encoding: None,
        }
    }
}

/// Where a `COPY FROM STDIN`'s rows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyPlacement {
    /// Each row to the shard of its key.
    Sharded,
    /// Every row to every shard.
    Reference,
    /// Every row to the default shard, relayed as sent.
    Unsharded,
}

/// A planned `COPY ... FROM STDIN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyIn {
    /// The table's name in the shard map (folded).
    pub table: String,
    /// The relation as an SQL identifier (schema-qualified when written so).
    pub relation: String,
    /// The column list, folded; `None`: every column, in the catalog's order.
    pub columns: Option<Vec<String>>,
    pub options: CopyOptions,
    pub placement: CopyPlacement,
    /// The column list leaves out the shard key: the cluster chooses it.
    pub keys: Option<CopyKeys>,
}

/// A COPY into a sharded table whose column list leaves out the shard key:
/// as PostgreSQL gives such rows the column's default, the cluster chooses
/// each row's key (as for an `INSERT` without it), and the shards run the
/// COPY with the key appended to the column list, each row carrying its key
/// as the last field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyKeys {
    /// [`KeySource::Sequence`] or [`KeySource::Random`].
    pub source: KeySource,
    /// The statement the shards run: the client's, `, "key"` inserted at
    /// the end of its column list.
    pub sql: String,
    /// Characters of the client's statement before the insertion, and the
    /// insertion's: a shard's error position maps back to the client's text.
    pub at: usize,
    pub len: usize,
}

impl CopyKeys {
    /// A position (1-based, in characters) in the shards' statement, as
    /// one in the client's.
    pub fn client_position(&self, p: usize) -> usize {
        if p > self.at + self.len {
            p - self.len
        } else {
            p.min(self.at + 1)
        }
    }
}

/// A planned `COPY ... TO STDOUT` that several shards answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOut {
    pub route: Route,
    /// The statement each shard runs (the client's).
    pub sql: String,
    pub format: CopyFormat,
    /// CSV/text with `HEADER`: only the first shard's header goes out.
    pub header: bool,
}

/// What a `COPY` statement names, before the shard map is consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    /// `(schema, name)`, folded; `None` for `COPY (query)`.
    relation: Option<(Option<String>, String)>,
    query: Option<String>,
    /// For `COPY (query)`: the text after the query's `)`, as written
    /// (`TO STDOUT WITH (...)`).
    after_query: String,
    columns: Option<Vec<String>>,
    /// `FROM` (true) or `TO`.
    from: bool,
    /// `STDIN`/`STDOUT` (true) or a server file or program.
    stdio: bool,
    options: Result<CopyOptions, String>,
}

/// Plans a `COPY` statement.
pub(super) fn plan(sql: &str, map: &ShardMap) -> Result<Plan, RouteError> {
    let p = parse(sql)?;
    if let Some(q) = &p.query {
        return query::plan_query_out(sql, q, &p, map);
    }
    let Some((schema, name)) = &p.relation else {
        return Err(RouteError::Syntax(
            "syntax error at or near \"COPY\"".into(),
        ));
    };
    let placement = if matches!(schema.as_deref(), Some("pg_catalog" | "information_schema")) {
        CopyPlacement::Unsharded
    } else if map.tables.contains_key(name) {
        CopyPlacement::Sharded
    } else if map.reference.contains(name) {
        CopyPlacement::Reference
    } else {
        CopyPlacement::Unsharded
    };
    let relation = match schema {
        Some(s) => format!("{}.{}", quote_ident(s), quote_ident(name)),
        None => quote_ident(name),
    };
    let distributed = placement != CopyPlacement::Unsharded;
    if !p.stdio {
        if distributed {
            return Err(RouteError::Unsupported(format!(
                "COPY of distributed table \"{name}\" to or from a server file or program is not supported: use COPY ... FROM STDIN / TO STDOUT (psql's \\copy)"
            )));
        }
        return Ok(Plan::Forward {
            route: Route::One(map.default_shard),
            write: Writes::Yes,
        });
    }
    let options = match p.options {
        Ok(o) => o,
        Err(m) if distributed => return Err(RouteError::Unsupported(m)),
        // An unsharded table's shard reads the options itself.
        Err(_) => CopyOptions::defaults(),
    };
    if !p.from {
        return Ok(match placement {
            CopyPlacement::Sharded => Plan::CopyOut(Box::new(CopyOut {
                route: Route::All,
                sql: sql.to_string(),
                format: options.format,
                header: options.header != Header::No,
            })),
            CopyPlacement::Reference => Plan::Forward {
                route: Route::Any,
                write: Writes::No,
            },
            CopyPlacement::Unsharded => Plan::Forward {
                route: Route::One(map.default_shard),
                write: Writes::No,
            },
        });
    }
    let mut keys = None;
    if placement == CopyPlacement::Sharded {
        if let (Some(cols), Some(rule)) = (&p.columns, map.tables.get(name)) {
            if !cols.contains(&rule.key) {
                let source = match rule.key_type {
                    KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => KeySource::Sequence,
                    KeyType::Uuid => KeySource::Random,
                    KeyType::Text => {
                        return Err(RouteError::Unsupported(format!(
                            "COPY into sharded table \"{name}\" must include the shard key \"{}\" in its column list: the cluster chooses keys only for integer (sequence) and uuid keys",
                            rule.key
                        )))
                    }
                };
                // PostgreSQL checks these against the client's list; the
                // shards' has the key.
                for (option, cols) in [
                    ("FORCE_NOT_NULL", &options.force_not_null),
                    ("FORCE_NULL", &options.force_null),
                ] {
                    if cols.contains(&rule.key) {
                        return Err(RouteError::NotInCopy {
                            option,
                            column: rule.key.clone(),
                        });
                    }
                }
                let (sql, at, len) = with_key_column(sql, &rule.key).ok_or_else(|| syntax("("))?;
                keys = Some(CopyKeys {
                    source,
                    sql,
                    at,
                    len,
                });
            }
        }
    }
    Ok(Plan::CopyIn(Box::new(CopyIn {
        table: name.clone(),
        relation,
        columns: p.columns,
        options,
        placement,
        keys,
    })))
}

/// `sql` (a `COPY table (columns) ...`) with `key` appended to its column
/// list, the rest as the client wrote it; where it went in (characters
/// before it) and its length in characters.
fn with_key_column(sql: &str, key: &str) -> Option<(String, usize, usize)> {
    let toks = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    // The first `)` closes the column list: the relation before it is
    // words and dots, and comments are whitespace tokens.
    let close = toks.iter().find(|t| t.token == Token::RParen)?.span.start;
    let (mut line, mut col) = (1u64, 1u64);
    let mut at = None;
    for (chars, (byte, c)) in sql.char_indices().enumerate() {
        if line == close.line && col == close.column {
            at = Some((byte, chars));
            break;
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    let (byte, chars) = at?;
    let insert = format!(", {}", quote_ident(key));
    let len = insert.chars().count();
    Some((
        format!("{}{insert}{}", &sql[..byte], &sql[byte..]),
        chars,
        len,
    ))
}

/// Whether a `VACUUM`/`ANALYZE` names any table (words after its options
/// that are not options): without one it covers every table.
pub(super) fn names_any_table(sql: &str) -> bool {
    const OPTIONS: &[&str] = &[
        "vacuum",
        "analyze",
        "analyse",
        "full",
        "freeze",
        "verbose",
        "skip_locked",
        "index_cleanup",
        "process_toast",
        "truncate",
        "parallel",
        "disable_page_skipping",
        "true",
        "false",
        "on",
        "off",
        "auto",
    ];
    let Ok(toks) = tokens(sql) else {
        return true;
    };
    let mut depth = 0;
    toks.iter().any(|t| match t {
        Token::LParen => {
            depth += 1;
            false
        }
        Token::RParen => {
            depth -= 1;
            false
        }
        Token::Word(w) if depth == 0 => {
            w.quote_style.is_some() || !OPTIONS.contains(&w.value.to_lowercase().as_str())
        }
        _ => false,
    })
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn syntax(near: &str) -> RouteError {
    RouteError::Syntax(format!("syntax error at or near \"{near}\""))
}

/// Tokens without whitespace and comments.
fn tokens(text: &str) -> Result<Vec<Token>, RouteError> {
    let toks = Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize()
        .map_err(|e| RouteError::Syntax(e.to_string()))?;
    Ok(toks
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
        .collect())
}

/// An identifier as PostgreSQL folds it, or a keyword word lowercased.
fn ident(t: &Token) -> Option<String> {
    match t {
        Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
        Token::Word(w) => Some(w.value.to_lowercase()),
        _ => None,
    }
}

/// A bare (unquoted) word, lowercased.
fn word(t: Option<&Token>) -> Option<String> {
    match t {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_lowercase()),
        _ => None,
    }
}

fn string(t: Option<&Token>) -> Option<String> {
    match t {
        Some(Token::SingleQuotedString(s)) | Some(Token::EscapedStringLiteral(s)) => {
            Some(s.clone())
        }
        _ => None,
    }
}

fn parse(sql: &str) -> Result<Parsed, RouteError> {
    let trimmed = sql.trim_start();
    let start = sql.len() - trimmed.len();
    let Some(after_copy) = trimmed.get(4..) else {
        return Err(syntax("COPY"));
    };
    let rest = after_copy.trim_start();
    let mut query = None;
    let mut after_query = String::new();
    let tail: &str;
    if rest.starts_with('(') {
        let open = sql.len() - rest.len();
        let close = matching_paren(sql, open).ok_or_else(|| syntax("("))?;
        query = Some(sql[open + 1..close].trim().to_string());
        tail = &sql[close + 1..];
        after_query = tail.trim().to_string();
    } else {
        tail = &sql[start + 4..];
    }
    let toks = tokens(tail)?;
    let mut i = 0;
    let mut relation = None;
    let mut columns = None;
    if query.is_none() {
        let first = toks.get(i).and_then(ident).ok_or_else(|| syntax("COPY"))?;
        i += 1;
        relation = Some(if matches!(toks.get(i), Some(Token::Period)) {
            let name = toks.get(i + 1).and_then(ident).ok_or_else(|| syntax("."))?;
            i += 2;
            (Some(first), name)
        } else {
            (None, first)
        });
        if matches!(toks.get(i), Some(Token::LParen)) {
            i += 1;
            let (cols, next) = name_list(&toks, i)?;
            columns = Some(cols);
            i = next;
        }
    }
    let from = match word(toks.get(i)).as_deref() {
        Some("from") => true,
        Some("to") => false,
        _ => {
            return Err(syntax(
                &toks.get(i).map(|t| t.to_string()).unwrap_or_default(),
            ))
        }
    };
    i += 1;
    let stdio = match word(toks.get(i)).as_deref() {
        Some("stdin") | Some("stdout") => {
            i += 1;
            true
        }
        _ => false,
    };
    let options = if stdio {
        options(&toks[i..])
    } else {
        Err("server files".into())
    };
    Ok(Parsed {
        relation,
        query,
        after_query,
        columns,
        from,
        stdio,
        options,
    })
}

/// `a, "B", c)` from `i`: the names and the index after `)`.
fn name_list(toks: &[Token], mut i: usize) -> Result<(Vec<String>, usize), RouteError> {
    let mut names = Vec::new();
    loop {
        let name = toks.get(i).and_then(ident).ok_or_else(|| syntax("("))?;
        names.push(name);
        i += 1;
        match toks.get(i) {
            Some(Token::Comma) => i += 1,
            Some(Token::RParen) => return Ok((names, i + 1)),
            _ => return Err(syntax(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(sql: &str) -> CopyOptions {
        parse(sql).unwrap().options.unwrap()
    }

    #[test]
    fn statements() {
        let p = parse("copy pgbench_accounts from stdin with (freeze on)").unwrap();
        assert_eq!(p.relation, Some((None, "pgbench_accounts".into())));
        assert!(p.from && p.stdio && p.columns.is_none());
        assert_eq!(p.options.unwrap().format, CopyFormat::Text);

        let p = parse("COPY public.\"Accounts\" (id, \"Bal\") FROM stdin;").unwrap();
        assert_eq!(p.relation, Some((Some("public".into()), "Accounts".into())));
        assert_eq!(p.columns, Some(vec!["id".into(), "Bal".into()]));

        let p = parse("COPY (SELECT * FROM t WHERE a = ')') TO STDOUT WITH CSV HEADER").unwrap();
        assert_eq!(p.query.as_deref(), Some("SELECT * FROM t WHERE a = ')'"));
        assert!(!p.from);
        let o = p.options.unwrap();
        assert_eq!((o.format, o.header), (CopyFormat::Csv, Header::Skip));

        assert!(!parse("COPY t FROM '/tmp/x'").unwrap().stdio);
    }

    #[test]
    fn keys_left_to_the_cluster() {
        let m = ShardMap::from_config(
            &crate::config::Config::parse(crate::router::SAMPLE_CONFIG, "sample.toml").unwrap(),
        );
        let keys = |sql: &str| match plan(sql, &m) {
            Ok(Plan::CopyIn(c)) => c.keys,
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(keys("COPY accounts (id, name) FROM STDIN"), None);
        assert_eq!(keys("COPY accounts FROM STDIN"), None);
        let sql = "COPY /* (c) */ \"accounts\" (\n name, \"n)\" ) FROM STDIN WITH (FORMAT csv)";
        let k = keys(sql).unwrap();
        assert_eq!(k.source, KeySource::Sequence);
        assert_eq!(
            k.sql,
            "COPY /* (c) */ \"accounts\" (\n name, \"n)\" , \"id\") FROM STDIN WITH (FORMAT csv)"
        );
        // Positions after the insertion move back to the client's text.
        let format_at = sql.find("FORMAT").unwrap() + 1;
        assert_eq!(k.client_position(format_at + k.len), format_at);
        assert_eq!(k.client_position(3), 3);
        // Options about the key, which the client's list leaves out.
        let e = plan(
            "COPY accounts (name) FROM STDIN (FORMAT csv, FORCE_NULL (id))",
            &m,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "FORCE_NULL column \"id\" not referenced by COPY"
        );
        // Text keys are the application's to give.
        match plan("COPY users (name) FROM STDIN", &m) {
            Err(RouteError::Unsupported(m)) => assert!(m.contains("shard key"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options_new_and_old() {
        let o = opts("COPY t FROM STDIN (FORMAT csv, HEADER match, DELIMITER ';', NULL 'NA', QUOTE '''', ESCAPE '\\', FORCE_NULL (a, b), FORCE_NOT_NULL (c))");
        assert_eq!(o.format, CopyFormat::Csv);
        assert_eq!(o.header, Header::Match);
        assert_eq!((o.delimiter, o.quote, o.escape), (b';', b'\'', b'\\'));
        assert_eq!(o.null, b"NA");
        assert_eq!(o.force_null, vec!["a", "b"]);
        assert_eq!(o.force_not_null, vec!["c"]);

        let o = opts("COPY t FROM STDIN WITH (FORMAT csv)");
        assert_eq!((o.delimiter, o.quote, o.escape), (b',', b'"', b'"'));
        assert_eq!(o.null, b"");

        let o =
            opts("COPY t FROM STDIN WITH CSV HEADER DELIMITER AS '|' NULL 'x' FORCE NOT NULL a, b");
        assert_eq!(o.format, CopyFormat::Csv);
        assert_eq!(o.header, Header::Skip);
        assert_eq!(o.delimiter, b'|');
        assert_eq!(o.force_not_null, vec!["a", "b"]);

        let o = opts("COPY t FROM STDIN DELIMITER ','");
        assert_eq!(
            (o.format, o.delimiter, o.null.as_slice()),
            (CopyFormat::Text, b',', &b"\\N"[..])
        );
        assert_eq!(
            opts("COPY t FROM STDIN (FORMAT binary)").format,
            CopyFormat::Binary
        );
        assert_eq!(opts("COPY t FROM STDIN (HEADER off)").header, Header::No);
        assert!(parse("COPY t FROM STDIN WITH weird")
            .unwrap()
            .options
            .is_err());
    }
}
