//! `COPY ... TO STDOUT` that several shards answer, outside a block on
//! borrowed connections, inside one on the block's shards (enlisting them);
//! the shards' answers are joined into one stream by
//! [`executor::copy_out::join`]. With `consistent_reads`, the shards take
//! the COPY's snapshots under the fence: PostgreSQL takes it (for the
//! utility statement, before `DoCopy`) before it sends CopyOutResponse,
//! each shard's first answer, where that shard's share is let go.

use super::*;
use crate::executor::copy_out;
use crate::router::CopyOut;

impl Session {
    /// `COPY ... TO STDOUT` that several shards answer: one CopyOutResponse,
    /// every shard's rows in turn (one header), one CopyDone, the counts
    /// summed. Inside a block on the block's shards (enlisting them), else
    /// on borrowed connections.
    pub(super) async fn copy_out(
        &mut self,
        stmt: &str,
        copy: Box<CopyOut>,
    ) -> std::io::Result<bool> {
        let shards = copy.route.shards(self.shared.map().shards);
        if self.txn().is_none() {
            let mut conns = Vec::with_capacity(shards.len());
            for s in &shards {
                match self.checkout(*s).await {
                    Ok(c) => conns.push(c),
                    Err(e) => return self.error(e).await,
                }
            }
            // Every connection first: the fence is never held while
            // waiting for a pool.
            if let Err(e) = self.fence_all(&mut conns, false).await {
                return self.error(e).await;
            }
            let mut refs: Vec<&mut ServerConn> = conns.iter_mut().map(|c| &mut **c).collect();
            let r = async {
                for c in refs.iter_mut() {
                    c.send_query(stmt).await?;
                    c.flush().await?;
                }
                // Each share goes at its shard's CopyOutResponse, not when
                // the shards before it have been relayed.
                executor::settle_all(&mut refs).await;
                copy_out::join(&mut refs, copy.format, copy.header, &[], &mut self.out).await
            }
            .await;
            for c in conns.iter_mut() {
                if c.status != b'I' {
                    c.mark_broken();
                }
            }
            return match r {
                Ok((answer, last)) => {
                    if let Some(b) = last {
                        self.write(&b).await?;
                    }
                    Ok(answer == Answer::Succeeded)
                }
                Err(ExecError::Backend(e)) => self.error(e.into()).await,
                Err(ExecError::Client(e)) => Err(e),
            };
        }
        // REPEATABLE READ: the block's snapshot is taken everywhere at once
        // first, as for any statement (the COPY would take it on its shards).
        if self.needs_snapshot_everywhere() && !self.snapshot_everywhere().await? {
            return Ok(false);
        }
        let Some((mut parts, head, fresh)) = self.enlist(&shards).await? else {
            return Ok(false);
        };
        let hold = if self.per_statement_snapshot() {
            self.snapshot_hold(shards.len()).await
        } else {
            Ok(None)
        };
        match hold {
            Ok(Some(h)) => {
                consistent::attach_in_block(&mut parts, &shards, &fresh, head.len(), &h);
            }
            Ok(None) => {}
            Err(e) => {
                if let Some(t) = self.txn() {
                    t.participants = parts;
                }
                return self.error(e).await;
            }
        }
        let r = async {
            let mut refs: Vec<&mut ServerConn> = Vec::new();
            for p in parts.iter_mut().filter(|p| shards.contains(&p.shard())) {
                if fresh.contains(&p.shard()) {
                    for q in &head {
                        p.conn.send_query(q).await?;
                    }
                }
                p.conn.send_query(stmt).await?;
                p.conn.flush().await?;
                refs.push(&mut *p.conn);
            }
            executor::settle_all(&mut refs).await;
            let skip: Vec<usize> = refs
                .iter()
                .enumerate()
                .filter(|(_, c)| fresh.contains(&c.shard))
                .map(|(i, _)| i)
                .collect();
            copy_out::join(
                &mut refs,
                copy.format,
                copy.header,
                &copy_out::skip_heads(&skip, head.len()),
                &mut self.out,
            )
            .await
        }
        .await;
        if let Some(t) = self.txn() {
            t.participants = parts;
        }
        match r {
            Ok((answer, last)) => {
                if answer.failed() {
                    self.fail();
                }
                self.close_statement(last).await?;
                Ok(!answer.failed())
            }
            Err(ExecError::Backend(e)) => self.error(e.into()).await,
            Err(ExecError::Client(e)) => Err(e),
        }
    }
}
