//! Transaction-block semantics exactly as PostgreSQL's, in both protocols:
//! multi-statement queries are one implicit block, errors the proxy raises
//! roll a segment back like a shard's error, segments may reach any number
//! of shards, row limits on merged portals, and session settings that stay
//! with their client.

use crate::harness::{balance, bind, exec, field, parse, value, Cluster, RawClient};

/// Execute of the unnamed portal with a row limit (0: all rows).
fn execute(max: i32) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(&max.to_be_bytes());
    b
}

fn kinds(r: &crate::harness::Reply) -> String {
    r.messages.iter().map(|m| m.0 as char).collect()
}

/// Case 1 of the issue: a query of several statements is all or nothing even
/// when it holds a control statement; `SET LOCAL` there is silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_queries_are_one_implicit_block() {
    let c = Cluster::start(3).await;
    let keys = c.accounts(2, 100).await;
    let (a, b) = (keys[0], keys[1]);
    let mut raw = RawClient::connect(c.port()).await;

    let r = raw
        .query(&format!(
            "UPDATE accounts SET balance = balance + 50 WHERE id = {a}; \
             UPDATE accounts SET balance = balance - 1000 WHERE id = {b}; COMMIT"
        ))
        .await;
    assert_eq!(r.error_codes(), vec!["23514"]);
    assert_eq!(r.tags(), vec!["UPDATE 1"]);
    assert_eq!(r.status, b'I');
    let client = c.client().await;
    assert_eq!(
        balance(&client, a).await,
        "100",
        "first UPDATE must roll back"
    );

    let r = raw
        .query(&format!(
            "SET LOCAL lock_timeout = '1s'; UPDATE accounts SET balance = balance + 50 WHERE id = {a}; \
             UPDATE accounts SET balance = balance - 1000 WHERE id = {b}"
        ))
        .await;
    assert_eq!(
        kinds(&r),
        "CCE",
        "no WARNING for SET LOCAL in an implicit block"
    );
    assert_eq!(r.error_codes(), vec!["23514"]);
    assert_eq!(balance(&client, a).await, "100");

    // COMMIT inside: what ran before is committed with PostgreSQL's WARNING,
    // what follows is a new implicit block.
    let r = raw
        .query(&format!(
            "UPDATE accounts SET balance = balance + 1 WHERE id = {a}; COMMIT; \
             UPDATE accounts SET balance = balance + 1 WHERE id = {b}; \
             UPDATE accounts SET balance = balance - 1000 WHERE id = {a}"
        ))
        .await;
    assert_eq!(kinds(&r), "CNCCE");
    assert_eq!(field(&r.messages[1].1, b'C'), "25P01");
    assert_eq!(balance(&client, a).await, "101");
    assert_eq!(balance(&client, b).await, "100", "second block rolled back");

    // ROLLBACK inside rolls back what ran before, with the WARNING.
    let r = raw
        .query(&format!(
            "UPDATE accounts SET balance = balance + 5 WHERE id = {a}; \
             UPDATE accounts SET balance = balance + 5 WHERE id = {b}; ROLLBACK"
        ))
        .await;
    assert_eq!(kinds(&r), "CCNC");
    assert_eq!(r.tags(), vec!["UPDATE 1", "UPDATE 1", "ROLLBACK"]);
    assert_eq!(balance(&client, a).await, "101");

    // BEGIN inside keeps what ran before in the block it opens.
    let r = raw
        .query(&format!(
            "UPDATE accounts SET balance = balance + 7 WHERE id = {a}; BEGIN; \
             UPDATE accounts SET balance = balance + 7 WHERE id = {b}"
        ))
        .await;
    assert_eq!(r.status, b'T');
    assert!(r.error_codes().is_empty());
    let r = raw.query("ROLLBACK").await;
    assert_eq!(r.status, b'I');
    assert_eq!(
        balance(&client, a).await,
        "101",
        "the UPDATE before BEGIN rolled back too"
    );

    // Savepoints outside an explicit block: PostgreSQL's error, and the
    // implicit block rolls back.
    let r = raw
        .query(&format!(
            "UPDATE accounts SET balance = balance + 9 WHERE id = {a}; SAVEPOINT s"
        ))
        .await;
    assert_eq!(r.error_codes(), vec!["25P01"]);
    assert_eq!(balance(&client, a).await, "101");

    // A deferred failure at the end-of-query commit comes before the last
    // statement's CommandComplete, as PostgreSQL reports it.
    exec(
        &client,
        "CREATE TABLE items (id bigint PRIMARY KEY, u int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
    )
    .await;
    let u1 = c.key_on("items", 0);
    exec(
        &client,
        &format!("INSERT INTO items (id, u) VALUES ({u1}, 1)"),
    )
    .await;
    // Another row on the same shard as u1, so the deferred check fails there.
    let dup = u1 + next_on_same_shard(&c, "items", u1);
    let r = raw
        .query(&format!(
            "UPDATE accounts SET balance = balance + 3 WHERE id = {b}; INSERT INTO items (id, u) VALUES ({dup}, 1)"
        ))
        .await;
    assert_eq!(
        kinds(&r),
        "CE",
        "the last tag is replaced by the commit's error"
    );
    assert_eq!(r.error_codes(), vec!["23505"]);
    assert_eq!(balance(&client, b).await, "100");
}

