//! The extended query protocol, through tokio-postgres and pgbench: routing
//! by bound values, prepared statements on pooled connections, portals with
//! row limits, fan-out, transactions, errors.

use pieskieo::router::KeyValue;

use crate::harness::{balance, bind, exec, insert_numbered, parse, prepared, value, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_route_by_bound_values() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(
        &client,
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint, note text)",
    )
    .await;
    exec(
        &client,
        "CREATE TABLE users (email text PRIMARY KEY, name text)",
    )
    .await;

    // Binary parameters (tokio-postgres describes first, then binds binary).
    let insert = client
        .prepare("INSERT INTO accounts (id, balance, note) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    for id in 1..=30i64 {
        let n = client
            .execute(&insert, &[&id, &(id * 10), &format!("n'{id}\\")])
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    for i in 0..3 {
        let s = c.shard(i).await;
        for row in s.query("SELECT id FROM accounts", &[]).await.unwrap() {
            let id: i64 = row.get(0);
            assert_eq!(
                c.shard_of("accounts", KeyValue::Int(id)),
                i,
                "row {id} on shard {i}"
            );
        }
    }
    let select = client
        .prepare("SELECT balance, note FROM accounts WHERE id = $1")
        .await
        .unwrap();
    for id in 1..=30i64 {
        let row = client.query_one(&select, &[&id]).await.unwrap();
        let (b, note): (i64, String) = (row.get(0), row.get(1));
        assert_eq!((b, note), (id * 10, format!("n'{id}\\")));
    }
    // Text keys, with non-ASCII and quotes.
    for email in ["a@x.pl", "żółw'\"@x.pl", "$$@x"] {
        client
            .execute(
                "INSERT INTO users (email, name) VALUES ($1, $2)",
                &[&email, &"n"],
            )
            .await
            .unwrap();
        let shard = c.shard_of("users", KeyValue::Text(email.to_string()));
        let s = c.shard(shard).await;
        let got: String = s
            .query_one("SELECT email FROM users WHERE email = $1", &[&email])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, email);
        let back: String = client
            .query_one("SELECT email FROM users WHERE email = $1", &[&email])
            .await
            .unwrap()
            .get(0);
        assert_eq!(back, email);
    }
    // No key: every shard answers, rows concatenated.
    let all = client
        .query("SELECT id FROM accounts WHERE balance > $1", &[&0i64])
        .await
        .unwrap();
    assert_eq!(all.len(), 30);
    // Fan-out writes through the extended protocol are atomic and summed.
    let n = client
        .execute(
            "UPDATE accounts SET balance = balance + 1 WHERE balance >= $1",
            &[&0i64],
        )
        .await
        .unwrap();
    assert_eq!(n, 30);

    // Pipelined: three queries for three shards in flight at once on one connection.
    let (k0, k1, k2) = (
        c.key_on("accounts", 0),
        c.key_on("accounts", 1),
        c.key_on("accounts", 2),
    );
    type Param<'a> = [&'a (dyn tokio_postgres::types::ToSql + Sync); 1];
    let (p0, p1, p2): (Param, Param, Param) = ([&k0], [&k1], [&k2]);
    let (r0, r1, r2) = tokio::join!(
        client.query_one(&select, &p0),
        client.query_one(&select, &p1),
        client.query_one(&select, &p2)
    );
    let got: Vec<i64> = [r0, r1, r2]
        .into_iter()
        .map(|r| r.unwrap().get(0))
        .collect();
    assert_eq!(got, vec![k0 * 10 + 1, k1 * 10 + 1, k2 * 10 + 1]);

    // Errors pass through with their SQLSTATE; the session goes on.
    let e = client
        .execute(&insert, &[&1i64, &1i64, &"dup"])
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "23505");
    assert_eq!(
        client
            .query_one(&select, &[&2i64])
            .await
            .unwrap()
            .get::<_, i64>(0),
        21
    );
    let e = client.prepare("SELEC 1").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42601");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_transactions_portals_and_statement_reuse() {
    let c = Cluster::start(3).await;
    let mut client = c.client().await;
    exec(
        &client,
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint)",
    )
    .await;
    let k0 = c.key_on("accounts", 0);
    let k1 = c.key_on("accounts", 1);
    insert_numbered(&client, "accounts (id, balance)", 20, "100").await;

    // A transaction over two shards, through the driver.
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance - 5 WHERE id = $1",
        &[&k0],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance + 5 WHERE id = $1",
        &[&k1],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let sum: i64 = client
        .query_one(
            "SELECT sum(balance)::bigint FROM accounts WHERE id = $1",
            &[&k0],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 95);
    assert_eq!(balance(&c.shard(1).await, k1).await, "105");

    // A rolled-back transaction leaves nothing.
    let tx = client.transaction().await.unwrap();
    tx.execute("UPDATE accounts SET balance = 0 WHERE id = $1", &[&k0])
        .await
        .unwrap();
    tx.execute("UPDATE accounts SET balance = 0 WHERE id = $1", &[&k1])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(balance(&c.shard(0).await, k0).await, "95");

    // A portal with a row limit continues where it stopped.
    let tx = client.transaction().await.unwrap();
    let same_shard: Vec<i64> = (1..=20)
        .filter(|k| c.shard_of("accounts", KeyValue::Int(*k)) == 0)
        .collect();
    let stmt = tx
        .prepare("SELECT id FROM accounts WHERE id IN ($1, $2, $3) ORDER BY id")
        .await
        .unwrap();
    let portal = tx
        .bind(&stmt, &[&same_shard[0], &same_shard[1], &same_shard[2]])
        .await
        .unwrap();
    let first = tx.query_portal(&portal, 2).await.unwrap();
    let rest = tx.query_portal(&portal, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(rest.len(), 1);
    let got: Vec<i64> = first.iter().chain(rest.iter()).map(|r| r.get(0)).collect();
    assert_eq!(got, same_shard[..3].to_vec());
    tx.commit().await.unwrap();

    // Many clients reuse the same statement names on shared pooled connections.
    let mut tasks = Vec::new();
    for w in 0..6i64 {
        let url = c.url();
        tasks.push(tokio::spawn(async move {
            let client = crate::harness::connect(&url).await.unwrap();
            let st = client
                .prepare("SELECT balance FROM accounts WHERE id = $1")
                .await
                .unwrap();
            for i in 0..50i64 {
                let id = (w * 50 + i) % 20 + 1;
                let row = client.query_one(&st, &[&id]).await.unwrap();
                let _: i64 = row.get(0);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..3 {
        assert_eq!(prepared(&c.shard(i).await).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_extended_and_prepared_modes() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(
        &client,
        "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, abalance int NOT NULL DEFAULT 0, filler text);
         CREATE TABLE pgbench_history (aid int NOT NULL, delta int, mtime timestamp)",
    )
    .await;
    insert_numbered(&client, "pgbench_accounts (aid, abalance)", 500, "0").await;
    let mut expected = 0;
    for mode in ["extended", "prepared"] {
        expected += crate::psql::run_pgbench(&c, mode, 500).await;
    }
    let sum = c
        .shard_sum("SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts")
        .await;
    assert_eq!(sum as u64, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_execute_deallocate_route_by_arguments() {
    let c = Cluster::start(3).await;
    let keys = c.accounts(3, 10).await;
    let client = c.client().await;
    exec(
        &client,
        "PREPARE bal (bigint) AS SELECT balance FROM accounts WHERE id = $1",
    )
    .await;
    exec(
        &client,
        "PREPARE add AS UPDATE accounts SET balance = balance + $2 WHERE id = $1",
    )
    .await;
    for (i, k) in keys.iter().enumerate() {
        exec(&client, &format!("EXECUTE add ({k}, {i})")).await;
        assert_eq!(
            value(&client, &format!("EXECUTE bal ({k})")).await,
            (10 + i).to_string()
        );
        // The statement ran on the key's shard.
        assert_eq!(balance(&c.shard(i).await, *k).await, (10 + i).to_string());
    }
    // Inside a block spanning shards, and after DEALLOCATE it is gone.
    exec(
        &client,
        &format!(
            "BEGIN; EXECUTE add ({}, 100); EXECUTE add ({}, -5); COMMIT",
            keys[0], keys[1]
        ),
    )
    .await;
    assert_eq!(
        value(&client, &format!("EXECUTE bal ({})", keys[0])).await,
        "110"
    );
    let e = client
        .simple_query("PREPARE bal AS SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42P05");
    exec(&client, "DEALLOCATE bal").await;
    let e = client
        .simple_query(&format!("EXECUTE bal ({})", keys[0]))
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "26000");
    // A PREPARE PostgreSQL rejects is rejected with its error.
    let e = client
        .simple_query("PREPARE broken AS SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42P01");
}

/// Execute of the unnamed portal, all rows.
const EXECUTE: [u8; 5] = [0, 0, 0, 0, 0];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_syncs_fail_and_recover_independently() {
    use crate::harness::RawClient;
    let c = Cluster::start(2).await;
    let keys = c.accounts(2, 5).await;
    let mut raw = RawClient::connect(c.port()).await;
    // Segment 1 fails (division by zero), segment 2 must still run; both in one write.
    raw.send(
        b'P',
        &parse("s1", "SELECT balance / 0 FROM accounts WHERE id = $1"),
    )
    .await;
    raw.send(b'B', &bind("s1", &[&keys[0].to_string()])).await;
    raw.send(b'E', &EXECUTE).await;
    raw.send(b'S', b"").await;
    raw.send(
        b'P',
        &parse("s2", "SELECT balance FROM accounts WHERE id = $1"),
    )
    .await;
    raw.send(b'B', &bind("s2", &[&keys[1].to_string()])).await;
    raw.send(b'E', &EXECUTE).await;
    raw.send(b'S', b"").await;
    let first = raw.until_ready().await;
    assert_eq!(first.error_codes(), vec!["22012".to_string()]);
    assert_eq!(first.status, b'I');
    let second = raw.until_ready().await;
    assert!(second.error_codes().is_empty());
    let kinds: Vec<u8> = second.messages.iter().map(|m| m.0).collect();
    assert_eq!(kinds, vec![b'1', b'2', b'D', b'C']);
    assert_eq!(second.tags(), vec!["SELECT 1".to_string()]);
}

/// pgbench's TPC-B-like transaction with accounts, tellers, branches and
/// history sharded by different keys, so most transactions span shards; in
/// each protocol mode. Then TPC-B's consistency check, shard by shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_tpcb_like_across_shards_in_every_mode() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(
        &client,
        "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int NOT NULL DEFAULT 0, filler text);
         CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int NOT NULL DEFAULT 0, filler text);
         CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int NOT NULL DEFAULT 0, filler text);
         CREATE TABLE pgbench_history (tid int, bid int, aid int NOT NULL, delta int, mtime timestamp, filler text)",
    )
    .await;
    let accounts: Vec<String> = (1..=1000)
        .map(|i| format!("({i}, {}, 0)", (i - 1) / 334 + 1))
        .collect();
    exec(
        &client,
        &format!(
            "INSERT INTO pgbench_accounts (aid, bid, abalance) VALUES {}",
            accounts.join(",")
        ),
    )
    .await;
    let tellers: Vec<String> = (1..=10)
        .map(|i| format!("({i}, {}, 0)", (i - 1) / 4 + 1))
        .collect();
    exec(
        &client,
        &format!(
            "INSERT INTO pgbench_tellers (tid, bid, tbalance) VALUES {}",
            tellers.join(",")
        ),
    )
    .await;
    exec(
        &client,
        "INSERT INTO pgbench_branches (bid, bbalance) VALUES (1, 0), (2, 0), (3, 0)",
    )
    .await;

    let script = c.shards.dir.join("tpcb.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 1000)\n\\set bid random(1, 3)\n\\set tid random(1, 10)\n\\set delta random(-5000, 5000)\n\
         BEGIN;\n\
         UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;\n\
         UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;\n\
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);\n\
         END;\n",
    )
    .unwrap();
    let mut processed = 0u64;
    for mode in ["simple", "extended", "prepared"] {
        let (n, _) = crate::psql::pgbench(&c, mode, &script);
        processed += n;
    }
    let mut sums = [0i64; 3];
    let mut history = 0u64;
    for i in 0..3 {
        let s = c.shard(i).await;
        for (j, sql) in [
            "SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts",
            "SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers",
            "SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches",
        ]
        .iter()
        .enumerate()
        {
            sums[j] += value(&s, sql).await.parse::<i64>().unwrap();
        }
        history += value(&s, "SELECT count(*) FROM pgbench_history")
            .await
            .parse::<u64>()
            .unwrap();
        assert_eq!(prepared(&s).await, 0);
    }
    assert_eq!(sums[0], sums[1], "accounts and tellers balance");
    assert_eq!(sums[1], sums[2], "tellers and branches balance");
    assert_eq!(
        history, processed,
        "history grew by the number of transactions"
    );
}

/// Segments that reach one shard go out in one write: the client still gets
/// exactly PostgreSQL's answers in order — the proxy's ParseComplete where
/// its Parse stood, none for the statement the proxy prepares on a fresh
/// connection, errors from Parse, Bind or Execute, and ReadyForQuery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shard_segments_keep_message_order() {
    use crate::harness::RawClient;
    let c = Cluster::start(2).await;
    let keys = c.accounts(2, 5).await;
    let there = 1 - c.shard_of("accounts", KeyValue::Int(keys[0]));
    let other = (1000..)
        .find(|k| c.shard_of("accounts", KeyValue::Int(*k)) == there)
        .unwrap();
    exec(
        &c.client().await,
        &format!("INSERT INTO accounts (id, balance) VALUES ({other}, 9)"),
    )
    .await;
    let mut raw = RawClient::connect(c.port()).await;
    let kinds = |r: &crate::harness::Reply| r.messages.iter().map(|m| m.0).collect::<Vec<u8>>();
    let sql = "SELECT balance FROM accounts WHERE id = $1";
    raw.send(b'P', &parse("s1", sql)).await;
    raw.send(b'B', &bind("s1", &[&keys[0].to_string()])).await;
    raw.send(b'D', b"P\0").await;
    raw.send(b'E', &EXECUTE).await;
    raw.send(b'S', b"").await;
    let r = raw.until_ready().await;
    assert_eq!(kinds(&r), vec![b'1', b'2', b'T', b'D', b'C']);
    assert_eq!(r.status, b'I');
    // The same statement on the other shard: prepared there on the way, silently.
    for (key, balance) in [(other, "9"), (keys[0], "5")] {
        raw.send(b'B', &bind("s1", &[&key.to_string()])).await;
        raw.send(b'E', &EXECUTE).await;
        raw.send(b'S', b"").await;
        let r = raw.until_ready().await;
        assert_eq!(kinds(&r), vec![b'2', b'D', b'C']);
        assert!(
            r.messages[1].1.ends_with(balance.as_bytes()),
            "{:?}",
            r.messages[1]
        );
    }
    // Describe of a statement: parameter types and columns.
    raw.send(
        b'P',
        &parse("s2", "SELECT id, balance FROM accounts WHERE id = $1"),
    )
    .await;
    raw.send(b'D', b"Ss2\0").await;
    raw.send(b'S', b"").await;
    assert_eq!(kinds(&raw.until_ready().await), vec![b'1', b't', b'T']);
    // A statement the shard rejects: its error after the ParseComplete, then
    // nothing until ReadyForQuery; the session goes on.
    raw.send(
        b'P',
        &parse("bad", "SELECT nosuchcol FROM accounts WHERE id = $1"),
    )
    .await;
    raw.send(b'B', &bind("bad", &[&keys[0].to_string()])).await;
    raw.send(b'E', &EXECUTE).await;
    raw.send(b'S', b"").await;
    let r = raw.until_ready().await;
    assert_eq!(kinds(&r), vec![b'1', b'E']);
    assert_eq!(r.error_codes(), vec!["42703".to_string()]);
    assert_eq!(r.status, b'I');
    raw.send(b'B', &bind("s1", &[&keys[1].to_string()])).await;
    raw.send(b'E', &EXECUTE).await;
    raw.send(b'S', b"").await;
    assert_eq!(kinds(&raw.until_ready().await), vec![b'2', b'D', b'C']);
}
