//! Differential sessions: PostgreSQL is the oracle. Seeded random client
//! sessions — simple queries of 1–5 statements, and extended-protocol
//! pipelines — run against one plain PostgreSQL and against Pieskieo over 3
//! shards holding the same table, through a raw wire-protocol client so every
//! message type and ReadyForQuery status byte is seen. Compared message by
//! message (types, command tags, SQLSTATEs, status bytes, rows), then the
//! table contents, and what a later client sees of the session's settings.
//! A difference is shrunk (statements and messages dropped while it persists)
//! and printed as the shortest session that reproduces it.
//!
//! Environment:
//! - `PIESKIEO_DIFF_SESSIONS` — how many sessions (default 2,000; the long
//!   form is 100,000);
//! - `PIESKIEO_DIFF_SEED` — the base seed (default 12); session `i` is
//!   generated from the base seed and `i` alone;
//! - `PIESKIEO_DIFF_FIRST` — the number of the first session (default 0):
//!   with `PIESKIEO_DIFF_SESSIONS=1`, reruns one reported session;
//! - `PIESKIEO_DIFF_CLASS` — `simple`, `extended` or `both` (default);
//! - `PIESKIEO_DIFF_REPORT` — a file to write the report to as well.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use pieskieo::router::KeyValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{config_text_full, field, Cluster, Lcg, RawClient, Servers, TABLES};
use pieskieo::config::Config;

const SCHEMA: &str = "CREATE TABLE t (id bigint PRIMARY KEY, b bigint CHECK (b >= 0), u int UNIQUE, d int UNIQUE DEFERRABLE INITIALLY DEFERRED)";

/// Keys the sessions use; the first [`PRESENT`] exist when a session starts.
const IDS: i64 = 12;
const PRESENT: i64 = 10;

/// How long one reply may take before the session counts as hung.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Replays one difference may spend on shrinking.
const SHRINK_BUDGET: usize = 250;

/// Distinct differences shrunk and reported in full; more are only counted.
const MAX_REPORTED: usize = 80;

/// Statements Pieskieo refuses on purpose (README, "Supported and not"),
/// each with the reason. PostgreSQL is sent [`TWIN`] in their place — an
/// error with the same SQLSTATE (0A000) — and the query or Sync segment that
/// holds one is compared by state only: its ReadyForQuery status byte and
/// whether it failed; everything after it, and the tables, exactly.
const REFUSED: &[(&str, &str)] = &[
    (
        "SELECT id, sum(b) OVER () FROM t",
        "cross-shard window functions are refused with 0A000 rather than answered wrongly",
    ),
    (
        "SELECT sum(b) + 1 FROM t",
        "cross-shard expressions over aggregates are refused with 0A000",
    ),
    ("COMMIT AND CHAIN", "COMMIT AND CHAIN is refused with 0A000"),
    (
        "ROLLBACK AND CHAIN",
        "ROLLBACK AND CHAIN is refused with 0A000",
    ),
];

/// What PostgreSQL runs in place of a refused statement.
const TWIN: &str =
    "DO $$BEGIN RAISE EXCEPTION 'refused by the proxy' USING ERRCODE = 'feature_not_supported'; END$$";

fn refused(sql: &str) -> bool {
    REFUSED.iter().any(|(s, _)| *s == sql)
}

fn for_oracle(sql: &str) -> &str {
    if refused(sql) {
        TWIN
    } else {
        sql
    }
}

/// Session classes.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Class {
    Simple,
    Extended,
}

/// One client message of the extended protocol.
#[derive(Clone, Debug)]
enum Msg {
    Parse {
        name: String,
        sql: String,
    },
    Bind {
        portal: String,
        stmt: String,
        params: Vec<String>,
    },
    Describe {
        portal: bool,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: i32,
    },
    Close {
        portal: bool,
        name: String,
    },
    Flush,
    Sync,
}

/// What a client sends before it reads: a simple query, or a pipeline that
/// ends with Sync (it may hold more Syncs).
#[derive(Clone, Debug)]
enum Step {
    Query(Vec<String>),
    Pipeline(Vec<Msg>),
}

#[derive(Clone, Debug)]
struct Session {
    steps: Vec<Step>,
}

fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

