//! Cross-shard reads against one plain PostgreSQL holding the same rows: a
//! differential corpus of sorts, limits, aggregates, groups and HAVING must
//! give identical rows and column types, and every form the proxy cannot
//! merge exactly must be refused with 0A000.

use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{exec, field, Cluster, Lcg, RawClient, Servers};

const TABLES: &str = r#"
reference_tables = ["regions"]

[[tables]]
name = "facts"
key = "id"
key_type = "int8"

[[tables]]
name = "notes"
key = "fact_id"
key_type = "int8"
"#;

const SCHEMA: &str = "CREATE TABLE facts (id bigint PRIMARY KEY, grp int, cat text, code char(3), price numeric(10,2), qty int, big bigint, ok boolean, d date, ts timestamptz, f float8);
CREATE TABLE regions (id int PRIMARY KEY, name text);
CREATE TABLE notes (fact_id bigint, n int, body text, PRIMARY KEY (fact_id, n))";

fn lit<T: ToString>(v: Option<T>) -> String {
    v.map_or("NULL".to_string(), |v| v.to_string())
}

/// A few thousand rows with NULLs, duplicates, negative numbers, and text
/// whose order depends on the collation (upper/lower case, accents, spaces).
fn rows(n: usize) -> Vec<String> {
    let cats = [
        "a", "B", "b", "Á", "ä", "Z", " a", "", "apple", "Apple", "b ",
    ];
    let mut r = Lcg(42);
    (1..=n)
        .map(|id| {
            let grp = r.some(10, |r| r.next(11) as i64 - 3);
            let cat = r
                .some(8, |r| cats[r.next(cats.len() as u64) as usize])
                .map(|c| format!("'{c}'"));
            let code = r
                .some(6, |r| ["xy", "xy ", "ab", "Q"][r.next(4) as usize])
                .map(|c| format!("'{c}'"));
            let price = r.some(7, |r| {
                format!("{}.{:02}", r.next(2000) as i64 - 600, r.next(100))
            });
            let qty = r.some(9, |r| r.next(101) as i64 - 50);
            let big = r.some(12, |r| (r.next(2_000_000) as i64 - 500_000) * 1_000_000_007);
            let ok = r.some(5, |r| r.next(2) == 0);
            let d = r.some(6, |r| format!("date '2000-01-01' + {}", r.next(3_000)));
            let ts = r.some(6, |r| {
                format!(
                    "'2024-03-{:02} {:02}:{:02}:00+0{}'",
                    1 + r.next(28),
                    r.next(24),
                    r.next(60),
                    r.next(3)
                )
            });
            let f = r.some(6, |r| {
                format!("{}e{}", r.next(1000) as i64 - 500, r.next(6) as i64 - 3)
            });
            format!(
                "({id}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                lit(grp),
                lit(cat),
                lit(code),
                lit(price),
                lit(qty),
                lit(big),
                lit(ok),
                lit(d),
                lit(ts),
                lit(f),
            )
        })
        .collect()
}

/// Column (name, type OID) and rows as text, from a RowDescription and DataRows.
pub(crate) type Answer = (Vec<(String, u32)>, Vec<Vec<Option<String>>>);

pub(crate) fn decode_answer(messages: &[(u8, Vec<u8>)]) -> Result<Answer, String> {
    let mut cols = Vec::new();
    let mut out = Vec::new();
    for (t, b) in messages {
        match t {
            b'E' => return Err(field(b, b'C')),
            b'T' => {
                let n = i16::from_be_bytes([b[0], b[1]]) as usize;
                let mut at = 2;
                for _ in 0..n {
                    let end = at + b[at..].iter().position(|&c| c == 0).unwrap();
                    let name = String::from_utf8_lossy(&b[at..end]).into_owned();
                    let oid = u32::from_be_bytes(b[end + 7..end + 11].try_into().unwrap());
                    cols.push((name, oid));
                    at = end + 19;
                }
            }
            b'D' => {
                let n = i16::from_be_bytes([b[0], b[1]]) as usize;
                let mut at = 2;
                let mut row = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = i32::from_be_bytes(b[at..at + 4].try_into().unwrap());
                    at += 4;
                    if len < 0 {
                        row.push(None);
                    } else {
                        let end = at + len as usize;
                        row.push(Some(String::from_utf8_lossy(&b[at..end]).into_owned()));
                        at = end;
                    }
                }
                out.push(row);
            }
            _ => {}
        }
    }
    Ok((cols, out))
}

