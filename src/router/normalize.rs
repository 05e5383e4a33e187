//! Literal-free statement text: `... WHERE aid = 12345` becomes
//! `... WHERE aid = $1` with `12345` as the first value, so statements that
//! differ only in their constants share one keyed plan (as prepared
//! statements do). Anything the scanner is not sure of — escape strings,
//! dollar quotes, bit strings, existing placeholders — gives up, and the
//! statement is planned as written.

use super::Bound;

fn ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// The statement with its string and number constants replaced by `$1..$n`,
/// and those constants; `None` when it has none or cannot be read safely.
pub fn normalize(sql: &str) -> Option<(String, Vec<Bound>)> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut values = Vec::new();
    let mut i = 0;
    let mut copied = 0;
    let placeholder = |out: &mut String, values: &mut Vec<Bound>, v: String| {
        values.push(Bound::Text(v));
        out.push('$');
        out.push_str(&values.len().to_string());
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                // A prefix letter (E'', B'', X'', U&'') changes the meaning.
                if i > 0 && (ident_char(b[i - 1]) || b[i - 1] == b'&') {
                    return None;
                }
                let mut j = i + 1;
                let mut text = Vec::new();
                loop {
                    match b.get(j)? {
                        b'\'' if b.get(j + 1) == Some(&b'\'') => {
                            text.push(b'\'');
                            j += 2;
                        }
                        b'\'' => break,
                        other => {
                            text.push(*other);
                            j += 1;
                        }
                    }
                }
                out.push_str(&sql[copied..i]);
                placeholder(&mut out, &mut values, String::from_utf8(text).ok()?);
                i = j + 1;
                copied = i;
            }
            b'"' => {
                let mut j = i + 1;
                loop {
                    match b.get(j)? {
                        b'"' if b.get(j + 1) == Some(&b'"') => j += 2,
                        b'"' => break,
                        _ => j += 1,
                    }
                }
                i = j + 1;
            }
            b'$' if i == 0 || !ident_char(b[i - 1]) => return None,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'0'..=b'9' | b'.'
                if (i == 0 || !ident_char(b[i - 1]) && b[i - 1] != b'.')
                    && (c != b'.' || b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                    j += 1;
                }
                if j < b.len() && (b[j] == b'e' || b[j] == b'E') {
                    let mut k = j + 1;
                    if k < b.len() && (b[k] == b'+' || b[k] == b'-') {
                        k += 1;
                    }
                    if k < b.len() && b[k].is_ascii_digit() {
                        while k < b.len() && b[k].is_ascii_digit() {
                            k += 1;
                        }
                        j = k;
                    }
                }
                // `12abc` is not a number followed by a word: leave it alone.
                if j < b.len() && ident_char(b[j]) {
                    return None;
                }
                out.push_str(&sql[copied..i]);
                placeholder(&mut out, &mut values, sql[i..j].to_string());
                i = j;
                copied = i;
            }
            _ => i += 1,
        }
    }
    if values.is_empty() {
        return None;
    }
    out.push_str(&sql[copied..]);
    Some((out, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: &[Bound]) -> Vec<&str> {
        v.iter()
            .map(|b| match b {
                Bound::Text(t) => t.as_str(),
                _ => "?",
            })
            .collect()
    }

    #[test]
    fn constants_become_placeholders() {
        let (t, v) = normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 12345").unwrap();
        assert_eq!(t, "SELECT abalance FROM pgbench_accounts WHERE aid = $1");
        assert_eq!(texts(&v), ["12345"]);
        let (t, v) = normalize(
            "UPDATE \"t 1\" SET note = 'it''s -- not a comment' WHERE id = 7 AND x1 = 1.5e3 -- 'no'",
        )
        .unwrap();
        assert_eq!(
            t,
            "UPDATE \"t 1\" SET note = $1 WHERE id = $2 AND x1 = $3 -- 'no'"
        );
        assert_eq!(texts(&v), ["it's -- not a comment", "7", "1.5e3"]);
    }

    #[test]
    fn gives_up_on_what_it_cannot_read_safely() {
        for sql in [
            "SELECT E'\\n' FROM t WHERE id = 1",
            "SELECT $$x$$ FROM t WHERE id = 1",
            "SELECT * FROM t WHERE id = $1",
            "SELECT B'101', 1",
            "SELECT U&'d0061', 1",
            "SELECT 1 /* 2 */",
            "SELECT 'unterminated",
            "SELECT * FROM t",
            "SELECT 12abc",
        ] {
            assert_eq!(normalize(sql), None, "{sql}");
        }
    }
}
