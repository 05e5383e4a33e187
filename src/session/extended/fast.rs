//! The common extended-protocol segment in one round trip: outside a block,
//! a batch up to `Sync` whose every Bind goes to one shard is sent to that
//! shard in a single write (Parse only where the connection lacks the
//! statement) and its answers are relayed in order, the proxy's own
//! ParseCompletes slotted in where the client's Parse stood. Anything else
//! (several shards, transaction control, merges, Close, an error to report
//! from the proxy) takes the message-by-message path.

use super::wire::BindMsg;
use super::*;

/// What the client is owed for one message of the batch, in order.
enum Owed {
    /// ParseComplete for a Parse the proxy answers itself (of this
    /// statement: skipped after an error, the statement is not made).
    Synth(String),
    /// The answer to a Parse the proxy added (the connection lacked the
    /// statement): read, not relayed; on success the connection has it.
    Prepared(String),
    /// A server answer relayed until one of these message types; a
    /// statement Describe also records the parameter types.
    Relay(&'static [u8], Option<String>),
}

/// The batch's messages, checked: the shard they all go to and the
/// statements Parse adds.
struct Plan1 {
    shard: ShardId,
    parsed: Vec<(String, ClientStmt)>,
    /// Some statement may write: the Sync, sent with it, commits that.
    wrote: bool,
}

impl Session {
    /// Runs the pending batch and its Sync the fast way if it qualifies;
    /// `Ok(false)`: it does not, nothing was done.
    pub(super) async fn fast_segment(&mut self) -> std::io::Result<bool> {
        if self.block != Block::Default
            || self.ext.seg.is_some()
            || self.ext.skipping
            || self.ext.batch.is_empty()
        {
            return Ok(false);
        }
        let Some(plan) = self.fast_plan() else {
            return Ok(false);
        };
        let batch = std::mem::take(&mut self.ext.batch);
        let mut conn = match self.checkout(plan.shard).await {
            Ok(c) => c,
            Err(e) => {
                self.error(e).await?;
                return self.finish_fast().await.map(|_| true);
            }
        };
        for (name, stmt) in plan.parsed {
            self.ext.stmts.insert(name, stmt);
        }
        let mut owed = Vec::with_capacity(batch.len() + 1);
        let mut adding: Vec<String> = Vec::new();
        let r: Result<(), ExecError> = async {
            for f in &batch {
                match f.tag {
                    b'P' => owed.push(Owed::Synth(
                        parse_parse(f.body())
                            .map(|p| p.0.to_string())
                            .unwrap_or_default(),
                    )),
                    b'B' => {
                        let b = parse_bind(f.body()).ok_or_else(|| {
                            ExecError::Backend(BackendError::Protocol {
                                shard: plan.shard,
                                message: "malformed Bind".into(),
                            })
                        })?;
                        let backend = self
                            .ensure_on(&mut conn, b.stmt, &mut adding, &mut owed)
                            .await?;
                        if self.ext.stmts.get(b.stmt).is_some_and(|s| s.risky) {
                            conn.settings_unknown = true;
                        }
                        let bind = rebind(&b, &backend);
                        conn.send_extended(&bind).await?;
                        owed.push(Owed::Relay(b"2", None));
                    }
                    b'D' if f.body().first() == Some(&b'S') => {
                        let name = take_cstr(&f.body()[1..]).map(|x| x.0).unwrap_or("");
                        let backend = self
                            .ensure_on(&mut conn, name, &mut adding, &mut owed)
                            .await?;
                        let describe = message(b'D', |m| {
                            m.put_u8(b'S');
                            put_cstr(m, &backend);
                        });
                        conn.send_extended(&describe).await?;
                        owed.push(Owed::Relay(b"Tn", Some(name.to_string())));
                    }
                    b'D' => {
                        conn.send_extended(&f.bytes).await?;
                        owed.push(Owed::Relay(b"Tn", None));
                    }
                    _ => {
                        // Execute (the plan admitted nothing else).
                        conn.send_extended(&f.bytes).await?;
                        owed.push(Owed::Relay(b"CIs", None));
                    }
                }
            }
            conn.send_sync().await?;
            conn.flush().await?;
            let mut failed = false;
            for o in owed.drain(..) {
                if failed {
                    // The server skips to Sync after an error, as the client
                    // expects; so does the proxy with the Parses it answers.
                    if let Owed::Synth(name) = o {
                        self.ext.stmts.remove(&name);
                    }
                    continue;
                }
                match o {
                    Owed::Synth(_) => self
                        .write(&protocol::parse_complete())
                        .await
                        .map_err(ExecError::Client)?,
                    Owed::Prepared(name) => {
                        let (answer, _) = reply(&mut conn, &mut self.out, b"1", false).await?;
                        if answer == Answer::Succeeded {
                            conn.prepared.insert(name);
                        }
                        failed = answer.failed();
                    }
                    Owed::Relay(done, describes) => {
                        let (answer, types) = reply(&mut conn, &mut self.out, done, true).await?;
                        if let (Some(name), Some(types)) = (describes, types) {
                            if let Some(s) = self.ext.stmts.get_mut(&name) {
                                s.described = Some(types);
                            }
                        }
                        failed = answer.failed();
                    }
                }
            }
            // A deferred constraint fails at the Sync's commit: the client's error.
            if let Some(e) = executor::drain(&mut conn).await? {
                if !failed {
                    self.write(&e.bytes).await.map_err(ExecError::Client)?;
                }
            }
            Ok(())
        }
        .await;
        if conn.status != b'I' {
            conn.mark_broken();
        } else if conn.settings_unknown && r.is_ok() && !self.ext.skipping {
            // A statement may have changed settings: they become the client's.
            if learn_settings(&mut conn, &mut self.settings).await.is_err() {
                conn.mark_broken();
            }
        }
        // Kept while the client is idle, unless another client waits.
        self.kept.keep(conn, &self.shared.pools);
        match r {
            Ok(()) => {}
            Err(ExecError::Client(e)) => return Err(e),
            Err(ExecError::Backend(e)) => {
                // The Sync went with the batch: a write's outcome is unknown.
                let e = if plan.wrote { e.unanswered_commit() } else { e };
                self.error(e.into()).await?;
            }
        }
        self.finish_fast().await.map(|_| true)
    }

