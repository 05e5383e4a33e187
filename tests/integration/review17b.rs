//! Review of simple queries run prepared inside blocks
//! (`prepare_simple_queries`, `router::Prepare::fits_block`): sessions where
//! Pieskieo's answer must be one plain PostgreSQL's, message by message, and
//! a block must never fail where the text as written would have run.

use std::time::Duration;

use pieskieo::router::KeyValue;

use crate::harness::RawClient;
use crate::prepared_simple::{both, cluster, differences, executed_prepared};

/// `block` (its statements between `BEGIN` and `COMMIT`) `n` times.
fn blocks(block: &[&str], n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push("BEGIN".to_string());
        out.extend(block.iter().map(|q| q.to_string()));
        out.push("COMMIT".to_string());
    }
    out
}

/// A trigger that refuses an `UPDATE` with 0A000 (feature_not_supported),
/// as an application may: the bound statement fails exactly as the text
/// does. Only "cached plan must not change result type" is the proxy's
/// business (a hint, the text as written from then on); this error is
/// PostgreSQL's own and passes unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feature_not_supported_error_of_the_statement_itself_passes_unchanged() {
    let ddl = [
        "CREATE FUNCTION no_big() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.b > 1000 THEN RAISE EXCEPTION 'b too big' USING ERRCODE = 'feature_not_supported'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER no_big BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION no_big()",
    ];
    let (_o, oracle_port, c) = both(&ddl).await;
    let mut queries = blocks(&["UPDATE t SET b = b + 1 WHERE id = 2"], 3);
    for _ in 0..3 {
        queries
            .extend(["BEGIN", "UPDATE t SET b = 5000 WHERE id = 2", "ROLLBACK"].map(String::from));
    }
    // Still bound afterwards: the statement was not refused. (Its first
    // block runs it as written, the second too, after its Parse before
    // `BEGIN`; the third binds it, and each block after.)
    queries.extend(blocks(&["UPDATE t SET b = 7 WHERE id = 2"], 2));
    queries.push("SELECT b FROM t WHERE id = 2".into());
    let diffs = differences(c.port(), oracle_port, &queries, 1).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let executed = executed_prepared(&c);
    assert!(
        executed
            .matches(": UPDATE t SET b = $1 WHERE id = $2")
            .count()
            >= 3,
        "{executed}"
    );
}

/// A number PostgreSQL's `numeric` cannot hold (`1e999999`): as written,
/// the parser refuses the literal and points at it; bound, the Bind
/// refuses the value, with no position and a CONTEXT naming the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_numeric_cannot_hold_fails_as_the_text_fails() {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut queries = blocks(&["SELECT b + 1.5 FROM t WHERE id = 2"], 3);
    for n in ["1e999999", "1e-16384", "1e131073"] {
        queries.extend([
            "BEGIN".to_string(),
            format!("SELECT b + {n} FROM t WHERE id = 2"),
            "ROLLBACK".to_string(),
        ]);
    }
    queries.extend(blocks(&["SELECT b + 1e400 FROM t WHERE id = 2"], 1));
    let diffs = differences(c.port(), oracle_port, &queries, 1).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    assert!(executed_prepared(&c).contains(": SELECT b + $1 FROM t WHERE id = $2"));
}

/// After five runs PostgreSQL may plan a prepared statement generically:
/// `$4 = $5` is then no constant the planner folds, and `b / $2 > $3` runs
/// first. As written (`OR 1 = 1`), PostgreSQL folds the `OR` to true and
/// never divides: the block runs. Bound under a generic plan, it divides
/// by zero and the block fails where the text would have run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_plan_does_not_fail_a_block_the_text_would_run() {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut queries = blocks(
        &["SELECT b FROM t WHERE id = 2 AND (b / 1 > 0 OR 1 = 1)"],
        8,
    );
    queries.extend(blocks(
        &[
            "SELECT b FROM t WHERE id = 2 AND (b / 0 > 0 OR 1 = 1)",
            "UPDATE t SET b = b + 1 WHERE id = 2",
        ],
        1,
    ));
    queries.push("SELECT b FROM t WHERE id = 2".into());
    let diffs = differences(c.port(), oracle_port, &queries, 1).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    // Constants that meet (`$4 = $5`) keep the text as written in blocks.
    assert!(!executed_prepared(&c).contains("OR $4 = $5"));
}

