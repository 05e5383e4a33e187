//! The metrics endpoint over HTTP: both exposition formats parsed strictly,
//! values that follow the traffic and SHOW STATS, what other requests get,
//! and scrapers that stall.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{connect, exec, rows, Cluster, TABLES};

/// What Prometheus 2.x sends: it prefers OpenMetrics.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Every family the endpoint serves, as OpenMetrics names it, with its type.
/// In the text format 0.0.4 a counter's family is named with its `_total`.
const FAMILIES: [(&str, &str); 15] = [
    ("pieskieo_clients_accepted", "counter"),
    ("pieskieo_statements", "counter"),
    ("pieskieo_errors", "counter"),
    ("pieskieo_commits", "counter"),
    ("pieskieo_aborts", "counter"),
    ("pieskieo_deadlocks", "counter"),
    ("pieskieo_recovery_actions", "counter"),
    ("pieskieo_two_phase_commit_microseconds", "counter"),
    ("pieskieo_decision_microseconds", "counter"),
    ("pieskieo_statement_seconds", "histogram"),
    ("pieskieo_commit_seconds", "histogram"),
    ("pieskieo_pool_wait_seconds", "histogram"),
    ("pieskieo_clients", "gauge"),
    ("pieskieo_two_phase_in_flight", "gauge"),
    ("pieskieo_pool_connections", "gauge"),
];

/// The histograms' bucket bounds, in seconds.
const BOUNDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as it is and reads the answer up to the server's close.
async fn http(addr: SocketAddr, request: &str) -> Response {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the endpoint closes the connection after answering")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap();
    assert!(status.starts_with("HTTP/1.1 "), "{status}");
    Response {
        status: status[9..12].parse().unwrap(),
        headers: lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_string(), v.trim().to_string())
            })
            .collect(),
        body: body.to_string(),
    }
}

async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Response {
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{accept}\r\n"),
    )
    .await
}

/// One sample: its name, its labels sorted by name, its value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug)]
struct Family {
    name: String,
    kind: String,
    samples: Vec<Sample>,
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("no value: {line}"));
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let inner = rest
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("unclosed labels: {line}"));
            let mut labels = BTreeMap::new();
            for pair in inner.split(',') {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label: {line}"));
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or_else(|| panic!("unquoted label value: {line}"));
                assert!(!v.contains(['"', '\\']), "{line}");
                assert!(
                    labels.insert(k.to_string(), v.to_string()).is_none(),
                    "label twice: {line}"
                );
            }
            (name, labels)
        }
    };
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name: {line}"
    );
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// Parses a whole exposition strictly: each family declared once (HELP then
/// TYPE, and in OpenMetrics a UNIT that its name ends in), every sample line
/// under its own family's declaration with a name that family's type allows,
/// in OpenMetrics a last line `# EOF` and nothing after it. Each histogram's
/// buckets are checked too.
fn parse(text: &str, openmetrics: bool) -> Vec<Family> {
    let body = match text.strip_suffix("# EOF\n") {
        Some(b) if openmetrics => b,
        _ if openmetrics => panic!("OpenMetrics ends in `# EOF`:\n{text}"),
        _ => text,
    };
    assert!(body.ends_with('\n'), "{text}");
    let mut families: Vec<Family> = Vec::new();
    let mut names = HashSet::new();
    let mut lines = body.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(names.insert(name.clone()), "family {name} declared twice");
            let kind = lines
                .next()
                .and_then(|l| l.strip_prefix(&format!("# TYPE {name} ")))
                .unwrap_or_else(|| panic!("no TYPE after HELP for {name}"))
                .to_string();
            if openmetrics && lines.peek().is_some_and(|l| l.starts_with("# UNIT ")) {
                let unit = lines.next().unwrap();
                let unit = unit.strip_prefix(&format!("# UNIT {name} ")).unwrap();
                assert!(name.ends_with(&format!("_{unit}")), "{name} in {unit}");
            }
            families.push(Family {
                name,
                kind,
                samples: Vec::new(),
            });
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment: {line}");
        let family = families
            .last_mut()
            .unwrap_or_else(|| panic!("sample before any family: {line}"));
        let sample = parse_sample(line);
        let f = &family.name;
        let allowed: Vec<String> = match family.kind.as_str() {
            "counter" if openmetrics => vec![format!("{f}_total")],
            "counter" => {
                assert!(f.ends_with("_total"), "{f}");
                vec![f.clone()]
            }
            "gauge" => vec![f.clone()],
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{f}{s}"))
                .collect(),
            other => panic!("unexpected type {other} of {f}"),
        };
        assert!(
            allowed.contains(&sample.name),
            "sample {line} under family {f} ({})",
            family.kind
        );
        family.samples.push(sample);
    }
    for f in &families {
        assert!(!f.samples.is_empty(), "family {} without samples", f.name);
        if f.kind == "histogram" {
            check_histogram(f);
        }
    }
    families
}

