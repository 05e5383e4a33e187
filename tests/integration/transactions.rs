//! Transaction blocks on one shard, failed-block semantics, savepoints made
//! before a shard joins, and session settings across pooled connections.

use pieskieo::router::KeyValue;

use crate::harness::{balance, exec, rows, sqlstate, value, Cluster, RawClient};

fn keys_on_two_shards(c: &Cluster) -> (i64, i64) {
    (c.key_on("accounts", 0), c.key_on("accounts", 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_shard_blocks_commit_and_roll_back() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(
        &client,
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint)",
    )
    .await;
    let (a, b) = keys_on_two_shards(&c);

    exec(&client, &format!("BEGIN; INSERT INTO accounts (id, balance) VALUES ({a}, 1); UPDATE accounts SET balance = 5 WHERE id = {a}; COMMIT")).await;
    assert_eq!(balance(&client, a).await, "5");

    exec(&client, "BEGIN").await;
    exec(
        &client,
        &format!("UPDATE accounts SET balance = 7 WHERE id = {a}"),
    )
    .await;
    exec(&client, "ROLLBACK").await;
    assert_eq!(balance(&client, a).await, "5");

    // An error fails the block: 25P02 until it ends, and COMMIT rolls back
    // every shard the block touched.
    exec(&client, "BEGIN").await;
    exec(
        &client,
        &format!("UPDATE accounts SET balance = 9 WHERE id = {a}"),
    )
    .await;
    exec(
        &client,
        &format!("INSERT INTO accounts (id, balance) VALUES ({b}, 1)"),
    )
    .await;
    assert_eq!(
        sqlstate(
            &client,
            &format!("INSERT INTO accounts (id, balance) VALUES ({b}, 1)")
        )
        .await,
        "23505"
    );
    assert_eq!(sqlstate(&client, "SELECT 1").await, "25P02");
    let r = exec(&client, "COMMIT").await;
    assert!(matches!(
        r.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(_))
    ));
    assert_eq!(balance(&client, a).await, "5");
    assert!(
        rows(&client, &format!("SELECT * FROM accounts WHERE id = {b}"))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_bytes_and_failed_blocks_match_postgres() {
    let c = Cluster::start(2).await;
    let mut raw = RawClient::connect(c.port()).await;
    raw.query("CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint)")
        .await;

    let r = raw.query("BEGIN").await;
    assert_eq!((r.tags(), r.status), (vec!["BEGIN".to_string()], b'T'));
    let r = raw
        .query("INSERT INTO accounts (id, balance) VALUES (1, 1)")
        .await;
    assert_eq!(r.status, b'T');
    let r = raw.query("SELECT 1/0").await;
    assert_eq!(
        (r.error_codes(), r.status),
        (vec!["22012".to_string()], b'E')
    );
    let r = raw.query("SELECT 1").await;
    assert_eq!(
        (r.error_codes(), r.status),
        (vec!["25P02".to_string()], b'E')
    );
    // COMMIT of a failed block rolls back and says so.
    let r = raw.query("COMMIT").await;
    assert_eq!((r.tags(), r.status), (vec!["ROLLBACK".to_string()], b'I'));
    let r = raw
        .query("SELECT count(*) FROM accounts WHERE id = 1")
        .await;
    assert_eq!(r.status, b'I');
    assert!(r
        .messages
        .iter()
        .any(|(t, b)| *t == b'D' && b.ends_with(b"0")));

    // A savepoint made before any shard joined still undoes that shard's work.
    let (k2, k3) = {
        let on = |k: i64| c.shard_of("accounts", KeyValue::Int(k));
        let k3 = (3..1000).find(|k| on(*k) == on(2)).unwrap();
        (2, k3)
    };
    let r = raw.query("BEGIN; SAVEPOINT s1").await;
    assert_eq!(r.status, b'T');
    raw.query(&format!(
        "INSERT INTO accounts (id, balance) VALUES ({k2}, 2)"
    ))
    .await;
    let r = raw.query("ROLLBACK TO SAVEPOINT s1").await;
    assert_eq!((r.tags(), r.status), (vec!["ROLLBACK".to_string()], b'T'));
    raw.query(&format!(
        "INSERT INTO accounts (id, balance) VALUES ({k3}, 3)"
    ))
    .await;
    let r = raw.query("COMMIT").await;
    assert_eq!((r.tags(), r.status), (vec!["COMMIT".to_string()], b'I'));
    let client = c.client().await;
    assert!(
        rows(&client, &format!("SELECT * FROM accounts WHERE id = {k2}"))
            .await
            .is_empty()
    );
    assert_eq!(balance(&client, k3).await, "3");

    // ROLLBACK TO recovers a failed block, as in PostgreSQL.
    raw.query("BEGIN; SAVEPOINT a").await;
    raw.query("INSERT INTO accounts (id, balance) VALUES (4, 4)")
        .await;
    let r = raw
        .query("INSERT INTO accounts (id, balance) VALUES (4, 4)")
        .await;
    assert_eq!(
        (r.error_codes(), r.status),
        (vec!["23505".to_string()], b'E')
    );
    let r = raw.query("ROLLBACK TO a").await;
    assert_eq!(r.status, b'T');
    let r = raw.query("RELEASE nope").await;
    assert_eq!(
        (r.error_codes(), r.status),
        (vec!["3B001".to_string()], b'E')
    );
    raw.query("ROLLBACK").await;

    // Outside a block, COMMIT warns like PostgreSQL.
    let r = raw.query("COMMIT").await;
    assert_eq!(r.status, b'I');
    assert!(r
        .messages
        .iter()
        .any(|(t, b)| *t == b'N' && crate::harness::field(b, b'C') == "25P01"));
    // Clients may not drive two-phase commit themselves.
    let r = raw.query("PREPARE TRANSACTION 'mine'").await;
    assert_eq!(r.error_codes(), vec!["0A000".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_follow_the_client_across_pooled_connections() {
    let c = Cluster::start(2).await;
    let one = c.client().await;
    let two = c.client().await;
    exec(&one, "SET TimeZone = 'Asia/Tokyo'").await;
    exec(&one, "SET application_name = 'first'").await;
    for _ in 0..20 {
        // Interleave so the pooled connections are shared by both clients.
        assert_eq!(value(&one, "SHOW TimeZone").await, "Asia/Tokyo");
        assert_eq!(value(&two, "SHOW TimeZone").await, "UTC");
        assert_eq!(
            value(&one, "SELECT current_setting('application_name')").await,
            "first"
        );
    }
    exec(&one, "RESET TimeZone").await;
    assert_eq!(value(&one, "SHOW TimeZone").await, "UTC");
    // A setting made inside a rolled-back block does not stick.
    exec(&one, "BEGIN; SET TimeZone = 'Europe/Warsaw'; ROLLBACK").await;
    assert_eq!(value(&one, "SHOW TimeZone").await, "UTC");
    exec(&one, "BEGIN; SET TimeZone = 'Europe/Warsaw'; COMMIT").await;
    assert_eq!(value(&one, "SHOW TimeZone").await, "Europe/Warsaw");
    // Invalid values get PostgreSQL's own error.
    assert_eq!(
        sqlstate(&one, "SET TimeZone = 'Nowhere/Land'").await,
        "22023"
    );
}
