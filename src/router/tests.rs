//! Table-driven routing tests: SQL in, plan out. No I/O.

use super::*;
use crate::config::Config;

const CONFIG: &str = super::SAMPLE_CONFIG;

fn map() -> ShardMap {
    ShardMap::from_config(&Config::parse(CONFIG, "test.toml").unwrap())
}

fn shard_of(m: &ShardMap, table: &str, key: KeyValue) -> ShardId {
    m.tables[table].shard_for(&key, m.shards).unwrap()
}

fn fwd(route: Route, write: bool) -> Plan {
    Plan::Forward {
        route,
        write: write.into(),
    }
}

#[test]
fn routes_by_key() {
    let m = map();
    let s7 = shard_of(&m, "accounts", KeyValue::Int(7));
    let s8 = shard_of(&m, "accounts", KeyValue::Int(8));
    let s_neg = shard_of(&m, "accounts", KeyValue::Int(-5));
    let se = shard_of(&m, "users", KeyValue::Text("a@b".into()));
    let cases: Vec<(&str, Plan)> = vec![
        ("SELECT * FROM accounts WHERE id = 7", fwd(Route::One(s7), false)),
        ("select balance from accounts a where a.id = 7 and balance > 0", fwd(Route::One(s7), false)),
        ("SELECT * FROM accounts WHERE 7 = id", fwd(Route::One(s7), false)),
        ("SELECT * FROM accounts WHERE id = '7'", fwd(Route::One(s7), false)),
        ("SELECT * FROM accounts WHERE id = -5", fwd(Route::One(s_neg), false)),
        ("SELECT * FROM accounts WHERE (id = 7) AND (balance = 1)", fwd(Route::One(s7), false)),
        ("SELECT * FROM public.accounts WHERE id = 7::bigint", fwd(Route::One(s7), false)),
        ("SELECT * FROM accounts WHERE id = 7 FOR UPDATE", fwd(Route::One(s7), true)),
        ("SELECT * FROM accounts WHERE id IN (7, 8)", fwd(Route::from_shards(vec![s7, s8], 3), false)),
        ("SELECT * FROM accounts WHERE id = 7 OR id = 8", fwd(Route::All, false)),
        ("SELECT * FROM accounts WHERE id + 1 = 8", fwd(Route::All, false)),
        ("SELECT * FROM accounts", fwd(Route::All, false)),
        ("SELECT * FROM accounts WHERE id = 7 ORDER BY balance LIMIT 3", fwd(Route::One(s7), false)),
        ("SELECT count(*) FROM accounts WHERE id = 7", fwd(Route::One(s7), false)),
        ("SELECT * FROM users WHERE email = 'a@b'", fwd(Route::One(se), false)),
        ("SELECT * FROM regions WHERE code = 150", fwd(Route::One(ShardId(1)), false)),
        ("SELECT * FROM regions WHERE code = 99", fwd(Route::One(ShardId(0)), false)),
        ("SELECT * FROM tenants WHERE name = 'c'", fwd(Route::One(ShardId(2)), false)),
        ("UPDATE accounts SET balance = balance + 1 WHERE id = 7", fwd(Route::One(s7), true)),
        ("UPDATE accounts SET balance = 0", fwd(Route::All, true)),
        ("DELETE FROM accounts WHERE id = 8", fwd(Route::One(s8), true)),
        ("DELETE FROM accounts", fwd(Route::All, true)),
        ("INSERT INTO accounts (id, balance) VALUES (7, 1)", fwd(Route::One(s7), true)),
        ("INSERT INTO accounts (balance, id) VALUES (1, 7) RETURNING *", fwd(Route::One(s7), true)),
        ("INSERT INTO accounts (id, balance) VALUES (7, 1) ON CONFLICT (id) DO UPDATE SET balance = 2", fwd(Route::One(s7), true)),
        (
            "SELECT * FROM accounts a JOIN orders o ON o.account_id = a.id WHERE a.id = 7 AND o.account_id = 7",
            fwd(Route::One(s7), false),
        ),
        ("SELECT * FROM accounts a JOIN countries c ON c.code = a.country WHERE a.id = 7", fwd(Route::One(s7), false)),
        ("SELECT 1", fwd(Route::Any, false)),
        ("SELECT * FROM countries", fwd(Route::Any, false)),
        ("SELECT * FROM pg_catalog.pg_class", fwd(Route::Any, false)),
        ("SELECT * FROM local_stuff", fwd(Route::One(ShardId(0)), false)),
        ("INSERT INTO local_stuff VALUES (1)", fwd(Route::One(ShardId(0)), true)),
        ("INSERT INTO countries (code) VALUES ('pl')", Plan::Replicate),
        ("UPDATE countries SET name = 'x'", Plan::Replicate),
        ("CREATE TABLE accounts (id bigint primary key, balance bigint)", Plan::Replicate),
        ("CREATE INDEX ON accounts (balance)", Plan::Replicate),
        ("DROP TABLE IF EXISTS accounts", Plan::Replicate),
        ("ALTER TABLE accounts ADD COLUMN note text", Plan::Replicate),
        ("TRUNCATE accounts", Plan::Replicate),
        ("SHOW TimeZone", fwd(Route::Any, false)),
        ("SELECT * FROM generate_series(1, 3)", fwd(Route::Any, false)),
    ];
    for (sql, want) in cases {
        assert_eq!(plan(sql, &m).as_ref(), Ok(&want), "{sql}");
    }
}

