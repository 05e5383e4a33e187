//! Carrying out a [`MergePlan`] on shards that have been sent its statement.

use std::cmp::Ordering;
use std::collections::HashSet;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::aggregate::{groups, groups_setup};
use super::value::{self, compare, decode, group_key, Kind, Val};
use super::wire::{merge_error, parse_description, parse_row, Field, Row, Writer};
use super::{MergePlan, Shape, SortKey};
use crate::backend::{BackendError, ServerConn};
use crate::error::SqlState;
use crate::executor::{refuse_copy_in, Answer, ExecError};
use crate::protocol::{self, Frame, Severity};

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

/// One shard's answer being read.
pub(super) struct Stream {
    done: bool,
    desc: Option<Vec<Field>>,
    /// An extended-protocol Execute: the answer ends at its CommandComplete
    /// (or error), not at ReadyForQuery.
    executed: bool,
}

/// What went wrong first, across shards: the client sees one error.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) error: Option<Bytes>,
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

pub(super) async fn send<W: AsyncWrite + Unpin>(out: &mut W, b: &[u8]) -> Result<(), ExecError> {
    out.write_all(b).await.map_err(ExecError::Client)
}

/// Reads the shard's next `DataRow`; `None` once its answer is over.
pub(super) async fn next_row<W: AsyncWrite + Unpin>(
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
pub(super) fn check_ordered(f: &Field, bytewise: bool, why: &str) -> Result<Kind, Bytes> {
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

pub(super) fn check_groupable(f: &Field) -> Result<Kind, Bytes> {
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

pub(super) fn read_val(kind: Kind, raw: &Option<Bytes>) -> Result<Option<Val>, Bytes> {
    match raw {
        None => Ok(None),
        Some(b) => decode(kind, b).map(Some).map_err(bad_value),
    }
}

/// Sort-key values of one row.
type Keys = Vec<Option<Val>>;

pub(super) fn sort_values(row: &Row, cols: &[(usize, Kind)]) -> Result<Keys, Bytes> {
    cols.iter()
        .map(|&(c, k)| match row.get(c).cloned().flatten() {
            None => Ok(None),
            Some(raw) => decode(k, &raw).map(Some).map_err(bad_value),
        })
        .collect()
}

pub(super) fn cmp_keys(a: &Keys, b: &Keys, order: &[SortKey]) -> Ordering {
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

pub(super) fn row_key(row: &[Option<Bytes>], kinds: &[Kind]) -> Result<Vec<u8>, Bytes> {
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
pub(super) struct Sink {
    pub(super) distinct: Option<(Vec<Kind>, HashSet<Vec<u8>>)>,
    pub(super) skip: u64,
    pub(super) left: Option<u64>,
    pub(super) sent: u64,
}

impl Sink {
    pub(super) fn full(&self) -> bool {
        self.left == Some(0)
    }

    /// Whether `row` goes out.
    pub(super) fn admit(&mut self, row: &[Option<Bytes>]) -> Result<bool, Bytes> {
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
