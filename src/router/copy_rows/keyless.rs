//! Rows of a COPY whose column list leaves out the shard key: each waits
//! here until the session has the cluster's keys for a batch of them (one
//! round trip per batch, the values in row order, so rows are numbered as
//! one server numbers them), then gets its key as the last field — text
//! escaped, CSV quoted where needed, binary in the column type's encoding —
//! and goes to that key's shard.

use super::*;

/// A batch is asked for once this many rows wait...
pub const KEY_BATCH: usize = 1000;
/// ...or once their bytes reach this.
pub const KEY_BATCH_BYTES: usize = 1 << 20;

/// Rows waiting for their keys, in stream order.
#[derive(Debug, Default)]
pub(super) struct Keyless {
    /// The waiting pieces' bytes, one after another.
    buf: Vec<u8>,
    pieces: Vec<Waiting>,
    /// How many of the pieces are rows (the rest go to every shard).
    rows: usize,
    /// The key column's binary width: 2, 4, 8 (integers) or 16 (uuid).
    width: usize,
    /// Assembles one row with its key.
    scratch: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// `buf[start..end]`; the key goes in at `at` (before the line end).
    start: usize,
    at: usize,
    end: usize,
    line: u64,
    /// A row (takes a key), or a piece for every shard (the binary trailer).
    row: bool,
}

impl Keyless {
    pub(super) fn new(key_type: KeyType) -> Keyless {
        Keyless {
            width: match key_type {
                KeyType::Int2 => 2,
                KeyType::Int4 => 4,
                KeyType::Int8 | KeyType::Text => 8,
                KeyType::Uuid => 16,
            },
            ..Keyless::default()
        }
    }

    /// Queues a row (`body` then its line end, or a binary tuple with its
    /// field count already counting the key).
    pub(super) fn push(&mut self, body: &[u8], end: &[u8], line: u64, row: bool) {
        let start = self.buf.len();
        self.buf.extend_from_slice(body);
        let at = self.buf.len();
        self.buf.extend_from_slice(end);
        self.pieces.push(Waiting {
            start,
            at,
            end: self.buf.len(),
            line,
            row,
        });
        self.rows += usize::from(row);
    }
}

impl RowRouter {
    /// A router for a COPY whose `columns` leave out the shard key: rows
    /// wait for their keys ([`RowRouter::place_keys`]).
    pub fn keyless(
        opts: CopyOptions,
        rule: TableRule,
        map: &ShardMap,
        columns: Vec<String>,
        max_row: usize,
    ) -> Result<RowRouter, RouteError> {
        let mut with_key = columns.clone();
        with_key.push(rule.key.clone());
        let mut r = RowRouter::new(opts, rule, map, with_key, max_row)?;
        r.columns = columns;
        r.key = usize::MAX;
        r.keyless = Some(Keyless::new(r.rule.key_type));
        Ok(r)
    }

    /// The key column's type as the catalog names it (`format_type`): how
    /// a binary COPY writes the key. Other types are refused for binary.
    pub fn set_key_type(&mut self, name: &str) -> Result<(), RouteError> {
        let width = match name {
            "smallint" => 2,
            "integer" => 4,
            "bigint" => 8,
            "uuid" => 16,
            _ if self.opts.format != CopyFormat::Binary => return Ok(()),
            _ => {
                return Err(RouteError::Unsupported(format!(
                    "binary COPY into sharded table \"{}\" with keys chosen by the cluster takes smallint, integer, bigint and uuid keys, not {name}: use text or CSV, or give the key",
                    self.rule.name
                )))
            }
        };
        if let Some(k) = &mut self.keyless {
            k.width = width;
        }
        Ok(())
    }

    /// Rows waiting for keys.
    pub fn waiting(&self) -> usize {
        self.keyless.as_ref().map_or(0, |k| k.rows)
    }

