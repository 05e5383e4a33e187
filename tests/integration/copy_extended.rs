//! COPY and `INSERT INTO sharded ... SELECT` through the extended query
//! protocol (Parse/Bind/Execute/Sync, as tokio-postgres's `copy_in` and
//! `copy_out` send them), checked against one plain PostgreSQL: the same
//! rows (on their keys' shards), and for raw protocol sessions the same
//! message types, tags, SQLSTATEs and ReadyForQuery status bytes.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, StreamExt};
use pieskieo::router::KeyValue;
use tokio_postgres::Client;

use crate::harness::{bind, exec, field, parse, value, Cluster, RawClient, Servers};

const ACCOUNTS: &str = "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0), note text)";
const COUNTRIES: &str = "CREATE TABLE countries (code text PRIMARY KEY, name text)";
const NOTES: &str = "CREATE TABLE notes (id int, body text)";

/// A proxy over three shards and one plain PostgreSQL that takes the raw
/// client's login (user `plain`, cleartext password, database `app`), each
/// with the tables made.
struct Pair {
    cluster: Cluster,
    plain: Servers,
}

impl Pair {
    async fn start() -> Pair {
        let cluster = Cluster::start(3).await;
        let plain = crate::harness::oracle_server().await;
        let p = Pair { cluster, plain };
        for c in [p.proxy().await, p.oracle().await] {
            for sql in [ACCOUNTS, COUNTRIES, NOTES] {
                exec(&c, sql).await;
            }
        }
        p
    }

    async fn proxy(&self) -> Client {
        self.cluster.client().await
    }

    async fn oracle(&self) -> Client {
        crate::harness::connect(&format!(
            "host=127.0.0.1 port={} user=plain password=plainpass dbname=app",
            self.plain.servers[0].port
        ))
        .await
        .unwrap()
    }

    /// Raw clients of the proxy and of the plain server.
    async fn raws(&self) -> [RawClient; 2] {
        [
            RawClient::connect(self.cluster.port()).await,
            RawClient::connect(self.plain.servers[0].port).await,
        ]
    }

    /// Rows of `table` on each shard.
    async fn per_shard(&self, table: &str) -> Vec<i64> {
        let mut v = Vec::new();
        for i in 0..self.cluster.shards.servers.len() {
            let s = self.cluster.shard(i).await;
            let n = value(&s, &format!("SELECT count(*) FROM {table}")).await;
            v.push(n.parse().unwrap());
        }
        v
    }

    /// Every `accounts` id on every shard belongs there.
    async fn check_placement(&self) {
        for i in 0..self.cluster.shards.servers.len() {
            let s = self.cluster.shard(i).await;
            for row in s.query("SELECT id FROM accounts", &[]).await.unwrap() {
                let id: i64 = row.get(0);
                assert_eq!(
                    self.cluster.shard_of("accounts", KeyValue::Int(id)),
                    i,
                    "id {id} on shard {i}"
                );
            }
        }
    }

    /// No prepared transaction is left on any shard.
    async fn no_prepared(&self) {
        for i in 0..self.cluster.shards.servers.len() {
            let s = self.cluster.shard(i).await;
            assert_eq!(crate::harness::prepared(&s).await, 0, "shard {i}");
        }
    }
}

/// `COPY ... FROM STDIN` through tokio-postgres's `copy_in`: the `COPY n` count.
async fn copy_in(c: &Client, sql: &str, data: &[u8]) -> Result<u64, tokio_postgres::Error> {
    let sink = c.copy_in::<_, Bytes>(sql).await?;
    pin_mut!(sink);
    // Several pieces: rows straddle CopyData messages.
    for piece in data.chunks(97) {
        sink.send(Bytes::copy_from_slice(piece)).await?;
    }
    sink.finish().await
}

/// `COPY ... TO STDOUT` through tokio-postgres's `copy_out`: the stream's bytes.
async fn copy_out(c: &Client, sql: &str) -> Vec<u8> {
    let stream = c.copy_out(sql).await.unwrap();
    pin_mut!(stream);
    let mut all = Vec::new();
    while let Some(piece) = stream.next().await {
        all.extend_from_slice(&piece.unwrap());
    }
    all
}

