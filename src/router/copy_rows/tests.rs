//! Row framing and routing of COPY streams, in every piece size.

use super::binary::BINARY_SIGNATURE;
use super::*;
use crate::config::Config;
use crate::router::{copy, Plan, SAMPLE_CONFIG};

fn map() -> ShardMap {
    ShardMap::from_config(&Config::parse(SAMPLE_CONFIG, "sample.toml").unwrap())
}

fn router(sql: &str, columns: &[&str]) -> RowRouter {
    let m = map();
    let Ok(Plan::CopyIn(c)) = copy::plan(sql, &m) else {
        panic!("not a COPY IN plan: {sql}");
    };
    let rule = m.tables[&c.table].clone();
    RowRouter::new(
        c.options,
        rule,
        &m,
        columns.iter().map(|s| s.to_string()).collect(),
        1 << 20,
    )
    .unwrap()
}

/// Feeds `data` in pieces of `step` bytes; returns (dest, row) pairs.
fn run(r: &mut RowRouter, data: &[u8], step: usize) -> Result<Vec<(Dest, Vec<u8>)>, RowError> {
    let mut out = Vec::new();
    let mut sink = |d: Dest, _line: u64, b: &[u8]| out.push((d, b.to_vec()));
    for piece in data.chunks(step.max(1)) {
        r.feed(piece, &mut sink)?;
    }
    r.finish(&mut sink)?;
    Ok(out)
}

fn shard(id: i64) -> Dest {
    let m = map();
    Dest::Shard(
        m.tables["accounts"]
            .shard_for(&KeyValue::Int(id), m.shards)
            .unwrap(),
    )
}

#[test]
fn text_rows_in_any_pieces() {
    let data = b"1\tone\n2\ttwo \\\\ \\n still two\n3\t\\N\n\\.\nignored\n";
    for step in [1, 2, 3, 7, 100] {
        let mut r = router("COPY accounts FROM STDIN", &["id", "name"]);
        let rows = run(&mut r, data, step).unwrap();
        assert_eq!(rows.len(), 3, "step {step}");
        assert_eq!(rows[0], (shard(1), b"1\tone\n".to_vec()));
        assert_eq!(rows[1].0, shard(2));
        assert_eq!(rows[1].1, b"2\ttwo \\\\ \\n still two\n".to_vec());
        assert_eq!(rows[2].0, shard(3));
    }
}

#[test]
fn text_key_not_first_and_escaped() {
    let mut r = router("COPY accounts (name, id) FROM STDIN", &["name", "id"]);
    // A delimiter escaped with a backslash is data; the key is "\061" = "1".
    let rows = run(&mut r, b"a\\\tb\t\\061\nx\t2", 4).unwrap();
    assert_eq!(rows[0].0, shard(1));
    assert_eq!(rows[1], (shard(2), b"x\t2".to_vec()));
}

#[test]
fn text_errors_name_the_line() {
    let mut r = router("COPY accounts FROM STDIN", &["id", "name"]);
    let e = run(&mut r, b"1\ta\n2\n", 3).unwrap_err();
    assert_eq!(e.sqlstate, SqlState::BAD_COPY_FILE_FORMAT);
    assert_eq!(e.message, "missing data for column \"name\"");
    assert_eq!(e.context, "COPY accounts, line 2: \"2\"");

    // A bad key before the missing column: PostgreSQL converts it first.
    let mut r = router("COPY accounts FROM STDIN", &["id", "name"]);
    let e = run(&mut r, b"1\ta\nx\n", 3).unwrap_err();
    assert_eq!(e.sqlstate, SqlState::INVALID_TEXT_REPRESENTATION);
    assert_eq!(e.context, "COPY accounts, line 2, column id: \"x\"");

    let mut r = router("COPY accounts FROM STDIN", &["id", "name"]);
    let e = run(&mut r, b"1\ta\tb\n", 3).unwrap_err();
    assert_eq!(e.message, "extra data after last expected column");

    let mut r = router("COPY accounts FROM STDIN", &["id", "name"]);
    let e = run(&mut r, b"1\ta\nx1\ta\n", 5).unwrap_err();
    assert_eq!(e.sqlstate, SqlState::INVALID_TEXT_REPRESENTATION);
    assert_eq!(e.message, "invalid input syntax for type bigint: \"x1\"");
    assert_eq!(e.context, "COPY accounts, line 2, column id: \"x1\"");

    // A NULL key goes to the default shard (whose NOT NULL says it in
    // PostgreSQL's words), and the COPY fails anyway.
    let mut r = router("COPY accounts FROM STDIN", &["id", "name"]);
    let rows = run(&mut r, b"1\ta\n\\N\ta\n", 5).unwrap();
    assert_eq!(rows[1].0, Dest::Shard(ShardId(0)));
    let e = r.null_key().unwrap();
    assert_eq!(e.sqlstate, SqlState::NOT_NULL_VIOLATION);
    assert_eq!(e.context, "COPY accounts, line 2: \"\\N\ta\"");
}

