//! Keys chosen by the cluster for an `INSERT` that leaves its shard key to
//! it: integers from the column's own sequence on the sequence shard (the
//! default shard), uuids made here; filled into the statement, which is
//! then routed like any `INSERT`.
//!
//! One sequence serves the whole cluster, so keys are unique across shards
//! and proxies and come out as one PostgreSQL would number them (1, 2, 3,
//! ...). Cost: one control round trip to the sequence shard per such
//! `INSERT`, whatever its number of rows; a `COPY` without the key takes
//! one at its start and one per batch of rows (`copy.rs`). When that shard
//! is down, such inserts fail (`08006`) and inserts that give their keys
//! still work.

use crate::error::NoKeys;
use crate::router::{KeyRequest, KeySource};

use super::settings::quote_literal;
use super::*;

/// Keys for the rows that need one, in row order, and whether the column
/// is an identity `GENERATED ALWAYS` (then the INSERT must say
/// `OVERRIDING SYSTEM VALUE`).
pub(super) struct Keys {
    pub values: Vec<String>,
    pub always: bool,
}

/// Where a COPY that leaves its keys to the cluster gets them, read
/// before it starts.
pub(super) struct CopyKeySource {
    /// The key column's type, as `format_type` names it.
    pub type_name: String,
    /// The column's sequence on the sequence shard; `None`: uuids made here.
    pub sequence: Option<String>,
}

impl Session {
    /// `sql` on the sequence shard, through the control plane; a shard that
    /// cannot answer is [`NoKeys::Unavailable`] for `table`'s keys.
    async fn sequence_query(
        &self,
        shard: ShardId,
        sql: &str,
        table: &str,
    ) -> Result<Vec<Vec<Option<String>>>, NoKeys> {
        self.shared
            .coordinator
            .control()
            .query(shard, sql)
            .await
            .map_err(|e| NoKeys::Unavailable {
                table: table.to_string(),
                shard,
                cause: e.to_string(),
            })
    }

    pub(super) async fn cluster_keys(&self, req: &KeyRequest) -> Result<Keys, Error> {
        match req.source {
            KeySource::Random | KeySource::None => {
                let values = (0..req.rows).map(|_| random_uuid()).collect();
                return Ok(Keys {
                    values,
                    always: false,
                });
            }
            KeySource::Sequence => {}
        }
        let shard = self.shared.map().default_shard;
        let (t, c) = (quote_literal(&req.table), quote_literal(&req.column));
        // Nothing here raises an error for a missing table or column: they
        // come back as NULLs and are told apart below.
        let sql = format!(
            "WITH t AS (SELECT to_regclass({t}) AS r), \
             a AS (SELECT a.attidentity, pg_get_serial_sequence({t}, {c}) AS s \
                   FROM t JOIN pg_attribute a ON a.attrelid = t.r AND a.attname = {c} AND NOT a.attisdropped) \
             SELECT (SELECT r IS NOT NULL FROM t), (SELECT attidentity FROM a), nextval((SELECT s FROM a)) \
             FROM generate_series(1, {})",
            req.rows
        );
        let rows = self.sequence_query(shard, &sql, &req.table).await?;
        let exists = rows.first().and_then(|r| r.first().cloned().flatten());
        if exists.as_deref() != Some("t") {
            return Err(NoKeys::NoTable(req.table.clone()).into());
        }
        let always = rows
            .first()
            .and_then(|r| r.get(1).cloned().flatten())
            .is_some_and(|k| k == "a");
        let mut values: Vec<i64> = Vec::with_capacity(rows.len());
        for r in &rows {
            match r.get(2).cloned().flatten().and_then(|v| v.parse().ok()) {
                Some(v) => values.push(v),
                None => {
                    return Err(NoKeys::NoSequence {
                        table: req.table.clone(),
                        column: req.column.clone(),
                    }
                    .into())
                }
            }
        }
        // Rows take the values in the order of the calls (the scan's), as
        // one server's rows would call it: a sequence that counts down
        // counts the rows down, so the values are not sorted.
        Ok(Keys {
            values: values.iter().map(i64::to_string).collect(),
            always,
        })
    }

    /// Before a COPY that leaves its keys to the cluster asks for data: the
    /// key column's type and sequence on the sequence shard. `None`: no such
    /// table (the shards' COPY says so in PostgreSQL's words).
    pub(super) async fn copy_key_type(
        &self,
        relation: &str,
        name: &str,
        column: &str,
        source: KeySource,
    ) -> Result<Option<CopyKeySource>, Error> {
        if source != KeySource::Sequence {
            return Ok(Some(CopyKeySource {
                type_name: "uuid".into(),
                sequence: None,
            }));
        }
        let shard = self.shared.map().default_shard;
        let (t, c) = (quote_literal(relation), quote_literal(column));
        let sql = format!(
            "WITH t AS (SELECT to_regclass({t}) AS r), \
             a AS (SELECT pg_catalog.format_type(a.atttypid, NULL) AS ty, pg_get_serial_sequence({t}, {c}) AS s \
                   FROM t JOIN pg_attribute a ON a.attrelid = t.r AND a.attname = {c} AND NOT a.attisdropped) \
             SELECT (SELECT r IS NOT NULL FROM t), (SELECT ty FROM a), (SELECT s FROM a)"
        );
        let rows = self.sequence_query(shard, &sql, name).await?;
        let row = rows.first();
        let field = |i: usize| row.and_then(|r| r.get(i).cloned().flatten());
        if field(0).as_deref() != Some("t") {
            return Ok(None);
        }
        let Some(sequence) = field(2) else {
            return Err(NoKeys::NoSequence {
                table: name.to_string(),
                column: column.to_string(),
            }
            .into());
        };
        Ok(Some(CopyKeySource {
            type_name: field(1).unwrap_or_default(),
            sequence: Some(sequence),
        }))
    }

