//! COPY through the proxy with real clients (psql, pgbench, a raw protocol
//! client): rows land on their keys' shards, bad input commits nothing
//! anywhere and gets the error one plain PostgreSQL gives, and the stream
//! is never held whole.

use std::process::Command;

use pieskieo::router::KeyValue;

use crate::harness::{exec, field, prepared, value, Cluster, RawClient, Servers};

const ACCOUNTS: &str = "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0), note text)";

/// Runs psql with `stdin` as its input; returns (ok, stdout, stderr).
fn psql_with(url: &str, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let all: Vec<&str> = ["-A", "-t"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    crate::harness::psql_run(url, &all, stdin, None)
}

/// `n` rows `id<TAB>balance<TAB>note` with ids 1..=n.
fn text_rows(n: i64) -> String {
    (1..=n)
        .map(|i| format!("{i}\t{}\tnote \\\\ {i}\\ttab\n", i * 10))
        .collect()
}

/// Rows of `accounts` on each shard, read on the shard itself.
async fn per_shard(c: &Cluster, table: &str) -> Vec<i64> {
    let mut v = Vec::new();
    for i in 0..c.shards.servers.len() {
        let s = c.shard(i).await;
        v.push(
            value(&s, &format!("SELECT count(*) FROM {table}"))
                .await
                .parse()
                .unwrap(),
        );
    }
    v
}

/// Every id on every shard belongs there.
async fn check_placement(c: &Cluster, table: &str) {
    for i in 0..c.shards.servers.len() {
        let s = c.shard(i).await;
        for row in s
            .simple_query(&format!("SELECT id FROM {table}"))
            .await
            .unwrap()
        {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = row {
                let id: i64 = r.get(0).unwrap().parse().unwrap();
                assert_eq!(
                    c.shard_of(table, KeyValue::Int(id)),
                    i,
                    "id {id} on shard {i}"
                );
            }
        }
    }
}

async fn no_prepared(c: &Cluster) {
    for i in 0..c.shards.servers.len() {
        assert_eq!(prepared(&c.shard(i).await).await, 0, "shard {i}");
    }
}

/// Sends a COPY and its data in `step`-byte CopyData pieces; returns the reply.
async fn raw_copy(
    raw: &mut RawClient,
    sql: &str,
    data: &[u8],
    step: usize,
) -> crate::harness::Reply {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    raw.send(b'Q', &b).await;
    let (t, body) = raw.read().await;
    if t != b'G' {
        let mut rest = raw.until_ready().await;
        rest.messages.insert(0, (t, body));
        return rest;
    }
    for piece in data.chunks(step) {
        raw.send(b'd', piece).await;
    }
    raw.send(b'c', &[]).await;
    raw.until_ready().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_lands_every_row_on_its_shard_in_any_pieces() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, ACCOUNTS).await;
    let data = text_rows(3000);
    let mut raw = RawClient::connect(c.port()).await;
    // 7-byte pieces: nearly every row straddles CopyData messages.
    let r = raw_copy(&mut raw, "COPY accounts FROM STDIN", data.as_bytes(), 7).await;
    assert_eq!(r.tags(), ["COPY 3000"], "{:?}", r.error_codes());
    assert_eq!(r.status, b'I');
    let counts = per_shard(&c, "accounts").await;
    assert_eq!(counts.iter().sum::<i64>(), 3000);
    assert!(counts.iter().all(|n| *n > 800), "{counts:?}");
    check_placement(&c, "accounts").await;
    // Values arrive exactly (escapes decoded by the shard).
    assert_eq!(
        value(&client, "SELECT note FROM accounts WHERE id = 42").await,
        "note \\ 42\ttab"
    );
    assert_eq!(
        value(&client, "SELECT sum(balance) FROM accounts").await,
        "45015000"
    );
    no_prepared(&c).await;

    // CSV with a header, a column list in another order, quotes and embedded newlines.
    exec(&client, "TRUNCATE accounts").await;
    let mut csv = String::from("note,balance,id\r\n");
    for i in 1..=500 {
        csv.push_str(&format!("\"line one\nline \"\"two\"\", {i}\",{i},{i}\r\n"));
    }
    let r = raw_copy(
        &mut raw,
        "COPY accounts (note, balance, id) FROM STDIN WITH (FORMAT csv, HEADER true)",
        csv.as_bytes(),
        13,
    )
    .await;
    assert_eq!(r.tags(), ["COPY 500"], "{:?}", r.messages);
    check_placement(&c, "accounts").await;
    assert_eq!(
        value(&client, "SELECT note FROM accounts WHERE id = 7").await,
        "line one\nline \"two\", 7"
    );
    // The old option spelling, another delimiter and NULL string.
    exec(&client, "TRUNCATE accounts").await;
    let r = raw_copy(
        &mut raw,
        "COPY accounts FROM STDIN WITH DELIMITER '|' NULL 'nothing'",
        b"1|5|nothing\n2|6|x\n\\.\n",
        100,
    )
    .await;
    assert_eq!(r.tags(), ["COPY 2"]);
    assert_eq!(
        value(&client, "SELECT count(*) FROM accounts WHERE note IS NULL").await,
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_inside_a_block_commits_or_rolls_back_with_it() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, ACCOUNTS).await;
    let mut raw = RawClient::connect(c.port()).await;
    raw.query("BEGIN").await;
    let r = raw_copy(
        &mut raw,
        "COPY accounts FROM STDIN",
        text_rows(100).as_bytes(),
        50,
    )
    .await;
    assert_eq!((r.tags(), r.status), (vec!["COPY 100".to_string()], b'T'));
    // The block sees its rows; others do not yet.
    let r = raw.query("SELECT count(*) FROM accounts").await;
    assert_eq!(r.status, b'T');
    assert_eq!(value(&client, "SELECT count(*) FROM accounts").await, "0");
    raw.query("ROLLBACK").await;
    assert_eq!(per_shard(&c, "accounts").await, vec![0, 0, 0]);

    raw.query("BEGIN").await;
    raw_copy(
        &mut raw,
        "COPY accounts FROM STDIN",
        text_rows(100).as_bytes(),
        50,
    )
    .await;
    let r = raw.query("COMMIT").await;
    assert_eq!(r.tags(), ["COMMIT"]);
    assert_eq!(value(&client, "SELECT count(*) FROM accounts").await, "100");

    // A bad row inside a block fails the block, as in PostgreSQL.
    raw.query("BEGIN").await;
    let r = raw_copy(&mut raw, "COPY accounts FROM STDIN", b"500\t1\tx\n501\n", 4).await;
    assert_eq!(
        (r.error_codes(), r.status),
        (vec!["22P04".to_string()], b'E')
    );
    let r = raw.query("SELECT 1").await;
    assert_eq!(r.error_codes(), ["25P02"]);
    raw.query("ROLLBACK").await;
    assert_eq!(value(&client, "SELECT count(*) FROM accounts").await, "100");
    no_prepared(&c).await;
}

