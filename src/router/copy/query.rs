//! `COPY (query) ...`: where the query runs. A query one shard answers, or
//! several whose rows are concatenated, runs inside the COPY on those
//! shards; a query whose rows the proxy merges, or that runs in two stages,
//! becomes a two-stage plan whose outer statement is the COPY itself.

use std::sync::Arc;

use super::{CopyOptions, CopyOut, Header, Parsed};
use crate::router::{classify, Plan, Route, RouteError, ShardMap, Stage, StagedPlan, Writes};

/// `COPY (query) TO STDOUT`: where the query would run.
pub(super) fn plan_query_out(
    sql: &str,
    query: &str,
    p: &Parsed,
    map: &ShardMap,
) -> Result<Plan, RouteError> {
    let options = p
        .options
        .clone()
        .unwrap_or_else(|_| CopyOptions::defaults());
    if !p.stdio || p.from {
        // `COPY (query) FROM` is a syntax error; a server file is the shard's
        // to refuse or write, on the one shard that answers.
        if classify::sharded_table_named(query, map, true).is_some() {
            return Err(RouteError::Unsupported(
                "COPY (query) of distributed tables to a server file or program is not supported: use TO STDOUT".into(),
            ));
        }
        return Ok(Plan::Forward {
            route: Route::One(map.default_shard),
            write: Writes::Yes,
        });
    }
    match crate::router::plan(query, map)? {
        Plan::Forward { route, write } => match route {
            Route::One(_) | Route::Any => Ok(Plan::Forward { route, write }),
            Route::Some(_) | Route::All if write.may() => Err(RouteError::Unsupported(
                "COPY (query) TO STDOUT of a query that may write on several shards is not supported; run the writing statement first, then COPY what it wrote".into(),
            )),
            route => Ok(Plan::CopyOut(Box::new(CopyOut {
                route,
                sql: sql.to_string(),
                format: options.format,
                header: options.header != Header::No,
            }))),
        },
        // Rows the proxy merges, or a query in two stages: the rows of the
        // query are obtained as for a plain SELECT, then one shard runs the
        // COPY over them as typed VALUES (see `staged_copy`).
        merge @ Plan::Merge { .. } => Ok(staged_copy(
            vec![Stage {
                sql: query.to_string(),
                plan: merge,
            }],
            &classify::stage_marker(0),
            &p.after_query,
            // Over the rows alone the COPY reads no table.
            Some(Box::new(Plan::Forward {
                route: Route::Any,
                write: Writes::No,
            })),
        )),
        Plan::Staged(s) => Ok(staged_copy(
            s.stages.clone(),
            &s.outer,
            &p.after_query,
            None,
        )),
        _ => Err(RouteError::Unsupported(
            "COPY (query) TO STDOUT supports only SELECT queries through Pieskieo".into(),
        )),
    }
}

/// `COPY (query) TO STDOUT` of a query the proxy merges or stages, as a
/// [`Plan::Staged`] whose outer statement is the COPY itself, with the
/// client's options unchanged: `COPY (SELECT * FROM pieskieo_stage_0) TO
/// STDOUT ...` for a merge, `COPY (<outer query>) TO STDOUT ...` for a
/// staged query. Once the stages' rows are in place as typed `VALUES` (in
/// their merged order: a VALUES scan returns its rows as written), the
/// COPY reads no sharded table and one shard runs it, so PostgreSQL itself
/// writes the CopyOutResponse, every byte of text, CSV or binary (header
/// names, NULLs, quoting, FORCE_QUOTE, ENCODING) and `COPY n`.
fn staged_copy(
    stages: Vec<Stage>,
    outer_query: &str,
    after_query: &str,
    filled: Option<Box<Plan>>,
) -> Plan {
    Plan::Staged(Arc::new(StagedPlan {
        stages,
        outer: format!("COPY ({outer_query}) {after_query}"),
        filled,
    }))
}
