//! Runs statements on server connections and relays or merges their answers.
//!
//! One shard: every message passes through untouched. Several shards: one
//! `RowDescription`, every shard's rows, command tags summed, the first error.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::backend::{BackendError, ServerConn, MAX_PREPARED_PER_CONNECTION};
use crate::protocol::{self, take_cstr, Frame};
use crate::router::ShardId;

pub(crate) mod copy_out;

/// A statement could not be completed: which side failed decides what the
/// session does next (tell the client, or end the session).
#[derive(Debug)]
pub enum ExecError {
    /// The shard failed; the client can still be told.
    Backend(BackendError),
    /// Writing to the client failed; the session is over.
    Client(std::io::Error),
}

/// How the shard(s) answered a statement: the one result the executor
/// hands back (beside the closing message, when the caller sends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Succeeded,
    /// A shard reported an error (already relayed, or the closing message).
    Failed,
}

impl Answer {
    pub fn failed_if(failed: bool) -> Answer {
        if failed {
            Answer::Failed
        } else {
            Answer::Succeeded
        }
    }

    pub fn failed(self) -> bool {
        self == Answer::Failed
    }
}

impl From<BackendError> for ExecError {
    fn from(e: BackendError) -> Self {
        ExecError::Backend(e)
    }
}

/// Message the proxy sends a server that asks for `COPY ... FROM STDIN` data.
const COPY_IN_REFUSAL: &str = "COPY FROM STDIN is not supported through Pieskieo yet";

pub(crate) async fn refuse_copy_in(conn: &mut ServerConn) -> Result<(), BackendError> {
    conn.send_copy_fail(COPY_IN_REFUSAL).await?;
    conn.flush().await
}

async fn write<W: AsyncWrite + Unpin>(out: &mut W, b: &[u8]) -> Result<(), ExecError> {
    out.write_all(b).await.map_err(ExecError::Client)
}

/// Relays the answer to one query from one shard. `ReadyForQuery` is not
/// relayed: the session sends its own, from its state.
pub async fn relay<W: AsyncWrite + Unpin>(
    conn: &mut ServerConn,
    out: &mut W,
) -> Result<Answer, ExecError> {
    let mut failed = false;
    loop {
        let f = conn.read().await?;
        match f.tag {
            b'Z' => return Ok(Answer::failed_if(failed)),
            b'G' => refuse_copy_in(conn).await?,
            b'E' => {
                failed = true;
                write(out, &f.bytes).await?;
            }
            _ => write(out, &f.bytes).await?,
        }
    }
}

/// How a statement sent with `ServerConn::send_bound` was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundAnswer {
    /// It ran: its answer was relayed as a simple query's would be.
    Ran(Answer),
    /// The shard refused it before running anything, at its Parse
    /// (`parsed: false`: the text is no statement on its own) or at its Bind
    /// (a value or the prepared statement itself), for what the text says.
    /// Nothing was relayed.
    Refused { parsed: bool },
    /// It failed before it ran for a reason that is not the text's (a
    /// cancel, a timeout, a deadlock's victim) while its Parse or Bind ran
    /// or waited: that error was relayed, as the statement's answer. Sent again, it would run after all. `parsed`:
    /// the Parse had completed (the statement exists on the connection).
    Stopped { parsed: bool },
    /// A read failed before its first row: nothing was relayed, and, being
    /// read-only, it may be sent again as written for PostgreSQL's own
    /// answer (see `BoundKind::Read`). The statement stays prepared.
    FailedEarly,
}

/// What a statement sent with `ServerConn::send_bound` is, for relaying
/// its answer as a simple query's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundKind {
    /// An `INSERT`, `UPDATE` or `DELETE`: a simple query fills its
    /// RETURNING rows first, then describes them, so its RowDescription
    /// waits until its first row or its tag (an error comes alone, notices
    /// first).
    Write,
    /// A read proven read-only: its answer waits until its first row or
    /// its tag. Under a generic plan PostgreSQL raises while the statement
    /// runs, after the RowDescription, an error a simple query gets while
    /// planning with the constants in place (`10 / 0` folded), before any
    /// RowDescription; which of the two an early error is cannot be told
    /// from here, so the text as written answers it (`FailedEarly`).
    Read,
    /// Anything else (a read that may write): relayed as it comes.
    Other,
}

