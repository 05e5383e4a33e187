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
        let detecting = self.shared.config().txn.deadlock_timeout_ms > 0;
        let Some(t) = self.txn() else {
            return Ok((false, None));
        };
        t.participants.extend(joined);
        t.snapshot |= targets.iter().any(|(_, sql)| {
            !matches!(
                leading_words(sql, 1).first().map(String::as_str),
                Some("show" | "set" | "reset")
            )
        });
        let mut parts = std::mem::take(&mut t.participants);
        let head = t.head(detecting);

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
        let r: Result<(Answer, Option<bytes::Bytes>), ExecError> = async {
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
                } else if single && !failed && !self.hold_last {
                    failed |= executor::relay(&mut p.conn, &mut self.out).await?.failed();
                } else if let Collect::Merge(merge) = how {
                    let merge = if single { Merge::Union } else { merge };
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
            Ok((Answer::failed_if(failed), merger.finish()))
        }
        .await;
        if self.risky {
            // Settings changed unseen inside a block: the connections are
            // reset before anyone else gets them, and the client learns its
            // settings from the first of them if the block commits.
            for p in parts.iter_mut() {
                p.conn.settings_unknown = true;
            }
            self.learn_from = self.learn_from.or(targets.first().map(|t| t.0));
        }
        let server_failed = parts.iter().any(|p| p.conn.status == b'E');
        if let Some(t) = self.txn() {
            t.participants = parts;
        }
        match r {
            Ok((answer, last)) => {
                if answer.failed() || server_failed {
                    self.fail();
                }
                Ok((!answer.failed(), last))
            }
            Err(ExecError::Backend(e)) => Ok((self.error(e.into()).await?, None)),
            Err(ExecError::Client(e)) => Err(e),
        }
    }

    pub(super) async fn complete(&mut self, tag: &str) -> std::io::Result<bool> {
        self.write(&protocol::command_complete(tag)).await?;
        Ok(true)
    }

    /// A WARNING the proxy gives itself (PostgreSQL's for misplaced
    /// `BEGIN`/`COMMIT`/`ROLLBACK`).
    async fn warn(&mut self, w: TxnMisuse) -> Io {
        let e = Error::Txn(w);
        let m = protocol::error_response(Severity::Warning, e.sqlstate(), &e.to_string(), None);
        self.write(&m).await
    }

    pub(super) async fn begin(&mut self, stmt: &str) -> std::io::Result<bool> {
        let words = leading_words(stmt, 1);
        let tag = match words.first().map(String::as_str) {
            Some("start") => "START TRANSACTION",
            _ => "BEGIN",
        };
        // An implicit block that already ran a statement has its snapshot:
        // its isolation level can no longer change.
        let ran = self.txn.as_ref().is_some_and(|t| t.snapshot);
        let current = self.txn.as_ref().and_then(|t| isolation(&t.begin));
        let level_changes =
            isolation(stmt).is_some_and(|l| l != current.unwrap_or("read committed"));
        if self.block == Block::Implicit && ran && level_changes {
            return self.error(Error::Txn(TxnMisuse::IsolationAfterQuery)).await;
        }
        match self.transition(Event::Begin, Some(stmt)).0 {
            Step::Refuse(e) => self.error(Error::Txn(e)).await,
            Step::Warn(w) => {
                self.warn(w).await?;
                let sub = self.txn.as_ref().is_some_and(|t| !t.savepoints.is_empty());
                if ran && level_changes {
                    return self.error(Error::Txn(TxnMisuse::IsolationAfterQuery)).await;
                }
                if sub && level_changes {
                    return self
                        .error(Error::Txn(TxnMisuse::IsolationInSubtransaction))
                        .await;
                }
                self.complete(tag).await
            }
            _ => self.complete(tag).await,
        }
    }

    pub(super) async fn commit(&mut self, _stmt: &str) -> std::io::Result<bool> {
        self.end_block_with(Event::Commit).await
    }

    pub(super) async fn rollback(&mut self, _stmt: &str) -> std::io::Result<bool> {
        self.end_block_with(Event::Rollback).await
    }

    /// COMMIT or ROLLBACK, in whatever state the session is.
    async fn end_block_with(&mut self, ev: Event) -> std::io::Result<bool> {
        let (step, ended) = self.transition(ev, None);
        let mut t = ended.unwrap_or_else(|| Txn::new("BEGIN"));
        extended::sync_all(&mut t.participants).await;
        let coord = self.shared.coordinator.clone();
        match step {
            Step::Warn(w) => {
                self.warn(w).await?;
                let tag = if ev == Event::Commit {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                self.complete(tag).await
            }
            Step::Rollback { warn } => {
                if let Some(w) = warn {
                    self.warn(w).await?;
                }
                coord.rollback(&mut t.participants).await;
                self.complete("ROLLBACK").await
            }
            Step::Commit { warn } => {
                if let Some(w) = warn {
                    self.warn(w).await?;
                }
                match self.commit_block(&mut t).await? {
                    BlockEnd::Committed => self.complete("COMMIT").await,
                    // A shard failed the block where the proxy could not see it.
                    BlockEnd::RolledBack => self.complete("ROLLBACK").await,
                    BlockEnd::Refused => Ok(false),
                }
            }
            Step::Refuse(e) => self.error(Error::Txn(e)).await,
            Step::Run | Step::Open => Ok(true),
        }
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
        self.close_statement(last).await?;
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
        let ev = match op {
            SavepointOp::Define => Event::Savepoint,
            SavepointOp::Release => Event::Release,
            SavepointOp::RollbackTo => Event::RollbackTo,
        };
        if let (Step::Refuse(e), _) = self.transition(ev, None) {
            return self.error(Error::Txn(e)).await;
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
            if matches!(cmd, SetCommand::Local) && self.txn.as_ref().is_some_and(|t| t.segment) {
                self.warn(TxnMisuse::OutsideBlock("SET LOCAL")).await?;
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
        if matches!(r, Ok(Answer::Succeeded)) {
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
}

/// What a savepoint command does to the block's savepoints.
#[derive(Debug, Clone, Copy)]
enum SavepointOp {
    Define,
    Release,
    RollbackTo,
}

/// The isolation level a `BEGIN` names, if any.
fn isolation(begin: &str) -> Option<&'static str> {
    let t = begin.to_ascii_lowercase();
    let at = t.find("isolation")?;
    let rest = &t[at..];
    [
        "serializable",
        "repeatable read",
        "read committed",
        "read uncommitted",
    ]
    .into_iter()
    .find(|l| {
        rest.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains(l)
    })
}
