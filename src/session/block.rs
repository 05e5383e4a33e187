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
        self.exec_in_block_as(targets, how, write, None).await
    }

    /// [`Session::exec_in_block`], with one target's statement run as the
    /// prepared statement `bound` where its connection has it.
    pub(super) async fn exec_in_block_as(
        &mut self,
        targets: &[(ShardId, &str)],
        how: Collect<'_>,
        write: Writes,
        bound: Option<&router::Prepare>,
    ) -> std::io::Result<(bool, Option<bytes::Bytes>)> {
        // Only a merge compares text, and only it needs the shards' collations.
        let bytewise = matches!(how, Collect::Plan(_)) && self.shared.collations.bytewise();
        let snapshots = targets
            .iter()
            .any(|(_, sql)| consistent::takes_snapshot(sql));
        // A joining shard's deadlock tag is a query: it takes the block's
        // snapshot there even for a SHOW.
        let tagged = self.shared.config().txn.deadlock_timeout_ms > 0;
        // But a `LOCK` or `SHOW` in a block that keeps its first snapshot
        // is followed by that snapshot, as in PostgreSQL: the lock waits
        // first, the snapshot comes with the next query (everywhere at once
        // under `consistent_reads`), and a shard joining for it takes its
        // tag before its `BEGIN`.
        let free = !targets.is_empty()
            && targets
                .iter()
                .all(|(_, sql)| consistent::snapshot_free(sql))
            && consistent::keeps_snapshot(self.block_level());
        // (Only a shard joining runs the tag: a statement on the block's
        // shards alone, a `SET LOCAL` after the `LOCK`, takes no snapshot.)
        let joins = self
            .txn
            .as_ref()
            .is_some_and(|t| targets.iter().any(|(s, _)| !t.has(*s)));
        if (snapshots || tagged && joins)
            && !free
            && self.needs_snapshot_everywhere()
            && !self.snapshot_everywhere().await?
        {
            return Ok((false, None));
        }
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
        // Only a shard joining now runs the head (the tag's text is formatted).
        let head = if missing.is_empty() {
            Vec::new()
        } else {
            let (head, untag) = t.join_head(detecting, free);
            for p in joined.iter_mut() {
                p.conn.untag.clone_from(&untag);
            }
            head
        };
        t.participants.extend(joined);
        if !t.snapshot {
            t.snapshot = snapshots;
        }
        let mut parts = std::mem::take(&mut t.participants);

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
        // A statement reading several shards with a snapshot of its own
        // takes them all under the fence.
        let mut shards: Vec<ShardId> = targets.iter().map(|t| t.0).collect();
        shards.sort();
        shards.dedup();
        // A SELECT primed (see `Session::prime`) holds the fence for its
        // Bind only; not on a shard inside an extended Sync segment, whose
        // implicit transaction a Sync would end.
        let primed = shards.len() > 1
            && snapshots
            && !write.may()
            && self.shared.coordinator.fence().is_some()
            && self.per_statement_snapshot()
            && consistent::primable(&targets.iter().map(|t| t.1).collect::<Vec<_>>(), &how)
            && parts
                .iter()
                .filter(|p| shards.contains(&p.shard()))
                .all(|p| !p.conn.needs_sync());
        if primed {
            let mut conns = Vec::with_capacity(shards.len());
            let mut heads: Vec<&[String]> = Vec::with_capacity(shards.len());
            let mut sqls = Vec::with_capacity(shards.len());
            for p in parts.iter_mut() {
                let Some((shard, sql)) = targets.iter().find(|(s, _)| *s == p.shard()) else {
                    continue;
                };
                heads.push(if missing.contains(shard) { &head } else { &[] });
                sqls.push(*sql);
                conns.push(&mut *p.conn);
            }
            let r = self.prime(&mut conns, &heads, &sqls).await;
            if let Some(t) = self.txn() {
                t.participants = parts;
            }
            if let consistent::Primed::Failed = r? {
                self.fail();
                return Ok((false, None));
            }
            let Some(t) = self.txn() else {
                return Ok((false, None));
            };
            parts = std::mem::take(&mut t.participants);
        }
        let hold = if snapshots && self.per_statement_snapshot() && !primed {
            self.snapshot_hold(shards.len()).await
        } else {
            Ok(None)
        };
        match hold {
            Ok(Some(h)) => {
                let map = self.shared.map();
                if targets
                    .iter()
                    .all(|(_, sql)| !router::calls_unknown_function(sql, &map))
                {
                    h.single_snapshot();
                }
                consistent::attach_in_block(&mut parts, &shards, &missing, head.len(), &h);
            }
            Ok(None) => {}
            Err(e) => {
                if let Some(t) = self.txn() {
                    t.participants = parts;
                }
                return Ok((self.error(e).await?, None));
            }
        }
        let run = executor::BlockRun {
            head: &head,
            fresh: if primed { &[] } else { &missing },
            relay_single: !self.hold_last,
            bytewise,
            primed,
            bound: bound.map(|prepare| executor::BlockBound {
                prepare,
                kind: if prepare.modifies() {
                    executor::BoundKind::Write
                } else {
                    executor::BoundKind::Other
                },
            }),
            settings_changed: self.learn_from.is_some()
                || self.txn.as_ref().is_some_and(|t| t.sets_settings()),
        };
        let r = executor::run_in_block(&mut parts, targets, how, &run, &mut self.out).await;
        for p in parts.iter_mut() {
            if targets.iter().any(|(s, _)| *s == p.shard()) {
                p.wrote |= write;
            }
        }
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
        let tag = if router::first_word_in(stmt, &["start"]) {
            "START TRANSACTION"
        } else {
            "BEGIN"
        };
        // An implicit block that already ran a statement has its snapshot:
        // its isolation level can no longer change.
        let ran = self.txn.as_ref().is_some_and(|t| t.snapshot);
        let current = self.block_level().unwrap_or("read committed");
        let level_changes = isolation(stmt).is_some_and(|l| l != current);
        if self.block == Block::Implicit && ran && level_changes {
            return self.error(Error::Txn(TxnMisuse::IsolationAfterQuery)).await;
        }
        let implicit = self.block == Block::Implicit;
        match self.transition(Event::Begin, Some(stmt)).0 {
            Step::Refuse(e) => self.error(Error::Txn(e)).await,
            Step::Warn(w) => {
                self.warn(w).await?;
                // Its modes still apply to the block, as PostgreSQL's do.
                match begin_options(stmt) {
                    Some(modes) => self.add_modes(&modes, tag).await,
                    None => self.complete(tag).await,
                }
            }
            // An implicit block turned explicit keeps what ran, and takes
            // this BEGIN's modes.
            _ if implicit => match begin_options(stmt) {
                Some(modes) => self.add_modes(&modes, tag).await,
                None => self.complete(tag).await,
            },
            _ => self.complete(tag).await,
        }
    }

    /// Transaction modes set inside a block (`SET TRANSACTION ...`, or a
    /// later `BEGIN`'s): added to the block's `BEGIN`, so shards that join
    /// later start with them (a `SET TRANSACTION` after that `BEGIN` would
    /// come after the deadlock detector's lock, which takes a snapshot), and
    /// sent to the shards already in the block, which answer for themselves.
    async fn add_modes(&mut self, modes: &str, tag: &str) -> std::io::Result<bool> {
        let detecting = self.shared.config().txn.deadlock_timeout_ms > 0;
        // The level the block runs at now (the session's default when it
        // named none): PostgreSQL refuses only a change.
        let current = self.block_level().unwrap_or("read committed");
        let Some(t) = self.txn.as_mut() else {
            return Ok(false);
        };
        let level_changes = isolation(modes).is_some_and(|l| l != current);
        if level_changes && t.snapshot {
            return self.error(Error::Txn(TxnMisuse::IsolationAfterQuery)).await;
        }
        if level_changes && !t.savepoints.is_empty() {
            return self
                .error(Error::Txn(TxnMisuse::IsolationInSubtransaction))
                .await;
        }
        t.begin = format!("{}\n{modes}", t.begin.trim_end().trim_end_matches(';'));
        let shards: Vec<ShardId> = t.participants.iter().map(|p| p.shard()).collect();
        if shards.is_empty() {
            return self.complete(tag).await;
        }
        if !t.snapshot && t.participants.iter().all(|p| !p.conn.needs_sync()) {
            // The shards in the block ran nothing that took a snapshot for
            // the client (SHOW, SET), but the deadlock detector's lock in
            // their BEGIN did: they start over with the new modes, and what
            // ran there is replayed from the prelude.
            let head = vec!["ROLLBACK".to_string()];
            // consistent_reads, a level that keeps its snapshot: the head's
            // tag would take it here, on these shards alone and outside the
            // fence. They leave the block instead (idle after the
            // ROLLBACK), and join it again with every other shard at once,
            // under the fence, before its first statement that takes a
            // snapshot.
            let everywhere = self.shared.coordinator.fence().is_some()
                && self.shared.map().shards > 1
                && consistent::keeps_snapshot(isolation(modes).or(Some(current)));
            let Some(t) = self.txn.as_mut() else {
                return Ok(false);
            };
            // A level that keeps its snapshot: the tag goes before the
            // `BEGIN`, as for a shard joining with a `SHOW` (see
            // `exec_in_block_as`); a server session that holds it already
            // keeps it.
            let keeps = consistent::keeps_snapshot(isolation(modes).or(Some(current)));
            let (untagged, before) = (t.head_untagged(), t.head_tagged_before());
            let inside = t.head(detecting);
            let untag = t.untag_sql();
            let mut failed = None;
            for p in t.participants.iter_mut() {
                let mut head = head.clone();
                if !everywhere {
                    if p.conn.untag.is_some() || !detecting {
                        head.extend(untagged.iter().cloned());
                    } else if keeps {
                        head.extend(before.iter().cloned());
                        p.conn.untag = Some(untag.clone());
                    } else {
                        head.extend(inside.iter().cloned());
                    }
                }
                let r = async {
                    for q in &head {
                        p.conn.send_query(q).await?;
                    }
                    p.conn.flush().await?;
                    let mut error = None;
                    for _ in &head {
                        if let Some(e) = executor::drain(&mut p.conn).await? {
                            error.get_or_insert(e);
                        }
                    }
                    Ok::<_, BackendError>(error)
                }
                .await;
                match r {
                    Ok(None) => {}
                    Ok(Some(e)) => failed = failed.or(Some(Ok(e))),
                    Err(e) => failed = failed.or(Some(Err(e))),
                }
            }
            if everywhere && failed.is_none() {
                // Back to their pools, clean.
                t.participants.clear();
            }
            return match failed {
                None => self.complete(tag).await,
                Some(Ok(e)) => {
                    self.write(&e.bytes).await?;
                    self.fail();
                    Ok(false)
                }
                Some(Err(e)) => self.error(e.into()).await,
            };
        }
        let set = format!("SET TRANSACTION {modes}");
        let targets: Vec<(ShardId, &str)> = shards.iter().map(|s| (*s, set.as_str())).collect();
        // Their notices and errors reach the client; their tag is not ours.
        let held = std::mem::replace(&mut self.hold_last, true);
        let r = self
            .exec_in_block(&targets, Merge::Copies.into(), Writes::No)
            .await;
        self.hold_last = held;
        match r? {
            (true, _) => self.complete(tag).await,
            (false, last) => {
                if let Some(e) = last {
                    self.write(&e).await?;
                }
                Ok(false)
            }
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
                // In a Sync segment it still ends the segment's own
                // transaction: what a Parse there took (its snapshot) is gone.
                self.ext.new_transaction();
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
        if let (true, Some(p)) = (ok, pos) {
            match op {
                SavepointOp::Release => self.ext.savepoint_ended(p, false),
                SavepointOp::RollbackTo => self.ext.savepoint_ended(p, true),
                SavepointOp::Define => {}
            }
        }
        if let (true, Some(t)) = (ok, self.txn()) {
            match (op, pos) {
                (SavepointOp::Define, _) => t.define_savepoint(name),
                (SavepointOp::Release, Some(p)) => t.release_savepoint(p),
                (SavepointOp::RollbackTo, Some(p)) => t.rollback_to_savepoint(p),
                (_, None) => {}
            }
        }
        Ok(ok)
    }

    pub(super) async fn set(&mut self, stmt: &str, cmd: SetCommand) -> std::io::Result<bool> {
        let changes: Vec<SettingChange> = match &cmd {
            SetCommand::Local => Vec::new(),
            SetCommand::Set(name) => vec![SettingChange::Set(name.clone(), stmt.to_string())],
            SetCommand::Defaults(sets) => sets
                .iter()
                .map(|(name, set)| SettingChange::Set(name.clone(), set.clone()))
                .collect(),
            SetCommand::Reset(name) => vec![SettingChange::Reset(name.clone())],
            SetCommand::ResetAll => vec![SettingChange::ResetAll],
        };
        if self.txn().is_some() {
            let words = leading_words(stmt, 2);
            let first = words.first().map(String::as_str);
            if first == Some("discard") {
                return self.error(Error::Txn(TxnMisuse::DiscardInBlock)).await;
            }
            // PostgreSQL warns for these two outside a block (an
            // extended-protocol segment), not for `SET transaction_isolation`.
            let outside = match words.get(1).map(String::as_str) {
                Some("local") => Some("SET LOCAL"),
                Some("transaction") => Some("SET TRANSACTION"),
                _ => None,
            };
            if let (Some(what), true) = (outside, self.txn.as_ref().is_some_and(|t| t.segment)) {
                self.warn(TxnMisuse::OutsideBlock(what)).await?;
            }
            let tag = match (first, words.get(1).map(String::as_str)) {
                (Some("reset"), _) => "RESET",
                (_, Some("constraints")) => "SET CONSTRAINTS",
                _ => "SET",
            };
            match transaction_set(stmt) {
                Some(TxnSet::Modes(modes)) => return self.add_modes(&modes, tag).await,
                Some(TxnSet::LevelReset) => {
                    // PostgreSQL 15 takes `transaction_isolation` back to
                    // READ COMMITTED, with no check (not even after the
                    // first query): the block takes a snapshot per
                    // statement from here on, on every shard.
                    if let Some(t) = self.txn() {
                        t.begin = format!(
                            "{}\nISOLATION LEVEL READ COMMITTED",
                            t.begin.trim_end().trim_end_matches(';')
                        );
                    }
                }
                None => {}
            }
            let ok = self.in_block(stmt, tag).await?;
            if ok {
                if let Some(t) = self.txn() {
                    t.pending.extend(changes);
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
        // `DISCARD ALL` deallocates every prepared statement, SQL's too.
        if matches!(r, Ok(Answer::Succeeded)) && router::first_word_in(stmt, &["discard"]) {
            self.sql_prepared.clear();
        }
        if matches!(r, Ok(Answer::Succeeded)) && !changes.is_empty() {
            let mut one = [Participant {
                conn,
                wrote: Writes::No,
            }];
            self.apply_changes(&changes, &mut one);
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

/// What a statement in a block does to the block's own modes.
#[derive(Debug, PartialEq, Eq)]
enum TxnSet {
    /// Sets these modes, as `SET TRANSACTION` words them.
    Modes(String),
    /// `RESET transaction_isolation` / `SET transaction_isolation TO
    /// DEFAULT`: READ COMMITTED, unchecked.
    LevelReset,
}

/// The modes of a `SET TRANSACTION ISOLATION LEVEL ... | READ ... | [NOT]
/// DEFERRABLE` (not `SET TRANSACTION SNAPSHOT`), and the isolation level a
/// `SET [SESSION | LOCAL] transaction_isolation {= | TO} value` or `RESET
/// transaction_isolation` gives the block. `None`: not one of these, or a
/// value PostgreSQL will refuse (the shards answer for it).
fn transaction_set(stmt: &str) -> Option<TxnSet> {
    let words = leading_words(stmt, 3);
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let named = match w.as_slice() {
        ["set", "transaction", "isolation" | "read" | "deferrable" | "not"] => {
            let rest = &stmt[crate::router::after_words(stmt, 2)?..];
            let modes = rest.trim().trim_end_matches(';').trim();
            return (!modes.is_empty()).then(|| TxnSet::Modes(modes.to_string()));
        }
        ["reset", "transaction_isolation", ..] => return Some(TxnSet::LevelReset),
        ["set", "session" | "local", "transaction_isolation"] => 3,
        ["set", "transaction_isolation", ..] => 2,
        _ => return None,
    };
    let rest = stmt[crate::router::after_words(stmt, named)?..].trim_start();
    let value = match rest.strip_prefix('=') {
        Some(v) => v,
        None => {
            let to = rest.get(..2)?;
            let after = rest.get(2..)?;
            if !to.eq_ignore_ascii_case("to") || !after.starts_with(char::is_whitespace) {
                return None;
            }
            after
        }
    };
    let value = value.trim().trim_end_matches(';').trim();
    if value.eq_ignore_ascii_case("default") {
        return Some(TxnSet::LevelReset);
    }
    // A string, or a quoted or bare name: PostgreSQL compares the text with
    // the level names ignoring case, and refuses anything else.
    let text = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
        .unwrap_or(value);
    if text.contains(['\'', '"', '\\']) {
        return None;
    }
    let level = [
        "serializable",
        "repeatable read",
        "read committed",
        "read uncommitted",
    ]
    .into_iter()
    .find(|l| text.eq_ignore_ascii_case(l))?;
    Some(TxnSet::Modes(format!(
        "ISOLATION LEVEL {}",
        level.to_uppercase()
    )))
}

/// `BEGIN`'s transaction modes, when it has any.
fn begin_options(stmt: &str) -> Option<String> {
    let words = leading_words(stmt, 2);
    let skip = match (
        words.first().map(String::as_str),
        words.get(1).map(String::as_str),
    ) {
        (Some("begin"), Some("work" | "transaction")) | (Some("start"), _) => 2,
        _ => 1,
    };
    let rest = stmt[crate::router::after_words(stmt, skip)?..]
        .trim()
        .trim_end_matches(';')
        .trim();
    (!rest.is_empty()).then(|| rest.to_string())
}

impl Txn {
    /// The block's isolation level as last set (its `BEGIN` holds every
    /// mode set since).
    fn isolation(&self) -> Option<&'static str> {
        isolation(&self.begin)
    }

    /// The level as the block's `BEGIN` and `SET TRANSACTION`s set it.
    pub(super) fn level(&self) -> Option<&'static str> {
        self.isolation()
    }
}

pub(super) fn isolation(begin: &str) -> Option<&'static str> {
    // Nearly always a bare `BEGIN`: no copy made for it.
    let word = b"isolation";
    if !begin
        .as_bytes()
        .windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
    {
        return None;
    }
    let t = begin.to_ascii_lowercase();
    // The last mode given wins, as in PostgreSQL.
    let at = t.rfind("isolation")?;
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

#[cfg(test)]
mod tests {
    use super::{transaction_set, TxnSet};

    #[test]
    fn every_spelling_of_the_block_level_is_read() {
        let rr = || Some(TxnSet::Modes("ISOLATION LEVEL REPEATABLE READ".into()));
        let cases = [
            ("SET transaction_isolation = 'repeatable read'", rr()),
            (
                "set local transaction_isolation to 'Repeatable Read';",
                rr(),
            ),
            (
                "SET SESSION transaction_isolation TO \"repeatable read\"",
                rr(),
            ),
            (
                "SET transaction_isolation = serializable",
                Some(TxnSet::Modes("ISOLATION LEVEL SERIALIZABLE".into())),
            ),
            (
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                Some(TxnSet::Modes(
                    "ISOLATION LEVEL REPEATABLE READ, READ ONLY".into(),
                )),
            ),
            ("RESET transaction_isolation", Some(TxnSet::LevelReset)),
            (
                "SET transaction_isolation TO DEFAULT",
                Some(TxnSet::LevelReset),
            ),
            (
                "SET LOCAL transaction_isolation = default",
                Some(TxnSet::LevelReset),
            ),
            // PostgreSQL refuses these; the shards say so.
            ("SET transaction_isolation = 'default'", None),
            ("SET transaction_isolation = 'repeatable  read'", None),
            ("SET transaction_isolation = 'serializable', 'x'", None),
            ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", None),
            ("SET default_transaction_isolation = 'serializable'", None),
            ("SET transaction_read_only = on", None),
        ];
        for (sql, want) in cases {
            assert_eq!(transaction_set(sql), want, "{sql}");
        }
    }
}