/// A refusal that says nothing of the text: the client's cancel, a
/// statement or lock timeout, a deadlock. The simple query would have got
/// the same error; sent again, the statement might run where PostgreSQL
/// refused it. (A lock timeout a simple query meets while parsing names the
/// table's position; one met at Bind has none: the lesser difference.)
fn stops_the_statement(code: &str) -> bool {
    code == crate::error::SqlState::QUERY_CANCELED.code()
        || code == crate::error::SqlState::LOCK_NOT_AVAILABLE.code()
        || code.starts_with("40")
}

/// The CONTEXT line PostgreSQL adds to what a portal with parameters
/// reports while it runs, when `log_parameter_max_length_on_error` is set:
/// the outermost context, so the last line.
const BOUND_VALUES: &str = "unnamed portal with parameters: ";

/// The fields of an ErrorResponse or NoticeResponse, in order.
fn fields(f: &Frame) -> Option<Vec<(u8, std::borrow::Cow<'_, str>)>> {
    let mut out = Vec::new();
    let mut rest = f.body();
    while let Some((&kind, after)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let (value, next) = take_cstr(after)?;
        rest = next;
        out.push((kind, value.into()));
    }
    Some(out)
}

/// A message of `f`'s type with these fields.
fn framed(tag: u8, fields: &[(u8, std::borrow::Cow<'_, str>)]) -> Vec<u8> {
    let mut out = vec![tag, 0, 0, 0, 0];
    for (kind, value) in fields {
        out.push(*kind);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out.push(0);
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

/// Takes the CONTEXT line naming the values the proxy bound
/// (`BOUND_VALUES`) out of `fields`; whether there was one.
fn drop_bound_values(fields: &mut Vec<(u8, std::borrow::Cow<'_, str>)>) -> bool {
    let mut changed = false;
    fields.retain_mut(|(kind, value)| {
        if *kind != b'W' {
            return true;
        }
        if value.starts_with(BOUND_VALUES) {
            changed = true;
            return false;
        }
        if let Some(at) = value.find(&format!("\n{BOUND_VALUES}")) {
            changed = true;
            *value = value[..at].to_string().into();
        }
        true
    });
    changed
}

/// An ErrorResponse or NoticeResponse without the CONTEXT line naming the
/// values the proxy bound (`BOUND_VALUES`), which a simple query has not;
/// `None` when it has no such line.
fn without_bound_values(f: &Frame) -> Option<Vec<u8>> {
    let mut fields = fields(f)?;
    drop_bound_values(&mut fields).then(|| framed(f.tag, &fields))
}

/// Whether an error before BindComplete is about what the text says (a
/// syntax or type error, a value its type refuses, a prepared statement
/// outdated or missing), so that the query as written answers instead. A
/// cancel, a timeout or the server going away is the client's answer as it
/// is: it must not run again.
fn refusal(e: &Frame) -> bool {
    let code = protocol::ErrorFields::parse(e.body()).code;
    code.starts_with("42") || code.starts_with("22") || code == "0A000" || code == "26000"
}

/// Relays the answer to `ServerConn::send_bound` as the answer to a simple
/// query: ParseComplete, BindComplete and NoData are dropped, an error
/// before BindComplete about the text (`refusal`) relays nothing (the
/// caller sends the query as written), any other one is the answer
/// (`Stopped`), what comes before the first row waits as `kind` says, and
/// CommandComplete waits for what the commit at Sync says. `ReadyForQuery`
/// is not relayed.
pub async fn relay_bound<W: AsyncWrite + Unpin>(
    conn: &mut ServerConn,
    out: &mut W,
    parse: bool,
    kind: BoundKind,
) -> Result<BoundAnswer, ExecError> {
    let mut parsed = !parse;
    // Notices before the statement runs wait: it may yet be refused.
    let mut early: Vec<Bytes> = Vec::new();
    loop {
        let f = conn.read().await?;
        match f.tag {
            b'1' => parsed = true,
            b'2' => break,
            b'E' if refusal(&f) => {
                conn.uncount_error();
                drain(conn).await?;
                return Ok(BoundAnswer::Refused { parsed });
            }
            b'E' => {
                // A cancel, a timeout, a deadlock, the server going away:
                // the simple query would have got it too, and sent again
                // the statement might run where PostgreSQL refused it.
                for b in early {
                    write(out, &b).await?;
                }
                write(out, &f.bytes).await?;
                drain(conn).await?;
                return Ok(BoundAnswer::Stopped { parsed });
            }
            b'Z' => {
                return Err(ExecError::Backend(BackendError::Protocol {
                    shard: conn.shard,
                    message: "ReadyForQuery before BindComplete".into(),
                }))
            }
            _ => early.push(f.bytes),
        }
    }
    // What waits for the first row or the tag (see `BoundKind`).
    let mut held: Option<Vec<Bytes>> = match kind {
        BoundKind::Read => Some(early),
        BoundKind::Write | BoundKind::Other => {
            for b in early {
                write(out, &b).await?;
            }
            None
        }
    };
    let mut failed = false;
    // The command tag waits for the commit at Sync: a simple query commits
    // before its CommandComplete, so an error there (a deferred constraint)
    // comes in place of it, and what the commit says comes before it.
    let mut tag: Option<Bytes> = None;
    // A write's RowDescription, until its first row or its tag.
    let mut described: Option<Bytes> = None;
    loop {
        let f = conn.read().await?;
        if matches!(f.tag, b'D' | b'C') {
            if let Some(d) = described.take() {
                write(out, &d).await?;
            }
            for b in held.take().unwrap_or_default() {
                write(out, &b).await?;
            }
        }
        match f.tag {
            b'Z' => {
                if let Some(t) = tag {
                    write(out, &t).await?;
                }
                return Ok(BoundAnswer::Ran(Answer::failed_if(failed)));
            }
            b'n' => {}
            b'T' if kind == BoundKind::Write => described = Some(f.bytes),
            b'C' => tag = Some(f.bytes),
            b'G' => refuse_copy_in(conn).await?,
            b'E' => {
                let code = protocol::ErrorFields::parse(f.body()).code;
                if let Some(h) = held.take() {
                    if refusal(&f) && !stops_the_statement(&code) {
                        conn.uncount_error();
                        drain(conn).await?;
                        return Ok(BoundAnswer::FailedEarly);
                    }
                    for b in h {
                        write(out, &b).await?;
                    }
                }
                failed = true;
                tag = None;
                described = None;
                match without_bound_values(&f) {
                    Some(b) => write(out, &b).await?,
                    None => write(out, &f.bytes).await?,
                }
            }
            _ => {
                let b = match f.tag {
                    b'N' => without_bound_values(&f).map(Bytes::from),
                    _ => None,
                }
                .unwrap_or(f.bytes);
                match held.as_mut() {
                    Some(h) => h.push(b),
                    None => write(out, &b).await?,
                }
            }
        }
    }
}

/// A simple query's statement run in a block as a prepared statement the
/// connection already has (see `router::Prepare::fits_block`).
pub struct BlockBound<'a> {
    pub prepare: &'a crate::router::Prepare,
    pub kind: BoundKind,
}

/// Relays the answer to `ServerConn::send_bound` in a block, where nothing
/// can be sent again: everything is the answer. ParseComplete,
/// BindComplete and NoData are dropped; a write's RowDescription waits
/// for its first row or its tag (a simple query describes RETURNING rows
/// once they are all made); an error points where the text's would
/// (`block_error`). `ReadyForQuery` is not relayed. `again`: it was closed
/// and parsed again first (CloseComplete dropped too); a refused Parse
/// leaves the connection without it.
pub async fn relay_bound_in_block<W: AsyncWrite + Unpin>(
    conn: &mut ServerConn,
    out: &mut W,
    b: &BlockBound<'_>,
    again: bool,
) -> Result<Answer, ExecError> {
    let mut failed = false;
    let mut parsed = !again;
    let mut described: Option<Bytes> = None;
    loop {
        let f = conn.read().await?;
        if matches!(f.tag, b'D' | b'C') {
            if let Some(d) = described.take() {
                write(out, &d).await?;
            }
        }
        match f.tag {
            b'Z' => {
                if !parsed {
                    conn.block_statements.remove(&b.prepare.name);
                }
                return Ok(Answer::failed_if(failed));
            }
            b'1' => parsed = true,
            b'2' | b'3' | b'n' => {}
            b'T' if b.kind == BoundKind::Write => described = Some(f.bytes),
            b'G' => refuse_copy_in(conn).await?,
            b'E' => {
                failed = true;
                described = None;
                let (e, outdated) = block_error(&f, b);
                if outdated {
                    // Outdated by DDL ("cached plan must not change result
                    // type"): the text goes as written from now on, and the
                    // connection, which still holds the outdated statement,
                    // is closed when the block ends.
                    b.prepare.refuse();
                    conn.mark_broken();
                }
                write(out, &e).await?;
            }
            b'N' => match without_bound_values(&f) {
                Some(n) => write(out, &n).await?,
                None => write(out, &f.bytes).await?,
            },
            _ => write(out, &f.bytes).await?,
        }
    }
}

/// The routine of PostgreSQL's plan cache that refuses a prepared
/// statement whose rows changed shape ("cached plan must not change result
/// type", 0A000): the one refusal a simple query never meets. Told by the
/// routine, not the code alone (a trigger, the planner, any feature
/// PostgreSQL lacks answers 0A000 too, and the text would get the same) nor
/// the message (it follows `lc_messages`).
const OUTDATED_ROUTINE: &str = "RevalidateCachedQuery";

/// An error of a statement bound in a block, as the text's would read: no
/// CONTEXT line naming the bound values, the position moved from the
/// constant-free text to the client's, and for the outdated statement
/// (`OUTDATED_ROUTINE`) a hint saying what happened and what to do; and
/// whether it was that.
fn block_error(f: &Frame, b: &BlockBound<'_>) -> (Vec<u8>, bool) {
    let Some(mut fields) = fields(f) else {
        return (f.bytes.to_vec(), false);
    };
    drop_bound_values(&mut fields);
    let (mut code, mut routine) = (false, false);
    for (kind, value) in fields.iter_mut() {
        match kind {
            b'P' => {
                if let Ok(at) = value.parse::<usize>() {
                    *value = b.prepare.normalized.text_position(at).to_string().into();
                }
            }
            b'C' => code = value == "0A000",
            b'R' => routine = value == OUTDATED_ROUTINE,
            _ => {}
        }
    }
    let outdated = code && routine;
    if outdated {
        fields.push((
            b'H',
            "Pieskieo ran this statement prepared on its shard (prepare_simple_queries), and a \
             table it reads changed since; it runs as written from now on: retry the transaction."
                .into(),
        ));
    }
    (framed(f.tag, &fields), outdated)
}

/// Sends `sql` as a simple query and relays its answer (`relay`).
pub async fn run_text<W: AsyncWrite + Unpin>(
    conn: &mut ServerConn,
    out: &mut W,
    sql: &str,
) -> Result<Answer, ExecError> {
    conn.send_query(sql).await?;
    conn.flush().await?;
    relay(conn, out).await
}

/// Reads the answer to one query without relaying it; returns the first error.
pub async fn drain(conn: &mut ServerConn) -> Result<Option<Frame>, BackendError> {
    let mut err = None;
    loop {
        let f = conn.read().await?;
        match f.tag {
            b'Z' => return Ok(err),
            b'G' => refuse_copy_in(conn).await?,
            b'E' if err.is_none() => err = Some(f),
            _ => {}
        }
    }
}

/// Merges the answers of several shards to one statement.
#[derive(Default)]
pub struct Merger {
    described: bool,
    verb: Option<String>,
    rows: u64,
    tag: Option<Bytes>,
    error: Option<Bytes>,
    empty: Option<Bytes>,
    notices: HashSet<Bytes>,
}

impl Merger {
    /// What to pass to the client now, if anything.
    pub fn on_frame(&mut self, f: Frame) -> Option<Bytes> {
        match f.tag {
            b'T' => {
                if std::mem::replace(&mut self.described, true) {
                    None
                } else {
                    Some(f.bytes)
                }
            }
            b'C' => {
                let tag = take_cstr(f.body()).map(|t| t.0).unwrap_or_default();
                match protocol::tag_rows(tag) {
                    Some((verb, n)) => {
                        self.verb = Some(verb.to_string());
                        self.rows += n;
                    }
                    None => self.tag = Some(f.bytes),
                }
                None
            }
            b'E' => {
                if self.error.is_none() {
                    self.error = Some(f.bytes);
                }
                None
            }
            b'I' => {
                self.empty = Some(f.bytes);
                None
            }
            b'N' => self.notices.insert(f.bytes.clone()).then_some(f.bytes),
            _ => Some(f.bytes),
        }
    }

    pub fn backend_failed(&mut self, e: &BackendError) {
        if self.error.is_none() {
            self.error = Some(protocol::error_response(
                protocol::Severity::Error,
                e.sqlstate(),
                &e.to_string(),
                None,
            ));
        }
    }

    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// The closing message: the first error, or the merged command tag.
    pub fn finish(self) -> Option<Bytes> {
        if let Some(e) = self.error {
            return Some(e);
        }
        if let Some(verb) = self.verb {
            return Some(protocol::command_complete(&format!("{verb} {}", self.rows)));
        }
        self.tag.or(self.empty)
    }
}

/// How several shards' answers become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Each shard holds different rows: concatenate rows, sum counts.
    Union,
    /// Each shard holds a copy: answer with the first shard's result (errors
    /// from any shard still count).
    Copies,
}

/// How a block reads its shards' answers: a plain merge, or a merge plan
/// the proxy carries out on the rows.
#[derive(Debug, Clone, Copy)]
pub enum Collect<'a> {
    Merge(Merge),
    Plan(&'a crate::merge::MergePlan),
}

impl From<Merge> for Collect<'_> {
    fn from(m: Merge) -> Self {
        Collect::Merge(m)
    }
}

/// Where one shard's answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// A simple query: at `ReadyForQuery`.
    Ready,
    /// An extended-protocol `Execute`: at CommandComplete, EmptyQueryResponse,
    /// PortalSuspended or an error.
    Executed,
}

/// Reads one shard's answer into `merger`, passing on what can go to the
/// client now. With `Merge::Copies`, only the first shard's rows and tags
/// count (`first`); errors from any shard do. Returns whether the shard
/// suspended a portal (its row limit was reached).
pub async fn collect<W: AsyncWrite + Unpin>(
    conn: &mut ServerConn,
    merger: &mut Merger,
    merge: Merge,
    first: bool,
    until: Until,
    out: &mut W,
) -> Result<bool, ExecError> {
    let executed = until == Until::Executed;
    loop {
        let f = match conn.read().await {
            Ok(f) => f,
            Err(e) => {
                merger.backend_failed(&e);
                return Ok(false);
            }
        };
        let tag = f.tag;
        match tag {
            b'Z' if !executed => return Ok(false),
            b's' if executed => return Ok(true),
            b'G' => {
                if let Err(e) = refuse_copy_in(conn).await {
                    merger.backend_failed(&e);
                    return Ok(false);
                }
            }
            b'E' => {
                merger.on_frame(f);
            }
            _ if !first && merge == Merge::Copies => {}
            _ => {
                if let Some(b) = merger.on_frame(f) {
                    write(out, &b).await?;
                }
            }
        }
        if executed && matches!(tag, b'C' | b'I' | b'E') {
            return Ok(false);
        }
    }
}

/// Runs `sqls[i]` on `conns[i]` at once and merges the answers. Returns
/// how they answered, and the closing message (error or merged tag),
/// which the caller sends when the statement is really over. Every
/// connection is read to its `ReadyForQuery` (or marked broken).
pub async fn fan_out<W: AsyncWrite + Unpin>(
    conns: &mut [&mut ServerConn],
    sqls: &[&str],
    primed: bool,
    merge: Merge,
    out: &mut W,
) -> Result<(Answer, Option<Bytes>), ExecError> {
    let mut merger = Merger::default();
    let mut sent = vec![false; conns.len()];
    for (i, c) in conns.iter_mut().enumerate() {
        let r = send_statement(c, sqls[i], primed).await;
        match r {
            Ok(()) => sent[i] = true,
            Err(e) => merger.backend_failed(&e),
        }
    }
    settle_all(conns).await;
    for (i, c) in conns.iter_mut().enumerate() {
        if sent[i] {
            collect(c, &mut merger, merge, i == 0, Until::Ready, out).await?;
        }
    }
    let answer = Answer::failed_if(merger.failed());
    Ok((answer, merger.finish()))
}

/// Lets each connection's snapshot share go as soon as its answer has
/// arrived, all at once (see [`ServerConn::settle`]); a no-op without
/// `consistent_reads`.
pub async fn settle_all(conns: &mut [&mut ServerConn]) {
    if conns.iter().all(|c| c.snapshot_hold.is_none()) {
        return;
    }
    futures_util::future::join_all(conns.iter_mut().map(|c| c.settle())).await;
}

/// Sends `sql` as a simple query and flushes; or, when `primed` (the
/// server's unnamed portal already holds it, see `Session::prime`),
/// Describe, Execute and Sync, whose answers read as a simple query's.
pub async fn send_statement(
    c: &mut ServerConn,
    sql: &str,
    primed: bool,
) -> Result<(), BackendError> {
    if primed {
        c.send_extended(&[b'D', 0, 0, 0, 6, b'P', 0]).await?;
        c.send_extended(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]).await?;
        c.send_sync().await?;
    } else {
        c.send_query(sql).await?;
    }
    c.flush().await
}

