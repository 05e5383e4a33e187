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
mod consistent;
mod console;
mod copy;
mod copy_feed;
mod copy_keys;
mod copy_out;
mod copy_source;
mod copy_stream;
mod dispatch;
mod extended;
mod keys;
mod state;
pub(crate) use extended::fuzz_messages;
mod prepared;
mod reader;
pub(crate) use reader::ticks;
mod block_data;
mod settings;
mod staged;
mod startup;

use crate::backend::{BackendError, PooledConn, ServerConn};
use crate::error::{ClientError, Error, NameError, TxnMisuse};
use crate::executor::{self, Answer, Collect, ExecError, Merge, Merger, Until};
use crate::frontend::{auth, unknown_database, ClientRead, ClientWrite, Shared, Shutdown};
use crate::protocol::{self, read_frame, Frame, FrameError, Severity};
use crate::router::{self, leading_words, Plan, Route, RouteError, SetCommand, ShardId, Writes};
use crate::txn::{CommitOutcome, Participant};
use block_data::{commit_failure, commit_notice, BlockEnd, Txn};
use console::admin_console;
use settings::{learn_settings, quote_ident, quote_literal, sync_settings, SettingChange};
pub(crate) use startup::run;
use state::{Block, Event, Step};

type Io = std::io::Result<()>;

/// Whether the session goes on after a client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    /// The client said goodbye, broke the protocol or cannot be written to.
    End,
}

struct Session {
    shared: Arc<Shared>,
    /// The client's messages (`reader.rs`), once authentication is done
    /// (COPY IN reads its data from here while its statement runs).
    frames: Option<reader::Frames>,
    /// A second handle on the client's socket, watched for end of file
    /// while a statement runs (`reader::vanished`).
    watch: Option<tokio::net::TcpStream>,
    out: BufWriter<ClientWrite>,
    peer: SocketAddr,
    user: String,
    /// Settings from the startup packet: what `RESET` returns to.
    startup_settings: BTreeMap<String, String>,
    /// The client's session settings: parameter name -> statement that sets it.
    settings: BTreeMap<String, String>,
    /// The block state; `txn` holds the block's data exactly when
    /// `block.in_block()`. Both change only in `transition`.
    block: Block,
    txn: Option<Txn>,
    /// Implicit blocks an error ended, still to be rolled back on their
    /// shards (at once, by `reap`, after the failing message).
    doomed: Vec<Txn>,
    /// The closing message of the last statement of an implicit block
    /// waits for its commit, as PostgreSQL reports end-of-transaction
    /// errors before the last CommandComplete.
    hold_last: bool,
    held: Option<bytes::Bytes>,
    /// The query being run may change session settings unseen
    /// (`router::may_change_settings`).
    risky: bool,
    /// Inside a block, the shard where such a statement ran: the client's
    /// settings are read back from it if the block commits.
    learn_from: Option<ShardId>,
    /// Set by the transition that ends such a block with a commit.
    learn_at_commit: Option<ShardId>,
    ext: extended::Extended,
    /// Statements made with SQL `PREPARE`.
    sql_prepared: std::collections::HashMap<String, prepared::SqlPrepared>,
    /// While an `EXECUTE` runs: the statement each server connection it
    /// touches must have (its name there, and the `PREPARE` that makes it).
    need_prepared: Option<(String, String)>,
    /// A Bind's stages are running (extended protocol): inside a block they
    /// read with extended-protocol messages, not simple queries, which would
    /// drop the client's unnamed portal on those connections.
    ext_stages: bool,
    /// Server connections this client holds, for its cancel requests.
    cancel_targets: crate::frontend::cancel::Targets,
    /// The client's cancel requests, for waits in the proxy itself.
    cancel_signal: Arc<crate::frontend::cancel::CancelSignal>,
    /// The cancel count when the client's last message was read: a cancel
    /// counts from then on (one sent while the session was idle does nothing).
    cancel_seen: u64,
    /// Clean connections kept while the client is idle, one per shard
    /// (`backend::Kept`: a client waiting for a connection takes them).
    kept: Arc<crate::backend::Kept>,
    process_id: i32,
}

async fn send_fatal(out: &mut BufWriter<ClientWrite>, e: &Error) {
    if let Error::Client(ClientError::Dropped(_)) = e {
        return;
    }
    let m = protocol::error_response(Severity::Fatal, e.sqlstate(), &e.to_string(), None);
    let _ = out.write_all(&m).await;
    let _ = out.flush().await;
}

impl Session {
    fn status_byte(&self) -> u8 {
        self.block.status()
    }