/// The other way round: as written, `10 / 0` fails while PostgreSQL plans
/// the `UPDATE` (it folds the constants), so the block fails and its
/// `COMMIT` rolls back. Bound under a generic plan, the division waits for
/// a row, there is none, the statement "succeeds" and the `COMMIT` would
/// keep the block's other write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_plan_does_not_let_a_block_commit_that_postgresql_rolls_back() {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut queries = blocks(&["UPDATE t SET b = 10 / 2 WHERE id = 999"], 8);
    queries.extend(blocks(
        &[
            "UPDATE t SET b = b + 1 WHERE id = 2",
            "UPDATE t SET b = 10 / 0 WHERE id = 999",
        ],
        1,
    ));
    queries.push("SELECT b FROM t WHERE id = 2".into());
    let diffs = differences(c.port(), oracle_port, &queries, 1).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    assert!(!executed_prepared(&c).contains(": UPDATE t SET b = $1 / $2 WHERE id = $3"));
}

/// What is left of a generic plan's difference in blocks: a constant
/// assigned to a narrower column (`int4` into `smallint`) is cast while
/// PostgreSQL plans the text (folded: "smallint out of range" whether or not
/// a row matches), but while a generic plan runs, row by row: with no row,
/// the bound `UPDATE` answers `UPDATE 0` and the block may commit where
/// PostgreSQL fails it. Which columns are narrower than their constants the
/// proxy does not know; README, *What differs*.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "accepted difference (README): a constant cast by assignment into a narrower column, with no row to update, under a generic plan"]
async fn a_constant_too_wide_for_its_column_with_no_row_fails_as_the_text_fails() {
    let (_o, oracle_port, c) = both(&["ALTER TABLE t ADD COLUMN small int2"]).await;
    let mut queries = blocks(&["UPDATE t SET small = 5 WHERE id = 999"], 8);
    queries.extend(blocks(&["UPDATE t SET small = 100000 WHERE id = 999"], 1));
    let diffs = differences(c.port(), oracle_port, &queries, 1).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// A second schema with its own `t` whose `b` is `text`: after `SET
/// search_path` (between blocks or inside one) the statement the
/// connection prepared under the other path is re-analysed by PostgreSQL
/// and refused ("cached plan must not change result type"); the text as
/// written reads `s2.t` and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_search_path_does_not_fail_a_block() {
    let ddl = [
        "CREATE SCHEMA s2",
        "CREATE TABLE s2.t (id bigint PRIMARY KEY, b text)",
    ];
    let (_o, oracle_port, c) = both(&ddl).await;
    let mut queries = blocks(&["SELECT b FROM t WHERE id = 2"], 3);
    queries.push("SET search_path = s2, public".into());
    queries.extend(blocks(&["SELECT b FROM t WHERE id = 2"], 2));
    queries.push("RESET search_path".into());
    queries.extend(blocks(&["SELECT b FROM t WHERE id = 2"], 2));
    queries.extend(blocks(
        &[
            "SELECT b FROM t WHERE id = 2",
            "SET LOCAL search_path = s2, public",
            "SELECT b FROM t WHERE id = 2",
        ],
        2,
    ));
    queries.extend(blocks(&["SELECT b FROM t WHERE id = 2"], 2));
    let diffs = differences(c.port(), oracle_port, &queries, 1).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    assert!(executed_prepared(&c).contains(": SELECT b FROM t WHERE id = $1"));
}

