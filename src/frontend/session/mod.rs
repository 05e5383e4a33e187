//! One client's session: authentication, the message loop, and the
//! transaction state machine that decides what each statement means now.
//!
//! Server connections are pooled per transaction: outside a transaction block
//! a statement borrows a connection per shard and returns it; inside one, the
//! first shard a statement is routed to is enlisted (`BEGIN` and any savepoints
//! replayed in the same write as the statement) and stays pinned until the
//! block ends; at its end the coordinator commits (two-phase when several
//! shards wrote) or rolls back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tracing::{info, warn};

mod block;
mod dispatch;
mod extended;
pub(crate) use extended::fuzz_messages;
mod prepared;

use super::{auth, unknown_database, ClientRead, ClientWrite, Shared, Shutdown};
use crate::backend::{BackendError, PooledConn, ServerConn};
use crate::error::{ClientError, Error, NameError, SqlState, TxnMisuse};
use crate::executor::{self, Collect, ExecError, Merge, Merger, Until};
use crate::protocol::{self, read_frame, FrameError, Severity};
use crate::router::{self, leading_words, Plan, Route, RouteError, SetCommand, ShardId, Writes};
use crate::txn::{CommitOutcome, Participant, Report};

type Io = std::io::Result<()>;

/// The transaction state of a session. Changed only by the transition
/// methods in `impl Session` marked "transition".
enum TxnState {
    /// No transaction block. The session holds no server connection.
    Idle,
    /// Inside a block: explicit (`BEGIN`) or implicit (one statement or query
    /// the proxy runs atomically across shards).
    InTxn(Txn),
    /// An error ended the block's usefulness: everything but `COMMIT`,
    /// `ROLLBACK` and `ROLLBACK TO SAVEPOINT` gets 25P02.
    Failed(Txn),
}

/// A transaction block and the shards enlisted in it.
struct Txn {
    /// The `BEGIN` text sent to each shard as it joins.
    begin: String,
    /// Block-control statements so far (savepoints, `SET LOCAL`, ...),
    /// replayed in order on each shard that joins later.
    prelude: Vec<String>,
    savepoints: Vec<String>,
    participants: Vec<Participant>,
    /// Session settings changed inside the block; they stick only on commit.
    pending: Vec<SettingChange>,
}

impl Txn {
    fn new(begin: &str) -> Txn {
        Txn {
            begin: begin.to_string(),
            prelude: Vec::new(),
            savepoints: Vec::new(),
            participants: Vec::new(),
            pending: Vec::new(),
        }
    }

    fn has(&self, shard: ShardId) -> bool {
        self.participants.iter().any(|p| p.shard() == shard)
    }
}

#[derive(Clone)]
enum SettingChange {
    Set(String, String),
    Reset(String),
    ResetAll,
}

struct Session {
    shared: Arc<Shared>,
    reader: BufReader<ClientRead>,
    out: BufWriter<ClientWrite>,
    peer: SocketAddr,
    user: String,
    /// Settings from the startup packet: what `RESET` returns to.
    startup_settings: BTreeMap<String, String>,
    /// The client's session settings: parameter name -> statement that sets it.
    settings: BTreeMap<String, String>,
    state: TxnState,
    ext: extended::Extended,
    /// Statements made with SQL `PREPARE`.
    sql_prepared: std::collections::HashMap<String, prepared::SqlPrepared>,
    /// While an `EXECUTE` runs: the statement each server connection it
    /// touches must have (its name there, and the `PREPARE` that makes it).
    need_prepared: Option<(String, String)>,
    /// Server connections this client holds, for its cancel requests.
    cancel_targets: super::cancel::Targets,
    process_id: i32,
}

/// A commit's WARNING for the client (the coordinator returns typed
/// outcomes; the session encodes them).
fn commit_notice(n: &crate::txn::Notice) -> bytes::Bytes {
    protocol::error_response(Severity::Warning, n.sqlstate, &n.message, None)
}

