//! SQL-level `PREPARE` / `EXECUTE` / `DEALLOCATE`. A prepared statement lives
//! per client; each server connection gets it, under a proxy-made name, the
//! first time an `EXECUTE` runs there. `EXECUTE` routes by its arguments.

use super::*;
use crate::router::{execute_args, plan_bound};

/// A statement prepared with SQL `PREPARE`.
pub(super) struct SqlPrepared {
    body: String,
    /// The parameter types as `PREPARE` listed them (may be empty).
    types: String,
    /// Its name on server connections.
    backend: String,
    /// The `PREPARE` that creates it there, from the client's own text.
    prepare: String,
}

fn backend_name(types: &str, body: &str) -> String {
    let h = crate::protocol::fnv1a(types.bytes().chain([0]).chain(body.bytes()));
    format!("pieskieo_sql_{h:016x}")
}

impl Session {
    pub(super) async fn sql_prepare(
        &mut self,
        name: String,
        types: String,
        body: String,
    ) -> std::io::Result<bool> {
        if self.sql_prepared.contains_key(&name) {
            return self
                .error(Error::Name(NameError::StatementExists(name.to_string())))
                .await;
        }
        let backend = backend_name(&types, &body);
        let prepare = if types.is_empty() {
            format!("PREPARE {backend} AS {body}")
        } else {
            format!("PREPARE {backend} ({types}) AS {body}")
        };
        let stmt = SqlPrepared {
            body,
            types,
            backend,
            prepare,
        };
        // Validate it where PostgreSQL would: a shard says whether it parses.
        let mut conn = match self.checkout(self.shared.map().default_shard).await {
            Ok(c) => c,
            Err(e) => return self.error(e).await,
        };
        match ensure_prepared(&mut conn, Some((&stmt.backend, &stmt.prepare))).await {
            Ok(None) => {}
            Ok(Some(err)) => {
                self.write(&err.bytes).await?;
                self.fail();
                return Ok(false);
            }
            Err(e) => return self.error(e.into()).await,
        }
        drop(conn);
        self.sql_prepared.insert(name, stmt);
        self.complete("PREPARE").await
    }

    pub(super) async fn sql_execute(
        &mut self,
        name: String,
        args: String,
    ) -> std::io::Result<bool> {
        let Some(stmt) = self.sql_prepared.get(&name) else {
            return self
                .error(Error::Name(NameError::NoStatement(name.to_string())))
                .await;
        };
        let plan = plan_bound(&stmt.body, &self.shared.map(), &execute_args(&args));
        let text = if args.is_empty() {
            format!("EXECUTE {}", stmt.backend)
        } else {
            format!("EXECUTE {} ({args})", stmt.backend)
        };
        self.need_prepared = Some((stmt.backend.clone(), stmt.prepare.clone()));
        let (body, types) = (stmt.body.clone(), stmt.types.clone());
        let r = match plan {
            Ok(Plan::Forward { route, write }) => self.forward(&text, route, write).await,
            Ok(Plan::Replicate) => {
                let targets: Vec<(ShardId, &str)> = (0..self.shared.map().shards)
                    .map(|s| (ShardId(s), text.as_str()))
                    .collect();
                self.write_across(&targets, Merge::Copies, Writes::Yes)
                    .await
            }
            // A read the proxy merges or runs in stages: the arguments go
            // into the statement's text, which runs as that read.
            Ok(Plan::Merge { .. } | Plan::Staged(_)) | Err(RouteError::Unsupported(_)) => {
                // The shards run the text: they need no prepared statement.
                self.need_prepared = None;
                let text = inline_arguments(&body, &types, &args);
                match text.map(|t| {
                    let p = router::plan(&t, &self.shared.map());
                    (t, p)
                }) {
                    Some((_, Ok(Plan::Merge { route, plan }))) => {
                        self.merge_across(route, plan).await
                    }
                    Some((_, Ok(Plan::Staged(s)))) => self.run_staged(s).await,
                    Some((_, Err(e))) => self.error(Error::Route(e)).await,
                    _ => match plan {
                        Err(e) => self.error(Error::Route(e)).await,
                        Ok(_) => {
                            self.error(Error::Unsupported(
                                "EXECUTE of a prepared SELECT that needs a cross-shard merge is supported only when its arguments can be written into its text; run the SELECT itself".into(),
                            ))
                            .await
                        }
                    },
                }
            }
            Err(e) => self.error(Error::Route(e)).await,
            Ok(_) => {
                self.error(Error::Unsupported(
                    "EXECUTE of this kind of statement is not supported".into(),
                ))
                .await
            }
        };
        self.need_prepared = None;
        r
    }

    pub(super) async fn sql_deallocate(&mut self, name: Option<String>) -> std::io::Result<bool> {
        match name {
            None => {
                self.sql_prepared.clear();
                self.complete("DEALLOCATE ALL").await
            }
            Some(n) if self.sql_prepared.remove(&n).is_some() => self.complete("DEALLOCATE").await,
            Some(n) => Ok(self
                .error(Error::Name(NameError::NoStatement(n.to_string())))
                .await?),
        }
    }
}

/// The body of a `PREPARE` with `EXECUTE`'s arguments in place of its
/// `$n`, each cast to its declared type when `PREPARE` gave one (else
/// resolved from its context, as the parameter's type was).
fn inline_arguments(body: &str, types: &str, args: &str) -> Option<String> {
    let args = router::split_list(args)?;
    let types = router::split_list(types)?;
    let values: Vec<String> = args
        .iter()
        .enumerate()
        .map(|(i, a)| match types.get(i) {
            Some(t) => format!("(({a}\n)::{t})"),
            None => format!("({a}\n)"),
        })
        .collect();
    router::inline_params(body, &values)
}

/// Creates the statement an `EXECUTE` needs on `conn` if it lacks it.
/// Returns the server's error, if the `PREPARE` failed.
pub(super) async fn ensure_prepared(
    conn: &mut ServerConn,
    need: Option<(&str, &str)>,
) -> Result<Option<crate::protocol::Frame>, BackendError> {
    let Some((name, prepare)) = need else {
        return Ok(None);
    };
    if conn.prepared.contains(name) {
        return Ok(None);
    }
    conn.send_query(prepare).await?;
    conn.flush().await?;
    let err = executor::drain(conn).await?;
    if err.is_none() {
        conn.prepared.insert(name.to_string());
    }
    Ok(err)
}
