//! Table-driven tests of INSERTs that leave the shard key to the cluster.

use super::*;
use crate::config::Config;

fn map() -> ShardMap {
    ShardMap::from_config(&Config::parse(SAMPLE_CONFIG, "test.toml").unwrap())
}

#[test]
fn inserts_without_the_key_ask_the_cluster_for_keys() {
    let m = map();
    let need = |sql: &str| match plan(sql, &m) {
        Ok(Plan::NeedKeys(r)) => r,
        other => panic!("{sql}: {other:?}"),
    };
    let r = need("INSERT INTO accounts (balance) VALUES (1), (2) RETURNING id");
    assert_eq!(
        (r.table.as_str(), r.column.as_str(), r.rows, r.source),
        ("accounts", "id", 2, KeySource::Sequence)
    );
    assert_eq!(need("INSERT INTO accounts DEFAULT VALUES").rows, 1);
    assert_eq!(
        need("INSERT INTO accounts (id, balance) VALUES (DEFAULT, 1), (5, 2), (default, 3)").rows,
        2
    );
    assert_eq!(
        need("INSERT INTO public.accounts (balance) VALUES ($1)").table,
        "public.accounts"
    );
    // Keys given: routed as before.
    assert!(matches!(
        plan("INSERT INTO accounts (id, balance) VALUES (5, 1)", &m),
        Ok(Plan::Forward { .. })
    ));
    // Text keys are the application's to give.
    assert_eq!(
        plan("INSERT INTO users (name) VALUES ('x')", &m)
            .unwrap_err()
            .sqlstate(),
        crate::error::SqlState::FEATURE_NOT_SUPPORTED
    );
}

#[test]
fn keys_are_filled_in_then_routed() {
    let m = map();
    let keys: Vec<String> = vec!["7".into(), "8".into()];
    let sql = fill_keys(
        "INSERT INTO accounts (balance) VALUES (1), (2) RETURNING id",
        "id",
        &keys,
        None,
        false,
    )
    .unwrap();
    assert_eq!(
        sql,
        "INSERT INTO accounts (balance, \"id\") VALUES (1, '7'), (2, '8') RETURNING id"
    );
    let s7 = m.tables["accounts"]
        .shard_for(&KeyValue::Int(7), 3)
        .unwrap();
    let s8 = m.tables["accounts"]
        .shard_for(&KeyValue::Int(8), 3)
        .unwrap();
    match plan(&sql, &m) {
        Ok(Plan::Forward { route, .. }) if s7 == s8 => assert_eq!(route, Route::One(s7)),
        Ok(Plan::Split { parts }) => assert_eq!(parts.len(), 2),
        other => panic!("{other:?}"),
    }
    let sql = fill_keys(
        "INSERT INTO accounts (id, balance) VALUES (DEFAULT, $1), (9, $2), (DEFAULT, $3)",
        "id",
        &keys,
        Some(4),
        true,
    )
    .unwrap();
    assert_eq!(
        sql,
        "INSERT INTO accounts (id, balance) OVERRIDING SYSTEM VALUE VALUES ($4, $1), (9, $2), ($5, $3)"
    );
    let sql = fill_keys(
        "INSERT INTO accounts DEFAULT VALUES",
        "id",
        &keys[..1],
        None,
        false,
    )
    .unwrap();
    assert_eq!(sql, "INSERT INTO accounts (\"id\") VALUES ('7')");
    assert!(matches!(
        plan(&sql, &m),
        Ok(Plan::Forward {
            route: Route::One(_),
            ..
        })
    ));
}

#[test]
fn insertmanyvalues_is_read_as_the_rows_it_lists() {
    let m = map();
    let sql = "INSERT INTO accounts (note, balance) SELECT p0::VARCHAR, p1::NUMERIC(12, 2) FROM (VALUES ($1::VARCHAR, $2, 0), ($3::VARCHAR, $4, 1)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING accounts.id, accounts.id AS id__1";
    match plan(sql, &m) {
        Ok(Plan::NeedKeys(r)) => assert_eq!(r.rows, 2),
        other => panic!("{other:?}"),
    }
    let filled = fill_keys(sql, "id", &["5".into(), "6".into()], Some(5), false).unwrap();
    assert_eq!(
        filled,
        "INSERT INTO accounts (note, balance, \"id\") VALUES (($1::VARCHAR)::VARCHAR, ($2)::NUMERIC(12,2), $5), (($3::VARCHAR)::VARCHAR, ($4)::NUMERIC(12,2), $6) RETURNING accounts.id, accounts.id AS id__1"
    );
    // Keys given: split by them like any multi-row INSERT.
    let given = "INSERT INTO accounts (id, note) SELECT p0, p1 FROM (VALUES (1, 'a', 0), (2, 'b', 1), (3, 'c', 2)) AS s(p0, p1, n) ORDER BY n";
    assert!(matches!(
        plan(given, &m),
        Ok(Plan::Split { .. } | Plan::Forward { .. })
    ));
    // Not that shape: an INSERT ... SELECT over no sharded table, whose
    // rows the proxy routes; over a sharded one, refused.
    for sql in [
        "INSERT INTO accounts (id) SELECT p0 FROM (VALUES (1, 1), (2, 0)) AS s(p0, n) ORDER BY n",
        "INSERT INTO accounts (id) SELECT p0 + x FROM (VALUES (1)) AS s(p0)",
    ] {
        assert!(
            matches!(plan(sql, &m), Ok(Plan::InsertSelect { .. })),
            "{sql}"
        );
    }
    assert!(plan("INSERT INTO accounts (id) SELECT id FROM accounts", &m).is_err());
}