/// For each series of a histogram: buckets at exactly [`BOUNDS`] and
/// `+Inf`, counts cumulative, `+Inf` equal to `_count`, a `_sum`.
fn check_histogram(f: &Family) {
    let mut series: BTreeMap<Vec<(String, String)>, Vec<&Sample>> = BTreeMap::new();
    for s in &f.samples {
        let key = s
            .labels
            .iter()
            .filter(|(k, _)| *k != "le")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        series.entry(key).or_default().push(s);
    }
    for (labels, samples) in series {
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.name.ends_with("_bucket"))
            .map(|s| {
                let le = &s.labels["le"];
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (bound, s.value)
            })
            .collect();
        let bounds: Vec<f64> = buckets.iter().map(|b| b.0).collect();
        let want: Vec<f64> = BOUNDS.iter().copied().chain([f64::INFINITY]).collect();
        assert_eq!(bounds, want, "{} {labels:?}", f.name);
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{} {labels:?}: buckets not cumulative: {buckets:?}",
            f.name
        );
        let one = |suffix: &str| {
            let found: Vec<f64> = samples
                .iter()
                .filter(|s| s.name == format!("{}{suffix}", f.name))
                .map(|s| s.value)
                .collect();
            assert_eq!(found.len(), 1, "{} {labels:?}: one {suffix}", f.name);
            found[0]
        };
        assert_eq!(
            buckets.last().unwrap().1,
            one("_count"),
            "{} {labels:?}: +Inf is the count",
            f.name
        );
        assert!(one("_sum") >= 0.0);
    }
}

/// The value of the sample `name` with exactly `labels`.
fn value(families: &[Family], name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<f64> = families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name && s.labels == labels)
        .map(|s| s.value)
        .collect();
    assert_eq!(found.len(), 1, "one {name} {labels:?}");
    found[0]
}