    /// The one transition: feeds `ev` to the state machine, keeps the
    /// block's data in step, and returns what to do with a block that just
    /// ended (its shards must be committed or rolled back by the caller).
    /// `begin`: the client's `BEGIN` text, for shards that join later.
    fn transition(&mut self, ev: Event, begin: Option<&str>) -> (Step, Option<Txn>) {
        let (next, step) = self.block.on(ev);
        let ended = if self.block.in_block() && !next.in_block() {
            self.txn.take()
        } else {
            None
        };
        let learn_from = if ended.is_some() {
            // The end of a transaction drops its portals, as in PostgreSQL,
            // and its snapshot: the next statement starts afresh.
            self.ext.drop_portals();
            self.ext.new_transaction();
            self.learn_from.take()
        } else {
            None
        };
        if let (Some(s), Step::Commit { .. }) = (learn_from, &step) {
            self.learn_at_commit = Some(s);
        }
        if next.in_block() && self.txn.is_none() {
            let mut t = Txn::new(begin.unwrap_or("BEGIN"));
            // A Parse earlier in the segment took the transaction's snapshot.
            t.snapshot = self.ext.took_snapshot();
            self.txn = Some(t);
        } else if let (Step::Open, Some(t)) = (&step, self.txn.as_mut()) {
            // An explicit block now: no longer the segment's implicit one.
            t.segment = false;
            if let Some(b) = begin {
                t.begin = b.to_string();
            }
        }
        self.block = next;
        (step, ended)
    }

    /// A statement failed: an explicit block fails; an implicit one is over
    /// and its shards are rolled back by `reap`; a segment on one shard's
    /// own transaction is rolled back at Sync.
    fn fail(&mut self) {
        if !self.block.in_block() && self.ext.segment().is_some() {
            self.ext.abort_segment();
        }
        let (_, ended) = self.transition(Event::Error, None);
        if let Some(t) = ended {
            self.doomed.push(t);
        }
    }

    /// Rolls back the shards of implicit blocks an error ended.
    async fn reap(&mut self) {
        let coord = self.shared.coordinator.clone();
        for mut t in std::mem::take(&mut self.doomed) {
            extended::sync_all(&mut t.participants).await;
            coord.rollback(&mut t.participants).await;
        }
    }

    /// After `ROLLBACK TO SAVEPOINT` succeeded, the block is usable again.
    fn recover(&mut self) {
        self.block = self.block.recovered();
    }

    fn txn(&mut self) -> Option<&mut Txn> {
        self.txn.as_mut()
    }

    /// Sends the closing message of a statement, or keeps it while the
    /// implicit block it ends has not committed yet.
    async fn close_statement(&mut self, last: Option<bytes::Bytes>) -> Io {
        match last {
            Some(b) if self.hold_last && self.block == Block::Implicit => {
                self.held = Some(b);
                Ok(())
            }
            Some(b) => self.write(&b).await,
            None => Ok(()),
        }
    }

    async fn write(&mut self, b: &[u8]) -> Io {
        self.out.write_all(b).await
    }

    /// Whether a shutdown in progress closes this session now.
    fn closing(&self, phase: Shutdown) -> bool {
        match phase {
            Shutdown::Running => false,
            Shutdown::Draining => !self.block.in_block() && !self.ext.busy(),
            Shutdown::Terminating => true,
        }
    }