/// Offset from `key` to the next key of `table` on the same shard.
fn next_on_same_shard(c: &Cluster, table: &str, key: i64) -> i64 {
    use pieskieo::router::KeyValue;
    let shard = c.shard_of(table, KeyValue::Int(key));
    (1..1000)
        .find(|d| c.shard_of(table, KeyValue::Int(key + d)) == shard)
        .unwrap()
}

/// Case 2: an error the proxy itself raises inside a Sync segment rolls
/// back what the segment already ran on a shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_errors_roll_back_the_segment() {
    let c = Cluster::start(3).await;
    let keys = c.accounts(2, 100).await;
    let a = keys[0].to_string();
    let mut raw = RawClient::connect(c.port()).await;
    raw.send(
        b'P',
        &parse(
            "up",
            "UPDATE accounts SET balance = balance + 50 WHERE id = $1",
        ),
    )
    .await;
    raw.send(b'B', &bind("up", &[&a])).await;
    raw.send(b'E', &execute(0)).await;
    raw.send(b'H', b"").await;
    // The UPDATE has run on its shard before the proxy sees what follows.
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(raw.read().await.0);
    }
    assert_eq!(got, vec![b'1', b'2', b'C']);
    raw.send(b'P', &parse("", "SET ROLE postgres")).await;
    raw.send(b'B', &bind("", &[])).await;
    raw.send(b'E', &execute(0)).await;
    raw.send(b'S', b"").await;
    let r = raw.until_ready().await;
    assert_eq!(r.error_codes(), vec!["0A000"]);
    assert_eq!(r.status, b'I');
    let client = c.client().await;
    assert_eq!(balance(&client, keys[0]).await, "100");
    // The connection is clean for the next segment.
    let r = raw.query("SELECT 1").await;
    assert!(r.error_codes().is_empty());
}

