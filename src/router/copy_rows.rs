//! The rows of a `COPY ... FROM STDIN` data stream, routed one by one: a
//! sans-I/O reader that takes the client's CopyData payloads in any pieces
//! (a row may straddle messages), finds each row's end and its shard key
//! with PostgreSQL's own framing rules (text, CSV, binary), and hands out
//! each row's bytes unchanged with the shard that owns it. It holds at most
//! one unfinished row.

use std::borrow::Cow;

use super::copy::{CopyFormat, CopyOptions, Header};
use super::{KeyError, KeyType, KeyValue, RouteError, ShardId, ShardMap, TableRule};
use crate::error::SqlState;
pub use encoding::DataEncoding;
use encoding::Unconvertible;
use keyless::Keyless;
use lines::Eol;

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
    pub hint: Option<&'static str>,
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
    /// The data's encoding (the `ENCODING` option, else `client_encoding`).
    enc: DataEncoding,
    /// The line end, taken from the first line as PostgreSQL does.
    eol: Eol,
    /// The column list leaves out the key: rows wait for the cluster's
    /// keys (see `keyless.rs`).
    keyless: Option<Keyless>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    at: usize,
    /// Text: the byte after a backslash is data. CSV: inside quotes, the
    /// last byte was an escape.
    escaped: bool,
    in_quote: bool,
    /// A line-ending `\r` was the last byte: the next one says whether a
    /// `\n` follows.
    cr: bool,
    /// Bytes of a multibyte character still to pass over (client-only
    /// encodings, whose later bytes may look like ASCII).
    skip: usize,
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
        let opts_encoding = opts
            .encoding
            .as_deref()
            .map_or(DataEncoding::Utf8, DataEncoding::named);
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
            enc: opts_encoding,
            eol: Eol::Unknown,
            keyless: None,
        })
    }

    /// The session's `client_encoding`: the data's encoding unless the
    /// COPY names one.
    pub fn set_client_encoding(&mut self, name: &str) {
        if self.opts.encoding.is_none() {
            self.enc = DataEncoding::named(name);
        }
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
    /// where possible. (A keyless router stops when a batch is full: use
    /// [`RowRouter::feed_some`].)
    pub fn feed(
        &mut self,
        data: &[u8],
        sink: &mut dyn FnMut(Dest, u64, &[u8]),
    ) -> Result<(), RowError> {
        self.feed_some(data, sink).map(|_| ())
    }

    /// [`RowRouter::feed`] up to where a keyless router's batch is full:
    /// how much of `data` was read (all of it once the data has ended).
    pub fn feed_some(
        &mut self,
        mut data: &[u8],
        sink: &mut dyn FnMut(Dest, u64, &[u8]),
    ) -> Result<usize, RowError> {
        let total = data.len();
        while !data.is_empty() && !self.done && !self.batch_full() {
            if self.opts.format == CopyFormat::Binary {
                data = self.feed_binary(data, sink)?;
                continue;
            }
            // Scan on from where the unfinished row's scan stopped.
            let mut scan = self.scan;
            scan.at = 0;
            match self.find_end(data, &mut scan)? {
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
                    return Ok(total);
                }
            }
        }
        Ok(if self.done { total } else { total - data.len() })
    }

    /// The end of the stream (CopyDone): a last row without a line end.
    pub fn finish(&mut self, sink: &mut dyn FnMut(Dest, u64, &[u8])) -> Result<(), RowError> {
        if self.done || self.partial.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.scan.cr) {
            // A `\r` ended the data: the line end PostgreSQL finds there.
            if self.eol == Eol::CrNl {
                return Err(self.eol_error(true));
            }
            self.eol = Eol::Cr;
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
        // `\.` with no line end after it: PostgreSQL 15's text format calls
        // the marker corrupt; CSV reads it as data.
        if row.as_slice() == b"\\." {
            if self.opts.format == CopyFormat::Text {
                self.line += 1;
                return Err(self.line_error(
                    SqlState::BAD_COPY_FILE_FORMAT,
                    "end-of-copy marker corrupt".into(),
                    None,
                ));
            }
            return self.on_data_line(&row, &row, sink);
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

    /// One complete line (with its line end, if any).
    fn on_line(
        &mut self,
        raw: &[u8],
        sink: &mut dyn FnMut(Dest, u64, &[u8]),
    ) -> Result<(), RowError> {
        let end: &[u8] = match self.eol {
            Eol::Nl => b"\n",
            Eol::Cr => b"\r",
            Eol::CrNl => b"\r\n",
            Eol::Unknown => b"",
        };
        let body = raw.strip_suffix(end).unwrap_or(raw);
        if body == b"\\." {
            self.done = true;
            return Ok(());
        }
        self.on_data_line(raw, body, sink)
    }

    /// A line that is not the end marker: the header, or a row.
    fn on_data_line(
        &mut self,
        raw: &[u8],
        body: &[u8],
        sink: &mut dyn FnMut(Dest, u64, &[u8]),
    ) -> Result<(), RowError> {
        self.line += 1;
        if std::mem::take(&mut self.header_pending) {
            if self.keyless.is_some() && self.opts.header == Header::Match {
                let header = self.keyless_header(raw, body)?;
                sink(Dest::All, self.line, &header);
            } else {
                sink(Dest::All, self.line, raw);
            }
            return Ok(());
        }
        let body_len = body.len();
        // PostgreSQL splits the line once it is in the server's encoding.
        let (body, converted): (Cow<[u8]>, bool) = match self.enc.to_utf8(body) {
            Ok(text) => (text, true),
            Err(Unconvertible::NotConverted) => (Cow::Borrowed(body), false),
            Err(Unconvertible::NoCharacter) => {
                // PostgreSQL refuses the line in its own words: a shard will
                // (a keyless row in its turn, so earlier rows fail first).
                if self.keyless.is_some() {
                    self.queue_line(raw, body_len);
                } else {
                    sink(Dest::Shard(self.null_shard), self.line, raw);
                }
                return Ok(());
            }
        };
        let body = body.as_ref();
        if converted && std::str::from_utf8(body).is_err() {
            // Not UTF-8: PostgreSQL refuses the line in its words
            // (`invalid byte sequence ...: 0xff`), and so will a shard.
            if self.keyless.is_some() {
                self.queue_line(raw, body_len);
            } else {
                sink(Dest::Shard(self.null_shard), self.line, raw);
            }
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
        if self.keyless.is_some() {
            self.queue_line(raw, body_len);
            return Ok(());
        }
        let shard = match key {
            Some(k) if !converted && !k.is_ascii() => self.unconverted_key(body)?,
            Some(k) if std::str::from_utf8(&k).is_err() => {
                // Escapes made bytes that are no UTF-8 (`\\351`): the
                // column's input function refuses them, on any shard.
                let e = self.line_error(
                    SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                    "invalid byte sequence for encoding \"UTF8\"".into(),
                    Some(body),
                );
                self.null_key.get_or_insert(e);
                self.null_shard
            }
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

    /// A key the proxy cannot read in UTF-8 (non-ASCII, in an encoding it
    /// does not convert). A text key is refused; no other key type takes
    /// non-ASCII text, so the row goes to the default shard to fail there
    /// in PostgreSQL's words (and the COPY fails anyway if it does not).
    fn unconverted_key(&mut self, body: &[u8]) -> Result<ShardId, RowError> {
        let e = RouteError::Unsupported(format!(
            "COPY into sharded table \"{}\": a key of non-ASCII text in an encoding other than UTF8, LATIN1 or WIN1252 is not supported by Pieskieo: convert the data to UTF8",
            self.rule.name
        ));
        let e = self.line_error(e.sqlstate(), e.to_string(), Some(body));
        if self.rule.key_type == KeyType::Text {
            return Err(e);
        }
        self.null_key.get_or_insert(e);
        Ok(self.null_shard)
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
            hint: None,
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
            hint: None,
            context,
            line: self.line,
        }
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
mod encoding;
mod fields;
mod keyless;
mod lines;

#[cfg(test)]
mod tests;
