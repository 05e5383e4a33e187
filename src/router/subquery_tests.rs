//! Table-driven routing tests of subqueries and CTEs: one shard exactly when
//! every sharded table read, at any depth, is pinned there.

use super::*;
use crate::config::Config;

fn map() -> ShardMap {
    ShardMap::from_config(&Config::parse(SAMPLE_CONFIG, "test.toml").unwrap())
}

fn shard(m: &ShardMap, key: i64) -> ShardId {
    m.tables["accounts"]
        .shard_for(&KeyValue::Int(key), m.shards)
        .unwrap()
}

/// A key on another shard than `key`.
fn elsewhere(m: &ShardMap, key: i64) -> i64 {
    (key + 1..).find(|k| shard(m, *k) != shard(m, key)).unwrap()
}

fn route_of(sql: &str, m: &ShardMap) -> Result<Route, RouteError> {
    match plan(sql, m)? {
        Plan::Forward { route, .. } | Plan::Merge { route, .. } => Ok(route),
        // Two stages: never "one shard" as a whole.
        Plan::Staged(_) => Err(RouteError::Unsupported("staged".into())),
        other => panic!("{sql}: unexpected plan {other:?}"),
    }
}

#[test]
fn subqueries_pinned_by_their_keys_go_to_one_shard() {
    let m = map();
    let s17 = shard(&m, 17);
    let other = elsewhere(&m, 17);
    let one = [
        "WITH x AS (SELECT * FROM accounts WHERE id = 17) SELECT * FROM x",
        "SELECT s.balance FROM (SELECT id, balance FROM accounts WHERE id = 17) s",
        "SELECT count(*) FROM (SELECT id FROM accounts WHERE id = 17 AND balance > 1) s",
        "SELECT id FROM accounts WHERE id IN (SELECT 17)",
        "SELECT id FROM accounts WHERE id = (SELECT 17)",
        "SELECT id FROM accounts WHERE id IN (VALUES (17), (17))",
        "SELECT * FROM accounts WHERE id = 17 AND balance > (SELECT min(balance) FROM accounts WHERE id = 17)",
        "SELECT (SELECT count(*) FROM orders o WHERE o.account_id = 17) FROM accounts WHERE id = 17",
        // Correlated on the key: the subquery needs the outer row's shard only.
        "SELECT * FROM accounts a WHERE a.id = 17 AND EXISTS (SELECT 1 FROM orders o WHERE o.account_id = a.id)",
        "SELECT * FROM accounts a WHERE a.id = 17 AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.account_id = a.id)",
        "SELECT a.id, (SELECT sum(o.account_id) FROM orders o WHERE o.account_id = a.id) FROM accounts a WHERE a.id = 17",
        "SELECT * FROM accounts a WHERE a.id = 17 AND a.id IN (SELECT o.account_id FROM orders o WHERE o.account_id = a.id)",
        // Co-located join inside a CTE, pinned by either side.
        "WITH j AS (SELECT a.id FROM accounts a JOIN orders o ON o.account_id = a.id WHERE o.account_id = 17) SELECT * FROM j",
        // Reference tables and constants anywhere.
        "SELECT * FROM accounts WHERE id = 17 AND balance IN (SELECT 1 FROM countries)",
        "WITH c AS (SELECT * FROM countries) SELECT * FROM accounts, c WHERE accounts.id = 17",
        "SELECT * FROM (SELECT * FROM accounts WHERE id = 17) s UNION ALL SELECT * FROM accounts WHERE id = 17",
        "WITH RECURSIVE r AS (SELECT id FROM accounts WHERE id = 17 UNION ALL SELECT r.id FROM r WHERE false) SELECT * FROM r",
        // A CTE may take a sharded table's name; inside its own body the name is the table.
        "WITH accounts AS (SELECT * FROM accounts WHERE id = 17) SELECT * FROM accounts",
        "SELECT * FROM accounts WHERE id = 17 FOR UPDATE",
    ];
    for sql in one {
        assert_eq!(route_of(sql, &m), Ok(Route::One(s17)), "{sql}");
    }
    let locked = "SELECT * FROM (SELECT * FROM accounts WHERE id = 17 FOR UPDATE) s";
    assert_eq!(
        plan(locked, &m),
        Ok(Plan::Forward {
            route: Route::One(s17),
            write: Writes::Yes
        })
    );
    // Looks pinned, is not: each of these reads rows of other shards.
    let spread = [
        "SELECT * FROM (SELECT * FROM accounts WHERE id = 17 OR balance > 0) s".to_string(),
        format!("WITH x AS (SELECT * FROM accounts WHERE id = 17) SELECT * FROM x, accounts y WHERE y.id = {other}"),
        "SELECT * FROM accounts WHERE id = 17 AND balance > (SELECT avg(balance) FROM accounts)".to_string(),
        "SELECT * FROM accounts a WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.account_id = a.id AND o.account_id = 17)".to_string(),
        "SELECT (SELECT count(*) FROM orders o WHERE o.account_id = a.id AND o.account_id = 17) FROM accounts a".to_string(),
        "SELECT * FROM accounts a WHERE a.id = 17 AND EXISTS (SELECT 1 FROM orders o WHERE o.account_id = a.balance)".to_string(),
        // Unqualified: `id` may be a column of orders, not the outer key.
        "SELECT * FROM accounts a WHERE a.id = 17 AND EXISTS (SELECT 1 FROM orders WHERE account_id = id)".to_string(),
        // The inner alias `a` shadows the outer one.
        "SELECT * FROM accounts a WHERE a.id = 17 AND EXISTS (SELECT 1 FROM orders o, countries a WHERE o.account_id = a.id)".to_string(),
        format!("SELECT * FROM accounts WHERE id IN (SELECT id FROM accounts WHERE balance > 1) AND id = 17 OR id = {other}"),
        format!("SELECT id FROM accounts WHERE id IN (SELECT 17 UNION SELECT {other})"),
        "SELECT id FROM accounts WHERE id NOT IN (SELECT 17)".to_string(),
        // A CTE named like the table shadows it only where it is in scope.
        "SELECT * FROM accounts WHERE balance > 0 AND EXISTS (WITH accounts AS (SELECT 1) SELECT 1 FROM accounts)".to_string(),
    ];
    for sql in &spread {
        if let Ok(Route::One(s)) = route_of(sql, &m) {
            panic!("{sql}: routed to one shard {s}");
        }
    }
}

