//! The chaos bank: cross-shard transfers through two proxies over the same
//! shards, clients on both, while a fault loop SIGKILLs either proxy (the
//! second, once killed, stays dead until the end: its clients move to the
//! first, which must finish its in-doubt transactions; the first is restarted),
//! crashes and restarts shards (`pg_ctl -m immediate`) and pauses them
//! (SIGSTOP / SIGCONT). When the faults stop and recovery has run: the money is
//! all there, every transfer a client saw commit is present, none it saw fail
//! is, and no shard holds a prepared transaction.
//!
//! Bounded: `CHAOS_SECONDS` of faults (default 20, the CI form), 8 clients.
//! The long form is `CHAOS_SECONDS=300 cargo test --test integration chaos`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pieskieo::config::Config;
use pieskieo::router::{KeyValue, ShardMap};

use crate::harness::{
    config_text, connect, exec, insert_numbered, shard_pids, signal, value, Lcg, ProxyProcess,
    Servers, TABLES,
};

const ACCOUNTS: i64 = 40;
const START: i64 = 1_000;
const CLIENTS: usize = 8;

fn tables() -> String {
    format!("{TABLES}\n[[tables]]\nname = \"xfers\"\nkey = \"id\"\nkey_type = \"int8\"\n")
}

/// What one client knows about its transfers.
#[derive(Default)]
struct Seen {
    committed: Vec<i64>,
    failed: Vec<i64>,
    unknown: usize,
}

