//! Literal-free statement text: `... WHERE aid = 12345` becomes
//! `... WHERE aid = $1` with `12345` as the first value, so statements that
//! differ only in their constants share one keyed plan (as prepared
//! statements do). Anything the scanner is not sure of — escape strings,
//! dollar quotes, bit strings, existing placeholders — gives up, and the
//! statement is planned as written.

use super::Bound;

/// Bytes that continue a name, by byte: one load per byte in the loop over
/// a statement's words (the chain of comparisons cost about 11
/// instructions a byte there).
const IDENT: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
        i += 1;
    }
    t
};

fn ident_char(b: u8) -> bool {
    IDENT[b as usize]
}

/// Appends `n` in decimal without a formatter (one to three digits, as a
/// rule).
fn push_number(out: &mut String, n: usize) {
    if n >= 10 {
        push_number(out, n / 10);
    }
    out.push(char::from(b'0' + (n % 10) as u8));
}

/// A statement with its constants taken out.
#[derive(Debug, PartialEq)]
pub struct Normalized {
    /// The text with `$1..$n` where the constants stood.
    pub template: String,
    /// The constants, in order, as text.
    pub values: Vec<Bound>,
    /// Bit `i`: constant `i` was a quoted string (the first 64; past them
    /// `types` gives nothing).
    quoted: u64,
}

impl Normalized {
    /// The type PostgreSQL's parser gives each constant: `int4`, `int8` or
    /// `numeric` for a number (by its digits and value, as its lexer and
    /// `make_const` do), 0 (unknown: the context decides) for a quoted
    /// string; `None` past 64 constants.
    pub fn types(&self) -> Option<impl Iterator<Item = u32> + Clone + '_> {
        (self.values.len() <= 64).then(|| {
            self.values.iter().enumerate().map(|(i, v)| match v {
                Bound::Text(t) if self.quoted & (1 << i) == 0 => number_type(t),
                _ => 0,
            })
        })
    }
}

impl Normalized {
    /// Every constant is a number (no quoted string): bound with the types
    /// PostgreSQL's lexer gives them, no value can fail its conversion at
    /// Bind (`numeric_takes`), and each stands in the text spelled as it is
    /// bound.
    pub fn numbers_only(&self) -> bool {
        self.quoted == 0
            && self.values.len() <= 64
            && self.values.iter().all(|v| match v {
                Bound::Text(t) => numeric_takes(t),
                _ => false,
            })
    }

    /// Where in `text` (the statement this came from) a position in the
    /// template points, both as PostgreSQL counts them (characters, from
    /// 1), for [`Normalized::numbers_only`] texts: they differ only where a
    /// `$n` stands for a number, which `text` spells as bound. A position
    /// inside a `$n` points at the start of its number.
    pub fn text_position(&self, at: usize) -> usize {
        let t = self.template.as_bytes();
        let (mut i, mut in_template, mut in_text) = (0, 1, 1);
        // Inside a quoted name or a `--` comment, nothing is a `$n`.
        let (mut quoted, mut comment) = (false, false);
        while i < t.len() && in_template < at {
            let c = t[i];
            if quoted {
                quoted = c != b'"';
            } else if comment {
                comment = c != b'\n';
            } else if c == b'"' {
                quoted = true;
            } else if c == b'-' && t.get(i + 1) == Some(&b'-') {
                comment = true;
            } else if c == b'$' && (i == 0 || !ident_char(t[i - 1])) {
                let mut j = i + 1;
                let mut n = 0usize;
                while j < t.len() && t[j].is_ascii_digit() {
                    n = n
                        .saturating_mul(10)
                        .saturating_add(usize::from(t[j] - b'0'));
                    j += 1;
                }
                if let Some(Bound::Text(v)) = n.checked_sub(1).and_then(|k| self.values.get(k)) {
                    if at < in_template + (j - i) {
                        return in_text;
                    }
                    in_template += j - i;
                    in_text += v.chars().count();
                    i = j;
                    continue;
                }
            }
            // One character: its continuation bytes count for nothing.
            i += 1;
            while i < t.len() && t[i] & 0xc0 == 0x80 {
                i += 1;
            }
            in_template += 1;
            in_text += 1;
        }
        in_text + at.saturating_sub(in_template)
    }
}

