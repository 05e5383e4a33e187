//! Test harness: throwaway PostgreSQL clusters on free ports (as the
//! `postgres` user when run as root) and the proxy on port 0, all stopped
//! and removed by their own data directories when the test ends.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use pieskieo::cluster::{find_bindir, LocalServer, SUPERUSER_PASSWORD};
use pieskieo::config::Config;
use pieskieo::router::{KeyValue, ShardMap};
use pieskieo::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sharded tables every test cluster declares.
pub const TABLES: &str = r#"
reference_tables = ["countries"]

[[tables]]
name = "accounts"
key = "id"
key_type = "int8"

[[tables]]
name = "items"
key = "id"
key_type = "int8"

[[tables]]
name = "users"
key = "email"
key_type = "text"

[[tables]]
name = "pgbench_accounts"
key = "aid"
key_type = "int4"

[[tables]]
name = "pgbench_tellers"
key = "tid"
key_type = "int4"

[[tables]]
name = "pgbench_branches"
key = "bid"
key_type = "int4"

[[tables]]
name = "pgbench_history"
key = "aid"
key_type = "int4"
"#;

pub const USERS: &str = r#"
[[users]]
name = "app"
password = "secret"

[[users]]
name = "md5user"
password = "md5pass"
auth = "md5"

[[users]]
name = "plain"
password = "plainpass"
auth = "cleartext"
"#;

/// The table most tests use.
pub const ACCOUNTS: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))";

/// The smallest positive integer key of `table` that `map` puts on `shard`.
pub fn key_on(map: &ShardMap, table: &str, shard: usize) -> i64 {
    (1..1_000_000i64)
        .find(|k| {
            map.tables[table]
                .shard_for(&KeyValue::Int(*k), map.shards)
                .map(|s| s.0 as usize)
                == Some(shard)
        })
        .expect("some key lands on every shard")
}

pub struct Servers {
    pub servers: Vec<LocalServer>,
    pub dir: PathBuf,
}

impl Servers {
    /// Starts `n` fresh PostgreSQL servers.
    pub fn start(n: usize) -> Servers {
        Servers::start_with(n, &[])
    }

    /// Starts `n` fresh servers with extra `postgresql.conf` settings.
    pub fn start_with(n: usize, extra: &[(&str, &str)]) -> Servers {
        Servers::start_with_files(n, extra, &[])
    }

    /// As [`Servers::start_with`], with `files` (name in the data
    /// directory, source) copied into each before it starts: a server
    /// certificate and key for `ssl = on`.
    pub fn start_with_files(
        n: usize,
        extra: &[(&str, &str)],
        files: &[(&str, &std::path::Path)],
    ) -> Servers {
        let bindir = find_bindir().unwrap_or_else(|e| panic!("{e}"));
        let dir = std::env::temp_dir().join(format!(
            "pieskieo-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // fsync off survives a server crash (the OS keeps the writes); asynchronous
        // commit would not, and the fault tests crash servers on purpose.
        // Statements are logged so tests can see what the proxy sent.
        let mut fast = vec![
            ("fsync", "off"),
            ("full_page_writes", "off"),
            ("shared_buffers", "'16MB'"),
            ("timezone", "'UTC'"),
            ("log_statement", "'all'"),
            // No JIT: it compiles the few costly test queries, for nothing.
            ("jit", "off"),
        ];
        fast.extend_from_slice(extra);
        let mut me = Servers {
            servers: Vec::new(),
            dir: dir.clone(),
        };
        let template = template(&bindir);
        // Each server is copied and started in a thread of its own: a
        // start is mostly waiting for the server.
        let started: Vec<Result<LocalServer, String>> = std::thread::scope(|scope| {
            let starts: Vec<_> = (0..n)
                .map(|i| {
                    let (bindir, template, dir, fast) = (&bindir, &template, &dir, &fast);
                    scope.spawn(move || {
                        let mut s = LocalServer::create_from(
                            bindir,
                            template,
                            &dir.join(format!("shard{i}")),
                            free_port(),
                            fast,
                        )
                        .map_err(|e| format!("initdb: {e}"))?;
                        for (name, from) in files {
                            s.install_file(name, from)
                                .map_err(|e| format!("shard {i}: {e}"))?;
                        }
                        // A free port can be taken by another process before the
                        // server binds it: then another port (the port is only
                        // pg_ctl's option).
                        let mut tries = 0;
                        while let Err(e) = s.start() {
                            tries += 1;
                            if tries >= 5 || !e.contains("Address already in use") {
                                return Err(format!("start shard {i}: {e}"));
                            }
                            s.port = free_port();
                        }
                        Ok(s)
                    })
                })
                .collect();
            starts
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|_| Err("a start panicked".into())))
                .collect()
        });
        let mut failed = Vec::new();
        for s in started {
            match s {
                Ok(s) => me.servers.push(s),
                Err(e) => failed.push(e),
            }
        }
        // (The servers that did start are stopped by `me`'s drop.)
        assert!(failed.is_empty(), "{}", failed.join("\n"));
        me
    }

