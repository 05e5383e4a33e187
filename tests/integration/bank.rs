//! The bank the `consistent_reads` tests share (`consistent`, `review18*`):
//! a proxy over 3 shards with the setting on or off, accounts holding
//! `START` each, a transfer between two shards paused after its decision
//! (one part committed, the other still prepared), and sums read through
//! the proxy.

use std::time::{Duration, Instant};

use pieskieo::config::Config;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{config_text_full, connect, exec, key_on, prepared, Servers, TABLES};

pub const SHARDS: usize = 3;
pub const START: i64 = 1_000;

pub fn url(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=app password=secret dbname=app connect_timeout=5")
}

/// The test configuration with `consistent_reads` as given; `txn_extra`
/// lines go in `[txn]`, `limits` lines in `[limits]`.
pub fn config_text(servers: &Servers, consistent: bool, txn_extra: &str, limits: &str) -> String {
    config_text_full(
        &servers.ports(),
        &format!("consistent_reads = {consistent}\n{TABLES}"),
        txn_extra,
        limits,
    )
}

pub fn config(servers: &Servers, consistent: bool, txn_extra: &str) -> Config {
    Config::parse(
        &config_text(servers, consistent, txn_extra, ""),
        "test.toml",
    )
    .unwrap()
}

pub async fn proxy_text(text: &str) -> pieskieo::Proxy {
    pieskieo::serve(Config::parse(text, "test.toml").unwrap())
        .await
        .unwrap()
}

pub async fn proxy(servers: &Servers, consistent: bool, txn_extra: &str) -> pieskieo::Proxy {
    proxy_text(&config_text(servers, consistent, txn_extra, "")).await
}

/// As [`proxy`], with `limits` lines in `[limits]`.
pub async fn proxy_limited(
    servers: &Servers,
    consistent: bool,
    txn_extra: &str,
    limits: &str,
) -> pieskieo::Proxy {
    proxy_text(&config_text(servers, consistent, txn_extra, limits)).await
}

/// One account with `START` on each shard; returns the keys (shard order).
pub async fn accounts(servers: &Servers, port: u16) -> Vec<i64> {
    let map = pieskieo::router::ShardMap::from_config(&config(servers, false, ""));
    let c = connect(&url(port)).await.unwrap();
    exec(
        &c,
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)",
    )
    .await;
    let keys: Vec<i64> = (0..SHARDS).map(|s| key_on(&map, "accounts", s)).collect();
    for k in &keys {
        exec(
            &c,
            &format!("INSERT INTO accounts (id, balance) VALUES ({k}, {START})"),
        )
        .await;
    }
    keys
}

/// A transfer of 10 from account `a` to account `b` in one block.
pub fn transfer_sql(a: i64, b: i64) -> String {
    format!(
        "BEGIN; UPDATE accounts SET balance = balance - 10 WHERE id = {a}; UPDATE accounts SET balance = balance + 10 WHERE id = {b}; COMMIT"
    )
}

/// Waits until shard 1 or 2 holds a prepared transaction, then 200 ms more
/// (the commit reaches its failpoint).
pub async fn until_prepared(servers: &Servers) {
    until_prepared_on(servers, &[1, 2], Duration::from_millis(200)).await;
}

/// Sends a transfer from `a` to `b` as one simple query on a raw client,
/// waits until it has prepared (`until_prepared`), and lets the client go
/// without Terminate, in the commit phase.
pub async fn abandon_transfer_once_prepared(port: u16, servers: &Servers, a: i64, b: i64) {
    let mut raw = crate::harness::RawClient::connect(port).await;
    let mut q = transfer_sql(a, b).into_bytes();
    q.push(0);
    raw.send(b'Q', &q).await;
    until_prepared(servers).await;
    drop(raw);
}

