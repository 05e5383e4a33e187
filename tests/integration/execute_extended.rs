//! SQL `EXECUTE` sent through the extended query protocol (asyncpg and
//! tokio-postgres prepare every query; libpq's `PQexecParams` binds it):
//! PostgreSQL describes the statement with the result columns of the
//! prepared statement it names, honours the Bind's result formats and row
//! limits, and finds the name only when the portal runs. One plain
//! PostgreSQL is the oracle: every exchange below must get exactly its
//! messages.

use crate::harness::RawClient;
use crate::prepared_simple::{both, line};

/// A Bind body: `portal` over `stmt`, no parameters, these result formats.
fn bind_formats(portal: &str, stmt: &str, formats: &[i16]) -> Vec<u8> {
    let mut b = Vec::new();
    for name in [portal, stmt] {
        b.extend_from_slice(name.as_bytes());
        b.push(0);
    }
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
    for f in formats {
        b.extend_from_slice(&f.to_be_bytes());
    }
    b
}

fn named(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b
}

fn execute(portal: &str, max: i32) -> Vec<u8> {
    let mut b = portal.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(&max.to_be_bytes());
    b
}

/// One exchange: a statement `sql` parsed as `stmt`, described, bound to
/// `portal` with `formats`, the portal described and executed `limits`
/// (each a row limit), then Sync.
struct Exchange<'a> {
    sql: &'a str,
    stmt: &'a str,
    portal: &'a str,
    formats: &'a [i16],
    limits: &'a [i32],
}

async fn run(c: &mut RawClient, x: &Exchange<'_>) -> String {
    let mut p = x.stmt.as_bytes().to_vec();
    p.push(0);
    p.extend_from_slice(x.sql.as_bytes());
    p.extend_from_slice(&[0, 0, 0]);
    c.send(b'P', &p).await;
    c.send(b'D', &named(b'S', x.stmt)).await;
    c.send(b'B', &bind_formats(x.portal, x.stmt, x.formats))
        .await;
    c.send(b'D', &named(b'P', x.portal)).await;
    for max in x.limits {
        c.send(b'E', &execute(x.portal, *max)).await;
    }
    c.send(b'S', b"").await;
    let r = c.until_ready().await;
    let mut out: Vec<String> = r.messages.iter().map(|(t, b)| shown(*t, b)).collect();
    out.push(format!("Z{}", r.status as char));
    // Named ones are closed, for the next exchange to make anew (a
    // portal of a name lasts to the block's end).
    if !x.stmt.is_empty() || !x.portal.is_empty() {
        c.send(b'C', &named(b'S', x.stmt)).await;
        c.send(b'C', &named(b'P', x.portal)).await;
        c.send(b'S', b"").await;
        c.until_ready().await;
    }
    out.join(" ")
}

/// A message as it must agree: an error without the PostgreSQL source
/// file, line and function (errors the proxy makes itself have none).
fn shown(t: u8, b: &[u8]) -> String {
    if t != b'E' {
        return line(t, b);
    }
    let mut kept = Vec::new();
    for field in b.split(|c| *c == 0).filter(|f| !f.is_empty()) {
        if !matches!(field[0], b'F' | b'L' | b'R') {
            kept.extend_from_slice(field);
            kept.push(0);
        }
    }
    line(t, &kept)
}