    pub fn ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }

    pub fn url(&self, i: usize) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres",
            self.servers[i].port
        )
    }

    pub async fn connect(&self, i: usize) -> Client {
        connect(&self.url(i))
            .await
            .unwrap_or_else(|e| panic!("shard {i}: {e}"))
    }
}

/// The data directory every test server is copied from, made by `initdb`
/// once per test process, in cargo's temporary directory (templates of
/// processes that have ended are removed then).
fn template(bindir: &std::path::Path) -> PathBuf {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix("pg-template-")
                    .and_then(|p| p.split('.').next());
                if pid.is_some_and(|p| !PathBuf::from(format!("/proc/{p}")).exists()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            let template = root.join(format!("pg-template-{}", std::process::id()));
            LocalServer::create_template(bindir, &template)
                .unwrap_or_else(|e| panic!("initdb: {e}"));
            template
        })
        .clone()
}

impl Drop for Servers {
    fn drop(&mut self) {
        for s in &self.servers {
            let _ = s.stop("immediate");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One plain PostgreSQL, the oracle tests compare the proxy with: it takes
/// the raw client's login (user `plain`, cleartext password, database
/// `app`), as the proxy does.
pub async fn oracle_server() -> Servers {
    let servers = Servers::start(1);
    let admin = servers.connect(0).await;
    for sql in [
        "CREATE ROLE plain LOGIN SUPERUSER PASSWORD 'plainpass'",
        "CREATE DATABASE app OWNER plain",
    ] {
        admin.simple_query(sql).await.unwrap();
    }
    let hba = servers.servers[0].data_dir.join("pg_hba.conf");
    std::fs::write(&hba, "host all all 127.0.0.1/32 password\n").unwrap();
    admin.simple_query("SELECT pg_reload_conf()").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    servers
}

/// Shards plus a proxy in this process.
pub struct Cluster {
    pub shards: Servers,
    pub proxy: Option<Proxy>,
    pub map: ShardMap,
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, TABLES).await
    }

    pub async fn start_with(n: usize, tables: &str) -> Cluster {
        Cluster::start_txn(n, tables, "").await
    }

    /// A cluster whose proxy gets extra `[txn]` settings (test failpoints).
    pub async fn start_txn(n: usize, tables: &str, txn_extra: &str) -> Cluster {
        Cluster::start_custom(n, tables, txn_extra, "").await
    }

    /// A cluster whose proxy gets extra `[txn]` and `[limits]` settings.
    pub async fn start_custom(
        n: usize,
        tables: &str,
        txn_extra: &str,
        limits_extra: &str,
    ) -> Cluster {
        let shards = Servers::start(n);
        let text = config_text_full(&shards.ports(), tables, txn_extra, limits_extra);
        Cluster::over(shards, &text).await
    }

    /// An in-process proxy with configuration `text` over `shards`.
    pub async fn over(shards: Servers, text: &str) -> Cluster {
        let config = Config::parse(text, "test.toml").unwrap();
        let map = ShardMap::from_config(&config);
        let proxy = pieskieo::serve(config).await.unwrap();
        Cluster {
            shards,
            proxy: Some(proxy),
            map,
        }
    }

    pub fn port(&self) -> u16 {
        self.proxy.as_ref().unwrap().addr.port()
    }

    pub fn url_for(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=app",
            self.port()
        )
    }

    pub fn url(&self) -> String {
        self.url_for("app", "secret")
    }

    pub fn uri(&self) -> String {
        format!("postgres://app:secret@127.0.0.1:{}/app", self.port())
    }

    pub async fn client(&self) -> Client {
        connect(&self.url()).await.unwrap()
    }