/// Statements that ran as written in an earlier block are prepared before
/// the connection's next `BEGIN`: their Parse takes locks on tables the new
/// block may never touch. Another client holds `items` locked (`ALTER TABLE`
/// in its open block); a block that reads only `t` must not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preparing_for_later_does_not_wait_for_a_lock_on_another_table() {
    let c = cluster("").await;
    let mut x = RawClient::connect(c.port()).await;
    let r = x
        .query("CREATE TABLE items (id bigint PRIMARY KEY, v int)")
        .await;
    assert!(r.error_codes().is_empty(), "{:?}", r.messages);
    let shard = c.shard_of("t", KeyValue::Int(2));
    let k = (1..)
        .find(|k| c.shard_of("items", KeyValue::Int(*k)) == shard)
        .unwrap();
    // The other client's block holds a connection on every shard first,
    // so it does not take the one this client keeps.
    let mut y = RawClient::connect(c.port()).await;
    for q in ["BEGIN", "SELECT count(*) FROM t"] {
        let r = y.query(q).await;
        assert!(r.error_codes().is_empty(), "{q}: {:?}", r.messages);
    }
    let read_items = format!("SELECT v FROM items WHERE id = {k}");
    for q in ["BEGIN", read_items.as_str(), "COMMIT"] {
        assert!(x.query(q).await.error_codes().is_empty(), "{q}");
    }
    let r = y.query("ALTER TABLE items ADD COLUMN w int").await;
    assert!(r.error_codes().is_empty(), "{:?}", r.messages);
    let block = async {
        for q in ["BEGIN", "SELECT b FROM t WHERE id = 2", "COMMIT"] {
            let r = x.query(q).await;
            assert!(r.error_codes().is_empty(), "{q}: {:?}", r.messages);
        }
    };
    let waited = tokio::time::timeout(Duration::from_secs(3), block).await;
    assert!(y.query("ROLLBACK").await.error_codes().is_empty());
    assert!(
        waited.is_ok(),
        "a block reading t waited for the lock another client holds on items"
    );
    // Not refused for it: prepared before a later block, and bound there.
    for _ in 0..3 {
        for q in ["BEGIN", read_items.as_str(), "COMMIT"] {
            let r = x.query(q).await;
            assert!(r.error_codes().is_empty(), "{q}: {:?}", r.messages);
        }
    }
    let executed = executed_prepared(&c);
    assert!(
        executed.contains(": SELECT v FROM items WHERE id = $1"),
        "{executed}"
    );
}

/// Statements of many shapes, each in blocks seven times in a row (as
/// written, parsed before `BEGIN`, bound, parsed again in the block), with
/// savepoints, errors and DDL between them: every answer is PostgreSQL's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_of_many_shapes_answer_as_postgresql() {
    let ddl = [
        "CREATE FUNCTION f(x int) RETURNS text LANGUAGE sql AS $$ SELECT 'int ' || x $$",
        "CREATE FUNCTION f(x numeric) RETURNS text LANGUAGE sql AS $$ SELECT 'numeric ' || x $$",
        "CREATE TABLE items (id bigint PRIMARY KEY, v int, a int[], sm smallint)",
        "INSERT INTO items VALUES (2, 5, '{1,2,3}', 7)",
    ];
    let (_o, oracle_port, c) = both(&ddl).await;
    let shapes: &[&[&str]] = &[
        &["SELECT b - 5, - 5, -b FROM t WHERE id = 2"],
        &["SELECT b FROM t WHERE id IN (2, 3) AND b IN (20, 30)"],
        &["SELECT b FROM t WHERE id = 2 LIMIT 1 OFFSET 0"],
        &["SELECT a[1], a[2:3], v * 2147483647 FROM items WHERE id = 2"],
        &["SELECT f(1), f(1.5), f(2147483649) FROM t WHERE id = 2"],
        &["SELECT b * 1e400, n + 0.5, n / 3 FROM t WHERE id = 2"],
        &["UPDATE items SET sm = sm + 1 WHERE id = 2 RETURNING sm"],
        &["UPDATE items SET sm = 40000 WHERE id = 2"],
        &["SELECT 2147483647 + b::int + 1 FROM t WHERE id = 2"],
        &[
            "SAVEPOINT s",
            "SELECT b / (b - 20) FROM t WHERE id = 2",
            "ROLLBACK TO SAVEPOINT s",
            "UPDATE t SET b = b + 1 WHERE id = 2",
            "SELECT b FROM t WHERE id = 2",
        ],
        &[
            "UPDATE t SET b = b - 1 WHERE id = 1",
            "UPDATE t SET b = b + 1 WHERE id = 3",
        ],
        &["SELECT v FROM items WHERE id = 2 FOR UPDATE"],
    ];
    let mut queries = Vec::new();
    for shape in shapes {
        queries.extend(blocks(shape, 7));
    }
    // DDL between blocks: a column dropped that the statement names, a
    // column's type changed where it is compared, not returned.
    queries.extend(blocks(&["SELECT b FROM t WHERE id = 2 AND n > 1"], 7));
    queries.push("ALTER TABLE t ALTER COLUMN n TYPE text".into());
    queries.extend(blocks(&["SELECT b FROM t WHERE id = 2 AND n > 1"], 2));
    queries.extend(blocks(&["SELECT v FROM items WHERE id = 2 AND sm = 8"], 7));
    queries.push("ALTER TABLE items DROP COLUMN sm".into());
    queries.extend(blocks(&["SELECT v FROM items WHERE id = 2 AND sm = 8"], 2));
    queries.push("SELECT id, b, s FROM t WHERE id IN (1, 2, 3) ORDER BY id".into());
    let diffs = differences(c.port(), oracle_port, &queries, 1).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let executed = executed_prepared(&c);
    for template in [
        "SELECT b - $1, - $2, -b FROM t WHERE id = $3",
        "SELECT $1 + b::int + $2 FROM t WHERE id = $3",
        "SELECT b FROM t WHERE id = $1 AND n > $2",
        "UPDATE items SET sm = sm + $1 WHERE id = $2 RETURNING sm",
    ] {
        assert!(
            executed.contains(&format!(": {template}")),
            "{template}: {executed}"
        );
    }
}

