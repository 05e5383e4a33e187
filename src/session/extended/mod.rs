//! The extended query protocol: Parse, Bind, Describe, Execute, Close, Flush
//! and Sync, as drivers speak it.
//!
//! Statements live per client. Each server connection prepares them lazily
//! under proxy-made names (a hash of the text and parameter types), so
//! clients share prepared statements on pooled connections. Messages are
//! gathered until Flush or Sync, then run in order on the shard each Bind
//! routes to by the values bound to `$n`; parameter and result formats pass
//! through untouched. Outside a block, a batch whose Binds all reach one shard
//! runs in that shard's own implicit transaction (closed by Sync); a batch
//! reaching several shards runs in a proxy-made block that Sync commits
//! through the coordinator. COPY and INSERT ... SELECT across shards are
//! portals the session runs itself; a COPY FROM STDIN's Execute hands the
//! rest of its batch back to the client reader, where the COPY reads its
//! data (see [`BatchEnd`]).

use std::collections::{HashMap, HashSet};

use bytes::{BufMut, Bytes};

use super::*;
use crate::protocol::{message, put_cstr, take_cstr, Frame};
use crate::router::Bound;

mod bind;
mod fast;
mod merged;
mod portal;
mod segment;
mod staged;
mod wire;

pub(crate) use segment::sync_all;

use crate::executor::reply;
use wire::{bounds, parse_bind, parse_parse, read_i32};

/// A statement the client prepared.
pub(super) struct ClientStmt {
    sql: String,
    /// Parameter types from Parse (0 = unspecified).
    types: Vec<u32>,
    /// Parameter types a server reported (ParameterDescription), when known.
    described: Option<Vec<u32>>,
    /// The name it is prepared under on server connections.
    backend: String,
    /// It may change session settings unseen (`router::may_change_settings`).
    risky: bool,
    /// Its analysis takes a snapshot (see [`analysis_takes_snapshot`]).
    snapshot: bool,
    /// A `LOCK`: what it holds cannot be undone, so the block's level is
    /// fixed once it ran.
    lock: bool,
    /// It takes no snapshot in PostgreSQL (see [`Extended::free_now`]).
    free: bool,
}

enum PortalKind {
    Single {
        shard: ShardId,
        write: Writes,
    },
    Multi {
        shards: Vec<ShardId>,
        merge: Merge,
        write: Writes,
        /// A split `INSERT`: each shard's rows' positions in the client's
        /// `VALUES`, so `RETURNING` rows go back in that order.
        order: Option<Vec<Vec<usize>>>,
        /// consistent_reads: a SELECT proven read-only, whose snapshot
        /// each shard took at Bind: its Execute takes no fence.
        at_bind: bool,
    },
    /// A cross-shard read the proxy merges: bound on every shard to the
    /// plan's statement with text results.
    Merged {
        shards: Vec<ShardId>,
        plan: std::sync::Arc<crate::merge::MergePlan>,
        /// The client's result format codes.
        formats: Vec<i16>,
    },
    /// A statement the proxy refused at Bind. Its name stays taken until
    /// the portal would have ended (PostgreSQL would have bound it); using
    /// it repeats the refusal.
    Refused(RouteError),
    /// A statement the session runs itself, not one shard: transaction
    /// control, a setting, a COPY across shards (or one that reads the
    /// client's CopyData) or an INSERT ... SELECT carried out as a COPY.
    /// (Describe answers NoData, even in a failed block, as PostgreSQL
    /// does for these.)
    Control {
        sql: String,
        plan: Plan,
        /// It ran: PostgreSQL runs a utility portal once.
        done: bool,
    },
}