/// Each case: the COPY, its data; the same through Pieskieo and into one
/// plain PostgreSQL must give the same psql error text (message and
/// CONTEXT, line number included) and SQLSTATE, and leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_copy_input_gets_postgresql_s_error_and_commits_nothing() {
    let c = Cluster::start(3).await;
    let plain = Servers::start(1);
    let oracle = plain.url(0);
    let client = c.client().await;
    exec(&client, ACCOUNTS).await;
    let o = plain.connect(0).await;
    o.batch_execute(ACCOUNTS).await.unwrap();

    let good = text_rows(2000);
    let mut cases: Vec<(&str, &str, String)> = vec![
        (
            "wrong column count",
            "COPY accounts FROM STDIN",
            format!("{good}2001\t5\n"),
        ),
        (
            "extra column",
            "COPY accounts FROM STDIN",
            format!("{good}2001\t5\tx\ty\n"),
        ),
        (
            "bad key",
            "COPY accounts FROM STDIN",
            format!("{good}abc\t5\tx\n"),
        ),
        (
            "key out of range",
            "COPY accounts FROM STDIN",
            format!("{good}99999999999999999999\t5\tx\n"),
        ),
        (
            "NULL key",
            "COPY accounts FROM STDIN",
            format!("{good}\\N\t5\tx\n"),
        ),
        (
            "bad value on a shard",
            "COPY accounts FROM STDIN",
            format!("{}1500.5\t1x\tx\n{}", text_rows(1000), ""),
        ),
        (
            "check violation",
            "COPY accounts FROM STDIN",
            format!("{good}2001\t-5\tx\n"),
        ),
        (
            "duplicate key",
            "COPY accounts FROM STDIN",
            format!("{good}1\t5\tx\n"),
        ),
        (
            "csv unterminated",
            "COPY accounts FROM STDIN (FORMAT csv)",
            "1,2,\"open\n".to_string(),
        ),
        (
            "csv NULL key",
            "COPY accounts FROM STDIN (FORMAT csv)",
            "1,2,a\n,3,b\n".to_string(),
        ),
    ];
    // A bad value in the middle of a large COPY: the shard's own error,
    // its line number mapped back to the client's.
    let mut middle = text_rows(5000);
    middle.push_str("5001\tnot-a-number\tx\n");
    for i in 5002..=10_000 {
        middle.push_str(&format!("{i}\t{i}\tx\n"));
    }
    cases.push((
        "bad value in the middle",
        "COPY accounts FROM STDIN",
        middle,
    ));
    // A shard's error on an early line beats the proxy's on a later one.
    let mut both = text_rows(10);
    both.push_str("11\tbad\tx\n");
    for i in 12..=2000 {
        both.push_str(&format!("{i}\t{i}\tx\n"));
    }
    both.push_str("2001\n");
    cases.push(("shard error first", "COPY accounts FROM STDIN", both));
    for (name, sql, data) in &cases {
        let args = ["-c", sql];
        let (ok_p, _, err_p) = psql_with(&c.uri(), &args, data.as_bytes());
        let (ok_o, _, err_o) = psql_with(&oracle, &args, data.as_bytes());
        assert!(!ok_p && !ok_o, "{name}: both fail");
        assert_eq!(
            err_p, err_o,
            "{name}: psql's report through Pieskieo vs PostgreSQL"
        );
        let verbose = ["-v", "VERBOSITY=sqlstate", "-c", sql];
        let (_, _, code_p) = psql_with(&c.uri(), &verbose, data.as_bytes());
        let (_, _, code_o) = psql_with(&oracle, &verbose, data.as_bytes());
        assert_eq!(code_p, code_o, "{name}: SQLSTATE");
        assert_eq!(
            per_shard(&c, "accounts").await,
            vec![0, 0, 0],
            "{name}: nothing anywhere"
        );
        no_prepared(&c).await;
    }

    // A key column that allows NULL: PostgreSQL would take the row, a
    // sharded table cannot (as for INSERT): 23502, nothing committed.
    exec(&client, "CREATE TABLE items (id bigint, name text)").await;
    let mut raw = RawClient::connect(c.port()).await;
    let r = raw_copy(
        &mut raw,
        "COPY items FROM STDIN",
        b"1\ta\n\\N\tb\n3\tc\n",
        5,
    )
    .await;
    assert_eq!(r.error_codes(), ["23502"]);
    let ctx = r
        .messages
        .iter()
        .find(|m| m.0 == b'E')
        .map(|m| field(&m.1, b'W'))
        .unwrap();
    assert_eq!(ctx, "COPY items, line 2: \"\\N\tb\"");
    assert_eq!(per_shard(&c, "items").await, vec![0, 0, 0]);

    // CopyFail from the client: 57014 and nothing committed.
    raw.send(b'Q', b"COPY accounts FROM STDIN\0").await;
    assert_eq!(raw.read().await.0, b'G');
    raw.send(b'd', good.as_bytes()).await;
    raw.send(b'f', b"the user gave up\0").await;
    let r = raw.until_ready().await;
    assert_eq!(
        (r.error_codes(), r.status),
        (vec!["57014".to_string()], b'I')
    );
    let msg = r
        .messages
        .iter()
        .find(|m| m.0 == b'E')
        .map(|m| field(&m.1, b'M'))
        .unwrap();
    assert_eq!(msg, "COPY from stdin failed: the user gave up");
    // Data after an error is ignored, as PostgreSQL does, and the session goes on.
    raw.send(b'd', b"1\t2\t3\n").await;
    raw.send(b'c', &[]).await;
    assert_eq!(raw.query("SELECT 1").await.status, b'I');
    assert_eq!(per_shard(&c, "accounts").await, vec![0, 0, 0]);
    no_prepared(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_in_for_sharded_reference_and_unsharded_tables() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, ACCOUNTS).await;
    exec(
        &client,
        "CREATE TABLE countries (code text PRIMARY KEY, name text)",
    )
    .await;
    exec(&client, "CREATE TABLE notes (id int, body text)").await;
    let dir = std::env::temp_dir().join(format!("pieskieo-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let accounts = dir.join("accounts.csv");
    let mut csv = String::from("id,balance,note\n");
    for i in 1..=1000 {
        csv.push_str(&format!("{i},{i},\"n,{i}\"\n"));
    }
    std::fs::write(&accounts, &csv).unwrap();
    let countries = dir.join("countries.txt");
    std::fs::write(&countries, "pl\tPoland\nfr\tFrance\nde\tGermany\n").unwrap();
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "1\tone\n2\ttwo\n").unwrap();
    let (ok, out, err) = psql_with(
        &c.uri(),
        &[
            "-c",
            &format!(
                "\\copy accounts FROM '{}' WITH (FORMAT csv, HEADER)",
                accounts.display()
            ),
            "-c",
            &format!("\\copy countries FROM '{}'", countries.display()),
            "-c",
            &format!("\\copy notes FROM '{}'", notes.display()),
        ],
        b"",
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["COPY 1000", "COPY 3", "COPY 2"]
    );
    check_placement(&c, "accounts").await;
    assert_eq!(
        per_shard(&c, "countries").await,
        vec![3, 3, 3],
        "every shard has every row"
    );
    assert_eq!(
        per_shard(&c, "notes").await,
        vec![2, 0, 0],
        "the default shard only"
    );
    assert_eq!(
        value(&client, "SELECT note FROM accounts WHERE id = 9").await,
        "n,9"
    );
    no_prepared(&c).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// pgbench's own initialisation (client-side generation: `COPY ... WITH
/// (FREEZE ON)` inside its block) through the proxy, its four tables
/// sharded; then a TPC-B run and pgbench's sums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initialises_and_runs_through_the_proxy() {
    let c = Cluster::start(3).await;
    // pgbench's default steps: drop, create, generate (COPY), vacuum
    // (every shard on its own), primary keys.
    let out = Command::new("pgbench")
        .args(["-i", "-s", "1"])
        .arg(c.uri())
        .output()
        .expect("pgbench is installed");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let client = c.client().await;
    assert_eq!(
        value(&client, "SELECT count(*) FROM pgbench_accounts").await,
        "100000"
    );
    assert_eq!(
        value(&client, "SELECT count(*) FROM pgbench_branches").await,
        "1"
    );
    assert_eq!(
        value(&client, "SELECT count(*) FROM pgbench_tellers").await,
        "10"
    );
    let counts = per_shard(&c, "pgbench_accounts").await;
    assert!(counts.iter().all(|n| *n > 30_000), "{counts:?}");
    no_prepared(&c).await;

    let run = Command::new("pgbench")
        .args(["-n", "-c", "2", "-j", "1", "-T", "3"])
        .arg(c.uri())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let history: i64 = value(&client, "SELECT count(*) FROM pgbench_history")
        .await
        .parse()
        .unwrap();
    assert!(history > 0, "{text}");
    let mut sums = Vec::new();
    for q in [
        "SELECT sum(abalance) FROM pgbench_accounts",
        "SELECT sum(bbalance) FROM pgbench_branches",
        "SELECT sum(tbalance) FROM pgbench_tellers",
        "SELECT sum(delta) FROM pgbench_history",
    ] {
        sums.push(value(&client, q).await);
    }
    assert!(sums.iter().all(|s| *s == sums[0]), "TPC-B sums: {sums:?}");
    no_prepared(&c).await;
}