/// Two clients over the same pooled connections, one on the default
/// search_path, then one on `s2, public`, whose `t` has `b` of another
/// type: the second reads its own `t`, as it would straight on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_other_search_paths_share_connections() {
    let ddl = [
        "CREATE SCHEMA s2",
        "CREATE TABLE s2.t (id bigint PRIMARY KEY, b text)",
    ];
    let (_o, oracle_port, c) = both(&ddl).await;
    let block = blocks(&["SELECT b FROM t WHERE id = 2"], 3);
    let diffs = differences(c.port(), oracle_port, &block, 1).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    // The first client has gone: its connections are back in the pool.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut other = vec!["SET search_path = s2, public".to_string()];
    other.extend(blocks(&["SELECT b FROM t WHERE id = 2"], 3));
    let diffs = differences(c.port(), oracle_port, &other, 1).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// A client that asks for generic plans (`plan_cache_mode`) gets none for
/// its simple queries in blocks, as PostgreSQL plans a simple query with
/// its constants whatever the setting says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_forcing_generic_plans_gets_the_texts_answers_in_blocks() {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut queries = vec!["SET plan_cache_mode = force_generic_plan".to_string()];
    queries.extend(blocks(
        &["SELECT b FROM t WHERE id = 2 AND (b / 1 > 0 OR 1 = 1)"],
        3,
    ));
    queries.extend(blocks(
        &["SELECT b FROM t WHERE id = 2 AND (b / 0 > 0 OR 1 = 1)"],
        1,
    ));
    let diffs = differences(c.port(), oracle_port, &queries, 1).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// A reply as one line: every message, then the status.
fn show(r: &crate::harness::Reply) -> String {
    let mut s = r
        .messages
        .iter()
        .map(|(t, b)| crate::prepared_simple::line(*t, b))
        .collect::<Vec<_>>()
        .join(" ");
    s.push_str(&format!(" Z{}", r.status as char));
    s
}

/// A bound `UPDATE` in a block waits for a row another client holds: the
/// client's cancel, and then `statement_timeout`, end it as they end the
/// text on PostgreSQL (57014, the block failed, nothing changed), and the
/// connection serves the next block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_or_a_timeout_ends_a_bound_statement_as_the_text() {
    let (_o, oracle_port, c) = both(&[]).await;
    let update = "UPDATE t SET b = b + 1 WHERE id = 2";
    let mut answers = Vec::new();
    for port in [c.port(), oracle_port] {
        // The other client's block holds its own connection first, so it
        // does not take the one this client keeps.
        let mut holder = RawClient::connect(port).await;
        for q in ["BEGIN", "SELECT b FROM t WHERE id = 2"] {
            assert!(holder.query(q).await.error_codes().is_empty(), "{q}");
        }
        let (mut x, pid, key) = crate::review17::login_keyed(port).await;
        let mut out = Vec::new();
        for _ in 0..3 {
            for q in ["BEGIN", update, "COMMIT"] {
                out.push(show(&x.query(q).await));
            }
        }
        let r = holder.query("UPDATE t SET b = b WHERE id = 2").await;
        assert!(r.error_codes().is_empty(), "{:?}", r.messages);
        out.push(show(&x.query("BEGIN").await));
        let mut q = update.as_bytes().to_vec();
        q.push(0);
        x.send(b'Q', &q).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        crate::review17::cancel(port, pid, key).await;
        out.push(show(&x.until_ready().await));
        out.push(show(&x.query("ROLLBACK").await));
        // (Once, in CI under load, the timeout's UPDATE below got a second
        // "canceling statement due to user request" where PostgreSQL gives
        // "due to statement timeout": a cancel reaching the shard late, cause
        // not found yet (see the issue note). The two parts stay apart.)
        tokio::time::sleep(Duration::from_millis(500)).await;
        for q in ["SET statement_timeout = 300", "BEGIN", update, "ROLLBACK"] {
            out.push(show(&x.query(q).await));
        }
        out.push(show(&x.query("RESET statement_timeout").await));
        assert!(holder.query("ROLLBACK").await.error_codes().is_empty());
        for q in ["BEGIN", update, "COMMIT", "SELECT b FROM t WHERE id = 2"] {
            out.push(show(&x.query(q).await));
        }
        answers.push(out);
    }
    // Where the row lies differs between the two databases.
    let tuple = |s: &str| match (s.find("tuple ("), s.find(") in relation")) {
        (Some(a), Some(b)) if a < b => format!("{}tuple (..{}", &s[..a], &s[b..]),
        _ => s.to_string(),
    };
    for (i, (a, b)) in answers[0].iter().zip(&answers[1]).enumerate() {
        assert_eq!(tuple(a), tuple(b), "step {i}: pieskieo, then postgresql");
    }
    let executed = executed_prepared(&c);
    assert!(
        executed
            .matches(": UPDATE t SET b = b + $1 WHERE id = $2")
            .count()
            >= 4,
        "{executed}"
    );
}

