//! Adversarial review (ninth round) of `consistent_reads`: where a
//! REPEATABLE READ block takes its snapshot when its first statements are
//! ones the proxy runs itself or that PostgreSQL runs without a snapshot
//! (SQL `PREPARE` and `DEALLOCATE`, savepoint commands, their extended
//! protocol Describes, `CHECKPOINT`), compared session by session with one
//! PostgreSQL; SERIALIZABLE across shards; multi-shard writes of every kind
//! and readers that go away in the fence. Each test asserts what one
//! PostgreSQL does or what the README promises and fails on the code
//! before its fix, or is ignored with the reason. The probes
//! (`review18i_probe_*`, ignored) pass: the suspicions that did not hold.
//! Run one with `cargo test --test integration -- review18i::<name> --nocapture`.

use std::time::{Duration, Instant};

use crate::bank::{
    bank_cluster, code, oracle_accounts, paused_transfer, sum_of, transfer_sql, until_prepared_on,
    url, values, SHARDS, START,
};
use crate::harness::{connect, exec, value, RawClient, Servers};

const TOTAL: i64 = START * SHARDS as i64;

/// The steps the sessions compared with one PostgreSQL share: a one-shard
/// commit on another client (`w:`) of a key `{k}`, its undoing, the sum of
/// every balance, and a REPEATABLE READ block's start.
const BUMP: &str = "w:UPDATE accounts SET balance = balance + 1 WHERE id = {k}";
const RESET: &str = "w:UPDATE accounts SET balance = 1000 WHERE id = {k}";
const SUM: &str = "SELECT sum(balance) FROM accounts";
const RR: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ";