#[test]
fn csv_quotes_newlines_header_and_nulls() {
    let data = b"id,name\n1,\"a,b\"\n\"2\",\"multi\r\nline \"\"q\"\"\"\n3,\n";
    for step in [1, 2, 5, 64] {
        let mut r = router(
            "COPY accounts FROM STDIN (FORMAT csv, HEADER true)",
            &["id", "name"],
        );
        let rows = run(&mut r, data, step).unwrap();
        assert_eq!(rows.len(), 4, "step {step}");
        assert_eq!(rows[0], (Dest::All, b"id,name\n".to_vec()));
        assert_eq!(rows[1].0, shard(1));
        assert_eq!(rows[2].0, shard(2));
        assert_eq!(rows[2].1, b"\"2\",\"multi\r\nline \"\"q\"\"\"\n".to_vec());
        assert_eq!(rows[3].0, shard(3));
    }
    // Unquoted empty is NULL; quoted empty is an empty string (not a bigint).
    let mut r = router("COPY accounts FROM STDIN (FORMAT csv)", &["id", "name"]);
    run(&mut r, b",x\n", 2).unwrap();
    assert!(r.null_key().is_some());
    let mut r = router("COPY accounts FROM STDIN (FORMAT csv)", &["id", "name"]);
    let e = run(&mut r, b"\"\",x\n", 2).unwrap_err();
    assert_eq!(e.sqlstate, SqlState::INVALID_TEXT_REPRESENTATION);
    // FORCE_NULL: a quoted null string is NULL too.
    let mut r = router(
        "COPY accounts FROM STDIN (FORMAT csv, FORCE_NULL (id))",
        &["id", "name"],
    );
    run(&mut r, b"\"\",x\n", 2).unwrap();
    assert!(r.null_key().is_some());
    // Another escape character; an unterminated quote at the end.
    let mut r = router(
        "COPY accounts FROM STDIN (FORMAT csv, ESCAPE '\\', DELIMITER ';')",
        &["name", "id"],
    );
    let rows = run(&mut r, b"\"a\\\"b;\";7\n", 3).unwrap();
    assert_eq!(rows[0].0, shard(7));
    let mut r = router("COPY accounts FROM STDIN (FORMAT csv)", &["id", "name"]);
    let e = run(&mut r, b"1,\"open\n", 3).unwrap_err();
    assert_eq!(e.message, "unterminated CSV quoted field");
}

#[test]
fn binary_tuples_in_any_pieces() {
    let mut data = BINARY_SIGNATURE.to_vec();
    data.extend_from_slice(&0u32.to_be_bytes());
    data.extend_from_slice(&4u32.to_be_bytes());
    data.extend_from_slice(b"ext!");
    let tuple = |id: i64, name: &[u8]| {
        let mut t = 2i16.to_be_bytes().to_vec();
        t.extend_from_slice(&8i32.to_be_bytes());
        t.extend_from_slice(&id.to_be_bytes());
        t.extend_from_slice(&(name.len() as i32).to_be_bytes());
        t.extend_from_slice(name);
        t
    };
    data.extend(tuple(1, b"one"));
    data.extend(tuple(2, b""));
    data.extend_from_slice(&(-1i16).to_be_bytes());
    for step in [1, 3, 10, 1000] {
        let mut r = router("COPY accounts FROM STDIN (FORMAT binary)", &["id", "name"]);
        let rows = run(&mut r, &data, step).unwrap();
        assert_eq!(rows.len(), 4, "step {step}");
        assert_eq!(rows[0].0, Dest::All);
        assert_eq!(rows[0].1.len(), 23);
        assert_eq!(rows[1], (shard(1), tuple(1, b"one")));
        assert_eq!(rows[2], (shard(2), tuple(2, b"")));
        assert_eq!(rows[3], (Dest::All, (-1i16).to_be_bytes().to_vec()));
    }
}

