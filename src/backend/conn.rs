//! One connection to a PostgreSQL shard, framed by hand so results pass to the
//! client byte for byte. Tracks what it owes: a connection is reusable only
//! when every `ReadyForQuery` it owes has been read and the server is idle.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncWriteExt, BufWriter};

use super::endpoint::{ServerRead, ServerWrite};
use super::{BackendError, Endpoint};
use crate::config::Shard;
use crate::protocol::{take_cstr, Arrived, ErrorFields, Frame, FrameError, FrameReader};
use crate::router::ShardId;

/// Largest message accepted from a server (rows can be big; this bounds garbage).
const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// Whether a CommandComplete body is the tag of a command that drops
/// prepared statements.
fn forgets_statements(tag: &[u8]) -> bool {
    matches!(tag, b"DISCARD ALL\0" | b"DEALLOCATE ALL\0")
}

/// A `Sync` message.
const SYNC: &[u8] = &[b'S', 0, 0, 0, 4];

/// Appends a message of type `tag` whose body `body` writes, with its length.
fn frame(m: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    m.push(tag);
    let at = m.len();
    m.extend_from_slice(&[0; 4]);
    body(m);
    let len = (m.len() - at) as i32;
    m[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a `Parse` of `text` as the statement `name`.
fn push_parse(m: &mut Vec<u8>, name: &str, text: &str, types: &[u32]) {
    frame(m, b'P', |m| {
        m.extend_from_slice(name.as_bytes());
        m.push(0);
        m.extend_from_slice(text.as_bytes());
        m.push(0);
        m.extend_from_slice(&(types.len() as i16).to_be_bytes());
        for t in types {
            m.extend_from_slice(&t.to_be_bytes());
        }
    });
}

/// Appends a `Close` of the statement `name`.
fn push_close(m: &mut Vec<u8>, name: &str) {
    frame(m, b'C', |m| {
        m.push(b'S');
        m.extend_from_slice(name.as_bytes());
        m.push(0);
    });
}

/// Statements the proxy prepares on one server connection for simple
/// queries, at most: each costs the server memory; past that, new texts go
/// as written.
pub const MAX_PREPARED_PER_CONNECTION: usize = 1000;

/// A statement the proxy prepared on a connection to run simple queries
/// inside blocks (`executor::run_in_block`), under a name of its own that
/// nothing else binds.
#[derive(Debug)]
pub struct BlockStatement {
    /// Its name on the server (the simple query's statement name, `_b`).
    pub name: Arc<str>,
    /// The connection's `search_path` setting (its statement, `None` for
    /// the server's default) when it was parsed: PostgreSQL analyses it
    /// again under another, which may change its rows' shape and refuse it.
    pub search_path: Option<String>,
}

pub struct ServerConn {
    pub shard: ShardId,
    reader: FrameReader<ServerRead>,
    writer: BufWriter<ServerWrite>,
    /// Room to frame messages in before they are written (`send_bound`).
    scratch: Vec<u8>,
    conforming_strings: bool,
    /// Parameters the server reported with `ParameterStatus`.
    pub params: BTreeMap<String, String>,
    /// Session settings a client applied here: name -> the statement that set it.
    pub applied: BTreeMap<String, String>,
    /// Something ran here that may have changed session settings where the
    /// proxy could not see it: the next checkout resets them all.
    pub settings_unknown: bool,
    /// Transaction status from the last `ReadyForQuery`: `I`, `T` or `E`.
    pub status: u8,
    /// `ReadyForQuery` messages still owed.
    pending: usize,
    /// Extended-protocol messages were sent that no `Sync` has closed yet.
    unsynced: bool,
    /// Statements prepared here under the proxy's names.
    /// (Looked up per query when simple queries run prepared: foldhash,
    /// not SipHash.)
    pub prepared: std::collections::HashSet<String, foldhash::fast::RandomState>,
    /// Statements that ran as written in a block here, to be prepared
    /// before the connection's next `BEGIN` (`run_in_block`).
    pub to_prepare: Vec<Arc<crate::router::Later>>,
    /// Run before anyone uses the connection again (the session's
    /// checkout): gives back the deadlock tag a block took here as a
    /// session-level lock (`txn::deadlock::session_tag_sql`).
    pub untag: Option<String>,
    /// Statements prepared here for blocks, by the simple query's statement
    /// name (see [`BlockStatement`]).
    pub block_statements:
        std::collections::HashMap<Arc<str>, BlockStatement, foldhash::fast::RandomState>,
    broken: bool,
    pub process_id: i32,
    pub secret_key: i32,
    /// When the oldest unanswered simple query was sent.
    sent_at: Option<std::time::Instant>,
    /// This shard's counters, when the connection belongs to a pool.
    pub stats: Option<std::sync::Arc<crate::admin::ShardStats>>,
    /// The shard as it was reached (where a cancel request goes, and how).
    pub endpoint: Arc<Endpoint>,
    /// The longest wait for an answer (`limits.query_timeout_ms`); none for
    /// the proxy's own control connections.
    pub answer_timeout: Option<Duration>,
    /// Set by the deadlock detector before it cancels this backend: the
    /// error the client gets in place of the cancel's 57014.
    pub verdict: super::Verdict,
    /// Held until the statement sent here has its snapshot (see
    /// [`SnapshotHold`]); `consistent_reads` only.
    pub snapshot_hold: Option<SnapshotHold>,
    /// [`ServerConn::settle`] waited the whole answer timeout: the next
    /// read waits no longer.
    late: bool,
    /// A verdict replaced an error in this transaction: its connection is
    /// closed when the transaction ends.
    victim: bool,
    /// Set by the consistent-read fence's stall watcher when it let go of
    /// a statement this connection had not answered (the shard did not
    /// answer the watcher either): nothing read here is used any more.
    pub fenced_out: Arc<AtomicBool>,
}

/// A hold (a consistent-read fence guard, shared by every shard of one
/// statement) let go at this connection's first answer that PostgreSQL
/// sends after taking the statement's snapshot: the first message after
/// `skip` ReadyForQuery (the answers to a block's `BEGIN` and prelude, sent
/// before the statement), other than notices, parameter reports,
/// notifications, ParseComplete and ParameterDescription (a Parse's
/// snapshot is not the one a portal runs with; Bind's BindComplete is).
/// With `execute`, BindComplete and a Describe's answers (RowDescription,
/// NoData) pass too: it is let go at the first answer to an Execute, sent
/// with them, which takes snapshots of its own.
pub struct SnapshotHold {
    pub skip: usize,
    pub execute: bool,
    pub hold: Arc<dyn std::any::Any + Send + Sync>,
}

/// Whether a frame tagged `tag` is the answer that ends a snapshot hold
/// (see [`SnapshotHold`]); counts its skipped ReadyForQuery down.
fn ends_hold(skip: &mut usize, execute: bool, tag: u8) -> bool {
    match tag {
        b'Z' if *skip > 0 => {
            *skip -= 1;
            false
        }
        _ if *skip > 0 => false,
        b'N' | b'S' | b'A' | b'1' | b't' => false,
        b'2' | b'T' | b'n' if execute => false,
        _ => true,
    }
}

impl ServerConn {
    /// With a snapshot hold: waits until the answer that ends it has
    /// arrived (buffered, still to be read) and lets it go. The shards of a
    /// statement are read one after another; without this, a shard that
    /// answered while an earlier one waits (for a row lock, say) would keep
    /// its share until the proxy gets to it. Gives up at the answer
    /// timeout or a closed stream: the next read reports those.
    pub async fn settle(&mut self) {
        let Some(h) = &self.snapshot_hold else {
            return;
        };
        let (mut skip, execute) = (h.skip, h.execute);
        let scan = async {
            let mut at = 0;
            loop {
                while let Some((tag, len)) = self.reader.peek_at(at) {
                    if ends_hold(&mut skip, execute, tag) {
                        return true;
                    }
                    at += len;
                }
                if !self.reader.fill().await {
                    return false;
                }
            }
        };
        let arrived = match self.answer_timeout {
            Some(t) => match tokio::time::timeout(t, scan).await {
                Ok(arrived) => arrived,
                Err(_) => {
                    self.late = true;
                    false
                }
            },
            None => scan.await,
        };
        if arrived {
            self.snapshot_hold = None;
        }
    }

    /// Opens a connection to `endpoint` (TLS as its `sslmode` says) and
    /// runs the startup; each step within `timeout`.
    pub async fn connect(
        endpoint: &Arc<Endpoint>,
        timeout: Duration,
    ) -> Result<ServerConn, BackendError> {
        let id = endpoint.shard;
        let (r, w) = endpoint.open(timeout).await?.split();
        let mut conn = ServerConn {
            answer_timeout: None,
            endpoint: endpoint.clone(),
            shard: id,
            reader: FrameReader::new(r),
            writer: BufWriter::with_capacity(16 * 1024, w),
            scratch: Vec::new(),
            conforming_strings: false,
            params: BTreeMap::new(),
            applied: BTreeMap::new(),
            settings_unknown: false,
            status: b'I',
            pending: 0,
            unsynced: false,
            prepared: Default::default(),
            to_prepare: Vec::new(),
            untag: None,
            block_statements: Default::default(),
            broken: false,
            process_id: 0,
            secret_key: 0,
            stats: None,
            sent_at: None,
            verdict: Default::default(),
            snapshot_hold: None,
            late: false,
            victim: false,
            fenced_out: Default::default(),
        };
        tokio::time::timeout(timeout, conn.startup(&endpoint.cfg))
            .await
            .map_err(|_| BackendError::Connect {
                shard: id,
                message: format!("timed out during startup with {}", endpoint.addr),
            })??;
        Ok(conn)
    }

    async fn startup(&mut self, cfg: &Shard) -> Result<(), BackendError> {
        let mut buf = BytesMut::new();
        let params = [
            ("user", cfg.user.as_str()),
            ("database", cfg.database.as_str()),
            ("application_name", "pieskieo"),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut buf).map_err(|e| self.io_err(e))?;
        self.write_all(&buf).await?;
        self.flush().await?;
        let password = cfg.password.clone().unwrap_or_default();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.read_raw().await?;
            match f.tag {
                b'R' => {
                    let body = f.body();
                    let code = body
                        .get(..4)
                        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(-1);
                    let payload = body.get(4..).unwrap_or(&[]);
                    let mut out = BytesMut::new();
                    match code {
                        0 => continue,
                        3 => frontend::password_message(password.as_bytes(), &mut out)
                            .map_err(|e| self.io_err(e))?,
                        5 => {
                            let salt: [u8; 4] = payload
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| self.proto("short md5 salt"))?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                cfg.user.as_bytes(),
                                password.as_bytes(),
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut out)
                                .map_err(|e| self.io_err(e))?;
                        }
                        10 => {
                            let offers_scram =
                                payload.split(|&c| c == 0).any(|m| m == b"SCRAM-SHA-256");
                            if !offers_scram {
                                return Err(self.proto("server offers no SCRAM-SHA-256"));
                            }
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)
                                .map_err(|e| self.io_err(e))?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| self.proto("SASL continue before start"))?;
                            s.update(payload).map_err(|e| BackendError::Auth {
                                shard: self.shard,
                                message: e.to_string(),
                            })?;
                            frontend::sasl_response(s.message(), &mut out)
                                .map_err(|e| self.io_err(e))?;
                        }
                        12 => {
                            let mut s = scram
                                .take()
                                .ok_or_else(|| self.proto("SASL final before start"))?;
                            s.finish(payload).map_err(|e| BackendError::Auth {
                                shard: self.shard,
                                message: e.to_string(),
                            })?;
                            continue;
                        }
                        other => {
                            return Err(BackendError::Auth {
                                shard: self.shard,
                                message: format!("unsupported authentication request {other}"),
                            })
                        }
                    }
                    self.write_all(&out).await?;
                    self.flush().await?;
                }
                b'S' => self.note_parameter(&f),
                b'K' => {
                    let b = f.body();
                    if b.len() >= 8 {
                        self.process_id = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                        self.secret_key = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                    }
                }
                b'E' => {
                    let e = ErrorFields::parse(f.body());
                    return Err(BackendError::Auth {
                        shard: self.shard,
                        message: e.to_string(),
                    });
                }
                b'N' => {}
                b'Z' => {
                    self.status = f.body().first().copied().unwrap_or(b'I');
                    return Ok(());
                }
                other => {
                    return Err(self.proto(&format!(
                        "unexpected message '{}' during startup",
                        other as char
                    )))
                }
            }
        }
    }

    fn io_err(&mut self, e: std::io::Error) -> BackendError {
        self.broken = true;
        BackendError::Io {
            shard: self.shard,
            message: e.to_string(),
        }
    }

    fn proto(&mut self, m: &str) -> BackendError {
        self.broken = true;
        BackendError::Protocol {
            shard: self.shard,
            message: m.to_string(),
        }
    }

    fn note_parameter(&mut self, f: &Frame) {
        if let Some((name, rest)) = take_cstr(f.body()) {
            if let Some((value, _)) = take_cstr(rest) {
                if name == "standard_conforming_strings" {
                    self.conforming_strings = value == "on";
                }
                self.params.insert(name.to_string(), value.to_string());
            }
        }
    }

    /// The error just read is not the shard's answer to the client: the
    /// proxy sends the query again as written (`relay_bound`), and the
    /// error counts once, when that answers.
    pub fn uncount_error(&self) {
        if let Some(s) = &self.stats {
            s.errors.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The server reads backslashes in `'...'` as ordinary characters
    /// (`standard_conforming_strings` reported on).
    pub fn conforming_strings(&self) -> bool {
        self.conforming_strings
    }

    async fn write_all(&mut self, b: &[u8]) -> Result<(), BackendError> {
        if let Err(e) = self.writer.write_all(b).await {
            return Err(self.io_err(e));
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), BackendError> {
        if let Err(e) = self.writer.flush().await {
            return Err(self.io_err(e));
        }
        Ok(())
    }

    /// Queues a simple `Query`; the caller flushes and reads the responses.
    /// Framed straight into the write buffer: no message is built apart.
    pub async fn send_query(&mut self, sql: &str) -> Result<(), BackendError> {
        let len = i32::try_from(sql.len() + 5)
            .ok()
            .filter(|_| !sql.as_bytes().contains(&0));
        let Some(len) = len else {
            let e = std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "string contains embedded null or is too long",
            );
            return Err(self.io_err(e));
        };
        let [a, b, c, d] = len.to_be_bytes();
        self.write_all(&[b'Q', a, b, c, d]).await?;
        self.write_all(sql.as_bytes()).await?;
        self.write_all(&[0]).await?;
        self.pending += 1;
        self.count(|s| &s.statements);
        if self.sent_at.is_none() {
            self.sent_at = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// Parse `text` as the statement `name`, then Sync: outside a
    /// transaction, a refusal costs nothing. One `ReadyForQuery` owed.
    pub async fn send_parse(
        &mut self,
        name: &str,
        text: &str,
        types: &[u32],
    ) -> Result<(), BackendError> {
        let mut m = Vec::with_capacity(name.len() + text.len() + 16 + 4 * types.len());
        push_parse(&mut m, name, text, types);
        m.extend_from_slice(SYNC);
        self.write_all(&m).await?;
        self.pending += 1;
        Ok(())
    }

    /// Queues `Close` of the statement prepared under `name`, and `Sync`.
    pub async fn send_close_statement(&mut self, name: &str) -> Result<(), BackendError> {
        let mut m = Vec::with_capacity(name.len() + 12);
        push_close(&mut m, name);
        m.extend_from_slice(SYNC);
        self.pending += 1;
        self.write_all(&m).await
    }

    /// Queues `Close` of the statement prepared under `name`, without
    /// `Sync`: the next message's answer follows its CloseComplete.
    pub async fn send_close_unsynced(&mut self, name: &str) -> Result<(), BackendError> {
        let mut m = Vec::with_capacity(name.len() + 7);
        push_close(&mut m, name);
        self.write_all(&m).await
    }

    /// Queues a statement prepared under `name` (a Parse first when `parse`
    /// gives its text and parameter types), bound to `values` as text, its
    /// portal described and run to the end, then `Sync`: the answer a
    /// simple query gets, with ParseComplete, BindComplete and NoData added.
    /// Framed in one buffer and written at once.
    pub async fn send_bound(
        &mut self,
        name: &str,
        parse: Option<(&str, &[u32])>,
        values: &[crate::router::Bound],
    ) -> Result<(), BackendError> {
        // Framed in a buffer the connection keeps: no allocation per query.
        let mut m = std::mem::take(&mut self.scratch);
        m.clear();
        if let Some((text, types)) = parse {
            push_parse(&mut m, name, text, types);
        }
        frame(&mut m, b'B', |m| {
            m.push(0);
            m.extend_from_slice(name.as_bytes());
            m.extend_from_slice(&[0, 0, 0]);
            m.extend_from_slice(&(values.len() as i16).to_be_bytes());
            for v in values {
                match v {
                    crate::router::Bound::Text(t) => {
                        m.extend_from_slice(&(t.len() as i32).to_be_bytes());
                        m.extend_from_slice(t.as_bytes());
                    }
                    _ => m.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
            m.extend_from_slice(&[0, 0]);
        });
        m.extend_from_slice(&[b'D', 0, 0, 0, 6, b'P', 0]);
        m.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
        m.extend_from_slice(SYNC);
        let r = self.write_all(&m).await;
        self.scratch = m;
        r?;
        self.pending += 1;
        self.count(|s| &s.statements);
        if self.sent_at.is_none() {
            self.sent_at = Some(std::time::Instant::now());
        }
        Ok(())
    }

    fn count(&self, which: impl Fn(&crate::admin::ShardStats) -> &std::sync::atomic::AtomicU64) {
        if let Some(s) = &self.stats {
            which(s).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    async fn read_raw(&mut self) -> Result<Frame, BackendError> {
        let late = std::mem::take(&mut self.late);
        let next = match self.answer_timeout {
            None => self.reader.next(MAX_SERVER_MESSAGE).await,
            Some(t) => match tokio::time::timeout(
                if late { Duration::ZERO } else { t },
                self.reader.next(MAX_SERVER_MESSAGE),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => {
                    // Whatever the server sends later belongs to nobody: never
                    // reuse it. Stop the statement (its locks go with it) and
                    // hang up, so the server ends the session too.
                    self.broken = true;
                    self.spawn_cancel();
                    let _ = self.writer.get_mut().shutdown().await;
                    return Err(BackendError::QueryTimeout {
                        shard: self.shard,
                        ms: t.as_millis() as u64,
                    });
                }
            },
        };
        match next {
            Ok(f) => Ok(f),
            Err(FrameError::Closed) => {
                self.broken = true;
                Err(BackendError::Closed { shard: self.shard })
            }
            Err(FrameError::BadLength(n)) => {
                Err(self.proto(&format!("invalid message length {n}")))
            }
            Err(FrameError::Io(e)) => Err(self.io_err(e)),
        }
    }

    /// Reads the next response message, keeping the owed-response count and
    /// the reported parameters up to date.
    pub async fn read(&mut self) -> Result<Frame, BackendError> {
        let f = match self.read_raw().await {
            Ok(f) => f,
            Err(e) => {
                self.snapshot_hold = None;
                return Err(e);
            }
        };
        if self.fenced_out.load(Ordering::Acquire) {
            // The answer may come from a snapshot the fence did not cover.
            self.broken = true;
            self.snapshot_hold = None;
            return Err(BackendError::FencedOut { shard: self.shard });
        }
        if let Some(h) = &mut self.snapshot_hold {
            if ends_hold(&mut h.skip, h.execute, f.tag) {
                self.snapshot_hold = None;
            }
        }
        match f.tag {
            b'Z' => {
                self.pending = self.pending.saturating_sub(1);
                self.unsynced = false;
                if let (Some(t), Some(s)) = (self.sent_at.take(), &self.stats) {
                    s.latency.observe(t.elapsed());
                }
                self.status = f.body().first().copied().unwrap_or(b'E');
                if self.status == b'I' {
                    // The transaction is over: a verdict on it is spent.
                    // Its cancel may still be on its way, to hit whatever
                    // this backend runs next: never hand it out again.
                    let pending = self.verdict.lock().map(|mut v| v.take().is_some());
                    if std::mem::take(&mut self.victim) || pending.unwrap_or(false) {
                        self.broken = true;
                    }
                }
            }
            b'S' => self.note_parameter(&f),
            // `DISCARD ALL` (sent as written, outside a block) or the
            // server's own `DEALLOCATE ALL`: the statements the proxy
            // prepared here are gone.
            b'C' if f.body().starts_with(b"D") && forgets_statements(f.body()) => {
                self.prepared.clear();
                self.block_statements.clear();
            }
            b'E' => {
                self.count(|s| &s.errors);
                if let Some(instead) = self.verdict_for(&f) {
                    return Ok(instead);
                }
            }
            _ => {}
        }
        Ok(f)
    }

    /// The deadlock detector's error in place of `f`, when `f` is the
    /// "canceling statement" its cancel caused.
    /// Spent once delivered: a later cancel or timeout in the same block is
    /// its own (the connection is still closed when the block ends).
    fn verdict_for(&mut self, f: &Frame) -> Option<Frame> {
        let code = ErrorFields::parse(f.body()).code;
        if code != crate::error::SqlState::QUERY_CANCELED.code() {
            return None;
        }
        let bytes = self.verdict.lock().ok()?.take()?;
        self.victim = true;
        Some(Frame { tag: b'E', bytes })
    }

    /// Runs one statement and collects its responses (for the proxy's own use).
    /// Returns the first error the server reported, if any.
    pub async fn simple(
        &mut self,
        sql: &str,
    ) -> Result<Result<Vec<Frame>, ErrorFields>, BackendError> {
        self.send_query(sql).await?;
        self.flush().await?;
        let mut out = Vec::new();
        let mut err = None;
        loop {
            let f = self.read().await?;
            match f.tag {
                b'Z' => break,
                b'E' => err = Some(ErrorFields::parse(f.body())),
                _ => out.push(f),
            }
        }
        Ok(match err {
            Some(e) => Err(e),
            None => Ok(out),
        })
    }

    /// Idle, owing nothing, not broken: safe to hand to another client.
    pub fn is_reusable(&self) -> bool {
        !self.broken && self.pending == 0 && !self.unsynced && self.status == b'I'
    }

    /// Queues an extended-protocol message (Parse, Bind, Describe, Execute,
    /// Close, Flush); a `Sync` must follow before the connection is reused.
    pub async fn send_extended(&mut self, msg: &[u8]) -> Result<(), BackendError> {
        self.unsynced = true;
        if msg.first() == Some(&b'E') {
            self.count(|s| &s.statements);
        }
        self.write_all(msg).await
    }

    /// Extended messages were sent since the last `Sync`.
    pub fn needs_sync(&self) -> bool {
        self.unsynced
    }

    /// Queues a `Sync`: a `ReadyForQuery` is then owed.
    pub async fn send_sync(&mut self) -> Result<(), BackendError> {
        self.pending += 1;
        self.write_all(&[b'S', 0, 0, 0, 4]).await
    }

    /// Whether the server hung up (or said something unasked, such as
    /// "terminating connection") while the connection sat idle in the pool.
    /// Checked without blocking when a pooled connection is handed out.
    pub fn hung_up(&mut self) -> bool {
        self.has_unread()
    }

    /// Bytes from the server are buffered that nobody asked for (an
    /// unasked message read along with the last answer), judged without
    /// polling the socket.
    pub fn holds_unread(&self) -> bool {
        self.reader.buffered() > 0
    }

    pub fn owes(&self) -> usize {
        self.pending
    }

    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Asks the server to cancel whatever this connection runs (a
    /// `CancelRequest` on a connection of its own), without waiting for it.
    pub fn spawn_cancel(&self) {
        let (endpoint, pid, key) = (self.endpoint.clone(), self.process_id, self.secret_key);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = send_cancel(&endpoint, pid, key).await;
            });
        }
    }

    /// Raw `DataRow` text values of a simple query's result (control queries only).
    pub fn text_values(frames: &[Frame]) -> Vec<Vec<Option<Bytes>>> {
        frames
            .iter()
            .filter(|f| f.tag == b'D')
            .map(|f| {
                let body = f.bytes.slice(5..);
                let mut cols = Vec::new();
                let n = body
                    .get(..2)
                    .map(|b| i16::from_be_bytes([b[0], b[1]]))
                    .unwrap_or(0);
                let mut pos = 2usize;
                for _ in 0..n.max(0) {
                    let Some(lb) = body.get(pos..pos + 4) else {
                        break;
                    };
                    let len = i32::from_be_bytes([lb[0], lb[1], lb[2], lb[3]]);
                    pos += 4;
                    if len < 0 {
                        cols.push(None);
                    } else {
                        let end = pos + len as usize;
                        if end > body.len() {
                            break;
                        }
                        cols.push(Some(body.slice(pos..end)));
                        pos = end;
                    }
                }
                cols
            })
            .collect()
    }
}

/// `CancelRequest` code (PostgreSQL protocol).
const CANCEL_REQUEST: i32 = 80_877_102;

/// How long a cancel request may take to reach a server, TLS included.
const CANCEL_LIMIT: Duration = Duration::from_secs(5);

/// Sends a `CancelRequest` for backend `pid` (whose key is `key`) to the
/// shard at `endpoint`, over TLS when its connections use TLS (the key is a
/// secret too). PostgreSQL answers nothing; it just closes.
pub async fn send_cancel(endpoint: &Endpoint, pid: i32, key: i32) -> Result<(), BackendError> {
    let mut msg = Vec::with_capacity(16);
    msg.extend_from_slice(&16i32.to_be_bytes());
    msg.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    msg.extend_from_slice(&pid.to_be_bytes());
    msg.extend_from_slice(&key.to_be_bytes());
    let send = async {
        let stream = endpoint.open(CANCEL_LIMIT).await?;
        stream
            .send_and_close(&msg)
            .await
            .map_err(|e| BackendError::Io {
                shard: endpoint.shard,
                message: e.to_string(),
            })
    };
    tokio::time::timeout(CANCEL_LIMIT, send)
        .await
        .map_err(|_| BackendError::Connect {
            shard: endpoint.shard,
            message: format!("timed out sending a cancel request to {endpoint}"),
        })?
}

impl ServerConn {
    /// Queues one `CopyData` message (a server in copy-in mode reads it).
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), BackendError> {
        let len = i32::try_from(payload.len() + 4).map_err(|_| self.proto("CopyData too large"))?;
        let mut head = [b'd', 0, 0, 0, 0];
        head[1..].copy_from_slice(&len.to_be_bytes());
        self.write_all(&head).await?;
        self.write_all(payload).await
    }

    /// Queues `CopyDone`: the end of a `COPY FROM STDIN` stream.
    pub async fn send_copy_done(&mut self) -> Result<(), BackendError> {
        self.write_all(&[b'c', 0, 0, 0, 4]).await
    }

    /// Whether the server has sent something not read yet (or closed),
    /// checked without blocking. What arrived stays buffered for the next
    /// read: during COPY IN, an error ends the copy early and the proxy
    /// stops feeding that shard. Bytes on the socket are not enough to
    /// tell, under TLS: only what decrypts to the protocol counts.
    pub fn has_unread(&mut self) -> bool {
        self.reader.buffered() > 0 || !matches!(self.reader.read_ready(), Arrived::Nothing)
    }

    /// Ends a `COPY FROM STDIN` the proxy cannot feed.
    pub async fn send_copy_fail(&mut self, message: &str) -> Result<(), BackendError> {
        let mut buf = BytesMut::new();
        frontend::copy_fail(message, &mut buf).map_err(|e| self.io_err(e))?;
        self.write_all(&buf).await
    }
}