/// Extended-protocol state of a session.
#[derive(Default)]
pub(super) struct Extended {
    stmts: HashMap<String, ClientStmt>,
    portals: HashMap<String, PortalKind>,
    /// How many savepoints were open when each portal was bound: rolling
    /// back to one drops the portals made since, as in PostgreSQL.
    depths: HashMap<String, usize>,
    /// Portals bound to SQL `EXECUTE` on shards: the client's statement
    /// name and its name there, looked up again when the portal runs (as
    /// PostgreSQL finds the statement only then).
    executes: HashMap<String, (String, String)>,
    /// Multi-shard portals executed with a row limit: their merged rows wait
    /// here for the client's next Executes (the shards ran to the end).
    buffered: HashMap<String, merged::Buffered>,
    /// Messages since the last Flush/Sync, not yet run.
    batch: Vec<Frame>,
    /// Outside a block: the one connection this Sync segment uses.
    seg: Option<PooledConn>,
    /// Something that may write ran on `seg` in this segment.
    seg_wrote: Writes,
    /// The segment failed: `seg`'s transaction must roll back at Sync even
    /// if its shard saw no error (the proxy refused something).
    seg_abort: bool,
    /// An error happened: skip messages until Sync, as PostgreSQL does.
    skipping: bool,
    /// The statement being bound may change settings unseen: the
    /// connections it runs on are reset before another client gets them,
    /// and the client learns them from its connection.
    risky_now: bool,
    /// Whether the segment's mode (shard's implicit transaction, or
    /// proxy-made block) has been chosen.
    decided: bool,
    /// A Parse in this segment took a snapshot (see `took_snapshot`).
    snapshot: bool,
    /// consistent_reads: the message being run is a Bind whose portal's
    /// Execute comes next in this batch (past Describes only).
    executed_next: bool,
    /// consistent_reads: the fence hold of a multi-shard portal's Binds,
    /// kept for that portal's Execute, next in the batch. Never kept past
    /// the batch: the fence is not held while the client is waited for.
    carried: Option<(String, super::consistent::Hold)>,
    /// consistent_reads: the hold of the Binds being sent, so each shard's
    /// connection gets a share the fence's stall watcher can see.
    binding: Option<super::consistent::Hold>,
    /// The message being run binds or describes a `LOCK` or `SHOW`: a
    /// shard joining a block for it takes no snapshot first (see
    /// [`Session::exec_in_block_as`]).
    free_now: bool,
}

/// How running a batch of messages ended.
enum BatchEnd {
    /// Every message ran, or was skipped after an error.
    Ran,
    /// An Execute started a COPY FROM STDIN: the messages after it and the
    /// Flush or Sync that ran the batch went back to the client's reader
    /// (the COPY reads its data there, ignoring Flush and Sync as
    /// PostgreSQL does; what it leaves runs after it).
    HandedBack,
}

/// Where a connection taken for a message came from, so it goes back there.
enum Slot {
    Segment,
    Participant { wrote: Writes },
}

use crate::protocol::FLUSH;
/// A batch this long runs before Flush/Sync arrives, bounding memory.
const MAX_BATCH: usize = 1000;

/// Whether analysing `sql` (at Parse, or at a Bind without parameters)
/// takes a snapshot: PostgreSQL's `analyze_requires_snapshot`, true for
/// plannable statements and those that contain one (`DECLARE`, `EXPLAIN`,
/// `CREATE TABLE ... AS`), not for utility statements such as `SHOW`.
pub(super) fn analysis_takes_snapshot(sql: &str) -> bool {
    // One word decides but for CREATE (read per Parse: no more words than that).
    let words = router::leading_words(sql, 1);
    match words.first().map(String::as_str) {
        Some(
            "select" | "insert" | "update" | "delete" | "merge" | "values" | "table" | "with"
            | "declare" | "explain",
        ) => true,
        // `SELECT` in parentheses.
        None => sql.trim_start().starts_with('('),
        Some("create") => {
            let words = router::leading_words(sql, 64);
            words.iter().take(8).any(|w| w == "table") && words.iter().any(|w| w == "as")
        }
        _ => false,
    }
}

fn malformed(what: &str) -> Error {
    Error::Client(ClientError::Protocol(format!("malformed {what} message")))
}

fn backend_name(sql: &str, types: &[u32]) -> String {
    let h = crate::protocol::fnv1a(
        sql.bytes()
            .chain(types.iter().flat_map(|t| t.to_be_bytes())),
    );
    format!("pieskieo_{h:016x}_{}", sql.len())
}

