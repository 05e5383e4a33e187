//! Describe, Execute and Close: answering for statements and portals from the
//! shard(s) a portal was bound on; a portal over several shards merges their rows.

use super::*;
use crate::executor::reply;

/// Describe or Close (`tag`) of a portal.
pub(super) fn portal_message(tag: u8, portal: &str) -> Bytes {
    message(tag, |b| {
        b.put_u8(b'P');
        put_cstr(b, portal);
    })
}

impl Session {
    pub(super) async fn ext_describe(&mut self, kind: u8, name: &str) -> Result<bool, Fatal> {
        if kind == b'S' {
            let Some(s) = self.ext.stmts.get(name) else {
                return Ok(self
                    .error(Error::Name(NameError::NoStatement(name.to_string())))
                    .await?);
            };
            let plan = self.shared.plan(&s.sql);
            // PostgreSQL describes only statements without result columns
            // in a failed block: those the session runs, and those a shard
            // of the block describes without columns.
            let rows = matches!(
                plan,
                Ok(Plan::Forward { .. }
                    | Plan::Merge { .. }
                    | Plan::Split { .. }
                    | Plan::NeedKeys(_)
                    | Plan::NeedColumns(_)
                    | Plan::Staged(_)
                    | Plan::Replicate)
                    | Err(_)
            );
            if self.block == Block::Failed && rows {
                return self.describe_in_failed_block(name).await;
            }
            // Block control and `SET`, which the session runs itself, have
            // no result columns either: described here, in any block. A
            // shard that joined to describe them would take a REPEATABLE
            // READ block's snapshot (and its deadlock tag's) where
            // PostgreSQL takes none.
            let session_runs =
                matches!(&plan, Ok(p) if p.is_block_control() || matches!(p, Plan::Set(_)));
            // SQL `EXECUTE`: the result columns of the statement it names
            // (PostgreSQL's `UtilityTupleDescriptor`), none if there is none.
            let executes = match &plan {
                Ok(Plan::Execute { name, .. }) => Some(
                    self.sql_prepared
                        .get(name)
                        .map_or_else(protocol::no_data, |p| p.columns.clone()),
                ),
                _ => None,
            };
            let failed = self.block == Block::Failed;
            if failed && executes.as_ref().is_some_and(|c| c.first() == Some(&b'T')) {
                return Ok(self.error(Error::Txn(TxnMisuse::Aborted)).await?);
            }
            if failed || session_runs || executes.is_some() {
                let types = s.types.clone();
                self.write(&protocol::parameter_description(&types)).await?;
                let columns = executes.filter(|_| !failed);
                self.write(&columns.unwrap_or_else(protocol::no_data))
                    .await?;
                return Ok(true);
            }
            let (parse, backend) = (s.parse_message(), s.backend.clone());
            // A Parse that takes no snapshot (a utility statement's, which
            // takes it at Execute) joins a shard as a `SHOW` does: the
            // block's snapshot comes with its Bind, not before.
            self.ext.free_now = s.free || !s.snapshot;
            // consistent_reads: the Parse sent with the Describe takes a
            // REPEATABLE READ block's snapshot on its shard (parse
            // analysis), as a Bind does: on every shard at once first.
            if s.snapshot && self.needs_snapshot_everywhere() && !self.snapshot_everywhere().await?
            {
                return Ok(false);
            }
            let describe = message(b'D', |b| {
                b.put_u8(b'S');
                put_cstr(b, &backend);
            });
            let shard = self.any_shard();
            let (slot, mut conn) = match self.take_conn(shard).await {
                Ok(x) => x,
                Err(e) => return Ok(self.error(e).await?),
            };
            let r = match self
                .prepare_and_send(&mut conn, &parse, &backend, &[&describe])
                .await
            {
                Ok(Answer::Succeeded) => reply(&mut conn, &mut self.out, b"Tn", true).await,
                Ok(Answer::Failed) => Ok((Answer::Failed, None)),
                Err(e) => Err(e),
            };
            self.put_conn(slot, conn, Writes::No);
            if let Ok((_, Some(types))) = &r {
                if let Some(s) = self.ext.stmts.get_mut(name) {
                    s.described = Some(types.clone());
                }
            }
            return Ok(self.finish_exec(r.map(|(answer, _)| answer)).await?);
        }
        let shard = match self.ext.portals.get(name) {
            None => {
                return Ok(self
                    .error(Error::Name(NameError::NoPortal(name.to_string())))
                    .await?);
            }
            Some(PortalKind::Control { .. }) => {
                self.write(&protocol::no_data()).await?;
                return Ok(true);
            }
            Some(_) if self.block == Block::Failed => {
                return Ok(self.error(Error::Txn(TxnMisuse::Aborted)).await?);
            }
            Some(PortalKind::Refused(e)) => {
                let e = Error::Route(e.clone());
                return Ok(self.error(e).await?);
            }
            Some(PortalKind::Single { shard, .. }) => *shard,
            Some(PortalKind::Multi { shards, .. }) => shards[0],
            Some(PortalKind::Merged {
                shards,
                plan,
                formats,
            }) => {
                let (shard, plan, formats) = (shards[0], plan.clone(), formats.clone());
                return self.describe_merged(shard, name, &plan, &formats).await;
            }
        };
        self.relay_one(shard, &portal_message(b'D', name), b"Tn", Writes::No)
            .await
    }