/// Reads a server's answer to one extended message, relaying it (when
/// `forward`) until one of `done` or an error. Returns success, and the
/// parameter types if a ParameterDescription passed.
pub async fn reply<W: AsyncWrite + Unpin>(
    conn: &mut ServerConn,
    out: &mut W,
    done: &[u8],
    forward: bool,
) -> Result<(Answer, Option<Vec<u32>>), ExecError> {
    let mut types = None;
    loop {
        let f = conn.read().await?;
        match f.tag {
            b'E' => {
                write(out, &f.bytes).await?;
                return Ok((Answer::Failed, types));
            }
            b'G' => {
                conn.send_copy_fail(COPY_IN_REFUSAL).await?;
                conn.send_extended(&protocol::FLUSH).await?;
                conn.flush().await?;
            }
            b't' => {
                types = Some(parameter_types(f.body()));
                if forward {
                    write(out, &f.bytes).await?;
                }
            }
            tag => {
                // Notices and parameter changes pass even when the answer itself is ours.
                if forward || matches!(tag, b'N' | b'S' | b'A') {
                    write(out, &f.bytes).await?;
                }
                if done.contains(&tag) {
                    return Ok((Answer::Succeeded, types));
                }
            }
        }
    }
}

/// The parameter types of a ParameterDescription body (as many as are whole).
fn parameter_types(body: &[u8]) -> Vec<u32> {
    let n = body
        .get(..2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize)
        .unwrap_or(0);
    body.get(2..)
        .unwrap_or_default()
        .chunks_exact(4)
        .take(n)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Reads one shard's frames up to and including the first whose tag is in
/// `stop`: the one reader for answers that end before `ReadyForQuery` (a
/// Describe or a BEGIN sent before a Flush).
pub async fn read_until(conn: &mut ServerConn, stop: &[u8]) -> Result<Vec<Frame>, BackendError> {
    let mut got = Vec::new();
    loop {
        let f = conn.read().await?;
        let end = stop.contains(&f.tag);
        got.push(f);
        if end {
            return Ok(got);
        }
    }
}

/// The rows of one query's answer (its DataRows), or the error it ended
/// with, read to its ReadyForQuery.
pub async fn read_rows(c: &mut ServerConn) -> Result<Result<Vec<Frame>, Frame>, BackendError> {
    let mut rows = Vec::new();
    let mut err = None;
    loop {
        let f = c.read().await?;
        match f.tag {
            b'Z' => break,
            b'E' => err = Some(f),
            b'D' => rows.push(f),
            _ => {}
        }
    }
    Ok(match err {
        Some(e) => Err(e),
        None => Ok(rows),
    })
}

/// A connection enlisted in a block, as [`run_in_block`] sees it.
pub trait Enlisted {
    fn shard(&self) -> ShardId;
    fn conn(&mut self) -> &mut ServerConn;
}

/// How [`run_in_block`] starts shards and answers.
pub struct BlockRun<'a> {
    /// What a shard joining now receives before the statement: its
    /// `BEGIN` and the block's prelude, one answer each.
    pub head: &'a [String],
    /// The shards joining with this statement.
    pub fresh: &'a [ShardId],
    /// One target's answer may be relayed as it comes (else it is
    /// collected, and its closing message returned).
    pub relay_single: bool,
    /// Text compares bytewise in a merge (every shard's collation is C).
    pub bytewise: bool,
    /// The statements wait in the shards' unnamed portals (see
    /// [`send_statement`]); nobody is fresh.
    pub primed: bool,
    /// One target: its statement runs as this prepared statement where its
    /// connection has it, and is prepared there before the connection's
    /// next `BEGIN` where it has not.
    pub bound: Option<BlockBound<'a>>,
    /// A statement of the block set session settings, or may have: the
    /// search_path and plan_cache_mode a statement would be bound under are
    /// not known, and `bound` goes as written.
    pub settings_changed: bool,
}

