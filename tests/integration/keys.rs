//! Keys chosen by the cluster: INSERTs that omit a sharded table's key (or
//! give `DEFAULT`) get keys from the column's one sequence on the sequence
//! shard, are routed by them, and `RETURNING` gives them back — the same
//! keys one plain PostgreSQL running the same statements hands out.

use pieskieo::router::KeyValue;

use crate::harness::{exec, rows, sqlstate, Cluster, Servers};

const TABLES: &str = r#"
[[tables]]
name = "things"
key = "id"
key_type = "int8"

[[tables]]
name = "always"
key = "id"
key_type = "int4"

[[tables]]
name = "nokey"
key = "id"
key_type = "int8"

[[tables]]
name = "downs"
key = "id"
key_type = "int4"

[[tables]]
name = "tokens"
key = "id"
key_type = "uuid"
"#;

const SCHEMA: &str = "CREATE TABLE things (id bigserial PRIMARY KEY, v text);
CREATE TABLE always (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE TABLE nokey (id bigint PRIMARY KEY, v text);
CREATE TABLE downs (id int GENERATED ALWAYS AS IDENTITY (START WITH 100000 INCREMENT BY -1 MAXVALUE 100000) PRIMARY KEY, v text);
CREATE TABLE tokens (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), v text)";

fn ids(r: Vec<Vec<Option<String>>>) -> Vec<i64> {
    let mut v: Vec<i64> = r
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    v.sort();
    v
}

