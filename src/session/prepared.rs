//! SQL-level `PREPARE` / `EXECUTE` / `DEALLOCATE`. A prepared statement lives
//! per client; each server connection gets it, under a proxy-made name, the
//! first time an `EXECUTE` runs there. `EXECUTE` routes by its arguments.
//! An `EXECUTE` of a read the proxy merges or runs in stages has its
//! arguments evaluated by PostgreSQL first (a helper `EXECUTE` on a shard)
//! and written into the statement's text as typed literals.

use super::*;
use bytes::{BufMut, Bytes};

use crate::protocol::{message, put_cstr};
use crate::router::{execute_args, plan_bound};

/// A statement prepared with SQL `PREPARE`.
pub(super) struct SqlPrepared {
    pub(super) body: String,
    /// The parameter types PostgreSQL resolved, one per parameter, as
    /// schema-qualified names without typmod (which `EXECUTE` ignores):
    /// what each argument is coerced to.
    pub(super) params: Vec<String>,
    /// Its result columns as the shard that checked it described them (a
    /// RowDescription, or NoData): the Describe of an `EXECUTE` of it in
    /// the extended protocol, answered without a shard (PostgreSQL's own
    /// Describe of a utility statement takes no snapshot).
    pub(super) columns: Bytes,
    /// Its name on server connections.
    backend: String,
    /// The `PREPARE` that creates it there, from the client's own text.
    prepare: String,
}

impl SqlPrepared {
    /// `EXECUTE` of it with `args` under its name on server connections.
    pub(super) fn execute_text(&self, args: &str) -> String {
        if args.is_empty() {
            format!("EXECUTE {}", self.backend)
        } else {
            format!("EXECUTE {} ({args})", self.backend)
        }
    }

    /// What a server connection needs before that `EXECUTE`: its name
    /// there and the `PREPARE` that creates it.
    pub(super) fn needs(&self) -> (String, String) {
        (self.backend.clone(), self.prepare.clone())
    }

    /// Its name on server connections.
    pub(super) fn server_name(&self) -> &str {
        &self.backend
    }

