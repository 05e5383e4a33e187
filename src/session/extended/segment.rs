//! The Sync segment: the connection a segment uses outside a block, its
//! promotion into an implicit block when it reaches a second shard, the
//! block's participants taken and put back per message, and Sync.

use super::*;

impl Session {
    /// A connection to `shard` for this message: the block's participant
    /// (enlisting it), or the segment's connection outside a block.
    pub(super) async fn take_conn(&mut self, shard: ShardId) -> Result<(Slot, PooledConn), Error> {
        let detecting = self.shared.config().txn.deadlock_timeout_ms > 0;
        // A `LOCK` or `SHOW` in a block that keeps its first snapshot: the
        // snapshot comes with the next query (see `Session::exec_in_block_as`).
        let free =
            self.ext.free_now && crate::session::consistent::keeps_snapshot(self.block_level());
        // consistent_reads: a REPEATABLE READ block takes its snapshot on
        // every shard at once before any shard joins on its own.
        if !free
            && self.txn.as_ref().is_some_and(|t| !t.has(shard))
            && self.needs_snapshot_everywhere()
        {
            self.join_everywhere_or().await?;
        }
        if let Some(t) = self.txn() {
            if let Some(pos) = t.participants.iter().position(|p| p.shard() == shard) {
                let p = t.participants.swap_remove(pos);
                return Ok((Slot::Participant { wrote: p.wrote }, p.conn));
            }
            let (head, untag) = t.join_head(detecting, free);
            let mut conn = self.checkout(shard).await?;
            conn.untag = untag;
            for q in head {
                if let Err(e) = conn.simple(&q).await? {
                    return Err(Error::Backend(BackendError::Protocol {
                        shard,
                        message: format!("joining the transaction failed: {}", e.message),
                    }));
                }
            }
            return Ok((Slot::Participant { wrote: Writes::No }, conn));
        }
        match self.ext.seg.take() {
            Some(c) if c.shard == shard => Ok((Slot::Segment, c)),
            Some(other) => {
                // A second shard: the segment becomes one implicit block.
                self.ext.seg = Some(other);
                self.promote_segment("BEGIN").await?;
                Box::pin(self.take_conn(shard)).await
            }
            None => Ok((Slot::Segment, self.checkout(shard).await?)),
        }
    }

    /// The segment so far ran in one shard's own transaction; from here on
    /// it is an implicit block of the proxy's. The shard joins by `BEGIN`
    /// (sent as extended-protocol messages, before any Sync), which makes
    /// PostgreSQL turn its implicit transaction into a block that keeps the
    /// statements already run.
    pub(super) async fn promote_segment(&mut self, begin: &str) -> Result<(), Error> {
        let Some(mut conn) = self.ext.seg.take() else {
            return Ok(());
        };
        let wrote = std::mem::take(&mut self.ext.seg_wrote);
        self.transition(Event::StartImplicit, None);
        let detecting = self.shared.config().txn.deadlock_timeout_ms > 0;
        let head = match self.txn() {
            Some(t) => {
                t.begin = begin.to_string();
                t.begin_sql(detecting)
            }
            None => begin.to_string(),
        };
        // One extended statement each: BEGIN, and the deadlock tag if any.
        for stmt in head.split("\n;") {
            if let Err(e) = begin_in_segment(&mut conn, stmt).await {
                conn.mark_broken();
                self.fail();
                return Err(e);
            }
        }
        let implicit = self.block == Block::Implicit;
        if let Some(t) = self.txn() {
            t.segment |= implicit;
            t.participants.push(Participant { conn, wrote });
        }
        Ok(())
    }

    pub(super) fn put_conn(&mut self, slot: Slot, conn: PooledConn, wrote_now: Writes) {
        match slot {
            Slot::Segment => {
                self.ext.seg_wrote |= wrote_now;
                self.ext.seg = Some(conn);
            }
            Slot::Participant { wrote } => {
                let p = Participant {
                    conn,
                    wrote: wrote | wrote_now,
                };
                // A block an error ended while this connection was out is
                // rolled back with it.
                match (self.txn.as_mut(), self.doomed.last_mut()) {
                    (Some(t), _) | (None, Some(t)) => t.participants.push(p),
                    (None, None) => {
                        let mut p = p;
                        p.conn.mark_broken();
                    }
                }
            }
        }
    }

    /// Ends the segment's use of a shard's implicit transaction.
    /// An error the shard reports only at Sync (a deferred constraint at the
    /// commit of its implicit transaction) is the client's.
    pub(super) async fn sync_segment(&mut self) -> std::io::Result<bool> {
        match self.close_segment().await {
            Ok(None) => Ok(true),
            Ok(Some(e)) => {
                self.write(&e.bytes).await?;
                Ok(false)
            }
            Err(e) => self.error(e).await,
        }
    }

