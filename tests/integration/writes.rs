//! Writes the classifier cannot see from the text: a function that updates
//! rows, EXPLAIN ANALYZE of a write. The coordinator must treat them as the
//! writes they are — asked on the shard before the decision — and readers
//! end only after the decision.

use crate::harness::{balance, connect, exec, sqlstate, Cluster};

/// On every shard (DDL is replicated): `bump(id)` adds 1 to an account's
/// balance, a function the classifier cannot know writes.
const BUMP: &str = "CREATE FUNCTION bump(k bigint) RETURNS bigint LANGUAGE sql AS $$ UPDATE accounts SET balance = balance + 1 WHERE id = k RETURNING balance $$";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_writes_rolls_back_with_a_failed_prepare_elsewhere() {
    let c = Cluster::start(3).await;
    let k = c.accounts(3, 100).await;
    let client = c.client().await;
    exec(&client, BUMP).await;
    // A local table (on the default shard, 0) whose unique key is checked at
    // commit: the duplicate fails at PREPARE (or at the decision's COMMIT).
    exec(
        &client,
        "CREATE TABLE once (v int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
    )
    .await;
    let sql = format!(
        "BEGIN; SELECT bump(id) FROM accounts WHERE id = {}; INSERT INTO once VALUES (1); INSERT INTO once VALUES (1); UPDATE accounts SET balance = 7 WHERE id = {}; COMMIT",
        k[1], k[2]
    );
    let code = sqlstate(&client, &sql).await;
    assert_eq!(code, "23505", "the deferred unique key fails the commit");
    let c1 = c.shard(1).await;
    assert_eq!(
        balance(&c1, k[1]).await,
        "100",
        "the function's write on shard 1 rolled back with the rest"
    );
    assert_eq!(balance(&c.shard(2).await, k[2]).await, "100");
    let c0 = c.shard(0).await;
    assert_eq!(
        crate::harness::value(&c0, "SELECT count(*) FROM once").await,
        "0"
    );
    for i in 0..3 {
        assert_eq!(crate::harness::prepared(&c.shard(i).await).await, 0);
    }

    // The same with the function the only other participant: one writer by
    // the text, two in fact.
    let sql = format!(
        "BEGIN; SELECT bump(id) FROM accounts WHERE id = {}; INSERT INTO once VALUES (2); INSERT INTO once VALUES (2); COMMIT",
        k[1]
    );
    assert_eq!(sqlstate(&client, &sql).await, "23505");
    assert_eq!(balance(&c1, k[1]).await, "100");

    // And when nothing fails, the function's write commits with the rest.
    let sql = format!(
        "BEGIN; SELECT bump(id) FROM accounts WHERE id = {}; INSERT INTO once VALUES (3); COMMIT",
        k[1]
    );
    exec(&client, &sql).await;
    assert_eq!(balance(&c1, k[1]).await, "101");
    assert_eq!(
        crate::harness::value(&c0, "SELECT count(*) FROM once").await,
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_analyze_of_a_write_is_that_write() {
    let c = Cluster::start(3).await;
    let k = c.accounts(2, 100).await;
    let client = c.client().await;
    exec(
        &client,
        &format!("UPDATE accounts SET balance = 200 WHERE id = {}", k[0]),
    )
    .await;
    // k[0] can pay 150, k[1] cannot: its CHECK fails, so nothing may stay.
    let sql = format!(
        "EXPLAIN ANALYZE UPDATE accounts SET balance = balance - 150 WHERE id IN ({}, {})",
        k[0], k[1]
    );
    assert_eq!(sqlstate(&client, &sql).await, "23514");
    assert_eq!(balance(&c.shard(0).await, k[0]).await, "200");
    assert_eq!(balance(&c.shard(1).await, k[1]).await, "100");
    // Inside a block too.
    let url = c.url();
    let other = connect(&url).await.unwrap();
    exec(&other, "BEGIN").await;
    let sql = format!(
        "EXPLAIN ANALYZE UPDATE accounts SET balance = balance - 50 WHERE id IN ({}, {})",
        k[0], k[1]
    );
    exec(&other, &sql).await;
    exec(&other, "COMMIT").await;
    assert_eq!(balance(&c.shard(0).await, k[0]).await, "150");
    assert_eq!(balance(&c.shard(1).await, k[1]).await, "50");
}
