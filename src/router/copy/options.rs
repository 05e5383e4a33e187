//! The options of a `COPY ... FROM STDIN`/`TO STDOUT`, read from the tokens
//! after `STDIN`/`STDOUT`: the `[WITH] (option value, ...)` list or the older
//! unparenthesized forms, as far as they decide how rows are framed (format,
//! delimiter, null string, header, quote and escape, the FORCE column lists,
//! encoding). Options that do not change the framing are left to the shards.

use sqlparser::tokenizer::Token;

use super::{ident, name_list, string, word, CopyFormat, CopyOptions, Header};

/// The options after `STDIN`/`STDOUT`: `[WITH] ( ... )` or the old forms.
/// `Err`: text the proxy cannot read (the message says why).
pub(super) fn options(toks: &[Token]) -> Result<CopyOptions, String> {
    let mut i = 0;
    if word(toks.first()).as_deref() == Some("with") {
        i = 1;
    }
    let mut o = CopyOptions::defaults();
    let mut quote = None;
    let mut escape = None;
    let mut delimiter = None;
    let mut null = None;
    let unreadable = || {
        "Pieskieo cannot read these COPY options; write them as WITH (option value, ...)"
            .to_string()
    };
    // PostgreSQL refuses anything but one byte when the COPY starts, on
    // every shard, before any data: what stands in for it here never frames a row.
    let one_byte = |s: &str, default: u8| -> Result<u8, String> {
        match s.as_bytes() {
            [b] if b.is_ascii() => Ok(*b),
            _ => Ok(default),
        }
    };
    if matches!(toks.get(i), Some(Token::LParen)) {
        i += 1;
        loop {
            let name = word(toks.get(i)).ok_or_else(unreadable)?;
            i += 1;
            // The argument, up to the next `,` or `)`.
            let mut arg = Vec::new();
            let mut depth = 0;
            while let Some(t) = toks.get(i) {
                match t {
                    Token::Comma | Token::RParen if depth == 0 => break,
                    Token::LParen => depth += 1,
                    Token::RParen => depth -= 1,
                    _ => {}
                }
                arg.push(t.clone());
                i += 1;
            }
            let text = || -> Result<String, String> {
                match arg.as_slice() {
                    [t] => string(Some(t))
                        .or_else(|| word(Some(t)))
                        .ok_or_else(unreadable),
                    _ => Err(unreadable()),
                }
            };
            let boolean = || -> Result<bool, String> {
                match arg.as_slice() {
                    [] => Ok(true),
                    [Token::Number(n, _)] => Ok(n != "0"),
                    [t] => match string(Some(t)).or_else(|| word(Some(t))).as_deref() {
                        Some("true" | "on") => Ok(true),
                        Some("false" | "off") => Ok(false),
                        _ => Err(unreadable()),
                    },
                    _ => Err(unreadable()),
                }
            };
            let columns = || -> Result<(Vec<String>, bool), String> {
                match arg.as_slice() {
                    [Token::Mul] => Ok((Vec::new(), true)),
                    [Token::LParen, ..] => name_list(&arg, 1)
                        .map(|(n, _)| (n, false))
                        .map_err(|_| unreadable()),
                    _ => Err(unreadable()),
                }
            };
            match name.as_str() {
                "format" => {
                    o.format = match text()?.to_ascii_lowercase().as_str() {
                        "text" => CopyFormat::Text,
                        "csv" => CopyFormat::Csv,
                        "binary" => CopyFormat::Binary,
                        _ => return Err(unreadable()),
                    }
                }
                "delimiter" => delimiter = Some(text()?),
                "null" => null = Some(text()?),
                "quote" => quote = Some(text()?),
                "escape" => escape = Some(text()?),
                "encoding" => o.encoding = Some(text()?),
                "header" => {
                    o.header = match arg.as_slice() {
                        [t] if word(Some(t)).as_deref() == Some("match") => Header::Match,
                        _ if boolean()? => Header::Skip,
                        _ => Header::No,
                    }
                }
                "force_not_null" => (o.force_not_null, o.force_not_null_all) = columns()?,
                "force_null" => (o.force_null, o.force_null_all) = columns()?,
                // FREEZE, FORCE_QUOTE, DEFAULT and the rest do not change how
                // rows are framed; the shards read and check them.
                _ => {}
            }
            match toks.get(i) {
                Some(Token::Comma) => i += 1,
                Some(Token::RParen) => break,
                _ => return Err(unreadable()),
            }
        }
    } else {
        // The old forms: BINARY, DELIMITER [AS] 'c', NULL [AS] 's', CSV,
        // HEADER, QUOTE [AS] 'c', ESCAPE [AS] 'c', FORCE NOT NULL cols,
        // FORCE QUOTE cols | *.
        while i < toks.len() {
            let w = word(toks.get(i)).ok_or_else(unreadable)?;
            i += 1;
            let value = |i: &mut usize| -> Result<String, String> {
                if word(toks.get(*i)).as_deref() == Some("as") {
                    *i += 1;
                }
                let s = string(toks.get(*i)).ok_or_else(unreadable)?;
                *i += 1;
                Ok(s)
            };
            match w.as_str() {
                "binary" => o.format = CopyFormat::Binary,
                "csv" => o.format = CopyFormat::Csv,
                "header" => o.header = Header::Skip,
                "delimiter" => delimiter = Some(value(&mut i)?),
                "null" => null = Some(value(&mut i)?),
                "quote" => quote = Some(value(&mut i)?),
                "escape" => escape = Some(value(&mut i)?),
                "freeze" => {}
                "force" => {
                    let what = word(toks.get(i));
                    let cols_at = match what.as_deref() {
                        Some("not") if word(toks.get(i + 1)).as_deref() == Some("null") => i + 2,
                        Some("quote") => i + 1,
                        _ => return Err(unreadable()),
                    };
                    i = cols_at;
                    if matches!(toks.get(i), Some(Token::Mul)) {
                        i += 1;
                        continue;
                    }
                    let mut cols = Vec::new();
                    loop {
                        cols.push(toks.get(i).and_then(ident).ok_or_else(unreadable)?);
                        i += 1;
                        if matches!(toks.get(i), Some(Token::Comma)) {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    if what.as_deref() == Some("not") {
                        o.force_not_null = cols;
                    }
                }
                _ => return Err(unreadable()),
            }
        }
    }
    let csv = o.format == CopyFormat::Csv;
    if csv {
        o.delimiter = b',';
        o.null = Vec::new();
    }
    if let Some(d) = delimiter {
        o.delimiter = one_byte(&d, o.delimiter)?;
    }
    if let Some(n) = null {
        o.null = n.into_bytes();
    }
    if let Some(q) = quote {
        o.quote = one_byte(&q, o.quote)?;
    }
    o.escape = match escape {
        Some(e) => one_byte(&e, o.quote)?,
        None => o.quote,
    };
    Ok(o)
}
