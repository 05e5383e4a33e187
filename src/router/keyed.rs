//! Plans for prepared statements that one bound value routes: the shard
//! key compared with `$n` (or inserted as `$n`). Found once per statement;
//! each Bind then costs a key parse and a hash, not a SQL parse.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::{classify, Bound, KeyValue, Plan, Route, ShardMap, TableRule};

#[derive(Debug)]
pub struct KeyedPlan {
    rule: TableRule,
    /// The parameter (0-based) holding the key.
    param: usize,
    write: super::Writes,
    /// The text's FNV-1a state, continued over parameter types to name the
    /// statement on a server connection.
    hash: u64,
    len: usize,
    /// Taken out of a simple query, the text means what the query meant:
    /// no constant in it is read by position (`ORDER BY 1`, `GROUP BY 1`,
    /// `DISTINCT ON (1)`), and it is a plain statement, not `EXPLAIN`.
    preparable: bool,
    /// An `INSERT`, `UPDATE` or `DELETE` (see `modifies`).
    modifies: bool,
    /// It returns rows with a `*` in the text: DDL on a table it reads may
    /// change their shape, which a prepared statement refuses ("cached
    /// plan must not change result type") where the text would run.
    star_rows: bool,
    /// A constant meets another in an expression (`$1 / $2`, `$1 = $2`,
    /// `5 + $1`), or is cast or passed to a function (`$1::int2`,
    /// `abs($1)`): see `constants_meet`.
    constants_meet: bool,
    /// A shard refused to prepare it (it is valid only with its constants
    /// in place, such as `SELECT 'x'` or `interval '1 day'`).
    refused: AtomicBool,
    /// The server name for the first parameter types seen (nearly always
    /// the only ones), made once.
    named: OnceLock<(Vec<u32>, Arc<str>)>,
}

/// Whether a constant-free text may be prepared in place of the query it
/// came from: a plain statement, with no clause that reads a number as a
/// column position.
fn preparable(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    let first = lower
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next();
    matches!(first, Some("select" | "insert" | "update" | "delete"))
        && !lower.contains("order")
        && !lower.contains("group")
        && !lower.contains("distinct")
        && !truncates_a_name(sql)
}

/// Names are at most this many bytes (`NAMEDATALEN - 1`); PostgreSQL's
/// lexer cuts a longer one and says so in a NOTICE each time it reads the
/// text, which a statement prepared once would say only at its Parse.
const MAX_NAME: usize = 63;

/// Whether a name in `sql`, bare or quoted, is longer than PostgreSQL keeps.
fn truncates_a_name(sql: &str) -> bool {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' {
            // `""` inside is one byte of the name.
            let mut n = 0;
            i += 1;
            while i < b.len() {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        i += 1;
                    } else {
                        break;
                    }
                }
                n += 1;
                i += 1;
            }
            if n > MAX_NAME {
                return true;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            if i - start > MAX_NAME {
                return true;
            }
        } else {
            i += 1;
        }
    }
    false
}

/// Whether the statement is an `INSERT`, `UPDATE` or `DELETE`: run as a
/// simple query, its `RETURNING` rows are described only once it has run.
fn modifies(sql: &str) -> bool {
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .map(str::to_ascii_lowercase);
    matches!(first.as_deref(), Some("insert" | "update" | "delete"))
}

/// Whether `word` (lowercase) stands in `sql` as a word of its own, in any case.
fn has_word(sql: &str, word: &str) -> bool {
    let b = sql.as_bytes();
    let w = word.as_bytes();
    let name = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    (0..b.len().saturating_sub(w.len() - 1)).any(|i| {
        b[i..i + w.len()].eq_ignore_ascii_case(w)
            && (i == 0 || !name(b[i - 1]))
            && b.get(i + w.len()).is_none_or(|c| !name(*c))
    })
}

