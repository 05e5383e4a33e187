//! The clean server connections a session keeps while its client is idle,
//! one per shard, so that the next statement to that shard skips the
//! pool's checkout and return.
//!
//! A kept connection is exactly one that would have gone back to its pool
//! (idle, owing nothing, nothing unread), with the session's own settings:
//! keeping it leaves nothing on it that another client could see, since it
//! moves to another client as it would have from the pool, and every
//! checkout brings its settings in line as always.
//!
//! It never keeps a waiting client waiting: a checkout that finds its pool
//! empty takes a kept connection itself, from whichever session keeps one,
//! busy or idle (the session finds its slot empty next time and uses the
//! pool). No session has to watch for waiters, so keeping costs nothing
//! per statement beyond a lock of the session's own slots. Who keeps what
//! is registered once per session and shard, not per statement.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};

use super::{PooledConn, Pools};
use crate::router::ShardId;

/// One session's kept connections.
#[derive(Default)]
pub struct Kept {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    /// Indexed by shard id.
    conns: Vec<Option<PooledConn>>,
    /// Shards whose [`Keepers`] list this session is on.
    registered: Vec<bool>,
}

/// Per shard: the sessions that may keep one of its connections, and how
/// many are kept now (a waiting checkout looks only when some are). The
/// counts and the pool's count of waiting checkouts are each changed
/// before the other is read (sequentially consistent), so that of a
/// session keeping a connection and a checkout starting to wait, at least
/// one sees the other.
#[derive(Default)]
pub(crate) struct Keepers {
    sessions: Mutex<Vec<Weak<Kept>>>,
    kept: AtomicUsize,
}

impl Keepers {
    /// Connections kept now.
    pub(crate) fn count(&self) -> usize {
        self.kept.load(SeqCst)
    }

    /// A connection some session keeps, taken from it (the session is not
    /// asked: its slot is simply empty when it looks next). One whose
    /// server hung up meanwhile is closed, as the pool's checkout would.
    pub(crate) fn take_one(&self, shard: ShardId) -> Option<PooledConn> {
        if self.kept.load(SeqCst) == 0 {
            return None;
        }
        let mut sessions = self.sessions.lock().ok()?;
        // Sessions that ended leave the list here.
        sessions.retain(|w| w.strong_count() > 0);
        for w in sessions.iter() {
            let Some(k) = w.upgrade() else { continue };
            // Held only for a moment (no await under it), and never while
            // this list is wanted: waiting for it cannot miss a connection
            // the session keeps for this shard while it takes another's.
            let Ok(mut slots) = k.slots.lock() else {
                continue;
            };
            let taken = slots.conns.get_mut(shard.0 as usize).and_then(Option::take);
            drop(slots);
            if let Some(mut c) = taken {
                self.kept.fetch_sub(1, SeqCst);
                if c.hung_up() {
                    c.mark_broken();
                    continue;
                }
                return Some(c);
            }
        }
        None
    }
}

impl Kept {
    /// The connection kept for `shard`, if it is still usable: a server
    /// that hung up (or said something unasked) while it was kept is
    /// closed, as the pool's checkout would.
    pub fn take(&self, shard: ShardId, pools: &Pools) -> Option<PooledConn> {
        let mut conn = self
            .slots
            .lock()
            .ok()?
            .conns
            .get_mut(shard.0 as usize)
            .and_then(Option::take)?;
        if let Some(k) = pools.keepers(shard) {
            k.kept.fetch_sub(1, SeqCst);
        }
        if conn.hung_up() {
            conn.mark_broken();
            return None;
        }
        // The pool was made smaller meanwhile: back it goes, to be closed.
        if pools.over_limit(shard) {
            return None;
        }
        Some(conn)
    }

    /// Keeps `conn` if it could go back to its pool and no checkout waits
    /// for a connection of its shard; otherwise it goes back (or is
    /// closed) now.
    pub fn keep(self: &Arc<Self>, mut conn: PooledConn, pools: &Pools) {
        let shard = conn.shard;
        let Some(keepers) = pools.keepers(shard) else {
            return;
        };
        if !conn.is_reusable()
            || conn.holds_unread()
            || pools.is_wanted(shard)
            || pools.over_limit(shard)
        {
            return;
        }
        // A statement's fence hold (`consistent_reads`) ends with it.
        conn.snapshot_hold = None;
        let s = shard.0 as usize;
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        if slots.conns.len() <= s {
            slots.conns.resize_with(s + 1, || None);
            slots.registered.resize(s + 1, false);
        }
        // None is there as a rule (the statement took it); one that is
        // goes back once the lock is released.
        let before = slots.conns[s].replace(conn);
        if before.is_none() {
            keepers.kept.fetch_add(1, SeqCst);
        }
        let register = !std::mem::replace(&mut slots.registered[s], true);
        drop(slots);
        drop(before);
        if register {
            if let Ok(mut sessions) = keepers.sessions.lock() {
                // Sessions that ended leave the list here too (every 64th
                // entry, so the list stays near the number of sessions at
                // little cost per registration).
                if sessions.len() % 64 == 63 {
                    sessions.retain(|w| w.strong_count() > 0);
                }
                sessions.push(Arc::downgrade(self));
            }
        }
        // Counted before looking: a checkout that began waiting before the
        // count went up is seen here, one that begins after it sees the
        // count and looks in this session's slots itself.
        if pools.is_wanted(shard) {
            if let Some(c) = self.take(shard, pools) {
                drop(c);
            }
        }
    }

    /// Hands back every kept connection (the session ends).
    pub fn release_all(&self, pools: &Pools) {
        let all = match self.slots.lock() {
            Ok(mut s) => std::mem::take(&mut s.conns),
            Err(_) => return,
        };
        for (i, c) in all.into_iter().enumerate() {
            if let (Some(c), Some(k)) = (c, pools.keepers(ShardId(i as u32))) {
                k.kept.fetch_sub(1, SeqCst);
                drop(c);
            }
        }
    }
}
