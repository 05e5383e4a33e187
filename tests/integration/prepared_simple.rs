//! Simple queries run on their shard as prepared statements
//! (`prepare_simple_queries`): one key constant routes the query, its
//! constants become parameters, and the shard parses and plans the text once
//! per connection. PostgreSQL is the oracle: every query below, each run
//! twice (the Parse, then the statement already prepared), must get from
//! Pieskieo exactly the messages one plain PostgreSQL sends for it —
//! RowDescription (column types: `1` is `int4`, `'x'` is `text`), rows, tags,
//! and errors with their positions — whether the shard ran it prepared or
//! the proxy fell back to the text as written.

use std::time::Duration;

use pieskieo::router::KeyValue;

use crate::harness::{config_text_full, Cluster, RawClient, Servers, TABLES};

pub(crate) const SCHEMA: &str = "CREATE TABLE t (id bigint PRIMARY KEY, b bigint, s text, n numeric, ts timestamptz, d int UNIQUE DEFERRABLE INITIALLY DEFERRED)";
pub(crate) const ROWS: &str = "INSERT INTO t VALUES (1, 10, 'one', 1.5, '2026-01-01', 1), (2, 20, 'it''s', 2.5, '2026-01-02', 2), (3, 30, 'three', 3.5, '2026-01-03', 3)";

/// One plain PostgreSQL that takes the raw client's login (user `plain`,
/// cleartext password, database `app`), with `t` and its rows.
pub(crate) async fn oracle() -> (Servers, u16) {
    let servers = crate::harness::oracle_server().await;
    let port = servers.servers[0].port;
    let mut c = RawClient::connect(port).await;
    for sql in [SCHEMA, ROWS] {
        assert!(c.query(sql).await.error_codes().is_empty(), "{sql}");
    }
    (servers, port)
}

pub(crate) async fn cluster(extra: &str) -> Cluster {
    let tables =
        format!("{extra}\n{TABLES}\n[[tables]]\nname = \"t\"\nkey = \"id\"\nkey_type = \"int8\"\n");
    let shards = Servers::start(3);
    let text = config_text_full(&shards.ports(), &tables, "", "");
    let c = Cluster::over(shards, &text).await;
    let mut raw = RawClient::connect(c.port()).await;
    for sql in [SCHEMA, ROWS] {
        assert!(raw.query(sql).await.error_codes().is_empty(), "{sql}");
    }
    c
}

/// One plain PostgreSQL and a three-shard cluster, both with `t` and its
/// rows, and `ddl` run on each (through the proxy: on every shard).
pub(crate) async fn both(ddl: &[&str]) -> (Servers, u16, Cluster) {
    let (servers, oracle_port) = oracle().await;
    let c = cluster("").await;
    let mut a = RawClient::connect(c.port()).await;
    let mut b = RawClient::connect(oracle_port).await;
    for sql in ddl {
        assert!(a.query(sql).await.error_codes().is_empty(), "proxy: {sql}");
        assert!(b.query(sql).await.error_codes().is_empty(), "oracle: {sql}");
    }
    (servers, oracle_port, c)
}

/// What the shards were sent as prepared statements, by their logs.
pub(crate) fn executed_prepared(c: &Cluster) -> String {
    let mut all = String::new();
    for s in &c.shards.servers {
        let log = std::fs::read_to_string(s.data_dir.join("server.log")).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("execute pieskieo_")) {
            all.push_str(line);
            all.push('\n');
        }
    }
    all
}

