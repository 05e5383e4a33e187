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
use std::time::Duration;

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
            let Some(slot) = slot(&slots, &waiting).await else {
                debug!(%peer, "metrics: too many scrape connections; closed");
                continue;
            };
            let exposition = exposition.clone();
            let evict = Arc::new(Notify::new());
            let asked = Arc::new(AtomicBool::new(false));
            if let Ok(mut w) = waiting.lock() {
                w.push_back((asked.clone(), evict.clone()));
            }
            tokio::spawn(async move {
                let _slot = slot;
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

/// The open connections in the order they came, each with whether its
/// request has arrived and how to close it.
type Waiting = std::sync::Mutex<VecDeque<(Arc<AtomicBool>, Arc<Notify>)>>;

/// A connection slot. When all are taken, the oldest connection that has
/// not sent its request yet is closed to make room: idle connections
/// cannot keep a scraper out, since a scraper sends its request at once.
async fn slot(slots: &Arc<Semaphore>, waiting: &Waiting) -> Option<OwnedSemaphorePermit> {
    if let Ok(s) = slots.clone().try_acquire_owned() {
        prune(waiting);
        return Some(s);
    }
    let victim = waiting.lock().ok().and_then(|mut w| {
        w.retain(|(asked, evict)| Arc::strong_count(evict) > 1 && !asked.load(Ordering::Relaxed));
        w.pop_front()
    });
    let (_, evict) = victim?;
    evict.notify_one();
    tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// Forgets connections that have ended.
fn prune(waiting: &Waiting) {
    if let Ok(mut w) = waiting.lock() {
        w.retain(|(_, evict)| Arc::strong_count(evict) > 1);
    }
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