/// A client that disappears mid-COPY, and a shard that dies mid-COPY:
/// nothing commits anywhere and the proxy serves the next COPY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_or_a_dead_shard_mid_copy_commits_nothing() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, ACCOUNTS).await;
    let data = text_rows(20_000);
    {
        let mut raw = RawClient::connect(c.port()).await;
        raw.send(b'Q', b"COPY accounts FROM STDIN\0").await;
        assert_eq!(raw.read().await.0, b'G');
        raw.send(b'd', &data.as_bytes()[..data.len() / 2]).await;
        // Dropped here: the socket closes mid-stream.
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(per_shard(&c, "accounts").await, vec![0, 0, 0]);
    no_prepared(&c).await;
    let mut raw = RawClient::connect(c.port()).await;
    let r = raw_copy(&mut raw, "COPY accounts FROM STDIN", data.as_bytes(), 8192).await;
    assert_eq!(r.tags(), ["COPY 20000"]);
    exec(&client, "TRUNCATE accounts").await;

    // Shard 2 dies while rows stream.
    raw.send(b'Q', b"COPY accounts FROM STDIN\0").await;
    assert_eq!(raw.read().await.0, b'G');
    raw.send(b'd', &data.as_bytes()[..data.len() / 2]).await;
    c.shards.servers[2].stop("immediate").unwrap();
    for piece in data.as_bytes()[data.len() / 2..].chunks(4096) {
        raw.send(b'd', piece).await;
    }
    raw.send(b'c', &[]).await;
    let r = raw.until_ready().await;
    assert_eq!(r.status, b'I');
    assert_eq!(r.error_codes().len(), 1, "{:?}", r.messages);
    c.shards.servers[2].start().unwrap();
    assert_eq!(per_shard(&c, "accounts").await, vec![0, 0, 0]);
    no_prepared(&c).await;
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// psql's raw stdout bytes for one command.
fn psql_bytes(url: &str, sql: &str) -> Vec<u8> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_gives_every_shard_s_rows_once() {
    let c = Cluster::start(3).await;
    let plain = Servers::start(1);
    let oracle = plain.url(0);
    let client = c.client().await;
    exec(&client, ACCOUNTS).await;
    plain
        .connect(0)
        .await
        .batch_execute(ACCOUNTS)
        .await
        .unwrap();
    let data = text_rows(1000);
    for url in [c.uri(), oracle.clone()] {
        let (ok, _, err) = psql_with(&url, &["-c", "COPY accounts FROM STDIN"], data.as_bytes());
        assert!(ok, "{err}");
    }
    // Text and CSV: the same lines (one header), in shard order.
    for sql in [
        "COPY accounts TO STDOUT",
        "COPY accounts (note, id) TO STDOUT WITH (FORMAT csv, HEADER)",
        "COPY (SELECT id, balance * 2 FROM accounts WHERE balance > 5000) TO STDOUT (FORMAT csv)",
        "COPY (SELECT * FROM accounts WHERE id = 77) TO STDOUT",
    ] {
        let mine = String::from_utf8(psql_bytes(&c.uri(), sql)).unwrap();
        let theirs = String::from_utf8(psql_bytes(&oracle, sql)).unwrap();
        if sql.contains("HEADER") {
            assert_eq!(mine.lines().next(), Some("note,id"), "{sql}");
            assert_eq!(mine.matches("note,id").count(), 1, "one header: {sql}");
        }
        assert_eq!(sorted_lines(&mine), sorted_lines(&theirs), "{sql}");
    }
    // The tag, through a raw client: COPY n summed, one CopyDone.
    let mut raw = RawClient::connect(c.port()).await;
    let r = raw.query("COPY accounts TO STDOUT").await;
    assert_eq!(r.tags(), ["COPY 1000"]);
    let kinds: Vec<u8> = r
        .messages
        .iter()
        .map(|m| m.0)
        .filter(|t| *t != b'd')
        .collect();
    assert_eq!(kinds, [b'H', b'c', b'C']);

    // Binary: one header, one trailer; it loads back into PostgreSQL whole.
    let bin = psql_bytes(&c.uri(), "COPY accounts TO STDOUT (FORMAT binary)");
    let o = plain.connect(0).await;
    o.batch_execute("CREATE TABLE back (LIKE accounts)")
        .await
        .unwrap();
    let (ok, _, err) = psql_with(
        &oracle,
        &["-c", "COPY back FROM STDIN (FORMAT binary)"],
        &bin,
    );
    assert!(ok, "{err}");
    let same = "SELECT count(*) FROM (SELECT * FROM accounts EXCEPT SELECT * FROM back) d";
    assert_eq!(value(&o, same).await, "0");
    assert_eq!(value(&o, "SELECT count(*) FROM back").await, "1000");
    // Binary in through the proxy too: the same rows on their shards.
    exec(&client, "TRUNCATE accounts").await;
    let (ok, out, err) = psql_with(
        &c.uri(),
        &["-c", "COPY accounts FROM STDIN (FORMAT binary)"],
        &bin,
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "COPY 1000");
    check_placement(&c, "accounts").await;

    // A query the proxy merges: its rows in order, counted once.
    let mut raw = RawClient::connect(c.port()).await;
    let r = raw
        .query("COPY (SELECT * FROM accounts ORDER BY id) TO STDOUT")
        .await;
    assert_eq!(r.tags(), ["COPY 1000"]);
    // Inside a block: the block's own rows.
    raw.query("BEGIN").await;
    raw.query("DELETE FROM accounts WHERE id <= 10").await;
    let r = raw.query("COPY accounts TO STDOUT").await;
    assert_eq!((r.tags(), r.status), (vec!["COPY 990".to_string()], b'T'));
    raw.query("ROLLBACK").await;
}

/// pg_dump through the proxy (it locks every table, then COPYs each out
/// in one repeatable-read block): schema once, every shard's rows; the dump
/// restores into one plain PostgreSQL with the same rows, plain and -Fc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_through_the_proxy_restores_into_plain_postgresql() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, ACCOUNTS).await;
    exec(
        &client,
        "CREATE TABLE countries (code text PRIMARY KEY, name text)",
    )
    .await;
    exec(&client, "CREATE TABLE notes (id int, body text)").await;
    exec(
        &client,
        "INSERT INTO countries VALUES ('pl', 'Poland'), ('fr', 'France')",
    )
    .await;
    exec(
        &client,
        "INSERT INTO notes VALUES (1, 'one'), (2, E'two\\nlines')",
    )
    .await;
    let (ok, _, err) = psql_with(
        &c.uri(),
        &["-c", "COPY accounts FROM STDIN"],
        text_rows(2000).as_bytes(),
    );
    assert!(ok, "{err}");
    let dir = std::env::temp_dir().join(format!("pieskieo-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let queries = [
        "SELECT id, balance, note FROM accounts ORDER BY id",
        "SELECT code, name FROM countries ORDER BY code",
        "SELECT id, body FROM notes ORDER BY id",
    ];
    let mut expected = Vec::new();
    for q in queries {
        expected.push(crate::harness::rows(&client, q).await);
    }
    for (n, format) in ["p", "c"].iter().enumerate() {
        let file = dir.join(format!("dump.{format}"));
        let out = Command::new("pg_dump")
            .args([
                "-F",
                format,
                "--no-owner",
                "--exclude-schema=pieskieo",
                "-f",
            ])
            .arg(&file)
            .arg(c.uri())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_dump -F{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plain = Servers::start(1);
        let restore = if *format == "p" {
            Command::new("psql")
                .arg(plain.url(0))
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
                .arg(&file)
                .output()
                .unwrap()
        } else {
            Command::new("pg_restore")
                .args(["--no-owner", "-d"])
                .arg(plain.url(0))
                .arg(&file)
                .output()
                .unwrap()
        };
        assert!(
            restore.status.success(),
            "restore {n}: {}",
            String::from_utf8_lossy(&restore.stderr)
        );
        let o = plain.connect(0).await;
        for (q, want) in queries.iter().zip(&expected) {
            assert_eq!(&crate::harness::rows(&o, q).await, want, "-F{format}: {q}");
        }
        if *format == "p" {
            let text = std::fs::read_to_string(&file).unwrap();
            assert_eq!(
                text.matches("CREATE TABLE public.accounts").count(),
                1,
                "schema once"
            );
        }
    }
    // pg_dump's own settings (an empty search_path, ...) stayed with it.
    for _ in 0..4 {
        let other = c.client().await;
        assert_eq!(value(&other, "SHOW search_path").await, "\"$user\", public");
        assert_eq!(value(&other, "SELECT count(*) FROM notes").await, "2");
    }
    no_prepared(&c).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// What pg_dump opens with: `SET TRANSACTION` right after `BEGIN`, then a
/// query. A shard joining must get the SET before the deadlock tag's query
/// takes the snapshot (this failed with 25001 before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_transaction_after_begin_holds_on_every_shard() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, ACCOUNTS).await;
    let mut raw = RawClient::connect(c.port()).await;
    raw.query("BEGIN").await;
    let r = raw
        .query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await;
    assert!(r.error_codes().is_empty(), "{:?}", r.messages);
    let r = raw.query("LOCK TABLE accounts IN ACCESS SHARE MODE").await;
    assert_eq!(
        (r.tags(), r.error_codes()),
        (vec!["LOCK TABLE".to_string()], vec![])
    );
    let r = raw
        .query("SELECT current_setting('transaction_isolation'), count(*) FROM accounts")
        .await;
    assert!(r.error_codes().is_empty(), "{:?}", r.messages);
    raw.query("COMMIT").await;
    // Outside a block, as in PostgreSQL: 25P01.
    let r = raw.query("LOCK TABLE accounts").await;
    assert_eq!(r.error_codes(), ["25P01"]);
}

/// A COPY PostgreSQL refuses before any data (no such table, column or
/// option) gets PostgreSQL's error, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_refused_at_the_start_gets_postgresql_s_error() {
    let c = Cluster::start(3).await;
    let plain = Servers::start(1);
    let client = c.client().await;
    exec(&client, ACCOUNTS).await;
    plain
        .connect(0)
        .await
        .batch_execute(ACCOUNTS)
        .await
        .unwrap();
    exec(&client, "DROP TABLE IF EXISTS items").await;
    for sql in [
        "COPY items FROM STDIN",
        "COPY accounts (id, nope) FROM STDIN",
        "COPY accounts FROM STDIN WITH (FORMAT csv, DELIMITER 'ab')",
        "COPY accounts FROM STDIN WITH (FREEZE)",
    ] {
        let (ok_p, _, err_p) = psql_with(&c.uri(), &["-c", sql], b"1\t2\tx\n");
        let (ok_o, _, err_o) = psql_with(&plain.url(0), &["-c", sql], b"1\t2\tx\n");
        assert!(!ok_p && !ok_o, "{sql}");
        assert_eq!(err_p, err_o, "{sql}");
    }
    assert_eq!(per_shard(&c, "accounts").await, vec![0, 0, 0]);
    no_prepared(&c).await;
}

/// `INSERT INTO sharded SELECT` from generate_series and from an unsharded
/// table: the SELECT runs on one shard and its rows go to their shards,
/// atomically; pgbench's server-side generation (`-I dtGvp`) through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_into_sharded_select_routes_the_rows() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, ACCOUNTS).await;
    exec(&client, "CREATE TABLE notes (id int, body text)").await;
    exec(
        &client,
        "INSERT INTO notes SELECT g, 'n' || g FROM generate_series(100001, 100100) g",
    )
    .await;
    let mut raw = RawClient::connect(c.port()).await;
    let r = raw
        .query("INSERT INTO accounts (id, balance) SELECT g, g * 10 FROM generate_series(1, 5000) AS g")
        .await;
    assert_eq!(
        (r.tags(), r.status),
        (vec!["INSERT 0 5000".to_string()], b'I')
    );
    check_placement(&c, "accounts").await;
    let r = raw
        .query("INSERT INTO accounts (id, balance, note) SELECT id, id, body FROM notes WHERE id % 2 = 0")
        .await;
    assert_eq!(r.tags(), ["INSERT 0 50"]);
    assert_eq!(
        value(&client, "SELECT note FROM accounts WHERE id = 100010").await,
        "n100010"
    );
    // Inside a block, rolled back with it; a bad row fails it whole.
    raw.query("BEGIN").await;
    raw.query("INSERT INTO accounts (id, balance) SELECT g, 1 FROM generate_series(6001, 7000) g")
        .await;
    raw.query("ROLLBACK").await;
    let r = raw
        .query("INSERT INTO accounts (id, balance) SELECT g, 5000 - g FROM generate_series(8001, 9000) g")
        .await;
    assert_eq!(
        r.error_codes(),
        ["23514"],
        "a negative balance fails the CHECK"
    );
    assert_eq!(
        value(&client, "SELECT count(*) FROM accounts").await,
        "5050"
    );
    no_prepared(&c).await;
    // Refused, saying why.
    for sql in [
        "INSERT INTO accounts (id, balance) SELECT id + 100000, balance FROM accounts",
        "INSERT INTO accounts (id, balance) SELECT g, 1 FROM generate_series(1, 2) g RETURNING id",
        "INSERT INTO accounts (balance) SELECT 1",
    ] {
        assert_eq!(raw.query(sql).await.error_codes(), ["0A000"], "{sql}");
    }

    let out = Command::new("pgbench")
        .args(["-i", "-s", "1", "-I", "dtGvp"])
        .arg(c.uri())
        .output()
        .expect("pgbench is installed");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        value(&client, "SELECT count(*) FROM pgbench_accounts").await,
        "100000"
    );
    assert_eq!(
        value(&client, "SELECT count(*) FROM pgbench_tellers").await,
        "10"
    );
    let counts = per_shard(&c, "pgbench_accounts").await;
    assert!(counts.iter().all(|n| *n > 30_000), "{counts:?}");
    no_prepared(&c).await;
}