fn sorted_lines(b: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = String::from_utf8_lossy(b)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// `n` text rows `id<TAB>balance<TAB>note` with ids from `from`.
fn text_rows(from: i64, n: i64) -> String {
    (from..from + n)
        .map(|i| format!("{i}\t{}\tnote \\\\ {i}\\ttab\n", i * 10))
        .collect()
}

/// The same rows on both sides, read with one statement (in any order).
async fn same_rows(proxy: &Client, oracle: &Client, sql: &str) {
    let mut a = crate::harness::rows(proxy, sql).await;
    let mut b = crate::harness::rows(oracle, sql).await;
    a.sort();
    b.sort();
    assert_eq!(a, b, "{sql}");
}

/// tokio-postgres's `copy_in` (text, CSV, binary) into a sharded, a
/// reference and an unsharded table, and `copy_out` of them and of a
/// query across shards: the rows, counts and streams one plain
/// PostgreSQL gives; every row on its key's shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_through_the_extended_protocol_match_postgresql() {
    let p = Pair::start().await;
    let (proxy, oracle) = (p.proxy().await, p.oracle().await);
    let text = text_rows(1, 700);
    let mut csv = String::from("id,balance,note\n");
    for i in 701..=900 {
        csv.push_str(&format!("{i},{i},\"n,{i}\"\n"));
    }
    for c in [&proxy, &oracle] {
        let n = copy_in(c, "COPY accounts FROM STDIN", text.as_bytes())
            .await
            .unwrap();
        assert_eq!(n, 700);
        let n = copy_in(
            c,
            "COPY accounts FROM STDIN WITH (FORMAT csv, HEADER)",
            csv.as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(n, 200);
        let n = copy_in(c, "COPY countries FROM STDIN", b"pl\tPoland\nfr\tFrance\n")
            .await
            .unwrap();
        assert_eq!(n, 2);
        let n = copy_in(c, "COPY notes FROM STDIN", b"1\tone\n2\ttwo\n3\t\\N\n")
            .await
            .unwrap();
        assert_eq!(n, 3);
    }
    // Binary: what the plain server writes, read back into both.
    let binary = copy_out(
        &oracle,
        "COPY (SELECT g::bigint, g * 3::bigint, 'b' || g FROM generate_series(901, 1000) g) TO STDOUT (FORMAT binary)",
    )
    .await;
    for c in [&proxy, &oracle] {
        let n = copy_in(
            c,
            "COPY accounts (id, balance, note) FROM STDIN (FORMAT binary)",
            &binary,
        )
        .await
        .unwrap();
        assert_eq!(n, 100);
    }
    p.check_placement().await;
    let shards = p.per_shard("accounts").await;
    assert_eq!(shards.iter().sum::<i64>(), 1000);
    assert!(shards.iter().all(|n| *n > 0), "{shards:?}");
    assert_eq!(p.per_shard("countries").await, vec![2, 2, 2]);
    assert_eq!(p.per_shard("notes").await, vec![3, 0, 0]);
    for sql in [
        "SELECT id::text, balance::text, note FROM accounts",
        "SELECT * FROM countries",
        "SELECT id::text, body FROM notes",
    ] {
        same_rows(&proxy, &oracle, sql).await;
    }
    // copy_out: the same lines, one header, whatever the shard order.
    for sql in [
        "COPY accounts TO STDOUT",
        "COPY accounts (note, id) TO STDOUT WITH (FORMAT csv, HEADER)",
        "COPY (SELECT id, balance * 2 FROM accounts WHERE balance > 5000) TO STDOUT (FORMAT csv)",
        "COPY (SELECT * FROM accounts WHERE id = 77) TO STDOUT",
        "COPY countries TO STDOUT",
        "COPY notes TO STDOUT",
    ] {
        let mine = copy_out(&proxy, sql).await;
        let theirs = copy_out(&oracle, sql).await;
        if sql.contains("HEADER") {
            let s = String::from_utf8_lossy(&mine);
            assert_eq!(s.lines().next(), Some("note,id"), "{sql}");
            assert_eq!(s.matches("note,id").count(), 1, "one header: {sql}");
        }
        assert_eq!(sorted_lines(&mine), sorted_lines(&theirs), "{sql}");
    }
    // Binary out: one header and trailer, the same size.
    let sql = "COPY accounts TO STDOUT (FORMAT binary)";
    assert_eq!(
        copy_out(&proxy, sql).await.len(),
        copy_out(&oracle, sql).await.len()
    );
    // The session goes on, idle.
    assert_eq!(value(&proxy, "SELECT count(*) FROM accounts").await, "1000");
    p.no_prepared().await;
}

/// A bad row mid-stream and a refused COPY through `copy_in`: the error
/// PostgreSQL gives, nothing committed, the connection usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_errors_through_copy_in_match_postgresql_and_commit_nothing() {
    let p = Pair::start().await;
    let mut data = text_rows(1, 300);
    data.push_str("301\tnot a number\tx\n");
    data.push_str(&text_rows(302, 300));
    for sql in [
        "COPY accounts FROM STDIN",
        "COPY accounts (id, nope) FROM STDIN",
        "COPY nothing_here FROM STDIN",
    ] {
        // A connection each: after an error at COPY's start tokio-postgres
        // sends CopyFail and Sync, and the ReadyForQuery that gets (from
        // PostgreSQL too) confuses its next statement.
        let (proxy, oracle) = (p.proxy().await, p.oracle().await);
        let mine = copy_in(&proxy, sql, data.as_bytes()).await.unwrap_err();
        let theirs = copy_in(&oracle, sql, data.as_bytes()).await.unwrap_err();
        let (mine, theirs) = match (mine.as_db_error(), theirs.as_db_error()) {
            (Some(a), Some(b)) => (a, b),
            _ => panic!("{sql}: {mine:?} / {theirs:?}"),
        };
        assert_eq!(mine.code(), theirs.code(), "{sql}");
        assert_eq!(mine.message(), theirs.message(), "{sql}");
        assert_eq!(mine.where_(), theirs.where_(), "{sql}");
    }
    assert_eq!(p.per_shard("accounts").await, vec![0, 0, 0]);
    let proxy = p.proxy().await;
    assert_eq!(value(&proxy, "SELECT count(*) FROM accounts").await, "0");
    p.no_prepared().await;
}

