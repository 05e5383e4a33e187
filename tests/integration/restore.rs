//! Restores through Pieskieo: a database dumped from one plain PostgreSQL
//! (`pg_dump`, plain and custom format) is restored through the proxy into
//! a fresh cluster (psql and `pg_restore`), its sharded tables' rows landing
//! on their keys' shards; reads through the proxy then give what the plain
//! server gives, and a dump taken back through the proxy restores the same
//! rows again.

use std::process::Command;

use pieskieo::router::KeyValue;

use crate::harness::{prepared, rows, Cluster, Servers};

/// Sharded `accounts` and `users` (by id and email), reference `countries`,
/// unsharded `notes` (serial key); constraints, an index, a foreign key to
/// the reference table, values that need escapes.
const SCHEMA: &str = "
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE accounts (id bigint PRIMARY KEY, balance numeric(12,2) NOT NULL CHECK (balance >= 0), note text, opened date DEFAULT current_date);
CREATE INDEX accounts_balance ON accounts (balance);
CREATE TABLE users (email text PRIMARY KEY, country text REFERENCES countries (code), tags text[], data jsonb);
CREATE TABLE notes (id serial PRIMARY KEY, body text);
INSERT INTO countries VALUES ('pl', 'Poland'), ('fr', 'France'), ('jp', 'Japan');
INSERT INTO accounts SELECT i, i * 1.5, CASE WHEN i % 7 = 0 THEN NULL ELSE E'note\\t' || i || E'\\n\\\\' END, DATE '2020-01-01' + i FROM generate_series(1, 3000) i;
INSERT INTO users SELECT 'user' || i || '@example.com', (ARRAY['pl', 'fr', 'jp'])[1 + i % 3], ARRAY['a' || i, 'b,\"q\"'], jsonb_build_object('n', i) FROM generate_series(1, 500) i;
INSERT INTO users VALUES ('zoë@example.com', 'pl', NULL, NULL);
INSERT INTO notes (body) VALUES ('one'), (E'two\\nlines'), ('three');
";

const QUERIES: [&str; 5] = [
    "SELECT id, balance, note, opened FROM accounts ORDER BY id",
    "SELECT email, country, tags, data FROM users ORDER BY email COLLATE \"C\"",
    "SELECT code, name FROM countries ORDER BY code",
    "SELECT id, body FROM notes ORDER BY id",
    "SELECT count(*), sum(balance), max(opened) FROM accounts",
];

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("ERROR"), "{what}: {stderr}");
}

/// Each shard holds only rows of its keys; returns the rows of both sharded tables.
async fn placed(c: &Cluster) -> usize {
    let mut n = 0;
    for i in 0..c.shards.servers.len() {
        let s = c.shard(i).await;
        for r in s.query("SELECT id FROM accounts", &[]).await.unwrap() {
            let id: i64 = r.get(0);
            assert_eq!(c.shard_of("accounts", KeyValue::Int(id)), i, "id {id}");
            n += 1;
        }
        for r in s.query("SELECT email FROM users", &[]).await.unwrap() {
            let e: String = r.get(0);
            assert_eq!(c.shard_of("users", KeyValue::Text(e.clone())), i, "{e}");
            n += 1;
        }
        let countries: i64 = s
            .query_one("SELECT count(*) FROM countries", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(countries, 3, "the reference table on shard {i}");
        assert_eq!(prepared(&s).await, 0, "shard {i}");
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_dump_restores_through_the_proxy() {
    let source = Servers::start(1);
    source.connect(0).await.batch_execute(SCHEMA).await.unwrap();
    let src = source.connect(0).await;
    let mut expected = Vec::new();
    for q in QUERIES {
        expected.push(rows(&src, q).await);
    }
    let dir = std::env::temp_dir().join(format!("pieskieo-restore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // `inserts`: a plain dump of INSERT statements without column lists
    // (`pg_dump --inserts`), one per row.
    for format in ["p", "c", "inserts"] {
        let file = dir.join(format!("source.{format}"));
        let mut dump = Command::new("pg_dump");
        match format {
            "inserts" => dump.args(["-F", "p", "--inserts", "-f"]),
            f => dump.args(["-F", f, "-f"]),
        };
        run(
            dump.arg(&file).arg(source.url(0)),
            "pg_dump of the plain server",
        );
        let c = Cluster::start(3).await;
        if format != "c" {
            run(
                Command::new("psql")
                    .arg(c.uri())
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
                    .arg(&file),
                "psql -f through the proxy",
            );
        } else {
            run(
                Command::new("pg_restore")
                    .args(["--no-owner", "--exit-on-error", "-d"])
                    .arg(c.uri())
                    .arg(&file),
                "pg_restore through the proxy",
            );
        }
        let client = c.client().await;
        for (q, want) in QUERIES.iter().zip(&expected) {
            assert_eq!(&rows(&client, q).await, want, "-F{format}: {q}");
        }
        assert_eq!(placed(&c).await, 3501, "-F{format}: every row, once");
        // The restored sequence goes on where the source's stopped.
        assert_eq!(
            rows(
                &client,
                "INSERT INTO notes (body) VALUES ('four') RETURNING id"
            )
            .await,
            vec![vec![Some("4".to_string())]]
        );

        // And back out through the proxy, into one plain PostgreSQL.
        let back = dir.join(format!("back.{format}"));
        run(
            Command::new("pg_dump")
                .args([
                    "-F",
                    if format == "c" { "c" } else { "p" },
                    "--no-owner",
                    "--exclude-schema=pieskieo",
                    "-f",
                ])
                .arg(&back)
                .arg(c.uri()),
            "pg_dump through the proxy",
        );
        let again = Servers::start(1);
        if format != "c" {
            run(
                Command::new("psql")
                    .arg(again.url(0))
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
                    .arg(&back),
                "psql -f into plain PostgreSQL",
            );
        } else {
            run(
                Command::new("pg_restore")
                    .args(["--no-owner", "--exit-on-error", "-d"])
                    .arg(again.url(0))
                    .arg(&back),
                "pg_restore into plain PostgreSQL",
            );
        }
        let o = again.connect(0).await;
        for (q, want) in QUERIES[..3].iter().zip(&expected) {
            assert_eq!(&rows(&o, q).await, want, "round trip -F{format}: {q}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