/// A COPY over three shards whose proxy is SIGKILLed (a crash failpoint)
/// mid-commit: another proxy's recovery finishes it whole — every row when
/// the decision shard had committed, none when it had not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_proxy_dies_mid_commit_is_finished_whole() {
    use crate::harness::ProxyProcess;
    for (point, committed) in [("after_prepare", false), ("after_decision", true)] {
        let servers = Servers::start(3);
        let survivor = ProxyProcess::start(
            &servers,
            "recovery_interval_ms = 1000\nrecovery_grace_ms = 300",
        )
        .await;
        let s = crate::harness::connect(&survivor.url()).await.unwrap();
        exec(&s, ACCOUNTS).await;
        let mut doomed =
            ProxyProcess::start(&servers, &format!("test_failpoint = \"{point}:crash\"")).await;
        let url = doomed.url();
        let (ok, _, _) = psql_with(
            &url,
            &["-c", "COPY accounts FROM STDIN"],
            text_rows(3000).as_bytes(),
        );
        assert!(!ok, "{point}: the proxy died during the COPY's commit");
        assert!(doomed.wait_exit(10), "{point}: crashed at its failpoint");
        let want = if committed { 3000 } else { 0 };
        let started = std::time::Instant::now();
        loop {
            let mut rows = 0;
            let mut left = 0;
            for i in 0..3 {
                let c = servers.connect(i).await;
                rows += value(&c, "SELECT count(*) FROM accounts")
                    .await
                    .parse::<i64>()
                    .unwrap();
                left += prepared(&c).await;
            }
            if rows == want && left == 0 {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{point}: {rows} rows, {left} prepared"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// The proxy's peak memory (VmHWM of its process) while 1 million rows
/// (about 12 MB) stream through it into 3 shards grows by far less than the
/// input: it holds one unfinished row and a 64 KiB queue per shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_memory_stays_bounded_while_a_million_rows_stream() {
    use crate::harness::ProxyProcess;
    let servers = Servers::start(3);
    let proxy = ProxyProcess::start(&servers, "").await;
    let s = crate::harness::connect(&proxy.url()).await.unwrap();
    exec(&s, ACCOUNTS).await;
    let status = |field: &str| -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let before = status("VmHWM:");
    let rows = 1_000_000;
    let mut data = Vec::with_capacity(16 << 20);
    for i in 1..=rows {
        data.extend_from_slice(format!("{i}\t{}\tn\n", i % 1000).as_bytes());
    }
    let (ok, out, err) = psql_with(&proxy.url(), &["-c", "COPY accounts FROM STDIN"], &data);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("COPY {rows}"));
    let after = status("VmHWM:");
    eprintln!(
        "COPY of {rows} rows ({} MB) through the proxy: its peak RSS {before} kB before, {after} kB after",
        data.len() >> 20
    );
    assert!(
        after.saturating_sub(before) < 12 * 1024,
        "peak RSS grew from {before} kB to {after} kB for {} MB of input",
        data.len() >> 20
    );
}

/// psql's `\copy ... TO` for a reference and an unsharded table, in every
/// format: one shard's rows (each holds the reference table whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_out_of_reference_and_unsharded_tables() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(
        &client,
        "CREATE TABLE countries (code text PRIMARY KEY, name text)",
    )
    .await;
    exec(&client, "CREATE TABLE notes (id int, body text)").await;
    exec(
        &client,
        "INSERT INTO countries VALUES ('pl', 'Poland'), ('fr', 'France')",
    )
    .await;
    exec(
        &client,
        "INSERT INTO notes VALUES (1, 'one'), (2, 'two, too')",
    )
    .await;
    for (table, want) in [
        ("countries", "code,name\nfr,France\npl,Poland\n"),
        ("notes", "id,body\n1,one\n2,\"two, too\"\n"),
    ] {
        let sql = format!(
            "\\copy (SELECT * FROM {table} ORDER BY 1) TO STDOUT WITH (FORMAT csv, HEADER)"
        );
        let (ok, out, err) = psql_with(&c.uri(), &["-c", &sql], b"");
        assert!(ok, "{err}");
        assert_eq!(out, want, "{table}");
        let (ok, out, err) =
            psql_with(&c.uri(), &["-c", &format!("\\copy {table} TO STDOUT")], b"");
        assert!(ok, "{err}");
        assert_eq!(out.lines().count(), 2, "{table}: {out}");
        let bin = psql_bytes(&c.uri(), &format!("COPY {table} TO STDOUT (FORMAT binary)"));
        assert!(
            bin.starts_with(b"PGCOPY\n\xff\r\n\0") && bin.ends_with(&[0xff, 0xff]),
            "{table}"
        );
    }
}