/// Sends `script` to both raw clients, then reads each up to one
/// ReadyForQuery: the messages, summarised (type; tag, SQLSTATE and message
/// of errors, ReadyForQuery status), must be the same.
async fn same_answers(raws: &mut [RawClient; 2], script: &[Msg]) -> Vec<String> {
    let mut answers = answers(raws, script, false).await;
    assert_eq!(answers[0], answers[1], "proxy, then plain PostgreSQL");
    answers.swap_remove(0)
}

/// Sends `script` to both raw clients; each one's answer up to
/// ReadyForQuery, summarised: type; tag; SQLSTATE (and message, unless
/// `rows`); DataRows' values when `rows`; ReadyForQuery status.
async fn answers(raws: &mut [RawClient; 2], script: &[Msg], rows: bool) -> Vec<Vec<String>> {
    let mut answers = Vec::new();
    for raw in raws.iter_mut() {
        for (tag, body) in script {
            raw.send(*tag, body).await;
        }
        let r = raw.until_ready().await;
        let mut seen: Vec<String> = r
            .messages
            .iter()
            .filter(|(t, _)| *t != b'N' && *t != b'S')
            .map(|(t, b)| match t {
                b'C' => format!("C {}", String::from_utf8_lossy(&b[..b.len() - 1])),
                b'E' if rows => format!("E {}", field(b, b'C')),
                b'E' => format!("E {} {}", field(b, b'C'), field(b, b'M')),
                b'D' if rows => {
                    format!("D {:?}", crate::merges::decode_answer(&[(b'D', b.clone())]))
                }
                b'G' | b'H' => format!("{} {:?}", *t as char, b),
                other => (*other as char).to_string(),
            })
            .collect();
        seen.push(format!("Z {}", r.status as char));
        answers.push(seen);
    }
    answers
}

