//! `INSERT INTO sharded (cols) SELECT ...` whose SELECT reads no sharded
//! table, carried out as a COPY IN (`copy.rs`) whose rows come from one
//! shard: the statement that shard runs, and an error's position mapped
//! back to the client's statement.

use super::copy::Source;
use super::settings::quote_literal;
use super::*;
use crate::error::SqlState;
use crate::router::CopyIn;
use bytes::Bytes;

impl Session {
    /// `INSERT INTO sharded (cols) SELECT ...` whose SELECT reads no sharded
    /// table: the SELECT runs on one shard, on a connection of its own, and
    /// its rows are routed like a COPY IN's. There the rows first go into a
    /// temporary table of the target columns' types (see [`source_sql`]), so
    /// that PostgreSQL's own assignment rules make the values (a numeric
    /// rounds into an integer, a string too long for `varchar(3)` fails).
    pub(super) async fn insert_select(
        &mut self,
        client_stmt: &str,
        into: Box<CopyIn>,
        select: String,
        source: Route,
    ) -> std::io::Result<bool> {
        let map = self.shared.map();
        let shard = match source {
            Route::One(s) => s,
            _ => self.block_any_shard().unwrap_or(map.default_shard),
        };
        let columns: Vec<String> = into
            .columns
            .iter()
            .flatten()
            .map(|c| quote_ident(c))
            .collect();
        let columns = columns.join(", ");
        let stmt = format!("COPY {} ({columns}) FROM STDIN", into.relation);
        let mut conn = match self.checkout(shard).await {
            Ok(c) => c,
            Err(e) => return self.error(e).await,
        };
        let shards: Vec<ShardId> = (0..map.shards).map(ShardId).collect();
        // The target's column types, read where the target is visible as
        // the block sees it (a table it created, too): a participant, else
        // the source connection. Catalog reads take no lock, so a block
        // holding the table (pgbench's TRUNCATE) cannot stall the source.
        let names = into.columns.clone().unwrap_or_default();
        if !self.snapshot_before_own_read().await? {
            return Ok(false);
        }
        let types = match self.txn().and_then(|t| t.participants.first_mut()) {
            Some(p) => column_types(&mut p.conn, &into.relation, &names).await,
            None => column_types(&mut conn, &into.relation, &names).await,
        };
        let defs = types.map(|types| {
            let defs: Vec<String> = names
                .iter()
                .zip(&types)
                .map(|(c, t)| format!("{} {t}", quote_ident(c)))
                .collect();
            defs.join(", ")
        });
        let in_block = self.txn().is_some();
        let (sql, position) = source_sql(client_stmt, &select, defs.as_deref(), &columns, in_block);
        let mut from = Source::Shard {
            conn: &mut conn,
            sql,
            position,
        };
        let r = self
            .copy_in_from(&stmt, &into, &shards, &mut from, "INSERT 0", None)
            .await;
        if conn.status != b'I' || conn.owes() > 0 {
            conn.mark_broken();
        }
        r
    }
}

/// Where the client's `SELECT` sits in the source statement, to give an
/// error's position in the client's statement as PostgreSQL would.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SourcePosition {
    /// Characters of the source statement before the client's text.
    at: usize,
    /// Characters of the client's text.
    len: usize,
    /// Characters of the client's statement before that text; `None`: the
    /// text is the proxy's rendering, so no position can be given.
    client_at: Option<usize>,
    /// The client's block is open: a lock wait that timed out may be on a
    /// lock of its own.
    in_block: bool,
}

impl SourcePosition {
    /// The ErrorResponse with its position moved to the client's statement,
    /// or dropped where it does not fall in the client's text.
    pub(super) fn map(&self, error: &[u8]) -> Option<Bytes> {
        let timed_out = error.get(5..).is_some_and(|body| {
            protocol::ErrorFields::parse(body).code == SqlState::LOCK_NOT_AVAILABLE.code()
        });
        if self.in_block && timed_out {
            return Some(protocol::error_response(
                Severity::Error,
                SqlState::FEATURE_NOT_SUPPORTED,
                "the SELECT of an INSERT INTO a sharded table ... SELECT runs outside the transaction block, and it waited on a lock (perhaps one this block holds: LOCK TABLE, TRUNCATE or ALTER of a table it reads): run the INSERT ... SELECT before taking that lock, or outside the block",
                None,
            ));
        }
        protocol::rewrite_error(error, |code, value| {
            if code != b'P' {
                return Some(value.to_string());
            }
            let p: usize = value.parse().ok()?;
            let client_at = self.client_at?;
            (p > self.at && p <= self.at + self.len).then(|| (p - self.at + client_at).to_string())
        })
    }
}

