//! A minimal HTTP endpoint serving the counters in Prometheus text format.

use std::fmt::Write as _;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::Stats;
use crate::frontend::Shared;

fn render(shared: &Shared) -> String {
    let st = &shared.stats;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, values: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, v) in values {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    counter(
        "pieskieo_clients_total",
        "Client connections accepted.",
        vec![(String::new(), Stats::get(&st.clients_total))],
    );
    counter(
        "pieskieo_statements_total",
        "Queries and Executes sent to each shard.",
        st.shards
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("{{shard=\"{i}\"}}"), Stats::get(&s.statements)))
            .collect(),
    );
    counter(
        "pieskieo_errors_total",
        "Errors each shard returned.",
        st.shards
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("{{shard=\"{i}\"}}"), Stats::get(&s.errors)))
            .collect(),
    );
    counter(
        "pieskieo_commits_total",
        "Committed transactions by protocol.",
        vec![
            (
                "{kind=\"one_phase\"}".into(),
                Stats::get(&st.commits_one_phase),
            ),
            (
                "{kind=\"two_phase\"}".into(),
                Stats::get(&st.commits_two_phase),
            ),
        ],
    );
    counter(
        "pieskieo_aborts_total",
        "Transactions rolled back.",
        vec![(String::new(), Stats::get(&st.aborts))],
    );
    counter(
        "pieskieo_deadlocks_total",
        "Distributed deadlocks broken (this proxy cancelled the youngest transaction of the cycle with 40P01).",
        vec![(String::new(), Stats::get(&st.deadlocks))],
    );
    counter(
        "pieskieo_recovery_actions_total",
        "In-doubt transactions recovery finished.",
        vec![
            (
                "{action=\"commit\"}".into(),
                Stats::get(&st.recovered_commits),
            ),
            (
                "{action=\"rollback\"}".into(),
                Stats::get(&st.recovered_rollbacks),
            ),
        ],
    );
    counter(
        "pieskieo_two_phase_commit_microseconds_total",
        "Summed 2PC commit latency (divide by the two-phase commit count).",
        vec![(String::new(), Stats::get(&st.two_phase_micros))],
    );
    counter(
        "pieskieo_decision_microseconds_total",
        "Summed decision latency: the commit row and COMMIT on the decision shard.",
        vec![(String::new(), Stats::get(&st.decision_micros))],
    );
    let mut histogram =
        |name: &str, help: &str, series: Vec<(String, &super::stats::Histogram)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (labels, h) in series {
                let snapshot = h.snapshot();
                let (count, sum) = (snapshot.count(), snapshot.sum_secs);
                let sep = if labels.is_empty() { "" } else { "," };
                let mut below = 0;
                for (b, c) in super::stats::BUCKETS_US.iter().zip(snapshot.buckets) {
                    below += c;
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{labels}{sep}le=\"{}\"}} {below}",
                        *b as f64 / 1e6
                    );
                }
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
                let braces = if labels.is_empty() {
                    String::new()
                } else {
                    format!("{{{labels}}}")
                };
                let _ = writeln!(
                    out,
                    "{name}_sum{braces} {sum}\n{name}_count{braces} {count}"
                );
            }
        };
    histogram(
        "pieskieo_statement_seconds",
        "Simple-query latency per shard, sent to ReadyForQuery.",
        st.shards
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("shard=\"{i}\""), &s.latency))
            .collect(),
    );
    histogram(
        "pieskieo_commit_seconds",
        "Commit latency: one-phase, and the phases of two-phase commit apart.",
        vec![
            ("kind=\"one_phase\"".to_string(), &st.one_phase_commit),
            (
                "kind=\"two_phase\",phase=\"prepare\"".to_string(),
                &st.two_phase_prepare,
            ),
            (
                "kind=\"two_phase\",phase=\"decision\"".to_string(),
                &st.two_phase_decision,
            ),
            (
                "kind=\"two_phase\",phase=\"commit_prepared\"".to_string(),
                &st.two_phase_commit,
            ),
        ],
    );
    histogram(
        "pieskieo_pool_wait_seconds",
        "Time waiting for a pooled server connection.",
        vec![(String::new(), &st.pool_wait)],
    );
    let _ = writeln!(
        out,
        "# HELP pieskieo_clients Client connections open now.\n# TYPE pieskieo_clients gauge"
    );
    let _ = writeln!(
        out,
        "pieskieo_clients {}",
        shared.clients.load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = writeln!(out, "# HELP pieskieo_two_phase_in_flight Two-phase commits under way in this proxy.\n# TYPE pieskieo_two_phase_in_flight gauge");
    let _ = writeln!(
        out,
        "pieskieo_two_phase_in_flight {}",
        shared.coordinator.in_flight().len()
    );
    let _ = writeln!(out, "# HELP pieskieo_pool_connections Server connections per shard.\n# TYPE pieskieo_pool_connections gauge");
    for (i, (_, size, _, _)) in shared.pools.status().into_iter().enumerate() {
        let _ = writeln!(out, "pieskieo_pool_connections{{shard=\"{i}\"}} {size}");
    }
    out
}

/// Serves `GET /metrics` on `addr` until the runtime stops.
pub async fn serve_metrics(
    addr: &str,
    shared: Arc<Shared>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!(addr = %local, "metrics endpoint listening");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n =
                    match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
                        .await
                    {
                        Ok(Ok(n)) => n,
                        _ => return,
                    };
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if req.starts_with("GET /metrics") {
                    ("200 OK", render(&shared))
                } else {
                    ("404 Not Found", "not found\n".to_string())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if let Err(e) = async {
                    s.write_all(head.as_bytes()).await?;
                    s.write_all(body.as_bytes()).await
                }
                .await
                {
                    warn!(error = %e, "metrics response failed");
                }
            });
        }
    });
    Ok(local)
}