/// Case 4 (protocol level): a segment outside a block reaches a second shard
/// after a Flush; the shards form one implicit block: a failure on the
/// second rolls back the first, success commits both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_reach_new_shards_after_flush_atomically() {
    let c = Cluster::start(3).await;
    let keys = c.accounts(3, 100).await;
    let mut raw = RawClient::connect(c.port()).await;
    let up = "UPDATE accounts SET balance = balance + $1 WHERE id = $2";
    raw.send(b'P', &parse("up", up)).await;
    for (i, (delta, key)) in [("5", keys[0]), ("-1000", keys[1])].iter().enumerate() {
        raw.send(b'B', &bind("up", &[delta, &key.to_string()]))
            .await;
        raw.send(b'E', &execute(0)).await;
        raw.send(b'H', b"").await;
        if i == 0 {
            let mut got = Vec::new();
            while got.len() < 3 {
                got.push(raw.read().await.0);
            }
            assert_eq!(got, vec![b'1', b'2', b'C']);
        }
    }
    raw.send(b'S', b"").await;
    let r = raw.until_ready().await;
    assert_eq!(r.error_codes(), vec!["23514"]);
    assert_eq!(r.status, b'I');
    let client = c.client().await;
    assert_eq!(balance(&client, keys[0]).await, "100");

    for (delta, key) in [("5", keys[0]), ("6", keys[1]), ("7", keys[2])] {
        raw.send(b'B', &bind("up", &[delta, &key.to_string()]))
            .await;
        raw.send(b'E', &execute(0)).await;
        raw.send(b'H', b"").await;
    }
    raw.send(b'S', b"").await;
    let r = raw.until_ready().await;
    assert!(r.error_codes().is_empty(), "{:?}", r.error_codes());
    assert_eq!(r.tags(), vec!["UPDATE 1"; 3]);
    assert_eq!(balance(&client, keys[0]).await, "105");
    assert_eq!(balance(&client, keys[1]).await, "106");
    assert_eq!(balance(&client, keys[2]).await, "107");

    // BEGIN in the middle of a segment keeps what ran before it.
    raw.send(b'B', &bind("up", &["1", &keys[0].to_string()]))
        .await;
    raw.send(b'E', &execute(0)).await;
    raw.send(b'P', &parse("", "BEGIN")).await;
    raw.send(b'B', &bind("", &[])).await;
    raw.send(b'E', &execute(0)).await;
    raw.send(b'S', b"").await;
    let r = raw.until_ready().await;
    assert_eq!(r.status, b'T');
    let r = raw.query("ROLLBACK").await;
    assert_eq!(r.status, b'I');
    assert_eq!(balance(&client, keys[0]).await, "105");
    assert_eq!(
        prepared_left(&c).await,
        0,
        "nothing is left prepared on any shard"
    );
}

async fn prepared_left(c: &Cluster) -> usize {
    let mut n = 0;
    for i in 0..3 {
        let s = c.shard(i).await;
        n += value(&s, "SELECT count(*) FROM pg_prepared_xacts")
            .await
            .parse::<usize>()
            .unwrap();
    }
    n
}

/// Case 4 (row limits): an Execute with a row limit of a portal whose rows
/// the proxy merges suspends and continues, as asyncpg's fetchval and
/// pgjdbc's fetch size need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_limits_on_merged_portals_suspend_and_continue() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, crate::harness::ACCOUNTS).await;
    crate::harness::insert_numbered(&client, "accounts (id, balance)", 30, "1").await;
    let mut raw = RawClient::connect(c.port()).await;
    raw.send(b'P', &parse("", "SELECT count(*) FROM accounts"))
        .await;
    raw.send(b'B', &bind("", &[])).await;
    raw.send(b'E', &execute(1)).await;
    raw.send(b'S', b"").await;
    let r = raw.until_ready().await;
    assert!(r.error_codes().is_empty(), "{:?}", r.error_codes());
    assert_eq!(kinds(&r), "12Ds", "one row, then PortalSuspended");

    // Sorted merge, fetched 7 at a time: every row once, in order.
    raw.send(b'P', &parse("", "SELECT id FROM accounts ORDER BY id DESC"))
        .await;
    raw.send(b'B', &bind("", &[])).await;
    let mut ids = Vec::new();
    let mut last = String::new();
    for _ in 0..5 {
        raw.send(b'E', &execute(7)).await;
    }
    raw.send(b'S', b"").await;
    let r = raw.until_ready().await;
    assert!(r.error_codes().is_empty(), "{:?}", r.error_codes());
    for (t, b) in &r.messages {
        match t {
            b'D' => {
                let len = i32::from_be_bytes([b[2], b[3], b[4], b[5]]) as usize;
                ids.push(
                    String::from_utf8_lossy(&b[6..6 + len])
                        .parse::<i64>()
                        .unwrap(),
                );
            }
            b'C' => last = String::from_utf8_lossy(&b[..b.len() - 1]).into_owned(),
            _ => {}
        }
    }
    assert_eq!(ids, (1..=30).rev().collect::<Vec<i64>>());
    assert_eq!(kinds(&r).matches('s').count(), 4);
    assert_eq!(last, "SELECT 2", "the last fetch's own row count");

    // Rows concatenated from several shards (no merge plan), also limited.
    raw.send(b'P', &parse("", "SELECT id FROM accounts")).await;
    raw.send(b'B', &bind("", &[])).await;
    raw.send(b'E', &execute(20)).await;
    raw.send(b'E', &execute(20)).await;
    raw.send(b'S', b"").await;
    let r = raw.until_ready().await;
    assert!(r.error_codes().is_empty(), "{:?}", r.error_codes());
    assert_eq!(kinds(&r).matches('D').count(), 30);
    assert_eq!(r.tags(), vec!["SELECT 10"]);
}

