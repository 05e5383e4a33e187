//! The rows of a `COPY ... FROM STDIN` data stream, routed one by one: a
//! sans-I/O reader that takes the client's CopyData payloads in any pieces
//! (a row may straddle messages), finds each row's end and its shard key
//! with PostgreSQL's own framing rules (text, CSV, binary), and hands out
//! each row's bytes unchanged with the shard that owns it. It holds at most
//! one unfinished row.

use super::copy::{CopyFormat, CopyOptions, Header};
use super::{KeyError, KeyType, KeyValue, RouteError, ShardId, ShardMap, TableRule};
use crate::error::SqlState;

/// Where a piece of the stream goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// The header line, the binary header and trailer: every shard.
    All,
    Shard(ShardId),
}

/// A row the proxy refuses, as PostgreSQL reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub sqlstate: SqlState,
    pub message: String,
    /// PostgreSQL's CONTEXT line: `COPY t, line 3: "..."`.
    pub context: String,
    /// The client's line it is about.
    pub line: u64,
}

/// Longest row text quoted in an error context (PostgreSQL's limit).
const MAX_DISPLAY: usize = 100;

/// Reads one COPY stream for a sharded table.
pub struct RowRouter {
    opts: CopyOptions,
    rule: TableRule,
    shards: u32,
    /// The COPY's columns, in stream order.
    columns: Vec<String>,
    key: usize,
    /// The key is read as a value even when it is the null string (CSV).
    key_force_not_null: bool,
    /// A quoted null string in the key is NULL (CSV).
    key_force_null: bool,
    /// Largest row (bytes) accepted.
    max_row: usize,
    /// The unfinished row, when one straddles payloads.
    partial: Vec<u8>,
    /// How far `partial` has been scanned, and the scan state there.
    scan: Scan,
    /// Rows (lines) read so far, the header included: PostgreSQL's numbering.
    line: u64,
    header_pending: bool,
    /// Binary: the header is still to come (its length once known).
    binary_header: bool,
    /// The end-of-data marker (`\.`, or the binary trailer) was read.
    done: bool,
    /// Where rows with a NULL key go (see [`RowRouter::null_key`]).
    null_shard: ShardId,
    /// The first row with a NULL key: its error, should its shard take it.
    null_key: Option<RowError>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    at: usize,
    /// Text: the byte after a backslash is data. CSV: inside quotes, the
    /// last byte was an escape.
    escaped: bool,
    in_quote: bool,
}

impl RowRouter {
    /// `columns`: the COPY's column list, or the table's columns in the
    /// catalog's order. Fails when the key is not among them.
    pub fn new(
        opts: CopyOptions,
        rule: TableRule,
        map: &ShardMap,
        columns: Vec<String>,
        max_row: usize,
    ) -> Result<RowRouter, RouteError> {
        let key = columns.iter().position(|c| *c == rule.key).ok_or_else(|| {
            RouteError::Unsupported(format!(
                "COPY into sharded table \"{}\" must include the shard key column \"{}\"",
                rule.name, rule.key
            ))
        })?;
        let key_force_not_null = opts.force_not_null_all || opts.force_not_null.contains(&rule.key);
        let key_force_null = opts.force_null_all || opts.force_null.contains(&rule.key);
        Ok(RowRouter {
            header_pending: opts.header != Header::No && opts.format != CopyFormat::Binary,
            binary_header: opts.format == CopyFormat::Binary,
            opts,
            rule,
            shards: map.shards,
            columns,
            key,
            key_force_not_null,
            key_force_null,
            max_row,
            partial: Vec::new(),
            scan: Scan::default(),
            line: 0,
            done: false,
            null_shard: map.default_shard,
            null_key: None,
        })
    }

    /// The current line number (the last row read).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// A row with a NULL key goes to the default shard, so that a key
    /// column declared NOT NULL fails there with PostgreSQL's own error
    /// (and line). If that shard takes it, the COPY must still fail: this
    /// is the error to give (a sharded table's key is never NULL).
    pub fn null_key(&self) -> Option<&RowError> {
        self.null_key.as_ref()
    }

