//! `consistent_reads`: the bank. Accounts on 3 shards, clients moving money
//! between accounts on different shards (two-phase commits), readers summing
//! every balance — in autocommit (a merged `sum`, simple protocol; every row,
//! extended protocol), in a READ COMMITTED block, and in REPEATABLE READ
//! blocks whose first statement reads one shard and whose second reads the
//! rest (simple and extended). A sum that is not the total is a fractured
//! read. Without the setting they happen (the test shows it, so it can
//! fail); with it, none — on one proxy, across two, with commits paused at
//! every phase, with a shard crashing, and after a proxy dies mid-commit.
//! The lock shard down gives 08006 and changes nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pieskieo::router::{KeyValue, ShardMap};
use tokio_postgres::{Client, IsolationLevel, SimpleQueryMessage};

use crate::bank::{
    config, config_text, paused_transfer, proxy, proxy_text, transfer_sql, until_prepared_on, url,
    SHARDS, START,
};
use crate::harness::{
    connect, error_message, exec, prepared, rows, sqlstate, value, Lcg, ProxyProcess, Servers,
    TABLES,
};

const PER_SHARD: usize = 4;
const WRITERS: usize = 6;

fn tables(consistent: bool) -> String {
    format!("consistent_reads = {consistent}\n{TABLES}")
}

/// A fresh bank: `SHARDS` servers, a proxy with `consistent_reads` as
/// given (`txn_extra` lines in `[txn]`), and the accounts opened through it.
async fn open_bank(consistent: bool, txn_extra: &str) -> (Servers, pieskieo::Proxy, Arc<Bank>) {
    let servers = Servers::start(SHARDS);
    let p = proxy(&servers, consistent, txn_extra).await;
    let bank = Bank::open(&servers, p.addr.port()).await;
    (servers, p, bank)
}

/// The accounts, per shard, and the money in all of them.
struct Bank {
    keys: Vec<Vec<i64>>,
    total: i64,
}

impl Bank {
    /// Creates `accounts` through the proxy at `port`, `PER_SHARD` accounts
    /// on each shard holding `START` each.
    async fn open(servers: &Servers, port: u16) -> Arc<Bank> {
        let map = ShardMap::from_config(&config(servers, false, ""));
        let mut keys = vec![Vec::new(); SHARDS];
        for k in 1..100_000i64 {
            let s = map.tables["accounts"]
                .shard_for(&KeyValue::Int(k), map.shards)
                .unwrap()
                .0 as usize;
            if keys[s].len() < PER_SHARD {
                keys[s].push(k);
            }
            if keys.iter().all(|v| v.len() == PER_SHARD) {
                break;
            }
        }
        let c = connect(&url(port)).await.unwrap();
        exec(
            &c,
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)",
        )
        .await;
        for k in keys.iter().flatten() {
            exec(
                &c,
                &format!("INSERT INTO accounts (id, balance) VALUES ({k}, {START})"),
            )
            .await;
        }
        Arc::new(Bank {
            total: START * (SHARDS * PER_SHARD) as i64,
            keys,
        })
    }

    /// The total read on each shard directly (after the load).
    async fn shard_total(&self, servers: &Servers) -> i64 {
        let mut sum = 0;
        for i in 0..SHARDS {
            let c = servers.connect(i).await;
            sum += value(&c, "SELECT coalesce(sum(balance), 0) FROM accounts")
                .await
                .parse::<i64>()
                .unwrap();
        }
        sum
    }
}

/// Moves money between accounts on different shards until `stop`; rows
/// are updated in key order, so transfers never deadlock. Returns how
/// many committed.
async fn transfers(
    port: u16,
    bank: Arc<Bank>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicUsize>,
    seed: u64,
) -> usize {
    let mut rng = Lcg(seed);
    let mut client = connect(&url(port)).await.ok();
    ready.fetch_add(1, Ordering::Relaxed);
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) {
        let c = match &client {
            Some(c) if !c.is_closed() => c,
            _ => {
                client = tokio::time::timeout(Duration::from_secs(5), connect(&url(port)))
                    .await
                    .ok()
                    .and_then(Result::ok);
                if client.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let sa = rng.next(SHARDS as u64) as usize;
        let sb = (sa + 1 + rng.next(SHARDS as u64 - 1) as usize) % SHARDS;
        let a = bank.keys[sa][rng.next(PER_SHARD as u64) as usize];
        let b = bank.keys[sb][rng.next(PER_SHARD as u64) as usize];
        let amount = 1 + rng.next(50) as i64;
        let (first, second) = if a < b {
            ((a, -amount), (b, amount))
        } else {
            ((b, amount), (a, -amount))
        };
        let sql = format!(
            "BEGIN; UPDATE accounts SET balance = balance + ({}) WHERE id = {}; UPDATE accounts SET balance = balance + ({}) WHERE id = {}; COMMIT",
            first.1, first.0, second.1, second.0
        );
        match tokio::time::timeout(Duration::from_secs(20), c.simple_query(&sql)).await {
            Ok(Ok(_)) => done += 1,
            Ok(Err(e)) => {
                if std::env::var("PIESKIEO_CONSISTENT_VERBOSE").is_ok() {
                    eprintln!("transfer: {e}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(_) => client = None,
        }
    }
    done
}

/// How a reader reads the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `SELECT sum(balance)`, a merge, simple protocol, autocommit.
    Sum,
    /// Every balance, extended protocol (tokio-postgres), autocommit.
    Rows,
    /// The sum in a READ COMMITTED block (simple protocol).
    ReadCommitted,
    /// REPEATABLE READ: one shard's account first, then the rest (simple).
    RepeatableSimple,
    /// The same through the extended protocol.
    RepeatableExtended,
}

const MODES: [Mode; 5] = [
    Mode::Sum,
    Mode::Rows,
    Mode::ReadCommitted,
    Mode::RepeatableSimple,
    Mode::RepeatableExtended,
];

fn simple_values(msgs: &[SimpleQueryMessage]) -> Vec<i64> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse::<i64>().unwrap()),
            _ => None,
        })
        .collect()
}

async fn read_total(c: &mut Client, bank: &Bank, mode: Mode) -> Result<i64, tokio_postgres::Error> {
    let first = bank.keys[0][0];
    Ok(match mode {
        Mode::Sum => simple_values(&c.simple_query("SELECT sum(balance) FROM accounts").await?)
            .iter()
            .sum(),
        Mode::Rows => c
            .query("SELECT balance FROM accounts", &[])
            .await?
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .sum(),
        Mode::ReadCommitted => simple_values(
            &c.simple_query("BEGIN; SELECT sum(balance) FROM accounts; COMMIT")
                .await?,
        )
        .iter()
        .sum(),
        Mode::RepeatableSimple => simple_values(
            &c.simple_query(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT balance FROM accounts WHERE id = {first}; SELECT pg_sleep(0.002); SELECT sum(balance) FROM accounts WHERE id <> {first}; COMMIT"
            ))
            .await?
            .into_iter()
            .filter(|m| !matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("")))
            .collect::<Vec<_>>(),
        )
        .iter()
        .sum(),
        Mode::RepeatableExtended => {
            let t = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .start()
                .await?;
            let one: i64 = t
                .query_one("SELECT balance FROM accounts WHERE id = $1", &[&first])
                .await?
                .get(0);
            tokio::time::sleep(Duration::from_millis(2)).await;
            let rest: i64 = t
                .query("SELECT balance FROM accounts WHERE id <> $1", &[&first])
                .await?
                .iter()
                .map(|r| r.get::<_, i64>(0))
                .sum();
            t.commit().await?;
            one + rest
        }
    })
}

/// What the readers saw, per mode.
#[derive(Default)]
struct Reads {
    ok: [AtomicUsize; 5],
    fractured: [AtomicUsize; 5],
    errors: AtomicUsize,
}

impl Reads {
    fn total_fractured(&self) -> usize {
        self.fractured
            .iter()
            .map(|f| f.load(Ordering::Relaxed))
            .sum()
    }

    fn total_ok(&self) -> usize {
        self.ok.iter().map(|f| f.load(Ordering::Relaxed)).sum()
    }

