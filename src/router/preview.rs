//! `PREVIEW <statement>`: where a statement would go and what the proxy
//! would do with the answers, without running it.

use super::classify::sharded_table_named;
use super::{plan, Plan, Route, RouteError, ShardId, ShardMap};

/// The columns of a preview.
pub const PREVIEW_COLUMNS: [&str; 4] = ["shard", "statement", "merge", "reason"];

/// One row per shard the statement would reach (or one row for statements
/// the proxy answers itself).
pub fn preview(sql: &str, map: &ShardMap) -> Result<Vec<Vec<String>>, RouteError> {
    let sql = sql.trim().trim_end_matches(';').trim();
    let p = plan(sql, map)?;
    let rows_for = |route: &Route, stmt: &str, merge: &str, reason: &str| -> Vec<Vec<String>> {
        route
            .shards(map.shards)
            .into_iter()
            .map(|s| {
                vec![
                    s.to_string(),
                    stmt.to_string(),
                    merge.to_string(),
                    reason.to_string(),
                ]
            })
            .collect()
    };
    let sharded = sharded_table_named(sql, map, false);
    let why = |route: &Route| match route {
        Route::One(ShardId(s)) => match &sharded {
            Some(t) => format!("the shard key of \"{t}\" is fixed to values on shard {s}"),
            None => format!("no sharded table: unsharded tables live on the default shard {s}"),
        },
        Route::Any => "no sharded table: any one shard (the one the session already uses)".into(),
        Route::Some(_) => "the shard key is fixed to values on these shards".into(),
        Route::All => "the shard key is not fixed: every shard".into(),
    };
    Ok(match &p {
        Plan::Forward { route, write } => {
            let merge = match (route, write) {
                (Route::One(_) | Route::Any, _) => "none: relayed as is",
                (_, super::Writes::Yes) => "sum the command tags; atomic across shards (two-phase commit)",
                (_, super::Writes::Maybe) => "sum the command tags; atomic across shards (may write: the shards are asked at commit)",
                (_, super::Writes::No) => "concatenate rows",
            };
            let mut rows = rows_for(route, sql, merge, &why(route));
            if let Route::Any = route {
                rows[0][0] = "any".into();
            }
            rows
        }
        Plan::Merge { route, plan } => rows_for(route, &plan.sql, &plan.describe(), &why(route)),
        Plan::Split { parts } => parts
            .iter()
            .map(|part| {
                vec![
                    part.shard.to_string(),
                    part.sql.clone(),
                    "sum the command tags; atomic across shards (two-phase commit)".into(),
                    "the inserted rows' shard keys belong to several shards".into(),
                ]
            })
            .collect(),
        Plan::Replicate => rows_for(
            &Route::All,
            sql,
            "answer once; atomic across shards (two-phase commit)",
            "schema change or reference-table write: every shard holds a copy",
        ),
        Plan::Staged(staged) => {
            let mut rows = Vec::new();
            for (i, stage) in staged.stages.iter().enumerate() {
                let inner = super::preview(&stage.sql, map)?;
                for mut r in inner {
                    r[2] = format!("stage {}: {}; rows kept for the outer query", i + 1, r[2]);
                    rows.push(r);
                }
            }
            rows.push(vec![
                "any".into(),
                staged.outer.clone(),
                "outer query over the stages' rows (as typed VALUES), routed like any statement"
                    .into(),
                "subqueries over sharded tables, or expressions over aggregates, run first".into(),
            ]);
            rows
        }
        Plan::NeedKeys(req) => {
            let from = match req.source {
                super::KeySource::Sequence => format!(
                    "the column's sequence on shard {} (the sequence shard)",
                    map.default_shard
                ),
                super::KeySource::Random | super::KeySource::None => {
                    "random uuids made by the proxy".into()
                }
            };
            vec![vec![
                "proxy".into(),
                sql.to_string(),
                format!(
                    "{} key(s) for \"{}\" from {from}; then routed by them",
                    req.rows, req.column
                ),
                "the INSERT leaves the shard key to the cluster".into(),
            ]]
        }
        other => {
            let what = match other {
                Plan::Set(_) => "session setting: kept by the proxy and applied to each server connection the session uses",
                Plan::Prepare { .. } | Plan::Execute { .. } | Plan::Deallocate(_) => {
                    "prepared statement: kept by the proxy, routed when executed"
                }
                _ => "transaction control: handled by the proxy on the shards the transaction has used",
            };
            vec![vec![
                "proxy".into(),
                sql.to_string(),
                "none".into(),
                what.into(),
            ]]
        }
    })
}
