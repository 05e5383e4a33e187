//! A server connection that is not clean when it is let go (in a
//! transaction, owing answers, timed out) is closed, not pooled: its server
//! session ends and its locks are free at once for everyone else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pieskieo::admin::Stats;
use pieskieo::backend::Pools;
use pieskieo::config::Config;
use pieskieo::router::ShardId;
use tokio_postgres::Client;

use crate::harness::{config_text, exec, value, Cluster, Servers, TABLES};

/// Whether shard backend `pid` still exists, waiting up to `within`.
async fn gone(shard: &Client, pid: i32, within: Duration) -> bool {
    let t = Instant::now();
    loop {
        let n = value(
            shard,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        )
        .await;
        if n == "0" {
            return true;
        }
        if t.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Locks the row right away (NOWAIT), retrying for `within`: `true` when it got it.
async fn can_lock(shard: &Client, within: Duration) -> bool {
    let t = Instant::now();
    loop {
        let r = shard
            .simple_query("BEGIN; SELECT * FROM t WHERE id = 1 FOR UPDATE NOWAIT; ROLLBACK")
            .await;
        if r.is_ok() {
            return true;
        }
        let _ = shard.simple_query("ROLLBACK").await;
        if t.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_in_a_transaction_is_closed_and_its_locks_released() {
    let servers = Servers::start(1);
    let text = config_text(&servers.ports(), TABLES);
    let config = Config::parse(&text, "test.toml").unwrap();
    let endpoints = pieskieo::backend::Endpoint::all(&config).unwrap();
    let pools = Pools::new(&config, &endpoints, &Arc::new(Stats::new(1)));
    let shard = servers.connect(0).await;
    exec(
        &shard,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
    )
    .await;

    // Inside a transaction, holding a row lock.
    let mut conn = pools.get(ShardId(0)).await.unwrap();
    conn.simple("BEGIN").await.unwrap().unwrap();
    conn.simple("SELECT * FROM t WHERE id = 1 FOR UPDATE")
        .await
        .unwrap()
        .unwrap();
    let pid = conn.process_id;
    drop(conn);
    assert!(
        can_lock(&shard, Duration::from_millis(500)).await,
        "lock still held"
    );
    assert!(
        gone(&shard, pid, Duration::from_millis(500)).await,
        "backend {pid} lives on"
    );
    assert_eq!(
        pools.status()[0].1,
        0,
        "the closed connection left the pool"
    );

    // Owing an answer (the statement still runs): cancelled and closed.
    let mut conn = pools.get(ShardId(0)).await.unwrap();
    conn.simple("BEGIN").await.unwrap().unwrap();
    conn.send_query("SELECT pg_sleep(30) FROM t WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    conn.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = conn.process_id;
    drop(conn);
    assert!(
        can_lock(&shard, Duration::from_secs(1)).await,
        "lock still held"
    );
    assert!(
        gone(&shard, pid, Duration::from_secs(1)).await,
        "backend {pid} lives on"
    );

    // A clean one goes back and is reused.
    let conn = pools.get(ShardId(0)).await.unwrap();
    let pid = conn.process_id;
    drop(conn);
    assert_eq!(pools.get(ShardId(0)).await.unwrap().process_id, pid);

    // One whose server hung up while it sat in the pool is not handed out.
    exec(&shard, &format!("SELECT pg_terminate_backend({pid})")).await;
    assert!(gone(&shard, pid, Duration::from_secs(1)).await);
    let mut conn = pools.get(ShardId(0)).await.unwrap();
    assert_ne!(conn.process_id, pid);
    assert!(conn.simple("SELECT 1").await.unwrap().is_ok());
}

/// A client killed inside a block: its shard backends end the transaction at
/// once (nothing stays idle in transaction, the row can be locked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_in_a_block_leaves_no_locks() {
    let c = Cluster::start(2).await;
    let keys = c.accounts(2, 100).await;
    let client = c.client().await;
    exec(&client, "BEGIN").await;
    for k in &keys {
        exec(
            &client,
            &format!("UPDATE accounts SET balance = 0 WHERE id = {k}"),
        )
        .await;
    }
    drop(client);
    let other = c.client().await;
    exec(&other, "SET lock_timeout = '1s'").await;
    for k in &keys {
        exec(
            &other,
            &format!("UPDATE accounts SET balance = balance + 1 WHERE id = {k}"),
        )
        .await;
        assert_eq!(crate::harness::balance(&other, *k).await, "101");
    }
    for i in 0..2 {
        let n = value(
            &c.shard(i).await,
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
        )
        .await;
        assert_eq!(n, "0", "shard {i}");
    }
}
