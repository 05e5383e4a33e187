//! Routing cost per statement: parse + route with sqlparser every time,
//! against the plan cache Pieskieo uses for simple queries. Prints both and
//! the ratio, measured in the same run.
//!
//! Run: `cargo bench --bench route` (ITERATIONS=N to change the count).

use std::time::Instant;

use pieskieo::config::Config;
use pieskieo::router::{plan, plan_bound, Bound, PlanCache, ShardMap};

const CONFIG: &str = pieskieo::router::SAMPLE_CONFIG;

fn main() {
    let iterations: usize = std::env::var("ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let map = ShardMap::from_config(&Config::parse(CONFIG, "bench.toml").expect("bench config"));
    // pgbench -S style traffic: a few hundred distinct statement texts.
    let stmts: Vec<String> = (0..500)
        .map(|i| match i % 4 {
            0 => format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i}"),
            1 => format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = {i}"),
            2 => format!("SELECT * FROM users WHERE email = 'user{i}@example.com'"),
            _ => "SELECT name FROM countries WHERE code = 'pl'".to_string(),
        })
        .collect();

    let t = Instant::now();
    let mut routed = 0usize;
    for i in 0..iterations {
        routed += plan(&stmts[i % stmts.len()], &map).is_ok() as usize;
    }
    let uncached = t.elapsed();

    let cache = PlanCache::new(10_000);
    let t = Instant::now();
    for i in 0..iterations {
        routed += cache.plan(&stmts[i % stmts.len()], &map).is_ok() as usize;
    }
    let cached = t.elapsed();
    assert_eq!(routed, 2 * iterations, "every statement routes");

    // A prepared statement bound to a new key each time (pgbench -M prepared):
    // full planning with the bound value, against the keyed plan.
    let prepared = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let keys: Vec<Vec<Bound>> = (0..500).map(|i| vec![Bound::Text(i.to_string())]).collect();
    let t = Instant::now();
    for i in 0..iterations {
        routed += plan_bound(prepared, &map, &keys[i % keys.len()]).is_ok() as usize;
    }
    let bound_full = t.elapsed();
    let t = Instant::now();
    for i in 0..iterations {
        let k = cache.keyed(prepared, &map).expect("keyed");
        routed += k.plan(&keys[i % keys.len()], &map).is_some() as usize;
    }
    let bound_keyed = t.elapsed();
    assert_eq!(routed, 4 * iterations, "every bound statement routes");

    let per = |d: std::time::Duration| d.as_nanos() as f64 / iterations as f64;
    println!(
        "routing micro-benchmark, {iterations} statements, {} distinct texts",
        stmts.len()
    );
    println!("{:<28} {:>12} {:>14}", "", "ns/statement", "statements/s");
    println!(
        "{:<28} {:>12.0} {:>14.0}",
        "parse + route (sqlparser)",
        per(uncached),
        1e9 / per(uncached)
    );
    println!(
        "{:<28} {:>12.0} {:>14.0}",
        "plan cache",
        per(cached),
        1e9 / per(cached)
    );
    println!("cache speed-up: {:.1}x", per(uncached) / per(cached));
    println!(
        "{:<28} {:>12.0} {:>14.0}",
        "Bind: parse + route",
        per(bound_full),
        1e9 / per(bound_full)
    );
    println!(
        "{:<28} {:>12.0} {:>14.0}",
        "Bind: keyed plan",
        per(bound_keyed),
        1e9 / per(bound_keyed)
    );
    println!("keyed speed-up: {:.1}x", per(bound_full) / per(bound_keyed));
}
