//! Client side: accepting connections, startup and authentication, and the
//! per-client session.

pub mod auth;
pub(crate) mod cancel;
mod passthrough;
mod startup;
pub mod tls;

pub(crate) use crate::session::fuzz_messages;

/// Reads a startup packet from `data` as a client would send it (fuzzing).
pub(crate) async fn fuzz_startup(data: &[u8], tls: bool) {
    let mut stream = tokio::io::join(data, tokio::io::sink());
    let _ = startup::read_startup(&mut stream, tls, Default::default()).await;
}

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin::Stats;
use crate::backend::Pools;
use crate::config::Config;
use crate::error::{ClientError, Error};
use crate::protocol::{error_response, Severity};
use crate::router::{PlanCache, ShardMap};
use crate::txn::{Control, Coordinator, Resolver, StartupError};

/// What every session shares: the configuration snapshot, the shard map and
/// the pools. Passed as a handle, never global.
pub struct Shared {
    /// The configuration in force and what is derived from it; swapped whole
    /// by a reload, so no plan or TLS setting outlives its configuration.
    current: std::sync::RwLock<Arc<Snapshot>>,
    pub pools: Pools,
    pub coordinator: Arc<Coordinator>,
    /// The shards' collations, which decide whether merged sorts of text are exact.
    pub collations: Arc<crate::merge::Collations>,
    next_pid: AtomicI32,
    pub clients: AtomicUsize,
    pub cancels: cancel::CancelRegistry,
    pub stats: Arc<Stats>,
    pub sessions: SessionRegistry,
    pub secrets: auth::SecretCache,
    /// Shutdown progress, watched by every session.
    pub shutdown: watch::Receiver<Shutdown>,
    /// The clock of the sessions' watch on their clients (`session::reader`).
    pub ticks: Arc<tokio::sync::Notify>,
}

/// A configuration and what is derived from it once, not per client.
struct Snapshot {
    config: Arc<Config>,
    map: Arc<ShardMap>,
    /// Plans made under `map`, by SQL text.
    plans: PlanCache,
    /// Built from `config.tls`; `None` when TLS is off.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Built from `config.auth_query`; `None` when passthrough is off.
    lookup: Option<Arc<passthrough::PasswordLookup>>,
}

impl Snapshot {
    /// `previous`'s password lookup is kept when its settings are the same.
    fn new(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, String> {
        let tls = config
            .tls
            .as_ref()
            .map(tls::acceptor)
            .transpose()
            .map_err(|e| format!("tls: {e}"))?;
        let lookup =
            passthrough::PasswordLookup::new(&config, previous.and_then(|p| p.lookup.as_ref()))?;
        warn_exposed_trust(&config);
        Ok(Snapshot {
            lookup,
            map: Arc::new(ShardMap::from_config(&config)),
            config: Arc::new(config),
            plans: PlanCache::new(PLAN_CACHE_SIZE),
            tls,
        })
    }
}

impl Shared {
    fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.snapshot().config.clone()
    }

    /// The password lookup in force, when `[auth_query]` is configured.
    pub(crate) fn password_lookup(&self) -> Option<Arc<passthrough::PasswordLookup>> {
        self.snapshot().lookup.clone()
    }

    /// The shard map in force.
    pub fn map(&self) -> Arc<ShardMap> {
        self.snapshot().map.clone()
    }

    /// The plan of a simple-query statement under the map in force.
    pub fn plan(&self, sql: &str) -> Result<crate::router::Plan, crate::router::RouteError> {
        let snap = self.snapshot();
        snap.plans.plan(sql, &snap.map)
    }

    /// The plan of a simple query's only statement, and the prepared
    /// statement a shard may run in its place (`prepare_simple_queries`).
    pub fn plan_simple(
        &self,
        sql: &str,
    ) -> (
        Result<crate::router::Plan, crate::router::RouteError>,
        Option<crate::router::Prepare>,
    ) {
        let snap = self.snapshot();
        let (plan, prepare) = snap.plans.plan_simple(sql, &snap.map);
        (plan, prepare.filter(|_| snap.config.prepare_simple_queries))
    }