/// One transfer from `a` to `b`, recorded in `xfers` in the same
/// transaction. `Some(true)`: committed; `Some(false)`: certainly not;
/// `None`: the client cannot know (the connection went during COMMIT).
async fn transfer(port: u16, id: i64, a: i64, b: i64) -> Option<bool> {
    let url =
        format!("host=127.0.0.1 port={port} user=app password=secret dbname=app connect_timeout=3");
    let client = match tokio::time::timeout(Duration::from_secs(5), connect(&url)).await {
        Ok(Ok(c)) => c,
        _ => return Some(false),
    };
    let limit = Duration::from_secs(10);
    let body = format!(
        "BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = {a}; UPDATE accounts SET balance = balance + 1 WHERE id = {b}; INSERT INTO xfers (id, src, dst) VALUES ({id}, {a}, {b})"
    );
    match tokio::time::timeout(limit, client.simple_query(&body)).await {
        Ok(Ok(_)) => {}
        // Nothing was committed: COMMIT was never sent.
        _ => return Some(false),
    }
    match tokio::time::timeout(limit, client.simple_query("COMMIT")).await {
        Ok(Ok(_)) => Some(true),
        // 08007: the proxy could not learn the outcome; recovery decides it.
        Ok(Err(e))
            if e.code()
                == Some(&tokio_postgres::error::SqlState::TRANSACTION_RESOLUTION_UNKNOWN) =>
        {
            None
        }
        // PostgreSQL answered with an error: the transaction is over, not committed.
        Ok(Err(e)) if e.as_db_error().is_some() => Some(false),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_bank_keeps_every_commit_and_the_total() {
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let servers = Servers::start(3);
    let tables = tables();
    let map = ShardMap::from_config(
        &Config::parse(&config_text(&servers.ports(), &tables), "chaos.toml").unwrap(),
    );
    let mut proxy = ProxyProcess::start_with(&servers, &tables, "").await;
    // The second proxy: same shards, same configuration.
    let mut second = Some(ProxyProcess::start_with(&servers, &tables, "").await);
    {
        let c = connect(&proxy.url()).await.unwrap();
        exec(
            &c,
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE xfers (id bigint PRIMARY KEY, src bigint, dst bigint)",
        )
        .await;
        insert_numbered(&c, "accounts (id, balance)", ACCOUNTS, &format!("{START}")).await;
    }
    let ports = Arc::new([
        AtomicU16::new(proxy.port),
        AtomicU16::new(second.as_ref().map(|p| p.port).unwrap_or(proxy.port)),
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shard = |k: i64| map.tables["accounts"].shard_for(&KeyValue::Int(k), map.shards);
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let (ports, stop, seen) = (ports.clone(), stop.clone(), seen.clone());
        let pairs: Vec<(i64, i64)> = (1..=ACCOUNTS)
            .flat_map(|a| (1..=ACCOUNTS).map(move |b| (a, b)))
            .filter(|(a, b)| shard(*a) != shard(*b))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut r = Lcg(w as u64 + 1);
            let mut seq = 0i64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let id = w as i64 * 1_000_000 + seq;
                let (a, b) = pairs[r.next(pairs.len() as u64) as usize];
                let port = ports[w % 2].load(Ordering::Relaxed);
                let outcome = transfer(port, id, a, b).await;
                {
                    let mut s = seen.lock().unwrap();
                    match outcome {
                        Some(true) => s.committed.push(id),
                        Some(false) => s.failed.push(id),
                        None => s.unknown += 1,
                    }
                }
                if outcome != Some(true) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }

    // The fault loop.
    let mut r = Lcg(42);
    let (mut kills, mut crashes, mut pauses) = (0, 0, 0);
    let mut second_killed_at = None;
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(600 + r.next(900))).await;
        match r.next(3) {
            0 if second.is_some() && r.next(2) == 1 => {
                // For good: nobody restarts it; the first proxy finishes its work.
                drop(second.take());
                kills += 1;
                second_killed_at = Some(Instant::now());
                ports[1].store(ports[0].load(Ordering::Relaxed), Ordering::Relaxed);
            }
            0 => {
                drop(proxy);
                kills += 1;
                tokio::time::sleep(Duration::from_millis(200 + r.next(500))).await;
                proxy = ProxyProcess::start_with(&servers, &tables, "").await;
                ports[0].store(proxy.port, Ordering::Relaxed);
                if second.is_none() {
                    ports[1].store(proxy.port, Ordering::Relaxed);
                }
            }
            1 => {
                let s = &servers.servers[r.next(3) as usize];
                let _ = s.stop("immediate");
                crashes += 1;
                tokio::time::sleep(Duration::from_millis(300 + r.next(700))).await;
                s.start().unwrap();
            }
            _ => {
                let pids = shard_pids(&servers.servers[r.next(3) as usize]);
                signal(&pids, "STOP");
                pauses += 1;
                tokio::time::sleep(Duration::from_millis(500 + r.next(1500))).await;
                signal(&pids, "CONT");
            }
        }
    }
    // One proxy is left dead until the end, if the dice never chose it.
    if second.is_some() {
        drop(second.take());
        kills += 1;
        second_killed_at = Some(Instant::now());
        ports[1].store(ports[0].load(Ordering::Relaxed), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    // Recovery finishes what was in doubt.
    let mut shards = Vec::new();
    for i in 0..3 {
        shards.push(servers.connect(i).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut left = 0;
        for s in &shards {
            left += value(s, "SELECT count(*) FROM pg_prepared_xacts")
                .await
                .parse::<i64>()
                .unwrap();
        }
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} prepared transactions left after recovery"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut total = 0i64;
    let mut present = HashSet::new();
    for s in &shards {
        total += value(s, "SELECT coalesce(sum(balance), 0) FROM accounts")
            .await
            .parse::<i64>()
            .unwrap();
        for m in s.simple_query("SELECT id FROM xfers").await.unwrap() {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                present.insert(row.get(0).unwrap().parse::<i64>().unwrap());
            }
        }
    }
    let seen = seen.lock().unwrap();
    let lost: Vec<&i64> = seen
        .committed
        .iter()
        .filter(|id| !present.contains(id))
        .collect();
    let ghosts: Vec<&i64> = seen
        .failed
        .iter()
        .filter(|id| present.contains(id))
        .collect();
    println!(
        "chaos: the second proxy died for good {:?} before the end",
        second_killed_at.map(|t| t.elapsed())
    );
    println!(
        "chaos: {seconds} s of faults ({kills} proxy kills, {crashes} shard crashes, {pauses} shard pauses); transfers committed {}, failed {}, outcome unknown to the client {}; violations: total {} vs {}, lost commits {}, failed-but-present {}",
        seen.committed.len(),
        seen.failed.len(),
        seen.unknown,
        total,
        ACCOUNTS * START,
        lost.len(),
        ghosts.len()
    );
    assert_eq!(total, ACCOUNTS * START, "money was created or destroyed");
    assert!(
        lost.is_empty(),
        "transfers acknowledged as committed are missing: {lost:?}"
    );
    assert!(
        ghosts.is_empty(),
        "transfers reported failed were committed: {ghosts:?}"
    );
    assert!(
        seen.committed.len() >= 20,
        "too few transfers committed to mean anything: {}",
        seen.committed.len()
    );
    assert!(kills + crashes + pauses >= 5, "too few faults injected");
}
