//! Deadlocks across shards: each shard sees one waiter and no cycle, so only
//! the proxy can find them. It cancels the youngest transaction of each cycle
//! with 40P01 within about `deadlock_timeout_ms`; the others proceed.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::harness::{balance, exec, value, Cluster, Lcg};

/// Runs `sql` on `c` in the background; gives the client back with the result.
fn spawn_query(
    c: Client,
    sql: String,
) -> tokio::task::JoinHandle<(Client, Result<(), tokio_postgres::Error>)> {
    tokio::spawn(async move {
        let r = c.simple_query(&sql).await.map(|_| ());
        (c, r)
    })
}

fn code(r: &Result<(), tokio_postgres::Error>) -> Option<String> {
    r.as_ref()
        .err()
        .and_then(|e| e.as_db_error())
        .map(|d| d.code().code().to_string())
}

/// A counter of `SHOW STATS` on the proxy at `port`.
async fn stat(port: u16, name: &str) -> String {
    let admin = crate::harness::connect(&format!(
        "host=127.0.0.1 port={port} user=plain password=plainpass dbname=pieskieo"
    ))
    .await
    .unwrap();
    let rows = crate::harness::rows(&admin, "SHOW STATS").await;
    rows.iter()
        .find(|r| r.first().and_then(|x| x.as_deref()) == Some(name))
        .and_then(|r| r.get(1).cloned().flatten())
        .unwrap_or_default()
}