    /// Sends one message to `shard` and relays the answer until a message
    /// of one of the `done` types; `wrote`: it may have written.
    async fn relay_one(
        &mut self,
        shard: ShardId,
        msg: &[u8],
        done: &[u8],
        wrote: Writes,
    ) -> Result<bool, Fatal> {
        let (slot, mut conn) = match self.take_conn(shard).await {
            Ok(x) => x,
            Err(e) => return Ok(self.error(e).await?),
        };
        let r = async {
            conn.send_extended(msg).await?;
            conn.send_extended(&FLUSH).await?;
            conn.flush().await?;
            reply(&mut conn, &mut self.out, done, true).await
        }
        .await;
        self.put_conn(slot, conn, wrote);
        Ok(self.finish_exec(r.map(|(answer, _)| answer)).await?)
    }

    pub(super) async fn ext_execute(&mut self, portal: &str, max: i32) -> Result<bool, Fatal> {
        let Some(kind) = self.ext.portals.get(portal) else {
            return Ok(self
                .error(Error::Name(NameError::NoPortal(portal.to_string())))
                .await?);
        };
        let execute = message(b'E', |b| {
            put_cstr(b, portal);
            b.put_i32(max);
        });
        if self.ext.buffered.contains_key(portal) {
            return self.serve_buffered(portal, max).await;
        }
        match kind {
            PortalKind::Refused(_) if self.block == Block::Failed => {
                Ok(self.error(Error::Txn(TxnMisuse::Aborted)).await?)
            }
            PortalKind::Refused(e) => {
                let e = Error::Route(e.clone());
                Ok(self.error(e).await?)
            }
            PortalKind::Control { done: true, .. } => {
                let e = Error::Name(NameError::PortalDone(portal.to_string()));
                Ok(self.error(e).await?)
            }
            PortalKind::Control { sql, plan, .. } => {
                let (sql, plan) = (sql.clone(), plan.clone());
                // A utility portal runs once; the end of a block drops every portal.
                if matches!(plan, Plan::Commit | Plan::Rollback) {
                    self.ext.portals.clear();
                    self.ext.buffered.clear();
                } else if let Some(PortalKind::Control { done, .. }) =
                    self.ext.portals.get_mut(portal)
                {
                    *done = true;
                }
                // What the segment ran on one shard's own transaction becomes
                // part of the block (or is committed or rolled back by it),
                // as PostgreSQL does with its implicit transaction.
                if self.ext.seg.is_some() {
                    let begin = if plan == Plan::Begin {
                        sql.as_str()
                    } else {
                        "BEGIN"
                    };
                    if let Err(e) = self.promote_segment(begin).await {
                        return Ok(self.error(e).await?);
                    }
                } else if self.block == Block::Default
                    && matches!(
                        plan,
                        Plan::Set(router::SetCommand::Local)
                            | Plan::CopyIn(_)
                            | Plan::InsertSelect { .. }
                    )
                {
                    // SET LOCAL holds until Sync: the segment becomes an
                    // implicit block whose shards replay it as they join.
                    // A COPY's rows commit at Sync too, on every shard at
                    // once (the coordinator's commit of that block).
                    self.transition(Event::StartImplicit, None);
                    if let Some(t) = self.txn() {
                        t.segment = true;
                    }
                }
                Ok(self.execute(&sql, Ok(plan)).await?)
            }
            PortalKind::Single { .. } | PortalKind::Multi { .. }
                if !self.statement_still_there(portal) =>
            {
                let (name, _) = self.ext.executes.get(portal).cloned().unwrap_or_default();
                let e = match self.sql_prepared.contains_key(&name) {
                    false => Error::Name(NameError::NoStatement(name)),
                    true => Error::Unsupported(format!(
                        "prepared statement \"{name}\" was prepared again after this portal was bound to an EXECUTE of it; bind the portal again"
                    )),
                };
                Ok(self.error(e).await?)
            }
            PortalKind::Single { shard, write } => {
                let (shard, write) = (*shard, *write);
                // Found: a portal that runs on keeps running (PostgreSQL's
                // ran the statement at its first Execute).
                self.ext.executes.remove(portal);
                self.relay_one(shard, &execute, b"CIs", write).await
            }
            PortalKind::Merged {
                shards,
                plan,
                formats,
            } => {
                let (shards, plan, formats) = (shards.clone(), plan.clone(), formats.clone());
                self.execute_merged(&shards, portal, &plan, &formats, max)
                    .await
            }
            PortalKind::Multi {
                shards,
                merge,
                write,
                order,
                at_bind,
            } => {
                let (shards, merge, write, at_bind) = (shards.clone(), *merge, *write, *at_bind);
                let order = order.clone();
                self.ext.executes.remove(portal);
                // Rows to put in VALUES order are collected first.
                let keep = max > 0 || order.is_some();
                // With a row limit the shards run to the end and the rows
                // wait in the proxy for the client's next Executes.
                let execute = message(b'E', |b| {
                    put_cstr(b, portal);
                    b.put_i32(0);
                });
                let mut taken = match self.take_conns(&shards).await {
                    Ok(t) => t,
                    Err(e) => return Ok(self.error(e).await?),
                };
                // consistent_reads: the Execute's snapshots under the fence
                // (connections first: never held while waiting for a pool).
                let hold = self.execute_hold(portal, taken.len(), at_bind).await;
                if let Err(e) = self.share_taken(&mut taken, hold, write == Writes::No, false) {
                    return Ok(self.error(e).await?);
                }
                let mut merger = Merger::default();
                let mut buf: Vec<u8> = Vec::new();
                let r: Result<(), ExecError> = async {
                    for (_, conn) in taken.iter_mut() {
                        conn.send_extended(&execute).await?;
                        conn.send_extended(&FLUSH).await?;
                        conn.flush().await?;
                    }
                    let mut refs: Vec<&mut ServerConn> =
                        taken.iter_mut().map(|(_, c)| &mut **c).collect();
                    executor::settle_all(&mut refs).await;
                    for (i, (_, conn)) in taken.iter_mut().enumerate() {
                        if keep {
                            executor::collect(
                                conn,
                                &mut merger,
                                merge,
                                i == 0,
                                Until::Executed,
                                &mut buf,
                            )
                            .await?;
                        } else {
                            executor::collect(
                                conn,
                                &mut merger,
                                merge,
                                i == 0,
                                Until::Executed,
                                &mut self.out,
                            )
                            .await?;
                        }
                    }
                    Ok(())
                }
                .await;
                for (slot, conn) in taken {
                    self.put_conn(slot, conn, write);
                }
                if let Err(e) = r {
                    return Ok(self.finish_exec(Err(e)).await?);
                }
                let failed = merger.failed();
                let last = merger.finish();
                if let (Some(order), false) = (&order, failed) {
                    let rows: Vec<&[usize]> = order.iter().map(Vec::as_slice).collect();
                    if let Some(ordered) = crate::session::staged::in_values_order(&buf, &rows) {
                        buf = ordered;
                    }
                }
                if max > 0 && !failed {
                    return self.buffer_then_serve(portal, &buf, last, max).await;
                }
                if max <= 0 && keep {
                    self.write(&buf).await?;
                }
                if let Some(last) = last {
                    self.write(&last).await?;
                }
                if failed {
                    self.fail();
                }
                Ok(!failed)
            }
        }
    }

