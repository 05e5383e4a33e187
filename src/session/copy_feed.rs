//! A COPY IN's shards: each one's queue of rows, the client lines of the
//! rows it got (to map its errors' line numbers back), and ending the COPY
//! on all of them.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::router::{Dest, RowError, RowRouter};

/// Line numbers of the last rows sent to each shard: a shard's error names
/// its own line; this maps it back to the client's.
const LINE_RING: usize = 1 << 16;

/// One shard's part of a COPY IN.
pub(super) struct Feed {
    pub(super) shard: ShardId,
    /// Index of its participant.
    pub(super) part: usize,
    pub(super) queue: BytesMut,
    /// Rows (header included) sent, and the client line of the latest ones.
    pub(super) sent: u64,
    pub(super) lines: VecDeque<u64>,
    /// The shard is in copy-in mode (it owes the COPY's answer).
    pub(super) copying: bool,
    /// Data rows routed here (not the header).
    pub(super) rows: u64,
    /// Keyless text/CSV: each line got the key as a last field after this
    /// delimiter, which the shard's error context quotes and the client's
    /// must not.
    pub(super) appended: Option<u8>,
}

impl Feed {
    pub(super) fn push(&mut self, row: &[u8], line: u64) {
        self.queue.extend_from_slice(row);
        self.sent += 1;
        if self.lines.len() == LINE_RING {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The client's line for the shard's line `n` (1-based), if still known.
    pub(super) fn client_line(&self, n: u64) -> Option<u64> {
        let first = self.sent - self.lines.len() as u64 + 1;
        (n >= first && n <= self.sent)
            .then(|| self.lines.get((n - first) as usize).copied())
            .flatten()
    }
}

/// `... line N...` in a CONTEXT, with N mapped by `f`.
pub(super) fn remap_line(context: &str, f: impl Fn(u64) -> Option<u64>) -> Option<String> {
    let at = context.find(", line ")? + ", line ".len();
    let digits = context[at..].bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = context[at..at + digits].parse().ok()?;
    let mapped = f(n)?;
    Some(format!(
        "{}{mapped}{}",
        &context[..at],
        &context[at + digits..]
    ))
}

/// `COPY t, line N: "text<delim>key"` as `COPY t, line N: "text"`: the
/// line as the client sent it. A line the shard cut (`...`, past 100
/// bytes) is left as it is: its first 100 bytes are the client's when the
/// client's line was that long.
pub(super) fn without_key(context: &str, delim: u8) -> Option<String> {
    let at = context.find(", line ")? + ", line ".len();
    let digits = context[at..].bytes().take_while(u8::is_ascii_digit).count();
    let head = &context[..at + digits];
    let text = context[at + digits..]
        .strip_prefix(": \"")?
        .strip_suffix('"')?;
    if text.ends_with("...") {
        return None;
    }
    let cut = text.rfind(char::from(delim))?;
    Some(format!("{head}: \"{}\"", &text[..cut]))
}

impl Feed {
    /// A shard's COPY error with its line number turned into the client's,
    /// and that line (`u64::MAX - 1` when it names none the proxy knows).
    pub(super) fn remap(&self, error: &[u8]) -> (Bytes, u64) {
        let line = std::cell::Cell::new(u64::MAX - 1);
        let mapped = protocol::map_error_context(error, |ctx| {
            let mapped = remap_line(ctx, |n| {
                let l = self.client_line(n)?;
                line.set(l);
                Some(l)
            });
            let base = mapped.as_deref().unwrap_or(ctx);
            self.appended.and_then(|d| without_key(base, d)).or(mapped)
        });
        (
            mapped.unwrap_or_else(|| Bytes::copy_from_slice(error)),
            line.get(),
        )
    }
}

/// Queues a routed piece for its shard (or every shard).
fn deliver(feeds: &mut [Feed], dest: Dest, line: u64, row: &[u8]) {
    match dest {
        Dest::All => {
            for f in feeds.iter_mut() {
                f.push(row, line);
            }
        }
        Dest::Shard(s) => {
            if let Some(f) = feeds.iter_mut().find(|f| f.shard == s) {
                f.push(row, line);
                f.rows += 1;
            }
        }
    }
}

/// Routes one CopyData payload (or, with `end`, the end of the stream).
pub(super) fn route_rows(
    r: &mut RowRouter,
    feeds: &mut [Feed],
    data: &[u8],
    end: bool,
) -> Result<(), RowError> {
    let mut sink = |dest: Dest, line: u64, row: &[u8]| deliver(feeds, dest, line, row);
    if end {
        r.finish(&mut sink)
    } else {
        r.feed(data, &mut sink)
    }
}

/// Routes a payload up to where a keyless router's batch is full: how
/// much of it was read.
pub(super) fn feed_some(
    r: &mut RowRouter,
    feeds: &mut [Feed],
    data: &[u8],
) -> Result<usize, RowError> {
    r.feed_some(data, &mut |dest, line, row| deliver(feeds, dest, line, row))
}

/// Routes a keyless router's waiting rows with their keys.
pub(super) fn place_keys(
    r: &mut RowRouter,
    feeds: &mut [Feed],
    keys: &[String],
) -> Result<(), RowError> {
    r.place_keys(keys, &mut |dest, line, row| deliver(feeds, dest, line, row))
}

pub(super) fn route_error(e: &RouteError) -> Bytes {
    protocol::error_response(Severity::Error, e.sqlstate(), &e.to_string(), None)
}

/// Ends the COPY on every shard still copying (CopyFail), reading each
/// one's answer; returns the first shard's error.
pub(super) async fn fail_all(
    parts: &mut [Participant],
    feeds: &mut [Feed],
    message: &str,
) -> Option<Bytes> {
    let mut first = None;
    for f in feeds.iter_mut().filter(|f| f.copying) {
        let conn = &mut parts[f.part].conn;
        let sent = async {
            conn.send_copy_fail(message).await?;
            conn.flush().await
        }
        .await;
        if sent.is_err() {
            conn.mark_broken();
        }
    }
    for f in feeds.iter_mut().filter(|f| f.copying) {
        let conn = &mut parts[f.part].conn;
        match executor::drain(conn).await {
            Ok(e) => {
                if let (None, Some(e)) = (&first, e) {
                    first = Some(e.bytes);
                }
            }
            Err(_) => conn.mark_broken(),
        }
        f.copying = false;
    }
    first
}

/// A message COPY does not take: the client gets `error`, then the FATAL
/// PostgreSQL sends when it lost the message boundaries, and the session
/// ends (the returned error; its block rolls back in cleanup).
pub(super) async fn lost_sync(out: &mut BufWriter<ClientWrite>, error: &[u8]) -> ExecError {
    let fatal = protocol::error_response(
        Severity::Fatal,
        crate::error::SqlState::PROTOCOL_VIOLATION,
        "terminating connection because protocol synchronization was lost",
        None,
    );
    let _ = out.write_all(error).await;
    let _ = out.write_all(&fatal).await;
    let _ = out.flush().await;
    ExecError::Client(std::io::Error::other("protocol violation during COPY"))
}

/// [`fail_all`] when the error to report is another one.
pub(super) async fn end_all(parts: &mut [Participant], feeds: &mut [Feed], message: &str) {
    let _ = fail_all(parts, feeds, message).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_s_context_quotes_the_client_s_line() {
        assert_eq!(
            without_key("COPY t, line 7: \"a,b,123\"", b',').as_deref(),
            Some("COPY t, line 7: \"a,b\"")
        );
        // A column's value, or a line the shard cut: as the shard wrote it.
        assert_eq!(without_key("COPY t, line 7, column n: \"x,1\"", b','), None);
        assert_eq!(without_key("COPY t, line 7: \"aaaa...\"", b','), None);
        assert_eq!(without_key("COPY t, line 7", b','), None);
    }
}
