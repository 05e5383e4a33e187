//! Subqueries and CTEs against one plain PostgreSQL holding the same rows:
//! those whose sharded tables are all pinned to one shard run there (PREVIEW
//! shows one shard) and give the plain server's answer; those that look
//! pinned but are not never go to one shard.

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::harness::{exec, field, Cluster, RawClient, Servers};
use crate::merges::{binary, decode_answer, reference, Raw};

const TABLES: &str = r#"
reference_tables = ["kinds"]

[[tables]]
name = "facts"
key = "id"
key_type = "int8"

[[tables]]
name = "notes"
key = "fact_id"
key_type = "int8"
"#;

const SCHEMA: &str =
    "CREATE TABLE facts (id bigint PRIMARY KEY, grp int, qty int, price numeric(10,2), cat text);
CREATE TABLE notes (fact_id bigint, n int, body text, PRIMARY KEY (fact_id, n));
CREATE TABLE kinds (grp int PRIMARY KEY, label text)";

/// The same rows on the proxy and on the plain server.
async fn load(proxy: &Client, single: &Client) {
    exec(proxy, SCHEMA).await;
    exec(single, SCHEMA).await;
    let facts: Vec<String> = (1..=300i64)
        .map(|id| {
            let price = if id % 11 == 0 {
                "NULL".to_string()
            } else {
                format!("{}.{:02}", (id * 37) % 500 - 100, id % 100)
            };
            let cat = ["'a'", "'b'", "NULL", "'c''q'"][id as usize % 4];
            format!(
                "({id}, {}, {}, {price}, {cat})",
                id % 7,
                (id * 13) % 41 - 20
            )
        })
        .collect();
    let notes: Vec<String> = (1..=300i64)
        .filter(|id| id % 3 != 0)
        .flat_map(|id| (0..id % 4).map(move |n| format!("({id}, {n}, 'note {}')", (id + n) % 5)))
        .collect();
    let kinds = "INSERT INTO kinds VALUES (0, 'zero'), (1, 'one'), (2, 'two'), (3, 'three')";
    for c in [proxy, single] {
        exec(
            c,
            &format!(
                "INSERT INTO facts (id, grp, qty, price, cat) VALUES {}",
                facts.join(", ")
            ),
        )
        .await;
        exec(
            c,
            &format!(
                "INSERT INTO notes (fact_id, n, body) VALUES {}",
                notes.join(", ")
            ),
        )
        .await;
        exec(c, kinds).await;
    }
}