    /// A portal bound to SQL `EXECUTE` still has its statement, as it was
    /// (any other portal: yes).
    fn statement_still_there(&self, portal: &str) -> bool {
        self.ext.executes.get(portal).is_none_or(|(name, backend)| {
            self.sql_prepared
                .get(name)
                .is_some_and(|p| p.server_name() == backend)
        })
    }

    pub(super) async fn ext_close(&mut self, kind: u8, name: &str) -> Result<bool, Fatal> {
        if kind == b'S' {
            self.ext.stmts.remove(name);
        } else if let Some(p) = self.ext.portals.remove(name) {
            self.ext.executes.remove(name);
            let shards = match p {
                PortalKind::Single { shard, .. } => vec![shard],
                PortalKind::Multi { shards, .. } | PortalKind::Merged { shards, .. } => shards,
                PortalKind::Control { .. } | PortalKind::Refused(_) => vec![],
            };
            self.ext.buffered.remove(name);
            let close = message(b'C', |b| {
                b.put_u8(b'P');
                put_cstr(b, name);
            });
            for s in shards {
                let Ok((slot, mut conn)) = self.take_conn(s).await else {
                    continue;
                };
                let r = async {
                    conn.send_extended(&close).await?;
                    conn.send_extended(&FLUSH).await?;
                    conn.flush().await?;
                    reply(&mut conn, &mut self.out, b"3", false).await
                }
                .await;
                self.put_conn(slot, conn, Writes::No);
                if let Err(ExecError::Client(e)) = r {
                    return Err(Fatal::Client(e));
                }
            }
        }
        self.write(&protocol::close_complete()).await?;
        Ok(true)
    }

