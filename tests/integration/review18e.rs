//! Adversarial review (fifth round) of `consistent_reads`. Each test
//! asserts what one PostgreSQL does or what the README promises (a sum of
//! every balance is the bank's total; a stalled reader is a deadlock
//! victim after the deadlock timeout; the lock shard back means commits
//! work again) and failed on the code before its fix; one is ignored (not
//! fixed, see the README's limits). The probes (`review18e_probe_*`,
//! ignored) are the evidence for suspicions that did not hold: they pass.
//! Run one with `cargo test --test integration -- review18e::<name> --nocapture`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::bank::{
    abandon_transfer_once_prepared, bank_cluster, code, sum_of, transfer_sql, until_lock_waiter,
    until_prepared_on, url, SHARDS, START,
};
use crate::harness::{connect, exec, prepared, RawClient, Servers};

const TOTAL: i64 = START * SHARDS as i64;

/// The smallest account key above `after` that lands on `shard`.
fn key_after(servers: &Servers, shard: usize, after: i64) -> i64 {
    let map = pieskieo::router::ShardMap::from_config(&crate::bank::config(servers, false, ""));
    (after + 1..)
        .find(|k| {
            map.tables["accounts"]
                .shard_for(&pieskieo::router::KeyValue::Int(*k), map.shards)
                .map(|s| s.0 as usize)
                == Some(shard)
        })
        .expect("a key on every shard")
}