    pub async fn shard(&self, i: usize) -> Client {
        self.shards.connect(i).await
    }

    /// The smallest positive integer key of `table` that lives on `shard`.
    pub fn key_on(&self, table: &str, shard: usize) -> i64 {
        key_on(&self.map, table, shard)
    }

    /// Creates `accounts` (balance never negative) and one row with
    /// `balance` on each of the first `n` shards; returns their keys.
    pub async fn accounts(&self, n: usize, balance: i64) -> Vec<i64> {
        let client = self.client().await;
        client.simple_query(ACCOUNTS).await.unwrap();
        let keys: Vec<i64> = (0..n).map(|s| self.key_on("accounts", s)).collect();
        for id in &keys {
            let sql = format!("INSERT INTO accounts (id, balance) VALUES ({id}, {balance})");
            client.simple_query(&sql).await.unwrap();
        }
        keys
    }

    /// The sum over every shard of a one-value query, run on each directly.
    pub async fn shard_sum(&self, sql: &str) -> i64 {
        let mut sum = 0;
        for i in 0..self.shards.servers.len() {
            sum += value(&self.shard(i).await, sql)
                .await
                .parse::<i64>()
                .unwrap();
        }
        sum
    }

    /// The shard the router assigns to an `int8` key of `accounts`.
    pub fn shard_of(&self, table: &str, key: KeyValue) -> usize {
        self.map.tables[table]
            .shard_for(&key, self.map.shards)
            .unwrap()
            .0 as usize
    }
}

/// Prepared transactions left on a shard.
pub async fn prepared(c: &Client) -> usize {
    value(c, "SELECT count(*) FROM pg_prepared_xacts")
        .await
        .parse()
        .unwrap()
}

/// The proxy as its own process (for tests that kill it).
pub struct ProxyProcess {
    child: std::process::Child,
    pub port: u16,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
}

impl ProxyProcess {
    /// Starts `pieskieo --config` over `servers` and waits until it listens
    /// (after its startup recovery).
    pub async fn start(servers: &Servers, txn_extra: &str) -> ProxyProcess {
        ProxyProcess::start_with(servers, TABLES, txn_extra).await
    }

    /// As [`ProxyProcess::start`], with the given top-level settings and tables.
    pub async fn start_with(servers: &Servers, tables: &str, txn_extra: &str) -> ProxyProcess {
        ProxyProcess::start_on(servers, "127.0.0.1", tables, txn_extra).await
    }

    /// As [`ProxyProcess::start_with`], listening on `host` (clients still
    /// connect to 127.0.0.1, which `0.0.0.0` includes).
    pub async fn start_on(
        servers: &Servers,
        host: &str,
        tables: &str,
        txn_extra: &str,
    ) -> ProxyProcess {
        let text = config_text_with(&servers.ports(), tables, txn_extra);
        ProxyProcess::start_text_on(servers, host, &text).await
    }

    /// A proxy over `servers` with the configuration `text` (whose
    /// `listen = "127.0.0.1:0"` gets a free port).
    pub async fn start_text(servers: &Servers, text: &str) -> ProxyProcess {
        ProxyProcess::start_text_on(servers, "127.0.0.1", text).await
    }

