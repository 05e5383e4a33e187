//! `consistent_reads` in a session: the fence's snapshot class around a
//! statement that reads several shards (held from sending it until each
//! shard's first answer, which PostgreSQL sends after taking the
//! statement's snapshot), and the snapshot of a REPEATABLE READ or
//! SERIALIZABLE block taken on every shard at once, under the fence, before
//! its first statement. One shard never enters the fence.

use super::*;
use crate::backend::SnapshotHold;
use crate::txn::fence::{Class, FenceGuard};

/// A fence hold shared by the shards of one statement: let go when the
/// last of them has answered (or went back to its pool).
pub(super) type Hold = Arc<FenceGuard>;

/// Hands `conn` a share of `hold`, let go at its first answer after `skip`
/// ReadyForQuery (the answers to a joining shard's `BEGIN` and prelude).
pub(super) fn attach(conn: &mut ServerConn, hold: &Hold, skip: usize) {
    conn.snapshot_hold = Some(SnapshotHold {
        skip,
        hold: hold.clone(),
    });
}

/// Whether a block at this level keeps its first snapshot to the end.
fn keeps_snapshot(level: Option<&str>) -> bool {
    matches!(level, Some("repeatable read" | "serializable"))
}

/// Whether the statement takes a snapshot (everything but `SHOW`, `SET`
/// and `RESET`, as the block's own bookkeeping counts it).
pub(super) fn takes_snapshot(sql: &str) -> bool {
    !matches!(
        leading_words(sql, 1).first().map(String::as_str),
        Some("show" | "set" | "reset")
    )
}

impl Session {
    /// The snapshot class of the fence for a statement about to read
    /// `shards` shards at once; `None` when `consistent_reads` is off or
    /// it reads one shard.
    pub(super) async fn snapshot_hold(&self, shards: usize) -> Result<Option<Hold>, Error> {
        if shards < 2 {
            return Ok(None);
        }
        let Some(f) = self.shared.coordinator.fence() else {
            return Ok(None);
        };
        Ok(Some(Arc::new(f.enter(Class::Snapshot).await?)))
    }

    /// The isolation level the current block runs at: its `BEGIN` and
    /// `SET TRANSACTION`s, else the session's `default_transaction_isolation`.
    pub(super) fn block_level(&self) -> Option<&'static str> {
        let t = self.txn.as_ref()?;
        t.level().or_else(|| {
            self.settings
                .get("default_transaction_isolation")
                .and_then(|s| block::isolation(s))
                .or_else(|| {
                    self.startup_settings
                        .get("default_transaction_isolation")
                        .and_then(|v| block::isolation(&format!("isolation {v}")))
                })
        })
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
