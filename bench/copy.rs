//! COPY and pg_dump throughput: Pieskieo over 3 shards against one plain
//! PostgreSQL, same run.
//!
//! Starts 3 PostgreSQL shards and one more server as the baseline, the proxy
//! in front of the shards, and loads the same `ROWS` rows (default 1,000,000)
//! with psql's `COPY ... FROM STDIN`: straight into the baseline, then
//! through the proxy (rows cut and routed to their shards, one two-phase
//! commit). Prints rows/s and MB/s for each and the ratio; then the time of
//! `pg_dump` of the loaded table, direct and through the proxy.
//!
//! Run: `cargo bench --bench copy` (`ROWS=N` to change the size).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pieskieo::cluster::{find_bindir, LocalServer, SUPERUSER_PASSWORD};
use pieskieo::config::Config;

#[path = "common.rs"]
mod common;
use common::free_port;

const TABLE: &str = "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint, note text)";

/// Runs psql with `input` on its stdin; returns how long it took.
fn psql(url: &str, sql: &str, input: &[u8]) -> Duration {
    let started = Instant::now();
    let mut child = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql is installed");
    let mut stdin = child.stdin.take().unwrap();
    // Written from here, not from a copy: the bench measures the proxy's
    // memory, which shares this process.
    let out = std::thread::scope(|scope| {
        scope.spawn(move || {
            let _ = stdin.write_all(input);
        });
        child.wait_with_output().unwrap()
    });
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

fn pg_dump(url: &str) -> Duration {
    let started = Instant::now();
    let out = Command::new("pg_dump")
        .args([
            "--exclude-schema=pieskieo",
            "-t",
            "accounts",
            "-f",
            "/dev/null",
        ])
        .arg(url)
        .output()
        .expect("pg_dump is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

fn server(bindir: &std::path::Path, dir: &std::path::Path, name: &str) -> LocalServer {
    let s = LocalServer::create(
        bindir,
        &dir.join(name),
        free_port(),
        &[("shared_buffers", "'64MB'"), ("max_wal_size", "'1GB'")],
    )
    .unwrap();
    s.start().unwrap();
    s
}

fn direct_url(s: &LocalServer) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres",
        s.port
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let bindir = find_bindir().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("pieskieo-bench-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let shards: Vec<LocalServer> = (0..3)
        .map(|i| server(&bindir, &dir, &format!("shard{i}")))
        .collect();
    let baseline = server(&bindir, &dir, "baseline");

    let mut cfg = String::from("listen = \"127.0.0.1:0\"\nnode_id = \"bench\"\n[[users]]\nname = \"app\"\npassword = \"app\"\n[[tables]]\nname = \"accounts\"\nkey = \"id\"\nkey_type = \"int8\"\n");
    for (i, s) in shards.iter().enumerate() {
        cfg.push_str(&format!(
            "[[shards]]\nid = {i}\nport = {}\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"{SUPERUSER_PASSWORD}\"\n",
            s.port
        ));
    }
    let config = Config::parse(&cfg, "bench.toml").unwrap();
    let proxy = pieskieo::serve(config).await.unwrap();
    let url = format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app",
        proxy.addr.port()
    );
    let base = direct_url(&baseline);
    psql(&url, TABLE, b"");
    psql(&base, TABLE, b"");

    let mut data = Vec::with_capacity(rows * 40);
    for i in 1..=rows {
        data.extend_from_slice(
            format!("{i}\t{}\tsome note text for row {i}\n", i % 10_000).as_bytes(),
        );
    }
    let mb = data.len() as f64 / (1024.0 * 1024.0);
    // Each path loads the same rows into an empty table; the direct one first
    // so neither gets a warmer page cache for its own table.
    let direct = psql(&base, "COPY accounts FROM STDIN", &data);
    // The proxy runs in this process, which holds the rows already: its
    // cost is how far the peak RSS rises above that while it streams them.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_kib("VmRSS");
    let through = psql(&url, "COPY accounts FROM STDIN", &data);
    let peak = status_kib("VmHWM");
    let rate = |d: Duration| (rows as f64 / d.as_secs_f64(), mb / d.as_secs_f64());
    let (dr, dm) = rate(direct);
    let (pr, pm) = rate(through);
    println!("COPY FROM STDIN of {rows} rows ({mb:.1} MB):");
    println!("  direct into 1 server:        {direct:>10.2?}  {dr:>10.0} rows/s  {dm:>6.1} MB/s");
    println!(
        "  through Pieskieo, 3 shards:  {through:>10.2?}  {pr:>10.0} rows/s  {pm:>6.1} MB/s  ({:.2}x direct)",
        pr / dr
    );

    if let (Some(b), Some(p)) = (before, peak) {
        println!(
            "  proxy memory while streaming: peak RSS {:.1} MiB above the {:.1} MiB before it (the rows, held by this program)",
            p.saturating_sub(b) as f64 / 1024.0,
            b as f64 / 1024.0
        );
    }

    let dump_direct = pg_dump(&base);
    let dump_through = pg_dump(&url);
    println!("pg_dump of the table ({rows} rows):");
    println!("  direct:            {dump_direct:>10.2?}");
    println!(
        "  through Pieskieo:  {dump_through:>10.2?}  ({:.2}x direct)",
        dump_through.as_secs_f64() / dump_direct.as_secs_f64()
    );

    drop(proxy);
    for s in shards.iter().chain(std::iter::once(&baseline)) {
        let _ = s.stop("fast");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `/proc/self/status` figure in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
