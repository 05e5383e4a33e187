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