/// Every message up to the end of the connection, summarised as in [`same_answers`].
async fn until_closed(raw: &mut RawClient) -> Vec<String> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    loop {
        let Ok(t) = raw.stream.read_u8().await else {
            return seen;
        };
        let len = raw.stream.read_i32().await.unwrap();
        let mut b = vec![0; len as usize - 4];
        raw.stream.read_exact(&mut b).await.unwrap();
        seen.push(match t {
            b'E' => format!("E {} {}", field(&b, b'C'), field(&b, b'M')),
            b'C' => format!("C {}", String::from_utf8_lossy(&b[..b.len() - 1])),
            other => (other as char).to_string(),
        });
    }
}

/// A client message: its type and body.
type Msg = (u8, Vec<u8>);

fn execute() -> Msg {
    (b'E', vec![0, 0, 0, 0, 0])
}

fn sync() -> Msg {
    (b'S', vec![])
}

fn flush() -> Msg {
    (b'H', vec![])
}

fn data(rows: &str) -> Msg {
    (b'd', rows.as_bytes().to_vec())
}

fn done() -> Msg {
    (b'c', vec![])
}

/// Parse, Bind, Describe of the portal and Execute of `sql`.
fn copy_start(sql: &str) -> Vec<Msg> {
    vec![
        (b'P', parse("", sql)),
        (b'B', bind("", &[])),
        (b'D', b"P\0".to_vec()),
        execute(),
    ]
}

/// COPY through raw Parse/Bind/Execute: Sync and Flush during copy-in are
/// ignored (ReadyForQuery only at the Sync after CopyDone), the tag is
/// `COPY n`, the rows commit at Sync; Describe of the statement and the
/// portal answer as PostgreSQL does; COPY TO STDOUT gives one stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_extended_copy_answers_as_postgresql_does() {
    let p = Pair::start().await;
    let mut raws = p.raws().await;
    // Describe of the statement: no parameters, no rows.
    let got = same_answers(
        &mut raws,
        &[
            (b'P', parse("cp", "COPY accounts FROM STDIN")),
            (b'D', b"Scp\0".to_vec()),
            sync(),
        ],
    )
    .await;
    assert_eq!(got, ["1", "t", "n", "Z I"]);
    // tokio-postgres's order: Sync before the data, and one after CopyDone;
    // a Flush and another Sync in the middle are ignored.
    let mut script = copy_start("COPY accounts FROM STDIN");
    script.extend([
        sync(),
        data(&text_rows(1, 50)),
        flush(),
        sync(),
        data(&text_rows(51, 50)),
        done(),
        sync(),
    ]);
    let got = same_answers(&mut raws, &script).await;
    assert_eq!(got[..3], ["1", "2", "n"]);
    assert!(got[3].starts_with("G "), "{got:?}");
    assert_eq!(got[4..], ["C COPY 100", "Z I"]);
    // The named statement again, with the data straight after Execute.
    let mut script = vec![(b'B', bind("cp", &[])), execute()];
    script.extend([data(&text_rows(101, 100)), done(), sync()]);
    let got = same_answers(&mut raws, &script).await;
    assert_eq!(got[0], "2");
    assert_eq!(got[2..], ["C COPY 100", "Z I"]);
    p.check_placement().await;
    assert_eq!(p.per_shard("accounts").await.iter().sum::<i64>(), 200);
    // A pipeline: an INSERT, the COPY and a SELECT before one Sync.
    let mut script = vec![
        (
            b'P',
            parse("", "INSERT INTO accounts (id, balance) VALUES (1001, 1)"),
        ),
        (b'B', bind("", &[])),
        execute(),
    ];
    script.extend(copy_start("COPY countries FROM STDIN"));
    script.extend([data("pl\tPoland\n"), done()]);
    script.extend([
        (b'P', parse("", "SELECT count(*) FROM accounts")),
        (b'B', bind("", &[])),
        execute(),
        sync(),
    ]);
    let got = same_answers(&mut raws, &script).await;
    assert_eq!(got.last().map(String::as_str), Some("Z I"));
    assert!(got.contains(&"C COPY 1".to_string()), "{got:?}");
    assert_eq!(p.per_shard("countries").await, vec![1, 1, 1]);
    // A COPY takes no parameters but those Parse declared.
    let got = same_answers(
        &mut raws,
        &[
            (b'P', parse("", "COPY accounts FROM STDIN")),
            (b'B', bind("", &["1"])),
            execute(),
            sync(),
        ],
    )
    .await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[1].starts_with("E 08P01 bind message supplies 1 parameters"));
    // CopyData and CopyDone that no COPY takes are ignored.
    let got = same_answers(
        &mut raws,
        &[
            (b'P', parse("", "SELECT 1")),
            (b'B', bind("", &[])),
            execute(),
            data("1\t1\tx\n"),
            done(),
            sync(),
        ],
    )
    .await;
    assert_eq!(got, ["1", "2", "D", "C SELECT 1", "Z I"]);
    // COPY TO STDOUT through Execute: one CopyOutResponse, one CopyDone.
    let got = same_answers(&mut raws, &{
        let mut s = copy_start("COPY (SELECT id FROM accounts WHERE id <= 3) TO STDOUT");
        s.push(sync());
        s
    })
    .await;
    assert_eq!(
        got,
        [
            "1",
            "2",
            "n",
            "H [0, 0, 1, 0, 0]",
            "d",
            "d",
            "d",
            "c",
            "C COPY 3",
            "Z I"
        ]
    );
    // Inside BEGIN: the COPY's rows go with the block's ROLLBACK.
    for raw in raws.iter_mut() {
        assert_eq!(raw.query("BEGIN").await.status, b'T');
    }
    let mut script = copy_start("COPY accounts FROM STDIN");
    script.extend([data(&text_rows(2001, 60)), done(), sync()]);
    let got = same_answers(&mut raws, &script).await;
    assert_eq!(got[4..], ["C COPY 60", "Z T"]);
    for raw in raws.iter_mut() {
        let r = raw.query("SELECT count(*) FROM accounts").await;
        assert_eq!(r.status, b'T');
        assert_eq!(raw.query("ROLLBACK").await.status, b'I');
    }
    assert_eq!(p.per_shard("accounts").await.iter().sum::<i64>(), 201);
    // Inside BEGIN, committed: every shard's rows at COMMIT.
    for raw in raws.iter_mut() {
        assert_eq!(raw.query("BEGIN").await.status, b'T');
    }
    let mut script = copy_start("COPY accounts FROM STDIN");
    script.extend([data(&text_rows(3001, 60)), done(), sync()]);
    same_answers(&mut raws, &script).await;
    for raw in raws.iter_mut() {
        assert_eq!(raw.query("COMMIT").await.tags(), ["COMMIT"]);
    }
    assert_eq!(p.per_shard("accounts").await.iter().sum::<i64>(), 261);
    p.check_placement().await;
    p.no_prepared().await;
}