/// A driver mixing the extended protocol and simple queries in its blocks
/// (prepared statements and unnamed portals beside bound simple queries):
/// every read sees the block's own writes, and the writes add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extended_protocol_and_bound_simple_queries_share_a_block() {
    let c = cluster("").await;
    let client = c.client().await;
    let read = client
        .prepare("SELECT b FROM t WHERE id = $1")
        .await
        .unwrap();
    let mut expect = 20i64;
    for _ in 0..3 {
        client.batch_execute("BEGIN").await.unwrap();
        for _ in 0..4 {
            let simple = crate::harness::rows(&client, "SELECT b FROM t WHERE id = 2").await;
            assert_eq!(simple, [[Some(expect.to_string())]]);
            crate::harness::exec(&client, "UPDATE t SET b = b + 1 WHERE id = 2").await;
            expect += 1;
            let b: i64 = client.query_one(&read, &[&2i64]).await.unwrap().get(0);
            assert_eq!(b, expect);
            let b: i64 = client
                .query_one("SELECT b + 0 FROM t WHERE id = $1", &[&2i64])
                .await
                .unwrap()
                .get(0);
            assert_eq!(b, expect);
        }
        client.batch_execute("COMMIT").await.unwrap();
    }
    let b: i64 = client.query_one(&read, &[&2i64]).await.unwrap().get(0);
    assert_eq!(b, 32);
    let executed = executed_prepared(&c);
    assert!(
        executed.contains("_b: UPDATE t SET b = b + $1 WHERE id = $2"),
        "{executed}"
    );
}

/// `COPY ... FROM STDIN` in blocks between bound statements: the same
/// answers as PostgreSQL, and the copied rows are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_a_block_between_bound_statements() {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut answers = Vec::new();
    for port in [c.port(), oracle_port] {
        let mut x = RawClient::connect(port).await;
        let mut out = Vec::new();
        for round in 0..4 {
            for q in ["BEGIN", "UPDATE t SET b = b + 1 WHERE id = 2"] {
                out.push(show(&x.query(q).await));
            }
            x.send(b'Q', b"COPY t (id, b) FROM STDIN\0").await;
            let (tag, _) = x.read().await;
            assert_eq!(tag, b'G');
            x.send(
                b'd',
                format!("{}\t7\n{}\t8\n", 60 + round, 70 + round).as_bytes(),
            )
            .await;
            x.send(b'c', b"").await;
            out.push(show(&x.until_ready().await));
            let read = format!("SELECT b FROM t WHERE id = {}", 60 + round);
            let write = format!("UPDATE t SET b = b * 2 WHERE id = {}", 70 + round);
            for q in [
                read.as_str(),
                write.as_str(),
                "SELECT b FROM t WHERE id = 2",
                "COMMIT",
            ] {
                out.push(show(&x.query(q).await));
            }
        }
        out.push(show(
            &x.query("SELECT id, b FROM t WHERE id >= 60 ORDER BY id")
                .await,
        ));
        answers.push(out);
    }
    for (i, (a, b)) in answers[0].iter().zip(&answers[1]).enumerate() {
        assert_eq!(a, b, "step {i}: pieskieo, then postgresql");
    }
    assert!(executed_prepared(&c).contains("_b: UPDATE t SET b = b + $1 WHERE id = $2"));
}