    fn summary(&self) -> String {
        MODES
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!(
                    "{m:?}: {} right, {} fractured",
                    self.ok[i].load(Ordering::Relaxed),
                    self.fractured[i].load(Ordering::Relaxed)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
            + &format!("; {} errors", self.errors.load(Ordering::Relaxed))
    }
}

/// Reads the total in `mode` until `stop`.
async fn reader(
    port: u16,
    bank: Arc<Bank>,
    mode: Mode,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicUsize>,
    reads: Arc<Reads>,
) {
    let i = MODES.iter().position(|m| *m == mode).unwrap();
    let mut client = connect(&url(port)).await.ok();
    ready.fetch_add(1, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        let c = match &mut client {
            Some(c) if !c.is_closed() => c,
            _ => {
                client = tokio::time::timeout(Duration::from_secs(5), connect(&url(port)))
                    .await
                    .ok()
                    .and_then(Result::ok);
                if client.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        match tokio::time::timeout(Duration::from_secs(20), read_total(c, &bank, mode)).await {
            Ok(Ok(sum)) if sum == bank.total => {
                reads.ok[i].fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(sum)) => {
                eprintln!("{mode:?}: fractured read {sum} != {}", bank.total);
                reads.fractured[i].fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                reads.errors.fetch_add(1, Ordering::Relaxed);
                if c.is_closed() {
                    client = None;
                } else {
                    // A failed block: end it.
                    let _ = c.simple_query("ROLLBACK").await;
                }
                if reads.errors.load(Ordering::Relaxed) % 50 == 1 {
                    eprintln!("{mode:?}: {e}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => client = None,
        }
    }
}

/// A bank load: writers through `write_port`, one reader per mode through
/// `read_port`, until `done` says so (given the reads so far and the time).
async fn load(
    write_port: u16,
    read_port: u16,
    bank: &Arc<Bank>,
    mut done: impl FnMut(&Reads, Duration) -> bool,
) -> (Arc<Reads>, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(Reads::default());
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        writers.push(tokio::spawn(transfers(
            write_port,
            bank.clone(),
            stop.clone(),
            ready.clone(),
            w as u64 * 7919 + 1,
        )));
    }
    let mut readers = Vec::new();
    for mode in MODES {
        readers.push(tokio::spawn(reader(
            read_port,
            bank.clone(),
            mode,
            stop.clone(),
            ready.clone(),
            reads.clone(),
        )));
    }
    // The clock starts once every client is in (logins are slow in a
    // debug build on a busy machine).
    let t = Instant::now();
    while ready.load(Ordering::Relaxed) < WRITERS + MODES.len()
        && t.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    while !done(&reads, started.elapsed()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for w in writers {
        committed += w.await.unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
    (reads, committed)
}

/// Waits until no shard holds a prepared transaction (recovery finished).
async fn settled(servers: &Servers) {
    for _ in 0..200 {
        let mut left = 0;
        for i in 0..SHARDS {
            if let Ok(c) = connect(&servers.url(i)).await {
                left += prepared(&c).await;
            } else {
                left += 1;
            }
        }
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("prepared transactions left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_setting_reads_are_fractured() {
    let (servers, p, bank) = open_bank(false, "").await;
    let port = p.addr.port();
    // Until both an autocommit and a REPEATABLE READ read were fractured,
    // or a generous limit.
    let (reads, committed) = load(port, port, &bank, |r, t| {
        let f = |m: Mode| {
            r.fractured[MODES.iter().position(|x| *x == m).unwrap()].load(Ordering::Relaxed)
        };
        let autocommit = f(Mode::Sum) + f(Mode::Rows);
        let repeatable = f(Mode::RepeatableSimple) + f(Mode::RepeatableExtended);
        (autocommit > 0 && repeatable > 0) || t > Duration::from_secs(60)
    })
    .await;
    eprintln!("off: {committed} transfers; {}", reads.summary());
    let f = |m: Mode| {
        reads.fractured[MODES.iter().position(|x| *x == m).unwrap()].load(Ordering::Relaxed)
    };
    assert!(
        f(Mode::Sum) + f(Mode::Rows) > 0,
        "no fractured autocommit read: the load is too weak to test anything"
    );
    assert!(
        f(Mode::RepeatableSimple) + f(Mode::RepeatableExtended) > 0,
        "no fractured REPEATABLE READ read: the load is too weak to test anything"
    );
    assert_eq!(bank.shard_total(&servers).await, bank.total);
}

fn seconds(default: u64) -> Duration {
    Duration::from_secs(
        std::env::var("PIESKIEO_CONSISTENT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

/// A load has run long enough: `limit`, and every mode has read a few
/// sums (a busy machine is given up to four times as long for that).
fn enough(reads: &Reads, t: Duration, limit: Duration) -> bool {
    let each = (0..MODES.len()).all(|i| reads.ok[i].load(Ordering::Relaxed) > 5);
    (t > limit && each) || t > limit * 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_setting_no_read_is_fractured_on_one_proxy() {
    let (servers, p, bank) = open_bank(true, "").await;
    let port = p.addr.port();
    let limit = seconds(8);
    let (reads, committed) = load(port, port, &bank, |r, t| enough(r, t, limit)).await;
    eprintln!("on: {committed} transfers; {}", reads.summary());
    assert_eq!(reads.total_fractured(), 0, "{}", reads.summary());
    assert!(committed > 20, "only {committed} transfers");
    for (i, m) in MODES.iter().enumerate() {
        assert!(
            reads.ok[i].load(Ordering::Relaxed) > 5,
            "{m:?}: {}",
            reads.summary()
        );
    }
    assert_eq!(bank.shard_total(&servers).await, bank.total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_setting_no_read_is_fractured_across_two_proxies() {
    let servers = Servers::start(SHARDS);
    let writer = proxy(&servers, true, "").await;
    let reader = proxy(&servers, true, "").await;
    let bank = Bank::open(&servers, writer.addr.port()).await;
    let limit = seconds(8);
    let (reads, committed) = load(writer.addr.port(), reader.addr.port(), &bank, |r, t| {
        enough(r, t, limit)
    })
    .await;
    eprintln!("two proxies: {committed} transfers; {}", reads.summary());
    assert_eq!(reads.total_fractured(), 0, "{}", reads.summary());
    assert!(
        committed > 20,
        "only {committed} transfers; {}",
        reads.summary()
    );
    assert!(reads.total_ok() > 10, "{}", reads.summary());
    assert_eq!(bank.shard_total(&servers).await, bank.total);
}

/// Readers race commits stopped at each phase of 2PC: readers on the
/// committing proxy and on another never see half a transfer. The same
/// race without the setting, stopped after the decision, does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_racing_commits_paused_at_every_phase() {
    let servers = Servers::start(SHARDS);
    let plain = proxy(&servers, true, "").await;
    let bank = Bank::open(&servers, plain.addr.port()).await;
    for point in [
        "after_prepare",
        "after_decision_insert",
        "after_decision",
        "after_first_commit",
    ] {
        let extra = format!("test_failpoint = \"{point}:pause=150\"");
        let paused = proxy(&servers, true, &extra).await;
        let other = proxy(&servers, true, "").await;
        let (on_paused, committed) = load(paused.addr.port(), paused.addr.port(), &bank, |_, t| {
            t > Duration::from_millis(1500)
        })
        .await;
        let (on_other, _) = load(paused.addr.port(), other.addr.port(), &bank, |_, t| {
            t > Duration::from_millis(1500)
        })
        .await;
        eprintln!(
            "{point}: {committed} transfers; same proxy: {}; other proxy: {}",
            on_paused.summary(),
            on_other.summary()
        );
        assert_eq!(
            on_paused.total_fractured(),
            0,
            "{point}: {}",
            on_paused.summary()
        );
        assert_eq!(
            on_other.total_fractured(),
            0,
            "{point}: {}",
            on_other.summary()
        );
        assert!(committed > 0, "{point}");
        assert!(
            on_paused.total_ok() > 0 && on_other.total_ok() > 0,
            "{point}"
        );
    }
    // Without the setting, a commit stopped between C's COMMIT and the
    // COMMIT PREPAREDs is seen half done.
    let servers_off = Servers::start(SHARDS);
    let plain = proxy(&servers_off, false, "").await;
    let bank = Bank::open(&servers_off, plain.addr.port()).await;
    let paused = proxy(
        &servers_off,
        false,
        "test_failpoint = \"after_decision:pause=150\"",
    )
    .await;
    let (reads, _) = load(paused.addr.port(), plain.addr.port(), &bank, |r, t| {
        r.total_fractured() > 0 || t > Duration::from_secs(20)
    })
    .await;
    eprintln!("off, after_decision: {}", reads.summary());
    assert!(reads.total_fractured() > 0, "the race is not reached");
    assert_eq!(bank.shard_total(&servers).await, bank.total);
}

/// A shard crashes (immediate stop) in the middle of the load and comes
/// back: readers get errors meanwhile, never a wrong sum; nothing is left
/// prepared and the money is all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_crash_gives_errors_never_a_wrong_sum() {
    let (servers, p, bank) = open_bank(true, "").await;
    let port = p.addr.port();
    let mut crashed = false;
    let mut restarted = false;
    let (reads, committed) = load(port, port, &bank, |_, t| {
        if t > Duration::from_secs(2) && !crashed {
            servers.servers[2].stop("immediate").unwrap();
            crashed = true;
        }
        if t > Duration::from_secs(4) && !restarted {
            servers.servers[2].start().unwrap();
            restarted = true;
        }
        t > Duration::from_secs(8)
    })
    .await;
    eprintln!("shard crash: {committed} transfers; {}", reads.summary());
    assert_eq!(reads.total_fractured(), 0, "{}", reads.summary());
    assert!(
        reads.errors.load(Ordering::Relaxed) > 0,
        "the crash was not seen"
    );
    assert!(reads.total_ok() > 10, "{}", reads.summary());
    settled(&servers).await;
    assert_eq!(bank.shard_total(&servers).await, bank.total);
}

/// The lock shard (the default shard, 0) down: a read of shards 1 and 2
/// and a transfer between them get 08006 naming shard 0, and nothing
/// changed; reads of one shard go on; when it is back, so is everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_shard_down_gives_08006_and_changes_nothing() {
    let (servers, p, bank) = open_bank(true, "control_timeout_ms = 1500").await;
    let port = p.addr.port();
    let (a, b) = (bank.keys[1][0], bank.keys[2][0]);
    let c = connect(&url(port)).await.unwrap();
    servers.servers[0].stop("immediate").unwrap();

    let read = format!("SELECT balance FROM accounts WHERE id IN ({a}, {b})");
    assert_eq!(sqlstate(&c, &read).await, "08006");
    let m = error_message(&c, &read).await;
    assert!(m.contains("shard 0"), "{m}");
    // Through the extended protocol too.
    let e = c
        .query(
            "SELECT balance FROM accounts WHERE id = $1 OR id = $2",
            &[&a, &b],
        )
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("an error from the proxy");
    assert_eq!(db.code().code(), "08006");
    assert!(db.message().contains("shard 0"), "{}", db.message());

    let transfer = transfer_sql(a, b);
    let e = c.simple_query(&transfer).await.unwrap_err();
    let db = e.as_db_error().expect("an error from the proxy");
    assert_eq!(db.code().code(), "08006", "{}", db.message());
    assert!(db.message().contains("shard 0"), "{}", db.message());
    // Nothing half done: the balances are as they were, nothing prepared.
    for (shard, key) in [(1, a), (2, b)] {
        let s = servers.connect(shard).await;
        assert_eq!(
            value(
                &s,
                &format!("SELECT balance FROM accounts WHERE id = {key}")
            )
            .await,
            START.to_string()
        );
        assert_eq!(prepared(&s).await, 0);
    }
    // One shard needs no fence.
    assert_eq!(
        value(&c, &format!("SELECT balance FROM accounts WHERE id = {a}")).await,
        START.to_string()
    );

    servers.servers[0].start().unwrap();
    let mut back = false;
    for _ in 0..100 {
        if c.simple_query(&transfer).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "transfers work again once the lock shard is back");
    let sum: i64 = simple_values(&exec(&c, &read).await).iter().sum();
    assert_eq!(sum, 2 * START);
}

/// A proxy SIGKILLed while it holds the commit lock (paused after the
/// decision): the other proxy's readers wait meanwhile instead of seeing
/// half; the lock dies with the process; once recovery has finished the
/// transfer, sums are right again and nothing is left prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_mid_commit_releases_the_lock() {
    let servers = Servers::start(SHARDS);
    let survivor = proxy(&servers, true, "").await;
    let bank = Bank::open(&servers, survivor.addr.port()).await;
    let doomed = ProxyProcess::start_with(
        &servers,
        &tables(true),
        "test_failpoint = \"after_decision:pause=30000\"",
    )
    .await;
    let (a, b) = (bank.keys[0][0], bank.keys[1][0]);
    let transfer = transfer_sql(a, b);
    let w = connect(&doomed.url()).await.unwrap();
    let stuck = tokio::spawn(async move { w.simple_query(&transfer).await.map(|_| ()) });
    // The transfer is decided and stopped before its COMMIT PREPARED,
    // holding the lock: readers on the survivor wait, never see half.
    // (Waited for, not slept: on a loaded machine the other process may take
    // more than a second to get there.)
    until_prepared_on(&servers, &[0, 1], Duration::from_millis(300)).await;
    let mut r = connect(&url(survivor.addr.port())).await.unwrap();
    let waiting = tokio::time::timeout(
        Duration::from_millis(1000),
        read_total(&mut r, &bank, Mode::Sum),
    )
    .await;
    assert!(
        waiting.is_err(),
        "a reader got past a commit in progress: {waiting:?}"
    );
    doomed.signal("KILL");
    assert!(
        stuck.await.unwrap().is_err(),
        "its client lost the connection"
    );
    // The lock went with the process: readers go on at once. Recovery
    // finishes the transfer after its grace period.
    let mut r = connect(&url(survivor.addr.port())).await.unwrap();
    let t = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(3),
        read_total(&mut r, &bank, Mode::Rows),
    )
    .await
    .expect("the lock died with the proxy")
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    settled(&servers).await;
    let (reads, committed) = load(survivor.addr.port(), survivor.addr.port(), &bank, |_, t| {
        t > Duration::from_secs(3)
    })
    .await;
    eprintln!("after the kill: {committed} transfers; {}", reads.summary());
    assert_eq!(reads.total_fractured(), 0, "{}", reads.summary());
    assert!(reads.total_ok() > 5);
    assert_eq!(bank.shard_total(&servers).await, bank.total);
}

/// `consistent_reads` changes only with a restart: a reload that changes
/// it is refused with a warning naming it, and the proxy keeps fencing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_change_the_setting() {
    let servers = Servers::start(SHARDS);
    let p = ProxyProcess::start_with(&servers, &tables(true), "").await;
    let text = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        text.replace("consistent_reads = true", "consistent_reads = false"),
    )
    .unwrap();
    p.signal("HUP");
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&p.log).unwrap_or_default();
        if log.contains("reload refused") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        log.contains("reload refused") && log.contains("consistent_reads"),
        "{log}"
    );
    // Still on: with the lock shard down, a read of two shards says so.
    let bank = Bank::open(&servers, p.port).await;
    let c = connect(&p.url()).await.unwrap();
    servers.servers[0].stop("immediate").unwrap();
    let (a, b) = (bank.keys[1][0], bank.keys[2][0]);
    let read = format!("SELECT balance FROM accounts WHERE id IN ({a}, {b})");
    assert_eq!(sqlstate(&c, &read).await, "08006");
}

/// A REPEATABLE READ block whose first statement is a SHOW (which joins a
/// shard but, as in PostgreSQL, takes no snapshot: the deadlock tag there
/// is taken before its `BEGIN`) takes its snapshot at its first query,
/// everywhere at once: no shard holds one after the `SHOW`, every shard
/// does after a `SELECT 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeatable_read_block_joins_every_shard_at_its_first_statement() {
    let servers = Servers::start(SHARDS);
    let p = proxy(&servers, true, "").await;
    let c = connect(&url(p.addr.port())).await.unwrap();
    exec(&c, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
    exec(&c, "SHOW application_name").await;
    let after_show = rv18_joined(&servers).await;
    exec(&c, "SELECT 1").await;
    let after_select = rv18_joined(&servers).await;
    exec(&c, "COMMIT").await;
    assert_eq!(after_show, 0, "a SHOW takes no snapshot");
    assert_eq!(
        after_select, SHARDS as i64,
        "every shard holds the block's snapshot"
    );
}

/// Runs `q` and, 300 ms into it, cancels it with `token`: its SQLSTATE
/// (`None`: it succeeded) and how long it took.
async fn cancelled<T>(
    token: &tokio_postgres::CancelToken,
    q: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> (Option<String>, Duration) {
    let t = Instant::now();
    let run = async {
        let r = tokio::time::timeout(Duration::from_secs(10), q).await;
        (r, t.elapsed())
    };
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    };
    let ((r, took), ()) = tokio::join!(run, cancel);
    let code = match r.expect("the cancelled statement never ended") {
        Ok(_) => None,
        Err(e) => Some(
            e.code()
                .map_or_else(|| e.to_string(), |c| c.code().to_string()),
        ),
    };
    (code, took)
}

/// A reader waiting in the fence behind a paused commit is cancelled by
/// its client, and ends as PostgreSQL ends a cancelled statement: `57014`
/// at once, in autocommit (the session goes on), in an explicit block (the
/// block is aborted: `25P02` until `ROLLBACK`) and through the extended
/// protocol. The fence keeps nothing of the cancelled waits: once the
/// paused commit is through, a 2PC commit and a sum go through the same
/// proxy, and the sum is the bank's total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_a_readers_wait_in_the_fence() {
    let servers = Servers::start(SHARDS);
    let p = proxy(
        &servers,
        true,
        "recovery_grace_ms = 60000\ntest_failpoint = \"after_decision:pause=4000\"",
    )
    .await;
    let port = p.addr.port();
    let bank = Bank::open(&servers, port).await;
    let (a, b) = (bank.keys[1][0], bank.keys[2][0]);
    let stuck = paused_transfer(&servers, port, a, b).await;
    let r = connect(&url(port)).await.unwrap();
    let token = r.cancel_token();
    // (A merge: `::bigint` would make it a two-stage plan, see
    // a_two_stage_read_in_the_extended_protocol_is_fenced.)
    let sum = "SELECT sum(balance) FROM accounts";

    let (code, took) = cancelled(&token, r.simple_query(sum)).await;
    assert_eq!(code.as_deref(), Some("57014"), "autocommit, after {took:?}");
    assert!(took < Duration::from_millis(1500), "autocommit: {took:?}");
    assert_eq!(value(&r, "SELECT 1").await, "1", "the session goes on");

    exec(&r, "BEGIN").await;
    let (code, took) = cancelled(&token, r.simple_query(sum)).await;
    assert_eq!(code.as_deref(), Some("57014"), "in a block, after {took:?}");
    assert!(took < Duration::from_millis(1500), "in a block: {took:?}");
    assert_eq!(
        sqlstate(&r, "SELECT 1").await,
        "25P02",
        "the block is aborted"
    );
    exec(&r, "ROLLBACK").await;

    let (code, took) = cancelled(&token, r.query(sum, &[])).await;
    assert_eq!(code.as_deref(), Some("57014"), "extended, after {took:?}");
    assert!(took < Duration::from_millis(1500), "extended: {took:?}");
    assert_eq!(value(&r, "SELECT 1").await, "1", "the session goes on");

    exec(&r, "BEGIN").await;
    let (code, took) = cancelled(&token, r.query(sum, &[])).await;
    assert_eq!(
        code.as_deref(),
        Some("57014"),
        "extended in a block, after {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "extended in a block: {took:?}"
    );
    let code = r.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(
        code.code().map(|c| c.code()),
        Some("25P02"),
        "the block is aborted"
    );
    exec(&r, "ROLLBACK").await;

    assert!(
        !stuck.is_finished(),
        "the reads waited behind the paused commit"
    );
    stuck.await.unwrap().unwrap();
    let t = connect(&url(port)).await.unwrap();
    let again =
        tokio::time::timeout(Duration::from_secs(15), t.simple_query(&transfer_sql(b, a))).await;
    assert!(matches!(again, Ok(Ok(_))), "a later 2PC commit: {again:?}");
    let total = tokio::time::timeout(Duration::from_secs(5), r.simple_query(sum))
        .await
        .expect("a later sum waits for ever")
        .unwrap();
    assert_eq!(simple_values(&total), [bank.total]);
}

// ---- Known defects of consistent_reads (issue 18) ----
//
// Reproductions written by an adversarial review: each asserts what should
// happen and fails today, so each is ignored until its defect is fixed (the
// README lists them under "Experimental"); three are probes that pass. Those
// of the isolation level's spellings pass since it was fixed and run with the
// rest; the lock connection killed mid-commit stays ignored (a documented
// limit). Run one with
// `cargo test --test integration -- --ignored consistent::rv18_<name> --nocapture`.

/// A multi-shard statement that waits for a lock held by an open
/// distributed transaction holds the fence's snapshot class (no first
/// answer yet) while that transaction's COMMIT waits for the fence; the
/// fence's watcher must untangle it. The transaction runs on a second proxy
/// when `two_proxies`. Whether the COMMIT went through, whether a third
/// reader got an answer, and the stuck reader's outcome (SQLSTATE on error).
async fn lock_wait(
    consistent: bool,
    reader_sql: &str,
    two_proxies: bool,
) -> (bool, bool, Result<(), String>) {
    let (servers, p, bank) = open_bank(consistent, "").await;
    let port = p.addr.port();
    let (a, b) = (bank.keys[0][0], bank.keys[1][0]);
    let other = if two_proxies {
        Some(proxy(&servers, consistent, "").await)
    } else {
        None
    };
    let tport = other.as_ref().map_or(port, |o| o.addr.port());
    let t = connect(&url(tport)).await.unwrap();
    exec(&t, "BEGIN").await;
    exec(
        &t,
        &format!("UPDATE accounts SET balance = balance - 10 WHERE id = {a}"),
    )
    .await;
    exec(
        &t,
        &format!("UPDATE accounts SET balance = balance + 10 WHERE id = {b}"),
    )
    .await;
    let r = connect(&url(port)).await.unwrap();
    let sql = reader_sql
        .replace("{a}", &a.to_string())
        .replace("{b}", &b.to_string());
    let reader = tokio::spawn(async move {
        r.simple_query(&sql)
            .await
            .map(|_| ())
            .map_err(|e| e.code().map_or(e.to_string(), |c| c.code().to_string()))
    });
    crate::bank::until_lock_waiter(&servers).await;
    let commit = tokio::time::timeout(Duration::from_secs(8), t.simple_query("COMMIT")).await;
    let committed = matches!(commit, Ok(Ok(_)));
    eprintln!("rv18 lock wait ({consistent}, {reader_sql}): commit = {commit:?}");
    let rd = tokio::time::timeout(Duration::from_secs(3), reader).await;
    eprintln!("rv18 reader: {rd:?}");
    let rd = match rd {
        Ok(Ok(r)) => r,
        other => Err(format!("no answer: {other:?}")),
    };
    // Others stuck too?
    let o = connect(&url(port)).await.unwrap();
    let other = tokio::time::timeout(
        Duration::from_secs(3),
        o.simple_query("SELECT sum(balance) FROM accounts"),
    )
    .await;
    eprintln!("rv18 a third reader: {other:?}");
    settled(&servers).await;
    assert_eq!(bank.shard_total(&servers).await, bank.total);
    (committed, matches!(other, Ok(Ok(_))), rd)
}

/// A reader waiting for a row lock has taken its snapshot: the watcher
/// lets its fence hold go, the COMMIT goes through, and the reader then
/// gets its rows, as from one PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_waiting_for_row_locks_does_not_stall_commits() {
    let sql = "SELECT balance FROM accounts WHERE id IN ({a}, {b}) FOR UPDATE";
    let off = lock_wait(false, sql, false).await;
    assert!(off.0 && off.2.is_ok(), "without the setting: {off:?}");
    for two_proxies in [false, true] {
        let on = lock_wait(true, sql, two_proxies).await;
        assert!(
            on.0,
            "two proxies {two_proxies}: the COMMIT hung behind the reader waiting for its row lock"
        );
        assert!(on.1, "two proxies {two_proxies}: a third reader hung");
        assert_eq!(on.2, Ok(()), "two proxies {two_proxies}: the reader");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_shard_update_waiting_for_row_locks_does_not_stall_commits() {
    let on = lock_wait(
        true,
        "UPDATE accounts SET balance = balance WHERE id IN ({a}, {b})",
        false,
    )
    .await;
    assert!(
        on.0,
        "the COMMIT hung behind a multi-shard UPDATE waiting for its row lock"
    );
    assert!(on.1, "a third reader hung");
    assert_eq!(on.2, Ok(()), "the UPDATE");
}

/// The plainest reader, `SELECT sum(balance) FROM accounts`, waits for the
/// relation lock of a distributed DDL block (at parse analysis, under the
/// fence: under REPEATABLE READ parse analysis takes the snapshot), whose
/// COMMIT needs the fence; so does a multi-shard UPDATE, and the Bind of a
/// statement prepared before. After the deadlock timeout the reader is the
/// victim (40P01) and the COMMIT goes through; over two proxies too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_a_ddl_lock_waits_or_is_a_deadlock_victim() {
    let sum = "SELECT sum(balance) FROM accounts";
    let update = "UPDATE accounts SET balance = balance WHERE balance >= 0";
    let victim = Err("40P01".to_string());
    for two_proxies in [false, true] {
        for (sql, run, expected) in [
            (sum, Run::Autocommit, victim.clone()),
            (sum, Run::InBlock, victim.clone()),
            (update, Run::Autocommit, victim.clone()),
            (sum, Run::Prepared, victim.clone()),
        ] {
            let on = ddl_lock_wait(two_proxies, sql, run).await;
            let case = format!("two proxies {two_proxies}, {run:?}: {sql}");
            assert!(on.0, "{case}: the DDL commit hung behind the reader");
            assert_eq!(on.1, expected, "{case}");
        }
    }
}

/// The fence's control connection (the one holding the advisory lock for
/// a commit batch) is terminated while a commit is paused after its
/// decision: the other proxy's reader gets the lock the instant the server
/// lets it go, and reads half. A commit phase already under way when the
/// lock connection dies is not covered (README, "Limits"): this still
/// fails. What is covered is in
/// `a_lock_connection_killed_before_the_decision_is_taken_again` and
/// `an_idle_session_timeout_on_the_lock_shard_fractures_nothing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "issue 18: a commit phase under way when its lock connection is killed is not covered (README, limits); still fails"]
async fn rv18_lock_connection_killed_mid_commit() {
    let servers = Servers::start(SHARDS);
    let readers = proxy(&servers, true, "recovery_grace_ms = 60000").await;
    let bank = Bank::open(&servers, readers.addr.port()).await;
    let w = proxy(
        &servers,
        true,
        "recovery_grace_ms = 60000\ntest_failpoint = \"after_decision:pause=8000\"",
    )
    .await;
    let (a, b) = (bank.keys[1][0], bank.keys[2][0]);
    let t0 = Instant::now();
    let stuck = paused_transfer(&servers, w.addr.port(), a, b).await;
    let (s1, s2) = (servers.connect(1).await, servers.connect(2).await);
    eprintln!("rv18 prepared after {:?}", t0.elapsed());
    let mut r = connect(&url(readers.addr.port())).await.unwrap();
    let waiting = tokio::time::timeout(
        Duration::from_millis(800),
        read_total(&mut r, &bank, Mode::Sum),
    )
    .await;
    eprintln!("rv18 reader while the commit holds the lock: {waiting:?}");
    assert!(waiting.is_err(), "the reader should wait");
    eprintln!(
        "rv18 before kill at {:?}: shard1 {} shard2 {} prepared {}",
        t0.elapsed(),
        value(&s1, &format!("SELECT balance FROM accounts WHERE id = {a}")).await,
        value(&s2, &format!("SELECT balance FROM accounts WHERE id = {b}")).await,
        prepared(&s1).await + prepared(&s2).await
    );
    // Kill only the session holding the lock (the committing proxy's).
    let s0 = servers.connect(0).await;
    let hi = (pieskieo::txn::fence::LOCK_KEY >> 32) as u32;
    let lo = pieskieo::txn::fence::LOCK_KEY as u32;
    let killed = exec(&s0, &format!(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = {hi} AND objid = {lo} AND objsubid = 1"
    )).await;
    eprintln!("rv18 killed: {killed:?}");
    let mut r = connect(&url(readers.addr.port())).await.unwrap();
    let got = tokio::time::timeout(
        Duration::from_millis(2000),
        read_total(&mut r, &bank, Mode::Sum),
    )
    .await;
    eprintln!("rv18 reader after the kill: {got:?} (total {})", bank.total);
    eprintln!(
        "rv18 direct: shard1 {} shard2 {}",
        value(&s1, &format!("SELECT balance FROM accounts WHERE id = {a}")).await,
        value(&s2, &format!("SELECT balance FROM accounts WHERE id = {b}")).await
    );
    eprintln!("rv18 locks: {:?}", rows(&s0, "SELECT l.pid, l.mode, l.granted, a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' AND l.objsubid = 1").await);
    let rows2 = r.query("SELECT balance FROM accounts", &[]).await;
    eprintln!(
        "rv18 rows mode: {:?}",
        rows2.map(|v| v.iter().map(|r| r.get::<_, i64>(0)).sum::<i64>())
    );
    eprintln!("rv18 after reads at {:?}", t0.elapsed());
    let st = stuck.await;
    eprintln!("rv18 transfer: {st:?} at {:?}", t0.elapsed());
    if let Ok(Ok(sum)) = got {
        assert_eq!(
            sum, bank.total,
            "fractured read: the lock was gone while the commit phase went on"
        );
    }
}

/// Terminates, on shard 0, every backend of a proxy's fence that holds the
/// shared (committers') lock; returns their pids.
async fn kill_committers_lock(servers: &Servers) -> Vec<String> {
    let s0 = servers.connect(0).await;
    let hi = (pieskieo::txn::fence::LOCK_KEY >> 32) as u32;
    let lo = pieskieo::txn::fence::LOCK_KEY as u32;
    rows(&s0, &format!(
        "SELECT pid, pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ShareLock' AND classid = {hi} AND objid = {lo} AND objsubid = 1"
    ))
    .await
    .into_iter()
    .filter_map(|r| r.into_iter().next().flatten())
    .collect()
}

/// Whether a proxy's fence, in a backend other than `killed`, asks for
/// (waits for, or holds) the shared (committers') lock on shard 0.
async fn committers_ask_for_the_lock(servers: &Servers, killed: &[String]) -> bool {
    let s0 = servers.connect(0).await;
    let lo = pieskieo::txn::fence::LOCK_KEY as u32;
    let killed = killed.join(", ");
    value(&s0, &format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' AND l.mode = 'ShareLock' AND l.objid = {lo} AND a.application_name = 'pieskieo-fence' AND l.pid NOT IN ({killed})"
    ))
    .await
        != "0"
}

/// The committing proxy's lock connection is terminated while its transfer
/// is prepared but not yet decided (paused after its PREPAREs), with the
/// other proxy's readers queued for the lock: they get in at once; the
/// committer asks for the lock again at once (it waits in PostgreSQL's lock
/// queue behind those readers) and decides only once it has it. Every
/// read, slow ones that hold the lock for a while and fast ones, before,
/// during and after, gives the total. (The old code failed this by never
/// asking again; its commit phase after the pause is short, so a fractured
/// read there is possible but not forced.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_connection_killed_before_the_decision_is_taken_again() {
    let servers = Servers::start(SHARDS);
    // The readers wait for the lock about 4.5 s behind the committer's
    // retaken lock (the rest of its pause): past the 5 s default
    // `control_timeout_ms` on a loaded machine, where a reader would fail
    // for its timeout, not for the fence. So a long one here.
    let readers = proxy(
        &servers,
        true,
        "recovery_grace_ms = 60000\ncontrol_timeout_ms = 30000",
    )
    .await;
    let bank = Bank::open(&servers, readers.addr.port()).await;
    let w = proxy(
        &servers,
        true,
        "recovery_grace_ms = 60000\ntest_failpoint = \"after_prepare:pause=6000\"",
    )
    .await;
    let (a, b) = (bank.keys[1][0], bank.keys[2][0]);
    let stuck = paused_transfer(&servers, w.addr.port(), a, b).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sums = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // Slow readers (each holds the lock about 0.8 s), and a fast one: all
    // wait for the committer's lock now.
    for i in 0..2u64 {
        let (stop, sums, port) = (stop.clone(), sums.clone(), readers.addr.port());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            let c = connect(&url(port)).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                let m = c
                    .simple_query(
                        "SELECT sum(balance) FROM accounts WHERE pg_sleep(0.2) IS NOT NULL",
                    )
                    .await;
                sums.lock()
                    .unwrap()
                    .push(m.map(|m| simple_values(&m)[0]).map_err(|e| {
                        format!("{:?} {e}", e.as_db_error().map(|d| (d.code(), d.message())))
                    }));
            }
        }));
    }
    {
        let (stop, sums, port, bank) = (
            stop.clone(),
            sums.clone(),
            readers.addr.port(),
            bank.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&url(port)).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                let r = read_total(&mut c, &bank, Mode::Sum).await;
                sums.lock().unwrap().push(r.map_err(|e| e.to_string()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        sums.lock().unwrap().is_empty(),
        "a reader got past the committer's lock"
    );
    assert!(
        !stuck.is_finished(),
        "the transfer did not wait for its pause"
    );
    let killed = kill_committers_lock(&servers).await;
    assert_eq!(killed.len(), 1, "the committer held the lock");
    // Until the transfer is over: does the committer ask for the lock again?
    let mut asked = false;
    while !stuck.is_finished() {
        asked |= committers_ask_for_the_lock(&servers, &killed).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let transfer = stuck.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let sums = sums.lock().unwrap().clone();
    let wrong: Vec<_> = sums
        .iter()
        .filter(|s| s.as_ref().ok() != Some(&bank.total))
        .collect();
    eprintln!("killed before the decision: transfer {transfer:?}, committer asked for the lock again: {asked}, {} reads, wrong or failed: {wrong:?}", sums.len());
    assert!(transfer.is_ok(), "{transfer:?}");
    assert!(wrong.is_empty(), "{wrong:?}");
    assert!(sums.len() > 10, "{}", sums.len());
    assert!(
        asked,
        "the committer never asked for the lock again before its decision"
    );
    settled(&servers).await;
    assert_eq!(bank.shard_total(&servers).await, bank.total);
}

/// `idle_session_timeout` on the lock shard, shorter than a commit phase
/// held after its decision: the fence's connection turns it off for
/// itself, so it keeps the lock, and the other proxy's readers wait for the
/// commit phase instead of reading half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_timeout_on_the_lock_shard_fractures_nothing() {
    let servers = Servers::start(SHARDS);
    let readers = proxy(&servers, true, "recovery_grace_ms = 60000").await;
    let bank = Bank::open(&servers, readers.addr.port()).await;
    let w = proxy(
        &servers,
        true,
        "recovery_grace_ms = 60000\ntest_failpoint = \"after_decision:pause=4000\"",
    )
    .await;
    // Set once the cluster is up: the committer's lock connection, made at
    // its first commit below, starts with it.
    {
        let s0 = servers.connect(0).await;
        exec(&s0, "ALTER SYSTEM SET idle_session_timeout = '300ms'").await;
        exec(&s0, "SELECT pg_reload_conf()").await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (a, b) = (bank.keys[1][0], bank.keys[2][0]);
    let stuck = paused_transfer(&servers, w.addr.port(), a, b).await;
    // Well past the timeout, while the transfer is decided but not
    // finished: readers on the other proxy wait for it, then read it whole.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !stuck.is_finished(),
        "the transfer did not wait for its pause"
    );
    let mut readers_tasks = Vec::new();
    for i in 0..3u64 {
        let (port, bank) = (readers.addr.port(), bank.clone());
        readers_tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200 * i)).await;
            let (mut sums, mut failed) = (Vec::new(), Vec::new());
            // The proxy's own pooled connections to shard 0 can be ended
            // by the timeout too (an error, retried; never a sum).
            let deadline = Instant::now() + Duration::from_secs(20);
            while sums.len() < 4 && Instant::now() < deadline {
                let Ok(mut c) = connect(&url(port)).await else {
                    continue;
                };
                for mode in [Mode::Sum, Mode::Rows] {
                    match read_total(&mut c, &bank, mode).await {
                        Ok(sum) => sums.push(sum),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
            }
            (sums, failed)
        }));
    }
    let (mut sums, mut failed) = (Vec::new(), Vec::new());
    for t in readers_tasks {
        let (s, f) = t.await.unwrap();
        sums.extend(s);
        failed.extend(f);
    }
    let transfer = stuck.await.unwrap();
    let wrong: Vec<_> = sums.iter().filter(|s| **s != bank.total).collect();
    eprintln!("idle_session_timeout on the lock shard: transfer {transfer:?}, {} sums, wrong: {wrong:?}; failed reads: {failed:?}", sums.len());
    assert!(transfer.is_ok(), "{transfer:?}");
    assert!(
        wrong.is_empty(),
        "fractured: {wrong:?} (total {})",
        bank.total
    );
    assert!(sums.len() >= 6, "{} sums; failed: {failed:?}", sums.len());
    // The timeout off again before the checks: on a loaded machine it ended
    // their own connection to shard 0 between its login and its query.
    for _ in 0..20 {
        let Ok(s0) = connect(&servers.url(0)).await else {
            continue;
        };
        let reset = s0
            .simple_query("ALTER SYSTEM RESET idle_session_timeout")
            .await;
        if reset.is_ok() && s0.simple_query("SELECT pg_reload_conf()").await.is_ok() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    settled(&servers).await;
    assert_eq!(bank.shard_total(&servers).await, bank.total);
}

