//! Distributed transactions: atomic commit across shards with two-phase
//! commit, one-phase when one shard wrote, rollback, recovery after the proxy
//! or a shard dies at the dangerous moments.

use std::time::Duration;

use pieskieo::config::Config;
use pieskieo::router::KeyValue;

use crate::harness::{
    balance, config_text, connect, exec, insert_numbered, key_on, prepared, rows, sqlstate, tags,
    value, Cluster, ProxyProcess, Servers, ACCOUNTS, TABLES,
};

/// One key on each of the first `n` shards.
fn keys_on_shards(map: &pieskieo::router::ShardMap, n: usize) -> Vec<i64> {
    (0..n).map(|s| key_on(map, "accounts", s)).collect()
}

async fn balance_on(c: &Cluster, shard: usize, id: i64) -> Option<String> {
    let s = c.shard(shard).await;
    rows(&s, &format!("SELECT balance FROM accounts WHERE id = {id}"))
        .await
        .first()
        .and_then(|r| r[0].clone())
}

async fn set_balance(c: &tokio_postgres::Client, id: i64, balance: i64) {
    exec(
        c,
        &format!("UPDATE accounts SET balance = {balance} WHERE id = {id}"),
    )
    .await;
}

async fn no_prepared_anywhere(c: &Cluster) {
    for i in 0..c.shards.servers.len() {
        assert_eq!(
            prepared(&c.shard(i).await).await,
            0,
            "prepared transactions left on shard {i}"
        );
    }
}

