//! `INSERT INTO sharded (cols) SELECT ...` whose SELECT reads no sharded
//! table, carried out as a COPY IN (`copy.rs`) whose rows come from one
//! shard: the statement that shard runs, and an error's position mapped
//! back to the client's statement.

use super::copy::Source;
use super::*;
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
        let (sql, position) = source_sql(client_stmt, &select, &into.relation, &columns);
        let mut from = Source::Shard {
            conn: &mut conn,
            sql,
            position,
        };
        let r = self
            .copy_in_from(&stmt, &into, &shards, &mut from, "INSERT 0")
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
}

impl SourcePosition {
    /// The ErrorResponse with its position moved to the client's statement,
    /// or dropped where it does not fall in the client's text.
    pub(super) fn map(&self, error: &[u8]) -> Option<Bytes> {
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

/// The statement the source shard runs for an `INSERT ... SELECT`: the
/// client's `SELECT` inserted into a temporary table with the target
/// columns' types (`CREATE TABLE AS ... WITH NO DATA` keeps types and
/// modifiers, and no constraints or defaults: those are the target's), then
/// copied out, in a transaction rolled back at the end (the table is gone;
/// the connection is as it was). The client's own text is used when it can
/// be found (after the column list), so error positions map back to it.
fn source_sql(
    client_stmt: &str,
    rendered: &str,
    relation: &str,
    columns: &str,
) -> (String, SourcePosition) {
    const TEMP: &str = "pg_temp.pieskieo_insert_rows";
    let (text, client_at) = match client_select(client_stmt) {
        Some((at, text)) => (text, Some(client_stmt[..at].chars().count())),
        None => (rendered, None),
    };
    let head = format!(
        "BEGIN; CREATE TEMPORARY TABLE {TEMP} ON COMMIT DROP AS SELECT {columns} FROM {relation} WITH NO DATA; INSERT INTO {TEMP} ({columns}) "
    );
    let position = SourcePosition {
        at: head.chars().count(),
        len: text.chars().count(),
        client_at,
    };
    // A newline first: the client's text may end in a `--` comment.
    let sql = format!("{head}{text}\n; COPY {TEMP} ({columns}) TO STDOUT; ROLLBACK");
    (sql, position)
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
