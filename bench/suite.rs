//! The benchmark suite: Pieskieo side by side with its baselines, in one run.
//!
//! Starts 3 PostgreSQL shards and one plain PostgreSQL server (fsync on), the
//! proxy as a process of its own (release build), and PgBouncer in
//! transaction pooling in front of the plain server when `pgbouncer` is
//! installed (it is never installed by this program; it says when it skipped
//! it). Every workload runs with `pgbench` (8 clients, 2 threads) against each
//! target in turn; the table gives TPS, p50 / p99 latency from pgbench's
//! per-transaction log, and the ratio of Pieskieo's TPS to each baseline's.
//! Then a scale run holds 10,000 idle client connections and runs 1,000
//! active ones over pools of 20 connections per shard, and prints the proxy's
//! memory per client connection. Peak RSS of the proxy closes the report.
//!
//! Run: `cargo bench --bench suite` (BENCH_SECONDS=N per run, default 10;
//! BENCH_WORKERS=N proxy threads, default 1; SCALE_CLIENTS / SCALE_ACTIVE to
//! change the scale run; SKIP_SCALE=1; WORKLOADS=simple,one shard runs only
//! the cells whose names contain one of those words). Beside each proxy's
//! TPS it prints the proxy's CPU time (user + system, from `/proc`) per
//! statement.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pieskieo::cluster::{find_bindir, LocalServer, SUPERUSER_PASSWORD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ACCOUNTS: u32 = 100_000;
/// Rows of the range-sharded transfer table per shard.
const XFER_PER_SHARD: u32 = 100_000;

#[path = "common.rs"]
mod common;
use common::free_port;

fn seconds() -> u32 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `psql` against `url`; panics with its output on failure.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("psql is installed");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One measured run.
struct Measure {
    tps: f64,
    /// Transactions pgbench completed.
    done: u64,
    p50_ms: f64,
    p99_ms: f64,
    failed: u64,
}

/// Runs pgbench over `script` for the configured time; latencies come from
/// its per-transaction log. `Err`: the target could not run it (why).
fn pgbench(url: &str, mode: &str, script: &Path, dir: &Path) -> Result<Measure, String> {
    let logs = dir.join(format!("log-{}", rand_suffix()));
    std::fs::create_dir_all(&logs).unwrap();
    let prefix = logs.join("tx");
    let out = Command::new("pgbench")
        .args(["-n", "-M", mode, "-c", "8", "-j", "2", "-T"])
        .arg(seconds().to_string())
        .arg("-l")
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg("-f")
        .arg(script)
        .arg(url)
        .output()
        .expect("pgbench is installed (it comes with the postgresql package)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&logs);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let first = err
            .lines()
            .find(|l| l.contains("ERROR"))
            .or(err.lines().next())
            .unwrap_or("pgbench failed")
            .to_string();
        return Err(first);
    }
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    let done = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|s| s.split(['/', ' ']).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut lat: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(&logs).unwrap().flatten() {
        let body = std::fs::read_to_string(entry.path()).unwrap_or_default();
        lat.extend(
            body.lines()
                .filter_map(|l| l.split_whitespace().nth(2))
                .filter_map(|v| v.parse::<u64>().ok()),
        );
    }
    let _ = std::fs::remove_dir_all(&logs);
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .map(|us| *us as f64 / 1000.0)
            .unwrap_or(f64::NAN)
    };
    Ok(Measure {
        tps,
        done,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        failed,
    })
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A kilobyte figure from `/proc/<pid>/status`.
fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Target {
    name: &'static str,
    url: String,
    /// The process whose CPU time is counted per query (proxies only).
    pid: Option<u32>,
}

/// User plus system CPU time a process has used so far, in microseconds
/// (`/proc/<pid>/stat`, clock ticks of 10 ms).
fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000)
}