/// Failures during an extended-protocol COPY: CopyFail (57014), a bad row
/// mid-stream (22P02 with its line), a message COPY does not take (08P01)
/// and a COPY refused at the start each get PostgreSQL's answer; what
/// follows up to Sync is discarded, ReadyForQuery comes at Sync, and
/// nothing the segment ran is committed on any shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_extended_copy_failures_commit_nothing() {
    let p = Pair::start().await;
    let mut raws = p.raws().await;
    let insert = |id: i64| {
        vec![
            (
                b'P',
                parse(
                    "",
                    &format!("INSERT INTO accounts (id, balance) VALUES ({id}, 1)"),
                ),
            ),
            (b'B', bind("", &[])),
            execute(),
        ]
    };
    let bad = format!("{}301\tnope\tx\n{}", text_rows(1, 300), text_rows(302, 50));
    let cases: Vec<(Vec<Msg>, &str)> = vec![
        // CopyFail, after tokio-postgres's early Sync.
        (
            [
                copy_start("COPY accounts FROM STDIN"),
                vec![
                    sync(),
                    data(&text_rows(1, 300)),
                    (b'f', b"client gave up\0".to_vec()),
                    // Discarded until Sync.
                    (b'P', parse("", "SELECT 1")),
                    sync(),
                ],
            ]
            .concat(),
            "57014",
        ),
        // A bad row mid-stream: what follows up to Sync is discarded. (The
        // Flush runs the INSERT first, in its shard's own transaction,
        // which the COPY's block then takes in.)
        (
            [
                insert(5001),
                vec![flush()],
                copy_start("COPY accounts FROM STDIN"),
                vec![
                    data(&bad),
                    data(&text_rows(400, 30)),
                    done(),
                    (b'P', parse("", "SELECT 1")),
                    (b'B', bind("", &[])),
                    execute(),
                    sync(),
                ],
            ]
            .concat(),
            "22P02",
        ),
        // Refused before any data: the data that comes anyway is ignored.
        (
            [
                insert(5002),
                copy_start("COPY accounts (id, nope) FROM STDIN"),
                vec![sync(), data(&text_rows(1, 30)), done(), sync()],
            ]
            .concat(),
            "42703",
        ),
    ];
    for (script, code) in cases {
        // The last case's second Sync gives a second ReadyForQuery.
        let got = same_answers(&mut raws, &script).await;
        assert!(
            got.iter().any(|m| m.starts_with(&format!("E {code}"))),
            "{code}: {got:?}"
        );
        assert_eq!(got.last().map(String::as_str), Some("Z I"), "{code}");
        if code == "42703" {
            for raw in raws.iter_mut() {
                let r = raw.until_ready().await;
                assert_eq!((r.messages.len(), r.status), (0, b'I'));
            }
        }
        for raw in raws.iter_mut() {
            let r = raw.query("SELECT count(*) FROM accounts").await;
            assert_eq!(r.status, b'I', "{code}");
            let row = r.messages.iter().find(|m| m.0 == b'D').unwrap();
            assert_eq!(&row.1[row.1.len() - 1..], b"0", "{code}: nothing committed");
        }
        assert_eq!(p.per_shard("accounts").await, vec![0, 0, 0], "{code}");
        p.no_prepared().await;
    }
    // A message COPY does not take: PostgreSQL stops reading inside it, so
    // it ends the session (ERROR, then FATAL); nothing is committed.
    let script = [
        insert(5003),
        copy_start("COPY accounts FROM STDIN"),
        vec![
            data(&text_rows(1, 300)),
            (b'P', parse("", "SELECT 1")),
            data(&text_rows(301, 30)),
            done(),
            sync(),
        ],
    ]
    .concat();
    // The same through the simple protocol.
    let simple = vec![
        (b'Q', b"COPY accounts FROM STDIN\0".to_vec()),
        data(&text_rows(1, 300)),
        (b'P', parse("", "SELECT 1")),
        done(),
    ];
    for script in [script, simple] {
        let mut seen = Vec::new();
        for raw in p.raws().await.iter_mut() {
            for (tag, body) in &script {
                raw.send(*tag, body).await;
            }
            seen.push(until_closed(raw).await);
        }
        assert_eq!(seen[0], seen[1], "proxy, then plain PostgreSQL");
        assert_eq!(
            seen[0][seen[0].len() - 2..],
            [
                "E 08P01 unexpected message type 0x50 during COPY from stdin",
                "E 08P01 terminating connection because protocol synchronization was lost"
            ]
        );
        assert_eq!(p.per_shard("accounts").await, vec![0, 0, 0]);
        p.no_prepared().await;
    }
    // A multi-shard COPY commits on every shard at once: after a bad last
    // row, no shard has any; after CopyDone, every shard has its rows.
    let mut script = copy_start("COPY accounts FROM STDIN");
    script.extend([data(&text_rows(1, 100)), data("x\n"), done(), sync()]);
    same_answers(&mut raws, &script).await;
    assert_eq!(p.per_shard("accounts").await, vec![0, 0, 0]);
    let mut script = copy_start("COPY accounts FROM STDIN");
    script.extend([data(&text_rows(1, 100)), done(), sync()]);
    same_answers(&mut raws, &script).await;
    let shards = p.per_shard("accounts").await;
    assert!(shards.iter().all(|n| *n > 0), "{shards:?}");
    p.check_placement().await;
}

