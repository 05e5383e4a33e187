//! Adversarial review (seventh round) of `consistent_reads`: the extended
//! protocol's Sync segments that a Flush splits, pipelines, portals with
//! row limits, savepoints and writes in REPEATABLE READ blocks, and
//! statement forms. Each test asserts what one PostgreSQL does or what the
//! README promises (a sum of every balance is the bank's total, or the
//! reader gets a documented error) and fails on the code before its fix,
//! or is ignored with the reason.
//! Run one with `cargo test --test integration -- review18g::<name> --nocapture`.

use std::time::Duration;

use crate::bank::{bank_cluster, sum_of, transfer_sql, url, SHARDS, START};
use crate::harness::{bind, connect, exec, parse, RawClient, Reply};

const TOTAL: i64 = START * SHARDS as i64;

/// The first column of every DataRow of `reply`, as text.
fn first_columns(reply: &Reply) -> Vec<String> {
    reply
        .messages
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| String::from_utf8_lossy(&b[6..]).into_owned())
        .collect()
}

/// Sends Parse, Bind and Execute of `sql` (unnamed, no parameters).
async fn send_portal(raw: &mut RawClient, sql: &str) {
    raw.send(b'P', &parse("", sql)).await;
    raw.send(b'B', &bind("", &[])).await;
    raw.send(b'E', &[0, 0, 0, 0, 0]).await;
}

/// Reads a Flush's answers up to the Execute's CommandComplete (or error).
async fn until_executed(raw: &mut RawClient) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        let (t, b) = raw.read().await;
        let end = t == b'C' || t == b'E';
        got.push((t, b));
        if end {
            return got;
        }
    }
}

/// With `default_transaction_isolation = 'repeatable read'`, one Sync
/// segment of the extended protocol is one implicit transaction at
/// REPEATABLE READ: its snapshot is taken at its first statement and kept
/// to the Sync. Here the first statement reads one shard (shard 1) and the
/// client sends a Flush and reads its answer, as pipelining drivers do;
/// a transfer from shard 1 to shard 2 then commits; then the segment's
/// second statement sums every shard, and Sync. One PostgreSQL answers
/// the bank's total (the transfer came after the snapshot). The proxy ran
/// the first statement on the segment's own connection, outside any block
/// and outside the fence, and joined the other shards at the second, with
/// snapshots taken then: shard 1 before the transfer, shard 2 after it
/// (3010). The README promises every REPEATABLE READ block one snapshot
/// taken on every shard at once, "however the client set the level".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18g_a_segment_split_by_a_flush_keeps_one_snapshot() {
    let (_servers, _p, port, keys) = bank_cluster(true, "").await;
    let (a, b) = (keys[1], keys[2]);
    let w = connect(&url(port)).await.unwrap();
    let mut raw = RawClient::connect(port).await;
    raw.query("SET default_transaction_isolation = 'repeatable read'")
        .await;
    send_portal(
        &mut raw,
        &format!("SELECT balance FROM accounts WHERE id = {a}"),
    )
    .await;
    raw.send(b'H', &[]).await;
    let first = until_executed(&mut raw).await;
    assert!(first.iter().any(|(t, _)| *t == b'D'), "{first:?}");
    exec(&w, &transfer_sql(a, b)).await;
    send_portal(&mut raw, "SELECT sum(balance) FROM accounts").await;
    raw.send(b'S', &[]).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), raw.until_ready())
        .await
        .expect("the segment never ended");
    assert!(reply.error_codes().is_empty(), "{:?}", reply.error_codes());
    assert_eq!(
        first_columns(&reply),
        [TOTAL.to_string()],
        "one REPEATABLE READ segment saw the transfer on one shard only"
    );
    assert_eq!(
        sum_of(&w, "SELECT sum(balance) FROM accounts").await,
        Ok(TOTAL)
    );
}