/// A portal on several shards whose snapshot PostgreSQL takes at Execute,
/// not at Bind: a VOLATILE function's own query (READ COMMITTED takes a new
/// snapshot per query in it). The fence covers only the Binds.
async fn rv18_function_reads(sleep: bool) -> (usize, usize, usize, usize) {
    let (servers, p, bank) = open_bank(true, "").await;
    let port = p.addr.port();
    let body = if sleep {
        "SELECT pg_sleep(0.02); SELECT sum(balance)::bigint FROM accounts"
    } else {
        "SELECT sum(balance)::bigint FROM accounts"
    };
    for i in 0..SHARDS {
        let s = servers.connect(i).await;
        exec(&s, &format!("CREATE FUNCTION shard_total() RETURNS bigint LANGUAGE sql VOLATILE AS $f${body}$f$")).await;
    }
    let paused = proxy(
        &servers,
        true,
        "test_failpoint = \"after_decision:pause=30\"",
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        writers.push(tokio::spawn(transfers(
            paused.addr.port(),
            bank.clone(),
            stop.clone(),
            ready.clone(),
            w as u64 * 7919 + 1,
        )));
    }
    let keys: Vec<i64> = (0..SHARDS).map(|s| bank.keys[s][0]).collect();
    let c = connect(&url(port)).await.unwrap();
    let sql_simple = format!(
        "SELECT shard_total() FROM accounts WHERE id IN ({}, {}, {})",
        keys[0], keys[1], keys[2]
    );
    let (mut ext_ok, mut ext_bad, mut simple_ok, mut simple_bad) = (0, 0, 0, 0);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(8) {
        let rows = c
            .query(
                "SELECT shard_total() FROM accounts WHERE id = $1 OR id = $2 OR id = $3",
                &[&keys[0], &keys[1], &keys[2]],
            )
            .await;
        match rows {
            Ok(rows) => {
                assert_eq!(rows.len(), SHARDS);
                let s: i64 = rows.iter().map(|r| r.get::<_, i64>(0)).sum();
                if s == bank.total {
                    ext_ok += 1
                } else {
                    ext_bad += 1
                }
            }
            Err(e) => eprintln!("rv18 ext error {e}"),
        }
        match c.simple_query(&sql_simple).await {
            Ok(m) => {
                let s: i64 = simple_values(&m).iter().sum();
                if s == bank.total {
                    simple_ok += 1
                } else {
                    simple_bad += 1
                }
            }
            Err(e) => eprintln!("rv18 simple error {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for w in writers {
        committed += w.await.unwrap();
    }
    eprintln!("rv18 function (sleep {sleep}): {committed} transfers; extended {ext_ok} right {ext_bad} fractured; simple {simple_ok} right {simple_bad} fractured");
    (ext_ok, ext_bad, simple_ok, simple_bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rv18_volatile_function_portal_is_fractured() {
    let r = rv18_function_reads(false).await;
    let r2 = rv18_function_reads(true).await;
    assert_eq!(
        r.1 + r2.1,
        0,
        "extended-protocol portal fractured: {r:?} {r2:?}"
    );
}

async fn rv18_joined(servers: &Servers) -> i64 {
    let mut joined = 0;
    for i in 0..SHARDS {
        let s = servers.connect(i).await;
        joined += value(
            &s,
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND backend_xmin IS NOT NULL AND pid <> pg_backend_pid()",
        )
        .await
        .parse::<i64>()
        .unwrap()
        .min(1);
    }
    joined
}

/// Every way a client sets the isolation level (PostgreSQL 15 gave each
/// expected level, the same session run against one plain server): a block
/// that keeps one snapshot takes it on every shard at its first statement
/// (every shard holds a snapshot after a one-shard read), and a READ
/// COMMITTED one does not. Also the session settings behind them (`SET
/// SESSION CHARACTERISTICS`, `set_config`, savepoints rolled back) must end
/// where PostgreSQL's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rv18_isolation_spellings() {
    let (servers, p, bank) = open_bank(true, "").await;
    let k = bank.keys[0][0];
    const RR: &str = "repeatable read";
    const SER: &str = "serializable";
    const RC: &str = "read committed";
    let mut bad = Vec::new();
    for (setup, begin, want) in [
        ("", "BEGIN ISOLATION LEVEL REPEATABLE READ", RR),
        ("", "BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", RR),
        ("", "BEGIN; SET transaction_isolation = 'repeatable read'", RR),
        ("", "BEGIN; SET LOCAL transaction_isolation = 'repeatable read'", RR),
        ("", "BEGIN; SET SESSION transaction_isolation TO serializable", SER),
        ("", "START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE", SER),
        ("SET default_transaction_isolation = 'repeatable read'", "BEGIN", RR),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "BEGIN",
            RR,
        ),
        // A later one of other modes leaves the level alone.
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "BEGIN",
            SER,
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ; RESET default_transaction_isolation",
            "BEGIN",
            RC,
        ),
        (
            "SELECT set_config('default_transaction_isolation', 'repeatable read', false)",
            "BEGIN",
            RR,
        ),
        (
            "BEGIN; SELECT set_config('default_transaction_isolation', 'repeatable read', false); COMMIT",
            "BEGIN",
            RR,
        ),
        (
            "SELECT set_config('default_transaction_isolation', 'serializable', false) FROM accounts",
            "BEGIN",
            SER,
        ),
        // ROLLBACK TO takes back a session setting changed after the savepoint.
        (
            "SET default_transaction_isolation = 'repeatable read'; BEGIN; SAVEPOINT a; RESET default_transaction_isolation; ROLLBACK TO a; COMMIT",
            "BEGIN",
            RR,
        ),
        (
            "BEGIN; SAVEPOINT a; SET default_transaction_isolation = 'repeatable read'; ROLLBACK TO a; COMMIT",
            "BEGIN",
            RC,
        ),
        // PostgreSQL 15 resets transaction_isolation to READ COMMITTED.
        (
            "SET default_transaction_isolation = 'repeatable read'",
            "BEGIN; SET transaction_isolation TO DEFAULT",
            RC,
        ),
        ("", "BEGIN ISOLATION LEVEL REPEATABLE READ; RESET transaction_isolation", RC),
        (
            "",
            "BEGIN ISOLATION LEVEL SERIALIZABLE; SAVEPOINT a; SET transaction_isolation TO DEFAULT; ROLLBACK TO a",
            SER,
        ),
        (
            "",
            "BEGIN; SET transaction_isolation = 'repeatable read'; SAVEPOINT a; RESET transaction_isolation; RELEASE a",
            RC,
        ),
        // The same level again after the first query is no change.
        (
            "SET default_transaction_isolation = 'serializable'",
            "BEGIN; SELECT 1; SET transaction_isolation = 'serializable'",
            SER,
        ),
    ] {
        let c = connect(&url(p.addr.port())).await.unwrap();
        if !setup.is_empty() {
            exec(&c, setup).await;
        }
        let r = c
            .simple_query(&format!(
                "{begin}; SELECT balance FROM accounts WHERE id = {k}"
            ))
            .await;
        let level = value(&c, "SHOW transaction_isolation").await;
        let joined = rv18_joined(&servers).await;
        let _ = c.simple_query("COMMIT").await;
        let keeps = level == RR || level == SER;
        let line = format!(
            "[{setup}] [{begin}] -> ok {} level {level} (PostgreSQL: {want}) joined {joined}",
            r.is_ok()
        );
        eprintln!("rv18 {line}");
        if r.is_err() || level != want || keeps != (joined == SHARDS as i64) {
            bad.push(line);
        }
    }
    // What PostgreSQL refuses, the proxy refuses alike.
    for sql in [
        "BEGIN; SAVEPOINT a; SET transaction_isolation = 'repeatable read'",
        "BEGIN; SELECT 1; SET transaction_isolation = 'repeatable read'",
        "BEGIN; SELECT 1; SET LOCAL transaction_isolation TO 'serializable'",
    ] {
        let c = connect(&url(p.addr.port())).await.unwrap();
        let code = sqlstate(&c, sql).await;
        eprintln!("rv18 [{sql}] -> {code}");
        if code != "25001" {
            bad.push(format!("[{sql}] -> {code}"));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// A REPEATABLE READ block set in each way the proxy used not to see: its
/// first statement reads one shard, a transfer commits, its second reads
/// another; the two balances must add up as before the transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rv18_unseen_repeatable_read_is_fractured() {
    let (_servers, p, bank) = open_bank(true, "").await;
    let (a, b) = (bank.keys[1][0], bank.keys[2][0]);
    let mut bad = Vec::new();
    for (setup, begin) in [
        ("", "BEGIN; SET transaction_isolation = 'repeatable read'"),
        ("", "BEGIN ISOLATION LEVEL REPEATABLE READ"),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "BEGIN",
        ),
        (
            "SELECT set_config('default_transaction_isolation', 'serializable', false)",
            "BEGIN",
        ),
        (
            "SET default_transaction_isolation = 'repeatable read'; BEGIN; SAVEPOINT a; RESET default_transaction_isolation; ROLLBACK TO a; COMMIT",
            "BEGIN",
        ),
    ] {
        let r = connect(&url(p.addr.port())).await.unwrap();
        if !setup.is_empty() {
            exec(&r, setup).await;
        }
        let first: i64 = simple_values(
            &exec(
                &r,
                &format!("{begin}; SELECT balance FROM accounts WHERE id = {a}"),
            )
            .await,
        )[0];
        let w = connect(&url(p.addr.port())).await.unwrap();
        exec(&w, &transfer_sql(a, b)).await;
        let second: i64 =
            simple_values(&exec(&r, &format!("SELECT balance FROM accounts WHERE id = {b}")).await)
                [0];
        let again: i64 =
            simple_values(&exec(&r, &format!("SELECT balance FROM accounts WHERE id = {a}")).await)
                [0];
        exec(&r, "COMMIT").await;
        eprintln!(
            "rv18 [{setup}] [{begin}]: a {first} (again {again}), b {second}: a+b = {}",
            first + second
        );
        if first + second != 2 * START {
            bad.push(format!("{setup} {begin}: {}", first + second));
        }
        exec(&w, &format!("BEGIN; UPDATE accounts SET balance = {START} WHERE id = {a}; UPDATE accounts SET balance = {START} WHERE id = {b}; COMMIT")).await;
    }
    assert!(bad.is_empty(), "{bad:?}");
}

/// A slow multi-shard aggregate (simple protocol): PostgreSQL buffers its
/// RowDescription until the answer is complete, so a hold until "the first
/// answer" would keep every 2PC commit waiting for the whole statement.
/// Primed (Parse, then Bind under the fence) it holds the fence for one
/// round trip: a transfer started during the read finishes before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_multi_shard_select_does_not_hold_commits() {
    let cases = [
        (false, Run::Autocommit),
        (true, Run::Autocommit),
        (true, Run::InBlock),
        (true, Run::Prepared),
    ];
    for (consistent, run) in cases {
        let servers = Servers::start(SHARDS);
        let p = proxy(&servers, consistent, "").await;
        let bank = Bank::open(&servers, p.addr.port()).await;
        let (a, b) = (bank.keys[1][0], bank.keys[2][0]);
        let r = connect(&url(p.addr.port())).await.unwrap();
        if run == Run::InBlock {
            exec(&r, "BEGIN").await;
        }
        // Every balance (a plain fan-out, proven read-only), slowly: the
        // shards' answers, small, come only at their ends. (A second or two
        // of CPU on each shard, so that on a loaded machine it still
        // outlasts the transfer, which takes tens of milliseconds.)
        let sql =
            "SELECT a.balance FROM accounts a, generate_series(1, 6000000) g WHERE g = 6000000";
        let w = connect(&url(p.addr.port())).await.unwrap();
        let started = Instant::now();
        let q = tokio::spawn(async move {
            let balances: Vec<i64> = if run == Run::Prepared {
                let rows = r.query(sql, &[]).await?;
                rows.iter().map(|row| row.get::<_, i64>(0)).collect()
            } else {
                simple_values(&r.simple_query(sql).await?)
            };
            Ok::<_, tokio_postgres::Error>(balances.iter().sum::<i64>())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        exec(&w, &transfer_sql(a, b)).await;
        eprintln!(
            "slow read, consistent {consistent}, {run:?}: transfer done at {:?}",
            started.elapsed()
        );
        assert!(
            !q.is_finished(),
            "consistent {consistent}, {run:?}: the transfer waited for the slow multi-shard statement"
        );
        let sum = q.await.unwrap().expect("the slow reader's statement");
        eprintln!("slow read done at {:?}", started.elapsed());
        assert_eq!(sum, bank.total, "consistent {consistent}, {run:?}");
    }
}

/// How the reader of [`ddl_lock_wait`] runs its statement.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Run {
    Autocommit,
    InBlock,
    /// A prepared statement (extended protocol), prepared before the
    /// `ALTER`: its Bind takes the relation locks again.
    Prepared,
}

/// `sql` racing a distributed `ALTER` (see
/// [`a_reader_behind_a_ddl_lock_waits_or_is_a_deadlock_victim`]): whether
/// the COMMIT went through, and the reader's outcome.
async fn ddl_lock_wait(
    two_proxies: bool,
    sql: &'static str,
    run: Run,
) -> (bool, Result<(), String>) {
    let servers = Servers::start(SHARDS);
    let p = proxy(&servers, true, "").await;
    let port = p.addr.port();
    let _bank = Bank::open(&servers, port).await;
    let other = if two_proxies {
        Some(proxy(&servers, true, "").await)
    } else {
        None
    };
    let t = connect(&url(other.as_ref().map_or(port, |o| o.addr.port())))
        .await
        .unwrap();
    let r = connect(&url(port)).await.unwrap();
    let prepared = r.prepare(sql).await.unwrap();
    exec(&t, "BEGIN").await;
    exec(&t, "ALTER TABLE accounts ADD COLUMN note text").await;
    if run == Run::InBlock {
        exec(&r, "BEGIN").await;
    }
    let reader = tokio::spawn(async move {
        let done = match run {
            Run::Prepared => r.query(&prepared, &[]).await.map(|_| ()),
            _ => r.simple_query(sql).await.map(|_| ()),
        };
        done.map_err(|e| e.code().map_or(e.to_string(), |c| c.code().to_string()))
    });
    crate::bank::until_lock_waiter(&servers).await;
    let commit = tokio::time::timeout(Duration::from_secs(8), t.simple_query("COMMIT")).await;
    eprintln!("ddl commit: {commit:?}");
    let rd = tokio::time::timeout(Duration::from_secs(2), reader).await;
    eprintln!("ddl reader: {rd:?}");
    let rd = match rd {
        Ok(Ok(r)) => r,
        other => Err(format!("no answer: {other:?}")),
    };
    (matches!(commit, Ok(Ok(_))), rd)
}

/// Creates, on every shard, `shard_total()`: a VOLATILE SQL function
/// summing that shard's balances (at READ COMMITTED its query takes a
/// snapshot of its own, when it runs).
async fn create_shard_total(servers: &Servers) {
    for i in 0..SHARDS {
        let s = servers.connect(i).await;
        exec(&s, "CREATE FUNCTION shard_total() RETURNS bigint LANGUAGE sql VOLATILE AS $f$SELECT sum(balance)::bigint FROM accounts$f$").await;
    }
}

/// A portal bound on every shard whose Execute comes in a later write than
/// its Bind: the client's Bind + Flush holds nothing (a 2PC commit goes
/// through while the client sits there), and the Execute takes its
/// snapshots under the fence of its own: run while a commit phase is
/// paused, it waits for it and then sees the whole transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_executed_after_a_flush_is_fenced_at_its_execute() {
    use crate::harness::RawClient;
    let servers = Servers::start(SHARDS);
    let p = proxy(
        &servers,
        true,
        "recovery_grace_ms = 60000\ntest_failpoint = \"after_decision:pause=1500\"",
    )
    .await;
    let port = p.addr.port();
    let bank = Bank::open(&servers, port).await;
    create_shard_total(&servers).await;
    let (a, b) = (bank.keys[1][0], bank.keys[2][0]);
    let keys: Vec<String> = (0..SHARDS).map(|s| bank.keys[s][0].to_string()).collect();
    let sql = format!(
        "SELECT shard_total() FROM accounts WHERE id IN ({})",
        keys.join(", ")
    );
    let mut raw = RawClient::connect(port).await;
    let mut parse = vec![0u8];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    raw.send(b'P', &parse).await;
    raw.send(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]).await;
    raw.send(b'H', &[]).await;
    assert_eq!(raw.read().await.0, b'1');
    assert_eq!(raw.read().await.0, b'2');

    // The client sits after its Flush: commits go on.
    let t = connect(&url(port)).await.unwrap();
    let commit =
        tokio::time::timeout(Duration::from_secs(10), t.simple_query(&transfer_sql(a, b))).await;
    assert!(
        matches!(commit, Ok(Ok(_))),
        "a 2PC commit behind a client's Bind + Flush: {commit:?}"
    );

    let stuck = paused_transfer(&servers, port, b, a).await;
    raw.send(b'E', &[0, 0, 0, 0, 0]).await;
    raw.send(b'S', &[]).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), raw.until_ready())
        .await
        .expect("the Execute never ended");
    assert!(reply.error_codes().is_empty(), "{:?}", reply.error_codes());
    let sums: Vec<i64> = reply
        .messages
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| String::from_utf8_lossy(&b[6..]).parse::<i64>().unwrap())
        .collect();
    assert_eq!(sums.len(), SHARDS);
    assert_eq!(
        sums.iter().sum::<i64>(),
        bank.total,
        "the Execute's snapshots fractured: {sums:?}"
    );
    stuck.await.unwrap().unwrap();
}