    /// The line of the first row waiting for its key.
    pub fn waiting_from(&self) -> Option<u64> {
        self.keyless
            .as_ref()
            .and_then(|k| k.pieces.iter().find(|w| w.row))
            .map(|w| w.line)
    }

    /// Anything waiting (rows, or the binary trailer behind them).
    pub fn holds(&self) -> bool {
        self.keyless.as_ref().is_some_and(|k| !k.pieces.is_empty())
    }

    /// Enough rows wait to ask for their keys.
    pub fn batch_full(&self) -> bool {
        self.keyless
            .as_ref()
            .is_some_and(|k| k.rows >= KEY_BATCH || k.buf.len() >= KEY_BATCH_BYTES)
    }

    /// The end-of-data marker (or binary trailer) was read: the rest of
    /// the stream is ignored.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Gives the waiting rows `keys` (one each, in order; text as the
    /// cluster made them) and hands each to `sink` for its key's shard.
    pub fn place_keys(
        &mut self,
        keys: &[String],
        sink: &mut dyn FnMut(Dest, u64, &[u8]),
    ) -> Result<(), RowError> {
        let Some(mut k) = self.keyless.take() else {
            return Ok(());
        };
        // Errors name the row's line; the reader's count goes on after.
        let line = self.line;
        let r = self.place_with(&mut k, keys, sink);
        self.line = line;
        k.buf.clear();
        k.pieces.clear();
        k.rows = 0;
        self.keyless = Some(k);
        r
    }

    fn place_with(
        &mut self,
        k: &mut Keyless,
        keys: &[String],
        sink: &mut dyn FnMut(Dest, u64, &[u8]),
    ) -> Result<(), RowError> {
        if keys.len() != k.rows {
            return Err(self.line_error(
                SqlState::INTERNAL_ERROR,
                format!("{} keys for {} rows", keys.len(), k.rows),
                None,
            ));
        }
        let mut next = keys.iter();
        for w in k.pieces.iter().copied() {
            let piece = &k.buf[w.start..w.end];
            if !w.row {
                sink(Dest::All, w.line, piece);
                continue;
            }
            let Some(key) = next.next() else {
                break;
            };
            self.line = w.line;
            let shard = self
                .rule
                .shard_of_text(key, self.shards)
                .map_err(|e| self.key_error(e, key))?;
            k.scratch.clear();
            k.scratch.extend_from_slice(&k.buf[w.start..w.at]);
            match self.opts.format {
                CopyFormat::Text => {
                    k.scratch.push(self.opts.delimiter);
                    k.scratch
                        .extend_from_slice(&text_field(key.as_bytes(), &self.opts));
                }
                CopyFormat::Csv => {
                    k.scratch.push(self.opts.delimiter);
                    k.scratch
                        .extend_from_slice(&csv_field(key.as_bytes(), &self.opts));
                }
                CopyFormat::Binary => {
                    let field = binary_field(key, k.width).ok_or_else(|| {
                        self.line_error(
                            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
                            format!("key {key} does not fit the key column"),
                            None,
                        )
                    })?;
                    k.scratch
                        .extend_from_slice(&(field.len() as i32).to_be_bytes());
                    k.scratch.extend_from_slice(&field);
                }
            }
            k.scratch.extend_from_slice(&k.buf[w.at..w.end]);
            sink(Dest::Shard(shard), w.line, &k.scratch);
        }
        Ok(())
    }

    /// Queues a keyless text/CSV line: `raw` is `body` then its line end.
    pub(super) fn queue_line(&mut self, raw: &[u8], body_len: usize) {
        let line = self.line;
        if let Some(k) = &mut self.keyless {
            let (body, end) = raw.split_at(body_len.min(raw.len()));
            k.push(body, end, line, true);
        }
    }