/// psql's whole stdout (rows, then `COPY n`) and whether it succeeded.
fn psql_out(url: &str, sql: &str) -> (bool, Vec<u8>, String) {
    let out = Command::new("psql")
        .arg(url)
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `accounts` with notes that need escaping (tab, newline, backslash,
/// quotes, the delimiters, NULL, the empty string), the same rows through
/// the proxy and in one plain PostgreSQL.
async fn merged_copy_rows(c: &Cluster, plain: &Servers) {
    let mut rows = String::new();
    let notes = [
        "NULL",
        "''",
        "'plain'",
        "E'tab\\there'",
        "E'new\\nline'",
        "E'back\\\\slash'",
        "'say \"hi\"'",
        "'it''s, a comma'",
        "'semi;colon|pipe'",
        "E'cr\\rhere'",
        "'\\.'",
        "'NULL'",
        "'zażółć'",
    ];
    for id in 1..=240i64 {
        if id > 1 {
            rows.push_str(", ");
        }
        let note = notes[(id as usize * 7) % notes.len()];
        rows.push_str(&format!("({id}, {}, {note})", (id * 37) % 101));
    }
    let sql = format!("{ACCOUNTS}; INSERT INTO accounts (id, balance, note) VALUES {rows}");
    c.client().await.batch_execute(&sql).await.unwrap();
    plain.connect(0).await.batch_execute(&sql).await.unwrap();
}

/// `COPY (query) TO STDOUT` whose rows the proxy merges or stages: the
/// same bytes as one plain PostgreSQL, for text, CSV and binary, with the
/// options that change them; psql's `\copy` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_of_a_merged_query_is_what_one_postgresql_writes() {
    let c = Cluster::start(3).await;
    let plain = Servers::start(1);
    merged_copy_rows(&c, &plain).await;
    let oracle = plain.url(0);
    for sql in [
        // ORDER BY across shards: text, CSV with a header, binary.
        "COPY (SELECT * FROM accounts ORDER BY id) TO STDOUT",
        "COPY (SELECT id, note FROM accounts ORDER BY note DESC NULLS LAST, id) TO STDOUT WITH (FORMAT csv, HEADER)",
        "COPY (SELECT * FROM accounts ORDER BY balance, id DESC) TO STDOUT (FORMAT binary)",
        "COPY (SELECT id, balance::numeric / 7 AS q, balance::float8 / 3 AS f, id % 2 = 0 AS even, DATE '2020-01-01' + id::int AS d, ARRAY[id, balance] AS arr, note::varchar(40) AS v FROM accounts ORDER BY id) TO STDOUT (FORMAT binary)",
        "COPY (SELECT id, balance::numeric / 7 AS q, balance::float8 / 3 AS f, DATE '2020-01-01' + id::int AS d, ARRAY[id, balance] AS arr FROM accounts ORDER BY id) TO STDOUT WITH CSV HEADER",
        "COPY (SELECT id, ('10.0.0.' || (id % 250))::inet AS ip, int4range(id::int, id::int + 5) AS r, ARRAY[DATE '2020-01-01' + id::int] AS ds, to_tsvector('simple', coalesce(note, '')) AS tv, ARRAY[note] AS notes FROM accounts ORDER BY id) TO STDOUT (FORMAT binary)",
        "COPY (SELECT id, ('10.0.0.' || (id % 250))::inet AS ip, int4range(id::int, id::int + 5) AS r, ARRAY[DATE '2020-01-01' + id::int] AS ds, to_tsvector('simple', coalesce(note, '')) AS tv, ARRAY[note] AS notes FROM accounts ORDER BY id) TO STDOUT",
        // LIMIT / OFFSET.
        "COPY (SELECT id, balance FROM accounts ORDER BY balance DESC, id LIMIT 7 OFFSET 3) TO STDOUT (FORMAT csv)",
        "COPY (SELECT id FROM accounts ORDER BY id OFFSET 235) TO STDOUT",
        // Aggregates, GROUP BY, DISTINCT.
        "COPY (SELECT balance % 3 AS g, count(*), sum(balance), min(note), avg(balance) FROM accounts GROUP BY 1 ORDER BY 1) TO STDOUT WITH CSV HEADER",
        "COPY (SELECT count(*), max(id), sum(balance) FROM accounts) TO STDOUT",
        "COPY (SELECT DISTINCT balance % 4 FROM accounts ORDER BY 1) TO STDOUT (FORMAT csv, HEADER)",
        "COPY (SELECT DISTINCT note FROM accounts ORDER BY note) TO STDOUT",
        // Two stages: PostgreSQL evaluates the outer part.
        "COPY (SELECT count(*) FROM (SELECT id FROM accounts WHERE balance > 10) s) TO STDOUT",
        "COPY (SELECT count(*), sum(b) FROM (SELECT DISTINCT balance AS b FROM accounts) s) TO STDOUT (FORMAT csv, HEADER)",
        "COPY (SELECT sum(balance) * 100 / count(*), count(*) FROM accounts) TO STDOUT (FORMAT csv, HEADER, FORCE_QUOTE *)",
        "COPY (SELECT round(avg(balance), 2) AS a FROM accounts GROUP BY balance % 5 ORDER BY 1) TO STDOUT (FORMAT binary)",
        // The outer query of two stages merged in turn.
        "COPY (SELECT id, balance FROM accounts WHERE balance > (SELECT avg(balance) FROM accounts) ORDER BY balance, id) TO STDOUT (FORMAT csv, HEADER)",
        // Unnamed and repeated column names.
        "COPY (SELECT id, note, id + 1, 2, note FROM accounts ORDER BY id LIMIT 20) TO STDOUT (FORMAT csv, HEADER)",
        // The options that change the bytes.
        "COPY (SELECT id, note FROM accounts ORDER BY id) TO STDOUT (FORMAT csv, DELIMITER ';', QUOTE '''', ESCAPE '\\', NULL 'NULL', FORCE_QUOTE (note), HEADER)",
        "COPY (SELECT id, note FROM accounts ORDER BY id) TO STDOUT (DELIMITER '|', NULL 'x', HEADER)",
        "COPY (SELECT note, id FROM accounts ORDER BY id) TO STDOUT WITH CSV HEADER QUOTE AS '*' FORCE QUOTE note",
        "COPY (SELECT note FROM accounts ORDER BY id LIMIT 30) TO STDOUT (FORMAT csv)",
        // No rows.
        "COPY (SELECT * FROM accounts WHERE balance < 0 ORDER BY id) TO STDOUT (FORMAT csv, HEADER)",
        "COPY (SELECT * FROM accounts WHERE balance < 0 ORDER BY id) TO STDOUT (FORMAT binary)",
        "COPY (SELECT note, count(*) FROM accounts WHERE balance < 0 GROUP BY note) TO STDOUT",
        "COPY (SELECT count(*) FROM (SELECT id FROM accounts WHERE balance < 0) s) TO STDOUT WITH CSV HEADER",
    ] {
        let (ok, mine, err) = psql_out(&c.uri(), sql);
        assert!(ok, "{sql}: {err}");
        let (ok, theirs, err) = psql_out(&oracle, sql);
        assert!(ok, "{sql} (plain PostgreSQL): {err}");
        assert_eq!(
            String::from_utf8_lossy(&mine),
            String::from_utf8_lossy(&theirs),
            "{sql}"
        );
        assert_eq!(mine, theirs, "{sql}");
    }
    // Two stages whose outer query is only concatenated: the same rows.
    let sql = "COPY (SELECT id, note FROM accounts WHERE balance > (SELECT avg(balance) FROM accounts)) TO STDOUT";
    let (ok, mine, err) = psql_out(&c.uri(), sql);
    assert!(ok, "{sql}: {err}");
    let (_, theirs, _) = psql_out(&oracle, sql);
    assert_eq!(
        sorted_lines(&String::from_utf8_lossy(&mine)),
        sorted_lines(&String::from_utf8_lossy(&theirs))
    );
    // psql's \copy of a sorted query.
    for sql in [
        "\\copy (SELECT * FROM accounts ORDER BY id DESC) TO STDOUT WITH (FORMAT csv, HEADER)",
        "\\copy (SELECT balance, count(*) FROM accounts GROUP BY balance ORDER BY 2 DESC, 1) TO STDOUT",
    ] {
        let (ok, mine, err) = psql_with(&c.uri(), &["-c", sql], b"");
        assert!(ok, "{sql}: {err}");
        let (ok, theirs, err) = psql_with(&oracle, &["-c", sql], b"");
        assert!(ok, "{sql} (plain PostgreSQL): {err}");
        assert!(mine.lines().count() > 10, "{sql}: {mine}");
        assert_eq!(mine, theirs, "{sql}");
    }
    // The messages themselves: CopyOutResponse with the format and each
    // column's format code, the data, CopyDone, `COPY n`.
    let mut raw = RawClient::connect(c.port()).await;
    for (sql, head, tag) in [
        (
            "COPY (SELECT id, note FROM accounts ORDER BY id LIMIT 5) TO STDOUT (FORMAT csv)",
            vec![0u8, 0, 2, 0, 0, 0, 0],
            "COPY 5",
        ),
        (
            "COPY (SELECT id, note, balance FROM accounts ORDER BY id) TO STDOUT (FORMAT binary)",
            vec![1u8, 0, 3, 0, 1, 0, 1, 0, 1],
            "COPY 240",
        ),
        (
            "COPY (SELECT count(*) FROM accounts WHERE balance < 0) TO STDOUT",
            vec![0u8, 0, 1, 0, 0],
            "COPY 1",
        ),
    ] {
        let r = raw.query(sql).await;
        assert_eq!(r.tags(), [tag], "{sql}");
        assert_eq!(r.status, b'I');
        let kinds: Vec<u8> = r
            .messages
            .iter()
            .map(|m| m.0)
            .filter(|t| *t != b'd')
            .collect();
        assert_eq!(kinds, [b'H', b'c', b'C'], "{sql}");
        assert_eq!(r.messages[0].1, head, "{sql}");
    }
}

/// An error in the query of a merged `COPY (query) TO STDOUT`: the
/// SQLSTATE one plain PostgreSQL gives, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_a_merged_copy_query_is_postgresql_s() {
    let c = Cluster::start(3).await;
    let plain = Servers::start(1);
    merged_copy_rows(&c, &plain).await;
    let mut raw = RawClient::connect(c.port()).await;
    for (sql, code) in [
        (
            "COPY (SELECT id / (balance - balance) FROM accounts ORDER BY 1) TO STDOUT",
            "22012",
        ),
        (
            "COPY (SELECT sum(balance) / (count(*) - count(*)) FROM accounts) TO STDOUT",
            "22012",
        ),
        (
            "COPY (SELECT nope FROM accounts ORDER BY id) TO STDOUT (FORMAT csv)",
            "42703",
        ),
    ] {
        let r = raw.query(sql).await;
        assert_eq!(r.error_codes(), [code], "{sql}");
        assert_eq!(r.status, b'I', "{sql}");
        let (ok, _, err) = psql_out(&plain.url(0), sql);
        assert!(
            !ok && err.contains(&format!("ERROR:  {code}:")),
            "{sql}: {err}"
        );
    }
    // In a block, the error fails the block as PostgreSQL's does.
    raw.query("BEGIN").await;
    let r = raw
        .query("COPY (SELECT id / 0 FROM accounts ORDER BY id) TO STDOUT")
        .await;
    assert_eq!(
        (r.error_codes(), r.status),
        (vec!["22012".to_string()], b'E')
    );
    raw.query("ROLLBACK").await;
    let r = raw
        .query("COPY (SELECT max(id) FROM accounts) TO STDOUT")
        .await;
    assert_eq!(r.tags(), ["COPY 1"]);
}

