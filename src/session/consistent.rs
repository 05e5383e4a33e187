//! `consistent_reads` in a session: the fence's snapshot class around a
//! statement that reads several shards (held from sending it until each
//! shard's first answer, which PostgreSQL sends after taking the
//! statement's snapshot), and the snapshot of a REPEATABLE READ or
//! SERIALIZABLE block taken on every shard at once, under the fence, before
//! its first statement. One shard never enters the fence.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::backend::SnapshotHold;
use crate::txn::fence::{Class, Reading};

/// A fence hold shared by the shards of one statement: let go when the
/// last of them has answered (or went back to its pool), or when the
/// fence's watcher saw the rest wait for row locks.
pub(super) type Hold = Arc<Reading>;

/// Hands `conn` a share of `hold`, let go at its first answer after `skip`
/// ReadyForQuery (the answers to a joining shard's `BEGIN` and prelude).
pub(super) fn attach(conn: &mut ServerConn, hold: &Hold, skip: usize) {
    give_share(conn, hold, skip, false);
}

/// Hands each of the block's `parts` on `shards` a share of `hold`; a
/// shard joining now (in `fresh`) answers its `head` (so many queries)
/// first.
pub(super) fn attach_in_block(
    parts: &mut [crate::txn::Participant],
    shards: &[ShardId],
    fresh: &[ShardId],
    head: usize,
    hold: &Hold,
) {
    for p in parts.iter_mut().filter(|p| shards.contains(&p.shard())) {
        let skip = if fresh.contains(&p.shard()) { head } else { 0 };
        attach(&mut p.conn, hold, skip);
    }
}

/// Hands `conn` a share of `hold`, let go at its first answer to an
/// Execute sent after Bind or Describe messages (their answers pass).
pub(super) fn attach_for_execute(conn: &mut ServerConn, hold: &Hold) {
    give_share(conn, hold, 0, true);
}

fn give_share(conn: &mut ServerConn, hold: &Hold, skip: usize, execute: bool) {
    let share = hold.share(
        conn.shard,
        conn.process_id,
        conn.secret_key,
        conn.endpoint.clone(),
        conn.verdict.clone(),
        conn.fenced_out.clone(),
    );
    conn.snapshot_hold = Some(SnapshotHold {
        skip,
        execute,
        hold: Arc::new(share),
    });
}

/// Whether a block at this level keeps its first snapshot to the end.
pub(super) fn keeps_snapshot(level: Option<&str>) -> bool {
    matches!(level, Some("repeatable read" | "serializable"))
}

/// Whether the statement takes a snapshot (everything but `SHOW`, `SET`,
/// `RESET`, the savepoint commands — a `TransactionStmt` to PostgreSQL —
/// and `CHECKPOINT`, as the block's own bookkeeping counts it).
pub(super) fn takes_snapshot(sql: &str) -> bool {
    !crate::router::first_word_in(
        sql,
        &[
            "show",
            "set",
            "reset",
            "savepoint",
            "release",
            "rollback",
            "checkpoint",
        ],
    )
}

/// Whether PostgreSQL runs the statement without taking a snapshot though
/// it reaches a shard (`LOCK`, `SHOW`, `NOTIFY`, `LISTEN`, `UNLISTEN`,
/// `CHECKPOINT`: `PlannedStmtRequiresSnapshot`; `SET` and block control
/// never join one): in a block that keeps its first snapshot, the snapshot
/// is the next statement's.
pub(super) fn snapshot_free(sql: &str) -> bool {
    crate::router::first_word_in(
        sql,
        &["lock", "show", "notify", "listen", "unlisten", "checkpoint"],
    )
}

/// Whether a utility statement takes the transaction's snapshot when it
/// runs: all but those PostgreSQL's `PortalRunUtility` lets run without
/// one (`SHOW`, `SET`, `LOCK`, `LISTEN`, `NOTIFY`, `FETCH`, ...).
pub(super) fn utility_takes_snapshot(sql: &str) -> bool {
    takes_snapshot(sql)
        && !snapshot_free(sql)
        && !crate::router::first_word_in(sql, &["checkpoint", "fetch", "move"])
}

