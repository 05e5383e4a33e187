//! One `COPY ... TO STDOUT` stream out of several shards' answers: the
//! first CopyOutResponse, every shard's CopyData in turn (the text/CSV
//! header only from the first; binary: one header and one trailer), one
//! CopyDone, and `COPY n` summed.

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{drain, Answer, ExecError};
use crate::backend::ServerConn;
use crate::protocol;
use crate::router::CopyFormat;

/// For each connection index, how many answers to drain before its COPY's.
pub(crate) fn skip_heads(fresh: &[usize], heads: usize) -> Vec<(usize, usize)> {
    fresh.iter().map(|i| (*i, heads)).collect()
}

/// Binary COPY's header: signature, flags, extension length (0).
const BINARY_HEADER_LEN: usize = 19;
/// Binary COPY's trailer: a field count of -1.
const BINARY_TRAILER: [u8; 2] = [0xff, 0xff];

/// Reads each connection's answer to one `COPY ... TO STDOUT` in turn and
/// passes on one stream: the first CopyOutResponse, every CopyData (the
/// header only from the first shard; binary: one header, one trailer), one
/// CopyDone. `skip`: (connection, answers to drain first). Returns the
/// closing message: `COPY n` summed, or the first error.
pub(crate) async fn join<W: AsyncWrite + Unpin>(
    conns: &mut [&mut ServerConn],
    format: CopyFormat,
    header: bool,
    skip: &[(usize, usize)],
    out: &mut W,
) -> Result<(Answer, Option<Bytes>), ExecError> {
    let mut started = false;
    let mut total = 0u64;
    let mut error: Option<Bytes> = None;
    let binary = format == CopyFormat::Binary;
    for (i, conn) in conns.iter_mut().enumerate() {
        let heads = skip.iter().find(|(c, _)| *c == i).map_or(0, |s| s.1);
        for _ in 0..heads {
            if let Some(e) = drain(conn).await? {
                error.get_or_insert(e.bytes);
            }
        }
        let mut first_data = true;
        loop {
            let f = conn.read().await?;
            match f.tag {
                b'Z' => break,
                b'H' if !started && error.is_none() => {
                    out.write_all(&f.bytes).await.map_err(ExecError::Client)?;
                    started = true;
                }
                b'd' if error.is_none() => {
                    let body = f.body();
                    let first = std::mem::replace(&mut first_data, false);
                    let payload: &[u8] = if binary {
                        let mut p = body;
                        if first && i > 0 {
                            p = p.get(BINARY_HEADER_LEN..).unwrap_or_default();
                        }
                        if p == BINARY_TRAILER {
                            // One trailer, after every shard's rows.
                            continue;
                        }
                        p
                    } else if first && i > 0 && header {
                        continue;
                    } else {
                        body
                    };
                    if payload.is_empty() {
                        continue;
                    }
                    if payload.len() == body.len() {
                        out.write_all(&f.bytes).await.map_err(ExecError::Client)?;
                    } else {
                        let len = (payload.len() + 4) as i32;
                        let mut m = Vec::with_capacity(payload.len() + 5);
                        m.push(b'd');
                        m.extend_from_slice(&len.to_be_bytes());
                        m.extend_from_slice(payload);
                        out.write_all(&m).await.map_err(ExecError::Client)?;
                    }
                }
                b'C' => {
                    let tag = protocol::take_cstr(f.body())
                        .map(|t| t.0)
                        .unwrap_or_default();
                    if let Some((_, n)) = protocol::tag_rows(tag) {
                        total += n;
                    }
                }
                b'E' => {
                    error.get_or_insert(f.bytes);
                }
                b'N' if i == 0 => out.write_all(&f.bytes).await.map_err(ExecError::Client)?,
                _ => {}
            }
        }
    }
    if let Some(e) = error {
        return Ok((Answer::Failed, Some(e)));
    }
    if binary && started {
        out.write_all(&[b'd', 0, 0, 0, 6, 0xff, 0xff])
            .await
            .map_err(ExecError::Client)?;
    }
    if started {
        out.write_all(&[b'c', 0, 0, 0, 4])
            .await
            .map_err(ExecError::Client)?;
    }
    Ok((
        Answer::Succeeded,
        Some(protocol::command_complete(&format!("COPY {total}"))),
    ))
}