impl Msg {
    fn encode(&self, out: &mut Vec<u8>, oracle: bool) {
        let mut b = Vec::new();
        let tag = match self {
            Msg::Parse { name, sql } => {
                cstr(&mut b, name);
                cstr(&mut b, if oracle { for_oracle(sql) } else { sql });
                b.extend_from_slice(&0i16.to_be_bytes());
                b'P'
            }
            Msg::Bind {
                portal,
                stmt,
                params,
            } => {
                cstr(&mut b, portal);
                cstr(&mut b, stmt);
                b.extend_from_slice(&0i16.to_be_bytes());
                b.extend_from_slice(&(params.len() as i16).to_be_bytes());
                for p in params {
                    b.extend_from_slice(&(p.len() as i32).to_be_bytes());
                    b.extend_from_slice(p.as_bytes());
                }
                b.extend_from_slice(&0i16.to_be_bytes());
                b'B'
            }
            Msg::Describe { portal, name } => {
                b.push(if *portal { b'P' } else { b'S' });
                cstr(&mut b, name);
                b'D'
            }
            Msg::Execute { portal, max_rows } => {
                cstr(&mut b, portal);
                b.extend_from_slice(&max_rows.to_be_bytes());
                b'E'
            }
            Msg::Close { portal, name } => {
                b.push(if *portal { b'P' } else { b'S' });
                cstr(&mut b, name);
                b'C'
            }
            Msg::Flush => b'H',
            Msg::Sync => b'S',
        };
        frame(out, tag, &b);
    }
}

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Parse { name, sql } => write!(f, "Parse {name:?} {sql:?}"),
            Msg::Bind {
                portal,
                stmt,
                params,
            } => write!(
                f,
                "Bind portal={portal:?} statement={stmt:?} params={params:?}"
            ),
            Msg::Describe { portal, name } => {
                write!(f, "Describe {} {name:?}", if *portal { 'P' } else { 'S' })
            }
            Msg::Execute { portal, max_rows } => {
                write!(f, "Execute {portal:?} max_rows={max_rows}")
            }
            Msg::Close { portal, name } => {
                write!(f, "Close {} {name:?}", if *portal { 'P' } else { 'S' })
            }
            Msg::Flush => write!(f, "Flush"),
            Msg::Sync => write!(f, "Sync"),
        }
    }
}

impl Step {
    /// The bytes for one system, and how many ReadyForQuery answer them.
    fn encode(&self, oracle: bool) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        match self {
            Step::Query(stmts) => {
                let sql: Vec<&str> = stmts
                    .iter()
                    .map(|s| if oracle { for_oracle(s) } else { s.as_str() })
                    .collect();
                let mut b = Vec::new();
                cstr(&mut b, &sql.join("; "));
                frame(&mut out, b'Q', &b);
                (out, 1)
            }
            Step::Pipeline(msgs) => {
                for m in msgs {
                    m.encode(&mut out, oracle);
                }
                let syncs = msgs.iter().filter(|m| matches!(m, Msg::Sync)).count();
                (out, syncs)
            }
        }
    }
}

impl Session {
    /// For each answer (one per query, one per Sync): whether it involves a
    /// refused statement and is compared by state only.
    fn loose(&self) -> Vec<bool> {
        let mut out = Vec::new();
        let mut stmts: HashMap<String, bool> = HashMap::new();
        let mut portals: HashMap<String, bool> = HashMap::new();
        for step in &self.steps {
            match step {
                Step::Query(s) => out.push(s.iter().any(|s| refused(s))),
                Step::Pipeline(msgs) => {
                    let mut touched = false;
                    for m in msgs {
                        match m {
                            Msg::Parse { name, sql } => {
                                stmts.insert(name.clone(), refused(sql));
                                touched |= refused(sql);
                            }
                            Msg::Bind { portal, stmt, .. } => {
                                let r = stmts.get(stmt).copied().unwrap_or(false);
                                portals.insert(portal.clone(), r);
                                touched |= r;
                            }
                            Msg::Describe { portal: true, name }
                            | Msg::Execute { portal: name, .. } => {
                                touched |= portals.get(name).copied().unwrap_or(false);
                            }
                            Msg::Describe {
                                portal: false,
                                name,
                            } => touched |= stmts.get(name).copied().unwrap_or(false),
                            Msg::Sync => {
                                out.push(touched);
                                touched = false;
                            }
                            Msg::Close { .. } | Msg::Flush => {}
                        }
                    }
                }
            }
        }
        out
    }

    fn items(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Query(v) => v.len(),
                Step::Pipeline(v) => v.len(),
            })
            .sum()
    }
}

impl std::fmt::Display for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Query(s) => writeln!(f, "  {}. Query {:?}", i + 1, s.join("; "))?,
                Step::Pipeline(msgs) => {
                    writeln!(f, "  {}. pipeline, sent in one write:", i + 1)?;
                    for m in msgs {
                        writeln!(f, "       {m}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- generation

/// The keys and which shard holds each.
struct World {
    shard_of: Vec<usize>,
}

impl World {
    fn id(&self, g: &mut Lcg) -> i64 {
        1 + g.next(IDS as u64) as i64
    }

    /// A value for `u` or `d` of row `id`: only values of rows on the same
    /// shard, so every uniqueness conflict is one a shard can see (the
    /// proxy does not promise uniqueness across shards).
    fn val(&self, g: &mut Lcg, id: i64) -> i64 {
        let same: Vec<i64> = (1..=IDS)
            .filter(|k| self.shard_of[*k as usize] == self.shard_of[id as usize])
            .collect();
        let k = same[g.next(same.len() as u64) as usize];
        if g.next(2) == 0 {
            k
        } else {
            k + 100
        }
    }
}

fn pick<'a>(g: &mut Lcg, xs: &[&'a str]) -> &'a str {
    xs[g.next(xs.len() as u64) as usize]
}

