//! COPY FROM STDIN into a sharded table whose column list leaves out the
//! shard key: each row gets its key from the cluster (the column's one
//! sequence on the sequence shard, or a uuid made by the proxy), goes to
//! that key's shard, and the rows are numbered exactly as one plain
//! PostgreSQL numbers them — checked against one, in text, CSV (HEADER,
//! HEADER MATCH) and binary, over several key batches.

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt};
use pieskieo::router::{KeyType, KeyValue};
use tokio_postgres::Client;

use crate::harness::{exec, rows, Cluster, Servers};

const TABLES: &str = r#"
[[tables]]
name = "things"
key = "id"
key_type = "int8"

[[tables]]
name = "counted"
key = "id"
key_type = "int8"

[[tables]]
name = "always"
key = "id"
key_type = "int4"

[[tables]]
name = "downs"
key = "id"
key_type = "int4"

[[tables]]
name = "tokens"
key = "id"
key_type = "uuid"

[[tables]]
name = "fives"
key = "id"
key_type = "int8"

[[tables]]
name = "names"
key = "id"
key_type = "text"
"#;

const SCHEMA: &str = "CREATE TABLE things (id bigserial PRIMARY KEY, v text);
CREATE TABLE counted (id bigserial PRIMARY KEY, v text, n int CHECK (n >= 0));
CREATE TABLE always (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE TABLE downs (id int GENERATED ALWAYS AS IDENTITY (START WITH 100000 INCREMENT BY -1 MAXVALUE 100000) PRIMARY KEY, v text);
CREATE TABLE tokens (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), v text);
CREATE TABLE fives (id bigint PRIMARY KEY DEFAULT 5, v text);
CREATE TABLE names (id text PRIMARY KEY, v text)";

/// `COPY ... FROM STDIN` of `data` (sent in `piece`-byte CopyData messages)
/// through tokio-postgres; the count or the server's error.
async fn copy(
    c: &Client,
    sql: &str,
    data: &[u8],
    piece: usize,
) -> Result<u64, tokio_postgres::Error> {
    let sink = c.copy_in::<_, Bytes>(sql).await?;
    pin_mut!(sink);
    for chunk in data.chunks(piece.max(1)) {
        sink.send(Bytes::copy_from_slice(chunk)).await?;
    }
    sink.finish().await
}

/// The error's SQLSTATE, message, CONTEXT, and DETAIL and position.
fn described(e: tokio_postgres::Error) -> (String, String, Option<String>, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("a server error: {e:?}"));
    (
        db.code().code().to_string(),
        db.message().to_string(),
        db.where_().map(str::to_string),
        format!("{:?} {:?}", db.detail(), db.position()),
    )
}

/// Every row of `table` sits on the shard its key hashes to; how many.
async fn placed(c: &Cluster, table: &str, key_type: KeyType) -> usize {
    let mut n = 0;
    for s in 0..3 {
        for r in rows(&c.shard(s).await, &format!("SELECT id::text FROM {table}")).await {
            let text = r[0].clone().unwrap();
            let key = KeyValue::parse(key_type, &text).unwrap();
            assert_eq!(c.shard_of(table, key), s, "{table} row {text} on shard {s}");
            n += 1;
        }
    }
    n
}

/// asyncpg's binary COPY of 1100 rows into `things (v)`; prints its tag.
const ASYNCPG_COPY: &str = r#"
import asyncio, sys
import asyncpg
async def main(url):
    conn = await asyncpg.connect(url)
    tag = await conn.copy_records_to_table(
        "things", records=[(f"asyncpg {i}",) for i in range(1100)], columns=["v"])
    print(tag)
asyncio.run(main(sys.argv[1]))
"#;

/// Runs psql's `command` with `stdin` as its input: (ok, stdout, stderr).
fn psql_copy(url: &str, command: &str, stdin: &[u8]) -> (bool, String, String) {
    crate::harness::psql_run(url, &["-c", command], stdin, None)
}