/// `DEALLOCATE ALL` inside a block (and out of one), `DISCARD PLANS` and
/// `DISCARD ALL` between bound statements. (`DISCARD ALL` inside a block is
/// the proxy's own 25001, without PostgreSQL's file, line and routine
/// fields: not compared here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_between_bound_statements() {
    let (_o, oracle_port, c) = both(&[]).await;
    let update = "UPDATE t SET b = b + 1 WHERE id = 2";
    let mut queries = blocks(&[update], 3);
    queries.extend(blocks(
        &[update, "DEALLOCATE ALL", update, "DISCARD PLANS", update],
        2,
    ));
    queries.push("DEALLOCATE ALL".into());
    queries.extend(blocks(&[update], 3));
    queries.push("DISCARD ALL".into());
    queries.extend(blocks(&[update], 3));
    queries.push("SELECT b FROM t WHERE id = 2".into());
    let diffs = differences(c.port(), oracle_port, &queries, 1).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    assert!(executed_prepared(&c).contains("_b: UPDATE t SET b = b + $1 WHERE id = $2"));
}

/// A server connection holds at most `MAX_PREPARED_PER_CONNECTION`
/// statements the proxy prepared: texts queued in a block to be prepared
/// before the next `BEGIN`, and texts prepared outside blocks meanwhile,
/// together stay within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_for_blocks_count_toward_the_limit() {
    let c = cluster("").await;
    let mut x = RawClient::connect(c.port()).await;
    let max = pieskieo::backend::MAX_PREPARED_PER_CONNECTION;
    assert!(x.query("BEGIN").await.error_codes().is_empty());
    for i in 0..max {
        let q = format!("SELECT b AS c{i} FROM t WHERE id = 2");
        assert!(x.query(&q).await.error_codes().is_empty(), "{q}");
    }
    assert!(x.query("COMMIT").await.error_codes().is_empty());
    for i in max..2 * max {
        let q = format!("SELECT b AS c{i} FROM t WHERE id = 2");
        assert!(x.query(&q).await.error_codes().is_empty(), "{q}");
    }
    let mut counts = Vec::new();
    for q in [
        "BEGIN",
        "SELECT b FROM t WHERE id = 2",
        "SELECT count(*) FROM pg_prepared_statements",
        "COMMIT",
    ] {
        let r = x.query(q).await;
        assert!(r.error_codes().is_empty(), "{q}: {:?}", r.messages);
        counts.extend(
            r.messages
                .iter()
                .filter(|(t, _)| *t == b'D')
                .map(|(_, b)| String::from_utf8_lossy(&b[6..]).into_owned()),
        );
    }
    let n: usize = counts[1].parse().unwrap();
    assert!(n <= max, "{n} statements prepared on one connection");
}

/// The one accepted failure (a column's type changed under a bound read:
/// 0A000 with Pieskieo's hint) inside a savepoint: the client rolls back to
/// it, the text runs as written, and the block commits its write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_recovers_from_an_outdated_statement_with_a_savepoint() {
    let c = cluster("").await;
    let mut raw = RawClient::connect(c.port()).await;
    for _ in 0..3 {
        for q in ["BEGIN", "SELECT b FROM t WHERE id = 2", "COMMIT"] {
            assert!(raw.query(q).await.error_codes().is_empty(), "{q}");
        }
    }
    let ddl = raw.query("ALTER TABLE t ALTER COLUMN b TYPE int").await;
    assert!(ddl.error_codes().is_empty(), "{:?}", ddl.messages);
    for q in [
        "BEGIN",
        "UPDATE t SET b = b + 1 WHERE id = 2",
        "SAVEPOINT a",
    ] {
        assert!(raw.query(q).await.error_codes().is_empty(), "{q}");
    }
    let r = raw.query("SELECT b FROM t WHERE id = 2").await;
    assert_eq!(r.error_codes(), ["0A000"], "{:?}", r.messages);
    for q in [
        "ROLLBACK TO SAVEPOINT a",
        "SELECT b FROM t WHERE id = 2",
        "UPDATE t SET b = b + 1 WHERE id = 2",
    ] {
        let r = raw.query(q).await;
        assert!(r.error_codes().is_empty(), "{q}: {:?}", r.messages);
    }
    let r = raw.query("COMMIT").await;
    assert_eq!(r.tags(), ["COMMIT"], "{:?}", r.messages);
    let client = c.client().await;
    let b = crate::harness::rows(&client, "SELECT b FROM t WHERE id = 2").await;
    assert_eq!(b, [[Some("22".to_string())]]);
}