/// A REPEATABLE READ block whose first statement takes no snapshot
/// (`SHOW`, with the deadlock detector off: no tag query either) joins one
/// shard without one. A statement prepared next through the extended
/// protocol (tokio-postgres's `prepare`: Parse, Describe, Sync) is parsed
/// on that shard, and parse analysis takes the block's snapshot there —
/// outside the fence, the other shards not joined. A transfer from that
/// shard to another commits; the prepared sum then runs. One PostgreSQL
/// gives the bank's total (the snapshot came before the transfer); the
/// README promises the block one snapshot taken on every shard at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18g_a_describe_after_show_takes_the_snapshot_everywhere() {
    let (_servers, _p, port, keys) = bank_cluster(true, "deadlock_timeout_ms = 0").await;
    let w = connect(&url(port)).await.unwrap();
    let r = connect(&url(port)).await.unwrap();
    // The default shard (0) joins for the SHOW; move money from it.
    let (a, b) = (keys[0], keys[2]);
    exec(&r, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
    exec(&r, "SHOW transaction_isolation").await;
    let every = r.prepare("SELECT balance FROM accounts").await.unwrap();
    exec(&w, &transfer_sql(a, b)).await;
    let got: i64 = tokio::time::timeout(Duration::from_secs(10), r.query(&every, &[]))
        .await
        .expect("the read never ended")
        .unwrap()
        .iter()
        .map(|row| row.get::<_, i64>(0))
        .sum();
    exec(&r, "COMMIT").await;
    assert_eq!(
        got, TOTAL,
        "the block's snapshot was taken on one shard first"
    );
}

/// A key of `accounts` on `shard` other than `not`, and whether it sorts
/// before it.
fn another_key_on(servers: &crate::harness::Servers, shard: usize, not: i64) -> (i64, bool) {
    use pieskieo::router::{KeyValue, ShardMap};
    let map = ShardMap::from_config(&crate::bank::config(servers, false, ""));
    let k = (1..100_000i64)
        .find(|k| {
            *k != not
                && map.tables["accounts"]
                    .shard_for(&KeyValue::Int(*k), map.shards)
                    .unwrap()
                    .0 as usize
                    == shard
        })
        .unwrap();
    (k, k < not)
}