impl Extended {
    /// A Sync segment is under way (messages queued or a shard in use).
    pub(super) fn busy(&self) -> bool {
        !self.batch.is_empty() || self.seg.is_some()
    }

    /// Messages wait to be run (at the next Flush or Sync).
    pub(super) fn gathering(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Portals end with their transaction.
    pub(super) fn drop_portals(&mut self) {
        self.portals.clear();
        self.buffered.clear();
        self.depths.clear();
    }

    /// `ROLLBACK TO` the savepoint at `index`: the portals bound since are
    /// gone. `RELEASE` of it: they belong to the enclosing level now.
    pub(super) fn savepoint_ended(&mut self, index: usize, rolled_back: bool) {
        let since: Vec<String> = self
            .depths
            .iter()
            .filter(|(_, d)| **d > index)
            .map(|(n, _)| n.clone())
            .collect();
        for name in since {
            if rolled_back {
                self.portals.remove(&name);
                self.buffered.remove(&name);
                self.depths.remove(&name);
            } else {
                self.depths.insert(name, index);
            }
        }
    }

    /// A COMMIT or ROLLBACK outside a block ended the segment's own
    /// transaction; the next statement starts another, with no snapshot.
    pub(super) fn new_transaction(&mut self) {
        self.snapshot = false;
    }

    /// A Parse of this segment took a snapshot (outside a block, in the
    /// segment's own transaction, which a BEGIN would keep).
    pub(super) fn took_snapshot(&self) -> bool {
        self.snapshot
    }

    /// The segment failed: its shard's transaction rolls back at Sync.
    pub(super) fn abort_segment(&mut self) {
        self.seg_abort = true;
    }

    /// The connection this Sync segment holds, if any.
    pub(super) fn segment(&self) -> Option<&ServerConn> {
        self.seg.as_deref()
    }
}

impl ClientStmt {
    /// A statement as the client wrote it, with its server-side name.
    fn new(sql: &str, types: Vec<u32>) -> ClientStmt {
        ClientStmt {
            backend: backend_name(sql, &types),
            risky: router::may_change_settings(sql),
            snapshot: analysis_takes_snapshot(sql),
            lock: router::first_word_in(sql, &["lock"]),
            free: super::consistent::snapshot_free(sql),
            sql: sql.to_string(),
            types,
            described: None,
        }
    }

    /// Another text of the same meaning (an `INSERT` given its column
    /// list): prepared on shards under its own name from now on.
    fn set_sql(&mut self, sql: &str) {
        let fresh = ClientStmt::new(sql, std::mem::take(&mut self.types));
        *self = ClientStmt {
            described: self.described.take(),
            ..fresh
        };
    }

    /// How many parameters PostgreSQL gives the statement: those a server
    /// described, else the most of those declared and the `$n` named.
    fn param_count(&self) -> usize {
        match &self.described {
            Some(d) => d.len(),
            None => self
                .types
                .len()
                .max(router::max_param(&self.sql).unwrap_or(0)),
        }
    }

    fn param_types(&self) -> &[u32] {
        self.described.as_deref().unwrap_or(&self.types)
    }

    fn parse_message(&self) -> Bytes {
        message(b'P', |b| {
            put_cstr(b, &self.backend);
            put_cstr(b, &self.sql);
            b.put_i16(self.types.len() as i16);
            for t in &self.types {
                b.put_u32(*t);
            }
        })
    }

