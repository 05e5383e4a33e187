//! Two-stage plans through the extended protocol. At Bind, where
//! PostgreSQL takes a portal's snapshot, the bound values are written into
//! the statement as typed literals, the stages run (as in the simple
//! protocol), and the outer statement with the stages' rows in place is
//! bound as the client's portal on the shard(s) it routes to. Describe,
//! Execute with a row limit, result formats and Close are then those of an
//! ordinary portal, answered by PostgreSQL.
//!
//! The filled statement is new text at every Bind, so it goes to the
//! shards as their unnamed statement (which the proxy uses for nothing
//! else): nothing is left prepared on a pooled connection.

use super::*;

const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

impl Session {
    /// The statement with its bound values written in as typed literals;
    /// `None` when an error was sent.
    pub(super) async fn inline_bound(
        &mut self,
        sql: &str,
        types: &[u32],
        b: &wire::BindMsg<'_>,
    ) -> std::io::Result<Option<String>> {
        // As many values as the statement has parameters, as PostgreSQL checks.
        let need = router::max_param(sql).unwrap_or(0).max(types.len());
        if b.values.len() != need {
            let e = ClientError::Protocol(format!(
                "bind message supplies {} parameters, but prepared statement \"{}\" requires {need}",
                b.values.len(),
                b.stmt,
            ));
            self.error(Error::Client(e)).await?;
            return Ok(None);
        }
        // Types the client left unspecified are the server's to infer: their
        // values go in as untyped literals, which it resolves the same way.
        let mut types = types.to_vec();
        types.resize(b.values.len(), 0);
        let Some(texts) = self.param_texts(b, &types).await? else {
            return Ok(None);
        };
        let literals: Vec<String> = texts
            .iter()
            .zip(&types)
            .map(|(v, oid)| router::param_literal(v.as_deref(), *oid))
            .collect();
        match router::inline_params(sql, &literals) {
            Some(text) => Ok(Some(text)),
            None => {
                self.error(Error::Unsupported(
                    "the proxy could not write this statement's parameters into it to run it in stages across shards; send it as a simple query".into(),
                ))
                .await?;
                Ok(None)
            }
        }
    }

    /// Binds the client's portal to `text` (a statement without parameters)
    /// planned as `plan`: a two-stage plan's stages run now.
    pub(super) async fn bind_staged(
        &mut self,
        text: String,
        plan: Result<Plan, router::RouteError>,
        b: &wire::BindMsg<'_>,
    ) -> Result<bool, Fatal> {
        let Some(formats) = wire::result_formats(b.results) else {
            return Err(Fatal::Protocol(malformed("Bind")));
        };
        // The stages must see what this segment wrote on its one shard's
        // own transaction: the segment becomes the implicit block they run in.
        if self.ext.seg_wrote.may() && self.ext.segment().is_some() {
            if let Err(e) = self.promote_segment("BEGIN").await {
                return Ok(self.error(e).await?);
            }
        }
        let (outer, plan) = match plan {
            Ok(Plan::Staged(staged)) => {
                self.ext_stages = true;
                let filled = self.fill_stages(&staged).await;
                self.ext_stages = false;
                match filled? {
                    Some(filled) => filled,
                    None => return Ok(false),
                }
            }
            other => (text, other),
        };
        self.ext.risky_now = false;
        let n = self.shared.map().shards;
        let (shards, kind) = match plan {
            Ok(Plan::Forward {
                route: Route::Any,
                write: Writes::No,
            }) => {
                let s = self.any_shard();
                (
                    vec![s],
                    PortalKind::Single {
                        shard: s,
                        write: Writes::No,
                    },
                )
            }
            Ok(Plan::Forward {
                route,
                write: Writes::No,
            }) => {
                let shards = route.shards(n);
                let kind = match shards.as_slice() {
                    [one] => PortalKind::Single {
                        shard: *one,
                        write: Writes::No,
                    },
                    _ => PortalKind::Multi {
                        shards: shards.clone(),
                        merge: Merge::Union,
                        write: Writes::No,
                        order: None,
                        at_bind: super::consistent::binds_snapshot(&outer),
                    },
                };
                (shards, kind)
            }
            Ok(Plan::Merge { route, plan }) => {
                let shards = route.shards(n);
                let sql = plan.sql.clone();
                let kind = PortalKind::Merged {
                    shards: shards.clone(),
                    plan,
                    formats,
                };
                // The shards answer in text; the proxy encodes the merged rows.
                return self
                    .bind_unnamed(&shards, &sql, b.portal, &[0, 0], kind)
                    .await;
            }
            Ok(_) => {
                return Ok(self
                    .error(Error::Unsupported(
                        "the outer query over subqueries across shards is not supported; fix the shard key to reach one shard, or run the subquery as a query of its own first".into(),
                    ))
                    .await?)
            }
            Err(e) => return Ok(self.error(Error::Route(e)).await?),
        };
        self.bind_unnamed(&shards, &outer, b.portal, b.results, kind)
            .await
    }