#[test]
fn cte_names_shadow_only_in_scope() {
    let m = map();
    // The outer `accounts` is the sharded table, unpinned: never `Any`.
    let sql = "SELECT * FROM accounts WHERE balance > 0 AND EXISTS (WITH accounts AS (SELECT 1) SELECT 1 FROM accounts)";
    assert!(
        !matches!(route_of(sql, &m), Ok(Route::Any | Route::One(_))),
        "{:?}",
        plan(sql, &m)
    );
    // Only the CTE: any shard.
    assert_eq!(
        route_of(
            "WITH accounts AS (SELECT 1 AS id) SELECT * FROM accounts",
            &m
        ),
        Ok(Route::Any)
    );
}

#[test]
fn subqueries_each_shard_can_answer_for_its_own_rows_run_everywhere() {
    let m = map();
    let everywhere = [
        "SELECT * FROM accounts a WHERE EXISTS (SELECT 1 FROM orders o WHERE o.account_id = a.id)",
        "SELECT a.id, (SELECT count(*) FROM orders o WHERE o.account_id = a.id) FROM accounts a",
        "SELECT * FROM accounts a WHERE balance > 0 AND a.id NOT IN (SELECT o.account_id FROM orders o WHERE o.account_id = a.id)",
        "SELECT * FROM accounts WHERE note IN (SELECT name FROM countries)",
        "WITH c AS (SELECT * FROM countries) SELECT * FROM accounts, c",
        "SELECT * FROM accounts, (SELECT 1) s",
    ];
    for sql in everywhere {
        assert_eq!(route_of(sql, &m), Ok(Route::All), "{sql}");
    }
    // Merged like any cross-shard read, the subquery inside each shard's statement.
    match plan(
        "SELECT a.id FROM accounts a WHERE EXISTS (SELECT 1 FROM orders o WHERE o.account_id = a.id) ORDER BY a.id LIMIT 3",
        &m,
    ) {
        Ok(Plan::Merge { plan, .. }) => assert!(plan.sql.contains("EXISTS"), "{}", plan.sql),
        other => panic!("{other:?}"),
    }
    // A subquery pinned elsewhere, or reading every shard, is not local.
    let refused = [
        "SELECT * FROM accounts WHERE balance > (SELECT balance FROM accounts WHERE id = 1)",
        "SELECT * FROM accounts a WHERE EXISTS (SELECT 1 FROM orders o WHERE o.account_id = a.balance)",
        "SELECT * FROM accounts a WHERE EXISTS (SELECT 1 FROM orders o WHERE o.account_id <> a.id)",
        "SELECT * FROM accounts a WHERE EXISTS (SELECT 1 FROM users u WHERE u.email = a.note)",
        "SELECT * FROM accounts WHERE balance > 0 AND EXISTS (WITH accounts AS (SELECT 1) SELECT 1 FROM accounts)",
    ];
    for sql in refused {
        assert!(
            !matches!(
                route_of(sql, &m),
                Ok(Route::All | Route::Any | Route::One(_))
            ),
            "{sql}: {:?}",
            plan(sql, &m)
        );
    }
}