/// Whether a statement the classifier proved read-only runs in a portal
/// whose snapshot PostgreSQL takes at Bind (`PORTAL_ONE_SELECT`:
/// `PortalStart` takes it, and BindComplete follows), so the fence need
/// cover only the Bind. Utility statements (`SHOW`, `EXPLAIN`) take theirs
/// at Execute.
pub(super) fn binds_snapshot(sql: &str) -> bool {
    crate::router::first_word_in(sql, &["select", "with", "values", "table"])
}

/// Whether statements `sqls`, collected by `how`, may be primed: each a
/// `SELECT` proven read-only (see [`binds_snapshot`]); a merge plan says
/// whether it may write.
pub(super) fn primable(sqls: &[&str], how: &Collect<'_>) -> bool {
    let reads = match how {
        Collect::Plan(p) => !p.write.may(),
        Collect::Merge(_) => true,
    };
    // (`$1` in the text: PostgreSQL's 42P02 comes from a simple query, an
    // 08P01 from a Bind without values; dollar quotes are let be too.)
    reads && sqls.iter().all(|s| binds_snapshot(s) && !s.contains('$'))
}

/// How a primed statement's Parse and Bind went.
pub(super) enum Primed {
    /// Every shard has its portal, snapshot taken: Describe and Execute
    /// follow.
    Ready,
    /// A shard refused; its error went to the client and every connection
    /// is idle again.
    Failed,
}

/// Sends each connection its `heads` (a joining shard's `BEGIN` and
/// prelude, as queries), then `msg` and Flush, and reads each one's answers
/// up to `done`: the first ErrorResponse, if any; notices, once each, into
/// `notices`.
async fn step(
    conns: &mut [&mut ServerConn],
    heads: &[&[String]],
    msgs: &[Bytes],
    done: u8,
    notices: &mut Vec<Bytes>,
) -> Result<Option<Frame>, BackendError> {
    for (i, (c, m)) in conns.iter_mut().zip(msgs).enumerate() {
        for q in heads.get(i).copied().unwrap_or_default() {
            c.send_query(q).await?;
        }
        c.send_extended(m).await?;
        c.send_extended(&[b'H', 0, 0, 0, 4]).await?;
        c.flush().await?;
    }
    let mut failed = None;
    for (i, c) in conns.iter_mut().enumerate() {
        for _ in heads.get(i).copied().unwrap_or_default() {
            if let Some(e) = executor::drain(c).await? {
                failed.get_or_insert(e);
            }
        }
        loop {
            let f = c.read().await?;
            match f.tag {
                t if t == done => break,
                b'E' => {
                    failed.get_or_insert(f);
                    break;
                }
                b'N' if !notices.contains(&f.bytes) => notices.push(f.bytes.clone()),
                _ => {}
            }
        }
    }
    Ok(failed)
}

