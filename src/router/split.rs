//! A small lexer over PostgreSQL SQL text: splits a simple-query string into
//! statements at top-level `;` (respecting quotes, dollar quotes, comments and
//! parentheses) and reads a statement's leading keywords.

/// Byte ranges of the statements in `sql`, blank ones (only spaces and
/// comments) left out, as PostgreSQL ignores them.
pub fn split_statements(sql: &str) -> Vec<&str> {
    // Most queries are one statement with no quote, comment or `;` but
    // perhaps a final one (pgbench, ORMs): then the lexer has nothing to find.
    if let Some(one) = plain_statement(sql) {
        return if one.is_empty() {
            Vec::new()
        } else {
            vec![one]
        };
    }
    split_statements_lexed(sql)
}

/// [`split_statements`] by the lexer alone.
fn split_statements_lexed(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut depth = 0i32;
    let mut i = 0;
    let mut has_content = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                let escaped =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !is_ident(b[i - 2]));
                i = skip_quoted(b, i, b'\'', escaped);
                has_content = true;
                continue;
            }
            b'"' => {
                i = skip_quoted(b, i, b'"', false);
                has_content = true;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(b, i);
                continue;
            }
            b'$' if i == 0 || !is_ident(b[i - 1]) => {
                if let Some(end) = skip_dollar(b, i) {
                    i = end;
                    has_content = true;
                    continue;
                }
            }
            b'(' => depth += 1,
            b')' => depth -= 1,
            b';' if depth <= 0 => {
                if has_content {
                    out.push(sql[start..i].trim());
                }
                start = i + 1;
                has_content = false;
                depth = 0;
                i += 1;
                continue;
            }
            _ => {}
        }
        if !c.is_ascii_whitespace() {
            has_content = true;
        }
        i += 1;
    }
    if has_content {
        out.push(sql[start..].trim());
    }
    out
}

/// `sql` as one statement (trimmed, its final `;` dropped) when the lexer
/// could find nothing in it: ASCII with no quote, dollar, comment or other `;`, and a
/// final `;` outside parentheses (inside them, it is part of the text).
fn plain_statement(sql: &str) -> Option<&str> {
    // Non-ASCII: the lexer's blank test and `trim` differ there.
    if !sql.is_ascii() {
        return None;
    }
    let text = sql.trim_end();
    let (body, semicolon) = match text.strip_suffix(';') {
        Some(b) => (b, true),
        None => (text, false),
    };
    let mut depth = 0i32;
    for c in body.bytes() {
        match c {
            b';' | b'\'' | b'"' | b'$' | b'-' | b'/' => return None,
            b'(' => depth += 1,
            b')' => depth -= 1,
            _ => {}
        }
    }
    if semicolon && depth > 0 {
        return None;
    }
    Some(body.trim())
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Index just past a quoted string or identifier starting at `i`.
fn skip_quoted(b: &[u8], mut i: usize, q: u8, backslash: bool) -> usize {
    i += 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// If a dollar-quoted string starts at `i`, the index just past it.
fn skip_dollar(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() && b[j] != b'$' {
        let c = b[j];
        let ok = if j == i + 1 {
            c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
        } else {
            is_ident(c)
        };
        if !ok {
            return None;
        }
        j += 1;
    }
    if j >= b.len() {
        return None;
    }
    let tag = &b[i..=j];
    let body = j + 1;
    let mut k = body;
    while k + tag.len() <= b.len() {
        if &b[k..k + tag.len()] == tag {
            return Some(k + tag.len());
        }
        k += 1;
    }
    Some(b.len())
}

/// The leading words of a statement: keywords and unquoted identifiers
/// lower-cased, quoted identifiers exact; stops at the first other token.
pub fn leading_words(sql: &str, n: usize) -> Vec<String> {
    words(sql).take(n).map(|(w, _)| w).collect()
}

/// Whether the statement's first word is one of `words` (lower-case
/// keywords), as [`leading_words`] would read it, without allocating.
pub fn first_word_in(sql: &str, words: &[&str]) -> bool {
    let b = sql.as_bytes();
    let start = skip_space(b, 0);
    match b.get(start) {
        Some(&c) if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
            let w = &b[start..word_end(b, start)];
            words.iter().any(|k| w.eq_ignore_ascii_case(k.as_bytes()))
        }
        // A quoted first word: as `leading_words` reads it.
        Some(b'"') => leading_words(sql, 1)
            .first()
            .is_some_and(|w| words.contains(&w.as_str())),
        _ => false,
    }
}

/// The offset of the first byte at or after `i` that is neither white
/// space nor inside a comment.
fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
        } else if b[i] == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i = skip_block_comment(b, i);
        } else {
            break;
        }
    }
    i
}

/// The end of the unquoted word starting at `i`.
fn word_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (is_ident(b[i]) || b[i] == b'$' || b[i] == b'.') {
        i += 1;
    }
    i
}