/// Case 5: a client's `set_config(..., false)` stays with that client and
/// never reaches another client through a pooled connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_changed_by_functions_stay_with_their_client() {
    let c = Cluster::start(2).await;
    let keys = c.accounts(2, 100).await;
    let dumper = c.client().await;
    exec(
        &dumper,
        "SELECT pg_catalog.set_config('search_path', '', false)",
    )
    .await;
    // The client itself keeps the setting, on any connection.
    for _ in 0..4 {
        let e = dumper
            .simple_query(&format!(
                "SELECT balance FROM accounts WHERE id = {}",
                keys[1]
            ))
            .await
            .unwrap_err();
        assert_eq!(e.as_db_error().unwrap().code().code(), "42P01");
        assert_eq!(
            value(
                &dumper,
                "SELECT balance FROM public.accounts WHERE id = 1 OR true LIMIT 1"
            )
            .await,
            "100"
        );
    }
    // Others never see it, whichever pooled connection they get.
    let mut others = Vec::new();
    for _ in 0..6 {
        others.push(c.client().await);
    }
    for o in &others {
        for k in &keys {
            assert_eq!(balance(o, *k).await, "100");
        }
        assert_eq!(value(o, "SHOW search_path").await, "\"$user\", public");
    }
    // A function that changes a setting inside is no different.
    exec(
        &dumper,
        "CREATE FUNCTION public.sneaky() RETURNS int LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config('statement_timeout', '1234', false); RETURN 1; END $$",
    )
    .await;
    exec(&dumper, "SELECT public.sneaky()").await;
    assert_eq!(value(&dumper, "SHOW statement_timeout").await, "1234ms");
    for o in &others {
        assert_eq!(value(o, "SHOW statement_timeout").await, "0");
    }
}

/// `options` in the startup packet (`PGOPTIONS`) set the session's settings
/// as in PostgreSQL; a server switch the proxy cannot honour is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_are_session_settings() {
    let c = Cluster::start(2).await;
    let o = crate::harness::connect(&format!(
        "{} options='-c statement_timeout=4321 --application-name=opt'",
        c.url()
    ))
    .await
    .unwrap();
    assert_eq!(value(&o, "SHOW statement_timeout").await, "4321ms");
    assert_eq!(value(&o, "SHOW application_name").await, "opt");
    // They stay with their client.
    let other = c.client().await;
    assert_eq!(value(&other, "SHOW statement_timeout").await, "0");
    let e = crate::harness::connect(&format!("{} options='-B 100'", c.url()))
        .await
        .expect_err("a server switch is refused");
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("0A000"),
        "{e:?}"
    );
    // Strings read without standard conformance would be routed by a
    // misreading of their text: refused at startup and in SET.
    let e = crate::harness::connect(&format!(
        "{} options='-c standard_conforming_strings=off'",
        c.url()
    ))
    .await
    .expect_err("standard_conforming_strings=off is refused");
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("0A000"),
        "{e:?}"
    );
    assert_eq!(
        crate::harness::sqlstate(&other, "SET standard_conforming_strings = off").await,
        "0A000"
    );
    assert_eq!(
        value(&other, "SHOW standard_conforming_strings").await,
        "on"
    );
}

