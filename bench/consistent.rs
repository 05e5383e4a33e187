//! The price of `consistent_reads`: transfer TPS and reader latency with the
//! setting off and on, in the same run, over one proxy and over two
//! (writers on one, readers on the other).
//!
//! Starts 3 PostgreSQL shards (fsync on, as in production) and, per
//! configuration, fresh proxies over them: `WRITERS` clients move money
//! between accounts on different shards (two-phase commits) while
//! `READERS` clients sum every balance (`SELECT sum(balance)`, a merged
//! read of all three shards, autocommit) for `BENCH_SECONDS`. Prints TPS,
//! the readers' p50/p99, the fractured sums seen, and each figure's ratio
//! to the setting-off baseline with the same number of proxies.
//!
//! Run: `cargo bench --bench consistent` (BENCH_SECONDS, WRITERS, READERS).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pieskieo::cluster::{LocalServer, SUPERUSER_PASSWORD};
use pieskieo::config::Config;
use pieskieo::router::{KeyValue, ShardMap};
use tokio_postgres::{Client, NoTls};

#[path = "common.rs"]
mod common;

const SHARDS: usize = 3;
const PER_SHARD: usize = 10;
const START: i64 = 1_000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

async fn connect(url: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(f64::NAN)
}

fn config_text(servers: &[LocalServer], consistent: bool) -> String {
    let mut cfg = format!("listen = \"127.0.0.1:0\"\nnode_id = \"bench\"\nconsistent_reads = {consistent}\n[[users]]\nname = \"app\"\npassword = \"app\"\n[[tables]]\nname = \"accounts\"\nkey = \"id\"\nkey_type = \"int8\"\n");
    for (i, s) in servers.iter().enumerate() {
        cfg.push_str(&format!(
            "[[shards]]\nid = {i}\nport = {}\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"{SUPERUSER_PASSWORD}\"\npool_size = 20\n",
            s.port
        ));
    }
    cfg
}

fn url(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=app password=app dbname=app")
}

/// One configuration's figures.
struct Run {
    tps: f64,
    p50: f64,
    p99: f64,
    reads: usize,
    fractured: usize,
}

async fn run(
    servers: &[LocalServer],
    keys: &Arc<Vec<Vec<i64>>>,
    consistent: bool,
    proxies: usize,
    secs: u64,
    writers: usize,
    readers: usize,
) -> Run {
    let mut running = Vec::new();
    for _ in 0..proxies {
        let config = Config::parse(&config_text(servers, consistent), "bench.toml").unwrap();
        running.push(pieskieo::serve(config).await.unwrap());
    }
    let write_port = running[0].addr.port();
    let read_port = running[proxies - 1].addr.port();
    let total = START * (SHARDS * PER_SHARD) as i64;
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let fractured = Arc::new(AtomicUsize::new(0));
    // Connect everyone first: logins are not what is measured.
    let mut wclients = Vec::new();
    for _ in 0..writers {
        wclients.push(connect(&url(write_port)).await);
    }
    let mut rclients = Vec::new();
    for _ in 0..readers {
        rclients.push(connect(&url(read_port)).await);
    }
    let mut tasks = Vec::new();
    for (w, c) in wclients.into_iter().enumerate() {
        let (stop, committed, keys) = (stop.clone(), committed.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut x = w as u64 * 2654435761 + 1;
            let mut next = |n: u64| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % n) as usize
            };
            while !stop.load(Ordering::Relaxed) {
                let sa = next(SHARDS as u64);
                let sb = (sa + 1 + next(SHARDS as u64 - 1)) % SHARDS;
                let a = keys[sa][next(PER_SHARD as u64)];
                let b = keys[sb][next(PER_SHARD as u64)];
                let (first, second, amount) = if a < b { (a, b, -1) } else { (b, a, 1) };
                let sql = format!(
                    "BEGIN; UPDATE accounts SET balance = balance + ({amount}) WHERE id = {first}; UPDATE accounts SET balance = balance - ({amount}) WHERE id = {second}; COMMIT"
                );
                if c.simple_query(&sql).await.is_ok() {
                    committed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for c in rclients {
        let (stop, latencies, fractured) = (stop.clone(), latencies.clone(), fractured.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let Ok(msgs) = c.simple_query("SELECT sum(balance) FROM accounts").await else {
                    continue;
                };
                mine.push(t.elapsed());
                let sum: i64 = msgs
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            r.get(0).and_then(|v| v.parse::<i64>().ok())
                        }
                        _ => None,
                    })
                    .sum();
                if sum != total {
                    fractured.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies.lock().unwrap().extend(mine);
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    for p in running {
        p.stop().await;
    }
    let mut l = std::mem::take(&mut *latencies.lock().unwrap());
    Run {
        tps: committed.load(Ordering::Relaxed) as f64 / elapsed,
        p50: pct(&mut l, 0.5),
        p99: pct(&mut l, 0.99),
        reads: l.len(),
        fractured: fractured.load(Ordering::Relaxed),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env("BENCH_SECONDS", 10);
    let writers = env("WRITERS", 8) as usize;
    let readers = env("READERS", 2) as usize;
    let (dir, servers) = common::start_servers(SHARDS);
    let config = Config::parse(&config_text(&servers, false), "bench.toml").unwrap();
    let map = ShardMap::from_config(&config);
    let setup = pieskieo::serve(config).await.unwrap();
    let client = connect(&url(setup.addr.port())).await;
    client
        .simple_query("CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)")
        .await
        .unwrap();
    let mut keys = vec![Vec::new(); SHARDS];
    for k in 1..100_000i64 {
        let s = map.tables["accounts"]
            .shard_for(&KeyValue::Int(k), map.shards)
            .unwrap()
            .0 as usize;
        if keys[s].len() < PER_SHARD {
            keys[s].push(k);
            client
                .simple_query(&format!(
                    "INSERT INTO accounts (id, balance) VALUES ({k}, {START})"
                ))
                .await
                .unwrap();
        }
        if keys.iter().all(|v| v.len() == PER_SHARD) {
            break;
        }
    }
    drop(client);
    setup.stop().await;
    let keys = Arc::new(keys);

    println!(
        "consistent_reads: {SHARDS} shards (fsync on), {writers} transfer clients, {readers} sum readers, {secs} s per row"
    );
    println!();
    println!("| proxies | consistent_reads | transfers/s | vs off | sum p50 ms | vs off | sum p99 ms | vs off | sums read | fractured |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for proxies in [1, 2] {
        let off = run(&servers, &keys, false, proxies, secs, writers, readers).await;
        let on = run(&servers, &keys, true, proxies, secs, writers, readers).await;
        for (name, r) in [("off", &off), ("on", &on)] {
            println!(
                "| {proxies} | {name} | {:.0} | {:.2}× | {:.3} | {:.2}× | {:.3} | {:.2}× | {} | {} |",
                r.tps,
                r.tps / off.tps,
                r.p50,
                r.p50 / off.p50,
                r.p99,
                r.p99 / off.p99,
                r.reads,
                r.fractured
            );
        }
    }
    for s in &servers {
        let _ = s.stop("fast");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
