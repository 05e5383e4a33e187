//! Describe, Execute and Close: answering for statements and portals from the
//! shard(s) a portal was bound on; a portal over several shards merges their rows.

use super::wire::reply;
use super::*;

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
            self.put_conn(slot, conn, false);
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
        };
        let describe = message(b'D', |b| {
            b.put_u8(b'P');
            put_cstr(b, name);
        });
        let (slot, mut conn) = match self.take_conn(shard).await {
            Ok(x) => x,
            Err(e) => return Ok(self.error(e).await?),
        };
        let r = async {
            conn.send_extended(&describe).await?;
            conn.send_extended(&FLUSH).await?;
            conn.flush().await?;
            reply(&mut conn, &mut self.out, b"Tn", true).await
        }
        .await;
        self.put_conn(slot, conn, false);
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
                let (slot, mut conn) = match self.take_conn(shard).await {
                    Ok(x) => x,
                    Err(e) => return Ok(self.error(e).await?),
                };
                let r = async {
                    conn.send_extended(&execute).await?;
                    conn.send_extended(&FLUSH).await?;
                    conn.flush().await?;
                    reply(&mut conn, &mut self.out, b"CIs", true).await
                }
                .await;
                self.put_conn(slot, conn, write);
                Ok(self.finish_exec(r.map(|(ok, _)| !ok)).await?)
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
                let mut taken = Vec::new();
                for s in &shards {
                    match self.take_conn(*s).await {
                        Ok(x) => taken.push(x),
                        Err(e) => {
                            for (slot, conn) in taken {
                                self.put_conn(slot, conn, false);
                            }
                            return Ok(self.error(e).await?);
                        }
                    }
                }
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
                PortalKind::Multi { shards, .. } => shards,
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
                self.put_conn(slot, conn, false);
                if let Err(ExecError::Client(e)) = r {
                    return Err(Fatal::Client(e));
                }
            }
        }
        self.write(&message(b'3', |_| {})).await?;
        Ok(true)
    }
}