/// Scrapes as Prometheus and as a scraper without `Accept`, parses both
/// strictly, checks their declarations against [`FAMILIES`] and that they
/// hold the same series; returns the OpenMetrics one.
async fn scrape_both(addr: SocketAddr) -> Vec<Family> {
    let om = get(addr, "/metrics", Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(om.status, 200, "{}", om.body);
    assert_eq!(
        om.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let om = parse(&om.body, true);
    let text = get(addr, "/metrics", None).await;
    assert_eq!(text.status, 200, "{}", text.body);
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = parse(&text.body, false);

    let declared = |fams: &[Family]| -> Vec<(String, String)> {
        fams.iter()
            .map(|f| (f.name.clone(), f.kind.clone()))
            .collect()
    };
    let want: Vec<(String, String)> = FAMILIES
        .iter()
        .map(|(n, k)| (n.to_string(), k.to_string()))
        .collect();
    assert_eq!(declared(&om), want);
    let want_text: Vec<(String, String)> = want
        .iter()
        .map(|(n, k)| match k.as_str() {
            "counter" => (format!("{n}_total"), k.clone()),
            _ => (n.clone(), k.clone()),
        })
        .collect();
    assert_eq!(declared(&text), want_text);
    // The same series in both; `le` compared as a number (OpenMetrics
    // writes `2.0` where the text format writes `2`).
    let series = |fams: &[Family]| -> HashSet<String> {
        fams.iter()
            .flat_map(|f| &f.samples)
            .map(|s| {
                let mut labels = s.labels.clone();
                if let Some(le) = labels.get_mut("le") {
                    if le != "+Inf" {
                        *le = le.parse::<f64>().unwrap().to_string();
                    }
                }
                format!("{}{labels:?}", s.name)
            })
            .collect()
    };
    let (a, b) = (series(&om), series(&text));
    let only: Vec<_> = a.symmetric_difference(&b).collect();
    assert!(only.is_empty(), "series in one format only: {only:?}");
    om
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_strictly_and_follow_the_traffic() {
    let tables = format!("admin_users = [\"plain\"]\nmetrics_listen = \"127.0.0.1:0\"\n{TABLES}");
    let c = Cluster::start_with(3, &tables).await;
    let addr = c.proxy.as_ref().unwrap().metrics_addr.unwrap();
    let keys = c.accounts(3, 100).await;
    let app = c.client().await;

    let before = scrape_both(addr).await;
    let shard = |i: usize| i.to_string();
    let v = |fams: &[Family], name: &str, labels: &[(&str, &str)]| value(fams, name, labels);

    // A new client, a two-phase commit over shards 0 and 1, a one-phase
    // commit on shard 2, an error from shard 1.
    let other = c.client().await;
    exec(
        &other,
        &format!(
            "BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = {}; UPDATE accounts SET balance = balance + 1 WHERE id = {}; COMMIT",
            keys[0], keys[1]
        ),
    )
    .await;
    exec(
        &app,
        &format!(
            "BEGIN; UPDATE accounts SET balance = balance + 0 WHERE id = {}; COMMIT",
            keys[2]
        ),
    )
    .await;
    let e = app
        .simple_query(&format!(
            "SELECT 1 / (balance - balance) FROM accounts WHERE id = {}",
            keys[1]
        ))
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("22012"));

    let after = scrape_both(addr).await;
    let delta =
        |name: &str, labels: &[(&str, &str)]| v(&after, name, labels) - v(&before, name, labels);
    assert_eq!(delta("pieskieo_clients_accepted_total", &[]), 1.0);
    assert!(v(&after, "pieskieo_clients", &[]) >= 2.0);
    assert_eq!(
        delta("pieskieo_commits_total", &[("kind", "two_phase")]),
        1.0
    );
    assert_eq!(
        delta("pieskieo_commits_total", &[("kind", "one_phase")]),
        1.0
    );
    for phase in ["prepare", "decision", "commit_prepared"] {
        assert_eq!(
            delta(
                "pieskieo_commit_seconds_count",
                &[("kind", "two_phase"), ("phase", phase)]
            ),
            1.0,
            "{phase}"
        );
    }
    assert_eq!(
        delta("pieskieo_commit_seconds_count", &[("kind", "one_phase")]),
        1.0
    );
    assert!(delta("pieskieo_two_phase_commit_microseconds_total", &[]) > 0.0);
    assert!(delta("pieskieo_decision_microseconds_total", &[]) > 0.0);
    assert_eq!(delta("pieskieo_errors_total", &[("shard", &shard(1))]), 1.0);
    assert_eq!(delta("pieskieo_errors_total", &[("shard", &shard(0))]), 0.0);
    for i in 0..3 {
        let s = shard(i);
        assert!(
            delta("pieskieo_statements_total", &[("shard", &s)]) >= 1.0,
            "{i}"
        );
        assert!(delta("pieskieo_statement_seconds_count", &[("shard", &s)]) >= 1.0);
        assert!(delta("pieskieo_statement_seconds_sum", &[("shard", &s)]) > 0.0);
        assert!(v(&after, "pieskieo_pool_connections", &[("shard", &s)]) >= 1.0);
    }
    assert!(delta("pieskieo_pool_wait_seconds_count", &[]) >= 1.0);
    assert_eq!(v(&after, "pieskieo_two_phase_in_flight", &[]), 0.0);

    // SHOW STATS reads the same counters: its figures lie between a scrape
    // before and one after (the deadlock detector's polls count as
    // statements, so the proxy is never quite idle).
    let admin = connect(&format!(
        "host=127.0.0.1 port={} user=plain password=plainpass dbname=pieskieo",
        c.port()
    ))
    .await
    .unwrap();
    let first = scrape_both(addr).await;
    let stats = rows(&admin, "SHOW STATS").await;
    let last = scrape_both(addr).await;
    let stat = |what: &str, col: usize| -> f64 {
        stats
            .iter()
            .find(|r| r[0].as_deref() == Some(what))
            .and_then(|r| r[col].as_deref())
            .unwrap_or_else(|| panic!("no {what} in {stats:?}"))
            .parse()
            .unwrap()
    };
    let between = |shown: f64, name: &str, labels: &[(&str, &str)]| {
        let (lo, hi) = (v(&first, name, labels), v(&last, name, labels));
        assert!(
            lo <= shown && shown <= hi,
            "SHOW STATS {shown}, {name} {labels:?} {lo}..{hi}"
        );
    };
    for i in 0..3 {
        let s = shard(i);
        let row = format!("shard {i}");
        between(stat(&row, 1), "pieskieo_statements_total", &[("shard", &s)]);
        between(stat(&row, 3), "pieskieo_errors_total", &[("shard", &s)]);
        let count = v(&first, "pieskieo_statement_seconds_count", &[("shard", &s)]);
        let sum = v(&first, "pieskieo_statement_seconds_sum", &[("shard", &s)]);
        if count == v(&last, "pieskieo_statement_seconds_count", &[("shard", &s)]) {
            let avg_ms = sum * 1000.0 / count;
            assert!((stat(&row, 4) - avg_ms).abs() < 0.0011, "{row}: {avg_ms}");
        }
    }
    between(
        stat("commits (two-phase)", 1),
        "pieskieo_commits_total",
        &[("kind", "two_phase")],
    );
    between(
        stat("commits (one-phase)", 1),
        "pieskieo_commits_total",
        &[("kind", "one_phase")],
    );
    between(stat("aborts", 1), "pieskieo_aborts_total", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_answers_other_requests() {
    let tables = format!("metrics_listen = \"127.0.0.1:0\"\n{TABLES}");
    let c = Cluster::start_with(1, &tables).await;
    let addr = c.proxy.as_ref().unwrap().metrics_addr.unwrap();

    for path in ["/", "/metric", "/metrics/x", "/favicon.ico"] {
        let r = get(addr, path, None).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert!(!r.body.contains("pieskieo_"), "{path}");
    }
    let r = get(addr, "/metrics?name[]=x", None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("# TYPE pieskieo_clients gauge"));

    let r = http(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = http(addr, "DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 405);

    let r = http(addr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "", "HEAD has no body");

    // Malformed requests: hyper answers 400 (or closes), the endpoint lives on.
    for bad in [
        "NOT HTTP AT ALL\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost x\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bad.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
            .await
            .expect("closed")
            .unwrap();
        let raw = String::from_utf8_lossy(&raw);
        assert!(
            raw.is_empty() || raw.starts_with("HTTP/1.1 400"),
            "{bad:?}: {raw}"
        );
    }
    assert_eq!(get(addr, "/metrics", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_scrapers_do_not_hold_up_clients() {
    let tables = format!("metrics_listen = \"127.0.0.1:0\"\n{TABLES}");
    let c = Cluster::start_with(2, &tables).await;
    let addr = c.proxy.as_ref().unwrap().metrics_addr.unwrap();
    let app = c.client().await;

    // More stalled scrapers than the endpoint serves at once: half a request
    // each, never finished, never reading.
    let mut stalled = Vec::new();
    for _ in 0..24 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    // Idle connections cannot keep a scraper out: the oldest that has sat
    // without a request for a while makes room.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = tokio::time::timeout(Duration::from_secs(3), get(addr, "/metrics", None))
        .await
        .expect("a scrape is served while stalled connections hold every slot");
    assert_eq!(r.status, 200);

    // One that asks and vanishes before the answer.
    let mut gone = TcpStream::connect(addr).await.unwrap();
    gone.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    drop(gone);

    let started = Instant::now();
    for i in 0..50 {
        assert_eq!(
            crate::harness::value(&app, &format!("SELECT {i}")).await,
            i.to_string()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "client traffic held up: {:?}",
        started.elapsed()
    );

    // The endpoint drops each stalled scraper by itself (made room for, or
    // the header timeout), then serves again.
    for mut s in stalled {
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(12), s.read_to_end(&mut sink))
            .await
            .expect("a stalled scraper is disconnected")
            .ok();
    }
    let r = get(addr, "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("pieskieo_statements_total{shard=\"0\"}"));
}