    /// Reads a CopyData payload; `sink` gets every complete row (and the
    /// header) with where it goes and its line number, as slices of `data`
    /// where possible.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        sink: &mut dyn FnMut(Dest, u64, &[u8]),
    ) -> Result<(), RowError> {
        while !data.is_empty() && !self.done {
            if self.opts.format == CopyFormat::Binary {
                data = self.feed_binary(data, sink)?;
                continue;
            }
            // Scan on from where the unfinished row's scan stopped.
            let mut scan = self.scan;
            scan.at = 0;
            match self.find_end(data, &mut scan) {
                Some(end) => {
                    if self.partial.is_empty() {
                        self.on_line(&data[..end], sink)?;
                    } else {
                        let mut row = std::mem::take(&mut self.partial);
                        row.extend_from_slice(&data[..end]);
                        let r = self.on_line(&row, sink);
                        row.clear();
                        self.partial = row;
                        r?;
                    }
                    self.scan = Scan::default();
                    data = &data[end..];
                }
                None => {
                    self.scan = scan;
                    self.grow(data)?;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The end of the stream (CopyDone): a last row without a line end.
    pub fn finish(&mut self, sink: &mut dyn FnMut(Dest, u64, &[u8])) -> Result<(), RowError> {
        if self.done || self.partial.is_empty() {
            return Ok(());
        }
        let row = std::mem::take(&mut self.partial);
        if self.opts.format == CopyFormat::Binary {
            self.line += 1;
            return Err(self.line_error(
                SqlState::BAD_COPY_FILE_FORMAT,
                "unexpected EOF in COPY data".into(),
                None,
            ));
        }
        if self.opts.format == CopyFormat::Csv && self.scan.in_quote {
            self.line += 1;
            return Err(self.line_error(
                SqlState::BAD_COPY_FILE_FORMAT,
                "unterminated CSV quoted field".into(),
                Some(&row),
            ));
        }
        self.on_line(&row, sink)
    }

    fn grow(&mut self, data: &[u8]) -> Result<(), RowError> {
        if self.partial.len() + data.len() > self.max_row {
            return Err(self.line_error(
                SqlState::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "a COPY row longer than {} bytes is refused by Pieskieo (limits.max_message_size)",
                    self.max_row
                ),
                None,
            ));
        }
        self.partial.extend_from_slice(data);
        Ok(())
    }

    /// The index just past the line end in `data`, continuing `scan`.
    fn find_end(&self, data: &[u8], scan: &mut Scan) -> Option<usize> {
        let csv = self.opts.format == CopyFormat::Csv;
        let (quote, escape) = (self.opts.quote, self.opts.escape);
        for (i, &c) in data.iter().enumerate() {
            if csv {
                // Inside quotes an escape (other than the quote itself) takes
                // the next byte as data; a doubled quote closes and reopens.
                if scan.in_quote {
                    if scan.escaped {
                        scan.escaped = false;
                    } else if c == escape && escape != quote {
                        scan.escaped = true;
                    } else if c == quote {
                        scan.in_quote = false;
                    }
                } else if c == quote {
                    scan.in_quote = true;
                } else if c == b'\n' {
                    return Some(i + 1);
                }
            } else if scan.escaped {
                scan.escaped = false;
            } else if c == b'\\' {
                scan.escaped = true;
            } else if c == b'\n' {
                return Some(i + 1);
            }
        }
        None
    }

    /// One complete line (with its line end, if any).
    fn on_line(
        &mut self,
        raw: &[u8],
        sink: &mut dyn FnMut(Dest, u64, &[u8]),
    ) -> Result<(), RowError> {
        let body = raw.strip_suffix(b"\n").unwrap_or(raw);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body == b"\\." {
            self.done = true;
            return Ok(());
        }
        self.line += 1;
        if std::mem::take(&mut self.header_pending) {
            sink(Dest::All, self.line, raw);
            return Ok(());
        }
        let (count, key) = match self.opts.format {
            CopyFormat::Csv => self.fields_csv(body),
            _ => self.fields_text(body),
        };
        if count < self.columns.len() {
            // PostgreSQL converts the fields in order: a bad key before the
            // first missing column is the error it reports.
            if let Some(k) = &key {
                self.shard_of_bytes(k, Some(body))?;
            }
            let missing = &self.columns[count];
            return Err(self.line_error(
                SqlState::BAD_COPY_FILE_FORMAT,
                format!("missing data for column \"{missing}\""),
                Some(body),
            ));
        }
        if count > self.columns.len() {
            return Err(self.line_error(
                SqlState::BAD_COPY_FILE_FORMAT,
                "extra data after last expected column".into(),
                Some(body),
            ));
        }
        let shard = match key {
            Some(k) => self.shard_of_bytes(&k, Some(body))?,
            None => {
                if self.null_key.is_none() {
                    self.null_key = Some(self.null_key_error(Some(body)));
                }
                self.null_shard
            }
        };
        sink(Dest::Shard(shard), self.line, raw);
        Ok(())
    }

    fn shard_of_bytes(&self, k: &[u8], body: Option<&[u8]>) -> Result<ShardId, RowError> {
        let text = std::str::from_utf8(k).map_err(|_| {
            self.line_error(
                SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                "invalid byte sequence for encoding \"UTF8\"".into(),
                body,
            )
        })?;
        self.rule
            .shard_of_text(text, self.shards)
            .map_err(|e| self.key_error(e, text))
    }

    fn null_key_error(&self, body: Option<&[u8]>) -> RowError {
        let e = RouteError::NullKey {
            table: self.rule.name.clone(),
            column: self.rule.key.clone(),
        };
        self.line_error(e.sqlstate(), e.to_string(), body)
    }

    fn key_error(&self, e: RouteError, text: &str) -> RowError {
        let context = format!(
            "COPY {}, line {}, column {}: \"{}\"",
            self.rule.name,
            self.line,
            self.rule.key,
            display(text.as_bytes())
        );
        RowError {
            sqlstate: e.sqlstate(),
            message: e.to_string(),
            context,
            line: self.line,
        }
    }

    fn line_error(&self, sqlstate: SqlState, message: String, body: Option<&[u8]>) -> RowError {
        let context = match body {
            Some(b) => format!(
                "COPY {}, line {}: \"{}\"",
                self.rule.name,
                self.line,
                display(b)
            ),
            None => format!("COPY {}, line {}", self.rule.name, self.line),
        };
        RowError {
            sqlstate,
            message,
            context,
            line: self.line,
        }
    }

    /// Text format: how many fields, and the key's value (`None`: NULL).
    fn fields_text(&self, body: &[u8]) -> (usize, Option<Vec<u8>>) {
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
            i += 1;
        }
        (count, key)
    }

    /// CSV: how many fields, and the key's value (`None`: NULL).
    fn fields_csv(&self, body: &[u8]) -> (usize, Option<Vec<u8>>) {
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
                        value.push(c);
                        i += 1;
                    }
                } else {
                    value.push(body[i]);
                    i += 1;
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

impl RowError {
    fn at_line(mut self, line: u64) -> RowError {
        self.line = line;
        if let Some(at) = self.context.find(", line ") {
            let table = self.context[..at].to_string();
            self.context = format!("{table}, line {line}");
        }
        self
    }
}

/// A row's text as PostgreSQL quotes it in an error context.
fn display(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() <= MAX_DISPLAY {
        return s.into_owned();
    }
    let mut end = MAX_DISPLAY;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A text-format field's value: PostgreSQL's backslash escapes.
fn unescape_text(raw: &[u8]) -> Vec<u8> {
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

impl KeyError {
    fn into_route(self) -> RouteError {
        RouteError::BadKey(self)
    }
}

impl TableRule {
    /// The shard of a key given as text (a COPY field), with the errors
    /// an INSERT of that value would get.
    pub fn shard_of_text(&self, text: &str, shards: u32) -> Result<ShardId, RouteError> {
        let key = KeyValue::parse_typed(self.key_type, text).map_err(KeyError::into_route)?;
        self.place(&key, shards)
    }
}

mod binary;

#[cfg(test)]
mod tests;
