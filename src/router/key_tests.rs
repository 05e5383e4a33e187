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
