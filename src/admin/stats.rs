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
    /// Transactions this shard took part in that committed.
    pub transactions: AtomicU64,
    /// Whether the last attempt to reach the shard succeeded.
    pub up: std::sync::atomic::AtomicBool,
    /// Simple-query latency, send to ReadyForQuery.
    pub latency: Histogram,
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
    /// Distributed deadlocks this proxy broke (it held the victim).
    pub deadlocks: AtomicU64,
    /// Sum of 2PC commit latencies (prepare to last COMMIT PREPARED), microseconds.
    pub two_phase_micros: AtomicU64,
    /// Sum of decision latencies (commit row and COMMIT on the decision shard), microseconds.
    pub decision_micros: AtomicU64,
    pub one_phase_commit: Histogram,
    pub two_phase_prepare: Histogram,
    pub two_phase_decision: Histogram,
    pub two_phase_commit: Histogram,
    /// Time clients waited for a pooled server connection.
    pub pool_wait: Histogram,
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

/// Upper bounds of the latency histogram buckets, in microseconds.
pub const BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 500_000, 2_000_000,
];

/// A Prometheus-style cumulative histogram of durations.
#[derive(Default, Debug)]
pub struct Histogram {
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let us = d.as_micros() as u64;
        // One bucket per observation; `snapshot` makes them cumulative.
        if let Some(i) = BUCKETS_US.iter().position(|b| us <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// (cumulative bucket counts, count, sum in seconds).
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        (
            self.buckets
                .iter()
                .scan(0, |total, b| {
                    *total += b.load(Ordering::Relaxed);
                    Some(*total)
                })
                .collect(),
            self.count.load(Ordering::Relaxed),
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}