    /// Ends a fast segment as `sync` ends any: portals gone, ReadyForQuery.
    async fn finish_fast(&mut self) -> Io {
        self.ext.portals.clear();
        self.ext.buffered.clear();
        self.ext.decided = false;
        let rfq = protocol::ready_for_query(self.status_byte());
        self.write(rfq).await
    }

    /// The server-side name of client statement `name`, with a Parse queued
    /// first if this connection lacks it.
    async fn ensure_on(
        &self,
        conn: &mut ServerConn,
        name: &str,
        adding: &mut Vec<String>,
        owed: &mut Vec<Owed>,
    ) -> Result<String, ExecError> {
        let Some(s) = self.ext.stmts.get(name) else {
            return Err(ExecError::Backend(BackendError::Protocol {
                shard: conn.shard,
                message: format!("prepared statement \"{name}\" does not exist"),
            }));
        };
        if !conn.prepared.contains(&s.backend) && !adding.contains(&s.backend) {
            conn.send_extended(&s.parse_message()).await?;
            adding.push(s.backend.clone());
            owed.push(Owed::Prepared(s.backend.clone()));
        }
        Ok(s.backend.clone())
    }

    /// Whether the batch qualifies, and where it goes.
    fn fast_plan(&self) -> Option<Plan1> {
        let mut parsed: Vec<(String, ClientStmt)> = Vec::new();
        let mut portals: Vec<&str> = Vec::new();
        let mut shard = None;
        let mut wrote = false;
        let lookup = |parsed: &[(String, ClientStmt)], name: &str| -> Option<(String, Vec<u32>)> {
            match parsed.iter().rev().find(|(n, _)| n == name) {
                Some((_, s)) => Some((s.sql.clone(), s.param_types().to_vec())),
                None => self
                    .ext
                    .stmts
                    .get(name)
                    .map(|s| (s.sql.clone(), s.param_types().to_vec())),
            }
        };
        for f in &self.ext.batch {
            match f.tag {
                b'P' => {
                    let (name, sql, types) = parse_parse(f.body())?;
                    // Errors the proxy reports itself go the slow way.
                    if !name.is_empty()
                        && (self.ext.stmts.contains_key(name)
                            || parsed.iter().any(|(n, _)| n == name))
                    {
                        return None;
                    }
                    // A statement parsed twice in one batch (the unnamed one
                    // replaced) is bound by position: the slow path does that.
                    if router::split_statements(sql).len() > 1
                        || parsed.iter().any(|(n, _)| n == name)
                    {
                        return None;
                    }
                    parsed.push((name.to_string(), ClientStmt::new(sql, types)));
                }
                b'B' => {
                    let b: BindMsg = parse_bind(f.body())?;
                    let (sql, types) = lookup(&parsed, b.stmt)?;
                    let s = match plan_text(&sql, &self.shared, &bounds(&b, &types)).ok()? {
                        Plan::Forward {
                            route: Route::One(s),
                            write,
                        } => {
                            wrote |= write.may();
                            s
                        }
                        Plan::Forward {
                            route: Route::Any,
                            write,
                        } => {
                            wrote |= write.may();
                            self.shared.map().default_shard
                        }
                        _ => return None,
                    };
                    if shard.is_some_and(|x| x != s) {
                        return None;
                    }
                    shard = Some(s);
                    portals.push(b.portal);
                }
                b'D' => {
                    let (kind, rest) = f.body().split_first()?;
                    let (name, _) = take_cstr(rest)?;
                    match kind {
                        b'S' => {
                            let (sql, _) = lookup(&parsed, name)?;
                            // SQL `EXECUTE`: described by the session, with
                            // the columns of the client's statement (the
                            // shard knows it by another name). Its first
                            // word tells, without planning every statement
                            // a driver prepares.
                            if router::first_word_in(&sql, &["execute"]) {
                                return None;
                            }
                        }
                        b'P' if portals.contains(&name) => {}
                        _ => return None,
                    }
                }
                b'E' => {
                    let (name, _) = take_cstr(f.body())?;
                    if !portals.contains(&name) {
                        return None;
                    }
                }
                _ => return None,
            }
        }
        Some(Plan1 {
            shard: shard.unwrap_or(self.shared.map().default_shard),
            parsed,
            wrote,
        })
    }
}

/// The client's Bind with the server-side statement name.
fn rebind(b: &BindMsg, backend: &str) -> Bytes {
    message(b'B', |m| {
        put_cstr(m, b.portal);
        put_cstr(m, backend);
        m.put_slice(b.rest);
    })
}
