//! Describe, Execute and Close: answering for statements and portals from the
//! shard(s) a portal was bound on; a portal over several shards merges their rows.

use super::wire::reply;
use super::*;

/// Describe or Close (`tag`) of a portal.
fn portal_message(tag: u8, portal: &str) -> Bytes {
    message(tag, |b| {
        b.put_u8(b'P');
        put_cstr(b, portal);
    })
}

impl Session {
    pub(super) async fn ext_describe(&mut self, kind: u8, name: &str) -> Result<bool, Fatal> {
        if self.aborted_block(None) {
            return Ok(self.error(Error::Txn(TxnMisuse::Aborted)).await?);
        }
        if kind == b'S' {
            let Some(s) = self.ext.stmts.get(name) else {
                return Ok(self
                    .error(Error::Name(NameError::NoStatement(name.to_string())))
                    .await?);
            };
            let (parse, backend) = (s.parse_message(), s.backend.clone());
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
                Ok(true) => reply(&mut conn, &mut self.out, b"Tn", true).await,
                Ok(false) => Ok((false, None)),
                Err(e) => Err(e),
            };
            self.put_conn(slot, conn, Writes::No);
            if let Ok((_, Some(types))) = &r {
                if let Some(s) = self.ext.stmts.get_mut(name) {
                    s.described = Some(types.clone());
                }
            }
            return Ok(self.finish_exec(r.map(|(ok, _)| !ok)).await?);
        }
        let shard = match self.ext.portals.get(name) {
            None => {
                return Ok(self
                    .error(Error::Name(NameError::NoPortal(name.to_string())))
                    .await?);
            }
            Some(PortalKind::Control { .. }) => {
                self.write(&message(b'n', |_| {})).await?;
                return Ok(true);
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
        Ok(self.finish_exec(r.map(|(ok, _)| !ok)).await?)
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
        match kind {
            PortalKind::Control { sql, plan } => {
                let (sql, plan) = (sql.clone(), plan.clone());
                // Close the segment's own implicit transaction first.
                self.sync_segment().await?;
                Ok(self.execute(&sql, Ok(plan)).await?)
            }
            PortalKind::Single { shard, write } => {
                let (shard, write) = (*shard, *write);
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
            } => {
                let (shards, merge, write) = (shards.clone(), *merge, *write);
                // A row limit is passed on; it matters only if a shard
                // actually stops early, which cannot be continued across shards.
                let mut suspended = false;
                let mut taken = match self.take_conns(&shards).await {
                    Ok(t) => t,
                    Err(e) => return Ok(self.error(e).await?),
                };
                let mut merger = Merger::default();
                let r: Result<(), ExecError> = async {
                    for (_, conn) in taken.iter_mut() {
                        conn.send_extended(&execute).await?;
                        conn.send_extended(&FLUSH).await?;
                        conn.flush().await?;
                    }
                    for (i, (_, conn)) in taken.iter_mut().enumerate() {
                        suspended |= executor::collect(
                            conn,
                            &mut merger,
                            merge,
                            i == 0,
                            Until::Executed,
                            &mut self.out,
                        )
                        .await?;
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
                if suspended {
                    let e = Error::Unsupported("a row limit on a portal whose rows come from several shards is not supported yet".into());
                    return Ok(self.error(e).await?);
                }
                let failed = merger.failed();
                if let Some(last) = merger.finish() {
                    self.write(&last).await?;
                }
                if failed {
                    self.fail();
                }
                Ok(!failed)
            }
        }
    }

    pub(super) async fn ext_close(&mut self, kind: u8, name: &str) -> Result<bool, Fatal> {
        if kind == b'S' {
            self.ext.stmts.remove(name);
        } else if let Some(p) = self.ext.portals.remove(name) {
            let shards = match p {
                PortalKind::Single { shard, .. } => vec![shard],
                PortalKind::Multi { shards, .. } | PortalKind::Merged { shards, .. } => shards,
                PortalKind::Control { .. } => vec![],
            };
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
        self.write(&message(b'3', |_| {})).await?;
        Ok(true)
    }

    /// Connections to every shard of a multi-shard portal; on failure, those
    /// already taken go back.
    async fn take_conns(&mut self, shards: &[ShardId]) -> Result<Vec<(Slot, PooledConn)>, Error> {
        let mut taken = Vec::new();
        for s in shards {
            match self.take_conn(*s).await {
                Ok(x) => taken.push(x),
                Err(e) => {
                    for (slot, conn) in taken {
                        self.put_conn(slot, conn, Writes::No);
                    }
                    return Err(e);
                }
            }
        }
        Ok(taken)
    }

    /// Describe of a merged portal: the client's columns, made from a shard's
    /// description of the statement the shards run.
    async fn describe_merged(
        &mut self,
        shard: ShardId,
        portal: &str,
        plan: &crate::merge::MergePlan,
        formats: &[i16],
    ) -> Result<bool, Fatal> {
        let describe = portal_message(b'D', portal);
        let (slot, mut conn) = match self.take_conn(shard).await {
            Ok(x) => x,
            Err(e) => return Ok(self.error(e).await?),
        };
        let r: Result<Frame, BackendError> = async {
            conn.send_extended(&describe).await?;
            conn.send_extended(&FLUSH).await?;
            conn.flush().await?;
            loop {
                let f = conn.read().await?;
                if matches!(f.tag, b'T' | b'n' | b'E') {
                    return Ok(f);
                }
            }
        }
        .await;
        self.put_conn(slot, conn, Writes::No);
        let f = match r {
            Ok(f) => f,
            Err(e) => return Ok(self.error(e.into()).await?),
        };
        let opts = crate::merge::RunOptions {
            bytewise: self.shared.collations.bytewise(),
            formats,
            executed: true,
        };
        let answer = match f.tag {
            b'T' => crate::merge::describe(plan, f.body(), &opts),
            b'E' => Err(f.bytes),
            _ => Ok(f.bytes),
        };
        match answer {
            Ok(b) => {
                self.write(&b).await?;
                Ok(true)
            }
            Err(e) => {
                self.write(&e).await?;
                self.fail();
                Ok(false)
            }
        }
    }

    /// Execute of a merged portal: every shard describes and runs its part,
    /// the proxy merges the rows into the client's formats.
    async fn execute_merged(
        &mut self,
        shards: &[ShardId],
        portal: &str,
        plan: &crate::merge::MergePlan,
        formats: &[i16],
        max: i32,
    ) -> Result<bool, Fatal> {
        if max > 0 {
            let e = Error::Unsupported(
                "a row limit on a portal whose rows the proxy merges from several shards is not supported; fetch all rows (row limit 0)".into(),
            );
            return Ok(self.error(e).await?);
        }
        let mut taken = match self.take_conns(shards).await {
            Ok(t) => t,
            Err(e) => return Ok(self.error(e).await?),
        };
        let describe = portal_message(b'D', portal);
        let execute = message(b'E', |b| {
            put_cstr(b, portal);
            b.put_i32(0);
        });
        let opts = crate::merge::RunOptions {
            bytewise: self.shared.collations.bytewise(),
            formats,
            executed: true,
        };
        let r = async {
            for (_, conn) in taken.iter_mut() {
                conn.send_extended(&describe).await?;
                conn.send_extended(&execute).await?;
                conn.send_extended(&FLUSH).await?;
                conn.flush().await?;
            }
            let mut refs: Vec<&mut ServerConn> = taken.iter_mut().map(|(_, c)| &mut **c).collect();
            crate::merge::run(&mut refs, plan, &opts, &mut self.out).await
        }
        .await;
        for (slot, conn) in taken {
            self.put_conn(slot, conn, Writes::No);
        }
        match r {
            Ok((failed, last)) => {
                if let Some(b) = last {
                    self.write(&b).await?;
                }
                if failed {
                    self.fail();
                }
                Ok(!failed)
            }
            Err(e) => Ok(self.finish_exec(Err(e)).await?),
        }
    }
}