#[test]
fn splits_multi_row_inserts() {
    let m = map();
    let keys: Vec<i64> = (1..=12).collect();
    let values: Vec<String> = keys.iter().map(|k| format!("({k}, 'n{k}')")).collect();
    let sql = format!(
        "INSERT INTO accounts (id, note) VALUES {}",
        values.join(", ")
    );
    let Plan::Split { parts } = plan(&sql, &m).unwrap() else {
        panic!("expected a split");
    };
    let mut seen = 0;
    for SplitPart {
        shard, sql: text, ..
    } in &parts
    {
        for k in &keys {
            let has = text.contains(&format!("({k}, 'n{k}')"));
            if has {
                seen += 1;
                assert_eq!(
                    *shard,
                    shard_of(&m, "accounts", KeyValue::Int(*k)),
                    "{text}"
                );
            }
        }
    }
    assert_eq!(seen, keys.len());
}

#[test]
fn transaction_control_and_settings() {
    let m = map();
    let cases: Vec<(&str, Plan)> = vec![
        ("BEGIN", Plan::Begin),
        ("begin isolation level serializable", Plan::Begin),
        ("START TRANSACTION READ ONLY", Plan::Begin),
        ("COMMIT", Plan::Commit),
        ("end", Plan::Commit),
        ("ROLLBACK", Plan::Rollback),
        ("abort", Plan::Rollback),
        ("SAVEPOINT s1", Plan::Savepoint("s1".into())),
        ("RELEASE SAVEPOINT s1", Plan::Release("s1".into())),
        ("release s1", Plan::Release("s1".into())),
        ("ROLLBACK TO SAVEPOINT s1", Plan::RollbackTo("s1".into())),
        ("rollback to s1", Plan::RollbackTo("s1".into())),
        (
            "SET TimeZone = 'UTC'",
            Plan::Set(SetCommand::Set("timezone".into())),
        ),
        (
            "SET SESSION search_path TO a, b",
            Plan::Set(SetCommand::Set("search_path".into())),
        ),
        (
            "set time zone 'UTC'",
            Plan::Set(SetCommand::Set("timezone".into())),
        ),
        ("SET LOCAL work_mem = '1MB'", Plan::Set(SetCommand::Local)),
        (
            "SET CONSTRAINTS ALL DEFERRED",
            Plan::Set(SetCommand::Local),
        ),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Plan::Set(SetCommand::Local),
        ),
        ("RESET ALL", Plan::Set(SetCommand::ResetAll)),
        ("DISCARD ALL", Plan::Set(SetCommand::ResetAll)),
        (
            "RESET application_name",
            Plan::Set(SetCommand::Reset("application_name".into())),
        ),
        // The current transaction's own modes last until it ends.
        (
            "SET transaction_isolation = 'repeatable read'",
            Plan::Set(SetCommand::Local),
        ),
        (
            "set session transaction_isolation to serializable",
            Plan::Set(SetCommand::Local),
        ),
        (
            "SET LOCAL transaction_read_only = on",
            Plan::Set(SetCommand::Local),
        ),
        ("RESET transaction_isolation", Plan::Set(SetCommand::Local)),
        (
            "SET transaction_deferrable TO DEFAULT",
            Plan::Set(SetCommand::Local),
        ),
        // Under the settings it really sets, each alone.
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            Plan::Set(SetCommand::Defaults(vec![(
                "default_transaction_isolation".into(),
                "SET default_transaction_isolation = 'repeatable read'".into(),
            )])),
        ),
        (
            "set session characteristics as transaction read only, isolation level serializable not deferrable isolation level read committed",
            Plan::Set(SetCommand::Defaults(vec![
                (
                    "default_transaction_deferrable".into(),
                    "SET default_transaction_deferrable = off".into(),
                ),
                (
                    "default_transaction_isolation".into(),
                    "SET default_transaction_isolation = 'read committed'".into(),
                ),
                (
                    "default_transaction_read_only".into(),
                    "SET default_transaction_read_only = on".into(),
                ),
            ])),
        ),
        // Outside the grammar: kept whole under all three names.
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE /* */",
            Plan::Set(SetCommand::Defaults(
                [
                    "default_transaction_isolation",
                    "default_transaction_read_only",
                    "default_transaction_deferrable",
                ]
                .iter()
                .map(|n| {
                    (
                        n.to_string(),
                        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE /* */"
                            .into(),
                    )
                })
                .collect(),
            )),
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(plan(sql, &m).as_ref(), Ok(&want), "{sql}");
    }
}