/// What `prepare_later`'s Parses run under: no wait for a lock. A Parse
/// takes a lock on each table its statement reads, and the block about to
/// begin may never touch them: waiting there for another client's lock (an
/// `ALTER TABLE` in its open block) would hold this block up where
/// PostgreSQL would not, or close a deadlock between shards that no
/// detector sees (the Parse runs before the block's tag). A statement whose
/// table is locked is prepared before a later block.
const NO_LOCK_WAIT: &str = "SET lock_timeout = 1";

/// Sends a Parse and Sync for each statement `conn` is to prepare before
/// its next `BEGIN` (`ServerConn::to_prepare`) and has not, without lock
/// waits (`NO_LOCK_WAIT`, then the connection's own `lock_timeout` again);
/// returns them.
async fn prepare_later(
    conn: &mut ServerConn,
) -> Result<Vec<Arc<crate::router::Later>>, BackendError> {
    let mut later = std::mem::take(&mut conn.to_prepare);
    later.retain(|l| !conn.block_statements.contains_key(&l.name));
    // Statements prepared outside blocks since these were queued count too.
    let room = MAX_PREPARED_PER_CONNECTION
        .saturating_sub(conn.prepared.len() + conn.block_statements.len());
    later.truncate(room);
    if later.is_empty() {
        return Ok(later);
    }
    conn.send_query(NO_LOCK_WAIT).await?;
    for l in &later {
        conn.send_parse(&l.block_name, &l.template, &l.types)
            .await?;
    }
    let restore = match conn.applied.get("lock_timeout") {
        Some(set) => set.clone(),
        None => "RESET lock_timeout".to_string(),
    };
    conn.send_query(&restore).await?;
    // Their answers come before the head's: a fence share attached for the
    // statement (a joining shard's) skips them too, or it would be let go
    // before the statement there had its snapshot.
    if let Some(h) = &mut conn.snapshot_hold {
        h.skip += later.len() + 2;
    }
    Ok(later)
}

