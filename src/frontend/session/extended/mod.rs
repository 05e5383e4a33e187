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
//! through the coordinator.

use std::collections::{HashMap, HashSet};

use bytes::{BufMut, Bytes};

use super::*;
use crate::protocol::{message, put_cstr, take_cstr, Frame};
use crate::router::Bound;

mod fast;
mod portal;
mod wire;

use wire::{bounds, parse_bind, parse_parse, read_i32, reply};

/// A statement the client prepared.
pub(super) struct ClientStmt {
    sql: String,
    /// Parameter types from Parse (0 = unspecified).
    types: Vec<u32>,
    /// Parameter types a server reported (ParameterDescription), when known.
    described: Option<Vec<u32>>,
    /// The name it is prepared under on server connections.
    backend: String,
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
    },
    /// A cross-shard read the proxy merges: bound on every shard to the
    /// plan's statement with text results.
    Merged {
        shards: Vec<ShardId>,
        plan: std::sync::Arc<crate::merge::MergePlan>,
        /// The client's result format codes.
        formats: Vec<i16>,
    },
    /// Transaction control or a setting: run by the session, not a shard.
    Control {
        sql: String,
        plan: Plan,
    },
}

impl PortalKind {
    fn uses(&self, shard: ShardId) -> bool {
        match self {
            PortalKind::Single { shard: s, .. } => *s == shard,
            PortalKind::Multi { shards, .. } | PortalKind::Merged { shards, .. } => {
                shards.contains(&shard)
            }
            PortalKind::Control { .. } => false,
        }
    }
}

/// Extended-protocol state of a session.
#[derive(Default)]
pub(super) struct Extended {
    stmts: HashMap<String, ClientStmt>,
    portals: HashMap<String, PortalKind>,
    /// Messages since the last Flush/Sync, not yet run.
    batch: Vec<Frame>,
    /// Outside a block: the one connection this Sync segment uses.
    seg: Option<PooledConn>,
    /// Something that may write ran on `seg` in this segment.
    seg_wrote: bool,
    /// An error happened: skip messages until Sync, as PostgreSQL does.
    skipping: bool,
    /// This segment runs in a proxy-made block, committed at Sync.
    implicit: bool,
    /// Whether the segment's mode (shard's implicit transaction, or
    /// proxy-made block) has been chosen.
    decided: bool,
}

/// Where a connection taken for a message came from, so it goes back there.
enum Slot {
    Segment,
    Participant { wrote: Writes },
}

