//! Sending a planned statement where it goes: borrowed connections outside a
//! block, the block's shards inside one, fan-out with merged answers, and
//! proxy-made blocks for writes that span shards.

use super::*;

use crate::backend::MAX_PREPARED_PER_CONNECTION;

impl Session {
    pub(super) async fn forward(
        &mut self,
        stmt: &str,
        route: Route,
        write: Writes,
    ) -> std::io::Result<bool> {
        let default = self.shared.map().default_shard;
        match route {
            Route::One(s) => self.forward_one(s, stmt, write).await,
            Route::Any => {
                // Inside a block: a shard already in it, else the default shard joins.
                let shard = self.block_any_shard().unwrap_or(default);
                self.forward_one(shard, stmt, write).await
            }
            Route::Some(_) | Route::All => {
                let targets: Vec<(ShardId, &str)> = route
                    .shards(self.shared.map().shards)
                    .into_iter()
                    .map(|s| (s, stmt))
                    .collect();
                // What may write runs in a block: atomic, and decided exactly.
                if write.may() {
                    self.write_across(&targets, Merge::Union, write).await
                } else {
                    self.read_across(&targets, Merge::Union.into()).await
                }
            }
        }
    }

    /// Where a statement any shard can answer runs inside a block: the
    /// shard where a statement that may have changed settings ran (so it
    /// sees them), else the first shard of the block.
    pub(super) fn block_any_shard(&self) -> Option<ShardId> {
        let t = self.txn.as_ref()?;
        self.learn_from
            .filter(|s| t.has(*s))
            .or_else(|| t.participants.first().map(|p| p.shard()))
    }

    /// A read several shards answer whose rows the proxy combines.
    pub(super) async fn merge_across(
        &mut self,
        route: Route,
        plan: std::sync::Arc<crate::merge::MergePlan>,
    ) -> std::io::Result<bool> {
        let shards = route.shards(self.shared.map().shards);
        let targets: Vec<(ShardId, &str)> =
            shards.iter().map(|s| (*s, plan.sql.as_str())).collect();
        self.read_across(&targets, Collect::Plan(&plan)).await
    }

    /// Borrows a connection (the one this session kept for `shard`, else
    /// one from the pool) and brings its session settings in line with the
    /// client's.
    pub(super) async fn checkout(&self, shard: ShardId) -> Result<PooledConn, Error> {
        let mut conn = match self.kept.take(shard, &self.shared.pools) {
            Some(c) => c,
            None => self.shared.pools.get(shard).await?,
        };
        sync_settings(&mut conn, &self.settings).await?;
        if let Ok(mut t) = self.cancel_targets.lock() {
            t.push(self.cancel_target(&conn));
        }
        Ok(conn)
    }

    pub(super) fn cancel_target(&self, conn: &ServerConn) -> crate::frontend::cancel::CancelTarget {
        crate::frontend::cancel::CancelTarget {
            endpoint: conn.endpoint.clone(),
            process_id: conn.process_id,
            secret_key: conn.secret_key,
        }
    }

    /// Cancel requests may reach only the connections still held: after a
    /// connection goes back to the pool, it serves someone else. Runs after
    /// every client message, so it rebuilds the list only when it changed.
    pub(super) fn refresh_cancel_targets(&mut self) {
        let participants = match &self.txn {
            Some(t) => t.participants.as_slice(),
            None => &[],
        };
        let held = participants
            .iter()
            .map(|p| &*p.conn)
            .chain(self.ext.segment());
        let Ok(mut t) = self.cancel_targets.lock() else {
            return;
        };
        let n = participants.len() + usize::from(self.ext.segment().is_some());
        let same = t.len() == n
            && t.iter()
                .zip(held.clone())
                .all(|(a, c)| a.process_id == c.process_id && a.secret_key == c.secret_key);
        if !same {
            // Cleared, not replaced: the list keeps its room for the next statement.
            t.clear();
            t.extend(held.map(|c| self.cancel_target(c)));
        }
    }

