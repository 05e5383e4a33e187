//! A shard that is down, and clients that send garbage: clear errors for
//! the affected statements or client, and nobody else notices.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{balance, error_message, exec, sqlstate, value, Cluster, RawClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_shard_fails_its_statements_only_and_comes_back() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(
        &client,
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint)",
    )
    .await;
    let key_on = |shard: usize| c.key_on("accounts", shard);
    for s in 0..3 {
        exec(
            &client,
            &format!(
                "INSERT INTO accounts (id, balance) VALUES ({}, {s})",
                key_on(s)
            ),
        )
        .await;
    }

    c.shards.servers[1].stop("immediate").unwrap();
    let q1 = format!("SELECT balance FROM accounts WHERE id = {}", key_on(1));
    assert_eq!(sqlstate(&client, &q1).await, "08006");
    let msg = error_message(&client, &q1).await;
    assert!(msg.contains("shard 1"), "{msg}");
    // The other shards keep serving, on the same client and on new ones.
    assert_eq!(balance(&client, key_on(2)).await, "2");
    let other = c.client().await;
    assert_eq!(balance(&other, key_on(0)).await, "0");
    // A fan-out read needs every shard: it fails clearly.
    assert_eq!(sqlstate(&client, "SELECT * FROM accounts").await, "08006");

    c.shards.servers[1].start().unwrap();
    let mut ok = false;
    for _ in 0..50 {
        match client.simple_query(&q1).await {
            Ok(r) => {
                ok = !r.is_empty();
                break;
            }
            Err(e) => eprintln!("retry: {e:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the pool reconnects when the shard is back");
    assert_eq!(value(&client, &q1).await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_hurts_only_its_sender() {
    let c = Cluster::start(1).await;
    let good = c.client().await;

    // Garbage instead of a startup packet.
    let mut s = TcpStream::connect(("127.0.0.1", c.port())).await.unwrap();
    s.write_all(&[0, 0, 0, 3, 1, 2, 3, 4]).await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    assert!(
        buf.is_empty(),
        "closed without an answer, as PostgreSQL does"
    );

    // A message claiming a huge length: refused before allocating it.
    let mut raw = RawClient::connect(c.port()).await;
    raw.stream
        .write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let (t, body) = raw.read().await;
    assert_eq!(t, b'E');
    assert_eq!(crate::harness::field(&body, b'C'), "08P01");

    // An unknown message type.
    let mut raw = RawClient::connect(c.port()).await;
    raw.send(b'?', b"").await;
    let (t, body) = raw.read().await;
    assert_eq!(
        (t, crate::harness::field(&body, b'C')),
        (b'E', "08P01".to_string())
    );

    // Invalid UTF-8 in a query: an error for that statement, the session goes on.
    let mut raw = RawClient::connect(c.port()).await;
    raw.send(b'Q', &[0xff, 0xfe, 0]).await;
    let r = raw.until_ready().await;
    assert_eq!(r.error_codes(), vec!["22021".to_string()]);
    let r = raw.query("SELECT 1").await;
    assert!(r.error_codes().is_empty());

    // Extended protocol: a Bind of a statement that does not exist is an
    // error up to Sync; a truncated Bind is a protocol violation.
    raw.send(b'P', b"\0SELECT 1\0\0\0").await;
    raw.send(b'B', b"\0nope\0\0\0\0\0\0\0").await;
    raw.send(b'E', b"\0\0\0\0\0").await;
    raw.send(b'S', b"").await;
    let r = raw.until_ready().await;
    assert_eq!(r.error_codes(), vec!["26000".to_string()]);
    assert_eq!(
        r.messages.first().map(|m| m.0),
        Some(b'1'),
        "ParseComplete first"
    );
    raw.send(b'B', b"\0").await;
    raw.send(b'S', b"").await;
    let (t, body) = raw.read().await;
    assert_eq!(
        (t, crate::harness::field(&body, b'C')),
        (b'E', "08P01".to_string())
    );

    // Meanwhile the well-behaved client never noticed.
    assert_eq!(value(&good, "SELECT 42").await, "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_every_shard_of_that_client_only() {
    let c = Cluster::start(3).await;
    let keys = c.accounts(3, 1).await;
    let client = c.client().await;
    let bystander = c.client().await;
    let token = client.cancel_token();
    let started = std::time::Instant::now();
    // Sleeps on every shard at once (one row per shard).
    let victim = tokio::spawn(async move {
        client
            .simple_query("SELECT pg_sleep(30) FROM accounts")
            .await
    });
    let other = tokio::spawn(async move {
        bystander
            .simple_query(&format!(
                "SELECT pg_sleep(1.5) FROM accounts WHERE id = {}",
                keys[0]
            ))
            .await
    });
    // Cancel once the sleep runs on every shard.
    for i in 0..3 {
        let s = c.shard(i).await;
        for _ in 0..500 {
            let n = value(&s, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND state = 'active' AND pid <> pg_backend_pid()").await;
            if n != "0" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = victim.await.unwrap().unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("57014"),
        "{e:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    other
        .await
        .unwrap()
        .expect("another client's statement is not cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_over_the_limit_gets_53300_and_only_it() {
    let c =
        Cluster::start_custom(1, crate::harness::TABLES, "", "max_client_connections = 3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(c.client().await);
    }
    let e = crate::harness::connect(&c.url())
        .await
        .expect_err("a fourth client is refused");
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("53300"),
        "{e:?}"
    );
    for h in &held {
        assert_eq!(value(h, "SELECT 1").await, "1");
    }
    drop(held.pop());
    // Once the proxy has seen that client go, a new one fits again.
    let mut again = None;
    for _ in 0..100 {
        if let Ok(cl) = crate::harness::connect(&c.url()).await {
            again = Some(cl);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let again = again.expect("a client fits after one left");
    assert_eq!(value(&again, "SELECT 2").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_says_nothing_is_disconnected() {
    let c = Cluster::start_custom(1, crate::harness::TABLES, "", "startup_timeout_ms = 2000").await;
    let mut s = TcpStream::connect(("127.0.0.1", c.port())).await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(std::time::Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "closed after the startup timeout");
    assert_eq!(value(&c.client().await, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_clients_are_cut_and_rolled_back() {
    let c = Cluster::start_custom(
        2,
        crate::harness::TABLES,
        "",
        "idle_in_transaction_timeout_ms = 500",
    )
    .await;
    let keys = c.accounts(2, 100).await;
    let idle = c.client().await;
    idle.simple_query("BEGIN").await.unwrap();
    for k in &keys {
        idle.simple_query(&format!("UPDATE accounts SET balance = 0 WHERE id = {k}"))
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert!(
        idle.simple_query("COMMIT").await.is_err(),
        "the idle client was disconnected"
    );
    // Its locks are gone and nothing it did stuck.
    let other = c.client().await;
    other.simple_query("SET lock_timeout = '2s'").await.unwrap();
    for k in &keys {
        other
            .simple_query(&format!(
                "UPDATE accounts SET balance = balance + 1 WHERE id = {k}"
            ))
            .await
            .unwrap();
        assert_eq!(balance(&other, *k).await, "101");
    }
    // Outside a block, idle clients are left alone.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(value(&other, "SELECT 1").await, "1");
}

/// A shard that stalls (its processes stopped): with `query_timeout_ms`, the
/// client gets 57014 in time, other shards keep serving, the stalled
/// connection is never reused, and a transfer caught by it leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_shard_times_out_and_nothing_half_commits() {
    let c = Cluster::start_custom(2, crate::harness::TABLES, "", "query_timeout_ms = 1000").await;
    let keys = c.accounts(2, 100).await;
    let (k0, k1) = (keys[0], keys[1]);
    let stalled = c.shard_of("accounts", pieskieo::router::KeyValue::Int(k1));
    let pids = crate::harness::shard_pids(&c.shards.servers[stalled]);
    crate::harness::signal(&pids, "STOP");
    let client = c.client().await;
    let t = std::time::Instant::now();
    assert_eq!(
        crate::harness::sqlstate(
            &client,
            &format!("SELECT balance FROM accounts WHERE id = {k1}")
        )
        .await,
        "57014"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // The other shard serves meanwhile, on the same session.
    assert_eq!(balance(&client, k0).await, "100");
    // A transfer that reaches the stalled shard fails as a whole.
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query(&format!(
            "UPDATE accounts SET balance = balance - 10 WHERE id = {k0}"
        ))
        .await
        .unwrap();
    let e = client
        .simple_query(&format!(
            "UPDATE accounts SET balance = balance + 10 WHERE id = {k1}"
        ))
        .await
        .unwrap_err();
    // A timeout on a pooled connection, or a new connection that cannot
    // start up: either way an error in time.
    let code = e.as_db_error().map(|d| d.code().code().to_string());
    assert!(matches!(code.as_deref(), Some("57014" | "08006")), "{e:?}");
    client.simple_query("ROLLBACK").await.unwrap();
    crate::harness::signal(&pids, "CONT");
    // Afterwards: fresh connections, nothing changed, nothing in doubt.
    for k in [k0, k1] {
        assert_eq!(balance(&client, k).await, "100");
    }
    for i in 0..2 {
        assert_eq!(crate::harness::prepared(&c.shard(i).await).await, 0);
    }
}