/// Whether `numeric` takes the number whatever its digits: it has no
/// exponent, or a small one. A text the plan cache keeps is at most 4,096
/// bytes, fewer digits than `numeric` holds (16,383 after the point,
/// 131,072 before), but an exponent can push a number past them
/// (`1e999999`, `1e-16384`): the parser refuses such a literal and points
/// at it, a Bind refuses the value with no position.
fn numeric_takes(number: &str) -> bool {
    match number.find(['e', 'E']) {
        None => true,
        Some(at) => number[at + 1..]
            .trim_start_matches(['+', '-'])
            .parse::<u16>()
            .is_ok_and(|e| e <= 1000),
    }
}

const INT4: u32 = 23;
const INT8: u32 = 20;
const NUMERIC: u32 = 1700;

/// The type of an unsigned numeric literal, as PostgreSQL types it: digits
/// alone are `int4` when they fit, else `int8`, else `numeric`; a point or
/// an exponent makes `numeric`.
fn number_type(text: &str) -> u32 {
    if text.bytes().any(|c| !c.is_ascii_digit()) {
        NUMERIC
    } else if text.parse::<i32>().is_ok() {
        INT4
    } else if text.parse::<i64>().is_ok() {
        INT8
    } else {
        NUMERIC
    }
}

/// Whether a number is one PostgreSQL's grammar types differently once a
/// minus is folded into it (`doNegate`, then `make_const`): `2147483648` is
/// `int8` but `-2147483648` is `int4`; `9223372036854775808` is `numeric`
/// but `-9223372036854775808` is `int8`. Every other number keeps its type
/// under a minus, so `- $n` of that type means what the literal meant.
fn changes_type_negated(text: &str) -> bool {
    text.bytes().all(|c| c.is_ascii_digit())
        && matches!(
            text.parse::<u128>(),
            Ok(2_147_483_648 | 9_223_372_036_854_775_808)
        )
}