    /// How an `EXECUTE` of it with `args` routes.
    pub(super) fn plan(&self, map: &router::ShardMap, args: &str) -> Result<Plan, RouteError> {
        plan_bound(&self.body, map, &execute_args(args))
    }
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
        let mut stmt = SqlPrepared {
            body,
            params: Vec::new(),
            columns: protocol::no_data(),
            backend,
            prepare,
        };
        // PostgreSQL's PREPARE takes the block's snapshot.
        if !self.snapshot_for_own_utility().await? {
            return Ok(false);
        }
        // Validate it where PostgreSQL would: a shard says whether it
        // parses. In a block, the block's own connection there, which sees
        // the tables the block created; a pooled one would not, and would
        // wait for good behind the locks the block holds.
        let default = self.shared.map().default_shard;
        let (backend, prepare) = (stmt.backend.as_str(), stmt.prepare.as_str());
        let checked = match self
            .txn
            .as_mut()
            .and_then(|t| t.participants.iter_mut().find(|p| p.shard() == default))
        {
            Some(p) => validate(&mut p.conn, backend, prepare).await,
            None => match self.checkout(default).await {
                Ok(mut conn) => validate(&mut conn, backend, prepare).await,
                Err(e) => return self.error(e).await,
            },
        };
        match checked {
            Ok(Ok((params, columns))) => (stmt.params, stmt.columns) = (params, columns),
            Ok(Err(err)) => {
                self.write(&err.bytes).await?;
                self.fail();
                return Ok(false);
            }
            Err(e) => return self.error(e.into()).await,
        }
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
        let plan = stmt.plan(&self.shared.map(), &args);
        let text = stmt.execute_text(&args);
        self.need_prepared = Some(stmt.needs());
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
                self.execute_inlined(&name, &args, plan).await
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
        // As PostgreSQL's DEALLOCATE, it takes the block's snapshot.
        if !self.snapshot_for_own_utility().await? {
            return Ok(false);
        }
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

/// Creates `backend` on `conn` with `prepare` (if it lacks it) and reads
/// its parameter types and its result columns (a RowDescription or
/// NoData): PostgreSQL's error if it refused.
async fn validate(
    conn: &mut ServerConn,
    backend: &str,
    prepare: &str,
) -> Result<Result<(Vec<String>, Bytes), crate::protocol::Frame>, BackendError> {
    if let Some(err) = ensure_prepared(conn, Some((backend, prepare))).await? {
        return Ok(Err(err));
    }
    let params = match parameter_types(conn, backend).await? {
        Ok(p) => p,
        Err(err) => return Ok(Err(err)),
    };
    // A statement SQL created is one the protocol's Describe finds too.
    let describe = message(b'D', |b| {
        b.put_u8(b'S');
        put_cstr(b, backend);
    });
    conn.send_extended(&describe).await?;
    conn.send_sync().await?;
    conn.flush().await?;
    let mut columns = protocol::no_data();
    let mut err = None;
    for f in executor::read_until(conn, b"Z").await? {
        match f.tag {
            b'T' | b'n' => columns = f.bytes,
            b'E' => err = Some(f),
            _ => {}
        }
    }
    Ok(match err {
        Some(err) => Err(err),
        None => Ok((params, columns)),
    })
}

/// The statement's parameter types as PostgreSQL resolved them, read on
/// the connection where `backend` is prepared.
async fn parameter_types(
    conn: &mut ServerConn,
    backend: &str,
) -> Result<Result<Vec<String>, crate::protocol::Frame>, BackendError> {
    // Qualified names: the types PostgreSQL chose, whatever `search_path`
    // is when the statement runs.
    let sql = format!(
        "SELECT pg_catalog.format('%I.%I', n.nspname, t.typname) \
         FROM pg_catalog.pg_prepared_statements s \
         CROSS JOIN LATERAL pg_catalog.unnest(s.parameter_types) WITH ORDINALITY AS a(oid, i) \
         JOIN pg_catalog.pg_type t ON t.oid = a.oid \
         JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
         WHERE s.name = {} ORDER BY a.i",
        quote_literal(backend)
    );
    conn.send_query(&sql).await?;
    conn.flush().await?;
    Ok(executor::read_rows(conn).await?.map(|rows| {
        ServerConn::text_values(&rows)
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .collect()
    }))
}

/// Sets output settings for the rest of the helper's transaction, so that
/// each value's text reads back as the same value in any session: ISO
/// dates and intervals, timestamps with their offset from UTC, floats with
/// all their digits, bytea in hex. As select-list items they run after
/// PostgreSQL evaluated the arguments (`EvaluateParams`, before the
/// executor starts) and before it renders the row, so the arguments are
/// still read with the session's own `DateStyle`, `TimeZone` and
/// `IntervalStyle`; `true` (local) ends them with the helper's statement.
const FIXED_OUTPUT: [(&str, &str); 5] = [
    ("DateStyle", "ISO"),
    ("IntervalStyle", "iso_8601"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

/// How a shard answered the helper that evaluates `EXECUTE`'s arguments.
enum Arguments {
    /// Each argument as a literal of its parameter's type.
    Literals(Vec<String>),
    /// PostgreSQL's error, for the client as it is.
    Refused(crate::protocol::Frame),
}

/// Evaluates `EXECUTE name (args)`'s arguments exactly as PostgreSQL's own
/// `EXECUTE` does, by having PostgreSQL do it: `PREPARE name (types) AS
/// SELECT $1, ...` and `EXECUTE name (args)` on `conn`. It checks their
/// number and kind (42601 with the client's statement name, 0A000 for a
/// subquery) and coerces each by assignment to its parameter's type
/// without typmod (2.5 to `3` for an int, 42804 for a boolean); no cast
/// spelled in SQL does that (an explicit cast accepts more, a function
/// argument's implicit coercion less). The helper is gone when this
/// returns: its `DEALLOCATE` is sent whatever the `EXECUTE` answered.
async fn evaluate_arguments(
    conn: &mut ServerConn,
    name: &str,
    params: &[String],
    args: &str,
) -> Result<Arguments, BackendError> {
    let fixed: Vec<String> = FIXED_OUTPUT
        .iter()
        .map(|(k, v)| format!("pg_catalog.set_config('{k}', '{v}', true)"))
        .collect();
    let refs = (1..=params.len()).map(|i| format!(", ${i}"));
    let select = format!("SELECT {}{}", fixed.join(", "), refs.collect::<String>());
    let helper = quote_ident(name);
    let prepare = if params.is_empty() {
        format!("PREPARE {helper} AS {select}")
    } else {
        format!("PREPARE {helper} ({}) AS {select}", params.join(", "))
    };
    conn.send_query(&prepare).await?;
    conn.flush().await?;
    // A failed PREPARE created nothing (and an EXECUTE after it could find
    // some other statement of that name): stop here.
    if let Some(err) = executor::drain(conn).await? {
        return Ok(Arguments::Refused(err));
    }
    let execute = if args.is_empty() {
        format!("EXECUTE {helper}")
    } else {
        // A line end closes a comment the arguments may end with.
        format!("EXECUTE {helper} ({args}\n)")
    };
    conn.send_query(&execute).await?;
    conn.send_query(&format!("DEALLOCATE {helper}")).await?;
    conn.flush().await?;
    let rows = executor::read_rows(conn).await?;
    executor::drain(conn).await?;
    let rows = match rows {
        Ok(rows) => rows,
        Err(err) => return Ok(Arguments::Refused(err)),
    };
    let values = ServerConn::text_values(&rows)
        .into_iter()
        .next()
        .unwrap_or_default();
    let literals = params
        .iter()
        .zip(values.iter().skip(FIXED_OUTPUT.len()))
        .map(|(ty, v)| {
            let text = v.as_ref().map(|t| String::from_utf8_lossy(t));
            router::typed_literal(text.as_deref(), ty)
        })
        .collect();
    Ok(Arguments::Literals(literals))
}

impl Session {
    /// `EXECUTE` of a read the proxy merges or runs in stages: the body
    /// with the evaluated arguments in place of its `$n` runs as that read.
    /// `plan` is how the statement routed with the arguments as written.
    /// The arguments are evaluated on a pooled connection of the default
    /// shard, with the session's settings but outside any block of the
    /// client's: they hold no subquery, but a function such as `now()`
    /// among them sees that connection's transaction.
    async fn execute_inlined(
        &mut self,
        name: &str,
        args: &str,
        plan: Result<Plan, RouteError>,
    ) -> std::io::Result<bool> {
        let Some(text) = self.inline_execute(name, args, plan).await? else {
            return Ok(false);
        };
        match router::plan(&text, &self.shared.map()) {
            Ok(Plan::Merge { route, plan }) => self.merge_across(route, plan).await,
            Ok(Plan::Staged(s)) => self.run_staged(s).await,
            // The values written in may pin the read to one shard.
            Ok(Plan::Forward { route, write }) => self.forward(&text, route, write).await,
            Ok(_) => {
                self.error(Error::Unsupported(
                    "EXECUTE of this kind of statement is not supported".into(),
                ))
                .await
            }
            Err(e) => self.error(Error::Route(e)).await,
        }
    }

    /// The body of `EXECUTE name (args)` with its arguments, evaluated, in
    /// place of its `$n`: `None` when that failed (the client was told).
    pub(super) async fn inline_execute(
        &mut self,
        name: &str,
        args: &str,
        plan: Result<Plan, RouteError>,
    ) -> std::io::Result<Option<String>> {
        let Some(stmt) = self.sql_prepared.get(name) else {
            let e = Error::Name(NameError::NoStatement(name.to_string()));
            return self.error(e).await.map(|_| None);
        };
        let (body, params) = (stmt.body.clone(), stmt.params.clone());
        let literals = if params.is_empty() && args.is_empty() {
            Vec::new()
        } else {
            let mut conn = match self.checkout(self.shared.map().default_shard).await {
                Ok(c) => c,
                Err(e) => return self.error(e).await.map(|_| None),
            };
            match evaluate_arguments(&mut conn, name, &params, args).await {
                Ok(Arguments::Literals(l)) => l,
                Ok(Arguments::Refused(err)) => {
                    self.write(&err.bytes).await?;
                    self.fail();
                    return Ok(None);
                }
                Err(e) => return self.error(e.into()).await.map(|_| None),
            }
        };
        if let Some(text) = router::inline_params(&body, &literals) {
            return Ok(Some(text));
        }
        match plan {
            Err(e) => self.error(Error::Route(e)).await?,
            Ok(_) => {
                self.error(Error::Unsupported(
                    "EXECUTE of a prepared SELECT that needs a cross-shard merge is supported only when its arguments can be written into its text; run the SELECT itself".into(),
                ))
                .await?
            }
        };
        Ok(None)
    }
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
