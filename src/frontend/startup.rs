//! The startup phase: SSL/GSS negotiation, the startup packet, cancel requests.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ClientError;
use crate::protocol;
use bytes::{BufMut, BytesMut};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::{GssEncRequest, SslRequest};
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};

const PROTOCOL_3: i32 = 3;
/// The newest protocol the proxy speaks, 3.0, as NegotiateProtocolVersion
/// names it.
const PROTOCOL_LATEST: i32 = PROTOCOL_3 << 16;
/// PostgreSQL's own limit on a startup packet, not counting its length word.
const MAX_STARTUP: usize = 10_000;

pub enum Startup {
    /// A new session with the client's parameters (`user`, `database`,
    /// settings), in packet order.
    Session(Vec<(String, String)>),
    /// The client asked for TLS and was told yes: the handshake comes next.
    Tls,
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
    /// A packet PostgreSQL drops without an answer (a bad length, a cancel
    /// request of the wrong size, a client gone): close, logging why.
    Close(String),
}

/// What the client has negotiated so far: PostgreSQL takes one SSL request
/// and one GSS request at most, and none after TLS is on.
#[derive(Clone, Copy, Default)]
pub struct Negotiated {
    ssl: bool,
    gss: bool,
}

impl Negotiated {
    /// After a TLS handshake: no more SSL or GSS requests.
    pub fn encrypted() -> Negotiated {
        Negotiated {
            ssl: true,
            gss: true,
        }
    }
}

fn proto(m: impl Into<String>) -> ClientError {
    ClientError::Protocol(m.into())
}

/// Reads packets until the client sends its startup message (or a cancel).
/// An SSL request is answered "S" when `tls` is offered, else "N"; GSS
/// encryption is never offered. Malformed packets are answered as
/// PostgreSQL's `ProcessStartupPacket` answers them.
pub async fn read_startup<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    tls: bool,
    mut done: Negotiated,
) -> Result<Startup, ClientError> {
    loop {
        let Ok(len) = stream.read_i32().await else {
            return Ok(Startup::Close("incomplete startup packet".into()));
        };
        if len < 8 || len as usize - 4 > MAX_STARTUP {
            return Ok(Startup::Close("invalid length of startup packet".into()));
        }
        let mut buf = BytesMut::with_capacity(len as usize);
        buf.put_i32(len);
        buf.resize(len as usize, 0);
        if stream.read_exact(&mut buf[4..]).await.is_err() {
            return Ok(Startup::Close("incomplete startup packet".into()));
        }
        let code = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        match code {
            _ if CancelRequest::is_cancel_request_packet(&buf) => {
                let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
                return Ok(match CancelRequest::decode(&mut buf, &ctx) {
                    Ok(Some(c)) if len == 16 => Startup::Cancel {
                        process_id: c.pid,
                        secret_key: c.secret_key.as_i32().unwrap_or_default(),
                    },
                    _ => Startup::Close("invalid length of cancel request".into()),
                });
            }
            _ if !done.ssl && SslRequest::is_ssl_request_packet(&buf) => {
                done.ssl = true;
                let early = !tls && early_bytes(stream).await;
                let answer = if tls { b"S" } else { b"N" };
                stream
                    .write_all(answer)
                    .await
                    .map_err(|e| proto(e.to_string()))?;
                stream.flush().await.map_err(|e| proto(e.to_string()))?;
                if tls {
                    return Ok(Startup::Tls);
                }
                if early {
                    return Err(proto("received unencrypted data after SSL request"));
                }
            }
            _ if !done.gss && GssEncRequest::is_gss_enc_request_packet(&buf) => {
                done.gss = true;
                let early = early_bytes(stream).await;
                stream
                    .write_all(b"N")
                    .await
                    .map_err(|e| proto(e.to_string()))?;
                stream.flush().await.map_err(|e| proto(e.to_string()))?;
                if early {
                    return Err(proto(
                        "received unencrypted data after GSSAPI encryption request",
                    ));
                }
            }
            c if c >> 16 == PROTOCOL_3 => {
                let (params, unknown) = parameters(&buf[8..])?;
                check_parameters(&params)?;
                if c & 0xffff > 0 || !unknown.is_empty() {
                    // We speak 3.0; tell the client, as PostgreSQL does.
                    let m = protocol::negotiate_protocol_version(PROTOCOL_LATEST, &unknown);
                    stream
                        .write_all(&m)
                        .await
                        .map_err(|e| proto(e.to_string()))?;
                }
                return Ok(Startup::Session(params));
            }
            other => {
                return Err(ClientError::UnsupportedProtocol(
                    (other as u32 >> 16) as u16,
                    (other & 0xffff) as u16,
                ))
            }
        }
    }
}