/// The statement with its string and number constants replaced by `$1..$n`,
/// and those constants; `None` when it has none or cannot be read safely.
pub fn normalize(sql: &str) -> Option<Normalized> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut values = Vec::new();
    let mut quoted = 0u64;
    let mut i = 0;
    let mut copied = 0;
    let placeholder = |out: &mut String, values: &mut Vec<Bound>, v: String| {
        values.push(Bound::Text(v));
        out.push('$');
        push_number(out, values.len());
    };
    while i < b.len() {
        let c = b[i];
        match c {
            // A word (keyword or name) in one tight run: nothing in it can
            // start a constant, a quote or a placeholder (a digit or `$`
            // after a letter belongs to the name), and most of a statement
            // is words and spaces.
            b'a'..=b'z' | b'A'..=b'Z' | b'_' | 0x80..=0xff => {
                i += 1;
                while i < b.len() && ident_char(b[i]) {
                    i += 1;
                }
            }
            b' ' | b'\n' | b'\t' | b'\r' | b',' | b'=' | b'(' | b')' | b';' => i += 1,
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
                if values.len() < 64 {
                    quoted |= 1 << values.len();
                }
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
                // Negated, these change type (see `changes_type_negated`):
                // as `- $n` they would not. They stay in the text.
                if changes_type_negated(&sql[i..j]) {
                    i = j;
                    continue;
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
    Some(Normalized {
        template: out,
        values,
        quoted,
    })
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
    fn positions_in_the_template_map_back_to_the_text() {
        let text = "UPDATE \"t$1\" SET b = b + 12345 -- $1 é\nWHERE id = 7 AND nope = 1";
        let n = normalize(text).unwrap();
        assert!(n.numbers_only());
        assert_eq!(
            n.template,
            "UPDATE \"t$1\" SET b = b + $1 -- $1 é\nWHERE id = $2 AND nope = $3"
        );
        let chars: Vec<char> = text.chars().collect();
        let tchars: Vec<char> = n.template.chars().collect();
        // Every character outside a placeholder points at itself in the text.
        for (at, c) in tchars.iter().enumerate() {
            let p = n.text_position(at + 1);
            if *c != '$' && !c.is_ascii_digit() || at < 20 {
                assert_eq!(chars[p - 1], *c, "template position {}", at + 1);
            }
        }
        // (Byte offsets past `é`, two bytes, are 1-based character positions.)
        let nope = n.template.find("nope").unwrap();
        assert_eq!(n.text_position(nope), text.find("nope").unwrap());
        // A position inside `$2` points at the start of `7`.
        let two = n.template.find("$2").unwrap();
        assert_eq!(chars[n.text_position(two + 1) - 1], '7');
        assert_eq!(n.text_position(1), 1);
        assert!(!normalize("SELECT 1 FROM t WHERE a = 'x'")
            .unwrap()
            .numbers_only());
        assert!(
            normalize("SELECT 1e400, 2.5E-3, 7 FROM t WHERE a = 1e+1000")
                .unwrap()
                .numbers_only()
        );
        for big in ["1e999999", "1e-16384", "1E+1001", "1e99999999999999999999"] {
            let n = normalize(&format!("SELECT b + {big} FROM t WHERE a = 1")).unwrap();
            assert!(!n.numbers_only(), "{big}");
        }
    }

    #[test]
    fn constants_become_placeholders() {
        let n = normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 12345").unwrap();
        assert_eq!(
            n.template,
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        );
        assert_eq!(texts(&n.values), ["12345"]);
        assert_eq!(n.types().unwrap().collect::<Vec<_>>(), [INT4]);
        let n = normalize(
            "UPDATE \"t 1\" SET note = 'it''s -- not a comment' WHERE id = 7 AND x1 = 1.5e3 -- 'no'",
        )
        .unwrap();
        let types: Vec<u32> = n.types().unwrap().collect();
        let (t, v) = (n.template, n.values);
        assert_eq!(
            t,
            "UPDATE \"t 1\" SET note = $1 WHERE id = $2 AND x1 = $3 -- 'no'"
        );
        assert_eq!(texts(&v), ["it's -- not a comment", "7", "1.5e3"]);
        assert_eq!(types, [0, INT4, NUMERIC]);
    }

    #[test]
    fn numbers_are_typed_as_postgresql_types_them() {
        // (2147483648 and 9223372036854775808 themselves stay in the text:
        // `numbers_whose_type_a_minus_changes_stay_in_the_text`.)
        let n = normalize("SELECT 2147483647, 2147483649, 9223372036854775809, 1.0, .5, 1e3, '7'")
            .unwrap();
        assert_eq!(
            n.types().unwrap().collect::<Vec<_>>(),
            [INT4, INT8, NUMERIC, NUMERIC, NUMERIC, NUMERIC, 0]
        );
    }

    #[test]
    fn numbers_whose_type_a_minus_changes_stay_in_the_text() {
        let n = normalize(
            "SELECT -2147483648, - 02147483648, -9223372036854775808, -2147483647, 1 FROM t WHERE id = 5",
        )
        .unwrap();
        assert_eq!(
            n.template,
            "SELECT -2147483648, - 02147483648, -9223372036854775808, -$1, $2 FROM t WHERE id = $3"
        );
        assert_eq!(n.types().unwrap().collect::<Vec<_>>(), [INT4, INT4, INT4]);
    }

    #[test]
    fn names_keep_their_digits_and_placeholders_count_past_nine() {
        let n = normalize("SELECT a1, é2, x$3 FROM t9 WHERE id=5 AND b = .5").unwrap();
        let (t, v) = (n.template, n.values);
        assert_eq!(t, "SELECT a1, é2, x$3 FROM t9 WHERE id=$1 AND b = $2");
        assert_eq!(texts(&v), ["5", ".5"]);
        let sql = format!(
            "SELECT {}",
            (1..=12)
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let n = normalize(&sql).unwrap();
        let (t, v) = (n.template, n.values);
        assert_eq!(t, "SELECT $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12");
        assert_eq!(v.len(), 12);
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
            "SELECT x$1 FROM t",
        ] {
            assert_eq!(normalize(sql), None, "{sql}");
        }
    }
}