/// A two-stage read through the extended protocol (`sum(...)::bigint`:
/// the sum merged first, the cast applied by an outer query) runs its
/// stage on every shard inside a block of the proxy's: the stage takes its
/// snapshots under the fence too. Run while a commit phase is paused, it
/// waits for it and sees the whole transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_stage_read_in_the_extended_protocol_is_fenced() {
    let servers = Servers::start(SHARDS);
    let p = proxy(
        &servers,
        true,
        "recovery_grace_ms = 60000\ntest_failpoint = \"after_decision:pause=1500\"",
    )
    .await;
    let port = p.addr.port();
    let bank = Bank::open(&servers, port).await;
    let (a, b) = (bank.keys[1][0], bank.keys[2][0]);
    let c = connect(&url(port)).await.unwrap();
    for (from, to) in [(a, b), (b, a)] {
        let stuck = paused_transfer(&servers, port, from, to).await;
        let sum: i64 = tokio::time::timeout(
            Duration::from_secs(10),
            c.query_one("SELECT sum(balance)::bigint FROM accounts", &[]),
        )
        .await
        .expect("the read never ended")
        .unwrap()
        .get(0);
        assert_eq!(sum, bank.total, "a fractured two-stage read");
        stuck.await.unwrap().unwrap();
    }
}