    /// As [`ProxyProcess::start_text`], listening on `host`.
    async fn start_text_on(servers: &Servers, host: &str, text: &str) -> ProxyProcess {
        let port = free_port();
        let text = text.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{host}:{port}\""),
        );
        let path = servers.dir.join(format!("proxy-{port}.toml"));
        std::fs::write(&path, text).unwrap();
        let log = std::fs::File::create(servers.dir.join(format!("proxy-{port}.log"))).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pieskieo"))
            .arg("--config")
            .arg(&path)
            .stderr(log)
            .spawn()
            .unwrap();
        let log = servers.dir.join(format!("proxy-{port}.log"));
        let mut p = ProxyProcess {
            child,
            port,
            log,
            config: path.clone(),
        };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("proxy exited at startup: {status}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("proxy did not start listening");
    }

    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password=secret dbname=app",
            self.port
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the process a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }

    /// Asks the proxy to shut down gracefully (SIGTERM) and waits up to
    /// `secs` for it to exit; its exit status, if it did.
    pub fn terminate(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .ok()?;
        for _ in 0..secs * 20 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// Waits for the process to end (a crash failpoint), killing it after `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> bool {
        for _ in 0..secs * 20 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        false
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn config_text(ports: &[u16], tables: &str) -> String {
    config_text_with(ports, tables, "")
}

/// A configuration for these shard ports; `txn_extra` lines go in `[txn]`.
pub fn config_text_with(ports: &[u16], tables: &str, txn_extra: &str) -> String {
    config_text_full(ports, tables, txn_extra, "")
}

/// As [`config_text_with`]; `limits_extra` lines go in `[limits]`.
pub fn config_text_full(
    ports: &[u16],
    tables: &str,
    txn_extra: &str,
    limits_extra: &str,
) -> String {
    let mut s = format!(
        "listen = \"127.0.0.1:0\"\nnode_id = \"test\"\ndatabase = \"app\"\n{tables}\n{USERS}\n"
    );
    for (i, port) in ports.iter().enumerate() {
        s.push_str(&format!(
            "[[shards]]\nid = {i}\nport = {port}\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"{SUPERUSER_PASSWORD}\"\npool_size = 8\n"
        ));
    }
    s.push_str(&format!(
        "[limits]\npool_timeout_ms = 3000\nconnect_timeout_ms = 2000\n{limits_extra}\n"
    ));
    // Defaults for tests: quick passes, a short grace; a test may set its own.
    s.push_str("[txn]\n");
    if !txn_extra.contains("recovery_interval_ms") {
        s.push_str("recovery_interval_ms = 300\n");
    }
    if !txn_extra.contains("recovery_grace_ms") {
        s.push_str("recovery_grace_ms = 1000\n");
    }
    s.push_str(&format!("{txn_extra}\n"));
    s
}

pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Runs a simple query that must succeed; returns what came back.
pub async fn exec(c: &Client, sql: &str) -> Vec<SimpleQueryMessage> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

/// Rows of a simple query as text.
pub async fn rows(c: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    exec(c, sql)
        .await
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// The single value of a one-row, one-column query.
pub async fn value(c: &Client, sql: &str) -> String {
    let r = rows(c, sql).await;
    r.first()
        .and_then(|row| row.first().cloned().flatten())
        .unwrap_or_else(|| panic!("{sql}: no value"))
}

/// The command tags of a simple query.
/// The balance of account `id` as `c` sees it.
pub async fn balance(c: &Client, id: i64) -> String {
    value(c, &format!("SELECT balance FROM accounts WHERE id = {id}")).await
}

/// Inserts rows `(1, rest) .. (n, rest)` into `target` (`table (columns)`).
pub async fn insert_numbered(c: &Client, target: &str, n: i64, rest: &str) {
    let rows: Vec<String> = (1..=n).map(|i| format!("({i}, {rest})")).collect();
    exec(
        c,
        &format!("INSERT INTO {target} VALUES {}", rows.join(", ")),
    )
    .await;
}

pub async fn tags(c: &Client, sql: &str) -> Vec<u64> {
    exec(c, sql)
        .await
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// The SQLSTATE of a statement expected to fail.
pub async fn sqlstate(c: &Client, sql: &str) -> String {
    match c.simple_query(sql).await {
        Ok(_) => panic!("{sql}: expected an error"),
        Err(e) => e
            .as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_else(|| panic!("{sql}: not a server error: {e:?}")),
    }
}

pub async fn error_message(c: &Client, sql: &str) -> String {
    match c.simple_query(sql).await {
        Ok(_) => panic!("{sql}: expected an error"),
        Err(e) => e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

/// A bare protocol client (cleartext password) for checking exact messages
/// and ReadyForQuery status bytes, and for sending malformed input.
pub struct RawClient {
    pub stream: TcpStream,
}

pub struct Reply {
    /// (message type, body) for every message before ReadyForQuery.
    pub messages: Vec<(u8, Vec<u8>)>,
    pub status: u8,
}

impl Reply {
    pub fn error_codes(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter(|(t, _)| *t == b'E')
            .map(|(_, b)| field(b, b'C'))
            .collect()
    }

    pub fn tags(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter(|(t, _)| *t == b'C')
            .map(|(_, b)| String::from_utf8_lossy(b.strip_suffix(&[0]).unwrap_or(b)).into_owned())
            .collect()
    }
}

pub fn field(body: &[u8], code: u8) -> String {
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let kind = body[i];
        let end = body[i + 1..]
            .iter()
            .position(|&c| c == 0)
            .map(|p| i + 1 + p)
            .unwrap_or(body.len());
        if kind == code {
            return String::from_utf8_lossy(&body[i + 1..end]).into_owned();
        }
        i = end + 1;
    }
    String::new()
}

/// A packet of the startup phase: its length, then `body`.
pub fn startup_packet(body: &[u8]) -> Vec<u8> {
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend_from_slice(body);
    m
}

/// A protocol 3.0 startup message with `params`, in order.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    startup_packet(&body)
}

impl RawClient {
    /// Connects and sends a startup message with `params`.
    pub async fn start(port: u16, params: &[(&str, &str)]) -> RawClient {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.write_all(&startup_message(params)).await.unwrap();
        RawClient { stream }
    }

    /// Logs in as the cleartext user `plain` with `params` added to the
    /// startup message.
    pub async fn login_with(port: u16, params: &[(&str, &str)]) -> RawClient {
        let mut all = vec![("user", "plain"), ("database", "app")];
        all.extend_from_slice(params);
        let mut c = RawClient::start(port, &all).await;
        let (t, b) = c.read().await;
        assert_eq!(
            (t, &b[..]),
            (b'R', &3i32.to_be_bytes()[..]),
            "expected cleartext request"
        );
        c.send(b'p', b"plainpass\0").await;
        loop {
            let (t, b) = c.read().await;
            match t {
                b'Z' => break,
                b'E' => panic!("login failed: {}", field(&b, b'M')),
                _ => {}
            }
        }
        c
    }

    pub async fn connect(port: u16) -> RawClient {
        RawClient::login_with(port, &[]).await
    }

    pub async fn send(&mut self, tag: u8, body: &[u8]) {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        self.stream.write_all(&m).await.unwrap();
    }

    pub async fn read(&mut self) -> (u8, Vec<u8>) {
        let t = self.stream.read_u8().await.unwrap();
        let len = self.stream.read_i32().await.unwrap();
        let mut b = vec![0; len as usize - 4];
        self.stream.read_exact(&mut b).await.unwrap();
        (t, b)
    }

    pub async fn query(&mut self, sql: &str) -> Reply {
        let mut b = sql.as_bytes().to_vec();
        b.push(0);
        self.send(b'Q', &b).await;
        self.until_ready().await
    }

    pub async fn until_ready(&mut self) -> Reply {
        let mut messages = Vec::new();
        loop {
            let (t, b) = self.read().await;
            if t == b'Z' {
                return Reply {
                    messages,
                    status: b[0],
                };
            }
            messages.push((t, b));
        }
    }
}

/// Every process of a shard (postmaster and backends), for SIGSTOP/SIGCONT.
pub fn shard_pids(s: &LocalServer) -> Vec<String> {
    let pid = std::fs::read_to_string(s.data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().map(str::to_string))
        .unwrap_or_default();
    if pid.is_empty() {
        return Vec::new();
    }
    let children = std::process::Command::new("pgrep")
        .args(["-P", &pid])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    std::iter::once(pid)
        .chain(children.lines().map(str::to_string))
        .collect()
}

pub fn signal(pids: &[String], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids)
        .status();
}

/// Deterministic pseudo-random numbers: the same data and faults every run.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }

    /// `None` about one time in `k`.
    pub fn some<T>(&mut self, k: u64, v: impl FnOnce(&mut Self) -> T) -> Option<T> {
        (self.next(k) != 0).then(|| v(self))
    }
}

/// A Parse body: statement `name`, `sql`, no parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    b
}

/// A Bind body: unnamed portal over `stmt`, text parameters, text results.
pub fn bind(stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(stmt.as_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&[0, 0]);
    b
}

/// Runs psql on `url` with `args` (after `-X -v ON_ERROR_STOP=1`) and
/// `stdin` as its input, the client encoding `encoding` when given;
/// returns (ok, stdout, stderr).
pub fn psql_run(
    url: &str,
    args: &[&str],
    stdin: &[u8],
    encoding: Option<&str>,
) -> (bool, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new("psql");
    cmd.arg(url)
        .args(["-X", "-v", "ON_ERROR_STOP=1"])
        .args(args);
    if let Some(e) = encoding {
        cmd.env("PGCLIENTENCODING", e);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql is installed (apt-get install -y postgresql-client)");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