    /// A stage inside a block, read on the block's connections with
    /// extended-protocol messages under a portal of the proxy's own (a
    /// simple query would drop the client's unnamed portal there), its
    /// answer written as a simple query's would be: RowDescription,
    /// DataRows, CommandComplete (or the error). `merge`: the rows of
    /// several shards combined by that plan; else concatenated.
    pub(in crate::session) async fn stage_in_block(
        &mut self,
        route: Route,
        sql: &str,
        merge: Option<std::sync::Arc<crate::merge::MergePlan>>,
    ) -> std::io::Result<bool> {
        const PORTAL: &str = "pieskieo_stage";
        let shards = match route {
            Route::Any => vec![self
                .block_any_shard()
                .unwrap_or(self.shared.map().default_shard)],
            r => r.shards(self.shared.map().shards),
        };
        let plan = merge.unwrap_or_else(|| {
            std::sync::Arc::new(crate::merge::MergePlan {
                sql: sql.to_string(),
                shape: crate::merge::Shape::Rows { hidden: 0 },
                order: Vec::new(),
                offset: 0,
                limit: None,
                distinct: false,
                params: Vec::new(),
                write: Writes::No,
            })
        });
        let mut taken = match self.take_conns(&shards).await {
            Ok(t) => t,
            Err(e) => return self.error(e).await,
        };
        // consistent_reads: a stage reading several shards is a read like
        // any other: its snapshots (Bind's and Execute's) under the fence.
        let hold = if self.per_statement_snapshot() {
            self.snapshot_hold(taken.len()).await
        } else {
            Ok(None)
        };
        if let Err(e) = self.share_taken(&mut taken, hold, false, true) {
            return self.error(e).await;
        }
        let msgs = super::segment::run_in_portal(sql, PORTAL, true);
        // Read as a simple query's answer: described, and ended by the
        // Sync's ReadyForQuery.
        let opts = crate::merge::RunOptions {
            bytewise: self.shared.collations.bytewise(),
            formats: &[],
            executed: false,
        };
        let r = async {
            for (_, conn) in taken.iter_mut() {
                for m in &msgs {
                    conn.send_extended(m).await?;
                }
                // In a block a Sync ends nothing: it answers ReadyForQuery,
                // and after an error ends the shard's skipping of messages.
                conn.send_sync().await?;
                conn.flush().await?;
            }
            let mut refs: Vec<&mut ServerConn> = taken.iter_mut().map(|(_, c)| &mut **c).collect();
            executor::settle_all(&mut refs).await;
            crate::merge::run(&mut refs, &plan, &opts, &mut self.out).await
        }
        .await;
        for (slot, conn) in taken {
            self.put_conn(slot, conn, Writes::No);
        }
        self.finish_merge(r).await
    }

    /// Binds `portal` on each shard to `sql` as the shard's unnamed
    /// statement, with `results` as the result-format part; the first
    /// BindComplete goes to the client.
    async fn bind_unnamed(
        &mut self,
        shards: &[ShardId],
        sql: &str,
        portal: &str,
        results: &[u8],
        kind: PortalKind,
    ) -> Result<bool, Fatal> {
        let parse = message(b'P', |m| {
            put_cstr(m, "");
            put_cstr(m, sql);
            m.put_i16(0);
        });
        let bind = message(b'B', |m| {
            put_cstr(m, portal);
            put_cstr(m, "");
            m.put_i16(0);
            m.put_i16(0);
            m.put_slice(results);
        });
        // Every shard's Bind (its snapshot) under the fence, as any
        // portal's.
        let hold = match self.bind_hold(shards).await {
            Ok(h) => h,
            Err(e) => return Ok(self.error(e).await?),
        };
        for (i, shard) in shards.iter().enumerate() {
            let (slot, mut conn) = match self.take_conn(*shard).await {
                Ok(x) => x,
                Err(e) => return Ok(self.error(e).await?),
            };
            if let Some(h) = &self.ext.binding {
                crate::session::consistent::attach(&mut conn, h, 0);
            }
            let r = async {
                conn.send_extended(&parse).await?;
                conn.send_extended(&bind).await?;
                conn.send_extended(&FLUSH).await?;
                conn.flush().await?;
                let (parsed, _) = reply(&mut conn, &mut self.out, b"1", false).await?;
                if parsed.failed() {
                    return Ok(parsed);
                }
                reply(&mut conn, &mut self.out, b"2", i == 0)
                    .await
                    .map(|x| x.0)
            }
            .await;
            self.put_conn(slot, conn, Writes::No);
            if !self.finish_exec(r).await? {
                return Ok(false);
            }
        }
        let at_bind = match &kind {
            PortalKind::Multi { at_bind, .. } => *at_bind,
            PortalKind::Merged { plan, .. } => {
                !plan.write.may() && super::consistent::binds_snapshot(&plan.sql)
            }
            _ => false,
        };
        self.keep_for_execute(portal, hold, at_bind);
        self.ext.portals.insert(portal.to_string(), kind);
        Ok(true)
    }

