//! Carrying out a [`MergePlan`] on shards that have been sent its statement.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use bytes::{BufMut, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::decimal::{Decimal, Numeric};
use super::value::{self, compare, decode, format_float, group_key, oid, Kind, Val};
use super::{AggFunc, CmpOp, Cond, Lit, MergePlan, Output, Shape, SortKey};
use crate::backend::{BackendError, ServerConn};
use crate::error::SqlState;
use crate::executor::{refuse_copy_in, Answer, ExecError};
use crate::protocol::{self, message, Frame, Severity};

/// One column of a `RowDescription`.
#[derive(Debug, Clone)]
struct Field {
    name: Vec<u8>,
    table: i32,
    attnum: i16,
    type_oid: u32,
    typlen: i16,
    typmod: i32,
    format: i16,
}

fn parse_description(body: &[u8]) -> Option<Vec<Field>> {
    let n = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let end = at + body.get(at..)?.iter().position(|&b| b == 0)?;
        let name = body[at..end].to_vec();
        let f = body.get(end + 1..end + 19)?;
        out.push(Field {
            name,
            table: i32::from_be_bytes(f[0..4].try_into().ok()?),
            attnum: i16::from_be_bytes(f[4..6].try_into().ok()?),
            type_oid: u32::from_be_bytes(f[6..10].try_into().ok()?),
            typlen: i16::from_be_bytes(f[10..12].try_into().ok()?),
            typmod: i32::from_be_bytes(f[12..16].try_into().ok()?),
            format: i16::from_be_bytes(f[16..18].try_into().ok()?),
        });
        at = end + 19;
    }
    Some(out)
}

fn description(fields: &[Field]) -> Bytes {
    message(b'T', |b| {
        b.put_i16(fields.len() as i16);
        for f in fields {
            b.put_slice(&f.name);
            b.put_u8(0);
            b.put_i32(f.table);
            b.put_i16(f.attnum);
            b.put_u32(f.type_oid);
            b.put_i16(f.typlen);
            b.put_i32(f.typmod);
            b.put_i16(f.format);
        }
    })
}

type Row = Vec<Option<Bytes>>;

/// Writes the client's columns in the formats it asked for.
struct Writer {
    /// Per column: the type to encode in binary, or `None` for text.
    binary: Vec<Option<u32>>,
}

impl Writer {
    /// The client's RowDescription and its writer; refuses binary output of
    /// types the proxy cannot encode.
    fn new(fields: &[Field], formats: &[i16]) -> Result<(Bytes, Writer), Bytes> {
        let mut out = fields.to_vec();
        let mut binary = Vec::with_capacity(fields.len());
        for (i, f) in out.iter_mut().enumerate() {
            let fmt = match formats {
                [] => 0,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(0),
            };
            f.format = fmt;
            if fmt == 1 {
                if !super::binary::encodable(f.type_oid) {
                    return Err(merge_error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        &format!(
                            "binary results of type OID {} from a cross-shard merge are not supported; ask for text",
                            f.type_oid
                        ),
                    ));
                }
                binary.push(Some(f.type_oid));
            } else {
                binary.push(None);
            }
        }
        Ok((description(&out), Writer { binary }))
    }

    fn text(&self) -> bool {
        self.binary.iter().all(Option::is_none)
    }

    fn row(&self, row: &[Option<Bytes>]) -> Result<Bytes, Bytes> {
        if self.text() {
            return Ok(data_row(row));
        }
        let mut cols = Vec::with_capacity(row.len());
        for (v, b) in row.iter().zip(&self.binary) {
            cols.push(match (v, b) {
                (Some(v), Some(t)) => {
                    Some(Bytes::from(super::binary::encode(*t, v).map_err(|e| {
                        merge_error(SqlState::INVALID_TEXT_REPRESENTATION, &e)
                    })?))
                }
                (v, _) => v.clone(),
            });
        }
        Ok(data_row(&cols))
    }
}

/// The RowDescription a client gets for a merged portal, from a shard's
/// description of the statement the shards run.
pub fn describe(
    plan: &MergePlan,
    shard_desc: &[u8],
    opts: &RunOptions<'_>,
) -> Result<Bytes, Bytes> {
    let fields = parse_description(shard_desc).ok_or_else(|| {
        merge_error(
            SqlState::PROTOCOL_VIOLATION,
            "malformed RowDescription from a shard",
        )
    })?;
    let client = match &plan.shape {
        Shape::Rows { hidden } => {
            let (visible, _) = rows_layout(plan, *hidden, &fields, opts.bytewise)?;
            fields[..visible].to_vec()
        }
        Shape::Groups { visible, .. } => {
            let mut f = groups_setup(plan, &fields, opts.bytewise)?.0;
            f.truncate(*visible);
            f
        }
    };
    Writer::new(&client, opts.formats).map(|(d, _)| d)
}