    /// Describe of a statement in a failed block, by a shard of the block
    /// that has it (else by a pooled connection of the default shard):
    /// its parameters if it returns no rows, else 25P02 (PostgreSQL cannot
    /// describe result columns in an aborted transaction).
    async fn describe_in_failed_block(&mut self, name: &str) -> Result<bool, Fatal> {
        let Some(s) = self.ext.stmts.get(name) else {
            return Ok(self.error(Error::Txn(TxnMisuse::Aborted)).await?);
        };
        let (parse, backend) = (s.parse_message(), s.backend.clone());
        // A shard of the block can describe it only if it has it already:
        // a Parse there now would fail with the block.
        let shard = self.txn.as_ref().and_then(|t| {
            t.participants
                .iter()
                .find(|p| p.conn.prepared.contains(&backend))
                .map(|p| p.shard())
        });
        let describe = message(b'D', |b| {
            b.put_u8(b'S');
            put_cstr(b, &backend);
        });
        let frames = match shard {
            Some(shard) => {
                let (slot, mut conn) = match self.take_conn(shard).await {
                    Ok(x) => x,
                    Err(e) => return Ok(self.error(e).await?),
                };
                let r = describe_on(&mut conn, &parse, &backend, &describe, false).await;
                self.put_conn(slot, conn, Writes::No);
                r
            }
            None => {
                let shard = self.shared.map().default_shard;
                let mut conn = match self.checkout(shard).await {
                    Ok(c) => c,
                    Err(e) => return Ok(self.error(e).await?),
                };
                describe_on(&mut conn, &parse, &backend, &describe, true).await
            }
        };
        let frames = match frames {
            Ok(f) => f,
            Err(e) => return Ok(self.error(e.into()).await?),
        };
        match frames.last().map(|f| f.tag) {
            Some(b'n') => {
                for f in frames {
                    self.write(&f.bytes).await?;
                }
                Ok(true)
            }
            Some(b'E') => {
                if let Some(f) = frames.last() {
                    self.write(&f.bytes).await?;
                }
                self.fail();
                Ok(false)
            }
            _ => Ok(self.error(Error::Txn(TxnMisuse::Aborted)).await?),
        }
    }
}

/// Describes a statement on `conn` (parsing it there first if needed): the
/// frames up to its RowDescription, NoData or error. `sync` ends it with a
/// Sync (a connection outside any block) rather than a Flush.
async fn describe_on(
    conn: &mut ServerConn,
    parse: &[u8],
    backend: &str,
    describe: &[u8],
    sync: bool,
) -> Result<Vec<Frame>, BackendError> {
    if !conn.prepared.contains(backend) {
        conn.send_extended(parse).await?;
    }
    conn.send_extended(describe).await?;
    if sync {
        conn.send_sync().await?;
    } else {
        conn.send_extended(&FLUSH).await?;
    }
    conn.flush().await?;
    let stop: &[u8] = if sync { b"Z" } else { b"TnE" };
    let mut got = executor::read_until(conn, stop).await?;
    if got.iter().any(|f| f.tag == b'1') {
        conn.prepared.insert(backend.to_string());
    }
    got.retain(|f| !matches!(f.tag, b'1' | b'Z'));
    Ok(got)
}