/// Every row of `table` sits on the shard its key hashes to.
async fn placed(c: &Cluster, table: &str, uuid: bool) -> usize {
    let mut n = 0;
    for s in 0..3 {
        for r in rows(&c.shard(s).await, &format!("SELECT id::text FROM {table}")).await {
            let text = r[0].clone().unwrap();
            let key = if uuid {
                KeyValue::parse(pieskieo::router::KeyType::Uuid, &text).unwrap()
            } else {
                KeyValue::Int(text.parse().unwrap())
            };
            assert_eq!(c.shard_of(table, key), s, "{table} row {text} on shard {s}");
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_chosen_by_the_cluster_match_one_postgres_and_route_by_key() {
    let c = Cluster::start_with(3, TABLES).await;
    let plain = Servers::start(1);
    let single = plain.connect(0).await;
    let client = c.client().await;
    exec(&client, SCHEMA).await;
    exec(&single, SCHEMA).await;
    let script = [
        "INSERT INTO things (v) VALUES ('a') RETURNING id",
        "INSERT INTO things (v) VALUES ('b'), ('c'), ('d'), ('e'), ('f') RETURNING id",
        "INSERT INTO things DEFAULT VALUES RETURNING id",
        "INSERT INTO things (id, v) VALUES (DEFAULT, 'g'), (1000, 'h'), (DEFAULT, 'i') RETURNING id",
        "INSERT INTO always (v) VALUES ('a'), ('b'), ('c') RETURNING id",
        "INSERT INTO always (v) VALUES ('d') RETURNING id, v",
    ];
    for sql in script {
        let want = ids(rows(&single, sql).await);
        let got = ids(rows(&client, sql).await);
        assert_eq!(want, got, "{sql}");
    }
    // A sequence that counts down numbers the rows down, in VALUES order.
    let sql = "INSERT INTO downs (v) VALUES ('a'), ('b'), ('c') RETURNING id, v";
    assert_eq!(rows(&single, sql).await, rows(&client, sql).await);
    // RETURNING rows of a split come back in VALUES order, as from one server.
    let sql = "INSERT INTO things (v) VALUES ('r0'), ('r1'), ('r2'), ('r3'), ('r4'), ('r5'), ('r6') RETURNING id, v";
    assert_eq!(rows(&single, sql).await, rows(&client, sql).await);
    let sql = "INSERT INTO things (id, v) VALUES (2001, 'x'), (2002, 'y'), (2003, 'z'), (2004, 'w') RETURNING v";
    assert_eq!(rows(&single, sql).await, rows(&client, sql).await);
    // And through the extended protocol: given keys, and keys left to the cluster.
    let given = "INSERT INTO things (id, v) VALUES ($1, 'e1'), ($2, 'e2'), ($3, 'e3'), ($4, 'e4'), ($5, 'e5') RETURNING id, v";
    let left = "INSERT INTO things (v) VALUES ($1), ($2), ($3), ($4), ($5) RETURNING id, v";
    for (st, p) in [(given, [3005i64, 3001, 3004, 3002, 3003]), (left, [0; 5])] {
        let vals: Vec<String> = p
            .iter()
            .enumerate()
            .map(|(i, k)| format!("l{i}:{k}"))
            .collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = if st == given {
            p.iter().map(|k| k as _).collect()
        } else {
            vals.iter().map(|v| v as _).collect()
        };
        let order = |r: Vec<tokio_postgres::Row>| -> Vec<(i64, String)> {
            r.iter().map(|r| (r.get(0), r.get(1))).collect()
        };
        let want = order(single.query(st, &params).await.unwrap());
        let got = order(client.query(st, &params).await.unwrap());
        assert_eq!(want, got, "{st}");
    }
    // A rolled-back insert uses up its key, as a sequence does.
    for c2 in [&client, &single] {
        exec(c2, "BEGIN").await;
        exec(c2, "INSERT INTO things (v) VALUES ('gone')").await;
        exec(c2, "ROLLBACK").await;
    }
    // Through the extended protocol (binary parameters, a prepared statement
    // run several times), inside and outside a block.
    let st = "INSERT INTO things (v) VALUES ($1) RETURNING id";
    for c2 in [&client, &single] {
        exec(c2, "BEGIN").await;
    }
    let mut want = Vec::new();
    let mut got = Vec::new();
    for v in ["x", "y", "z"] {
        want.push(single.query_one(st, &[&v]).await.unwrap().get::<_, i64>(0));
        got.push(client.query_one(st, &[&v]).await.unwrap().get::<_, i64>(0));
    }
    let two = "INSERT INTO things (id, v) VALUES (DEFAULT, $1), (DEFAULT, $2) RETURNING id";
    let mut w: Vec<i64> = single
        .query(two, &[&"p", &"q"])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut g: Vec<i64> = client
        .query(two, &[&"p", &"q"])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    w.sort();
    g.sort();
    want.extend(w);
    got.extend(g);
    for c2 in [&client, &single] {
        exec(c2, "COMMIT").await;
    }
    assert_eq!(want, got);
    for sql in [
        "SELECT id, v FROM things ORDER BY id",
        "SELECT id, v FROM always ORDER BY id",
    ] {
        assert_eq!(rows(&single, sql).await, rows(&client, sql).await, "{sql}");
    }
    // Spread over the shards, each row where its key belongs, no key twice.
    assert_eq!(placed(&c, "things", false).await, 36);
    assert_eq!(placed(&c, "always", false).await, 4);
    for s in 0..3 {
        let n = rows(&c.shard(s).await, "SELECT count(*) FROM things").await;
        assert_ne!(n[0][0].as_deref(), Some("0"), "shard {s} got no row");
    }

    // uuid keys are made by the proxy and routed by them.
    let made = rows(
        &client,
        "INSERT INTO tokens (v) VALUES ('a'), ('b'), ('c'), ('d'), ('e'), ('f') RETURNING id",
    )
    .await;
    assert_eq!(made.len(), 6);
    assert_eq!(placed(&c, "tokens", true).await, 6);
    let got: Vec<String> = client
        .query(
            "INSERT INTO tokens (v) VALUES ($1) RETURNING id::text",
            &[&"g"],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(placed(&c, "tokens", true).await, 7);

    // A table that does not exist, a key column without a sequence.
    assert_eq!(
        sqlstate(&client, "INSERT INTO things_missing (v) VALUES ('a')").await,
        sqlstate(&single, "INSERT INTO things_missing (v) VALUES ('a')").await
    );
    // A sharded key column without a sequence: plain PostgreSQL would
    // insert NULL and fail (23502); the proxy says what to do instead.
    let e = crate::harness::error_message(&client, "INSERT INTO nokey (v) VALUES ('a')").await;
    assert!(e.contains("give the shard key"), "{e}");
    assert_eq!(
        sqlstate(&client, "INSERT INTO nokey (v) VALUES ('a')").await,
        "0A000"
    );
}

/// INSERTs without a column list (psql users, `pg_dump --inserts`): the
/// values fill the table's first columns, as in PostgreSQL — the proxy reads
/// which from the catalog — so each row goes to its key's shard, keys left
/// to the cluster (`DEFAULT`) included. Compared with one plain PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_without_a_column_list_match_one_postgres() {
    let c = Cluster::start_with(3, TABLES).await;
    let plain = Servers::start(1);
    let single = plain.connect(0).await;
    let client = c.client().await;
    exec(&client, SCHEMA).await;
    exec(&single, SCHEMA).await;
    let script = [
        "INSERT INTO things VALUES (DEFAULT, 'nc1') RETURNING id",
        "INSERT INTO things VALUES (500, 'nc2'), (501, 'nc3'), (DEFAULT, 'nc4'), (502, 'nc5') RETURNING id, v",
        "INSERT INTO things VALUES (503) RETURNING *",
        "INSERT INTO things AS t VALUES (504, 'al') RETURNING t.id, t.v",
        "INSERT INTO \"things\"  /* c */ VALUES (505, 'q''uote')",
        "INSERT INTO public.things SELECT 506, 'sel'",
        "INSERT INTO nokey VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')",
    ];
    for sql in script {
        assert_eq!(rows(&single, sql).await, rows(&client, sql).await, "{sql}");
    }
    // PostgreSQL's own errors.
    for sql in [
        "INSERT INTO things VALUES (507, 'a', 'extra')",
        "INSERT INTO things VALUES (508, 'a'), (509)",
        "INSERT INTO nokey VALUES (NULL, 'n')",
    ] {
        assert_eq!(
            sqlstate(&client, sql).await,
            sqlstate(&single, sql).await,
            "{sql}"
        );
    }
    // Through the extended protocol, a prepared statement run several times.
    let st = "INSERT INTO things VALUES ($1, $2) RETURNING id, v";
    for (k, v) in [(600i64, "p"), (601, "q"), (602, "r")] {
        let want = single.query_one(st, &[&k, &v]).await.unwrap();
        let got = client.query_one(st, &[&k, &v]).await.unwrap();
        assert_eq!(
            (want.get::<_, i64>(0), want.get::<_, String>(1)),
            (got.get::<_, i64>(0), got.get::<_, String>(1))
        );
    }
    let st = "INSERT INTO things VALUES (DEFAULT, $1) RETURNING id";
    for v in ["d1", "d2"] {
        let want: i64 = single.query_one(st, &[&v]).await.unwrap().get(0);
        let got: i64 = client.query_one(st, &[&v]).await.unwrap().get(0);
        assert_eq!(want, got);
    }
    for sql in [
        "SELECT id, v FROM things ORDER BY id",
        "SELECT id, v FROM nokey ORDER BY id",
    ] {
        assert_eq!(rows(&single, sql).await, rows(&client, sql).await, "{sql}");
    }
    assert_eq!(placed(&c, "things", false).await, 14);
    assert_eq!(placed(&c, "nokey", false).await, 4);
    // Inside a block that made the table: the columns are read in the block.
    for cl in [&client, &single] {
        exec(cl, "BEGIN; ALTER TABLE nokey ADD COLUMN w int").await;
        exec(cl, "INSERT INTO nokey VALUES (10, 'x', 7), (11, 'y', 8)").await;
        exec(cl, "COMMIT").await;
    }
    let sql = "SELECT id, v, w FROM nokey ORDER BY id";
    assert_eq!(rows(&single, sql).await, rows(&client, sql).await);
    assert_eq!(placed(&c, "nokey", false).await, 6);
}

/// The sequence shard down: inserts that leave the key to the cluster fail
/// with 08006 naming it; inserts that give their keys still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_sequence_shard_only_inserts_that_give_keys_work() {
    let c = Cluster::start_with(3, TABLES).await;
    let client = c.client().await;
    exec(&client, SCHEMA).await;
    exec(&client, "INSERT INTO things (v) VALUES ('warm')").await;
    c.shards.servers[0].stop("immediate").unwrap();
    let err = client
        .simple_query("INSERT INTO things (v) VALUES ('a')")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert!(db.message().contains("shard 0"), "{}", db.message());
    let k = c.key_on("things", 1);
    exec(
        &client,
        &format!("INSERT INTO things (id, v) VALUES ({k}, 'given')"),
    )
    .await;
    assert_eq!(
        rows(
            &c.shard(1).await,
            &format!("SELECT v FROM things WHERE id = {k}")
        )
        .await,
        vec![vec![Some("given".to_string())]]
    );
}

/// Two proxies over the same shards, clients inserting through both at
/// once: every key is handed out once, and every row sits on its key's shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_unique_across_proxies() {
    let c = Cluster::start_with(3, TABLES).await;
    exec(&c.client().await, SCHEMA).await;
    let other = crate::harness::ProxyProcess::start_with(&c.shards, TABLES, "").await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let url = if i % 2 == 0 { c.url() } else { other.url() };
        tasks.push(tokio::spawn(async move {
            let client = crate::harness::connect(&url).await.unwrap();
            let mut got = Vec::new();
            for j in 0..25 {
                let sql = if j % 5 == 0 {
                    "INSERT INTO things (v) VALUES ('m'), ('n'), ('o') RETURNING id"
                } else {
                    "INSERT INTO things (v) VALUES ('p') RETURNING id"
                };
                got.extend(ids(rows(&client, sql).await));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a key was handed out twice");
    assert_eq!(n, 4 * (20 + 5 * 3));
    assert_eq!(placed(&c, "things", false).await, n);
}
