//! Real drivers against the proxy over 3 shards: psycopg, asyncpg,
//! node-postgres and pgjdbc each run a check program (tests/drivers/) that
//! compares exact values read back; here we check where their rows landed.

use std::path::{Path, PathBuf};
use std::process::Command;

use pieskieo::router::KeyValue;

use crate::harness::{exec, rows, Cluster};

const SCHEMA: &str = "CREATE TABLE items (id bigint PRIMARY KEY, label text, amount numeric(10,3), at timestamptz, payload bytea, tags text[], doc jsonb)";

const HINT: &str = "install the drivers with scripts/ensure-drivers";

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

fn run(cmd: &mut Command, what: &str) {
    run_expecting(cmd, what, " ok");
}

fn run_expecting(cmd: &mut Command, what: &str, marker: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}; {HINT}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({HINT} if a module is missing):\n{text}"
    );
    assert!(text.contains(marker), "{what}: {text}");
}

/// Every row of `items` the driver wrote is on its shard; returns how many.
async fn items_on_their_shards(c: &Cluster) -> usize {
    let mut n = 0;
    for i in 0..3 {
        for r in rows(&c.shard(i).await, "SELECT id FROM items").await {
            let id: i64 = r[0].as_deref().unwrap().parse().unwrap();
            assert_eq!(
                c.shard_of("items", KeyValue::Int(id)),
                i,
                "item {id} on shard {i}"
            );
            n += 1;
        }
    }
    n
}

/// Three shards, the tables, and two accounts with balance 100 on different
/// shards, whose keys each driver check takes as arguments.
async fn cluster() -> (Cluster, [String; 2]) {
    let c = Cluster::start(3).await;
    let keys = c.accounts(2, 100).await;
    exec(&c.client().await, SCHEMA).await;
    (c, [keys[0].to_string(), keys[1].to_string()])
}

/// The transfers each driver made: one committed, one rolled back, one that
/// failed mid-way; seen on the shards themselves.
async fn transfers_applied_once(c: &Cluster, keys: &[String; 2]) {
    let a = rows(
        &c.shard(0).await,
        &format!("SELECT balance FROM accounts WHERE id = {}", keys[0]),
    )
    .await;
    let b = rows(
        &c.shard(1).await,
        &format!("SELECT balance FROM accounts WHERE id = {}", keys[1]),
    )
    .await;
    assert_eq!(
        (a[0][0].as_deref(), b[0][0].as_deref()),
        (Some("90"), Some("110"))
    );
    for i in 0..3 {
        assert_eq!(crate::harness::prepared(&c.shard(i).await).await, 0);
    }
}