    /// The bound values as text: text-format values as they are, binary
    /// ones the proxy can read decoded, and the others rendered by a shard
    /// (`$1::text`, in the client's settings), so that every value reads
    /// back exactly. `None`: an error was sent.
    async fn param_texts(
        &mut self,
        b: &wire::BindMsg<'_>,
        types: &[u32],
    ) -> std::io::Result<Option<Vec<Option<String>>>> {
        let mut out = Vec::with_capacity(types.len());
        let mut unread = Vec::new();
        for (i, v) in bounds(b, types).into_iter().enumerate() {
            out.push(match v {
                Bound::Null => None,
                Bound::Text(t) => Some(t),
                Bound::Unknown => {
                    unread.push(i);
                    None
                }
            });
        }
        if unread.is_empty() {
            return Ok(Some(out));
        }
        let format = |i: usize| match b.formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        };
        // Each value keeps its number (PostgreSQL's error context names
        // it); the others are bound as NULL text, which reads as nothing.
        let cols: Vec<String> = unread.iter().map(|i| format!("${}::text", i + 1)).collect();
        let n = types.len();
        let parse = message(b'P', |m| {
            put_cstr(m, "");
            put_cstr(m, &format!("SELECT {}", cols.join(", ")));
            m.put_i16(n as i16);
            for (i, t) in types.iter().enumerate() {
                m.put_u32(if unread.contains(&i) { *t } else { 25 });
            }
        });
        let bind = message(b'B', |m| {
            put_cstr(m, "");
            put_cstr(m, "");
            m.put_i16(n as i16);
            for i in 0..n {
                m.put_i16(format(i));
            }
            m.put_i16(n as i16);
            for i in 0..n {
                match b.values.get(i).copied().flatten() {
                    Some(v) if unread.contains(&i) => {
                        m.put_i32(v.len() as i32);
                        m.put_slice(v);
                    }
                    _ => m.put_i32(-1),
                }
            }
            m.put_i16(0);
        });
        let execute = message(b'E', |m| {
            put_cstr(m, "");
            m.put_i32(0);
        });
        let mut conn = match self.checkout(self.shared.map().default_shard).await {
            Ok(c) => c,
            Err(e) => {
                self.error(e).await?;
                return Ok(None);
            }
        };
        // Text that reads back as the same value whatever the settings of
        // the statement it goes into (the session's, or a block's `SET
        // LOCAL`): ISO dates, UTC offsets, ISO 8601 intervals, every float
        // digit, hex bytea.
        const EXACT: &str = "BEGIN; SET LOCAL DateStyle = 'ISO, MDY'; SET LOCAL IntervalStyle = 'iso_8601'; SET LOCAL TimeZone = 'UTC'; SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'";
        let r = async {
            conn.send_query(EXACT).await?;
            for msg in [&parse[..], &bind[..], &execute[..], &SYNC[..]] {
                conn.send_extended(msg).await?;
            }
            conn.send_query("COMMIT").await?;
            conn.flush().await?;
            let set = executor::drain(&mut conn).await?;
            let rows = executor::read_rows(&mut conn).await?;
            let end = executor::drain(&mut conn).await?;
            Ok::<_, BackendError>(match (set, end) {
                (None, None) => rows,
                (Some(e), _) | (None, Some(e)) => Err(e),
            })
        }
        .await;
        match r {
            Ok(Ok(rows)) => {
                let row = rows.first().map(|f| f.body()).unwrap_or_default();
                let mut at = 2;
                for &i in &unread {
                    let len = row
                        .get(at..at + 4)
                        .map_or(-1, |x| i32::from_be_bytes([x[0], x[1], x[2], x[3]]));
                    at += 4;
                    if len >= 0 {
                        let end = at + len as usize;
                        out[i] = row
                            .get(at..end)
                            .map(|v| String::from_utf8_lossy(v).into_owned());
                        at = end;
                    }
                }
                Ok(Some(out))
            }
            // The shard could not read a value: its error is PostgreSQL's own.
            Ok(Err(e)) => {
                self.write(&e.bytes).await?;
                self.fail();
                Ok(None)
            }
            Err(e) => {
                conn.mark_broken();
                self.error(e.into()).await?;
                Ok(None)
            }
        }
    }
}