/// Inside a block, a merged or staged `COPY (query)` sees the block's own
/// uncommitted writes, as a plain SELECT does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_copy_in_a_block_sees_the_block_s_writes() {
    let c = Cluster::start(3).await;
    let plain = Servers::start(1);
    merged_copy_rows(&c, &plain).await;
    let data = |r: &crate::harness::Reply| -> String {
        r.messages
            .iter()
            .filter(|m| m.0 == b'd')
            .map(|m| String::from_utf8_lossy(&m.1).into_owned())
            .collect()
    };
    let mut raw = RawClient::connect(c.port()).await;
    raw.query("BEGIN").await;
    raw.query("INSERT INTO accounts (id, balance, note) VALUES (1001, 50, 'a'), (1002, 60, 'b'), (1003, 70, 'c'), (1004, 80, 'd')")
        .await;
    raw.query("DELETE FROM accounts WHERE id <= 100").await;
    for (sql, want) in [
        (
            "COPY (SELECT id FROM accounts ORDER BY id DESC LIMIT 3) TO STDOUT",
            "1004\n1003\n1002\n",
        ),
        (
            "COPY (SELECT count(*) FROM (SELECT id FROM accounts WHERE balance > 10) s) TO STDOUT",
            "",
        ),
        (
            "COPY (SELECT count(*), min(id) FROM accounts) TO STDOUT (FORMAT csv)",
            "144,101\n",
        ),
    ] {
        let r = raw.query(sql).await;
        assert_eq!(r.status, b'T', "{sql}");
        assert_eq!(r.error_codes(), Vec::<String>::new(), "{sql}");
        if !want.is_empty() {
            assert_eq!(data(&r), want, "{sql}");
        }
    }
    // The staged count against the same query as a plain SELECT in the block.
    let r = raw
        .query(
            "COPY (SELECT count(*) FROM (SELECT id FROM accounts WHERE balance > 10) s) TO STDOUT",
        )
        .await;
    let counted = data(&r);
    let r = raw
        .query("SELECT count(*) FROM accounts WHERE balance > 10")
        .await;
    let row = r.messages.iter().find(|m| m.0 == b'D').unwrap();
    let n = String::from_utf8_lossy(&row.1[6..]).into_owned();
    assert_eq!(counted, format!("{n}\n"));
    raw.query("COMMIT").await;
    let r = raw
        .query("COPY (SELECT count(*), min(id), max(id) FROM accounts) TO STDOUT")
        .await;
    assert_eq!(data(&r), "144\t101\t1004\n");
}