fn text_rows(from: usize, to: usize) -> String {
    (from..=to)
        .map(|i| format!("row\\t{i}\n"))
        .collect::<String>()
}

/// The same COPYs through the proxy and into one PostgreSQL give the same
/// ids and rows, each row on its key's shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_without_the_key_numbers_rows_as_one_postgres_and_routes_them() {
    let c = Cluster::start_with(3, TABLES).await;
    let plain = Servers::start(1);
    let single = plain.connect(0).await;
    let client = c.client().await;
    exec(&client, SCHEMA).await;
    exec(&single, SCHEMA).await;

    let mut csv = String::from("v\n");
    for i in 0..1200 {
        csv.push_str(&format!("\"csv, {i}\"\n"));
    }
    let mut binary = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
    for i in 0..700 {
        let v = format!("bin {i}");
        binary.extend_from_slice(&1i16.to_be_bytes());
        binary.extend_from_slice(&(v.len() as i32).to_be_bytes());
        binary.extend_from_slice(v.as_bytes());
    }
    binary.extend_from_slice(&(-1i16).to_be_bytes());
    let script: Vec<(&str, Vec<u8>, usize)> = vec![
        // 2500 rows: three key batches, rows straddling CopyData messages.
        (
            "COPY things (v) FROM STDIN",
            text_rows(1, 2500).into_bytes(),
            977,
        ),
        (
            "COPY things (v) FROM STDIN WITH (FORMAT csv, HEADER)",
            csv.clone().into_bytes(),
            4096,
        ),
        (
            "COPY things (v) FROM STDIN WITH (FORMAT csv, HEADER match, DELIMITER ';')",
            csv.clone().into_bytes(),
            100_000,
        ),
        (
            "COPY things (v) FROM STDIN WITH (HEADER match)",
            b"v\nheader text\nno line end".to_vec(),
            3,
        ),
        (
            "COPY things (v) FROM STDIN WITH (FORMAT binary)",
            binary.clone(),
            333,
        ),
        (
            "COPY always (v) FROM STDIN",
            text_rows(1, 1001).into_bytes(),
            65536,
        ),
        // A sequence that counts down numbers the rows down.
        (
            "COPY downs (v) FROM STDIN",
            text_rows(1, 1500).into_bytes(),
            65536,
        ),
        (
            "COPY always (v) FROM STDIN (FORMAT binary)",
            binary.clone(),
            65536,
        ),
    ];
    for (sql, data, piece) in &script {
        let want = copy(&single, sql, data, *piece).await.unwrap();
        let got = copy(&client, sql, data, *piece).await.unwrap();
        assert_eq!(want, got, "{sql}");
    }
    // asyncpg's copy_records_to_table: binary, a schema-qualified name.
    let plain_uri = format!(
        "postgres://postgres:{}@127.0.0.1:{}/postgres",
        pieskieo::cluster::SUPERUSER_PASSWORD,
        plain.servers[0].port
    );
    for uri in [c.uri(), plain_uri] {
        let out = std::process::Command::new("python3")
            .args(["-c", ASYNCPG_COPY, &uri])
            .output()
            .expect("python3 runs (scripts/ensure-drivers installs asyncpg)");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("COPY 1100"),
            "{out:?}"
        );
    }
    // The simple protocol: psql's \\copy.
    let data = text_rows(1, 1500);
    for url in [c.url(), plain.url(0)] {
        let (ok, out, err) = psql_copy(&url, "\\copy things (v) from stdin", data.as_bytes());
        assert!(ok && out.contains("COPY 1500"), "{out} {err}");
    }
    for sql in [
        "SELECT id, v FROM things ORDER BY id",
        "SELECT id, v FROM always ORDER BY id",
        "SELECT id, v FROM downs ORDER BY id",
    ] {
        let want = rows(&single, sql).await;
        assert_eq!(want, rows(&client, sql).await, "{sql}");
    }
    let things = 2500 + 1200 + 1200 + 2 + 700 + 1100 + 1500;
    assert_eq!(placed(&c, "things", KeyType::Int8).await, things);
    assert_eq!(placed(&c, "always", KeyType::Int4).await, 1701);
    for s in 0..3 {
        let n = rows(&c.shard(s).await, "SELECT count(*) FROM things").await;
        assert_ne!(n[0][0].as_deref(), Some("0"), "shard {s} got no row");
    }

    // A rolled-back COPY uses up its keys, as nextval does; one committed
    // in a block is numbered on from there.
    for c2 in [&client, &single] {
        exec(c2, "BEGIN").await;
        copy(c2, "COPY things (v) FROM STDIN", b"gone 1\ngone 2\n", 5)
            .await
            .unwrap();
        exec(c2, "ROLLBACK").await;
        exec(c2, "BEGIN").await;
        copy(c2, "COPY things (v) FROM STDIN", b"kept 1\nkept 2\n", 5)
            .await
            .unwrap();
        exec(c2, "COMMIT").await;
    }
    let sql = "SELECT id, v FROM things WHERE v LIKE 'gone%' OR v LIKE 'kept%' ORDER BY id";
    let want = rows(&single, sql).await;
    assert_eq!(want.len(), 2);
    assert_eq!(want, rows(&client, sql).await);

    // uuid keys are made by the proxy and route the rows.
    let n = copy(
        &client,
        "COPY tokens (v) FROM STDIN WITH (FORMAT csv)",
        text_rows(1, 1500).replace("\\t", " ").as_bytes(),
        1000,
    )
    .await
    .unwrap();
    assert_eq!(n, 1500);
    let n = copy(
        &client,
        "COPY tokens (v) FROM STDIN (FORMAT binary)",
        &binary,
        50,
    )
    .await
    .unwrap();
    assert_eq!(n, 700);
    assert_eq!(placed(&c, "tokens", KeyType::Uuid).await, 2200);

    // HEADER MATCH is checked as one server checks it.
    for (sql, data) in [
        (
            "COPY things (v) FROM STDIN WITH (FORMAT csv, HEADER match)",
            &b"v,x\na\n"[..],
        ),
        (
            "COPY things (v) FROM STDIN WITH (FORMAT csv, HEADER match)",
            &b"w\na\n"[..],
        ),
        (
            "COPY things (v) FROM STDIN WITH (HEADER match)",
            &b"\\N\na\n"[..],
        ),
        // Options: PostgreSQL's words and position in the client's text.
        ("COPY things (v) FROM STDIN WITH (BOGUS 1)", &b"a\n"[..]),
        (
            "COPY things (v) FROM STDIN WITH (FORMAT csv, FORCE_NOT_NULL (id))",
            &b"a\n"[..],
        ),
    ] {
        // A connection each: tokio-postgres is confused after a COPY error.
        let (one, proxy) = (plain.connect(0).await, c.client().await);
        let want = described(copy(&one, sql, data, 10).await.unwrap_err());
        let got = described(copy(&proxy, sql, data, 10).await.unwrap_err());
        assert_eq!(want, got, "{sql}");
    }
    let (one, proxy) = (plain.connect(0).await, c.client().await);
    assert_eq!(
        rows(&one, "SELECT count(*) FROM things").await,
        rows(&proxy, "SELECT count(*) FROM things").await
    );
}