fn server_log(c: &Cluster, shard: usize) -> String {
    std::fs::read_to_string(c.shards.servers[shard].data_dir.join("server.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_blocks_commit_everywhere_or_nowhere() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, ACCOUNTS).await;
    let k = keys_on_shards(&c.map, 3);
    exec(
        &client,
        &format!(
            "INSERT INTO accounts (id, balance) VALUES ({}, 100), ({}, 100), ({}, 100)",
            k[0], k[1], k[2]
        ),
    )
    .await;

    // A transfer across shards commits on both.
    exec(&client, &format!(
            "BEGIN; UPDATE accounts SET balance = balance - 30 WHERE id = {}; UPDATE accounts SET balance = balance + 30 WHERE id = {}; COMMIT",
            k[0], k[1]
        )).await;
    assert_eq!(balance_on(&c, 0, k[0]).await.as_deref(), Some("70"));
    assert_eq!(balance_on(&c, 1, k[1]).await.as_deref(), Some("130"));

    // Rollback leaves nothing.
    exec(&client, "BEGIN").await;
    set_balance(&client, k[0], 0).await;
    set_balance(&client, k[2], 0).await;
    exec(&client, "ROLLBACK").await;
    assert_eq!(balance_on(&c, 0, k[0]).await.as_deref(), Some("70"));
    assert_eq!(balance_on(&c, 2, k[2]).await.as_deref(), Some("100"));

    // A statement spanning shards inside a block, and a fan-out read in it.
    exec(&client, "BEGIN").await;
    assert_eq!(
        tags(&client, "UPDATE accounts SET balance = balance + 1").await,
        vec![3]
    );
    assert_eq!(rows(&client, "SELECT id FROM accounts").await.len(), 3);
    exec(&client, "COMMIT").await;
    assert_eq!(balance_on(&c, 2, k[2]).await.as_deref(), Some("101"));

    // Savepoints reach shards that joined after them.
    exec(&client, "BEGIN").await;
    set_balance(&client, k[0], 1).await;
    exec(&client, "SAVEPOINT s").await;
    set_balance(&client, k[1], 2).await;
    set_balance(&client, k[0], 3).await;
    exec(&client, "ROLLBACK TO SAVEPOINT s").await;
    exec(&client, "COMMIT").await;
    assert_eq!(balance_on(&c, 0, k[0]).await.as_deref(), Some("1"));
    assert_eq!(balance_on(&c, 1, k[1]).await.as_deref(), Some("131"));
    no_prepared_anywhere(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_prepare_rolls_back_every_shard_with_its_error() {
    let c = Cluster::start(2).await;
    let client = c.client().await;
    exec(&client, "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint, tag int, CONSTRAINT u UNIQUE (tag) DEFERRABLE INITIALLY DEFERRED)").await;
    let k = keys_on_shards(&c.map, 2);
    let k0b = (k[0] + 1..10_000)
        .find(|x| c.shard_of("accounts", KeyValue::Int(*x)) == 0)
        .unwrap();
    exec(
        &client,
        &format!(
            "INSERT INTO accounts (id, balance, tag) VALUES ({}, 1, 7)",
            k[0]
        ),
    )
    .await;

    exec(&client, "BEGIN").await;
    exec(
        &client,
        &format!("INSERT INTO accounts (id, balance, tag) VALUES ({k0b}, 1, 7)"),
    )
    .await;
    exec(
        &client,
        &format!(
            "INSERT INTO accounts (id, balance, tag) VALUES ({}, 1, 8)",
            k[1]
        ),
    )
    .await;
    // The deferred unique check fails at PREPARE on shard 0.
    assert_eq!(sqlstate(&client, "COMMIT").await, "23505");
    assert_eq!(balance_on(&c, 0, k0b).await, None);
    assert_eq!(balance_on(&c, 1, k[1]).await, None);
    no_prepared_anywhere(&c).await;
    // The session is usable again, outside a block.
    assert_eq!(value(&client, "SELECT 1").await, "1");

    // A fan-out write outside a block is atomic too: shard 0 fails, shard 1's
    // change is undone.
    exec(
        &client,
        &format!(
            "INSERT INTO accounts (id, balance, tag) VALUES ({}, 5, 9)",
            k[1]
        ),
    )
    .await;
    let e = client
        .simple_query("UPDATE accounts SET balance = 10 / (balance - 1)")
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "22012");
    assert_eq!(balance_on(&c, 1, k[1]).await.as_deref(), Some("5"));
    // So is a multi-row insert whose rows span shards.
    let e = client
        .simple_query(&format!(
            "INSERT INTO accounts (id, balance) VALUES ({}, 1), ({}, 1)",
            k[0],
            k[1] + 1_000_000
        ))
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "23505");
    assert_eq!(
        value(
            &client,
            &format!(
                "SELECT count(*) FROM accounts WHERE id = {}",
                k[1] + 1_000_000
            )
        )
        .await,
        "0"
    );
    // And several statements over several shards in one query.
    let q = format!(
        "UPDATE accounts SET balance = 50 WHERE id = {}; UPDATE accounts SET balance = balance / 0 WHERE id = {}",
        k[0], k[1]
    );
    assert_eq!(sqlstate(&client, &q).await, "22012");
    assert_eq!(balance_on(&c, 0, k[0]).await.as_deref(), Some("1"));
    no_prepared_anywhere(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_writer_and_read_only_blocks_never_prepare() {
    let c = Cluster::start(3).await;
    let k = c.accounts(3, 10).await;
    let client = c.client().await;
    // Setup (DDL on every shard) used 2PC; look only at what follows.
    let before: Vec<usize> = (0..3).map(|i| server_log(&c, i).len()).collect();
    // Read on two shards, write on one.
    exec(&client, &format!(
            "BEGIN; SELECT * FROM accounts WHERE id = {}; SELECT * FROM accounts WHERE id = {}; UPDATE accounts SET balance = 11 WHERE id = {}; COMMIT",
            k[0], k[1], k[2]
        )).await;
    // Read only.
    exec(&client, &format!("BEGIN; SELECT * FROM accounts WHERE id = {}; SELECT * FROM accounts WHERE id = {}; COMMIT", k[0], k[2])).await;
    assert_eq!(balance_on(&c, 2, k[2]).await.as_deref(), Some("11"));
    for i in 0..3 {
        let log = server_log(&c, i);
        assert!(
            log[before[i]..].contains("statement: COMMIT"),
            "shard {i} took part"
        );
        assert!(
            !log[before[i]..].contains("PREPARE TRANSACTION"),
            "shard {i} saw a PREPARE"
        );
    }
    // Two writers do prepare: the check above can see one.
    exec(&client, &format!(
            "BEGIN; UPDATE accounts SET balance = 12 WHERE id = {}; UPDATE accounts SET balance = 12 WHERE id = {}; COMMIT",
            k[0], k[1]
        )).await;
    // The first writer decides: it inserts the commit row and COMMITs, never prepares.
    let (c0, c1) = (server_log(&c, 0), server_log(&c, 1));
    assert!(!c0[before[0]..].contains("PREPARE TRANSACTION"), "{c0}");
    assert!(c0.contains("INSERT INTO pieskieo.decisions"), "{c0}");
    assert!(c1.contains("PREPARE TRANSACTION 'pieskieo_main_"), "{c1}");
    assert!(c1.contains("COMMIT PREPARED 'pieskieo_main_"), "{c1}");
}

/// Recovery settings of the proxy that survives: passes every second, a
/// short grace period.
const SURVIVOR: &str = "recovery_interval_ms = 1000\nrecovery_grace_ms = 300";
const INTERVAL: Duration = Duration::from_millis(1000);

/// Creates `accounts` through `proxy` with a balance of 100 for each key.
async fn accounts_through(proxy: &ProxyProcess, keys: &[i64]) {
    let client = connect(&proxy.url()).await.unwrap();
    exec(&client, ACCOUNTS).await;
    for id in keys {
        exec(
            &client,
            &format!("INSERT INTO accounts (id, balance) VALUES ({id}, 100)"),
        )
        .await;
    }
}

async fn prepared_on(servers: &Servers) -> usize {
    let mut n = 0;
    for i in 0..servers.servers.len() {
        n += prepared(&servers.connect(i).await).await;
    }
    n
}

/// Two proxies over the same 3 shards; one dies for good at a point of 2PC.
/// The other, never restarted, finishes the transaction within twice its
/// recovery interval: committed on every writer iff the decision shard C
/// (the first writer, shard 0) committed, nothing left prepared. Returns
/// whether it committed.
async fn killed_for_good_at(point: &str, writers: usize) -> bool {
    let servers = Servers::start(3);
    let map = pieskieo::router::ShardMap::from_config(
        &Config::parse(&config_text(&servers.ports(), TABLES), "t.toml").unwrap(),
    );
    let k = keys_on_shards(&map, 3);
    let survivor = ProxyProcess::start(&servers, SURVIVOR).await;
    accounts_through(&survivor, &k).await;
    let mut doomed =
        ProxyProcess::start(&servers, &format!("test_failpoint = \"{point}:crash\"")).await;
    let client = connect(&doomed.url()).await.unwrap();
    exec(&client, "BEGIN").await;
    for id in &k[..writers] {
        set_balance(&client, *id, 555).await;
    }
    let r = client.simple_query("COMMIT").await;
    assert!(r.is_err(), "{point}: the proxy died during COMMIT");
    assert!(
        doomed.wait_exit(10),
        "{point}: the proxy crashed at its failpoint"
    );
    let killed = std::time::Instant::now();
    // (What it left prepared may already be finished: the survivor's passes
    // run meanwhile.)

    // C's own row says what was decided.
    let c_committed = balance(&servers.connect(0).await, k[0]).await == "555";
    let limit = 2 * INTERVAL + Duration::from_millis(500);
    loop {
        let mut agree = prepared_on(&servers).await == 0;
        for (i, id) in k[..writers].iter().enumerate() {
            let b = balance(&servers.connect(i).await, *id).await;
            agree &= b == if c_committed { "555" } else { "100" };
        }
        if agree {
            break;
        }
        assert!(
            killed.elapsed() < limit,
            "{point}: not resolved within {limit:?} (C committed: {c_committed})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The survivor serves on, and the decision row is pruned in time.
    let c = connect(&survivor.url()).await.unwrap();
    exec(
        &c,
        &format!("UPDATE accounts SET balance = balance WHERE id = {}", k[1]),
    )
    .await;
    let mut rows_left = 1;
    for _ in 0..100 {
        rows_left = 0;
        for i in 0..3 {
            let s = servers.connect(i).await;
            rows_left += value(
                &s,
                "SELECT count(*) FROM pieskieo.decisions WHERE outcome = 'commit'",
            )
            .await
            .parse::<usize>()
            .unwrap();
        }
        if rows_left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rows_left, 0,
        "{point}: commit rows are pruned once nothing is prepared for them"
    );
    c_committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_killed_for_good_after_prepare_another_rolls_back() {
    assert!(!killed_for_good_at("after_prepare", 3).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_killed_for_good_after_decision_insert_another_follows_c() {
    killed_for_good_at("after_decision_insert", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_killed_for_good_after_decision_another_commits() {
    assert!(killed_for_good_at("after_decision", 2).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_killed_for_good_after_first_commit_prepared_another_commits() {
    assert!(killed_for_good_at("after_first_commit", 3).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_shard_does_not_delay_recovery_on_the_others() {
    let servers = Servers::start(3);
    let map = pieskieo::router::ShardMap::from_config(
        &Config::parse(&config_text(&servers.ports(), TABLES), "t.toml").unwrap(),
    );
    let k = keys_on_shards(&map, 3);
    let survivor = ProxyProcess::start(
        &servers,
        "recovery_interval_ms = 300\nrecovery_grace_ms = 1500\ncontrol_timeout_ms = 20000",
    )
    .await;
    accounts_through(&survivor, &k).await;
    let mut doomed =
        ProxyProcess::start(&servers, "test_failpoint = \"after_prepare:crash\"").await;
    let client = connect(&doomed.url()).await.unwrap();
    exec(&client, "BEGIN").await;
    for id in &k {
        set_balance(&client, *id, 555).await;
    }
    assert!(client.simple_query("COMMIT").await.is_err());
    assert!(doomed.wait_exit(10));
    // Shard 2 stalls with its part prepared while the transaction is still
    // inside its grace period, so every visit that could finish it comes
    // after the stall; shard 1's part is rolled back regardless, long before
    // the stalled shard's control timeout.
    let pids = crate::harness::shard_pids(&servers.servers[2]);
    crate::harness::signal(&pids, "STOP");
    let stopped = std::time::Instant::now();
    let s1 = servers.connect(1).await;
    // Far below the stalled shard's 20 s control timeout, with room for a
    // loaded machine.
    while prepared(&s1).await > 0 {
        assert!(
            stopped.elapsed() < Duration::from_secs(12),
            "recovery of shard 1 waited for the stalled shard 2"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(balance(&s1, k[1]).await, "100");
    crate::harness::signal(&pids, "CONT");
    let s2 = servers.connect(2).await;
    for _ in 0..300 {
        if prepared(&s2).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        prepared(&s2).await,
        0,
        "shard 2 is finished once it is back"
    );
    assert_eq!(balance(&s2, k[2]).await, "100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_from_the_decision_shard_gives_08007_and_recovery_finishes() {
    let c = Cluster::start_custom(
        3,
        TABLES,
        "test_failpoint = \"after_prepare:pause=700\"\ncontrol_timeout_ms = 1000",
        "query_timeout_ms = 1000",
    )
    .await;
    let k = c.accounts(2, 100).await;
    let url = c.url();
    let (a, b) = (k[0], k[1]);
    let commit = tokio::spawn(async move {
        let client = connect(&url).await.unwrap();
        exec(&client, "BEGIN").await;
        set_balance(&client, a, 555).await;
        set_balance(&client, b, 555).await;
        client.simple_query("COMMIT").await
    });
    // C (shard 0, the first writer) stops once shard 1 has prepared: its
    // answer to the decision never comes, and it cannot be asked again.
    let watcher = c.shard(1).await;
    for _ in 0..300 {
        if prepared(&watcher).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pids = crate::harness::shard_pids(&c.shards.servers[0]);
    crate::harness::signal(&pids, "STOP");
    let r = commit.await.unwrap();
    crate::harness::signal(&pids, "CONT");
    let e = r.expect_err("the outcome is unknown to the proxy");
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "08007", "{db:?}");
    assert!(db.message().contains("shard 0"), "{}", db.message());
    // Recovery finishes it, one way for both shards.
    let mut left = 1;
    for _ in 0..100 {
        left = prepared(&watcher).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0);
    let on_c = balance(&c.shard(0).await, a).await;
    assert_eq!(on_c, balance(&watcher, b).await, "never a mix");
    no_prepared_anywhere(&c).await;
}

/// The outcome on C's and shard 1's rows agrees, and with the client's answer.
async fn agreed(servers: &Servers, k: &[i64], answer_ok: bool) -> bool {
    let mut left = 0;
    for _ in 0..100 {
        left = prepared_on(servers).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "nothing stays prepared");
    let a = balance(&servers.connect(0).await, k[0]).await;
    let b = balance(&servers.connect(1).await, k[1]).await;
    assert_eq!(a, b, "the commit or the abort won, never a mix");
    assert_eq!(answer_ok, a == "555", "the client's answer agrees: {a}");
    answer_ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_racing_a_live_coordinator_never_mixes_outcomes() {
    let servers = Servers::start(3);
    let map = pieskieo::router::ShardMap::from_config(
        &Config::parse(&config_text(&servers.ports(), TABLES), "t.toml").unwrap(),
    );
    let k = keys_on_shards(&map, 2);
    // The coordinator dawdles after its PREPAREs; the other proxy's resolver
    // sees the transaction older than its grace period meanwhile.
    let slow = ProxyProcess::start(&servers, "test_failpoint = \"after_prepare:pause=1500\"").await;
    let eager = ProxyProcess::start(
        &servers,
        "recovery_interval_ms = 100\nrecovery_grace_ms = 100",
    )
    .await;
    accounts_through(&eager, &k).await;

    // The resolver's abort row lands first: the coordinator's commit row is
    // refused, it rolls back and says so.
    let client = connect(&slow.url()).await.unwrap();
    exec(&client, "BEGIN").await;
    set_balance(&client, k[0], 555).await;
    set_balance(&client, k[1], 555).await;
    let r = client.simple_query("COMMIT").await;
    let code = r
        .as_ref()
        .err()
        .and_then(|e| e.as_db_error())
        .map(|d| d.code().code().to_string());
    assert_eq!(code.as_deref(), Some("40000"), "{r:?}");
    assert!(!agreed(&servers, &k, false).await);

    // With C stopped while both the coordinator's insert and the resolver's
    // are on their way, either may win; the shards and the client agree.
    for round in 0..2 {
        let url = slow.url();
        let (a, b) = (k[0], k[1]);
        let commit = tokio::spawn(async move {
            let client = connect(&url).await.unwrap();
            exec(&client, "BEGIN").await;
            set_balance(&client, a, 100).await;
            set_balance(&client, b, 100).await;
            exec(
                &client,
                &format!("UPDATE accounts SET balance = 555 WHERE id IN ({a}, {b})"),
            )
            .await;
            client.simple_query("COMMIT").await
        });
        let watcher = servers.connect(1).await;
        for _ in 0..300 {
            if prepared(&watcher).await > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(watcher);
        let pids = crate::harness::shard_pids(&servers.servers[0]);
        crate::harness::signal(&pids, "STOP");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        crate::harness::signal(&pids, "CONT");
        let r = tokio::time::timeout(Duration::from_secs(30), commit)
            .await
            .expect("the client is answered")
            .unwrap();
        if let Err(e) = &r {
            let code = e.as_db_error().map(|d| d.code().code().to_string());
            assert_eq!(code.as_deref(), Some("40000"), "round {round}: {e:?}");
        }
        agreed(&servers, &k, r.is_ok()).await;
        // Back to the start for the next round.
        let c = connect(&eager.url()).await.unwrap();
        exec(
            &c,
            &format!("UPDATE accounts SET balance = 100 WHERE id IN ({a}, {b})"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_lost_before_prepare_aborts_and_after_decision_is_finished_later() {
    let c = Cluster::start_txn(3, TABLES, "test_failpoint = \"after_decision:pause=3000\"").await;
    let k = c.accounts(3, 100).await;
    let client = c.client().await;

    // Shard 1 dies before PREPARE: the client gets an error, nothing commits.
    exec(&client, "BEGIN").await;
    set_balance(&client, k[0], 1).await;
    set_balance(&client, k[1], 1).await;
    c.shards.servers[1].stop("immediate").unwrap();
    let code = sqlstate(&client, "COMMIT").await;
    assert!(code.starts_with("08") || code.starts_with("57"), "{code}");
    c.shards.servers[1].start().unwrap();
    assert_eq!(balance_on(&c, 0, k[0]).await.as_deref(), Some("100"));
    assert_eq!(balance_on(&c, 1, k[1]).await.as_deref(), Some("100"));

    // Shard 2 dies after the decision: COMMIT succeeds (with a warning), and
    // the resolver commits shard 2's part once it is back.
    let url = c.url();
    let (a, b) = (k[0], k[2]);
    let commit = tokio::spawn(async move {
        let client = connect(&url).await.unwrap();
        exec(&client, "BEGIN").await;
        set_balance(&client, a, 42).await;
        set_balance(&client, b, 42).await;
        client.simple_query("COMMIT").await
    });
    // Stop shard 2 once its PREPARE has succeeded: the coordinator is then
    // logging its decision or paused after it.
    let watcher = c.shard(2).await;
    for _ in 0..200 {
        if prepared(&watcher).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(watcher);
    c.shards.servers[2].stop("immediate").unwrap();
    let r = commit.await.unwrap();
    assert!(
        r.is_ok(),
        "the transaction is committed once the decision is durable: {r:?}"
    );
    assert_eq!(balance_on(&c, 0, k[0]).await.as_deref(), Some("42"));
    c.shards.servers[2].start().unwrap();
    let mut done = false;
    for _ in 0..100 {
        let s = c.shard(2).await;
        if prepared(&s).await == 0 && balance_on(&c, 2, k[2]).await.as_deref() == Some("42") {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done, "the resolver committed shard 2's part");
    no_prepared_anywhere(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_transfers_keep_the_total() {
    const N: i64 = 30;
    const CLIENTS: usize = 16;
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, ACCOUNTS).await;
    insert_numbered(&client, "accounts (id, balance)", N, "1000").await;

    // Bounded in time and in work: stop at 400 commits or 30 s, whichever first,
    // so a loaded machine still does enough transfers to mean something.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let url = c.url();
        let map = c.map.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await.unwrap();
            let (mut committed, mut rolled_back) = (0u32, 0u32);
            let mut n = w as i64;
            while std::time::Instant::now() < deadline && done.load(std::sync::atomic::Ordering::Relaxed) < 400 {
                n += 7;
                let a = n % N + 1;
                let b = (n * 13 + 5) % N + 1;
                let shard = |k: i64| map.tables["accounts"].shard_for(&KeyValue::Int(k), map.shards);
                if a == b || shard(a) == shard(b) {
                    continue;
                }
                // Lock rows in id order: no distributed deadlocks.
                let (lo, hi, delta) = if a < b { (a, b, 3) } else { (b, a, -3) };
                let commit = n % 10 != 0;
                let sql = format!(
                    "BEGIN; UPDATE accounts SET balance = balance - {delta} WHERE id = {lo}; UPDATE accounts SET balance = balance + {delta} WHERE id = {hi}; {}",
                    if commit { "COMMIT" } else { "ROLLBACK" }
                );
                match client.simple_query(&sql).await {
                    Ok(_) if commit => {
                        committed += 1;
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => rolled_back += 1,
                    // A CHECK violation (balance < 0) is a legitimate failure; the block is over.
                    // So is a shard connection that could not be made in time on a loaded
                    // machine (08xxx): the transfer fails whole, which the total checks.
                    Err(e) => {
                        let code = e.as_db_error().map(|d| d.code().code().to_string());
                        assert!(
                            code.as_deref() == Some("23514")
                                || code.as_deref().is_some_and(|c| c.starts_with("08")),
                            "{e:?}"
                        );
                        exec(&client, "ROLLBACK").await;
                    }
                }
            }
            (committed, rolled_back)
        }));
    }
    let mut total_committed = 0;
    for t in tasks {
        total_committed += t.await.unwrap().0;
    }
    assert!(total_committed >= 50, "transfers ran: {total_committed}");
    let mut sum = 0i64;
    for i in 0..3 {
        let s = c.shard(i).await;
        sum += value(&s, "SELECT coalesce(sum(balance), 0) FROM accounts")
            .await
            .parse::<i64>()
            .unwrap();
        assert_eq!(prepared(&s).await, 0);
    }
    assert_eq!(sum, N * 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_refuses_shards_without_prepared_transactions() {
    let servers = Servers::start_with(2, &[("max_prepared_transactions", "0")]);
    let cfg = Config::parse(&config_text(&servers.ports(), TABLES), "t.toml").unwrap();
    let e = pieskieo::serve(cfg).await.err().expect("refused");
    assert!(e.to_string().contains("max_prepared_transactions"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_identical_proxy_starts_and_serves() {
    let servers = Servers::start(2);
    let cfg = Config::parse(&config_text(&servers.ports(), TABLES), "t.toml").unwrap();
    let first = pieskieo::serve(cfg.clone()).await.unwrap();
    let second = pieskieo::serve(cfg)
        .await
        .expect("a second proxy with the same configuration starts");
    let url = |p: &pieskieo::Proxy| {
        format!(
            "host=127.0.0.1 port={} user=app password=secret dbname=app",
            p.addr.port()
        )
    };
    let map = pieskieo::router::ShardMap::from_config(
        &Config::parse(&config_text(&servers.ports(), TABLES), "t.toml").unwrap(),
    );
    let k = keys_on_shards(&map, 2);
    let one = connect(&url(&first)).await.unwrap();
    let two = connect(&url(&second)).await.unwrap();
    exec(&one, ACCOUNTS).await;
    for id in &k {
        exec(
            &one,
            &format!("INSERT INTO accounts (id, balance) VALUES ({id}, 100)"),
        )
        .await;
    }
    // Transfers through both at once, each a two-phase commit.
    let mut tasks = Vec::new();
    for (n, c) in [one, two].into_iter().enumerate() {
        let (a, b) = (k[0], k[1]);
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let sql = format!("BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = {a}; UPDATE accounts SET balance = balance + 1 WHERE id = {b}; COMMIT");
                c.simple_query(&sql).await.unwrap_or_else(|e| panic!("proxy {n}: {e:?}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(balance(&servers.connect(0).await, k[0]).await, "60");
    assert_eq!(balance(&servers.connect(1).await, k[1]).await, "140");
    assert_eq!(prepared_on(&servers).await, 0);
    // The decision schema is there once, and clients cannot touch it.
    let c = connect(&url(&second)).await.unwrap();
    for sql in [
        "SELECT * FROM pieskieo.decisions",
        "DELETE FROM pieskieo.decisions",
        "DROP TABLE pieskieo.decisions",
        "DROP SCHEMA pieskieo CASCADE",
        "SET search_path = pieskieo",
        "SELECT set_config('search_path', 'pieskieo, public', false)",
    ] {
        assert_eq!(sqlstate(&c, sql).await, "42501", "{sql}");
    }
    // Nor through a search path given at startup.
    let e = connect(&format!(
        "{} options='-c search_path=pieskieo'",
        url(&second)
    ))
    .await
    .expect_err("a startup search path through pieskieo is refused");
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("42501"),
        "{e:?}"
    );
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_block_leaves_nothing_behind() {
    let c = Cluster::start(2).await;
    let k = c.accounts(2, 100).await;
    {
        let gone = c.client().await;
        exec(&gone, "BEGIN").await;
        for id in &k {
            set_balance(&gone, *id, 0).await;
        }
        // Dropped here: the connection closes mid-block.
    }
    let other = c.client().await;
    exec(&other, "SET lock_timeout = '5s'").await;
    other
        .simple_query(&format!(
            "BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = {}; UPDATE accounts SET balance = balance + 1 WHERE id = {}; COMMIT",
            k[0], k[1]
        ))
        .await
        .expect("the vanished client's locks were released");
    assert_eq!(balance_on(&c, 0, k[0]).await.as_deref(), Some("101"));
    assert_eq!(balance_on(&c, 1, k[1]).await.as_deref(), Some("101"));
    no_prepared_anywhere(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_transfers_loses_no_committed_transfer_on_one_worker() {
    const N: i64 = 30;
    let servers = Servers::start(3);
    {
        let setup = ProxyProcess::start(&servers, "").await;
        let client = connect(&setup.url()).await.unwrap();
        exec(&client, ACCOUNTS).await;
        exec(
            &client,
            "CREATE TABLE items (id bigint PRIMARY KEY, label text)",
        )
        .await;
        insert_numbered(&client, "accounts (id, balance)", N, "1000").await;
    }
    // One worker: the setting the README and the benchmarks use, which runs
    // tokio's current-thread scheduler (the default, one per core, does not).
    let one_worker = format!("workers = 1\n{TABLES}");
    let mut proxy = ProxyProcess::start_with(&servers, &one_worker, "").await;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..8i64 {
        let url = proxy.url();
        let progress = progress.clone();
        workers.push(tokio::spawn(async move {
            let client = connect(&url).await.unwrap();
            let mut acked = Vec::new();
            for i in 0..100_000i64 {
                let (a, b) = ((w * 7 + i) % N + 1, (w * 7 + i * 3 + 1) % N + 1);
                if a == b {
                    continue;
                }
                let (lo, hi) = (a.min(b), a.max(b));
                let id = w * 1_000_000 + i;
                let sql = format!(
                    "BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = {lo}; UPDATE accounts SET balance = balance + 1 WHERE id = {hi}; INSERT INTO items (id, label) VALUES ({id}, 'transfer'); COMMIT"
                );
                match client.simple_query(&sql).await {
                    Ok(_) => {
                        acked.push(id);
                        progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    // Signal in the middle of the work: once transfers are flowing.
    for _ in 0..300 {
        if progress.load(std::sync::atomic::Ordering::Relaxed) >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = proxy.terminate(30).expect("the proxy exits after SIGTERM");
    assert!(status.success(), "graceful shutdown exits 0: {status}");
    let mut acked = Vec::new();
    for w in workers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 10,
        "transfers ran before the signal: {}",
        acked.len()
    );

    let restarted = ProxyProcess::start(&servers, "").await;
    let client = connect(&restarted.url()).await.unwrap();
    let ids: std::collections::HashSet<i64> = rows(&client, "SELECT id FROM items")
        .await
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    for id in &acked {
        assert!(ids.contains(id), "committed transfer {id} is present");
    }
    let mut sum = 0i64;
    for i in 0..3 {
        let s = servers.connect(i).await;
        sum += value(&s, "SELECT coalesce(sum(balance), 0) FROM accounts")
            .await
            .parse::<i64>()
            .unwrap();
        assert_eq!(prepared(&s).await, 0, "shard {i}");
    }
    assert_eq!(sum, N * 1000);
}
