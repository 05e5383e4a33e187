//! Bind: planning a portal by its bound values and binding it on the
//! shard(s) it routes to, preparing the statement there first if needed.

use super::*;

impl Session {
    pub(super) async fn ext_bind(&mut self, body: &[u8]) -> Result<bool, Fatal> {
        let b = parse_bind(body).ok_or_else(|| Fatal::Protocol(malformed("Bind")))?;
        // consistent_reads: a REPEATABLE READ block's snapshot is taken on
        // every shard at once, before this Bind takes it on one.
        let snapshots = self
            .ext
            .stmts
            .get(b.stmt)
            .is_some_and(|s| s.snapshot || !b.values.is_empty());
        if snapshots
            && self.block != Block::Failed
            && self.needs_snapshot_everywhere()
            && !self.snapshot_everywhere().await?
        {
            return Ok(false);
        }
        // PostgreSQL's order: the statement, the block, the portal's name.
        let Some(stmt) = self.ext.stmts.get(b.stmt) else {
            return Ok(self
                .error(Error::Name(NameError::NoStatement(b.stmt.to_string())))
                .await?);
        };
        let plan = stmt.plan(&self.shared, &bounds(&b, stmt.param_types()));
        self.ext.risky_now = stmt.risky;
        self.ext.free_now = stmt.free;
        if self.aborted_block(plan.as_ref().ok()) {
            return Ok(self.error(Error::Txn(TxnMisuse::Aborted)).await?);
        }
        // consistent_reads: a utility statement (`DO`, `CALL`, DDL) takes a
        // REPEATABLE READ block's snapshot when it runs, on a shard the block
        // may hold already (a `SHOW` joined it): on every shard at once, and
        // before this Bind (the `SELECT 1` that takes it would drop the
        // unnamed portal after).
        let utility = !snapshots
            && matches!(plan, Ok(Plan::Forward { .. } | Plan::Replicate))
            && super::consistent::utility_takes_snapshot(&stmt.sql);
        if utility
            && self.block != Block::Failed
            && self.needs_snapshot_everywhere()
            && !self.snapshot_everywhere().await?
        {
            return Ok(false);
        }
        let Some(stmt) = self.ext.stmts.get(b.stmt) else {
            return Ok(false);
        };
        if !b.portal.is_empty() && self.ext.portals.contains_key(b.portal) {
            return Ok(self
                .error(Error::Name(NameError::PortalExists(b.portal.to_string())))
                .await?);
        }
        self.ext.executes.remove(b.portal);
        let depth = self.txn.as_ref().map_or(0, |t| t.savepoints.len());
        self.ext.depths.insert(b.portal.to_string(), depth);
        // Bind takes the transaction's snapshot when it has parameters to
        // read or the statement is not utility, as at Parse.
        // (A `LOCK` takes none, but what it holds cannot be undone: the
        // level is fixed from here on, as after a simple-query `LOCK`.)
        if !b.values.is_empty() || stmt.snapshot || stmt.lock {
            // (Fields, not `took_snapshot`: `stmt` still borrows the map.)
            match self.txn.as_mut() {
                Some(t) => t.snapshot = true,
                None => self.ext.snapshot = true,
            }
        }
        // The unnamed portal is replaced, rows kept for it too.
        self.ext.buffered.remove(b.portal);
        // A statement refused with its parameters as placeholders may run
        // in stages once their values are in it (a subquery filtered by
        // `$1`, `round(avg(x), $1)`).
        let stmt = if let (Err(RouteError::Unsupported(_)), false) = (&plan, b.values.is_empty()) {
            let (sql, declared) = (stmt.sql.clone(), stmt.param_types().to_vec());
            let Some(text) = self.inline_bound(&sql, &declared, &b).await? else {
                return Ok(false);
            };
            if let staged @ Ok(Plan::Staged(_)) = router::plan(&text, &self.shared.map()) {
                return self.bind_staged(text, staged, &b).await;
            }
            match self.ext.stmts.get(b.stmt) {
                Some(s) => s,
                None => return Ok(false),
            }
        } else {
            stmt
        };
        let plan = match plan {
            Ok(p) => p,
            Err(e) => {
                if !b.portal.is_empty() {
                    self.ext
                        .portals
                        .insert(b.portal.to_string(), PortalKind::Refused(e.clone()));
                }
                return Ok(self.error(Error::Route(e)).await?);
            }
        };
        let n = self.shared.map().shards;
        // Statements the proxy derives from the client's take the client's
        // values by number: a Bind with another number of them gets
        // PostgreSQL's 08P01 here (a single shard checks it itself).
        if matches!(plan, Plan::Merge { .. } | Plan::Split { .. })
            && b.values.len() != stmt.param_count()
        {
            let e = ClientError::Protocol(format!(
                "bind message supplies {} parameters, but prepared statement \"{}\" requires {}",
                b.values.len(),
                b.stmt,
                stmt.param_count()
            ));
            return Ok(self.error(Error::Client(e)).await?);
        }
        let select = super::consistent::binds_snapshot(&stmt.sql);
        // The statement bound on the shards, when not the client's.
        let mut via = None;
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
                // Every shard's Bind (its snapshot) under the fence.
                let hold = match self.bind_hold(&shards).await {
                    Ok(h) => h,
                    Err(e) => return Ok(self.error(e).await?),
                };
                if !self
                    .bind_derived(&parts, &declared, &b, Some(&[0, 0]))
                    .await?
                {
                    return Ok(false);
                }
                let at_bind = !plan.write.may() && super::consistent::binds_snapshot(&plan.sql);
                self.keep_for_execute(b.portal, hold, at_bind);
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
                let order = Some(parts.iter().map(|p| p.rows.clone()).collect());
                self.ext.portals.insert(
                    b.portal.to_string(),
                    PortalKind::Multi {
                        shards,
                        merge: Merge::Union,
                        write: Writes::Yes,
                        order,
                        at_bind: false,
                    },
                );
                return Ok(true);
            }
            // PostgreSQL analyses a COPY only when it runs: at Bind it takes
            // exactly the parameters Parse declared.
            Plan::CopyIn(_) | Plan::CopyOut(_) if b.values.len() != stmt.types.len() => {
                let e = ClientError::Protocol(format!(
                    "bind message supplies {} parameters, but prepared statement \"{}\" requires {}",
                    b.values.len(),
                    b.stmt,
                    stmt.types.len()
                ));
                return Ok(self.error(Error::Client(e)).await?);
            }
            // The SELECT runs as `COPY (...) TO STDOUT` on a shard, where
            // the client's parameters do not exist.
            Plan::InsertSelect { .. } if !b.values.is_empty() => {
                return Ok(self
                    .error(Error::Unsupported(
                        "INSERT INTO a sharded table ... SELECT with parameters is not supported by Pieskieo through the extended query protocol: write the values into the statement, or send it as a simple query".into(),
                    ))
                    .await?)
            }
            staged @ Plan::Staged(_) if b.values.is_empty() => {
                return self.bind_staged(stmt.sql.clone(), Ok(staged), &b).await;
            }
            Plan::Staged(_) => {
                let (sql, declared) = (stmt.sql.clone(), stmt.param_types().to_vec());
                let Some(text) = self.inline_bound(&sql, &declared, &b).await? else {
                    return Ok(false);
                };
                let plan = router::plan(&text, &self.shared.map());
                return self.bind_staged(text, plan, &b).await;
            }
            Plan::NeedKeys(req) => {
                let (sql, declared) = (stmt.sql.clone(), stmt.types.clone());
                return self.bind_with_keys(&sql, &declared, &b, req).await;
            }
            // The statement with its columns listed replaces the client's
            // (the same meaning), and is bound instead.
            Plan::NeedColumns(req) => {
                let sql = stmt.sql.clone();
                let Some((text, plan)) = self.listing_columns(&sql, &req).await? else {
                    return Ok(false);
                };
                if text == sql {
                    // A table the catalog does not know: PostgreSQL's error.
                    (vec![self.shared.map().default_shard], Merge::Union, Writes::Yes)
                } else if matches!(plan, Ok(Plan::NeedColumns(_))) {
                    let e = Error::Unsupported(
                        "this INSERT without a column list could not be planned; name its columns"
                            .into(),
                    );
                    return Ok(self.error(e).await?);
                } else {
                    if let Some(s) = self.ext.stmts.get_mut(b.stmt) {
                        s.set_sql(&text);
                    }
                    return Box::pin(self.ext_bind(body)).await;
                }
            }
            // SQL `EXECUTE` of a statement this session prepared, routed by
            // its arguments: bound on its shards as `EXECUTE` of the
            // statement's name there (created first), so a shard describes
            // the portal and honours its result formats and row limits, as
            // PostgreSQL does. A read the proxy merges or runs in stages is
            // bound as its text with the arguments written in. A name not
            // prepared (PostgreSQL finds that out when the portal runs) and
            // other kinds of statement are run by the session at Execute.
            Plan::Execute { name, args } if self.sql_prepared.contains_key(&name) => {
                let (types, client_sql) = (stmt.types.clone(), stmt.sql.clone());
                let count = stmt.param_count();
                let map = self.shared.map();
                let Some(target) = self.sql_prepared.get(&name) else {
                    return Ok(false);
                };
                let (text, need) = (target.execute_text(&args), target.needs());
                let body = target.body.clone();
                let routed = match target.plan(&map, &args) {
                    Ok(Plan::Forward {
                        route: Route::Any,
                        write,
                    }) => Some((vec![self.any_shard()], Merge::Union, write)),
                    Ok(Plan::Forward { route, write }) => {
                        Some((route.shards(n), Merge::Union, write))
                    }
                    Ok(Plan::Replicate) => Some((route_all(n), Merge::Copies, Writes::Yes)),
                    plan @ (Ok(Plan::Merge { .. } | Plan::Staged(_))
                    | Err(RouteError::Unsupported(_))) => {
                        // The text bound has no parameters: the Bind's
                        // number is checked here, as a shard would.
                        if b.values.len() != count {
                            let e = ClientError::Protocol(format!(
                                "bind message supplies {} parameters, but prepared statement \"{}\" requires {count}",
                                b.values.len(),
                                b.stmt,
                            ));
                            return Ok(self.error(Error::Client(e)).await?);
                        }
                        let inlined = self.inline_execute(&name, &args, plan);
                        let Some(text) = inlined.await? else {
                            return Ok(false);
                        };
                        let plan = router::plan(&text, &map);
                        return self.bind_staged(text, plan, &b).await;
                    }
                    _ => None,
                };
                match routed {
                    Some(routed) => {
                        // It takes the block's snapshot when it runs: on
                        // every shard at once first (consistent_reads).
                        if self.block != Block::Failed
                            && self.needs_snapshot_everywhere()
                            && !self.snapshot_everywhere().await?
                        {
                            return Ok(false);
                        }
                        self.took_snapshot();
                        self.ext.risky_now = router::may_change_settings(&body);
                        let shape = ClientStmt::new(&text, types);
                        let found = (name, need.0.clone());
                        self.ext.executes.insert(b.portal.to_string(), found);
                        via = Some(Via {
                            parse: shape.parse_message(),
                            backend: shape.backend,
                            need,
                        });
                        routed
                    }
                    None => {
                        let plan = Plan::Execute { name, args };
                        return self.bind_control(b.portal, client_sql, plan).await;
                    }
                }
            }
            control => {
                let sql = stmt.sql.clone();
                return self.bind_control(b.portal, sql, control).await;
            }
        };
        let portal = b.portal.to_string();
        let stmt_name = b.stmt.to_string();
        let rest = Bytes::copy_from_slice(b.rest);
        let hold = match self.bind_hold(&shards).await {
            Ok(h) => h,
            Err(e) => return Ok(self.error(e).await?),
        };
        for (i, shard) in shards.iter().enumerate() {
            let bound = match &via {
                Some(v) => {
                    let need = Some(&v.need);
                    self.bind_statement(*shard, &v.parse, &v.backend, &portal, &rest, i == 0, need)
                        .await?
                }
                None => {
                    self.bind_on(*shard, &stmt_name, &portal, &rest, i == 0)
                        .await?
                }
            };
            if !bound {
                return Ok(false);
            }
        }
        let at_bind = !write.may() && select;
        self.keep_for_execute(&portal, hold, at_bind);
        let kind = match shards.as_slice() {
            [one] => PortalKind::Single { shard: *one, write },
            _ => PortalKind::Multi {
                shards,
                merge,
                write,
                order: None,
                at_bind,
            },
        };
        self.ext.portals.insert(portal, kind);
        Ok(true)
    }

    /// consistent_reads: the Binds' hold goes on to the portal's Execute
    /// when that comes next in the batch (one turn of the fence for both),
    /// else it ends here. It ends here too when the portal took its
    /// snapshot at Bind (`at_bind`: a SELECT proven read-only, see
    /// `consistent::binds_snapshot`).
    pub(super) fn keep_for_execute(
        &mut self,
        portal: &str,
        hold: Option<super::consistent::Hold>,
        at_bind: bool,
    ) {
        self.ext.binding = None;
        self.ext.carried = match hold {
            Some(h) if self.ext.executed_next && !at_bind => Some((portal.to_string(), h)),
            _ => None,
        };
    }

    /// consistent_reads: the fence's snapshot class over an Execute of a
    /// portal bound on `shards` (PostgreSQL takes the snapshots of all but
    /// a plain SELECT there, and a VOLATILE function's queries take their
    /// own): the Binds' hold if it was kept for it, else a new one. Each
    /// connection is then given a share, let go at its first answer.
    pub(super) async fn execute_hold(
        &mut self,
        portal: &str,
        shards: usize,
        at_bind: bool,
    ) -> Result<Option<super::consistent::Hold>, Error> {
        if let Some((p, h)) = self.ext.carried.take() {
            if p == portal {
                return Ok(Some(h));
            }
        }
        if at_bind || self.shared.coordinator.fence().is_none() || !self.per_statement_snapshot() {
            return Ok(None);
        }
        self.snapshot_hold(shards).await
    }

    /// consistent_reads: the fence's snapshot class over the Binds of a
    /// portal on `shards` shards (each Bind's BindComplete comes after its
    /// shard took the portal's snapshot), unless the block keeps one
    /// snapshot, taken everywhere already.
    pub(super) async fn bind_hold(
        &mut self,
        shards: &[ShardId],
    ) -> Result<Option<super::consistent::Hold>, Error> {
        if shards.len() < 2
            || self.shared.coordinator.fence().is_none()
            || !self.per_statement_snapshot()
        {
            return Ok(None);
        }
        // Every shard's connection first: the fence is never held while
        // waiting for a pool (a committer holding it may hold the last
        // connection).
        for s in shards {
            let (slot, conn) = self.take_conn(*s).await?;
            self.put_conn(slot, conn, Writes::No);
        }
        let hold = self.snapshot_hold(shards.len()).await?;
        self.ext.binding = hold.clone();
        Ok(hold)
    }

    /// Binds the client's portal on each shard to a statement the router
    /// derived from the client's: `(shard, sql, params)` where the derived
    /// `$k` is the client's parameter `params[k - 1]`. `results` replaces the
    /// client's result formats. The first BindComplete goes to the client.
    pub(super) async fn bind_derived(
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
                .bind_statement(*shard, &parse, &backend, b.portal, &rest, i == 0, None)
                .await?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Binds an INSERT that leaves keys to the cluster: the keys become
    /// parameters after the client's (`$n+1`, ...), so the statement each
    /// shard prepares is the same from one execution to the next.
    async fn bind_with_keys(
        &mut self,
        sql: &str,
        declared: &[u32],
        b: &wire::BindMsg<'_>,
        req: router::KeyRequest,
    ) -> Result<bool, Fatal> {
        let keys = match self.cluster_keys(&req).await {
            Ok(k) => k,
            Err(e) => return Ok(self.error(e).await?),
        };
        let n = b.values.len();
        let filled =
            match router::fill_keys(sql, &req.column, &keys.values, Some(n + 1), keys.always) {
                Ok(s) => s,
                Err(e) => return Ok(self.error(Error::Route(e)).await?),
            };
        // The client's parameters, then the keys as text.
        let mut formats: Vec<i16> = (0..n)
            .map(|i| match b.formats.as_slice() {
                [] => 0,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(0),
            })
            .collect();
        formats.extend(keys.values.iter().map(|_| 0));
        let mut values = b.values.clone();
        values.extend(keys.values.iter().map(|k| Some(k.as_bytes())));
        let all = wire::BindMsg {
            portal: b.portal,
            stmt: b.stmt,
            rest: b.rest,
            formats,
            values,
            results: b.results,
        };
        let mut types = declared.to_vec();
        types.resize(n, 0);
        let mut bound = bounds(b, &types);
        bound.extend(keys.values.iter().map(|k| router::Bound::Text(k.clone())));
        types.extend(keys.values.iter().map(|_| 0));
        let every: Vec<usize> = (0..n + keys.values.len()).collect();
        let (parts, shards, order): (Vec<Derived>, Vec<ShardId>, _) =
            match router::plan_bound(&filled, &self.shared.map(), &bound) {
                Ok(Plan::Forward {
                    route: Route::One(s),
                    ..
                }) => (vec![(s, filled.clone(), every)], vec![s], None),
                Ok(Plan::Split { parts }) => (
                    parts
                        .iter()
                        .map(|p| (p.shard, p.sql.clone(), p.params.clone()))
                        .collect(),
                    parts.iter().map(|p| p.shard).collect(),
                    Some(parts.iter().map(|p| p.rows.clone()).collect()),
                ),
                Ok(other) => {
                    return Ok(self
                        .error(Error::Unsupported(format!(
                            "INSERT with keys chosen by the cluster planned as {other:?}"
                        )))
                        .await?)
                }
                Err(e) => return Ok(self.error(Error::Route(e)).await?),
            };
        let derived: Vec<(ShardId, &str, &[usize])> = parts
            .iter()
            .map(|(s, sql, p)| (*s, sql.as_str(), p.as_slice()))
            .collect();
        if !self.bind_derived(&derived, &types, &all, None).await? {
            return Ok(false);
        }
        let kind = match shards.as_slice() {
            [one] => PortalKind::Single {
                shard: *one,
                write: Writes::Yes,
            },
            _ => PortalKind::Multi {
                shards,
                merge: Merge::Union,
                write: Writes::Yes,
                order,
                at_bind: false,
            },
        };
        self.ext.portals.insert(b.portal.to_string(), kind);
        Ok(true)
    }

    /// Binds `portal` on a shard, preparing the statement there first if needed.
    /// A portal the session runs itself at Execute.
    async fn bind_control(&mut self, portal: &str, sql: String, plan: Plan) -> Result<bool, Fatal> {
        let kind = PortalKind::Control {
            sql,
            plan,
            done: false,
        };
        self.ext.portals.insert(portal.to_string(), kind);
        self.write(&protocol::bind_complete()).await?;
        Ok(true)
    }

    pub(super) async fn bind_on(
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
        self.bind_statement(shard, &parse, &backend, portal, rest, forward, None)
            .await
    }

    /// Binds `portal` on a shard to the statement `parse` creates there as
    /// `backend`; `need`: the SQL-prepared statement it executes, created
    /// there first if the connection lacks it.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn bind_statement(
        &mut self,
        shard: ShardId,
        parse: &[u8],
        backend: &str,
        portal: &str,
        rest: &[u8],
        forward: bool,
        need: Option<&(String, String)>,
    ) -> std::io::Result<bool> {
        let (slot, mut conn) = match self.take_conn(shard).await {
            Ok(x) => x,
            Err(e) => return self.error(e).await,
        };
        if let Some(h) = &self.ext.binding {
            crate::session::consistent::attach(&mut conn, h, 0);
        }
        if std::mem::take(&mut self.ext.risky_now) {
            conn.settings_unknown = true;
            self.learn_from = Some(shard);
        }
        let bind = message(b'B', |b| {
            put_cstr(b, portal);
            put_cstr(b, backend);
            b.put_slice(rest);
        });
        let r = match self.prepare_sql_statement(&mut conn, need).await {
            Ok(Answer::Succeeded) => {
                self.prepare_and_send(&mut conn, parse, backend, &[&bind])
                    .await
            }
            other => other,
        };
        let r = match r {
            Ok(Answer::Succeeded) => reply(&mut conn, &mut self.out, b"2", forward)
                .await
                .map(|x| x.0),
            other => other,
        };
        self.put_conn(slot, conn, Writes::No);
        self.finish_exec(r).await
    }

    /// Sends Parse if this connection lacks the statement, then `msgs` and a
    /// Flush; reads the Parse's answer. `Ok(false)`: the Parse failed (told).
    pub(super) async fn prepare_and_send(
        &mut self,
        conn: &mut ServerConn,
        parse: &[u8],
        backend: &str,
        msgs: &[&[u8]],
    ) -> Result<Answer, ExecError> {
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
            let (answer, _) = reply(conn, &mut self.out, b"1", false).await?;
            if answer.failed() {
                return Ok(answer);
            }
            conn.prepared.insert(backend.to_string());
        }
        Ok(Answer::Succeeded)
    }

    /// Creates on `conn` the SQL-prepared statement an `EXECUTE` names
    /// (`need`: its name there and the `PREPARE` that makes it) if the
    /// connection lacks it, with extended-protocol messages in a portal of
    /// the proxy's: a simple query would end the implicit transaction of
    /// the client's segment there and drop its unnamed portal. On failure
    /// PostgreSQL's error was told and the shard skips to the Sync.
    pub(super) async fn prepare_sql_statement(
        &mut self,
        conn: &mut ServerConn,
        need: Option<&(String, String)>,
    ) -> Result<Answer, ExecError> {
        let Some((name, prepare)) = need else {
            return Ok(Answer::Succeeded);
        };
        if conn.prepared.contains(name) {
            return Ok(Answer::Succeeded);
        }
        for m in super::segment::run_in_portal(prepare, "pieskieo_prepare", false) {
            conn.send_extended(&m).await?;
        }
        conn.send_extended(&FLUSH).await?;
        conn.flush().await?;
        let (answer, _) = reply(conn, &mut self.out, b"3", false).await?;
        if !answer.failed() {
            conn.prepared.insert(name.clone());
        }
        Ok(answer)
    }
}

/// A statement bound on the shards in place of the client's: `EXECUTE` of
/// a SQL-prepared statement under its name there.
struct Via {
    parse: Bytes,
    backend: String,
    need: (String, String),
}

/// A statement derived from the client's for one shard, with its parameters.
type Derived = (ShardId, String, Vec<usize>);

pub(super) fn route_all(n: u32) -> Vec<ShardId> {
    (0..n).map(ShardId).collect()
}