/// A REPEATABLE READ block whose first statement is a `COPY ... FROM
/// STDIN` reaching every shard: the COPY would take the block's snapshot on
/// each shard as it reaches it; it is taken everywhere at once first, under
/// the fence. Begun while a commit phase is paused, the block then sees
/// the whole transfer. Simple protocol (raw wire) and extended
/// (tokio-postgres).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeatable_read_block_opened_by_copy_from_sees_whole_transfers() {
    use futures_util::SinkExt;
    let servers = Servers::start(SHARDS);
    let p = proxy(
        &servers,
        true,
        "recovery_grace_ms = 60000\ntest_failpoint = \"after_decision:pause=1500\"",
    )
    .await;
    let port = p.addr.port();
    let bank = Bank::open(&servers, port).await;
    let (a, b) = (bank.keys[1][0], bank.keys[2][0]);
    // New accounts holding nothing, on every shard.
    let rows: String = (200_001..200_031).map(|k| format!("{k}\t0\n")).collect();
    let copy = "COPY accounts (id, balance) FROM STDIN";
    let sum = "SELECT sum(balance) FROM accounts";

    let mut raw = crate::harness::RawClient::connect(port).await;
    let stuck = paused_transfer(&servers, port, a, b).await;
    assert_eq!(
        raw.query("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .status,
        b'T'
    );
    let mut q = copy.as_bytes().to_vec();
    q.push(0);
    raw.send(b'Q', &q).await;
    assert_eq!(raw.read().await.0, b'G', "CopyInResponse");
    raw.send(b'd', rows.as_bytes()).await;
    raw.send(b'c', &[]).await;
    let done = raw.until_ready().await;
    assert_eq!(done.tags(), ["COPY 30"], "{:?}", done.error_codes());
    let read = raw.query(sum).await;
    let seen: Vec<String> = read
        .messages
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| String::from_utf8_lossy(&b[6..]).into_owned())
        .collect();
    assert_eq!(raw.query("ROLLBACK").await.status, b'I');
    assert_eq!(
        seen,
        [bank.total.to_string()],
        "simple: the block's snapshot is fractured"
    );
    stuck.await.unwrap().unwrap();

    let c = connect(&url(port)).await.unwrap();
    let stuck = paused_transfer(&servers, port, b, a).await;
    exec(&c, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
    let sink = c.copy_in(copy).await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(rows)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 30);
    let seen = simple_values(&c.simple_query(sum).await.unwrap());
    exec(&c, "ROLLBACK").await;
    assert_eq!(
        seen,
        [bank.total],
        "extended: the block's snapshot is fractured"
    );
    stuck.await.unwrap().unwrap();
}