    /// Syncs the segment's connection; returns the error the shard reported
    /// at Sync, if the segment had not failed before.
    pub(super) async fn close_segment(&mut self) -> Result<Option<Frame>, Error> {
        // A segment that wrote commits at this Sync: no answer, unknown outcome.
        let wrote = std::mem::take(&mut self.ext.seg_wrote);
        let abort = std::mem::take(&mut self.ext.seg_abort);
        let Some(mut conn) = self.ext.seg.take() else {
            return Ok(None);
        };
        if abort {
            // An error on the server makes its Sync roll back: Bind of a
            // statement that cannot exist (harmless if it failed already and
            // skips to Sync).
            conn.send_extended(&abort_segment_message()).await?;
        }
        conn.send_sync().await?;
        conn.flush().await?;
        let err = executor::drain(&mut conn).await.map_err(|e| {
            if wrote.may() && !abort {
                e.unanswered_commit()
            } else {
                e
            }
        })?;
        if conn.settings_unknown && conn.status == b'I' && err.is_none() && !abort {
            learn_settings(&mut conn, &mut self.settings).await?;
        }
        self.learn_from = None;
        Ok(err.filter(|_| !abort && !self.ext.skipping))
    }

    /// Sync: ends the segment (committing an implicit block through the
    /// coordinator) and reports ReadyForQuery.
    pub(super) async fn sync(&mut self) -> Io {
        self.reap().await;
        if self.ext.seg.is_some() {
            self.sync_segment().await?;
        }
        if self.block == Block::Implicit {
            self.end_implicit().await?;
        } else if let Some(t) = self.txn() {
            sync_all(&mut t.participants).await;
            if t.participants.iter().any(|p| p.conn.status == b'E') {
                self.fail();
            }
        }
        if !self.block.in_block() {
            self.ext.portals.clear();
            self.ext.buffered.clear();
        }
        self.ext.seg_abort = false;
        self.ext.snapshot = false;
        self.ext.risky_now = false;
        self.ext.skipping = false;
        self.ext.decided = false;
        let rfq = protocol::ready_for_query(self.status_byte());
        self.write(rfq).await
    }
}

/// A Bind no server can satisfy: it fails the server's transaction so that
/// the following Sync rolls it back.
pub(super) fn abort_segment_message() -> Bytes {
    message(b'B', |b| {
        put_cstr(b, "");
        put_cstr(b, "pieskieo_rollback_segment");
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
    })
}

/// `BEGIN` on a connection in the middle of an extended-protocol segment,
/// as extended messages (a simple query there would end the segment). The
/// server's unnamed statement is the proxy's (client statements are
/// prepared under names), so it may be replaced.
pub(super) async fn begin_in_segment(conn: &mut ServerConn, begin: &str) -> Result<(), Error> {
    let shard = conn.shard;
    for m in &run_in_portal(begin, "pieskieo_begin", false) {
        conn.send_extended(m).await?;
    }
    conn.send_extended(&FLUSH).await?;
    conn.flush().await?;
    let frames = executor::read_until(conn, b"3E").await?;
    match frames.last().map(|f| f.tag) {
        Some(b'3') => Ok(()),
        _ => Err(Error::Backend(BackendError::Protocol {
            shard,
            message: "joining the transaction failed: the shard refused BEGIN".into(),
        })),
    }
}

/// The messages that run `sql` (no parameters, text results) as the
/// server's unnamed statement under the proxy's `portal`, and close that
/// portal: Parse, Bind, Describe (when `describe`), Execute, Close.
pub(super) fn run_in_portal(sql: &str, portal: &str, describe: bool) -> Vec<Bytes> {
    let mut msgs = vec![
        message(b'P', |b| {
            put_cstr(b, "");
            put_cstr(b, sql);
            b.put_i16(0);
        }),
        message(b'B', |b| {
            put_cstr(b, portal);
            put_cstr(b, "");
            b.put_i16(0);
            b.put_i16(0);
            b.put_i16(0);
        }),
    ];
    if describe {
        msgs.push(super::portal::portal_message(b'D', portal));
    }
    msgs.push(message(b'E', |b| {
        put_cstr(b, portal);
        b.put_i32(0);
    }));
    msgs.push(super::portal::portal_message(b'C', portal));
    msgs
}

/// Sends Sync to every participant that has unsynced extended messages.
pub(crate) async fn sync_all(parts: &mut [Participant]) {
    for p in parts.iter_mut() {
        if p.conn.needs_sync() {
            let r = async {
                p.conn.send_sync().await?;
                p.conn.flush().await?;
                executor::drain(&mut p.conn).await
            }
            .await;
            if r.is_err() {
                p.conn.mark_broken();
            }
        }
    }
}