/// Whether, in a constant-free text, a `$n` stands where PostgreSQL's
/// planner computes on constants alone when they are in the text: beside an
/// operator whose other operand is a constant (`$1 / $2`, `$3 = $4`, `5 +
/// $1`), cast (`$1::int2`), or an argument of a function (`abs($1)`). With
/// the constants in place it folds those while planning (`10 / 0` fails
/// there, `1 = 1` makes an `OR` true without its other side); a generic plan
/// of the prepared statement computes them while it runs, row by row, or
/// never. Inside a block, where nothing can be sent again, such a text goes
/// as written. Errs on the side of `true` (`b / $1 > $2` is read as
/// meeting).
fn constants_meet(sql: &str) -> bool {
    const OPERATOR: &[u8] = b"+-*/%^<>=!|&#~@";
    // Words before `(` that open a list or a condition, not a function call.
    const NOT_CALLS: &[&str] = &[
        "values",
        "in",
        "and",
        "or",
        "not",
        "where",
        "on",
        "when",
        "then",
        "else",
        "select",
        "having",
        "limit",
        "offset",
        "exists",
        "any",
        "all",
        "some",
        "set",
        "returning",
        "by",
    ];
    let b = sql.as_bytes();
    let name = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let constant_at = |i: usize| b.get(i).is_some_and(|c| *c == b'$' || c.is_ascii_digit());
    let mut quoted = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if quoted || c == b'"' {
            quoted = if c == b'"' { !quoted } else { quoted };
            i += 1;
            continue;
        }
        if c != b'$' || i > 0 && (name(b[i - 1]) || b[i - 1] == b'$') {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        // To the left: operators (and a unary minus), then the operand.
        let mut l = start;
        let mut operator = false;
        let mut open = false;
        while l > 0 && (b[l - 1].is_ascii_whitespace() || b[l - 1] == b'(') {
            open |= b[l - 1] == b'(';
            l -= 1;
        }
        while l > 0 && (OPERATOR.contains(&b[l - 1]) || b[l - 1].is_ascii_whitespace()) {
            operator |= OPERATOR.contains(&b[l - 1]);
            l -= 1;
        }
        while l > 0 && b[l - 1] == b'(' {
            l -= 1;
        }
        if operator && l > 0 && (b[l - 1].is_ascii_digit() || b[l - 1] == b')') {
            return true;
        }
        if open && !operator {
            let end = l;
            while l > 0 && name(b[l - 1]) {
                l -= 1;
            }
            let word = sql[l..end].to_ascii_lowercase();
            if !word.is_empty() && !NOT_CALLS.contains(&word.as_str()) {
                return true;
            }
        }
        // To the right: a cast, or operators then a constant.
        let mut r = i;
        while r < b.len() && (b[r].is_ascii_whitespace() || b[r] == b')') {
            r += 1;
        }
        if b[r..].starts_with(b"::") {
            return true;
        }
        let mut operator = false;
        while r < b.len()
            && (OPERATOR.contains(&b[r]) || b[r].is_ascii_whitespace() || b[r] == b'(')
        {
            operator |= OPERATOR.contains(&b[r]);
            r += 1;
        }
        if operator && constant_at(r) {
            return true;
        }
    }
    false
}

impl KeyedPlan {
    /// The keyed plan of `sql` under `map`, when it has one.
    pub fn find(sql: &str, map: &ShardMap) -> Option<KeyedPlan> {
        let (rule, param, write) = classify::keyed(sql, map)?;
        Some(KeyedPlan {
            rule: rule.clone(),
            param,
            write,
            hash: crate::protocol::fnv1a(sql.bytes()),
            len: sql.len(),
            preparable: preparable(sql),
            modifies: modifies(sql),
            star_rows: sql.contains('*') && (!modifies(sql) || has_word(sql, "returning")),
            constants_meet: constants_meet(sql),
            refused: AtomicBool::new(false),
            named: OnceLock::new(),
        })
    }

    /// The name of this text, with these parameter types, on a server
    /// connection: the name the extended protocol gives the same statement
    /// (`pieskieo_<hash>_<length>`), so the two share it; `None` when the
    /// text may not stand for the simple query it came from.
    pub fn server_name(&self, types: impl Iterator<Item = u32> + Clone) -> Option<Arc<str>> {
        if !self.preparable || self.refused.load(Ordering::Relaxed) {
            return None;
        }
        if let Some((t, name)) = self.named.get() {
            if t.iter().copied().eq(types.clone()) {
                return Some(name.clone());
            }
        }
        let h = crate::protocol::fnv1a_from(self.hash, types.clone().flat_map(u32::to_be_bytes));
        let name: Arc<str> = format!("pieskieo_{h:016x}_{}", self.len).into();
        let _ = self.named.set((types.collect(), name.clone()));
        Some(name)
    }

    /// An `INSERT`, `UPDATE` or `DELETE`: its RowDescription, if any,
    /// waits until it has run.
    pub fn modifies(&self) -> bool {
        self.modifies
    }