/// The balances in a `COPY ... TO STDOUT` answer (text, one a line).
fn copied_sum(data: &[u8]) -> i64 {
    String::from_utf8_lossy(data)
        .lines()
        .map(|l| l.trim().parse::<i64>().unwrap())
        .sum()
}

/// `COPY ... TO STDOUT` across shards takes its snapshots under the fence:
/// while a transfer is paused in its commit phase (decided, one part still
/// prepared), a COPY either shard would answer by halves waits for the
/// phase to end and then copies the whole transfer. Table and query forms,
/// simple protocol (autocommit, READ COMMITTED block, REPEATABLE READ block
/// whose first statement it is) and extended protocol (autocommit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_to_stdout_across_shards_is_fenced() {
    let servers = Servers::start(SHARDS);
    let p = proxy(
        &servers,
        true,
        "recovery_grace_ms = 60000\ntest_failpoint = \"after_decision:pause=1500\"",
    )
    .await;
    let port = p.addr.port();
    let bank = Bank::open(&servers, port).await;
    let (a, b) = (bank.keys[1][0], bank.keys[2][0]);
    let mut raw = crate::harness::RawClient::connect(port).await;
    let ext = connect(&url(port)).await.unwrap();
    let forms = [
        "COPY accounts (balance) TO STDOUT",
        "COPY (SELECT balance FROM accounts) TO STDOUT",
    ];
    let mut cases = Vec::new();
    for copy in forms {
        for (open, close) in [
            ("", ""),
            ("BEGIN", "COMMIT"),
            ("BEGIN ISOLATION LEVEL REPEATABLE READ", "COMMIT"),
        ] {
            cases.push((copy, open, close, false));
        }
        cases.push((copy, "", "", true));
    }
    for (i, (copy, open, close, extended)) in cases.into_iter().enumerate() {
        let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let stuck = paused_transfer(&servers, port, from, to).await;
        let t = Instant::now();
        let sum = if extended {
            use futures_util::StreamExt;
            let s = ext.copy_out(copy).await.unwrap();
            futures_util::pin_mut!(s);
            let mut data = Vec::new();
            while let Some(chunk) = s.next().await {
                data.extend_from_slice(&chunk.unwrap());
            }
            copied_sum(&data)
        } else {
            if !open.is_empty() {
                assert_eq!(raw.query(open).await.status, b'T');
            }
            let reply = tokio::time::timeout(Duration::from_secs(10), raw.query(copy))
                .await
                .expect("the COPY never ended");
            assert!(
                reply.error_codes().is_empty(),
                "{copy}: {:?}",
                reply.error_codes()
            );
            if !close.is_empty() {
                assert_eq!(raw.query(close).await.status, b'I');
            }
            let data: Vec<u8> = reply
                .messages
                .iter()
                .filter(|(t, _)| *t == b'd')
                .flat_map(|(_, b)| b.iter().copied())
                .collect();
            copied_sum(&data)
        };
        let case = format!("{copy} (extended {extended}, in {open:?})");
        eprintln!("{case}: {:?}", t.elapsed());
        assert_eq!(sum, bank.total, "{case}: a fractured COPY");
        stuck.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "issue 18: a review's probe that passes; slow, run by hand"]
