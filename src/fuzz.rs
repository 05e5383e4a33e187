//! Entry points for fuzzing. Each takes arbitrary bytes and must return
//! without panicking (or growing without bound): the startup packet, the
//! client's message decoders, the router on any text, the decision-log
//! reader, the configuration loader, and the merge's reading of a shard's
//! row description. `tests/fuzz.rs` drives them with mutated seeds on
//! stable Rust in CI; `fuzz/` runs them under libFuzzer with `cargo fuzz`.

use std::sync::OnceLock;

use crate::router::{Bound, ShardMap};

fn map() -> &'static ShardMap {
    static M: OnceLock<ShardMap> = OnceLock::new();
    M.get_or_init(|| {
        ShardMap::from_config(
            &crate::config::Config::parse(crate::router::SAMPLE_CONFIG, "sample.toml")
                .expect("fuzz map"),
        )
    })
}

/// A startup packet (and whatever follows), with and without TLS offered.
pub fn startup(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        crate::frontend::fuzz_startup(data, false).await;
        crate::frontend::fuzz_startup(data, true).await;
    });
}

/// Client messages: framing with a length limit, then every decoder on the body.
pub fn client_messages(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut r = crate::protocol::FrameReader::new(data);
        while let Ok(f) = r.next(1 << 16).await {
            crate::frontend::fuzz_messages(f.body());
            let _ = crate::protocol::ErrorFields::parse(f.body());
        }
    });
    crate::frontend::fuzz_messages(data);
}

/// Statement text, split and planned every way the proxy plans it.
pub fn router(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let map = map();
    let _ = crate::router::leading_words(&text, 6);
    for stmt in crate::router::split_statements(&text) {
        let _ = crate::router::plan(stmt, map);
        let _ = crate::router::preview(stmt, map);
        let params = [
            Bound::Text("7".into()),
            Bound::Null,
            Bound::Unknown,
            Bound::Text("x'y".into()),
        ];
        let _ = crate::router::plan_bound(stmt, map, &params);
        if let Some(k) = crate::router::KeyedPlan::find(stmt, map) {
            let _ = k.plan(&params, map);
        }
        let cache = crate::router::PlanCache::new(4);
        let _ = cache.plan(stmt, map);
        let _ = crate::router::execute_args(stmt);
    }
}

/// A gid as listed in `pg_prepared_xacts` (any program's, any cluster's).
pub fn gid(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(g) = crate::txn::Gid::parse("main", &text) {
        assert_eq!(crate::txn::Gid::parse("main", &g.text("main")), Some(g));
    }
}

/// A configuration file.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = crate::config::Config::parse(text, "fuzz.toml") {
            let _ = ShardMap::from_config(&c);
            let _ = crate::config::reload_changes(&c, &c);
        }
    }
}

/// A shard's RowDescription body, as the merge reads it for each shape of plan.
pub fn merge_description(data: &[u8]) {
    for sql in [
        "SELECT id, balance FROM accounts ORDER BY balance LIMIT 3",
        "SELECT balance, count(*), avg(id), min(email) FROM accounts GROUP BY balance HAVING sum(id) > 1",
    ] {
        if let Ok(crate::router::Plan::Merge { plan, .. }) = crate::router::plan(sql, map()) {
            for formats in [&[][..], &[1][..], &[0, 1, 1, 0][..]] {
                let opts = crate::merge::RunOptions {
                    bytewise: true,
                    formats,
                    executed: false,
                };
                let _ = crate::merge::describe(&plan, data, &opts);
            }
        }
    }
}