/// Reads the answers to `prepare_later`: each statement is now prepared on
/// `conn` for blocks, waits for a later block (it met a lock, a cancel, a
/// timeout), or is refused (a text valid only with its constants in place:
/// it goes as written from now on).
async fn prepared_later(
    conn: &mut ServerConn,
    later: &[Arc<crate::router::Later>],
) -> Result<(), BackendError> {
    if later.is_empty() {
        return Ok(());
    }
    if let Some(e) = drain(conn).await? {
        return Err(setting_failed(conn, &e));
    }
    for l in later {
        let mut parsed = false;
        let mut refused = false;
        loop {
            let f = conn.read().await?;
            match f.tag {
                b'1' => parsed = true,
                b'E' => {
                    conn.uncount_error();
                    refused = refusal(&f);
                }
                b'Z' => break,
                _ => {}
            }
        }
        if parsed {
            let search_path = conn.applied.get("search_path").cloned();
            conn.block_statements.insert(
                l.name.clone(),
                crate::backend::BlockStatement {
                    name: l.block_name.clone(),
                    search_path,
                },
            );
        } else if refused {
            l.refuse();
        } else {
            conn.to_prepare.push(l.clone());
        }
    }
    if let Some(e) = drain(conn).await? {
        return Err(setting_failed(conn, &e));
    }
    Ok(())
}

