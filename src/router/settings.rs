//! Whether a statement may change session settings where the proxy cannot
//! see it: `set_config(..., false)`, or a function, procedure or `DO` block
//! whose body might (`PERFORM set_config`, `EXECUTE 'SET ...'`). The proxy
//! tracks `SET`/`RESET` itself; for these it must re-learn or reset the
//! connection's settings so that they stay with their client.
//!
//! A conservative scan of the text, no parse (it runs on every statement): a
//! false "yes" costs a reset round trip later, a false "no" would leak a
//! setting, so anything not known to be harmless says yes.

/// Calls that cannot change settings: aggregates and common built-ins.
/// `pg_catalog.` functions other than `set_config` are catalog functions
/// and count as harmless too.
const HARMLESS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_position",
    "array_to_string",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_date",
    "current_setting",
    "currval",
    "date_part",
    "date_trunc",
    "decode",
    "dense_rank",
    "div",
    "encode",
    "every",
    "exp",
    "extract",
    "first_value",
    "floor",
    "format",
    "gen_random_uuid",
    "generate_series",
    "greatest",
    "hashtext",
    "initcap",
    "json_agg",
    "json_build_array",
    "json_build_object",
    "jsonb_agg",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_set",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "max",
    "md5",
    "min",
    "mod",
    "nextval",
    "now",
    "ntile",
    "nullif",
    "octet_length",
    "overlay",
    "percent_rank",
    "position",
    "power",
    "quote_ident",
    "quote_literal",
    "random",
    "rank",
    "regexp_replace",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "rpad",
    "rtrim",
    "setval",
    "sign",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "sum",
    "timezone",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "trim",
    "trunc",
    "unnest",
    "upper",
    "uuid_generate_v4",
];

/// Words that are followed by `(` without being a call: keywords, and
/// type names with modifiers.
const NOT_CALLS: &[&str] = &[
    "all",
    "and",
    "any",
    "array",
    "as",
    "between",
    "bigint",
    "bit",
    "by",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "conflict",
    "cube",
    "decimal",
    "default",
    "distinct",
    "do",
    "else",
    "except",
    "exists",
    "filter",
    "float",
    "from",
    "group",
    "grouping",
    "having",
    "in",
    "include",
    "insert",
    "intersect",
    "interval",
    "is",
    "join",
    "key",
    "lateral",
    "like",
    "limit",
    "not",
    "numeric",
    "offset",
    "on",
    "or",
    "over",
    "partition",
    "primary",
    "references",
    "returning",
    "rollup",
    "row",
    "select",
    "set",
    "sets",
    "some",
    "table",
    "then",
    "time",
    "timestamp",
    "union",
    "unique",
    "using",
    "values",
    "varbit",
    "varchar",
    "when",
    "where",
    "window",
    "with",
    "within",
];

/// Words after which a name followed by `(` is a table or column list.
const BEFORE_LISTS: &[&str] = &["into", "table", "on", "references", "as", "exists", "index"];

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_char(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Whether `sql` may change session settings out of the proxy's sight.
pub fn may_change_settings(sql: &str) -> bool {
    let b = sql.as_bytes();
    let mut i = 0;
    // The last two words seen (lowercase), and whether a `.` joined the
    // current name to the one before (a qualified name).
    let mut prev: Option<String> = None;
    let mut before_name: Option<String> = None;
    let mut qualifier: Option<String> = None;
    let mut first = true;
    // Past the first word, only a call (`(`), or a quoted name or body that
    // does not end (`"`, `$` — not a parameter's `$1`, since a dollar
    // quote's tag cannot start with a digit), can say yes.
    let more = has_call_marks(b);
    if !more {
        // Only the first word can tell; read it without allocating unless
        // a comment comes first.
        let start = b
            .iter()
            .position(|c| !c.is_ascii_whitespace())
            .unwrap_or(b.len());
        let t = &b[start..];
        if !t.starts_with(b"--") && !t.starts_with(b"/*") {
            let end = t
                .iter()
                .position(|c| !c.is_ascii_alphabetic())
                .unwrap_or(t.len());
            let w = &t[..end];
            return w.eq_ignore_ascii_case(b"do") || w.eq_ignore_ascii_case(b"call");
        }
    }
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            continue;
        }
        if c == b'\'' {
            // Escape strings (E'...') may hide a quote behind a backslash.
            let escapes = i > 0 && matches!(b[i - 1], b'e' | b'E');
            i += 1;
            while i < b.len() {
                if escapes && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            prev = None;
            continue;
        }
        if c == b'$' {
            // A dollar-quoted body: a function or DO body is code, and the
            // statement around it is already judged by its words.
            let tag_end = b[i + 1..]
                .iter()
                .position(|&x| !ident_char(x) || x == b'$')
                .map(|p| i + 1 + p);
            if let Some(e) = tag_end.filter(|&e| b.get(e) == Some(&b'$')) {
                let tag = &b[i..=e];
                let body = e + 1;
                match b[body..].windows(tag.len()).position(|w| w == tag) {
                    Some(p) => i = body + p + tag.len(),
                    None => return true,
                }
                prev = None;
                continue;
            }
            i += 1;
            continue;
        }
        if c == b'"' || ident_start(c) {
            let (word, next) = if c == b'"' {
                let end = b[i + 1..]
                    .iter()
                    .position(|&x| x == b'"')
                    .map(|p| i + 1 + p);
                let Some(end) = end else { return true };
                (sql[i + 1..end].to_string(), end + 1)
            } else {
                let mut j = i;
                while j < b.len() && ident_char(b[j]) {
                    j += 1;
                }
                (sql[i..j].to_ascii_lowercase(), j)
            };
            if first {
                first = false;
                if matches!(word.as_str(), "do" | "call") {
                    return true;
                }
                if !more {
                    return false;
                }
            }
            let mut j = next;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if b.get(j) == Some(&b'.') {
                qualifier = Some(word);
                before_name = before_name.or(prev.take());
                i = j + 1;
                continue;
            }
            if b.get(j) == Some(&b'(')
                && is_call(
                    &word,
                    qualifier.as_deref(),
                    before_name.as_ref().or(prev.as_ref()),
                )
            {
                return true;
            }
            qualifier = None;
            before_name = None;
            prev = Some(word);
            i = next;
            continue;
        }
        qualifier = None;
        before_name = None;
        prev = None;
        i += 1;
    }
    false
}