#[test]
fn refuses_what_it_cannot_route_safely() {
    let m = map();
    let cases: Vec<(&str, SqlState)> = vec![
        (
            "SELECT * FROM pieskieo.decisions",
            SqlState::INSUFFICIENT_PRIVILEGE,
        ),
        (
            "delete from PIESKIEO.decisions",
            SqlState::INSUFFICIENT_PRIVILEGE,
        ),
        (
            "INSERT INTO \"pieskieo\".decisions VALUES (1)",
            SqlState::INSUFFICIENT_PRIVILEGE,
        ),
        (
            "DROP SCHEMA pieskieo CASCADE",
            SqlState::INSUFFICIENT_PRIVILEGE,
        ),
        (
            "ALTER SCHEMA pieskieo RENAME TO x",
            SqlState::INSUFFICIENT_PRIVILEGE,
        ),
        (
            "SELECT * FROM accounts a JOIN pieskieo . decisions d ON true WHERE a.id = $1",
            SqlState::INSUFFICIENT_PRIVILEGE,
        ),
        (
            "SET search_path = pieskieo",
            SqlState::INSUFFICIENT_PRIVILEGE,
        ),
        (
            "SET search_path TO public, \"pieskieo\"",
            SqlState::INSUFFICIENT_PRIVILEGE,
        ),
        (
            "SELECT pg_catalog.set_config('search_path', 'public, pieskieo', false)",
            SqlState::INSUFFICIENT_PRIVILEGE,
        ),
        (
            "SET LOCAL search_path = E'pieskieo'",
            SqlState::INSUFFICIENT_PRIVILEGE,
        ),
        (
            "INSERT INTO accounts (id) VALUES (NULL)",
            SqlState::NOT_NULL_VIOLATION,
        ),
        (
            "INSERT INTO accounts SELECT * FROM other",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "INSERT INTO users (note) VALUES ('x')",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "INSERT INTO accounts (id) VALUES (random())",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "INSERT INTO accounts (id) SELECT id FROM orders",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "INSERT INTO accounts (id) VALUES ('abc')",
            SqlState::INVALID_TEXT_REPRESENTATION,
        ),
        (
            "INSERT INTO regions (code) VALUES (99999999999)",
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
        ),
        (
            "INSERT INTO tenants (name) VALUES ('zzz')",
            SqlState::CHECK_VIOLATION,
        ),
        (
            "UPDATE accounts SET id = 8 WHERE id = 7",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "UPDATE accounts SET id = 8",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "SELECT * FROM accounts a WHERE balance > (SELECT avg(account_id) FROM orders o WHERE o.note = a.note)",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "SELECT * FROM accounts a JOIN orders o ON o.account_id = a.balance",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "SELECT * FROM accounts a JOIN users u ON u.email = a.note",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "SELECT id, sum(balance) OVER () FROM accounts",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "SELECT count(DISTINCT balance) FROM accounts",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "SELECT string_agg(note, ',') || 'x' FROM accounts",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "SELECT string_agg(note, ',') FROM accounts",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "SELECT DISTINCT ON (balance) id FROM accounts ORDER BY balance",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "SELECT balance, count(*) FROM accounts GROUP BY ROLLUP (balance)",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "SELECT id FROM accounts ORDER BY balance FETCH FIRST 2 ROWS WITH TIES",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "SELECT * FROM accounts, (SELECT id FROM accounts) s ORDER BY 1",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "SELECT * FROM accounts UNION SELECT * FROM accounts",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "SELECT * FROM accounts a JOIN local_stuff l ON true WHERE a.id = 1",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        ("PREPARE TRANSACTION 'x'", SqlState::FEATURE_NOT_SUPPORTED),
        ("COMMIT PREPARED 'x'", SqlState::FEATURE_NOT_SUPPORTED),
        ("ROLLBACK PREPARED 'x'", SqlState::FEATURE_NOT_SUPPORTED),
        (
            "SELECT * FROM accounts WHERE id = = 1",
            SqlState::SYNTAX_ERROR,
        ),
        ("SET ROLE admin", SqlState::FEATURE_NOT_SUPPORTED),
        (
            "COPY accounts FROM '/tmp/data'",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "COPY accounts TO PROGRAM 'cat'",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        // A text key left out: the cluster chooses integer and uuid keys only.
        ("COPY users (name) FROM STDIN", SqlState::FEATURE_NOT_SUPPORTED),
        (
            "COPY accounts FROM STDIN WITH SOMETHING",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "COPY (SELECT * FROM accounts FOR UPDATE) TO STDOUT",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "COPY (SELECT * FROM accounts) TO '/tmp/x'",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
    ];
    for (sql, code) in cases {
        match plan(sql, &m) {
            Err(e) => assert_eq!(e.sqlstate(), code, "{sql}: {e}"),
            Ok(p) => panic!("{sql}: expected {code}, got {p:?}"),
        }
    }
}

#[test]
fn the_word_pieskieo_elsewhere_is_fine() {
    let m = map();
    for sql in [
        "SELECT 'pieskieo.decisions'",
        "SELECT 1 -- pieskieo.decisions",
        "SELECT pieskieo FROM accounts WHERE id = 1",
        "CREATE TABLE \"Pieskieo\".t (a int)",
        "SET search_path = public, \"Pieskieo\"",
        "SELECT set_config('search_path', 'public', false)",
    ] {
        assert!(plan(sql, &m).is_ok(), "{sql}");
    }
}

#[test]
fn unparsable_statements_on_local_tables_go_to_the_default_shard() {
    let m = map();
    // sqlparser does not know this syntax; it names no distributed table.
    let p = plan(
        "CREATE OR REPLACE AGGREGATE my_agg (int) (sfunc = int4pl, stype = int)",
        &m,
    );
    assert_eq!(p, Ok(fwd(Route::One(ShardId(0)), true)));
}

#[test]
fn key_literals_parse_like_postgres() {
    assert_eq!(
        KeyValue::parse(KeyType::Int4, " -42 "),
        Ok(KeyValue::Int(-42))
    );
    assert!(KeyValue::parse(KeyType::Int2, "40000").is_err());
    assert!(KeyValue::parse(KeyType::Int8, "1.5").is_err());
    let u = KeyValue::parse(KeyType::Uuid, "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}").unwrap();
    assert_eq!(u.to_string(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert!(KeyValue::parse(KeyType::Uuid, "a0eebc99").is_err());
}

#[test]
fn bound_parameters_route_like_literals() {
    let m = map();
    let s7 = shard_of(&m, "accounts", KeyValue::Int(7));
    let p = |sql: &str, params: &[Bound]| plan_bound(sql, &m, params);
    let seven = [Bound::Text("7".into())];
    assert_eq!(
        p("SELECT * FROM accounts WHERE id = $1", &seven),
        Ok(fwd(Route::One(s7), false))
    );
    assert_eq!(
        p(
            "INSERT INTO accounts (id, balance) VALUES ($1, $2)",
            &[Bound::Text("7".into()), Bound::Text("1".into())]
        ),
        Ok(fwd(Route::One(s7), true))
    );
    // A value the proxy cannot read constrains nothing; a NULL key is refused.
    assert_eq!(
        p("SELECT * FROM accounts WHERE id = $1", &[Bound::Unknown]),
        Ok(fwd(Route::All, false))
    );
    assert_eq!(
        p("INSERT INTO accounts (id) VALUES ($1)", &[Bound::Null])
            .unwrap_err()
            .sqlstate(),
        SqlState::NOT_NULL_VIOLATION
    );
    // A parameterised multi-row INSERT over shards is cut per shard, with
    // the placeholders renumbered and mapped back to the client's.
    let keys: Vec<i64> = (1..=6).collect();
    let sql = "INSERT INTO accounts (id, note) VALUES ($1, $2), ($3, $4), ($5, $6), ($7, $8), ($9, $10), ($11, $12)";
    let bound: Vec<Bound> = keys
        .iter()
        .flat_map(|k| [Bound::Text(k.to_string()), Bound::Text("n".into())])
        .collect();
    let Ok(Plan::Split { parts }) = p(sql, &bound) else {
        panic!("expected a split")
    };
    let mut rows_seen = 0;
    for part in &parts {
        let n = part.params.len();
        assert_eq!(n % 2, 0);
        for (k, orig) in part.params.iter().enumerate() {
            assert!(part.sql.contains(&format!("${}", k + 1)), "{}", part.sql);
            if k % 2 == 0 {
                let key = keys[orig / 2];
                assert_eq!(part.shard, shard_of(&m, "accounts", KeyValue::Int(key)));
                rows_seen += 1;
            }
        }
        assert!(!part.sql.contains(&format!("${}", n + 1)), "{}", part.sql);
    }
    assert_eq!(rows_seen, 6);
}

fn merge_plan(sql: &str) -> crate::merge::MergePlan {
    match plan(sql, &map()) {
        Ok(Plan::Merge { route, plan }) => {
            assert_eq!(route, Route::All, "{sql}");
            (*plan).clone()
        }
        other => panic!("{sql}: expected a merge, got {other:?}"),
    }
}

#[test]
fn co_located_joins_on_shard_keys() {
    let m = map();
    let s7 = shard_of(&m, "accounts", KeyValue::Int(7));
    // The key fixed on one side reaches the other through the join.
    assert_eq!(
        plan(
            "SELECT * FROM accounts a JOIN orders o ON o.account_id = a.id WHERE a.id = 7",
            &m
        ),
        Ok(fwd(Route::One(s7), false))
    );
    assert_eq!(
        plan(
            "SELECT * FROM accounts a, orders o WHERE o.account_id = a.id AND o.account_id = 7",
            &m
        ),
        Ok(fwd(Route::One(s7), false))
    );
    // Not fixed: every shard joins its own rows.
    assert_eq!(
        plan(
            "SELECT * FROM accounts a LEFT JOIN orders o ON a.id = o.account_id",
            &m
        ),
        Ok(fwd(Route::All, false))
    );
    assert_eq!(
        plan(
            "DELETE FROM orders o USING accounts a WHERE a.id = o.account_id AND a.balance < 0",
            &m
        ),
        Ok(fwd(Route::All, true))
    );
}

#[test]
fn cross_shard_reads_are_rewritten_for_merging() {
    use crate::merge::{AggFunc, Output, Shape, SortKey};
    // Plain concatenation stays a forward.
    assert_eq!(
        plan("SELECT id FROM accounts WHERE balance > 0", &map()),
        Ok(fwd(Route::All, false))
    );
    let p = merge_plan("SELECT id, note AS n FROM accounts ORDER BY n DESC, 1 LIMIT 5 OFFSET 10");
    assert_eq!(
        p.sql,
        "SELECT id, note AS n, note AS \"pieskieo_sort_1\", id AS \"pieskieo_sort_2\" FROM accounts ORDER BY n DESC, 1 LIMIT 15"
    );
    assert_eq!(p.shape, Shape::Rows { hidden: 2 });
    assert_eq!(
        p.order,
        vec![
            SortKey {
                col: 0,
                desc: true,
                nulls_first: true
            },
            SortKey {
                col: 1,
                desc: false,
                nulls_first: false
            },
        ]
    );
    assert_eq!((p.offset, p.limit), (10, Some(5)));

    let p = merge_plan(
        "SELECT note, avg(balance), count(*) FROM accounts GROUP BY 1 HAVING max(balance) > 3 ORDER BY count(*) DESC",
    );
    assert_eq!(
        p.sql,
        "SELECT note, sum(balance) AS \"avg\", count(balance) AS \"pieskieo_count\", count(*) AS \"count\", max(balance) AS \"max\" FROM accounts GROUP BY note"
    );
    let Shape::Groups {
        keys,
        outputs,
        visible,
        having,
    } = &p.shape
    else {
        panic!("groups expected")
    };
    assert_eq!(keys, &vec![0]);
    assert_eq!(*visible, 3);
    assert_eq!(
        outputs,
        &vec![
            Output::Pass(0),
            Output::Agg {
                func: AggFunc::Avg,
                col: 1,
                count: Some(2)
            },
            Output::Agg {
                func: AggFunc::Count,
                col: 3,
                count: None
            },
            Output::Agg {
                func: AggFunc::Max,
                col: 4,
                count: None
            },
        ]
    );
    assert!(having.is_some());
    assert_eq!(
        p.order,
        vec![SortKey {
            col: 2,
            desc: true,
            nulls_first: true
        }]
    );

    // count(DISTINCT shard key) is exact: each key lives on one shard.
    let p = merge_plan("SELECT count(DISTINCT id) FROM accounts");
    assert_eq!(
        p.sql,
        "SELECT count(DISTINCT id) AS \"count\" FROM accounts"
    );
}

#[test]
fn keyed_plans_agree_with_full_plans() {
    let m = map();
    let cases = [
        ("SELECT * FROM accounts WHERE id = $1", true),
        ("SELECT balance FROM accounts a WHERE a.id = $1 AND balance > $2 ORDER BY balance LIMIT 5", true),
        ("UPDATE accounts SET balance = balance + $2 WHERE id = $1", true),
        ("DELETE FROM accounts WHERE $1 = id", true),
        ("INSERT INTO accounts (balance, id) VALUES ($1, $2)", true),
        ("SELECT * FROM users WHERE email = $1", true),
        // Not keyed: the value alone does not decide the route.
        ("SELECT * FROM accounts WHERE id = $1 OR id = $2", false),
        ("SELECT * FROM accounts a JOIN orders o ON o.account_id = a.id WHERE a.id = $1", false),
        ("UPDATE accounts SET id = $2 WHERE id = $1", false),
        ("INSERT INTO accounts (id, balance) VALUES ($1, 1), ($2, 2)", false),
        ("SELECT * FROM accounts WHERE balance = $1", false),
        ("BEGIN", false),
    ];
    for (sql, keyed) in cases {
        let k = KeyedPlan::find(sql, &m);
        assert_eq!(k.is_some(), keyed, "{sql}");
        let Some(k) = k else { continue };
        for id in [1i64, 7, -3, 123456789] {
            let params = if sql.contains("users") {
                vec![Bound::Text(format!("u{id}@x"))]
            } else if sql.starts_with("INSERT") {
                vec![Bound::Text("5".into()), Bound::Text(id.to_string())]
            } else {
                vec![Bound::Text(id.to_string()), Bound::Text("5".into())]
            };
            assert_eq!(
                k.plan(&params, &m),
                Some(plan_bound(sql, &m, &params).unwrap()),
                "{sql} {id}"
            );
        }
        // What the shortcut cannot place is left to the full planner.
        assert_eq!(k.plan(&[Bound::Null, Bound::Null], &m), None);
        assert_eq!(k.plan(&[Bound::Unknown, Bound::Unknown], &m), None);
    }
}

#[test]
fn write_detection_is_exact_or_says_maybe() {
    let m = map();
    let writes = |sql: &str| match plan(sql, &m) {
        Ok(Plan::Forward { write, .. }) => write,
        other => panic!("{sql}: {other:?}"),
    };
    let cases = [
        ("SELECT * FROM accounts WHERE id = 1", Writes::No),
        (
            "SELECT count(*), max(balance) FROM accounts WHERE id = 1",
            Writes::No,
        ),
        (
            "SELECT lower(name), now() FROM accounts WHERE id = 1",
            Writes::No,
        ),
        ("SELECT 1", Writes::No),
        ("SELECT * FROM generate_series(1, 3)", Writes::No),
        // A function the classifier does not know may write.
        ("SELECT f(id) FROM accounts WHERE id = 1", Writes::Maybe),
        ("SELECT bump(1)", Writes::Maybe),
        (
            "SELECT * FROM accounts WHERE id = 1 AND public.ok(balance)",
            Writes::Maybe,
        ),
        ("SELECT * FROM my_srf(1)", Writes::Maybe),
        ("SELECT pg_advisory_xact_lock(1)", Writes::Maybe),
        // Locks anywhere are writes.
        (
            "SELECT * FROM accounts WHERE id = 1 FOR UPDATE",
            Writes::Yes,
        ),
        (
            "SELECT * FROM notes WHERE id IN (SELECT id FROM notes FOR UPDATE)",
            Writes::Yes,
        ),
        (
            "WITH l AS (SELECT * FROM notes FOR SHARE) SELECT * FROM l",
            Writes::Yes,
        ),
        ("SELECT * INTO copy_of_notes FROM notes", Writes::Yes),
        // EXPLAIN ANALYZE runs the statement.
        ("EXPLAIN SELECT * FROM accounts WHERE id = 1", Writes::No),
        (
            "EXPLAIN UPDATE accounts SET balance = 0 WHERE id = 1",
            Writes::No,
        ),
        (
            "EXPLAIN ANALYZE UPDATE accounts SET balance = 0 WHERE id = 1",
            Writes::Yes,
        ),
        (
            "EXPLAIN (ANALYZE, COSTS OFF) DELETE FROM accounts WHERE id = 1",
            Writes::Yes,
        ),
        (
            "EXPLAIN (ANALYZE false) DELETE FROM accounts WHERE id = 1",
            Writes::No,
        ),
        (
            "EXPLAIN ANALYZE SELECT f(id) FROM accounts WHERE id = 1",
            Writes::Maybe,
        ),
        ("UPDATE accounts SET balance = 0 WHERE id = 1", Writes::Yes),
        // Text the parser cannot read.
        ("VACUUM (SOMETHING NEW) notes", Writes::Maybe),
    ];
    for (sql, want) in cases {
        assert_eq!(writes(sql), want, "{sql}");
    }
}

#[test]
fn copy_and_lock_plans() {
    let m = map();
    let s7 = shard_of(&m, "accounts", KeyValue::Int(7));
    let copy_in = |sql: &str| match plan(sql, &m) {
        Ok(Plan::CopyIn(c)) => (c.table, c.placement, c.columns),
        other => panic!("{sql}: {other:?}"),
    };
    assert_eq!(
        copy_in("copy pgbench_accounts from stdin with (freeze on)"),
        ("pgbench_accounts".into(), CopyPlacement::Sharded, None)
    );
    assert_eq!(
        copy_in("COPY public.accounts (id, balance) FROM stdin;"),
        (
            "accounts".into(),
            CopyPlacement::Sharded,
            Some(vec!["id".into(), "balance".into()])
        )
    );
    let reference = m.reference.iter().next().unwrap().clone();
    assert_eq!(
        copy_in(&format!("COPY {reference} FROM STDIN")).1,
        CopyPlacement::Reference
    );
    assert_eq!(copy_in("COPY notes FROM STDIN").1, CopyPlacement::Unsharded);
    let copy_out = |sql: &str| match plan(sql, &m) {
        Ok(Plan::CopyOut(c)) => (c.route, c.format, c.header),
        other => panic!("{sql}: {other:?}"),
    };
    assert_eq!(
        copy_out("COPY accounts TO STDOUT WITH (FORMAT csv, HEADER)"),
        (Route::All, CopyFormat::Csv, true)
    );
    assert_eq!(
        copy_out("COPY (SELECT * FROM accounts WHERE id IN (1, 2, 3, 4, 5, 6)) TO STDOUT (FORMAT binary)").1,
        CopyFormat::Binary
    );
    let cases: Vec<(&str, Plan)> = vec![
        (
            "COPY (SELECT * FROM accounts WHERE id = 7) TO STDOUT",
            fwd(Route::One(s7), false),
        ),
        (
            "COPY notes TO STDOUT",
            fwd(Route::One(m.default_shard), false),
        ),
        (
            "COPY notes FROM '/tmp/x'",
            fwd(Route::One(m.default_shard), true),
        ),
        (
            "LOCK TABLE public.accounts IN ACCESS SHARE MODE",
            fwd(Route::All, false),
        ),
        (
            "lock accounts, notes in exclusive mode nowait",
            fwd(Route::All, false),
        ),
        ("LOCK TABLE notes", fwd(Route::One(m.default_shard), true)),
        ("vacuum analyze pgbench_accounts", fwd(Route::All, false)),
        ("VACUUM", fwd(Route::All, false)),
        ("VACUUM (VERBOSE, ANALYZE)", fwd(Route::All, false)),
        ("ANALYZE notes", fwd(Route::One(m.default_shard), true)),
    ];
    for (sql, want) in cases {
        assert_eq!(plan(sql, &m).unwrap(), want, "{sql}");
    }
}

/// `COPY (query) TO STDOUT` of a query the proxy merges or stages: a staged
/// plan whose outer statement is the COPY with the client's options, which
/// reaches one shard once the rows are in place.
#[test]
fn copy_of_merged_and_staged_queries() {
    let m = map();
    let staged = |sql: &str| match plan(sql, &m) {
        Ok(Plan::Staged(s)) => s,
        other => panic!("{sql}: {other:?}"),
    };
    let s = staged("COPY (SELECT * FROM accounts ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)");
    assert_eq!(s.stages.len(), 1);
    assert_eq!(s.stages[0].sql, "SELECT * FROM accounts ORDER BY id");
    assert!(matches!(
        s.stages[0].plan,
        Plan::Merge {
            route: Route::All,
            ..
        }
    ));
    assert_eq!(
        s.outer,
        "COPY (SELECT * FROM pieskieo_stage_0) TO STDOUT WITH (FORMAT csv, HEADER)"
    );
    // Filled with the merged rows, the COPY reads no sharded table.
    let rows = materialize(
        &[("id".into(), 20), ("?column?".into(), 25)],
        &[
            vec![Some("1".into()), Some("a\tb".into())],
            vec![Some("2".into()), None],
        ],
    )
    .unwrap();
    let filled = s.fill(&[rows]);
    assert!(filled.starts_with("COPY (SELECT * FROM (VALUES ('1'::int8, 'a\tb'::text), ('2'::int8, NULL::text)) AS pieskieo_values(\"id\", \"?column?\")) TO STDOUT"), "{filled}");
    assert_eq!(plan(&filled, &m).unwrap(), fwd(Route::Any, false));
    // Known before the rows are in place: no statement of every row to plan.
    assert_eq!(s.filled.as_deref(), Some(&fwd(Route::Any, false)));
    let none = s.fill(&[materialize(&[("n".into(), 20)], &[]).unwrap()]);
    assert_eq!(plan(&none, &m).unwrap(), fwd(Route::Any, false));

    for sql in [
        "COPY (SELECT id, balance FROM accounts ORDER BY balance DESC LIMIT 5 OFFSET 2) TO STDOUT (FORMAT binary)",
        "COPY (SELECT DISTINCT balance FROM accounts) TO STDOUT",
        "copy (select balance % 3, count(*) from accounts group by 1) to stdout with csv header",
    ] {
        let s = staged(sql);
        assert!(matches!(s.stages[..], [Stage { plan: Plan::Merge { .. }, .. }]), "{sql}");
        assert!(s.outer.starts_with("COPY (SELECT * FROM pieskieo_stage_0) "), "{sql}");
    }

    // A count over a subquery that only filters is a merge (counted as
    // `SELECT count(*) FROM accounts WHERE ...`).
    let s = staged(
        "COPY (SELECT count(*) FROM (SELECT id FROM accounts WHERE balance > 10) s) TO STDOUT",
    );
    assert!(matches!(
        s.stages[..],
        [Stage {
            plan: Plan::Merge { .. },
            ..
        }]
    ));
    assert_eq!(s.outer, "COPY (SELECT * FROM pieskieo_stage_0) TO STDOUT");

    // Two stages already: the outer query becomes the COPY's.
    for sql in [
        "COPY (SELECT count(*) FROM (SELECT DISTINCT balance FROM accounts) s) TO STDOUT",
        "COPY (SELECT sum(balance) * 100 / count(*) FROM accounts) TO STDOUT (FORMAT csv, FORCE_QUOTE *)",
    ] {
        let s = staged(sql);
        assert!(!s.stages.is_empty(), "{sql}");
        assert!(s.outer.starts_with("COPY (SELECT "), "{sql}: {}", s.outer);
        assert_eq!(s.filled, None, "{sql}");
        assert!(s.outer.contains("pieskieo_stage_0"), "{sql}: {}", s.outer);
        let tail = sql.rsplit(") TO STDOUT").next().unwrap();
        assert!(s.outer.ends_with(&format!(") TO STDOUT{tail}")), "{sql}: {}", s.outer);
    }

    // Still refused: a query that may write on several shards, and COPY
    // (query) to a server file.
    for sql in [
        "COPY (SELECT * FROM accounts ORDER BY id) TO '/tmp/x'",
        "COPY (SELECT * FROM accounts FOR UPDATE) TO STDOUT",
    ] {
        assert!(
            matches!(plan(sql, &m), Err(RouteError::Unsupported(_))),
            "{sql}: {:?}",
            plan(sql, &m)
        );
    }
}

#[test]
fn a_cast_that_changes_a_key_literal_is_no_key() {
    let m = map();
    let s7 = shard_of(&m, "accounts", KeyValue::Int(7));
    let sa = shard_of(&m, "users", KeyValue::Text("abc".into()));
    // Casts that keep the value route as before.
    for sql in [
        "SELECT * FROM accounts WHERE id = '7'::int4",
        "SELECT * FROM accounts WHERE id = 7::pg_catalog.int8",
        "SELECT * FROM accounts WHERE id = bigint '7'",
    ] {
        assert_eq!(plan(sql, &m).unwrap(), fwd(Route::One(s7), false), "{sql}");
    }
    assert_eq!(
        plan("SELECT * FROM users WHERE email = 'abc'::text", &m).unwrap(),
        fwd(Route::One(sa), false)
    );
    // 'abcdef'::varchar(3) is 'abc', '0012'::int is 12: never routed by
    // the literal as written (the shard of "abcdef" may hold no "abc").
    for sql in [
        "SELECT * FROM users WHERE email = 'abcdef'::varchar(3)",
        "SELECT * FROM users WHERE email = 'abcdef'::char(3)",
        "SELECT * FROM users WHERE email = '0012'::int",
        "SELECT * FROM accounts WHERE id = '7'::text",
    ] {
        let p = plan(sql, &m).unwrap();
        assert!(
            !matches!(
                p,
                Plan::Forward {
                    route: Route::One(_),
                    ..
                }
            ),
            "{sql}: {p:?}"
        );
    }
    assert!(plan(
        "INSERT INTO users (email) VALUES ('abcdef'::varchar(3))",
        &m
    )
    .is_err());
}

/// `standard_conforming_strings = off` is refused: the proxy reads `'a\'`
/// as PostgreSQL does with it on.
#[test]
fn nonstandard_strings_are_refused() {
    let m = map();
    for sql in [
        "SET standard_conforming_strings = off",
        "set standard_conforming_strings to 'OFF'",
        "SET SESSION standard_conforming_strings = false",
        "SET LOCAL standard_conforming_strings TO 0",
        "SET standard_conforming_strings = n",
    ] {
        match plan(sql, &m) {
            Err(e) => assert_eq!(e.sqlstate(), SqlState::FEATURE_NOT_SUPPORTED, "{sql}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
    for sql in [
        "SET standard_conforming_strings = on",
        "SET standard_conforming_strings TO DEFAULT",
        "SET LOCAL standard_conforming_strings = true",
    ] {
        assert!(matches!(plan(sql, &m), Ok(Plan::Set(_))), "{sql}");
    }
}

#[test]
fn a_merge_calling_an_unknown_function_may_write() {
    for sql in [
        "SELECT sum(f()) FROM accounts",
        "SELECT sum(f())::bigint FROM accounts WHERE id IN (1, 2, 3)",
        "SELECT f() FROM accounts ORDER BY id",
    ] {
        match plan(sql, &map()) {
            Ok(Plan::Merge { plan, .. }) => assert_eq!(plan.write, Writes::Maybe, "{sql}"),
            other => eprintln!("{sql}: {other:?}"),
        }
    }
}
