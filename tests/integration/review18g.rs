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
    assert_eq!(got, TOTAL, "the block's snapshot was taken on one shard first");
}
