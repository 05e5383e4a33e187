//! Two-phase commit latency: Pieskieo against the floor.
//!
//! Starts 3 PostgreSQL shards (fsync on, as in production) and the proxy, and
//! prints p50 / p99 / p99.9 of: a 3-shard 2PC commit, its prepare phase, the
//! abort of a 3-shard transaction, a 1-writer commit and a 2-shard commit. In the same run it
//! measures the floor: the same PREPARE / COMMIT PREPARED (and ROLLBACK,
//! COMMIT) sent straight to the shards in parallel by a minimal client.
//!
//! Run: `cargo bench --bench twopc` (ITERATIONS=N to change the sample size).

use std::time::{Duration, Instant};

use pieskieo::cluster::SUPERUSER_PASSWORD;
use pieskieo::config::Config;
use pieskieo::router::{KeyValue, ShardMap};
use tokio_postgres::{Client, NoTls};

#[path = "common.rs"]
mod common;

async fn connect(url: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

struct Stats(Vec<Duration>);

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v.get(i)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let iterations: usize = std::env::var("ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let (dir, servers) = common::start_servers(3);
    let mut cfg = String::from("listen = \"127.0.0.1:0\"\nnode_id = \"bench\"\n[[users]]\nname = \"app\"\npassword = \"app\"\n[[tables]]\nname = \"accounts\"\nkey = \"id\"\nkey_type = \"int8\"\n");
    for (i, s) in servers.iter().enumerate() {
        cfg.push_str(&format!(
            "[[shards]]\nid = {i}\nport = {}\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"{SUPERUSER_PASSWORD}\"\n",
            s.port
        ));
    }
    let config = Config::parse(&cfg, "bench.toml").unwrap();
    let map = ShardMap::from_config(&config);
    let proxy = pieskieo::serve(config).await.unwrap();
    let url = format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app",
        proxy.addr.port()
    );
    let client = connect(&url).await;
    client
        .simple_query("CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint)")
        .await
        .unwrap();
    let keys: Vec<i64> = (0..3)
        .map(|s| {
            (1..)
                .find(|k| {
                    map.tables["accounts"]
                        .shard_for(&KeyValue::Int(*k), 3)
                        .unwrap()
                        .0
                        == s
                })
                .unwrap()
        })
        .collect();
    for k in &keys {
        client
            .simple_query(&format!(
                "INSERT INTO accounts (id, balance) VALUES ({k}, 0)"
            ))
            .await
            .unwrap();
    }
    let update = |k: i64| format!("UPDATE accounts SET balance = balance + 1 WHERE id = {k}");

    // Through Pieskieo.
    proxy.coordinator.record_timings();
    let (mut commit3, mut abort3, mut commit1) = (Stats(vec![]), Stats(vec![]), Stats(vec![]));
    let mut commit2 = Stats(vec![]);
    let two = format!("BEGIN; {}; {}", update(keys[0]), update(keys[1]));
    let three = format!(
        "BEGIN; {}; {}; {}",
        update(keys[0]),
        update(keys[1]),
        update(keys[2])
    );
    let one = format!("BEGIN; {}", update(keys[0]));
    for _ in 0..iterations {
        commit3.0.push(timed(&client, &three, "COMMIT").await);
        abort3.0.push(timed(&client, &three, "ROLLBACK").await);
        commit1.0.push(timed(&client, &one, "COMMIT").await);
        commit2.0.push(timed(&client, &two, "COMMIT").await);
    }
    let phases = proxy.coordinator.take_timings();
    let prepare3 = Stats(phases.iter().map(|p| p.prepare).collect());
    let decision = Stats(phases.iter().map(|p| p.decision).collect());

    // The floor: a minimal client straight to the shards, in parallel.
    let mut direct = Vec::new();
    for s in &servers {
        direct.push(connect(&format!("host=127.0.0.1 port={} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres", s.port)).await);
    }
    let (mut f_commit3, mut f_prepare3, mut f_abort3, mut f_commit1) =
        (Stats(vec![]), Stats(vec![]), Stats(vec![]), Stats(vec![]));
    for n in 0..iterations {
        for (i, c) in direct.iter().enumerate() {
            c.simple_query(&format!("BEGIN; {}", update(keys[i])))
                .await
                .unwrap();
        }
        let q = |verb: &str, i: usize| format!("{verb} 'floor_{n}_{i}'");
        let t = Instant::now();
        let (a, b, c) = (
            q("PREPARE TRANSACTION", 0),
            q("PREPARE TRANSACTION", 1),
            q("PREPARE TRANSACTION", 2),
        );
        all3(tokio::join!(
            direct[0].simple_query(&a),
            direct[1].simple_query(&b),
            direct[2].simple_query(&c)
        ));
        f_prepare3.0.push(t.elapsed());
        let (a, b, c) = (
            q("COMMIT PREPARED", 0),
            q("COMMIT PREPARED", 1),
            q("COMMIT PREPARED", 2),
        );
        all3(tokio::join!(
            direct[0].simple_query(&a),
            direct[1].simple_query(&b),
            direct[2].simple_query(&c)
        ));
        f_commit3.0.push(t.elapsed());

        for (i, c) in direct.iter().enumerate() {
            c.simple_query(&format!("BEGIN; {}", update(keys[i])))
                .await
                .unwrap();
        }
        let t = Instant::now();
        all3(tokio::join!(
            direct[0].simple_query("ROLLBACK"),
            direct[1].simple_query("ROLLBACK"),
            direct[2].simple_query("ROLLBACK")
        ));
        f_abort3.0.push(t.elapsed());

        f_commit1.0.push(timed(&direct[0], &one, "COMMIT").await);
    }

    println!("Pieskieo two-phase commit latency, {iterations} transactions each, 3 local shards, fsync on");
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::env::consts::ARCH
    );
    println!();
    println!(
        "{:<24} {:>9} {:>9} {:>9} | {:>9} {:>9} | {:>10} | {:>10}",
        "workload (ms)", "p50", "p99", "p99.9", "floor p50", "floor p99", "p99 ratio", "p99 target"
    );
    let row = |name: &str, s: &Stats, f: &Stats, target: &str| {
        println!(
            "{:<24} {:>9.3} {:>9.3} {:>9.3} | {:>9.3} {:>9.3} | {:>9.2}x | {:>10}",
            name,
            s.pct(0.5),
            s.pct(0.99),
            s.pct(0.999),
            f.pct(0.5),
            f.pct(0.99),
            s.pct(0.99) / f.pct(0.99),
            target
        );
    };
    row("2PC commit, 3 shards", &commit3, &f_commit3, "< 50");
    println!(
        "{:<24} {:>9.3} {:>9.3} {:>9.3}",
        "2PC commit, 2 shards",
        commit2.pct(0.5),
        commit2.pct(0.99),
        commit2.pct(0.999)
    );
    row("  prepare phase", &prepare3, &f_prepare3, "< 20");
    row("abort, 3 shards", &abort3, &f_abort3, "< 10");
    row("1-writer commit", &commit1, &f_commit1, "-");
    println!(
        "{:<24} {:>9.3} {:>9.3} {:>9.3}",
        "  decision",
        decision.pct(0.5),
        decision.pct(0.99),
        decision.pct(0.999)
    );

    proxy.stop().await;
    for s in &servers {
        let _ = s.stop("fast");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `setup` untimed, then times `stmt`.
async fn timed(client: &Client, setup: &str, stmt: &str) -> Duration {
    client.simple_query(setup).await.unwrap();
    let t = Instant::now();
    client.simple_query(stmt).await.unwrap();
    t.elapsed()
}

type Answer = Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>;

fn all3((a, b, c): (Answer, Answer, Answer)) {
    a.unwrap();
    b.unwrap();
    c.unwrap();
}
