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

/// A Prometheus-style histogram of durations: one counter per bucket (the
/// last one for what is slower than every bound) and the sum. The count is
/// the buckets' total, so a scrape always sees the `+Inf` bucket equal to
/// the count, whatever observations race with it. Two relaxed atomic adds
/// per observation and no lock (prometheus-client's own `Histogram` takes a
/// mutex per observation, which is why this one stays).
#[derive(Default, Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// What a histogram held at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations per bucket (not cumulative), in the order of
    /// [`BUCKETS_US`], then those above the last bound.
    pub buckets: [u64; BUCKETS_US.len() + 1],
    /// Summed observations, in seconds.
    pub sum_secs: f64,
}

impl HistogramSnapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let us = d.as_micros() as u64;
        let i = BUCKETS_US.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_secs: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        let h = Histogram::default();
        for us in [0, 100, 101, 2_000_000, 2_000_001, 60_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let s = h.snapshot();
        let mut want = [0; BUCKETS_US.len() + 1];
        want[0] = 2; // 0 and 100: `le` is inclusive
        want[1] = 1; // 101
        want[11] = 1; // 2 s exactly
        want[12] = 2; // above every bound
        assert_eq!(s.buckets, want);
        assert_eq!(s.count(), 6);
        assert!((s.sum_secs - 64.000202).abs() < 1e-9, "{}", s.sum_secs);
    }
}