    /// While an `EXECUTE` runs, gives `conn` the prepared statement it needs.
    /// `Ok(false)`: that failed and the client was told.
    pub(super) async fn prepare_for_execute(
        &mut self,
        conn: &mut ServerConn,
    ) -> std::io::Result<bool> {
        let need = self.need_prepared.clone();
        match prepared::ensure_prepared(conn, need.as_ref().map(|(a, b)| (a.as_str(), b.as_str())))
            .await
        {
            Ok(None) => Ok(true),
            Ok(Some(err)) => {
                self.write(&err.bytes).await?;
                self.fail();
                Ok(false)
            }
            Err(e) => self.error(e.into()).await,
        }
    }

    /// Runs a statement on a borrowed connection outside any block. `write`:
    /// it may change data, so an answer that never comes leaves its outcome
    /// unknown (08007), not cancelled.
    pub(super) async fn autocommit_one(
        &mut self,
        shard: ShardId,
        text: &str,
        write: bool,
    ) -> std::io::Result<bool> {
        let mut conn = match self.checkout(shard).await {
            Ok(c) => c,
            Err(e) => return self.error(e).await,
        };
        if !self.prepare_for_execute(&mut conn).await? {
            return Ok(false);
        }
        let r = executor::run_text(&mut conn, &mut self.out, text).await;
        if conn.status != b'I' {
            // The text opened a block of its own; never hand that on.
            conn.mark_broken();
        } else if self.risky {
            if let Err(e) = learn_settings(&mut conn, &mut self.settings).await {
                conn.mark_broken();
                warn!(peer = %self.peer, error = %e, "could not read back session settings");
            }
        }
        // Kept while the client is idle, unless another client waits.
        self.kept.keep(conn, &self.shared.pools);
        self.refresh_cancel_targets();
        let r = match r {
            Err(ExecError::Backend(e)) if write => Err(ExecError::Backend(e.unanswered_commit())),
            r => r,
        };
        self.finish_exec(r).await
    }

    /// Whether a simple query's only statement may be sent to its shard as
    /// a prepared statement (`prepare_simple_queries`): outside a block (a
    /// refused Bind is then retried as written, with nothing to undo), not
    /// a statement that may change settings (they are read back after a
    /// query), and only where string constants mean what `normalize` reads
    /// them as (`standard_conforming_strings` on: checked on the connection).
    pub(super) fn may_prepare(&self, stmt: &str) -> bool {
        (self.block == Block::Default && self.txn.is_none() || self.may_prepare_in_block())
            && !self.risky
            && self.need_prepared.is_none()
            && !stmt.as_bytes().contains(&0)
    }

    /// Inside an explicit block still going (not failed), a simple query's
    /// only statement may run prepared too, where the connection already
    /// has it and its Bind cannot refuse what the text would run
    /// (`router::Prepare::fits_block`).
    fn may_prepare_in_block(&self) -> bool {
        self.block == Block::InProgress && self.txn.is_some()
    }

