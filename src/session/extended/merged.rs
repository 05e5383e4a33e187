//! Portals bound on several shards: Describe and Execute answered with one
//! merged result, and the merged rows kept for Executes with a row limit.

use super::portal::portal_message;
use super::*;

/// A multi-shard portal's rows, merged, kept for Executes with a row limit.
pub(super) struct Buffered {
    rows: std::collections::VecDeque<Bytes>,
    /// The closing message of the whole result.
    tail: Option<Bytes>,
    /// A command's (not a query's) result was all sent: it cannot run again.
    done: bool,
}

/// Splits messages the proxy itself produced into frames.
fn frames_of(buf: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(len) = buf.get(i + 1..i + 5) {
        let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(m) = buf.get(i..i + 1 + n) else {
            break;
        };
        out.push(Bytes::copy_from_slice(m));
        i += 1 + n;
    }
    out
}

impl Session {
    /// Connections to every shard of a multi-shard portal; on failure, those
    /// already taken go back.
    pub(super) async fn take_conns(
        &mut self,
        shards: &[ShardId],
    ) -> Result<Vec<(Slot, PooledConn)>, Error> {
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

    /// consistent_reads: gives each of `taken` a share of `hold`, let go
    /// at its first answer to an Execute (past a Describe's, when
    /// `execute`); `single`: the statement takes one snapshot per shard
    /// (see `Reading::single_snapshot`). When the hold could not be had
    /// (the wait was cancelled, the lock shard refused), every connection
    /// goes back and the error is the caller's to report.
    pub(super) fn share_taken(
        &mut self,
        taken: &mut Vec<(Slot, PooledConn)>,
        hold: Result<Option<crate::session::consistent::Hold>, Error>,
        single: bool,
        execute: bool,
    ) -> Result<(), Error> {
        match hold {
            Ok(Some(h)) => {
                if single {
                    h.single_snapshot();
                }
                for (_, conn) in taken.iter_mut() {
                    if execute {
                        crate::session::consistent::attach_for_execute(conn, &h);
                    } else {
                        crate::session::consistent::attach(conn, &h, 0);
                    }
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                for (slot, conn) in taken.drain(..) {
                    self.put_conn(slot, conn, Writes::No);
                }
                Err(e)
            }
        }
    }

    /// Describe of a merged portal: the client's columns, made from a shard's
    /// description of the statement the shards run.
    pub(super) async fn describe_merged(
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
        let r = async {
            conn.send_extended(&describe).await?;
            conn.send_extended(&FLUSH).await?;
            conn.flush().await?;
            executor::read_until(&mut conn, b"TnE").await
        }
        .await;
        self.put_conn(slot, conn, Writes::No);
        let f = match r.map(|mut frames| frames.pop()) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(self.error(Error::Txn(TxnMisuse::Aborted)).await?),
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
    pub(super) async fn execute_merged(
        &mut self,
        shards: &[ShardId],
        portal: &str,
        plan: &crate::merge::MergePlan,
        formats: &[i16],
        max: i32,
    ) -> Result<bool, Fatal> {
        let mut taken = match self.take_conns(shards).await {
            Ok(t) => t,
            Err(e) => return Ok(self.error(e).await?),
        };
        // consistent_reads: the Execute's snapshots under the fence, let go
        // at each shard's first answer past its Describe's.
        let at_bind = !plan.write.may() && crate::session::consistent::binds_snapshot(&plan.sql);
        let hold = self.execute_hold(portal, taken.len(), at_bind).await;
        if let Err(e) = self.share_taken(&mut taken, hold, !plan.write.may(), true) {
            return Ok(self.error(e).await?);
        }
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
        let mut buf: Vec<u8> = Vec::new();
        let r = async {
            for (_, conn) in taken.iter_mut() {
                conn.send_extended(&describe).await?;
                conn.send_extended(&execute).await?;
                conn.send_extended(&FLUSH).await?;
                conn.flush().await?;
            }
            let mut refs: Vec<&mut ServerConn> = taken.iter_mut().map(|(_, c)| &mut **c).collect();
            executor::settle_all(&mut refs).await;
            if max > 0 {
                crate::merge::run(&mut refs, plan, &opts, &mut buf).await
            } else {
                crate::merge::run(&mut refs, plan, &opts, &mut self.out).await
            }
        }
        .await;
        for (slot, conn) in taken {
            self.put_conn(slot, conn, Writes::No);
        }
        if let (true, Ok((Answer::Succeeded, last))) = (max > 0, &r) {
            let last = last.clone();
            return self.buffer_then_serve(portal, &buf, last, max).await;
        }
        Ok(self.finish_merge(r).await?)
    }

    /// Ends a merge's answer: its closing message (CommandComplete or the
    /// error) to the client, the block failed if it failed.
    pub(super) async fn finish_merge(
        &mut self,
        r: Result<(Answer, Option<Bytes>), ExecError>,
    ) -> std::io::Result<bool> {
        match r {
            Ok((answer, last)) => {
                if let Some(b) = last {
                    self.write(&b).await?;
                }
                if answer.failed() {
                    self.fail();
                }
                Ok(!answer.failed())
            }
            Err(e) => self.finish_exec(Err(e)).await,
        }
    }

    /// Keeps a multi-shard result the proxy collected in `buf` (closing
    /// message `last`) for Executes with a row limit, and serves the first.
    pub(super) async fn buffer_then_serve(
        &mut self,
        portal: &str,
        buf: &[u8],
        last: Option<Bytes>,
        max: i32,
    ) -> Result<bool, Fatal> {
        let mut rows = std::collections::VecDeque::new();
        for f in frames_of(buf) {
            if f.first() == Some(&b'D') {
                rows.push_back(f);
            } else {
                // Notices go out now.
                self.write(&f).await?;
            }
        }
        self.ext.buffered.insert(
            portal.to_string(),
            Buffered {
                rows,
                tail: last,
                done: false,
            },
        );
        self.serve_buffered(portal, max).await
    }

    /// One Execute of a buffered portal: up to `max` rows (0: all), then
    /// PortalSuspended if the limit was reached, else the closing message
    /// counting this Execute's rows, as PostgreSQL tags a portal's last fetch.
    pub(super) async fn serve_buffered(&mut self, portal: &str, max: i32) -> Result<bool, Fatal> {
        let Some(b) = self.ext.buffered.get_mut(portal) else {
            return Ok(false);
        };
        if b.done {
            let e = Error::Name(NameError::PortalDone(portal.to_string()));
            return Ok(self.error(e).await?);
        }
        let n = match usize::try_from(max) {
            Ok(m) if m > 0 => m.min(b.rows.len()),
            _ => b.rows.len(),
        };
        let rows: Vec<Bytes> = b.rows.drain(..n).collect();
        let suspended = max > 0 && n == max as usize;
        let tail = b.tail.clone();
        for r in rows {
            self.write(&r).await?;
        }
        if suspended {
            self.write(&protocol::portal_suspended()).await?;
            return Ok(true);
        }
        let tag = tail
            .as_ref()
            .and_then(|t| take_cstr(t.get(5..).unwrap_or_default()).map(|x| x.0.to_string()));
        let query = tag
            .as_deref()
            .and_then(crate::protocol::tag_rows)
            .is_some_and(|(verb, _)| verb == "SELECT");
        let tail = match (query, tail) {
            (true, _) => Some(protocol::command_complete(&format!("SELECT {n}"))),
            (false, t) => {
                if let Some(b) = self.ext.buffered.get_mut(portal) {
                    b.done = true;
                }
                t
            }
        };
        if let Some(t) = tail {
            self.write(&t).await?;
        }
        Ok(true)
    }
}