fn delta(g: &mut Lcg) -> i64 {
    [1, 2, 5, -3, -1000][g.next(5) as usize]
}

/// One statement of a simple query.
fn simple_stmt(g: &mut Lcg, w: &World) -> String {
    let id = w.id(g);
    match g.next(100) {
        0..=9 => format!("UPDATE t SET b = b + {} WHERE id = {id}", delta(g)),
        10..=13 => format!(
            "UPDATE t SET b = b + {} WHERE id IN ({id}, {})",
            delta(g),
            w.id(g)
        ),
        14..=15 => "UPDATE t SET b = b + 1".to_string(),
        16..=19 => format!(
            "INSERT INTO t (id, b, u, d) VALUES ({id}, 5, {}, {})",
            w.val(g, id),
            w.val(g, id)
        ),
        20..=21 => {
            let id2 = w.id(g);
            format!(
                "INSERT INTO t (id, b, u, d) VALUES ({id}, 6, {}, {}), ({id2}, 7, {}, {})",
                w.val(g, id),
                w.val(g, id),
                w.val(g, id2),
                w.val(g, id2)
            )
        }
        22..=24 => format!("DELETE FROM t WHERE id = {id}"),
        25..=28 => format!("UPDATE t SET u = {} WHERE id = {id}", w.val(g, id)),
        29..=32 => format!("UPDATE t SET d = {} WHERE id = {id}", w.val(g, id)),
        33..=36 => format!("SELECT id, b, u, d FROM t WHERE id = {id}"),
        37..=38 => format!(
            "SELECT id, b FROM t WHERE id IN ({id}, {}) ORDER BY id",
            w.id(g)
        ),
        39..=40 => "SELECT id, b, u, d FROM t ORDER BY id".to_string(),
        41..=42 => "SELECT count(*), sum(b) FROM t".to_string(),
        43..=45 => format!("SELECT b / 0 FROM t WHERE id = {id}"),
        46 => "SELECT 1 / 0".to_string(),
        47..=55 => pick(
            g,
            &[
                "BEGIN",
                "BEGIN",
                "START TRANSACTION",
                "BEGIN ISOLATION LEVEL REPEATABLE READ",
            ],
        )
        .to_string(),
        56..=65 => pick(g, &["COMMIT", "COMMIT", "END", "ROLLBACK", "ABORT"]).to_string(),
        66..=73 => pick(
            g,
            &[
                "SAVEPOINT a",
                "SAVEPOINT b",
                "RELEASE a",
                "RELEASE SAVEPOINT b",
                "ROLLBACK TO a",
                "ROLLBACK TO SAVEPOINT b",
            ],
        )
        .to_string(),
        74..=82 => pick(
            g,
            &[
                "SET LOCAL lock_timeout = '1s'",
                "SET lock_timeout = '2s'",
                "RESET lock_timeout",
                "SHOW lock_timeout",
                "SELECT set_config('lock_timeout', '3s', false)",
                "SELECT set_config('lock_timeout', '4s', true)",
                "SELECT current_setting('lock_timeout')",
            ],
        )
        .to_string(),
        83..=85 => REFUSED[g.next(REFUSED.len() as u64) as usize].0.to_string(),
        86..=89 => format!(
            "INSERT INTO t (id, b, u, d) VALUES ({id}, 1, {}, {}) ON CONFLICT (id) DO UPDATE SET b = t.b + 1",
            w.val(g, id),
            w.val(g, id)
        ),
        _ => format!("UPDATE t SET b = b - 1000 WHERE id = {id}"),
    }
}

fn simple_session(g: &mut Lcg, w: &World) -> Session {
    let steps = (0..1 + g.next(4))
        .map(|_| Step::Query((0..1 + g.next(5)).map(|_| simple_stmt(g, w)).collect()))
        .collect();
    Session { steps }
}

/// Statements of the extended protocol: SQL and how to make its parameters.
const EXT: &[&str] = &[
    "SELECT id, b, u, d FROM t WHERE id = $1",
    "UPDATE t SET b = b + $2 WHERE id = $1",
    "SELECT b / $2 FROM t WHERE id = $1",
    "INSERT INTO t (id, b, u, d) VALUES ($1, $2, $3, $4)",
    "UPDATE t SET u = $2 WHERE id = $1",
    "UPDATE t SET d = $2 WHERE id = $1",
    "DELETE FROM t WHERE id = $1",
    "SELECT id, b FROM t ORDER BY id",
    "SELECT count(*), sum(b) FROM t",
    "SELECT id, b FROM t WHERE id IN ($1, $2) ORDER BY id",
    "UPDATE t SET b = b + 1 WHERE id IN ($1, $2)",
    "UPDATE t SET b = b + $1",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT a",
    "ROLLBACK TO a",
    "RELEASE a",
    "SET LOCAL lock_timeout = '1s'",
    "SHOW lock_timeout",
    "SELECT set_config('lock_timeout', $1, false)",
    "SELECT id, b FROM t WHERE b >= $1 ORDER BY id",
    "SELECT id, sum(b) OVER () FROM t",
];

