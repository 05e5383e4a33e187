//! Simple queries inside a block run prepared on their shard too, where the
//! Bind cannot refuse what the text would run: numbers as the only
//! constants, and no `*` in what returns rows. A connection prepares such a
//! statement before its next `BEGIN` after it first ran as written in a
//! block (outside any transaction, where a refusal costs nothing), and binds
//! it from then on. PostgreSQL is the oracle: the same blocks, each run
//! three times (as written, prepared at the join, bound), give exactly the
//! messages one plain PostgreSQL sends.

use pieskieo::router::KeyValue;

use crate::harness::RawClient;
use crate::prepared_simple::{cluster, differences, executed_prepared, oracle};

/// Blocks of statements, each block run three times in a row.
const BLOCKS: &[&[&str]] = &[
    &[
        "BEGIN",
        "SELECT b FROM t WHERE id = 2",
        "UPDATE t SET b = b + 1 WHERE id = 2",
        "SELECT b, n FROM t WHERE id = 2",
        "COMMIT",
    ],
    // Two shards (keys 1 and 3 are placed apart by the test below, if not
    // by the hash): two-phase commit at the end.
    &[
        "BEGIN",
        "UPDATE t SET b = b - 1 WHERE id = 1",
        "UPDATE t SET b = b + 1 WHERE id = 3",
        "SELECT b + 0.5 FROM t WHERE id = 3",
        "COMMIT",
    ],
    // RETURNING rows, described once they are made.
    &[
        "BEGIN",
        "UPDATE t SET b = b + 2 WHERE id = 2 RETURNING id, b",
        "INSERT INTO t (id, b) VALUES (50, 1) RETURNING b",
        "DELETE FROM t WHERE id = 50 RETURNING id",
        "COMMIT",
    ],
    // An error while it runs, after the RowDescription, as in PostgreSQL.
    &[
        "BEGIN",
        "SELECT b / (b - b) FROM t WHERE id = 2",
        "ROLLBACK",
    ],
    // A write refused by a constraint: the block fails with PostgreSQL's
    // error and its detail.
    &["BEGIN", "INSERT INTO t (id, b) VALUES (1, 5)", "ROLLBACK"],
    // A text valid only with its constants in place (a type modifier): its
    // Parse before the next BEGIN is refused, quietly, and it goes as
    // written.
    &[
        "BEGIN",
        "SELECT b::numeric(10, 2) FROM t WHERE id = 2",
        "COMMIT",
    ],
    // Savepoints and a statement after ROLLBACK TO.
    &[
        "BEGIN",
        "SAVEPOINT a",
        "UPDATE t SET b = b + 1 WHERE id = 2",
        "ROLLBACK TO SAVEPOINT a",
        "SELECT b FROM t WHERE id = 2",
        "COMMIT",
    ],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_in_blocks_run_prepared_and_answer_exactly_as_postgresql() {
    let (_oracle, oracle_port) = oracle().await;
    let c = cluster("").await;
    let mut queries = Vec::new();
    for block in BLOCKS {
        for _ in 0..3 {
            queries.extend(block.iter().map(|q| q.to_string()));
        }
    }
    // The column a prepared UPDATE reads goes away: the shard re-parses the
    // statement at Bind and fails it as the text would fail, at the
    // position in the client's text (after `5 +`, which `$1 +` is not).
    for _ in 0..3 {
        queries
            .extend(["BEGIN", "UPDATE t SET b = 5 + n WHERE id = 3", "COMMIT"].map(String::from));
    }
    queries.push("ALTER TABLE t DROP COLUMN n".into());
    queries.extend(["BEGIN", "UPDATE t SET b = 5 + n WHERE id = 3", "ROLLBACK"].map(String::from));
    queries.push("SELECT id, b FROM t WHERE id IN (1, 2, 3) ORDER BY id".into());
    let diffs = differences(c.port(), oracle_port, &queries, 1).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let two_shards = c.shard_of("t", KeyValue::Int(1)) != c.shard_of("t", KeyValue::Int(3));
    let executed = executed_prepared(&c);
    for template in [
        "UPDATE t SET b = b + $1 WHERE id = $2",
        "SELECT b, n FROM t WHERE id = $1",
        "UPDATE t SET b = b + $1 WHERE id = $2 RETURNING id, b",
        "DELETE FROM t WHERE id = $1 RETURNING id",
        "SELECT b / (b - b) FROM t WHERE id = $1",
        "INSERT INTO t (id, b) VALUES ($1, $2)",
        "UPDATE t SET b = $1 + n WHERE id = $2",
    ] {
        assert!(
            executed.contains(&format!(": {template}")),
            "the shards never ran {template:?} prepared; they ran:\n{executed}"
        );
    }
    if two_shards {
        assert!(executed.contains(": UPDATE t SET b = b - $1 WHERE id = $2"));
    }
    assert!(!executed.contains("numeric($"), "{executed}");
}

/// A statement prepared in blocks whose rows change shape under it (a
/// column's type altered): the shard refuses the Bind with "cached plan
/// must not change result type", which a simple query never meets. That
/// block fails with 0A000 and a hint saying what happened; the text goes as
/// written from then on, so the transaction run again succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_change_shape_under_a_prepared_read_fail_one_block_with_a_hint() {
    let c = cluster("").await;
    let mut raw = RawClient::connect(c.port()).await;
    for _ in 0..3 {
        for q in ["BEGIN", "SELECT b FROM t WHERE id = 2", "COMMIT"] {
            assert!(raw.query(q).await.error_codes().is_empty(), "{q}");
        }
    }
    assert!(executed_prepared(&c).contains(": SELECT b FROM t WHERE id = $1"));
    let ddl = raw.query("ALTER TABLE t ALTER COLUMN b TYPE int").await;
    assert!(ddl.error_codes().is_empty(), "{:?}", ddl.messages);
    assert!(raw.query("BEGIN").await.error_codes().is_empty());
    let r = raw.query("SELECT b FROM t WHERE id = 2").await;
    assert_eq!(r.error_codes(), ["0A000"], "{:?}", r.messages);
    let text = r
        .messages
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect::<String>();
    assert!(
        text.contains("cached plan must not change result type")
            && text.contains("retry the transaction"),
        "{text}"
    );
    assert_eq!(r.status, b'E');
    assert!(raw.query("ROLLBACK").await.error_codes().is_empty());
    // Again: as written, with the new type (int4, 23).
    for _ in 0..2 {
        assert!(raw.query("BEGIN").await.error_codes().is_empty());
        let r = raw.query("SELECT b FROM t WHERE id = 2").await;
        assert!(r.error_codes().is_empty(), "{:?}", r.messages);
        let (_, desc) = r.messages.iter().find(|(t, _)| *t == b'T').unwrap();
        assert!(
            crate::prepared_simple::line(b'T', desc).contains("type 23"),
            "{}",
            crate::prepared_simple::line(b'T', desc)
        );
        assert!(raw.query("COMMIT").await.error_codes().is_empty());
    }
}