#[test]
fn line_ends_as_the_first_line_has_them() {
    // A bare CR ends lines when the first line ends so, in any pieces.
    for step in [1, 2, 3, 100] {
        let mut r = router("COPY accounts FROM STDIN", &["id", "name"]);
        let rows = run(&mut r, b"1\ta\r2\tb\\\rc\r\\.\r", step).unwrap();
        assert_eq!(rows.len(), 2, "step {step}");
        assert_eq!(rows[0], (shard(1), b"1\ta\r".to_vec()));
        assert_eq!(rows[1], (shard(2), b"2\tb\\\rc\r".to_vec()));
        let mut r = router("COPY accounts FROM STDIN (FORMAT csv)", &["id", "name"]);
        let rows = run(&mut r, b"1,\"a\rb\"\r2,b\r3,c", step).unwrap();
        assert_eq!(rows.len(), 3, "step {step}");
        assert_eq!(rows[2], (shard(3), b"3,c".to_vec()));
        // A CR at the very end: the line end, the last line's.
        let mut r = router("COPY accounts FROM STDIN", &["id", "name"]);
        let rows = run(&mut r, b"1\ta\r", step).unwrap();
        assert_eq!(rows, vec![(shard(1), b"1\ta\r".to_vec())]);
    }
    // A line end that changes: PostgreSQL's error, on the line it is found.
    for (data, message) in [
        (
            &b"1\ta\n2\tb\r\n"[..],
            "literal carriage return found in data",
        ),
        (b"1\ta\r2\tb\n", "literal newline found in data"),
        (
            b"1\ta\r\n2\tb\r3\tc\r\n",
            "literal carriage return found in data",
        ),
        (b"1\ta\r\n2\tb\r", "literal carriage return found in data"),
        (b"1\ta\r\n2\tb\n", "literal newline found in data"),
    ] {
        for step in [1, 2, 64] {
            let mut r = router("COPY accounts FROM STDIN", &["id", "name"]);
            let e = run(&mut r, data, step).unwrap_err();
            assert_eq!(e.sqlstate, SqlState::BAD_COPY_FILE_FORMAT);
            assert_eq!(e.message, message, "{data:?}");
            assert_eq!(e.context, "COPY accounts, line 2");
            assert!(e.hint.is_some());
        }
    }
    let mut r = router("COPY accounts FROM STDIN (FORMAT csv)", &["id", "name"]);
    let e = run(&mut r, b"1,a\n2,b\r\n", 4).unwrap_err();
    assert_eq!(e.message, "unquoted carriage return found in data");
    assert_eq!(
        e.hint,
        Some("Use quoted CSV field to represent carriage return.")
    );
}

#[test]
fn keys_in_other_encodings() {
    let m = map();
    let users = |enc: &str| {
        let sql = format!("COPY users FROM STDIN (ENCODING '{enc}')");
        let Ok(Plan::CopyIn(c)) = copy::plan(&sql, &m) else {
            panic!("not a COPY IN plan: {sql}");
        };
        let cols = vec!["email".to_string(), "n".to_string()];
        RowRouter::new(c.options, m.tables["users"].clone(), &m, cols, 1 << 20).unwrap()
    };
    let text = |s: &str| {
        Dest::Shard(
            m.tables["users"]
                .shard_for(&KeyValue::Text(s.into()), m.shards)
                .unwrap(),
        )
    };
    let rows = run(&mut users("LATIN1"), b"jos\xe9\t1\n", 3).unwrap();
    assert_eq!(rows[0].0, text("josé"));
    let rows = run(&mut users("WIN1252"), b"\x80\t1\n\x81\t2\n", 3).unwrap();
    assert_eq!(rows[0].0, text("€"));
    // No character for 0x81: the default shard refuses it in its words.
    assert_eq!(rows[1].0, Dest::Shard(m.default_shard));
    // SJIS: 0x5C after a lead byte is part of the character, not an escape.
    let rows = run(&mut users("SJIS"), b"a\t\x95\x5c\nb\t2\n", 1).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].0, rows[1].0), (text("a"), text("b")));
    // A non-ASCII text key it cannot convert: refused, not guessed.
    let e = run(&mut users("SJIS"), b"\x95\x5c\t1\n", 1).unwrap_err();
    assert_eq!(e.sqlstate, SqlState::FEATURE_NOT_SUPPORTED);
    // client_encoding applies when the COPY names none.
    let Ok(Plan::CopyIn(c)) = copy::plan("COPY users FROM STDIN", &m) else {
        panic!()
    };
    let cols = vec!["email".to_string(), "n".to_string()];
    let mut r = RowRouter::new(c.options, m.tables["users"].clone(), &m, cols, 1 << 20).unwrap();
    r.set_client_encoding("latin1");
    assert_eq!(run(&mut r, b"jos\xe9\t1\n", 2).unwrap()[0].0, text("josé"));
}