impl Session {
    /// `consistent_reads`, a SELECT on several shards with a snapshot of its
    /// own: the fence held for one round trip, not for the statement's run.
    /// PostgreSQL buffers a simple query's answer (RowDescription
    /// included) until it is done or 8 kB long, so "the first answer" may
    /// come only at the end. Run it instead as the server's unnamed portal:
    /// enter the fence (waiting there with no lock held on the shards), send
    /// Parse, Bind and Flush, and let the fence go at each BindComplete —
    /// the snapshot is taken by then, at Parse under REPEATABLE READ, at
    /// Bind (`PortalStart`) under READ COMMITTED. Describe, Execute and Sync
    /// follow ([`executor::send_statement`] with `primed`). `heads`: what
    /// each connection runs first (a joining shard's `BEGIN` and prelude);
    /// `Failed` leaves each connection synced, in the state PostgreSQL left
    /// it (a block's shard that failed is in `E`).
    pub(super) async fn prime(
        &mut self,
        conns: &mut [&mut ServerConn],
        heads: &[&[String]],
        sqls: &[&str],
    ) -> std::io::Result<Primed> {
        let hold = match self.snapshot_hold(conns.len()).await {
            Ok(h) => h,
            Err(e) => {
                self.error(e).await?;
                return Ok(Primed::Failed);
            }
        };
        if let Some(h) = &hold {
            // (A joining shard answers its head first.)
            for (i, c) in conns.iter_mut().enumerate() {
                attach(c, h, heads.get(i).map_or(0, |q| q.len()));
            }
        }
        drop(hold);
        let bind = protocol::message(b'B', |b| {
            protocol::put_cstr(b, "");
            protocol::put_cstr(b, "");
            b.put_i16(0);
            b.put_i16(0);
            b.put_i16(0);
        });
        let mut msgs = Vec::with_capacity(sqls.len());
        for sql in sqls {
            let mut m = BytesMut::new();
            m.extend_from_slice(&protocol::message(b'P', |b| {
                protocol::put_cstr(b, "");
                protocol::put_cstr(b, sql);
                b.put_i16(0);
            }));
            m.extend_from_slice(&bind);
            msgs.push(m.freeze());
        }
        let mut notices = Vec::new();
        let failed = step(conns, heads, &msgs, b'2', &mut notices).await;
        for n in &notices {
            self.write(n).await?;
        }
        match failed {
            Ok(None) => Ok(Primed::Ready),
            Ok(Some(frame)) => {
                for c in conns.iter_mut() {
                    let r = async {
                        c.send_sync().await?;
                        c.flush().await?;
                        executor::drain(c).await
                    }
                    .await;
                    if r.is_err() {
                        c.mark_broken();
                    }
                }
                self.write(&frame.bytes).await?;
                Ok(Primed::Failed)
            }
            Err(e) => {
                for c in conns.iter_mut() {
                    c.mark_broken();
                }
                self.error(e.into()).await?;
                Ok(Primed::Failed)
            }
        }
    }

    /// The snapshot class of the fence for a statement about to read
    /// every one of `conns` (taken already: the fence is never held while
    /// waiting for a pool), each given a share let go at its first answer.
    /// `single`: the statement calls no function the classifier does not
    /// know (see [`Reading::single_snapshot`]).
    pub(super) async fn fence_all(
        &mut self,
        conns: &mut [PooledConn],
        single: bool,
    ) -> Result<(), Error> {
        if let Some(h) = self.snapshot_hold(conns.len()).await? {
            if single {
                h.single_snapshot();
            }
            for c in conns.iter_mut() {
                attach(c, &h, 0);
            }
        }
        Ok(())
    }

    /// The snapshot class of the fence for a statement about to read
    /// `shards` shards at once; `None` when `consistent_reads` is off or
    /// it reads one shard. The client's cancel request ends the wait with
    /// PostgreSQL's `57014` (the wait is the statement's: nothing was sent
    /// yet, so nothing else is to undo; `enter` is cancel-safe).
    pub(super) async fn snapshot_hold(&mut self, shards: usize) -> Result<Option<Hold>, Error> {
        if shards < 2 {
            return Ok(None);
        }
        let Some(f) = self.shared.coordinator.fence() else {
            return Ok(None);
        };
        // Nothing of this session runs on a shard while it waits here: a
        // cancel now is for the wait alone. Forwarded to the block's idle
        // backends, it would reach them late and hit what they run next.
        // They are named again once the wait is over.
        let named = self
            .cancel_targets
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        let signal = self.cancel_signal.clone();
        let waited = tokio::select! {
            biased;
            entered = f.enter(Class::Snapshot) => entered.map(|g| Some(f.reading(g))).map_err(Error::from),
            _ = signal.after(self.cancel_seen) => {
                // Spent, as PostgreSQL clears a cancel it acted on.
                self.cancel_seen = signal.count();
                Err(Error::Canceled)
            }
        };
        if let Ok(mut t) = self.cancel_targets.lock() {
            *t = named;
        }
        waited
    }