/// `INSERT INTO sharded (cols) SELECT ...` through the extended protocol:
/// the rows on their shards and PostgreSQL's tag; with parameters, a clear
/// refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_select_through_the_extended_protocol() {
    let p = Pair::start().await;
    let (proxy, oracle) = (p.proxy().await, p.oracle().await);
    let sql =
        "INSERT INTO accounts (id, balance) SELECT g, g * 10 FROM generate_series(1, 500) AS g";
    for c in [&proxy, &oracle] {
        assert_eq!(c.execute(sql, &[]).await.unwrap(), 500);
    }
    p.check_placement().await;
    same_rows(
        &proxy,
        &oracle,
        "SELECT id::text, balance::text FROM accounts",
    )
    .await;
    let mut raws = p.raws().await;
    let got = same_answers(
        &mut raws,
        &[
            (
                b'P',
                parse(
                    "",
                    "INSERT INTO accounts (id, balance) SELECT g, 1 FROM generate_series(501, 600) g",
                ),
            ),
            (b'B', bind("", &[])),
            (b'D', b"P\0".to_vec()),
            execute(),
            sync(),
        ],
    )
    .await;
    assert_eq!(got, ["1", "2", "n", "C INSERT 0 100", "Z I"]);
    let e = proxy
        .execute(
            "INSERT INTO accounts (id, balance) SELECT g, $1::bigint FROM generate_series(601, 610) g",
            &[&5i64],
        )
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "0A000", "{}", db.message());
    assert_eq!(value(&proxy, "SELECT count(*) FROM accounts").await, "600");
    p.no_prepared().await;
}