/// Issue 14, case 4: a client that vanishes while its statement waits for a
/// lock on one shard: the statement is cancelled and its block rolled back on
/// every shard within about a second, so its other locks go too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_is_cancelled_and_rolled_back_everywhere() {
    let c = Cluster::start(3).await;
    let keys = c.accounts(2, 100).await;
    let (x, y) = (keys[0], keys[1]);
    let holder = c.client().await;
    exec(&holder, "BEGIN").await;
    exec(
        &holder,
        &format!("UPDATE accounts SET balance = balance + 1 WHERE id = {x}"),
    )
    .await;
    // The doomed client locks y, then waits for x's lock, and vanishes.
    let mut raw = RawClient::connect(c.port()).await;
    let r = raw
        .query(&format!(
            "BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = {y}"
        ))
        .await;
    assert_eq!(r.status, b'T');
    let mut q = format!("UPDATE accounts SET balance = balance + 1 WHERE id = {x}").into_bytes();
    q.push(0);
    raw.send(b'Q', &q).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(raw);
    // Within about a second y is free again and nobody waits on x's shard.
    let other = c.client().await;
    exec(&other, "SET lock_timeout = '3s'").await;
    let started = std::time::Instant::now();
    exec(
        &other,
        &format!("UPDATE accounts SET balance = balance + 10 WHERE id = {y}"),
    )
    .await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "y was locked for {:?}",
        started.elapsed()
    );
    for i in 0..3 {
        let s = c.shard(i).await;
        let waiting = value(
            &s,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
        )
        .await;
        assert_eq!(waiting, "0", "a backend still waits on shard {i}");
    }
    exec(&holder, "COMMIT").await;
    assert_eq!(balance(&holder, x).await, "101");
    assert_eq!(
        balance(&holder, y).await,
        "110",
        "the vanished client's UPDATE rolled back"
    );
}

/// A session keeps its last clean connection to each shard while its client
/// is idle. With one connection per shard and two clients, the other client
/// still gets a connection at once (the idle session hands its own back),
/// also while that session runs a long statement on another shard, and sees
/// none of its settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_connections_go_at_once_to_waiting_clients_and_clean() {
    let shards = crate::harness::Servers::start(2);
    let text = crate::harness::config_text_full(&shards.ports(), crate::harness::TABLES, "", "")
        .replace("pool_size = 8", "pool_size = 1");
    let c = Cluster::over(shards, &text).await;
    let keys = c.accounts(2, 100).await;

    let a = c.client().await;
    exec(&a, "SET work_mem = '7MB'").await;
    for k in &keys {
        assert_eq!(balance(&a, *k).await, "100");
    }
    // `a` is idle and keeps a connection to each shard: `b` gets them.
    let started = std::time::Instant::now();
    let b = c.client().await;
    assert_eq!(value(&b, "SHOW work_mem").await, "4MB");
    for k in &keys {
        assert_eq!(balance(&b, *k).await, "100");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "waited {:?} for connections an idle session kept",
        started.elapsed()
    );
    assert_eq!(value(&a, "SHOW work_mem").await, "7MB");

    // `a` keeps shard 1's connection, then runs a statement on shard 0 for
    // longer than the pool timeout: `b` still gets shard 1 at once.
    assert_eq!(balance(&a, keys[1]).await, "100");
    let first = keys[0];
    let long = tokio::spawn(async move {
        let sql = format!("SELECT pg_sleep(4), balance FROM accounts WHERE id = {first}");
        a.simple_query(&sql).await.map(|_| ())
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    assert_eq!(balance(&b, keys[1]).await, "100");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "waited {:?} for a connection kept by a busy session",
        started.elapsed()
    );
    long.await.unwrap().unwrap();
}