    /// The isolation level the current block runs at: its `BEGIN` and
    /// `SET TRANSACTION`s, else the session's `default_transaction_isolation`.
    pub(super) fn block_level(&self) -> Option<&'static str> {
        let t = self.txn.as_ref()?;
        t.level().or_else(|| self.default_level())
    }

    /// The session's `default_transaction_isolation`, as set by `SET` or
    /// the startup packet: the level of a transaction that sets none.
    fn default_level(&self) -> Option<&'static str> {
        self.settings
            .get("default_transaction_isolation")
            .and_then(|s| block::isolation(s))
            .or_else(|| {
                self.startup_settings
                    .get("default_transaction_isolation")
                    .and_then(|v| block::isolation(&format!("isolation {v}")))
            })
    }

    /// Whether a Sync segment outside a block keeps one snapshot to its
    /// Sync (the session's level is REPEATABLE READ or SERIALIZABLE) under
    /// `consistent_reads`: if it may reach another shard after its first
    /// one took the snapshot, it must take it on every shard at once.
    pub(super) fn segment_keeps_snapshot(&self) -> bool {
        self.shared.coordinator.fence().is_some()
            && self.shared.map().shards > 1
            && keeps_snapshot(self.default_level())
    }

    /// Whether the block keeps one snapshot and has not taken it yet under
    /// the fence: its next snapshot must be taken on every shard at once.
    pub(super) fn needs_snapshot_everywhere(&self) -> bool {
        self.shared.coordinator.fence().is_some()
            && self.shared.map().shards > 1
            && self.txn.as_ref().is_some_and(|t| !t.fenced)
            && keeps_snapshot(self.block_level())
    }

    /// Whether a statement in the current block needs the fence for its
    /// own snapshot: a block that takes one per statement (READ COMMITTED).
    pub(super) fn per_statement_snapshot(&self) -> bool {
        !keeps_snapshot(self.block_level())
    }

    /// REPEATABLE READ / SERIALIZABLE: before the block's first statement
    /// that takes a snapshot, every shard joins it and runs `SELECT 1`
    /// (taking the block's snapshot there), all under the fence, so the
    /// block sees each distributed transaction whole on every shard it
    /// will read. `Ok(false)`: it failed and the client was told.
    pub(super) async fn snapshot_everywhere(&mut self) -> std::io::Result<bool> {
        match self.join_everywhere().await {
            Ok(()) => Ok(true),
            Err(Joined::Server(frame)) => {
                self.write(&frame.bytes).await?;
                self.fail();
                Ok(false)
            }
            Err(Joined::Failed(e)) => self.error(e).await,
        }
    }

    /// Before a query of the proxy's own on a shard of the block (a
    /// catalog read): under REPEATABLE READ it would take the block's
    /// snapshot there alone, so the block takes it on every shard at once
    /// first. `Ok(false)`: that failed and the client was told.
    pub(super) async fn snapshot_before_own_read(&mut self) -> std::io::Result<bool> {
        if self
            .txn
            .as_ref()
            .is_some_and(|t| !t.participants.is_empty())
            && self.needs_snapshot_everywhere()
        {
            return self.snapshot_everywhere().await;
        }
        Ok(true)
    }

    /// Before a utility statement the proxy answers itself that takes the
    /// transaction's snapshot in PostgreSQL (`PREPARE`, `DEALLOCATE`): in
    /// a block, the snapshot is taken now (every shard at once when the
    /// block keeps it under the fence), and the isolation level is fixed.
    /// `Ok(false)`: that failed and the client was told.
    pub(super) async fn snapshot_for_own_utility(&mut self) -> std::io::Result<bool> {
        if self.txn.is_none() {
            return Ok(true);
        }
        if self.needs_snapshot_everywhere() && !self.snapshot_everywhere().await? {
            return Ok(false);
        }
        if let Some(t) = self.txn.as_mut() {
            t.snapshot = true;
        }
        Ok(true)
    }

    /// [`Session::snapshot_everywhere`] for a caller that reports errors
    /// itself (a shard about to join for an extended-protocol message).
    pub(super) async fn join_everywhere_or(&mut self) -> Result<(), Error> {
        match self.join_everywhere().await {
            Ok(()) => Ok(()),
            Err(Joined::Server(frame)) => {
                let e = crate::protocol::ErrorFields::parse(frame.body());
                Err(Error::Backend(BackendError::Protocol {
                    shard: ShardId(0),
                    message: format!("taking the block's snapshot failed: {}", e.message),
                }))
            }
            Err(Joined::Failed(e)) => Err(e),
        }
    }

    async fn join_everywhere(&mut self) -> Result<(), Joined> {
        if !self.needs_snapshot_everywhere() {
            return Ok(());
        }
        let n = self.shared.map().shards;
        let detecting = self.shared.config().txn.deadlock_timeout_ms > 0;
        let missing: Vec<ShardId> = match self.txn.as_ref() {
            Some(t) => (0..n).map(ShardId).filter(|s| !t.has(*s)).collect(),
            None => return Ok(()),
        };
        // In shard order, as every block acquires, so no two wait on each
        // other; and before the fence, which is never held while waiting
        // for a pool.
        let mut joined = Vec::new();
        for s in &missing {
            joined.push(Participant {
                conn: self.checkout(*s).await.map_err(Joined::Failed)?,
                wrote: Writes::No,
            });
        }
        let hold = self
            .snapshot_hold(n as usize)
            .await
            .map_err(Joined::Failed)?;
        let Some(t) = self.txn.as_mut() else {
            return Ok(());
        };
        let head = t.head(detecting);
        t.participants.extend(joined);
        if let Some(h) = &hold {
            // Seen by the stall watcher: a shard's first snapshot may wait
            // (a DEFERRABLE block's, for a safe snapshot) while commits wait.
            let all: Vec<ShardId> = (0..n).map(ShardId).collect();
            attach_in_block(&mut t.participants, &all, &missing, head.len(), h);
        }
        let mut failure: Option<Joined> = None;
        let mut sent = Vec::new();
        for p in t.participants.iter_mut() {
            let fresh = missing.contains(&p.shard());
            let r = async {
                if fresh {
                    for q in &head {
                        p.conn.send_query(q).await?;
                    }
                }
                p.conn.send_query("SELECT 1").await?;
                p.conn.flush().await
            }
            .await;
            sent.push((p.shard(), fresh, r));
        }
        for (shard, fresh, r) in sent {
            let Some(p) = t.participants.iter_mut().find(|p| p.shard() == shard) else {
                continue;
            };
            if let Err(e) = r {
                failure.get_or_insert(Joined::Failed(e.into()));
                continue;
            }
            let answers = if fresh { head.len() + 1 } else { 1 };
            for _ in 0..answers {
                match executor::drain(&mut p.conn).await {
                    Ok(None) => {}
                    Ok(Some(e)) => {
                        failure.get_or_insert(Joined::Server(e));
                    }
                    Err(e) => {
                        failure.get_or_insert(Joined::Failed(e.into()));
                        break;
                    }
                }
            }
        }
        drop(hold);
        t.fenced = true;
        t.snapshot = true;
        match failure {
            None => Ok(()),
            Some(f) => Err(f),
        }
    }
}

/// Why the block could not take its snapshot everywhere.
enum Joined {
    /// A shard's own error, to relay.
    Server(Frame),
    Failed(Error),
}