    /// Plans a statement with bound parameters: without parameters from the
    /// plan cache, with them through the keyed plan when one key value
    /// routes it, else in full.
    pub fn plan_bound(
        &self,
        sql: &str,
        params: &[crate::router::Bound],
    ) -> Result<crate::router::Plan, crate::router::RouteError> {
        let snap = self.snapshot();
        if params.is_empty() {
            return snap.plans.plan(sql, &snap.map);
        }
        if let Some(p) = snap
            .plans
            .keyed(sql, &snap.map)
            .and_then(|k| k.plan(params, &snap.map))
        {
            return Ok(p);
        }
        crate::router::plan_bound(sql, &snap.map, params)
    }

    /// Re-reads the configuration file and swaps it in, if that changes
    /// nothing that needs a restart or would move existing rows. Returns
    /// what changed, or why the reload was refused (the old one stays).
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let old = self.config();
        let path = old
            .source
            .clone()
            .ok_or("this proxy was not started from a configuration file")?;
        let new = Config::load(&path).map_err(|e| e.to_string())?;
        let changes = crate::config::reload_changes(&old, &new)?;
        for s in &new.shards {
            let was = old
                .shards
                .iter()
                .find(|o| o.id == s.id)
                .map(|o| o.pool_size);
            if was != Some(s.pool_size) {
                self.pools.resize(crate::router::ShardId(s.id), s.pool_size);
            }
        }
        let next = Arc::new(Snapshot::new(new, Some(&self.snapshot()))?);
        match self.current.write() {
            Ok(mut c) => *c = next,
            Err(p) => *p.into_inner() = next,
        }
        for c in &changes {
            info!(change = %c, "configuration reloaded");
        }
        Ok(changes)
    }
}

/// Logs a warning when `trust` users can log in from other hosts (at
/// startup and at every reload, so the warning stays in view).
fn warn_exposed_trust(config: &Config) {
    if let Some(users) = config.exposed_trust_users() {
        warn!(
            listen = %config.listen,
            users = %users.join(","),
            "trust users log in without a password and the listen address is not loopback: anyone who can reach it can log in as them"
        );
    }
}

/// Distinct statement texts whose plans are kept.
const PLAN_CACHE_SIZE: usize = 10_000;

/// The clients connected now, for `SHOW CLIENTS`.
#[derive(Default)]
pub struct SessionRegistry {
    clients: std::sync::Mutex<std::collections::BTreeMap<i32, (String, String)>>,
}

impl SessionRegistry {
    pub fn add(&self, pid: i32, user: &str, peer: SocketAddr) {
        if let Ok(mut m) = self.clients.lock() {
            m.insert(pid, (user.to_string(), peer.to_string()));
        }
    }

    pub fn remove(&self, pid: i32) {
        if let Ok(mut m) = self.clients.lock() {
            m.remove(&pid);
        }
    }

