//! Adversarial review (sixth round) of `consistent_reads`, where it meets
//! simple queries run prepared in blocks (`prepare_simple_queries`: a
//! connection parses, before its next `BEGIN`, what an earlier block ran
//! there as written) and extended-protocol pipelines. Each test asserts
//! what one PostgreSQL does or what the README promises (a sum of every
//! balance is the bank's total, or the reader is a deadlock victim) and
//! fails on the code before its fix, or is ignored with the reason.
//! Run one with `cargo test --test integration -- review18f::<name> --nocapture`.

use std::time::Duration;

use crate::bank::{bank_cluster, code, sum_of, transfer_sql, url, values, SHARDS, START};
use crate::harness::{connect, exec, Servers};

const TOTAL: i64 = START * SHARDS as i64;

/// A READ COMMITTED block's first statement reads every shard (not primed:
/// a `$` in its text), and shard 2's connection has a statement queued to
/// be parsed before its next `BEGIN` (an earlier block of the same client
/// ran a one-shard read there as written). The joining shard's answers are
/// then `SET lock_timeout = 1`, the Parse, the restore, and only then its
/// `BEGIN`, tag and statement; its fence share skipped as many
/// ReadyForQuery as the head has, so it was let go at the restore's
/// answer, before the statement there had its snapshot. Here the statement
/// waits on shard 2, before its snapshot, for a lock a transfer does not
/// need (an `ACCESS EXCLUSIVE` lock on the reference table it reads, taken
/// on that shard directly): the transfer from shard 0 to shard 2 committed
/// meanwhile, through a fence nobody held, and the read summed shard 0
/// before it and shard 2 after it (3010). With the share kept, the
/// transfer waits for the read, which is cancelled as a deadlock victim
/// after the deadlock timeout (README, *Stalls under the fence*).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18f_a_pre_begin_parse_keeps_the_joining_shards_fence_share() {
    let (servers, _p, port, keys) = bank_cluster(true, "").await;
    let admin = connect(&url(port)).await.unwrap();
    exec(&admin, "CREATE TABLE countries (code text PRIMARY KEY)").await;
    exec(&admin, "INSERT INTO countries (code) VALUES ('pl')").await;
    let r = connect(&url(port)).await.unwrap();
    let one = format!("SELECT balance FROM accounts WHERE id = {}", keys[2]);
    for q in ["BEGIN", one.as_str(), "COMMIT"] {
        exec(&r, q).await;
    }
    let locker = servers.connect(2).await;
    exec(&locker, "BEGIN").await;
    exec(&locker, "LOCK TABLE countries IN ACCESS EXCLUSIVE MODE").await;
    exec(&r, "BEGIN").await;
    let read = tokio::spawn(async move {
        let sum = sum_of(
            &r,
            "SELECT sum(balance) FROM accounts WHERE EXISTS (SELECT 1 FROM countries WHERE code <> '$')",
        )
        .await;
        let _ = r.simple_query("ROLLBACK").await;
        sum
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = connect(&url(port)).await.unwrap();
    let transfer = transfer_sql(keys[0], keys[2]);
    let moved = tokio::time::timeout(Duration::from_secs(5), t.simple_query(&transfer))
        .await
        .map(|r| r.map(|_| ()).map_err(|e| code(&e)));
    exec(&locker, "ROLLBACK").await;
    let sum = tokio::time::timeout(Duration::from_secs(10), read).await;
    eprintln!("transfer {moved:?}; read {sum:?}");
    let sum = sum.expect("the read ended").unwrap();
    assert!(
        sum == Ok(TOTAL) || sum.as_ref().is_err_and(|e| e.starts_with("40P01")),
        "a read whose joining shard parsed first saw the transfer by halves: {sum:?}"
    );
    assert_eq!(
        sum_of(&t, "SELECT sum(balance) FROM accounts").await,
        Ok(TOTAL)
    );
}

/// The REPEATABLE READ idiom `BEGIN ISOLATION LEVEL REPEATABLE READ; LOCK
/// TABLE t IN SHARE MODE; SELECT ...`: `LOCK` takes no snapshot in
/// PostgreSQL, so the block's snapshot is the first query's after the lock
/// was granted, and it sees every write the lock waited for. Here a writer's
/// block holds a row of `accounts` updated while the `LOCK` is requested,
/// and commits while it waits. One PostgreSQL's `SELECT` then sees the
/// update (1001). Through the proxy the block's snapshot is taken before
/// the `LOCK` on the shards it joins: with `consistent_reads`, every shard
/// runs `SELECT 1` first (the fence's snapshot, as `LOCK` counts as a
/// statement that takes one); without it, a joining shard's deadlock tag
/// (`SELECT pg_advisory_xact_lock_shared(..)`, pipelined with its `BEGIN`)
/// takes it. Either way the `SELECT` reads 1000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18f_a_lock_before_the_first_query_comes_before_the_snapshot() {
    let wrong = lock_then_read(&[(true, ""), (false, "")], false).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The same through the extended protocol (the `LOCK` parsed, described
/// and bound by the driver, as pgjdbc and asyncpg send every statement):
/// the shard joins at the statement's Describe, before its Bind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18f_an_extended_lock_comes_before_the_snapshot() {
    let wrong = lock_then_read(&[(true, ""), (false, "")], true).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A `LOCK` joining a REPEATABLE READ block takes its deadlock tag before
/// the shard's `BEGIN` (see the test above): the detector must still see
/// the lock's wait as the block's. T1 (older) updates its row on shard 0;
/// T2's REPEATABLE READ block locks `accounts` in SHARE mode on every
/// shard: granted on shard 1, waiting on shard 0 for T1; T1's update on
/// shard 1 then waits for T2's lock. Each shard sees one wait and no
/// cycle; the proxy cancels T2, the younger, with 40P01 (PostgreSQL's
/// choice within one server would be whichever waited past its
/// `deadlock_timeout`; here the youngest, as the README says), and T1
/// commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18f_a_lock_in_repeatable_read_is_seen_in_a_deadlock() {
    for consistent in [false, true] {
        let (servers, _p, port, keys) = bank_cluster(consistent, "deadlock_timeout_ms = 300").await;
        let t1 = connect(&url(port)).await.unwrap();
        let t2 = connect(&url(port)).await.unwrap();
        exec(&t1, "BEGIN").await;
        exec(
            &t1,
            &format!(
                "UPDATE accounts SET balance = balance - 1 WHERE id = {}",
                keys[0]
            ),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        exec(&t2, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
        let lock = tokio::spawn(async move {
            let r = t2
                .simple_query("LOCK TABLE accounts IN SHARE MODE")
                .await
                .map(|_| ())
                .map_err(|e| code(&e));
            let _ = t2.simple_query("ROLLBACK").await;
            r
        });
        // T2's lock is granted on shard 1 and waits on shard 0.
        let watch = servers.connect(1).await;
        let mut granted = false;
        for _ in 0..100 {
            let rows = watch
                .simple_query("SELECT 1 FROM pg_locks WHERE mode = 'ShareLock' AND granted AND relation = 'accounts'::regclass")
                .await
                .unwrap();
            if !values(&rows).is_empty() {
                granted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(granted, "T2's SHARE lock was never granted on shard 1");
        let sql = format!(
            "UPDATE accounts SET balance = balance + 1 WHERE id = {}",
            keys[1]
        );
        let update = t1.simple_query(&sql);
        let updated = tokio::time::timeout(Duration::from_secs(10), update).await;
        let locked = tokio::time::timeout(Duration::from_secs(10), lock)
            .await
            .expect("T2's LOCK ended")
            .unwrap();
        assert!(
            locked.as_ref().is_err_and(|e| e.starts_with("40P01")),
            "consistent_reads = {consistent}: T2, the younger, is the victim: {locked:?}"
        );
        assert!(
            matches!(updated, Ok(Ok(_))),
            "consistent_reads = {consistent}: T1 goes on: {updated:?}"
        );
        exec(&t1, "COMMIT").await;
        assert_eq!(
            sum_of(&t1, "SELECT sum(balance) FROM accounts").await,
            Ok(TOTAL)
        );
    }
}

/// The tag a `LOCK` took on a server session is given back before that
/// connection serves anyone again: with one connection per shard, a
/// REPEATABLE READ block locks every shard, commits, and one-shard
/// statements then reuse each connection. No shard holds a tag after
/// (while the block runs, each holds one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18f_a_locks_session_tag_is_given_back_at_the_next_use() {
    let servers = Servers::start(SHARDS);
    let text =
        crate::bank::config_text(&servers, false, "", "").replace("pool_size = 8", "pool_size = 1");
    let p = crate::bank::proxy_text(&text).await;
    let port = p.addr.port();
    let keys = crate::bank::accounts(&servers, port).await;
    let tags = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND classid::int8 >> 16 = 28777";
    let c = connect(&url(port)).await.unwrap();
    exec(&c, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
    exec(&c, "LOCK TABLE accounts IN SHARE MODE").await;
    for i in 0..SHARDS {
        let on = servers.connect(i).await;
        assert_eq!(sum_of(&on, tags).await, Ok(1), "shard {i} in the block");
    }
    exec(&c, "COMMIT").await;
    for k in &keys {
        sum_of(&c, &format!("SELECT balance FROM accounts WHERE id = {k}"))
            .await
            .unwrap();
    }
    for i in 0..SHARDS {
        let on = servers.connect(i).await;
        assert_eq!(
            sum_of(&on, tags).await,
            Ok(0),
            "shard {i} after the next use"
        );
    }
}

/// The README's way round the difference above: with the deadlock
/// detector off and `consistent_reads` off, nothing runs before the `LOCK`
/// on a joining shard, and the read after it sees what it waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18f_without_the_tag_a_lock_comes_before_the_snapshot() {
    let wrong = lock_then_read(&[(false, "deadlock_timeout_ms = 0")], false).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Runs [`locked_read`] on one PostgreSQL and on a bank cluster per
/// `(consistent_reads, [txn] lines)`; what differs from PostgreSQL.
async fn lock_then_read(setups: &[(bool, &str)], extended: bool) -> Vec<String> {
    let oracle = Servers::start(1);
    let (o_reader, o_writer) = (oracle.connect(0).await, oracle.connect(0).await);
    exec(
        &o_reader,
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)",
    )
    .await;
    exec(
        &o_reader,
        &format!("INSERT INTO accounts (id, balance) VALUES (1, {START})"),
    )
    .await;
    let want = locked_read(&o_reader, &o_writer, 1, extended).await;
    assert_eq!(want, Ok(START + 1), "PostgreSQL itself");
    let mut wrong = Vec::new();
    for (consistent, txn) in setups {
        let (_servers, _p, port, keys) = bank_cluster(*consistent, txn).await;
        let reader = connect(&url(port)).await.unwrap();
        let writer = connect(&url(port)).await.unwrap();
        for k in &keys {
            let got = locked_read(&reader, &writer, *k, extended).await;
            if got != want {
                wrong.push(format!(
                    "PostgreSQL reads {want:?} after the LOCK; consistent_reads = {consistent}, [txn] {txn:?}, account {k}: {got:?}"
                ));
            }
        }
    }
    wrong
}

/// A writer's block updates account `k`; the reader's REPEATABLE READ block
/// locks the table (waiting for the writer, which then commits) and reads
/// the account.
async fn locked_read(
    reader: &tokio_postgres::Client,
    writer: &tokio_postgres::Client,
    k: i64,
    extended: bool,
) -> Result<i64, String> {
    exec(writer, "BEGIN").await;
    crate::bank::bump(writer, k).await;
    exec(reader, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
    let sql = "LOCK TABLE accounts IN SHARE MODE";
    let lock = async {
        match extended {
            true => reader.execute(sql, &[]).await.map(|_| ()),
            false => reader.simple_query(sql).await.map(|_| ()),
        }
    };
    tokio::pin!(lock);
    let waited = tokio::time::timeout(Duration::from_millis(400), &mut lock).await;
    assert!(waited.is_err(), "the LOCK did not wait for the writer");
    exec(writer, "COMMIT").await;
    lock.await.map_err(|e| code(&e))?;
    crate::bank::read_and_reset(reader, writer, k).await
}

/// `SHOW` as a REPEATABLE READ block's first statement takes no snapshot
/// in PostgreSQL: a write committed between it and the first `SELECT` is
/// seen (1001). Through the proxy the shard the `SHOW` joined had its
/// snapshot taken by the deadlock tag in its `BEGIN` (with
/// `consistent_reads`, every shard by the fence's), and the `SELECT` read
/// 1000. Simple and extended protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18f_a_show_first_takes_no_snapshot() {
    let oracle = Servers::start(1);
    let (o_reader, o_writer) = (oracle.connect(0).await, oracle.connect(0).await);
    exec(
        &o_reader,
        &format!("CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL); INSERT INTO accounts VALUES (1, {START})"),
    )
    .await;
    let mut wrong = Vec::new();
    for extended in [false, true] {
        let want = shown_read(&o_reader, &o_writer, 1, extended).await;
        assert_eq!(want, Ok(START + 1), "PostgreSQL itself");
        for consistent in [false, true] {
            let (_servers, _p, port, keys) = bank_cluster(consistent, "").await;
            let reader = connect(&url(port)).await.unwrap();
            let writer = connect(&url(port)).await.unwrap();
            for k in &keys {
                let got = shown_read(&reader, &writer, *k, extended).await;
                if got != want {
                    wrong.push(format!("consistent_reads = {consistent}, extended {extended}, account {k}: {got:?}, PostgreSQL {want:?}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `BEGIN ISOLATION LEVEL REPEATABLE READ; SHOW ...; SET TRANSACTION
/// ISOLATION LEVEL SERIALIZABLE` (and the same from READ COMMITTED to
/// REPEATABLE READ), then a transfer over two shards: the shard the `SHOW`
/// joined starts its transaction over with the new level holding one
/// deadlock tag, not two (PostgreSQL refuses to `PREPARE TRANSACTION` a
/// transaction holding the same lock at session and at transaction
/// level), and the block commits as in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18f_a_level_set_after_a_show_holds_one_tag_and_commits() {
    let twice = "SELECT count(*) - count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND classid::int8 >> 16 = 28777";
    for consistent in [false, true] {
        let (servers, _p, port, keys) = bank_cluster(consistent, "").await;
        let c = connect(&url(port)).await.unwrap();
        for (begin, level) in [
            ("BEGIN ISOLATION LEVEL REPEATABLE READ", "serializable"),
            ("BEGIN", "repeatable read"),
        ] {
            exec(&c, begin).await;
            exec(&c, "SHOW work_mem").await;
            exec(&c, &format!("SET TRANSACTION ISOLATION LEVEL {level}")).await;
            for i in 0..SHARDS {
                let on = servers.connect(i).await;
                assert_eq!(sum_of(&on, twice).await, Ok(0), "{begin}: shard {i}");
            }
            let shown = values(&c.simple_query("SHOW transaction_isolation").await.unwrap());
            assert_eq!(shown, vec![level.to_string()], "{begin}");
            let transfer = format!(
                "UPDATE accounts SET balance = balance - 10 WHERE id = {}; UPDATE accounts SET balance = balance + 10 WHERE id = {}; COMMIT",
                keys[0], keys[1]
            );
            let r = c
                .simple_query(&transfer)
                .await
                .map(|_| ())
                .map_err(|e| code(&e));
            assert!(r.is_ok(), "consistent_reads = {consistent}, {begin}: {r:?}");
            assert_eq!(
                sum_of(&c, "SELECT sum(balance) FROM accounts").await,
                Ok(TOTAL)
            );
        }
        assert_eq!(
            sum_of(
                &c,
                &format!("SELECT balance FROM accounts WHERE id = {}", keys[1])
            )
            .await,
            Ok(START + 20)
        );
    }
}

/// A REPEATABLE READ block runs `SHOW`, a write to account `k` commits,
/// then the block reads it.
async fn shown_read(
    reader: &tokio_postgres::Client,
    writer: &tokio_postgres::Client,
    k: i64,
    extended: bool,
) -> Result<i64, String> {
    exec(reader, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
    match extended {
        true => reader.query("SHOW work_mem", &[]).await.map(|_| ()),
        false => reader.simple_query("SHOW work_mem").await.map(|_| ()),
    }
    .map_err(|e| code(&e))?;
    crate::bank::bump(writer, k).await;
    crate::bank::read_and_reset(reader, writer, k).await
}