pub(super) const FLUSH: [u8; 5] = [b'H', 0, 0, 0, 4];
/// A batch this long runs before Flush/Sync arrives, bounding memory.
const MAX_BATCH: usize = 1000;

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
        !self.batch.is_empty() || self.seg.is_some() || self.implicit
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
            sql: sql.to_string(),
            types,
            described: None,
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
                self.run_batch().await?;
                self.sync().await
            }
            b'H' => self.run_batch().await,
            _ => {
                self.ext.batch.push(f);
                if self.ext.batch.len() >= MAX_BATCH {
                    self.run_batch().await?;
                }
                Ok(())
            }
        }
    }

    async fn run_batch(&mut self) -> Io {
        let batch = std::mem::take(&mut self.ext.batch);
        // The mode is chosen at the segment's first Bind: Parse and Describe
        // alone write nothing.
        let binds = batch.iter().any(|f| f.tag == b'B');
        if !self.ext.decided && binds && matches!(self.state, TxnState::Idle) {
            self.ext.decided = true;
            if self.batch_spans_shards(&batch) && !self.ext.seg_wrote {
                // A connection used only to describe statements leaves the segment.
                if let Err(e) = self.close_segment().await {
                    self.error(e).await?;
                }
                self.state = TxnState::InTxn(Txn::new("BEGIN"));
                self.ext.implicit = true;
            }
        }
        for f in batch {
            if self.ext.skipping {
                continue;
            }
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
            }
        }
        Ok(())
    }

    /// Whether the batch's Binds reach more than one shard (or write to
    /// several): then it needs a block of its own to be atomic.
    fn batch_spans_shards(&self, batch: &[Frame]) -> bool {
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
                            route: Route::One(s),
                            ..
                        }) => {
                            shards.insert(s);
                        }
                        Ok(Plan::Forward {
                            route: Route::Any, ..
                        })
                        | Err(_) => {}
                        Ok(
                            Plan::Forward { .. }
                            | Plan::Merge { .. }
                            | Plan::Replicate
                            | Plan::Split { .. },
                        ) => return true,
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
        if let Some(t) = self.txn() {
            return t.participants.first().map(|p| p.shard()).unwrap_or(default);
        }
        self.ext.seg.as_ref().map(|c| c.shard).unwrap_or(default)
    }

    /// A connection to `shard` for this message: the block's participant
    /// (enlisting it), or the segment's connection outside a block.
    async fn take_conn(&mut self, shard: ShardId) -> Result<(Slot, PooledConn), Error> {
        if let Some(t) = self.txn() {
            if let Some(pos) = t.participants.iter().position(|p| p.shard() == shard) {
                let p = t.participants.swap_remove(pos);
                return Ok((Slot::Participant { wrote: p.wrote }, p.conn));
            }
            let mut head = vec![t.begin.clone()];
            head.extend(t.prelude.iter().cloned());
            let mut conn = self.checkout(shard).await?;
            for q in head {
                if let Err(e) = conn.simple(&q).await? {
                    return Err(Error::Backend(BackendError::Protocol {
                        shard,
                        message: format!("joining the transaction failed: {}", e.message),
                    }));
                }
            }
            return Ok((Slot::Participant { wrote: Writes::No }, conn));
        }
        match self.ext.seg.take() {
            Some(c) if c.shard == shard => Ok((Slot::Segment, c)),
            Some(other) if self.ext.seg_wrote => {
                self.ext.seg = Some(other);
                Err(Error::Unsupported(
                    "this extended-protocol batch wrote on one shard and then reached another after a Flush; send the whole batch before Sync, or use BEGIN".into(),
                ))
            }
            Some(other) if self.ext.portals.values().any(|p| p.uses(other.shard)) => {
                self.ext.seg = Some(other);
                Err(Error::Unsupported(
                    "this extended-protocol batch has a portal open on one shard and reached another after a Flush; send the whole batch before Sync, or use BEGIN".into(),
                ))
            }
            Some(other) => {
                // Only reads so far: end that shard's part of the segment and move on.
                self.ext.seg = Some(other);
                self.close_segment().await?;
                Ok((Slot::Segment, self.checkout(shard).await?))
            }
            None => Ok((Slot::Segment, self.checkout(shard).await?)),
        }
    }

    fn put_conn(&mut self, slot: Slot, conn: PooledConn, wrote_now: Writes) {
        match slot {
            Slot::Segment => {
                self.ext.seg_wrote |= wrote_now.may();
                self.ext.seg = Some(conn);
            }
            Slot::Participant { wrote } => match self.txn() {
                Some(t) => t.participants.push(Participant {
                    conn,
                    wrote: wrote | wrote_now,
                }),
                None => drop(conn),
            },
        }
    }

    /// Runs one message. `Ok(false)`: it failed and the client was told.
    async fn ext_message(&mut self, f: &Frame) -> Result<bool, Fatal> {
        let body = f.body();
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
            _ => Ok(self
                .error(Error::Unsupported(
                    "the function call protocol is not supported".into(),
                ))
                .await?),
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
        self.ext
            .stmts
            .insert(name.to_string(), ClientStmt::new(sql, types));
        self.write(&message(b'1', |_| {})).await?;
        Ok(true)
    }

    fn aborted_block(&self, plan: Option<&Plan>) -> bool {
        matches!(self.state, TxnState::Failed(_))
            && !matches!(
                plan,
                Some(Plan::Commit | Plan::Rollback | Plan::RollbackTo(_))
            )
    }

    async fn ext_bind(&mut self, body: &[u8]) -> Result<bool, Fatal> {
        let b = parse_bind(body).ok_or_else(|| Fatal::Protocol(malformed("Bind")))?;
        let Some(stmt) = self.ext.stmts.get(b.stmt) else {
            return Ok(self
                .error(Error::Name(NameError::NoStatement(b.stmt.to_string())))
                .await?);
        };
        let plan = stmt.plan(&self.shared, &bounds(&b, stmt.param_types()));
        if self.aborted_block(plan.as_ref().ok()) {
            return Ok(self.error(Error::Txn(TxnMisuse::Aborted)).await?);
        }
        let plan = match plan {
            Ok(p) => p,
            Err(e) => return Ok(self.error(Error::Route(e)).await?),
        };
        let n = self.shared.map().shards;
        let (shards, merge, write) = match plan {
            Plan::Forward {
                route: Route::Any,
                write,
            } => (vec![self.any_shard()], Merge::Union, write),
            Plan::Forward { route, write } => (route.shards(n), Merge::Union, write),
            Plan::Replicate => (route_all(n), Merge::Copies, Writes::Yes),
            Plan::Merge { route, plan } => {
                // Each shard runs the rewritten statement with its share of
                // the parameters, in text: the proxy encodes the merged rows.
                let Some(formats) = wire::result_formats(b.results) else {
                    return Err(Fatal::Protocol(malformed("Bind")));
                };
                let shards = route.shards(n);
                let parts: Vec<(ShardId, &str, &[usize])> = shards
                    .iter()
                    .map(|s| (*s, plan.sql.as_str(), plan.params.as_slice()))
                    .collect();
                let declared = stmt.types.clone();
                if !self
                    .bind_derived(&parts, &declared, &b, Some(&[0, 0]))
                    .await?
                {
                    return Ok(false);
                }
                let kind = PortalKind::Merged {
                    shards,
                    plan,
                    formats,
                };
                self.ext.portals.insert(b.portal.to_string(), kind);
                return Ok(true);
            }
            Plan::Split { parts } => {
                // Each shard gets its rows as a statement of its own, bound to
                // its share of the client's parameters.
                let declared = stmt.types.clone();
                let derived: Vec<(ShardId, &str, &[usize])> = parts
                    .iter()
                    .map(|p| (p.shard, p.sql.as_str(), p.params.as_slice()))
                    .collect();
                if !self.bind_derived(&derived, &declared, &b, None).await? {
                    return Ok(false);
                }
                let shards = parts.iter().map(|p| p.shard).collect();
                self.ext.portals.insert(
                    b.portal.to_string(),
                    PortalKind::Multi {
                        shards,
                        merge: Merge::Union,
                        write: Writes::Yes,
                    },
                );
                return Ok(true);
            }
            control => {
                let sql = stmt.sql.clone();
                self.ext.portals.insert(
                    b.portal.to_string(),
                    PortalKind::Control { sql, plan: control },
                );
                self.write(&message(b'2', |_| {})).await?;
                return Ok(true);
            }
        };
        let portal = b.portal.to_string();
        let stmt_name = b.stmt.to_string();
        let rest = Bytes::copy_from_slice(b.rest);
        for (i, shard) in shards.iter().enumerate() {
            if !self
                .bind_on(*shard, &stmt_name, &portal, &rest, i == 0)
                .await?
            {
                return Ok(false);
            }
        }
        let kind = match shards.as_slice() {
            [one] => PortalKind::Single { shard: *one, write },
            _ => PortalKind::Multi {
                shards,
                merge,
                write,
            },
        };
        self.ext.portals.insert(portal, kind);
        Ok(true)
    }

    /// Binds the client's portal on each shard to a statement the router
    /// derived from the client's: `(shard, sql, params)` where the derived
    /// `$k` is the client's parameter `params[k - 1]`. `results` replaces the
    /// client's result formats. The first BindComplete goes to the client.
    async fn bind_derived(
        &mut self,
        parts: &[(ShardId, &str, &[usize])],
        declared: &[u32],
        b: &wire::BindMsg<'_>,
        results: Option<&[u8]>,
    ) -> std::io::Result<bool> {
        for (i, (shard, sql, params)) in parts.iter().enumerate() {
            let types: Vec<u32> = params
                .iter()
                .map(|&p| declared.get(p).copied().unwrap_or(0))
                .collect();
            let derived = ClientStmt::new(sql, types);
            let rest = b.subset(params, results.unwrap_or(b.results));
            let (parse, backend) = (derived.parse_message(), derived.backend);
            if !self
                .bind_statement(*shard, &parse, &backend, b.portal, &rest, i == 0)
                .await?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Binds `portal` on a shard, preparing the statement there first if needed.
    async fn bind_on(
        &mut self,
        shard: ShardId,
        stmt: &str,
        portal: &str,
        rest: &[u8],
        forward: bool,
    ) -> std::io::Result<bool> {
        let Some(s) = self.ext.stmts.get(stmt) else {
            return Ok(false);
        };
        let (parse, backend) = (s.parse_message(), s.backend.clone());
        self.bind_statement(shard, &parse, &backend, portal, rest, forward)
            .await
    }

    /// Binds `portal` on a shard to the statement `parse` creates there as `backend`.
    async fn bind_statement(
        &mut self,
        shard: ShardId,
        parse: &[u8],
        backend: &str,
        portal: &str,
        rest: &[u8],
        forward: bool,
    ) -> std::io::Result<bool> {
        let (slot, mut conn) = match self.take_conn(shard).await {
            Ok(x) => x,
            Err(e) => return self.error(e).await,
        };
        let bind = message(b'B', |b| {
            put_cstr(b, portal);
            put_cstr(b, backend);
            b.put_slice(rest);
        });
        let r = self
            .prepare_and_send(&mut conn, parse, backend, &[&bind])
            .await;
        let r = match r {
            Ok(true) => reply(&mut conn, &mut self.out, b"2", forward)
                .await
                .map(|x| x.0),
            other => other,
        };
        self.put_conn(slot, conn, Writes::No);
        self.finish_exec(r.map(|ok| !ok)).await
    }

    /// Sends Parse if this connection lacks the statement, then `msgs` and a
    /// Flush; reads the Parse's answer. `Ok(false)`: the Parse failed (told).
    async fn prepare_and_send(
        &mut self,
        conn: &mut ServerConn,
        parse: &[u8],
        backend: &str,
        msgs: &[&[u8]],
    ) -> Result<bool, ExecError> {
        let fresh = !conn.prepared.contains(backend);
        if fresh {
            conn.send_extended(parse).await?;
        }
        for m in msgs {
            conn.send_extended(m).await?;
        }
        conn.send_extended(&FLUSH).await?;
        conn.flush().await?;
        if fresh {
            let (ok, _) = reply(conn, &mut self.out, b"1", false).await?;
            if !ok {
                return Ok(false);
            }
            conn.prepared.insert(backend.to_string());
        }
        Ok(true)
    }

    /// Ends the segment's use of a shard's implicit transaction.
    async fn sync_segment(&mut self) -> std::io::Result<bool> {
        match self.close_segment().await {
            Ok(()) => Ok(true),
            Err(e) => self.error(e).await,
        }
    }

    async fn close_segment(&mut self) -> Result<(), Error> {
        self.ext.seg_wrote = false;
        let Some(mut conn) = self.ext.seg.take() else {
            return Ok(());
        };
        conn.send_sync().await?;
        conn.flush().await?;
        executor::drain(&mut conn).await?;
        Ok(())
    }

    /// Sync: ends the segment (committing a proxy-made block through the
    /// coordinator) and reports ReadyForQuery.
    async fn sync(&mut self) -> Io {
        if self.ext.implicit {
            self.ext.implicit = false;
            let failed = self.ext.skipping || matches!(self.state, TxnState::Failed(_));
            if let Some(mut t) = self.end_block() {
                sync_all(&mut t.participants).await;
                let coord = self.shared.coordinator.clone();
                if failed || t.participants.iter().any(|p| p.conn.status == b'E') {
                    coord.rollback(&mut t.participants).await;
                } else {
                    match coord.commit(&mut t.participants).await {
                        CommitOutcome::Committed { warnings } => {
                            for w in warnings {
                                self.write(&commit_notice(&w)).await?;
                            }
                        }
                        failed => self.write(&commit_failure(&failed)).await?,
                    }
                }
            }
        } else if self.ext.seg.is_some() {
            self.sync_segment().await?;
        } else if let Some(t) = self.txn() {
            sync_all(&mut t.participants).await;
            if t.participants.iter().any(|p| p.conn.status == b'E') {
                self.fail();
            }
        }
        if matches!(self.state, TxnState::Idle) {
            self.ext.portals.clear();
        }
        self.ext.skipping = false;
        self.ext.decided = false;
        let rfq = protocol::ready_for_query(self.status_byte());
        self.write(&rfq).await
    }
}

fn route_all(n: u32) -> Vec<ShardId> {
    (0..n).map(ShardId).collect()
}

/// Sends Sync to every participant that has unsynced extended messages.
async fn sync_all(parts: &mut [Participant]) {
    for p in parts.iter_mut() {
        if p.conn.needs_sync() {
            let r = async {
                p.conn.send_sync().await?;
                p.conn.flush().await?;
                executor::drain(&mut p.conn).await
            }
            .await;
            if r.is_err() {
                p.conn.mark_broken();
            }
        }
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
