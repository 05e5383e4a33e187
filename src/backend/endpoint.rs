//! Where and how one shard is reached: its address and configuration, and
//! opening a byte stream to it — TCP, then, as `sslmode` says, an
//! `SSLRequest` and the TLS handshake. Relayed connections, cancel
//! requests and the deadlock detector's connections all open theirs here.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;

use super::{tls, BackendError};
use crate::config::{Config, Shard, SslMode};
use crate::router::ShardId;

/// `SSLRequest`: length 8, code 80877103 (PostgreSQL protocol).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// One shard as this proxy reaches it; built once per shard at startup
/// (its TLS settings change only with a restart).
pub struct Endpoint {
    pub shard: ShardId,
    pub cfg: Shard,
    /// `host:port`.
    pub addr: String,
    /// `None` under `sslmode = "disable"`.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("shard", &self.shard)
            .field("addr", &self.addr)
            .field("sslmode", &self.cfg.sslmode)
            .finish()
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

impl Endpoint {
    pub fn new(cfg: &Shard) -> Result<Endpoint, String> {
        let shard = ShardId(cfg.id);
        let config = tls::client_config(cfg).map_err(|e| format!("shard {shard}: {e}"))?;
        let tls = match config {
            None => None,
            Some(c) => {
                let name = ServerName::try_from(cfg.host.clone()).map_err(|e| {
                    format!(
                        "shard {shard}: host `{}` cannot be named in TLS: {e}",
                        cfg.host
                    )
                })?;
                Some((c, name))
            }
        };
        Ok(Endpoint {
            shard,
            addr: format!("{}:{}", cfg.host, cfg.port),
            cfg: cfg.clone(),
            tls,
        })
    }

    /// Every shard's endpoint, indexed by shard id.
    pub fn all(cfg: &Config) -> Result<Vec<Arc<Endpoint>>, String> {
        let mut shards: Vec<&Shard> = cfg.shards.iter().collect();
        shards.sort_by_key(|s| s.id);
        shards
            .into_iter()
            .map(|s| Endpoint::new(s).map(Arc::new))
            .collect()
    }

    /// The rustls configuration the control plane uses too; `None` when
    /// TLS is disabled.
    pub fn client_config(&self) -> Option<Arc<ClientConfig>> {
        self.tls.as_ref().map(|(c, _)| c.clone())
    }

    /// A stream to the shard, encrypted as `sslmode` says; each of the two
    /// steps (TCP, TLS) within `timeout`.
    pub async fn open(&self, timeout: Duration) -> Result<ServerStream, BackendError> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| self.unavailable(format!("timed out connecting to {}", self.addr)))?
            .map_err(|e| self.unavailable(format!("{}: {e}", self.addr)))?;
        tcp.set_nodelay(true).ok();
        let Some((config, name)) = &self.tls else {
            return Ok(ServerStream::Plain(tcp));
        };
        tokio::time::timeout(timeout, self.negotiate(tcp, config, name))
            .await
            .map_err(|_| self.tls_failed(format!("timed out negotiating TLS with {}", self.addr)))?
    }

    async fn negotiate(
        &self,
        mut tcp: TcpStream,
        config: &Arc<ClientConfig>,
        name: &ServerName<'static>,
    ) -> Result<ServerStream, BackendError> {
        let io = |e: std::io::Error| self.unavailable(format!("{}: {e}", self.addr));
        tcp.write_all(&SSL_REQUEST).await.map_err(io)?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(io)?;
        let mode = self.cfg.sslmode;
        match answer[0] {
            b'S' => {}
            b'N' if mode == SslMode::Prefer => return Ok(ServerStream::Plain(tcp)),
            b'N' => {
                return Err(self.tls_failed(format!(
                    "the server at {} does not support TLS (it answered N to SSLRequest), and sslmode is {}",
                    self.addr,
                    mode.as_str()
                )))
            }
            other => {
                return Err(BackendError::Protocol {
                    shard: self.shard,
                    message: format!("unexpected answer {other:#04x} to SSLRequest"),
                })
            }
        }
        // Exactly one byte was read from the socket: anything the server
        // sent after 'S' reaches rustls as handshake bytes, never the
        // protocol as if it had been protected (CVE-2021-23222).
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        match connector.connect(name.clone(), tcp).await {
            Ok(s) => Ok(ServerStream::Tls(Box::new(s))),
            Err(e) => Err(self.tls_failed(format!(
                "TLS handshake with {} (sslmode {}) failed: {}",
                self.addr,
                mode.as_str(),
                tls::describe_handshake_error(&e, self.cfg.sslrootcert.as_deref())
            ))),
        }
    }

    fn unavailable(&self, message: String) -> BackendError {
        BackendError::Connect {
            shard: self.shard,
            message,
        }
    }

    fn tls_failed(&self, message: String) -> BackendError {
        BackendError::Tls {
            shard: self.shard,
            message,
        }
    }
}

/// A connection to a shard, plain or encrypted.
pub enum ServerStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ServerStream {
    /// Read and write halves, used by one task at a time (TLS ones share
    /// the session under a lock taken only for the length of a poll).
    pub fn split(self) -> (ServerRead, ServerWrite) {
        match self {
            ServerStream::Plain(s) => {
                let (r, w) = s.into_split();
                (ServerRead::Plain(r), ServerWrite::Plain(w))
            }
            ServerStream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ServerRead::Tls(r), ServerWrite::Tls(w))
            }
        }
    }

    /// Sends `msg` and closes (a `CancelRequest`; the server answers nothing).
    pub async fn send_and_close(self, msg: &[u8]) -> std::io::Result<()> {
        match self {
            ServerStream::Plain(mut s) => {
                s.write_all(msg).await?;
                s.shutdown().await
            }
            ServerStream::Tls(mut s) => {
                s.write_all(msg).await?;
                s.shutdown().await
            }
        }
    }
}

pub enum ServerRead {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

pub enum ServerWrite {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

impl AsyncRead for ServerRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerRead::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ServerRead::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerWrite::Plain(w) => Pin::new(w).poll_write(cx, buf),
            ServerWrite::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerWrite::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            ServerWrite::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerWrite::Plain(w) => w.is_write_vectored(),
            ServerWrite::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerWrite::Plain(w) => Pin::new(w).poll_flush(cx),
            ServerWrite::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerWrite::Plain(w) => Pin::new(w).poll_shutdown(cx),
            ServerWrite::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
