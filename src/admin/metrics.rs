//! The Prometheus exposition: the proxy's counters, gauges and histograms,
//! rendered by `prometheus-client` in OpenMetrics or in the Prometheus text
//! format 0.0.4, whichever the scraper asks for.
//!
//! The hot path keeps bumping the plain atomics of [`Stats`]; a collector
//! reads them at scrape time. prometheus-client's own metric types would cost
//! more per statement: its `Counter` sits behind one more `Arc`, its
//! `Histogram` takes a mutex per observation, and a labelled `Family` hashes
//! its labels on every lookup.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::stats::{HistogramSnapshot, BUCKETS_US};
use super::Stats;
use crate::frontend::Shared;

/// `Content-Type` of an OpenMetrics 1.0 exposition.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An exposition format a scraper can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text: what Prometheus asks for first. Ends in `# EOF`.
    OpenMetrics,
    /// Prometheus text format 0.0.4: for a scraper that sends no `Accept`
    /// (curl, many agents) or prefers it.
    PrometheusText,
}

impl Format {
    /// The format an `Accept` header prefers, by its `q` values (the first
    /// listed wins a tie). `*/*` and `text/plain` mean the text format, as in
    /// client_golang; no header at all means it too.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut best = (Format::PrometheusText, 0.0_f32);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let format = match media.as_str() {
                "application/openmetrics-text" => Format::OpenMetrics,
                "text/plain" | "text/*" | "*/*" => Format::PrometheusText,
                _ => continue,
            };
            if q > best.1 {
                best = (format, q);
            }
        }
        best.0
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// The registry the endpoint renders: one collector over the proxy's state.
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    pub fn new(shared: Arc<Shared>) -> Exposition {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProxyCollector { shared }));
        Exposition { registry }
    }

    pub fn render(&self, format: Format) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail, nor can the collector, which
        // only reads atomics.
        let _ = match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
            Format::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
        };
        out
    }
}

/// Labels of one series; empty for a metric without labels.
type Labels = Vec<(&'static str, String)>;

fn shard_label(i: usize) -> Labels {
    vec![("shard", i.to_string())]
}

fn label(key: &'static str, value: &str) -> Labels {
    vec![(key, value.to_string())]
}

/// Reads [`Stats`] and the live gauges at scrape time.
struct ProxyCollector {
    shared: Arc<Shared>,
}

impl fmt::Debug for ProxyCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyCollector").finish_non_exhaustive()
    }
}