async fn rv18_startup_options_isolation() {
    let (servers, p, bank) = open_bank(true, "").await;
    let k = bank.keys[0][0];
    let mut report = Vec::new();
    for opt in [
        "-c default_transaction_isolation=serializable",
        "-c default_transaction_isolation=repeatable\\\\ read",
        "--default_transaction_isolation=serializable",
        "-cdefault_transaction_isolation=serializable",
        "-c default_transaction_isolation=SERIALIZABLE",
    ] {
        let u = format!("{} options='{opt}'", url(p.addr.port()));
        let c = match connect(&u).await {
            Ok(c) => c,
            Err(e) => {
                report.push(format!("{opt}: connect {e}"));
                continue;
            }
        };
        exec(
            &c,
            &format!("BEGIN; SELECT balance FROM accounts WHERE id = {k}"),
        )
        .await;
        let level = value(&c, "SHOW transaction_isolation").await;
        let joined = rv18_joined(&servers).await;
        exec(&c, "COMMIT").await;
        report.push(format!("{opt}: level {level} joined {joined}"));
    }
    for l in &report {
        eprintln!("rv18 {l}");
    }
    // Every spelling starts a block that keeps one snapshot and joins every
    // shard at its first statement.
    assert!(
        report
            .iter()
            .all(|l| l.contains(&format!("joined {SHARDS}"))),
        "{report:?}"
    );
}