/// A multi-shard COPY through `copy_in` commits at Sync with two-phase
/// commit: a proxy that dies after PREPARE leaves nothing, one that dies
/// after the decision leaves every row (recovery by a surviving proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_copy_whose_proxy_dies_mid_commit_is_finished_whole() {
    use crate::harness::{prepared, ProxyProcess};
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
        let c = crate::harness::connect(&doomed.url()).await.unwrap();
        // As from PostgreSQL, `COPY n` comes before the commit at Sync,
        // and tokio-postgres's copy_in returns with it: the lost proxy
        // shows at the next statement.
        let _ = copy_in(
            &c,
            "COPY accounts FROM STDIN",
            text_rows(1, 3000).as_bytes(),
        )
        .await;
        assert!(
            c.simple_query("SELECT 1").await.is_err(),
            "{point}: the proxy died during the COPY's commit"
        );
        assert!(doomed.wait_exit(10), "{point}: crashed at its failpoint");
        let want = if committed { 3000 } else { 0 };
        let started = std::time::Instant::now();
        loop {
            let (mut rows, mut left) = (0, 0);
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
                started.elapsed() < Duration::from_secs(10),
                "{point}: {rows} rows, {left} prepared"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A two-stage read in a pipeline after a write, before one Sync: its
/// stages see the write, as the statement would in PostgreSQL's implicit
/// transaction; an error in a stage fails the segment, which commits
/// nothing. Message for message (and value for value) as plain PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_reads_in_a_pipeline_see_its_writes() {
    let p = Pair::start().await;
    let mut raws = p.raws().await;
    let seed = "INSERT INTO accounts (id, balance) SELECT i, i FROM generate_series(1, 30) i";
    for c in [p.proxy().await, p.oracle().await] {
        exec(&c, seed).await;
    }
    let staged = "SELECT count(*) * 10, round(avg(balance), 1) FROM accounts";
    for (id, flushed) in [(1001, false), (1002, true)] {
        let insert = format!("INSERT INTO accounts (id, balance) VALUES ({id}, 500)");
        let mut script = vec![(b'P', parse("", &insert)), (b'B', bind("", &[])), execute()];
        if flushed {
            // The INSERT runs alone first, on its shard's own transaction.
            script.push(flush());
        }
        script.extend([
            (b'P', parse("", staged)),
            (b'B', bind("", &[])),
            (b'D', b"P\0".to_vec()),
            execute(),
            sync(),
        ]);
        let got = answers(&mut raws, &script, true).await;
        assert_eq!(got[0], got[1], "proxy, then plain PostgreSQL");
        assert_eq!(got[0].len(), 9, "{:?}", got[0]);
    }
    // A stage that fails: the segment's INSERT is rolled back.
    let script = [
        (
            b'P',
            parse("", "INSERT INTO accounts (id, balance) VALUES (1003, 1)"),
        ),
        (b'B', bind("", &[])),
        execute(),
        (
            b'P',
            parse(
                "",
                "SELECT count(*) FROM accounts WHERE balance > (SELECT sum(balance) / (count(*) - 33) FROM accounts)",
            ),
        ),
        (b'B', bind("", &[])),
        execute(),
        sync(),
    ];
    // The stages run at Bind: the error answers the Bind, where PostgreSQL
    // answers the Bind and then fails the Execute (see the README).
    let got = answers(&mut raws, &script, true).await;
    assert_eq!(got[0], ["1", "2", "C INSERT 0 1", "1", "E 22012", "Z I"]);
    assert_eq!(
        got[1],
        ["1", "2", "C INSERT 0 1", "1", "2", "E 22012", "Z I"]
    );
    let n = "SELECT count(*) FROM accounts";
    assert_eq!(value(&p.proxy().await, n).await, "32");
    assert_eq!(value(&p.oracle().await, n).await, "32");
    // A Bind with too many or too few values for a staged or merged
    // statement: 08P01.
    let staged = "SELECT round(avg(balance), $1) FROM accounts WHERE balance > $2";
    let merged = "SELECT count(*) FROM accounts WHERE balance > $1 AND balance < $2";
    for (sql, values) in [
        (staged, &["1", "2", "3"][..]),
        (staged, &["1"][..]),
        (merged, &["1"][..]),
        (merged, &["1", "2", "3"][..]),
    ] {
        let script = [
            (b'P', parse("", sql)),
            (b'B', bind("", values)),
            execute(),
            sync(),
        ];
        let got = same_answers(&mut raws, &script).await;
        assert!(
            got[1].starts_with("E 08P01 bind message supplies"),
            "{got:?}"
        );
    }
}