#[test]
fn across_shards_subqueries_and_expressions_over_aggregates_run_in_two_stages() {
    let m = map();
    let staged = |sql: &str| match plan(sql, &m) {
        Ok(Plan::Staged(s)) => (*s).clone(),
        other => panic!("{sql}: {other:?}"),
    };
    let s = staged("SELECT max(s.id) FROM (SELECT id FROM accounts WHERE balance > 10) s");
    assert_eq!(
        s.outer,
        "SELECT max(s.id) FROM (SELECT * FROM pieskieo_stage_0) s"
    );
    assert_eq!(
        s.stages[0].sql,
        "SELECT id FROM accounts WHERE balance > 10"
    );
    // Counting a filtering subquery is counting its rows: one merge, no stages
    // (what ORMs send for pagination; parameters and both protocols work).
    match plan(
        "SELECT count(*) AS count_1 FROM (SELECT accounts.id, accounts.note FROM accounts WHERE balance > 10) AS anon_1",
        &m,
    ) {
        Ok(Plan::Merge { plan, .. }) => assert_eq!(
            plan.sql,
            "SELECT count(*) AS count_1 FROM accounts WHERE balance > 10"
        ),
        other => panic!("{other:?}"),
    }
    match plan_bound(
        "SELECT count(*) FROM (SELECT id FROM accounts WHERE balance > $1) s",
        &m,
        &[Bound::Text("3".into())],
    ) {
        Ok(Plan::Merge { plan, .. }) => {
            assert_eq!(
                plan.sql,
                "SELECT count(*) AS \"count\" FROM accounts WHERE balance > $1"
            );
            assert_eq!(plan.params, vec![0]);
        }
        other => panic!("{other:?}"),
    }
    // Not a plain filter: DISTINCT, LIMIT change the count; staged instead.
    staged("SELECT count(*) FROM (SELECT DISTINCT note FROM accounts) s");
    staged("SELECT count(*) FROM (SELECT id FROM accounts ORDER BY id LIMIT 5) s");
    let s = staged("SELECT note, round(avg(balance), 2), count(*) > 1 FROM accounts GROUP BY 1 HAVING count(*) % 2 = 0 ORDER BY 2 DESC LIMIT 3");
    assert_eq!(
        s.outer,
        "SELECT \"pieskieo_g1\" AS \"note\", round(\"pieskieo_a1\", 2), \"pieskieo_a2\" > 1 FROM (SELECT * FROM pieskieo_stage_0) AS pieskieo_groups WHERE \"pieskieo_a2\" % 2 = 0 ORDER BY 2 DESC LIMIT 3"
    );
    assert!(matches!(s.stages[0].plan, Plan::Merge { .. }));
    let s = staged(
        "SELECT * FROM accounts WHERE id IN (SELECT account_id FROM orders WHERE account_id < 5)",
    );
    assert_eq!(
        s.outer,
        "SELECT * FROM accounts WHERE id IN (SELECT * FROM pieskieo_stage_0)"
    );
    // Once the stage's rows are in, the outer query routes by them.
    let rows = materialize(
        &[("account_id".into(), 20)],
        &[vec![Some("17".into())], vec![Some("17".into())]],
    )
    .unwrap();
    let outer = s.fill(&[rows]);
    assert_eq!(
        outer,
        "SELECT * FROM accounts WHERE id IN (SELECT * FROM (VALUES ('17'::int8), ('17'::int8)) AS pieskieo_values(\"account_id\"))"
    );
    let s17 = m.tables["accounts"]
        .shard_for(&KeyValue::Int(17), m.shards)
        .unwrap();
    assert_eq!(route_of(&outer, &m), Ok(Route::One(s17)));
    // Values keep their exact text; no rows is a typed empty query.
    assert_eq!(
        materialize(
            &[("t".into(), 25)],
            &[vec![Some("a'b\\c".into())], vec![None]]
        )
        .unwrap(),
        "SELECT * FROM (VALUES (E'a''b\\\\c'::text), (NULL::text)) AS pieskieo_values(\"t\")"
    );
    assert_eq!(
        materialize(&[("n".into(), 1700)], &[]).unwrap(),
        "SELECT NULL::numeric AS \"n\" WHERE false"
    );
    assert!(
        materialize(&[("x".into(), 600)], &[]).is_err(),
        "point: no name known"
    );
    // What cannot run in stages is refused, saying so.
    for sql in [
        "SELECT * FROM accounts a WHERE balance > (SELECT avg(account_id) FROM orders o WHERE o.note = a.note)",
        "SELECT string_agg(note, ',') || 'x' FROM accounts",
        "SELECT sum(balance) OVER () + 1 FROM accounts",
        "SELECT * FROM (SELECT * FROM accounts FOR UPDATE) s",
    ] {
        assert_eq!(
            plan(sql, &m).map(|_| ()).unwrap_err().sqlstate(),
            crate::error::SqlState::FEATURE_NOT_SUPPORTED,
            "{sql}"
        );
    }
}