/// The plain server's answer: types from Describe, rows from a simple query.
pub(crate) async fn reference(c: &Client, sql: &str) -> Result<Answer, String> {
    let st = c
        .prepare(sql)
        .await
        .map_err(|e| format!("reference: {e}"))?;
    let cols = st
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().oid()))
        .collect();
    let mut out = Vec::new();
    for m in c
        .simple_query(sql)
        .await
        .map_err(|e| format!("reference: {e}"))?
    {
        if let SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    Ok((cols, out))
}

/// A value exactly as the server sent it in binary.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Column types and binary rows through the extended protocol (tokio-postgres
/// asks for binary results).
pub(crate) async fn binary(
    c: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(Vec<u32>, Vec<Vec<Raw>>), String> {
    let st = c.prepare(sql).await.map_err(|e| e.to_string())?;
    let types = st.columns().iter().map(|c| c.type_().oid()).collect();
    let rows = c.query(&st, params).await.map_err(|e| format!("{e:?}"))?;
    Ok((
        types,
        rows.iter()
            .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i)).collect())
            .collect(),
    ))
}

/// The corpus: generated combinations plus hand-written edge cases. Each
/// query says whether its row order is defined.
fn corpus() -> Vec<(String, bool)> {
    let mut q = Vec::new();
    let filters = [
        "",
        "WHERE qty > 0",
        "WHERE cat IS NOT NULL AND grp < 3",
        "WHERE price < 0 OR ok",
    ];
    // (select list, GROUP BY, ORDER BY that is unique per group)
    let grouped = [
        (
            "count(*), count(price), sum(qty), sum(big), sum(price), min(cat), max(cat), min(d), max(ts), avg(qty), avg(price), avg(big), bool_and(ok), bool_or(ok), min(f), max(code)",
            "",
            "",
        ),
        ("grp, count(*), sum(qty), avg(price), max(price)", "GROUP BY grp", "ORDER BY grp NULLS FIRST"),
        ("cat, ok, count(*) AS n, min(d), avg(qty)", "GROUP BY cat, ok", "ORDER BY n DESC, cat DESC, ok"),
        ("code, count(qty), sum(price)", "GROUP BY 1", "ORDER BY 1 DESC NULLS LAST"),
    ];
    let havings = [
        "",
        "HAVING count(*) > 20",
        "HAVING sum(qty) < 0 OR max(price) IS NULL",
    ];
    let limits = ["", "LIMIT 3 OFFSET 2"];
    for f in filters {
        for (sel, group, order) in grouped {
            for h in havings {
                for l in limits {
                    if group.is_empty() && (!h.is_empty() || !l.is_empty()) {
                        continue;
                    }
                    let ordered = !order.is_empty();
                    let (order, l) = if ordered { (order, l) } else { ("", "") };
                    q.push((
                        format!("SELECT {sel} FROM facts {f} {group} {h} {order} {l}"),
                        ordered,
                    ));
                }
            }
        }
        q.push((
            format!("SELECT count(*), sum(qty), avg(qty) FROM facts {f}"),
            false,
        ));
    }
    let orders = [
        "cat, id",
        "price DESC NULLS LAST, id",
        "d NULLS FIRST, id DESC",
        "grp DESC, qty, id",
        "f, id",
        "ts DESC, id",
        "code, cat DESC, id",
    ];
    let row_limits = ["", "LIMIT 7", "LIMIT 5 OFFSET 20", "OFFSET 2990"];
    for f in filters {
        for o in orders {
            for l in row_limits {
                q.push((
                    format!("SELECT id, cat, price, d FROM facts {f} ORDER BY {o} {l}"),
                    true,
                ));
            }
        }
        q.push((format!("SELECT id, qty FROM facts {f}"), false));
        q.push((format!("SELECT DISTINCT cat, ok FROM facts {f}"), false));
    }
    let edge = [
        ("SELECT count(*) FROM facts WHERE false", false),
        ("SELECT sum(qty), avg(price), min(cat), bool_and(ok) FROM facts WHERE id < 0", false),
        ("SELECT grp, count(*) FROM facts WHERE id < 0 GROUP BY grp", false),
        ("SELECT count(DISTINCT id) FROM facts", false),
        ("SELECT DISTINCT cat FROM facts ORDER BY cat", true),
        ("SELECT DISTINCT grp FROM facts ORDER BY grp DESC NULLS LAST LIMIT 4", true),
        ("SELECT DISTINCT code FROM facts", false),
        ("SELECT id, cat AS label FROM facts ORDER BY label, 1 LIMIT 9", true),
        ("SELECT id FROM facts ORDER BY qty * 2 DESC, id LIMIT 10", true),
        ("SELECT * FROM facts ORDER BY id LIMIT 5 OFFSET 100", true),
        ("SELECT id, price FROM facts ORDER BY price NULLS FIRST, id FETCH FIRST 6 ROWS ONLY", true),
        ("SELECT grp, count(*) FROM facts GROUP BY grp HAVING count(*) BETWEEN 200 AND 300 ORDER BY grp", true),
        ("SELECT grp FROM facts GROUP BY grp HAVING max(cat) = 'ä' ORDER BY 1", true),
        ("SELECT ok, count(*) FROM facts GROUP BY ok HAVING bool_or(qty > 40) ORDER BY ok", true),
        ("SELECT grp, max(d) FROM facts GROUP BY grp HAVING max(d) > '2005-01-01' ORDER BY grp", true),
        ("SELECT count(*) FROM facts GROUP BY grp ORDER BY count(*) DESC, min(id)", true),
        ("SELECT 1 AS one, count(*) FROM facts", false),
        ("SELECT DISTINCT count(*) FROM facts GROUP BY ok", false),
        ("SELECT f.grp, r.name, count(*) FROM facts f JOIN regions r ON r.id = f.grp GROUP BY f.grp, r.name ORDER BY 1, 2", true),
        ("SELECT r.name, f.id FROM facts f JOIN regions r ON r.id = f.grp ORDER BY f.id LIMIT 12", true),
        ("SELECT cat, sum(price) FILTER (WHERE ok), count(*) FILTER (WHERE qty < 0) FROM facts GROUP BY cat ORDER BY cat", true),
        ("SELECT max(price) - min(price) FROM facts WHERE id = 7", false),
        ("SELECT f.cat, count(*), sum(n.n) FROM facts f JOIN notes n ON n.fact_id = f.id GROUP BY f.cat ORDER BY f.cat", true),
        ("SELECT f.id, n.body FROM facts f JOIN notes n ON n.fact_id = f.id WHERE f.id = 77 ORDER BY n.body", true),
        ("SELECT f.id, n.body FROM facts f LEFT JOIN notes n ON f.id = n.fact_id ORDER BY f.id, n.body LIMIT 20", true),
        ("SELECT count(*) FROM facts f, notes n WHERE n.fact_id = f.id AND f.qty > 0", false),
    ];
    q.extend(edge.iter().map(|(s, o)| (s.to_string(), *o)));
    // Two stages: subqueries and CTEs over sharded tables that no key pins,
    // expressions over aggregates, HAVING over them; PostgreSQL evaluates
    // the outer query over the merged rows.
    let staged = [
        ("SELECT count(*) FROM (SELECT id FROM facts WHERE qty > 10) s", false),
        ("SELECT count(*), sum(s.qty), avg(s.price) FROM (SELECT DISTINCT grp, qty, price FROM facts) s", false),
        ("SELECT count(*) FROM (SELECT id FROM facts ORDER BY price DESC NULLS LAST, id LIMIT 40) s", false),
        ("WITH x AS (SELECT id, price, d FROM facts WHERE ok) SELECT * FROM x WHERE price > 100 ORDER BY d NULLS FIRST, id LIMIT 9", true),
        ("WITH g AS (SELECT grp, sum(qty) AS q FROM facts GROUP BY grp) SELECT max(q) - min(q), count(*) FROM g", false),
        ("SELECT sum(qty) * 100 / count(*), sum(price) / nullif(count(price), 0) FROM facts", false),
        ("SELECT round(avg(price), 2), coalesce(max(price), 0), count(*) > 0, count(*) + 1 FROM facts WHERE cat IS NOT NULL", false),
        ("SELECT 'n=' || count(*), max(d) - min(d), extract(year FROM max(ts)) FROM facts", false),
        ("SELECT grp, round(avg(qty), 3) AS a, count(*) FROM facts GROUP BY grp HAVING sum(qty) > 2 * avg(qty) ORDER BY a DESC, grp", true),
        ("SELECT cat, count(*) * 2 FROM facts GROUP BY cat HAVING count(*) % 2 = 0 ORDER BY cat NULLS FIRST", true),
        ("SELECT id, qty FROM facts WHERE qty > (SELECT avg(qty) + 15 FROM facts) ORDER BY id LIMIT 30", true),
        ("SELECT id FROM facts WHERE id IN (SELECT fact_id FROM notes WHERE body = 'note 3') ORDER BY id", true),
        ("SELECT count(*) FROM facts WHERE grp IN (SELECT grp FROM facts WHERE qty = 7)", false),
        ("SELECT EXISTS (SELECT 1 FROM facts WHERE qty > 45), (SELECT max(price) FROM facts), (SELECT count(*) FROM notes)", false),
        ("SELECT r.name, s.n FROM (SELECT grp, count(*) AS n FROM facts GROUP BY grp) s JOIN regions r ON r.id = s.grp ORDER BY r.name", true),
        ("SELECT s.cat, count(*) FROM (SELECT f.cat FROM facts f JOIN notes n ON n.fact_id = f.id) s GROUP BY s.cat ORDER BY 1 NULLS LAST", true),
        ("SELECT id, grp, rank() OVER (PARTITION BY id ORDER BY qty) FROM facts WHERE qty > 30", false),
    ];
    q.extend(staged.iter().map(|(s, o)| (s.to_string(), *o)));
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_reads_match_one_postgres() {
    let c = Cluster::start_with(3, TABLES).await;
    let plain = Servers::start(1);
    let single = plain.connect(0).await;
    let client = c.client().await;
    exec(&client, SCHEMA).await;
    exec(&single, SCHEMA).await;
    let regions = "INSERT INTO regions (id, name) VALUES (-3, 'minus'), (0, 'zero'), (1, 'one'), (2, 'Two'), (5, 'five')";
    exec(&client, regions).await;
    exec(&single, regions).await;
    let all = rows(3000);
    for chunk in all.chunks(250) {
        let sql = format!(
            "INSERT INTO facts (id, grp, cat, code, price, qty, big, ok, d, ts, f) VALUES {}",
            chunk.join(", ")
        );
        exec(&client, &sql).await;
        exec(&single, &sql).await;
    }
    // Notes live with their facts (co-located on the same key).
    let notes: Vec<String> = (1..=3000)
        .filter(|id| id % 3 != 0)
        .flat_map(|id| {
            (0..id % 4).map(move |n| format!("({id}, {n}, 'note {}')", (id * 7 + n) % 13))
        })
        .collect();
    for chunk in notes.chunks(400) {
        let sql = format!(
            "INSERT INTO notes (fact_id, n, body) VALUES {}",
            chunk.join(", ")
        );
        exec(&client, &sql).await;
        exec(&single, &sql).await;
    }
    // The rows really are spread over the shards.
    for i in 0..3 {
        let n: i64 = crate::harness::value(&c.shard(i).await, "SELECT count(*) FROM facts")
            .await
            .parse()
            .unwrap();
        assert!(n > 800, "shard {i} holds {n} rows");
    }

    let mut raw = RawClient::connect(c.port()).await;
    let corpus = corpus();
    assert!(corpus.len() >= 150, "corpus has {} queries", corpus.len());
    let mut failures = Vec::new();
    let mut answered = 0;
    for (sql, ordered) in &corpus {
        let want = reference(&single, sql).await;
        let got = decode_answer(&raw.query(sql).await.messages);
        let (want, got) = match (want, got) {
            (Ok(w), Ok(g)) => (w, g),
            (w, g) => {
                failures.push(format!("{sql}\n  reference: {w:?}\n  proxy: {g:?}"));
                continue;
            }
        };
        if want.0 != got.0 {
            failures.push(format!(
                "{sql}\n  columns: reference {:?}, proxy {:?}",
                want.0, got.0
            ));
            continue;
        }
        let (mut w, mut g) = (want.1, got.1);
        answered += usize::from(!w.is_empty());
        if !ordered {
            w.sort();
            g.sort();
        }
        if w != g {
            let first = w.iter().zip(&g).position(|(a, b)| a != b);
            failures.push(format!(
                "{sql}\n  {} rows vs {}; first difference at {first:?}: {:?} vs {:?}",
                w.len(),
                g.len(),
                first.map(|i| &w[i]),
                first.map(|i| &g[i]),
            ));
        }
    }
    assert!(
        answered * 4 > corpus.len() * 3,
        "only {answered} queries returned rows"
    );
    assert!(
        failures.is_empty(),
        "{} of {} queries differ:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );

    // The same corpus through the extended protocol with binary results,
    // plus parameters (LIMIT/OFFSET and filters bound at Bind).
    let mut failures = Vec::new();
    let mut extended: Vec<(String, bool)> = corpus.clone();
    extended.retain(|(sql, _)| !sql.contains("OFFSET 2990"));
    for (sql, ordered) in &extended {
        let want = binary(&single, sql, &[]).await;
        let got = binary(&client, sql, &[]).await;
        match (want, got) {
            (Ok(mut w), Ok(mut g)) => {
                if !ordered {
                    w.1.sort();
                    g.1.sort();
                }
                if w != g {
                    failures.push(format!(
                        "{sql}\n  binary results differ ({} vs {} rows)",
                        w.1.len(),
                        g.1.len()
                    ));
                }
            }
            (w, g) => failures.push(format!(
                "{sql}\n  reference: {:?}\n  proxy: {:?}",
                w.err(),
                g.err()
            )),
        }
    }
    let with_params: [(&str, &[&(dyn ToSql + Sync)]); 3] = [
        (
            "SELECT id, price FROM facts WHERE qty > $1 ORDER BY price DESC NULLS LAST, id LIMIT $2 OFFSET $3",
            &[&10i32, &7i64, &3i64],
        ),
        (
            "SELECT grp, count(*), avg(price), sum(big) FROM facts WHERE cat <> $1 GROUP BY grp HAVING count(*) > 5 ORDER BY grp",
            &[&"a"],
        ),
        ("SELECT DISTINCT cat FROM facts WHERE qty < $1 ORDER BY cat LIMIT $2", &[&0i32, &4i64]),
    ];
    for (sql, params) in with_params {
        let want = binary(&single, sql, params).await;
        let got = binary(&client, sql, params).await;
        if want != got || want.is_err() {
            failures.push(format!("{sql}\n  reference: {want:?}\n  proxy: {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "extended protocol:\n{}",
        failures.join("\n")
    );

    // What cannot be merged exactly is refused, naming what. (Expressions
    // over aggregates, HAVING over them and subqueries run in two stages:
    // subqueries.rs.)
    let refused = [
        ("SELECT id, sum(qty) OVER () FROM facts", "window functions"),
        ("SELECT count(DISTINCT cat) FROM facts", "count(DISTINCT"),
        ("SELECT string_agg(cat, ',') FROM facts", "string_agg"),
        (
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY qty) FROM facts",
            "percentile_cont",
        ),
        (
            "SELECT DISTINCT ON (grp) grp, id FROM facts ORDER BY grp, id",
            "DISTINCT ON",
        ),
        (
            "SELECT grp, count(*) FROM facts GROUP BY ROLLUP (grp)",
            "ROLLUP",
        ),
        (
            "SELECT id FROM facts ORDER BY qty FETCH FIRST 3 ROWS WITH TIES",
            "WITH TIES",
        ),
        (
            "SELECT a.id FROM facts a JOIN facts b ON a.grp = b.grp",
            "joins",
        ),
        (
            "SELECT id FROM facts ORDER BY id LIMIT (SELECT 3)",
            "LIMIT other than",
        ),
        (
            "SELECT id, ts - interval '1 day' FROM facts UNION SELECT 1, now()",
            "set operations",
        ),
    ];
    for (sql, what) in refused {
        let r = raw.query(sql).await;
        let err = r.messages.iter().find(|(t, _)| *t == b'E');
        let (code, msg) = err
            .map(|(_, b)| (field(b, b'C'), field(b, b'M')))
            .unwrap_or_default();
        assert_eq!(code, "0A000", "{sql}: {msg}");
        assert!(msg.contains(what), "{sql}: {msg}");
    }

    // Inside a transaction block the merge reads the block's own writes.
    exec(&client, "BEGIN").await;
    exec(&client, "UPDATE facts SET qty = 1000 WHERE id IN (1, 2, 3)").await;
    let top = crate::harness::rows(
        &client,
        "SELECT id FROM facts ORDER BY qty DESC NULLS LAST, id LIMIT 3",
    )
    .await;
    assert_eq!(
        top,
        vec![
            vec![Some("1".to_string())],
            vec![Some("2".to_string())],
            vec![Some("3".to_string())]
        ]
    );
    assert_eq!(
        crate::harness::value(&client, "SELECT count(*) FROM facts WHERE qty = 1000").await,
        "3"
    );
    exec(&client, "ROLLBACK").await;
    assert_eq!(
        crate::harness::value(&client, "SELECT count(*) FROM facts WHERE qty = 1000").await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_shows_shards_statements_and_merge_without_running() {
    let c = Cluster::start_with(3, TABLES).await;
    let client = c.client().await;
    exec(&client, SCHEMA).await;
    let rows = crate::harness::rows(
        &client,
        "PREVIEW SELECT grp, avg(qty) FROM facts GROUP BY grp ORDER BY 2 DESC LIMIT 3",
    )
    .await;
    assert_eq!(rows.len(), 3);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[0].as_deref(), Some(i.to_string().as_str()));
        assert_eq!(
            r[1].as_deref(),
            Some("SELECT grp, sum(qty) AS \"avg\", count(qty) AS \"pieskieo_count\" FROM facts GROUP BY grp")
        );
        assert!(
            r[2].as_deref()
                .unwrap()
                .contains("merge groups on 1 key (avg)"),
            "{r:?}"
        );
        assert!(r[2].as_deref().unwrap().contains("limit 3"), "{r:?}");
    }
    let one = crate::harness::rows(&client, "PREVIEW DELETE FROM facts WHERE id = 42").await;
    assert_eq!(one.len(), 1);
    assert_eq!(
        one[0][0].as_deref(),
        Some(
            c.shard_of("facts", pieskieo::router::KeyValue::Int(42))
                .to_string()
                .as_str()
        )
    );
    // Nothing ran: the table is still there and empty, and a preview of
    // something unroutable is the routing error itself.
    exec(&client, "PREVIEW DROP TABLE facts").await;
    assert_eq!(
        crate::harness::value(&client, "SELECT count(*) FROM facts").await,
        "0"
    );
    assert_eq!(
        crate::harness::sqlstate(&client, "PREVIEW SELECT id, sum(qty) OVER () FROM facts").await,
        "0A000"
    );
}

/// Shards whose databases order text with ICU: a cross-shard sort of text
/// would come out in the wrong order, so it is refused; everything else merges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_sorts_are_refused_under_a_non_c_collation() {
    let shards = Servers::start(2);
    for i in 0..2 {
        exec(
            &shards.connect(i).await,
            "CREATE DATABASE icu TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C'",
        )
        .await;
    }
    let text = crate::harness::config_text(&shards.ports(), TABLES)
        .replace("database = \"postgres\"", "database = \"icu\"");
    let config = pieskieo::config::Config::parse(&text, "icu.toml").unwrap();
    let proxy = pieskieo::serve(config).await.unwrap();
    let client = crate::harness::connect(&format!(
        "host=127.0.0.1 port={} user=app password=secret dbname=app",
        proxy.addr.port()
    ))
    .await
    .unwrap();
    exec(&client, SCHEMA).await;
    exec(
        &client,
        "INSERT INTO facts (id, cat, qty) VALUES (1, 'b', 1), (2, 'B', 2), (3, 'a', 3), (4, 'A', 4)",
    )
    .await;
    for sql in [
        "SELECT id FROM facts ORDER BY cat",
        "SELECT max(cat) FROM facts",
    ] {
        let msg = crate::harness::error_message(&client, sql).await;
        assert!(msg.contains("C collation"), "{sql}: {msg}");
        assert_eq!(crate::harness::sqlstate(&client, sql).await, "0A000");
    }
    assert_eq!(
        crate::harness::rows(&client, "SELECT id FROM facts ORDER BY qty DESC LIMIT 2").await,
        vec![vec![Some("4".to_string())], vec![Some("3".to_string())]]
    );
    assert_eq!(
        crate::harness::rows(
            &client,
            "SELECT cat, count(*) FROM facts GROUP BY cat HAVING cat = 'a'"
        )
        .await,
        vec![vec![Some("a".to_string()), Some("1".to_string())]]
    );
    proxy.stop().await;
}