/// A staged Bind of a named portal while the client's unnamed portal is
/// open on the same shards (in a block, and in a segment that spans
/// shards): the stages read with extended-protocol messages under a portal
/// of the proxy's, so the unnamed portal survives, as in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_binds_keep_the_unnamed_portal() {
    let p = Pair::start().await;
    let mut raws = p.raws().await;
    let seed = "INSERT INTO accounts (id, balance) SELECT i, i FROM generate_series(1, 30) i";
    for c in [p.proxy().await, p.oracle().await] {
        exec(&c, seed).await;
    }
    let staged =
        "SELECT round(avg(balance), $1) AS r, count(*) + 1 AS c FROM accounts WHERE balance > $2";
    let named = |portal: &str, values: &[&str]| {
        // A Bind body for an unnamed portal starts with its name's NUL.
        let mut m = portal.as_bytes().to_vec();
        m.extend_from_slice(&bind("s1", values));
        m
    };
    let exec_portal = |portal: &str| {
        let mut m = portal.as_bytes().to_vec();
        m.extend_from_slice(&[0, 0, 0, 0, 0]);
        (b'E', m)
    };
    for begin in [true, false] {
        if begin {
            for raw in raws.iter_mut() {
                raw.query("BEGIN").await;
            }
        }
        let script = [
            (b'P', parse("s1", staged)),
            (
                b'P',
                parse(
                    "n1",
                    "SELECT id FROM accounts WHERE id = 3 OR id = 4 ORDER BY id",
                ),
            ),
            (b'B', bind("n1", &[])),
            (b'B', named("p", &["1", "5"])),
            exec_portal(""),
            exec_portal("p"),
            (b'B', bind("s1", &["2", "3"])),
            (b'B', named("q", &["0", "20"])),
            exec_portal(""),
            exec_portal("q"),
            (b'C', b"Ss1\0".to_vec()),
            (b'C', b"Sn1\0".to_vec()),
            sync(),
        ];
        let got = answers(&mut raws, &script, true).await;
        assert_eq!(
            got[0], got[1],
            "proxy, then plain PostgreSQL (block: {begin})"
        );
        assert!(!got[0].iter().any(|m| m.starts_with('E')), "{:?}", got[0]);
        if begin {
            let got = [
                raws[0].query("COMMIT").await.tags(),
                raws[1].query("COMMIT").await.tags(),
            ];
            assert_eq!(got[0], got[1]);
            assert_eq!(got[0], ["COMMIT"]);
        }
    }
}
