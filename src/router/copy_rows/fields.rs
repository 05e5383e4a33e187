//! The fields of one COPY line (text and CSV): how many there are, and the
//! shard key's value, read from the line in the server's encoding (or as
//! sent, passing over whole characters of a client-only encoding).

use super::RowRouter;

impl RowRouter {
    /// Text format: how many fields, and the key's value (`None`: NULL).
    pub(super) fn fields_text(&self, body: &[u8]) -> (usize, Option<Vec<u8>>) {
        let delim = self.opts.delimiter;
        let mut count = 0;
        let mut key = None;
        let mut start = 0;
        let mut i = 0;
        loop {
            let at_end = i >= body.len();
            if at_end || body[i] == delim {
                if count == self.key {
                    let raw = &body[start..i.min(body.len())];
                    key = (raw != self.opts.null.as_slice()).then(|| unescape_text(raw));
                }
                count += 1;
                if at_end {
                    break;
                }
                start = i + 1;
                i += 1;
                continue;
            }
            if body[i] == b'\\' {
                i += 1;
            }
            i += body.get(i).map_or(1, |&c| self.enc.char_len(c));
        }
        (count, key)
    }

    /// CSV: how many fields, and the key's value (`None`: NULL).
    pub(super) fn fields_csv(&self, body: &[u8]) -> (usize, Option<Vec<u8>>) {
        let (delim, quote, escape) = (self.opts.delimiter, self.opts.quote, self.opts.escape);
        let mut count = 0;
        let mut key = None;
        let mut i = 0;
        loop {
            let start = i;
            let mut value = Vec::new();
            let mut quoted = false;
            while i < body.len() && body[i] != delim {
                if body[i] == quote {
                    quoted = true;
                    i += 1;
                    while i < body.len() {
                        let c = body[i];
                        if c == escape && escape != quote {
                            if let Some(&n) = body.get(i + 1) {
                                if n == quote || n == escape {
                                    value.push(n);
                                    i += 2;
                                    continue;
                                }
                            }
                        }
                        if c == quote {
                            if escape == quote && body.get(i + 1) == Some(&quote) {
                                value.push(quote);
                                i += 2;
                                continue;
                            }
                            i += 1;
                            break;
                        }
                        let n = self.enc.char_len(c).min(body.len() - i);
                        value.extend_from_slice(&body[i..i + n]);
                        i += n;
                    }
                } else {
                    let n = self.enc.char_len(body[i]).min(body.len() - i);
                    value.extend_from_slice(&body[i..i + n]);
                    i += n;
                }
            }
            if count == self.key {
                let raw = &body[start..i];
                let null = self.opts.null.as_slice();
                let is_null = if quoted {
                    self.key_force_null && value == null
                } else {
                    !self.key_force_not_null && raw == null
                };
                key = (!is_null).then_some(value);
            }
            count += 1;
            if i >= body.len() {
                break;
            }
            i += 1;
        }
        (count, key)
    }
}

/// A text-format field's value: PostgreSQL's backslash escapes.
pub(super) fn unescape_text(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' || i + 1 >= raw.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let n = raw[i + 1];
        i += 2;
        match n {
            b'0'..=b'7' => {
                let mut v = (n - b'0') as u32;
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if raw.get(i).is_some_and(|d| d.is_ascii_hexdigit()) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d) if d.is_ascii_hexdigit() => {
                            v = v * 16 + (*d as char).to_digit(16).unwrap_or(0);
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            other => out.push(other),
        }
    }
    out
}