#[test]
fn updates_and_deletes_with_subqueries_route_like_selects() {
    let m = map();
    let s17 = shard(&m, 17);
    let w = |route| Plan::Forward {
        route,
        write: Writes::Yes,
    };
    let cases = [
        ("DELETE FROM orders WHERE account_id = 17 AND note IN (SELECT note FROM orders WHERE account_id = 17)", w(Route::One(s17))),
        ("UPDATE accounts a SET balance = (SELECT count(*) FROM orders o WHERE o.account_id = a.id) WHERE a.id = 17", w(Route::One(s17))),
        ("DELETE FROM accounts WHERE id IN (SELECT 17)", w(Route::One(s17))),
        ("UPDATE accounts a SET balance = (SELECT count(*) FROM orders o WHERE o.account_id = a.id)", w(Route::All)),
        ("DELETE FROM accounts a WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.account_id = a.id)", w(Route::All)),
        ("UPDATE accounts SET balance = 0 WHERE note IN (SELECT name FROM countries)", w(Route::All)),
        // Each shard answers NOT EXISTS for its own rows: the orders of an
        // account live with it.
        ("UPDATE accounts a SET balance = 1 WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.account_id = a.id AND o.account_id = 17)", w(Route::All)),
    ];
    for (sql, want) in cases {
        assert_eq!(plan(sql, &m), Ok(want), "{sql}");
    }
    for sql in [
        "DELETE FROM accounts WHERE id = 17 AND balance > (SELECT avg(balance) FROM accounts)",
        "UPDATE accounts SET balance = (SELECT max(account_id) FROM orders) WHERE id = 17",
        "DELETE FROM orders WHERE account_id = 17 RETURNING (SELECT count(*) FROM accounts)",
    ] {
        let p = plan(sql, &m);
        assert!(
            matches!(&p, Err(e) if e.sqlstate() == crate::error::SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {p:?}"
        );
    }
}

#[test]
fn window_functions_partitioned_by_the_shard_key_run_per_shard() {
    let m = map();
    assert_eq!(
        route_of(
            "SELECT id, sum(balance) OVER (PARTITION BY id) FROM accounts",
            &m
        ),
        Ok(Route::All)
    );
    match plan(
        "SELECT id, row_number() OVER (PARTITION BY note, id ORDER BY balance) AS r FROM accounts ORDER BY r DESC, id LIMIT 5",
        &m,
    ) {
        Ok(Plan::Merge { plan, .. }) => assert!(plan.sql.contains("OVER"), "{}", plan.sql),
        other => panic!("{other:?}"),
    }
    for sql in [
        "SELECT id, sum(balance) OVER () FROM accounts",
        "SELECT id, sum(balance) OVER (PARTITION BY note) FROM accounts",
        "SELECT id, sum(balance) OVER w FROM accounts WINDOW w AS (PARTITION BY id)",
        "SELECT id, count(*), sum(balance) OVER (PARTITION BY id) FROM accounts GROUP BY id, balance",
        "SELECT a.id, sum(o.account_id) OVER (PARTITION BY a.id) FROM accounts a JOIN orders o ON o.account_id = a.id",
    ] {
        assert!(
            matches!(plan(sql, &m), Err(e) if e.sqlstate() == crate::error::SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {:?}",
            plan(sql, &m)
        );
    }
}

/// An expression over aggregates that names no column (`count(*) + 1`) is
/// not a constant: each shard has its own value. It runs in two stages.
#[test]
fn expressions_over_aggregates_without_columns_are_staged() {
    let m = map();
    for sql in [
        "SELECT count(*) + 1 FROM accounts",
        "SELECT count(*) > 0 FROM accounts",
        "SELECT 'n='::text || count(*) FROM accounts",
        "SELECT 1, count(*) * 2 FROM accounts WHERE balance > 3",
        // A stage that runs in stages itself.
        "SELECT id FROM accounts WHERE balance > (SELECT avg(balance) + 15 FROM accounts)",
    ] {
        assert!(
            matches!(plan(sql, &m), Ok(Plan::Staged(_))),
            "{sql}: {:?}",
            plan(sql, &m)
        );
    }
    // A true constant beside an aggregate still passes through the merge.
    assert!(matches!(
        plan("SELECT 1, now() IS NOT NULL, count(*) FROM accounts", &m),
        Ok(Plan::Merge { .. })
    ));
}

/// A CTE over sharded tables runs as a stage unless it names an earlier CTE
/// as a table (a `GROUP BY` in it does not name a CTE called `g`).
#[test]
fn ctes_reading_no_earlier_cte_are_staged() {
    let m = map();
    let sql = "WITH g AS (SELECT balance, sum(id) AS q FROM accounts GROUP BY balance) SELECT max(q) - min(q), count(*) FROM g";
    assert!(
        matches!(plan(sql, &m), Ok(Plan::Staged(_))),
        "{:?}",
        plan(sql, &m)
    );
    // `b` reads only `a`: it stays in the outer query, over `a`'s rows.
    let sql = "WITH a AS (SELECT id FROM accounts WHERE balance > 1), b AS (SELECT count(*) FROM a) SELECT * FROM b";
    match plan(sql, &m) {
        Ok(Plan::Staged(s)) => assert_eq!(s.stages.len(), 1, "{s:?}"),
        other => panic!("{other:?}"),
    }
    // `b` reads `a` and a sharded table: it cannot run as a stage alone.
    let sql = "WITH a AS (SELECT id FROM accounts WHERE balance > 1), b AS (SELECT count(*) FROM a JOIN accounts x ON x.id = a.id) SELECT * FROM b";
    assert!(plan(sql, &m).is_err(), "{:?}", plan(sql, &m));
}