    /// Queues a keyless binary tuple (field count raised by one for the
    /// key), or the trailer (`row` false).
    pub(super) fn queue_tuple(&mut self, tuple: &[u8], row: bool) {
        let line = self.line;
        if let Some(k) = &mut self.keyless {
            if !row || tuple.len() < 2 {
                k.push(tuple, &[], line, false);
                return;
            }
            let count = i16::from_be_bytes([tuple[0], tuple[1]]).saturating_add(1);
            let mut t = Vec::with_capacity(tuple.len());
            t.extend_from_slice(&count.to_be_bytes());
            t.extend_from_slice(&tuple[2..]);
            k.push(&t, &[], line, true);
        }
    }

    /// HEADER MATCH without the key: PostgreSQL's count check against the
    /// client's columns, then the header the shards check (the key's name
    /// appended, as their column list has it last).
    pub(super) fn keyless_header(&self, raw: &[u8], body: &[u8]) -> Result<Vec<u8>, RowError> {
        let count = match self.opts.format {
            CopyFormat::Csv => self.fields_csv(body).0,
            _ => self.fields_text(body).0,
        };
        if count != self.columns.len() {
            return Err(self.line_error(
                SqlState::BAD_COPY_FILE_FORMAT,
                format!(
                    "wrong number of fields in header line: got {count}, expected {}",
                    self.columns.len()
                ),
                Some(body),
            ));
        }
        let name = self.rule.key.as_bytes();
        let field = match self.opts.format {
            CopyFormat::Csv => csv_field(name, &self.opts),
            _ => text_field(name, &self.opts),
        };
        let mut out = Vec::with_capacity(raw.len() + field.len() + 1);
        out.extend_from_slice(body);
        out.push(self.opts.delimiter);
        out.extend_from_slice(&field);
        out.extend_from_slice(&raw[body.len().min(raw.len())..]);
        Ok(out)
    }
}

/// A value as a text-format field: backslash before the delimiter and
/// backslash, `\n`/`\r` for line ends, and never the null string itself
/// (its first byte is then written as a `\x` escape).
pub(super) fn text_field(v: &[u8], opts: &CopyOptions) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() + 2);
    for &b in v {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ if b == opts.delimiter => out.extend_from_slice(&[b'\\', b]),
            _ => out.push(b),
        }
    }
    if out == opts.null {
        if let Some(&first) = v.first() {
            let mut e = format!("\\x{first:02x}").into_bytes();
            e.extend_from_slice(&text_field(&v[1..], opts));
            return e;
        }
    }
    out
}

/// A value as a CSV field: as it is, or quoted (quote and escape bytes
/// escaped) where it holds a delimiter, quote, escape or line end, or is
/// the null string (a quoted value is never NULL without FORCE_NULL).
pub(super) fn csv_field(v: &[u8], opts: &CopyOptions) -> Vec<u8> {
    let special = |b: &u8| [opts.delimiter, opts.quote, opts.escape, b'\n', b'\r'].contains(b);
    if !v.iter().any(special) && v != opts.null.as_slice() {
        return v.to_vec();
    }
    let mut out = Vec::with_capacity(v.len() + 2);
    out.push(opts.quote);
    for &b in v {
        if b == opts.quote || b == opts.escape {
            out.push(opts.escape);
        }
        out.push(b);
    }
    out.push(opts.quote);
    out
}

/// A key in the binary COPY encoding of its column: a big-endian integer
/// of `width` bytes, or a uuid's 16 bytes.
fn binary_field(key: &str, width: usize) -> Option<Vec<u8>> {
    if width == 16 {
        return match KeyValue::parse_typed(KeyType::Uuid, key).ok()? {
            KeyValue::Uuid(b) => Some(b.to_vec()),
            _ => None,
        };
    }
    let n: i64 = key.parse().ok()?;
    Some(match width {
        2 => i16::try_from(n).ok()?.to_be_bytes().to_vec(),
        4 => i32::try_from(n).ok()?.to_be_bytes().to_vec(),
        _ => n.to_be_bytes().to_vec(),
    })
}