    /// (process id, user, address) of every client.
    pub fn list(&self) -> Vec<(i32, String, String)> {
        self.clients
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(p, (u, a))| (*p, u.clone(), a.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// How far a shutdown has gone. Sessions close at their next quiet moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shutdown {
    Running,
    /// Sessions outside a transaction block close; blocks may finish.
    Draining,
    /// Blocks still open are rolled back; everyone closes.
    Terminating,
}

/// A running proxy: its address, and the handle that stops it.
pub struct Proxy {
    pub addr: SocketAddr,
    /// Where the metrics endpoint listens, when configured.
    pub metrics_addr: Option<SocketAddr>,
    pub coordinator: Arc<Coordinator>,
    stop: watch::Sender<bool>,
    phase: watch::Sender<Shutdown>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    resolver: JoinHandle<()>,
    /// The deadlock detector, when on.
    deadlocks: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Stops accepting clients and ends the accept loop.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.resolver.abort();
        if let Some(d) = &self.deadlocks {
            d.abort();
        }
    }

    /// Reloads the configuration file (what SIGHUP and the admin `RELOAD` do).
    pub fn reload(&self) -> Result<Vec<String>, String> {
        self.shared.reload()
    }

    /// A handle for reloading from another task.
    pub fn reloader(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Graceful shutdown: stop accepting; close idle sessions; let open
    /// transaction blocks finish for up to `grace`, then roll back those
    /// that have not reached their commit decision (a commit already past
    /// its decision always completes first). Returns when every session is
    /// gone (or after a further `grace`).
    pub async fn shutdown(mut self, grace: std::time::Duration) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
        info!(
            clients = self.shared.clients.load(Ordering::Relaxed),
            "shutting down: draining sessions"
        );
        let _ = self.phase.send(Shutdown::Draining);
        self.wait_for_sessions(grace).await;
        let _ = self.phase.send(Shutdown::Terminating);
        self.wait_for_sessions(grace).await;
        self.resolver.abort();
        if let Some(d) = &self.deadlocks {
            d.abort();
        }
        info!("shutdown complete");
    }

    async fn wait_for_sessions(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.shared.clients.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Checks the shards, creates the decision schema and recovers in-doubt
/// transactions (any proxy's), then binds the configured address and serves
/// clients until stopped. Nothing is read from or written to the local disk.
pub async fn serve(config: Config) -> Result<Proxy, StartupError> {
    let snapshot = Snapshot::new(config.clone(), None).map_err(StartupError::Frontend)?;
    let failpoint = config
        .txn
        .test_failpoint
        .as_deref()
        .and_then(crate::txn::parse_failpoint);
    let stats = Arc::new(Stats::new(config.shards.len()));
    // Each shard's address and TLS, made once: both planes use them.
    let endpoints = crate::backend::Endpoint::all(&config).map_err(StartupError::Frontend)?;
    let control = Arc::new(Control::new(&config, &endpoints).map_err(StartupError::Control)?);
    let fence = crate::txn::fence::Fence::for_config(&config, &endpoints, control.clone())
        .map_err(StartupError::Control)?;
    let coordinator = Arc::new(
        Coordinator::new(
            &config.cluster,
            config.node_id.as_deref().unwrap_or_default(),
            control,
            std::time::Duration::from_millis(config.txn.commit_deadline_ms),
            failpoint,
            stats.clone(),
        )
        .with_fence(fence),
    );
    let collations = Arc::new(crate::merge::Collations::default());
    let resolver = Resolver::new(&config, coordinator.clone(), collations.clone());
    resolver.startup().await?;
    let resolver = resolver.spawn_periodic(std::time::Duration::from_millis(
        config.txn.recovery_interval_ms,
    ));
    let listener =
        TcpListener::bind(&config.listen)
            .await
            .map_err(|source| StartupError::Listen {
                addr: config.listen.clone(),
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartupError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
    let (phase, shutdown) = watch::channel(Shutdown::Running);
    let pools = Pools::new(&config, &endpoints, &stats);
    let deadlocks =
        crate::txn::deadlock::Detector::new(&config, &endpoints, pools.backends(), stats.clone())
            .map(|d| d.spawn());
    let shared = Arc::new(Shared {
        shutdown,
        current: std::sync::RwLock::new(Arc::new(snapshot)),
        pools,
        stats,
        sessions: Default::default(),
        secrets: Default::default(),
        coordinator,
        collations,
        next_pid: AtomicI32::new(1),
        clients: AtomicUsize::new(0),
        cancels: Default::default(),
        ticks: crate::session::ticks(),
    });
    let (stop, mut stopped) = watch::channel(false);
    info!(%addr, shards = shared.pools.len(), "pieskieo listening");
    let metrics_addr = match &shared.config().metrics_listen {
        Some(m) => Some(
            crate::admin::serve_metrics(m, shared.clone())
                .await
                .map_err(|source| StartupError::Listen {
                    addr: m.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let coordinator = shared.coordinator.clone();
    let handle = shared.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, peer)) => {
                        let shared = shared.clone();
                        tokio::spawn(async move { handle_client(stream, peer, shared).await });
                    }
                    Err(e) => warn!(error = %e, "accept failed"),
                },
                _ = stopped.changed() => break,
            }
        }
    });
    Ok(Proxy {
        addr,
        metrics_addr,
        coordinator,
        stop,
        phase,
        shared: handle,
        task,
        resolver,
        deadlocks,
    })
}

/// A client's byte stream, plain or TLS, in two halves.
pub(crate) type ClientRead = Box<dyn AsyncRead + Unpin + Send + Sync>;
pub(crate) type ClientWrite = Box<dyn AsyncWrite + Unpin + Send + Sync>;

/// Reads the startup packet, doing the TLS handshake first when the client
/// asks for it and TLS is configured.
async fn negotiate(
    stream: TcpStream,
    shared: &Shared,
) -> (
    ClientRead,
    ClientWrite,
    Result<startup::Startup, ClientError>,
) {
    let snap = shared.snapshot();
    let acceptor = snap.tls.clone();
    let mut stream = stream;
    match startup::read_startup(&mut stream, acceptor.is_some(), Default::default()).await {
        Ok(startup::Startup::Tls) => {
            let Some(acceptor) = acceptor else {
                let (r, w) = stream.into_split();
                return (
                    Box::new(r),
                    Box::new(w),
                    Err(ClientError::Protocol("TLS not available".into())),
                );
            };
            match acceptor.accept(stream).await {
                Ok(mut tls) => {
                    let r =
                        startup::read_startup(&mut tls, false, startup::Negotiated::encrypted())
                            .await;
                    let (rd, wr) = tokio::io::split(tls);
                    (Box::new(rd), Box::new(wr), r)
                }
                // The stream is gone with the failed handshake: nothing to tell.
                Err(e) => (
                    Box::new(tokio::io::empty()),
                    Box::new(tokio::io::sink()),
                    Err(ClientError::Protocol(format!("TLS handshake failed: {e}"))),
                ),
            }
        }
        other => {
            let required = snap.config.tls.as_ref().is_some_and(|t| t.require);
            let other = match other {
                Ok(startup::Startup::Session(_)) if required => Err(ClientError::TlsRequired),
                o => o,
            };
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w), other)
        }
    }
}