/// A raw protocol client on one plain PostgreSQL, as user `plain` (password
/// `plainpass`, cleartext) in database `app`, as the proxy's raw client logs in.
async fn raw_plain(plain: &Servers) -> RawClient {
    let s = &plain.servers[0];
    let hba = s.data_dir.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host all plain 127.0.0.1/32 password\n{old}")).unwrap();
    let o = plain.connect(0).await;
    for q in [
        "CREATE ROLE plain LOGIN SUPERUSER PASSWORD 'plainpass'",
        "CREATE DATABASE app",
        "SELECT pg_reload_conf()",
    ] {
        o.batch_execute(q).await.unwrap();
    }
    RawClient::connect(s.port).await
}

/// Every message of a merged `COPY (query)`'s answer is the one plain
/// PostgreSQL sends; a failing query gets its error (SQLSTATE and message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_copy_sends_postgresql_s_messages() {
    let c = Cluster::start(3).await;
    let plain = Servers::start(1);
    let mut theirs = raw_plain(&plain).await;
    let sql = format!("{ACCOUNTS}; INSERT INTO accounts (id, balance, note) SELECT i, i % 7, 'n' || i FROM generate_series(1, 50) i");
    c.client().await.batch_execute(&sql).await.unwrap();
    theirs
        .query(&sql.replace(ACCOUNTS, &ACCOUNTS.replace("accounts", "x")))
        .await;
    theirs.query("DROP TABLE x").await;
    let r = theirs.query(&sql).await;
    assert_eq!(r.error_codes(), Vec::<String>::new());
    let mut mine = RawClient::connect(c.port()).await;
    let shape = |r: &crate::harness::Reply| -> Vec<(u8, Vec<u8>)> {
        r.messages
            .iter()
            .filter(|m| m.0 != b'N')
            .map(|(t, b)| match t {
                b'E' => (
                    *t,
                    format!("{} {}", field(b, b'C'), field(b, b'M')).into_bytes(),
                ),
                _ => (*t, b.clone()),
            })
            .collect()
    };
    for sql in [
        "COPY (SELECT * FROM accounts ORDER BY id DESC) TO STDOUT",
        "COPY (SELECT balance, count(*) FROM accounts GROUP BY 1 ORDER BY 1) TO STDOUT (FORMAT binary)",
        "COPY (SELECT sum(balance) * 100 / count(*) FROM accounts) TO STDOUT (FORMAT csv, HEADER)",
        "COPY (SELECT id, note FROM accounts WHERE id > 1000 ORDER BY id) TO STDOUT (FORMAT csv, HEADER)",
        "COPY (SELECT id, note FROM accounts ORDER BY id LIMIT 5) TO STDOUT (FORMAT csv, HEADER, FORCE_QUOTE *)",
        "COPY (SELECT * FROM accounts WHERE id > 1000 ORDER BY id) TO STDOUT (FORMAT binary)",
        "COPY (SELECT DISTINCT balance FROM accounts ORDER BY 1) TO STDOUT (HEADER)",
        "COPY (SELECT * FROM accounts ORDER BY id) TO STDOUT (FORMAT bogus)",
        // In a multi-statement query (an implicit block).
        "SELECT 1; COPY (SELECT id FROM accounts ORDER BY id LIMIT 3) TO STDOUT; COPY (SELECT count(*) FROM (SELECT id FROM accounts WHERE balance > 1) s) TO STDOUT; SELECT 2",
        "UPDATE accounts SET note = 'changed' WHERE id = 3; COPY (SELECT id, note FROM accounts ORDER BY id LIMIT 4) TO STDOUT",
        "COPY (SELECT id / balance FROM accounts ORDER BY id) TO STDOUT",
        "COPY (SELECT id / balance AS q FROM accounts ORDER BY id) TO STDOUT (FORMAT csv, HEADER)",
        "COPY (SELECT id / balance AS q FROM accounts ORDER BY id) TO STDOUT (FORMAT binary)",
        "COPY (SELECT id / 0 FROM accounts ORDER BY id) TO STDOUT (FORMAT csv, HEADER)",
        "COPY (SELECT nope FROM accounts ORDER BY id) TO STDOUT",
        "COPY (SELECT count(*) FROM (SELECT id FROM accounts WHERE balance > 1) s) TO STDOUT",
    ] {
        let a = mine.query(sql).await;
        let b = theirs.query(sql).await;
        assert_eq!(a.status, b.status, "{sql}");
        if b.error_codes().is_empty() {
            assert_eq!(shape(&a), shape(&b), "{sql}");
        } else {
            // One PostgreSQL may stream rows (after its CopyOutResponse)
            // before the row that fails, in its own scan order; the proxy
            // has the merged rows only once every shard answered.
            let errors = |r: &crate::harness::Reply| -> Vec<(u8, Vec<u8>)> {
                shape(r).into_iter().filter(|m| m.0 == b'E').collect()
            };
            assert_eq!(errors(&a), errors(&b), "{sql}");
            assert_eq!(shape(&a), errors(&a), "{sql}");
        }
    }
}