    /// `n` keys for a COPY's waiting rows, in the order one server would
    /// give them: one round trip to the sequence shard (the values in one
    /// text, which costs far less than a row each), or uuids made here.
    pub(super) async fn copy_keys(
        &self,
        table: &str,
        source: &CopyKeySource,
        n: usize,
    ) -> Result<Vec<String>, Error> {
        let Some(seq) = &source.sequence else {
            return Ok((0..n).map(|_| random_uuid()).collect());
        };
        let shard = self.shared.map().default_shard;
        // In the order of the calls, as the rows would call it (a
        // descending sequence counts down): each value tagged by its call.
        let sql = format!(
            "SELECT pg_catalog.string_agg(pg_catalog.nextval({}::pg_catalog.regclass)::text, ',' ORDER BY g) \
             FROM pg_catalog.generate_series(1, {n}) AS g",
            quote_literal(seq)
        );
        let rows = self.sequence_query(shard, &sql, table).await?;
        let text = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default();
        let keys: Vec<String> = text.split(',').map(str::to_string).collect();
        if keys.len() != n {
            return Err(Error::Unsupported(format!(
                "the sequence shard gave {} keys for {n} rows of \"{table}\"",
                keys.len()
            )));
        }
        Ok(keys)
    }

    /// Runs an INSERT that leaves keys to the cluster (simple protocol).
    pub(super) async fn insert_with_keys(
        &mut self,
        stmt: &str,
        req: KeyRequest,
    ) -> std::io::Result<bool> {
        let keys = match self.cluster_keys(&req).await {
            Ok(k) => k,
            Err(e) => return self.error(e).await,
        };
        let filled = match router::fill_keys(stmt, &req.column, &keys.values, None, keys.always) {
            Ok(s) => s,
            Err(e) => return self.error(Error::Route(e)).await,
        };
        match self.shared.plan(&filled) {
            Ok(Plan::Forward { route, write }) => self.forward(&filled, route, write).await,
            Ok(Plan::Split { parts }) => self.split_in_order(&parts).await,
            Ok(other) => {
                self.error(Error::Unsupported(format!(
                    "INSERT with keys chosen by the cluster planned as {other:?}"
                )))
                .await
            }
            Err(e) => self.error(Error::Route(e)).await,
        }
    }
}

impl Session {
    /// An `INSERT` without a column list, with the columns its values fill
    /// listed (read from the catalog where the statement will run: on a
    /// shard of the client's block, else on the default shard), and its
    /// plan. A table the catalog does not know: the statement as it is, to
    /// the default shard, which gives PostgreSQL's error. `None`: an error
    /// was sent.
    pub(super) async fn listing_columns(
        &mut self,
        stmt: &str,
        req: &router::ColumnRequest,
    ) -> std::io::Result<Option<(String, Result<Plan, router::RouteError>)>> {
        let sql = format!(
            "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass({}) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            quote_literal(&req.table)
        );
        let read = async |conn: &mut ServerConn| -> Result<Vec<String>, BackendError> {
            conn.send_query(&sql).await?;
            conn.flush().await?;
            let rows = executor::read_rows(conn).await?.unwrap_or_default();
            Ok(ServerConn::text_values(&rows)
                .into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .map(|n| String::from_utf8_lossy(&n).into_owned())
                .collect())
        };
        if !self.snapshot_before_own_read().await? {
            return Ok(None);
        }
        let found = match self.txn.as_mut().and_then(|t| t.participants.first_mut()) {
            Some(p) => read(&mut p.conn).await,
            None => match self.checkout(self.shared.map().default_shard).await {
                Ok(mut conn) => read(&mut conn).await,
                Err(e) => {
                    self.error(e).await?;
                    return Ok(None);
                }
            },
        };
        let mut columns = match found {
            Ok(c) => c,
            Err(e) => {
                self.error(e.into()).await?;
                return Ok(None);
            }
        };
        if columns.is_empty() {
            let plan = Plan::Forward {
                route: router::Route::One(self.shared.map().default_shard),
                write: Writes::Yes,
            };
            return Ok(Some((stmt.to_string(), Ok(plan))));
        }
        // More values than columns: PostgreSQL's own error, with all listed.
        columns.truncate(req.count);
        let Some(text) = router::with_columns(stmt, &columns) else {
            self.error(Error::Unsupported(
                "this INSERT without a column list could not be given one; name its columns".into(),
            ))
            .await?;
            return Ok(None);
        };
        let plan = self.shared.plan(&text);
        Ok(Some((text, plan)))
    }
}

/// A version 4 (random) uuid, as `gen_random_uuid()` makes them.
fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