    async fn serve(&mut self) {
        let watch = self.watch.take();
        let ticks = self.shared.ticks.clone();
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
                self.block.in_block(),
                self.shared.config().limits.idle_in_transaction_timeout_ms,
            ) {
                (false, _) | (_, 0) => None,
                (_, ms) => Some(Duration::from_millis(ms)),
            };
            let idle = async {
                match idle_limit {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            // Reading is cancel-safe: a message half read when another
            // branch wins stays buffered for the next turn.
            // Biased: the branches are tried in order (no random draw per
            // message); a shutdown or an idle timeout waits for no message.
            let read = tokio::select! {
                biased;
                r = reader::next(&mut self.frames) => r,
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
            self.cancel_seen = self.cancel_signal.count();
            // While the shards work, the client may vanish: then what runs
            // for it is dropped (its connections cancel and close) and the
            // block rolls back in `cleanup`.
            let quiet = self.frames.as_ref().is_some_and(|f| f.quiet());
            let flow = tokio::select! {
                biased;
                flow = self.handle(f) => flow,
                _ = reader::vanished(watch.as_ref(), quiet, &ticks) => {
                    warn!(peer = %self.peer, user = %self.user, "client vanished while its statement ran: cancelled");
                    return;
                }
            };
            self.refresh_cancel_targets();
            if flow == Flow::End || self.out.flush().await.is_err() {
                return;
            }
        }
    }

    /// One client message.
    async fn handle(&mut self, f: Frame) -> Flow {
        let r = match f.tag {
            b'Q' => {
                let body = f.body();
                let text = body.strip_suffix(&[0]).unwrap_or(body);
                match std::str::from_utf8(text) {
                    Ok(sql) => {
                        // Read in place (the frame is a view of the read
                        // buffer), not copied out first.
                        self.risky = router::may_change_settings(sql);
                        let r = self.on_query(sql).await;
                        self.risky = false;
                        r
                    }
                    Err(_) => {
                        self.error_then_ready(Error::Client(ClientError::InvalidUtf8))
                            .await
                    }
                }
            }
            b'X' => return Flow::End,
            b'P' | b'B' | b'D' | b'E' | b'C' | b'F' | b'S' | b'H' => self.on_extended(f).await,
            // Behind extended-protocol messages still to run, they may be
            // the data of a COPY FROM STDIN those start: they wait with them.
            b'd' | b'c' | b'f' if self.ext.gathering() => self.on_extended(f).await,
            // CopyData/CopyDone/CopyFail outside COPY are ignored, as PostgreSQL does.
            b'd' | b'c' | b'f' => Ok(()),
            other => {
                let e = Error::Client(ClientError::Protocol(format!(
                    "invalid frontend message type {}",
                    other
                )));
                warn!(peer = %self.peer, error = %e, "protocol violation");
                send_fatal(&mut self.out, &e).await;
                return Flow::End;
            }
        };
        match r {
            Ok(()) => Flow::Go,
            Err(_) => Flow::End,
        }
    }

    /// Ends a session: a block still open is rolled back on its shards, so
    /// the connections go back clean (or are closed).
    async fn cleanup(&mut self) {
        if let Some(t) = self.txn.take() {
            self.block = Block::Default;
            self.doomed.push(t);
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.reap()).await;
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
        self.write(rfq).await
    }

    /// A simple query. Several statements are one implicit block, as in
    /// PostgreSQL: `BEGIN` inside turns it into an explicit block that keeps
    /// what ran, `COMMIT`/`ROLLBACK` end it there, an error skips the rest
    /// and rolls back what the block ran on every shard.
    async fn on_query(&mut self, sql: &str) -> Io {
        let stmts = router::split_statements(sql);
        if stmts.is_empty() {
            self.write(&protocol::empty_query_response()).await?;
        } else {
            // One statement may run on its shard as a prepared statement.
            let mut prepare = None;
            let plans: Vec<Result<Plan, RouteError>> = match stmts.as_slice() {
                [one] if self.may_prepare(one) => {
                    let (plan, p) = self.shared.plan_simple(one);
                    prepare = p;
                    vec![plan]
                }
                _ => stmts.iter().map(|s| self.shared.plan(s)).collect(),
            };
            let write = plans
                .iter()
                .map(|p| match p {
                    Ok(Plan::Forward { write, .. }) => *write,
                    _ => Writes::Yes,
                })
                .fold(Writes::No, |a, b| a | b);
            match self.common_shard(&plans) {
                // Several statements for one shard go as one Query: the shard
                // gives them PostgreSQL's own implicit-transaction semantics.
                Some(shard) if stmts.len() > 1 => {
                    self.forward_one(shard, sql, write).await?;
                }
                _ => {
                    let several = stmts.len() > 1;
                    let last = stmts.len() - 1;
                    for (i, (stmt, plan)) in stmts.iter().zip(plans).enumerate() {
                        if several {
                            // Again after a COMMIT or ROLLBACK inside the query.
                            self.transition(Event::StartImplicit, None);
                        }
                        self.hold_last = several && i == last;
                        let ok = match (prepare.take(), plan) {
                            (
                                Some(p),
                                Ok(Plan::Forward {
                                    route: Route::One(shard),
                                    write,
                                }),
                            ) => self.execute_prepared(stmt, shard, write, p).await?,
                            (_, plan) => self.execute(stmt, plan).await?,
                        };
                        self.hold_last = false;
                        if !ok {
                            break;
                        }
                    }
                    self.reap().await;
                    self.end_implicit().await?;
                }
            }
        }
        let rfq = protocol::ready_for_query(self.status_byte());
        self.write(rfq).await
    }

    /// The end of a query or segment: an implicit block still open commits
    /// (the held closing message follows the commit, or the error replaces
    /// it). `Ok(false)`: the commit failed and the client was told.
    async fn end_implicit(&mut self) -> std::io::Result<bool> {
        let held = self.held.take();
        let (step, ended) = self.transition(Event::End, None);
        let (Step::Commit { .. }, Some(mut t)) = (step, ended) else {
            if let Some(b) = held {
                self.write(&b).await?;
            }
            return Ok(true);
        };
        extended::sync_all(&mut t.participants).await;
        match self.commit_block(&mut t).await? {
            BlockEnd::Committed => {
                if let Some(b) = held {
                    self.write(&b).await?;
                }
                Ok(true)
            }
            BlockEnd::RolledBack | BlockEnd::Refused => Ok(false),
        }
    }

    /// Commits the shards of a block that ended, through the coordinator
    /// (or rolls it back when a shard failed it unseen). Committed: the
    /// block's settings become the client's. Refused: the client has the
    /// coordinator's error.
    async fn commit_block(&mut self, t: &mut Txn) -> std::io::Result<BlockEnd> {
        let coord = self.shared.coordinator.clone();
        if t.participants.iter().any(|p| p.conn.status == b'E') {
            coord.rollback(&mut t.participants).await;
            return Ok(BlockEnd::RolledBack);
        }
        match coord.commit(&mut t.participants).await {
            CommitOutcome::Committed { warnings } => {
                for w in warnings {
                    self.write(&commit_notice(&w)).await?;
                }
                let pending = std::mem::take(&mut t.pending);
                self.apply_changes(&pending, &mut t.participants);
                self.learn_after_commit(&mut t.participants).await;
                Ok(BlockEnd::Committed)
            }
            failed => {
                t.forget_settings();
                self.write(&commit_failure(&failed)).await?;
                Ok(BlockEnd::Refused)
            }
        }
    }

    /// The one shard every statement of a multi-statement query can run on, if any.
    fn common_shard(&self, plans: &[Result<Plan, RouteError>]) -> Option<ShardId> {
        let mut shard = match (self.block, &self.txn) {
            (Block::Default, _) => None,
            (Block::Implicit | Block::InProgress, Some(t)) => match t.participants.as_slice() {
                [] => None,
                [only] => Some(only.shard()),
                _ => return None,
            },
            _ => return None,
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
        if !plan.is_block_control() {
            if let (Step::Refuse(e), _) = self.transition(Event::Statement, None) {
                return self.error(Error::Txn(e)).await;
            }
        }
        self.run_plan(stmt, plan).await
    }

    /// Carries out a statement's plan (its block transition made).
    async fn run_plan(&mut self, stmt: &str, plan: Plan) -> std::io::Result<bool> {
        match plan {
            Plan::Forward { route, write } => self.forward(stmt, route, write).await,
            Plan::Merge { route, plan } => self.merge_across(route, plan).await,
            Plan::Split { parts } => self.split_in_order(&parts).await,
            Plan::Replicate => {
                let targets: Vec<(ShardId, &str)> = (0..self.shared.map().shards)
                    .map(|s| (ShardId(s), stmt))
                    .collect();
                self.write_across(&targets, Merge::Copies, Writes::Yes)
                    .await
            }
            Plan::CopyIn(copy) => self.copy_in(stmt, copy).await,
            Plan::CopyOut(copy) => self.copy_out(stmt, copy).await,
            Plan::InsertSelect {
                into,
                select,
                source,
                reads_tables,
            } => {
                let wrote = self
                    .txn()
                    .is_some_and(|t| t.participants.iter().any(|p| p.wrote.may()));
                if reads_tables && wrote {
                    // Its SELECT runs outside the block: it would not see
                    // what the block wrote, so it is refused, not answered
                    // wrongly.
                    return self
                        .error(Error::Unsupported(
                            "INSERT INTO a sharded table ... SELECT from tables, in a transaction block that has written, is not supported by Pieskieo: its SELECT runs outside the block and would not see the block's writes; run it before the block writes, or outside the block".into(),
                        ))
                        .await;
                }
                self.insert_select(stmt, into, select, source).await
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
            Plan::NeedKeys(req) => self.insert_with_keys(stmt, req).await,
            Plan::NeedColumns(req) => {
                let Some((text, plan)) = self.listing_columns(stmt, &req).await? else {
                    return Ok(false);
                };
                match plan {
                    Ok(Plan::NeedColumns(_)) => {
                        self.error(Error::Unsupported(
                            "this INSERT without a column list could not be planned; name its columns".into(),
                        ))
                        .await
                    }
                    Ok(plan) => Box::pin(self.run_plan(&text, plan)).await,
                    Err(e) => self.error(Error::Route(e)).await,
                }
            }
            Plan::Staged(staged) => self.run_staged(staged).await,
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