fn ext_params(g: &mut Lcg, w: &World, kind: usize) -> Vec<String> {
    let id = w.id(g);
    let v = match kind {
        0 | 6 => vec![id],
        1 => vec![id, delta(g)],
        2 => vec![id, g.next(2) as i64],
        3 => vec![id, 1 + g.next(9) as i64, w.val(g, id), w.val(g, id)],
        4 | 5 => vec![id, w.val(g, id)],
        9 | 10 => vec![id, w.id(g)],
        11 => vec![[1, -1000][g.next(2) as usize]],
        20 => return vec!["3s".to_string()],
        21 => vec![10 * g.next(8) as i64],
        _ => vec![],
    };
    v.into_iter().map(|n| n.to_string()).collect()
}

fn ext_kind(g: &mut Lcg) -> usize {
    // Data statements most of the time, block control and settings often.
    match g.next(100) {
        0..=59 => [0, 1, 1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10, 11, 21][g.next(15) as usize],
        60..=87 => [12, 12, 13, 13, 14, 15, 16, 17][g.next(8) as usize],
        88..=96 => [18, 19, 20][g.next(3) as usize],
        _ => 22,
    }
}

fn extended_session(g: &mut Lcg, w: &World) -> Session {
    let mut named: Vec<(String, usize)> = Vec::new();
    let mut steps = Vec::new();
    for _ in 0..1 + g.next(3) {
        let mut msgs = Vec::new();
        for _ in 0..1 + g.next(5) {
            let reuse = !named.is_empty() && g.next(4) == 0;
            let (stmt, kind) = if reuse {
                named[g.next(named.len() as u64) as usize].clone()
            } else {
                let kind = ext_kind(g);
                let name = if g.next(3) == 0 {
                    let n = format!("s{}", named.len() + 1);
                    named.push((n.clone(), kind));
                    n
                } else {
                    String::new()
                };
                msgs.push(Msg::Parse {
                    name: name.clone(),
                    sql: EXT[kind].to_string(),
                });
                (name, kind)
            };
            if g.next(10) == 0 {
                msgs.push(Msg::Describe {
                    portal: false,
                    name: stmt.clone(),
                });
            }
            let portal = if g.next(5) == 0 { "p1" } else { "" }.to_string();
            msgs.push(Msg::Bind {
                portal: portal.clone(),
                stmt,
                params: ext_params(g, w, kind),
            });
            if g.next(5) == 0 {
                msgs.push(Msg::Describe {
                    portal: true,
                    name: portal.clone(),
                });
            }
            let limited = g.next(10) < 3;
            msgs.push(Msg::Execute {
                portal: portal.clone(),
                max_rows: if limited { 1 + g.next(2) as i32 } else { 0 },
            });
            // Only a portal with rows continues; re-running a completed
            // portal of a utility statement is kept rare (one distinct case).
            let continues = matches!(kind, 0 | 2 | 7 | 8 | 9 | 19 | 20 | 21);
            if (limited && continues && g.next(5) < 3) || g.next(50) == 0 {
                if g.next(3) == 0 {
                    msgs.push(Msg::Flush);
                }
                msgs.push(Msg::Execute {
                    portal: portal.clone(),
                    max_rows: 0,
                });
            }
            if !portal.is_empty() && g.next(3) == 0 {
                msgs.push(Msg::Close {
                    portal: true,
                    name: portal,
                });
            }
            match g.next(20) {
                0..=6 => msgs.push(Msg::Sync),
                7..=10 => msgs.push(Msg::Flush),
                _ => {}
            }
        }
        if !matches!(msgs.last(), Some(Msg::Sync)) {
            msgs.push(Msg::Sync);
        }
        steps.push(Step::Pipeline(msgs));
    }
    Session { steps }
}

// ------------------------------------------------------------------ running

/// A raw protocol connection whose reads time out instead of hanging.
struct Wire {
    stream: TcpStream,
}

impl Wire {
    async fn connect(port: u16) -> Wire {
        Wire {
            stream: RawClient::connect(port).await.stream,
        }
    }

