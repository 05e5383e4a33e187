//! Counters the admin console and the metrics endpoint report. Plain atomics:
//! cheap enough to bump on every statement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Per shard: what was sent there and how it went.
#[derive(Default, Debug)]
pub struct ShardStats {
    /// Queries and Executes sent (the proxy's own included).
    pub statements: AtomicU64,
    /// ErrorResponses received.
    pub errors: AtomicU64,
}

/// Whole-proxy counters.
#[derive(Default, Debug)]
pub struct Stats {
    pub shards: Vec<Arc<ShardStats>>,
    pub clients_total: AtomicU64,
    pub commits_one_phase: AtomicU64,
    pub commits_two_phase: AtomicU64,
    pub aborts: AtomicU64,
    pub recovered_commits: AtomicU64,
    pub recovered_rollbacks: AtomicU64,
    /// Sum of 2PC commit latencies (prepare to last COMMIT PREPARED), microseconds.
    pub two_phase_micros: AtomicU64,
    /// Sum of decision-log fsync latencies, microseconds.
    pub decision_micros: AtomicU64,
}

impl Stats {
    pub fn new(shards: usize) -> Stats {
        Stats {
            shards: (0..shards)
                .map(|_| Arc::new(ShardStats::default()))
                .collect(),
            ..Default::default()
        }
    }

    pub fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
