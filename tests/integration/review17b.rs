//! Review of simple queries run prepared inside blocks
//! (`prepare_simple_queries`, `router::Prepare::fits_block`): sessions where
//! Pieskieo's answer must be one plain PostgreSQL's, message by message, and
//! a block must never fail where the text as written would have run.

use crate::harness::{Cluster, RawClient, Servers};
use crate::prepared_simple::{cluster, differences, executed_prepared, oracle};

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

/// One plain PostgreSQL and a three-shard cluster, both with `t` and its
/// rows, and `ddl` run on each (through the proxy: on every shard).
async fn both(ddl: &[&str]) -> (Servers, u16, Cluster) {
    let (servers, oracle_port) = oracle().await;
    let c = cluster("").await;
    let mut a = RawClient::connect(c.port()).await;
    let mut b = RawClient::connect(oracle_port).await;
    for sql in ddl {
        assert!(a.query(sql).await.error_codes().is_empty(), "proxy: {sql}");
        assert!(b.query(sql).await.error_codes().is_empty(), "oracle: {sql}");
    }
    (servers, oracle_port, c)
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