    async fn read(&mut self) -> Result<(u8, Vec<u8>), String> {
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

    /// Sends `bytes` and reads `syncs` answers (each up to ReadyForQuery),
    /// normalised; a hang or a closed connection ends the last answer with
    /// a line saying so, and `false`.
    async fn exchange(&mut self, bytes: &[u8], syncs: usize, out: &mut Vec<Answer>) -> bool {
        let fault = |key: String| Line {
            key,
            note: String::new(),
        };
        if let Err(e) = self.stream.write_all(bytes).await {
            out.push(vec![fault(format!("!! write failed: {e}"))]);
            return false;
        }
        let mut cur = Vec::new();
        let mut got = 0;
        while got < syncs {
            match self.read().await {
                Err(e) => {
                    cur.push(fault(format!("!! {e}")));
                    out.push(cur);
                    return false;
                }
                Ok((t, b)) => {
                    if let Some(line) = normalise(t, &b) {
                        cur.push(line);
                    }
                    if t == b'Z' {
                        out.push(std::mem::take(&mut cur));
                        got += 1;
                    }
                }
            }
        }
        true
    }
}

/// One message as compared: what must agree, without what must differ
/// (ParameterStatus, error and notice texts, table OIDs in descriptions).
fn normalise(t: u8, b: &[u8]) -> Option<Line> {
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

fn data_row(b: &[u8]) -> Option<String> {
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
fn row_description(b: &[u8]) -> Option<String> {
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
struct Line {
    key: String,
    note: String,
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

type Answer = Vec<Line>;

/// What one run of a session on both systems gave.
struct Outcome {
    /// Per system (oracle first): the answers, one per query or Sync.
    answers: [Vec<Answer>; 2],
    /// Per system: the rows of `t` afterwards.
    tables: [Vec<String>; 2],
    /// Per system: what another client sees of the settings afterwards.
    observer: [Answer; 2],
    /// Problems only the shards can show (rows on the wrong shard,
    /// prepared transactions left behind).
    shard_faults: Vec<String>,
}

/// The difference found in one run: a short signature that names it (kept
/// while shrinking, used to tell differences apart) and the whole story.
struct Difference {
    signature: String,
    detail: String,
}

struct Bench {
    cluster: Cluster,
    _oracle_servers: Servers,
    oracle: Client,
    shards: Vec<Client>,
    observers: [Wire; 2],
    oracle_port: u16,
    world: World,
    /// The proxy's `[[tables]]`, for restarting it.
    tables: String,
    /// How many times the proxy was restarted (a fresh decision log each).
    restarts: usize,
    /// Time spent resetting the tables, running sessions, and reading
    /// what they left.
    timing: [Duration; 3],
    /// The rows every session starts from, per shard.
    reset_oracle: String,
    reset_shards: Vec<String>,
}

fn row_sql(id: i64) -> String {
    format!("({id}, {}, {id}, {id})", 10 * id)
}

impl Bench {
    async fn start() -> Bench {
        let tables =
            format!("{TABLES}\n[[tables]]\nname = \"t\"\nkey = \"id\"\nkey_type = \"int8\"\n");
        let cluster = Cluster::start_with(3, &tables).await;
        let oracle_servers = Servers::start(1);
        // The oracle takes the raw client's login: user `plain`, cleartext
        // password, database `app`.
        let admin = oracle_servers.connect(0).await;
        for sql in [
            "CREATE ROLE plain LOGIN SUPERUSER PASSWORD 'plainpass'",
            "CREATE DATABASE app OWNER plain",
        ] {
            admin.simple_query(sql).await.unwrap();
        }
        let hba = oracle_servers.servers[0].data_dir.join("pg_hba.conf");
        std::fs::write(&hba, "host all all 127.0.0.1/32 password\n").unwrap();
        admin.simple_query("SELECT pg_reload_conf()").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let oracle_port = oracle_servers.servers[0].port;
        let oracle = crate::harness::connect(&format!(
            "host=127.0.0.1 port={oracle_port} user=plain password=plainpass dbname=app"
        ))
        .await
        .unwrap();
        let mut shards = Vec::new();
        for i in 0..3 {
            shards.push(cluster.shard(i).await);
        }
        for c in shards.iter().chain(std::iter::once(&oracle)) {
            c.simple_query(&format!("{SCHEMA}; SET statement_timeout = '10s'"))
                .await
                .unwrap();
        }
        let shard_of: Vec<usize> = (0..=IDS)
            .map(|k| cluster.shard_of("t", KeyValue::Int(k)))
            .collect();
        for s in 0..3 {
            assert!(
                (1..=PRESENT).any(|k| shard_of[k as usize] == s),
                "every shard holds some of the keys"
            );
        }
        let all: Vec<String> = (1..=PRESENT).map(row_sql).collect();
        let reset_oracle = format!("DELETE FROM t; INSERT INTO t VALUES {}", all.join(", "));
        let reset_shards = (0..3)
            .map(|s| {
                let rows: Vec<String> = (1..=PRESENT)
                    .filter(|k| shard_of[*k as usize] == s)
                    .map(row_sql)
                    .collect();
                format!("DELETE FROM t; INSERT INTO t VALUES {}", rows.join(", "))
            })
            .collect();
        let observers = [
            Wire::connect(oracle_port).await,
            Wire::connect(cluster.port()).await,
        ];
        Bench {
            cluster,
            _oracle_servers: oracle_servers,
            oracle,
            shards,
            observers,
            oracle_port,
            world: World { shard_of },
            tables,
            restarts: 0,
            timing: [Duration::ZERO; 3],
            reset_oracle,
            reset_shards,
        }
    }

    async fn reset(&self) {
        let (a, b, c, d) = tokio::join!(
            self.oracle.simple_query(&self.reset_oracle),
            self.shards[0].simple_query(&self.reset_shards[0]),
            self.shards[1].simple_query(&self.reset_shards[1]),
            self.shards[2].simple_query(&self.reset_shards[2]),
        );
        for (r, who) in [
            (a, "oracle"),
            (b, "shard 0"),
            (c, "shard 1"),
            (d, "shard 2"),
        ] {
            if let Err(e) = r {
                panic!(
                    "resetting {who} failed ({e:?}): locks left behind by an earlier session? Differences so far are above."
                );
            }
        }
    }

    async fn run(&mut self, session: &Session) -> Outcome {
        let t0 = Instant::now();
        self.reset().await;
        let t1 = Instant::now();
        let (o, p) = tokio::join!(
            run_on(self.oracle_port, session, true),
            run_on(self.cluster.port(), session, false)
        );
        let t2 = Instant::now();
        self.timing[0] += t1 - t0;
        self.timing[1] += t2 - t1;
        let q = "SELECT id, b, u, d FROM t ORDER BY id";
        let oracle_rows = text_rows(self.oracle.simple_query(q).await.unwrap());
        let mut proxy_rows = Vec::new();
        let mut shard_faults = Vec::new();
        for (s, c) in self.shards.iter().enumerate() {
            let msgs = c
                .simple_query(&format!("{q}; SELECT count(*) FROM pg_prepared_xacts"))
                .await
                .unwrap();
            let rows = text_rows(msgs);
            let (prepared, rows) = rows.split_last().unwrap();
            if prepared != "0" {
                shard_faults.push(format!("shard {s} holds {prepared} prepared transactions"));
            }
            for r in rows {
                let id: i64 = r.split(',').next().unwrap().parse().unwrap();
                if self.world.shard_of[id as usize] != s {
                    shard_faults.push(format!("row {r} is on shard {s}"));
                }
                proxy_rows.push((id, r.clone()));
            }
        }
        proxy_rows.sort();
        let observe = b"SELECT id, current_setting('lock_timeout') FROM t ORDER BY id\0";
        let mut observer = [Vec::new(), Vec::new()];
        for (i, w) in self.observers.iter_mut().enumerate() {
            let mut bytes = Vec::new();
            frame(&mut bytes, b'Q', observe);
            let mut out = Vec::new();
            w.exchange(&bytes, 1, &mut out).await;
            observer[i] = out.concat();
        }
        if observer[0] != observer[1] {
            // A setting leaked onto pooled server connections would leak into
            // every later session too: start a fresh proxy (fresh pools).
            self.restart_proxy().await;
        }
        self.timing[2] += t2.elapsed();
        Outcome {
            answers: [o, p],
            tables: [
                oracle_rows,
                proxy_rows.into_iter().map(|(_, r)| r).collect(),
            ],
            observer,
            shard_faults,
        }
    }

    async fn restart_proxy(&mut self) {
        self.restarts += 1;
        let old = Wire::connect(self.oracle_port).await;
        drop(std::mem::replace(&mut self.observers[1], old));
        if let Some(p) = self.cluster.proxy.take() {
            p.stop().await;
        }
        let shards = &self.cluster.shards;
        let text = config_text_full(
            &shards.ports(),
            &self.tables,
            &shards.dir.join(format!("txn-{}", self.restarts)),
            "",
            "",
        );
        let config = Config::parse(&text, "test.toml").unwrap();
        self.cluster.proxy = Some(pieskieo::serve(config).await.unwrap());
        self.observers[1] = Wire::connect(self.cluster.port()).await;
    }

    /// Runs `session` and says how the proxy differed from PostgreSQL.
    async fn differ(&mut self, session: &Session) -> Option<Difference> {
        let out = self.run(session).await;
        compare(session, &out)
    }
}

/// Text rows (columns joined by commas) of a simple query's messages.
fn text_rows(msgs: Vec<SimpleQueryMessage>) -> Vec<String> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            _ => None,
        })
        .collect()
}

async fn run_on(port: u16, session: &Session, oracle: bool) -> Vec<Answer> {
    let mut w = Wire::connect(port).await;
    let mut out = Vec::new();
    for step in &session.steps {
        let (bytes, syncs) = step.encode(oracle);
        if !w.exchange(&bytes, syncs, &mut out).await {
            break;
        }
    }
    let _ = w.stream.write_all(&[b'X', 0, 0, 0, 4]).await;
    out
}

/// Without the rows' values: what a signature keeps of a message.
fn kind(line: &Line) -> &str {
    if line.key.starts_with("DataRow") {
        "DataRow"
    } else {
        &line.key
    }
}

fn compare(session: &Session, out: &Outcome) -> Option<Difference> {
    let loose = session.loose();
    let [o, p] = &out.answers;
    let mut detail = String::new();
    let mut signature = None;
    for i in 0..o.len().max(p.len()) {
        let (a, b) = (o.get(i), p.get(i));
        let lax = loose.get(i).copied().unwrap_or(false);
        let differs = match (a, b) {
            (Some(a), Some(b)) if lax => {
                a.last() != b.last()
                    || a.iter().any(|l| l.key.starts_with("ErrorResponse"))
                        != b.iter().any(|l| l.key.starts_with("ErrorResponse"))
            }
            (Some(a), Some(b)) => a != b,
            _ => true,
        };
        if differs && signature.is_none() {
            let empty = Vec::new();
            let (a, b) = (a.unwrap_or(&empty), b.unwrap_or(&empty));
            let at = (0..a.len().max(b.len()))
                .find(|j| a.get(*j) != b.get(*j))
                .unwrap_or(0);
            let show = |l: Option<&Line>| l.map_or("(nothing)", kind).to_string();
            let (x, y) = if lax {
                (show(a.last()), show(b.last()))
            } else {
                (show(a.get(at)), show(b.get(at)))
            };
            signature = Some(format!(
                "{}PostgreSQL: {x} | Pieskieo: {y}",
                if lax { "[state] " } else { "" }
            ));
        }
    }
    if signature.is_none() && out.tables[0] != out.tables[1] {
        // Told apart by the first error PostgreSQL gave (what should have
        // rolled the writes back) and the protocol.
        let error = o
            .iter()
            .flatten()
            .find(|l| l.key.starts_with("ErrorResponse"))
            .map_or("no error", |l| l.key.as_str());
        let class = match session.steps.first() {
            Some(Step::Query(_)) => "simple",
            _ => "extended",
        };
        signature = Some(format!("table contents differ ({class}; {error})"));
    }
    if signature.is_none() && !out.shard_faults.is_empty() {
        signature = Some(out.shard_faults[0].replace(|c: char| c.is_ascii_digit(), "N"));
    }
    if signature.is_none() && out.observer[0] != out.observer[1] {
        signature = Some("another client sees other settings afterwards".to_string());
    }
    let signature = signature?;
    for (i, step_answers) in [o, p].iter().enumerate() {
        let who = ["PostgreSQL", "Pieskieo"][i];
        writeln!(detail, "  {who} answered:").unwrap();
        for (j, a) in step_answers.iter().enumerate() {
            let lax = if loose.get(j).copied().unwrap_or(false) {
                " (holds a refused statement: compared by state)"
            } else {
                ""
            };
            writeln!(detail, "    answer {}{lax}:", j + 1).unwrap();
            for l in a {
                writeln!(detail, "      {l}").unwrap();
            }
        }
    }
    if out.tables[0] != out.tables[1] {
        writeln!(
            detail,
            "  table t afterwards (id,b,u,d):\n    PostgreSQL: {}\n    Pieskieo:   {}",
            out.tables[0].join(" "),
            out.tables[1].join(" ")
        )
        .unwrap();
    }
    for f in &out.shard_faults {
        writeln!(detail, "  {f}").unwrap();
    }
    if out.observer[0] != out.observer[1] {
        writeln!(
            detail,
            "  another client's `SELECT id, current_setting('lock_timeout') FROM t ORDER BY id` afterwards:\n    PostgreSQL: {}\n    Pieskieo:   {}",
            settings(&out.observer[0]),
            settings(&out.observer[1])
        )
        .unwrap();
    }
    Some(Difference { signature, detail })
}

/// The observer's rows, shortly: `id=setting` for each.
fn settings(a: &Answer) -> String {
    a.iter()
        .filter(|l| l.key.starts_with("DataRow"))
        .map(|l| {
            l.key
                .trim_start_matches("DataRow [")
                .trim_end_matches(']')
                .replace("\", \"", "=")
                .replace('"', "")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Drops steps, then statements and messages, while the difference with
/// `signature` persists; the shortest session found.
async fn shrink(bench: &mut Bench, mut s: Session, signature: &str) -> Session {
    let mut budget = SHRINK_BUDGET;
    let mut changed = true;
    while changed && budget > 0 {
        changed = false;
        let mut i = 0;
        while i < s.steps.len() && s.steps.len() > 1 && budget > 0 {
            let mut t = s.clone();
            t.steps.remove(i);
            budget -= 1;
            if same(bench, &t, signature).await {
                s = t;
                changed = true;
            } else {
                i += 1;
            }
        }
        for step in 0..s.steps.len() {
            let mut j = 0;
            loop {
                let len = match &s.steps[step] {
                    Step::Query(v) => v.len(),
                    // The last Sync stays: it is what the answer is read up to.
                    Step::Pipeline(v) => v.len() - 1,
                };
                if j >= len || budget == 0 || (len == 1 && matches!(s.steps[step], Step::Query(_)))
                {
                    break;
                }
                let mut t = s.clone();
                match &mut t.steps[step] {
                    Step::Query(v) => {
                        v.remove(j);
                    }
                    Step::Pipeline(v) => {
                        v.remove(j);
                    }
                }
                budget -= 1;
                if same(bench, &t, signature).await {
                    s = t;
                    changed = true;
                } else {
                    j += 1;
                }
            }
        }
    }
    s
}

async fn same(bench: &mut Bench, s: &Session, signature: &str) -> bool {
    bench
        .differ(s)
        .await
        .is_some_and(|d| d.signature == signature)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The generator of session `i`: the same session for the same base seed.
fn session_rng(seed: u64, i: u64) -> Lcg {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    Lcg(z ^ (z >> 31))
}

struct Found {
    first: u64,
    class: Class,
    count: usize,
    report: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_sessions_match_postgresql() {
    let sessions = env("PIESKIEO_DIFF_SESSIONS", 2_000);
    let seed = env("PIESKIEO_DIFF_SEED", 12);
    let first = env("PIESKIEO_DIFF_FIRST", 0);
    let classes: Vec<Class> = match std::env::var("PIESKIEO_DIFF_CLASS").as_deref() {
        Ok("simple") => vec![Class::Simple],
        Ok("extended") => vec![Class::Extended],
        Ok("both") | Err(_) => vec![Class::Simple, Class::Extended],
        Ok(other) => panic!("PIESKIEO_DIFF_CLASS={other}: use simple, extended or both"),
    };
    let mut bench = Bench::start().await;
    let started = Instant::now();
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    let mut differing = 0usize;
    let mut shrinking = Duration::ZERO;
    for i in first..first + sessions {
        let class = classes[(i % classes.len() as u64) as usize];
        let mut g = session_rng(seed, i);
        let session = match class {
            Class::Simple => simple_session(&mut g, &bench.world),
            Class::Extended => extended_session(&mut g, &bench.world),
        };
        let Some(d) = bench.differ(&session).await else {
            continue;
        };
        differing += 1;
        if let Some(f) = found.get_mut(&d.signature) {
            f.count += 1;
            continue;
        }
        let shrink_started = Instant::now();
        let report = if found.len() < MAX_REPORTED {
            let small = shrink(&mut bench, session.clone(), &d.signature).await;
            let again = bench.differ(&small).await;
            let (small, detail, note) = match again {
                Some(a) if a.signature == d.signature => (small, a.detail, ""),
                _ => (
                    session.clone(),
                    d.detail,
                    " (not reproducible after shrinking: shown unshrunk)",
                ),
            };
            let text = format!(
                "### {}\nsession #{i} ({class:?}, seed {seed}){note}, {} items; client sent:\n{small}{detail}",
                d.signature,
                small.items()
            );
            println!("{text}");
            Some(text)
        } else {
            None
        };
        shrinking += shrink_started.elapsed();
        found.insert(
            d.signature.clone(),
            Found {
                first: i,
                class,
                count: 1,
                report,
            },
        );
    }
    let mut summary = format!(
        "differential sessions: {sessions} sessions from #{first} (seed {seed}, classes {classes:?}) in {:.1}s ({:.1}s of it shrinking); {differing} differed, {} distinct differences\n",
        started.elapsed().as_secs_f64(),
        shrinking.as_secs_f64(),
        found.len()
    );
    let [reset, ran, after] = bench.timing.map(|d| d.as_secs_f64());
    writeln!(
        summary,
        "  time: resets {reset:.1}s, sessions {ran:.1}s, reading what they left {after:.1}s; proxy restarts after leaks: {}",
        bench.restarts
    )
    .unwrap();
    for (sig, f) in &found {
        writeln!(
            summary,
            "  {} sessions, first #{} ({:?}): {sig}",
            f.count, f.first, f.class
        )
        .unwrap();
    }
    println!("{summary}");
    if let Ok(path) = std::env::var("PIESKIEO_DIFF_REPORT") {
        let mut text = summary.clone();
        for f in found.values() {
            if let Some(r) = &f.report {
                text.push('\n');
                text.push_str(r);
            }
        }
        std::fs::write(&path, text).unwrap();
    }
    assert!(found.is_empty(), "{summary}");
}