    fn plan(&self, shared: &Shared, params: &[Bound]) -> Result<Plan, RouteError> {
        plan_text(&self.sql, shared, params)
    }
}

/// Decodes a client message body as every extended-protocol message type
/// (fuzzing): none may panic on any bytes.
pub(crate) fn fuzz_messages(body: &[u8]) {
    let _ = parse_parse(body);
    let _ = wire::result_formats(body);
    if let Some(b) = parse_bind(body) {
        let _ = bounds(&b, &[20, 23, 21, 25, 2950, 0]);
        let _ = b.subset(&[0, 2, 1, 7], b.results);
        let _ = wire::result_formats(b.results);
    }
}

/// Whether `bind`'s portal is executed by the next message of `rest` but
/// Describes (a driver's Bind, Describe portal, Execute).
fn executed_next(bind: &Frame, rest: &[Frame]) -> bool {
    let Some(portal) = parse_bind(bind.body()).map(|b| b.portal) else {
        return false;
    };
    match rest.iter().find(|f| f.tag != b'D') {
        Some(f) if f.tag == b'E' => take_cstr(f.body()).is_some_and(|(p, _)| p == portal),
        _ => false,
    }
}

/// Plans statement text with bound parameters (an empty statement runs anywhere).
fn plan_text(sql: &str, shared: &Shared, params: &[Bound]) -> Result<Plan, RouteError> {
    if sql.trim().is_empty() {
        return Ok(Plan::Forward {
            route: Route::Any,
            write: Writes::No,
        });
    }
    shared.plan_bound(sql, params)
}

impl Session {
    /// An extended-protocol message arrived. `Err` ends the session.
    pub(super) async fn on_extended(&mut self, f: Frame) -> Io {
        match f.tag {
            b'S' => {
                if self.fast_segment().await? {
                    return Ok(());
                }
                match self.run_batch(Some(f)).await? {
                    BatchEnd::Ran => self.sync().await,
                    BatchEnd::HandedBack => Ok(()),
                }
            }
            b'H' => self.run_batch(Some(f)).await.map(|_| ()),
            _ => {
                self.ext.batch.push(f);
                if self.ext.batch.len() >= MAX_BATCH {
                    self.run_batch(None).await?;
                }
                Ok(())
            }
        }
    }

    /// Runs the messages gathered so far; `trigger`: the Flush or Sync
    /// that asked for it (not yet acted on).
    async fn run_batch(&mut self, mut trigger: Option<Frame>) -> std::io::Result<BatchEnd> {
        let batch = std::mem::take(&mut self.ext.batch);
        // The mode is chosen at the segment's first Bind: Parse and Describe
        // alone write nothing.
        let binds = batch.iter().any(|f| f.tag == b'B');
        // consistent_reads: a REPEATABLE READ segment that a Flush (or a
        // full batch) cuts may reach another shard after this batch took
        // its snapshot on one: it is a block from its first Bind, whose
        // snapshot is taken on every shard at once. Until a statement ran
        // in it, each batch is looked at so (one of only `SET`s decides
        // nothing).
        let keeps = self.segment_keeps_snapshot();
        let open = keeps && trigger.as_ref().is_none_or(|f| f.tag != b'S');
        if (!self.ext.decided || open) && binds && self.block == Block::Default {
            self.ext.decided = true;
            if self.batch_spans_shards(&batch, keeps, open) && !self.ext.seg_wrote.may() {
                // A connection used only to describe statements leaves the segment.
                match self.close_segment().await {
                    Ok(Some(e)) => self.write(&e.bytes).await?,
                    Ok(None) => {}
                    Err(e) => {
                        self.error(e).await?;
                    }
                }
                self.transition(Event::StartImplicit, None);
                if let Some(t) = self.txn() {
                    t.segment = true;
                }
            }
        }
        let mut rest = batch.into_iter();
        let end = self.run_messages(&mut rest, &mut trigger).await;
        // A hold kept for an Execute that did not come (an error, a COPY)
        // ends with the batch.
        self.ext.carried = None;
        self.ext.binding = None;
        end
    }