/// Runs each query on both and returns the differences; `ordered` queries
/// compare row order too.
async fn compare(raw: &mut RawClient, single: &Client, corpus: &[(String, bool)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (sql, ordered) in corpus {
        let want = reference(single, sql).await;
        let got = decode_answer(&raw.query(sql).await.messages);
        match (want, got) {
            (Ok(w), Ok(g)) => {
                let (mut w, mut g) = (w, g);
                if !ordered {
                    w.1.sort();
                    g.1.sort();
                }
                if w != g {
                    failures.push(format!("{sql}\n  reference: {w:?}\n  proxy:     {g:?}"));
                }
            }
            (w, g) => failures.push(format!("{sql}\n  reference: {w:?}\n  proxy: {g:?}")),
        }
    }
    failures
}

/// How many shards `PREVIEW` says a statement reaches.
async fn reached(c: &Client, sql: &str) -> usize {
    crate::harness::rows(c, &format!("PREVIEW {sql}"))
        .await
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_subqueries_and_ctes_run_on_one_shard_and_match_one_postgres() {
    let c = Cluster::start_with(3, TABLES).await;
    let plain = Servers::start(1);
    let single = plain.connect(0).await;
    let client = c.client().await;
    load(&client, &single).await;
    let k = c.key_on("facts", 1);
    let other = c.key_on("facts", 2);
    let pinned: Vec<(String, bool)> = [
        format!("WITH x AS (SELECT * FROM facts WHERE id = {k}) SELECT * FROM x"),
        format!("SELECT s.qty, s.price FROM (SELECT id, qty, price FROM facts WHERE id = {k}) s"),
        format!("SELECT count(*), sum(s.qty) FROM (SELECT id, qty FROM facts WHERE id = {k} AND qty > -100) s"),
        format!("SELECT id FROM facts WHERE id IN (SELECT {k})"),
        format!("SELECT id, qty FROM facts WHERE id = (SELECT {k})"),
        format!("SELECT * FROM facts WHERE id = {k} AND qty >= (SELECT min(qty) FROM facts WHERE id = {k})"),
        format!("SELECT f.id, (SELECT count(*) FROM notes n WHERE n.fact_id = f.id) FROM facts f WHERE f.id = {k}"),
        format!("SELECT * FROM facts f WHERE f.id = {k} AND EXISTS (SELECT 1 FROM notes n WHERE n.fact_id = f.id)"),
        format!("SELECT * FROM facts f WHERE f.id = {k} AND NOT EXISTS (SELECT 1 FROM notes n WHERE n.fact_id = f.id AND n.n > 5)"),
        format!("WITH j AS (SELECT f.id, n.body FROM facts f JOIN notes n ON n.fact_id = f.id WHERE n.fact_id = {k}) SELECT body, count(*) FROM j GROUP BY body ORDER BY body"),
        format!("SELECT f.*, k.label FROM facts f, (SELECT * FROM kinds) k WHERE f.id = {k} AND k.grp = f.grp"),
        format!("WITH facts AS (SELECT * FROM facts WHERE id = {k}) SELECT id, cat FROM facts"),
        format!("WITH RECURSIVE r(id, d) AS (SELECT id, 0 FROM facts WHERE id = {k} UNION ALL SELECT id, d + 1 FROM r WHERE d < 3) SELECT * FROM r ORDER BY d"),
        format!("SELECT * FROM (SELECT id FROM facts WHERE id = {k}) a UNION ALL SELECT fact_id FROM notes WHERE fact_id = {k}"),
        format!("SELECT * FROM facts WHERE id = {k} AND price IS DISTINCT FROM (SELECT max(price) FROM facts WHERE id = {k} AND false)"),
    ]
    .into_iter()
    .map(|s| (s, false))
    .collect();
    for (sql, _) in &pinned {
        assert_eq!(reached(&client, sql).await, 1, "{sql}");
    }
    let mut raw = RawClient::connect(c.port()).await;
    let failures = compare(&mut raw, &single, &pinned).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The same through the extended protocol with a bound key.
    let st = "SELECT s.qty FROM (SELECT qty FROM facts WHERE id = $1) s";
    for key in [k, other] {
        let want: Vec<i32> = single
            .query(st, &[&key])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let got: Vec<i32> = client
            .query(st, &[&key])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(want, got);
    }

    // Looks pinned, is not: these read rows of several shards, so they never
    // run on one (answered over every shard, or refused with 0A000).
    let spread = [
        format!("SELECT * FROM (SELECT * FROM facts WHERE id = {k} OR qty > 10) s"),
        format!("WITH x AS (SELECT * FROM facts WHERE id = {k}) SELECT * FROM x, facts y WHERE y.id = {other}"),
        format!("SELECT * FROM facts WHERE id = {k} AND qty > (SELECT avg(qty) FROM facts)"),
        format!("SELECT * FROM facts f WHERE NOT EXISTS (SELECT 1 FROM notes n WHERE n.fact_id = f.id AND n.fact_id = {k})"),
        format!("SELECT f.id, (SELECT count(*) FROM notes n WHERE n.fact_id = f.id AND n.fact_id = {k}) FROM facts f"),
        format!("SELECT * FROM facts f WHERE f.id = {k} AND EXISTS (SELECT 1 FROM notes WHERE fact_id = qty)"),
        format!("SELECT id FROM facts WHERE id IN (SELECT {k} UNION SELECT {other})"),
        "SELECT * FROM facts WHERE qty > 0 AND EXISTS (WITH facts AS (SELECT 1) SELECT 1 FROM facts)".to_string(),
    ];
    for sql in &spread {
        let r = raw.query(&format!("PREVIEW {sql}")).await;
        let rows = r.messages.iter().filter(|(t, _)| *t == b'D').count();
        let err = r.messages.iter().find(|(t, _)| *t == b'E');
        match err {
            Some((_, b)) => assert_eq!(field(b, b'C'), "0A000", "{sql}"),
            None => assert!(rows > 1, "{sql}: reaches {rows} shard(s)"),
        }
    }
    // Those that answer give the plain server's rows.
    let answerable: Vec<(String, bool)> = [
        format!("SELECT id FROM facts WHERE id IN (SELECT {k} UNION SELECT {other})"),
        "SELECT * FROM facts f WHERE f.qty > 5 AND EXISTS (SELECT 1 FROM kinds k WHERE k.grp = f.grp)".to_string(),
        // Correlated on the key: every shard answers for its own rows.
        "SELECT * FROM facts f WHERE EXISTS (SELECT 1 FROM notes n WHERE n.fact_id = f.id AND n.n > 1)".to_string(),
        "SELECT f.id, (SELECT count(*) FROM notes n WHERE n.fact_id = f.id) AS c FROM facts f".to_string(),
        "SELECT f.id FROM facts f WHERE NOT EXISTS (SELECT 1 FROM notes n WHERE n.fact_id = f.id)".to_string(),
        "WITH k AS (SELECT * FROM kinds WHERE grp < 3) SELECT f.id, k.label FROM facts f JOIN k ON k.grp = f.grp".to_string(),
    ]
    .into_iter()
    .map(|s| (s, false))
    .chain([
        // Window functions partitioned by the shard key: per shard.
        ("SELECT id, sum(qty) OVER (PARTITION BY id), rank() OVER (PARTITION BY grp, id ORDER BY qty) FROM facts".to_string(), false),
        ("SELECT id, qty, row_number() OVER (PARTITION BY id ORDER BY qty) AS r FROM facts ORDER BY qty DESC, id LIMIT 7".to_string(), true),
        ("SELECT f.id, (SELECT count(*) FROM notes n WHERE n.fact_id = f.id) AS c FROM facts f ORDER BY c DESC, f.id LIMIT 7".to_string(), true),
        ("SELECT count(*) FROM facts f WHERE EXISTS (SELECT 1 FROM notes n WHERE n.fact_id = f.id)".to_string(), true),
        ("SELECT f.grp, count(*), sum(f.qty) FROM facts f WHERE f.id IN (SELECT n.fact_id FROM notes n WHERE n.fact_id = f.id AND n.body = 'note 1') GROUP BY f.grp ORDER BY f.grp".to_string(), true),
    ])
    .collect();
    let failures = compare(&mut raw, &single, &answerable).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Subqueries, CTEs and expressions over aggregates across shards run in two
/// stages: the same rows and column types as one PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stage_plans_match_one_postgres() {
    let c = Cluster::start_with(3, TABLES).await;
    let plain = Servers::start(1);
    let mut single = plain.connect(0).await;
    let mut client = c.client().await;
    load(&client, &single).await;
    let unordered = [
        "SELECT count(*) FROM (SELECT id FROM facts WHERE qty > 10) s",
        "SELECT count(*), sum(s.qty), avg(s.price), min(s.cat) FROM (SELECT * FROM facts WHERE qty > 0) s",
        "SELECT count(*) FROM (SELECT id FROM facts WHERE qty > 1000) s",
        "WITH x AS (SELECT * FROM facts WHERE qty > 1) SELECT count(*), max(price) FROM x",
        "SELECT sum(qty) * 100 / count(*) FROM facts",
        "SELECT sum(price) * 100 / count(*), sum(qty)::numeric / count(*) FROM facts WHERE grp < 4",
        "SELECT round(avg(price), 2), coalesce(max(price), 0), count(*) > 0 FROM facts",
        "SELECT coalesce(max(price), 0) FROM facts WHERE qty > 1000",
        "SELECT count(*) FILTER (WHERE qty > 0) * 2, max(qty) - min(qty) FROM facts",
        "SELECT * FROM facts WHERE qty > (SELECT avg(qty) FROM facts)",
        "SELECT id FROM facts WHERE id IN (SELECT fact_id FROM notes WHERE body = 'note 1')",
        "SELECT count(*) FROM facts WHERE grp IN (SELECT grp FROM facts WHERE qty = 7)",
        "SELECT id FROM facts WHERE id NOT IN (SELECT fact_id FROM notes)",
        "SELECT EXISTS (SELECT 1 FROM facts WHERE qty > 19), EXISTS (SELECT 1 FROM facts WHERE qty > 99)",
        "SELECT (SELECT max(price) FROM facts), (SELECT count(*) FROM notes)",
        "SELECT k.label, (SELECT count(*) FROM facts) FROM kinds k",
    ];
    let ordered = [
        "WITH x AS (SELECT id, price FROM facts) SELECT * FROM x WHERE price > 100 ORDER BY price DESC, id LIMIT 5",
        "SELECT grp, round(avg(price), 2) AS r, count(*) FROM facts GROUP BY grp HAVING count(*) % 2 = 0 ORDER BY r DESC, grp",
        "SELECT grp, sum(qty)::numeric / nullif(count(price), 0) FROM facts GROUP BY 1 ORDER BY 1",
        "SELECT cat, count(*) FROM (SELECT cat FROM facts) s GROUP BY cat ORDER BY cat NULLS FIRST",
        "SELECT s.grp, k.label, s.n FROM (SELECT grp, count(*) AS n FROM facts GROUP BY grp) s LEFT JOIN kinds k ON k.grp = s.grp ORDER BY s.grp",
        "SELECT grp, count(*) FROM facts GROUP BY grp HAVING sum(qty) > 2 * avg(qty) ORDER BY grp",
        "SELECT id, qty FROM facts WHERE qty = (SELECT max(qty) FROM facts) ORDER BY id",
        // Stages within a stage, and expressions over aggregates naming no column.
        "SELECT id, qty FROM facts WHERE qty > (SELECT avg(qty) + 15 FROM facts) ORDER BY id",
        "SELECT count(*) + 1, count(*) > 0, 'n=' || count(*) FROM facts WHERE qty > 3",
    ];
    let corpus: Vec<(String, bool)> = unordered
        .iter()
        .map(|s| (s.to_string(), false))
        .chain(ordered.iter().map(|s| (s.to_string(), true)))
        .collect();
    // Each runs in stages (PREVIEW names them), or, a count over a
    // subquery that only filters, as the one merge it flattens to.
    for (sql, _) in &corpus {
        let p = crate::harness::rows(&client, &format!("PREVIEW {sql}")).await;
        assert!(
            p.iter().any(|r| {
                let how = r[2].as_deref().unwrap_or("");
                how.contains("stage 1") || how.starts_with("combine one partial row per shard")
            }),
            "{sql}: {p:?}"
        );
    }
    let mut raw = RawClient::connect(c.port()).await;
    let failures = compare(&mut raw, &single, &corpus).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Several statements in one query: each answered in order, the stages'
    // own answers never reaching the client.
    let r = raw
        .query("SELECT count(*) FROM (SELECT id FROM facts WHERE qty > 10) s; SELECT sum(qty) * 2 FROM facts; SELECT 1")
        .await;
    assert_eq!(
        r.tags(),
        vec!["SELECT 1", "SELECT 1", "SELECT 1"],
        "{:?}",
        r.messages
    );
    let want = crate::harness::rows(
        &single,
        "SELECT count(*) FROM (SELECT id FROM facts WHERE qty > 10) s",
    )
    .await;
    let got: Vec<_> = decode_answer(&r.messages).unwrap().1;
    assert_eq!(got[0], want[0]);
    // Inside a transaction block the stages see the block's own writes.
    let sql = "SELECT count(*), sum(qty) * 2 FROM facts";
    for cl in [&client, &single] {
        exec(cl, "BEGIN").await;
        exec(cl, "UPDATE facts SET qty = qty + 1000 WHERE id < 50").await;
    }
    assert_eq!(
        crate::harness::rows(&client, sql).await,
        crate::harness::rows(&single, sql).await
    );
    for cl in [&client, &single] {
        exec(cl, "ROLLBACK").await;
    }
    // The stage's column keeps its type modifier: price is numeric(10,2)
    // (atttypmod (10 << 16 | 2) + 4), as in one PostgreSQL's RowDescription.
    let r = raw
        .query("SELECT s.price FROM (SELECT price FROM facts ORDER BY id LIMIT 3) s")
        .await;
    let t = r
        .messages
        .iter()
        .find(|(t, _)| *t == b'T')
        .map(|(_, b)| b.clone())
        .unwrap();
    let end = 2 + t[2..].iter().position(|&c| c == 0).unwrap();
    let typmod = i32::from_be_bytes(t[end + 13..end + 17].try_into().unwrap());
    assert_eq!(typmod, (10 << 16 | 2) + 4);
    // PostgreSQL's own errors in the outer part.
    assert_eq!(
        crate::harness::sqlstate(&client, "SELECT sum(qty) / 0 FROM facts").await,
        "22012"
    );
    // SQL-level PREPARE / EXECUTE of merged and staged reads: the arguments
    // go into the text (cast to PREPARE's types).
    for cl in [&client, &single] {
        exec(cl, "PREPARE agg (int) AS SELECT grp, round(avg(price), $1) AS r, count(*) FROM facts GROUP BY grp ORDER BY grp").await;
        exec(cl, "PREPARE top AS SELECT id, price FROM facts WHERE qty > $1 ORDER BY price DESC NULLS LAST, id LIMIT $2").await;
        exec(cl, "PREPARE sub (text) AS SELECT count(*), min(id) FROM (SELECT id FROM facts WHERE cat = $1) s").await;
    }
    for sql in [
        "EXECUTE agg (2)",
        "EXECUTE agg (1 + 0)",
        "EXECUTE top (5, 7)",
        "EXECUTE sub ('c''q')",
        "EXECUTE sub (E'a')",
    ] {
        let want = crate::harness::rows(&single, sql).await;
        assert!(!want.is_empty(), "{sql}");
        assert_eq!(crate::harness::rows(&client, sql).await, want, "{sql}");
    }
    execute_coerces_as_postgres(&client, &single).await;
    // The same through the extended protocol, binary results and all.
    let failures = compare_extended(&client, &single, &corpus).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    extended_with_parameters(&mut client, &mut single).await;
}

/// Each query prepared and run by tokio-postgres (binary results) on both.
async fn compare_extended(
    client: &Client,
    single: &Client,
    corpus: &[(String, bool)],
) -> Vec<String> {
    let cases: Vec<(&str, &[&(dyn ToSql + Sync)], bool)> = corpus
        .iter()
        .map(|(s, o)| (s.as_str(), &[][..], *o))
        .collect();
    compare_binary(client, single, &cases).await
}

/// Each query with its parameters, through tokio-postgres on both; `ordered`
/// queries compare row order too. The differences, and queries the plain
/// server answered with no rows (but those meant to: `> 1000`).
async fn compare_binary(
    client: &Client,
    single: &Client,
    cases: &[(&str, &[&(dyn ToSql + Sync)], bool)],
) -> Vec<String> {
    let mut failures = Vec::new();
    for &(sql, params, ordered) in cases {
        match (
            binary(single, sql, params).await,
            binary(client, sql, params).await,
        ) {
            (Ok(mut w), Ok(mut g)) => {
                if !ordered {
                    w.1.sort();
                    g.1.sort();
                }
                if w.1.is_empty() && !sql.contains("1000") && !sql.contains("WHERE false") {
                    failures.push(format!("{sql}: no rows to compare"));
                }
                if w != g {
                    failures.push(format!("{sql}\n  reference: {w:?}\n  proxy:     {g:?}"));
                }
            }
            (w, g) => failures.push(format!(
                "{sql}\n  reference: {:?}\n  proxy: {:?}",
                w.err(),
                g.err()
            )),
        }
    }
    failures
}

/// Two-stage plans with bound parameters, in the stages and in the outer
/// query, in every format tokio-postgres sends (binary int4, text, float8,
/// NULL): the values go into the statement as typed literals.
async fn extended_with_parameters(client: &mut Client, single: &mut Client) {
    let cases: [(&str, &[&(dyn ToSql + Sync)], bool); 10] = [
        ("SELECT round(avg(price), $1), count(*) > $2 FROM facts", &[&2i32, &0i64], true),
        (
            "SELECT count(*) FROM (SELECT id FROM facts WHERE qty > $1 AND cat = $2) s",
            &[&3i32, &"c'q"],
            true,
        ),
        (
            "WITH x AS (SELECT id, price FROM facts WHERE price::float8 > $1) SELECT * FROM x ORDER BY price DESC, id LIMIT $2",
            &[&100.25f64, &7i64],
            true,
        ),
        (
            "SELECT grp, round(avg(price), $1) AS r FROM facts GROUP BY grp HAVING count(*) > $2 ORDER BY r DESC, grp",
            &[&1i32, &40i64],
            true,
        ),
        ("SELECT coalesce(max(qty), $1) FROM facts WHERE qty > 1000", &[&None::<i32>], true),
        (
            "SELECT id FROM facts WHERE id IN (SELECT fact_id FROM notes WHERE body = $1)",
            &[&"note 3"],
            false,
        ),
        (
            "SELECT id, qty FROM facts WHERE qty > (SELECT avg(qty) + $1::int4 FROM facts) ORDER BY id",
            &[&15i32],
            true,
        ),
        ("SELECT $1::text || count(*) FROM facts", &[&"n="], true),
        (
            "SELECT count(*), min(cat) FROM (SELECT cat FROM facts WHERE cat <> $1) s",
            &[&"x\\y'z"],
            true,
        ),
        // Values that look like the proxy's own markers stay values.
        (
            "SELECT $1::text AS echo, count(*) FROM (SELECT DISTINCT $2::text AS c FROM facts) s",
            &[&"A SELECT * FROM pieskieo_stage_0 B", &"'||current_user||'"],
            true,
        ),
    ];
    let failures = compare_binary(client, single, &cases).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Binary values the proxy has a shard render as text read back exactly
    // whatever the session's output settings (and a block's SET LOCAL).
    let settings =
        "SET extra_float_digits = 0; SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'SQL, DMY'";
    let at = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(946_688_400);
    let f = 0.300_000_000_000_000_04f64;
    let shapes: [(&str, &[&(dyn ToSql + Sync)]); 2] = [
        (
            "SELECT count(*), $1::float8::text FROM (SELECT id FROM facts WHERE $1 > 0.3::float8) s",
            &[&f],
        ),
        (
            "SELECT $1::timestamptz::text, count(*) FROM (SELECT id FROM facts WHERE qty > 0) s",
            &[&at],
        ),
    ];
    for block in [false, true] {
        for c in [&*single, &*client] {
            c.batch_execute(settings).await.unwrap();
            if block {
                c.batch_execute("BEGIN; SET LOCAL DateStyle = 'SQL, MDY'; SET LOCAL TimeZone = 'America/St_Johns'").await.unwrap();
            }
        }
        for (sql, params) in shapes {
            let want = binary(single, sql, params).await;
            assert_eq!(
                binary(client, sql, params).await,
                want,
                "{sql} (block: {block})"
            );
            assert!(want.is_ok_and(|w| w.1.len() == 1), "{sql}");
        }
        for c in [&*single, &*client] {
            if block {
                c.batch_execute("COMMIT").await.unwrap();
            }
            c.batch_execute("RESET extra_float_digits; RESET TimeZone; RESET DateStyle")
                .await
                .unwrap();
        }
    }
    // A portal read a few rows at a time, inside a block: PostgreSQL keeps
    // the portal; the stages ran at Bind.
    let sql = "SELECT id, price FROM facts WHERE qty > (SELECT avg(qty) FROM facts WHERE grp = $1) ORDER BY price DESC NULLS LAST, id LIMIT 20";
    let mut pages = Vec::new();
    for c in [&mut *single, &mut *client] {
        let tx = c.transaction().await.unwrap();
        let portal = tx.bind(sql, &[&3i32]).await.unwrap();
        let mut got: Vec<Vec<String>> = Vec::new();
        loop {
            let page: Vec<String> = tx
                .query_portal(&portal, 6)
                .await
                .unwrap()
                .iter()
                .map(|r| format!("{}:{:?}", r.get::<_, i64>(0), r.get::<_, Raw>(1)))
                .collect();
            let n = page.len();
            got.push(page);
            if n < 6 {
                break;
            }
        }
        tx.commit().await.unwrap();
        pages.push(got);
    }
    assert_eq!(pages[0], pages[1]);
    assert_eq!(pages[0].len(), 4, "{:?}", pages[0]);
    // PostgreSQL's own errors: in the outer part, and in a parameter's value.
    let e = client
        .query("SELECT sum(qty) / $1 FROM facts", &[&0i64])
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("22012"),
        "{e:?}"
    );
    let r = client
        .query_one("SELECT count(*) + $1 FROM facts", &[&1i64])
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 301);
}

