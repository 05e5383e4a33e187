//! The rows of a COPY IN between its start and its end on the shards: the
//! client's CopyData (or an INSERT ... SELECT's rows from a shard) read as it
//! comes, cut into rows by the router and queued for their shards, each
//! queue sent at [`FLUSH_AT`] bytes, and a shard that stops its COPY early
//! noticed at once. `copy.rs` starts the COPY on every shard and ends it;
//! the keys of a keyless COPY's batches are chosen in `copy_keys.rs`.

use bytes::Bytes;

use super::copy::Source;
use super::copy_feed::{route_error, route_rows, Feed};
use super::keys::CopyKeySource;
use super::*;
use crate::router::{CopyIn, RowRouter};

/// A shard's queued rows go out once they reach this size.
const FLUSH_AT: usize = 64 * 1024;

/// Why a COPY IN stream ended.
pub(super) enum Ending {
    /// CopyDone, and every row was routed.
    Done,
    /// The client sent CopyFail with this message.
    ClientFailed(String),
    /// The proxy refuses a row, or the client broke the protocol: the
    /// ErrorResponse to give, and the client line it is about.
    Refused(Bytes, u64),
    /// A shard ended its COPY with this error (about this client line).
    ShardFailed(Bytes, u64),
    /// The client sent a message COPY does not take: the ErrorResponse to
    /// give. PostgreSQL then ends the session (it stopped reading inside
    /// that message, so it lost the message boundaries).
    Violation(Bytes),
    /// The client is gone.
    Vanished,
}

impl Session {
    /// Reads the client's CopyData until CopyDone or an error, routing rows
    /// to their shards' queues (all of it to every shard without a router).
    pub(super) async fn stream_rows(
        &mut self,
        parts: &mut [Participant],
        feeds: &mut [Feed],
        mut router: Option<&mut RowRouter>,
        source: &mut Source<'_>,
        copy: &CopyIn,
        keys: Option<&CopyKeySource>,
    ) -> Result<Ending, ExecError> {
        loop {
            let f = match source {
                Source::Client => {
                    let Some(frames) = self.frames.as_mut() else {
                        return Ok(Ending::Vanished);
                    };
                    match frames.next().await {
                        Ok(f) => f,
                        Err(_) => return Ok(Ending::Vanished),
                    }
                }
                Source::Shard { conn, position, .. } => {
                    let f = conn.read().await?;
                    match f.tag {
                        b'd' => f,
                        b'c' => {
                            // Its CommandComplete and ReadyForQuery follow.
                            executor::drain(conn).await?;
                            f
                        }
                        b'E' => {
                            executor::drain(conn).await?;
                            let e = position.map(&f.bytes).unwrap_or(f.bytes);
                            return Ok(Ending::Refused(e, u64::MAX));
                        }
                        b'Z' => {
                            return Ok(Ending::Refused(
                                route_error(&RouteError::Unsupported(
                                    "the SELECT of an INSERT ... SELECT did not produce rows through COPY".into(),
                                )),
                                u64::MAX,
                            ))
                        }
                        _ => continue,
                    }
                }
            };
            let routed = match f.tag {
                b'd' => {
                    let data = f.body();
                    match router.as_deref_mut() {
                        Some(r) if copy.keys.is_some() => {
                            match self.route_keyless(copy, keys, r, feeds, data).await {
                                Ok(()) => Ok(()),
                                Err((e, line)) => return Ok(Ending::Refused(e, line)),
                            }
                        }
                        Some(r) => route_rows(r, feeds, data, false),
                        None => {
                            for feed in feeds.iter_mut() {
                                feed.queue.extend_from_slice(data);
                            }
                            Ok(())
                        }
                    }
                }
                b'c' => match router.as_deref_mut() {
                    Some(r) => match route_rows(r, feeds, &[], true) {
                        Ok(()) if r.holds() => match self.place_waiting(copy, keys, r, feeds).await
                        {
                            Ok(()) => return Ok(Ending::Done),
                            Err((e, line)) => return Ok(Ending::Refused(e, line)),
                        },
                        Ok(()) => return Ok(Ending::Done),
                        Err(e) => Err(e),
                    },
                    None => return Ok(Ending::Done),
                },
                b'f' => {
                    let body = f.body();
                    let msg = protocol::take_cstr(body).map(|m| m.0).unwrap_or_default();
                    return Ok(Ending::ClientFailed(msg.to_string()));
                }
                // PostgreSQL ignores these during COPY, for client libraries
                // that send them without noticing the statement was COPY.
                b'H' | b'S' => Ok(()),
                b'X' => return Ok(Ending::Vanished),
                other => {
                    return Ok(Ending::Violation(protocol::error_response(
                        Severity::Error,
                        crate::error::SqlState::PROTOCOL_VIOLATION,
                        &format!("unexpected message type 0x{other:02X} during COPY from stdin"),
                        None,
                    )))
                }
            };
            if let Err(e) = routed {
                return Ok(Ending::Refused(
                    protocol::error_with_hint(e.sqlstate, &e.message, e.hint, &e.context),
                    e.line,
                ));
            }
            for feed in feeds.iter_mut() {
                if feed.queue.len() < FLUSH_AT {
                    continue;
                }
                let conn = &mut parts[feed.part].conn;
                conn.send_copy_data(&feed.queue).await?;
                conn.flush().await?;
                feed.queue.clear();
                // A shard that stopped the COPY (a bad value, a constraint)
                // answers at once: stop there, as PostgreSQL would.
                while conn.has_unread() {
                    let fr = conn.read().await?;
                    match fr.tag {
                        b'N' => self
                            .out
                            .write_all(&fr.bytes)
                            .await
                            .map_err(ExecError::Client)?,
                        b'E' => {
                            let (e, line) = feed.remap(&fr.bytes);
                            // The rest of its answer: ReadyForQuery.
                            executor::drain(conn).await?;
                            feed.copying = false;
                            return Ok(Ending::ShardFailed(e, line));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
