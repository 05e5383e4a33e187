//! The admin console through psql and a driver, and the metrics endpoint.

use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{connect, exec, free_port, Cluster, TABLES};

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