/// UPDATE and DELETE with subqueries pinned to the target's shard, or
/// correlated on the key: the tables end as one PostgreSQL's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_with_pinned_or_key_correlated_subqueries_match_one_postgres() {
    let c = Cluster::start_with(3, TABLES).await;
    let plain = Servers::start(1);
    let single = plain.connect(0).await;
    let client = c.client().await;
    load(&client, &single).await;
    let k = c.key_on("facts", 2);
    let writes = [
        format!("DELETE FROM notes WHERE fact_id = {k} AND n IN (SELECT n FROM notes WHERE fact_id = {k} AND n > 0)"),
        format!("UPDATE facts f SET qty = (SELECT count(*) FROM notes n WHERE n.fact_id = f.id) WHERE f.id = {k}"),
        "UPDATE facts f SET qty = (SELECT count(*) FROM notes n WHERE n.fact_id = f.id) WHERE f.grp = 3".to_string(),
        "DELETE FROM facts f WHERE f.grp = 5 AND NOT EXISTS (SELECT 1 FROM notes n WHERE n.fact_id = f.id)".to_string(),
        "UPDATE facts SET cat = 'k' WHERE grp IN (SELECT grp FROM kinds WHERE label LIKE 't%')".to_string(),
    ];
    for w in &writes {
        let want = crate::harness::tags(&single, w).await;
        let got = crate::harness::tags(&client, w).await;
        assert_eq!(want, got, "{w}");
    }
    for sql in [
        "SELECT * FROM facts ORDER BY id",
        "SELECT * FROM notes ORDER BY fact_id, n",
    ] {
        assert_eq!(
            crate::harness::rows(&single, sql).await,
            crate::harness::rows(&client, sql).await,
            "{sql}"
        );
    }
    // Not pinned and not correlated on the key: refused, nothing changed.
    assert_eq!(
        crate::harness::sqlstate(
            &client,
            &format!("DELETE FROM facts WHERE id = {k} AND qty < (SELECT avg(qty) FROM facts)")
        )
        .await,
        "0A000"
    );
}