/// Byte offset just past the `n`-th leading word (as [`leading_words`] reads them).
pub fn after_words(sql: &str, n: usize) -> Option<usize> {
    words(sql).nth(n.checked_sub(1)?).map(|(_, end)| end)
}

/// The leading words of `sql` with the byte offset just past each; stops at
/// the first token that is not a word.
fn words(sql: &str) -> impl Iterator<Item = (String, usize)> + '_ {
    let b = sql.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        i = skip_space(b, i);
        let start = i;
        match *b.get(i)? {
            b'"' => {
                i = skip_quoted(b, i, b'"', false);
                // An unterminated quote runs to the end; never slice inside a character.
                let closed = i > start + 1 && b.get(i - 1) == Some(&b'"');
                let inner = sql
                    .get(start + 1..if closed { i - 1 } else { i })
                    .unwrap_or("");
                Some((inner.replace("\"\"", "\""), i))
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                i = word_end(b, i);
                Some((sql[start..i].to_lowercase(), i))
            }
            _ => None,
        }
    })
}

/// The index of the `)` closing the `(` at `open`, skipping quoted text.
pub fn matching_paren(sql: &str, open: usize) -> Option<usize> {
    let b = sql.as_bytes();
    let mut depth = 0;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'\'' => {
                i = skip_quoted(b, i, b'\'', i > 0 && matches!(b[i - 1], b'e' | b'E'));
                continue;
            }
            b'"' => {
                i = skip_quoted(b, i, b'"', false);
                continue;
            }
            b'$' if i == 0 || !is_ident(b[i - 1]) => {
                if let Some(end) = skip_dollar(b, i) {
                    i = end;
                    continue;
                }
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_word_reads_as_leading_words_reads_it() {
        let words = ["show", "set", "reset", "select"];
        for sql in [
            "SHOW x",
            "  -- c\n set a = 1",
            "/* c */ReSeT all",
            "select 1",
            "selected",
            "\"show\" x",
            "(select 1)",
            "",
            "set.x",
            "é",
        ] {
            let by_words = leading_words(sql, 1)
                .first()
                .is_some_and(|w| words.contains(&w.as_str()));
            assert_eq!(first_word_in(sql, &words), by_words, "{sql:?}");
        }
    }

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let sql = "SELECT 'a;b'; SELECT \"x;y\" FROM t -- c;\n; SELECT $$;$$, $f$ ; $f$;; /* ; /* ; */ */ SELECT E'\\';' ; CREATE RULE r AS ON INSERT TO t DO (SELECT 1; SELECT 2)";
        let parts = split_statements(sql);
        assert_eq!(
            parts,
            vec![
                "SELECT 'a;b'",
                "SELECT \"x;y\" FROM t -- c;",
                "SELECT $$;$$, $f$ ; $f$",
                "/* ; /* ; */ */ SELECT E'\\';'",
                "CREATE RULE r AS ON INSERT TO t DO (SELECT 1; SELECT 2)",
            ]
        );
        assert!(split_statements("  ; -- nothing\n ; /* */").is_empty());
        assert_eq!(
            split_statements("select $1 from a$b; select 2"),
            vec!["select $1 from a$b", "select 2"]
        );
    }

    /// What the lexer gives for the texts the shortcut takes, and those it
    /// must leave to the lexer.
    #[test]
    fn the_one_statement_shortcut_agrees_with_the_lexer() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 17;",
            "  SELECT count(*) FROM t  ;  ",
            "SELECT 1",
            "",
            "   ",
            ";",
            " ; ",
            "SELECT (1;",
            "SELECT (1));",
            "SELECT 1;;",
            "SELECT 1; SELECT 2",
            "SELECT 'a;'",
            "SELECT 1 -- x;",
            "SELECT $$;$$;",
            "/* ; */ SELECT 1;",
            "SELECT \"a;b\" FROM t;",
            "\u{a0}",
            "SELECT\u{a0}1;",
        ] {
            if let Some(one) = plain_statement(sql) {
                let lexed = split_statements_lexed(sql);
                let expect: Vec<&str> = if one.is_empty() { vec![] } else { vec![one] };
                assert_eq!(lexed, expect, "{sql:?}");
            }
        }
        assert!(plain_statement("SELECT (1;").is_none());
        assert!(plain_statement("SELECT 'a;'").is_none());
        assert_eq!(plain_statement("SELECT 1 ;"), Some("SELECT 1"));
    }

    #[test]
    fn leading_words_fold_case_and_skip_comments() {
        assert_eq!(
            leading_words("/* x */ SET LOCAL \"Foo\".bar TO 1", 4),
            vec!["set", "local", "Foo"]
        );
        assert_eq!(
            leading_words("  rollback to savepoint s1", 5),
            vec!["rollback", "to", "savepoint", "s1"]
        );
        assert_eq!(
            leading_words("set myapp.user_id = 3", 5),
            vec!["set", "myapp.user_id"]
        );
    }
}