struct Bench {
    dir: PathBuf,
    shards: Vec<LocalServer>,
    plain: LocalServer,
    proxy: Child,
    proxy_port: u16,
    bouncer: Option<Child>,
    targets: Vec<Target>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
        if let Some(b) = &mut self.bouncer {
            // PgBouncer runs as another user when we are root: signal it by pid file.
            let pid =
                std::fs::read_to_string(self.dir.join("bouncer/pgbouncer.pid")).unwrap_or_default();
            let _ = Command::new("kill").arg(pid.trim()).status();
            let _ = b.kill();
            let _ = b.wait();
        }
        for s in self.shards.iter().chain(std::iter::once(&self.plain)) {
            let _ = s.stop("fast");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const TABLES_SQL: &str = "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int NOT NULL DEFAULT 0, filler char(84));
CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int NOT NULL DEFAULT 0, filler char(84));
CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int NOT NULL DEFAULT 0, filler char(88));
CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
CREATE TABLE xfer (id int PRIMARY KEY, bal bigint NOT NULL)";

fn start() -> Bench {
    let bindir = find_bindir().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("pieskieo-suite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let settings = [("shared_buffers", "'128MB'"), ("max_connections", "300")];
    let server = |name: &str| {
        let s = LocalServer::create(&bindir, &dir.join(name), free_port(), &settings).unwrap();
        s.start().unwrap();
        s
    };
    let shards: Vec<LocalServer> = (0..3).map(|i| server(&format!("shard{i}"))).collect();
    let plain = server("plain");
    let url_of =
        |port: u16| format!("postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{port}/postgres");

    // The proxy, as operators run it; one worker thread by default (this
    // machine's cores are shared with four PostgreSQL servers and pgbench).
    let port = free_port();
    let workers = env_usize("BENCH_WORKERS", 1);
    let mut cfg = format!(
        "listen = \"127.0.0.1:{port}\"\nnode_id = \"suite\"\ndatabase = \"app\"\nworkers = {}\n[limits]\nmax_client_connections = 12000\npool_timeout_ms = 30000\n",
        workers
    );
    cfg.push_str("[[users]]\nname = \"app\"\npassword = \"app\"\n[[users]]\nname = \"idle\"\npassword = \"idle\"\nauth = \"cleartext\"\n");
    for (i, s) in shards.iter().enumerate() {
        cfg.push_str(&format!(
            "[[shards]]\nid = {i}\nport = {}\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"{SUPERUSER_PASSWORD}\"\npool_size = 20\n",
            s.port
        ));
    }
    for (t, k) in [
        ("pgbench_accounts", "aid"),
        ("pgbench_tellers", "tid"),
        ("pgbench_branches", "bid"),
        ("pgbench_history", "aid"),
    ] {
        cfg.push_str(&format!(
            "[[tables]]\nname = \"{t}\"\nkey = \"{k}\"\nkey_type = \"int4\"\n"
        ));
    }
    cfg.push_str(
        "[[tables]]\nname = \"xfer\"\nkey = \"id\"\nkey_type = \"int4\"\nmethod = \"range\"\n",
    );
    for i in 0..3u32 {
        cfg.push_str(&format!(
            "[[tables.ranges]]\nfrom = {}\nto = {}\nshard = {i}\n",
            i * XFER_PER_SHARD + 1,
            (i + 1) * XFER_PER_SHARD + 1
        ));
    }
    let cfg_path = dir.join("pieskieo.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let log = std::fs::File::create(dir.join("pieskieo.log")).unwrap();
    let proxy = Command::new(env!("CARGO_BIN_EXE_pieskieo"))
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start pieskieo");
    let proxy_url = format!("postgres://app:app@127.0.0.1:{port}/app");
    let t0 = Instant::now();
    while TcpStreamStd::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "pieskieo did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Data: the plain server gets everything; the shards get it through the proxy.
    let plain_url = url_of(plain.port);
    psql(&plain_url, TABLES_SQL);
    psql(&proxy_url, TABLES_SQL);
    let fill = |url: &str, table: &str, cols: &str, rows: &mut dyn Iterator<Item = String>| {
        let rows: Vec<String> = rows.collect();
        for chunk in rows.chunks(2000) {
            psql(
                url,
                &format!("INSERT INTO {table} ({cols}) VALUES {}", chunk.join(",")),
            );
        }
    };
    for url in [&plain_url, &proxy_url] {
        fill(
            url,
            "pgbench_branches",
            "bid, bbalance",
            &mut std::iter::once("(1, 0)".to_string()),
        );
        fill(
            url,
            "pgbench_tellers",
            "tid, bid, tbalance",
            &mut (1..=10).map(|t| format!("({t}, 1, 0)")),
        );
        fill(
            url,
            "pgbench_accounts",
            "aid, bid, abalance",
            &mut (1..=ACCOUNTS).map(|a| format!("({a}, 1, 0)")),
        );
    }
    // The range-sharded transfer table: each shard its own range, written directly.
    for (i, s) in shards.iter().enumerate() {
        let from = i as u32 * XFER_PER_SHARD + 1;
        let sql = format!(
            "INSERT INTO xfer SELECT g, 1000000 FROM generate_series({from}, {}) g",
            from + XFER_PER_SHARD - 1
        );
        psql(&url_of(s.port), &sql);
        psql(&plain_url, &sql);
    }
    for url in [&plain_url]
        .into_iter()
        .cloned()
        .chain(shards.iter().map(|s| url_of(s.port)))
    {
        psql(&url, "VACUUM ANALYZE");
    }

    let mut targets = vec![Target {
        name: "direct",
        url: plain_url.clone(),
        pid: None,
    }];
    let bouncer = start_bouncer(&dir, plain.port);
    if let Some((_, bport)) = &bouncer {
        let pid = std::fs::read_to_string(dir.join("bouncer/pgbouncer.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        targets.push(Target {
            name: "pgbouncer",
            url: url_of(*bport),
            pid,
        });
    }
    targets.push(Target {
        name: "pieskieo",
        url: proxy_url,
        pid: Some(proxy.id()),
    });
    Bench {
        dir,
        shards,
        plain,
        proxy,
        proxy_port: port,
        bouncer: bouncer.map(|b| b.0),
        targets,
    }
}

use std::net::TcpStream as TcpStreamStd;

/// PgBouncer in transaction pooling in front of the plain server, if installed.
fn start_bouncer(dir: &Path, pg_port: u16) -> Option<(Child, u16)> {
    let bin = [
        "/usr/sbin/pgbouncer",
        "/usr/bin/pgbouncer",
        "/usr/local/bin/pgbouncer",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file());
    let Some(bin) = bin else {
        println!(
            "pgbouncer: not installed, skipped (apt-get install pgbouncer to compare with it)"
        );
        return None;
    };
    let bdir = dir.join("bouncer");
    std::fs::create_dir_all(&bdir).unwrap();
    let port = free_port();
    std::fs::write(
        bdir.join("userlist.txt"),
        format!("\"postgres\" \"{SUPERUSER_PASSWORD}\"\n"),
    )
    .unwrap();
    let ini = format!(
        "[databases]\npostgres = host=127.0.0.1 port={pg_port} dbname=postgres user=postgres password={SUPERUSER_PASSWORD}\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {0}/userlist.txt\n\
         pool_mode = transaction\ndefault_pool_size = 20\nmax_client_conn = 12000\nlogfile = {0}/pgbouncer.log\npidfile = {0}/pgbouncer.pid\n",
        bdir.display()
    );
    let ini_path = bdir.join("pgbouncer.ini");
    std::fs::write(&ini_path, ini).unwrap();
    let mut cmd = if is_root() {
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&bdir)
            .status();
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", bin]);
        c
    } else {
        Command::new(bin)
    };
    let child = cmd
        .arg(&ini_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let t0 = Instant::now();
    while TcpStreamStd::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(10) {
            println!(
                "pgbouncer: did not start, skipped (see {}/pgbouncer.log)",
                bdir.display()
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((child, port))
}

struct Workload {
    name: &'static str,
    mode: &'static str,
    script: String,
}

fn workloads() -> Vec<Workload> {
    let select = format!("\\set aid random(1, {ACCOUNTS})\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n");
    let (a, b, c) = (
        format!("\\set a random(1, {XFER_PER_SHARD})\n"),
        format!(
            "\\set b random({}, {})\n",
            XFER_PER_SHARD + 1,
            2 * XFER_PER_SHARD
        ),
        format!(
            "\\set c random({}, {})\n",
            2 * XFER_PER_SHARD + 1,
            3 * XFER_PER_SHARD
        ),
    );
    vec![
        Workload { name: "select-only, simple", mode: "simple", script: select.clone() },
        Workload { name: "select-only, extended", mode: "extended", script: select.clone() },
        Workload { name: "select-only, prepared", mode: "prepared", script: select },
        Workload {
            name: "read-write, one shard",
            mode: "simple",
            script: format!(
                "\\set aid random(1, {ACCOUNTS})\n\\set delta random(-5000, 5000)\nBEGIN;\nUPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\nEND;\n"
            ),
        },
        Workload {
            name: "transfer, 2 shards",
            mode: "simple",
            script: format!("{a}{b}BEGIN;\nUPDATE xfer SET bal = bal - 1 WHERE id = :a;\nUPDATE xfer SET bal = bal + 1 WHERE id = :b;\nEND;\n"),
        },
        Workload {
            name: "transfer, 3 shards",
            mode: "simple",
            script: format!("{a}{b}{c}BEGIN;\nUPDATE xfer SET bal = bal - 2 WHERE id = :a;\nUPDATE xfer SET bal = bal + 1 WHERE id = :b;\nUPDATE xfer SET bal = bal + 1 WHERE id = :c;\nEND;\n"),
        },
        Workload {
            name: "TPC-B-like, sharded",
            mode: "simple",
            script: format!(
                "\\set aid random(1, {ACCOUNTS})\n\\set tid random(1, 10)\n\\set delta random(-5000, 5000)\nBEGIN;\n\
                 UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n\
                 SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
                 UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;\n\
                 UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = 1;\n\
                 INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, 1, :aid, :delta, CURRENT_TIMESTAMP);\n\
                 END;\n"
            ),
        },
    ]
}

/// A raw client: startup, cleartext password, then simple queries.
async fn login(port: u16) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut body = 196608i32.to_be_bytes().to_vec();
    for kv in ["user", "idle", "database", "app"] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    s.write_all(&msg).await?;
    loop {
        let (tag, b) = read_msg(&mut s).await?;
        match tag {
            b'R' if b.get(..4) == Some(&3i32.to_be_bytes()[..]) => {
                let mut m = vec![b'p'];
                m.extend_from_slice(&9i32.to_be_bytes());
                m.extend_from_slice(b"idle\0");
                s.write_all(&m).await?;
            }
            b'Z' => return Ok(s),
            b'E' => return Err(std::io::Error::other("login refused")),
            _ => {}
        }
    }
}

async fn read_msg(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let tag = s.read_u8().await?;
    let len = s.read_i32().await?;
    let mut b = vec![0; (len as usize).saturating_sub(4)];
    s.read_exact(&mut b).await?;
    Ok((tag, b))
}

/// One simple query; `Ok(false)` if the server answered with an error.
async fn query(s: &mut TcpStream, sql: &str) -> std::io::Result<bool> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    s.write_all(&m).await?;
    let mut ok = true;
    loop {
        let (tag, _) = read_msg(s).await?;
        match tag {
            b'E' => ok = false,
            b'Z' => return Ok(ok),
            _ => {}
        }
    }
}

async fn scale_run(port: u16, pid: u32) {
    let total = env_usize("SCALE_CLIENTS", 10_000);
    let active = env_usize("SCALE_ACTIVE", 1_000).min(total);
    let queries = 20;
    let before = proc_kb(pid, "VmRSS:");
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(total);
    let mut login_errors = 0;
    // Log in a few hundred at a time, as a fleet of application servers would.
    let mut pending = Vec::new();
    for _ in 0..total {
        pending.push(tokio::spawn(login(port)));
        if pending.len() == 200 {
            for h in pending.drain(..) {
                match h.await {
                    Ok(Ok(c)) => conns.push(c),
                    _ => login_errors += 1,
                }
            }
        }
    }
    for h in pending {
        match h.await {
            Ok(Ok(c)) => conns.push(c),
            _ => login_errors += 1,
        }
    }
    let login_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = proc_kb(pid, "VmRSS:");
    let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / conns.len().max(1) as f64;
    let mut busy: Vec<TcpStream> = conns.drain(..active.min(conns.len())).collect();
    let t1 = Instant::now();
    let mut handles = Vec::new();
    for (i, mut c) in busy.drain(..).enumerate() {
        handles.push(tokio::spawn(async move {
            let mut errors = 0u64;
            for q in 0..queries {
                let aid = (i * 7919 + q * 104_729) % ACCOUNTS as usize + 1;
                let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}");
                match query(&mut c, &sql).await {
                    Ok(true) => {}
                    _ => errors += 1,
                }
            }
            (errors, c)
        }));
    }
    let mut errors = 0;
    for h in handles {
        match h.await {
            Ok((e, c)) => {
                errors += e;
                conns.push(c);
            }
            Err(_) => errors += queries as u64,
        }
    }
    let active_secs = t1.elapsed().as_secs_f64();
    println!();
    println!(
        "Scale run: {} client connections held open ({login_errors} refused, logins took {login_secs:.1} s), then {active} of them active at once, {queries} queries each over pools of 20 connections per shard",
        conns.len()
    );
    println!(
        "  errors: {errors}; {:.0} queries/s while {active} were active; proxy RSS {} MiB idle-loaded ({} MiB before); {:.1} KiB per client connection",
        (active * queries) as f64 / active_secs,
        after / 1024,
        before / 1024,
        per_conn / 1024.0
    );
    drop(conns);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bench = start();
    let secs = seconds();
    println!(
        "Pieskieo benchmark suite: 3 shards + 1 plain PostgreSQL (fsync on), pgbench -c 8 -j 2 -T {secs} per cell, proxy workers = {}, {} CPUs",
        env_usize("BENCH_WORKERS", 1),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!();
    println!("| workload | target | TPS | p50 ms | p99 ms | failed | pieskieo / target | proxy CPU µs per statement |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let scripts = bench.dir.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    // WORKLOADS=simple,one shard: only the cells whose names contain one of these.
    let only: Vec<String> = std::env::var("WORKLOADS")
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    for (i, w) in workloads().iter().enumerate() {
        if !only.is_empty() && !only.iter().any(|o| w.name.contains(o.as_str())) {
            continue;
        }
        let path = scripts.join(format!("w{i}.sql"));
        std::fs::write(&path, &w.script).unwrap();
        let statements = w
            .script
            .lines()
            .filter(|l| !l.starts_with('\\') && !l.trim().is_empty())
            .count()
            .max(1) as u64;
        let results: Vec<(&str, Result<Measure, String>, Option<u64>)> = bench
            .targets
            .iter()
            .map(|t| {
                let before = t.pid.and_then(cpu_us);
                let m = pgbench(&t.url, w.mode, &path, &bench.dir);
                let used = before.zip(t.pid.and_then(cpu_us)).map(|(a, b)| b - a);
                (t.name, m, used)
            })
            .collect();
        let ours = results
            .iter()
            .find(|r| r.0 == "pieskieo")
            .and_then(|r| r.1.as_ref().ok())
            .map_or(f64::NAN, |m| m.tps);
        for (name, m, used) in &results {
            match m {
                Ok(m) => {
                    let ratio = if *name == "pieskieo" {
                        String::from("—")
                    } else {
                        format!("{:.2}×", ours / m.tps)
                    };
                    let cpu = match used {
                        Some(us) if m.done > 0 => {
                            format!("{:.1}", *us as f64 / (m.done * statements) as f64)
                        }
                        _ => String::new(),
                    };
                    println!(
                        "| {} | {name} | {:.0} | {:.2} | {:.2} | {} | {ratio} | {cpu} |",
                        w.name, m.tps, m.p50_ms, m.p99_ms, m.failed
                    );
                }
                Err(e) => println!("| {} | {name} | could not run: {e} | | | | | |", w.name),
            }
        }
    }
    if std::env::var("SKIP_SCALE").is_err() {
        scale_run(bench.proxy_port, bench.proxy.id()).await;
    }
    println!();
    println!(
        "Proxy peak RSS: {} MiB",
        proc_kb(bench.proxy.id(), "VmHWM:") / 1024
    );
}