/// Kept connections are counted as available by the admin console, and a
/// reload that makes a pool smaller closes what it holds beyond the new
/// size, kept or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_connections_count_as_available_and_follow_a_smaller_pool() {
    let shards = crate::harness::Servers::start(1);
    let text = crate::harness::config_text_full(
        &shards.ports(),
        &format!("admin_users = [\"plain\"]\n{}", crate::harness::TABLES),
        "",
        "",
    )
    .replace("pool_size = 8", "pool_size = 3");
    let path = shards.dir.join("kept.toml");
    std::fs::write(&path, &text).unwrap();
    let config = pieskieo::config::Config::load(&path).unwrap();
    let map = pieskieo::router::ShardMap::from_config(&config);
    let c = Cluster {
        shards,
        proxy: Some(pieskieo::serve(config).await.unwrap()),
        map,
    };
    let clients = [c.client().await, c.client().await, c.client().await];
    let busy = clients
        .iter()
        .map(|x| x.simple_query("SELECT pg_sleep(0.3)"));
    for r in futures_util::future::join_all(busy).await {
        r.unwrap();
    }
    let admin = crate::harness::connect(
        &c.url_for("plain", "plainpass")
            .replace("dbname=app", "dbname=pieskieo"),
    )
    .await
    .unwrap();
    // (shard, max_size, size, available, waiting): all three idle.
    let pools = crate::harness::rows(&admin, "SHOW POOLS").await;
    assert_eq!(
        pools[0][1..4],
        [Some("3".into()), Some("3".into()), Some("3".into())],
        "{pools:?}"
    );

    std::fs::write(&path, text.replace("pool_size = 3", "pool_size = 1")).unwrap();
    c.proxy.as_ref().unwrap().reload().unwrap();
    for _ in 0..2 {
        for x in &clients {
            x.simple_query("SELECT 1").await.unwrap();
        }
    }
    let pools = crate::harness::rows(&admin, "SHOW POOLS").await;
    assert_eq!(
        pools[0][1..3],
        [Some("1".into()), Some("1".into())],
        "{pools:?}"
    );
    // The shard sees the closed ones go (a backend ends a moment after its
    // socket closes).
    let shard = c.shard(0).await;
    let mut relayed = String::new();
    for _ in 0..40 {
        relayed = crate::harness::value(
            &shard,
            // (the deadlock detector's connection has the same name)
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pieskieo' \
             AND query NOT LIKE '%pg_blocking_pids%'",
        )
        .await;
        if relayed == "1" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(relayed, "1");
}

/// `SET SESSION CHARACTERISTICS` stays with its client: the next client on
/// the same server connection gets PostgreSQL's defaults back, no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_characteristics_stay_with_their_client() {
    let shards = crate::harness::Servers::start(1);
    let text = crate::harness::config_text_full(&shards.ports(), crate::harness::TABLES, "", "")
        .replace("pool_size = 8", "pool_size = 1");
    let c = Cluster::over(shards, &text).await;
    let a = c.client().await;
    let b = c.client().await;
    exec(
        &a,
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    )
    .await;
    assert_eq!(
        value(&b, "SHOW default_transaction_isolation").await,
        "read committed"
    );
    assert_eq!(value(&b, "SHOW default_transaction_read_only").await, "off");
    assert_eq!(
        value(&a, "SHOW default_transaction_isolation").await,
        "repeatable read"
    );
    assert_eq!(value(&a, "SHOW transaction_read_only").await, "on");
    assert_eq!(value(&b, "SELECT 1").await, "1");
}