/// A bad value deep in the data (found by a shard, or by the proxy) gets
/// the error one server gives, with its line; nothing is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_in_a_copy_without_the_key_commits_nothing() {
    let c = Cluster::start_with(3, TABLES).await;
    let plain = Servers::start(1);
    exec(&c.client().await, SCHEMA).await;
    exec(&plain.connect(0).await, SCHEMA).await;
    let good = |i: usize| format!("v{i}\t{i}\n");
    let with_line_1700 = |bad: &str| -> Vec<u8> {
        (1..=2500)
            .map(|i| if i == 1700 { bad.to_string() } else { good(i) })
            .collect::<String>()
            .into_bytes()
    };
    for (sql, data) in [
        // First, so both sequences start at 1: the failing row's id is the
        // one one server gives it; the shard's context quotes the line as
        // the client sent it.
        (
            "COPY counted (v, n) FROM STDIN",
            with_line_1700("minus\t-5\n"),
        ),
        (
            "COPY counted (v, n) FROM STDIN",
            with_line_1700("v\tnot a number\n"),
        ),
        (
            "COPY counted (v, n) FROM STDIN",
            with_line_1700("v\t1\textra\n"),
        ),
        ("COPY counted (v, n) FROM STDIN", with_line_1700("only v\n")),
        (
            "COPY counted (v, n) FROM STDIN WITH (FORMAT csv, DELIMITER E'\\t')",
            with_line_1700("v\t99999999999\n"),
        ),
    ] {
        // A connection each: tokio-postgres is confused after a COPY error.
        let (one, proxy) = (plain.connect(0).await, c.client().await);
        let want = described(copy(&one, sql, &data, 8192).await.unwrap_err());
        let got = described(copy(&proxy, sql, &data, 8192).await.unwrap_err());
        assert_eq!(want, got, "{sql}");
        assert!(
            want.2.as_deref().unwrap_or("").contains("line 1700"),
            "{want:?}"
        );
    }
    // The simple protocol (psql's \\copy): psql prints the same error.
    let data = with_line_1700("v\tnot a number\n");
    let [(ok1, _, want), (ok2, _, got)] = [plain.url(0), c.url()]
        .map(|url| psql_copy(&url, "\\copy counted (v, n) from stdin", &data));
    assert!(!ok1 && !ok2);
    assert_eq!(want, got);
    assert!(want.contains("line 1700"), "{want}");
    assert_eq!(placed(&c, "counted", KeyType::Int8).await, 0);
    // In a block: the block fails; the client then goes (tokio-postgres is
    // confused after a COPY error), which rolls it back: nothing is left.
    let client = c.client().await;
    exec(&client, "BEGIN").await;
    copy(&client, "COPY counted (v, n) FROM STDIN", b"a\t1\n", 100)
        .await
        .unwrap();
    let e = copy(
        &client,
        "COPY counted (v, n) FROM STDIN",
        &with_line_1700("v\tnope\n"),
        8192,
    )
    .await
    .unwrap_err();
    assert_eq!(described(e).0, "22P02");
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(placed(&c, "counted", KeyType::Int8).await, 0);

    // Keys the cluster cannot choose: refused with what to do instead.
    for sql in ["COPY fives (v) FROM STDIN", "COPY names (v) FROM STDIN"] {
        let client = c.client().await;
        let e = described(copy(&client, sql, b"a\n", 10).await.unwrap_err());
        assert_eq!(e.0, "0A000", "{sql}: {e:?}");
        assert!(e.1.contains("shard key"), "{e:?}");
    }
    assert_eq!(placed(&c, "fives", KeyType::Int8).await, 0);
}

/// The sequence shard down: a COPY that leaves the keys to the cluster
/// fails with 08006 naming it, and nothing is committed anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_without_the_key_needs_the_sequence_shard() {
    let c = Cluster::start_with(3, TABLES).await;
    let client = c.client().await;
    exec(&client, SCHEMA).await;
    copy(&client, "COPY things (v) FROM STDIN", b"warm\n", 10)
        .await
        .unwrap();
    c.shards.servers[0].stop("immediate").unwrap();
    let e = described(
        copy(
            &client,
            "COPY things (v) FROM STDIN",
            &text_rows(1, 10).into_bytes(),
            10,
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.0, "08006", "{e:?}");
    assert!(e.1.contains("shard 0"), "{e:?}");
    for s in 1..3 {
        let n = rows(
            &c.shard(s).await,
            "SELECT count(*) FROM things WHERE v <> 'warm'",
        )
        .await;
        assert_eq!(n[0][0].as_deref(), Some("0"), "shard {s}");
    }
}
