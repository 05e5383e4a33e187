//! `limits.query_timeout_ms` never lies: a statement that got no answer is
//! reported cancelled (57014) only when it cannot have taken effect; a COMMIT
//! or an autocommit write that got no answer is 08007 (its outcome is
//! unknown), and whatever happens afterwards agrees with the answer.

use std::time::{Duration, Instant};

use pieskieo::router::KeyValue;

use crate::harness::{balance, exec, sqlstate, value, Cluster};

/// `n` keys of `accounts` on `shard`.
fn keys_on(c: &Cluster, shard: usize, n: usize) -> Vec<i64> {
    (1..100_000i64)
        .filter(|k| c.shard_of("accounts", KeyValue::Int(*k)) == shard)
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_with_no_answer_is_unknown_and_the_outcome_agrees() {
    let c = Cluster::start_custom(2, crate::harness::TABLES, "", "query_timeout_ms = 1000").await;
    c.accounts(0, 0).await;
    let stalled = 1;
    let keys = keys_on(&c, stalled, 4);
    let other = keys_on(&c, 0, 1)[0];
    let setup = c.client().await;
    for k in keys.iter().chain([&other]) {
        exec(
            &setup,
            &format!("INSERT INTO accounts (id, balance) VALUES ({k}, 100)"),
        )
        .await;
    }
    let (committed, autocommitted, in_block, extended) = (keys[0], keys[1], keys[2], keys[3]);
    // Connections to the shard exist before it stalls (a new one would fail
    // to connect: 08006, never sent, which is not the case under test).
    let mut warm = Vec::new();
    for _ in 0..6 {
        let w = c.client().await;
        exec(&w, "BEGIN").await;
        balance(&w, in_block).await;
        warm.push(w);
    }
    for w in &warm {
        exec(w, "COMMIT").await;
    }

    let a = c.client().await;
    exec(&a, "BEGIN").await;
    exec(
        &a,
        &format!("UPDATE accounts SET balance = 7 WHERE id = {committed}"),
    )
    .await;
    let b = c.client().await;
    let blocked = c.client().await;
    exec(&blocked, "BEGIN").await;
    let e = c.client().await;
    let update = e
        .prepare("UPDATE accounts SET balance = balance + 1 WHERE id = $1")
        .await
        .unwrap();

    let pids = crate::harness::shard_pids(&c.shards.servers[stalled]);
    crate::harness::signal(&pids, "STOP");
    let t = Instant::now();
    // The COMMIT reached the shard and got no answer: it may have committed.
    assert_eq!(sqlstate(&a, "COMMIT").await, "08007");
    // So may an autocommit write.
    assert_eq!(
        sqlstate(
            &b,
            &format!("UPDATE accounts SET balance = balance + 1 WHERE id = {autocommitted}")
        )
        .await,
        "08007"
    );
    // The same through the extended protocol (Bind, Execute, Sync at once).
    let r = e.execute(&update, &[&extended]).await.unwrap_err();
    assert_eq!(
        r.as_db_error().map(|d| d.code().code()),
        Some("08007"),
        "{r:?}"
    );
    // A statement inside a block cannot commit by itself: cancelled, truly.
    assert_eq!(
        sqlstate(
            &blocked,
            &format!("UPDATE accounts SET balance = 0 WHERE id = {in_block}")
        )
        .await,
        "57014"
    );
    // So is a read outside a block.
    assert_eq!(
        sqlstate(
            &b,
            &format!("SELECT balance FROM accounts WHERE id = {in_block}")
        )
        .await,
        "57014"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    exec(&blocked, "ROLLBACK").await;
    // The other shard serves meanwhile.
    assert_eq!(balance(&b, other).await, "100");
    crate::harness::signal(&pids, "CONT");

    // Afterwards: what was called cancelled did not happen; the unknown ones
    // are one of their two outcomes; nothing is left open or in doubt.
    let check = c.client().await;
    assert_eq!(balance(&check, in_block).await, "100");
    let got = balance(&check, committed).await;
    assert!(got == "7" || got == "100", "{got}");
    for k in [autocommitted, extended] {
        let got = balance(&check, k).await;
        assert!(got == "101" || got == "100", "{got}");
    }
    let shard = c.shard(stalled).await;
    let t = Instant::now();
    loop {
        let open = value(
            &shard,
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' OR wait_event_type = 'Lock'",
        )
        .await;
        if open == "0" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{open} left open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(crate::harness::prepared(&shard).await, 0);
}

/// A statement that runs too long is cancelled on its shard at once (not
/// left running with its locks while the client is told it was cancelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_statement_is_cancelled_on_its_shard_and_frees_its_locks() {
    let c = Cluster::start_custom(2, crate::harness::TABLES, "", "query_timeout_ms = 1000").await;
    let keys = c.accounts(2, 100).await;
    let k = keys[0];
    let slow = c.client().await;
    exec(&slow, "BEGIN").await;
    exec(
        &slow,
        &format!("UPDATE accounts SET balance = 1 WHERE id = {k}"),
    )
    .await;
    // Routed to the block's shard; runs past the timeout.
    assert_eq!(sqlstate(&slow, "SELECT pg_sleep(20)").await, "57014");
    let other = c.client().await;
    exec(&other, "SET lock_timeout = '1s'").await;
    exec(
        &other,
        &format!("UPDATE accounts SET balance = balance + 1 WHERE id = {k}"),
    )
    .await;
    assert_eq!(balance(&other, k).await, "101");
    // The timed-out client's block is failed, as after any error.
    assert_eq!(sqlstate(&slow, "SELECT 1").await, "25P02");
    exec(&slow, "ROLLBACK").await;
    let shard = c.shard(0).await;
    assert_eq!(
        value(
            &shard,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(20)%' AND pid <> pg_backend_pid()"
        )
        .await,
        "0"
    );
}