    async fn run_messages(
        &mut self,
        rest: &mut std::vec::IntoIter<Frame>,
        trigger: &mut Option<Frame>,
    ) -> std::io::Result<BatchEnd> {
        while let Some(f) = rest.next() {
            if self.ext.skipping {
                continue;
            }
            self.ext.executed_next = f.tag == b'B' && executed_next(&f, rest.as_slice());
            // What the client sent after an Execute that starts a COPY FROM
            // STDIN is the COPY's to read, as in PostgreSQL.
            let handed = self.starts_copy_in(&f)
                && match self.frames.as_mut() {
                    Some(frames) => {
                        frames.read_again(rest.by_ref().chain(trigger.take()));
                        true
                    }
                    None => false,
                };
            let ok = match self.ext_message(&f).await {
                Ok(ok) => ok,
                Err(Fatal::Client(e)) => return Err(e),
                Err(Fatal::Protocol(e)) => {
                    warn!(peer = %self.peer, error = %e, "protocol violation");
                    send_fatal(&mut self.out, &e).await;
                    return Err(std::io::Error::other("protocol violation"));
                }
            };
            if !ok {
                self.ext.skipping = true;
                self.ext.carried = None;
                self.ext.binding = None;
                self.reap().await;
            }
            if handed {
                return Ok(BatchEnd::HandedBack);
            }
        }
        Ok(BatchEnd::Ran)
    }

    /// Whether `f` is an Execute of a portal that reads the client's CopyData.
    fn starts_copy_in(&self, f: &Frame) -> bool {
        if f.tag != b'E' {
            return false;
        }
        let Some((portal, _)) = take_cstr(f.body()) else {
            return false;
        };
        matches!(
            self.ext.portals.get(portal),
            Some(PortalKind::Control {
                plan: Plan::CopyIn(_),
                done: false,
                ..
            })
        )
    }

    /// Whether the batch's Binds reach more than one shard (or write to
    /// several): then it needs a block of its own to be atomic. `keeps`:
    /// the segment keeps one snapshot (consistent_reads, REPEATABLE READ),
    /// so a `BEGIN` after a statement keeps that statement's snapshot in a
    /// block that may read every shard; `open`: besides, the segment goes
    /// on past this batch, so a statement of one shard counts as one of
    /// several (a later batch may reach the others).
    fn batch_spans_shards(&self, batch: &[Frame], keeps: bool, open: bool) -> bool {
        let mut parsed: HashMap<String, (String, Vec<u32>)> = HashMap::new();
        let mut shards = HashSet::new();
        for f in batch {
            match f.tag {
                b'P' => {
                    let Some((name, sql, types)) = parse_parse(f.body()) else {
                        continue;
                    };
                    parsed.insert(name.to_string(), (sql.to_string(), types));
                }
                b'B' => {
                    let Some(b) = parse_bind(f.body()) else {
                        continue;
                    };
                    let (sql, types) = match (parsed.get(b.stmt), self.ext.stmts.get(b.stmt)) {
                        (Some((sql, t)), _) => (sql.clone(), t.clone()),
                        (None, Some(s)) => (s.sql.clone(), s.param_types().to_vec()),
                        (None, None) => continue,
                    };
                    if sql.trim().is_empty() {
                        continue;
                    }
                    match plan_text(&sql, &self.shared, &bounds(&b, &types)) {
                        Ok(Plan::Forward {
                            route: Route::One(_) | Route::Any,
                            ..
                        }) if open => return true,
                        Ok(Plan::Forward {
                            route: Route::One(s),
                            ..
                        }) => {
                            shards.insert(s);
                        }
                        // A COPY TO reads where it runs (outside a block,
                        // on connections of its own).
                        Ok(Plan::Forward {
                            route: Route::Any, ..
                        })
                        | Ok(Plan::CopyOut(_))
                        | Err(_) => {}
                        Ok(
                            Plan::Forward { .. }
                            | Plan::Merge { .. }
                            | Plan::Replicate
                            | Plan::NeedKeys(_)
                            | Plan::NeedColumns(_)
                            | Plan::Staged(_)
                            | Plan::Split { .. }
                            | Plan::CopyIn(_)
                            | Plan::InsertSelect { .. },
                        ) => return true,
                        // A session `SET` leaves the segment as it is.
                        Ok(Plan::Set(router::SetCommand::Set(_))) if keeps => {}
                        Ok(_) if keeps && !shards.is_empty() => return true,
                        // Transaction control changes the mode by itself.
                        Ok(_) => return false,
                    }
                }
                _ => {}
            }
        }
        shards.len() > 1
    }

    fn any_shard(&mut self) -> ShardId {
        let default = self.shared.map().default_shard;
        if let Some(s) = self.block_any_shard() {
            return s;
        }
        if self.txn.is_some() {
            return default;
        }
        self.ext.seg.as_ref().map(|c| c.shard).unwrap_or(default)
    }