/// What PostgreSQL checks of the parameters before authentication: a user
/// name (the last one given) that is not empty, and `replication` a boolean
/// or `database`. Replication connections themselves are refused: a
/// WAL sender belongs on a shard, not behind a pooler.
fn check_parameters(params: &[(String, String)]) -> Result<(), ClientError> {
    let last = |k: &str| {
        params
            .iter()
            .rfind(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    if let Some(r) = last("replication") {
        match r {
            "database" => return Err(ClientError::Replication),
            r => match parse_bool(r) {
                Some(true) => return Err(ClientError::Replication),
                Some(false) => {}
                None => return Err(ClientError::BadReplication(r.to_string())),
            },
        }
    }
    match last("user") {
        None | Some("") => Err(ClientError::NoUser),
        Some(_) => Ok(()),
    }
}

/// A boolean as PostgreSQL's `parse_bool` reads one: any prefix of `true`,
/// `false`, `yes`, `no`, at least two letters of `on`/`off`, or `1`/`0`,
/// in any case.
fn parse_bool(v: &str) -> Option<bool> {
    let l = v.to_ascii_lowercase();
    let prefix = |word: &str, min: usize| l.len() >= min && word.starts_with(&l);
    match l.as_bytes().first()? {
        b't' if prefix("true", 1) => Some(true),
        b'f' if prefix("false", 1) => Some(false),
        b'y' if prefix("yes", 1) => Some(true),
        b'n' if prefix("no", 1) => Some(false),
        b'o' if prefix("on", 2) => Some(true),
        b'o' if prefix("off", 2) => Some(false),
        b'1' if l == "1" => Some(true),
        b'0' if l == "0" => Some(false),
        _ => None,
    }
}

/// Whether bytes came with an SSL or GSS request, before its answer: they
/// were never meant to travel in plain text (or were injected by someone
/// in between), so PostgreSQL refuses them after answering, and so does
/// the proxy. Only what has already arrived counts; nothing is waited for.
async fn early_bytes<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    use std::task::Poll;
    let mut byte = [0u8; 1];
    std::future::poll_fn(|cx| {
        let mut rb = tokio::io::ReadBuf::new(&mut byte);
        Poll::Ready(
            match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                Poll::Pending => false,
                Poll::Ready(r) => r.is_ok() && !rb.filled().is_empty(),
            },
        )
    })
    .await
}

/// A startup message's name-value pairs, in packet order.
type Params = Vec<(String, String)>;

/// The name-value pairs of a startup message's body (after the version),
/// read as PostgreSQL reads them: in order, a name with no value or a
/// packet not ending in exactly one terminator is a protocol violation.
/// `_pq_.` options, which no protocol version defines yet, come back
/// apart for NegotiateProtocolVersion. Pieskieo keeps settings as text, so
/// a name or value that is not UTF-8 is refused (PostgreSQL would pass
/// the bytes on).
fn parameters(body: &[u8]) -> Result<(Params, Vec<String>), ClientError> {
    let layout = || proto("invalid startup packet layout: expected terminator as last byte");
    // PostgreSQL reads the packet with a NUL appended, so a string running
    // to the end still ends; the terminator must then be the last byte.
    let cstr = |at: usize| -> (&[u8], usize) {
        let rest = &body[at.min(body.len())..];
        let n = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        (&rest[..n], at + n + 1)
    };
    let text = |bytes: &[u8], name: &[u8]| {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ClientError::StartupEncoding(String::from_utf8_lossy(name).into_owned()))
    };
    let mut raw = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let (name, value_at) = cstr(at);
        if name.is_empty() || value_at >= body.len() {
            break;
        }
        let (value, next) = cstr(value_at);
        raw.push((name, value));
        at = next;
    }
    if at + 1 != body.len() {
        return Err(layout());
    }
    let (mut params, mut unknown) = (Vec::new(), Vec::new());
    for (name, value) in raw {
        let key = text(name, name)?;
        if key.starts_with("_pq_.") {
            unknown.push(key);
        } else {
            params.push((key, text(value, name)?));
        }
    }
    Ok((params, unknown))
}

#[cfg(test)]
mod tests {
    use super::{parameters, parse_bool};

    #[test]
    fn booleans_read_as_postgresql_reads_them() {
        for (v, want) in [
            ("t", Some(true)),
            ("TRUE", Some(true)),
            ("tru", Some(true)),
            ("f", Some(false)),
            ("y", Some(true)),
            ("no", Some(false)),
            ("on", Some(true)),
            ("of", Some(false)),
            ("OFF", Some(false)),
            ("o", None),
            ("1", Some(true)),
            ("0", Some(false)),
            ("01", None),
            ("maybe", None),
            ("", None),
            (" true", None),
        ] {
            assert_eq!(parse_bool(v), want, "{v:?}");
        }
    }

    #[test]
    fn parameters_are_read_as_postgresql_reads_them() {
        let ok = |b: &[u8]| parameters(b).map_err(|e| e.to_string());
        assert_eq!(
            ok(b"user\0a\0DateStyle\0ISO\0datestyle\0SQL\0_pq_.x\0y\0\0").unwrap(),
            (
                vec![
                    ("user".into(), "a".into()),
                    ("DateStyle".into(), "ISO".into()),
                    ("datestyle".into(), "SQL".into()),
                ],
                vec!["_pq_.x".to_string()]
            )
        );
        assert_eq!(ok(b"\0").unwrap(), (vec![], vec![]));
        assert_eq!(ok(b"k\0\0\0").unwrap().0, vec![("k".into(), "".into())]);
        for bad in [
            &b""[..],
            b"user\0a\0",
            b"user\0a\0orphan\0",
            b"user\0a\0orphan\0\0",
            b"user\0a\0\0junk",
            b"user\0a\0\0\0",
            b"user\0a",
        ] {
            assert!(
                ok(bad).unwrap_err().contains("expected terminator"),
                "{bad:?}"
            );
        }
        assert!(ok(b"application_name\0caf\xe9\0\0")
            .unwrap_err()
            .contains("\"application_name\""));
    }
}
