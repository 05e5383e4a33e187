//! COPY FROM STDIN's line ends and encodings, against one plain
//! PostgreSQL: bare carriage returns, a line end that changes in the middle
//! of the data, `ENCODING` and `client_encoding` other than UTF8 (keys
//! converted before they are hashed, multibyte characters whose second
//! byte is a backslash or a delimiter). psql's report and the rows must be
//! the same; nothing is committed anywhere when PostgreSQL refuses.

use pieskieo::router::KeyValue;

use crate::harness::{exec, Cluster, Servers};

const TABLES: &str = "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text); CREATE TABLE users (email text PRIMARY KEY, n int, note text)";

/// Runs psql with `stdin` as its input; returns (ok, stdout, stderr).
fn psql(url: &str, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let all: Vec<&str> = ["-A", "-t"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    crate::harness::psql_run(url, &all, stdin, Some("UTF8"))
}

/// Every row of both tables, in one order, as psql prints them.
fn contents(url: &str) -> String {
    let sql = "SELECT id, balance, replace(note, E'\\r', '<CR>') FROM accounts ORDER BY id; SELECT email COLLATE \"C\", n, note FROM users ORDER BY 1";
    let (ok, out, err) = psql(url, &["-c", sql], b"");
    assert!(ok, "{err}");
    out
}

/// Rows of each table on each shard sit on their key's shard; the count.
async fn placed(c: &Cluster) -> usize {
    let mut rows = 0;
    for i in 0..c.shards.servers.len() {
        let s = c.shard(i).await;
        for r in s.query("SELECT id FROM accounts", &[]).await.unwrap() {
            let id: i64 = r.get(0);
            assert_eq!(c.shard_of("accounts", KeyValue::Int(id)), i, "id {id}");
            rows += 1;
        }
        for r in s.query("SELECT email FROM users", &[]).await.unwrap() {
            let email: String = r.get(0);
            assert_eq!(
                c.shard_of("users", KeyValue::Text(email.clone())),
                i,
                "email {email:?}"
            );
            rows += 1;
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_line_ends_and_encodings_match_postgresql() {
    let c = Cluster::start(3).await;
    let plain = Servers::start(1);
    let oracle = plain.url(0);
    let client = c.client().await;
    exec(&client, TABLES).await;
    plain.connect(0).await.batch_execute(TABLES).await.unwrap();

    let text = "COPY accounts FROM STDIN";
    let csv = "COPY accounts FROM STDIN (FORMAT csv)";
    let latin1 = "COPY users FROM STDIN (ENCODING 'LATIN1')";
    let cases: Vec<(&str, Vec<&str>, Vec<u8>)> = vec![
        // Line ends: PostgreSQL takes the first line's for the whole data.
        (
            "bare CR",
            vec![text],
            b"1\t10\ta\r2\t20\tb\r3\t30\tc\r".to_vec(),
        ),
        ("CRLF", vec![text], b"1\t10\ta\r\n2\t20\tb\r\n".to_vec()),
        (
            "bare CR, no line end at the end",
            vec![text],
            b"1\t10\ta\r2\t20\tb".to_vec(),
        ),
        (
            "bare CR, end marker",
            vec![text],
            b"1\t10\ta\r2\t20\tb\r\\.\r".to_vec(),
        ),
        (
            "bare CR, CSV, a CR inside quotes",
            vec![csv],
            b"1,10,\"a\rb\"\r2,20,c\r".to_vec(),
        ),
        (
            "bare CR, CSV header",
            vec!["COPY accounts FROM STDIN (FORMAT csv, HEADER)"],
            b"id,balance,note\r1,10,a\r2,20,b\r".to_vec(),
        ),
        (
            "LF, then CRLF",
            vec![text],
            b"1\t10\ta\n2\t20\tb\r\n".to_vec(),
        ),
        ("CR, then LF", vec![text], b"1\t10\ta\r2\t20\tb\n".to_vec()),
        (
            "CRLF, then bare CR",
            vec![text],
            b"1\t10\ta\r\n2\t20\tb\r3\t30\tc\r\n".to_vec(),
        ),
        (
            "CRLF, then a last bare CR",
            vec![text],
            b"1\t10\ta\r\n2\t20\tb\r".to_vec(),
        ),
        (
            "CSV: LF, then CRLF",
            vec![csv],
            b"1,10,a\n2,20,b\r\n".to_vec(),
        ),
        ("CSV: CR, then LF", vec![csv], b"1,10,a\r2,20,b\n".to_vec()),
        // An end marker with no line end after it: corrupt (text), data (CSV).
        (
            "end marker, no line end",
            vec![text],
            b"1\t10\ta\n\\.".to_vec(),
        ),
        (
            "bare CR, end marker, no line end",
            vec![text],
            b"1\t10\ta\r\\.".to_vec(),
        ),
        (
            "CSV end marker, no line end",
            vec![csv],
            b"1,10,a\n\\.".to_vec(),
        ),
        // Bytes that are no UTF-8: PostgreSQL's words, from a shard.
        (
            "invalid UTF-8 in a text key",
            vec!["COPY users FROM STDIN"],
            b"a@x\t1\tz\nb\xff@x\t2\tz\n".to_vec(),
        ),
        (
            "invalid UTF-8 after a key's escape",
            vec!["COPY users FROM STDIN"],
            b"a@x\t1\tz\nb\\351@x\t2\tz\n".to_vec(),
        ),
        (
            "invalid UTF-8 in a short row",
            vec!["COPY users FROM STDIN"],
            b"a@x\t1\tz\nb\xe9@x\n".to_vec(),
        ),
        // Encodings: the key is converted as the shard will convert it.
        (
            "LATIN1 text keys",
            vec![latin1],
            b"jos\xe9@x\t1\tcaf\xe9\nm\xfcller@x\t2\t\xe0\n\xff\xfe@x\t3\t\\N\n".to_vec(),
        ),
        (
            "client_encoding LATIN1",
            vec!["SET client_encoding TO 'LATIN1'", "COPY users FROM STDIN"],
            b"jos\xe9@x\t1\tcaf\xe9\nm\xfcller@x\t2\t\xe0\n".to_vec(),
        ),
        (
            "client_encoding LATIN1 in CSV",
            vec![
                "SET client_encoding = latin1",
                "COPY users FROM STDIN (FORMAT csv)",
            ],
            b"\"jos\xe9@x\",1,\"caf\xe9\"\n\xe5@x,2,\n".to_vec(),
        ),
        (
            "WIN1252 text keys",
            vec!["COPY users FROM STDIN (ENCODING 'win1252')"],
            b"\x80uro@x\t1\t\x93q\x94\n\x9fe@x\t2\t\x85\na\xe9@x\t3\tz\n".to_vec(),
        ),
        (
            "WIN1252 byte with no character, in the key",
            vec!["COPY users FROM STDIN (ENCODING 'WIN1252')"],
            b"a@x\t1\tz\nb\x81@x\t2\tz\n".to_vec(),
        ),
        (
            "LATIN1 bad integer key",
            vec!["COPY accounts FROM STDIN (ENCODING 'LATIN1')"],
            b"1\t10\ta\n2\xe9\t20\tb\n".to_vec(),
        ),
        (
            "SJIS: a second byte that is a backslash",
            vec!["COPY accounts FROM STDIN (ENCODING 'SJIS')"],
            b"1\t10\t\x95\x5c\n2\t20\t\x83\x5c\x83\x67\n3\t30\t\\\\\n".to_vec(),
        ),
        (
            "SJIS CSV: a second byte that is the delimiter",
            vec!["COPY accounts FROM STDIN (FORMAT csv, DELIMITER '|', ENCODING 'SJIS')"],
            b"1|10|\x83|\n2|20|\x95\x7c\x95\x7c\n".to_vec(),
        ),
        (
            "BIG5 ASCII text keys",
            vec!["COPY users FROM STDIN (ENCODING 'BIG5')"],
            b"a@x\t1\t\xa4\x5c\nb@x\t2\t\xb3\x5c\n".to_vec(),
        ),
        (
            "EUC_JP ASCII text keys",
            vec!["COPY users FROM STDIN (ENCODING 'EUC_JP')"],
            b"a@x\t1\t\xa4\xa2\nb@x\t2\t\xa4\xa4\n".to_vec(),
        ),
    ];
    for (name, sqls, data) in &cases {
        let args: Vec<&str> = sqls.iter().flat_map(|s| ["-c", *s]).collect();
        let (ok_p, _, err_p) = psql(&c.uri(), &args, data);
        let (ok_o, _, err_o) = psql(&oracle, &args, data);
        assert_eq!(
            (ok_p, &err_p),
            (ok_o, &err_o),
            "{name}: psql's report through Pieskieo vs PostgreSQL"
        );
        let verbose: Vec<&str> = ["-v", "VERBOSITY=sqlstate"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        if !ok_o {
            let (_, _, code_p) = psql(&c.uri(), &verbose, data);
            let (_, _, code_o) = psql(&oracle, &verbose, data);
            assert_eq!(code_p, code_o, "{name}: SQLSTATE");
        }
        assert_eq!(contents(&c.uri()), contents(&oracle), "{name}: rows");
        let rows = placed(&c).await;
        if ok_o {
            assert!(rows > 0, "{name}: rows landed");
        } else {
            assert_eq!(rows, 0, "{name}: nothing anywhere");
        }
        exec(&client, "TRUNCATE accounts, users").await;
        let (ok, _, err) = psql(&oracle, &["-c", "TRUNCATE accounts, users"], b"");
        assert!(ok, "{err}");
    }

    // A text key with characters the proxy cannot convert exactly: refused
    // (PostgreSQL would take it), nothing committed.
    let (ok, _, err) = psql(
        &c.uri(),
        &[
            "-v",
            "VERBOSITY=sqlstate",
            "-c",
            "COPY users FROM STDIN (ENCODING 'SJIS')",
        ],
        b"a@x\t1\tz\n\x95\x5c@x\t2\tz\n",
    );
    assert!(!ok && err.contains("0A000"), "{err}");
    assert_eq!(placed(&c).await, 0);
}
