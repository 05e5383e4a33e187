//! Two-stage plans ([`Plan::Staged`]): each stage runs as a cross-shard read
//! whose answer the session keeps instead of sending it; the rows go into
//! the outer query as typed `VALUES`, and the outer query runs like any
//! statement, its answer going to the client. Memory: every stage's whole
//! result, once as rows and once as SQL text. `COPY (query) TO STDOUT` of a
//! merged or staged query is such a plan too, its outer statement the COPY
//! (router/copy.rs).

use std::sync::Mutex;

use crate::router::{Stage, StagedPlan};

use super::*;

/// A client writer that keeps what is written.
struct Capture(Arc<Mutex<Vec<u8>>>);

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl Session {
    /// A split `INSERT ... RETURNING`: the shards' rows go back in the
    /// client's `VALUES` order (ORMs match returned keys to objects by
    /// position), not grouped by shard. When a shard returns another
    /// number of rows than it inserted (`ON CONFLICT DO NOTHING`), or the
    /// statement's answer is held for the end of a multi-statement query,
    /// the rows go as they come.
    pub(super) async fn split_in_order(
        &mut self,
        parts: &[router::SplitPart],
    ) -> std::io::Result<bool> {
        let targets: Vec<(ShardId, &str)> =
            parts.iter().map(|p| (p.shard, p.sql.as_str())).collect();
        if self.hold_last {
            return self.write_across(&targets, Merge::Union, Writes::Yes).await;
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink: ClientWrite = Box::new(Capture(buf.clone()));
        let real = std::mem::replace(&mut self.out, BufWriter::new(sink));
        let ran = self.write_across(&targets, Merge::Union, Writes::Yes).await;
        let flushed = self.out.flush().await;
        self.out = real;
        let bytes = buf.lock().map(|b| b.clone()).unwrap_or_default();
        let rows: Vec<&[usize]> = parts.iter().map(|p| p.rows.as_slice()).collect();
        match in_values_order(&bytes, &rows) {
            Some(ordered) => self.write(&ordered).await?,
            None => self.write(&bytes).await?,
        }
        flushed?;
        ran
    }
}

/// A split `INSERT ... RETURNING`'s answer (`bytes`: the shards' answers
/// one after the other, in the order of `rows`, each shard's part's
/// positions in the client's `VALUES`) with its rows in `VALUES` order;
/// `None` when the rows do not match the parts (a shard returned another
/// number of rows than it inserted: `ON CONFLICT DO NOTHING`).
pub(super) fn in_values_order(bytes: &[u8], rows: &[&[usize]]) -> Option<Vec<u8>> {
    let mut frames: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    while let Some(len) = bytes
        .get(at + 1..at + 5)
        .and_then(|b| b.try_into().ok())
        .map(|b: [u8; 4]| u32::from_be_bytes(b) as usize)
    {
        let Some(f) = bytes.get(at..at + 1 + len) else {
            break;
        };
        frames.push(f);
        at += 1 + len;
    }
    if let Some(rest) = bytes.get(at..) {
        if !rest.is_empty() {
            frames.push(rest);
        }
    }
    let data: Vec<&[u8]> = frames.iter().copied().filter(|f| f[0] == b'D').collect();
    let total: usize = rows.iter().map(|r| r.len()).sum();
    if data.len() != total || total == 0 {
        return None;
    }
    // Shard by shard, in the order their answers were read.
    let mut per: Vec<std::collections::VecDeque<&[u8]>> = Vec::new();
    let mut it = data.iter();
    for r in rows {
        per.push(it.by_ref().take(r.len()).copied().collect());
    }
    let mut owner = vec![0usize; total];
    for (i, r) in rows.iter().enumerate() {
        for &k in r.iter() {
            if let Some(o) = owner.get_mut(k) {
                *o = i;
            }
        }
    }
    let mut ordered = owner
        .iter()
        .filter_map(|&i| per.get_mut(i).and_then(|q| q.pop_front()));
    let mut out = Vec::with_capacity(bytes.len());
    for f in &frames {
        if f[0] == b'D' {
            out.extend_from_slice(ordered.next()?);
        } else {
            out.extend_from_slice(f);
        }
    }
    Some(out)
}

/// The most rows a stage may pass to its outer query: they travel as SQL
/// text, and the proxy holds them all meanwhile.
const MAX_STAGE_ROWS: usize = 100_000;

/// A stage's answer: its columns (name, type OID) and rows as text.
type Rows = (Vec<(String, u32, i32)>, Vec<Vec<Option<String>>>);

impl Session {
    /// Runs the stages and gives the outer statement with their rows in
    /// place, and how it runs; `None` when a stage failed (the client has
    /// been sent the error).
    pub(super) async fn fill_stages(
        &mut self,
        staged: &StagedPlan,
    ) -> std::io::Result<Option<(String, Result<Plan, router::RouteError>)>> {
        let mut filled = Vec::with_capacity(staged.stages.len());
        for stage in &staged.stages {
            let Some((cols, rows)) = self.capture(stage).await? else {
                return Ok(None);
            };
            match router::materialize_typed(&cols, &rows) {
                Ok(sql) => filled.push(sql),
                Err(m) => {
                    self.error(Error::Unsupported(m)).await?;
                    return Ok(None);
                }
            }
        }
        let outer = staged.fill(&filled);
        let plan = match &staged.filled {
            Some(known) => Ok((**known).clone()),
            None => router::plan(&outer, &self.shared.map()),
        };
        Ok(Some((outer, plan)))
    }

    pub(super) async fn run_staged(&mut self, staged: Arc<StagedPlan>) -> std::io::Result<bool> {
        let Some((outer, plan)) = self.fill_stages(&staged).await? else {
            return Ok(false);
        };
        match plan {
            Ok(Plan::Forward { route, write }) => self.forward(&outer, route, write).await,
            Ok(Plan::Merge { route, plan }) => self.merge_across(route, plan).await,
            // `COPY (query) TO STDOUT` of a staged query whose outer part
            // still reads sharded tables: the shards' COPY streams joined,
            // or (rows the proxy merges) one more stage.
            Ok(Plan::CopyOut(copy)) => self.copy_out(&outer, copy).await,
            Ok(Plan::Staged(next)) if outer.starts_with("COPY") => {
                Box::pin(self.run_staged(next)).await
            }
            Ok(_) => {
                self.error(Error::Unsupported(
                    "the outer query over subqueries across shards is not supported; fix the shard key to reach one shard, or run the subquery as a query of its own first".into(),
                ))
                .await
            }
            Err(e) => self.error(Error::Route(e)).await,
        }
    }

    /// Runs one stage and keeps its answer; `None` when it failed (the
    /// client has been sent the error).
    async fn capture(&mut self, stage: &Stage) -> std::io::Result<Option<Rows>> {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink: ClientWrite = Box::new(Capture(buf.clone()));
        let real = std::mem::replace(&mut self.out, BufWriter::new(sink));
        let hold = std::mem::replace(&mut self.hold_last, false);
        let in_block = self.ext_stages && self.txn.is_some();
        let ran = match &stage.plan {
            Plan::Forward { route, .. } if in_block => {
                self.stage_in_block(route.clone(), &stage.sql, None).await
            }
            Plan::Merge { route, plan } if in_block => {
                self.stage_in_block(route.clone(), &plan.sql, Some(plan.clone()))
                    .await
            }
            Plan::Forward { route, .. } => {
                self.forward(&stage.sql, route.clone(), Writes::No).await
            }
            Plan::Merge { route, plan } => self.merge_across(route.clone(), plan.clone()).await,
            Plan::Staged(inner) => match Box::pin(self.fill_stages(inner)).await {
                Ok(Some((sql, Ok(Plan::Forward { route, .. })))) => {
                    self.forward(&sql, route, Writes::No).await
                }
                Ok(Some((_, Ok(Plan::Merge { route, plan })))) => {
                    self.merge_across(route, plan).await
                }
                Ok(Some((_, Ok(_)))) => {
                    self.error(Error::Unsupported(
                        "this subquery over subqueries is not supported across shards; fix the shard key to reach one shard, or run the inner subquery as a query of its own first".into(),
                    ))
                    .await
                }
                Ok(Some((_, Err(e)))) => self.error(Error::Route(e)).await,
                Ok(None) => Ok(false),
                Err(e) => Err(e),
            },
            _ => Ok(false),
        };
        let flushed = self.out.flush().await;
        self.out = real;
        self.hold_last = hold;
        ran?;
        flushed?;
        let bytes = buf.lock().map(|b| b.clone()).unwrap_or_default();
        let mut cols = Vec::new();
        let mut rows = Vec::new();
        let mut at = 0;
        while let Some(&tag) = bytes.get(at) {
            let Some(len) = bytes
                .get(at + 1..at + 5)
                .and_then(|b| b.try_into().ok())
                .map(|b: [u8; 4]| u32::from_be_bytes(b) as usize)
            else {
                break;
            };
            let Some(body) = bytes.get(at + 5..at + 1 + len) else {
                break;
            };
            let frame = &bytes[at..at + 1 + len];
            match tag {
                b'T' => cols = columns(body),
                b'D' if rows.len() >= MAX_STAGE_ROWS => {
                    self.error(Error::Unsupported(format!(
                        "a subquery over sharded tables (or the query of a COPY whose rows the proxy merges) returned more than {MAX_STAGE_ROWS} rows to pass to its outer query across shards; filter it further, or fix the shard key to reach one shard"
                    )))
                    .await?;
                    return Ok(None);
                }
                b'D' => rows.push(values(body)),
                b'E' => {
                    self.write(frame).await?;
                    return Ok(None);
                }
                b'N' => self.write(frame).await?,
                _ => {}
            }
            at += 1 + len;
        }
        Ok(Some((cols, rows)))
    }
}

fn columns(b: &[u8]) -> Vec<(String, u32, i32)> {
    let mut out = Vec::new();
    let n = b.get(..2).map_or(0, |x| i16::from_be_bytes([x[0], x[1]]));
    let mut at = 2;
    for _ in 0..n.max(0) {
        let Some(end) = b.get(at..).and_then(|r| r.iter().position(|&c| c == 0)) else {
            break;
        };
        let end = at + end;
        let name = String::from_utf8_lossy(&b[at..end]).into_owned();
        // After the name: table OID, column number, type OID, size, modifier, format.
        let int = |from: usize| {
            b.get(from..from + 4)
                .and_then(|x| x.try_into().ok())
                .map(i32::from_be_bytes)
        };
        let oid = int(end + 7).map_or(0, |v| v as u32);
        let typmod = int(end + 13).unwrap_or(-1);
        out.push((name, oid, typmod));
        at = end + 19;
    }
    out
}

fn values(b: &[u8]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let n = b.get(..2).map_or(0, |x| i16::from_be_bytes([x[0], x[1]]));
    let mut at = 2;
    for _ in 0..n.max(0) {
        let Some(len) = b
            .get(at..at + 4)
            .and_then(|x| x.try_into().ok())
            .map(i32::from_be_bytes)
        else {
            break;
        };
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = at + len as usize;
            out.push(
                b.get(at..end)
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            );
            at = end;
        }
    }
    out
}
