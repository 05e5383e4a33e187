//! `INSERT INTO sharded (cols) SELECT ...` over unsharded data, against one
//! plain PostgreSQL: the values take the target columns' types by
//! PostgreSQL's own assignment rules (a numeric rounds into an integer, a
//! too-long string fails as it would), and an error reads as PostgreSQL's,
//! its position in the client's statement included.

use std::process::{Command, Stdio};

use pieskieo::router::KeyValue;

use crate::harness::{exec, Cluster, Servers};

const TABLES: &str = "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note varchar(3), at timestamptz DEFAULT '2020-01-01'); CREATE TABLE source (n numeric, t text)";

fn psql(url: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .expect("psql is installed (apt-get install -y postgresql-client)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_select_values_take_the_columns_types_as_in_postgresql() {
    let c = Cluster::start(3).await;
    let plain = Servers::start(1);
    let oracle = plain.url(0);
    let client = c.client().await;
    exec(&client, TABLES).await;
    plain.connect(0).await.batch_execute(TABLES).await.unwrap();
    let fill = "INSERT INTO source VALUES (1.5, 'a'), (2.49, 'bb'), (-3.5, 'ccc')";
    for url in [c.uri(), oracle.clone()] {
        assert!(psql(&url, fill).0);
    }

    let cases = [
        // Assignment casts: numeric to bigint rounds, text to varchar(3).
        "INSERT INTO accounts (id, balance) SELECT i, i * 1.5 FROM generate_series(1, 20) i",
        "INSERT INTO accounts (id, balance, note) SELECT n * 10, n, t FROM source",
        "INSERT INTO accounts (id, balance, note) SELECT i, i, 'abc  ' FROM generate_series(1, 3) i",
        // The key too: rounded before it is routed.
        "insert into accounts (balance, id) select 5, n * 2 from source -- a comment",
        // Errors: PostgreSQL's words, SQLSTATE and position.
        "INSERT INTO accounts (id, balance, note) SELECT i, i, 'abcd' FROM generate_series(1, 3) i",
        "INSERT INTO accounts (id, balance) SELECT t, 1 FROM source",
        "INSERT INTO accounts (id, balance)\n  SELECT i, no_such_column FROM generate_series(1, 3) i",
        "INSERT INTO accounts (id, balance) SELECT i, 1 / (i - 2) FROM generate_series(1, 3) i",
        "INSERT INTO accounts (id, balance) SELECT NULL::bigint, 1",
    ];
    for sql in cases {
        let (ok_p, out_p, err_p) = psql(&c.uri(), sql);
        let (ok_o, out_o, err_o) = psql(&oracle, sql);
        assert_eq!(
            (ok_p, &out_p, &err_p),
            (ok_o, &out_o, &err_o),
            "{sql}: through Pieskieo vs PostgreSQL"
        );
        let verbose = format!("\\set VERBOSITY verbose\n{sql}");
        let code = |url: &str| {
            let out = Command::new("psql")
                .arg(url)
                .args(["-X", "-A", "-t"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .and_then(|mut ch| {
                    use std::io::Write;
                    ch.stdin.take().unwrap().write_all(verbose.as_bytes())?;
                    ch.wait_with_output()
                })
                .unwrap();
            let e = String::from_utf8_lossy(&out.stderr).into_owned();
            // The first line: "ERROR:  <SQLSTATE>: <message>".
            e.lines().next().unwrap_or("").to_string()
        };
        if !ok_o {
            assert_eq!(code(&c.uri()), code(&oracle), "{sql}: SQLSTATE");
        }
        let q = "SELECT id, balance, note, at FROM accounts ORDER BY id";
        assert_eq!(psql(&c.uri(), q), psql(&oracle, q), "{sql}: rows");
        for i in 0..c.shards.servers.len() {
            let s = c.shard(i).await;
            for r in s.query("SELECT id FROM accounts", &[]).await.unwrap() {
                let id: i64 = r.get(0);
                assert_eq!(c.shard_of("accounts", KeyValue::Int(id)), i, "id {id}");
            }
        }
        exec(&client, "TRUNCATE accounts").await;
        assert!(psql(&oracle, "TRUNCATE accounts").0);
    }
    // A target the block itself created (and holds locked): its column
    // types are read where the block sees them, and nothing waits.
    let sql = "BEGIN; CREATE TABLE items (id bigint PRIMARY KEY, name varchar(2)); INSERT INTO items (id, name) SELECT i * 1.5, 'n' || (i % 10) FROM generate_series(1, 30) i; COMMIT";
    assert_eq!(psql(&c.uri(), sql), psql(&oracle, sql), "{sql}");
    let q = "SELECT id, name FROM items ORDER BY id";
    assert_eq!(psql(&c.uri(), q), psql(&oracle, q));
    let sql = "BEGIN; TRUNCATE items; INSERT INTO items (id, name) SELECT i, 'x' FROM generate_series(1, 30) i; COMMIT";
    assert_eq!(psql(&c.uri(), sql), psql(&oracle, sql), "{sql}");
    assert_eq!(psql(&c.uri(), q), psql(&oracle, q));

    // A SELECT that would wait on the block's own lock (it runs outside
    // the block): refused within a second with 0A000, never a hang, and
    // nothing committed.
    let sql = "BEGIN; LOCK TABLE source IN ACCESS EXCLUSIVE MODE; INSERT INTO accounts (id, balance) SELECT n * 10, 1 FROM source; COMMIT";
    let started = std::time::Instant::now();
    let out = Command::new("psql")
        .arg(c.uri())
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=sqlstate",
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (ok, err) = (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!ok && err.contains("0A000"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let q = "SELECT count(*) FROM accounts";
    assert_eq!(psql(&c.uri(), q).1, "0\n");

    // After the block wrote, a SELECT from tables (run outside the block)
    // would miss those writes: refused, and the block fails whole. Before
    // any write, it runs.
    let sql = "BEGIN; INSERT INTO source VALUES (7, 'x'); INSERT INTO accounts (id, balance) SELECT n * 10, 1 FROM source; COMMIT";
    let (ok, _, err) = psql(&c.uri(), sql);
    assert!(
        !ok && err.contains("would not see the block's writes"),
        "{err}"
    );
    assert_eq!(psql(&c.uri(), "SELECT count(*) FROM source").1, "3\n");
    let sql = "BEGIN; INSERT INTO accounts (id, balance) SELECT n * 100, 1 FROM source; COMMIT";
    assert_eq!(psql(&c.uri(), sql), psql(&oracle, sql), "{sql}");
    assert_eq!(psql(&c.uri(), q), psql(&oracle, q));

    // The proxy's source connection leaves nothing behind: no temporary
    // table, no open transaction, for the next client of that connection.
    for _ in 0..4 {
        let other = c.client().await;
        let n: i64 = other
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relpersistence = 't'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
    }
}