    /// Runs a simple query's only statement, which one key constant routes
    /// to `shard`, as the prepared statement `p` (see `may_prepare`).
    pub(super) async fn execute_prepared(
        &mut self,
        stmt: &str,
        shard: ShardId,
        write: Writes,
        p: router::Prepare,
    ) -> std::io::Result<bool> {
        if let (Step::Refuse(e), _) = self.transition(Event::Statement, None) {
            return self.error(Error::Txn(e)).await;
        }
        if self.txn.is_some() {
            // In a block: prepared where it cannot fail what the text would
            // run (`fits_block`), and the connection has it.
            let bound = p.fits_block().then_some(&p);
            let (ok, last) = self
                .exec_in_block_as(&[(shard, stmt)], Merge::Union.into(), write, bound)
                .await?;
            self.close_statement(last).await?;
            return Ok(ok);
        }
        let mut conn = match self.checkout(shard).await {
            Ok(c) => c,
            Err(e) => return self.error(e).await,
        };
        let r = async {
            let n = &p.normalized;
            let parse = !conn.prepared.contains(&*p.name);
            // Backslashes in quotes are escapes where this is off: the
            // constants would not be what `normalize` read. And a
            // connection holds so many statements at most (each costs the
            // server memory); past that, new texts go as written.
            if !conn.conforming_strings()
                || (parse
                    && conn.prepared.len() + conn.block_statements.len()
                        >= MAX_PREPARED_PER_CONNECTION)
            {
                return executor::run_text(&mut conn, &mut self.out, stmt).await;
            }
            let types: Vec<u32> = match n.types() {
                Some(t) if parse => t.collect(),
                _ => Vec::new(),
            };
            conn.send_bound(
                &p.name,
                parse.then_some((n.template.as_str(), types.as_slice())),
                p.values(),
            )
            .await?;
            conn.flush().await?;
            let kind = if p.modifies() {
                executor::BoundKind::Write
            } else if write == Writes::No {
                executor::BoundKind::Read
            } else {
                executor::BoundKind::Other
            };
            match executor::relay_bound(&mut conn, &mut self.out, parse, kind).await? {
                executor::BoundAnswer::Ran(answer) => {
                    if parse {
                        conn.prepared.insert(p.name.to_string());
                    }
                    Ok(answer)
                }
                executor::BoundAnswer::Stopped { parsed } => {
                    // The client's cancel (or a timeout, a deadlock) ended
                    // it before it ran, as it would have ended the simple
                    // query: that is the answer, not a reason to send the
                    // text again.
                    if parse && parsed {
                        conn.prepared.insert(p.name.to_string());
                    }
                    Ok(Answer::Failed)
                }
                executor::BoundAnswer::FailedEarly => {
                    // A read that failed before its first row: the text
                    // as written gives PostgreSQL's own answer (with or
                    // without a RowDescription before the error).
                    if parse {
                        conn.prepared.insert(p.name.to_string());
                    }
                    executor::run_text(&mut conn, &mut self.out, stmt).await
                }
                executor::BoundAnswer::Refused { parsed } => {
                    // Nothing ran: the query as written gives PostgreSQL's
                    // own answer, errors and their positions included.
                    if !parsed {
                        let answer = executor::run_text(&mut conn, &mut self.out, stmt).await?;
                        if answer == Answer::Succeeded {
                            // The text is no statement without its
                            // constants (`SELECT 'x'`, `interval '1 day'`):
                            // it goes as written from now on. (When the
                            // text fails too, a table missing, say, it is
                            // tried again next time.)
                            p.refuse();
                        }
                        return Ok(answer);
                    } else {
                        // A value the type refuses, or the prepared
                        // statement outdated by DDL ("cached plan must not
                        // change result type"): it is made again next time.
                        conn.prepared.remove(&*p.name);
                        conn.send_close_statement(&p.name).await?;
                        conn.send_query(stmt).await?;
                        conn.flush().await?;
                        if let Some(e) = executor::drain(&mut conn).await? {
                            return Err(ExecError::Backend(BackendError::Protocol {
                                shard,
                                message: format!(
                                    "closing a prepared statement: {}",
                                    protocol::ErrorFields::parse(e.body())
                                ),
                            }));
                        }
                    }
                    executor::relay(&mut conn, &mut self.out).await
                }
            }
        }
        .await;
        if conn.status != b'I' {
            conn.mark_broken();
        }
        self.kept.keep(conn, &self.shared.pools);
        self.refresh_cancel_targets();
        let r = match r {
            Err(ExecError::Backend(e)) if write.may() => {
                Err(ExecError::Backend(e.unanswered_commit()))
            }
            r => r,
        };
        self.finish_exec(r).await
    }

    pub(super) async fn finish_exec(
        &mut self,
        r: Result<Answer, ExecError>,
    ) -> std::io::Result<bool> {
        match r {
            Ok(answer) => Ok(answer == Answer::Succeeded),
            Err(ExecError::Backend(e)) => self.error(e.into()).await,
            Err(ExecError::Client(e)) => Err(e),
        }
    }

    /// Runs text on one shard: borrowed outside a block, enlisted inside one.
    pub(super) async fn forward_one(
        &mut self,
        shard: ShardId,
        text: &str,
        write: Writes,
    ) -> std::io::Result<bool> {
        if self.txn().is_none() {
            return self.autocommit_one(shard, text, write.may()).await;
        }
        let (ok, last) = self
            .exec_in_block(&[(shard, text)], Merge::Union.into(), write)
            .await?;
        self.close_statement(last).await?;
        Ok(ok)
    }