/// `n` transactions, `i` holding row `keys[i]` (one per shard) and then
/// asking for `keys[i + 1]`: a cycle over `n` shards. The youngest (the last
/// to begin) gets 40P01 with PostgreSQL's message; once it rolls back the
/// others finish, in reverse order. `stalled`: one more shard, outside the
/// cycle, does not answer meanwhile (its processes stopped).
async fn cycle(n: usize, stalled: bool) {
    let tables = format!("admin_users = [\"plain\"]\n{}", crate::harness::TABLES);
    let c = Cluster::start_with(n + usize::from(stalled), &tables).await;
    let keys = c.accounts(n, 100).await;
    let pids = match stalled {
        true => crate::harness::shard_pids(&c.shards.servers[n]),
        false => Vec::new(),
    };
    crate::harness::signal(&pids, "STOP");
    let mut clients = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let t = c.client().await;
        exec(&t, "BEGIN").await;
        exec(
            &t,
            &format!("UPDATE accounts SET balance = balance - 1 WHERE id = {k}"),
        )
        .await;
        clients.push((i, t));
        // Each begins visibly later than the one before.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let mut waiting = Vec::new();
    for (i, t) in clients {
        let next = keys[(i + 1) % n];
        let sql = format!("UPDATE accounts SET balance = balance + 1 WHERE id = {next}");
        waiting.push(spawn_query(t, sql));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let youngest = waiting.pop().unwrap();
    let (loser, r) = tokio::time::timeout(Duration::from_secs(10), youngest)
        .await
        .expect("the deadlock was not broken within 10 s")
        .unwrap();
    assert_eq!(code(&r).as_deref(), Some("40P01"), "{r:?}");
    let e = r.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.message(), "deadlock detected");
    let detail = db.detail().unwrap_or_default().to_string();
    assert_eq!(detail.lines().count(), n, "{detail}");
    assert!(
        detail.contains("waits for distributed transaction"),
        "{detail}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    crate::harness::signal(&pids, "CONT");
    exec(&loser, "ROLLBACK").await;
    // The others proceed: each gets its row as the next one commits.
    while let Some(h) = waiting.pop() {
        let (t, r) = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("a survivor stayed blocked")
            .unwrap();
        assert!(r.is_ok(), "only one transaction is cancelled: {r:?}");
        exec(&t, "COMMIT").await;
    }
    // The survivors' transfers all happened; the loser's did not.
    let check = c.client().await;
    let mut total = 0;
    for k in &keys {
        total += balance(&check, *k).await.parse::<i64>().unwrap();
    }
    assert_eq!(total, 100 * n as i64);
    assert_eq!(
        balance(&check, keys[0]).await,
        "99",
        "the loser's change is gone"
    );
    assert_eq!(stat(c.port(), "deadlocks").await, "1");
    for i in 0..n {
        assert_eq!(crate::harness::prepared(&c.shard(i).await).await, 0);
    }
}

/// A shard that does not answer the detector does not hold up the cycles
/// that do not run through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_shard_does_not_hide_a_deadlock_elsewhere() {
    cycle(2, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_shard_deadlock_cancels_the_youngest() {
    cycle(2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_shard_deadlock_cancels_the_youngest() {
    cycle(3, false).await;
}

/// With detection off, the proxy adds nothing to its transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_off_leaves_no_tag() {
    let c = Cluster::start_txn(1, crate::harness::TABLES, "deadlock_timeout_ms = 0").await;
    let keys = c.accounts(1, 100).await;
    let t = c.client().await;
    exec(&t, "BEGIN").await;
    balance(&t, keys[0]).await;
    let shard = c.shard(0).await;
    let n = value(
        &shard,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2",
    )
    .await;
    assert_eq!(n, "0");
    exec(&t, "COMMIT").await;
}

/// Bank transfers that lock two accounts on different shards in random
/// order, for `PIESKIEO_DEADLOCK_SECS` (default 20) seconds: no client ever
/// hangs, every deadlock surfaces as 40P01 and is retried, the total holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_order_transfers_never_hang_and_the_total_holds() {
    let secs: u64 = std::env::var("PIESKIEO_DEADLOCK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let c = Cluster::start(3).await;
    let setup = c.client().await;
    exec(&setup, crate::harness::ACCOUNTS).await;
    // Two accounts per shard.
    let mut keys = Vec::new();
    for s in 0..3 {
        keys.extend(
            (1..100_000i64)
                .filter(|k| c.shard_of("accounts", pieskieo::router::KeyValue::Int(*k)) == s)
                .take(2),
        );
    }
    for k in &keys {
        exec(
            &setup,
            &format!("INSERT INTO accounts (id, balance) VALUES ({k}, 1000000)"),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for w in 0..6u64 {
        let client = c.client().await;
        let keys = keys.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = Lcg(w + 1);
            let (mut done, mut retried, mut ours) = (0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                let from = keys[rng.next(keys.len() as u64) as usize];
                let to = loop {
                    let t = keys[rng.next(keys.len() as u64) as usize];
                    if t != from {
                        break t;
                    }
                };
                let sql = format!(
                    "BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = {from}; \
                     UPDATE accounts SET balance = balance + 1 WHERE id = {to}; COMMIT"
                );
                let r = tokio::time::timeout(Duration::from_secs(30), client.simple_query(&sql))
                    .await
                    .unwrap_or_else(|_| panic!("worker {w}: a transfer hung"));
                match r {
                    Ok(_) => done += 1,
                    Err(e) => {
                        let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
                        assert_eq!(db.code().code(), "40P01", "{db:?}");
                        if db
                            .detail()
                            .is_some_and(|d| d.contains("distributed transaction"))
                        {
                            ours += 1;
                        }
                        retried += 1;
                        let _ = client.simple_query("ROLLBACK").await;
                    }
                }
            }
            (done, retried, ours)
        }));
    }
    let (mut done, mut retried, mut ours) = (0, 0, 0);
    for w in workers {
        let (d, r, o) = w.await.unwrap();
        done += d;
        retried += r;
        ours += o;
    }
    eprintln!(
        "transfers: {done} committed, {retried} deadlocks retried ({ours} found by the proxy)"
    );
    assert!(done > 0);
    let total = c
        .shard_sum("SELECT coalesce(sum(balance), 0) FROM accounts")
        .await;
    assert_eq!(total, 6 * 1_000_000);
    for i in 0..3 {
        assert_eq!(crate::harness::prepared(&c.shard(i).await).await, 0);
    }
}

/// Two proxies over the same shards, one transaction through each: both
/// detectors see the same cycle and choose the same victim; only the proxy
/// that serves it cancels, so exactly one 40P01 reaches a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_across_two_proxies_cancels_the_youngest_once() {
    let servers = crate::harness::Servers::start(2);
    let tables = format!("admin_users = [\"plain\"]\n{}", crate::harness::TABLES);
    let mut proxies = Vec::new();
    for node in ["p1", "p2"] {
        let text = crate::harness::config_text(&servers.ports(), &tables)
            .replace("node_id = \"test\"", &format!("node_id = \"{node}\""));
        let config = pieskieo::config::Config::parse(&text, "test.toml").unwrap();
        proxies.push(pieskieo::serve(config).await.unwrap());
    }
    let url = |i: usize| {
        format!(
            "host=127.0.0.1 port={} user=app password=secret dbname=app",
            proxies[i].addr.port()
        )
    };
    let setup = crate::harness::connect(&url(0)).await.unwrap();
    exec(&setup, crate::harness::ACCOUNTS).await;
    let text = crate::harness::config_text(&servers.ports(), crate::harness::TABLES);
    let map = pieskieo::router::ShardMap::from_config(
        &pieskieo::config::Config::parse(&text, "test.toml").unwrap(),
    );
    let keys: Vec<i64> = (0..2)
        .map(|s| crate::harness::key_on(&map, "accounts", s))
        .collect();
    for k in &keys {
        exec(
            &setup,
            &format!("INSERT INTO accounts (id, balance) VALUES ({k}, 100)"),
        )
        .await;
    }
    let t1 = crate::harness::connect(&url(0)).await.unwrap();
    let t2 = crate::harness::connect(&url(1)).await.unwrap();
    for (t, k) in [(&t1, keys[0]), (&t2, keys[1])] {
        exec(t, "BEGIN").await;
        exec(
            t,
            &format!("UPDATE accounts SET balance = balance - 1 WHERE id = {k}"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let up = |k: i64| format!("UPDATE accounts SET balance = balance + 1 WHERE id = {k}");
    let first = spawn_query(t1, up(keys[1]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = spawn_query(t2, up(keys[0]));
    let (loser, r) = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the deadlock was not broken within 10 s")
        .unwrap();
    assert_eq!(code(&r).as_deref(), Some("40P01"), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    exec(&loser, "ROLLBACK").await;
    let (winner, r) = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the survivor stayed blocked")
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    exec(&winner, "COMMIT").await;
    assert_eq!(balance(&winner, keys[0]).await, "99");
    assert_eq!(balance(&winner, keys[1]).await, "101");
    let mut found = Vec::new();
    for p in &proxies {
        found.push(stat(p.addr.port(), "deadlocks").await);
    }
    assert_eq!(found, ["0", "1"], "only the victim's proxy cancels");
}
