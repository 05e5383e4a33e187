//! Rows land where the shard map says; DDL, reference tables, fan-out reads
//! and writes behave as one PostgreSQL would.

use pieskieo::router::KeyValue;

use crate::harness::{exec, rows, sqlstate, tags, value, Cluster};

const SCHEMA: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
CREATE TABLE countries (code text PRIMARY KEY, name text);
CREATE TABLE users (email text PRIMARY KEY, name text)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_land_on_their_shard_and_reads_union() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, SCHEMA).await;

    // DDL went to every shard.
    for i in 0..3 {
        let s = c.shard(i).await;
        assert_eq!(value(&s, "SELECT count(*) FROM pg_tables WHERE tablename IN ('accounts', 'countries', 'users')").await, "3");
    }

    // Single-row inserts, one per statement.
    for id in 1..=30i64 {
        let t = tags(
            &client,
            &format!(
                "INSERT INTO accounts (id, balance) VALUES ({id}, {})",
                id * 10
            ),
        )
        .await;
        assert_eq!(t, vec![1]);
    }
    // A multi-row insert spanning shards: split, one tag with the total.
    let values: Vec<String> = (31..=60i64)
        .map(|id| format!("({id}, {}, 'it''s \\\\ ok')", id * 10))
        .collect();
    let t = tags(
        &client,
        &format!(
            "INSERT INTO accounts (id, balance, note) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
    assert_eq!(t, vec![30]);

    let mut total = 0;
    for i in 0..3 {
        let s = c.shard(i).await;
        let ids = rows(&s, "SELECT id FROM accounts").await;
        assert!(!ids.is_empty(), "shard {i} got no rows");
        for r in &ids {
            let id: i64 = r[0].as_deref().unwrap().parse().unwrap();
            assert_eq!(
                c.shard_of("accounts", KeyValue::Int(id)),
                i,
                "row {id} is on shard {i}"
            );
        }
        total += ids.len();
    }
    assert_eq!(total, 60);
    // Text survives byte for byte through the split path.
    assert_eq!(
        value(&client, "SELECT note FROM accounts WHERE id = 40").await,
        "it's \\\\ ok"
    );

    // A read by key goes to one shard; without the key, the union of all.
    assert_eq!(
        value(&client, "SELECT balance FROM accounts WHERE id = 17").await,
        "170"
    );
    let all = rows(&client, "SELECT id, balance FROM accounts").await;
    assert_eq!(all.len(), 60);
    let sum: i64 = all
        .iter()
        .map(|r| r[1].as_deref().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(sum, (1..=60).map(|i| i * 10).sum::<i64>());
    let some = rows(
        &client,
        "SELECT id FROM accounts WHERE id IN (1, 2, 3, 4, 5, 6)",
    )
    .await;
    assert_eq!(some.len(), 6);

    // Fan-out writes sum their counts.
    assert_eq!(
        tags(
            &client,
            "UPDATE accounts SET balance = balance + 1 WHERE balance > 300"
        )
        .await,
        vec![30]
    );
    assert_eq!(
        tags(&client, "DELETE FROM accounts WHERE balance < 100").await,
        vec![9]
    );
    assert_eq!(
        value(&client, "SELECT balance FROM accounts WHERE id = 50").await,
        "501"
    );

    // Moving a row to another shard by updating its key is refused.
    let other = (1..100i64)
        .find(|k| {
            c.shard_of("accounts", KeyValue::Int(*k)) != c.shard_of("accounts", KeyValue::Int(50))
        })
        .unwrap();
    assert_eq!(
        sqlstate(
            &client,
            &format!("UPDATE accounts SET id = {other} WHERE id = 50")
        )
        .await,
        "0A000"
    );
    // NULL keys are refused clearly.
    assert_eq!(
        sqlstate(
            &client,
            "INSERT INTO accounts (id, balance) VALUES (NULL, 1)"
        )
        .await,
        "23502"
    );
    // Cross-shard window functions are refused rather than answered wrongly.
    assert_eq!(
        sqlstate(&client, "SELECT id, sum(balance) OVER () FROM accounts").await,
        "0A000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_tables_everywhere_and_text_keys() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, SCHEMA).await;
    assert_eq!(
        tags(
            &client,
            "INSERT INTO countries (code, name) VALUES ('pl', 'Polska'), ('jp', '日本')"
        )
        .await,
        vec![2]
    );
    for i in 0..3 {
        let s = c.shard(i).await;
        assert_eq!(
            value(&s, "SELECT name FROM countries WHERE code = 'jp'").await,
            "日本"
        );
    }
    assert_eq!(rows(&client, "SELECT * FROM countries").await.len(), 2);

    let emails = [
        "ala@example.com",
        "żółw@example.pl",
        "o'brien@example.ie",
        "x$$y@example.com",
    ];
    for e in emails {
        let quoted = e.replace('\'', "''");
        exec(
            &client,
            &format!("INSERT INTO users (email, name) VALUES ('{quoted}', 'n')"),
        )
        .await;
        let shard = c.shard_of("users", KeyValue::Text(e.to_string()));
        let s = c.shard(shard).await;
        assert_eq!(
            value(
                &s,
                &format!("SELECT email FROM users WHERE email = '{quoted}'")
            )
            .await,
            e
        );
        assert_eq!(
            value(
                &client,
                &format!("SELECT email FROM users WHERE email = '{quoted}'")
            )
            .await,
            e
        );
    }
    // A join of a sharded table with a reference table runs on the key's shard.
    exec(&client, "ALTER TABLE users ADD COLUMN country text").await;
    exec(
        &client,
        "UPDATE users SET country = 'pl' WHERE email = 'ala@example.com'",
    )
    .await;
    let r = rows(
        &client,
        "SELECT c.name FROM users u JOIN countries c ON c.code = u.country WHERE u.email = 'ala@example.com'",
    )
    .await;
    assert_eq!(r, vec![vec![Some("Polska".to_string())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_pass_through_and_multi_statement_queries() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, SCHEMA).await;
    exec(&client, "INSERT INTO accounts (id, balance) VALUES (1, 1)").await;

    // The shard's error arrives as PostgreSQL sent it: code, message, detail.
    let err = client
        .simple_query("INSERT INTO accounts (id, balance) VALUES (1, 2)")
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "23505");
    assert_eq!(db.constraint(), Some("accounts_pkey"));
    assert_eq!(db.detail(), Some("Key (id)=(1) already exists."));

    // Several statements in one Query: each answered, in order.
    let r = exec(
        &client,
        "SELECT 1 AS a; SELECT balance FROM accounts WHERE id = 1; SELECT 'x' AS b",
    )
    .await;
    let values: Vec<String> = r
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(values, vec!["1", "1", "x"]);
    // Statements for one shard in one Query share PostgreSQL's implicit transaction:
    // the failure of the second undoes the first.
    let k = 1000i64;
    let same: Vec<i64> = (k..k + 200)
        .filter(|x| {
            c.shard_of("accounts", KeyValue::Int(*x)) == c.shard_of("accounts", KeyValue::Int(1))
        })
        .take(1)
        .collect();
    let q = format!("INSERT INTO accounts (id, balance) VALUES ({}, 1); INSERT INTO accounts (id, balance) VALUES (1, 1)", same[0]);
    assert_eq!(sqlstate(&client, &q).await, "23505");
    assert_eq!(
        rows(
            &client,
            &format!("SELECT * FROM accounts WHERE id = {}", same[0])
        )
        .await
        .len(),
        0
    );

    // Syntax errors on sharded tables are the router's, with 42601.
    assert_eq!(
        sqlstate(&client, "SELECT * FROM accounts WHERE id = = 1").await,
        "42601"
    );
    // Unknown tables are the default shard's: its error passes through.
    assert_eq!(
        sqlstate(&client, "SELECT * FROM no_such_table").await,
        "42P01"
    );
    // Empty query.
    let r = exec(&client, "  ;  ").await;
    assert!(r
        .iter()
        .all(|m| !matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
}
