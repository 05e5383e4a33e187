//! The raw wire: a protocol client whose reads time out, and each
//! message normalised to what must agree between the two systems.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::session::Expect;
use crate::harness::{field, RawClient};

/// How long one reply may take before the session counts as hung.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A raw protocol connection whose reads time out instead of hanging.
pub(super) struct Wire {
    pub(super) stream: TcpStream,
    /// An error came and no Sync since: the server ignores messages.
    skipping: bool,
    /// The answer so far, up to the next ReadyForQuery.
    answer: Answer,
}

impl Wire {
    pub(super) async fn connect(port: u16) -> Wire {
        Wire {
            stream: RawClient::connect(port).await.stream,
            skipping: false,
            answer: Vec::new(),
        }
    }

    pub(super) async fn read(&mut self) -> Result<(u8, Vec<u8>), String> {
        let read = async {
            let t = self.stream.read_u8().await?;
            let len = self.stream.read_i32().await?;
            let mut b = vec![0; (len.max(4) - 4) as usize];
            self.stream.read_exact(&mut b).await?;
            Ok::<_, std::io::Error>((t, b))
        };
        match tokio::time::timeout(REPLY_TIMEOUT, read).await {
            Err(_) => Err(format!("no reply within {REPLY_TIMEOUT:?}")),
            Ok(Err(e)) => Err(format!("connection closed: {e}")),
            Ok(Ok(m)) => Ok(m),
        }
    }

    /// Sends `bytes` and reads until every answer in `expect` has ended,
    /// normalised, each up to ReadyForQuery one more entry of `out`. After
    /// an error the server skips to Sync, so the answers before the next
    /// ReadyForQuery are no longer expected (in later writes too, until a
    /// Sync). A hang or a closed connection ends the answer with a line
    /// saying so, and `false`.
    pub(super) async fn exchange(
        &mut self,
        bytes: &[u8],
        expect: &[Expect],
        out: &mut Vec<Answer>,
    ) -> bool {
        let fault = |key: String| Line {
            key,
            note: String::new(),
        };
        if let Err(e) = self.stream.write_all(bytes).await {
            out.push(vec![fault(format!("!! write failed: {e}"))]);
            return false;
        }
        let mut queue = VecDeque::new();
        for e in expect {
            if self.skipping && *e != Expect::ReadyForQuery {
                continue;
            }
            self.skipping = false;
            queue.push_back(*e);
        }
        while let Some(next) = queue.front().copied() {
            let (t, b) = match self.read().await {
                Err(e) => {
                    self.answer.push(fault(format!("!! {e}")));
                    out.push(std::mem::take(&mut self.answer));
                    return false;
                }
                Ok(m) => m,
            };
            if let Some(line) = normalise(t, &b) {
                self.answer.push(line);
            }
            if t == b'E' {
                while queue.front().is_some_and(|e| *e != Expect::ReadyForQuery) {
                    queue.pop_front();
                }
                self.skipping = queue.is_empty();
            } else if t == b'Z' {
                // Whatever else was expected before this Sync never came.
                while queue
                    .pop_front()
                    .is_some_and(|e| e != Expect::ReadyForQuery)
                {}
                out.push(std::mem::take(&mut self.answer));
            } else if next.ends(t) {
                queue.pop_front();
            }
        }
        true
    }
}

/// One message as compared: what must agree, without what must differ
/// (ParameterStatus, error and notice texts, table OIDs in descriptions).
pub(super) fn normalise(t: u8, b: &[u8]) -> Option<Line> {
    let text = |b: &[u8]| String::from_utf8_lossy(b.strip_suffix(&[0]).unwrap_or(b)).into_owned();
    let note = match t {
        b'E' | b'N' => format!("{}: {}", field(b, b'S'), field(b, b'M')),
        _ => String::new(),
    };
    let key = match t {
        b'S' => return None,
        b'E' => format!("ErrorResponse {}", field(b, b'C')),
        b'N' => format!("NoticeResponse {}", field(b, b'C')),
        b'C' => format!("CommandComplete {:?}", text(b)),
        b'D' => format!(
            "DataRow {}",
            data_row(b).unwrap_or_else(|| format!("{b:?}"))
        ),
        b'T' => format!(
            "RowDescription {}",
            row_description(b).unwrap_or_else(|| format!("{b:?}"))
        ),
        b't' => format!("ParameterDescription {b:?}"),
        b'1' => "ParseComplete".to_string(),
        b'2' => "BindComplete".to_string(),
        b'3' => "CloseComplete".to_string(),
        b'n' => "NoData".to_string(),
        b's' => "PortalSuspended".to_string(),
        b'I' => "EmptyQueryResponse".to_string(),
        b'Z' => format!("ReadyForQuery {}", b.first().map_or('?', |c| *c as char)),
        other => format!("{} {b:?}", other as char),
    };
    Some(Line { key, note })
}

pub(super) fn data_row(b: &[u8]) -> Option<String> {
    let n = i16::from_be_bytes(b.get(0..2)?.try_into().ok()?);
    let mut at = 2;
    let mut vals = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            vals.push("NULL".to_string());
        } else {
            let v = b.get(at..at + len as usize)?;
            vals.push(format!("{:?}", String::from_utf8_lossy(v)));
            at += len as usize;
        }
    }
    Some(format!("[{}]", vals.join(", ")))
}

/// Columns as name:type-oid:type-length:typmod:format (no table OID or
/// column number: the oracle's table is another relation).
pub(super) fn row_description(b: &[u8]) -> Option<String> {
    let n = i16::from_be_bytes(b.get(0..2)?.try_into().ok()?);
    let mut at = 2;
    let mut cols = Vec::new();
    for _ in 0..n {
        let end = at + b.get(at..)?.iter().position(|c| *c == 0)?;
        let name = String::from_utf8_lossy(&b[at..end]).into_owned();
        let f = b.get(end + 1..end + 19)?;
        let oid = u32::from_be_bytes(f[6..10].try_into().ok()?);
        let len = i16::from_be_bytes(f[10..12].try_into().ok()?);
        let typmod = i32::from_be_bytes(f[12..16].try_into().ok()?);
        let format = i16::from_be_bytes(f[16..18].try_into().ok()?);
        cols.push(format!("{name}:{oid}:{len}:{typmod}:{format}"));
        at = end + 19;
    }
    Some(format!("[{}]", cols.join(", ")))
}

/// One message as compared (`key`), with what is shown but may differ
/// (`note`: an error's or notice's text).
#[derive(Clone, Debug)]
pub(super) struct Line {
    pub(super) key: String,
    pub(super) note: String,
}

impl PartialEq for Line {
    fn eq(&self, other: &Line) -> bool {
        self.key == other.key
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.note.is_empty() {
            write!(f, "{}", self.key)
        } else {
            write!(f, "{}  ({})", self.key, self.note)
        }
    }
}

pub(super) type Answer = Vec<Line>;