/// A reader stalled under the fence (`SELECT sum(balance)` behind the
/// relation lock of a distributed `ALTER TABLE`, whose COMMIT waits for the
/// fence) is found by the committer's look, which it takes after waiting
/// [`STALL_AFTER`] (100 ms), and cancelled as a deadlock victim after the
/// deadlock timeout (1 s): `consistent::a_reader_behind_a_ddl_lock_...`.
/// Here other readers come and go meanwhile: they wait in the fence behind
/// the committer and their clients cancel them after 30 ms (a client-side
/// timeout), as applications do. Each one leaving wakes the committer, whose
/// 100 ms wait for its look started over each time, so it never looked: the
/// COMMIT and every reader of the cluster waited for as long as the churn
/// lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18e_waiters_coming_and_going_do_not_hide_a_stall() {
    let (_servers, _p, port, _keys) = bank_cluster(true, "").await;
    let sum = "SELECT sum(balance) FROM accounts";
    let t = Arc::new(connect(&url(port)).await.unwrap());
    exec(&t, "BEGIN").await;
    exec(&t, "ALTER TABLE accounts ADD COLUMN note text").await;
    let r = connect(&url(port)).await.unwrap();
    let stuck =
        tokio::spawn(async move { r.simple_query(sum).await.map(|_| ()).map_err(|e| code(&e)) });
    until_lock_waiter(&_servers).await;
    let started = Instant::now();
    let commit = {
        let t = t.clone();
        tokio::spawn(async move {
            t.simple_query("COMMIT")
                .await
                .map(|_| ())
                .map_err(|e| code(&e))
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut churn = Vec::new();
    for _ in 0..3 {
        let c = connect(&url(port)).await.unwrap();
        let stop = stop.clone();
        churn.push(tokio::spawn(async move {
            let token = c.cancel_token();
            let mut cancelled = 0;
            while !stop.load(Ordering::Relaxed) {
                let q = c.simple_query(sum);
                tokio::pin!(q);
                tokio::select! {
                    _ = &mut q => continue,
                    _ = tokio::time::sleep(Duration::from_millis(30)) => {}
                }
                let _ = token.cancel_query(NoTls).await;
                let _ = q.await;
                cancelled += 1;
            }
            cancelled
        }));
    }
    let done = tokio::time::timeout(Duration::from_secs(8), commit).await;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut cancelled = 0;
    for c in churn {
        cancelled += c.await.unwrap();
    }
    let reader = tokio::time::timeout(Duration::from_secs(5), stuck).await;
    eprintln!(
        "commit {done:?} after {took:?}; {cancelled} waiters cancelled; stalled reader {reader:?}"
    );
    // (At least one cancel: on a loaded machine a round of cancel takes
    // hundreds of milliseconds, and a COMMIT that is not held up ends the
    // churn after a few. Unloaded, the old code kept the COMMIT waiting for
    // the whole 8 s, which the next assertion catches.)
    assert!(
        cancelled >= 1,
        "the churn did not run ({cancelled} cancels)"
    );
    assert!(
        matches!(done, Ok(Ok(Ok(())))) && took < Duration::from_secs(4),
        "the COMMIT waited {took:?} behind a reader stalled under the fence: {done:?}"
    );
    let reader = match reader {
        Ok(Ok(r)) => r,
        other => Err(format!("no answer: {other:?}")),
    };
    assert!(
        reader.as_ref().is_err_and(|e| e.starts_with("40P01")),
        "the stalled reader: {reader:?}"
    );
}

/// A client closes its socket while its 2PC `COMMIT` waits for the
/// decision shard's answer (paused after C's `INSERT` and `COMMIT` were
/// sent). The session drops the commit, and its fence hold goes to a task
/// that must learn the outcome before letting readers in. It waited for
/// recovery to decide (`txn.recovery_grace_ms`, 10 s by default, 30 s
/// here), so every multi-shard reader of the proxy waited that long,
/// although C could be asked at once, as a commit whose answer was lost
/// asks it (`decision::decide`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18e_a_commit_dropped_before_its_decision_was_read_asks_it() {
    let (servers, _p, port, keys) = bank_cluster(
        true,
        "recovery_grace_ms = 30000\ntest_failpoint = \"after_decision_insert:pause=1500\"",
    )
    .await;
    abandon_transfer_once_prepared(port, &servers, keys[1], keys[2]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = connect(&url(port)).await.unwrap();
    let t = Instant::now();
    let sum = tokio::time::timeout(
        Duration::from_secs(10),
        sum_of(&r, "SELECT sum(balance) FROM accounts"),
    )
    .await;
    let took = t.elapsed();
    eprintln!("sum {sum:?} after {took:?}");
    assert_eq!(
        sum,
        Ok(Ok(TOTAL)),
        "a reader waited {took:?} for recovery to decide a dropped commit"
    );
    let (s1, s2) = (servers.connect(1).await, servers.connect(2).await);
    assert_eq!(
        prepared(&s1).await + prepared(&s2).await,
        0,
        "the dropped commit's prepared part was left to recovery"
    );
    let moved = sum_of(
        &r,
        &format!("SELECT balance FROM accounts WHERE id = {}", keys[2]),
    )
    .await;
    assert_eq!(
        moved,
        Ok(START + 10),
        "C's COMMIT was sent: the transfer committed"
    );
}

/// The lock shard restarts while a commit batch is open: the batch's lock
/// connection dies, taking the lock again fails while the shard is down,
/// and the batch is marked refused. A commit already in its commit phase
/// (here paused after its decision, as a commit holds the fence for a
/// shard that is down, up to 60 s) keeps the batch open; every commit that
/// joined it afterwards got the stale refusal, `08006 ... Connection
/// refused`, for as long as the batch lasted, with the lock shard long back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18e_a_refused_lock_is_asked_again_once_the_shard_is_back() {
    let (servers, _p, port, keys) = bank_cluster(
        true,
        "control_timeout_ms = 1500\ntest_failpoint = \"after_decision:pause=8000\"",
    )
    .await;
    // Two more accounts on shards 1 and 2: the later transfers wait for
    // no row lock of the paused one.
    let more: Vec<i64> = [1, 2]
        .iter()
        .map(|&s| key_after(&servers, s, keys[s]))
        .collect();
    let first = connect(&url(port)).await.unwrap();
    for k in &more {
        exec(
            &first,
            &format!("INSERT INTO accounts (id, balance) VALUES ({k}, 0)"),
        )
        .await;
    }
    let paused = {
        let transfer = transfer_sql(keys[1], keys[2]);
        tokio::spawn(async move {
            first
                .simple_query(&transfer)
                .await
                .map(|_| ())
                .map_err(|e| code(&e))
        })
    };
    let transfer = transfer_sql(more[1], more[0]);
    until_prepared_on(&servers, &[2], Duration::from_millis(300)).await;
    let since = Instant::now();
    servers.servers[0].stop("immediate").unwrap();
    let c = connect(&url(port)).await.unwrap();
    // The lock shard down: refused, nothing done (README, "Errors").
    let down = c
        .simple_query(&transfer)
        .await
        .map(|_| ())
        .map_err(|e| code(&e));
    eprintln!("the lock shard down after {:?}: {down:?}", since.elapsed());
    assert!(
        down.as_ref().is_err_and(|e| e.starts_with("08006")),
        "with the lock shard down: {down:?}"
    );
    servers.servers[0].start().unwrap();
    eprintln!("started after {:?}", since.elapsed());
    let _ = servers.connect(0).await;
    let at = since.elapsed();
    assert!(
        !paused.is_finished(),
        "the paused commit ended first ({at:?})"
    );
    let again = c
        .simple_query(&transfer)
        .await
        .map(|_| ())
        .map_err(|e| code(&e));
    let first = paused.await.unwrap();
    eprintln!("with the shard back after {at:?}: {again:?}; the paused one: {first:?}");
    assert_eq!(again, Ok(()), "a commit with the lock shard back");
    assert_eq!(first, Ok(()));
    let r = connect(&url(port)).await.unwrap();
    let sum = sum_of(&r, "SELECT sum(balance) FROM accounts").await;
    assert_eq!(sum, Ok(TOTAL));
}

/// An application's own `public.lower(bigint)` that writes (for a `bigint`
/// argument PostgreSQL picks it: `pg_catalog.lower` takes `text`, and
/// `bigint` has no implicit cast to it). The classifier takes `lower` to be
/// the built-in, proves `SELECT lower(id) ...` read-only and never asks
/// that shard whether it wrote: a block that also updates another shard
/// has one writer, commits it one-phase, then "the reader" — whose commit
/// fails on a deferred unique constraint the function violated. One
/// PostgreSQL (and a 2PC, whose `PREPARE` checks it) rolls the whole
/// block back; the proxy kept half of it (the bank is 10 short), and no
/// fence covered its two commits either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "issue 18 / 2PC: a function named like a known read-only built-in is taken to be it; fixing needs the shards' catalogs (README, limits)"]
async fn review18e_a_writing_function_named_like_a_builtin_is_committed_by_halves() {
    let (servers, _p, port, keys) = bank_cluster(true, "").await;
    for i in 0..SHARDS {
        let s = servers.connect(i).await;
        exec(
            &s,
            "CREATE TABLE marks (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        )
        .await;
        exec(
            &s,
            "CREATE FUNCTION public.lower(bigint) RETURNS bigint LANGUAGE sql AS $f$INSERT INTO marks VALUES (1), (1); UPDATE accounts SET balance = balance + 10 WHERE id = $1 RETURNING balance$f$",
        )
        .await;
    }
    let (a, b) = (keys[1], keys[2]);
    let c = connect(&url(port)).await.unwrap();
    let block = format!(
        "BEGIN; UPDATE accounts SET balance = balance - 10 WHERE id = {a}; SELECT lower(id) FROM accounts WHERE id = {b}; COMMIT"
    );
    let r = c
        .simple_query(&block)
        .await
        .map(|_| ())
        .map_err(|e| code(&e));
    eprintln!("the block: {r:?}");
    let sum = sum_of(&c, "SELECT sum(balance) FROM accounts").await;
    eprintln!("sum {sum:?}");
    assert!(
        r.is_err(),
        "the deferred unique violation is the COMMIT's error"
    );
    assert_eq!(sum, Ok(TOTAL), "half of the block was committed");
}

/// How a REPEATABLE READ block's first statements open it (`SET`,
/// `SHOW`, savepoints, a function call, no table, the extended protocol, a
/// prepared statement), with the deadlock detector on (each
/// shard joining runs the tag, a query) and off: whichever shard took a
/// snapshot at the opening, every shard must have taken it then, under the
/// fence. Two transfers (shard 0 to 1, shard 2 to 1) commit after the
/// opening; the block's sum is the bank's total whatever its snapshot. A
/// shard whose snapshot predates them alone gives 3010 or 2980.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "review18e: a probe that passes"]
async fn review18e_probe_repeatable_read_openings() {
    let mut bad = Vec::new();
    for detect in ["", "deadlock_timeout_ms = 0"] {
        let (_servers, _p, port, keys) = bank_cluster(true, detect).await;
        let w = connect(&url(port)).await.unwrap();
        let k = keys[1];
        let openings: Vec<String> = vec![
            "SET work_mem = '8MB'".into(),
            "SET LOCAL work_mem = '8MB'".into(),
            "SHOW work_mem".into(),
            "SAVEPOINT s".into(),
            "SAVEPOINT s; RELEASE s".into(),
            "SELECT 1".into(),
            "SELECT now()".into(),
            "VALUES (1)".into(),
            "SELECT set_config('work_mem', '8MB', true)".into(),
            "SELECT pg_sleep(0)".into(),
            format!("SELECT balance FROM accounts WHERE id = {k}"),
            format!("PREPARE one AS SELECT balance FROM accounts WHERE id = {k}"),
            "extended".into(),
            "extended prepare".into(),
            "extended set".into(),
        ];
        for opening in openings {
            let c = connect(&url(port)).await.unwrap();
            exec(&c, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
            let opened = match opening.as_str() {
                "extended" => c
                    .query("SELECT balance FROM accounts WHERE id = $1", &[&k])
                    .await
                    .map(|_| ()),
                "extended prepare" => c
                    .prepare("SELECT balance FROM accounts WHERE id = $1")
                    .await
                    .map(|_| ()),
                "extended set" => c
                    .query("SELECT set_config('work_mem', $1, true)", &[&"8MB"])
                    .await
                    .map(|_| ()),
                sql => c.simple_query(sql).await.map(|_| ()),
            };
            if let Err(e) = opened {
                bad.push(format!("{detect:?} {opening}: {}", code(&e)));
                continue;
            }
            exec(&w, &transfer_sql(keys[0], keys[1])).await;
            exec(&w, &transfer_sql(keys[2], keys[1])).await;
            let sum = sum_of(&c, "SELECT sum(balance) FROM accounts").await;
            let _ = c.simple_query("COMMIT").await;
            eprintln!("{detect:?} {opening}: {sum:?}");
            if sum != Ok(TOTAL) {
                bad.push(format!("{detect:?} {opening}: {sum:?}"));
            }
        }
    }
    assert!(bad.is_empty(), "fractured: {bad:#?}");
}

/// With `default_transaction_isolation = 'repeatable read'`, the statements
/// of one simple query, or of one Sync segment of the extended protocol,
/// run in one implicit transaction at REPEATABLE READ: one snapshot, taken
/// at the first. The first reads one shard, slowly (`pg_sleep`), while a
/// transfer from that shard to another commits; the second sums every
/// shard. One PostgreSQL gives the bank's total (the transfer is after the
/// snapshot); the proxy must too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "review18e: a probe that passes"]
async fn review18e_probe_implicit_repeatable_read_blocks() {
    let (_servers, _p, port, keys) = bank_cluster(true, "").await;
    let (a, b) = (keys[1], keys[2]);
    let first = format!("SELECT balance, pg_sleep(1) FROM accounts WHERE id = {a}");
    let sum = "SELECT sum(balance) FROM accounts";
    let w = connect(&url(port)).await.unwrap();
    let mut bad = Vec::new();
    for extended in [false, true] {
        let mut raw = RawClient::connect(port).await;
        raw.query("SET default_transaction_isolation = 'repeatable read'")
            .await;
        if extended {
            for sql in [first.as_str(), sum] {
                raw.send(b'P', &crate::harness::parse("", sql)).await;
                raw.send(b'B', &crate::harness::bind("", &[])).await;
                raw.send(b'E', &[0, 0, 0, 0, 0]).await;
            }
            raw.send(b'S', &[]).await;
        } else {
            let mut q = format!("{first}; {sum}").into_bytes();
            q.push(0);
            raw.send(b'Q', &q).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        exec(&w, &transfer_sql(a, b)).await;
        let reply = raw.until_ready().await;
        let rows: Vec<String> = reply
            .messages
            .iter()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, body)| String::from_utf8_lossy(&body[6..]).into_owned())
            .collect();
        eprintln!(
            "extended {extended}: rows {rows:?}, errors {:?}",
            reply.error_codes()
        );
        let got = rows.last().and_then(|s| s.parse::<i64>().ok());
        if got != Some(TOTAL) {
            bad.push(format!(
                "extended {extended}: {rows:?} {:?}",
                reply.error_codes()
            ));
        }
    }
    assert!(bad.is_empty(), "fractured: {bad:?}");
}

/// Two proxies, transfers through one and sums through the other, and the
/// lock shard (shard 0) crashes and restarts under them. While it is down
/// both sides get errors; once it is back both must work again within a
/// few seconds, no read may be fractured but in the documented window (a
/// commit phase under way when the lock went), and the bank's total holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "review18e: a probe that passes"]
async fn review18e_probe_two_proxies_and_the_lock_shard_restarting() {
    use std::sync::atomic::AtomicUsize;
    let (servers, _a, port, keys) = bank_cluster(true, "control_timeout_ms = 1500").await;
    let b = crate::bank::proxy(&servers, true, "control_timeout_ms = 1500").await;
    let rport = b.addr.port();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok_w, ok_r, fractured) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (stop, ok) = (stop.clone(), ok_w.clone());
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = None;
            let mut n = i;
            while !stop.load(Ordering::Relaxed) {
                if c.is_none() {
                    c = connect(&url(port)).await.ok();
                }
                let Some(cl) = &c else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                n += 1;
                // Rows locked in shard order: no deadlocks between writers.
                let (x, y) = (n % SHARDS, (n + 1) % SHARDS);
                let sql = transfer_sql(keys[x.min(y)], keys[x.max(y)]);
                match cl.simple_query(&sql).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        let _ = cl.simple_query("ROLLBACK").await;
                        if cl.is_closed() {
                            c = None;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    for _ in 0..2 {
        let (stop, ok, fractured) = (stop.clone(), ok_r.clone(), fractured.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = None;
            while !stop.load(Ordering::Relaxed) {
                if c.is_none() {
                    c = connect(&url(rport)).await.ok();
                }
                let Some(cl) = &c else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                match sum_of(cl, "SELECT sum(balance) FROM accounts").await {
                    Ok(s) if s == TOTAL => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(s) => {
                        eprintln!("fractured: {s}");
                        fractured.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        if cl.is_closed() {
                            c = None;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = (ok_w.load(Ordering::Relaxed), ok_r.load(Ordering::Relaxed));
    servers.servers[0].stop("immediate").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    servers.servers[0].start().unwrap();
    let back = Instant::now();
    let mid = (ok_w.load(Ordering::Relaxed), ok_r.load(Ordering::Relaxed));
    // Both sides must make progress again.
    let mut recovered = None;
    while back.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = (ok_w.load(Ordering::Relaxed), ok_r.load(Ordering::Relaxed));
        if now.0 > mid.0 + 5 && now.1 > mid.1 + 5 {
            recovered = Some(back.elapsed());
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let end = (ok_w.load(Ordering::Relaxed), ok_r.load(Ordering::Relaxed));
    eprintln!(
        "before {before:?}, at the restart {mid:?}, recovered after {recovered:?}, end {end:?}, fractured {}",
        fractured.load(Ordering::Relaxed)
    );
    assert!(before.0 > 0 && before.1 > 0, "no load before the crash");
    assert!(recovered.is_some(), "the proxies did not recover");
    // Recovery finishes what the crash left prepared.
    let t = Instant::now();
    loop {
        let mut n = 0;
        for i in 0..SHARDS {
            n += prepared(&servers.connect(i).await).await;
        }
        if n == 0 || t.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = connect(&url(rport)).await.unwrap();
    assert_eq!(
        sum_of(&r, "SELECT sum(balance) FROM accounts").await,
        Ok(TOTAL)
    );
}

/// A 2PC commit holds the fence's commit class from its `PREPARE`s on; a
/// `PREPARE` may wait for a lock — here a deferred primary key's check for
/// the same key inserted, uncommitted, by another block — and so may C's
/// `COMMIT` (its own deferred check). That block's next statement reads
/// every shard and waits in the fence for the commit batch: the commit
/// waits for the block, the block for the commit, and no server's deadlock
/// detector sees the fence; nor does any multi-shard reader of the cluster
/// get through. One PostgreSQL reads the sum (and fails the other
/// transaction's commit with 23505 if the block commits); so must the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18e_a_commit_waiting_for_a_reader_in_the_fence_is_no_deadlock() {
    let (servers, _p, port, keys) = bank_cluster(true, "").await;
    for i in 0..SHARDS {
        let s = servers.connect(i).await;
        exec(&s, "ALTER TABLE accounts DROP CONSTRAINT accounts_pkey, ADD CONSTRAINT accounts_pkey PRIMARY KEY (id) DEFERRABLE INITIALLY DEFERRED").await;
    }
    let mut bad = Vec::new();
    // The key the block holds: on the shard that prepares, then on C (the
    // first shard the transaction writes).
    for (case, shard) in [("a PREPARE", 2), ("C's COMMIT", 1)] {
        let k = key_after(&servers, shard, keys[shard] + 100);
        let block = connect(&url(port)).await.unwrap();
        exec(&block, "BEGIN").await;
        exec(
            &block,
            &format!("INSERT INTO accounts (id, balance) VALUES ({k}, 0)"),
        )
        .await;
        let t = connect(&url(port)).await.unwrap();
        let sql = if shard == 2 {
            format!(
                "BEGIN; UPDATE accounts SET balance = balance - 10 WHERE id = {}; INSERT INTO accounts (id, balance) VALUES ({k}, 10); COMMIT",
                keys[1]
            )
        } else {
            format!(
                "BEGIN; INSERT INTO accounts (id, balance) VALUES ({k}, 10); UPDATE accounts SET balance = balance - 10 WHERE id = {}; COMMIT",
                keys[2]
            )
        };
        let commit =
            tokio::spawn(
                async move { t.simple_query(&sql).await.map(|_| ()).map_err(|e| code(&e)) },
            );
        // The commit's check of `k` waits for the block.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sum = tokio::time::timeout(
            Duration::from_secs(5),
            sum_of(&block, "SELECT sum(balance) FROM accounts"),
        )
        .await;
        let other = connect(&url(port)).await.unwrap();
        let third = tokio::time::timeout(
            Duration::from_secs(3),
            sum_of(&other, "SELECT sum(balance) FROM accounts"),
        )
        .await;
        if sum.is_err() {
            // Let the test go on: a cancel ends a wait in the fence.
            let _ = block.cancel_token().cancel_query(NoTls).await;
        }
        let rollback =
            tokio::time::timeout(Duration::from_secs(5), block.simple_query("ROLLBACK")).await;
        let commit = tokio::time::timeout(Duration::from_secs(5), commit).await;
        eprintln!(
            "{case}: the block's read {sum:?}; another reader {third:?}; the commit {commit:?}"
        );
        if sum != Ok(Ok(TOTAL)) || third != Ok(Ok(TOTAL)) {
            bad.push(format!(
                "{case}: the block's read {sum:?}, another reader {third:?}"
            ));
        }
        assert!(rollback.is_ok(), "{case}: the block's ROLLBACK hung");
        assert!(
            matches!(commit, Ok(Ok(Ok(())))),
            "{case}: the commit {commit:?}"
        );
    }
    assert!(
        bad.is_empty(),
        "reads hung behind a commit waiting for a reader: {bad:?}"
    );
    let r = connect(&url(port)).await.unwrap();
    assert_eq!(
        sum_of(&r, "SELECT sum(balance) FROM accounts").await,
        Ok(TOTAL)
    );
}