/// Deadlock detection off: a REPEATABLE READ block whose first statement
/// is a SET, then a Parse/Describe (PostgreSQL's parse analysis takes the
/// block's snapshot on that shard), then the Binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "issue 18: a review's probe that passes; slow, run by hand"]
async fn rv18_parse_takes_the_snapshot() {
    let (servers, p, bank) = open_bank(true, "deadlock_timeout_ms = 0").await;
    let mut bad = Vec::new();
    for (sa, sb) in [(0usize, 1usize), (1, 2), (2, 0)] {
        let (a, b) = (bank.keys[sa][1], bank.keys[sb][1]);
        let r = connect(&url(p.addr.port())).await.unwrap();
        exec(
            &r,
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET application_name = 'rv18'",
        )
        .await;
        let j1 = rv18_joined(&servers).await;
        let st = r
            .prepare("SELECT balance FROM accounts WHERE id = $1")
            .await
            .unwrap();
        let j2 = rv18_joined(&servers).await;
        let w = connect(&url(p.addr.port())).await.unwrap();
        exec(&w, &transfer_sql(a, b)).await;
        let va: i64 = r.query_one(&st, &[&a]).await.unwrap().get(0);
        let vb: i64 = r.query_one(&st, &[&b]).await.unwrap().get(0);
        exec(&r, "COMMIT").await;
        eprintln!("rv18 parse ({sa},{sb}): joined with snapshot after SET {j1}, after prepare {j2}; a {va} b {vb} sum {}", va + vb);
        if va + vb != 2 * START {
            bad.push((sa, sb, va + vb));
        }
        exec(&w, &format!("BEGIN; UPDATE accounts SET balance = {START} WHERE id = {a}; UPDATE accounts SET balance = {START} WHERE id = {b}; COMMIT")).await;
    }
    assert!(bad.is_empty(), "{bad:?}");
}

/// A tiny pool: transfers and every reader mode at once on pool_size = 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "issue 18: a review's probe that passes; slow, run by hand"]
async fn rv18_tiny_pool() {
    let servers = Servers::start(SHARDS);
    let on = std::env::var("RV18_ON").map(|v| v == "1").unwrap_or(true);
    let text = config_text(&servers, on, "", "").replace("pool_size = 8", "pool_size = 1");
    let p = proxy_text(&text).await;
    let bank = Bank::open(&servers, p.addr.port()).await;
    let t = Instant::now();
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        load(p.addr.port(), p.addr.port(), &bank, |_, t| {
            t > Duration::from_secs(6)
        }),
    )
    .await;
    match run {
        Ok((reads, committed)) => eprintln!(
            "rv18 tiny pool: {committed} transfers; {} in {:?}",
            reads.summary(),
            t.elapsed()
        ),
        Err(_) => panic!("rv18 tiny pool: the load hung"),
    }
    settled(&servers).await;
    assert_eq!(bank.shard_total(&servers).await, bank.total);
}