    /// Whether its rows' shape may follow DDL (see `star_rows`).
    pub fn star_rows(&self) -> bool {
        self.star_rows
    }

    /// Whether its constants may be computed on before any row is read
    /// (see `constants_meet`).
    pub fn constants_meet(&self) -> bool {
        self.constants_meet
    }

    /// A shard would not prepare the text: its queries go as written from now on.
    pub fn refuse(&self) {
        self.refused.store(true, Ordering::Relaxed);
    }

    /// The plan for these values; `None` when the key value is not one the
    /// shortcut can place (NULL, unreadable, outside every range): then the
    /// statement is planned in full.
    pub fn plan(&self, params: &[Bound], map: &ShardMap) -> Option<Plan> {
        let Some(Bound::Text(text)) = params.get(self.param) else {
            return None;
        };
        let key = KeyValue::parse_typed(self.rule.key_type, text).ok()?;
        let shard = self.rule.shard_for(&key, map.shards)?;
        Some(Plan::Forward {
            route: Route::One(shard),
            write: self.write,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_that_meet_are_told_from_constants_beside_columns() {
        for meets in [
            "SELECT b FROM t WHERE id = $1 AND (b / $2 > $3 OR $4 = $5)",
            "UPDATE t SET b = $1 / $2 WHERE id = $3",
            "UPDATE t SET b = b + 5 * $1 WHERE id = $2",
            "SELECT b FROM t WHERE id = $1::int8",
            "SELECT abs($1) FROM t WHERE id = $2",
            "SELECT b::numeric($1, $2) FROM t WHERE id = $3",
            "SELECT b FROM t WHERE id = $1 AND ($2 + $3) > b",
        ] {
            assert!(constants_meet(meets), "{meets}");
        }
        for apart in [
            "UPDATE pgbench_accounts SET abalance = abalance + -$1 WHERE aid = $2",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "INSERT INTO t (id, b) VALUES ($1, $2) RETURNING b",
            "SELECT b FROM t WHERE id = $1 AND b > $2 LIMIT $3 OFFSET $4",
            "SELECT b FROM t WHERE id IN ($1, $2)",
            "SELECT \"a$1\" FROM t WHERE id = $1",
            "UPDATE t SET b = $1 WHERE id = $2",
            "SELECT b + $1 FROM t WHERE id = $2 AND (b > $3)",
        ] {
            assert!(!constants_meet(apart), "{apart}");
        }
    }

    #[test]
    fn texts_with_names_postgresql_cuts_are_not_prepared() {
        let long = "a".repeat(64);
        assert!(preparable(&format!(
            "SELECT b AS {} FROM t WHERE id = $1",
            "a".repeat(63)
        )));
        assert!(!preparable(&format!(
            "SELECT b AS {long} FROM t WHERE id = $1"
        )));
        assert!(!preparable(&format!(
            "SELECT b AS \"{long}\" FROM t WHERE id = $1"
        )));
        // `""` is one byte of the name: 32 of them are 32 bytes.
        assert!(preparable(&format!(
            "SELECT b AS \"{}\" FROM t WHERE id = $1",
            "\"\"".repeat(32)
        )));
    }

    #[test]
    fn writes_are_told_from_reads() {
        assert!(modifies("  UPDATE t SET b = $1 WHERE id = $2"));
        assert!(modifies("insert into t values ($1)"));
        assert!(!modifies("SELECT b FROM t WHERE id = $1"));
    }

    #[test]
    fn only_plain_statements_without_positional_numbers_are_prepared() {
        for yes in [
            "SELECT b FROM t WHERE id = $1",
            "  update t SET b = $1 WHERE id = $2",
            "INSERT INTO t (id) VALUES ($1)",
            "DELETE FROM t WHERE id = $1",
        ] {
            assert!(preparable(yes), "{yes}");
        }
        for no in [
            "SELECT b FROM t WHERE id = $1 ORDER BY $2",
            "SELECT b, count(*) FROM t WHERE id = $1 GROUP BY $2",
            "SELECT DISTINCT ON ($1) b FROM t WHERE id = $2",
            "select b from t where id = $1 order by 1",
            "EXPLAIN SELECT b FROM t WHERE id = $1",
            "WITH x AS (SELECT 1) SELECT b FROM t WHERE id = $1",
            "PREVIEW SELECT b FROM t WHERE id = $1",
        ] {
            assert!(!preparable(no), "{no}");
        }
    }
}