/// A merged `COPY (query)` holds its rows: up to the stage limit (100,000
/// rows) they come out whole and in order; past it, `0A000`, and the
/// session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_copy_holds_at_most_the_stage_limit() {
    let c = Cluster::start(3).await;
    let client = c.client().await;
    exec(&client, ACCOUNTS).await;
    exec(
        &client,
        "INSERT INTO accounts (id, balance, note) SELECT i, i % 1000, 'n' || i FROM generate_series(1, 100000) i",
    )
    .await;
    let sql = "COPY (SELECT id, balance, note FROM accounts ORDER BY id DESC) TO STDOUT";
    let started = std::time::Instant::now();
    let out = String::from_utf8(psql_bytes(&c.uri(), sql)).unwrap();
    let took = started.elapsed();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 100_000);
    assert_eq!(lines[0], "100000\t0\tn100000");
    assert_eq!(lines[99_999], "1\t1\tn1");
    assert!(lines.windows(2).all(|w| {
        let id = |l: &str| l.split('\t').next().unwrap().parse::<i64>().unwrap();
        id(w[0]) == id(w[1]) + 1
    }));
    eprintln!("100,000 merged rows through COPY: {took:?}");
    exec(
        &client,
        "INSERT INTO accounts (id, balance) VALUES (100001, 1)",
    )
    .await;
    let mut raw = RawClient::connect(c.port()).await;
    let r = raw.query(sql).await;
    assert_eq!(
        (r.error_codes(), r.status),
        (vec!["0A000".to_string()], b'I')
    );
    let r = raw
        .query("COPY (SELECT count(*) FROM accounts) TO STDOUT")
        .await;
    assert_eq!(r.tags(), ["COPY 1"]);
}