#[test]
fn an_end_marker_without_a_line_end() {
    let mut r = router("COPY accounts FROM STDIN", &["id", "name"]);
    let e = run(&mut r, b"1\ta\n\\.", 3).unwrap_err();
    assert_eq!(e.message, "end-of-copy marker corrupt");
    assert_eq!(e.context, "COPY accounts, line 2");
    // In CSV it is a row's data (a key that is no bigint).
    let mut r = router("COPY accounts FROM STDIN (FORMAT csv)", &["id"]);
    let e = run(&mut r, b"1\n\\.", 3).unwrap_err();
    assert_eq!(e.sqlstate, SqlState::INVALID_TEXT_REPRESENTATION);
    // With a line end it ends the data.
    let mut r = router("COPY accounts FROM STDIN", &["id", "name"]);
    assert_eq!(run(&mut r, b"1\ta\n\\.\n", 3).unwrap().len(), 1);
}

/// A router for a COPY whose column list leaves out the key.
fn keyless(sql: &str) -> RowRouter {
    let m = map();
    let Ok(Plan::CopyIn(c)) = copy::plan(sql, &m) else {
        panic!("not a COPY IN plan: {sql}");
    };
    assert!(c.keys.is_some(), "{sql}");
    let rule = m.tables[&c.table].clone();
    RowRouter::keyless(c.options, rule, &m, c.columns.unwrap(), 1 << 20).unwrap()
}

/// Pieces routed: where, the client line, the bytes.
type Routed = Vec<(Dest, u64, Vec<u8>)>;

/// Feeds `data` in `step`-byte pieces to a keyless router, giving each full
/// batch (and the rest at the end) keys counting on from 1; the pieces
/// routed, and how many batches.
fn run_keyless(r: &mut RowRouter, data: &[u8], step: usize) -> Result<(Routed, usize), RowError> {
    let mut out = Vec::new();
    let mut next = 1i64;
    let mut batches = 0;
    let mut give = |r: &mut RowRouter, out: &mut Routed| {
        let keys: Vec<String> = (next..next + r.waiting() as i64)
            .map(|k| k.to_string())
            .collect();
        next += keys.len() as i64;
        batches += 1;
        r.place_keys(&keys, &mut |d, l, b| out.push((d, l, b.to_vec())))
    };
    for piece in data.chunks(step.max(1)) {
        let mut rest = piece;
        loop {
            let used = r.feed_some(rest, &mut |d, l, b| out.push((d, l, b.to_vec())))?;
            rest = &rest[used..];
            if r.batch_full() {
                give(r, &mut out)?;
            }
            if rest.is_empty() {
                break;
            }
        }
    }
    r.finish(&mut |d, l, b| out.push((d, l, b.to_vec())))?;
    if r.holds() {
        give(r, &mut out)?;
    }
    Ok((out, batches))
}

#[test]
fn keyless_rows_get_their_keys_in_order_in_batches() {
    let mut data = String::new();
    for i in 1..=2500 {
        data.push_str(&format!("v{i}\t{i}\n"));
    }
    for step in [1, 3, 1000, 7777, 1 << 20] {
        let mut r = keyless("COPY accounts (name, n) FROM STDIN");
        let (rows, batches) = run_keyless(&mut r, data.as_bytes(), step).unwrap();
        assert_eq!(rows.len(), 2500, "step {step}");
        assert_eq!(batches, 3, "step {step}");
        for (i, (dest, line, row)) in rows.iter().enumerate() {
            let k = i as i64 + 1;
            assert_eq!(*line, k as u64);
            assert_eq!(*dest, shard(k));
            assert_eq!(row, format!("v{k}\t{k}\t{k}\n").as_bytes());
        }
    }
}