/// `SELECT ... ORDER BY id FOR UPDATE` over every shard, in autocommit, as
/// a READ COMMITTED statement: on one PostgreSQL it takes one snapshot and
/// locks the rows in order; a row another transaction updated and
/// committed after the snapshot is re-read at its newest version
/// (EvalPlanQual), and a row it already locked cannot be updated until it
/// ends. So a transfer never shows by halves: either both its rows were
/// locked after it committed (both new) or it waits. Here the read waits
/// on shard 1 for a row an unrelated transaction holds (an account that
/// sorts before the transfer's), while shards 0 and 2 answer and end
/// their own part; a transfer from shard 1 to shard 2 then commits (the
/// fence was let go at the Bind, or by the stall watcher at the row-lock
/// wait). Once the lock goes, shard 1 re-reads the transfer's source row
/// at its new balance, shard 2 answered the old one: the rows sum to
/// 2990. The README promises such a wait "the EvalPlanQual semantics of
/// READ COMMITTED on one PostgreSQL"; one PostgreSQL sums to 3000 (or
/// reports a deadlock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18g_a_for_update_read_waiting_on_one_shard_is_whole() {
    let (servers, _p, port, keys) = bank_cluster(true, "").await;
    let (a, b) = (keys[1], keys[2]);
    let (c, before) = another_key_on(&servers, 1, a);
    let w = connect(&url(port)).await.unwrap();
    exec(
        &w,
        &format!("INSERT INTO accounts (id, balance) VALUES ({c}, 0)"),
    )
    .await;
    let locker = servers.connect(1).await;
    exec(&locker, "BEGIN").await;
    exec(
        &locker,
        &format!("SELECT 1 FROM accounts WHERE id = {c} FOR UPDATE"),
    )
    .await;
    let order = if before { "ASC" } else { "DESC" };
    let r = connect(&url(port)).await.unwrap();
    let read = tokio::spawn(async move {
        sum_of(
            &r,
            &format!("SELECT balance FROM accounts ORDER BY id {order} FOR UPDATE"),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let moved = tokio::time::timeout(Duration::from_secs(5), w.simple_query(&transfer_sql(a, b)))
        .await
        .map(|r| r.map(|_| ()).map_err(|e| crate::bank::code(&e)));
    exec(&locker, "COMMIT").await;
    let sum = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the read ended")
        .unwrap();
    eprintln!("transfer {moved:?}; read {sum:?}");
    assert!(
        sum == Ok(TOTAL) || sum.as_ref().is_err_and(|e| e.starts_with("40P01")),
        "a FOR UPDATE read saw a transfer by halves: {sum:?}"
    );
    assert_eq!(
        sum_of(&w, "SELECT sum(balance) FROM accounts").await,
        Ok(TOTAL)
    );
}

/// An `INSERT INTO t VALUES (...)` without a column list makes the proxy
/// read `t`'s columns from the catalog "inside the client's block on a
/// shard of the block" — a query, which takes a REPEATABLE READ block's
/// snapshot on that shard, outside the fence and before the block's
/// snapshot is taken everywhere else; `INSERT INTO t (...) SELECT` of no
/// sharded table reads the target's column types so too. Here the block's
/// only shard (0) is the one a `SHOW` joined (deadlock detector off: no
/// tag query), and a transfer from shard 2 to shard 0 is in its commit
/// phase (decided on shard 2, still prepared on shard 0): the catalog
/// read sees shard 0 before it, the INSERT then takes the snapshot on
/// shards 1 and 2 after it, under the fence (2990). One PostgreSQL sums
/// the bank's total (plus the new account's 0); the README promises one
/// snapshot taken on every shard at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18g_an_insert_without_columns_reads_the_catalog_under_the_snapshot() {
    let (servers, _p, port, keys) = bank_cluster(
        true,
        "deadlock_timeout_ms = 0\nrecovery_grace_ms = 60000\ntest_failpoint = \"after_decision:pause=1500\"",
    )
    .await;
    let (new, _) = another_key_on(&servers, 1, keys[1]);
    let r = connect(&url(port)).await.unwrap();
    let mut bad = Vec::new();
    for (i, insert) in [
        format!("INSERT INTO accounts VALUES ({new}, 0)"),
        format!("INSERT INTO accounts (id, balance) SELECT {new}, 0"),
    ]
    .into_iter()
    .enumerate()
    {
        exec(&r, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
        exec(&r, "SHOW transaction_isolation").await;
        // Decided on shard 2 (its first writer), prepared on shard 0; and
        // back again.
        let t = connect(&url(port)).await.unwrap();
        let transfer = if i % 2 == 0 {
            transfer_sql(keys[2], keys[0])
        } else {
            format!(
                "BEGIN; UPDATE accounts SET balance = balance + 10 WHERE id = {}; UPDATE accounts SET balance = balance - 10 WHERE id = {}; COMMIT",
                keys[2], keys[0]
            )
        };
        let stuck = tokio::spawn(async move { t.simple_query(&transfer).await.map(|_| ()) });
        crate::bank::until_prepared_on(&servers, &[0], Duration::from_millis(200)).await;
        tokio::time::timeout(Duration::from_secs(10), r.simple_query(&insert))
            .await
            .expect("the INSERT never ended")
            .unwrap();
        let sum = sum_of(&r, "SELECT sum(balance) FROM accounts").await;
        exec(&r, "ROLLBACK").await;
        stuck.await.unwrap().unwrap();
        eprintln!("{insert}: {sum:?}");
        if sum != Ok(TOTAL) {
            bad.push(format!("{insert}: {sum:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "the block's snapshot was taken on shard 0 first: {bad:?}"
    );
}

/// As `review18g_a_describe_after_show_takes_the_snapshot_everywhere`, with
/// a utility statement that takes its snapshot when it runs, not at Parse
/// or Bind: a `DO` block through the extended protocol (tokio-postgres's
/// `execute`) on the one shard a simple `SHOW` joined (deadlock detector
/// off). It takes the REPEATABLE READ block's snapshot there alone; the
/// later sum joins the other shards after a transfer committed. One
/// PostgreSQL gives the bank's total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18g_a_utility_portal_after_show_takes_the_snapshot_everywhere() {
    let (_servers, _p, port, keys) = bank_cluster(true, "deadlock_timeout_ms = 0").await;
    let w = connect(&url(port)).await.unwrap();
    let r = connect(&url(port)).await.unwrap();
    let (a, b) = (keys[0], keys[2]);
    exec(&r, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
    exec(&r, "SHOW transaction_isolation").await;
    r.execute("DO $$BEGIN PERFORM 1; END$$", &[]).await.unwrap();
    exec(&w, &transfer_sql(a, b)).await;
    let sum = sum_of(&r, "SELECT sum(balance) FROM accounts").await;
    exec(&r, "COMMIT").await;
    assert_eq!(
        sum,
        Ok(TOTAL),
        "the block's snapshot was taken on one shard first"
    );
}

/// The statements of a session, each answered as `tag`s or `SQLSTATE`.
async fn outcomes(c: &tokio_postgres::Client, sqls: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for sql in sqls {
        out.push(match c.simple_query(sql).await {
            Ok(m) => {
                let rows = crate::bank::values(&m);
                if rows.is_empty() {
                    "ok".to_string()
                } else {
                    rows.join(",")
                }
            }
            Err(e) => crate::bank::code(&e),
        });
    }
    out
}

/// `BEGIN ISOLATION LEVEL REPEATABLE READ; SHOW ...; SET TRANSACTION
/// ISOLATION LEVEL READ COMMITTED`: `SHOW` takes no snapshot, so
/// PostgreSQL accepts the new level (the block runs at READ COMMITTED).
/// With `consistent_reads` and the deadlock detector on (the default), the
/// proxy took the block's snapshot on every shard at the `SHOW` (the
/// deadlock tag would take it on its shard alone) and counts it as the
/// client's: the `SET TRANSACTION` is refused with `25001`, which
/// PostgreSQL gives only after a query. Not a fractured read; a difference
/// from one PostgreSQL the setting made. Now a `SHOW` joins its shard with
/// the tag taken before `BEGIN` and takes no snapshot anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18g_set_transaction_after_show_is_accepted_as_postgresql_does() {
    let session = [
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
        "SHOW transaction_isolation",
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "SHOW transaction_isolation",
        "COMMIT",
    ];
    let oracle = crate::harness::oracle_server().await;
    let plain = connect(&format!(
        "host=127.0.0.1 port={} user=plain password=plainpass dbname=app",
        oracle.ports()[0]
    ))
    .await
    .unwrap();
    let want = outcomes(&plain, &session).await;
    let (_servers, _p, port, _keys) = bank_cluster(true, "").await;
    let c = connect(&url(port)).await.unwrap();
    let got = outcomes(&c, &session).await;
    assert_eq!(got, want, "the proxy (left) and one PostgreSQL (right)");
}

/// As `review18g_a_segment_split_by_a_flush_keeps_one_snapshot`, in one
/// batch up to its Sync: the segment's first statement reads one shard
/// (slowly), then `BEGIN` turns the segment's transaction into a block —
/// PostgreSQL keeps the snapshot the first statement took — and the block
/// sums every shard and commits. A transfer from that shard to another
/// commits during the first statement. One PostgreSQL sums the bank's
/// total; the proxy ran the first statement on the segment's connection,
/// which the `BEGIN` made a participant with that snapshot, and took the
/// others' at the sum. Also with a session `SET` and a Flush before the
/// first statement (the segment's mode decided at the `SET`'s Bind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review18g_a_segment_begun_after_a_read_keeps_its_snapshot() {
    let (_servers, _p, port, keys) = bank_cluster(true, "").await;
    let (a, b) = (keys[1], keys[2]);
    let w = connect(&url(port)).await.unwrap();
    let first = format!("SELECT balance, pg_sleep(1) FROM accounts WHERE id = {a}");
    let sum = "SELECT sum(balance) FROM accounts";
    let mut bad = Vec::new();
    for (i, case) in ["BEGIN after a read", "SET, Flush, read, Flush"]
        .into_iter()
        .enumerate()
    {
        let mut raw = RawClient::connect(port).await;
        raw.query("SET default_transaction_isolation = 'repeatable read'")
            .await;
        if i == 0 {
            for sql in [first.as_str(), "BEGIN", sum, "COMMIT"] {
                send_portal(&mut raw, sql).await;
            }
            raw.send(b'S', &[]).await;
        } else {
            send_portal(&mut raw, "SET application_name = 'review18g'").await;
            raw.send(b'H', &[]).await;
            until_executed(&mut raw).await;
            send_portal(&mut raw, &first).await;
            raw.send(b'H', &[]).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        exec(&w, &transfer_sql(a, b)).await;
        if i == 1 {
            until_executed(&mut raw).await;
            send_portal(&mut raw, sum).await;
            raw.send(b'S', &[]).await;
        }
        let reply = tokio::time::timeout(Duration::from_secs(10), raw.until_ready())
            .await
            .expect("the segment never ended");
        let rows = first_columns(&reply);
        eprintln!("{case}: {rows:?} {:?}", reply.error_codes());
        if rows.last() != Some(&TOTAL.to_string()) || !reply.error_codes().is_empty() {
            bad.push(format!("{case}: {rows:?} {:?}", reply.error_codes()));
        }
    }
    assert!(bad.is_empty(), "fractured: {bad:?}");
}

/// Statement forms a classifier might take for one shard or for no
/// snapshot, each read while a transfer between shards 1 and 2 is paused
/// in its commit phase (decided, one part still prepared): each must wait
/// for the phase and sum the bank's total, as one PostgreSQL's single
/// snapshot does: keys on three shards, a CTE, a derived table, a scalar
/// subquery in the select list, `IN` and `EXISTS` of subqueries (two
/// stages), in autocommit, through the simple and the extended protocol.
/// (`UNION ALL`, `TABLE` and `VALUES` over sharded tables are refused.) A
/// probe: it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "review18g: a probe that passes"]
async fn review18g_probe_statement_forms_are_fenced() {
    let (servers, _p, port, keys) = bank_cluster(
        true,
        "recovery_grace_ms = 60000\ntest_failpoint = \"after_decision:pause=1500\"",
    )
    .await;
    let (k0, a, b) = (keys[0], keys[1], keys[2]);
    let forms = [
        format!("SELECT balance FROM accounts WHERE id IN ({a}, {b}, {k0})"),
        "WITH x AS (SELECT balance FROM accounts) SELECT balance FROM x".to_string(),
        "SELECT s.balance FROM (SELECT balance FROM accounts) s".to_string(),
        "SELECT (SELECT sum(balance) FROM accounts)::bigint".to_string(),
        "SELECT balance FROM accounts WHERE id IN (SELECT id FROM accounts)".to_string(),
        format!(
            "SELECT balance FROM accounts WHERE EXISTS (SELECT 1 FROM accounts WHERE id = {a})"
        ),
    ];
    let c = connect(&url(port)).await.unwrap();
    let mut bad = Vec::new();
    let mut i = 0;
    for form in &forms {
        for extended in [false, true] {
            let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
            i += 1;
            let stuck = crate::bank::paused_transfer(&servers, port, from, to).await;
            let sum: Result<i64, String> = if extended {
                match c.query(form.as_str(), &[]).await {
                    Ok(rows) => Ok(rows.iter().map(|r| r.get::<_, i64>(0)).sum()),
                    Err(e) => Err(crate::bank::code(&e)),
                }
            } else {
                sum_of(&c, form).await
            };
            stuck.await.unwrap().unwrap();
            eprintln!("{form} (extended {extended}): {sum:?}");
            if sum != Ok(TOTAL) {
                bad.push(format!("{form} (extended {extended}): {sum:?}"));
            }
        }
    }
    assert!(bad.is_empty(), "fractured: {bad:#?}");
}

/// A portal over every shard with a row limit, in a READ COMMITTED block
/// (tokio-postgres's `bind` and `query_portal`, one row per Execute): its
/// snapshot is the Bind's. Bound before a transfer's commit phase, the
/// rows fetched during and after it are the old ones, whole; bound while
/// the phase is paused, the Bind waits for it and the rows are the new
/// ones, whole. As in one PostgreSQL. A probe: it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "review18g: a probe that passes"]
async fn review18g_probe_a_portal_with_a_row_limit_is_whole() {
    let (servers, _p, port, keys) = bank_cluster(
        true,
        "recovery_grace_ms = 60000\ntest_failpoint = \"after_decision:pause=1500\"",
    )
    .await;
    let (a, b) = (keys[1], keys[2]);
    let mut c = connect(&url(port)).await.unwrap();
    let mut sums = Vec::new();
    for bound_first in [true, false] {
        let tx = c.transaction().await.unwrap();
        let stmt = tx.prepare("SELECT balance FROM accounts").await.unwrap();
        let (portal, stuck) = if bound_first {
            let portal = tx.bind(&stmt, &[]).await.unwrap();
            (
                portal,
                crate::bank::paused_transfer(&servers, port, a, b).await,
            )
        } else {
            let stuck = crate::bank::paused_transfer(&servers, port, b, a).await;
            (tx.bind(&stmt, &[]).await.unwrap(), stuck)
        };
        let mut sum = 0i64;
        loop {
            let rows = tx.query_portal(&portal, 1).await.unwrap();
            if rows.is_empty() {
                break;
            }
            sum += rows.iter().map(|r| r.get::<_, i64>(0)).sum::<i64>();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tx.commit().await.unwrap();
        stuck.await.unwrap().unwrap();
        sums.push(sum);
    }
    assert_eq!(sums, [TOTAL, TOTAL]);
}

/// A client that vanishes (its socket closed, no Terminate) while its
/// multi-shard read holds the fence, waiting on one shard for a relation
/// lock (an `ACCESS EXCLUSIVE` lock taken on that shard directly). The
/// README: a vanished client is noticed within 100 ms and what runs for
/// it is dropped; a fence hold is an RAII guard. So a transfer between two
/// other shards, started then, commits within a few hundred
/// milliseconds — well before the 1 s after which the stalled reader
/// would be cancelled as a deadlock victim. A probe: it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "review18g: a probe that passes"]
async fn review18g_probe_a_vanished_reader_lets_commits_go() {
    let (servers, _p, port, keys) = bank_cluster(true, "").await;
    let locker = servers.connect(2).await;
    exec(&locker, "BEGIN").await;
    exec(&locker, "LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE").await;
    let mut raw = RawClient::connect(port).await;
    // `$` in the text: not primed, the share held until the first answer.
    let mut q = b"SELECT sum(balance) FROM accounts WHERE '$' <> ''".to_vec();
    q.push(0);
    raw.send(b'Q', &q).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(raw);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let w = connect(&url(port)).await.unwrap();
    let t = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(5),
        w.simple_query(&transfer_sql(keys[0], keys[1])),
    )
    .await
    .expect("the transfer never ended")
    .unwrap();
    let took = t.elapsed();
    exec(&locker, "ROLLBACK").await;
    eprintln!("transfer behind a vanished reader: {took:?}");
    assert!(
        took < Duration::from_millis(900),
        "the vanished reader held commits: {took:?}"
    );
    assert_eq!(
        sum_of(&w, "SELECT sum(balance) FROM accounts").await,
        Ok(TOTAL)
    );
}