    /// A read spanning shards: inside a block on the block's connections,
    /// outside one on borrowed connections with no transaction. `how`:
    /// concatenate the rows, or carry out a merge plan.
    pub(super) async fn read_across(
        &mut self,
        targets: &[(ShardId, &str)],
        how: Collect<'_>,
    ) -> std::io::Result<bool> {
        if self.txn().is_some() {
            let (ok, last) = self.exec_in_block(targets, how, Writes::No).await?;
            self.close_statement(last).await?;
            return Ok(ok);
        }
        let mut conns = Vec::with_capacity(targets.len());
        for (s, _) in targets {
            match self.checkout(*s).await {
                Ok(mut c) => {
                    if !self.prepare_for_execute(&mut c).await? {
                        return Ok(false);
                    }
                    conns.push(c)
                }
                Err(e) => return self.error(e).await,
            }
        }
        let sqls: Vec<&str> = targets.iter().map(|t| t.1).collect();
        let primed = conns.len() > 1
            && self.shared.coordinator.fence().is_some()
            && consistent::primable(&sqls, &how);
        if primed {
            let mut refs: Vec<&mut ServerConn> = conns.iter_mut().map(|c| &mut **c).collect();
            if let consistent::Primed::Failed = self.prime(&mut refs, &[], &sqls).await? {
                return Ok(false);
            }
        } else if let Err(e) = self
            .fence_all(&mut conns, consistent::primable(&[], &how))
            .await
        {
            return self.error(e).await;
        }
        let mut refs: Vec<&mut ServerConn> = conns.iter_mut().map(|c| &mut **c).collect();
        let r = match how {
            Collect::Merge(merge) => {
                executor::fan_out(&mut refs, &sqls, primed, merge, &mut self.out).await
            }
            Collect::Plan(plan) => {
                let opts = crate::merge::RunOptions::simple(self.shared.collations.bytewise());
                async {
                    for (c, sql) in refs.iter_mut().zip(&sqls) {
                        executor::send_statement(c, sql, primed).await?;
                    }
                    executor::settle_all(&mut refs).await;
                    crate::merge::run(&mut refs, plan, &opts, &mut self.out).await
                }
                .await
            }
        };
        for c in conns.iter_mut() {
            c.settings_unknown |= self.risky;
            if c.status != b'I' {
                c.mark_broken();
            }
        }
        if self.risky && matches!(r, Ok((Answer::Succeeded, _))) {
            // Every shard ran it: the client's settings are what the first
            // of them now holds (`set_config(..., false)` in a read across
            // shards); the others are reset to them when next used.
            if let Some(c) = conns.iter_mut().find(|c| c.status == b'I') {
                if let Err(e) = learn_settings(c, &mut self.settings).await {
                    c.mark_broken();
                    warn!(peer = %self.peer, error = %e, "could not read back session settings");
                }
            }
        }
        match r {
            Ok((answer, last)) => {
                if let Some(b) = last {
                    self.write(&b).await?;
                }
                Ok(answer == Answer::Succeeded)
            }
            Err(ExecError::Backend(e)) => self.error(e.into()).await,
            Err(ExecError::Client(e)) => Err(e),
        }
    }

    /// A write spanning shards: inside a block it enlists them; outside, it is
    /// a transaction of its own, committed through the coordinator.
    pub(super) async fn write_across(
        &mut self,
        targets: &[(ShardId, &str)],
        merge: Merge,
        write: Writes,
    ) -> std::io::Result<bool> {
        if let [(only, sql)] = targets {
            return self.forward_one(*only, sql, write).await;
        }
        if self.txn().is_some() {
            let (ok, last) = self.exec_in_block(targets, merge.into(), write).await?;
            self.close_statement(last).await?;
            return Ok(ok);
        }
        self.transition(Event::StartImplicit, None);
        let (ok, last) = self.exec_in_block(targets, merge.into(), write).await?;
        self.finish_implicit(ok, last).await
    }

    /// Ends the implicit block of one statement: commit if it succeeded, else
    /// roll back. The statement's closing message goes out only once the
    /// outcome is known, as PostgreSQL commits before it reports completion.
    pub(super) async fn finish_implicit(
        &mut self,
        ok: bool,
        last: Option<bytes::Bytes>,
    ) -> std::io::Result<bool> {
        if !ok {
            if self.block == Block::Implicit {
                self.fail();
            }
            self.reap().await;
            if let Some(b) = last {
                self.write(&b).await?;
            }
            return Ok(false);
        }
        self.held = last;
        self.end_implicit().await
    }
}
