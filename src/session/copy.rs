//! `COPY ... FROM STDIN` across shards, and `INSERT INTO sharded SELECT`
//! carried out as one (`COPY ... TO STDOUT` is in `copy_out.rs`).
//!
//! COPY IN runs in a block — the client's, or one the proxy opens for it
//! (committed like any multi-shard write: two-phase when several shards got
//! rows) — with one COPY per shard started before the client is asked for
//! data. The client's CopyData is read as it comes, cut into rows
//! (`router::RowRouter`), and each row is queued for its shard; a shard's
//! queue goes out at `FLUSH_AT` bytes (`copy_stream.rs`). Memory per COPY:
//! one unfinished row, one queue per shard and a ring of recent line
//! numbers per shard.
//! A column list without the shard key: rows wait in batches for the keys
//! the cluster chooses (`router/copy_rows/keyless.rs`), one round trip to
//! the sequence shard per batch, so one batch more is held.
//! Any error — a bad row, CopyFail, a shard's error, a lost shard — ends
//! the COPY on every shard and fails the block, so nothing commits.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::copy_feed::{end_all, lost_sync, route_error, Feed};
use super::copy_source::SourcePosition;
use super::copy_stream::Ending;
use super::keys::CopyKeySource;
use super::*;
use crate::executor::read_rows;
use crate::router::{CopyFormat, CopyIn, CopyPlacement, RowRouter};

/// One COPY IN: the statement each shard runs, what it copies, where, the
/// shards that just joined the block and what they run first, and the verb
/// of the closing tag (`COPY`, or `INSERT 0` for an INSERT ... SELECT).
#[derive(Clone, Copy)]
struct CopyRun<'a> {
    stmt: &'a str,
    /// A keyless COPY's key column, read at its start.
    key_type: Option<&'a CopyKeySource>,
    copy: &'a CopyIn,
    shards: &'a [ShardId],
    fresh: &'a [ShardId],
    head: &'a [String],
    verb: &'a str,
}

/// Where a COPY IN's data comes from.
pub(super) enum Source<'a> {
    /// The client's CopyData.
    Client,
    /// `sql` (ending in a `COPY ... TO STDOUT`) on a shard connection of
    /// its own; an error's position there, in the client's statement.
    Shard {
        conn: &'a mut ServerConn,
        sql: String,
        position: SourcePosition,
    },
}

impl Session {
    /// `COPY ... FROM STDIN`: in the client's block, or in one of its own.
    pub(super) async fn copy_in(&mut self, stmt: &str, copy: Box<CopyIn>) -> std::io::Result<bool> {
        let map = self.shared.map();
        let shards: Vec<ShardId> = match copy.placement {
            CopyPlacement::Sharded | CopyPlacement::Reference => {
                (0..map.shards).map(ShardId).collect()
            }
            CopyPlacement::Unsharded => vec![map.default_shard],
        };
        // Keys chosen by the cluster: checked before the client is asked
        // for data (a key without a sequence, the sequence shard down).
        let mut key_type = None;
        if let (Some(k), Some(rule)) = (&copy.keys, map.tables.get(&copy.table)) {
            match self
                .copy_key_type(&copy.relation, &copy.table, &rule.key, k.source)
                .await
            {
                Ok(t) => key_type = t,
                Err(e) => return self.error(e).await,
            }
        }
        self.copy_in_from(
            stmt,
            &copy,
            &shards,
            &mut Source::Client,
            "COPY",
            key_type.as_ref(),
        )
        .await
    }

    /// Runs a COPY IN in the client's block, or in one of its own.
    pub(super) async fn copy_in_from(
        &mut self,
        stmt: &str,
        copy: &CopyIn,
        shards: &[ShardId],
        source: &mut Source<'_>,
        verb: &str,
        key_type: Option<&CopyKeySource>,
    ) -> std::io::Result<bool> {
        if self.txn().is_some() {
            let (ok, last) = self
                .copy_in_block(stmt, copy, shards, source, verb, key_type)
                .await?;
            self.close_statement(last).await?;
            return Ok(ok);
        }
        self.transition(Event::StartImplicit, None);
        let (ok, last) = self
            .copy_in_block(stmt, copy, shards, source, verb, key_type)
            .await?;
        self.finish_implicit(ok, last).await
    }

