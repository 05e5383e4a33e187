//! The startup phase: SSL/GSS negotiation, the startup packet, cancel requests.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ClientError;
use crate::protocol::{self, take_cstr};

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
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
        let mut buf = vec![0u8; len as usize - 4];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|_| proto("incomplete startup packet"))?;
        let code = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let body = &buf[4..];
        match code {
            SSL_REQUEST if tls => {
                stream
                    .write_all(b"S")
                    .await
                    .map_err(|e| proto(e.to_string()))?;
                stream.flush().await.map_err(|e| proto(e.to_string()))?;
                return Ok(Startup::Tls);
            }
            SSL_REQUEST | GSSENC_REQUEST => {
                stream
                    .write_all(b"N")
                    .await
                    .map_err(|e| proto(e.to_string()))?;
            }
            CANCEL_REQUEST => {
                if body.len() < 8 {
                    return Err(proto("invalid cancel request"));
                }
                return Ok(Startup::Cancel {
                    process_id: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    secret_key: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                });
            }
            c if c >> 16 == PROTOCOL_3 => {
                let mut params = Vec::new();
                let mut rest = body;
                let mut unknown = Vec::new();
                while rest.first().is_some_and(|&b| b != 0) {
                    let (k, r) =
                        take_cstr(rest).ok_or_else(|| proto("invalid startup packet layout"))?;
                    let (v, r) =
                        take_cstr(r).ok_or_else(|| proto("invalid startup packet layout"))?;
                    if k.starts_with("_pq_.") {
                        unknown.push(k.to_string());
                    } else {
                        params.push((k.to_string(), v.to_string()));
                    }
                    rest = r;
                }
                let minor = c & 0xffff;
                if minor > 0 || !unknown.is_empty() {
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