/// `EXECUTE` of statements that read one shard, write one, read every
/// shard merged (rows and an aggregate), with binary and text results,
/// row limits, in and out of a block, and of a name that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_execute_in_the_extended_protocol_answers_as_postgresql() {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut proxy = RawClient::connect(c.port()).await;
    let mut plain = RawClient::connect(oracle_port).await;
    let setup = [
        "PREPARE one (bigint) AS SELECT id, b, s FROM t WHERE id = $1",
        "PREPARE every AS SELECT id, s FROM t ORDER BY id",
        "PREPARE counted AS SELECT count(*), sum(b) FROM t",
        "PREPARE bump (bigint, int) AS UPDATE t SET b = b + $2 WHERE id = $1 RETURNING id, b",
        "PREPARE touch (bigint) AS UPDATE t SET b = b WHERE id = $1",
    ];
    for sql in setup {
        for client in [&mut proxy, &mut plain] {
            let r = client.query(sql).await;
            assert!(r.error_codes().is_empty(), "{sql}: {:?}", r.error_codes());
        }
    }
    let x = |sql, stmt, portal, formats, limits| Exchange {
        sql,
        stmt,
        portal,
        formats,
        limits,
    };
    let all: &[i32] = &[0];
    let exchanges = [
        x("EXECUTE one(2)", "s1", "", &[1], all),
        x("EXECUTE one(2)", "", "", &[0], all),
        x("EXECUTE one (1 + 2)", "", "p", &[], all),
        x("EXECUTE one(42)", "", "", &[1], all),
        x("EXECUTE every", "s2", "", &[1], all),
        x("EXECUTE every", "", "p", &[0], &[1, 1, 0]),
        x("EXECUTE counted", "", "", &[1, 0], all),
        x("EXECUTE bump(3, 5)", "s3", "", &[1], all),
        x("EXECUTE touch(1)", "", "", &[], all),
        x("EXECUTE nosuch(1)", "s4", "", &[], all),
    ];
    let mut diffs = Vec::new();
    for block in [false, true] {
        if block {
            for client in [&mut proxy, &mut plain] {
                assert!(client.query("BEGIN").await.error_codes().is_empty());
            }
        }
        for e in &exchanges {
            let a = run(&mut proxy, e).await;
            let b = run(&mut plain, e).await;
            if a != b {
                diffs.push(format!(
                    "{} (block: {block}):\n  pieskieo:   {a}\n  postgresql: {b}",
                    e.sql
                ));
            }
            // An error ends the block; the next exchanges run outside one.
            if block && a.ends_with("ZE") {
                for client in [&mut proxy, &mut plain] {
                    client.query("ROLLBACK").await;
                    client.query("BEGIN").await;
                }
            }
        }
        if block {
            for client in [&mut proxy, &mut plain] {
                client.query("COMMIT").await;
            }
        }
    }
    // In one segment with other statements (the shard's statement is
    // created there mid-segment): a failure later in it undoes the
    // `EXECUTE`'s write with the rest, as PostgreSQL's implicit block does.
    for client in [&mut proxy, &mut plain] {
        client
            .query("PREPARE later (bigint) AS UPDATE t SET b = b * 2 WHERE id = $1")
            .await;
    }
    // (On each key's shard: some are not the shard `PREPARE` was checked on.)
    for (id, fail) in [
        (1, true),
        (2, true),
        (3, true),
        (1, false),
        (2, false),
        (3, false),
    ] {
        let pipeline: &[(String, &[i16])] = &[
            (format!("UPDATE t SET b = b + 100 WHERE id = {id}"), &[]),
            (format!("EXECUTE later({id})"), &[1]),
            (format!("EXECUTE one({id})"), &[1]),
            ("SELECT 1 / 0".to_string(), &[]),
        ];
        let mut answers = Vec::new();
        for client in [&mut proxy, &mut plain] {
            for (sql, formats) in pipeline {
                if !fail && sql.contains("/ 0") {
                    continue;
                }
                let mut p = vec![0];
                p.extend_from_slice(sql.as_bytes());
                p.extend_from_slice(&[0, 0, 0]);
                client.send(b'P', &p).await;
                client.send(b'B', &bind_formats("", "", formats)).await;
                client.send(b'D', &named(b'P', "")).await;
                client.send(b'E', &execute("", 0)).await;
            }
            client.send(b'S', b"").await;
            let r = client.until_ready().await;
            let mut got: Vec<String> = r.messages.iter().map(|(t, b)| shown(*t, b)).collect();
            got.push(format!("Z{}", r.status as char));
            answers.push(got.join(" "));
        }
        if answers[0] != answers[1] {
            diffs.push(format!(
                "pipeline (id {id}, failing: {fail}):\n  pieskieo:   {}\n  postgresql: {}",
                answers[0], answers[1]
            ));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    // The writes are PostgreSQL's (the block's rolled back with it).
    let sum = "SELECT id, b FROM t ORDER BY id";
    let (a, b) = (proxy.query(sum).await, plain.query(sum).await);
    let show = |r: &crate::harness::Reply| {
        r.messages
            .iter()
            .map(|(t, b)| shown(*t, b))
            .collect::<Vec<_>>()
    };
    assert_eq!(show(&a), show(&b));
}

/// An error of the shard's `EXECUTE` names the statement by its name on
/// server connections and points into that text: 42601 says
/// `prepared statement "pieskieo_sql_..."` where PostgreSQL says `"one"`,
/// and a bad argument's position is off by the names' difference in
/// length. (The same in the simple query protocol.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not fixed: the shard runs EXECUTE of the statement's name there, and its errors are passed on as they are (README, limits)"]
async fn sql_execute_errors_name_the_client_s_statement() {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut proxy = RawClient::connect(c.port()).await;
    let mut plain = RawClient::connect(oracle_port).await;
    let mut diffs = Vec::new();
    for client in [&mut proxy, &mut plain] {
        let sql = "PREPARE one (bigint) AS SELECT id, b, s FROM t WHERE id = $1";
        assert!(client.query(sql).await.error_codes().is_empty());
    }
    for sql in ["EXECUTE one", "EXECUTE one('x')"] {
        let e = Exchange {
            sql,
            stmt: "",
            portal: "",
            formats: &[],
            limits: &[0],
        };
        let (a, b) = (run(&mut proxy, &e).await, run(&mut plain, &e).await);
        if a != b {
            diffs.push(format!("{sql}:\n  pieskieo:   {a}\n  postgresql: {b}"));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

// ---------------------------------------------------------------------
// Review probes: each script runs through Pieskieo and against one plain
// PostgreSQL, step by step; every step's messages must agree.

use crate::harness::Reply;

/// A step of a script: a simple query, or extended messages then Sync.
enum Step {
    Q(String),
    X(Vec<(u8, Vec<u8>)>),
}

fn q(sql: &str) -> Step {
    Step::Q(sql.to_string())
}

fn parse_msg(stmt: &str, sql: &str, types: &[u32]) -> (u8, Vec<u8>) {
    let mut p = stmt.as_bytes().to_vec();
    p.push(0);
    p.extend_from_slice(sql.as_bytes());
    p.push(0);
    p.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        p.extend_from_slice(&t.to_be_bytes());
    }
    (b'P', p)
}

/// Bind with text parameter values.
fn bind_values(portal: &str, stmt: &str, values: &[&str], formats: &[i16]) -> (u8, Vec<u8>) {
    let mut b = Vec::new();
    for name in [portal, stmt] {
        b.extend_from_slice(name.as_bytes());
        b.push(0);
    }
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
    for f in formats {
        b.extend_from_slice(&f.to_be_bytes());
    }
    (b'B', b)
}

/// The unnamed statement and portal: Parse, Bind, Describe portal, Execute.
fn unnamed(sql: &str, formats: &[i16]) -> Vec<(u8, Vec<u8>)> {
    vec![
        parse_msg("", sql, &[]),
        (b'B', bind_formats("", "", formats)),
        (b'D', named(b'P', "")),
        (b'E', execute("", 0)),
    ]
}

fn x(sql: &str, formats: &[i16]) -> Step {
    Step::X(unnamed(sql, formats))
}

/// Several statements in one segment (one Sync).
fn seg(sqls: &[&str]) -> Step {
    Step::X(sqls.iter().flat_map(|s| unnamed(s, &[])).collect())
}

fn show_reply(r: &Reply) -> String {
    let mut out: Vec<String> = r.messages.iter().map(|(t, b)| shown(*t, b)).collect();
    out.push(format!("Z{}", r.status as char));
    out.join(" ")
}

async fn step(c: &mut RawClient, s: &Step) -> String {
    match s {
        Step::Q(sql) => show_reply(&c.query(sql).await),
        Step::X(msgs) => {
            for (t, b) in msgs {
                c.send(*t, b).await;
            }
            c.send(b'S', b"").await;
            show_reply(&c.until_ready().await)
        }
    }
}

fn label(s: &Step) -> String {
    match s {
        Step::Q(sql) => format!("Q {sql}"),
        Step::X(msgs) => {
            let sqls: Vec<String> = msgs
                .iter()
                .filter(|(t, _)| *t == b'P')
                .map(|(_, b)| {
                    let z = b.iter().position(|c| *c == 0).unwrap();
                    let rest = &b[z + 1..];
                    let e = rest.iter().position(|c| *c == 0).unwrap();
                    String::from_utf8_lossy(&rest[..e]).into_owned()
                })
                .collect();
            format!("X {sqls:?} ({} messages)", msgs.len())
        }
    }
}

/// Runs `script` on both, step by step: the steps whose answers differ.
async fn script(proxy: &mut RawClient, plain: &mut RawClient, script: &[Step]) -> Vec<String> {
    let mut diffs = Vec::new();
    for s in script {
        let a = step(proxy, s).await;
        let b = step(plain, s).await;
        if a != b {
            diffs.push(format!(
                "{}:\n  pieskieo:   {a}\n  postgresql: {b}",
                label(s)
            ));
        }
    }
    diffs
}

const DATA: &str = "SELECT id, b FROM t ORDER BY id";

/// PostgreSQL's `EXECUTE` finds the statement by its name when the portal
/// runs: a portal bound in a block, then the statement DEALLOCATEd (or
/// prepared anew) before its Execute, fails with 26000 (or runs the new
/// statement).
async fn found_when_the_portal_runs(prepared_anew: bool) {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut proxy = RawClient::connect(c.port()).await;
    let mut plain = RawClient::connect(oracle_port).await;
    let bind_p = || {
        Step::X(vec![
            parse_msg("s", "EXECUTE x", &[]),
            (b'B', bind_formats("p", "s", &[])),
        ])
    };
    let run_p = || Step::X(vec![(b'E', execute("p", 0))]);
    let anew = [
        q("PREPARE x AS SELECT id, s FROM t WHERE id = 2"),
        q("BEGIN"),
        Step::X(vec![(b'C', named(b'S', "s"))]),
        bind_p(),
        q("DEALLOCATE x"),
        q("PREPARE x AS SELECT id, s FROM t WHERE id = 3"),
        run_p(),
        q("COMMIT"),
    ];
    let steps = match prepared_anew {
        false => vec![
            q("PREPARE x AS SELECT id, s FROM t WHERE id = 2"),
            q("BEGIN"),
            bind_p(),
            q("DEALLOCATE x"),
            run_p(),
            q("ROLLBACK"),
        ],
        true => anew.into(),
    };
    let diffs = script(&mut proxy, &mut plain, &steps).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_execute_finds_the_statement_when_the_portal_runs() {
    found_when_the_portal_runs(false).await;
}

/// Prepared anew with another body between Bind and Execute: PostgreSQL
/// runs the new one; Pieskieo refuses (0A000, bind the portal again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not fixed: refused with 0A000 (the shard's portal is bound to the old statement); bind the portal again (README)"]
async fn review_execute_runs_a_statement_prepared_anew_after_bind() {
    found_when_the_portal_runs(true).await;
}

/// `DISCARD ALL` deallocates every prepared statement: an `EXECUTE` after
/// it is described NoData and fails with 26000, in both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_execute_after_discard_all() {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut proxy = RawClient::connect(c.port()).await;
    let mut plain = RawClient::connect(oracle_port).await;
    let steps = [
        q("PREPARE x AS SELECT id, s FROM t WHERE id = 2"),
        q("DISCARD ALL"),
        Step::X(vec![
            parse_msg("s", "EXECUTE x", &[]),
            (b'D', named(b'S', "s")),
            (b'B', bind_formats("", "s", &[])),
            (b'E', execute("", 0)),
        ]),
        q("EXECUTE x"),
        q("PREPARE x AS SELECT 1 AS one"),
    ];
    let diffs = script(&mut proxy, &mut plain, &steps).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// `EXECUTE` of an UPDATE without a key (every shard) in the extended
/// protocol: all or nothing across the shards, at Sync, on an error later
/// in the segment, on an error on one shard only, and in a block with
/// savepoints rolled back to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_execute_of_a_write_on_every_shard_is_atomic() {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut proxy = RawClient::connect(c.port()).await;
    let mut plain = RawClient::connect(oracle_port).await;
    let steps = [
        q("PREPARE bumpall AS UPDATE t SET b = b + 1"),
        q("PREPARE div AS UPDATE t SET b = 100 / (b - 20)"),
        q("PREPARE bumpret AS UPDATE t SET b = b + 1000 RETURNING b > 0 AS pos"),
        x("EXECUTE bumpall", &[]),
        q(DATA),
        seg(&["EXECUTE bumpall", "SELECT 1 / 0"]),
        q(DATA),
        x("EXECUTE div", &[]),
        q(DATA),
        seg(&["EXECUTE bumpall", "EXECUTE div"]),
        q(DATA),
        seg(&["UPDATE t SET b = b + 5 WHERE id = 1", "EXECUTE bumpall"]),
        q(DATA),
        Step::X(vec![
            parse_msg("", "EXECUTE bumpret", &[]),
            (b'B', bind_formats("", "", &[1])),
            (b'D', named(b'P', "")),
            (b'E', execute("", 0)),
        ]),
        q(DATA),
        q("BEGIN"),
        q("SAVEPOINT a"),
        x("EXECUTE bumpall", &[]),
        q("ROLLBACK TO a"),
        q(DATA),
        x("EXECUTE bumpall", &[]),
        q("SAVEPOINT b"),
        x("EXECUTE div", &[]),
        x("EXECUTE bumpall", &[]),
        q("ROLLBACK TO b"),
        x("EXECUTE bumpall", &[1]),
        q(DATA),
        q("COMMIT"),
        q(DATA),
    ];
    let diffs = script(&mut proxy, &mut plain, &steps).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// `EXECUTE` of writes to a reference table (on every shard, a copy each):
/// the client sees one answer, and every shard has the same rows, also
/// after a failure later in the segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_execute_of_a_write_to_a_reference_table() {
    let (_o, oracle_port, c) =
        both(&["CREATE TABLE countries (code text PRIMARY KEY, name text)"]).await;
    let mut proxy = RawClient::connect(c.port()).await;
    let mut plain = RawClient::connect(oracle_port).await;
    let steps = [
        q("PREPARE addc (text) AS INSERT INTO countries VALUES ($1, 'x') RETURNING code, name"),
        q("PREPARE renc AS UPDATE countries SET name = name || '!'"),
        x("EXECUTE addc('fr')", &[1]),
        x("EXECUTE addc('fr')", &[]),
        seg(&["EXECUTE addc('de')", "SELECT 1 / 0"]),
        seg(&["EXECUTE addc('it')", "EXECUTE renc"]),
        q("BEGIN"),
        x("EXECUTE addc('es')", &[]),
        q("SAVEPOINT a"),
        x("EXECUTE addc('pt')", &[]),
        q("ROLLBACK TO a"),
        x("EXECUTE renc", &[]),
        q("COMMIT"),
        q("SELECT code, name FROM countries ORDER BY code"),
    ];
    let diffs = script(&mut proxy, &mut plain, &steps).await;
    let mut copies = Vec::new();
    for i in 0..3 {
        let s = c.shard(i).await;
        let rows = s
            .query(
                "SELECT string_agg(code || '=' || name, ',' ORDER BY code) FROM countries",
                &[],
            )
            .await
            .unwrap();
        copies.push(rows[0].get::<_, Option<String>>(0));
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    assert!(
        copies.iter().all(|c| *c == copies[0]),
        "copies differ: {copies:?}"
    );
}

/// `EXECUTE` whose arguments are the Bind's parameters (`EXECUTE one($1)`),
/// a Bind with the wrong number of values, and merged reads with arguments,
/// binary results and row limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_execute_with_bound_parameters_and_merged_limits() {
    bound_and_limited(false).await;
}

/// Errors of a shard's `EXECUTE` name its statement there and point into
/// that text; a merged `EXECUTE` evaluates its arguments at Bind, where
/// PostgreSQL does at Execute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not fixed: the errors' statement name and position, and a merged EXECUTE's arguments evaluated at Bind (README)"]
async fn review_execute_bound_values_fail_as_in_postgresql() {
    bound_and_limited(true).await;
}

async fn bound_and_limited(known: bool) {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut proxy = RawClient::connect(c.port()).await;
    let mut plain = RawClient::connect(oracle_port).await;
    let with = |sql: &str, types: &[u32], values: &[&str], formats: &[i16], limits: &[i32]| {
        let mut m = vec![
            parse_msg("", sql, types),
            (b'D', named(b'S', "")),
            bind_values("", "", values, formats),
            (b'D', named(b'P', "")),
        ];
        for l in limits {
            m.push((b'E', execute("", *l)));
        }
        Step::X(m)
    };
    let mut steps = vec![
        q("PREPARE one (bigint) AS SELECT id, b, s FROM t WHERE id = $1"),
        q("PREPARE big (bigint) AS SELECT id, b FROM t WHERE b > $1 ORDER BY id"),
        q("PREPARE tot (bigint) AS SELECT sum(b) + $1 AS s, count(*) FROM t"),
    ];
    if known {
        steps.extend([
            with("EXECUTE one($1)", &[20], &["2"], &[1], &[0]),
            with("EXECUTE one($1)", &[], &["2"], &[1], &[0]),
            with("EXECUTE one(2)", &[], &["2"], &[], &[0]),
            with("EXECUTE big($1)", &[20], &["5"], &[1], &[1, 0]),
        ]);
    }
    steps.extend([
        with("EXECUTE big(5)", &[], &["2"], &[], &[0]),
        with("EXECUTE big(15)", &[], &[], &[1, 0], &[1, 1, 1]),
        with("EXECUTE tot(1)", &[], &[], &[1], &[0]),
        q("BEGIN"),
        with("EXECUTE big(15)", &[], &[], &[1], &[1]),
        q("UPDATE t SET b = b + 1 WHERE id = 3"),
        with("EXECUTE big(15)", &[], &[], &[], &[0]),
        q("COMMIT"),
    ]);
    let diffs = script(&mut proxy, &mut plain, &steps).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// A client that leaves mid-segment (after the shard's statement was
/// created and its write ran, before Sync): the write is undone as in
/// PostgreSQL, and no shard connection stays in a transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_execute_client_leaves_mid_segment() {
    let (_o, oracle_port, c) = both(&[]).await;
    for port in [c.port(), oracle_port] {
        let mut a = RawClient::connect(port).await;
        a.query("PREPARE bump (bigint, int) AS UPDATE t SET b = b + $2 WHERE id = $1")
            .await;
        a.query("PREPARE bumpall AS UPDATE t SET b = b + 1").await;
        for sql in ["EXECUTE bump(2, 7)", "EXECUTE bumpall"] {
            for m in unnamed(sql, &[]) {
                a.send(m.0, &m.1).await;
            }
        }
        a.send(b'H', b"").await;
        // ParseComplete, BindComplete, NoData, CommandComplete, twice.
        for _ in 0..8 {
            let (t, b) = a.read().await;
            assert_ne!(t, b'E', "{}", String::from_utf8_lossy(&b));
        }
        drop(a);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut proxy = RawClient::connect(c.port()).await;
    let mut plain = RawClient::connect(oracle_port).await;
    let diffs = script(&mut proxy, &mut plain, &[q(DATA)]).await;
    let mut open = Vec::new();
    for i in 0..3 {
        let s = c.shard(i).await;
        let rows = s
            .query(
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        open.push(rows[0].get::<_, i64>(0));
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    assert!(
        open.iter().all(|n| *n == 0),
        "open transactions on shards: {open:?}"
    );
}

/// Two clients prepare the same name with different bodies, and run it
/// through the extended protocol in turn on the pooled connections: each
/// gets its own statement's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_execute_same_name_two_clients() {
    let (_o, _oracle_port, c) = both(&[]).await;
    let mut a = RawClient::connect(c.port()).await;
    let mut b = RawClient::connect(c.port()).await;
    a.query("PREPARE q (bigint) AS SELECT 'a'::text AS who, id FROM t WHERE id = $1")
        .await;
    b.query("PREPARE q (bigint) AS SELECT 'b'::text AS who, id FROM t WHERE id = $1")
        .await;
    let mut bad = Vec::new();
    for round in 0..3 {
        for id in 1..=3 {
            for (who, cl) in [("a", &mut a), ("b", &mut b)] {
                let got = step(cl, &x(&format!("EXECUTE q({id})"), &[])).await;
                if !got.contains(&format!("|\u{1}{who}|")) {
                    bad.push(format!("round {round} id {id} client {who}: {got}"));
                }
            }
        }
        if round == 1 {
            a.query("DEALLOCATE q").await;
            a.query("PREPARE q (bigint) AS SELECT 'a'::text AS who, id FROM t WHERE id = $1")
                .await;
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

async fn both_with(extra: &str) -> (crate::harness::Servers, u16, crate::harness::Cluster) {
    let (servers, oracle_port) = crate::prepared_simple::oracle().await;
    let c = crate::prepared_simple::cluster(extra).await;
    (servers, oracle_port, c)
}

/// REPEATABLE READ: the block's snapshot, taken by its first statement (a
/// read, or the `PREPARE` itself), is what a later `EXECUTE` through the
/// extended protocol sees on every shard, while another client commits
/// changes to every row in between. With `consistent_reads`.
async fn repeatable_read_script(extra: &str) -> Vec<String> {
    let (_o, oracle_port, c) = both_with(extra).await;
    let mut diffs = Vec::new();
    for first in [
        "SELECT count(*) FROM t",
        "PREPARE one (bigint) AS SELECT id, b FROM t WHERE id = $1",
    ] {
        let mut a = RawClient::connect(c.port()).await;
        let mut w = RawClient::connect(c.port()).await;
        let mut pa = RawClient::connect(oracle_port).await;
        let mut pw = RawClient::connect(oracle_port).await;
        let head = [q("BEGIN ISOLATION LEVEL REPEATABLE READ"), q(first)];
        diffs.extend(script(&mut a, &mut pa, &head).await);
        if !first.starts_with("PREPARE") {
            diffs.extend(
                script(
                    &mut a,
                    &mut pa,
                    &[q(
                        "PREPARE one (bigint) AS SELECT id, b FROM t WHERE id = $1",
                    )],
                )
                .await,
            );
        }
        diffs.extend(script(&mut w, &mut pw, &[q("UPDATE t SET b = b + 1000")]).await);
        let tail = [
            x("EXECUTE one(1)", &[]),
            x("EXECUTE one(2)", &[1]),
            x("EXECUTE one(3)", &[]),
            q("COMMIT"),
        ];
        diffs.extend(script(&mut a, &mut pa, &tail).await);
    }
    diffs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_execute_repeatable_read_consistent() {
    let diffs = repeatable_read_script("consistent_reads = true").await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not fixed: without consistent_reads, a PREPARE first in a REPEATABLE READ block is checked on a pooled connection and takes no snapshot of the block's (README)"]
async fn review_execute_repeatable_read_not_consistent() {
    let diffs = repeatable_read_script("").await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// Against the same statements not through `EXECUTE` (whether a difference
/// found above is this change's own): an extra Bind value for a one-shard
/// statement and a merged read, an UPDATE ... RETURNING on every shard
/// fetched with row limits (PostgreSQL's tag counts the last fetch's rows),
/// and an argument that fails when evaluated, for a one-shard and a merged
/// `EXECUTE` (PostgreSQL: BindComplete, then the error at Execute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not fixed: a shard's 08P01 names the proxy's statement; the tag after a row-limited fetch across shards counts every row (plain statements too); a merged EXECUTE evaluates its arguments at Bind (README)"]
async fn review_execute_compared_with_plain_statements() {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut proxy = RawClient::connect(c.port()).await;
    let mut plain = RawClient::connect(oracle_port).await;
    let extra = |sql: &str| {
        Step::X(vec![
            parse_msg("", sql, &[]),
            bind_values("", "", &["2"], &[]),
            (b'E', execute("", 0)),
        ])
    };
    let limited = |sql: &str| {
        Step::X(vec![
            parse_msg("", sql, &[]),
            (b'B', bind_formats("", "", &[])),
            (b'E', execute("", 1)),
            (b'E', execute("", 0)),
        ])
    };
    let steps = [
        q("PREPARE one (bigint) AS SELECT id, b, s FROM t WHERE id = $1"),
        q("PREPARE big (bigint) AS SELECT id, b FROM t WHERE b > $1 ORDER BY id"),
        q("PREPARE bumpret AS UPDATE t SET b = b + 1000 RETURNING b > 0 AS pos"),
        extra("SELECT id FROM t WHERE id = 2"),
        extra("SELECT id, b FROM t WHERE b > 5 ORDER BY id"),
        extra("EXECUTE big(5)"),
        limited("UPDATE t SET b = b + 1000 RETURNING b > 0 AS pos"),
        limited("EXECUTE bumpret"),
        x("EXECUTE one(1 / 0)", &[]),
        x("EXECUTE big(1 / 0)", &[]),
        q(DATA),
    ];
    let diffs = script(&mut proxy, &mut plain, &steps).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// tokio-postgres: `query` and `prepare` of `EXECUTE` (a one-shard read,
/// a merged read, a write), typed rows in binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_execute_through_tokio_postgres() {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut all = Vec::new();
    for (who, url) in [
        (
            "postgresql",
            format!("host=127.0.0.1 port={oracle_port} user=plain password=plainpass dbname=app"),
        ),
        ("pieskieo", c.url()),
    ] {
        let client = crate::harness::connect(&url).await.unwrap();
        let bad = tokio_postgres_checks(&client).await;
        all.extend(bad.into_iter().map(|b| format!("{who}: {b}")));
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

async fn tokio_postgres_checks(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .batch_execute(
            "PREPARE one (bigint) AS SELECT id, b, s FROM t WHERE id = $1; \
             PREPARE every AS SELECT id, s FROM t ORDER BY id; \
             PREPARE counted AS SELECT count(*), sum(b)::bigint, max(s) FROM t; \
             PREPARE bump (bigint) AS UPDATE t SET b = b + 1 WHERE id = $1 RETURNING b",
        )
        .await
        .unwrap();
    let mut bad = Vec::new();
    match client.query("EXECUTE one(2)", &[]).await {
        Ok(r)
            if r.len() == 1 && r[0].get::<_, i64>(0) == 2 && r[0].get::<_, String>(2) == "it's" => {
        }
        other => bad.push(format!("query EXECUTE one(2): {other:?}")),
    }
    match client.query("EXECUTE every", &[]).await {
        Ok(r) if r.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>() == vec![1, 2, 3] => {}
        other => bad.push(format!("query EXECUTE every: {other:?}")),
    }
    match client.prepare("EXECUTE counted").await {
        Ok(st) => {
            if st.columns().len() != 3 {
                bad.push(format!("prepare EXECUTE counted: {:?}", st.columns()));
            }
            match client.query_one(&st, &[]).await {
                Ok(r)
                    if (
                        r.get::<_, i64>(0),
                        r.get::<_, i64>(1),
                        r.get::<_, String>(2),
                    ) == (3, 60, "three".into()) => {}
                other => bad.push(format!("query_one EXECUTE counted: {other:?}")),
            }
        }
        Err(e) => bad.push(format!("prepare EXECUTE counted: {e:?}")),
    }
    match client.query_one("EXECUTE bump(3)", &[]).await {
        Ok(r) if r.get::<_, i64>(0) == 31 => {}
        other => bad.push(format!("query_one EXECUTE bump(3): {other:?}")),
    }
    match client.execute("EXECUTE bump(1)", &[]).await {
        Ok(1) => {}
        other => bad.push(format!("execute EXECUTE bump(1): {other:?}")),
    }
    bad
}

/// Several `PREPARE`s in one simple query (as tokio-postgres's
/// `batch_execute` sends them), then `EXECUTE` of each through the
/// extended protocol: each described with its own statement's columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_execute_after_prepares_in_one_query() {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut proxy = RawClient::connect(c.port()).await;
    let mut plain = RawClient::connect(oracle_port).await;
    let describe = |sql: &str| {
        Step::X(vec![
            parse_msg("s0", sql, &[]),
            (b'D', named(b'S', "s0")),
            (b'B', bind_formats("", "s0", &[1])),
            (b'E', execute("", 0)),
            (b'C', named(b'S', "s0")),
        ])
    };
    let steps = [
        q(
            "PREPARE one (bigint) AS SELECT id, b, s FROM t WHERE id = $1; \
           PREPARE every AS SELECT id, s FROM t ORDER BY id; \
           PREPARE bump (bigint) AS UPDATE t SET b = b + 1 WHERE id = $1 RETURNING b",
        ),
        describe("EXECUTE one(2)"),
        describe("EXECUTE every"),
        describe("EXECUTE bump(3)"),
        q("PREPARE two (bigint) AS SELECT s FROM t WHERE id = $1"),
        describe("EXECUTE two(2)"),
    ];
    let diffs = script(&mut proxy, &mut plain, &steps).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// Parse and Describe of `EXECUTE` alone before a Sync (how tokio-postgres
/// and asyncpg prepare): described with the statement's columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_execute_described_alone_in_its_segment() {
    let (_o, oracle_port, c) = both(&[]).await;
    let mut proxy = RawClient::connect(c.port()).await;
    let mut plain = RawClient::connect(oracle_port).await;
    let alone =
        |stmt: &str, sql: &str| Step::X(vec![parse_msg(stmt, sql, &[]), (b'D', named(b'S', stmt))]);
    let steps = [
        q("PREPARE one (bigint) AS SELECT id, b, s FROM t WHERE id = $1"),
        q("PREPARE counted AS SELECT count(*) FROM t"),
        alone("s0", "EXECUTE one(2)"),
        alone("", "EXECUTE one(2)"),
        alone("s1", "EXECUTE counted"),
        Step::X(vec![
            (b'B', bind_formats("", "s0", &[1])),
            (b'E', execute("", 0)),
        ]),
    ];
    let diffs = script(&mut proxy, &mut plain, &steps).await;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