impl Collector for ProxyCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let shared = &self.shared;
        let st = &shared.stats;
        let get = |c: &AtomicU64| Stats::get(c);
        let per_shard = |f: &dyn Fn(&super::ShardStats) -> u64| -> Vec<(Labels, u64)> {
            st.shards
                .iter()
                .enumerate()
                .map(|(i, s)| (shard_label(i), f(s)))
                .collect()
        };
        // Family names are given without the `_total` of counters and
        // without the unit: both encoders append them.
        counter(
            &mut enc,
            "pieskieo_clients_accepted",
            "Client connections accepted.",
            None,
            vec![(Labels::new(), get(&st.clients_total))],
        )?;
        counter(
            &mut enc,
            "pieskieo_statements",
            "Queries and Executes sent to each shard.",
            None,
            per_shard(&|s| get(&s.statements)),
        )?;
        counter(
            &mut enc,
            "pieskieo_errors",
            "Errors each shard returned.",
            None,
            per_shard(&|s| get(&s.errors)),
        )?;
        counter(
            &mut enc,
            "pieskieo_commits",
            "Committed transactions by protocol.",
            None,
            vec![
                (label("kind", "one_phase"), get(&st.commits_one_phase)),
                (label("kind", "two_phase"), get(&st.commits_two_phase)),
            ],
        )?;
        counter(
            &mut enc,
            "pieskieo_aborts",
            "Transactions rolled back.",
            None,
            vec![(Labels::new(), get(&st.aborts))],
        )?;
        counter(
            &mut enc,
            "pieskieo_deadlocks",
            "Distributed deadlocks broken (this proxy cancelled the youngest transaction of the cycle with 40P01).",
            None,
            vec![(Labels::new(), get(&st.deadlocks))],
        )?;
        counter(
            &mut enc,
            "pieskieo_recovery_actions",
            "In-doubt transactions recovery finished.",
            None,
            vec![
                (label("action", "commit"), get(&st.recovered_commits)),
                (label("action", "rollback"), get(&st.recovered_rollbacks)),
            ],
        )?;
        let micros = Unit::Other("microseconds".into());
        counter(
            &mut enc,
            "pieskieo_two_phase_commit",
            "Summed 2PC commit latency (divide by the two-phase commit count).",
            Some(&micros),
            vec![(Labels::new(), get(&st.two_phase_micros))],
        )?;
        counter(
            &mut enc,
            "pieskieo_decision",
            "Summed decision latency: the commit row and COMMIT on the decision shard.",
            Some(&micros),
            vec![(Labels::new(), get(&st.decision_micros))],
        )?;
        histogram(
            &mut enc,
            "pieskieo_statement",
            "Simple-query latency per shard, sent to ReadyForQuery.",
            st.shards
                .iter()
                .enumerate()
                .map(|(i, s)| (shard_label(i), s.latency.snapshot()))
                .collect(),
        )?;
        let two_phase = |phase: &str| vec![("kind", "two_phase".into()), ("phase", phase.into())];
        histogram(
            &mut enc,
            "pieskieo_commit",
            "Commit latency: one-phase, and the phases of two-phase commit apart.",
            vec![
                (label("kind", "one_phase"), st.one_phase_commit.snapshot()),
                (two_phase("prepare"), st.two_phase_prepare.snapshot()),
                (two_phase("decision"), st.two_phase_decision.snapshot()),
                (two_phase("commit_prepared"), st.two_phase_commit.snapshot()),
            ],
        )?;
        histogram(
            &mut enc,
            "pieskieo_pool_wait",
            "Time waiting for a pooled server connection.",
            vec![(Labels::new(), st.pool_wait.snapshot())],
        )?;
        gauge(
            &mut enc,
            "pieskieo_clients",
            "Client connections open now.",
            vec![(Labels::new(), shared.clients.load(Ordering::Relaxed))],
        )?;
        gauge(
            &mut enc,
            "pieskieo_two_phase_in_flight",
            "Two-phase commits under way in this proxy.",
            vec![(Labels::new(), shared.coordinator.in_flight_count())],
        )?;
        gauge(
            &mut enc,
            "pieskieo_pool_connections",
            "Server connections per shard.",
            shared
                .pools
                .status()
                .into_iter()
                .enumerate()
                .map(|(i, (_, size, _, _))| (shard_label(i), size))
                .collect(),
        )
    }
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: Vec<(Labels, u64)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in &series {
        metric
            .encode_family(labels)?
            .encode_counter::<NoLabelSet, _, u64>(v, None)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(Labels, usize)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in &series {
        metric.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

/// A latency histogram in seconds (the encoders append `_seconds`).
fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(Labels, HistogramSnapshot)>,
) -> fmt::Result {
    let mut metric =
        enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, h) in &series {
        // Per-bucket counts with the overflow as `+Inf`: the encoders make
        // them cumulative.
        let buckets: Vec<(f64, u64)> = BUCKETS_US
            .iter()
            .map(|us| *us as f64 / 1e6)
            .chain([f64::INFINITY])
            .zip(h.buckets)
            .collect();
        metric
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(h.sum_secs, h.count(), &buckets, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Format;

    #[test]
    fn negotiation_follows_the_scrapers_preference() {
        let cases = [
            (None, Format::PrometheusText),
            (Some("*/*"), Format::PrometheusText),
            (Some("text/plain"), Format::PrometheusText),
            (Some("application/json"), Format::PrometheusText),
            // Prometheus 2.x's default.
            (
                Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                Format::OpenMetrics,
            ),
            // Prometheus 3 with `scrape_protocols: [PrometheusText0.0.4]`.
            (
                Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                Format::PrometheusText,
            ),
            (
                Some("text/plain;q=0.9, Application/OpenMetrics-Text; version=1.0.0"),
                Format::OpenMetrics,
            ),
            (
                Some("application/openmetrics-text;q=0.2, text/plain;q=0.8"),
                Format::PrometheusText,
            ),
            (Some("application/openmetrics-text;q=0"), Format::PrometheusText),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }
}