    /// Runs the COPY on `shards` inside the block. Returns success and the
    /// closing message (the summed `COPY n`, or the error).
    async fn copy_in_block(
        &mut self,
        stmt: &str,
        copy: &CopyIn,
        shards: &[ShardId],
        source: &mut Source<'_>,
        verb: &str,
        key_type: Option<&CopyKeySource>,
    ) -> std::io::Result<(bool, Option<Bytes>)> {
        // consistent_reads, REPEATABLE READ: the COPY would take the block's
        // snapshot on each shard it reaches; it is taken everywhere at once
        // first, as for any statement.
        if self.needs_snapshot_everywhere() && !self.snapshot_everywhere().await? {
            return Ok((false, None));
        }
        let Some((mut parts, head, missing)) = self.enlist(shards).await? else {
            return Ok((false, None));
        };
        let r = self
            .copy_in_parts(
                &CopyRun {
                    // Keyless: the shards' COPY names the key last.
                    stmt: copy.keys.as_ref().map_or(stmt, |k| k.sql.as_str()),
                    key_type,
                    copy,
                    shards,
                    fresh: &missing,
                    head: &head,
                    verb,
                },
                &mut parts,
                source,
            )
            .await;
        if let Some(t) = self.txn() {
            t.participants = parts;
        }
        match r {
            Ok(Ok(tag)) => Ok((true, Some(tag))),
            Ok(Err(error)) => {
                self.fail();
                Ok((false, Some(error)))
            }
            Err(ExecError::Backend(e)) => Ok((self.error(e.into()).await?, None)),
            Err(ExecError::Client(e)) => Err(e),
        }
    }