/// A message as it must agree between the two: a RowDescription without its
/// table OIDs (each database numbers its tables), fields shown readably.
pub(crate) fn line(t: u8, b: &[u8]) -> String {
    if t != b'T' {
        return format!(
            "{}:{}",
            t as char,
            String::from_utf8_lossy(b).replace('\0', "|")
        );
    }
    let mut out = String::from("T:");
    let mut i = 2;
    while i < b.len() {
        let end = i + b[i..].iter().position(|&c| c == 0).unwrap();
        let name = String::from_utf8_lossy(&b[i..end]);
        let f = &b[end + 1..end + 19];
        let attnum = i16::from_be_bytes([f[4], f[5]]);
        let ty = u32::from_be_bytes([f[6], f[7], f[8], f[9]]);
        let typmod = i32::from_be_bytes([f[12], f[13], f[14], f[15]]);
        out.push_str(&format!(
            " {name}(#{attnum} type {ty} mod {typmod} fmt {})",
            f[17]
        ));
        i = end + 19;
    }
    out
}

/// Each query, `rounds` times in a row, through Pieskieo and straight to
/// PostgreSQL: the differences, message by message.
pub(crate) async fn differences<S: AsRef<str>>(
    proxy_port: u16,
    oracle_port: u16,
    queries: &[S],
    rounds: usize,
) -> Vec<String> {
    let mut proxy = RawClient::connect(proxy_port).await;
    let mut plain = RawClient::connect(oracle_port).await;
    let mut out = Vec::new();
    for q in queries {
        let q = q.as_ref();
        for round in 0..rounds {
            let a = proxy.query(q).await;
            let b = plain.query(q).await;
            let show = |r: &crate::harness::Reply| {
                r.messages
                    .iter()
                    .map(|(t, b)| line(*t, b))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            if show(&a) != show(&b) || a.status != b.status {
                out.push(format!(
                    "{q} (run {round}):\n  pieskieo:   {} Z{}\n  postgresql: {} Z{}",
                    show(&a),
                    a.status as char,
                    show(&b),
                    b.status as char
                ));
            }
        }
    }
    out
}

const QUERIES: &[&str] = &[
    "SELECT b FROM t WHERE id = 2",
    "SELECT * FROM t WHERE id = 2",
    // Constants typed as PostgreSQL types literals: int4, int8, numeric.
    "SELECT 1, 2147483648, 1.5, -7, b FROM t WHERE id = 2",
    // A quoted constant where nothing gives it a type: text, as a literal
    // (a parameter would be refused: "could not determine data type").
    "SELECT b, 'x' AS lit FROM t WHERE id = 2",
    "SELECT b FROM t WHERE id = 2 AND s = 'it''s'",
    "SELECT b FROM t WHERE id = '2'",
    "SELECT b FROM t WHERE id = -2",
    // Numbers read as column positions stay numbers.
    "SELECT b, s FROM t WHERE id = 1 ORDER BY 2",
    "SELECT s, count(*) FROM t WHERE id = 1 GROUP BY 1",
    "SELECT DISTINCT ON (1) b FROM t WHERE id = 3",
    // Errors at Parse and at Bind: PostgreSQL's own, positions included.
    "SELECT * FROM t WHERE id = 'abc'",
    "SELECT * FROM t WHERE id = 2 AND nosuch = 1",
    "SELECT b FROM t WHERE id = 2 AND s = 5",
    "SELECT b FROM t WHERE id = 2 AND ts > '2026-13-45'",
    "SELECT 1/0 FROM t WHERE id = 2",
    // An error while it runs.
    "SELECT b / (b - b) FROM t WHERE id = 2",
    "SELECT b FROM t WHERE id = 2 AND ts > now() - interval '1000 days'",
    "SELECT b FROM t WHERE id = 2 LIMIT 1 OFFSET 0",
    "EXPLAIN (COSTS OFF) SELECT b FROM t WHERE id = 2",
    // Writes.
    "INSERT INTO t (id, b, s) VALUES (20, 5, 'z')",
    "INSERT INTO t (id, b, s) VALUES (20, 5, 'z')",
    "UPDATE t SET b = b + 1, s = 'u' WHERE id = 20",
    "SELECT b, s FROM t WHERE id = 20",
    "DELETE FROM t WHERE id = 20",
    // The table changes under a prepared `SELECT *`: PostgreSQL's simple
    // query sees the new column (no "cached plan must not change result
    // type").
    "ALTER TABLE t ADD COLUMN extra int DEFAULT 7",
    "SELECT * FROM t WHERE id = 2",
    "ALTER TABLE t DROP COLUMN extra",
    "SELECT * FROM t WHERE id = 2",
    r"SELECT s, 'a\b' FROM t WHERE id = 2",
    // A text that fails as written too is tried again: once the table
    // exists, it runs prepared.
    "SELECT * FROM items WHERE id = 1",
    "CREATE TABLE items (id bigint PRIMARY KEY, v int)",
    "INSERT INTO items VALUES (1, 11)",
    "SELECT * FROM items WHERE id = 1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_queries_run_prepared_and_answer_exactly_as_postgresql() {
    let (_oracle, oracle_port) = oracle().await;
    let c = cluster("").await;
    // A deferred constraint fails at the commit: in a simple query the error
    // comes in place of the command tag. (Unique per shard: a key on the
    // shard of key 2.)
    let k = (4..)
        .find(|k| c.shard_of("t", KeyValue::Int(*k)) == c.shard_of("t", KeyValue::Int(2)))
        .unwrap();
    let mut queries: Vec<String> = QUERIES.iter().map(|q| q.to_string()).collect();
    queries.extend([
        format!("INSERT INTO t (id, b, d) VALUES ({k}, 1, 99)"),
        "UPDATE t SET d = 99 WHERE id = 2".to_string(),
        "UPDATE t SET d = 99 WHERE id = 2 RETURNING id, d".to_string(),
    ]);
    let diffs = differences(c.port(), oracle_port, &queries, 2).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    // They ran prepared: the shards executed the constant-free texts.
    let executed = executed_prepared(&c);
    for template in [
        "SELECT b FROM t WHERE id = $1",
        "SELECT * FROM t WHERE id = $1",
        "SELECT b FROM t WHERE id = $1 AND s = $2",
        "SELECT b / (b - b) FROM t WHERE id = $1",
        "UPDATE t SET b = b + $1, s = $2 WHERE id = $3",
        "SELECT * FROM items WHERE id = $1",
    ] {
        assert!(
            executed.contains(&format!(": {template}")),
            "the shards never ran {template:?} prepared; they ran:\n{executed}"
        );
    }
    // Never texts whose numbers are positions, nor EXPLAIN.
    for never in ["ORDER BY $", "GROUP BY $", "DISTINCT ON ($", "EXPLAIN"] {
        assert!(!executed.contains(never), "{never}:\n{executed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_prepare_simple_queries_off_queries_go_as_written() {
    let (_oracle, oracle_port) = oracle().await;
    let c = cluster("prepare_simple_queries = false").await;
    let diffs = differences(c.port(), oracle_port, &QUERIES[..8], 2).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    assert_eq!(executed_prepared(&c), "");
}

/// A cancel that reaches the shard while it plans the statement at Bind
/// (a custom plan folds `md5(repeat(...))` of its constants then) is the
/// client's answer: `57014`, as PostgreSQL gives it while planning the query
/// as written. The proxy must not take it for a refusal and run the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_the_shard_plans_is_the_answer_not_a_retry() {
    let c = cluster("").await;
    let client = c.client().await;
    let q = |n: u64| format!("SELECT b FROM t WHERE id = 2 AND md5(repeat('x', {n})) <> ''");
    // Prepared on the session's connection to that shard.
    assert_eq!(crate::harness::rows(&client, &q(10)).await.len(), 1);
    let token = client.cancel_token();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let started = std::time::Instant::now();
    let r = client.simple_query(&q(300_000_000)).await;
    cancel.await.unwrap();
    let e = r.expect_err("cancelled while the shard planned it");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{e} after {:?}",
        started.elapsed()
    );
    // The statement stays usable on that connection.
    assert_eq!(crate::harness::rows(&client, &q(10)).await.len(), 1);
    assert!(executed_prepared(&c).contains("md5(repeat($2, $3)) <> $4"));
}