/// `steps`, then a one-shard commit on another client, the block's SUM,
/// `ROLLBACK` and the commit undone.
fn then_read(steps: &[&'static str]) -> Vec<&'static str> {
    let mut v = steps.to_vec();
    v.extend([BUMP, SUM, "ROLLBACK", RESET]);
    v
}

/// Runs `steps` on `c` (a step starting `w:` on `w`, with `{k}` as the key
/// `k`), each as `ok <sum of its rows' first column>`, its SQLSTATE, or
/// `hang` after 2 s (the rest is not run).
async fn session(
    c: &tokio_postgres::Client,
    w: &tokio_postgres::Client,
    k: i64,
    steps: &[&str],
) -> Vec<String> {
    let mut out = Vec::new();
    for step in steps {
        let (on, sql) = match step.strip_prefix("w:") {
            Some(s) => (w, s),
            None => (c, *step),
        };
        let sql = sql.replace("{k}", &k.to_string());
        if let Some(x) = sql.strip_prefix("x:") {
            // Through the extended protocol: the rows are not summed.
            match tokio::time::timeout(Duration::from_secs(2), on.execute(x, &[])).await {
                Err(_) => {
                    out.push("hang".to_string());
                    return out;
                }
                Ok(Ok(_)) => out.push("ok 0".to_string()),
                Ok(Err(e)) => out.push(e.code().map_or("-".into(), |c| c.code().to_string())),
            }
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(2), on.simple_query(&sql)).await {
            Err(_) => {
                out.push("hang".to_string());
                return out;
            }
            Ok(Ok(m)) => {
                let sum: i64 = values(&m)
                    .iter()
                    .filter_map(|v| v.parse::<i64>().ok())
                    .sum();
                out.push(format!("ok {sum}"));
            }
            Ok(Err(e)) => out.push(e.code().map_or("-".into(), |c| c.code().to_string())),
        }
    }
    out
}

/// Each of `sessions` on one PostgreSQL and through the proxy with
/// `consistent_reads` on, on fresh connections: what differs.
async fn against_postgresql(sessions: &[Vec<&str>]) -> Vec<String> {
    let oracle = oracle_accounts(3).await;
    let (_servers, _p, port, keys) = bank_cluster(true, "").await;
    let mut wrong = Vec::new();
    for steps in sessions {
        let want = session(&oracle.connect(0).await, &oracle.connect(0).await, 1, steps).await;
        let c = connect(&url(port)).await.unwrap();
        let w = connect(&url(port)).await.unwrap();
        let got = session(&c, &w, keys[1], steps).await;
        if got != want {
            wrong.push(format!("{steps:?}: proxy {got:?}, PostgreSQL {want:?}"));
        }
    }
    wrong
}

/// SQL `PREPARE` in a block: the proxy checked the statement on a pooled
/// connection of the default shard, outside the client's block. So it
/// took no snapshot for the block, where PostgreSQL's `PREPARE` takes the
/// transaction's snapshot (`PlannedStmtRequiresSnapshot`): in a
/// REPEATABLE READ block a one-shard commit after the `PREPARE` was seen
/// (3001 for 3000) and a `SET TRANSACTION ISOLATION LEVEL` after it
/// accepted (PostgreSQL: `25001`) — `DEALLOCATE`, answered by the proxy
/// alone, alike; the check did not see a table the block created
/// (`42P01`); and after the block's `LOCK ... ACCESS EXCLUSIVE` the check
/// waited behind the block's own lock for good (the session hung). Now
/// both take the block's snapshot (under `consistent_reads`, on every
/// shard at once) and the `PREPARE` is checked on the block's own
/// connection to the default shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18i_prepare_in_a_block_runs_in_the_block() {
    let sessions = vec![
        vec![
            RR,
            "PREPARE x AS SELECT 1",
            BUMP,
            SUM,
            "ROLLBACK",
            "DEALLOCATE x",
            RESET,
        ],
        then_read(&["PREPARE y AS SELECT 1", RR, "DEALLOCATE y"]),
        vec![
            RR,
            "PREPARE x AS SELECT 1",
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "ROLLBACK",
            "DEALLOCATE x",
        ],
        vec![
            "BEGIN",
            "CREATE TABLE made (x int)",
            "PREPARE m AS SELECT x FROM made",
            "EXECUTE m",
            "ROLLBACK",
        ],
        vec![
            "BEGIN",
            "LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE",
            "PREPARE l AS SELECT balance FROM accounts",
            "EXECUTE l",
            "ROLLBACK",
        ],
    ];
    let wrong = against_postgresql(&sessions).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// In a REPEATABLE READ block whose shards joined with a `SHOW` or a
/// `LOCK` (no snapshot taken yet, as in PostgreSQL), a `SAVEPOINT`,
/// `RELEASE` or `ROLLBACK TO` (a `TransactionStmt`: PostgreSQL takes no
/// snapshot for it) was counted as a statement that takes one: the proxy
/// took the block's snapshot on every shard there, so a one-shard commit
/// after it was missed by the block's first query (3000 where
/// PostgreSQL reads 3001), and a `SET TRANSACTION ISOLATION LEVEL` after
/// `SAVEPOINT` and `RELEASE` was refused with `25001` (PostgreSQL accepts
/// it: no query ran, no subtransaction is open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18i_savepoint_commands_take_no_snapshot() {
    let sessions = vec![
        then_read(&[RR, "SHOW work_mem", "SAVEPOINT a"]),
        then_read(&[RR, "SAVEPOINT a", "SHOW work_mem", "ROLLBACK TO a"]),
        then_read(&[
            RR,
            "SAVEPOINT a",
            "LOCK TABLE accounts IN ACCESS SHARE MODE",
            "RELEASE a",
        ]),
        then_read(&[
            "BEGIN",
            "SHOW work_mem",
            "SAVEPOINT a",
            "RELEASE a",
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        ]),
    ];
    let wrong = against_postgresql(&sessions).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The extended protocol's statement Describe (tokio-postgres prepares
/// every statement so) of a `SAVEPOINT`, `RELEASE`, `ROLLBACK TO` or
/// `SET` went to a shard, which joined the block for it: in a REPEATABLE
/// READ block that took the block's snapshot (on every shard at once under
/// `consistent_reads`) where PostgreSQL takes none, so a one-shard commit
/// after it was missed by the block's first query (3000 where PostgreSQL
/// reads 3001), and a `SET TRANSACTION ISOLATION LEVEL` after `SAVEPOINT`
/// and `RELEASE` was refused with `25001`. Now the session describes the
/// statements it runs itself (no result columns), as in a failed block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18i_describing_a_savepoint_or_set_takes_no_snapshot() {
    let sessions = vec![
        then_read(&[RR, "x:SAVEPOINT a", "x:SHOW work_mem", "x:ROLLBACK TO a"]),
        then_read(&[
            RR,
            "x:SAVEPOINT a",
            "x:LOCK TABLE accounts IN ACCESS SHARE MODE",
            "x:RELEASE a",
        ]),
        then_read(&[RR, "x:SET LOCAL work_mem = '8MB'"]),
        then_read(&[
            "BEGIN",
            "x:SAVEPOINT a",
            "x:RELEASE a",
            "x:SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        ]),
    ];
    let wrong = against_postgresql(&sessions).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `CHECKPOINT` takes no snapshot in PostgreSQL
/// (`PlannedStmtRequiresSnapshot`), but the proxy counted it as a
/// statement that does: first in a REPEATABLE READ block it took the
/// block's snapshot (on every shard at once), so a one-shard commit after
/// it was missed (3000 where PostgreSQL reads 3001), simple and extended
/// protocol alike; and in a READ COMMITTED block a `SET TRANSACTION
/// ISOLATION LEVEL` after it was refused with `25001`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18i_a_checkpoint_takes_no_snapshot() {
    let sessions = vec![
        then_read(&[RR, "CHECKPOINT"]),
        then_read(&[RR, "x:CHECKPOINT"]),
        then_read(&[
            "BEGIN",
            "CHECKPOINT",
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            BUMP,
            SUM,
            "x:SELECT 1",
        ]),
    ];
    let wrong = against_postgresql(&sessions).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `BEGIN; NOTIFY ...` (or `LISTEN`, `UNLISTEN`) `; SET TRANSACTION
/// ISOLATION LEVEL REPEATABLE READ`: PostgreSQL accepts it (neither takes a
/// snapshot); the proxy refuses it with `25001`. Accepting it means
/// starting the shard the `NOTIFY` joined over at the new level (its
/// deadlock tag took a snapshot there), which would drop the `NOTIFY`:
/// only `SET`s and savepoints are replayed. Not fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "issue 18: SET TRANSACTION after NOTIFY/LISTEN/UNLISTEN refused 25001; a restarted shard would drop them (README limits)"]
async fn review18i_set_transaction_after_notify_is_accepted() {
    let sessions = vec![
        vec![
            "BEGIN",
            "NOTIFY foo",
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "ROLLBACK",
        ],
        vec![
            "BEGIN",
            "LISTEN foo",
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "ROLLBACK",
            "UNLISTEN *",
        ],
    ];
    let wrong = against_postgresql(&sessions).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Two SERIALIZABLE blocks each read every account and then take 100
/// from a different one: a write skew. One PostgreSQL lets one of them
/// commit and fails the other with `40001` (each read what the other
/// wrote: a dangerous structure). Through the proxy the two accounts live
/// on two shards: each shard sees one read-write conflict only, so both
/// commit — serializability is each shard's, not the cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "issue 18: SERIALIZABLE is each shard's own; a write skew across shards commits (README limits)"]
async fn review18i_a_write_skew_across_shards_is_not_serializable() {
    async fn skew(
        t1: &tokio_postgres::Client,
        t2: &tokio_postgres::Client,
        a: i64,
        b: i64,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let steps: Vec<(&tokio_postgres::Client, String)> = vec![
            (t1, "BEGIN ISOLATION LEVEL SERIALIZABLE".into()),
            (t2, "BEGIN ISOLATION LEVEL SERIALIZABLE".into()),
            (t1, "SELECT sum(balance) FROM accounts".into()),
            (t2, "SELECT sum(balance) FROM accounts".into()),
            (
                t1,
                format!("UPDATE accounts SET balance = balance - 100 WHERE id = {a}"),
            ),
            (
                t2,
                format!("UPDATE accounts SET balance = balance - 100 WHERE id = {b}"),
            ),
            (t1, "COMMIT".into()),
            (t2, "COMMIT".into()),
        ];
        for (c, sql) in steps {
            out.push(match c.simple_query(&sql).await {
                Ok(_) => "ok".to_string(),
                Err(e) => e.code().map_or("-".into(), |c| c.code().to_string()),
            });
        }
        out
    }
    let oracle = oracle_accounts(3).await;
    let want = skew(&oracle.connect(0).await, &oracle.connect(0).await, 1, 2).await;
    assert!(
        want.contains(&"40001".to_string()),
        "PostgreSQL itself: {want:?}"
    );
    let (_servers, _p, port, keys) = bank_cluster(true, "").await;
    let got = skew(
        &connect(&url(port)).await.unwrap(),
        &connect(&url(port)).await.unwrap(),
        keys[1],
        keys[2],
    )
    .await;
    assert_eq!(got, want, "a write skew across shards");
}

/// tokio-postgres prepares each statement (Parse, Describe, Sync) before
/// it binds and executes it. The Describe of a utility statement (`DO`,
/// `CREATE TEMP TABLE`, `ANALYZE`, `COMMENT`, SQL `PREPARE`, `DEALLOCATE`)
/// in a REPEATABLE READ block joined a shard the way a query does, taking
/// the block's snapshot (on every shard at once) at the Describe, where
/// PostgreSQL takes it at the statement's Execute (its Parse takes none):
/// a one-shard commit between the two was missed by the block (3000 where
/// PostgreSQL reads 3001). The shard now joins as for a `SHOW`, and the
/// Bind takes the snapshot everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18i_describing_a_utility_statement_takes_no_snapshot() {
    async fn run(
        c: &tokio_postgres::Client,
        w: &tokio_postgres::Client,
        k: i64,
        utility: &str,
    ) -> String {
        exec(c, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
        let prepared = c.prepare(utility).await;
        exec(
            w,
            &format!("UPDATE accounts SET balance = balance + 1 WHERE id = {k}"),
        )
        .await;
        let ran = match prepared {
            Ok(st) => c.execute(&st, &[]).await.map(|_| ()).map_err(|e| code(&e)),
            Err(e) => Err(code(&e)),
        };
        let sum = sum_of(c, "SELECT sum(balance) FROM accounts").await;
        let _ = c.simple_query("ROLLBACK").await;
        exec(
            w,
            &format!("UPDATE accounts SET balance = {START} WHERE id = {k}"),
        )
        .await;
        let _ = c.simple_query("DEALLOCATE ALL").await;
        format!("{ran:?} {sum:?}")
    }
    let oracle = oracle_accounts(3).await;
    let (_servers, _p, port, keys) = bank_cluster(true, "").await;
    let mut wrong = Vec::new();
    for u in [
        "DO $$BEGIN END$$",
        "CREATE TEMP TABLE made (x int)",
        "ANALYZE accounts",
        "COMMENT ON TABLE accounts IS 'x'",
        "PREPARE x AS SELECT 1",
        "DEALLOCATE ALL",
    ] {
        let want = run(&oracle.connect(0).await, &oracle.connect(0).await, 1, u).await;
        let c = connect(&url(port)).await.unwrap();
        let got = run(&c, &connect(&url(port)).await.unwrap(), keys[1], u).await;
        if got != want {
            wrong.push(format!("{u}: proxy {got}, PostgreSQL {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Under transfers between shards 1 and 2, a REPEATABLE READ block
/// prepares a utility statement (its shard joins without a snapshot, see
/// above), runs it, and sums every account: each sum is the bank's total
/// (the Bind took the snapshot on every shard at once, under the fence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18i_a_utility_statement_prepared_first_is_whole() {
    let (servers, _p, port, keys) =
        bank_cluster(true, "test_failpoint = \"after_decision:pause=1500\"").await;
    let c = connect(&url(port)).await.unwrap();
    for _ in 0..4 {
        let t = paused_transfer(&servers, port, keys[1], keys[2]).await;
        exec(&c, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
        let st = c.prepare("DO $$BEGIN END$$").await.unwrap();
        c.execute(&st, &[]).await.unwrap();
        let sum = sum_of(&c, "SELECT sum(balance) FROM accounts").await;
        exec(&c, "COMMIT").await;
        assert_eq!(sum, Ok(TOTAL), "the block saw half of a transfer");
        t.await.unwrap().unwrap();
    }
}

/// The consistent-read fence's advisory locks granted on shard 0 (the
/// lock shard): `LOCK_KEY` as PostgreSQL shows a one-key lock.
const FENCE_LOCKS: &str = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885955443 AND objid = 1801875043 AND objsubid = 1 AND granted";

/// After `what`: a transfer and a sum go through at once (each within 3 s;
/// a transfer pauses after its decision here) and, once idle, the fence's
/// lock is given back.
async fn fence_free(servers: &Servers, port: u16, keys: &[i64], what: &str) {
    let w = connect(&url(port)).await.unwrap();
    let t = tokio::time::timeout(
        Duration::from_secs(3),
        w.simple_query(&transfer_sql(keys[0], keys[2])),
    )
    .await;
    assert!(matches!(t, Ok(Ok(_))), "{what}: a transfer after it: {t:?}");
    let s = tokio::time::timeout(
        Duration::from_secs(3),
        sum_of(&w, "SELECT sum(balance) FROM accounts"),
    )
    .await;
    assert_eq!(s, Ok(Ok(TOTAL)), "{what}: a sum after it");
    let lock_shard = servers.connect(0).await;
    let t = Instant::now();
    while value(&lock_shard, FENCE_LOCKS).await != "0" {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{what}: the fence's lock is still held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reader that goes away while it waits in the fence behind a transfer
/// paused after its decision — its client sends Terminate, or closes its
/// socket, in autocommit, in a REPEATABLE READ block, for a `FOR UPDATE`
/// read and an extended-protocol portal — or whose multi-statement query
/// fails mid-way (a multi-shard division by zero, in autocommit and in a
/// REPEATABLE READ block): nothing is left behind (`fence_free`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "review18i: a probe that passes"]
async fn review18i_probe_readers_gone_in_the_fence_leave_nothing() {
    let (servers, _p, port, keys) =
        bank_cluster(true, "test_failpoint = \"after_decision:pause=800\"").await;
    let query = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        b
    };
    let rr_sum = "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT sum(balance) FROM accounts";
    for (what, sql, terminate) in [
        ("terminate", "SELECT sum(balance) FROM accounts", true),
        ("close", "SELECT sum(balance) FROM accounts", false),
        ("rr close", rr_sum, false),
        ("rr terminate", rr_sum, true),
        (
            "for update close",
            "SELECT balance FROM accounts FOR UPDATE",
            false,
        ),
    ] {
        let t = paused_transfer(&servers, port, keys[1], keys[2]).await;
        let mut raw = RawClient::connect(port).await;
        raw.send(b'Q', &query(sql)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if terminate {
            raw.send(b'X', &[]).await;
        }
        drop(raw);
        let _ = t.await;
        fence_free(&servers, port, &keys, what).await;
    }
    let t = paused_transfer(&servers, port, keys[1], keys[2]).await;
    let mut raw = RawClient::connect(port).await;
    raw.send(
        b'P',
        &crate::harness::parse("", "SELECT balance FROM accounts"),
    )
    .await;
    raw.send(b'B', &crate::harness::bind("", &[])).await;
    raw.send(b'E', &[0, 0, 0, 0, 0]).await;
    raw.send(b'S', &[]).await;
    raw.send(b'X', &[]).await;
    drop(raw);
    let _ = t.await;
    fence_free(&servers, port, &keys, "extended terminate").await;
    let c = connect(&url(port)).await.unwrap();
    for (what, sql) in [
        (
            "error mid-query",
            "SELECT sum(balance) FROM accounts; SELECT balance / 0 FROM accounts; SELECT 1",
        ),
        (
            "rr error mid-query",
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT balance / 0 FROM accounts; COMMIT",
        ),
    ] {
        let t = paused_transfer(&servers, port, keys[1], keys[2]).await;
        let r = c.simple_query(sql).await.map_err(|e| code(&e));
        assert!(
            matches!(&r, Err(e) if e.starts_with("22012")),
            "{what}: {r:?}"
        );
        let _ = c.simple_query("ROLLBACK").await;
        let _ = t.await;
        fence_free(&servers, port, &keys, what).await;
    }
}

/// Multi-shard writes in autocommit, each committed by two-phase commit
/// and paused after its decision: a read of every account in that commit
/// phase sees each whole (the count and sum before it or after it) —
/// `UPDATE` of every shard, an implicit block of two `UPDATE`s, a split
/// `INSERT`, `DELETE`, `COPY FROM STDIN`, `INSERT ... SELECT` of
/// `VALUES`, `TRUNCATE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "review18i: a probe that passes"]
async fn review18i_probe_multi_shard_writes_are_seen_whole() {
    let (servers, _p, port, keys) =
        bank_cluster(true, "test_failpoint = \"after_decision:pause=1000\"").await;
    let map = pieskieo::router::ShardMap::from_config(&crate::bank::config(&servers, false, ""));
    // New keys on shards 1 and 2.
    let fresh: Vec<i64> = [1usize, 2]
        .iter()
        .map(|&s| {
            (101..)
                .find(|k| {
                    !keys.contains(k)
                        && matches!(
                            pieskieo::router::plan(&format!("SELECT 1 FROM accounts WHERE id = {k}"), &map),
                            Ok(pieskieo::router::Plan::Forward { route: pieskieo::router::Route::One(x), .. }) if x.0 as usize == s
                        )
                })
                .unwrap()
        })
        .collect();
    let (a, b, k1, k2) = (fresh[0], fresh[1], keys[1], keys[2]);
    let state = "SELECT count(*) * 100000 + coalesce(sum(balance), 0) FROM accounts";
    let writes = [
        "UPDATE accounts SET balance = balance + 1".to_string(),
        format!("UPDATE accounts SET balance = balance - 1 WHERE id = {k1}; UPDATE accounts SET balance = balance + 1 WHERE id = {k2}"),
        format!("INSERT INTO accounts (id, balance) VALUES ({a}, 5), ({b}, 5)"),
        format!("DELETE FROM accounts WHERE id IN ({a}, {b})"),
        "COPY accounts (id, balance) FROM STDIN".to_string(),
        format!("DELETE FROM accounts WHERE id IN ({a}, {b})"),
        format!("INSERT INTO accounts (id, balance) SELECT x, 5 FROM (VALUES ({a}), ({b})) v(x)"),
        "TRUNCATE accounts".to_string(),
    ];
    let r = connect(&url(port)).await.unwrap();
    for sql in writes {
        let before = sum_of(&r, state).await;
        let copy = sql.starts_with("COPY");
        let rows = format!("{a}\t5\n{b}\t5\n");
        let w = tokio::spawn(async move {
            if copy {
                let mut raw = RawClient::connect(port).await;
                let mut q = sql.into_bytes();
                q.push(0);
                raw.send(b'Q', &q).await;
                while raw.read().await.0 != b'G' {}
                raw.send(b'd', rows.as_bytes()).await;
                raw.send(b'c', &[]).await;
                let reply = raw.until_ready().await;
                return reply.error_codes().is_empty();
            }
            let c = connect(&url(port)).await.unwrap();
            c.simple_query(&sql).await.is_ok()
        });
        until_prepared_on(&servers, &[0, 1, 2], Duration::from_millis(200)).await;
        let during = sum_of(&r, state).await;
        assert!(w.await.unwrap(), "the write failed");
        let after = sum_of(&r, state).await;
        assert!(
            during == before || during == after,
            "a write seen by halves: before {before:?}, during {during:?}, after {after:?}"
        );
    }
}