#[test]
fn unnest_of_constant_arrays_is_read_as_rows() {
    let m = map();
    let sql = r#"INSERT INTO "accounts" ("note", "balance") SELECT * FROM UNNEST(( E'{b0,b''1,NULL,"x\\"y\\\\z",""}')::varchar[], ('{1.50,0,2,3,4}')::numeric[]) RETURNING "accounts"."id""#;
    match plan(sql, &m) {
        Ok(Plan::NeedKeys(r)) => assert_eq!(r.rows, 5),
        other => panic!("{other:?}"),
    }
    let filled = fill_keys(
        sql,
        "id",
        &["1".into(), "2".into(), "3".into(), "4".into(), "5".into()],
        None,
        false,
    )
    .unwrap();
    assert_eq!(
        filled,
        r#"INSERT INTO "accounts" ("note", "balance", "id") VALUES ('b0'::VARCHAR, '1.50'::NUMERIC, '1'), ('b''1'::VARCHAR, '0'::NUMERIC, '2'), (NULL::VARCHAR, '2'::NUMERIC, '3'), ('x"y\z'::VARCHAR, '3'::NUMERIC, '4'), (''::VARCHAR, '4'::NUMERIC, '5') RETURNING "accounts"."id""#
    );
    let given = "INSERT INTO accounts (id, note) SELECT * FROM UNNEST('{1,2,3}'::int8[], '{a,b,c}'::text[])";
    assert!(matches!(
        plan(given, &m),
        Ok(Plan::Split { .. } | Plan::Forward { .. })
    ));
    // Arrays that are not constants, or nested, are not read as rows: the
    // statement is an INSERT ... SELECT whose rows the proxy routes.
    for sql in [
        "INSERT INTO accounts (id) SELECT * FROM UNNEST($1::int8[])",
        "INSERT INTO accounts (id) SELECT * FROM UNNEST('{{1,2}}'::int8[])",
    ] {
        assert!(
            matches!(plan(sql, &m), Ok(Plan::InsertSelect { .. })),
            "{sql}"
        );
    }
}

/// An INSERT without a column list asks for the table's columns; with
/// them, the list goes right after the table (and alias), the rest of the
/// text untouched.
#[test]
fn inserts_without_a_column_list_get_one() {
    let m = map();
    for (sql, count) in [
        ("INSERT INTO accounts VALUES (1, 2)", 2),
        (
            "INSERT INTO accounts VALUES (DEFAULT, 2, 'x') RETURNING id",
            3,
        ),
        ("INSERT INTO accounts SELECT 1, 2", 2),
    ] {
        match plan(sql, &m) {
            Ok(Plan::NeedColumns(r)) => {
                assert_eq!((r.table.as_str(), r.count), ("accounts", count))
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
    // SELECT *: the width is unknown, so the column list is still required.
    assert!(plan("INSERT INTO accounts SELECT * FROM other", &m).is_err());
    let cols = ["id".to_string(), "Bal\"x".to_string()];
    for (sql, want) in [
        (
            "INSERT INTO accounts VALUES (1, 2)",
            "INSERT INTO accounts (\"id\", \"Bal\"\"x\") VALUES (1, 2)",
        ),
        (
            "insert into public.\"accounts\" as a /* ü */ values ('ü', 2)",
            "insert into public.\"accounts\" as a (\"id\", \"Bal\"\"x\") /* ü */ values ('ü', 2)",
        ),
        (
            "INSERT\n  INTO\taccounts\nSELECT 1, 2",
            "INSERT\n  INTO\taccounts (\"id\", \"Bal\"\"x\")\nSELECT 1, 2",
        ),
    ] {
        assert_eq!(with_columns(sql, &cols).as_deref(), Some(want), "{sql}");
    }
    assert_eq!(
        with_columns("INSERT INTO accounts (id) VALUES (1)", &cols),
        None
    );
}