/// The ErrorResponse for a commit that did not commit: a shard's own error
/// unchanged, the proxy's, or 08007 when the outcome is unknown.
fn commit_failure(o: &CommitOutcome) -> bytes::Bytes {
    match o {
        CommitOutcome::Aborted {
            error: Report::Server(frame),
        } => frame.bytes.clone(),
        CommitOutcome::Aborted {
            error: Report::Proxy { sqlstate, message },
        } => protocol::error_response(Severity::Error, *sqlstate, message, None),
        CommitOutcome::Unknown { message, .. } => protocol::error_response(
            Severity::Error,
            SqlState::TRANSACTION_RESOLUTION_UNKNOWN,
            message,
            None,
        ),
        CommitOutcome::Committed { .. } => bytes::Bytes::new(),
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(super) async fn run(
    r: ClientRead,
    w: ClientWrite,
    peer: SocketAddr,
    params: Vec<(String, String)>,
    pid: i32,
    shared: Arc<Shared>,
) {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut reader = BufReader::with_capacity(16 * 1024, r);
    let mut out = BufWriter::with_capacity(32 * 1024, w);
    let Some(user) = get("user") else {
        let e = Error::Client(ClientError::Protocol(
            "no PostgreSQL user name specified in startup packet".into(),
        ));
        send_fatal(&mut out, &e).await;
        return;
    };
    let database = get("database").unwrap_or_else(|| user.clone());
    let ucfg = shared
        .config()
        .users
        .iter()
        .find(|u| u.name == user)
        .cloned();
    let limit = Duration::from_millis(shared.config().limits.startup_timeout_ms);
    let authenticated = tokio::time::timeout(
        limit,
        auth::authenticate(&mut reader, &mut out, &user, ucfg.as_ref(), &shared.secrets),
    )
    .await
    .unwrap_or(Err(ClientError::StartupTimeout));
    if let Err(e) = authenticated {
        warn!(%peer, %user, error = %e, "authentication failed");
        send_fatal(&mut out, &Error::Client(e)).await;
        return;
    }
    if database == shared.config().admin_database {
        if !shared.config().admin_users.contains(&user) {
            send_fatal(&mut out, &Error::Client(ClientError::NotAdmin(user))).await;
            return;
        }
        shared.sessions.add(pid, &user, peer);
        info!(%peer, %user, "admin console connected");
        admin_console(reader, out, &shared, pid).await;
        shared.sessions.remove(pid);
        return;
    }
    if database != shared.config().database {
        send_fatal(&mut out, &unknown_database(&database)).await;
        return;
    }
    let mut startup_settings = BTreeMap::new();
    for (k, v) in &params {
        if matches!(k.as_str(), "user" | "database" | "options" | "replication") {
            continue;
        }
        let name = k.to_lowercase();
        startup_settings.insert(
            name,
            format!("SET {} = {}", quote_ident(k), quote_literal(v)),
        );
    }
    let mut s = Session {
        shared,
        reader,
        out,
        peer,
        user,
        settings: startup_settings.clone(),
        startup_settings,
        state: TxnState::Idle,
        ext: Default::default(),
        sql_prepared: Default::default(),
        need_prepared: None,
        cancel_targets: Default::default(),
        process_id: pid,
    };
    if let Err(e) = s.greet(pid).await {
        warn!(%peer, user = %s.user, error = %e, "session setup failed");
        send_fatal(&mut s.out, &e).await;
        return;
    }
    info!(%peer, user = %s.user, "client connected");
    s.shared.sessions.add(pid, &s.user, peer);
    s.serve().await;
    s.cleanup().await;
    s.shared.cancels.unregister(s.process_id);
    s.shared.sessions.remove(pid);
    info!(%peer, user = %s.user, "client disconnected");
}

/// The admin console: `SHOW ...` commands answered by the proxy itself.
async fn admin_console(
    mut reader: BufReader<ClientRead>,
    mut out: BufWriter<ClientWrite>,
    shared: &Shared,
    pid: i32,
) {
    let mut hello = vec![protocol::authentication(0, &[])];
    for (k, v) in [
        ("server_version", "15.0 (Pieskieo admin)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        hello.push(protocol::parameter_status(k, v));
    }
    hello.push(protocol::backend_key_data(pid, 0));
    hello.push(protocol::ready_for_query(b'I'));
    for m in hello {
        if out.write_all(&m).await.is_err() {
            return;
        }
    }
    loop {
        if out.flush().await.is_err() {
            return;
        }
        let f = match read_frame(&mut reader, 1 << 20).await {
            Ok(f) => f,
            Err(_) => return,
        };
        let mut replies = Vec::new();
        match f.tag {
            b'Q' => {
                let text = String::from_utf8_lossy(f.body().strip_suffix(&[0]).unwrap_or(f.body()))
                    .into_owned();
                let stmts = router::split_statements(&text);
                if stmts.is_empty() {
                    replies.push(protocol::empty_query_response());
                }
                for stmt in stmts {
                    let msg = match crate::admin::answer(stmt, shared) {
                        a @ crate::admin::Answer::Rows { .. } => {
                            replies.extend(a.encode());
                            continue;
                        }
                        crate::admin::Answer::Failed(msg) => msg,
                        crate::admin::Answer::Unknown(cmd) => format!(
                            "unknown admin command \"{cmd}\"; try RELOAD or SHOW SHARDS, POOLS, CLIENTS, TRANSACTIONS, STATS, CONFIG, VERSION"
                        ),
                    };
                    let e = Error::Unsupported(msg);
                    replies.push(protocol::error_response(
                        Severity::Error,
                        e.sqlstate(),
                        &e.to_string(),
                        None,
                    ));
                    break;
                }
                replies.push(protocol::ready_for_query(b'I'));
            }
            b'X' => return,
            b'S' => replies.push(protocol::ready_for_query(b'I')),
            _ => {
                let e = Error::Unsupported(
                    "the admin console speaks the simple query protocol only".into(),
                );
                replies.push(protocol::error_response(
                    Severity::Error,
                    e.sqlstate(),
                    &e.to_string(),
                    None,
                ));
            }
        }
        for r in replies {
            if out.write_all(&r).await.is_err() {
                return;
            }
        }
    }
}

async fn send_fatal(out: &mut BufWriter<ClientWrite>, e: &Error) {
    let m = protocol::error_response(Severity::Fatal, e.sqlstate(), &e.to_string(), None);
    let _ = out.write_all(&m).await;
    let _ = out.flush().await;
}

impl Session {
    fn status_byte(&self) -> u8 {
        match self.state {
            TxnState::Idle => b'I',
            TxnState::InTxn(_) => b'T',
            TxnState::Failed(_) => b'E',
        }
    }

    /// Transition: an error inside a block fails it; outside, nothing changes.
    fn fail(&mut self) {
        self.state = match std::mem::replace(&mut self.state, TxnState::Idle) {
            TxnState::InTxn(t) => TxnState::Failed(t),
            other => other,
        };
    }

    /// Transition: after `ROLLBACK TO SAVEPOINT` succeeded, the block is usable again.
    fn recover(&mut self) {
        self.state = match std::mem::replace(&mut self.state, TxnState::Idle) {
            TxnState::Failed(t) => TxnState::InTxn(t),
            other => other,
        };
    }

    /// Transition: the block ends; returns it for the caller to finish.
    fn end_block(&mut self) -> Option<Txn> {
        match std::mem::replace(&mut self.state, TxnState::Idle) {
            TxnState::InTxn(t) | TxnState::Failed(t) => Some(t),
            TxnState::Idle => None,
        }
    }

    fn txn(&mut self) -> Option<&mut Txn> {
        match &mut self.state {
            TxnState::InTxn(t) | TxnState::Failed(t) => Some(t),
            TxnState::Idle => None,
        }
    }

    /// Sends ParameterStatus (mirrored from a shard), BackendKeyData and the
    /// first ReadyForQuery.
    async fn greet(&mut self, pid: i32) -> Result<(), Error> {
        self.write(&protocol::authentication(0, &[])).await?;
        let map = &self.shared.map();
        let order: Vec<ShardId> = std::iter::once(map.default_shard)
            .chain(
                (0..map.shards)
                    .map(ShardId)
                    .filter(|s| *s != map.default_shard),
            )
            .collect();
        let mut last = None;
        let mut params = None;
        for shard in order {
            match self.checkout(shard).await {
                Ok(conn) => {
                    params = Some(conn.params.clone());
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(mut params) = params else {
            return Err(last.unwrap_or_else(|| Error::Unsupported("no shards configured".into())));
        };
        params.insert("session_authorization".into(), self.user.clone());
        params.insert("is_superuser".into(), "off".into());
        for (k, v) in &params {
            self.write(&protocol::parameter_status(k, v)).await?;
        }
        let secret: i32 = rand::random();
        self.cancel_targets = self.shared.cancels.register(pid, secret);
        self.write(&protocol::backend_key_data(pid, secret)).await?;
        self.write(&protocol::ready_for_query(b'I')).await?;
        self.out.flush().await?;
        Ok(())
    }

    async fn write(&mut self, b: &[u8]) -> Io {
        self.out.write_all(b).await
    }

    /// Whether a shutdown in progress closes this session now.
    fn closing(&self, phase: Shutdown) -> bool {
        match phase {
            Shutdown::Running => false,
            Shutdown::Draining => matches!(self.state, TxnState::Idle) && !self.ext.busy(),
            Shutdown::Terminating => true,
        }
    }

    async fn serve(&mut self) {
        let max = self.shared.config().limits.max_message_size;
        let mut shutdown = self.shared.shutdown.clone();
        let mut watching = true;
        loop {
            let phase = *shutdown.borrow();
            if self.closing(phase) {
                info!(peer = %self.peer, user = %self.user, "closing session for shutdown");
                send_fatal(&mut self.out, &Error::Client(ClientError::Shutdown)).await;
                return;
            }
            // A client idle inside a block holds locks on the shards: bounded.
            let idle_limit = match (
                &self.state,
                self.shared.config().limits.idle_in_transaction_timeout_ms,
            ) {
                (TxnState::Idle, _) | (_, 0) => None,
                (_, ms) => Some(Duration::from_millis(ms)),
            };
            let idle = async {
                match idle_limit {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            let read = tokio::select! {
                r = read_frame(&mut self.reader, max) => r,
                changed = shutdown.changed(), if watching => {
                    watching = changed.is_ok();
                    continue;
                }
                _ = idle => {
                    warn!(peer = %self.peer, user = %self.user, "idle-in-transaction timeout");
                    send_fatal(&mut self.out, &Error::Client(ClientError::IdleInTransaction)).await;
                    return;
                }
            };
            let f = match read {
                Ok(f) => f,
                Err(FrameError::Closed) => return,
                Err(FrameError::BadLength(n)) => {
                    let e =
                        Error::Client(ClientError::Protocol(format!("invalid message length {n}")));
                    warn!(peer = %self.peer, error = %e, "protocol violation");
                    send_fatal(&mut self.out, &e).await;
                    return;
                }
                Err(FrameError::Io(_)) => return,
            };
            let r = match f.tag {
                b'Q' => {
                    let body = f.body();
                    let text = body.strip_suffix(&[0]).unwrap_or(body);
                    match std::str::from_utf8(text) {
                        Ok(sql) => {
                            let sql = sql.to_string();
                            self.on_query(&sql).await
                        }
                        Err(_) => {
                            self.error_then_ready(Error::Client(ClientError::InvalidUtf8))
                                .await
                        }
                    }
                }
                b'X' => return,
                b'P' | b'B' | b'D' | b'E' | b'C' | b'F' | b'S' | b'H' => self.on_extended(f).await,
                // CopyData/CopyDone/CopyFail outside COPY are ignored, as PostgreSQL does.
                b'd' | b'c' | b'f' => Ok(()),
                other => {
                    let e = Error::Client(ClientError::Protocol(format!(
                        "invalid frontend message type {}",
                        other
                    )));
                    warn!(peer = %self.peer, error = %e, "protocol violation");
                    send_fatal(&mut self.out, &e).await;
                    return;
                }
            };
            self.refresh_cancel_targets();
            if r.is_err() || self.out.flush().await.is_err() {
                return;
            }
        }
    }

    /// Ends a session: a block still open is rolled back on its shards, so
    /// the connections go back clean (or are closed).
    async fn cleanup(&mut self) {
        if let Some(mut t) = self.end_block() {
            let coord = self.shared.coordinator.clone();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), coord.rollback(&mut t.participants))
                    .await;
        }
    }

    /// Tells the client about an error; a block in progress fails.
    /// Returns `Ok(false)`: the statement did not succeed.
    async fn error(&mut self, e: Error) -> std::io::Result<bool> {
        if let Error::Backend(b) = &e {
            warn!(peer = %self.peer, user = %self.user, error = %b, "shard error");
        }
        let m = protocol::error_response(Severity::Error, e.sqlstate(), &e.to_string(), None);
        self.write(&m).await?;
        self.fail();
        Ok(false)
    }

    async fn error_then_ready(&mut self, e: Error) -> Io {
        self.error(e).await?;
        let rfq = protocol::ready_for_query(self.status_byte());
        self.write(&rfq).await
    }

    async fn on_query(&mut self, sql: &str) -> Io {
        let stmts = router::split_statements(sql);
        if stmts.is_empty() {
            self.write(&protocol::empty_query_response()).await?;
        } else {
            let plans: Vec<Result<Plan, RouteError>> =
                stmts.iter().map(|s| self.shared.plan(s)).collect();
            let write = plans
                .iter()
                .map(|p| match p {
                    Ok(Plan::Forward { write, .. }) => *write,
                    _ => Writes::Yes,
                })
                .fold(Writes::No, |a, b| a | b);
            let controls_block = plans.iter().any(|p| {
                matches!(
                    p,
                    Ok(Plan::Begin
                        | Plan::Commit
                        | Plan::Rollback
                        | Plan::Savepoint(_)
                        | Plan::Release(_)
                        | Plan::RollbackTo(_)
                        | Plan::Set(_))
                )
            });
            match self.common_shard(&plans) {
                // Several statements for one shard go as one Query: the shard
                // gives them PostgreSQL's own implicit-transaction semantics.
                Some(shard) if stmts.len() > 1 => {
                    self.forward_one(shard, sql, write).await?;
                }
                // Several statements over several shards outside a block: one
                // implicit transaction, all or nothing, as PostgreSQL does.
                _ if stmts.len() > 1 && !controls_block && self.txn().is_none() => {
                    self.state = TxnState::InTxn(Txn::new("BEGIN"));
                    let mut ok = true;
                    for (stmt, plan) in stmts.iter().zip(plans) {
                        if !self.execute(stmt, plan).await? {
                            ok = false;
                            break;
                        }
                    }
                    self.finish_implicit(ok, None).await?;
                }
                _ => {
                    for (stmt, plan) in stmts.iter().zip(plans) {
                        if !self.execute(stmt, plan).await? {
                            break;
                        }
                    }
                }
            }
        }
        let rfq = protocol::ready_for_query(self.status_byte());
        self.write(&rfq).await
    }

    /// The one shard every statement of a multi-statement query can run on, if any.
    fn common_shard(&self, plans: &[Result<Plan, RouteError>]) -> Option<ShardId> {
        let mut shard = match &self.state {
            TxnState::Idle => None,
            TxnState::InTxn(t) => match t.participants.as_slice() {
                [] => None,
                [only] => Some(only.shard()),
                _ => return None,
            },
            TxnState::Failed(_) => return None,
        };
        for p in plans {
            match p {
                Ok(Plan::Forward {
                    route: Route::One(s),
                    ..
                }) => {
                    if shard.is_some_and(|x| x != *s) {
                        return None;
                    }
                    shard = Some(*s);
                }
                Ok(Plan::Forward {
                    route: Route::Any, ..
                }) => {}
                _ => return None,
            }
        }
        Some(shard.unwrap_or(self.shared.map().default_shard))
    }

    /// Runs one statement. `Ok(false)`: it failed (the client has been told).
    async fn execute(
        &mut self,
        stmt: &str,
        plan: Result<Plan, RouteError>,
    ) -> std::io::Result<bool> {
        let plan = match plan {
            Ok(p) => p,
            Err(e) => return self.error(Error::Route(e)).await,
        };
        if matches!(self.state, TxnState::Failed(_))
            && !matches!(plan, Plan::Commit | Plan::Rollback | Plan::RollbackTo(_))
        {
            return self.error(Error::Txn(TxnMisuse::Aborted)).await;
        }
        match plan {
            Plan::Forward { route, write } => self.forward(stmt, route, write).await,
            Plan::Merge { route, plan } => self.merge_across(route, plan).await,
            Plan::Split { parts } => {
                let targets: Vec<(ShardId, &str)> =
                    parts.iter().map(|p| (p.shard, p.sql.as_str())).collect();
                self.write_across(&targets, Merge::Union, Writes::Yes).await
            }
            Plan::Replicate => {
                let targets: Vec<(ShardId, &str)> = (0..self.shared.map().shards)
                    .map(|s| (ShardId(s), stmt))
                    .collect();
                self.write_across(&targets, Merge::Copies, Writes::Yes)
                    .await
            }
            Plan::Begin => self.begin(stmt).await,
            Plan::Commit => self.commit(stmt).await,
            Plan::Rollback => self.rollback(stmt).await,
            Plan::Savepoint(name) => self.savepoint(stmt, name).await,
            Plan::Release(name) => self.release(stmt, name).await,
            Plan::RollbackTo(name) => self.rollback_to(stmt, name).await,
            Plan::Set(cmd) => self.set(stmt, cmd).await,
            Plan::Prepare { name, types, body } => self.sql_prepare(name, types, body).await,
            Plan::Execute { name, args } => self.sql_execute(name, args).await,
            Plan::Deallocate(name) => self.sql_deallocate(name).await,
            Plan::Preview(inner) => match router::preview(&inner, &self.shared.map()) {
                Ok(rows) => {
                    let answer = crate::admin::Answer::Rows {
                        columns: router::PREVIEW_COLUMNS.to_vec(),
                        rows,
                    };
                    for m in answer.encode_tagged("SELECT") {
                        self.write(&m).await?;
                    }
                    Ok(true)
                }
                Err(e) => self.error(Error::Route(e)).await,
            },
        }
    }
}

/// Makes a connection's settings equal the client's: `SET` what differs,
/// `RESET` what the client does not have. One round trip, only when needed.
async fn sync_settings(
    conn: &mut ServerConn,
    want: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let mut batch = Vec::new();
    for (name, stmt) in want {
        if conn.applied.get(name) != Some(stmt) {
            batch.push(stmt.clone());
        }
    }
    for name in conn.applied.keys() {
        if !want.contains_key(name) {
            batch.push(format!("RESET {}", quote_ident(name)));
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    match conn.simple(&batch.join("; ")).await? {
        Ok(_) => {
            conn.applied = want.clone();
            Ok(())
        }
        Err(e) => {
            conn.mark_broken();
            Err(Error::Backend(BackendError::Protocol {
                shard: conn.shard,
                message: format!(
                    "applying the client's session settings failed: {}",
                    e.message
                ),
            }))
        }
    }
}