/// The types of `columns` of `relation` (as `format_type` writes them, in
/// that order); `None` when any cannot be read. It cannot fail the
/// connection's transaction: `to_regclass` gives NULL for a missing table.
async fn column_types(
    conn: &mut ServerConn,
    relation: &str,
    columns: &[String],
) -> Option<Vec<String>> {
    let q = format!(
        "SELECT attname, pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass({}) AND attnum > 0 AND NOT attisdropped",
        quote_literal(relation)
    );
    conn.send_query(&q).await.ok()?;
    conn.flush().await.ok()?;
    let rows = crate::executor::read_rows(conn).await.ok()?.ok()?;
    let found: Vec<(String, String)> = ServerConn::text_values(&rows)
        .into_iter()
        .filter_map(|r| {
            let mut r = r.into_iter();
            let name = r.next().flatten()?;
            let ty = r.next().flatten()?;
            Some((
                String::from_utf8_lossy(&name).into_owned(),
                String::from_utf8_lossy(&ty).into_owned(),
            ))
        })
        .collect();
    columns
        .iter()
        .map(|c| found.iter().find(|(n, _)| n == c).map(|(_, t)| t.clone()))
        .collect()
}

/// The statement the source shard runs for an `INSERT ... SELECT`: the
/// client's `SELECT` inserted into a temporary table with the target
/// columns' types and modifiers (no constraints or defaults: those are the
/// target's), then copied out, in a transaction rolled back at the end (the
/// table is gone; the connection is as it was). Without the types, the
/// `SELECT`'s rows are copied out as they are. The client's own text is
/// used when it can be found (after the column list), so error positions
/// map back to it.
fn source_sql(
    client_stmt: &str,
    rendered: &str,
    defs: Option<&str>,
    columns: &str,
    in_block: bool,
) -> (String, SourcePosition) {
    const TEMP: &str = "pg_temp.pieskieo_insert_rows";
    let (text, client_at) = match client_select(client_stmt) {
        Some((at, text)) => (text, Some(client_stmt[..at].chars().count())),
        None => (rendered, None),
    };
    // Inside the client's block the SELECT runs outside it: a lock of the
    // block's own would be waited on for ever, so waits end after a second.
    let wait = if in_block {
        "SET LOCAL lock_timeout = 1000; "
    } else {
        ""
    };
    // A newline after the client's text: it may end in a `--` comment.
    let (head, tail) = match defs {
        Some(defs) => (
            format!(
                "BEGIN; {wait}CREATE TEMPORARY TABLE {TEMP} ({defs}) ON COMMIT DROP; INSERT INTO {TEMP} ({columns}) "
            ),
            format!("\n; COPY {TEMP} ({columns}) TO STDOUT; ROLLBACK"),
        ),
        None => (
            format!("BEGIN; {wait}COPY ("),
            "\n) TO STDOUT; ROLLBACK".to_string(),
        ),
    };
    let position = SourcePosition {
        at: head.chars().count(),
        len: text.chars().count(),
        client_at,
        in_block,
    };
    (format!("{head}{text}{tail}"), position)
}

/// The query of `INSERT INTO t (columns) <query>` as the client wrote it,
/// with its byte offset; `None` for any other shape (a `WITH` first, a
/// quoted name before the column list).
fn client_select(stmt: &str) -> Option<(usize, &str)> {
    let start = stmt.len() - stmt.trim_start().len();
    if !stmt[start..]
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("insert"))
    {
        return None;
    }
    let open = stmt.find('(')?;
    if stmt[..open].contains(['"', '\'', '-', '/', '$']) {
        return None;
    }
    let close = crate::router::matching_paren(stmt, open)?;
    let rest = &stmt[close + 1..];
    let text = rest
        .trim_start()
        .trim_end()
        .trim_end_matches(';')
        .trim_end();
    if text.is_empty() {
        return None;
    }
    Some((close + 1 + (rest.len() - rest.trim_start().len()), text))
}