/// The columns of a `DataRow`, sharing the frame's buffer.
fn parse_row(f: &Frame) -> Option<Row> {
    let body = f.body();
    let n = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = at + len as usize;
            body.get(at..end)?;
            out.push(Some(f.bytes.slice(5 + at..5 + end)));
            at = end;
        }
    }
    Some(out)
}

fn data_row(cols: &[Option<Bytes>]) -> Bytes {
    message(b'D', |b| {
        b.put_i16(cols.len() as i16);
        for c in cols {
            match c {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
    })
}

/// An error the merge itself raises, as the client will see it.
fn merge_error(code: SqlState, msg: &str) -> Bytes {
    protocol::error_response(Severity::Error, code, msg, None)
}

/// One shard's answer being read.
struct Stream {
    done: bool,
    desc: Option<Vec<Field>>,
    /// An extended-protocol Execute: the answer ends at its CommandComplete
    /// (or error), not at ReadyForQuery.
    executed: bool,
}

/// What went wrong first, across shards: the client sees one error.
#[derive(Default)]
struct Outcome {
    error: Option<Bytes>,
    notices: HashSet<Bytes>,
}

impl Outcome {
    fn fail(&mut self, e: Bytes) {
        self.error.get_or_insert(e);
    }

    fn backend(&mut self, e: &BackendError) {
        self.fail(protocol::error_response(
            Severity::Error,
            e.sqlstate(),
            &e.to_string(),
            None,
        ));
    }
}

async fn send<W: AsyncWrite + Unpin>(out: &mut W, b: &[u8]) -> Result<(), ExecError> {
    out.write_all(b).await.map_err(ExecError::Client)
}

/// Reads the shard's next `DataRow`; `None` once its answer is over.
async fn next_row<W: AsyncWrite + Unpin>(
    conn: &mut ServerConn,
    s: &mut Stream,
    o: &mut Outcome,
    out: &mut W,
) -> Result<Option<Frame>, ExecError> {
    while !s.done {
        let f = match conn.read().await {
            Ok(f) => f,
            Err(e) => {
                o.backend(&e);
                s.done = true;
                break;
            }
        };
        match f.tag {
            b'D' if o.error.is_none() => return Ok(Some(f)),
            b'T' => {
                s.desc = parse_description(f.body());
                if s.desc.is_none() {
                    o.fail(merge_error(
                        SqlState::PROTOCOL_VIOLATION,
                        "malformed RowDescription from a shard",
                    ));
                }
                // The description is what the caller waits for first.
                return Ok(None);
            }
            b'E' => {
                o.fail(f.bytes);
                s.done |= s.executed;
            }
            b'C' | b'I' | b's' if s.executed => s.done = true,
            b'N' if o.notices.insert(f.bytes.clone()) => send(out, &f.bytes).await?,
            b'G' => {
                if let Err(e) = refuse_copy_in(conn).await {
                    o.backend(&e);
                    s.done = true;
                }
            }
            b'Z' => s.done = true,
            _ => {}
        }
    }
    Ok(None)
}

/// Reads what is left of every shard's answer.
async fn drain_all<W: AsyncWrite + Unpin>(
    conns: &mut [&mut ServerConn],
    streams: &mut [Stream],
    o: &mut Outcome,
    out: &mut W,
) -> Result<(), ExecError> {
    for (c, s) in conns.iter_mut().zip(streams.iter_mut()) {
        while !s.done {
            next_row(c, s, o, out).await?;
        }
    }
    Ok(())
}

/// A column's kind, refusing what the merge cannot order.
fn check_ordered(f: &Field, bytewise: bool, why: &str) -> Result<Kind, Bytes> {
    let k = Kind::of(f.type_oid);
    if !k.ordered() {
        return Err(merge_error(
            SqlState::FEATURE_NOT_SUPPORTED,
            &format!(
                "{why} on a column of type OID {} across shards is not supported; fix the shard key in WHERE",
                f.type_oid
            ),
        ));
    }
    if k.is_text() && !bytewise {
        return Err(merge_error(
            SqlState::FEATURE_NOT_SUPPORTED,
            &format!("{why} on text across shards needs the shards' databases to use the C collation (or write COLLATE \"C\")"),
        ));
    }
    Ok(k)
}

fn check_groupable(f: &Field) -> Result<Kind, Bytes> {
    let k = Kind::of(f.type_oid);
    if !k.groupable() {
        return Err(merge_error(
            SqlState::FEATURE_NOT_SUPPORTED,
            &format!(
                "grouping values of type OID {} across shards is not supported",
                f.type_oid
            ),
        ));
    }
    Ok(k)
}

fn bad_value(e: value::BadValue) -> Bytes {
    merge_error(
        SqlState::FEATURE_NOT_SUPPORTED,
        &format!("cannot merge shard results: {}", e.0),
    )
}

/// Sort-key values of one row.
type Keys = Vec<Option<Val>>;

fn sort_values(row: &Row, cols: &[(usize, Kind)]) -> Result<Keys, Bytes> {
    cols.iter()
        .map(|&(c, k)| match row.get(c).cloned().flatten() {
            None => Ok(None),
            Some(raw) => decode(k, &raw).map(Some).map_err(bad_value),
        })
        .collect()
}

fn cmp_keys(a: &Keys, b: &Keys, order: &[SortKey]) -> Ordering {
    for (i, k) in order.iter().enumerate() {
        let ord = match (&a[i], &b[i]) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => {
                if k.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (Some(_), None) => {
                if k.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (Some(x), Some(y)) => {
                let o = compare(x, y);
                if k.desc {
                    o.reverse()
                } else {
                    o
                }
            }
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn row_key(row: &[Option<Bytes>], kinds: &[Kind]) -> Result<Vec<u8>, Bytes> {
    let mut key = Vec::new();
    for (v, k) in row.iter().zip(kinds) {
        match v {
            None => key.push(0),
            Some(raw) => {
                key.push(1);
                let start = key.len();
                group_key(*k, raw, &mut key).map_err(bad_value)?;
                let len = (key.len() - start) as u32;
                key.extend_from_slice(&len.to_be_bytes());
            }
        }
    }
    Ok(key)
}

/// Applies DISTINCT, OFFSET and LIMIT to the rows going out.
struct Sink {
    distinct: Option<(Vec<Kind>, HashSet<Vec<u8>>)>,
    skip: u64,
    left: Option<u64>,
    sent: u64,
}

impl Sink {
    fn full(&self) -> bool {
        self.left == Some(0)
    }

    /// Whether `row` goes out.
    fn admit(&mut self, row: &[Option<Bytes>]) -> Result<bool, Bytes> {
        if self.full() {
            return Ok(false);
        }
        if let Some((kinds, seen)) = &mut self.distinct {
            if !seen.insert(row_key(row, kinds)?) {
                return Ok(false);
            }
        }
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(false);
        }
        if let Some(l) = &mut self.left {
            *l -= 1;
        }
        self.sent += 1;
        Ok(true)
    }
}

/// How a merge answers its client.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions<'a> {
    /// The shards compare text in byte order, so the proxy may too.
    pub bytewise: bool,
    /// The client's result format codes (as in Bind: none = all text, one =
    /// for every column, else one per column).
    pub formats: &'a [i16],
    /// The shards were sent Describe + Execute of a portal rather than a
    /// simple query; the client gets no RowDescription (it asks with Describe).
    pub executed: bool,
}

impl RunOptions<'_> {
    /// A simple query's merge: text results, RowDescription sent.
    pub fn simple(bytewise: bool) -> RunOptions<'static> {
        RunOptions {
            bytewise,
            formats: &[],
            executed: false,
        }
    }
}

/// Reads every shard's answer to `plan.sql` (already sent and flushed) and
/// answers the client with the merged result. Returns whether the statement
/// failed, and the closing message (error or `SELECT n`), which the caller
/// sends once the statement is really over.
pub async fn run<W: AsyncWrite + Unpin>(
    conns: &mut [&mut ServerConn],
    plan: &MergePlan,
    opts: &RunOptions<'_>,
    out: &mut W,
) -> Result<(Answer, Option<Bytes>), ExecError> {
    let mut o = Outcome::default();
    let mut streams: Vec<Stream> = conns
        .iter()
        .map(|_| Stream {
            done: false,
            desc: None,
            executed: opts.executed,
        })
        .collect();
    // Every shard's RowDescription first (or its error).
    for (c, s) in conns.iter_mut().zip(streams.iter_mut()) {
        while s.desc.is_none() && !s.done {
            if let Some(_row) = next_row(c, s, &mut o, out).await? {
                o.fail(merge_error(
                    SqlState::PROTOCOL_VIOLATION,
                    "a shard sent rows before describing them",
                ));
            }
        }
    }
    let fields = streams.iter().find_map(|s| s.desc.clone());
    let fields = match (o.error.is_some(), fields) {
        (false, Some(f))
            if streams
                .iter()
                .all(|s| s.desc.as_ref().map(Vec::len) == Some(f.len())) =>
        {
            f
        }
        (false, _) => {
            o.fail(merge_error(
                SqlState::PROTOCOL_VIOLATION,
                "shards described different results",
            ));
            Vec::new()
        }
        (true, _) => Vec::new(),
    };
    let mut sent = 0;
    if o.error.is_none() {
        let r = match &plan.shape {
            Shape::Rows { hidden } => {
                rows(
                    conns,
                    &mut streams,
                    plan,
                    *hidden,
                    &fields,
                    opts,
                    &mut o,
                    out,
                )
                .await?
            }
            Shape::Groups { .. } => {
                groups(conns, &mut streams, plan, &fields, opts, &mut o, out).await?
            }
        };
        match r {
            Ok(n) => sent = n,
            Err(e) => o.fail(e),
        }
    }
    drain_all(conns, &mut streams, &mut o, out).await?;
    Ok(match o.error {
        Some(e) => (Answer::Failed, Some(e)),
        None => (
            Answer::Succeeded,
            Some(protocol::command_complete(&format!("SELECT {sent}"))),
        ),
    })
}

/// The visible columns and decoded sort keys of a row-shaped merge.
fn rows_layout(
    plan: &MergePlan,
    hidden: usize,
    fields: &[Field],
    bytewise: bool,
) -> Result<(usize, Vec<(usize, Kind)>), Bytes> {
    let visible = fields.len().saturating_sub(hidden);
    let mut sort_cols = Vec::new();
    for k in &plan.order {
        let c = visible + k.col;
        let f = fields.get(c).ok_or_else(|| {
            merge_error(
                SqlState::PROTOCOL_VIOLATION,
                "sort key missing from shard result",
            )
        })?;
        sort_cols.push((c, check_ordered(f, bytewise, "ORDER BY")?));
    }
    if plan.distinct {
        for f in &fields[..visible] {
            check_groupable(f)?;
        }
    }
    Ok((visible, sort_cols))
}

#[allow(clippy::too_many_arguments)]
async fn rows<W: AsyncWrite + Unpin>(
    conns: &mut [&mut ServerConn],
    streams: &mut [Stream],
    plan: &MergePlan,
    hidden: usize,
    fields: &[Field],
    opts: &RunOptions<'_>,
    o: &mut Outcome,
    out: &mut W,
) -> Result<Result<u64, Bytes>, ExecError> {
    let (visible, sort_cols) = match rows_layout(plan, hidden, fields, opts.bytewise) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let (desc, writer) = match Writer::new(&fields[..visible], opts.formats) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    if !opts.executed {
        send(out, &desc).await?;
    }
    let kinds: Vec<Kind> = fields[..visible]
        .iter()
        .map(|f| Kind::of(f.type_oid))
        .collect();
    let mut sink = Sink {
        distinct: plan.distinct.then(|| (kinds, HashSet::new())),
        skip: plan.offset,
        left: plan.limit,
        sent: 0,
    };
    let emit = |row: Row, frame: &Frame, sink: &mut Sink| -> Result<Option<Bytes>, Bytes> {
        let row = &row[..visible.min(row.len())];
        if !sink.admit(row)? {
            return Ok(None);
        }
        if hidden == 0 && writer.text() {
            return Ok(Some(frame.bytes.clone()));
        }
        writer.row(row).map(Some)
    };
    if plan.order.is_empty() {
        for (c, s) in conns.iter_mut().zip(streams.iter_mut()) {
            while !sink.full() {
                let Some(f) = next_row(c, s, o, out).await? else {
                    break;
                };
                let Some(row) = parse_row(&f) else {
                    return Ok(Err(merge_error(
                        SqlState::PROTOCOL_VIOLATION,
                        "malformed DataRow from a shard",
                    )));
                };
                match emit(row, &f, &mut sink) {
                    Ok(Some(b)) => send(out, &b).await?,
                    Ok(None) => {}
                    Err(e) => return Ok(Err(e)),
                }
            }
        }
    } else {
        // One head row per shard; the smallest goes next.
        let mut heads: Vec<Option<(Keys, Row, Frame)>> = Vec::with_capacity(conns.len());
        for (c, s) in conns.iter_mut().zip(streams.iter_mut()) {
            heads.push(match head(c, s, o, out, &sort_cols).await? {
                Ok(h) => h,
                Err(e) => return Ok(Err(e)),
            });
        }
        while !sink.full() {
            let mut best: Option<usize> = None;
            for (i, h) in heads.iter().enumerate() {
                if let Some((k, _, _)) = h {
                    let better = match best.and_then(|b| heads[b].as_ref()) {
                        None => true,
                        Some((bk, _, _)) => cmp_keys(k, bk, &plan.order) == Ordering::Less,
                    };
                    if better {
                        best = Some(i);
                    }
                }
            }
            let Some(i) = best else { break };
            if let Some((_, row, frame)) = heads[i].take() {
                match emit(row, &frame, &mut sink) {
                    Ok(Some(b)) => send(out, &b).await?,
                    Ok(None) => {}
                    Err(e) => return Ok(Err(e)),
                }
            }
            heads[i] = match head(conns[i], &mut streams[i], o, out, &sort_cols).await? {
                Ok(h) => h,
                Err(e) => return Ok(Err(e)),
            };
        }
    }
    Ok(Ok(sink.sent))
}

async fn head<W: AsyncWrite + Unpin>(
    c: &mut ServerConn,
    s: &mut Stream,
    o: &mut Outcome,
    out: &mut W,
    sort_cols: &[(usize, Kind)],
) -> Result<Result<Option<(Keys, Row, Frame)>, Bytes>, ExecError> {
    let Some(f) = next_row(c, s, o, out).await? else {
        return Ok(Ok(None));
    };
    let Some(row) = parse_row(&f) else {
        return Ok(Err(merge_error(
            SqlState::PROTOCOL_VIOLATION,
            "malformed DataRow from a shard",
        )));
    };
    Ok(sort_values(&row, sort_cols).map(|k| Some((k, row, f))))
}

/// One aggregate being combined across shards' partial rows.
enum Acc {
    Count(i128),
    SumInt(Option<i128>),
    SumNum(Option<Numeric>),
    SumFloat(Option<f64>),
    Best(Option<(Val, Bytes)>),
    AvgNum { sum: Option<Numeric>, n: i128 },
    AvgFloat { sum: Option<f64>, n: i128 },
    Bool(Option<bool>),
}

fn numeric_field(name: &[u8]) -> Field {
    Field {
        name: name.to_vec(),
        table: 0,
        attnum: 0,
        type_oid: oid::NUMERIC,
        typlen: -1,
        typmod: -1,
        format: 0,
    }
}

/// The output column an aggregate makes from its partial column, and the
/// starting state of its accumulator.
fn agg_setup(func: AggFunc, partial: &Field, bytewise: bool) -> Result<(Field, Kind, Acc), Bytes> {
    let k = Kind::of(partial.type_oid);
    let unsupported = || {
        merge_error(
            SqlState::FEATURE_NOT_SUPPORTED,
            &format!(
                "{}() over values of type OID {} across shards is not supported (integers, numeric and double precision are)",
                func.name(),
                partial.type_oid
            ),
        )
    };
    let plain = |acc| Ok((partial.clone(), k, acc));
    match func {
        AggFunc::Count => plain(Acc::Count(0)),
        AggFunc::Sum => match (k, partial.type_oid) {
            (Kind::Int, _) => plain(Acc::SumInt(None)),
            (Kind::Numeric, _) => plain(Acc::SumNum(None)),
            (Kind::Float, oid::FLOAT8) => plain(Acc::SumFloat(None)),
            _ => Err(unsupported()),
        },
        AggFunc::Avg => match (k, partial.type_oid) {
            (Kind::Int | Kind::Numeric, _) => Ok((
                numeric_field(&partial.name),
                Kind::Numeric,
                Acc::AvgNum { sum: None, n: 0 },
            )),
            (Kind::Float, oid::FLOAT8) => plain(Acc::AvgFloat { sum: None, n: 0 }),
            _ => Err(unsupported()),
        },
        AggFunc::Min | AggFunc::Max => {
            check_ordered(partial, bytewise, func.name())?;
            plain(Acc::Best(None))
        }
        AggFunc::BoolAnd | AggFunc::BoolOr if k == Kind::Bool => plain(Acc::Bool(None)),
        AggFunc::BoolAnd | AggFunc::BoolOr => Err(unsupported()),
    }
}

fn read_val(kind: Kind, raw: &Option<Bytes>) -> Result<Option<Val>, Bytes> {
    match raw {
        None => Ok(None),
        Some(b) => decode(kind, b).map(Some).map_err(bad_value),
    }
}

fn out_of_range() -> Bytes {
    merge_error(SqlState::NUMERIC_VALUE_OUT_OF_RANGE, "bigint out of range")
}

impl Acc {
    fn add(
        &mut self,
        func: AggFunc,
        kind: Kind,
        v: &Option<Bytes>,
        count: Option<&Option<Bytes>>,
    ) -> Result<(), Bytes> {
        let val = read_val(kind, v)?;
        let n = match count {
            Some(c) => match read_val(Kind::Int, c)? {
                Some(Val::Int(n)) => n,
                _ => 0,
            },
            None => 0,
        };
        match (self, val) {
            (Acc::Count(total), Some(Val::Int(x))) => *total += x,
            (Acc::SumInt(s), Some(Val::Int(x))) => {
                *s = Some(s.unwrap_or(0).checked_add(x).ok_or_else(out_of_range)?)
            }
            (Acc::SumNum(s), Some(Val::Num(x))) => {
                *s = Some(s.take().map_or(x.clone(), |a| a.add(&x)))
            }
            (Acc::SumFloat(s), Some(Val::Float(x))) => *s = Some(s.unwrap_or(0.0) + x),
            (Acc::Best(best), Some(x)) => {
                let better = match best {
                    None => true,
                    Some((b, _)) => {
                        let o = compare(&x, b);
                        if func == AggFunc::Min {
                            o == Ordering::Less
                        } else {
                            o == Ordering::Greater
                        }
                    }
                };
                if better {
                    *best = Some((x, v.clone().unwrap_or_default()));
                }
            }
            (Acc::AvgNum { sum, n: total }, Some(x)) => {
                let x = match x {
                    Val::Int(i) => Numeric::Finite(Decimal::from_int(i)),
                    Val::Num(d) => d,
                    _ => return Ok(()),
                };
                *sum = Some(sum.take().map_or(x.clone(), |a| a.add(&x)));
                *total += n;
            }
            (Acc::AvgFloat { sum, n: total }, Some(Val::Float(x))) => {
                *sum = Some(sum.unwrap_or(0.0) + x);
                *total += n;
            }
            (Acc::Bool(b), Some(Val::Bool(x))) => {
                *b = Some(match (*b, func) {
                    (None, _) => x,
                    (Some(y), AggFunc::BoolAnd) => x && y,
                    (Some(y), _) => x || y,
                })
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(&self) -> Result<Option<Bytes>, Bytes> {
        let text = |s: String| Some(Bytes::from(s));
        Ok(match self {
            Acc::Count(n) => text(n.to_string()),
            Acc::SumInt(s) => match s {
                Some(v) if i64::try_from(*v).is_err() => return Err(out_of_range()),
                Some(v) => text(v.to_string()),
                None => None,
            },
            Acc::SumNum(s) => s.as_ref().map(|v| Bytes::from(v.to_string())),
            Acc::SumFloat(s) => s.map(|v| Bytes::from(format_float(v))),
            Acc::Best(b) => b.as_ref().map(|(_, raw)| raw.clone()),
            Acc::AvgNum { sum, n } => match (sum, n) {
                (Some(s), n) if *n > 0 => s.div_count(*n).map(|v| Bytes::from(v.to_string())),
                _ => None,
            },
            Acc::AvgFloat { sum, n } => match (sum, n) {
                (Some(s), n) if *n > 0 => text(format_float(s / *n as f64)),
                _ => None,
            },
            Acc::Bool(b) => b.map(|v| Bytes::from_static(if v { b"t" } else { b"f" })),
        })
    }
}

struct Group {
    first: Row,
    accs: Vec<Acc>,
}

/// Output columns and kinds, group-key kinds, accumulators' first state.
type Setup = (Vec<Field>, Vec<Kind>, Vec<Kind>, Vec<Acc>);

fn groups_setup(plan: &MergePlan, fields: &[Field], bytewise: bool) -> Result<Setup, Bytes> {
    let Shape::Groups { keys, outputs, .. } = &plan.shape else {
        return Err(merge_error(SqlState::INTERNAL_ERROR, "not a group merge"));
    };
    let missing = || {
        merge_error(
            SqlState::PROTOCOL_VIOLATION,
            "shard result lacks a merge column",
        )
    };
    let mut key_kinds = Vec::new();
    for &k in keys {
        key_kinds.push(check_groupable(fields.get(k).ok_or_else(missing)?)?);
    }
    let (mut ofields, mut okinds, mut accs) = (Vec::new(), Vec::new(), Vec::new());
    for out in outputs {
        match out {
            Output::Pass(c) => {
                let f = fields.get(*c).ok_or_else(missing)?;
                okinds.push(Kind::of(f.type_oid));
                ofields.push(f.clone());
            }
            Output::Agg { func, col, .. } => {
                let (f, k, acc) =
                    agg_setup(*func, fields.get(*col).ok_or_else(missing)?, bytewise)?;
                ofields.push(f);
                okinds.push(k);
                accs.push(acc);
            }
        }
    }
    Ok((ofields, okinds, key_kinds, accs))
}

#[allow(clippy::too_many_arguments)]
async fn groups<W: AsyncWrite + Unpin>(
    conns: &mut [&mut ServerConn],
    streams: &mut [Stream],
    plan: &MergePlan,
    fields: &[Field],
    opts: &RunOptions<'_>,
    o: &mut Outcome,
    out: &mut W,
) -> Result<Result<u64, Bytes>, ExecError> {
    let bytewise = opts.bytewise;
    let Shape::Groups {
        keys,
        outputs,
        visible,
        having,
    } = &plan.shape
    else {
        return Ok(Ok(0));
    };
    let (ofields, okinds, key_kinds, template) = match groups_setup(plan, fields, bytewise) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let (desc, writer) = match Writer::new(&ofields[..*visible], opts.formats) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let fresh = || -> Vec<Acc> {
        template
            .iter()
            .map(|a| match a {
                Acc::Count(_) => Acc::Count(0),
                Acc::SumInt(_) => Acc::SumInt(None),
                Acc::SumNum(_) => Acc::SumNum(None),
                Acc::SumFloat(_) => Acc::SumFloat(None),
                Acc::Best(_) => Acc::Best(None),
                Acc::AvgNum { .. } => Acc::AvgNum { sum: None, n: 0 },
                Acc::AvgFloat { .. } => Acc::AvgFloat { sum: None, n: 0 },
                Acc::Bool(_) => Acc::Bool(None),
            })
            .collect()
    };
    let partial_kinds: Vec<Kind> = fields.iter().map(|f| Kind::of(f.type_oid)).collect();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut all: Vec<Group> = Vec::new();
    for (c, s) in conns.iter_mut().zip(streams.iter_mut()) {
        while let Some(f) = next_row(c, s, o, out).await? {
            let Some(row) = parse_row(&f) else {
                return Ok(Err(merge_error(
                    SqlState::PROTOCOL_VIOLATION,
                    "malformed DataRow from a shard",
                )));
            };
            let key_vals: Vec<Option<Bytes>> = keys
                .iter()
                .map(|&k| row.get(k).cloned().flatten())
                .collect();
            let key = match row_key(&key_vals, &key_kinds) {
                Ok(k) => k,
                Err(e) => return Ok(Err(e)),
            };
            let g = *index.entry(key).or_insert_with(|| {
                all.push(Group {
                    first: row.clone(),
                    accs: fresh(),
                });
                all.len() - 1
            });
            let group = &mut all[g];
            let mut a = 0;
            for out in outputs {
                if let Output::Agg { func, col, count } = out {
                    let v = row.get(*col).cloned().flatten();
                    let n = count.map(|c| row.get(c).cloned().flatten());
                    if let Err(e) = group.accs[a].add(*func, partial_kinds[*col], &v, n.as_ref()) {
                        return Ok(Err(e));
                    }
                    a += 1;
                }
            }
        }
    }
    if o.error.is_some() {
        return Ok(Ok(0));
    }
    // Final rows, filtered by HAVING.
    let mut finals: Vec<Row> = Vec::with_capacity(all.len());
    for g in &all {
        let mut row = Vec::with_capacity(outputs.len());
        let mut a = 0;
        for out in outputs {
            match out {
                Output::Pass(c) => row.push(g.first.get(*c).cloned().flatten()),
                Output::Agg { .. } => {
                    match g.accs[a].finish() {
                        Ok(v) => row.push(v),
                        Err(e) => return Ok(Err(e)),
                    }
                    a += 1;
                }
            }
        }
        if let Some(h) = having {
            match eval(h, &row, &okinds, bytewise) {
                Ok(Some(true)) => {}
                Ok(_) => continue,
                Err(e) => return Ok(Err(e)),
            }
        }
        finals.push(row);
    }
    if !plan.order.is_empty() {
        let mut sort_cols = Vec::new();
        for k in &plan.order {
            match ofields
                .get(k.col)
                .ok_or(())
                .map(|f| check_ordered(f, bytewise, "ORDER BY"))
            {
                Ok(Ok(_)) => sort_cols.push((k.col, okinds[k.col])),
                Ok(Err(e)) => return Ok(Err(e)),
                Err(()) => {
                    return Ok(Err(merge_error(
                        SqlState::PROTOCOL_VIOLATION,
                        "sort key missing",
                    )))
                }
            }
        }
        let mut keyed = Vec::with_capacity(finals.len());
        for r in finals {
            match sort_values(&r, &sort_cols) {
                Ok(k) => keyed.push((k, r)),
                Err(e) => return Ok(Err(e)),
            }
        }
        keyed.sort_by(|a, b| cmp_keys(&a.0, &b.0, &plan.order));
        finals = keyed.into_iter().map(|(_, r)| r).collect();
    }
    let mut sink = Sink {
        distinct: plan
            .distinct
            .then(|| (okinds[..*visible].to_vec(), HashSet::new())),
        skip: plan.offset,
        left: plan.limit,
        sent: 0,
    };
    let mut batch = Vec::new();
    for r in &finals {
        match sink.admit(&r[..*visible]) {
            Ok(true) => match writer.row(&r[..*visible]) {
                Ok(b) => batch.push(b),
                Err(e) => return Ok(Err(e)),
            },
            Ok(false) => {}
            Err(e) => return Ok(Err(e)),
        }
        if sink.full() {
            break;
        }
    }
    if !opts.executed {
        send(out, &desc).await?;
    }
    for b in batch {
        send(out, &b).await?;
    }
    Ok(Ok(sink.sent))
}

/// Evaluates a HAVING condition with SQL's three-valued logic.
fn eval(c: &Cond, row: &Row, kinds: &[Kind], bytewise: bool) -> Result<Option<bool>, Bytes> {
    Ok(match c {
        Cond::And(a, b) => match (
            eval(a, row, kinds, bytewise)?,
            eval(b, row, kinds, bytewise)?,
        ) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Cond::Or(a, b) => match (
            eval(a, row, kinds, bytewise)?,
            eval(b, row, kinds, bytewise)?,
        ) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Cond::Not(a) => eval(a, row, kinds, bytewise)?.map(|v| !v),
        Cond::IsNull(a, negated) => {
            let null = match a.as_ref() {
                Cond::Col(i) => row.get(*i).is_none_or(Option::is_none),
                Cond::Lit(l) => *l == Lit::Null,
                other => eval(other, row, kinds, bytewise)?.is_none(),
            };
            Some(null != *negated)
        }
        Cond::Col(_) | Cond::Lit(_) => match operand(c, row, kinds, None)? {
            None => None,
            Some(Val::Bool(b)) => Some(b),
            Some(_) => {
                return Err(merge_error(
                    SqlState::DATATYPE_MISMATCH,
                    "argument of HAVING must be type boolean",
                ))
            }
        },
        Cond::Cmp(op, a, b) => {
            let ka = kind_of(a, kinds);
            let kb = kind_of(b, kinds);
            let k = ka.or(kb);
            if k.is_some_and(Kind::is_text) && !bytewise && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                return Err(merge_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "comparing text in HAVING across shards needs the C collation",
                ));
            }
            let (Some(x), Some(y)) = (operand(a, row, kinds, kb)?, operand(b, row, kinds, ka)?)
            else {
                return Ok(None);
            };
            let o = compare(&x, &y);
            Some(match op {
                CmpOp::Eq => o == Ordering::Equal,
                CmpOp::Ne => o != Ordering::Equal,
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Le => o != Ordering::Greater,
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::Ge => o != Ordering::Less,
            })
        }
    })
}

fn kind_of(c: &Cond, kinds: &[Kind]) -> Option<Kind> {
    match c {
        Cond::Col(i) => kinds.get(*i).copied(),
        _ => None,
    }
}

/// A comparison operand; a string literal takes the type of the other side.
fn operand(c: &Cond, row: &Row, kinds: &[Kind], other: Option<Kind>) -> Result<Option<Val>, Bytes> {
    match c {
        Cond::Col(i) => read_val(
            kinds.get(*i).copied().unwrap_or(Kind::Opaque),
            &row.get(*i).cloned().flatten(),
        ),
        Cond::Lit(Lit::Null) => Ok(None),
        Cond::Lit(Lit::Bool(b)) => Ok(Some(Val::Bool(*b))),
        Cond::Lit(Lit::Number(n)) => {
            Numeric::parse(n).map(|n| Some(Val::Num(n))).ok_or_else(|| {
                merge_error(
                    SqlState::INVALID_TEXT_REPRESENTATION,
                    &format!("invalid number {n}"),
                )
            })
        }
        Cond::Lit(Lit::Text(t)) => {
            decode(other.unwrap_or(Kind::Text { padded: false }), t.as_bytes())
                .map(Some)
                .map_err(|e| merge_error(SqlState::INVALID_TEXT_REPRESENTATION, &e.0))
        }
        other => Ok(eval(other, row, kinds, true)?.map(Val::Bool)),
    }
}