async fn handle_client(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    stream.set_nodelay(true).ok();
    let watch = watch_handle(&stream);
    let limit = std::time::Duration::from_millis(shared.config().limits.startup_timeout_ms);
    let (reader, mut writer, startup) =
        match tokio::time::timeout(limit, negotiate(stream, &shared)).await {
            Ok(r) => r,
            Err(_) => return,
        };
    let params = match startup {
        Ok(startup::Startup::Tls) => return,
        Ok(startup::Startup::Close(why)) => {
            // PostgreSQL answers nothing here either; a client that
            // connected and left (a port probe) is not worth a warning.
            if why.starts_with("incomplete") {
                tracing::debug!(%peer, reason = %why, "startup packet dropped");
            } else {
                warn!(%peer, reason = %why, "startup packet dropped");
            }
            return;
        }
        Ok(startup::Startup::Session(p)) => p,
        Ok(startup::Startup::Cancel {
            process_id,
            secret_key,
        }) => {
            shared.cancels.cancel(process_id, secret_key).await;
            return;
        }
        Err(e) => {
            warn!(%peer, error = %e, "bad startup");
            if let ClientError::UnsupportedProtocol(1..=2, _) = e {
                // A protocol 1 or 2 client reads errors in the old format
                // (no length word), which PostgreSQL still uses for this one.
                let old = format!("EFATAL:  {e}\n\0");
                let _ = writer.write_all(old.as_bytes()).await;
                let _ = writer.flush().await;
                return;
            }
            fatal(&mut writer, &Error::Client(e)).await;
            return;
        }
    };
    // Count first, then check, so two racing clients cannot both squeeze in.
    let now = shared.clients.fetch_add(1, Ordering::Relaxed) + 1;
    if now > shared.config().limits.max_client_connections {
        shared.clients.fetch_sub(1, Ordering::Relaxed);
        warn!(%peer, clients = now - 1, "too many clients");
        fatal(&mut writer, &Error::Client(ClientError::TooManyClients)).await;
        return;
    }
    let pid = shared.next_pid.fetch_add(1, Ordering::Relaxed);
    Stats::bump(&shared.stats.clients_total, 1);
    crate::session::run(reader, writer, watch, peer, params, pid, shared.clone()).await;
    shared.clients.fetch_sub(1, Ordering::Relaxed);
}

/// A second handle on the client's socket (a duplicated descriptor), for
/// the session to watch for end of file while a statement runs; taken
/// before TLS wraps the stream. None if the descriptor cannot be
/// duplicated (the session then does without the watch).
fn watch_handle(stream: &TcpStream) -> Option<TcpStream> {
    use std::os::fd::AsFd;
    let fd = stream.as_fd().try_clone_to_owned().ok()?;
    TcpStream::from_std(std::net::TcpStream::from(fd)).ok()
}

/// Sends a FATAL error before closing a connection that never became a session.
pub(crate) async fn fatal<W: AsyncWrite + Unpin>(stream: &mut W, e: &Error) {
    let msg = error_response(Severity::Fatal, e.sqlstate(), &e.to_string(), None);
    let _ = stream.write_all(&msg).await;
    let _ = stream.flush().await;
}

pub(crate) fn unknown_database(name: &str) -> Error {
    Error::Client(ClientError::UnknownDatabase(name.to_string()))
}