/// SQL `EXECUTE` of merged and staged reads: each argument coerced to the
/// type PostgreSQL resolved for its parameter (by assignment, typmods in
/// `PREPARE`'s list ignored), PostgreSQL's own argument checks, and values
/// that read back exactly whatever the session's output settings.
async fn execute_coerces_as_postgres(client: &Client, single: &Client) {
    for cl in [client, single] {
        for sql in [
            "PREPARE p1 AS SELECT count(*) FROM (SELECT id FROM facts WHERE qty > $1) s",
            "PREPARE t1 AS SELECT count(*), min(id) FROM (SELECT id FROM facts WHERE cat = $1) s",
            "PREPARE p2 (numeric(10,2)) AS SELECT $1::text || ' ' || count(*) FROM facts",
            "PREPARE p3 (varchar(2)) AS SELECT $1::text || ' ' || count(*) FROM facts",
            "PREPARE p6 (int) AS SELECT count(*) FROM facts WHERE qty > $1",
            "PREPARE fl AS SELECT count(*) FROM facts WHERE $1 = 0.1::float8 + 0.2::float8",
            "PREPARE tz (timestamptz) AS SELECT $1::text || ' ' || count(*) FROM facts",
            "PREPARE iv (interval) AS SELECT $1::text || ' ' || count(*) FROM facts",
            "PREPARE none AS SELECT count(*) FROM facts",
        ] {
            exec(cl, sql).await;
        }
    }
    let same_rows = [
        "EXECUTE p1 (2.5)",
        "EXECUTE p1 ('3')",
        "EXECUTE p1 (2)",
        "EXECUTE t1 (5)",
        "EXECUTE t1 ('b')",
        "EXECUTE p2 (1.005)",
        "EXECUTE p3 ('abcdef')",
        "EXECUTE p6 (-2.5)",
        "EXECUTE p6 (NULL)",
        "EXECUTE fl (0.1::float8 + 0.2::float8)",
        "EXECUTE tz ('2024-03-10 12:00')",
        "EXECUTE iv ('-1 2:03:04')",
        "EXECUTE none",
        // PostgreSQL evaluates no arguments for a statement without parameters.
        "EXECUTE none (1, (SELECT 2))",
    ];
    let errors = [
        "EXECUTE p6 (true)",
        "EXECUTE p6 (3, 4)",
        "EXECUTE p6",
        "EXECUTE p6 ((SELECT 3))",
        "EXECUTE p6 ('x')",
        "EXECUTE p6 (count(*))",
    ];
    // Output settings the values must not depend on, and input settings
    // the arguments must be read with (the session's).
    let settings = [
        "SET TimeZone = 'America/New_York'; SET extra_float_digits = 0; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = sql_standard; SET bytea_output = escape",
        "RESET ALL",
    ];
    for set in settings {
        for cl in [client, single] {
            exec(cl, set).await;
        }
        for sql in same_rows {
            let want = crate::harness::rows(single, sql).await;
            assert!(!want.is_empty(), "{sql}");
            assert_eq!(
                crate::harness::rows(client, sql).await,
                want,
                "{set}: {sql}"
            );
        }
        // Twice: an error leaves nothing behind on the server that ran it.
        for _ in 0..2 {
            for sql in errors {
                assert_eq!(
                    crate::harness::sqlstate(client, sql).await,
                    crate::harness::sqlstate(single, sql).await,
                    "{sql}"
                );
                assert_eq!(
                    crate::harness::error_message(client, sql).await,
                    crate::harness::error_message(single, sql).await,
                    "{sql}"
                );
            }
        }
    }
}
