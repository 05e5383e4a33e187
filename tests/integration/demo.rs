//! `pieskieo demo`: starts shards and the proxy in one command, serves
//! clients, stops everything on SIGTERM, and reuses its data next time.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{connect, exec, free_port, value};

fn start(dir: &std::path::Path, port: u16) -> Child {
    start_proxies(dir, port, 1)
}

fn start_proxies(dir: &std::path::Path, port: u16, proxies: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pieskieo"))
        .args([
            "demo",
            "--shards",
            "2",
            "--proxies",
            &proxies.to_string(),
            "--port",
            &port.to_string(),
            "--data-dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_listening(port: u16) {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("demo did not start listening on {port}");
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_serves_stops_and_reuses_its_data() {
    let dir = std::env::temp_dir().join(format!("pieskieo-demo-test-{}", std::process::id()));
    // Three free ports in a row are not guaranteed; retry a few bases.
    let port = (0..20)
        .map(|_| free_port())
        .find(|p| {
            *p < 60000 && (1..=2).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok())
        })
        .unwrap();
    let url = format!("host=127.0.0.1 port={port} user=app password=app dbname=app");

    let mut demo = start(&dir, port);
    wait_listening(port).await;
    let client = connect(&url).await.unwrap();
    exec(
        &client,
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint)",
    )
    .await;
    exec(
        &client,
        "INSERT INTO accounts (id, balance) VALUES (1, 10), (2, 20), (3, 30), (4, 40)",
    )
    .await;
    drop(client);
    let status = terminate(&mut demo);
    assert!(status.success(), "demo exits cleanly on SIGTERM: {status}");
    let mut out = String::new();
    use std::io::Read;
    demo.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        out.contains(&format!("psql \"postgres://app:app@127.0.0.1:{port}/app\"")),
        "{out}"
    );
    // Its shards were stopped with it.
    for i in 0..2 {
        let pid = dir.join(format!("shard{i}/postmaster.pid"));
        assert!(!pid.exists(), "shard {i} still running");
    }

    // A second run reuses the data.
    let mut demo = start(&dir, port);
    wait_listening(port).await;
    let client = connect(&url).await.unwrap();
    assert_eq!(
        value(&client, "SELECT balance FROM accounts WHERE id = 3").await,
        "30"
    );
    drop(client);
    assert!(terminate(&mut demo).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_two_proxies_serves_the_same_shards_on_both() {
    let dir = std::env::temp_dir().join(format!("pieskieo-demo2-test-{}", std::process::id()));
    let port = (0..20)
        .map(|_| free_port())
        .find(|p| {
            *p < 60000 && (1..=3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok())
        })
        .unwrap();
    let url = |p: u16| format!("host=127.0.0.1 port={p} user=app password=app dbname=app");
    let mut demo = start_proxies(&dir, port, 2);
    wait_listening(port).await;
    wait_listening(port + 1).await;
    let one = connect(&url(port)).await.unwrap();
    exec(
        &one,
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint)",
    )
    .await;
    exec(
        &one,
        "INSERT INTO accounts (id, balance) VALUES (1, 10), (2, 20), (3, 30)",
    )
    .await;
    let two = connect(&url(port + 1)).await.unwrap();
    assert_eq!(value(&two, "SELECT sum(balance) FROM accounts").await, "60");
    drop((one, two));
    assert!(terminate(&mut demo).success());
    let mut out = String::new();
    use std::io::Read;
    demo.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        out.contains(&format!(
            "postgresql://app:app@127.0.0.1:{port},127.0.0.1:{}/app",
            port + 1
        )),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