/// `lock_timeout` refused around `prepare_later`'s Parses: the connection's
/// settings are not what the proxy thinks.
fn setting_failed(conn: &mut ServerConn, e: &Frame) -> BackendError {
    conn.mark_broken();
    BackendError::Protocol {
        shard: conn.shard,
        message: format!(
            "setting lock_timeout around Parse: {}",
            protocol::ErrorFields::parse(e.body())
        ),
    }
}

/// `p` ran as written in a block on `conn`: it is prepared there before the
/// connection's next `BEGIN` (while the connection has room for it).
fn want_later(conn: &mut ServerConn, p: &crate::router::Prepare) {
    if conn.block_statements.contains_key(&p.name)
        || conn.prepared.len() + conn.block_statements.len() + conn.to_prepare.len()
            >= MAX_PREPARED_PER_CONNECTION
        || conn.to_prepare.iter().any(|l| l.name == p.name)
    {
        return;
    }
    conn.to_prepare.push(p.later());
}

/// Runs `targets` (a statement per shard) on the block's connections in
/// `parts`: the shards in `run.fresh` get `run.head` first, in the same
/// write. Everything is written before anything is read, so the shards work
/// in parallel. One target: its answer is relayed as is; several: merged
/// (`how`). Returns how they answered and the closing message (error or
/// merged tag) for the caller to send when the statement is over. An error
/// in a joining shard's head fails the statement with that error.
pub async fn run_in_block<P: Enlisted, W: AsyncWrite + Unpin>(
    parts: &mut [P],
    targets: &[(ShardId, &str)],
    how: Collect<'_>,
    run: &BlockRun<'_>,
    out: &mut W,
) -> Result<(Answer, Option<Bytes>), ExecError> {
    let single = targets.len() == 1;
    let bound = run.bound.as_ref().filter(|_| single && !run.primed);
    let mut sent = Vec::with_capacity(targets.len());
    for (shard, sql) in targets {
        let Some(p) = parts.iter_mut().find(|p| p.shard() == *shard) else {
            continue;
        };
        let conn = p.conn();
        let fresh = run.fresh.contains(shard);
        // Bound where the connection prepared it for blocks and its
        // settings are known; parsed again first (`again`) under another
        // search_path.
        let prepared = bound
            .filter(|_| {
                conn.conforming_strings()
                    && !run.settings_changed
                    && !conn.applied.contains_key("plan_cache_mode")
            })
            .and_then(|b| {
                let path = conn.applied.get("search_path");
                let s = conn.block_statements.get_mut(&b.prepare.name)?;
                let again = s.search_path.as_ref() != path;
                if again {
                    s.search_path = path.cloned();
                }
                Some((b, s.name.clone(), again))
            });
        let r = async {
            // Outside any transaction still: what earlier blocks ran here
            // as written is prepared now, where a refusal costs nothing.
            let later = if fresh && conn.status == b'I' && !conn.needs_sync() {
                prepare_later(conn).await?
            } else {
                Vec::new()
            };
            if fresh {
                for q in run.head {
                    conn.send_query(q).await?;
                }
            }
            match &prepared {
                Some((b, name, again)) => {
                    let types: Vec<u32>;
                    let parse = if *again {
                        conn.send_close_unsynced(name).await?;
                        let n = &b.prepare.normalized;
                        types = n.types().map(|t| t.collect()).unwrap_or_default();
                        Some((n.template.as_str(), types.as_slice()))
                    } else {
                        None
                    };
                    conn.send_bound(name, parse, b.prepare.values()).await?;
                    conn.flush().await?;
                }
                None => {
                    if let Some(b) = bound {
                        want_later(conn, b.prepare);
                    }
                    send_statement(conn, sql, run.primed).await?;
                }
            }
            Ok(later)
        }
        .await;
        sent.push((*shard, fresh, r, prepared.map(|(_, _, again)| again)));
    }
    // The answers to `prepare_later` first, before any shard's share is
    // awaited: they come at once (no lock is waited for), and their
    // ReadyForQuery are outside any transaction, where a deadlock verdict
    // set meanwhile (the statement behind them cancelled as a victim)
    // would be spent before the error it replaces.
    for (shard, _, r, _) in sent.iter_mut() {
        let Ok(later) = r else {
            continue;
        };
        if later.is_empty() {
            continue;
        }
        let Some(p) = parts.iter_mut().find(|p| p.shard() == *shard) else {
            continue;
        };
        if let Err(e) = prepared_later(p.conn(), later).await {
            *r = Err(e);
        }
    }
    {
        let mut conns: Vec<&mut ServerConn> = parts
            .iter_mut()
            .filter(|p| targets.iter().any(|(s, _)| *s == p.shard()))
            .map(|p| p.conn())
            .collect();
        settle_all(&mut conns).await;
    }
    let mut merger = Merger::default();
    let mut failed = false;
    // With a merge plan: the shards whose answers are ready to merge.
    let mut ready = Vec::new();
    for (i, (shard, fresh, r, prepared)) in sent.into_iter().enumerate() {
        let Some(p) = parts.iter_mut().find(|p| p.shard() == shard) else {
            continue;
        };
        let conn = p.conn();
        if let Err(e) = r {
            merger.backend_failed(&e);
            failed = true;
            continue;
        }
        let mut head_error = None;
        if fresh {
            for _ in run.head {
                match drain(conn).await {
                    Ok(Some(e)) => {
                        head_error.get_or_insert(e);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        merger.backend_failed(&e);
                        failed = true;
                        break;
                    }
                }
            }
        }
        if let Some(e) = head_error {
            failed = true;
            merger.on_frame(e);
            if let Err(e) = drain(conn).await {
                merger.backend_failed(&e);
            }
            if prepared == Some(true) {
                // Closed and parsed again, unread: whether the connection
                // still has the statement is not known.
                conn.mark_broken();
            }
        } else if let Collect::Plan(_) = how {
            ready.push(shard);
        } else if let (Some(again), Some(b)) = (prepared, bound) {
            failed |= relay_bound_in_block(conn, out, b, again).await?.failed();
        } else if single && !failed && run.relay_single {
            failed |= relay(conn, out).await?.failed();
        } else if let Collect::Merge(merge) = how {
            let merge = if single { Merge::Union } else { merge };
            collect(conn, &mut merger, merge, i == 0, Until::Ready, out).await?;
        }
    }
    if let Collect::Plan(plan) = how {
        let mut conns: Vec<&mut ServerConn> = parts
            .iter_mut()
            .filter_map(|p| {
                let c = p.conn();
                ready.contains(&c.shard).then_some(c)
            })
            .collect();
        if failed || merger.failed() {
            for c in conns {
                if let Err(e) = drain(c).await {
                    merger.backend_failed(&e);
                }
            }
        } else {
            let opts = crate::merge::RunOptions::simple(run.bytewise);
            return crate::merge::run(&mut conns, plan, &opts, out).await;
        }
    }
    failed |= merger.failed();
    Ok((Answer::failed_if(failed), merger.finish()))
}
