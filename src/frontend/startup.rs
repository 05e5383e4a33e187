//! The startup phase: SSL/GSS negotiation, the startup packet, cancel requests.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ClientError;
use crate::protocol;
use bytes::{BufMut, BytesMut};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::{GssEncRequest, SslRequest};
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};

const PROTOCOL_3: i32 = 3;
/// PostgreSQL's own limit on a startup packet.
const MAX_STARTUP: usize = 10_000;

pub enum Startup {
    /// A new session with the client's parameters (`user`, `database`, settings).
    Session(Vec<(String, String)>),
    /// The client asked for TLS and was told yes: the handshake comes next.
    Tls,
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
}

fn proto(m: impl Into<String>) -> ClientError {
    ClientError::Protocol(m.into())
}

/// Reads packets until the client sends its startup message (or a cancel).
/// An SSL request is answered "S" when `tls` is offered, else "N"; GSS
/// encryption is never offered.
pub async fn read_startup<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    tls: bool,
) -> Result<Startup, ClientError> {
    loop {
        let len = stream
            .read_i32()
            .await
            .map_err(|e| proto(format!("incomplete startup packet: {e}")))?;
        if len < 8 || len as usize > MAX_STARTUP {
            return Err(proto("invalid length of startup packet"));
        }
        let mut buf = BytesMut::with_capacity(len as usize);
        buf.put_i32(len);
        buf.resize(len as usize, 0);
        stream
            .read_exact(&mut buf[4..])
            .await
            .map_err(|_| proto("incomplete startup packet"))?;
        let code = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        match code {
            _ if SslRequest::is_ssl_request_packet(&buf) && tls => {
                stream
                    .write_all(b"S")
                    .await
                    .map_err(|e| proto(e.to_string()))?;
                stream.flush().await.map_err(|e| proto(e.to_string()))?;
                return Ok(Startup::Tls);
            }
            _ if SslRequest::is_ssl_request_packet(&buf)
                || GssEncRequest::is_gss_enc_request_packet(&buf) =>
            {
                stream
                    .write_all(b"N")
                    .await
                    .map_err(|e| proto(e.to_string()))?;
            }
            _ if CancelRequest::is_cancel_request_packet(&buf) => {
                let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
                let cancel = match CancelRequest::decode(&mut buf, &ctx) {
                    Ok(Some(c)) => c,
                    _ => return Err(proto("invalid cancel request")),
                };
                return Ok(Startup::Cancel {
                    process_id: cancel.pid,
                    secret_key: cancel.secret_key.as_i32().unwrap_or_default(),
                });
            }
            c if c >> 16 == PROTOCOL_3 => {
                let startup = match pgwire::messages::startup::Startup::decode(
                    &mut buf,
                    &DecodeContext::default(),
                ) {
                    Ok(Some(s)) => s,
                    _ => return Err(proto("invalid startup packet layout")),
                };
                let (unknown, params): (Vec<_>, Vec<_>) = startup
                    .parameters
                    .into_iter()
                    .partition(|(k, _)| k.starts_with("_pq_."));
                let unknown: Vec<String> = unknown.into_iter().map(|(k, _)| k).collect();
                if startup.protocol_number_minor > 0 || !unknown.is_empty() {
                    // We speak 3.0; tell the client, as PostgreSQL does.
                    let m = protocol::negotiate_protocol_version(0, &unknown);
                    stream
                        .write_all(&m)
                        .await
                        .map_err(|e| proto(e.to_string()))?;
                }
                return Ok(Startup::Session(params));
            }
            other => {
                return Err(proto(format!(
                    "unsupported frontend protocol {}.{}: server supports 3.0",
                    other >> 16,
                    other & 0xffff
                )))
            }
        }
    }
}