    /// Starts the COPY on every shard, streams the client's rows, and ends
    /// it. `Ok(Err(e))`: it failed with `e` and no shard is left copying.
    async fn copy_in_parts(
        &mut self,
        run: &CopyRun<'_>,
        parts: &mut [Participant],
        source: &mut Source<'_>,
    ) -> Result<Result<Bytes, Bytes>, ExecError> {
        let CopyRun {
            stmt,
            key_type,
            copy,
            shards,
            fresh,
            head,
            verb,
        } = *run;
        let sharded = copy.placement == CopyPlacement::Sharded;
        let catalog = (sharded && copy.columns.is_none()).then(|| {
            format!(
                "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = {}::pg_catalog.regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                quote_literal(&copy.relation)
            )
        });
        // The data's encoding, when the COPY does not name it: the session's.
        let encoding = (sharded && copy.options.encoding.is_none())
            .then_some("SELECT pg_catalog.current_setting('client_encoding')");
        let mut feeds = Vec::with_capacity(shards.len());
        for (i, s) in shards.iter().enumerate() {
            let Some(part) = parts.iter().position(|p| p.shard() == *s) else {
                continue;
            };
            feeds.push(Feed {
                shard: *s,
                part,
                queue: BytesMut::new(),
                sent: 0,
                lines: VecDeque::new(),
                copying: false,
                rows: 0,
                appended: (copy.keys.is_some() && copy.options.format != CopyFormat::Binary)
                    .then_some(copy.options.delimiter),
            });
            let conn = &mut parts[part].conn;
            if fresh.contains(s) {
                for q in head {
                    conn.send_query(q).await?;
                }
            }
            if i == 0 {
                for q in catalog.as_deref().into_iter().chain(encoding) {
                    conn.send_query(q).await?;
                }
            }
            conn.send_query(stmt).await?;
            conn.flush().await?;
        }
        // Each shard's answers up to its CopyInResponse. The error to give:
        // a joining shard's BEGIN's, else a COPY's own (PostgreSQL's words
        // for a missing table, column or bad option), else the catalog
        // query's (whose failure also aborted that shard's COPY).
        let mut head_error: Option<Bytes> = None;
        let mut copy_error: Option<Bytes> = None;
        let mut catalog_error: Option<Bytes> = None;
        let mut columns = copy.columns.clone();
        let mut client_encoding = None;
        let mut copy_in_response = None;
        for (i, feed) in feeds.iter_mut().enumerate() {
            let conn = &mut parts[feed.part].conn;
            let mut aborted = false;
            if fresh.contains(&feed.shard) {
                for _ in head {
                    if let Some(e) = executor::drain(conn).await? {
                        head_error.get_or_insert(e.bytes);
                        aborted = true;
                    }
                }
            }
            if let (0, Some(_)) = (i, &catalog) {
                match read_rows(conn).await? {
                    Ok(rows) => {
                        columns = Some(
                            ServerConn::text_values(&rows)
                                .into_iter()
                                .filter_map(|r| r.into_iter().next().flatten())
                                .map(|b| String::from_utf8_lossy(&b).into_owned())
                                .collect(),
                        )
                    }
                    Err(e) => {
                        catalog_error.get_or_insert(e.bytes);
                        aborted = true;
                    }
                }
            }
            if let (0, Some(_)) = (i, encoding) {
                match read_rows(conn).await? {
                    Ok(rows) => {
                        client_encoding = ServerConn::text_values(&rows)
                            .into_iter()
                            .next()
                            .and_then(|r| r.into_iter().next().flatten())
                            .map(|b| String::from_utf8_lossy(&b).into_owned());
                    }
                    Err(e) => {
                        catalog_error.get_or_insert(e.bytes);
                        aborted = true;
                    }
                }
            }
            loop {
                let f = conn.read().await?;
                match f.tag {
                    b'G' => {
                        feed.copying = true;
                        copy_in_response.get_or_insert(f.bytes);
                        break;
                    }
                    b'E' if !aborted => {
                        let e = match &copy.keys {
                            // Its position, in the client's statement.
                            Some(k) => protocol::rewrite_error(&f.bytes, |code, v| {
                                if code != b'P' {
                                    return Some(v.to_string());
                                }
                                v.parse().ok().map(|p| k.client_position(p).to_string())
                            })
                            .unwrap_or(f.bytes),
                            None => f.bytes,
                        };
                        copy_error.get_or_insert(e);
                    }
                    b'Z' => break,
                    b'N' => self
                        .out
                        .write_all(&f.bytes)
                        .await
                        .map_err(ExecError::Client)?,
                    _ => {}
                }
            }
        }
        let mut first_error = head_error.or(copy_error).or(catalog_error);
        let mut router = None;
        if first_error.is_none() && sharded {
            let map = self.shared.map();
            let rule = map.tables.get(&copy.table).cloned();
            let max = self.shared.config().limits.max_message_size;
            match (rule, columns) {
                (Some(rule), Some(cols)) => {
                    let made = match (&copy.keys, key_type) {
                        (Some(_), Some(ty)) => {
                            RowRouter::keyless(copy.options.clone(), rule, &map, cols, max)
                                .and_then(|mut r| r.set_key_type(&ty.type_name).map(|()| r))
                        }
                        // No table: a shard's COPY said so already.
                        (Some(_), None) => Err(RouteError::Unsupported(format!(
                            "the key column of \"{}\" could not be read",
                            copy.table
                        ))),
                        (None, _) => RowRouter::new(copy.options.clone(), rule, &map, cols, max),
                    };
                    match made {
                        Ok(mut r) => {
                            if let Some(e) = &client_encoding {
                                r.set_client_encoding(e);
                            }
                            router = Some(r)
                        }
                        Err(e) => first_error = Some(route_error(&e)),
                    }
                }
                _ => {
                    first_error = Some(route_error(&RouteError::Unsupported(format!(
                        "the columns of \"{}\" could not be read",
                        copy.table
                    ))))
                }
            }
        }
        let response = match (first_error, copy_in_response) {
            (None, Some(g)) => g,
            (e, _) => {
                let e = e.unwrap_or_else(|| {
                    route_error(&RouteError::Unsupported(
                        "a shard did not start the COPY".into(),
                    ))
                });
                end_all(parts, &mut feeds, "COPY refused on another shard").await;
                return Ok(Err(e));
            }
        };
        match source {
            Source::Client => {
                self.out
                    .write_all(&response)
                    .await
                    .map_err(ExecError::Client)?;
                self.out.flush().await.map_err(ExecError::Client)?;
            }
            Source::Shard { conn, sql, .. } => {
                // The rows' source starts once every shard is ready for them.
                conn.send_query(sql).await?;
                conn.flush().await?;
            }
        }

        let mut ending = self
            .stream_rows(parts, &mut feeds, router.as_mut(), source, copy, key_type)
            .await?;
        if let (Ending::Refused(_, line), Some(r)) = (&ending, router.as_mut()) {
            // Rows before the refused one still wait for keys: the shards
            // check them too, as an error on one of them comes first.
            if r.holds() {
                if let Err((e, at)) = self.place_waiting(copy, key_type, r, &mut feeds).await {
                    if at < *line {
                        ending = Ending::Refused(e, at);
                    }
                }
            }
        }
        // The error to report: PostgreSQL stops at the first bad line, so of
        // every error found (here, or by any shard for the rows it had) the
        // one of the earliest line wins.
        let mut found: Option<(u64, Bytes)> = match ending {
            Ending::Done => None,
            Ending::Vanished => {
                end_all(parts, &mut feeds, "the client disconnected").await;
                return Err(ExecError::Client(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "client vanished during COPY",
                )));
            }
            Ending::Violation(e) => {
                end_all(parts, &mut feeds, "protocol violation").await;
                return Err(lost_sync(&mut self.out, &e).await);
            }
            Ending::ClientFailed(message) => Some((
                u64::MAX,
                protocol::error_response(
                    Severity::Error,
                    crate::error::SqlState::QUERY_CANCELED,
                    &format!("COPY from stdin failed: {message}"),
                    None,
                ),
            )),
            Ending::Refused(e, line) | Ending::ShardFailed(e, line) => Some((line, e)),
        };
        // Every shard still copying gets the rows queued for it and
        // CopyDone: it reports its first error, if any, or its count (a
        // failed COPY's rows go with the block, which then rolls back).
        for f in feeds.iter_mut().filter(|f| f.copying) {
            let conn = &mut parts[f.part].conn;
            if !f.queue.is_empty() {
                conn.send_copy_data(&f.queue).await?;
                f.queue.clear();
            }
            conn.send_copy_done().await?;
            conn.flush().await?;
        }
        let mut total = 0u64;
        for (i, f) in feeds.iter_mut().enumerate() {
            let p = &mut parts[f.part];
            if !f.copying {
                continue;
            }
            loop {
                let fr = p.conn.read().await?;
                match fr.tag {
                    b'C' => {
                        let tag = protocol::take_cstr(fr.body())
                            .map(|t| t.0)
                            .unwrap_or_default();
                        if let Some((_, n)) = protocol::tag_rows(tag) {
                            if sharded || i == 0 {
                                total += n;
                            }
                        }
                    }
                    b'E' => {
                        let (e, line) = f.remap(&fr.bytes);
                        if found.as_ref().is_none_or(|(l, _)| line < *l) {
                            found = Some((line, e));
                        }
                    }
                    b'N' if i == 0 => self
                        .out
                        .write_all(&fr.bytes)
                        .await
                        .map_err(ExecError::Client)?,
                    b'Z' => break,
                    _ => {}
                }
            }
            f.copying = false;
            // A shard that got no rows may still have written (statement
            // triggers): the coordinator asks it.
            p.wrote |= if f.rows > 0 || !sharded {
                Writes::Yes
            } else {
                Writes::Maybe
            };
        }
        if let Some(e) = router.as_ref().and_then(|r| r.null_key()) {
            // The key column took a NULL: refused all the same.
            if found.as_ref().is_none_or(|(l, _)| e.line < *l) {
                found = Some((
                    e.line,
                    protocol::error_with_hint(e.sqlstate, &e.message, e.hint, &e.context),
                ));
            }
        }
        Ok(match found {
            // An INSERT ... SELECT is no COPY to the client: PostgreSQL's
            // error has no COPY line to point at.
            Some((_, e)) if verb != "COPY" => Err(protocol::rewrite_error(&e, |code, v| {
                (code != b'W' || !v.starts_with("COPY ")).then(|| v.to_string())
            })
            .unwrap_or(e)),
            Some((_, e)) => Err(e),
            None => Ok(protocol::command_complete(&format!("{verb} {total}"))),
        })
    }
}

impl Session {
    /// Enlists `shards` in the block: the block's participants (taken out
    /// of it: the caller puts them back), the statements a shard that just
    /// joined must run first, and those shards. `None`: the client was told why not.
    pub(super) async fn enlist(
        &mut self,
        shards: &[ShardId],
    ) -> std::io::Result<Option<(Vec<Participant>, Vec<String>, Vec<ShardId>)>> {
        let missing: Vec<ShardId> = match self.txn() {
            Some(t) => shards.iter().copied().filter(|s| !t.has(*s)).collect(),
            None => return Ok(None),
        };
        let mut joined = Vec::new();
        for s in &missing {
            match self.checkout(*s).await {
                Ok(conn) => joined.push(Participant {
                    conn,
                    wrote: Writes::No,
                }),
                Err(e) => {
                    self.error(e).await?;
                    return Ok(None);
                }
            }
        }
        let detecting = self.shared.config().txn.deadlock_timeout_ms > 0;
        let Some(t) = self.txn() else {
            return Ok(None);
        };
        t.participants.extend(joined);
        t.snapshot = true;
        let head = t.head(detecting);
        Ok(Some((std::mem::take(&mut t.participants), head, missing)))
    }
}
