//! The admin console through psql and a driver, and the metrics endpoint.

use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{connect, exec, free_port, insert_numbered, Cluster, TABLES};

async fn scrape(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(line_start)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_and_metrics() {
    let metrics_port = free_port();
    let tables = format!(
        "admin_users = [\"plain\"]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n{TABLES}"
    );
    let c = Cluster::start_with(3, &tables).await;
    let keys = c.accounts(3, 100).await;
    let app = c.client().await;

    let before = scrape(metrics_port).await;
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    let two_phase_before = metric(&before, "pieskieo_commits_total{kind=\"two_phase\"} ");
    let stmts_before = metric(&before, "pieskieo_statements_total{shard=\"1\"} ");
    exec(
        &app,
        &format!(
            "BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = {}; UPDATE accounts SET balance = balance + 1 WHERE id = {}; COMMIT",
            keys[0], keys[1]
        ),
    )
    .await;
    let after = scrape(metrics_port).await;
    assert_eq!(
        metric(&after, "pieskieo_commits_total{kind=\"two_phase\"} "),
        two_phase_before + 1
    );
    assert!(metric(&after, "pieskieo_statements_total{shard=\"1\"} ") > stmts_before);
    assert!(metric(&after, "pieskieo_clients ") >= 1);
    // Histograms: the 2PC phases apart, statement latency per shard.
    assert!(
        metric(
            &after,
            "pieskieo_commit_seconds_count{kind=\"two_phase\",phase=\"prepare\"} "
        ) >= 1
    );
    assert!(
        metric(
            &after,
            "pieskieo_commit_seconds_bucket{kind=\"two_phase\",phase=\"decision\",le=\"+Inf\"} "
        ) >= 1
    );
    assert!(metric(&after, "pieskieo_statement_seconds_count{shard=\"1\"} ") >= 1);
    assert!(after.contains("# TYPE pieskieo_pool_wait_seconds histogram"));

    // psql against the admin database.
    let admin_uri = format!("postgres://plain:plainpass@127.0.0.1:{}/pieskieo", c.port());
    let out = Command::new("psql")
        .arg(&admin_uri)
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SHOW VERSION",
            "-c",
            "SHOW SHARDS",
            "-c",
            "SHOW CLIENTS",
            "-c",
            "SHOW STATS",
            "-c",
            "SHOW POOLS",
            "-c",
            "SHOW CONFIG",
            "-c",
            "SHOW TRANSACTIONS",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Pieskieo"), "{text}");
    for s in &c.shards.servers {
        assert!(
            text.contains(&format!("|127.0.0.1|{}|postgres|postgres|8|", s.port)),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("|{}|", s.port)) && l.ends_with("|up")),
            "{text}"
        );
    }
    assert!(
        text.contains("|app|127.0.0.1:"),
        "SHOW CLIENTS lists the app client: {text}"
    );
    assert!(text.contains("commits (two-phase)|"), "{text}");
    assert!(text.contains("node_id|test"), "{text}");

    // An unknown command is an error; non-admin users cannot reach the console.
    let admin = connect(&format!(
        "host=127.0.0.1 port={} user=plain password=plainpass dbname=pieskieo",
        c.port()
    ))
    .await
    .unwrap();
    let e = admin.simple_query("DROP TABLE accounts").await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("0A000"));
    let e = connect(&format!(
        "host=127.0.0.1 port={} user=app password=secret dbname=pieskieo",
        c.port()
    ))
    .await
    .expect_err("app is not an admin");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_client() {
    let servers = crate::harness::Servers::start(1);
    let tables = format!("log_format = \"json\"\n{TABLES}");
    let proxy = crate::harness::ProxyProcess::start_with(&servers, &tables, "").await;
    let client = connect(&proxy.url()).await.unwrap();
    exec(&client, "SELECT 1").await;
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("client connected"))
        .unwrap_or_else(|| panic!("no connect line in:\n{log}"));
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(
        line.contains("\"user\":\"app\"") && line.contains("\"peer\":\"127.0.0.1:"),
        "{line}"
    );
    assert!(!log.contains("secret"), "no password in the log");
}

async fn max_pool_sizes(admin: &tokio_postgres::Client) -> Vec<String> {
    crate::harness::rows(admin, "SHOW POOLS")
        .await
        .into_iter()
        .map(|r| r[1].clone().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_safe_changes_and_refuses_moving_rows() {
    let servers = crate::harness::Servers::start(2);
    let tables = format!("admin_users = [\"plain\"]\n{TABLES}");
    let proxy = crate::harness::ProxyProcess::start_with(&servers, &tables, "").await;
    let admin_url = format!(
        "host=127.0.0.1 port={} user=plain password=plainpass dbname=pieskieo",
        proxy.port
    );
    let admin = connect(&admin_url).await.unwrap();
    assert_eq!(max_pool_sizes(&admin).await, vec!["8", "8"]);
    let original = std::fs::read_to_string(&proxy.config).unwrap();

    // A new sharded table and smaller pools: applied.
    let grown = original.replace("pool_size = 8", "pool_size = 5")
        + "\n[[tables]]\nname = \"orders\"\nkey = \"account_id\"\nkey_type = \"int8\"\n";
    std::fs::write(&proxy.config, &grown).unwrap();
    let changes: Vec<String> = crate::harness::rows(&admin, "RELOAD")
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect();
    assert!(changes.iter().any(|c| c.contains("orders")), "{changes:?}");
    assert!(
        changes.iter().any(|c| c.contains("pool_size 8 -> 5")),
        "{changes:?}"
    );
    assert_eq!(max_pool_sizes(&admin).await, vec!["5", "5"]);
    let app = connect(&proxy.url()).await.unwrap();
    exec(&app, "CREATE TABLE orders (account_id bigint, note text)").await;
    insert_numbered(&app, "orders (account_id, note)", 20, "'o'").await;
    let map = pieskieo::router::ShardMap::from_config(
        &pieskieo::config::Config::parse(&grown, "t").unwrap(),
    );
    for i in 0..2 {
        let s = servers.connect(i).await;
        for r in crate::harness::rows(&s, "SELECT account_id FROM orders").await {
            let k: i64 = r[0].as_deref().unwrap().parse().unwrap();
            let shard = map.tables["orders"]
                .shard_for(&pieskieo::router::KeyValue::Int(k), 2)
                .unwrap()
                .0 as usize;
            assert_eq!(shard, i, "order {k} on shard {i}: the new table is sharded");
        }
    }

    // Changing an existing table's key type would move rows: refused, old config stays.
    std::fs::write(
        &proxy.config,
        grown.replacen("key_type = \"int8\"", "key_type = \"int4\"", 1),
    )
    .unwrap();
    let e = admin.simple_query("RELOAD").await.unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("moving existing rows"),
        "{e:?}"
    );
    assert_eq!(max_pool_sizes(&admin).await, vec!["5", "5"]);

    // SIGHUP reloads too.
    std::fs::write(
        &proxy.config,
        grown.replace("pool_size = 5", "pool_size = 6"),
    )
    .unwrap();
    proxy.signal("HUP");
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = max_pool_sizes(&admin).await;
        if seen == vec!["6", "6"] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, vec!["6", "6"]);
}