/// With `prepare_simple_queries = false`, blocks go as written too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_setting_off_blocks_go_as_written() {
    let c = cluster("prepare_simple_queries = false").await;
    let mut raw = RawClient::connect(c.port()).await;
    for _ in 0..3 {
        for q in BLOCKS[0] {
            assert!(raw.query(q).await.error_codes().is_empty(), "{q}");
        }
    }
    assert_eq!(executed_prepared(&c), "");
}

/// `DISCARD ALL` outside a block runs as written on a shard connection and
/// drops the statements the proxy prepared there: a block after it must not
/// bind one of them (26000 would fail the block).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_forgets_the_statements_a_block_would_bind() {
    let c = cluster("").await;
    // A key on the default shard, where DISCARD ALL runs.
    let k = (100..)
        .find(|k| c.shard_of("t", KeyValue::Int(*k)) == 0)
        .unwrap();
    let mut raw = RawClient::connect(c.port()).await;
    let insert = format!("INSERT INTO t (id, b) VALUES ({k}, 0)");
    assert!(raw.query(&insert).await.error_codes().is_empty());
    let update = format!("UPDATE t SET b = b + 1 WHERE id = {k}");
    for round in 0..4 {
        if round == 3 {
            let r = raw.query("DISCARD ALL").await;
            assert!(r.error_codes().is_empty(), "{:?}", r.messages);
        }
        for q in ["BEGIN", update.as_str(), "COMMIT"] {
            let r = raw.query(q).await;
            assert!(
                r.error_codes().is_empty(),
                "round {round}, {q}: {:?}",
                r.messages
            );
        }
    }
    assert!(executed_prepared(&c).contains(": UPDATE t SET b = b + $1 WHERE id = $2"));
    let client = c.client().await;
    let b = crate::harness::rows(&client, &format!("SELECT b FROM t WHERE id = {k}")).await;
    assert_eq!(b, [[Some("4".to_string())]]);
}
