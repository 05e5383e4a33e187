//! The HTTP endpoint (`metrics_listen`): `GET /metrics`, served by hyper.
//!
//! A scraper never holds up client traffic: each connection is a task of its
//! own that only reads atomics and writes one response, waits at most
//! [`HEADER_TIMEOUT`] for its request and [`CONNECTION_TIMEOUT`] in all, and
//! at most [`MAX_CONNECTIONS`] are open at once: a new one then closes the
//! oldest that has not sent its request yet, or is itself closed.
//! One request per connection (`Connection: close`), as a scrape is seconds
//! apart.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::metrics::{Exposition, Format};
use crate::frontend::Shared;

/// How long a scraper may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last, request and response together.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrape connections open at once; a scraper opens one at a time.
const MAX_CONNECTIONS: usize = 16;

/// Binds `addr` and serves `GET /metrics` there until the runtime stops.
pub async fn serve_metrics(addr: &str, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!(addr = %local, "metrics endpoint listening");
    let exposition = Arc::new(Exposition::new(shared));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting: Arc<Waiting> = Default::default();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: let them free up
                    // rather than spin.
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = slot(&slots, &waiting) else {
                debug!(%peer, "metrics: too many scrape connections; closed");
                continue;
            };
            let exposition = exposition.clone();
            let evict = Arc::new(Notify::new());
            let asked = Arc::new(AtomicBool::new(false));
            if let Ok(mut w) = waiting.lock() {
                w.push_back((Instant::now(), asked.clone(), evict.clone()));
            }
            let slots = slots.clone();
            tokio::spawn(async move {
                // A slot being freed for this connection: waited for here,
                // not in the accept loop.
                let _slot = match slot {
                    Some(s) => s,
                    None => {
                        match tokio::time::timeout(Duration::from_secs(1), slots.acquire_owned())
                            .await
                        {
                            Ok(Ok(s)) => s,
                            _ => return,
                        }
                    }
                };
                let service = service_fn(move |req| {
                    asked.store(true, Ordering::Relaxed);
                    let response = respond(&exposition, &req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let conn = http1::Builder::new()
                    .keep_alive(false)
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    r = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection failed"),
                        Err(_) => debug!(%peer, "metrics scraper too slow; connection closed"),
                    },
                    _ = evict.notified() => {
                        debug!(%peer, "metrics connection without a request closed for a newer one")
                    }
                }
            });
        }
    });
    Ok(local)
}

/// The open connections in the order they came, each with when it came,
/// whether its request has arrived, and how to close it.
type Waiting = std::sync::Mutex<VecDeque<(Instant, Arc<AtomicBool>, Arc<Notify>)>>;

/// How long a connection may sit without a request before a newer one may
/// take its place: a scraper's request follows its connect at once, so it
/// is read well within this, while idle connections make room.
const EVICTABLE_AFTER: Duration = Duration::from_millis(100);

/// A connection slot: `Some(Some(_))` free now, `Some(None)` to be freed by
/// the oldest connection that has sat longer than [`EVICTABLE_AFTER`]
/// without a request (closed now), `None` when there is no such connection.
fn slot(slots: &Arc<Semaphore>, waiting: &Waiting) -> Option<Option<OwnedSemaphorePermit>> {
    let mut w = waiting.lock().ok()?;
    // Forget connections that have ended (only this list still holds them).
    w.retain(|(_, _, evict)| Arc::strong_count(evict) > 1);
    if let Ok(s) = slots.clone().try_acquire_owned() {
        return Some(Some(s));
    }
    let victim = w.iter().position(|(since, asked, _)| {
        !asked.load(Ordering::Relaxed) && since.elapsed() >= EVICTABLE_AFTER
    })?;
    let (_, _, evict) = w.remove(victim)?;
    evict.notify_one();
    Some(None)
}

/// The answer to one request: the exposition for `GET`/`HEAD /metrics`
/// (hyper leaves the body out for `HEAD`), 405 for another method there,
/// 404 anywhere else.
fn respond(exposition: &Exposition, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let format = Format::negotiate(req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()));
    let mut response = Response::new(Full::new(Bytes::from(exposition.render(format))));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