#[test]
fn keyless_csv_header_and_fields() {
    // HEADER MATCH: the key's name goes on the header for the shards.
    let data = b"name\r\n\"a;b\"\r\n\"multi\r\nline\"\r\nlast";
    for step in [1, 2, 3, 100] {
        let mut r =
            keyless("COPY accounts (name) FROM STDIN (FORMAT csv, HEADER match, DELIMITER ';')");
        let (rows, _) = run_keyless(&mut r, data, step).unwrap();
        assert_eq!(rows[0], (Dest::All, 1, b"name;id\r\n".to_vec()));
        assert_eq!(rows[1].2, b"\"a;b\";1\r\n".to_vec());
        assert_eq!(rows[2].2, b"\"multi\r\nline\";2\r\n".to_vec());
        assert_eq!(rows[3], (shard(3), 4, b"last;3".to_vec()));
    }
    // A header with another count of fields: PostgreSQL's error, line 1.
    let mut r = keyless("COPY accounts (name) FROM STDIN (FORMAT csv, HEADER match)");
    let e = run_keyless(&mut r, b"name,x\na\n", 100).unwrap_err();
    assert_eq!(e.sqlstate, SqlState::BAD_COPY_FILE_FORMAT);
    assert_eq!(
        e.message,
        "wrong number of fields in header line: got 2, expected 1"
    );
    assert_eq!(e.context, "COPY accounts, line 1: \"name,x\"");
    // Plain HEADER: passed on as sent.
    let mut r = keyless("COPY accounts (name) FROM STDIN (FORMAT csv, HEADER)");
    let (rows, _) = run_keyless(&mut r, b"whatever,x\na\n", 100).unwrap();
    assert_eq!(rows[0].2, b"whatever,x\n".to_vec());
    // Rows with a wrong field count are refused before they wait.
    let mut r = keyless("COPY accounts (name, n) FROM STDIN");
    let e = run_keyless(&mut r, b"a\t1\nb\n", 100).unwrap_err();
    assert_eq!(e.message, "missing data for column \"n\"");
    assert_eq!(e.line, 2);
}

#[test]
fn keyless_fields_are_written_so_that_shards_read_the_key() {
    let text = CopyOptions::text();
    assert_eq!(keyless::text_field(b"12", &text), b"12");
    let mut o = CopyOptions::text();
    o.delimiter = b'-';
    o.null = b"7".to_vec();
    assert_eq!(keyless::text_field(b"a-b", &o), b"a\\-b");
    // Never the null string: its first byte as an escape.
    assert_eq!(keyless::text_field(b"7", &o), b"\\x37");
    let mut csv = CopyOptions::text();
    csv.format = CopyFormat::Csv;
    csv.delimiter = b',';
    csv.null = Vec::new();
    assert_eq!(keyless::csv_field(b"42", &csv), b"42");
    assert_eq!(keyless::csv_field(b"", &csv), b"\"\"");
    assert_eq!(keyless::csv_field(b"a\"b", &csv), b"\"a\"\"b\"");
}

#[test]
fn keyless_binary_tuples_get_the_key_field() {
    let mut data = BINARY_SIGNATURE.to_vec();
    data.extend_from_slice(&[0; 8]);
    for v in ["x", "yy"] {
        data.extend_from_slice(&1i16.to_be_bytes());
        data.extend_from_slice(&(v.len() as i32).to_be_bytes());
        data.extend_from_slice(v.as_bytes());
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    for (ty, width) in [("bigint", 8), ("integer", 4), ("smallint", 2)] {
        let mut r = keyless("COPY accounts (name) FROM STDIN (FORMAT binary)");
        r.set_key_type(ty).unwrap();
        let (rows, _) = run_keyless(&mut r, &data, 5).unwrap();
        assert_eq!(rows.len(), 4, "header, two rows, trailer");
        assert_eq!(rows[0].0, Dest::All);
        let mut want = 2i16.to_be_bytes().to_vec();
        want.extend_from_slice(&1i32.to_be_bytes());
        want.push(b'x');
        want.extend_from_slice(&(width as i32).to_be_bytes());
        want.extend_from_slice(&1i64.to_be_bytes()[8 - width..]);
        assert_eq!(rows[1], (shard(1), 1, want));
        assert_eq!(rows[2].0, shard(2));
        // The trailer comes after the rows that waited for keys.
        assert_eq!(rows[3], (Dest::All, 2, (-1i16).to_be_bytes().to_vec()));
    }
    let mut r = keyless("COPY accounts (name) FROM STDIN (FORMAT binary)");
    assert!(r.set_key_type("numeric").is_err());
}
