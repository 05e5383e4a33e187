//! Hostile input: keys full of quoting characters route and store exactly
//! (the proxy never pastes client values into SQL of its own), and a client
//! that stops reading its results does not make the proxy buffer without
//! bound nor slow anyone else down.

use pieskieo::router::KeyValue;
use tokio::io::AsyncWriteExt;

use crate::harness::{exec, value, Cluster, ProxyProcess, Servers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_quotes_backslashes_and_dollars_route_and_store_exactly() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(
        &client,
        "CREATE TABLE users (email text PRIMARY KEY, name text)",
    )
    .await;
    let keys = [
        "o'brien@example.com",
        "back\\slash@example.com",
        "$$dollar$$@example.com",
        "$1@example.com",
        "semi;colon'); DROP TABLE users; --",
        "quote\"double@example.com",
        "ünï'cödé@example.com",
    ];
    for (i, k) in keys.iter().enumerate() {
        if i % 2 == 0 {
            // Simple protocol, the key as an SQL literal written by the client.
            let lit = format!("'{}'", k.replace('\'', "''"));
            exec(
                &client,
                &format!("INSERT INTO users (email, name) VALUES ({lit}, 'n{i}')"),
            )
            .await;
        } else {
            // Extended protocol, the key as a bound parameter.
            let name = format!("n{i}");
            client
                .execute(
                    "INSERT INTO users (email, name) VALUES ($1, $2)",
                    &[k, &name],
                )
                .await
                .unwrap();
        }
    }
    for (i, k) in keys.iter().enumerate() {
        let home = c.shard_of("users", KeyValue::Text(k.to_string()));
        for s in 0..3 {
            let shard = c.shard(s).await;
            let rows = shard
                .query("SELECT name FROM users WHERE email = $1", &[k])
                .await
                .unwrap();
            assert_eq!(rows.len(), usize::from(s == home), "{k:?} on shard {s}");
        }
        // Read back through the proxy both ways: the exact bytes come back.
        let lit = format!("'{}'", k.replace('\'', "''"));
        assert_eq!(
            value(
                &client,
                &format!("SELECT name FROM users WHERE email = {lit}")
            )
            .await,
            format!("n{i}")
        );
        let row = client
            .query_one("SELECT email FROM users WHERE email = $1", &[k])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), *k);
    }
    assert_eq!(
        value(&client, "SELECT count(*) FROM users").await,
        keys.len().to_string()
    );
}

/// Resident memory of a process, in KiB.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_not_buffered_without_bound() {
    let servers = Servers::start(1);
    let proxy = ProxyProcess::start(&servers, "").await;
    let pid = proxy.pid();
    let before = rss_kb(pid);
    // About 1 GB of rows, and then never read a byte of them.
    let mut slow = crate::harness::RawClient::connect(proxy.port).await;
    let sql = "SELECT repeat('x', 1000) FROM generate_series(1, 1000000)\0";
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 4) as i32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    slow.stream.write_all(&q).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // Everyone else is served meanwhile.
    let other = crate::harness::connect(&proxy.url()).await.unwrap();
    for i in 0..20 {
        assert_eq!(value(&other, &format!("SELECT {i}")).await, i.to_string());
    }
    let grown = rss_kb(pid).saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "the proxy grew by {grown} KiB holding a slow client's rows"
    );
    drop(slow);
}

/// No password — right, wrong, configured for a shard — reaches the log,
/// whatever the clients do (logins, failed logins, reloads, errors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_reaches_the_log() {
    let servers = Servers::start(1);
    let proxy = ProxyProcess::start(&servers, "").await;
    let good = crate::harness::connect(&proxy.url()).await.unwrap();
    for (user, pw) in [
        ("app", "wrong-pw-4711"),
        ("plain", "wrong-pw-4712"),
        ("md5user", "wrong-pw-4713"),
    ] {
        let url = format!(
            "host=127.0.0.1 port={} user={user} password={pw} dbname=app",
            proxy.port
        );
        assert!(
            crate::harness::connect(&url).await.is_err(),
            "{user} logged in with a wrong password"
        );
    }
    let md5 = format!(
        "host=127.0.0.1 port={} user=md5user password=md5pass dbname=app",
        proxy.port
    );
    crate::harness::connect(&md5).await.unwrap();
    let _ = good.simple_query("SELECT * FROM no_such_table").await;
    proxy.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(good);
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(!log.is_empty(), "the proxy logs something");
    for secret in [
        "secret",
        "plainpass",
        "md5pass",
        "wrong-pw-4711",
        "wrong-pw-4712",
        "wrong-pw-4713",
    ] {
        assert!(!log.contains(secret), "{secret:?} is in the log:\n{log}");
    }
}