    /// Runs one message. `Ok(false)`: it failed and the client was told.
    async fn ext_message(&mut self, f: &Frame) -> Result<bool, Fatal> {
        let body = f.body();
        // (Set again by a Bind or a statement's Describe.)
        self.ext.free_now = false;
        match f.tag {
            b'P' => self.ext_parse(body).await,
            b'B' => self.ext_bind(body).await,
            b'D' => {
                let (&kind, r) = body
                    .split_first()
                    .ok_or_else(|| Fatal::Protocol(malformed("Describe")))?;
                let (name, _) =
                    take_cstr(r).ok_or_else(|| Fatal::Protocol(malformed("Describe")))?;
                self.ext_describe(kind, name).await
            }
            b'E' => {
                let (portal, r) =
                    take_cstr(body).ok_or_else(|| Fatal::Protocol(malformed("Execute")))?;
                let (max, _) = read_i32(r).ok_or_else(|| Fatal::Protocol(malformed("Execute")))?;
                self.ext_execute(portal, max).await
            }
            b'C' => {
                let (&kind, r) = body
                    .split_first()
                    .ok_or_else(|| Fatal::Protocol(malformed("Close")))?;
                let (name, _) = take_cstr(r).ok_or_else(|| Fatal::Protocol(malformed("Close")))?;
                self.ext_close(kind, name).await
            }
            // CopyData, CopyDone and CopyFail outside COPY (queued with
            // the batch): ignored, as PostgreSQL does.
            b'd' | b'c' | b'f' => Ok(true),
            _ => Ok(self
                .error(Error::Unsupported(
                    "the function call protocol is not supported".into(),
                ))
                .await?),
        }
    }

    /// Parse or Bind took the transaction's snapshot: the block's, or the
    /// segment's that a BEGIN would keep.
    fn took_snapshot(&mut self) {
        match self.txn.as_mut() {
            Some(t) => t.snapshot = true,
            None => self.ext.snapshot = true,
        }
    }

    async fn ext_parse(&mut self, body: &[u8]) -> Result<bool, Fatal> {
        let (name, sql, types) =
            parse_parse(body).ok_or_else(|| Fatal::Protocol(malformed("Parse")))?;
        if !name.is_empty() && self.ext.stmts.contains_key(name) {
            return Ok(self
                .error(Error::Name(NameError::StatementExists(name.to_string())))
                .await?);
        }
        if router::split_statements(sql).len() > 1 {
            let e = RouteError::Syntax(
                "cannot insert multiple commands into a prepared statement".into(),
            );
            return Ok(self.error(Error::Route(e)).await?);
        }
        let plan = self.shared.plan(sql).ok();
        // Parse analysis takes the transaction's snapshot for anything not
        // utility: the block's, or the segment's that a BEGIN would keep.
        let stmt = ClientStmt::new(sql, types);
        if stmt.snapshot {
            self.took_snapshot();
        }
        if self.block == Block::Failed && self.aborted_block(plan.as_ref()) {
            return Ok(self.error(Error::Txn(TxnMisuse::Aborted)).await?);
        }
        self.ext.stmts.insert(name.to_string(), stmt);
        self.write(&protocol::parse_complete()).await?;
        Ok(true)
    }

    /// PostgreSQL refuses every message of a failed block with 25P02 except
    /// those of `COMMIT`, `ROLLBACK` and `ROLLBACK TO` (`IsTransactionExitStmt`).
    fn aborted_block(&self, plan: Option<&Plan>) -> bool {
        self.block == Block::Failed
            && !matches!(
                plan,
                Some(Plan::Commit | Plan::Rollback | Plan::RollbackTo(_))
            )
    }
}

/// What ends a session from inside the extended protocol.
pub(super) enum Fatal {
    Client(std::io::Error),
    Protocol(Error),
}

impl From<std::io::Error> for Fatal {
    fn from(e: std::io::Error) -> Self {
        Fatal::Client(e)
    }
}