/// Runs a driver's check program, then checks what it left on the shards:
/// `items` rows, each on its own shard, and the transfers applied once.
async fn check(c: &Cluster, keys: &[String; 2], cmd: &mut Command, name: &str, items: usize) {
    run(cmd, name);
    assert_eq!(items_on_their_shards(c).await, items);
    transfers_applied_once(c, keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg() {
    let (c, keys) = cluster().await;
    let script = drivers_dir().join("psycopg_check.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(c.uri()).args(&keys);
    check(&c, &keys, &mut cmd, "psycopg", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg() {
    let (c, keys) = cluster().await;
    let script = drivers_dir().join("asyncpg_check.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(c.uri()).args(&keys);
    check(&c, &keys, &mut cmd, "asyncpg", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres() {
    let (c, keys) = cluster().await;
    let dir = drivers_dir().join("node");
    assert!(
        dir.join("node_modules/pg-cursor").exists(),
        "node-postgres is missing; {HINT}"
    );
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("pg_check.js")).arg(c.uri()).args(&keys);
    check(&c, &keys, &mut cmd, "node-postgres", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc() {
    let (c, keys) = cluster().await;
    let jar = Path::new("/usr/share/java/postgresql.jar");
    assert!(jar.exists(), "pgjdbc is missing; {HINT}");
    let classes = c.shards.dir.join("jdbc-classes");
    std::fs::create_dir_all(&classes).unwrap();
    let source = drivers_dir().join("jdbc/JdbcCheck.java");
    run_expecting(
        Command::new("javac")
            .arg("-d")
            .arg(&classes)
            .arg("-cp")
            .arg(jar)
            .arg(source),
        "javac",
        "",
    );
    let cp = format!("{}:{}", classes.display(), jar.display());
    let url = format!("jdbc:postgresql://127.0.0.1:{}/app", c.port());
    let args = [
        "-cp",
        &cp,
        "JdbcCheck",
        &url,
        "app",
        "secret",
        &keys[0],
        &keys[1],
    ];
    check(&c, &keys, Command::new("java").args(args), "pgjdbc", 80).await;
}

/// Block semantics through psycopg and asyncpg, each checked against the same
/// code run on one plain PostgreSQL: psycopg's pipeline with a transaction
/// that fails inside ends IDLE; asyncpg's executemany over every shard is all
/// or nothing outside a transaction and inside one; fetchval/fetchrow of
/// cross-shard reads (row limits on merged portals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_keep_postgresql_block_semantics() {
    let c = Cluster::start(3).await;
    let keys = c.accounts(3, 100).await;
    let plain = crate::harness::Servers::start(1);
    let direct = plain.connect(0).await;
    exec(&direct, crate::harness::ACCOUNTS).await;
    for k in &keys {
        exec(
            &direct,
            &format!("INSERT INTO accounts (id, balance) VALUES ({k}, 100)"),
        )
        .await;
    }
    let plain_uri = format!(
        "postgres://postgres:{}@127.0.0.1:{}/postgres",
        pieskieo::cluster::SUPERUSER_PASSWORD,
        plain.ports()[0]
    );
    let list: Vec<String> = keys.iter().map(i64::to_string).collect();
    let mut cmd = Command::new("python3");
    cmd.arg(drivers_dir().join("sessions_check.py"))
        .arg(c.uri())
        .arg(plain_uri)
        .arg(list.join(","));
    run_expecting(&mut cmd, "sessions_check.py", "sessions ok");
    for i in 0..3 {
        assert_eq!(crate::harness::prepared(&c.shard(i).await).await, 0);
    }
}

/// SQLAlchemy 2 ORM on psycopg 3 (tests/drivers/sqlalchemy_check.py): a
/// parent table sharded by its bigserial id, children co-located by
/// parent_id; create_all through the proxy, inserts that leave keys to the
/// cluster, get/filter/exclude/pagination/count/aggregates, select_for_update
/// and transactions over two shards, bulk inserts — every answer equal to the
/// same code's on one plain PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_orm_matches_one_postgres() {
    let tables = r#"
[[tables]]
name = "parents"
key = "id"
key_type = "int8"

[[tables]]
name = "children"
key = "parent_id"
key_type = "int8"
"#;
    let c = orm_check(tables, "sqlalchemy_check.py", "sqlalchemy ok").await;
    for i in 0..3 {
        let n = rows(&c.shard(i).await, "SELECT count(*) FROM parents").await;
        assert_ne!(n[0][0].as_deref(), Some("0"), "shard {i} holds no parent");
    }
}

/// A small Django app (tests/drivers/django_check.py): migrate through the
/// proxy, create/bulk_create with keys chosen by the cluster, entries
/// co-located with their account, get/filter/exclude/pagination/count/
/// aggregate/annotate, select_for_update in transaction.atomic over two
/// shards (commit and rollback), delete — equal to one plain PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_orm_matches_one_postgres() {
    let tables = r#"
[[tables]]
name = "djapp_account"
key = "id"
key_type = "int8"

[[tables]]
name = "djapp_entry"
key = "account_id"
key_type = "int8"
"#;
    orm_check(tables, "django_check.py", "django ok").await;
}

/// Runs an ORM check script against Pieskieo over 3 shards with `tables`
/// and against one plain PostgreSQL; it must print `ok`. Nothing is left
/// prepared on any shard afterwards. Returns the cluster for more checks.
async fn orm_check(tables: &str, script: &str, ok: &str) -> Cluster {
    let c = Cluster::start_with(3, tables).await;
    let plain = crate::harness::Servers::start(1);
    let plain_uri = format!(
        "postgres://postgres:{}@127.0.0.1:{}/postgres",
        pieskieo::cluster::SUPERUSER_PASSWORD,
        plain.ports()[0]
    );
    let mut cmd = Command::new("python3");
    cmd.arg(drivers_dir().join(script))
        .arg(c.uri())
        .arg(plain_uri);
    run_expecting(&mut cmd, script, ok);
    for i in 0..3 {
        assert_eq!(crate::harness::prepared(&c.shard(i).await).await, 0);
    }
    c
}
