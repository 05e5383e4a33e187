//! Fixed sessions run before the random ones: the five cases of issue 12 as
//! clients send them (psql, psycopg's pipeline, asyncpg's `executemany` and
//! `fetchval`, pg_dump's first statement), each compared like any session.

use super::generate::World;
use super::session::{Class, Msg, Session, Step, REFUSED};

fn q(sql: &str) -> Step {
    Step::Query(sql.split("; ").map(str::to_string).collect())
}

fn parse(name: &str, sql: &str) -> Msg {
    Msg::Parse {
        name: name.to_string(),
        sql: sql.to_string(),
    }
}

fn bind(stmt: &str, params: &[i64]) -> Msg {
    Msg::Bind {
        portal: String::new(),
        stmt: stmt.to_string(),
        params: params.iter().map(|p| p.to_string()).collect(),
    }
}

fn execute(max_rows: i32) -> Msg {
    Msg::Execute {
        portal: String::new(),
        max_rows,
    }
}

/// Parse, Bind and Execute of the unnamed statement.
fn run(sql: &str, params: &[i64]) -> Vec<Msg> {
    vec![parse("", sql), bind("", params), execute(0)]
}

pub(super) fn corpus(w: &World) -> Vec<(&'static str, Class, Session)> {
    // One key on each shard.
    let on = |s: usize| (1..).find(|k| w.shard_of[*k as usize] == s).unwrap();
    let (a, b, c) = (on(0), on(1), on(2));
    let add = "UPDATE t SET b = b + $2 WHERE id = $1";
    let session = |steps: Vec<Step>| Session { steps };
    let pipeline = |parts: Vec<Vec<Msg>>| Step::Pipeline(parts.concat());
    let rows = |deltas: &[(i64, i64)]| -> Vec<Msg> {
        let mut m = Vec::new();
        for (i, (id, delta)) in deltas.iter().enumerate() {
            if i > 0 {
                m.push(Msg::Flush);
            }
            m.push(bind("ins", &[*id, *delta]));
            m.push(execute(0));
        }
        m.push(Msg::Sync);
        m
    };
    vec![
        (
            "case 1: a CHECK failure on another shard, COMMIT in the same query",
            Class::Simple,
            session(vec![q(&format!(
                "UPDATE t SET b = b + 50 WHERE id = {a}; UPDATE t SET b = b - 1000 WHERE id = {b}; COMMIT"
            ))]),
        ),
        (
            "case 1: SET LOCAL first in a query whose last statement fails",
            Class::Simple,
            session(vec![q(&format!(
                "SET LOCAL lock_timeout = '1s'; UPDATE t SET b = b + 50 WHERE id = {a}; UPDATE t SET b = b - 1000 WHERE id = {b}"
            ))]),
        ),
        (
            "case 2: a statement the proxy refuses after a write, then Sync",
            Class::Extended,
            session(vec![pipeline(vec![
                run(add, &[a, 5]),
                run(REFUSED[0].0, &[]),
                vec![Msg::Sync],
            ])]),
        ),
        (
            "case 3: psycopg pipeline() + transaction() with an error inside, then ROLLBACK",
            Class::Extended,
            session(vec![pipeline(vec![
                run("BEGIN", &[]),
                run(add, &[a, 1]),
                vec![Msg::Sync],
                run("SELECT b / $2 FROM t WHERE id = $1", &[b, 0]),
                vec![Msg::Sync],
                run(add, &[c, 1]),
                vec![Msg::Sync],
                run("ROLLBACK", &[]),
                vec![Msg::Sync],
            ])]),
        ),
        (
            "case 4: asyncpg executemany over every shard outside a transaction, last row bad",
            Class::Extended,
            session(vec![
                pipeline(vec![vec![
                    parse("ins", add),
                    Msg::Describe {
                        portal: false,
                        name: "ins".to_string(),
                    },
                    Msg::Sync,
                ]]),
                pipeline(vec![rows(&[(a, 1), (b, 1), (c, -1000)])]),
            ]),
        ),
        (
            "case 4: asyncpg executemany over every shard inside a transaction",
            Class::Mixed,
            session(vec![
                q("BEGIN"),
                pipeline(vec![vec![parse("ins", add), Msg::Sync]]),
                pipeline(vec![rows(&[(a, 1), (b, 1), (c, 1)])]),
                q("COMMIT"),
            ]),
        ),
        (
            "case 4: asyncpg fetchval of a cross-shard count(*) (Execute with a row limit)",
            Class::Extended,
            session(vec![pipeline(vec![
                vec![parse("", "SELECT count(*), sum(b) FROM t"), bind("", &[]), execute(1)],
                vec![Msg::Sync],
            ])]),
        ),
        (
            "simple BEGIN, a pipeline over two shards, a failing pipeline, simple ROLLBACK",
            Class::Mixed,
            session(vec![
                q("BEGIN"),
                pipeline(vec![run(add, &[a, 1]), run(add, &[b, 1]), vec![Msg::Sync]]),
                pipeline(vec![
                    run("SELECT b / $2 FROM t WHERE id = $1", &[c, 0]),
                    vec![Msg::Sync],
                ]),
                q("ROLLBACK"),
            ]),
        ),
        (
            "extended BEGIN, a simple write, a failing extended write, simple COMMIT",
            Class::Mixed,
            session(vec![
                pipeline(vec![run("BEGIN", &[]), vec![Msg::Sync]]),
                q(&format!("UPDATE t SET b = b + 1 WHERE id = {a}")),
                pipeline(vec![run(add, &[b, -1000]), vec![Msg::Sync]]),
                q("COMMIT"),
            ]),
        ),
        (
            "simple BEGIN, extended writes on three shards with a savepoint, simple COMMIT",
            Class::Mixed,
            session(vec![
                q("BEGIN"),
                pipeline(vec![
                    run(add, &[a, 1]),
                    run("SAVEPOINT a", &[]),
                    run(add, &[b, 1]),
                    vec![Msg::Sync],
                    run(add, &[c, -1000]),
                    vec![Msg::Sync],
                ]),
                q("ROLLBACK TO a; UPDATE t SET b = b + 2 WHERE id = 1; COMMIT"),
            ]),
        ),
        (
            "a deferred conflict in an explicit block on two shards, found at COMMIT",
            Class::Simple,
            session(vec![
                q("BEGIN"),
                q(&format!("UPDATE t SET b = b + 1 WHERE id = {b}")),
                q("UPDATE t SET d = 5 WHERE id = 1"),
                q("COMMIT"),
            ]),
        ),
        (
            "long form: modes of a BEGIN inside a block apply to it (same level later is no error)",
            Class::Simple,
            session(vec![
                q("BEGIN; BEGIN ISOLATION LEVEL REPEATABLE READ"),
                q("SELECT current_setting('transaction_isolation')"),
                q(&format!(
                    "SELECT b FROM t WHERE id = {b}; BEGIN ISOLATION LEVEL REPEATABLE READ"
                )),
                q("COMMIT"),
            ]),
        ),
        (
            "long form: SET TRANSACTION ISOLATION LEVEL in a block before its first query",
            Class::Simple,
            session(vec![
                q("BEGIN"),
                q("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
                q(&format!("SELECT b FROM t WHERE id = {c}")),
                q("SHOW transaction_isolation"),
                q("COMMIT"),
            ]),
        ),
        (
            "long form: Describe of a statement without result columns in a failed block no shard joined",
            Class::Extended,
            session(vec![
                pipeline(vec![vec![parse("s1", "UPDATE t SET d = $2 WHERE id = $1"), Msg::Sync]]),
                pipeline(vec![run("BEGIN", &[]), run("SELECT 1/0", &[]), vec![Msg::Sync]]),
                pipeline(vec![vec![
                    Msg::Describe {
                        portal: false,
                        name: "s1".into(),
                    },
                    Msg::Sync,
                ]]),
                q("ROLLBACK"),
            ]),
        ),
        (
            "long form: ROLLBACK TO drops the portals bound since the savepoint",
            Class::Extended,
            session(vec![
                pipeline(vec![
                    run("BEGIN", &[]),
                    run("SAVEPOINT a", &[]),
                    vec![
                        parse("s4", add),
                        Msg::Bind {
                            portal: "p1".into(),
                            stmt: "s4".into(),
                            params: vec![a.to_string(), "1".into()],
                        },
                        Msg::Sync,
                    ],
                ]),
                pipeline(vec![
                    run("ROLLBACK TO a", &[]),
                    vec![
                        parse("s6", "SELECT id, b FROM t ORDER BY id"),
                        Msg::Bind {
                            portal: "p1".into(),
                            stmt: "s6".into(),
                            params: vec![],
                        },
                        Msg::Execute {
                            portal: "p1".into(),
                            max_rows: 0,
                        },
                        Msg::Sync,
                    ],
                ]),
                q("COMMIT"),
            ]),
        ),
        (
            "long form: a Bind with parameters takes the block's snapshot",
            Class::Mixed,
            session(vec![
                pipeline(vec![vec![parse("s4", "DELETE FROM t WHERE id = $1"), Msg::Sync]]),
                pipeline(vec![run("BEGIN", &[]), vec![bind("s4", &[b]), Msg::Sync]]),
                q("BEGIN ISOLATION LEVEL REPEATABLE READ"),
                q("ROLLBACK"),
            ]),
        ),
        (
            "long form: a Parse and Bind of SHOW take no snapshot; a later BEGIN's level is no error",
            Class::Mixed,
            session(vec![
                pipeline(vec![
                    run("BEGIN", &[]),
                    vec![parse("", "SHOW lock_timeout"), bind("", &[]), Msg::Sync],
                ]),
                q("BEGIN ISOLATION LEVEL REPEATABLE READ"),
                q(&format!("UPDATE t SET b = b + 1 WHERE id = {a}")),
                q("BEGIN ISOLATION LEVEL REPEATABLE READ; SHOW transaction_isolation"),
                q("COMMIT"),
            ]),
        ),
        (
            "long form: a portal name a refused Bind took is free again after Sync",
            Class::Extended,
            session(vec![
                pipeline(vec![vec![
                    parse("s1", REFUSED[0].0),
                    Msg::Bind {
                        portal: "p1".into(),
                        stmt: "s1".into(),
                        params: vec![],
                    },
                    Msg::Sync,
                ]]),
                pipeline(vec![vec![
                    parse("s2", "SELECT id, b FROM t ORDER BY id"),
                    Msg::Bind {
                        portal: "p1".into(),
                        stmt: "s2".into(),
                        params: vec![],
                    },
                    Msg::Execute {
                        portal: "p1".into(),
                        max_rows: 0,
                    },
                    Msg::Sync,
                ]]),
            ]),
        ),
        (
            "long form: a ROLLBACK outside a block in a segment ends the snapshot a Parse took",
            Class::Mixed,
            session(vec![
                pipeline(vec![
                    vec![parse("", "ROLLBACK"), bind("", &[])],
                    vec![parse("", add), execute(0)],
                    run("BEGIN", &[]),
                    vec![Msg::Sync],
                ]),
                q("BEGIN ISOLATION LEVEL REPEATABLE READ"),
                q("ROLLBACK"),
            ]),
        ),
        (
            "long form: a COMMIT that ends a segment's block ends its snapshot too",
            Class::Mixed,
            session(vec![
                pipeline(vec![
                    vec![parse("", add), bind("", &[a, 2])],
                    run("COMMIT", &[]),
                    vec![parse("s1", "BEGIN"), bind("s1", &[]), execute(0), Msg::Sync],
                ]),
                q("BEGIN ISOLATION LEVEL REPEATABLE READ"),
                q("ROLLBACK"),
            ]),
        ),
        (
            "long form: a BEGIN that turns a query's implicit block explicit brings its modes",
            Class::Simple,
            session(vec![
                q(&format!(
                    "SHOW lock_timeout; BEGIN ISOLATION LEVEL REPEATABLE READ; UPDATE t SET u = 6 WHERE id = {a}; BEGIN ISOLATION LEVEL REPEATABLE READ"
                )),
                q("SHOW transaction_isolation"),
                q("ROLLBACK"),
            ]),
        ),
        (
            "case 5: pg_dump's set_config('search_path', '', false), then another client",
            Class::Simple,
            session(vec![q("SELECT pg_catalog.set_config('search_path', '', false)")]),
        ),
    ]
}
