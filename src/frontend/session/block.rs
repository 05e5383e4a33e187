//! Transaction blocks: running statements on the shards enlisted in a block,
//! and the block-control statements (`BEGIN`, `COMMIT`, savepoints, `SET`).

use super::*;

impl Session {
    /// Runs statements inside the block, enlisting shards that have not joined
    /// yet: their `BEGIN` and the block's prelude go in the same write as the
    /// statement. One target: its answer is relayed as is. Several: merged; the
    /// closing message is returned for the caller to send.
    pub(super) async fn exec_in_block(
        &mut self,
        targets: &[(ShardId, &str)],
        how: Collect<'_>,
        write: Writes,
    ) -> std::io::Result<(bool, Option<bytes::Bytes>)> {
        // Only a merge compares text, and only it needs the shards' collations.
        let bytewise = matches!(how, Collect::Plan(_)) && self.shared.collations.bytewise();
        let mut missing: Vec<ShardId> = match self.txn() {
            Some(t) => targets.iter().map(|x| x.0).filter(|s| !t.has(*s)).collect(),
            None => return Ok((false, None)),
        };
        missing.sort();
        missing.dedup();
        // Acquire in shard order so two clients never wait on each other's pools.
        let mut joined = Vec::new();
        for s in &missing {
            match self.checkout(*s).await {
                Ok(conn) => joined.push(Participant {
                    conn,
                    wrote: Writes::No,
                }),
                Err(e) => {
                    drop(joined);
                    return Ok((self.error(e).await?, None));
                }
            }
        }
        let Some(t) = self.txn() else {
            return Ok((false, None));
        };
        t.participants.extend(joined);
        let mut parts = std::mem::take(&mut t.participants);
        let mut head = vec![t.begin.clone()];
        head.extend(t.prelude.iter().cloned());

        for (shard, _) in targets {
            let Some(i) = parts.iter().position(|p| p.shard() == *shard) else {
                continue;
            };
            if !self.prepare_for_execute(&mut parts[i].conn).await? {
                if let Some(t) = self.txn() {
                    t.participants = parts;
                }
                return Ok((false, None));
            }
        }
        let single = targets.len() == 1;
        let r: Result<(bool, Option<bytes::Bytes>), ExecError> = async {
            // Everything is written before anything is read: the shards work in parallel.
            let mut sent = Vec::with_capacity(targets.len());
            for (shard, sql) in targets {
                let Some(p) = parts.iter_mut().find(|p| p.shard() == *shard) else {
                    continue;
                };
                let fresh = missing.contains(shard);
                let r = async {
                    if fresh {
                        for q in &head {
                            p.conn.send_query(q).await?;
                        }
                    }
                    p.conn.send_query(sql).await?;
                    p.conn.flush().await
                }
                .await;
                sent.push((*shard, fresh, r));
            }
            let mut merger = Merger::default();
            let mut failed = false;
            // With a merge plan: the shards whose answers are ready to merge.
            let mut ready = Vec::new();
            for (i, (shard, fresh, r)) in sent.into_iter().enumerate() {
                let Some(p) = parts.iter_mut().find(|p| p.shard() == shard) else {
                    continue;
                };
                p.wrote |= write;
                if let Err(e) = r {
                    merger.backend_failed(&e);
                    failed = true;
                    continue;
                }
                let mut head_error = None;
                if fresh {
                    for _ in &head {
                        match executor::drain(&mut p.conn).await {
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
                    if let Err(e) = executor::drain(&mut p.conn).await {
                        merger.backend_failed(&e);
                    }
                } else if let Collect::Plan(_) = how {
                    ready.push(shard);
                } else if single && !failed {
                    failed |= executor::relay(&mut p.conn, &mut self.out).await?;
                } else if let Collect::Merge(merge) = how {
                    executor::collect(
                        &mut p.conn,
                        &mut merger,
                        merge,
                        i == 0,
                        Until::Ready,
                        &mut self.out,
                    )
                    .await?;
                }
            }
            if let Collect::Plan(plan) = how {
                let mut conns: Vec<&mut ServerConn> = parts
                    .iter_mut()
                    .filter(|p| ready.contains(&p.shard()))
                    .map(|p| &mut *p.conn)
                    .collect();
                if failed || merger.failed() {
                    for c in conns {
                        if let Err(e) = executor::drain(c).await {
                            merger.backend_failed(&e);
                        }
                    }
                } else {
                    let opts = crate::merge::RunOptions::simple(bytewise);
                    return crate::merge::run(&mut conns, plan, &opts, &mut self.out).await;
                }
            }
            failed |= merger.failed();
            Ok((failed, merger.finish()))
        }
        .await;
        let server_failed = parts.iter().any(|p| p.conn.status == b'E');
        if let Some(t) = self.txn() {
            t.participants = parts;
        }
        match r {
            Ok((failed, last)) => {
                if failed || server_failed {
                    self.fail();
                }
                Ok((!failed, last))
            }
            Err(ExecError::Backend(e)) => Ok((self.error(e.into()).await?, None)),
            Err(ExecError::Client(e)) => Err(e),
        }
    }

    pub(super) async fn complete(&mut self, tag: &str) -> std::io::Result<bool> {
        self.write(&protocol::command_complete(tag)).await?;
        Ok(true)
    }

    pub(super) async fn begin(&mut self, stmt: &str) -> std::io::Result<bool> {
        match &self.state {
            TxnState::Idle => {
                self.state = TxnState::InTxn(Txn::new(stmt));
                self.complete("BEGIN").await
            }
            _ => {
                let warning = protocol::error_response(
                    Severity::Warning,
                    SqlState::ACTIVE_SQL_TRANSACTION,
                    "there is already a transaction in progress",
                    None,
                );
                self.write(&warning).await?;
                self.complete("BEGIN").await
            }
        }
    }

    pub(super) async fn commit(&mut self, stmt: &str) -> std::io::Result<bool> {
        let failed = matches!(self.state, TxnState::Failed(_));
        let Some(mut t) = self.end_block() else {
            // Outside a block PostgreSQL warns; let a shard say it exactly.
            return self
                .autocommit_one(self.shared.map().default_shard, stmt)
                .await;
        };
        let coord = self.shared.coordinator.clone();
        if failed {
            coord.rollback(&mut t.participants).await;
            return self.complete("ROLLBACK").await;
        }
        match coord.commit(&mut t.participants).await {
            CommitOutcome::Committed { warnings } => {
                for w in warnings {
                    self.write(&commit_notice(&w)).await?;
                }
                let pending = std::mem::take(&mut t.pending);
                self.apply_changes(&pending, &mut t.participants);
                self.complete("COMMIT").await
            }
            failed => {
                self.write(&commit_failure(&failed)).await?;
                Ok(false)
            }
        }
    }

    pub(super) async fn rollback(&mut self, stmt: &str) -> std::io::Result<bool> {
        let Some(mut t) = self.end_block() else {
            return self
                .autocommit_one(self.shared.map().default_shard, stmt)
                .await;
        };
        self.shared.coordinator.rollback(&mut t.participants).await;
        self.complete("ROLLBACK").await
    }

    /// A block-control statement: sent to every shard in the block, and kept
    /// for shards that join later. Answers with `tag` when no shard has joined.
    pub(super) async fn in_block(&mut self, stmt: &str, tag: &str) -> std::io::Result<bool> {
        let Some(t) = self.txn() else {
            return Ok(false);
        };
        t.prelude.push(stmt.to_string());
        let shards: Vec<ShardId> = t.participants.iter().map(|p| p.shard()).collect();
        if shards.is_empty() {
            return self.complete(tag).await;
        }
        let targets: Vec<(ShardId, &str)> = shards.iter().map(|s| (*s, stmt)).collect();
        let (ok, last) = self
            .exec_in_block(&targets, Merge::Copies.into(), Writes::No)
            .await?;
        if let Some(b) = last {
            self.write(&b).await?;
        }
        Ok(ok)
    }

    pub(super) async fn savepoint(&mut self, stmt: &str, name: String) -> std::io::Result<bool> {
        self.savepoint_command(stmt, name, SavepointOp::Define)
            .await
    }

    pub(super) async fn release(&mut self, stmt: &str, name: String) -> std::io::Result<bool> {
        self.savepoint_command(stmt, name, SavepointOp::Release)
            .await
    }

    pub(super) async fn rollback_to(&mut self, stmt: &str, name: String) -> std::io::Result<bool> {
        self.savepoint_command(stmt, name, SavepointOp::RollbackTo)
            .await
    }

    /// SAVEPOINT, RELEASE and ROLLBACK TO: outside a block the default shard
    /// answers (as PostgreSQL would, with its error); inside, every shard of
    /// the block runs it, shards joining later replay it, and the block's
    /// list of savepoints follows.
    async fn savepoint_command(
        &mut self,
        stmt: &str,
        name: String,
        op: SavepointOp,
    ) -> std::io::Result<bool> {
        if self.txn().is_none() {
            return self
                .autocommit_one(self.shared.map().default_shard, stmt)
                .await;
        }
        let pos = self
            .txn()
            .and_then(|t| t.savepoints.iter().rposition(|s| *s == name));
        let tag = match (op, pos) {
            (SavepointOp::Define, _) => "SAVEPOINT",
            (_, None) => return self.error(Error::Txn(TxnMisuse::NoSavepoint(name))).await,
            (SavepointOp::Release, Some(_)) => "RELEASE",
            (SavepointOp::RollbackTo, Some(_)) => {
                // Every shard in the block returns to the savepoint (those
                // that joined later replayed it when they joined).
                self.recover();
                "ROLLBACK"
            }
        };
        let ok = self.in_block(stmt, tag).await?;
        if let (true, Some(t)) = (ok, self.txn()) {
            match (op, pos) {
                (SavepointOp::Define, _) => t.savepoints.push(name),
                (SavepointOp::Release, Some(p)) => t.savepoints.truncate(p),
                (SavepointOp::RollbackTo, Some(p)) => t.savepoints.truncate(p + 1),
                (_, None) => {}
            }
        }
        Ok(ok)
    }

    pub(super) async fn set(&mut self, stmt: &str, cmd: SetCommand) -> std::io::Result<bool> {
        let change = match &cmd {
            SetCommand::Local => None,
            SetCommand::Set(name) => Some(SettingChange::Set(name.clone(), stmt.to_string())),
            SetCommand::Reset(name) => Some(SettingChange::Reset(name.clone())),
            SetCommand::ResetAll => Some(SettingChange::ResetAll),
        };
        if self.txn().is_some() {
            let discard = leading_words(stmt, 1)
                .first()
                .is_some_and(|w| w == "discard");
            if discard {
                return self.error(Error::Txn(TxnMisuse::DiscardInBlock)).await;
            }
            let tag = match cmd {
                SetCommand::Local | SetCommand::Set(_) => "SET",
                SetCommand::Reset(_) | SetCommand::ResetAll => "RESET",
            };
            let ok = self.in_block(stmt, tag).await?;
            if ok {
                if let (Some(ch), Some(t)) = (change, self.txn()) {
                    t.pending.push(ch);
                }
            }
            return Ok(ok);
        }
        // Outside a block: run it on the default shard (which validates it and
        // reports ParameterStatus), then remember it for every connection.
        let mut conn = match self.checkout(self.shared.map().default_shard).await {
            Ok(c) => c,
            Err(e) => return self.error(e).await,
        };
        let r = async {
            conn.send_query(stmt).await?;
            conn.flush().await?;
            executor::relay(&mut conn, &mut self.out).await
        }
        .await;
        if matches!(r, Ok(false)) {
            if let Some(ch) = change {
                let mut one = [Participant {
                    conn,
                    wrote: Writes::No,
                }];
                self.apply_changes(&[ch], &mut one);
            }
        }
        self.finish_exec(r).await
    }

    /// Records setting changes that took effect, in the session and on the
    /// server connections that ran them.
    pub(super) fn apply_changes(&mut self, changes: &[SettingChange], conns: &mut [Participant]) {
        for ch in changes {
            match ch {
                SettingChange::Set(name, stmt) => {
                    self.settings.insert(name.clone(), stmt.clone());
                    for p in conns.iter_mut() {
                        p.conn.applied.insert(name.clone(), stmt.clone());
                    }
                }
                SettingChange::Reset(name) => {
                    match self.startup_settings.get(name) {
                        Some(s) => self.settings.insert(name.clone(), s.clone()),
                        None => self.settings.remove(name),
                    };
                    for p in conns.iter_mut() {
                        p.conn.applied.remove(name);
                    }
                }
                SettingChange::ResetAll => {
                    self.settings = self.startup_settings.clone();
                    for p in conns.iter_mut() {
                        p.conn.applied.clear();
                    }
                }
            }
        }
    }
}

/// What a savepoint command does to the block's savepoints.
#[derive(Debug, Clone, Copy)]
enum SavepointOp {
    Define,
    Release,
    RollbackTo,
}