/// Whether `b` holds a `(`, a `"` or a `$` that is not a parameter's `$1`.
/// A tight search (one comparison chain per byte, no lookahead but at a
/// `$`): it runs over every simple query, and the enumerate-and-match form
/// cost about 15 instructions a byte.
fn has_call_marks(b: &[u8]) -> bool {
    let mut from = 0;
    while let Some(p) = b
        .get(from..)
        .and_then(|rest| rest.iter().position(|&c| matches!(c, b'(' | b'"' | b'$')))
    {
        let at = from + p;
        if b.get(at) != Some(&b'$') || !b.get(at + 1).is_some_and(u8::is_ascii_digit) {
            return true;
        }
        from = at + 1;
    }
    false
}

/// Whether `name(` is a call the proxy cannot vouch for.
fn is_call(name: &str, qualifier: Option<&str>, before: Option<&String>) -> bool {
    if name == "set_config" {
        return true;
    }
    if qualifier == Some("pg_catalog") {
        return false;
    }
    if before.is_some_and(|w| BEFORE_LISTS.contains(&w.as_str())) {
        return false;
    }
    if qualifier.is_some() {
        return true;
    }
    if NOT_CALLS.contains(&name) || HARMLESS.contains(&name) {
        return false;
    }
    // Catalog functions (pg_get_*, pg_typeof, ...) other than the
    // session-level ones.
    !name.starts_with("pg_") || name.starts_with("pg_advisory")
}

#[cfg(test)]
mod tests {
    use super::may_change_settings;

    #[test]
    fn statements_that_may_change_settings() {
        for (sql, risky) in [
            ("SELECT 1", false),
            ("SELECT count(*), sum(b) FROM t WHERE id IN (1, 2)", false),
            ("INSERT INTO t (id, b) VALUES (1, 2)", false),
            (
                "INSERT INTO public.t (id, b) VALUES (1, 2) RETURNING id",
                false,
            ),
            (
                "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 3",
                false,
            ),
            (
                "CREATE TABLE t (id bigint PRIMARY KEY, n numeric(10,2), CHECK (n > 0))",
                false,
            ),
            ("CREATE INDEX i ON t (b)", false),
            (
                "SELECT pg_catalog.set_config('search_path', '', false)",
                true,
            ),
            ("select SET_CONFIG('x', 'y', false)", true),
            ("SELECT sneaky()", true),
            ("SELECT public.sneaky(1)", true),
            ("SELECT \"Sneaky\"()", true),
            ("CALL p()", true),
            ("DO $$BEGIN PERFORM 1; END$$", true),
            (
                "SELECT pg_catalog.pg_get_userbyid(10), pg_catalog.format_type(23, -1)",
                false,
            ),
            ("SELECT 'sneaky()' AS s -- sneaky()\n", false),
            ("SELECT $q$ set_config( $q$", false),
            ("SELECT E'\\' sneaky()'", false),
            ("SELECT pg_advisory_lock(1)", true),
            ("WITH x AS (SELECT 1) SELECT * FROM x", false),
            ("SELECT * FROM t WHERE EXISTS (SELECT 1)", false),
            // No call can follow: the first word decides.
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
                false,
            ),
            ("do 'BEGIN PERFORM 1; END'", true),
            ("  Call p", true),
            ("-- a comment\nDO 'BEGIN PERFORM 1; END'", true),
            ("/* x */ CALL p", true),
            ("/* x */ SELECT 1", false),
            // A parameter is not a dollar quote: the first word decides.
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
                false,
            ),
            ("CALL p($1)", true),
            ("DO $1$ BEGIN END $1$", true),
            ("SELECT $1, set_config('a.b', $2, false)", true),
            ("SELECT $f$x$f$, sneaky()", true),
        ] {
            assert_eq!(may_change_settings(sql), risky, "{sql}");
        }
    }
}
