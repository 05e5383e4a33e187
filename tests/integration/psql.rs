//! The real `psql` and `pgbench` binaries against the proxy.

use std::process::Command;

use crate::harness::{exec, insert_numbered, value, Cluster};

fn psql(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(c.uri())
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .output()
        .expect("psql is installed (apt-get install -y postgresql-client)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_creates_inserts_queries_and_describes() {
    let c = Cluster::start(3).await;
    let (ok, out, err) = psql(
        &c,
        &[
            "-c",
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint)",
            "-c",
            "INSERT INTO accounts (id, balance) VALUES (1, 10), (2, 20), (3, 30), (4, 40)",
            "-c",
            "SELECT balance FROM accounts WHERE id = 3",
            "-c",
            "SELECT id FROM accounts",
            "-c",
            "\\d accounts",
            "-c",
            "\\dt",
        ],
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["CREATE TABLE", "INSERT 0 4", "30"]);
    let mut ids: Vec<&str> = lines[3..7].to_vec();
    ids.sort();
    assert_eq!(ids, vec!["1", "2", "3", "4"]);
    assert!(out.contains("id|bigint"), "\\d output: {out}");
    // Footers (indexes) show without -t.
    let described = Command::new("psql")
        .arg(c.uri())
        .args(["-X", "-c", "\\d accounts"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(
        text.contains("\"accounts_pkey\" PRIMARY KEY, btree (id)"),
        "\\d output: {text}"
    );
    assert!(out.contains("public|accounts|table"), "\\dt output: {out}");

    // A psql script with a transaction and an error stops where PostgreSQL would.
    let (ok, _, err) = psql(
        &c,
        &[
            "-c",
            "BEGIN",
            "-c",
            "INSERT INTO accounts (id, balance) VALUES (5, 50)",
            "-c",
            "SELECT 1/0",
        ],
    );
    assert!(!ok);
    assert!(err.contains("division by zero"), "{err}");
    let client = c.client().await;
    assert_eq!(
        value(&client, "SELECT count(*) FROM accounts WHERE id = 5").await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_single_shard_transactions_lose_nothing() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, abalance int NOT NULL DEFAULT 0, filler text);
             CREATE TABLE pgbench_history (aid int NOT NULL, delta int, mtime timestamp)",).await;
    insert_numbered(&client, "pgbench_accounts (aid, abalance)", 1000, "0").await;

    let processed = run_pgbench(&c, "simple", 1000).await;
    // Every committed transaction added exactly 1 to one balance and one history row.
    let sum = c
        .shard_sum("SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts")
        .await as u64;
    let history = c.shard_sum("SELECT count(*) FROM pgbench_history").await as u64;
    assert_eq!(sum, processed);
    assert_eq!(history, processed);
}

/// Runs pgbench for 3 s with a single-shard read-write script in `mode`
/// (simple, extended, prepared); every transaction adds 1 to one balance.
/// Returns how many transactions it committed; none may fail.
pub async fn run_pgbench(c: &Cluster, mode: &str, accounts: u32) -> u64 {
    let dir = std::env::temp_dir().join(format!("pieskieo-pgbench-{}-{mode}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("transfer.sql");
    std::fs::write(
        &script,
        format!(
            "\\set aid random(1, {accounts})\n\
         BEGIN;\n\
         UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         INSERT INTO pgbench_history (aid, delta, mtime) VALUES (:aid, 1, CURRENT_TIMESTAMP);\n\
         END;\n"
        ),
    )
    .unwrap();
    let (processed, text) = pgbench(c, mode, &script);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(failed) = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
    {
        assert!(failed.starts_with("0 "), "{text}");
    }
    processed
}

/// Runs pgbench for 3 s with 4 clients in `mode` over `script`; returns the
/// number of transactions it processed (at least one) and its report.
pub fn pgbench(c: &Cluster, mode: &str, script: &std::path::Path) -> (u64, String) {
    let out = Command::new("pgbench")
        .args(["-n", "-M", mode, "-c", "4", "-j", "2", "-T", "3", "-f"])
        .arg(script)
        .arg(c.uri())
        .output()
        .expect("pgbench is installed (apt-get install -y postgresql-contrib or postgresql)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{mode}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let processed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{mode}: no count in: {text}"));
    assert!(processed > 0, "{mode}: {text}");
    (processed, text)
}