/// Waits until one of `shards` holds a prepared transaction, then `settle`.
pub async fn until_prepared_on(servers: &Servers, shards: &[usize], settle: Duration) {
    let mut clients = Vec::new();
    for &i in shards {
        clients.push(servers.connect(i).await);
    }
    let t = Instant::now();
    loop {
        let mut n = 0;
        for c in &clients {
            n += prepared(c).await;
        }
        if n > 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never prepared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(settle).await;
}

/// One plain PostgreSQL, the oracle the reviews compare sessions with,
/// with accounts `1..=n` holding `START` each.
pub async fn oracle_accounts(n: i64) -> Servers {
    let oracle = Servers::start(1);
    let values: Vec<String> = (1..=n).map(|k| format!("({k}, {START})")).collect();
    exec(
        &oracle.connect(0).await,
        &format!(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL); INSERT INTO accounts VALUES {}",
            values.join(", ")
        ),
    )
    .await;
    oracle
}

/// Waits until a backend on one of the shards waits for a lock (a reader
/// sent behind a DDL's relation lock has reached it), then 50 ms more.
pub async fn until_lock_waiter(servers: &Servers) {
    let mut clients = Vec::new();
    for i in 0..SHARDS {
        clients.push(servers.connect(i).await);
    }
    let t = Instant::now();
    'wait: loop {
        for c in &clients {
            let n = crate::harness::value(
                c,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event <> 'advisory'",
            )
            .await;
            if n != "0" {
                break 'wait;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no backend waited on a lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Fresh shards, a proxy over them (`consistent_reads` as given, extra
/// `[txn]` lines), and the accounts (`accounts`): the shards, the proxy,
/// its port and the accounts' keys.
pub async fn bank_cluster(
    consistent: bool,
    txn_extra: &str,
) -> (Servers, pieskieo::Proxy, u16, Vec<i64>) {
    let servers = Servers::start(SHARDS);
    let p = proxy(&servers, consistent, txn_extra).await;
    let port = p.addr.port();
    let keys = accounts(&servers, port).await;
    (servers, p, port, keys)
}

/// Starts a transfer from `a` (shard 1) to `b` (shard 2) through the proxy
/// at `port`, whose failpoint pauses it after its decision, and returns once
/// it is paused there (the decision shard committed, the other part still
/// prepared).
pub async fn paused_transfer(
    servers: &Servers,
    port: u16,
    a: i64,
    b: i64,
) -> tokio::task::JoinHandle<Result<(), tokio_postgres::Error>> {
    let c = connect(&url(port)).await.unwrap();
    let transfer = transfer_sql(a, b);
    let stuck = tokio::spawn(async move { c.simple_query(&transfer).await.map(|_| ()) });
    until_prepared(servers).await;
    stuck
}

/// Every row's first column.
pub fn values(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect()
}

/// Adds 1 to account `k`'s balance (autocommit).
pub async fn bump(writer: &Client, k: i64) {
    exec(
        writer,
        &format!("UPDATE accounts SET balance = balance + 1 WHERE id = {k}"),
    )
    .await;
}

/// The reader's block reads account `k` and commits; the writer puts the
/// balance back to `START`. What the block read.
pub async fn read_and_reset(reader: &Client, writer: &Client, k: i64) -> Result<i64, String> {
    let got = sum_of(
        reader,
        &format!("SELECT balance FROM accounts WHERE id = {k}"),
    )
    .await;
    exec(reader, "COMMIT").await;
    exec(
        writer,
        &format!("UPDATE accounts SET balance = {START} WHERE id = {k}"),
    )
    .await;
    got
}

/// A client error as `SQLSTATE message`.
pub fn code(e: &tokio_postgres::Error) -> String {
    format!(
        "{} {}",
        e.code().map_or("-", |c| c.code()),
        e.as_db_error()
            .map_or(e.to_string(), |d| d.message().to_string())
    )
}

/// Every value of every row's first column, summed; an error as [`code`].
pub async fn sum_of(c: &Client, sql: &str) -> Result<i64, String> {
    c.simple_query(sql)
        .await
        .map(|m| values(&m).iter().map(|v| v.parse::<i64>().unwrap()).sum())
        .map_err(|e| code(&e))
}
